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
    gemm_then_bias(alpha, a, opa, b, opb, beta, c, ldc, None)
}

/// `C = op(A) op(B)` (C not read), then `bias` added to each of C's rows: the same bits as
/// [`try_gemm`] (beta 0) followed by a pass adding `bias` (`cpu::add_bias`), but where our
/// blocked GEMM runs its kernels add it to the finished sums before their last store (the
/// forward's input projection up front: the serial pass over `[N, G*H]` cost about 3% of
/// DeepBench's LSTM H 512 forward).
///
/// # Errors
/// As [`try_gemm`]'s, and [`Error::LengthMismatch`] when `bias` is shorter than C's columns.
pub fn try_gemm_bias<T: Float>(a: Mat<'_, T>, opa: Op, b: Mat<'_, T>, opb: Op, c: &mut [T], ldc: usize, bias: Option<&[T]>) -> Result<()> {
    gemm_then_bias(T::one(), a, opa, b, opb, T::zero(), c, ldc, bias)
}

#[allow(clippy::too_many_arguments)]
fn gemm_then_bias<T: Float>(alpha: T, a: Mat<'_, T>, opa: Op, b: Mat<'_, T>, opb: Op, beta: T, c: &mut [T], ldc: usize, bias: Option<&[T]>) -> Result<()> {
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
    if let Some(bias) = bias.filter(|v| v.len() < n) {
        return Err(Error::LengthMismatch { what: "gemm bias".into(), shape: vec![n], expected: n, got: bias.len() });
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
    } else if T::blocked_gemm(alpha, a, opa, b, opb, beta, c, ldc, bias)? {
        return Ok(());
    } else {
        // SAFETY: A's view covers (m - 1) * rsa + (k - 1) * csa (its rows and columns in either
        // orientation, checked by `Mat`'s constructors), likewise B for k x n, C was checked just
        // above for m x n with ldc, and every stride fits in isize.
        unsafe {
            T::gemm_raw(m, k, n, alpha, a.data.as_ptr(), rsa, csa, b.data.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), ldc as isize, 1);
        }
    }
    super::add_bias_rows(c, m, ldc, n, bias);
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
/// With `bias` (at least C's columns, checked by the caller), the kernels add it to each row of
/// C before their last store ([`smallgemm::f32_gemm_kblocked_bias`]).
///
/// Returns `Ok(false)`, doing nothing, for other `alpha`/`beta`, small products, or a machine
/// with only the portable kernel: the caller then uses matrixmultiply.
#[allow(clippy::too_many_arguments)]
pub(crate) fn blocked_f32(alpha: f32, a: Mat<'_, f32>, opa: Op, b: Mat<'_, f32>, opb: Op, beta: f32, c: &mut [f32], ldc: usize, bias: Option<&[f32]>) -> Result<bool> {
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
    let c_len = c.len();
    let shared = super::split::Rows::new(c);
    // This thread's rows of op(A), packed a chunk at a time into the kernel's row blocks.
    let done = run_packed_rows(m, k, m.saturating_mul(n).saturating_mul(k), |mine, packed| {
        let rows_at = match opa {
            Op::N => &a.data[mine.start * a.ld..],
            Op::T => &a.data[mine.start..],
        };
        // SAFETY: the parts' row ranges are disjoint, so their rows of C are; C was checked by
        // the caller to cover m rows of n at stride ldc.
        unsafe {
            let (cp, _) = shared.tail_ptr(0);
            debug_assert!((mine.end - 1) * ldc + n <= c_len);
            smallgemm::f32_gemm_kblocked_bias(&pb, rows_at, a.ld, opa == Op::T, mine.len(), cp.add(mine.start * ldc), ldc, 0..pb.panels(), accumulate, bias, packed);
        }
    });
    pb.recycle();
    done.map(|()| true)
}

/// Runs `f(rows, buf)` on the time loops' threads, each with its share of `0..m` (as
/// [`super::split::ranges`] splits `macs` multiply-adds) and a buffer from the pool to pack
/// those rows of A into ([`super::smallgemm::packed_a_len`] for `k`); the first error met.
fn run_packed_rows(m: usize, k: usize, macs: usize, f: impl Fn(std::ops::Range<usize>, &mut Vec<f32>) + Sync) -> Result<()> {
    let parts = super::split::ranges(m, macs);
    let failed = super::Failure::new();
    super::split::run(&parts, |mine| {
        let mut buf = match super::pool::try_reused("GEMM rows", super::smallgemm::packed_a_len(mine.len(), k)) {
            Ok(v) => v,
            Err(e) => {
                let _ = failed.set(e);
                return;
            }
        };
        f(mine, &mut buf);
        super::pool::recycle(buf);
    });
    match failed.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One product of [`shared_at_b`]: `C = A[ks]^T B` (C overwritten) over rows `ks` of the
/// shared A, B holding as many rows. The fields are private: [`AtB::try_new`] checks B
/// against the rows, and [`shared_at_b`] C against A's columns.
pub struct AtB<'a, T> {
    ks: std::ops::Range<usize>,
    b: Mat<'a, T>,
    c: &'a mut [T],
    ldc: usize,
}

impl<'a, T> AtB<'a, T> {
    /// The product over rows `ks` of A and B's rows (`b.rows() == ks.len()`), into C with rows
    /// `ldc >= b.cols()` apart.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when B's rows are not `ks`'s count; [`Error::InvalidConfig`]
    /// for a `ldc` below B's columns.
    pub fn try_new(ks: std::ops::Range<usize>, b: Mat<'a, T>, c: &'a mut [T], ldc: usize) -> Result<Self> {
        if b.rows != ks.len() {
            return Err(Error::ShapeMismatch { what: "shared product's B rows".into(), expected: vec![ks.len()], got: vec![b.rows] });
        }
        if ldc < b.cols || ldc > isize::MAX as usize {
            return Err(Error::InvalidConfig(format!("shared product: leading dimension {ldc} of C for {} columns", b.cols)));
        }
        Ok(AtB { ks, b, c, ldc })
    }
}

/// The weight gradients of one layer-direction whose products share their output gradients
/// (and their bias gradients): for A `[k, m]`, each `C_i = A[ks_i]^T B_i` (`m x n_i`,
/// overwritten) and, with `sums`, `sums[j]` = column `j` of A summed over all k rows in order
/// from zero. In f32 where our blocked GEMM runs (`blocked_f32`'s conditions), each of the
/// threads' chunks of A's columns is packed once for every product and summed in the same
/// pass; else each product is one [`try_gemm`] and the sums one more pass. Either way each
/// element is the same chain of operations as that [`try_gemm`] (`A[ks]` transposed, beta 0)
/// and as adding A's rows in order (`cpu::col_sum_into` into zeros), whatever the threads.
///
/// # Errors
/// [`Error::ShapeMismatch`] or [`Error::LengthMismatch`] when a product's rows lie past A's,
/// its C does not cover `m x n_i`, or `sums` is shorter than `m`.
pub fn shared_at_b<T: Float>(a: Mat<'_, T>, products: &mut [AtB<'_, T>], mut sums: Option<&mut [T]>) -> Result<()> {
    let m = a.cols;
    for p in products.iter() {
        if p.ks.start > p.ks.end || p.ks.end > a.rows {
            return Err(Error::ShapeMismatch { what: format!("shared product's rows {:?}", p.ks), expected: vec![a.rows], got: vec![p.ks.end] });
        }
        match span(m, p.b.cols, p.ldc) {
            Some(need) if need <= p.c.len() => {}
            need => {
                return Err(Error::LengthMismatch { what: format!("shared product output {m} x {}", p.b.cols), shape: vec![m, p.b.cols], expected: need.unwrap_or(usize::MAX), got: p.c.len() });
            }
        }
    }
    if let Some(s) = &sums {
        if s.len() < m {
            return Err(Error::LengthMismatch { what: "shared product sums".into(), shape: vec![m], expected: m, got: s.len() });
        }
    }
    if T::blocked_shared_at_b(a, products, sums.as_deref_mut())? {
        return Ok(());
    }
    for p in products.iter_mut() {
        // (An empty range may start at A's end, past its data.)
        let rows = Mat::with_ld(a.data.get(p.ks.start * a.ld..).unwrap_or(&[]), p.ks.len(), m, a.ld)?;
        try_gemm(T::one(), rows, Op::T, p.b, Op::N, T::zero(), p.c, p.ldc)?;
    }
    if let Some(s) = sums {
        s[..m].fill(T::zero());
        for r in 0..a.rows {
            for (acc, &v) in s[..m].iter_mut().zip(&a.data[r * a.ld..r * a.ld + m]) {
                *acc += v;
            }
        }
    }
    Ok(())
}

/// [`shared_at_b`] through our blocked GEMM ([`blocked_f32`]'s kernels and conditions, its
/// multiply-adds summed over the products): each product's B packed, A's columns (the rows of
/// `A^T`) split across the time loops' threads, each thread's packed a chunk at a time for
/// every product, with their sums ([`smallgemm::f32_gemm_kblocked_shared`]). `Ok(false)`,
/// doing nothing, where [`blocked_f32`] would not run. The caller checked the sizes.
pub(crate) fn shared_at_b_f32(a: Mat<'_, f32>, products: &mut [AtB<'_, f32>], sums: Option<&mut [f32]>) -> Result<bool> {
    use super::smallgemm::{self, KProduct, PackedB};
    let (m, k) = (a.cols, a.rows);
    let macs = products.iter().fold(0usize, |t, p| t.saturating_add(m.saturating_mul(p.ks.len()).saturating_mul(p.b.cols)));
    if m < BLOCKED_MIN_ROWS || macs < BLOCKED_MIN_MACS || !smallgemm::has_kblocked_f32() {
        return Ok(false);
    }
    let packed: Vec<PackedB<'_, f32>> = products.iter().map(|p| PackedB::try_plain_ld(p.b.data, p.ks.len(), p.b.cols, p.b.ld)).collect::<Result<_>>()?;
    // A product over no rows is zero (beta 0): the kernels leave its C alone.
    for p in products.iter_mut().filter(|p| p.ks.is_empty()) {
        for r in 0..m {
            p.c[r * p.ldc..r * p.ldc + p.b.cols].fill(0.0);
        }
    }
    let outs: Vec<(super::split::Rows<'_, f32>, usize, usize)> = products.iter_mut().map(|p| (super::split::Rows::new(&mut *p.c), p.ldc, p.ks.start)).collect();
    let sums = sums.map(super::split::Rows::new);
    let done = run_packed_rows(m, k, macs, |mine, buf| {
        // SAFETY: the parts' row ranges of A^T are disjoint, so their rows of every C and
        // their sums are; each C was checked by the caller to cover m rows of n at its ldc.
        unsafe {
            let prods: Vec<KProduct<'_>> = outs
                .iter()
                .zip(&packed)
                .map(|((c, ldc, k0), pb)| KProduct { pb, k0: *k0, c: c.tail_ptr(0).0.add(mine.start * ldc), ldc: *ldc, panels: 0..pb.panels(), accumulate: false, bias: None })
                .collect();
            let my_sums = sums.as_ref().map(|s| s.part(mine.start, mine.len()));
            smallgemm::f32_gemm_kblocked_shared(&a.data[mine.start..], a.ld, true, mine.len(), k, &prods, my_sums, buf);
        }
    });
    for pb in packed {
        pb.recycle();
    }
    done.map(|()| true)
}
