//! wgpu-rnn in the browser (wasm32 + WebGPU), behind the page in `web/index.html`:
//!
//! - [`start`] requests a WebGPU adapter and device (awaited: a browser cannot block) and
//!   wraps them in a [`Context`];
//! - [`check_case`] runs a golden case (PyTorch's float64 reference, `tests/golden`) forward
//!   and backward through the engine (`GpuRnn`'s async form) and compares every tensor with the golden
//!   tolerances: what `.ci/browser` runs in headless Chromium;
//! - [`check_onnx`] runs an ONNX conformance case (`tests/onnx`: onnx's backend node tests and
//!   onnxruntime's cases) through `onnx::OnnxPlan` and compares it within their tolerance;
//! - [`score_review`] scores a review with the model `examples/sentiment.rs` saved (its
//!   safetensors file and vocabulary), on the GPU and on the CPU reference, side by side.
//!
//! Everything here awaits its results ([`wgpu_rnn::gpu::Readback::submit`]); the library's
//! blocking calls are refused on wasm32 with a typed error rather than hanging the page.
//!
//! Build: `.ci/browser` (or `cargo build --release --target wasm32-unknown-unknown` here, then
//! `wasm-bindgen --target web`).

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use wasm_bindgen::prelude::*;
use wgpu_rnn::case::{compare, Case};
use wgpu_rnn::cpu::{self, Pass};
use wgpu_rnn::gpu::{flat_weights, storage, upload, Context, ForwardBuffers, Plan, Readback, SeqLayout};
use wgpu_rnn::io::TensorFile;
use wgpu_rnn::{PackedSequence, Weights};

#[path = "../../examples/common/text.rs"]
#[allow(dead_code)] // PAD is the trainer's
mod text;

/// The sentiment example's default `--max-len`: a review keeps its last this many tokens.
const MAX_LEN: usize = 256;

/// The page's device, and the errors its uncaptured-error handler collected.
struct Gpu {
    ctx: Arc<Context>,
    errors: Arc<Mutex<Vec<String>>>,
}

thread_local! {
    static GPU: std::cell::RefCell<Option<Rc<Gpu>>> = const { std::cell::RefCell::new(None) };
}

fn js(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

fn gpu() -> Result<Rc<Gpu>, JsError> {
    GPU.with(|g| g.borrow().clone()).ok_or_else(|| JsError::new("no device: call start() first"))
}

impl Gpu {
    /// Forgets errors left from an earlier call (one that returned early, or whose errors came
    /// after its results), so that each call answers for its own work.
    fn clear_errors(&self) {
        self.errors.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Errors the device reported since the last call (WebGPU delivers them to the
    /// uncaptured-error handler, not to the call that caused them).
    fn take_errors(&self) -> Result<(), JsError> {
        let errs = std::mem::take(&mut *self.errors.lock().unwrap_or_else(|e| e.into_inner()));
        if errs.is_empty() {
            Ok(())
        } else {
            Err(JsError::new(&format!("the device reported: {}", errs.join("; "))))
        }
    }
}

/// Requests a WebGPU adapter and device (the adapter's own limits, and SHADER_F16 where it has
/// it) and returns the adapter's description.
#[wasm_bindgen]
pub async fn start() -> Result<String, JsError> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::BROWSER_WEBGPU;
    let instance = wgpu::Instance::new(desc);
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions { power_preference: wgpu::PowerPreference::HighPerformance, ..Default::default() })
        .await
        .map_err(|e| JsError::new(&format!("no WebGPU adapter: {e}")))?;
    let mut info = adapter.get_info();
    if info.name.is_empty() {
        // Browsers hide the adapter's name unless asked for (and often then too).
        info.name = "WebGPU adapter".into();
    }
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("wgpu-rnn web"),
            required_features: adapter.features() & wgpu::Features::SHADER_F16,
            required_limits: adapter.limits(),
            ..Default::default()
        })
        .await
        .map_err(|e| JsError::new(&format!("request_device: {e}")))?;
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| sink.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string())));
    let ctx = Context::from_device(device, queue, Some(info)).map_err(js)?;
    let described = ctx.describe();
    GPU.with(|g| *g.borrow_mut() = Some(Rc::new(Gpu { ctx, errors })));
    Ok(described)
}

/// Runs the golden case in `bytes` (a `tests/golden` safetensors file) forward and backward on
/// the GPU and compares it with the expected tensors. Returns JSON:
/// `{"case", "pass", "tensors": [{"name", "failures", "total", "worst_ratio", "max_abs"}]}`.
#[wasm_bindgen]
pub async fn check_case(name: String, bytes: Vec<u8>) -> Result<String, JsError> {
    let g = gpu()?;
    g.clear_errors();
    let file = TensorFile::from_bytes(&bytes).map_err(js)?;
    let case = Case::<f32>::from_file(&file).map_err(js)?;
    let got = case.run_gpu_async(&g.ctx, true).await.map_err(js)?;
    g.take_errors()?;
    let report = compare(&got, &file, true);
    let tensors: Vec<serde_json::Value> = report
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "failures": m.failures,
                "total": m.total,
                // Infinity is not JSON: a missing tensor or a NaN is reported as -1.
                "worst_ratio": if m.worst_ratio.is_finite() { m.worst_ratio } else { -1.0 },
                "max_abs": if m.max_abs.is_finite() { m.max_abs } else { -1.0 },
            })
        })
        .collect();
    // Every golden case has at least output, h_n, grad_input, grad_h0 and two weight gradients.
    let pass = report.len() >= 6 && report.iter().all(|m| m.failures == 0);
    Ok(serde_json::json!({ "case": name, "pass": pass, "tensors": tensors }).to_string())
}

/// Scores `review` with the sentiment model: `model` is the safetensors file
/// `examples/sentiment.rs` wrote (`embedding.weight`, `rnn.*` under PyTorch's names,
/// `head.weight`, `head.bias`), `vocab` its `vocab.txt`. The recurrent layers run on the GPU
/// and, for comparison, on the CPU reference. Returns JSON: `{"tokens", "unknown", "gpu",
/// "cpu", "config"}` with the probabilities that the review is positive.
#[wasm_bindgen]
pub async fn score_review(model: Vec<u8>, vocab: String, review: String) -> Result<String, JsError> {
    let g = gpu()?;
    g.clear_errors();
    let ctx = &g.ctx;
    let file = TensorFile::from_bytes(&model).map_err(js)?;
    let w = Weights::<f32>::from_file(&file, "rnn.", None).map_err(js)?;
    let cfg = w.config.clone();
    if !cfg.bidirectional {
        return Err(JsError::new(&format!("not a sentiment model: a unidirectional {} (the example's is bidirectional)", cfg.mode)));
    }
    let table = file.float("embedding.weight").map_err(js)?;
    let (rows, dim) = match table.shape[..] {
        [v, d] if d == cfg.input_size => (v, d),
        _ => return Err(JsError::new(&format!("embedding.weight is {:?}; the recurrent layer takes {} features", table.shape, cfg.input_size))),
    };
    // The two directions of the last layer's final state.
    let h2 = 2 * cfg.h_shape(1)[2];
    let head_w = file.float("head.weight").map_err(js)?;
    let head_b = file.float("head.bias").map_err(js)?;
    if head_w.data.len() != h2 || head_b.data.len() != 1 {
        return Err(JsError::new(&format!("head.weight {:?} / head.bias {:?}: want [1, {h2}] and [1]", head_w.shape, head_b.shape)));
    }
    let itos: Vec<&str> = vocab.lines().collect();
    if itos.len() != rows {
        return Err(JsError::new(&format!("the vocabulary has {} words, the embedding {rows} rows", itos.len())));
    }
    let stoi: HashMap<&str, u32> = itos.iter().enumerate().map(|(i, w)| (*w, i as u32)).collect();
    let toks = text::tokens(&review);
    let ids = text::encode(&toks, &stoi, MAX_LEN);
    let unknown = ids.iter().filter(|&&i| i == text::UNK).count();
    // One sequence: its packed rows are its steps.
    let x: Vec<f32> = ids.iter().flat_map(|&i| table.data[i as usize * dim..(i as usize + 1) * dim].iter().map(|&v| v as f32)).collect();
    let packed = PackedSequence::from_sequences(&[&x[..]], dim).map_err(js)?;
    let head = |h_n: &[f32]| {
        // The last layer's two directions, forward then backward: the example's features.
        let last = &h_n[h_n.len() - h2..];
        let z = head_b.data[0] + head_w.data.iter().zip(last).map(|(&a, &b)| a * b as f64).sum::<f64>();
        1.0 / (1.0 + (-z).exp())
    };

    let plan = Plan::new(ctx, &cfg, &SeqLayout::of(&packed).map_err(js)?, Pass::Inference).map_err(js)?;
    let states = cfg.h_shape(1).iter().product::<usize>();
    let weights = upload(ctx, "weights", &flat_weights(&w)).map_err(js)?;
    let input = upload(ctx, "input", &packed.data).map_err(js)?;
    let output = storage(ctx, "output", packed.rows() * cfg.output_size()).map_err(js)?;
    // One buffer per state of the cell; the head reads the first (h).
    let finals = cfg.state_elems(1).into_iter().map(|e| storage(ctx, "final state", e)).collect::<Result<Vec<_>, _>>().map_err(js)?;
    let h_n = &finals[0];
    let states_n: Vec<wgpu::BufferSlice<'_>> = finals.iter().map(|b| b.slice(..)).collect();
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let bufs = ForwardBuffers { weights: weights.slice(..), input: input.slice(..), output: output.slice(..), states0: &[], states_n: &states_n, counter: None };
    plan.record_forward(&mut enc, &bufs).map_err(js)?;
    let mut rb = Readback::new();
    rb.copy(ctx, &mut enc, h_n, states).map_err(js)?;
    let got = rb.submit(ctx, enc).map_err(js)?.await.map_err(js)?;
    g.take_errors()?;
    let gpu_p = head(&got[0]);

    let (fwd, _) = cpu::forward(&w, &packed, &[], Pass::Inference).map_err(js)?;
    let cpu_p = head(&fwd.states[0].data);
    let described = format!("{} {}x{} bidirectional, {} layer(s), vocabulary {rows}", cfg.mode, cfg.input_size, cfg.hidden_size, cfg.num_layers);
    Ok(serde_json::json!({ "tokens": ids.len(), "words": toks.len(), "unknown": unknown, "gpu": gpu_p, "cpu": cpu_p, "config": described, "device": ctx.describe() }).to_string())
}

/// The tolerance of ONNX's conformance cases (as `tests/it/onnx.rs`).
const ONNX_ATOL: f64 = 2e-5;
const ONNX_RTOL: f64 = 2e-4;

/// `bytes` cut into parts of `lens` bytes.
fn parts<'a>(bytes: &'a [u8], lens: &[u32]) -> Result<Vec<&'a [u8]>, JsError> {
    let mut v = Vec::new();
    let mut at = 0usize;
    for &n in lens {
        let end = at + n as usize;
        v.push(bytes.get(at..end).ok_or_else(|| JsError::new("part lengths exceed the bytes"))?);
        at = end;
    }
    Ok(v)
}

/// Runs an ONNX conformance case (`tests/onnx`: a one-node model, its `input_K.pb` and the
/// expected `output_K.pb`, each list concatenated with its lengths) on the GPU through the
/// engine (`onnx::GpuNode`'s async form, an `OnnxPlan`) and compares every output within atol
/// 2e-5 / rtol 2e-4. Returns JSON: `{"case", "pass", "outputs": [{"name", "failures",
/// "total", "max_abs"}]}`.
#[wasm_bindgen]
pub async fn check_onnx(name: String, model: Vec<u8>, inputs: Vec<u8>, input_lens: Vec<u32>, expected: Vec<u8>, expected_lens: Vec<u32>) -> Result<String, JsError> {
    use wgpu_rnn::onnx::file::{float_tensor, Model};
    use wgpu_rnn::onnx::proto::{decode, TensorProto};
    let g = gpu()?;
    g.clear_errors();
    let m = Model::from_bytes(&model).map_err(js)?;
    let data = parts(&inputs, &input_lens)?.into_iter().map(|b| decode::<TensorProto>("input", b)).collect::<Result<Vec<_>, _>>().map_err(js)?;
    let p = m.prepare(&data).map_err(js)?;
    let node = p.node.gpu(&g.ctx).map_err(js)?;
    let out = node.forward_async(&p.x, p.lens.as_deref(), p.initial_h.as_ref(), p.initial_c.as_ref()).await.map_err(js)?;
    g.take_errors()?;
    let got = m.outputs(&p, &out).map_err(js)?;
    let want = parts(&expected, &expected_lens)?;
    let mut outputs = Vec::new();
    let mut pass = got.len() == want.len() && !want.is_empty();
    for ((oname, t), w) in got.iter().zip(want) {
        let a = float_tensor(oname, t).map_err(js)?;
        let e = float_tensor(oname, &decode::<TensorProto>("expected", w).map_err(js)?).map_err(js)?;
        let (mut failures, mut max_abs) = (0usize, 0.0f64);
        if a.tensor.shape != e.tensor.shape {
            failures = e.tensor.data.len().max(1);
        } else {
            for (&x, &y) in a.tensor.data.iter().zip(&e.tensor.data) {
                let (x, y) = (x as f64, y as f64);
                let d = (x - y).abs();
                // A NaN fails (the comparison below is false for it).
                if !(d <= ONNX_ATOL + ONNX_RTOL * y.abs()) {
                    failures += 1;
                }
                // -1 marks a NaN or infinity, and stays.
                if !d.is_finite() {
                    max_abs = -1.0;
                } else if max_abs >= 0.0 {
                    max_abs = max_abs.max(d);
                }
            }
        }
        pass &= failures == 0;
        outputs.push(serde_json::json!({ "name": oname, "failures": failures, "total": e.tensor.data.len(), "max_abs": max_abs }));
    }
    Ok(serde_json::json!({ "case": name, "pass": pass, "outputs": outputs }).to_string())
}
