//! The copying-memory problem of Arjovsky, Shah & Bengio (2016), "Unitary evolution recurrent
//! neural networks", section 4.1: a sequence of 10 symbols drawn from an alphabet of 8, then
//! T - 1 blanks, a delimiter, and 10 more blanks; during those last 10 steps the network
//! must output the 10 symbols in order, and blanks before. The loss is the cross-entropy
//! averaged over all T + 20 steps. A network that outputs blanks and then guesses uniformly
//! gets `10 log(8) / (T + 20)`, the baseline; going below it takes remembering the symbols
//! for T steps. The paper: the uRNN solves it, LSTM and the plain RNN stall at the baseline
//! for long T.
//!
//! Each cell (`--cells`, default uRNN, LSTM and RNN_TANH) trains with the same budget (steps,
//! batch, Adam learning rate, clipping, seed, batches and test set), with the paper's sizes
//! (about 6,500 recurrent parameters each: uRNN 128 complex units, H 256; LSTM 40; RNN 80;
//! `--hidden` sets one size for all). The test cross-entropy of each is printed as a table
//! and plotted (`<out>/copy_memory.png`: test cross-entropy over the steps, one curve per
//! cell, and the baseline).
//!
//! The recurrent layer runs on the engine `--device` names: the CPU engine (the default: on
//! a machine without a GPU it is the faster one) or the GPU (`GpuRnn`: forward and backward
//! through the one engine's plans; the weights written to its buffer after each update). The
//! output layer, the loss and Adam run on the CPU (`cpu::train`).
//!
//! ```text
//! cargo run --release --example copy_memory
//! cargo run --release --example copy_memory -- --t 500 --cells urnn --steps 3000
//! cargo run --release --example copy_memory -- --cells urnn,lstm,gru,scrn --device gpu
//! ```

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use common::plot::{write_png, Panel, Rgb, Series};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;
use wgpu_rnn::cpu::train::{adam_step, clip_scale, linear_backward, linear_forward, softmax_cross_entropy, AdamState};
use wgpu_rnn::cpu::{self, Pass};
use wgpu_rnn::gpu::{flat_weights, Context, GpuRnn, GpuTape};
use wgpu_rnn::{Error, Mode, PackedSequence, Result, RnnConfig, Weights};

#[derive(Parser, Debug)]
#[command(about = "The copying-memory problem: uRNN, LSTM and RNN (or any cells) with the same budget")]
struct Args {
    /// Cells to train, comma-separated registry names in any case (URNN, LSTM, RNN_TANH, ...;
    /// aliases lstm, gru, rnn = RNN_TANH), or `all`.
    #[arg(long, default_value = "urnn,lstm,rnn", value_delimiter = ',')]
    cells: Vec<String>,
    /// T: the blanks between the symbols and the delimiter, plus one.
    #[arg(long, default_value_t = 100)]
    t: usize,
    /// One hidden size for every cell (default: the paper's, uRNN 256, LSTM 40, RNN 80, 64
    /// for other cells).
    #[arg(long)]
    hidden: Option<usize>,
    #[arg(long, default_value_t = 20)]
    batch: usize,
    /// Training steps (a fresh batch each).
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Adam's learning rate (the paper: RMSProp, 1e-3).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Gradient clipping by global norm.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Test sequences (a fixed set, the same for every cell).
    #[arg(long, default_value_t = 200)]
    test: usize,
    /// Steps between evaluations on the test set.
    #[arg(long, default_value_t = 100)]
    log_every: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the recurrent layer runs: cpu or gpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Where the plot goes.
    #[arg(long, default_value = "target/copy_memory")]
    out: PathBuf,
    /// Fail unless every cell's last test cross-entropy is below its first by at least this
    /// fraction of it (CI's smoke run). 0: no check.
    #[arg(long, default_value_t = 0.0)]
    min_drop: f64,
}

/// Symbols: 0 blank, 1..=8 the alphabet, 9 the delimiter. Output classes: blank and the 8.
const SYMBOLS: usize = 10;
const CLASSES: usize = 9;
const COPIED: usize = 10;

/// The paper's sizes (about 6,500 recurrent parameters each), or `--hidden`.
fn hidden_size(mode: Mode, a: &Args) -> usize {
    a.hidden.unwrap_or(match mode {
        Mode::Urnn => 256,
        Mode::Lstm => 40,
        Mode::RnnTanh => 80,
        _ => 64,
    })
}

/// A batch, time-major: one-hot inputs `[L, B, 10]` and the target class of every row
/// (`t * B + b`), L = T + 20.
fn batch(rng: &mut impl Rng, t: usize, b: usize) -> (Vec<f32>, Vec<u32>) {
    let len = t + 2 * COPIED;
    let mut x = vec![0.0f32; len * b * SYMBOLS];
    let mut y = vec![0u32; len * b];
    for j in 0..b {
        let data: Vec<usize> = (0..COPIED).map(|_| rng.random_range(1..=8)).collect();
        for s in 0..len {
            let sym = if s < COPIED {
                data[s]
            } else if s == t + COPIED - 1 {
                9
            } else {
                0
            };
            x[(s * b + j) * SYMBOLS + sym] = 1.0;
            if s >= t + COPIED {
                y[s * b + j] = data[s - t - COPIED] as u32;
            }
        }
    }
    (x, y)
}

/// The recurrent layer on the CPU engine or the GPU.
enum Engine {
    Cpu,
    Gpu(GpuRnn),
}

enum Tape {
    Cpu(cpu::Tape<f32>),
    Gpu(GpuTape),
}

impl Engine {
    fn forward(&self, w: &Weights<f32>, x: &PackedSequence<f32>, pass: Pass) -> Result<(Vec<f32>, Option<Tape>)> {
        Ok(match self {
            Engine::Cpu => {
                let (out, tape) = cpu::forward(w, x, &[], pass)?;
                (out.output.data, tape.map(Tape::Cpu))
            }
            Engine::Gpu(rnn) => {
                let (out, tape) = rnn.forward(x, &[], pass)?;
                (out.output.data, tape.map(Tape::Gpu))
            }
        })
    }

    fn backward(&self, w: &Weights<f32>, tape: &Tape, grad_output: &[f32]) -> Result<Vec<f32>> {
        let g = match (self, tape) {
            (Engine::Cpu, Tape::Cpu(t)) => cpu::backward(w, t, grad_output, &[])?,
            (Engine::Gpu(rnn), Tape::Gpu(t)) => rnn.backward(t, grad_output, &[])?,
            _ => return Err(Error::InvalidConfig("a tape of the other engine".into())),
        };
        Ok(g.params.to_flat())
    }

    /// New weights for the next step (the GPU's buffer rewritten in place).
    fn set_weights(&self, w: &Weights<f32>) {
        if let Engine::Gpu(rnn) = self {
            rnn.context().queue.write_buffer(rnn.weights_buffer(), 0, bytemuck::cast_slice(&flat_weights(w)));
        }
    }
}

/// One cell's run: its test cross-entropy after each logged step (step 0 first).
struct Outcome {
    mode: Mode,
    hidden: usize,
    params: usize,
    curve: Vec<(f64, f64)>,
    accuracy: f64,
    diverged: Option<usize>,
    secs: f64,
}

type Batch = (Vec<f32>, Vec<u32>);

fn train(ctx: Option<&std::sync::Arc<Context>>, mode: Mode, a: &Args, test: &[Batch]) -> Result<Outcome> {
    let h = hidden_size(mode, a);
    let mut cfg = RnnConfig::new(mode, SYMBOLS, h);
    if cfg.validate().is_err() {
        cfg = RnnConfig::new(mode, h, h); // SRU, MUT1 need input == hidden: one-hots padded
    }
    cfg.validate()?;
    let width = cfg.input_size;
    let mut w = Weights::<f32>::init_uniform(&cfg, a.seed)?;
    let engine = match ctx {
        Some(ctx) => Engine::Gpu(GpuRnn::new(ctx, &w)?),
        None => Engine::Cpu,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed + 7);
    let bound = 1.0 / (h as f32).sqrt();
    let mut head: Vec<f32> = (0..CLASSES * h + CLASSES).map(|_| rng.random_range(-bound..bound)).collect();
    let (mut adam_rnn, mut adam_head) = (AdamState::default(), AdamState::default());
    let len = a.t + 2 * COPIED;
    let pack = |x: &[f32], b: usize| -> Result<PackedSequence<f32>> {
        PackedSequence::from_padded(&common::pad_rows(x, SYMBOLS, width), [len, b, width], false, &vec![len; b])
    };
    // Mean cross-entropy and accuracy on the last 10 steps over the test set.
    let evaluate = |w: &Weights<f32>, head: &[f32]| -> Result<(f64, f64)> {
        let (mut loss, mut correct, mut rows) = (0.0, 0usize, 0usize);
        for (x, y) in test {
            let b = y.len() / len;
            let (out, _) = engine.forward(w, &pack(x, b)?, Pass::Inference)?;
            let logits = linear_forward(&out, head, y.len(), h, CLASSES)?;
            loss += softmax_cross_entropy(&logits, CLASSES, y)?.loss as f64;
            let tail = (len - COPIED) * b * CLASSES;
            let lt = softmax_cross_entropy(&logits[tail..], CLASSES, &y[(len - COPIED) * b..])?;
            correct += lt.correct;
            rows += COPIED * b;
        }
        Ok((loss / test.len() as f64, correct as f64 / rows as f64))
    };
    let mut out = Outcome { mode, hidden: h, params: w.num_scalars() + head.len(), curve: Vec::new(), accuracy: 0.0, diverged: None, secs: 0.0 };
    let name = mode.as_str();
    let start = Instant::now();
    let (first, acc) = evaluate(&w, &head)?;
    println!("{name:>16} step     0: test cross-entropy {first:.4}, copied symbols {:.1}% (before training)", 100.0 * acc);
    out.curve.push((0.0, first));
    let mut data_rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    for step in 1..=a.steps {
        let (x, y) = batch(&mut data_rng, a.t, a.batch);
        let (hs, tape) = engine.forward(&w, &pack(&x, a.batch)?, Pass::Training)?;
        let logits = linear_forward(&hs, &head, y.len(), h, CLASSES)?;
        let loss = softmax_cross_entropy(&logits, CLASSES, &y)?;
        if !loss.loss.is_finite() {
            println!("{name:>16} step {step:>5}: non-finite loss, stopped");
            out.diverged = Some(step);
            break;
        }
        let (g_head, g_hs) = linear_backward(&hs, &head, &loss.grad, y.len(), h, CLASSES)?;
        let g_rnn = engine.backward(&w, &tape.expect("training forward keeps a tape"), &g_hs)?;
        let (_, scale) = clip_scale(&[&g_rnn, &g_head], Some(a.clip));
        let mut flat = w.to_flat();
        adam_step(&mut flat, &g_rnn, &mut adam_rnn, step as u32, scale, a.lr, 0.9, 0.999, 1e-8)?;
        adam_step(&mut head, &g_head, &mut adam_head, step as u32, scale, a.lr, 0.9, 0.999, 1e-8)?;
        w = Weights::from_flat(&cfg, &flat)?;
        engine.set_weights(&w);
        if step % a.log_every == 0 || step == a.steps {
            let (ce, acc) = evaluate(&w, &head)?;
            out.curve.push((step as f64, ce));
            out.accuracy = acc;
            println!("{name:>16} step {step:>5}: train {:.4}, test cross-entropy {ce:.4}, copied symbols {:.1}% ({:.0} s)", loss.loss, 100.0 * acc, start.elapsed().as_secs_f64());
        }
    }
    out.secs = start.elapsed().as_secs_f64();
    Ok(out)
}

const COLORS: [Rgb; 8] = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75], [227, 119, 194], [127, 127, 127]];

fn main() -> Result<()> {
    let a = Args::parse();
    if a.t < 1 || a.batch == 0 || a.test < a.batch || a.steps == 0 || a.log_every == 0 {
        return Err(Error::InvalidConfig("need t >= 1, batch > 0, test >= batch, steps > 0, log-every > 0".into()));
    }
    let cells = common::parse_cells(&a.cells)?;
    let ctx = match a.device.as_str() {
        "cpu" => None,
        "gpu" => Some(Context::new()?),
        d => return Err(Error::InvalidConfig(format!("unknown device {d:?}: cpu or gpu"))),
    };
    match &ctx {
        Some(c) => println!("recurrent layer on {}", c.describe()),
        None => println!("recurrent layer on the CPU engine"),
    }
    let baseline = COPIED as f64 * 8f64.ln() / (a.t + 2 * COPIED) as f64;
    println!(
        "copying memory: T {} (sequences of {}), batch {}, {} steps, Adam lr {}, clip {}, {} test sequences, seed {}; baseline {baseline:.4}",
        a.t,
        a.t + 2 * COPIED,
        a.batch,
        a.steps,
        a.lr,
        a.clip,
        a.test / a.batch * a.batch,
        a.seed
    );
    let mut test_rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ 0x7e57);
    let test: Vec<Batch> = (0..a.test / a.batch).map(|_| batch(&mut test_rng, a.t, a.batch)).collect();
    let total = Instant::now();
    let mut results = Vec::new();
    for &mode in &cells {
        results.push(train(ctx.as_ref(), mode, &a, &test)?);
    }
    println!("\nresults (T {}, {} steps of batch {}, {}; baseline 10 ln 8 / (T + 20) = {baseline:.4}):\n", a.t, a.steps, a.batch, if ctx.is_some() { "GPU" } else { "CPU engine" });
    println!("| cell | hidden | parameters | test cross-entropy | / baseline | copied symbols | time |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &results {
        let ce = r.curve.last().map_or(f64::NAN, |p| p.1);
        let shown = match r.diverged {
            Some(step) => format!("diverged at step {step}"),
            None => format!("{ce:.4}"),
        };
        println!("| {} | {} | {} | {shown} | {:.3} | {:.1}% | {:.0} s |", r.mode, r.hidden, r.params, ce / baseline, 100.0 * r.accuracy, r.secs);
    }
    println!("\ntotal {:.1} min", total.elapsed().as_secs_f64() / 60.0);
    std::fs::create_dir_all(&a.out)?;
    let path = a.out.join("copy_memory.png");
    let line = [(0.0, baseline), (a.steps as f64, baseline)];
    let mut series: Vec<Series<'_>> = results.iter().enumerate().map(|(k, r)| Series { label: r.mode.as_str(), color: COLORS[k % COLORS.len()], points: &r.curve }).collect();
    series.push(Series { label: "BASELINE", color: [0, 0, 0], points: &line });
    let title = format!("COPYING MEMORY T {}: TEST CROSS-ENTROPY", a.t);
    write_png(&path, &[Panel { title: &title, x_label: "STEP", series }])?;
    println!("plot: {}", path.display());
    if a.min_drop > 0.0 {
        common::check_min_drop(results.iter().map(|r| (r.mode.to_string(), &r.curve[..], r.diverged.is_some())), a.min_drop, "test cross-entropy")?;
    }
    Ok(())
}
