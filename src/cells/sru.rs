//! SRU, the simple recurrent unit (Lei et al. 2017). Needs input size == hidden size (the
//! highway adds the layer input to the output).
//!
//! `xp = W_ih x` `[3H]` (rows x~, f, r; no input bias), no recurrent product, and with
//! `weight_c` = (v_f, v_r), `bias` = (b_f, b_r) in the pointwise slot (offsets 0, H, 2H, 3H):
//! ```text
//! f  = s(W_f x + v_f * c + b_f)
//! r  = s(W_r x + v_r * c + b_r)
//! c' = f c + (1 - f) x~
//! h  = r c' + (1 - r) x        (the output; the only state is c)
//! ```
//! Tape: f `[0, H)`, r `[H, 2H)`, c' `[2H, 3H)`.

use super::{Slots, dsigmoid, BwdRow, Cell, FwdRow, Layout, ParamDef, Sizes, Slot, StateDef};
use crate::float::Float;

pub struct Sru;

impl Cell for Sru {
    const BACKWARD_READS_XP: bool = true;
    const NAME: &'static str = "SRU";
    const WGSL: &'static str = super::cell_wgsl!(input "sru.wgsl");
    fn check(s: Sizes) -> std::result::Result<(), String> {
        if s.input != s.hidden {
            return Err(format!("input size ({}) must equal hidden size ({})", s.input, s.hidden));
        }
        Ok(())
    }
    fn params(s: Sizes) -> Vec<ParamDef> {
        let h = s.hidden;
        vec![
            ParamDef::new("weight_ih", vec![3 * h, s.input], Slot::WeightIh, 0),
            ParamDef::new("weight_c", vec![2, h], Slot::Pointwise, 0),
            ParamDef::new("bias", vec![2 * h], Slot::Pointwise, 2 * h),
        ]
    }
    fn states(s: Sizes) -> Vec<StateDef> {
        vec![StateDef { name: "c", width: s.hidden }]
    }
    fn layout(s: Sizes) -> Layout {
        let h = s.hidden;
        Layout { xp: 3 * h, input_bias: false, stages: vec![None], tape: 3 * h, pointwise: 4 * h, de_blocks: Vec::new(), uses_input: true, out: h }
    }
    #[inline(always)]
    fn forward<T: Float, A: Slots>(_stage: usize, s: Sizes, row: FwdRow<'_, T>, _a: A) {
        let n = s.hidden;
        let (x, xp, e) = (&row.x[..n], &row.xp[..3 * n], &row.e[..4 * n]);
        let (c, out) = (&mut row.s[..n], &mut row.out[..n]);
        let (tf, rest) = row.tape[..3 * n].split_at_mut(n);
        let (tr, tc) = rest.split_at_mut(n);
        for j in 0..n {
            let cp = c[j];
            let f = (xp[n + j] + e[j] * cp + e[2 * n + j]).sigmoid();
            let r = (xp[2 * n + j] + e[n + j] * cp + e[3 * n + j]).sigmoid();
            let cn = f * cp + (T::one() - f) * xp[j];
            c[j] = cn;
            out[j] = r * cn + (T::one() - r) * x[j];
            tf[j] = f;
            tr[j] = r;
            tc[j] = cn;
        }
    }
    #[inline(always)]
    fn backward<T: Float>(_stage: usize, s: Sizes, row: BwdRow<'_, T>) {
        let n = s.hidden;
        let (x, xp, e, cp, t, dout) = (&row.x[..n], &row.xp[..3 * n], &row.e[..4 * n], &row.s_prev[..n], &row.tape[..3 * n], &row.dout[..n]);
        let (dc, dxp, de, dx) = (&mut row.ds[..n], &mut row.dxp[..3 * n], &mut row.de[..4 * n], &mut row.dx[..n]);
        for j in 0..n {
            let (f, r, cn) = (t[j], t[n + j], t[2 * n + j]);
            let dh = dout[j];
            let dcn = dc[j] + dh * r;
            let dr = dh * (cn - x[j]) * dsigmoid(r);
            let df = dcn * (cp[j] - xp[j]) * dsigmoid(f);
            dxp[j] = dcn * (T::one() - f);
            dxp[n + j] = df;
            dxp[2 * n + j] = dr;
            dx[j] += dh * (T::one() - r);
            de[j] += df * cp[j];
            de[n + j] += dr * cp[j];
            de[2 * n + j] += df;
            de[3 * n + j] += dr;
            dc[j] = dcn * f + df * e[j] + dr * e[n + j];
        }
    }
}
