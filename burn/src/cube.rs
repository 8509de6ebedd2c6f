//! burn's cubecl backend on the wgpu runtime: our engine plan on burn's device and queue, over
//! the buffers of burn's tensors where they lie in burn's pool.
//!
//! - The packed input, the weights, the output rows and the input's gradient start their
//!   tensors (the pool aligns every allocation to the device's storage offset alignment), so
//!   they are bound in place: no copy.
//! - The states (and the weights' gradient, after the input's in the result where that is
//!   wanted) sit at offsets that are not aligned: they go through small buffers of the plan's
//!   own, copied with `copy_buffer_to_buffer` (4-byte alignment) inside the same encoder. So
//!   do the weights of a cell that derives its matrix into them (the uRNN): burn's tensors are
//!   not written.
//! - `ComputeClient::get_resource` runs burn's pending work on each tensor's stream before it
//!   returns the buffer; our encoder is then submitted to burn's queue, so burn's later work
//!   on the result comes after ours. The resources are held until the submit.

use super::*;
use burn::backend::Cube;
use burn::backend::wgpu::CubeTensor;
use cubecl_runtime::storage::ManagedResource;
use cubecl_wgpu::{AutoCompiler, WgpuResource, WgpuServer};
use wgpu_rnn::gpu::{BackwardBuffers, ForwardBuffers, Plan, SeqLayout};

impl FusedRnnBackend for Cube {
    fn fused_rnn(x: FloatTensor<Self>, w: FloatTensor<Self>, s0: FloatTensor<Self>, spec: RnnSpec) -> FloatTensor<Self> {
        run(&x, &w, &s0, None, &spec).unwrap_or_else(|e| panic!("wgpu-rnn's fused {} on burn's wgpu device: {e}", spec.config.mode))
    }

    fn fused_rnn_grad(x: FloatTensor<Self>, w: FloatTensor<Self>, s0: FloatTensor<Self>, gy: FloatTensor<Self>, spec: RnnSpec) -> FloatTensor<Self> {
        run(&x, &w, &s0, Some(&gy), &spec).unwrap_or_else(|e| panic!("wgpu-rnn's fused {} backward on burn's wgpu device: {e}", spec.config.mode))
    }
}

/// The context [`init_wgpu`] made for the tensor's device.
fn context_of(t: &CubeTensor) -> wgpu_rnn::Result<Arc<Context>> {
    let map = contexts().lock().unwrap_or_else(|e| e.into_inner());
    map.get(&t.device).cloned().ok_or_else(|| {
        wgpu_rnn::Error::Unsupported(format!(
            "the tensor's device {:?} was not brought up by wgpu_rnn_burn::init_wgpu, so wgpu-rnn does not hold its wgpu device and queue",
            t.device
        ))
    })
}

fn resource(t: &CubeTensor) -> wgpu_rnn::Result<ManagedResource<WgpuResource>> {
    t.client.get_resource::<WgpuServer<AutoCompiler>>(t.handle.clone()).map_err(|e| wgpu_rnn::Error::Gpu(format!("burn's buffer of a tensor: {e:?}")))
}

/// Bytes of buffers this module made for a call's tensors (the states, the weights' gradient,
/// a derived cell's weights): everything else is bound where burn keeps it.
static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// [`STAGED`] so far: how much of the operations' data went through buffers of our own
/// rather than burn's (the tests show it is the states alone for a forward).
pub fn staged_bytes() -> u64 {
    STAGED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A cached plan and its generation: how many training forwards have been recorded with it
/// (each overwrites the tape in its buffers).
#[derive(Clone)]
struct Cached {
    plan: Arc<Plan>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

/// Plans prepared on a context, by config, lengths and pass: preparing one uploads its
/// parameter blocks and allocates its workspaces, which a training loop should not pay per
/// step. At most [`PLANS`] are kept (all dropped when full: batch shapes of one model are few).
fn plan_for(ctx: &Arc<Context>, spec: &RnnSpec, training: bool) -> wgpu_rnn::Result<Cached> {
    type Key = (usize, String);
    static CACHE: OnceLock<Mutex<HashMap<Key, Cached>>> = OnceLock::new();
    let key = (Arc::as_ptr(ctx) as usize, format!("{:?} {:?} {training}", spec.config, spec.lengths));
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cache.get(&key) {
        return Ok(p.clone());
    }
    if cache.len() >= PLANS {
        cache.clear();
    }
    let layout = SeqLayout::of(&spec.packing()?)?;
    let plan = Arc::new(Plan::new(ctx, &spec.config, &layout, if training { Pass::Training } else { Pass::Inference })?);
    let c = Cached { plan, generation: Default::default() };
    cache.insert(key, c.clone());
    Ok(c)
}

/// Plans [`plan_for`] keeps.
const PLANS: usize = 32;

/// A training forward's tape, kept for the backward of its run: its plan (whose buffers hold
/// the tape) at the generation it left, the buffers it read that are ours (the initial
/// states, a derived cell's weights) and its result (whose output rows the backward binds as
/// the forward's output).
struct Kept {
    cached: Cached,
    generation: u64,
    states0: Vec<wgpu::Buffer>,
    weights: Option<wgpu::Buffer>,
    result: CubeTensor,
}

/// Kept tapes by run id; at most [`KEPT`] (the oldest dropped: a forward whose backward never
/// comes).
fn kept() -> &'static Mutex<std::collections::BTreeMap<u64, Kept>> {
    static K: OnceLock<Mutex<std::collections::BTreeMap<u64, Kept>>> = OnceLock::new();
    K.get_or_init(Default::default)
}

const KEPT: usize = 64;

/// `len` f32 elements of a tensor's storage from element-byte `at`.
fn slice(r: &WgpuResource, at: u64, len: usize) -> wgpu::BufferSlice<'_> {
    r.buffer.slice(r.offset + at..r.offset + at + 4 * len as u64)
}

/// The states concatenated in a tensor from byte `at` (`elems` f32 each) into buffers of our
/// own (the engine binds each state at the device's offset alignment, which the concatenation
/// does not keep).
fn split_states(enc: &mut wgpu::CommandEncoder, own: &dyn Fn(&str, usize) -> wgpu::Buffer, label: &str, r: &WgpuResource, mut at: u64, elems: &[usize]) -> Vec<wgpu::Buffer> {
    elems
        .iter()
        .map(|&e| {
            let buf = own(label, e);
            enc.copy_buffer_to_buffer(&r.buffer, r.offset + at, &buf, 0, 4 * e as u64);
            at += 4 * e as u64;
            buf
        })
        .collect()
}

/// [`split_states`] reversed: our states' buffers into a tensor from byte `at`.
fn join_states(enc: &mut wgpu::CommandEncoder, bufs: &[wgpu::Buffer], r: &WgpuResource, mut at: u64, elems: &[usize]) {
    for (buf, &e) in bufs.iter().zip(elems) {
        enc.copy_buffer_to_buffer(buf, 0, &r.buffer, r.offset + at, 4 * e as u64);
        at += 4 * e as u64;
    }
}

/// The forward (`gy` None: `[N * O | S]`; with `spec.run`, a training forward that keeps its
/// tape) or the gradient (`[N * I | W | S]`, or `[W | S]` without `spec.input_grad`, from the
/// kept tape of `spec.run` where it is still there, else after a training forward of its own).
fn run(x: &CubeTensor, w: &CubeTensor, s0: &CubeTensor, gy: Option<&CubeTensor>, spec: &RnnSpec) -> wgpu_rnn::Result<CubeTensor> {
    use std::sync::atomic::Ordering::SeqCst;
    let ctx = context_of(x)?;
    let cfg = &spec.config;
    let (n, b) = (spec.rows(), spec.lengths.len());
    let grad = gy.is_some();
    let keeps = !grad && spec.run != 0;
    // The batch structure is worked out only when its plan is made (not per call).
    let cached = plan_for(&ctx, spec, grad || keeps)?;
    let elems = cfg.state_elems(b);
    let (no, ni, nw) = (n * cfg.output_size(), n * cfg.input_size, spec.weight_elems());
    // Where the weights' gradient starts in the result: after the input's, if it is wanted.
    let gi = spec.input_grad_elems();
    let result_elems = if grad { spec.grad_elems() } else { spec.result_elems() };
    let client = x.client.clone();
    let result = client.empty(result_elems * 4);
    let out_t = CubeTensor::new_contiguous(client.clone(), x.device.clone(), [result_elems].into(), result, x.dtype);
    let (mx, mw, ms0, mr) = (resource(x)?, resource(w)?, resource(s0)?, resource(&out_t)?);
    let mgy = gy.map(resource).transpose()?;
    let (rx, rw, rs0, rr) = (mx.resource(), mw.resource(), ms0.resource(), mr.resource());
    let own = |label: &str, e: usize| {
        let size = (4 * e.max(1)) as u64;
        STAGED.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false })
    };
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-rnn on burn") });
    // The gradient's kept tape, if its forward's is still in the plan's buffers.
    let tape = match (grad, spec.run) {
        (true, id) if id != 0 => kept().lock().unwrap_or_else(|e| e.into_inner()).remove(&id).filter(|k| Arc::ptr_eq(&k.cached.plan, &cached.plan) && k.cached.generation.load(SeqCst) == k.generation),
        _ => None,
    };
    let kept_out = tape.as_ref().map(|k| resource(&k.result)).transpose()?;
    // What the forward reads (recorded here unless the tape was kept).
    let (s0b, weights_copy): (Vec<wgpu::Buffer>, Option<wgpu::Buffer>) = match tape {
        Some(Kept { states0, weights, .. }) => (states0, weights),
        None => {
            // The initial states from s0's concatenation into buffers of their own.
            let s0b = split_states(&mut enc, &own, "initial state", rs0, 0, &elems);
            // A cell that derives its matrix (the uRNN) writes it into the weights buffer: burn's
            // tensors are immutable to burn, so such a cell's weights go through a copy of our own.
            let copy = cfg.mode.derived(cfg.sizes(0)).is_some().then(|| {
                let buf = own("weights (derived matrix written)", nw);
                enc.copy_buffer_to_buffer(&rw.buffer, rw.offset, &buf, 0, 4 * nw as u64);
                buf
            });
            (s0b, copy)
        }
    };
    let weights = match &weights_copy {
        Some(buf) => buf.slice(..),
        None => slice(rw, 0, nw),
    };
    let s0s: Vec<Option<wgpu::BufferSlice<'_>>> = s0b.iter().map(|b| Some(b.slice(..))).collect();
    let scratch_out = (grad && kept_out.is_none()).then(|| own("training output", no));
    if kept_out.is_none() {
        let snb: Vec<wgpu::Buffer> = elems.iter().map(|&e| own("final state", e)).collect();
        let sns: Vec<wgpu::BufferSlice<'_>> = snb.iter().map(|b| b.slice(..)).collect();
        let output = match &scratch_out {
            Some(o) => o.slice(..),
            None => slice(rr, 0, no),
        };
        let fwd = ForwardBuffers { weights, input: slice(rx, 0, ni), output, states0: &s0s, states_n: &sns, counter: None };
        cached.plan.record_forward(&mut enc, &fwd)?;
        if grad || keeps {
            cached.generation.fetch_add(1, SeqCst);
        }
        if !grad {
            join_states(&mut enc, &snb, rr, 4 * no as u64, &elems);
        }
    }
    if let Some(rgy) = mgy.as_ref().map(|m| m.resource()) {
        // The final states' gradients from gy's tail; ours for the weights' and initial
        // states' gradients, copied after the input's gradient in the result.
        let gnb = split_states(&mut enc, &own, "final state gradient", rgy, 4 * no as u64, &elems);
        let g0b: Vec<wgpu::Buffer> = elems.iter().map(|&e| own("initial state gradient", e)).collect();
        let gwb = own("weight gradient", nw);
        let gns: Vec<Option<wgpu::BufferSlice<'_>>> = gnb.iter().map(|b| Some(b.slice(..))).collect();
        let g0s: Vec<wgpu::BufferSlice<'_>> = g0b.iter().map(|b| b.slice(..)).collect();
        let output = match (&kept_out, &scratch_out) {
            (Some(k), _) => slice(k.resource(), 0, no),
            (None, Some(o)) => o.slice(..),
            (None, None) => unreachable!("a gradient without its forward's output"),
        };
        let bwd = BackwardBuffers {
            weights,
            input: slice(rx, 0, ni),
            output,
            states0: &s0s,
            grad_output: slice(rgy, 0, no),
            grad_states_n: &gns,
            grad_input: spec.input_grad.then(|| slice(rr, 0, ni)),
            grad_states0: &g0s,
            grad_weights: gwb.slice(..),
            counter: None,
        };
        cached.plan.record_backward(&mut enc, &bwd)?;
        enc.copy_buffer_to_buffer(&gwb, 0, &rr.buffer, rr.offset + 4 * gi as u64, 4 * nw as u64);
        join_states(&mut enc, &g0b, rr, 4 * (gi + nw) as u64, &elems);
    }
    ctx.queue.submit([enc.finish()]);
    drop((mx, mw, ms0, mr, mgy, kept_out));
    if keeps {
        let generation = cached.generation.load(SeqCst);
        let mut k = kept().lock().unwrap_or_else(|e| e.into_inner());
        while k.len() >= KEPT {
            k.pop_first();
        }
        k.insert(spec.run, Kept { cached, generation, states0: s0b, weights: weights_copy, result: out_t.clone() });
    }
    Ok(out_t)
}
