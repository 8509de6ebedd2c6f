//! A standalone GEMM on the GPU (engine API): `C = alpha * op(A) op(B) + beta * C (+ bias)`
//! over dense row-major caller buffers, recorded into a caller's encoder. The same kernel
//! computes the input projections and weight gradients of the recurrent layers; the
//! benchmark uses it for the adapter's GEMM ceiling.

use super::context::{Context, TrackedBuffer};
use super::kernels::{GemmParams, Kernel, NONE};
use super::record::{self, ParamBlocks, Recorder};
use crate::error::{Error, Result};
use std::sync::Arc;

/// What a [`MatMul`] computes. A is `[m, k]` (`[k, m]` when `trans_a`), B is `[k, n]`
/// (`[n, k]` when `trans_b`), C and the optional bias row `[n]` are `[m, n]` / `[n]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatMulDesc {
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// Inner dimension.
    pub k: usize,
    /// A is stored `[k, m]` (transposed).
    pub trans_a: bool,
    /// B is stored `[n, k]` (transposed).
    pub trans_b: bool,
    /// Scale of the product: `C = alpha op(A) op(B) + beta C + bias`.
    pub alpha: f32,
    /// Scale of C's previous value; C is not read when 0 (NaN-safe).
    pub beta: f32,
    /// Whether a bias row `[n]` is added to every row of C.
    pub bias: bool,
}

/// A prepared GEMM.
pub struct MatMul {
    ctx: Arc<Context>,
    desc: MatMulDesc,
    params: TrackedBuffer,
    kernel: Kernel,
    pipeline: wgpu::ComputePipeline,
    groups: [u32; 3],
}

impl MatMul {
    /// Prepares the product on `ctx`: parameters uploaded, pipeline built. `InvalidConfig` for an empty shape, `Limit` past the device's workgroup counts or 31-bit indexing.
    pub fn new(ctx: &Arc<Context>, desc: MatMulDesc) -> Result<Self> {
        let _serial = ctx.exclusive();
        let MatMulDesc { m, n, k, .. } = desc;
        if m == 0 || n == 0 || k == 0 {
            return Err(Error::InvalidConfig(format!("empty GEMM {m}x{n}x{k}")));
        }
        let max = ctx.limits().max_compute_workgroups_per_dimension as usize;
        if m.div_ceil(8) > max || n.div_ceil(256) > max {
            return Err(Error::Limit(format!("GEMM {m}x{n} exceeds {max} workgroups per dimension")));
        }
        for v in [m * k, k * n, m * n] {
            if v >= 1 << 31 {
                return Err(Error::Limit("GEMM operand exceeds 31-bit indexing".into()));
            }
        }
        let p = GemmParams {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            a_off: 0,
            a_rs: if desc.trans_a { 1 } else { k as u32 },
            a_cs: if desc.trans_a { m as u32 } else { 1 },
            b_off: 0,
            b_rs: if desc.trans_b { 1 } else { n as u32 },
            b_cs: if desc.trans_b { k as u32 } else { 1 },
            c_off: 0,
            ldc: n as u32,
            bias_off: if desc.bias { 0 } else { NONE },
            alpha: desc.alpha,
            beta: desc.beta,
            ..Default::default()
        };
        let mut blocks = ParamBlocks::new(ctx);
        blocks.push(&p);
        let params = blocks.upload(ctx, "gemm parameters")?;
        let kernel = p.kernel(ctx.subgroup_kernels());
        Ok(MatMul { ctx: ctx.clone(), desc, params, kernel, pipeline: ctx.pipeline(kernel)?, groups: p.groups(kernel) })
    }

    /// The kernel variant that runs the product.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Floating-point operations of one product.
    pub fn flops(&self) -> f64 {
        2.0 * self.desc.m as f64 * self.desc.n as f64 * self.desc.k as f64
    }

    /// Records `reps` products (one compute pass) into `encoder`.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, a: &wgpu::Buffer, b: &wgpu::Buffer, c: &wgpu::Buffer, bias: Option<&wgpu::Buffer>, reps: usize) -> Result<()> {
        let d = &self.desc;
        let need = |what: &str, buf: &wgpu::Buffer, elems: usize| {
            if !buf.usage().contains(wgpu::BufferUsages::STORAGE) {
                Err(Error::Gpu(format!("GEMM {what} buffer lacks BufferUsages::STORAGE")))
            } else if buf.size() < (elems * 4) as u64 {
                Err(Error::ShapeMismatch { what: format!("GEMM {what} (f32 elements)"), expected: vec![elems], got: vec![(buf.size() / 4) as usize] })
            } else {
                Ok(())
            }
        };
        need("A", a, d.m * d.k)?;
        need("B", b, d.k * d.n)?;
        need("C", c, d.m * d.n)?;
        match (bias, d.bias) {
            (Some(bb), true) => need("bias", bb, d.n)?,
            (None, false) => {}
            _ => return Err(Error::InvalidConfig("bias buffer given iff MatMulDesc::bias".into())),
        }
        // Bindings: A, B, C, the bias (B when none), B and A again as vec4s.
        let scope = super::context::ErrorScope::push(&self.ctx.device);
        let bg = record::bind_group(&self.ctx, self.kernel, &self.params, &[a, b, c, bias.unwrap_or(b), b, a].map(|x| x.slice(..)));
        scope.pop()?;
        let bg = bg?;
        let mut rec = Recorder::begin(encoder, "wgpu-rnn gemm", None);
        for _ in 0..reps {
            rec.dispatch(self.kernel, &self.pipeline, &bg, 0, self.groups);
        }
        Ok(())
    }
}
