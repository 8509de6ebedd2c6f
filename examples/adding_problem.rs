//! Hochreiter and Schmidhuber's adding problem: each sequence holds T random numbers in
//! [0, 1] and a second channel marking two positions (one in each half); the target is the
//! sum of the two marked numbers. Predicting the mean (1.0) gives MSE 1/6 = 0.167, the
//! variance baseline; getting below it needs information carried across up to T steps.
//! An LSTM learns it at T = 100, a vanilla RNN of the same size does not.
//!
//! Everything trains on the GPU through the engine API: per step one encoder holds the
//! recurrent forward, the head, the loss, the recurrent backward and the Adam update; only
//! the loss is read back (every `--log-every` steps).
//!
//!     cargo run --release --example adding_problem
//!     cargo run --release --example adding_problem -- --cells lstm --steps 500 --t 50

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use common::{forget_bias, Metrics};
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Instant;
use wgpu_rnn::cpu::Pass;
use wgpu_rnn::gpu::train::{LinearShape, OpBuilder, Optimizer, OptimizerKind, ParamGroup, Program};
use wgpu_rnn::gpu::{storage, upload, BackwardBuffers, Context, ForwardBuffers, GpuRnn, Plan, SeqLayout, StateInputs, StepStrategy};
use wgpu_rnn::{Mode, PackedSequence, Result, RnnConfig, Weights};

#[derive(Parser, Debug)]
#[command(about = "The adding problem: LSTM against a vanilla RNN, trained on the GPU")]
struct Args {
    /// Cells to train, comma-separated: lstm, gru, rnn (tanh).
    #[arg(long, default_value = "lstm,rnn", value_delimiter = ',')]
    cells: Vec<String>,
    /// Sequence length.
    #[arg(long, default_value_t = 100)]
    t: usize,
    #[arg(long, default_value_t = 32)]
    hidden: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Training steps (one fresh batch each).
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    #[arg(long, default_value_t = 1e-2)]
    lr: f32,
    /// Gradient clipping by global norm.
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    /// Test sequences (a fixed set, the same for every cell).
    #[arg(long, default_value_t = 1024)]
    test: usize,
    #[arg(long, default_value_t = 250)]
    log_every: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Recurrent step strategy: auto, per-step or single (one dispatch for all steps).
    #[arg(long, default_value = "auto")]
    strategy: String,
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

struct Trainer {
    ctx: Arc<Context>,
    rnn: GpuRnn,
    train_plan: Arc<Plan>,
    eval_plan: Arc<Plan>,
    x: wgpu_rnn::gpu::TrackedBuffer,
    y: wgpu_rnn::gpu::TrackedBuffer,
    bufs: Vec<wgpu_rnn::gpu::TrackedBuffer>,
    _head: wgpu_rnn::gpu::TrackedBuffer,
    metrics: Metrics,
    mid: Program,
    post: Program,
    eval: Program,
    _opt: Optimizer,
}

// Indices into Trainer::bufs.
const OUT: usize = 0;
const HN: usize = 1;
const CN: usize = 2;
const DHN: usize = 3;
const ZEROS: usize = 4;
const GI: usize = 5;
const GH0: usize = 6;
const GC0: usize = 7;
const GW: usize = 8;

impl Trainer {
    fn new(ctx: &Arc<Context>, mode: Mode, a: &Args) -> Result<Self> {
        let (t, b, h) = (a.t, a.batch, a.hidden);
        let cfg = RnnConfig::new(mode, 2, h);
        let mut w = Weights::<f32>::init_uniform(&cfg, a.seed)?;
        forget_bias(&mut w); // the notebook's advice for LSTMs
        let rnn = GpuRnn::new(ctx, &w)?;
        let lengths = vec![t; b];
        let probe = PackedSequence::from_padded(&vec![0.0f32; t * b * 2], [t, b, 2], false, &lengths)?;
        let layout = SeqLayout::of(&probe)?;
        let strategy = match a.strategy.as_str() {
            "auto" => StepStrategy::Auto,
            "per-step" => StepStrategy::PerStep,
            "single" => StepStrategy::SingleDispatch,
            s => return Err(wgpu_rnn::Error::InvalidConfig(format!("unknown strategy {s:?}"))),
        };
        let inputs = StateInputs { grad_h_n: true, grad_c_n: mode == Mode::Lstm, ..Default::default() };
        let train_plan = Arc::new(Plan::with_strategy(ctx, &cfg, &layout, Pass::Training, inputs, strategy)?);
        let eval_plan = Arc::new(Plan::with_strategy(ctx, &cfg, &layout, Pass::Inference, StateInputs::default(), strategy)?);
        let n = t * b;
        let x = storage(ctx, "x", n * 2)?;
        let y = storage(ctx, "y", b)?;
        let bufs = vec![
            storage(ctx, "output", n * h)?,
            storage(ctx, "h_n", b * h)?,
            storage(ctx, "c_n", b * h)?,
            storage(ctx, "grad h_n", b * h)?,
            upload(ctx, "zeros", &vec![0.0; (n * h).max(b * h)])?,
            storage(ctx, "grad input", n * 2)?,
            storage(ctx, "grad h0", b * h)?,
            storage(ctx, "grad c0", b * h)?,
            storage(ctx, "grad weights", train_plan.weight_elems())?,
        ];
        let hs = LinearShape { rows: b, input: h, output: 1 };
        let bound = 1.0 / (h as f32).sqrt();
        let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed + 7);
        let head_init: Vec<f32> = (0..hs.param_elems()).map(|_| rng.random_range(-bound..bound)).collect();
        let head = upload(ctx, "head", &head_init)?;
        let head_grad = storage(ctx, "head grad", hs.param_elems())?;
        let pred = storage(ctx, "pred", b)?;
        let dpred = storage(ctx, "grad pred", b)?;
        let metrics = Metrics::new(ctx, 2)?;
        let opt = Optimizer::new(
            ctx,
            OptimizerKind::adam(a.lr),
            Some(a.clip),
            &[
                ParamGroup { params: rnn.weights_buffer(), grads: &bufs[GW], elems: train_plan.weight_elems() },
                ParamGroup { params: &head, grads: &head_grad, elems: hs.param_elems() },
            ],
        )?;
        let mut mid = OpBuilder::new(ctx);
        mid.linear_forward(hs, &bufs[HN], &head, &pred)?;
        mid.mse(b, &pred, &y, &dpred, &metrics.buf, metrics.offset(0))?;
        mid.linear_backward(hs, &bufs[HN], &head, &dpred, &head_grad, Some(&bufs[DHN]))?;
        let mut post = OpBuilder::new(ctx);
        opt.record_step(&mut post)?;
        let mut eval = OpBuilder::new(ctx);
        eval.linear_forward(hs, &bufs[HN], &head, &pred)?;
        eval.mse(b, &pred, &y, &dpred, &metrics.buf, metrics.offset(1))?;
        Ok(Trainer { ctx: ctx.clone(), rnn, train_plan, eval_plan, x, y, bufs, _head: head, metrics, mid: mid.build()?, post: post.build()?, eval: eval.build()?, _opt: opt })
    }

    fn upload(&self, x: &[f32], y: &[f32]) {
        self.ctx.queue.write_buffer(&self.x, 0, bytemuck::cast_slice(x));
        self.ctx.queue.write_buffer(&self.y, 0, bytemuck::cast_slice(y));
    }

    fn forward_buffers(&self) -> ForwardBuffers<'_> {
        let lstm = self.rnn.config().mode == Mode::Lstm;
        ForwardBuffers {
            weights: self.rnn.weights_buffer(),
            input: &self.x,
            output: &self.bufs[OUT],
            h0: None,
            c0: None,
            h_n: &self.bufs[HN],
            c_n: lstm.then_some(&*self.bufs[CN]),
        }
    }

    /// One training step: forward, head, loss, backward, Adam. One submit, no readback.
    fn step(&self, x: &[f32], y: &[f32]) -> Result<()> {
        let lstm = self.rnn.config().mode == Mode::Lstm;
        self.upload(x, y);
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        self.train_plan.record_forward(&mut enc, &self.forward_buffers())?;
        self.mid.record(&mut enc);
        let b = &self.bufs;
        self.train_plan.record_backward(
            &mut enc,
            &BackwardBuffers {
                weights: self.rnn.weights_buffer(),
                input: &self.x,
                output: &b[OUT],
                h0: None,
                c0: None,
                grad_output: &b[ZEROS],
                grad_h_n: Some(&b[DHN]),
                grad_c_n: lstm.then_some(&*b[ZEROS]),
                grad_input: &b[GI],
                grad_h0: &b[GH0],
                grad_c0: lstm.then_some(&*b[GC0]),
                grad_weights: &b[GW],
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
        self.eval_plan.record_forward(&mut enc, &self.forward_buffers())?;
        self.eval.record(&mut enc);
        self.ctx.queue.submit([enc.finish()]);
        Ok(())
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.t < 2 || a.batch == 0 || a.hidden == 0 || a.test < a.batch {
        return Err(wgpu_rnn::Error::InvalidConfig("need t >= 2, batch > 0, hidden > 0, test >= batch".into()));
    }
    let ctx = Context::new()?;
    println!("adapter: {}", ctx.describe());
    println!("adding problem: T {}, hidden {}, batch {}, {} steps, Adam lr {}, clip {}", a.t, a.hidden, a.batch, a.steps, a.lr, a.clip);
    let mut test_rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ 0x7e57);
    let test: Vec<_> = (0..a.test / a.batch).map(|_| batch(&mut test_rng, a.t, a.batch)).collect();
    let mut results = Vec::new();
    for cell in &a.cells {
        let mode = match cell.as_str() {
            "lstm" => Mode::Lstm,
            "gru" => Mode::Gru,
            "rnn" => Mode::RnnTanh,
            other => return Err(wgpu_rnn::Error::InvalidConfig(format!("unknown cell {other:?}: lstm, gru or rnn"))),
        };
        let tr = Trainer::new(&ctx, mode, &a)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
        let start = Instant::now();
        let evaluate = |tr: &Trainer| -> Result<f32> {
            for (x, y) in &test {
                tr.eval_batch(x, y)?;
            }
            Ok(tr.metrics.take(1)?.loss as f32)
        };
        for step in 1..=a.steps {
            let (x, y) = batch(&mut rng, a.t, a.batch);
            tr.step(&x, &y)?;
            if step % a.log_every == 0 || step == a.steps {
                let train = tr.metrics.take(0)?.loss;
                let test_mse = evaluate(&tr)?;
                println!("{cell:>4} step {step:>5}: train MSE {train:.4}, test MSE {test_mse:.4} ({:.0} s)", start.elapsed().as_secs_f64());
            }
        }
        let mse = evaluate(&tr)?;
        let secs = start.elapsed().as_secs_f64();
        results.push((cell.clone(), mse, secs));
    }
    println!("\nresults (T {}, hidden {}, {} steps of batch {}; variance baseline 0.167):", a.t, a.hidden, a.steps, a.batch);
    for (cell, mse, secs) in &results {
        println!("  {cell:>4}: test MSE {mse:.4} after {secs:.0} s");
    }
    Ok(())
}
