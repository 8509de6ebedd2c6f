//! The deployment path: weights saved from PyTorch (`safetensors.torch.save_file(
//! lstm.state_dict(), path)`, PyTorch's own names, optionally under a module prefix such as
//! `rnn.`) loaded and run on the GPU, with the CPU reference beside it.
//!
//! ```sh
//! cargo run --release --example pytorch_weights -- [FILE.safetensors] [PREFIX]
//! ```
//! Without arguments it loads the parameters of a golden case (an `nn.LSTM` with projection,
//! 2 layers, bidirectional) and its input; the mode and sizes come from the file's metadata
//! (or from the tensor shapes, given the mode, when a file has none).

use wgpu_rnn::case::tolerance::{FORWARD_ATOL, FORWARD_RTOL};
use wgpu_rnn::case::worst_ratio;
use wgpu_rnn::cpu::{self, Pass};
use wgpu_rnn::gpu::{Context, GpuRnn};
use wgpu_rnn::io::TensorFile;
use wgpu_rnn::{PackedSequence, Weights};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().cloned().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/lstm_proj.safetensors").into());
    let prefix = args.get(1).cloned().unwrap_or_default();
    let file = TensorFile::read(&path)?;
    let w = Weights::<f32>::from_file(&file, &prefix, None)?;
    let cfg = &w.config;
    println!("{path}: {cfg:?}");

    // The file's own input when it has one (golden cases do), else a ramp of 7 steps.
    let (t, b, data, lengths) = match file.float("input") {
        Ok(x) => {
            let lengths = file.int("lengths")?.data.iter().map(|&l| l as usize).collect();
            (x.shape[0], x.shape[1], x.data.iter().map(|&v| v as f32).collect::<Vec<f32>>(), lengths)
        }
        Err(_) => (7, 2, (0..7 * 2 * cfg.input_size).map(|i| (i as f32 * 0.01).sin()).collect(), vec![7, 5]),
    };
    let x = PackedSequence::from_padded(&data, [t, b, cfg.input_size], false, &lengths)?;

    let ctx = Context::new()?;
    println!("adapter: {}", ctx.describe());
    let rnn = GpuRnn::new(&ctx, &w)?;
    let (gpu, _) = rnn.forward(&x, &[], Pass::Inference)?;
    let (cpu, _) = cpu::forward(&w, &x, &[], Pass::Inference)?;
    // GPU against CPU within the golden forward tolerances (f32 on both; named constants),
    // NaN-aware: the run fails otherwise.
    let mut worst = worst_ratio(&gpu.output.data, &cpu.output.data, FORWARD_ATOL, FORWARD_RTOL);
    for (name, (g, c)) in cfg.states().iter().zip(gpu.states.iter().zip(&cpu.states)) {
        let r = worst_ratio(&g.data, &c.data, FORWARD_ATOL, FORWARD_RTOL);
        println!("{}_n {:?}: worst |GPU - CPU| {r:.3} of the tolerance", name.name, g.shape);
        worst = worst.max(r);
    }
    let h_n = &gpu.states[0];
    for (s, row) in h_n.data.chunks(h_n.shape[2]).take(4).enumerate() {
        println!("  h_n, state {s}: {:?}", &row[..row.len().min(4)]);
    }
    println!("output and states: worst |GPU - CPU| {worst:.3} of the golden forward tolerance");
    if !(worst <= 1.0) || gpu.states.len() != cpu.states.len() {
        return Err("GPU and CPU disagree".into());
    }
    Ok(())
}
