//! ONNX's recurrent nodes: onnx's own backend node tests (tests/onnx/backend, written by
//! tests/onnx/generate_backend.py) through the function `wgpu-rnn onnx` runs, on the CPU engine,
//! Vulkan and GL; and bad ONNX input as typed errors.

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

fn backend_cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(backend_dir()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.join("model.onnx").exists()).collect();
    v.sort();
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
