//! ONNX nodes on the GPU in the engine-API form: an [`OnnxPlan`] is prepared once per node and
//! batch structure (steps, batch, `sequence_lens`), then recorded into the caller's encoder
//! over the caller's buffers in ONNX's layouts ([`OnnxBuffers`]), with no submit, readback or
//! buffer write. Around one [`Plan`] of the node's cell, [`RowMoves`] gather `X` (and
//! `initial_h`, `initial_c`) into the packed rows, each sequence reversed for `direction =
//! reverse`, and scatter the packed output and final states into `Y`, `Y_h` and `Y_c`, padded
//! steps and sequences of length 0 from a row of zeros: every element of an output is written.
//! Where ONNX's layout is already the packed one (layout 0, every sequence all T steps
//! forward: X, and Y with one direction; the states whenever no sequence is empty), the
//! caller's buffer is bound to the plan and nothing moves: such a node costs what its cell
//! costs through the engine API.

use super::{Node, OnnxRows, Op, Outputs};
use crate::cpu::Pass;
use crate::error::{Error, Result};
use crate::packing;
use crate::gpu::{self, Context, ForwardBuffers, Plan, RowMove, RowMoves, SeqLayout, TrackedBuffer};
use crate::tensor::Tensor;
use std::sync::Arc;

/// The caller's buffers for a recorded node, f32 in ONNX's layouts (see [`super`]): `x`, and
/// `initial_h` / `initial_c` where given (zeros otherwise); the outputs wanted. Each a slice at
/// the device's storage offset alignment, with `STORAGE` usage.
pub struct OnnxBuffers<'a> {
    /// `X`: `[T, B, I]` (layout 0) or `[B, T, I]`.
    pub x: wgpu::BufferSlice<'a>,
    /// `initial_h`: `[D, B, H]` (layout 0) or `[B, D, H]`.
    pub initial_h: Option<wgpu::BufferSlice<'a>>,
    /// LSTM's `initial_c`, as `initial_h`.
    pub initial_c: Option<wgpu::BufferSlice<'a>>,
    /// `Y` (written): `[T, D, B, H]` (layout 0) or `[B, T, D, H]`.
    pub y: Option<wgpu::BufferSlice<'a>>,
    /// `Y_h` (written), shaped as `initial_h`.
    pub y_h: Option<wgpu::BufferSlice<'a>>,
    /// LSTM's `Y_c` (written).
    pub y_c: Option<wgpu::BufferSlice<'a>>,
}

/// A node prepared for one batch structure on a device.
pub struct OnnxPlan {
    ctx: Arc<Context>,
    node: Node,
    steps: usize,
    batch: usize,
    /// `None` when every sequence has length 0.
    run: Option<Run>,
    zeros: TrackedBuffer,
    y_out: RowMoves,
    h_out: RowMoves,
}

/// The plan's side for the sequences of positive length.
struct Run {
    plan: Plan,
    weights: TrackedBuffer,
    x_packed: TrackedBuffer,
    y_packed: TrackedBuffer,
    /// Initial states gathered `[D, B', H]`, final states `[D, B', H]`, per state.
    s0: Vec<TrackedBuffer>,
    sn: Vec<TrackedBuffer>,
    x_in: RowMoves,
    s_in: RowMoves,
    /// Where ONNX's layout is the packed one, the caller's buffer is bound to the plan itself
    /// (no move): X and Y when every sequence runs all T steps forward in layout 0 (Y also
    /// needs one direction), the states when every sequence has steps in layout 0.
    x_direct: bool,
    y_direct: bool,
    s_direct: bool,
}

impl OnnxPlan {
    /// Prepares `node` for `X` of `steps` steps and `batch` sequences with `seq_lens` (each in
    /// `0..=steps`; all `steps` if `None`): the cell's plan over the sequences of positive
    /// length, the node's weights uploaded, the row tables built.
    pub fn new(ctx: &Arc<Context>, node: &Node, steps: usize, batch: usize, seq_lens: Option<&[i64]>) -> Result<Self> {
        if steps == 0 || batch == 0 {
            return Err(Error::EmptyBatch(format!("X with {steps} steps and {batch} sequences")));
        }
        let _serial = ctx.exclusive();
        let lens = super::lengths(seq_lens, steps, batch)?;
        let a = &node.attrs;
        let (d, h, i_w, bm) = (a.direction.count(), node.hidden, node.input, a.batch_major);
        // The row tables hold u32 rows: Y's T*D*B rows, X's T*B, a state's D*B must fit (the
        // moves check their element extents below 2^31 too).
        if steps.checked_mul(batch).and_then(|v| v.checked_mul(d)).is_none_or(|rows| rows >= 1 << 31) {
            return Err(Error::Limit(format!("{steps} steps x {batch} sequences x {d} directions: more rows than 31-bit indexing holds")));
        }
        // X and Y are bound whole (an OnnxPlan does not split them, as GpuRnn splits a
        // problem): refused here, before any table is built, past one storage binding.
        for (what, elems) in [("X", steps * batch * i_w), ("Y", steps * batch * d * h)] {
            if elems.checked_mul(4).is_none_or(|b| b as u64 > ctx.binding_limit()) {
                return Err(Error::Limit(format!("{what} of {elems} f32 exceeds the device's storage binding ({} bytes)", ctx.binding_limit())));
            }
        }
        let n_states = if a.op == Op::Lstm { 2 } else { 1 };
        // The active sequences (positive length, caller's order; j their position), packed as
        // pack_padded_sequence packs them: sorted by length, longest first (stable); the row of
        // step t of sorted position s is off[t] + s.
        let active: Vec<usize> = (0..batch).filter(|&k| lens[k] > 0).collect();
        let ba = active.len();
        let alens: Vec<usize> = active.iter().map(|&k| lens[k]).collect();
        let t_run = alens.iter().copied().max().unwrap_or(0);
        let sorted = if ba == 0 { Vec::new() } else { packing::sort_lengths(&alens, t_run)? };
        let batch_sizes = if ba == 0 { Vec::new() } else { packing::batch_sizes_of(&sorted.iter().map(|&j| alens[j]).collect::<Vec<_>>()) };
        let off = packing::step_offsets(&batch_sizes);
        let spos = packing::invert_permutation(&sorted);
        let packed = |t: usize, j: usize| (off[t] + spos[j]) as u32;
        // ONNX's rows (the row counts were checked below 2^31 above).
        let rows = OnnxRows::of(a, steps, batch);
        let (xrow, strow) = (|t, k| rows.x(t, k) as u32, |dir, k| rows.state(dir, k) as u32);
        let yrow = |t, dir, k| rows.y(t, dir, k) as u32;
        let zeros = gpu::storage(ctx, "onnx zeros", h)?;
        let mv = |src: usize, dst: usize, width: usize, (src_ld, src_col): (usize, usize), dst_ld: usize, pairs: Vec<(u32, u32)>| RowMove { src, dst, width, src_ld, src_col, dst_ld, dst_col: 0, pairs };
        // Y: [y_packed, zeros, Y]; states: per state [s_n, zeros, Y_s].
        let mut y_moves = Vec::new();
        for dir in 0..d {
            let mut pairs = Vec::new();
            for (j, &k) in active.iter().enumerate() {
                let len = lens[k];
                for t in 0..len {
                    pairs.push((packed(t, j), yrow(rows.step(len, t), dir, k)));
                }
            }
            y_moves.push(mv(0, 2, h, (d * h, dir * h), h, pairs));
        }
        let pad: Vec<(u32, u32)> = (0..batch).flat_map(|k| (lens[k]..steps).flat_map(move |t| (0..d).map(move |dir| (0, yrow(t, dir, k))))).collect();
        y_moves.push(mv(1, 2, h, (0, 0), h, pad));
        let y_out = RowMoves::new(ctx, y_moves)?;
        let act: Vec<(u32, u32)> = (0..d).flat_map(|dir| active.iter().enumerate().map(move |(j, &k)| ((dir * ba + j) as u32, strow(dir, k)))).collect();
        let idle: Vec<(u32, u32)> = (0..d).flat_map(|dir| (0..batch).filter(|&k| lens[k] == 0).map(move |k| (0, strow(dir, k)))).collect();
        let h_out = RowMoves::new(ctx, vec![mv(0, 2, h, (h, 0), h, act.clone()), mv(1, 2, h, (0, 0), h, idle)])?;
        let run = if ba == 0 {
            None
        } else {
            let layout = SeqLayout::new(batch_sizes, sorted.clone())?;
            let plan = Plan::new(ctx, &node.weights.config, &layout, Pass::Inference)?;
            let weights = gpu::upload(ctx, "onnx weights", &gpu::flat_weights(&node.weights))?;
            let n = layout.rows();
            let x_packed = gpu::storage(ctx, "onnx packed X", n * i_w)?;
            let y_packed = gpu::storage(ctx, "onnx packed Y", n * d * h)?;
            let s0 = (0..n_states).map(|_| gpu::storage(ctx, "onnx initial state", d * ba * h)).collect::<Result<Vec<_>>>()?;
            let sn = (0..n_states).map(|_| gpu::storage(ctx, "onnx final state", d * ba * h)).collect::<Result<Vec<_>>>()?;
            let mut xp = Vec::with_capacity(n);
            for (j, &k) in active.iter().enumerate() {
                let len = lens[k];
                for t in 0..len {
                    xp.push((xrow(rows.step(len, t), k), packed(t, j)));
                }
            }
            let x_in = RowMoves::new(ctx, vec![mv(0, 1, i_w, (i_w, 0), i_w, xp)])?;
            let s_in = RowMoves::new(ctx, vec![mv(0, 1, h, (h, 0), h, act.iter().map(|&(a, b)| (b, a)).collect())])?;
            let full = lens.iter().all(|&l| l == steps);
            let x_direct = !bm && !rows.reverse && full;
            Some(Run { plan, weights, x_packed, y_packed, s0, sn, x_in, s_in, x_direct, y_direct: x_direct && d == 1, s_direct: !bm && ba == batch })
        };
        Ok(OnnxPlan { ctx: ctx.clone(), node: node.clone(), steps, batch, run, zeros, y_out, h_out })
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Elements of `X`, of `initial_h` (`Y_h`, `initial_c`, `Y_c`) and of `Y`.
    pub fn sizes(&self) -> (usize, usize, usize) {
        let (d, h) = (self.node.attrs.direction.count(), self.node.hidden);
        (self.steps * self.batch * self.node.input, d * self.batch * h, self.steps * d * self.batch * h)
    }

    /// Records the node into `encoder` (no submit).
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, bufs: &OnnxBuffers<'_>) -> Result<()> {
        let (nx, ns, ny) = self.sizes();
        let lstm = self.node.attrs.op == Op::Lstm;
        if !lstm && (bufs.initial_c.is_some() || bufs.y_c.is_some()) {
            return Err(Error::Onnx(format!("{} has no cell state (initial_c, Y_c)", self.node.attrs.op.name())));
        }
        let check = |what: &str, s: Option<wgpu::BufferSlice<'_>>, n: usize| s.map_or(Ok(()), |s| crate::gpu::check_slice(&self.ctx, what, s, n));
        check("X", Some(bufs.x), nx)?;
        check("initial_h", bufs.initial_h, ns)?;
        check("initial_c", bufs.initial_c, ns)?;
        check("Y", bufs.y, ny)?;
        check("Y_h", bufs.y_h, ns)?;
        check("Y_c", bufs.y_c, ns)?;
        // No dispatch binds two of the caller's buffers (each move binds one beside the plan's
        // own), so they may share a buffer; only bytes a written role shares are refused.
        let roles = [("X", Some(bufs.x), false), ("initial_h", bufs.initial_h, false), ("initial_c", bufs.initial_c, false), ("Y", bufs.y, true), ("Y_h", bufs.y_h, true), ("Y_c", bufs.y_c, true)];
        crate::gpu::check_overlap(&roles)?;
        // The caller's buffers go to the plan directly where the layouts agree, unless two of
        // them share a buffer on a context without shared buffers (one dispatch would bind it
        // read-only and read-write).
        let distinct = crate::gpu::check_aliasing(&self.ctx, &roles).is_ok();
        let (mut y_done, mut s_done) = (false, false);
        if let Some(r) = &self.run {
            let x_direct = r.x_direct && distinct;
            let (y_direct, s_direct) = (r.y_direct && distinct, r.s_direct && distinct);
            if !x_direct {
                r.x_in.record(encoder, &[bufs.x, r.x_packed.slice(..)])?;
            }
            let given = [bufs.initial_h, bufs.initial_c];
            let mut states0: Vec<Option<wgpu::BufferSlice<'_>>> = Vec::new();
            for (k, s) in given.iter().enumerate().take(r.s0.len()) {
                states0.push(match s {
                    Some(s) if s_direct => Some(*s),
                    Some(s) => {
                        r.s_in.record(encoder, &[*s, r.s0[k].slice(..)])?;
                        Some(r.s0[k].slice(..))
                    }
                    None => None,
                });
            }
            let outs = [bufs.y_h, bufs.y_c];
            let states_n: Vec<wgpu::BufferSlice<'_>> = r.sn.iter().enumerate().map(|(k, b)| if s_direct { outs[k].unwrap_or(b.slice(..)) } else { b.slice(..) }).collect();
            let input = if x_direct { bufs.x } else { r.x_packed.slice(..) };
            let output = if y_direct { bufs.y.unwrap_or(r.y_packed.slice(..)) } else { r.y_packed.slice(..) };
            let fb = ForwardBuffers { weights: r.weights.slice(..), input, output, states0: &states0, states_n: &states_n, counter: None };
            r.plan.record_forward(encoder, &fb)?;
            (y_done, s_done) = (y_direct, s_direct);
        }
        let zeros = self.zeros.slice(..);
        // Without a run the moves from the packed rows are empty (only zeros move).
        if let Some(y) = bufs.y.filter(|_| !y_done) {
            let src = self.run.as_ref().map_or(zeros, |r| r.y_packed.slice(..));
            self.y_out.record(encoder, &[src, zeros, y])?;
        }
        for (k, out) in [bufs.y_h, bufs.y_c].into_iter().enumerate() {
            if let Some(out) = out.filter(|_| !s_done) {
                let src = self.run.as_ref().map_or(zeros, |r| r.sn[k].slice(..));
                self.h_out.record(encoder, &[src, zeros, out])?;
            }
        }
        Ok(())
    }

    /// The convenience form: uploads the tensors, records, submits once, reads back.
    pub fn forward(&self, x: &Tensor<f32>, initial_h: Option<&Tensor<f32>>, initial_c: Option<&Tensor<f32>>) -> Result<Outputs> {
        let _serial = self.ctx.exclusive();
        let (enc, rb, _keep) = self.begin(x, initial_h, initial_c)?;
        self.finish(rb.submit_and_read(&self.ctx, enc)?)
    }

    /// [`OnnxPlan::forward`] awaiting its results (the browser, where nothing may block).
    pub async fn forward_async(&self, x: &Tensor<f32>, initial_h: Option<&Tensor<f32>>, initial_c: Option<&Tensor<f32>>) -> Result<Outputs> {
        let (enc, rb, _keep) = self.begin(x, initial_h, initial_c)?;
        let got = rb.submit(&self.ctx, enc)?.await?;
        self.finish(got)
    }

    /// The convenience forms' upload and recording; the buffers are kept until the results
    /// are read.
    fn begin(&self, x: &Tensor<f32>, initial_h: Option<&Tensor<f32>>, initial_c: Option<&Tensor<f32>>) -> Result<(wgpu::CommandEncoder, gpu::Readback, Vec<TrackedBuffer>)> {
        let ctx = &self.ctx;
        let (nx, ns, ny) = self.sizes();
        let up = |what: &str, t: &Tensor<f32>, n: usize| {
            if t.data.len() != n {
                return Err(Error::ShapeMismatch { what: what.into(), expected: vec![n], got: vec![t.data.len()] });
            }
            crate::float::check_finite(what, &t.data)?;
            gpu::upload(ctx, what, &t.data)
        };
        let xb = up("X", x, nx)?;
        let hb = initial_h.map(|t| up("initial_h", t, ns)).transpose()?;
        let lstm = self.node.attrs.op == Op::Lstm;
        let cb = initial_c.map(|t| up("initial_c", t, ns)).transpose()?;
        let yb = gpu::storage(ctx, "Y", ny)?;
        let yhb = gpu::storage(ctx, "Y_h", ns)?;
        let ycb = if lstm { Some(gpu::storage(ctx, "Y_c", ns)?) } else { None };
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-rnn onnx") });
        let bufs = OnnxBuffers {
            x: xb.slice(..),
            initial_h: hb.as_ref().map(|b| b.slice(..)),
            initial_c: cb.as_ref().map(|b| b.slice(..)),
            y: Some(yb.slice(..)),
            y_h: Some(yhb.slice(..)),
            y_c: ycb.as_ref().map(|b| b.slice(..)),
        };
        self.record(&mut enc, &bufs)?;
        let mut rb = gpu::Readback::new();
        rb.copy(ctx, &mut enc, &yb, ny)?;
        rb.copy(ctx, &mut enc, &yhb, ns)?;
        if let Some(c) = &ycb {
            rb.copy(ctx, &mut enc, c, ns)?;
        }
        let keep = [Some(xb), hb, cb, Some(yb), Some(yhb), ycb].into_iter().flatten().collect();
        Ok((enc, rb, keep))
    }

    /// The read-back values as [`Outputs`] in the node's layout.
    fn finish(&self, got: Vec<Vec<f32>>) -> Result<Outputs> {
        let mut got = got.into_iter();
        let (d, h, b, t) = (self.node.attrs.direction.count(), self.node.hidden, self.batch, self.steps);
        let bm = self.node.attrs.batch_major;
        let y_shape = if bm { vec![b, t, d, h] } else { vec![t, d, b, h] };
        let s_shape = if bm { vec![b, d, h] } else { vec![d, b, h] };
        let y = Tensor::new(y_shape, got.next().unwrap_or_default())?;
        let y_h = Tensor::new(s_shape.clone(), got.next().unwrap_or_default())?;
        let y_c = got.next().map(|v| Tensor::new(s_shape, v)).transpose()?;
        Ok(Outputs { y, y_h, y_c })
    }
}
