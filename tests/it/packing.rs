//! Pack/unpack against `torch.nn.utils.rnn` semantics: round trips and edges.

use crate::common::{rng, uniform};
use rand::Rng;
use wgpu_rnn::{Error, PackedSequence};

fn seq(t: usize, b: usize, f: usize) -> Vec<f64> {
    (0..t * b * f).map(|i| i as f64).collect()
}

#[test]
fn pack_matches_pytorch_layout() {
    // lengths [2, 4, 3]: sorted [4, 3, 2] = sequences [1, 2, 0].
    let x = seq(4, 3, 1); // x[t, b] = 3t + b
    let p = PackedSequence::from_padded(&x, [4, 3, 1], false, &[2, 4, 3]).unwrap();
    assert_eq!(p.batch_sizes, vec![3, 3, 2, 1]);
    assert_eq!(p.sorted_indices, vec![1, 2, 0]);
    assert_eq!(p.unsorted_indices, vec![2, 0, 1]);
    assert_eq!(p.data, vec![1.0, 2.0, 0.0, 4.0, 5.0, 3.0, 7.0, 8.0, 10.0]);
    assert_eq!(p.lengths().unwrap(), vec![2, 4, 3]);
    assert_eq!(p.sorted_lengths().unwrap(), vec![4, 3, 2]);
}

#[test]
fn round_trip_time_and_batch_major_with_padding() {
    let mut g = rng(5);
    for trial in 0..50 {
        let b = g.random_range(1..7);
        let t = g.random_range(1..9);
        let f = g.random_range(1..4);
        let lengths: Vec<usize> = (0..b).map(|_| g.random_range(1..=t)).collect();
        let batch_first = trial % 2 == 1;
        let mut x = uniform(&mut g, t * b * f, 1.0);
        // Zero past each length, as pad_packed_sequence gives back.
        for (bi, &l) in lengths.iter().enumerate() {
            for ti in l..t {
                let row = if batch_first { bi * t + ti } else { ti * b + bi };
                x[row * f..(row + 1) * f].fill(0.0);
            }
        }
        let shape = if batch_first { [b, t, f] } else { [t, b, f] };
        let p = PackedSequence::from_padded(&x, shape, batch_first, &lengths).unwrap();
        p.validate().unwrap();
        assert_eq!(p.rows(), lengths.iter().sum::<usize>());
        let (back, l2) = p.to_padded(batch_first, 0.0, Some(t)).unwrap();
        assert_eq!(l2, lengths);
        assert_eq!(back.shape, shape.to_vec());
        assert_eq!(back.data, x, "trial {trial}");
        // Without total_length the time dimension is the longest length.
        let (short, _) = p.to_padded(batch_first, 0.0, None).unwrap();
        let tm = *lengths.iter().max().unwrap();
        assert_eq!(short.len(), tm * b * f);
    }
}

#[test]
fn edges_length_one_equal_lengths_one_sequence_padding_value_total_length() {
    let x = seq(1, 3, 2);
    let p = PackedSequence::from_padded(&x, [1, 3, 2], false, &[1, 1, 1]).unwrap();
    assert_eq!(p.batch_sizes, vec![3]);
    assert_eq!(p.sorted_indices, vec![0, 1, 2], "equal lengths keep their order");
    assert_eq!(p.data, x);

    let x = seq(5, 1, 2);
    let p = PackedSequence::from_padded(&x, [5, 1, 2], false, &[5]).unwrap();
    assert_eq!(p.batch_sizes, vec![1; 5]);
    assert_eq!(p.data, x);

    let x = seq(3, 2, 1);
    let p = PackedSequence::from_padded(&x, [3, 2, 1], false, &[1, 3]).unwrap();
    let (pad, _) = p.to_padded(false, -1.0, Some(5)).unwrap();
    assert_eq!(pad.shape, vec![5, 2, 1]);
    assert_eq!(pad.data, vec![0.0, 1.0, -1.0, 3.0, -1.0, 5.0, -1.0, -1.0, -1.0, -1.0]);
}

#[test]
fn pack_sequence_list() {
    let a = [1.0, 2.0];
    let b = [3.0, 4.0, 5.0];
    let p = PackedSequence::from_sequences(&[&a[..], &b[..]], 1).unwrap();
    assert_eq!(p.batch_sizes, vec![2, 2, 1]);
    assert_eq!(p.data, vec![3.0, 1.0, 4.0, 2.0, 5.0]);
    assert_eq!(p.sorted_indices, vec![1, 0]);
    assert_eq!(p.unsorted_indices, vec![1, 0]);
}

#[test]
fn pack_errors() {
    let x = seq(3, 2, 1);
    assert!(matches!(PackedSequence::from_padded(&x, [3, 2, 1], false, &[0, 2]), Err(Error::InvalidLengths(_))));
    assert!(matches!(PackedSequence::from_padded(&x, [3, 2, 1], false, &[4, 2]), Err(Error::InvalidLengths(_))));
    assert!(matches!(PackedSequence::from_padded(&x, [3, 2, 1], false, &[1]), Err(Error::ShapeMismatch { .. })));
    assert!(matches!(PackedSequence::<f64>::from_padded(&[], [3, 0, 1], false, &[]), Err(Error::EmptyBatch(_))));
    assert!(matches!(PackedSequence::from_padded(&x[..5], [3, 2, 1], false, &[1, 1]), Err(Error::LengthMismatch { .. })));
    let p = PackedSequence::from_padded(&x, [3, 2, 1], false, &[3, 2]).unwrap();
    assert!(matches!(p.to_padded(false, 0.0, Some(2)), Err(Error::InvalidLengths(_))));
    let mut bad = p.clone();
    bad.batch_sizes = vec![1, 2, 2];
    assert!(bad.validate().is_err());
    let mut bad = p.clone();
    bad.sorted_indices = vec![0, 0];
    assert!(bad.validate().is_err());
}
