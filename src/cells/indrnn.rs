//! IndRNN (Li et al. 2018): `h' = relu(W_ih x + b_ih + u * h)`, an element-wise recurrence
//! (no recurrent product). Tape: `h'`.

use super::{Slots, BwdRow, Cell, FwdRow, Layout, ParamDef, Sizes, Slot, StateDef};
use crate::float::Float;

pub struct IndRnn;

impl Cell for IndRnn {
    const NAME: &'static str = "INDRNN";
    const WGSL: &'static str = super::cell_wgsl!("indrnn.wgsl");
    fn params(s: Sizes) -> Vec<ParamDef> {
        let h = s.hidden;
        vec![
            ParamDef::new("weight_ih", vec![h, s.input], Slot::WeightIh, 0),
            ParamDef::new("weight_hh", vec![h], Slot::Pointwise, 0),
            ParamDef::new("bias_ih", vec![h], Slot::BiasIh, 0),
        ]
    }
    fn states(s: Sizes) -> Vec<StateDef> {
        vec![StateDef { name: "h", width: s.hidden }]
    }
    fn layout(s: Sizes) -> Layout {
        let h = s.hidden;
        Layout { xp: h, input_bias: true, stages: vec![None], tape: h, pointwise: h, de_blocks: Vec::new(), uses_input: false, out: h }
    }
    #[inline(always)]
    fn forward<T: Float, A: Slots>(_stage: usize, s: Sizes, row: FwdRow<'_, T>, _a: A) {
        let n = s.hidden;
        let (xp, u, h, tape, out) = (&row.xp[..n], &row.e[..n], &mut row.s[..n], &mut row.tape[..n], &mut row.out[..n]);
        for j in 0..n {
            let y = (xp[j] + u[j] * h[j]).relu();
            h[j] = y;
            tape[j] = y;
            out[j] = y;
        }
    }
    #[inline(always)]
    fn backward<T: Float>(_stage: usize, s: Sizes, row: BwdRow<'_, T>) {
        let n = s.hidden;
        let (tape, hp, u, dout) = (&row.tape[..n], &row.s_prev[..n], &row.e[..n], &row.dout[..n]);
        let (ds, dxp, du) = (&mut row.ds[..n], &mut row.dxp[..n], &mut row.de[..n]);
        for j in 0..n {
            let da = if tape[j] > T::zero() { ds[j] + dout[j] } else { T::zero() };
            dxp[j] = da;
            du[j] += da * hp[j];
            ds[j] = da * u[j];
        }
    }
}
