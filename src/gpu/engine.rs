//! The engine API: one [`Plan`] for every registered cell, prepared once per config, batch
//! structure and pass, then recorded into the caller's `CommandEncoder` over the caller's
//! buffers ([`ForwardBuffers`], [`BackwardBuffers`]), with no hidden submit, readback or
//! buffer write.
//!
//! One weights layout ([`super::flat_weights`]) and one state convention, the CPU engine's:
//! per state of the cell ([`RnnConfig::states`]: `h`, then `c` for an LSTM, ...), a
//! `[L*D, B, S_i]` tensor in the caller's batch order.
//!
//! Behind the plan, one driver for every cell (`generic.rs`): per stage the fused stage kernel
//! (the cell's own WGSL with its product), or runs of steps in one dispatch for small
//! problems; the regularisers; the states gathered from and to the caller's order around the
//! pass.

use super::context::Context;
use super::generic::CellPlan;
use super::kernels::Kernel;
use super::sequence::{SeqLayout, StepStrategy};
use crate::config::RnnConfig;
use crate::cpu::Pass;
use crate::error::{Error, Result};
use std::sync::Arc;

/// The caller's buffers for a forward. Every buffer but the counter holds elements in the
/// config's [`crate::Precision`] (f32, or f16: sizes checked in f16 elements, rounded up to 4
/// bytes), row-major.
///
/// Each is a slice of a buffer (`buffer.slice(..)` for a whole one): a tensor that lives
/// inside a larger allocation, as a framework's pooled tensors do, is bound where it lies,
/// with no copy. A slice must start at a multiple of the device's
/// `min_storage_buffer_offset_alignment` (256 bytes on most devices) and hold at least the
/// role's elements; it may be larger. Slices of one buffer may fill several roles where none
/// of them overlaps a written one (`Error::BufferAliasing`); on a context made with
/// [`super::Context::with_shared_buffers`] even a written one beside read ones, as a pool
/// places them (otherwise wgpu refuses one buffer bound for reading and writing in one
/// dispatch, when the encoder is finished).
///
/// Every buffer must come from the plan's device. wgpu cannot be asked for a buffer's device,
/// and a buffer of another `wgpu::Instance` is known by an id that indexes this device's own
/// buffers: it is not refused here and may stand for another buffer (`tests/it/reliability_gpu.rs`,
/// `engine_plan_does_not_panic_on_buffers_of_another_device`).
pub struct ForwardBuffers<'a> {
    /// Flat parameters ([`super::flat_weights`]; [`super::weight_elems`] elements).
    pub weights: wgpu::BufferSlice<'a>,
    /// `[N, I]` packed input rows.
    pub input: wgpu::BufferSlice<'a>,
    /// `[N, D*H_out]` packed output rows (written).
    pub output: wgpu::BufferSlice<'a>,
    /// The initial states, in the cell's state order: entry i is `[L*D, B, S_i]` in the
    /// caller's batch order, zeros when `None` or absent (`&[]`: every state zero). At most
    /// one entry per state.
    pub states0: &'a [Option<wgpu::BufferSlice<'a>>],
    /// The final states (written): one `[L*D, B, S_i]` per state, each sequence's state at its
    /// own last step, in the caller's batch order.
    pub states_n: &'a [wgpu::BufferSlice<'a>],
    /// The regularisers' step counter: an f32 step count at element 0 (an optimiser's state
    /// buffer, `gpu::train::Optimizer::state_buffer`, so every step draws new masks), or 0
    /// when `None`. Read only by a config with dropout or zoneout.
    pub counter: Option<wgpu::BufferSlice<'a>>,
}

/// The caller's buffers for a backward: the forward's inputs and output unchanged since the
/// training forward was recorded (and will have run), the gradients coming in, and where the
/// gradients go.
pub struct BackwardBuffers<'a> {
    /// Flat parameters, as the forward had them.
    pub weights: wgpu::BufferSlice<'a>,
    /// `[N, I]` packed input rows, as the forward had them.
    pub input: wgpu::BufferSlice<'a>,
    /// `[N, D*H_out]`, the training forward's output.
    pub output: wgpu::BufferSlice<'a>,
    /// The initial states as the forward had them (the same entries).
    pub states0: &'a [Option<wgpu::BufferSlice<'a>>],
    /// `[N, D*H_out]`.
    pub grad_output: wgpu::BufferSlice<'a>,
    /// The gradients of the final states, per state (zeros when `None` or absent).
    pub grad_states_n: &'a [Option<wgpu::BufferSlice<'a>>],
    /// `[N, I]` (written; needs `COPY_DST`), or `None` where the input needs no gradient
    /// (PyTorch's input without `requires_grad`): the backward then leaves out the first
    /// layer's input-gradient product (`dG W_x`, about a sixth of C1 LSTM's backward FLOPs).
    pub grad_input: Option<wgpu::BufferSlice<'a>>,
    /// The gradients of the initial states (written): one per state.
    pub grad_states0: &'a [wgpu::BufferSlice<'a>],
    /// Flat, the weights' layout (written, every element; needs `COPY_DST`).
    pub grad_weights: wgpu::BufferSlice<'a>,
    /// The step counter the forward read (its value unchanged since).
    pub counter: Option<wgpu::BufferSlice<'a>>,
}

/// A prepared forward (and, in training, backward) of any registered cell for one config and
/// batch structure: the engine API.
pub struct Plan {
    inner: CellPlan,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Plan {
    /// Prepares a plan: checks the config and the device's limits, uploads the parameter
    /// blocks and tables, allocates the workspaces (tapes, inner layers' outputs) and builds
    /// the pipelines. Masks (dropout, zoneout) from seed 0 ([`Plan::with_seed`]).
    pub fn new(ctx: &Arc<Context>, cfg: &RnnConfig, layout: &SeqLayout, pass: Pass) -> Result<Self> {
        Self::prepare(ctx, cfg, layout, pass, 0, StepStrategy::Auto)
    }

    /// As [`Plan::new`], with the seed of the regularisers' masks (the config's dropout and
    /// zoneout; the step counter is bound at recording, see [`ForwardBuffers::counter`]).
    pub fn with_seed(ctx: &Arc<Context>, cfg: &RnnConfig, layout: &SeqLayout, pass: Pass, seed: u32) -> Result<Self> {
        Self::prepare(ctx, cfg, layout, pass, seed, StepStrategy::Auto)
    }

    /// As [`Plan::new`], with the forward's step strategy chosen by the caller: `PerStep`,
    /// and `SingleDispatch` for the cells with a per-unit step ([`crate::Mode::unit_step`])
    /// without zoneout, products' k and units up to 256, at most two stages. A strategy a
    /// configuration cannot run is [`Error::Unsupported`].
    pub fn with_strategy(ctx: &Arc<Context>, cfg: &RnnConfig, layout: &SeqLayout, pass: Pass, strategy: StepStrategy) -> Result<Self> {
        Self::prepare(ctx, cfg, layout, pass, 0, strategy)
    }

    /// The constructors' common body.
    pub(crate) fn prepare(ctx: &Arc<Context>, cfg: &RnnConfig, layout: &SeqLayout, pass: Pass, seed: u32, strategy: StepStrategy) -> Result<Self> {
        cfg.validate()?;
        Ok(Plan { inner: CellPlan::with_strategy(ctx, cfg, layout, pass, seed, strategy)? })
    }

    /// The configuration the plan was prepared for.
    pub fn config(&self) -> &RnnConfig {
        self.inner.config()
    }
    /// Training (a backward can follow) or inference.
    pub fn pass(&self) -> Pass {
        self.inner.pass()
    }
    /// The batch structure the plan was prepared for.
    pub fn layout(&self) -> &SeqLayout {
        self.inner.layout()
    }
    /// Packed rows N.
    pub fn rows(&self) -> usize {
        self.layout().rows()
    }
    /// Elements of the weights (and weight gradients) buffer, in the config's precision.
    pub fn weight_elems(&self) -> usize {
        self.inner.weight_elems()
    }
    /// Dispatches one recorded forward issues (the gathers of the states the caller gives
    /// come on top).
    pub fn forward_dispatches(&self) -> usize {
        self.inner.forward_dispatches()
    }
    /// Dispatches one recorded backward issues (0 for an inference plan).
    pub fn backward_dispatches(&self) -> usize {
        self.inner.backward_dispatches()
    }
    /// The distinct kernel variants a forward and a backward dispatch, in first-use order.
    pub fn kernels(&self) -> Vec<Kernel> {
        self.inner.kernels()
    }
    /// Bytes of workspace, tables and parameter blocks this plan holds.
    pub fn workspace_bytes(&self) -> u64 {
        self.inner.workspace_bytes()
    }

    /// Profiles the following recordings with `profile` (timestamps around every dispatch),
    /// or stops with `None`; only for finding where time goes (the timestamps cost time too).
    pub fn set_profile(&self, profile: Option<Arc<super::profile::KernelProfile>>) {
        self.inner.set_profile(profile)
    }

    /// Records the forward into `encoder` (no submit).
    pub fn record_forward(&self, encoder: &mut wgpu::CommandEncoder, bufs: &ForwardBuffers<'_>) -> Result<()> {
        self.inner.record_forward(encoder, bufs)
    }

    /// Records the backward into `encoder`. The plan must be a training plan whose forward
    /// was recorded (and will have run) with the same weights, input, output and states.
    /// The backward clears what it adds into (the input and weight gradients), so a plan can
    /// be recorded again and again.
    pub fn record_backward(&self, encoder: &mut wgpu::CommandEncoder, bufs: &BackwardBuffers<'_>) -> Result<()> {
        self.inner.record_backward(encoder, bufs)
    }
}

/// At most one entry per state going in, exactly one per state coming out;
/// `suffixes` name the two sides after the states (`("0", "_n")`: h0, c0 and h_n, c_n).
pub(crate) fn check_counts(cfg: &RnnConfig, given: usize, out: usize, suffixes: (&str, &str)) -> Result<()> {
    let states = cfg.states();
    let n = states.len();
    if given > n || out != n {
        let names = |suffix: &str| states.iter().map(|s| format!("{}{suffix}", s.name)).collect::<Vec<_>>().join(", ");
        return Err(Error::InvalidConfig(format!(
            "{} has {n} states: {given} buffers given for {} and {out} for {}",
            cfg.mode,
            names(suffixes.0),
            names(suffixes.1)
        )));
    }
    Ok(())
}
