//! The model description: which cell, which sizes, and the parameter names and shapes that
//! follow from them (PyTorch's, exactly).

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// The recurrent cell, named as PyTorch's `nn.RNNBase.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`
    RnnTanh,
    /// `h' = relu(W_ih x + b_ih + W_hh h + b_hh)`
    RnnRelu,
    /// Gate rows i, f, g, o; `c' = f*c + i*g`, `h' = o*tanh(c')` (then `W_hr` with projection).
    Lstm,
    /// Gate rows r, z, n; `n = tanh(W_in x + b_in + r*(W_hn h + b_hn))`, `h' = (1-z)*n + z*h`.
    Gru,
}

impl Mode {
    /// Gate count G: rows of `weight_ih` are `G * hidden_size`.
    pub fn gates(self) -> usize {
        match self {
            Mode::RnnTanh | Mode::RnnRelu => 1,
            Mode::Lstm => 4,
            Mode::Gru => 3,
        }
    }

    /// PyTorch's mode string.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::RnnTanh => "RNN_TANH",
            Mode::RnnRelu => "RNN_RELU",
            Mode::Lstm => "LSTM",
            Mode::Gru => "GRU",
        }
    }

    /// All four modes, for tests and benches.
    pub const ALL: [Mode; 4] = [Mode::RnnTanh, Mode::RnnRelu, Mode::Lstm, Mode::Gru];
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = Error;
    /// Accepts PyTorch's mode strings and the module names (`LSTM`, `GRU`, `RNN` = tanh), any case.
    fn from_str(s: &str) -> Result<Mode> {
        match s.trim().to_ascii_uppercase().as_str() {
            "RNN_TANH" | "RNN" | "TANH" => Ok(Mode::RnnTanh),
            "RNN_RELU" | "RELU" => Ok(Mode::RnnRelu),
            "LSTM" => Ok(Mode::Lstm),
            "GRU" => Ok(Mode::Gru),
            _ => Err(Error::UnknownMode(s.to_string())),
        }
    }
}

/// A recurrent stack, as the arguments of `nn.LSTM` / `nn.GRU` / `nn.RNN`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RnnConfig {
    pub mode: Mode,
    pub input_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub bidirectional: bool,
    /// `bias=False` in PyTorch drops `bias_ih_l*` and `bias_hh_l*`.
    pub bias: bool,
    /// LSTM projection size P (0 = none). Requires `0 < P < hidden_size`.
    pub proj_size: usize,
}

impl Default for RnnConfig {
    fn default() -> Self {
        RnnConfig {
            mode: Mode::Lstm,
            input_size: 1,
            hidden_size: 1,
            num_layers: 1,
            bidirectional: false,
            bias: true,
            proj_size: 0,
        }
    }
}

/// The name and shape of one parameter tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// Which tensor of a layer-direction a parameter is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    WeightIh,
    WeightHh,
    BiasIh,
    BiasHh,
    WeightHr,
}

impl ParamKind {
    fn stem(self) -> &'static str {
        match self {
            ParamKind::WeightIh => "weight_ih",
            ParamKind::WeightHh => "weight_hh",
            ParamKind::BiasIh => "bias_ih",
            ParamKind::BiasHh => "bias_hh",
            ParamKind::WeightHr => "weight_hr",
        }
    }
}

impl RnnConfig {
    /// A one-layer, unidirectional config with bias and no projection.
    pub fn new(mode: Mode, input_size: usize, hidden_size: usize) -> Self {
        RnnConfig { mode, input_size, hidden_size, ..Default::default() }
    }

    pub fn layers(mut self, n: usize) -> Self {
        self.num_layers = n;
        self
    }
    pub fn bidirectional(mut self, b: bool) -> Self {
        self.bidirectional = b;
        self
    }
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
    pub fn proj(mut self, p: usize) -> Self {
        self.proj_size = p;
        self
    }

    /// Checks every field; the error names the field and PyTorch's rule.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.input_size == 0 {
            return bad("input_size must be positive".into());
        }
        if self.hidden_size == 0 {
            return bad("hidden_size must be positive".into());
        }
        if self.num_layers == 0 {
            return bad("num_layers must be positive".into());
        }
        if self.proj_size > 0 {
            if self.mode != Mode::Lstm {
                return bad(format!("proj_size is only supported for LSTM, not {}", self.mode));
            }
            if self.proj_size >= self.hidden_size {
                return bad(format!(
                    "proj_size ({}) must be smaller than hidden_size ({})",
                    self.proj_size, self.hidden_size
                ));
            }
        }
        // Sizes whose products overflow 32-bit indexing on the GPU are refused there; on the
        // CPU we only guard against usize overflow of the largest weight.
        // Every product the shapes and the state tensors take must fit a usize (checked here,
        // so that the accessors below can multiply freely once a config validates).
        let g = self.mode.gates();
        let d = self.directions();
        let Some(out_w) = d.checked_mul(self.out_size()) else {
            return bad(format!("directions * hidden size ({d} * {}) overflows", self.out_size()));
        };
        let Some(states) = self.num_layers.checked_mul(d) else {
            return bad(format!("num_layers * directions ({} * {d}) overflows", self.num_layers));
        };
        let widest_in = self.input_size.max(out_w);
        if g.checked_mul(self.hidden_size).and_then(|r| r.checked_mul(widest_in)).is_none() {
            return bad("sizes overflow".into());
        }
        // The state tensors [L*D, B, H] must be addressable for at least one sequence.
        if states.checked_mul(self.hidden_size.max(self.out_size())).is_none() {
            return bad("num_layers * directions * hidden size overflows".into());
        }
        Ok(())
    }

    /// D: 2 when bidirectional.
    pub fn directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// G.
    pub fn gates(&self) -> usize {
        self.mode.gates()
    }

    /// H_out: the width of h (and of each direction's output): P with projection, else H.
    pub fn out_size(&self) -> usize {
        if self.proj_size > 0 {
            self.proj_size
        } else {
            self.hidden_size
        }
    }

    /// Input width of layer `k`: `input_size` for layer 0, `D * H_out` above.
    pub fn layer_input_size(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.directions() * self.out_size()
        }
    }

    /// PyTorch's parameter name, e.g. `weight_hh_l1_reverse`.
    pub fn param_name(kind: ParamKind, layer: usize, direction: usize) -> String {
        let sfx = if direction == 1 { "_reverse" } else { "" };
        format!("{}_l{}{}", kind.stem(), layer, sfx)
    }

    /// The kinds present for one layer-direction, in PyTorch's `_flat_weights_names` order.
    pub fn param_kinds(&self) -> Vec<ParamKind> {
        let mut v = vec![ParamKind::WeightIh, ParamKind::WeightHh];
        if self.bias {
            v.extend([ParamKind::BiasIh, ParamKind::BiasHh]);
        }
        if self.proj_size > 0 {
            v.push(ParamKind::WeightHr);
        }
        v
    }

    /// Shape of one parameter.
    pub fn param_shape(&self, kind: ParamKind, layer: usize) -> Vec<usize> {
        let gh = self.gates() * self.hidden_size;
        match kind {
            ParamKind::WeightIh => vec![gh, self.layer_input_size(layer)],
            ParamKind::WeightHh => vec![gh, self.out_size()],
            ParamKind::BiasIh | ParamKind::BiasHh => vec![gh],
            ParamKind::WeightHr => vec![self.proj_size, self.hidden_size],
        }
    }

    /// Every parameter with its name and shape, in PyTorch's `state_dict` order.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let mut v = Vec::new();
        for layer in 0..self.num_layers {
            for dir in 0..self.directions() {
                for kind in self.param_kinds() {
                    v.push(ParamSpec {
                        name: Self::param_name(kind, layer, dir),
                        shape: self.param_shape(kind, layer),
                    });
                }
            }
        }
        v
    }

    /// Shape of h0 / h_n for a batch of `b`: `[L*D, B, H_out]`.
    pub fn h_shape(&self, b: usize) -> Vec<usize> {
        vec![self.num_layers.saturating_mul(self.directions()), b, self.out_size()]
    }

    /// Shape of c0 / c_n (LSTM): `[L*D, B, H]`.
    pub fn c_shape(&self, b: usize) -> Vec<usize> {
        vec![self.num_layers.saturating_mul(self.directions()), b, self.hidden_size]
    }

    /// Width of the output: `D * H_out`.
    pub fn output_size(&self) -> usize {
        self.directions() * self.out_size()
    }

    /// Whether the cell has a cell state c.
    pub fn has_cell_state(&self) -> bool {
        self.mode == Mode::Lstm
    }
}
