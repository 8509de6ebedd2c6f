//! Jordan network (Jordan 1986: the output feeds back): `a = tanh(W_ih x + b_ih + W_hy y)`,
//! `y' = tanh(W_y a + b_y)`; output and state y'.
//!
//! Stage 0: product `W_hy y` (no bias), then a to the tape. Stage 1: product `W_y a + b_y`
//! read from the tape, then y'.
//!
//! Tape (H each): a at 0 (stage 1's product input), y' at H.

use super::{Slots, dtanh, BwdRow, Cell, FwdRow, Layout, ParamDef, Product, Sizes, Slot, Src, StateDef};
use crate::float::Float;

pub struct Jordan;

impl Cell for Jordan {
    const NAME: &'static str = "JORDAN";
    const WGSL: &'static str = super::cell_wgsl!("jordan.wgsl");
    fn params(s: Sizes) -> Vec<ParamDef> {
        let h = s.hidden;
        vec![
            ParamDef::new("weight_ih", vec![h, s.input], Slot::WeightIh, 0),
            ParamDef::new("weight_hy", vec![h, h], Slot::WeightHh, 0),
            ParamDef::new("bias_ih", vec![h], Slot::BiasIh, 0),
            ParamDef::new("weight_y", vec![h, h], Slot::WeightHh, h * h),
            ParamDef::new("bias_y", vec![h], Slot::BiasHh, 0),
        ]
    }
    fn states(s: Sizes) -> Vec<StateDef> {
        vec![StateDef { name: "y", width: s.hidden }]
    }
    fn layout(s: Sizes) -> Layout {
        let h = s.hidden;
        Layout {
            xp: h,
            input_bias: true,
            stages: vec![
                Some(Product { slot: Slot::WeightHh, offset: 0, rows: h, gates: 1, k: h, bias: None, src: Src::State(0) }),
                Some(Product {
                    slot: Slot::WeightHh,
                    offset: h * h,
                    rows: h,
                    gates: 1,
                    k: h,
                    bias: Some((Slot::BiasHh, 0)),
                    src: Src::Tape { offset: 0 },
                }),
            ],
            tape: 2 * h,
            pointwise: 0, de_blocks: Vec::new(),
            uses_input: false,
            out: h,
        }
    }
    #[inline(always)]
    fn forward<T: Float, A: Slots>(stage: usize, s: Sizes, row: FwdRow<'_, T>, _a: A) {
        let n = s.hidden;
        if stage == 0 {
            let (xp, hy, ta) = (&row.xp[..n], &row.r[..n], &mut row.tape[..n]);
            for j in 0..n {
                ta[j] = (xp[j] + hy[j]).tanh();
            }
            return;
        }
        let (a, y, ty, out) = (&row.r[n..2 * n], &mut row.s[..n], &mut row.tape[n..2 * n], &mut row.out[..n]);
        for j in 0..n {
            let v = a[j].tanh();
            y[j] = v;
            ty[j] = v;
            out[j] = v;
        }
    }
    #[inline(always)]
    fn backward<T: Float>(stage: usize, s: Sizes, row: BwdRow<'_, T>) {
        let n = s.hidden;
        if stage == 1 {
            let (ty, dout, ds, dy) = (&row.tape[n..2 * n], &row.dout[..n], &mut row.ds[..n], &mut row.dr[n..2 * n]);
            for j in 0..n {
                dy[j] = (ds[j] + dout[j]) * dtanh(ty[j]);
                ds[j] = T::zero();
            }
            return;
        }
        // The driver has added stage 1's `dr W_y` to the tape gradient of a.
        let (ta, dta, dxp, dhy) = (&row.tape[..n], &row.dtape[..n], &mut row.dxp[..n], &mut row.dr[..n]);
        for j in 0..n {
            let da = dta[j] * dtanh(ta[j]);
            dxp[j] = da;
            dhy[j] = da;
        }
    }
}
