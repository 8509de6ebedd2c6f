//! The CPU reference: forward and backward through time for every mode, layer count,
//! direction, variable length and projection, with PyTorch's semantics.
//!
//! It follows the kernel plan the GPU uses (DESIGN.md), so it is both the reference that every
//! GPU result is tested against and an honest CPU baseline:
//! 1. one GEMM for the input projection of all N packed rows of a layer: `Xp = X W_ih^T + b_ih`;
//! 2. per step, one GEMM for the active rows, `Hp = h W_hh^T + b_hh`, then a fused pointwise
//!    update (gates, c, h, output row, and in training mode what backward needs);
//! 3. backward walks the steps in reverse, turning `dh` into gate gradients and
//!    `dh_prev = dG W_hh`; after the loop, GEMMs over all rows at once give `dW_ih`, `dW_hh`,
//!    `dW_hr`, `dX`, and column sums give the bias gradients.
//!
//! All state is kept in sorted order (see [`crate::packing`]): at step t the active rows are
//! exactly rows `0..batch_sizes[t]` of the state, for both directions. A finished sequence's
//! row simply stops being updated, so its state is `h_n`; in the reverse direction a row that
//! starts late still holds its `h0`. Generic over f32 and f64.

mod float;
pub mod gemm;
pub mod smallgemm;
pub mod train;

pub use float::{cast, fast, Float};
use gemm::{gemm, Mat, Op};
use smallgemm::PackedB;

use crate::config::{Mode, RnnConfig};
use crate::error::{check_len, Error, Result};
use crate::packing::{step_offsets, PackedSequence};
use crate::tensor::Tensor;
use crate::weights::{DirParams, Weights};

/// Whether a forward pass keeps what backward needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    /// Keeps nothing; backward is refused.
    Inference,
    /// Keeps the tape for [`backward`].
    Training,
}

/// The result of a forward pass.
#[derive(Clone, Debug)]
pub struct ForwardOutput<T> {
    /// Packed output, rows `[N, D * H_out]`, forward direction's columns first.
    pub output: PackedSequence<T>,
    /// `[L*D, B, H_out]`, caller's batch order: each sequence's state at its own last step.
    pub h_n: Tensor<T>,
    /// `[L*D, B, H]` for LSTM.
    pub c_n: Option<Tensor<T>>,
}

/// What one layer-direction keeps for backward, all in packed rows.
#[derive(Clone, Debug, Default)]
struct DirTape<T> {
    /// `[N, G*H]`: activated gates (LSTM i,f,g,o; GRU r,z,n; RNN the new h).
    gates: Vec<T>,
    /// `[N, H_out]`: the state each row started its step from.
    h_prev: Vec<T>,
    /// `[N, H]` LSTM: c before and after the step.
    c_prev: Vec<T>,
    c: Vec<T>,
    /// `[N, H]` GRU: `W_hn h + b_hn`, the product the reset gate scales.
    hn: Vec<T>,
    /// `[N, H]` LSTM with projection: `o * tanh(c)`, before `W_hr`.
    h_pre: Vec<T>,
}

#[derive(Clone, Debug)]
struct LayerTape<T> {
    /// `[N, in_l]`: the layer's input.
    input: Vec<T>,
    dirs: Vec<DirTape<T>>,
}

/// What a training-mode forward keeps for backward.
#[derive(Clone, Debug)]
pub struct Tape<T> {
    layers: Vec<LayerTape<T>>,
    batch_sizes: Vec<usize>,
    sorted_indices: Vec<usize>,
    unsorted_indices: Vec<usize>,
}

/// Gradients from [`backward`], with the shapes of what they differentiate.
#[derive(Clone, Debug)]
pub struct Gradients<T> {
    /// `[N, I]`, packed like the input.
    pub input: PackedSequence<T>,
    /// `[L*D, B, H_out]`, caller's order.
    pub h0: Tensor<T>,
    /// `[L*D, B, H]` for LSTM.
    pub c0: Option<Tensor<T>>,
    /// One gradient per parameter, under the parameters' names.
    pub params: Weights<T>,
}

fn check_finite<T: Float>(what: &str, x: &[T]) -> Result<()> {
    if x.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(Error::NonFinite(what.into()))
    }
}

/// Reorders state `[L*D, B, F]` rows: `out[:, k] = src[:, perm[k]]`.
fn permute_state<T: Float>(src: &[T], ld: usize, b: usize, f: usize, perm: &[usize]) -> Vec<T> {
    let mut out = vec![T::zero(); src.len()];
    for s in 0..ld {
        for (k, &p) in perm.iter().enumerate() {
            let dst = (s * b + k) * f;
            let from = (s * b + p) * f;
            out[dst..dst + f].copy_from_slice(&src[from..from + f]);
        }
    }
    out
}

/// Adds a bias row to every row of `y: [rows, n]`.
pub(crate) fn add_bias<T: Float>(y: &mut [T], n: usize, bias: Option<&[T]>) {
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(n) {
            for (v, &bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }
}

/// The steps of one direction in processing order.
fn step_order(steps: usize, reverse: bool) -> Box<dyn Iterator<Item = usize>> {
    if reverse {
        Box::new((0..steps).rev())
    } else {
        Box::new(0..steps)
    }
}

/// Everything one layer-direction's forward reads and writes.
struct DirForward<'a, T> {
    cfg: &'a RnnConfig,
    p: &'a DirParams<T>,
    /// `[N, in]`
    x: &'a [T],
    in_size: usize,
    batch_sizes: &'a [usize],
    reverse: bool,
    /// `[B, H_out]` state, updated in place (h0 in, h_n out).
    h: &'a mut [T],
    /// `[B, H]` cell state (LSTM).
    c: &'a mut [T],
    /// `[N, D*H_out]` layer output; this direction writes columns `col..col+H_out`.
    out: &'a mut [T],
    col: usize,
    tape: Option<&'a mut DirTape<T>>,
}

fn dir_forward<T: Float>(a: DirForward<'_, T>) {
    let cfg = a.cfg;
    let (hs, ho, g) = (cfg.hidden_size, cfg.out_size(), cfg.gates());
    let gh = g * hs;
    let out_w = cfg.output_size();
    let off = step_offsets(a.batch_sizes);
    let n = off[off.len() - 1];
    let b = a.batch_sizes[0];

    // 1. Input projection for all rows.
    let mut xp = vec![T::zero(); n * gh];
    gemm(T::one(), Mat::new(a.x, n, a.in_size), Op::N, Mat::new(&a.p.w_ih, gh, a.in_size), Op::T, T::zero(), &mut xp, gh);
    add_bias(&mut xp, gh, a.p.b_ih.as_deref());

    let mut tape = a.tape;
    if let Some(tp) = tape.as_deref_mut() {
        tp.gates = vec![T::zero(); n * gh];
        tp.h_prev = vec![T::zero(); n * ho];
        if cfg.mode == Mode::Lstm {
            tp.c_prev = vec![T::zero(); n * hs];
            tp.c = vec![T::zero(); n * hs];
            if cfg.proj_size > 0 {
                tp.h_pre = vec![T::zero(); n * hs];
            }
        }
        if cfg.mode == Mode::Gru {
            tp.hn = vec![T::zero(); n * hs];
        }
    }
    // Workspaces and packed recurrent weights, once per layer-direction.
    let mut hp = vec![T::zero(); b * gh];
    let w_hh = PackedB::transposed(&a.p.w_hh, gh, ho);
    let w_hr = a.p.w_hr.as_deref().map(|w| PackedB::transposed(w, cfg.proj_size, hs));
    let mut gate_scratch = vec![T::zero(); gh];
    let mut aux_scratch = vec![T::zero(); hs];
    let mut h_pre = vec![T::zero(); if cfg.proj_size > 0 { b * hs } else { 0 }];

    for t in step_order(a.batch_sizes.len(), a.reverse) {
        let rows = a.batch_sizes[t];
        let o = off[t];
        // 2. Recurrent product for the active rows.
        w_hh.gemm(&a.h[..rows * ho], rows, ho, &mut hp[..rows * gh], gh);
        add_bias(&mut hp[..rows * gh], gh, a.p.b_hh.as_deref());
        if let Some(tp) = tape.as_deref_mut() {
            tp.h_prev[o * ho..(o + rows) * ho].copy_from_slice(&a.h[..rows * ho]);
            if cfg.mode == Mode::Lstm {
                tp.c_prev[o * hs..(o + rows) * hs].copy_from_slice(&a.c[..rows * hs]);
            }
        }
        // 3. Fused pointwise update, one row at a time over exact-length slices (vectorises).
        for r in 0..rows {
            let xr = &xp[(o + r) * gh..(o + r + 1) * gh];
            let hr = &hp[r * gh..(r + 1) * gh];
            // Training keeps the gates (and GRU's W_hn h + b_hn) in the tape; inference
            // writes them to scratch rows.
            let (gates_row, aux_row): (&mut [T], &mut [T]) = match tape.as_deref_mut() {
                Some(tp) => {
                    let aux: &mut [T] = if cfg.mode == Mode::Gru { &mut tp.hn[(o + r) * hs..(o + r + 1) * hs] } else { &mut [] };
                    (&mut tp.gates[(o + r) * gh..(o + r + 1) * gh], aux)
                }
                None => (&mut gate_scratch[..], &mut aux_scratch[..]),
            };
            match cfg.mode {
                Mode::RnnTanh | Mode::RnnRelu => {
                    let h = &mut a.h[r * ho..r * ho + hs];
                    rnn_row(cfg.mode == Mode::RnnTanh, xr, hr, h);
                    gates_row.copy_from_slice(h);
                }
                Mode::Lstm => {
                    let h = if cfg.proj_size > 0 { &mut h_pre[r * hs..(r + 1) * hs] } else { &mut a.h[r * ho..r * ho + hs] };
                    lstm_row(xr, hr, &mut a.c[r * hs..(r + 1) * hs], h, gates_row);
                }
                Mode::Gru => {
                    gru_row(xr, hr, &mut a.h[r * ho..r * ho + hs], gates_row, aux_row);
                }
            }
        }
        if let Some(wr) = &w_hr {
            // h = (o * tanh(c)) W_hr^T for the active rows.
            wr.gemm(&h_pre[..rows * hs], rows, hs, &mut a.h[..rows * ho], ho);
        }
        if let Some(tp) = tape.as_deref_mut() {
            if cfg.mode == Mode::Lstm {
                tp.c[o * hs..(o + rows) * hs].copy_from_slice(&a.c[..rows * hs]);
                if cfg.proj_size > 0 {
                    tp.h_pre[o * hs..(o + rows) * hs].copy_from_slice(&h_pre[..rows * hs]);
                }
            }
        }
        for r in 0..rows {
            let dst = (o + r) * out_w + a.col;
            a.out[dst..dst + ho].copy_from_slice(&a.h[r * ho..(r + 1) * ho]);
        }
    }
}

/// `h = act(x + hp)` for one row; slices of length H.
fn rnn_row<T: Float>(tanh: bool, x: &[T], hp: &[T], h: &mut [T]) {
    let n = h.len();
    let (x, hp) = (&x[..n], &hp[..n]);
    for j in 0..n {
        let pre = x[j] + hp[j];
        h[j] = if tanh { pre.tanh() } else { pre.relu() };
    }
}

/// The LSTM update for one row: `x`, `hp` are `[4H]` (gates i, f, g, o), `c` is updated in
/// place, `h` gets `o * tanh(c)`, and `gates` the activated gates (a scratch row in inference).
fn lstm_row<T: Float>(x: &[T], hp: &[T], c: &mut [T], h: &mut [T], gates: &mut [T]) {
    let n = c.len();
    let h = &mut h[..n];
    let (xi, xf, xg, xo) = (&x[..n], &x[n..2 * n], &x[2 * n..3 * n], &x[3 * n..4 * n]);
    let (hi, hf, hg, ho) = (&hp[..n], &hp[n..2 * n], &hp[2 * n..3 * n], &hp[3 * n..4 * n]);
    let (gi, rest) = gates[..4 * n].split_at_mut(n);
    let (gf, rest) = rest.split_at_mut(n);
    let (gg, go) = rest.split_at_mut(n);
    for j in 0..n {
        let i = (xi[j] + hi[j]).sigmoid();
        let f = (xf[j] + hf[j]).sigmoid();
        let g = (xg[j] + hg[j]).tanh();
        let o = (xo[j] + ho[j]).sigmoid();
        let cn = f * c[j] + i * g;
        c[j] = cn;
        h[j] = o * cn.tanh();
        gi[j] = i;
        gf[j] = f;
        gg[j] = g;
        go[j] = o;
    }
}

/// The GRU update for one row: `x`, `hp` are `[3H]` (gates r, z, n; `hp` includes b_hh), `h`
/// is updated in place; `gates` and `aux` (`W_hn h + b_hn`) get what backward needs (scratch
/// rows in inference).
fn gru_row<T: Float>(x: &[T], hp: &[T], h: &mut [T], gates: &mut [T], aux: &mut [T]) {
    let n = h.len();
    let (xr, xz, xn) = (&x[..n], &x[n..2 * n], &x[2 * n..3 * n]);
    let (hr, hz, hn) = (&hp[..n], &hp[n..2 * n], &hp[2 * n..3 * n]);
    let (gr, rest) = gates[..3 * n].split_at_mut(n);
    let (gz, gn) = rest.split_at_mut(n);
    let aux = &mut aux[..n];
    for j in 0..n {
        let r = (xr[j] + hr[j]).sigmoid();
        let z = (xz[j] + hz[j]).sigmoid();
        let nn = (xn[j] + r * hn[j]).tanh();
        h[j] = (T::one() - z) * nn + z * h[j];
        gr[j] = r;
        gz[j] = z;
        gn[j] = nn;
        aux[j] = hn[j];
    }
}

/// Checks a forward's inputs against the weights' config.
fn check_forward_inputs<T: Float>(w: &Weights<T>, input: &PackedSequence<T>, h0: Option<&[T]>, c0: Option<&[T]>) -> Result<()> {
    let cfg = &w.config;
    cfg.validate()?;
    input.validate()?;
    if input.features != cfg.input_size {
        return Err(Error::ShapeMismatch {
            what: "input features".into(),
            expected: vec![cfg.input_size],
            got: vec![input.features],
        });
    }
    let b = input.batch();
    if let Some(h0) = h0 {
        check_len("h0", &cfg.h_shape(b), h0.len())?;
        check_finite("h0", h0)?;
    }
    match (c0, cfg.mode) {
        (Some(c0), Mode::Lstm) => {
            check_len("c0", &cfg.c_shape(b), c0.len())?;
            check_finite("c0", c0)?;
        }
        (Some(_), m) => return Err(Error::InvalidConfig(format!("c0 given, but {m} has no cell state"))),
        _ => {}
    }
    check_finite("input", &input.data)?;
    let mut bad = None;
    w.for_each(|kind, layer, dir, v| {
        if bad.is_none() && !v.iter().all(|x| x.is_finite()) {
            bad = Some(RnnConfig::param_name(kind, layer, dir));
        }
    });
    if let Some(name) = bad {
        return Err(Error::NonFinite(name));
    }
    Ok(())
}

/// Runs the stack over a packed batch.
///
/// - `input`: packed rows `[N, I]`;
/// - `h0`: `[L*D, B, H_out]` in the caller's batch order, zeros when `None`;
/// - `c0`: `[L*D, B, H]` (LSTM only), zeros when `None`.
///
/// With [`Pass::Training`] the returned tape feeds [`backward`].
pub fn forward<T: Float>(
    w: &Weights<T>,
    input: &PackedSequence<T>,
    h0: Option<&[T]>,
    c0: Option<&[T]>,
    pass: Pass,
) -> Result<(ForwardOutput<T>, Option<Tape<T>>)> {
    check_forward_inputs(w, input, h0, c0)?;
    let cfg = &w.config;
    let (b, d, ho, hs) = (input.batch(), cfg.directions(), cfg.out_size(), cfg.hidden_size);
    let ld = cfg.num_layers * d;
    let n = input.rows();
    let mut h = match h0 {
        Some(h0) => permute_state(h0, ld, b, ho, &input.sorted_indices),
        None => vec![T::zero(); ld * b * ho],
    };
    let mut c = match c0 {
        Some(c0) => permute_state(c0, ld, b, hs, &input.sorted_indices),
        None => vec![T::zero(); if cfg.mode == Mode::Lstm { ld * b * hs } else { 0 }],
    };
    let mut layers = Vec::new();
    let mut x = input.data.clone();
    for layer in 0..cfg.num_layers {
        let in_size = cfg.layer_input_size(layer);
        let mut out = vec![T::zero(); n * cfg.output_size()];
        let mut dirs = Vec::new();
        for dir in 0..d {
            let s = layer * d + dir;
            let mut dt = DirTape::default();
            let c_slice: &mut [T] = if cfg.mode == Mode::Lstm { &mut c[s * b * hs..(s + 1) * b * hs] } else { &mut [] };
            dir_forward(DirForward {
                cfg,
                p: w.dir(layer, dir),
                x: &x,
                in_size,
                batch_sizes: &input.batch_sizes,
                reverse: dir == 1,
                h: &mut h[s * b * ho..(s + 1) * b * ho],
                c: c_slice,
                out: &mut out,
                col: dir * ho,
                tape: (pass == Pass::Training).then_some(&mut dt),
            });
            dirs.push(dt);
        }
        let layer_input = std::mem::replace(&mut x, out);
        if pass == Pass::Training {
            layers.push(LayerTape { input: layer_input, dirs });
        }
    }
    let h_n = Tensor { shape: cfg.h_shape(b), data: permute_state(&h, ld, b, ho, &input.unsorted_indices) };
    let c_n = (cfg.mode == Mode::Lstm)
        .then(|| Tensor { shape: cfg.c_shape(b), data: permute_state(&c, ld, b, hs, &input.unsorted_indices) });
    let output = input.with_data(x, cfg.output_size())?;
    let tape = (pass == Pass::Training).then(|| Tape {
        layers,
        batch_sizes: input.batch_sizes.clone(),
        sorted_indices: input.sorted_indices.clone(),
        unsorted_indices: input.unsorted_indices.clone(),
    });
    Ok((ForwardOutput { output, h_n, c_n }, tape))
}

/// Everything one layer-direction's backward reads and writes.
struct DirBackward<'a, T> {
    cfg: &'a RnnConfig,
    p: &'a DirParams<T>,
    tape: &'a DirTape<T>,
    /// `[N, in]` the layer's input.
    x: &'a [T],
    in_size: usize,
    batch_sizes: &'a [usize],
    reverse: bool,
    /// `[N, D*H_out]` gradient of the layer output; this direction reads columns `col..`.
    dy: &'a [T],
    col: usize,
    /// `[B, H_out]`: dh_n in, dh0 out (sorted order).
    dh: &'a mut [T],
    /// `[B, H]`: dc_n in, dc0 out (LSTM).
    dc: &'a mut [T],
    /// Parameter gradients, accumulated.
    grad: &'a mut DirParams<T>,
    /// `[N, in]` input gradient: overwritten when `first`, else accumulated.
    dx: &'a mut [T],
    first: bool,
}

fn dir_backward<T: Float>(a: DirBackward<'_, T>) {
    let cfg = a.cfg;
    let (hs, ho, g) = (cfg.hidden_size, cfg.out_size(), cfg.gates());
    let gh = g * hs;
    let out_w = cfg.output_size();
    let off = step_offsets(a.batch_sizes);
    let n = off[off.len() - 1];
    let b = a.batch_sizes[0];
    let tp = a.tape;
    let proj = cfg.proj_size > 0;
    let one = T::one();

    let mut dgx = vec![T::zero(); n * gh];
    // GRU's hidden-side gate gradient differs from the input side in its n block.
    let mut dgh = if cfg.mode == Mode::Gru { vec![T::zero(); n * gh] } else { Vec::new() };
    let mut dh_tot_all = if proj { vec![T::zero(); n * ho] } else { Vec::new() };
    let mut dh_tot = vec![T::zero(); b * ho];
    let mut dh_pre = vec![T::zero(); if proj { b * hs } else { 0 }];
    let mut direct = vec![T::zero(); if cfg.mode == Mode::Gru { b * ho } else { 0 }];
    let w_hh = PackedB::plain(&a.p.w_hh, gh, ho);
    let w_hr = a.p.w_hr.as_deref().map(|w| PackedB::plain(w, cfg.proj_size, hs));

    // Reverse of the processing order.
    for t in step_order(a.batch_sizes.len(), !a.reverse) {
        let rows = a.batch_sizes[t];
        let o = off[t];
        for r in 0..rows {
            for j in 0..ho {
                dh_tot[r * ho + j] = a.dh[r * ho + j] + a.dy[(o + r) * out_w + a.col + j];
            }
        }
        // Gradient with respect to the pre-projection h (o * tanh(c)).
        let dhp: &[T] = if proj {
            dh_tot_all[o * ho..(o + rows) * ho].copy_from_slice(&dh_tot[..rows * ho]);
            let wr = w_hr.as_ref().expect("validated: projection weights present");
            wr.gemm(&dh_tot[..rows * ho], rows, ho, &mut dh_pre[..rows * hs], hs);
            &dh_pre
        } else {
            &dh_tot
        };
        for r in 0..rows {
            let row = o + r;
            let gt = &tp.gates[row * gh..(row + 1) * gh];
            let dg = &mut dgx[row * gh..(row + 1) * gh];
            match cfg.mode {
                Mode::RnnTanh => {
                    for j in 0..hs {
                        dg[j] = dhp[r * hs + j] * (one - gt[j] * gt[j]);
                    }
                }
                Mode::RnnRelu => {
                    for j in 0..hs {
                        dg[j] = if gt[j] > T::zero() { dhp[r * hs + j] } else { T::zero() };
                    }
                }
                Mode::Lstm => {
                    for j in 0..hs {
                        let (i, f, gg, og) = (gt[j], gt[hs + j], gt[2 * hs + j], gt[3 * hs + j]);
                        let c = tp.c[row * hs + j];
                        let tc = c.tanh();
                        let dhv = dhp[r * hs + j];
                        let dct = a.dc[r * hs + j] + dhv * og * (one - tc * tc);
                        dg[j] = dct * gg * i * (one - i);
                        dg[hs + j] = dct * tp.c_prev[row * hs + j] * f * (one - f);
                        dg[2 * hs + j] = dct * i * (one - gg * gg);
                        dg[3 * hs + j] = dhv * tc * og * (one - og);
                        a.dc[r * hs + j] = dct * f;
                    }
                }
                Mode::Gru => {
                    let dgh_row = &mut dgh[row * gh..(row + 1) * gh];
                    for j in 0..hs {
                        let (rg, z, nn) = (gt[j], gt[hs + j], gt[2 * hs + j]);
                        let hprev = tp.h_prev[row * ho + j];
                        let dhv = dhp[r * hs + j];
                        let dan = dhv * (one - z) * (one - nn * nn);
                        let dar = dan * tp.hn[row * hs + j] * rg * (one - rg);
                        let daz = dhv * (hprev - nn) * z * (one - z);
                        dg[j] = dar;
                        dg[hs + j] = daz;
                        dg[2 * hs + j] = dan;
                        dgh_row[j] = dar;
                        dgh_row[hs + j] = daz;
                        dgh_row[2 * hs + j] = dan * rg;
                        direct[r * ho + j] = dhv * z;
                    }
                }
            }
        }
        // dh_prev = dG_h W_hh (+ GRU's direct path through z * h).
        let dgh_rows = if cfg.mode == Mode::Gru { &dgh[o * gh..(o + rows) * gh] } else { &dgx[o * gh..(o + rows) * gh] };
        w_hh.gemm(dgh_rows, rows, gh, &mut a.dh[..rows * ho], ho);
        if cfg.mode == Mode::Gru {
            for (v, &d) in a.dh[..rows * ho].iter_mut().zip(&direct[..rows * ho]) {
                *v += d;
            }
        }
    }

    // Post-loop GEMMs over all rows at once.
    let dgh_all: &[T] = if cfg.mode == Mode::Gru { &dgh } else { &dgx };
    gemm(one, Mat::new(&dgx, n, gh), Op::T, Mat::new(a.x, n, a.in_size), Op::N, one, &mut a.grad.w_ih, a.in_size);
    gemm(one, Mat::new(dgh_all, n, gh), Op::T, Mat::new(&tp.h_prev, n, ho), Op::N, one, &mut a.grad.w_hh, ho);
    if let (Some(db), true) = (a.grad.b_ih.as_mut(), cfg.bias) {
        col_sum_into(&dgx, gh, db);
    }
    if let (Some(db), true) = (a.grad.b_hh.as_mut(), cfg.bias) {
        col_sum_into(dgh_all, gh, db);
    }
    if proj {
        let dwr = a.grad.w_hr.as_mut().expect("validated");
        gemm(one, Mat::new(&dh_tot_all, n, ho), Op::T, Mat::new(&tp.h_pre, n, hs), Op::N, one, dwr, hs);
    }
    let beta = if a.first { T::zero() } else { one };
    gemm(one, Mat::new(&dgx, n, gh), Op::N, Mat::new(&a.p.w_ih, gh, a.in_size), Op::N, beta, a.dx, a.in_size);
}

/// `acc[j] += sum_r m[r, j]` for `m: [rows, n]`.
pub(crate) fn col_sum_into<T: Float>(m: &[T], n: usize, acc: &mut [T]) {
    for row in m.chunks_exact(n) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
}

/// Backward through time: what autograd gives for
/// `loss = sum(output * grad_output) + sum(h_n * grad_h_n) + sum(c_n * grad_c_n)`.
///
/// - `grad_output`: packed rows `[N, D*H_out]` (the same packing as the forward's output);
/// - `grad_h_n`: `[L*D, B, H_out]`, caller's order, zeros when `None`;
/// - `grad_c_n`: `[L*D, B, H]` (LSTM), zeros when `None`.
pub fn backward<T: Float>(
    w: &Weights<T>,
    tape: &Tape<T>,
    grad_output: &[T],
    grad_h_n: Option<&[T]>,
    grad_c_n: Option<&[T]>,
) -> Result<Gradients<T>> {
    let cfg = &w.config;
    cfg.validate()?;
    if tape.layers.len() != cfg.num_layers {
        return Err(Error::InvalidConfig("tape was recorded with another configuration".into()));
    }
    let b = tape.batch_sizes[0];
    let (d, ho, hs) = (cfg.directions(), cfg.out_size(), cfg.hidden_size);
    let ld = cfg.num_layers * d;
    let n: usize = tape.batch_sizes.iter().sum();
    check_len("grad_output", &[n, cfg.output_size()], grad_output.len())?;
    check_finite("grad_output", grad_output)?;
    let mut dh = match grad_h_n {
        Some(g) => {
            check_len("grad_h_n", &cfg.h_shape(b), g.len())?;
            check_finite("grad_h_n", g)?;
            permute_state(g, ld, b, ho, &tape.sorted_indices)
        }
        None => vec![T::zero(); ld * b * ho],
    };
    let mut dc = match (grad_c_n, cfg.mode) {
        (Some(g), Mode::Lstm) => {
            check_len("grad_c_n", &cfg.c_shape(b), g.len())?;
            check_finite("grad_c_n", g)?;
            permute_state(g, ld, b, hs, &tape.sorted_indices)
        }
        (Some(_), m) => return Err(Error::InvalidConfig(format!("grad_c_n given, but {m} has no cell state"))),
        (None, Mode::Lstm) => vec![T::zero(); ld * b * hs],
        (None, _) => Vec::new(),
    };
    let mut grads = Weights::zeros(cfg)?;
    let mut dy = grad_output.to_vec();
    for layer in (0..cfg.num_layers).rev() {
        let in_size = cfg.layer_input_size(layer);
        let lt = &tape.layers[layer];
        let mut dx = vec![T::zero(); n * in_size];
        for dir in 0..d {
            let s = layer * d + dir;
            let dc_slice: &mut [T] = if cfg.mode == Mode::Lstm { &mut dc[s * b * hs..(s + 1) * b * hs] } else { &mut [] };
            dir_backward(DirBackward {
                cfg,
                p: w.dir(layer, dir),
                tape: &lt.dirs[dir],
                x: &lt.input,
                in_size,
                batch_sizes: &tape.batch_sizes,
                reverse: dir == 1,
                dy: &dy,
                col: dir * ho,
                dh: &mut dh[s * b * ho..(s + 1) * b * ho],
                dc: dc_slice,
                grad: &mut grads.params[s],
                dx: &mut dx,
                first: dir == 0,
            });
        }
        dy = dx;
    }
    let packed = PackedSequence {
        data: dy,
        features: cfg.input_size,
        batch_sizes: tape.batch_sizes.clone(),
        sorted_indices: tape.sorted_indices.clone(),
        unsorted_indices: tape.unsorted_indices.clone(),
    };
    Ok(Gradients {
        input: packed,
        h0: Tensor { shape: cfg.h_shape(b), data: permute_state(&dh, ld, b, ho, &tape.unsorted_indices) },
        c0: (cfg.mode == Mode::Lstm)
            .then(|| Tensor { shape: cfg.c_shape(b), data: permute_state(&dc, ld, b, hs, &tape.unsorted_indices) }),
        params: grads,
    })
}
