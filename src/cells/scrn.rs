//! SCRN (Mikolov et al. 2015, structurally constrained, alpha 0.95), context size
//! `S = max(1, H / 2)`: `s' = 0.05 (W_b x) + 0.95 s`, `h' = s(W_p s' + W_a x + W_r h)`;
//! output h'; states h `[H]` and s `[S]`.
//!
//! `W_x = [W_b; W_a]`, no biases. Stage 0: product `W_r h`, then s' to the state and the
//! tape. Stage 1: product `W_p s'` read from the tape, then h'.
//!
//! Tape: s' at 0 (S values, stage 1's product input), h' at S (H values).

use super::{Slots, dsigmoid, BwdRow, Cell, FwdRow, Layout, ParamDef, Product, Sizes, Slot, Src, StateDef};
use crate::float::Float;

pub struct Scrn;

/// The context state's width.
fn context(s: Sizes) -> usize {
    (s.hidden / 2).max(1)
}

/// The context's decay and its input's weight, as in the reference (0.95 and 0.05).
const ALPHA: f64 = 0.95;
const BETA: f64 = 0.05;

impl Cell for Scrn {
    const NAME: &'static str = "SCRN";
    const WGSL: &'static str = super::cell_wgsl!("scrn.wgsl");
    fn params(s: Sizes) -> Vec<ParamDef> {
        let (h, c, i) = (s.hidden, context(s), s.input);
        vec![
            ParamDef::new("weight_b", vec![c, i], Slot::WeightIh, 0),
            ParamDef::new("weight_p", vec![h, c], Slot::WeightHh, h * h),
            ParamDef::new("weight_a", vec![h, i], Slot::WeightIh, c * i),
            ParamDef::new("weight_r", vec![h, h], Slot::WeightHh, 0),
        ]
    }
    fn states(s: Sizes) -> Vec<StateDef> {
        vec![StateDef { name: "h", width: s.hidden }, StateDef { name: "s", width: context(s) }]
    }
    fn layout(s: Sizes) -> Layout {
        let (h, c) = (s.hidden, context(s));
        Layout {
            xp: c + h,
            input_bias: false,
            stages: vec![
                Some(Product { slot: Slot::WeightHh, offset: 0, rows: h, gates: 1, k: h, bias: None, src: Src::State(0) }),
                Some(Product { slot: Slot::WeightHh, offset: h * h, rows: h, gates: 1, k: c, bias: None, src: Src::Tape { offset: 0 } }),
            ],
            tape: c + h,
            pointwise: 0, de_blocks: Vec::new(),
            uses_input: false,
            out: h,
        }
    }
    #[inline(always)]
    fn forward<T: Float, A: Slots>(stage: usize, s: Sizes, row: FwdRow<'_, T>, _a: A) {
        let (n, c) = (s.hidden, context(s));
        let (hs, ss) = row.s[..n + c].split_at_mut(n);
        if stage == 0 {
            let (xb, ts) = (&row.xp[..c], &mut row.tape[..c]);
            let (beta, alpha) = (T::from_f64(BETA), T::from_f64(ALPHA));
            for j in 0..c {
                let v = beta * xb[j] + alpha * ss[j];
                ss[j] = v;
                ts[j] = v;
            }
            return;
        }
        let (xa, rh, ps) = (&row.xp[c..c + n], &row.r[..n], &row.r[n..2 * n]);
        let (th, out) = (&mut row.tape[c..c + n], &mut row.out[..n]);
        for j in 0..n {
            let y = (ps[j] + xa[j] + rh[j]).sigmoid();
            hs[j] = y;
            th[j] = y;
            out[j] = y;
        }
    }
    #[inline(always)]
    fn backward<T: Float>(stage: usize, s: Sizes, row: BwdRow<'_, T>) {
        let (n, c) = (s.hidden, context(s));
        let (dh, dss) = row.ds[..n + c].split_at_mut(n);
        if stage == 1 {
            let (th, dout) = (&row.tape[c..c + n], &row.dout[..n]);
            let (dxa, dps) = (&mut row.dxp[c..c + n], &mut row.dr[n..2 * n]);
            for j in 0..n {
                let da = (dh[j] + dout[j]) * dsigmoid(th[j]);
                dxa[j] = da;
                dps[j] = da;
                dh[j] = T::zero();
            }
            return;
        }
        // `W_r h` enters the same pre-activation as `W_a x` (stage 1 wrote its gradient to dxp).
        let (dxb, dxa) = row.dxp[..c + n].split_at_mut(c);
        row.dr[..n].copy_from_slice(dxa);
        // The driver has added stage 1's `dr W_p` to the tape gradient of s'.
        let dts = &row.dtape[..c];
        let (beta, alpha) = (T::from_f64(BETA), T::from_f64(ALPHA));
        for j in 0..c {
            let g = dss[j] + dts[j];
            dxb[j] = beta * g;
            dss[j] = alpha * g;
        }
    }
}
