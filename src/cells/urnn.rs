//! The unitary evolution RNN (Arjovsky, Shah & Bengio 2016). N = H / 2 complex units; the
//! state `h` holds their real parts in its first N entries and their imaginary parts in its
//! last N:
//! ```text
//! z  = W h + u,   W = D3 R2 F^-1 D2 P R1 F D1 (unitary),   u = W_ih x (Re rows, then Im)
//! m  = sqrt(re(z)^2 + im(z)^2 + 1e-5)
//! h' = z * relu(m + bias) / m                                  (modReLU; output h')
//! ```
//! Dk = diag(exp(i theta_k)), F the unitary DFT (scaled 1/sqrt(N)), Rk z = z - 2 v (v* z) /
//! (v* v) with v = v_k, P the fixed permutation `z_j <- z_{perm[j]}`.
//!
//! W is derived from the parameters ([`Cell::derive`]): the engine composes it once per call
//! into the `WeightHh` slot as the real `[H, H]` matrix `[[Re W, -Im W], [Im W, Re W]]`, runs
//! it as the one product of stage 0 (2 gates: unit j's rows are j and N + j), and maps the
//! product's gradient dW back to `theta` and `reflection` ([`Cell::derive_backward`]).
//! Column k of W is the chain applied to e_k: `D1 e_k` is a column of F scaled by
//! exp(i theta1_k), the reflections and phases cost O(N), and F^-1 one dense O(N^2) transform
//! (`shaders/cells/urnn.wgsl` computes the same thing, a workgroup per column).
//!
//! The pointwise slot holds `theta` `[0, 3N)`, `reflection` `[3N, 7N)` (rows Re v1, Im v1,
//! Re v2, Im v2), `bias` `[7N, 8N)` and `permutation` `[8N, 9N)` (whole numbers, fixed).
//! Tape: z (H values).

use super::{Slots, BwdRow, Cell, Derived, FwdRow, GradBlock, Init, Layout, ParamDef, Product, Sizes, Slot, Src, StateDef};
use crate::float::Float;

pub struct Urnn;

/// modReLU's epsilon inside the modulus.
const EPS: f64 = 1e-5;

/// N, the complex units.
fn units(s: Sizes) -> usize {
    s.hidden / 2
}

impl Cell for Urnn {
    const NAME: &'static str = "URNN";
    const DR_IS_DXP: bool = true;
    // Measured with the CPU twin on the golden-variant cases (tests/it/f16.rs): f16 weights
    // and input alone, everything else in f64, put urnn_5_0 and urnn_5_1 outside the f16
    // tolerances; the GPU with f16 storage fails the same two. modReLU's threshold
    // relu(|z| + b) turns small errors in |z| into a unit switched off or on.
    const F16_REFUSED: Option<&'static str> =
        Some("f16 rounding of its weights and input alone moves its results beyond the f16 tolerances (golden-variant cases); use f32");
    const WGSL: &'static str = super::cell_wgsl!("urnn.wgsl");
    fn check(s: Sizes) -> std::result::Result<(), String> {
        if s.hidden % 2 != 0 {
            return Err(format!("hidden_size {} must be even (N = H / 2 complex units)", s.hidden));
        }
        Ok(())
    }
    fn params(s: Sizes) -> Vec<ParamDef> {
        let (h, n) = (s.hidden, units(s));
        let p = Slot::Pointwise;
        let pi = std::f64::consts::PI;
        vec![
            ParamDef::new("weight_ih", vec![h, s.input], Slot::WeightIh, 0).init(Init::Glorot),
            ParamDef::new("theta", vec![3, n], p, 0).init(Init::Range(-pi, pi)),
            ParamDef::new("reflection", vec![4, n], p, 3 * n).init(Init::Range(-1.0, 1.0)),
            ParamDef::new("bias", vec![n], p, 7 * n).init(Init::Zeros),
            ParamDef::new("permutation", vec![n], p, 8 * n).init(Init::Permutation).fixed(),
        ]
    }
    fn states(s: Sizes) -> Vec<StateDef> {
        vec![StateDef { name: "h", width: s.hidden }]
    }
    fn layout(s: Sizes) -> Layout {
        let (h, n) = (s.hidden, units(s));
        Layout {
            xp: h,
            input_bias: false,
            stages: vec![Some(Product { slot: Slot::WeightHh, offset: 0, rows: h, gates: 2, k: h, bias: None, src: Src::State(0) })],
            tape: h,
            pointwise: 9 * n,
            // A row's de: modReLU's bias gradient (N); theta and reflection get theirs from
            // dW (Cell::derive_backward), the permutation none.
            de_blocks: vec![GradBlock { de: 0, param: 7 * n, len: n }],
            uses_input: false,
            out: h,
        }
    }
    fn derived(s: Sizes) -> Option<Derived> {
        let n = units(s);
        // Scratch (urnn.wgsl): five vectors of 2N per column, then an [N, 7N] partials block.
        Some(Derived { len: s.hidden * s.hidden, grads: 0..7 * n, fixed: 8 * n..9 * n, scratch: 17 * n * n, groups: n })
    }
    fn derive_table(s: Sizes) -> Vec<f32> {
        // exp(2 pi i t / N) as [cos N | sin N], then F's scale 1 / sqrt(N), each rounded once
        // from f64: F's columns are orthogonal only as far as these are exact.
        let n = units(s);
        let tau = 2.0 * std::f64::consts::PI / n as f64;
        let mut tw: Vec<f32> = (0..n).map(|t| (tau * t as f64).cos() as f32).chain((0..n).map(|t| (tau * t as f64).sin() as f32)).collect();
        tw.push((1.0 / (n as f64).sqrt()) as f32);
        tw
    }
    fn check_params<T: Float>(s: Sizes, e: &[T]) -> std::result::Result<(), String> {
        let n = units(s);
        let perm = &e[8 * n..9 * n];
        let mut seen = vec![false; n];
        for (j, &v) in perm.iter().enumerate() {
            let f = v.to_f64();
            if !(f.fract() == 0.0 && f >= 0.0 && f < n as f64) {
                return Err(format!("permutation[{j}] = {f} is not an index in [0, {n})"));
            }
            if std::mem::replace(&mut seen[f as usize], true) {
                return Err(format!("permutation repeats {f} (at {j})"));
            }
        }
        for (k, name) in [(3, "v1"), (5, "v2")] {
            let norm: f64 = e[k * n..(k + 2) * n].iter().map(|v| v.to_f64() * v.to_f64()).sum();
            if norm == 0.0 {
                return Err(format!("reflection {name} is zero (a reflection needs a nonzero vector)"));
            }
        }
        Ok(())
    }
    #[inline(always)]
    fn forward<T: Float, A: Slots>(_stage: usize, s: Sizes, row: FwdRow<'_, T>, _a: A) {
        let n = units(s);
        let (h, e) = (s.hidden, row.e);
        let (xp, r, tape) = (&row.xp[..h], &row.r[..h], &mut row.tape[..h]);
        let (st, out) = (&mut row.s[..h], &mut row.out[..h]);
        let bias = &e[7 * n..8 * n];
        let eps = T::from_f64(EPS);
        for j in 0..n {
            let zr = xp[j] + r[j];
            let zi = xp[n + j] + r[n + j];
            tape[j] = zr;
            tape[n + j] = zi;
            let m = (zr * zr + zi * zi + eps).sqrt();
            // (|z| + b) / |z| as 1 + b / |z|: exactly 1 with b = 0 (unitary steps keep |h|).
            let sc = if m + bias[j] > T::zero() { T::one() + bias[j] / m } else { T::zero() };
            st[j] = zr * sc;
            st[n + j] = zi * sc;
            out[j] = zr * sc;
            out[n + j] = zi * sc;
        }
    }
    #[inline(always)]
    fn backward<T: Float>(_stage: usize, s: Sizes, row: BwdRow<'_, T>) {
        let n = units(s);
        let h = s.hidden;
        let bias = &row.e[7 * n..8 * n];
        let (tape, dout, ds) = (&row.tape[..h], &row.dout[..h], &mut row.ds[..h]);
        // The product's gradient is dxp's (`DR_IS_DXP`): the driver reads it there.
        let (dxp, de) = (&mut row.dxp[..h], &mut row.de[..n]);
        let eps = T::from_f64(EPS);
        for j in 0..n {
            let (zr, zi) = (tape[j], tape[n + j]);
            let (gr, gi) = (ds[j] + dout[j], ds[n + j] + dout[n + j]);
            let m = (zr * zr + zi * zi + eps).sqrt();
            let a = m + bias[j];
            let (dzr, dzi, db) = if a > T::zero() {
                // h = z (1 + b / m): dh/dm = -b z / m^2, dm/dz = z / m, dh/db = z / m.
                let dot = gr * zr + gi * zi;
                let sc = T::one() + bias[j] / m;
                let k = -bias[j] * dot / (m * m * m);
                (gr * sc + k * zr, gi * sc + k * zi, dot / m)
            } else {
                (T::zero(), T::zero(), T::zero())
            };
            dxp[j] = dzr;
            dxp[n + j] = dzi;
            de[j] += db;
            ds[j] = T::zero();
            ds[n + j] = T::zero();
        }
    }
    fn derive<T: Float>(s: Sizes, e: &[T], w: &mut [T]) {
        let n = units(s);
        let h = s.hidden;
        let p = Params::new(n, e);
        let mut col = Column::new(n);
        for k in 0..n {
            col.forward(&p, k);
            let (wr, wi) = (&col.wr, &col.wi);
            for j in 0..n {
                w[j * h + k] = T::from_f64(wr[j]);
                w[(n + j) * h + n + k] = T::from_f64(wr[j]);
                w[(n + j) * h + k] = T::from_f64(wi[j]);
                w[j * h + n + k] = T::from_f64(-wi[j]);
            }
        }
    }
    fn derive_backward<T: Float>(s: Sizes, e: &[T], dw: &[T], de: &mut [T]) {
        let n = units(s);
        let h = s.hidden;
        let p = Params::new(n, e);
        let mut col = Column::new(n);
        let mut acc = vec![0.0f64; 7 * n];
        let (mut gr, mut gi) = (vec![0.0; n], vec![0.0; n]);
        for k in 0..n {
            // The gradient of column k of the complex W from the real [H, H] one.
            for j in 0..n {
                gr[j] = dw[j * h + k].to_f64() + dw[(n + j) * h + n + k].to_f64();
                gi[j] = dw[(n + j) * h + k].to_f64() - dw[j * h + n + k].to_f64();
            }
            col.forward(&p, k);
            col.backward(&p, k, &gr, &gi, &mut acc);
        }
        for (d, a) in de[..7 * n].iter_mut().zip(acc) {
            *d += T::from_f64(a);
        }
    }
}

/// The parameters W is made of, in f64 (the composition is O(N^3) per call, the step's
/// products O(N^2) per row: the CPU reference keeps it exact; `urnn.wgsl` does it in f32).
struct Params {
    n: usize,
    /// exp(i theta_k) as (cos, sin), k = 1, 2, 3.
    d: [(Vec<f64>, Vec<f64>); 3],
    /// v1, v2 as (re, im), and their squared norms.
    v: [(Vec<f64>, Vec<f64>); 2],
    beta: [f64; 2],
    perm: Vec<usize>,
    /// exp(2 pi i t / N) for t in 0..N, as (cos, sin).
    tw: (Vec<f64>, Vec<f64>),
}

impl Params {
    fn new<T: Float>(n: usize, e: &[T]) -> Self {
        let f = |a: usize| -> Vec<f64> { e[a * n..(a + 1) * n].iter().map(|x| x.to_f64()).collect() };
        let phase = |a: usize| -> (Vec<f64>, Vec<f64>) {
            let t = f(a);
            (t.iter().map(|x| x.cos()).collect(), t.iter().map(|x| x.sin()).collect())
        };
        let v = [(f(3), f(4)), (f(5), f(6))];
        let beta = [0, 1].map(|i| v[i].0.iter().chain(&v[i].1).map(|x| x * x).sum());
        let perm = e[8 * n..9 * n].iter().map(|x| x.to_f64() as usize).collect();
        let tau = 2.0 * std::f64::consts::PI / n as f64;
        let tw = ((0..n).map(|t| (tau * t as f64).cos()).collect(), (0..n).map(|t| (tau * t as f64).sin()).collect());
        Params { n, d: [phase(0), phase(1), phase(2)], v, beta, perm, tw }
    }
}

/// One column's chain, kept for its backward.
struct Column {
    /// y0 = exp(i theta1_k) F e_k, b = D2 P R1 y0, u = F^-1 b, w = D3 R2 u.
    y0r: Vec<f64>,
    y0i: Vec<f64>,
    br: Vec<f64>,
    bi: Vec<f64>,
    ur: Vec<f64>,
    ui: Vec<f64>,
    wr: Vec<f64>,
    wi: Vec<f64>,
    /// alpha_k = v_k* (the reflection's input).
    alpha: [(f64, f64); 2],
}

/// `v* z` as (re, im).
fn vdot(vr: &[f64], vi: &[f64], zr: &[f64], zi: &[f64]) -> (f64, f64) {
    let mut a = (0.0, 0.0);
    for j in 0..vr.len() {
        a.0 += vr[j] * zr[j] + vi[j] * zi[j];
        a.1 += vr[j] * zi[j] - vi[j] * zr[j];
    }
    a
}

impl Column {
    fn new(n: usize) -> Self {
        let z = || vec![0.0; n];
        Column { y0r: z(), y0i: z(), br: z(), bi: z(), ur: z(), ui: z(), wr: z(), wi: z(), alpha: [(0.0, 0.0); 2] }
    }

    /// Column k of W (into `wr`, `wi`).
    fn forward(&mut self, p: &Params, k: usize) {
        let n = p.n;
        let sq = 1.0 / (n as f64).sqrt();
        let (c1, s1) = (p.d[0].0[k], p.d[0].1[k]);
        for j in 0..n {
            // F[j, k] = exp(-2 pi i jk / N) / sqrt(N).
            let t = (j * k) % n;
            let (fr, fi) = (p.tw.0[t] * sq, -p.tw.1[t] * sq);
            self.y0r[j] = c1 * fr - s1 * fi;
            self.y0i[j] = s1 * fr + c1 * fi;
        }
        // R1, then P and D2 into b.
        let (vr, vi) = (&p.v[0].0, &p.v[0].1);
        let a = vdot(vr, vi, &self.y0r, &self.y0i);
        self.alpha[0] = a;
        let f = 2.0 / p.beta[0];
        for j in 0..n {
            let m = p.perm[j];
            let yr = self.y0r[m] - f * (vr[m] * a.0 - vi[m] * a.1);
            let yi = self.y0i[m] - f * (vr[m] * a.1 + vi[m] * a.0);
            let (c, s) = (p.d[1].0[j], p.d[1].1[j]);
            self.br[j] = c * yr - s * yi;
            self.bi[j] = s * yr + c * yi;
        }
        // u = F^-1 b: F^-1[j, m] = exp(2 pi i jm / N) / sqrt(N).
        for j in 0..n {
            let (mut sr, mut si) = (0.0, 0.0);
            // t = jm mod N, stepped.
            let mut t = 0;
            for m in 0..n {
                let (c, s) = (p.tw.0[t], p.tw.1[t]);
                t += j;
                if t >= n {
                    t -= n;
                }
                sr += c * self.br[m] - s * self.bi[m];
                si += s * self.br[m] + c * self.bi[m];
            }
            self.ur[j] = sr * sq;
            self.ui[j] = si * sq;
        }
        // R2, then D3 into w.
        let (vr, vi) = (&p.v[1].0, &p.v[1].1);
        let a = vdot(vr, vi, &self.ur, &self.ui);
        self.alpha[1] = a;
        let f = 2.0 / p.beta[1];
        for j in 0..n {
            let xr = self.ur[j] - f * (vr[j] * a.0 - vi[j] * a.1);
            let xi = self.ui[j] - f * (vr[j] * a.1 + vi[j] * a.0);
            let (c, s) = (p.d[2].0[j], p.d[2].1[j]);
            self.wr[j] = c * xr - s * xi;
            self.wi[j] = s * xr + c * xi;
        }
    }

    /// Adds column k's share of the gradients of theta `[0, 3N)` and reflection `[3N, 7N)`
    /// to `acc`, from the gradient (gr, gi) of the column (after `forward(p, k)`).
    fn backward(&self, p: &Params, k: usize, gr: &[f64], gi: &[f64], acc: &mut [f64]) {
        let n = p.n;
        let sq = 1.0 / (n as f64).sqrt();
        // D3: d theta3_j = Re(conj(g) i w); the gradient of its input is exp(-i theta3) g.
        let (mut xr, mut xi) = (vec![0.0; n], vec![0.0; n]);
        for j in 0..n {
            acc[2 * n + j] += gi[j] * self.wr[j] - gr[j] * self.wi[j];
            let (c, s) = (p.d[2].0[j], p.d[2].1[j]);
            xr[j] = c * gr[j] + s * gi[j];
            xi[j] = -s * gr[j] + c * gi[j];
        }
        // R2 on u: v2's gradient, and R2 g (R is Hermitian) for u.
        let (gur, gui) = reflect_backward(p, 1, &self.ur, &self.ui, self.alpha[1], &xr, &xi, &mut acc[5 * n..7 * n]);
        // F^-1 on b: the gradient of b is F g_u (F^-1 is unitary).
        let (mut gbr, mut gbi) = (vec![0.0; n], vec![0.0; n]);
        for j in 0..n {
            let (mut sr, mut si) = (0.0, 0.0);
            let mut t = 0;
            for m in 0..n {
                let (c, s) = (p.tw.0[t], -p.tw.1[t]);
                t += j;
                if t >= n {
                    t -= n;
                }
                sr += c * gur[m] - s * gui[m];
                si += s * gur[m] + c * gui[m];
            }
            gbr[j] = sr * sq;
            gbi[j] = si * sq;
        }
        // D2 and P: b_j = exp(i theta2_j) y1[perm j].
        let (mut g1r, mut g1i) = (vec![0.0; n], vec![0.0; n]);
        for j in 0..n {
            acc[n + j] += gbi[j] * self.br[j] - gbr[j] * self.bi[j];
            let (c, s) = (p.d[1].0[j], p.d[1].1[j]);
            g1r[p.perm[j]] = c * gbr[j] + s * gbi[j];
            g1i[p.perm[j]] = -s * gbr[j] + c * gbi[j];
        }
        // R1 on y0, then theta1_k from y0 = exp(i theta1_k) F e_k.
        let (g0r, g0i) = reflect_backward(p, 0, &self.y0r, &self.y0i, self.alpha[0], &g1r, &g1i, &mut acc[3 * n..5 * n]);
        let mut d1 = 0.0;
        for j in 0..n {
            d1 += g0i[j] * self.y0r[j] - g0r[j] * self.y0i[j];
        }
        acc[k] += d1;
    }
}

/// The backward of `y = R z = z - (2 / beta) v alpha`, alpha = v* z, given g = dL/dy: adds
/// the gradient of v (re then im, `dv` 2N wide) and returns that of z, `R g`.
#[allow(clippy::too_many_arguments)]
fn reflect_backward(p: &Params, r: usize, zr: &[f64], zi: &[f64], alpha: (f64, f64), gr: &[f64], gi: &[f64], dv: &mut [f64]) -> (Vec<f64>, Vec<f64>) {
    let n = p.n;
    let (vr, vi) = (&p.v[r].0, &p.v[r].1);
    let beta = p.beta[r];
    // gamma = g* v; v* g = conj(gamma).
    let gamma = vdot(gr, gi, vr, vi);
    let (ar, ai) = alpha;
    // Re(gamma alpha).
    let re_ga = gamma.0 * ar - gamma.1 * ai;
    let (f, f2) = (2.0 / beta, 4.0 / (beta * beta) * re_ga);
    let (dvr, dvi) = dv.split_at_mut(n);
    let (mut or, mut oi) = (vec![0.0; n], vec![0.0; n]);
    for j in 0..n {
        // -(2/beta) (conj(alpha) g + gamma z) + (4/beta^2) Re(gamma alpha) v.
        let cag = (ar * gr[j] + ai * gi[j], ar * gi[j] - ai * gr[j]);
        let gz = (gamma.0 * zr[j] - gamma.1 * zi[j], gamma.0 * zi[j] + gamma.1 * zr[j]);
        dvr[j] += -f * (cag.0 + gz.0) + f2 * vr[j];
        dvi[j] += -f * (cag.1 + gz.1) + f2 * vi[j];
        // R g = g - (2/beta) v (v* g), v* g = conj(gamma).
        let (cr, ci) = (gamma.0, -gamma.1);
        or[j] = gr[j] - f * (vr[j] * cr - vi[j] * ci);
        oi[j] = gi[j] - f * (vr[j] * ci + vi[j] * cr);
    }
    (or, oi)
}
