//! `wgpu-rnn bench`: the same configurations on the CPU path and on the GPU, inference
//! (forward) and training (forward + backward), timed as medians with min-max, with the GEMM
//! ceiling each device reached in the same run, and optionally PyTorch's figures merged in.

use crate::config::{Mode, RnnConfig};
use crate::cpu::{self, Pass};
use crate::error::{Error, Result};
use crate::gpu::{self, BackwardBuffers, Context, ForwardBuffers, MatMul, MatMulDesc, Plan, SeqLayout, StepStrategy};
use crate::packing::PackedSequence;
use crate::weights::Weights;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One benchmark configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchConfig {
    /// Configuration name (e.g. `C1-LSTM`).
    pub name: String,
    /// The cell.
    pub mode: Mode,
    /// Sequence length `T`.
    pub t: usize,
    /// Batch size `B`.
    pub b: usize,
    /// Input width `I`.
    pub input: usize,
    /// Hidden size `H`.
    pub hidden: usize,
    /// Stacked layers.
    pub layers: usize,
    /// Both directions.
    pub bidirectional: bool,
    /// Equal lengths (`None`) or random lengths in `1..=t` from this seed.
    pub random_lengths: Option<u64>,
    /// PyTorch's dropout between layers (training) and zoneout (`RnnConfig::dropout`,
    /// `RnnConfig::zoneout`).
    pub dropout: crate::masks::Prob,
    /// See [`BenchConfig::dropout`].
    pub zoneout: crate::masks::Prob,
}

impl BenchConfig {
    fn new(name: &str, mode: Mode, t: usize, b: usize, input: usize, hidden: usize) -> Self {
        BenchConfig {
            name: name.into(),
            mode,
            t,
            b,
            input,
            hidden,
            layers: 1,
            bidirectional: false,
            random_lengths: None,
            dropout: crate::masks::Prob::ZERO,
            zoneout: crate::masks::Prob::ZERO,
        }
    }

    /// The model this configuration runs.
    pub fn rnn_config(&self) -> RnnConfig {
        RnnConfig::new(self.mode, self.input, self.hidden).layers(self.layers).bidirectional(self.bidirectional).dropout(self.dropout).zoneout(self.zoneout)
    }

    /// Each sequence's length: all `t`, or random in `1..=t` with the first `t`.
    pub fn lengths(&self) -> Vec<usize> {
        match self.random_lengths {
            None => vec![self.t; self.b],
            Some(seed) => {
                let mut r = rand::rngs::StdRng::seed_from_u64(seed);
                let mut v: Vec<usize> = (0..self.b).map(|_| r.random_range(1..=self.t)).collect();
                v[0] = self.t;
                v
            }
        }
    }

    /// Multiply-adds x 2 of the products, from the cell's description: the input
    /// projection and every stage's product (forward; training counts 3x: forward, dX/dh, dW).
    pub fn flops(&self, training: bool) -> f64 {
        let cfg = self.rnn_config();
        let d = cfg.directions() as f64;
        let rows: f64 = self.lengths().iter().sum::<usize>() as f64;
        let mut total = 0.0;
        for l in 0..self.layers {
            let sizes = cfg.sizes(l);
            let lay = self.mode.layout(sizes);
            let per_row = lay.xp * sizes.input + lay.product_macs();
            total += d * 2.0 * rows * per_row as f64;
        }
        if training {
            3.0 * total
        } else {
            total
        }
    }

    /// Parses `lstm,t=50,b=32,i=128,h=256[,layers=2][,bidir][,lengths=random][,name=X]`.
    pub fn parse(s: &str) -> Result<Self> {
        let mut parts = s.split(',').map(str::trim);
        let mode: Mode = parts.next().unwrap_or("").parse()?;
        let mut c = BenchConfig::new("custom", mode, 50, 32, 128, 256);
        for p in parts {
            let (k, v) = p.split_once('=').unwrap_or((p, "true"));
            let num = || v.parse::<usize>().map_err(|_| Error::InvalidConfig(format!("--config: {k}={v} is not a whole number")));
            match k {
                "t" => c.t = num()?,
                "b" => c.b = num()?,
                "i" | "input" => c.input = num()?,
                "h" | "hidden" => c.hidden = num()?,
                "layers" | "l" => c.layers = num()?,
                "bidir" | "bidirectional" => c.bidirectional = v == "true" || v == "1",
                "lengths" => c.random_lengths = (v == "random").then_some(1),
                "name" => c.name = v.into(),
                "dropout" | "zoneout" => {
                    let p = v.parse::<f32>().map_err(|_| Error::InvalidConfig(format!("--config: {k}={v} is not a number")))?;
                    let p = crate::masks::Prob::new(p)?;
                    if k == "dropout" {
                        c.dropout = p;
                    } else {
                        c.zoneout = p;
                    }
                }
                _ => return Err(Error::InvalidConfig(format!("--config: unknown key {k:?}"))),
            }
        }
        if c.t == 0 || c.b == 0 {
            return Err(Error::EmptyBatch("--config needs t >= 1 and b >= 1".into()));
        }
        if c.name == "custom" {
            c.name = format!("{}-T{}-B{}-I{}-H{}", c.mode, c.t, c.b, c.input, c.hidden);
            if !c.dropout.is_zero() || !c.zoneout.is_zero() {
                c.name += &format!("-drop{}-zone{}", c.dropout.get(), c.zoneout.get());
            }
        }
        c.rnn_config().validate()?;
        Ok(c)
    }
}

/// The default set: Baidu DeepBench's RNN shapes, scaled to finish in a few minutes on a
/// CPU-emulated adapter, plus C1 (LSTM T 50, B 32, I 128, H 256) and its GRU twin.
/// Kept in step with `benches/pytorch_bench.py`.
pub fn default_configs() -> Vec<BenchConfig> {
    use Mode::*;
    vec![
        BenchConfig::new("C1", Lstm, 50, 32, 128, 256),
        BenchConfig::new("DB-LSTM-H256-B16-T150", Lstm, 150, 16, 256, 256),
        BenchConfig::new("DB-LSTM-H512-B16-T25", Lstm, 25, 16, 512, 512),
        BenchConfig::new("DB-LSTM-H512-B32-T25", Lstm, 25, 32, 512, 512),
        BenchConfig::new("DB-LSTM-H512-B64-T25", Lstm, 25, 64, 512, 512),
        BenchConfig::new("DB-GRU-H512-B32-T1", Gru, 1, 32, 512, 512),
        BenchConfig::new("DB-GRU-H512-B32-T187s", Gru, 47, 32, 512, 512),
        BenchConfig::new("DB-RNN-H32-B1-T672", RnnTanh, 672, 1, 32, 32),
        BenchConfig::new("DB-RNN-H64-B1-T96", RnnTanh, 96, 1, 64, 64),
        BenchConfig::new("C1-GRU", Gru, 50, 32, 128, 256),
        // The cells beyond PyTorch's at C1 sizes (I = H = 256 where the cell needs it).
        BenchConfig::new("C1-LSTM_PEEPHOLE", LstmPeephole, 50, 32, 128, 256),
        BenchConfig::new("C1-LSTM_CIFG", LstmCifg, 50, 32, 128, 256),
        BenchConfig::new("C1-GRU_RESET_BEFORE", GruResetBefore, 50, 32, 128, 256),
        BenchConfig::new("C1-LSTM_LAYERNORM", LstmLayerNorm, 50, 32, 128, 256),
        BenchConfig::new("C1-INDRNN", IndRnn, 50, 32, 128, 256),
        BenchConfig::new("C1-SRU", Sru, 50, 32, 256, 256),
        BenchConfig::new("C1-MUT1", Mut1, 50, 32, 256, 256),
        BenchConfig::new("C1-JORDAN", Jordan, 50, 32, 128, 256),
        BenchConfig::new("C1-SCRN", Scrn, 50, 32, 128, 256),
    ]
}

/// One row of results (the JSON record).
#[derive(Clone, Debug)]
pub struct Record {
    /// Configuration name (a GEMM record: its shape).
    pub name: String,
    /// Cell name (empty for a GEMM record).
    pub cell: String,
    /// Sequence length `T`.
    pub t: usize,
    /// Batch size `B`.
    pub b: usize,
    /// Input width `I`.
    pub input: usize,
    /// Hidden size `H`.
    pub hidden: usize,
    /// Stacked layers.
    pub layers: usize,
    /// Both directions.
    pub bidirectional: bool,
    /// `cpu`, `gpu` (or a merged-in source such as PyTorch's).
    pub device: String,
    /// `forward`, `training` or `gemm`.
    pub mode: String,
    /// Median time of one run, milliseconds.
    pub median_ms: f64,
    /// Fastest run, milliseconds.
    pub min_ms: f64,
    /// Slowest run, milliseconds.
    pub max_ms: f64,
    /// Throughput at the median, GFLOP/s.
    pub gflops: f64,
    /// The device's description (adapter, or CPU threads).
    pub adapter: String,
}

impl Record {
    /// The record as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name, "cell": self.cell, "t": self.t, "b": self.b, "input": self.input,
            "hidden": self.hidden, "layers": self.layers, "bidirectional": self.bidirectional,
            "device": self.device, "mode": self.mode, "median_ms": self.median_ms,
            "min_ms": self.min_ms, "max_ms": self.max_ms, "gflops": self.gflops, "adapter": self.adapter,
        })
    }

    /// Reads a record written by [`Record::to_json`]; `InvalidConfig` when `name`, `device` or `mode` is missing.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let s = |k: &str| v[k].as_str().map(String::from).ok_or_else(|| Error::InvalidConfig(format!("record lacks {k}")));
        let u = |k: &str| v[k].as_u64().map(|x| x as usize).unwrap_or(0);
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        Ok(Record {
            name: s("name")?,
            cell: v["cell"].as_str().unwrap_or("").into(),
            t: u("t"),
            b: u("b"),
            input: u("input"),
            hidden: u("hidden"),
            layers: u("layers"),
            bidirectional: v["bidirectional"].as_bool().unwrap_or(false),
            device: s("device")?,
            mode: s("mode")?,
            median_ms: f("median_ms"),
            min_ms: f("min_ms"),
            max_ms: f("max_ms"),
            gflops: f("gflops"),
            adapter: v["adapter"].as_str().unwrap_or("").into(),
        })
    }
}

/// Timing policy: at least `min_reps` repeats after one warm-up, more while under `budget`.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Repeats at least this many times.
    pub min_reps: usize,
    /// Repeats at most this many times.
    pub max_reps: usize,
    /// Keeps repeating (up to `max_reps`) while the total time is under this.
    pub budget: Duration,
}

impl Timing {
    /// 3 to 5 repeats within 300 ms.
    pub fn quick() -> Self {
        Timing { min_reps: 3, max_reps: 5, budget: Duration::from_millis(300) }
    }
    /// 5 to 30 repeats within 2 s.
    pub fn full() -> Self {
        Timing { min_reps: 5, max_reps: 30, budget: Duration::from_secs(2) }
    }
}

/// Median, min, max in ms of `f` under the timing policy.
pub fn time_ms(timing: Timing, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64, f64)> {
    f()?;
    let start = Instant::now();
    let mut v = Vec::new();
    while v.len() < timing.min_reps || (v.len() < timing.max_reps && start.elapsed() < timing.budget) {
        let t0 = Instant::now();
        f()?;
        v.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok((v[v.len() / 2], v[0], v[v.len() - 1]))
}

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0..1.0)).collect()
}

fn record(c: &BenchConfig, device: &str, mode: &str, (med, lo, hi): (f64, f64, f64), adapter: &str) -> Record {
    Record {
        name: c.name.clone(),
        cell: c.mode.as_str().into(),
        t: c.t,
        b: c.b,
        input: c.input,
        hidden: c.hidden,
        layers: c.layers,
        bidirectional: c.bidirectional,
        device: device.into(),
        mode: mode.into(),
        median_ms: med,
        min_ms: lo,
        max_ms: hi,
        gflops: c.flops(mode == "training") / (med * 1e6),
        adapter: adapter.into(),
    }
}

/// The CPU path's two rows (forward, training) for a configuration.
pub fn bench_cpu(c: &BenchConfig, timing: Timing) -> Result<Vec<Record>> {
    let cfg = c.rnn_config();
    let w = Weights::<f32>::init_uniform(&cfg, 0)?;
    let x = PackedSequence::from_padded(&data(c.t * c.b * c.input, 1), [c.t, c.b, c.input], false, &c.lengths())?;
    let go = data(x.rows() * cfg.output_size(), 2);
    let adapter = format!("CPU ({})", cpu_threads());
    let fwd = time_ms(timing, || cpu::forward(&w, &x, &[], Pass::Inference).map(|_| ()))?;
    let train = time_ms(timing, || {
        let (_, tape) = cpu::forward(&w, &x, &[], Pass::Training)?;
        cpu::backward(&w, &tape.expect("training tape"), &go, &[]).map(|_| ())
    })?;
    Ok(vec![record(c, "cpu", "forward", fwd, &adapter), record(c, "cpu", "training", train, &adapter)])
}

/// Threads the CPU path uses, as a label: the time loops split the batch over
/// [`cpu::split::threads`] threads (`MATMUL_NUM_THREADS` when set, else the available
/// parallelism), as do the large f32 GEMMs (`cpu::gemm`); matrixmultiply's (f64 and small
/// products) use `MATMUL_NUM_THREADS` or its default (one per physical core).
pub fn cpu_threads() -> String {
    let loops = cpu::split::threads();
    match cpu::split::env_threads() {
        Some(n) => format!("{loops} time-loop threads, {n} GEMM threads"),
        None => format!("{loops} time-loop threads, GEMM threads = physical cores"),
    }
}

/// One configuration prepared on the GPU over resident buffers (engine API): inference and
/// training plans, weights, input, outputs and gradient buffers. Used by `wgpu-rnn bench` and
/// the criterion benches.
pub struct GpuRig {
    ctx: Arc<Context>,
    rnn: gpu::GpuRnn,
    fwd_plan: Plan,
    train_plan: Plan,
    /// input, output, grad_output, grad_input, grad_weights
    bufs: Vec<gpu::TrackedBuffer>,
    /// Per state: its final value, and its initial value's gradient.
    states_n: Vec<gpu::TrackedBuffer>,
    grad_states0: Vec<gpu::TrackedBuffer>,
}

impl GpuRig {
    /// Prepares configuration `c` on `ctx` with the automatic step strategy.
    pub fn new(ctx: &Arc<Context>, c: &BenchConfig) -> Result<Self> {
        Self::with_strategy(ctx, c, StepStrategy::Auto)
    }

    /// As [`GpuRig::new`] with the forward's step strategy chosen.
    pub fn with_strategy(ctx: &Arc<Context>, c: &BenchConfig, strategy: StepStrategy) -> Result<Self> {
        Self::with_strategy_at(ctx, c, strategy, crate::precision::Precision::F32)
    }

    /// As [`GpuRig::with_strategy`] with every buffer stored in `precision` (f16 needs
    /// `SHADER_F16`).
    pub fn with_strategy_at(ctx: &Arc<Context>, c: &BenchConfig, strategy: StepStrategy, precision: crate::precision::Precision) -> Result<Self> {
        Self::build(ctx, c, strategy, precision)
    }

    fn build(ctx: &Arc<Context>, c: &BenchConfig, strategy: StepStrategy, precision: crate::precision::Precision) -> Result<Self> {
        let cfg = c.rnn_config().with_precision(precision);
        let w = Weights::<f32>::init_uniform(&cfg, 0)?;
        let rnn = gpu::GpuRnn::new(ctx, &w)?;
        let x = PackedSequence::from_padded(&data(c.t * c.b * c.input, 1), [c.t, c.b, c.input], false, &c.lengths())?;
        let layout = SeqLayout::of(&x)?;
        let n = x.rows();
        let fwd_plan = Plan::prepare(ctx, &cfg, &layout, Pass::Inference, 0, strategy)?;
        let train_plan = Plan::prepare(ctx, &cfg, &layout, Pass::Training, 0, strategy)?;
        let st = |label: &str, elems: usize| gpu::storage_at(ctx, label, elems, precision);
        let bufs = vec![
            gpu::upload_stored(ctx, "input", &x.data, precision)?,
            st("output", n * cfg.output_size())?,
            gpu::upload_stored(ctx, "grad_output", &data(n * cfg.output_size(), 2), precision)?,
            st("grad_input", n * cfg.input_size)?,
            st("grad_weights", train_plan.weight_elems())?,
        ];
        let sizes = cfg.state_elems(c.b);
        let states_n = sizes.iter().map(|&e| st("final state", e)).collect::<Result<_>>()?;
        let grad_states0 = sizes.iter().map(|&e| st("initial state gradient", e)).collect::<Result<_>>()?;
        Ok(GpuRig { ctx: ctx.clone(), rnn, fwd_plan, train_plan, bufs, states_n, grad_states0 })
    }

    /// Bytes of device memory the training plan and its buffers hold (workspaces, tapes,
    /// parameter blocks, the weights and the buffers above).
    pub fn training_bytes(&self) -> u64 {
        let mine = self.bufs.iter().chain(&self.states_n).chain(&self.grad_states0).map(|b| b.size()).sum::<u64>();
        self.train_plan.workspace_bytes() + self.rnn.weights_buffer().size() + mine
    }

    /// Records a forward (or a training forward and backward) into `enc`.
    pub fn record(&self, enc: &mut wgpu::CommandEncoder, training: bool) -> Result<()> {
        let b = &self.bufs;
        let states_n: Vec<wgpu::BufferSlice<'_>> = self.states_n.iter().map(|b| b.slice(..)).collect();
        let grad_states0: Vec<wgpu::BufferSlice<'_>> = self.grad_states0.iter().map(|b| b.slice(..)).collect();
        let weights = self.rnn.weights_buffer().slice(..);
        let fb = ForwardBuffers { weights, input: b[0].slice(..), output: b[1].slice(..), states0: &[], states_n: &states_n, counter: None };
        if !training {
            return self.fwd_plan.record_forward(enc, &fb);
        }
        self.train_plan.record_forward(enc, &fb)?;
        self.train_plan.record_backward(
            enc,
            &BackwardBuffers {
                weights,
                input: b[0].slice(..),
                output: b[1].slice(..),
                states0: &[],
                grad_output: b[2].slice(..),
                grad_states_n: &[],
                grad_input: Some(b[3].slice(..)),
                grad_states0: &grad_states0,
                grad_weights: b[4].slice(..),
                counter: None,
            },
        )
    }

    /// One recording with a timestamp around every dispatch: GPU time per kernel, slowest
    /// first (see `gpu::profile`; fails where the adapter has no timestamps inside passes).
    pub fn profile(&self, training: bool) -> Result<Vec<gpu::profile::KernelTime>> {
        let prof = Arc::new(gpu::profile::KernelProfile::new(&self.ctx)?);
        let plan = if training { &self.train_plan } else { &self.fwd_plan };
        plan.set_profile(Some(prof.clone()));
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        let recorded = self.record(&mut enc, training);
        plan.set_profile(None);
        recorded?;
        prof.resolve(&mut enc);
        self.ctx.queue.submit([enc.finish()]);
        prof.read()
    }

    /// Records, submits once and waits for the device.
    pub fn run(&self, training: bool) -> Result<()> {
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        self.record(&mut enc, training)?;
        self.ctx.queue.submit([enc.finish()]);
        self.ctx.wait()
    }
}

/// The GPU's two rows, timed over the engine API ([`Plan`], every cell) on resident buffers:
/// record, one submit, wait for the device. Uploads and readbacks are outside the timed loop.
pub fn bench_gpu(ctx: &Arc<Context>, c: &BenchConfig, timing: Timing, strategy: StepStrategy) -> Result<Vec<Record>> {
    bench_gpu_at(ctx, c, timing, strategy, crate::precision::Precision::F32)
}

/// [`bench_gpu`]'s rows with every buffer stored in `precision`: device `gpu` for f32,
/// `gpu-f16` for f16, the training plan's device memory in the adapter column.
pub fn bench_gpu_at(ctx: &Arc<Context>, c: &BenchConfig, timing: Timing, strategy: StepStrategy, precision: crate::precision::Precision) -> Result<Vec<Record>> {
    let rig = GpuRig::with_strategy_at(ctx, c, strategy, precision)?;
    let device = match precision {
        crate::precision::Precision::F32 => "gpu".to_string(),
        p => format!("gpu-{p}"),
    };
    let adapter = format!("{}; training memory {:.1} MiB", ctx.describe(), rig.training_bytes() as f64 / (1 << 20) as f64);
    let fwd = time_ms(timing, || rig.run(false))?;
    let train = time_ms(timing, || rig.run(true))?;
    Ok(vec![record(c, &device, "forward", fwd, &adapter), record(c, &device, "training", train, &adapter)])
}

/// Per-kernel GPU time of a configuration's forward and training, as printable lines.
pub fn profile_gpu(ctx: &Arc<Context>, c: &BenchConfig, strategy: StepStrategy) -> Result<String> {
    let rig = GpuRig::with_strategy(ctx, c, strategy)?;
    rig.run(true)?; // warm-up
    let mut out = String::new();
    for training in [false, true] {
        let times = rig.profile(training)?;
        let total: f64 = times.iter().map(|k| k.ms).sum();
        out += &format!("{} {} on {}: {total:.2} ms in dispatches\n", c.name, if training { "training" } else { "forward" }, ctx.describe());
        for k in &times {
            out += &format!("  {:>9.3} ms {:>5.1}%  {:>5} x  {}\n", k.ms, 100.0 * k.ms / total.max(1e-9), k.dispatches, k.kernel);
        }
    }
    Ok(out)
}

fn gemm_record(device: &str, adapter: &str, (m, n, k): (usize, usize, usize), t: (f64, f64, f64)) -> Record {
    Record {
        name: format!("GEMM {m}x{n}x{k}"),
        cell: String::new(),
        t: 0,
        b: 0,
        input: k,
        hidden: n,
        layers: 0,
        bidirectional: false,
        device: device.into(),
        mode: "gemm".into(),
        median_ms: t.0,
        min_ms: t.1,
        max_ms: t.2,
        gflops: 2.0 * (m * n * k) as f64 / (t.0 * 1e6),
        adapter: adapter.into(),
    }
}

/// GEMM shapes the ceiling is measured on: the input projection of C1 and a square one.
pub const GEMM_SHAPES: [(usize, usize, usize); 2] = [(1600, 1024, 128), (1024, 1024, 1024)];

/// The best GEMM GFLOP/s of the CPU path (`cpu::gemm`, the engine's own f32 GEMM) over [`GEMM_SHAPES`].
pub fn bench_cpu_gemm(timing: Timing) -> Result<Record> {
    let mut best: Option<Record> = None;
    for (m, n, k) in GEMM_SHAPES {
        let a = data(m * k, 3);
        let b = data(k * n, 4);
        let mut c = vec![0f32; m * n];
        let t = time_ms(timing, || {
            cpu::gemm::gemm(1.0, cpu::gemm::Mat::new(&a, m, k), cpu::gemm::Op::N, cpu::gemm::Mat::new(&b, k, n), cpu::gemm::Op::N, 0.0, &mut c, n);
            Ok(())
        })?;
        let r = gemm_record("cpu", &format!("CPU ({})", cpu_threads()), (m, n, k), t);
        if best.as_ref().is_none_or(|b| r.gflops > b.gflops) {
            best = Some(r);
        }
    }
    Ok(best.expect("shapes"))
}

/// The best GEMM GFLOP/s of the library's GPU kernel over [`GEMM_SHAPES`] (several products
/// per submit, so the figure is the kernel's, not the submit's).
pub fn bench_gpu_gemm(ctx: &Arc<Context>, timing: Timing) -> Result<Record> {
    let mut best: Option<Record> = None;
    for (m, n, k) in GEMM_SHAPES {
        let mm = MatMul::new(ctx, MatMulDesc { m, n, k, trans_a: false, trans_b: false, alpha: 1.0, beta: 0.0, bias: false })?;
        let a = gpu::upload(ctx, "a", &data(m * k, 3))?;
        let b = gpu::upload(ctx, "b", &data(k * n, 4))?;
        let c = gpu::storage(ctx, "c", m * n)?;
        let reps = 4;
        let t = time_ms(timing, || {
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            mm.record(&mut enc, &a, &b, &c, None, reps)?;
            ctx.queue.submit([enc.finish()]);
            ctx.wait()
        })?;
        let per = (t.0 / reps as f64, t.1 / reps as f64, t.2 / reps as f64);
        let r = gemm_record("gpu", &ctx.describe(), (m, n, k), per);
        if best.as_ref().is_none_or(|b| r.gflops > b.gflops) {
            best = Some(r);
        }
    }
    Ok(best.expect("shapes"))
}

/// Prints the table: one line per record; "of GEMM" is the row's GFLOP/s as a share of its
/// device's GEMM ceiling in the same run, "vs cpu" the CPU path's median divided by the row's
/// (the GPU/CPU speedup on GPU rows; PyTorch's advantage over our CPU path on its rows).
pub fn format_table(records: &[Record]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<24} {:<8} {:>4} {:>3} {:>4} {:>4} {:>2}{:1} {:<14} {:<9} {:>10} {:>21} {:>8} {:>7} {:>9}",
        "config", "cell", "T", "B", "I", "H", "L", "", "device", "mode", "median ms", "(min - max)", "GFLOP/s", "of GEMM", "vs cpu"
    );
    let ceiling = |dev: &str| records.iter().find(|r| r.mode == "gemm" && r.device == dev).map(|r| r.gflops);
    for r in records {
        if r.mode == "gemm" {
            let _ = writeln!(s, "{:<52} {:<14} {:<9} {:>10.3} {:>21} {:>8.1}", r.name, r.device, r.mode, r.median_ms, format!("({:.3} - {:.3})", r.min_ms, r.max_ms), r.gflops);
            continue;
        }
        let speed = if r.device != "cpu" {
            records
                .iter()
                .find(|c| c.device == "cpu" && c.name == r.name && c.mode == r.mode)
                .map(|c| format!("{:.2}x", c.median_ms / r.median_ms))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let of = ceiling(&r.device).map(|g| format!("{:.0}%", 100.0 * r.gflops / g)).unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<24} {:<8} {:>4} {:>3} {:>4} {:>4} {:>2}{:1} {:<14} {:<9} {:>10.3} {:>21} {:>8.1} {:>7} {:>9}",
            r.name,
            r.cell,
            r.t,
            r.b,
            r.input,
            r.hidden,
            r.layers,
            if r.bidirectional { "b" } else { "" },
            r.device,
            r.mode,
            r.median_ms,
            format!("({:.3} - {:.3})", r.min_ms, r.max_ms),
            r.gflops,
            of,
            speed
        );
    }
    s
}
