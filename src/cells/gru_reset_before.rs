//! GRU with the reset applied before the recurrent product (Cho et al. 2014): gates r, z, n;
//! `r = s(W_ir x + b_ir + W_hr h + b_hr)`, `z = s(W_iz x + b_iz + W_hz h + b_hz)`,
//! `n = tanh(W_in x + b_in + W_hn (r h) + b_hn)`, `h' = (1 - z) n + z h`. Parameters as
//! PyTorch's GRU. Two stages: stage 0's product is `weight_hh` rows 0..2H (with `bias_hh`
//! 0..2H) on h, giving r and z; stage 1's product is `weight_hh` rows 2H..3H (with `bias_hh`
//! 2H..3H) on `r h` from the tape, giving n and h'.
//! Tape `[4H]`: r at 0, z at H, n at 2H, `r h` at 3H (stage 1's product input).

use super::rnn::torch_params;
use super::{Function, Slots, dsigmoid, dtanh, BwdRow, Cell, FwdRow, Layout, ParamDef, Product, Sizes, Slot, Src, StateDef};
use crate::float::Float;

pub struct GruResetBefore;

impl Cell for GruResetBefore {
    const NAME: &'static str = "GRU_RESET_BEFORE";
    const SLOTS: &'static [Function] = &[Function::Sigmoid, Function::Tanh];
    const WGSL: &'static str = super::cell_wgsl!("gru_reset_before.wgsl");
    fn params(s: Sizes) -> Vec<ParamDef> {
        // This cell always has its biases, whatever `Sizes::bias` says.
        torch_params(3, Sizes { bias: true, proj: 0, ..s }, s.hidden)
    }
    fn states(s: Sizes) -> Vec<StateDef> {
        vec![StateDef { name: "h", width: s.hidden }]
    }
    fn layout(s: Sizes) -> Layout {
        let h = s.hidden;
        Layout {
            xp: 3 * h,
            input_bias: true,
            stages: vec![
                Some(Product { slot: Slot::WeightHh, offset: 0, rows: 2 * h, gates: 2, k: h, bias: Some((Slot::BiasHh, 0)), src: Src::State(0) }),
                Some(Product {
                    slot: Slot::WeightHh,
                    offset: 2 * h * h,
                    rows: h,
                    gates: 1,
                    k: h,
                    bias: Some((Slot::BiasHh, 2 * h)),
                    src: Src::Tape { offset: 3 * h },
                }),
            ],
            tape: 4 * h,
            pointwise: 0, de_blocks: Vec::new(),
            uses_input: false,
            out: h,
        }
    }
    #[inline(always)]
    fn forward<T: Float, A: Slots>(stage: usize, s: Sizes, row: FwdRow<'_, T>, a: A) {
        let n = s.hidden;
        let t = &mut row.tape[..4 * n];
        if stage == 0 {
            // r, z, and r h for stage 1's product; the state is unchanged.
            let (xr, xz) = (&row.xp[..n], &row.xp[n..2 * n]);
            let (hr, hz) = (&row.r[..n], &row.r[n..2 * n]);
            let h = &row.s[..n];
            for j in 0..n {
                let r = a.act(0, xr[j] + hr[j], T::sigmoid);
                let z = a.act(0, xz[j] + hz[j], T::sigmoid);
                t[j] = r;
                t[n + j] = z;
                t[3 * n + j] = r * h[j];
            }
            return;
        }
        let (xn, hn) = (&row.xp[2 * n..3 * n], &row.r[2 * n..3 * n]);
        let (h, out) = (&mut row.s[..n], &mut row.out[..n]);
        for j in 0..n {
            let z = t[n + j];
            let nn = a.act(1, xn[j] + hn[j], T::tanh);
            let y = (T::one() - z) * nn + z * h[j];
            t[2 * n + j] = nn;
            h[j] = y;
            out[j] = y;
        }
    }
    #[inline(always)]
    fn backward<T: Float>(stage: usize, s: Sizes, row: BwdRow<'_, T>) {
        let n = s.hidden;
        let t = &row.tape[..4 * n];
        let hp = &row.s_prev[..n];
        let ds = &mut row.ds[..n];
        let (dxp, dr) = (&mut row.dxp[..3 * n], &mut row.dr[..3 * n]);
        if stage == 1 {
            // n and z; the driver then adds dan W_hn to dtape[3H..4H] (the gradient of r h).
            let dout = &row.dout[..n];
            for j in 0..n {
                let (z, nn) = (t[n + j], t[2 * n + j]);
                let dh = ds[j] + dout[j];
                let dan = dh * (T::one() - z) * dtanh(nn);
                let daz = dh * (hp[j] - nn) * dsigmoid(z);
                dxp[n + j] = daz;
                dxp[2 * n + j] = dan;
                dr[n + j] = daz;
                dr[2 * n + j] = dan;
                ds[j] = dh * z;
            }
            return;
        }
        let drh = &row.dtape[3 * n..4 * n];
        for j in 0..n {
            let r = t[j];
            let dar = drh[j] * hp[j] * dsigmoid(r);
            dxp[j] = dar;
            dr[j] = dar;
            ds[j] += drh[j] * r;
        }
    }
}
