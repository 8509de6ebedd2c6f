//! The CPU GEMM: one generic call with row-major operands and optional transposes. f32
//! products of some size run our own blocked GEMM over the per-step products' micro-kernels
//! (`blocked_f32`); the rest (f64, small products, a machine with no SIMD kernel) run
//! `matrixmultiply`'s sgemm/dgemm (a transpose is only a swap of strides).
//!
//! Every size reaches the unsafe call checked: a [`Mat`] can only be built over a slice that
//! covers every element its rows, columns and leading dimension address, and [`gemm`] checks
//! the inner dimensions and the output against them.

use super::Float;
use crate::error::{Error, Result};

/// A row-major matrix view: `rows x cols`, element (r, c) at `data[r * ld + c]`.
///
/// The fields are private: the constructors check that `data` covers every element
/// addressed, so [`gemm`] can hand the view to unsafe code.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    ld: usize,
}

/// Elements a `rows x cols` view with leading dimension `ld` addresses (the last row needs
/// only `cols`); `None` on overflow.
fn span(rows: usize, cols: usize, ld: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1).checked_mul(ld)?.checked_add(cols)
}

impl<'a, T> Mat<'a, T> {
    /// A dense row-major `rows x cols` matrix.
    ///
    /// # Panics
    /// When `data` holds fewer than `rows * cols` elements; [`Mat::try_new`] returns an error.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Self {
        match Self::try_new(data, rows, cols) {
            Ok(m) => m,
            Err(e) => panic!("Mat::new: {e}"),
        }
    }

    /// A dense row-major `rows x cols` matrix, or a typed error when `data` is too short.
    pub fn try_new(data: &'a [T], rows: usize, cols: usize) -> Result<Self> {
        Self::with_ld(data, rows, cols, cols)
    }

    /// A `rows x cols` view with leading dimension `ld` (`ld >= cols`, the distance between
    /// rows in elements), or a typed error when `data` does not cover every element addressed.
    pub fn with_ld(data: &'a [T], rows: usize, cols: usize, ld: usize) -> Result<Self> {
        if ld < cols || ld > isize::MAX as usize {
            return Err(Error::InvalidConfig(format!("matrix view: leading dimension {ld} for {cols} columns")));
        }
        match span(rows, cols, ld) {
            Some(need) if need <= data.len() => Ok(Mat { data, rows, cols, ld }),
            need => Err(Error::LengthMismatch {
                what: format!("matrix view {rows} x {cols} (leading dimension {ld})"),
                shape: vec![rows, cols],
                expected: need.unwrap_or(usize::MAX),
                got: data.len(),
            }),
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Leading dimension (elements between rows).
    pub fn ld(&self) -> usize {
        self.ld
    }

    /// The underlying slice.
    pub fn data(&self) -> &'a [T] {
        self.data
    }
}

/// Whether an operand is used as is or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// As is.
    N,
    /// Transposed.
    T,
}

/// `C = alpha * op(A) op(B) + beta * C`, where `C` is dense row-major `m x n` with leading
/// dimension `ldc`. With `beta == 0`, C is overwritten without being read (NaN-safe).
///
/// # Panics
/// When the inner dimensions differ, `ldc < n`, or `c` does not cover `m x n` with `ldc`
/// (the operands are valid by construction, see [`Mat`]). [`try_gemm`] returns an error
/// instead.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Float>(alpha: T, a: Mat<'_, T>, opa: Op, b: Mat<'_, T>, opb: Op, beta: T, c: &mut [T], ldc: usize) {
    if let Err(e) = try_gemm(alpha, a, opa, b, opb, beta, c, ldc) {
        panic!("gemm: {e}");
    }
}

/// [`gemm`], with a typed error for mismatched sizes instead of a panic.
#[allow(clippy::too_many_arguments)]
pub fn try_gemm<T: Float>(
    alpha: T,
    a: Mat<'_, T>,
    opa: Op,
    b: Mat<'_, T>,
    opb: Op,
    beta: T,
    c: &mut [T],
    ldc: usize,
) -> Result<()> {
    // `Mat`'s constructors checked ld <= isize::MAX and that the data covers the view.
    let (m, k, rsa, csa) = match opa {
        Op::N => (a.rows, a.cols, a.ld as isize, 1isize),
        Op::T => (a.cols, a.rows, 1isize, a.ld as isize),
    };
    let (kb, n, rsb, csb) = match opb {
        Op::N => (b.rows, b.cols, b.ld as isize, 1isize),
        Op::T => (b.cols, b.rows, 1isize, b.ld as isize),
    };
    if k != kb {
        return Err(Error::ShapeMismatch { what: "gemm inner dimensions".into(), expected: vec![k], got: vec![kb] });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if ldc < n || ldc > isize::MAX as usize {
        return Err(Error::InvalidConfig(format!("gemm: leading dimension {ldc} of C for {n} columns")));
    }
    match span(m, n, ldc) {
        Some(need) if need <= c.len() => {}
        need => {
            return Err(Error::LengthMismatch {
                what: format!("gemm output {m} x {n} (leading dimension {ldc})"),
                shape: vec![m, n],
                expected: need.unwrap_or(usize::MAX),
                got: c.len(),
            })
        }
    }
    if k == 0 {
        // matrixmultiply handles k == 0 as C = beta*C; keep the NaN-safe overwrite for beta = 0.
        for r in 0..m {
            for x in &mut c[r * ldc..r * ldc + n] {
                *x = if beta == T::zero() { T::zero() } else { beta * *x };
            }
        }
        return Ok(());
    }
    if T::blocked_gemm(alpha, a, opa, b, opb, beta, c, ldc)? {
        return Ok(());
    }
    // SAFETY: A's view covers (m - 1) * rsa + (k - 1) * csa (its rows and columns in either
    // orientation, checked by `Mat`'s constructors), likewise B for k x n, C was checked just
    // above for m x n with ldc, and every stride fits in isize.
    unsafe {
        T::gemm_raw(m, k, n, alpha, a.data.as_ptr(), rsa, csa, b.data.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), ldc as isize, 1);
    }
    Ok(())
}

/// Fewest rows of `op(A)`, and multiply-adds, for [`blocked_f32`]: below them packing B costs
/// more than it saves (the engine's products over few rows read W in place instead).
const BLOCKED_MIN_ROWS: usize = 32;
const BLOCKED_MIN_MACS: usize = 1 << 20;

/// `C = op(A) op(B)` (`beta == 0`, C not read) or `C += op(A) op(B)` (`beta == 1`) through the
/// per-step products' micro-kernels (`smallgemm`): B packed into column panels once, the rows
/// of `op(A)` split across the time loops' threads ([`super::split`]), each thread's rows
/// packed a chunk at a time into the kernel's row blocks (a transpose costs nothing more) with
/// k in blocks whose panel groups stay in L1 ([`smallgemm::f32_gemm_kblocked`]). Each element of C
/// is one chain of FMAs in k order, so the results do not depend on the thread count.
/// On one core of the 2-core Ice Lake VM, for the engine's shapes, matrixmultiply's sgemm ran at
/// 55-65 GFLOP/s, this at 87-118 (MKL through PyTorch 113-124; ARCHITECTURE.md, "Our own GEMM").
///
/// Returns `Ok(false)`, doing nothing, for other `alpha`/`beta`, small products, or a machine
/// with only the portable kernel: the caller then uses matrixmultiply.
#[allow(clippy::too_many_arguments)]
pub(crate) fn blocked_f32(alpha: f32, a: Mat<'_, f32>, opa: Op, b: Mat<'_, f32>, opb: Op, beta: f32, c: &mut [f32], ldc: usize) -> Result<bool> {
    use super::smallgemm::{self, PackedB};
    let (m, k) = match opa {
        Op::N => (a.rows, a.cols),
        Op::T => (a.cols, a.rows),
    };
    let n = match opb {
        Op::N => b.cols,
        Op::T => b.rows,
    };
    let accumulate = beta == 1.0;
    if alpha != 1.0 || !(beta == 0.0 || accumulate) || m < BLOCKED_MIN_ROWS || m.saturating_mul(n).saturating_mul(k) < BLOCKED_MIN_MACS || !smallgemm::has_kblocked_f32() {
        return Ok(false);
    }
    let pb = match opb {
        Op::N => PackedB::try_plain_ld(b.data, k, n, b.ld)?,
        Op::T => PackedB::try_transposed_ld(b.data, n, k, b.ld)?,
    };
    let parts = super::split::ranges(m, m.saturating_mul(n).saturating_mul(k));
    let failed = super::Failure::new();
    let c_len = c.len();
    let shared = super::split::Rows::new(c);
    super::split::run(&parts, |mine| {
        // This thread's rows of op(A), packed a chunk at a time into the kernel's row blocks.
        let mut packed = match super::pool::try_reused("GEMM rows", smallgemm::packed_a_len(mine.len(), k)) {
            Ok(v) => v,
            Err(e) => {
                let _ = failed.set(e);
                return;
            }
        };
        let rows_at = match opa {
            Op::N => &a.data[mine.start * a.ld..],
            Op::T => &a.data[mine.start..],
        };
        // SAFETY: the parts' row ranges are disjoint, so their rows of C are; C was checked by
        // the caller to cover m rows of n at stride ldc.
        unsafe {
            let (cp, _) = shared.tail_ptr(0);
            debug_assert!((mine.end - 1) * ldc + n <= c_len);
            smallgemm::f32_gemm_kblocked(&pb, rows_at, a.ld, opa == Op::T, mine.len(), cp.add(mine.start * ldc), ldc, 0..pb.panels(), accumulate, &mut packed);
        }
        super::pool::recycle(packed);
    });
    pb.recycle();
    match failed.into_inner() {
        Some(e) => Err(e),
        None => Ok(true),
    }
}
