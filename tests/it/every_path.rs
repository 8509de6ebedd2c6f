//! Issue 25: a cell gets every path by being registered. This test fails when a registered
//! cell lacks one: the CPU engine, the GPU over a whole sequence (the engine plan and the
//! convenience type), the GPU one step at a time, f16 storage (LSTM_LAYERNORM keeps its typed
//! refusal), splitting past one storage binding, and both step strategies of the engine plan:
//! one dispatch per step, and the single-dispatch loop (every cell with a per-unit step; a cell
//! whose step reduces over the row refuses it with a reason).

use crate::common::{assert_close, rng, uniform};
use crate::gpu_common::vulkan;
use std::sync::Arc;
use wgpu_rnn::case::tolerance::for_precision;
use wgpu_rnn::cpu::{self, Pass};
use crate::gpu::{compare_with_cpu_tol, Tolerances};
use wgpu_rnn::gpu::{Context, ContextOptions, GpuRnn, Plan, SeqLayout, StepPlan, StepStrategy};
use wgpu_rnn::{Error, Mode, PackedSequence, Precision, RnnConfig, Weights};

/// GPU (f32 sums in another order) against the CPU engine in f64, after 60 steps: the
/// tolerances of tests/it/gpu.rs's random shapes.
const FWD_ATOL: f64 = 5e-5;
const FWD_RTOL: f64 = 5e-4;
const GRAD_ATOL: f64 = 5e-4;
const GRAD_RTOL: f64 = 5e-3;
/// LSTM_LAYERNORM's input gradients after 60 steps at H = 8 are ill-conditioned (its layer
/// norms over 8 and 32 values): in f64, a relative change of 1e-6 in the weights moves them by
/// up to 0.69 of the tolerances above, and the CPU engine in f32 is already 1.1e-4 off at one
/// element. The GPU's f32 sums in another order (the input projection's vec4 GEMM) land at
/// 7.6e-4 there (1.4x the tolerance, 2026-12-05); this cell's gradients get twice the
/// tolerances. Its golden cases keep the golden tolerances.
const ILL_CONDITIONED_GRAD_SCALE: f64 = 2.0;

/// The gradient tolerances `(atol, rtol)` for `mode`.
fn grad_tol(mode: Mode) -> (f64, f64) {
    let s = if mode == Mode::LstmLayerNorm { ILL_CONDITIONED_GRAD_SCALE } else { 1.0 };
    (GRAD_ATOL * s, GRAD_RTOL * s)
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// A small two-layer config of `mode` (input = hidden for the cells that need it).
fn small(mode: Mode) -> RnnConfig {
    let cfg = RnnConfig::new(mode, 4, 8).layers(2);
    if cfg.validate().is_ok() {
        cfg
    } else {
        RnnConfig::new(mode, 8, 8).layers(2)
    }
}

#[test]
fn every_registered_cell_has_every_path() {
    // A Vulkan context of the test's own: it lowers the binding limit.
    let Some(_) = vulkan() else { return };
    let ctx: Arc<Context> = Context::with_options(&ContextOptions { backends: Some(wgpu::Backends::VULKAN), adapter_name: None }).unwrap();
    let mut g = rng(61);
    for &mode in Mode::REGISTRY {
        let cfg = small(mode);
        let w = Weights::<f32>::init_uniform(&cfg, 3).unwrap();
        // Long enough that a tape outgrows a lowered binding limit before the weights do.
        let (t, b) = (60, 3);
        let lengths = [60, 40, 50];
        let x = PackedSequence::from_padded(&uniform(&mut g, t * b * cfg.input_size, 1.0).iter().map(|&v| v as f32).collect::<Vec<_>>(), [t, b, cfg.input_size], false, &lengths).unwrap();
        let go: Vec<f32> = uniform(&mut g, x.rows() * cfg.output_size(), 1.0).iter().map(|&v| v as f32).collect();

        // CPU, f32 (the path) and f64 (the reference).
        let (_, ctape) = cpu::forward(&w, &x, &[], Pass::Training).unwrap_or_else(|e| panic!("{mode} CPU forward: {e}"));
        cpu::backward(&w, &ctape.unwrap(), &go, &[]).unwrap_or_else(|e| panic!("{mode} CPU backward: {e}"));
        let (w64, x64) = (w.cast::<f64>(), x.with_data(to64(&x.data), cfg.input_size).unwrap());
        let (cf, ctape) = cpu::forward(&w64, &x64, &[], Pass::Training).unwrap();
        let cg = cpu::backward(&w64, &ctape.unwrap(), &to64(&go), &[]).unwrap();

        // GPU, whole sequence: the engine plan prepares, the convenience type runs.
        ctx.set_binding_limit(u64::MAX);
        Plan::new(&ctx, &cfg, &SeqLayout::of(&x).unwrap(), Pass::Training).unwrap_or_else(|e| panic!("{mode} Plan: {e}"));
        let rnn = GpuRnn::new(&ctx, &w).unwrap();
        let (gf, gtape) = rnn.forward(&x, &[], Pass::Training).unwrap_or_else(|e| panic!("{mode} GPU forward: {e}"));
        let gtape = gtape.unwrap();
        assert_eq!(gtape.pieces().len(), 1, "{mode}: unsplit at the device's limit");
        let gg = rnn.backward(&gtape, &go, &[]).unwrap_or_else(|e| panic!("{mode} GPU backward: {e}"));
        assert_close(&format!("{mode} GPU output"), &to64(&gf.output.data), &cf.output.data, FWD_ATOL, FWD_RTOL);
        let (gat, grt) = grad_tol(mode);
        assert_close(&format!("{mode} GPU grad_input"), &to64(&gg.input.data), &cg.input.data, gat, grt);

        // The async form (the browser's): the same plan, the same bits.
        let (af, atape) = crate::gpu::drive(&ctx, rnn.forward_async(&x, &[], Pass::Training)).0.unwrap_or_else(|e| panic!("{mode} GPU async forward: {e}"));
        assert_eq!(af.output.data, gf.output.data, "{mode}: async forward");
        let ag = crate::gpu::drive(&ctx, rnn.backward_async(&atape.unwrap(), &go, &[])).0.unwrap_or_else(|e| panic!("{mode} GPU async backward: {e}"));
        assert_eq!(ag.input.data, gg.input.data, "{mode}: async backward");
        assert_eq!(ag.params.to_flat(), gg.params.to_flat(), "{mode}: async weight gradients");

        // The engine plan's step strategies: per step, and the single-dispatch loop.
        let tol = Tolerances { fwd: (FWD_ATOL, FWD_RTOL), grad: grad_tol(mode), weight_grad_of_max: 0.0 };
        compare_with_cpu_tol(&ctx, StepStrategy::PerStep, &cfg, &lengths, 62, true, tol);
        let layout = SeqLayout::of(&x).unwrap();
        match (mode.unit_step(), Plan::with_strategy(&ctx, &cfg, &layout, Pass::Training, StepStrategy::SingleDispatch)) {
            (true, Ok(plan)) => {
                assert!(plan.forward_dispatches() < 60, "{mode}: {} forward dispatches on the single-dispatch path", plan.forward_dispatches());
                compare_with_cpu_tol(&ctx, StepStrategy::SingleDispatch, &cfg, &lengths, 62, true, tol);
            }
            (false, Err(Error::Unsupported(why))) => assert!(why.contains("reduces over the row"), "{mode}: {why}"),
            (unit, r) => panic!("{mode} (per-unit step {unit}): single dispatch {:?}", r.map(|p| p.forward_dispatches())),
        }

        // GPU, one step at a time.
        let step = StepPlan::new(&ctx, &cfg, b).unwrap_or_else(|e| panic!("{mode} StepPlan: {e}"));
        assert!(step.dispatches() > 0, "{mode}");

        // f16 storage.
        let half = Weights { config: cfg.clone().with_precision(Precision::F16), ..w.clone() };
        match (mode.f16_refused(), GpuRnn::new(&ctx, &half)) {
            (Some(_), r) => assert!(matches!(r, Err(Error::Unsupported(_))), "{mode}: f16 refused with a reason"),
            (None, r) => {
                let (hf, _) = r.unwrap().forward(&x, &[], Pass::Inference).unwrap_or_else(|e| panic!("{mode} f16 forward: {e}"));
                let (fa, fr, _, _) = for_precision(Precision::F16);
                assert_close(&format!("{mode} f16 output"), &to64(&hf.output.data), &cf.output.data, fa, fr);
            }
        }

        // Split past one binding: the limit halved until the forward splits.
        let mut limit = 64 * 1024;
        let split = loop {
            ctx.set_binding_limit(limit);
            match rnn.forward(&x, &[], Pass::Training) {
                Ok((f, Some(tape))) if tape.pieces().len() > 1 => break (f, tape),
                Ok(_) if limit > 2048 => limit /= 2,
                other => panic!("{mode}: no split down to {limit} bytes: {:?}", other.map(|(_, t)| t.map(|t| t.pieces()))),
            }
        };
        let sg = rnn.backward(&split.1, &go, &[]).unwrap_or_else(|e| panic!("{mode} split backward: {e}"));
        // The async form splits the same way: the same pieces, the same bits, forward and
        // backward (the blocking split's tape through the async backward too).
        let (af, atape) = crate::gpu::drive(&ctx, rnn.forward_async(&x, &[], Pass::Training)).0.unwrap_or_else(|e| panic!("{mode} async split forward: {e}"));
        let atape = atape.expect("a training tape");
        assert_eq!(atape.pieces(), split.1.pieces(), "{mode}: async split pieces");
        assert_eq!(af.output.data, split.0.output.data, "{mode}: async split output");
        for (a, b) in af.states.iter().zip(&split.0.states) {
            assert_eq!(a.data, b.data, "{mode}: async split final state");
        }
        for tape in [&atape, &split.1] {
            let ag = crate::gpu::drive(&ctx, rnn.backward_async(tape, &go, &[])).0.unwrap_or_else(|e| panic!("{mode} async split backward: {e}"));
            assert_eq!(ag.input.data, sg.input.data, "{mode}: async split grad_input");
            assert_eq!(ag.params.to_flat(), sg.params.to_flat(), "{mode}: async split weight gradients");
            for (a, b) in ag.states.iter().zip(&sg.states) {
                assert_eq!(a.data, b.data, "{mode}: async split initial-state gradient");
            }
        }
        assert_close(&format!("{mode} split output"), &to64(&split.0.output.data), &cf.output.data, FWD_ATOL, FWD_RTOL);
        assert_close(&format!("{mode} split grad_input"), &to64(&sg.input.data), &cg.input.data, gat, grt);
        ctx.set_binding_limit(u64::MAX);
    }
}
