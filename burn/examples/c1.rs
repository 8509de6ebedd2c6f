//! C1 (T 50, B 32, I 128, H 256) LSTM through burn on its wgpu runtime: our fused module
//! against burn's own `nn::Lstm`, forward and training (forward, a loss over the output,
//! `backward`), wall-clock medians with burn's device synchronised after each, ours and
//! burn's in alternated blocks (`time_rounds`).
//!   cd burn && cargo run --release --example c1 [-- --reps 5 --rounds 3]

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

/// Median, min and max of milliseconds.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let (lo, hi) = (v.iter().cloned().fold(f64::INFINITY, f64::min), v.iter().cloned().fold(0.0, f64::max));
    (median(v.to_vec()), lo, hi)
}

/// One call of `f`, synchronised, in milliseconds.
fn once(device: &Device, f: &mut impl FnMut()) -> f64 {
    let t0 = Instant::now();
    f();
    device.sync().unwrap();
    t0.elapsed().as_secs_f64() * 1e3
}

fn time(reps: usize, device: &Device, mut f: impl FnMut()) -> (f64, f64, f64) {
    once(device, &mut f);
    stats(&(0..reps).map(|_| once(device, &mut f)).collect::<Vec<_>>())
}

/// `ours` and `theirs` timed in alternated blocks: `rounds` rounds, each a block of `ours`
/// (one warm-up call, then `reps` timed) and then one of `theirs`, so that each runs warm in
/// its own regime while a slow spell of the machine falls on both alike. Each side's stats
/// over all its timed calls, and the median over the rounds of the ratio of the two blocks'
/// medians, theirs / ours (with each round's ratio).
fn time_rounds(rounds: usize, reps: usize, device: &Device, mut ours: impl FnMut(), mut theirs: impl FnMut()) -> ((f64, f64, f64), (f64, f64, f64), f64, Vec<f64>) {
    let (mut a, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        once(device, &mut ours);
        let ra: Vec<f64> = (0..reps).map(|_| once(device, &mut ours)).collect();
        once(device, &mut theirs);
        let rb: Vec<f64> = (0..reps).map(|_| once(device, &mut theirs)).collect();
        ratios.push(median(rb.clone()) / median(ra.clone()));
        a.extend(ra);
        b.extend(rb);
    }
    (stats(&a), stats(&b), median(ratios.clone()), ratios)
}

fn main() {
    let arg = |name: &str, default: usize| std::env::args().skip_while(|a| a != name).nth(1).map(|v| v.parse().unwrap()).unwrap_or(default);
    let (reps, rounds) = (arg("--reps", 5), arg("--rounds", 3));
    let (device, ctx) = wgpu_rnn_burn::init_wgpu(Device::wgpu_options()).unwrap();
    println!(
        "adapter: {}; subgroup kernels {}; burn 0.22.0, wgpu-rnn-burn; C1 = LSTM T {T}, B {B}, I {I}, H {H}; {rounds} rounds of alternated blocks, each {reps} reps after one warm-up",
        ctx.describe(),
        if ctx.subgroup_kernels() { "on" } else { "off" }
    );
    let ad = device.clone().autodiff();
    let ours = FusedRnnConfig::new(Mode::Lstm, I, H).init(1, &ad).unwrap();
    let theirs = LstmConfig::new(I, H, true).with_batch_first(false).init(&ad);
    let x = Tensor::<3>::random([T, B, I], Distribution::Uniform(-1.0, 1.0), &ad);
    let r = Tensor::<3>::random([T, B, H], Distribution::Uniform(-1.0, 1.0), &ad);
    let yl = Tensor::<3>::random([T, B, H], Distribution::Uniform(-1.0, 1.0), &ad).require_grad();
    let (of, tf, rf, rfs) = time_rounds(
        rounds,
        reps,
        &device,
        || {
            let _ = ours.forward(x.clone(), None, None).unwrap().output;
        },
        || {
            let _ = theirs.forward(x.clone(), None).0;
        },
    );
    // Ours: forward, the loss over the output, backward, from input `xin`.
    let ours_training = |xin: &Tensor<3>| {
        let y = ours.forward(xin.clone(), None, None).unwrap().output;
        let _ = (y * r.clone()).sum().backward();
    };
    let (ot, tt, rt, rts) = time_rounds(
        rounds,
        reps,
        &device,
        || ours_training(&x),
        || {
            let y = theirs.forward(x.clone(), None).0;
            let _ = (y * r.clone()).sum().backward();
        },
    );
    // Ours again with the input tracked (its gradient then computed too, as burn's
    // nn::Lstm would), in blocks alternated with ours untracked.
    let xg = x.clone().require_grad();
    let (_, og, rg, rgs) = time_rounds(rounds, reps, &device, || ours_training(&x), || ours_training(&xg));
    // What both training rows share: the loss over a [T, B, H] output and its backward, here
    // over a leaf tensor (no RNN).
    let loss = time(reps, &device, || {
        let _ = (yl.clone() * r.clone()).sum().backward();
    });
    let rows = [
        ("ours (wgpu-rnn fused)", "forward", of),
        ("burn nn::Lstm", "forward", tf),
        ("ours (wgpu-rnn fused)", "training", ot),
        ("burn nn::Lstm", "training", tt),
        ("ours, input tracked", "training", og),
        ("loss alone (burn ops)", "training", loss),
    ];
    println!("{:24} {:9} {:>12} {:>22}", "module", "mode", "median ms", "(min - max)");
    for (who, mode, (m, lo, hi)) in &rows {
        println!("{who:24} {mode:9} {m:12.1} {:>22}", format!("({lo:.1} - {hi:.1})"));
    }
    let list = |v: &[f64]| v.iter().map(|r| format!("{r:.2}x")).collect::<Vec<_>>().join(", ");
    println!("burn nn::Lstm / ours, median of the rounds' ratios: forward {rf:.2}x ({}), training {rt:.2}x ({})", list(&rfs), list(&rts));
    println!("ours, input tracked / untracked, median of the rounds' ratios: training {rg:.2}x ({})", list(&rgs));
}
