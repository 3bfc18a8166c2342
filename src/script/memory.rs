//! What a script run may allocate: a byte budget per run, whatever the script builds.
//!
//! Rhai bounds the size of each string, array and map, but not what a run holds in all:
//! a thousand closures that each capture a megabyte string are within every per-value
//! limit. So the process's allocator counts, per thread, the bytes allocated minus the
//! bytes freed while a run is metered (`Meter`), and the engine's progress hook fails the
//! run once the count passes `Limits::max_memory`. One operation can overshoot the
//! budget by at most what Rhai's per-value limits let it allocate (it checks sizes before
//! bulk operations such as `pad`).
//!
//! Counting needs the allocator: the `edaflow` binary installs `MeteredAlloc` around
//! mimalloc. A program embedding edaflow that installs a different global allocator keeps
//! every other limit, but not this one (`is_metering` tells).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// A global allocator that counts what metered script runs allocate on each thread, then
/// hands every call to `A`.
pub struct MeteredAlloc<A>(pub A);

static INSTALLED: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy)]
struct Count {
    /// A run is being metered on this thread.
    on: bool,
    /// Bytes allocated minus bytes freed since the meter started.
    bytes: isize,
    /// The most `bytes` has been.
    peak: isize,
}

thread_local! {
    static COUNT: Cell<Count> = const { Cell::new(Count { on: false, bytes: 0, peak: 0 }) };
}

#[inline]
fn add(delta: isize) {
    // `try_with`: never fails for a const thread-local without a destructor, but an
    // allocator must not panic whatever happens.
    let _ = COUNT.try_with(|c| {
        let mut count = c.get();
        if count.on {
            count.bytes = count.bytes.saturating_add(delta);
            count.peak = count.peak.max(count.bytes);
            c.set(count);
        }
    });
}

fn size(bytes: usize) -> isize {
    isize::try_from(bytes).unwrap_or(isize::MAX)
}

// SAFETY: every call is passed unchanged to `A`, which upholds `GlobalAlloc`'s contract;
// the counting beside it touches only a thread-local `Cell` and never allocates.
unsafe impl<A: GlobalAlloc> GlobalAlloc for MeteredAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        add(size(layout.size()));
        // SAFETY: forwarded as received.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(size(layout.size()));
        // SAFETY: forwarded as received.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-size(layout.size()));
        // SAFETY: forwarded as received.
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(size(new_size) - size(layout.size()));
        // SAFETY: forwarded as received.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

/// True when the process's allocator counts script memory (`MeteredAlloc` installed).
pub fn is_metering() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// Meters the run in progress on this thread from now until it is dropped.
pub struct Meter {
    /// The meter this one interrupted (a run inside a run), restored on drop.
    outer: Count,
}

impl Meter {
    /// Starts metering at zero.
    pub fn start() -> Meter {
        let outer = COUNT.with(|c| {
            c.replace(Count {
                on: true,
                bytes: 0,
                peak: 0,
            })
        });
        Meter { outer }
    }

    /// The most the run has held so far, in bytes.
    pub fn peak(&self) -> usize {
        COUNT.with(|c| usize::try_from(c.get().peak).unwrap_or(0))
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let inner = COUNT.with(|c| c.replace(self.outer));
        if self.outer.on {
            // What the inner run still holds belongs to the outer one too.
            add(inner.bytes);
        }
    }
}

/// Bytes the metered run on this thread holds now (0 when none is metered).
#[inline]
pub fn held() -> usize {
    COUNT.with(|c| {
        let count = c.get();
        if count.on {
            usize::try_from(count.bytes).unwrap_or(0)
        } else {
            0
        }
    })
}
