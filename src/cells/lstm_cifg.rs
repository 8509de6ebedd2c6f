//! LSTM with coupled input and forget gates: gates f, g, o from
//! `a = W_ih x + b_ih + W_hh h + b_hh` as in LSTM (`f = s(a_f)`, `g = tanh(a_g)`,
//! `o = s(a_o)`), `c' = f c + (1 - f) g`, `h' = o tanh(c')`; output h'. States h `[H]`, c `[H]`.
//! Tape `[4H]`: f at 0, g at H, o at 2H, c' at 3H.

use super::rnn::{torch_layout, torch_params};
use super::{Function, Slots, dsigmoid, dtanh, BwdRow, Cell, FwdRow, Layout, ParamDef, Sizes, StateDef};
use crate::float::Float;

pub struct LstmCifg;

/// This cell always has its biases, whatever `Sizes::bias` says.
fn with_bias(s: Sizes) -> Sizes {
    Sizes { bias: true, proj: 0, ..s }
}

impl Cell for LstmCifg {
    const DR_IS_DXP: bool = true;
    // The forward writes f, g, o and c, all the tape; the backward assigns all three gates' dxp.
    const WRITES_WHOLE_ROWS: bool = true;
    const NAME: &'static str = "LSTM_CIFG";
    // f (the gates), g, h, and the forget gate's own (ONNX's input_forget: `1 - F(-x)`).
    const SLOTS: &'static [Function] = &[Function::Sigmoid, Function::Tanh, Function::Tanh, Function::Sigmoid];
    const WGSL: &'static str = super::cell_wgsl!("lstm_cifg.wgsl");
    fn params(s: Sizes) -> Vec<ParamDef> {
        torch_params(3, with_bias(s), s.hidden)
    }
    fn states(s: Sizes) -> Vec<StateDef> {
        vec![StateDef { name: "h", width: s.hidden }, StateDef { name: "c", width: s.hidden }]
    }
    fn layout(s: Sizes) -> Layout {
        torch_layout(3, with_bias(s), s.hidden, 4 * s.hidden)
    }
    #[inline(always)]
    fn forward<T: Float, A: Slots>(_stage: usize, s: Sizes, row: FwdRow<'_, T>, a: A) {
        let n = s.hidden;
        let (x, hp) = (&row.xp[..3 * n], &row.r[..3 * n]);
        let (h, c) = row.s[..2 * n].split_at_mut(n);
        let t = &mut row.tape[..4 * n];
        let out = &mut row.out[..n];
        for j in 0..n {
            let f = a.act(3, x[j] + hp[j], T::sigmoid);
            let g = a.act(1, x[n + j] + hp[n + j], T::tanh);
            let o = a.act(0, x[2 * n + j] + hp[2 * n + j], T::sigmoid);
            let cn = f * c[j] + (T::one() - f) * g;
            let y = o * a.act(2, cn, T::tanh);
            c[j] = cn;
            h[j] = y;
            out[j] = y;
            t[j] = f;
            t[n + j] = g;
            t[2 * n + j] = o;
            t[3 * n + j] = cn;
        }
    }
    #[inline(always)]
    fn backward<T: Float>(_stage: usize, s: Sizes, row: BwdRow<'_, T>) {
        let n = s.hidden;
        // Exact-length slices per gate, so the loop has no bounds checks and vectorises. The
        // product's gradient is dxp's (`DR_IS_DXP`): the driver reads it there.
        let t = &row.tape[..4 * n];
        let (tf, tg, to, tc) = (&t[..n], &t[n..2 * n], &t[2 * n..3 * n], &t[3 * n..4 * n]);
        let cp = &row.s_prev[n..2 * n];
        let (dh_state, dc) = row.ds[..2 * n].split_at_mut(n);
        let dout = &row.dout[..n];
        let (dxf, rest) = row.dxp[..3 * n].split_at_mut(n);
        let (dxg, dxo) = rest.split_at_mut(n);
        for j in 0..n {
            let (f, g, o, c) = (tf[j], tg[j], to[j], tc[j]);
            let dh = dh_state[j] + dout[j];
            let tc = c.tanh();
            let dct = dc[j] + dh * o * dtanh(tc);
            let df = dct * (cp[j] - g) * dsigmoid(f);
            let dg = dct * (T::one() - f) * dtanh(g);
            let d_o = dh * tc * dsigmoid(o);
            dxf[j] = df;
            dxg[j] = dg;
            dxo[j] = d_o;
            dc[j] = dct * f;
            // h reaches the previous step only through the product (the driver adds it).
            dh_state[j] = T::zero();
        }
    }
}
