//! Problems larger than one storage binding are split, not refused (issue 10): the
//! convenience API splits a batch into groups of whole sequences, and a unidirectional stack's
//! sequences into segments of consecutive steps, when one plan would exceed the binding limit.
//! Tested on a fresh Vulkan context with the limit lowered (`Context::set_binding_limit`),
//! against the CPU reference in f64.

use crate::common::{assert_close, rng, uniform};
use crate::gpu_common::vulkan;
use std::ops::Range;
use std::sync::Arc;
use wgpu_rnn::cpu::{self, Pass};
use wgpu_rnn::gpu::{Context, ContextOptions, GpuRnn};
use wgpu_rnn::{Error, Mode, PackedSequence, RnnConfig, Weights};

/// GPU (f32) against CPU (f64): the same kernels as unsplit runs, so the same tolerances
/// (tests/it/gpu.rs); the weight gradients are summed over pieces on the host in f32, and
/// over 5,000 steps they get an allowance relative to their largest element.
const FWD_ATOL: f64 = 5e-5;
const FWD_RTOL: f64 = 5e-4;
const GRAD_ATOL: f64 = 5e-4;
const GRAD_RTOL: f64 = 5e-3;
const WEIGHT_GRAD_OF_MAX: f64 = 1e-4;

/// A Vulkan context of the test's own (lowering its binding limit must not disturb the
/// shared contexts other tests use); `None` where the shared tests skip Vulkan too.
fn fresh_vulkan() -> Option<Arc<Context>> {
    vulkan()?;
    Some(Context::with_options(&ContextOptions { backends: Some(wgpu::Backends::VULKAN), adapter_name: None }).expect("a second Vulkan context"))
}

/// Everything a forward + backward reads back, and how the forward was split.
struct Run {
    output: Vec<f32>,
    /// Per state of the cell: its final value, and its initial value's gradient.
    finals: Vec<Vec<f32>>,
    grad_input: Vec<f32>,
    grad_states0: Vec<Vec<f32>>,
    grad_w: Vec<f32>,
    pieces: Vec<(Range<usize>, Range<usize>)>,
}

/// Inputs of one case, in f64 (for the CPU) and f32 (for the GPU): every state's initial
/// value and final-state gradient given.
struct Case {
    w32: Weights<f32>,
    x64: PackedSequence<f64>,
    x32: PackedSequence<f32>,
    states0: Vec<Vec<f64>>,
    go: Vec<f64>,
    grad_states_n: Vec<Vec<f64>>,
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn some<T>(v: &[Vec<T>]) -> Vec<Option<&[T]>> {
    v.iter().map(|x| Some(&x[..])).collect()
}

impl Case {
    fn new(cfg: RnnConfig, lengths: &[usize], seed: u64) -> Self {
        let mut g = rng(seed);
        let w32 = Weights::<f32>::init_uniform(&cfg, seed).unwrap();
        let (t, b) = (*lengths.iter().max().unwrap(), lengths.len());
        let xpad = uniform(&mut g, t * b * cfg.input_size, 1.0);
        let x64 = PackedSequence::from_padded(&xpad, [t, b, cfg.input_size], false, lengths).unwrap();
        let x32 = x64.with_data(f32s(&x64.data), cfg.input_size).unwrap();
        let sizes: Vec<usize> = cfg.states().iter().map(|s| cfg.state_shape(s, b).iter().product()).collect();
        let states0 = sizes.iter().map(|&e| uniform(&mut g, e, 0.5)).collect();
        let go = uniform(&mut g, x64.rows() * cfg.output_size(), 1.0);
        let grad_states_n = sizes.iter().map(|&e| uniform(&mut g, e, 1.0)).collect();
        Case { w32, x64, x32, states0, go, grad_states_n }
    }

    /// Forward (training) and backward through the convenience API.
    fn run(&self, ctx: &Arc<Context>) -> Run {
        let rnn = GpuRnn::new(ctx, &self.w32).unwrap();
        let s0: Vec<Vec<f32>> = self.states0.iter().map(|v| f32s(v)).collect();
        let (f, tape) = rnn.forward(&self.x32, &some(&s0), Pass::Training).unwrap();
        let tape = tape.unwrap();
        let gsn: Vec<Vec<f32>> = self.grad_states_n.iter().map(|v| f32s(v)).collect();
        let gr = rnn.backward(&tape, &f32s(&self.go), &some(&gsn)).unwrap();
        Run {
            output: f.output.data,
            finals: f.states.into_iter().map(|t| t.data).collect(),
            grad_input: gr.input.data.clone(),
            grad_states0: gr.states.iter().map(|t| t.data.clone()).collect(),
            grad_w: wgpu_rnn::gpu::flat_weights(&gr.params),
            pieces: tape.pieces(),
        }
    }

    /// Compares a run with the CPU reference in f64.
    fn check(&self, label: &str, got: &Run) {
        let w64 = self.w32.cast::<f64>();
        let (f, tape) = cpu::forward(&w64, &self.x64, &some(&self.states0), Pass::Training).unwrap();
        let gr = cpu::backward(&w64, &tape.unwrap(), &self.go, &some(&self.grad_states_n)).unwrap();
        assert_close(&format!("{label}: output"), &f64s(&got.output), &f.output.data, FWD_ATOL, FWD_RTOL);
        let states = w64.config.states();
        assert_eq!((got.finals.len(), got.grad_states0.len()), (states.len(), states.len()), "{label}: states");
        for (i, st) in states.iter().enumerate() {
            assert_close(&format!("{label}: {}_n", st.name), &f64s(&got.finals[i]), &f.states[i].data, FWD_ATOL, FWD_RTOL);
            assert_close(&format!("{label}: grad_{}0", st.name), &f64s(&got.grad_states0[i]), &gr.states[i].data, GRAD_ATOL, GRAD_RTOL);
        }
        assert_close(&format!("{label}: grad_input"), &f64s(&got.grad_input), &gr.input.data, GRAD_ATOL, GRAD_RTOL);
        // Both sides in state_dict order (the GPU's flat gradients back into Weights).
        let mut got_w = Vec::new();
        wgpu_rnn::gpu::weights_from_flat(&self.w32.config, &got.grad_w).unwrap().for_each(|_, _, _, x| got_w.extend(x.iter().map(|&v| v as f64)));
        let mut gw = Vec::new();
        gr.params.for_each(|_, _, _, x| gw.extend_from_slice(x));
        let gw_max = gw.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert_close(&format!("{label}: grad weights"), &got_w, &gw, GRAD_ATOL + WEIGHT_GRAD_OF_MAX * gw_max, GRAD_RTOL);
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Two runs give the same bits (weight gradients are summed over pieces in a fixed order).
fn assert_bitwise_equal(label: &str, a: &Run, b: &Run) {
    assert_eq!(a.pieces, b.pieces, "{label}: the split differs between runs");
    for (name, x, y) in [("output", &a.output, &b.output), ("grad_input", &a.grad_input, &b.grad_input), ("grad_w", &a.grad_w, &b.grad_w)] {
        assert_eq!(bits(x), bits(y), "{label}: {name} differs between runs");
    }
    for (i, (x, y)) in a.finals.iter().zip(&b.finals).chain(a.grad_states0.iter().zip(&b.grad_states0)).enumerate() {
        assert_eq!(bits(x), bits(y), "{label}: state tensor {i} differs between runs");
    }
}

/// Groups of whole sequences taken from `pieces`: (sorted positions, segments of each).
fn groups(pieces: &[(Range<usize>, Range<usize>)]) -> Vec<(usize, usize)> {
    let mut g: Vec<(usize, usize)> = Vec::new();
    for (k, _) in pieces {
        match g.last_mut() {
            Some((start, segs)) if *start == k.start => *segs += 1,
            _ => g.push((k.start, 1)),
        }
    }
    g
}

/// Binding limit of the batch-split cases: B 8, 266 packed rows, H 16, two bidirectional
/// layers. The largest binding is a layer-direction's training tape (LSTM 448 bytes a row,
/// 119 KB for the batch; GRU 384): 60,000 bytes fit about half the rows, so the batch splits
/// into 3 groups (the weights, 37 KB, still fit).
const BATCH_SPLIT_LIMIT: u64 = 60_000;

/// (i) A batch split into groups of whole sequences: LSTM, GRU and two cells on the cell
/// driver (SCRN, LSTM_CIFG), two bidirectional layers, packed variable lengths, every initial
/// state and final-state gradient given; forward and backward against the CPU, and two runs
/// bitwise equal.
#[test]
fn batch_split_into_groups_matches_cpu() {
    let Some(ctx) = fresh_vulkan() else { return };
    let lengths = [24, 60, 14, 60, 2, 38, 50, 18];
    for (k, mode) in [Mode::Lstm, Mode::Gru, Mode::Scrn, Mode::LstmCifg].into_iter().enumerate() {
        let case = Case::new(RnnConfig::new(mode, 5, 16).layers(2).bidirectional(true), &lengths, 3 + k as u64);
        ctx.set_binding_limit(u64::MAX);
        let whole = case.run(&ctx);
        assert_eq!(whole.pieces, vec![(0..8, 0..60)], "{mode}: the batch fits one plan at the device's limit");
        assert_eq!(ctx.set_binding_limit(BATCH_SPLIT_LIMIT), BATCH_SPLIT_LIMIT);
        let a = case.run(&ctx);
        let g = groups(&a.pieces);
        // 2-4 groups for LSTM and GRU; the cell driver keeps more per row (LSTM_CIFG: 5).
        assert!((2..=6).contains(&g.len()) && g.iter().all(|&(_, segs)| segs == 1), "{mode}: pieces {:?}", a.pieces);
        let label = format!("{mode} split into {:?}", a.pieces);
        case.check(&label, &a);
        let b = case.run(&ctx);
        assert_bitwise_equal(&label, &a, &b);
        case.check(&format!("{mode} unsplit"), &whole);
    }
}

/// Binding limit of the time-split case: LSTM H 32, B 2, T 3,000 (5,200 rows): a
/// layer's tape takes 896 bytes a row (4.7 MB for the batch); 1,000,000 bytes cut the sequences
/// into 8 segments, the shorter one (2,200 steps) ending inside the 7th.
const TIME_SPLIT_LIMIT: u64 = 1_000_000;

/// (ii) A unidirectional two-layer LSTM split by time: each segment starts from the states the
/// previous one ended with (both layers), h_n / c_n of the shorter sequence come from the
/// segment holding its last step, and backward hands the initial-state gradients from segment
/// to segment; against the CPU, and two runs bitwise equal.
#[test]
fn long_sequences_split_by_time_match_cpu() {
    let Some(ctx) = fresh_vulkan() else { return };
    let case = Case::new(RnnConfig::new(Mode::Lstm, 4, 32).layers(2), &[3000, 2200], 4);
    ctx.set_binding_limit(TIME_SPLIT_LIMIT);
    let t = std::time::Instant::now();
    let a = case.run(&ctx);
    eprintln!("time split into {} pieces: forward + backward in {:.1} s", a.pieces.len(), t.elapsed().as_secs_f64());
    let g = groups(&a.pieces);
    assert_eq!(g.len(), 1, "the whole batch stays together: {:?}", a.pieces);
    assert!(g[0].1 >= 3, "3+ segments: {:?}", a.pieces);
    // Segments tile the steps in order; the shorter sequence ends strictly inside the split.
    let mut at = 0;
    for (_, steps) in &a.pieces {
        assert_eq!(steps.start, at, "{:?}", a.pieces);
        at = steps.end;
    }
    assert_eq!(at, 3000);
    assert!(a.pieces.iter().any(|(k, s)| k.len() == 2 && s.contains(&2199) && s.end < 3000), "{:?}", a.pieces);
    let label = format!("LSTM T 3000 split into {} segments", a.pieces.len());
    case.check(&label, &a);
    let b = case.run(&ctx);
    assert_bitwise_equal(&label, &a, &b);
}

/// (ii b) The same for two cells on the cell driver (SCRN, LSTM_CIFG), at a shorter length:
/// the binding limit is halved from 1 MB until the stack splits into 3+ time segments.
#[test]
fn cell_driver_sequences_split_by_time_match_cpu() {
    let Some(ctx) = fresh_vulkan() else { return };
    for (k, mode) in [Mode::Scrn, Mode::LstmCifg].into_iter().enumerate() {
        let case = Case::new(RnnConfig::new(mode, 4, 16).layers(2), &[600, 420], 8 + k as u64);
        let mut limit = 1u64 << 20;
        let a = loop {
            ctx.set_binding_limit(limit);
            let run = case.run(&ctx);
            if run.pieces.len() >= 3 || limit < 4096 {
                break run;
            }
            limit /= 2;
        };
        assert!(a.pieces.len() >= 3 && groups(&a.pieces).len() == 1, "{mode}: pieces {:?} at {limit} bytes", a.pieces);
        let label = format!("{mode} T 600 split into {} segments at {limit} bytes", a.pieces.len());
        case.check(&label, &a);
        let b = case.run(&ctx);
        assert_bitwise_equal(&label, &a, &b);
        ctx.set_binding_limit(u64::MAX);
    }
}

/// (iii) Where splitting cannot help, a typed refusal: weights larger than the binding limit,
/// and a bidirectional stack (split by batch only) whose single sequence does not fit.
#[test]
fn refused_where_splitting_cannot_help() {
    let Some(ctx) = fresh_vulkan() else { return };
    // Weights of 37 KB (LSTM I 5 H 16, two bidirectional layers) over a 30,000-byte limit.
    let case = Case::new(RnnConfig::new(Mode::Lstm, 5, 16).layers(2).bidirectional(true), &[24, 60, 14], 5);
    let rnn = GpuRnn::new(&ctx, &case.w32).unwrap();
    ctx.set_binding_limit(30_000);
    for pass in [Pass::Inference, Pass::Training] {
        match rnn.forward(&case.x32, &[], pass) {
            Err(Error::Limit(msg)) => assert!(msg.contains("weights"), "{msg}"),
            other => panic!("weights over the limit: expected Error::Limit, got {:?}", other.map(|(f, _)| f.states[0].shape.clone())),
        }
    }
    assert!(matches!(GpuRnn::new(&ctx, &case.w32), Err(Error::Limit(_))), "uploading weights over the limit");
    // A bidirectional GRU (H 16, weights 12 KB): one sequence of 2,000 steps needs a tape of
    // 768 KB; 100,000 bytes fit neither it nor any group.
    ctx.set_binding_limit(u64::MAX);
    let case = Case::new(RnnConfig::new(Mode::Gru, 3, 16).bidirectional(true), &[2000, 30], 6);
    let rnn = GpuRnn::new(&ctx, &case.w32).unwrap();
    ctx.set_binding_limit(100_000);
    match rnn.forward(&case.x32, &[], Pass::Training) {
        Err(Error::Limit(msg)) => assert!(msg.contains("bidirectional"), "{msg}"),
        other => panic!("bidirectional sequence over the limit: expected Error::Limit, got {:?}", other.map(|(f, _)| f.states[0].shape.clone())),
    }
    // The same unidirectional stack is split by time instead.
    ctx.set_binding_limit(u64::MAX);
    let uni = Case::new(RnnConfig::new(Mode::Gru, 3, 16), &[2000, 30], 6);
    let rnn = GpuRnn::new(&ctx, &uni.w32).unwrap();
    ctx.set_binding_limit(100_000);
    let (_, tape) = rnn.forward(&uni.x32, &[], Pass::Training).unwrap();
    assert!(tape.unwrap().pieces().len() > 1);
}

/// The case at lavapipe's real 128 MiB binding limit: an LSTM H 256 training tape of
/// one layer-direction takes 7,168 bytes a row, so 20,000 steps (143 MB) did not fit one plan.
/// Too slow for every run on a CPU-emulated adapter (lavapipe, 2 cores, 2026-11-30: split into
/// 2 segments, forward + backward 98 s, 125 s with the CPU check): run with `--ignored`.
#[test]
#[ignore = "98 s forward + backward on lavapipe (2 cores): run with --ignored"]
fn lstm_h256_tape_over_the_device_binding_limit_is_split() {
    let Some(ctx) = fresh_vulkan() else { return };
    let case = Case::new(RnnConfig::new(Mode::Lstm, 8, 256), &[20_000], 7);
    let t = std::time::Instant::now();
    let a = case.run(&ctx);
    eprintln!("{} pieces, forward + backward in {:.1} s", a.pieces.len(), t.elapsed().as_secs_f64());
    assert!(a.pieces.len() >= 2, "{:?}", a.pieces);
    case.check("LSTM H 256 T 20,000 at the device's binding limit", &a);
}
