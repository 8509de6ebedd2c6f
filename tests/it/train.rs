//! The training kit: CPU twins against central differences (f64), GPU ops against the CPU
//! twins, a few optimiser steps on a tiny LSTM lowering the loss, bitwise determinism of a
//! short training run, and typed errors.

use crate::common::{assert_close, rng, uniform};
use crate::gpu_common::contexts;
use rand::Rng;
use std::sync::Arc;
use wgpu_rnn::cpu::train as ct;
use wgpu_rnn::gpu::train::{cosine_lr, read_f32, upload_u32, ClassTargets, EmbeddingIndex, LinearShape, OpBuilder, Optimizer, OptimizerKind, ParamGroup, METRIC_FLOATS};
use wgpu_rnn::gpu::{storage, upload, BackwardBuffers, Context, ForwardBuffers, GpuRnn};
use wgpu_rnn::{cpu::Pass, Error, Mode, PackedSequence, RnnConfig, Weights};

/// Central-difference step and tolerance for the f64 gradient checks.
const FD_EPS: f64 = 1e-6;
const FD_TOL: f64 = 1e-7;
/// GPU (f32) against the CPU twin in f64: absolute + relative.
const GPU_ATOL: f64 = 1e-5;
const GPU_RTOL: f64 = 1e-4;

/// Central differences of `f` at `x`, each coordinate in turn.
fn numeric_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let v = x[i];
            x[i] = v + FD_EPS;
            let up = f(&x);
            x[i] = v - FD_EPS;
            let down = f(&x);
            x[i] = v;
            (up - down) / (2.0 * FD_EPS)
        })
        .collect()
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn loss_gradients_match_finite_differences() {
    let mut r = rng(11);
    let z = uniform(&mut r, 13, 4.0);
    let y: Vec<f64> = (0..13).map(|i| (i % 2) as f64).collect();
    let got = ct::bce_with_logits(&z, &y).unwrap();
    assert_close("bce grad", &got.grad, &numeric_grad(&z, |z| ct::bce_with_logits(z, &y).unwrap().loss), FD_TOL, FD_TOL);
    // A hand value: logits 0 give log 2 per row, whatever the target.
    assert!((ct::bce_with_logits(&[0.0f64, 0.0], &[1.0, 0.0]).unwrap().loss - std::f64::consts::LN_2).abs() < 1e-15);

    let yr = uniform(&mut r, 13, 1.0);
    let got = ct::mse(&z, &yr).unwrap();
    assert_close("mse grad", &got.grad, &numeric_grad(&z, |z| ct::mse(z, &yr).unwrap().loss), FD_TOL, FD_TOL);

    let classes = 7;
    let logits = uniform(&mut r, 5 * classes, 3.0);
    let t: Vec<u32> = (0..5).map(|i| (i * 3 % classes) as u32).collect();
    let got = ct::softmax_cross_entropy(&logits, classes, &t).unwrap();
    let num = numeric_grad(&logits, |l| ct::softmax_cross_entropy(l, classes, &t).unwrap().loss);
    assert_close("softmax ce grad", &got.grad, &num, FD_TOL, FD_TOL);
    // Uniform logits: log(classes) per row.
    let flat = vec![0.5f64; 2 * classes];
    assert!((ct::softmax_cross_entropy(&flat, classes, &[0, 6]).unwrap().loss - (classes as f64).ln()).abs() < 1e-12);
}

#[test]
fn linear_and_embedding_gradients_match_finite_differences() {
    let mut r = rng(12);
    let (rows, input, output) = (5, 4, 3);
    let x = uniform(&mut r, rows * input, 1.0);
    let p = uniform(&mut r, output * input + output, 1.0);
    let probe = uniform(&mut r, rows * output, 1.0); // loss = sum(y * probe), so dL/dy = probe
    let loss = |x: &[f64], p: &[f64]| ct::linear_forward(x, p, rows, input, output).unwrap().iter().zip(&probe).map(|(a, b)| a * b).sum::<f64>();
    let (dp, dx) = ct::linear_backward(&x, &p, &probe, rows, input, output).unwrap();
    assert_close("linear dparams", &dp, &numeric_grad(&p, |p| loss(&x, p)), FD_TOL, FD_TOL);
    assert_close("linear dx", &dx, &numeric_grad(&x, |x| loss(x, &p)), FD_TOL, FD_TOL);

    let (vocab, dim) = (6, 3);
    let table = uniform(&mut r, vocab * dim, 1.0);
    let ids = [2u32, 0, 5, 2, 2, 1, 0];
    let probe = uniform(&mut r, ids.len() * dim, 1.0);
    let eloss = |t: &[f64]| ct::embedding_forward(t, dim, &ids).unwrap().iter().zip(&probe).map(|(a, b)| a * b).sum::<f64>();
    assert_close("embedding grad", &ct::embedding_backward(&probe, dim, &ids, vocab, None).unwrap(), &numeric_grad(&table, eloss), FD_TOL, FD_TOL);
    // The padding id gets no gradient; the others are unchanged.
    let with_pad = ct::embedding_backward(&probe, dim, &ids, vocab, Some(0)).unwrap();
    assert!(with_pad[..dim].iter().all(|&v| v == 0.0));
    assert_eq!(&with_pad[dim..], &ct::embedding_backward(&probe, dim, &ids, vocab, None).unwrap()[dim..]);
}

#[test]
fn gpu_embedding_linear_and_block_ops_match_cpu() {
    for ctx in contexts() {
        let mut r = rng(13);
        let (vocab, dim) = (37, 5);
        let table = uniform(&mut r, vocab * dim, 1.0);
        let ids: Vec<u32> = (0..50).map(|_| r.random_range(0..vocab as u32)).collect();
        let index = EmbeddingIndex::new(&ids, vocab, Some(3)).unwrap();
        let grad_rows = uniform(&mut r, ids.len() * dim, 1.0);
        let tb = upload(ctx, "table", &f32s(&table)).unwrap();
        let ib = upload_u32(ctx, "index", index.data()).unwrap();
        let out = storage(ctx, "rows", ids.len() * dim).unwrap();
        let gr = upload(ctx, "grad rows", &f32s(&grad_rows)).unwrap();
        let gt = upload(ctx, "grad table", &vec![f32::NAN; vocab * dim]).unwrap(); // zeroed by the op

        // Linear over two blocks [2, rows, w] arranged side by side.
        let (rows, w, output) = (6, 4, 3);
        let blocks = uniform(&mut r, 2 * rows * w, 1.0);
        let s = LinearShape { rows, input: 2 * w, output };
        let params = uniform(&mut r, s.param_elems(), 1.0);
        let dy = uniform(&mut r, rows * output, 1.0);
        let bb = upload(ctx, "blocks", &f32s(&blocks)).unwrap();
        let xb = storage(ctx, "x", rows * 2 * w).unwrap();
        let pb = upload(ctx, "params", &f32s(&params)).unwrap();
        let yb = storage(ctx, "y", rows * output).unwrap();
        let dyb = upload(ctx, "dy", &f32s(&dy)).unwrap();
        let dpb = storage(ctx, "dparams", s.param_elems()).unwrap();
        let dxb = storage(ctx, "dx", rows * 2 * w).unwrap();
        let dblocks = storage(ctx, "dblocks", 2 * rows * w).unwrap();

        let mut b = OpBuilder::new(ctx);
        b.embedding_forward(&tb, &ib, &index, dim, &out).unwrap();
        b.embedding_backward(&gr, &ib, &index, dim, &gt).unwrap();
        b.blocks_to_rows(&bb, 0, 2, rows, w, &xb).unwrap();
        b.linear_forward(s, &xb, &pb, &yb).unwrap();
        b.linear_backward(s, &xb, &pb, &dyb, &dpb, Some(&dxb)).unwrap();
        b.rows_to_blocks(&dxb, 2, rows, w, &dblocks, 0).unwrap();
        let got = b
            .run(&[(&out, ids.len() * dim), (&gt, vocab * dim), (&xb, rows * 2 * w), (&yb, rows * output), (&dpb, s.param_elems()), (&dxb, rows * 2 * w), (&dblocks, 2 * rows * w)])
            .unwrap();
        let what = ctx.describe();
        assert_close(&format!("{what}: embedding forward"), &f64s(&got[0]), &ct::embedding_forward(&table, dim, &ids).unwrap(), 1e-7, 1e-7);
        assert_close(&format!("{what}: embedding backward"), &f64s(&got[1]), &ct::embedding_backward(&grad_rows, dim, &ids, vocab, Some(3)).unwrap(), GPU_ATOL, GPU_RTOL);
        let x = ct::blocks_to_rows(&blocks, 2, rows, w).unwrap();
        assert_close(&format!("{what}: blocks to rows"), &f64s(&got[2]), &x, 1e-7, 1e-7);
        assert_close(&format!("{what}: linear forward"), &f64s(&got[3]), &ct::linear_forward(&x, &params, rows, 2 * w, output).unwrap(), GPU_ATOL, GPU_RTOL);
        let (dp, dx) = ct::linear_backward(&x, &params, &dy, rows, 2 * w, output).unwrap();
        assert_close(&format!("{what}: linear dparams"), &f64s(&got[4]), &dp, GPU_ATOL, GPU_RTOL);
        assert_close(&format!("{what}: linear dx"), &f64s(&got[5]), &dx, GPU_ATOL, GPU_RTOL);
        // rows_to_blocks undoes blocks_to_rows.
        assert_eq!(ct::blocks_to_rows(&f64s(&got[6]), 2, rows, w).unwrap(), f64s(&got[5]), "{what}: rows_to_blocks");
    }
}

#[test]
fn gpu_losses_match_cpu_and_accumulate_metrics() {
    for ctx in contexts() {
        let mut r = rng(14);
        let rows = 300; // more than one workgroup's 256 threads
        let z = uniform(&mut r, rows, 5.0);
        let y: Vec<f64> = (0..rows).map(|_| r.random_range(0..2) as f64).collect();
        let yr = uniform(&mut r, rows, 2.0);
        let classes = 11;
        let logits = uniform(&mut r, rows * classes, 4.0);
        let t: Vec<u32> = (0..rows).map(|_| r.random_range(0..classes as u32)).collect();
        let zb = upload(ctx, "z", &f32s(&z)).unwrap();
        let yb = upload(ctx, "y", &f32s(&y)).unwrap();
        let yrb = upload(ctx, "yr", &f32s(&yr)).unwrap();
        let lb = upload(ctx, "logits", &f32s(&logits)).unwrap();
        let tb = upload_u32(ctx, "targets", &[vec![99u32; 4], t.clone()].concat()).unwrap(); // at offset 4
        let g1 = storage(ctx, "g1", rows).unwrap();
        let g2 = storage(ctx, "g2", rows).unwrap();
        let g3 = storage(ctx, "g3", rows * classes).unwrap();
        let scratch = storage(ctx, "scratch", 2 * rows).unwrap();
        let metrics = upload(ctx, "metrics", &[0.0; 3 * METRIC_FLOATS]).unwrap();
        let mut b = OpBuilder::new(ctx);
        b.bce_with_logits(rows, &zb, &yb, &g1, &metrics, 0).unwrap();
        b.bce_with_logits(rows, &zb, &yb, &g1, &metrics, 0).unwrap(); // accumulates
        b.mse(rows, &zb, &yrb, &g2, &metrics, METRIC_FLOATS).unwrap();
        b.softmax_cross_entropy(rows, classes, &lb, &tb, 4, &g3, &scratch, &metrics, 2 * METRIC_FLOATS).unwrap();
        let got = b.run(&[(&g1, rows), (&g2, rows), (&g3, rows * classes), (&metrics, 3 * METRIC_FLOATS)]).unwrap();
        let what = ctx.describe();
        let bce = ct::bce_with_logits(&z, &y).unwrap();
        let mse = ct::mse(&z, &yr).unwrap();
        let ce = ct::softmax_cross_entropy(&logits, classes, &t).unwrap();
        assert_close(&format!("{what}: bce grad"), &f64s(&got[0]), &bce.grad, GPU_ATOL, GPU_RTOL);
        assert_close(&format!("{what}: mse grad"), &f64s(&got[1]), &mse.grad, GPU_ATOL, GPU_RTOL);
        assert_close(&format!("{what}: ce grad"), &f64s(&got[2]), &ce.grad, GPU_ATOL, GPU_RTOL);
        let m = f64s(&got[3]);
        let n = rows as f64;
        assert_close(&format!("{what}: bce metrics"), &m[..3], &[2.0 * bce.loss * n, 2.0 * bce.correct as f64, 2.0 * n], 1e-3, 1e-5);
        assert_close(&format!("{what}: mse metrics"), &m[4..7], &[mse.loss * n, 0.0, n], 1e-3, 1e-5);
        assert_close(&format!("{what}: ce metrics"), &m[8..11], &[ce.loss * n, ce.correct as f64, n], 1e-3, 1e-5);
    }
}

#[test]
fn cosine_schedule_is_pytorchs_closed_form_and_rates_are_checked() {
    // CosineAnnealingLR(T_max = 8, eta_min = 0) from 0.01 for steps 0..=8, from the closed form
    // in PyTorch's documentation (computed in Python's f64; its recursive update agrees).
    let torch = [0.01, 0.009619397662556434, 0.008535533905932738, 0.006913417161825449, 0.005, 0.003086582838174551, 0.0014644660940672624, 0.00038060233744356627, 0.0];
    for (step, &want) in torch.iter().enumerate() {
        assert!((cosine_lr(0.01, step, 8) as f64 - want).abs() <= 1e-9, "step {step}");
    }
    assert_eq!(cosine_lr(0.01, 9, 8), 0.0);
    assert_eq!(cosine_lr(0.01, 3, 0), 0.01);
    for bad in [f32::NAN, f32::INFINITY, -1e-3] {
        assert!(matches!(OptimizerKind::adam(1e-3).with_lr(bad), Err(Error::InvalidConfig(_))), "{bad}");
    }
    assert_eq!(OptimizerKind::Sgd { lr: 0.1, momentum: 0.9 }.with_lr(0.2).unwrap(), OptimizerKind::Sgd { lr: 0.2, momentum: 0.9 });
}

#[test]
fn gpu_optimisers_with_clipping_match_cpu() {
    for ctx in contexts() {
        for kind in [OptimizerKind::adam(0.01), OptimizerKind::Sgd { lr: 0.05, momentum: 0.9 }] {
            let mut r = rng(15);
            let sizes = [300, 7];
            let mut params: Vec<Vec<f64>> = sizes.iter().map(|&n| uniform(&mut r, n, 1.0)).collect();
            let pbs: Vec<_> = params.iter().map(|p| upload(ctx, "p", &f32s(p)).unwrap()).collect();
            let gbs: Vec<_> = sizes.iter().map(|&n| storage(ctx, "g", n).unwrap()).collect();
            let groups: Vec<_> = (0..2).map(|i| ParamGroup { params: &pbs[i], grads: &gbs[i], elems: sizes[i] }).collect();
            let clip = 2.0;
            let mut opt = Optimizer::new(ctx, kind, Some(clip), &groups).unwrap();
            let mut adam: Vec<ct::AdamState<f64>> = vec![Default::default(); 2];
            let mut bufs: Vec<Vec<f64>> = vec![Vec::new(); 2];
            for step in 1..=3u32 {
                // Large gradients on steps 1 and 3 (clipped), small on step 2 (not clipped).
                let s = if step == 2 { 0.01 } else { 1.0 };
                let grads: Vec<Vec<f64>> = sizes.iter().map(|&n| uniform(&mut r, n, s)).collect();
                for i in 0..2 {
                    ctx.queue.write_buffer(&gbs[i], 0, bytemuck::cast_slice(&f32s(&grads[i])));
                }
                // A schedule's rate per step (halved each step), set between steps.
                let k = kind.with_lr(kind.lr() / (1 << (step - 1)) as f32).unwrap();
                opt.set_lr(k.lr()).unwrap();
                assert_eq!(opt.kind(), k);
                let mut b = OpBuilder::new(ctx);
                opt.record_step(&mut b).unwrap();
                b.run(&[]).unwrap();
                let (norm, scale) = ct::clip_scale(&[&grads[0], &grads[1]], Some(clip as f64));
                assert_eq!(step == 2, scale == 1.0, "step {step} clipping");
                for i in 0..2 {
                    match k {
                        OptimizerKind::Adam { lr, beta1, beta2, eps } => {
                            ct::adam_step(&mut params[i], &grads[i], &mut adam[i], step, scale, lr as f64, beta1 as f64, beta2 as f64, eps as f64).unwrap()
                        }
                        OptimizerKind::Sgd { lr, momentum } => ct::sgd_step(&mut params[i], &grads[i], &mut bufs[i], scale, lr as f64, momentum as f64).unwrap(),
                    }
                }
                let st = opt.read_state(ctx).unwrap();
                assert_eq!(st.steps, step as f32);
                assert!((st.grad_norm as f64 - norm).abs() <= 1e-4 * norm, "{kind:?}: norm {} vs {norm}", st.grad_norm);
            }
            for i in 0..2 {
                let got = read_f32(ctx, &pbs[i], sizes[i]).unwrap();
                assert_close(&format!("{}: {kind:?} group {i}", ctx.describe()), &f64s(&got), &params[i], GPU_ATOL, GPU_RTOL);
            }
            // A NaN gradient skips the step and is counted; the parameters are untouched.
            let before = read_f32(ctx, &pbs[0], sizes[0]).unwrap();
            ctx.queue.write_buffer(&gbs[1], 0, bytemuck::cast_slice(&[f32::NAN]));
            let mut b = OpBuilder::new(ctx);
            opt.record_step(&mut b).unwrap();
            b.run(&[]).unwrap();
            let st = opt.read_state(ctx).unwrap();
            assert_eq!((st.steps, st.skipped), (3.0, 1.0));
            assert_eq!(read_f32(ctx, &pbs[0], sizes[0]).unwrap(), before);
        }
    }
}

/// A tiny sequence regression trained end to end on the device: LSTM (3 -> 8) over 4
/// sequences of 5 steps, a linear head on h_n, MSE against fixed targets, Adam with
/// clipping; everything recorded into one encoder per step. Returns the loss per step and
/// the final weights.
fn train_tiny(ctx: &Arc<Context>, steps: usize) -> (Vec<f32>, Vec<f32>) {
    let cfg = RnnConfig::new(Mode::Lstm, 3, 8);
    let w = Weights::<f32>::init_uniform(&cfg, 5).unwrap();
    let rnn = GpuRnn::new(ctx, &w).unwrap();
    let (b, t) = (4, 5);
    let mut r = rng(16);
    let x = PackedSequence::from_padded(&f32s(&uniform(&mut r, t * b * 3, 1.0)), [t, b, 3], false, &[5, 5, 3, 2]).unwrap();
    let target: Vec<f32> = vec![0.5, -0.5, 0.25, -0.25];
    let plan = wgpu_rnn::gpu::Plan::new(ctx, &cfg, &wgpu_rnn::gpu::SeqLayout::of(&x).unwrap(), Pass::Training).unwrap();
    let n = x.rows();
    let head = LinearShape { rows: b, input: 8, output: 1 };
    let xb = upload(ctx, "x", &x.data).unwrap();
    let out = storage(ctx, "out", n * 8).unwrap();
    let hn = storage(ctx, "h_n", b * 8).unwrap();
    let cn = storage(ctx, "c_n", b * 8).unwrap();
    let hp = upload(ctx, "head", &[0.1f32, -0.2, 0.3, 0.1, -0.1, 0.2, 0.05, -0.3, 0.0]).unwrap();
    let hg = storage(ctx, "head grad", head.param_elems()).unwrap();
    let pred = storage(ctx, "pred", b).unwrap();
    let tb = upload(ctx, "target", &target).unwrap();
    let dpred = storage(ctx, "dpred", b).unwrap();
    let dhn = storage(ctx, "dh_n", b * 8).unwrap();
    let zeros = upload(ctx, "zeros", &vec![0.0; n * 8]).unwrap();
    let gi = storage(ctx, "grad input", n * 3).unwrap();
    let gh0 = storage(ctx, "grad h0", b * 8).unwrap();
    let gc0 = storage(ctx, "grad c0", b * 8).unwrap();
    let gw = storage(ctx, "grad weights", plan.weight_elems()).unwrap();
    let metrics = upload(ctx, "metrics", &[0.0; METRIC_FLOATS]).unwrap();
    let opt = Optimizer::new(
        ctx,
        OptimizerKind::adam(0.02),
        Some(1.0),
        &[ParamGroup { params: rnn.weights_buffer(), grads: &gw, elems: plan.weight_elems() }, ParamGroup { params: &hp, grads: &hg, elems: head.param_elems() }],
    )
    .unwrap();
    let mut mid = OpBuilder::new(ctx);
    mid.fill(&metrics, 0, METRIC_FLOATS, 0.0).unwrap();
    mid.linear_forward(head, &hn, &hp, &pred).unwrap();
    mid.mse(b, &pred, &tb, &dpred, &metrics, 0).unwrap();
    mid.linear_backward(head, &hn, &hp, &dpred, &hg, Some(&dhn)).unwrap();
    let mid = mid.build().unwrap();
    let mut post = OpBuilder::new(ctx);
    opt.record_step(&mut post).unwrap();
    let post = post.build().unwrap();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let _serial = ctx.exclusive();
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        let fb = ForwardBuffers { weights: rnn.weights_buffer().slice(..), input: xb.slice(..), output: out.slice(..), states0: &[], states_n: &[hn.slice(..), cn.slice(..)], counter: None };
        plan.record_forward(&mut enc, &fb).unwrap();
        mid.record(&mut enc);
        let bb = BackwardBuffers {
            weights: rnn.weights_buffer().slice(..),
            input: xb.slice(..),
            output: out.slice(..),
            states0: &[],
            grad_output: zeros.slice(..),
            grad_states_n: &[Some(dhn.slice(..))],
            grad_input: Some(gi.slice(..)),
            grad_states0: &[gh0.slice(..), gc0.slice(..)],
            grad_weights: gw.slice(..),
            counter: None,
        };
        plan.record_backward(&mut enc, &bb).unwrap();
        post.record(&mut enc);
        ctx.queue.submit([enc.finish()]);
        drop(_serial);
        losses.push(read_f32(ctx, &metrics, 1).unwrap()[0] / b as f32);
    }
    (losses, read_f32(ctx, rnn.weights_buffer(), plan.weight_elems()).unwrap())
}

#[test]
fn a_few_steps_lower_the_loss_and_training_is_bitwise_deterministic() {
    for ctx in contexts() {
        let (losses, w1) = train_tiny(ctx, 40);
        let what = ctx.describe();
        assert!(losses.iter().all(|l| l.is_finite()), "{what}: {losses:?}");
        assert!(losses[39] < 0.2 * losses[0], "{what}: loss {} -> {}", losses[0], losses[39]);
        let (losses2, w2) = train_tiny(ctx, 40);
        assert_eq!(losses.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), losses2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{what}: losses differ run to run");
        assert_eq!(w1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), w2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{what}: weights differ run to run");
    }
}

#[test]
fn training_kit_bad_input_gets_typed_errors() {
    assert!(matches!(EmbeddingIndex::new(&[1, 9], 5, None), Err(Error::InvalidConfig(_))));
    assert!(matches!(EmbeddingIndex::new(&[], 5, None), Err(Error::EmptyBatch(_))));
    assert!(matches!(EmbeddingIndex::new(&[1, 2], 5, Some(5)), Err(Error::InvalidConfig(_))), "padding id outside the vocabulary");
    assert!(EmbeddingIndex::new(&[1, 4], 5, Some(4)).is_ok());
    assert!(matches!(ClassTargets::new(&[0, 2], 2), Err(Error::InvalidConfig(_))), "class target == classes");
    assert!(matches!(ClassTargets::new(&[], 2), Err(Error::EmptyBatch(_))));
    assert_eq!(ClassTargets::new(&[0, 1], 2).unwrap().data(), &[0, 1]);
    assert!(matches!(ct::softmax_cross_entropy(&[0.0f32; 4], 2, &[0, 2]), Err(Error::InvalidConfig(_))));
    let Some(ctx) = contexts().first() else { return };
    let small = storage(ctx, "small", 4).unwrap();
    let big = storage(ctx, "big", 64).unwrap();
    let mut b = OpBuilder::new(ctx);
    let s = LinearShape { rows: 4, input: 4, output: 2 };
    assert!(matches!(b.linear_forward(s, &big, &small, &big), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(b.bce_with_logits(0, &big, &big, &small, &big, 0), Err(Error::EmptyBatch(_))));
    assert!(matches!(b.mse(8, &big, &big, &small, &big, 0), Err(Error::ShapeMismatch { .. })));
    let groups = [ParamGroup { params: &big, grads: &small, elems: 64 }];
    assert!(matches!(Optimizer::new(ctx, OptimizerKind::adam(1e-3), None, &groups), Err(Error::ShapeMismatch { .. })));
    let groups = [ParamGroup { params: &big, grads: &big, elems: 64 }];
    assert!(matches!(Optimizer::new(ctx, OptimizerKind::adam(f32::NAN), None, &groups), Err(Error::InvalidConfig(_))));
    assert!(matches!(Optimizer::new(ctx, OptimizerKind::adam(1e-3), Some(-1.0), &groups), Err(Error::InvalidConfig(_))));
    assert!(matches!(ClassTargets::new(&[1; 5], 2).unwrap().write(ctx, &small, 0), Err(Error::ShapeMismatch { .. })));
}

#[test]
fn gpu_softmax_target_out_of_range_is_nan_not_a_loss() {
    // A target written into the buffer without ClassTargets' check: the kernel must not clamp
    // it into a plausible loss (issue 26's fault campaign found it did).
    for ctx in contexts() {
        let (rows, classes) = (3, 4);
        let logits = upload(ctx, "logits", &[0.5f32; 12]).unwrap();
        let targets = storage(ctx, "targets", rows).unwrap();
        ClassTargets::new(&[0, 3, 1], classes).unwrap().write(ctx, &targets, 0).unwrap();
        ctx.queue.write_buffer(&targets, 4, bytemuck::cast_slice(&[4u32])); // row 1: target == classes
        let grad = storage(ctx, "grad", rows * classes).unwrap();
        let scratch = storage(ctx, "scratch", 2 * rows).unwrap();
        let metrics = upload(ctx, "metrics", &[0.0; METRIC_FLOATS]).unwrap();
        let mut b = OpBuilder::new(ctx);
        b.softmax_cross_entropy(rows, classes, &logits, &targets, 0, &grad, &scratch, &metrics, 0).unwrap();
        let got = b.run(&[(&grad, rows * classes), (&metrics, METRIC_FLOATS)]).unwrap();
        let what = ctx.describe();
        assert!(got[0][4..8].iter().all(|g| g.is_nan()), "{what}: row 1's gradient {:?}", &got[0][4..8]);
        assert!(got[0][..4].iter().chain(&got[0][8..]).all(|g| g.is_finite()), "{what}: the other rows' gradients");
        assert!(got[1][0].is_nan(), "{what}: loss sum {} from a target out of range", got[1][0]);
    }
}

#[test]
fn gpu_dropout_matches_the_cpu_mask_and_rate() {
    let n = 10_000;
    let p = 0.3f32;
    let x: Vec<f64> = (0..n).map(|i| 1.0 + (i % 7) as f64).collect();
    // The drop rate is p, and the counter changes the mask.
    let m0 = ct::dropout_mask(n, p, 42, 0).unwrap();
    let rate = m0.iter().filter(|&&k| !k).count() as f64 / n as f64;
    assert!((rate - 0.3).abs() < 0.02, "drop rate {rate}");
    let m7 = ct::dropout_mask(n, p, 42, 7).unwrap();
    let same = m0.iter().zip(&m7).filter(|(a, b)| a == b).count() as f64 / n as f64;
    assert!(same < 0.7, "masks for counters 0 and 7 agree on {same} of elements");
    for ctx in contexts() {
        let xb = upload(ctx, "x", &f32s(&x)).unwrap();
        let d0 = storage(ctx, "d0", n).unwrap();
        let d7 = storage(ctx, "d7", n).unwrap();
        let counter = upload(ctx, "counter", &[7.0]).unwrap();
        let mut b = OpBuilder::new(ctx);
        b.dropout(&xb, &d0, n, p, 42, None).unwrap();
        b.dropout(&xb, &d7, n, p, 42, Some(&counter)).unwrap();
        let got = b.run(&[(&d0, n), (&d7, n)]).unwrap();
        let what = ctx.describe();
        assert_close(&format!("{what}: dropout"), &f64s(&got[0]), &ct::dropout(&x, p, 42, 0).unwrap(), 0.0, 1e-6);
        assert_close(&format!("{what}: dropout with counter"), &f64s(&got[1]), &ct::dropout(&x, p, 42, 7).unwrap(), 0.0, 1e-6);
    }
    let Some(ctx) = contexts().first() else { return };
    let big = storage(ctx, "big", 16).unwrap();
    assert!(matches!(OpBuilder::new(ctx).dropout(&big, &big, 16, 1.0, 0, None), Err(Error::InvalidConfig(_))));
}
