//! The GPU time-loop driver generic over the cell (`crate::cells`): the same plan as
//! `cpu::generic`, for every cell that has a WGSL file, never asking which cell it runs.
//!
//! Per layer-direction, forward: one GEMM `xp = X W_x^T + b_x`; per step, in training a copy
//! of the step's state rows to the tape (`save_states`), then per stage its product (one
//! GEMM over the step's rows into the scratch buffer) and one dispatch of the cell's
//! `cell_forward` (a workgroup per row). Backward, steps reversed, stages last to first:
//! `cell_backward`, then the product's `dv = dr_k R_k` written where the product read (the
//! tape-gradient region, or added to the state gradients for stage-0 products of a state);
//! after the loop, GEMMs over all rows for `dW_x`, `dR_k`, `dX`, and column sums for the
//! biases and the pointwise parameters. Every sum has one owner and a fixed order, so results
//! are reproducible run to run.
//!
//! Buffers (f32): the weights by slot (per layer-direction, slots in [`Slot::ALL`] order); per
//! layer-direction a tape buffer `[xp | tape | states before each row]`; the states `[L*D, B,
//! S]` in sorted order (gathered and scattered on the host); a scratch buffer (products
//! forward, tape gradients backward); per layer the output; backward a workspace
//! `[dxp | dr | de]` cleared per layer-direction, the input gradient per layer, and the
//! weight gradients in the weights' layout. No buffer is bound twice in one dispatch where
//! one binding writes.
//!
//! This is the convenience form (upload, one submit, read back); it does not split work that
//! exceeds one binding (such problems are `Error::Limit`).

use super::context::{Context, ErrorScope, TrackedBuffer};
use super::kernels::{CellParams, GemmParams, Kernel, UtilParams, NONE};
use super::record::{self, ParamBlocks, Recorder};
use super::readback::{self, Readback};
use crate::cells::{state_offsets, Layout, Src};
use crate::cells::Slot;
use crate::config::RnnConfig;
use crate::cpu::generic::{check_states, check_weights, gather_states, scatter_states, CellGradients, CellOutput};
use crate::cpu::Pass;
use crate::error::{check_len, Error, Result};
use crate::float::check_finite;
use crate::packing::{step_offsets, PackedSequence};
use crate::weights::{DirParams, Weights};
use std::sync::Arc;

/// Rows of k a GEMM takes in one dispatch: the plan's runs (Mesa's gallivm ends
/// an invocation's loops after 65,535 iterations in all: ARCHITECTURE.md, "Runs").
const K_RUN: usize = super::plan::GEMM_K_RUN;

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

/// One dispatch, its buffers by binding (1..), or a clear of a buffer between passes.
enum Op<'a> {
    Dispatch { kernel: Kernel, param_off: u32, groups: [u32; 3], bufs: Vec<&'a wgpu::Buffer> },
    Clear(&'a wgpu::Buffer),
}

/// Collects the dispatches of one submit and their parameter blocks.
struct Rec<'a> {
    ctx: &'a Context,
    params: ParamBlocks,
    ops: Vec<Op<'a>>,
}

impl<'a> Rec<'a> {
    fn new(ctx: &'a Context) -> Self {
        Rec { ctx, params: ParamBlocks::new(ctx), ops: Vec::new() }
    }

    /// `C = op(A) op(B) (+ bias) + beta C` with `p`'s strides, k in runs of [`K_RUN`] (later
    /// runs add to C; the bias goes with the first).
    fn gemm(&mut self, p: GemmParams, a: &'a wgpu::Buffer, b: &'a wgpu::Buffer, c: &'a wgpu::Buffer, bias: Option<&'a wgpu::Buffer>) -> Result<()> {
        let max = self.ctx.limits().max_compute_workgroups_per_dimension;
        if p.m == 0 || p.n == 0 {
            return Ok(());
        }
        if p.m.div_ceil(8) > max || p.n.div_ceil(256) > max {
            return Err(Error::Limit(format!("GEMM {}x{} exceeds {max} workgroups per dimension", p.m, p.n)));
        }
        let bias_buf = bias.unwrap_or(b);
        for q in p.runs(K_RUN as u32) {
            let off = self.params.push(&q);
            self.ops.push(Op::Dispatch { kernel: q.kernel(), param_off: off, groups: q.groups(), bufs: vec![a, b, c, bias_buf, b, a] });
        }
        Ok(())
    }

    /// `dst[dst_off + j] += / = sum over rows of src[src_off + row * ld + j]`, in runs of rows.
    #[allow(clippy::too_many_arguments)]
    fn colsum(&mut self, rows: usize, width: usize, src: &'a wgpu::Buffer, src_off: usize, ld: usize, dst: &'a wgpu::Buffer, dst_off: usize, dummy: &'a wgpu::Buffer) {
        if width == 0 {
            return;
        }
        for p in UtilParams::colsum_runs(rows, width, src_off, ld, dst_off, super::plan::COLSUM_ROWS) {
            let off = self.params.push(&p);
            let g = width.div_ceil(256) as u32;
            self.ops.push(Op::Dispatch { kernel: Kernel::ColSum, param_off: off, groups: [g, 1, 1], bufs: vec![src, dummy, dummy, dst] });
        }
    }

    fn cell(&mut self, kernel: Kernel, p: &CellParams, bufs: [&'a wgpu::Buffer; 8]) {
        let off = self.params.push(p);
        self.ops.push(Op::Dispatch { kernel, param_off: off, groups: [p.rows, 1, 1], bufs: bufs.to_vec() });
    }

    /// Records everything into `encoder`: one compute pass between clears.
    fn record(self, encoder: &mut wgpu::CommandEncoder) -> Result<TrackedBuffer> {
        let ctx = self.ctx;
        let pbuf = self.params.upload(ctx, "cell parameters")?;
        let scope = ErrorScope::push(&ctx.device);
        let mut rec: Option<Recorder<'static>> = None;
        for op in &self.ops {
            match op {
                Op::Clear(buf) => {
                    drop(rec.take());
                    encoder.clear_buffer(buf, 0, None);
                }
                Op::Dispatch { kernel, param_off, groups, bufs } => {
                    let bg = record::bind_group(ctx, *kernel, &pbuf, bufs);
                    let pipeline = ctx.pipeline(*kernel)?;
                    let r = rec.get_or_insert_with(|| Recorder::begin(encoder, "wgpu-rnn cells", None).forget_lifetime());
                    r.dispatch(*kernel, &pipeline, &bg, *param_off, *groups);
                }
            }
        }
        drop(rec);
        scope.pop_on(ctx)?;
        Ok(pbuf)
    }
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
}

impl Dims {
    fn new(cfg: &RnnConfig, layer: usize) -> Result<Self> {
        let sizes = cfg.sizes(layer);
        let lay = cfg.mode.layout(sizes);
        let (soffs, sw) = state_offsets(&cfg.states());
        let (roffs, rw) = lay.product_offsets();
        // The backward adds a product's state gradient straight into the state gradients.
        lay.check().map_err(|why| Error::Unsupported(format!("{}: {why}", cfg.mode)))?;
        Ok(Dims { lay, soffs, sw, roffs, rw, inw: sizes.input })
    }
    /// Tape buffer: `[xp N*gx | tape R*tw | states before each row N*sw]` (R = N in training).
    fn tape_len(&self, n: usize, b: usize, training: bool) -> usize {
        n * self.lay.xp + if training { n * (self.lay.tape + self.sw) } else { b * self.lay.tape }
    }
    fn tape_off(&self, n: usize) -> usize {
        n * self.lay.xp
    }
    fn sprev_off(&self, n: usize) -> usize {
        n * (self.lay.xp + self.lay.tape)
    }
    /// The cell dispatches' parameters of layer-direction `k` (direction `dir`) that do not
    /// change from step to step.
    #[allow(clippy::too_many_arguments)]
    fn params(&self, cfg: &RnnConfig, k: usize, dir: usize, b: usize, n: usize, out_w: usize, wo: &[Option<usize>; 6]) -> CellParams {
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
            sprev_off: self.sprev_off(n) as u32,
            ew: lay.pointwise as u32,
            e_off: wo[slot_index(Slot::Pointwise)].unwrap_or(0) as u32,
            out_w: out_w as u32,
            col: (dir * lay.out) as u32,
            ..Default::default()
        }
    }
}

/// The buffers a backward needs from a training forward.
pub struct GpuCellTape {
    ctx: Arc<Context>,
    config: RnnConfig,
    weights: TrackedBuffer,
    /// The layer-0 input, then each layer's output (the next layer's input).
    layer_io: Vec<TrackedBuffer>,
    /// Per layer-direction: `[xp | tape | states before each row]`.
    tapes: Vec<TrackedBuffer>,
    batch_sizes: Vec<usize>,
    sorted_indices: Vec<usize>,
    unsorted_indices: Vec<usize>,
}

impl std::fmt::Debug for GpuCellTape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuCellTape").field("config", &self.config).finish()
    }
}

fn check_gpu(ctx: &Context, n: usize, b: usize, elems: &[(&str, usize)]) -> Result<()> {
    let max = ctx.limits().max_compute_workgroups_per_dimension as usize;
    if b > max {
        return Err(Error::Limit(format!("batch {b} exceeds the device's {max} workgroups per dimension")));
    }
    let limit = ctx.binding_limit() / 4;
    for &(what, e) in elems.iter().chain([("rows", n)].iter()) {
        if e as u64 > limit || e >= 1 << 31 {
            return Err(Error::Limit(format!("{what} ({e} f32) exceeds one binding ({} bytes) on this device", ctx.binding_limit())));
        }
    }
    Ok(())
}

fn buf(ctx: &Context, label: &str, elems: usize) -> Result<TrackedBuffer> {
    readback::storage(ctx, label, elems.max(4))
}

/// Runs the stack on the GPU: as [`crate::cpu::generic::forward`].
pub fn forward(
    ctx: &Arc<Context>,
    w: &Weights<f32>,
    input: &PackedSequence<f32>,
    states0: &[Option<&[f32]>],
    pass: Pass,
) -> Result<(CellOutput<f32>, Option<GpuCellTape>)> {
    check_weights(w)?;
    input.validate()?;
    let cfg = &w.config;
    if input.features != cfg.input_size {
        return Err(Error::ShapeMismatch { what: "input features".into(), expected: vec![cfg.input_size], got: vec![input.features] });
    }
    check_finite("input", &input.data)?;
    let (b, d, n) = (input.batch(), cfg.directions(), input.rows());
    let ld = cfg.num_layers * d;
    let states = cfg.states();
    check_states(cfg, &states, states0, b, "0")?;
    let training = pass == Pass::Training;
    let dims: Vec<Dims> = (0..cfg.num_layers).map(|l| Dims::new(cfg, l)).collect::<Result<_>>()?;
    let sw = dims[0].sw;
    let out_w = d * dims[0].lay.out;
    let (woffs, wtotal) = slot_layout(cfg);
    let scr_len = dims.iter().map(|x| b * x.rw).max().unwrap_or(0);
    let mut sizes = vec![("weights", wtotal), ("states", ld * b * sw), ("layer output", n * out_w), ("products", scr_len), ("input", n * cfg.input_size)];
    for x in &dims {
        sizes.push(("tape", x.tape_len(n, b, training)));
    }
    check_gpu(ctx, n, b, &sizes)?;
    let _serial = ctx.exclusive();
    ctx.check_alive()?;

    let wbuf = readback::upload(ctx, "weights", &pad4(flatten(w)))?;
    let s_host = gather_states(&states, states0, ld, b, &input.sorted_indices)?;
    let sbuf = readback::upload(ctx, "states", &pad4(s_host))?;
    let mut layer_io = vec![readback::upload(ctx, "input", &pad4(input.data.clone()))?];
    for _ in 0..cfg.num_layers {
        layer_io.push(buf(ctx, "layer output", n * out_w)?);
    }
    let mut tapes = Vec::new();
    for dm in &dims {
        for _ in 0..d {
            tapes.push(buf(ctx, "tape", dm.tape_len(n, b, training))?);
        }
    }
    let scr = buf(ctx, "products", scr_len)?;
    let dummy = [buf(ctx, "unused", 4)?, buf(ctx, "unused", 4)?];
    let off = step_offsets(&input.batch_sizes);

    let mut rec = Rec::new(ctx);
    for layer in 0..cfg.num_layers {
        let dm = &dims[layer];
        let lay = &dm.lay;
        let (x, y) = (&layer_io[layer], &layer_io[layer + 1]);
        for dir in 0..d {
            let k = layer * d + dir;
            let wo = &woffs[k];
            let tp = &tapes[k];
            // xp = X W_x^T + b_x
            if lay.xp > 0 {
                let wx = wo[slot_index(Slot::WeightIh)].ok_or_else(|| Error::MissingTensor("input matrix".into()))?;
                let bias = if lay.input_bias { wo[slot_index(Slot::BiasIh)] } else { None };
                rec.gemm(gp(n, lay.xp, dm.inw, (0, dm.inw, 1), (wx, 1, dm.inw), (0, lay.xp), bias, 0.0), x, &wbuf, tp, bias.map(|_| &*wbuf))?;
            }
            let mut cp = dm.params(cfg, k, dir, b, n, out_w, wo);
            let steps: Vec<usize> = if dir == 1 { (0..input.batch_sizes.len()).rev().collect() } else { (0..input.batch_sizes.len()).collect() };
            for t in steps {
                let rows = input.batch_sizes[t];
                let o = off[t];
                let trow = if training { o } else { 0 };
                cp.rows = rows as u32;
                cp.o = o as u32;
                cp.trow = trow as u32;
                let bufs = [&*wbuf, &**x, &**tp, &*sbuf, &*scr, &**y, &*dummy[0], &*dummy[1]];
                if training {
                    cp.stage = 0;
                    rec.cell(Kernel::CellSave(cfg.mode), &cp, bufs);
                }
                for (st, stage) in lay.stages.iter().enumerate() {
                    if let Some(pr) = stage {
                        let r_off = wo[slot_index(pr.slot)].ok_or_else(|| Error::MissingTensor("recurrent matrix".into()))? + pr.offset;
                        let bias = match pr.bias {
                            Some((bs, bo)) => Some(wo[slot_index(bs)].ok_or_else(|| Error::MissingTensor("recurrent bias".into()))? + bo),
                            None => None,
                        };
                        let (abuf, a_off, a_rs) = match pr.src {
                            Src::State(i) => (&*sbuf, k * b * sw + dm.soffs[i], sw),
                            Src::Tape { offset } => (&**tp, dm.tape_off(n) + trow * lay.tape + offset, lay.tape),
                        };
                        rec.gemm(gp(rows, pr.rows, pr.k, (a_off, a_rs, 1), (r_off, 1, pr.k), (dm.roffs[st], dm.rw), bias, 0.0), abuf, &wbuf, &scr, bias.map(|_| &*wbuf))?;
                    }
                    cp.stage = st as u32;
                    rec.cell(Kernel::CellForward(cfg.mode), &cp, bufs);
                }
            }
        }
    }
    let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-rnn cells forward") });
    let _params = rec.record(&mut encoder)?;
    let mut rb = Readback::new();
    rb.copy(ctx, &mut encoder, &layer_io[cfg.num_layers], n * out_w)?;
    rb.copy(ctx, &mut encoder, &sbuf, ld * b * sw)?;
    let mut got = rb.submit_and_read(ctx, encoder)?;
    let s_fin = got.pop().unwrap_or_default();
    let out = got.pop().unwrap_or_default();
    check_len("output read back", &[n, out_w], out.len())?;
    let output = input.with_data(out, out_w)?;
    let states_n = scatter_states(cfg, &states, &s_fin, ld, b, &input.unsorted_indices)?;
    let tape = training.then(|| GpuCellTape {
        ctx: ctx.clone(),
        config: cfg.clone(),
        weights: wbuf,
        layer_io,
        tapes,
        batch_sizes: input.batch_sizes.clone(),
        sorted_indices: input.sorted_indices.clone(),
        unsorted_indices: input.unsorted_indices.clone(),
    });
    Ok((CellOutput { output, states: states_n }, tape))
}

/// Pads to at least 4 elements (a buffer holds at least 16 bytes).
fn pad4(mut v: Vec<f32>) -> Vec<f32> {
    if v.len() < 4 {
        v.resize(4, 0.0);
    }
    v
}

/// Backward through time of a training [`forward`]: as [`crate::cpu::generic::backward`].
/// The products use the weights the forward uploaded (the tape keeps them on the device);
/// `w` must be those weights: it gives the config (checked against the tape's) and is checked
/// to be valid and finite, but its values are not compared with the device's copy.
pub fn backward(w: &Weights<f32>, tape: &GpuCellTape, grad_output: &[f32], grad_states: &[Option<&[f32]>]) -> Result<CellGradients<f32>> {
    check_weights(w)?;
    let cfg = &w.config;
    if tape.config != *cfg {
        return Err(Error::TapeMismatch(format!("the tape was recorded with {:?}, the weights have {cfg:?}", tape.config)));
    }
    let ctx = &tape.ctx;
    let b = tape.batch_sizes[0];
    let n: usize = tape.batch_sizes.iter().sum();
    let d = cfg.directions();
    let ld = cfg.num_layers * d;
    let states = cfg.states();
    let dims: Vec<Dims> = (0..cfg.num_layers).map(|l| Dims::new(cfg, l)).collect::<Result<_>>()?;
    let sw = dims[0].sw;
    let out_w = d * dims[0].lay.out;
    check_len("grad_output", &[n, out_w], grad_output.len())?;
    check_finite("grad_output", grad_output)?;
    check_states(cfg, &states, grad_states, b, "_n")?;
    let (woffs, wtotal) = slot_layout(cfg);
    let bws_len = dims.iter().map(|x| n * (x.lay.xp + x.rw + x.lay.pointwise)).max().unwrap_or(0);
    let scr_len = dims.iter().map(|x| b * x.lay.tape).max().unwrap_or(0);
    let mut sizes = vec![("weight gradients", wtotal), ("backward workspace", bws_len), ("tape gradients", scr_len)];
    for x in &dims {
        sizes.push(("input gradients", n * x.inw));
    }
    check_gpu(ctx, n, b, &sizes)?;
    let _serial = ctx.exclusive();
    ctx.check_alive()?;

    let ds_host = gather_states(&states, grad_states, ld, b, &tape.sorted_indices)?;
    let dsbuf = readback::upload(ctx, "state gradients", &pad4(ds_host))?;
    let gw = buf(ctx, "weight gradients", wtotal)?;
    let bws = buf(ctx, "backward workspace", bws_len)?;
    let scr = buf(ctx, "tape gradients", scr_len)?;
    let dummy = buf(ctx, "unused", 4)?;
    // dY of the top layer, then each layer's dX (the next lower layer's dY).
    let mut grads_io = vec![readback::upload(ctx, "output gradients", &pad4(grad_output.to_vec()))?];
    for l in (0..cfg.num_layers).rev() {
        grads_io.push(buf(ctx, "input gradients", n * dims[l].inw)?);
    }
    let off = step_offsets(&tape.batch_sizes);
    let wbuf = &tape.weights;

    let mut rec = Rec::new(ctx);
    for (gi, layer) in (0..cfg.num_layers).rev().enumerate() {
        let dm = &dims[layer];
        let lay = &dm.lay;
        let x = &tape.layer_io[layer];
        let (dy, dx) = (&grads_io[gi], &grads_io[gi + 1]);
        let (dxp_off, dr_off, de_off) = (0, n * lay.xp, n * (lay.xp + dm.rw));
        for dir in 0..d {
            let k = layer * d + dir;
            let wo = &woffs[k];
            let tp = &tape.tapes[k];
            rec.ops.push(Op::Clear(&bws));
            let mut cp = CellParams {
                dtape_off: 0,
                dxp_off: dxp_off as u32,
                dr_off: dr_off as u32,
                de_off: de_off as u32,
                ..dm.params(cfg, k, dir, b, n, out_w, wo)
            };
            // Reverse of the processing order.
            let steps: Vec<usize> = if dir == 1 { (0..tape.batch_sizes.len()).collect() } else { (0..tape.batch_sizes.len()).rev().collect() };
            for t in steps {
                let rows = tape.batch_sizes[t];
                let o = off[t];
                cp.rows = rows as u32;
                cp.o = o as u32;
                cp.trow = o as u32;
                for st in (0..lay.stages.len()).rev() {
                    cp.stage = st as u32;
                    rec.cell(Kernel::CellBackward(cfg.mode), &cp, [&**wbuf, &**x, &**tp, &*dsbuf, &*scr, &**dy, &*bws, &**dx]);
                    if let Some(pr) = lay.stages[st] {
                        let r_off = wo[slot_index(pr.slot)].ok_or_else(|| Error::MissingTensor("recurrent matrix".into()))? + pr.offset;
                        let a = (dr_off + o * dm.rw + dm.roffs[st], dm.rw, 1);
                        match pr.src {
                            Src::Tape { offset } => {
                                rec.gemm(gp(rows, pr.k, pr.rows, a, (r_off, pr.k, 1), (offset, lay.tape), None, 0.0), &bws, wbuf, &scr, None)?
                            }
                            Src::State(i) => rec.gemm(
                                gp(rows, pr.k, pr.rows, a, (r_off, pr.k, 1), (k * b * sw + dm.soffs[i], sw), None, 1.0),
                                &bws,
                                wbuf,
                                &dsbuf,
                                None,
                            )?,
                        }
                    }
                }
            }
            // Weight gradients over all rows.
            if lay.xp > 0 {
                let wx = wo[slot_index(Slot::WeightIh)].ok_or_else(|| Error::MissingTensor("input matrix".into()))?;
                rec.gemm(gp(lay.xp, dm.inw, n, (dxp_off, 1, lay.xp), (0, dm.inw, 1), (wx, dm.inw), None, 0.0), &bws, x, &gw, None)?;
                if lay.input_bias {
                    let bo = wo[slot_index(Slot::BiasIh)].ok_or_else(|| Error::MissingTensor("input bias".into()))?;
                    rec.colsum(n, lay.xp, &bws, dxp_off, lay.xp, &gw, bo, &dummy);
                }
                rec.gemm(gp(n, dm.inw, lay.xp, (dxp_off, lay.xp, 1), (wx, dm.inw, 1), (0, dm.inw), None, 1.0), &bws, wbuf, dx, None)?;
            }
            for (st, stage) in lay.stages.iter().enumerate() {
                let Some(pr) = stage else { continue };
                let r_off = wo[slot_index(pr.slot)].ok_or_else(|| Error::MissingTensor("recurrent matrix".into()))? + pr.offset;
                let bsrc = match pr.src {
                    Src::State(i) => (dm.sprev_off(n) + dm.soffs[i], sw, 1),
                    Src::Tape { offset } => (dm.tape_off(n) + offset, lay.tape, 1),
                };
                rec.gemm(gp(pr.rows, pr.k, n, (dr_off + dm.roffs[st], 1, dm.rw), bsrc, (r_off, pr.k), None, 0.0), &bws, tp, &gw, None)?;
                if let Some((bs, bo)) = pr.bias {
                    let at = wo[slot_index(bs)].ok_or_else(|| Error::MissingTensor("recurrent bias".into()))? + bo;
                    rec.colsum(n, pr.rows, &bws, dr_off + dm.roffs[st], dm.rw, &gw, at, &dummy);
                }
            }
            if lay.pointwise > 0 {
                let at = wo[slot_index(Slot::Pointwise)].ok_or_else(|| Error::MissingTensor("pointwise parameters".into()))?;
                rec.colsum(n, lay.pointwise, &bws, de_off, lay.pointwise, &gw, at, &dummy);
            }
        }
    }
    let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-rnn cells backward") });
    let _params = rec.record(&mut encoder)?;
    let mut rb = Readback::new();
    rb.copy(ctx, &mut encoder, &grads_io[cfg.num_layers], n * cfg.input_size)?;
    rb.copy(ctx, &mut encoder, &dsbuf, ld * b * sw)?;
    rb.copy(ctx, &mut encoder, &gw, wtotal)?;
    let mut got = rb.submit_and_read(ctx, encoder)?;
    let gflat = got.pop().unwrap_or_default();
    let ds = got.pop().unwrap_or_default();
    let dx = got.pop().unwrap_or_default();
    let input = PackedSequence {
        data: dx,
        features: cfg.input_size,
        batch_sizes: tape.batch_sizes.clone(),
        sorted_indices: tape.sorted_indices.clone(),
        unsorted_indices: tape.unsorted_indices.clone(),
    };
    Ok(CellGradients { input, states: scatter_states(cfg, &states, &ds, ld, b, &tape.unsorted_indices)?, params: unflatten(cfg, &gflat)? })
}
