//! The model description: which cell, which sizes, and the parameter names and shapes that
//! follow from them (PyTorch's, exactly).

use crate::error::{Error, Result};
use crate::precision::Precision;

pub use crate::cells::Mode;
use crate::cells::{ParamDef, Pointwise, Sizes, Slot, StateDef};
pub use crate::masks::Prob;

/// A recurrent stack, as the arguments of `nn.LSTM` / `nn.GRU` / `nn.RNN`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RnnConfig {
    /// The cell.
    pub mode: Mode,
    /// Input width `I` of the first layer.
    pub input_size: usize,
    /// Hidden size `H`.
    pub hidden_size: usize,
    /// Stacked layers `L`.
    pub num_layers: usize,
    /// Two directions (`D = 2`), the reverse's output columns after the forward's.
    pub bidirectional: bool,
    /// `bias=False` in PyTorch drops `bias_ih_l*` and `bias_hh_l*`.
    pub bias: bool,
    /// LSTM projection size P (0 = none). Requires `0 < P < hidden_size`.
    pub proj_size: usize,
    /// PyTorch's `dropout`: in training, inverted dropout on each layer's output except the
    /// last (masks: [`crate::masks`]). Run by the CPU engine (`cpu::forward`) and the GPU's
    /// (`gpu::Plan`, `gpu::GpuRnn`).
    pub dropout: Prob,
    /// Zoneout (Krueger et al. 2016) of the `h` state: in training each unit keeps its
    /// previous value with this probability, in inference it takes the expectation
    /// `p h_prev + (1 - p) h_new`. Cells whose first state is `h` (and whose output is it).
    pub zoneout: Prob,
    /// How the GPU drivers store values: f32 (default) or f16 with f32 accumulation
    /// ([`Precision`]), on the GPU (`gpu::Plan`, `gpu::GpuRnn`); the CPU engine (`cpu::forward`) is their f16-storage
    /// twin.
    pub precision: Precision,
    /// The cell's activation slots ([`crate::cells::activation`]), one [`Pointwise`] per
    /// direction (every layer alike), or empty for the cell's own functions. Only cells with
    /// slots ([`Mode::slots`]) take them; forward only (training with them is refused).
    pub pointwise: Vec<Pointwise>,
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
            dropout: Prob::ZERO,
            zoneout: Prob::ZERO,
            precision: Precision::F32,
            pointwise: Vec::new(),
        }
    }
}

/// The name and shape of one parameter tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// PyTorch's name, e.g. `weight_hh_l0_reverse`.
    pub name: String,
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// A fixed tensor of whole numbers (int32 in files, no gradient; [`crate::cells::ParamDef::fixed`]).
    pub fixed: bool,
}

impl RnnConfig {
    /// A one-layer, unidirectional config with bias and no projection.
    pub fn new(mode: Mode, input_size: usize, hidden_size: usize) -> Self {
        RnnConfig { mode, input_size, hidden_size, ..Default::default() }
    }

    /// The same config with `n` stacked layers.
    pub fn layers(mut self, n: usize) -> Self {
        self.num_layers = n;
        self
    }
    /// The same config with both directions (`b`) or one.
    pub fn bidirectional(mut self, b: bool) -> Self {
        self.bidirectional = b;
        self
    }
    /// The same config with biases (`b`, PyTorch's default) or without.
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
    /// The same config with an LSTM projection of size `p` (0: none).
    pub fn proj(mut self, p: usize) -> Self {
        self.proj_size = p;
        self
    }
    /// PyTorch's `dropout` between stacked layers (see [`RnnConfig::dropout`]).
    pub fn dropout(mut self, p: Prob) -> Self {
        self.dropout = p;
        self
    }
    /// Zoneout of the `h` state (see [`RnnConfig::zoneout`]).
    pub fn zoneout(mut self, p: Prob) -> Self {
        self.zoneout = p;
        self
    }
    /// The same config stored in `precision` (see [`RnnConfig::precision`]).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }
    /// The same config with activation slots per direction (see [`RnnConfig::pointwise`]).
    pub fn with_pointwise(mut self, per_direction: Vec<Pointwise>) -> Self {
        self.pointwise = per_direction;
        self
    }

    /// Direction `dir`'s activation slots, `None` for the cell's own.
    pub fn pointwise_of(&self, dir: usize) -> Option<&Pointwise> {
        self.pointwise.get(dir)
    }

    /// Whether training is refused because of custom activation slots.
    pub(crate) fn check_trainable(&self) -> Result<()> {
        if !self.pointwise.is_empty() {
            return Err(Error::Unsupported(format!("training {} with custom activation slots (their derivatives are not implemented; forward only)", self.mode)));
        }
        Ok(())
    }

    /// Whether dropout or zoneout is set.
    pub fn regularised(&self) -> bool {
        !self.dropout.is_zero() || !self.zoneout.is_zero()
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
            if !self.mode.projection() {
                return bad(format!("proj_size is only supported for LSTM, not {}", self.mode));
            }
            if self.proj_size >= self.hidden_size {
                return bad(format!(
                    "proj_size ({}) must be smaller than hidden_size ({})",
                    self.proj_size, self.hidden_size
                ));
            }
        }
        if !self.bias && !self.mode.optional_bias() {
            return bad(format!("bias=False is only supported for RNN, LSTM and GRU, not {}", self.mode));
        }
        // Sizes whose products overflow 32-bit indexing on the GPU are refused there; on the
        // CPU we only guard against usize overflow of the largest weight.
        // Every product the shapes and the state tensors take must fit a usize (checked here,
        // so that the accessors below can multiply freely once a config validates).
        // Every cell's slots and per-row widths are at most 8 H x max(in, H) (the widest:
        // LSTM's 4H x in, MUT1's and JORDAN's 2H^2, LSTM_LAYERNORM's 22H), so the cells'
        // shape and offset arithmetic cannot overflow once this product fits.
        let g = self.mode.gates().max(8);
        let d = self.directions();
        let Some(out_w) = d.checked_mul(self.out_size()) else {
            return bad(format!("directions * hidden size ({d} * {}) overflows", self.out_size()));
        };
        let Some(states) = self.num_layers.checked_mul(d) else {
            return bad(format!("num_layers * directions ({} * {d}) overflows", self.num_layers));
        };
        let widest_in = self.input_size.max(out_w).max(self.hidden_size);
        if g.checked_mul(self.hidden_size).and_then(|r| r.checked_mul(widest_in)).is_none() {
            return bad("sizes overflow".into());
        }
        // The state tensors [L*D, B, H] must be addressable for at least one sequence.
        if states.checked_mul(self.hidden_size.max(self.out_size())).is_none() {
            return bad("num_layers * directions * hidden size overflows".into());
        }
        for layer in 0..self.num_layers.min(2) {
            if let Err(why) = self.mode.check(self.sizes(layer)) {
                return bad(format!("{}: {why} (layer {layer})", self.mode));
            }
        }
        if !self.pointwise.is_empty() {
            if self.mode.slots().is_empty() {
                return bad(format!("{} has no activation slots to set", self.mode));
            }
            if self.pointwise.len() != d {
                return bad(format!("{} activation slot sets for {d} directions", self.pointwise.len()));
            }
            let n = self.mode.slots().len();
            if let Some(p) = self.pointwise.iter().find(|p| p.len() != n) {
                return bad(format!("{} activation slots set, {} has {n} ({:?})", p.len(), self.mode, self.mode.slots()));
            }
        }
        if self.precision == Precision::F16 {
            if let Some(why) = self.mode.f16_refused() {
                return Err(Error::Unsupported(format!("{} with f16 storage: {why}", self.mode)));
            }
        }
        if !self.zoneout.is_zero() {
            // The drivers zone out state 0 and the output, which must be that state.
            let states = self.states();
            let out = self.mode.layout(self.sizes(0)).out;
            // The GPU's zoneout kernels take h's width as H_out (shaders/cells/prelude.wgsl).
            if states[0].name != "h" || states[0].width != out || out != self.out_size() {
                return bad(format!("zoneout needs a cell whose first state is its output h; {} has none", self.mode));
            }
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

    /// The sizes the cell's description of `layer` depends on.
    pub fn sizes(&self, layer: usize) -> Sizes {
        Sizes { input: self.layer_input_size(layer), hidden: self.hidden_size, proj: self.proj_size, bias: self.bias }
    }

    /// PyTorch's parameter name, e.g. `weight_hh_l1_reverse` for stem `weight_hh`.
    pub fn param_name(stem: &str, layer: usize, direction: usize) -> String {
        let sfx = if direction == 1 { "_reverse" } else { "" };
        format!("{stem}_l{layer}{sfx}")
    }

    /// The parameters of one layer-direction of `layer`, in `state_dict` order.
    pub fn param_defs(&self, layer: usize) -> Vec<ParamDef> {
        self.mode.params(self.sizes(layer))
    }

    /// Elements of `slot` in a layer-direction of `layer` (`None`: the slot is absent).
    pub fn slot_len(&self, slot: Slot, layer: usize) -> Option<usize> {
        let derived = self.mode.derived(self.sizes(layer)).filter(|_| slot == Slot::WeightHh).map(|d| d.len);
        self.param_defs(layer).iter().filter(|p| p.slot == slot).map(|p| p.offset + p.len()).chain(derived).max()
    }

    /// The cell's recurrent states, in order (`h`, `c`, ...).
    pub fn states(&self) -> Vec<StateDef> {
        self.mode.states(self.sizes(0))
    }

    /// Shape of state `s` (index into [`RnnConfig::states`]) for a batch of `b`: `[L*D, B, S]`.
    pub fn state_shape(&self, state: &StateDef, b: usize) -> Vec<usize> {
        vec![self.num_layers.saturating_mul(self.directions()), b, state.width]
    }

    /// Elements of each state's tensor for a batch of `b` ([`RnnConfig::state_shape`]'s
    /// product), in the cell's state order: the sizes of the engine API's per-state buffers.
    pub fn state_elems(&self, b: usize) -> Vec<usize> {
        self.states().iter().map(|s| self.state_shape(s, b).iter().product()).collect()
    }

    /// Every parameter with its name and shape, in PyTorch's `state_dict` order.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let mut v = Vec::new();
        for layer in 0..self.num_layers {
            for dir in 0..self.directions() {
                for def in self.param_defs(layer) {
                    v.push(ParamSpec { name: Self::param_name(def.stem, layer, dir), shape: def.shape, fixed: def.fixed });
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
        self.states().iter().any(|s| s.name == "c")
    }
}
