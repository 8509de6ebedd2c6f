//! ONNX's recurrent operators `LSTM`, `GRU` and `RNN` (opset 7 to 22), with ONNX's semantics,
//! on the CPU engine and the GPU.
//!
//! A [`Node`] is prepared once from the node's attributes and its weights `W`, `R`, `B`, `P` in
//! ONNX's layouts: the operator and its attributes choose a cell (LSTM: `LSTM`, with peepholes
//! `LSTM_PEEPHOLE`, with `input_forget` `LSTM_CIFG`, or `LSTM_PEEPHOLE` with peepholes, the
//! forget gate computed from the input gate's rows negated (below); GRU: `GRU` for
//! `linear_before_reset = 1`, `GRU_RESET_BEFORE` for 0; RNN: `RNN_TANH` / `RNN_RELU`), and the
//! gates are reordered and the biases split into the cell's parameters then, not per call
//! ([`Node::weights`] are ordinary [`Weights`]). Activations and clip are the cell's activation
//! slots ([`crate::cells::activation`]). A run takes `X`, `sequence_lens`, `initial_h`, `initial_c` in ONNX's layouts
//! (`layout = 0`: `X [T, B, I]`, `Y [T, D, B, H]`, `Y_h [D, B, H]`; `layout = 1`: `X [B, T, I]`,
//! `Y [B, T, D, H]`, `Y_h [B, D, H]`) and returns `Y`, `Y_h` and (LSTM) `Y_c` in them: padded
//! steps of `Y` are zero, a sequence of length 0 has zero outputs and states, as onnxruntime
//! gives. `direction = reverse` runs the one direction over each sequence reversed: the rows
//! are gathered reversed into the packed input and scattered back, so the engines need no
//! reverse-only mode.
//!
//! This module is the one place that maps ONNX's operators onto cells (as [`crate::weights`]
//! maps PyTorch's names): [`Node::new`] names the cells and their gate orders.
//!
//! `input_forget` computes the forget gate from the input gate's rows negated through the
//! cell's forget-gate slot set to the gate function's complement `1 - F(-x)`: `1 - F(a_i)`,
//! ONNX's `f = 1 - i`, for every gate function.
//!
//! [`file`](mod@file) reads a model whose graph is one such node and its tensors as onnx's backend tests
//! store them (`wgpu-rnn onnx`).

pub mod file;
pub mod plan;
pub mod proto;

pub use plan::{OnnxBuffers, OnnxPlan};

use crate::cells::{Activation, Function, Mode, Pointwise};
use crate::config::RnnConfig;
use crate::cpu::{self, Pass};
use crate::error::{Error, Result};
use crate::gpu::Context;
use crate::packing::PackedSequence;
use crate::tensor::{checked_len, try_filled, Tensor};
use crate::weights::Weights;
use std::sync::{Arc, Mutex};

/// ONNX's recurrent operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `LSTM`: gates i, o, f, c; states h and c.
    Lstm,
    /// `GRU`: gates z, r, h.
    Gru,
    /// `RNN`: one gate.
    Rnn,
}

impl Op {
    /// From a node's `op_type`.
    pub fn from_op_type(op_type: &str) -> Result<Self> {
        match op_type {
            "LSTM" => Ok(Op::Lstm),
            "GRU" => Ok(Op::Gru),
            "RNN" => Ok(Op::Rnn),
            other => Err(Error::Onnx(format!("operator {other:?} is not LSTM, GRU or RNN"))),
        }
    }

    /// ONNX's name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lstm => "LSTM",
            Op::Gru => "GRU",
            Op::Rnn => "RNN",
        }
    }

    /// Gates per unit (the rows of `W` are `gates * hidden_size` per direction).
    pub fn gates(self) -> usize {
        match self {
            Op::Lstm => 4,
            Op::Gru => 3,
            Op::Rnn => 1,
        }
    }

    /// The activations per direction when `activations` is absent.
    pub fn default_activations(self) -> &'static [Function] {
        match self {
            Op::Lstm => &[Function::Sigmoid, Function::Tanh, Function::Tanh],
            Op::Gru => &[Function::Sigmoid, Function::Tanh],
            Op::Rnn => &[Function::Tanh],
        }
    }
}

/// ONNX's `direction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `forward` (the default).
    Forward,
    /// `reverse`: one direction, each sequence from its last valid step to its first.
    Reverse,
    /// `bidirectional`: both; `Y`'s direction axis forward first.
    Bidirectional,
}

impl Direction {
    /// `num_directions`.
    pub fn count(self) -> usize {
        if self == Direction::Bidirectional {
            2
        } else {
            1
        }
    }
}

/// A recurrent node's attributes, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Attributes {
    /// The operator.
    pub op: Op,
    /// `hidden_size`, if given (else `R`'s shape says).
    pub hidden_size: Option<usize>,
    /// `direction`.
    pub direction: Direction,
    /// `layout`: batch-major (`1`) or time-major (`0`, the default).
    pub batch_major: bool,
    /// `activations`: per direction the operator's functions in order (f, g, h), directions
    /// one after the other; empty for the operator's defaults.
    pub activations: Vec<Activation>,
    /// `clip`.
    pub clip: Option<f32>,
    /// LSTM's `input_forget`.
    pub input_forget: bool,
    /// GRU's `linear_before_reset`.
    pub linear_before_reset: bool,
}

impl Attributes {
    /// The defaults of `op`.
    pub fn new(op: Op) -> Self {
        Attributes { op, hidden_size: None, direction: Direction::Forward, batch_major: false, activations: Vec::new(), clip: None, input_forget: false, linear_before_reset: false }
    }

    /// Whether every direction's activations are the operator's defaults (`Relu` alone is
    /// also one of RNN's: `RNN_RELU`).
    /// `None` where they are not; `Some(true)` for RNN's Relu.
    fn default_activations(&self) -> Option<bool> {
        let per = self.op.default_activations().len();
        let relu = !self.activations.is_empty() && self.activations.iter().all(|a| a.function() == Function::Relu);
        if self.op == Op::Rnn && relu {
            return Some(true);
        }
        let defaults = self.activations.chunks(per).all(|c| c.iter().zip(self.op.default_activations()).all(|(a, &k)| a.function() == k));
        defaults.then_some(false)
    }
}

/// A node prepared to run: the cell's config and weights, and what the run maps.
#[derive(Clone, Debug)]
pub struct Node {
    attrs: Attributes,
    weights: Weights<f32>,
    hidden: usize,
    input: usize,
}

/// `Y`, `Y_h` and (LSTM) `Y_c` in the node's layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Outputs {
    /// `[T, D, B, H]` (layout 0) or `[B, T, D, H]`.
    pub y: Tensor<f32>,
    /// `[D, B, H]` (layout 0) or `[B, D, H]`.
    pub y_h: Tensor<f32>,
    /// LSTM's cell state, shaped as `y_h`.
    pub y_c: Option<Tensor<f32>>,
}

fn dims(what: &str, t: &Tensor<f32>, rank: usize) -> Result<()> {
    if t.shape.len() != rank {
        return Err(Error::RankMismatch { what: what.into(), expected: rank, got: t.shape.clone() });
    }
    Ok(())
}

fn expect_shape(what: &str, got: &[usize], expected: &[usize]) -> Result<()> {
    if got != expected {
        return Err(Error::ShapeMismatch { what: what.into(), expected: expected.to_vec(), got: got.to_vec() });
    }
    Ok(())
}

impl Node {
    /// Prepares a node from its attributes and its weights in ONNX's layouts: `w [D, G*H, I]`,
    /// `r [D, G*H, H]`, `b [D, 2*G*H]` (`Wb` then `Rb`; zeros if absent), `p [D, 3*H]` (LSTM's
    /// peepholes i, o, f). Shapes, `hidden_size` against `W` and `R`, the attributes and the
    /// values (finite) are checked here.
    pub fn new(attrs: Attributes, w: &Tensor<f32>, r: &Tensor<f32>, b: Option<&Tensor<f32>>, p: Option<&Tensor<f32>>) -> Result<Self> {
        let op = attrs.op;
        let g = op.gates();
        let d = attrs.direction.count();
        dims("W", w, 3)?;
        dims("R", r, 3)?;
        let (input, gh) = (w.shape[2], w.shape[1]);
        if w.shape[0] != d {
            return Err(Error::Onnx(format!("W has {} directions, direction {:?} needs {d}", w.shape[0], attrs.direction)));
        }
        let hidden = r.shape[2];
        if let Some(h) = attrs.hidden_size {
            if h != hidden || gh != g * h {
                return Err(Error::Onnx(format!("hidden_size {h} disagrees with W {:?} and R {:?} ({} gates)", w.shape, r.shape, g)));
            }
        }
        if hidden == 0 || input == 0 || gh != g * hidden {
            return Err(Error::Onnx(format!("W {:?} and R {:?} do not describe {} of {g} gates over a positive hidden size", w.shape, r.shape, op.name())));
        }
        expect_shape("R", &r.shape, &[d, g * hidden, hidden])?;
        if let Some(b) = b {
            expect_shape("B", &b.shape, &[d, 2 * g * hidden])?;
        }
        if let Some(p) = p {
            if op != Op::Lstm {
                return Err(Error::Onnx(format!("{} takes no peepholes P", op.name())));
            }
            expect_shape("P", &p.shape, &[d, 3 * hidden])?;
        }
        let per = op.default_activations().len();
        if !attrs.activations.is_empty() && attrs.activations.len() != per * d {
            return Err(Error::Onnx(format!("{} activations given, {} needs {} per direction ({} in all)", attrs.activations.len(), op.name(), per, per * d)));
        }
        // The cell's own functions where the node keeps ONNX's defaults (RNN's Relu: RNN_RELU),
        // else activation slots per direction.
        let own = if attrs.clip.is_none() { attrs.default_activations() } else { None };
        let relu = own == Some(true);
        let pointwise: Vec<Pointwise> = match own {
            Some(_) => Vec::new(),
            None => {
                let acts: Vec<Activation> = if attrs.activations.is_empty() {
                    op.default_activations().iter().cycle().take(per * d).map(|&f| Activation::new(f)).collect()
                } else {
                    attrs.activations.clone()
                };
                acts.chunks(per).map(|c| Pointwise::new(c, attrs.clip)).collect::<Result<_>>().map_err(|e| Error::Onnx(e.to_string()))?
            }
        };
        if attrs.input_forget && op != Op::Lstm {
            return Err(Error::Onnx(format!("{} has no input_forget", op.name())));
        }
        for (what, t) in [("W", Some(w)), ("R", Some(r)), ("B", b), ("P", p)] {
            if let Some(t) = t {
                crate::float::check_finite(what, &t.data)?;
            }
        }
        // The cell, and for each of its gates ONNX's gate and sign (input_forget's f = 1 - i =
        // F(-a_i)); for LSTM_PEEPHOLE, its peepholes (c->i, c->f, c'->o) from ONNX's P (i, o,
        // f) with their signs.
        let mut peep: &[(usize, f32)] = &[(0, 1.0), (2, 1.0), (1, 1.0)];
        let (mode, gates): (Mode, &[(usize, f32)]) = match op {
            Op::Lstm if attrs.input_forget && p.is_some() => {
                peep = &[(0, 1.0), (0, -1.0), (1, 1.0)];
                (Mode::LstmPeephole, &[(0, 1.0), (0, -1.0), (3, 1.0), (1, 1.0)])
            }
            Op::Lstm if attrs.input_forget => (Mode::LstmCifg, &[(0, -1.0), (3, 1.0), (1, 1.0)]),
            Op::Lstm if p.is_some() => (Mode::LstmPeephole, &[(0, 1.0), (2, 1.0), (3, 1.0), (1, 1.0)]),
            Op::Lstm => (Mode::Lstm, &[(0, 1.0), (2, 1.0), (3, 1.0), (1, 1.0)]),
            Op::Gru if attrs.linear_before_reset => (Mode::Gru, &[(1, 1.0), (0, 1.0), (2, 1.0)]),
            Op::Gru => (Mode::GruResetBefore, &[(1, 1.0), (0, 1.0), (2, 1.0)]),
            Op::Rnn if relu => (Mode::RnnRelu, &[(0, 1.0)]),
            Op::Rnn => (Mode::RnnTanh, &[(0, 1.0)]),
        };
        // LSTM_CIFG and LSTM_PEEPHOLE give the forget gate a slot of its own (the fourth):
        // ONNX's F, or with input_forget its complement 1 - F(-x), which on the input gate's
        // negated rows is 1 - F(a_i), ONNX's f = 1 - i, for every F (the sigmoid is its own
        // complement, so the cell's own slots need nothing). Clip is symmetric.
        let pointwise = if mode.slots().len() == 4 {
            pointwise
                .iter()
                .map(|p| {
                    let f = p.slot(0);
                    let slots = [p.slot(0), p.slot(1), p.slot(2), if attrs.input_forget { f.complemented() } else { f }];
                    Pointwise::new(&slots, p.clip())
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            pointwise
        };
        let cfg = RnnConfig::new(mode, input, hidden).bidirectional(d == 2).with_pointwise(pointwise);
        let mut weights = Weights::zeros(&cfg)?;
        let h = hidden;
        let mut missing = None;
        weights.for_each_mut(|def, _, dir, dst| {
            // Our gate k's rows from ONNX's gate gates[k].0 rows of `src` (row width `k`).
            let rows = |src: &[f32], width: usize, dst: &mut [f32]| {
                for (k, &(og, sign)) in gates.iter().enumerate() {
                    let s = &src[og * h * width..(og + 1) * h * width];
                    for (o, &v) in dst[k * h * width..(k + 1) * h * width].iter_mut().zip(s) {
                        *o = sign * v;
                    }
                }
            };
            fn per_dir(t: &Tensor<f32>, d: usize, dir: usize) -> &[f32] {
                let n = t.data.len() / d;
                &t.data[dir * n..(dir + 1) * n]
            }
            match def.stem {
                "weight_ih" => rows(per_dir(w, d, dir), input, dst),
                "weight_hh" => rows(per_dir(r, d, dir), h, dst),
                "bias_ih" => {
                    if let Some(b) = b {
                        rows(&per_dir(b, d, dir)[..g * h], 1, dst)
                    }
                }
                "bias_hh" => {
                    if let Some(b) = b {
                        rows(&per_dir(b, d, dir)[g * h..], 1, dst)
                    }
                }
                "weight_peephole" => {
                    if let Some(p) = p {
                        let src = per_dir(p, d, dir);
                        for (k, &(og, sign)) in peep.iter().enumerate() {
                            for (o, &v) in dst[k * h..(k + 1) * h].iter_mut().zip(&src[og * h..(og + 1) * h]) {
                                *o = sign * v;
                            }
                        }
                    }
                }
                other => missing = Some(other),
            }
        });
        if let Some(stem) = missing {
            return Err(Error::Onnx(format!("{mode} has a parameter {stem:?} ONNX does not give")));
        }
        weights.validate()?;
        Ok(Node { attrs, weights, hidden, input })
    }

    /// The attributes.
    pub fn attributes(&self) -> &Attributes {
        &self.attrs
    }

    /// The cell's weights, as the engines take them.
    pub fn weights(&self) -> &Weights<f32> {
        &self.weights
    }

    /// Runs on the CPU engine. `x`: `[T, B, I]` (layout 0) or `[B, T, I]`; `seq_lens`: `[B]`,
    /// each in `0..=T` (all `T` if absent); `initial_h`, `initial_c`: `Y_h`'s shape (zeros if
    /// absent).
    pub fn forward_cpu(&self, x: &Tensor<f32>, seq_lens: Option<&[i64]>, initial_h: Option<&Tensor<f32>>, initial_c: Option<&Tensor<f32>>) -> Result<Outputs> {
        self.run(x, seq_lens, initial_h, initial_c, |input, states| Ok(cpu::forward(&self.weights, input, states, Pass::Inference)?.0))
    }

    /// The node's weights on `ctx`'s device, for [`GpuNode::forward`].
    pub fn gpu(&self, ctx: &Arc<Context>) -> Result<GpuNode> {
        // The weights checked as the GPU takes them (finite, within its storage).
        crate::gpu::GpuRnn::new(ctx, &self.weights)?;
        Ok(GpuNode { ctx: ctx.clone(), node: self.clone(), last: Mutex::new(None) })
    }

    /// Checks a run's tensors against the node (shapes, lengths, values finite); returns
    /// `T`, `B` and the lengths.
    fn check_inputs(&self, x: &Tensor<f32>, seq_lens: Option<&[i64]>, initial_h: Option<&Tensor<f32>>, initial_c: Option<&Tensor<f32>>) -> Result<(usize, usize, Vec<usize>)> {
        dims("X", x, 3)?;
        let bm = self.attrs.batch_major;
        let (t_max, b) = if bm { (x.shape[1], x.shape[0]) } else { (x.shape[0], x.shape[1]) };
        if x.shape[2] != self.input {
            return Err(Error::ShapeMismatch { what: "X's input size".into(), expected: vec![self.input], got: vec![x.shape[2]] });
        }
        checked_len::<f32>("X", &x.shape)?;
        if x.data.len() != x.shape.iter().product::<usize>() {
            return Err(Error::LengthMismatch { what: "X".into(), shape: x.shape.clone(), expected: x.shape.iter().product(), got: x.data.len() });
        }
        if t_max == 0 || b == 0 {
            return Err(Error::EmptyBatch(format!("X {:?} has no steps or no sequences", x.shape)));
        }
        crate::float::check_finite("X", &x.data)?;
        let lens = lengths(seq_lens, t_max, b)?;
        let d = self.attrs.direction.count();
        let state_shape = if bm { vec![b, d, self.hidden] } else { vec![d, b, self.hidden] };
        for (what, s) in [("initial_h", initial_h), ("initial_c", initial_c)] {
            if let Some(s) = s {
                if what == "initial_c" && self.attrs.op != Op::Lstm {
                    return Err(Error::Onnx(format!("{} takes no initial_c", self.attrs.op.name())));
                }
                expect_shape(what, &s.shape, &state_shape)?;
                if s.data.len() != s.shape.iter().product::<usize>() {
                    return Err(Error::LengthMismatch { what: what.into(), shape: s.shape.clone(), expected: s.shape.iter().product(), got: s.data.len() });
                }
                crate::float::check_finite(what, &s.data)?;
            }
        }
        Ok((t_max, b, lens))
    }

    /// The shared run: checks, gathers ONNX's layout into a packed batch of the sequences of
    /// positive length (each reversed for `direction = reverse`), runs `engine`, scatters back.
    fn run(
        &self,
        x: &Tensor<f32>,
        seq_lens: Option<&[i64]>,
        initial_h: Option<&Tensor<f32>>,
        initial_c: Option<&Tensor<f32>>,
        engine: impl FnOnce(&PackedSequence<f32>, &[Option<&[f32]>]) -> Result<cpu::ForwardOutput<f32>>,
    ) -> Result<Outputs> {
        let (t_max, b, lens) = self.check_inputs(x, seq_lens, initial_h, initial_c)?;
        let bm = self.attrs.batch_major;
        let (d, h, i_w) = (self.attrs.direction.count(), self.hidden, self.input);
        let state_shape = if bm { vec![b, d, h] } else { vec![d, b, h] };
        let lstm = self.attrs.op == Op::Lstm;
        // The sequences of positive length, in the caller's order.
        let active: Vec<usize> = (0..b).filter(|&k| lens[k] > 0).collect();
        let ba = active.len();
        let rows = OnnxRows::of(&self.attrs, t_max, b);
        let y_shape = if bm { vec![b, t_max, d, h] } else { vec![t_max, d, b, h] };
        let mut y = Tensor::new(y_shape.clone(), try_filled("Y", checked_len::<f32>("Y", &y_shape)?, 0.0f32)?)?;
        let n_state = d * b * h;
        let mut y_h = Tensor::new(state_shape.clone(), try_filled("Y_h", n_state, 0.0f32)?)?;
        let mut y_c = if lstm { Some(Tensor::new(state_shape.clone(), try_filled("Y_c", n_state, 0.0f32)?)?) } else { None };
        if ba == 0 {
            return Ok(Outputs { y, y_h, y_c });
        }
        let t_run = active.iter().map(|&k| lens[k]).max().unwrap_or(0);
        let mut padded = try_filled("X gathered", checked_len::<f32>("X gathered", &[t_run, ba, i_w])?, 0.0f32)?;
        for (j, &k) in active.iter().enumerate() {
            let len = lens[k];
            for t in 0..len {
                padded[(t * ba + j) * i_w..][..i_w].copy_from_slice(&x.data[rows.x(rows.step(len, t), k) * i_w..][..i_w]);
            }
        }
        let alens: Vec<usize> = active.iter().map(|&k| lens[k]).collect();
        let input = PackedSequence::from_padded(&padded, [t_run, ba, i_w], false, &alens)?;
        drop(padded);
        // Initial states as the engines take them: [D, B', H] over the active sequences.
        let gather_state = |s: &Tensor<f32>| {
            let mut v = vec![0.0f32; d * ba * h];
            for dir in 0..d {
                for (j, &k) in active.iter().enumerate() {
                    v[(dir * ba + j) * h..][..h].copy_from_slice(&s.data[rows.state(dir, k) * h..][..h]);
                }
            }
            v
        };
        let h0 = initial_h.map(gather_state);
        let c0 = initial_c.map(gather_state);
        let states0: Vec<Option<&[f32]>> = if lstm { vec![h0.as_deref(), c0.as_deref()] } else { vec![h0.as_deref()] };
        let out = engine(&input, &states0)?;
        let (padded_out, _) = out.output.to_padded(false, 0.0, Some(t_run))?;
        for (j, &k) in active.iter().enumerate() {
            let len = lens[k];
            for t in 0..len {
                let src = &padded_out.data[(t * ba + j) * d * h..][..d * h];
                for dir in 0..d {
                    let o = rows.y(rows.step(len, t), dir, k) * h;
                    y.data[o..o + h].copy_from_slice(&src[dir * h..][..h]);
                }
            }
        }
        let scatter_state = |s: &Tensor<f32>, dst: &mut Tensor<f32>| {
            for dir in 0..d {
                for (j, &k) in active.iter().enumerate() {
                    dst.data[rows.state(dir, k) * h..][..h].copy_from_slice(&s.data[(dir * ba + j) * h..][..h]);
                }
            }
        };
        scatter_state(&out.states[0], &mut y_h);
        if let Some(y_c) = y_c.as_mut() {
            scatter_state(&out.states[1], y_c);
        }
        Ok(Outputs { y, y_h, y_c })
    }
}

/// Where ONNX's rows lie in a node's padded tensors, in either layout: the one mapping the CPU
/// run's gathers and `OnnxPlan`'s row tables share.
#[derive(Clone, Copy, Debug)]
struct OnnxRows {
    batch_major: bool,
    reverse: bool,
    steps: usize,
    batch: usize,
    dirs: usize,
}

impl OnnxRows {
    fn of(attrs: &Attributes, steps: usize, batch: usize) -> Self {
        OnnxRows { batch_major: attrs.batch_major, reverse: attrs.direction == Direction::Reverse, steps, batch, dirs: attrs.direction.count() }
    }

    /// `X`'s row of step t of sequence k (`[T, B, I]` or `[B, T, I]`).
    fn x(&self, t: usize, k: usize) -> usize {
        if self.batch_major {
            k * self.steps + t
        } else {
            t * self.batch + k
        }
    }

    /// A state's row of direction `dir` of sequence k (`[D, B, H]` or `[B, D, H]`).
    fn state(&self, dir: usize, k: usize) -> usize {
        if self.batch_major {
            k * self.dirs + dir
        } else {
            dir * self.batch + k
        }
    }

    /// `Y`'s row of step t, direction `dir`, sequence k (`[T, D, B, H]` or `[B, T, D, H]`).
    fn y(&self, t: usize, dir: usize, k: usize) -> usize {
        if self.batch_major {
            (k * self.steps + t) * self.dirs + dir
        } else {
            (t * self.dirs + dir) * self.batch + k
        }
    }

    /// The ONNX step that a sequence of `len` steps runs at its packed step t (reversed for
    /// `direction = reverse`).
    fn step(&self, len: usize, t: usize) -> usize {
        if self.reverse {
            len - 1 - t
        } else {
            t
        }
    }
}

/// `sequence_lens` checked against `T` (all `T` if absent), for `B` sequences.
fn lengths(seq_lens: Option<&[i64]>, t_max: usize, b: usize) -> Result<Vec<usize>> {
    match seq_lens {
        None => Ok(vec![t_max; b]),
        Some(l) => {
            if l.len() != b {
                return Err(Error::ShapeMismatch { what: "sequence_lens".into(), expected: vec![b], got: vec![l.len()] });
            }
            l.iter()
                .map(|&v| match usize::try_from(v) {
                    Ok(v) if v <= t_max => Ok(v),
                    _ => Err(Error::InvalidLengths(format!("sequence_lens holds {v}, outside 0..={t_max}"))),
                })
                .collect()
        }
    }
}

/// A batch structure: steps, batch, `sequence_lens`.
type PlanKey = (usize, usize, Option<Vec<i64>>);

/// A [`Node`] on a device: the convenience form over [`OnnxPlan`] (the last batch structure's
/// plan kept for the next call); a problem past one storage binding, which an `OnnxPlan`
/// refuses, runs split through [`crate::gpu::GpuRnn`] (blocking form only).
pub struct GpuNode {
    ctx: Arc<Context>,
    node: Node,
    last: Mutex<Option<(PlanKey, Arc<OnnxPlan>)>>,
}

impl GpuNode {
    /// [`Node::forward_cpu`] on the GPU: an [`OnnxPlan`] recorded, submitted once, read back.
    pub fn forward(&self, x: &Tensor<f32>, seq_lens: Option<&[i64]>, initial_h: Option<&Tensor<f32>>, initial_c: Option<&Tensor<f32>>) -> Result<Outputs> {
        let (t, b, _) = self.node.check_inputs(x, seq_lens, initial_h, initial_c)?;
        let key: PlanKey = (t, b, seq_lens.map(<[i64]>::to_vec));
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let plan = match last.as_ref() {
            Some((k, p)) if *k == key => p.clone(),
            _ => match OnnxPlan::new(&self.ctx, &self.node, t, b, seq_lens) {
                Ok(p) => {
                    let p = Arc::new(p);
                    *last = Some((key, p.clone()));
                    p
                }
                // Past one storage binding: the cell's convenience type splits the problem
                // (by batch, or by time), around the host's gathers.
                Err(Error::Limit(_)) => {
                    drop(last);
                    let rnn = crate::gpu::GpuRnn::new(&self.ctx, &self.node.weights)?;
                    return self.node.run(x, seq_lens, initial_h, initial_c, |input, states| Ok(rnn.forward(input, states, Pass::Inference)?.0));
                }
                Err(e) => return Err(e),
            },
        };
        drop(last);
        plan.forward(x, initial_h, initial_c)
    }

    /// [`GpuNode::forward`] awaiting its results (the browser, where nothing may block).
    pub async fn forward_async(&self, x: &Tensor<f32>, seq_lens: Option<&[i64]>, initial_h: Option<&Tensor<f32>>, initial_c: Option<&Tensor<f32>>) -> Result<Outputs> {
        let (t, b, _) = self.node.check_inputs(x, seq_lens, initial_h, initial_c)?;
        let plan = OnnxPlan::new(&self.ctx, &self.node, t, b, seq_lens)?;
        plan.forward_async(x, initial_h, initial_c).await
    }

    /// The prepared node.
    pub fn node(&self) -> &Node {
        &self.node
    }
}
