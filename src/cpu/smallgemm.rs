//! The per-step product of the recurrence, `C[rows, n] = A[rows, k] · B[k, n]`, with few rows
//! (the batch) and a B (W_hh or its transpose) that is the same at every step.
//!
//! A general GEMM packs B on every call; at one call per step that packing costs more than the
//! arithmetic. Here B is packed once per layer-direction into panels of `NR` columns
//! (`panel[p][k][NR]`, the last one zero-padded) and a register-blocked micro-kernel streams a
//! panel from L1 for a block of rows. On x86-64 the f32 kernel is compiled for AVX-512 and
//! AVX2+FMA and chosen at run time; other types and machines use the portable kernel.

use super::Float;
use crate::error::{Error, Result};
use crate::tensor::checked_len;
use std::ops::Range;

/// Columns per panel.
pub const NR: usize = 16;

/// B packed into column panels, ready for [`PackedB::gemm`].
#[derive(Clone, Debug, Default)]
pub struct PackedB<T> {
    k: usize,
    n: usize,
    data: Vec<T>,
}

impl<T: Float> PackedB<T> {
    /// `B = W^T` for a row-major `W[n, k]` (forward: `h W_hh^T`): each row of W is read
    /// sequentially into one column of its panel (packing through a per-element accessor cost
    /// as much as a T = 1 step's product).
    ///
    /// # Panics
    /// When `w` holds fewer than `n * k` elements, or the packed size overflows or cannot be
    /// allocated; [`PackedB::try_transposed`] returns an error instead.
    pub fn transposed(w: &[T], n: usize, k: usize) -> Self {
        Self::try_transposed(w, n, k).unwrap_or_else(|e| panic!("PackedB::transposed: {e}"))
    }

    /// [`PackedB::transposed`] with typed errors (a short `w`, a packed size that overflows or
    /// cannot be allocated).
    pub fn try_transposed(w: &[T], n: usize, k: usize) -> Result<Self> {
        let len = packed_len::<T>(w.len(), n, k)?;
        let mut data = super::pool::try_zeroed("packed weights", len)?;
        if len == 0 {
            return Ok(PackedB { k, n, data });
        }
        for (p, panel) in data.chunks_exact_mut(k * NR).enumerate() {
            for c in 0..NR.min(n - p * NR) {
                let row = &w[(p * NR + c) * k..(p * NR + c + 1) * k];
                for (dst, &v) in panel.chunks_exact_mut(NR).zip(row) {
                    dst[c] = v;
                }
            }
        }
        Ok(PackedB { k, n, data })
    }

    /// `B = W` for a row-major `W[k, n]` (backward: `dG W_hh`): each panel row is a
    /// contiguous piece of a row of W.
    ///
    /// # Panics
    /// When `w` holds fewer than `k * n` elements, or the packed size overflows or cannot be
    /// allocated; [`PackedB::try_plain`] returns an error instead.
    pub fn plain(w: &[T], k: usize, n: usize) -> Self {
        Self::try_plain(w, k, n).unwrap_or_else(|e| panic!("PackedB::plain: {e}"))
    }

    /// [`PackedB::plain`] with typed errors.
    pub fn try_plain(w: &[T], k: usize, n: usize) -> Result<Self> {
        let len = packed_len::<T>(w.len(), n, k)?;
        let mut data = super::pool::try_zeroed("packed weights", len)?;
        if len == 0 {
            return Ok(PackedB { k, n, data });
        }
        for (p, panel) in data.chunks_exact_mut(k * NR).enumerate() {
            let (j0, valid) = (p * NR, NR.min(n - p * NR));
            for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                dst[..valid].copy_from_slice(&w[kk * n + j0..kk * n + j0 + valid]);
            }
        }
        Ok(PackedB { k, n, data })
    }

    /// Hands the packed data back to the CPU path's buffer pool.
    pub fn recycle(self) {
        super::pool::recycle(self.data);
    }

    /// Number of column panels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// `C[r, j] = sum_k A[r, k] B[k, j]` for `r < rows`, overwriting C (row stride `ldc`);
    /// A has row stride `lda`.
    ///
    /// # Panics
    /// When A or C do not cover the rows addressed.
    pub fn gemm(&self, a: &[T], rows: usize, lda: usize, c: &mut [T], ldc: usize) {
        if rows == 0 || self.n == 0 {
            return;
        }
        self.check(a, rows, lda, c, ldc);
        T::packed_gemm(self, a, rows, lda, c, ldc);
    }

    /// `C[r, j] = sum_k A[r, k] B[k, j]` for `r < rows` and the columns of panels `panels`
    /// only (`p * NR .. min((p + 1) * NR, n)` for each p), overwriting them; C's other columns
    /// are not touched, so threads can write disjoint panel ranges of one C. Each element is
    /// the same chain of operations as [`PackedB::gemm`]'s.
    ///
    /// # Panics
    /// When A does not cover the rows addressed, `c_len` does not cover `rows` rows of `n` at
    /// stride `ldc`, or the panels are out of range.
    ///
    /// # Safety
    /// `c` must be valid for writes of `c_len` elements, and no other thread may read or write
    /// these panels' columns of those rows meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm_panels(&self, a: &[T], rows: usize, lda: usize, c: *mut T, c_len: usize, ldc: usize, panels: Range<usize>) {
        if rows == 0 || self.n == 0 || panels.is_empty() {
            return;
        }
        let need = |ld: usize, w: usize| (rows - 1).checked_mul(ld).and_then(|v| v.checked_add(w));
        assert!(need(lda, self.k).is_some_and(|v| v <= a.len()), "PackedB::gemm_panels: A too small for {rows} rows of {} at stride {lda}", self.k);
        assert!(need(ldc, self.n).is_some_and(|v| v <= c_len), "PackedB::gemm_panels: C too small for {rows} rows of {} at stride {ldc}", self.n);
        assert!(panels.end <= self.panels(), "PackedB::gemm_panels: panels {panels:?} of {}", self.panels());
        T::packed_gemm_panels(self, a, rows, lda, c, ldc, panels);
    }

    /// Panics unless A covers `rows` rows of `k` at stride `lda` and C `rows` rows of `n` at
    /// stride `ldc`: what the kernels, some of them unsafe, address.
    fn check(&self, a: &[T], rows: usize, lda: usize, c: &[T], ldc: usize) {
        let need = |ld: usize, w: usize| (rows - 1).checked_mul(ld).and_then(|v| v.checked_add(w));
        assert!(need(lda, self.k).is_some_and(|v| v <= a.len()), "PackedB::gemm: A too small for {rows} rows of {} at stride {lda}", self.k);
        assert!(need(ldc, self.n).is_some_and(|v| v <= c.len()), "PackedB::gemm: C too small for {rows} rows of {} at stride {ldc}", self.n);
    }
}

/// The packed length of B with `n` columns and `k` rows, checking that W (`w_len` elements)
/// holds `n * k`.
fn packed_len<T>(w_len: usize, n: usize, k: usize) -> Result<usize> {
    if n.checked_mul(k).is_none_or(|nk| nk > w_len) {
        return Err(Error::LengthMismatch { what: "packed weights' W".into(), shape: vec![n, k], expected: n.saturating_mul(k), got: w_len });
    }
    checked_len::<T>("packed weights", &[n.div_ceil(NR), k, NR])
}

/// One panel for a block of `MR` rows (`mr <= MR` valid).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
///
/// # Safety
/// C must cover rows `r0..r0 + mr` at stride `ldc` for the panel's columns, and nothing else
/// may access those elements meanwhile.
unsafe fn block<T: Float, const MR: usize, const FMA: bool>(pb: &PackedB<T>, p: usize, a: &[T], r0: usize, mr: usize, lda: usize, c: *mut T, ldc: usize) {
    let k = pb.k;
    let panel = &pb.data[p * k * NR..(p + 1) * k * NR];
    let mut acc = [[T::zero(); NR]; MR];
    // Rows past the edge repeat the last valid row; their results are not stored.
    let rows: [&[T]; MR] = std::array::from_fn(|i| {
        let start = (r0 + i.min(mr - 1)) * lda;
        &a[start..start + k]
    });
    for (kk, b) in panel.chunks_exact(NR).enumerate() {
        let b: &[T; NR] = b.try_into().expect("panel row");
        for i in 0..MR {
            // SAFETY: kk < k and every row slice has length k.
            let av = unsafe { *rows[i].get_unchecked(kk) };
            for j in 0..NR {
                acc[i][j] = if FMA { T::fma(av, b[j], acc[i][j]) } else { acc[i][j] + av * b[j] };
            }
        }
    }
    let j0 = p * NR;
    let nv = NR.min(pb.n - j0);
    for (i, row) in acc.iter().enumerate().take(mr) {
        std::ptr::copy_nonoverlapping(row.as_ptr(), c.add((r0 + i) * ldc + j0), nv);
    }
}

/// # Safety
/// As [`block`], for every row and the panels' columns.
#[inline(always)]
unsafe fn run<T: Float, const MR: usize, const FMA: bool>(pb: &PackedB<T>, a: &[T], rows: usize, lda: usize, c: *mut T, ldc: usize, panels: Range<usize>) {
    for p in panels {
        let mut r0 = 0;
        while r0 < rows {
            let mr = MR.min(rows - r0);
            block::<T, MR, FMA>(pb, p, a, r0, mr, lda, c, ldc);
            r0 += MR;
        }
    }
}

/// The portable kernel (any float, any machine).
///
/// # Panics
/// When A or C do not cover the rows addressed (as [`PackedB::gemm`]).
pub fn portable<T: Float>(pb: &PackedB<T>, a: &[T], rows: usize, lda: usize, c: &mut [T], ldc: usize) {
    if rows == 0 || pb.n == 0 {
        return;
    }
    pb.check(a, rows, lda, c, ldc);
    // SAFETY: checked just above that A and C cover every element addressed.
    unsafe { run::<T, 4, false>(pb, a, rows, lda, c.as_mut_ptr(), ldc, 0..pb.panels()) }
}

/// [`portable`] over the columns of `panels` only, into a raw C (see [`PackedB::gemm_panels`]).
///
/// # Safety
/// As [`PackedB::gemm_panels`].
pub unsafe fn portable_panels<T: Float>(pb: &PackedB<T>, a: &[T], rows: usize, lda: usize, c: *mut T, ldc: usize, panels: Range<usize>) {
    run::<T, 4, false>(pb, a, rows, lda, c, ldc, panels)
}

/// [`f32_gemm`] over the columns of `panels` only, into a raw C (see [`PackedB::gemm_panels`]).
///
/// # Safety
/// As [`PackedB::gemm_panels`].
pub unsafe fn f32_gemm_panels(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, panels: Range<usize>) {
    match f32_kernel() {
        // SAFETY (the kernel's own): its target features were detected.
        Some(kernel) => kernel(pb, a, rows, lda, c, ldc, panels),
        None => run::<f32, 4, false>(pb, a, rows, lda, c, ldc, panels),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Stores `nv` lanes of a 16-wide row of C.
    #[inline(always)]
    unsafe fn store_row(dst: *mut f32, v: &[f32; NR], nv: usize) {
        std::ptr::copy_nonoverlapping(v.as_ptr(), dst, nv);
    }

    /// One block: `MR` rows of C against `NP` panels side by side (columns `p * NR ..
    /// (p + NP) * NR`), `MR x NP` zmm accumulators, each A element broadcast once for all
    /// `NP` panels. Every element of C is the same chain of FMAs in k order whatever the
    /// block shape, so the shapes differ in speed only, never in bits.
    #[inline(always)]
    unsafe fn block512<const MR: usize, const NP: usize>(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, p: usize) {
        let k = pb.k;
        let panel = pb.data.as_ptr().add(p * k * NR);
        let mut r0 = 0;
        while r0 < rows {
            let mr = MR.min(rows - r0);
            // Rows past the edge repeat the last valid row; their results are not stored.
            let ap: [*const f32; MR] = std::array::from_fn(|i| a.as_ptr().add((r0 + i.min(mr - 1)) * lda));
            let mut acc = [[_mm512_setzero_ps(); NP]; MR];
            for kk in 0..k {
                let b: [__m512; NP] = std::array::from_fn(|q| _mm512_loadu_ps(panel.add(q * k * NR + kk * NR)));
                for i in 0..MR {
                    let av = _mm512_set1_ps(*ap[i].add(kk));
                    for q in 0..NP {
                        acc[i][q] = _mm512_fmadd_ps(av, b[q], acc[i][q]);
                    }
                }
            }
            for (i, row_acc) in acc.iter().enumerate().take(mr) {
                for (q, v) in row_acc.iter().enumerate() {
                    let j0 = (p + q) * NR;
                    let mut row = [0f32; NR];
                    _mm512_storeu_ps(row.as_mut_ptr(), *v);
                    store_row(c.add((r0 + i) * ldc + j0), &row, NR.min(pb.n - j0));
                }
            }
            r0 += MR;
        }
    }

    /// 8 rows x 48 columns per block (three panels): 24 zmm accumulators, enough to hide the
    /// FMA latency on both FMA ports (the first kernel's 8 x 16, one accumulator per row,
    /// reached 112 GFLOP/s on one core of the AVX-512 development VM; 8 x 32 148, 8 x 48 152,
    /// MKL's sgemm on the same shape 160). The last one or two panels take 8 x 32 / 8 x 16.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, panels: Range<usize>) {
        let mut p = panels.start;
        while p < panels.end {
            match panels.end - p {
                1 => block512::<8, 1>(pb, a, rows, lda, c, ldc, p),
                2 => block512::<8, 2>(pb, a, rows, lda, c, ldc, p),
                _ => block512::<8, 3>(pb, a, rows, lda, c, ldc, p),
            }
            p += 3;
        }
    }

    /// 4 rows x 16 columns per block: 8 ymm accumulators (two per row), 87 GFLOP/s on one
    /// core of the AVX-512 development VM forced onto this kernel (its 256-bit peak; 6 x 16 was
    /// no faster, 8 x 16 spills); same FMA chains as [`block512`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, panels: Range<usize>) {
        const MR: usize = 4;
        let k = pb.k;
        for p in panels {
            let panel = pb.data.as_ptr().add(p * k * NR);
            let j0 = p * NR;
            let mut r0 = 0;
            while r0 < rows {
                let mr = MR.min(rows - r0);
                // Rows past the edge repeat the last valid row; their results are not stored.
                let ap: [*const f32; MR] = std::array::from_fn(|i| a.as_ptr().add((r0 + i.min(mr - 1)) * lda));
                let mut acc = [[_mm256_setzero_ps(); 2]; MR];
                for kk in 0..k {
                    let (b0, b1) = (_mm256_loadu_ps(panel.add(kk * NR)), _mm256_loadu_ps(panel.add(kk * NR + 8)));
                    for (i, [lo, hi]) in acc.iter_mut().enumerate() {
                        let av = _mm256_set1_ps(*ap[i].add(kk));
                        *lo = _mm256_fmadd_ps(av, b0, *lo);
                        *hi = _mm256_fmadd_ps(av, b1, *hi);
                    }
                }
                for (i, [lo, hi]) in acc.iter().enumerate().take(mr) {
                    let mut row = [0f32; NR];
                    _mm256_storeu_ps(row.as_mut_ptr(), *lo);
                    _mm256_storeu_ps(row.as_mut_ptr().add(8), *hi);
                    store_row(c.add((r0 + i) * ldc + j0), &row, NR.min(pb.n - j0));
                }
                r0 += MR;
            }
        }
    }
}

type KernelFn = unsafe fn(&PackedB<f32>, &[f32], usize, usize, *mut f32, usize, Range<usize>);

/// The f32 kernel for this machine, chosen once (`WGPU_RNN_CPU_KERNEL=portable` forces the
/// portable one, `=avx2` the AVX2 one on an AVX-512 machine, to measure it there).
fn f32_kernel() -> Option<KernelFn> {
    static K: std::sync::OnceLock<Option<KernelFn>> = std::sync::OnceLock::new();
    *K.get_or_init(|| {
        let forced = std::env::var("WGPU_RNN_CPU_KERNEL").ok();
        if forced.as_deref() == Some("portable") {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && forced.as_deref() != Some("avx2") {
                return Some(x86::avx512 as KernelFn);
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Some(x86::avx2 as KernelFn);
            }
        }
        None
    })
}

/// The f32 product with the machine's kernel, on the calling thread. (Splitting one step's
/// panels across threads was measured slower on the 2-core development machine, 21 vs 17 ms
/// for C1 forward: a sync per step. The time loops split the batch instead, see
/// [`super::split`].)
///
/// # Panics
/// When A or C do not cover the rows addressed (as [`PackedB::gemm`]).
pub fn f32_gemm(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: &mut [f32], ldc: usize) {
    if rows == 0 || pb.n == 0 {
        return;
    }
    pb.check(a, rows, lda, c, ldc);
    // SAFETY: checked just above that A and C cover every element the kernel addresses (the
    // packed panels hold `panels * k * NR` by construction).
    unsafe { f32_gemm_panels(pb, a, rows, lda, c.as_mut_ptr(), ldc, 0..pb.panels()) }
}
