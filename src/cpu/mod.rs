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
//! The time loops are split by batch rows across threads (see [`split`]); with enough rows
//! the input side (`X W_ih^T`, and `dX` in backward) is computed step by step inside them.
//!
//! All state is kept in sorted order (see [`crate::packing`]): at step t the active rows are
//! exactly rows `0..batch_sizes[t]` of the state, for both directions. A finished sequence's
//! row simply stops being updated, so its state is `h_n`; in the reverse direction a row that
//! starts late still holds its `h0`. Generic over f32 and f64.


pub mod gemm;
pub mod generic;
pub mod pool;
pub mod smallgemm;
pub mod split;
pub mod train;

pub use crate::float::{cast, fast, Float};
use gemm::{gemm, Mat, Op};
use smallgemm::PackedB;
use split::Rows;
use std::ops::Range;

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
struct DirTape<T: Float> {
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
struct LayerTape<T: Float> {
    /// `[N, in_l]`: the layer's input.
    input: Vec<T>,
    dirs: Vec<DirTape<T>>,
}

// The tape's buffers go back to the pool when it is dropped (see `pool`).
impl<T: Float> Drop for DirTape<T> {
    fn drop(&mut self) {
        for v in [&mut self.gates, &mut self.h_prev, &mut self.c_prev, &mut self.c, &mut self.hn, &mut self.h_pre] {
            pool::recycle(std::mem::take(v));
        }
    }
}

impl<T: Float> Drop for LayerTape<T> {
    fn drop(&mut self) {
        pool::recycle(std::mem::take(&mut self.input));
    }
}

/// What a training-mode forward keeps for backward. It remembers the configuration it was
/// recorded with: [`backward`] refuses weights of another one ([`Error::TapeMismatch`]).
#[derive(Clone, Debug)]
pub struct Tape<T: Float> {
    config: RnnConfig,
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

/// Zeros from the pool through a fallible allocation of `dims`' product (overflow-checked):
/// [`Error::OutOfMemory`] instead of an abort.
fn zeros<T: Float>(what: &str, dims: &[usize]) -> Result<Vec<T>> {
    pool::try_zeroed(what, crate::tensor::checked_len::<T>(what, dims)?)
}

/// Zeros for a time loop's own scratch (not pooled), fallibly.
fn scratch<T: Float>(what: &str, dims: &[usize]) -> Result<Vec<T>> {
    crate::tensor::try_filled(what, crate::tensor::checked_len::<T>(what, dims)?, T::zero())
}

/// Where a time loop's threads report an allocation that failed (the first one wins).
pub(crate) type Failure = std::sync::OnceLock<Error>;

pub(crate) use crate::float::check_finite;

/// Reorders state `[L*D, B, F]` rows: `out[:, k] = src[:, perm[k]]`.
fn permute_state<T: Float>(src: &[T], ld: usize, b: usize, f: usize, perm: &[usize]) -> Result<Vec<T>> {
    let mut out = scratch("state", &[src.len()])?;
    for s in 0..ld {
        for (k, &p) in perm.iter().enumerate() {
            let dst = (s * b + k) * f;
            let from = (s * b + p) * f;
            out[dst..dst + f].copy_from_slice(&src[from..from + f]);
        }
    }
    Ok(out)
}

/// Adds a bias row to every row of `y: [rows, n]`.
#[inline(always)]
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

/// Fewest packed rows for which the input side (the forward's `X W_ih^T`, the backward's
/// `dG W_ih`) is computed step by step with a packed W_ih: packing costs about as much as the
/// product for 16 rows (DeepBench's GRU with T = 1, B = 32 ran slower that way).
const PER_STEP_INPUT_MIN_ROWS: usize = 256;

/// Whether a layer-direction with batch `b` and `n` packed rows computes its input side step
/// by step (else by one GEMM over all rows).
fn per_step_input(b: usize, n: usize) -> bool {
    b >= split::MIN_ROWS_PER_THREAD && n >= PER_STEP_INPUT_MIN_ROWS
}

/// Everything one layer-direction's forward reads and writes.
struct DirForward<'a, T: Float> {
    cfg: &'a RnnConfig,
    p: &'a DirParams<T>,
    /// `[N, in]`
    x: &'a [T],
    in_size: usize,
    batch_sizes: &'a [usize],
    reverse: bool,
    /// `[B, H_out]` state, updated in place (h0 in, h_n out).
    h: &'a mut [T],
    /// Whether h0 is zero (not given): a row's first step then skips its recurrent product.
    h0_zero: bool,
    /// `[B, H]` cell state (LSTM).
    c: &'a mut [T],
    /// `[N, D*H_out]` layer output; this direction writes columns `col..col+H_out`.
    out: &'a mut [T],
    col: usize,
    tape: Option<&'a mut DirTape<T>>,
}

fn dir_forward<T: Float>(a: DirForward<'_, T>) -> Result<()> {
    let cfg = a.cfg;
    let (hs, ho, g) = (cfg.hidden_size, cfg.out_size(), cfg.gates());
    let gh = g * hs;
    let off = step_offsets(a.batch_sizes);
    let n = off[off.len() - 1];
    let b = a.batch_sizes[0];
    let lstm = cfg.mode == Mode::Lstm;
    let proj = cfg.proj_size > 0;

    // 1. Input projection. With a full micro-kernel block of rows per step, each thread
    // computes its rows' projection step by step with the packed kernel, so it is still in
    // cache when the pointwise update reads it; with fewer rows (B < 8), or too few rows in
    // all to pay for packing W_ih, one GEMM over all N rows up front is faster.
    let per_step = per_step_input(b, n);
    let w_ih = if per_step { Some(PackedB::try_transposed(&a.p.w_ih, gh, a.in_size)?) } else { None };
    let mut xp = Vec::new();
    if !per_step {
        xp = zeros("input projection", &[n, gh])?;
        gemm(T::one(), Mat::new(a.x, n, a.in_size), Op::N, Mat::new(&a.p.w_ih, gh, a.in_size), Op::T, T::zero(), &mut xp, gh);
        add_bias(&mut xp, gh, a.p.b_ih.as_deref());
    }

    let training = a.tape.is_some();
    let mut scratch = DirTape::default();
    let tp = a.tape.unwrap_or(&mut scratch);
    if training {
        tp.gates = zeros("tape gates", &[n, gh])?;
        tp.h_prev = zeros("tape h", &[n, ho])?;
        if lstm {
            tp.c_prev = zeros("tape c", &[n, hs])?;
            tp.c = zeros("tape c", &[n, hs])?;
            if proj {
                tp.h_pre = zeros("tape h before projection", &[n, hs])?;
            }
        }
        if cfg.mode == Mode::Gru {
            tp.hn = zeros("tape W_hn h", &[n, hs])?;
        }
    }
    // Packed recurrent weights, once per layer-direction (not needed for a single step from a
    // zero state, e.g. DeepBench's T = 1 GRU, where packing cost more than the step).
    let w_hh = if a.batch_sizes.len() > 1 || !a.h0_zero { Some(PackedB::try_transposed(&a.p.w_hh, gh, ho)?) } else { None };
    let w_hr = a.p.w_hr.as_deref().map(|w| PackedB::try_transposed(w, cfg.proj_size, hs)).transpose()?;

    // 2-3. The time loop, split by batch rows across threads (see `split`): every buffer below
    // is written only at the thread's own rows.
    let macs = n * gh * ho + if proj { n * hs * cfg.proj_size } else { 0 };
    let ranges = split::ranges(b, macs);
    let failed = Failure::new();
    let l = FwdLoop {
        failed: &failed,
        cfg,
        p: a.p,
        batch_sizes: a.batch_sizes,
        off: &off,
        reverse: a.reverse,
        col: a.col,
        training,
        x: a.x,
        in_size: a.in_size,
        w_ih: w_ih.as_ref(),
        xp: &xp,
        w_hh: w_hh.as_ref(),
        w_hr: w_hr.as_ref(),
        h0_zero: a.h0_zero,
        h: Rows::new(a.h),
        c: Rows::new(a.c),
        out: Rows::new(a.out),
        gates: Rows::new(&mut tp.gates),
        h_prev: Rows::new(&mut tp.h_prev),
        c_prev: Rows::new(&mut tp.c_prev),
        c_tape: Rows::new(&mut tp.c),
        h_pre_tape: Rows::new(&mut tp.h_pre),
        hn_tape: Rows::new(&mut tp.hn),
    };
    split::run_loop(&ranges, &l);
    pool::recycle(xp);
    for w in [w_hh, w_ih, w_hr].into_iter().flatten() {
        w.recycle();
    }
    match failed.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One layer-direction's forward time loop over a slice of the batch (see `split`).
struct FwdLoop<'a, T> {
    /// Set by a thread whose scratch could not be allocated (it then stops).
    failed: &'a Failure,
    cfg: &'a RnnConfig,
    p: &'a DirParams<T>,
    batch_sizes: &'a [usize],
    off: &'a [usize],
    reverse: bool,
    col: usize,
    training: bool,
    /// `[N, in]` layer input and, when the projection is made step by step, W_ih^T packed.
    x: &'a [T],
    in_size: usize,
    w_ih: Option<&'a PackedB<T>>,
    /// `[N, G*H]` input projection (with b_ih) made up front, when `w_ih` is `None`.
    xp: &'a [T],
    /// `None` when no step needs it (one step from a zero state).
    w_hh: Option<&'a PackedB<T>>,
    w_hr: Option<&'a PackedB<T>>,
    h0_zero: bool,
    /// State `[B, H_out]` / `[B, H]`, output `[N, D*H_out]`, and the tape's rows.
    h: Rows<'a, T>,
    c: Rows<'a, T>,
    out: Rows<'a, T>,
    gates: Rows<'a, T>,
    h_prev: Rows<'a, T>,
    c_prev: Rows<'a, T>,
    c_tape: Rows<'a, T>,
    h_pre_tape: Rows<'a, T>,
    hn_tape: Rows<'a, T>,
}

impl<T: Float> split::RowLoop for FwdLoop<'_, T> {
    #[inline(always)]
    fn rows(&self, mine: Range<usize>) {
        let FwdLoop { cfg, p, batch_sizes, off, reverse, col, training, x, in_size, w_ih, xp, w_hh, w_hr, h0_zero, .. } = *self;
        let FwdLoop { h, c, out, gates, h_prev, c_prev, c_tape, h_pre_tape, hn_tape, .. } = self;
        let (hs, ho, gh) = (cfg.hidden_size, cfg.out_size(), cfg.gates() * cfg.hidden_size);
        let out_w = cfg.output_size();
        let (lstm, proj) = (cfg.mode == Mode::Lstm, cfg.proj_size > 0);
        let (r0, nr) = (mine.start, mine.len());
        // SAFETY (every `part` below): the range is this thread's state rows `r0..r0 + nr`, or
        // packed rows `o + r0..o + r0 + rows` of one step, which no other thread touches.
        let h = unsafe { h.part(r0 * ho, nr * ho) };
        let c = if lstm { unsafe { c.part(r0 * hs, nr * hs) } } else { &mut [][..] };
        let alloc = || -> Result<_> {
            Ok((
                scratch("recurrent product", &[nr, gh])?,
                scratch("input projection", &[if w_ih.is_some() { nr } else { 0 }, gh])?,
                scratch("gates", &[gh])?,
                scratch("gates", &[hs])?,
                scratch("h before projection", &[if proj { nr } else { 0 }, hs])?,
            ))
        };
        let (mut hp, mut xs, mut gate_scratch, mut aux_scratch, mut h_pre) = match alloc() {
            Ok(v) => v,
            Err(e) => {
                let _ = self.failed.set(e);
                return;
            }
        };
        let mut fresh = h0_zero;
        for t in step_order(batch_sizes.len(), reverse) {
            let rows = batch_sizes[t].saturating_sub(r0).min(nr);
            if rows == 0 {
                continue;
            }
            let o = off[t] + r0;
            // 1. This step's input projection (when made per step) ...
            let xrows: &[T] = match w_ih {
                Some(w) => {
                    w.gemm(&x[o * in_size..(o + rows) * in_size], rows, in_size, &mut xs[..rows * gh], gh);
                    add_bias(&mut xs[..rows * gh], gh, p.b_ih.as_deref());
                    &xs[..rows * gh]
                }
                None => &xp[o * gh..(o + rows) * gh],
            };
            // 2. ... and recurrent product for the active rows: zero at this thread's first
            // step from a zero h0 (every row active then starts there, in either direction).
            match w_hh.filter(|_| !fresh) {
                Some(w) => w.gemm(&h[..rows * ho], rows, ho, &mut hp[..rows * gh], gh),
                None => hp[..rows * gh].fill(T::zero()),
            }
            fresh = false;
            add_bias(&mut hp[..rows * gh], gh, p.b_hh.as_deref());
            if training {
                unsafe { h_prev.part(o * ho, rows * ho) }.copy_from_slice(&h[..rows * ho]);
                if lstm {
                    unsafe { c_prev.part(o * hs, rows * hs) }.copy_from_slice(&c[..rows * hs]);
                }
            }
            // 3. Fused pointwise update, one row at a time over exact-length slices (vectorises).
            for r in 0..rows {
                let xr = &xrows[r * gh..(r + 1) * gh];
                let hr = &hp[r * gh..(r + 1) * gh];
                // Training keeps the gates (and GRU's W_hn h + b_hn) in the tape; inference
                // writes them to scratch rows.
                let (gates_row, aux_row): (&mut [T], &mut [T]) = if training {
                    let aux = if cfg.mode == Mode::Gru { unsafe { hn_tape.part((o + r) * hs, hs) } } else { &mut [][..] };
                    (unsafe { gates.part((o + r) * gh, gh) }, aux)
                } else {
                    (&mut gate_scratch[..], &mut aux_scratch[..])
                };
                match cfg.mode {
                    Mode::RnnTanh | Mode::RnnRelu => {
                        let hr_out = &mut h[r * ho..r * ho + hs];
                        rnn_row(cfg.mode == Mode::RnnTanh, xr, hr, hr_out);
                        gates_row.copy_from_slice(hr_out);
                    }
                    Mode::Lstm => {
                        let hr_out = if proj { &mut h_pre[r * hs..(r + 1) * hs] } else { &mut h[r * ho..r * ho + hs] };
                        lstm_row(xr, hr, &mut c[r * hs..(r + 1) * hs], hr_out, gates_row);
                    }
                    Mode::Gru => {
                        gru_row(xr, hr, &mut h[r * ho..r * ho + hs], gates_row, aux_row);
                    }
                    _ => unreachable!("check_forward_inputs refuses the other cells"),
                }
            }
            if let Some(wr) = w_hr {
                // h = (o * tanh(c)) W_hr^T for the active rows.
                wr.gemm(&h_pre[..rows * hs], rows, hs, &mut h[..rows * ho], ho);
            }
            if training && lstm {
                unsafe { c_tape.part(o * hs, rows * hs) }.copy_from_slice(&c[..rows * hs]);
                if proj {
                    unsafe { h_pre_tape.part(o * hs, rows * hs) }.copy_from_slice(&h_pre[..rows * hs]);
                }
            }
            for r in 0..rows {
                unsafe { out.part((o + r) * out_w + col, ho) }.copy_from_slice(&h[r * ho..(r + 1) * ho]);
            }
        }
    }
}

/// `h = act(x + hp)` for one row; slices of length H.
#[inline(always)]
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
#[inline(always)]
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
#[inline(always)]
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

/// This module's drivers are the tuned ones for PyTorch's four cells; [`generic`] runs every
/// registered cell.
fn fused_cell(cfg: &RnnConfig) -> Result<()> {
    if !cfg.mode.fused() {
        Err(Error::Unsupported(format!("{} in cpu::forward; cpu::generic runs every cell", cfg.mode)))
    } else if cfg.regularised() {
        Err(Error::Unsupported("dropout and zoneout in cpu::forward; cpu::generic runs them".into()))
    } else if cfg.precision != crate::precision::Precision::F32 {
        Err(Error::Unsupported(format!("{} storage in cpu::forward; cpu::generic runs it", cfg.precision)))
    } else {
        Ok(())
    }
}

/// Checks a forward's inputs against the weights' config.
fn check_forward_inputs<T: Float>(w: &Weights<T>, input: &PackedSequence<T>, h0: Option<&[T]>, c0: Option<&[T]>) -> Result<()> {
    let cfg = &w.config;
    w.validate()?;
    fused_cell(cfg)?;
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
    w.check_finite()
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
        Some(h0) => permute_state(h0, ld, b, ho, &input.sorted_indices)?,
        None => scratch("h", &[ld, b, ho])?,
    };
    let mut c = match c0 {
        Some(c0) => permute_state(c0, ld, b, hs, &input.sorted_indices)?,
        None => scratch("c", &[if cfg.mode == Mode::Lstm { ld } else { 0 }, b, hs])?,
    };
    let mut layers = Vec::new();
    let mut x = zeros("layer input", &[input.data.len()])?;
    x.copy_from_slice(&input.data);
    for layer in 0..cfg.num_layers {
        let in_size = cfg.layer_input_size(layer);
        let mut out = zeros("layer output", &[n, cfg.output_size()])?;
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
                h0_zero: h0.is_none(),
                c: c_slice,
                out: &mut out,
                col: dir * ho,
                tape: (pass == Pass::Training).then_some(&mut dt),
            })?;
            dirs.push(dt);
        }
        let layer_input = std::mem::replace(&mut x, out);
        if pass == Pass::Training {
            layers.push(LayerTape { input: layer_input, dirs });
        } else {
            pool::recycle(layer_input);
        }
    }
    let h_n = Tensor { shape: cfg.h_shape(b), data: permute_state(&h, ld, b, ho, &input.unsorted_indices)? };
    let c_n = if cfg.mode == Mode::Lstm {
        Some(Tensor { shape: cfg.c_shape(b), data: permute_state(&c, ld, b, hs, &input.unsorted_indices)? })
    } else {
        None
    };
    let output = input.with_data(x, cfg.output_size())?;
    let tape = (pass == Pass::Training).then(|| Tape {
        config: cfg.clone(),
        layers,
        batch_sizes: input.batch_sizes.clone(),
        sorted_indices: input.sorted_indices.clone(),
        unsorted_indices: input.unsorted_indices.clone(),
    });
    Ok((ForwardOutput { output, h_n, c_n }, tape))
}

/// Everything one layer-direction's backward reads and writes.
struct DirBackward<'a, T: Float> {
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
    /// Parameter gradients: the weights' are overwritten, the biases' added to (zeros).
    grad: &'a mut DirParams<T>,
    /// `[N, in]` input gradient: overwritten when `first`, else accumulated.
    dx: &'a mut [T],
    first: bool,
}

fn dir_backward<T: Float>(a: DirBackward<'_, T>) -> Result<()> {
    let cfg = a.cfg;
    let (hs, ho, g) = (cfg.hidden_size, cfg.out_size(), cfg.gates());
    let gh = g * hs;
    let off = step_offsets(a.batch_sizes);
    let n = off[off.len() - 1];
    let b = a.batch_sizes[0];
    let tp = a.tape;
    let proj = cfg.proj_size > 0;
    let gru = cfg.mode == Mode::Gru;
    let one = T::one();

    let mut dgx = zeros("gate gradients", &[n, gh])?;
    // GRU's hidden-side gate gradient differs from the input side in its n block.
    let mut dgh = if gru { zeros("gate gradients", &[n, gh])? } else { Vec::new() };
    let mut dh_tot_all = if proj { zeros("h gradients", &[n, ho])? } else { Vec::new() };
    let w_hh = PackedB::try_plain(&a.p.w_hh, gh, ho)?;
    let w_hr = a.p.w_hr.as_deref().map(|w| PackedB::try_plain(w, cfg.proj_size, hs)).transpose()?;

    // The reverse time loop, split by batch rows across threads like the forward's.
    let macs = n * gh * ho + if proj { n * hs * cfg.proj_size } else { 0 };
    let ranges = split::ranges(b, macs);
    let per_step_dx = per_step_input(b, n);
    let w_ih = if per_step_dx { Some(PackedB::try_plain(&a.p.w_ih, gh, a.in_size)?) } else { None };
    // dX is written by the loop or by the GEMM after it.
    let (dx_loop, dx_after): (&mut [T], &mut [T]) = if per_step_dx { (a.dx, &mut []) } else { (&mut [], a.dx) };
    let failed = Failure::new();
    let l = BwdLoop {
        failed: &failed,
        cfg,
        tape: tp,
        batch_sizes: a.batch_sizes,
        off: &off,
        reverse: a.reverse,
        dy: a.dy,
        col: a.col,
        w_hh: &w_hh,
        w_hr: w_hr.as_ref(),
        w_ih: w_ih.as_ref(),
        in_size: a.in_size,
        first: a.first,
        dh: Rows::new(a.dh),
        dc: Rows::new(a.dc),
        dgx: Rows::new(&mut dgx),
        dgh: Rows::new(&mut dgh),
        dh_tot_all: Rows::new(&mut dh_tot_all),
        dx: Rows::new(dx_loop),
    };
    split::run_loop(&ranges, &l);
    if let Some(e) = failed.into_inner() {
        pool::recycle(dgx);
        pool::recycle(dgh);
        pool::recycle(dh_tot_all);
        for w in [Some(w_hh), w_ih, w_hr].into_iter().flatten() {
            w.recycle();
        }
        return Err(e);
    }

    // Post-loop GEMMs over all rows at once (the loop is done: its views are free again).
    // The weight gradients are overwritten (beta 0): reading the freshly allocated zeros first
    // made every page a copy-on-write fault with a TLB shootdown, which dominated T = 1.
    let zero = T::zero();
    let dgh_all: &[T] = if gru { &dgh } else { &dgx };
    gemm(one, Mat::new(&dgx, n, gh), Op::T, Mat::new(a.x, n, a.in_size), Op::N, zero, &mut a.grad.w_ih, a.in_size);
    gemm(one, Mat::new(dgh_all, n, gh), Op::T, Mat::new(&tp.h_prev, n, ho), Op::N, zero, &mut a.grad.w_hh, ho);
    if let (Some(db), true) = (a.grad.b_ih.as_mut(), cfg.bias) {
        col_sum_into(&dgx, gh, db);
    }
    if let (Some(db), true) = (a.grad.b_hh.as_mut(), cfg.bias) {
        col_sum_into(dgh_all, gh, db);
    }
    if proj {
        let dwr = a.grad.w_hr.as_mut().expect("validated");
        gemm(one, Mat::new(&dh_tot_all, n, ho), Op::T, Mat::new(&tp.h_pre, n, hs), Op::N, zero, dwr, hs);
    }
    if !per_step_dx {
        let beta = if a.first { T::zero() } else { one };
        gemm(one, Mat::new(&dgx, n, gh), Op::N, Mat::new(&a.p.w_ih, gh, a.in_size), Op::N, beta, dx_after, a.in_size);
    }
    pool::recycle(dgx);
    pool::recycle(dgh);
    pool::recycle(dh_tot_all);
    for w in [Some(w_hh), w_ih, w_hr].into_iter().flatten() {
        w.recycle();
    }
    Ok(())
}

/// One layer-direction's backward time loop over a slice of the batch (see `split`).
struct BwdLoop<'a, T: Float> {
    /// Set by a thread whose scratch could not be allocated (it then stops).
    failed: &'a Failure,
    cfg: &'a RnnConfig,
    tape: &'a DirTape<T>,
    batch_sizes: &'a [usize],
    off: &'a [usize],
    reverse: bool,
    /// `[N, D*H_out]` output gradient; this direction reads columns `col..col + H_out`.
    dy: &'a [T],
    col: usize,
    w_hh: &'a PackedB<T>,
    w_hr: Option<&'a PackedB<T>>,
    /// W_ih packed when dX is made step by step (else by one GEMM after the loop).
    w_ih: Option<&'a PackedB<T>>,
    in_size: usize,
    /// Whether dX is overwritten (first direction) or accumulated.
    first: bool,
    /// `[B, H_out]` dh and `[B, H]` dc (in: from later steps, out: dh0 / dc0).
    dh: Rows<'a, T>,
    dc: Rows<'a, T>,
    /// `[N, G*H]` gate gradients (input side, and GRU's hidden side), `[N, H_out]` total dh
    /// (projection), `[N, in]` dX.
    dgx: Rows<'a, T>,
    dgh: Rows<'a, T>,
    dh_tot_all: Rows<'a, T>,
    dx: Rows<'a, T>,
}

impl<T: Float> split::RowLoop for BwdLoop<'_, T> {
    #[inline(always)]
    fn rows(&self, mine: Range<usize>) {
        let BwdLoop { cfg, tape: tp, batch_sizes, off, reverse, dy, col, w_hh, w_hr, w_ih, in_size, first, .. } = *self;
        let BwdLoop { dh, dc, dgx: dgx_rows, dgh: dgh_rows, dh_tot_all: dh_tot_rows, dx, .. } = self;
        let (hs, ho, gh) = (cfg.hidden_size, cfg.out_size(), cfg.gates() * cfg.hidden_size);
        let out_w = cfg.output_size();
        let (lstm, gru, proj) = (cfg.mode == Mode::Lstm, cfg.mode == Mode::Gru, cfg.proj_size > 0);
        let one = T::one();
        let (r0, nr) = (mine.start, mine.len());
        // SAFETY (every `part` below): this thread's state rows `r0..r0 + nr`, or packed rows
        // `o + r0..o + r0 + rows` of one step, which no other thread touches.
        let dh = unsafe { dh.part(r0 * ho, nr * ho) };
        let dc = if lstm { unsafe { dc.part(r0 * hs, nr * hs) } } else { &mut [][..] };
        let alloc = || -> Result<_> {
            Ok((
                scratch("h gradients", &[nr, ho])?,
                scratch("h gradients before projection", &[if proj { nr } else { 0 }, hs])?,
                scratch("h gradients through z", &[if gru { nr } else { 0 }, ho])?,
                scratch("input gradients", &[if w_ih.is_some() && !first { nr } else { 0 }, in_size])?,
            ))
        };
        let (mut dh_tot, mut dh_pre, mut direct, mut dx_step) = match alloc() {
            Ok(v) => v,
            Err(e) => {
                let _ = self.failed.set(e);
                return;
            }
        };
        // Reverse of the processing order.
        for t in step_order(batch_sizes.len(), !reverse) {
            let rows = batch_sizes[t].saturating_sub(r0).min(nr);
            if rows == 0 {
                continue;
            }
            let o = off[t] + r0;
            for r in 0..rows {
                for j in 0..ho {
                    dh_tot[r * ho + j] = dh[r * ho + j] + dy[(o + r) * out_w + col + j];
                }
            }
            // Gradient with respect to the pre-projection h (o * tanh(c)).
            let dhp: &[T] = if let Some(wr) = w_hr {
                unsafe { dh_tot_rows.part(o * ho, rows * ho) }.copy_from_slice(&dh_tot[..rows * ho]);
                wr.gemm(&dh_tot[..rows * ho], rows, ho, &mut dh_pre[..rows * hs], hs);
                &dh_pre
            } else {
                &dh_tot
            };
            let dg_step = unsafe { dgx_rows.part(o * gh, rows * gh) };
            let dgh_step = if gru { unsafe { dgh_rows.part(o * gh, rows * gh) } } else { &mut [][..] };
            for r in 0..rows {
                let row = o + r;
                let gt = &tp.gates[row * gh..(row + 1) * gh];
                let dg = &mut dg_step[r * gh..(r + 1) * gh];
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
                            let dct = dc[r * hs + j] + dhv * og * (one - tc * tc);
                            dg[j] = dct * gg * i * (one - i);
                            dg[hs + j] = dct * tp.c_prev[row * hs + j] * f * (one - f);
                            dg[2 * hs + j] = dct * i * (one - gg * gg);
                            dg[3 * hs + j] = dhv * tc * og * (one - og);
                            dc[r * hs + j] = dct * f;
                        }
                    }
                    Mode::Gru => {
                        let dgh_row = &mut dgh_step[r * gh..(r + 1) * gh];
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
                    _ => unreachable!("backward refuses the other cells"),
                }
            }
            // dh_prev = dG_h W_hh (+ GRU's direct path through z * h).
            let dg_x: &[T] = dg_step;
            let dg_h: &[T] = if gru { dgh_step } else { dg_x };
            w_hh.gemm(dg_h, rows, gh, &mut dh[..rows * ho], ho);
            if gru {
                for (v, &d) in dh[..rows * ho].iter_mut().zip(&direct[..rows * ho]) {
                    *v += d;
                }
            }
            // This step's rows of dX = dG_x W_ih.
            if let Some(w) = w_ih {
                let dst = unsafe { dx.part(o * in_size, rows * in_size) };
                if first {
                    w.gemm(dg_x, rows, gh, dst, in_size);
                } else {
                    w.gemm(dg_x, rows, gh, &mut dx_step[..rows * in_size], in_size);
                    for (v, &d) in dst.iter_mut().zip(&dx_step[..rows * in_size]) {
                        *v += d;
                    }
                }
            }
        }
    }
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
    w.validate()?;
    fused_cell(cfg)?;
    if tape.config != *cfg {
        return Err(Error::TapeMismatch(format!(
            "the tape was recorded with {:?}, the weights have {cfg:?}",
            tape.config
        )));
    }
    // Recorded by `forward` with this config: one layer tape per layer, one direction tape
    // per direction (the fields are private, so this holds; checked to keep it so).
    if tape.layers.len() != cfg.num_layers || tape.layers.iter().any(|l| l.dirs.len() != cfg.directions()) {
        return Err(Error::TapeMismatch("the tape's layers do not match its configuration".into()));
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
            permute_state(g, ld, b, ho, &tape.sorted_indices)?
        }
        None => scratch("dh", &[ld, b, ho])?,
    };
    let mut dc = match (grad_c_n, cfg.mode) {
        (Some(g), Mode::Lstm) => {
            check_len("grad_c_n", &cfg.c_shape(b), g.len())?;
            check_finite("grad_c_n", g)?;
            permute_state(g, ld, b, hs, &tape.sorted_indices)?
        }
        (Some(_), m) => return Err(Error::InvalidConfig(format!("grad_c_n given, but {m} has no cell state"))),
        (None, Mode::Lstm) => scratch("dc", &[ld, b, hs])?,
        (None, _) => Vec::new(),
    };
    let mut grads = Weights::zeros(cfg)?;
    let mut dy = zeros("output gradients", &[grad_output.len()])?;
    dy.copy_from_slice(grad_output);
    for layer in (0..cfg.num_layers).rev() {
        let in_size = cfg.layer_input_size(layer);
        let lt = &tape.layers[layer];
        let mut dx = zeros("input gradients", &[n, in_size])?;
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
            })?;
        }
        pool::recycle(std::mem::replace(&mut dy, dx));
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
        h0: Tensor { shape: cfg.h_shape(b), data: permute_state(&dh, ld, b, ho, &tape.unsorted_indices)? },
        c0: if cfg.mode == Mode::Lstm {
            Some(Tensor { shape: cfg.c_shape(b), data: permute_state(&dc, ld, b, hs, &tape.unsorted_indices)? })
        } else {
            None
        },
        params: grads,
    })
}
