//! The engine's on-disk contract store: the contracts IB resolved, kept per environment at
//! `<IB_STREAM_STORAGE_PATH>/contracts/contracts.json`, so a restarted engine requests its
//! subscriptions at once with the full contracts it had, instead of waiting on lookups.
//!
//! The file is private (0600 in a 0700 directory, whatever the umask) and written whole to a
//! temporary file that is then renamed over the old one: a crash leaves the old store or the
//! new one, never half of either. A store that cannot be read or parsed is treated as empty
//! with a warning; the engine then resolves its contracts again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::ipc::UNDEF_I64;
use crate::storage::private_fs;
use crate::tws::Contract;

/// The store's format version (`version` in the file).
pub const STORE_VERSION: u32 = 1;

/// One resolved contract as stored: the fields a data request carries, when IB resolved
/// it, and the last change IB reported for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredContract {
    /// IB conId.
    pub con_id: i32,
    /// Symbol.
    pub symbol: String,
    /// STK, FUT, CASH, ...
    pub sec_type: String,
    /// Expiry or contract month (futures, options).
    #[serde(default)]
    pub last_trade_date_or_contract_month: String,
    /// Strike, 1e-9 fixed point (`UNDEF_I64`: none).
    #[serde(default = "undef")]
    pub strike: i64,
    /// P/C for options.
    #[serde(default)]
    pub right: String,
    /// Multiplier as IB writes it.
    #[serde(default)]
    pub multiplier: String,
    /// Exchange (SMART, CME, ...).
    pub exchange: String,
    /// Primary exchange.
    #[serde(default)]
    pub primary_exchange: String,
    /// Currency.
    pub currency: String,
    /// Local symbol.
    #[serde(default)]
    pub local_symbol: String,
    /// Trading class.
    #[serde(default)]
    pub trading_class: String,
    /// When IB last confirmed it (Unix ns).
    pub resolved_ns: i64,
    /// The last change IB reported for this conId, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<ContractChange>,
}

/// A change IB reported for a stored conId.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractChange {
    /// When it was noticed (Unix ns).
    pub at_ns: i64,
    /// The fields that differed, as `field: old -> new`.
    pub fields: Vec<String>,
}

fn undef() -> i64 {
    UNDEF_I64
}

impl StoredContract {
    /// The stored form of `c`, resolved at `resolved_ns`.
    pub fn from_contract(c: &Contract, resolved_ns: i64) -> StoredContract {
        StoredContract {
            con_id: c.con_id,
            symbol: c.symbol.clone(),
            sec_type: c.sec_type.clone(),
            last_trade_date_or_contract_month: c.last_trade_date_or_contract_month.clone(),
            strike: c.strike,
            right: c.right.clone(),
            multiplier: c.multiplier.clone(),
            exchange: c.exchange.clone(),
            primary_exchange: c.primary_exchange.clone(),
            currency: c.currency.clone(),
            local_symbol: c.local_symbol.clone(),
            trading_class: c.trading_class.clone(),
            resolved_ns,
            changed: None,
        }
    }

    /// The contract a data request sends.
    pub fn contract(&self) -> Contract {
        Contract {
            con_id: self.con_id,
            symbol: self.symbol.clone(),
            sec_type: self.sec_type.clone(),
            last_trade_date_or_contract_month: self.last_trade_date_or_contract_month.clone(),
            strike: self.strike,
            right: self.right.clone(),
            multiplier: self.multiplier.clone(),
            exchange: self.exchange.clone(),
            primary_exchange: self.primary_exchange.clone(),
            currency: self.currency.clone(),
            local_symbol: self.local_symbol.clone(),
            trading_class: self.trading_class.clone(),
            ..Contract::default()
        }
    }

    /// The fields in which `new` differs from this one (`field: old -> new`); empty when
    /// the same contract.
    pub fn differences(&self, new: &StoredContract) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |name: &str, a: &str, b: &str| {
            if a != b {
                out.push(format!("{name}: {a:?} -> {b:?}"));
            }
        };
        cmp("symbol", &self.symbol, &new.symbol);
        cmp("sec_type", &self.sec_type, &new.sec_type);
        cmp(
            "last_trade_date_or_contract_month",
            &self.last_trade_date_or_contract_month,
            &new.last_trade_date_or_contract_month,
        );
        cmp("strike", &self.strike.to_string(), &new.strike.to_string());
        cmp("right", &self.right, &new.right);
        cmp("multiplier", &self.multiplier, &new.multiplier);
        cmp("exchange", &self.exchange, &new.exchange);
        cmp(
            "primary_exchange",
            &self.primary_exchange,
            &new.primary_exchange,
        );
        cmp("currency", &self.currency, &new.currency);
        cmp("local_symbol", &self.local_symbol, &new.local_symbol);
        cmp("trading_class", &self.trading_class, &new.trading_class);
        out
    }
}

#[derive(Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    contracts: Vec<StoredContract>,
}

/// Why the store could not be written.
#[derive(Debug, thiserror::Error)]
#[error("contract store {path}: {source}")]
pub struct StoreError {
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// The store's file under a storage root.
pub fn store_path(storage_root: &Path) -> PathBuf {
    storage_root.join("contracts").join("contracts.json")
}

/// Reads the store. A missing file is an empty store; an unreadable or corrupt one is an
/// empty store and a warning (the contracts are resolved again).
pub fn load(path: &Path) -> Vec<StoredContract> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            warn!(path = %path.display(), "cannot read the contract store; resolving contracts again: {e}");
            return Vec::new();
        }
    };
    match serde_json::from_slice::<StoreFile>(&bytes) {
        Ok(f) if f.version == STORE_VERSION => {
            f.contracts.into_iter().filter(|c| c.con_id > 0).collect()
        }
        Ok(f) => {
            warn!(path = %path.display(), version = f.version, "contract store of an unknown version ignored");
            Vec::new()
        }
        Err(e) => {
            warn!(path = %path.display(), "contract store is corrupt; ignored, resolving contracts again: {e}");
            Vec::new()
        }
    }
}

/// Writes the store atomically (temporary file, fsync, rename), private to the user.
pub fn save(path: &Path, contracts: &[StoredContract]) -> Result<(), StoreError> {
    let err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StoreError { path: p, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    private_fs::create_private_dir_all(dir).map_err(err(dir))?;
    let mut body = serde_json::to_vec_pretty(&StoreFile {
        version: STORE_VERSION,
        contracts: contracts.to_vec(),
    })
    .map_err(|e| std::io::Error::other(e.to_string()))
    .map_err(err(path))?;
    body.push(b'\n');
    private_fs::write_private_atomic(path, &body, true).map_err(err(path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ib-stream-contract-store-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn mnq() -> StoredContract {
        StoredContract::from_contract(
            &Contract {
                con_id: 711280073,
                symbol: "MNQ".into(),
                sec_type: "FUT".into(),
                last_trade_date_or_contract_month: "20261218".into(),
                multiplier: "2".into(),
                exchange: "CME".into(),
                currency: "USD".into(),
                local_symbol: "MNQZ6".into(),
                trading_class: "MNQ".into(),
                ..Contract::default()
            },
            1_700_000_000_000_000_000,
        )
    }

    #[test]
    fn round_trips_privately_and_atomically() {
        let root = tmp("rt");
        let path = store_path(&root);
        assert!(load(&path).is_empty(), "a missing store is empty");
        let one = vec![mnq()];
        // A directory left open by someone else is made private.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::set_permissions(
            path.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        save(&path, &one).unwrap();
        assert_eq!(load(&path), one);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["contracts.json"]);
        assert_eq!(one[0].contract().exchange, "CME");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_corrupt_or_foreign_store_is_empty_not_a_panic() {
        let root = tmp("bad");
        let path = store_path(&root);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        for text in [
            "{not json",
            "",
            "{\"version\":99,\"contracts\":[]}",
            "[1,2,3]",
            "\u{0}\u{1}",
        ] {
            std::fs::write(&path, text).unwrap();
            assert!(load(&path).is_empty(), "{text:?}");
        }
        // A directory where the file should be: unreadable, still empty.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(load(&path).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn differences_name_each_changed_field() {
        let a = mnq();
        let mut b = a.clone();
        assert!(a.differences(&b).is_empty());
        b.exchange = "GLOBEX".into();
        b.local_symbol = "MNQH7".into();
        let d = a.differences(&b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].starts_with("exchange"), "{d:?}");
    }
}
