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
#[path = "../../fuzz/bodies/packing.rs"]
mod packing;
#[allow(dead_code)]
#[path = "../../fuzz/bodies/weights.rs"]
mod weights;

/// The body of the target a regression file belongs to, by its name's prefix.
fn body_for(name: &str) -> Option<fn(&[u8])> {
    let bodies: [(&str, fn(&[u8])); 5] = [("case-", case::run), ("config-", config::run), ("engine-", engine::run), ("packing-", packing::run), ("weights-", weights::run)];
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
            failures.push(format!("{name}: no target body for this name (case-, config-, engine-, packing- or weights-)"));
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
