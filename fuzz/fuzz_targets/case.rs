//! cargo-fuzz target `case`: its body is `fuzz/bodies/case.rs`, which the stable test suite
//! also runs (tests/it/fuzz_replay.rs replays tests/fuzz_regressions through it), so the
//! target cannot stop compiling unnoticed.
#![no_main]

#[path = "../bodies/case.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
