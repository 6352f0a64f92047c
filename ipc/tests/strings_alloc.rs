//! The engine's hot path must not allocate: interning (known or new strings), string
//! lookups, status publishing, snapshot reads and histogram updates are counted with a
//! global allocator that counts per thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ib_stream_ipc::{
    RecordKind, StatusSnapshot, StatusWriter, StringTableConfig, StringTableWriter, SubState,
    SubStatus,
};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call unchanged to the system allocator; the counter is a
// const-initialised thread-local Cell, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

#[test]
fn the_counter_counts() {
    let n = allocations_during(|| {
        let v: Vec<u64> = Vec::with_capacity(std::hint::black_box(16));
        std::hint::black_box(v);
    });
    assert_eq!(n, 1);
}

#[test]
fn interning_and_lookups_do_not_allocate() {
    let cfg = StringTableConfig {
        max_entries: 4096,
        max_bytes: 1 << 20,
        max_len: 64,
    };
    let mut w = StringTableWriter::heap(1, &cfg).unwrap();
    let r = w.reader();
    // Prepared outside the measured part: the strings IB would send (in a read buffer).
    let words: Vec<Vec<u8>> = (0..2000).map(|i| format!("EXCH{i}").into_bytes()).collect();
    let mut ids = vec![0u32; words.len()];
    let new_strings = allocations_during(|| {
        for (w_, id) in words.iter().zip(ids.iter_mut()) {
            *id = w.intern(w_).unwrap();
        }
    });
    assert_eq!(new_strings, 0, "interning new strings allocated");
    let steady = allocations_during(|| {
        for _ in 0..50 {
            for (word, id) in words.iter().zip(&ids) {
                assert_eq!(w.intern(word), Ok(*id));
                assert_eq!(r.get(*id), Some(&word[..]));
            }
        }
        assert_eq!(w.intern(b""), Ok(0));
        assert!(w.intern(&[b'x'; 65]).is_err());
    });
    assert_eq!(steady, 0, "steady-state interning allocated");
}

#[test]
fn status_publish_and_read_do_not_allocate() {
    let mut w = StatusWriter::heap(1);
    let r = w.reader();
    let mut snap = StatusSnapshot::new_boxed();
    let mut out = StatusSnapshot::new_boxed();
    let n = allocations_during(|| {
        for k in 0..1000u64 {
            snap.counters.records_published = k;
            snap.latencies.recv_to_publish.record(k * 17);
            if k < 200 {
                let sub = SubStatus::new(k as u32, RecordKind::TbtLast, SubState::Active, 1);
                snap.push_subscription(sub).unwrap();
            }
            w.publish(&snap, k as i64);
            assert_eq!(r.read(&mut out), Ok(k + 1));
            assert!(out.latencies.recv_to_publish.percentile(0.99).is_some());
        }
    });
    assert_eq!(n, 0, "status publishing allocated");
}
