//! Variable-length batches in PyTorch's `PackedSequence` layout, and `torch.nn.utils.rnn`'s
//! `pack_padded_sequence` / `pad_packed_sequence` / `pack_sequence`.
//!
//! Packed layout: sequences sorted by decreasing length; `data` is time-major with no padding:
//! step t holds `batch_sizes[t]` rows, one per sorted sequence still running at t, in sorted
//! order. `sorted_indices[k]` is the caller's index of sorted sequence k, and
//! `unsorted_indices[b]` the sorted position of the caller's sequence b.

use crate::error::{check_len, Error, Result};
use crate::tensor::{checked_len, try_filled, Tensor};

/// A batch of variable-length sequences in PyTorch's packed layout.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedSequence<T> {
    /// `[N, features]`, N = sum of lengths, time-major, sorted order within each step.
    pub data: Vec<T>,
    /// Width of each row.
    pub features: usize,
    /// `[T_max]`: rows at each step, non-increasing, first = batch size.
    pub batch_sizes: Vec<usize>,
    /// `[B]`: sorted position -> caller index.
    pub sorted_indices: Vec<usize>,
    /// `[B]`: caller index -> sorted position.
    pub unsorted_indices: Vec<usize>,
}

/// Where step t starts in packed rows, for every t, plus the total N at the end.
pub fn step_offsets(batch_sizes: &[usize]) -> Vec<usize> {
    let mut off = Vec::with_capacity(batch_sizes.len() + 1);
    let mut acc = 0;
    off.push(0);
    for &b in batch_sizes {
        acc += b;
        off.push(acc);
    }
    off
}

/// Checks caller lengths against a padded length `t_max` and returns the sort order
/// (sorted position -> caller index), decreasing length, stable among equals.
pub fn sort_lengths(lengths: &[usize], t_max: usize) -> Result<Vec<usize>> {
    if lengths.is_empty() {
        return Err(Error::EmptyBatch("no sequences (lengths is empty)".into()));
    }
    for (b, &l) in lengths.iter().enumerate() {
        if l == 0 {
            return Err(Error::InvalidLengths(format!("sequence {b} has length 0; every length must be >= 1")));
        }
        if l > t_max {
            return Err(Error::InvalidLengths(format!(
                "sequence {b} has length {l}, longer than the {t_max} padded steps"
            )));
        }
    }
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
    Ok(order)
}

/// The inverse of a permutation.
pub fn invert_permutation(p: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; p.len()];
    for (i, &v) in p.iter().enumerate() {
        inv[v] = i;
    }
    inv
}

/// `batch_sizes` for sorted (non-increasing) lengths.
pub(crate) fn batch_sizes_of(sorted_lengths: &[usize]) -> Vec<usize> {
    let t_max = sorted_lengths[0];
    (0..t_max).map(|t| sorted_lengths.iter().take_while(|&&l| l > t).count()).collect()
}

impl<T: Copy + Default> PackedSequence<T> {
    /// `pack_padded_sequence(input, lengths, batch_first, enforce_sorted=False)`.
    ///
    /// `input`: `[T, B, F]` (or `[B, T, F]` with `batch_first`); `lengths`: `[B]`, any order,
    /// each in `1..=T`. Values past a sequence's length are ignored.
    pub fn from_padded(input: &[T], shape: [usize; 3], batch_first: bool, lengths: &[usize]) -> Result<Self> {
        checked_len::<T>("padded input", &shape)?;
        check_len("padded input", &shape, input.len())?;
        let (t_max, b, f) = if batch_first { (shape[1], shape[0], shape[2]) } else { (shape[0], shape[1], shape[2]) };
        // As in `from_sequences` and `validate`: rows of no features are refused (with F = 0
        // the size check above passes for any T, and T steps were built before).
        if f == 0 {
            return Err(Error::InvalidConfig("features must be positive".into()));
        }
        if b != lengths.len() {
            return Err(Error::ShapeMismatch {
                what: "lengths (one per sequence)".into(),
                expected: vec![b],
                got: vec![lengths.len()],
            });
        }
        let order = sort_lengths(lengths, t_max)?;
        let sorted_lengths: Vec<usize> = order.iter().map(|&i| lengths[i]).collect();
        let batch_sizes = batch_sizes_of(&sorted_lengths);
        let n: usize = batch_sizes.iter().sum();
        let mut data = Vec::with_capacity(n * f);
        for (t, &bs) in batch_sizes.iter().enumerate() {
            for &src in &order[..bs] {
                let row = if batch_first { src * t_max + t } else { t * b + src };
                data.extend_from_slice(&input[row * f..(row + 1) * f]);
            }
        }
        let unsorted_indices = invert_permutation(&order);
        Ok(PackedSequence { data, features: f, batch_sizes, sorted_indices: order, unsorted_indices })
    }

    /// `pack_sequence(sequences, enforce_sorted=False)`: each sequence is `[L_i, F]`.
    pub fn from_sequences(seqs: &[&[T]], features: usize) -> Result<Self> {
        if features == 0 {
            return Err(Error::InvalidConfig("features must be positive".into()));
        }
        let mut lengths = Vec::with_capacity(seqs.len());
        for (i, s) in seqs.iter().enumerate() {
            if s.len() % features != 0 {
                return Err(Error::LengthMismatch {
                    what: format!("sequence {i}"),
                    shape: vec![s.len() / features, features],
                    expected: (s.len() / features) * features,
                    got: s.len(),
                });
            }
            lengths.push(s.len() / features);
        }
        let t_max = lengths.iter().copied().max().unwrap_or(0);
        let order = sort_lengths(&lengths, t_max)?;
        let sorted_lengths: Vec<usize> = order.iter().map(|&i| lengths[i]).collect();
        let batch_sizes = batch_sizes_of(&sorted_lengths);
        let mut data = Vec::new();
        for (t, &bs) in batch_sizes.iter().enumerate() {
            for &src in &order[..bs] {
                data.extend_from_slice(&seqs[src][t * features..(t + 1) * features]);
            }
        }
        let unsorted_indices = invert_permutation(&order);
        Ok(PackedSequence { data, features, batch_sizes, sorted_indices: order, unsorted_indices })
    }

    /// Checks the structure (for packed sequences built by hand).
    pub fn validate(&self) -> Result<()> {
        let Some(&b) = self.batch_sizes.first() else {
            return Err(Error::EmptyBatch("batch_sizes is empty".into()));
        };
        if b == 0 {
            return Err(Error::EmptyBatch("batch_sizes[0] is 0".into()));
        }
        if self.features == 0 {
            return Err(Error::InvalidConfig("features must be positive".into()));
        }
        if self.batch_sizes.windows(2).any(|w| w[1] > w[0]) || self.batch_sizes.contains(&0) {
            return Err(Error::InvalidLengths("batch_sizes must be positive and non-increasing".into()));
        }
        let n = self.batch_sizes.iter().try_fold(0usize, |acc, &bs| acc.checked_add(bs));
        let Some(n) = n.filter(|n| n.checked_mul(self.features).is_some()) else {
            return Err(Error::InvalidLengths("batch_sizes sum past the addressable size".into()));
        };
        check_len("packed data", &[n, self.features], self.data.len())?;
        if self.sorted_indices.len() != b || self.unsorted_indices.len() != b {
            return Err(Error::ShapeMismatch {
                what: "sorted_indices / unsorted_indices".into(),
                expected: vec![b],
                got: vec![self.sorted_indices.len(), self.unsorted_indices.len()],
            });
        }
        for (k, &i) in self.sorted_indices.iter().enumerate() {
            if i >= b || self.unsorted_indices[i] != k {
                return Err(Error::InvalidLengths(
                    "sorted_indices and unsorted_indices are not inverse permutations".into(),
                ));
            }
        }
        Ok(())
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.batch_sizes.first().copied().unwrap_or(0)
    }

    /// Longest length (number of steps).
    pub fn steps(&self) -> usize {
        self.batch_sizes.len()
    }

    /// Total rows N.
    pub fn rows(&self) -> usize {
        // Saturating, so a hand-built value with absurd batch sizes cannot overflow here.
        self.batch_sizes.iter().fold(0, |acc: usize, &bs| acc.saturating_add(bs))
    }

    /// Lengths in sorted order. Checks the structure first ([`PackedSequence::validate`]), so
    /// a hand-built value gets a typed error, not a panic.
    pub fn sorted_lengths(&self) -> Result<Vec<usize>> {
        self.validate()?;
        Ok(self.sorted_lengths_unchecked())
    }

    /// [`PackedSequence::sorted_lengths`] of a validated value.
    fn sorted_lengths_unchecked(&self) -> Vec<usize> {
        (0..self.batch()).map(|k| self.batch_sizes.iter().take_while(|&&bs| bs > k).count()).collect()
    }

    /// Lengths in the caller's order. Checks the structure first ([`PackedSequence::validate`]),
    /// so a hand-built value gets a typed error, not a panic.
    pub fn lengths(&self) -> Result<Vec<usize>> {
        self.validate()?;
        let sl = self.sorted_lengths_unchecked();
        Ok(self.unsorted_indices.iter().map(|&k| sl[k]).collect())
    }

    /// The same structure with other row data (e.g. an RNN output of another width).
    pub fn with_data<U>(&self, data: Vec<U>, features: usize) -> Result<PackedSequence<U>> {
        checked_len::<U>("packed data", &[self.rows(), features])?;
        check_len("packed data", &[self.rows(), features], data.len())?;
        Ok(PackedSequence {
            data,
            features,
            batch_sizes: self.batch_sizes.clone(),
            sorted_indices: self.sorted_indices.clone(),
            unsorted_indices: self.unsorted_indices.clone(),
        })
    }

    /// `pad_packed_sequence(seq, batch_first, padding_value, total_length)`: returns the
    /// padded tensor (`[T, B, F]`, or `[B, T, F]` with `batch_first`, T = `total_length` or the
    /// longest length) in the caller's order, and the lengths in the caller's order.
    pub fn to_padded(&self, batch_first: bool, padding_value: T, total_length: Option<usize>) -> Result<(Tensor<T>, Vec<usize>)> {
        self.validate()?;
        let t_max = self.steps();
        let t_out = match total_length {
            Some(tl) if tl < t_max => {
                return Err(Error::InvalidLengths(format!(
                    "total_length {tl} is shorter than the longest sequence ({t_max})"
                )))
            }
            Some(tl) => tl,
            None => t_max,
        };
        let (b, f) = (self.batch(), self.features);
        let shape = if batch_first { vec![b, t_out, f] } else { vec![t_out, b, f] };
        let len = checked_len::<T>("padded output", &[t_out, b, f])?;
        let mut out = try_filled("padded output", len, padding_value)?;
        let off = step_offsets(&self.batch_sizes);
        for (t, &bs) in self.batch_sizes.iter().enumerate() {
            for k in 0..bs {
                let dst_b = self.sorted_indices[k];
                let row = if batch_first { dst_b * t_out + t } else { t * b + dst_b };
                let src = off[t] + k;
                out[row * f..(row + 1) * f].copy_from_slice(&self.data[src * f..(src + 1) * f]);
            }
        }
        Ok((Tensor { shape, data: out }, self.lengths()?))
    }
}
