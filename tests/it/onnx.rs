//! ONNX's recurrent nodes: onnx's own backend node tests (tests/onnx/backend, written by
//! tests/onnx/generate_backend.py) and random nodes over every attribute with onnxruntime's
//! results (tests/onnx/ort, tests/onnx/generate_ort.py) through the function `wgpu-rnn onnx`
//! runs, on the CPU engine, Vulkan and GL; and bad ONNX input as typed errors.

use crate::gpu_common::contexts;
use prost::Message;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wgpu_rnn::gpu::Context;
use wgpu_rnn::onnx::file::{read_tensor, run_files, Model};
use wgpu_rnn::onnx::proto::{self, AttributeProto, ModelProto, TensorProto};
use wgpu_rnn::Error;

/// The tolerance for ONNX's conformance cases (onnx's backend runner's defaults are
/// looser: rtol 1e-3, atol 1e-7).
const ONNX_ATOL: f64 = 2e-5;
const ONNX_RTOL: f64 = 2e-4;

fn backend_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx/backend")
}

fn cases_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.join("model.onnx").exists()).collect();
    v.sort();
    v
}

fn backend_cases() -> Vec<PathBuf> {
    cases_in(&backend_dir())
}

/// onnxruntime's cases, each attribute in several.
fn ort_cases() -> Vec<PathBuf> {
    let v = cases_in(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx/ort"));
    assert_eq!(v.len(), 44, "tests/onnx/ort");
    v
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgpu-rnn-onnx-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Runs one backend case on `gpu` (or the CPU) and compares every output file.
fn check_case(case: &Path, gpu: Option<&Arc<Context>>, label: &str) {
    let name = case.file_name().unwrap().to_string_lossy().to_string();
    let data = case.join("test_data_set_0");
    let out = scratch(&format!("{label}-{name}"));
    let written = run_files(&case.join("model.onnx"), &data, &out, gpu).unwrap_or_else(|e| panic!("{label} {name}: {e}"));
    let expected: Vec<PathBuf> = (0..).map(|k| data.join(format!("output_{k}.pb"))).take_while(|p| p.exists()).collect();
    assert_eq!(written.len(), expected.len(), "{label} {name}: outputs written");
    for (w, e) in written.iter().zip(&expected) {
        let (got, want) = (read_tensor(w).unwrap(), read_tensor(e).unwrap());
        assert_eq!(got.tensor.shape, want.tensor.shape, "{label} {name} {}", e.display());
        assert_eq!(got.data_type, want.data_type, "{label} {name}: element type");
        let g: Vec<f64> = got.tensor.data.iter().map(|&v| v as f64).collect();
        let x: Vec<f64> = want.tensor.data.iter().map(|&v| v as f64).collect();
        crate::common::assert_close(&format!("{label} {name} {}", e.file_name().unwrap().to_string_lossy()), &g, &x, ONNX_ATOL, ONNX_RTOL);
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn onnx_backend_node_tests_pass_on_the_cpu() {
    let cases = backend_cases();
    // onnx 1.23's LSTM, GRU and RNN node tests, the reverse and batch-major ones among them.
    assert_eq!(cases.len(), 18, "{cases:?}");
    for want in ["test_lstm_reverse", "test_gru_reverse", "test_simple_rnn_reverse", "test_lstm_batchwise", "test_gru_batchwise", "test_simple_rnn_batchwise"] {
        assert!(cases.iter().any(|c| c.ends_with(want)), "{want} missing");
    }
    for case in &cases {
        check_case(case, None, "cpu");
    }
}

#[test]
fn onnx_backend_node_tests_pass_on_every_gpu() {
    for ctx in contexts() {
        let label = format!("{:?}", ctx.adapter_info().backend);
        for case in backend_cases() {
            check_case(&case, Some(ctx), &label);
        }
    }
}

#[test]
fn onnxruntime_cases_pass_on_the_cpu() {
    for case in ort_cases() {
        check_case(&case, None, "cpu");
    }
}

#[test]
fn onnxruntime_cases_pass_on_every_gpu() {
    for ctx in contexts() {
        let label = format!("{:?}", ctx.adapter_info().backend);
        for case in ort_cases() {
            check_case(&case, Some(ctx), &label);
        }
    }
}

/// A backend case's model and its input tensors, to be broken.
fn case_parts(name: &str) -> (ModelProto, Vec<TensorProto>) {
    let d = backend_dir().join(name);
    let m: ModelProto = proto::decode("model", &std::fs::read(d.join("model.onnx")).unwrap()).unwrap();
    let inputs = (0..)
        .map(|k| d.join(format!("test_data_set_0/input_{k}.pb")))
        .take_while(|p| p.exists())
        .map(|p| proto::decode("input", &std::fs::read(p).unwrap()).unwrap())
        .collect();
    (m, inputs)
}

fn run(m: &ModelProto, inputs: &[TensorProto]) -> wgpu_rnn::Result<Vec<(String, TensorProto)>> {
    Model::from_bytes(&m.encode_to_vec())?.run(inputs, None)
}

fn set_attr(m: &mut ModelProto, a: AttributeProto) {
    let node = &mut m.graph.as_mut().unwrap().node[0];
    node.attribute.retain(|x| x.name != a.name);
    node.attribute.push(a);
}

fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto { name: name.into(), dims: dims.to_vec(), data_type: 1, float_data: v.to_vec(), ..Default::default() }
}

#[track_caller]
fn expect_err(r: wgpu_rnn::Result<impl std::fmt::Debug>, check: impl Fn(&Error) -> bool, what: &str) {
    match r {
        Err(e) if check(&e) => {}
        other => panic!("{what}: expected a typed error, got {other:?}"),
    }
}

#[test]
fn the_unbroken_parts_run() {
    // The baseline the broken variants below start from.
    let (m, inputs) = case_parts("test_lstm_with_peepholes");
    assert_eq!(run(&m, &inputs).unwrap().len(), 1);
}

#[test]
fn bad_onnx_input_is_a_typed_error() {
    let (m, inputs) = case_parts("test_lstm_with_peepholes");
    let onnx = |e: &Error| matches!(e, Error::Onnx(_));
    // Truncated model files: every prefix decodes or fails typed, none panics.
    let bytes = m.encode_to_vec();
    for cut in (0..bytes.len()).step_by(7) {
        if let Ok(model) = Model::from_bytes(&bytes[..cut]) {
            let _ = model.run(&inputs, None);
        }
    }
    expect_err(Model::from_bytes(&bytes[..bytes.len() / 2]), onnx, "truncated model");
    // A truncated tensor.
    let t = inputs[0].encode_to_vec();
    expect_err(proto::decode::<TensorProto>("X", &t[..t.len() - 3]), onnx, "truncated tensor");
    // Tensors of the wrong shape or type.
    let mut bad = inputs.clone();
    bad[1].dims[2] += 1;
    expect_err(run(&m, &bad), onnx, "W's dims do not match its data");
    let mut bad = inputs.clone();
    bad[0] = f32_tensor("X", &[1, 2, 5], &[0.5; 10]);
    expect_err(run(&m, &bad), |e| matches!(e, Error::ShapeMismatch { .. }), "X of another input size");
    let mut bad = inputs.clone();
    bad[1].data_type = 8; // STRING
    expect_err(run(&m, &bad), onnx, "W of strings");
    let mut bad = inputs.clone();
    bad[3].dims = vec![1, 23];
    expect_err(run(&m, &bad), |e| matches!(e, Error::ShapeMismatch { .. } | Error::Onnx(_)), "B of 23");
    let mut bad = inputs.clone();
    bad[0].dims = vec![-1, 2, 4];
    expect_err(run(&m, &bad), onnx, "negative dim");
    let mut bad = inputs.clone();
    bad[0].dims = vec![i64::MAX, i64::MAX, 4];
    expect_err(run(&m, &bad), onnx, "dims that overflow");
    // hidden_size disagreeing with W.
    let mut m2 = m.clone();
    set_attr(&mut m2, AttributeProto { name: "hidden_size".into(), r#type: 2, i: 4, ..Default::default() });
    expect_err(run(&m2, &inputs), onnx, "hidden_size 4 with W for 3");
    // Unknown activations, directions, attributes.
    let mut m2 = m.clone();
    set_attr(&mut m2, AttributeProto { name: "activations".into(), r#type: 8, strings: vec![b"Sigmoid".to_vec(), b"Swish".to_vec(), b"Tanh".to_vec()], ..Default::default() });
    expect_err(run(&m2, &inputs), onnx, "unknown activation");
    let mut m2 = m.clone();
    set_attr(&mut m2, AttributeProto { name: "direction".into(), r#type: 3, s: b"sideways".to_vec(), ..Default::default() });
    expect_err(run(&m2, &inputs), onnx, "unknown direction");
    let mut m2 = m.clone();
    set_attr(&mut m2, AttributeProto { name: "output_sequence".into(), r#type: 2, i: 1, ..Default::default() });
    expect_err(run(&m2, &inputs), onnx, "opset 1's attribute");
    // sequence_lens as int64, exactly: in range runs, 2^33 + 1 does not.
    let mut ok = inputs.clone();
    ok[4] = TensorProto { name: "sequence_lens".into(), dims: vec![2], data_type: 7, int64_data: vec![1, 1], ..Default::default() };
    assert!(run(&m, &ok).is_ok());
    ok[4].int64_data = vec![1, (1 << 33) + 1];
    expect_err(run(&m, &ok), |e| matches!(e, Error::InvalidLengths(_)), "a length past u32");
    // sequence_lens negative and over T (T = 1 here).
    for lens in [[-1i32, 1], [1, 2]] {
        let mut bad = inputs.clone();
        bad[4].int32_data = lens.to_vec();
        bad[4].raw_data.clear();
        expect_err(run(&m, &bad), |e| matches!(e, Error::InvalidLengths(_)), &format!("sequence_lens {lens:?}"));
    }
    // A NaN in the input.
    let mut bad = inputs.clone();
    bad[0] = f32_tensor("X", &[1, 2, 4], &[f32::NAN; 8]);
    expect_err(run(&m, &bad), |e| matches!(e, Error::NonFinite(_)), "NaN in X");
    // Missing tensors, a graph of other nodes, another operator.
    expect_err(run(&m, &inputs[..3]), onnx, "fewer tensors than inputs");
    let mut m2 = m.clone();
    let g = m2.graph.as_mut().unwrap();
    let extra = g.node[0].clone();
    g.node.push(extra);
    expect_err(run(&m2, &inputs), onnx, "two nodes");
    let mut m2 = m.clone();
    m2.graph.as_mut().unwrap().node[0].op_type = "Conv".into();
    expect_err(run(&m2, &inputs), onnx, "another operator");
}

/// A node with random weights (0.8 scale) for the engine-API tests.
fn random_node(attrs: wgpu_rnn::onnx::Attributes, input: usize, hidden: usize, peep: bool, seed: u64) -> wgpu_rnn::onnx::Node {
    use wgpu_rnn::Tensor;
    let mut g = crate::common::rng(seed);
    let d = attrs.direction.count();
    let gh = attrs.op.gates() * hidden;
    let mut t = |shape: Vec<usize>| {
        let n = shape.iter().product();
        Tensor::new(shape, crate::common::uniform(&mut g, n, 0.8).into_iter().map(|v| v as f32).collect()).unwrap()
    };
    let (w, r, b) = (t(vec![d, gh, input]), t(vec![d, gh, hidden]), t(vec![d, 2 * gh]));
    let p = peep.then(|| t(vec![d, 3 * hidden]));
    wgpu_rnn::onnx::Node::new(attrs, &w, &r, Some(&b), p.as_ref()).unwrap()
}

#[test]
fn onnx_plan_records_into_the_callers_encoder_over_one_pooled_buffer() {
    use wgpu_rnn::cells::{Activation, Function};
    use wgpu_rnn::onnx::{Attributes, Direction, OnnxBuffers, OnnxPlan, Op};
    use wgpu_rnn::Tensor;
    let mut lstm = Attributes::new(Op::Lstm);
    lstm.direction = Direction::Bidirectional;
    let mut gru = Attributes::new(Op::Gru);
    gru.direction = Direction::Reverse;
    gru.batch_major = true;
    gru.clip = Some(0.7);
    gru.activations = vec![Activation::new(Function::HardSigmoid), Activation::with(Function::ScaledTanh, Some(1.2), Some(0.8)).unwrap()];
    let mut rnn = Attributes::new(Op::Rnn);
    rnn.activations = vec![Activation::new(Function::Softsign)];
    // (attributes, I, H, peepholes, T, B, lengths): lengths 0 among them, and all 0.
    type Case = (Attributes, usize, usize, bool, usize, usize, Option<Vec<i64>>);
    let cases: Vec<Case> = vec![
        (lstm, 3, 5, true, 4, 3, Some(vec![4, 0, 2])),
        (gru, 2, 4, false, 5, 2, Some(vec![3, 5])),
        (rnn.clone(), 3, 3, false, 3, 2, None),
        (rnn, 3, 3, false, 3, 2, Some(vec![0, 0])),
    ];
    let mut checked = 0;
    for ctx in contexts() {
        let align = ctx.device.limits().min_storage_buffer_offset_alignment as usize / 4;
        for (k, (attrs, i, h, peep, t, b, lens)) in cases.iter().enumerate() {
            let label = format!("{:?} case {k}", ctx.adapter_info().backend);
            let node = random_node(attrs.clone(), *i, *h, *peep, 40 + k as u64);
            let lstm = attrs.op == Op::Lstm;
            let d = attrs.direction.count();
            let mut g = crate::common::rng(50 + k as u64);
            let xs: Vec<usize> = if attrs.batch_major { vec![*b, *t, *i] } else { vec![*t, *b, *i] };
            let ss: Vec<usize> = if attrs.batch_major { vec![*b, d, *h] } else { vec![d, *b, *h] };
            let mut tensor = |shape: &Vec<usize>| {
                let n = shape.iter().product();
                Tensor::new(shape.clone(), crate::common::uniform(&mut g, n, 1.0).into_iter().map(|v| v as f32).collect()).unwrap()
            };
            let (x, h0) = (tensor(&xs), tensor(&ss));
            let c0 = lstm.then(|| tensor(&ss));
            let want = node.forward_cpu(&x, lens.as_deref(), Some(&h0), c0.as_ref()).unwrap();
            let plan = OnnxPlan::new(ctx, &node, *t, *b, lens.as_deref()).unwrap();
            let (nx, ns, ny) = plan.sizes();
            // One pool: X, h0, c0, Y, Y_h, Y_c at aligned offsets, sentinels between.
            let sizes = [nx, ns, ns, ny, ns, ns];
            let mut offs = Vec::new();
            let mut at = 0;
            for n in sizes {
                offs.push(at);
                at = (at + n + 1).next_multiple_of(align);
            }
            let mut pool = vec![7.5f32; at];
            pool[offs[0]..offs[0] + nx].copy_from_slice(&x.data);
            pool[offs[1]..offs[1] + ns].copy_from_slice(&h0.data);
            if let Some(c0) = &c0 {
                pool[offs[2]..offs[2] + ns].copy_from_slice(&c0.data);
            }
            let buf = wgpu_rnn::gpu::upload(ctx, "pool", &pool).unwrap();
            let s = |j: usize| buf.slice((offs[j] * 4) as u64..((offs[j] + sizes[j]) * 4) as u64);
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            let bufs = OnnxBuffers { x: s(0), initial_h: Some(s(1)), initial_c: lstm.then(|| s(2)), y: Some(s(3)), y_h: Some(s(4)), y_c: lstm.then(|| s(5)) };
            plan.record(&mut enc, &bufs).unwrap_or_else(|e| panic!("{label}: {e}"));
            let mut rb = wgpu_rnn::gpu::Readback::new();
            rb.copy(ctx, &mut enc, &buf, at).unwrap();
            let got = rb.submit_and_read(ctx, enc).unwrap().remove(0);
            let part = |j: usize| got[offs[j]..offs[j] + sizes[j]].iter().map(|&v| v as f64).collect::<Vec<f64>>();
            let f = |t: &Tensor<f32>| t.data.iter().map(|&v| v as f64).collect::<Vec<f64>>();
            crate::common::assert_close(&format!("{label} Y"), &part(3), &f(&want.y), ONNX_ATOL, ONNX_RTOL);
            crate::common::assert_close(&format!("{label} Y_h"), &part(4), &f(&want.y_h), ONNX_ATOL, ONNX_RTOL);
            if let Some(yc) = &want.y_c {
                crate::common::assert_close(&format!("{label} Y_c"), &part(5), &f(yc), ONNX_ATOL, ONNX_RTOL);
            }
            // The inputs are unchanged and nothing outside the outputs was written.
            let mut expect = pool.clone();
            for (j, out) in [(3, Some(&want.y)), (4, Some(&want.y_h)), (5, want.y_c.as_ref())] {
                if let Some(o) = out {
                    expect[offs[j]..offs[j] + sizes[j]].copy_from_slice(&got[offs[j]..offs[j] + o.data.len()]);
                }
            }
            assert!(got.iter().zip(&expect).all(|(a, e)| a.to_bits() == e.to_bits()), "{label}: bytes outside the outputs changed");
            // Each role in a buffer of its own, sentinels after it: where ONNX's layout is the
            // packed one (case 2) the plan is bound to them directly, and the same holds.
            const TAIL: usize = 8;
            let own: Vec<_> = sizes
                .iter()
                .enumerate()
                .map(|(j, &n)| {
                    let mut v = vec![7.5f32; n + TAIL];
                    v[..n].copy_from_slice(&pool[offs[j]..offs[j] + n]);
                    wgpu_rnn::gpu::upload(ctx, "role", &v).unwrap()
                })
                .collect();
            let s = |j: usize| own[j].slice(..((sizes[j] + TAIL) * 4) as u64);
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            let bufs = OnnxBuffers { x: s(0), initial_h: Some(s(1)), initial_c: lstm.then(|| s(2)), y: Some(s(3)), y_h: Some(s(4)), y_c: lstm.then(|| s(5)) };
            plan.record(&mut enc, &bufs).unwrap_or_else(|e| panic!("{label} (own buffers): {e}"));
            let mut rb = wgpu_rnn::gpu::Readback::new();
            for (j, b) in own.iter().enumerate() {
                rb.copy(ctx, &mut enc, b, sizes[j] + TAIL).unwrap();
            }
            let back = rb.submit_and_read(ctx, enc).unwrap();
            for (j, v) in back.iter().enumerate() {
                let (body, tail) = v.split_at(sizes[j]);
                assert!(tail.iter().all(|&t| t == 7.5), "{label} (own buffers): role {j} written past its end");
                let want_body: Vec<f32> = match j {
                    3 => want.y.data.clone(),
                    4 => want.y_h.data.clone(),
                    5 if lstm => want.y_c.as_ref().unwrap().data.clone(),
                    _ => pool[offs[j]..offs[j] + sizes[j]].to_vec(),
                };
                let f = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<f64>>();
                crate::common::assert_close(&format!("{label} (own buffers) role {j}"), &f(body), &f(&want_body), ONNX_ATOL, ONNX_RTOL);
            }
            checked += 1;
        }
        // Rows past 31-bit indexing are refused before any table or buffer is made.
        let big = OnnxPlan::new(ctx, &random_node(Attributes::new(Op::Rnn), 2, 2, false, 2), 1 << 16, 1 << 16, None);
        assert!(matches!(big, Err(Error::Limit(_))), "{:?}", big.err());
        // A written role overlapping another is refused before anything is recorded.
        let node = random_node(Attributes::new(Op::Rnn), 2, 2, false, 1);
        let plan = OnnxPlan::new(ctx, &node, 2, 1, None).unwrap();
        let buf = wgpu_rnn::gpu::storage(ctx, "pool", 4 * align).unwrap();
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        let r = plan.record(&mut enc, &OnnxBuffers { x: buf.slice(..), initial_h: None, initial_c: None, y: Some(buf.slice(..)), y_h: None, y_c: None });
        assert!(matches!(r, Err(Error::BufferAliasing(_))), "{r:?}");
    }
    crate::gpu_common::require_checked("onnx_plan_records_into_the_callers_encoder_over_one_pooled_buffer", checked, &[]);
}

#[test]
fn activation_slots_survive_saving_and_are_refused_in_training() {
    use wgpu_rnn::cells::{Activation, Function, Pointwise};
    use wgpu_rnn::cpu::{self, Pass};
    use wgpu_rnn::{Mode, PackedSequence, RnnConfig, Weights};
    let pw = Pointwise::new(&[Activation::with(Function::HardSigmoid, Some(0.3), None).unwrap(), Activation::new(Function::Softsign), Activation::with(Function::ScaledTanh, Some(1.5), Some(0.5)).unwrap()], Some(2.5)).unwrap();
    let cfg = RnnConfig::new(Mode::Lstm, 3, 4).bidirectional(true).with_pointwise(vec![pw, Pointwise::standard(Mode::Lstm.slots()).unwrap()]);
    let w = Weights::<f32>::init_uniform(&cfg, 3).unwrap();
    let path = scratch("slots.safetensors");
    w.save(&path).unwrap();
    let back = Weights::<f32>::load(&path, "", None).unwrap();
    assert_eq!(back.config, cfg, "the slots come back from the file's metadata");
    // They are the model's: a caller's config without slots gets the file's, one with other
    // slots is refused.
    let plain = RnnConfig { pointwise: Vec::new(), ..cfg.clone() };
    assert_eq!(Weights::<f32>::load(&path, "", Some(&plain)).unwrap().config.pointwise, cfg.pointwise);
    let other = RnnConfig { pointwise: vec![Pointwise::standard(Mode::Lstm.slots()).unwrap(); 2], ..cfg.clone() };
    assert!(matches!(Weights::<f32>::load(&path, "", Some(&other)), Err(Error::Metadata(_))));
    let _ = std::fs::remove_file(&path);
    // The slots change the result (the same weights with the cell's own functions differ).
    let x = PackedSequence::from_padded(&[0.3f32; 2 * 2 * 3], [2, 2, 3], false, &[2, 1]).unwrap();
    let own = Weights::from_flat(&RnnConfig { pointwise: Vec::new(), ..cfg.clone() }, &w.to_flat()).unwrap();
    let (a, _) = cpu::forward(&w, &x, &[], Pass::Inference).unwrap();
    let (b, _) = cpu::forward(&own, &x, &[], Pass::Inference).unwrap();
    assert_ne!(a.output.data, b.output.data);
    // Training with them is refused on the CPU and the GPU.
    assert!(matches!(cpu::forward(&w, &x, &[], Pass::Training), Err(Error::Unsupported(_))));
    for ctx in contexts() {
        let rnn = wgpu_rnn::gpu::GpuRnn::new(ctx, &w).unwrap();
        assert!(matches!(rnn.forward(&x, &[], Pass::Training), Err(Error::Unsupported(_))));
        let (g, _) = rnn.forward(&x, &[], Pass::Inference).unwrap();
        let f = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        crate::common::assert_close("slots on the GPU", &f(&g.output.data), &f(&a.output.data), ONNX_ATOL, ONNX_RTOL);
    }
    // A cell without slots refuses them.
    let bad = RnnConfig::new(Mode::Sru, 4, 4).with_pointwise(vec![Pointwise::standard(&[Function::Tanh]).unwrap()]);
    assert!(matches!(bad.validate(), Err(Error::InvalidConfig(_))));
}

/// Custom slots through both of the GPU's step strategies (the per-step stage kernels and the
/// single-dispatch loop), stacked and bidirectional, against the CPU engine: every kernel that
/// runs a cell's forward takes the slots.
#[test]
fn activation_slots_match_the_cpu_through_both_step_strategies() {
    use wgpu_rnn::cells::{Activation, Function, Pointwise};
    use wgpu_rnn::cpu::{self, Pass};
    use wgpu_rnn::gpu::{flat_weights, storage, upload, ForwardBuffers, Plan, Readback, SeqLayout, StepStrategy};
    use wgpu_rnn::{Mode, PackedSequence, RnnConfig, Weights};
    let act = |f: Function| Activation::with(f, Some(0.7), Some(0.3)).unwrap();
    let slots = |mode: Mode, k: usize| -> Pointwise {
        let pick = [Function::HardSigmoid, Function::Softsign, Function::ScaledTanh, Function::Elu, Function::Affine, Function::Softplus];
        let v: Vec<Activation> = (0..mode.slots().len()).map(|j| act(pick[(j + k) % pick.len()])).map(|a| if k == 1 { a.complemented() } else { a }).collect();
        Pointwise::new(&v, (k == 0).then_some(1.2)).unwrap()
    };
    let mut checked = 0;
    for ctx in contexts() {
        for (m, mode) in [Mode::LstmPeephole, Mode::GruResetBefore, Mode::RnnTanh, Mode::LstmCifg].into_iter().enumerate() {
            let cfg = RnnConfig::new(mode, 5, 6).layers(2).bidirectional(true).with_pointwise(vec![slots(mode, 0), slots(mode, 1)]);
            let w = Weights::<f32>::init_uniform(&cfg, 60 + m as u64).unwrap();
            let lengths = [4usize, 2, 3];
            let (t, b) = (4, 3);
            let mut g = crate::common::rng(70 + m as u64);
            let xpad: Vec<f32> = crate::common::uniform(&mut g, t * b * 5, 1.0).into_iter().map(|v| v as f32).collect();
            let x = PackedSequence::from_padded(&xpad, [t, b, 5], false, &lengths).unwrap();
            let (want, _) = cpu::forward(&w, &x, &[], Pass::Inference).unwrap();
            for strategy in [StepStrategy::PerStep, StepStrategy::SingleDispatch] {
                let label = format!("{:?} {mode} {strategy:?}", ctx.adapter_info().backend);
                let plan = Plan::with_strategy(ctx, &cfg, &SeqLayout::of(&x).unwrap(), Pass::Inference, strategy).unwrap_or_else(|e| panic!("{label}: {e}"));
                let wb = upload(ctx, "w", &flat_weights(&w)).unwrap();
                let xb = upload(ctx, "x", &x.data).unwrap();
                let yb = storage(ctx, "y", x.rows() * cfg.output_size()).unwrap();
                let sn: Vec<_> = cfg.state_elems(b).into_iter().map(|e| storage(ctx, "s", e).unwrap()).collect();
                let sns: Vec<wgpu::BufferSlice<'_>> = sn.iter().map(|s| s.slice(..)).collect();
                let mut enc = ctx.device.create_command_encoder(&Default::default());
                plan.record_forward(&mut enc, &ForwardBuffers { weights: wb.slice(..), input: xb.slice(..), output: yb.slice(..), states0: &[], states_n: &sns, counter: None }).unwrap();
                let mut rb = Readback::new();
                rb.copy(ctx, &mut enc, &yb, x.rows() * cfg.output_size()).unwrap();
                for (s, e) in sn.iter().zip(cfg.state_elems(b)) {
                    rb.copy(ctx, &mut enc, s, e).unwrap();
                }
                let got = rb.submit_and_read(ctx, enc).unwrap();
                let f = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<f64>>();
                crate::common::assert_close(&format!("{label} output"), &f(&got[0]), &f(&want.output.data), ONNX_ATOL, ONNX_RTOL);
                for (k, s) in want.states.iter().enumerate() {
                    crate::common::assert_close(&format!("{label} state {k}"), &f(&got[k + 1]), &f(&s.data), ONNX_ATOL, ONNX_RTOL);
                }
                checked += 1;
            }
        }
    }
    crate::gpu_common::require_checked("activation_slots_match_the_cpu_through_both_step_strategies", checked, &[]);
}

#[test]
fn weights_given_as_initializers_run_like_graph_inputs() {
    // As exporters write them: W, R, B as initializers, only X fed (the graph may list the
    // initializers among its inputs, as IR < 4 requires, or not).
    let (m, inputs) = case_parts("test_lstm_with_initial_bias");
    let want = run(&m, &inputs).unwrap();
    for list_them in [false, true] {
        let mut m2 = m.clone();
        let g = m2.graph.as_mut().unwrap();
        g.initializer = inputs[1..].to_vec();
        if !list_them {
            g.input.truncate(1);
        }
        let got = run(&m2, &inputs[..1]).unwrap_or_else(|e| panic!("initializers (listed: {list_them}): {e}"));
        assert_eq!(got, want, "initializers (listed: {list_them})");
        // Feeding the weights as data too is one tensor too many.
        assert!(matches!(run(&m2, &inputs), Err(Error::Onnx(_))));
    }
}

#[test]
fn the_command_line_runs_a_backend_case_and_refuses_a_broken_model() {
    let exe = env!("CARGO_BIN_EXE_wgpu-rnn");
    let case = backend_dir().join("test_gru_seq_length");
    let out = scratch("cli");
    let st = std::process::Command::new(exe)
        .args(["onnx", case.join("model.onnx").to_str().unwrap(), "--data", case.join("test_data_set_0").to_str().unwrap(), "--device", "cpu", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let (got, want) = (read_tensor(&out.join("output_0.pb")).unwrap(), read_tensor(&case.join("test_data_set_0/output_0.pb")).unwrap());
    let f = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    crate::common::assert_close("wgpu-rnn onnx", &f(&got.tensor.data), &f(&want.tensor.data), ONNX_ATOL, ONNX_RTOL);
    // A truncated model: a typed error on stderr and a non-zero exit, no panic.
    let bytes = std::fs::read(case.join("model.onnx")).unwrap();
    let broken = out.join("broken.onnx");
    std::fs::write(&broken, &bytes[..bytes.len() / 3]).unwrap();
    let st = std::process::Command::new(exe)
        .args(["onnx", broken.to_str().unwrap(), "--data", case.join("test_data_set_0").to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(!st.status.success() && err.contains("error: onnx:") && !err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_node_past_one_binding_is_split_not_refused() {
    use wgpu_rnn::gpu::ContextOptions;
    use wgpu_rnn::onnx::{Attributes, OnnxPlan, Op};
    use wgpu_rnn::Tensor;
    if crate::gpu_common::vulkan().is_none() {
        return;
    }
    // A context of the test's own, its binding limit lowered to 4 KiB: X (30 x 8 x 8 f32,
    // 7.5 KiB) and Y do not fit one binding.
    let ctx = wgpu_rnn::gpu::Context::with_options(&ContextOptions { backends: Some(wgpu::Backends::VULKAN), adapter_name: None }).unwrap();
    ctx.set_binding_limit(4096);
    let mut attrs = Attributes::new(Op::Lstm);
    attrs.batch_major = true;
    let node = random_node(attrs, 8, 6, false, 90);
    let (t, b) = (30, 8);
    let mut g = crate::common::rng(91);
    let x = Tensor::new(vec![b, t, 8], crate::common::uniform(&mut g, t * b * 8, 1.0).into_iter().map(|v| v as f32).collect()).unwrap();
    let lens: Vec<i64> = (0..b as i64).map(|k| 30 - 3 * k).collect();
    assert!(matches!(OnnxPlan::new(&ctx, &node, t, b, Some(&lens)), Err(Error::Limit(_))), "the engine-API form binds X whole");
    let want = node.forward_cpu(&x, Some(&lens), None, None).unwrap();
    let got = node.gpu(&ctx).unwrap().forward(&x, Some(&lens), None, None).unwrap();
    let f = |t: &Tensor<f32>| t.data.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    crate::common::assert_close("split Y", &f(&got.y), &f(&want.y), ONNX_ATOL, ONNX_RTOL);
    crate::common::assert_close("split Y_h", &f(&got.y_h), &f(&want.y_h), ONNX_ATOL, ONNX_RTOL);
    crate::common::assert_close("split Y_c", &f(got.y_c.as_ref().unwrap()), &f(want.y_c.as_ref().unwrap()), ONNX_ATOL, ONNX_RTOL);
}
