//! Fuzzing that cannot rot (issue 26): each cargo-fuzz target's body lives in `fuzz/bodies/`
//! and is compiled here too, so a change that breaks a target breaks this stable test build;
//! every input in `tests/fuzz_regressions/` (each once crashed a target) is fed through the
//! body its name starts with, byte for byte as cargo-fuzz feeds it. The directory must hold
//! every file its `LIST` names.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

#[allow(dead_code)]
#[path = "../../fuzz/bodies/case.rs"]
mod case;
#[allow(dead_code)]
#[path = "../../fuzz/bodies/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "../../fuzz/bodies/engine.rs"]
mod engine;
#[allow(dead_code)]
#[path = "../../fuzz/bodies/onnx.rs"]
mod onnx;
#[allow(dead_code)]
#[path = "../../fuzz/bodies/packing.rs"]
mod packing;
#[allow(dead_code)]
#[path = "../../fuzz/bodies/weights.rs"]
mod weights;

/// The body of the target a regression file belongs to, by its name's prefix.
fn body_for(name: &str) -> Option<fn(&[u8])> {
    let bodies: [(&str, fn(&[u8])); 6] = [("case-", case::run), ("config-", config::run), ("engine-", engine::run), ("onnx-", onnx::run), ("packing-", packing::run), ("weights-", weights::run)];
    bodies.iter().find(|(prefix, _)| name.starts_with(prefix)).map(|&(_, f)| f)
}

fn regressions_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions")
}

#[test]
fn every_fuzz_regression_replays_through_its_target_body() {
    let dir = regressions_dir();
    let list = std::fs::read_to_string(dir.join("LIST")).unwrap_or_else(|e| panic!("{}: {e} (the regression directory or its LIST is missing)", dir.display()));
    let listed: Vec<&str> = list.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert!(!listed.is_empty(), "LIST names no regression");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "LIST" && n != "README.md")
        .collect();
    files.sort();
    for name in &listed {
        assert!(files.iter().any(|f| f == name), "{name} is listed but missing from {}", dir.display());
    }
    assert!(files.len() >= listed.len(), "{} files, {} listed", files.len(), listed.len());
    let mut failures = Vec::new();
    for name in &files {
        let Some(run) = body_for(name) else {
            failures.push(format!("{name}: no target body for this name (case-, config-, engine-, onnx-, packing- or weights-)"));
            continue;
        };
        let bytes = std::fs::read(dir.join(name)).unwrap();
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| run(&bytes))) {
            let msg = p.downcast_ref::<String>().map(String::as_str).or_else(|| p.downcast_ref::<&str>().copied()).unwrap_or("non-string panic");
            failures.push(format!("{name}: panicked: {msg}"));
        }
    }
    assert!(failures.is_empty(), "{} fuzz regressions failed:\n{}", failures.len(), failures.join("\n"));
    eprintln!("fuzz regressions: {} replayed through their target bodies", files.len());
}

/// Inputs for the `engine` body drawn from a seeded generator (a stable, small stand-in for the
/// fuzzer's runs): any cell, f32/f16, regularisers, hostile buffer sizes, usages, aliases and
/// state slices. The body asserts that every recording the plan accepts is also accepted by
/// wgpu's validation. Runs on lavapipe; required under CI=true.
/// Inputs per run: about 5 ms each on lavapipe.
const INPUTS: usize = 2000;

#[test]
fn the_engine_body_holds_on_random_inputs() {
    use rand::{RngCore, SeedableRng};
    if !engine::available() {
        assert!(!crate::gpu_common::in_ci(), "CI=true but no Vulkan adapter for the engine body");
        crate::common::skip("the engine body: no Vulkan adapter");
        return;
    }
    let mut g = rand::rngs::StdRng::seed_from_u64(26);
    let mut failures = Vec::new();
    let mut outcomes: std::collections::BTreeMap<&str, usize> = Default::default();
    for k in 0..INPUTS {
        let mut bytes = vec![0u8; 160];
        g.fill_bytes(&mut bytes);
        match catch_unwind(AssertUnwindSafe(|| engine::exercise(&bytes))) {
            Ok(what) => *outcomes.entry(what).or_default() += 1,
            Err(p) => {
            let msg = p.downcast_ref::<String>().map(String::as_str).or_else(|| p.downcast_ref::<&str>().copied()).unwrap_or("non-string panic");
            failures.push(format!("input {k} ({:02x?}): {msg}", &bytes[..16]));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {INPUTS} engine inputs failed:\n{}", failures.len(), failures.join("\n"));
    eprintln!("engine body outcomes: {outcomes:?}");
    // Both sides of the property must have been exercised.
    for what in ["recorded and validated", "recording refused", "one step recorded and validated", "one step refused"] {
        assert!(outcomes.get(what).copied().unwrap_or(0) >= INPUTS / 50, "only {:?} inputs {what}: {outcomes:?}", outcomes.get(what));
    }
}

/// The ONNX conformance cases (tests/onnx) as `onnx` body inputs: the seeds of its corpus.
pub fn onnx_seeds() -> Vec<Vec<u8>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/onnx");
    let mut v = Vec::new();
    for set in ["backend", "ort"] {
        let mut cases: Vec<PathBuf> = std::fs::read_dir(root.join(set)).unwrap().map(|e| e.unwrap().path()).collect();
        cases.sort();
        for c in cases {
            let model = std::fs::read(c.join("model.onnx")).unwrap();
            let tensors: Vec<Vec<u8>> = (0..).map(|k| c.join(format!("test_data_set_0/input_{k}.pb"))).take_while(|p| p.exists()).map(|p| std::fs::read(p).unwrap()).collect();
            v.push(onnx::encode(&tensors, &model));
        }
    }
    v
}

/// The `onnx` body on every conformance case and on seeded mutations of each (bytes flipped,
/// set to 0 or 0xff, runs cut out, the input truncated): a stable, small stand-in for the
/// fuzzer's runs over the ONNX reader. No input may panic.
#[test]
fn the_onnx_body_holds_on_mutated_conformance_cases() {
    use rand::{Rng, SeedableRng};
    let seeds = onnx_seeds();
    assert_eq!(seeds.len(), 62, "tests/onnx: 18 backend and 44 onnxruntime cases");
    let mut g = rand::rngs::StdRng::seed_from_u64(26);
    let mut failures = Vec::new();
    let mut runs = 0;
    for (k, seed) in seeds.iter().enumerate() {
        // The seed itself runs: the mutations start from a node that works.
        let (tensors, model) = onnx::split(seed);
        let tensors: Vec<wgpu_rnn::onnx::proto::TensorProto> = tensors.iter().map(|b| wgpu_rnn::onnx::proto::decode("input", b).unwrap()).collect();
        let outs = wgpu_rnn::onnx::file::Model::from_bytes(model).and_then(|m| m.run(&tensors, None));
        assert!(outs.is_ok_and(|o| !o.is_empty()), "seed {k} does not run");
        for m in 0..25 {
            let mut v = seed.clone();
            if m > 0 {
                for _ in 0..g.random_range(1..4) {
                    let at = g.random_range(0..v.len());
                    match g.random_range(0..5) {
                        0 => v[at] ^= 1 << g.random_range(0..8),
                        1 => v[at] = 0,
                        2 => v[at] = 0xff,
                        3 => {
                            let end = (at + g.random_range(1..16)).min(v.len());
                            v.drain(at..end);
                        }
                        _ => v.truncate(at.max(1)),
                    }
                    if v.is_empty() {
                        break;
                    }
                }
            }
            runs += 1;
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| onnx::run(&v))) {
                let msg = p.downcast_ref::<String>().map(String::as_str).or_else(|| p.downcast_ref::<&str>().copied()).unwrap_or("non-string panic");
                failures.push(format!("case {k} mutation {m}: {msg}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {runs} inputs panicked:\n{}", failures.len(), failures.join("\n"));
}
