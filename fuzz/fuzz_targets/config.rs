//! cargo-fuzz target `config`: its body is `fuzz/bodies/config.rs`, which the stable test suite
//! also runs (tests/it/fuzz_replay.rs replays tests/fuzz_regressions through it), so the
//! target cannot stop compiling unnoticed.
#![no_main]

#[path = "../bodies/config.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
