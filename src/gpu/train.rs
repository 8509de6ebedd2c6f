//! The training kit on the GPU (engine API): embedding lookup and its deterministic gradient,
//! linear layers, losses with their gradients and metrics, global-norm clipping, Adam and SGD
//! with momentum. Ops are appended to an [`OpBuilder`] over the caller's buffers, prepared
//! once into a [`Program`] (parameter blocks uploaded, bind groups made, like a [`super::Plan`])
//! and recorded into the caller's encoder as often as wanted: no submit, no readback, no
//! `queue.write_buffer` at record time. Everything stays on the device; the caller reads back
//! the metric block (a few floats) when it wants to.
//!
//! CPU twins of every op are in [`crate::cpu::train`]; tests compare the two and check the
//! CPU gradients by finite differences.

use super::context::{Context, ErrorScope, TrackedBuffer};
use super::kernels::{CastParams, GemmParams, Kernel, TrainKernel, TrainParams, UtilParams, NONE};
use super::record::{self, ParamBlocks, Recorder};
use crate::error::{Error, Result};
use crate::precision::Precision;
use std::sync::Arc;

/// Floats in a metric block: `[loss sum, correct, rows, spare]`.
pub const METRIC_FLOATS: usize = 4;

/// Floats before the per-group slots in an optimiser state block (see shaders/train.wgsl).
const OPT_HEADER: usize = 8;

/// Where the loss scale is in an optimiser state block (0: no loss scaling).
const OPT_LOSS_SCALE: usize = 6;

/// One dispatch waiting for [`OpBuilder::build`].
struct Pending {
    kernel: Kernel,
    /// The storage precision of the kernel's `S` buffers (f32 but for the casts).
    precision: Precision,
    params: Vec<u8>,
    bufs: Vec<Option<wgpu::Buffer>>,
    groups: [u32; 3],
}

/// Collects training-kit dispatches over caller buffers; [`OpBuilder::build`] prepares them.
pub struct OpBuilder {
    ctx: Arc<Context>,
    ops: Vec<Pending>,
}

/// Prepared dispatches: record them into an encoder as often as wanted.
pub struct Program {
    ctx: Arc<Context>,
    _params: TrackedBuffer,
    _dummies: Vec<TrackedBuffer>,
    ops: Vec<(Kernel, wgpu::ComputePipeline, wgpu::BindGroup, u32, [u32; 3])>,
}

/// Workgroups for `n` items in groups of 256, folded to stay under 65,535 per dimension.
fn linear_groups(n: usize) -> [u32; 3] {
    let g = n.div_ceil(256).max(1) as u32;
    [g.min(65535), g.div_ceil(65535), 1]
}

fn check_buf(what: &str, buf: &wgpu::Buffer, elems: usize) -> Result<()> {
    if !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
        return Err(Error::Gpu(format!("{what} buffer lacks BufferUsages::STORAGE")));
    }
    if (buf.size() / 4) < elems as u64 {
        return Err(Error::ShapeMismatch { what: format!("{what} buffer (4-byte elements)"), expected: vec![elems], got: vec![(buf.size() / 4) as usize] });
    }
    Ok(())
}

fn u32_of(what: &str, v: usize) -> Result<u32> {
    if v >= 1 << 31 {
        return Err(Error::Limit(format!("{what} = {v} exceeds the kernels' 31-bit indexing")));
    }
    Ok(v as u32)
}

/// `a * b`, or [`Error::Limit`] where it overflows (sizes come from the caller).
fn mul(what: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| Error::Limit(format!("{what}: {a} x {b} overflows")))
}

/// `a + b`, or [`Error::Limit`] where it overflows.
fn add(what: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_add(b).ok_or_else(|| Error::Limit(format!("{what}: {a} + {b} overflows")))
}

fn nonempty(what: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(Error::EmptyBatch(format!("{what} is 0")));
    }
    Ok(())
}

/// A batch of token ids prepared for [`OpBuilder::embedding_forward`] and
/// [`OpBuilder::embedding_backward`]: the ids, then the table that sums each id's rows in a
/// fixed order (rows sorted by id, stable; the padding id gets no gradient).
/// Built only by [`EmbeddingIndex::new`], which checks every id.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingIndex {
    data: Vec<u32>,
    rows: usize,
    distinct: usize,
    vocab: usize,
}

impl EmbeddingIndex {
    /// Checks every id, and the padding id, against `vocab` (a typed error, not an out-of-range
    /// read or a padding id that silently matches nothing).
    pub fn new(ids: &[u32], vocab: usize, padding: Option<u32>) -> Result<Self> {
        nonempty("embedding rows", ids.len())?;
        if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
            return Err(Error::InvalidConfig(format!("token id {id} at row {i} is outside the vocabulary of {vocab}")));
        }
        if let Some(pad) = padding.filter(|&p| p as usize >= vocab) {
            return Err(Error::InvalidConfig(format!("padding id {pad} is outside the vocabulary of {vocab}")));
        }
        u32_of("embedding rows", ids.len())?;
        let mut order: Vec<u32> = (0..ids.len() as u32).filter(|&r| Some(ids[r as usize]) != padding).collect();
        order.sort_by_key(|&r| ids[r as usize]); // stable: rows of one id stay in row order
        let mut seg = Vec::new();
        let mut distinct = Vec::new();
        for (j, &r) in order.iter().enumerate() {
            let id = ids[r as usize];
            if distinct.last() != Some(&id) {
                distinct.push(id);
                seg.push(j as u32);
            }
        }
        seg.push(order.len() as u32);
        let mut data = Vec::with_capacity(ids.len() * 2 + distinct.len() * 2 + 1);
        data.extend_from_slice(ids);
        data.extend_from_slice(&seg);
        data.extend_from_slice(&distinct);
        data.extend_from_slice(&order);
        Ok(EmbeddingIndex { data, rows: ids.len(), distinct: distinct.len(), vocab })
    }

    /// `[ids (rows) | seg (distinct + 1) | distinct ids | rows sorted by id]`: upload as u32.
    pub fn data(&self) -> &[u32] {
        &self.data
    }

    /// Rows (token positions) in the batch, padding included.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Distinct non-padding ids in the batch.
    pub fn distinct(&self) -> usize {
        self.distinct
    }

    /// The vocabulary size the ids were checked against.
    pub fn vocab(&self) -> usize {
        self.vocab
    }
}

/// Class targets for [`OpBuilder::softmax_cross_entropy`], each checked to be below `classes`
/// (the CPU twin, `cpu::train::softmax_cross_entropy`, refuses the same way). Built only by
/// [`ClassTargets::new`]; [`ClassTargets::write`] puts them in the targets buffer. A target the
/// host never checked (written into the buffer some other way) and out of range gets a NaN
/// loss and gradient from the kernel, never a plausible value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassTargets {
    data: Vec<u32>,
    classes: usize,
}

impl ClassTargets {
    /// Checks every target against `classes`.
    pub fn new(targets: &[u32], classes: usize) -> Result<Self> {
        nonempty("class targets", targets.len())?;
        if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t as usize >= classes) {
            return Err(Error::InvalidConfig(format!("class target {t} at row {i} is outside 0..{classes}")));
        }
        Ok(ClassTargets { data: targets.to_vec(), classes })
    }

    /// The targets.
    pub fn data(&self) -> &[u32] {
        &self.data
    }

    /// The number of classes they were checked against.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Writes the targets into `buf` from element `offset` (queued, like `Queue::write_buffer`).
    pub fn write(&self, ctx: &Context, buf: &wgpu::Buffer, offset: usize) -> Result<()> {
        let end = add("class targets end", offset, self.data.len())?;
        check_buf("class targets", buf, end)?;
        ctx.queue.write_buffer(buf, offset as u64 * 4, bytemuck::cast_slice(&self.data));
        Ok(())
    }
}

/// A storage buffer holding u32 data (token ids, class targets, an [`EmbeddingIndex`]).
pub fn upload_u32(ctx: &Context, label: &str, data: &[u32]) -> Result<TrackedBuffer> {
    super::readback::upload_bytes(ctx, label, bytemuck::cast_slice(data))
}

/// Shape of a linear layer `y = x W^T + b` whose parameters live in one buffer: `W` `[out, in]`
/// then `b` `[out]` (PyTorch's `weight` and `bias`), and whose gradient buffer has the same layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    /// Rows of `x` and `y`.
    pub rows: usize,
    /// Input width: `x [rows, input]`.
    pub input: usize,
    /// Output width: `y [rows, output]`.
    pub output: usize,
}

impl LinearShape {
    /// Elements of `W` and `b` together: `output * input + output`.
    pub fn param_elems(&self) -> usize {
        self.output * self.input + self.output
    }
}

impl OpBuilder {
    /// An empty list of dispatches on `ctx`.
    pub fn new(ctx: &Arc<Context>) -> Self {
        OpBuilder { ctx: ctx.clone(), ops: Vec::new() }
    }

    /// The context the dispatches run on.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    fn push_train(&mut self, k: TrainKernel, p: TrainParams, bufs: [Option<&wgpu::Buffer>; 6], groups: [u32; 3]) {
        self.ops.push(Pending { kernel: Kernel::Train(k), precision: Precision::F32, params: bytemuck::bytes_of(&p).to_vec(), bufs: bufs.iter().map(|b| b.cloned()).collect(), groups });
    }

    /// Checks and appends one cast (see [`OpBuilder::to_stored`]).
    #[allow(clippy::too_many_arguments)]
    fn cast(&mut self, kernel: Kernel, precision: Precision, src: &wgpu::Buffer, (src_off, src_ld): (usize, usize), dst: &wgpu::Buffer, (dst_off, dst_ld): (usize, usize), rows: usize, width: usize, scale: Option<(&Optimizer, bool)>) -> Result<()> {
        let n = mul("cast elements", rows, width)?;
        if n == 0 {
            return Ok(());
        }
        self.ctx.check_precision(precision)?;
        if src == dst || scale.is_some_and(|(o, _)| o.state_buffer() == dst) {
            return Err(Error::BufferAliasing("a cast's target is its source or the optimiser's state".into()));
        }
        if src_ld < width || dst_ld < width {
            return Err(Error::InvalidConfig(format!("cast of width {width} with row strides {src_ld} and {dst_ld}")));
        }
        let end = |off: usize, ld: usize| add("cast end", off, add("cast end", mul("cast end", rows - 1, ld)?, width)?);
        let (src_end, dst_end) = (end(src_off, src_ld)?, end(dst_off, dst_ld)?);
        u32_of("cast elements", src_end.max(dst_end))?;
        let (f32_end, stored, stored_end) = if kernel == Kernel::CastToStored { (src_end, dst, dst_end) } else { (dst_end, src, src_end) };
        let f32_buf = if kernel == Kernel::CastToStored { src } else { dst };
        check_buf("cast f32 side", f32_buf, f32_end)?;
        let bytes = (stored_end * precision.bytes()).next_multiple_of(4) as u64;
        if !stored.usage().contains(wgpu::BufferUsages::STORAGE) || stored.size() < bytes {
            return Err(Error::ShapeMismatch { what: format!("cast {precision} side (bytes)"), expected: vec![bytes as usize], got: vec![stored.size() as usize] });
        }
        let p = CastParams {
            rows: rows as u32,
            width: width as u32,
            src_off: src_off as u32,
            src_ld: src_ld as u32,
            dst_off: dst_off as u32,
            dst_ld: dst_ld as u32,
            scale_off: if scale.is_some() { OPT_LOSS_SCALE as u32 } else { NONE },
            invert: scale.is_some_and(|(_, inv)| inv) as u32,
        };
        let state = scale.map(|(o, _)| o.state_buffer().clone());
        let bufs = if kernel == Kernel::CastToStored {
            vec![Some(src.clone()), None, None, Some(dst.clone()), state]
        } else {
            vec![None, Some(src.clone()), Some(dst.clone()), None, state]
        };
        self.ops.push(Pending { kernel, precision, params: bytemuck::bytes_of(&p).to_vec(), bufs, groups: linear_groups(n) });
        Ok(())
    }

    /// A `[rows, width]` block of f32 `src` (at `(offset, row stride)`) into `dst`, which
    /// stores `precision` (f16: rounded by the device, to nearest even on lavapipe), times the optimiser's loss scale when
    /// `scale` is given (a loss gradient entering a mixed-precision layer). Master weights
    /// to their f16 copy, an f32 layer input to an f16 one.
    #[allow(clippy::too_many_arguments)]
    pub fn to_stored(&mut self, precision: Precision, src: &wgpu::Buffer, src_at: (usize, usize), dst: &wgpu::Buffer, dst_at: (usize, usize), rows: usize, width: usize, scale: Option<&Optimizer>) -> Result<()> {
        self.cast(Kernel::CastToStored, precision, src, src_at, dst, dst_at, rows, width, scale.map(|o| (o, false)))
    }

    /// The inverse of [`OpBuilder::to_stored`]: `src` stored in `precision` into f32 `dst`,
    /// divided by the optimiser's loss scale when `unscale` is given (a mixed-precision
    /// layer's gradients going to the f32 master weights).
    #[allow(clippy::too_many_arguments)]
    pub fn to_f32(&mut self, precision: Precision, src: &wgpu::Buffer, src_at: (usize, usize), dst: &wgpu::Buffer, dst_at: (usize, usize), rows: usize, width: usize, unscale: Option<&Optimizer>) -> Result<()> {
        self.cast(Kernel::CastToF32, precision, src, src_at, dst, dst_at, rows, width, unscale.map(|o| (o, true)))
    }

    /// `out[r, :] = table[ids[r], :]` for the index's rows: `table` `[vocab, dim]`, `out` `[rows, dim]`.
    pub fn embedding_forward(&mut self, table: &wgpu::Buffer, index_buf: &wgpu::Buffer, index: &EmbeddingIndex, dim: usize, out: &wgpu::Buffer) -> Result<()> {
        nonempty("embedding dim", dim)?;
        let (n, table_elems) = (mul("embedding elements", index.rows, dim)?, mul("embedding table", index.vocab, dim)?);
        u32_of("embedding elements", n.max(table_elems))?;
        check_buf("embedding table", table, table_elems)?;
        check_buf("embedding index", index_buf, index.data.len())?;
        check_buf("embedding output", out, n)?;
        let p = TrainParams { n: index.rows as u32, width: dim as u32, extra: u32_of("vocabulary", index.vocab)?, ..Default::default() };
        self.push_train(TrainKernel::EmbedForward, p, [Some(table), None, Some(index_buf), Some(out), None, None], linear_groups(n));
        Ok(())
    }

    /// The table gradient from the rows' gradients `grad_rows` `[rows, dim]`: `grad_table` is
    /// zeroed, then each id's row gets the sum of its rows in row order (padding: zero).
    pub fn embedding_backward(&mut self, grad_rows: &wgpu::Buffer, index_buf: &wgpu::Buffer, index: &EmbeddingIndex, dim: usize, grad_table: &wgpu::Buffer) -> Result<()> {
        nonempty("embedding dim", dim)?;
        let (n, table_elems) = (mul("embedding elements", index.rows, dim)?, mul("embedding table", index.vocab, dim)?);
        u32_of("embedding elements", n.max(table_elems))?;
        check_buf("embedding row gradient", grad_rows, n)?;
        check_buf("embedding index", index_buf, index.data.len())?;
        check_buf("embedding table gradient", grad_table, table_elems)?;
        self.fill(grad_table, 0, table_elems, 0.0)?;
        if index.distinct > 0 {
            let vocab = u32_of("vocabulary", index.vocab)?;
            let p = TrainParams { n: index.rows as u32, width: dim as u32, idx_off: index.rows as u32, count: index.distinct as u32, extra: vocab, ..Default::default() };
            self.push_train(TrainKernel::EmbedBackward, p, [Some(grad_rows), None, Some(index_buf), Some(grad_table), None, None], linear_groups(index.distinct * dim));
        }
        Ok(())
    }

    /// `buf[offset .. offset + n] = value`.
    pub fn fill(&mut self, buf: &wgpu::Buffer, offset: usize, n: usize, value: f32) -> Result<()> {
        check_buf("fill target", buf, add("fill end", offset, n)?)?;
        if n == 0 {
            return Ok(());
        }
        let p = TrainParams { n: u32_of("fill length", n)?, out_off: u32_of("fill offset", offset)?, f0: value, ..Default::default() };
        self.push_train(TrainKernel::Fill, p, [None, None, None, Some(buf), None, None], linear_groups(n));
        Ok(())
    }

    /// `blocks` blocks `[rows, width]` (such as `h_n`'s `[directions, B, H]`) as rows
    /// `[rows, blocks * width]`, e.g. the two final states of a bidirectional layer side by side.
    pub fn blocks_to_rows(&mut self, src: &wgpu::Buffer, src_offset: usize, blocks: usize, rows: usize, width: usize, dst: &wgpu::Buffer) -> Result<()> {
        let n = mul("blocks_to_rows elements", mul("blocks_to_rows elements", blocks, rows)?, width)?;
        nonempty("rows", n)?;
        u32_of("elements", add("blocks_to_rows source end", src_offset, n)?)?;
        check_buf("blocks_to_rows source", src, src_offset + n)?;
        check_buf("blocks_to_rows target", dst, n)?;
        let p = TrainParams { n: rows as u32, width: width as u32, count: blocks as u32, a_off: u32_of("offset", src_offset)?, ..Default::default() };
        self.push_train(TrainKernel::BlocksToRows, p, [Some(src), None, None, Some(dst), None, None], linear_groups(n));
        Ok(())
    }

    /// The inverse of [`OpBuilder::blocks_to_rows`] (for the gradient), written at `dst_offset`.
    pub fn rows_to_blocks(&mut self, src: &wgpu::Buffer, blocks: usize, rows: usize, width: usize, dst: &wgpu::Buffer, dst_offset: usize) -> Result<()> {
        let n = mul("rows_to_blocks elements", mul("rows_to_blocks elements", blocks, rows)?, width)?;
        nonempty("rows", n)?;
        u32_of("elements", add("rows_to_blocks target end", dst_offset, n)?)?;
        check_buf("rows_to_blocks source", src, n)?;
        check_buf("rows_to_blocks target", dst, dst_offset + n)?;
        let p = TrainParams { n: rows as u32, width: width as u32, count: blocks as u32, out_off: u32_of("offset", dst_offset)?, ..Default::default() };
        self.push_train(TrainKernel::RowsToBlocks, p, [Some(src), None, None, Some(dst), None, None], linear_groups(n));
        Ok(())
    }

    /// Inverted dropout of `n` elements: `dst = src * mask / (1 - p)`, the mask drawn from
    /// `seed` and, when given, the step counter at `counter` (an optimiser's state buffer,
    /// offset 0: its step count, so a Program built once draws a new mask each step). The
    /// same call on the gradient (same seed and counter value) is the backward.
    /// [`crate::cpu::train::dropout_mask`] is the CPU twin of the mask.
    pub fn dropout(&mut self, src: &wgpu::Buffer, dst: &wgpu::Buffer, n: usize, p: f32, seed: u32, counter: Option<&wgpu::Buffer>) -> Result<()> {
        nonempty("dropout length", n)?;
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidConfig(format!("dropout probability must be in [0, 1), got {p}")));
        }
        check_buf("dropout input", src, n)?;
        check_buf("dropout output", dst, n)?;
        let t = TrainParams {
            n: u32_of("dropout length", n)?,
            width: crate::cpu::train::dropout_threshold(p),
            idx_off: seed,
            count: counter.is_some() as u32,
            f1: 1.0 / (1.0 - p),
            ..Default::default()
        };
        self.push_train(TrainKernel::Dropout, t, [Some(src), None, None, Some(dst), None, counter], linear_groups(n));
        Ok(())
    }

    fn push_gemm(&mut self, p: GemmParams, a: &wgpu::Buffer, b: &wgpu::Buffer, c: &wgpu::Buffer, bias: Option<&wgpu::Buffer>) {
        let bufs = vec![Some(a.clone()), Some(b.clone()), Some(c.clone()), Some(bias.unwrap_or(b).clone()), Some(b.clone()), Some(a.clone())];
        let kernel = p.kernel(self.ctx.subgroup_kernels());
        self.ops.push(Pending { kernel, precision: Precision::F32, params: bytemuck::bytes_of(&p).to_vec(), bufs, groups: p.groups(kernel) });
    }

    fn check_linear(s: &LinearShape) -> Result<()> {
        nonempty("linear rows", s.rows)?;
        nonempty("linear input", s.input)?;
        nonempty("linear output", s.output)?;
        let params = add("linear parameters", mul("linear parameters", s.output, s.input)?, s.output)?;
        u32_of("linear elements", mul("linear elements", s.rows, s.input.max(s.output))?.max(params))?;
        Ok(())
    }

    /// `y = x W^T + b`: `x` `[rows, in]`, `params` `[W | b]`, `y` `[rows, out]`.
    pub fn linear_forward(&mut self, s: LinearShape, x: &wgpu::Buffer, params: &wgpu::Buffer, y: &wgpu::Buffer) -> Result<()> {
        Self::check_linear(&s)?;
        check_buf("linear input", x, s.rows * s.input)?;
        check_buf("linear parameters", params, s.param_elems())?;
        check_buf("linear output", y, s.rows * s.output)?;
        let (m, n, k) = (s.rows as u32, s.output as u32, s.input as u32);
        let p = GemmParams { m, n, k, a_rs: k, a_cs: 1, b_rs: 1, b_cs: k, ldc: n, bias_off: n * k, alpha: 1.0, ..Default::default() };
        self.push_gemm(p, x, params, y, Some(params));
        Ok(())
    }

    /// Gradients of [`OpBuilder::linear_forward`] from `dy` `[rows, out]`: `grad_params` `[dW | db]`
    /// is overwritten; `dx` `[rows, in]` is written when given.
    pub fn linear_backward(&mut self, s: LinearShape, x: &wgpu::Buffer, params: &wgpu::Buffer, dy: &wgpu::Buffer, grad_params: &wgpu::Buffer, dx: Option<&wgpu::Buffer>) -> Result<()> {
        Self::check_linear(&s)?;
        check_buf("linear input", x, s.rows * s.input)?;
        check_buf("linear parameters", params, s.param_elems())?;
        check_buf("linear output gradient", dy, s.rows * s.output)?;
        check_buf("linear parameter gradient", grad_params, s.param_elems())?;
        let (r, i, o) = (s.rows as u32, s.input as u32, s.output as u32);
        // dW = dy^T x
        let p = GemmParams { m: o, n: i, k: r, a_rs: 1, a_cs: o, b_rs: i, b_cs: 1, ldc: i, bias_off: NONE, alpha: 1.0, ..Default::default() };
        self.push_gemm(p, dy, x, grad_params, None);
        // db = column sums of dy (row order)
        let u = UtilParams { rows: r, width: o, src_off: 0, src_ld: o, dst_off: o * i, ..Default::default() };
        self.ops.push(Pending {
            kernel: Kernel::ColSum,
            precision: Precision::F32,
            params: bytemuck::bytes_of(&u).to_vec(),
            bufs: vec![Some(dy.clone()), None, None, Some(grad_params.clone())],
            groups: linear_groups(s.output),
        });
        if let Some(dx) = dx {
            check_buf("linear input gradient", dx, s.rows * s.input)?;
            // dx = dy W
            let p = GemmParams { m: r, n: i, k: o, a_rs: o, a_cs: 1, b_rs: i, b_cs: 1, ldc: i, bias_off: NONE, alpha: 1.0, ..Default::default() };
            self.push_gemm(p, dy, params, dx, None);
        }
        Ok(())
    }

    fn check_metrics(metrics: &wgpu::Buffer, offset: usize) -> Result<u32> {
        check_buf("metric block", metrics, add("metric block end", offset, METRIC_FLOATS)?)?;
        u32_of("metric offset", offset)
    }

    /// Binary cross-entropy with logits, mean over `rows`: `grad` = d(mean loss)/d(logits);
    /// adds `[loss sum, correct, rows]` to the metric block at `metrics_offset`.
    pub fn bce_with_logits(&mut self, rows: usize, logits: &wgpu::Buffer, targets: &wgpu::Buffer, grad: &wgpu::Buffer, metrics: &wgpu::Buffer, metrics_offset: usize) -> Result<()> {
        self.pointwise_loss(TrainKernel::BceLogits, rows, logits, targets, grad, metrics, metrics_offset)
    }

    /// Mean squared error over `rows` values, as [`OpBuilder::bce_with_logits`] (correct: 0).
    pub fn mse(&mut self, rows: usize, pred: &wgpu::Buffer, targets: &wgpu::Buffer, grad: &wgpu::Buffer, metrics: &wgpu::Buffer, metrics_offset: usize) -> Result<()> {
        self.pointwise_loss(TrainKernel::Mse, rows, pred, targets, grad, metrics, metrics_offset)
    }

    #[allow(clippy::too_many_arguments)]
    fn pointwise_loss(&mut self, k: TrainKernel, rows: usize, x: &wgpu::Buffer, y: &wgpu::Buffer, grad: &wgpu::Buffer, metrics: &wgpu::Buffer, metrics_offset: usize) -> Result<()> {
        nonempty("loss rows", rows)?;
        check_buf("loss input", x, rows)?;
        check_buf("loss targets", y, rows)?;
        check_buf("loss gradient", grad, rows)?;
        let so = Self::check_metrics(metrics, metrics_offset)?;
        let p = TrainParams { n: u32_of("rows", rows)?, state_off: so, f0: 1.0 / rows as f32, ..Default::default() };
        self.push_train(k, p, [Some(x), Some(y), None, Some(grad), None, Some(metrics)], [1, 1, 1]);
        Ok(())
    }

    /// Softmax cross-entropy, mean over `rows`: `logits` `[rows, classes]`, `targets` u32 class
    /// ids at `targets_offset` (write them with [`ClassTargets`], which checks them; a target
    /// out of range gives that row a NaN loss and gradient), `grad` as `logits`,
    /// `scratch` `2 * rows` floats; adds `[loss sum, correct (arg-max), rows]` to the metric block.
    #[allow(clippy::too_many_arguments)]
    pub fn softmax_cross_entropy(
        &mut self,
        rows: usize,
        classes: usize,
        logits: &wgpu::Buffer,
        targets: &wgpu::Buffer,
        targets_offset: usize,
        grad: &wgpu::Buffer,
        scratch: &wgpu::Buffer,
        metrics: &wgpu::Buffer,
        metrics_offset: usize,
    ) -> Result<()> {
        nonempty("loss rows", rows)?;
        nonempty("classes", classes)?;
        u32_of("logits", mul("logits", rows, classes)?)?;
        u32_of("target end", add("class targets end", targets_offset, rows)?)?;
        check_buf("logits", logits, rows * classes)?;
        check_buf("class targets", targets, targets_offset + rows)?;
        check_buf("logit gradient", grad, rows * classes)?;
        check_buf("loss scratch", scratch, 2 * rows)?;
        let so = Self::check_metrics(metrics, metrics_offset)?;
        let p = TrainParams {
            n: rows as u32,
            width: classes as u32,
            idx_off: u32_of("target offset", targets_offset)?,
            f0: 1.0 / rows as f32,
            ..Default::default()
        };
        self.push_train(TrainKernel::SoftmaxCe, p, [Some(logits), None, Some(targets), Some(grad), Some(scratch), None], linear_groups(rows));
        let p = TrainParams { n: rows as u32, state_off: so, ..Default::default() };
        self.push_train(TrainKernel::RowMetrics, p, [Some(scratch), None, None, None, None, Some(metrics)], [1, 1, 1]);
        Ok(())
    }

    /// Prepares the dispatches: parameter blocks uploaded once, pipelines and bind groups made.
    pub fn build(self) -> Result<Program> {
        let ctx = self.ctx.clone();
        let _serial = ctx.exclusive();
        let mut blocks = ParamBlocks::new(&ctx);
        let offsets: Vec<u32> = self.ops.iter().map(|op| blocks.push_bytes(&op.params)).collect();
        let params = blocks.upload(&ctx, "training-kit parameters")?;
        // Placeholders for unused bindings: [0] for read-only ones, [1..] for read-write ones
        // (a read-write binding must not alias any other binding of the dispatch).
        let dummies = (0..4).map(|i| ctx.buffer(&format!("placeholder {i}"), 16, super::readback::storage_usage())).collect::<Result<Vec<_>>>()?;
        let scope = ErrorScope::push(&ctx.device);
        let mut ops = Vec::with_capacity(self.ops.len());
        for (op, &offset) in self.ops.iter().zip(&offsets) {
            let rw = op.kernel.family().storage_bindings();
            let mut next_dummy = 0;
            let bufs: Vec<wgpu::BufferSlice<'_>> = op
                .bufs
                .iter()
                .enumerate()
                .map(|(j, b)| match b {
                    Some(b) => b.slice(..),
                    None if rw[j] => {
                        next_dummy += 1;
                        dummies[next_dummy].slice(..)
                    }
                    None => dummies[0].slice(..),
                })
                .collect();
            let bg = match record::bind_group(&ctx, op.kernel, &params, &bufs) {
                Ok(bg) => bg,
                Err(e) => {
                    scope.pop_on(&ctx)?;
                    return Err(e);
                }
            };
            ops.push((op.kernel, ctx.pipeline_at(op.kernel, op.precision)?, bg, offset, op.groups));
        }
        scope.pop_on(&ctx)?;
        Ok(Program { ctx: self.ctx, _params: params, _dummies: dummies, ops })
    }
}

impl OpBuilder {
    /// The convenience path: builds, records into a fresh encoder, submits once and reads
    /// back the first `elems` floats of each buffer in `reads`.
    pub fn run(self, reads: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<f32>>> {
        let ctx = self.ctx.clone();
        let prog = self.build()?;
        submit_and_read(&ctx, Some(&prog), reads, Precision::F32)
    }
}

impl Program {
    /// Records every dispatch, in order, into one compute pass of `encoder`.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut rec = Recorder::begin(encoder, "wgpu-rnn training kit", None);
        for (kernel, pipeline, bg, offset, groups) in &self.ops {
            rec.dispatch(*kernel, pipeline, bg, *offset, *groups);
        }
    }

    /// Dispatches the program records.
    pub fn dispatches(&self) -> usize {
        self.ops.len()
    }

    /// The context the program was built on.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}

/// Which update rule an [`Optimizer`] applies (PyTorch's `Adam` and `SGD(momentum=...)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    /// Adam (PyTorch's form, no weight decay).
    Adam {
        /// Learning rate.
        lr: f32,
        /// Decay of the first moment.
        beta1: f32,
        /// Decay of the second moment.
        beta2: f32,
        /// Added to the second moment's square root.
        eps: f32,
    },
    /// SGD with momentum (PyTorch's form, no dampening): `buf = momentum * buf + g; w -= lr * buf`.
    Sgd {
        /// Learning rate.
        lr: f32,
        /// Momentum (0: plain SGD).
        momentum: f32,
    },
}

impl OptimizerKind {
    /// PyTorch's defaults: betas (0.9, 0.999), eps 1e-8.
    pub fn adam(lr: f32) -> Self {
        OptimizerKind::Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }

    /// The learning rate.
    pub fn lr(&self) -> f32 {
        match *self {
            OptimizerKind::Adam { lr, .. } | OptimizerKind::Sgd { lr, .. } => lr,
        }
    }

    /// The same rule with learning rate `lr` (checked like the rest: finite, not negative).
    pub fn with_lr(self, lr: f32) -> Result<Self> {
        let mut k = self;
        match &mut k {
            OptimizerKind::Adam { lr: l, .. } | OptimizerKind::Sgd { lr: l, .. } => *l = lr,
        }
        k.validate()?;
        Ok(k)
    }

    fn validate(&self) -> Result<()> {
        let ok = match *self {
            OptimizerKind::Adam { lr, beta1, beta2, eps } => lr.is_finite() && lr >= 0.0 && (0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2) && eps.is_finite() && eps >= 0.0,
            OptimizerKind::Sgd { lr, momentum } => lr.is_finite() && lr >= 0.0 && momentum.is_finite() && momentum >= 0.0,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidConfig(format!("optimiser settings out of range: {self:?}")))
        }
    }
}

/// PyTorch's `CosineAnnealingLR` with `eta_min = 0` and `T_max = total`, in closed form: the
/// learning rate of step `step` (0-based; the scheduler stepped once after each optimiser
/// step), `base * (1 + cos(pi * step / total)) / 2`. From `base` at step 0 down to 0 at
/// `total`; past `total` it stays 0 (PyTorch would climb again), and `total == 0` gives `base`.
pub fn cosine_lr(base: f32, step: usize, total: usize) -> f32 {
    if total == 0 {
        return base;
    }
    let x = step.min(total) as f64 / total as f64;
    (base as f64 * 0.5 * (1.0 + (std::f64::consts::PI * x).cos())) as f32
}

/// One parameter group: a parameter buffer and its gradient buffer (same layout), first `elems`.
pub struct ParamGroup<'a> {
    /// The parameters, f32 (updated in place).
    pub params: &'a wgpu::Buffer,
    /// Their gradients, same layout (read; scaled by the clipping).
    pub grads: &'a wgpu::Buffer,
    /// Elements of the group, from element 0 of each buffer.
    pub elems: usize,
}

/// Optimiser state on the device: moments per group and one state block (step count,
/// bias-correction powers, the step's clipping scale and gradient norm, skipped steps).
pub struct Optimizer {
    kind: OptimizerKind,
    clip: Option<f32>,
    /// Dynamic loss scaling: the scale doubles after this many finite steps in a row (0: off).
    growth_interval: u32,
    groups: Vec<(wgpu::Buffer, wgpu::Buffer, usize, TrackedBuffer)>,
    state: TrackedBuffer,
}

/// What [`Optimizer::read_state`] returns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimizerState {
    /// Steps taken (skipped ones not counted).
    pub steps: f32,
    /// The last step's global gradient norm, before clipping.
    pub grad_norm: f32,
    /// Steps skipped because the gradient norm was not finite (with loss scaling, the
    /// overflows: each also halved the scale).
    pub skipped: f32,
    /// The loss scale (0 without loss scaling: [`Optimizer::with_loss_scaling`]).
    pub loss_scale: f32,
}

impl Optimizer {
    /// `clip`: the largest global gradient norm (PyTorch's `clip_grad_norm_`), or none.
    pub fn new(ctx: &Arc<Context>, kind: OptimizerKind, clip: Option<f32>, groups: &[ParamGroup<'_>]) -> Result<Self> {
        kind.validate()?;
        if let Some(c) = clip {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::InvalidConfig(format!("clipping norm must be positive, got {c}")));
            }
        }
        nonempty("parameter groups", groups.len())?;
        let _serial = ctx.exclusive();
        let per = match kind {
            OptimizerKind::Adam { .. } => 2,
            OptimizerKind::Sgd { .. } => 1,
        };
        let mut gs = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            nonempty("parameter group size", g.elems)?;
            check_buf(&format!("parameter group {i}"), g.params, g.elems)?;
            check_buf(&format!("gradient group {i}"), g.grads, g.elems)?;
            u32_of("parameter group size", mul("parameter group size", per, g.elems)?)?;
            let moments = super::readback::upload(ctx, "optimiser moments", &vec![0.0; per * g.elems])?;
            gs.push((g.params.clone(), g.grads.clone(), g.elems, moments));
        }
        let state = super::readback::upload(ctx, "optimiser state", &vec![0.0; OPT_HEADER + groups.len()])?;
        Ok(Optimizer { kind, clip, growth_interval: 0, groups: gs, state })
    }

    /// Dynamic loss scaling for mixed-precision training (as PyTorch's `GradScaler`): the
    /// loss gradient entering an f16 layer is multiplied by the scale
    /// ([`OpBuilder::to_stored`] with the optimiser), the layer's gradients divided by it on
    /// their way to f32 ([`OpBuilder::to_f32`]); a step whose gradient norm is not finite (an
    /// f16 overflow) is skipped and counted and halves the scale (not below 1), and
    /// `growth_interval` finite steps in a row double it (up to 2^24). All on the device.
    pub fn with_loss_scaling(mut self, ctx: &Context, initial: f32, growth_interval: u32) -> Result<Self> {
        if !(initial.is_finite() && initial >= 1.0) || growth_interval == 0 {
            return Err(Error::InvalidConfig(format!("loss scale {initial} (at least 1) with growth interval {growth_interval} (positive)")));
        }
        let mut head = read_f32(ctx, &self.state, OPT_HEADER)?;
        head[OPT_LOSS_SCALE] = initial;
        head[OPT_LOSS_SCALE + 1] = 0.0;
        super::readback::write(ctx, &self.state, bytemuck::cast_slice(&head))?;
        self.growth_interval = growth_interval;
        Ok(self)
    }

    /// The update rule and its current learning rate.
    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// Sets the learning rate the steps recorded from now on use (a schedule's: see
    /// [`cosine_lr`]); the moments and the step count are kept. Steps already recorded keep
    /// the rate they were recorded with.
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        self.kind = self.kind.with_lr(lr)?;
        Ok(())
    }

    /// Appends one step: the global gradient norm, clipping, and the update of every group.
    pub fn record_step(&self, b: &mut OpBuilder) -> Result<()> {
        for (i, (_, grads, elems, _)) in self.groups.iter().enumerate() {
            let p = TrainParams { n: *elems as u32, state_off: (OPT_HEADER + i) as u32, ..Default::default() };
            b.push_train(TrainKernel::SumSq, p, [Some(grads), None, None, None, None, Some(&self.state)], [1, 1, 1]);
        }
        let (f1, f2) = match self.kind {
            OptimizerKind::Adam { beta1, beta2, .. } => (beta1, beta2),
            OptimizerKind::Sgd { .. } => (0.0, 0.0),
        };
        let p = TrainParams { count: self.groups.len() as u32, f0: self.clip.unwrap_or(0.0), f1, f2, f3: self.growth_interval as f32, ..Default::default() };
        b.push_train(TrainKernel::OptBegin, p, [None, None, None, None, None, Some(&self.state)], [1, 1, 1]);
        for (params, grads, elems, moments) in &self.groups {
            let (k, p) = match self.kind {
                OptimizerKind::Adam { lr, beta1, beta2, eps } => (TrainKernel::Adam, TrainParams { n: *elems as u32, f0: lr, f1: beta1, f2: beta2, f3: eps, ..Default::default() }),
                OptimizerKind::Sgd { lr, momentum } => (TrainKernel::Sgd, TrainParams { n: *elems as u32, f0: lr, f1: momentum, ..Default::default() }),
            };
            b.push_train(k, p, [Some(grads), None, None, Some(params), Some(moments), Some(&self.state)], linear_groups(*elems));
        }
        Ok(())
    }

    /// The state block buffer (see shaders/train.wgsl for its layout).
    pub fn state_buffer(&self) -> &wgpu::Buffer {
        &self.state
    }

    /// The whole optimiser state (state block, then each group's moments), for checkpoints.
    pub fn export(&self, ctx: &Context) -> Result<Vec<Vec<f32>>> {
        let mut reads = vec![(&*self.state, OPT_HEADER + self.groups.len())];
        reads.extend(self.groups.iter().map(|(_, _, _, m)| (&**m, (m.size() / 4) as usize)));
        submit_and_read(ctx, None, &reads, Precision::F32)
    }

    /// Restores what [`Optimizer::export`] returned (same groups and kind, else a typed error).
    pub fn import(&self, ctx: &Context, parts: &[Vec<f32>]) -> Result<()> {
        if parts.len() != self.groups.len() + 1 {
            return Err(Error::ShapeMismatch { what: "optimiser state parts".into(), expected: vec![self.groups.len() + 1], got: vec![parts.len()] });
        }
        let bufs = std::iter::once(&self.state).chain(self.groups.iter().map(|g| &g.3));
        for (i, (buf, data)) in bufs.zip(parts).enumerate() {
            let want = if i == 0 { OPT_HEADER + self.groups.len() } else { (buf.size() / 4) as usize };
            if data.len() != want {
                return Err(Error::ShapeMismatch { what: format!("optimiser state part {i}"), expected: vec![want], got: vec![data.len()] });
            }
            if !data.iter().all(|v| v.is_finite()) {
                return Err(Error::NonFinite(format!("optimiser state part {i}")));
            }
            if i == 0 && self.growth_interval > 0 && data[OPT_LOSS_SCALE] < 1.0 {
                return Err(Error::InvalidConfig("the optimiser state has no loss scale, and this optimiser scales the loss".into()));
            }
            super::readback::write(ctx, buf, bytemuck::cast_slice(data))?;
        }
        Ok(())
    }

    /// Reads the step count, last gradient norm and skipped steps (one submit and wait).
    pub fn read_state(&self, ctx: &Context) -> Result<OptimizerState> {
        let s = read_f32(ctx, &self.state, OPT_HEADER)?;
        Ok(OptimizerState { steps: s[0], grad_norm: s[4], skipped: s[5], loss_scale: s[OPT_LOSS_SCALE] })
    }
}

/// Reads `n` floats from the start of `buf` (one submit and wait): metric blocks, losses.
pub fn read_f32(ctx: &Context, buf: &wgpu::Buffer, n: usize) -> Result<Vec<f32>> {
    read_stored(ctx, buf, n, Precision::F32)
}

/// [`read_f32`] of `n` values stored in `precision`, widened to f32: e.g. the weights of a
/// model stored in f16.
pub fn read_stored(ctx: &Context, buf: &wgpu::Buffer, n: usize, precision: Precision) -> Result<Vec<f32>> {
    submit_and_read(ctx, None, &[(buf, n)], precision)?.pop().ok_or_else(|| Error::Gpu("readback returned nothing".into()))
}

/// One encoder: `prog` (if any), then copies of the first `elems` values (stored in
/// `precision`) of each buffer in `reads`; one submit and wait; their contents in order,
/// widened to f32.
fn submit_and_read(ctx: &Context, prog: Option<&Program>, reads: &[(&wgpu::Buffer, usize)], precision: Precision) -> Result<Vec<Vec<f32>>> {
    let _serial = ctx.exclusive();
    ctx.check_alive()?;
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("training kit") });
    if let Some(p) = prog {
        p.record(&mut enc);
    }
    let mut rb = super::readback::Readback::new();
    for (b, n) in reads {
        rb.copy_stored(ctx, &mut enc, b, *n, precision)?;
    }
    rb.submit_and_read(ctx, enc)
}
