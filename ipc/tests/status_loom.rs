//! Loom model of the status region's double-buffered sequence-lock protocol.
//!
//! Runs the crate's own `status::protocol::{publish, try_read}` over loom's atomics, so
//! every interleaving (within the preemption bound) and every value the memory model lets
//! a relaxed load return is tried. Checks: an accepted snapshot is never a mix of two
//! generations, generations never go back, and the last one is readable once the writer
//! is done. A negative control shows the model catches a reader without the re-check.
//!
//! Run: `cargo test -p ib-stream-ipc --features loom --release --test status_loom`
//! (without the feature this file compiles to nothing).
#![cfg(feature = "loom")]

use std::sync::atomic::Ordering;

use ib_stream_ipc::ring::SlotWord;
use ib_stream_ipc::status::protocol::{Attempt, publish, try_read};
use loom::sync::Arc;
use loom::sync::atomic::AtomicU64;

/// Loom's atomic, seen through the protocol's word trait.
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

/// Words per snapshot in the model: the generation and two payload words.
const WORDS: usize = 3;

struct Region {
    latest: W,
    seqs: [W; 2],
    bufs: [[W; WORDS]; 2],
}

impl Region {
    fn new() -> Region {
        let w = || W(AtomicU64::new(0));
        Region {
            latest: w(),
            seqs: [w(), w()],
            bufs: [std::array::from_fn(|_| w()), std::array::from_fn(|_| w())],
        }
    }

    fn publish(&self, g: u64) {
        let b = (g % 2) as usize;
        publish(&self.latest, &self.seqs[b], &self.bufs[b], g, payload(g));
    }

    fn try_read(&self) -> (Attempt, [u64; WORDS]) {
        let mut out = [0u64; WORDS];
        let a = try_read(
            &self.latest,
            [&self.seqs[0], &self.seqs[1]],
            [&self.bufs[0], &self.bufs[1]],
            |i, v| out[i] = v,
        );
        (a, out)
    }
}

/// The payload of generation `g`: every word derived from `g`, so a mix is visible.
fn payload(g: u64) -> [u64; WORDS - 1] {
    [g * 10, g * 100]
}

fn check_intact(g: u64, words: &[u64; WORDS]) {
    assert_eq!(
        words[0], g,
        "torn snapshot: {words:?} accepted as generation {g}"
    );
    assert_eq!(
        words[1..],
        payload(g),
        "torn snapshot: {words:?} accepted as generation {g}"
    );
}

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b
}

/// The writer publishes `generations` snapshots while the reader makes `reads` attempts.
fn model(generations: u64, reads: usize) {
    builder().check(move || {
        let region = Arc::new(Region::new());
        let writer = {
            let region = region.clone();
            loom::thread::spawn(move || {
                for g in 1..=generations {
                    region.publish(g);
                }
            })
        };
        let mut last = 0;
        for _ in 0..reads {
            match region.try_read() {
                (Attempt::Consistent(g), words) => {
                    check_intact(g, &words);
                    assert!(g >= last, "generation went back from {last} to {g}");
                    last = g;
                }
                (Attempt::NotPublished, _) => assert_eq!(last, 0, "latest went back to 0"),
                (Attempt::Retry, _) => {}
            }
        }
        writer.join().unwrap();
        match region.try_read() {
            (Attempt::Consistent(g), words) => {
                assert_eq!(g, generations, "the last snapshot is not the one read");
                check_intact(g, &words);
            }
            (other, _) => panic!("quiescent region read as {other:?}"),
        }
    });
}

#[test]
fn one_reader_never_sees_a_torn_snapshot() {
    model(3, 2);
}

#[test]
fn reader_lapped_on_the_same_buffer() {
    // Generations 1 and 3 share a buffer: a reader copying 1 while 2 and 3 are published
    // must retry, not accept the mix.
    model(3, 1);
}

#[test]
fn reader_keeps_up_over_more_generations() {
    model(4, 2);
}

/// Negative control: a reader that copies the latest buffer without the fence and the
/// re-check must be caught accepting a torn snapshot.
#[test]
#[should_panic(expected = "torn snapshot")]
fn model_catches_a_reader_without_recheck() {
    builder().check(|| {
        let region = Arc::new(Region::new());
        let writer = {
            let region = region.clone();
            loom::thread::spawn(move || {
                for g in 1..=3 {
                    region.publish(g);
                }
            })
        };
        let g = region.latest.load(Ordering::Acquire);
        if g != 0 {
            let b = (g % 2) as usize;
            let s = region.seqs[b].load(Ordering::Acquire);
            if s.is_multiple_of(2) && s != 0 {
                let words: [u64; WORDS] =
                    std::array::from_fn(|i| region.bufs[b][i].load(Ordering::Relaxed));
                check_intact(s / 2, &words);
            }
        }
        writer.join().unwrap();
    });
}
