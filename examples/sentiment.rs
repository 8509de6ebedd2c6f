//! The course notebook's task: IMDB sentiment with a recurrent network over packed
//! variable-length batches, trained on the GPU.
//!
//! Reviews are lower-cased, `<br />` stripped and split into words (`[a-z0-9]+('[a-z]+)?`)
//! and `!`/`?`; the vocabulary is every word seen at least twice in the 5,000 training
//! reviews; embeddings (50-d) start from GloVe where a word has a vector. Each review keeps
//! its last `--max-len` tokens (the verdict tends to come at the end). Batches of reviews of
//! similar length (bucketed by sorting) go through a bidirectional LSTM (`--cell gru` for
//! GRU) as packed sequences, so no step is spent on padding; a linear head reads the two
//! final states; BCE with logits, Adam, clipping by global norm. Test accuracy on the 2,500
//! test reviews after each epoch; a loss/accuracy plot (PNG) and the model (safetensors,
//! PyTorch's names: `embedding.weight`, `rnn.weight_ih_l0`, ..., `head.weight`, `head.bias`)
//! are written at the end. `examples/sentiment_pytorch.py` is the same pipeline in PyTorch.
//!
//!     cargo run --release --example sentiment
//!     cargo run --release --example sentiment -- --cell gru --epochs 3

#[path = "common/mod.rs"]
mod common;
#[path = "common/text.rs"]
mod text;

use clap::Parser;
use common::plot::{write_png, Panel, Series, BLUE, GREEN, ORANGE};
use common::{data_path, forget_bias, normal, weights_of, Metrics};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use text::{buckets, PAD};
use wgpu_rnn::cpu::Pass;
use wgpu_rnn::gpu::train::{cosine_lr, read_f32, upload_u32, EmbeddingIndex, LinearShape, OpBuilder, Optimizer, OptimizerKind, ParamGroup};
use wgpu_rnn::gpu::{storage, storage_at, upload, BackwardBuffers, Context, ForwardBuffers, GpuRnn, Plan, SeqLayout, TrackedBuffer};
use wgpu_rnn::io::TensorFile;
use wgpu_rnn::{Error, Mode, PackedSequence, Precision, Result, RnnConfig, Weights};

const EMBED: usize = 50;

#[derive(Parser, Debug)]
#[command(about = "IMDB sentiment: bidirectional LSTM/GRU over packed batches, trained on the GPU")]
struct Args {
    /// The recurrent cell: any registered name in any case (lstm, gru, lstm_cifg, scrn, ...).
    /// The head reads the final value of the cell's first state (h; SRU's c, JORDAN's y).
    #[arg(long, default_value = "lstm")]
    cell: String,
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Hidden units per direction.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    #[arg(long, default_value_t = 1)]
    layers: usize,
    /// Tokens kept per review (its last ones).
    #[arg(long, default_value_t = 256)]
    max_len: usize,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 2e-3)]
    lr: f32,
    /// The learning rate over training: `constant`, or `cosine` (PyTorch's CosineAnnealingLR
    /// stepped once a batch, from --lr down to 0 at the last batch; with the other defaults it
    /// trained less well: examples/results/sentiment-f16-cosine-2026-12-01.log).
    #[arg(long, default_value = "constant")]
    lr_schedule: String,
    #[arg(long, default_value_t = 5.0)]
    clip: f32,
    /// Dropout on the embeddings during training.
    #[arg(long, default_value_t = 0.3)]
    dropout: f32,
    /// Words seen fewer times in the training reviews map to <unk>.
    #[arg(long, default_value_t = 2)]
    min_count: usize,
    /// Use only the first N training reviews (0: all 5,000), for quick runs.
    #[arg(long, default_value_t = 0)]
    limit: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Storage of the recurrent layer: f32, or f16 (f16 weights, activations and gradients,
    /// f32 sums, f32 master weights and dynamic loss scaling; needs SHADER_F16).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// After training, time this many epochs of the same pipeline in PyTorch on the CPU
    /// (examples/sentiment_pytorch.py, as many threads as cores) and print the ratio of
    /// epoch times; skipped with a note when python3 or torch is missing. 0: don't.
    #[arg(long, default_value_t = 1)]
    pytorch_epochs: usize,
    /// Fail unless the last test loss is below the first (before training) by at least this
    /// fraction of it (CI's smoke runs: the loss must fall). 0: no check.
    #[arg(long, default_value_t = 0.0)]
    min_drop: f64,
    /// Where the plot, the model and the vocabulary go.
    #[arg(long, default_value = "target/sentiment")]
    out: PathBuf,
}

/// The IMDB sample (examples/common/text.rs), errors typed.
fn load_data(a: &Args) -> Result<text::Corpus> {
    text::corpus(&data_path(""), a.limit, a.min_count, a.max_len).map_err(Error::InvalidConfig)
}

/// The embedding table: GloVe rows where the word has one, else N(0, 0.1); padding zero.
fn embedding_init(itos: &[String], rng: &mut impl Rng) -> Result<(Vec<f32>, usize)> {
    let mut table = normal(rng, itos.len() * EMBED, 0.1);
    table[..EMBED].iter_mut().for_each(|x| *x = 0.0);
    let found = text::glove_rows(&data_path("glove.6B.50d.10k.txt"), itos, EMBED, &mut table).map_err(Error::InvalidConfig)?;
    Ok((table, found))
}

/// Device buffers sized for the largest batch, reused by every batch.
struct Buffers {
    /// Embedding rows before dropout, and their gradient.
    xe: TrackedBuffer,
    gie: TrackedBuffer,
    /// The recurrent layer's input, output, final states and gradients in f32.
    layer: LayerBuffers,
    feat: TrackedBuffer,
    logits: TrackedBuffer,
    targets: TrackedBuffer,
    dlogits: TrackedBuffer,
    dfeat: TrackedBuffer,
}

struct Model {
    ctx: Arc<Context>,
    cfg: RnnConfig,
    rnn: GpuRnn,
    table: TrackedBuffer,
    table_grad: TrackedBuffer,
    vocab: usize,
    head: TrackedBuffer,
    head_grad: TrackedBuffer,
    bufs: Buffers,
    opt: Optimizer,
    metrics: Metrics,
    /// The recurrent layer's f16 buffers (`--precision f16`).
    fused16: Option<Fused16>,
    dropout: f32,
    /// Batches trained so far (the dropout mask's seed).
    batches: std::cell::Cell<u32>,
    /// The most device memory (the context's buffer accounting) held while a training step
    /// was recorded: the model, the optimiser, the batch's plan and its tapes.
    peak_bytes: std::cell::Cell<u64>,
}

/// What the recurrent layer's plan binds besides the weights, in one precision: the layer
/// input, output and final states (per state of the cell: `hn` is the first, the head's
/// features), and their gradients.
struct LayerBuffers {
    x: TrackedBuffer,
    out: TrackedBuffer,
    hn: TrackedBuffer,
    /// The other states' final values.
    others_n: Vec<TrackedBuffer>,
    /// Zeros: the output's gradient.
    zeros: TrackedBuffer,
    dhn: TrackedBuffer,
    gi: TrackedBuffer,
    /// The initial states' gradients, per state.
    gs0: Vec<TrackedBuffer>,
    gw: TrackedBuffer,
}

impl LayerBuffers {
    /// Sized for `n` packed rows, `states` elements per state (`states[0]`: the head's) and
    /// `welems` weights when the plan binds them (`bound`); otherwise one element each, but for
    /// the input and the gradients the embedding and the optimiser use, and the first final
    /// state and its gradient, which the head reads and writes. Zeroed (wgpu clears new
    /// buffers).
    fn new(ctx: &Context, precision: Precision, n: usize, h: usize, states: &[usize], welems: usize, bound: bool) -> Result<Self> {
        let full = |elems: usize| if bound { elems } else { 1 };
        let buf = |label: &str, elems: usize| storage_at(ctx, &format!("{precision} {label}"), elems, precision);
        Ok(LayerBuffers {
            x: buf("layer input", n * EMBED)?,
            out: buf("output", full(n * 2 * h))?,
            hn: buf("first final state", states[0])?,
            others_n: states[1..].iter().map(|&e| buf("final state", full(e))).collect::<Result<_>>()?,
            zeros: buf("zeros", full(n * 2 * h))?,
            dhn: buf("first final state gradient", states[0])?,
            gi: buf("grad input", n * EMBED)?,
            gs0: states.iter().map(|&e| buf("initial state gradient", full(e))).collect::<Result<_>>()?,
            gw: buf("grad weights", welems)?,
        })
    }
}

/// `--precision f16`: the recurrent layer's buffers in f16; the embedding, head and
/// optimiser stay f32. Per batch the f32 master weights are rounded into `weights` and the
/// layer input into `layer.x`; `h_n` is widened into the f32 `h_n` the head reads, its
/// gradient rounded back with the loss scale, and the gradients widened and unscaled.
struct Fused16 {
    cfg: RnnConfig,
    weights: TrackedBuffer,
    layer: LayerBuffers,
}

/// One batch, packed: token ids in packed order and the layout.
struct Batch {
    index: EmbeddingIndex,
    layout: SeqLayout,
    targets: Vec<f32>,
}

fn make_batch(data: &[(Vec<u32>, f32)], idx: &[usize], vocab: usize) -> Result<Batch> {
    let seqs: Vec<Vec<f32>> = idx.iter().map(|&i| data[i].0.iter().map(|&t| t as f32).collect()).collect();
    let refs: Vec<&[f32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let packed = PackedSequence::from_sequences(&refs, 1)?;
    let ids: Vec<u32> = packed.data.iter().map(|&v| v as u32).collect();
    Ok(Batch { index: EmbeddingIndex::new(&ids, vocab, Some(PAD))?, layout: SeqLayout::of(&packed)?, targets: idx.iter().map(|&i| data[i].1).collect() })
}

impl Model {
    fn new(ctx: &Arc<Context>, a: &Args, mode: Mode, table: &[f32], vocab: usize) -> Result<Self> {
        let mut cfg = RnnConfig::new(mode, EMBED, a.hidden);
        cfg.num_layers = a.layers;
        cfg.bidirectional = true;
        let mut w = Weights::<f32>::init_uniform(&cfg, a.seed)?;
        forget_bias(&mut w);
        let rnn = GpuRnn::new(ctx, &w)?;
        let (h, b) = (a.hidden, a.batch);
        let n = b * a.max_len;
        let states = cfg.state_elems(b);
        let head_shape = LinearShape { rows: b, input: 2 * h, output: 1 };
        let bound = 1.0 / ((2 * h) as f32).sqrt();
        let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed + 1);
        let head_init: Vec<f32> = (0..head_shape.param_elems()).map(|_| rng.random_range(-bound..bound)).collect();
        let welems = wgpu_rnn::gpu::weight_elems(&cfg);
        let precision = Precision::parse(&a.precision)?;
        // The f32 layer buffers: bound by the f32 plan; otherwise the input and gradients the
        // embedding and optimiser use, and the first final state the head reads. The f16
        // layer has its own (`Fused16`).
        let bufs = Buffers {
            xe: storage(ctx, "embedded", n * EMBED)?,
            gie: storage(ctx, "grad embedded", n * EMBED)?,
            layer: LayerBuffers::new(ctx, Precision::F32, n, h, &states, welems, precision == Precision::F32)?,
            feat: storage(ctx, "features", b * 2 * h)?,
            logits: storage(ctx, "logits", b)?,
            targets: storage(ctx, "targets", b)?,
            dlogits: storage(ctx, "grad logits", b)?,
            dfeat: storage(ctx, "grad features", b * 2 * h)?,
        };
        let table_buf = upload(ctx, "embedding", table)?;
        let table_grad = storage(ctx, "embedding grad", table.len())?;
        let head = upload(ctx, "head", &head_init)?;
        let head_grad = storage(ctx, "head grad", head_shape.param_elems())?;
        let mut opt = Optimizer::new(
            ctx,
            OptimizerKind::adam(a.lr),
            Some(a.clip),
            &[
                ParamGroup { params: &table_buf, grads: &table_grad, elems: table.len() },
                ParamGroup { params: rnn.weights_buffer(), grads: &bufs.layer.gw, elems: welems },
                ParamGroup { params: &head, grads: &head_grad, elems: head_shape.param_elems() },
            ],
        )?;
        if precision == Precision::F16 {
            ctx.check_precision(precision)?;
            // PyTorch's GradScaler defaults: 2^16, doubled after 2,000 finite steps.
            opt = opt.with_loss_scaling(ctx, 65536.0, 2000)?;
        }
        let fused16 = match precision == Precision::F16 {
            false => None,
            true => Some(Fused16 {
                weights: storage_at(ctx, "f16 weights", welems, precision)?,
                layer: LayerBuffers::new(ctx, precision, n, h, &states, welems, true)?,
                cfg: cfg.clone().with_precision(precision),
            }),
        };
        Ok(Model {
            ctx: ctx.clone(),
            cfg,
            rnn,
            table: table_buf,
            table_grad,
            vocab,
            head,
            head_grad,
            bufs,
            opt,
            metrics: Metrics::new(ctx, 2)?,
            fused16,
            dropout: a.dropout,
            batches: std::cell::Cell::new(a.seed as u32 * 1_000_003),
            peak_bytes: std::cell::Cell::new(0),
        })
    }

    /// The head on the features in `bufs.feat`, the loss into metric block 0 (training) or 1,
    /// and in training the head's backward down to the features' gradient in `bufs.dfeat`.
    fn head_and_loss(&self, mid: &mut OpBuilder, head: LinearShape, b: usize, train: bool) -> Result<()> {
        let bf = &self.bufs;
        mid.linear_forward(head, &bf.feat, &self.head, &bf.logits)?;
        let block = self.metrics.offset(if train { 0 } else { 1 });
        mid.bce_with_logits(b, &bf.logits, &bf.targets, &bf.dlogits, &self.metrics.buf, block)?;
        if train {
            mid.linear_backward(head, &bf.feat, &self.head, &bf.dlogits, &self.head_grad, Some(&bf.dfeat))?;
        }
        Ok(())
    }

    /// The inputs of a layer stored in `prec` (the f16 paths): the master weights (updated by
    /// the last step) and the layer input (`bufs.layer.x`, `rows` rows) rounded into the
    /// layer's copies `weights` and `x`.
    fn cast_in(&self, pre: &mut OpBuilder, prec: Precision, weights: &wgpu::Buffer, x: &wgpu::Buffer, welems: usize, rows: usize) -> Result<()> {
        pre.to_stored(prec, self.rnn.weights_buffer(), (0, welems), weights, (0, welems), 1, welems, None)?;
        pre.to_stored(prec, &self.bufs.layer.x, (0, EMBED), x, (0, EMBED), rows, EMBED, None)
    }

    /// The gradients of a layer stored in `prec` (the f16 paths): its weight and input
    /// gradients `gw`, `gi` widened into `bufs.layer` and divided by the loss scale (a step
    /// with an overflow is skipped).
    fn cast_out(&self, post: &mut OpBuilder, prec: Precision, gw: &wgpu::Buffer, gi: &wgpu::Buffer, welems: usize, rows: usize) -> Result<()> {
        let lb = &self.bufs.layer;
        post.to_f32(prec, gw, (0, welems), &lb.gw, (0, welems), 1, welems, Some(&self.opt))?;
        post.to_f32(prec, gi, (0, EMBED), &lb.gi, (0, EMBED), rows, EMBED, Some(&self.opt))
    }

    /// The embedding lookup into `bufs.layer.x`, with dropout in training (a new mask per batch);
    /// returns the mask's seed when there is one.
    fn embed(&self, pre: &mut OpBuilder, idx: &wgpu::Buffer, batch: &Batch, train: bool) -> Result<Option<u32>> {
        let (bf, rows) = (&self.bufs, batch.index.rows());
        if train && self.dropout > 0.0 {
            let seed = self.batches.get();
            self.batches.set(seed.wrapping_add(1));
            pre.embedding_forward(&self.table, idx, &batch.index, EMBED, &bf.xe)?;
            pre.dropout(&bf.xe, &bf.layer.x, rows * EMBED, self.dropout, seed, None)?;
            Ok(Some(seed))
        } else {
            pre.embedding_forward(&self.table, idx, &batch.index, EMBED, &bf.layer.x)?;
            Ok(None)
        }
    }

    /// From the layer's input gradient in `bufs.layer.gi`: the dropout's backward (same mask), the
    /// embedding gradient, and the optimiser step.
    fn embed_backward_and_step(&self, post: &mut OpBuilder, idx: &wgpu::Buffer, batch: &Batch, drop_seed: Option<u32>) -> Result<()> {
        let (bf, rows) = (&self.bufs, batch.index.rows());
        if let Some(seed) = drop_seed {
            post.dropout(&bf.layer.gi, &bf.gie, rows * EMBED, self.dropout, seed, None)?;
            post.embedding_backward(&bf.gie, idx, &batch.index, EMBED, &self.table_grad)?;
        } else {
            post.embedding_backward(&bf.layer.gi, idx, &batch.index, EMBED, &self.table_grad)?;
        }
        self.opt.record_step(post)
    }

    /// Records one batch: training (forward, loss, backward, Adam) into metric block 0, or
    /// evaluation (forward, loss) into block 1. One submit; nothing is read back.
    fn run_batch(&self, batch: &Batch, train: bool) -> Result<()> {
        let ctx = &self.ctx;
        let c = &self.cfg;
        let (b, h) = (batch.targets.len(), c.hidden_size);
        let bf = &self.bufs;
        let f16 = self.fused16.as_ref();
        let pass = if train { Pass::Training } else { Pass::Inference };
        let plan = Plan::new(ctx, f16.map_or(c, |f| &f.cfg), &batch.layout, pass)?;
        if train {
            self.peak_bytes.set(self.peak_bytes.get().max(ctx.live_buffer_bytes()));
        }
        let idx = upload_u32(ctx, "token index", batch.index.data())?;
        ctx.queue.write_buffer(&bf.targets, 0, bytemuck::cast_slice(&batch.targets));
        let head = LinearShape { rows: b, input: 2 * h, output: 1 };
        let last = (c.num_layers - 1) * 2 * b * h; // the last layer's [2, B, H] block of h_n
        let states = c.num_layers * 2 * b * h;
        let rows = batch.index.rows();
        let welems = wgpu_rnn::gpu::weight_elems(c);

        let mut pre = OpBuilder::new(ctx);
        let drop_seed = self.embed(&mut pre, &idx, batch, train)?;
        let mut mid = OpBuilder::new(ctx);
        let mut post = OpBuilder::new(ctx);
        let lb = &bf.layer;
        if let Some(f) = f16 {
            // The layer's f16 inputs; h_n widened for the head.
            self.cast_in(&mut pre, Precision::F16, &f.weights, &f.layer.x, welems, rows)?;
            mid.to_f32(Precision::F16, &f.layer.hn, (0, states), &lb.hn, (0, states), 1, states, None)?;
        }
        mid.blocks_to_rows(&lb.hn, last, 2, b, h, &bf.feat)?;
        self.head_and_loss(&mut mid, head, b, train)?;
        if train {
            mid.rows_to_blocks(&bf.dfeat, 2, b, h, &lb.dhn, last)?;
            if let Some(f) = f16 {
                // The final h's gradient times the loss scale, rounded; the gradients back.
                mid.to_stored(Precision::F16, &lb.dhn, (0, states), &f.layer.dhn, (0, states), 1, states, Some(&self.opt))?;
                self.cast_out(&mut post, Precision::F16, &f.layer.gw, &f.layer.gi, welems, rows)?;
            }
            self.embed_backward_and_step(&mut post, &idx, batch, drop_seed)?;
        }
        let (pre, mid, post) = (pre.build()?, mid.build()?, post.build()?);

        // The plan's buffers: f32 (the model's), or their f16 copies.
        let (weights, p) = match f16 {
            Some(f) => (&*f.weights, &f.layer),
            None => (self.rnn.weights_buffer(), lb),
        };
        let _serial = ctx.exclusive();
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        pre.record(&mut enc);
        let states_n: Vec<wgpu::BufferSlice<'_>> = std::iter::once(&p.hn).chain(&p.others_n).map(|b| b.slice(..)).collect();
        let grad_states0: Vec<wgpu::BufferSlice<'_>> = p.gs0.iter().map(|b| b.slice(..)).collect();
        plan.record_forward(&mut enc, &ForwardBuffers { weights: weights.slice(..), input: p.x.slice(..), output: p.out.slice(..), states0: &[], states_n: &states_n, counter: None })?;
        mid.record(&mut enc);
        if train {
            plan.record_backward(
                &mut enc,
                &BackwardBuffers {
                    weights: weights.slice(..),
                    input: p.x.slice(..),
                    output: p.out.slice(..),
                    states0: &[],
                    grad_output: p.zeros.slice(..),
                    grad_states_n: &[Some(p.dhn.slice(..))],
                    grad_input: Some(p.gi.slice(..)),
                    grad_states0: &grad_states0,
                    grad_weights: p.gw.slice(..),
                    counter: None,
                },
            )?;
            post.record(&mut enc);
        }
        ctx.queue.submit([enc.finish()]);
        Ok(())
    }

    /// `embedding.weight`, `rnn.*` (PyTorch's nn.LSTM / nn.GRU names), `head.weight`, `head.bias`.
    fn save(&self, path: &std::path::Path) -> Result<()> {
        let mut f = TensorFile::default();
        let table = read_f32(&self.ctx, &self.table, self.vocab * EMBED)?;
        f.put_float("embedding.weight", vec![self.vocab, EMBED], table.iter().map(|&x| x as f64).collect());
        weights_of(&self.ctx, &self.rnn)?.to_tensor_file(&mut f, "rnn.")?;
        let h2 = 2 * self.cfg.hidden_size;
        let head = read_f32(&self.ctx, &self.head, h2 + 1)?;
        f.put_float("head.weight", vec![1, h2], head[..h2].iter().map(|&x| x as f64).collect());
        f.put_float("head.bias", vec![1], vec![head[h2] as f64]);
        f.write(path)
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    let mode: Mode = a.cell.parse()?;
    if a.batch == 0 || a.max_len == 0 || a.hidden == 0 || a.layers == 0 || a.epochs == 0 {
        return Err(Error::InvalidConfig("batch, max-len, hidden, layers and epochs must be positive".into()));
    }
    if !matches!(a.lr_schedule.as_str(), "cosine" | "constant") {
        return Err(Error::InvalidConfig(format!("unknown learning-rate schedule {:?}: cosine or constant", a.lr_schedule)));
    }
    if !(0.0..1.0).contains(&a.dropout) {
        return Err(Error::InvalidConfig(format!("dropout must be in [0, 1), got {}", a.dropout)));
    }
    let ctx = Context::new()?;
    println!("adapter: {}", ctx.describe());
    let data = load_data(&a)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let (table, found) = embedding_init(&data.itos, &mut rng)?;
    let vocab = data.itos.len();
    println!(
        "vocabulary {vocab} ({found} from GloVe), train {}, test {}; bidirectional {} {}x{} (layers {}), last {} tokens, batch {}, Adam {} ({} schedule), clip {}, embedding dropout {}",
        data.train.len(),
        data.test.len(),
        a.cell,
        a.hidden,
        2,
        a.layers,
        a.max_len,
        a.batch,
        a.lr,
        a.lr_schedule,
        a.clip,
        a.dropout
    );
    let mut model = Model::new(&ctx, &a, mode, &table, vocab)?;
    // Bucketed once: the batches keep their members, and their order is shuffled each epoch.
    let mut train_batches: Vec<Batch> = buckets(&data.train, a.batch).iter().map(|idx| make_batch(&data.train, idx, vocab)).collect::<Result<_>>()?;
    let test_batches: Vec<Batch> = buckets(&data.test, a.batch).iter().map(|idx| make_batch(&data.test, idx, vocab)).collect::<Result<_>>()?;
    let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} batches, {elapsed} {msg}").expect("template").progress_chars("=> ");
    let (mut loss_pts, mut acc_pts, mut train_acc_pts) = (Vec::new(), Vec::new(), Vec::new());
    let mut records = Vec::new();
    let mut records_s = Vec::new();
    let first = if a.min_drop > 0.0 {
        for tb in &test_batches {
            model.run_batch(tb, false)?;
        }
        let t = model.metrics.take(1)?;
        println!("before training: test loss {:.4}, test accuracy {:.4}", t.loss, t.accuracy);
        Some(t.loss)
    } else {
        None
    };
    let mut last = f64::NAN;
    for epoch in 1..=a.epochs {
        train_batches.shuffle(&mut rng);
        let bar = ProgressBar::new(train_batches.len() as u64).with_style(style.clone()).with_prefix(epoch.to_string());
        let start = Instant::now();
        let (mut loss_sum, mut rows, mut correct) = (0.0, 0.0, 0.0);
        for (k, batch) in train_batches.iter().enumerate() {
            if a.lr_schedule == "cosine" {
                let total = a.epochs * train_batches.len();
                model.opt.set_lr(cosine_lr(a.lr, (epoch - 1) * train_batches.len() + k, total))?;
            }
            model.run_batch(batch, true)?;
            bar.inc(1);
            if (k + 1) % 10 == 0 || k + 1 == train_batches.len() {
                let t = model.metrics.take(0)?;
                loss_sum += t.loss * t.rows;
                correct += t.accuracy * t.rows;
                rows += t.rows;
                bar.set_message(format!("loss {:.4}", loss_sum / rows));
            }
        }
        ctx.wait()?;
        let secs = start.elapsed().as_secs_f64();
        bar.finish();
        for tb in &test_batches {
            model.run_batch(tb, false)?;
        }
        let test = model.metrics.take(1)?;
        last = test.loss;
        let train_loss = loss_sum / rows;
        println!(
            "epoch {epoch}: train loss {train_loss:.4}, train accuracy {:.4}, {secs:.1} s; test loss {:.4}, test accuracy {:.4}",
            correct / rows,
            test.loss,
            test.accuracy
        );
        if model.fused16.is_some() {
            let st = model.opt.read_state(&ctx)?;
            println!("  f16: {} steps, {} skipped (f16 overflow), loss scale {}", st.steps, st.skipped, st.loss_scale);
        }
        loss_pts.push((epoch as f64, train_loss));
        acc_pts.push((epoch as f64, test.accuracy * 100.0));
        train_acc_pts.push((epoch as f64, correct / rows * 100.0));
        records_s.push(secs);
        records.push(format!("{{\"epoch\": {epoch}, \"train_loss\": {train_loss:.5}, \"epoch_s\": {secs:.2}, \"test_accuracy\": {:.5}}}", test.accuracy));
    }
    std::fs::create_dir_all(&a.out)?;
    let plot = a.out.join("sentiment.png");
    write_png(
        &plot,
        &[
            Panel { title: "TRAIN LOSS (BCE)", x_label: "EPOCH", series: vec![Series { label: "TRAIN", color: BLUE, points: &loss_pts }] },
            Panel {
                title: "ACCURACY %",
                x_label: "EPOCH",
                series: vec![Series { label: "TRAIN", color: ORANGE, points: &train_acc_pts }, Series { label: "TEST", color: GREEN, points: &acc_pts }],
            },
        ],
    )?;
    let model_path = a.out.join("sentiment.safetensors");
    model.save(&model_path)?;
    std::fs::write(a.out.join("vocab.txt"), data.itos.join("\n") + "\n")?;
    std::fs::write(a.out.join("history.json"), format!("[\n{}\n]\n", records.join(",\n")))?;
    println!("wrote {}, {} and vocab.txt", plot.display(), model_path.display());
    let mean_epoch = records_s.iter().sum::<f64>() / records_s.len() as f64;
    println!("mean epoch time {mean_epoch:.1} s on {}", ctx.describe());
    println!(
        "device memory of a training step ({} recurrent layer): {:.1} MiB at most (the context's buffer accounting when the batch's plan is made: model, optimiser, plan and tapes)",
        a.precision,
        model.peak_bytes.get() as f64 / (1 << 20) as f64
    );
    if a.pytorch_epochs > 0 {
        compare_pytorch(&a, mean_epoch);
    }
    println!("final test accuracy: {:.4}", acc_pts.last().map(|p| p.1 / 100.0).unwrap_or(0.0));
    if let Some(first) = first {
        // NaN-aware: `!(x <= y)` holds for a NaN loss.
        if !(last <= first * (1.0 - a.min_drop)) {
            return Err(Error::InvalidConfig(format!("test loss fell from {first:.4} to {last:.4}, less than {} of it", a.min_drop)));
        }
        println!("test loss fell from {first:.4} to {last:.4} (at least {} of it)", a.min_drop);
    }
    Ok(())
}

/// Runs examples/sentiment_pytorch.py for the same model and prints both epoch times.
fn compare_pytorch(a: &Args, ours: f64) {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let json = a.out.join("pytorch.json");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/sentiment_pytorch.py");
    println!("timing {} PyTorch CPU epoch(s) of the same model ({threads} threads) ...", a.pytorch_epochs);
    let status = std::process::Command::new("python3")
        .arg(&script)
        .args(["--cell", &a.cell, "--hidden", &a.hidden.to_string(), "--max-len", &a.max_len.to_string(), "--batch", &a.batch.to_string()])
        .args(["--lr", &a.lr.to_string(), "--lr-schedule", &a.lr_schedule, "--clip", &a.clip.to_string(), "--min-count", &a.min_count.to_string(), "--dropout", &a.dropout.to_string()])
        .args(["--limit", &a.limit.to_string(), "--epochs", &a.pytorch_epochs.to_string(), "--threads", &threads.to_string(), "--json"])
        .arg(&json)
        .status();
    let parsed = status.ok().filter(|s| s.success()).and_then(|_| std::fs::read_to_string(&json).ok()).and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let Some(v) = parsed else {
        println!("PyTorch comparison skipped: python3 with torch did not run ({})", script.display());
        return;
    };
    let secs: Vec<f64> = v["epochs"].as_array().map(|e| e.iter().filter_map(|r| r["epoch_s"].as_f64()).collect()).unwrap_or_default();
    if secs.is_empty() {
        println!("PyTorch comparison skipped: no epochs in {}", json.display());
        return;
    }
    let theirs = secs.iter().sum::<f64>() / secs.len() as f64;
    println!(
        "epoch time: ours {ours:.1} s, {} on the CPU {theirs:.1} s ({threads} threads): ratio {:.2}",
        v["framework"].as_str().unwrap_or("pytorch"),
        ours / theirs
    );
}
