//! Plans: everything about one problem shape prepared once (per-dispatch parameters, the
//! sequence tables, workspaces, pipelines), then recorded into a caller's command encoder
//! as many times as wanted, with no submit, no readback and no `queue.write_buffer`.
//!
//! Forward, per layer and direction: one GEMM for the input projection of all N packed rows,
//! one fused step kernel per time step (plus the projection kernel with `proj_size`), and a
//! gather of each sequence's final state. Backward walks the steps in reverse (gate-gradient
//! kernel, recurrent-gradient product), then GEMMs over all rows give the weight gradients
//! and column sums the bias gradients. Everything runs in one compute pass.

use super::context::{Context, TrackedBuffer};
use super::kernels::*;
use super::record::{self, ParamBlocks, Recorder};
use super::tables::SeqTables;
use super::tape::{padded_input, GradLayout, TapeLayout, WtLayout};
use crate::cells::Slot;
use crate::config::{Mode, RnnConfig};
use crate::cpu::Pass;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::Arc;

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
    /// (and the path supports the config), else one dispatch per step.
    #[default]
    Auto,
    /// One fused dispatch per step.
    PerStep,
    /// One fused dispatch per step with the GPU-shaped kernel (`step_split` in
    /// step_forward.wgsl: the recurrent product's k split across the workgroup, KS times the
    /// invocations). `Auto` takes it when `WGPU_RNN_STEP_SHAPE=split`; its speed on discrete
    /// GPUs is not measured yet, so no adapter takes it by default.
    PerStepSplit,
    /// All steps of a layer-direction in one dispatch (no projection, hidden_size <= 256),
    /// or in as few dispatches as the adapter's budget of work per dispatch allows (a long
    /// sequence is walked in runs of steps that chain through the tape).
    SingleDispatch,
    /// As `SingleDispatch`, but every step in one dispatch whatever the adapter's budget: only
    /// for testing that a loop the adapter cuts short is detected (NaN, never stale values).
    #[doc(hidden)]
    SingleDispatchUnbounded,
}

/// `WGPU_RNN_STEP_SHAPE=split`: [`StepStrategy::Auto`] takes the GPU-shaped per-step kernel
/// ([`StepStrategy::PerStepSplit`]) where it would take a per-step one.
pub const ENV_STEP_SHAPE: &str = "WGPU_RNN_STEP_SHAPE";

/// Loop iterations one invocation of a single-dispatch run may take on an adapter that caps
/// them: Mesa's gallivm (behind lavapipe and llvmpipe through GL) ends every loop of an
/// invocation after 65,535 iterations in all (`LP_MAX_TGSI_LOOP_ITERATIONS`), silently. A
/// quarter is kept as margin over [`loop_forward_iterations`]'s count.
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

/// An upper bound on the loop iterations one step of `loop_step` takes per invocation
/// (step_forward.wgsl: the step loop, LOOP_ROWS rows of an H-long product, LOOP_ROWS stores of
/// G gates), with a margin.
pub fn loop_forward_iterations(gates: usize, hidden: usize) -> usize {
    1 + LOOP_ROWS * (1 + hidden) + LOOP_ROWS * (1 + gates) + 16
}

/// The same for `loop_grad` (step_backward.wgsl: LOOP_ROWS rows of gate stores, then
/// LOOP_ROWS rows of a G*H-long product).
pub fn loop_backward_iterations(gates: usize, hidden: usize) -> usize {
    1 + LOOP_ROWS * (1 + 2 * gates + 3) + LOOP_ROWS * (1 + gates * hidden) + 16
}

/// Steps per run for a budget and a per-step count; the loops before and after the step loop
/// (LOOP_ROWS iterations each) come off the budget first. At least 1.
pub fn loop_run_steps(budget: usize, per_step: usize) -> usize {
    (budget.saturating_sub(4 * LOOP_ROWS) / per_step.max(1)).max(1)
}

/// Runs of at most `max` consecutive time steps covering `0..steps`, as (first time step,
/// length), in processing order: ascending time, or descending with `descending`.
fn loop_runs(steps: usize, max: usize, descending: bool) -> Vec<(usize, usize)> {
    let max = max.max(1);
    let mut v: Vec<(usize, usize)> = (0..steps).step_by(max).map(|t0| (t0, max.min(steps - t0))).collect();
    if descending {
        v.reverse();
    }
    v
}

/// Below this many multiply-adds per step (B * G*H * H), `Auto` takes the single-dispatch
/// path on a CPU-emulated adapter: on lavapipe a dispatch costs 15-25 us, more than such a
/// step's arithmetic, while the loop's few workgroups are slow on anything larger (C1 forward
/// 145 ms per step, 918 ms single).
pub const SINGLE_DISPATCH_MAX_MACS: usize = 1 << 16;

/// The same bound on GPUs. Measured on an H200 (benches/results/h200-step-strategy-*):
/// single dispatch won at 98k multiply-adds a step (GRU H 64 B 8: 1.7 vs 4.7 ms forward) and
/// lost from 4.2M up (LSTM H 128 B 64: 7.7 vs 4.3 ms; C1: 7.8 vs 3.8 ms).
pub const SINGLE_DISPATCH_MAX_MACS_GPU: usize = 1 << 19;

/// The longest k one GEMM dispatch walks: each invocation loops over k, and Mesa's gallivm ends
/// an invocation's loops after 65,535 iterations (see `LOOP_ITERATIONS_CAPPED`). A multiple of
/// 4, so runs keep the vec4 kernels' alignment.
pub(crate) const GEMM_K_RUN: usize = 16_384;

/// Rows one `colsum` dispatch sums per column: one invocation loops over them, and Mesa's
/// gallivm ends an invocation's loops after 65,535 iterations (see `LOOP_ITERATIONS_CAPPED`).
pub(crate) const COLSUM_ROWS: usize = 16_384;

/// Which optional state tensors a plan's recordings will bind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct StateInputs {
    /// Forward: `h0` given (else zeros).
    pub h0: bool,
    /// Forward: `c0` given (LSTM; else zeros).
    pub c0: bool,
    /// Backward: `grad_h_n` given (else taken as zeros).
    pub grad_h_n: bool,
    /// Backward: `grad_c_n` given (LSTM; else zeros).
    pub grad_c_n: bool,
}

/// Element offsets of one layer-direction's parameters in the flat weights buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DirOffsets {
    /// `weight_ih [G*H, in]`.
    pub w_ih: u32,
    /// `weight_hh [G*H, H_out]`.
    pub w_hh: u32,
    /// `bias_ih [G*H]`, or [`NONE`](crate::gpu::kernels::NONE) without biases.
    pub b_ih: u32,
    /// `bias_hh [G*H]`, or [`NONE`](crate::gpu::kernels::NONE) without biases.
    pub b_hh: u32,
    /// `weight_hr [P, H]`, or [`NONE`](crate::gpu::kernels::NONE) without projection.
    pub w_hr: u32,
}

/// Offsets of every parameter in the flat layout (state_dict order, each tensor row-major),
/// and the total element count. Gradients use the same layout.
pub(crate) fn weight_layout(cfg: &RnnConfig) -> (Vec<DirOffsets>, usize) {
    let mut off = 0usize;
    let mut v = Vec::new();
    for layer in 0..cfg.num_layers {
        for _ in 0..cfg.directions() {
            let mut d = DirOffsets { w_ih: NONE, w_hh: NONE, b_ih: NONE, b_hh: NONE, w_hr: NONE };
            for def in cfg.param_defs(layer) {
                let slot = match def.slot {
                    Slot::WeightIh => &mut d.w_ih,
                    Slot::WeightHh => &mut d.w_hh,
                    Slot::BiasIh => &mut d.b_ih,
                    Slot::BiasHh => &mut d.b_hh,
                    Slot::WeightHr => &mut d.w_hr,
                    // Plans exist only for cells the GPU runs (`Mode::fused`).
                    Slot::Pointwise => continue,
                };
                *slot = off as u32;
                off += def.len();
            }
            v.push(d);
        }
    }
    (v, off)
}

/// A buffer an op binds: the caller's (named by role) or the plan's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Buf {
    Dummy,
    Weights,
    Input,
    Output,
    H0,
    C0,
    HN,
    CN,
    GradOutput,
    GradHN,
    GradCN,
    GradInput,
    GradH0,
    GradC0,
    GradWeights,
    Seq,
    Xp,
    Wt,
    Hp,
    Tape(u16),
    LayerOut(u16),
    Prev,
    Bw,
    Dg,
    Dx(u8),
    /// A layer input padded to a multiple of 4 columns, W_ih so padded, dW_ih and dX before
    /// unpadding (layers whose input width is not a multiple of 4).
    XPad,
    WPad,
    DwPad,
    DxPad,
}

#[derive(Clone, Debug)]
struct Op {
    kernel: Kernel,
    bufs: Vec<Buf>,
    param_offset: u32,
    groups: [u32; 3],
}

/// The caller's buffers for a forward. Every buffer holds elements in the config's
/// [`crate::Precision`] (f32, or f16: sizes checked in f16 elements, rounded up to 4 bytes),
/// row-major.
pub(crate) struct FusedForwardBuffers<'a> {
    /// Flat parameters in [`weight_layout`] order.
    pub weights: &'a wgpu::Buffer,
    /// `[N, I]` packed input rows.
    pub input: &'a wgpu::Buffer,
    /// `[N, D*H_out]` packed output rows (written).
    pub output: &'a wgpu::Buffer,
    /// `[L*D, B, H_out]`, caller's batch order; required iff the plan's `StateInputs::h0`.
    pub h0: Option<&'a wgpu::Buffer>,
    /// `[L*D, B, H]` (LSTM); required iff `StateInputs::c0`.
    pub c0: Option<&'a wgpu::Buffer>,
    /// `[L*D, B, H_out]` (written).
    pub h_n: &'a wgpu::Buffer,
    /// `[L*D, B, H]` (written; LSTM only, required there).
    pub c_n: Option<&'a wgpu::Buffer>,
}

/// The caller's buffers for a backward: the forward's inputs and output unchanged since the
/// training forward was recorded, the gradients coming in, and where the gradients go.
pub(crate) struct FusedBackwardBuffers<'a> {
    /// Flat parameters in [`weight_layout`] order, as the forward had them.
    pub weights: &'a wgpu::Buffer,
    /// `[N, I]` packed input rows, as the forward had them.
    pub input: &'a wgpu::Buffer,
    /// `[N, D*H_out]`, the training forward's output.
    pub output: &'a wgpu::Buffer,
    /// `[L*D, B, H_out]`, as the forward had it; required iff `StateInputs::h0`.
    pub h0: Option<&'a wgpu::Buffer>,
    /// `[L*D, B, H]`, as the forward had it; required iff `StateInputs::c0`.
    pub c0: Option<&'a wgpu::Buffer>,
    /// `[N, D*H_out]`.
    pub grad_output: &'a wgpu::Buffer,
    /// `[L*D, B, H_out]`; required iff `StateInputs::grad_h_n`.
    pub grad_h_n: Option<&'a wgpu::Buffer>,
    /// `[L*D, B, H]`; required iff `StateInputs::grad_c_n`.
    pub grad_c_n: Option<&'a wgpu::Buffer>,
    /// `[N, I]` (written).
    pub grad_input: &'a wgpu::Buffer,
    /// `[L*D, B, H_out]` (written).
    pub grad_h0: &'a wgpu::Buffer,
    /// `[L*D, B, H]` (written; LSTM only, required there).
    pub grad_c0: Option<&'a wgpu::Buffer>,
    /// Flat, [`weight_layout`] order (written; every element).
    pub grad_weights: &'a wgpu::Buffer,
}

/// A prepared forward (and, in training, backward) for one config and batch structure.
pub(crate) struct FusedPlan {
    ctx: Arc<Context>,
    cfg: RnnConfig,
    pass: Pass,
    inputs: StateInputs,
    layout: SeqLayout,
    n: usize,
    b: usize,
    weight_elems: usize,
    params: TrackedBuffer,
    own: HashMap<Buf, TrackedBuffer>,
    forward_ops: Vec<Op>,
    backward_ops: Vec<Op>,
    pipelines: HashMap<Kernel, wgpu::ComputePipeline>,
    /// Timestamps around every dispatch while set (see `gpu::profile`).
    profile: std::sync::Mutex<Option<Arc<super::profile::KernelProfile>>>,
}

impl std::fmt::Debug for FusedPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedPlan").field("cfg", &self.cfg).field("pass", &self.pass).field("n", &self.n).finish()
    }
}

fn groups_2d(width: usize, rows: usize, wg: usize) -> [u32; 3] {
    [width.div_ceil(wg) as u32, rows as u32, 1]
}

fn groups_linear(count: usize) -> [u32; 3] {
    let g = count.div_ceil(256).max(1);
    let x = g.min(65535);
    [x as u32, g.div_ceil(x) as u32, 1]
}

fn to_u32(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v)
        .ok()
        .filter(|&x| x < 1 << 31)
        .ok_or_else(|| Error::Limit(format!("{what} ({v}) exceeds the kernels' 31-bit indexing")))
}

/// What a fused plan's ops and workspaces are built from: the config, the batch structure,
/// the strategy's choices, and the sizes and offsets that follow from them.
struct Fused<'a> {
    ctx: &'a Context,
    cfg: &'a RnnConfig,
    layout: &'a SeqLayout,
    inputs: StateInputs,
    training: bool,
    cell: Mode,
    prec: crate::precision::Precision,
    /// Packed rows, batch, time steps.
    n: usize,
    b: usize,
    steps: usize,
    /// H, H_out, directions, G*H, the projection's P (0 without).
    hs: usize,
    ho: usize,
    d: usize,
    gh: usize,
    p: usize,
    lstm: bool,
    out_w: usize,
    /// Each layer-direction's parameter offsets in the flat weights, and their total.
    woff: Vec<DirOffsets>,
    weight_elems: usize,
    tables: SeqTables,
    off_tab: u32,
    bs_tab: u32,
    tape: TapeLayout,
    wt: WtLayout,
    grad: GradLayout,
    /// The widest zero-padded layer input, if a layer's input is padded.
    pad_max: Option<usize>,
    /// The GPU-shaped step kernel; vec4 reads of W_hh rows and the states (CPU-emulated
    /// adapters); the recurrent gradient's vec4 and wide variants.
    split: bool,
    vec4: bool,
    rec_vec4: bool,
    rec_wide: bool,
    /// The single-dispatch path, and its runs' longest forward and backward.
    single: bool,
    fwd_run: usize,
    bwd_run: usize,
}

impl<'a> Fused<'a> {
    /// Checks the config and limits, lays out the tape, the rearranged weights and the
    /// backward's workspaces, and makes the strategy's choices (kernel shapes, the
    /// single-dispatch path and its runs).
    fn new(ctx: &'a Context, cfg: &'a RnnConfig, layout: &'a SeqLayout, pass: Pass, inputs: StateInputs, strategy: StepStrategy) -> Result<Self> {
        // The fused step kernels run PyTorch's four cells (their pipelines are keyed by the cell).
        if !cfg.mode.fused() {
            return Err(Error::Unsupported(format!("{} in the fused GPU path (gpu::generic runs it)", cfg.mode)));
        }
        if cfg.regularised() {
            return Err(Error::Unsupported("dropout and zoneout in the fused GPU path (gpu::CellPlan runs them)".into()));
        }
        let cell = cfg.mode;
        let prec = cfg.precision;
        cfg.validate()?;
        // Before anything is allocated: f16 storage needs SHADER_F16.
        ctx.check_precision(prec)?;
        // A SeqLayout is valid by construction (SeqLayout::new).
        if cfg.mode != Mode::Lstm && (inputs.c0 || inputs.grad_c_n) {
            return Err(Error::InvalidConfig(format!("{} has no cell state", cfg.mode)));
        }
        let limits = ctx.limits();
        let (n, b, steps) = (layout.rows(), layout.batch(), layout.batch_sizes.len());
        if b as u32 > limits.max_compute_workgroups_per_dimension {
            return Err(Error::Limit(format!(
                "batch {b} exceeds the device's {} workgroups per dimension",
                limits.max_compute_workgroups_per_dimension
            )));
        }
        let (hs, ho, g, d) = (cfg.hidden_size, cfg.out_size(), cfg.gates(), cfg.directions());
        let gh = g * hs;
        let p = cfg.proj_size;
        let training = pass == Pass::Training;
        let (woff, weight_elems) = weight_layout(cfg);
        let lstm = cfg.mode == Mode::Lstm;
        let out_w = cfg.output_size();
        for (what, v) in [("rows", n), ("weights", weight_elems), ("rows * width", n * gh.max(out_w).max(cfg.input_size) * 2)] {
            to_u32(what, v)?;
        }
        let max_groups = limits.max_compute_workgroups_per_dimension as usize;
        if n.div_ceil(ROW_BLOCK) > max_groups || gh.max(out_w).div_ceil(256) > max_groups {
            return Err(Error::Limit(format!("{n} rows exceed the device's {max_groups} workgroups per dimension")));
        }

        // Sequence tables: prev[] per direction, then last[] per direction, step offsets and
        // batch sizes (see `tables`).
        let tables = SeqTables::new(&layout.batch_sizes, &layout.sorted_indices, d);
        let (off_tab, bs_tab) = (tables.off_tab(), tables.bs_tab());

        // Region offsets (elements) in the tape and the rearranged weights (see `tape`).
        let tape = TapeLayout::new(cfg, n, b);
        let padded = |l: usize| padded_input(cfg, l);
        let pad_max = (0..cfg.num_layers).filter_map(padded).max();
        let wt = WtLayout::new(cfg);
        // The vec4 step kernels read W_hh rows and the gathered states along k as vec4s.
        // On a CPU-emulated adapter (lavapipe) an invocation's vec4 load is one 16-byte load and
        // scalar loads with lane-varying addresses are gathers, so the step kernels read W_hh
        // rows and gathered states as vec4s along k. A GPU wants neighbouring invocations on
        // neighbouring addresses there (W_hh^T): on the H200 that was faster from H 512 up.
        // The recurrent gradient reads W_hh^T and dG rows as vec4s along g on both kinds (on the
        // H200: C1 training 9.2 ms, against 15.5 ms with the coalesced scalar variant).
        let cpu_like = ctx.adapter_info().device_type == wgpu::DeviceType::Cpu;
        // The GPU-shaped per-step kernel: asked for, or forced by WGPU_RNN_STEP_SHAPE=split.
        let split = match strategy {
            StepStrategy::PerStepSplit => true,
            StepStrategy::Auto => std::env::var(ENV_STEP_SHAPE).is_ok_and(|v| v == "split"),
            _ => false,
        };
        let vec4 = ho % 4 == 0 && cpu_like && !split;
        let rec_vec4 = gh % 4 == 0;
        // On a CPU-emulated adapter each invocation of the vec4 recurrent gradient owns 4
        // adjacent k (see WIDE in recurrent_grad.wgsl); a GPU wants the invocations.
        let rec_wide = rec_vec4 && cpu_like;
        // The backward's workspaces (see `tape`).
        let grad = GradLayout::new(cfg, n, b);

        // The single-dispatch path: supported without projection and up to LOOP_UNITS units;
        // chosen automatically where a step is too small to pay for its dispatches.
        let loop_ok = p == 0 && hs <= LOOP_UNITS;
        let single = match strategy {
            StepStrategy::Auto => {
                let max = if cpu_like { SINGLE_DISPATCH_MAX_MACS } else { SINGLE_DISPATCH_MAX_MACS_GPU };
                loop_ok && b * gh * ho <= max
            }
            StepStrategy::PerStep | StepStrategy::PerStepSplit => false,
            StepStrategy::SingleDispatch | StepStrategy::SingleDispatchUnbounded => {
                if !loop_ok {
                    return Err(Error::Unsupported(format!(
                        "the single-dispatch path needs no projection and hidden_size <= {LOOP_UNITS}"
                    )));
                }
                true
            }
        };
        // The per-step kernels loop over H_out (the recurrent product), G*H (its gradient) and
        // H (the projection) inside one invocation: beyond the adapter's loop budget a sum would
        // be cut short (Mesa's gallivm), so such a plan is refused rather than wrong. Only
        // reachable with a projection (without one, W_hh alone would pass the binding limit).
        let longest_loop = ho.max(gh).max(if p > 0 { hs } else { 0 });
        if longest_loop > loop_iteration_budget(ctx.adapter_info()) {
            return Err(Error::Limit(format!(
                "a loop of {longest_loop} iterations (hidden size {hs}, {g} gates) exceeds this adapter's {} per invocation",
                loop_iteration_budget(ctx.adapter_info())
            )));
        }
        // The most steps one single-dispatch run may walk, forward and backward: within the
        // adapter's budget of loop iterations per invocation (see `loop_iteration_budget`).
        let (fwd_run, bwd_run) = match strategy {
            StepStrategy::SingleDispatchUnbounded => (steps, steps),
            _ => {
                let budget = loop_iteration_budget(ctx.adapter_info());
                (loop_run_steps(budget, loop_forward_iterations(g, hs)), loop_run_steps(budget, loop_backward_iterations(g, hs)))
            }
        };
        Ok(Fused {
            ctx,
            cfg,
            layout,
            inputs,
            training,
            cell,
            prec,
            n,
            b,
            steps,
            hs,
            ho,
            d,
            gh,
            p,
            lstm,
            out_w,
            woff,
            weight_elems,
            tables,
            off_tab,
            bs_tab,
            tape,
            wt,
            grad,
            pad_max,
            split,
            vec4,
            rec_vec4,
            rec_wide,
            single,
            fwd_run,
            bwd_run,
        })
    }

    /// The plan's own buffers (the sequence tables are added once built).
    fn workspaces(&self) -> Result<HashMap<Buf, TrackedBuffer>> {
        let Fused { ctx, cfg, prec, n, b, ho, d, gh, out_w, training, pad_max, .. } = *self;
        let (tape_elems, wt_elems) = (self.tape.elems, self.wt.elems);
        let GradLayout { bw_elems, prev_elems, dg_elems, .. } = self.grad;
        let st = wgpu::BufferUsages::STORAGE;
        // Every buffer holds elements in the config's precision.
        let f4 = |e: usize| (e * prec.bytes()) as u64;
        let mut own = HashMap::new();
        own.insert(Buf::Dummy, ctx.buffer("dummy", 16, st)?);
        own.insert(Buf::Xp, ctx.buffer("xp", f4(n * gh), st)?);
        own.insert(Buf::Wt, ctx.buffer("rearranged weights", f4(wt_elems), st)?);
        own.insert(Buf::Hp, ctx.buffer("step states", f4(b * ho), st)?);
        let tapes = if training { cfg.num_layers * d } else { 1 };
        for i in 0..tapes {
            own.insert(Buf::Tape(i as u16), ctx.buffer("tape", f4(tape_elems), st)?);
        }
        for l in 0..cfg.num_layers.saturating_sub(1) {
            own.insert(Buf::LayerOut(l as u16), ctx.buffer("layer output", f4(n * out_w), st)?);
        }
        if let Some(ip) = pad_max {
            own.insert(Buf::XPad, ctx.buffer("padded layer input", f4(n * ip), st)?);
            if training {
                own.insert(Buf::WPad, ctx.buffer("padded W_ih", f4(gh * ip), st)?);
                own.insert(Buf::DwPad, ctx.buffer("padded dW_ih", f4(gh * ip), st)?);
                own.insert(Buf::DxPad, ctx.buffer("padded dX", f4(n * ip), st)?);
            }
        }
        if training {
            own.insert(Buf::Prev, ctx.buffer("prev states", f4(prev_elems), st)?);
            own.insert(Buf::Bw, ctx.buffer("recurrent gradients", f4(bw_elems), st)?);
            own.insert(Buf::Dg, ctx.buffer("gate gradients", f4(dg_elems), st)?);
            if cfg.num_layers > 1 {
                own.insert(Buf::Dx(0), ctx.buffer("layer gradient", f4(n * out_w), st)?);
                own.insert(Buf::Dx(1), ctx.buffer("layer gradient", f4(n * out_w), st)?);
            }
        }

        Ok(own)
    }

    /// The forward's ops: per layer the input's padding, per direction the weights
    /// rearranged, the initial states, the input projection, the steps (per step, or the
    /// single-dispatch runs) and the final states gathered into the caller's order.
    fn forward_ops(&self, params: &mut ParamBlocks) -> Vec<Op> {
        let Fused { cfg, layout, inputs, training, cell, n, b, steps, hs, ho, d, gh, p, lstm, out_w, off_tab, bs_tab, split, vec4, single, fwd_run, .. } = *self;
        let (woff, tables) = (&self.woff, &self.tables);
        let TapeLayout { gates: gates_off, c: c_off, aux: aux_off, hs: hs_off, .. } = self.tape;
        let WtLayout { hh: wt_hh_off, bhh: wt_bhh_off, hr: wt_hr_off, w4: wt_w4_off, .. } = self.wt;
        let step_kernel = Kernel::Step { cell, vec4, split };
        let step_wg = if split { 16 } else { 64 };
        let mut fwd = Vec::new();
        for l in 0..cfg.num_layers {
            let in_size = cfg.layer_input_size(l);
            let pad = padded_input(cfg, l);
            let k_in = pad.unwrap_or(in_size);
            if let Some(ip) = pad {
                fwd.push(pad_rows(params, self.layer_in(l), Buf::XPad, n, in_size, (0, in_size), (0, ip)));
            }
            let x_in = if pad.is_some() { Buf::XPad } else { self.layer_in(l) };
            for dir in 0..d {
                let s = l * d + dir;
                let w = woff[s];
                let tape = self.tape_of(l, dir);
                // Weights rearranged so neighbouring invocations read neighbouring elements.
                let transpose = |params: &mut ParamBlocks, src: u32, rows: usize, width: usize, dst: usize| {
                    util(params, Kernel::Transpose, vec![Buf::Weights, Buf::Dummy, Buf::Seq, Buf::Wt],
                        UtilParams { rows: rows as u32, width: width as u32, src_off: src, dst_off: dst as u32, ..Default::default() }, rows * width)
                };
                fwd.push(transpose(params, w.w_ih, gh, in_size, 0));
                if k_in > in_size {
                    // W_ih^T's padding rows: zeros (the buffer holds other weights before).
                    fwd.push(util(params, Kernel::CopyState, vec![Buf::Dummy, Buf::Dummy, Buf::Seq, Buf::Wt],
                        UtilParams { rows: 1, width: ((k_in - in_size) * gh) as u32, state_off: NONE, dst_off: (in_size * gh) as u32, ..Default::default() }, (k_in - in_size) * gh));
                }
                fwd.push(transpose(params, w.w_hh, gh, ho, wt_hh_off));
                if cfg.bias {
                    fwd.push(util(params, Kernel::Copy, vec![Buf::Weights, Buf::Dummy, Buf::Seq, Buf::Wt],
                        UtilParams { rows: 1, width: gh as u32, src_off: w.b_hh, dst_off: wt_bhh_off as u32, ..Default::default() }, gh));
                }
                if p > 0 {
                    fwd.push(transpose(params, w.w_hr, p, hs, wt_hr_off));
                }
                if vec4 {
                    fwd.push(util(params, Kernel::Copy, vec![Buf::Weights, Buf::Dummy, Buf::Seq, Buf::Wt],
                        UtilParams { rows: 1, width: (gh * ho) as u32, src_off: w.w_hh, dst_off: wt_w4_off as u32, ..Default::default() }, gh * ho));
                }
                // Initial states (or zeros) into the tape's rows N.. .
                fwd.push(util(params, Kernel::CopyState, vec![Buf::Dummy, if inputs.h0 { Buf::H0 } else { Buf::Dummy }, Buf::Seq, tape],
                    UtilParams { rows: b as u32, width: ho as u32, state_off: if inputs.h0 { self.state_block(s, ho) } else { NONE }, dst_off: (hs_off + n * ho) as u32, ..Default::default() }, b * ho));
                if lstm {
                    fwd.push(util(params, Kernel::CopyState, vec![Buf::Dummy, if inputs.c0 { Buf::C0 } else { Buf::Dummy }, Buf::Seq, tape],
                        UtilParams { rows: b as u32, width: hs as u32, state_off: if inputs.c0 { self.state_block(s, hs) } else { NONE }, dst_off: (c_off + n * hs) as u32, ..Default::default() }, b * hs));
                }
                // Input projection of all rows: Xp = X W_ih^T + b_ih.
                fwd.extend(gemm(params, vec![x_in, Buf::Wt, Buf::Xp, Buf::Weights], GemmParams {
                    m: n as u32, n: gh as u32, k: k_in as u32,
                    a_off: 0, a_rs: k_in as u32, a_cs: 1,
                    b_off: 0, b_rs: gh as u32, b_cs: 1,
                    c_off: 0, ldc: gh as u32, bias_off: w.b_ih, alpha: 1.0, beta: 0.0, ..Default::default()
                }));
                let step_bufs = vec![Buf::Wt, Buf::Xp, self.layer_out(l), tape, Buf::Seq, Buf::Wt, Buf::Hp];
                let base = StepParams {
                    hidden: hs as u32,
                    out_size: ho as u32,
                    out_ld: out_w as u32,
                    out_col: (dir * ho) as u32,
                    wt_hh: wt_hh_off as u32,
                    b_hh: if cfg.bias { wt_bhh_off as u32 } else { NONE },
                    wt_hr: if p > 0 { wt_hr_off as u32 } else { NONE },
                    prev_off: tables.prev_off(dir),
                    gates_off: gates_off as u32,
                    c_off: c_off as u32,
                    aux_off: aux_off as u32,
                    hs_off: hs_off as u32,
                    training: training as u32,
                    w4_off: wt_w4_off as u32,
                    steps: steps as u32,
                    reverse: (dir == 1) as u32,
                    off_tab,
                    bs_tab,
                    init_off: tables.prev_off(0),
                    ..Default::default()
                };
                if single {
                    // Runs of steps within the adapter's loop budget, in processing order.
                    let runs = loop_runs(steps, fwd_run, dir == 1);
                    for (t0, len) in runs {
                        let run = StepParams { steps: len as u32, off_tab: off_tab + t0 as u32, bs_tab: bs_tab + t0 as u32, ..base };
                        fwd.push(Op {
                            kernel: Kernel::LoopStep { cell, small: hs <= 64 },
                            bufs: step_bufs.clone(),
                            param_offset: params.push(&run),
                            groups: [layout.batch_sizes[t0].div_ceil(LOOP_ROWS) as u32, 1, 1],
                        });
                    }
                }
                for t in self.order(dir).into_iter().filter(|_| !single) {
                    let rows = layout.batch_sizes[t];
                    if vec4 {
                        // The states this step's rows start from, contiguous for vec4 loads.
                        fwd.push(util(params, Kernel::GatherPrev, vec![tape, Buf::Dummy, Buf::Seq, Buf::Hp],
                            UtilParams { rows: rows as u32, width: ho as u32, src_off: hs_off as u32, src_ld: ho as u32, seq_off: tables.prev_off(dir) + tables.step_offset(t) as u32, dst_off: 0, ..Default::default() }, rows * ho));
                    }
                    let sp = StepParams { row_off: tables.step_offset(t) as u32, rows: rows as u32, ..base };
                    let po = params.push(&sp);
                    fwd.push(Op { kernel: step_kernel, bufs: step_bufs.clone(), param_offset: po, groups: groups_2d(hs, rows.div_ceil(ROW_BLOCK), step_wg) });
                    if p > 0 {
                        fwd.push(Op { kernel: Kernel::ProjForward, bufs: step_bufs.clone(), param_offset: po, groups: groups_2d(p, rows.div_ceil(ROW_BLOCK), 64) });
                    }
                }
                // h_n (and c_n) at each sequence's own last step, into the caller's order.
                fwd.push(Op {
                    kernel: Kernel::GatherLast,
                    bufs: vec![self.layer_out(l), Buf::Dummy, Buf::Seq, Buf::HN],
                    param_offset: params.push(&UtilParams {
                        rows: b as u32,
                        width: ho as u32,
                        src_off: 0,
                        src_ld: out_w as u32,
                        src_col: (dir * ho) as u32,
                        state_off: NONE,
                        seq_off: tables.last_off(dir),
                        dst_off: self.state_block(s, ho),
                        ..Default::default()
                    }),
                    groups: groups_linear(b * ho),
                });
                if lstm {
                    fwd.push(Op {
                        kernel: Kernel::GatherLast,
                        bufs: vec![tape, Buf::Dummy, Buf::Seq, Buf::CN],
                        param_offset: params.push(&UtilParams {
                            rows: b as u32,
                            width: hs as u32,
                            src_off: c_off as u32,
                            src_ld: hs as u32,
                            src_col: 0,
                            state_off: NONE,
                            seq_off: tables.last_off(dir),
                            dst_off: self.state_block(s, hs),
                            ..Default::default()
                        }),
                        groups: groups_linear(b * hs),
                    });
                }
            }
        }

        fwd
    }

    /// The backward's ops (training plans): layers last to first; per direction the states
    /// each row started from, the final states' gradients seeded, the steps in reverse (per
    /// step, or the single-dispatch runs), the initial states' gradients, then the weight and
    /// input gradients over all rows.
    fn backward_ops(&self, params: &mut ParamBlocks) -> Vec<Op> {
        let Fused { cfg, layout, inputs, cell, n, b, steps, hs, ho, d, gh, p, lstm, out_w, off_tab, bs_tab, rec_vec4, rec_wide, single, bwd_run, .. } = *self;
        let (woff, tables) = (&self.woff, &self.tables);
        let TapeLayout { gates: gates_off, c: c_off, aux: aux_off, hs: hs_off, .. } = self.tape;
        let WtLayout { hh: wt_hh_off, w4: wt_w4_off, .. } = self.wt;
        let GradLayout { dh: dh_off, dc: dc_off, dhtot: dhtot_off, dhpre: dhpre_off, hprev: hprev_off, cprev: cprev_off, dgh: dgh_off, .. } = self.grad;
        let grad_kernel = Kernel::CellGrad { cell };
        let mut bwd = Vec::new();
        for l in (0..cfg.num_layers).rev() {
            let in_size = cfg.layer_input_size(l);
            let dy = if l + 1 == cfg.num_layers { Buf::GradOutput } else { Buf::Dx(((l + 1) % 2) as u8) };
            let dx = if l == 0 { Buf::GradInput } else { Buf::Dx((l % 2) as u8) };
            let pad = padded_input(cfg, l);
            let k_in = pad.unwrap_or(in_size);
            if let Some(ip) = pad {
                bwd.push(pad_rows(params, self.layer_in(l), Buf::XPad, n, in_size, (0, in_size), (0, ip)));
            }
            let x_in = if pad.is_some() { Buf::XPad } else { self.layer_in(l) };
            for dir in 0..d {
                let s = l * d + dir;
                let w = woff[s];
                let tape = self.tape_of(l, dir);
                // States each row started from (also the B operand of dW_hh).
                bwd.push(util(params, Kernel::GatherPrev, vec![tape, Buf::Dummy, Buf::Seq, Buf::Prev],
                    UtilParams { rows: n as u32, width: ho as u32, src_off: hs_off as u32, src_ld: ho as u32, seq_off: tables.prev_off(dir), dst_off: hprev_off as u32, ..Default::default() }, n * ho));
                if lstm {
                    bwd.push(util(params, Kernel::GatherPrev, vec![tape, Buf::Dummy, Buf::Seq, Buf::Prev],
                        UtilParams { rows: n as u32, width: hs as u32, src_off: c_off as u32, src_ld: hs as u32, seq_off: tables.prev_off(dir), dst_off: cprev_off as u32, ..Default::default() }, n * hs));
                }
                // Seed each sequence's final row with grad_h_n (grad_c_n).
                bwd.push(util(
                    params,
                    Kernel::ScatterLast,
                    vec![Buf::Dummy, if inputs.grad_h_n { Buf::GradHN } else { Buf::Dummy }, Buf::Seq, Buf::Bw],
                    UtilParams {
                        rows: b as u32,
                        width: ho as u32,
                        state_off: if inputs.grad_h_n { self.state_block(s, ho) } else { NONE },
                        seq_off: tables.last_off(dir),
                        dst_off: dh_off as u32,
                        ..Default::default()
                    },
                    b * ho,
                ));
                if lstm {
                    bwd.push(util(
                        params,
                        Kernel::ScatterLast,
                        vec![Buf::Dummy, if inputs.grad_c_n { Buf::GradCN } else { Buf::Dummy }, Buf::Seq, Buf::Bw],
                        UtilParams {
                            rows: b as u32,
                            width: hs as u32,
                            state_off: if inputs.grad_c_n { self.state_block(s, hs) } else { NONE },
                            seq_off: tables.last_off(dir),
                            dst_off: dc_off as u32,
                            ..Default::default()
                        },
                        b * hs,
                    ));
                }
                let base = BackParams {
                    hidden: hs as u32,
                    out_size: ho as u32,
                    out_ld: out_w as u32,
                    out_col: (dir * ho) as u32,
                    w_hh: wt_w4_off as u32,
                    w_hr: w.w_hr,
                    prev_off: tables.prev_off(dir),
                    n_rows: n as u32,
                    gates_off: gates_off as u32,
                    c_off: c_off as u32,
                    aux_off: aux_off as u32,
                    hprev_off: hprev_off as u32,
                    cprev_off: cprev_off as u32,
                    dh_off: dh_off as u32,
                    dc_off: dc_off as u32,
                    dhtot_off: dhtot_off as u32,
                    dhpre_off: dhpre_off as u32,
                    dgx_off: 0,
                    dgh_off: dgh_off as u32,
                    proj: (p > 0) as u32,
                    wt_hh: wt_hh_off as u32,
                    w_hh_flat: w.w_hh,
                    steps: steps as u32,
                    reverse: (dir == 1) as u32,
                    off_tab,
                    bs_tab,
                    init_off: tables.prev_off(0),
                    last_off: tables.last_off(dir),
                    ..Default::default()
                };
                let step_bufs = vec![Buf::Weights, dy, tape, Buf::Prev, Buf::Seq, Buf::Bw, Buf::Dg];
                if single {
                    // Runs of steps within the adapter's loop budget, in backward order.
                    for (t0, len) in loop_runs(steps, bwd_run, dir == 0) {
                        let run = BackParams { steps: len as u32, off_tab: off_tab + t0 as u32, bs_tab: bs_tab + t0 as u32, ..base };
                        bwd.push(Op {
                            kernel: Kernel::LoopGrad { cell, small: hs <= 64 },
                            bufs: step_bufs.clone(),
                            param_offset: params.push(&run),
                            groups: [layout.batch_sizes[t0].div_ceil(LOOP_ROWS) as u32, 1, 1],
                        });
                    }
                } else if rec_vec4 {
                    // W_hh for the recurrent gradient product, transposed for the vec4 kernel
                    // (the forward's copies are overwritten by later layer-directions).
                    bwd.push(util(params, Kernel::Transpose, vec![Buf::Weights, Buf::Dummy, Buf::Seq, Buf::Wt],
                        UtilParams { rows: gh as u32, width: ho as u32, src_off: w.w_hh, dst_off: wt_hh_off as u32, ..Default::default() }, gh * ho));
                } else {
                    bwd.push(util(params, Kernel::Copy, vec![Buf::Weights, Buf::Dummy, Buf::Seq, Buf::Wt],
                        UtilParams { rows: 1, width: (gh * ho) as u32, src_off: w.w_hh, dst_off: wt_w4_off as u32, ..Default::default() }, gh * ho));
                }
                let rec_bufs = vec![Buf::Wt, Buf::Dg, dy, tape, Buf::Seq, Buf::Bw, Buf::Wt, Buf::Dg];
                for t in self.order(dir).into_iter().rev().filter(|_| !single) {
                    let rows = layout.batch_sizes[t];
                    let bp = BackParams { row_off: tables.step_offset(t) as u32, rows: rows as u32, ..base };
                    let po = params.push(&bp);
                    if p > 0 {
                        bwd.push(Op { kernel: Kernel::ProjGrad, bufs: step_bufs.clone(), param_offset: po, groups: groups_2d(hs, rows.div_ceil(ROW_BLOCK), 64) });
                    }
                    bwd.push(Op { kernel: grad_kernel, bufs: step_bufs.clone(), param_offset: po, groups: groups_2d(hs, rows, 64) });
                    bwd.push(Op {
                        kernel: Kernel::RecurrentGrad { cell, vec4: rec_vec4, wide: rec_wide },
                        bufs: rec_bufs.clone(),
                        param_offset: po,
                        groups: groups_2d(ho, rows.div_ceil(ROW_BLOCK), if rec_wide { 256 } else { 64 }),
                    });
                }
                // Initial-state gradients: rows N.. of dh_rec / dc_rec, caller's order.
                bwd.push(util(
                    params,
                    Kernel::Copy,
                    vec![Buf::Bw, Buf::Dummy, Buf::Seq, Buf::GradH0],
                    UtilParams { rows: b as u32, width: ho as u32, src_off: (dh_off + n * ho) as u32, dst_off: self.state_block(s, ho), ..Default::default() },
                    b * ho,
                ));
                if lstm {
                    bwd.push(util(
                        params,
                        Kernel::Copy,
                        vec![Buf::Bw, Buf::Dummy, Buf::Seq, Buf::GradC0],
                        UtilParams { rows: b as u32, width: hs as u32, src_off: (dc_off + n * hs) as u32, dst_off: self.state_block(s, hs), ..Default::default() },
                        b * hs,
                    ));
                }
                // Post-loop GEMMs over all rows.
                // dW_ih = dG_x^T X (through the padded copies when padded)
                let dw = if pad.is_some() { (Buf::DwPad, 0) } else { (Buf::GradWeights, w.w_ih) };
                bwd.extend(self.gemm_rows(params, vec![Buf::Dg, x_in, dw.0, Buf::Dummy], GemmParams {
                    m: gh as u32, n: k_in as u32, k: n as u32,
                    a_off: 0, a_rs: 1, a_cs: gh as u32,
                    b_off: 0, b_rs: k_in as u32, b_cs: 1,
                    c_off: dw.1, ldc: k_in as u32, bias_off: NONE, alpha: 1.0, beta: 0.0, ..Default::default()
                }));
                if pad.is_some() {
                    bwd.push(pad_rows(params, Buf::DwPad, Buf::GradWeights, gh, in_size, (0, k_in), (w.w_ih, in_size)));
                }
                // dW_hh = dG_h^T H_prev
                bwd.extend(self.gemm_rows(params, vec![Buf::Dg, Buf::Prev, Buf::GradWeights, Buf::Dummy], GemmParams {
                    m: gh as u32, n: ho as u32, k: n as u32,
                    a_off: dgh_off as u32, a_rs: 1, a_cs: gh as u32,
                    b_off: hprev_off as u32, b_rs: ho as u32, b_cs: 1,
                    c_off: w.w_hh, ldc: ho as u32, bias_off: NONE, alpha: 1.0, beta: 0.0, ..Default::default()
                }));
                if cfg.bias {
                    for (src, dst) in [(0usize, w.b_ih), (dgh_off, w.b_hh)] {
                        // In runs of rows, accumulating in row order (see COLSUM_ROWS).
                        for up in UtilParams::colsum_runs(n, gh, src, gh, dst as usize, COLSUM_ROWS) {
                            bwd.push(util(params, Kernel::ColSum, vec![Buf::Dg, Buf::Dummy, Buf::Seq, Buf::GradWeights], up, gh));
                        }
                    }
                }
                if p > 0 {
                    // dW_hr = dh_tot^T (o * tanh(c))
                    bwd.extend(self.gemm_rows(params, vec![Buf::Bw, tape, Buf::GradWeights, Buf::Dummy], GemmParams {
                        m: p as u32, n: hs as u32, k: n as u32,
                        a_off: dhtot_off as u32, a_rs: 1, a_cs: p as u32,
                        b_off: aux_off as u32, b_rs: hs as u32, b_cs: 1,
                        c_off: w.w_hr, ldc: hs as u32, bias_off: NONE, alpha: 1.0, beta: 0.0, ..Default::default()
                    }));
                }
                // dX (+)= dG_x W_ih; the second direction accumulates.
                let (w_src, w_off, dx_dst) = if pad.is_some() {
                    bwd.push(pad_rows(params, Buf::Weights, Buf::WPad, gh, in_size, (w.w_ih, in_size), (0, k_in)));
                    (Buf::WPad, 0, Buf::DxPad)
                } else {
                    (Buf::Weights, w.w_ih, dx)
                };
                bwd.extend(gemm(params, vec![Buf::Dg, w_src, dx_dst, Buf::Dummy], GemmParams {
                    m: n as u32, n: k_in as u32, k: gh as u32,
                    a_off: 0, a_rs: gh as u32, a_cs: 1,
                    b_off: w_off, b_rs: k_in as u32, b_cs: 1,
                    c_off: 0, ldc: k_in as u32, bias_off: NONE, alpha: 1.0, beta: if dir == 0 { 0.0 } else { 1.0 }, ..Default::default()
                }));
            }
            if pad.is_some() {
                bwd.push(pad_rows(params, Buf::DxPad, dx, n, in_size, (0, k_in), (0, in_size)));
            }
        }
        bwd
    }

    /// Layer-direction s's block of a `[L*D, B, width]` state tensor.
    fn state_block(&self, s: usize, width: usize) -> u32 {
        (s * self.b * width) as u32
    }

    /// The time steps of direction `dir` in the forward's processing order.
    fn order(&self, dir: usize) -> Vec<usize> {
        if dir == 0 { (0..self.steps).collect() } else { (0..self.steps).rev().collect() }
    }

    /// The tape of layer-direction (l, dir): one per layer-direction in training, one shared
    /// in inference.
    fn tape_of(&self, l: usize, dir: usize) -> Buf {
        if self.training { Buf::Tape((l * self.d + dir) as u16) } else { Buf::Tape(0) }
    }

    fn layer_out(&self, l: usize) -> Buf {
        if l + 1 == self.cfg.num_layers { Buf::Output } else { Buf::LayerOut(l as u16) }
    }

    fn layer_in(&self, l: usize) -> Buf {
        if l == 0 { Buf::Input } else { Buf::LayerOut(l as u16 - 1) }
    }

    /// A weight-gradient GEMM (k = all N rows), k in cache-sized runs ([`GemmParams::row_run`]).
    fn gemm_rows(&self, params: &mut ParamBlocks, bufs: Vec<Buf>, gp: GemmParams) -> Vec<Op> {
        gemm_runs(params, bufs, gp, gp.row_run(self.prec.bytes()))
    }
}

/// A row-utility op (util.wgsl) over `count` elements.
fn util(params: &mut ParamBlocks, kernel: Kernel, bufs: Vec<Buf>, up: UtilParams, count: usize) -> Op {
    Op { kernel, bufs, param_offset: params.push(&up), groups: groups_linear(count) }
}

/// dst[dst_off + r * dst_ld + c] = src[src_off + r * src_ld + c] (c < width), else 0.
#[allow(clippy::too_many_arguments)]
fn pad_rows(params: &mut ParamBlocks, src: Buf, dst: Buf, rows: usize, width: usize, (src_off, src_ld): (u32, usize), (dst_off, dst_ld): (u32, usize)) -> Op {
    util(params, Kernel::PadRows, vec![src, Buf::Dummy, Buf::Seq, dst],
        UtilParams { rows: rows as u32, width: width as u32, src_off, src_ld: src_ld as u32, dst_off, dst_ld: dst_ld as u32, ..Default::default() }, rows * dst_ld)
}

/// A GEMM op; it binds B and A a second time as vec4s (bindings 5, 6) for gemm4 / gemm44.
fn gemm_op(params: &mut ParamBlocks, mut bufs: Vec<Buf>, gp: GemmParams) -> Op {
    bufs.push(bufs[1]);
    bufs.push(bufs[0]);
    Op { kernel: gp.kernel(), bufs, groups: gp.groups(), param_offset: params.push(&gp) }
}

/// C = A B (+ bias) with k walked in runs of at most `run`, each a dispatch accumulating into C
/// (beta = 1 after the first), the bias added by the first only, in a fixed order.
fn gemm_runs(params: &mut ParamBlocks, bufs: Vec<Buf>, gp: GemmParams, run: u32) -> Vec<Op> {
    gp.runs(run).into_iter().map(|part| gemm_op(params, bufs.clone(), part)).collect()
}

/// One invocation loops over k, so a long k (a wide layer input, a large G*H) is cut into runs
/// of at most GEMM_K_RUN (see the loop cap in `loop_iteration_budget`).
fn gemm(params: &mut ParamBlocks, bufs: Vec<Buf>, gp: GemmParams) -> Vec<Op> {
    gemm_runs(params, bufs, gp, GEMM_K_RUN as u32)
}

impl FusedPlan {
    /// Prepares a plan with the forward's step strategy: checks limits, uploads the parameter
    /// blocks and sequence tables, allocates workspaces and builds the pipelines. The parts:
    /// [`Fused::new`] (checks, layouts, the strategy's choices), [`Fused::workspaces`],
    /// [`Fused::forward_ops`], [`Fused::backward_ops`], then the tables, parameters and
    /// pipelines here.
    pub fn with_strategy(ctx: &Arc<Context>, cfg: &RnnConfig, layout: &SeqLayout, pass: Pass, inputs: StateInputs, strategy: StepStrategy) -> Result<Self> {
        let _serial = ctx.exclusive();
        let fu = Fused::new(ctx, cfg, layout, pass, inputs, strategy)?;
        let mut own = fu.workspaces()?;
        let mut params = ParamBlocks::new(ctx);
        let fwd = fu.forward_ops(&mut params);
        let bwd = if fu.training { fu.backward_ops(&mut params) } else { Vec::new() };

        let seq = fu.tables.words();
        let seq_buf = ctx.buffer("sequence tables", (seq.len() * 4) as u64, wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST)?;
        // Inside an error scope: a write the device refuses is a typed error, not wgpu's panic.
        super::readback::write(ctx, &seq_buf, bytemuck::cast_slice(seq))?;
        own.insert(Buf::Seq, seq_buf);
        let params_buf = params.upload(ctx, "parameters")?;

        let mut pipelines = HashMap::new();
        for op in fwd.iter().chain(&bwd) {
            if let std::collections::hash_map::Entry::Vacant(e) = pipelines.entry(op.kernel) {
                e.insert(ctx.pipeline_at(op.kernel, fu.prec)?);
            }
        }
        Ok(FusedPlan {
            ctx: ctx.clone(),
            cfg: cfg.clone(),
            pass,
            inputs,
            layout: layout.clone(),
            n: fu.n,
            b: fu.b,
            weight_elems: fu.weight_elems,
            params: params_buf,
            own,
            forward_ops: fwd,
            backward_ops: bwd,
            pipelines,
            profile: std::sync::Mutex::new(None),
        })
    }

    /// The configuration the plan was prepared for.
    pub fn config(&self) -> &RnnConfig {
        &self.cfg
    }
    /// Training (a backward can follow) or inference.
    pub fn pass(&self) -> Pass {
        self.pass
    }
    /// The batch structure the plan was prepared for.
    pub fn layout(&self) -> &SeqLayout {
        &self.layout
    }
    /// Flat parameter count (the weights and gradient buffers hold this many elements, in the
    /// config's precision).
    pub fn weight_elems(&self) -> usize {
        self.weight_elems
    }
    /// Dispatches one recorded forward issues.
    pub fn forward_dispatches(&self) -> usize {
        self.forward_ops.len()
    }
    /// Dispatches one recorded backward issues.
    pub fn backward_dispatches(&self) -> usize {
        self.backward_ops.len()
    }
    /// The distinct kernel variants a forward and a backward dispatch, in first-use order.
    pub fn kernels(&self) -> Vec<Kernel> {
        let mut v: Vec<Kernel> = Vec::new();
        for op in self.forward_ops.iter().chain(&self.backward_ops) {
            if !v.contains(&op.kernel) {
                v.push(op.kernel);
            }
        }
        v
    }
    /// Bytes of workspace and tables this plan holds.
    pub fn workspace_bytes(&self) -> u64 {
        self.own.values().map(|b| b.size()).sum::<u64>() + self.params.size()
    }

    fn check(&self, what: &str, buf: Option<&wgpu::Buffer>, elems: usize, required: bool) -> Result<()> {
        match buf {
            None if required => Err(Error::MissingTensor(format!("{what} buffer"))),
            Some(_) if !required => Err(Error::InvalidConfig(format!(
                "{what} given, but the plan was prepared without it (StateInputs)"
            ))),
            Some(b) => record::check_stored(&self.ctx, what, b, elems, self.cfg.precision),
            None => Ok(()),
        }
    }

    /// Checks the buffers a forward and its backward both bind: weights, input, output, and
    /// the initial states the plan was prepared for.
    fn check_forward_side(
        &self,
        weights: &wgpu::Buffer,
        input: &wgpu::Buffer,
        output: &wgpu::Buffer,
        h0: Option<&wgpu::Buffer>,
        c0: Option<&wgpu::Buffer>,
    ) -> Result<()> {
        let c = &self.cfg;
        let states = c.num_layers * c.directions() * self.b;
        self.check("weights", Some(weights), self.weight_elems, true)?;
        self.check("input", Some(input), self.n * c.input_size, true)?;
        self.check("output", Some(output), self.n * c.output_size(), true)?;
        self.check("h0", h0, states * c.out_size(), self.inputs.h0)?;
        self.check("c0", c0, states * c.hidden_size, self.inputs.c0)
    }


    /// Records the forward into `encoder`: one compute pass, no submit.
    pub fn record_forward(&self, encoder: &mut wgpu::CommandEncoder, bufs: &FusedForwardBuffers<'_>) -> Result<()> {
        let c = &self.cfg;
        let lstm = c.mode == Mode::Lstm;
        let states = c.num_layers * c.directions() * self.b;
        self.ctx.check_alive()?;
        self.check_forward_side(bufs.weights, bufs.input, bufs.output, bufs.h0, bufs.c0)?;
        self.check("h_n", Some(bufs.h_n), states * c.out_size(), true)?;
        self.check("c_n", bufs.c_n, states * c.hidden_size, lstm)?;
        record::check_aliasing(&[
            ("weights", Some(bufs.weights), false),
            ("input", Some(bufs.input), false),
            ("h0", bufs.h0, false),
            ("c0", bufs.c0, false),
            ("output", Some(bufs.output), true),
            ("h_n", Some(bufs.h_n), true),
            ("c_n", bufs.c_n, true),
        ])?;
        self.record(encoder, &self.forward_ops, &|buf| self.resolve_forward(bufs, buf), "wgpu-rnn forward")
    }

    /// Records the backward into `encoder`. The plan must be a training plan whose forward
    /// was recorded (and will have run) with the same input, output, weights and states.
    pub fn record_backward(&self, encoder: &mut wgpu::CommandEncoder, bufs: &FusedBackwardBuffers<'_>) -> Result<()> {
        if self.pass != Pass::Training {
            return Err(Error::NotTraining);
        }
        self.ctx.check_alive()?;
        let c = &self.cfg;
        let n = self.n;
        let lstm = c.mode == Mode::Lstm;
        let states = c.num_layers * c.directions() * self.b;
        self.check_forward_side(bufs.weights, bufs.input, bufs.output, bufs.h0, bufs.c0)?;
        self.check("grad_output", Some(bufs.grad_output), n * c.output_size(), true)?;
        self.check("grad_h_n", bufs.grad_h_n, states * c.out_size(), self.inputs.grad_h_n)?;
        self.check("grad_c_n", bufs.grad_c_n, states * c.hidden_size, self.inputs.grad_c_n)?;
        self.check("grad_input", Some(bufs.grad_input), n * c.input_size, true)?;
        self.check("grad_h0", Some(bufs.grad_h0), states * c.out_size(), true)?;
        self.check("grad_c0", bufs.grad_c0, states * c.hidden_size, lstm)?;
        self.check("grad_weights", Some(bufs.grad_weights), self.weight_elems, true)?;
        record::check_aliasing(&[
            ("weights", Some(bufs.weights), false),
            ("input", Some(bufs.input), false),
            ("output", Some(bufs.output), false),
            ("h0", bufs.h0, false),
            ("c0", bufs.c0, false),
            ("grad_output", Some(bufs.grad_output), false),
            ("grad_h_n", bufs.grad_h_n, false),
            ("grad_c_n", bufs.grad_c_n, false),
            ("grad_input", Some(bufs.grad_input), true),
            ("grad_h0", Some(bufs.grad_h0), true),
            ("grad_c0", bufs.grad_c0, true),
            ("grad_weights", Some(bufs.grad_weights), true),
        ])?;
        self.record(encoder, &self.backward_ops, &|buf| self.resolve_backward(bufs, buf), "wgpu-rnn backward")
    }

    /// The buffer an op names, for a forward (checked present by `record_forward`).
    fn resolve_forward<'a>(&'a self, bufs: &'a FusedForwardBuffers<'a>, buf: Buf) -> &'a wgpu::Buffer {
        match buf {
            Buf::Weights => bufs.weights,
            Buf::Input => bufs.input,
            Buf::Output => bufs.output,
            Buf::H0 => bufs.h0.expect("checked"),
            Buf::C0 => bufs.c0.expect("checked"),
            Buf::HN => bufs.h_n,
            Buf::CN => bufs.c_n.expect("checked"),
            own => &self.own[&own],
        }
    }

    /// The buffer an op names, for a backward (checked present by `record_backward`).
    fn resolve_backward<'a>(&'a self, bufs: &'a FusedBackwardBuffers<'a>, buf: Buf) -> &'a wgpu::Buffer {
        match buf {
            Buf::Weights => bufs.weights,
            Buf::Input => bufs.input,
            Buf::Output => bufs.output,
            Buf::H0 => bufs.h0.expect("checked"),
            Buf::C0 => bufs.c0.expect("checked"),
            Buf::GradOutput => bufs.grad_output,
            Buf::GradHN => bufs.grad_h_n.expect("checked"),
            Buf::GradCN => bufs.grad_c_n.expect("checked"),
            Buf::GradInput => bufs.grad_input,
            Buf::GradH0 => bufs.grad_h0,
            Buf::GradC0 => bufs.grad_c0.expect("checked"),
            Buf::GradWeights => bufs.grad_weights,
            own => &self.own[&own],
        }
    }

    fn record<'a>(&'a self, encoder: &mut wgpu::CommandEncoder, ops: &[Op], resolve: &dyn Fn(Buf) -> &'a wgpu::Buffer, label: &str) -> Result<()> {
        // One bind group per family and buffer list, the parameter blocks at binding 0.
        let scope = super::context::ErrorScope::push(&self.ctx.device);
        let (groups, of_op) = record::bind_groups(&self.ctx, &self.params, ops.iter().map(|op| (op.kernel, &op.bufs[..])), resolve);
        scope.pop()?;
        let profile = self.profile.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut rec = Recorder::begin(encoder, label, profile);
        for (op, &g) in ops.iter().zip(&of_op) {
            rec.dispatch(op.kernel, &self.pipelines[&op.kernel], &groups[g], op.param_offset, op.groups);
        }
        Ok(())
    }

    /// Profiles the following recordings with `profile` (timestamps around every dispatch),
    /// or stops with `None`. Only for finding where time goes: the timestamps cost time too.
    pub fn set_profile(&self, profile: Option<Arc<super::profile::KernelProfile>>) {
        *self.profile.lock().unwrap_or_else(|e| e.into_inner()) = profile;
    }
}
