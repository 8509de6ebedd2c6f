//! The batch structure a plan is prepared for ([`SeqLayout`]), how its forward walks the time
//! steps ([`StepStrategy`]), and the budgets that size a dispatch's loops on adapters that cap
//! them.

use crate::error::{Error, Result};

/// The structure of a packed batch: what a plan is built for. Only a valid layout can be
/// built (fields private): `batch_sizes` positive and non-increasing, `sorted_indices` a
/// permutation of the batch, the sequence lengths they imply within the kernels' indexing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SeqLayout {
    /// `[T]` rows per step, non-increasing.
    batch_sizes: Vec<usize>,
    /// `[B]` sorted position -> caller index.
    sorted_indices: Vec<usize>,
}

impl SeqLayout {
    /// Checks and builds a layout from `batch_sizes` (`[T]`, positive, non-increasing) and
    /// `sorted_indices` (`[B]`, a permutation of `0..B`, B = `batch_sizes[0]`).
    pub fn new(batch_sizes: Vec<usize>, sorted_indices: Vec<usize>) -> Result<Self> {
        let Some(&b) = batch_sizes.first() else {
            return Err(Error::EmptyBatch("batch_sizes is empty: no steps to run".into()));
        };
        if b == 0 {
            return Err(Error::EmptyBatch("batch_sizes[0] is 0: no sequences to run".into()));
        }
        if batch_sizes.windows(2).any(|w| w[1] > w[0]) || batch_sizes.contains(&0) {
            return Err(Error::InvalidLengths("batch_sizes must be positive and non-increasing".into()));
        }
        if sorted_indices.len() != b {
            return Err(Error::ShapeMismatch { what: "sorted_indices".into(), expected: vec![b], got: vec![sorted_indices.len()] });
        }
        let mut seen = vec![false; b];
        for (k, &i) in sorted_indices.iter().enumerate() {
            if i >= b || std::mem::replace(&mut seen[i], true) {
                return Err(Error::InvalidLengths(format!(
                    "sorted_indices is not a permutation of 0..{b}: entry {k} is {i}"
                )));
            }
        }
        Ok(SeqLayout { batch_sizes, sorted_indices })
    }

    /// The layout of a packed batch (validated first).
    pub fn of<T: Copy + Default>(p: &crate::PackedSequence<T>) -> Result<Self> {
        p.validate()?;
        Self::new(p.batch_sizes.clone(), p.sorted_indices.clone())
    }
    /// `[T]` rows per step.
    pub fn batch_sizes(&self) -> &[usize] {
        &self.batch_sizes
    }
    /// `[B]` sorted position -> caller index.
    pub fn sorted_indices(&self) -> &[usize] {
        &self.sorted_indices
    }
    /// B, the number of sequences.
    pub fn batch(&self) -> usize {
        self.batch_sizes[0]
    }
    /// N, the number of packed rows.
    pub fn rows(&self) -> usize {
        self.batch_sizes.iter().sum()
    }
    /// T, the longest length.
    pub fn steps(&self) -> usize {
        self.batch_sizes.len()
    }
}

/// How a plan walks the time steps of the forward.
// The hidden test-only variant is a real strategy tests pass in, not a non-exhaustive marker.
#[allow(clippy::manual_non_exhaustive)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StepStrategy {
    /// The single-dispatch path where a step is too small to pay for its own dispatches
    /// (and the path supports the config), else one dispatch per stage and step.
    #[default]
    Auto,
    /// Per step and stage, the fused stage kernel (the product and the cell's update in one
    /// dispatch).
    PerStep,
    /// Runs of steps of a layer-direction in one dispatch each, as long as the adapter's
    /// budget of loop iterations per dispatch allows (a long sequence is walked in runs that
    /// chain through the tape).
    SingleDispatch,
    /// As `SingleDispatch`, but every step in one dispatch whatever the adapter's budget: only
    /// for testing that a loop the adapter cuts short is detected (NaN, never stale values).
    #[doc(hidden)]
    SingleDispatchUnbounded,
}

/// Loop iterations one invocation of a single-dispatch run may take on an adapter that caps
/// them: Mesa's gallivm (behind lavapipe and llvmpipe through GL) ends every loop of an
/// invocation after 65,535 iterations in all (`LP_MAX_TGSI_LOOP_ITERATIONS`), silently. A
/// quarter is kept as margin over the loops' counts (`generic.rs`, `Shape::loop_iterations`).
pub const LOOP_ITERATIONS_CAPPED: usize = 48_000;

/// The same on other adapters, which have no such cap but a watchdog that kills long
/// dispatches (about 2 s on Windows): 2^24 iterations, some milliseconds on a GPU.
pub const LOOP_ITERATIONS_GPU: usize = 1 << 24;

/// The budget of loop iterations per invocation of one dispatch on this adapter.
pub fn loop_iteration_budget(info: &wgpu::AdapterInfo) -> usize {
    let name = info.name.to_ascii_lowercase();
    let capped = info.device_type == wgpu::DeviceType::Cpu
        || ["llvmpipe", "lavapipe", "softpipe", "swiftshader"].iter().any(|s| name.contains(s) || info.driver.to_ascii_lowercase().contains(s));
    if capped {
        LOOP_ITERATIONS_CAPPED
    } else {
        LOOP_ITERATIONS_GPU
    }
}

/// Steps per run for a budget and a per-step count, at least 1.
pub fn loop_run_steps(budget: usize, per_step: usize) -> usize {
    (budget / per_step.max(1)).max(1)
}

/// Up to this many multiply-adds per step (the batch times the products' rows times k, plus
/// the units), `Auto` takes the single-dispatch loops: on lavapipe a dispatch costs 15-25 us,
/// more than such a step's arithmetic, while a loop's few workgroups are slow on anything
/// larger (measured for the fused loops of 2026-11-27: C1 forward 145 ms per step, 918 ms
/// single). Not measured on a GPU for the cell loops yet; every adapter takes it.
pub const SINGLE_DISPATCH_MAX_MACS: usize = 1 << 16;

/// The longest k one GEMM dispatch walks: each invocation loops over k, and Mesa's gallivm ends
/// an invocation's loops after 65,535 iterations (see `LOOP_ITERATIONS_CAPPED`). A multiple of
/// 4, so runs keep the vec4 kernels' alignment.
pub(crate) const GEMM_K_RUN: usize = 16_384;

/// Rows one `colsum` dispatch sums per column: one invocation loops over them, and Mesa's
/// gallivm ends an invocation's loops after 65,535 iterations (see `LOOP_ITERATIONS_CAPPED`).
pub(crate) const COLSUM_ROWS: usize = 16_384;

