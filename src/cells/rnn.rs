//! Elman's network as PyTorch's `nn.RNN`: `h' = act(W_ih x + b_ih + W_hh h + b_hh)`, act tanh
//! or relu. Tape: `h'`.

use super::{Slots, BwdRow, Cell, FwdRow, Layout, ParamDef, Product, Sizes, Slot, Src, StateDef};
use crate::float::Float;

/// The activation of a vanilla RNN.
pub trait Activation: 'static {
    const NAME: &'static str;
    const WGSL: &'static str;
    /// The function as an activation slot's.
    const SLOT: super::Function;
    fn f<T: Float>(x: T) -> T;
    /// The derivative from the activation's value.
    fn df<T: Float>(y: T) -> T;
}

pub struct TanhAct;
impl Activation for TanhAct {
    const NAME: &'static str = "RNN_TANH";
    const SLOT: super::Function = super::Function::Tanh;
    const WGSL: &'static str = super::cell_wgsl!("rnn.wgsl", "const RELU: bool = false;\n");
    #[inline(always)]
    fn f<T: Float>(x: T) -> T {
        x.tanh()
    }
    #[inline(always)]
    fn df<T: Float>(y: T) -> T {
        T::one() - y * y
    }
}

pub struct ReluAct;
impl Activation for ReluAct {
    const NAME: &'static str = "RNN_RELU";
    const SLOT: super::Function = super::Function::Relu;
    const WGSL: &'static str = super::cell_wgsl!("rnn.wgsl", "const RELU: bool = true;\n");
    #[inline(always)]
    fn f<T: Float>(x: T) -> T {
        x.relu()
    }
    #[inline(always)]
    fn df<T: Float>(y: T) -> T {
        if y > T::zero() {
            T::one()
        } else {
            T::zero()
        }
    }
}

pub struct Rnn<A>(std::marker::PhantomData<A>);
pub type Tanh = Rnn<TanhAct>;
pub type Relu = Rnn<ReluAct>;

/// PyTorch's four parameters for `G` gates (biases when `bias`).
pub(super) fn torch_params(g: usize, s: Sizes, h_out: usize) -> Vec<ParamDef> {
    let gh = g * s.hidden;
    let mut v = vec![
        ParamDef::new("weight_ih", vec![gh, s.input], Slot::WeightIh, 0),
        ParamDef::new("weight_hh", vec![gh, h_out], Slot::WeightHh, 0),
    ];
    if s.bias {
        v.push(ParamDef::new("bias_ih", vec![gh], Slot::BiasIh, 0));
        v.push(ParamDef::new("bias_hh", vec![gh], Slot::BiasHh, 0));
    }
    v
}

/// PyTorch's step shape: `xp = W_ih x + b_ih`, one product `W_hh h + b_hh` of the state `h`.
pub(super) fn torch_layout(g: usize, s: Sizes, h_out: usize, tape: usize) -> Layout {
    let gh = g * s.hidden;
    Layout {
        xp: gh,
        input_bias: s.bias,
        stages: vec![Some(Product {
            slot: Slot::WeightHh,
            offset: 0,
            rows: gh,
            gates: g,
            k: h_out,
            bias: s.bias.then_some((Slot::BiasHh, 0)),
            src: Src::State(0),
        })],
        tape,
        pointwise: 0, de_blocks: Vec::new(),
        uses_input: false,
        out: h_out,
    }
}

impl<A: Activation> Cell for Rnn<A> {
    const DR_IS_DXP: bool = true;
    // The forward writes its one tape column, h; the backward assigns dxp.
    const WRITES_WHOLE_ROWS: bool = true;
    const NAME: &'static str = A::NAME;
    const OPTIONAL_BIAS: bool = true;
    const WGSL: &'static str = A::WGSL;
    const SLOTS: &'static [super::Function] = &[A::SLOT];
    fn params(s: Sizes) -> Vec<ParamDef> {
        torch_params(1, s, s.hidden)
    }
    fn states(s: Sizes) -> Vec<StateDef> {
        vec![StateDef { name: "h", width: s.hidden }]
    }
    fn layout(s: Sizes) -> Layout {
        torch_layout(1, s, s.hidden, s.hidden)
    }
    #[inline(always)]
    fn forward<T: Float, S: Slots>(_stage: usize, s: Sizes, row: FwdRow<'_, T>, a: S) {
        let n = s.hidden;
        let (xp, r, h, tape, out) = (&row.xp[..n], &row.r[..n], &mut row.s[..n], &mut row.tape[..n], &mut row.out[..n]);
        for j in 0..n {
            let y = a.act(0, xp[j] + r[j], A::f);
            h[j] = y;
            tape[j] = y;
            out[j] = y;
        }
    }
    #[inline(always)]
    fn backward<T: Float>(_stage: usize, s: Sizes, row: BwdRow<'_, T>) {
        let n = s.hidden;
        let (tape, dout, ds) = (&row.tape[..n], &row.dout[..n], &mut row.ds[..n]);
        // The product's gradient is dxp's (`DR_IS_DXP`): the driver reads it there.
        let dxp = &mut row.dxp[..n];
        for j in 0..n {
            let da = (ds[j] + dout[j]) * A::df(tape[j]);
            dxp[j] = da;
            ds[j] = T::zero();
        }
    }
}
