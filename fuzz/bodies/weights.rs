//! The `weights` target's body (fuzz/fuzz_targets/weights.rs; replayed by the stable tests,
//! tests/it/fuzz_replay.rs). Weight files: arbitrary bytes -> `TensorFile::from_bytes` ->
//! `Weights::from_file` without
//! and with a caller's hint -> when the weights load and are small, a CPU forward and backward
//! on a tiny packed batch. Every step must return `Ok` or a typed `Err`, never panic or abort;
//! what does load must be self-consistent (the checks below assert it).
use wgpu_rnn::cpu::{self, Pass};
use wgpu_rnn::io::TensorFile;
use wgpu_rnn::{Mode, PackedSequence, RnnConfig, Weights};

/// Weights larger than this are loaded but not run (keeps an input well under a millisecond).
const MAX_PARAMS: usize = 100_000;
/// The tiny batch every loaded stack runs: lengths in the caller's order (N = 6 rows).
const LENGTHS: [usize; 3] = [3, 1, 2];

/// A hint for `mode` read off the tensors' shapes the way a caller without metadata would.
fn hint_from_shapes(file: &TensorFile, mode: Mode) -> Option<RnnConfig> {
    let shape = |n: &str| file.tensors.get(n).map(|v| v.shape().to_vec());
    let w = shape("weight_ih_l0")?;
    if w.len() != 2 || w[0] % mode.gates() != 0 {
        return None;
    }
    let layers = (0..64).take_while(|k| file.tensors.contains_key(&format!("weight_ih_l{k}"))).count();
    Some(RnnConfig {
        num_layers: layers,
        bidirectional: file.tensors.contains_key("weight_ih_l0_reverse"),
        bias: file.tensors.contains_key("bias_ih_l0"),
        proj_size: shape("weight_hr_l0").and_then(|s| s.first().copied()).unwrap_or(0),
        ..RnnConfig::new(mode, w[1], w[0] / mode.gates())
    })
}

fn run_small(w: &Weights<f32>) {
    let cfg = &w.config;
    if w.num_scalars() > MAX_PARAMS || cfg.input_size > MAX_PARAMS || cfg.num_layers > 8 {
        return;
    }
    let (i, out) = (cfg.input_size, cfg.output_size());
    let t = LENGTHS.iter().copied().max().unwrap();
    let b = LENGTHS.len();
    let x: Vec<f32> = (0..t * b * i).map(|k| ((k as f32) * 0.37).sin()).collect();
    let packed = PackedSequence::from_padded(&x, [t, b, i], false, &LENGTHS).expect("a valid tiny batch packs");
    let n = packed.rows();
    let res = cpu::forward(w, &packed, &[], Pass::Training);
    let Ok((fwd, tape)) = res else { return };
    assert_eq!(fwd.output.data.len(), n * out, "output rows x width");
    let states = cfg.states();
    assert_eq!(fwd.states.len(), states.len(), "one final state per state of the cell");
    for (t, st) in fwd.states.iter().zip(&states) {
        assert_eq!(t.shape, cfg.state_shape(st, b), "{}_n", st.name);
    }
    let tape = tape.expect("training forward keeps a tape");
    let go = vec![1.0f32; n * out];
    if let Ok(g) = cpu::backward(w, &tape, &go, &[]) {
        assert_eq!(g.input.data.len(), n * i, "input gradient rows x width");
        assert_eq!(g.params.num_scalars(), w.num_scalars(), "one gradient per parameter");
    }
    // A wrong-length grad_output is a typed error.
    assert!(cpu::backward(w, &tape, &go[1..], &[]).is_err(), "short grad_output accepted");
    // f64 inference on the same weights.
    let w64 = w.cast::<f64>();
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let p64 = PackedSequence::from_padded(&x64, [t, b, i], false, &LENGTHS).expect("packs");
    let _ = cpu::forward(&w64, &p64, &[], Pass::Inference);
}

/// The target's body: raw bytes as a weights file (any registered cell with metadata; PyTorch's
/// four from their shapes without).
pub fn run(data: &[u8]) {
    let Ok(file) = TensorFile::from_bytes(data) else { return };
    match Weights::<f32>::from_file(&file, "", None) {
        Ok(w) => {
            // The file's own config as a hint must load the same weights ...
            let again = Weights::<f32>::from_file(&file, "", Some(&w.config)).expect("own config as hint");
            assert!(again.config == w.config, "hint changed the config");
            // ... and a hint that disagrees with the tensors must be refused.
            let mut wrong = w.config.clone();
            wrong.hidden_size += 1;
            assert!(Weights::<f32>::from_file(&file, "", Some(&wrong)).is_err(), "disagreeing hint accepted");
            run_small(&w);
        }
        Err(_) => {
            for mode in Mode::PYTORCH {
                if let Some(h) = hint_from_shapes(&file, mode) {
                    if let Ok(w) = Weights::<f32>::from_file(&file, "", Some(&h)) {
                        assert!(w.config == h, "hinted load returned another config");
                        run_small(&w);
                    }
                }
            }
        }
    }
    // Under a prefix nothing is found: always an error.
    assert!(Weights::<f32>::from_file(&file, "no_such_prefix.", None).is_err());
}
