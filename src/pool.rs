//! The global allocator of the gateway binary: mimalloc, except for blocks of 8 to 64 KiB, which
//! come from page-aligned pools.
//!
//! Why mimalloc under the pools: glibc's malloc took about a quarter of the gateway's own CPU under
//! load (`perf`: malloc, free and the consolidation of its bins). mimalloc was measured once before
//! (runs AG: CPU per job -18 %) and set aside because 1 000 idle event streams then cost 20.75 MB in
//! a CI run, over the 20 MB bound; the streams cost about 10 MB with glibc since, which leaves it room.
//! SQLite's C code still allocates from glibc.
//!
//! Why: every open HTTP/1 connection holds hyper's 8 KiB read and 8 KiB write buffers for as long
//! as it lives (an idle keep-alive client, an event stream), and glibc writes a boundary tag at both
//! ends of each chunk, so an 8 KiB buffer holding a few hundred bytes makes two or three pages
//! resident where one would do (and all of them when it reuses memory a request touched). Blocks
//! here carry no header: a buffer costs only the pages its contents touch (1 000 idle connections:
//! about 22 MB of RSS with glibc's heap, about 10 MB from the pools).
//!
//! How: one lock guards, per size class (8, 16, 32, 64 KiB), a list of free blocks whose pages
//! may all be resident ("dirty") and a list of blocks whose pages, except the first, were handed
//! back to the kernel ("clean"), plus one bump pointer over 4 MiB mappings that are never unmapped
//! (unmapping would cost every thread a TLB shootdown; freed blocks are reused instead). Freed
//! blocks are reused last-in first-out, so the hot ones stay in cache. `trim` (from the idle trim
//! loop in `memory`) gives the dirty blocks' pages back. Blocks are never split or merged: a
//! class only reuses its own, which is enough for buffers that come and go in a few sizes.
//!
//! glibc's fast bins are turned off (`tune_glibc`, for what SQLite allocates): a chunk freed into a fast bin is not merged
//! with its free neighbours until glibc next consolidates the bins, which it does whenever a
//! request too large for its per-thread cache arrives. Under load that consolidation was a large
//! share of `malloc`'s time, and after a burst the unmerged chunks kept pages that the idle trim
//! could not give back. The per-thread cache (tcache) still serves small sizes without a lock.

use std::alloc::{GlobalAlloc, Layout};

/// Everything the pools do not serve.
use mimalloc::MiMalloc as Fallback;

/// mimalloc's `mi_option_arena_eager_commit` and `mi_option_purge_delay`: their places in
/// `mi_option_e` in the `mimalloc.h` of mimalloc 2, the version `libmimalloc-sys` builds unless
/// its `v3` feature is on (the Rust bindings name no constants for them).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets mimalloc's options before its first allocation; the binary calls it from an
/// `.init_array` constructor, ahead of Rust's runtime (mimalloc reads them when it maps its first
/// arena).
pub fn tune_mimalloc() {
    // SAFETY: mi_option_set only stores a value, read when mimalloc next needs it.
    unsafe {
        // Commit arena memory as it is used: eager commit (mimalloc's default where the kernel
        // overcommits) made an idle gateway's heap 22 MiB instead of 4.
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        // Give freed pages back at once. mimalloc has no background thread: a delayed purge runs
        // only when some thread next allocates or frees, so a gateway that went idle after a burst
        // kept them (100 000 POSTs: 21.1 MiB of RSS after, 16.9 with no delay; same rates).
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}
use std::ptr;
use std::sync::Mutex;

/// Smallest and largest pooled block.
const MIN_BLOCK: usize = 8 * 1024;
const MAX_BLOCK: usize = 64 * 1024;
/// Size classes: 8, 16, 32 and 64 KiB.
const CLASSES: usize = 4;
/// Address space taken from the kernel at a time (pages become resident only when touched).
const REGION: usize = 4 * 1024 * 1024;
const PAGE: usize = 4096;

/// Turns glibc's fast bins off; the binary calls it from an `.init_array` constructor, before
/// Rust's runtime allocates, so no chunk ever enters them. Measured (runs AH): 1 000 idle event
/// streams 19.1 -> 16.9 MB of RSS (three runs each), rates within the machine's noise.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_glibc() {
    // SAFETY: mallopt only sets an allocator parameter; with M_MXFAST 0 no chunk size qualifies
    // for a fast bin (glibc's own `glibc.malloc.mxfast=0` tunable does the same).
    unsafe { libc::mallopt(libc::M_MXFAST, 0) };
}

/// The gateway binary's `#[global_allocator]`.
pub struct Pooled;

/// The pools behind [`Pooled`].
pub static POOL: Pool = Pool::new();

/// A free block's first word: the next free block of its list.
struct Free {
    next: *mut Free,
}

struct Lists {
    dirty: [*mut Free; CLASSES],
    clean: [*mut Free; CLASSES],
    /// Bytes in the dirty lists (what a trim could give back).
    dirty_bytes: usize,
    /// The unused rest of the current mapping.
    bump: *mut u8,
    end: *mut u8,
    /// Bytes mapped so far.
    mapped: usize,
}

// SAFETY: the raw pointers only point into this pool's own mappings and are only touched under
// the mutex.
unsafe impl Send for Lists {}

/// Size-class pools; see the module documentation.
pub struct Pool {
    lists: Mutex<Lists>,
}

/// The class of a layout, or `None` when mimalloc serves it.
fn class_of(layout: Layout) -> Option<usize> {
    if layout.size() < MIN_BLOCK || layout.size() > MAX_BLOCK || layout.align() > PAGE {
        return None;
    }
    let block = layout.size().next_power_of_two();
    Some((block.trailing_zeros() - MIN_BLOCK.trailing_zeros()) as usize)
}

fn block_size(class: usize) -> usize {
    MIN_BLOCK << class
}

impl Default for Pool {
    fn default() -> Self {
        Self::new()
    }
}

impl Pool {
    pub const fn new() -> Self {
        Self {
            lists: Mutex::new(Lists {
                dirty: [ptr::null_mut(); CLASSES],
                clean: [ptr::null_mut(); CLASSES],
                dirty_bytes: 0,
                bump: ptr::null_mut(),
                end: ptr::null_mut(),
                mapped: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lists> {
        // A panic cannot happen while the lock is held (no allocation, no fallible call), but an
        // allocator must not panic on a poisoned lock either.
        self.lists.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A block of `class`, or null when the kernel refuses more address space.
    fn take(&self, class: usize) -> *mut u8 {
        self.take_marked(class).0
    }

    /// A block of `class` and whether it is fresh from the kernel (all zero, no page touched).
    fn take_marked(&self, class: usize) -> (*mut u8, bool) {
        let size = block_size(class);
        let mut l = self.lock();
        let head = l.dirty[class];
        if !head.is_null() {
            // SAFETY: a listed block is a free block of this class, its first word the link.
            l.dirty[class] = unsafe { (*head).next };
            l.dirty_bytes -= size;
            return (head.cast(), false);
        }
        let head = l.clean[class];
        if !head.is_null() {
            // SAFETY: as above.
            l.clean[class] = unsafe { (*head).next };
            return (head.cast(), false);
        }
        if (l.end as usize) - (l.bump as usize) < size {
            // SAFETY: an anonymous private mapping with no address hint has no preconditions.
            let region = unsafe {
                libc::mmap(
                    ptr::null_mut(),
                    REGION,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if region == libc::MAP_FAILED {
                return (ptr::null_mut(), false);
            }
            // The rest of the previous region (smaller than this block) is left unused: it was
            // never touched, so it costs address space only.
            l.bump = region.cast();
            // SAFETY: within the mapping just made.
            l.end = unsafe { l.bump.add(REGION) };
            l.mapped += REGION;
        }
        let block = l.bump;
        // SAFETY: `size` bytes fit between bump and end (checked above).
        l.bump = unsafe { l.bump.add(size) };
        (block, true)
    }

    /// Gives back a block taken from `class`.
    ///
    /// # Safety
    /// `block` came from `take(class)` and is not used after this call.
    unsafe fn give(&self, class: usize, block: *mut u8) {
        let mut l = self.lock();
        let free = block.cast::<Free>();
        // SAFETY: the caller gives up the block; its first word becomes the link.
        unsafe { (*free).next = l.dirty[class] };
        l.dirty[class] = free;
        l.dirty_bytes += block_size(class);
    }

    /// Bytes held in free blocks whose pages may be resident.
    pub fn dirty_bytes(&self) -> usize {
        self.lock().dirty_bytes
    }

    /// Bytes of address space mapped for the pools.
    pub fn mapped_bytes(&self) -> usize {
        self.lock().mapped
    }

    /// Hands the pages of every free dirty block back to the kernel, except each block's first
    /// (it holds the list link); returns the bytes given back. The lock is held only to take the
    /// lists and to put the blocks back: the system calls run without it.
    pub fn trim(&self) -> usize {
        let taken: [*mut Free; CLASSES] = {
            let mut l = self.lock();
            l.dirty_bytes = 0;
            std::mem::replace(&mut l.dirty, [ptr::null_mut(); CLASSES])
        };
        let mut released = 0;
        for (class, mut head) in taken.into_iter().enumerate() {
            let size = block_size(class);
            let (first, mut last) = (head, ptr::null_mut::<Free>());
            while !head.is_null() {
                // SAFETY: blocks on a taken list belong to nobody else until put back below;
                // MADV_DONTNEED on whole pages inside our own mapping only drops their contents.
                unsafe {
                    libc::madvise(head.cast::<u8>().add(PAGE).cast(), size - PAGE, libc::MADV_DONTNEED);
                }
                released += size - PAGE;
                last = head;
                // SAFETY: as above; the first page (and the link) is kept.
                head = unsafe { (*head).next };
            }
            if !first.is_null() {
                let mut l = self.lock();
                // SAFETY: `last` is the taken list's tail; splice the list before the clean ones.
                unsafe { (*last).next = l.clean[class] };
                l.clean[class] = first;
            }
        }
        released
    }
}

// SAFETY: pooled blocks are `block_size(class) >= layout.size()` bytes, page-aligned (regions are
// page-aligned and every block size is a multiple of a page), so they satisfy any layout of their
// class (alignment up to a page); everything else is mimalloc's.
unsafe impl GlobalAlloc for Pooled {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(class) => POOL.take(class),
            // SAFETY: the caller's contract, passed on.
            None => unsafe { Fallback.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(class) => {
                let (block, fresh) = POOL.take_marked(class);
                if !block.is_null() && !fresh {
                    // A reused block holds old contents (a clean one, in its first page); a
                    // fresh one reads zero already and stays untouched.
                    // SAFETY: the block has at least layout.size() bytes.
                    unsafe { ptr::write_bytes(block, 0, layout.size()) };
                }
                block
            }
            // SAFETY: the caller's contract, passed on.
            None => unsafe { Fallback.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match class_of(layout) {
            // SAFETY: a block of this layout's class came from the pool (alloc routes by layout).
            Some(class) => unsafe { POOL.give(class, block) },
            // SAFETY: the caller's contract, passed on.
            None => unsafe { Fallback.dealloc(block, layout) },
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size, rounded up to the alignment, does not overflow.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // SAFETY: the caller's contract, passed on.
            (None, None) => unsafe { Fallback.realloc(block, layout, new_size) },
            (Some(a), Some(b)) if a == b => block,
            _ => {
                // SAFETY: a new block for the new layout, the contents copied, the old one freed.
                unsafe {
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).expect("layout")
    }

    #[test]
    fn sizes_map_to_classes() {
        assert_eq!(class_of(layout(8191)), None);
        assert_eq!(class_of(layout(8192)), Some(0));
        assert_eq!(class_of(layout(8193)), Some(1));
        assert_eq!(class_of(layout(16384)), Some(1));
        assert_eq!(class_of(layout(40_000)), Some(3));
        assert_eq!(class_of(layout(65536)), Some(3));
        assert_eq!(class_of(layout(65537)), None);
        assert_eq!(class_of(Layout::from_size_align(8192, 8192).expect("layout")), None);
    }

    #[test]
    fn blocks_are_page_aligned_distinct_and_reused_last_in_first_out() {
        let pool = Pool::new();
        let a = pool.take(0);
        let b = pool.take(1);
        let c = pool.take(0);
        for p in [a, b, c] {
            assert!(!p.is_null());
            assert_eq!(p as usize % PAGE, 0);
        }
        assert!((c as usize).abs_diff(a as usize) >= 8192 && (b as usize).abs_diff(a as usize) >= 8192);
        unsafe {
            pool.give(0, a);
            pool.give(0, c);
        }
        assert_eq!(pool.dirty_bytes(), 16384);
        assert_eq!(pool.take(0), c);
        assert_eq!(pool.take(0), a);
        assert_eq!(pool.dirty_bytes(), 0);
        assert_eq!(pool.mapped_bytes(), REGION);
    }

    #[test]
    fn a_new_region_is_mapped_when_one_is_used_up() {
        let pool = Pool::new();
        let blocks: Vec<_> = (0..REGION / MAX_BLOCK + 1).map(|_| pool.take(3)).collect();
        assert!(blocks.iter().all(|b| !b.is_null()));
        assert_eq!(pool.mapped_bytes(), 2 * REGION);
    }

    #[test]
    fn contents_survive_a_move_between_classes_and_zeroed_blocks_are_zero() {
        let a = Pooled;
        unsafe {
            let p = a.alloc(layout(8192));
            for i in 0..8192 {
                *p.add(i) = (i % 251) as u8;
            }
            let q = a.realloc(p, layout(8192), 20_000);
            assert!((0..8192).all(|i| *q.add(i) == (i % 251) as u8));
            let r = a.realloc(q, layout(20_000), 100);
            assert!((0..100).all(|i| *r.add(i) == (i % 251) as u8));
            a.dealloc(r, layout(100));
            // The freed 32 KiB block is dirty; a zeroed allocation of its class must read zero.
            let d = a.alloc(layout(30_000));
            std::ptr::write_bytes(d, 0xAB, 30_000);
            a.dealloc(d, layout(30_000));
            let z = a.alloc_zeroed(layout(30_000));
            assert!((0..30_000).all(|i| *z.add(i) == 0));
            a.dealloc(z, layout(30_000));
        }
    }

    /// Resident pages among the blocks' pages, asked of the kernel page by page (`mincore`), so
    /// that memory other tests allocate meanwhile in this process does not count.
    fn resident_pages(blocks: &[*mut u8], size: usize) -> usize {
        let mut vec = vec![0u8; size / PAGE];
        blocks
            .iter()
            .map(|b| {
                // SAFETY: each block is `size` page-aligned bytes of this pool's mapping.
                let rc = unsafe { libc::mincore(b.cast(), size, vec.as_mut_ptr()) };
                assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
                vec.iter().filter(|v| *v & 1 == 1).count()
            })
            .sum()
    }

    #[test]
    fn only_touched_pages_are_resident_and_a_trim_gives_freed_pages_back() {
        let pool = Pool::new();
        // 2 000 blocks of 8 KiB with one byte written each: one page apiece, not two or three.
        let blocks: Vec<_> = (0..2000).map(|_| pool.take(0)).collect();
        assert_eq!(resident_pages(&blocks, 8192), 0, "fresh blocks are not resident");
        for b in &blocks {
            unsafe { b.write(1) };
        }
        assert_eq!(resident_pages(&blocks, 8192), 2000, "one written byte makes one page resident");
        // Fill them, free them, trim: all but the first page of each goes back.
        for b in &blocks {
            unsafe { b.write_bytes(7, 8192) };
        }
        assert_eq!(resident_pages(&blocks, 8192), 4000);
        for b in &blocks {
            unsafe { pool.give(0, *b) };
        }
        let released = pool.trim();
        assert_eq!(released, 2000 * 4096);
        assert_eq!(pool.dirty_bytes(), 0);
        assert_eq!(resident_pages(&blocks, 8192), 2000, "only each block's first page is kept");
        // Trimmed blocks are reused (clean list), their second page now reads zero.
        let again = pool.take(0);
        assert!(blocks.contains(&again));
        assert_eq!(unsafe { again.add(4096).read() }, 0);
    }
}
