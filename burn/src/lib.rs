#![allow(deprecated)] // burn-ndarray is deprecated in burn 0.22 (burn-flex replaces it); the issue asks for ndarray
//! wgpu-rnn's fused recurrent cells for burn (issue 28).
//!
//! One backend extension, [`FusedRnnBackend`], runs a whole recurrent stack (any registered
//! cell, stacked, bidirectional, packed sequences) as one operation:
//! - on burn's wgpu runtime, our engine plan (`wgpu_rnn::gpu::Plan`) records into an encoder
//!   of its own on burn's device and queue, over the buffers of burn's tensors where they lie
//!   in burn's memory pool (no copy), and submits to burn's queue after burn's pending work;
//! - on burn's ndarray backend, our CPU engine (`wgpu_rnn::cpu`);
//! - under burn's autodiff, a custom backward: our fused backward kernels, not burn's ops.
//!
//! The operation's tensors are flat: the packed input rows `[N * I]`, the weights in
//! `wgpu_rnn::gpu::flat_weights`' layout `[W]`, the initial states concatenated per state
//! `[S]`; its result is `[N * O | S]` (the output rows, then the final states). [`FusedRnn`]
//! is the module over it: padded `[T, B, I]` input with lengths, one flat parameter.
//!
//! Under autodiff the forward is a training run with an id (`RnnSpec::run`): on burn's wgpu
//! runtime it keeps its tape (in its plan's buffers) for the backward of the same id, which
//! uses it unless a later training forward on the same plan overwrote it (a generation count
//! per plan): then, and on ndarray, the backward recomputes the forward first. The tape never
//! crosses burn's dispatch boundary.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, CubeDevice, DispatchDevice};
use wgpu_rnn::wgpu;
use wgpu_rnn::cpu::{self, Pass};
use wgpu_rnn::gpu::Context;
use wgpu_rnn::{PackedSequence, RnnConfig, Weights};

pub mod module;
pub use module::{FusedRnn, FusedRnnConfig};

/// What one call computes: the stack's config and the batch structure (each sequence's
/// length, in the caller's batch order; the rows are packed as `PackedSequence` packs them).
#[derive(Clone, Debug, PartialEq)]
pub struct RnnSpec {
    pub config: RnnConfig,
    pub lengths: Vec<usize>,
    /// 0: a forward to infer, a gradient recomputing the forward. Otherwise the id of a
    /// training run: its forward keeps its tape (on burn's wgpu runtime) for the gradient of
    /// the same id, which uses it unless a later forward overwrote it (then it recomputes).
    pub run: u64,
    /// Whether the gradient includes the input's (`[N * I | W | S]`) or not (`[W | S]`: an
    /// input that needs none, as under autodiff an untracked one; the backward then leaves out
    /// the first layer's input-gradient product).
    pub input_grad: bool,
}

impl RnnSpec {
    /// A spec with no training run.
    pub fn new(config: RnnConfig, lengths: Vec<usize>) -> Self {
        RnnSpec { config, lengths, run: 0, input_grad: true }
    }

    /// The batch structure as a packed sequence of one zero feature: the rows' order that
    /// both engines' packing follows (`with_data` gives it real rows).
    pub fn packing(&self) -> wgpu_rnn::Result<PackedSequence<f32>> {
        let (t, b) = (self.lengths.iter().copied().max().unwrap_or(0), self.lengths.len());
        PackedSequence::from_padded(&vec![0f32; t * b], [t, b, 1], false, &self.lengths)
    }

    /// Packed rows N.
    pub fn rows(&self) -> usize {
        self.lengths.iter().sum()
    }
    /// Elements of the concatenated states (every state of the cell, `[L*D, B, S_i]` each).
    pub fn state_elems(&self) -> usize {
        self.config.state_elems(self.lengths.len()).iter().sum()
    }
    /// Elements of the flat weights.
    pub fn weight_elems(&self) -> usize {
        wgpu_rnn::gpu::weight_elems(&self.config)
    }
    /// Elements of the result `[N * O | S]`.
    pub fn result_elems(&self) -> usize {
        self.rows() * self.config.output_size() + self.state_elems()
    }
    /// Elements of the input's gradient in the gradient: `N * I`, or 0 without
    /// [`RnnSpec::input_grad`].
    pub fn input_grad_elems(&self) -> usize {
        if self.input_grad {
            self.rows() * self.config.input_size
        } else {
            0
        }
    }
    /// Elements of the gradient `[N * I | W | S]` (`[W | S]` without [`RnnSpec::input_grad`]).
    pub fn grad_elems(&self) -> usize {
        self.input_grad_elems() + self.weight_elems() + self.state_elems()
    }
}

/// The fused recurrent stack as a backend operation (see the crate's documentation for the
/// flat layouts). Implemented for burn's cubecl backend (the wgpu runtime), ndarray, and
/// autodiff over either.
#[backend_extension(Cube, NdArray, Autodiff)]
pub trait FusedRnnBackend: Backend {
    /// `[N * O | S]` from `x [N * I]`, `w [W]`, `s0 [S]`.
    fn fused_rnn(x: FloatTensor<Self>, w: FloatTensor<Self>, s0: FloatTensor<Self>, spec: RnnSpec) -> FloatTensor<Self>;
    /// `[N * I | W | S]`: the gradients of `x`, `w` and `s0` given `gy`, the gradient of the
    /// result (`[N * O | S]`); `[W | S]` without `spec.input_grad`.
    fn fused_rnn_grad(x: FloatTensor<Self>, w: FloatTensor<Self>, s0: FloatTensor<Self>, gy: FloatTensor<Self>, spec: RnnSpec) -> FloatTensor<Self>;
}

/// The CPU engine's forward and gradient over host vectors (the ndarray backend's side).
pub mod host {
    use super::*;

    fn states(spec: &RnnSpec, s: &[f32]) -> Vec<Vec<f32>> {
        let mut at = 0;
        spec.config
            .state_elems(spec.lengths.len())
            .into_iter()
            .map(|e| {
                let v = s[at..at + e].to_vec();
                at += e;
                v
            })
            .collect()
    }

    fn packed(spec: &RnnSpec, x: &[f32]) -> wgpu_rnn::Result<PackedSequence<f32>> {
        spec.packing()?.with_data(x.to_vec(), spec.config.input_size)
    }

    /// `[N * O | S]`.
    pub fn forward(spec: &RnnSpec, x: &[f32], w: &[f32], s0: &[f32]) -> wgpu_rnn::Result<Vec<f32>> {
        let weights: Weights<f32> = wgpu_rnn::gpu::weights_from_flat(&spec.config, w)?;
        let p = packed(spec, x)?;
        let s = states(spec, s0);
        let given: Vec<Option<&[f32]>> = s.iter().map(|v| Some(&v[..])).collect();
        let (out, _) = cpu::forward(&weights, &p, &given, Pass::Inference)?;
        let mut r = out.output.data;
        for st in out.states {
            r.extend(st.data);
        }
        Ok(r)
    }

    /// `[N * I | W | S]` (`[W | S]` without [`RnnSpec::input_grad`]).
    pub fn grad(spec: &RnnSpec, x: &[f32], w: &[f32], s0: &[f32], gy: &[f32]) -> wgpu_rnn::Result<Vec<f32>> {
        let weights: Weights<f32> = wgpu_rnn::gpu::weights_from_flat(&spec.config, w)?;
        let p = packed(spec, x)?;
        let s = states(spec, s0);
        let given: Vec<Option<&[f32]>> = s.iter().map(|v| Some(&v[..])).collect();
        let (_, tape) = cpu::forward(&weights, &p, &given, Pass::Training)?;
        let tape = tape.ok_or(wgpu_rnn::Error::NotTraining)?;
        let no = spec.rows() * spec.config.output_size();
        let gs = states(spec, &gy[no..]);
        let gsr: Vec<Option<&[f32]>> = gs.iter().map(|v| Some(&v[..])).collect();
        let (mut r, states, params) = if spec.input_grad {
            let (input, states, params) = cpu::backward(&weights, &tape, &gy[..no], &gsr)?.into_parts();
            (input.data, states, params)
        } else {
            let (states, params) = cpu::backward_without_input(&weights, &tape, &gy[..no], &gsr)?;
            (Vec::new(), states, params)
        };
        r.extend(wgpu_rnn::gpu::flat_weights(&params));
        for st in states {
            r.extend(st.data);
        }
        Ok(r)
    }
}

/// Our contexts on burn's wgpu devices, by burn's cubecl device: filled by [`init_wgpu`].
fn contexts() -> &'static Mutex<HashMap<CubeDevice, Arc<Context>>> {
    static C: OnceLock<Mutex<HashMap<CubeDevice, Arc<Context>>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// Brings up burn's wgpu runtime with `options` and wraps its device and queue in a
/// `wgpu_rnn` context (every storage binding read-write: burn's pool shares buffers,
/// `Context::with_shared_buffers`). Use the returned burn device for the model's tensors.
pub fn init_wgpu(options: burn::tensor::wgpu::WgpuOptions) -> wgpu_rnn::Result<(burn::tensor::Device, Arc<Context>)> {
    let (device, setup) = options.init_with_setup().map_err(|e| wgpu_rnn::Error::NoAdapter(format!("burn's wgpu runtime: {e}")))?;
    // The one place the two wgpu versions meet: burn's handles are taken as ours. A burn whose
    // wgpu differs from wgpu-rnn's fails to compile here ("expected `wgpu::Device`, found a
    // different `wgpu::Device`": two versions of crate `wgpu`), never at run time.
    let (d, q): (wgpu_rnn::wgpu::Device, wgpu_rnn::wgpu::Queue) = (setup.device.clone(), setup.queue.clone());
    let ctx = Context::with_shared_buffers(d, q, Some(setup.adapter.get_info()))?;
    let DispatchDevice::Cube(cube) = device.as_dispatch().clone() else {
        return Err(wgpu_rnn::Error::Unsupported(format!("burn's wgpu runtime gave a device that is not a cubecl one: {device:?}")));
    };
    contexts().lock().unwrap_or_else(|e| e.into_inner()).insert(cube, ctx.clone());
    Ok((device, ctx))
}

/// A typed error unless one of our engines serves `device`: ndarray, or a wgpu device brought
/// up by [`init_wgpu`] (either under autodiff). Checked before any work, so that misuse never
/// reaches burn's client.
pub(crate) fn check_device(device: &burn::tensor::Device) -> wgpu_rnn::Result<()> {
    fn served(d: &DispatchDevice) -> Option<bool> {
        match d {
            DispatchDevice::Autodiff(a) => served(&a.clone().inner()),
            DispatchDevice::NdArray(_) => Some(true),
            DispatchDevice::Cube(c) => Some(contexts().lock().unwrap_or_else(|e| e.into_inner()).contains_key(c)),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
    match served(device.as_dispatch()) {
        Some(true) => Ok(()),
        Some(false) => Err(wgpu_rnn::Error::Unsupported(format!(
            "{device:?}: a cubecl device that wgpu_rnn_burn::init_wgpu did not bring up (wgpu-rnn needs burn's wgpu device and queue; other cubecl runtimes are not served)"
        ))),
        None => Err(wgpu_rnn::Error::Unsupported(format!("{device:?}: wgpu-rnn runs on burn's wgpu runtime (init_wgpu) and on ndarray"))),
    }
}

mod cube;
pub use cube::staged_bytes;

/// burn's ndarray backend: our CPU engine over the tensors' host data.
mod cpu_backend {
    use super::*;
    use burn::backend::ops::FloatTensorOps;
    use burn::backend::{NdArray, TensorMetadata};
    use burn::tensor::TensorData;

    fn host(t: FloatTensor<NdArray>) -> Vec<f32> {
        let d = pollster::block_on(NdArray::float_into_data(t)).expect("ndarray tensors are on the host");
        d.convert::<f32>().to_vec().expect("f32 data")
    }

    fn tensor(v: Vec<f32>, like: &FloatTensor<NdArray>) -> FloatTensor<NdArray> {
        let n = v.len();
        NdArray::float_from_data(TensorData::new(v, [n]), &like.device())
    }

    impl FusedRnnBackend for NdArray {
        fn fused_rnn(x: FloatTensor<Self>, w: FloatTensor<Self>, s0: FloatTensor<Self>, spec: RnnSpec) -> FloatTensor<Self> {
            let like = x.clone();
            let r = host::forward(&spec, &host(x), &host(w), &host(s0)).unwrap_or_else(|e| panic!("wgpu-rnn's {} on ndarray: {e}", spec.config.mode));
            tensor(r, &like)
        }

        fn fused_rnn_grad(x: FloatTensor<Self>, w: FloatTensor<Self>, s0: FloatTensor<Self>, gy: FloatTensor<Self>, spec: RnnSpec) -> FloatTensor<Self> {
            let like = x.clone();
            let r = host::grad(&spec, &host(x), &host(w), &host(s0), &host(gy)).unwrap_or_else(|e| panic!("wgpu-rnn's {} backward on ndarray: {e}", spec.config.mode));
            tensor(r, &like)
        }
    }
}

impl<B: FusedRnnBackend, C: CheckpointStrategy> FusedRnnBackend for Autodiff<B, C> {
    fn fused_rnn(x: FloatTensor<Self>, w: FloatTensor<Self>, s0: FloatTensor<Self>, spec: RnnSpec) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FusedRnnOp;

        impl<B: FusedRnnBackend> Backward<B, 3> for FusedRnnOp {
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, RnnSpec);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let (x, w, s0, spec) = ops.state;
                let [px, pw, ps] = ops.parents;
                // An untracked input (a model's data) gets no gradient, as with burn's own ops.
                let spec = RnnSpec { input_grad: px.is_some(), ..spec };
                let gy = grads.consume::<B>(&ops.node);
                let g = B::fused_rnn_grad(x, w, s0, gy, spec.clone());
                let (ni, nw, ns) = (spec.input_grad_elems(), spec.weight_elems(), spec.state_elems());
                let part = |a: usize, n: usize| B::float_slice(g.clone(), &[burn::tensor::Slice::from(a..a + n)]);
                if let Some(node) = px {
                    grads.register::<B>(node.id, part(0, ni));
                }
                if let Some(node) = pw {
                    grads.register::<B>(node.id, part(ni, nw));
                }
                if let Some(node) = ps {
                    grads.register::<B>(node.id, part(ni + nw, ns));
                }
            }
        }

        match FusedRnnOp.prepare::<C>([x.node(), w.node(), s0.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                // A training run: the forward keeps its tape for this op's backward.
                static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                let spec = RnnSpec { run: RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed), ..spec };
                let out = B::fused_rnn(x.primitive().clone(), w.primitive().clone(), s0.primitive().clone(), spec.clone());
                prep.finish((x.into_primitive(), w.into_primitive(), s0.into_primitive(), spec), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_rnn(x.into_primitive(), w.into_primitive(), s0.into_primitive(), spec)),
        }
    }

    fn fused_rnn_grad(x: FloatTensor<Self>, w: FloatTensor<Self>, s0: FloatTensor<Self>, gy: FloatTensor<Self>, spec: RnnSpec) -> FloatTensor<Self> {
        // Not differentiated again: the gradient as a constant of the graph.
        let g = B::fused_rnn_grad(x.into_primitive(), w.into_primitive(), s0.into_primitive(), gy.into_primitive(), spec);
        <Self as burn::backend::AutodiffBackend>::from_inner(g)
    }
}
