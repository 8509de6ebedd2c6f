//! The CPU GEMM: `matrixmultiply`'s sgemm/dgemm behind one generic call with row-major
//! operands and optional transposes (a transpose is only a swap of strides).

use super::Float;

/// A row-major matrix view: `rows x cols`, element (r, c) at `data[r * ld + c]`.
#[derive(Clone, Copy)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A dense row-major `rows x cols` matrix.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        debug_assert!(data.len() >= rows * cols);
        Mat { data, rows, cols, ld: cols }
    }
}

/// Whether an operand is used as is or transposed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    N,
    T,
}

/// `C = alpha * op(A) op(B) + beta * C`, where `C` is dense row-major `m x n` with leading
/// dimension `ldc`. With `beta == 0`, C is overwritten without being read (NaN-safe).
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Float>(
    alpha: T,
    a: Mat<'_, T>,
    opa: Op,
    b: Mat<'_, T>,
    opb: Op,
    beta: T,
    c: &mut [T],
    ldc: usize,
) {
    let (m, k, rsa, csa) = match opa {
        Op::N => (a.rows, a.cols, a.ld as isize, 1isize),
        Op::T => (a.cols, a.rows, 1isize, a.ld as isize),
    };
    let (kb, n, rsb, csb) = match opb {
        Op::N => (b.rows, b.cols, b.ld as isize, 1isize),
        Op::T => (b.cols, b.rows, 1isize, b.ld as isize),
    };
    assert_eq!(k, kb, "gemm inner dimensions");
    if m == 0 || n == 0 {
        return;
    }
    assert!(m == 0 || c.len() >= (m - 1) * ldc + n, "gemm output too small");
    if k == 0 {
        // matrixmultiply handles k == 0 as C = beta*C; keep the NaN-safe overwrite for beta = 0.
        for r in 0..m {
            for x in &mut c[r * ldc..r * ldc + n] {
                *x = if beta == T::zero() { T::zero() } else { beta * *x };
            }
        }
        return;
    }
    // SAFETY: the views were built from slices whose lengths cover every (row, col) addressed
    // with these strides (checked by `Mat::new` in debug and by the assert on C above).
    unsafe {
        T::gemm_raw(m, k, n, alpha, a.data.as_ptr(), rsa, csa, b.data.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), ldc as isize, 1);
    }
}
