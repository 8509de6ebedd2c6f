//! Splitting the time loop across threads by batch rows.
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

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Fewest batch rows a thread takes: the f32 micro-kernel's row block, so splitting never
/// leaves a thread's block half empty where one thread would fill it.
pub const MIN_ROWS_PER_THREAD: usize = 8;

/// Below this many multiply-adds in one layer-direction's step products (all steps), the
/// loop stays on the calling thread: spawning costs tens of microseconds.
pub const MIN_PARALLEL_MACS: usize = 1 << 21;

static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the number of threads the CPU path's time loops use (`0` restores the default:
/// `MATMUL_NUM_THREADS` when set, else the machine's available parallelism). The large GEMMs
/// use matrixmultiply's own threads, set by `MATMUL_NUM_THREADS`. Results do not depend on it.
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// `MATMUL_NUM_THREADS` when set to a number: matrixmultiply's thread count, and (when
/// positive) the time loops' default.
pub fn env_threads() -> Option<usize> {
    std::env::var("MATMUL_NUM_THREADS").ok().and_then(|v| v.parse::<usize>().ok())
}

/// The thread count the time loops use (see [`set_threads`]).
pub fn threads() -> usize {
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

/// Runs `f` once per range, the first on the calling thread and the others on scoped threads.
pub fn run<F: Fn(Range<usize>) + Sync>(ranges: &[Range<usize>], f: F) {
    match ranges {
        [] => {}
        [only] => f(only.clone()),
        [first, rest @ ..] => std::thread::scope(|s| {
            for r in rest {
                let f = &f;
                s.spawn(move || f(r.clone()));
            }
            f(first.clone());
        }),
    }
}

/// A time loop over a slice of the batch, run by [`run_loop`].
pub trait RowLoop: Sync {
    /// Walks every step for batch rows `mine`. Implementations are `#[inline(always)]`, so
    /// that each of [`run_loop`]'s instruction-set variants compiles its own copy.
    fn rows(&self, mine: Range<usize>);
}

/// Runs `l` over `ranges` like [`run`], each part through the widest instruction set the
/// machine has: the loop's pointwise updates (exp, tanh, divisions) then vectorise 16 or 8
/// wide instead of SSE2's 4. Only the instruction selection differs (no FMA contraction, no
/// reassociation), so the results are bitwise those of the baseline build.
pub fn run_loop<L: RowLoop>(ranges: &[Range<usize>], l: &L) {
    run(ranges, |mine| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the feature was detected.
                return unsafe { x86::avx512(l, mine) };
            }
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the feature was detected.
                return unsafe { x86::avx2(l, mine) };
            }
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

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn avx2<L: RowLoop>(l: &L, mine: Range<usize>) {
        l.rows(mine)
    }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_batch_in_order() {
        set_threads(3);
        for batch in [0, 1, 7, 8, 16, 23, 24, 64] {
            let r = ranges(batch, usize::MAX);
            assert_eq!(r.first().map_or(0, |r| r.start), 0);
            assert_eq!(r.last().map_or(0, |r| r.end), batch);
            assert!(r.windows(2).all(|w| w[0].end == w[1].start));
            assert!(r.len() == 1 || r.iter().all(|r| r.len() >= MIN_ROWS_PER_THREAD), "{batch}: {r:?}");
            assert!(r.len() <= 3);
        }
        assert_eq!(ranges(64, MIN_PARALLEL_MACS - 1).len(), 1);
        set_threads(0);
    }
}
