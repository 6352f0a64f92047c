//! Loom model of the ring's sequence-lock protocol.
//!
//! Runs the crate's own generic `write_slot` / `publish_into` / `Cursor::step` over loom's
//! atomics, so every interleaving (within the preemption bound) and every value the memory
//! model lets a relaxed load return is tried. Checks: a delivered record is never torn, the
//! reader accounts for every sequence exactly once (delivered or inside one `Lost`), and
//! a loss is reported only for a record the writer really overwrote.
//!
//! Run: `cargo test -p ib-stream-ipc --features loom --release --test loom_ring`
//! (`LOOM_MAX_PREEMPTIONS` overrides the bound set below).

use std::sync::atomic::Ordering;

use ib_stream_ipc::Record;
use ib_stream_ipc::record::RecordKind;
use ib_stream_ipc::ring::{
    Cursor, LapPolicy, ReadOutcome, SLOT_WORDS, SlotWord, WRITING_BIT, publish_into,
    record_to_words,
};
use loom::sync::Arc;
use loom::sync::atomic::AtomicU64;

/// Loom's atomic, seen through the ring's word trait.
struct W(AtomicU64);

impl SlotWord for W {
    fn load(&self, order: Ordering) -> u64 {
        self.0.load(order)
    }
    fn store(&self, value: u64, order: Ordering) {
        self.0.store(value, order);
    }
    fn fence(order: Ordering) {
        loom::sync::atomic::fence(order);
    }
}

struct Ring {
    slots: Vec<[W; SLOT_WORDS]>,
    head: W,
}

impl Ring {
    fn new(capacity: usize) -> Ring {
        Ring {
            slots: (0..capacity)
                .map(|_| std::array::from_fn(|_| W(AtomicU64::new(0))))
                .collect(),
            head: W(AtomicU64::new(0)),
        }
    }
}

/// Record `n`: every payload word derived from `n`, so a mix of two writes is visible.
fn rec(n: u64) -> Record {
    let v = n as i64;
    Record {
        ts_recv: v,
        ts_event: v * 3,
        instrument_id: n as u32,
        body: [v * 5, v * 7, v * 11, v * 13],
        ..Record::new(RecordKind::TbtLast)
    }
}

fn check_intact(r: &Record) {
    let n = r.seq;
    assert_eq!(
        record_to_words(r)[1..],
        record_to_words(&Record { seq: n, ..rec(n) })[1..],
        "torn read: {r:?}"
    );
}

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b
}

/// Writer publishes `writes` records one by one into a ring of `capacity`; the reader makes
/// `reads` attempts; then checks the accounting against what the writer did.
fn model(capacity: usize, writes: u64, reads: usize, batch: bool) {
    builder().check(move || {
        let ring = Arc::new(Ring::new(capacity));
        let writer = {
            let ring = ring.clone();
            loom::thread::spawn(move || {
                let mut next = 1;
                if batch {
                    let recs: Vec<Record> = (1..=writes).map(rec).collect();
                    publish_into(&ring.slots, &ring.head, &mut next, &recs);
                } else {
                    for n in 1..=writes {
                        publish_into(&ring.slots, &ring.head, &mut next, &[rec(n)]);
                    }
                }
            })
        };
        let mut cursor = Cursor::new(1, capacity as u64, LapPolicy::Oldest { margin: 0 });
        let mut expected = 1;
        for _ in 0..reads {
            match cursor.step(&ring.slots, &ring.head) {
                ReadOutcome::Record(r) => {
                    assert_eq!(r.seq, expected);
                    check_intact(&r);
                    expected += 1;
                }
                ReadOutcome::Empty => {}
                ReadOutcome::Lost {
                    first_seq,
                    last_seq,
                    count,
                } => {
                    assert_eq!(first_seq, expected);
                    assert_eq!(count, last_seq - first_seq + 1);
                    // Only a record the writer has started to overwrite may be lost.
                    assert!(
                        first_seq + capacity as u64 <= writes,
                        "lost {first_seq} of {writes}"
                    );
                    assert!(last_seq < writes);
                    expected = last_seq + 1;
                }
            }
        }
        writer.join().unwrap();
        // After the writer is done, the reader can finish: whatever is left is delivered or
        // reported, and never more than `writes` sequences.
        loop {
            match cursor.step(&ring.slots, &ring.head) {
                ReadOutcome::Record(r) => {
                    assert_eq!(r.seq, expected);
                    check_intact(&r);
                    expected += 1;
                }
                ReadOutcome::Lost {
                    first_seq,
                    last_seq,
                    ..
                } => {
                    assert_eq!(first_seq, expected);
                    expected = last_seq + 1;
                }
                ReadOutcome::Empty => break,
            }
        }
        assert_eq!(
            expected,
            writes + 1,
            "the reader did not account for every record"
        );
    });
}

#[test]
fn no_lap_never_torn_in_order() {
    model(4, 2, 3, false);
}

#[test]
fn lapping_writer_is_detected_exactly() {
    model(2, 3, 2, false);
}

#[test]
fn batch_publish_with_lap() {
    model(2, 3, 2, true);
}

/// Negative control: a reader that copies without the fence and the re-check must be caught
/// delivering a torn record. Proves the model can see the race the protocol closes.
#[test]
#[should_panic(expected = "torn read")]
fn model_catches_a_reader_without_recheck() {
    builder().check(|| {
        let ring = Arc::new(Ring::new(2));
        let writer = {
            let ring = ring.clone();
            loom::thread::spawn(move || {
                let mut next = 1;
                for n in 1..=3 {
                    publish_into(&ring.slots, &ring.head, &mut next, &[rec(n)]);
                }
            })
        };
        // Broken reader: trusts the first sequence load alone.
        let slot = &ring.slots[0];
        let s = slot[0].load(Ordering::Acquire);
        if s & !WRITING_BIT == 1 && s & WRITING_BIT == 0 {
            let mut words = [0u64; SLOT_WORDS];
            words[0] = 1;
            for (i, w) in words.iter_mut().enumerate().skip(1) {
                *w = slot[i].load(Ordering::Relaxed);
            }
            check_intact(&ib_stream_ipc::ring::words_to_record(words));
        }
        writer.join().unwrap();
    });
}
