//! Reliability of the GPU host layer: a tape handed to a model on another context, one buffer
//! bound to two roles of an engine-API recording, bounded waits on the device, and a lost
//! device. Each gives a typed error: never a panic, an abort or a hang.

use crate::common::assert_close;
use crate::gpu_common::contexts;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wgpu::util::DeviceExt;
use wgpu_rnn::case::tolerance::{FORWARD_ATOL, FORWARD_RTOL, GRAD_ATOL, GRAD_RTOL};
use wgpu_rnn::cpu::{self, Pass};
use wgpu_rnn::gpu::train::{read_f32, LinearShape, OpBuilder, Optimizer, OptimizerKind, ParamGroup};
use wgpu_rnn::gpu::{
    storage, upload, BackwardBuffers, Context, ContextOptions, ForwardBuffers, GpuRnn, Plan, Readback, SeqLayout,
};
use wgpu_rnn::{Error, Mode, PackedSequence, RnnConfig, Weights};

/// How long a call may take in these tests before it counts as a hang (the library's own
/// waits are bounded by the context's wait timeout, far below this in the tests that set it).
const HANG_LIMIT: Duration = Duration::from_secs(120);

/// Runs `f` on another thread and fails the test if it has not returned within `limit`
/// (a hang is a failure, not a stuck test run); a panic inside `f` fails the test too.
fn within<T: Send + 'static>(what: &str, limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            handle.join().unwrap();
            v
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no result after {limit:?} (hang)"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
    }
}

/// A context of its own on `backend` (tests that change or destroy a context must not touch
/// the shared ones). `None` where the shared contexts have no such backend either.
fn fresh(backend: wgpu::Backend) -> Option<Arc<Context>> {
    contexts().iter().find(|c| c.adapter_info().backend == backend)?;
    let backends = match backend {
        wgpu::Backend::Vulkan => wgpu::Backends::VULKAN,
        wgpu::Backend::Gl => wgpu::Backends::GL,
        other => panic!("no test contexts on {other:?}"),
    };
    Some(Context::with_options(&ContextOptions { backends: Some(backends), adapter_name: None }).expect("a second context on an adapter that has one"))
}

/// A GL context of its own for a GL-only test; `None` (the test says it skips) where the
/// shared contexts have no GL (under `CI=true` they fail the run instead).
fn fresh_gl(test: &str) -> Option<Arc<Context>> {
    let ctx = fresh(wgpu::Backend::Gl);
    if ctx.is_none() {
        crate::common::skip(&format!("{test}: no GL context"));
    }
    ctx
}

/// The backends the shared test contexts cover.
fn backends() -> Vec<wgpu::Backend> {
    contexts().iter().map(|c| c.adapter_info().backend).collect()
}

fn packed(t: usize, b: usize, i: usize, lengths: &[usize]) -> PackedSequence<f32> {
    let xs: Vec<f32> = (0..t * b * i).map(|k| (k as f32 * 0.37).sin()).collect();
    PackedSequence::from_padded(&xs, [t, b, i], false, lengths).unwrap()
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn flat(w: &Weights<f32>) -> Vec<f32> {
    let mut v = Vec::new();
    w.for_each(|_, _, _, x| v.extend_from_slice(x));
    assert_eq!(v.len(), wgpu_rnn::gpu::weight_elems(&w.config));
    v
}

#[test]
fn backward_with_a_tape_from_another_context_is_a_typed_error() {
    for backend in backends() {
        let home = fresh(backend).unwrap();
        let cfg = RnnConfig::new(Mode::Lstm, 3, 4);
        let w = Weights::<f32>::init_uniform(&cfg, 5).unwrap();
        let x = packed(3, 2, 3, &[3, 2]);
        let go: Vec<f32> = (0..x.rows() * 4).map(|k| (k as f32 * 0.11).cos()).collect();
        let ours = GpuRnn::new(&home, &w).unwrap();
        let (_, tape) = ours.forward(&x, &[], Pass::Training).unwrap();
        let tape = tape.unwrap();
        // Same config and weights, other contexts: one on the same backend, and one on every
        // other backend the tests cover.
        for other_backend in backends() {
            let other = fresh(other_backend).unwrap();
            let theirs = GpuRnn::new(&other, &w).unwrap();
            match theirs.backward(&tape, &go, &[]) {
                Err(Error::TapeMismatch(msg)) => assert!(msg.contains("context"), "{msg}"),
                r => panic!("tape from {backend:?} on a {other_backend:?} model: expected TapeMismatch, got {:?}", r.map(|_| ())),
            }
        }
        // The tape still works with its own model, and the gradients are right.
        let got = ours.backward(&tape, &go, &[]).unwrap();
        let (_, ct) = cpu::forward(&w, &x, &[], Pass::Training).unwrap();
        let want = cpu::backward(&w, &ct.unwrap(), &go, &[]).unwrap();
        assert_close("grad input", &to64(&got.input.data), &to64(&want.input.data), GRAD_ATOL, GRAD_RTOL);
        assert_close("grad h0", &to64(&got.states[0].data), &to64(&want.states[0].data), GRAD_ATOL, GRAD_RTOL);
    }
}

/// The caller's buffers of an LSTM engine-API problem, each its own buffer.
struct EngineBufs {
    w: wgpu::Buffer,
    x: wgpu::Buffer,
    out: wgpu::Buffer,
    h0: wgpu::Buffer,
    c0: wgpu::Buffer,
    hn: wgpu::Buffer,
    cn: wgpu::Buffer,
    go: wgpu::Buffer,
    ghn: wgpu::Buffer,
    gcn: wgpu::Buffer,
    gi: wgpu::Buffer,
    gh0: wgpu::Buffer,
    gc0: wgpu::Buffer,
    gw: wgpu::Buffer,
}

impl EngineBufs {
    /// Every buffer as large as the largest role needs, so only aliasing can be wrong.
    fn new(ctx: &Context, weights: &[f32], x: &[f32], states: &[f32], elems: usize) -> Self {
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let init = |label: &str, data: &[f32]| {
            let mut v = data.to_vec();
            v.resize(elems, 0.0);
            ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(label), contents: bytemuck::cast_slice(&v), usage })
        };
        let nan = |label: &str| init(label, &vec![f32::NAN; elems]);
        EngineBufs {
            w: init("w", weights),
            x: init("x", x),
            out: nan("out"),
            h0: init("h0", states),
            c0: init("c0", states),
            hn: nan("hn"),
            cn: nan("cn"),
            go: init("go", &vec![0.25; elems]),
            ghn: init("ghn", &vec![0.5; elems]),
            gcn: init("gcn", &vec![-0.5; elems]),
            gi: nan("gi"),
            gh0: nan("gh0"),
            gc0: nan("gc0"),
            gw: nan("gw"),
        }
    }

    /// A forward's roles: output, [h0, c0], [h_n, c_n].
    fn forward<'a>(&'a self, output: wgpu::BufferSlice<'a>, states0: &'a [Option<wgpu::BufferSlice<'a>>], states_n: &'a [wgpu::BufferSlice<'a>]) -> ForwardBuffers<'a> {
        ForwardBuffers { weights: self.w.slice(..), input: self.x.slice(..), output, states0, states_n, counter: None }
    }

    /// A backward's roles: grad_input, grad_weights, [grad_h0, grad_c0]; the rest fixed.
    #[allow(clippy::too_many_arguments)]
    fn backward<'a>(&'a self, states0: &'a [Option<wgpu::BufferSlice<'a>>], grad_states_n: &'a [Option<wgpu::BufferSlice<'a>>], grad_input: wgpu::BufferSlice<'a>, grad_weights: wgpu::BufferSlice<'a>, grad_states0: &'a [wgpu::BufferSlice<'a>]) -> BackwardBuffers<'a> {
        BackwardBuffers { weights: self.w.slice(..), input: self.x.slice(..), output: self.out.slice(..), states0, grad_output: self.go.slice(..), grad_states_n, grad_input: Some(grad_input), grad_states0, grad_weights, counter: None }
    }
}

/// Finishes and submits `enc` inside a validation scope: `None` when wgpu found nothing wrong.
fn finish_in_scope(ctx: &Context, enc: wgpu::CommandEncoder) -> Option<String> {
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    ctx.queue.submit([enc.finish()]);
    pollster::block_on(scope.pop()).map(|e| e.to_string())
}

#[test]
fn engine_api_refuses_a_buffer_bound_to_two_roles_where_one_is_written() {
    for ctx in contexts() {
        let cfg = RnnConfig::new(Mode::Lstm, 3, 4);
        let w = Weights::<f32>::init_uniform(&cfg, 9).unwrap();
        let x = packed(3, 2, 3, &[3, 2]);
        let plan = Plan::new(ctx, &cfg, &SeqLayout::of(&x).unwrap(), Pass::Training).unwrap();
        let _serial = ctx.exclusive();
        let states: Vec<f32> = (0..2 * 4).map(|k| 0.1 * k as f32 - 0.3).collect();
        let elems = plan.weight_elems().max(x.rows() * 4).max(x.data.len());
        let bufs = EngineBufs::new(ctx, &flat(&w), &x.data, &states, elems);
        let mut enc = ctx.device.create_command_encoder(&Default::default());

        let b = &bufs;
        let s0 = [Some(b.h0.slice(..)), Some(b.c0.slice(..))];
        // (what, output, [h0, c0], [h_n, c_n])
        let forward_cases: [(&str, wgpu::BufferSlice<'_>, [Option<wgpu::BufferSlice<'_>>; 2], [wgpu::BufferSlice<'_>; 2]); 6] = [
            ("output = input", b.x.slice(..), s0, [b.hn.slice(..), b.cn.slice(..)]),
            ("h_n = output", b.out.slice(..), s0, [b.out.slice(..), b.cn.slice(..)]),
            ("c_n = h_n", b.out.slice(..), s0, [b.hn.slice(..), b.hn.slice(..)]),
            ("h_n = weights", b.out.slice(..), s0, [b.w.slice(..), b.cn.slice(..)]),
            ("c_n = h0", b.out.slice(..), s0, [b.hn.slice(..), b.h0.slice(..)]),
            ("output = c0", b.c0.slice(..), s0, [b.hn.slice(..), b.cn.slice(..)]),
        ];
        for (what, output, states0, states_n) in forward_cases {
            match plan.record_forward(&mut enc, &b.forward(output, &states0, &states_n)) {
                Err(Error::BufferAliasing(msg)) => eprintln!("{what}: {msg}"),
                r => panic!("forward with {what}: expected BufferAliasing, got {r:?}"),
            }
        }
        let gsn = [Some(b.ghn.slice(..)), Some(b.gcn.slice(..))];
        // (what, grad_input, grad_weights, [grad_h0, grad_c0])
        let backward_cases: [(&str, wgpu::BufferSlice<'_>, wgpu::BufferSlice<'_>, [wgpu::BufferSlice<'_>; 2]); 7] = [
            ("grad_input = grad_output", b.go.slice(..), b.gw.slice(..), [b.gh0.slice(..), b.gc0.slice(..)]),
            ("grad_weights = weights", b.gi.slice(..), b.w.slice(..), [b.gh0.slice(..), b.gc0.slice(..)]),
            ("grad_h0 = h0", b.gi.slice(..), b.gw.slice(..), [b.h0.slice(..), b.gc0.slice(..)]),
            ("grad_c0 = grad_h0", b.gi.slice(..), b.gw.slice(..), [b.gh0.slice(..), b.gh0.slice(..)]),
            ("grad_input = output", b.out.slice(..), b.gw.slice(..), [b.gh0.slice(..), b.gc0.slice(..)]),
            ("grad_h0 = grad_c_n", b.gi.slice(..), b.gw.slice(..), [b.gcn.slice(..), b.gc0.slice(..)]),
            ("grad_weights = input", b.gi.slice(..), b.x.slice(..), [b.gh0.slice(..), b.gc0.slice(..)]),
        ];
        for (what, gi, gw, gs0) in backward_cases {
            match plan.record_backward(&mut enc, &b.backward(&s0, &gsn, gi, gw, &gs0)) {
                Err(Error::BufferAliasing(msg)) => eprintln!("{what}: {msg}"),
                r => panic!("backward with {what}: expected BufferAliasing, got {r:?}"),
            }
        }
        // Nothing was recorded by the refused calls: the encoder finishes cleanly.
        assert_eq!(finish_in_scope(ctx, enc), None, "{}", ctx.describe());

        // Read-only roles may share a buffer: h0 and c0 from one buffer, and grad_h_n from
        // the same values; the results match the CPU given the same values twice.
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        plan.record_forward(&mut enc, &bufs.forward(bufs.out.slice(..), &[Some(bufs.h0.slice(..)), Some(bufs.h0.slice(..))], &[bufs.hn.slice(..), bufs.cn.slice(..)])).unwrap();
        let mut rb = Readback::new();
        rb.copy(ctx, &mut enc, &bufs.out, x.rows() * 4).unwrap();
        rb.copy(ctx, &mut enc, &bufs.cn, 2 * 4).unwrap();
        let got = rb.submit_and_read(ctx, enc).unwrap();
        let (want, _) = cpu::forward(&w, &x, &[Some(&states), Some(&states)], Pass::Inference).unwrap();
        assert_close("output (h0 and c0 one buffer)", &to64(&got[0]), &to64(&want.output.data), FORWARD_ATOL, FORWARD_RTOL);
        assert_close("c_n (h0 and c0 one buffer)", &to64(&got[1]), &to64(&want.states.get(1).cloned().unwrap().data), FORWARD_ATOL, FORWARD_RTOL);
    }
}

#[test]
fn a_destroyed_device_gives_typed_errors_from_every_later_call() {
    for backend in backends() {
        let ctx = fresh(backend).unwrap();
        within(&format!("lost device on {backend:?}"), HANG_LIMIT, move || lost_device_calls(&ctx));
    }
}

fn lost_device_calls(ctx: &Arc<Context>) {
    let cfg = RnnConfig::new(Mode::Gru, 3, 4);
    let w = Weights::<f32>::init_uniform(&cfg, 2).unwrap();
    let x = packed(2, 2, 3, &[2, 1]);
    let go = vec![0.1f32; x.rows() * 4];
    let rnn = GpuRnn::new(ctx, &w).unwrap();
    let (_, tape) = rnn.forward(&x, &[], Pass::Training).unwrap();
    let tape = tape.unwrap();
    let layout = SeqLayout::of(&x).unwrap();
    let plan = Plan::new(ctx, &cfg, &layout, Pass::Inference).unwrap();
    let big = storage(ctx, "big", 4096).unwrap();
    let (wb, xb, out, hn) = (upload(ctx, "w", &flat(&w)).unwrap(), upload(ctx, "x", &x.data).unwrap(), storage(ctx, "out", 64).unwrap(), storage(ctx, "hn", 64).unwrap());
    let shape = LinearShape { rows: 2, input: 3, output: 2 };
    let params = upload(ctx, "linear", &[0.5; 8]).unwrap();
    let grads = upload(ctx, "grads", &[0.0; 8]).unwrap();
    assert_eq!(read_f32(ctx, &params, 8).unwrap(), vec![0.5; 8]);

    let opt = Optimizer::new(ctx, OptimizerKind::Sgd { lr: 0.1, momentum: 0.9 }, None, &[ParamGroup { params: &params, grads: &grads, elems: 8 }]).unwrap();
    let saved = opt.export(ctx).unwrap();
    assert!(!ctx.is_lost());

    ctx.device.destroy();
    assert!(ctx.is_lost(), "{}", ctx.describe());

    let lost = |what: &str, r: Result<(), Error>| match r {
        Err(Error::DeviceLost(_)) => {}
        other => panic!("{what} after destroy on {}: expected DeviceLost, got {other:?}", ctx.describe()),
    };
    lost("upload", upload(ctx, "x", &x.data).map(drop));
    lost("storage", storage(ctx, "s", 16).map(drop));
    lost("GpuRnn::new", GpuRnn::new(ctx, &w).map(drop));
    lost("forward", rnn.forward(&x, &[], Pass::Inference).map(drop));
    lost("backward", rnn.backward(&tape, &go, &[]).map(drop));
    lost("Plan::new", Plan::new(ctx, &cfg, &layout, Pass::Training).map(drop));
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    lost("record_forward", plan.record_forward(&mut enc, &ForwardBuffers { weights: wb.slice(..), input: xb.slice(..), output: out.slice(..), states0: &[], states_n: &[hn.slice(..)], counter: None }));
    let mut rb = Readback::new();
    lost("Readback::copy", rb.copy(ctx, &mut enc, &big, 16).map(drop));
    lost("Readback::submit_and_read", Readback::new().submit_and_read(ctx, enc).map(drop));
    lost("read_f32", read_f32(ctx, &params, 8).map(drop));
    let mut b = OpBuilder::new(ctx);
    b.linear_forward(shape, &big, &params, &big).unwrap();
    lost("OpBuilder::run", b.run(&[(&big, 4)]).map(drop));
    let mut b = OpBuilder::new(ctx);
    b.fill(&big, 0, 4, 1.0).unwrap();
    lost("OpBuilder::build", b.build().map(drop));
    lost("Optimizer::new", Optimizer::new(ctx, OptimizerKind::adam(0.1), None, &[ParamGroup { params: &params, grads: &grads, elems: 8 }]).map(drop));
    lost("Optimizer::import", opt.import(ctx, &saved));
    lost("Optimizer::export", opt.export(ctx).map(drop));
    lost("Optimizer::read_state", opt.read_state(ctx).map(drop));
    lost("upload_u32", wgpu_rnn::gpu::train::upload_u32(ctx, "ids", &[1, 2, 3]).map(drop));
    lost("Context::wait", ctx.wait());
    // Still lost on a second round (the state is remembered, not rediscovered by luck).
    lost("forward again", rnn.forward(&x, &[], Pass::Inference).map(drop));
    lost("wait again", ctx.wait());
}

#[test]
fn waits_are_bounded_by_the_context_wait_timeout() {
    for backend in backends() {
        let ctx = fresh(backend).unwrap();
        assert_eq!(ctx.wait_timeout(), Context::DEFAULT_WAIT_TIMEOUT);
        within(&format!("timeouts on {backend:?}"), HANG_LIMIT, move || timeout_calls(&ctx));
    }
}

fn timeout_calls(ctx: &Arc<Context>) {
    // C1-sized (LSTM T 50, B 32, I 128, H 256): around 100 ms of dispatches on lavapipe, so
    // far from done when a zero timeout looks. llvmpipe through GL runs compute dispatches
    // during the submit itself, so there the work is done before any wait and a call may
    // succeed: then it must give the full, right result.
    let sync_submit = ctx.adapter_info().backend == wgpu::Backend::Gl;
    let cfg = RnnConfig::new(Mode::Lstm, 128, 256);
    let w = Weights::<f32>::init_uniform(&cfg, 4).unwrap();
    let x = packed(50, 32, 128, &[50; 32]);
    let rnn = GpuRnn::new(ctx, &w).unwrap();
    // Plan and pipelines built first, so the timed-out calls below wait on dispatches only.
    let (want, _) = rnn.forward(&x, &[], Pass::Inference).unwrap();

    ctx.set_wait_timeout(Duration::ZERO);
    assert_eq!(ctx.wait_timeout(), Duration::ZERO);
    let t = Instant::now();
    match rnn.forward(&x, &[], Pass::Inference) {
        Err(Error::Timeout(msg)) => eprintln!("{}: forward after {:?}: {msg}", ctx.describe(), t.elapsed()),
        Ok((got, _)) if sync_submit => assert_eq!(got.output.data, want.output.data),
        other => panic!("forward with a zero wait timeout on {}: expected Timeout, got {:?}", ctx.describe(), other.map(|_| ())),
    }
    // Context::wait on work submitted through the engine API.
    let plan = Plan::new(ctx, rnn.config(), &SeqLayout::of(&x).unwrap(), Pass::Inference).unwrap();
    let (xb, out, hn, cn) = (upload(ctx, "x", &x.data).unwrap(), storage(ctx, "out", x.rows() * 256).unwrap(), storage(ctx, "hn", 32 * 256).unwrap(), storage(ctx, "cn", 32 * 256).unwrap());
    {
        let _serial = ctx.exclusive();
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        let bufs = ForwardBuffers { weights: rnn.weights_buffer().slice(..), input: xb.slice(..), output: out.slice(..), states0: &[], states_n: &[hn.slice(..), cn.slice(..)], counter: None };
        plan.record_forward(&mut enc, &bufs).unwrap();
        ctx.queue.submit([enc.finish()]);
    }
    match ctx.wait() {
        Err(Error::Timeout(_)) => {}
        Ok(()) if sync_submit => {}
        other => panic!("Context::wait with a zero timeout on {}: expected Timeout, got {other:?}", ctx.describe()),
    }
    // The training kit's submit-and-read: a linear layer of 2048 x 512 x 512.
    let shape = LinearShape { rows: 2048, input: 512, output: 512 };
    let (lx, lp, ly) = (upload(ctx, "lx", &vec![0.5; 2048 * 512]).unwrap(), upload(ctx, "lp", &vec![0.01; shape.param_elems()]).unwrap(), storage(ctx, "ly", 2048 * 512).unwrap());
    let mut b = OpBuilder::new(ctx);
    b.linear_forward(shape, &lx, &lp, &ly).unwrap();
    // y = x W^T + b with x = 0.5, W = b = 0.01: 512 * 0.005 + 0.01.
    let expect = [512.0 * 0.5 * 0.01 + 0.01; 4];
    match b.run(&[(&ly, 4)]) {
        Err(Error::Timeout(_)) => {}
        Ok(y) if sync_submit => assert_close("linear", &to64(&y[0]), &expect, 1e-5, 1e-5),
        other => panic!("OpBuilder::run with a zero wait timeout on {}: expected Timeout, got {other:?}", ctx.describe()),
    }

    // Back to a sane timeout: the context works as before, and gives the same result.
    ctx.set_wait_timeout(Context::DEFAULT_WAIT_TIMEOUT);
    ctx.wait().unwrap();
    let (again, _) = rnn.forward(&x, &[], Pass::Inference).unwrap();
    assert_eq!(again.output.data, want.output.data, "same forward after the timeouts on {}", ctx.describe());
    let y = read_f32(ctx, &ly, 4).unwrap();
    assert_close("linear after the timeout", &to64(&y), &expect, 1e-5, 1e-5);
    // The largest timeout does not overflow the deadline.
    ctx.set_wait_timeout(Duration::MAX);
    assert!(ctx.wait_timeout() >= Duration::from_secs(100 * 365 * 24 * 3600));
    let (big, _) = rnn.forward(&x, &[], Pass::Inference).unwrap();
    assert_eq!(big.output.data, want.output.data);
}

#[test]
fn training_kit_sizes_that_overflow_are_typed_errors() {
    let Some(ctx) = contexts().first() else { return };
    let buf = storage(ctx, "b", 64).unwrap();
    let huge = usize::MAX / 2 + 1;
    let limit = |what: &str, r: Result<(), Error>| match r {
        Err(Error::Limit(_)) => {}
        other => panic!("{what}: expected Limit, got {other:?}"),
    };
    let mut b = OpBuilder::new(ctx);
    limit("blocks_to_rows", b.blocks_to_rows(&buf, 0, huge, 2, 1, &buf));
    limit("rows_to_blocks", b.rows_to_blocks(&buf, 2, huge, 1, &buf, 0));
    limit("fill end", b.fill(&buf, usize::MAX, 1, 0.0));
    limit("linear", b.linear_forward(LinearShape { rows: huge, input: 2, output: 1 }, &buf, &buf, &buf));
    limit("linear parameters", b.linear_forward(LinearShape { rows: 1, input: huge, output: 2 }, &buf, &buf, &buf));
    limit("bce metric offset", b.bce_with_logits(1, &buf, &buf, &buf, &buf, usize::MAX));
    limit("softmax logits", b.softmax_cross_entropy(huge, 2, &buf, &buf, 0, &buf, &buf, &buf, 0));
    limit("softmax targets", b.softmax_cross_entropy(1, 2, &buf, &buf, usize::MAX, &buf, &buf, &buf, 0));
    let index = wgpu_rnn::gpu::train::EmbeddingIndex::new(&[0, 1, 1], 2, None).unwrap();
    limit("embedding forward", b.embedding_forward(&buf, &buf, &index, huge, &buf));
    limit("embedding backward", b.embedding_backward(&buf, &buf, &index, huge, &buf));
    assert_eq!(b.build().unwrap().dispatches(), 0, "the refused ops added nothing");
    // A parameter group larger than its buffers: a shape error, not an overflow.
    match Optimizer::new(ctx, OptimizerKind::adam(0.1), None, &[ParamGroup { params: &buf, grads: &buf, elems: huge }]) {
        Err(Error::ShapeMismatch { .. }) => {}
        other => panic!("huge parameter group: {:?}", other.map(|_| ())),
    }
    // Reading back more than a buffer holds, or from a buffer that cannot be copied.
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let mut rb = Readback::new();
    assert!(matches!(rb.copy(ctx, &mut enc, &buf, 65), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(read_f32(ctx, &buf, 65), Err(Error::ShapeMismatch { .. })));
    let no_copy = ctx.device.create_buffer(&wgpu::BufferDescriptor { label: None, size: 64, usage: wgpu::BufferUsages::STORAGE, mapped_at_creation: false });
    assert!(matches!(rb.copy(ctx, &mut enc, &no_copy, 4), Err(Error::Gpu(_))));
    assert_eq!(rb.copy(ctx, &mut enc, &buf, 16).unwrap(), 0);
    let _serial = ctx.exclusive();
    assert_eq!(rb.submit_and_read(ctx, enc).unwrap().len(), 1);
}

#[test]
fn a_device_destroyed_with_work_in_flight_gives_typed_errors() {
    for backend in backends() {
        let ctx = fresh(backend).unwrap();
        within(&format!("destroy in flight on {backend:?}"), HANG_LIMIT, move || destroy_in_flight(&ctx));
    }
}

fn destroy_in_flight(ctx: &Arc<Context>) {
    let cfg = RnnConfig::new(Mode::Lstm, 128, 256);
    let w = Weights::<f32>::init_uniform(&cfg, 4).unwrap();
    let x = packed(50, 32, 128, &[50; 32]);
    let rnn = GpuRnn::new(ctx, &w).unwrap();
    let plan = Plan::new(ctx, &cfg, &SeqLayout::of(&x).unwrap(), Pass::Inference).unwrap();
    let (xb, out, hn, cn) = (upload(ctx, "x", &x.data).unwrap(), storage(ctx, "out", x.rows() * 256).unwrap(), storage(ctx, "hn", 32 * 256).unwrap(), storage(ctx, "cn", 32 * 256).unwrap());
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let bufs = ForwardBuffers { weights: rnn.weights_buffer().slice(..), input: xb.slice(..), output: out.slice(..), states0: &[], states_n: &[hn.slice(..), cn.slice(..)], counter: None };
    plan.record_forward(&mut enc, &bufs).unwrap();
    ctx.queue.submit([enc.finish()]);
    // Around 100 ms of work queued on lavapipe; destroyed before it ends.
    ctx.device.destroy();
    let typed = |what: &str, r: Result<(), Error>| match r {
        Err(Error::DeviceLost(_)) => {}
        other => panic!("{what} after destroy with work in flight on {}: expected DeviceLost, got {other:?}", ctx.describe()),
    };
    typed("upload", upload(ctx, "x", &x.data).map(drop));
    typed("forward", rnn.forward(&x, &[], Pass::Inference).map(drop));
    let small = packed(2, 2, 128, &[2, 1]);
    typed("Plan::new", Plan::new(ctx, &cfg, &SeqLayout::of(&small).unwrap(), Pass::Training).map(drop));
    typed("wait", ctx.wait());
    // Once the queued work has drained, the loss is known everywhere.
    assert!(ctx.is_lost());
    match rnn.forward(&x, &[], Pass::Inference) {
        Err(Error::DeviceLost(_)) => {}
        other => panic!("forward after the loss is known: {:?}", other.map(|_| ())),
    }
}

/// On GL the library serialises its work with `Context::exclusive`, and engine-API callers
/// are told to hold the guard around theirs. The guard is re-entrant: a plan, the convenience
/// API (which take it themselves) and a read under a caller's guard finish, never deadlock;
/// the results are still right, and the guard is free again afterwards.
#[test]
fn the_gl_guard_is_reentrant() {
    let Some(ctx) = fresh_gl("the_gl_guard_is_reentrant") else { return };
    let cfg = RnnConfig::new(Mode::Lstm, 3, 4);
    let w = Weights::<f32>::init_uniform(&cfg, 7).unwrap();
    let x = packed(4, 3, 3, &[4, 2, 1]);
    let (want, _) = cpu::forward(&w, &x, &[], Pass::Inference).unwrap();
    let c = ctx.clone();
    let got = within("a plan, a forward pass and a read under the caller's GL guard", HANG_LIMIT, move || {
        let outer = c.exclusive();
        assert!(outer.is_some(), "GL contexts have a guard");
        let inner = c.exclusive();
        assert!(inner.is_some(), "a nested guard on GL");
        let plan = Plan::new(&c, &w.config, &SeqLayout::of(&x).unwrap(), Pass::Training).unwrap();
        drop(plan);
        let rnn = GpuRnn::new(&c, &w).unwrap();
        let (fwd, _) = rnn.forward(&x, &[], Pass::Inference).unwrap();
        let src = upload(&c, "read under the guard", &[1.5, -2.0, 3.25]).unwrap();
        let mut enc = c.device.create_command_encoder(&Default::default());
        let mut rb = Readback::new();
        rb.copy(&c, &mut enc, &src, 3).unwrap();
        let read = rb.submit_and_read(&c, enc).unwrap();
        drop(inner);
        drop(outer);
        (fwd.output.data, read)
    });
    assert_close("output under a nested guard", &to64(&got.0), &to64(&want.output.data), FORWARD_ATOL, FORWARD_RTOL);
    assert_eq!(got.1, vec![vec![1.5, -2.0, 3.25]]);
    // Released by the outermost guard: another thread can take it.
    let c = ctx.clone();
    within("the guard after a nested use", HANG_LIMIT, move || drop(c.exclusive()));
}

/// Polls `fut` once with a waker that does nothing: whether it answered Pending.
fn poll_once<F: std::future::Future>(fut: std::pin::Pin<&mut F>) -> bool {
    fut.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())).is_pending()
}

/// Holds `ctx`'s GL guard on another thread for a while, runs `f` here once it is held, and
/// says whether the other thread had let go of the guard by the time `f` returned (it has if
/// `f` waited for the guard).
fn run_while_another_thread_holds_the_guard(ctx: &Arc<Context>, f: impl FnOnce()) -> bool {
    let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (held_tx, held_rx) = mpsc::channel();
    let (c, r) = (ctx.clone(), released.clone());
    let holder = std::thread::spawn(move || {
        let serial = c.exclusive();
        held_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        r.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(serial);
    });
    held_rx.recv().unwrap();
    f();
    let waited = released.load(std::sync::atomic::Ordering::SeqCst);
    holder.join().unwrap();
    waited
}

/// A future of `Case::run_gpu_async` or a `PendingRead` dropped before it completes (a
/// cancelled task) destroys its buffers and plan under the GL guard: destroying them takes
/// the shared GL context, which wgpu's GL backend panics over when another thread holds it
/// for more than a second. Checked by holding the guard on another thread: the drop waits
/// for it.
#[test]
fn a_cancelled_async_read_is_destroyed_under_the_gl_guard() {
    let Some(ctx) = fresh_gl("a_cancelled_async_read_is_destroyed_under_the_gl_guard") else { return };
    let c = ctx.clone();
    within("cancelling asynchronous reads on GL", HANG_LIMIT, move || {
        let path = crate::common::golden_cases().into_iter().next().unwrap();
        let file = wgpu_rnn::io::TensorFile::read(&path).unwrap();
        let case = wgpu_rnn::case::Case::<f32>::from_file(&file).unwrap();
        // Nothing else polls this context, so the read is still pending after the first poll.
        let mut fut = Box::pin(case.run_gpu_async(&c, true));
        assert!(poll_once(fut.as_mut()), "{}: ready before the device was polled", path.display());
        assert!(run_while_another_thread_holds_the_guard(&c, || drop(fut)), "a cancelled run_gpu_async dropped its buffers without the GL guard");

        let src = upload(&c, "cancelled read", &[0.5; 64]).unwrap();
        let mut enc = c.device.create_command_encoder(&Default::default());
        let mut rb = Readback::new();
        rb.copy(&c, &mut enc, &src, 64).unwrap();
        let mut pending = Box::pin(rb.submit(&c, enc).unwrap());
        assert!(poll_once(pending.as_mut()), "a read ready before the device was polled");
        assert!(run_while_another_thread_holds_the_guard(&c, || drop(pending)), "a cancelled PendingRead dropped its copies without the GL guard");

        // The context still works: the same case, run to the end, matches the golden values.
        let (got, _, _) = crate::gpu::drive(&c, case.run_gpu_async(&c, true));
        let got = got.unwrap();
        for m in wgpu_rnn::case::compare(&got, &file, true) {
            assert_eq!(m.failures, 0, "{}: {} after cancelled reads", path.display(), m.name);
        }
    });
}

/// Two threads of a GL context asking one model for plans (`GpuRnn::plan`, public): one
/// holds the GL guard around its work, as engine-API callers are told to, and a plan made in
/// the cache takes the guard. The cache takes the guard before its own lock, so neither
/// thread waits on the other forever (the other order deadlocked).
#[test]
fn plans_and_forward_passes_on_two_threads_of_a_gl_context_do_not_deadlock() {
    let Some(ctx) = fresh_gl("plans_and_forward_passes_on_two_threads_of_a_gl_context_do_not_deadlock") else { return };
    let cfg = RnnConfig::new(Mode::Gru, 3, 4);
    let w = Weights::<f32>::init_uniform(&cfg, 11).unwrap();
    let rnn = Arc::new(GpuRnn::new(&ctx, &w).unwrap());
    let x = packed(3, 2, 3, &[3, 1]);
    let (want, _) = cpu::forward(&w, &x, &[], Pass::Inference).unwrap();
    let r = rnn.clone();
    let planner = std::thread::spawn(move || {
        for k in 0..200 {
            // Layouts the forward thread never uses: each forward makes a new plan (and, past
            // the cache's size, evicts one).
            let lengths: Vec<usize> = (0..k % 7 + 1).map(|j| 5 - j.min(4)).collect();
            r.forward(&packed(5, lengths.len(), 3, &lengths), &[], Pass::Inference).unwrap();
        }
    });
    let c = ctx.clone();
    let got = within("plans on one thread, plans and forward passes under the guard on another (GL)", HANG_LIMIT, move || {
        let mut out = Vec::new();
        for _ in 0..200 {
            let _serial = c.exclusive();
            rnn.forward(&x, &[], Pass::Training).unwrap();
            out = rnn.forward(&x, &[], Pass::Inference).unwrap().0.output.data;
        }
        out
    });
    within("the planning thread", HANG_LIMIT, move || planner.join().unwrap());
    assert_close("output beside a planning thread", &to64(&got), &to64(&want.output.data), FORWARD_ATOL, FORWARD_RTOL);
}

/// The engine plan over buffers of another device (issue 26: hostile buffers), LSTM and SCRN:
/// never a panic. What it can be instead is
/// wgpu's to decide and not always an error: a buffer of another `wgpu::Instance` is known by
/// an id that indexes this device's own buffers (found here: both recorded, and finishing the
/// encoder failed validation on the plan's own "rearranged weights" or "states"; in another
/// run the aliasing check saw one of the plan's buffers twice, as the ids fell). An id that
/// lands on a buffer of compatible use would pass silently. wgpu 30 offers no way to ask a buffer for its
/// device, so the docs require buffers of the plan's device (`gpu::ForwardBuffers`).
#[test]
fn engine_plan_does_not_panic_on_buffers_of_another_device() {
    for backend in backends() {
        let home = fresh(backend).unwrap();
        let away = fresh(backend).unwrap();
        for mode in [Mode::Lstm, Mode::Scrn] {
            let cfg = RnnConfig::new(mode, 3, 4);
            let x = packed(3, 2, 3, &[3, 2]);
            let plan = Plan::new(&home, &cfg, &SeqLayout::of(&x).unwrap(), Pass::Inference).unwrap();
            let w = Weights::<f32>::init_uniform(&cfg, 1).unwrap();
            let states: Vec<wgpu_rnn::gpu::TrackedBuffer> = cfg.states().iter().map(|s| storage(&away, "state", cfg.state_shape(s, 2).iter().product()).unwrap()).collect();
            let states: Vec<wgpu::BufferSlice<'_>> = states.iter().map(|b| b.slice(..)).collect();
            let (wb, xb, out) = (upload(&away, "w", &wgpu_rnn::gpu::flat_weights(&w)).unwrap(), upload(&away, "x", &x.data).unwrap(), storage(&away, "out", x.rows() * 4).unwrap());
            let mut enc = home.device.create_command_encoder(&Default::default());
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let recorded = plan.record_forward(&mut enc, &ForwardBuffers { weights: wb.slice(..), input: xb.slice(..), output: out.slice(..), states0: &[], states_n: &states, counter: None });
                (recorded, finish_in_scope(&home, enc))
            }));
            match r {
                Ok((recorded, finished)) => eprintln!("{backend:?} {mode}: recording {:?}, finishing {:?}", recorded.err(), finished),
                Err(_) => panic!("{backend:?} {mode}: panicked on another device's buffers"),
            }
        }
    }
}
