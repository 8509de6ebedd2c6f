//! Criterion benches, one binary: the CPU path and each GPU kernel family.
//!
//! `cargo bench --bench rnn` (full sizes: C1 = LSTM T 50, B 32, I 128, H 256, and its GRU
//! twin); `WGPU_RNN_QUICK=1 cargo bench --bench rnn` for CI-sized runs. GPU timings use
//! `iter_custom`: record, submit, wait for the device; plans and pipelines are built outside
//! the timed loop. Without an adapter the GPU groups are skipped with a message.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wgpu_rnn::cpu::{self, Pass};
use wgpu_rnn::bench::{BenchConfig, GpuRig};
use wgpu_rnn::gpu::{self, Context, MatMul, MatMulDesc};
use wgpu_rnn::{Mode, PackedSequence, RnnConfig, Weights};

fn quick() -> bool {
    std::env::var("WGPU_RNN_QUICK").is_ok_and(|v| v != "0")
}

/// (T, B, I, H) of the layer benches.
fn shape() -> (usize, usize, usize, usize) {
    if quick() {
        (10, 8, 32, 64)
    } else {
        (50, 32, 128, 256)
    }
}

fn input(t: usize, b: usize, i: usize) -> PackedSequence<f32> {
    let x: Vec<f32> = (0..t * b * i).map(|k| ((k % 97) as f32 / 97.0) - 0.5).collect();
    PackedSequence::from_padded(&x, [t, b, i], false, &vec![t; b]).unwrap()
}

fn configure<'a>(c: &'a mut Criterion, name: &str) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    if quick() {
        g.sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_secs(1));
    }
    g
}

fn cpu_layer(c: &mut Criterion) {
    let (t, b, i, h) = shape();
    let mut g = configure(c, "cpu_layer");
    for mode in [Mode::Lstm, Mode::Gru] {
        let cfg = RnnConfig::new(mode, i, h);
        let w = Weights::<f32>::init_uniform(&cfg, 0).unwrap();
        let x = input(t, b, i);
        let go = vec![0.01f32; x.rows() * cfg.output_size()];
        let name = format!("{mode} T{t} B{b} I{i} H{h}");
        g.bench_function(BenchmarkId::new("forward", &name), |bench| {
            bench.iter(|| black_box(cpu::forward(&w, &x, &[], Pass::Inference).unwrap()))
        });
        g.bench_function(BenchmarkId::new("training", &name), |bench| {
            bench.iter(|| {
                let (_, tape) = cpu::forward(&w, &x, &[], Pass::Training).unwrap();
                black_box(cpu::backward(&w, &tape.unwrap(), &go, &[]).unwrap())
            })
        });
    }
    g.finish();
}

fn context() -> Option<Arc<Context>> {
    match Context::new() {
        Ok(c) => {
            eprintln!("GPU benches on {}", c.describe());
            Some(c)
        }
        Err(e) => {
            eprintln!("skipping GPU benches: {e}");
            None
        }
    }
}

/// Times `iters` runs of `record` + one submit each + device wait.
fn time_gpu(ctx: &Context, iters: u64, mut record: impl FnMut(&mut wgpu::CommandEncoder)) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        record(&mut enc);
        ctx.queue.submit([enc.finish()]);
        ctx.wait().unwrap();
    }
    start.elapsed()
}

fn gpu_gemm(c: &mut Criterion) {
    let Some(ctx) = context() else { return };
    let (m, n, k) = if quick() { (256, 256, 64) } else { (1600, 1024, 128) };
    let mut g = configure(c, "gpu_gemm");
    for (label, trans_a) in [("A B", false), ("A^T B", true)] {
        let mm = MatMul::new(&ctx, MatMulDesc { m, n, k, trans_a, trans_b: false, alpha: 1.0, beta: 0.0, bias: false }).unwrap();
        let a = gpu::upload(&ctx, "a", &vec![0.5; m * k]).unwrap();
        let b = gpu::upload(&ctx, "b", &vec![0.25; k * n]).unwrap();
        let cc = gpu::storage(&ctx, "c", m * n).unwrap();
        g.bench_function(BenchmarkId::new(label, format!("{m}x{n}x{k}")), |bench| {
            bench.iter_custom(|iters| time_gpu(&ctx, iters, |enc| mm.record(enc, &a, &b, &cc, None, 1).unwrap()))
        });
    }
    g.finish();
}

/// One layer forward and forward+backward through the engine API; T = 1 isolates the
/// per-step kernels (plus the fixed per-call dispatches: weight rearrangement, state copies,
/// the input GEMM and the final gathers).
fn gpu_layer(c: &mut Criterion) {
    let Some(ctx) = context() else { return };
    let (t, b, i, h) = shape();
    let mut g = configure(c, "gpu_layer");
    for mode in ["lstm", "gru"] {
        for steps in [1, t] {
            let cfg = BenchConfig::parse(&format!("{mode},t={steps},b={b},i={i},h={h}")).unwrap();
            let rig = GpuRig::new(&ctx, &cfg).unwrap();
            for (label, training) in [("forward", false), ("training", true)] {
                g.bench_function(BenchmarkId::new(label, &cfg.name), |bench| {
                    bench.iter_custom(|iters| time_gpu(&ctx, iters, |enc| rig.record(enc, training).unwrap()))
                });
            }
        }
    }
    g.finish();
}

/// An ONNX LSTM node prepared once (`onnx::OnnxPlan`: X gathered into packed rows, Y, Y_h, Y_c
/// scattered into ONNX's layouts) against the same cell through the engine API (`Plan`, packed
/// buffers), one layer forward at C1 sizes, in one run; and the node with custom activations
/// and clip (the slots' override constants), and reversed (its rows moved in and out).
/// `cargo bench --bench rnn -- onnx_node`.
fn onnx_node(c: &mut Criterion) {
    use wgpu_rnn::cells::{Activation, Function};
    use wgpu_rnn::onnx::{Attributes, Node, OnnxBuffers, OnnxPlan, Op};
    use wgpu_rnn::Tensor;
    let Some(ctx) = context() else { return };
    let (t, b, i, h) = shape();
    let mut g = configure(c, "onnx_node");
    g.sample_size(10);
    let cfg = BenchConfig::parse(&format!("lstm,t={t},b={b},i={i},h={h}")).unwrap();
    let rig = GpuRig::new(&ctx, &cfg).unwrap();
    let name = format!("LSTM T{t} B{b} I{i} H{h}");
    g.bench_function(BenchmarkId::new("engine API Plan", &name), |bench| {
        bench.iter_custom(|iters| time_gpu(&ctx, iters, |enc| rig.record(enc, false).unwrap()))
    });
    let tensor = |shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        Tensor::new(shape, (0..n).map(|k| ((k % 89) as f32 / 89.0 - 0.5) * 0.2).collect()).unwrap()
    };
    let (w, r, bias) = (tensor(vec![1, 4 * h, i]), tensor(vec![1, 4 * h, h]), tensor(vec![1, 8 * h]));
    let mut custom = Attributes::new(Op::Lstm);
    custom.activations = vec![Activation::new(Function::HardSigmoid), Activation::new(Function::Softsign), Activation::new(Function::Tanh)];
    custom.clip = Some(3.0);
    let mut reverse = Attributes::new(Op::Lstm);
    reverse.direction = wgpu_rnn::onnx::Direction::Reverse;
    // The plain node binds X, Y and the states to the plan (ONNX's layout is the packed one
    // here); the reverse node gathers X reversed and scatters Y (RowMoves).
    for (label, attrs) in [("ONNX node (OnnxPlan)", Attributes::new(Op::Lstm)), ("ONNX node, custom activations and clip", custom), ("ONNX node, direction reverse (row moves)", reverse)] {
        let node = Node::new(attrs, &w, &r, Some(&bias), None).unwrap();
        let plan = OnnxPlan::new(&ctx, &node, t, b, None).unwrap();
        let (nx, ns, ny) = plan.sizes();
        let x = gpu::upload(&ctx, "X", &tensor(vec![nx]).data).unwrap();
        let (y, yh, yc) = (gpu::storage(&ctx, "Y", ny).unwrap(), gpu::storage(&ctx, "Y_h", ns).unwrap(), gpu::storage(&ctx, "Y_c", ns).unwrap());
        g.bench_function(BenchmarkId::new(label, &name), |bench| {
            bench.iter_custom(|iters| {
                time_gpu(&ctx, iters, |enc| {
                    let bufs = OnnxBuffers { x: x.slice(..), initial_h: None, initial_c: None, y: Some(y.slice(..)), y_h: Some(yh.slice(..)), y_c: Some(yc.slice(..)) };
                    plan.record(enc, &bufs).unwrap()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, cpu_layer, gpu_gemm, gpu_layer, onnx_node);
criterion_main!(benches);
