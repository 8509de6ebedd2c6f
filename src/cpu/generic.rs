//! The CPU time-loop driver generic over the cell (`crate::cells`): forward and backward of
//! any registered cell, stacked, bidirectional, over packed sequences, with any number of
//! states. It never asks which cell it runs.
//!
//! Per layer-direction, forward: `xp = X W_x^T + b_x` for all rows, then per step and stage
//! the stage's product for the step's rows (one GEMM) and the cell's pointwise function per
//! row. Backward mirrors it: per step, stages last to first, the pointwise backward, then
//! `dv = dr_k R_k` routed to the state or tape value the product read; after the loop, GEMMs
//! over all rows for `dW_x`, `dR_k` and `dX`, column sums for the biases and the pointwise
//! parameters.
//!
//! States live in sorted order (sequences by decreasing length), as in the rest of the crate:
//! at step t the active rows are `0..batch_sizes[t]`.

use super::gemm::{gemm, Mat, Op};
use super::{check_finite, permute_state, scratch, step_order, zeros, Pass};
use crate::packing::step_offsets;
use crate::cells::{state_offsets, BwdRow, Cell, FwdRow, Layout, Sizes, Slot, Src, StateDef};
use crate::config::RnnConfig;
use crate::error::{check_len, Error, Result};
use crate::float::Float;
use crate::packing::PackedSequence;
use crate::tensor::Tensor;
use crate::weights::{DirParams, Weights};

/// What a forward returns: the packed output `[N, D*out]` and each state's final value
/// `[L*D, B, S]` in the caller's batch order, in the cell's state order.
#[derive(Clone, Debug)]
pub struct CellOutput<T> {
    pub output: PackedSequence<T>,
    pub states: Vec<Tensor<T>>,
}

/// What backward needs from a training forward.
#[derive(Debug)]
pub struct CellTape<T> {
    config: RnnConfig,
    layers: Vec<LayerTape<T>>,
    batch_sizes: Vec<usize>,
    sorted_indices: Vec<usize>,
    unsorted_indices: Vec<usize>,
}

#[derive(Debug)]
struct LayerTape<T> {
    /// `[N, in]` the layer's input.
    input: Vec<T>,
    dirs: Vec<DirTape<T>>,
}

#[derive(Debug, Default)]
struct DirTape<T> {
    /// `[N, Gx]`
    xp: Vec<T>,
    /// `[N, S]` the states each row started from.
    s_prev: Vec<T>,
    /// `[N, tape]`
    tape: Vec<T>,
}

/// Gradients of the loss `sum(output * grad_output) + sum over states of sum(s_n * grad_s_n)`.
#[derive(Clone, Debug)]
pub struct CellGradients<T> {
    pub input: PackedSequence<T>,
    /// Each state's initial-value gradient `[L*D, B, S]`, caller's order.
    pub states: Vec<Tensor<T>>,
    pub params: Weights<T>,
}

fn slot<'a, T>(p: &'a DirParams<T>, s: Slot, what: &str) -> Result<&'a [T]>
where
    T: Float,
{
    p.get(s).ok_or_else(|| Error::MissingTensor(format!("{s:?} slot ({what})")))
}

/// Checks the initial states (or their gradients) against the config: one entry per state.
pub(crate) fn check_states<T: Float>(cfg: &RnnConfig, states: &[StateDef], given: &[Option<&[T]>], b: usize, what: &str) -> Result<()> {
    if given.len() > states.len() {
        return Err(Error::InvalidConfig(format!(
            "{} {what} given, but {} has {} states",
            given.len(),
            cfg.mode,
            states.len()
        )));
    }
    for (st, g) in states.iter().zip(given) {
        if let Some(v) = g {
            let name = format!("{}{what}", st.name);
            check_len(&name, &cfg.state_shape(st, b), v.len())?;
            check_finite(&name, v)?;
        }
    }
    Ok(())
}

/// Interleaves per-state tensors `[LD, B, S_i]` into one `[LD, B, S]` buffer (sorted order).
pub(crate) fn gather_states<T: Float>(states: &[StateDef], given: &[Option<&[T]>], ld: usize, b: usize, perm: &[usize]) -> Result<Vec<T>> {
    let (offs, sw) = state_offsets(states);
    let mut all = zeros("states", &[ld, b, sw])?;
    for (i, st) in states.iter().enumerate() {
        if let Some(Some(v)) = given.get(i) {
            let sorted = permute_state(v, ld, b, st.width, perm)?;
            for r in 0..ld * b {
                all[r * sw + offs[i]..r * sw + offs[i] + st.width].copy_from_slice(&sorted[r * st.width..(r + 1) * st.width]);
            }
        }
    }
    Ok(all)
}

/// Splits a `[LD, B, S]` buffer (sorted order) into per-state tensors in the caller's order.
pub(crate) fn scatter_states<T: Float>(cfg: &RnnConfig, states: &[StateDef], all: &[T], ld: usize, b: usize, perm: &[usize]) -> Result<Vec<Tensor<T>>> {
    let (offs, sw) = state_offsets(states);
    let mut v = Vec::with_capacity(states.len());
    for (i, st) in states.iter().enumerate() {
        let mut one = zeros("state", &[ld, b, st.width])?;
        for r in 0..ld * b {
            one[r * st.width..(r + 1) * st.width].copy_from_slice(&all[r * sw + offs[i]..r * sw + offs[i] + st.width]);
        }
        v.push(Tensor { shape: cfg.state_shape(st, b), data: permute_state(&one, ld, b, st.width, perm)? });
    }
    Ok(v)
}

pub(crate) fn check_weights<T: Float>(w: &Weights<T>) -> Result<()> {
    w.validate()?;
    let mut bad = None;
    w.for_each(|def, layer, dir, v| {
        if bad.is_none() && !v.iter().all(|x| x.is_finite()) {
            bad = Some(RnnConfig::param_name(def.stem, layer, dir));
        }
    });
    match bad {
        Some(name) => Err(Error::NonFinite(name)),
        None => Ok(()),
    }
}

/// Runs the stack over a packed batch. `states0[i]` is state i's initial value
/// `[L*D, B, S_i]` in the caller's order (zeros when `None` or absent).
pub fn forward<T: Float>(
    w: &Weights<T>,
    input: &PackedSequence<T>,
    states0: &[Option<&[T]>],
    pass: Pass,
) -> Result<(CellOutput<T>, Option<CellTape<T>>)> {
    check_weights(w)?;
    input.validate()?;
    let cfg = &w.config;
    if input.features != cfg.input_size {
        return Err(Error::ShapeMismatch { what: "input features".into(), expected: vec![cfg.input_size], got: vec![input.features] });
    }
    check_finite("input", &input.data)?;
    let b = input.batch();
    let states = cfg.states();
    check_states(cfg, &states, states0, b, "0")?;
    crate::cells::with_cell!(cfg.mode, C => forward_cell::<C, T>(w, input, states0, pass))
}

fn forward_cell<C: Cell, T: Float>(
    w: &Weights<T>,
    input: &PackedSequence<T>,
    states0: &[Option<&[T]>],
    pass: Pass,
) -> Result<(CellOutput<T>, Option<CellTape<T>>)> {
    let cfg = &w.config;
    let (b, d) = (input.batch(), cfg.directions());
    let ld = cfg.num_layers * d;
    let n = input.rows();
    let states = cfg.states();
    let (_, sw) = state_offsets(&states);
    let mut s = gather_states(&states, states0, ld, b, &input.sorted_indices)?;
    let mut layers = Vec::new();
    let mut x = zeros("layer input", &[input.data.len()])?;
    x.copy_from_slice(&input.data);
    let out_w = d * C::layout(cfg.sizes(0)).out;
    for layer in 0..cfg.num_layers {
        let sizes = cfg.sizes(layer);
        let mut out = zeros("layer output", &[n, out_w])?;
        let mut dirs = Vec::new();
        for dir in 0..d {
            let k = layer * d + dir;
            let mut dt = DirTape::default();
            dir_forward::<C, T>(DirFwd {
                sizes,
                p: w.dir(layer, dir),
                x: &x,
                batch_sizes: &input.batch_sizes,
                reverse: dir == 1,
                s: &mut s[k * b * sw..(k + 1) * b * sw],
                sw,
                out: &mut out,
                out_w,
                col: dir * (out_w / d),
                tape: (pass == Pass::Training).then_some(&mut dt),
            })?;
            dirs.push(dt);
        }
        let layer_input = std::mem::replace(&mut x, out);
        if pass == Pass::Training {
            layers.push(LayerTape { input: layer_input, dirs });
        }
    }
    let output = input.with_data(x, out_w)?;
    let states_n = scatter_states(cfg, &states, &s, ld, b, &input.unsorted_indices)?;
    let tape = (pass == Pass::Training).then(|| CellTape {
        config: cfg.clone(),
        layers,
        batch_sizes: input.batch_sizes.clone(),
        sorted_indices: input.sorted_indices.clone(),
        unsorted_indices: input.unsorted_indices.clone(),
    });
    Ok((CellOutput { output, states: states_n }, tape))
}

struct DirFwd<'a, T: Float> {
    sizes: Sizes,
    p: &'a DirParams<T>,
    x: &'a [T],
    batch_sizes: &'a [usize],
    reverse: bool,
    /// `[B, S]` states, sorted order: initial in, final out.
    s: &'a mut [T],
    sw: usize,
    out: &'a mut [T],
    out_w: usize,
    col: usize,
    tape: Option<&'a mut DirTape<T>>,
}

/// A product's input rows `[rows, k]` for the step's rows `o..o + rows`.
#[allow(clippy::too_many_arguments)]
fn gather_src<T: Float>(src: Src, k: usize, s: &[T], sw: usize, soffs: &[usize], tape: &[T], tw: usize, rows: usize, v: &mut [T]) {
    for r in 0..rows {
        let from = match src {
            Src::State(i) => &s[r * sw + soffs[i]..r * sw + soffs[i] + k],
            Src::Tape { offset } => &tape[r * tw + offset..r * tw + offset + k],
        };
        v[r * k..(r + 1) * k].copy_from_slice(from);
    }
}

fn dir_forward<C: Cell, T: Float>(a: DirFwd<'_, T>) -> Result<()> {
    let sz = a.sizes;
    let lay: Layout = C::layout(sz);
    let states = C::states(sz);
    let (soffs, _) = state_offsets(&states);
    let (roffs, rw) = lay.product_offsets();
    let (gx, tw, sw, inw) = (lay.xp, lay.tape, a.sw, sz.input);
    let off = step_offsets(a.batch_sizes);
    let n = off[off.len() - 1];
    let b = a.batch_sizes[0];
    let p = a.p;
    let mut xp = zeros("input projection", &[n, gx])?;
    if gx > 0 {
        let w_x = slot(p, Slot::WeightIh, "input matrix")?;
        gemm(T::one(), Mat::try_new(a.x, n, inw)?, Op::N, Mat::try_new(w_x, gx, inw)?, Op::T, T::zero(), &mut xp, gx);
        if lay.input_bias {
            super::add_bias(&mut xp, gx, Some(&slot(p, Slot::BiasIh, "input bias")?[..gx]));
        }
    }
    let e: &[T] = if lay.pointwise > 0 { &slot(p, Slot::Pointwise, "pointwise parameters")?[..lay.pointwise] } else { &[] };
    let training = a.tape.is_some();
    let mut s_prev = if training { zeros("tape states", &[n, sw])? } else { Vec::new() };
    let mut tape = zeros("tape", &[if training { n } else { b }, tw])?;
    let mut r = scratch("products", &[b, rw])?;
    let kmax = lay.stages.iter().flatten().map(|p| p.k).max().unwrap_or(0);
    let mut v = scratch("product inputs", &[b, kmax])?;
    for t in step_order(a.batch_sizes.len(), a.reverse) {
        let rows = a.batch_sizes[t];
        let o = off[t];
        if training {
            s_prev[o * sw..(o + rows) * sw].copy_from_slice(&a.s[..rows * sw]);
        }
        let trow0 = if training { o } else { 0 };
        for (k, stage) in lay.stages.iter().enumerate() {
            if let Some(pr) = stage {
                let tp = &tape[trow0 * tw..(trow0 + rows) * tw];
                gather_src(pr.src, pr.k, a.s, sw, &soffs, tp, tw, rows, &mut v);
                let w_r = slot(p, pr.slot, "recurrent matrix")?;
                let w_r = &w_r[pr.offset..pr.offset + pr.rows * pr.k];
                gemm(T::one(), Mat::try_new(&v, rows, pr.k)?, Op::N, Mat::try_new(w_r, pr.rows, pr.k)?, Op::T, T::zero(), &mut r[roffs[k]..], rw);
                if let Some((bs, bo)) = pr.bias {
                    let bias = &slot(p, bs, "recurrent bias")?[bo..bo + pr.rows];
                    for rr in 0..rows {
                        for (dst, &bv) in r[rr * rw + roffs[k]..rr * rw + roffs[k] + pr.rows].iter_mut().zip(bias) {
                            *dst += bv;
                        }
                    }
                }
            }
            for rr in 0..rows {
                let row = o + rr;
                let ocol = row * a.out_w + a.col;
                C::forward(
                    k,
                    sz,
                    FwdRow {
                        x: &a.x[row * inw..(row + 1) * inw],
                        xp: &xp[row * gx..(row + 1) * gx],
                        r: &r[rr * rw..(rr + 1) * rw],
                        e,
                        s: &mut a.s[rr * sw..(rr + 1) * sw],
                        tape: &mut tape[(trow0 + rr) * tw..(trow0 + rr + 1) * tw],
                        out: &mut a.out[ocol..ocol + lay.out],
                    },
                );
            }
        }
    }
    if let Some(dt) = a.tape {
        dt.xp = xp;
        dt.s_prev = s_prev;
        dt.tape = tape;
    }
    Ok(())
}

/// Backward through time of a [`forward`] in training mode. `grad_output` is packed like the
/// output; `grad_states[i]` is state i's final-value gradient `[L*D, B, S_i]` (zeros when
/// `None` or absent).
pub fn backward<T: Float>(w: &Weights<T>, tape: &CellTape<T>, grad_output: &[T], grad_states: &[Option<&[T]>]) -> Result<CellGradients<T>> {
    check_weights(w)?;
    let cfg = &w.config;
    if tape.config != *cfg {
        return Err(Error::TapeMismatch(format!("the tape was recorded with {:?}, the weights have {cfg:?}", tape.config)));
    }
    let b = tape.batch_sizes[0];
    let n: usize = tape.batch_sizes.iter().sum();
    let out_w = cfg.directions() * cfg.mode.layout(cfg.sizes(0)).out;
    check_len("grad_output", &[n, out_w], grad_output.len())?;
    check_finite("grad_output", grad_output)?;
    let states = cfg.states();
    check_states(cfg, &states, grad_states, b, "_n")?;
    crate::cells::with_cell!(cfg.mode, C => backward_cell::<C, T>(w, tape, grad_output, grad_states))
}

fn backward_cell<C: Cell, T: Float>(w: &Weights<T>, tape: &CellTape<T>, grad_output: &[T], grad_states: &[Option<&[T]>]) -> Result<CellGradients<T>> {
    let cfg = &w.config;
    let b = tape.batch_sizes[0];
    let d = cfg.directions();
    let ld = cfg.num_layers * d;
    let n: usize = tape.batch_sizes.iter().sum();
    let states = cfg.states();
    let (_, sw) = state_offsets(&states);
    let out_w = d * C::layout(cfg.sizes(0)).out;
    let mut ds = gather_states(&states, grad_states, ld, b, &tape.sorted_indices)?;
    let mut grads = Weights::zeros(cfg)?;
    let mut dy = zeros("output gradients", &[grad_output.len()])?;
    dy.copy_from_slice(grad_output);
    for layer in (0..cfg.num_layers).rev() {
        let sizes = cfg.sizes(layer);
        let lt = &tape.layers[layer];
        let mut dx = zeros("input gradients", &[n, sizes.input])?;
        for dir in 0..d {
            let k = layer * d + dir;
            dir_backward::<C, T>(DirBwd {
                sizes,
                p: w.dir(layer, dir),
                tape: &lt.dirs[dir],
                x: &lt.input,
                batch_sizes: &tape.batch_sizes,
                reverse: dir == 1,
                dy: &dy,
                out_w,
                col: dir * (out_w / d),
                ds: &mut ds[k * b * sw..(k + 1) * b * sw],
                sw,
                grad: &mut grads.params[k],
                dx: &mut dx,
            })?;
        }
        dy = dx;
    }
    let input = PackedSequence {
        data: dy,
        features: cfg.input_size,
        batch_sizes: tape.batch_sizes.clone(),
        sorted_indices: tape.sorted_indices.clone(),
        unsorted_indices: tape.unsorted_indices.clone(),
    };
    Ok(CellGradients { input, states: scatter_states(cfg, &states, &ds, ld, b, &tape.unsorted_indices)?, params: grads })
}

struct DirBwd<'a, T: Float> {
    sizes: Sizes,
    p: &'a DirParams<T>,
    tape: &'a DirTape<T>,
    x: &'a [T],
    batch_sizes: &'a [usize],
    reverse: bool,
    dy: &'a [T],
    out_w: usize,
    col: usize,
    /// `[B, S]`: final-state gradients in, initial-state gradients out (sorted order).
    ds: &'a mut [T],
    sw: usize,
    grad: &'a mut DirParams<T>,
    /// `[N, in]`, accumulated.
    dx: &'a mut [T],
}

fn dir_backward<C: Cell, T: Float>(a: DirBwd<'_, T>) -> Result<()> {
    let sz = a.sizes;
    let lay = C::layout(sz);
    let states = C::states(sz);
    let (soffs, _) = state_offsets(&states);
    let (roffs, rw) = lay.product_offsets();
    let (gx, tw, sw, inw) = (lay.xp, lay.tape, a.sw, sz.input);
    let off = step_offsets(a.batch_sizes);
    let n = off[off.len() - 1];
    let b = a.batch_sizes[0];
    let (p, tp) = (a.p, a.tape);
    let e: &[T] = if lay.pointwise > 0 { &slot(p, Slot::Pointwise, "pointwise parameters")?[..lay.pointwise] } else { &[] };
    let mut dxp = zeros("input projection gradients", &[n, gx])?;
    let mut dr = zeros("product gradients", &[n, rw])?;
    let mut de = zeros("pointwise parameter gradients", &[n, lay.pointwise])?;
    let mut dtape = zeros("tape gradients", &[b, tw])?;
    let mut dprod = zeros("state gradients through products", &[b, sw])?;
    let kmax = lay.stages.iter().flatten().map(|p| p.k).max().unwrap_or(0);
    let mut dv = zeros("product input gradients", &[b, kmax])?;
    for t in step_order(a.batch_sizes.len(), !a.reverse) {
        let rows = a.batch_sizes[t];
        let o = off[t];
        dtape[..rows * tw].fill(T::zero());
        dprod[..rows * sw].fill(T::zero());
        for k in (0..lay.stages.len()).rev() {
            for rr in 0..rows {
                let row = o + rr;
                let ocol = row * a.out_w + a.col;
                C::backward(
                    k,
                    sz,
                    BwdRow {
                        x: &a.x[row * inw..(row + 1) * inw],
                        xp: &tp.xp[row * gx..(row + 1) * gx],
                        e,
                        s_prev: &tp.s_prev[row * sw..(row + 1) * sw],
                        tape: &tp.tape[row * tw..(row + 1) * tw],
                        dout: &a.dy[ocol..ocol + lay.out],
                        ds: &mut a.ds[rr * sw..(rr + 1) * sw],
                        dtape: &mut dtape[rr * tw..(rr + 1) * tw],
                        dxp: &mut dxp[row * gx..(row + 1) * gx],
                        dr: &mut dr[row * rw..(row + 1) * rw],
                        de: &mut de[row * lay.pointwise..(row + 1) * lay.pointwise],
                        dx: &mut a.dx[row * inw..(row + 1) * inw],
                    },
                );
            }
            if let Some(pr) = lay.stages[k] {
                // dv = dr_k R_k for the step's rows, to wherever the product's input came from.
                let w_r = slot(p, pr.slot, "recurrent matrix")?;
                let w_r = &w_r[pr.offset..pr.offset + pr.rows * pr.k];
                let drk = Mat::with_ld(&dr[o * rw + roffs[k]..], rows, pr.rows, rw)?;
                gemm(T::one(), drk, Op::N, Mat::try_new(w_r, pr.rows, pr.k)?, Op::N, T::zero(), &mut dv, pr.k);
                for rr in 0..rows {
                    let dst = match pr.src {
                        Src::State(i) => &mut dprod[rr * sw + soffs[i]..rr * sw + soffs[i] + pr.k],
                        Src::Tape { offset } => &mut dtape[rr * tw + offset..rr * tw + offset + pr.k],
                    };
                    for (d, &g) in dst.iter_mut().zip(&dv[rr * pr.k..(rr + 1) * pr.k]) {
                        *d += g;
                    }
                }
            }
        }
        for (d, &g) in a.ds[..rows * sw].iter_mut().zip(&dprod[..rows * sw]) {
            *d += g;
        }
    }
    // Weight gradients over all rows.
    let one = T::one();
    if gx > 0 {
        let gw = a.grad.get_mut(Slot::WeightIh).ok_or_else(|| Error::MissingTensor("WeightIh slot".into()))?;
        gemm(one, Mat::try_new(&dxp, n, gx)?, Op::T, Mat::try_new(a.x, n, inw)?, Op::N, T::zero(), &mut gw[..gx * inw], inw);
        if lay.input_bias {
            let gb = a.grad.get_mut(Slot::BiasIh).ok_or_else(|| Error::MissingTensor("BiasIh slot".into()))?;
            super::col_sum_into(&dxp, gx, &mut gb[..gx]);
        }
        let w_x = slot(p, Slot::WeightIh, "input matrix")?;
        gemm(one, Mat::try_new(&dxp, n, gx)?, Op::N, Mat::try_new(&w_x[..gx * inw], gx, inw)?, Op::N, one, a.dx, inw);
    }
    let mut vall = Vec::new();
    for (k, stage) in lay.stages.iter().enumerate() {
        let Some(pr) = stage else { continue };
        // The product's inputs for all rows, [N, k].
        vall.clear();
        vall.resize(n * pr.k, T::zero());
        match pr.src {
            Src::State(i) => gather_src(Src::State(i), pr.k, &tp.s_prev, sw, &soffs, &[], tw, n, &mut vall),
            Src::Tape { offset } => gather_src(Src::Tape { offset }, pr.k, &[], sw, &soffs, &tp.tape, tw, n, &mut vall),
        }
        let drk = Mat::with_ld(&dr[roffs[k]..], n, pr.rows, rw)?;
        let gw = a.grad.get_mut(pr.slot).ok_or_else(|| Error::MissingTensor(format!("{:?} slot", pr.slot)))?;
        gemm(one, drk, Op::T, Mat::try_new(&vall, n, pr.k)?, Op::N, T::zero(), &mut gw[pr.offset..pr.offset + pr.rows * pr.k], pr.k);
        if let Some((bs, bo)) = pr.bias {
            let gb = a.grad.get_mut(bs).ok_or_else(|| Error::MissingTensor(format!("{bs:?} slot")))?;
            for row in 0..n {
                for (g, &v) in gb[bo..bo + pr.rows].iter_mut().zip(&dr[row * rw + roffs[k]..row * rw + roffs[k] + pr.rows]) {
                    *g += v;
                }
            }
        }
    }
    if lay.pointwise > 0 {
        let ge = a.grad.get_mut(Slot::Pointwise).ok_or_else(|| Error::MissingTensor("Pointwise slot".into()))?;
        super::col_sum_into(&de, lay.pointwise, &mut ge[..lay.pointwise]);
    }
    Ok(())
}
