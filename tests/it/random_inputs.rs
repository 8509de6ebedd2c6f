//! Randomised inputs on stable Rust with fixed seeds and bounded time (issue 10; the
//! cargo-fuzz harness in `fuzz/` runs the same entry points for millions of inputs):
//! - mutated weight and case files (bytes flipped, header numbers, shapes, dtypes and metadata
//!   changed, tensors renamed or dropped, files truncated) must load as `Ok` or a typed `Err`,
//!   and whatever loads must run on the CPU the same way: never a panic;
//! - random small packed batches (all four modes, 1-2 layers, uni- or bidirectional, random
//!   lengths, with and without initial states) on the GPU through the convenience API against
//!   the CPU reference in f64, forward and backward;
//! - every file in `tests/fuzz_regressions/` (inputs that once crashed a fuzz target) replayed.
//!
//! A panic is caught and turned into a failure that names the seed and the case, so one run
//! lists every failing case.

use crate::common::{assert_close, golden_cases, rng, uniform};
use crate::gpu_common::contexts;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::Value as Json;
use std::panic::{catch_unwind, AssertUnwindSafe};
use wgpu_rnn::case::Case;
use wgpu_rnn::cpu::{self, Pass};
use wgpu_rnn::gpu::GpuRnn;
use wgpu_rnn::io::TensorFile;
use wgpu_rnn::{Mode, PackedSequence, RnnConfig, Weights};

/// Seed of the mutation test; each file's mutations draw from `MUTATION_SEED + file index`.
const MUTATION_SEED: u64 = 0x5eed_0010;
/// Mutated variants made from each golden file.
const MUTATIONS_PER_FILE: usize = 128;
/// Loaded weights or cases bigger than this (parameters, or padded input/output elements) are
/// loaded but not run, to keep the test well under a minute in a debug build.
const MAX_RUN_ELEMS: usize = 20_000;
/// Golden files larger than this are mutated fewer times (parsing them dominates).
const LARGE_FILE: usize = 100_000;

/// Seed of the GPU-against-CPU test.
const GPU_SEED: u64 = 0x5eed_0011;
/// Random problems per GPU backend.
const GPU_CASES: usize = 16;
/// GPU (f32) against CPU (f64) on small random problems (sums of at most ~60 terms per step):
/// forward absolute and relative tolerance.
const RANDOM_FWD_ATOL: f64 = 5e-5;
const RANDOM_FWD_RTOL: f64 = 5e-4;
/// Gradients (summed over every row and step): absolute and relative tolerance.
const RANDOM_GRAD_ATOL: f64 = 5e-4;
const RANDOM_GRAD_RTOL: f64 = 5e-3;

/// Runs `f`, turning a panic into an error message naming `what`.
fn no_panic(what: &str, f: impl FnOnce()) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("non-string panic");
        format!("{what}: panicked: {msg}")
    })
}

/// The entry points every mutated (or regression) file goes through: parse, weights with and
/// without hints, the case in f32 and f64, and when small a CPU forward and backward.
/// Returns a description of what happened (for the counts at the end).
fn exercise_file(bytes: &[u8]) -> &'static str {
    let Ok(file) = TensorFile::from_bytes(bytes) else { return "parse error" };
    let loaded = Weights::<f32>::from_file(&file, "", None);
    if let Ok(w) = &loaded {
        let again = Weights::<f32>::from_file(&file, "", Some(&w.config)).expect("a file's own config as hint loads it");
        assert!(again == *w, "the own-config hint changed the weights");
        let mut wrong = w.config.clone();
        wrong.hidden_size += 1;
        assert!(Weights::<f32>::from_file(&file, "", Some(&wrong)).is_err(), "a disagreeing hint was accepted");
    } else {
        // A caller without metadata: hint every mode (most disagree with the tensors: typed errors).
        for mode in Mode::PYTORCH {
            let _ = Weights::<f32>::from_file(&file, "", Some(&RnnConfig::new(mode, 3, 4)));
        }
    }
    let mut ran = "loaded, not run";
    match Case::<f32>::from_file(&file) {
        Ok(case) => {
            if small_case(&case) {
                for backward in [false, true] {
                    if let Ok(got) = case.run_cpu(backward) {
                        let out = got.float("output").expect("a run writes output");
                        assert_eq!(out.shape, vec![case.steps, case.batch, case.config().output_size()]);
                        let _ = wgpu_rnn::case::compare(&got, &file, backward);
                        ran = "case ran";
                    }
                }
            }
        }
        Err(_) => {
            if let Ok(w) = &loaded {
                if w.num_scalars() <= MAX_RUN_ELEMS && w.config.input_size <= MAX_RUN_ELEMS {
                    run_tiny_batch(w);
                    ran = "weights ran";
                }
            }
        }
    }
    if let Ok(case) = Case::<f64>::from_file(&file) {
        if small_case(&case) {
            let _ = case.run_cpu(false);
        }
    }
    if loaded.is_err() && ran == "loaded, not run" {
        "load error"
    } else {
        ran
    }
}

fn small_case<T: cpu::Float>(c: &Case<T>) -> bool {
    let cfg = c.config();
    let width = cfg.input_size.max(cfg.output_size());
    let padded = c.steps.checked_mul(c.batch).and_then(|n| n.checked_mul(width));
    c.weights.num_scalars() <= MAX_RUN_ELEMS && cfg.num_layers <= 4 && padded.is_some_and(|n| n <= MAX_RUN_ELEMS)
}

/// Forward (training) and backward on a fixed tiny batch; shapes checked, errors allowed.
fn run_tiny_batch(w: &Weights<f32>) {
    let cfg = &w.config;
    let (lengths, t) = ([3usize, 1, 2], 3);
    let x: Vec<f32> = (0..t * lengths.len() * cfg.input_size).map(|k| ((k as f32) * 0.37).sin()).collect();
    let p = PackedSequence::from_padded(&x, [t, lengths.len(), cfg.input_size], false, &lengths).unwrap();
    if let Ok((fwd, Some(tape))) = cpu::forward(w, &p, &[], Pass::Training) {
        assert_eq!(fwd.output.data.len(), p.rows() * cfg.output_size());
        let go = vec![1.0f32; fwd.output.data.len()];
        let _ = cpu::backward(w, &tape, &go, &[]);
    }
}

/// The safetensors header: (JSON, data after it).
fn split_header(bytes: &[u8]) -> Option<(Json, Vec<u8>)> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let json = serde_json::from_slice(bytes.get(8..8usize.checked_add(n)?)?).ok()?;
    Some((json, bytes[8 + n..].to_vec()))
}

fn join_header(json: &Json, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(json).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// A number that a header field might be mutated to: edges, off-by-ones, overflow bait.
fn odd_number(g: &mut StdRng, near: u64) -> u64 {
    match g.random_range(0..9) {
        0 => 0,
        1 => 1,
        2 => near.saturating_add(1),
        3 => near.saturating_sub(1),
        4 => near.saturating_mul(2),
        5 => 1 << 32,
        6 => u64::MAX,
        7 => u64::MAX / 2 + 1,
        _ => g.random_range(0..1 << 20),
    }
}

const DTYPES: [&str; 14] = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "U64", "U16", "F8_E5M2", "C64"];
const META_VALUES: [&str; 14] = ["LSTM", "GRU", "RNN_TANH", "rnn_relu", "bogus", "", "0", "1", "-1", "99999999999999999999", "3.5", "true", "false", "yes"];

/// One mutation of a safetensors file; the name says what was done.
fn mutate(g: &mut StdRng, bytes: &[u8]) -> (String, Vec<u8>) {
    let kind = g.random_range(0..11);
    let header = split_header(bytes);
    let tensor_names = |j: &Json| -> Vec<String> {
        j.as_object().map(|o| o.keys().filter(|k| *k != "__metadata__").cloned().collect()).unwrap_or_default()
    };
    match (kind, header) {
        (0, _) | (1, None) => {
            let mut b = bytes.to_vec();
            let k = g.random_range(1..=8);
            for _ in 0..k {
                let at = g.random_range(0..b.len());
                b[at] ^= 1 << g.random_range(0..8);
            }
            (format!("{k} random bit flips"), b)
        }
        (1, Some((_, data))) => {
            // Flips inside the header only (JSON syntax, names, numbers).
            let mut b = bytes.to_vec();
            let hlen = bytes.len() - data.len();
            let at = g.random_range(8..hlen.max(9)).min(b.len() - 1);
            b[at] = g.random_range(0x20..0x7f);
            (format!("header byte {at} replaced"), b)
        }
        (2, _) => {
            let at = g.random_range(0..bytes.len());
            (format!("truncated at {at}"), bytes[..at].to_vec())
        }
        (3, _) => {
            let mut b = bytes.to_vec();
            let v = odd_number(g, u64::from_le_bytes(bytes[..8].try_into().unwrap()));
            b[..8].copy_from_slice(&v.to_le_bytes());
            (format!("header length set to {v}"), b)
        }
        (k, Some((mut j, data))) => {
            let names = tensor_names(&j);
            let name = names[g.random_range(0..names.len())].clone();
            let what = match k {
                4 | 5 => {
                    let shape = j[&name]["shape"].as_array_mut().unwrap();
                    if k == 5 || shape.is_empty() {
                        if g.random_bool(0.5) || shape.is_empty() {
                            shape.push(Json::from(odd_number(g, 1)));
                        } else {
                            shape.pop();
                        }
                        format!("{name}: rank changed to {}", shape.len())
                    } else {
                        let d = g.random_range(0..shape.len());
                        let v = odd_number(g, shape[d].as_u64().unwrap_or(0));
                        shape[d] = Json::from(v);
                        format!("{name}: shape[{d}] = {v}")
                    }
                }
                6 => {
                    let dt = DTYPES[g.random_range(0..DTYPES.len())];
                    j[&name]["dtype"] = Json::from(dt);
                    format!("{name}: dtype {dt}")
                }
                7 => {
                    let i = g.random_range(0..2);
                    let offs = j[&name]["data_offsets"].as_array_mut().unwrap();
                    let v = odd_number(g, offs[i].as_u64().unwrap_or(0));
                    offs[i] = Json::from(v);
                    format!("{name}: data_offsets[{i}] = {v}")
                }
                8 => {
                    let keys: Vec<String> = j["__metadata__"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
                    let v = META_VALUES[g.random_range(0..META_VALUES.len())];
                    if keys.is_empty() {
                        j["__metadata__"] = serde_json::json!({ "mode": v });
                        format!("metadata mode = {v:?}")
                    } else {
                        let key = &keys[g.random_range(0..keys.len())];
                        j["__metadata__"][key] = Json::from(v);
                        format!("metadata {key} = {v:?}")
                    }
                }
                9 => {
                    // Rename a tensor: another layer, the other direction, or a bias dropped.
                    let to = match g.random_range(0..3) {
                        0 => name.replace("_l0", "_l1").replace("_l1_", "_l2_"),
                        1 => format!("{name}_reverse"),
                        _ => format!("dropped.{name}"),
                    };
                    let v = j.as_object_mut().unwrap().remove(&name).unwrap();
                    j[&to] = v;
                    format!("{name} renamed {to}")
                }
                _ => {
                    // Same element count, other shape: reversed dims (passes the container's checks).
                    let shape = j[&name]["shape"].as_array_mut().unwrap();
                    shape.reverse();
                    format!("{name}: shape reversed")
                }
            };
            (what, join_header(&j, &data))
        }
        (_, None) => ("unchanged (header unreadable)".into(), bytes.to_vec()),
    }
}

/// Mutated golden files through every file entry point: `Ok` or a typed `Err`, never a panic.
#[test]
fn mutated_weight_and_case_files_never_panic() {
    let mut failures = Vec::new();
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    for (fi, path) in golden_cases().iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let seed = MUTATION_SEED + fi as u64;
        let mut g = rng(seed);
        let count = if bytes.len() > LARGE_FILE { MUTATIONS_PER_FILE / 4 } else { MUTATIONS_PER_FILE };
        for m in 0..count {
            // Two mutations stacked in one of four variants.
            let (mut what, mut b) = mutate(&mut g, &bytes);
            if m % 4 == 3 {
                let (w2, b2) = mutate(&mut g, &b);
                what = format!("{what}, then {w2}");
                b = b2;
            }
            let label = format!("seed {seed} ({name}) mutation {m}: {what}");
            let mut outcome = "";
            if let Err(e) = no_panic(&label, || outcome = exercise_file(&b)) {
                failures.push(e);
            } else {
                *outcomes.entry(outcome).or_default() += 1;
            }
        }
    }
    eprintln!("mutated files: {outcomes:?}, {} panics", failures.len());
    assert!(failures.is_empty(), "{} mutated files panicked:\n{}", failures.len(), failures.join("\n"));
    // The mutations must reach past the parser, or the test checks little.
    for key in ["parse error", "load error", "case ran"] {
        assert!(outcomes.get(key).copied().unwrap_or(0) > 0, "no mutated file ended as {key:?}: {outcomes:?}");
    }
}

/// `tests/fuzz_regressions`.
// The inputs that once crashed the `config` and `packing` fuzz targets, restated as plain
// calls with the outcome their fix guarantees (tests/it/fuzz_replay.rs also feeds the files'
// bytes through the targets' bodies).

/// `config` target: a bidirectional GRU 255 -> 255 (as `Size::Small`, so 3 -> 3) with
/// num_layers 18446648416197935103: `validate` accepted it and `h_shape` computed
/// `num_layers * D` unchecked ("attempt to multiply with overflow", src/config.rs). A config
/// that validates must have shapes that can be computed; or validate refuses it.
#[test]
fn config_h_shape_layers_overflow() {
    // Fixed in cf48a9c: validate refuses a layer count whose L * D overflows.
    let cfg = RnnConfig::new(Mode::Gru, 3, 3).layers(18_446_648_416_197_935_103).bidirectional(true);
    assert!(matches!(cfg.validate(), Err(wgpu_rnn::Error::InvalidConfig(_) | wgpu_rnn::Error::Limit(_))), "{:?}", cfg.validate());
}

/// `config` target: a bidirectional GRU with input_size 18446744073692839806, hidden_size
/// 18402552502365978536 and 3 layers: `RnnConfig::validate` computed `directions * out_size`
/// unchecked and panicked ("attempt to multiply with overflow", src/config.rs) in debug builds;
/// release builds wrapped. Must be a typed error (fixed in cf48a9c: validate checks every
/// product the shapes take).
#[test]
fn config_validate_bidirectional_overflow() {
    let cfg = RnnConfig::new(Mode::Gru, 18_446_744_073_692_839_806, 18_402_552_502_365_978_536).layers(3).bidirectional(true);
    assert!(cfg.validate().is_err(), "sizes past usize accepted");
    let cfg = RnnConfig::new(Mode::RnnTanh, 1, usize::MAX / 2 + 1).bidirectional(true);
    assert!(cfg.validate().is_err(), "D * H past usize accepted");
}

/// `packing` target: batch-first shape [1, 13774259465391910400, 0] (no features, so the size
/// check passes for any T) with length 6570680666163225179: `from_padded` built `batch_sizes`
/// with one entry per step and panicked ("capacity overflow"; a length of 2^40 would abort on
/// the failed allocation instead). Must be a typed error (fixed in cf48a9c: from_padded refuses rows of
/// no features).
#[test]
fn packing_from_padded_zero_features_huge_steps() {
    let r = PackedSequence::<f32>::from_padded(&[], [1, 13_774_259_465_391_910_400, 0], true, &[6_570_680_666_163_225_179]);
    assert!(r.is_err(), "a sequence of 6.6e18 steps with no features was accepted");
}

/// `packing` target: `from_padded` of shape [3, 1, 0] (no features) with lengths [2] is
/// accepted, and the sequence it returns was then refused by `validate` (a constructor whose
/// output did not validate; refused since cf48a9c). Everything after it must be
/// a typed error, not a panic.
#[test]
fn packing_from_padded_zero_features() {
    // Since cf48a9c the constructor refuses rows of no features (what it returned before did
    // not validate).
    assert!(PackedSequence::<f32>::from_padded(&[], [3, 1, 0], false, &[2]).is_err());
}

/// A random small problem: config, lengths, and whether initial states and state gradients
/// are given.
fn random_problem(g: &mut StdRng, k: usize) -> (RnnConfig, Vec<usize>, bool) {
    let mode = Mode::PYTORCH[k % 4];
    let hidden = g.random_range(1..=20);
    let mut cfg = RnnConfig::new(mode, g.random_range(1..=12), hidden)
        .layers(g.random_range(1..=2))
        .bidirectional(g.random_bool(0.5))
        .bias(g.random_bool(0.8));
    if mode == Mode::Lstm && hidden > 1 && g.random_bool(0.3) {
        cfg = cfg.proj(g.random_range(1..hidden));
    }
    let t = g.random_range(1..=10);
    let b = g.random_range(1..=6);
    let mut lengths: Vec<usize> = (0..b).map(|_| g.random_range(1..=t)).collect();
    lengths[g.random_range(0..b)] = t;
    (cfg, lengths, g.random_bool(0.5))
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Runs one random problem on `ctx` (GPU, f32, convenience API) and on the CPU (f64) and
/// compares forward and backward.
fn gpu_vs_cpu(ctx: &std::sync::Arc<wgpu_rnn::gpu::Context>, label: &str, g: &mut StdRng, cfg: &RnnConfig, lengths: &[usize], states: bool) {
    let w64 = Weights::<f64>::init_uniform(cfg, g.random()).unwrap();
    let w32 = w64.cast::<f32>();
    let w64 = w32.cast::<f64>();
    let (t, b) = (*lengths.iter().max().unwrap(), lengths.len());
    let x64 = PackedSequence::from_padded(&uniform(g, t * b * cfg.input_size, 1.0), [t, b, cfg.input_size], false, lengths).unwrap();
    let x32 = x64.with_data(x64.data.iter().map(|&v| v as f32).collect(), cfg.input_size).unwrap();
    let (hl, cl): (usize, usize) = (cfg.h_shape(b).iter().product(), cfg.c_shape(b).iter().product());
    let lstm = cfg.mode == Mode::Lstm;
    let h0 = states.then(|| uniform(g, hl, 0.5));
    let c0 = (states && lstm).then(|| uniform(g, cl, 0.5));
    let go = uniform(g, x64.rows() * cfg.output_size(), 1.0);
    let ghn = states.then(|| uniform(g, hl, 1.0));
    let gcn = (states && lstm).then(|| uniform(g, cl, 1.0));
    let f32v = |v: &Option<Vec<f64>>| v.as_ref().map(|v| v.iter().map(|&x| x as f32).collect::<Vec<f32>>());
    let (h0f, c0f, ghnf, gcnf) = (f32v(&h0), f32v(&c0), f32v(&ghn), f32v(&gcn));
    let gof: Vec<f32> = go.iter().map(|&x| x as f32).collect();

    let rnn = GpuRnn::new(ctx, &w32).unwrap_or_else(|e| panic!("{label}: GpuRnn::new: {e}"));
    let (gf, tape) = rnn.forward(&x32, &[h0f.as_deref(), c0f.as_deref()][..w32.config.states().len()], Pass::Training).unwrap_or_else(|e| panic!("{label}: GPU forward: {e}"));
    let gb = rnn.backward(&tape.unwrap(), &gof, &[ghnf.as_deref(), gcnf.as_deref()][..w32.config.states().len()]).unwrap_or_else(|e| panic!("{label}: GPU backward: {e}"));
    let (cf, ctape) = cpu::forward(&w64, &x64, &[h0.as_deref(), c0.as_deref()][..w64.config.states().len()], Pass::Training).unwrap();
    let cb = cpu::backward(&w64, &ctape.unwrap(), &go, &[ghn.as_deref(), gcn.as_deref()][..w64.config.states().len()]).unwrap();

    let (fa, fr, ga, gr) = (RANDOM_FWD_ATOL, RANDOM_FWD_RTOL, RANDOM_GRAD_ATOL, RANDOM_GRAD_RTOL);
    assert_eq!(gf.output.batch_sizes, cf.output.batch_sizes, "{label}: output packing");
    assert_close(&format!("{label}: output"), &to64(&gf.output.data), &cf.output.data, fa, fr);
    assert_close(&format!("{label}: h_n"), &to64(&gf.states[0].data), &cf.states[0].data, fa, fr);
    assert_eq!(gf.states.get(1).cloned().is_some(), lstm, "{label}: c_n presence");
    if let (Some(gc), Some(cc)) = (&gf.states.get(1).cloned(), &cf.states.get(1).cloned()) {
        assert_close(&format!("{label}: c_n"), &to64(&gc.data), &cc.data, fa, fr);
    }
    assert_close(&format!("{label}: grad_input"), &to64(&gb.input.data), &cb.input.data, ga, gr);
    assert_close(&format!("{label}: grad_h0"), &to64(&gb.states[0].data), &cb.states[0].data, ga, gr);
    assert_eq!(gb.states.get(1).cloned().is_some(), lstm, "{label}: grad_c0 presence");
    if let (Some(gc), Some(cc)) = (&gb.states.get(1).cloned(), &cb.states.get(1).cloned()) {
        assert_close(&format!("{label}: grad_c0"), &to64(&gc.data), &cc.data, ga, gr);
    }
    let flat = |w: &Weights<f64>| {
        let mut v = Vec::new();
        w.for_each(|_, _, _, x| v.extend_from_slice(x));
        v
    };
    let gw: Vec<f64> = {
        let mut v = Vec::new();
        gb.params.for_each(|_, _, _, x| v.extend(x.iter().map(|&y| y as f64)));
        v
    };
    assert_close(&format!("{label}: parameter gradients"), &gw, &flat(&cb.params), ga, gr);
}

/// Random small packed batches on every GPU backend against the CPU reference.
#[test]
fn random_packed_batches_gpu_match_cpu() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for ctx in contexts() {
        let mut g = rng(GPU_SEED);
        for k in 0..GPU_CASES {
            let (cfg, lengths, states) = random_problem(&mut g, k);
            let label = format!("seed {GPU_SEED} case {k} on {}: {cfg:?} lengths {lengths:?} states {states}", ctx.describe());
            let start = std::time::Instant::now();
            let res = no_panic(&label, || gpu_vs_cpu(ctx, &label, &mut g, &cfg, &lengths, states));
            eprintln!("{label}: {:.2} s", start.elapsed().as_secs_f64());
            match res {
                Ok(()) => ran += 1,
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(failures.is_empty(), "{} random GPU cases failed:\n{}", failures.len(), failures.join("\n"));
    if !contexts().is_empty() {
        assert_eq!(ran, GPU_CASES * contexts().len());
    }
}

/// The same random problems on the CPU alone (runs without a GPU): f32 against f64, and a
/// batch's results independent of the order its sequences come in.
#[test]
fn random_packed_batches_cpu_f32_matches_f64() {
    let mut g = rng(GPU_SEED + 1);
    for k in 0..GPU_CASES {
        let (cfg, lengths, _) = random_problem(&mut g, k);
        let label = format!("seed {} case {k}: {cfg:?} lengths {lengths:?}", GPU_SEED + 1);
        let w64 = Weights::<f64>::init_uniform(&cfg, k as u64).unwrap();
        let w32 = w64.cast::<f32>();
        let w64 = w32.cast::<f64>();
        let (t, b) = (*lengths.iter().max().unwrap(), lengths.len());
        let x64 = PackedSequence::from_padded(&uniform(&mut g, t * b * cfg.input_size, 1.0), [t, b, cfg.input_size], false, &lengths).unwrap();
        let x32 = x64.with_data(x64.data.iter().map(|&v| v as f32).collect(), cfg.input_size).unwrap();
        let go = uniform(&mut g, x64.rows() * cfg.output_size(), 1.0);
        let go32: Vec<f32> = go.iter().map(|&v| v as f32).collect();
        let (f64o, t64) = cpu::forward(&w64, &x64, &[], Pass::Training).unwrap();
        let b64 = cpu::backward(&w64, &t64.unwrap(), &go, &[]).unwrap();
        let (f32o, t32) = cpu::forward(&w32, &x32, &[], Pass::Training).unwrap();
        let b32 = cpu::backward(&w32, &t32.unwrap(), &go32, &[]).unwrap();
        assert_close(&format!("{label}: output"), &to64(&f32o.output.data), &f64o.output.data, RANDOM_FWD_ATOL, RANDOM_FWD_RTOL);
        assert_close(&format!("{label}: h_n"), &to64(&f32o.states[0].data), &f64o.states[0].data, RANDOM_FWD_ATOL, RANDOM_FWD_RTOL);
        assert_close(&format!("{label}: grad_input"), &to64(&b32.input.data), &b64.input.data, RANDOM_GRAD_ATOL, RANDOM_GRAD_RTOL);
        assert_close(&format!("{label}: grad_h0"), &to64(&b32.states[0].data), &b64.states[0].data, RANDOM_GRAD_ATOL, RANDOM_GRAD_RTOL);
    }
}
