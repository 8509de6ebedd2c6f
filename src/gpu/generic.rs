//! The GPU's time-loop driver, generic over the cell (`crate::cells`): the same plan as the CPU
//! engine (`cpu::forward`), for every registered cell, never asking which cell it runs.
//!
//! - `CellPlan`: the driver behind [`super::Plan`] (and so [`super::GpuRnn`]). Prepared once
//!   per config and batch structure (parameter blocks uploaded, workspaces allocated,
//!   pipelines built), then recorded into the caller's command encoder
//!   over the caller's buffers ([`super::ForwardBuffers`], [`super::BackwardBuffers`]), with
//!   no hidden submit, readback or buffer write; its own states buffers (sorted order,
//!   interleaved) are gathered from and to the caller's per-state buffers around the pass.
//! - [`StepPlan`]: one time step of a unidirectional stack over caller-owned buffers (`x_t`
//!   in, the states read and written in place, the top layer's output out): streaming
//!   inference and generation, with no host work per step beyond recording.
//!
//! Per layer-direction, forward: `W_x^T`, then one GEMM `xp = X W_x^T + b_x`; per step, for a
//! cell with [`crate::cells::Cell::UNIT_STEP`] per stage the fused stage kernel (`cell_stage`,
//! shaders/cells/stage.wgsl: the stage's product and the cell's `unit_forward` in one
//! dispatch) after `stage_input` (the product's input rows, and in training, or with
//! zoneout, the step's states to the tape); for a whole-row cell per stage its product (one
//! GEMM over the step's rows, on R^T, into the scratch buffer) and one dispatch of
//! `cell_forward` (shaders/cells/row_step.wgsl: a workgroup per row, the cell's `row_forward`,
//! in stage 0 of a training or zoneout step after the states' save to the tape);
//! then with zoneout the `zoneout` kernel; in training with dropout, `dropout_rows` between
//! layers. Where a step is too small to pay for its dispatches (or with
//! `StepStrategy::SingleDispatch`), a cell with a per-unit step walks runs of steps in one
//! dispatch each instead (`cell_loop` in stage.wgsl: a workgroup owns 4 rows for the run, every
//! stage's product and `unit_forward` in turn, runs sized within the adapter's loop budget), and
//! writes the same tape. `Shape` builds the ops: `forward_ops`, `backward_ops`, `states_io`,
//! `workspaces`. ARCHITECTURE.md ("One engine API; one step at a time; regularisers")
//! explains the regularisers. Backward, steps reversed, stages last to first:
//! `cell_backward`, then the product's `dv = dr_k R_k` written where the product read (the
//! tape-gradient region, or added to the state gradients for stage-0 products of a state);
//! after the loop, GEMMs over all rows for `dW_x`, `dR_k`, `dX`, and column sums for the
//! biases and the pointwise parameters. Every sum has one owner and a fixed order, so results
//! are reproducible run to run.
//!
//! Buffers (the config's [`Precision`]: f32, or f16 with every sum in f32): the weights flat
//! by slot ([`flat_weights`]: per layer-direction, slots in [`Slot::ALL`] order; for PyTorch's
//! four cells that is `state_dict` order); per
//! layer-direction a tape buffer `[xp | tape | states before each row]`; the states `[L*D, B,
//! S]` (each row's states concatenated in the cell's order) in the layout's *sorted* order,
//! read and written in place; a scratch buffer (products forward, tape gradients backward);
//! per inner layer its output; backward a workspace `[dxp | dr | de]` cleared per
//! layer-direction (`de`, the pointwise parameters' terms, one row per batch row summed over
//! the steps in place; per packed row with f16 storage), the input gradient per inner layer,
//! and the weight gradients in the
//! weights' layout. No buffer is bound twice in one dispatch where one binding writes.
//!
//! A plan does not split work that exceeds one binding (such problems are `Error::Limit`).

use super::context::{Context, ErrorScope, TrackedBuffer};
use super::kernels::{CellParams, GemmParams, Kernel, LoopShape, UtilParams, LOOP_STAGES, LOOP_WG, NONE, ROW_BACKWARD_LOOPS};
use super::sequence::{loop_iteration_budget, loop_run_steps, SeqLayout, StepStrategy, SINGLE_DISPATCH_MAX_MACS};
use super::readback;
use super::record::{self, ParamBlocks, Recorder};
use crate::cells::Slot;
use crate::cells::{state_offsets, Derived, Layout, Product, Src};
use crate::config::RnnConfig;
use crate::cpu::check_weights;
use crate::cpu::Pass;
use crate::error::{check_len, Error, Result};
use crate::masks;
use crate::packing::step_offsets;
use crate::precision::Precision;
use crate::weights::{DirParams, Weights};
use std::collections::HashMap;
use std::sync::Arc;

/// Rows of k a GEMM takes in one dispatch: the plan's runs (Mesa's gallivm ends
/// an invocation's loops after 65,535 iterations in all: ARCHITECTURE.md, "Runs").
const K_RUN: usize = super::sequence::GEMM_K_RUN;

/// Rows a fused stage kernel's invocation takes (`RB` in shaders/cells/stage.wgsl).
const STAGE_ROWS: usize = 8;
/// Rows a workgroup of the stage kernel's subgroup twin (stage_subgroup.wgsl's `RB_SG`).
const STAGE_ROWS_SG: usize = 16;

/// Sorted rows a workgroup of the single-dispatch loop owns (`LR` in shaders/cells/stage.wgsl).
const LOOP_ROWS: usize = 4;
/// The longest product k the loop takes (`LOOP_K`: its input rows in workgroup memory).
const LOOP_K: usize = 256;
/// The widest states and output the loop's cut-run marks reach (8 and 4 columns per
/// invocation, `poison_row`), and so the most units.
const LOOP_STATE_COLS: usize = 8 * LOOP_WG;
const LOOP_UNITS: usize = 4 * LOOP_WG;
/// The widest gradient rows (dxp, dr, de) the backward loop's cut-run marks reach
/// (`poison_span`).
const LOOP_GRAD_COLS: usize = 24 * LOOP_WG;
/// A product's most rows in the backward loop (`LOOP_PROWS` in shaders/cells/loop_grad.wgsl:
/// its dr rows in workgroup memory, within WebGPU's default 16 KiB).
const LOOP_GRAD_PROWS: usize = 1020;
/// What the cell loops' runs allow for above the loop iterations their source counts
/// (`Shape::loop_iterations`): gallivm counted more than the source's loops. Measured by
/// bisecting the step where an unbounded run is cut, lavapipe, 2026-12-05: SCRN H 8 B 4,
/// training, 97 iterations a forward step against 69 counted (1.41x; 121 a backward step
/// against 127), which the budget's quarter of margin no longer covered once the loops were
/// specialised (`kernels::LoopShape`). Runs are a few hundred steps either way.
const LOOP_COUNT_SLACK: usize = 2;

/// Offsets of each slot of each layer-direction in the flat weights, and the total.
fn slot_layout(cfg: &RnnConfig) -> (Vec<[Option<usize>; 6]>, usize) {
    let mut at = 0;
    let mut v = Vec::new();
    for layer in 0..cfg.num_layers {
        for _ in 0..cfg.directions() {
            let mut offs = [None; 6];
            for (i, s) in Slot::ALL.iter().enumerate() {
                if let Some(len) = cfg.slot_len(*s, layer) {
                    offs[i] = Some(at);
                    at += len;
                }
            }
            v.push(offs);
        }
    }
    (v, at)
}

fn slot_index(s: Slot) -> usize {
    Slot::ALL.iter().position(|&x| x == s).unwrap_or(0)
}

fn flatten(w: &Weights<f32>) -> Vec<f32> {
    let mut v = Vec::new();
    for p in &w.params {
        for s in Slot::ALL {
            if let Some(x) = p.get(s) {
                v.extend_from_slice(x);
            }
        }
    }
    v
}

fn unflatten(cfg: &RnnConfig, flat: &[f32]) -> Result<Weights<f32>> {
    let mut g = Weights::<f32>::zeros(cfg)?;
    let mut at = 0;
    for p in g.params.iter_mut() {
        for s in Slot::ALL {
            if let Some(x) = DirParams::get_mut(p, s) {
                let n = x.len();
                let src = flat.get(at..at + n).ok_or_else(|| Error::Gpu("weight gradients read back short".into()))?;
                x.copy_from_slice(src);
                at += n;
            }
        }
    }
    Ok(g)
}


/// The number of elements of [`flat_weights`] for `cfg`.
pub fn weight_elems(cfg: &RnnConfig) -> usize {
    slot_layout(cfg).1
}

/// The weights as [`super::Plan`], [`super::GpuRnn`] and [`StepPlan`] read them: per layer-direction, each slot in
/// [`Slot::ALL`] order (for PyTorch's four cells, `state_dict` order). Gradients come back in
/// the same layout ([`weights_from_flat`]).
pub fn flat_weights(w: &Weights<f32>) -> Vec<f32> {
    flatten(w)
}

/// The weights on the device as [`super::Plan`] reads them: [`flat_weights`] stored in the
/// config's [`Precision`] (f16: converted on the host, so weights loaded from an F16 file
/// arrive unchanged, with no f32 copy on the device).
pub fn upload_weights(ctx: &Context, w: &Weights<f32>) -> Result<TrackedBuffer> {
    check_weights(w)?;
    ctx.check_precision(w.config.precision)?;
    readback::upload_stored(ctx, "weights", &flatten(w), w.config.precision)
}

/// Weights (or weight gradients) from the layout of [`flat_weights`].
pub fn weights_from_flat(cfg: &RnnConfig, flat: &[f32]) -> Result<Weights<f32>> {
    check_len("flat weights", &[weight_elems(cfg)], flat.len())?;
    unflatten(cfg, flat)
}

/// A buffer an op binds: the caller's (named by role) or the plan's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Buf {
    Weights,
    Input,
    Output,
    States,
    GradOutput,
    GradStates,
    GradInput,
    GradWeights,
    Dummy(u8),
    /// A layer-direction's `[xp | tape | states before each row]`.
    Tape(usize),
    /// The output of layer l < L - 1 (the next layer's input).
    LayerOut(usize),
    /// Products (forward), tape gradients (backward).
    Scratch,
    /// The backward's `[dxp | dr | de]`.
    Bws,
    /// The gradient of layer l's input, l >= 1.
    Dx(usize),
    /// Layer l's input after dropout (training, l >= 1).
    LayerIn(usize),
    /// The gradient of layer l's output after dropout's backward (training, l < L - 1).
    Dy(usize),
    /// Zoneout's set-aside gradients `[B, H_out]`.
    Stash,
    /// The fused stage kernel's product input rows `[B, kp]`.
    Pin,
    /// A layer-direction's `W_x^T` for the input projection's GEMM.
    WxT,
    /// What cells adding to the input gradient directly (`Layout::uses_input`) add to when
    /// the caller wants none (`BackwardBuffers::grad_input` `None`), `[N, I]`: never read
    /// (nor cleared).
    DiscardedDx,
    /// A layer-direction's products' `R^T`, for their GEMMs (cells without the fused stage
    /// kernel).
    RT,
    /// The caller's step counter, or a zero of the plan's own ([`Buf::ZeroCounter`]).
    Counter,
    ZeroCounter,
    /// The caller's state i going in (an initial state forward, a final state's gradient
    /// backward), `[L*D, B, S_i]` in batch order.
    Given(u8),
    /// The caller's state i coming out (a final state forward, an initial state's gradient
    /// backward).
    Final(u8),
    /// The u32 row tables between the caller's batch order and the plan's sorted order.
    Tables,
    /// The single-dispatch loop's table (u32): each direction's steps (see `cell_loop` in
    /// shaders/cells/stage.wgsl).
    LoopTab,
    /// The constants of a derived matrix's kernels (`Cell::derive_table`), the same for
    /// every layer.
    DeriveTable,
}

/// One dispatch over buffers by role, or a clear of a buffer's first `bytes` between passes.
#[derive(Clone, Debug)]
enum Op {
    Dispatch { kernel: Kernel, param_off: u32, groups: [u32; 3], bufs: Vec<Buf> },
    Clear(Buf, u64),
}

impl Op {
    /// Whether the op's only effect is on the caller's input gradient: its clear and the
    /// first layer's `dG W_x` (the one GEMM writing it). A backward without an input gradient
    /// leaves these out.
    fn makes_input_gradient_only(&self) -> bool {
        match self {
            Op::Clear(b, _) => *b == Buf::GradInput,
            Op::Dispatch { kernel, bufs, .. } => kernel.family().is_gemm() && bufs.get(2) == Some(&Buf::GradInput),
        }
    }
}

/// The dummy bound as the input gradient where the caller gives none and the cell never adds
/// to it (`Layout::uses_input` false; distinct from the dummies that stand for a kernel's
/// unused bindings).
const NO_DX: u8 = 6;

/// Collects the ops of a plan and their parameter blocks.
struct Builder {
    params: ParamBlocks,
    max_groups: u32,
    /// Bytes per stored element (the plan's precision).
    elem_bytes: usize,
    /// The subgroup kernels ([`Context::subgroup_kernels`] when the plan was built).
    subgroups: bool,
}

impl Builder {
    /// `C = op(A) op(B) (+ bias) + beta C` with `p`'s strides, k in runs of [`K_RUN`] (later
    /// runs add to C; the bias goes with the first).
    fn gemm(&mut self, ops: &mut Vec<Op>, p: GemmParams, a: Buf, b: Buf, c: Buf, bias: Option<Buf>) -> Result<()> {
        self.gemm_runs(ops, p, a, b, c, bias, K_RUN as u32)
    }

    /// A weight-gradient GEMM (k = all rows): [`Builder::gemm`] with k in cache-sized runs
    /// ([`GemmParams::row_run`]).
    fn gemm_rows(&mut self, ops: &mut Vec<Op>, p: GemmParams, a: Buf, b: Buf, c: Buf) -> Result<()> {
        let run = p.row_run(self.elem_bytes);
        self.gemm_runs(ops, p, a, b, c, None, run)
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_runs(&mut self, ops: &mut Vec<Op>, p: GemmParams, a: Buf, b: Buf, c: Buf, bias: Option<Buf>, run: u32) -> Result<()> {
        if p.m == 0 || p.n == 0 {
            return Ok(());
        }
        let max = self.max_groups;
        if p.m.div_ceil(8) > max || p.n.div_ceil(256) > max {
            return Err(Error::Limit(format!("GEMM {}x{} exceeds {max} workgroups per dimension", p.m, p.n)));
        }
        let bias_buf = bias.unwrap_or(b);
        for q in p.runs(run) {
            let off = self.params.push(&q);
            let kernel = q.kernel(self.subgroups);
            ops.push(Op::Dispatch { kernel, param_off: off, groups: q.groups(kernel), bufs: vec![a, b, c, bias_buf, b, a] });
        }
        Ok(())
    }

    /// `dst[dst_off + j] (+)= sum over rows of src[src_off + row * ld + j]`, in runs of rows.
    #[allow(clippy::too_many_arguments)]
    fn colsum(&mut self, ops: &mut Vec<Op>, rows: usize, width: usize, src: Buf, src_off: usize, ld: usize, dst: Buf, dst_off: usize) {
        if width == 0 {
            return;
        }
        // Aligned blocks take colsum4 (vec4 loads, the same sums in the same order).
        let vec4 = width % 4 == 0 && src_off % 4 == 0 && ld % 4 == 0;
        for p in UtilParams::colsum_runs(rows, width, src_off, ld, dst_off, super::sequence::COLSUM_ROWS) {
            let off = self.params.push(&p);
            let op = if vec4 {
                Op::Dispatch { kernel: Kernel::ColSum4, param_off: off, groups: [(width / 4).div_ceil(64) as u32, 1, 1], bufs: vec![src, src, Buf::Dummy(0), dst] }
            } else {
                Op::Dispatch { kernel: Kernel::ColSum, param_off: off, groups: [width.div_ceil(256) as u32, 1, 1], bufs: vec![src, Buf::Dummy(0), Buf::Dummy(0), dst] }
            };
            ops.push(op);
        }
    }

    /// `dst [width, rows]` at `dst_off` = the weights' `[rows, width]` at `src_off`, transposed.
    fn transpose(&mut self, ops: &mut Vec<Op>, src_off: usize, rows: usize, width: usize, dst: Buf, dst_off: usize) {
        let p = UtilParams { rows: rows as u32, width: width as u32, src_off: src_off as u32, dst_off: dst_off as u32, ..Default::default() };
        let off = self.params.push(&p);
        let g = (rows * width).div_ceil(256) as u32;
        let groups = [g.min(self.max_groups), g.div_ceil(self.max_groups), 1];
        ops.push(Op::Dispatch { kernel: Kernel::Transpose, param_off: off, groups, bufs: vec![Buf::Weights, Buf::Dummy(0), Buf::Tables, dst] });
    }

    fn cell(&mut self, ops: &mut Vec<Op>, kernel: Kernel, p: &CellParams, bufs: [Buf; 8]) {
        self.cell_in(ops, kernel, p, bufs, [p.rows, 1, 1]);
    }

    /// A cell-family dispatch (`bufs` at bindings 1..=8).
    fn cell_in(&mut self, ops: &mut Vec<Op>, kernel: Kernel, p: &CellParams, bufs: [Buf; 8], groups: [u32; 3]) {
        let off = self.params.push(p);
        ops.push(Op::Dispatch { kernel, param_off: off, groups, bufs: bufs.to_vec() });
    }
}

/// A prepared forward (and, in training, backward) of any cell for one config and batch
/// structure: the engine API of the generic driver.
pub(crate) struct CellPlan {
    ctx: Arc<Context>,
    cfg: RnnConfig,
    pass: Pass,
    layout: SeqLayout,
    n: usize,
    b: usize,
    weight_elems: usize,
    /// The forward writes a derived matrix into the weights buffer (`Cell::derived`).
    derives: bool,
    params: TrackedBuffer,
    own: HashMap<Buf, TrackedBuffer>,
    forward_ops: Vec<Op>,
    backward_ops: Vec<Op>,
    /// The states between the caller's per-state tensors and the plan's own `[L*D, B, S]`
    /// (sorted order): per state, the gather in (run when the caller gives the state) and out;
    /// forward (`States`) and backward (`GradStates`).
    states_io: StateIo,
    pipelines: HashMap<Kernel, wgpu::ComputePipeline>,
    /// Timestamps around every dispatch while set (see `gpu::profile`).
    profile: std::sync::Mutex<Option<Arc<super::profile::KernelProfile>>>,
}

/// See [`CellPlan::states_io`].
#[derive(Default)]
struct StateIo {
    clear: Vec<Op>,
    fwd_in: Vec<(usize, Op)>,
    fwd_out: Vec<Op>,
    grad_clear: Vec<Op>,
    bwd_in: Vec<(usize, Op)>,
    bwd_out: Vec<Op>,
    /// `[L*D, B, S_i]` elements per state.
    elems: Vec<usize>,
}

impl std::fmt::Debug for CellPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellPlan").field("config", &self.cfg).field("pass", &self.pass).field("rows", &self.n).field("batch", &self.b).finish()
    }
}

impl CellPlan {
    /// Prepares a plan: checks the config and limits, builds the ops, uploads their parameter
    /// blocks, allocates the workspaces (tapes, inner layers' outputs, scratch) and builds the
    /// pipelines.
    pub fn new(ctx: &Arc<Context>, cfg: &RnnConfig, layout: &SeqLayout, pass: Pass) -> Result<Self> {
        Self::with_seed(ctx, cfg, layout, pass, 0)
    }

    /// As [`CellPlan::new`], with the seed of the regularisers' masks (the config's dropout
    /// and zoneout; the step counter is bound at recording, see [`super::ForwardBuffers`]).
    pub fn with_seed(ctx: &Arc<Context>, cfg: &RnnConfig, layout: &SeqLayout, pass: Pass, seed: u32) -> Result<Self> {
        Self::with_strategy(ctx, cfg, layout, pass, seed, StepStrategy::Auto)
    }

    /// As [`CellPlan::with_seed`], with a step strategy: per step (`PerStep`), the
    /// single-dispatch loop (`SingleDispatch`: runs of steps in one dispatch each, for the cells
    /// with [`Mode::unit_step`](crate::Mode::unit_step) without zoneout, products' k and units
    /// up to 256, at most two stages), or `Auto` (the loop where a step is too small to pay
    /// for its dispatches).
    pub fn with_strategy(ctx: &Arc<Context>, cfg: &RnnConfig, layout: &SeqLayout, pass: Pass, seed: u32, strategy: StepStrategy) -> Result<Self> {
        cfg.validate()?;
        if pass == Pass::Training {
            cfg.check_trainable()?;
        }
        let prec = cfg.precision;
        if prec != Precision::F32 && cfg.regularised() {
            // The masks' step counter is an f32 the kernels read through the weights'
            // binding, which f16 plans type as f16.
            return Err(Error::Unsupported(format!("dropout and zoneout with {prec} storage")));
        }
        ctx.check_precision(prec)?;
        let sh = Shape::new(ctx, cfg, layout, pass, seed, strategy)?;
        check_gpu(ctx, sh.n, sh.b, prec, &sh.sizes())?;
        sh.check_step_loops()?;
        let _serial = ctx.exclusive();
        ctx.check_alive()?;
        let mut bl = Builder { params: ParamBlocks::new(ctx), max_groups: ctx.limits().max_compute_workgroups_per_dimension, elem_bytes: prec.bytes(), subgroups: ctx.subgroup_kernels() };
        let forward_ops = sh.forward_ops(&mut bl)?;
        let backward_ops = if sh.training { sh.backward_ops(&mut bl)? } else { Vec::new() };
        let (states_io, tables) = sh.states_io(&mut bl);
        let own = sh.workspaces(&tables)?;
        let params = bl.params.upload(ctx, "cell plan parameters")?;
        let mut pipelines = HashMap::new();
        for op in forward_ops.iter().chain(&backward_ops).chain(&states_io.fwd_out) {
            if let Op::Dispatch { kernel, .. } = op {
                if let std::collections::hash_map::Entry::Vacant(e) = pipelines.entry(*kernel) {
                    e.insert(ctx.pipeline_at(*kernel, prec)?);
                }
            }
        }
        Ok(CellPlan {
            ctx: ctx.clone(),
            cfg: cfg.clone(),
            pass,
            layout: layout.clone(),
            n: sh.n,
            b: sh.b,
            weight_elems: sh.weight_elems,
            derives: sh.dims.iter().any(|dm| dm.derived.is_some()),
            params,
            own,
            forward_ops,
            backward_ops,
            states_io,
            pipelines,
            profile: std::sync::Mutex::new(None),
        })
    }

    /// The configuration the plan was prepared for.
    pub fn config(&self) -> &RnnConfig {
        &self.cfg
    }
    /// Training (keeps a tape for the backward) or inference.
    pub fn pass(&self) -> Pass {
        self.pass
    }
    /// The batch structure the plan was prepared for.
    pub fn layout(&self) -> &SeqLayout {
        &self.layout
    }
    /// Elements of the weights (and weight gradients) buffer, stored in the config's
    /// [`Precision`].
    pub fn weight_elems(&self) -> usize {
        self.weight_elems
    }
    /// Profiles the following recordings with `profile` (timestamps around every dispatch),
    /// or stops with `None`.
    pub(crate) fn set_profile(&self, profile: Option<Arc<super::profile::KernelProfile>>) {
        *self.profile.lock().unwrap_or_else(|e| e.into_inner()) = profile;
    }
    /// The distinct kernel variants a forward and a backward dispatch, in first-use order.
    pub fn kernels(&self) -> Vec<Kernel> {
        let mut v: Vec<Kernel> = Vec::new();
        for op in self.forward_ops.iter().chain(&self.backward_ops) {
            if let Op::Dispatch { kernel, .. } = op {
                if !v.contains(kernel) {
                    v.push(*kernel);
                }
            }
        }
        v
    }
    /// Dispatches one forward records.
    pub fn forward_dispatches(&self) -> usize {
        self.forward_ops.iter().filter(|o| matches!(o, Op::Dispatch { .. })).count()
    }
    /// Dispatches one backward records (0 for an inference plan).
    pub fn backward_dispatches(&self) -> usize {
        self.backward_ops.iter().filter(|o| matches!(o, Op::Dispatch { .. })).count()
    }
    /// Bytes of workspace and parameter blocks this plan holds.
    pub fn workspace_bytes(&self) -> u64 {
        self.own.values().map(|b| b.size()).sum::<u64>() + self.params.size()
    }

    /// `buf` holds `elems` elements in the plan's precision.
    fn check(&self, what: &str, buf: wgpu::BufferSlice<'_>, elems: usize) -> Result<()> {
        record::check_stored(&self.ctx, what, buf, elems, self.cfg.precision)
    }

    /// The caller's step counter, checked, or the plan's zero.
    fn counter<'a>(&'a self, given: Option<wgpu::BufferSlice<'a>>) -> Result<wgpu::BufferSlice<'a>> {
        let counter = given.unwrap_or_else(|| self.own[&Buf::ZeroCounter].slice(..));
        record::check_buffer(&self.ctx, "counter", counter, 1)?;
        Ok(counter)
    }

    /// Checks the caller's per-state buffers: at most one entry per state going in (`given`,
    /// each `[L*D, B, S_i]`), exactly one per state coming out.
    fn check_states_io(&self, given: &[Option<wgpu::BufferSlice<'_>>], out: &[wgpu::BufferSlice<'_>], names: (&str, &str)) -> Result<()> {
        super::engine::check_counts(&self.cfg, given.len(), out.len(), names)?;
        let states = self.cfg.states();
        for (i, st) in states.iter().enumerate() {
            if let Some(Some(g)) = given.get(i) {
                self.check(&format!("{}{}", st.name, names.0), *g, self.states_io.elems[i])?;
            }
            self.check(&format!("{}{}", st.name, names.1), out[i], self.states_io.elems[i])?;
        }
        Ok(())
    }

    /// The ops of one recording: the clears, the gathers in of the states the caller gives, the
    /// pass, the gathers out.
    fn with_states<'a>(clear: &'a [Op], gathers_in: &'a [(usize, Op)], given: &[Option<wgpu::BufferSlice<'_>>], pass: &'a [Op], out: &'a [Op]) -> Vec<&'a Op> {
        let given_in = gathers_in.iter().filter(|(i, _)| given.get(*i).copied().flatten().is_some()).map(|(_, op)| op);
        clear.iter().chain(given_in).chain(pass).chain(out).collect()
    }

    /// Records the forward into `encoder` (no submit): see [`super::Plan::record_forward`].
    pub(crate) fn record_forward(&self, encoder: &mut wgpu::CommandEncoder, bufs: &super::ForwardBuffers<'_>) -> Result<()> {
        self.ctx.check_alive()?;
        self.check("weights", bufs.weights, self.weight_elems)?;
        self.check("input", bufs.input, self.n * self.cfg.input_size)?;
        self.check("output", bufs.output, self.n * self.cfg.output_size())?;
        self.check_states_io(bufs.states0, bufs.states_n, ("0", "_n"))?;
        let counter = self.counter(bufs.counter)?;
        // A derived matrix (`Cell::derived`) is written into the weights buffer: then it is
        // a written role, which no other role may share.
        let mut roles = vec![("weights", Some(bufs.weights), self.derives), ("input", Some(bufs.input), false), ("counter", Some(counter), false), ("output", Some(bufs.output), true)];
        roles.extend(bufs.states0.iter().map(|g| ("initial state", *g, false)));
        roles.extend(bufs.states_n.iter().map(|g| ("final state", Some(*g), true)));
        record::check_aliasing(&self.ctx, &roles)?;
        let io = &self.states_io;
        let ops = Self::with_states(&io.clear, &io.fwd_in, bufs.states0, &self.forward_ops, &io.fwd_out);
        let resolve = |b: Buf| match b {
            Buf::Weights => bufs.weights,
            Buf::Input => bufs.input,
            Buf::Output => bufs.output,
            Buf::Counter => counter,
            Buf::Given(i) => bufs.states0[i as usize].expect("gathered only when given"),
            Buf::Final(i) => bufs.states_n[i as usize],
            own => self.own[&own].slice(..),
        };
        self.record(encoder, &ops, &resolve, "wgpu-rnn cells forward")
    }

    /// Records one forward whose states go in and come out in the same per-state buffers
    /// (each read by the gather in, written by the gather out: never both in one dispatch):
    /// [`StepPlan`]'s step.
    fn record_in_place(&self, encoder: &mut wgpu::CommandEncoder, weights: wgpu::BufferSlice<'_>, input: wgpu::BufferSlice<'_>, output: wgpu::BufferSlice<'_>, states: &[wgpu::BufferSlice<'_>]) -> Result<()> {
        self.ctx.check_alive()?;
        self.check("weights", weights, self.weight_elems)?;
        self.check("input", input, self.n * self.cfg.input_size)?;
        self.check("output", output, self.n * self.cfg.output_size())?;
        let given: Vec<Option<wgpu::BufferSlice<'_>>> = states.iter().map(|s| Some(*s)).collect();
        self.check_states_io(&given, states, ("", ""))?;
        let counter = self.counter(None)?;
        let mut roles = vec![("weights", Some(weights), self.derives), ("input", Some(input), false), ("output", Some(output), true)];
        roles.extend(states.iter().map(|s| ("state", Some(*s), true)));
        record::check_aliasing(&self.ctx, &roles)?;
        let io = &self.states_io;
        let ops = Self::with_states(&io.clear, &io.fwd_in, &given, &self.forward_ops, &io.fwd_out);
        let resolve = |b: Buf| match b {
            Buf::Weights => weights,
            Buf::Input => input,
            Buf::Output => output,
            Buf::Counter => counter,
            Buf::Given(i) | Buf::Final(i) => states[i as usize],
            own => self.own[&own].slice(..),
        };
        self.record(encoder, &ops, &resolve, "wgpu-rnn cells step")
    }

    /// Records the backward into `encoder`: see [`super::Plan::record_backward`].
    pub(crate) fn record_backward(&self, encoder: &mut wgpu::CommandEncoder, bufs: &super::BackwardBuffers<'_>) -> Result<()> {
        if self.pass != Pass::Training {
            return Err(Error::NotTraining);
        }
        self.ctx.check_alive()?;
        let c = &self.cfg;
        self.check("weights", bufs.weights, self.weight_elems)?;
        self.check("input", bufs.input, self.n * c.input_size)?;
        self.check("output", bufs.output, self.n * c.output_size())?;
        self.check("grad_output", bufs.grad_output, self.n * c.output_size())?;
        if let Some(gi) = bufs.grad_input {
            self.check("grad_input", gi, self.n * c.input_size)?;
        }
        self.check("grad_weights", bufs.grad_weights, self.weight_elems)?;
        self.check_states_io(bufs.grad_states_n, bufs.grad_states0, ("_n gradient", "0 gradient"))?;
        // The forward's initial states: not read by this backward, but part of the API's
        // contract, so checked the same way.
        self.check_states_io(bufs.states0, bufs.grad_states0, ("0", "0 gradient"))?;
        // Both are cleared (their first elements only) before the sums that add into them.
        for (what, b) in [("grad_input", bufs.grad_input), ("grad_weights", Some(bufs.grad_weights))] {
            let Some(b) = b else { continue };
            let usage = b.buffer().usage();
            if !usage.contains(wgpu::BufferUsages::COPY_DST) {
                return Err(Error::Gpu(format!("{what} buffer lacks BufferUsages::COPY_DST, which the backward clears it with (has {usage:?})")));
            }
        }
        let counter = self.counter(bufs.counter)?;
        // grad_output is bound read-write by the cell kernels (not written).
        let mut roles = vec![
            ("weights", Some(bufs.weights), false),
            ("input", Some(bufs.input), false),
            ("counter", Some(counter), false),
            ("grad_output", Some(bufs.grad_output), true),
            ("grad_input", bufs.grad_input, true),
            ("grad_weights", Some(bufs.grad_weights), true),
        ];
        // The forward's output and initial states, part of the contract: never a buffer this
        // backward writes.
        roles.push(("output", Some(bufs.output), false));
        roles.extend(bufs.states0.iter().map(|g| ("initial state", *g, false)));
        roles.extend(bufs.grad_states_n.iter().map(|g| ("final state gradient", *g, false)));
        roles.extend(bufs.grad_states0.iter().map(|g| ("initial state gradient", Some(*g), true)));
        record::check_aliasing(&self.ctx, &roles)?;
        let io = &self.states_io;
        let mut ops = Self::with_states(&io.grad_clear, &io.bwd_in, bufs.grad_states_n, &self.backward_ops, &io.bwd_out);
        // Without the caller's input gradient the ops that only make it are left out, and
        // the cell kernels of layer 0 bind a stand-in: a buffer of the plan's own where the
        // cell adds to it directly (`Layout::uses_input`; never read), else a dummy they do
        // not touch.
        if bufs.grad_input.is_none() {
            ops.retain(|op| !op.makes_input_gradient_only());
        }
        let grad_input = bufs.grad_input.unwrap_or_else(|| self.own.get(&Buf::DiscardedDx).unwrap_or(&self.own[&Buf::Dummy(NO_DX)]).slice(..));
        let resolve = |b: Buf| match b {
            Buf::Weights => bufs.weights,
            Buf::Input => bufs.input,
            Buf::GradOutput => bufs.grad_output,
            Buf::GradInput => grad_input,
            Buf::GradWeights => bufs.grad_weights,
            Buf::Counter => counter,
            Buf::Given(i) => bufs.grad_states_n[i as usize].expect("gathered only when given"),
            Buf::Final(i) => bufs.grad_states0[i as usize],
            own => self.own[&own].slice(..),
        };
        self.record(encoder, &ops, &resolve, "wgpu-rnn cells backward")
    }

    fn record<'a>(&'a self, encoder: &mut wgpu::CommandEncoder, ops: &[&Op], resolve: &dyn Fn(Buf) -> wgpu::BufferSlice<'a>, label: &str) -> Result<()> {
        // One bind group per family and buffer list, the parameter blocks at binding 0.
        let scope = ErrorScope::push(&self.ctx.device);
        let dispatches = ops.iter().filter_map(|op| match op {
            Op::Dispatch { kernel, bufs, .. } => Some((*kernel, &bufs[..])),
            Op::Clear(..) => None,
        });
        let bound = record::bind_groups(&self.ctx, &self.params, dispatches, resolve);
        scope.pop_on(&self.ctx)?;
        let (groups, of_op) = bound?;
        let mut rec: Option<Recorder<'static>> = None;
        let mut next = of_op.iter();
        let profile = self.profile.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for op in ops {
            match op {
                Op::Clear(b, bytes) => {
                    drop(rec.take());
                    let s = resolve(*b);
                    encoder.clear_buffer(s.buffer(), s.offset(), Some(*bytes));
                }
                Op::Dispatch { kernel, param_off, groups: g, .. } => {
                    let bg = &groups[*next.next().ok_or_else(|| Error::Gpu("a dispatch without its bind group".into()))?];
                    let r = rec.get_or_insert_with(|| Recorder::begin(encoder, label, profile.clone()).forget_lifetime());
                    r.dispatch(*kernel, &self.pipelines[kernel], bg, *param_off, *g);
                }
            }
        }
        Ok(())
    }
}

/// One time step of a unidirectional stack of any cell, over the caller's buffers: streaming
/// inference and generation. Recording a step binds the caller's buffers and records the
/// dispatches (per layer: the input projection, per stage its product and pointwise kernel);
/// nothing is uploaded, submitted or read back. Stepping a sequence one call at a time gives
/// what [`super::Plan`] (or [`super::GpuRnn`]) gives for the whole sequence. A step is inference: the
/// config's dropout does nothing, its zoneout takes the expectation `p h_prev + (1 - p) h_new`.
#[derive(Debug)]
pub struct StepPlan {
    plan: CellPlan,
}

/// The caller's buffers for one [`StepPlan`] step (the config's [`Precision`], row-major):
/// slices, as [`super::ForwardBuffers`]' (alignment, sizes, sharing alike).
pub struct StepBuffers<'a> {
    /// Flat parameters ([`flat_weights`]).
    pub weights: wgpu::BufferSlice<'a>,
    /// `[B, I]`: this step's input.
    pub input: wgpu::BufferSlice<'a>,
    /// One buffer per state of the cell, in its order ([`RnnConfig::states`]), each
    /// `[L, B, S_i]` in batch order (the engine plan's convention): read as the previous
    /// states and overwritten with the new ones.
    pub states: &'a [wgpu::BufferSlice<'a>],
    /// `[B, H_out]`: the top layer's output at this step (written).
    pub output: wgpu::BufferSlice<'a>,
}

impl StepPlan {
    /// Prepares a step of `cfg` for `batch` rows. Bidirectional stacks are refused (a step of
    /// the reverse direction needs the rest of the sequence).
    pub fn new(ctx: &Arc<Context>, cfg: &RnnConfig, batch: usize) -> Result<Self> {
        if cfg.bidirectional {
            return Err(Error::Unsupported("one step at a time of a bidirectional stack (its reverse direction needs the whole sequence)".into()));
        }
        if batch == 0 {
            return Err(Error::EmptyBatch("a step of 0 rows".into()));
        }
        let layout = SeqLayout::new(vec![batch], (0..batch).collect())?;
        Ok(StepPlan { plan: CellPlan::new(ctx, cfg, &layout, Pass::Inference)? })
    }
    /// The configuration the plan was prepared for.
    pub fn config(&self) -> &RnnConfig {
        &self.plan.cfg
    }
    /// Rows B of a step.
    pub fn batch(&self) -> usize {
        self.plan.b
    }
    /// Elements of the weights buffer (in the config's [`Precision`]).
    pub fn weight_elems(&self) -> usize {
        self.plan.weight_elems
    }
    /// Elements of each state's buffer: `L * B * S_i`, in the cell's state order.
    pub fn state_elems(&self) -> Vec<usize> {
        self.plan.states_io.elems.clone()
    }
    /// Dispatches one step records.
    pub fn dispatches(&self) -> usize {
        self.plan.forward_dispatches()
    }
    /// Bytes of workspace and parameter blocks this plan holds.
    pub fn workspace_bytes(&self) -> u64 {
        self.plan.workspace_bytes()
    }
    /// Records one step into `encoder` (no submit).
    pub fn record_step(&self, encoder: &mut wgpu::CommandEncoder, bufs: &StepBuffers<'_>) -> Result<()> {
        self.plan.record_in_place(encoder, bufs.weights, bufs.input, bufs.output, bufs.states)
    }
}

/// What a cell plan's ops and workspaces are built from: the config, the batch structure,
/// and the sizes and offsets that follow from them.
struct Shape<'a> {
    ctx: &'a Context,
    cfg: &'a RnnConfig,
    layout: &'a SeqLayout,
    /// The regularisers' masks' seed.
    seed: u32,
    /// Packed rows, batch, directions.
    n: usize,
    b: usize,
    d: usize,
    training: bool,
    /// Zoneout on (forward and backward), dropout between layers on (training only).
    zone: bool,
    dropout: bool,
    /// Per layer (both directions alike).
    dims: Vec<Dims>,
    /// Columns of a row's concatenated states; of a layer's output; of h.
    sw: usize,
    out_w: usize,
    hw: usize,
    /// Each slot's offset per layer-direction in the flat weights, and their length.
    woffs: Vec<[Option<usize>; 6]>,
    weight_elems: usize,
    /// The cell runs on the fused stage kernel (`Mode::unit_step`).
    unit: bool,
    /// Each packed step's first row.
    off: Vec<usize>,
    /// The forward walks the steps in single-dispatch runs (`cell_loop`) of at most this
    /// many steps, or one step at a time (None).
    loop_run: Option<usize>,
    /// The loop table (see [`Buf::LoopTab`]): each direction's steps, in processing order.
    loop_tab: Vec<u32>,
    /// Where each direction's forward steps start in the loop table.
    loop_dirs: Vec<usize>,
    /// The backward too walks runs of at most this many steps (`cell_loop_grad`), where the
    /// loop table has each direction's steps in its order from `loop_dirs_bwd`.
    loop_grad_run: Option<usize>,
    loop_dirs_bwd: Vec<usize>,
    /// Workspace lengths (elements): scratch, the stage kernel's product input, W_x^T, the
    /// products' R^T, the backward's `[dxp | dr | de]`.
    scr_len: usize,
    pin_len: usize,
    wxt_len: usize,
    rt_len: usize,
    bws_len: usize,
    /// Rows of the backward's `de`: the batch's (each step's terms added in place, f32
    /// storage) or every packed row's (f16 storage, whose sums stay in f32: summed after).
    de_rows: usize,
}

impl<'a> Shape<'a> {
    fn new(ctx: &'a Context, cfg: &'a RnnConfig, layout: &'a SeqLayout, pass: Pass, seed: u32, strategy: StepStrategy) -> Result<Self> {
        let (n, b, d) = (layout.rows(), layout.batch(), cfg.directions());
        let training = pass == Pass::Training;
        let dims: Vec<Dims> = (0..cfg.num_layers).map(|l| Dims::new(cfg, l)).collect::<Result<_>>()?;
        let (woffs, weight_elems) = slot_layout(cfg);
        let max = |f: &dyn Fn(&Dims) -> usize| dims.iter().map(f).max().unwrap_or(0);
        let de_rows = if cfg.precision == Precision::F16 { n } else { b };
        let mut sh = Shape {
            scr_len: max(&|x| (b * x.rw.max(x.lay.tape)).max(x.derived.as_ref().map_or(0, |d| d.scratch))),
            pin_len: max(&|x| x.pin_len(b)),
            wxt_len: max(&|x| x.lay.xp * x.inw),
            rt_len: max(&|x| if x.unit { 0 } else { x.lay.stages.iter().flatten().map(|p| (p.rows * p.k).next_multiple_of(4)).sum() }),
            bws_len: if training { max(&|x| n * (x.lay.xp + x.rw) + de_rows * x.lay.de_width()) } else { 0 },
            de_rows,
            ctx,
            cfg,
            layout,
            seed,
            n,
            b,
            d,
            training,
            zone: !cfg.zoneout.is_zero(),
            dropout: training && !cfg.dropout.is_zero() && cfg.num_layers > 1,
            sw: dims[0].sw,
            out_w: d * dims[0].lay.out,
            hw: cfg.states()[0].width,
            woffs,
            weight_elems,
            unit: cfg.mode.unit_step(),
            off: step_offsets(layout.batch_sizes()),
            dims,
            loop_run: None,
            loop_tab: Vec::new(),
            loop_dirs: Vec::new(),
            loop_grad_run: None,
            loop_dirs_bwd: Vec::new(),
        };
        sh.loop_run = sh.loop_run(strategy)?;
        if sh.loop_run.is_some() {
            sh.loop_grad_run = sh.loop_grad_run(strategy);
            sh.loop_table();
        }
        Ok(sh)
    }

    /// Layer-direction k's derived product matrix (`cell_derive`, a workgroup per column, then
    /// `cell_derive_polish`) into the weights' `WeightHh` slot, bound read_write at @7;
    /// forward (before anything reads it) and every call.
    fn derive(&self, bl: &mut Builder, ops: &mut Vec<Op>, dm: &Dims, k: usize) -> Result<()> {
        if dm.derived.is_none() {
            return Ok(());
        }
        let cols = self.derive_columns(bl, dm)?;
        let cp = self.derive_params(dm, k)?;
        let bufs = [Buf::Dummy(0), Buf::DeriveTable, Buf::Dummy(2), Buf::Dummy(3), Buf::Scratch, Buf::Dummy(4), Buf::Weights, Buf::Dummy(5)];
        bl.cell_in(ops, Kernel::CellDerive(self.cfg.mode), &cp, bufs, [cols, 1, 1]);
        bl.cell_in(ops, Kernel::CellDerivePolish(self.cfg.mode), &cp, bufs, [cols, 1, 1]);
        Ok(())
    }

    /// Layer-direction k's derived matrix's backward, after its weight gradients: the
    /// per-column partials (`cell_derive_grad`) and their sums into the parameters'
    /// gradients, the matrix's own gradient cleared (`cell_derive_sum`).
    fn derive_grad(&self, bl: &mut Builder, ops: &mut Vec<Op>, dm: &Dims, k: usize) -> Result<()> {
        if dm.derived.is_none() {
            return Ok(());
        }
        let cols = self.derive_columns(bl, dm)?;
        let cp = self.derive_params(dm, k)?;
        let bufs = [Buf::Weights, Buf::DeriveTable, Buf::Dummy(2), Buf::Dummy(3), Buf::Scratch, Buf::Dummy(4), Buf::GradWeights, Buf::Dummy(5)];
        bl.cell_in(ops, Kernel::CellDeriveGrad(self.cfg.mode), &cp, bufs, [cols, 1, 1]);
        // The sums stride over their work whatever the count: enough for the matrix's size.
        let d = dm.derived.as_ref().expect("checked above");
        let groups = d.len.max(d.grads.len()).div_ceil(64).clamp(1, bl.max_groups as usize) as u32;
        bl.cell_in(ops, Kernel::CellDeriveSum(self.cfg.mode), &cp, bufs, [groups, 1, 1]);
        Ok(())
    }

    /// Workgroups of the derive kernels ([`Derived::groups`]).
    fn derive_columns(&self, bl: &Builder, dm: &Dims) -> Result<u32> {
        let groups = dm.derived.as_ref().map_or(0, |d| d.groups);
        if groups as u64 > bl.max_groups as u64 {
            return Err(Error::Limit(format!("a derived matrix's {groups} workgroups exceed {}", bl.max_groups)));
        }
        Ok(groups as u32)
    }

    fn derive_params(&self, dm: &Dims, k: usize) -> Result<CellParams> {
        let wo = &self.woffs[k];
        let cp = dm.params(self.cfg, k, k % self.d, (self.b, self.n, self.training), self.out_w, wo);
        Ok(CellParams { pw: slot_at(wo, Slot::WeightHh, "derived matrix")? as u32, ..cp })
    }

    /// Units a step's dispatches cover: every stage's pointwise step and product units.
    fn units(&self, dm: &Dims) -> usize {
        let pu = dm.lay.stages.iter().flatten().map(|p| p.rows / p.gates).max().unwrap_or(0);
        self.cfg.hidden_size.max(self.cfg.proj_size).max(pu)
    }

    /// Whether the forward walks runs of steps in one dispatch each, and the longest run.
    fn loop_run(&self, strategy: StepStrategy) -> Result<Option<usize>> {
        let why = if !self.unit {
            Some(format!("{} reduces over the row (no per-unit step)", self.cfg.mode))
        } else if self.zone {
            Some("zoneout".to_string())
        } else if self.dims.iter().any(|dm| LoopShape::of(&dm.lay, self.training, self.units(dm)).is_none()) {
            Some(format!("more than {LOOP_STAGES} stages"))
        } else if self.dims.iter().any(|dm| dm.lay.stages.iter().flatten().any(|p| p.k > LOOP_K)) {
            Some(format!("a product's k above {LOOP_K}"))
        } else if self.dims.iter().any(|dm| self.units(dm) > LOOP_UNITS) || self.sw > LOOP_STATE_COLS || self.hw > LOOP_UNITS {
            Some(format!("more than {LOOP_UNITS} units or {LOOP_STATE_COLS} state columns"))
        } else if self.b.div_ceil(LOOP_ROWS) > self.ctx.limits().max_compute_workgroups_per_dimension as usize {
            Some("this batch (workgroups per dimension)".to_string())
        } else {
            None
        };
        let budget = loop_iteration_budget(self.ctx.adapter_info());
        let per_step = self.dims.iter().map(|dm| self.loop_iterations(dm)).max().unwrap_or(1);
        let run = loop_run_steps(budget, per_step);
        match (strategy, why) {
            (StepStrategy::PerStep, _) => Ok(None),
            (StepStrategy::SingleDispatch | StepStrategy::SingleDispatchUnbounded, Some(why)) => {
                Err(Error::Unsupported(format!("the single-dispatch path for {}: not with {why}", self.cfg.mode)))
            }
            (StepStrategy::SingleDispatch, None) => Ok(Some(run)),
            (StepStrategy::SingleDispatchUnbounded, None) => Ok(Some(self.layout.batch_sizes().len())),
            (StepStrategy::Auto, Some(_)) => Ok(None),
            (StepStrategy::Auto, None) => {
                // Multiply-adds (and pointwise units) of a step, against the bound measured on
                // CPU-emulated adapters (for the loops before these), on every adapter: not
                // measured on a GPU yet.
                let max = SINGLE_DISPATCH_MAX_MACS;
                let work = self.dims.iter().map(|dm| self.b * (dm.lay.stages.iter().flatten().map(|p| p.rows * p.k).sum::<usize>() + self.units(dm))).max().unwrap_or(0);
                Ok((work <= max).then_some(run))
            }
        }
    }

    /// Whether the backward walks runs of steps in one dispatch each too (training, where the
    /// forward does, for the cells with [`Mode::loop_grad`](crate::Mode::loop_grad)), and the
    /// longest run.
    fn loop_grad_run(&self, strategy: StepStrategy) -> Option<usize> {
        let wide = self.dims.iter().any(|dm| {
            dm.lay.xp.max(dm.rw).max(dm.lay.de_width()) > LOOP_GRAD_COLS || dm.lay.stages.iter().flatten().any(|p| p.rows > LOOP_GRAD_PROWS)
        });
        if !self.training || wide || !self.cfg.mode.loop_grad() {
            return None;
        }
        if strategy == StepStrategy::SingleDispatchUnbounded {
            return Some(self.layout.batch_sizes().len());
        }
        let per_step = self.dims.iter().map(|dm| self.loop_grad_iterations(dm)).max().unwrap_or(1);
        Some(loop_run_steps(loop_iteration_budget(self.ctx.adapter_info()), per_step))
    }

    /// A per-step kernel's longest loops per invocation within the adapter's budget (Mesa's
    /// cap ends them silently past it): the stage kernel walks a product's k in vec4s, the
    /// pointwise kernels a row's units in strides of 64 ([`ROW_BACKWARD_LOOPS`] loops at most;
    /// the whole-row cells a few passes). Past it the plan is refused, never cut short.
    fn check_step_loops(&self) -> Result<()> {
        let budget = loop_iteration_budget(self.ctx.adapter_info());
        for dm in &self.dims {
            let rows = (ROW_BACKWARD_LOOPS + 4) * self.units(dm).div_ceil(LOOP_WG);
            let k = dm.lay.stages.iter().flatten().map(|p| p.k.div_ceil(4)).max().unwrap_or(0);
            let it = LOOP_COUNT_SLACK * (rows.max(k) + 16);
            if it > budget {
                return Err(Error::Limit(format!(
                    "a step of {} at these sizes loops {it} times per invocation (counted), beyond this adapter's {budget}",
                    self.cfg.mode
                )));
            }
        }
        Ok(())
    }

    /// An upper bound of `cell_loop_grad`'s loop iterations per invocation for one step of a
    /// layer (as [`Shape::loop_iterations`]; `row_backward` has at most
    /// [`ROW_BACKWARD_LOOPS`] loops over the row's units per stage), times [`LOOP_COUNT_SLACK`].
    fn loop_grad_iterations(&self, dm: &Dims) -> usize {
        LOOP_COUNT_SLACK * self.loop_grad_source_iterations(dm)
    }

    /// The loop iterations `cell_loop_grad`'s source has per step.
    fn loop_grad_source_iterations(&self, dm: &Dims) -> usize {
        let per = |n: usize| n.div_ceil(LOOP_WG);
        let mut it = 1 + 16;
        for pr in &dm.lay.stages {
            it += 1 + LOOP_ROWS * (1 + ROW_BACKWARD_LOOPS * (1 + per(self.units(dm))));
            if let Some(pr) = pr {
                it += per(pr.rows) * (1 + LOOP_ROWS) + per(pr.k) * (1 + pr.rows + LOOP_ROWS);
            }
        }
        it
    }

    /// An upper bound of `cell_loop`'s loop iterations per invocation for one step of a
    /// layer (its loops over steps, stages, rows, k and columns; a margin of 16; times
    /// [`LOOP_COUNT_SLACK`]), for the runs' length within the adapter's budget
    /// (`loop_iteration_budget`).
    fn loop_iterations(&self, dm: &Dims) -> usize {
        LOOP_COUNT_SLACK * self.loop_source_iterations(dm)
    }

    /// The loop iterations `cell_loop`'s source has per step.
    fn loop_source_iterations(&self, dm: &Dims) -> usize {
        let per = |n: usize| n.div_ceil(LOOP_WG);
        let mut it = 1 + 16;
        for (s, pr) in dm.lay.stages.iter().enumerate() {
            it += 1 + per(self.units(dm)) * (1 + LOOP_ROWS);
            if s == 0 && self.training {
                it += LOOP_ROWS * (1 + per(self.sw));
            }
            if let Some(pr) = pr {
                it += per(pr.k) * (1 + LOOP_ROWS) + per(pr.rows) * (1 + pr.k + LOOP_ROWS);
            }
        }
        it
    }

    /// The loop table: per direction its steps in processing order as (first packed row,
    /// active rows). (The stages' products are in each run's parameters, and the kernels are
    /// specialised for them: `kernels::LoopShape`.)
    fn loop_table(&mut self) {
        let bs = self.layout.batch_sizes();
        let mut tab = Vec::new();
        let mut dirs = Vec::new();
        let mut dirs_bwd = Vec::new();
        for backward in [false, true] {
            if backward && self.loop_grad_run.is_none() {
                break;
            }
            for dir in 0..self.d {
                if backward { &mut dirs_bwd } else { &mut dirs }.push(tab.len());
                for t in self.order(dir, backward) {
                    tab.extend([self.off[t] as u32, bs[t] as u32]);
                }
            }
        }
        self.loop_dirs_bwd = dirs_bwd;
        self.loop_tab = tab;
        self.loop_dirs = dirs;
    }

    /// The steps of layer-direction k on the single-dispatch loop: one `cell_loop` dispatch
    /// per run of at most `run` steps (`cell_loop_grad` for the backward, `grad`, with `cp`
    /// the backward's parameters and `(x, y, tp)` the layer input, the output gradient and
    /// the tape).
    #[allow(clippy::too_many_arguments)]
    fn loop_steps(&self, bl: &mut Builder, ops: &mut Vec<Op>, dm: &Dims, (k, dir, grad): (usize, usize, bool), cp: &CellParams, run: usize, (x, y, tp): (Buf, Buf, Buf)) -> Result<()> {
        let bs = self.layout.batch_sizes();
        let order = self.order(dir, grad);
        let first = if grad { self.loop_dirs_bwd[dir] } else { self.loop_dirs[dir] };
        let shape = LoopShape::of(&dm.lay, self.training, self.units(dm)).ok_or_else(|| Error::Unsupported(format!("a cell loop over more than {LOOP_STAGES} stages")))?;
        // The stages' products, their inputs at tape row 0 (the kernel moves a tape input's
        // row with the step).
        let mut prods = [[0, 0, 0, 0, NONE, 0, 0, 0, 0]; LOOP_STAGES];
        for (st, pr) in dm.lay.stages.iter().enumerate() {
            if let Some(pr) = pr {
                prods[st] = self.product_desc(dm, k, st, pr, 0)?;
            }
        }
        let [p0, p1] = prods;
        for a in (0..order.len()).step_by(run.max(1)) {
            let len = run.min(order.len() - a);
            // Active rows only shrink (forward) or grow (reverse) along a run.
            let rows = bs[order[a]].max(bs[order[a + len - 1]]);
            let p = CellParams {
                rows: rows as u32,
                units: self.units(dm) as u32,
                steps: len as u32,
                ltab: (first + 2 * a) as u32,
                pg: p0[0],
                prows: p0[1],
                pk: p0[2],
                pw: p0[3],
                pb: p0[4],
                pcol: p0[5],
                pa_off: p0[6],
                pa_ld: p0[7],
                pa_state: p0[8],
                q_rows: p1[1],
                q_k: p1[2],
                q_w: p1[3],
                q_b: p1[4],
                q_col: p1[5],
                q_off: p1[6],
                q_ld: p1[7],
                ..*cp
            };
            let groups = [rows.div_ceil(LOOP_ROWS) as u32, 1, 1];
            if grad {
                let lb = [Buf::Weights, x, tp, Buf::GradStates, Buf::Scratch, y, Buf::Bws, Buf::LoopTab];
                bl.cell_in(ops, Kernel::CellLoopGrad { cell: self.cfg.mode, shape }, &p, lb, groups);
            } else {
                let lb = [Buf::Weights, x, tp, Buf::States, Buf::Scratch, y, Buf::Dummy(5), Buf::LoopTab];
                bl.cell_in(ops, Kernel::CellLoop { cell: self.cfg.mode, shape, pointwise: self.cfg.pointwise_of(dir).copied() }, &p, lb, groups);
            }
        }
        Ok(())
    }

    /// Every buffer the plan binds, for the binding-limit check.
    fn sizes(&self) -> Vec<(&'static str, usize)> {
        let (n, b) = (self.n, self.b);
        let mut sizes = vec![
            ("weights", self.weight_elems),
            ("states", self.cfg.num_layers * self.d * b * self.sw),
            ("layer output", n * self.out_w),
            ("scratch", self.scr_len),
            ("stage product input", self.pin_len),
            ("transposed input matrix", self.wxt_len),
            ("transposed recurrent matrices", self.rt_len),
            ("input", n * self.cfg.input_size),
            ("backward workspace", self.bws_len),
        ];
        for x in &self.dims {
            sizes.push(("tape", x.tape_len(n, b, self.training, self.zone)));
        }
        if self.zone {
            // The mask's element index, (packed row) * H_out + unit.
            sizes.push(("zoneout mask", n * self.hw));
        }
        // u32s, in the plan's elements.
        sizes.push(("loop table", self.loop_tab.len() * 4 / self.cfg.precision.bytes()));
        sizes
    }

    fn last(&self) -> usize {
        self.cfg.num_layers - 1
    }

    /// Layer l's input.
    fn layer_in(&self, l: usize) -> Buf {
        match l {
            0 => Buf::Input,
            _ if self.dropout => Buf::LayerIn(l),
            _ => Buf::LayerOut(l - 1),
        }
    }

    /// The gradient of layer l's output.
    fn grad_out(&self, l: usize) -> Buf {
        match l {
            _ if l == self.last() => Buf::GradOutput,
            _ if self.dropout => Buf::Dy(l),
            _ => Buf::Dx(l + 1),
        }
    }

    /// The time steps of direction `dir` in processing order (reversed for the backward).
    fn order(&self, dir: usize, backward: bool) -> Vec<usize> {
        let steps = self.layout.batch_sizes().len();
        if (dir == 1) != backward {
            (0..steps).rev().collect()
        } else {
            (0..steps).collect()
        }
    }

    /// Zoneout's parameters for layer-direction k (RnnConfig::validate checked its cell).
    fn zone_params(&self, cp: &CellParams, k: usize, stage: u32) -> CellParams {
        let z = self.cfg.zoneout;
        CellParams { stage, seed: masks::zoneout_stream(self.seed, k), thresh: z.threshold(), f: z.get(), ..*cp }
    }

    /// Dropout after layer l: its parameters and workgroups.
    fn dropout_dispatch(&self, bl: &mut Builder, ops: &mut Vec<Op>, l: usize, src: Buf, dst: Buf) {
        let dr = self.cfg.dropout;
        let p = CellParams {
            rows: self.n as u32,
            out_w: self.out_w as u32,
            seed: masks::dropout_stream(self.seed, l),
            thresh: dr.threshold(),
            f: dr.scale() as f32,
            ..Default::default()
        };
        let g = (self.n * self.out_w).div_ceil(256) as u32;
        let max = self.ctx.limits().max_compute_workgroups_per_dimension;
        let db = [Buf::Counter, src, Buf::Dummy(0), Buf::Dummy(1), Buf::Dummy(2), dst, Buf::Dummy(3), Buf::Dummy(4)];
        bl.cell_in(ops, Kernel::CellDropout(self.cfg.mode), &p, db, [g.min(max), g.div_ceil(max), 1]);
    }

    /// The forward: per layer, per direction the input projection and the steps, then
    /// dropout on the layer's output (training, not the last layer).
    fn forward_ops(&self, bl: &mut Builder) -> Result<Vec<Op>> {
        let mut fwd = Vec::new();
        for (layer, dm) in self.dims.iter().enumerate() {
            for dir in 0..self.d {
                self.derive(bl, &mut fwd, dm, layer * self.d + dir)?;
            }
        }
        for (layer, dm) in self.dims.iter().enumerate() {
            let x = self.layer_in(layer);
            let y = if layer == self.last() { Buf::Output } else { Buf::LayerOut(layer) };
            for dir in 0..self.d {
                let k = layer * self.d + dir;
                let tp = Buf::Tape(k);
                self.input_projection(bl, &mut fwd, dm, k, x, tp)?;
                let mut cp = dm.params(self.cfg, k, dir, (self.b, self.n, self.training), self.out_w, &self.woffs[k]);
                if let Some(run) = self.loop_run {
                    self.loop_steps(bl, &mut fwd, dm, (k, dir, false), &cp, run, (x, y, tp))?;
                    continue;
                }
                let rt_offs = if self.unit { Vec::new() } else { self.recurrent_transposes(bl, &mut fwd, dm, k)? };
                for t in self.order(dir, false) {
                    let o = self.off[t];
                    cp.rows = self.layout.batch_sizes()[t] as u32;
                    cp.o = o as u32;
                    cp.trow = if self.training { o } else { 0 } as u32;
                    if self.unit {
                        self.stage_step(bl, &mut fwd, dm, k, &cp, (x, y, tp))?;
                    } else {
                        self.gemm_step(bl, &mut fwd, dm, k, &cp, &rt_offs, (x, y, tp))?;
                    }
                    if self.zone {
                        let zb = [Buf::Counter, x, tp, Buf::States, Buf::Scratch, y, Buf::Dummy(0), Buf::Dummy(1)];
                        bl.cell(&mut fwd, Kernel::CellZoneout(self.cfg.mode), &self.zone_params(&cp, k, self.training as u32), zb);
                    }
                }
            }
            if self.dropout && layer < self.last() {
                self.dropout_dispatch(bl, &mut fwd, layer, y, Buf::LayerIn(layer + 1));
            }
        }
        Ok(fwd)
    }

    /// `xp = X W_x^T + b_x` for every row of layer-direction k: W_x^T [in, Gx] first, so the
    /// GEMM reads B's rows contiguously (as vec4s where aligned).
    fn input_projection(&self, bl: &mut Builder, ops: &mut Vec<Op>, dm: &Dims, k: usize, x: Buf, tp: Buf) -> Result<()> {
        let lay = &dm.lay;
        if lay.xp == 0 {
            return Ok(());
        }
        let wo = &self.woffs[k];
        let wx = slot_at(wo, Slot::WeightIh, "input matrix")?;
        let bias = if lay.input_bias { Some(slot_at(wo, Slot::BiasIh, "input bias")?) } else { None };
        bl.transpose(ops, wx, lay.xp, dm.inw, Buf::WxT, 0);
        bl.gemm(ops, gp(self.n, lay.xp, dm.inw, (0, dm.inw, 1), (0, lay.xp, 1), (0, lay.xp), bias, 0.0), x, Buf::WxT, tp, bias.map(|_| Buf::Weights))
    }

    /// One step on the fused stage kernel (shaders/cells/stage.wgsl): per stage, the copy
    /// of its product's input (and in stage 0 of a training or zoneout step the states'
    /// save), then the stage kernel.
    fn stage_step(&self, bl: &mut Builder, ops: &mut Vec<Op>, dm: &Dims, k: usize, cp: &CellParams, (x, y, tp): (Buf, Buf, Buf)) -> Result<()> {
        let (lay, cell) = (&dm.lay, self.cfg.mode);
        let rows = cp.rows as usize;
        for (st, stage) in lay.stages.iter().enumerate() {
            let save = (self.training || self.zone) && st == 0;
            let mut p = CellParams { stage: st as u32, save: save as u32, ..*cp };
            let mut pu = 0;
            if let Some(pr) = stage {
                pu = pr.rows / pr.gates;
                let [pg, prows, pk, pw, pb, pcol, pa_off, pa_ld, pa_state] = self.product_desc(dm, k, st, pr, cp.trow as usize)?;
                p = CellParams { pg, prows, pk, pw, pb, pcol, pa_off, pa_ld, pa_state, ..p };
            }
            if stage.is_some() || save {
                // The product's input rows to `pin` (written through the scratch binding),
                // the states to the tape.
                let ib = [Buf::Weights, x, tp, Buf::States, Buf::Pin, y, Buf::Dummy(0), Buf::Dummy(1)];
                bl.cell_in(ops, Kernel::CellStageInput(cell), &p, ib, [rows as u32, 1, 1]);
            }
            let units = self.cfg.hidden_size.max(self.cfg.proj_size).max(pu);
            p.units = units as u32;
            // vec4 reads of R: its offset and row length multiples of 4.
            let vec4 = p.pg > 0 && p.pw.is_multiple_of(4) && p.pk.is_multiple_of(4);
            let gates = p.pg.max(1) as u8;
            // An invocation takes 4 / gates units (stage.wgsl, `lanes`).
            let per = units.div_ceil(4 / gates as usize);
            // 16 rows a workgroup for the subgroup twin (stage_subgroup.wgsl's RB_SG).
            let subgroups = bl.subgroups;
            let groups = [per.div_ceil(64) as u32, rows.div_ceil(if subgroups { STAGE_ROWS_SG } else { STAGE_ROWS }) as u32, 1];
            // The weights as vec4s at 7 where read so (16 bytes of them at least then), and
            // the product's input at 8.
            let w4 = if vec4 { Buf::Weights } else { Buf::Dummy(5) };
            let sb = [Buf::Weights, x, tp, Buf::States, Buf::Scratch, y, w4, Buf::Pin];
            let pointwise = self.cfg.pointwise_of(k % self.cfg.directions()).copied();
            bl.cell_in(ops, Kernel::CellStage { cell, vec4, gates, pointwise, subgroups }, &p, sb, groups);
        }
        Ok(())
    }

    /// Stage `st`'s product `pr` of layer-direction k as the kernels take it (the stage
    /// kernel's parameters and the loops'; stage.wgsl's `Prod`): gates, rows, k,
    /// R's offset, the bias's or NONE, its first column in r, and where its input v lies at
    /// the step whose tape row is `trow` (offset, row stride, 1 in the states).
    fn product_desc(&self, dm: &Dims, k: usize, st: usize, pr: &Product, trow: usize) -> Result<[u32; 9]> {
        let (r_off, bias) = product_weights(&self.woffs[k], pr)?;
        let (state, a_off, a_ld) = self.product_input(dm, k, pr, trow);
        let pb = bias.map_or(NONE, |o| o as u32);
        Ok([pr.gates as u32, pr.rows as u32, pr.k as u32, r_off as u32, pb, dm.roffs[st] as u32, a_off as u32, a_ld as u32, state as u32])
    }

    /// Where stage product `pr` of layer-direction k reads its input `v` at the step whose
    /// tape row is `trow`: whether in the states buffer (else the tape), the offset, the row
    /// stride.
    fn product_input(&self, dm: &Dims, k: usize, pr: &Product, trow: usize) -> (bool, usize, usize) {
        match pr.src {
            Src::State(i) => (true, k * self.b * self.sw + dm.soffs[i], self.sw),
            Src::Tape { offset } => (false, dm.tape_off(self.n) + trow * dm.lay.tape + offset, dm.lay.tape),
        }
    }

    /// Each product's R^T for the whole-row cells' GEMMs (vec4 reads), at the offsets
    /// returned (per stage).
    fn recurrent_transposes(&self, bl: &mut Builder, ops: &mut Vec<Op>, dm: &Dims, k: usize) -> Result<Vec<usize>> {
        let mut rt_offs = vec![0; dm.lay.stages.len()];
        let mut at = 0;
        for (st, pr) in dm.lay.stages.iter().enumerate() {
            let Some(pr) = pr else { continue };
            rt_offs[st] = at;
            bl.transpose(ops, product_weights(&self.woffs[k], pr)?.0, pr.rows, pr.k, Buf::RT, at);
            at += (pr.rows * pr.k).next_multiple_of(4);
        }
        Ok(rt_offs)
    }

    /// One step of a whole-row cell: per stage its product's GEMM and `cell_forward` (which in
    /// stage 0 of a training or zoneout step saves the states first).
    #[allow(clippy::too_many_arguments)]
    fn gemm_step(&self, bl: &mut Builder, ops: &mut Vec<Op>, dm: &Dims, k: usize, cp: &CellParams, rt_offs: &[usize], (x, y, tp): (Buf, Buf, Buf)) -> Result<()> {
        let (lay, wo, cell) = (&dm.lay, &self.woffs[k], self.cfg.mode);
        let bufs = [Buf::Weights, x, tp, Buf::States, Buf::Scratch, y, Buf::Dummy(0), Buf::Dummy(1)];
        let rows = cp.rows as usize;
        for (st, stage) in lay.stages.iter().enumerate() {
            if let Some(pr) = stage {
                let bias = product_weights(wo, pr)?.1;
                let (state, a_off, a_rs) = self.product_input(dm, k, pr, cp.trow as usize);
                let abuf = if state { Buf::States } else { tp };
                let p = gp(rows, pr.rows, pr.k, (a_off, a_rs, 1), (rt_offs[st], pr.rows, 1), (dm.roffs[st], dm.rw), bias, 0.0);
                bl.gemm(ops, p, abuf, Buf::RT, Buf::Scratch, bias.map(|_| Buf::Weights))?;
            }
            // Stage 0 of a training or zoneout step first saves the states (row_step.wgsl).
            let save = (self.training || self.zone) && st == 0;
            bl.cell(ops, Kernel::CellForward(cell), &CellParams { stage: st as u32, save: save as u32, ..*cp }, bufs);
        }
        Ok(())
    }

    /// The backward (training plans): layers last to first, per layer dropout's backward,
    /// then per direction the steps in reverse (stages last to first: the cell's
    /// `cell_backward`, then its product's `dr_k R_k` to what the product read) and the
    /// weight gradients over all rows.
    fn backward_ops(&self, bl: &mut Builder) -> Result<Vec<Op>> {
        let (cfg, n) = (self.cfg, self.n);
        let mut bwd = Vec::new();
        // Written by adding (two directions, direct input terms): cleared first.
        bwd.push(Op::Clear(Buf::GradInput, self.f4(n * cfg.input_size)));
        bwd.push(Op::Clear(Buf::GradWeights, self.f4(self.weight_elems)));
        for (l, dm) in self.dims.iter().enumerate().skip(1) {
            bwd.push(Op::Clear(Buf::Dx(l), self.f4(n * dm.inw)));
        }
        for layer in (0..cfg.num_layers).rev() {
            let dm = &self.dims[layer];
            let lay = &dm.lay;
            let x = self.layer_in(layer);
            let dy = self.grad_out(layer);
            let dx = if layer == 0 { Buf::GradInput } else { Buf::Dx(layer) };
            if self.dropout && layer < self.last() {
                // The gradient of the next layer's input, through the same mask.
                self.dropout_dispatch(bl, &mut bwd, layer, Buf::Dx(layer + 1), dy);
            }
            let offs = (0, n * lay.xp, n * (lay.xp + dm.rw));
            for dir in 0..self.d {
                let k = layer * self.d + dir;
                let tp = Buf::Tape(k);
                bwd.push(Op::Clear(Buf::Bws, self.f4(self.bws_len)));
                let mut cp = CellParams { dtape_off: 0, dxp_off: offs.0 as u32, dr_off: offs.1 as u32, de_off: offs.2 as u32, de_acc: (cfg.precision != Precision::F16) as u32, ..dm.params(cfg, k, dir, (self.b, n, true), self.out_w, &self.woffs[k]) };
                if let Some(run) = self.loop_grad_run {
                    self.loop_steps(bl, &mut bwd, dm, (k, dir, true), &cp, run, (x, dy, tp))?;
                    self.weight_gradients(bl, &mut bwd, dm, k, offs, (x, dx, tp))?;
                    self.derive_grad(bl, &mut bwd, dm, k)?;
                    continue;
                }
                for t in self.order(dir, true) {
                    let o = self.off[t];
                    cp.rows = self.layout.batch_sizes()[t] as u32;
                    cp.o = o as u32;
                    cp.trow = o as u32;
                    self.backward_step(bl, &mut bwd, dm, k, &mut cp, (x, dy, dx, tp))?;
                }
                self.weight_gradients(bl, &mut bwd, dm, k, offs, (x, dx, tp))?;
                self.derive_grad(bl, &mut bwd, dm, k)?;
            }
        }
        Ok(bwd)
    }

    /// Bytes of `e` elements in whole 4-byte words (clears cover whole words; the buffers are
    /// checked to hold them).
    fn f4(&self, e: usize) -> u64 {
        (e * self.cfg.precision.bytes()).next_multiple_of(4) as u64
    }

    /// One step's backward: zoneout's stash, per stage (last to first) the cell's
    /// `cell_backward` and its product's `dr_k R_k`, zoneout's add.
    fn backward_step(&self, bl: &mut Builder, ops: &mut Vec<Op>, dm: &Dims, k: usize, cp: &mut CellParams, (x, dy, dx, tp): (Buf, Buf, Buf, Buf)) -> Result<()> {
        let (lay, wo, cell, sw) = (&dm.lay, &self.woffs[k], self.cfg.mode, self.sw);
        let (rows, o, dr_off) = (cp.rows as usize, cp.o as usize, cp.dr_off as usize);
        let zb = [Buf::Counter, x, tp, Buf::GradStates, Buf::Stash, dy, Buf::Dummy(0), Buf::Dummy(1)];
        if self.zone {
            bl.cell(ops, Kernel::CellZoneoutStash(cell), &self.zone_params(cp, k, 1), zb);
        }
        for st in (0..lay.stages.len()).rev() {
            cp.stage = st as u32;
            bl.cell(ops, Kernel::CellBackward(cell), cp, [Buf::Weights, x, tp, Buf::GradStates, Buf::Scratch, dy, Buf::Bws, dx]);
            let Some(pr) = lay.stages[st] else { continue };
            let r_off = product_weights(wo, &pr)?.0;
            let a = (dr_off + o * dm.rw + dm.roffs[st], dm.rw, 1);
            match pr.src {
                Src::Tape { offset } => bl.gemm(ops, gp(rows, pr.k, pr.rows, a, (r_off, pr.k, 1), (offset, lay.tape), None, 0.0), Buf::Bws, Buf::Weights, Buf::Scratch, None)?,
                Src::State(i) => {
                    let p = gp(rows, pr.k, pr.rows, a, (r_off, pr.k, 1), (k * self.b * sw + dm.soffs[i], sw), None, 1.0);
                    bl.gemm(ops, p, Buf::Bws, Buf::Weights, Buf::GradStates, None)?
                }
            }
        }
        if self.zone {
            bl.cell(ops, Kernel::CellZoneoutAdd(cell), &self.zone_params(cp, k, 1), zb);
        }
        Ok(())
    }

    /// Layer-direction k's weight gradients over all rows (`dW_x`, its bias, the input's
    /// gradient through W_x, each product's `dR_k` and bias, the pointwise parameters),
    /// from the backward workspace at `(dxp, dr, de)`.
    fn weight_gradients(&self, bl: &mut Builder, ops: &mut Vec<Op>, dm: &Dims, k: usize, (dxp_off, dr_off, de_off): (usize, usize, usize), (x, dx, tp): (Buf, Buf, Buf)) -> Result<()> {
        let (lay, wo, n, sw) = (&dm.lay, &self.woffs[k], self.n, self.sw);
        if lay.xp > 0 {
            let wx = slot_at(wo, Slot::WeightIh, "input matrix")?;
            bl.gemm_rows(ops, gp(lay.xp, dm.inw, n, (dxp_off, 1, lay.xp), (0, dm.inw, 1), (wx, dm.inw), None, 0.0), Buf::Bws, x, Buf::GradWeights)?;
            if lay.input_bias {
                let bo = slot_at(wo, Slot::BiasIh, "input bias")?;
                bl.colsum(ops, n, lay.xp, Buf::Bws, dxp_off, lay.xp, Buf::GradWeights, bo);
            }
            bl.gemm(ops, gp(n, dm.inw, lay.xp, (dxp_off, lay.xp, 1), (wx, dm.inw, 1), (0, dm.inw), None, 1.0), Buf::Bws, Buf::Weights, dx, None)?;
        }
        for (st, stage) in lay.stages.iter().enumerate() {
            let Some(pr) = stage else { continue };
            let (r_off, bias) = product_weights(wo, pr)?;
            let bsrc = match pr.src {
                Src::State(i) => (dm.sprev_off(n, self.b, true) + dm.soffs[i], sw, 1),
                Src::Tape { offset } => (dm.tape_off(n) + offset, lay.tape, 1),
            };
            bl.gemm_rows(ops, gp(pr.rows, pr.k, n, (dr_off + dm.roffs[st], 1, dm.rw), bsrc, (r_off, pr.k), None, 0.0), Buf::Bws, tp, Buf::GradWeights)?;
            if let Some(at) = bias {
                bl.colsum(ops, n, pr.rows, Buf::Bws, dr_off + dm.roffs[st], dm.rw, Buf::GradWeights, at);
            }
        }
        if lay.pointwise > 0 {
            let at = slot_at(wo, Slot::Pointwise, "pointwise parameters")?;
            for b in lay.grad_blocks() {
                bl.colsum(ops, self.de_rows, b.len, Buf::Bws, de_off + b.de, lay.de_width(), Buf::GradWeights, at + b.param);
            }
        }
        Ok(())
    }

    /// The states between the caller's order and the plan's: tables [to sorted | to caller]
    /// over the L*D*B rows (returned), and per state a gather in and a gather out.
    fn states_io(&self, bl: &mut Builder) -> (StateIo, Vec<u32>) {
        let (b, sw, cfg) = (self.b, self.sw, self.cfg);
        let ld = cfg.num_layers * self.d;
        let rows = ld * b;
        let sorted = self.layout.sorted_indices();
        let mut to_caller = vec![0usize; b];
        for (r, &c) in sorted.iter().enumerate() {
            to_caller[c] = r;
        }
        let mut tables: Vec<u32> = Vec::with_capacity(2 * rows);
        for l in 0..ld {
            tables.extend(sorted.iter().map(|&c| (l * b + c) as u32));
        }
        for l in 0..ld {
            tables.extend(to_caller.iter().map(|&r| (l * b + r) as u32));
        }
        let mut io = StateIo::default();
        io.clear.push(Op::Clear(Buf::States, self.f4(rows * sw)));
        if self.training {
            io.grad_clear.push(Op::Clear(Buf::GradStates, self.f4(rows * sw)));
        }
        let (soffs, _) = state_offsets(&cfg.states());
        for (i, st) in cfg.states().iter().enumerate() {
            let w = st.width;
            io.elems.push(rows * w);
            let groups = {
                let g = (rows * w).div_ceil(256) as u32;
                let max = self.ctx.limits().max_compute_workgroups_per_dimension;
                [g.min(max), g.div_ceil(max), 1]
            };
            let mut gather = |src: Buf, dst: Buf, p: UtilParams| {
                let off = bl.params.push(&p);
                Op::Dispatch { kernel: Kernel::GatherRows, param_off: off, groups, bufs: vec![src, Buf::Dummy(0), Buf::Tables, dst] }
            };
            let (r, wu, swu, off) = (rows as u32, w as u32, sw as u32, soffs[i] as u32);
            let into = UtilParams { rows: r, width: wu, src_ld: wu, dst_off: off, dst_ld: swu, ..Default::default() };
            let out = UtilParams { rows: r, width: wu, src_ld: swu, src_col: off, seq_off: r, dst_ld: wu, ..Default::default() };
            io.fwd_in.push((i, gather(Buf::Given(i as u8), Buf::States, into)));
            io.fwd_out.push(gather(Buf::States, Buf::Final(i as u8), out));
            if self.training {
                io.bwd_in.push((i, gather(Buf::Given(i as u8), Buf::GradStates, into)));
                io.bwd_out.push(gather(Buf::GradStates, Buf::Final(i as u8), out));
            }
        }
        (io, tables)
    }

    /// The plan's own buffers: the row tables, the states, the dummies, the workspaces, the
    /// tapes and the inner layers' outputs and gradients.
    fn workspaces(&self, tables: &[u32]) -> Result<HashMap<Buf, TrackedBuffer>> {
        let (ctx, n, b, d, training) = (self.ctx, self.n, self.b, self.d, self.training);
        let rows = self.cfg.num_layers * d * b;
        let mut own = HashMap::new();
        own.insert(Buf::Tables, readback::upload_bytes(ctx, "state tables", bytemuck::cast_slice(tables))?);
        if self.loop_run.is_some() {
            own.insert(Buf::LoopTab, readback::upload_bytes(ctx, "loop table", bytemuck::cast_slice(&self.loop_tab))?);
        }
        let buf = |label: &str, elems: usize| buf(ctx, label, elems, self.cfg.precision);
        own.insert(Buf::States, buf("states", rows * self.sw)?);
        if training {
            own.insert(Buf::GradStates, buf("state gradients", rows * self.sw)?);
        }
        for i in 0..=NO_DX {
            own.insert(Buf::Dummy(i), buf("unused", 4)?);
        }
        own.insert(Buf::ZeroCounter, readback::storage(ctx, "zero step counter", 4)?);
        if self.zone && training {
            own.insert(Buf::Stash, buf("zoneout gradients", b * self.hw)?);
        }
        own.insert(Buf::Scratch, buf("cell scratch", self.scr_len)?);
        if self.dims.iter().any(|dm| dm.derived.is_some()) {
            // Every layer's product is H x H alike (its k is the state's width).
            let mut table = self.cfg.mode.derive_table(self.cfg.sizes(0));
            if table.is_empty() {
                table.push(0.0);
            }
            own.insert(Buf::DeriveTable, readback::upload_bytes(ctx, "derived matrix constants", bytemuck::cast_slice(&table))?);
        }
        if self.unit {
            own.insert(Buf::Pin, buf("stage product input", self.pin_len)?);
        } else {
            own.insert(Buf::RT, buf("transposed recurrent matrices", self.rt_len)?);
        }
        own.insert(Buf::WxT, buf("transposed input matrix", self.wxt_len)?);
        for (layer, dm) in self.dims.iter().enumerate() {
            for dir in 0..d {
                own.insert(Buf::Tape(layer * d + dir), buf("cell tape", dm.tape_len(n, b, training, self.zone))?);
            }
            if layer < self.last() {
                own.insert(Buf::LayerOut(layer), buf("layer output", n * self.out_w)?);
            }
            if training && layer > 0 {
                own.insert(Buf::Dx(layer), buf("layer input gradients", n * dm.inw)?);
            }
            if self.dropout && layer > 0 {
                own.insert(Buf::LayerIn(layer), buf("layer input after dropout", n * dm.inw)?);
            }
            if self.dropout && layer < self.last() {
                own.insert(Buf::Dy(layer), buf("layer output gradients after dropout", n * self.out_w)?);
            }
        }
        if training {
            own.insert(Buf::Bws, buf("backward workspace", self.bws_len)?);
            if self.dims[0].lay.uses_input {
                own.insert(Buf::DiscardedDx, buf("input gradient (discarded)", n * self.cfg.input_size)?);
            }
        }
        Ok(own)
    }
}

/// A product's `R` and bias offsets in the flat weights of a layer-direction (slot offsets
/// `wo`).
fn product_weights(wo: &[Option<usize>; 6], pr: &Product) -> Result<(usize, Option<usize>)> {
    let r = slot_at(wo, pr.slot, "recurrent matrix")? + pr.offset;
    let bias = match pr.bias {
        Some((bs, bo)) => Some(slot_at(wo, bs, "recurrent bias")? + bo),
        None => None,
    };
    Ok((r, bias))
}

fn slot_at(wo: &[Option<usize>; 6], s: Slot, what: &str) -> Result<usize> {
    wo[slot_index(s)].ok_or_else(|| Error::MissingTensor(what.into()))
}

/// GEMM parameters: `C[i, j] = sum_k A[a_off + i*a_rs + k*a_cs] B[b_off + k*b_rs + j*b_cs]`.
#[allow(clippy::too_many_arguments)]
fn gp(m: usize, n: usize, k: usize, a: (usize, usize, usize), b: (usize, usize, usize), c: (usize, usize), bias_off: Option<usize>, beta: f32) -> GemmParams {
    GemmParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        a_off: a.0 as u32,
        a_rs: a.1 as u32,
        a_cs: a.2 as u32,
        b_off: b.0 as u32,
        b_rs: b.1 as u32,
        b_cs: b.2 as u32,
        c_off: c.0 as u32,
        ldc: c.1 as u32,
        bias_off: bias_off.map_or(NONE, |o| o as u32),
        alpha: 1.0,
        beta,
        ..Default::default()
    }
}

/// Sizes of one layer-direction's buffers.
struct Dims {
    lay: Layout,
    soffs: Vec<usize>,
    sw: usize,
    roffs: Vec<usize>,
    rw: usize,
    inw: usize,
    /// The cell runs on the fused stage kernel (`Mode::unit_step`).
    unit: bool,
    /// The cell's derived product matrix, if any (`cell_derive`).
    derived: Option<Derived>,
}

impl Dims {
    fn new(cfg: &RnnConfig, layer: usize) -> Result<Self> {
        let sizes = cfg.sizes(layer);
        let lay = cfg.mode.layout(sizes);
        let (soffs, sw) = state_offsets(&cfg.states());
        let (roffs, rw) = lay.product_offsets();
        // The backward adds a product's state gradient straight into the state gradients.
        cfg.mode.check_layout(sizes).map_err(|why| Error::Unsupported(format!("{}: {why}", cfg.mode)))?;
        Ok(Dims { lay, soffs, sw, roffs, rw, inw: sizes.input, unit: cfg.mode.unit_step(), derived: cfg.mode.derived(sizes) })
    }
    /// Tape buffer: `[xp N*gx | tape R*tw | states before each row N*sw]` (R = N in training,
    /// B in inference; the states before each row in training, and with zoneout, which reads
    /// the previous h).
    fn tape_len(&self, n: usize, b: usize, training: bool, zone: bool) -> usize {
        self.sprev_off(n, b, training) + if training || zone { n * self.sw } else { 0 }
    }
    /// The fused stage kernel's product inputs `[B, kp]` (cells with `Mode::unit_step`).
    fn pin_len(&self, b: usize) -> usize {
        let k = self.lay.stages.iter().flatten().map(|p| p.k.next_multiple_of(4)).max().unwrap_or(0);
        if self.unit { b * k } else { 0 }
    }
    fn tape_off(&self, n: usize) -> usize {
        n * self.lay.xp
    }
    fn sprev_off(&self, n: usize, b: usize, training: bool) -> usize {
        n * self.lay.xp + if training { n } else { b } * self.lay.tape
    }
    /// The cell dispatches' parameters of layer-direction `k` (direction `dir`) that do not
    /// change from step to step.
    #[allow(clippy::too_many_arguments)]
    fn params(&self, cfg: &RnnConfig, k: usize, dir: usize, (b, n, training): (usize, usize, bool), out_w: usize, wo: &[Option<usize>; 6]) -> CellParams {
        let lay = &self.lay;
        CellParams {
            hidden: cfg.hidden_size as u32,
            proj: cfg.proj_size as u32,
            inw: self.inw as u32,
            gx: lay.xp as u32,
            rw: self.rw as u32,
            sw: self.sw as u32,
            s_off: (k * b * self.sw) as u32,
            tw: lay.tape as u32,
            tape_off: self.tape_off(n) as u32,
            sprev_off: self.sprev_off(n, b, training) as u32,
            ew: lay.de_width() as u32,
            e_off: wo[slot_index(Slot::Pointwise)].unwrap_or(0) as u32,
            out_w: out_w as u32,
            col: (dir * lay.out) as u32,
            ..Default::default()
        }
    }
}

fn check_gpu(ctx: &Context, n: usize, b: usize, prec: Precision, elems: &[(&str, usize)]) -> Result<()> {
    let max = ctx.limits().max_compute_workgroups_per_dimension as usize;
    if b > max {
        return Err(Error::Limit(format!("batch {b} exceeds the device's {max} workgroups per dimension")));
    }
    let limit = ctx.binding_limit() / prec.bytes() as u64;
    for &(what, e) in elems.iter().chain([("rows", n)].iter()) {
        if e as u64 > limit || e >= 1 << 31 {
            return Err(Error::Limit(format!("{what} ({e} {prec}) exceeds one binding ({} bytes) on this device", ctx.binding_limit())));
        }
    }
    Ok(())
}

fn buf(ctx: &Context, label: &str, elems: usize, prec: Precision) -> Result<TrackedBuffer> {
    ctx.buffer(label, (elems.max(4) * prec.bytes()) as u64, readback::storage_usage())
}
