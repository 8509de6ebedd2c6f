//! The scalar types the CPU reference is generic over: f32 (the real path) and f64 (gradient
//! checks by finite differences).

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A float the CPU reference computes in.
pub trait Float:
    Copy
    + Debug
    + Default
    + PartialEq
    + PartialOrd
    + Send
    + Sync
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
    + 'static
{
    /// Additive identity.
    fn zero() -> Self;
    /// Multiplicative identity.
    fn one() -> Self;
    /// Converts from f64 (rounding to nearest for f32).
    fn from_f64(x: f64) -> Self;
    /// Converts to f64 (exact).
    fn to_f64(self) -> f64;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// `e^self`.
    fn exp(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Neither infinite nor NaN.
    fn is_finite(self) -> bool;
    /// Fused multiply-add `self * b + c` (only called where the target has FMA).
    fn fma(self, b: Self, c: Self) -> Self;
    /// The logistic function.
    fn sigmoid(self) -> Self;
    /// The per-step product with a pre-packed B (see [`crate::cpu::smallgemm`]), then `bias`
    /// (at least B's columns, checked by the caller) added to each row of C.
    fn packed_gemm(pb: &crate::cpu::smallgemm::PackedB<Self>, a: &[Self], rows: usize, lda: usize, c: &mut [Self], ldc: usize, bias: Option<&[Self]>)
    where
        Self: Sized;
    /// [`Float::packed_gemm`] over some panels' columns into a raw C.
    ///
    /// # Safety
    /// As [`crate::cpu::smallgemm::PackedB::gemm_panels`], whose checks must have passed.
    unsafe fn packed_gemm_panels(pb: &crate::cpu::smallgemm::PackedB<Self>, a: &[Self], rows: usize, lda: usize, c: *mut Self, ldc: usize, panels: std::ops::Range<usize>)
    where
        Self: Sized;
    /// `max(self, 0)`; NaN maps to 0.
    fn relu(self) -> Self {
        if self > Self::zero() {
            self
        } else {
            Self::zero()
        }
    }
    /// Raw GEMM with strides, in elements (see `matrixmultiply::sgemm`).
    ///
    /// # Safety
    /// Every element addressed by the sizes and strides must lie inside its allocation.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
    /// `crate::cpu::gemm`'s own blocked path for this type, where it has one
    /// (`crate::cpu::gemm::blocked_f32`): `Ok(true)` when it computed C (and added `bias` to
    /// its rows), `Ok(false)` when the caller should use [`Float::gemm_raw`] instead.
    #[allow(clippy::too_many_arguments)]
    fn blocked_gemm(
        alpha: Self,
        a: crate::cpu::gemm::Mat<'_, Self>,
        opa: crate::cpu::gemm::Op,
        b: crate::cpu::gemm::Mat<'_, Self>,
        opb: crate::cpu::gemm::Op,
        beta: Self,
        c: &mut [Self],
        ldc: usize,
        bias: Option<&[Self]>,
    ) -> crate::Result<bool>
    where
        Self: Sized;
    /// `crate::cpu::gemm::shared_at_b`'s own blocked path for this type, where it has one
    /// (`crate::cpu::gemm::shared_at_b_f32`): `Ok(true)` when it computed every product and the
    /// sums, `Ok(false)` when the caller should compute them one GEMM at a time.
    fn blocked_shared_at_b(a: crate::cpu::gemm::Mat<'_, Self>, products: &mut [crate::cpu::gemm::AtB<'_, Self>], sums: Option<&mut [Self]>) -> crate::Result<bool>
    where
        Self: Sized;
}

/// No blocked shared-A product of our own for this type ([`Float::blocked_shared_at_b`]).
fn no_blocked_shared_at_b<T>(_: crate::cpu::gemm::Mat<'_, T>, _: &mut [crate::cpu::gemm::AtB<'_, T>], _: Option<&mut [T]>) -> crate::Result<bool> {
    Ok(false)
}

/// No blocked GEMM of our own for this type ([`Float::blocked_gemm`]).
#[allow(clippy::too_many_arguments)]
fn no_blocked_gemm<T>(_: T, _: crate::cpu::gemm::Mat<'_, T>, _: crate::cpu::gemm::Op, _: crate::cpu::gemm::Mat<'_, T>, _: crate::cpu::gemm::Op, _: T, _: &mut [T], _: usize, _: Option<&[T]>) -> crate::Result<bool> {
    Ok(false)
}

macro_rules! impl_float {
    ($t:ty, $gemm:path, $tanh:path, $sigmoid:path, $packed:expr, $panels:expr, $blocked:path, $shared:path) => {
        impl Float for $t {
            #[inline]
            fn zero() -> Self {
                0.0
            }
            #[inline]
            fn one() -> Self {
                1.0
            }
            #[inline]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn tanh(self) -> Self {
                $tanh(self)
            }
            #[inline]
            fn sigmoid(self) -> Self {
                $sigmoid(self)
            }
            #[inline]
            fn fma(self, b: Self, c: Self) -> Self {
                self.mul_add(b, c)
            }
            fn packed_gemm(pb: &crate::cpu::smallgemm::PackedB<Self>, a: &[Self], rows: usize, lda: usize, c: &mut [Self], ldc: usize, bias: Option<&[Self]>) {
                ($packed)(pb, a, rows, lda, c, ldc, bias)
            }
            unsafe fn packed_gemm_panels(
                pb: &crate::cpu::smallgemm::PackedB<Self>,
                a: &[Self],
                rows: usize,
                lda: usize,
                c: *mut Self,
                ldc: usize,
                panels: std::ops::Range<usize>,
            ) {
                ($panels)(pb, a, rows, lda, c, ldc, panels)
            }
            #[inline]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
            }
            fn blocked_gemm(
                alpha: Self,
                a: crate::cpu::gemm::Mat<'_, Self>,
                opa: crate::cpu::gemm::Op,
                b: crate::cpu::gemm::Mat<'_, Self>,
                opb: crate::cpu::gemm::Op,
                beta: Self,
                c: &mut [Self],
                ldc: usize,
                bias: Option<&[Self]>,
            ) -> crate::Result<bool> {
                $blocked(alpha, a, opa, b, opb, beta, c, ldc, bias)
            }
            fn blocked_shared_at_b(a: crate::cpu::gemm::Mat<'_, Self>, products: &mut [crate::cpu::gemm::AtB<'_, Self>], sums: Option<&mut [Self]>) -> crate::Result<bool> {
                $shared(a, products, sums)
            }
        }
    };
}

impl_float!(
    f32,
    matrixmultiply::sgemm,
    fast::tanh,
    fast::sigmoid,
    crate::cpu::smallgemm::f32_gemm_bias,
    crate::cpu::smallgemm::f32_gemm_panels,
    crate::cpu::gemm::blocked_f32,
    crate::cpu::gemm::shared_at_b_f32
);
impl_float!(
    f64,
    matrixmultiply::dgemm,
    f64::tanh,
    sigmoid_f64,
    crate::cpu::smallgemm::portable_bias::<f64>,
    crate::cpu::smallgemm::portable_panels::<f64>,
    no_blocked_gemm,
    no_blocked_shared_at_b
);

/// The logistic function in f64, written so that it neither overflows nor loses precision.
fn sigmoid_f64(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Branch-free f32 exp, sigmoid and tanh that vectorise (libm's `tanhf` costs ~17 ns a call
/// here and does not). exp: Cody-Waite reduction and a degree-6 polynomial, within 2 ulp on
/// the clamped range; tanh and sigmoid inherit an absolute error of a few 1e-8.
///
/// exp is written with fused multiply-adds (`mul_add`): one rounding each, exactly as IEEE 754
/// defines it on every target, so the bits do not depend on how it is computed. Inside the CPU
/// engine's time loops (`cpu::split::run_loop`'s AVX-512 and AVX2+FMA copies) each is one FMA
/// instruction, which halves the polynomial's dependency chain; elsewhere (the portable loop,
/// wasm32) `mul_add` may be a call to libm's `fmaf`, slower but giving the same bits.
pub mod fast {
    #[inline(always)]
    /// `e^x`, x clamped to `[-87, 88]`; within 2 ulp.
    pub fn exp(x: f32) -> f32 {
        let x = x.clamp(-87.0, 88.0);
        // n = round(x / ln 2), by the 1.5 * 2^23 trick (no rounding instruction needed).
        let t = x.mul_add(std::f32::consts::LOG2_E, 12_582_912.0);
        let n = t - 12_582_912.0;
        let r = (-n).mul_add(1.428_606_8e-6, (-n).mul_add(0.693_145_75, x));
        let p = r.mul_add(r.mul_add(r.mul_add(r.mul_add(r.mul_add(r.mul_add(0.001_388_819_8, 0.008_333_452), 0.041_666_668), 0.166_666_67), 0.5), 1.0), 1.0);
        // 2^n from t's bits: t lies in [2^23, 2^24), where the ulp is 1, so its low bits hold
        // n exactly (|n| <= 127). Integer lane ops, where `n as i32` (a saturating cast) made
        // LLVM fall back to one scalar conversion per element.
        let scale = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23);
        p * scale
    }

    #[inline(always)]
    /// `1 / (1 + e^-x)` through [`exp`].
    pub fn sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + exp(-x))
    }

    #[inline(always)]
    /// `1 - 2 / (e^(2x) + 1)`; absolute error about 1e-7.
    pub fn tanh(x: f32) -> f32 {
        // 1 - 2 / (e^{2x} + 1): exact limits at both ends, absolute error ~1e-7 near 0.
        1.0 - 2.0 / (exp(2.0 * x) + 1.0)
    }
}

/// Converts a slice between float types.
pub fn cast<A: Float, B: Float>(x: &[A]) -> Vec<B> {
    x.iter().map(|v| B::from_f64(v.to_f64())).collect()
}

/// Whether every element is finite; branch-free within blocks, so it vectorises (the
/// short-circuiting `all` did not, and cost as much as a T = 1 step's GEMM). A slice of at
/// least [`PARALLEL_CHECK_ELEMS`] is split across the CPU engine's threads: the check is a pass
/// over memory (DeepBench's GRU with T = 1 checks 6 MiB of weights in its forward and again in
/// its backward, a quarter of its forward's time on one thread).
pub(crate) fn all_finite<T: Float>(x: &[T]) -> bool {
    let serial = |x: &[T]| x.chunks(256).all(|c| c.iter().fold(true, |ok, v| ok & v.is_finite()));
    if x.len() < PARALLEL_CHECK_ELEMS {
        return serial(x);
    }
    let parts = crate::cpu::split::ranges(x.len(), usize::MAX);
    let bad = std::sync::atomic::AtomicBool::new(false);
    crate::cpu::split::run(&parts, |r| {
        if !serial(&x[r]) {
            bad.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    !bad.into_inner()
}

/// Elements from which [`all_finite`] splits its pass across threads (1 MiB of f32).
const PARALLEL_CHECK_ELEMS: usize = 1 << 18;

/// [`crate::Error::NonFinite`] naming `what` unless every element is finite.
pub(crate) fn check_finite<T: Float>(what: &str, x: &[T]) -> crate::error::Result<()> {
    if all_finite(x) {
        Ok(())
    } else {
        Err(crate::error::Error::NonFinite(what.into()))
    }
}

#[cfg(test)]
mod finite_tests {
    use super::*;

    /// A NaN or an infinity at the start, middle or end of a slice is found, below and above
    /// the size at which the check is split across threads, on 1 and 3 threads.
    #[test]
    fn all_finite_finds_a_bad_element_anywhere() {
        for threads in [1, 3] {
            crate::cpu::split::with_threads(threads, || {
                for len in [1, 255, 257, PARALLEL_CHECK_ELEMS - 1, 3 * PARALLEL_CHECK_ELEMS + 5] {
                    let mut x = vec![1f32; len];
                    assert!(all_finite(&x), "{len}");
                    for at in [0, len / 2, len - 1] {
                        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                            x[at] = bad;
                            assert!(!all_finite(&x), "{bad} at {at} of {len}, {threads} threads");
                            x[at] = 1.0;
                        }
                    }
                }
            })
        }
    }
}
