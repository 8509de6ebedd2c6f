//! The GPU path against the golden cases and the CPU reference, on every backend the tests
//! cover (lavapipe through Vulkan, llvmpipe through GL).

use crate::common::{assert_close, golden_cases, rng, uniform, variant_cases};
use crate::gpu_common::{contexts, vulkan};
use rand::Rng;
use std::sync::Arc;
use wgpu::util::DeviceExt;
use wgpu_rnn::case::{tolerance::*, Case};
use wgpu_rnn::cpu::{self, Pass};
use wgpu_rnn::gpu::{BackwardBuffers, Context, ForwardBuffers, GpuRnn, Plan, SeqLayout, StepStrategy};
use wgpu_rnn::io::TensorFile;
use wgpu_rnn::{Error, Mode, PackedSequence, RnnConfig, Weights};

/// GPU (f32) against the CPU reference in f64 on random shapes. Sums run over up to 257
/// terms per step and 12,800 rows per weight gradient, in f32: a few 1e-6 relative per sum.
const GPU_FWD_ATOL: f64 = 5e-5;
const GPU_FWD_RTOL: f64 = 5e-4;
const GPU_GRAD_ATOL: f64 = 5e-4;
const GPU_GRAD_RTOL: f64 = 5e-3;

#[test]
fn golden_cases_on_every_backend() {
    for ctx in contexts() {
        for path in golden_cases() {
            let file = TensorFile::read(&path).unwrap();
            let case = Case::<f32>::from_file(&file).unwrap();
            let got = case.run_gpu(ctx, true).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let report = wgpu_rnn::case::compare(&got, &file, true);
            assert!(report.len() >= 6, "{}: {} tensors compared", path.display(), report.len());
            for m in &report {
                assert_eq!(
                    m.failures, 0,
                    "{} on {}: {} has {}/{} out of tolerance; worst at {}: got {} want {}",
                    path.display(), ctx.describe(), m.name, m.failures, m.total, m.worst.0, m.worst.1, m.worst.2
                );
            }
        }
    }
}

/// Drives a future whose progress needs the device polled (as a browser's event loop does):
/// polls it, then the device, until it is ready. Returns its output, how many times it
/// answered Pending, and how many times its waker was woken.
pub(crate) fn drive<F: std::future::Future>(ctx: &Context, fut: F) -> (F::Output, usize, usize) {
    struct Count(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let count = Arc::new(Count(Default::default()));
    let waker = std::task::Waker::from(count.clone());
    let mut fut = std::pin::pin!(fut);
    for pending in 0..1000 {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut std::task::Context::from_waker(&waker)) {
            return (v, pending, count.0.load(std::sync::atomic::Ordering::SeqCst));
        }
        let _serial = ctx.exclusive();
        ctx.wait().unwrap();
    }
    panic!("the future never completed");
}

/// The non-blocking form the browser runs (`Case::run_gpu_async`: `GpuRnn`'s async forward
/// and backward, `Readback::submit` awaited) gives the golden values of every cell on every
/// backend, and a pending read wakes its task when the device has mapped the results.
#[test]
fn golden_cases_through_the_async_readback() {
    for ctx in contexts() {
        for path in golden_cases().into_iter().chain(variant_cases()) {
            let file = TensorFile::read(&path).unwrap();
            let case = Case::<f32>::from_file(&file).unwrap();
            for backward in [true, false] {
                let (got, _, _) = drive(ctx, case.run_gpu_async(ctx, backward));
                let got = got.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let report = wgpu_rnn::case::compare(&got, &file, backward);
                assert!(report.len() >= if backward { 6 } else { 2 }, "{}: {} tensors compared", path.display(), report.len());
                for m in &report {
                    assert_eq!(m.failures, 0, "{} on {}: {} has {}/{} out of tolerance (worst ratio {})", path.display(), ctx.describe(), m.name, m.failures, m.total, m.worst_ratio);
                }
                if !backward {
                    assert!(got.float("grad_input").is_err(), "{}: a forward-only run returned gradients", path.display());
                }
            }
        }
        // A read of a buffer with known contents. A future that answered Pending must wake its
        // task before it is ready; one may also be ready at the first poll (the device is
        // shared with the other tests, whose polls run the map callbacks too), and then no
        // wake is owed.
        let want: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 7.0).collect();
        let src = wgpu_rnn::gpu::upload(ctx, "async readback source", &want).unwrap();
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        let mut rb = wgpu_rnn::gpu::Readback::new();
        rb.copy(ctx, &mut enc, &src, want.len()).unwrap();
        rb.copy(ctx, &mut enc, &src, 0).unwrap();
        let pending = rb.submit(ctx, enc).unwrap();
        let (got, pendings, woken) = drive(ctx, pending);
        let got = got.unwrap();
        assert_eq!(got, vec![want, vec![]], "{}", ctx.describe());
        assert!(pendings == 0 || woken >= 1, "{}: a read that answered Pending {pendings} times completed without waking its task", ctx.describe());
    }
}

/// Everything one engine run reads back.
pub(crate) struct EngineOut {
    pub output: Vec<f32>,
    pub h_n: Vec<f32>,
    pub c_n: Vec<f32>,
    pub grad_input: Vec<f32>,
    pub grad_h0: Vec<f32>,
    pub grad_c0: Vec<f32>,
    pub grad_w: Vec<f32>,
}

/// The weights in the engine's layout (`gpu::flat_weights`: `state_dict` order for PyTorch's
/// four cells, slot order for the others).
fn flat(w: &Weights<f32>) -> Vec<f32> {
    let v = wgpu_rnn::gpu::flat_weights(w);
    assert_eq!(v.len(), wgpu_rnn::gpu::weight_elems(&w.config));
    v
}

/// Forward + backward through the engine API, over buffers this test owns (in the config's
/// precision), every output buffer pre-filled with NaN so an unwritten element shows. One
/// encoder, one submit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn engine_run(
    ctx: &Arc<Context>,
    strategy: StepStrategy,
    w: &Weights<f32>,
    x: &PackedSequence<f32>,
    h0: Option<&[f32]>,
    c0: Option<&[f32]>,
    go: &[f32],
    ghn: Option<&[f32]>,
    gcn: Option<&[f32]>,
) -> EngineOut {
    engine_run_dx(ctx, strategy, w, x, (h0, c0), go, (ghn, gcn), true)
}

/// [`engine_run`], the backward given the input gradient's buffer only `with_dx` (else
/// `grad_input` is that buffer read back untouched: NaN).
#[allow(clippy::too_many_arguments)]
pub(crate) fn engine_run_dx(
    ctx: &Arc<Context>,
    strategy: StepStrategy,
    w: &Weights<f32>,
    x: &PackedSequence<f32>,
    (h0, c0): (Option<&[f32]>, Option<&[f32]>),
    go: &[f32],
    (ghn, gcn): (Option<&[f32]>, Option<&[f32]>),
    with_dx: bool,
) -> EngineOut {
    let cfg = &w.config;
    let dev = &ctx.device;
    // States 0 and 1 of any cell (h, and LSTM's c or another cell's second state).
    let b = x.batch();
    let elems = cfg.state_elems(b);
    let two = elems.len() > 1;
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let prec = cfg.precision;
    let init = |label: &str, data: &[f32]| {
        let mut bytes = prec.encode(data);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        dev.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(label), contents: &bytes, usage })
    };
    let nan = |label: &str, n: usize| init(label, &vec![f32::NAN; n.max(1)]);
    let hn_len = elems[0];
    let cn_len = elems.get(1).copied().unwrap_or(0);
    let n = x.rows();
    // One thread at a time on a GL context (Context::exclusive; plan creation takes it too).
    let _serial = ctx.exclusive();
    let plan = Plan::with_strategy(ctx, cfg, &SeqLayout::of(x).unwrap(), Pass::Training, strategy).unwrap();
    let wb = init("w", &flat(w));
    let xb = init("x", &x.data);
    let h0b = h0.map(|h| init("h0", h));
    let c0b = c0.map(|c| init("c0", c));
    let out = nan("out", n * cfg.output_size());
    let hn = nan("hn", hn_len);
    let cn = two.then(|| nan("cn", cn_len));
    let gob = init("go", go);
    let ghnb = ghn.map(|g| init("ghn", g));
    let gcnb = gcn.map(|g| init("gcn", g));
    let gi = nan("gi", n * cfg.input_size);
    let gh0 = nan("gh0", hn_len);
    let gc0 = two.then(|| nan("gc0", cn_len));
    let gw = nan("gw", plan.weight_elems());
    let mut enc = dev.create_command_encoder(&Default::default());
    let ns = cfg.states().len();
    let states0 = [h0b.as_ref().map(|b| b.slice(..)), c0b.as_ref().map(|b| b.slice(..))];
    let states_n: Vec<wgpu::BufferSlice<'_>> = std::iter::once(&hn).chain(cn.as_ref()).map(|b| b.slice(..)).collect();
    let grad_states_n = [ghnb.as_ref().map(|b| b.slice(..)), gcnb.as_ref().map(|b| b.slice(..))];
    let grad_states0: Vec<wgpu::BufferSlice<'_>> = std::iter::once(&gh0).chain(gc0.as_ref()).map(|b| b.slice(..)).collect();
    plan.record_forward(&mut enc, &ForwardBuffers { weights: wb.slice(..), input: xb.slice(..), output: out.slice(..), states0: &states0[..ns], states_n: &states_n, counter: None }).unwrap();
    plan.record_backward(
        &mut enc,
        &BackwardBuffers {
            weights: wb.slice(..),
            input: xb.slice(..),
            output: out.slice(..),
            states0: &states0[..ns],
            grad_output: gob.slice(..),
            grad_states_n: &grad_states_n[..ns],
            grad_input: with_dx.then(|| gi.slice(..)),
            grad_states0: &grad_states0,
            grad_weights: gw.slice(..),
            counter: None,
        },
    )
    .unwrap();
    let mut rb = wgpu_rnn::gpu::Readback::new();
    let mut read = |buf: Option<&wgpu::Buffer>, elems: usize| {
        if let Some(buf) = buf {
            rb.copy_stored(ctx, &mut enc, buf, elems, prec).unwrap();
        }
    };
    read(Some(&out), n * cfg.output_size());
    read(Some(&hn), hn_len);
    read(Some(&gi), n * cfg.input_size);
    read(Some(&gh0), hn_len);
    read(Some(&gw), plan.weight_elems());
    read(cn.as_ref(), cn_len);
    read(gc0.as_ref(), cn_len);
    let mut v = rb.submit_and_read(ctx, enc).unwrap().into_iter();
    EngineOut {
        output: v.next().unwrap(),
        h_n: v.next().unwrap(),
        grad_input: v.next().unwrap(),
        grad_h0: v.next().unwrap(),
        grad_w: v.next().unwrap(),
        c_n: v.next().unwrap_or_default(),
        grad_c0: v.next().unwrap_or_default(),
    }
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// A random problem, its GPU run through the engine API (with every step strategy the config
/// supports) and its CPU f64 reference.
fn compare_with_cpu(ctx: &Arc<Context>, cfg: &RnnConfig, lengths: &[usize], seed: u64, with_states: bool) {
    // The loops' limits (Plan::with_strategy): a per-unit step, no zoneout, up to 256 units.
    let single_ok = cfg.mode.unit_step() && cfg.zoneout.is_zero() && cfg.hidden_size <= 256;
    compare_with_cpu_using(ctx, StepStrategy::PerStep, cfg, lengths, seed, with_states);
    if single_ok {
        compare_with_cpu_using(ctx, StepStrategy::SingleDispatch, cfg, lengths, seed, with_states);
    }
}

fn compare_with_cpu_using(ctx: &Arc<Context>, strategy: StepStrategy, cfg: &RnnConfig, lengths: &[usize], seed: u64, with_states: bool) {
    compare_with_cpu_tol(ctx, strategy, cfg, lengths, seed, with_states, Tolerances::DEFAULT);
}

/// Tolerances of a GPU-against-CPU comparison: forward (atol, rtol), gradients (atol, rtol),
/// and for the weight gradients, which sum over every packed row, an extra allowance relative
/// to the largest element (f32 sums of 10^5 rows drift by more than a per-element rtol).
#[derive(Clone, Copy)]
pub(crate) struct Tolerances {
    pub fwd: (f64, f64),
    pub grad: (f64, f64),
    pub weight_grad_of_max: f64,
}

impl Tolerances {
    pub const DEFAULT: Tolerances =
        Tolerances { fwd: (GPU_FWD_ATOL, GPU_FWD_RTOL), grad: (GPU_GRAD_ATOL, GPU_GRAD_RTOL), weight_grad_of_max: 0.0 };
}

/// Runs `cfg` over random packed sequences of `lengths` on the GPU through the engine API with
/// `strategy`, forward and backward, and compares every result with the CPU reference in f64.
pub(crate) fn compare_with_cpu_tol(ctx: &Arc<Context>, strategy: StepStrategy, cfg: &RnnConfig, lengths: &[usize], seed: u64, with_states: bool, tol: Tolerances) {
    let (fwd_atol, fwd_rtol) = tol.fwd;
    let (grad_atol, grad_rtol) = tol.grad;
    let label = format!("{} {strategy:?} {cfg:?} lengths {:?}.. seed {seed}", ctx.describe(), &lengths[..lengths.len().min(6)]);
    let mut g = rng(seed);
    let w32 = Weights::<f32>::init_uniform(cfg, seed).unwrap();
    let w64 = w32.cast::<f64>();
    let (t, b) = (*lengths.iter().max().unwrap(), lengths.len());
    let xpad = uniform(&mut g, t * b * cfg.input_size, 1.0);
    let x64 = PackedSequence::from_padded(&xpad, [t, b, cfg.input_size], false, lengths).unwrap();
    let x32 = x64.with_data(x64.data.iter().map(|&v| v as f32).collect(), cfg.input_size).unwrap();
    let n = x64.rows();
    let elems = cfg.state_elems(b);
    let (hl, cl) = (elems[0], elems.get(1).copied().unwrap_or(0));
    let two = elems.len() > 1;
    let h0 = with_states.then(|| uniform(&mut g, hl, 0.5));
    let c0 = (with_states && two).then(|| uniform(&mut g, cl, 0.5));
    let go = uniform(&mut g, n * cfg.output_size(), 1.0);
    let ghn = with_states.then(|| uniform(&mut g, hl, 1.0));
    let gcn = (with_states && two).then(|| uniform(&mut g, cl, 1.0));
    let f32v = |v: &Option<Vec<f64>>| v.as_ref().map(|v| v.iter().map(|&x| x as f32).collect::<Vec<f32>>());
    let (h0f, c0f, ghnf, gcnf) = (f32v(&h0), f32v(&c0), f32v(&ghn), f32v(&gcn));
    let gof: Vec<f32> = go.iter().map(|&x| x as f32).collect();
    let gpu = engine_run(ctx, strategy, &w32, &x32, h0f.as_deref(), c0f.as_deref(), &gof, ghnf.as_deref(), gcnf.as_deref());

    let (f, tape) = cpu::forward(&w64, &x64, &[h0.as_deref(), c0.as_deref()][..w64.config.states().len()], Pass::Training).unwrap();
    let gr = cpu::backward(&w64, &tape.unwrap(), &go, &[ghn.as_deref(), gcn.as_deref()][..w64.config.states().len()]).unwrap();
    assert_close(&format!("{label}: output"), &to64(&gpu.output), &f.output.data, fwd_atol, fwd_rtol);
    assert_close(&format!("{label}: h_n"), &to64(&gpu.h_n), &f.states[0].data, fwd_atol, fwd_rtol);
    if two {
        assert_close(&format!("{label}: c_n"), &to64(&gpu.c_n), &f.states.get(1).cloned().unwrap().data, fwd_atol, fwd_rtol);
        assert_close(&format!("{label}: grad_c0"), &to64(&gpu.grad_c0), &gr.states.get(1).cloned().unwrap().data, grad_atol, grad_rtol);
    }
    assert_close(&format!("{label}: grad_input"), &to64(&gpu.grad_input), &gr.input.data, grad_atol, grad_rtol);
    assert_close(&format!("{label}: grad_h0"), &to64(&gpu.grad_h0), &gr.states[0].data, grad_atol, grad_rtol);
    // The CPU's weight gradients in the engine's layout.
    let gw = to64(&wgpu_rnn::gpu::flat_weights(&gr.params.cast::<f32>()));
    let gw_max = gw.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert_close(&format!("{label}: grad weights"), &to64(&gpu.grad_w), &gw, grad_atol + tol.weight_grad_of_max * gw_max, grad_rtol);
}

#[test]
fn gpu_matches_cpu_on_awkward_sizes() {
    let sizes = [1usize, 7, 17, 65, 129, 257];
    let mut g = rng(2024);
    for ctx in contexts() {
        // Every awkward size as input and as hidden size, cells and shapes varied.
        for (k, &hs) in sizes.iter().enumerate() {
            let mode = Mode::PYTORCH[k % 4];
            let is = sizes[(k + 3) % sizes.len()];
            // Keep each case's work bounded on a CPU-emulated adapter: ~ T * B * G*H * H.
            let b = if hs >= 129 { g.random_range(1..9) } else { g.random_range(1..65) };
            let t = if hs >= 129 { g.random_range(1..24) } else { g.random_range(1..60) };
            let lengths: Vec<usize> = (0..b).map(|_| g.random_range(1..=t)).collect();
            let cfg = RnnConfig::new(mode, is, hs).bidirectional(k % 2 == 0);
            compare_with_cpu(ctx, &cfg, &lengths, 100 + k as u64, k % 3 != 1);
        }
        // Long sequences, batch 64, two layers, projection.
        compare_with_cpu(ctx, &RnnConfig::new(Mode::Lstm, 7, 17), &[200, 1, 150, 200], 7, true);
        compare_with_cpu(ctx, &RnnConfig::new(Mode::Gru, 17, 7).layers(2), &(1..=64).map(|i| 1 + i % 13).collect::<Vec<_>>(), 8, false);
        compare_with_cpu(ctx, &RnnConfig::new(Mode::Lstm, 9, 20).layers(2).bidirectional(true).proj(7), &[5, 9, 3], 9, true);
        compare_with_cpu(ctx, &RnnConfig::new(Mode::RnnRelu, 5, 33).layers(3).bidirectional(true).bias(false), &[4, 6, 6, 1], 10, true);
        // More rows than one chunk of the weight-gradient GEMMs (k split into dispatches that
        // accumulate): 4,650 rows with hidden 64 (4,096-row chunks), projection 20 (dW_hr).
        let lengths: Vec<usize> = (0..50).map(|i| 70 + i % 50).collect();
        compare_with_cpu(ctx, &RnnConfig::new(Mode::Lstm, 50, 64).proj(20), &lengths, 11, false);
    }
}

#[test]
fn two_identical_runs_are_bitwise_identical() {
    for ctx in contexts() {
        let cfg = RnnConfig::new(Mode::Lstm, 13, 40).layers(2).bidirectional(true);
        let lengths = [9, 3, 12, 12, 1];
        let w = Weights::<f32>::init_uniform(&cfg, 5).unwrap();
        let mut g = rng(6);
        let xpad: Vec<f32> = uniform(&mut g, 12 * 5 * 13, 1.0).into_iter().map(|v| v as f32).collect();
        let x = PackedSequence::from_padded(&xpad, [12, 5, 13], false, &lengths).unwrap();
        let go: Vec<f32> = uniform(&mut g, x.rows() * cfg.output_size(), 1.0).into_iter().map(|v| v as f32).collect();
        for strategy in [StepStrategy::PerStep, StepStrategy::SingleDispatch] {
        let a = engine_run(ctx, strategy, &w, &x, None, None, &go, None, None);
        let b = engine_run(ctx, strategy, &w, &x, None, None, &go, None, None);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        for (name, x, y) in [
            ("output", &a.output, &b.output),
            ("h_n", &a.h_n, &b.h_n),
            ("c_n", &a.c_n, &b.c_n),
            ("grad_input", &a.grad_input, &b.grad_input),
            ("grad_h0", &a.grad_h0, &b.grad_h0),
            ("grad_c0", &a.grad_c0, &b.grad_c0),
            ("grad_w", &a.grad_w, &b.grad_w),
        ] {
            assert!(!x.is_empty());
            assert_eq!(bits(x), bits(y), "{name} differs between runs on {} ({strategy:?})", ctx.describe());
        }
        }
    }
}

#[test]
fn subgroup_kernels_give_the_bits_of_the_kernels_they_replace() {
    // The subgroup twins of the GEMMs (shaders/gemm_subgroup.wgsl) and of the fused stage
    // kernel (shaders/cells/stage_subgroup.wgsl) against the kernels they stand for, on
    // contexts of the test's own (it turns them on and off): products over every edge (a last
    // block of 8 rows in a 16-row one, columns past the last 256, k's odd tail for gemm4t),
    // and training plans (steps of more than 16 rows and fewer; 1, 3 and 4 gates; R read as
    // vec4s and not; a second stage; units past one workgroup; f16), bitwise; and the
    // products against the CPU.
    use wgpu_rnn::gpu::kernels::Kernel;
    use wgpu_rnn::gpu::{MatMul, MatMulDesc};
    // The first element whose bits differ, if any (the vectors are long to print).
    let differs = |x: &[f32], y: &[f32]| (x.len() != y.len()).then_some(usize::MAX).or_else(|| x.iter().zip(y).position(|(a, b)| a.to_bits() != b.to_bits()));
    let (mut checked, mut skipped) = (0, Vec::new());
    for backends in [wgpu::Backends::VULKAN, wgpu::Backends::GL] {
        let Ok(ctx) = Context::with_options(&wgpu_rnn::gpu::ContextOptions { backends: Some(backends), adapter_name: None }) else {
            // The shared contexts fail the run in CI where an adapter is missing.
            continue;
        };
        let info = ctx.adapter_info().clone();
        if !ctx.set_subgroup_kernels(true) {
            // lavapipe has subgroups of 8: it must run them.
            assert!(!(info.backend == wgpu::Backend::Vulkan && info.device_type == wgpu::DeviceType::Cpu), "{}: no subgroup GEMMs", ctx.describe());
            skipped.push(format!("{}: no SUBGROUP or subgroups under 8", ctx.describe()));
            continue;
        }
        let mut g = rng(31);
        // (m, n, k, A transposed, B transposed): gemm44 (A and B vec4), gemm4t (A transposed),
        // gemm4 (k not a multiple of 4), gemm with and without ADJACENT (B transposed; n up
        // to 128 and past it).
        for (m, n, k, trans_a, trans_b) in [
            (40, 260, 12, false, false),
            (24, 8, 4, false, false),
            (1, 4, 8, false, false),
            (40, 260, 7, true, false),
            (8, 4, 1, true, false),
            (48, 516, 33, true, false),
            (40, 260, 7, false, false),
            (17, 12, 50, false, false),
            (40, 50, 9, false, true),
            (25, 130, 6, false, true),
            (19, 300, 3, true, true),
        ] {
            let a: Vec<f32> = uniform(&mut g, m * k, 1.0).into_iter().map(|v| v as f32).collect();
            let b: Vec<f32> = uniform(&mut g, k * n, 1.0).into_iter().map(|v| v as f32).collect();
            let init = |d: &[f32]| ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytemuck::cast_slice(d), usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC });
            let (ab, bb) = (init(&a), init(&b));
            let mut outs = Vec::new();
            for sg in [false, true] {
                assert_eq!(ctx.set_subgroup_kernels(sg), sg);
                let mm = MatMul::new(&ctx, MatMulDesc { m, n, k, trans_a, trans_b, alpha: 1.0, beta: 0.0, bias: false }).unwrap();
                let plain = match (trans_a, trans_b) {
                    (_, true) if n <= 128 => Kernel::GemmNarrow,
                    (_, true) => Kernel::Gemm,
                    (true, false) => Kernel::Gemm4T,
                    (false, false) if k % 4 == 0 => Kernel::Gemm44,
                    (false, false) => Kernel::Gemm4,
                };
                let twin = plain.subgroup_twin().expect("every GEMM kernel has a subgroup twin");
                assert_eq!(mm.kernel(), if sg { twin } else { plain }, "{m}x{n}x{k} trans_a {trans_a} trans_b {trans_b}");
                let cb = init(&vec![f32::NAN; m * n]);
                let mut enc = ctx.device.create_command_encoder(&Default::default());
                mm.record(&mut enc, &ab, &bb, &cb, None, 1).unwrap();
                let mut rb = wgpu_rnn::gpu::Readback::new();
                rb.copy(&ctx, &mut enc, &cb, m * n).unwrap();
                outs.push(rb.submit_and_read(&ctx, enc).unwrap().remove(0));
            }
            let name = format!("{m}x{n}x{k} trans_a {trans_a} trans_b {trans_b} on {}", ctx.describe());
            assert_eq!(differs(&outs[0], &outs[1]), None, "{name}: the first element that differs");
            // And the product itself, against f64 on the CPU.
            let mut want = vec![0f64; m * n];
            for i in 0..m {
                for kk in 0..k {
                    let av = if trans_a { a[kk * m + i] } else { a[i * k + kk] } as f64;
                    for j in 0..n {
                        want[i * n + j] += av * if trans_b { b[j * k + kk] } else { b[kk * n + j] } as f64;
                    }
                }
            }
            let got: Vec<f64> = outs[1].iter().map(|&v| v as f64).collect();
            assert_close(&name, &got, &want, FORWARD_ATOL, FORWARD_RTOL);
        }
        // Training plans: the input projection, dX and the per-step dG R products (gemm44),
        // the weight gradients (gemm4t, k = the rows, odd here), two layers both ways.
        let mut cfgs = vec![
            RnnConfig::new(Mode::Lstm, 12, 10).layers(2).bidirectional(true).proj(6),
            RnnConfig::new(Mode::Gru, 8, 16).layers(2),
            RnnConfig::new(Mode::RnnTanh, 5, 68),
        ];
        if ctx.check_precision(wgpu_rnn::Precision::F16).is_ok() {
            cfgs.push(RnnConfig::new(Mode::Lstm, 8, 6).with_precision(wgpu_rnn::Precision::F16));
        }
        for cfg in cfgs {
            let lengths = [9, 3, 12, 12, 1, 7, 12, 5, 2, 11, 12, 6, 4, 8, 10, 12, 3, 9, 1];
            let w = Weights::<f32>::init_uniform(&cfg, 32).unwrap();
            let xpad: Vec<f32> = uniform(&mut g, 12 * lengths.len() * cfg.input_size, 1.0).into_iter().map(|v| v as f32).collect();
            let x = PackedSequence::from_padded(&xpad, [12, lengths.len(), cfg.input_size], false, &lengths).unwrap();
            let go: Vec<f32> = uniform(&mut g, x.rows() * cfg.output_size(), 1.0).into_iter().map(|v| v as f32).collect();
            let mut runs = Vec::new();
            for sg in [false, true] {
                ctx.set_subgroup_kernels(sg);
                runs.push(engine_run(&ctx, StepStrategy::PerStep, &w, &x, None, None, &go, None, None));
            }
            let (a, b) = (&runs[0], &runs[1]);
            for (what, x, y) in [("output", &a.output, &b.output), ("grad_input", &a.grad_input, &b.grad_input), ("grad_h0", &a.grad_h0, &b.grad_h0), ("grad_w", &a.grad_w, &b.grad_w)] {
                assert!(x.iter().all(|v| v.is_finite()), "{what}");
                assert_eq!(differs(x, y), None, "{} {} {what} on {}: the first element that differs", cfg.mode, cfg.precision, ctx.describe());
            }
        }
        checked += 1;
    }
    crate::gpu_common::require_checked("subgroup_kernels_give_the_bits_of_the_kernels_they_replace", checked, &skipped);
}

#[test]
fn backward_without_the_input_gradient_gives_the_rest_bitwise() {
    // Every cell (SRU and MUT1 add to the input gradient directly), two layers (the inner
    // layer's input gradient is still needed), both directions where the cell allows, per
    // step and in single dispatch: the backward without `grad_input` gives the same bits for
    // everything else and leaves the caller's buffer alone.
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    for ctx in contexts() {
        for &mode in Mode::REGISTRY {
            let mut cfg = RnnConfig::new(mode, 6, 8).layers(2).bidirectional(true);
            if cfg.validate().is_err() {
                cfg = RnnConfig::new(mode, 8, 8).layers(2);
            }
            let lengths = [5, 2, 4];
            let w = Weights::<f32>::init_uniform(&cfg, 21).unwrap();
            let mut g = rng(22);
            let xpad: Vec<f32> = uniform(&mut g, 5 * 3 * cfg.input_size, 1.0).into_iter().map(|v| v as f32).collect();
            let x = PackedSequence::from_padded(&xpad, [5, 3, cfg.input_size], false, &lengths).unwrap();
            let go: Vec<f32> = uniform(&mut g, x.rows() * cfg.output_size(), 1.0).into_iter().map(|v| v as f32).collect();
            for strategy in [StepStrategy::PerStep, StepStrategy::SingleDispatch] {
                // Cells whose step is not one unit's have no single-dispatch loop.
                if strategy == StepStrategy::SingleDispatch && Plan::with_strategy(ctx, &cfg, &SeqLayout::of(&x).unwrap(), Pass::Training, strategy).is_err() {
                    continue;
                }
                let name = format!("{mode} {strategy:?} on {}", ctx.describe());
                let with = engine_run_dx(ctx, strategy, &w, &x, (None, None), &go, (None, None), true);
                let without = engine_run_dx(ctx, strategy, &w, &x, (None, None), &go, (None, None), false);
                assert!(with.grad_input.iter().all(|v| v.is_finite()), "{name}: grad_input");
                assert!(without.grad_input.iter().all(|v| v.is_nan()), "{name}: the caller's grad_input was written");
                for (what, a, b) in [("output", &with.output, &without.output), ("grad_h0", &with.grad_h0, &without.grad_h0), ("grad_c0", &with.grad_c0, &without.grad_c0), ("grad_w", &with.grad_w, &without.grad_w)] {
                    assert!(a.iter().all(|v| v.is_finite()), "{name}: {what}");
                    assert_eq!(bits(a), bits(b), "{name}: {what}");
                }
            }
        }
    }
}

#[test]
fn engine_api_on_a_caller_created_device() {
    // The caller makes the device; the library only wraps it.
    let Some(ours) = vulkan() else { return };
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor { backends: wgpu::Backends::VULKAN, ..wgpu::InstanceDescriptor::new_without_display_handle() });
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    let info = adapter.get_info();
    assert_eq!(info.backend, ours.adapter_info().backend);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .unwrap();
    let ctx = Context::from_device(device.clone(), queue.clone(), Some(info)).unwrap();
    compare_with_cpu(&ctx, &RnnConfig::new(Mode::Gru, 6, 10).bidirectional(true), &[4, 2, 5], 77, true);
    // The context wraps the caller's device and queue, not new ones.
    assert!(ctx.device == device && ctx.queue == queue);
    let (other, _) = pollster::block_on(adapter.request_device(&Default::default())).unwrap();
    assert!(ctx.device != other);
    assert_eq!(ctx.limits().max_storage_buffer_binding_size, device.limits().max_storage_buffer_binding_size);
}

#[test]
fn repeated_calls_do_not_grow_buffer_memory() {
    let Some(_) = vulkan() else { return };
    // A device of its own: the allocator report covers the whole device, and the other tests
    // allocate on the shared one in parallel.
    let opts = wgpu_rnn::gpu::ContextOptions { backends: Some(wgpu::Backends::VULKAN), adapter_name: None };
    let ctx = Context::with_options(&opts).unwrap();
    let cfg = RnnConfig::new(Mode::Lstm, 4, 8);
    let w = Weights::<f32>::init_uniform(&cfg, 1).unwrap();
    let rnn = GpuRnn::new(&ctx, &w).unwrap();
    let xs: Vec<f32> = (0..6 * 3 * 4).map(|i| (i as f32 * 0.37).sin()).collect();
    let x = PackedSequence::from_padded(&xs, [6, 3, 4], false, &[6, 2, 4]).unwrap();
    let go = vec![0.1f32; x.rows() * 8];
    let mut after_first = 0;
    let mut first_result = None;
    // The device allocator's own figure, where the backend reports one (Vulkan does).
    let allocated = || {
        ctx.wait().unwrap();
        ctx.device.generate_allocator_report().map(|r| r.total_allocated_bytes)
    };
    let mut allocated_early = None;
    for i in 0..1000 {
        let (f, tape) = rnn.forward(&x, &[], Pass::Training).unwrap();
        let g = rnn.backward(&tape.unwrap(), &go, &[]).unwrap();
        if i == 0 {
            after_first = ctx.live_buffer_bytes();
            first_result = Some((f.output.data.clone(), g.input.data.clone()));
        }
        if i == 9 {
            allocated_early = allocated();
        }
        if i == 999 {
            let (o, gi) = first_result.clone().unwrap();
            assert_eq!(f.output.data, o);
            assert_eq!(g.input.data, gi);
        }
    }
    assert!(after_first > 0);
    assert_eq!(ctx.live_buffer_bytes(), after_first, "buffer memory grew over 1,000 forward/backward calls");
    match (allocated_early, allocated()) {
        (Some(early), Some(late)) => {
            eprintln!("device allocator: {early} bytes after 10 calls, {late} after 1,000");
            assert!(late <= early, "device allocations grew from {early} to {late} bytes over 990 calls");
        }
        _ => eprintln!("{} gives no allocator report; checked the library's own buffer count only", ctx.describe()),
    }
    let pipelines = ctx.pipeline_count();
    assert!(pipelines > 0 && pipelines <= 12, "pipelines built once each: {pipelines}");
}

#[test]
fn pipeline_cache_and_models_are_shared_across_threads() {
    let Some(ctx) = vulkan() else { return };
    let cfg = RnnConfig::new(Mode::RnnTanh, 3, 5).layers(2);
    let w = Weights::<f32>::init_uniform(&cfg, 3).unwrap();
    let rnn = Arc::new(GpuRnn::new(ctx, &w).unwrap());
    let xs: Vec<f32> = (0..4 * 2 * 3).map(|i| (i as f32 * 0.1).cos()).collect();
    let x = PackedSequence::from_padded(&xs, [4, 2, 3], false, &[4, 3]).unwrap();
    let (want, _) = cpu::forward(&w, &x, &[], Pass::Inference).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (rnn, x) = (rnn.clone(), x.clone());
            std::thread::spawn(move || rnn.forward(&x, &[], Pass::Inference).unwrap().0.output.data)
        })
        .collect();
    for h in handles {
        let got = h.join().unwrap();
        assert_close("threaded forward", &to64(&got), &to64(&want.output.data), FORWARD_ATOL, FORWARD_RTOL);
    }
}

#[test]
fn problems_beyond_the_limits_are_refused_with_a_clear_error() {
    let Some(full) = vulkan() else { return };
    // A device whose storage bindings are capped at 1 MiB.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor { backends: wgpu::Backends::VULKAN, ..wgpu::InstanceDescriptor::new_without_display_handle() });
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    let mut limits = adapter.limits();
    limits.max_storage_buffer_binding_size = 1 << 20;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor { required_limits: limits, ..Default::default() })).unwrap();
    let ctx = Context::from_device(device, queue, Some(full.adapter_info().clone())).unwrap();
    let cfg = RnnConfig::new(Mode::Lstm, 8, 64);
    let w = Weights::<f32>::init_uniform(&cfg, 0).unwrap();
    let rnn = GpuRnn::new(&ctx, &w).unwrap();
    // xp alone is N * 4H * 4 bytes = 2,000 * 256 * 4 = 2 MB > 1 MiB: the engine API refuses
    // the plan; the convenience API splits it (tests/it/splitting.rs) and matches the unsplit
    // run on the uncapped device.
    let x = PackedSequence::from_padded(&vec![0.1f32; 100 * 20 * 8], [100, 20, 8], false, &[100; 20]).unwrap();
    match Plan::new(&ctx, &cfg, &SeqLayout::of(&x).unwrap(), Pass::Inference) {
        Err(Error::Limit(msg)) => assert!(msg.contains("exceeds one binding"), "{msg}"),
        other => panic!("expected a limit error, got {:?}", other.map(|_| ())),
    }
    let (split, _) = rnn.forward(&x, &[], Pass::Inference).unwrap();
    let (whole, _) = GpuRnn::new(full, &w).unwrap().forward(&x, &[], Pass::Inference).unwrap();
    assert_close("split on a 1 MiB device: output", &to64(&split.output.data), &to64(&whole.output.data), GPU_FWD_ATOL, GPU_FWD_RTOL);
    assert_close("split on a 1 MiB device: h_n", &to64(&split.states[0].data), &to64(&whole.states[0].data), GPU_FWD_ATOL, GPU_FWD_RTOL);
}

#[test]
fn engine_api_rejects_wrong_buffers_and_inference_backward() {
    let Some(ctx) = vulkan() else { return };
    let cfg = RnnConfig::new(Mode::Gru, 3, 4);
    let x = PackedSequence::from_padded(&[0.5f32; 2 * 2 * 3], [2, 2, 3], false, &[2, 1]).unwrap();
    let layout = SeqLayout::of(&x).unwrap();
    let plan = Plan::new(ctx, &cfg, &layout, Pass::Inference).unwrap();
    let small = ctx.device.create_buffer(&wgpu::BufferDescriptor { label: None, size: 16, usage: wgpu::BufferUsages::STORAGE, mapped_at_creation: false });
    let big = ctx.device.create_buffer(&wgpu::BufferDescriptor { label: None, size: 4096, usage: wgpu::BufferUsages::STORAGE, mapped_at_creation: false });
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let r = plan.record_forward(&mut enc, &ForwardBuffers { weights: big.slice(..), input: small.slice(..), output: big.slice(..), states0: &[], states_n: &[big.slice(..)], counter: None });
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "input too small");
    let r = plan.record_forward(&mut enc, &ForwardBuffers { weights: big.slice(..), input: big.slice(..), output: big.slice(..), states0: &[Some(big.slice(..)), None], states_n: &[big.slice(..)], counter: None });
    assert!(matches!(r, Err(Error::InvalidConfig(_))), "two initial states for a cell with one");
    let r = plan.record_forward(&mut enc, &ForwardBuffers { weights: big.slice(..), input: big.slice(..), output: big.slice(..), states0: &[], states_n: &[], counter: None });
    assert!(matches!(r, Err(Error::InvalidConfig(_))), "no final-state buffer");
    let r = plan.record_forward(&mut enc, &ForwardBuffers { weights: big.slice(..), input: big.slice(..), output: big.slice(..), states0: &[Some(small.slice(..))], states_n: &[big.slice(..)], counter: None });
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "h0 too small");
    let r = plan.record_forward(&mut enc, &ForwardBuffers { weights: big.slice(..), input: big.slice(..), output: big.slice(..), states0: &[], states_n: &[big.slice(..)], counter: None });
    assert!(matches!(r, Err(Error::BufferAliasing(_))), "output and h_n one buffer: {r:?}");
    // A buffer that cannot be bound as storage is a typed error, not a validation panic.
    let uniform = ctx.device.create_buffer(&wgpu::BufferDescriptor { label: None, size: 4096, usage: wgpu::BufferUsages::UNIFORM, mapped_at_creation: false });
    let hn = ctx.device.create_buffer(&wgpu::BufferDescriptor { label: None, size: 4096, usage: wgpu::BufferUsages::STORAGE, mapped_at_creation: false });
    let r = plan.record_forward(&mut enc, &ForwardBuffers { weights: big.slice(..), input: big.slice(..), output: uniform.slice(..), states0: &[], states_n: &[hn.slice(..)], counter: None });
    assert!(matches!(r, Err(Error::Gpu(_))), "{r:?}");
    let r = plan.record_backward(
        &mut enc,
        &BackwardBuffers {
            weights: big.slice(..), input: big.slice(..), output: big.slice(..), states0: &[], grad_output: big.slice(..), grad_states_n: &[],
            grad_input: Some(big.slice(..)), grad_states0: &[big.slice(..)], grad_weights: big.slice(..), counter: None,
        },
    );
    assert!(matches!(r, Err(Error::NotTraining)));
    assert!(matches!(SeqLayout::new(vec![1, 2], vec![0]), Err(Error::InvalidLengths(_))));
    // NaN input through the convenience API.
    let rnn = GpuRnn::new(ctx, &Weights::<f32>::init_uniform(&cfg, 0).unwrap()).unwrap();
    let mut xn = x.clone();
    xn.data[1] = f32::NAN;
    assert!(matches!(rnn.forward(&xn, &[], Pass::Inference), Err(Error::NonFinite(_))));
    let mut wn = Weights::<f32>::init_uniform(&cfg, 0).unwrap();
    wn.params[0].w_hh[2] = f32::NAN;
    assert!(matches!(GpuRnn::new(ctx, &wn), Err(Error::NonFinite(_))));
}

#[test]
fn dispatch_and_submit_counts() {
    let Some(ctx) = vulkan() else { return };
    // One LSTM layer, T = 50, H = 16, per step: W_x^T (1) + the input projection's GEMM (1) +
    // 50 steps of the product's input copy and the stage kernel (the states' gathers in and
    // out come on top).
    let cfg = RnnConfig::new(Mode::Lstm, 8, 16);
    let layout = SeqLayout::new(vec![4; 50], vec![0, 1, 2, 3]).unwrap();
    let plan = Plan::with_strategy(ctx, &cfg, &layout, Pass::Training, StepStrategy::PerStep).unwrap();
    assert_eq!(plan.forward_dispatches(), 1 + 1 + 50 * 2);
    // Backward: 50 steps of the cell's backward and the product's dv GEMM, then dW_x, its
    // bias, dX, dR and its bias.
    assert_eq!(plan.backward_dispatches(), 50 * 2 + 5);
    // The single-dispatch loops replace the steps' dispatches by one each way (Auto picks
    // them here: 4 rows x 64 x 16 multiply-adds a step).
    let single = Plan::new(ctx, &cfg, &layout, Pass::Training).unwrap();
    assert_eq!(single.forward_dispatches(), 1 + 1 + 1);
    assert_eq!(single.backward_dispatches(), 1 + 5);
}

/// The per-kernel profile (timestamps inside passes) sees every dispatch of a recording: one
/// stage kernel per time step forward, one cell backward per step (and SCRN's kernels per
/// stage and step), with positive times; on an adapter without timestamps inside passes it
/// is a typed error.
#[test]
fn kernel_profile_counts_every_dispatch() {
    use wgpu_rnn::bench::{BenchConfig, GpuRig};
    use wgpu_rnn::gpu::profile::KernelProfile;
    use wgpu_rnn::gpu::StepStrategy;
    let t = 7;
    let c = BenchConfig::parse(&format!("lstm,t={t},b=4,i=8,h=16")).unwrap();
    let (mut checked, mut skipped) = (0, Vec::new());
    for ctx in contexts() {
        let rig = GpuRig::with_strategy(ctx, &c, StepStrategy::PerStep).unwrap();
        if !KernelProfile::supported(ctx) {
            assert!(matches!(rig.profile(false), Err(wgpu_rnn::Error::Unsupported(_))), "{}", ctx.describe());
            skipped.push(format!("{}: no timestamps inside passes", ctx.describe()));
            continue;
        }
        checked += 1;
        let count = |times: &[wgpu_rnn::gpu::profile::KernelTime], entry: &str| -> u32 {
            times.iter().filter(|k| k.kernel.split(' ').next() == Some(entry)).map(|k| k.dispatches).sum()
        };
        // The stage kernel, or its subgroup twin where the context runs that.
        let stages = |times: &[wgpu_rnn::gpu::profile::KernelTime]| count(times, "cell_stage") + count(times, "cell_stage_sg");
        let fwd = rig.profile(false).unwrap();
        assert_eq!(stages(&fwd), t, "{fwd:?}");
        assert!(fwd.iter().all(|k| k.ms >= 0.0) && fwd.iter().map(|k| k.ms).sum::<f64>() > 0.0, "{fwd:?}");
        let train = rig.profile(true).unwrap();
        assert_eq!(stages(&train), t, "{train:?}");
        assert_eq!(count(&train, "cell_backward"), t, "{train:?}");
        // The plan records unprofiled again afterwards.
        rig.run(true).unwrap();
        // SCRN's two stages: per step one stage kernel and one copy of its product's input
        // each; on the single-dispatch loop (which a problem this small takes by itself) one
        // dispatch for all steps.
        let scrn = BenchConfig::parse(&format!("scrn,t={t},b=4,i=8,h=16")).unwrap();
        let per_step = GpuRig::with_strategy(ctx, &scrn, StepStrategy::PerStep).unwrap();
        let fwd = per_step.profile(false).unwrap();
        assert_eq!(stages(&fwd), 2 * t, "{fwd:?}");
        assert_eq!(count(&fwd, "stage_input"), 2 * t, "{fwd:?}");
        let train = per_step.profile(true).unwrap();
        assert_eq!(count(&train, "cell_backward"), 2 * t, "{train:?}");
        let fwd = GpuRig::new(ctx, &scrn).unwrap().profile(false).unwrap();
        assert_eq!((count(&fwd, "cell_loop"), stages(&fwd)), (1, 0), "{fwd:?}");
    }
    crate::gpu_common::require_checked("kernel_profile_counts_every_dispatch", checked, &skipped);
}

