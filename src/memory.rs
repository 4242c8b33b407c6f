//! Gives freed heap back to the operating system. (The binary's Rust heap is mimalloc's, which
//! purges freed pages itself, and the buffer pools', trimmed here too, see `pool`; glibc's holds
//! what SQLite allocates.) glibc keeps memory that a burst of requests
//! allocated and then freed inside its arenas (about 5 MB after 100 000 POSTs, measured with
//! `malloc_trim` from a debugger), so the resident set stayed at its high-water mark long after
//! the burst. Once a second, when the process is nearly idle, this checks how much free memory
//! the allocator holds and, past a threshold, trims it. Never under load: a trim walks the arenas
//! under their locks, and the pages it returns would be faulted straight back in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the allocator is asked.
const PERIOD: Duration = Duration::from_secs(1);
/// Free bytes held by the allocator above which it is trimmed.
const THRESHOLD: usize = 1 << 20;
/// Free bytes in the buffer pools' dirty blocks above which they are given back (a few
/// blocks are not worth the system calls).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const POOL_THRESHOLD: usize = 256 * 1024;
/// At most this many HTTP requests in the last period count as idle (probes and scrapes).
const IDLE_REQUESTS: u64 = 50;

/// HTTP requests served; the trim loop reads how many arrived since its last look.
static ACTIVITY: AtomicU64 = AtomicU64::new(0);

/// Counts one HTTP request (called by the request metrics middleware).
pub fn note_activity() {
    ACTIVITY.fetch_add(1, Ordering::Relaxed);
}

/// Runs until `stop`.
pub async fn trim_loop(stop: CancellationToken) {
    let mut seen = ACTIVITY.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            _ = stop.cancelled() => return,
        }
        let now = ACTIVITY.load(Ordering::Relaxed);
        let busy = now.wrapping_sub(seen) > IDLE_REQUESTS;
        seen = now;
        if !busy {
            // Off the async workers: a trim walks the arenas under their locks.
            let _ = tokio::task::spawn_blocking(trim_if_worth_it).await;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_if_worth_it() {
    // SAFETY: both are glibc's own entry points with no preconditions; mallinfo2 only reads
    // the allocator's counters and malloc_trim only releases free pages.
    let free = unsafe { libc::mallinfo2() }.fordblks;
    if free > THRESHOLD {
        unsafe {
            libc::malloc_trim(0);
        }
    }
    // The binary's buffer pools (empty where another allocator is global, as in tests).
    if crate::pool::POOL.dirty_bytes() > POOL_THRESHOLD {
        crate::pool::POOL.trim();
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_if_worth_it() {
    // Other allocators (musl's, for instance) return memory on their own.
    let _ = THRESHOLD;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's anonymous resident memory.
    fn rss_anon_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("RssAnon in /proc/self/status")
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_heap_goes_back_to_the_system() {
        // 64 MB freed in 16 KiB holes (below the mmap threshold, so they live in the heap),
        // with every other block kept so the holes cannot merge into the top of the heap,
        // which glibc would release on its own. (With 32 MB freed, a CI run saw 15.9 MB come back
        // against the 16 MB asked: the tests running meanwhile had allocated the rest.)
        let mut kept = Vec::new();
        let mut freed = Vec::new();
        for i in 0..8000u32 {
            let block = vec![(i % 251) as u8; 16 * 1024];
            if i % 2 == 0 { kept.push(block) } else { freed.push(block) }
        }
        drop(freed);
        let before = rss_anon_kib();
        trim_if_worth_it();
        let after = rss_anon_kib();
        // Other tests run meanwhile in this process; half the freed memory leaves them 32 MB.
        assert!(before.saturating_sub(after) >= 32 * 1024, "RssAnon {before} kB -> {after} kB after the trim");
        assert!(kept.iter().enumerate().all(|(i, b)| b[16 * 1024 - 1] == ((2 * i as u32) % 251) as u8));
    }
}
