//! The convenience API: upload, run (one submit for a whole forward or backward), read back.
//! Mirrors [`crate::cpu::forward`] / [`crate::cpu::backward`] and returns the same types, for
//! every registered cell.
//!
//! Behind it, for now, two drivers (issue 25 merges them): PyTorch's four cells without
//! regularisers run the fused kernels ([`FusedPlan`]: single dispatch, splitting past one binding);
//! every other configuration runs the cell driver (`generic.rs`, [`super::CellPlan`]). Which
//! one is decided once, in [`runs_fused`]; callers never see it.

use super::context::{Context, TrackedBuffer};
use super::plan::{weight_layout, FusedBackwardBuffers, FusedForwardBuffers, FusedPlan, SeqLayout, StateInputs};
use super::readback::{storage_at, upload_stored, Readback};
use super::engine::runs_fused;
use super::generic::{self, CellTape};
use crate::config::{Mode, RnnConfig};
use crate::cpu::{check_run, check_states, ForwardOutput, Gradients, Pass};
use crate::masks::Draw;
use crate::error::{check_len, Error, Result};
use crate::packing::{step_offsets, PackedSequence};
use crate::tensor::Tensor;
use crate::weights::Weights;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// How many plans (distinct batch structures) a model keeps prepared.
const PLAN_CACHE: usize = 8;

/// A recurrent stack of any registered cell resident on the GPU: [`GpuRnn::forward`] and
/// [`GpuRnn::backward`] as the CPU engine's, with its types and its state convention.
pub struct GpuRnn {
    ctx: Arc<Context>,
    cfg: RnnConfig,
    weights: TrackedBuffer,
    /// [`runs_fused`]: the fused kernels ([`FusedPlan`]), else the cell driver.
    fused: bool,
    plans: Mutex<Vec<(PlanKey, Arc<FusedPlan>)>>,
}


#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct PlanKey {
    layout: SeqLayout,
    pass: Pass,
    inputs: StateInputs,
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
            TapeKind::Cell(t) => vec![(0..t.layout().batch(), 0..t.layout().steps())],
            TapeKind::Whole(rec) => vec![(0..rec.plan.layout().batch(), 0..rec.plan.layout().steps())],
            TapeKind::Split { split, .. } => split.pieces.iter().map(|p| (p.k0..p.k1.min(p.k0 + p.batch(&split.batch)), p.a..p.b)).collect(),
        }
    }
}

/// One plan's run: what its backward binds again.
struct Recorded {
    plan: Arc<FusedPlan>,
    input: TrackedBuffer,
    output: TrackedBuffer,
    h0: Option<TrackedBuffer>,
    c0: Option<TrackedBuffer>,
}

enum TapeKind {
    /// The cell driver's forward.
    Cell(CellTape),
    /// The whole batch in one plan.
    Whole(Recorded),
    /// A problem split into pieces (see [`Split`]), each recorded with its own plan.
    Split { split: Split, pieces: Vec<Recorded> },
}

use crate::float::check_finite;

impl GpuRnn {
    /// Uploads the weights, stored in the config's [`crate::Precision`] (f16: rounded on the
    /// host; needs the device's `SHADER_F16`, else [`Error::MissingFeature`]), flat in
    /// [`generic::flat_weights`]'s layout (per layer-direction, the slots in order: for
    /// PyTorch's four cells `state_dict` order).
    pub fn new(ctx: &Arc<Context>, w: &Weights<f32>) -> Result<Self> {
        Self::with_driver(ctx, w, runs_fused(&w.config))
    }

    /// [`GpuRnn::new`] on the cell driver whatever the configuration: for tests that compare
    /// the two drivers, or the cell driver with `CellPlan`/`StepPlan` bit for bit, while both
    /// drivers exist (issue 25 merges them).
    #[doc(hidden)]
    pub fn on_cell_driver(ctx: &Arc<Context>, w: &Weights<f32>) -> Result<Self> {
        Self::with_driver(ctx, w, false)
    }

    fn with_driver(ctx: &Arc<Context>, w: &Weights<f32>, fused: bool) -> Result<Self> {
        w.validate()?; // config, and every tensor against it (Weights fields are public)
        w.check_finite()?;
        let flat = generic::flat_weights(w);
        let _serial = ctx.exclusive();
        ctx.check_precision(w.config.precision)?;
        let want = if fused { weight_layout(&w.config).1 } else { generic::weight_elems(&w.config) };
        if flat.len() != want {
            return Err(Error::LengthMismatch { what: "flat weights".into(), shape: vec![want], expected: want, got: flat.len() });
        }
        let weights = upload_stored(ctx, "weights", &flat, w.config.precision)?;
        Ok(GpuRnn { ctx: ctx.clone(), cfg: w.config.clone(), weights, fused, plans: Mutex::new(Vec::new()) })
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

    /// A prepared fused plan for this structure: cached, and never one a live tape still uses.
    fn plan(&self, layout: &SeqLayout, pass: Pass, inputs: StateInputs) -> Result<Arc<FusedPlan>> {
        if !self.fused {
            return Err(Error::Unsupported(format!("{} (with these regularisers) in the fused plan", self.cfg.mode)));
        }
        let key = PlanKey { layout: layout.clone(), pass, inputs };
        // GL: the guard before the cache's lock, always (FusedPlan::new and dropping an evicted
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
        let plan = Arc::new(FusedPlan::new(&self.ctx, &self.cfg, layout, pass, inputs)?);
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
    /// [`Context::binding_limit`], a buffer, the workgroup counts) is split instead of refused:
    /// into groups of whole sequences, and a unidirectional stack also into segments of
    /// consecutive steps, each run with its own plan (see ARCHITECTURE.md, "Splitting large
    /// problems"). Only a problem that does not fit even split to single sequences (single
    /// steps, unidirectional) is refused with [`Error::Limit`].
    pub fn forward(&self, input: &PackedSequence<f32>, states0: &[Option<&[f32]>], pass: Pass) -> Result<(ForwardOutput<f32>, Option<GpuTape>)> {
        self.forward_with(input, states0, pass, Draw::default())
    }

    /// [`GpuRnn::forward`] with the regularisers' masks from `draw`: the same masks as
    /// [`crate::cpu::forward_with`] (the counter goes to the device as an f32, exact below 2^24).
    pub fn forward_with(&self, input: &PackedSequence<f32>, states0: &[Option<&[f32]>], pass: Pass, draw: Draw) -> Result<(ForwardOutput<f32>, Option<GpuTape>)> {
        let c = &self.cfg;
        self.ctx.check_alive()?;
        check_run(c, input, states0)?;
        let tape_of = |kind| GpuTape { ctx: self.ctx.clone(), weights: (*self.weights).clone(), unsorted_indices: input.unsorted_indices.clone(), kind };
        if !self.fused {
            let (fwd, tape) = generic::forward_on(&self.ctx, c, &self.weights, input, states0, pass, draw)?;
            return Ok((fwd, tape.map(|t| tape_of(TapeKind::Cell(t)))));
        }
        let (h0, c0) = (states0.first().copied().flatten(), states0.get(1).copied().flatten());
        let b = input.batch();
        let lstm = c.mode == Mode::Lstm;
        let inputs = StateInputs { h0: h0.is_some(), c0: c0.is_some(), grad_h_n: pass == Pass::Training, grad_c_n: pass == Pass::Training && lstm };
        let whole = self.plan(&SeqLayout::of(input)?, pass, inputs).and_then(|plan| self.forward_on(plan, &input.data, h0, c0, pass));
        let (out_data, hn_data, cn_data, kind) = match whole {
            Ok((out, hn, cn, rec)) => (out, hn, cn, rec.map(TapeKind::Whole)),
            Err(Error::Limit(why)) => {
                let (split, (out, hn, cn, recs)) = self.forward_split(input, h0, c0, pass, why)?;
                let kind = (pass == Pass::Training).then(|| TapeKind::Split { split, pieces: recs });
                (out, hn, cn, kind)
            }
            Err(e) => return Err(e),
        };
        let mut states = vec![Tensor { shape: c.h_shape(b), data: hn_data }];
        states.extend(cn_data.map(|data| Tensor { shape: c.c_shape(b), data }));
        let fwd = ForwardOutput { output: input.with_data(out_data, c.output_size())?, states };
        Ok((fwd, kind.map(tape_of)))
    }

    /// Runs one plan's forward over `x` (its packed rows): one submit, then the output, h_n
    /// and c_n read back (in the plan layout's caller order), and in training mode what its
    /// backward binds again.
    fn forward_on(&self, plan: Arc<FusedPlan>, x: &[f32], h0: Option<&[f32]>, c0: Option<&[f32]>, pass: Pass) -> Result<Forwarded> {
        let c = &self.cfg;
        let ctx = &self.ctx;
        let _serial = ctx.exclusive();
        let (n, b) = (plan.rows(), plan.layout().batch());
        let lstm = c.mode == Mode::Lstm;
        let hn_elems = c.h_shape(b).iter().product();
        let cn_elems = c.c_shape(b).iter().product();
        let prec = c.precision;
        let x = upload_stored(ctx, "input", x, prec)?;
        let h0b = h0.map(|h| upload_stored(ctx, "h0", h, prec)).transpose()?;
        let c0b = c0.map(|v| upload_stored(ctx, "c0", v, prec)).transpose()?;
        let out = storage_at(ctx, "output", n * c.output_size(), prec)?;
        let hn = storage_at(ctx, "h_n", hn_elems, prec)?;
        let cn = if lstm { Some(storage_at(ctx, "c_n", cn_elems, prec)?) } else { None };
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-rnn forward") });
        plan.record_forward(
            &mut enc,
            &FusedForwardBuffers {
                weights: &self.weights,
                input: &x,
                output: &out,
                h0: h0b.as_deref(),
                c0: c0b.as_deref(),
                h_n: &hn,
                c_n: cn.as_deref(),
            },
        )?;
        let mut rb = Readback::new();
        rb.copy_stored(ctx, &mut enc, &out, n * c.output_size(), prec)?;
        rb.copy_stored(ctx, &mut enc, &hn, hn_elems, prec)?;
        if let Some(cn) = &cn {
            rb.copy_stored(ctx, &mut enc, cn, cn_elems, prec)?;
        }
        let mut got = rb.submit_and_read(ctx, enc)?.into_iter();
        let out_data = next_read(&mut got, "output")?;
        let hn_data = next_read(&mut got, "h_n")?;
        let cn_data = got.next();
        let rec = (pass == Pass::Training).then_some(Recorded { plan, input: x, output: out, h0: h0b, c0: c0b });
        Ok((out_data, hn_data, cn_data, rec))
    }

    /// The forward of a problem whose single plan exceeds a limit (`why`): the smallest piece
    /// is tried first (if it does not fit, no split will), then splits of about half, a
    /// quarter ... of the packed rows per piece until every piece fits.
    fn forward_split(
        &self,
        input: &PackedSequence<f32>,
        h0: Option<&[f32]>,
        c0: Option<&[f32]>,
        pass: Pass,
        why: String,
    ) -> Result<(Split, Merged)> {
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
        match self.plan(&smallest.layout(&bt)?, pass, self.split_inputs(pass)) {
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
            match self.forward_pieces(&bt, &split, input, h0, c0, pass) {
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

    /// What the plans of split pieces are prepared for: every piece takes initial states (the
    /// caller's, zeros, or the previous segment's) and, in training, the final-state gradients.
    fn split_inputs(&self, pass: Pass) -> StateInputs {
        let lstm = self.cfg.mode == Mode::Lstm;
        let training = pass == Pass::Training;
        StateInputs { h0: true, c0: lstm, grad_h_n: training, grad_c_n: training && lstm }
    }

    /// Runs the pieces of `split` in order, each segment starting from the states the previous
    /// segment of its group ended with; merges outputs into the packed layout and h_n / c_n
    /// into the caller's order.
    fn forward_pieces(
        &self,
        bt: &Batch,
        split: &Split,
        input: &PackedSequence<f32>,
        h0: Option<&[f32]>,
        c0: Option<&[f32]>,
        pass: Pass,
    ) -> Result<Merged> {
        let c = &self.cfg;
        let lstm = c.mode == Mode::Lstm;
        let (ld, big_b, ho, hs, ow) = (c.num_layers * c.directions(), bt.batch(), c.out_size(), c.hidden_size, c.output_size());
        let mut out = vec![0f32; bt.rows() * ow];
        let mut hn = vec![0f32; ld * big_b * ho];
        let mut cn = lstm.then(|| vec![0f32; ld * big_b * hs]);
        let mut recs = Vec::with_capacity(split.pieces.len());
        // The states the previous segment of the current group ended with (its local order).
        let mut carry: Option<(usize, Vec<f32>, Option<Vec<f32>>)> = None;
        for p in &split.pieces {
            let bp = p.batch(bt);
            let states = |global: Option<&[f32]>, local: Option<(usize, &[f32])>, w: usize| -> Vec<f32> {
                let mut v = vec![0f32; ld * bp * w];
                for l in 0..ld {
                    for j in 0..bp {
                        let src = match (local, global) {
                            (Some((bprev, s)), _) => &s[(l * bprev + j) * w..][..w],
                            (None, Some(g)) => &g[(l * big_b + bt.sorted[p.k0 + j]) * w..][..w],
                            (None, None) => continue,
                        };
                        v[(l * bp + j) * w..][..w].copy_from_slice(src);
                    }
                }
                v
            };
            let (h0p, c0p) = match (&carry, p.a) {
                (Some((bprev, h, cc)), a) if a > 0 => (states(None, Some((*bprev, h)), ho), cc.as_ref().map(|cc| states(None, Some((*bprev, cc)), hs))),
                _ => (states(h0, None, ho), lstm.then(|| states(c0, None, hs))),
            };
            let rows = p.rows(bt);
            let x = gather_rows(&input.data, &rows, c.input_size);
            let plan = self.plan(&p.layout(bt)?, pass, self.split_inputs(pass))?;
            let (o, hnp, cnp, rec) = self.forward_on(plan, &x, Some(&h0p), c0p.as_deref(), pass)?;
            scatter_rows(&mut out, &rows, ow, &o);
            for j in (0..bp).filter(|&j| bt.lens[p.k0 + j] <= p.b) {
                let caller = bt.sorted[p.k0 + j];
                for l in 0..ld {
                    hn[(l * big_b + caller) * ho..][..ho].copy_from_slice(&hnp[(l * bp + j) * ho..][..ho]);
                    if let (Some(cn), Some(cnp)) = (cn.as_mut(), cnp.as_ref()) {
                        cn[(l * big_b + caller) * hs..][..hs].copy_from_slice(&cnp[(l * bp + j) * hs..][..hs]);
                    }
                }
            }
            carry = Some((bp, hnp, cnp));
            recs.extend(rec);
        }
        Ok((out, hn, cn, recs))
    }

    /// Backward through time from a training forward's tape, as [`crate::cpu::backward`]:
    /// `grad_states[i]` is the gradient of state i's final value (zeros when `None` or absent).
    ///
    /// A tape of a split forward runs each piece's backward (segments in reverse order, each
    /// handing its initial-state gradients to the previous segment) and sums the weight
    /// gradients in a fixed order, so results are reproducible bit for bit.
    pub fn backward(&self, tape: &GpuTape, grad_output: &[f32], grad_states: &[Option<&[f32]>]) -> Result<Gradients<f32>> {
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
            TapeKind::Cell(t) => return generic::backward_on(c, &self.weights, t, grad_output, grad_states, &tape.unsorted_indices),
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
        let lstm = c.mode == Mode::Lstm;
        check_len("grad_output", &[n, c.output_size()], grad_output.len())?;
        check_finite("grad_output", grad_output)?;
        check_states(c, &c.states(), grad_states, b, "_n")?;
        let (grad_h_n, grad_c_n) = (grad_states.first().copied().flatten(), grad_states.get(1).copied().flatten());
        let hn_elems: usize = c.h_shape(b).iter().product();
        let cn_elems: usize = c.c_shape(b).iter().product();
        let zeros_h;
        let gh = match grad_h_n {
            Some(g) => g,
            None => {
                zeros_h = vec![0.0; hn_elems];
                &zeros_h
            }
        };
        let zeros_c;
        let gc = match grad_c_n {
            Some(g) => g,
            None => {
                zeros_c = vec![0.0; cn_elems];
                &zeros_c
            }
        };
        let (gi_data, gh0_data, flat, gc0_data) = match &tape.kind {
            TapeKind::Whole(rec) => self.backward_on(rec, grad_output, gh, lstm.then_some(gc))?,
            TapeKind::Split { split, pieces } => self.backward_pieces(split, pieces, grad_output, gh, lstm.then_some(gc))?,
            TapeKind::Cell(_) => unreachable!("returned above"),
        };
        let params = Weights::<f32>::from_flat(c, &flat).map_err(|e| match e {
            Error::LengthMismatch { shape, expected, got, .. } => Error::LengthMismatch { what: "grad_weights read back".into(), shape, expected, got },
            e => e,
        })?;
        let input = PackedSequence {
            data: gi_data,
            features: c.input_size,
            batch_sizes: layout.batch_sizes().to_vec(),
            sorted_indices: layout.sorted_indices().to_vec(),
            unsorted_indices: tape.unsorted_indices.clone(),
        };
        let mut states = vec![Tensor { shape: c.h_shape(b), data: gh0_data }];
        states.extend(gc0_data.map(|data| Tensor { shape: c.c_shape(b), data }));
        Ok(Gradients { input, states, params })
    }

    /// Runs one plan's backward (one submit): grad_input, grad_h0, the flat weight gradients
    /// and grad_c0 read back. `gh` / `gc` are the final-state gradients in the plan's order.
    fn backward_on(&self, rec: &Recorded, grad_output: &[f32], gh: &[f32], gc: Option<&[f32]>) -> Result<Backwarded> {
        let ctx = &self.ctx;
        let plan = &rec.plan;
        let _serial = ctx.exclusive();
        let prec = self.cfg.precision;
        let go = upload_stored(ctx, "grad_output", grad_output, prec)?;
        let ghb = upload_stored(ctx, "grad_h_n", gh, prec)?;
        let gcb = gc.map(|gc| upload_stored(ctx, "grad_c_n", gc, prec)).transpose()?;
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-rnn backward") });
        let mut rb = Readback::new();
        let read = BackwardRead {
            weights: &self.weights,
            input: &rec.input,
            output: &rec.output,
            h0: rec.h0.as_deref(),
            c0: rec.c0.as_deref(),
            grad_output: &go,
            grad_h_n: Some(&ghb),
            grad_c_n: gcb.as_deref(),
        };
        read.record(ctx, plan, &mut enc, &mut rb)?;
        let mut got = rb.submit_and_read(ctx, enc)?.into_iter();
        let gi_data = next_read(&mut got, "grad_input")?;
        let gh0_data = next_read(&mut got, "grad_h0")?;
        let flat = next_read(&mut got, "grad_weights")?;
        Ok((gi_data, gh0_data, flat, got.next()))
    }

    /// The backward of a split forward: pieces in reverse order (so each segment gets the
    /// initial-state gradients of the segment after it), inputs' and initial states'
    /// gradients scattered back, weight gradients summed in that fixed order.
    fn backward_pieces(&self, split: &Split, recs: &[Recorded], grad_output: &[f32], gh: &[f32], gc: Option<&[f32]>) -> Result<Backwarded> {
        let c = &self.cfg;
        let bt = &split.batch;
        if recs.len() != split.pieces.len() {
            return Err(Error::TapeMismatch(format!("split tape holds {} of {} pieces", recs.len(), split.pieces.len())));
        }
        let (ld, big_b, ho, hs, ow) = (c.num_layers * c.directions(), bt.batch(), c.out_size(), c.hidden_size, c.output_size());
        let mut gi = vec![0f32; bt.rows() * c.input_size];
        let mut gh0 = vec![0f32; ld * big_b * ho];
        let mut gc0 = gc.map(|_| vec![0f32; ld * big_b * hs]);
        let mut gw: Option<Vec<f32>> = None;
        // The initial-state gradients of the segment after the current one (its local order).
        let mut carry: Option<(usize, Vec<f32>, Option<Vec<f32>>)> = None;
        for (p, rec) in split.pieces.iter().zip(recs).rev() {
            let bp = p.batch(bt);
            // A sequence that ends in this piece takes the caller's final-state gradient; one
            // that goes on takes what the next segment's backward left for its initial state.
            let finals = |global: &[f32], local: Option<(usize, &[f32])>, w: usize| -> Result<Vec<f32>> {
                let mut v = vec![0f32; ld * bp * w];
                for l in 0..ld {
                    for j in 0..bp {
                        let src = if bt.lens[p.k0 + j] <= p.b {
                            &global[(l * big_b + bt.sorted[p.k0 + j]) * w..][..w]
                        } else {
                            let (bnext, s) = local.ok_or_else(|| Error::TapeMismatch("split tape: a segment without its successor".into()))?;
                            &s[(l * bnext + j) * w..][..w]
                        };
                        v[(l * bp + j) * w..][..w].copy_from_slice(src);
                    }
                }
                Ok(v)
            };
            let ghp = finals(gh, carry.as_ref().map(|(bn, h, _)| (*bn, h.as_slice())), ho)?;
            let gcp = match gc {
                Some(gc) => Some(finals(gc, carry.as_ref().and_then(|(bn, _, cc)| cc.as_ref().map(|cc| (*bn, cc.as_slice()))), hs)?),
                None => None,
            };
            let rows = p.rows(bt);
            let go = gather_rows(grad_output, &rows, ow);
            let (gip, gh0p, flat, gc0p) = self.backward_on(rec, &go, &ghp, gcp.as_deref())?;
            scatter_rows(&mut gi, &rows, c.input_size, &gip);
            if p.a == 0 {
                for j in 0..bp {
                    let caller = bt.sorted[p.k0 + j];
                    for l in 0..ld {
                        gh0[(l * big_b + caller) * ho..][..ho].copy_from_slice(&gh0p[(l * bp + j) * ho..][..ho]);
                        if let (Some(gc0), Some(gc0p)) = (gc0.as_mut(), gc0p.as_ref()) {
                            gc0[(l * big_b + caller) * hs..][..hs].copy_from_slice(&gc0p[(l * bp + j) * hs..][..hs]);
                        }
                    }
                }
            }
            match gw.as_mut() {
                None => gw = Some(flat),
                Some(acc) => acc.iter_mut().zip(&flat).for_each(|(a, f)| *a += f),
            }
            carry = Some((bp, gh0p, gc0p));
        }
        let gw = gw.ok_or_else(|| Error::TapeMismatch("split tape without pieces".into()))?;
        Ok((gi, gh0, gw, gc0))
    }
}

/// One plan's forward: output, h_n, c_n, and in training what its backward needs.
type Forwarded = (Vec<f32>, Vec<f32>, Option<Vec<f32>>, Option<Recorded>);
/// A split forward merged: output, h_n, c_n (whole batch, caller's order), each piece's record.
type Merged = (Vec<f32>, Vec<f32>, Option<Vec<f32>>, Vec<Recorded>);
/// One plan's backward: grad_input, grad_h0, flat weight gradients, grad_c0.
type Backwarded = (Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>);

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

/// What a fused backward reads (its forward's buffers and the given gradients), for
/// [`BackwardRead::record`]; the gradients it writes are allocated there.
struct BackwardRead<'a> {
    pub weights: &'a wgpu::Buffer,
    pub input: &'a wgpu::Buffer,
    pub output: &'a wgpu::Buffer,
    pub h0: Option<&'a wgpu::Buffer>,
    pub c0: Option<&'a wgpu::Buffer>,
    pub grad_output: &'a wgpu::Buffer,
    pub grad_h_n: Option<&'a wgpu::Buffer>,
    pub grad_c_n: Option<&'a wgpu::Buffer>,
}

impl BackwardRead<'_> {
    /// Allocates the gradients `plan`'s backward writes, records the backward into `enc`
    /// after its forward, and queues their copies on `rb` in the order grad_input, grad_h0,
    /// the flat weight gradients, then grad_c0 (LSTM): what [`GpuRnn`]'s backward and
    /// `Case::run_gpu_async` read back. The recorded work keeps the buffers alive.
    fn record(&self, ctx: &Context, plan: &FusedPlan, enc: &mut wgpu::CommandEncoder, rb: &mut Readback) -> Result<()> {
        let c = plan.config();
        let (n, b) = (plan.rows(), plan.layout().batch());
        let hn_elems: usize = c.h_shape(b).iter().product();
        let cn_elems: usize = c.c_shape(b).iter().product();
        let prec = c.precision;
        let gi = storage_at(ctx, "grad_input", n * c.input_size, prec)?;
        let gh0 = storage_at(ctx, "grad_h0", hn_elems, prec)?;
        let gc0 = if c.mode == Mode::Lstm { Some(storage_at(ctx, "grad_c0", cn_elems, prec)?) } else { None };
        let gw = storage_at(ctx, "grad_weights", plan.weight_elems(), prec)?;
        plan.record_backward(
            enc,
            &FusedBackwardBuffers {
                weights: self.weights,
                input: self.input,
                output: self.output,
                h0: self.h0,
                c0: self.c0,
                grad_output: self.grad_output,
                grad_h_n: self.grad_h_n,
                grad_c_n: self.grad_c_n,
                grad_input: &gi,
                grad_h0: &gh0,
                grad_c0: gc0.as_deref(),
                grad_weights: &gw,
            },
        )?;
        rb.copy_stored(ctx, enc, &gi, n * c.input_size, prec)?;
        rb.copy_stored(ctx, enc, &gh0, hn_elems, prec)?;
        rb.copy_stored(ctx, enc, &gw, plan.weight_elems(), prec)?;
        if let Some(g) = &gc0 {
            rb.copy_stored(ctx, enc, g, cn_elems, prec)?;
        }
        Ok(())
    }
}
