//! The sentiment model written in burn (issue 28): burn's embedding (GloVe-initialised), a
//! bidirectional LSTM (forget-gate bias 1, as the library's example: `examples/common/init.rs`),
//! burn's linear head and burn's Adam (gradients clipped to a global norm of 5, as PyTorch's
//! `clip_grad_norm_` and the library's example do), on the
//! IMDB sample with `examples/sentiment`'s pipeline (`examples/common/text.rs`) and defaults.
//! The BiLSTM is wgpu-rnn's fused one over packed sequences, or with `--burn-lstm` burn's own
//! `nn::BiLstm` (no packing: reviews left-padded so the forward direction ends on the last word).
//!   cd burn && cargo run --release --example sentiment -- [--epochs 5] [--limit 0] [--burn-lstm]
//!     [--hidden 128] [--max-len 256] [--batch 64] [--lr 2e-3] [--eps 1e-8] [--seed 1]

#![allow(deprecated)]

#[path = "../../examples/common/text.rs"]
#[allow(dead_code)]
mod text;

#[path = "../../examples/common/init.rs"]
mod init;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::{BiLstm, BiLstmConfig, Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear, LinearConfig, Lstm};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use std::path::Path;
use std::time::Instant;
use wgpu_rnn::{Mode, RnnConfig, Weights};
use wgpu_rnn_burn::FusedRnn;

const EMBED: usize = 50;

struct Args {
    epochs: usize,
    limit: usize,
    hidden: usize,
    max_len: usize,
    batch: usize,
    lr: f64,
    /// Adam's epsilon: PyTorch's 1e-8 (the library's example's), not burn's default 1e-5.
    eps: f32,
    seed: u64,
    burn_lstm: bool,
}

fn args() -> Args {
    let mut a = Args { epochs: 5, limit: 0, hidden: 128, max_len: 256, batch: 64, lr: 2e-3, eps: 1e-8, seed: 1, burn_lstm: false };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let next = |i: usize| v.get(i + 1).unwrap_or_else(|| panic!("{} needs a value", v[i])).clone();
        match v[i].as_str() {
            "--epochs" => a.epochs = next(i).parse().unwrap(),
            "--limit" => a.limit = next(i).parse().unwrap(),
            "--hidden" => a.hidden = next(i).parse().unwrap(),
            "--max-len" => a.max_len = next(i).parse().unwrap(),
            "--batch" => a.batch = next(i).parse().unwrap(),
            "--lr" => a.lr = next(i).parse().unwrap(),
            "--eps" => a.eps = next(i).parse().unwrap(),
            "--seed" => a.seed = next(i).parse().unwrap(),
            "--burn-lstm" => {
                a.burn_lstm = true;
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

/// A batch: token ids `[B, T]` (right-padded for the packed BiLSTM, left-padded for burn's),
/// each review's length, the labels.
struct Batch {
    ids: Vec<i64>,
    t: usize,
    lengths: Vec<usize>,
    labels: Vec<f32>,
}

fn batch(data: &[(Vec<u32>, f32)], idx: &[usize], left: bool) -> Batch {
    let t = idx.iter().map(|&i| data[i].0.len()).max().unwrap_or(1);
    let mut ids = vec![text::PAD as i64; idx.len() * t];
    for (r, &i) in idx.iter().enumerate() {
        let s = &data[i].0;
        let at = if left { t - s.len() } else { 0 };
        for (k, &id) in s.iter().enumerate() {
            ids[r * t + at + k] = id as i64;
        }
    }
    Batch { ids, t, lengths: idx.iter().map(|&i| data[i].0.len()).collect(), labels: idx.iter().map(|&i| data[i].1).collect() }
}

/// The logits `[B]` of a batch.
trait Classify {
    fn logits(&self, b: &Batch, device: &Device) -> Tensor<1>;
}

#[derive(Module, Debug)]
struct Ours {
    embed: Embedding,
    dropout: Dropout,
    rnn: FusedRnn,
    head: Linear,
}

#[derive(Module, Debug)]
struct Theirs {
    embed: Embedding,
    dropout: Dropout,
    rnn: BiLstm,
    head: Linear,
}

fn ids(b: &Batch, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(b.ids.clone(), [b.lengths.len(), b.t]), device)
}

/// `h_n` `[2, B, H]` (both directions' final h) through the head.
fn head(head: &Linear, h: Tensor<3>) -> Tensor<1> {
    let [_, b, hd] = h.dims();
    head.forward(h.swap_dims(0, 1).reshape([b, 2 * hd])).reshape([b])
}

impl Classify for Ours {
    fn logits(&self, b: &Batch, device: &Device) -> Tensor<1> {
        let x = self.dropout.forward(self.embed.forward(ids(b, device))).swap_dims(0, 1);
        let out = self.rnn.forward(x, Some(&b.lengths), None).expect("the fused BiLSTM");
        head(&self.head, out.states[0].clone())
    }
}

impl Classify for Theirs {
    fn logits(&self, b: &Batch, device: &Device) -> Tensor<1> {
        let x = self.dropout.forward(self.embed.forward(ids(b, device)));
        let (_, state) = self.rnn.forward(x, None);
        head(&self.head, state.hidden)
    }
}

/// Mean binary cross-entropy of logits `z` against labels `y`, and the number right.
fn loss(z: Tensor<1>, y: &[f32], device: &Device) -> (Tensor<1>, usize) {
    let n = y.len();
    let yt = Tensor::<1>::from_data(TensorData::new(y.to_vec(), [n]), device);
    let zs: Vec<f32> = z.clone().into_data().to_vec().unwrap();
    let right = zs.iter().zip(y).filter(|(z, y)| (**z > 0.0) == (**y > 0.5)).count();
    // max(z, 0) - z y + log(1 + exp(-|z|))
    let l = z.clone().clamp_min(0.0) - z.clone() * yt + (z.abs().neg().exp() + 1.0).log();
    (l.mean(), right)
}

fn evaluate<M: Classify>(m: &M, batches: &[Batch], device: &Device) -> (f64, f64) {
    let (mut sum, mut right, mut n) = (0.0, 0, 0);
    for b in batches {
        let (l, r) = loss(m.logits(b, device), &b.labels, device);
        sum += l.into_scalar::<f32>() as f64 * b.labels.len() as f64;
        right += r;
        n += b.labels.len();
    }
    (sum / n as f64, right as f64 / n as f64)
}

/// The global gradient norm the example clips to (the library's example's `--clip` default).
const CLIP: f32 = 5.0;

/// PyTorch's `clip_grad_norm_(parameters, max_norm)`: every parameter's gradient scaled by
/// `min(1, max_norm / (norm + 1e-6))`, `norm` the 2-norm of all the gradients together (the
/// library's `cpu::train::clip_scale`). Reads the norm back once per call.
fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f32) {
    struct SumSquares<'a>(&'a GradientsParams, Option<Tensor<1>>);
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                let s = g.square().sum();
                self.1 = Some(match self.1.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
    }
    struct Scale<'a>(&'a mut GradientsParams, f32);
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.remove::<D>(param.id) {
                self.0.register::<D>(param.id, g.mul_scalar(self.1));
            }
        }
    }
    let mut sum = SumSquares(grads, None);
    model.visit(&mut sum);
    let Some(sq) = sum.1 else { return };
    let norm = sq.into_scalar::<f32>().sqrt();
    let scale = max_norm / (norm + 1e-6);
    if scale < 1.0 {
        model.visit(&mut Scale(grads, scale));
    }
}

fn train<M: Module + Classify>(mut model: M, a: &Args, train: &[Batch], test: &[Batch], device: &Device) -> (Vec<f64>, Vec<f64>) {
    // No `with_grad_clipping`: burn's `GradientClipping::Norm` clips each parameter's gradient by
    // its own norm; [`clip_global_norm`] clips them together, as the library's example does.
    let mut optim = AdamConfig::new().with_epsilon(a.eps).init();
    let inner = device.clone().without_autodiff();
    let (mut accs, mut times) = (Vec::new(), Vec::new());
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut state = a.seed;
    for epoch in 1..=a.epochs {
        // The batches in a fresh order each epoch (a small LCG: reproducible by seed).
        for k in (1..order.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(k, (state >> 33) as usize % (k + 1));
        }
        let t0 = Instant::now();
        let (mut sum, mut right, mut n) = (0.0, 0, 0);
        for &i in &order {
            let b = &train[i];
            let (l, r) = loss(model.logits(b, device), &b.labels, device);
            sum += l.clone().into_scalar::<f32>() as f64 * b.labels.len() as f64;
            right += r;
            n += b.labels.len();
            let mut grads = GradientsParams::from_grads(l.backward(), &model);
            clip_global_norm(&model, &mut grads, CLIP);
            model = optim.step(a.lr, model, grads);
        }
        device.sync().unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let (tl, ta) = evaluate(&model.valid(), test, &inner);
        println!("epoch {epoch}: train loss {:.4} accuracy {:.4}; test loss {tl:.4} accuracy {ta:.4}; {secs:.1} s", sum / n as f64, right as f64 / n as f64);
        accs.push(ta);
        times.push(secs);
    }
    (accs, times)
}

/// [`init::forget_bias`] for burn's `nn::Lstm`: its forget gate's two biases (input and hidden
/// transform, as PyTorch's `b_ih` and `b_hh`) at 0.5 each.
fn burn_forget_bias(lstm: &mut Lstm) {
    if let Some(gate) = lstm.forget_gate.as_mut() {
        for lin in [&mut gate.input_transform, &mut gate.hidden_transform] {
            if let Some(b) = lin.bias.take() {
                lin.bias = Some(Param::from_tensor(b.val().ones_like().mul_scalar(0.5)));
            }
        }
    }
}

fn main() {
    let a = args();
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data");
    let corpus = text::corpus(&data_dir, a.limit, 2, a.max_len).unwrap();
    let (device, ctx) = wgpu_rnn_burn::init_wgpu(Device::wgpu_options()).unwrap();
    let device = device.autodiff();
    device.seed(a.seed);
    let vocab = corpus.itos.len();
    println!(
        "{} on {}: {} training and {} test reviews, vocabulary {vocab}, BiLSTM {} per direction, last {} tokens, batch {}, Adam {} (eps {:e}), {} epochs",
        if a.burn_lstm { "burn nn::BiLstm" } else { "wgpu-rnn fused BiLSTM" },
        ctx.describe(),
        corpus.train.len(),
        corpus.test.len(),
        a.hidden,
        a.max_len,
        a.batch,
        a.lr,
        a.eps,
        a.epochs
    );
    // GloVe rows where the word has one, else N(0, 0.1) from burn's generator; padding zero.
    let mut table: Vec<f32> = Tensor::<2>::random([vocab, EMBED], burn::tensor::Distribution::Normal(0.0, 0.1), &device).into_data().to_vec().unwrap();
    table[..EMBED].iter_mut().for_each(|x| *x = 0.0);
    let found = text::glove_rows(&data_dir.join("glove.6B.50d.10k.txt"), &corpus.itos, EMBED, &mut table).unwrap();
    println!("GloVe rows found for {found} of {vocab} words");
    let mut embed = EmbeddingConfig::new(vocab, EMBED).init(&device);
    embed.weight = Param::from_tensor(Tensor::from_data(TensorData::new(table, [vocab, EMBED]), &device));
    let dropout = DropoutConfig::new(0.3).init();
    let head = LinearConfig::new(2 * a.hidden, 1).init(&device);
    let left = a.burn_lstm;
    let train_b: Vec<Batch> = text::buckets(&corpus.train, a.batch).iter().map(|idx| batch(&corpus.train, idx, left)).collect();
    let test_b: Vec<Batch> = text::buckets(&corpus.test, a.batch).iter().map(|idx| batch(&corpus.test, idx, left)).collect();
    let (accs, times) = if a.burn_lstm {
        let mut rnn = BiLstmConfig::new(EMBED, a.hidden, true).init(&device);
        burn_forget_bias(&mut rnn.forward);
        burn_forget_bias(&mut rnn.reverse);
        train(Theirs { embed, dropout, rnn, head }, &a, &train_b, &test_b, &device)
    } else {
        let cfg = RnnConfig::new(Mode::Lstm, EMBED, a.hidden).bidirectional(true);
        let mut w = Weights::<f32>::init_uniform(&cfg, a.seed).unwrap();
        init::forget_bias(&mut w);
        let rnn = FusedRnn::from_weights(&w, false, &device).unwrap();
        train(Ours { embed, dropout, rnn, head }, &a, &train_b, &test_b, &device)
    };
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    println!("final test accuracy {:.4}; mean epoch time {mean:.1} s", accs.last().copied().unwrap_or(0.0));
}
