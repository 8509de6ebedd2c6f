//! The `case` target's body (fuzz/fuzz_targets/case.rs; replayed by the stable tests,
//! tests/it/fuzz_replay.rs). Case files of any registered cell (the golden format,
//! `src/case.rs`): arbitrary bytes -> `TensorFile` ->
//! `Case::from_file` (f32 and f64) -> when small, `run_cpu` forward and backward and
//! `case::compare` against the file itself. `Ok` or a typed `Err`, never a panic.
use wgpu_rnn::case::{compare, Case};
use wgpu_rnn::cpu::Float;
use wgpu_rnn::io::TensorFile;

/// Cases with more parameters or padded input/output elements than this are parsed, not run.
const MAX_ELEMS: usize = 100_000;

fn small<T: Float>(c: &Case<T>) -> bool {
    let cfg = c.config();
    let width = cfg.input_size.max(cfg.output_size());
    let padded = c.steps.checked_mul(c.batch).and_then(|n| n.checked_mul(width));
    c.weights.num_scalars() <= MAX_ELEMS && cfg.num_layers <= 8 && padded.is_some_and(|n| n <= MAX_ELEMS)
}

fn run_as<T: Float>(file: &TensorFile) {
    let Ok(case) = Case::<T>::from_file(file) else { return };
    if !small(&case) {
        return;
    }
    for backward in [false, true] {
        if let Ok(got) = case.run_cpu(backward) {
            let out = got.float("output").expect("a run writes output");
            assert_eq!(out.shape, vec![case.steps, case.batch, case.config().output_size()]);
            if backward {
                assert!(got.float("grad_input").is_ok(), "backward run without grad_input");
            }
            let _ = compare(&got, file, backward);
        }
    }
}

/// The target's body: raw bytes as a case file.
pub fn run(data: &[u8]) {
    let Ok(file) = TensorFile::from_bytes(data) else { return };
    run_as::<f32>(&file);
    run_as::<f64>(&file);
}
