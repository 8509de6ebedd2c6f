//! The CPU engine (re-exported as `cpu::forward` / `cpu::backward`): generic over the cell
//! (`C: Cell`), monomorphised per cell. See the module docs of `cpu`.
//!
//! Per layer-direction, forward: `xp = X W_x^T + b_x` (up front, or per step inside the
//! loop), then per step and stage the stage's product for the step's rows and the cell's
//! pointwise function per row. Backward mirrors it: per step, stages last to first, the
//! pointwise backward, then `dv = dr_k R_k` routed to the state or tape value the product
//! read; after the loop, GEMMs over all rows for `dW_x`, `dR_k` (and `dX` unless made per
//! step), column sums for the biases and the pointwise parameters. Where a stage's output
//! gradients are dxp itself (`Cell::DR_IS_DXP` with one stage), `dW_x`, that stage's `dR` and
//! the bias sums come from one pass over dxp (`gemm::shared_at_b`).

use super::gemm::{gemm, shared_at_b, try_gemm_bias, AtB, Mat, Op};
use super::smallgemm::{self, PackedB};
use super::split::{self, Rows};
use std::marker::PhantomData;
use std::ops::Range;
use super::{check_finite, permute_state, pool, reused, scratch, step_order, zeros, Failure, Pass};
use crate::packing::step_offsets;
use crate::cells::{state_offsets, BwdRow, Cell, FwdRow, Layout, Pointwise, Product, Sizes, Slot, Src, StateDef, Standard};
use crate::config::RnnConfig;
use crate::error::{check_len, Error, Result};
use crate::float::Float;
use crate::masks::{self, Draw};
use crate::packing::PackedSequence;
use crate::precision::Precision;
use crate::tensor::Tensor;
use crate::weights::{DirParams, Weights};

/// What a forward returns: the packed output and each state's final value, in the caller's
/// batch order.
#[derive(Clone, Debug)]
pub struct ForwardOutput<T> {
    /// The packed output `[N, D*out]`, forward direction's columns first.
    pub output: PackedSequence<T>,
    /// Each state's final value `[L*D, B, S]` (each sequence's state at its own last step), in
    /// the cell's state order ([`RnnConfig::states`]: `h`, then `c` for LSTM).
    pub states: Vec<Tensor<T>>,
}

/// What a training-mode forward keeps for [`backward`]. It remembers the configuration it
/// was recorded with: [`backward`] refuses weights of another one ([`Error::TapeMismatch`]).
#[derive(Debug)]
pub struct Tape<T: Float> {
    config: RnnConfig,
    layers: Vec<LayerTape<T>>,
    batch_sizes: Vec<usize>,
    sorted_indices: Vec<usize>,
    unsorted_indices: Vec<usize>,
    /// The masks' draw (dropout and zoneout).
    draw: Draw,
}

#[derive(Debug)]
struct LayerTape<T: Float> {
    /// `[N, in]` the layer's input (after the dropout of the layer below).
    input: Vec<T>,
    dirs: Vec<DirTape<T>>,
}

#[derive(Debug, Default)]
struct DirTape<T: Float> {
    /// `[N, Gx]` when the cell's backward reads it (`Cell::BACKWARD_READS_XP`), else empty.
    xp: Vec<T>,
    /// `[N, S]` the states each row started from.
    s_prev: Vec<T>,
    /// `[N, tape]`
    tape: Vec<T>,
    /// The initial states were zeros (none given): the rows of the first step processed
    /// started from zero states, so they add nothing to a state product's weight gradient.
    zero_start: bool,
}

/// Gradients of the loss `sum(output * grad_output) + sum over states of sum(s_n * grad_s_n)`.
#[derive(Clone, Debug)]
pub struct Gradients<T: Float> {
    /// The input's gradient, packed `[N, I]` like the input.
    pub input: PackedSequence<T>,
    /// Each state's initial-value gradient `[L*D, B, S]`, caller's order, in the cell's state
    /// order.
    pub states: Vec<Tensor<T>>,
    /// The parameters' gradients, in the weights' layout and names.
    pub params: Weights<T>,
}

impl<T: Float> Gradients<T> {
    /// The input's, the states' and the parameters' gradients, owned (the buffers then leave
    /// the pool's reach; dropping `Gradients` hands them back to it).
    pub fn into_parts(mut self) -> (PackedSequence<T>, Vec<Tensor<T>>, Weights<T>) {
        let input = PackedSequence { data: std::mem::take(&mut self.input.data), ..self.input.clone() };
        let params = Weights { config: self.params.config.clone(), params: std::mem::take(&mut self.params.params) };
        (input, std::mem::take(&mut self.states), params)
    }
}

// The gradients' buffers go back to the pool when they are dropped (see `pool`): a training
// loop's next backward then writes pages already mapped (DeepBench's GRU with T = 1 spent a
// third of its backward in page faults on fresh gradient buffers).
impl<T: Float> Drop for Gradients<T> {
    fn drop(&mut self) {
        pool::recycle(std::mem::take(&mut self.input.data));
        for p in &mut self.params.params {
            for v in [Some(&mut p.w_ih), Some(&mut p.w_hh), p.b_ih.as_mut(), p.b_hh.as_mut(), p.w_hr.as_mut(), p.pointwise.as_mut()].into_iter().flatten() {
                pool::recycle(std::mem::take(v));
            }
        }
    }
}

// The tape's buffers go back to the pool when it is dropped (see `pool`).
impl<T: Float> Drop for DirTape<T> {
    fn drop(&mut self) {
        for v in [&mut self.xp, &mut self.s_prev, &mut self.tape] {
            pool::recycle(std::mem::take(v));
        }
    }
}

impl<T: Float> Drop for LayerTape<T> {
    fn drop(&mut self) {
        pool::recycle(std::mem::take(&mut self.input));
    }
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
    w.check_finite()
}

/// Checks a forward's weights, packed input and initial states against the weights' config
/// (the CPU engine's and `gpu::generic`'s); returns the cell's states.
pub(crate) fn check_forward<T: Float>(w: &Weights<T>, input: &PackedSequence<T>, states0: &[Option<&[T]>]) -> Result<Vec<StateDef>> {
    check_weights(w)?;
    check_run(&w.config, input, states0)
}

/// Checks a forward's packed input and initial states against `cfg` (the weights were checked
/// when they were uploaded: `gpu::GpuRnn`); returns the cell's states.
pub(crate) fn check_run<T: Float>(cfg: &RnnConfig, input: &PackedSequence<T>, states0: &[Option<&[T]>]) -> Result<Vec<StateDef>> {
    input.validate()?;
    if input.features != cfg.input_size {
        return Err(Error::ShapeMismatch { what: "input features".into(), expected: vec![cfg.input_size], got: vec![input.features] });
    }
    check_finite("input", &input.data)?;
    let states = cfg.states();
    check_states(cfg, &states, states0, input.batch(), "0")?;
    Ok(states)
}

/// Runs the stack over a packed batch.
///
/// - `input`: packed rows `[N, I]`;
/// - `states0[i]`: state i's initial value `[L*D, B, S_i]` in the caller's batch order, in
///   the cell's state order ([`RnnConfig::states`]: `&[h0, c0]` for LSTM); zeros when `None`
///   or absent (`&[]`: every state zero).
///
/// With [`Pass::Training`] the returned tape feeds [`backward`]. The config's dropout and
/// zoneout draw their masks from `Draw::default()` ([`forward_with`] chooses). With
/// `Precision::F16` storage it is the GPU's f16 twin: arithmetic in `T`, every value rounded
/// to f16 where the GPU stores it.
pub fn forward<T: Float>(
    w: &Weights<T>,
    input: &PackedSequence<T>,
    states0: &[Option<&[T]>],
    pass: Pass,
) -> Result<(ForwardOutput<T>, Option<Tape<T>>)> {
    forward_with(w, input, states0, pass, Draw::default())
}

/// [`forward`] with the regularisers' masks drawn from `draw` (the GPU's `CellPlan` with the
/// same seed and counter draws the same masks).
pub fn forward_with<T: Float>(
    w: &Weights<T>,
    input: &PackedSequence<T>,
    states0: &[Option<&[T]>],
    pass: Pass,
    draw: Draw,
) -> Result<(ForwardOutput<T>, Option<Tape<T>>)> {
    // The input projections' finiteness is checked on their products where they are made up
    // front (see `check_weights_but_projections`); any error then goes after the full
    // check's, so which error a call gets does not change.
    let deferred = input.rows() > 0;
    if !deferred {
        check_forward(w, input, states0)?;
        return forward_checked(w, input, states0, pass, draw, false);
    }
    let r = check_weights_but_projections(w).and_then(|()| {
        check_run(&w.config, input, states0)?;
        forward_checked(w, input, states0, pass, draw, true)
    });
    match r {
        Err(e) => {
            check_weights(w)?;
            Err(e)
        }
        ok => ok,
    }
}

/// [`check_weights`] except the part of each layer-direction's input matrix that its input
/// projection multiplies: [`Error::NonFinite`] as [`Weights::check_finite`] names it when
/// anything else is not finite. A non-finite element of W makes every row of its column of
/// `X W^T` non-finite where X's row is finite (an FMA chain never turns an infinity or a NaN
/// back into a number; `0 x inf` is NaN), so where the projection is made up front
/// `dir_forward` checks the product instead: all of its rows over at most
/// [`smallgemm::DIRECT_MAX_ROWS`] rows (where reading W_ih once more cost a fifth of
/// DeepBench's GRU T 1), else its first row (the input was checked finite; a later layer's
/// row that overflowed only costs the full check), `G` elements against W's `G x I` (3% of
/// DeepBench's LSTM H 512 B 16 forward). A projection made step by step checks W itself.
fn check_weights_but_projections<T: Float>(w: &Weights<T>) -> Result<()> {
    w.validate()?;
    let cfg = &w.config;
    let projected: Vec<usize> = (0..cfg.num_layers.min(2))
        .map(|l| {
            let sz = cfg.sizes(l);
            cfg.mode.layout(sz).xp * sz.input
        })
        .collect();
    // A failure names the first bad parameter of those checked; the full check names the
    // first of all (a skipped part may hold an earlier one).
    w.check_finite_past(|def, layer| if def.slot == Slot::WeightIh { projected[layer.min(1)].saturating_sub(def.offset) } else { 0 })
        .or_else(|_| w.check_finite())
}

/// [`forward_with`] after its checks; `projections_unchecked`: the input projections' part of
/// W_ih is still to be checked, by `dir_forward`.
fn forward_checked<T: Float>(
    w: &Weights<T>,
    input: &PackedSequence<T>,
    states0: &[Option<&[T]>],
    pass: Pass,
    draw: Draw,
    projections_unchecked: bool,
) -> Result<(ForwardOutput<T>, Option<Tape<T>>)> {
    let cfg = &w.config;
    let full_check = || w.check_finite();
    let recheck: Recheck<'_> = projections_unchecked.then_some(&full_check);
    if pass == Pass::Training {
        cfg.check_trainable()?;
    }
    for layer in 0..cfg.num_layers.min(2) {
        cfg.mode.check_layout(cfg.sizes(layer)).map_err(|why| Error::Unsupported(format!("{}: {why}", cfg.mode)))?;
    }
    if cfg.precision != Precision::F32 {
        if cfg.regularised() {
            return Err(Error::Unsupported(format!("dropout and zoneout with {} storage", cfg.precision)));
        }
        // The f16-storage twin: what the GPU's buffers hold, rounded as they hold it.
        let q = cfg.precision;
        let w = stored_weights(w, q)?;
        let mut x = input.clone();
        q.check_range("input", &x.data.iter().map(|v| v.to_f64() as f32).collect::<Vec<f32>>())?;
        store(q, &mut x.data);
        let mut s0: Vec<Vec<T>> = states0.iter().map(|s| s.map(|v| v.to_vec()).unwrap_or_default()).collect();
        s0.iter_mut().for_each(|v| store(q, v));
        let s0: Vec<Option<&[T]>> = states0.iter().zip(&s0).map(|(o, v)| o.map(|_| v.as_slice())).collect();
        return crate::cells::with_cell!(cfg.mode, C => forward_cell::<C, T>(&w, &x, &s0, pass, draw, recheck));
    }
    crate::cells::with_cell!(cfg.mode, C => forward_cell::<C, T>(w, input, states0, pass, draw, recheck))
}

/// Whether `precision`'s storage rounds what [`store`] is given (f16); with f32 it is a no-op,
/// so a sum may be added into directly rather than through a rounded row.
fn rounds(precision: Precision) -> bool {
    precision == Precision::F16
}

/// Rounds `v` as the config's precision stores it (the f16-storage twin of `gpu::CellPlan`:
/// arithmetic in `T`, every stored value rounded to f16 where the GPU stores it; a no-op for
/// f32 storage).
pub(crate) fn store<T: Float>(precision: Precision, v: &mut [T]) {
    if rounds(precision) {
        for x in v {
            *x = T::from_f64(half::f16::from_f64(x.to_f64()).to_f64());
        }
    }
}

/// The weights as stored in `precision`; [`Error::NonFinite`] if one overflows it.
fn stored_weights<T: Float>(w: &Weights<T>, precision: Precision) -> Result<Weights<T>> {
    let mut w = w.clone();
    for p in w.params.iter_mut() {
        for s in Slot::ALL {
            if let Some(x) = DirParams::get_mut(p, s) {
                let v: Vec<f32> = x.iter().map(|v| v.to_f64() as f32).collect();
                precision.check_range("weights", &v)?;
                store(precision, x);
            }
        }
    }
    Ok(w)
}

/// The zoneout of one layer-direction (state 0 is `h`, the output; `RnnConfig::validate`).
#[derive(Clone, Copy, Debug)]
struct Zone {
    p: f32,
    training: bool,
    seed: u32,
    counter: u32,
    threshold: u32,
    /// h's width.
    hw: usize,
}

impl Zone {
    /// The zoneout of layer-direction `k` over `n` packed rows, if the config has one.
    fn of(cfg: &RnnConfig, k: usize, n: usize, draw: Draw, training: bool) -> Result<Option<Zone>> {
        let p = cfg.zoneout;
        if p.is_zero() {
            return Ok(None);
        }
        let hw = cfg.states()[0].width;
        if n.checked_mul(hw).is_none_or(|e| u32::try_from(e).is_err()) {
            return Err(Error::Limit(format!("zoneout over {n} x {hw} elements: the mask indexes at most 2^32 - 1")));
        }
        Ok(Some(Zone { p: p.get(), training, seed: masks::zoneout_stream(draw.seed, k), counter: draw.counter, threshold: p.threshold(), hw }))
    }
    /// The mask index of packed row `row`'s first unit.
    #[inline(always)]
    fn index(&self, row: usize) -> u32 {
        (row * self.hw) as u32
    }
    /// Whether unit `j` of the row whose first mask index is `base` keeps its previous value
    /// (training).
    #[inline(always)]
    fn hit_at(&self, base: u32, j: usize) -> bool {
        masks::hit(base.wrapping_add(j as u32), self.seed, self.counter, self.threshold)
    }
    /// After packed row `row`'s step: `h` (`hs`, and the output row `ho`) keeps its previous
    /// value `hp` where hit (training), or takes the expectation (inference). Exact-length
    /// rows and a select, not a branch: the mask's hashes and the update vectorise.
    #[inline(always)]
    fn forward_row<T: Float>(&self, row: usize, hp: &[T], hs: &mut [T], ho: &mut [T]) {
        let pz = T::from_f64(self.p as f64);
        let qz = T::one() - pz;
        let (hp, hs, ho) = (&hp[..self.hw], &mut hs[..self.hw], &mut ho[..self.hw]);
        let base = self.index(row);
        for j in 0..self.hw {
            let h = if !self.training {
                pz * hp[j] + qz * hs[j]
            } else if self.hit_at(base, j) {
                hp[j]
            } else {
                hs[j]
            };
            hs[j] = h;
            ho[j] = h;
        }
    }
    /// Before packed row `row`'s backward: where h kept its previous value, the gradient
    /// `g = dh + dout` goes to the previous h (`g`, added after the step) and none to the
    /// cell's new h: the cells read `ds_h + dout`, so `ds_h = -dout` makes that exactly 0.
    #[inline(always)]
    fn backward_row<T: Float>(&self, row: usize, d: &mut [T], g: &mut [T], dy: &[T]) {
        let (d, g, dy) = (&mut d[..self.hw], &mut g[..self.hw], &dy[..self.hw]);
        let base = self.index(row);
        for j in 0..self.hw {
            let hit = self.hit_at(base, j);
            g[j] = if hit { d[j] + dy[j] } else { T::zero() };
            d[j] = if hit { -dy[j] } else { d[j] };
        }
    }
}

/// Inverted dropout in place of a layer's output `[N, out_w]` (forward) or of the gradient of
/// the next layer's input (backward): the same mask both ways.
fn dropout_layer<T: Float>(v: &mut [T], cfg: &RnnConfig, layer: usize, draw: Draw) -> Result<()> {
    super::train::dropout_in_place(v, cfg.dropout.get(), masks::dropout_stream(draw.seed, layer), draw.counter)
}

fn forward_cell<C: Cell, T: Float>(
    w: &Weights<T>,
    input: &PackedSequence<T>,
    states0: &[Option<&[T]>],
    pass: Pass,
    draw: Draw,
    recheck: Recheck<'_>,
) -> Result<(ForwardOutput<T>, Option<Tape<T>>)> {
    let cfg = &w.config;
    let (b, d) = (input.batch(), cfg.directions());
    let ld = cfg.num_layers * d;
    let n = input.rows();
    let states = cfg.states();
    let (_, sw) = state_offsets(&states);
    let mut s = gather_states(&states, states0, ld, b, &input.sorted_indices)?;
    let mut layers = Vec::new();
    // The layer's input: the caller's for layer 0 (copied only into a training tape), then
    // the layer before's output.
    let mut owned: Option<Vec<T>> = None;
    let out_w = d * C::layout(cfg.sizes(0)).out;
    for layer in 0..cfg.num_layers {
        let sizes = cfg.sizes(layer);
        let x: &[T] = owned.as_deref().unwrap_or(&input.data);
        // Every element is written by its direction's time loop (each packed row at its one
        // step, by the cell's last stage, then zoneout), so the buffer comes from the pool as
        // it is (NaN in debug builds: a cell that leaves part of it unwritten fails the golden
        // cases).
        let mut out = reused("layer output", &[n, out_w])?;
        poison_in_debug(&mut out);
        let mut dirs = Vec::new();
        for dir in 0..d {
            let k = layer * d + dir;
            let mut dt = DirTape::default();
            dir_forward::<C, T>(DirFwd {
                sizes,
                zero_start: states0.iter().all(Option::is_none),
                p: w.dir(layer, dir),
                x,
                batch_sizes: &input.batch_sizes,
                reverse: dir == 1,
                pointwise: cfg.pointwise_of(dir).copied(),
                s: &mut s[k * b * sw..(k + 1) * b * sw],
                sw,
                out: &mut out,
                out_w,
                col: dir * (out_w / d),
                tape: (pass == Pass::Training).then_some(&mut dt),
                zone: Zone::of(cfg, k, n, draw, pass == Pass::Training)?,
                precision: cfg.precision,
                recheck,
            })?;
            dirs.push(dt);
        }
        if pass == Pass::Training && !cfg.dropout.is_zero() && layer + 1 < cfg.num_layers {
            dropout_layer(&mut out, cfg, layer, draw)?;
        }
        let layer_input = owned.replace(out);
        if pass == Pass::Training {
            let input = match layer_input {
                Some(v) => v,
                None => {
                    let mut v = reused("layer input", &[input.data.len()])?;
                    v.copy_from_slice(&input.data);
                    v
                }
            };
            layers.push(LayerTape { input, dirs });
        } else if let Some(v) = layer_input {
            pool::recycle(v);
        }
    }
    let output = input.with_data(owned.ok_or_else(no_layers)?, out_w)?;
    let states_n = scatter_states(cfg, &states, &s, ld, b, &input.unsorted_indices)?;
    let tape = (pass == Pass::Training).then(|| Tape {
        config: cfg.clone(),
        layers,
        batch_sizes: input.batch_sizes.clone(),
        sorted_indices: input.sorted_indices.clone(),
        unsorted_indices: input.unsorted_indices.clone(),
        draw,
    });
    Ok((ForwardOutput { output, states: states_n }, tape))
}

struct DirFwd<'a, T: Float> {
    sizes: Sizes,
    /// No initial state was given (all zeros).
    zero_start: bool,
    p: &'a DirParams<T>,
    x: &'a [T],
    batch_sizes: &'a [usize],
    reverse: bool,
    /// The direction's activation slots (`None`: the cell's own).
    pointwise: Option<Pointwise>,
    /// `[B, S]` states, sorted order: initial in, final out.
    s: &'a mut [T],
    sw: usize,
    out: &'a mut [T],
    out_w: usize,
    col: usize,
    tape: Option<&'a mut DirTape<T>>,
    zone: Option<Zone>,
    precision: Precision,
    recheck: Recheck<'a>,
}

/// With `Some`, the part of W_ih that the input projection multiplies is still to be checked
/// for finiteness (see `check_weights_but_projections`): the function is the weights' full
/// check, which names the first non-finite parameter.
type Recheck<'a> = Option<&'a dyn Fn() -> Result<()>>;

/// How [`pack_products`] prepares each stage's `R_k`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pack {
    /// Transposed, for the forward (`r = v R_k^T`).
    Transposed,
    /// Plain, for the backward (`dv = dr_k R_k`).
    Plain,
    /// Plain and read in place ([`PackedB::try_direct`]): a backward over at most
    /// [`smallgemm::DIRECT_MAX_ROWS`] rows in all, where packing would cost more than it saves.
    Direct,
}

/// Prepares each stage's `R_k` for the per-step products ([`Pack`]). With `zero_states_only`
/// (a forward of one step from zero states) the products of a state are never computed (a zero
/// state's product is zero), so their matrices are not packed: for DeepBench's GRU with T = 1
/// the packing cost a quarter of the forward.
fn pack_products<'p, T: Float>(p: &'p DirParams<T>, lay: &Layout, how: Pack, zero_states_only: bool) -> Result<Vec<Option<PackedB<'p, T>>>> {
    let mut v = Vec::with_capacity(lay.stages.len());
    for stage in &lay.stages {
        v.push(match stage {
            Some(pr) if zero_states_only && matches!(pr.src, Src::State(_)) => None,
            Some(pr) => {
                let w = &slot(p, pr.slot, "recurrent matrix")?[pr.offset..pr.offset + pr.rows * pr.k];
                Some(match how {
                    Pack::Transposed => PackedB::try_transposed(w, pr.rows, pr.k)?,
                    Pack::Plain => PackedB::try_plain(w, pr.rows, pr.k)?,
                    Pack::Direct => PackedB::try_direct(w, pr.rows, pr.k)?,
                })
            }
            None => None,
        });
    }
    Ok(v)
}

/// The pointwise parameters the layout reads (none when it reads none).
fn pointwise_params<'a, T: Float>(p: &'a DirParams<T>, lay: &Layout) -> Result<&'a [T]> {
    if lay.pointwise == 0 {
        return Ok(&[]);
    }
    Ok(&slot(p, Slot::Pointwise, "pointwise parameters")?[..lay.pointwise])
}

/// Each stage's product bias, if any.
fn product_biases<'a, T: Float>(p: &'a DirParams<T>, lay: &Layout) -> Result<Vec<Option<&'a [T]>>> {
    lay.stages
        .iter()
        .map(|st| match st.and_then(|pr| pr.bias.map(|b| (b, pr.rows))) {
            Some(((bs, bo), rows)) => Ok(Some(&slot(p, bs, "recurrent bias")?[bo..bo + rows])),
            None => Ok(None),
        })
        .collect()
}

/// After a time loop: its packed weights (the stages' products and `W_x`) back to the pool,
/// and the error a thread reported, if any.
fn after_loop<T: Float>(failed: Failure, packed: Vec<Option<PackedB<'_, T>>>, w_x: Option<PackedB<'_, T>>) -> Option<Error> {
    for w in packed.into_iter().chain([w_x]).flatten() {
        w.recycle();
    }
    failed.into_inner()
}

/// The layer-direction's parameters with the cell's derived matrix ([`Cell::derive`])
/// composed into its `WeightHh` slot (stored at `q`, as the GPU stores it), or `None` for a
/// cell without one. Once per call, forward and backward.
fn with_derived<C: Cell, T: Float>(sz: Sizes, p: &DirParams<T>, q: Precision) -> Result<Option<DirParams<T>>> {
    let Some(d) = C::derived(sz) else { return Ok(None) };
    let e = slot(p, Slot::Pointwise, "pointwise parameters")?;
    C::check_params(sz, e).map_err(|why| Error::InvalidParameter { name: format!("{} parameters", C::NAME), why })?;
    let mut out = p.clone();
    let w = out.w_hh.get_mut(..d.len).ok_or_else(|| Error::MissingTensor("derived WeightHh slot".into()))?;
    C::derive(sz, e, w);
    store(q, w);
    Ok(Some(out))
}

fn dir_forward<C: Cell, T: Float>(a: DirFwd<'_, T>) -> Result<()> {
    let sz = a.sizes;
    let lay: Layout = C::layout(sz);
    let states = C::states(sz);
    let (soffs, _) = state_offsets(&states);
    let (roffs, _) = lay.product_offsets();
    let (gx, tw, sw, inw) = (lay.xp, lay.tape, a.sw, sz.input);
    let off = step_offsets(a.batch_sizes);
    let n = off[off.len() - 1];
    let b = a.batch_sizes[0];
    let derived = with_derived::<C, T>(sz, a.p, a.precision)?;
    let p = derived.as_ref().unwrap_or(a.p);
    let training = a.tape.is_some();
    // The input projection: with enough rows, each thread computes its rows' projection step
    // by step with W_x packed once, so it is still in cache when the pointwise update reads it;
    // else one GEMM over all rows up front (see `super::per_step_input`). Then the per-step
    // products split by columns across threads (`super::column_split`, only with the GEMM up
    // front), or the time loop by batch rows. Neither choice depends on the thread count where
    // it changes arithmetic: the input side is chosen first, from the sizes alone.
    let per_step = gx > 0 && super::per_step_input::<T>(b, n, gx * inw);
    let col_parts = if per_step { 0 } else { super::column_split::<T>(b, n, lay.product_macs()) };
    let b_x = if gx > 0 && lay.input_bias { Some(&slot(p, Slot::BiasIh, "input bias")?[..gx]) } else { None };
    let w_x = if per_step { Some(PackedB::try_transposed(&slot(p, Slot::WeightIh, "input matrix")?[..gx * inw], gx, inw)?) } else { None };
    // [N, gx]: the up-front GEMM's, or the tape's when the cell's backward reads it;
    // otherwise a per-step projection keeps its rows in each thread's scratch.
    let keep_xp = training && C::BACKWARD_READS_XP;
    // Written before it is read: by the GEMM below (beta 0) or, step by step, by the loop.
    let mut xp = reused("input projection", &[if per_step && !keep_xp { 0 } else { n }, gx])?;
    // Few rows: the projection made up front from W_ih in place, not packed (DeepBench's GRU
    // with T = 1).
    let direct_xp = gx > 0 && !per_step && n <= smallgemm::DIRECT_MAX_ROWS;
    // The projection's part of W_ih, when its check was left to this function: on the product
    // made up front below, else (made step by step) on W here.
    if let Some(recheck) = a.recheck.filter(|_| gx > 0 && per_step) {
        if !crate::float::all_finite(&slot(p, Slot::WeightIh, "input matrix")?[..gx * inw]) {
            recheck()?;
        }
    }
    if gx > 0 && !per_step {
        let w = slot(p, Slot::WeightIh, "input matrix")?;
        if direct_xp {
            smallgemm::xwt_direct(a.x, n, inw, w, gx, &mut xp)?;
            if let Some(recheck) = a.recheck {
                if !crate::float::all_finite(&xp[..n * gx]) {
                    recheck()?;
                }
            }
            super::add_bias(&mut xp, gx, b_x);
        } else {
            try_gemm_bias(Mat::try_new(a.x, n, inw)?, Op::N, Mat::try_new(w, gx, inw)?, Op::T, &mut xp, gx, b_x)?;
            // Its first row is non-finite if any element of the part of W left unchecked is (the
            // bias was checked).
            if let Some(recheck) = a.recheck {
                if !crate::float::all_finite(&xp[..gx]) {
                    recheck()?;
                }
            }
        }
        store(a.precision, &mut xp);
    }
    let e = pointwise_params(p, &lay)?;
    // Both written a step at a time by the loop (the tape's rows cleared first).
    let mut s_prev = if training { reused("tape states", &[n, sw])? } else { Vec::new() };
    let mut tape = if training { reused("tape", &[n, tw])? } else { Vec::new() };
    let packed = pack_products(p, &lay, Pack::Transposed, a.zero_start && a.batch_sizes.len() == 1)?;
    let biases = product_biases(p, &lay)?;
    // The time loop, split by batch rows across threads (see `split`): rows are independent.
    let macs = n * (gx * inw + lay.product_macs());
    let ranges = if col_parts > 0 { split::step_ranges(b, col_parts) } else { split::ranges(b, macs) };
    // With the column split, one step's products for every row, and (inference) the tape
    // rows the products read, shared by the threads.
    let (_, rw) = lay.product_offsets();
    let mut r_all = reused("products", &[if col_parts > 0 { b } else { 0 }, rw])?;
    let mut tape_all = zeros("tape", &[if col_parts > 0 && !training { b } else { 0 }, tw])?;
    let failed = Failure::new();
    let l = FwdLoop::<C, T> {
        failed: &failed,
        sz,
        lay: &lay,
        soffs: &soffs,
        roffs: &roffs,
        batch_sizes: a.batch_sizes,
        off: &off,
        reverse: a.reverse,
        pointwise: a.pointwise,
        training,
        keep_xp,
        zero_start: a.zero_start,
        x: a.x,
        w_x: w_x.as_ref(),
        b_x,
        xp: Rows::new(&mut xp),
        e,
        packed: &packed,
        biases: &biases,
        s: Rows::new(a.s),
        s_prev: Rows::new(&mut s_prev),
        tape: Rows::new(&mut tape),
        out: Rows::new(a.out),
        out_w: a.out_w,
        col: a.col,
        sw,
        zone: a.zone,
        q: a.precision,
        r_all: Rows::new(&mut r_all),
        tape_all: Rows::new(&mut tape_all),
        _cell: PhantomData,
    };
    if col_parts > 0 {
        split::run_steps(&ranges, &l);
    } else {
        split::run_loop(&ranges, &l);
    }
    pool::recycle(r_all);
    pool::recycle(tape_all);
    if let Some(e) = after_loop(failed, packed, w_x) {
        for v in [xp, s_prev, tape] {
            pool::recycle(v);
        }
        return Err(e);
    }
    match a.tape {
        Some(dt) => {
            if keep_xp {
                dt.xp = xp;
            } else {
                pool::recycle(xp);
            }
            dt.s_prev = s_prev;
            dt.tape = tape;
            dt.zero_start = a.zero_start;
        }
        None => pool::recycle(xp),
    }
    Ok(())
}

/// Clears a forward's tape rows or a backward's dxp rows before the cell writes them: zeros,
/// unless the cell writes every element ([`Cell::WRITES_WHOLE_ROWS`]); then nothing in
/// release builds and NaN in debug builds (the tests'), so an element it does not write shows.
#[inline(always)]
fn clear_row<C: Cell, T: Float>(row: &mut [T]) {
    if !C::WRITES_WHOLE_ROWS {
        row.fill(T::zero());
    } else {
        poison_in_debug(row);
    }
}

/// What the forward and the backward return where a configuration had no layers: unreachable
/// after `RnnConfig`'s validation, which refuses `num_layers == 0`, but an error, not a panic,
/// should a config ever get past it.
fn no_layers() -> Error {
    Error::InvalidConfig("num_layers must be positive".into())
}

/// For a buffer the loops must write whole, taken from the pool as it is: NaN in debug builds
/// (the tests'), so an element left unwritten shows in the golden cases; nothing in release.
#[inline(always)]
fn poison_in_debug<T: Float>(v: &mut [T]) {
    if cfg!(debug_assertions) {
        v.fill(T::from_f64(f64::NAN));
    }
}

/// One layer-direction's forward time loop over a slice of the batch.
struct FwdLoop<'a, C, T: Float> {
    failed: &'a Failure,
    sz: Sizes,
    lay: &'a Layout,
    soffs: &'a [usize],
    roffs: &'a [usize],
    batch_sizes: &'a [usize],
    off: &'a [usize],
    reverse: bool,
    pointwise: Option<Pointwise>,
    training: bool,
    /// Whether the tape keeps the input projection (`Cell::BACKWARD_READS_XP`).
    keep_xp: bool,
    /// Whether the initial states are zeros (none given): a thread's first step then skips
    /// the products of a state (every row active at it starts from its initial state).
    zero_start: bool,
    x: &'a [T],
    /// `W_x^T` packed, when the input projection is made step by step, and `b_x`.
    w_x: Option<&'a PackedB<'a, T>>,
    b_x: Option<&'a [T]>,
    /// `[N, gx]`: made up front (read), or written step by step in training.
    xp: Rows<'a, T>,
    e: &'a [T],
    packed: &'a [Option<PackedB<'a, T>>],
    biases: &'a [Option<&'a [T]>],
    /// `[B, S]` states (this thread's rows); `[N, S]`, `[N, tape]` (training), `[N, out_w]`.
    s: Rows<'a, T>,
    s_prev: Rows<'a, T>,
    tape: Rows<'a, T>,
    out: Rows<'a, T>,
    out_w: usize,
    col: usize,
    sw: usize,
    zone: Option<Zone>,
    /// The storage precision (rounding where the GPU stores).
    q: Precision,
    /// Column split only: `[B, rw]` one step's products, `[B, tape]` the tape (inference).
    r_all: Rows<'a, T>,
    tape_all: Rows<'a, T>,
    _cell: PhantomData<fn() -> C>,
}

impl<C: Cell, T: Float> FwdLoop<'_, C, T> {
    /// Stage `k`'s pointwise update of packed row `row` over its views (the input projection
    /// `xp`, the products `r`, the states, tape and output rows), then each rounded where the
    /// GPU stores it. Both splits call it.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn update_row(&self, k: usize, row: usize, xp: &[T], r: &[T], s: &mut [T], tape: &mut [T], out: &mut [T]) {
        let fr = FwdRow { x: &self.x[row * self.sz.input..(row + 1) * self.sz.input], xp, r, e: self.e, s: &mut *s, tape: &mut *tape, out: &mut *out };
        // The cell's own functions inlined, or the direction's slots.
        match &self.pointwise {
            None => C::forward(k, self.sz, fr, Standard),
            Some(pw) => C::forward(k, self.sz, fr, pw),
        }
        store(self.q, s);
        store(self.q, tape);
        store(self.q, out);
    }
}

impl<C: Cell, T: Float> split::StepLoop for FwdLoop<'_, C, T> {
    /// The column split: every thread walks every step; per stage, the product for all the
    /// step's rows over this thread's panels, a barrier, the pointwise update of this thread's
    /// rows, a barrier. Each element is computed by the same operations as in [`Self::rows`],
    /// so the results are bitwise the same.
    #[inline(always)]
    fn steps(&self, part: usize, parts: usize, mine: Range<usize>, bar: &split::StepBarrier) {
        let (lay, sw, out_w) = (self.lay, self.sw, self.out_w);
        let (gx, tw) = (lay.xp, lay.tape);
        let (_, rw) = lay.product_offsets();
        let hw = self.zone.map_or(0, |z| z.hw);
        let fail = |e: Error| {
            let _ = self.failed.set(e);
            bar.poison();
        };
        let mut hprev = match scratch("zoneout states", &[mine.len(), hw]) {
            Ok(v) => v,
            Err(e) => return fail(e),
        };
        let panels: Vec<Range<usize>> = self.packed.iter().map(|p| p.as_ref().map_or(0..0, |pk| split::panel_range(pk.panels(), part, parts))).collect();
        let mut fresh = self.zero_start;
        for t in step_order(self.batch_sizes.len(), self.reverse) {
            let rows = self.batch_sizes[t];
            let o = self.off[t];
            let my = mine.start.min(rows)..mine.end.min(rows);
            // SAFETY (every `part` and `tail_ptr` below): between two barriers a thread writes
            // only its own rows (pointwise phase) or its own panels' columns of the shared
            // products (product phase), and reads other threads' rows only in the product
            // phase, when nobody writes them.
            for rr in my.clone() {
                let s = unsafe { self.s.part(rr * sw, sw) };
                if self.training {
                    unsafe { self.s_prev.part((o + rr) * sw, sw) }.copy_from_slice(s);
                    clear_row::<C, T>(unsafe { self.tape.part((o + rr) * tw, tw) });
                }
                if hw > 0 {
                    let at = (rr - mine.start) * hw;
                    hprev[at..at + hw].copy_from_slice(&s[..hw]);
                }
            }
            for (k, stage) in lay.stages.iter().enumerate() {
                if let Some(pr) = stage {
                    let (p0, p1) = (panels[k].start * smallgemm::NR, (panels[k].end * smallgemm::NR).min(pr.rows));
                    let at = self.roffs[k];
                    match (pr.src, &self.packed[k]) {
                        (Src::State(_), _) if fresh => {
                            for rr in 0..rows {
                                if p1 > p0 {
                                    unsafe { self.r_all.part(rr * rw + at + p0, p1 - p0) }.fill(T::zero());
                                }
                            }
                        }
                        (Src::State(i), Some(pk)) => {
                            let s_all: &[T] = unsafe { self.s.part(0, rows * sw) };
                            let (c, len) = unsafe { self.r_all.tail_ptr(at) };
                            unsafe { pk.gemm_panels(&s_all[self.soffs[i]..], rows, sw, c, len, rw, panels[k].clone()) };
                        }
                        (Src::Tape { offset }, Some(pk)) => {
                            let tape_rows: &[T] = if self.training { unsafe { self.tape.part(o * tw, rows * tw) } } else { unsafe { self.tape_all.part(0, rows * tw) } };
                            let (c, len) = unsafe { self.r_all.tail_ptr(at) };
                            unsafe { pk.gemm_panels(&tape_rows[offset..], rows, tw, c, len, rw, panels[k].clone()) };
                        }
                        (_, None) => return fail(Error::InvalidConfig("internal: a product's matrix was not packed".into())),
                    }
                    if p1 > p0 {
                        for rr in 0..rows {
                            let dst = unsafe { self.r_all.part(rr * rw + at + p0, p1 - p0) };
                            if let Some(bias) = self.biases[k] {
                                for (d, &bv) in dst.iter_mut().zip(&bias[p0..p1]) {
                                    *d += bv;
                                }
                            }
                            store(self.q, dst);
                        }
                    }
                    if !bar.wait() {
                        return;
                    }
                }
                for rr in my.clone() {
                    let row = o + rr;
                    let tape: &mut [T] = if self.training { unsafe { self.tape.part(row * tw, tw) } } else { unsafe { self.tape_all.part(rr * tw, tw) } };
                    let (xp, r) = unsafe { (&*self.xp.part(row * gx, gx), &*self.r_all.part(rr * rw, rw)) };
                    self.update_row(k, row, xp, r, unsafe { self.s.part(rr * sw, sw) }, tape, unsafe { self.out.part(row * out_w + self.col, lay.out) });
                }
                if k + 1 < lay.stages.len() && !bar.wait() {
                    return;
                }
            }
            if let Some(z) = self.zone {
                for rr in my.clone() {
                    let at = (rr - mine.start) * hw;
                    z.forward_row(o + rr, &hprev[at..at + hw], unsafe { self.s.part(rr * sw, hw) }, unsafe { self.out.part((o + rr) * out_w + self.col, hw) });
                }
            }
            // The new states (and tape) before the next step's products read them.
            if !bar.wait() {
                return;
            }
            fresh = false;
        }
    }
}

impl<C: Cell, T: Float> split::RowLoop for FwdLoop<'_, C, T> {
    #[inline(always)]
    fn rows(&self, mine: Range<usize>) {
        let (lay, sz, sw, out_w) = (self.lay, self.sz, self.sw, self.out_w);
        let (gx, tw, inw) = (lay.xp, lay.tape, sz.input);
        let (_, rw) = lay.product_offsets();
        let (r0, nr) = (mine.start, mine.len());
        // SAFETY (every `part` below): this thread's state rows `r0..r0 + nr`, or packed rows
        // `o..o + rows` of one step, which no other thread touches.
        let s = unsafe { self.s.part(r0 * sw, nr * sw) };
        let hw = self.zone.map_or(0, |z| z.hw);
        let xs_rows = if self.w_x.is_some() && !self.keep_xp { nr } else { 0 };
        let alloc = || -> Result<_> {
            Ok((
                scratch("products", &[nr, rw])?,
                scratch("tape", &[if self.training { 0 } else { nr }, tw])?,
                scratch("zoneout states", &[nr, hw])?,
                scratch("input projection", &[xs_rows, gx])?,
            ))
        };
        let (mut r, mut tscratch, mut hprev, mut xs) = match alloc() {
            Ok(v) => v,
            Err(e) => {
                let _ = self.failed.set(e);
                return;
            }
        };
        let mut fresh = self.zero_start;
        for t in step_order(self.batch_sizes.len(), self.reverse) {
            let rows = self.batch_sizes[t].saturating_sub(r0).min(nr);
            if rows == 0 {
                continue;
            }
            let o = self.off[t] + r0;
            // This step's input projection (when made per step), or its rows of the one made
            // up front.
            let xrows: &[T] = match self.w_x {
                Some(w) => {
                    let dst: &mut [T] = if self.keep_xp { unsafe { self.xp.part(o * gx, rows * gx) } } else { &mut xs[..rows * gx] };
                    w.gemm_bias(&self.x[o * inw..(o + rows) * inw], rows, inw, dst, gx, self.b_x);
                    store(self.q, dst);
                    dst
                }
                None => unsafe { self.xp.part(o * gx, rows * gx) },
            };
            let tape: &mut [T] = if self.training {
                unsafe { self.s_prev.part(o * sw, rows * sw) }.copy_from_slice(&s[..rows * sw]);
                let tape = unsafe { self.tape.part(o * tw, rows * tw) };
                clear_row::<C, T>(tape);
                tape
            } else {
                &mut tscratch[..rows * tw]
            };
            let out = unsafe { self.out.part(o * out_w, rows * out_w) };
            if self.zone.is_some() {
                for rr in 0..rows {
                    hprev[rr * hw..(rr + 1) * hw].copy_from_slice(&s[rr * sw..rr * sw + hw]);
                }
            }
            for (k, stage) in lay.stages.iter().enumerate() {
                if let Some(pr) = stage {
                    let c = &mut r[self.roffs[k]..];
                    // The product's bias: added by the product (`gemm_bias`), or below.
                    let bias = self.biases[k];
                    let added = match (pr.src, &self.packed[k]) {
                        // A zero state's product is zero (its matrix may not be packed: see
                        // `pack_products`).
                        (Src::State(_), _) if fresh => {
                            for rr in 0..rows {
                                c[rr * rw..rr * rw + pr.rows].fill(T::zero());
                            }
                            false
                        }
                        (Src::State(i), Some(pk)) => {
                            pk.gemm_bias(&s[self.soffs[i]..], rows, sw, c, rw, bias);
                            true
                        }
                        (Src::Tape { offset }, Some(pk)) => {
                            pk.gemm_bias(&tape[offset..], rows, tw, c, rw, bias);
                            true
                        }
                        // Not reached: only one step from zero states leaves a state's matrix
                        // unpacked, and that step is `fresh`.
                        (_, None) => {
                            let _ = self.failed.set(Error::InvalidConfig("internal: a product's matrix was not packed".into()));
                            return;
                        }
                    };
                    if !added {
                        super::add_bias_rows(&mut r[self.roffs[k]..], rows, rw, pr.rows, bias);
                    }
                    for rr in 0..rows {
                        let at = rr * rw + self.roffs[k];
                        store(self.q, &mut r[at..at + pr.rows]);
                    }
                }
                for rr in 0..rows {
                    self.update_row(
                        k,
                        o + rr,
                        &xrows[rr * gx..(rr + 1) * gx],
                        &r[rr * rw..(rr + 1) * rw],
                        &mut s[rr * sw..(rr + 1) * sw],
                        &mut tape[rr * tw..(rr + 1) * tw],
                        &mut out[rr * out_w + self.col..rr * out_w + self.col + lay.out],
                    );
                }
            }
            if let Some(z) = self.zone {
                // h (state 0, the output) keeps its previous value where hit (training), or
                // takes the expectation (inference).
                for rr in 0..rows {
                    let ho = &mut out[rr * out_w + self.col..rr * out_w + self.col + hw];
                    z.forward_row(o + rr, &hprev[rr * hw..(rr + 1) * hw], &mut s[rr * sw..rr * sw + hw], ho);
                }
            }
            fresh = false;
        }
    }
}

/// Backward through time of a [`forward`] in training mode: what autograd gives for
/// `loss = sum(output * grad_output) + sum over states i of sum(s_i_n * grad_states[i])`.
///
/// - `grad_output`: packed rows `[N, D*H_out]`, the forward output's packing;
/// - `grad_states[i]`: state i's final-value gradient `[L*D, B, S_i]`, caller's order, in the
///   cell's state order (`&[grad_h_n, grad_c_n]` for LSTM); zeros when `None` or absent.
pub fn backward<T: Float>(w: &Weights<T>, tape: &Tape<T>, grad_output: &[T], grad_states: &[Option<&[T]>]) -> Result<Gradients<T>> {
    backward_with(w, tape, grad_output, grad_states, true)
}

/// [`backward`] for an input that needs no gradient (PyTorch's without `requires_grad`): the
/// first layer's input-gradient product (`dG W_x`) is left out, and only the initial states'
/// and the parameters' gradients are returned (as [`Gradients::into_parts`] gives them).
pub fn backward_without_input<T: Float>(w: &Weights<T>, tape: &Tape<T>, grad_output: &[T], grad_states: &[Option<&[T]>]) -> Result<(Vec<Tensor<T>>, Weights<T>)> {
    let (input, states, params) = backward_with(w, tape, grad_output, grad_states, false)?.into_parts();
    // Only the direct terms of cells that add to it (`Layout::uses_input`), if any.
    pool::recycle(input.data);
    Ok((states, params))
}

/// [`backward`], the first layer's input gradient made only `with_input`.
fn backward_with<T: Float>(w: &Weights<T>, tape: &Tape<T>, grad_output: &[T], grad_states: &[Option<&[T]>], with_input: bool) -> Result<Gradients<T>> {
    check_weights(w)?;
    let cfg = &w.config;
    if tape.config != *cfg {
        return Err(Error::TapeMismatch(format!("the tape was recorded with {:?}, the weights have {cfg:?}", tape.config)));
    }
    // Recorded by `forward` with this config: one layer tape per layer, one direction tape
    // per direction (the fields are private, so this holds; checked to keep it so).
    if tape.layers.len() != cfg.num_layers || tape.layers.iter().any(|l| l.dirs.len() != cfg.directions()) {
        return Err(Error::TapeMismatch("the tape's layers do not match its configuration".into()));
    }
    let b = tape.batch_sizes[0];
    let n: usize = tape.batch_sizes.iter().sum();
    let out_w = cfg.directions() * cfg.mode.layout(cfg.sizes(0)).out;
    check_len("grad_output", &[n, out_w], grad_output.len())?;
    check_finite("grad_output", grad_output)?;
    let states = cfg.states();
    check_states(cfg, &states, grad_states, b, "_n")?;
    if cfg.precision != Precision::F32 {
        let q = cfg.precision;
        let w = stored_weights(w, q)?;
        let mut go = grad_output.to_vec();
        store(q, &mut go);
        let mut gs: Vec<Vec<T>> = grad_states.iter().map(|s| s.map(|v| v.to_vec()).unwrap_or_default()).collect();
        gs.iter_mut().for_each(|v| store(q, v));
        let gs: Vec<Option<&[T]>> = grad_states.iter().zip(&gs).map(|(o, v)| o.map(|_| v.as_slice())).collect();
        return crate::cells::with_cell!(cfg.mode, C => backward_cell::<C, T>(&w, tape, &go, &gs, with_input));
    }
    crate::cells::with_cell!(cfg.mode, C => backward_cell::<C, T>(w, tape, grad_output, grad_states, with_input))
}

fn backward_cell<C: Cell, T: Float>(w: &Weights<T>, tape: &Tape<T>, grad_output: &[T], grad_states: &[Option<&[T]>], with_input: bool) -> Result<Gradients<T>> {
    let cfg = &w.config;
    let b = tape.batch_sizes[0];
    let d = cfg.directions();
    let ld = cfg.num_layers * d;
    let n: usize = tape.batch_sizes.iter().sum();
    let states = cfg.states();
    let (_, sw) = state_offsets(&states);
    let out_w = d * C::layout(cfg.sizes(0)).out;
    let mut ds = gather_states(&states, grad_states, ld, b, &tape.sorted_indices)?;
    // W_ih's gradient is written whole by `dir_backward` (a GEMM with beta 0), so its slot
    // is not zeroed first: for DeepBench's GRU with T = 1 that memset was a tenth of training.
    let mut grads = Weights::zeros_except(cfg, Slot::WeightIh)?;
    // The layer's output gradient: the caller's for the top layer (read in place), then the
    // layer above's input gradient.
    let mut owned: Option<Vec<T>> = None;
    let draw = tape.draw;
    for layer in (0..cfg.num_layers).rev() {
        let sizes = cfg.sizes(layer);
        let lt = &tape.layers[layer];
        let dy: &[T] = owned.as_deref().unwrap_or(grad_output);
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
                dy,
                out_w,
                col: dir * (out_w / d),
                ds: &mut ds[k * b * sw..(k + 1) * b * sw],
                sw,
                grad: &mut grads.params[k],
                dx: &mut dx,
                input_grad: with_input || layer > 0,
                zone: Zone::of(cfg, k, n, draw, true)?,
                precision: cfg.precision,
            })?;
        }
        // This layer's input was the layer below's output after dropout: the same mask.
        if layer > 0 && !cfg.dropout.is_zero() {
            dropout_layer(&mut dx, cfg, layer - 1, draw)?;
        }
        if let Some(v) = owned.replace(dx) {
            pool::recycle(v);
        }
    }
    let input = PackedSequence {
        data: owned.ok_or_else(no_layers)?,
        features: cfg.input_size,
        batch_sizes: tape.batch_sizes.clone(),
        sorted_indices: tape.sorted_indices.clone(),
        unsorted_indices: tape.unsorted_indices.clone(),
    };
    Ok(Gradients { input, states: scatter_states(cfg, &states, &ds, ld, b, &tape.unsorted_indices)?, params: grads })
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
    /// Whether `dx` is wanted (else only a cell's direct terms, `Layout::uses_input`, go there,
    /// and the products `dG W_x` are left out).
    input_grad: bool,
    zone: Option<Zone>,
    precision: Precision,
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
    let derived = with_derived::<C, T>(sz, a.p, a.precision)?;
    let (p, tp) = (derived.as_ref().unwrap_or(a.p), a.tape);
    let e = pointwise_params(p, &lay)?;
    // dxp and dr: each step's rows are cleared by the loop before the cell writes them.
    let mut dxp = reused("input projection gradients", &[n, gx])?;
    // Stage 0's product gradient is the input projection's and the only product
    // (`Cell::DR_IS_DXP`): dxp serves both, and the cells see an empty dr.
    let alias = C::DR_IS_DXP && lay.stages.len() == 1 && rw == gx;
    let mut dr = if alias { Vec::new() } else { reused("product gradients", &[n, rw])? };
    let ew = lay.de_width();
    // A row's pointwise-parameter gradients are summed per batch row in the loop (each
    // thread owns its rows): [B, ew], not [N, ew] written out and summed after it.
    let mut de = zeros("pointwise parameter gradients", &[b, ew])?;
    let plain = pack_products(p, &lay, if n <= smallgemm::DIRECT_MAX_ROWS { Pack::Direct } else { Pack::Plain }, false)?;
    let macs = n * (gx * inw + lay.product_macs());
    // dX = dxp W_x step by step in the loop (W_x packed once), or by one GEMM after it, as the
    // forward's input projection (`super::per_step_input`); then, as the forward, the per-step
    // products split by columns (`super::column_split`) or the loop by rows.
    let per_step_dx = a.input_grad && gx > 0 && super::per_step_input::<T>(b, n, gx * inw);
    let col_parts = if per_step_dx { 0 } else { super::column_split::<T>(b, n, lay.product_macs()) };
    let ranges = if col_parts > 0 { split::step_ranges(b, col_parts) } else { split::ranges(b, macs) };
    let kmax = lay.stages.iter().flatten().map(|p| p.k).max().unwrap_or(0);
    let mut dv_all = reused("product input gradients", &[if col_parts > 0 { b } else { 0 }, kmax])?;
    let w_x = if per_step_dx { Some(PackedB::try_plain(&slot(p, Slot::WeightIh, "input matrix")?[..gx * inw], gx, inw)?) } else { None };
    let failed = Failure::new();
    let l = BwdLoop::<C, T> {
        failed: &failed,
        sz,
        lay: &lay,
        soffs: &soffs,
        roffs: &roffs,
        batch_sizes: a.batch_sizes,
        off: &off,
        reverse: a.reverse,
        x: a.x,
        tape: tp,
        e,
        dy: a.dy,
        out_w: a.out_w,
        col: a.col,
        plain: &plain,
        w_x: w_x.as_ref(),
        sw,
        alias,
        dr_copy: match lay.stages.first() {
            Some(Some(pr)) if C::DR_IS_DXP && !alias => pr.rows.min(gx),
            _ => 0,
        },
        ds: Rows::new(a.ds),
        dxp: Rows::new(&mut dxp),
        dr: Rows::new(&mut dr),
        de: Rows::new(&mut de),
        dx: Rows::new(a.dx),
        zone: a.zone,
        q: a.precision,
        dv_all: Rows::new(&mut dv_all),
        _cell: PhantomData,
    };
    if col_parts > 0 {
        split::run_steps(&ranges, &l);
    } else {
        split::run_loop(&ranges, &l);
    }
    pool::recycle(dv_all);
    if let Some(e) = after_loop(failed, plain, w_x) {
        for v in [dxp, dr, de] {
            pool::recycle(v);
        }
        return Err(e);
    }
    // Weight gradients over all rows.
    let one = T::one();
    // The W_ih slot came unspecified (`Weights::zeros_except`): written whole here.
    if let (0, Some(gw)) = (gx, a.grad.get_mut(Slot::WeightIh)) {
        gw.fill(T::zero());
    }
    // A state product's rows that started from zero initial states add nothing: the first
    // step processed (step 0's rows, or the reverse direction's last step's) is left out of
    // its weight gradient (for one step from zero states, the whole GEMM; the slot stays as
    // `Weights::zeros` made it).
    let from_state = match (tp.zero_start, a.reverse) {
        (false, _) => 0..n,
        (true, false) => off[1]..n,
        (true, true) => 0..off[off.len() - 2],
    };
    // Stage k's product: its rows, their input (rows `ld` apart from `offset`), and its
    // output gradients (dxp when aliased).
    let stage_input = |pr: &Product| match pr.src {
        Src::State(i) => (from_state.clone(), &tp.s_prev, soffs[i], sw),
        Src::Tape { offset } => (0..n, &tp.tape, offset, tw),
    };
    let dr_all: &[T] = if alias { &dxp } else { &dr };
    // The one stage whose output gradients are dxp's columns (`Cell::DR_IS_DXP`: LSTM, RNN,
    // LSTM_PEEPHOLE, LSTM_CIFG):
    // its weight gradient shares W_ih's A (dxp^T, packed once for both) and its bias
    // gradient W_ih's bias's column sums of dxp.
    let shared = match lay.stages.first() {
        Some(Some(pr)) if alias && gx > 0 && roffs[0] == 0 && pr.rows == gx => Some(pr),
        _ => None,
    };
    // dxp's column sums over all rows (`gemm::shared_at_b`'s), when a bias gradient needs them.
    let mut sums = Vec::new();
    if gx > 0 {
        let mut gw = std::mem::take(a.grad.get_mut(Slot::WeightIh).ok_or_else(|| Error::MissingTensor("WeightIh slot".into()))?);
        gw.get_mut(gx * inw..).ok_or_else(|| Error::MissingTensor("WeightIh slot".into()))?.fill(T::zero());
        let mut gst = match shared {
            Some(pr) => Some(std::mem::take(a.grad.get_mut(pr.slot).ok_or_else(|| Error::MissingTensor(format!("{:?} slot", pr.slot)))?)),
            None => None,
        };
        if lay.input_bias || shared.is_some_and(|pr| pr.bias.is_some()) {
            sums = zeros("bias gradients", &[gx])?;
        }
        {
            let mut products = vec![AtB::try_new(0..n, Mat::try_new(a.x, n, inw)?, &mut gw[..gx * inw], inw)?];
            if let (Some(pr), Some(g)) = (shared, gst.as_mut()) {
                let (rows, src, offset, ld) = stage_input(pr);
                if !rows.is_empty() {
                    let v = Mat::with_ld(&src[rows.start * ld + offset..], rows.len(), pr.k, ld)?;
                    let c = g.get_mut(pr.offset..pr.offset + pr.rows * pr.k).ok_or_else(|| Error::MissingTensor(format!("{:?} slot", pr.slot)))?;
                    products.push(AtB::try_new(rows, v, c, pr.k)?);
                }
            }
            shared_at_b(Mat::try_new(&dxp, n, gx)?, &mut products, (!sums.is_empty()).then_some(&mut sums[..]))?;
        }
        *a.grad.get_mut(Slot::WeightIh).expect("taken above") = gw;
        if let (Some(pr), Some(g)) = (shared, gst) {
            *a.grad.get_mut(pr.slot).expect("taken above") = g;
        }
        if lay.input_bias {
            let gb = a.grad.get_mut(Slot::BiasIh).ok_or_else(|| Error::MissingTensor("BiasIh slot".into()))?;
            for (g, &v) in gb[..gx].iter_mut().zip(&sums) {
                *g += v;
            }
        }
        if a.input_grad && !per_step_dx {
            let w_x = slot(p, Slot::WeightIh, "input matrix")?;
            if n <= smallgemm::DIRECT_MAX_ROWS {
                // Few rows: W_ih read in place, not packed, into a scratch added to dX.
                let w_x = PackedB::try_direct(w_x, gx, inw)?;
                let mut dxn = reused("input gradients", &[n, inw])?;
                smallgemm::gemm_threaded(&w_x, &dxp, n, gx, &mut dxn, inw);
                for (d, &v) in a.dx.iter_mut().zip(&dxn) {
                    *d += v;
                }
                pool::recycle(dxn);
                w_x.recycle();
            } else {
                gemm(one, Mat::try_new(&dxp, n, gx)?, Op::N, Mat::try_new(&w_x[..gx * inw], gx, inw)?, Op::N, one, a.dx, inw);
            }
        }
    }
    for (k, stage) in lay.stages.iter().enumerate() {
        let Some(pr) = stage else { continue };
        let is_shared = k == 0 && shared.is_some();
        let (rows, src, offset, ld) = stage_input(pr);
        let gw = a.grad.get_mut(pr.slot).ok_or_else(|| Error::MissingTensor(format!("{:?} slot", pr.slot)))?;
        if !rows.is_empty() && !is_shared {
            // The product's inputs and gradients for those rows, at their row strides.
            let v = Mat::with_ld(&src[rows.start * ld + offset..], rows.len(), pr.k, ld)?;
            let drk = Mat::with_ld(&dr_all[rows.start * rw + roffs[k]..], rows.len(), pr.rows, rw)?;
            gemm(one, drk, Op::T, v, Op::N, T::zero(), &mut gw[pr.offset..pr.offset + pr.rows * pr.k], pr.k);
        }
        if let Some((bs, bo)) = pr.bias {
            let gb = a.grad.get_mut(bs).ok_or_else(|| Error::MissingTensor(format!("{bs:?} slot")))?;
            if is_shared {
                // The same sums, in the same order, as the rows' loop below gives.
                for (g, &v) in gb[bo..bo + pr.rows].iter_mut().zip(&sums) {
                    *g += v;
                }
            } else {
                for row in 0..n {
                    for (g, &v) in gb[bo..bo + pr.rows].iter_mut().zip(&dr_all[row * rw + roffs[k]..row * rw + roffs[k] + pr.rows]) {
                        *g += v;
                    }
                }
            }
        }
    }
    if lay.pointwise > 0 {
        let ge = a.grad.get_mut(Slot::Pointwise).ok_or_else(|| Error::MissingTensor("Pointwise slot".into()))?;
        let mut sums = vec![T::zero(); ew];
        super::col_sum_into(&de, ew, &mut sums);
        for b in lay.grad_blocks() {
            for (g, &v) in ge[b.param..b.param + b.len].iter_mut().zip(&sums[b.de..b.de + b.len]) {
                *g += v;
            }
        }
    }
    // The derived matrix's gradient (stored, as the GPU's) to the parameters it is made of;
    // it is no parameter itself, so its own gradient is left at zero.
    if let Some(d) = C::derived(sz) {
        let mut dw = std::mem::take(a.grad.get_mut(Slot::WeightHh).ok_or_else(|| Error::MissingTensor("WeightHh slot".into()))?);
        store(a.precision, &mut dw[..d.len]);
        let e = slot(p, Slot::Pointwise, "pointwise parameters")?;
        let ge = a.grad.get_mut(Slot::Pointwise).ok_or_else(|| Error::MissingTensor("Pointwise slot".into()))?;
        C::derive_backward(sz, e, &dw[..d.len], ge);
        dw.fill(T::zero());
        *a.grad.get_mut(Slot::WeightHh).expect("taken above") = dw;
    }
    // The GPU stores each weight gradient once, summed in f32, and dX after its product.
    if a.precision != Precision::F32 {
        for s in Slot::ALL {
            if let Some(x) = DirParams::get_mut(a.grad, s) {
                store(a.precision, x);
            }
        }
        store(a.precision, a.dx);
    }
    for v in [dxp, dr, de] {
        pool::recycle(v);
    }
    Ok(())
}

/// One layer-direction's backward time loop over a slice of the batch.
struct BwdLoop<'a, C, T: Float> {
    failed: &'a Failure,
    sz: Sizes,
    lay: &'a Layout,
    soffs: &'a [usize],
    roffs: &'a [usize],
    batch_sizes: &'a [usize],
    off: &'a [usize],
    reverse: bool,
    x: &'a [T],
    tape: &'a DirTape<T>,
    e: &'a [T],
    dy: &'a [T],
    out_w: usize,
    col: usize,
    plain: &'a [Option<PackedB<'a, T>>],
    /// `W_x` packed, when dX is made step by step.
    w_x: Option<&'a PackedB<'a, T>>,
    sw: usize,
    /// `dr` is `dxp` (`Cell::DR_IS_DXP`, one product): `dr` holds nothing, the cells get an
    /// empty one and the product reads `dxp`.
    alias: bool,
    /// With `Cell::DR_IS_DXP` and another product after stage 0 (not `alias`): how many of
    /// stage 0's product-gradient columns are copied from dxp after stage 0; else 0.
    dr_copy: usize,
    /// `[B, S]` and `[B, ew]` (the pointwise-parameter gradients summed over the steps) by
    /// batch row (this thread's rows); `[N, gx]`, `[N, rw]`, `[N, in]` by packed row.
    ds: Rows<'a, T>,
    dxp: Rows<'a, T>,
    dr: Rows<'a, T>,
    de: Rows<'a, T>,
    dx: Rows<'a, T>,
    zone: Option<Zone>,
    /// The storage precision (rounding where the GPU stores).
    q: Precision,
    /// Column split only: `[B, kmax]` one stage's product input gradients for every row.
    dv_all: Rows<'a, T>,
    _cell: PhantomData<fn() -> C>,
}

impl<C: Cell, T: Float> BwdLoop<'_, C, T> {
    /// Stage `k`'s pointwise backward of packed row `row` (its output gradient read at the
    /// direction's columns) over its gradient views (`dr` empty when `alias`), then each
    /// rounded where the GPU stores it, after stage 0 the `dr_copy` columns of dxp copied into
    /// dr. Both splits call it.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn backward_row(&self, k: usize, row: usize, ds: &mut [T], dtape: &mut [T], dxp: &mut [T], dr: &mut [T], de: &mut [T], dx: &mut [T]) {
        let (lay, tp, sw, tw, gx, inw) = (self.lay, self.tape, self.sw, self.lay.tape, self.lay.xp, self.sz.input);
        let ocol = row * self.out_w + self.col;
        C::backward(
            k,
            self.sz,
            BwdRow {
                x: &self.x[row * inw..(row + 1) * inw],
                xp: if tp.xp.is_empty() { &[] } else { &tp.xp[row * gx..(row + 1) * gx] },
                e: self.e,
                s_prev: &tp.s_prev[row * sw..(row + 1) * sw],
                tape: &tp.tape[row * tw..(row + 1) * tw],
                dout: &self.dy[ocol..ocol + lay.out],
                ds: &mut *ds,
                dtape,
                dxp: &mut *dxp,
                dr: &mut *dr,
                de: &mut *de,
                dx: &mut *dx,
            },
        );
        store(self.q, ds);
        store(self.q, dxp);
        if !self.alias {
            if k == 0 && self.dr_copy > 0 {
                let at = self.roffs[0];
                dr[at..at + self.dr_copy].copy_from_slice(&dxp[..self.dr_copy]);
            }
            store(self.q, dr);
        }
        store(self.q, de);
        store(self.q, dx);
    }
}

impl<C: Cell, T: Float> split::StepLoop for BwdLoop<'_, C, T> {
    /// The column split (see the forward's): per stage, the pointwise backward of this
    /// thread's rows, a barrier, the product `dv = dr_k R_k` for all the step's rows over this
    /// thread's panels, a barrier, and `dv` added to this thread's rows. Bitwise the row
    /// split's results.
    #[inline(always)]
    fn steps(&self, part: usize, parts: usize, mine: Range<usize>, bar: &split::StepBarrier) {
        let (lay, sz, sw, out_w) = (self.lay, self.sz, self.sw, self.out_w);
        let (gx, tw, inw, ew) = (lay.xp, lay.tape, sz.input, lay.de_width());
        let (_, rw) = lay.product_offsets();
        let kmax = lay.stages.iter().flatten().map(|p| p.k).max().unwrap_or(0);
        let (r0, nr) = (mine.start, mine.len());
        let hw = self.zone.map_or(0, |z| z.hw);
        let fail = |e: Error| {
            let _ = self.failed.set(e);
            bar.poison();
        };
        // The pointwise-parameter terms go straight into the batch rows' sums (`de`), except
        // where storage rounds (f16): each step's are rounded first (`de_step`).
        let de_step = rounds(self.q);
        let alloc = || -> Result<_> {
            Ok((scratch("tape gradients", &[nr, tw])?, scratch("zoneout gradients", &[nr, hw])?, scratch("pointwise parameter gradients", &[if de_step { nr } else { 0 }, ew])?))
        };
        let (mut dtape, mut zg, mut de) = match alloc() {
            Ok(v) => v,
            Err(e) => return fail(e),
        };
        let tape_products = lay.stages.iter().flatten().any(|p| matches!(p.src, Src::Tape { .. }));
        let panels: Vec<Range<usize>> = self.plain.iter().map(|p| p.as_ref().map_or(0..0, |pk| split::panel_range(pk.panels(), part, parts))).collect();
        for t in step_order(self.batch_sizes.len(), !self.reverse) {
            let rows = self.batch_sizes[t];
            let o = self.off[t];
            let my = r0.min(rows)..(r0 + nr).min(rows);
            let mr = my.len();
            // SAFETY (every `part` and `tail_ptr` below): between two barriers a thread writes
            // only its own rows, or its own panels' columns of `dv_all`; it reads other
            // threads' rows of dxp / dr only in the product phase, when nobody writes them.
            if tape_products {
                dtape[..mr * tw].fill(T::zero());
            }
            if de_step {
                de[..mr * ew].fill(T::zero());
            }
            for rr in my.clone() {
                clear_row::<C, T>(unsafe { self.dxp.part((o + rr) * gx, gx) });
                if !self.alias {
                    unsafe { self.dr.part((o + rr) * rw, rw) }.fill(T::zero());
                }
            }
            if let Some(z) = self.zone {
                for rr in my.clone() {
                    let ocol = (o + rr) * out_w + self.col;
                    z.backward_row(o + rr, unsafe { self.ds.part(rr * sw, hw) }, &mut zg[(rr - r0) * hw..(rr - r0 + 1) * hw], &self.dy[ocol..ocol + hw]);
                }
            }
            for k in (0..lay.stages.len()).rev() {
                for rr in my.clone() {
                    let (row, l) = (o + rr, rr - r0);
                    let dr: &mut [T] = if self.alias { &mut [] } else { unsafe { self.dr.part(row * rw, rw) } };
                    let de: &mut [T] = if de_step { &mut de[l * ew..(l + 1) * ew] } else { unsafe { self.de.part(rr * ew, ew) } };
                    self.backward_row(
                        k,
                        row,
                        unsafe { self.ds.part(rr * sw, sw) },
                        &mut dtape[l * tw..(l + 1) * tw],
                        unsafe { self.dxp.part(row * gx, gx) },
                        dr,
                        de,
                        unsafe { self.dx.part(row * inw, inw) },
                    );
                }
                let Some(pr) = lay.stages[k] else { continue };
                let Some(pk) = &self.plain[k] else { return fail(Error::InvalidConfig("internal: a product's matrix was not packed".into())) };
                // Every row's dr_k is final.
                if !bar.wait() {
                    return;
                }
                {
                    let (src, ld): (&[T], usize) = if self.alias { (unsafe { self.dxp.part(o * gx, rows * gx) }, gx) } else { (unsafe { self.dr.part(o * rw, rows * rw) }, rw) };
                    let (c, len) = unsafe { self.dv_all.tail_ptr(0) };
                    unsafe { pk.gemm_panels(&src[self.roffs[k]..], rows, ld, c, len, kmax, panels[k].clone()) };
                    if matches!(pr.src, Src::Tape { .. }) {
                        let (p0, p1) = (panels[k].start * smallgemm::NR, (panels[k].end * smallgemm::NR).min(pr.k));
                        if p1 > p0 {
                            for rr in 0..rows {
                                store(self.q, unsafe { self.dv_all.part(rr * kmax + p0, p1 - p0) });
                            }
                        }
                    }
                }
                // Every column of dv is made.
                if !bar.wait() {
                    return;
                }
                for rr in my.clone() {
                    let l = rr - r0;
                    let dv = unsafe { self.dv_all.part(rr * kmax, pr.k) };
                    let dst: &mut [T] = match pr.src {
                        Src::State(i) => unsafe { self.ds.part(rr * sw + self.soffs[i], pr.k) },
                        Src::Tape { offset } => &mut dtape[l * tw + offset..l * tw + offset + pr.k],
                    };
                    for (d, &g) in dst.iter_mut().zip(dv.iter()) {
                        *d += g;
                    }
                }
            }
            for rr in my.clone() {
                let l = rr - r0;
                if de_step {
                    let de_sum = unsafe { self.de.part(rr * ew, ew) };
                    for (a, &v) in de_sum.iter_mut().zip(&de[l * ew..(l + 1) * ew]) {
                        *a += v;
                    }
                }
                let ds = unsafe { self.ds.part(rr * sw, sw) };
                store(self.q, ds);
                if hw > 0 {
                    for (d, &g) in ds[..hw].iter_mut().zip(&zg[l * hw..(l + 1) * hw]) {
                        *d += g;
                    }
                }
            }
            // dv_all and the rows' dr / dxp are the next step's to write: every thread done
            // with this step's first.
            if !bar.wait() {
                return;
            }
        }
    }
}

impl<C: Cell, T: Float> split::RowLoop for BwdLoop<'_, C, T> {
    #[inline(always)]
    fn rows(&self, mine: Range<usize>) {
        let (lay, sz, sw, out_w) = (self.lay, self.sz, self.sw, self.out_w);
        let (gx, tw, inw, ew) = (lay.xp, lay.tape, sz.input, lay.de_width());
        let (_, rw) = lay.product_offsets();
        let kmax = lay.stages.iter().flatten().map(|p| p.k).max().unwrap_or(0);
        let (r0, nr) = (mine.start, mine.len());
        // As the column split's (`de_step`).
        let de_step = rounds(self.q);
        // SAFETY (every `part` below): this thread's state rows `r0..r0 + nr`, or packed rows
        // `o..o + rows` of one step, which no other thread touches.
        let ds = unsafe { self.ds.part(r0 * sw, nr * sw) };
        let alloc = || -> Result<_> {
            Ok((
                scratch("tape gradients", &[nr, tw])?,
                scratch("product input gradients", &[nr, kmax])?,
                scratch("zoneout gradients", &[nr, self.zone.map_or(0, |z| z.hw)])?,
                scratch("input gradients", &[if self.w_x.is_some() { nr } else { 0 }, inw])?,
                scratch("pointwise parameter gradients", &[if de_step { nr } else { 0 }, ew])?,
            ))
        };
        // Tape gradients are defined only where a product reads the tape (`BwdRow::dtape`).
        let tape_products = lay.stages.iter().flatten().any(|p| matches!(p.src, Src::Tape { .. }));
        let de_sum = unsafe { self.de.part(r0 * ew, nr * ew) };
        let (mut dtape, mut dv, mut zg, mut dx_step, mut de) = match alloc() {
            Ok(v) => v,
            Err(e) => {
                let _ = self.failed.set(e);
                return;
            }
        };
        for t in step_order(self.batch_sizes.len(), !self.reverse) {
            let rows = self.batch_sizes[t].saturating_sub(r0).min(nr);
            if rows == 0 {
                continue;
            }
            let o = self.off[t] + r0;
            if tape_products {
                dtape[..rows * tw].fill(T::zero());
            }
            let dxp = unsafe { self.dxp.part(o * gx, rows * gx) };
            let dr: &mut [T] = if self.alias { &mut [] } else { unsafe { self.dr.part(o * rw, rows * rw) } };
            clear_row::<C, T>(dxp);
            if !self.alias {
                dr.fill(T::zero());
            }
            if de_step {
                de[..rows * ew].fill(T::zero());
            }
            let dx = unsafe { self.dx.part(o * inw, rows * inw) };
            if let Some(z) = self.zone {
                // (`Zone::backward_row`; g is added to the previous h's gradient below.)
                let hw = z.hw;
                for rr in 0..rows {
                    let ocol = (o + rr) * out_w + self.col;
                    z.backward_row(o + rr, &mut ds[rr * sw..rr * sw + hw], &mut zg[rr * hw..(rr + 1) * hw], &self.dy[ocol..ocol + hw]);
                }
            }
            for k in (0..lay.stages.len()).rev() {
                for rr in 0..rows {
                    let drr: &mut [T] = if self.alias { &mut [] } else { &mut dr[rr * rw..(rr + 1) * rw] };
                    let der = if de_step { &mut de[rr * ew..(rr + 1) * ew] } else { &mut de_sum[rr * ew..(rr + 1) * ew] };
                    self.backward_row(
                        k,
                        o + rr,
                        &mut ds[rr * sw..(rr + 1) * sw],
                        &mut dtape[rr * tw..(rr + 1) * tw],
                        &mut dxp[rr * gx..(rr + 1) * gx],
                        drr,
                        der,
                        &mut dx[rr * inw..(rr + 1) * inw],
                    );
                }
                if let (Some(pr), Some(pk)) = (lay.stages[k], &self.plain[k]) {
                    // dv = dr_k R_k for the step's rows, to wherever the product's input came from.
                    let dr_src: &[T] = if self.alias { dxp } else { dr };
                    pk.gemm(&dr_src[self.roffs[k]..], rows, rw, &mut dv, pr.k);
                    // The GPU stores a tape-sourced dv (scratch); a state-sourced one (stage 0
                    // only: Layout::check) it adds to the state gradients before rounding, as
                    // the end of the step does here.
                    if matches!(pr.src, Src::Tape { .. }) {
                        store(self.q, &mut dv[..rows * pr.k]);
                    }
                    for rr in 0..rows {
                        let dst = match pr.src {
                            // Stage 0's (Layout::check): the gradient of the state before the step.
                            Src::State(i) => &mut ds[rr * sw + self.soffs[i]..rr * sw + self.soffs[i] + pr.k],
                            Src::Tape { offset } => &mut dtape[rr * tw + offset..rr * tw + offset + pr.k],
                        };
                        for (d, &g) in dst.iter_mut().zip(&dv[rr * pr.k..(rr + 1) * pr.k]) {
                            *d += g;
                        }
                    }
                }
            }
            if de_step {
                for (a, &v) in de_sum[..rows * ew].iter_mut().zip(&de[..rows * ew]) {
                    *a += v;
                }
            }
            store(self.q, &mut ds[..rows * sw]);
            if let Some(z) = self.zone {
                // zg is zero where the unit was not hit (set above): no mask needed.
                let hw = z.hw;
                for rr in 0..rows {
                    let (d, g) = (&mut ds[rr * sw..rr * sw + hw], &zg[rr * hw..(rr + 1) * hw]);
                    for j in 0..hw {
                        d[j] += g[j];
                    }
                }
            }
            // This step's rows of dX = dxp W_x (when made per step).
            if let Some(w) = self.w_x {
                w.gemm(&dxp[..rows * gx], rows, gx, &mut dx_step[..rows * inw], inw);
                for (v, &d) in dx.iter_mut().zip(&dx_step[..rows * inw]) {
                    *v += d;
                }
            }
        }
    }
}
