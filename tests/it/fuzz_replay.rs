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
#[path = "../../fuzz/bodies/packing.rs"]
mod packing;
#[allow(dead_code)]
#[path = "../../fuzz/bodies/weights.rs"]
mod weights;

/// The body of the target a regression file belongs to, by its name's prefix.
fn body_for(name: &str) -> Option<fn(&[u8])> {
    let bodies: [(&str, fn(&[u8])); 4] = [("case-", case::run), ("config-", config::run), ("packing-", packing::run), ("weights-", weights::run)];
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
            failures.push(format!("{name}: no target body for this name (case-, config-, packing- or weights-)"));
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
