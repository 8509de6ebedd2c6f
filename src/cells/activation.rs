//! A cell's activation slots: the one mechanism by which a cell's nonlinearities are chosen
//! (ONNX's `activations`, `activation_alpha`, `activation_beta` and `clip`).
//!
//! A cell that offers slots lists its own functions in [`super::Cell::SLOTS`] (LSTM: f =
//! sigmoid for its gates, g = tanh for the candidate, h = tanh for the output; GRU f, g; RNN
//! f) and computes each of those nonlinearities through its [`Slots`] value: on the CPU
//! `a.act(k, x, own)` with `own` the cell's own function, in WGSL `slot0(x, own(x))` ..
//! `slot2` (shaders/cells/prelude.wgsl). With [`Standard`] (every config that sets no
//! [`Pointwise`]) that is the cell's own function, inlined as before: the cell's code and its
//! speed do not change. With a [`Pointwise`] (per direction, in the config) slot k computes
//! its [`Activation`], the input clipped to `[-clip, clip]` in slots f and g (not h, whose
//! input is LSTM's cell state: onnxruntime clips the gates' inputs only). On the GPU the
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

/// A function with its parameters (finite; kept as bits, so configs stay `Eq` and `Hash`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Activation {
    function: Function,
    alpha: u32,
    beta: u32,
}

impl Activation {
    /// `function` with its default parameters.
    pub fn new(function: Function) -> Self {
        let (a, b) = function.defaults();
        Activation { function, alpha: a.to_bits(), beta: b.to_bits() }
    }

    /// `function` with `alpha` and `beta` (each `None` for its default); refused when not finite.
    pub fn with(function: Function, alpha: Option<f32>, beta: Option<f32>) -> Result<Self> {
        let (da, db) = function.defaults();
        let (a, b) = (alpha.unwrap_or(da), beta.unwrap_or(db));
        if !a.is_finite() || !b.is_finite() {
            return Err(Error::InvalidConfig(format!("{function}'s alpha {a} and beta {b} must be finite")));
        }
        Ok(Activation { function, alpha: a.to_bits(), beta: b.to_bits() })
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
        match self.function.takes() {
            (true, true) => write!(f, "{}({}, {})", self.function, self.alpha(), self.beta()),
            (true, false) => write!(f, "{}({})", self.function, self.alpha()),
            _ => write!(f, "{}", self.function),
        }
    }
}

/// Most slots a cell has (f, g, h).
pub const MAX_SLOTS: usize = 3;

/// One direction's slots: a function for each slot the cell has (in [`super::Cell::SLOTS`]
/// order; unused entries are ignored), and the clip of slots f and g's inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pointwise {
    slots: [Activation; MAX_SLOTS],
    clip: Option<u32>,
}

impl Pointwise {
    /// `slots` (at most [`MAX_SLOTS`], the rest taken as Sigmoid and never read) and `clip`
    /// (positive and finite).
    pub fn new(slots: &[Activation], clip: Option<f32>) -> Result<Self> {
        if slots.len() > MAX_SLOTS {
            return Err(Error::InvalidConfig(format!("{} activation slots given, a cell has at most {MAX_SLOTS}", slots.len())));
        }
        if let Some(c) = clip {
            if !(c > 0.0 && c.is_finite()) {
                return Err(Error::InvalidConfig(format!("clip {c} is not a positive finite threshold")));
            }
        }
        let mut s = [Activation::new(Function::Sigmoid); MAX_SLOTS];
        s[..slots.len()].copy_from_slice(slots);
        Ok(Pointwise { slots: s, clip: clip.map(f32::to_bits) })
    }

    /// A cell's own functions (`own`: its [`super::Cell::SLOTS`]), unclipped.
    pub fn standard(own: &[Function]) -> Result<Self> {
        let v: Vec<Activation> = own.iter().map(|&f| Activation::new(f)).collect();
        Self::new(&v, None)
    }

    /// Slot `k`.
    pub fn slot(&self, k: usize) -> Activation {
        self.slots[k]
    }

    /// The clip, if any.
    pub fn clip(&self) -> Option<f32> {
        self.clip.map(f32::from_bits)
    }

    /// The kernels' override constants (prelude.wgsl's `ACT*` and `CLIP`).
    pub fn constants(&self) -> Vec<(&'static str, f64)> {
        const NAMES: [[&str; 3]; MAX_SLOTS] = [["ACT0", "ACT0_A", "ACT0_B"], ["ACT1", "ACT1_A", "ACT1_B"], ["ACT2", "ACT2_A", "ACT2_B"]];
        let mut v = Vec::new();
        for (s, n) in self.slots.iter().zip(NAMES) {
            v.push((n[0], s.function.id() as f64));
            v.push((n[1], s.alpha() as f64));
            v.push((n[2], s.beta() as f64));
        }
        v.push(("CLIP", self.clip().unwrap_or(0.0) as f64));
        v
    }

    /// The text form configs are saved in (`Sigmoid;Tanh(0.5, 1);Tanh|clip=3`), read by
    /// [`Pointwise::parse`].
    pub fn encode(&self, n: usize) -> String {
        let s: Vec<String> = self.slots[..n.min(MAX_SLOTS)].iter().map(|a| format!("{}:{}:{}", a.function, a.alpha(), a.beta())).collect();
        match self.clip() {
            Some(c) => format!("{}|{c}", s.join(";")),
            None => s.join(";"),
        }
    }

    /// [`Pointwise::encode`]'s inverse.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::Metadata(format!("activation slots {text:?}: expected Function:alpha:beta;..[|clip]"));
        let (slots, clip) = match text.split_once('|') {
            Some((s, c)) => (s, Some(c.parse::<f32>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let mut v = Vec::new();
        for s in slots.split(';') {
            let p: Vec<&str> = s.split(':').collect();
            let [f, a, b] = p[..] else { return Err(bad()) };
            let (a, b) = (a.parse::<f32>().map_err(|_| bad())?, b.parse::<f32>().map_err(|_| bad())?);
            v.push(Activation::with(Function::from_name(f)?, Some(a), Some(b))?);
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
        if let (Some(c), true) = (self.clip(), k < 2) {
            let c = c as f64;
            v = v.clamp(-c, c);
        }
        T::from_f64(self.slots[k].apply(v))
    }
}
