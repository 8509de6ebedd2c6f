//! The layer-normalised LSTM (as in haste): gates i, f, g, o;
//! ```text
//! v  = LN_ih(W_ih x) + LN_hh(W_hh h) + bias           [4H]
//! c' = s(v_f) c + s(v_i) tanh(v_g)
//! h' = s(v_o) tanh(LN_c(c'))                           (output h')
//! ```
//! where `LN(a) = (a - mean(a)) / sqrt(var(a) + 1e-5) * weight + bias`, the mean and the biased
//! variance taken over the whole vector (4H for LN_ih and LN_hh, H for LN_c). States h, c.
//!
//! `xp = W_ih x` (no input bias); one product `r = W_hh h` (no bias). The pointwise slot holds
//! `bias` `[0, 4H)`, `ln_ih_weight` `[4H, 8H)`, `ln_ih_bias` `[8H, 12H)`, `ln_hh_weight`
//! `[12H, 16H)`, `ln_hh_bias` `[16H, 20H)`, `ln_c_weight` `[20H, 21H)`, `ln_c_bias` `[21H, 22H)`.
//!
//! Tape (13H + 3 per row): the normalised `W_ih x` `[0, 4H)`, the normalised `W_hh h`
//! `[4H, 8H)`, the activated gates i, f, g, o `[8H, 12H)`, the normalised c' `[12H, 13H)`, then
//! 1/sigma of LN_ih, LN_hh and LN_c at 13H, 13H + 1, 13H + 2.

use super::{Slots, dsigmoid, dtanh, BwdRow, Cell, FwdRow, GradBlock, Init, Layout, ParamDef, Product, Sizes, Slot, Src, StateDef};
use crate::float::Float;

pub struct LstmLayerNorm;

const EPS: f64 = 1e-5;

/// The sum of `f(a[i], b[i])` over `a`'s length (`b` at least as long) in 8 partial sums
/// (element i into partial i % 8), added in a fixed order at the end: one running sum waits
/// on each addition's latency (the layer norms' sums were half of this cell's CPU time), eight
/// do not, and the order is the same every run. Whole chunks of 8, so no bounds checks.
#[inline(always)]
fn sum8<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let b = &b[..a.len()];
    let mut p = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            p[l] += f(x[l], y[l]);
        }
    }
    for (l, (&x, &y)) in ta.iter().zip(tb).enumerate() {
        p[l] += f(x, y);
    }
    ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]))
}

/// Normalises `a` into `n` (mean, then biased variance over the whole slice) and returns
/// `1 / sqrt(var + eps)`.
#[inline(always)]
fn ln_forward<T: Float>(a: &[T], n: &mut [T]) -> T {
    let m = T::from_f64(a.len() as f64);
    let mean = sum8(a, a, |x, _| x) / m;
    let var = sum8(a, a, |x, _| (x - mean) * (x - mean)) / m;
    let rstd = T::one() / (var + T::from_f64(EPS)).sqrt();
    for (o, &v) in n.iter_mut().zip(a) {
        *o = (v - mean) * rstd;
    }
    rstd
}

/// In place: `g` holds the gradient of the normalised values `n` on entry, that of the
/// normalised input on return: `rstd * (g - mean(g) - n * mean(g * n))`.
#[inline(always)]
fn ln_backward<T: Float>(g: &mut [T], n: &[T], rstd: T) {
    let m = T::from_f64(g.len() as f64);
    let n = &n[..g.len()];
    let (m1, m2) = (sum8(g, g, |x, _| x) / m, sum8(g, n, |x, y| x * y) / m);
    for (d, &v) in g.iter_mut().zip(n) {
        *d = rstd * (*d - m1 - v * m2);
    }
}

/// Through LN_c to c' (dn = dy w_c) and on to the gates' pre-activations: `i`, `f`, `g` the
/// activated gates, `cp` the previous cell state, `m` = `[m1, m2, rstd_c]`; `dc` holds the
/// gradient of the new c on entry, of the previous one on return. A function of its own, each
/// slice a parameter cut to one length: written inline over slices split from the same rows,
/// the compiler could not tell that they do not overlap, or how long they are, and left this
/// loop scalar with a bounds check per element (the hottest line of the cell's backward in a
/// profile).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gates_backward<T: Float>(dy: &[T], w_c: &[T], n_c: &[T], gi: &[T], gf: &[T], gg: &[T], cp: &[T], m: [T; 3], dc: &mut [T], dxi: &mut [T], dxf: &mut [T], dxg: &mut [T]) {
    let n = dc.len();
    let (dy, w_c, n_c, gi, gf, gg, cp) = (&dy[..n], &w_c[..n], &n_c[..n], &gi[..n], &gf[..n], &gg[..n], &cp[..n]);
    let (dxi, dxf, dxg) = (&mut dxi[..n], &mut dxf[..n], &mut dxg[..n]);
    let [m1, m2, rstd_c] = m;
    for j in 0..n {
        let dn = dy[j] * w_c[j];
        let dcn = dc[j] + rstd_c * (dn - m1 - n_c[j] * m2);
        let (i, f, g) = (gi[j], gf[j], gg[j]);
        dxi[j] = dcn * g * dsigmoid(i);
        dxf[j] = dcn * cp[j] * dsigmoid(f);
        dxg[j] = dcn * i * dtanh(g);
        dc[j] = dcn * f;
    }
}

impl Cell for LstmLayerNorm {
    const NAME: &'static str = "LSTM_LAYERNORM";
    // Measured with the CPU twin on the golden-variant cases (tests/it/f16.rs): rounding
    // only the weights and input to f16, everything else in f64, already puts gradients (and
    // in one case the output) outside the f16 tolerances, and so does rounding only the
    // input (1.6x on lstm_layernorm_5_1), so f32 weights for this cell would not help. Layer norm over W_hh h divides by the
    // spread of a nearly constant vector, which multiplies rounding errors.
    const F16_REFUSED: Option<&'static str> =
        Some("its layer norms amplify f16 rounding of the input or the weights alone beyond the f16 tolerances (golden-variant cases); use f32");
    const WGSL: &'static str = super::cell_wgsl!(rows "lstm_layernorm.wgsl");
    const UNIT_STEP: bool = false;
    fn params(s: Sizes) -> Vec<ParamDef> {
        let h = s.hidden;
        let g = 4 * h;
        let p = Slot::Pointwise;
        vec![
            ParamDef::new("weight_ih", vec![g, s.input], Slot::WeightIh, 0),
            ParamDef::new("weight_hh", vec![g, h], Slot::WeightHh, 0),
            ParamDef::new("bias", vec![g], p, 0),
            ParamDef::new("ln_ih_weight", vec![g], p, g).init(Init::Ones),
            ParamDef::new("ln_ih_bias", vec![g], p, 2 * g).init(Init::Zeros),
            ParamDef::new("ln_hh_weight", vec![g], p, 3 * g).init(Init::Ones),
            ParamDef::new("ln_hh_bias", vec![g], p, 4 * g).init(Init::Zeros),
            ParamDef::new("ln_c_weight", vec![h], p, 5 * g).init(Init::Ones),
            ParamDef::new("ln_c_bias", vec![h], p, 5 * g + h).init(Init::Zeros),
        ]
    }
    fn states(s: Sizes) -> Vec<StateDef> {
        vec![StateDef { name: "h", width: s.hidden }, StateDef { name: "c", width: s.hidden }]
    }
    fn layout(s: Sizes) -> Layout {
        let h = s.hidden;
        Layout {
            xp: 4 * h,
            input_bias: false,
            stages: vec![Some(Product { slot: Slot::WeightHh, offset: 0, rows: 4 * h, gates: 4, k: h, bias: None, src: Src::State(0) })],
            tape: 13 * h + 3,
            pointwise: 22 * h,
            // A row's de (14H): the gates' dv at [0, 4H) (the gradient of `bias`, `ln_ih_bias`
            // and `ln_hh_bias` alike, added once), dv n_ih at [4H, 8H), dv n_hh at [8H, 12H),
            // dy n_c at 12H, dy at 13H.
            de_blocks: vec![
                GradBlock { de: 0, param: 0, len: 4 * h },
                GradBlock { de: 4 * h, param: 4 * h, len: 4 * h },
                GradBlock { de: 0, param: 8 * h, len: 4 * h },
                GradBlock { de: 8 * h, param: 12 * h, len: 4 * h },
                GradBlock { de: 0, param: 16 * h, len: 4 * h },
                GradBlock { de: 12 * h, param: 20 * h, len: 2 * h },
            ],
            uses_input: false,
            out: h,
        }
    }
    #[inline(always)]
    fn forward<T: Float, A: Slots>(_stage: usize, s: Sizes, row: FwdRow<'_, T>, _a: A) {
        let n = s.hidden;
        let g4 = 4 * n;
        let (xp, r, e) = (&row.xp[..g4], &row.r[..g4], &row.e[..22 * n]);
        let (bias, w_ih, b_ih, w_hh, b_hh) = (&e[..g4], &e[g4..2 * g4], &e[2 * g4..3 * g4], &e[3 * g4..4 * g4], &e[4 * g4..5 * g4]);
        let (w_c, b_c) = (&e[5 * g4..5 * g4 + n], &e[5 * g4 + n..5 * g4 + 2 * n]);
        let (hs, c) = row.s[..2 * n].split_at_mut(n);
        let (n_ih, rest) = row.tape[..13 * n + 3].split_at_mut(g4);
        let (n_hh, rest) = rest.split_at_mut(g4);
        let (gates, rest) = rest.split_at_mut(g4);
        let (n_c, rstd) = rest.split_at_mut(n);
        rstd[0] = ln_forward(xp, n_ih);
        rstd[1] = ln_forward(r, n_hh);
        // The pre-activations v into the gates' slots, then the gates in place: exact-length
        // slices, so both loops have no bounds checks and vectorise (as LSTM's).
        let (n_ih, n_hh) = (&n_ih[..g4], &n_hh[..g4]);
        for (k, v) in gates.iter_mut().enumerate() {
            *v = n_ih[k] * w_ih[k] + b_ih[k] + (n_hh[k] * w_hh[k] + b_hh[k]) + bias[k];
        }
        let (gi, rest) = gates.split_at_mut(n);
        let (gf, rest) = rest.split_at_mut(n);
        let (gg, go) = rest.split_at_mut(n);
        let (go, c) = (&mut go[..n], &mut c[..n]);
        for j in 0..n {
            let i = gi[j].sigmoid();
            let f = gf[j].sigmoid();
            let g = gg[j].tanh();
            let o = go[j].sigmoid();
            c[j] = f * c[j] + i * g;
            gi[j] = i;
            gf[j] = f;
            gg[j] = g;
            go[j] = o;
        }
        rstd[2] = ln_forward(c, n_c);
        let (out, hs, n_c) = (&mut row.out[..n], &mut hs[..n], &n_c[..n]);
        for j in 0..n {
            let hn = go[j] * (n_c[j] * w_c[j] + b_c[j]).tanh();
            hs[j] = hn;
            out[j] = hn;
        }
    }
    #[inline(always)]
    fn backward<T: Float>(_stage: usize, s: Sizes, row: BwdRow<'_, T>) {
        let n = s.hidden;
        let g4 = 4 * n;
        let e = &row.e[..22 * n];
        let (w_ih, w_hh, w_c, b_c) = (&e[g4..2 * g4], &e[3 * g4..4 * g4], &e[5 * g4..5 * g4 + n], &e[5 * g4 + n..5 * g4 + 2 * n]);
        let t = &row.tape[..13 * n + 3];
        let (n_ih, n_hh, gates, n_c) = (&t[..g4], &t[g4..2 * g4], &t[2 * g4..3 * g4], &t[3 * g4..3 * g4 + n]);
        let (rstd_ih, rstd_hh, rstd_c) = (t[13 * n], t[13 * n + 1], t[13 * n + 2]);
        let cp = &row.s_prev[n..2 * n];
        let (dh_state, dc) = row.ds[..2 * n].split_at_mut(n);
        let (dxp, dr, de, dout) = (&mut row.dxp[..g4], &mut row.dr[..g4], &mut row.de[..14 * n], &row.dout[..n]);
        // Exact-length slices, so the loops have no bounds checks and vectorise.
        let (gi, gf, gg, go) = (&gates[..n], &gates[n..2 * n], &gates[2 * n..3 * n], &gates[3 * n..4 * n]);
        let (n_c, cp, dout, dh_state, dc) = (&n_c[..n], &cp[..n], &dout[..n], &mut dh_state[..n], &mut dc[..n]);
        let (de_v, de_c) = de.split_at_mut(3 * g4);
        let (de_wc, de_bc) = de_c.split_at_mut(n);
        let (de_wc, de_bc) = (&mut de_wc[..n], &mut de_bc[..n]);
        // h' = o tanh(y), y = LN_c(c'): d o, and dy and dy n_c (ln_c_bias's and ln_c_weight's
        // terms) kept in dr, which the last loop overwrites.
        let (dy, dyn_c) = dr[..2 * n].split_at_mut(n);
        let dyn_c = &mut dyn_c[..n];
        {
            let dxo = &mut dxp[3 * n..4 * n];
            for j in 0..n {
                let o = go[j];
                let dh = dh_state[j] + dout[j];
                let ty = (n_c[j] * w_c[j] + b_c[j]).tanh();
                let d = dh * o * dtanh(ty);
                dxo[j] = dh * ty * dsigmoid(o);
                let dn = d * n_c[j];
                dy[j] = d;
                dyn_c[j] = dn;
                de_wc[j] += dn;
                de_bc[j] += d;
            }
        }
        // Through LN_c to c' (dn = dy w_c), then the gates' pre-activations v.
        let hm = T::from_f64(n as f64);
        // sum(dy w_c n_c) as sum((dy n_c) w_c).
        let (m1, m2) = (sum8(dy, w_c, |d, w| d * w) / hm, sum8(dyn_c, w_c, |a, w| a * w) / hm);
        {
            let (dxi, rest) = dxp.split_at_mut(n);
            let (dxf, rest) = rest.split_at_mut(n);
            gates_backward(dy, w_c, n_c, gi, gf, gg, cp, [m1, m2, rstd_c], dc, dxi, dxf, &mut rest[..n]);
        }
        // v = LN_ih(xp) + LN_hh(r) + bias: the parameters' gradients, then both LNs backward.
        // (`bias`, `ln_ih_bias` and `ln_hh_bias` share d_bias: Layout::de_blocks.)
        let (d_bias, rest) = de_v.split_at_mut(g4);
        let (d_wih, d_whh) = rest.split_at_mut(g4);
        let (n_ih, n_hh, d_whh) = (&n_ih[..g4], &n_hh[..g4], &mut d_whh[..g4]);
        for k in 0..g4 {
            let dv = dxp[k];
            d_bias[k] += dv;
            d_wih[k] += dv * n_ih[k];
            d_whh[k] += dv * n_hh[k];
            dxp[k] = dv * w_ih[k];
            dr[k] = dv * w_hh[k];
        }
        ln_backward(dxp, n_ih, rstd_ih);
        ln_backward(dr, n_hh, rstd_hh);
        dh_state.fill(T::zero());
    }
}
