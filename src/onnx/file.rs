//! ONNX files: a model whose graph is one `LSTM`, `GRU` or `RNN` node, and tensors as onnx's
//! backend tests store them (`input_K.pb` for the graph's K-th input that no initializer
//! gives, `output_K.pb` for the node's K-th present output). What `wgpu-rnn onnx` runs.
//!
//! Everything read is checked before it is used: a malformed message, a tensor whose data do
//! not fill its dims (or whose dims overflow), an element type a recurrent node does not take,
//! external data, an unknown attribute or a value outside ONNX's is [`Error::Onnx`] naming
//! what, never a panic. Sizes are checked for overflow and allocations are fallible
//! ([`Error::OutOfMemory`] where the allocator refuses); the outputs a node asks for (`Y` is
//! `T * D * B * H`) may still be much larger than its files, as its node says.

use super::proto::{self, attribute_type as at, data_type as dt, AttributeProto, ModelProto, NodeProto, TensorProto};
use super::{Attributes, Direction, GpuNode, Node, Op, Outputs};
use crate::cells::{Activation, Function};
use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::tensor::Tensor;
use prost::Message;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The oldest opset whose recurrent operators this module implements (7: the current
/// attributes; `layout` from 14).
pub const MIN_OPSET: i64 = 7;

/// A model file's one recurrent node, with the initializers it names.
#[derive(Clone, Debug)]
pub struct Model {
    /// The node.
    pub node: NodeProto,
    /// The attributes, checked.
    pub attrs: Attributes,
    /// The graph's inputs that no initializer gives, in order: `input_K.pb` is the K-th.
    pub data_inputs: Vec<String>,
    initializers: Vec<TensorProto>,
}

/// A tensor read from a file, in f32, with its element type (outputs are written in `X`'s).
#[derive(Clone, Debug, PartialEq)]
pub struct TypedTensor {
    /// The values, converted to f32 (lengths: exact integers up to 2^24).
    pub tensor: Tensor<f32>,
    /// ONNX's `data_type`.
    pub data_type: i32,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Onnx(msg.into())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| bad(format!("{}: {e}", path.display())))
}

/// The dims of `t`, checked (non-negative, product within usize and the data).
fn tensor_dims(what: &str, t: &TensorProto) -> Result<(Vec<usize>, usize)> {
    if t.data_location == 1 {
        return Err(bad(format!("{what}: external data is not supported")));
    }
    if t.segment.is_some() {
        return Err(bad(format!("{what}: segmented tensors are not supported")));
    }
    let mut shape = Vec::with_capacity(t.dims.len().min(8));
    let mut n: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d).map_err(|_| bad(format!("{what}: negative dimension {d} in {:?}", t.dims)))?;
        n = n.checked_mul(d).ok_or_else(|| bad(format!("{what}: dims {:?} overflow", t.dims)))?;
        shape.push(d);
    }
    Ok((shape, n))
}

/// `t`'s elements as f32 (FLOAT, DOUBLE, FLOAT16; `ints` is false: integers are read by
/// `int_values`, exactly).
fn tensor_values(what: &str, t: &TensorProto, ints: bool) -> Result<TypedTensor> {
    let (shape, n) = tensor_dims(what, t)?;
    let raw = !t.raw_data.is_empty();
    let width = match t.data_type {
        dt::FLOAT | dt::INT32 => 4,
        dt::DOUBLE | dt::INT64 => 8,
        dt::FLOAT16 => 2,
        other => return Err(bad(format!("{what}: element type {other} is not one a recurrent node takes"))),
    };
    let int_type = matches!(t.data_type, dt::INT32 | dt::INT64);
    if int_type != ints {
        let want = if ints { "int32 or int64" } else { "float, double or float16" };
        return Err(bad(format!("{what}: element type {} where {want} is needed", t.data_type)));
    }
    let typed_len = match t.data_type {
        dt::FLOAT => t.float_data.len(),
        dt::DOUBLE => t.double_data.len(),
        dt::INT64 => t.int64_data.len(),
        _ => t.int32_data.len(),
    };
    let got = if raw { t.raw_data.len() / width } else { typed_len };
    if (raw && !t.raw_data.len().is_multiple_of(width)) || got != n || (raw && typed_len != 0) {
        return Err(bad(format!("{what}: its data ({} bytes raw, {typed_len} typed) do not fill dims {shape:?} ({n} elements)", t.raw_data.len())));
    }
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory { what: what.into(), bytes: n as u128 * 4 })?;
    if raw {
        let c = t.raw_data.chunks_exact(width);
        match t.data_type {
            dt::FLOAT => v.extend(c.map(|b| f32::from_le_bytes(b.try_into().unwrap()))),
            dt::DOUBLE => v.extend(c.map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)),
            dt::FLOAT16 => v.extend(c.map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32())),
            _ => return Err(bad(format!("{what}: integers read as floats"))),
        }
    } else {
        match t.data_type {
            dt::FLOAT => v.extend_from_slice(&t.float_data),
            dt::DOUBLE => v.extend(t.double_data.iter().map(|&x| x as f32)),
            dt::FLOAT16 => v.extend(t.int32_data.iter().map(|&x| half::f16::from_bits(x as u16).to_f32())),
            _ => return Err(bad(format!("{what}: integers read as floats"))),
        }
    }
    Ok(TypedTensor { tensor: Tensor::new(shape, v)?, data_type: t.data_type })
}

/// An integer tensor (INT32, INT64: `sequence_lens`) as i64, exactly: its dims and values.
fn int_values(what: &str, t: &TensorProto) -> Result<(Vec<usize>, Vec<i64>)> {
    let (shape, n) = tensor_dims(what, t)?;
    let width = match t.data_type {
        dt::INT32 => 4,
        dt::INT64 => 8,
        other => return Err(bad(format!("{what}: element type {other} where int32 or int64 is needed"))),
    };
    let typed_len = if t.data_type == dt::INT32 { t.int32_data.len() } else { t.int64_data.len() };
    let raw = !t.raw_data.is_empty();
    let got = if raw { t.raw_data.len() / width } else { typed_len };
    if (raw && !t.raw_data.len().is_multiple_of(width)) || got != n || (raw && typed_len != 0) {
        return Err(bad(format!("{what}: its data ({} bytes raw, {typed_len} typed) do not fill dims {shape:?} ({n} elements)", t.raw_data.len())));
    }
    let v: Vec<i64> = match (raw, t.data_type) {
        (true, dt::INT32) => t.raw_data.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64).collect(),
        (true, _) => t.raw_data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect(),
        (false, dt::INT32) => t.int32_data.iter().map(|&x| x as i64).collect(),
        (false, _) => t.int64_data.clone(),
    };
    Ok((shape, v))
}

/// Reads one `TensorProto` file (`input_K.pb`, `output_K.pb`) of floating-point values.
pub fn read_tensor(path: &Path) -> Result<TypedTensor> {
    let what = path.display().to_string();
    float_tensor(&what, &proto::decode(&what, &read(path)?)?)
}

/// A `TensorProto` of floating-point values (FLOAT, DOUBLE, FLOAT16) as f32, checked.
pub fn float_tensor(what: &str, t: &TensorProto) -> Result<TypedTensor> {
    tensor_values(what, t, false)
}

fn attr_int(a: &AttributeProto) -> Result<i64> {
    if a.r#type != at::INT {
        return Err(bad(format!("attribute {} must be an int (type {}), is type {}", a.name, at::INT, a.r#type)));
    }
    Ok(a.i)
}

fn attr_flag(a: &AttributeProto) -> Result<bool> {
    match attr_int(a)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(bad(format!("attribute {} must be 0 or 1, is {v}", a.name))),
    }
}

fn attr_string(a: &AttributeProto) -> Result<String> {
    if a.r#type != at::STRING {
        return Err(bad(format!("attribute {} must be a string, is type {}", a.name, a.r#type)));
    }
    String::from_utf8(a.s.clone()).map_err(|_| bad(format!("attribute {} is not UTF-8", a.name)))
}

fn attr_floats(a: &AttributeProto) -> Result<Vec<f32>> {
    if a.r#type != at::FLOATS {
        return Err(bad(format!("attribute {} must be a list of floats, is type {}", a.name, a.r#type)));
    }
    Ok(a.floats.clone())
}

/// A node's attributes, checked against the operator (opset `opset`).
pub fn attributes(node: &NodeProto, opset: i64) -> Result<Attributes> {
    let op = Op::from_op_type(&node.op_type)?;
    let mut attrs = Attributes::new(op);
    let (mut names, mut alphas, mut betas) = (None, Vec::new(), Vec::new());
    let mut seen = Vec::new();
    for a in &node.attribute {
        if seen.contains(&a.name.as_str()) {
            return Err(bad(format!("attribute {} given twice", a.name)));
        }
        seen.push(a.name.as_str());
        if !a.ref_attr_name.is_empty() {
            return Err(bad(format!("attribute {} refers to a function's attribute {}", a.name, a.ref_attr_name)));
        }
        match a.name.as_str() {
            "hidden_size" => {
                let h = attr_int(a)?;
                attrs.hidden_size = Some(usize::try_from(h).ok().filter(|&h| h > 0).ok_or_else(|| bad(format!("hidden_size {h} is not positive")))?);
            }
            "direction" => {
                attrs.direction = match attr_string(a)?.as_str() {
                    "forward" => Direction::Forward,
                    "reverse" => Direction::Reverse,
                    "bidirectional" => Direction::Bidirectional,
                    other => return Err(bad(format!("direction {other:?} is not forward, reverse or bidirectional"))),
                }
            }
            "layout" if opset >= 14 => attrs.batch_major = attr_flag(a)?,
            "clip" => {
                if a.r#type != at::FLOAT {
                    return Err(bad(format!("attribute clip must be a float, is type {}", a.r#type)));
                }
                attrs.clip = Some(a.f);
            }
            "input_forget" if op == Op::Lstm => attrs.input_forget = attr_flag(a)?,
            "linear_before_reset" if op == Op::Gru => attrs.linear_before_reset = attr_flag(a)?,
            "activations" => {
                if a.r#type != at::STRINGS {
                    return Err(bad(format!("attribute activations must be a list of strings, is type {}", a.r#type)));
                }
                let v: Result<Vec<Function>> = a
                    .strings
                    .iter()
                    .map(|s| Function::from_name(&String::from_utf8_lossy(s)).map_err(|e| bad(e.to_string())))
                    .collect();
                names = Some(v?);
            }
            "activation_alpha" => alphas = attr_floats(a)?,
            "activation_beta" => betas = attr_floats(a)?,
            other => return Err(bad(format!("{} has no attribute {other:?} (opset {opset})", op.name()))),
        }
    }
    // alpha and beta are consumed in list order by the functions that take them.
    if let Some(names) = names {
        let (mut ia, mut ib) = (alphas.into_iter(), betas.into_iter());
        attrs.activations = names
            .into_iter()
            .map(|f| {
                let (ta, tb) = f.takes();
                Activation::with(f, if ta { ia.next() } else { None }, if tb { ib.next() } else { None }).map_err(|e| bad(e.to_string()))
            })
            .collect::<Result<_>>()?;
    } else if !alphas.is_empty() || !betas.is_empty() {
        return Err(bad("activation_alpha or activation_beta without activations"));
    }
    Ok(attrs)
}

impl Model {
    /// Decodes a model and checks that its graph is one recurrent node of the default domain.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let m: ModelProto = proto::decode("model", bytes)?;
        let opset = m
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .ok_or_else(|| bad("the model imports no opset of the default domain"))?;
        if opset < MIN_OPSET {
            return Err(bad(format!("opset {opset}: the recurrent operators are implemented from opset {MIN_OPSET}")));
        }
        let graph = m.graph.ok_or_else(|| bad("the model has no graph"))?;
        let [node] = <[NodeProto; 1]>::try_from(graph.node).map_err(|nodes| {
            let ops: Vec<_> = nodes.iter().map(|n| n.op_type.as_str()).collect();
            bad(format!("the graph has {} nodes {ops:?}: only a graph of one LSTM, GRU or RNN node runs", nodes.len()))
        })?;
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(bad(format!("node domain {:?} is not ONNX's", node.domain)));
        }
        let attrs = attributes(&node, opset)?;
        let inits: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let data_inputs = graph.input.iter().map(|v| v.name.clone()).filter(|n| !inits.contains(&n.as_str())).collect();
        Ok(Model { node, attrs, data_inputs, initializers: graph.initializer })
    }

    /// Reads and decodes a model file.
    pub fn read(path: &Path) -> Result<Self> {
        Self::from_bytes(&read(path)?).map_err(|e| match e {
            Error::Onnx(m) => bad(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// The node's inputs by position (X, W, R, B, sequence_lens, initial_h, initial_c, P),
    /// `None` for absent ones: from the initializers or from `data` (the graph's data inputs in
    /// order).
    fn inputs<'a>(&'a self, data: &'a [TensorProto]) -> Result<Vec<Option<&'a TensorProto>>> {
        if data.len() != self.data_inputs.len() {
            return Err(bad(format!("the graph has {} inputs to give, {} tensors were given", self.data_inputs.len(), data.len())));
        }
        let max = if self.attrs.op == Op::Lstm { 8 } else { 6 };
        if self.node.input.len() > max {
            return Err(bad(format!("{} takes at most {max} inputs, the node has {}", self.attrs.op.name(), self.node.input.len())));
        }
        let mut v = Vec::new();
        for name in &self.node.input {
            if name.is_empty() {
                v.push(None);
                continue;
            }
            let t = match self.initializers.iter().find(|t| &t.name == name) {
                Some(t) => t,
                None => {
                    let k = self.data_inputs.iter().position(|n| n == name).ok_or_else(|| bad(format!("node input {name:?} is neither a graph input nor an initializer")))?;
                    &data[k]
                }
            };
            v.push(Some(t));
        }
        v.resize(max, None);
        Ok(v)
    }

    /// Prepares the node and runs it on `x`'s tensors: on the CPU engine, or on `gpu`.
    /// Returns the node's present outputs in order (name, tensor), in `X`'s element type.
    pub fn run(&self, data: &[TensorProto], gpu: Option<&Arc<Context>>) -> Result<Vec<(String, TensorProto)>> {
        let p = self.prepare(data)?;
        let out = match gpu {
            None => p.node.forward_cpu(&p.x, p.lens.as_deref(), p.initial_h.as_ref(), p.initial_c.as_ref())?,
            Some(ctx) => {
                let g: GpuNode = p.node.gpu(ctx)?;
                g.forward(&p.x, p.lens.as_deref(), p.initial_h.as_ref(), p.initial_c.as_ref())?
            }
        };
        self.outputs(&p, &out)
    }

    /// The node prepared from its inputs (initializers and `data`), with the run's tensors.
    pub fn prepare(&self, data: &[TensorProto]) -> Result<Prepared> {
        let ins = self.inputs(data)?;
        const NAMES: [&str; 8] = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"];
        let names: &[&str] = if self.attrs.op == Op::Lstm { &NAMES } else { &NAMES[..6] };
        let mut f = Vec::new();
        let mut lens = None;
        for (k, &name) in names.iter().enumerate() {
            let t = match (ins[k], name) {
                (None, "X" | "W" | "R") => return Err(Error::MissingTensor(name.into())),
                (None, _) => None,
                (Some(t), "sequence_lens") => {
                    let (shape, v) = int_values(name, t)?;
                    if shape.len() != 1 {
                        return Err(Error::RankMismatch { what: "sequence_lens".into(), expected: 1, got: shape });
                    }
                    lens = Some(v);
                    None
                }
                (Some(t), _) => Some(tensor_values(name, t, false)?),
            };
            f.push(t);
        }
        let x_type = f[0].as_ref().map(|t| t.data_type).unwrap_or(dt::FLOAT);
        for (k, t) in f.iter().enumerate() {
            if let Some(t) = t {
                if names[k] != "sequence_lens" && t.data_type != x_type {
                    return Err(bad(format!("{} has element type {}, X has {x_type} (ONNX's T is one type)", names[k], t.data_type)));
                }
            }
        }
        let get = |k: usize| f.get(k).and_then(|t| t.as_ref()).map(|t| &t.tensor);
        let (Some(x), Some(w), Some(r)) = (get(0), get(1), get(2)) else { return Err(Error::MissingTensor("X, W or R".into())) };
        let node = Node::new(self.attrs.clone(), w, r, get(3), get(7))?;
        Ok(Prepared { node, x: x.clone(), lens, initial_h: get(5).cloned(), initial_c: get(6).cloned(), x_type })
    }

    /// The node's present outputs in order (name, tensor in `X`'s element type) from a run.
    pub fn outputs(&self, p: &Prepared, out: &Outputs) -> Result<Vec<(String, TensorProto)>> {
        let mut res = Vec::new();
        for (k, name) in self.node.output.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            let t = match k {
                0 => &out.y,
                1 => &out.y_h,
                2 => out.y_c.as_ref().ok_or_else(|| bad(format!("{} has no output Y_c", self.attrs.op.name())))?,
                _ => return Err(bad(format!("{} has 3 outputs at most, the node names {}", self.attrs.op.name(), self.node.output.len()))),
            };
            res.push((name.clone(), encode(name, t, p.x_type)));
        }
        Ok(res)
    }
}

/// A node prepared from a model's inputs, with its run's tensors (`Model::prepare`).
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The node.
    pub node: Node,
    /// `X`.
    pub x: Tensor<f32>,
    /// `sequence_lens`.
    pub lens: Option<Vec<i64>>,
    /// `initial_h`.
    pub initial_h: Option<Tensor<f32>>,
    /// `initial_c`.
    pub initial_c: Option<Tensor<f32>>,
    /// `X`'s element type, the outputs'.
    pub x_type: i32,
}

/// A tensor as a `TensorProto` of `data_type` (FLOAT, DOUBLE or FLOAT16), raw little-endian.
pub fn encode(name: &str, t: &Tensor<f32>, data_type: i32) -> TensorProto {
    let raw: Vec<u8> = match data_type {
        dt::DOUBLE => t.data.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect(),
        dt::FLOAT16 => t.data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        _ => t.data.iter().flat_map(|&v| v.to_le_bytes()).collect(),
    };
    TensorProto { dims: t.shape.iter().map(|&d| d as i64).collect(), data_type, name: name.into(), raw_data: raw, ..Default::default() }
}

/// `wgpu-rnn onnx`: runs `model` on the tensors `data/input_K.pb` and writes the node's
/// outputs to `out/output_K.pb`; returns the files written.
pub fn run_files(model: &Path, data: &Path, out: &Path, gpu: Option<&Arc<Context>>) -> Result<Vec<PathBuf>> {
    let m = Model::read(model)?;
    let mut tensors = Vec::new();
    for k in 0..m.data_inputs.len() {
        let p = data.join(format!("input_{k}.pb"));
        tensors.push(proto::decode(&p.display().to_string(), &read(&p)?)?);
    }
    let outs = m.run(&tensors, gpu)?;
    std::fs::create_dir_all(out)?;
    let mut written = Vec::new();
    for (k, (_, t)) in outs.iter().enumerate() {
        let p = out.join(format!("output_{k}.pb"));
        std::fs::write(&p, t.encode_to_vec())?;
        written.push(p);
    }
    Ok(written)
}
