//! The stack every script runs on: a large region of its own per thread, so that no script
//! can overflow the stack of the thread that runs it.
//!
//! Rhai bounds its own recursion (call depth, expression depth), but not the depth of the
//! data a script builds: arrays in arrays, closures capturing closures. Dropping,
//! printing, sizing or converting such data recurses once per level, and a thread's
//! default stack (2 MiB on tokio's workers) holds a few thousand levels. The other limits
//! bound how deep data can get (`Limits::max_operations`: at most one level per
//! operation; `Limits::max_memory`: tens of bytes per level), to a few hundred thousand
//! levels at 200-450 bytes of stack each (measured for arrays, maps, closures and curried
//! functions). `SCRIPT_STACK` holds that several times over.
//!
//! The region is reserved once per thread that runs scripts (address space only: pages
//! are committed as a run touches them) and reused by every run on that thread, so a run
//! pays two stack-pointer switches, not an allocation. A run that went deep leaves pages
//! committed; `release_depths` hands back everything below the first `KEEP_RESIDENT`
//! bytes, and callers ask for it after runs that may have gone deep.
//!
//! Panics inside a script (an engine bug) are caught on the script stack and returned to
//! the caller as `Err`, so they fail one run, never the worker.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The size of each thread's script stack (address space; see the module docs).
pub const SCRIPT_STACK: usize = 512 << 20;

/// Bytes of a script stack kept committed after `release_depths`: what ordinary runs use.
const KEEP_RESIDENT: usize = 1 << 20;

/// The panic message of a script run that panicked, when it can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptPanic(pub String);

impl ScriptPanic {
    fn from_payload(payload: &(dyn std::any::Any + Send)) -> ScriptPanic {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        ScriptPanic(text)
    }
}

thread_local! {
    /// This thread's script stack, mapped on first use (`None` until then, and for good
    /// when mapping failed: runs then use the thread's own stack).
    static STACK: Cell<Option<Region>> = const { Cell::new(None) };
    static MAP_FAILED: Cell<bool> = const { Cell::new(false) };
    /// True while a run is on this thread's script stack (a nested run stays on it).
    static ON_STACK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` on this thread's script stack; a panic in `f` comes back as `Err`.
pub fn run<R>(f: impl FnOnce() -> R) -> Result<R, ScriptPanic> {
    if ON_STACK.with(Cell::get) {
        return catch_unwind(AssertUnwindSafe(f)).map_err(|p| ScriptPanic::from_payload(&*p));
    }
    match region() {
        Some(region) => {
            ON_STACK.with(|s| s.set(true));
            let result = region.enter(f);
            ON_STACK.with(|s| s.set(false));
            result
        }
        None => catch_unwind(AssertUnwindSafe(f)).map_err(|p| ScriptPanic::from_payload(&*p)),
    }
}

/// Hands back to the system the pages of this thread's script stack below its first
/// `KEEP_RESIDENT` bytes (one system call). Call it after a run that may have gone deep.
pub fn release_depths() {
    if let Some(region) = STACK.with(Cell::get) {
        region.release_depths();
    }
}

fn region() -> Option<Region> {
    if let Some(region) = STACK.with(Cell::get) {
        return Some(region);
    }
    if MAP_FAILED.with(Cell::get) {
        return None;
    }
    match Region::map(SCRIPT_STACK) {
        Some(region) => {
            STACK.with(|s| s.set(Some(region)));
            REGIONS.with(|r| r.set(Some(Unmapper(region))));
            Some(region)
        }
        None => {
            MAP_FAILED.with(|f| f.set(true));
            tracing::warn!(
                bytes = SCRIPT_STACK,
                "cannot reserve a script stack; scripts run on the thread's own stack"
            );
            None
        }
    }
}

thread_local! {
    /// Unmaps this thread's script stack when the thread ends.
    static REGIONS: Cell<Option<Unmapper>> = const { Cell::new(None) };
}

struct Unmapper(Region);

impl Drop for Unmapper {
    fn drop(&mut self) {
        self.0.unmap();
    }
}

/// A mapped stack region: `base` is its lowest address, the lowest page a guard.
#[derive(Clone, Copy)]
struct Region {
    base: *mut u8,
    size: usize,
}

psm::psm_stack_manipulation! {
    yes {
        impl Region {
            fn page() -> usize {
                // SAFETY: sysconf has no preconditions.
                let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
                usize::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096)
            }

            /// Reserves `size` bytes of address space with a guard page at the bottom.
            fn map(size: usize) -> Option<Region> {
                let page = Self::page();
                #[cfg(target_os = "linux")]
                let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK;
                #[cfg(not(target_os = "linux"))]
                let flags = libc::MAP_PRIVATE | libc::MAP_ANON;
                // SAFETY: an anonymous private mapping at an address of the kernel's choice
                // touches no existing memory; the result is checked below.
                let base = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        size,
                        libc::PROT_READ | libc::PROT_WRITE,
                        flags,
                        -1,
                        0,
                    )
                };
                if base == libc::MAP_FAILED {
                    return None;
                }
                // SAFETY: the first page lies inside the mapping made above.
                let guarded = unsafe { libc::mprotect(base, page, libc::PROT_NONE) } == 0;
                let region = Region { base: base.cast(), size };
                if !guarded {
                    region.unmap();
                    return None;
                }
                Some(region)
            }

            fn unmap(self) {
                // SAFETY: the region was mapped by `map` with this size, and nothing runs
                // on it (it is unmapped only when its thread ends, or right after mapping).
                unsafe {
                    libc::munmap(self.base.cast(), self.size);
                }
            }

            fn enter<R>(self, f: impl FnOnce() -> R) -> Result<R, ScriptPanic> {
                let mut out: Option<Result<R, ScriptPanic>> = None;
                let slot = &mut out;
                // SAFETY: the region is page-aligned (mmap), its size a multiple of the
                // page size, its lowest page a guard; it is this thread's alone and not in
                // use (`ON_STACK` was false). The callback never unwinds: `catch_unwind`
                // stops every panic on the script stack.
                unsafe {
                    psm::on_stack(self.base, self.size, move || {
                        *slot = Some(
                            catch_unwind(AssertUnwindSafe(f))
                                .map_err(|p| ScriptPanic::from_payload(&*p)),
                        );
                    });
                }
                out.unwrap_or_else(|| Err(ScriptPanic("the script stack returned nothing".into())))
            }

            fn release_depths(self) {
                let page = Self::page();
                let deep = self.size.saturating_sub(KEEP_RESIDENT + page);
                if deep == 0 {
                    return;
                }
                // SAFETY: the range lies inside the mapping, above the guard page and below
                // the part kept; nothing runs on this stack now (callers are on their own
                // stack between runs), so dropping its pages loses nothing.
                unsafe {
                    libc::madvise(self.base.add(page).cast(), deep, libc::MADV_DONTNEED);
                }
            }
        }
    }
    no {
        impl Region {
            fn map(_size: usize) -> Option<Region> {
                None
            }
            fn unmap(self) {}
            fn enter<R>(self, f: impl FnOnce() -> R) -> Result<R, ScriptPanic> {
                catch_unwind(AssertUnwindSafe(f)).map_err(|p| ScriptPanic::from_payload(&*p))
            }
            fn release_depths(self) {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recursion far deeper than a 2 MiB thread stack holds.
    fn deep(n: u64) -> u64 {
        let pad = std::hint::black_box([n; 32]);
        if n == 0 {
            0
        } else {
            deep(n - 1) + pad[0] % 2
        }
    }

    #[test]
    fn a_deep_run_fits_on_the_script_stack_of_a_small_thread() {
        let answer = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| {
                let first = run(|| deep(200_000));
                release_depths();
                let again = run(|| deep(200_000));
                (first, again)
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(answer.0, Ok(100_000));
        assert_eq!(answer.1, Ok(100_000));
    }

    #[test]
    fn a_panic_on_the_script_stack_is_an_error_for_the_caller() {
        let result = run(|| -> u8 { panic!("engine bug") });
        assert_eq!(result, Err(ScriptPanic("engine bug".into())));
        // The stack is usable again afterwards.
        assert_eq!(run(|| 7), Ok(7));
    }

    #[test]
    fn a_nested_run_stays_on_the_same_stack() {
        assert_eq!(run(|| run(|| 1).unwrap() + 1), Ok(2));
    }
}
