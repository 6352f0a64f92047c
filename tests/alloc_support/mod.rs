//! A global allocator that counts per thread: a zero-allocation test measures only the
//! thread doing the work, so the test harness's own thread (which may allocate while we
//! measure, e.g. under load) cannot make it fail. Same idea as ipc/tests/strings_alloc.rs.
//!
//! A test binary declares `#[global_allocator] static GLOBAL: Counting = Counting;`.
// Shared by several test binaries, each using a part.
#![allow(dead_code, unreachable_pub)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts this thread's allocations and forwards to the system allocator.
pub struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static REALLOCS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

fn bump(c: &'static std::thread::LocalKey<Cell<u64>>, by: u64) {
    // `try_with`: an allocation during thread teardown must not panic.
    let _ = c.try_with(|c| c.set(c.get() + by));
}

// SAFETY: forwards every call unchanged to the system allocator; the counters are
// const-initialised thread-local Cells, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump(&ALLOCS, 1);
        bump(&BYTES, layout.size() as u64);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump(&REALLOCS, 1);
        bump(&BYTES, new_size as u64);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What this thread allocated between [`Region::new`] and [`Region::change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub allocations: u64,
    pub reallocations: u64,
    pub bytes_allocated: u64,
}

fn now() -> Stats {
    Stats {
        allocations: ALLOCS.with(Cell::get),
        reallocations: REALLOCS.with(Cell::get),
        bytes_allocated: BYTES.with(Cell::get),
    }
}

/// A measured stretch of the current thread.
pub struct Region(Stats);

impl Region {
    pub fn new() -> Region {
        Region(now())
    }
    pub fn reset(&mut self) {
        self.0 = now();
    }
    pub fn change(&self) -> Stats {
        let n = now();
        Stats {
            allocations: n.allocations - self.0.allocations,
            reallocations: n.reallocations - self.0.reallocations,
            bytes_allocated: n.bytes_allocated - self.0.bytes_allocated,
        }
    }
}

/// The counter counts (so a zero in a test means something).
pub fn counter_counts() -> bool {
    let r = Region::new();
    let v: Vec<u64> = Vec::with_capacity(std::hint::black_box(16));
    std::hint::black_box(&v);
    r.change().allocations == 1
}
