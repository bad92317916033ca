//! The receiver's memory allocator: mimalloc, chosen by measurement
//! (`cargo bench -p udp_server --bench throughput -- memory`: memory per active
//! call at 1,000 calls was about 28 KiB with mimalloc, 31 KiB with jemalloc and
//! 82 KiB with glibc's malloc, whose per-thread arenas kept what the recorder
//! threads freed; since calls hold less, the three are within a few KiB of
//! each other, 7 to 11 KiB). It is built without transparent huge pages (the
//! crate's `no_thp` feature): mimalloc would otherwise `madvise` its arenas for them,
//! and where the kernel honours that (`enabled` set to `madvise`, as on most
//! distributions) memory is resident in 2 MiB steps, some 12 MiB more at
//! 1,000 calls than the calls use.
//!
//! `RST_ALLOCATOR=system` picks the system's malloc instead, read once before
//! the first allocation, so that the benchmark compares allocators with one
//! binary (and glibc's malloc, or one put in front of it with `LD_PRELOAD`,
//! stays one environment variable away). The choice never changes afterwards:
//! every block is freed by the allocator that made it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use mimalloc::MiMalloc;

/// mimalloc unless `RST_ALLOCATOR=system`.
#[derive(Debug)]
pub struct Allocator;

const UNDECIDED: u8 = 0;
const MIMALLOC: u8 = 1;
const SYSTEM: u8 = 2;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

impl Allocator {
    #[inline]
    fn system(&self) -> bool {
        match CHOICE.load(Relaxed) {
            MIMALLOC => false,
            SYSTEM => true,
            _ => decide(),
        }
    }
}

/// Reads `RST_ALLOCATOR` without allocating (`getenv`), on the first
/// allocation, before any thread of the program's own is started.
#[cold]
fn decide() -> bool {
    // SAFETY: the name is a NUL-terminated C string; getenv only reads the
    // environment, which nothing changes at this point of the start.
    let value = unsafe { libc::getenv(c"RST_ALLOCATOR".as_ptr()) };
    // SAFETY: a non-null getenv result is a NUL-terminated C string.
    let system =
        !value.is_null() && unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes() == b"system";
    let choice = if system { SYSTEM } else { MIMALLOC };
    // Two first allocations racing decide the same from the same environment.
    let _ = CHOICE.compare_exchange(UNDECIDED, choice, Relaxed, Relaxed);
    CHOICE.load(Relaxed) == SYSTEM
}

// SAFETY: every call is forwarded to one of two allocators that uphold the
// GlobalAlloc contract, the same one for a block's whole life (the choice is
// made once, before the first block, and never changes).
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.system() {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        } else {
            // SAFETY: as above.
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.system() {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        } else {
            // SAFETY: as above.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.system() {
            // SAFETY: the block came from System (the choice never changes).
            unsafe { System.dealloc(ptr, layout) }
        } else {
            // SAFETY: the block came from MiMalloc, as above.
            unsafe { MiMalloc.dealloc(ptr, layout) }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.system() {
            // SAFETY: the block came from System, as above.
            unsafe { System.realloc(ptr, layout, new_size) }
        } else {
            // SAFETY: the block came from MiMalloc, as above.
            unsafe { MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}
