//! The CPU engine: forward and backward through time of every registered cell
//! ([`crate::cells`]), stacked, bidirectional, over packed sequences, with PyTorch's
//! semantics. It never asks which cell it runs: the cell's pointwise functions are
//! monomorphised into the time loops.
//!
//! It follows the kernel plan the GPU uses, so it is both the reference that every GPU result
//! is tested against and an honest CPU baseline:
//! 1. the input projection `xp = X W_x^T + b_x`: one GEMM over all N packed rows of a
//!    layer, or, with enough rows, step by step inside the time loop with `W_x` packed once
//!    (so it is still in cache when the pointwise update reads it);
//! 2. per step and stage, the stage's product for the active rows (`r = v R^T + b`, a
//!    packed micro-kernel GEMM, [`smallgemm`]), then the cell's pointwise update per row;
//! 3. backward walks the steps in reverse, stages last to first: the cell's pointwise
//!    backward, then `dv = dr R` routed to the state or tape value the product read; after
//!    the loop, GEMMs over all rows give the weight gradients and column sums the biases
//!    (and `dX`, unless it was made step by step).
//!
//! The time loops are split by batch rows across threads (see [`split`]): rows are
//! independent, so results are bitwise the same for any thread count.
//!
//! All state is kept in sorted order (see [`crate::packing`]): at step t the active rows are
//! exactly rows `0..batch_sizes[t]` of the state, for both directions. A finished sequence's
//! row simply stops being updated, so its state is its final state; in the reverse direction
//! a row that starts late still holds its initial state. Generic over f32 and f64, with an
//! f16-storage twin of the GPU (see [`forward`]).

mod engine;
pub mod gemm;
pub mod pool;
pub mod smallgemm;
pub mod split;
pub mod train;
mod workers;

pub use crate::float::{cast, fast, Float};
pub use engine::{backward, backward_without_input, forward, forward_with, ForwardOutput, Gradients, Tape};
pub(crate) use engine::{check_run, check_states, check_weights};

use crate::error::{Error, Result};

/// Whether a forward pass keeps what backward needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    /// Keeps nothing; backward is refused.
    Inference,
    /// Keeps the tape for [`backward`].
    Training,
}

/// Zeros from the pool through a fallible allocation of `dims`' product (overflow-checked):
/// [`Error::OutOfMemory`] instead of an abort.
fn zeros<T: Float>(what: &str, dims: &[usize]) -> Result<Vec<T>> {
    pool::try_zeroed(what, crate::tensor::checked_len::<T>(what, dims)?)
}

/// A buffer from the pool whose values are unspecified (zeros or an earlier call's): for
/// buffers every element of which is written before it is read ([`pool::try_reused`]).
fn reused<T: Float>(what: &str, dims: &[usize]) -> Result<Vec<T>> {
    pool::try_reused(what, crate::tensor::checked_len::<T>(what, dims)?)
}

/// Zeros for a time loop's own scratch (not pooled), fallibly.
fn scratch<T: Float>(what: &str, dims: &[usize]) -> Result<Vec<T>> {
    crate::tensor::try_filled(what, crate::tensor::checked_len::<T>(what, dims)?, T::zero())
}

/// Where a time loop's threads report an allocation that failed (the first one wins).
pub(crate) type Failure = std::sync::OnceLock<Error>;

pub(crate) use crate::float::check_finite;

/// Reorders state `[L*D, B, F]` rows: `out[:, k] = src[:, perm[k]]`.
fn permute_state<T: Float>(src: &[T], ld: usize, b: usize, f: usize, perm: &[usize]) -> Result<Vec<T>> {
    let mut out = scratch("state", &[src.len()])?;
    for s in 0..ld {
        for (k, &p) in perm.iter().enumerate() {
            let dst = (s * b + k) * f;
            let from = (s * b + p) * f;
            out[dst..dst + f].copy_from_slice(&src[from..from + f]);
        }
    }
    Ok(out)
}

/// Adds a bias row to every row of `y: [rows, n]`.
#[inline(always)]
pub(crate) fn add_bias<T: Float>(y: &mut [T], n: usize, bias: Option<&[T]>) {
    if let Some(rows) = y.len().checked_div(n) {
        add_bias_rows(y, rows, n, n, bias);
    }
}

/// Adds `bias[..n]` to the first `n` elements of each of `rows` rows of `c`, `ldc` apart: the
/// one add a product's bias gets wherever the kernel did not add it (`smallgemm`, `gemm`).
#[inline(always)]
pub(crate) fn add_bias_rows<T: Float>(c: &mut [T], rows: usize, ldc: usize, n: usize, bias: Option<&[T]>) {
    if let Some(b) = bias {
        for r in 0..rows {
            for (v, &bv) in c[r * ldc..r * ldc + n].iter_mut().zip(&b[..n]) {
                *v += bv;
            }
        }
    }
}

/// The steps of one direction in processing order.
fn step_order(steps: usize, reverse: bool) -> Box<dyn Iterator<Item = usize>> {
    if reverse {
        Box::new((0..steps).rev())
    } else {
        Box::new(0..steps)
    }
}

/// Fewest packed rows for which the input side (the forward's `X W_ih^T`, the backward's
/// `dG W_ih`) is computed step by step with a packed W_ih: packing costs about as much as the
/// product for 16 rows (DeepBench's GRU with T = 1, B = 32 ran slower that way).
const PER_STEP_INPUT_MIN_ROWS: usize = 256;

/// Packed recurrent matrices (bytes, all stages) from which the per-step products are split by
/// columns across threads ([`split::run_steps`]) rather than the time loop by batch
/// rows: with the row split every thread streams all of them at every step, from L3 once they
/// outgrow a core's L2 (DeepBench's LSTM with H = 512: 4 MiB).
const COLUMN_SPLIT_MIN_BYTES: usize = 2 << 20;

/// Fewest multiply-adds in one step's products (every row) for the column split: its two
/// barriers a step must cost little beside a thread's share. At 1 << 18, GRU with H 256 at
/// batch 1 (196,608) ran its loop on one thread beside the other's idle spin; with the column
/// split (one process, alternated, 2 threads): forward 0.884x and 0.937x the time (I 128,
/// I 256; T 50), training 0.981x and 0.914x. Near the new bound: RNN H 256 batch 2 0.93x /
/// 0.91x, LSTM H 128 batch 2 0.86x / 0.89x, GRU H 128 batch 3 1.06x / 0.91x.
const COLUMN_SPLIT_MIN_STEP_MACS: usize = 1 << 17;

/// Threads for the column split of a layer-direction's forward or backward with batch `b`, `n`
/// packed rows and `product_macs` multiply-adds per row in its products, or 0 for the row
/// split: when the matrices outgrow L2 ([`COLUMN_SPLIT_MIN_BYTES`]) or the batch is too small to split by rows,
/// and a step has work enough ([`COLUMN_SPLIT_MIN_STEP_MACS`]).
fn column_split<T>(b: usize, n: usize, product_macs: usize) -> usize {
    let threads = split::threads();
    let step_macs = b.saturating_mul(product_macs);
    if threads < 2 || step_macs < COLUMN_SPLIT_MIN_STEP_MACS {
        return 0;
    }
    let big = product_macs.saturating_mul(std::mem::size_of::<T>()) >= COLUMN_SPLIT_MIN_BYTES;
    let row_parts = split::ranges(b, n.saturating_mul(product_macs)).len();
    if big || row_parts < threads {
        threads
    } else {
        0
    }
}

/// Largest W_ih (bytes) computed step by step: every thread streams it at every step beside
/// W_hh, so it must stay in a core's L2 with it. C1's LSTM (512 KiB) gains by the step-by-step
/// form (6.1 against 6.3 ms forward), DeepBench's LSTM with H = 512 (4 MiB) loses by it (11.7
/// against 10.9 ms forward, 21.2 against 19.9 backward; the AVX-512 VM, 2 MiB L2 per core).
const PER_STEP_INPUT_MAX_BYTES: usize = 1 << 20;

/// Whether a layer-direction with batch `b`, `n` packed rows and a W_ih of `w_elems` elements of
/// `T` computes its input side step by step (else by one GEMM over all rows).
fn per_step_input<T>(b: usize, n: usize, w_elems: usize) -> bool {
    b >= split::MIN_ROWS_PER_THREAD && n >= PER_STEP_INPUT_MIN_ROWS && w_elems.saturating_mul(std::mem::size_of::<T>()) <= PER_STEP_INPUT_MAX_BYTES
}

/// `acc[j] += sum_r m[r, j]` for `m: [rows, n]`.
pub(crate) fn col_sum_into<T: Float>(m: &[T], n: usize, acc: &mut [T]) {
    for row in m.chunks_exact(n) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
}
