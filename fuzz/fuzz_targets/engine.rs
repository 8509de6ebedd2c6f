//! cargo-fuzz target `engine`: its body is `fuzz/bodies/engine.rs`, which the stable test
//! suite also runs (tests/it/fuzz_replay.rs), so the target cannot stop compiling unnoticed.
//! Needs a Vulkan adapter (lavapipe will do); without one every input returns at once.
#![no_main]

#[path = "../bodies/engine.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
