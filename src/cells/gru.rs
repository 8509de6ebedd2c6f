//! PyTorch's `nn.GRU`: gates r, z, n; `n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`,
//! `h' = (1 - z) n + z h`. Tape: r, z, n, and `W_hn h + b_hn`.

use super::rnn::{torch_layout, torch_params};
use super::{Function, Slots, dsigmoid, dtanh, BwdRow, Cell, FwdRow, Layout, ParamDef, Sizes, StateDef};
use crate::float::Float;

pub struct Gru;

impl Cell for Gru {
    const NAME: &'static str = "GRU";
    const SLOTS: &'static [Function] = &[Function::Sigmoid, Function::Tanh];
    const WGSL: &'static str = super::cell_wgsl!("gru.wgsl");
    const OPTIONAL_BIAS: bool = true;
    fn params(s: Sizes) -> Vec<ParamDef> {
        torch_params(3, s, s.hidden)
    }
    fn states(s: Sizes) -> Vec<StateDef> {
        vec![StateDef { name: "h", width: s.hidden }]
    }
    fn layout(s: Sizes) -> Layout {
        torch_layout(3, s, s.hidden, 4 * s.hidden)
    }
    #[inline(always)]
    fn forward<T: Float, A: Slots>(_stage: usize, s: Sizes, row: FwdRow<'_, T>, a: A) {
        let n = s.hidden;
        let (xr, xz, xn) = (&row.xp[..n], &row.xp[n..2 * n], &row.xp[2 * n..3 * n]);
        let (hr, hz, hn) = (&row.r[..n], &row.r[n..2 * n], &row.r[2 * n..3 * n]);
        let (tr, rest) = row.tape[..4 * n].split_at_mut(n);
        let (tz, rest) = rest.split_at_mut(n);
        let (tn, thn) = rest.split_at_mut(n);
        let (h, out) = (&mut row.s[..n], &mut row.out[..n]);
        for j in 0..n {
            let r = a.act(0, xr[j] + hr[j], T::sigmoid);
            let z = a.act(0, xz[j] + hz[j], T::sigmoid);
            let nn = a.act(1, xn[j] + r * hn[j], T::tanh);
            let y = (T::one() - z) * nn + z * h[j];
            h[j] = y;
            out[j] = y;
            tr[j] = r;
            tz[j] = z;
            tn[j] = nn;
            thn[j] = hn[j];
        }
    }
    #[inline(always)]
    fn backward<T: Float>(_stage: usize, s: Sizes, row: BwdRow<'_, T>) {
        let n = s.hidden;
        let t = &row.tape[..4 * n];
        let (hp, dout, ds) = (&row.s_prev[..n], &row.dout[..n], &mut row.ds[..n]);
        let (dxp, dr) = (&mut row.dxp[..3 * n], &mut row.dr[..3 * n]);
        for j in 0..n {
            let (r, z, nn, hn) = (t[j], t[n + j], t[2 * n + j], t[3 * n + j]);
            let dh = ds[j] + dout[j];
            let dan = dh * (T::one() - z) * dtanh(nn);
            let dar = dan * hn * dsigmoid(r);
            let daz = dh * (hp[j] - nn) * dsigmoid(z);
            dxp[j] = dar;
            dxp[n + j] = daz;
            dxp[2 * n + j] = dan;
            dr[j] = dar;
            dr[n + j] = daz;
            dr[2 * n + j] = dan * r;
            ds[j] = dh * z;
        }
    }
}
