//! PyTorch's `nn.LSTM`: gates i, f, g, o; `c' = f c + i g`, `h' = o tanh(c')`, and with
//! projection P a second stage `h' = W_hr (o tanh(c'))`. States h `[H_out]`, c `[H]`.
//! Tape: i, f, g, o, c', and the pre-projection h (projection only).

use super::rnn::{torch_layout, torch_params};
use super::{Function, Slots, dsigmoid, dtanh, BwdRow, Cell, FwdRow, Layout, ParamDef, Product, Sizes, Slot, Src, StateDef};
use crate::float::Float;

pub struct Lstm;

fn h_out(s: Sizes) -> usize {
    if s.proj > 0 {
        s.proj
    } else {
        s.hidden
    }
}

impl Cell for Lstm {
    const DR_IS_DXP: bool = true;
    // The forward writes the gates, c and (with a projection) h before it, all the tape; the
    // backward assigns all four gates' dxp.
    const WRITES_WHOLE_ROWS: bool = true;
    const NAME: &'static str = "LSTM";
    const SLOTS: &'static [Function] = &[Function::Sigmoid, Function::Tanh, Function::Tanh];
    const WGSL: &'static str = super::cell_wgsl!("lstm.wgsl");
    const PROJECTION: bool = true;
    const OPTIONAL_BIAS: bool = true;
    fn params(s: Sizes) -> Vec<ParamDef> {
        let mut v = torch_params(4, s, h_out(s));
        if s.proj > 0 {
            v.push(ParamDef::new("weight_hr", vec![s.proj, s.hidden], Slot::WeightHr, 0));
        }
        v
    }
    fn states(s: Sizes) -> Vec<StateDef> {
        vec![StateDef { name: "h", width: h_out(s) }, StateDef { name: "c", width: s.hidden }]
    }
    fn layout(s: Sizes) -> Layout {
        let h = s.hidden;
        let mut l = torch_layout(4, s, h_out(s), if s.proj > 0 { 6 * h } else { 5 * h });
        if s.proj > 0 {
            l.stages.push(Some(Product {
                slot: Slot::WeightHr,
                offset: 0,
                rows: s.proj,
                gates: 1,
                k: h,
                bias: None,
                src: Src::Tape { offset: 5 * h },
            }));
        }
        l
    }
    #[inline(always)]
    fn forward<T: Float, A: Slots>(stage: usize, s: Sizes, row: FwdRow<'_, T>, a: A) {
        let (n, ho) = (s.hidden, h_out(s));
        if stage == 1 {
            // The projection: h' = W_hr h_pre.
            let (r, h, out) = (&row.r[4 * n..4 * n + ho], &mut row.s[..ho], &mut row.out[..ho]);
            h.copy_from_slice(r);
            out.copy_from_slice(r);
            return;
        }
        // Exact-length slices per gate, so the loop has no bounds checks and vectorises.
        let (xi, xf, xg, xo) = (&row.xp[..n], &row.xp[n..2 * n], &row.xp[2 * n..3 * n], &row.xp[3 * n..4 * n]);
        let (ri, rf, rg, ro) = (&row.r[..n], &row.r[n..2 * n], &row.r[2 * n..3 * n], &row.r[3 * n..4 * n]);
        let (hs, c) = row.s.split_at_mut(ho);
        let c = &mut c[..n];
        let (gates, rest) = row.tape.split_at_mut(4 * n);
        let (ct, hpre) = rest.split_at_mut(n);
        let ct = &mut ct[..n];
        // Without projection h' goes to the state and output; with it, to the tape (stage 1's input).
        let h = if s.proj > 0 { &mut hpre[..n] } else { &mut hs[..n] };
        let (gi, rest) = gates.split_at_mut(n);
        let (gf, rest) = rest.split_at_mut(n);
        let (gg, go) = rest.split_at_mut(n);
        let go = &mut go[..n];
        // Two loops: the gates (four independent activations a unit), then c and h. In one loop
        // the chain exp -> divide -> c -> tanh(c) -> divide was too long for the out-of-order
        // window to overlap iterations: the update took 10% more cycles (ARCHITECTURE.md, "The
        // pointwise update"). Every element gets the same operations either way.
        for j in 0..n {
            gi[j] = a.act(0, xi[j] + ri[j], T::sigmoid);
            gf[j] = a.act(0, xf[j] + rf[j], T::sigmoid);
            gg[j] = a.act(1, xg[j] + rg[j], T::tanh);
            go[j] = a.act(0, xo[j] + ro[j], T::sigmoid);
        }
        for j in 0..n {
            let cn = gf[j] * c[j] + gi[j] * gg[j];
            c[j] = cn;
            ct[j] = cn;
            h[j] = go[j] * a.act(2, cn, T::tanh);
        }
        if s.proj == 0 {
            row.out[..n].copy_from_slice(&hs[..n]);
        }
    }
    #[inline(always)]
    fn backward<T: Float>(stage: usize, s: Sizes, row: BwdRow<'_, T>) {
        let (n, ho) = (s.hidden, h_out(s));
        if stage == 1 {
            for j in 0..ho {
                row.dr[4 * n + j] = row.ds[j] + row.dout[j];
                row.ds[j] = T::zero();
            }
            return;
        }
        // Exact-length slices per gate (as the forward), so the loop has no bounds checks and
        // vectorises. The product's gradient is dxp's (`DR_IS_DXP`): the driver reads it there.
        let t = &row.tape[..5 * n];
        let (ti, tf, tg, to, tc) = (&t[..n], &t[n..2 * n], &t[2 * n..3 * n], &t[3 * n..4 * n], &t[4 * n..5 * n]);
        let cp = &row.s_prev[ho..ho + n];
        let (dh_state, dc) = row.ds.split_at_mut(ho);
        let dc = &mut dc[..n];
        let (dxi, rest) = row.dxp[..4 * n].split_at_mut(n);
        let (dxf, rest) = rest.split_at_mut(n);
        let (dxg, dxo) = rest.split_at_mut(n);
        // dh: the projection's input gradient (tape), or the state's plus the output's.
        let (dh_a, dh_b) = if s.proj > 0 { (&row.dtape[5 * n..6 * n], None) } else { (&dh_state[..n], Some(&row.dout[..n])) };
        for j in 0..n {
            let (i, f, g, o, c) = (ti[j], tf[j], tg[j], to[j], tc[j]);
            let dh = match dh_b {
                Some(b) => dh_a[j] + b[j],
                None => dh_a[j],
            };
            let tcj = c.tanh();
            let dct = dc[j] + dh * o * dtanh(tcj);
            dxi[j] = dct * g * dsigmoid(i);
            dxf[j] = dct * cp[j] * dsigmoid(f);
            dxg[j] = dct * i * dtanh(g);
            dxo[j] = dh * tcj * dsigmoid(o);
            dc[j] = dct * f;
        }
        dh_state.fill(T::zero());
    }
}
