//! Dropout between stacked layers and zoneout (`RnnConfig::dropout`, `RnnConfig::zoneout`):
//! the CPU twin against finite differences with fixed masks, the GPU
//! (`CellPlan`) against the CPU twin with the same masks, for every cell; p = 0 is today's
//! numbers bit for bit; inference semantics; typed refusals.

use crate::common::{assert_close, rng, uniform};
use crate::gpu_common::contexts;
use rand::Rng;
use wgpu_rnn::config::Prob;
use wgpu_rnn::cpu::{self, cast, Pass};
use wgpu_rnn::gpu::{Plan, SeqLayout, StepStrategy};
use wgpu_rnn::masks::Draw;
use wgpu_rnn::{Error, Mode, PackedSequence, RnnConfig, Weights};

const FD_STEP: f64 = 1e-6;
const FD_TOL: f64 = 1e-5;
/// GPU (f32) against the CPU twin (f64), as in gpu_cells.rs.
const FWD_ATOL: f64 = 1e-4;
const FWD_RTOL: f64 = 1e-3;
const GRAD_ATOL: f64 = 5e-4;
const GRAD_RTOL: f64 = 5e-3;
const DROPOUT: f32 = 0.4;
const ZONEOUT: f32 = 0.3;

/// 3 layers of `mode` (so dropout acts twice), both directions where the cell allows, with
/// dropout and, for cells with an h state, zoneout.
fn config(mode: Mode, i: usize, h: usize) -> RnnConfig {
    let mut c = RnnConfig::new(mode, i, h).layers(3).bidirectional(true);
    if c.validate().is_err() {
        c = RnnConfig::new(mode, h, h).layers(3);
    }
    c = c.dropout(Prob::new(DROPOUT).unwrap());
    let z = c.clone().zoneout(Prob::new(ZONEOUT).unwrap());
    if z.validate().is_ok() {
        z
    } else {
        c
    }
}

struct Problem {
    w: Weights<f64>,
    x: PackedSequence<f64>,
    s0: Vec<Vec<f64>>,
    go: Vec<f64>,
    gs: Vec<Vec<f64>>,
}

fn problem(cfg: &RnnConfig, g: &mut impl Rng) -> Problem {
    let w = Weights::<f64>::init_uniform(cfg, 5).unwrap();
    let lengths = [4usize, 2, 3];
    let (t, b) = (4, lengths.len());
    let xin = uniform(g, t * b * cfg.input_size, 1.0);
    let x = PackedSequence::from_padded(&xin, [t, b, cfg.input_size], false, &lengths).unwrap();
    let s0: Vec<Vec<f64>> = cfg.states().iter().map(|s| uniform(g, cfg.state_shape(s, b).iter().product(), 0.5)).collect();
    let gs: Vec<Vec<f64>> = s0.iter().map(|v| uniform(g, v.len(), 1.0)).collect();
    let go = uniform(g, x.rows() * cfg.output_size(), 1.0);
    Problem { w, x, s0, go, gs }
}

fn opts<T>(v: &[Vec<T>]) -> Vec<Option<&[T]>> {
    v.iter().map(|s| Some(&s[..])).collect()
}

/// The training-mode loss `sum(output * go) + sum_s sum(s_n * gs)` with the masks of `draw`.
fn loss(w: &Weights<f64>, x: &PackedSequence<f64>, s0: &[Vec<f64>], pr: &Problem, draw: Draw) -> f64 {
    let (out, _) = cpu::forward_with(w, x, &opts(s0), Pass::Training, draw).unwrap();
    let mut l: f64 = out.output.data.iter().zip(&pr.go).map(|(a, b)| a * b).sum();
    for (t, g) in out.states.iter().zip(&pr.gs) {
        l += t.data.iter().zip(g).map(|(a, b)| a * b).sum::<f64>();
    }
    l
}

fn near(what: &str, analytic: f64, numeric: f64) {
    let err = (analytic - numeric).abs();
    assert!(err <= FD_TOL * (1.0 + numeric.abs()), "{what}: analytic {analytic}, numeric {numeric}");
}

#[test]
fn regularised_gradients_match_finite_differences_every_cell() {
    let mut g = rng(51);
    let draw = Draw { seed: 9, counter: 4 };
    for &mode in Mode::REGISTRY {
        let cfg = config(mode, 3, 4);
        let pr = problem(&cfg, &mut g);
        let (_, tape) = cpu::forward_with(&pr.w, &pr.x, &opts(&pr.s0), Pass::Training, draw).unwrap();
        let grads = cpu::backward(&pr.w, &tape.unwrap(), &pr.go, &opts(&pr.gs)).unwrap();
        let mut analytic = Vec::new();
        grads.params.for_each(|def, layer, dir, v| analytic.push((RnnConfig::param_name(def.stem, layer, dir), v.to_vec(), def.fixed)));
        for (pi, (name, grad, fixed)) in analytic.iter().enumerate() {
            if *fixed {
                continue;
            }
            for idx in [0, grad.len() / 2, grad.len() - 1] {
                let eval = |delta: f64| {
                    let mut w2 = pr.w.clone();
                    let mut seen = 0;
                    w2.for_each_mut(|_, _, _, v| {
                        if seen == pi {
                            v[idx] += delta;
                        }
                        seen += 1;
                    });
                    loss(&w2, &pr.x, &pr.s0, &pr, draw)
                };
                near(&format!("{mode} {name}[{idx}]"), grad[idx], (eval(FD_STEP) - eval(-FD_STEP)) / (2.0 * FD_STEP));
            }
        }
        for idx in [0, pr.x.data.len() / 3, pr.x.data.len() - 1] {
            let eval = |delta: f64| {
                let mut x2 = pr.x.clone();
                x2.data[idx] += delta;
                loss(&pr.w, &x2, &pr.s0, &pr, draw)
            };
            near(&format!("{mode} input[{idx}]"), grads.input.data[idx], (eval(FD_STEP) - eval(-FD_STEP)) / (2.0 * FD_STEP));
        }
        for (si, st) in cfg.states().iter().enumerate() {
            for idx in [0, pr.s0[si].len() / 2, pr.s0[si].len() - 1] {
                let eval = |delta: f64| {
                    let mut s2 = pr.s0.clone();
                    s2[si][idx] += delta;
                    loss(&pr.w, &pr.x, &s2, &pr, draw)
                };
                near(&format!("{mode} {}0[{idx}]", st.name), grads.states[si].data[idx], (eval(FD_STEP) - eval(-FD_STEP)) / (2.0 * FD_STEP));
            }
        }
    }
}

#[test]
fn gpu_regularisers_match_the_cpu_twin_every_cell() {
    use wgpu_rnn::gpu::GpuRnn;
    let mut g = rng(52);
    let draw = Draw { seed: 77, counter: 5 };
    for ctx in contexts() {
        let backend = ctx.adapter_info().backend;
        for &mode in Mode::REGISTRY {
            let cfg = config(mode, 5, 12);
            let pr = problem(&cfg, &mut g);
            let name = format!("{backend:?} {mode} (dropout {}, zoneout {})", cfg.dropout.get(), cfg.zoneout.get());
            let w32 = pr.w.cast::<f32>();
            let rnn_g = GpuRnn::new(ctx, &w32).unwrap();
            let x32 = pr.x.with_data(cast::<f64, f32>(&pr.x.data), cfg.input_size).unwrap();
            let s32: Vec<Vec<f32>> = pr.s0.iter().map(|v| cast(v)).collect();
            let gs32: Vec<Vec<f32>> = pr.gs.iter().map(|v| cast(v)).collect();
            for pass in [Pass::Training, Pass::Inference] {
                let (c_out, c_tape) = cpu::forward_with(&pr.w, &pr.x, &opts(&pr.s0), pass, draw).unwrap();
                let (g_out, g_tape) = rnn_g.forward_with(&x32, &opts(&s32), pass, draw).unwrap();
                let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
                assert_close(&format!("{name} {pass:?} output"), &f(&g_out.output.data), &c_out.output.data, FWD_ATOL, FWD_RTOL);
                for (i, (a, b)) in g_out.states.iter().zip(&c_out.states).enumerate() {
                    assert_close(&format!("{name} {pass:?} state {i}"), &f(&a.data), &b.data, FWD_ATOL, FWD_RTOL);
                }
                if pass == Pass::Training {
                    let cg = cpu::backward(&pr.w, &c_tape.unwrap(), &pr.go, &opts(&pr.gs)).unwrap();
                    let gg_ = rnn_g.backward(&g_tape.unwrap(), &cast(&pr.go), &opts(&gs32)).unwrap();
                    assert_close(&format!("{name} grad input"), &f(&gg_.input.data), &cg.input.data, GRAD_ATOL, GRAD_RTOL);
                    for (i, (a, b)) in gg_.states.iter().zip(&cg.states).enumerate() {
                        assert_close(&format!("{name} grad state {i}"), &f(&a.data), &b.data, GRAD_ATOL, GRAD_RTOL);
                    }
                    let mut gw = Vec::new();
                    gg_.params.for_each(|_, _, _, v| gw.extend(f(v)));
                    let cw = cg.params.to_flat();
                    assert_close(&format!("{name} grad weights"), &gw, &cw, GRAD_ATOL, GRAD_RTOL);
                }
            }
        }
    }
}

#[test]
fn probability_zero_gives_todays_numbers_bit_for_bit() {
    let mut g = rng(53);
    let draw = Draw { seed: 3, counter: 8 };
    for mode in [Mode::Lstm, Mode::Scrn, Mode::LstmLayerNorm] {
        let plain = RnnConfig::new(mode, 5, 8).layers(3);
        let zero = plain.clone().dropout(Prob::new(0.0).unwrap()).zoneout(Prob::new(-0.0).unwrap());
        assert_eq!(plain, zero);
        let pr = problem(&plain, &mut g);
        let (a, ta) = cpu::forward(&pr.w, &pr.x, &opts(&pr.s0), Pass::Training).unwrap();
        let (b, tb) = cpu::forward_with(&pr.w, &pr.x, &opts(&pr.s0), Pass::Training, draw).unwrap();
        assert_eq!(a.output.data, b.output.data, "{mode}");
        let ga = cpu::backward(&pr.w, &ta.unwrap(), &pr.go, &[]).unwrap();
        let gb = cpu::backward(&pr.w, &tb.unwrap(), &pr.go, &[]).unwrap();
        assert_eq!(ga.params.params, gb.params.params, "{mode}");
        // The GPU plan records no extra dispatch at p = 0: the count of the unregularised
        // ops (from the cell's layout; every GEMM here is one k-run), and two more per
        // direction of the pass with dropout on.
        if let Some(ctx) = contexts().first() {
            let layout = SeqLayout::of(&pr.x).unwrap();
            // One dispatch per step (the single-dispatch loop, which small problems take,
            // refuses zoneout and is counted in tests/it/gpu.rs).
            let plan = |c: &RnnConfig| Plan::with_strategy(ctx, c, &layout, Pass::Training, StepStrategy::PerStep).unwrap();
            let dispatches = |c: &RnnConfig| {
                let p = plan(c);
                (p.forward_dispatches(), p.backward_dispatches())
            };
            let steps = layout.steps();
            let (mut f, mut b) = (0, 0);
            for l in 0..plain.num_layers {
                let lay = mode.layout(plain.sizes(l));
                let products = lay.stages.iter().flatten().count();
                // The input projection: W_x^T, then its GEMM. Per step: on the fused stage
                // kernel, per stage the kernel and, where it has a product (and in stage 0,
                // which saves the states), its input copy; otherwise (after each product's
                // R^T) per stage its product GEMM and pointwise kernel (stage 0's saves the
                // states).
                let per_step = if mode.unit_step() {
                    lay.stages.iter().enumerate().map(|(s, p)| 1 + (p.is_some() || s == 0) as usize).sum()
                } else {
                    f += products;
                    lay.stages.len() + products
                };
                f += 2 + steps * per_step;
                b += steps * (lay.stages.len() + products) + 2 + lay.input_bias as usize;
                b += lay.stages.iter().flatten().map(|p| 1 + p.bias.is_some() as usize).sum::<usize>() + lay.grad_blocks().len();
            }
            // At p = 0 no regulariser dispatch at all.
            assert_eq!(dispatches(&zero), (f, b), "{mode}: p = 0");
            let on = plain.clone().dropout(Prob::new(0.5).unwrap());
            assert_eq!(dispatches(&on), (f + 2, b + 2), "{mode}: dropout after layers 0 and 1, forward and backward");
        }
    }
}

#[test]
fn dropout_and_zoneout_semantics() {
    let mut g = rng(54);
    // Dropout is training only: inference gives the unregularised numbers.
    let plain = RnnConfig::new(Mode::Gru, 4, 6).layers(2);
    let drop = plain.clone().dropout(Prob::new(0.5).unwrap());
    let pr = problem(&plain, &mut g);
    let w_drop = Weights { config: drop.clone(), ..pr.w.clone() };
    let run = |w: &Weights<f64>, pass, counter| cpu::forward_with(w, &pr.x, &opts(&pr.s0), pass, Draw { seed: 1, counter }).unwrap().0.output.data;
    assert_eq!(run(&pr.w, Pass::Inference, 0), run(&w_drop, Pass::Inference, 0));
    let (t1, t2) = (run(&w_drop, Pass::Training, 1), run(&w_drop, Pass::Training, 2));
    assert_ne!(t1, run(&pr.w, Pass::Training, 1), "dropout changes the training output");
    assert_ne!(t1, t2, "a new counter draws a new mask");
    assert_eq!(t1, run(&w_drop, Pass::Training, 1), "the same draw gives the same mask");

    // Zoneout, one layer, one step: inference takes p h0 + (1 - p) h_new; training keeps h0
    // in about a fraction p of the units, and h_new in the others.
    let p = 0.5f32;
    let plain = RnnConfig::new(Mode::Lstm, 3, 64);
    let zoned = plain.clone().zoneout(Prob::new(p).unwrap());
    let w = Weights::<f64>::init_uniform(&plain, 2).unwrap();
    let wz = Weights { config: zoned, ..w.clone() };
    let b = 8;
    let x = PackedSequence::from_padded(&uniform(&mut g, b * 3, 1.0), [1, b, 3], false, &[1; 8]).unwrap();
    let h0 = uniform(&mut g, b * 64, 0.5);
    let s0 = vec![h0.clone(), uniform(&mut g, b * 64, 0.5)];
    let (new, _) = cpu::forward(&w, &x, &opts(&s0), Pass::Inference).unwrap();
    let (inf, _) = cpu::forward(&wz, &x, &opts(&s0), Pass::Inference).unwrap();
    let expect: Vec<f64> = h0.iter().zip(&new.output.data).map(|(a, n)| p as f64 * a + (1.0 - p as f64) * n).collect();
    assert_close("zoneout inference", &inf.output.data, &expect, 1e-12, 0.0);
    assert_eq!(inf.output.data, inf.states[0].data, "the output is the zoned h");
    assert_eq!(new.states[1].data, inf.states[1].data, "c is not zoned");
    let (tr, _) = cpu::forward_with(&wz, &x, &opts(&s0), Pass::Training, Draw { seed: 4, counter: 1 }).unwrap();
    let kept = tr.output.data.iter().zip(&h0).filter(|(a, b)| a == b).count();
    let fresh = tr.output.data.iter().zip(&new.output.data).filter(|(a, b)| a == b).count();
    assert_eq!(kept + fresh, b * 64);
    assert!((kept as f64 / (b * 64) as f64 - p as f64).abs() < 0.08, "{kept} of {} kept", b * 64);
}

#[test]
fn regularisers_are_refused_where_they_do_not_run() {
    // Zoneout needs an h state that is the output.
    for mode in [Mode::Sru, Mode::Jordan] {
        let c = RnnConfig::new(mode, 4, 4).zoneout(Prob::new(0.2).unwrap());
        assert!(matches!(c.validate(), Err(Error::InvalidConfig(_))), "{mode}");
    }
    assert!(matches!(Prob::new(1.0), Err(Error::InvalidConfig(_))));
    assert!(matches!(Prob::new(f32::NAN), Err(Error::InvalidConfig(_))));
    // The engine plan runs them, never ignoring them; so does the CPU engine.
    let cfg = RnnConfig::new(Mode::Lstm, 4, 8).layers(2).dropout(Prob::new(0.3).unwrap());
    let w = Weights::<f32>::init_uniform(&cfg, 1).unwrap();
    let x = PackedSequence::from_padded(&[0.5f32; 8], [2, 1, 4], false, &[2]).unwrap();
    assert!(wgpu_rnn::cpu::forward(&w, &x, &[], Pass::Training).is_ok());
    if let Some(ctx) = contexts().first() {
        let plan = Plan::new(ctx, &cfg, &SeqLayout::of(&x).unwrap(), Pass::Training).unwrap();
        assert!(plan.kernels().iter().any(|k| k.entry() == "dropout_rows"), "no dropout in {:?}", plan.kernels());
    }
}

#[test]
fn loaded_weights_keep_the_callers_regularisers() {
    // The file holds no regularisers; a caller's config that asks for them keeps them, for
    // PyTorch's cells and the others alike.
    let dir = std::env::temp_dir().join(format!("wgpu-rnn-reg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for mode in [Mode::Gru, Mode::Scrn] {
        let cfg = RnnConfig::new(mode, 3, 4).layers(2);
        let path = dir.join(format!("{mode}.safetensors"));
        Weights::<f32>::init_uniform(&cfg, 1).unwrap().save(&path).unwrap();
        let hint = cfg.clone().dropout(Prob::new(0.2).unwrap()).zoneout(Prob::new(0.1).unwrap());
        let w = Weights::<f32>::load(&path, "", Some(&hint)).unwrap();
        assert_eq!(w.config, hint, "{mode}");
        assert_eq!(Weights::<f32>::load(&path, "", None).unwrap().config, cfg, "{mode}: none without a caller's");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
