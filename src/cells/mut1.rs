//! MUT1 (Jozefowicz, Zaremba & Sutskever 2015), needs input size == hidden size:
//! `z = s(W_xz x + b_z)`, `r = s(W_xr x + W_hr h + b_r)`,
//! `h' = tanh(W_hh (r * h) + tanh(x) + b_h) z + h (1 - z)`.
//!
//! `W_x = [W_xz; W_xr]` with `b_x = [b_z; b_r]`. Stage 0: product `W_hr h` (no bias), gates
//! z and r, and `r * h` to the tape. Stage 1: product `W_hh (r * h) + b_h` read from the tape,
//! then `u = tanh(.. + tanh(x))` and `h'`.
//!
//! Tape (H each): z at 0, r at H, `r * h` at 2H (stage 1's product input), u at 3H.

use super::{Slots, dsigmoid, dtanh, BwdRow, Cell, FwdRow, Layout, ParamDef, Product, Sizes, Slot, Src, StateDef};
use crate::float::Float;

pub struct Mut1;

impl Cell for Mut1 {
    const NAME: &'static str = "MUT1";
    const WGSL: &'static str = super::cell_wgsl!(input "mut1.wgsl");
    fn check(s: Sizes) -> std::result::Result<(), String> {
        if s.input != s.hidden {
            return Err(format!("needs input size == hidden size (input {}, hidden {})", s.input, s.hidden));
        }
        Ok(())
    }
    fn params(s: Sizes) -> Vec<ParamDef> {
        let (h, i) = (s.hidden, s.input);
        vec![
            ParamDef::new("weight_xz", vec![h, i], Slot::WeightIh, 0),
            ParamDef::new("bias_z", vec![h], Slot::BiasIh, 0),
            ParamDef::new("weight_xr", vec![h, i], Slot::WeightIh, h * i),
            ParamDef::new("weight_hr", vec![h, h], Slot::WeightHh, 0),
            ParamDef::new("bias_r", vec![h], Slot::BiasIh, h),
            ParamDef::new("weight_hh", vec![h, h], Slot::WeightHh, h * h),
            ParamDef::new("bias_h", vec![h], Slot::BiasHh, 0),
        ]
    }
    fn states(s: Sizes) -> Vec<StateDef> {
        vec![StateDef { name: "h", width: s.hidden }]
    }
    fn layout(s: Sizes) -> Layout {
        let h = s.hidden;
        Layout {
            xp: 2 * h,
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
                    src: Src::Tape { offset: 2 * h },
                }),
            ],
            tape: 4 * h,
            pointwise: 0, de_blocks: Vec::new(),
            uses_input: true,
            out: h,
        }
    }
    #[inline(always)]
    fn forward<T: Float, A: Slots>(stage: usize, s: Sizes, row: FwdRow<'_, T>, _a: A) {
        let n = s.hidden;
        let hs = &mut row.s[..n];
        if stage == 0 {
            let (xz, xr, hr) = (&row.xp[..n], &row.xp[n..2 * n], &row.r[..n]);
            let (tz, rest) = row.tape[..3 * n].split_at_mut(n);
            let (tr, trh) = rest.split_at_mut(n);
            for j in 0..n {
                let z = xz[j].sigmoid();
                let r = (xr[j] + hr[j]).sigmoid();
                tz[j] = z;
                tr[j] = r;
                trh[j] = r * hs[j];
            }
            return;
        }
        let (x, a) = (&row.x[..n], &row.r[n..2 * n]);
        let (t, tu) = row.tape[..4 * n].split_at_mut(3 * n);
        let (tz, tu, out) = (&t[..n], &mut tu[..n], &mut row.out[..n]);
        for j in 0..n {
            let u = (a[j] + x[j].tanh()).tanh();
            let z = tz[j];
            let y = u * z + hs[j] * (T::one() - z);
            tu[j] = u;
            hs[j] = y;
            out[j] = y;
        }
    }
    #[inline(always)]
    fn backward<T: Float>(stage: usize, s: Sizes, row: BwdRow<'_, T>) {
        let n = s.hidden;
        let t = &row.tape[..4 * n];
        let (hp, ds) = (&row.s_prev[..n], &mut row.ds[..n]);
        if stage == 1 {
            let (x, dout, dx) = (&row.x[..n], &row.dout[..n], &mut row.dx[..n]);
            let (dxz, da) = (&mut row.dxp[..n], &mut row.dr[n..2 * n]);
            for j in 0..n {
                let (z, u) = (t[j], t[3 * n + j]);
                let dh = ds[j] + dout[j];
                let dau = dh * z * dtanh(u);
                da[j] = dau;
                dx[j] += dau * dtanh(x[j].tanh());
                dxz[j] = dh * (u - hp[j]) * dsigmoid(z);
                ds[j] = dh * (T::one() - z);
            }
            return;
        }
        // The driver has added stage 1's `da W_hh` to the tape gradient of `r * h`.
        let (drh, dxr, dhr) = (&row.dtape[2 * n..3 * n], &mut row.dxp[n..2 * n], &mut row.dr[..n]);
        for j in 0..n {
            let r = t[n + j];
            let dar = drh[j] * hp[j] * dsigmoid(r);
            dxr[j] = dar;
            dhr[j] = dar;
            ds[j] += drh[j] * r;
        }
    }
}
