#![allow(deprecated)] // burn 0.22 deprecates ndarray (and TensorData::to_vec); the issue asks for ndarray
//! The burn module against wgpu-rnn's CPU engine on the same weights: forward on ndarray and on
//! burn's wgpu runtime (lavapipe here), and the gradients through burn's autodiff.

use burn::tensor::{Device, Tensor, TensorData};
use wgpu_rnn::cpu::{self, Pass};
use wgpu_rnn::{Mode, PackedSequence, RnnConfig, Weights};
use wgpu_rnn_burn::FusedRnn;

/// f32 engines against each other (sums of up to a few hundred terms).
const ATOL: f64 = 1e-4;
const RTOL: f64 = 1e-3;

fn close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g as f64, w as f64);
        assert!(g.is_finite() && (g - w).abs() <= ATOL + RTOL * w.abs(), "{what}[{k}]: got {g}, want {w}");
    }
}

fn data(t: Tensor<3>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

struct Problem {
    cfg: RnnConfig,
    w: Weights<f32>,
    t: usize,
    b: usize,
    lengths: Vec<usize>,
    x: Vec<f32>,
}

fn problem(mode: Mode) -> Problem {
    problem_of_width(mode, 3)
}

/// [`problem`] with input width `i` (SRU's is its hidden size, 5, and one direction).
fn problem_of_width(mode: Mode, i: usize) -> Problem {
    let mut cfg = RnnConfig::new(mode, i, 5).layers(2).bidirectional(true);
    if cfg.validate().is_err() {
        cfg = RnnConfig::new(mode, i, 5).layers(2);
    }
    let w = Weights::<f32>::init_uniform(&cfg, 11).unwrap();
    let (t, b) = (4, 3);
    let lengths = vec![4, 2, 3];
    let x: Vec<f32> = (0..t * b * i).map(|k| (k as f32 * 0.37).sin()).collect();
    Problem { cfg, w, t, b, lengths, x }
}

/// The CPU engine's padded output `[T, B, O]` (zeros past each length) and final states.
fn cpu_forward(p: &Problem) -> (Vec<f32>, Vec<Vec<f32>>) {
    let packed = PackedSequence::from_padded(&p.x, [p.t, p.b, 3], false, &p.lengths).unwrap();
    let (out, _) = cpu::forward(&p.w, &packed, &[], Pass::Inference).unwrap();
    let o = p.cfg.output_size();
    let (padded, _) = packed.with_data(out.output.data, o).unwrap().to_padded(false, 0.0, None).unwrap();
    (padded.data, out.states.into_iter().map(|s| s.data).collect())
}

fn check_forward(device: &Device, what: &str) {
    for mode in [Mode::Lstm, Mode::Gru, Mode::Scrn] {
        let p = problem(mode);
        let m = FusedRnn::from_weights(&p.w, false, device).unwrap();
        let x = Tensor::<3>::from_data(TensorData::new(p.x.clone(), [p.t, p.b, 3]), device);
        let got = m.forward(x, Some(&p.lengths), None).unwrap();
        let (want, want_states) = cpu_forward(&p);
        close(&format!("{what} {mode} output"), &data(got.output), &want);
        for (s, w) in got.states.into_iter().zip(&want_states) {
            close(&format!("{what} {mode} state"), &data(s), w);
        }
    }
}

#[test]
fn forward_on_ndarray_matches_the_cpu_engine() {
    check_forward(&Device::ndarray(), "ndarray");
}

/// burn's wgpu runtime, brought up once for the test binary, with our context on it.
fn wgpu_device() -> Device {
    static D: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    D.get_or_init(|| wgpu_rnn_burn::init_wgpu(Device::wgpu_options()).unwrap().0).clone()
}

#[test]
fn forward_on_burns_wgpu_device_matches_the_cpu_engine() {
    check_forward(&wgpu_device(), "wgpu");
}

/// d(sum(output * r) + sum(h_n * q))/d(weights, input) through burn's autodiff, against the
/// CPU engine's backward.
fn check_gradients(device: &Device, what: &str) {
    for mode in [Mode::Lstm, Mode::Gru] {
        let p = problem(mode);
        let device = device.clone().autodiff();
        let m = FusedRnn::from_weights(&p.w, false, &device).unwrap();
        let x = Tensor::<3>::from_data(TensorData::new(p.x.clone(), [p.t, p.b, 3]), &device).require_grad();
        let got = m.forward(x.clone(), Some(&p.lengths), None).unwrap();
        let o = p.cfg.output_size();
        let r: Vec<f32> = (0..p.t * p.b * o).map(|k| ((k % 7) as f32 - 3.0) * 0.1).collect();
        let q: Vec<f32> = (0..p.cfg.state_elems(p.b)[0]).map(|k| ((k % 5) as f32 - 2.0) * 0.2).collect();
        let rt = Tensor::<3>::from_data(TensorData::new(r.clone(), [p.t, p.b, o]), &device);
        let hn = got.states[0].clone();
        let qt = Tensor::<3>::from_data(TensorData::new(q.clone(), hn.dims()), &device);
        let loss = (got.output * rt).sum() + (hn * qt).sum();
        let grads = loss.backward();
        let gw: Vec<f32> = m.weights.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let gx: Vec<f32> = x.grad(&grads).unwrap().into_data().to_vec().unwrap();
        // The CPU engine: the same loss's gradients.
        let packed = PackedSequence::from_padded(&p.x, [p.t, p.b, 3], false, &p.lengths).unwrap();
        let (_, tape) = cpu::forward(&p.w, &packed, &[], Pass::Training).unwrap();
        let go_packed = PackedSequence::from_padded(&r, [p.t, p.b, o], false, &p.lengths).unwrap();
        let g = cpu::backward(&p.w, &tape.unwrap(), &go_packed.data, &[Some(&q)]).unwrap();
        close(&format!("{what} {mode} weight gradient"), &gw, &wgpu_rnn::gpu::flat_weights(&g.params));
        let (gx_want, _) = packed.with_data(g.input.data.clone(), 3).unwrap().to_padded(false, 0.0, None).unwrap();
        close(&format!("{what} {mode} input gradient"), &gx, &gx_want.data);
    }
}

#[test]
fn gradients_on_ndarray_match_the_cpu_engine() {
    check_gradients(&Device::ndarray(), "ndarray");
}

#[test]
fn gradients_on_burns_wgpu_device_match_the_cpu_engine() {
    check_gradients(&wgpu_device(), "wgpu");
}

/// An input without `require_grad` (a model's data): burn asks for no input gradient, so the
/// backward leaves out the first layer's input-gradient product (`RnnSpec::input_grad`); the
/// weights' and the tracked initial states' gradients still match the CPU engine's. SRU adds
/// to the input gradient directly.
fn untracked_input(device: &Device, what: &str) {
    for (mode, i) in [(Mode::Lstm, 3), (Mode::Gru, 3), (Mode::Sru, 5)] {
        let p = problem_of_width(mode, i);
        let device = device.clone().autodiff();
        let m = FusedRnn::from_weights(&p.w, false, &device).unwrap();
        let x = Tensor::<3>::from_data(TensorData::new(p.x.clone(), [p.t, p.b, i]), &device);
        let s0v: Vec<Vec<f32>> = p.cfg.state_elems(p.b).iter().map(|&e| (0..e).map(|k| (k as f32 * 0.61).cos() * 0.3).collect()).collect();
        let shapes: Vec<[usize; 3]> = p.cfg.states().iter().map(|s| {
            let v = p.cfg.state_shape(s, p.b);
            [v[0], v[1], v[2]]
        }).collect();
        let s0: Vec<Tensor<3>> = s0v.iter().zip(&shapes).map(|(v, &sh)| Tensor::<3>::from_data(TensorData::new(v.clone(), sh), &device).require_grad()).collect();
        let got = m.forward(x.clone(), Some(&p.lengths), Some(s0.clone())).unwrap();
        let o = p.cfg.output_size();
        let r: Vec<f32> = (0..p.t * p.b * o).map(|k| ((k % 7) as f32 - 3.0) * 0.1).collect();
        let q: Vec<f32> = (0..p.cfg.state_elems(p.b)[0]).map(|k| ((k % 5) as f32 - 2.0) * 0.2).collect();
        let hn = got.states[0].clone();
        let qt = Tensor::<3>::from_data(TensorData::new(q.clone(), hn.dims()), &device);
        let loss = (got.output * Tensor::<3>::from_data(TensorData::new(r.clone(), [p.t, p.b, o]), &device)).sum() + (hn * qt).sum();
        let grads = loss.backward();
        assert!(x.grad(&grads).is_none(), "{what} {mode}: an untracked input got a gradient");
        let gw: Vec<f32> = m.weights.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let packed = PackedSequence::from_padded(&p.x, [p.t, p.b, i], false, &p.lengths).unwrap();
        let given: Vec<Option<&[f32]>> = s0v.iter().map(|v| Some(&v[..])).collect();
        let (_, tape) = cpu::forward(&p.w, &packed, &given, Pass::Training).unwrap();
        let go = PackedSequence::from_padded(&r, [p.t, p.b, o], false, &p.lengths).unwrap();
        let g = cpu::backward(&p.w, &tape.unwrap(), &go.data, &[Some(&q)]).unwrap();
        close(&format!("{what} {mode} weight gradient, untracked input"), &gw, &wgpu_rnn::gpu::flat_weights(&g.params));
        for (i, (s, want)) in s0.iter().zip(&g.states).enumerate() {
            close(&format!("{what} {mode} initial state {i} gradient, untracked input"), &s.grad(&grads).unwrap().into_data().to_vec().unwrap(), &want.data);
        }
    }
}

#[test]
fn untracked_input_on_ndarray() {
    untracked_input(&Device::ndarray(), "ndarray");
}

#[test]
fn untracked_input_on_burns_wgpu_device() {
    untracked_input(&wgpu_device(), "wgpu");
}

/// Every golden case (PyTorch's cells and the cell family) through the burn module: forward,
/// and the gradients of `sum(output * grad_output) + sum(s_n * grad_s_n)` through burn's
/// autodiff, compared with the expected tensors at the golden tolerances (`case::compare`).
fn golden_through_burn(device: &Device, what: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("tests");
    let mut files: Vec<_> = ["golden", "golden-variants"]
        .iter()
        .flat_map(|d| std::fs::read_dir(dir.join(d)).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    assert!(files.len() >= 50, "golden cases found: {}", files.len());
    let device = device.clone().autodiff();
    for path in &files {
        let file = wgpu_rnn::io::TensorFile::read(path).unwrap();
        let case = wgpu_rnn::case::Case::<f32>::from_file(&file).unwrap();
        let cfg = case.weights.config.clone();
        let (t, b) = (case.steps, case.batch);
        let o = cfg.output_size();
        let m = FusedRnn::from_weights(&case.weights, false, &device).unwrap();
        let x = Tensor::<3>::from_data(TensorData::new(case.input.clone(), [t, b, cfg.input_size]), &device).require_grad();
        let shapes: Vec<[usize; 3]> = cfg.states().iter().map(|s| {
            let v = cfg.state_shape(s, b);
            [v[0], v[1], v[2]]
        }).collect();
        let s0: Vec<Tensor<3>> = shapes
            .iter()
            .zip(&case.states0)
            .map(|(&sh, v)| Tensor::<3>::from_data(TensorData::new(v.clone().unwrap_or_else(|| vec![0.0; sh.iter().product()]), sh), &device).require_grad())
            .collect();
        let got = m.forward(x.clone(), Some(&case.lengths), Some(s0.clone())).unwrap();
        let go = case.grad_output.clone().unwrap_or_else(|| vec![0.0; t * b * o]);
        let mut loss = (got.output.clone() * Tensor::<3>::from_data(TensorData::new(go, [t, b, o]), &device)).sum();
        for ((s, g), &sh) in got.states.iter().zip(&case.grad_states_n).zip(&shapes) {
            if let Some(g) = g {
                loss = loss + (s.clone() * Tensor::<3>::from_data(TensorData::new(g.clone(), sh), &device)).sum();
            }
        }
        let grads = loss.backward();
        // Back into the case's result names and layout.
        let pack = |v: Vec<f32>, w: usize| PackedSequence::from_padded(&v, [t, b, w], false, &case.lengths).unwrap();
        let out = pack(data(got.output), o);
        let states: Vec<wgpu_rnn::Tensor<f32>> = got.states.into_iter().zip(&shapes).map(|(s, sh)| wgpu_rnn::Tensor { shape: sh.to_vec(), data: data(s) }).collect();
        let gi = pack(x.grad(&grads).unwrap().into_data().to_vec().unwrap(), cfg.input_size);
        let gs: Vec<wgpu_rnn::Tensor<f32>> = s0.iter().zip(&shapes).map(|(s, sh)| wgpu_rnn::Tensor { shape: sh.to_vec(), data: s.grad(&grads).unwrap().into_data().to_vec().unwrap() }).collect();
        let gw: Vec<f32> = m.weights.grad(&grads).unwrap().into_data().to_vec().unwrap();
        // burn's parameter tensor is read, never written (a derived matrix goes elsewhere).
        let after: Vec<f32> = m.weights.val().into_data().to_vec().unwrap();
        let flat = wgpu_rnn::gpu::flat_weights(&case.weights);
        assert!(after.iter().zip(&flat).all(|(a, b)| a.to_bits() == b.to_bits()), "{what} {}: the weights tensor changed", path.display());
        let gp = wgpu_rnn::gpu::weights_from_flat(&cfg, &gw).unwrap();
        let result = case.result(&out, states, Some((gi, gs, gp))).unwrap();
        let report = wgpu_rnn::case::compare(&result, &file, true);
        assert!(report.len() >= 6, "{what} {}: {} tensors compared", path.display(), report.len());
        for r in &report {
            assert_eq!(r.failures, 0, "{what} {}: {} has {}/{} out of tolerance; worst at {}: got {} want {}", path.display(), r.name, r.failures, r.total, r.worst.0, r.worst.1, r.worst.2);
        }
    }
}

#[test]
fn golden_cases_through_burn_on_ndarray() {
    golden_through_burn(&Device::ndarray(), "ndarray");
}

#[test]
fn golden_cases_through_burn_on_wgpu() {
    golden_through_burn(&wgpu_device(), "wgpu");
}

/// Two forwards of one shape (one plan, one tape) before one backward: the second forward
/// overwrites the first's tape, so the first's backward must rebuild it (a generation check),
/// and both inputs' gradients still match the CPU engine.
fn two_forwards_one_backward(device: &Device, what: &str) {
    let p = problem(Mode::Lstm);
    let device = device.clone().autodiff();
    let m = FusedRnn::from_weights(&p.w, false, &device).unwrap();
    let x2v: Vec<f32> = p.x.iter().map(|v| 0.5 - v).collect();
    let xa = Tensor::<3>::from_data(TensorData::new(p.x.clone(), [p.t, p.b, 3]), &device).require_grad();
    let xb = Tensor::<3>::from_data(TensorData::new(x2v.clone(), [p.t, p.b, 3]), &device).require_grad();
    let ya = m.forward(xa.clone(), Some(&p.lengths), None).unwrap().output;
    let yb = m.forward(xb.clone(), Some(&p.lengths), None).unwrap().output;
    let o = p.cfg.output_size();
    let ra: Vec<f32> = (0..p.t * p.b * o).map(|k| ((k % 7) as f32 - 3.0) * 0.1).collect();
    let rb: Vec<f32> = (0..p.t * p.b * o).map(|k| ((k % 4) as f32 - 1.5) * 0.2).collect();
    let t3 = |v: &[f32]| Tensor::<3>::from_data(TensorData::new(v.to_vec(), [p.t, p.b, o]), &device);
    let grads = ((ya * t3(&ra)).sum() + (yb * t3(&rb)).sum()).backward();
    for (x, xv, r) in [(&xa, &p.x, &ra), (&xb, &x2v, &rb)] {
        let packed = PackedSequence::from_padded(xv, [p.t, p.b, 3], false, &p.lengths).unwrap();
        let (_, tape) = cpu::forward(&p.w, &packed, &[], Pass::Training).unwrap();
        let go = PackedSequence::from_padded(r, [p.t, p.b, o], false, &p.lengths).unwrap();
        let g = cpu::backward(&p.w, &tape.unwrap(), &go.data, &[]).unwrap();
        let (want, _) = packed.with_data(g.input.data.clone(), 3).unwrap().to_padded(false, 0.0, None).unwrap();
        close(&format!("{what} two forwards: input gradient"), &x.grad(&grads).unwrap().into_data().to_vec().unwrap(), &want.data);
    }
}

#[test]
fn two_forwards_before_one_backward_on_wgpu() {
    two_forwards_one_backward(&wgpu_device(), "wgpu");
}
