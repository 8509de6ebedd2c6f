//! The cell registry: every registered cell has golden cases, and they pass forward and
//! backward through the CPU driver generic over the cell, in f32 and f64; gradients agree with
//! central differences in f64.

use crate::common::{golden_cases, variant_cases};
use rand::{Rng, SeedableRng};
use wgpu_rnn::case::{compare, Case};
use wgpu_rnn::cpu::{self, Float, Pass};
use wgpu_rnn::io::TensorFile;
use wgpu_rnn::{Mode, PackedSequence, RnnConfig, Weights};

fn all_files() -> Vec<(std::path::PathBuf, TensorFile)> {
    golden_cases().into_iter().chain(variant_cases()).map(|p| (p.clone(), TensorFile::read(&p).unwrap())).collect()
}

/// The cases whose cell is registered.
fn all_cases() -> Vec<(std::path::PathBuf, TensorFile, Mode)> {
    all_files().into_iter().filter_map(|(p, f)| f.metadata["mode"].parse().ok().map(|m| (p, f, m))).collect()
}

#[test]
fn every_case_names_a_registered_cell() {
    for (p, f) in all_files() {
        let m = &f.metadata["mode"];
        assert!(m.parse::<Mode>().is_ok(), "{}: mode {m} is not in the registry", p.display());
    }
}

#[test]
fn every_registered_cell_has_golden_cases() {
    let cases = all_cases();
    for &m in Mode::REGISTRY {
        let n = cases.iter().filter(|c| c.2 == m).count();
        assert!(n >= 1, "{m} is registered but has {n} golden cases (tests/golden, tests/golden-variants)");
    }
}

fn check_cpu_engine<T: Float>() {
    let mut per_mode = std::collections::HashMap::new();
    for (path, file, mode) in all_cases() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let case = Case::<T>::from_file(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = case.run_cpu(true).unwrap_or_else(|e| panic!("{name}: {e}"));
        let report = compare(&got, &file, true);
        // output, every state, grad_input, every initial-state gradient, every parameter's.
        let states = case.config().states().len();
        let params = case.weights.config.param_specs().iter().filter(|s| !s.fixed).count();
        assert_eq!(report.len(), 2 + 2 * states + params, "{name}: compared {:?}", report.iter().map(|m| &m.name).collect::<Vec<_>>());
        for m in &report {
            assert_eq!(m.failures, 0, "{name}: {} fails in {}/{} (worst {:?}, ratio {})", m.name, m.failures, m.total, m.worst, m.worst_ratio);
        }
        *per_mode.entry(mode).or_insert(0) += 1;
    }
    for &m in Mode::REGISTRY {
        assert!(per_mode.get(&m).copied().unwrap_or(0) > 0, "{m}: no case ran");
    }
}

#[test]
fn golden_and_variant_cases_cpu_f32() {
    check_cpu_engine::<f32>();
}

#[test]
fn golden_and_variant_cases_cpu_f64() {
    check_cpu_engine::<f64>();
}

/// Relative-or-absolute agreement of analytic and central-difference gradients (f64).
const FD_STEP: f64 = 1e-6;
const FD_TOL: f64 = 1e-5;

/// A small config of `mode` that its rules allow (SRU and MUT1 need input == hidden).
fn small_config(mode: Mode, bidirectional: bool) -> RnnConfig {
    let try_sizes = [(3, 4), (4, 4)];
    for (i, h) in try_sizes {
        let c = RnnConfig::new(mode, i, h).layers(2).bidirectional(bidirectional);
        if c.validate().is_ok() {
            return c;
        }
    }
    RnnConfig::new(mode, 4, 4).layers(2)
}

/// `sum(output * go) + sum_s sum(s_n * gs)` for the given parameters and inputs.
fn loss(w: &Weights<f64>, x: &PackedSequence<f64>, s0: &[Vec<f64>], go: &[f64], gs: &[Vec<f64>]) -> f64 {
    let s0r: Vec<Option<&[f64]>> = s0.iter().map(|v| Some(&v[..])).collect();
    let (out, _) = cpu::forward(w, x, &s0r, Pass::Inference).unwrap();
    let mut l: f64 = out.output.data.iter().zip(go).map(|(a, b)| a * b).sum();
    for (t, g) in out.states.iter().zip(gs) {
        l += t.data.iter().zip(g).map(|(a, b)| a * b).sum::<f64>();
    }
    l
}

fn near(what: &str, analytic: f64, numeric: f64) {
    let err = (analytic - numeric).abs();
    assert!(err <= FD_TOL * (1.0 + numeric.abs()), "{what}: analytic {analytic}, numeric {numeric}");
}

#[test]
fn gradients_match_finite_differences_every_cell() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for &mode in Mode::REGISTRY {
        let mut cfg = small_config(mode, true);
        if cfg.validate().is_err() {
            cfg.bidirectional = false;
        }
        let cfg = if cfg.validate().is_ok() { cfg } else { small_config(mode, false).bidirectional(false) };
        cfg.validate().unwrap_or_else(|e| panic!("{mode}: {e}"));
        let mut w = Weights::<f64>::init_uniform(&cfg, 5).unwrap();
        // Layer-norm gains and shifts away from 1 / 0, so their gradients are exercised.
        // (Not the uRNN's permutation: fixed whole numbers.)
        w.for_each_mut(|def, _, _, v| v.iter_mut().filter(|_| !def.fixed).for_each(|x| *x += rng.random_range(-0.3..0.3)));
        let lengths = [4usize, 2, 3];
        let (t, b) = (4, lengths.len());
        let xin: Vec<f64> = (0..t * b * cfg.input_size).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x = PackedSequence::from_padded(&xin, [t, b, cfg.input_size], false, &lengths).unwrap();
        let states = cfg.states();
        let s0: Vec<Vec<f64>> = states.iter().map(|s| (0..cfg.state_shape(s, b).iter().product()).map(|_| rng.random_range(-0.5..0.5)).collect()).collect();
        let gs: Vec<Vec<f64>> = s0.iter().map(|v| v.iter().map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        let (out, tape) = cpu::forward(&w, &x, &s0.iter().map(|v| Some(&v[..])).collect::<Vec<_>>(), Pass::Training).unwrap();
        let go: Vec<f64> = out.output.data.iter().map(|_| rng.random_range(-1.0..1.0)).collect();
        let g = cpu::backward(&w, &tape.unwrap(), &go, &gs.iter().map(|v| Some(&v[..])).collect::<Vec<_>>()).unwrap();
        // Parameters: a few elements of each tensor.
        let mut analytic = Vec::new();
        g.params.for_each(|def, layer, dir, v| analytic.push((RnnConfig::param_name(def.stem, layer, dir), v.to_vec(), def.fixed)));
        let mut k = 0;
        let names: Vec<String> = analytic.iter().map(|a| a.0.clone()).collect();
        for (pi, (name, grad, fixed)) in analytic.iter().enumerate() {
            if *fixed {
                // No gradient: exactly zero.
                assert!(grad.iter().all(|&v| v == 0.0), "{mode} {name}: a fixed tensor has a gradient");
                continue;
            }
            for idx in [0, grad.len() / 2, grad.len() - 1] {
                let eval = |delta: f64| {
                    let mut w2 = w.clone();
                    let mut seen = 0;
                    w2.for_each_mut(|_, _, _, v| {
                        if seen == pi {
                            v[idx] += delta;
                        }
                        seen += 1;
                    });
                    loss(&w2, &x, &s0, &go, &gs)
                };
                let num = (eval(FD_STEP) - eval(-FD_STEP)) / (2.0 * FD_STEP);
                near(&format!("{mode} {name}[{idx}]"), grad[idx], num);
                k += 1;
            }
        }
        assert_eq!(names.len(), cfg.param_specs().len());
        // Input and initial states.
        for idx in [0, x.data.len() / 3, x.data.len() - 1] {
            let eval = |delta: f64| {
                let mut x2 = x.clone();
                x2.data[idx] += delta;
                loss(&w, &x2, &s0, &go, &gs)
            };
            near(&format!("{mode} input[{idx}]"), g.input.data[idx], (eval(FD_STEP) - eval(-FD_STEP)) / (2.0 * FD_STEP));
        }
        for (si, st) in states.iter().enumerate() {
            for idx in [0, s0[si].len() / 2, s0[si].len() - 1] {
                let eval = |delta: f64| {
                    let mut s2 = s0.clone();
                    s2[si][idx] += delta;
                    loss(&w, &x, &s2, &go, &gs)
                };
                near(&format!("{mode} {}0[{idx}]", st.name), g.states[si].data[idx], (eval(FD_STEP) - eval(-FD_STEP)) / (2.0 * FD_STEP));
            }
        }
        assert!(k >= 3 * cfg.param_specs().iter().filter(|s| !s.fixed).count());
    }
}

#[test]
fn cli_runs_every_cell_on_cpu_and_gpu() {
    // `wgpu-rnn run CASE --device cpu|gpu --backward --out OUT` for one case of every cell
    // writes `output`, every `{s}_n`, `grad_input`, every `grad_{s}0` and every parameter's
    // gradient, within the golden tolerances (the format hidden cases come in).
    let exe = env!("CARGO_BIN_EXE_wgpu-rnn");
    let dir = std::env::temp_dir().join(format!("wgpu-rnn-cells-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gpu = !crate::gpu_common::contexts().is_empty();
    let cases = all_cases();
    for &mode in Mode::REGISTRY {
        let (path, file, _) = cases.iter().rfind(|c| c.2 == mode).unwrap();
        for device in ["cpu", "gpu"] {
            if device == "gpu" && !gpu {
                continue;
            }
            let out = dir.join(format!("{mode}-{device}.safetensors"));
            let o = std::process::Command::new(exe)
                .args(["run", path.to_str().unwrap(), "--device", device, "--backward", "--out", out.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(o.status.success(), "{mode} {device}: {}", String::from_utf8_lossy(&o.stderr));
            let got = TensorFile::read(&out).unwrap();
            let report = compare(&got, file, true);
            let states = RnnConfig::clone(&Case::<f32>::from_file(file).unwrap().weights.config).states().len();
            assert!(report.len() > 2 + 2 * states, "{mode} {device}: only {} tensors compared", report.len());
            for m in &report {
                assert_eq!(m.failures, 0, "{mode} {device}: {} (ratio {})", m.name, m.worst_ratio);
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn weights_round_trip_every_cell_under_its_names() {
    let dir = std::env::temp_dir().join(format!("wgpu-rnn-cells-w-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for &mode in Mode::REGISTRY {
        let cfg = small_config(mode, false);
        let w = Weights::<f32>::init_uniform(&cfg, 3).unwrap();
        let path = dir.join(format!("{mode}.safetensors"));
        w.save(&path).unwrap();
        let file = TensorFile::read(&path).unwrap();
        assert_eq!(file.metadata["mode"], mode.as_str());
        // Exactly the cell's names and shapes.
        let specs = cfg.param_specs();
        assert_eq!(file.tensors.len(), specs.len(), "{mode}");
        for s in &specs {
            // Floats, and the fixed index tensors as integers.
            assert_eq!(file.tensors[&s.name].shape(), s.shape, "{mode} {}", s.name);
            assert_eq!(matches!(file.tensors[&s.name], wgpu_rnn::io::Value::Int(_)), s.fixed, "{mode} {}", s.name);
        }
        let back = Weights::<f32>::load(&path, "", None).unwrap();
        assert_eq!(back, w, "{mode}");
        // A missing tensor is named.
        let mut f2 = file.clone();
        f2.tensors.remove(&specs.last().unwrap().name);
        assert!(matches!(Weights::<f32>::from_file(&f2, "", None), Err(wgpu_rnn::Error::MissingTensor(n)) if n == specs.last().unwrap().name), "{mode}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sizes_a_cell_cannot_take_are_typed_errors() {
    for mode in [Mode::Sru, Mode::Mut1] {
        let cfg = RnnConfig::new(mode, 3, 4);
        assert!(matches!(cfg.validate(), Err(wgpu_rnn::Error::InvalidConfig(_))), "{mode}");
        assert!(matches!(Weights::<f32>::zeros(&cfg), Err(wgpu_rnn::Error::InvalidConfig(_))), "{mode}");
        // A bidirectional stack's second layer has input 2H.
        let cfg = RnnConfig::new(mode, 4, 4).layers(2).bidirectional(true);
        assert!(matches!(cfg.validate(), Err(wgpu_rnn::Error::InvalidConfig(_))), "{mode}");
    }
    // Projection and bias=False are PyTorch's LSTM / RNN options only.
    assert!(RnnConfig::new(Mode::LstmPeephole, 3, 4).proj(2).validate().is_err());
    assert!(RnnConfig::new(Mode::Scrn, 3, 4).bias(false).validate().is_err());
    // A stage's states given with the wrong shape.
    let cfg = RnnConfig::new(Mode::Scrn, 3, 4);
    let w = Weights::<f32>::init_uniform(&cfg, 1).unwrap();
    let x = PackedSequence::from_padded(&[0.1f32; 6], [2, 1, 3], false, &[2]).unwrap();
    let bad_s = [0.0f32; 4]; // s is [1, 1, 2]
    let r = cpu::forward(&w, &x, &[None, Some(&bad_s[..])], Pass::Inference);
    assert!(matches!(r, Err(wgpu_rnn::Error::LengthMismatch { .. })), "{r:?}");
    let r = cpu::forward(&w, &x, &[None, None, None], Pass::Inference);
    assert!(matches!(r, Err(wgpu_rnn::Error::InvalidConfig(_))), "{r:?}");
}

#[test]
fn pytorch_list_matches_the_cells_whose_bias_flag_applies() {
    let pytorch: Vec<Mode> = Mode::REGISTRY.iter().copied().filter(|m| m.optional_bias()).collect();
    assert_eq!(pytorch, Mode::PYTORCH);
}

#[test]
fn every_cell_keeps_the_drivers_rules() {
    // Only stage 0's product may read a state (Layout::check), at every size class.
    for &mode in Mode::REGISTRY {
        for (i, h) in [(3, 4), (4, 4), (64, 64)] {
            let cfg = RnnConfig::new(mode, i, h).layers(2);
            if cfg.validate().is_err() {
                continue;
            }
            for layer in 0..2 {
                cfg.mode.check_layout(cfg.sizes(layer)).unwrap_or_else(|e| panic!("{mode}: {e}"));
            }
        }
    }
}

#[test]
fn generic_driver_gives_the_same_bits_on_any_number_of_threads() {
    // B 40 and H 64: enough rows and work for the time loops to split the batch.
    use wgpu_rnn::cpu::split::with_threads;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for &mode in Mode::REGISTRY {
        let mut cfg = RnnConfig::new(mode, 48, 64).bidirectional(true);
        if cfg.validate().is_err() {
            cfg = RnnConfig::new(mode, 64, 64);
        }
        let w = Weights::<f32>::init_uniform(&cfg, 9).unwrap();
        let lengths: Vec<usize> = (0..40).map(|i| 1 + (i * 7) % 12).collect();
        let xs: Vec<f32> = (0..12 * 40 * cfg.input_size).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x = PackedSequence::from_padded(&xs, [12, 40, cfg.input_size], false, &lengths).unwrap();
        let run = |threads: usize| {
            with_threads(threads, || {
                let (out, tape) = cpu::forward(&w, &x, &[], Pass::Training).unwrap();
                let go = vec![0.25f32; out.output.data.len()];
                let g = cpu::backward(&w, &tape.unwrap(), &go, &[]).unwrap();
                let p = g.params.to_flat();
                (out.output.data, g.input.data.clone(), p)
            })
        };
        let (a, b) = (run(1), run(3));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.0), bits(&b.0), "{mode}: output");
        assert_eq!(bits(&a.1), bits(&b.1), "{mode}: grad_input");
        assert_eq!(bits(&a.2), bits(&b.2), "{mode}: parameter gradients");
    }
}

#[test]
fn stale_pooled_buffers_never_reach_results() {
    // The CPU engine takes its large buffers (input projection, tape, gate gradients) from a
    // pool without clearing them up front (`cpu::pool::try_reused`): every element must be
    // written before it is read. Poison the pool with NaN buffers of every size the calls
    // can ask for and check that forward and backward give the same bits as from fresh
    // memory. T 64, B 16, H 64: every such buffer is at least `MIN_POOLED_BYTES`, so pooled.
    use wgpu_rnn::cpu::pool;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for &mode in Mode::REGISTRY {
        let mut cfg = RnnConfig::new(mode, 32, 64).layers(2);
        if cfg.validate().is_err() {
            cfg = RnnConfig::new(mode, 64, 64).layers(2);
        }
        let w = Weights::<f32>::init_uniform(&cfg, 4).unwrap();
        let lengths: Vec<usize> = (0..16).map(|i| 64 - (i * 3) % 20).collect();
        let xs: Vec<f32> = (0..64 * 16 * cfg.input_size).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x = PackedSequence::from_padded(&xs, [64, 16, cfg.input_size], false, &lengths).unwrap();
        let run = || {
            let (out, tape) = cpu::forward(&w, &x, &[], Pass::Training).unwrap();
            let go: Vec<f32> = (0..out.output.data.len()).map(|i| ((i % 7) as f32 - 3.0) * 0.1).collect();
            let g = cpu::backward(&w, &tape.unwrap(), &go, &[]).unwrap();
            (out.output.data, g.input.data.clone(), g.params.to_flat())
        };
        pool::release();
        let fresh = run();
        // (The run handed its own buffers back: drop them, so the next takes the poison.)
        pool::release();
        let mut bytes = pool::MIN_POOLED_BYTES;
        while bytes <= 16 << 20 {
            pool::recycle(vec![f32::NAN; bytes / 4]);
            bytes = bytes * 3 / 2;
        }
        let poisoned = run();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fresh.0), bits(&poisoned.0), "{mode}: output");
        assert_eq!(bits(&fresh.1), bits(&poisoned.1), "{mode}: grad_input");
        assert_eq!(bits(&fresh.2), bits(&poisoned.2), "{mode}: parameter gradients");
    }
}

#[test]
fn cpu_backward_without_the_input_gives_the_rest_bitwise() {
    // Every cell (SRU and MUT1 add to the input gradient directly), two layers, both
    // directions where allowed, enough rows for the step-by-step input side (256 packed rows):
    // `backward_without_input` gives the initial states' and parameters' gradients of
    // `backward`, bit for bit.
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    for &mode in Mode::REGISTRY {
        let mut cfg = RnnConfig::new(mode, 24, 24).layers(2).bidirectional(true);
        if cfg.validate().is_err() {
            cfg = RnnConfig::new(mode, 24, 24).layers(2);
        }
        let w = Weights::<f32>::init_uniform(&cfg, 3).unwrap();
        let (t, b) = (20, 16);
        let lengths: Vec<usize> = (0..b).map(|i| t - (i * 3) % 7).collect();
        let xs: Vec<f32> = (0..t * b * cfg.input_size).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x = PackedSequence::from_padded(&xs, [t, b, cfg.input_size], false, &lengths).unwrap();
        let (out, tape) = cpu::forward(&w, &x, &[], Pass::Training).unwrap();
        let tape = tape.unwrap();
        let go: Vec<f32> = (0..out.output.data.len()).map(|_| rng.random_range(-1.0..1.0)).collect();
        let gs: Vec<Vec<f32>> = out.states.iter().map(|s| (0..s.data.len()).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        let gsr: Vec<Option<&[f32]>> = gs.iter().map(|v| Some(&v[..])).collect();
        let full = cpu::backward(&w, &tape, &go, &gsr).unwrap();
        let (states, params) = cpu::backward_without_input(&w, &tape, &go, &gsr).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(full.input.data.iter().all(|v| v.is_finite()), "{mode}: grad_input");
        assert_eq!(states.len(), full.states.len(), "{mode}: states");
        for (a, b) in states.iter().zip(&full.states) {
            assert_eq!(bits(&a.data), bits(&b.data), "{mode}: initial state gradient");
        }
        let (p, q) = (params.to_flat(), full.params.to_flat());
        assert!(q.iter().all(|v| v.is_finite()), "{mode}: parameter gradients");
        assert_eq!(bits(&p), bits(&q), "{mode}: parameter gradients");
    }
}
