//! Damage a read met in a stored file: a binary block whose checksum fails, a binary header
//! that is not intact, a JSON line that does not decode. Readers never serve what such a
//! part holds; they report it as a [`Damage`] (via [`super::QueryError::Damaged`]) and can go
//! on after it, so that a caller chooses: stop (the default of `storage export`), skip and
//! report (`--skip-bad`), or mark the place in its output (`/v3/history`).
//!
//! Not damage: a file that ends inside a block or a line. The recorder appends while others
//! read, so an incomplete tail is the end of what is stored, read as such.

use std::fmt;
use std::path::PathBuf;

/// What is damaged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DamageKind {
    /// A complete checksum block of a binary segment whose records do not match its
    /// checksum (`.crc` entry): none of its records is served.
    Block {
        /// Block index (block `i` holds records `i*B .. (i+1)*B`).
        index: u64,
        /// Byte offset of its first record in the file.
        offset: u64,
        /// Records in it.
        records: u64,
    },
    /// The 64-byte header of a binary segment is not intact: nothing of the file is served.
    Header {
        /// Why.
        reason: String,
    },
    /// A complete JSON line (it ends with `\n`) that does not decode.
    Line {
        /// Line number from 1 (counted when the damage is found).
        line: u64,
        /// Byte offset of the line.
        offset: u64,
        /// The decoder's reason.
        reason: String,
    },
}

/// A damaged part of a stored file; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The file.
    pub path: PathBuf,
    /// What is damaged.
    pub kind: DamageKind,
    /// `(seq, ts_recv ns)` of the last intact record before it in the file, if any: the
    /// damaged records come after it.
    pub after: Option<(u64, i64)>,
    /// `(seq, ts_recv ns)` read just after it (the next record of the file; for a line, the
    /// prefix of the line itself), if any: the damaged records are at or before it. Read
    /// from unverified bytes, so a hint only.
    pub until: Option<(u64, i64)>,
}

impl Damage {
    /// The reason name used in outputs: `corrupt_block`, `corrupt_header` or `corrupt_line`.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            DamageKind::Block { .. } => "corrupt_block",
            DamageKind::Header { .. } => "corrupt_header",
            DamageKind::Line { .. } => "corrupt_line",
        }
    }

    /// The damage as one JSON object shaped like a stored gap (`tt` `gap`, `r` the reason,
    /// `from`/`to` the sequences it may cover, `t0`/`t1` the receive times around it, when
    /// known) plus where it is: `file`, and `block`/`offset`/`records` or `line`/`offset`.
    /// `/v3/history` puts it in its `ticks` in place of the records it cannot serve.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::json!({
            "tt": "gap",
            "r": self.reason(),
            "file": self.path.display().to_string(),
        });
        let m = v.as_object_mut().expect("an object");
        if let Some((seq, ts)) = self.after {
            m.insert("from".into(), (seq + 1).into());
            m.insert("t0".into(), ts.into());
        }
        if let Some((seq, ts)) = self.until {
            // A line's own prefix is the damaged record; a block's bound is the next record.
            let to = match self.kind {
                DamageKind::Line { .. } => seq,
                _ => seq.saturating_sub(1),
            };
            m.insert("to".into(), to.into());
            m.insert("t1".into(), ts.into());
        }
        match &self.kind {
            DamageKind::Block {
                index,
                offset,
                records,
            } => {
                m.insert("block".into(), (*index).into());
                m.insert("offset".into(), (*offset).into());
                m.insert("records".into(), (*records).into());
            }
            DamageKind::Header { reason } => {
                m.insert("why".into(), reason.clone().into());
            }
            DamageKind::Line {
                line,
                offset,
                reason,
            } => {
                m.insert("line".into(), (*line).into());
                m.insert("offset".into(), (*offset).into());
                m.insert("why".into(), reason.clone().into());
            }
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path.display();
        match &self.kind {
            DamageKind::Block {
                index,
                offset,
                records,
            } => write!(
                f,
                "{p}: corrupt block {index} (byte {offset}, {records} records): checksum mismatch, its records are not served"
            )?,
            DamageKind::Header { reason } => {
                write!(f, "{p}: corrupt header ({reason}): the file is not served")?
            }
            DamageKind::Line {
                line,
                offset,
                reason,
            } => write!(
                f,
                "{p}:{line}: line at byte {offset} does not decode: {reason}"
            )?,
        }
        if let Some((seq, ts)) = self.after {
            write!(f, "; after seq {seq} (ts_recv {ts} ns)")?;
        }
        match (self.until, &self.kind) {
            (Some((seq, ts)), DamageKind::Line { .. }) => {
                write!(f, "; its prefix says seq {seq} (ts_recv {ts} ns)")?
            }
            (Some((seq, ts)), _) => write!(f, "; before seq {seq} (ts_recv {ts} ns)")?,
            (None, _) => {}
        }
        Ok(())
    }
}
