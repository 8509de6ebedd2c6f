//! The sequence tables a plan uploads once (binding `seq` of the step and utility kernels):
//! per direction `prev[]` (the tape row each packed row's state starts from) and `last[]`
//! (each sequence's final packed row), then the step offsets and batch sizes the
//! single-dispatch path walks. Built on the host from the batch structure alone, no GPU.
//!
//! Words, in upload order (N packed rows, B sequences, T steps, D directions):
//! - `prev[dir]` `[N]` for each direction: a packed row, or `N + b` for sequence b's initial
//!   state (b in the caller's order, as the tape's initial-state rows are);
//! - `last[dir]` `[B]` for each direction, in the caller's order: the packed row that holds
//!   the sequence's final state (the reverse direction ends at the first step);
//! - `off` `[T]`: the first packed row of each step;
//! - `batch_sizes` `[T]`.

use crate::packing::{invert_permutation, step_offsets};

/// The sequence tables of one batch structure, in the layout the kernels read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SeqTables {
    words: Vec<u32>,
    prev_offs: Vec<u32>,
    last_offs: Vec<u32>,
    off_tab: u32,
    bs_tab: u32,
    /// First packed row of each step (host side, as `off` on the device).
    step_offsets: Vec<usize>,
    rows: usize,
    batch: usize,
}

impl SeqTables {
    /// The tables of a valid packed layout (`SeqLayout::new`'s checks: `batch_sizes` positive
    /// and non-increasing, `sorted_indices` a permutation of `0..batch_sizes[0]`) for
    /// `directions` directions (1 or 2).
    pub(crate) fn new(batch_sizes: &[usize], sorted_indices: &[usize], directions: usize) -> Self {
        let steps = batch_sizes.len();
        let n: usize = batch_sizes.iter().sum();
        let b = batch_sizes.first().copied().unwrap_or(0);
        let off = step_offsets(batch_sizes);
        let mut seq: Vec<u32> = Vec::with_capacity(2 * (n + b) * directions);
        let mut prev_offs = Vec::new();
        for dir in 0..directions {
            prev_offs.push(seq.len() as u32);
            for (t, &bs) in batch_sizes.iter().enumerate() {
                for (r, &seq_b) in sorted_indices[..bs].iter().enumerate() {
                    // A packed row, or N + b: sequence b's initial state row in the tape.
                    let from_state = (n + seq_b) as u32;
                    let pv = if dir == 0 {
                        if t == 0 { from_state } else { (off[t - 1] + r) as u32 }
                    } else if t + 1 < steps && r < batch_sizes[t + 1] {
                        (off[t + 1] + r) as u32
                    } else {
                        from_state
                    };
                    seq.push(pv);
                }
            }
        }
        // A permutation (SeqLayout::new checked it).
        let unsorted = invert_permutation(sorted_indices);
        let sorted_len: Vec<usize> = (0..b).map(|k| batch_sizes.iter().take_while(|&&x| x > k).count()).collect();
        let mut last_offs = Vec::new();
        for dir in 0..directions {
            last_offs.push(seq.len() as u32);
            for &k in &unsorted {
                seq.push(if dir == 0 { (off[sorted_len[k] - 1] + k) as u32 } else { k as u32 });
            }
        }
        // Step offsets and batch sizes, for the single-dispatch path.
        let off_tab = seq.len() as u32;
        seq.extend(off[..steps].iter().map(|&o| o as u32));
        let bs_tab = seq.len() as u32;
        seq.extend(batch_sizes.iter().map(|&x| x as u32));
        SeqTables { words: seq, prev_offs, last_offs, off_tab, bs_tab, step_offsets: off, rows: n, batch: b }
    }

    /// Every table, concatenated: the buffer the plan uploads.
    pub(crate) fn words(&self) -> &[u32] {
        &self.words
    }

    /// Word offset of direction `dir`'s `prev[]` (`StepParams::prev_off`, `UtilParams::seq_off`).
    pub(crate) fn prev_off(&self, dir: usize) -> u32 {
        self.prev_offs[dir]
    }

    /// Word offset of direction `dir`'s `last[]`.
    pub(crate) fn last_off(&self, dir: usize) -> u32 {
        self.last_offs[dir]
    }

    /// Word offset of the step offsets (`off_tab`).
    pub(crate) fn off_tab(&self) -> u32 {
        self.off_tab
    }

    /// Word offset of the batch sizes (`bs_tab`).
    pub(crate) fn bs_tab(&self) -> u32 {
        self.bs_tab
    }

    /// `prev[]` of direction `dir`: for each packed row, the tape row its state starts from.
    /// (The plan needs only the offsets; the tables themselves are for tests and debugging.)
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn prev(&self, dir: usize) -> &[u32] {
        let at = self.prev_offs[dir] as usize;
        &self.words[at..at + self.rows]
    }

    /// `last[]` of direction `dir`: for each sequence (caller's order), the packed row of its
    /// final state.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn last(&self, dir: usize) -> &[u32] {
        let at = self.last_offs[dir] as usize;
        &self.words[at..at + self.batch]
    }

    /// The first packed row of step `t`.
    pub(crate) fn step_offset(&self, t: usize) -> usize {
        self.step_offsets[t]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packing::PackedSequence;

    /// Packs sequences of `lengths` (caller's order, width 1) and builds their tables.
    fn tables(lengths: &[usize], directions: usize) -> (PackedSequence<f32>, SeqTables) {
        let t = lengths.iter().copied().max().unwrap();
        let padded = vec![0.0f32; t * lengths.len()];
        let p = PackedSequence::from_padded(&padded, [t, lengths.len(), 1], false, lengths).unwrap();
        let tab = SeqTables::new(&p.batch_sizes, &p.sorted_indices, directions);
        (p, tab)
    }

    /// The packed row of caller sequence `s` at its step `t`, found by walking the layout.
    fn row_of(p: &PackedSequence<f32>, s: usize, t: usize) -> usize {
        let k = p.sorted_indices.iter().position(|&i| i == s).unwrap();
        p.batch_sizes[..t].iter().sum::<usize>() + k
    }

    #[test]
    fn prev_and_last_on_unsorted_lengths_both_directions() {
        // Caller order lengths 2, 4, 1, 3: sorted 4 (seq 1), 3 (seq 3), 2 (seq 0), 1 (seq 2).
        // batch_sizes [4, 3, 2, 1]; packed rows by step: t0 0..4, t1 4..7, t2 7..9, t3 9.
        // N = 10, so sequence b's initial state is row 10 + b.
        let (p, tab) = tables(&[2, 4, 1, 3], 2);
        assert_eq!(p.batch_sizes, vec![4, 3, 2, 1]);
        assert_eq!(p.sorted_indices, vec![1, 3, 0, 2]);
        // Forward: step 0 starts from the initial states (sorted position k is sequence
        // sorted_indices[k]), later steps from the same sorted position one step earlier.
        assert_eq!(tab.prev(0), &[11, 13, 10, 12, 0, 1, 2, 4, 5, 7]);
        // Reverse: a row starts from the same sorted position one step later, or from its
        // initial state at its sequence's last step.
        assert_eq!(tab.prev(1), &[4, 5, 6, 12, 7, 8, 10, 9, 13, 11]);
        // Forward ends at each sequence's last step, reverse at step 0 (row = sorted position).
        assert_eq!(tab.last(0), &[6, 9, 3, 8]);
        assert_eq!(tab.last(1), &[2, 0, 3, 1]);
        assert_eq!(tab.off_tab(), 2 * 10 + 2 * 4);
        assert_eq!(&tab.words()[tab.off_tab() as usize..tab.bs_tab() as usize], &[0, 4, 7, 9]);
        assert_eq!(&tab.words()[tab.bs_tab() as usize..], &[4, 3, 2, 1]);
        assert_eq!((tab.prev_off(0), tab.prev_off(1), tab.last_off(0), tab.last_off(1)), (0, 10, 20, 24));
        assert_eq!((0..4).map(|t| tab.step_offset(t)).collect::<Vec<_>>(), vec![0, 4, 7, 9]);
    }

    #[test]
    fn prev_and_last_agree_with_each_sequence_walked_alone() {
        for lengths in [vec![3usize], vec![1, 1, 1], vec![2, 5, 5, 1, 3], vec![7, 1, 4, 4, 2, 6], vec![1, 9]] {
            let (p, tab) = tables(&lengths, 2);
            let n = p.rows();
            assert_eq!(tab.words().len(), 2 * n + 2 * lengths.len() + 2 * p.batch_sizes.len());
            for (s, &len) in lengths.iter().enumerate() {
                let init = (n + s) as u32;
                for t in 0..len {
                    let row = row_of(&p, s, t);
                    let fwd = if t == 0 { init } else { row_of(&p, s, t - 1) as u32 };
                    let rev = if t + 1 == len { init } else { row_of(&p, s, t + 1) as u32 };
                    assert_eq!(tab.prev(0)[row], fwd, "{lengths:?}: forward prev of sequence {s} step {t}");
                    assert_eq!(tab.prev(1)[row], rev, "{lengths:?}: reverse prev of sequence {s} step {t}");
                }
                assert_eq!(tab.last(0)[s] as usize, row_of(&p, s, len - 1), "{lengths:?}: forward last of {s}");
                assert_eq!(tab.last(1)[s] as usize, row_of(&p, s, 0), "{lengths:?}: reverse last of {s}");
            }
            // One direction: the same first half, laid out without the reverse tables.
            let (_, one) = tables(&lengths, 1);
            assert_eq!(one.prev(0), tab.prev(0));
            assert_eq!(one.last(0), tab.last(0));
            assert_eq!(one.last_off(0) as usize, n);
        }
    }
}
