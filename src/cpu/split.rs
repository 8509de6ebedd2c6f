//! Splitting the time loop across threads: by batch rows ([`run_loop`]), or, where that cannot
//! use every thread or the recurrent matrices outgrow L2, each step's products by columns
//! ([`run_steps`], see `cpu::column_split`).
//!
//! A batch row's recurrence never reads another row: its step product is its own `h` times
//! `W_hh^T`, its pointwise update touches its own columns. So each thread can walk all the
//! steps for a contiguous slice of the batch with no synchronisation between steps, and every
//! row is computed by exactly the same operations in the same order as on one thread (the
//! per-step micro-kernel computes each row independently of the rows beside it): the results
//! are bitwise the same for any thread count.
//!
//! The threads write the shared packed buffers (output, tape, gradients) at rows
//! `offset[t] + r` for their own `r`, which interleave between threads step by step, so they
//! go through [`Rows`], a raw view whose users promise disjoint rows.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Fewest batch rows a thread takes: the f32 micro-kernel's row block, so splitting never
/// leaves a thread's block half empty where one thread would fill it.
pub const MIN_ROWS_PER_THREAD: usize = 8;

/// Below this many multiply-adds in one layer-direction's step products (all steps), the
/// loop stays on the calling thread: handing parts to other threads costs microseconds.
pub const MIN_PARALLEL_MACS: usize = 1 << 21;

static THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's override of the thread count (0: none), set by [`with_threads`].
    static LOCAL_THREADS: Cell<usize> = const { Cell::new(0) };
    /// The most parts any [`run`] called on this thread used, since [`take_max_parts`].
    static MAX_PARTS: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f` with the time loops started from this thread using `n` threads (`0`: no
/// override), without touching the process-wide setting of [`set_threads`], so calls on other
/// threads (tests running in parallel) are not affected. The count is read on the calling
/// thread when a loop is split ([`ranges`]); the workers it spawns do not read it. The
/// previous override is restored when `f` returns or panics.
pub fn with_threads<R>(n: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            LOCAL_THREADS.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(LOCAL_THREADS.with(|c| c.replace(n)));
    f()
}

/// The largest number of parts (threads, the calling one included) that any [`run`] started
/// from this thread used since the last call, which resets it: lets tests check that a
/// thread count was honoured.
pub fn take_max_parts() -> usize {
    MAX_PARTS.with(|c| c.replace(0))
}

/// Sets the number of threads the CPU path's time loops use (`0` restores the default:
/// `MATMUL_NUM_THREADS` when set, else the machine's available parallelism), as do the large
/// f32 GEMMs (`cpu::gemm`); matrixmultiply's (f64, small products) use its own threads, set by
/// `MATMUL_NUM_THREADS`. Results do not depend on it.
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// `MATMUL_NUM_THREADS` when set to a number: matrixmultiply's thread count, and (when
/// positive) the time loops' default.
pub fn env_threads() -> Option<usize> {
    std::env::var("MATMUL_NUM_THREADS").ok().and_then(|v| v.parse::<usize>().ok())
}

/// The thread count the time loops started from this thread use: the [`with_threads`]
/// override when one is active, else the process-wide count (see [`set_threads`]).
pub fn threads() -> usize {
    let local = LOCAL_THREADS.with(Cell::get);
    if local > 0 {
        return local;
    }
    match THREADS.load(Ordering::Relaxed) {
        0 => env_threads().filter(|&n| n > 0).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        n => n,
    }
}

/// Contiguous row ranges covering `0..batch`, one per thread, for a loop of `macs`
/// multiply-adds; a single range when splitting would not pay.
pub fn ranges(batch: usize, macs: usize) -> Vec<Range<usize>> {
    let parts = if macs < MIN_PARALLEL_MACS { 1 } else { threads().min(batch / MIN_ROWS_PER_THREAD).max(1) };
    let (base, extra) = (batch / parts, batch % parts);
    let mut start = 0;
    (0..parts)
        .map(|p| {
            let len = base + usize::from(p < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// Runs `f` once per range at the same time, the first on the calling thread and the others on
/// kept worker threads (the crate-private `cpu::workers`).
pub fn run<F: Fn(Range<usize>) + Sync>(ranges: &[Range<usize>], f: F) {
    run_parts(ranges.len(), |p| f(ranges[p].clone()))
}

/// Runs `f(p)` for every part `p < parts` at the same time, part 0 on the calling thread and
/// the others on kept worker threads (`cpu::workers`).
fn run_parts<F: Fn(usize) + Sync>(parts: usize, f: F) {
    MAX_PARTS.with(|c| c.set(c.get().max(parts)));
    super::workers::run_parts(parts, f)
}

/// A time loop over a slice of the batch, run by [`run_loop`].
pub trait RowLoop: Sync {
    /// Walks every step for batch rows `mine`. Implementations are `#[inline(always)]`, so
    /// that each of [`run_loop`]'s instruction-set variants compiles its own copy.
    fn rows(&self, mine: Range<usize>);
}

/// Runs `l` over `ranges` like [`run`], each part through the instruction set of the CPU
/// engine's kernels (the widest the machine has, `smallgemm::isa`): the loop's pointwise
/// updates (exp, tanh, divisions) then vectorise 16 or 8 wide instead of SSE2's 4, and the
/// explicit fused multiply-adds (`mul_add`, in `float::fast::exp`) become FMA instructions.
/// Only the instruction selection differs (no contraction of separate multiplies and adds, no
/// reassociation; `mul_add` rounds once on every target), so the results are bitwise those of
/// the baseline build.
pub fn run_loop<L: RowLoop>(ranges: &[Range<usize>], l: &L) {
    run(ranges, |mine| {
        #[cfg(target_arch = "x86_64")]
        match super::smallgemm::isa() {
            // SAFETY: `isa` chose it where the machine has it.
            super::smallgemm::Isa::Avx512 => return unsafe { x86::avx512(l, mine) },
            // SAFETY: as above.
            super::smallgemm::Isa::Avx2 => return unsafe { x86::avx2(l, mine) },
            super::smallgemm::Isa::Portable => {}
        }
        l.rows(mine)
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Range, RowLoop};

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512<L: RowLoop>(l: &L, mine: Range<usize>) {
        l.rows(mine)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2<L: RowLoop>(l: &L, mine: Range<usize>) {
        l.rows(mine)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512_steps<L: super::StepLoop>(l: &L, part: usize, parts: usize, mine: Range<usize>, b: &super::StepBarrier) {
        l.steps(part, parts, mine, b)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2_steps<L: super::StepLoop>(l: &L, part: usize, parts: usize, mine: Range<usize>, b: &super::StepBarrier) {
        l.steps(part, parts, mine, b)
    }
}

/// A time loop whose steps all threads walk together, run by [`run_steps`]: the per-step
/// products split by columns (each thread its share of the packed matrices' panels, for every
/// row), the pointwise updates by batch rows, with a [`StepBarrier`] between the phases.
pub trait StepLoop: Sync {
    /// Walks every step as thread `part` of `parts`, whose pointwise rows are `mine`.
    /// Implementations are `#[inline(always)]` (see [`RowLoop::rows`]) and must reach every
    /// [`StepBarrier::wait`] the other threads reach, or poison the barrier.
    fn steps(&self, part: usize, parts: usize, mine: Range<usize>, barrier: &StepBarrier);
}

/// Runs `l` on `ranges.len()` threads (the calling one included), thread `p` with pointwise
/// rows `ranges[p]`, each through the engine's instruction set (as [`run_loop`]). A thread
/// that panics poisons the barrier, so the others leave their loops instead of waiting for it
/// forever; the panic then propagates.
pub fn run_steps<L: StepLoop>(ranges: &[Range<usize>], l: &L) {
    let barrier = StepBarrier::new(ranges.len());
    run_parts(ranges.len(), |part| {
        struct PoisonOnUnwind<'a>(&'a StepBarrier);
        impl Drop for PoisonOnUnwind<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.poison();
                }
            }
        }
        let _guard = PoisonOnUnwind(&barrier);
        let mine = ranges[part].clone();
        #[cfg(target_arch = "x86_64")]
        match super::smallgemm::isa() {
            // SAFETY: `isa` chose it where the machine has it.
            super::smallgemm::Isa::Avx512 => return unsafe { x86::avx512_steps(l, part, ranges.len(), mine, &barrier) },
            // SAFETY: as above.
            super::smallgemm::Isa::Avx2 => return unsafe { x86::avx2_steps(l, part, ranges.len(), mine, &barrier) },
            super::smallgemm::Isa::Portable => {}
        }
        l.steps(part, ranges.len(), mine, &barrier)
    })
}

/// A spinning barrier for the few threads of one [`run_steps`] (as many as cores, with phases
/// of microseconds: a futex wait and wake-up cost as much as a phase). After many spins it
/// yields, so an oversubscribed machine still progresses. Once poisoned (a thread failed or
/// panicked), every wait returns at once and [`StepBarrier::poisoned`] says so.
pub struct StepBarrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
    poisoned: std::sync::atomic::AtomicBool,
}

impl StepBarrier {
    /// A barrier for `n` threads.
    pub fn new(n: usize) -> Self {
        StepBarrier { n, count: AtomicUsize::new(0), generation: AtomicUsize::new(0), poisoned: std::sync::atomic::AtomicBool::new(false) }
    }

    /// Waits until all `n` threads have called `wait` (this generation), or the barrier is
    /// poisoned. Returns false when poisoned: the caller leaves its loop.
    pub fn wait(&self) -> bool {
        if self.poisoned() {
            return false;
        }
        let gen = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return !self.poisoned();
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == gen {
            if self.poisoned() {
                return false;
            }
            spins = spins.saturating_add(1);
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        !self.poisoned()
    }

    /// Releases every waiter for good (a thread failed or panicked).
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    /// Whether the barrier was poisoned.
    pub fn poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }
}

/// Contiguous row ranges covering `0..batch`, one per part (empty ones when the batch has
/// fewer rows than parts): [`run_steps`]' pointwise rows.
pub fn step_ranges(batch: usize, parts: usize) -> Vec<Range<usize>> {
    (0..parts).map(|p| panel_range(batch, p, parts)).collect()
}

/// Contiguous panel ranges covering `0..panels`, one per part (some empty when there are
/// fewer panels than parts), for [`StepLoop`]'s column split.
pub fn panel_range(panels: usize, part: usize, parts: usize) -> Range<usize> {
    let (base, extra) = (panels / parts, panels % parts);
    let start = part * base + part.min(extra);
    start..start + base + usize::from(part < extra)
}

/// A mutable slice shared by threads that write disjoint parts of it.
pub struct Rows<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: `Rows` only hands out slices through `part`, whose callers guarantee that no two
// live slices overlap; T itself is sent between threads.
unsafe impl<T: Send> Send for Rows<'_, T> {}
unsafe impl<T: Send> Sync for Rows<'_, T> {}

impl<'a, T> Rows<'a, T> {
    /// Borrows `s` for the threads.
    pub fn new(s: &'a mut [T]) -> Self {
        Rows { ptr: s.as_mut_ptr(), len: s.len(), _borrow: PhantomData }
    }

    /// Elements `start..start + len`.
    ///
    /// # Safety
    /// No other slice of the same `Rows` that overlaps this range may be alive while the
    /// returned one is.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start + len <= self.len, "Rows::part out of range");
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }

    /// A pointer to element `start` and the elements from there to the end: for writers of
    /// strided disjoint parts (columns) through [`crate::cpu::smallgemm::PackedB::gemm_panels`].
    ///
    /// # Safety
    /// The caller's writes through it must not overlap what other live slices or pointers of
    /// the same `Rows` access.
    pub unsafe fn tail_ptr(&self, start: usize) -> (*mut T, usize) {
        assert!(start <= self.len, "Rows::tail_ptr out of range");
        (self.ptr.add(start), self.len - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_batch_in_order() {
        with_threads(3, || {
            for batch in [0, 1, 7, 8, 16, 23, 24, 64] {
                let r = ranges(batch, usize::MAX);
                assert_eq!(r.first().map_or(0, |r| r.start), 0);
                assert_eq!(r.last().map_or(0, |r| r.end), batch);
                assert!(r.windows(2).all(|w| w[0].end == w[1].start));
                assert!(r.len() == 1 || r.iter().all(|r| r.len() >= MIN_ROWS_PER_THREAD), "{batch}: {r:?}");
                assert_eq!(r.len(), (batch / MIN_ROWS_PER_THREAD).clamp(1, 3), "{batch}: {r:?}");
            }
            assert_eq!(ranges(64, MIN_PARALLEL_MACS - 1).len(), 1);
        });
    }

    /// The override is this thread's only, nests, and is restored after a panic.
    #[test]
    fn with_threads_is_local_nested_and_restored() {
        let outside = threads();
        with_threads(5, || {
            assert_eq!(threads(), 5);
            assert_eq!(std::thread::spawn(threads).join().unwrap(), outside, "override leaked to another thread");
            with_threads(2, || assert_eq!(threads(), 2));
            assert_eq!(threads(), 5);
            let r = std::panic::catch_unwind(|| with_threads(7, || panic!("inside")));
            assert!(r.is_err());
            assert_eq!(threads(), 5, "not restored after a panic");
        });
        assert_eq!(threads(), outside);
    }

    /// `run` records how many parts it used on the calling thread.
    #[test]
    fn run_counts_its_parts() {
        let _ = take_max_parts();
        run(&[0..1, 1..2, 2..3, 3..4], |_| {});
        run(std::slice::from_ref(&(0..2)), |_| {});
        assert_eq!(take_max_parts(), 4);
        assert_eq!(take_max_parts(), 0, "not reset");
    }
}
