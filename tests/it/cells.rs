//! The cell registry: every registered cell has golden cases, and they pass forward and
//! backward through the CPU driver generic over the cell, in f32 and f64; gradients agree with
//! central differences in f64.

use crate::common::{golden_cases, variant_cases};
use rand::{Rng, SeedableRng};
use wgpu_rnn::case::{compare, Case};
use wgpu_rnn::cpu::{generic, Float, Pass};
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

fn check_generic<T: Float>() {
    let mut per_mode = std::collections::HashMap::new();
    for (path, file, mode) in all_cases() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let case = Case::<T>::from_file(&file).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = case.run_cpu_generic(true).unwrap_or_else(|e| panic!("{name}: {e}"));
        let report = compare(&got, &file, true);
        // output, every state, grad_input, every initial-state gradient, every parameter's.
        let states = case.config().states().len();
        let params = case.weights.config.param_specs().len();
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
fn golden_and_variant_cases_generic_f32() {
    check_generic::<f32>();
}

#[test]
fn golden_and_variant_cases_generic_f64() {
    check_generic::<f64>();
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
    let (out, _) = generic::forward(w, x, &s0r, Pass::Inference).unwrap();
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
        w.for_each_mut(|_, _, _, v| v.iter_mut().for_each(|x| *x += rng.random_range(-0.3..0.3)));
        let lengths = [4usize, 2, 3];
        let (t, b) = (4, lengths.len());
        let xin: Vec<f64> = (0..t * b * cfg.input_size).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x = PackedSequence::from_padded(&xin, [t, b, cfg.input_size], false, &lengths).unwrap();
        let states = cfg.states();
        let s0: Vec<Vec<f64>> = states.iter().map(|s| (0..cfg.state_shape(s, b).iter().product()).map(|_| rng.random_range(-0.5..0.5)).collect()).collect();
        let gs: Vec<Vec<f64>> = s0.iter().map(|v| v.iter().map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        let (out, tape) = generic::forward(&w, &x, &s0.iter().map(|v| Some(&v[..])).collect::<Vec<_>>(), Pass::Training).unwrap();
        let go: Vec<f64> = out.output.data.iter().map(|_| rng.random_range(-1.0..1.0)).collect();
        let g = generic::backward(&w, &tape.unwrap(), &go, &gs.iter().map(|v| Some(&v[..])).collect::<Vec<_>>()).unwrap();
        // Parameters: a few elements of each tensor.
        let mut analytic = Vec::new();
        g.params.for_each(|def, layer, dir, v| analytic.push((RnnConfig::param_name(def.stem, layer, dir), v.to_vec())));
        let mut k = 0;
        let names: Vec<String> = analytic.iter().map(|a| a.0.clone()).collect();
        for (pi, (name, grad)) in analytic.iter().enumerate() {
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
        assert!(k >= 3 * cfg.param_specs().len());
    }
}
