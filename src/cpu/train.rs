//! CPU twins of the GPU training kit ([`crate::gpu::train`]): the reference the GPU ops are
//! tested against, generic over f32/f64 so finite differences can check the gradients.
//! Plain loops, and the CPU path's GEMM for the linear layer.
//!
//! Every function checks its slices against the sizes it is given and returns a typed
//! error ([`Error::LengthMismatch`], [`Error::InvalidConfig`] for ids and classes) instead of
//! panicking.

use super::gemm::{try_gemm, try_gemm_bias, Mat, Op};
use super::Float;
use crate::error::{check_len, Error, Result};
use crate::tensor::{checked_len, try_filled};

fn t<T: Float>(x: f64) -> T {
    T::from_f64(x)
}

/// The element count of `dims`, or a typed error when it overflows.
fn count(what: &str, dims: &[usize]) -> Result<usize> {
    checked_len::<u8>(what, dims)
}

/// Checks that `got` elements fill `dims` (overflow-safe).
fn check(what: &str, dims: &[usize], got: usize) -> Result<()> {
    count(what, dims)?;
    check_len(what, dims, got)
}

/// Checks that two slices have the same length.
fn same_len(what: &str, a: usize, b: usize) -> Result<()> {
    check_len(what, &[a], b)
}

/// `out[r, :] = table[ids[r], :]`; `table` is `[vocab, dim]`.
pub fn embedding_forward<T: Float>(table: &[T], dim: usize, ids: &[u32]) -> Result<Vec<T>> {
    if dim == 0 {
        return Err(Error::InvalidConfig("embedding dim must be positive".into()));
    }
    if !table.len().is_multiple_of(dim) {
        return Err(Error::LengthMismatch {
            what: "embedding table".into(),
            shape: vec![table.len() / dim, dim],
            expected: table.len() / dim * dim,
            got: table.len(),
        });
    }
    let vocab = table.len() / dim;
    let mut out = crate::tensor::try_with_capacity("embedding output", count("embedding output", &[ids.len(), dim])?)?;
    for (r, &id) in ids.iter().enumerate() {
        if id as usize >= vocab {
            return Err(Error::InvalidConfig(format!("token id {id} at row {r} is outside the vocabulary of {vocab}")));
        }
        out.extend_from_slice(&table[id as usize * dim..(id as usize + 1) * dim]);
    }
    Ok(out)
}

/// The table gradient `[vocab, dim]`: each id's row is the sum of its rows' gradients
/// (`grad_rows: [ids.len(), dim]`) in row order; the padding id's row stays zero.
pub fn embedding_backward<T: Float>(grad_rows: &[T], dim: usize, ids: &[u32], vocab: usize, padding: Option<u32>) -> Result<Vec<T>> {
    check("embedding row gradients", &[ids.len(), dim], grad_rows.len())?;
    if let Some((r, &id)) = ids.iter().enumerate().find(|&(_, &id)| id as usize >= vocab && Some(id) != padding) {
        return Err(Error::InvalidConfig(format!("token id {id} at row {r} is outside the vocabulary of {vocab}")));
    }
    let mut g = try_filled("embedding gradient", count("embedding gradient", &[vocab, dim])?, T::zero())?;
    for (r, &id) in ids.iter().enumerate() {
        if Some(id) == padding {
            continue;
        }
        for d in 0..dim {
            g[id as usize * dim + d] += grad_rows[r * dim + d];
        }
    }
    Ok(g)
}

/// `blocks` blocks `[rows, width]` as rows `[rows, blocks * width]`.
pub fn blocks_to_rows<T: Float>(src: &[T], blocks: usize, rows: usize, width: usize) -> Result<Vec<T>> {
    let len = count("blocks", &[blocks, rows, width])?;
    check_len("blocks", &[blocks, rows, width], src.len())?;
    let mut out = try_filled("rows", len, T::zero())?;
    for d in 0..blocks {
        for r in 0..rows {
            for j in 0..width {
                out[r * blocks * width + d * width + j] = src[(d * rows + r) * width + j];
            }
        }
    }
    Ok(out)
}

/// Checks a linear layer's `x: [rows, input]` and `params: [W (output x input) | b (output)]`;
/// returns W's length.
fn linear_sizes(x: usize, params: usize, rows: usize, input: usize, output: usize) -> Result<usize> {
    check("linear input", &[rows, input], x)?;
    let wl = count("linear weight", &[output, input])?;
    let pl = wl.checked_add(output).ok_or_else(|| Error::InvalidConfig("linear layer sizes overflow".into()))?;
    check_len("linear parameters [W | b]", &[pl], params)?;
    Ok(wl)
}

/// `y = x W^T + b`, `params` = `[W (out x in) | b (out)]`, `x: [rows, input]`.
pub fn linear_forward<T: Float>(x: &[T], params: &[T], rows: usize, input: usize, output: usize) -> Result<Vec<T>> {
    let wl = linear_sizes(x.len(), params.len(), rows, input, output)?;
    let (w, b) = params.split_at(wl);
    let mut y = try_filled("linear output", count("linear output", &[rows, output])?, T::zero())?;
    try_gemm_bias(Mat::try_new(x, rows, input)?, Op::N, Mat::try_new(w, output, input)?, Op::T, &mut y, output, Some(b))?;
    Ok(y)
}

/// Gradients of [`linear_forward`]: `([dW | db], dx)`, `dy: [rows, output]`.
pub fn linear_backward<T: Float>(x: &[T], params: &[T], dy: &[T], rows: usize, input: usize, output: usize) -> Result<(Vec<T>, Vec<T>)> {
    let wl = linear_sizes(x.len(), params.len(), rows, input, output)?;
    check("linear output gradient", &[rows, output], dy.len())?;
    let w = &params[..wl];
    let mut dp = try_filled("linear parameter gradient", params.len(), T::zero())?;
    let mut dx = try_filled("linear input gradient", x.len(), T::zero())?;
    let (dw, db) = dp.split_at_mut(wl);
    let dy_m = Mat::try_new(dy, rows, output)?;
    try_gemm(T::one(), dy_m, Op::T, Mat::try_new(x, rows, input)?, Op::N, T::zero(), dw, input)?;
    super::col_sum_into(dy, output, db);
    try_gemm(T::one(), dy_m, Op::N, Mat::try_new(w, output, input)?, Op::N, T::zero(), &mut dx, input)?;
    Ok((dp, dx))
}

/// A loss's mean over rows, its gradient with respect to the inputs, and correct predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct LossOutput<T> {
    /// The mean loss over rows.
    pub loss: T,
    /// The loss's gradient with respect to the inputs (logits or predictions), same layout.
    pub grad: Vec<T>,
    /// Rows predicted correctly.
    pub correct: usize,
}

/// Binary cross-entropy with logits (PyTorch's `BCEWithLogitsLoss`, mean); one target per
/// logit.
pub fn bce_with_logits<T: Float>(logits: &[T], targets: &[T]) -> Result<LossOutput<T>> {
    same_len("bce targets (one per logit)", logits.len(), targets.len())?;
    let n = logits.len() as f64;
    let mut loss = 0.0;
    let mut correct = 0;
    let grad = logits
        .iter()
        .zip(targets)
        .map(|(&z, &y)| {
            let (z, y) = (z.to_f64(), y.to_f64());
            loss += z.max(0.0) - z * y + (-z.abs()).exp().ln_1p();
            if (z > 0.0) == (y > 0.5) {
                correct += 1;
            }
            t((1.0 / (1.0 + (-z).exp()) - y) / n)
        })
        .collect();
    Ok(LossOutput { loss: t(loss / n), grad, correct })
}

/// Mean squared error (PyTorch's `MSELoss`, mean); one target per prediction.
pub fn mse<T: Float>(pred: &[T], targets: &[T]) -> Result<LossOutput<T>> {
    same_len("mse targets (one per prediction)", pred.len(), targets.len())?;
    let n = pred.len() as f64;
    let mut loss = 0.0;
    let grad = pred
        .iter()
        .zip(targets)
        .map(|(&p, &y)| {
            let e = (p - y).to_f64();
            loss += e * e;
            t(2.0 * e / n)
        })
        .collect();
    Ok(LossOutput { loss: t(loss / n), grad, correct: 0 })
}

/// Softmax cross-entropy over `classes` (PyTorch's `CrossEntropyLoss`, mean); correct counts
/// rows whose first arg-max is the target.
pub fn softmax_cross_entropy<T: Float>(logits: &[T], classes: usize, targets: &[u32]) -> Result<LossOutput<T>> {
    let rows = targets.len();
    if let Some(&c) = targets.iter().find(|&&c| c as usize >= classes) {
        return Err(Error::InvalidConfig(format!("class {c} is outside 0..{classes}")));
    }
    check("softmax logits [rows, classes]", &[rows, classes], logits.len())?;
    let mut loss = 0.0;
    let mut correct = 0;
    let mut grad = try_filled("softmax gradient", logits.len(), T::zero())?;
    for r in 0..rows {
        let z: Vec<f64> = logits[r * classes..(r + 1) * classes].iter().map(|v| v.to_f64()).collect();
        let mut best = 0;
        for c in 1..classes {
            if z[c] > z[best] {
                best = c;
            }
        }
        let m = z[best];
        let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
        let tc = targets[r] as usize;
        loss += s.ln() + m - z[tc];
        if best == tc {
            correct += 1;
        }
        for c in 0..classes {
            let g = (z[c] - m).exp() / s - if c == tc { 1.0 } else { 0.0 };
            grad[r * classes + c] = t(g / rows as f64);
        }
    }
    Ok(LossOutput { loss: t(loss / rows as f64), grad, correct })
}

/// The global norm of several gradients and the clipping scale `min(1, max / (norm + 1e-6))`
/// (PyTorch's `clip_grad_norm_`).
pub fn clip_scale<T: Float>(grads: &[&[T]], max_norm: Option<f64>) -> (f64, f64) {
    let norm = grads.iter().map(|g| g.iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>()).sum::<f64>().sqrt();
    let scale = match max_norm {
        Some(m) if norm > m => m / (norm + 1e-6),
        _ => 1.0,
    };
    (norm, scale)
}

/// Adam's state for one parameter group.
#[derive(Clone, Debug, Default)]
pub struct AdamState<T> {
    /// First moment, one per parameter.
    pub m: Vec<T>,
    /// Second moment, one per parameter.
    pub v: Vec<T>,
}

/// One Adam step (PyTorch's form) at step number `step` (1-based), gradients scaled by `scale`.
/// A state of another length than `params` (e.g. fresh) is reset to zeros.
#[allow(clippy::too_many_arguments)]
pub fn adam_step<T: Float>(params: &mut [T], grads: &[T], st: &mut AdamState<T>, step: u32, scale: f64, lr: f64, beta1: f64, beta2: f64, eps: f64) -> Result<()> {
    same_len("adam gradients (one per parameter)", params.len(), grads.len())?;
    if st.m.len() != params.len() || st.v.len() != params.len() {
        st.m = try_filled("adam m", params.len(), T::zero())?;
        st.v = try_filled("adam v", params.len(), T::zero())?;
    }
    let bc1 = 1.0 - beta1.powi(step as i32);
    let bc2 = 1.0 - beta2.powi(step as i32);
    for i in 0..params.len() {
        let g = grads[i].to_f64() * scale;
        let m = beta1 * st.m[i].to_f64() + (1.0 - beta1) * g;
        let v = beta2 * st.v[i].to_f64() + (1.0 - beta2) * g * g;
        st.m[i] = t(m);
        st.v[i] = t(v);
        params[i] = t(params[i].to_f64() - (lr / bc1) * m / (v.sqrt() / bc2.sqrt() + eps));
    }
    Ok(())
}

/// One SGD step with momentum (PyTorch's form, no dampening): `buf = mu buf + g; w -= lr buf`.
/// A buffer of another length than `params` (e.g. fresh) is reset to zeros.
pub fn sgd_step<T: Float>(params: &mut [T], grads: &[T], buf: &mut Vec<T>, scale: f64, lr: f64, momentum: f64) -> Result<()> {
    same_len("sgd gradients (one per parameter)", params.len(), grads.len())?;
    if buf.len() != params.len() {
        *buf = try_filled("sgd momentum", params.len(), T::zero())?;
    }
    for i in 0..params.len() {
        let b = momentum * buf[i].to_f64() + grads[i].to_f64() * scale;
        buf[i] = t(b);
        params[i] = t(params[i].to_f64() - lr * b);
    }
    Ok(())
}

/// The drop threshold for probability `p`: an element is dropped when its hash is below it.
pub fn dropout_threshold(p: f32) -> u32 {
    crate::masks::threshold(p)
}

/// Checks a dropout probability (`0 <= p < 1`) and an element count the mask's 32-bit
/// element index can address.
fn check_dropout(n: usize, p: f32) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::InvalidConfig(format!("dropout probability {p} is outside [0, 1)")));
    }
    if u32::try_from(n).is_err() {
        return Err(Error::InvalidConfig(format!("dropout over {n} elements: the mask indexes at most 2^32 - 1")));
    }
    Ok(())
}

/// The kept-element mask of [`crate::gpu::train::OpBuilder::dropout`] for `n` elements.
pub fn dropout_mask(n: usize, p: f32, seed: u32, counter: u32) -> Result<Vec<bool>> {
    check_dropout(n, p)?;
    let th = dropout_threshold(p);
    let mut mask = crate::tensor::try_with_capacity("dropout mask", n)?;
    mask.extend((0..n as u32).map(|i| !crate::masks::hit(i, seed, counter, th)));
    Ok(mask)
}

/// Inverted dropout on the CPU: kept elements scaled by `1 / (1 - p)`.
pub fn dropout<T: Float>(x: &[T], p: f32, seed: u32, counter: u32) -> Result<Vec<T>> {
    let mut v = crate::tensor::try_with_capacity("dropout output", x.len())?;
    v.extend_from_slice(x);
    dropout_in_place(&mut v, p, seed, counter)?;
    Ok(v)
}

/// [`dropout`] in place (the GPU's dropout between layers, and its backward: the CPU twin).
pub(crate) fn dropout_in_place<T: Float>(x: &mut [T], p: f32, seed: u32, counter: u32) -> Result<()> {
    check_dropout(x.len(), p)?;
    let (th, scale) = (dropout_threshold(p), t::<T>(1.0 / (1.0 - p as f64)));
    for (i, v) in x.iter_mut().enumerate() {
        *v = if crate::masks::hit(i as u32, seed, counter, th) { T::zero() } else { *v * scale };
    }
    Ok(())
}
