//! Criterion benches. `WGPU_RNN_QUICK=1` shrinks sizes and sample counts for CI-sized runs.
//!
//! `cargo bench --bench rnn` runs: the CPU reference forward (inference) and forward+backward
//! (training) on C1 = LSTM T 50, B 32, I 128, H 256, and a GRU of the same size.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use wgpu_rnn::cpu::{self, Pass};
use wgpu_rnn::{Mode, PackedSequence, RnnConfig, Weights};

fn quick() -> bool {
    std::env::var("WGPU_RNN_QUICK").is_ok_and(|v| v != "0")
}

fn cpu_layer(c: &mut Criterion) {
    let (t, b, i, h) = if quick() { (10, 8, 32, 64) } else { (50, 32, 128, 256) };
    let mut g = c.benchmark_group("cpu_layer");
    if quick() {
        g.sample_size(10);
    }
    for mode in [Mode::Lstm, Mode::Gru] {
        let cfg = RnnConfig::new(mode, i, h);
        let w = Weights::<f32>::init_uniform(&cfg, 0).unwrap();
        let x: Vec<f32> = (0..t * b * i).map(|k| ((k % 97) as f32 / 97.0) - 0.5).collect();
        let x = PackedSequence::from_padded(&x, [t, b, i], false, &vec![t; b]).unwrap();
        let go = vec![0.01f32; x.rows() * cfg.output_size()];
        let name = format!("{mode} T{t} B{b} I{i} H{h}");
        g.bench_function(format!("{name} forward"), |bench| {
            bench.iter(|| black_box(cpu::forward(&w, &x, None, None, Pass::Inference).unwrap()))
        });
        g.bench_function(format!("{name} training"), |bench| {
            bench.iter(|| {
                let (_, tape) = cpu::forward(&w, &x, None, None, Pass::Training).unwrap();
                black_box(cpu::backward(&w, &tape.unwrap(), &go, None, None).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, cpu_layer);
criterion_main!(benches);
