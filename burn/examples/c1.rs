//! C1 (T 50, B 32, I 128, H 256) LSTM through burn on its wgpu runtime: our fused module
//! against burn's own `nn::Lstm`, forward and training (forward, a loss over the output,
//! `backward`), wall-clock medians with burn's device synchronised after each.
//!   cd burn && cargo run --release --example c1 [-- --reps 5]

use burn::nn::LstmConfig;
use burn::tensor::{Device, Distribution, Tensor};
use std::time::Instant;
use wgpu_rnn::Mode;
use wgpu_rnn_burn::FusedRnnConfig;

const T: usize = 50;
const B: usize = 32;
const I: usize = 128;
const H: usize = 256;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn time(reps: usize, device: &Device, mut f: impl FnMut()) -> (f64, f64, f64) {
    f();
    device.sync().unwrap();
    let mut v = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        f();
        device.sync().unwrap();
        v.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let (lo, hi) = (v.iter().cloned().fold(f64::INFINITY, f64::min), v.iter().cloned().fold(0.0, f64::max));
    (median(v), lo, hi)
}

fn main() {
    let reps = std::env::args().skip_while(|a| a != "--reps").nth(1).map(|v| v.parse().unwrap()).unwrap_or(5);
    let (device, ctx) = wgpu_rnn_burn::init_wgpu(Device::wgpu_options()).unwrap();
    println!("adapter: {}; burn 0.22.0, wgpu-rnn-burn; C1 = LSTM T {T}, B {B}, I {I}, H {H}; {reps} reps after one warm-up", ctx.describe());
    let ad = device.clone().autodiff();
    let ours = FusedRnnConfig::new(Mode::Lstm, I, H).init(1, &ad).unwrap();
    let theirs = LstmConfig::new(I, H, true).with_batch_first(false).init(&ad);
    let x = Tensor::<3>::random([T, B, I], Distribution::Uniform(-1.0, 1.0), &ad);
    let r = Tensor::<3>::random([T, B, H], Distribution::Uniform(-1.0, 1.0), &ad);
    let yl = Tensor::<3>::random([T, B, H], Distribution::Uniform(-1.0, 1.0), &ad).require_grad();
    let rows = [
        ("ours (wgpu-rnn fused)", "forward", time(reps, &device, || {
            let _ = ours.forward(x.clone(), None, None).unwrap().output;
        })),
        ("burn nn::Lstm", "forward", time(reps, &device, || {
            let _ = theirs.forward(x.clone(), None).0;
        })),
        ("ours (wgpu-rnn fused)", "training", time(reps, &device, || {
            let y = ours.forward(x.clone(), None, None).unwrap().output;
            let _ = (y * r.clone()).sum().backward();
        })),
        ("burn nn::Lstm", "training", time(reps, &device, || {
            let y = theirs.forward(x.clone(), None).0;
            let _ = (y * r.clone()).sum().backward();
        })),
        // What both training rows share: the loss over a [T, B, H] output and its backward,
        // here over a leaf tensor (no RNN).
        ("loss alone (burn ops)", "training", time(reps, &device, || {
            let _ = (yl.clone() * r.clone()).sum().backward();
        })),
    ];
    println!("{:24} {:9} {:>12} {:>22}", "module", "mode", "median ms", "(min - max)");
    for (who, mode, (m, lo, hi)) in &rows {
        println!("{who:24} {mode:9} {m:12.1} {:>22}", format!("({lo:.1} - {hi:.1})"));
    }
    let ratio = |mode: &str| {
        let get = |w: &str| rows.iter().find(|(a, b, _)| a.starts_with(w) && *b == mode).unwrap().2 .0;
        get("burn") / get("ours")
    };
    println!("burn nn::Lstm / ours: forward {:.2}x, training {:.2}x", ratio("forward"), ratio("training"));
}
