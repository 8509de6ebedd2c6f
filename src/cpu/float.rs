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
    fn zero() -> Self;
    fn one() -> Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn tanh(self) -> Self;
    fn exp(self) -> Self;
    fn is_finite(self) -> bool;
    /// The logistic function, written so that it neither overflows nor loses precision.
    fn sigmoid(self) -> Self {
        if self >= Self::zero() {
            Self::one() / (Self::one() + (-self).exp())
        } else {
            let e = self.exp();
            e / (Self::one() + e)
        }
    }
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
}

macro_rules! impl_float {
    ($t:ty, $gemm:path) => {
        impl Float for $t {
            fn zero() -> Self {
                0.0
            }
            fn one() -> Self {
                1.0
            }
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
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
        }
    };
}

impl_float!(f32, matrixmultiply::sgemm);
impl_float!(f64, matrixmultiply::dgemm);

/// Converts a slice between float types.
pub fn cast<A: Float, B: Float>(x: &[A]) -> Vec<B> {
    x.iter().map(|v| B::from_f64(v.to_f64())).collect()
}
