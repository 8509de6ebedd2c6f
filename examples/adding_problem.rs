//! Hochreiter and Schmidhuber's adding problem: each sequence holds T random numbers in
//! [0, 1] and a second channel marking two positions (one in each half); the target is the
//! sum of the two marked numbers. Predicting the mean (1.0) gives MSE 1/6 = 0.167, the
//! variance baseline; getting below it needs information carried across up to T steps.
//! An LSTM learns it at T = 100, a vanilla RNN of the same size does not.
//!
//! The notebook's comparison: every registered cell (`--cells`, default all of them) is
//! trained with the same budget (steps, batch, hidden size, Adam learning rate, clipping,
//! seed, batches, test set), then the test MSE of each is printed as a table and plotted
//! (`<out>/adding_problem.png`: log10 test MSE over the steps, one curve per cell, and the
//! variance baseline).
//!
//! Everything trains on the GPU through the engine APIs: per step one encoder holds the
//! recurrent forward, the head (a linear layer on the last step's output), the loss, the
//! recurrent backward and the Adam update; only the loss is read back (every `--log-every`
//! steps). Every cell runs through the one engine plan (`gpu::Plan`).
//!
//! - SRU and MUT1 need input size == hidden size: their two input features are padded with
//!   zeros to the hidden size (no input layer; the zero columns' weights get zero gradients).
//! - Weights: PyTorch's uniform init (`Weights::init_uniform`, the same seed for every cell);
//!   for the LSTM family the forget-gate bias is then set to 1 in total (LSTM, LSTM_PEEPHOLE,
//!   LSTM_CIFG: 0.5 in each of `bias_ih` and `bias_hh`; LSTM_LAYERNORM: 1 in its `bias`).
//! - A cell whose loss becomes non-finite is reported as diverged and the others go on.
//!
//! ```text
//! cargo run --release --example adding_problem
//! cargo run --release --example adding_problem -- --cells lstm,rnn --steps 2000
//! cargo run --release --example adding_problem -- --cells lstm --steps 500 --t 50
//! ```

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use common::plot::{write_png, Panel, Rgb, Series};
use common::{forget_bias, Metrics};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;
use wgpu_rnn::cpu::Pass;
use wgpu_rnn::gpu::train::{LinearShape, OpBuilder, Optimizer, OptimizerKind, ParamGroup, Program};
use wgpu_rnn::gpu::{flat_weights, storage, upload, BackwardBuffers, Context, ForwardBuffers, Plan, SeqLayout, StepStrategy, TrackedBuffer};
use wgpu_rnn::{Error, Mode, PackedSequence, Result, RnnConfig, Weights};

#[derive(Parser, Debug)]
#[command(about = "The adding problem: every registered cell with the same budget, trained on the GPU")]
struct Args {
    /// Cells to train, comma-separated registry names in any case (RNN_TANH, LSTM, SRU, ...;
    /// aliases lstm, gru, rnn = RNN_TANH), or `all` (the default: every registered cell).
    #[arg(long, default_value = "all", value_delimiter = ',')]
    cells: Vec<String>,
    /// Sequence length.
    #[arg(long, default_value_t = 100)]
    t: usize,
    #[arg(long, default_value_t = 32)]
    hidden: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Training steps (one fresh batch each). 1,000 is where LSTM has just left the plateau
    /// (test MSE 0.005; 0.0005 after 2,000); all thirteen cells took 48 min on a shared
    /// 2-core lavapipe machine (README).
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    #[arg(long, default_value_t = 1e-2)]
    lr: f32,
    /// Gradient clipping by global norm.
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    /// Test sequences (a fixed set, the same for every cell).
    #[arg(long, default_value_t = 1024)]
    test: usize,
    /// Steps between readbacks of the loss (and evaluations on the test set).
    #[arg(long, default_value_t = 100)]
    log_every: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Recurrent step strategy: auto, per-step or single (runs of steps in one dispatch).
    #[arg(long, default_value = "auto")]
    strategy: String,
    /// Where the plot goes.
    #[arg(long, default_value = "target/adding_problem")]
    out: PathBuf,
    /// Fail unless every cell's last test MSE is below its first (before training) by at
    /// least this fraction of it (CI's smoke run: the loss must fall). 0: no check.
    #[arg(long, default_value_t = 0.0)]
    min_drop: f64,
}

/// A batch in PyTorch's time-major layout `[T, B, 2]` with its targets.
fn batch(rng: &mut impl Rng, t: usize, b: usize) -> (Vec<f32>, Vec<f32>) {
    let mut x = vec![0.0f32; t * b * 2];
    let mut y = vec![0.0f32; b];
    for j in 0..b {
        let first = rng.random_range(0..t / 2);
        let second = rng.random_range(t / 2..t);
        for s in 0..t {
            let v: f32 = rng.random();
            x[(s * b + j) * 2] = v;
            if s == first || s == second {
                x[(s * b + j) * 2 + 1] = 1.0;
                y[j] += v;
            }
        }
    }
    (x, y)
}

/// The recurrent layer: one engine plan (`gpu::Plan`) for every cell, training and
/// evaluation, over buffers of ours.
struct Layer {
    weights: TrackedBuffer,
    train: Plan,
    eval: Plan,
    /// Each state's final value (unused: the head reads the last step's output rows).
    states_n: Vec<TrackedBuffer>,
    grad_states0: Vec<TrackedBuffer>,
    /// Zero except the last step's rows, which the head's gradient fills.
    grad_output: TrackedBuffer,
}

struct Trainer {
    ctx: std::sync::Arc<Context>,
    layer: Layer,
    /// Input features per row: 2, or the hidden size for cells that need input == hidden.
    width: usize,
    x: TrackedBuffer,
    y: TrackedBuffer,
    output: TrackedBuffer,
    grad_weights: TrackedBuffer,
    /// The head's input (the last step's output rows) and its gradient.
    _last: TrackedBuffer,
    _grad_last: TrackedBuffer,
    _head: TrackedBuffer,
    metrics: Metrics,
    /// Head, loss and the head's backward (with the copies between the output and the head).
    mid: Program,
    post: Program,
    eval: Program,
    _opt: Optimizer,
    params: usize,
}

impl Trainer {
    fn new(ctx: &std::sync::Arc<Context>, mode: Mode, a: &Args) -> Result<Self> {
        let (t, b, h) = (a.t, a.batch, a.hidden);
        let mut cfg = RnnConfig::new(mode, 2, h);
        if cfg.validate().is_err() {
            cfg = RnnConfig::new(mode, h, h); // SRU, MUT1: the features padded with zeros
        }
        cfg.validate()?;
        let width = cfg.input_size;
        let mut w = Weights::<f32>::init_uniform(&cfg, a.seed)?;
        forget_bias(&mut w);
        let lengths = vec![t; b];
        let probe = PackedSequence::from_padded(&vec![0.0f32; t * b * width], [t, b, width], false, &lengths)?;
        let layout = SeqLayout::of(&probe)?;
        let n = t * b;
        let hs = LinearShape { rows: b, input: h, output: 1 };
        let last_off = (t - 1) * b * h;
        let x = storage(ctx, "x", n * width)?;
        let y = storage(ctx, "y", b)?;
        let output = storage(ctx, "output", n * h)?;
        let last = storage(ctx, "head input", b * h)?;
        let grad_last = storage(ctx, "grad head input", b * h)?;
        let strategy = match a.strategy.as_str() {
            "auto" => StepStrategy::Auto,
            "per-step" => StepStrategy::PerStep,
            "single" => StepStrategy::SingleDispatch,
            s => return Err(Error::InvalidConfig(format!("unknown strategy {s:?}"))),
        };
        let train = Plan::with_strategy(ctx, &cfg, &layout, Pass::Training, strategy)?;
        let eval = Plan::with_strategy(ctx, &cfg, &layout, Pass::Inference, strategy)?;
        let weight_elems = train.weight_elems();
        let per_state = |label: &str| -> Result<Vec<TrackedBuffer>> { cfg.state_elems(b).into_iter().map(|e| storage(ctx, label, e)).collect() };
        let layer = Layer {
            weights: upload(ctx, "weights", &flat_weights(&w))?,
            train,
            eval,
            states_n: per_state("final state")?,
            grad_states0: per_state("initial state gradient")?,
            grad_output: storage(ctx, "grad output", n * h)?,
        };
        let grad_weights = storage(ctx, "grad weights", weight_elems)?;
        let bound = 1.0 / (h as f32).sqrt();
        let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed + 7);
        let head_init: Vec<f32> = (0..hs.param_elems()).map(|_| rng.random_range(-bound..bound)).collect();
        let head = upload(ctx, "head", &head_init)?;
        let head_grad = storage(ctx, "head grad", hs.param_elems())?;
        let pred = storage(ctx, "pred", b)?;
        let dpred = storage(ctx, "grad pred", b)?;
        let metrics = Metrics::new(ctx, 2)?;
        let weights: &wgpu::Buffer = &layer.weights;
        let opt = Optimizer::new(
            ctx,
            OptimizerKind::adam(a.lr),
            Some(a.clip),
            &[
                ParamGroup { params: weights, grads: &grad_weights, elems: weight_elems },
                ParamGroup { params: &head, grads: &head_grad, elems: hs.param_elems() },
            ],
        )?;
        // The last step's output rows (every cell's h there, whichever its states) are copied
        // out to the head, and their gradient in.
        let mut mid = OpBuilder::new(ctx);
        let mut eval = OpBuilder::new(ctx);
        mid.blocks_to_rows(&output, last_off, 1, b, h, &last)?;
        eval.blocks_to_rows(&output, last_off, 1, b, h, &last)?;
        mid.linear_forward(hs, &last, &head, &pred)?;
        mid.mse(b, &pred, &y, &dpred, &metrics.buf, metrics.offset(0))?;
        mid.linear_backward(hs, &last, &head, &dpred, &head_grad, Some(&grad_last))?;
        mid.rows_to_blocks(&grad_last, 1, b, h, &layer.grad_output, last_off)?;
        eval.linear_forward(hs, &last, &head, &pred)?;
        eval.mse(b, &pred, &y, &dpred, &metrics.buf, metrics.offset(1))?;
        let mut post = OpBuilder::new(ctx);
        opt.record_step(&mut post)?;
        Ok(Trainer {
            ctx: ctx.clone(),
            layer,
            width,
            x,
            y,
            output,
            grad_weights,
            _last: last,
            _grad_last: grad_last,
            _head: head,
            metrics,
            mid: mid.build()?,
            post: post.build()?,
            eval: eval.build()?,
            _opt: opt,
            params: weight_elems + hs.param_elems(),
        })
    }

    fn upload(&self, x: &[f32], y: &[f32]) {
        self.ctx.queue.write_buffer(&self.x, 0, bytemuck::cast_slice(&common::pad_rows(x, 2, self.width)));
        self.ctx.queue.write_buffer(&self.y, 0, bytemuck::cast_slice(y));
    }

    /// Records the recurrent forward of `plan` (the training or evaluation plan) from zero
    /// initial states.
    fn record_forward(&self, enc: &mut wgpu::CommandEncoder, plan: &Plan) -> Result<()> {
        let l = &self.layer;
        let states_n: Vec<wgpu::BufferSlice<'_>> = l.states_n.iter().map(|b| b.slice(..)).collect();
        plan.record_forward(enc, &ForwardBuffers { weights: l.weights.slice(..), input: self.x.slice(..), output: self.output.slice(..), states0: &[], states_n: &states_n, counter: None })
    }

    /// One training step: forward, head, loss, backward, Adam. One submit, no readback.
    fn step(&self, x: &[f32], y: &[f32]) -> Result<()> {
        self.upload(x, y);
        let l = &self.layer;
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        self.record_forward(&mut enc, &l.train)?;
        self.mid.record(&mut enc);
        let grad_states0: Vec<wgpu::BufferSlice<'_>> = l.grad_states0.iter().map(|b| b.slice(..)).collect();
        l.train.record_backward(
            &mut enc,
            &BackwardBuffers {
                weights: l.weights.slice(..),
                input: self.x.slice(..),
                output: self.output.slice(..),
                states0: &[],
                grad_output: l.grad_output.slice(..),
                grad_states_n: &[],
                // The data needs no gradient: the backward leaves out dG W_ih.
                grad_input: None,
                grad_states0: &grad_states0,
                grad_weights: self.grad_weights.slice(..),
                counter: None,
            },
        )?;
        self.post.record(&mut enc);
        self.ctx.queue.submit([enc.finish()]);
        Ok(())
    }

    /// Forward and loss only, into the evaluation metric block.
    fn eval_batch(&self, x: &[f32], y: &[f32]) -> Result<()> {
        self.upload(x, y);
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        self.record_forward(&mut enc, &self.layer.eval)?;
        self.eval.record(&mut enc);
        self.ctx.queue.submit([enc.finish()]);
        Ok(())
    }
}

/// One cell's run: its test MSE after each logged step (step 0 first).
struct Outcome {
    mode: Mode,
    params: usize,
    curve: Vec<(f64, f64)>,
    /// The step whose loss became non-finite, if one did.
    diverged: Option<usize>,
    secs: f64,
}

type Batch = (Vec<f32>, Vec<f32>);

fn train(ctx: &std::sync::Arc<Context>, mode: Mode, a: &Args, test: &[Batch]) -> Result<Outcome> {
    let tr = Trainer::new(ctx, mode, a)?;
    let mut out = Outcome { mode, params: tr.params, curve: Vec::new(), diverged: None, secs: 0.0 };
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let start = Instant::now();
    let evaluate = |tr: &Trainer| -> Result<f64> {
        for (x, y) in test {
            tr.eval_batch(x, y)?;
        }
        Ok(tr.metrics.take(1)?.loss)
    };
    let name = mode.as_str();
    let mut step = 0;
    let run = (|| -> Result<()> {
        let first = evaluate(&tr)?;
        println!("{name:>16} step     0: test MSE {first:.4} (before training)");
        out.curve.push((0.0, first));
        while step < a.steps {
            step += 1;
            let (x, y) = batch(&mut rng, a.t, a.batch);
            tr.step(&x, &y)?;
            if step % a.log_every == 0 || step == a.steps {
                let train = tr.metrics.take(0)?.loss;
                let test_mse = evaluate(&tr)?;
                out.curve.push((step as f64, test_mse));
                println!("{name:>16} step {step:>5}: train MSE {train:.4}, test MSE {test_mse:.4} ({:.0} s)", start.elapsed().as_secs_f64());
            }
        }
        Ok(())
    })();
    match run {
        Err(Error::NonFinite(_)) => {
            println!("{name:>16} step {step:>5}: non-finite loss, stopped");
            out.diverged = Some(step);
        }
        other => other?,
    }
    out.secs = start.elapsed().as_secs_f64();
    Ok(out)
}

/// Thirteen distinguishable colours (matplotlib's tab20, dark shades first).
const COLORS: [Rgb; 13] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
    [174, 199, 232],
    [255, 187, 120],
    [152, 223, 138],
];

fn main() -> Result<()> {
    let a = Args::parse();
    if a.t < 2 || a.batch == 0 || a.hidden == 0 || a.test < a.batch || a.steps == 0 || a.log_every == 0 {
        return Err(Error::InvalidConfig("need t >= 2, batch > 0, hidden > 0, test >= batch, steps > 0, log-every > 0".into()));
    }
    let cells = common::parse_cells(&a.cells)?;
    let ctx = Context::new()?;
    println!("adapter: {}", ctx.describe());
    println!(
        "adding problem: T {}, hidden {}, batch {}, {} steps, Adam lr {}, clip {}, {} test sequences, seed {}",
        a.t,
        a.hidden,
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
        results.push(train(&ctx, mode, &a, &test)?);
    }
    println!("\nresults (T {}, hidden {}, {} steps of batch {}; variance baseline 1/6 = 0.167):\n", a.t, a.hidden, a.steps, a.batch);
    println!("| cell | parameters | test MSE | time |");
    println!("| --- | ---: | ---: | ---: |");
    for r in &results {
        let mse = match r.diverged {
            Some(step) => format!("diverged at step {step}"),
            None => format!("{:.4}", r.curve.last().map_or(f64::NAN, |p| p.1)),
        };
        println!("| {} | {} | {mse} | {:.0} s |", r.mode, r.params, r.secs);
    }
    println!("\ntotal {:.1} min", total.elapsed().as_secs_f64() / 60.0);

    std::fs::create_dir_all(&a.out)?;
    let path = a.out.join("adding_problem.png");
    let curves: Vec<Vec<(f64, f64)>> = results.iter().map(|r| r.curve.iter().map(|&(s, m)| (s, m.log10())).collect()).collect();
    let baseline = [(0.0, (1.0f64 / 6.0).log10()), (a.steps as f64, (1.0f64 / 6.0).log10())];
    let mut series: Vec<Series<'_>> =
        results.iter().zip(&curves).enumerate().map(|(k, (r, c))| Series { label: r.mode.as_str(), color: COLORS[k % COLORS.len()], points: c }).collect();
    series.push(Series { label: "BASELINE 1/6", color: [0, 0, 0], points: &baseline });
    let title = format!("ADDING PROBLEM T {}: LOG10 TEST MSE", a.t);
    write_png(&path, &[Panel { title: &title, x_label: "STEP", series }])?;
    println!("plot: {}", path.display());
    if a.min_drop > 0.0 {
        common::check_min_drop(results.iter().map(|r| (r.mode.to_string(), &r.curve[..], r.diverged.is_some())), a.min_drop, "test MSE")?;
    }
    Ok(())
}
