//! Giving freed heap back to the operating system after bursts of connections.
//!
//! glibc's malloc keeps memory freed by one tokio worker in that thread's arena, and returns
//! only what lies at the top of each heap. A burst of 2,000 connections (buffers, parsed
//! requests, error bodies) left about 25 MiB (debug build; 58 MiB release) resident for good
//! after the connections were gone, although the heap was mostly free: `malloc_trim(0)`
//! brought it back to within 3 MiB of its level before. [`trim`] is called by the accept
//! loop once a burst is over (see `listen::serve`).

/// New connections since the last trim that make the next check trim.
pub const TRIM_AFTER_CONNECTIONS: u64 = 256;

/// How often the accept loop checks whether to trim.
pub const TRIM_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Returns free heap memory to the operating system (glibc: `malloc_trim(0)` on every
/// arena); a no-op with other allocators. Takes milliseconds: call it off the async workers.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointers and only locks and releases the allocator's own
    // arenas; glibc documents it as MT-safe and callable at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
