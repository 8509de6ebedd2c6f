// C1 (LSTM T 50, B 32, I 128, H 256) with burn 0.22's nn::Lstm on its wgpu backend (default
// device: lavapipe on the development machine): forward and forward+backward, median of REPS
// (default 10) after 3 warm-ups, each synced by reading a sum back.
use burn::nn::LstmConfig;
use burn::tensor::{Device, Distribution, Tensor};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let (t, b, i, h) = (50, 32, 128, 256);
    let reps: usize = std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let device = Device::wgpu(Default::default());
    {
        let lstm = LstmConfig::new(i, h, true).init(&device);
        let x = Tensor::<3>::random([b, t, i], Distribution::Default, &device);
        let mut v = Vec::new();
        for r in 0..reps + 3 {
            let t0 = Instant::now();
            let (out, _) = lstm.forward(x.clone(), None);
            let _ = out.sum().into_data();
            if r >= 3 {
                v.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        let (m, lo, hi) = median(v);
        println!("burn 0.22 wgpu C1 forward  median {m:.1} ms ({lo:.1} - {hi:.1})");
    }
    {
        let device = device.clone().autodiff();
        let lstm = LstmConfig::new(i, h, true).init(&device);
        let x = Tensor::<3>::random([b, t, i], Distribution::Default, &device).require_grad();
        let mut v = Vec::new();
        for r in 0..reps + 3 {
            let t0 = Instant::now();
            let (out, _) = lstm.forward(x.clone(), None);
            let grads = out.sum().backward();
            let gx = x.grad(&grads).unwrap();
            let _ = gx.sum().into_data();
            device.sync().ok();
            if r >= 3 {
                v.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        let (m, lo, hi) = median(v);
        println!("burn 0.22 wgpu C1 training median {m:.1} ms ({lo:.1} - {hi:.1})");
    }
}
