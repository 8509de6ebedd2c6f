//! The `onnx` target's body (fuzz/fuzz_targets/onnx.rs; replayed by the stable tests,
//! tests/it/fuzz_replay.rs). ONNX files: arbitrary bytes -> a model and its input tensors ->
//! `onnx::file::Model::from_bytes` -> `Model::run` on the CPU engine. Every step must return
//! `Ok` or a typed `Err`, never panic or abort; what runs must give the node's outputs, shaped
//! as ONNX says, and the same bits when run again.
//!
//! Input layout ([`encode`]): a byte `n`, then `n` tensors each as a little-endian u16 length
//! and that many bytes (a `TensorProto`), then the model (a `ModelProto`) to the end.
use wgpu_rnn::onnx::file::Model;
use wgpu_rnn::onnx::proto::{self, TensorProto};

/// Splits an input into tensors' bytes and the model's.
pub fn split(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let Some((&n, mut rest)) = data.split_first() else { return (Vec::new(), data) };
    let mut tensors = Vec::new();
    for _ in 0..n {
        if rest.len() < 2 {
            break;
        }
        let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        let take = len.min(rest.len() - 2);
        tensors.push(&rest[2..2 + take]);
        rest = &rest[2 + take..];
    }
    (tensors, rest)
}

#[allow(dead_code)]
/// The input that [`split`] reads back as `tensors` and `model` (tensors over 65535 bytes cut).
pub fn encode(tensors: &[Vec<u8>], model: &[u8]) -> Vec<u8> {
    let mut v = vec![tensors.len().min(255) as u8];
    for t in tensors.iter().take(255) {
        let t = &t[..t.len().min(u16::MAX as usize)];
        v.extend_from_slice(&(t.len() as u16).to_le_bytes());
        v.extend_from_slice(t);
    }
    v.extend_from_slice(model);
    v
}

/// The target's body.
pub fn run(data: &[u8]) {
    let (tensor_bytes, model_bytes) = split(data);
    let Ok(model) = Model::from_bytes(model_bytes) else { return };
    let mut tensors = Vec::new();
    for b in tensor_bytes {
        match proto::decode::<TensorProto>("input", b) {
            Ok(t) => tensors.push(t),
            Err(_) => return,
        }
    }
    let Ok(outs) = model.run(&tensors, None) else { return };
    let present = model.node.output.iter().filter(|o| !o.is_empty()).count();
    assert_eq!(outs.len(), present, "one result per present output");
    for (name, t) in &outs {
        let n: i64 = t.dims.iter().product();
        assert!(t.dims.iter().all(|&d| d >= 0), "{name}: negative dims");
        let width = match t.data_type {
            10 => 2,
            11 => 8,
            _ => 4,
        };
        assert_eq!(t.raw_data.len() as i64, n * width, "{name}: data fill the dims");
    }
    let again = model.run(&tensors, None).expect("a node that ran once runs again");
    assert!(again == outs, "the same inputs gave other bits");
}
