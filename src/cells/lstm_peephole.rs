//! LSTM with peepholes (Gers & Schmidhuber 2000): gates i, f, g, o from
//! `a = W_ih x + b_ih + W_hh h + b_hh`, and
//! `i = s(a_i + w_ci c)`, `f = s(a_f + w_cf c)`, `g = tanh(a_g)`, `c' = f c + i g`,
//! `o = s(a_o + w_co c')`, `h' = o tanh(c')`; output h'. States h `[H]`, c `[H]`.
//! The peepholes `weight_peephole [3, H]` (rows ci, cf, co) are pointwise parameters.
//! Tape `[5H]`: i at 0, f at H, g at 2H, o at 3H, c' at 4H.

use super::rnn::{torch_layout, torch_params};
use super::{Function, Slots, dsigmoid, dtanh, BwdRow, Cell, FwdRow, Layout, ParamDef, Sizes, Slot, StateDef};
use crate::float::Float;

pub struct LstmPeephole;

/// This cell always has its biases, whatever `Sizes::bias` says.
fn with_bias(s: Sizes) -> Sizes {
    Sizes { bias: true, proj: 0, ..s }
}

impl Cell for LstmPeephole {
    const DR_IS_DXP: bool = true;
    // The forward writes i, f, g, o and c, all the tape; the backward assigns all four gates'
    // dxp.
    const WRITES_WHOLE_ROWS: bool = true;
    const NAME: &'static str = "LSTM_PEEPHOLE";
    // f (the gates), g, h, and the forget gate's own (ONNX's input_forget: `1 - F(-x)`).
    const SLOTS: &'static [Function] = &[Function::Sigmoid, Function::Tanh, Function::Tanh, Function::Sigmoid];
    const WGSL: &'static str = super::cell_wgsl!("lstm_peephole.wgsl");
    fn params(s: Sizes) -> Vec<ParamDef> {
        let mut v = torch_params(4, with_bias(s), s.hidden);
        v.push(ParamDef::new("weight_peephole", vec![3, s.hidden], Slot::Pointwise, 0));
        v
    }
    fn states(s: Sizes) -> Vec<StateDef> {
        vec![StateDef { name: "h", width: s.hidden }, StateDef { name: "c", width: s.hidden }]
    }
    fn layout(s: Sizes) -> Layout {
        let mut l = torch_layout(4, with_bias(s), s.hidden, 5 * s.hidden);
        l.pointwise = 3 * s.hidden;
        l
    }
    #[inline(always)]
    fn forward<T: Float, A: Slots>(_stage: usize, s: Sizes, row: FwdRow<'_, T>, a: A) {
        let n = s.hidden;
        let (x, hp) = (&row.xp[..4 * n], &row.r[..4 * n]);
        let (wci, wcf, wco) = (&row.e[..n], &row.e[n..2 * n], &row.e[2 * n..3 * n]);
        let (h, c) = row.s[..2 * n].split_at_mut(n);
        let t = &mut row.tape[..5 * n];
        let out = &mut row.out[..n];
        for j in 0..n {
            let cp = c[j];
            let i = a.act(0, x[j] + hp[j] + wci[j] * cp, T::sigmoid);
            let f = a.act(3, x[n + j] + hp[n + j] + wcf[j] * cp, T::sigmoid);
            let g = a.act(1, x[2 * n + j] + hp[2 * n + j], T::tanh);
            let cn = f * cp + i * g;
            let o = a.act(0, x[3 * n + j] + hp[3 * n + j] + wco[j] * cn, T::sigmoid);
            let y = o * a.act(2, cn, T::tanh);
            c[j] = cn;
            h[j] = y;
            out[j] = y;
            t[j] = i;
            t[n + j] = f;
            t[2 * n + j] = g;
            t[3 * n + j] = o;
            t[4 * n + j] = cn;
        }
    }
    #[inline(always)]
    fn backward<T: Float>(_stage: usize, s: Sizes, row: BwdRow<'_, T>) {
        let n = s.hidden;
        // Exact-length slices per gate, so the loop has no bounds checks and vectorises. The
        // product's gradient is dxp's (`DR_IS_DXP`): the driver reads it there.
        let t = &row.tape[..5 * n];
        let (ti, tf, tg, to, tc) = (&t[..n], &t[n..2 * n], &t[2 * n..3 * n], &t[3 * n..4 * n], &t[4 * n..5 * n]);
        let cp = &row.s_prev[n..2 * n];
        let (wci, wcf, wco) = (&row.e[..n], &row.e[n..2 * n], &row.e[2 * n..3 * n]);
        let (dh_state, dc) = row.ds[..2 * n].split_at_mut(n);
        let dout = &row.dout[..n];
        let (dxi, rest) = row.dxp[..4 * n].split_at_mut(n);
        let (dxf, rest) = rest.split_at_mut(n);
        let (dxg, dxo) = rest.split_at_mut(n);
        let (dei, rest) = row.de[..3 * n].split_at_mut(n);
        let (def, deo) = rest.split_at_mut(n);
        for j in 0..n {
            let (i, f, g, o, c) = (ti[j], tf[j], tg[j], to[j], tc[j]);
            let dh = dh_state[j] + dout[j];
            let tc = c.tanh();
            let d_o = dh * tc * dsigmoid(o);
            let dct = dc[j] + dh * o * dtanh(tc) + d_o * wco[j];
            let di = dct * g * dsigmoid(i);
            let df = dct * cp[j] * dsigmoid(f);
            let dg = dct * i * dtanh(g);
            dxi[j] = di;
            dxf[j] = df;
            dxg[j] = dg;
            dxo[j] = d_o;
            dei[j] += di * cp[j];
            def[j] += df * cp[j];
            deo[j] += d_o * c;
            dc[j] = dct * f + di * wci[j] + df * wcf[j];
            // h reaches the previous step only through the product (the driver adds it).
            dh_state[j] = T::zero();
        }
    }
}
