//! The unitary RNN (URNN): its recurrent matrix is unitary on the GPU over 1,000 steps, every
//! parameter element's gradient agrees with central differences in f64, its initialisation
//! is the paper's, and a bad permutation or reflection in a weights file is a typed error.

use crate::common::{rng, uniform};
use crate::gpu_common::contexts;
use rand::Rng;
use wgpu_rnn::cpu::{self, Pass};
use wgpu_rnn::io::{TensorFile, Value};
use wgpu_rnn::{Error, Mode, PackedSequence, RnnConfig, Slot, Weights};

/// |h_t| against |h_0| = 1 over 1,000 steps (the bound). Measured 2026-12-05 at H 64:
/// lavapipe 1.9e-6, llvmpipe/GL 2.6e-6 (9.6e-6 and 1.0e-5 before cell_derive_polish); the CPU
/// engine, which composes W in f64: 1.4e-6.
const UNITARY_TOL: f64 = 1e-5;
/// Largest element of W^T W - I for the GPU's composed W: 3.6e-8 measured (the rounding of
/// its f32 entries); 2.2e-7 without the exact Newton-Schulz step.
const GRAM_TOL: f64 = 1.5e-7;
const FD_STEP: f64 = 1e-6;
const FD_TOL: f64 = 1e-5;

/// The weights with `weight_ih` and modReLU's bias zeroed: then h' = W h exactly (modReLU with
/// bias 0 scales by (|z| + 0) / |z| = 1).
fn unitary_only(cfg: &RnnConfig, seed: u64) -> Weights<f32> {
    let mut w = Weights::<f32>::init_uniform(cfg, seed).unwrap();
    w.for_each_mut(|def, _, _, v| {
        if def.stem == "weight_ih" || def.stem == "bias" {
            v.fill(0.0);
        }
    });
    w
}

#[test]
fn recurrent_matrix_is_unitary_over_1000_steps_on_the_gpu() {
    let (t, b, h) = (1000, 3, 64);
    let cfg = RnnConfig::new(Mode::Urnn, 4, h);
    let w = unitary_only(&cfg, 17);
    let mut g = rng(17);
    // Unit-norm initial states, zero input.
    let mut h0: Vec<f32> = uniform(&mut g, b * h, 1.0).iter().map(|&x| x as f32).collect();
    for row in h0.chunks_mut(h) {
        let n = row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt() as f32;
        row.iter_mut().for_each(|x| *x /= n);
    }
    let x = PackedSequence::from_padded(&vec![0.0f32; t * b * 4], [t, b, 4], false, &[t; 3]).unwrap();
    let norm_drift = |data: &[f32]| -> f64 {
        data.chunks(h).map(|row| (row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt() - 1.0).abs()).fold(0.0, f64::max)
    };
    // The CPU engine (W composed in f64, stored and multiplied in f32): 1.4e-6 (2026-12-05).
    let (out, _) = cpu::forward(&w, &x, &[Some(&h0)], Pass::Inference).unwrap();
    let cpu_drift = norm_drift(&out.output.to_padded(false, 0.0, None).unwrap().0.data);
    assert!(cpu_drift <= UNITARY_TOL, "CPU: |h_t| drifts by {cpu_drift}");
    let mut checked = 0;
    for ctx in contexts() {
        let rnn = wgpu_rnn::gpu::GpuRnn::new(ctx, &w).unwrap();
        let (out, _) = rnn.forward(&x, &[Some(&h0)], Pass::Inference).unwrap();
        // The matrix the engine composed into the weights buffer: W^T W = I (real 2N x 2N,
        // in f64) to a few f32 ulps.
        let mut rb = wgpu_rnn::gpu::Readback::new();
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        rb.copy(ctx, &mut enc, rnn.weights_buffer(), wgpu_rnn::gpu::weight_elems(&cfg)).unwrap();
        let flat = rb.submit_and_read(ctx, enc).unwrap().remove(0);
        let m = &wgpu_rnn::gpu::weights_from_flat(&cfg, &flat).unwrap().params[0].w_hh;
        let mut gram_err = 0.0f64;
        for a in 0..h {
            for c in 0..h {
                let d: f64 = (0..h).map(|r| m[r * h + a] as f64 * m[r * h + c] as f64).sum();
                gram_err = gram_err.max((d - if a == c { 1.0 } else { 0.0 }).abs());
            }
        }
        assert!(gram_err <= GRAM_TOL, "W^T W - I reaches {gram_err}");
        let (padded, _) = out.output.to_padded(false, 0.0, None).unwrap();
        let mut worst = 0.0f64;
        for (i, row) in padded.data.chunks(h).enumerate() {
            let norm = row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            let dev = (norm - 1.0).abs();
            assert!(dev <= UNITARY_TOL, "{:?}: |h| = {norm} at step {} row {}", ctx.adapter_info().backend, i / b, i % b);
            worst = worst.max(dev);
        }
        // The states moved (W is not the identity): the last step differs from h0.
        let last = &padded.data[(t - 1) * b * h..t * b * h];
        let moved = last.iter().zip(&h0).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(moved > 0.1, "h barely moved in {t} steps");
        eprintln!("{:?}: max | |h_t| - 1 | over {t} steps: {worst:.2e}; max |W^T W - I| {gram_err:.2e}", ctx.adapter_info().backend);
        checked += 1;
    }
    assert!(checked >= 1 || std::env::var("CI").is_err(), "no GPU context");
}

#[test]
fn gradients_match_central_differences_on_every_parameter_element() {
    // Two layers, both directions, unsorted lengths: every element of weight_ih, theta,
    // reflection and bias of every layer-direction, in f64.
    let cfg = RnnConfig::new(Mode::Urnn, 3, 8).layers(2).bidirectional(true);
    let mut g = rng(23);
    let mut w = Weights::<f64>::init_uniform(&cfg, 23).unwrap();
    // modReLU's bias away from 0, so its gradient and the relu's both sides are exercised.
    w.for_each_mut(|def, _, _, v| {
        if def.stem == "bias" {
            v.iter_mut().for_each(|x| *x = g.random_range(-0.4..0.2));
        }
    });
    let lengths = [4usize, 2, 3];
    let (t, b) = (4, lengths.len());
    let x = PackedSequence::from_padded(&uniform(&mut g, t * b * 3, 1.0), [t, b, 3], false, &lengths).unwrap();
    let h0 = uniform(&mut g, 4 * b * 8, 0.5);
    let gh = uniform(&mut g, 4 * b * 8, 1.0);
    let (out, tape) = cpu::forward(&w, &x, &[Some(&h0)], Pass::Training).unwrap();
    let go = uniform(&mut g, out.output.data.len(), 1.0);
    let loss = |w: &Weights<f64>| {
        let (o, _) = cpu::forward(w, &x, &[Some(&h0)], Pass::Inference).unwrap();
        o.output.data.iter().zip(&go).map(|(a, b)| a * b).sum::<f64>() + o.states[0].data.iter().zip(&gh).map(|(a, b)| a * b).sum::<f64>()
    };
    let grads = cpu::backward(&w, &tape.unwrap(), &go, &[Some(&gh)]).unwrap();
    let mut analytic = Vec::new();
    grads.params.for_each(|def, layer, dir, v| analytic.push((def.clone(), layer, dir, v.to_vec())));
    let mut checked = 0;
    for (def, layer, dir, av) in analytic {
        if def.fixed {
            assert!(av.iter().all(|&v| v == 0.0), "{}: the permutation has no gradient", def.stem);
            continue;
        }
        let s = layer * 2 + dir;
        for (i, &a) in av.iter().enumerate() {
            let at = |e: f64| {
                let mut w2 = w.clone();
                w2.params[s].param_mut(&def).unwrap()[i] += e;
                loss(&w2)
            };
            let num = (at(FD_STEP) - at(-FD_STEP)) / (2.0 * FD_STEP);
            assert!((a - num).abs() <= FD_TOL * (1.0 + num.abs()), "{}_l{layer} dir {dir} [{i}]: analytic {a}, numeric {num}", def.stem);
            checked += 1;
        }
    }
    // (24 + 12 + 16 + 4) + (128 + 12 + 16 + 4) elements per direction.
    assert_eq!(checked, 2 * (56 + 160));
}

#[test]
fn initialisation_is_the_papers() {
    let cfg = RnnConfig::new(Mode::Urnn, 10, 32).layers(2);
    let w = Weights::<f64>::init_uniform(&cfg, 3).unwrap();
    let pi = std::f64::consts::PI;
    let mut seen = 0;
    w.for_each(|def, layer, _, v| {
        seen += 1;
        match def.stem {
            "theta" => assert!(v.iter().all(|&x| (-pi..pi).contains(&x)) && v.iter().any(|&x| x < -1.0) && v.iter().any(|&x| x > 1.0)),
            "reflection" => assert!(v.iter().all(|&x| (-1.0..1.0).contains(&x)) && v.iter().any(|&x| x < -0.5)),
            "bias" => assert!(v.iter().all(|&x| x == 0.0)),
            "weight_ih" => {
                let fan_in = if layer == 0 { 10.0 } else { 32.0 };
                let bound = (6.0 / (fan_in + 32.0f64)).sqrt();
                assert!(v.iter().all(|&x| x.abs() <= bound) && v.iter().any(|&x| x.abs() > 0.8 * bound));
            }
            "permutation" => {
                let mut p: Vec<usize> = v.iter().map(|&x| x as usize).collect();
                assert!(p.iter().enumerate().any(|(i, &x)| i != x), "the identity");
                p.sort_unstable();
                assert!(p.iter().enumerate().all(|(i, &x)| i == x), "not a permutation: {v:?}");
            }
            other => panic!("unexpected parameter {other}"),
        }
    });
    assert_eq!(seen, 10);
    // The seed decides it.
    assert_eq!(Weights::<f64>::init_uniform(&cfg, 3).unwrap(), w);
    assert_ne!(Weights::<f64>::init_uniform(&cfg, 4).unwrap(), w);
}

#[test]
fn bad_permutations_and_reflections_are_typed_errors() {
    let cfg = RnnConfig::new(Mode::Urnn, 3, 8);
    let w = Weights::<f32>::init_uniform(&cfg, 1).unwrap();
    let mut file = TensorFile::default();
    w.to_tensor_file(&mut file, "").unwrap();
    assert!(matches!(file.tensors["permutation_l0"], Value::Int(_)), "saved as integers");
    assert_eq!(Weights::<f32>::from_file(&file, "", None).unwrap(), w);
    let with_perm = |p: Vec<i64>| {
        let mut f = file.clone();
        f.put_int("permutation_l0", vec![p.len()], p);
        Weights::<f32>::from_file(&f, "", None)
    };
    assert!(with_perm(vec![3, 2, 1, 0]).is_ok());
    for bad in [vec![0, 1, 2, 4], vec![0, 1, 1, 3], vec![-1, 0, 1, 2], vec![0, 1, 2, i64::MAX]] {
        assert!(matches!(with_perm(bad.clone()), Err(Error::InvalidParameter { .. })), "{bad:?}");
    }
    assert!(matches!(with_perm(vec![0, 1, 2]), Err(Error::ShapeMismatch { .. })));
    let mut f = file.clone();
    f.tensors.remove("permutation_l0");
    assert!(matches!(Weights::<f32>::from_file(&f, "", None), Err(Error::MissingTensor(n)) if n == "permutation_l0"));
    let mut f = file.clone();
    f.put_float("permutation_l0", vec![4], vec![0.0, 1.5, 2.0, 3.0]);
    assert!(matches!(Weights::<f32>::from_file(&f, "", None), Err(Error::UnsupportedDtype { .. })));
    // A zero reflection vector (v2: rows 2 and 3).
    let mut f = file.clone();
    let Value::Float(r) = &file.tensors["reflection_l0"] else { panic!() };
    let mut data = r.data.clone();
    data[8..].fill(0.0);
    f.put_float("reflection_l0", vec![4, 4], data);
    assert!(matches!(Weights::<f32>::from_file(&f, "", None), Err(Error::InvalidParameter { .. })));
    // Weights edited in memory are refused by the engines too.
    let mut w2 = w.clone();
    w2.params[0].get_mut(Slot::Pointwise).unwrap()[8 * 4] = 7.0;
    let x = PackedSequence::from_padded(&[0.0f32; 6], [2, 1, 3], false, &[2]).unwrap();
    assert!(matches!(cpu::forward(&w2, &x, &[], Pass::Inference), Err(Error::InvalidParameter { .. })));
    for ctx in contexts() {
        assert!(matches!(wgpu_rnn::gpu::GpuRnn::new(ctx, &w2).and_then(|r| r.forward(&x, &[], Pass::Inference)), Err(Error::InvalidParameter { .. })));
    }
    // An odd hidden size.
    assert!(RnnConfig::new(Mode::Urnn, 3, 7).validate().is_err());
}

#[test]
fn the_weights_buffer_is_a_written_role_for_a_derived_matrix() {
    // The forward composes W into the weights buffer: sharing it with the input (both only
    // read, for a cell without a derived matrix) is refused for the uRNN, not corrupted.
    use wgpu_rnn::gpu::{ForwardBuffers, Plan, SeqLayout};
    let Some(ctx) = crate::gpu_common::vulkan() else { return };
    let x = PackedSequence::from_padded(&[0.5f32; 2 * 2 * 4], [2, 2, 4], false, &[2, 1]).unwrap();
    let layout = SeqLayout::of(&x).unwrap();
    let buf = |size| ctx.device.create_buffer(&wgpu::BufferDescriptor { label: None, size, usage: wgpu::BufferUsages::STORAGE, mapped_at_creation: false });
    for (mode, refused) in [(Mode::RnnTanh, false), (Mode::Urnn, true)] {
        let cfg = RnnConfig::new(mode, 4, 4);
        let plan = Plan::new(ctx, &cfg, &layout, Pass::Inference).unwrap();
        let (shared, out, hn) = (buf(4096), buf(4096), buf(4096));
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        let r = plan.record_forward(&mut enc, &ForwardBuffers { weights: shared.slice(..), input: shared.slice(..), output: out.slice(..), states0: &[], states_n: &[hn.slice(..)], counter: None });
        assert_eq!(matches!(r, Err(Error::BufferAliasing(_))), refused, "{mode}: {r:?}");
    }
}
