//! Property tests of the string table against a plain model: ids are dense and stable,
//! every id resolves to its bytes, and the limits give exactly the predicted typed error.

use std::collections::HashMap;

use ib_stream_ipc::{InternError, StringTableConfig, StringTableWriter};
use proptest::prelude::*;

/// Short strings over a small alphabet, so that sequences repeat strings often.
fn strings() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(
        prop::collection::vec(prop::sample::select(b"abc\0\xff".to_vec()), 0..6),
        0..200,
    )
}

proptest! {
    #[test]
    fn intern_get_round_trip_with_dense_stable_ids(seq in strings()) {
        let cfg = StringTableConfig { max_entries: 1024, max_bytes: 1 << 16, max_len: 64 };
        let mut w = StringTableWriter::heap(9, &cfg).unwrap();
        let r = w.reader();
        let mut model: HashMap<Vec<u8>, u32> = HashMap::new();
        model.insert(Vec::new(), 0);
        for s in &seq {
            let next = model.len() as u32;
            let expected = *model.entry(s.clone()).or_insert(next);
            let id = w.intern(s).unwrap();
            prop_assert_eq!(id, expected);
            prop_assert_eq!(r.get(id), Some(&s[..]));
        }
        prop_assert_eq!(r.len() as usize, model.len());
        // Every id still resolves to the bytes it was given, after all later appends.
        for (s, id) in &model {
            prop_assert_eq!(r.get(*id), Some(&s[..]));
            prop_assert_eq!(w.intern(s).unwrap(), *id);
        }
        prop_assert_eq!(r.get(model.len() as u32), None);
        let bytes: usize = model.keys().map(Vec::len).sum();
        prop_assert_eq!(r.bytes_used(), bytes as u64);
    }

    #[test]
    fn limits_give_the_predicted_typed_error(
        seq in strings(),
        max_entries in 1u32..12,
        max_len in 1u32..6,
        extra_bytes in 0u32..20,
    ) {
        let cfg = StringTableConfig { max_entries, max_bytes: max_len + extra_bytes, max_len };
        let mut w = StringTableWriter::heap(1, &cfg).unwrap();
        let mut model: HashMap<Vec<u8>, u32> = HashMap::new();
        model.insert(Vec::new(), 0);
        let mut used = 0u64;
        for s in &seq {
            let predicted = if let Some(id) = model.get(s) {
                Ok(*id)
            } else if s.len() > max_len as usize {
                Err(InternError::TooLong { len: s.len(), max_len })
            } else if model.len() as u32 >= max_entries {
                Err(InternError::EntriesFull { max_entries })
            } else if used + s.len() as u64 > u64::from(cfg.max_bytes) {
                Err(InternError::BytesFull {
                    needed: s.len(),
                    free: u64::from(cfg.max_bytes) - used,
                    capacity: u64::from(cfg.max_bytes),
                })
            } else {
                let id = model.len() as u32;
                model.insert(s.clone(), id);
                used += s.len() as u64;
                Ok(id)
            };
            prop_assert_eq!(w.intern(s), predicted);
        }
        prop_assert_eq!(w.len() as usize, model.len());
        prop_assert_eq!(w.bytes_used(), used);
        for (s, id) in &model {
            prop_assert_eq!(w.get(*id), Some(&s[..]));
        }
    }
}
