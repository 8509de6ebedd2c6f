//! A character-level language model on tiny shakespeare (Karpathy's char-rnn task): an
//! embedding, a two-layer LSTM (`--cell NAME`: any registered cell) and a linear head over the
//! 65 characters, trained on the GPU
//! with truncated backpropagation through time. The training text (first 90%) is cut into
//! `--batch` parallel streams; each step takes the next `--bptt` characters of every stream,
//! starts from the states the previous chunk ended in (carried on the device, gradients not
//! propagated across chunks), and trains with softmax cross-entropy, Adam and clipping.
//! Validation loss (nats per character) is measured on the last 10% the same way. Samples
//! are drawn from the trained weights at `--temperature` twice, on the GPU through the
//! one-step engine API (`StepPlan`) and on the CPU, with characters per second for each.
//! Checkpoints (model and optimiser state, safetensors) are written every evaluation and
//! `--resume` continues one.
//!
//!     cargo run --release --example char_rnn
//!     cargo run --release --example char_rnn -- --minutes 2 --sample 300
//!     cargo run --release --example char_rnn -- --resume target/char_rnn/checkpoint.safetensors

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use common::plot::{write_png, Panel, Series, BLUE, GREEN};
use common::{data_path, forget_bias, normal, weights_of, Metrics};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use wgpu_rnn::cpu::Pass;
use wgpu_rnn::gpu::train::{read_f32, upload_u32, ClassTargets, EmbeddingIndex, LinearShape, OpBuilder, Optimizer, OptimizerKind, ParamGroup, Program};
use wgpu_rnn::gpu::flat_weights;
use wgpu_rnn::gpu::{storage, upload, BackwardBuffers, Context, ForwardBuffers, GpuRnn, Plan, Readback, SeqLayout, StepBuffers, StepPlan, TrackedBuffer};
use wgpu_rnn::io::TensorFile;
use wgpu_rnn::{Error, Mode, PackedSequence, Result, RnnConfig, Weights};

/// How closely a resumed model's validation loss must match the one its checkpoint saved
/// (relative): the forward is deterministic, so only the metric's summation can differ.
const RESUME_TOL: f64 = 1e-6;

#[derive(Parser, Debug)]
#[command(about = "Character-level LSTM on tiny shakespeare, trained on the GPU with truncated BPTT")]
struct Args {
    /// Fail unless the last validation loss is below the first (taken before training, or
    /// at the resumed checkpoint) by at least this fraction of it (CI's smoke runs: the loss
    /// must fall). 0: no check.
    #[arg(long, default_value_t = 0.0)]
    min_drop: f64,
    /// The recurrent cell: any registered name in any case (lstm, gru, lstm_cifg, scrn, ...).
    #[arg(long, default_value = "lstm")]
    cell: String,
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Embedding width.
    #[arg(long, default_value_t = 64)]
    embed: usize,
    /// Parallel streams.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Characters per truncated-BPTT chunk.
    #[arg(long, default_value_t = 50)]
    bptt: usize,
    #[arg(long, default_value_t = 4e-3)]
    lr: f32,
    #[arg(long, default_value_t = 5.0)]
    clip: f32,
    /// Training time budget in minutes (training stops at the first evaluation past it).
    #[arg(long, default_value_t = 20.0)]
    minutes: f64,
    /// Most training steps (0: no limit besides --minutes).
    #[arg(long, default_value_t = 0)]
    steps: usize,
    /// Steps between validations (and checkpoints).
    #[arg(long, default_value_t = 200)]
    eval_every: usize,
    /// Validate on the first N characters of the validation text (0: all of it).
    #[arg(long, default_value_t = 0)]
    val_limit: usize,
    /// Characters to sample at the end.
    #[arg(long, default_value_t = 600)]
    sample: usize,
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "target/char_rnn")]
    out: PathBuf,
    /// Continue from a checkpoint written by this example.
    #[arg(long)]
    resume: Option<PathBuf>,
}

/// The text as class ids, cut into `b` streams (the tail that does not fill a chunk is dropped).
fn streams(ids: &[u32], b: usize, t: usize) -> Vec<Vec<u32>> {
    let per = ((ids.len() - 1) / b / t) * t + 1; // chunks of t inputs plus one target
    (0..b).map(|j| ids[j * (per - 1)..j * (per - 1) + per].to_vec()).collect()
}

/// Inputs and targets of chunk `c`, in packed (time-major) order.
fn chunk(s: &[Vec<u32>], c: usize, t: usize) -> (Vec<u32>, Vec<u32>) {
    let b = s.len();
    let mut x = Vec::with_capacity(t * b);
    let mut y = Vec::with_capacity(t * b);
    for step in 0..t {
        for st in s {
            x.push(st[c * t + step]);
            y.push(st[c * t + step + 1]);
        }
    }
    (x, y)
}

struct Model {
    ctx: Arc<Context>,
    cfg: RnnConfig,
    vocab: usize,
    rnn: GpuRnn,
    table: TrackedBuffer,
    table_grad: TrackedBuffer,
    head: TrackedBuffer,
    _head_grad: TrackedBuffer,
    train_plan: Plan,
    eval_plan: Plan,
    x: TrackedBuffer,
    targets: TrackedBuffer,
    out: TrackedBuffer,
    /// Carried states, per state of the cell (initial, final): one set for training, one for
    /// validation.
    states: [Vec<(TrackedBuffer, TrackedBuffer)>; 2],
    dout: TrackedBuffer,
    gi: TrackedBuffer,
    /// The initial states' gradients (the chunk's truncation: not used further).
    grad_states0: Vec<TrackedBuffer>,
    gw: TrackedBuffer,
    opt: Optimizer,
    metrics: Metrics,
    mid_train: Program,
    mid_eval: Program,
    _scratch: (TrackedBuffer, TrackedBuffer, TrackedBuffer),
}

impl Model {
    fn new(ctx: &Arc<Context>, a: &Args, vocab: usize) -> Result<Self> {
        let mut cfg = RnnConfig::new(a.cell.parse::<Mode>()?, a.embed, a.hidden);
        cfg.num_layers = a.layers;
        let mut w = Weights::<f32>::init_uniform(&cfg, a.seed)?;
        forget_bias(&mut w);
        let rnn = GpuRnn::new(ctx, &w)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed + 1);
        let table = upload(ctx, "embedding", &normal(&mut rng, vocab * a.embed, 1.0))?;
        let head_shape = LinearShape { rows: a.batch * a.bptt, input: a.hidden, output: vocab };
        let bound = 1.0 / (a.hidden as f32).sqrt();
        let head_init: Vec<f32> = (0..head_shape.param_elems()).map(|_| rng.random_range(-bound..bound)).collect();
        let head = upload(ctx, "head", &head_init)?;
        let lengths = vec![a.bptt; a.batch];
        let probe = PackedSequence::from_padded(&vec![0.0f32; a.bptt * a.batch], [a.bptt, a.batch, 1], false, &lengths)?;
        let layout = SeqLayout::of(&probe)?;
        let train_plan = Plan::new(ctx, &cfg, &layout, Pass::Training)?;
        let eval_plan = Plan::new(ctx, &cfg, &layout, Pass::Inference)?;
        let n = a.batch * a.bptt;
        let state_lens = cfg.state_elems(a.batch);
        let welems = train_plan.weight_elems();
        let state_set = || -> Result<Vec<(TrackedBuffer, TrackedBuffer)>> { state_lens.iter().map(|&e| Ok((storage(ctx, "initial state", e)?, storage(ctx, "final state", e)?))).collect() };
        let table_grad = storage(ctx, "embedding grad", vocab * a.embed)?;
        let head_grad = storage(ctx, "head grad", head_shape.param_elems())?;
        let gw = storage(ctx, "grad weights", welems)?;
        let opt = Optimizer::new(
            ctx,
            OptimizerKind::adam(a.lr),
            Some(a.clip),
            &[
                ParamGroup { params: &table, grads: &table_grad, elems: vocab * a.embed },
                ParamGroup { params: rnn.weights_buffer(), grads: &gw, elems: welems },
                ParamGroup { params: &head, grads: &head_grad, elems: head_shape.param_elems() },
            ],
        )?;
        let metrics = Metrics::new(ctx, 2)?;
        let out = storage(ctx, "output", n * a.hidden)?;
        let targets = storage(ctx, "targets", n)?;
        let logits = storage(ctx, "logits", n * vocab)?;
        let dlogits = storage(ctx, "grad logits", n * vocab)?;
        let dout = storage(ctx, "grad output", n * a.hidden)?;
        let scratch = storage(ctx, "loss scratch", 2 * n)?;
        let mut mid = OpBuilder::new(ctx);
        mid.linear_forward(head_shape, &out, &head, &logits)?;
        mid.softmax_cross_entropy(n, vocab, &logits, &targets, 0, &dlogits, &scratch, &metrics.buf, metrics.offset(0))?;
        mid.linear_backward(head_shape, &out, &head, &dlogits, &head_grad, Some(&dout))?;
        let mut ev = OpBuilder::new(ctx);
        ev.linear_forward(head_shape, &out, &head, &logits)?;
        ev.softmax_cross_entropy(n, vocab, &logits, &targets, 0, &dlogits, &scratch, &metrics.buf, metrics.offset(1))?;
        Ok(Model {
            ctx: ctx.clone(),
            cfg,
            vocab,
            rnn,
            table,
            table_grad,
            head,
            _head_grad: head_grad,
            train_plan,
            eval_plan,
            x: storage(ctx, "x", n * a.embed)?,
            targets,
            out,
            states: [state_set()?, state_set()?],
            dout,
            gi: storage(ctx, "grad input", n * a.embed)?,
            grad_states0: state_lens.iter().map(|&e| storage(ctx, "initial state gradient", e)).collect::<Result<_>>()?,
            gw,
            opt,
            metrics,
            mid_train: mid.build()?,
            mid_eval: ev.build()?,
            _scratch: (logits, dlogits, scratch),
        })
    }

    /// Zeroes a set of carried states (0: training, 1: validation).
    fn reset_states(&self, set: usize) -> Result<()> {
        let mut b = OpBuilder::new(&self.ctx);
        for (s0, sn) in &self.states[set] {
            for s in [s0, sn] {
                b.fill(s, 0, (s.size() / 4) as usize, 0.0)?;
            }
        }
        b.run(&[])?;
        Ok(())
    }

    /// One chunk: training (forward, loss, backward, Adam) or validation (forward, loss);
    /// the final states become the next chunk's initial states. One submit, no readback.
    fn run_chunk(&self, x: &[u32], y: &[u32], train: bool) -> Result<()> {
        let ctx = &self.ctx;
        let e = self.cfg.input_size;
        let index = EmbeddingIndex::new(x, self.vocab, None)?;
        let idx = upload_u32(ctx, "token index", index.data())?;
        ClassTargets::new(y, self.vocab)?.write(ctx, &self.targets, 0)?;
        let mut pre = OpBuilder::new(ctx);
        pre.embedding_forward(&self.table, &idx, &index, e, &self.x)?;
        let pre = pre.build()?;
        let post = if train {
            let mut post = OpBuilder::new(ctx);
            post.embedding_backward(&self.gi, &idx, &index, e, &self.table_grad)?;
            self.opt.record_step(&mut post)?;
            Some(post.build()?)
        } else {
            None
        };
        let set = &self.states[if train { 0 } else { 1 }];
        let states0: Vec<Option<wgpu::BufferSlice<'_>>> = set.iter().map(|(s0, _)| Some(s0.slice(..))).collect();
        let states_n: Vec<wgpu::BufferSlice<'_>> = set.iter().map(|(_, sn)| sn.slice(..)).collect();
        let grad_states0: Vec<wgpu::BufferSlice<'_>> = self.grad_states0.iter().map(|g| g.slice(..)).collect();
        let plan = if train { &self.train_plan } else { &self.eval_plan };
        let _serial = ctx.exclusive();
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        pre.record(&mut enc);
        let w = self.rnn.weights_buffer();
        plan.record_forward(&mut enc, &ForwardBuffers { weights: w.slice(..), input: self.x.slice(..), output: self.out.slice(..), states0: &states0, states_n: &states_n, counter: None })?;
        if let Some(post) = &post {
            self.mid_train.record(&mut enc);
            plan.record_backward(
                &mut enc,
                &BackwardBuffers {
                    weights: w.slice(..),
                    input: self.x.slice(..),
                    output: self.out.slice(..),
                    states0: &states0,
                    grad_output: self.dout.slice(..),
                    grad_states_n: &[],
                    grad_input: Some(self.gi.slice(..)),
                    grad_states0: &grad_states0,
                    grad_weights: self.gw.slice(..),
                    counter: None,
                },
            )?;
            post.record(&mut enc);
        } else {
            self.mid_eval.record(&mut enc);
        }
        // Carry the states into the next chunk (after the backward, which reads them).
        for (s0, sn) in set {
            enc.copy_buffer_to_buffer(sn, 0, s0, 0, Some(s0.size()));
        }
        ctx.queue.submit([enc.finish()]);
        Ok(())
    }

    fn tensors(&self) -> Result<TensorFile> {
        let mut f = TensorFile::default();
        let e = self.cfg.input_size;
        let table = read_f32(&self.ctx, &self.table, self.vocab * e)?;
        f.put_float("embedding.weight", vec![self.vocab, e], table.iter().map(|&x| x as f64).collect());
        weights_of(&self.ctx, &self.rnn)?.to_tensor_file(&mut f, "rnn.")?;
        let (h, v) = (self.cfg.hidden_size, self.vocab);
        let head = read_f32(&self.ctx, &self.head, v * h + v)?;
        f.put_float("head.weight", vec![v, h], head[..v * h].iter().map(|&x| x as f64).collect());
        f.put_float("head.bias", vec![v], head[v * h..].iter().map(|&x| x as f64).collect());
        Ok(f)
    }

    /// Model under PyTorch's names, optimiser state under `optim.*`, progress in the metadata.
    fn checkpoint(&self, path: &std::path::Path, step: usize, chars: &str, validation: (f64, usize)) -> Result<()> {
        let mut f = self.tensors()?;
        for (i, part) in self.opt.export(&self.ctx)?.into_iter().enumerate() {
            f.put_float(format!("optim.{i}"), vec![part.len()], part.iter().map(|&x| x as f64).collect());
        }
        f.metadata.insert("step".into(), step.to_string());
        f.metadata.insert("chars".into(), serde_json::to_string(chars).expect("string"));
        // The validation loss at this point and the validation set's size: a resumed model
        // must give it again (see main).
        f.metadata.insert("validation".into(), format!("{:e}", validation.0));
        f.metadata.insert("validation_chars".into(), validation.1.to_string());
        f.write(path)
    }

    fn restore(&self, f: &TensorFile) -> Result<usize> {
        let put = |buf: &wgpu::Buffer, name: &str, elems: usize| -> Result<()> {
            let t = f.float(name)?;
            if t.data.len() != elems {
                return Err(Error::ShapeMismatch { what: name.into(), expected: vec![elems], got: t.shape.clone() });
            }
            let v: Vec<f32> = t.data.iter().map(|&x| x as f32).collect();
            self.ctx.queue.write_buffer(buf, 0, bytemuck::cast_slice(&v));
            Ok(())
        };
        let (h, v, e) = (self.cfg.hidden_size, self.vocab, self.cfg.input_size);
        put(&self.table, "embedding.weight", v * e)?;
        let w = Weights::<f32>::from_tensor_file(&self.cfg, f, "rnn.")?;
        // The device buffer's layout (slot order, `gpu::flat_weights`), which is state_dict
        // order only for PyTorch's four cells.
        self.ctx.queue.write_buffer(self.rnn.weights_buffer(), 0, bytemuck::cast_slice(&wgpu_rnn::gpu::flat_weights(&w)));
        let head_w = f.float("head.weight")?;
        let head_b = f.float("head.bias")?;
        if head_w.data.len() != v * h || head_b.data.len() != v {
            return Err(Error::ShapeMismatch { what: "head".into(), expected: vec![v, h], got: head_w.shape.clone() });
        }
        let head: Vec<f32> = head_w.data.iter().chain(&head_b.data).map(|&x| x as f32).collect();
        self.ctx.queue.write_buffer(&self.head, 0, bytemuck::cast_slice(&head));
        let mut parts = Vec::new();
        while let Some(t) = f.float_opt(&format!("optim.{}", parts.len()))? {
            parts.push(t.data.iter().map(|&x| x as f32).collect());
        }
        self.opt.import(&self.ctx, &parts)?;
        f.metadata.get("step").and_then(|s| s.parse().ok()).ok_or_else(|| Error::Metadata("checkpoint has no step".into()))
    }

    /// Validation loss in nats per character over the whole validation text.
    fn validate(&self, val: &[Vec<u32>], t: usize) -> Result<f64> {
        self.reset_states(1)?;
        for c in 0..(val[0].len() - 1) / t {
            let (x, y) = chunk(val, c, t);
            self.run_chunk(&x, &y, false)?;
        }
        Ok(self.metrics.take(1)?.loss)
    }
}

/// Draws a character id from the head's logits at `temperature`.
fn draw(logits: &[f32], temperature: f32, rng: &mut impl Rng) -> usize {
    let z: Vec<f32> = logits.iter().map(|&l| l / temperature).collect();
    let m = z.iter().cloned().fold(f32::MIN, f32::max);
    let p: Vec<f32> = z.iter().map(|z| (z - m).exp()).collect();
    let mut u = rng.random::<f32>() * p.iter().sum::<f32>();
    for (c, &pc) in p.iter().enumerate() {
        if u < pc {
            return c;
        }
        u -= pc;
    }
    p.len() - 1
}

/// The character ids to feed before sampling: the prime's, or a newline.
fn prime_ids(chars: &[char], prime: &str) -> Vec<usize> {
    let feed: Vec<usize> = prime.chars().filter_map(|c| chars.iter().position(|&d| d == c)).collect();
    if feed.is_empty() {
        vec![chars.iter().position(|&c| c == '\n').unwrap_or(0)]
    } else {
        feed
    }
}

/// The head's parameters `[W | b]` and the embedding table from a checkpoint.
fn head_and_table(f: &TensorFile) -> Result<(Vec<f32>, Vec<f32>)> {
    let f32s = |name: &str| -> Result<Vec<f32>> { Ok(f.float(name)?.data.iter().map(|&x| x as f32).collect()) };
    let mut head = f32s("head.weight")?;
    head.extend(f32s("head.bias")?);
    Ok((head, f32s("embedding.weight")?))
}

/// Samples `n` characters on the CPU from the trained weights, starting after `prime`: one
/// `cpu::forward` of one step per character.
fn sample(f: &TensorFile, cfg: &RnnConfig, chars: &[char], prime: &str, n: usize, temperature: f32, rng: &mut impl Rng) -> Result<String> {
    let w = Weights::<f32>::from_tensor_file(cfg, f, "rnn.")?;
    let (head, table) = head_and_table(f)?;
    let (e, h, v) = (cfg.input_size, cfg.hidden_size, chars.len());
    // Every state of the cell, carried from one step to the next.
    let mut states: Vec<Vec<f32>> = cfg.state_elems(1).into_iter().map(|e| vec![0.0f32; e]).collect();
    let mut out = String::from(prime);
    let mut feed = prime_ids(chars, prime);
    let mut last = feed[0];
    let mut produced = 0;
    while produced < n {
        let id = if feed.is_empty() { last } else { feed.remove(0) };
        let x = PackedSequence::from_padded(&table[id * e..(id + 1) * e], [1, 1, e], false, &[1])?;
        let given: Vec<Option<&[f32]>> = states.iter().map(|s| Some(&s[..])).collect();
        let (o, _) = wgpu_rnn::cpu::forward(&w, &x, &given, Pass::Inference)?;
        states = o.states.into_iter().map(|t| t.data).collect();
        if !feed.is_empty() {
            continue;
        }
        let top = &o.output.data;
        let logits: Vec<f32> = (0..v).map(|c| head[v * h + c] + (0..h).map(|k| head[c * h + k] * top[k]).sum::<f32>()).collect();
        last = draw(&logits, temperature, rng);
        out.push(chars[last]);
        produced += 1;
    }
    Ok(out)
}

/// Samples on the GPU through the one-step engine API (`StepPlan`): per character one
/// encoder holds the embedding row's copy into the step input, the step of the stacked LSTM
/// (states kept on the device), and the head; the logits are read back and the character
/// drawn on the host (the only reason for a submit per character). The prime is fed in one
/// encoder.
#[allow(clippy::too_many_arguments)]
fn sample_gpu(ctx: &Arc<Context>, f: &TensorFile, cfg: &RnnConfig, chars: &[char], prime: &str, n: usize, temperature: f32, rng: &mut impl Rng) -> Result<String> {
    let w = Weights::<f32>::from_tensor_file(cfg, f, "rnn.")?;
    let (head, table) = head_and_table(f)?;
    let (e, v) = (cfg.input_size, chars.len());
    let plan = StepPlan::new(ctx, cfg, 1)?;
    let weights = upload(ctx, "step weights", &flat_weights(&w))?;
    let table = upload(ctx, "embedding", &table)?;
    let head = upload(ctx, "head", &head)?;
    let (x, top, logits) = (storage(ctx, "x_t", e)?, storage(ctx, "top", cfg.hidden_size)?, storage(ctx, "logits", v)?);
    let states = plan.state_elems().into_iter().map(|n| storage(ctx, "state", n)).collect::<Result<Vec<_>>>()?;
    let states: Vec<wgpu::BufferSlice<'_>> = states.iter().map(|s| s.slice(..)).collect();
    let mut hb = OpBuilder::new(ctx);
    hb.linear_forward(LinearShape { rows: 1, input: cfg.hidden_size, output: v }, &top, &head, &logits)?;
    let head_prog = hb.build()?;
    let step = |enc: &mut wgpu::CommandEncoder, id: usize| -> Result<()> {
        enc.copy_buffer_to_buffer(&table, (id * e * 4) as u64, &x, 0, (e * 4) as u64);
        plan.record_step(enc, &StepBuffers { weights: weights.slice(..), input: x.slice(..), states: &states, output: top.slice(..) })
    };
    let mut out = String::from(prime);
    let feed = prime_ids(chars, prime);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    for &id in &feed[..feed.len() - 1] {
        step(&mut enc, id)?;
    }
    let mut last = feed[feed.len() - 1];
    for _ in 0..n {
        step(&mut enc, last)?;
        head_prog.record(&mut enc);
        let mut rb = Readback::new();
        rb.copy(ctx, &mut enc, &logits, v)?;
        let l = rb.submit_and_read(ctx, enc)?.remove(0);
        last = draw(&l, temperature, rng);
        out.push(chars[last]);
        enc = ctx.device.create_command_encoder(&Default::default());
    }
    Ok(out)
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.batch == 0 || a.bptt == 0 || a.hidden == 0 || a.layers == 0 || a.embed == 0 || a.eval_every == 0 || a.temperature.is_nan() || a.temperature <= 0.0 {
        return Err(Error::InvalidConfig("batch, bptt, hidden, layers, embed, eval-every and temperature must be positive".into()));
    }
    let text = std::fs::read_to_string(data_path("tinyshakespeare.txt"))?;
    let mut chars: Vec<char> = text.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    let ids: Vec<u32> = text.chars().map(|c| chars.binary_search(&c).expect("in vocabulary") as u32).collect();
    let split = ids.len() * 9 / 10;
    let (train_ids, mut val_ids) = ids.split_at(split);
    if a.val_limit > 0 {
        val_ids = &val_ids[..a.val_limit.min(val_ids.len())];
    }
    let train = streams(train_ids, a.batch, a.bptt);
    let val = streams(val_ids, a.batch, a.bptt);
    if val_ids.len() < a.batch * (a.bptt + 1) {
        return Err(Error::InvalidConfig("batch * bptt is too large for the validation text".into()));
    }
    let chunks = (train[0].len() - 1) / a.bptt;
    if chunks == 0 || (val[0].len() - 1) / a.bptt == 0 {
        return Err(Error::InvalidConfig("batch * bptt is too large for the text".into()));
    }
    let ctx = Context::new()?;
    println!("adapter: {}", ctx.describe());
    println!(
        "{} characters ({} distinct), train {} / validation {}; LSTM {} layers x {}, embedding {}, {} streams x {} steps, Adam {}, clip {}",
        ids.len(),
        chars.len(),
        train_ids.len(),
        val_ids.len(),
        a.layers,
        a.hidden,
        a.embed,
        a.batch,
        a.bptt,
        a.lr,
        a.clip
    );
    let model = Model::new(&ctx, &a, chars.len())?;
    std::fs::create_dir_all(&a.out)?;
    let ckpt = a.out.join("checkpoint.safetensors");
    let chars_str: String = chars.iter().collect();
    let mut step = 0;
    if let Some(p) = &a.resume {
        let f = TensorFile::read(p)?;
        if f.metadata.get("chars").map(|s| s.as_str()) != Some(serde_json::to_string(&chars_str).expect("string").as_str()) {
            return Err(Error::Metadata("checkpoint was trained on another character set".into()));
        }
        step = model.restore(&f)?;
        println!("resumed from {} at step {step}", p.display());
        // The restored model gives the checkpoint's validation loss again (same validation
        // set): its weights, head and embedding came back in the device's layouts.
        let saved: Option<f64> = f.metadata.get("validation").and_then(|s| s.parse().ok());
        let same_set = f.metadata.get("validation_chars").and_then(|s| s.parse::<usize>().ok()) == Some(val[0].len() * val.len());
        if let (Some(want), true) = (saved, same_set) {
            let got = model.validate(&val, a.bptt)?;
            if !((got - want).abs() <= RESUME_TOL * (1.0 + want.abs())) {
                return Err(Error::InvalidConfig(format!("the resumed model's validation loss {got} is not the checkpoint's {want}: it did not come back as saved")));
            }
            println!("resumed model's validation loss {got:.6}: the checkpoint's");
        }
    }
    let first = if a.min_drop > 0.0 {
        let v = model.validate(&val, a.bptt)?;
        println!("step {step:>5}: validation {v:.4} nats/char (before this run's training)");
        Some(v)
    } else {
        None
    };
    let start = Instant::now();
    let (mut train_pts, mut val_pts) = (Vec::new(), Vec::new());
    let mut best = f64::INFINITY;
    model.reset_states(0)?;
    loop {
        let c = step % chunks;
        if c == 0 {
            model.reset_states(0)?;
        }
        let (x, y) = chunk(&train, c, a.bptt);
        model.run_chunk(&x, &y, true)?;
        step += 1;
        let out_of_time = start.elapsed().as_secs_f64() > a.minutes * 60.0 || (a.steps > 0 && step >= a.steps);
        if step % a.eval_every == 0 || out_of_time {
            let tr = model.metrics.take(0)?.loss;
            let vl = model.validate(&val, a.bptt)?;
            let mins = start.elapsed().as_secs_f64() / 60.0;
            let epoch = step as f64 / chunks as f64;
            println!("step {step:>5} (epoch {epoch:.2}, {mins:.1} min): train {tr:.4}, validation {vl:.4} nats/char");
            train_pts.push((mins, tr));
            val_pts.push((mins, vl));
            best = best.min(vl);
            model.checkpoint(&ckpt, step, &chars_str, (vl, val[0].len() * val.len()))?;
            if out_of_time {
                break;
            }
        }
    }
    let plot = a.out.join("char_rnn.png");
    write_png(
        &plot,
        &[Panel {
            title: "LOSS (NATS/CHAR)",
            x_label: "MINUTES",
            series: vec![Series { label: "TRAIN", color: BLUE, points: &train_pts }, Series { label: "VALIDATION", color: GREEN, points: &val_pts }],
        }],
    )?;
    let f = TensorFile::read(&ckpt)?;
    let t0 = Instant::now();
    let cpu_text = sample(&f, &model.cfg, &chars, "ROMEO:\n", a.sample, a.temperature, &mut rand::rngs::StdRng::seed_from_u64(a.seed))?;
    let cpu_rate = a.sample as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let gpu_text = sample_gpu(&ctx, &f, &model.cfg, &chars, "ROMEO:\n", a.sample, a.temperature, &mut rand::rngs::StdRng::seed_from_u64(a.seed))?;
    let gpu_rate = a.sample as f64 / t0.elapsed().as_secs_f64();
    println!("\n--- sample on the GPU, one step per call (temperature {}) ---\n{gpu_text}\n---", a.temperature);
    let agree = cpu_text.chars().zip(gpu_text.chars()).take_while(|(p, q)| p == q).count();
    println!(
        "sampling: GPU (StepPlan) {gpu_rate:.0} characters/s, CPU (cpu::forward) {cpu_rate:.0} characters/s; the samples agree on their first {agree} of {} characters (same seed)",
        cpu_text.chars().count()
    );
    println!("wrote {} and {}", plot.display(), ckpt.display());
    let last = val_pts.last().map(|p| p.1).unwrap_or(f64::NAN);
    println!("final validation loss: {last:.4} nats/char (best {best:.4}) after {step} steps, {:.1} min", start.elapsed().as_secs_f64() / 60.0);
    if let Some(first) = first {
        // NaN-aware: `!(x <= y)` holds for a NaN loss.
        if !(last <= first * (1.0 - a.min_drop)) {
            return Err(Error::InvalidConfig(format!("validation loss fell from {first:.4} to {last:.4}, less than {} of it", a.min_drop)));
        }
        println!("validation loss fell from {first:.4} to {last:.4} (at least {} of it)", a.min_drop);
    }
    Ok(())
}
