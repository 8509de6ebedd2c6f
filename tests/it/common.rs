//! Shared test helpers: tolerance-aware comparison, golden paths, random data.

use rand::{Rng, SeedableRng};
use std::path::PathBuf;

/// Where every skip is recorded (the test runner hides a passing test's output): one line per
/// skip, in Cargo's temporary directory for integration tests. `.ci/run` clears it before the
/// tests and prints the count and the lines after them.
pub fn skips_file() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("skips.txt")
}

/// Records a visible skip: `what` could not be checked here, and why.
pub fn skip(what: &str) {
    use std::io::Write;
    eprintln!("SKIPPED {what}");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(skips_file()) {
        let _ = writeln!(f, "SKIPPED {what}");
    }
}

/// `tests/golden`, copied from `../shared/golden` so a fresh clone has it.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Every golden case file, sorted.
pub fn golden_cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("tests/golden exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    assert!(v.len() >= 25, "expected the 25 golden cases, found {}", v.len());
    v
}

/// The cases of the cells beyond PyTorch's (`tests/golden-variants`, copied from
/// ../shared/golden-variants).
pub fn variant_cases() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden-variants");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("tests/golden-variants exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    assert!(v.len() >= 27, "expected the 27 variant cases, found {}", v.len());
    v
}

/// Asserts `|a - e| <= atol + rtol * |e|` elementwise; NaN or Inf in `actual` fails unless
/// `expected` has the same value there. Reports the first failing index and the worst.
#[track_caller]
pub fn assert_close(what: &str, actual: &[f64], expected: &[f64], atol: f64, rtol: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: length {} vs expected {}", actual.len(), expected.len());
    let mut first = None;
    let mut fails = 0;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let ok = if a.is_finite() && e.is_finite() {
            (a - e).abs() <= atol + rtol * e.abs()
        } else {
            a == e || (a.is_nan() && e.is_nan())
        };
        if !ok {
            fails += 1;
            first.get_or_insert((i, a, e));
        }
    }
    if let Some((i, a, e)) = first {
        panic!("{what}: {fails}/{} elements out of tolerance (atol {atol}, rtol {rtol}); first at {i}: got {a}, want {e}", actual.len());
    }
}

/// A seeded generator.
pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// `n` uniform values in `[-s, s]`.
pub fn uniform(rng: &mut impl Rng, n: usize, s: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-s..=s)).collect()
}
