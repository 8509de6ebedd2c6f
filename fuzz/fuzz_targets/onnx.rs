//! cargo-fuzz target `onnx`: its body is `fuzz/bodies/onnx.rs`, which the stable test suite
//! also runs (tests/it/fuzz_replay.rs replays tests/fuzz_regressions through it and feeds it
//! mutated conformance cases), so the target cannot stop compiling unnoticed.
#![no_main]

#[path = "../bodies/onnx.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
