#![allow(deprecated)] // burn 0.22 deprecates ndarray (and TensorData::to_vec); the issue asks for ndarray
//! The burn module against burn's own `nn::Lstm` and `nn::Gru` with the same weights (PyTorch's
//! gate rows mapped onto burn's per-gate `Linear`s, stored `[in, out]`): forward and the
//! gradients of the input and of every weight, at the golden tolerances, on ndarray and on
//! burn's wgpu runtime (lavapipe here). burn's GRU with `reset_after = false` is our
//! GRU_RESET_BEFORE.

use burn::module::Param;
use burn::nn::{GateController, Gru, GruConfig, Linear, Lstm, LstmConfig};
use burn::tensor::{Device, Tensor, TensorData};
use wgpu_rnn::case::tolerance::{FORWARD_ATOL, FORWARD_RTOL, GRAD_ATOL, GRAD_RTOL};
use wgpu_rnn::{Mode, RnnConfig, Slot, Weights};
use wgpu_rnn_burn::FusedRnn;

const T: usize = 5;
const B: usize = 3;
const I: usize = 4;
const H: usize = 6;

fn close(what: &str, got: &[f32], want: &[f32], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g as f64, w as f64);
        assert!(g.is_finite() && (g - w).abs() <= atol + rtol * w.abs(), "{what}[{k}]: ours {g}, burn's {w}");
    }
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

/// Gate k's rows of a PyTorch `[G * H, cols]` matrix, as burn's `[cols, H]`.
fn gate_t(w: &[f32], k: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; cols * H];
    for r in 0..H {
        for c in 0..cols {
            out[c * H + r] = w[(k * H + r) * cols + c];
        }
    }
    out
}

fn linear(weight: Vec<f32>, bias: &[f32], k: usize, cols: usize, device: &Device) -> Linear {
    Linear {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(weight, [cols, H]), device)),
        bias: Some(Param::from_tensor(Tensor::from_data(TensorData::new(bias[k * H..(k + 1) * H].to_vec(), [H]), device))),
    }
}

/// burn's gate k from our weights.
fn gate(w: &Weights<f32>, k: usize, device: &Device) -> GateController {
    let p = &w.params[0];
    let (wi, wh, bi, bh) = (p.get(Slot::WeightIh).unwrap(), p.get(Slot::WeightHh).unwrap(), p.get(Slot::BiasIh).unwrap(), p.get(Slot::BiasHh).unwrap());
    GateController { input_transform: linear(gate_t(wi, k, I), bi, k, I, device), hidden_transform: linear(gate_t(wh, k, H), bh, k, H, device) }
}

/// burn's gate's four gradients in PyTorch's layout, written into our flat gradient's gate k.
fn gate_grads(g: &GateController, grads: &burn::tensor::Gradients, k: usize, out: &mut Weights<f32>) {
    let wgrad = |l: &Linear, cols: usize| -> (Vec<f32>, Vec<f32>) {
        let w = host(l.weight.grad(grads).unwrap());
        let mut rows = vec![0.0; H * cols];
        for r in 0..H {
            for c in 0..cols {
                rows[r * cols + c] = w[c * H + r];
            }
        }
        (rows, host(l.bias.as_ref().unwrap().grad(grads).unwrap()))
    };
    let (wi, bi) = wgrad(&g.input_transform, I);
    let (wh, bh) = wgrad(&g.hidden_transform, H);
    let p = &mut out.params[0];
    p.get_mut(Slot::WeightIh).unwrap()[k * H * I..(k + 1) * H * I].copy_from_slice(&wi);
    p.get_mut(Slot::WeightHh).unwrap()[k * H * H..(k + 1) * H * H].copy_from_slice(&wh);
    p.get_mut(Slot::BiasIh).unwrap()[k * H..(k + 1) * H].copy_from_slice(&bi);
    p.get_mut(Slot::BiasHh).unwrap()[k * H..(k + 1) * H].copy_from_slice(&bh);
}

enum Theirs {
    Lstm(Lstm),
    Gru(Gru),
}

/// burn's module for `mode` with `w`'s values, and the order of PyTorch's gates in it.
fn theirs(mode: Mode, w: &Weights<f32>, device: &Device) -> Theirs {
    match mode {
        Mode::Lstm => {
            // PyTorch's rows: i, f, g, o.
            let mut m = LstmConfig::new(I, H, true).with_batch_first(false).init(device);
            m.input_gate = gate(w, 0, device);
            m.forget_gate = Some(gate(w, 1, device));
            m.cell_gate = gate(w, 2, device);
            m.output_gate = gate(w, 3, device);
            Theirs::Lstm(m)
        }
        _ => {
            // PyTorch's rows: r, z, n.
            let mut m = GruConfig::new(I, H, true).with_reset_after(mode == Mode::Gru).init(device);
            m.reset_gate = gate(w, 0, device);
            m.update_gate = gate(w, 1, device);
            m.new_gate = gate(w, 2, device);
            Theirs::Gru(m)
        }
    }
}

fn compare(device: &Device, what: &str) {
    let device = device.clone().autodiff();
    for mode in [Mode::Lstm, Mode::Gru, Mode::GruResetBefore] {
        let cfg = RnnConfig::new(mode, I, H);
        let w = Weights::<f32>::init_uniform(&cfg, 21).unwrap();
        let xs: Vec<f32> = (0..T * B * I).map(|k| (k as f32 * 0.41).sin()).collect();
        let r: Vec<f32> = (0..T * B * H).map(|k| ((k % 9) as f32 - 4.0) * 0.1).collect();
        let what = format!("{what} {mode}");
        // Ours, [T, B, I].
        let ours = FusedRnn::from_weights(&w, false, &device).unwrap();
        let x1 = Tensor::<3>::from_data(TensorData::new(xs.clone(), [T, B, I]), &device).require_grad();
        let out1 = ours.forward(x1.clone(), None, None).unwrap();
        let h1 = out1.states[0].clone().reshape([B, H]);
        let loss1 = (out1.output.clone() * Tensor::<3>::from_data(TensorData::new(r.clone(), [T, B, H]), &device)).sum() + h1.clone().sum();
        let g1 = loss1.backward();
        // burn's, batch-first [B, T, I] for its GRU.
        let x2 = Tensor::<3>::from_data(TensorData::new(xs.clone(), [T, B, I]), &device).require_grad();
        let rt = Tensor::<3>::from_data(TensorData::new(r.clone(), [T, B, H]), &device);
        let m = theirs(mode, &w, &device);
        let (out2, h2) = match &m {
            Theirs::Lstm(l) => {
                let (o, s) = l.forward(x2.clone(), None);
                (o, s.hidden)
            }
            Theirs::Gru(g) => {
                let o = g.forward(x2.clone().swap_dims(0, 1), None).swap_dims(0, 1);
                let last = o.clone().slice([T - 1..T]).reshape([B, H]);
                (o, last)
            }
        };
        let loss2 = (out2.clone() * rt).sum() + h2.clone().sum();
        let g2 = loss2.backward();
        close(&format!("{what} output"), &host(out1.output), &host(out2), FORWARD_ATOL, FORWARD_RTOL);
        close(&format!("{what} h_n"), &host(h1), &host(h2), FORWARD_ATOL, FORWARD_RTOL);
        close(&format!("{what} input gradient"), &host(x1.grad(&g1).unwrap()), &host(x2.grad(&g2).unwrap()), GRAD_ATOL, GRAD_RTOL);
        // burn's weight gradients mapped into PyTorch's layout.
        let mut want = Weights::<f32>::zeros(&cfg).unwrap();
        match &m {
            Theirs::Lstm(l) => {
                for (k, g) in [&l.input_gate, l.forget_gate.as_ref().unwrap(), &l.cell_gate, &l.output_gate].into_iter().enumerate() {
                    gate_grads(g, &g2, k, &mut want);
                }
            }
            Theirs::Gru(g) => {
                for (k, gc) in [&g.reset_gate, &g.update_gate, &g.new_gate].into_iter().enumerate() {
                    gate_grads(gc, &g2, k, &mut want);
                }
            }
        }
        close(&format!("{what} weight gradients"), &host(ours.weights.grad(&g1).unwrap()), &wgpu_rnn::gpu::flat_weights(&want), GRAD_ATOL, GRAD_RTOL);
    }
}

#[test]
fn lstm_and_gru_match_burns_own_on_ndarray() {
    compare(&Device::ndarray(), "ndarray");
}

#[test]
fn lstm_and_gru_match_burns_own_on_wgpu() {
    let (device, _) = wgpu_rnn_burn::init_wgpu(Device::wgpu_options()).unwrap();
    compare(&device, "wgpu");
}
