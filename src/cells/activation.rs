//! A cell's activation slots: the one mechanism by which a cell's nonlinearities are chosen
//! (ONNX's `activations`, `activation_alpha`, `activation_beta` and `clip`).
//!
//! A cell that offers slots lists its own functions in [`super::Cell::SLOTS`] (LSTM: f =
//! sigmoid for its gates, g = tanh for the candidate, h = tanh for the output; GRU f, g; RNN
//! f) and computes each of those nonlinearities through its [`Slots`] value: on the CPU
//! `a.act(k, x, own)` with `own` the cell's own function, in WGSL `slot(k, x, own(x))`
//! (shaders/cells/prelude.wgsl). The LSTM variants that ONNX's `input_forget` runs on
//! (`LSTM_CIFG`, `LSTM_PEEPHOLE`) give their forget gate a fourth slot of its own. With
//! [`Standard`] (every config that sets no [`Pointwise`]) that is the cell's own function,
//! inlined as before: the cell's code and its speed do not change. With a [`Pointwise`] (per
//! direction, in the config) slot k computes its [`Activation`], the input clipped to `[-clip,
//! clip]` in every slot but h's (LSTM's cell state: onnxruntime clips the gates' inputs only). On the GPU the
//! functions, their parameters and the clip are pipeline-overridable constants of the cell's
//! kernels, so each kernel is compiled for its set.
//!
//! Only the forward computes custom slots: training with them is refused
//! ([`crate::Error::Unsupported`]): the backward's derivatives are the cells' own.

use crate::error::{Error, Result};
use crate::float::Float;
use std::fmt;

/// The functions a slot can compute (ONNX's list for its recurrent operators).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Function {
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// `max(0, x)`.
    Relu,
    /// `alpha x + beta`.
    Affine,
    /// `x` if `x >= 0` else `alpha x`.
    LeakyRelu,
    /// `x` if `x > alpha` else 0.
    ThresholdedRelu,
    /// `alpha tanh(beta x)`.
    ScaledTanh,
    /// `min(max(alpha x + beta, 0), 1)`.
    HardSigmoid,
    /// `x` if `x >= 0` else `alpha (e^x - 1)`.
    Elu,
    /// `x / (1 + |x|)`.
    Softsign,
    /// `log(1 + e^x)`.
    Softplus,
}

impl Function {
    /// Every function, in the order of their WGSL ids (`act_fn` in prelude.wgsl).
    pub const ALL: [Function; 11] = [
        Function::Sigmoid,
        Function::Tanh,
        Function::Relu,
        Function::Affine,
        Function::LeakyRelu,
        Function::ThresholdedRelu,
        Function::ScaledTanh,
        Function::HardSigmoid,
        Function::Elu,
        Function::Softsign,
        Function::Softplus,
    ];

    /// ONNX's name.
    pub fn name(self) -> &'static str {
        use Function::*;
        match self {
            Sigmoid => "Sigmoid",
            Tanh => "Tanh",
            Relu => "Relu",
            Affine => "Affine",
            LeakyRelu => "LeakyRelu",
            ThresholdedRelu => "ThresholdedRelu",
            ScaledTanh => "ScaledTanh",
            HardSigmoid => "HardSigmoid",
            Elu => "Elu",
            Softsign => "Softsign",
            Softplus => "Softplus",
        }
    }

    /// From ONNX's name, compared without case (as onnxruntime's LSTM and GRU do).
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| Error::InvalidConfig(format!("unknown activation {name:?}: expected one of {:?}", Self::ALL.map(|a| a.name()))))
    }

    /// Whether it takes `alpha`, `beta`.
    pub fn takes(self) -> (bool, bool) {
        use Function::*;
        match self {
            Affine | ScaledTanh | HardSigmoid => (true, true),
            LeakyRelu | ThresholdedRelu | Elu => (true, false),
            _ => (false, false),
        }
    }

    /// `alpha` and `beta` where a list leaves them out: onnxruntime's (LeakyRelu 0.01,
    /// HardSigmoid 0.2 and 0.5, Elu 1; 0 otherwise, so an Affine or ScaledTanh without
    /// parameters is 0).
    pub fn defaults(self) -> (f32, f32) {
        use Function::*;
        match self {
            LeakyRelu => (0.01, 0.0),
            HardSigmoid => (0.2, 0.5),
            Elu => (1.0, 0.0),
            _ => (0.0, 0.0),
        }
    }

    fn id(self) -> u32 {
        Self::ALL.iter().position(|&f| f == self).unwrap_or(0) as u32
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A function with its parameters (finite; kept as bits, so configs stay `Eq` and `Hash`),
/// or its complement `1 - f(-x)` ([`Activation::complemented`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Activation {
    function: Function,
    alpha: u32,
    beta: u32,
    complement: bool,
}

impl Activation {
    /// `function` with its default parameters.
    pub fn new(function: Function) -> Self {
        let (a, b) = function.defaults();
        Activation { function, alpha: a.to_bits(), beta: b.to_bits(), complement: false }
    }

    /// `function` with `alpha` and `beta` (each `None` for its default); refused when not finite.
    pub fn with(function: Function, alpha: Option<f32>, beta: Option<f32>) -> Result<Self> {
        let (da, db) = function.defaults();
        let (a, b) = (alpha.unwrap_or(da), beta.unwrap_or(db));
        if !a.is_finite() || !b.is_finite() {
            return Err(Error::InvalidConfig(format!("{function}'s alpha {a} and beta {b} must be finite")));
        }
        Ok(Activation { function, alpha: a.to_bits(), beta: b.to_bits(), complement: false })
    }

    /// The complement `1 - f(-x)` (of the complement, `f` again): what a gate computed from
    /// another gate's negated rows must apply to be `1 -` that gate (ONNX's `input_forget`,
    /// `f = 1 - F(a_i)`, from `a_f = -a_i`). The sigmoid is its own complement.
    pub fn complemented(self) -> Self {
        Activation { complement: !self.complement, ..self }
    }

    /// Whether this is a complement ([`Activation::complemented`]).
    pub fn is_complement(self) -> bool {
        self.complement
    }

    /// The function.
    pub fn function(self) -> Function {
        self.function
    }

    /// `alpha`.
    pub fn alpha(self) -> f32 {
        f32::from_bits(self.alpha)
    }

    /// `beta`.
    pub fn beta(self) -> f32 {
        f32::from_bits(self.beta)
    }

    /// The function of `x`, in f64 (the CPU's custom slots; f32 results round from it).
    pub fn apply(self, x: f64) -> f64 {
        if self.complement {
            return 1.0 - Activation { complement: false, ..self }.apply(-x);
        }
        use Function::*;
        let (a, b) = (self.alpha() as f64, self.beta() as f64);
        match self.function {
            Sigmoid => {
                if x >= 0.0 {
                    1.0 / (1.0 + (-x).exp())
                } else {
                    let e = x.exp();
                    e / (1.0 + e)
                }
            }
            Tanh => x.tanh(),
            Relu => x.max(0.0),
            Affine => a * x + b,
            LeakyRelu => {
                if x >= 0.0 {
                    x
                } else {
                    a * x
                }
            }
            ThresholdedRelu => {
                if x > a {
                    x
                } else {
                    0.0
                }
            }
            ScaledTanh => a * (b * x).tanh(),
            HardSigmoid => (a * x + b).clamp(0.0, 1.0),
            Elu => {
                if x >= 0.0 {
                    x
                } else {
                    a * x.exp_m1()
                }
            }
            Softsign => x / (1.0 + x.abs()),
            // log(1 + e^x) without overflow: x + log(1 + e^-x) for x > 0.
            Softplus => {
                if x > 0.0 {
                    x + (-x).exp().ln_1p()
                } else {
                    x.exp().ln_1p()
                }
            }
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.complement {
            return write!(f, "1 - {}(-x)", Activation { complement: false, ..*self });
        }
        match self.function.takes() {
            (true, true) => write!(f, "{}({}, {})", self.function, self.alpha(), self.beta()),
            (true, false) => write!(f, "{}({})", self.function, self.alpha()),
            _ => write!(f, "{}", self.function),
        }
    }
}

/// Most slots a cell has (f, g, h, and the forget gate's).
pub const MAX_SLOTS: usize = 4;

/// The slot whose input is never clipped: h, the output's (LSTM's cell state).
pub const UNCLIPPED_SLOT: usize = 2;

/// One direction's slots: a function for each slot of the cell (in [`super::Cell::SLOTS`]
/// order; `RnnConfig::validate` checks the count against the cell's), and the clip of every
/// slot's input but h's ([`UNCLIPPED_SLOT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pointwise {
    slots: [Activation; MAX_SLOTS],
    len: u8,
    clip: Option<u32>,
}

impl Pointwise {
    /// `slots` (one per slot of the cell, at most [`MAX_SLOTS`]) and `clip` (positive and
    /// finite).
    pub fn new(slots: &[Activation], clip: Option<f32>) -> Result<Self> {
        if slots.is_empty() || slots.len() > MAX_SLOTS {
            return Err(Error::InvalidConfig(format!("{} activation slots given, a cell has 1 to {MAX_SLOTS}", slots.len())));
        }
        if let Some(c) = clip {
            if !(c > 0.0 && c.is_finite()) {
                return Err(Error::InvalidConfig(format!("clip {c} is not a positive finite threshold")));
            }
        }
        // Entries past `len` are never read (a kernel's override keeps its default there).
        let mut s = [slots[0]; MAX_SLOTS];
        s[..slots.len()].copy_from_slice(slots);
        Ok(Pointwise { slots: s, len: slots.len() as u8, clip: clip.map(f32::to_bits) })
    }

    /// A cell's own functions (`own`: its [`super::Cell::SLOTS`]), unclipped.
    pub fn standard(own: &[Function]) -> Result<Self> {
        let v: Vec<Activation> = own.iter().map(|&f| Activation::new(f)).collect();
        Self::new(&v, None)
    }

    /// How many slots it sets.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Never: a `Pointwise` sets at least one slot.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slot `k`.
    pub fn slot(&self, k: usize) -> Activation {
        self.slots[k]
    }

    /// The clip, if any.
    pub fn clip(&self) -> Option<f32> {
        self.clip.map(f32::from_bits)
    }

    /// The kernels' override constants (prelude.wgsl's `ACT*` and `CLIP`): a function's id in
    /// [`Function::ALL`] order, plus 128 for a complement.
    pub fn constants(&self) -> Vec<(&'static str, f64)> {
        const NAMES: [[&str; 3]; MAX_SLOTS] = [["ACT0", "ACT0_A", "ACT0_B"], ["ACT1", "ACT1_A", "ACT1_B"], ["ACT2", "ACT2_A", "ACT2_B"], ["ACT3", "ACT3_A", "ACT3_B"]];
        let mut v = Vec::new();
        for (s, n) in self.slots[..self.len()].iter().zip(NAMES) {
            v.push((n[0], (s.function.id() + if s.complement { 128 } else { 0 }) as f64));
            v.push((n[1], s.alpha() as f64));
            v.push((n[2], s.beta() as f64));
        }
        v.push(("CLIP", self.clip().unwrap_or(0.0) as f64));
        v
    }

    /// The text form configs are saved in (`Sigmoid:0:0;Tanh:0:0;Tanh:0:0;~Sigmoid:0:0|3`: per
    /// slot function, alpha, beta, `~` for a complement; then the clip), read by
    /// [`Pointwise::parse`].
    pub fn encode(&self) -> String {
        let s: Vec<String> = self.slots[..self.len()].iter().map(|a| format!("{}{}:{}:{}", if a.complement { "~" } else { "" }, a.function, a.alpha(), a.beta())).collect();
        match self.clip() {
            Some(c) => format!("{}|{c}", s.join(";")),
            None => s.join(";"),
        }
    }

    /// [`Pointwise::encode`]'s inverse.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::Metadata(format!("activation slots {text:?}: expected [~]Function:alpha:beta;..[|clip]"));
        let (slots, clip) = match text.split_once('|') {
            Some((s, c)) => (s, Some(c.parse::<f32>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let mut v = Vec::new();
        for s in slots.split(';') {
            let p: Vec<&str> = s.split(':').collect();
            let [f, a, b] = p[..] else { return Err(bad()) };
            let (a, b) = (a.parse::<f32>().map_err(|_| bad())?, b.parse::<f32>().map_err(|_| bad())?);
            let (f, complement) = match f.strip_prefix('~') {
                Some(f) => (f, true),
                None => (f, false),
            };
            let act = Activation::with(Function::from_name(f)?, Some(a), Some(b))?;
            v.push(if complement { act.complemented() } else { act });
        }
        Self::new(&v, clip)
    }
}

/// How a cell's pointwise forward computes its slots: [`Standard`] or a [`Pointwise`].
pub trait Slots: Copy {
    /// Slot `k`'s function of `x`; `own` is the cell's own function for the slot.
    fn act<T: Float>(self, k: usize, x: T, own: impl Fn(T) -> T) -> T;
}

/// The cell's own functions (every config without [`Pointwise`]): `own(x)`, inlined.
#[derive(Clone, Copy, Debug, Default)]
pub struct Standard;

impl Slots for Standard {
    #[inline(always)]
    fn act<T: Float>(self, _k: usize, x: T, own: impl Fn(T) -> T) -> T {
        own(x)
    }
}

impl Slots for &Pointwise {
    #[inline]
    fn act<T: Float>(self, k: usize, x: T, _own: impl Fn(T) -> T) -> T {
        let mut v = x.to_f64();
        if let (Some(c), true) = (self.clip(), k != UNCLIPPED_SLOT) {
            let c = c as f64;
            v = v.clamp(-c, c);
        }
        T::from_f64(self.slots[k].apply(v))
    }
}
