//! The per-step product of the recurrence, `C[rows, n] = A[rows, k] · B[k, n]`, with few rows
//! (the batch) and a B (W_hh or its transpose) that is the same at every step.
//!
//! A general GEMM packs B on every call; at one call per step that packing costs more than the
//! arithmetic. Here B is packed once per layer-direction into panels of `NR` columns
//! (`panel[p][k][NR]`, the last one zero-padded) and a register-blocked micro-kernel streams a
//! panel from L1 for a block of rows. A B used for few rows in all (a one-step call) is not
//! worth packing: [`PackedB::try_direct`] reads a row-major `W[k, n]` in place, its panels
//! `NR`-column pieces of W's rows. On x86-64 the f32 kernel is compiled for AVX-512 and
//! AVX2+FMA and chosen at run time; other types and machines use the portable kernel.

use super::Float;
use crate::error::{Error, Result};
use crate::tensor::checked_len;
use std::ops::Range;

/// Columns per panel.
pub const NR: usize = 16;

/// B packed into column panels, ready for [`PackedB::gemm`], or (a direct view,
/// [`PackedB::try_direct`]) a row-major `W[k, n]` read in place.
#[derive(Debug, Default)]
pub struct PackedB<'w, T> {
    k: usize,
    n: usize,
    /// The packed panels from `data[off]`; for a direct view, its last panel's columns when `n`
    /// is not a multiple of `NR` (zero-padded: a kernel reads `NR` columns of every panel).
    data: Vec<T>,
    /// Where the packed panels start in `data`: at a cache line's first byte ([`LINE`]), so
    /// that every panel row (`NR` elements, a line's worth of f32) is one line and no vector
    /// load of it straddles two. 0 for a direct view.
    off: usize,
    /// A direct view's W (exactly `k * n` elements).
    direct: Option<&'w [T]>,
}

/// A clone's panels start on a cache line of its own buffer, as the original's do.
impl<T: Float> Clone for PackedB<'_, T> {
    fn clone(&self) -> Self {
        if self.direct.is_some() || self.data.is_empty() {
            return PackedB { k: self.k, n: self.n, data: self.data.clone(), off: self.off, direct: self.direct };
        }
        let len = self.panels() * self.k * NR;
        let mut data = vec![T::zero(); len + line_pad::<T>()];
        let off = line_offset(&data);
        data[off..off + len].copy_from_slice(&self.data[self.off..self.off + len]);
        PackedB { k: self.k, n: self.n, data, off, direct: None }
    }
}

impl<'w, T: Float> PackedB<'w, T> {
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
        Self::try_transposed_ld(w, n, k, k)
    }

    /// [`PackedB::try_transposed`] for a W whose rows are `ld >= k` elements apart.
    pub fn try_transposed_ld(w: &[T], n: usize, k: usize, ld: usize) -> Result<Self> {
        let len = packed_len::<T>(w.len(), n, k, n, k, ld)?;
        let (data, off) = pack_panels(len, k, n, |p, panel| {
            for c in 0..NR.min(n - p * NR) {
                let row = &w[(p * NR + c) * ld..(p * NR + c) * ld + k];
                for (dst, &v) in panel.chunks_exact_mut(NR).zip(row) {
                    dst[c] = v;
                }
            }
        })?;
        Ok(PackedB { k, n, data, off, direct: None })
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
        Self::try_plain_ld(w, k, n, n)
    }

    /// [`PackedB::try_plain`] for a W whose rows are `ld >= n` elements apart.
    pub fn try_plain_ld(w: &[T], k: usize, n: usize, ld: usize) -> Result<Self> {
        let len = packed_len::<T>(w.len(), n, k, k, n, ld)?;
        let (data, off) = pack_panels(len, k, n, |p, panel| {
            let (j0, valid) = (p * NR, NR.min(n - p * NR));
            for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                if valid == NR {
                    // A constant length: inline moves, not a memmove call a row.
                    let src: &[T; NR] = w[kk * ld + j0..kk * ld + j0 + NR].try_into().expect("NR elements");
                    dst.copy_from_slice(src);
                } else {
                    dst[..valid].copy_from_slice(&w[kk * ld + j0..kk * ld + j0 + valid]);
                }
            }
        })?;
        Ok(PackedB { k, n, data, off, direct: None })
    }

    /// `B = W` for a row-major `W[k, n]`, as [`PackedB::try_plain`], but read in place: a
    /// panel's row is a piece of a row of W, so nothing is copied but the last panel's columns
    /// when `n` is not a multiple of `NR`. For a B multiplied by few rows in all (a one-step
    /// call's `dv = dr R`), where packing reads and writes all of W to save nothing. Each
    /// element of C is the same chain of operations as with the packed B.
    pub fn try_direct(w: &'w [T], k: usize, n: usize) -> Result<Self> {
        packed_len::<T>(w.len(), n, k, k, n, n)?;
        let full = n / NR;
        let edge = n - full * NR;
        let mut data = if edge > 0 && k > 0 { super::pool::try_zeroed("packed weights", checked_len::<T>("packed weights", &[k, NR])?)? } else { Vec::new() };
        for (kk, dst) in data.chunks_exact_mut(NR).enumerate() {
            dst[..edge].copy_from_slice(&w[kk * n + full * NR..(kk + 1) * n]);
        }
        Ok(PackedB { k, n, data, off: 0, direct: Some(&w[..k * n]) })
    }

    /// Panel `p`'s first row and the distance between its rows, in elements: a packed panel's
    /// rows are `NR` apart, a direct view's full panels are pieces of W's rows (`n` apart).
    /// Every row `kk < k` of a panel `p < panels()` holds `NR` readable elements.
    #[inline(always)]
    fn panel_ptr(&self, p: usize) -> (*const T, usize) {
        match self.direct {
            // SAFETY (of the offsets): p * NR + NR <= n, so every row's NR columns lie in W.
            Some(w) if (p + 1) * NR <= self.n => (unsafe { w.as_ptr().add(p * NR) }, self.n),
            Some(_) => (self.data.as_ptr(), NR),
            None => {
                // SAFETY: p < panels(), and data holds panels() * k * NR elements from off.
                let panel = unsafe { self.data.as_ptr().add(self.off + p * self.k * NR) };
                // Every panel row is one cache line (or two, for f64) from its first byte: the
                // kernels' speed, not their results, depends on it (`LINE`).
                debug_assert!(self.data.is_empty() || panel as usize % LINE == 0, "packed panel {p} at {panel:p}, not on a {LINE}-byte line");
                (panel, NR)
            }
        }
    }

    /// Whether B is read in place ([`PackedB::try_direct`]).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
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
        self.gemm_bias(a, rows, lda, c, ldc, None);
    }

    /// [`PackedB::gemm`], then `bias` (`None`, or at least `n` elements) added to each of C's
    /// rows: the one add a pass over C after would make, so the same bits, but on the k-blocked
    /// path the kernel adds it before its last store (the forward's per-step products and
    /// input projection).
    ///
    /// # Panics
    /// As [`PackedB::gemm`], and when `bias` is shorter than `n`.
    pub fn gemm_bias(&self, a: &[T], rows: usize, lda: usize, c: &mut [T], ldc: usize, bias: Option<&[T]>) {
        if rows == 0 || self.n == 0 {
            return;
        }
        self.check(a, rows, lda, c, ldc);
        assert!(bias.is_none_or(|b| b.len() >= self.n), "PackedB::gemm_bias: a bias shorter than {} columns", self.n);
        T::packed_gemm(self, a, rows, lda, c, ldc, bias);
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

/// The packed length of B with `n` columns and `k` rows, checking that W (`w_len` elements,
/// `w_rows` rows of `w_cols` read, `ld` apart) covers every element read.
fn packed_len<T>(w_len: usize, n: usize, k: usize, w_rows: usize, w_cols: usize, ld: usize) -> Result<usize> {
    let span = if w_rows == 0 || w_cols == 0 { Some(0) } else { (w_rows - 1).checked_mul(ld).and_then(|v| v.checked_add(w_cols)) };
    if ld < w_cols || span.is_none_or(|e| e > w_len) {
        return Err(Error::LengthMismatch { what: "packed weights' W".into(), shape: vec![w_rows, w_cols], expected: span.unwrap_or(usize::MAX), got: w_len });
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
    let (panel, ks) = pb.panel_ptr(p);
    let mut acc = [[T::zero(); NR]; MR];
    // Rows past the edge repeat the last valid row; their results are not stored.
    let rows: [&[T]; MR] = std::array::from_fn(|i| {
        let start = (r0 + i.min(mr - 1)) * lda;
        &a[start..start + k]
    });
    for kk in 0..k {
        // SAFETY: kk < k, and every row of a panel holds NR elements (`panel_ptr`).
        let b: &[T; NR] = unsafe { &*(panel.add(kk * ks) as *const [T; NR]) };
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

/// [`portable`], then `bias` added to each row of C (as [`PackedB::gemm_bias`]).
///
/// # Panics
/// As [`portable`]'s, and when `bias` is shorter than B's columns.
pub fn portable_bias<T: Float>(pb: &PackedB<T>, a: &[T], rows: usize, lda: usize, c: &mut [T], ldc: usize, bias: Option<&[T]>) {
    portable(pb, a, rows, lda, c, ldc);
    super::add_bias_rows(c, rows, ldc, pb.n, bias);
}

/// [`portable`] over the columns of `panels` only, into a raw C (see [`PackedB::gemm_panels`]).
///
/// # Safety
/// As [`PackedB::gemm_panels`].
pub unsafe fn portable_panels<T: Float>(pb: &PackedB<T>, a: &[T], rows: usize, lda: usize, c: *mut T, ldc: usize, panels: Range<usize>) {
    run::<T, 4, false>(pb, a, rows, lda, c, ldc, panels)
}

/// Packed weights (bytes) from which [`pack_panels`] splits the panels across the time loops'
/// threads: packing was serial, 2.5% of DeepBench's LSTM H 512 B 64 forward, and the B of the
/// backward's weight-gradient GEMMs (C1: X, 0.8 MiB, and the previous states, 1.6 MiB) was
/// packed by one thread while the other waited.
const PARALLEL_PACK_MIN_BYTES: usize = 256 << 10;

/// The alignment of packed panels, in bytes: a cache line. A vector load that straddles two
/// lines costs two; malloc's blocks are 16-byte aligned (a large one 16 bytes past a page), so
/// unaligned, every zmm load of a panel row straddled two lines. Aligned, the k-blocked
/// GEMM's 800 x 512 x 2048 on one core took 0.89x the time, 800 x 512 x 240 (B in L2) 0.90x
/// (ARCHITECTURE.md, "Packed panels on cache lines").
const LINE: usize = 64;

/// Elements a buffer needs beyond its panels to start them on a [`LINE`] boundary.
fn line_pad<T>() -> usize {
    LINE / std::mem::size_of::<T>() - 1
}

/// The first element of `buf` on a [`LINE`] boundary: a slice's address is a multiple of T's
/// size, so this is whole elements, at most [`line_pad`].
fn line_offset<T>(buf: &[T]) -> usize {
    (LINE - buf.as_ptr() as usize % LINE) % LINE / std::mem::size_of::<T>()
}

/// The `len` elements of `k x n`'s panels (`len` is `panels * k * NR`), each filled by
/// `fill(p, panel)` for panel `p` (its `k * NR` elements, each written once), split across
/// the time loops' threads from [`PARALLEL_PACK_MIN_BYTES`], in a buffer with room to start
/// them on a [`LINE`] boundary: returns it and the offset of the first panel. Only a last
/// partial panel is zeroed first (its padding columns); every other element is `fill`'s, so
/// the buffer comes from the pool as it is. The same elements whatever the split.
fn pack_panels<T: Float>(len: usize, k: usize, n: usize, fill: impl Fn(usize, &mut [T]) + Sync) -> Result<(Vec<T>, usize)> {
    let panel_len = k * NR;
    if len == 0 {
        return Ok((Vec::new(), 0));
    }
    // A saturated length fails as an allocation (a typed error), like any other too large.
    let mut all = super::pool::try_reused("packed weights", len.saturating_add(line_pad::<T>()))?;
    let off = line_offset(&all);
    let data = &mut all[off..off + len];
    let panels = len / panel_len;
    if n % NR != 0 {
        data[(panels - 1) * panel_len..].fill(T::zero());
    }
    let bytes = len.saturating_mul(std::mem::size_of::<T>());
    let parts = if bytes >= PARALLEL_PACK_MIN_BYTES { super::split::step_ranges(panels, super::split::threads().min(panels)) } else { vec![0..panels] };
    let shared = super::split::Rows::new(data);
    super::split::run(&parts, |mine| {
        for p in mine {
            // SAFETY: the parts' panel ranges are disjoint, so their elements are.
            fill(p, unsafe { shared.part(p * panel_len, panel_len) });
        }
    });
    Ok((all, off))
}

/// Fewest rows, and the range of k, for which a packed B's f32 product runs the k-blocked
/// kernel over A packed into its row blocks ([`f32_gemm_kblocked`]) rather than the per-step
/// kernel over A's rows: 8-20% faster on one core of the 2-core Ice Lake VM from 16 rows (k
/// 256 and 512, n 1024; A's rows packed at every call, `rows x k` elements against
/// `rows x k x n` multiply-adds), and 105 -> 136 GFLOP/s for one block of 8 rows (k 256, n
/// 1024: its first row block prefetches B, which the per-step kernel does not; 12 rows 86 ->
/// 106). Fewer than 8 rows gain nothing. Each element of C is the same chain of FMAs either way.
const PACKED_A_MIN_ROWS: usize = 8;
const PACKED_A_MIN_K: usize = 64;
const PACKED_A_MAX_K: usize = 4096;

thread_local! {
    /// This thread's packed rows of A for [`f32_gemm_panels`].
    static PACKED_A: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`f32_gemm`] over the columns of `panels` only, into a raw C (see [`PackedB::gemm_panels`]).
///
/// # Safety
/// As [`PackedB::gemm_panels`].
pub unsafe fn f32_gemm_panels(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, panels: Range<usize>) {
    f32_gemm_panels_bias(pb, a, rows, lda, c, ldc, panels, None);
}

/// [`f32_gemm_panels`], and on the k-blocked path `bias` (`pb.n` elements) added by the
/// kernel: returns whether it was (`false`: the caller adds it).
///
/// # Safety
/// As [`PackedB::gemm_panels`].
#[allow(clippy::too_many_arguments)]
unsafe fn f32_gemm_panels_bias(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, panels: Range<usize>, bias: Option<&[f32]>) -> bool {
    if !pb.is_direct() && rows >= PACKED_A_MIN_ROWS && (PACKED_A_MIN_K..=PACKED_A_MAX_K).contains(&pb.k) {
        // SAFETY: the caller's, as for the kernels below (at most 2 MiB of packed rows stay in
        // this thread's buffer).
        if PACKED_A.with(|buf| f32_gemm_kblocked_bias(pb, a, lda, false, rows, c, ldc, panels.clone(), false, bias, &mut buf.borrow_mut())) {
            return true;
        }
    }
    match f32_kernel() {
        // SAFETY (the kernel's own): its target features were detected.
        Some(kernel) => kernel(pb, a, rows, lda, c, ldc, panels),
        None => run::<f32, 4, false>(pb, a, rows, lda, c, ldc, panels),
    }
    bias.is_none()
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
    ///
    /// `DIRECT`: B is a direct view, each panel read at its own place and row distance
    /// (`PackedB::panel_ptr`); else packed, the panels side by side `k * NR` apart.
    #[inline(always)]
    unsafe fn block512<const MR: usize, const NP: usize, const DIRECT: bool>(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, p: usize) {
        let k = pb.k;
        // A packed B's panels lie side by side, k * NR apart (a direct view's go through
        // `panel_ptr` one by one below).
        let panel = if DIRECT { std::ptr::null() } else { pb.panel_ptr(p).0 };
        let pp: [(*const f32, usize); NP] = std::array::from_fn(|q| if DIRECT { pb.panel_ptr(p + q) } else { (panel, NR) });
        let mut r0 = 0;
        while r0 < rows {
            let mr = MR.min(rows - r0);
            // Rows past the edge repeat the last valid row; their results are not stored.
            let ap: [*const f32; MR] = std::array::from_fn(|i| a.as_ptr().add((r0 + i.min(mr - 1)) * lda));
            let mut acc = [[_mm512_setzero_ps(); NP]; MR];
            for kk in 0..k {
                let b: [__m512; NP] = std::array::from_fn(|q| _mm512_loadu_ps(if DIRECT { pp[q].0.add(kk * pp[q].1) } else { panel.add(q * k * NR + kk * NR) }));
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
    ///
    /// Fewer rows waste most of the 8-row block (at batch 1 it computed 7 rows for nothing), and
    /// their products are bound by B's bandwidth (each element of B serves at most 4 rows). With
    /// a packed B, 1 or 2 rows go to the AVX2 blocks over several panels ([`avx2`]), and 3 or 4
    /// to 4 x 6 zmm blocks ([`few512_4`]). One core of the Ice Lake VM, k 256, n 1024, W_hh in
    /// L2 (with W_ih beside it, from L3), GFLOP/s: 1 row 14 (13) with the 8-row block, 22-26 (18)
    /// with 1 x 12 zmm blocks, 32 (21) with the AVX2 ones; 2 rows 28 (24), 44 (33-34) with 2 x 8,
    /// 72-76 (42-44); 4 rows 45 (38), 77-79 (62-65) with 4 x 6, 83 (66-67) with AVX2's 4 x 16.
    /// In the engine (one process, alternated) the AVX2 blocks against the zmm ones: 1-2 rows
    /// 0.87-0.99x the forward's time, 0.84-1.01x training's, but 4 rows 1.25x / 1.17x (the
    /// column split keeps each thread's W in L2 there, where the zmm FMAs' width pays). From 5
    /// rows the 8-row block is faster than AVX2's (5 rows: 69 against 52; 7: 95 against 70).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, panels: Range<usize>) {
        let mut p = panels.start;
        let direct = pb.is_direct();
        match rows {
            // SAFETY: `isa` takes AVX-512 only where AVX2 and FMA are there too.
            1 | 2 if !direct => return avx2(pb, a, rows, lda, c, ldc, panels),
            3 | 4 if !direct => return few512_4(pb, a, rows, lda, c, ldc, panels),
            _ => {}
        }
        while p < panels.end {
            match (panels.end - p, direct) {
                (1, false) => block512::<8, 1, false>(pb, a, rows, lda, c, ldc, p),
                (2, false) => block512::<8, 2, false>(pb, a, rows, lda, c, ldc, p),
                (_, false) => block512::<8, 3, false>(pb, a, rows, lda, c, ldc, p),
                (1, true) => direct512::<1>(pb, a, rows, lda, c, ldc, p),
                (2, true) => direct512::<2>(pb, a, rows, lda, c, ldc, p),
                (_, true) => direct512::<3>(pb, a, rows, lda, c, ldc, p),
            }
            p += 3;
        }
    }

    /// [`block512`] for 3 or 4 rows of A: 4 rows against 6 panels at a time (24 zmm accumulators
    /// and 6 of B's rows: 30 of 32 registers). The same chains of FMAs as the 8-row block.
    #[inline(always)]
    unsafe fn few512_4(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, panels: Range<usize>) {
        let mut p = panels.start;
        while p < panels.end {
            match panels.end - p {
                1 => block512::<4, 1, false>(pb, a, rows, lda, c, ldc, p),
                2 => block512::<4, 2, false>(pb, a, rows, lda, c, ldc, p),
                3 => block512::<4, 3, false>(pb, a, rows, lda, c, ldc, p),
                4 => block512::<4, 4, false>(pb, a, rows, lda, c, ldc, p),
                5 => block512::<4, 5, false>(pb, a, rows, lda, c, ldc, p),
                _ => block512::<4, 6, false>(pb, a, rows, lda, c, ldc, p),
            }
            p += 6;
        }
    }

    /// Rows of W a direct view's panel group runs per pass over the rows of A: `KC` rows of 3
    /// panels (`KC * 192` bytes, strided `n` apart in W) stay in L1 while every row block of A
    /// passes over them. In one pass over all of k, each 8-row block of A read its panels'
    /// strided pieces of W from L2 again (the direct kernel ran at half the packed one's rate).
    const KC: usize = 128;

    /// How many of B's rows (k) ahead the k-blocked kernels' first row block prefetches (one
    /// 64-byte line a panel each): 8 gave C1 LSTM about 0.97x the time with AVX-512 and 0.98x
    /// with AVX2; 16, and one k-block ahead into L2, did not pay (ARCHITECTURE.md, "Prefetching
    /// B").
    const PREFETCH_K: usize = 8;

    /// [`block512`] with k in blocks of [`KC`], for a direct view or (from [`avx512_kblocked`])
    /// a packed B over many rows: each block of C carries its partial sums through C between k
    /// blocks (stored, then loaded back: the same f32 values, so every element is the same
    /// chain of FMAs in k order as in one pass). `ACCUMULATE`: the chains start from C's
    /// values (`C += A B`) instead of zero. `PACKED_A`: A is packed in blocks of 8 rows
    /// ([`pack_a`]: one stream, element `(r, kk)` of block `r / 8` at `kk * 8 + r % 8`), the
    /// blocks `8 * lda` elements apart (`lda`: the k A was packed with, at least B's), not rows
    /// at stride `lda`. `bias` (null for none, else `pb.n` elements) is added to the finished
    /// sums before the last k-block's store: the one add a pass over C after would make.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kblock512<const NP: usize, const DIRECT: bool, const ACCUMULATE: bool, const PACKED_A: bool>(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, p: usize, bias: *const f32) {
        const MR: usize = 8;
        let k = pb.k;
        if k <= KC && !ACCUMULATE && !PACKED_A {
            return block512::<MR, NP, DIRECT>(pb, a, rows, lda, c, ldc, p);
        }
        let pp: [(*const f32, usize); NP] = std::array::from_fn(|q| pb.panel_ptr(p + q));
        // Valid lanes of each panel's 16 columns (the last panel of C may be partial).
        let masks: [__mmask16; NP] = std::array::from_fn(|q| {
            let nv = NR.min(pb.n - (p + q) * NR);
            ((1u32 << nv) - 1) as __mmask16
        });
        let mut k0 = 0;
        while k0 < k {
            let k1 = (k0 + KC).min(k);
            let mut r0 = 0;
            while r0 < rows {
                let mr = MR.min(rows - r0);
                // Rows past the edge repeat the last valid row; their results are not stored.
                let ap: [*const f32; MR] = if PACKED_A { std::array::from_fn(|i| a.as_ptr().add(r0 * lda + i)) } else { std::array::from_fn(|i| a.as_ptr().add((r0 + i.min(mr - 1)) * lda)) };
                let mut acc = [[_mm512_setzero_ps(); NP]; MR];
                if k0 > 0 || ACCUMULATE {
                    for (i, row_acc) in acc.iter_mut().enumerate().take(mr) {
                        for (q, v) in row_acc.iter_mut().enumerate() {
                            *v = _mm512_maskz_loadu_ps(masks[q], c.add((r0 + i) * ldc + (p + q) * NR));
                        }
                    }
                }
                // The first row block brings the k-block's B into L1 for the others: B's rows
                // PREFETCH_K ahead are asked for while these are used (a hint: it never faults,
                // so the address may run past the panel).
                let prefetch = PACKED_A && !DIRECT && r0 == 0;
                for kk in k0..k1 {
                    if prefetch {
                        for q in 0..NP {
                            _mm_prefetch::<_MM_HINT_T0>(pp[q].0.wrapping_add((kk + PREFETCH_K) * NR).cast::<i8>());
                        }
                    }
                    let b: [__m512; NP] = std::array::from_fn(|q| _mm512_loadu_ps(if DIRECT { pp[q].0.add(kk * pp[q].1) } else { pp[q].0.add(kk * NR) }));
                    for i in 0..MR {
                        let av = _mm512_set1_ps(*ap[i].add(if PACKED_A { kk * MR } else { kk }));
                        for q in 0..NP {
                            acc[i][q] = _mm512_fmadd_ps(av, b[q], acc[i][q]);
                        }
                    }
                }
                if k1 == k && !bias.is_null() {
                    for q in 0..NP {
                        let bv = _mm512_maskz_loadu_ps(masks[q], bias.add((p + q) * NR));
                        for row_acc in acc.iter_mut() {
                            row_acc[q] = _mm512_add_ps(row_acc[q], bv);
                        }
                    }
                }
                for (i, row_acc) in acc.iter().enumerate().take(mr) {
                    for (q, v) in row_acc.iter().enumerate() {
                        _mm512_mask_storeu_ps(c.add((r0 + i) * ldc + (p + q) * NR), masks[q], *v);
                    }
                }
                r0 += MR;
            }
            k0 = k1;
        }
    }

    /// [`kblock512`] for a direct view, A read in place: the direct kernels' entry.
    #[inline(always)]
    unsafe fn direct512<const NP: usize>(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, p: usize) {
        kblock512::<NP, true, false, false>(pb, a, rows, lda, c, ldc, p, std::ptr::null())
    }

    /// `C = A B` (`ACCUMULATE`: `C += A B`) for a packed B and a packed A ([`pack_a`], 8-row
    /// blocks) over many rows, k in blocks of [`KC`] rows of 3 panels (24 KiB) that stay in L1
    /// while every row block of A passes over them ([`kblock512`]).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn avx512_kblocked<const ACCUMULATE: bool>(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, panels: Range<usize>, bias: *const f32) {
        let mut p = panels.start;
        while p < panels.end {
            match panels.end - p {
                1 => kblock512::<1, false, ACCUMULATE, true>(pb, a, rows, lda, c, ldc, p, bias),
                2 => kblock512::<2, false, ACCUMULATE, true>(pb, a, rows, lda, c, ldc, p, bias),
                _ => kblock512::<3, false, ACCUMULATE, true>(pb, a, rows, lda, c, ldc, p, bias),
            }
            p += 3;
        }
    }

    /// 4 rows x 16 columns per block: 8 ymm accumulators (two per row), 87 GFLOP/s on one
    /// core of the AVX-512 development VM forced onto this kernel (its 256-bit peak; 6 x 16 was
    /// no faster, 8 x 16 spills); same FMA chains as [`block512`]. One or two rows of a packed
    /// B take [`avx2_block`]s over several panels (1 row 17 -> 28-32 GFLOP/s, 2 rows 38 -> 64-76,
    /// k 256, n 1024, W in L2, this kernel forced on the Ice Lake VM).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, panels: Range<usize>) {
        match rows {
            1 if !pb.is_direct() => return few2_1(pb, a, rows, lda, c, ldc, panels),
            2 if !pb.is_direct() => return few2_2(pb, a, rows, lda, c, ldc, panels),
            _ => {}
        }
        if pb.is_direct() {
            avx2_panels::<true, true, false, false>(pb, a, rows, lda, c, ldc, panels, std::ptr::null())
        } else {
            avx2_panels::<false, false, false, false>(pb, a, rows, lda, c, ldc, panels, std::ptr::null())
        }
    }

    /// [`avx2`] over 1 or 2 rows of A (batch 1 or 2, a packed batch's last steps): `MR` rows
    /// against `NP` panels of a packed B (two ymm accumulators a row and panel), in place of the
    /// 4-row block over one panel, which computed 3 or 2 rows for nothing and had 2 or 4 FMA
    /// chains to hide the FMA latency with. The same chains of FMAs, so the same bits.
    #[inline(always)]
    unsafe fn avx2_block<const MR: usize, const NP: usize>(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, p: usize) {
        let k = pb.k;
        // Only a packed B comes here, its panels side by side, k * NR apart.
        let panel = pb.panel_ptr(p).0;
        // Rows past the edge repeat the last valid row; their results are not stored.
        let ap: [*const f32; MR] = std::array::from_fn(|i| a.as_ptr().add(i.min(rows - 1) * lda));
        let mut acc = [[[_mm256_setzero_ps(); 2]; NP]; MR];
        for kk in 0..k {
            let b: [[__m256; 2]; NP] = std::array::from_fn(|q| {
                let bp = panel.add(q * k * NR + kk * NR);
                [_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8))]
            });
            for i in 0..MR {
                let av = _mm256_set1_ps(*ap[i].add(kk));
                for q in 0..NP {
                    acc[i][q][0] = _mm256_fmadd_ps(av, b[q][0], acc[i][q][0]);
                    acc[i][q][1] = _mm256_fmadd_ps(av, b[q][1], acc[i][q][1]);
                }
            }
        }
        for (i, row_acc) in acc.iter().enumerate().take(rows.min(MR)) {
            for (q, [lo, hi]) in row_acc.iter().enumerate() {
                let j0 = (p + q) * NR;
                let mut row = [0f32; NR];
                _mm256_storeu_ps(row.as_mut_ptr(), *lo);
                _mm256_storeu_ps(row.as_mut_ptr().add(8), *hi);
                store_row(c.add(i * ldc + j0), &row, NR.min(pb.n - j0));
            }
        }
    }

    macro_rules! few2 {
        ($name:ident, $mr:literal, $np:literal, $($n:literal)*) => {
            #[inline(always)]
            unsafe fn $name(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, panels: Range<usize>) {
                let mut p = panels.start;
                while p < panels.end {
                    let np = (panels.end - p).min($np);
                    match np {
                        $($n => avx2_block::<$mr, $n>(pb, a, rows, lda, c, ldc, p),)*
                        _ => unreachable!("{np} panels past {}", $np),
                    }
                    p += np;
                }
            }
        };
    }
    // ymm registers: 1 x 6 panels 12 accumulators (B read by the FMAs), 2 x 2 8 and B's 4.
    few2!(few2_1, 1, 6, 1 2 3 4 5 6);
    few2!(few2_2, 2, 2, 1 2);

    /// [`avx512_kblocked`] on AVX2: a packed B, A packed in 4-row blocks, k in blocks of [`KC`].
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn avx2_kblocked<const ACCUMULATE: bool>(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, panels: Range<usize>, bias: *const f32) {
        avx2_panels::<false, true, ACCUMULATE, true>(pb, a, rows, lda, c, ldc, panels, bias)
    }

    /// [`avx2`]'s loop; `DIRECT` as [`block512`]'s (a packed panel's rows are `NR` apart, a
    /// constant the addressing folds); `KB`: k in blocks of [`KC`] rows as [`kblock512`]'s
    /// (partial sums carried through C: the same chains as one pass), for a direct view or a
    /// packed B over many rows; `ACCUMULATE`: `C += A B`; `PACKED_A`: A packed in 4-row blocks
    /// ([`pack_a`]), `4 * lda` elements apart; `bias` as [`kblock512`]'s.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx2_panels<const DIRECT: bool, const KB: bool, const ACCUMULATE: bool, const PACKED_A: bool>(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: *mut f32, ldc: usize, panels: Range<usize>, bias: *const f32) {
        const MR: usize = 4;
        let k = pb.k;
        for p in panels {
            let (panel, ks) = pb.panel_ptr(p);
            let ks = if DIRECT { ks } else { NR };
            let j0 = p * NR;
            let nv = NR.min(pb.n - j0);
            // This panel's bias columns, for every row block's last store.
            let mut bb = [0f32; NR];
            if !bias.is_null() {
                std::ptr::copy_nonoverlapping(bias.add(j0), bb.as_mut_ptr(), nv);
            }
            let mut k0 = 0;
            loop {
                let k1 = if KB { (k0 + KC).min(k) } else { k };
                let mut r0 = 0;
                while r0 < rows {
                    let mr = MR.min(rows - r0);
                    // Rows past the edge repeat the last valid row; their results are not stored.
                    let ap: [*const f32; MR] = if PACKED_A { std::array::from_fn(|i| a.as_ptr().add(r0 * lda + i)) } else { std::array::from_fn(|i| a.as_ptr().add((r0 + i.min(mr - 1)) * lda)) };
                    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
                    if (KB && k0 > 0) || ACCUMULATE {
                        for (i, [lo, hi]) in acc.iter_mut().enumerate().take(mr) {
                            let mut row = [0f32; NR];
                            std::ptr::copy_nonoverlapping(c.add((r0 + i) * ldc + j0), row.as_mut_ptr(), nv);
                            *lo = _mm256_loadu_ps(row.as_ptr());
                            *hi = _mm256_loadu_ps(row.as_ptr().add(8));
                        }
                    }
                    // As in `kblock512`: the first row block prefetches B's rows ahead.
                    let prefetch = KB && PACKED_A && !DIRECT && r0 == 0;
                    for kk in k0..k1 {
                        if prefetch {
                            _mm_prefetch::<_MM_HINT_T0>(panel.wrapping_add((kk + PREFETCH_K) * ks).cast::<i8>());
                        }
                        let (b0, b1) = (_mm256_loadu_ps(panel.add(kk * ks)), _mm256_loadu_ps(panel.add(kk * ks + 8)));
                        for (i, [lo, hi]) in acc.iter_mut().enumerate() {
                            let av = _mm256_set1_ps(*ap[i].add(if PACKED_A { kk * MR } else { kk }));
                            *lo = _mm256_fmadd_ps(av, b0, *lo);
                            *hi = _mm256_fmadd_ps(av, b1, *hi);
                        }
                    }
                    if k1 == k && !bias.is_null() {
                        let (b0, b1) = (_mm256_loadu_ps(bb.as_ptr()), _mm256_loadu_ps(bb.as_ptr().add(8)));
                        for [lo, hi] in acc.iter_mut() {
                            *lo = _mm256_add_ps(*lo, b0);
                            *hi = _mm256_add_ps(*hi, b1);
                        }
                    }
                    for (i, [lo, hi]) in acc.iter().enumerate().take(mr) {
                        let mut row = [0f32; NR];
                        _mm256_storeu_ps(row.as_mut_ptr(), *lo);
                        _mm256_storeu_ps(row.as_mut_ptr().add(8), *hi);
                        store_row(c.add((r0 + i) * ldc + j0), &row, nv);
                    }
                    r0 += MR;
                }
                k0 = k1;
                if k0 >= k {
                    break;
                }
            }
        }
    }
}

type KernelFn = unsafe fn(&PackedB<f32>, &[f32], usize, usize, *mut f32, usize, Range<usize>);
/// A k-blocked kernel: [`KernelFn`]'s arguments and a bias to add to the finished sums (null
/// for none).
type KBlockedFn = unsafe fn(&PackedB<f32>, &[f32], usize, usize, *mut f32, usize, Range<usize>, *const f32);

/// The instruction set the CPU engine's kernels and time loops run (off x86-64, only the
/// portable one).
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum Isa {
    Avx512,
    Avx2,
    Portable,
}

/// The instruction set for this machine, chosen once: the GEMM kernels' and the time loops'
/// (`split::run_loop`). `WGPU_RNN_CPU_KERNEL=portable` forces the portable ones, `=avx2` the
/// AVX2 ones on an AVX-512 machine, to measure them there.
pub(crate) fn isa() -> Isa {
    static K: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *K.get_or_init(|| {
        let forced = std::env::var("WGPU_RNN_CPU_KERNEL").ok();
        if forced.as_deref() == Some("portable") {
            return Isa::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        {
            // The AVX-512 kernels hand few rows to the AVX2 ones (`x86::avx512`).
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && forced.as_deref() != Some("avx2") {
                return Isa::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}

/// The per-step f32 kernel for this machine ([`isa`]), or `None` for the portable one.
fn f32_kernel() -> Option<KernelFn> {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Some(x86::avx512 as KernelFn),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Some(x86::avx2 as KernelFn),
        _ => None,
    }
}

/// The k-blocked f32 kernel for a packed B over many rows ([`isa`]; `accumulate`: `C += A B`),
/// or `None` where only the portable kernel runs.
fn f32_kblocked_kernel(accumulate: bool) -> Option<KBlockedFn> {
    match (isa(), accumulate) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, false) => Some(x86::avx512_kblocked::<false> as KBlockedFn),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, true) => Some(x86::avx512_kblocked::<true> as KBlockedFn),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, false) => Some(x86::avx2_kblocked::<false> as KBlockedFn),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, true) => Some(x86::avx2_kblocked::<true> as KBlockedFn),
        _ => None,
    }
}

/// Whether this machine has a k-blocked f32 kernel ([`f32_gemm_kblocked`] runs).
pub fn has_kblocked_f32() -> bool {
    f32_kblocked_kernel(false).is_some()
}

/// Rows per block of a packed A ([`pack_a`]) for this machine's k-blocked kernel
/// ([`f32_gemm_kblocked`]): its row block, 8 with AVX-512, 4 with AVX2; 0 where there is none.
fn kblocked_mr() -> usize {
    match f32_kblocked_kernel(false).map(|_| isa()) {
        Some(Isa::Avx512) => 8,
        Some(Isa::Avx2) => 4,
        _ => 0,
    }
}

/// Packs rows `0..rows` of a `rows x k` matrix for [`f32_gemm_kblocked`]: blocks of `mr` rows
/// ([`kblocked_mr`]), each block's `k` columns of `mr` elements one after another, a last
/// partial block's missing rows repeating its last row (their results are not stored). The
/// matrix is `a` with row `r` at `r * ld` (`transposed == false`), or the transpose of `a`
/// (row `r` is column `r` of a `[k, rows]` matrix with rows `ld` apart). `out` must hold
/// `rows.div_ceil(mr) * mr * k` elements. With `sums` (a transposed A only), also `sums[r]` =
/// row `r`'s sum, from zero in k order: the column sums of the `[k, rows]` matrix as
/// `cpu::col_sum_into` adds them (the same bits), read from the pass that packs.
///
/// # Panics
/// When `a`, `out` or `sums` is too short, `sums` is given for an A not transposed, or `mr` is
/// not 4 or 8.
fn pack_a(a: &[f32], ld: usize, transposed: bool, rows: usize, k: usize, mr: usize, out: &mut [f32], sums: Option<&mut [f32]>) {
    match mr {
        8 => pack_a_mr::<8>(a, ld, transposed, rows, k, out, sums),
        4 => pack_a_mr::<4>(a, ld, transposed, rows, k, out, sums),
        _ => panic!("pack_a: {mr} rows a block"),
    }
}

fn pack_a_mr<const MR: usize>(a: &[f32], ld: usize, transposed: bool, rows: usize, k: usize, out: &mut [f32], mut sums: Option<&mut [f32]>) {
    assert!(transposed || sums.is_none(), "pack_a: sums of an A not transposed");
    if let Some(s) = sums.as_deref_mut() {
        s[..rows].fill(0.0);
    }
    if rows == 0 || k == 0 {
        return;
    }
    let blocks = rows.div_ceil(MR);
    let out = &mut out[..blocks * MR * k];
    if transposed {
        // Column r of A's row kk: each row of A is read once, in order, into every block.
        for kk in 0..k {
            let src = &a[kk * ld..kk * ld + rows];
            if let Some(s) = sums.as_deref_mut() {
                for (acc, &v) in s[..rows].iter_mut().zip(src) {
                    *acc += v;
                }
            }
            for (rb, block) in out.chunks_exact_mut(MR * k).enumerate() {
                let dst: &mut [f32; MR] = (&mut block[kk * MR..kk * MR + MR]).try_into().unwrap();
                let r0 = rb * MR;
                if r0 + MR <= rows {
                    dst.copy_from_slice(&src[r0..r0 + MR]);
                } else {
                    for (i, v) in dst.iter_mut().enumerate() {
                        *v = src[(r0 + i).min(rows - 1)];
                    }
                }
            }
        }
    } else {
        for (rb, block) in out.chunks_exact_mut(MR * k).enumerate() {
            let last = (rb * MR + MR).min(rows) - 1;
            let src: [&[f32]; MR] = std::array::from_fn(|i| {
                let r = (rb * MR + i).min(last);
                &a[r * ld..r * ld + k]
            });
            for (kk, dst) in block.chunks_exact_mut(MR).enumerate() {
                for i in 0..MR {
                    dst[i] = src[i][kk];
                }
            }
        }
    }
}

/// Rows of A [`f32_gemm_kblocked`] packs at a time: their k-block (64 KiB at most) stays in L2
/// while every panel group of B passes over it.
const PACKED_A_ROWS: usize = 128;

/// Elements of the buffer [`f32_gemm_kblocked`] packs `rows` rows of `k` into (0 where the
/// machine has no k-blocked kernel).
pub fn packed_a_len(rows: usize, k: usize) -> usize {
    let mr = kblocked_mr();
    if mr == 0 {
        return 0;
    }
    rows.min(PACKED_A_ROWS).div_ceil(mr).saturating_mul(mr).saturating_mul(k)
}

/// `C = A B` (`accumulate`: `C += A B`) for a packed (not direct) B over the columns of
/// `panels`, `rows` rows of A taken 128 at a time (`PACKED_A_ROWS`) and packed into `buf` in
/// the kernel's row blocks (`pack_a`: one stream for the broadcasts), k in blocks of 128 rows
/// with partial sums carried through C: a panel group's k-block stays in L1 while every row
/// block passes over it. A is `a` with row `r` at `r * lda`, or (`a_transposed`) the transpose
/// of a `[k, rows]` matrix with rows `lda` apart. `buf` grows to [`packed_a_len`] if it is
/// shorter. Each element of C is one chain of FMAs in k order (from zero, or from C's value),
/// whatever the rows, panels or thread split. Returns `false`, doing nothing, where the
/// machine has only the portable kernel.
///
/// # Panics
/// When B is a direct view, the panels are out of range, or `a` does not cover the rows.
///
/// # Safety
/// C must be valid for `rows` rows of `n` at stride `ldc`, with no other thread touching these
/// panels' columns of them.
#[allow(clippy::too_many_arguments)]
pub unsafe fn f32_gemm_kblocked(pb: &PackedB<f32>, a: &[f32], lda: usize, a_transposed: bool, rows: usize, c: *mut f32, ldc: usize, panels: Range<usize>, accumulate: bool, buf: &mut Vec<f32>) -> bool {
    f32_gemm_kblocked_bias(pb, a, lda, a_transposed, rows, c, ldc, panels, accumulate, None, buf)
}

/// [`f32_gemm_kblocked`], then `bias` (`pb.n` elements, or `None`) added to each row of C's
/// columns in `panels` by the kernel, to the finished sums before their last store: each
/// element gets the one `+=` a separate pass over C gives (`cpu::add_bias`), so the bits are
/// the same.
///
/// # Panics
/// As [`f32_gemm_kblocked`]'s, and when `bias` holds fewer than `pb.n` elements.
///
/// # Safety
/// As [`f32_gemm_kblocked`]'s.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn f32_gemm_kblocked_bias(pb: &PackedB<f32>, a: &[f32], lda: usize, a_transposed: bool, rows: usize, c: *mut f32, ldc: usize, panels: Range<usize>, accumulate: bool, bias: Option<&[f32]>, buf: &mut Vec<f32>) -> bool {
    let product = KProduct { pb, k0: 0, c, ldc, panels, accumulate, bias };
    f32_gemm_kblocked_shared(a, lda, a_transposed, rows, pb.k, std::slice::from_ref(&product), None, buf)
}

/// One product of [`f32_gemm_kblocked_shared`]: `C = A[.., k0..k0 + k] B` (`accumulate`:
/// `C += ..`) for B packed (`k` rows: `pb.k`), over the columns of `panels`, C at `c` with
/// rows `ldc` apart.
pub(crate) struct KProduct<'a> {
    pub(crate) pb: &'a PackedB<'a, f32>,
    pub(crate) k0: usize,
    pub(crate) c: *mut f32,
    pub(crate) ldc: usize,
    pub(crate) panels: Range<usize>,
    pub(crate) accumulate: bool,
    /// Added to each row of C's columns in `panels` by the kernel, to the finished sums before
    /// their last store (`pb.n` elements).
    pub(crate) bias: Option<&'a [f32]>,
}

/// [`f32_gemm_kblocked`] for several products over column ranges `k0..k0 + pb.k` of one A
/// (`rows x k`, as there), each chunk of A's rows packed once for all of them (the weight
/// gradients of a layer-direction whose products share their output gradients: one pass over
/// them, not one a product), and, with `sums` (a transposed A only), `sums[r]` = A's row `r`
/// summed over all of k (`pack_a`'s). A product with no columns or no k leaves its C alone. Each element of C is
/// the same chain of FMAs as [`f32_gemm_kblocked`] over that column range of A gives, then a
/// product's `bias` added by the kernel before its last store ([`f32_gemm_kblocked_bias`]).
///
/// # Panics
/// When a B is a direct view, its panels are out of range or its k past A's, `a` does not cover
/// the rows, or `sums` is shorter than `rows` or given for an A not transposed.
///
/// # Safety
/// Each product's C as [`f32_gemm_kblocked`]'s, no two products' Cs overlapping.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn f32_gemm_kblocked_shared(a: &[f32], lda: usize, a_transposed: bool, rows: usize, k: usize, products: &[KProduct<'_>], mut sums: Option<&mut [f32]>, buf: &mut Vec<f32>) -> bool {
    for p in products {
        assert!(
            !p.pb.is_direct() && p.panels.end <= p.pb.panels() && p.k0.checked_add(p.pb.k).is_some_and(|e| e <= k),
            "f32_gemm_kblocked: a direct view, panels {:?} of {}, or k {}..+{} of {k}",
            p.panels,
            p.pb.panels(),
            p.k0,
            p.pb.k
        );
        assert!(p.bias.is_none_or(|b| b.len() >= p.pb.n), "f32_gemm_kblocked: a bias shorter than {} columns", p.pb.n);
    }
    if let Some(s) = &sums {
        assert!(a_transposed && s.len() >= rows, "f32_gemm_kblocked: {} sums for {rows} rows of an A transposed: {a_transposed}", s.len());
    }
    let mr = kblocked_mr();
    if mr == 0 {
        return false;
    }
    if rows == 0 {
        return true;
    }
    let len = packed_a_len(rows, k);
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + PACKED_A_ROWS).min(rows);
        let rows_at = if a_transposed { &a[r0..] } else { &a[r0 * lda..] };
        pack_a(rows_at, lda, a_transposed, r1 - r0, k, mr, buf, sums.as_deref_mut().map(|s| &mut s[r0..r1]));
        for p in products.iter().filter(|p| p.pb.n > 0 && p.pb.k > 0) {
            let kernel = f32_kblocked_kernel(p.accumulate).expect("a k-blocked kernel for either accumulation, as kblocked_mr found");
            // SAFETY (the kernel's own): its target features were detected; the packed rows
            // hold the chunk's blocks, `k` apart, of which the product reads columns
            // k0..k0 + pb.k; C's rows r0..r1 lie in the caller's; a bias holds pb.n elements
            // (asserted above).
            kernel(p.pb, &buf[p.k0 * mr..], r1 - r0, k, p.c.add(r0 * p.ldc), p.ldc, p.panels.clone(), p.bias.map_or(std::ptr::null(), <[f32]>::as_ptr));
        }
        r0 = r1;
    }
    true
}

/// The f32 product with the machine's kernel, on the calling thread. (Splitting one step's
/// panels across threads was measured slower on the 2-core development machine, 21 vs 17 ms
/// for C1 forward: a sync per step. The time loops split the batch instead, see
/// [`super::split`].)
///
/// # Panics
/// When A or C do not cover the rows addressed (as [`PackedB::gemm`]).
pub fn f32_gemm(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: &mut [f32], ldc: usize) {
    f32_gemm_bias(pb, a, rows, lda, c, ldc, None)
}

/// [`f32_gemm`], then `bias` added to each row of C (as [`PackedB::gemm_bias`]): by the
/// kernel before its last store where the k-blocked kernel runs, else after.
///
/// # Panics
/// As [`f32_gemm`]'s, and when `bias` is shorter than B's columns.
pub fn f32_gemm_bias(pb: &PackedB<f32>, a: &[f32], rows: usize, lda: usize, c: &mut [f32], ldc: usize, bias: Option<&[f32]>) {
    if rows == 0 || pb.n == 0 {
        return;
    }
    pb.check(a, rows, lda, c, ldc);
    assert!(bias.is_none_or(|b| b.len() >= pb.n), "f32_gemm_bias: a bias shorter than {} columns", pb.n);
    // SAFETY: checked just above that A and C cover every element the kernel addresses (the
    // packed panels hold `panels * k * NR` by construction), and the bias its columns.
    if !unsafe { f32_gemm_panels_bias(pb, a, rows, lda, c.as_mut_ptr(), ldc, 0..pb.panels(), bias) } {
        super::add_bias_rows(c, rows, ldc, pb.n, bias);
    }
}

/// Rows at or below which a product computed once per call over all of a layer-direction's
/// rows (not at every step) reads its weights in place instead of packing them: packing reads
/// and writes all of W, as much memory traffic as the product itself at this many rows
/// (DeepBench's GRU with T = 1: W_ih and W_hh of 3 MiB each against 32 rows).
pub const DIRECT_MAX_ROWS: usize = 64;

/// `C = A B` with A `rows` rows at stride `lda`, C at stride `ldc` (overwritten), B's panels
/// split across the time loops' threads ([`super::split::ranges`] over the panels; one
/// thread for a small product). Each element is the same chain of operations as
/// [`PackedB::gemm`]'s, whatever the thread count.
///
/// # Panics
/// When A or C do not cover the rows addressed (as [`PackedB::gemm`]).
pub fn gemm_threaded<T: Float>(pb: &PackedB<'_, T>, a: &[T], rows: usize, lda: usize, c: &mut [T], ldc: usize) {
    if rows == 0 || pb.n == 0 {
        return;
    }
    pb.check(a, rows, lda, c, ldc);
    let parts = super::split::ranges(pb.panels(), rows.saturating_mul(pb.k).saturating_mul(pb.n));
    let c_len = c.len();
    let shared = super::split::Rows::new(c);
    super::split::run(&parts, |panels| {
        // SAFETY: the parts' panel ranges are disjoint, so their columns of C are; A and C
        // were checked above to cover every row addressed.
        unsafe {
            let (ptr, _) = shared.tail_ptr(0);
            pb.gemm_panels(a, rows, lda, ptr, c_len, ldc, panels);
        }
    });
}

/// `C[rows, m] = X[rows, k] W[m, k]^T` for few rows (at most about [`DIRECT_MAX_ROWS`]), W
/// read in place: computed as `C^T = W X^T` with X^T packed (`rows * k` elements, not W's
/// `m * k`), W's rows split across threads, each thread transposing its part into C
/// (overwritten, row stride `m`). Each element is the same chain of operations as
/// `PackedB::transposed(W, m, k)` and [`PackedB::gemm`] over X (a product's two factors commute
/// exactly in a fused multiply-add), whatever the thread count.
///
/// # Errors
/// [`Error::LengthMismatch`] when X, W or C are shorter than the sizes say;
/// [`Error::OutOfMemory`] when the scratch cannot be allocated.
pub fn xwt_direct<T: Float>(x: &[T], rows: usize, k: usize, w: &[T], m: usize, c: &mut [T]) -> Result<()> {
    let need = |what: &str, shape: [usize; 2], got: usize| match shape[0].checked_mul(shape[1]) {
        Some(e) if e <= got => Ok(()),
        e => Err(Error::LengthMismatch { what: what.into(), shape: shape.to_vec(), expected: e.unwrap_or(usize::MAX), got }),
    };
    need("direct product's W", [m, k], w.len())?;
    need("direct product's C", [rows, m], c.len())?;
    if rows == 0 || m == 0 {
        return Ok(());
    }
    let xt = PackedB::try_transposed(x, rows, k)?;
    // Every element is written by the product below.
    let mut ct = super::reused("direct product", &[m, rows])?;
    let parts = super::split::ranges(m, rows.saturating_mul(k).saturating_mul(m));
    let shared = super::split::Rows::new(&mut ct);
    let out = super::split::Rows::new(&mut c[..rows * m]);
    super::split::run(&parts, |r| {
        // SAFETY: the parts' row ranges of W, and so of C^T, are disjoint.
        let dst = unsafe { shared.part(r.start * rows, r.len() * rows) };
        xt.gemm(&w[r.start * k..r.end * k], r.len(), k, dst, rows);
        // Each part transposes its own columns of C.
        // SAFETY: the parts' column ranges of C are disjoint; `i * m + j < rows * m`.
        let (cp, _) = unsafe { out.tail_ptr(0) };
        for (j, col) in r.zip(dst.chunks_exact(rows)) {
            for (i, &v) in col.iter().enumerate() {
                unsafe { *cp.add(i * m + j) = v };
            }
        }
    });
    super::pool::recycle(ct);
    xt.recycle();
    Ok(())
}
