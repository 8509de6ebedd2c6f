//! The convenience API: upload, run (one submit for a whole forward or backward), read back.
//! Mirrors [`crate::cpu::forward`] / [`crate::cpu::backward`] for every registered cell, with
//! the same types and state convention. It is built on the engine API ([`Plan`]) alone: one
//! code path whichever driver the plan takes, splitting included.

use super::context::{Context, TrackedBuffer};
use super::engine::{BackwardBuffers, ForwardBuffers, Plan};
use super::generic;
use super::sequence::{SeqLayout, StepStrategy};
use super::readback::{storage_at, upload, upload_stored, Readback};
use crate::config::RnnConfig;
use crate::cpu::{check_run, check_states, ForwardOutput, Gradients, Pass};
use crate::error::{check_len, Error, Result};
use crate::masks::Draw;
use crate::packing::{step_offsets, PackedSequence};
use crate::tensor::Tensor;
use crate::weights::Weights;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// How many plans (distinct batch structures) a model keeps prepared.
const PLAN_CACHE: usize = 8;

/// How a run of the convenience API waits for the device: blocking (the blocking forms), or
/// awaiting each read (the async forms). The splitting logic is written once, as async
/// functions taking this; with `Block` they never suspend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Block,
    Await,
}

/// A recurrent stack of any registered cell resident on the GPU: [`GpuRnn::forward`] and
/// [`GpuRnn::backward`] as the CPU engine's, with its types and its state convention.
pub struct GpuRnn {
    ctx: Arc<Context>,
    cfg: RnnConfig,
    weights: TrackedBuffer,
    plans: Mutex<Vec<(PlanKey, Arc<Plan>)>>,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct PlanKey {
    layout: SeqLayout,
    pass: Pass,
    seed: u32,
    /// The context's binding limit the plan was checked against: a plan made before the
    /// limit was lowered may exceed it (`Context::set_binding_limit`).
    binding_limit: u64,
}

/// What a training forward keeps on the device for [`GpuRnn::backward`].
pub struct GpuTape {
    /// The context and weights it was recorded with: backward refuses any other model.
    ctx: Arc<Context>,
    weights: wgpu::Buffer,
    unsorted_indices: Vec<usize>,
    kind: TapeKind,
}

impl GpuTape {
    /// How the forward was split (see [`GpuRnn::forward`]): for each plan it ran, in order,
    /// the sorted positions (sequences by decreasing length) and the time steps it covered.
    /// One piece covering the whole batch when it fit one plan.
    pub fn pieces(&self) -> Vec<(Range<usize>, Range<usize>)> {
        match &self.kind {
            TapeKind::Whole(rec) => vec![(0..rec.plan.layout().batch(), 0..rec.plan.layout().steps())],
            TapeKind::Split { split, .. } => split.pieces.iter().map(|p| (p.k0..p.k1.min(p.k0 + p.batch(&split.batch)), p.a..p.b)).collect(),
        }
    }
}

/// One plan's training forward: the buffers its backward binds again.
struct Recorded {
    plan: Arc<Plan>,
    input: TrackedBuffer,
    output: TrackedBuffer,
    /// Every state's initial value (zeros where none was given).
    states0: Vec<TrackedBuffer>,
    counter: TrackedBuffer,
}

enum TapeKind {
    /// The whole batch in one plan.
    Whole(Recorded),
    /// A problem split into pieces (see [`Split`]), each recorded with its own plan.
    Split { split: Split, pieces: Vec<Recorded> },
}

/// One plan's forward: the output rows, each state's final value (the plan layout's caller
/// order), and in training what its backward binds again.
struct Forwarded {
    output: Vec<f32>,
    finals: Vec<Vec<f32>>,
    rec: Option<Recorded>,
}

/// One plan's forward between its recording and its readback: the buffers it binds.
struct ForwardParts {
    plan: Arc<Plan>,
    input: TrackedBuffer,
    output: TrackedBuffer,
    /// Every state's initial value (zeros where none was given).
    given: Vec<TrackedBuffer>,
    finals: Vec<TrackedBuffer>,
    counter: TrackedBuffer,
}

/// One plan's backward: the input's gradient, each initial state's, the flat weights'.
struct Backwarded {
    input: Vec<f32>,
    states0: Vec<Vec<f32>>,
    weights: Vec<f32>,
}

use crate::float::check_finite;

impl GpuRnn {
    /// Uploads the weights, stored in the config's [`crate::Precision`] (f16: rounded on the
    /// host; needs the device's `SHADER_F16`, else [`Error::MissingFeature`]), flat in
    /// [`generic::flat_weights`]'s layout (per layer-direction, the slots in order: for
    /// PyTorch's four cells `state_dict` order).
    pub fn new(ctx: &Arc<Context>, w: &Weights<f32>) -> Result<Self> {
        let _serial = ctx.exclusive();
        // Validated (config, every tensor against it, finite), stored in the config's precision.
        let weights = generic::upload_weights(ctx, w)?;
        Ok(GpuRnn { ctx: ctx.clone(), cfg: w.config.clone(), weights, plans: Mutex::new(Vec::new()) })
    }

    /// The configuration the weights were uploaded for.
    pub fn config(&self) -> &RnnConfig {
        &self.cfg
    }

    /// The context the model lives on.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The flat weights buffer ([`super::flat_weights`] order, the config's precision), for the
    /// engine API.
    pub fn weights_buffer(&self) -> &wgpu::Buffer {
        &self.weights
    }

    /// A prepared plan for this structure: cached, and never one a live tape still uses.
    fn plan(&self, layout: &SeqLayout, pass: Pass, seed: u32) -> Result<Arc<Plan>> {
        let key = PlanKey { layout: layout.clone(), pass, seed, binding_limit: self.ctx.binding_limit() };
        // GL: the guard before the cache's lock, always (Plan::new and dropping an evicted
        // plan take it too): the other order, beside a caller that holds the guard and then
        // asks for a plan, deadlocked.
        let _serial = self.ctx.exclusive();
        // A panic elsewhere while the cache was locked leaves it consistent (entries are
        // pushed whole), so a poisoned lock is used as is.
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = plans.iter().position(|(k, p)| *k == key && Arc::strong_count(p) == 1) {
            let entry = plans.remove(pos);
            let plan = entry.1.clone();
            plans.push(entry);
            return Ok(plan);
        }
        let plan = Arc::new(Plan::prepare(&self.ctx, &self.cfg, layout, pass, seed, StepStrategy::Auto)?);
        plans.push((key, plan.clone()));
        if plans.len() > PLAN_CACHE {
            plans.remove(0);
        }
        Ok(plan)
    }

    /// Forward over a packed batch, as [`crate::cpu::forward`]: `states0[i]` is state i's
    /// initial value `[L*D, B, S_i]` in the caller's batch order, in the cell's state order
    /// ([`RnnConfig::states`]: `&[h0, c0]` for LSTM), zeros when `None` or absent; the output's
    /// states are the final states in the same order. The config's dropout and zoneout draw
    /// their masks from `Draw::default()` ([`GpuRnn::forward_with`] chooses).
    ///
    /// A batch whose plan would exceed the device's limits (a storage binding larger than
    /// [`Context::binding_limit`], a buffer, the workgroup counts) is split instead of refused,
    /// for every cell: into groups of whole sequences, and a unidirectional stack also into
    /// segments of consecutive steps, each run with its own plan (see ARCHITECTURE.md,
    /// "Splitting large problems"). Only a problem that does not fit even split to single
    /// sequences (single steps, unidirectional) is refused with [`Error::Limit`]. (A split run
    /// of a config with dropout or zoneout draws other masks than the unsplit run would: a
    /// mask's positions are a plan's packed rows.)
    pub fn forward(&self, input: &PackedSequence<f32>, states0: &[Option<&[f32]>], pass: Pass) -> Result<(ForwardOutput<f32>, Option<GpuTape>)> {
        self.forward_with(input, states0, pass, Draw::default())
    }

    /// [`GpuRnn::forward`] with the regularisers' masks from `draw`: the same masks as
    /// [`crate::cpu::forward_with`] (the counter goes to the device as an f32, exact below 2^24).
    pub fn forward_with(&self, input: &PackedSequence<f32>, states0: &[Option<&[f32]>], pass: Pass, draw: Draw) -> Result<(ForwardOutput<f32>, Option<GpuTape>)> {
        // Every wait inside blocks (Wait::Block): the future is ready at its first poll.
        pollster::block_on(self.forward_waiting(Wait::Block, input, states0, pass, draw))
    }

    /// [`GpuRnn::forward`] without blocking, the form a browser (`wasm32`) can run, where
    /// waiting on the device is refused: the same plans and submits as the blocking form, each
    /// read awaited (on native targets something must poll the device meanwhile). A problem
    /// beyond one binding is split as [`GpuRnn::forward`] splits it, its pieces run in turn.
    pub async fn forward_async(&self, input: &PackedSequence<f32>, states0: &[Option<&[f32]>], pass: Pass) -> Result<(ForwardOutput<f32>, Option<GpuTape>)> {
        self.forward_waiting(Wait::Await, input, states0, pass, Draw::default()).await
    }

    /// The forward of both forms, waiting as `wait` says: one plan, or, where it exceeds a
    /// limit, the split.
    async fn forward_waiting(&self, wait: Wait, input: &PackedSequence<f32>, states0: &[Option<&[f32]>], pass: Pass, draw: Draw) -> Result<(ForwardOutput<f32>, Option<GpuTape>)> {
        self.check_forward(input, states0, draw)?;
        let whole = match self.plan(&SeqLayout::of(input)?, pass, draw.seed) {
            Ok(plan) => self.forward_run(wait, plan, &input.data, states0, pass, draw).await,
            Err(e) => Err(e),
        };
        let (output, finals, kind) = match whole {
            Ok(f) => (f.output, f.finals, f.rec.map(TapeKind::Whole)),
            Err(Error::Limit(why)) => {
                let (split, (output, finals, recs)) = self.forward_split(wait, input, states0, pass, draw, why).await?;
                let kind = (pass == Pass::Training).then(|| TapeKind::Split { split, pieces: recs });
                (output, finals, kind)
            }
            Err(e) => return Err(e),
        };
        self.forward_result(input, output, finals, kind)
    }

    /// One plan's forward, waiting as `wait` says: blocking ([`GpuRnn::forward_on`]), or
    /// awaiting the read (the context's guard held up to the submit only; completing the read
    /// takes it itself, in PendingRead's poll).
    async fn forward_run(&self, wait: Wait, plan: Arc<Plan>, x: &[f32], states0: &[Option<&[f32]>], pass: Pass, draw: Draw) -> Result<Forwarded> {
        match wait {
            Wait::Block => self.forward_on(plan, x, states0, pass, draw),
            Wait::Await => {
                let (pending, parts) = {
                    let _serial = self.ctx.exclusive();
                    let (enc, rb, parts) = self.record_forward_on(plan, x, states0, draw)?;
                    (rb.submit(&self.ctx, enc)?, parts)
                };
                let got = pending.await?;
                self.finish_forward_on(parts, got, pass)
            }
        }
    }

    /// The checks of a forward before anything is uploaded.
    fn check_forward(&self, input: &PackedSequence<f32>, states0: &[Option<&[f32]>], draw: Draw) -> Result<()> {
        self.ctx.check_alive()?;
        check_run(&self.cfg, input, states0)?;
        if draw.counter > 1 << 24 {
            return Err(Error::InvalidConfig(format!("step counter {} is not exact in f32 (at most 2^24)", draw.counter)));
        }
        Ok(())
    }

    /// A forward's output and tape from what its plans read back.
    fn forward_result(&self, input: &PackedSequence<f32>, output: Vec<f32>, finals: Vec<Vec<f32>>, kind: Option<TapeKind>) -> Result<(ForwardOutput<f32>, Option<GpuTape>)> {
        let c = &self.cfg;
        let b = input.batch();
        let states = c.states().iter().zip(finals).map(|(st, data)| Tensor { shape: c.state_shape(st, b), data }).collect();
        let fwd = ForwardOutput { output: input.with_data(output, c.output_size())?, states };
        let tape = kind.map(|kind| GpuTape { ctx: self.ctx.clone(), weights: (*self.weights).clone(), unsorted_indices: input.unsorted_indices.clone(), kind });
        Ok((fwd, tape))
    }

    /// Elements of each state for a batch of `b`.
    fn state_elems(&self, b: usize) -> Vec<usize> {
        self.cfg.state_elems(b)
    }

    /// Runs one plan's forward over `x` (its packed rows) from `states0` (the plan layout's
    /// caller order): one submit, then the output and every final state read back, and in
    /// training what its backward binds again.
    fn forward_on(&self, plan: Arc<Plan>, x: &[f32], states0: &[Option<&[f32]>], pass: Pass, draw: Draw) -> Result<Forwarded> {
        let _serial = self.ctx.exclusive();
        let (enc, rb, parts) = self.record_forward_on(plan, x, states0, draw)?;
        let got = rb.submit_and_read(&self.ctx, enc)?;
        self.finish_forward_on(parts, got, pass)
    }

    /// A forward's uploads and recording (the caller holds the context's guard): the encoder,
    /// its readback (the output, then every final state) and the buffers it binds.
    fn record_forward_on(&self, plan: Arc<Plan>, x: &[f32], states0: &[Option<&[f32]>], draw: Draw) -> Result<(wgpu::CommandEncoder, Readback, ForwardParts)> {
        let c = &self.cfg;
        let ctx = &self.ctx;
        let (n, b) = (plan.rows(), plan.layout().batch());
        let sizes = self.state_elems(b);
        let prec = c.precision;
        let input = upload_stored(ctx, "input", x, prec)?;
        // Every state goes in (zeros where none was given): the backward binds them again.
        let given: Vec<TrackedBuffer> = sizes
            .iter()
            .enumerate()
            .map(|(i, &e)| match states0.get(i).copied().flatten() {
                Some(v) => upload_stored(ctx, "initial state", v, prec),
                None => storage_at(ctx, "initial state (zeros)", e, prec),
            })
            .collect::<Result<_>>()?;
        let finals: Vec<TrackedBuffer> = sizes.iter().map(|&e| storage_at(ctx, "final state", e, prec)).collect::<Result<_>>()?;
        let output = storage_at(ctx, "output", n * c.output_size(), prec)?;
        let counter = upload(ctx, "step counter", &[draw.counter as f32, 0.0, 0.0, 0.0])?;
        let given_refs: Vec<Option<wgpu::BufferSlice<'_>>> = given.iter().map(|g| Some(g.slice(..))).collect();
        let final_refs: Vec<wgpu::BufferSlice<'_>> = finals.iter().map(|f| f.slice(..)).collect();
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-rnn forward") });
        let bufs = ForwardBuffers { weights: self.weights.slice(..), input: input.slice(..), output: output.slice(..), states0: &given_refs, states_n: &final_refs, counter: Some(counter.slice(..)) };
        plan.record_forward(&mut enc, &bufs)?;
        let mut rb = Readback::new();
        rb.copy_stored(ctx, &mut enc, &output, n * c.output_size(), prec)?;
        for (f, &e) in finals.iter().zip(&sizes) {
            rb.copy_stored(ctx, &mut enc, f, e, prec)?;
        }
        Ok((enc, rb, ForwardParts { plan, input, output, given, finals, counter }))
    }

    /// A forward's results from what its readback read.
    fn finish_forward_on(&self, parts: ForwardParts, got: Vec<Vec<f32>>, pass: Pass) -> Result<Forwarded> {
        let c = &self.cfg;
        let ForwardParts { plan, input, output, given, finals, counter } = parts;
        drop(finals);
        let (n, b) = (plan.rows(), plan.layout().batch());
        let sizes = self.state_elems(b);
        let mut got = got.into_iter();
        let out = next_read(&mut got, "output")?;
        check_len("output read back", &[n, c.output_size()], out.len())?;
        let mut states_n = Vec::with_capacity(sizes.len());
        for &e in &sizes {
            let v = next_read(&mut got, "final state")?;
            check_len("final state read back", &[e], v.len())?;
            states_n.push(v);
        }
        let rec = (pass == Pass::Training).then_some(Recorded { plan, input, output, states0: given, counter });
        Ok(Forwarded { output: out, finals: states_n, rec })
    }

    /// The forward of a problem whose single plan exceeds a limit (`why`): the smallest piece
    /// is tried first (if it does not fit, no split will), then splits of about half, a
    /// quarter ... of the packed rows per piece until every piece fits.
    async fn forward_split(&self, wait: Wait, input: &PackedSequence<f32>, states0: &[Option<&[f32]>], pass: Pass, draw: Draw, why: String) -> Result<(Split, Merged)> {
        let c = &self.cfg;
        let limit = self.ctx.binding_limit();
        if self.weights.size() > limit {
            return Err(Error::Limit(format!(
                "the weights ({} bytes) exceed the storage binding limit of {limit} bytes (Context::binding_limit); \
                 splitting the batch or the sequences cannot help",
                self.weights.size()
            )));
        }
        let bt = Batch::of(input)?;
        let bidir = c.bidirectional;
        let smallest = if bidir { Piece { k0: 0, k1: 1, a: 0, b: bt.lens[0] } } else { Piece { k0: 0, k1: 1, a: 0, b: 1 } };
        match self.plan(&smallest.layout(&bt)?, pass, draw.seed) {
            Ok(_) => {}
            Err(Error::Limit(e)) if bidir => {
                return Err(Error::Limit(format!(
                    "a bidirectional stack is split by batch only (splitting it by time needs per-layer processing, \
                     not implemented), and one sequence of {} steps does not fit: {e} (whole batch: {why})",
                    bt.lens[0]
                )))
            }
            Err(Error::Limit(e)) => {
                return Err(Error::Limit(format!("even one step of one sequence does not fit: {e} (whole batch: {why})")))
            }
            Err(e) => return Err(e),
        }
        let mut rows = bt.rows();
        let mut last: Option<Split> = None;
        let mut err = why;
        while rows > 1 {
            rows = rows.div_ceil(2);
            let split = Split::new(&bt, bidir, rows);
            if split.pieces.len() <= 1 || last.as_ref() == Some(&split) {
                continue;
            }
            match self.forward_pieces(wait, &bt, &split, input, states0, pass, draw).await {
                Ok(merged) => return Ok((split, merged)),
                Err(Error::Limit(e)) => {
                    err = e;
                    last = Some(split);
                }
                Err(e) => return Err(e),
            }
        }
        let note = if bidir { " (a bidirectional stack is split by batch only)" } else { "" };
        Err(Error::Limit(format!("no split of the batch into pieces fits{note}: {err}")))
    }

    /// Runs the pieces of `split` in order, each segment starting from the states the previous
    /// segment of its group ended with; merges outputs into the packed layout and the final
    /// states into the caller's order.
    #[allow(clippy::too_many_arguments)]
    async fn forward_pieces(&self, wait: Wait, bt: &Batch, split: &Split, input: &PackedSequence<f32>, states0: &[Option<&[f32]>], pass: Pass, draw: Draw) -> Result<Merged> {
        let c = &self.cfg;
        let widths: Vec<usize> = c.states().iter().map(|s| s.width).collect();
        let (ld, big_b, ow) = (c.num_layers * c.directions(), bt.batch(), c.output_size());
        let mut out = vec![0f32; bt.rows() * ow];
        let mut finals: Vec<Vec<f32>> = widths.iter().map(|&w| vec![0f32; ld * big_b * w]).collect();
        let mut recs = Vec::with_capacity(split.pieces.len());
        // The states the previous segment of the current group ended with (its local order).
        let mut carry: Option<(usize, Vec<Vec<f32>>)> = None;
        for p in &split.pieces {
            let bp = p.batch(bt);
            // Each state of the piece's sequences: from the previous segment, or the caller's
            // (zeros where none was given).
            let s0p: Vec<Vec<f32>> = widths
                .iter()
                .enumerate()
                .map(|(i, &w)| {
                    let mut v = vec![0f32; ld * bp * w];
                    for l in 0..ld {
                        for j in 0..bp {
                            let src = match (&carry, p.a > 0) {
                                (Some((bprev, prev)), true) => &prev[i][(l * bprev + j) * w..][..w],
                                _ => match states0.get(i).copied().flatten() {
                                    Some(g) => &g[(l * big_b + bt.sorted[p.k0 + j]) * w..][..w],
                                    None => continue,
                                },
                            };
                            v[(l * bp + j) * w..][..w].copy_from_slice(src);
                        }
                    }
                    v
                })
                .collect();
            let rows = p.rows(bt);
            let x = gather_rows(&input.data, &rows, c.input_size);
            let plan = self.plan(&p.layout(bt)?, pass, draw.seed)?;
            let s0refs: Vec<Option<&[f32]>> = s0p.iter().map(|v| Some(&v[..])).collect();
            let f = self.forward_run(wait, plan, &x, &s0refs, pass, draw).await?;
            scatter_rows(&mut out, &rows, ow, &f.output);
            for j in (0..bp).filter(|&j| bt.lens[p.k0 + j] <= p.b) {
                let caller = bt.sorted[p.k0 + j];
                for (i, &w) in widths.iter().enumerate() {
                    for l in 0..ld {
                        finals[i][(l * big_b + caller) * w..][..w].copy_from_slice(&f.finals[i][(l * bp + j) * w..][..w]);
                    }
                }
            }
            carry = Some((bp, f.finals));
            recs.extend(f.rec);
        }
        Ok((out, finals, recs))
    }

    /// Backward through time from a training forward's tape, as [`crate::cpu::backward`]:
    /// `grad_states[i]` is the gradient of state i's final value (zeros when `None` or absent).
    ///
    /// A tape of a split forward runs each piece's backward (segments in reverse order, each
    /// handing its initial-state gradients to the previous segment) and sums the weight
    /// gradients in a fixed order, so results are reproducible bit for bit.
    pub fn backward(&self, tape: &GpuTape, grad_output: &[f32], grad_states: &[Option<&[f32]>]) -> Result<Gradients<f32>> {
        // Every wait inside blocks (Wait::Block): the future is ready at its first poll.
        pollster::block_on(self.backward_waiting(Wait::Block, tape, grad_output, grad_states))
    }

    /// [`GpuRnn::backward`] without blocking (see [`GpuRnn::forward_async`]), a split tape's
    /// pieces in turn as [`GpuRnn::backward`] runs them.
    pub async fn backward_async(&self, tape: &GpuTape, grad_output: &[f32], grad_states: &[Option<&[f32]>]) -> Result<Gradients<f32>> {
        self.backward_waiting(Wait::Await, tape, grad_output, grad_states).await
    }

    /// The backward of both forms, waiting as `wait` says.
    async fn backward_waiting(&self, wait: Wait, tape: &GpuTape, grad_output: &[f32], grad_states: &[Option<&[f32]>]) -> Result<Gradients<f32>> {
        let layout = self.check_backward(tape, grad_output, grad_states)?;
        let bw = match &tape.kind {
            TapeKind::Whole(rec) => self.backward_run(wait, rec, grad_output, grad_states).await?,
            TapeKind::Split { split, pieces } => self.backward_pieces(wait, split, pieces, grad_output, grad_states).await?,
        };
        self.gradients(tape, &layout, bw)
    }

    /// One plan's backward, waiting as `wait` says (see [`GpuRnn::forward_run`]).
    async fn backward_run(&self, wait: Wait, rec: &Recorded, grad_output: &[f32], grad_states: &[Option<&[f32]>]) -> Result<Backwarded> {
        match wait {
            Wait::Block => self.backward_on(rec, grad_output, grad_states),
            Wait::Await => {
                let (pending, parts) = {
                    let _serial = self.ctx.exclusive();
                    let (enc, rb, parts) = self.record_backward_on(rec, grad_output, grad_states)?;
                    (rb.submit(&self.ctx, enc)?, parts)
                };
                let got = pending.await?;
                self.finish_backward_on(rec, parts, got)
            }
        }
    }

    /// The checks of a backward before anything is uploaded; the tape's batch structure.
    fn check_backward(&self, tape: &GpuTape, grad_output: &[f32], grad_states: &[Option<&[f32]>]) -> Result<SeqLayout> {
        let c = &self.cfg;
        // A tape's buffers and plan belong to its context's device: binding them on another
        // device trips wgpu-core assertions, so compare before recording anything.
        if !Arc::ptr_eq(&tape.ctx, &self.ctx) {
            return Err(Error::TapeMismatch(format!(
                "tape was recorded on another context ({}), this model is on {}",
                tape.ctx.describe(),
                self.ctx.describe()
            )));
        }
        if tape.weights != *self.weights {
            return Err(Error::TapeMismatch("tape was recorded by another model (other weights)".into()));
        }
        self.ctx.check_alive()?;
        let (plan_cfg, layout) = match &tape.kind {
            TapeKind::Whole(rec) => (rec.plan.config(), rec.plan.layout().clone()),
            TapeKind::Split { split, pieces } => {
                let first = pieces.first().ok_or_else(|| Error::TapeMismatch("split tape without pieces".into()))?;
                (first.plan.config(), SeqLayout::new(split.batch.bs.clone(), split.batch.sorted.clone())?)
            }
        };
        if plan_cfg != c {
            return Err(Error::TapeMismatch("tape was recorded by a model of another configuration".into()));
        }
        let (n, b) = (layout.rows(), layout.batch());
        check_len("grad_output", &[n, c.output_size()], grad_output.len())?;
        check_finite("grad_output", grad_output)?;
        check_states(c, &c.states(), grad_states, b, "_n")?;
        Ok(layout)
    }

    /// The gradients from what a backward read back.
    fn gradients(&self, tape: &GpuTape, layout: &SeqLayout, bw: Backwarded) -> Result<Gradients<f32>> {
        let c = &self.cfg;
        let (states, b) = (c.states(), layout.batch());
        let params = generic::weights_from_flat(c, &bw.weights).map_err(|e| match e {
            Error::LengthMismatch { shape, expected, got, .. } => Error::LengthMismatch { what: "grad_weights read back".into(), shape, expected, got },
            e => e,
        })?;
        let input = PackedSequence {
            data: bw.input,
            features: c.input_size,
            batch_sizes: layout.batch_sizes().to_vec(),
            sorted_indices: layout.sorted_indices().to_vec(),
            unsorted_indices: tape.unsorted_indices.clone(),
        };
        let states = states.iter().zip(bw.states0).map(|(st, data)| Tensor { shape: c.state_shape(st, b), data }).collect();
        Ok(Gradients { input, states, params })
    }

    /// Runs one plan's backward (one submit): the input's, every initial state's and the flat
    /// weights' gradients read back. `grad_states` are the final-state gradients in the plan's
    /// order.
    fn backward_on(&self, rec: &Recorded, grad_output: &[f32], grad_states: &[Option<&[f32]>]) -> Result<Backwarded> {
        let _serial = self.ctx.exclusive();
        let (enc, rb, parts) = self.record_backward_on(rec, grad_output, grad_states)?;
        let got = rb.submit_and_read(&self.ctx, enc)?;
        self.finish_backward_on(rec, parts, got)
    }

    /// A backward's uploads and recording (the caller holds the context's guard): the
    /// encoder, its readback (the input's gradient, the weights', every initial state's) and
    /// the buffers it binds.
    fn record_backward_on(&self, rec: &Recorded, grad_output: &[f32], grad_states: &[Option<&[f32]>]) -> Result<(wgpu::CommandEncoder, Readback, Vec<TrackedBuffer>)> {
        let ctx = &self.ctx;
        let c = &self.cfg;
        let plan = &rec.plan;
        let (n, b) = (plan.rows(), plan.layout().batch());
        let sizes = self.state_elems(b);
        let prec = c.precision;
        let go = upload_stored(ctx, "grad_output", grad_output, prec)?;
        let given: Vec<Option<TrackedBuffer>> = grad_states.iter().map(|g| g.map(|v| upload_stored(ctx, "final state gradient", v, prec)).transpose()).collect::<Result<_>>()?;
        let g0: Vec<TrackedBuffer> = sizes.iter().map(|&e| storage_at(ctx, "initial state gradient", e, prec)).collect::<Result<_>>()?;
        let gi = storage_at(ctx, "grad_input", n * c.input_size, prec)?;
        let gw = storage_at(ctx, "grad_weights", plan.weight_elems(), prec)?;
        let s0: Vec<Option<wgpu::BufferSlice<'_>>> = rec.states0.iter().map(|s| Some(s.slice(..))).collect();
        let gn: Vec<Option<wgpu::BufferSlice<'_>>> = given.iter().map(|g| g.as_ref().map(|g| g.slice(..))).collect();
        let g0r: Vec<wgpu::BufferSlice<'_>> = g0.iter().map(|g| g.slice(..)).collect();
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-rnn backward") });
        let bufs = BackwardBuffers {
            weights: self.weights.slice(..),
            input: rec.input.slice(..),
            output: rec.output.slice(..),
            states0: &s0,
            grad_output: go.slice(..),
            grad_states_n: &gn,
            grad_input: Some(gi.slice(..)),
            grad_states0: &g0r,
            grad_weights: gw.slice(..),
            counter: Some(rec.counter.slice(..)),
        };
        plan.record_backward(&mut enc, &bufs)?;
        let mut rb = Readback::new();
        rb.copy_stored(ctx, &mut enc, &gi, n * c.input_size, prec)?;
        rb.copy_stored(ctx, &mut enc, &gw, plan.weight_elems(), prec)?;
        for (g, &e) in g0.iter().zip(&sizes) {
            rb.copy_stored(ctx, &mut enc, g, e, prec)?;
        }
        let mut keep = vec![go, gi, gw];
        keep.extend(given.into_iter().flatten());
        keep.extend(g0);
        Ok((enc, rb, keep))
    }

    /// A backward's results from what its readback read (`parts`: its buffers, kept until
    /// the read completed).
    fn finish_backward_on(&self, rec: &Recorded, parts: Vec<TrackedBuffer>, got: Vec<Vec<f32>>) -> Result<Backwarded> {
        drop(parts);
        let c = &self.cfg;
        let (n, b) = (rec.plan.rows(), rec.plan.layout().batch());
        let sizes = self.state_elems(b);
        let mut got = got.into_iter();
        let input = next_read(&mut got, "grad_input")?;
        check_len("input gradients read back", &[n, c.input_size], input.len())?;
        let weights = next_read(&mut got, "grad_weights")?;
        let mut states0 = Vec::with_capacity(sizes.len());
        for &e in &sizes {
            let v = next_read(&mut got, "initial state gradient")?;
            check_len("initial state gradient read back", &[e], v.len())?;
            states0.push(v);
        }
        Ok(Backwarded { input, states0, weights })
    }

    /// The backward of a split forward: pieces in reverse order (so each segment gets the
    /// initial-state gradients of the segment after it), inputs' and initial states'
    /// gradients scattered back, weight gradients summed in that fixed order.
    async fn backward_pieces(&self, wait: Wait, split: &Split, recs: &[Recorded], grad_output: &[f32], grad_states: &[Option<&[f32]>]) -> Result<Backwarded> {
        let c = &self.cfg;
        let bt = &split.batch;
        if recs.len() != split.pieces.len() {
            return Err(Error::TapeMismatch(format!("split tape holds {} of {} pieces", recs.len(), split.pieces.len())));
        }
        let widths: Vec<usize> = c.states().iter().map(|s| s.width).collect();
        let (ld, big_b, ow) = (c.num_layers * c.directions(), bt.batch(), c.output_size());
        let mut gi = vec![0f32; bt.rows() * c.input_size];
        let mut gs0: Vec<Vec<f32>> = widths.iter().map(|&w| vec![0f32; ld * big_b * w]).collect();
        let mut gw: Option<Vec<f32>> = None;
        // The initial-state gradients of the segment after the current one (its local order).
        let mut carry: Option<(usize, Vec<Vec<f32>>)> = None;
        for (p, rec) in split.pieces.iter().zip(recs).rev() {
            let bp = p.batch(bt);
            // A sequence that ends in this piece takes the caller's final-state gradient (zero
            // where none was given); one that goes on takes what the next segment's backward
            // left for its initial state.
            let mut finals: Vec<Vec<f32>> = Vec::with_capacity(widths.len());
            for (i, &w) in widths.iter().enumerate() {
                let mut v = vec![0f32; ld * bp * w];
                for l in 0..ld {
                    for j in 0..bp {
                        let src = if bt.lens[p.k0 + j] <= p.b {
                            match grad_states.get(i).copied().flatten() {
                                Some(g) => &g[(l * big_b + bt.sorted[p.k0 + j]) * w..][..w],
                                None => continue,
                            }
                        } else {
                            let (bnext, next) = carry.as_ref().ok_or_else(|| Error::TapeMismatch("split tape: a segment without its successor".into()))?;
                            &next[i][(l * bnext + j) * w..][..w]
                        };
                        v[(l * bp + j) * w..][..w].copy_from_slice(src);
                    }
                }
                finals.push(v);
            }
            let rows = p.rows(bt);
            let go = gather_rows(grad_output, &rows, ow);
            let frefs: Vec<Option<&[f32]>> = finals.iter().map(|v| Some(&v[..])).collect();
            let bw = self.backward_run(wait, rec, &go, &frefs).await?;
            scatter_rows(&mut gi, &rows, c.input_size, &bw.input);
            if p.a == 0 {
                for j in 0..bp {
                    let caller = bt.sorted[p.k0 + j];
                    for (i, &w) in widths.iter().enumerate() {
                        for l in 0..ld {
                            gs0[i][(l * big_b + caller) * w..][..w].copy_from_slice(&bw.states0[i][(l * bp + j) * w..][..w]);
                        }
                    }
                }
            }
            match gw.as_mut() {
                None => gw = Some(bw.weights),
                Some(acc) => acc.iter_mut().zip(&bw.weights).for_each(|(a, f)| *a += f),
            }
            carry = Some((bp, bw.states0));
        }
        let weights = gw.ok_or_else(|| Error::TapeMismatch("split tape without pieces".into()))?;
        Ok(Backwarded { input: gi, states0: gs0, weights })
    }
}

/// A split forward merged: output, every final state (whole batch, caller's order), each
/// piece's record.
type Merged = (Vec<f32>, Vec<Vec<f32>>, Vec<Recorded>);

/// The structure of the whole batch, in sorted order, as the splitting sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Batch {
    /// `[T]` rows per step.
    bs: Vec<usize>,
    /// `[B]` sorted position -> caller index.
    sorted: Vec<usize>,
    /// `[B]` length of the sequence at each sorted position (non-increasing).
    lens: Vec<usize>,
    /// `[T + 1]` first packed row of each step.
    off: Vec<usize>,
}

impl Batch {
    fn of(input: &PackedSequence<f32>) -> Result<Self> {
        let layout = SeqLayout::of(input)?;
        let bs = layout.batch_sizes().to_vec();
        let mut lens = vec![0usize; layout.batch()];
        for &x in &bs {
            lens[..x].iter_mut().for_each(|l| *l += 1);
        }
        Ok(Batch { off: step_offsets(&bs), sorted: layout.sorted_indices().to_vec(), bs, lens })
    }
    fn batch(&self) -> usize {
        self.bs[0]
    }
    fn rows(&self) -> usize {
        self.off[self.bs.len()]
    }
}

/// One plan's share of a split problem: the sequences at sorted positions `k0..k1`, steps
/// `a..b` (every sequence of the piece is longer than `a`: `a < lens[k0]`, `b <= lens[k0]`).
/// Its own batch has the sorted order as caller order (sequence `j` is sorted position `k0 + j`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    k0: usize,
    k1: usize,
    a: usize,
    b: usize,
}

impl Piece {
    /// Rows of step `t` (of the whole batch) in this piece.
    fn step_rows(&self, bt: &Batch, t: usize) -> usize {
        bt.bs[t].min(self.k1).saturating_sub(self.k0)
    }
    /// Sequences in the piece (those longer than `a`).
    fn batch(&self, bt: &Batch) -> usize {
        self.step_rows(bt, self.a)
    }
    /// The piece as a packed batch of its own.
    fn layout(&self, bt: &Batch) -> Result<SeqLayout> {
        let bs: Vec<usize> = (self.a..self.b).map(|t| self.step_rows(bt, t)).take_while(|&r| r > 0).collect();
        let b = bs.first().copied().unwrap_or(0);
        SeqLayout::new(bs, (0..b).collect())
    }
    /// The whole batch's packed row of each of the piece's packed rows.
    fn rows(&self, bt: &Batch) -> Vec<usize> {
        (self.a..self.b).flat_map(|t| (0..self.step_rows(bt, t)).map(move |r| bt.off[t] + self.k0 + r)).collect()
    }
}

/// How a problem is split: pieces group by group (contiguous ranges of sorted positions, in
/// order), each group's time segments in order.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Split {
    batch: Batch,
    pieces: Vec<Piece>,
}

impl Split {
    /// Pieces of at most `max_rows` packed rows where the stack allows it. A unidirectional
    /// stack keeps the whole batch together and cuts time into segments when a step's rows
    /// fit (segments add no dispatches, batch groups repeat every step), else groups of
    /// `max_rows` sequences each cut into segments. A bidirectional stack is split by batch only
    /// (its reverse direction starts at each sequence's end), so one sequence may exceed
    /// `max_rows`.
    fn new(bt: &Batch, bidirectional: bool, max_rows: usize) -> Self {
        let big_b = bt.batch();
        let max_rows = max_rows.max(1);
        let mut pieces = Vec::new();
        let mut k0 = 0;
        while k0 < big_b {
            if bidirectional {
                let (mut k1, mut rows) = (k0 + 1, bt.lens[k0]);
                while k1 < big_b && rows + bt.lens[k1] <= max_rows {
                    rows += bt.lens[k1];
                    k1 += 1;
                }
                pieces.push(Piece { k0, k1, a: 0, b: bt.lens[k0] });
                k0 = k1;
                continue;
            }
            let k1 = (k0 + max_rows.min(big_b)).min(big_b);
            let end = bt.lens[k0];
            let mut a = 0;
            while a < end {
                let (mut b, mut rows) = (a, 0);
                while b < end {
                    let r = bt.bs[b].min(k1) - k0;
                    if b > a && rows + r > max_rows {
                        break;
                    }
                    rows += r;
                    b += 1;
                }
                pieces.push(Piece { k0, k1, a, b });
                a = b;
            }
            k0 = k1;
        }
        Split { batch: bt.clone(), pieces }
    }
}

/// The rows `rows` of a `[*, w]` matrix, in that order.
fn gather_rows(src: &[f32], rows: &[usize], w: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(rows.len() * w);
    for &r in rows {
        v.extend_from_slice(&src[r * w..][..w]);
    }
    v
}

/// Writes row `i` of `src` to row `rows[i]` of `dst` (`[*, w]`).
fn scatter_rows(dst: &mut [f32], rows: &[usize], w: usize, src: &[f32]) {
    for (i, &r) in rows.iter().enumerate() {
        dst[r * w..][..w].copy_from_slice(&src[i * w..][..w]);
    }
}

/// The next buffer a [`Readback`] returned (one per copy recorded, so always present).
fn next_read(got: &mut impl Iterator<Item = Vec<f32>>, what: &str) -> Result<Vec<f32>> {
    got.next().ok_or_else(|| Error::Gpu(format!("readback returned no {what}")))
}
