//! A minimal owned tensor (shape + row-major data) for host-side I/O and the CPU reference.

use crate::error::{check_len, Error, Result};

/// Bytes of `len` elements of `T`, without overflow (for [`Error::OutOfMemory`]).
pub(crate) fn bytes_of<T>(len: u128) -> u128 {
    len.saturating_mul(std::mem::size_of::<T>() as u128)
}

/// The element count of `shape`, or [`Error::OutOfMemory`] when it overflows `usize`.
pub fn checked_len<T>(what: &str, shape: &[usize]) -> Result<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| Error::OutOfMemory {
        what: what.into(),
        bytes: bytes_of::<T>(shape.iter().fold(1u128, |acc, &d| acc.saturating_mul(d as u128))),
    })
}

/// A vector of `len` copies of `value`, allocated through a fallible reservation: an
/// allocation that cannot be met is [`Error::OutOfMemory`], never an abort.
pub fn try_filled<T: Clone>(what: &str, len: usize, value: T) -> Result<Vec<T>> {
    let mut v = try_with_capacity(what, len)?;
    v.resize(len, value);
    Ok(v)
}

/// An empty vector with room for exactly `len` elements, through a fallible reservation.
pub fn try_with_capacity<T>(what: &str, len: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::OutOfMemory { what: what.into(), bytes: bytes_of::<T>(len as u128) })?;
    Ok(v)
}

/// A dense row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements, row-major; `shape`'s product of them.
    pub data: Vec<T>,
}

impl<T: Clone + Default> Tensor<T> {
    /// Wraps `data`, checking that it fills `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<T>) -> Result<Self> {
        check_len("tensor", &shape, data.len())?;
        Ok(Tensor { shape, data })
    }

    /// A tensor of `T::default()` (zeros for floats).
    ///
    /// # Panics
    /// When the element count overflows or the allocation fails; [`Tensor::try_zeros`] returns
    /// an error instead.
    pub fn zeros(shape: Vec<usize>) -> Self {
        Self::try_zeros(shape).expect("Tensor::zeros")
    }

    /// A tensor of `T::default()`, or [`Error::OutOfMemory`] when it cannot be allocated.
    pub fn try_zeros(shape: Vec<usize>) -> Result<Self> {
        let n = checked_len::<T>("tensor", &shape)?;
        let data = try_filled("tensor", n, T::default())?;
        Ok(Tensor { shape, data })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Maps every element, keeping the shape.
    pub fn map<U>(&self, f: impl Fn(&T) -> U) -> Tensor<U> {
        Tensor { shape: self.shape.clone(), data: self.data.iter().map(f).collect() }
    }
}
