//! A minimal owned tensor (shape + row-major data) for host-side I/O and the CPU reference.

use crate::error::{check_len, Result};

/// A dense row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

impl<T: Clone + Default> Tensor<T> {
    /// Wraps `data`, checking that it fills `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<T>) -> Result<Self> {
        check_len("tensor", &shape, data.len())?;
        Ok(Tensor { shape, data })
    }

    /// A tensor of `T::default()` (zeros for floats).
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor { shape, data: vec![T::default(); n] }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Maps every element, keeping the shape.
    pub fn map<U>(&self, f: impl Fn(&T) -> U) -> Tensor<U> {
        Tensor { shape: self.shape.clone(), data: self.data.iter().map(f).collect() }
    }
}
