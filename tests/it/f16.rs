//! f16 storage (`Precision::F16`): every golden and golden-variant case at the f16
//! tolerances on Vulkan (lavapipe has SHADER_F16), a typed refusal where the device lacks SHADER_F16 (llvmpipe through GL), the
//! CPU's tuned driver's refusal, and half the memory.

use crate::common::{golden_cases, variant_cases};
use crate::gpu_common::{contexts, vulkan};
use wgpu_rnn::case::{compare_at, Case};
use wgpu_rnn::cpu::Pass;
use wgpu_rnn::gpu::{Plan, SeqLayout, StepPlan};
use wgpu_rnn::{Error, Mode, Precision, RnnConfig};

#[test]
fn f16_storage_passes_every_golden_and_variant_case_on_vulkan() {
    let Some(ctx) = vulkan() else { return };
    assert!(ctx.device.features().contains(wgpu::Features::SHADER_F16), "lavapipe has SHADER_F16; the context must request it");
    let (mut checked, mut pytorch) = (0, 0);
    for path in golden_cases().into_iter().chain(variant_cases()) {
        let want = wgpu_rnn::io::TensorFile::read(&path).unwrap();
        let case = Case::<f32>::from_file(&want).unwrap();
        if case.config().mode.f16_refused().is_some() {
            // Refused, with the reason (see layer_norm_lstm_is_refused_because_...).
            assert!(matches!(case.run_gpu_at(ctx, true, Precision::F16), Err(Error::Unsupported(_))), "{}", path.display());
            continue;
        }
        if Mode::PYTORCH.contains(&case.config().mode) {
            pytorch += 1;
        }
        {
            let got = case.run_gpu_at(ctx, true, Precision::F16).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let report = compare_at(&got, &want, true, Precision::F16);
            assert!(report.len() >= 4, "{}: only {} tensors compared", path.display(), report.len());
            for m in &report {
                assert_eq!(m.failures, 0, "{} {}: {}/{} outside the f16 tolerances, worst {:?}", path.display(), m.name, m.failures, m.total, m.worst);
            }
            // Stored in f16, not f32: the f32 tolerances (100-250x tighter) fail somewhere in a
            // case this size, so the precision really reached the kernels.
            let strict = compare_at(&got, &want, true, Precision::F32);
            if strict.iter().all(|m| m.failures == 0) {
                panic!("{}: f16 storage passes the f32 tolerances; is it stored in f16?", path.display());
            }
        }
        checked += 1;
    }
    assert!(checked >= 49, "{checked} cases");
    assert!(pytorch >= 20, "{pytorch} cases of PyTorch's cells");
}

#[test]
fn cells_refuse_f16_where_f16_weights_and_input_alone_break_their_tolerances() {
    // Why a cell refuses f16 storage (Cell::F16_REFUSED), measured: its golden-variant cases
    // run in f64 on the CPU with nothing rounded but the weights and the input (to f16: the
    // least an f16 model stores) leave the f16 tolerances; every other cell's cases stay
    // inside them. Also counted: the cases that fail with only the input rounded (then
    // keeping that cell's weights in f32 would not rescue it either).
    let round = |w: &mut wgpu_rnn::Weights<f64>| {
        for p in w.params.iter_mut() {
            for s in wgpu_rnn::Slot::ALL {
                if let Some(x) = wgpu_rnn::weights::DirParams::get_mut(p, s) {
                    x.iter_mut().for_each(|v| *v = half::f16::from_f64(*v).to_f64());
                }
            }
        }
    };
    let failing = |case: &Case<f64>, want: &wgpu_rnn::io::TensorFile| {
        let got = case.run_cpu(true).unwrap();
        compare_at(&got, want, true, Precision::F16).iter().filter(|m| m.failures > 0).count()
    };
    // Per refused cell: cases failing with f16 weights and input, with the input alone.
    let mut refused: std::collections::HashMap<Mode, (usize, usize)> = Mode::REGISTRY.iter().filter(|m| m.f16_refused().is_some()).map(|&m| (m, (0, 0))).collect();
    let mut others = 0;
    for path in variant_cases().into_iter().chain(golden_cases()) {
        let want = wgpu_rnn::io::TensorFile::read(&path).unwrap();
        let mut case = Case::<f64>::from_file(&want).unwrap();
        case.input.iter_mut().for_each(|v| *v = half::f16::from_f64(*v).to_f64());
        let mode = case.config().mode;
        let input_bad = if refused.contains_key(&mode) { failing(&case, &want) } else { 0 };
        round(&mut case.weights);
        let bad = failing(&case, &want);
        match refused.get_mut(&mode) {
            Some(c) => {
                c.0 += (bad > 0) as usize;
                c.1 += (input_bad > 0) as usize;
            }
            None => {
                assert_eq!(bad, 0, "{}: f16 weights alone leave the f16 tolerances", path.display());
                others += 1;
            }
        }
    }
    for (mode, (both, input)) in &refused {
        assert!(*both >= 1, "{mode}'s cases pass with f16 weights and input: lift its refusal");
        let cfg = RnnConfig::new(*mode, 4, 4).with_precision(Precision::F16);
        assert!(matches!(cfg.validate(), Err(Error::Unsupported(_))), "{mode}");
        eprintln!("{mode}: {both} cases fail with f16 weights and input, {input} with the input alone");
    }
    // Measured 2026-12-01: lstm_layernorm_5_1 at 1.6x its f16 tolerance with only the input
    // rounded, so keeping this cell's weights in f32 would not rescue it either.
    assert!(refused[&Mode::LstmLayerNorm].1 >= 1, "LSTM_LAYERNORM's cases pass with only the input in f16: f32 weights for this cell would do");
    // 2026-12-05: urnn_5_0 and urnn_5_1 fail with f16 weights and input (4 and 8 tensors).
    assert!(refused[&Mode::Urnn].0 >= 2);
    assert!(others >= 49);
}

#[test]
fn gpu_f16_matches_the_cpu_f16_storage_twin() {
    use crate::common::{assert_close, rng};
    use wgpu_rnn::cpu;
    use wgpu_rnn::Weights;
    let Some(ctx) = vulkan() else { return };
    let mut g = rng(33);
    for &mode in Mode::REGISTRY.iter().filter(|m| m.f16_refused().is_none()) {
        let mut cfg = RnnConfig::new(mode, 37, 64).layers(2).bidirectional(true);
        if cfg.validate().is_err() {
            cfg = RnnConfig::new(mode, 64, 64).layers(2);
        }
        let cfg = cfg.with_precision(Precision::F16);
        let w = Weights::<f32>::init_uniform(&cfg, 5).unwrap();
        let (x, s0, gs) = random_problem(&mut g, &cfg);
        let states = cfg.states();
        let opts = |v: &[Vec<f32>]| v.iter().map(|x| Some(x.clone())).collect::<Vec<_>>();
        let (s0o, gso) = (opts(&s0), opts(&gs));
        let s0r: Vec<Option<&[f32]>> = s0o.iter().map(|o| o.as_deref()).collect();
        let gsr: Vec<Option<&[f32]>> = gso.iter().map(|o| o.as_deref()).collect();
        let (c_out, c_tape) = cpu::forward(&w, &x, &s0r, Pass::Training).unwrap();
        let go = uniform32(&mut g, c_out.output.data.len(), 1.0);
        let c_grad = cpu::backward(&w, &c_tape.unwrap(), &go, &gsr).unwrap();
        // The twin models the GPU's rounding.
        let rnn_g = wgpu_rnn::gpu::GpuRnn::new(ctx, &w).unwrap();
        let (g_out, g_tape) = rnn_g.forward(&x, &s0r, Pass::Training).unwrap();
        let g_grad = rnn_g.backward(&g_tape.unwrap(), &go, &gsr).unwrap();
        let d = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        // The same problem on the CPU without rounding (f32 storage): the twin must be closer
        // to the GPU than that, tensor by tensor, or it does not model the GPU's rounding.
        let w32 = Weights::<f32> { config: cfg.clone().with_precision(Precision::F32), ..w.clone() };
        let (u_out, u_tape) = cpu::forward(&w32, &x, &s0r, Pass::Training).unwrap();
        let u_grad = cpu::backward(&w32, &u_tape.unwrap(), &go, &gsr).unwrap();
        // Mean absolute difference (the largest is about one f16 ulp either way).
        let maxdiff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len().max(1) as f32;
        let mut pairs = vec![("output", maxdiff(&g_out.output.data, &c_out.output.data), maxdiff(&g_out.output.data, &u_out.output.data))];
        pairs.push(("grad_input", maxdiff(&g_grad.input.data, &c_grad.input.data), maxdiff(&g_grad.input.data, &u_grad.input.data)));
        let (mut tw, mut un) = (Vec::new(), Vec::new());
        c_grad.params.for_each(|_, _, _, v| tw.push(v.to_vec()));
        u_grad.params.for_each(|_, _, _, v| un.push(v.to_vec()));
        let mut i = 0;
        g_grad.params.for_each(|_, _, _, v| {
            pairs.push(("weight gradient", maxdiff(v, &tw[i]), maxdiff(v, &un[i])));
            i += 1;
        });
        // Measured on lavapipe: the ratio is 0.11 at the median, 0.73 at worst (RNN_TANH's
        // weight gradients, whose sums round once).
        for (what, twin, plain) in &pairs {
            assert!(twin < plain, "{mode} {what}: mean |GPU - twin| {twin:.3e} not below mean |GPU - unrounded CPU| {plain:.3e}");
        }
        let (fa, fr, ga, gr) = wgpu_rnn::case::tolerance::for_precision(Precision::F16);
        assert_close(&format!("{mode} output"), &d(&g_out.output.data), &d(&c_out.output.data), fa, fr);
        for (i, st) in states.iter().enumerate() {
            assert_close(&format!("{mode} {}_n", st.name), &d(&g_out.states[i].data), &d(&c_out.states[i].data), fa, fr);
            assert_close(&format!("{mode} grad_{}0", st.name), &d(&g_grad.states[i].data), &d(&c_grad.states[i].data), ga, gr);
        }
        assert_close(&format!("{mode} grad_input"), &d(&g_grad.input.data), &d(&c_grad.input.data), ga, gr);
        let mut cp = Vec::new();
        c_grad.params.for_each(|_, _, _, v| cp.push(v.to_vec()));
        let mut k = 0;
        g_grad.params.for_each(|_, _, _, v| {
            assert_close(&format!("{mode} weight gradient {k}"), &d(v), &d(&cp[k]), ga, gr);
            k += 1;
        });
        // Both really store f16: every value they return is an f16 value.
        for v in g_out.output.data.iter().chain(&c_out.output.data) {
            assert_eq!(*v, half::f16::from_f32(*v).to_f32(), "{mode}: an output that f16 cannot hold");
        }
    }
}

fn uniform32(g: &mut impl rand::Rng, n: usize, scale: f64) -> Vec<f32> {
    crate::common::uniform(g, n, scale).iter().map(|&x| x as f32).collect()
}

/// A random packed batch for `cfg` (lengths 5, 7, 2, 7, 4 over 7 steps, input in [-1, 1]),
/// an initial state per state of the cell (in [-0.5, 0.5]) and a final-state gradient per
/// state (in [-1, 1]), each `[L*D, B, width]`.
fn random_problem(g: &mut impl rand::Rng, cfg: &RnnConfig) -> (wgpu_rnn::PackedSequence<f32>, Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let lengths = [5usize, 7, 2, 7, 4];
    let (t, b) = (7, lengths.len());
    let x = wgpu_rnn::PackedSequence::from_padded(&uniform32(g, t * b * cfg.input_size, 1.0), [t, b, cfg.input_size], false, &lengths).unwrap();
    let states = cfg.states();
    let s0 = states.iter().map(|s| uniform32(g, cfg.state_shape(s, b).iter().product(), 0.5)).collect();
    let gs = states.iter().map(|s| uniform32(g, cfg.state_shape(s, b).iter().product(), 1.0)).collect();
    (x, s0, gs)
}

#[test]
fn f16_is_refused_with_a_typed_error_where_the_device_lacks_shader_f16() {
    let cfg = RnnConfig::new(Mode::Lstm, 3, 4).with_precision(Precision::F16);
    let layout = SeqLayout::new(vec![2, 1], vec![0, 1]).unwrap();
    let w = wgpu_rnn::Weights::<f32>::init_uniform(&cfg, 1).unwrap();
    let mut refused = 0;
    for ctx in contexts() {
        let has = ctx.device.features().contains(wgpu::Features::SHADER_F16);
        let cell_cfg = RnnConfig::new(Mode::LstmCifg, 3, 4).with_precision(Precision::F16);
        let cell = Plan::new(ctx, &cell_cfg, &layout, Pass::Training).map(|_| ());
        let lstm = Plan::new(ctx, &cfg, &layout, Pass::Training).map(|_| ());
        let model = wgpu_rnn::gpu::GpuRnn::new(ctx, &w).map(|_| ());
        let step = StepPlan::new(ctx, &cfg, 2).map(|_| ());
        for (what, got) in [("Plan (LSTM_CIFG)", cell), ("Plan (LSTM)", lstm), ("GpuRnn", model), ("StepPlan", step)] {
            if has {
                got.unwrap_or_else(|e| panic!("{what} on {}: {e}", ctx.describe()));
            } else {
                match got {
                    Err(Error::MissingFeature { feature, .. }) => assert_eq!(feature, "SHADER_F16"),
                    other => panic!("{what} on {}: expected MissingFeature, got {other:?}", ctx.describe()),
                }
            }
        }
        refused += !has as usize;
    }
    // llvmpipe through GL has no SHADER_F16 (wgpu's GL backend offers none), so CI covers
    // the refusal.
    if contexts().iter().any(|c| c.adapter_info().backend == wgpu::Backend::Gl) {
        assert!(refused > 0, "the GL context offers SHADER_F16; the refusal went untested");
    }
    // The regularisers' step counter is f32: refused with f16 storage, on the GPU and the CPU.
    let reg = cfg.clone().zoneout(wgpu_rnn::config::Prob::new(0.1).unwrap());
    if let Some(ctx) = vulkan() {
        assert!(matches!(Plan::new(ctx, &reg, &layout, Pass::Training), Err(Error::Unsupported(_))));
    }
    let wr = wgpu_rnn::Weights::<f32>::init_uniform(&reg, 1).unwrap();
    let xr = wgpu_rnn::PackedSequence::from_sequences(&[&[0.5f32; 6][..], &[0.1; 3][..]], 3).unwrap();
    assert!(matches!(wgpu_rnn::cpu::forward(&wr, &xr, &[], Pass::Training), Err(Error::Unsupported(_))));
    // A value f16 cannot hold is an error naming it, not an infinity: on the CPU twin and
    // the GPU.
    let mut big = wgpu_rnn::Weights::<f32>::init_uniform(&cfg, 1).unwrap();
    big.params[0].w_ih[0] = 1.0e5;
    assert!(matches!(wgpu_rnn::cpu::forward(&big, &xr, &[], Pass::Inference), Err(Error::NonFinite(_))));
    if let Some(ctx) = vulkan() {
        assert!(matches!(wgpu_rnn::gpu::GpuRnn::new(ctx, &big), Err(Error::NonFinite(_))));
        let rnn = wgpu_rnn::gpu::GpuRnn::new(ctx, &w).unwrap();
        let xbig = wgpu_rnn::PackedSequence::from_sequences(&[&[7.0e4f32; 6][..], &[0.1; 3][..]], 3).unwrap();
        assert!(matches!(rnn.forward(&xbig, &[], Pass::Inference), Err(Error::NonFinite(_))));
    }
    // The CPU engine with f16 storage is the GPU's twin: what it stores is f16, and it refuses
    // values beyond f16's range the same way.
    let x = wgpu_rnn::PackedSequence::from_sequences(&[&[0.5f32; 6][..], &[0.1; 3][..]], 3).unwrap();
    let (out, _) = wgpu_rnn::cpu::forward(&w, &x, &[], Pass::Inference).unwrap();
    assert!(out.output.data.iter().all(|&v| half::f16::from_f32(v).to_f32() == v), "the twin's output is not f16: {:?}", out.output.data);
    let xbig = wgpu_rnn::PackedSequence::from_sequences(&[&[7.0e4f32; 6][..], &[0.1; 3][..]], 3).unwrap();
    assert!(matches!(wgpu_rnn::cpu::forward(&w, &xbig, &[], Pass::Inference), Err(Error::NonFinite(_))));
}

#[test]
fn f16_plans_hold_half_the_memory() {
    let Some(ctx) = vulkan() else { return };
    // C1's shape (LSTM T 50, B 32, I 128, H 256), training.
    let layout = SeqLayout::new(vec![32; 50], (0..32).collect()).unwrap();
    let cell = RnnConfig::new(Mode::LstmCifg, 128, 256);
    let f32_plan = Plan::new(ctx, &cell, &layout, Pass::Training).unwrap();
    let f16_plan = Plan::new(ctx, &cell.clone().with_precision(Precision::F16), &layout, Pass::Training).unwrap();
    let (a, b) = (f32_plan.workspace_bytes() as f64, f16_plan.workspace_bytes() as f64);
    // Workspaces halve; the parameter blocks (a few KiB) and the u32 state tables do not.
    assert!(b < 0.52 * a && b > 0.45 * a, "LSTM_CIFG: f16 {b} bytes against f32 {a}");
    let cfg = RnnConfig::new(Mode::Lstm, 128, 256);
    // PyTorch's LSTM too.
    let f32_plan = Plan::new(ctx, &cfg, &layout, Pass::Training).unwrap();
    let f16_plan = Plan::new(ctx, &cfg.clone().with_precision(Precision::F16), &layout, Pass::Training).unwrap();
    let (a, b) = (f32_plan.workspace_bytes() as f64, f16_plan.workspace_bytes() as f64);
    assert!(b < 0.52 * a && b > 0.45 * a, "LSTM: f16 {b} bytes against f32 {a}");
}

#[test]
fn casts_round_to_f16_and_apply_the_loss_scale() {
    use wgpu_rnn::gpu::train::{OpBuilder, Optimizer, OptimizerKind, ParamGroup};
    use wgpu_rnn::gpu::{storage, storage_at, upload};
    let Some(ctx) = vulkan() else { return };
    let (rows, width, ld) = (3, 5, 7);
    let x: Vec<f32> = (0..rows * ld).map(|i| 0.1 + i as f32 * 1.0e-3 - 0.01 * (i % 3) as f32).collect();
    let src = upload(ctx, "x", &x).unwrap();
    let p = upload(ctx, "p", &[0.0; 4]).unwrap();
    let opt = Optimizer::new(ctx, OptimizerKind::Sgd { lr: 0.1, momentum: 0.0 }, None, &[ParamGroup { params: &p, grads: &p, elems: 4 }])
        .unwrap()
        .with_loss_scaling(ctx, 8.0, 1000)
        .unwrap();
    let half = storage_at(ctx, "h", 2 + rows * width, Precision::F16).unwrap();
    let (plain, unscaled) = (storage(ctx, "plain", rows * width).unwrap(), storage(ctx, "unscaled", rows * width).unwrap());
    // x (row stride 7, from element 0) -> f16 at offset 2, packed rows of 5, times 8 -> back.
    let mut b = OpBuilder::new(ctx);
    b.to_stored(Precision::F16, &src, (0, ld), &half, (2, width), rows, width, Some(&opt)).unwrap();
    b.to_f32(Precision::F16, &half, (2, width), &plain, (0, width), rows, width, None).unwrap();
    b.to_f32(Precision::F16, &half, (2, width), &unscaled, (0, width), rows, width, Some(&opt)).unwrap();
    let got = b.run(&[(&plain, rows * width), (&unscaled, rows * width)]).unwrap();
    for r in 0..rows {
        for c in 0..width {
            // WGSL lets the device round to either neighbour; lavapipe rounds to nearest even.
            let v = x[r * ld + c] * 8.0;
            let near = half::f16::from_f32(v);
            let other = if near.to_f32() > v { near.to_f32() - near_ulp(near) } else { near.to_f32() + near_ulp(near) };
            let g = got[0][r * width + c];
            assert!(g == near.to_f32() || g == other, "scaled ({r}, {c}): {g} for {v}");
            assert_eq!(got[1][r * width + c], g / 8.0, "unscaled ({r}, {c})");
        }
    }
    // A block past the f16 buffer's end (48 bytes: 24 elements) is a typed error, not a
    // write out of bounds.
    assert_eq!(half.size(), 48);
    let mut b = OpBuilder::new(ctx);
    b.to_stored(Precision::F16, &src, (0, ld), &half, (9, width), rows, width, None).unwrap();
    assert!(matches!(b.to_stored(Precision::F16, &src, (0, ld), &half, (10, width), rows, width, None), Err(Error::ShapeMismatch { .. })));
    // Without SHADER_F16 (llvmpipe through GL) the cast is refused when it is appended.
    for ctx in contexts().iter().filter(|c| !c.device.features().contains(wgpu::Features::SHADER_F16)) {
        let (s, d) = (upload(ctx, "x", &x).unwrap(), storage(ctx, "d", 16).unwrap());
        let mut b = OpBuilder::new(ctx);
        assert!(matches!(b.to_stored(Precision::F16, &s, (0, 4), &d, (0, 4), 1, 4, None), Err(Error::MissingFeature { .. })));
    }
}

#[test]
fn dynamic_loss_scaling_skips_overflows_halves_and_grows_the_scale() {
    use wgpu_rnn::gpu::train::{OpBuilder, Optimizer, OptimizerKind, ParamGroup};
    use wgpu_rnn::gpu::upload;
    let Some(ctx) = contexts().first() else { return };
    let p = upload(ctx, "params", &[1.0; 4]).unwrap();
    let (finite, overflow) = ([0.5f32; 4], [0.5, f32::INFINITY, 0.5, 0.5]);
    let g = upload(ctx, "grads", &[0.0; 4]).unwrap();
    let opt = Optimizer::new(ctx, OptimizerKind::Sgd { lr: 0.1, momentum: 0.0 }, None, &[ParamGroup { params: &p, grads: &g, elems: 4 }])
        .unwrap()
        .with_loss_scaling(ctx, 1024.0, 3)
        .unwrap();
    let step = |grads: &[f32; 4]| {
        ctx.queue.write_buffer(&g, 0, bytemuck::cast_slice(grads));
        let mut b = OpBuilder::new(ctx);
        opt.record_step(&mut b).unwrap();
        b.run(&[(&p, 4)]).unwrap().remove(0)
    };
    let after1 = step(&finite);
    assert_eq!(after1, vec![0.95; 4]);
    let st = opt.read_state(ctx).unwrap();
    assert_eq!((st.steps, st.skipped, st.loss_scale), (1.0, 0.0, 1024.0));
    // An overflow: skipped, counted, parameters untouched, the scale halved.
    assert_eq!(step(&overflow), after1);
    let st = opt.read_state(ctx).unwrap();
    assert_eq!((st.steps, st.skipped, st.loss_scale), (1.0, 1.0, 512.0));
    // Three finite steps in a row (the growth interval) double it.
    step(&finite);
    step(&finite);
    assert_eq!(opt.read_state(ctx).unwrap().loss_scale, 512.0);
    step(&finite);
    let st = opt.read_state(ctx).unwrap();
    assert_eq!((st.steps, st.skipped, st.loss_scale), (4.0, 1.0, 1024.0));
    // Without loss scaling the scale reads 0 and overflows only skip.
    let plain = Optimizer::new(ctx, OptimizerKind::Sgd { lr: 0.1, momentum: 0.0 }, None, &[ParamGroup { params: &p, grads: &g, elems: 4 }]).unwrap();
    assert_eq!(plain.read_state(ctx).unwrap().loss_scale, 0.0);
    assert!(matches!(
        Optimizer::new(ctx, OptimizerKind::Sgd { lr: 0.1, momentum: 0.0 }, None, &[ParamGroup { params: &p, grads: &g, elems: 4 }]).unwrap().with_loss_scaling(ctx, 0.5, 10),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn weights_save_as_f16_and_reach_an_f16_plan_unchanged() {
    use wgpu_rnn::{PackedSequence, Weights};
    let cfg = RnnConfig::new(Mode::Gru, 6, 8).layers(2).with_precision(Precision::F16);
    let w = Weights::<f32>::init_uniform(&cfg, 3).unwrap();
    let dir = std::env::temp_dir().join(format!("wgpu-rnn-f16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (p32, p16) = (dir.join("w32.safetensors"), dir.join("w16.safetensors"));
    w.save(&p32).unwrap();
    w.save_as(&p16, Precision::F16).unwrap();
    let (n32, n16) = (std::fs::metadata(&p32).unwrap().len(), std::fs::metadata(&p16).unwrap().len());
    assert!(n16 * 10 < n32 * 6, "F16 file {n16} bytes against F32 {n32}");
    let bytes = std::fs::read(&p16).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.tensors().iter().all(|(_, t)| t.dtype() == safetensors::Dtype::F16));
    // Loaded back: the f16-rounded weights, with the caller's precision.
    let back = Weights::<f32>::load(&p16, "", Some(&cfg)).unwrap();
    assert_eq!(back.config.precision, Precision::F16);
    let mut k = 0;
    back.for_each(|_, _, _, v| k += v.len());
    let flat_w = wgpu_rnn::gpu::generic::flat_weights(&w);
    let flat_b = wgpu_rnn::gpu::generic::flat_weights(&back);
    assert_eq!(flat_b.len(), k);
    for (a, b) in flat_w.iter().zip(&flat_b) {
        assert_eq!(half::f16::from_f32(*a).to_f32(), *b);
    }
    std::fs::remove_dir_all(&dir).ok();
    // On the device they are the same f16 values: the same results, bit for bit.
    let Some(ctx) = vulkan() else { return };
    let x = PackedSequence::from_sequences(&[&[0.25f32; 18][..], &[-0.5; 12][..]], 6).unwrap();
    let run = |w: &Weights<f32>| wgpu_rnn::gpu::GpuRnn::new(ctx, w).unwrap().forward(&x, &[], Pass::Inference).unwrap().0;
    let (a, b) = (run(&w), run(&back));
    assert_eq!(a.output.data, b.output.data);
    assert_eq!(a.states[0].data, b.states[0].data);
}

/// The spacing of f16 values at `h` (positive, normal range).
fn near_ulp(h: half::f16) -> f32 {
    let next = half::f16::from_bits(h.to_bits() + 1);
    (next.to_f32() - h.to_f32()).abs()
}

#[test]
fn pytorch_cells_in_f16_match_the_cpu_twin_with_every_step_strategy() {
    // PyTorch's cells in f16 (engine API, every step strategy: the stage kernels, the
    // single-dispatch loops, the projection) against the CPU's f16-storage twin, within the
    // f16 tolerances (the GPU's sums run in another order).
    use crate::common::{assert_close, rng};
    use crate::gpu::engine_run;
    use wgpu_rnn::cpu;
    use wgpu_rnn::gpu::StepStrategy;
    use wgpu_rnn::Weights;
    let Some(ctx) = vulkan() else { return };
    let mut g = rng(71);
    let configs = [
        RnnConfig::new(Mode::RnnTanh, 37, 64).layers(2).bidirectional(true),
        RnnConfig::new(Mode::RnnRelu, 13, 30),
        RnnConfig::new(Mode::Lstm, 37, 64).layers(2).bidirectional(true),
        RnnConfig::new(Mode::Lstm, 13, 30).proj(20),
        RnnConfig::new(Mode::Gru, 37, 64).layers(2).bidirectional(true),
        RnnConfig::new(Mode::Gru, 13, 30),
    ];
    let (fa, fr, ga, gr) = wgpu_rnn::case::tolerance::for_precision(Precision::F16);
    let d = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let mut runs = 0;
    for cfg32 in configs {
        let cfg = cfg32.clone().with_precision(Precision::F16);
        let w = Weights::<f32>::init_uniform(&cfg, 9).unwrap();
        let w32 = Weights::<f32> { config: cfg32.clone(), ..w.clone() };
        let (x, s0, gs) = random_problem(&mut g, &cfg);
        let s0r: Vec<Option<&[f32]>> = s0.iter().map(|v| Some(&v[..])).collect();
        let gsr: Vec<Option<&[f32]>> = gs.iter().map(|v| Some(&v[..])).collect();
        let (c_out, c_tape) = cpu::forward(&w, &x, &s0r, Pass::Training).unwrap();
        let go = uniform32(&mut g, c_out.output.data.len(), 1.0);
        let c_grad = cpu::backward(&w, &c_tape.unwrap(), &go, &gsr).unwrap();
        let lstm = cfg.mode == Mode::Lstm;
        let (c0, gc) = if lstm { (Some(&s0[1][..]), Some(&gs[1][..])) } else { (None, None) };
        let strategies = [StepStrategy::PerStep, StepStrategy::SingleDispatch];
        for strategy in strategies {
            let what = format!("{} H {} proj {} {strategy:?}", cfg.mode, cfg.hidden_size, cfg.proj_size);
            let got = engine_run(ctx, strategy, &w, &x, Some(&s0[0]), c0, &go, Some(&gs[0]), gc);
            assert_close(&format!("{what} output"), &d(&got.output), &d(&c_out.output.data), fa, fr);
            assert_close(&format!("{what} h_n"), &d(&got.h_n), &d(&c_out.states[0].data), fa, fr);
            assert_close(&format!("{what} grad_input"), &d(&got.grad_input), &d(&c_grad.input.data), ga, gr);
            assert_close(&format!("{what} grad_h0"), &d(&got.grad_h0), &d(&c_grad.states[0].data), ga, gr);
            assert_close(&format!("{what} grad_weights"), &d(&got.grad_w), &d(&c_grad.params.to_flat()), ga, gr);
            if lstm {
                assert_close(&format!("{what} c_n"), &d(&got.c_n), &d(&c_out.states[1].data), fa, fr);
                assert_close(&format!("{what} grad_c0"), &d(&got.grad_c0), &d(&c_grad.states[1].data), ga, gr);
            }
            // Stored in f16: the same run in f32 differs by more than f32's rounding could
            // (outputs here are below 1, where f32's steps are below 1e-7 and f16's 5e-4).
            const F32_NOISE: f32 = 1e-5;
            let f32_run = engine_run(ctx, strategy, &w32, &x, Some(&s0[0]), c0, &go, Some(&gs[0]), gc);
            let most = got.output.iter().zip(&f32_run.output).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(most > F32_NOISE, "{what}: f16 output within {most:e} of f32's; is it stored in f16?");
            runs += 1;
        }
    }
    assert_eq!(runs, 12);
}
