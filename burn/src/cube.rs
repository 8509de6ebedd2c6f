//! burn's cubecl backend on the wgpu runtime: our engine plan on burn's device and queue, over
//! the buffers of burn's tensors where they lie in burn's pool.
//!
//! - The packed input, the weights, the output rows and the input's gradient start their
//!   tensors (the pool aligns every allocation to the device's storage offset alignment), so
//!   they are bound in place: no copy.
//! - The states (and the weights' gradient, after the input's in the result) sit at offsets
//!   that are not aligned: they go through small buffers of the plan's own, copied with
//!   `copy_buffer_to_buffer` (4-byte alignment) inside the same encoder. So do the weights of
//!   a cell that derives its matrix into them (the uRNN): burn's tensors are not written.
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

/// Plans prepared on a context, by config, lengths and pass: preparing one uploads its
/// parameter blocks and allocates its workspaces, which a training loop should not pay per
/// step. At most [`PLANS`] are kept (all dropped when full: batch shapes of one model are few).
fn plan_for(ctx: &Arc<Context>, spec: &RnnSpec, layout: &SeqLayout, training: bool) -> wgpu_rnn::Result<Arc<Plan>> {
    type Key = (usize, String);
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Plan>>>> = OnceLock::new();
    let key = (Arc::as_ptr(ctx) as usize, format!("{:?} {:?} {training}", spec.config, spec.lengths));
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cache.get(&key) {
        return Ok(p.clone());
    }
    if cache.len() >= PLANS {
        cache.clear();
    }
    let plan = Arc::new(Plan::new(ctx, &spec.config, layout, if training { Pass::Training } else { Pass::Inference })?);
    cache.insert(key, plan.clone());
    Ok(plan)
}

/// Plans [`plan_for`] keeps.
const PLANS: usize = 32;

/// `len` f32 elements of a tensor's storage from element-byte `at`.
fn slice(r: &WgpuResource, at: u64, len: usize) -> wgpu::BufferSlice<'_> {
    r.buffer.slice(r.offset + at..r.offset + at + 4 * len as u64)
}

/// The forward (`gy` None: `[N * O | S]`) or the gradient (`[N * I | W | S]`).
fn run(x: &CubeTensor, w: &CubeTensor, s0: &CubeTensor, gy: Option<&CubeTensor>, spec: &RnnSpec) -> wgpu_rnn::Result<CubeTensor> {
    let ctx = context_of(x)?;
    let cfg = &spec.config;
    let (n, b) = (spec.rows(), spec.lengths.len());
    let t = spec.lengths.iter().copied().max().unwrap_or(0);
    let template = PackedSequence::from_padded(&vec![0f32; t * b], [t, b, 1], false, &spec.lengths)?;
    let layout = SeqLayout::of(&template)?;
    let training = gy.is_some();
    let plan = plan_for(&ctx, spec, &layout, training)?;
    let elems = cfg.state_elems(b);
    let (no, ni, nw) = (n * cfg.output_size(), n * cfg.input_size, spec.weight_elems());
    let result_elems = if training { spec.grad_elems() } else { spec.result_elems() };
    let client = x.client.clone();
    let result = client.empty(result_elems * 4);
    let out_t = CubeTensor::new_contiguous(client.clone(), x.device.clone(), [result_elems].into(), result, x.dtype);
    let (mx, mw, ms0, mr) = (resource(x)?, resource(w)?, resource(s0)?, resource(&out_t)?);
    let mgy = gy.map(resource).transpose()?;
    let (rx, rw, rs0, rr) = (mx.resource(), mw.resource(), ms0.resource(), mr.resource());
    let rgy = mgy.as_ref().map(|m| m.resource());
    let own = |label: &str, e: usize| {
        let size = (4 * e.max(1)) as u64;
        STAGED.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false })
    };
    let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-rnn on burn") });
    // The initial states from s0's concatenation into buffers of their own.
    let mut at = 0u64;
    let s0b: Vec<wgpu::Buffer> = elems
        .iter()
        .map(|&e| {
            let buf = own("initial state", e);
            enc.copy_buffer_to_buffer(&rs0.buffer, rs0.offset + at, &buf, 0, 4 * e as u64);
            at += 4 * e as u64;
            buf
        })
        .collect();
    let snb: Vec<wgpu::Buffer> = elems.iter().map(|&e| own("final state", e)).collect();
    let s0s: Vec<Option<wgpu::BufferSlice<'_>>> = s0b.iter().map(|b| Some(b.slice(..))).collect();
    let sns: Vec<wgpu::BufferSlice<'_>> = snb.iter().map(|b| b.slice(..)).collect();
    let scratch_out = training.then(|| own("training output", no));
    let output = match &scratch_out {
        Some(o) => o.slice(..),
        None => slice(rr, 0, no),
    };
    // A cell that derives its matrix (the uRNN) writes it into the weights buffer: burn's
    // tensors are immutable to burn, so such a cell's weights go through a copy of our own.
    let derived = cfg.mode.derived(cfg.sizes(0)).is_some().then(|| {
        let buf = own("weights (derived matrix written)", nw);
        enc.copy_buffer_to_buffer(&rw.buffer, rw.offset, &buf, 0, 4 * nw as u64);
        buf
    });
    let weights = match &derived {
        Some(b) => b.slice(..),
        None => slice(rw, 0, nw),
    };
    let fwd = ForwardBuffers { weights, input: slice(rx, 0, ni), output, states0: &s0s, states_n: &sns, counter: None };
    plan.record_forward(&mut enc, &fwd)?;
    if let Some(rgy) = rgy {
        // The final states' gradients from gy's tail; ours for the weights' and initial
        // states' gradients, copied after the input's gradient in the result.
        let mut at = 4 * no as u64;
        let gnb: Vec<wgpu::Buffer> = elems
            .iter()
            .map(|&e| {
                let buf = own("final state gradient", e);
                enc.copy_buffer_to_buffer(&rgy.buffer, rgy.offset + at, &buf, 0, 4 * e as u64);
                at += 4 * e as u64;
                buf
            })
            .collect();
        let g0b: Vec<wgpu::Buffer> = elems.iter().map(|&e| own("initial state gradient", e)).collect();
        let gwb = own("weight gradient", nw);
        let gns: Vec<Option<wgpu::BufferSlice<'_>>> = gnb.iter().map(|b| Some(b.slice(..))).collect();
        let g0s: Vec<wgpu::BufferSlice<'_>> = g0b.iter().map(|b| b.slice(..)).collect();
        let bwd = BackwardBuffers {
            weights,
            input: slice(rx, 0, ni),
            output: scratch_out.as_ref().expect("training").slice(..),
            states0: &s0s,
            grad_output: slice(rgy, 0, no),
            grad_states_n: &gns,
            grad_input: slice(rr, 0, ni),
            grad_states0: &g0s,
            grad_weights: gwb.slice(..),
            counter: None,
        };
        plan.record_backward(&mut enc, &bwd)?;
        enc.copy_buffer_to_buffer(&gwb, 0, &rr.buffer, rr.offset + 4 * ni as u64, 4 * nw as u64);
        let mut at = 4 * (ni + nw) as u64;
        for (buf, &e) in g0b.iter().zip(&elems) {
            enc.copy_buffer_to_buffer(buf, 0, &rr.buffer, rr.offset + at, 4 * e as u64);
            at += 4 * e as u64;
        }
    } else {
        let mut at = 4 * no as u64;
        for (buf, &e) in snb.iter().zip(&elems) {
            enc.copy_buffer_to_buffer(buf, 0, &rr.buffer, rr.offset + at, 4 * e as u64);
            at += 4 * e as u64;
        }
    }
    ctx.queue.submit([enc.finish()]);
    drop((mx, mw, ms0, mr, mgy));
    Ok(out_t)
}
