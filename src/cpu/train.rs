//! CPU twins of the GPU training kit ([`crate::gpu::train`]): the reference the GPU ops are
//! tested against, generic over f32/f64 so finite differences can check the gradients.
//! Plain loops, and the CPU path's GEMM for the linear layer.

use super::gemm::{gemm, Mat, Op};
use super::Float;
use crate::error::{Error, Result};

fn t<T: Float>(x: f64) -> T {
    T::from_f64(x)
}

/// `out[r, :] = table[ids[r], :]`.
pub fn embedding_forward<T: Float>(table: &[T], dim: usize, ids: &[u32]) -> Result<Vec<T>> {
    let vocab = table.len() / dim.max(1);
    let mut out = Vec::with_capacity(ids.len() * dim);
    for (r, &id) in ids.iter().enumerate() {
        if id as usize >= vocab {
            return Err(Error::InvalidConfig(format!("token id {id} at row {r} is outside the vocabulary of {vocab}")));
        }
        out.extend_from_slice(&table[id as usize * dim..(id as usize + 1) * dim]);
    }
    Ok(out)
}

/// The table gradient: each id's row is the sum of its rows' gradients in row order; the
/// padding id's row stays zero.
pub fn embedding_backward<T: Float>(grad_rows: &[T], dim: usize, ids: &[u32], vocab: usize, padding: Option<u32>) -> Vec<T> {
    let mut g = vec![T::zero(); vocab * dim];
    for (r, &id) in ids.iter().enumerate() {
        if Some(id) == padding {
            continue;
        }
        for d in 0..dim {
            g[id as usize * dim + d] += grad_rows[r * dim + d];
        }
    }
    g
}

/// `blocks` blocks `[rows, width]` as rows `[rows, blocks * width]`.
pub fn blocks_to_rows<T: Float>(src: &[T], blocks: usize, rows: usize, width: usize) -> Vec<T> {
    let mut out = vec![T::zero(); blocks * rows * width];
    for d in 0..blocks {
        for r in 0..rows {
            for j in 0..width {
                out[r * blocks * width + d * width + j] = src[(d * rows + r) * width + j];
            }
        }
    }
    out
}

/// `y = x W^T + b`, `params` = `[W (out x in) | b (out)]`.
pub fn linear_forward<T: Float>(x: &[T], params: &[T], rows: usize, input: usize, output: usize) -> Vec<T> {
    let (w, b) = params.split_at(output * input);
    let mut y = vec![T::zero(); rows * output];
    gemm(T::one(), Mat::new(x, rows, input), Op::N, Mat::new(w, output, input), Op::T, T::zero(), &mut y, output);
    super::add_bias(&mut y, output, Some(b));
    y
}

/// Gradients of [`linear_forward`]: `([dW | db], dx)`.
pub fn linear_backward<T: Float>(x: &[T], params: &[T], dy: &[T], rows: usize, input: usize, output: usize) -> (Vec<T>, Vec<T>) {
    let w = &params[..output * input];
    let mut dp = vec![T::zero(); output * input + output];
    let mut dx = vec![T::zero(); rows * input];
    let (dw, db) = dp.split_at_mut(output * input);
    gemm(T::one(), Mat::new(dy, rows, output), Op::T, Mat::new(x, rows, input), Op::N, T::zero(), dw, input);
    super::col_sum_into(dy, output, db);
    gemm(T::one(), Mat::new(dy, rows, output), Op::N, Mat::new(w, output, input), Op::N, T::zero(), &mut dx, input);
    (dp, dx)
}

/// A loss's mean over rows, its gradient with respect to the inputs, and correct predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct LossOutput<T> {
    pub loss: T,
    pub grad: Vec<T>,
    pub correct: usize,
}

/// Binary cross-entropy with logits (PyTorch's `BCEWithLogitsLoss`, mean).
pub fn bce_with_logits<T: Float>(logits: &[T], targets: &[T]) -> LossOutput<T> {
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
    LossOutput { loss: t(loss / n), grad, correct }
}

/// Mean squared error (PyTorch's `MSELoss`, mean).
pub fn mse<T: Float>(pred: &[T], targets: &[T]) -> LossOutput<T> {
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
    LossOutput { loss: t(loss / n), grad, correct: 0 }
}

/// Softmax cross-entropy over `classes` (PyTorch's `CrossEntropyLoss`, mean); correct counts
/// rows whose first arg-max is the target.
pub fn softmax_cross_entropy<T: Float>(logits: &[T], classes: usize, targets: &[u32]) -> Result<LossOutput<T>> {
    let rows = targets.len();
    if let Some(&c) = targets.iter().find(|&&c| c as usize >= classes) {
        return Err(Error::InvalidConfig(format!("class {c} is outside 0..{classes}")));
    }
    let mut loss = 0.0;
    let mut correct = 0;
    let mut grad = vec![T::zero(); rows * classes];
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
    pub m: Vec<T>,
    pub v: Vec<T>,
}

/// One Adam step (PyTorch's form) at step number `step` (1-based), gradients scaled by `scale`.
#[allow(clippy::too_many_arguments)]
pub fn adam_step<T: Float>(params: &mut [T], grads: &[T], st: &mut AdamState<T>, step: u32, scale: f64, lr: f64, beta1: f64, beta2: f64, eps: f64) {
    if st.m.len() != params.len() {
        st.m = vec![T::zero(); params.len()];
        st.v = vec![T::zero(); params.len()];
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
}

/// One SGD step with momentum (PyTorch's form, no dampening): `buf = mu buf + g; w -= lr buf`.
pub fn sgd_step<T: Float>(params: &mut [T], grads: &[T], buf: &mut Vec<T>, scale: f64, lr: f64, momentum: f64) {
    if buf.len() != params.len() {
        *buf = vec![T::zero(); params.len()];
    }
    for i in 0..params.len() {
        let b = momentum * buf[i].to_f64() + grads[i].to_f64() * scale;
        buf[i] = t(b);
        params[i] = t(params[i].to_f64() - lr * b);
    }
}

fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The drop threshold for probability `p`: an element is dropped when its hash is below it.
pub fn dropout_threshold(p: f32) -> u32 {
    ((p as f64) * 4_294_967_296.0).min(u32::MAX as f64) as u32
}

/// The kept-element mask of [`crate::gpu::train::OpBuilder::dropout`] for `n` elements.
pub fn dropout_mask(n: usize, p: f32, seed: u32, counter: u32) -> Vec<bool> {
    let th = dropout_threshold(p);
    (0..n as u32).map(|i| hash32(hash32(i ^ seed).wrapping_add(counter.wrapping_mul(0x9e37_79b9))) >= th).collect()
}

/// Inverted dropout on the CPU: kept elements scaled by `1 / (1 - p)`.
pub fn dropout<T: Float>(x: &[T], p: f32, seed: u32, counter: u32) -> Vec<T> {
    let scale = t::<T>(1.0 / (1.0 - p as f64));
    x.iter().zip(dropout_mask(x.len(), p, seed, counter)).map(|(&v, keep)| if keep { v * scale } else { T::zero() }).collect()
}
