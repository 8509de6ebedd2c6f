//! The `packing` target's body (fuzz/fuzz_targets/packing.rs; replayed by the stable tests,
//! tests/it/fuzz_replay.rs). Packing constructors and accessors with arbitrary lengths and
//! shapes:
//! `PackedSequence::from_padded`, `from_sequences`, and hand-built packed sequences ->
//! `validate`, `lengths`, `to_padded`, `with_data`. Typed errors only, and what is accepted
//! must round-trip (asserted below).
use arbitrary::Arbitrary;
use wgpu_rnn::PackedSequence;

/// Data beyond this many elements is not generated (sizes themselves stay arbitrary).
const MAX_FILL: usize = 1 << 14;
/// `to_padded` outputs up to this many elements are built and checked.
const MAX_PADDED: usize = 1 << 22;
/// Elements (f32) past any 64-bit machine's address space (2^48 bytes): must be refused.
const UNALLOCATABLE: usize = 1 << 46;

#[path = "size.rs"]
mod size;
/// A size: mostly below 9, sometimes anything (overflow and allocation paths).
type Size = size::Size<9>;

#[derive(Arbitrary, Debug)]
enum Input {
    Padded { shape: [Size; 3], batch_first: bool, lengths: Vec<Size>, fill: bool, values: Vec<f32>, total: Option<Size> },
    Sequences { features: Size, lens: Vec<Size>, fill: bool, raw: Vec<Vec<f32>> },
    Hand {
        features: Size,
        batch_sizes: Vec<Size>,
        identity: bool,
        sorted: Vec<Size>,
        unsorted: Vec<Size>,
        fill: bool,
        data: Vec<f32>,
        total: Option<Size>,
        batch_first: bool,
        width: Size,
    },
}

fn values(n: Option<usize>, fallback: Vec<f32>) -> Vec<f32> {
    match n {
        Some(n) if n <= MAX_FILL => (0..n).map(|k| k as f32 + 0.5).collect(),
        _ => fallback,
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Checks an accepted packed sequence: valid, lengths consistent, padding and packing again
/// give back the same rows.
fn check(p: &PackedSequence<f32>, batch_first: bool, total: Option<usize>) {
    // Constructors refuse rows of no features (tests/fuzz_regressions/packing-from-padded-zero-
    // features*, fixed in cf48a9c); a hand-built one is refused by validate.
    if p.features == 0 {
        assert!(p.validate().is_err() && p.lengths().is_err() && p.to_padded(batch_first, 0.0, None).is_err());
        return;
    }
    p.validate().expect("an accepted packed sequence validates");
    let lengths = p.lengths().expect("lengths of a valid sequence");
    assert_eq!(lengths.len(), p.batch());
    let mut sorted = p.sorted_lengths().expect("sorted lengths of a valid sequence");
    assert!(sorted.windows(2).all(|w| w[0] >= w[1]), "sorted lengths not sorted");
    sorted.sort_unstable();
    let mut by_caller = lengths.clone();
    by_caller.sort_unstable();
    assert_eq!(sorted, by_caller, "lengths and sorted lengths differ as multisets");
    assert_eq!(lengths.iter().sum::<usize>(), p.rows());
    let (padded, l2) = p.to_padded(batch_first, -1.0, None).expect("to_padded of a valid sequence");
    assert_eq!(l2, lengths);
    let shape: [usize; 3] = padded.shape.clone().try_into().expect("3-D");
    let again = PackedSequence::from_padded(&padded.data, shape, batch_first, &lengths).expect("repack");
    let (padded2, _) = again.to_padded(batch_first, -1.0, None).expect("to_padded again");
    assert_eq!(bits(&padded.data), bits(&padded2.data), "pad -> pack -> pad changed the data");
    assert_eq!(again.batch_sizes, p.batch_sizes);
    if let Some(t) = total {
        // A padded size the machine can hold is built; one past any address space must be a
        // typed error (fallible allocation or overflow). Sizes in between would really be
        // allocated and filled, so they are skipped.
        let elems = t.checked_mul(p.batch()).and_then(|n| n.checked_mul(p.features));
        match elems {
            Some(n) if n <= MAX_PADDED => {
                let r = p.to_padded(batch_first, 0.0, Some(t));
                assert_eq!(r.is_ok(), t >= p.steps(), "total_length {t} with {} steps: {:?}", p.steps(), r.err());
            }
            Some(n) if n < UNALLOCATABLE => {}
            _ => assert!(p.to_padded(batch_first, 0.0, Some(t)).is_err(), "a padded output past the address space"),
        }
    }
}

/// The target's body: `arbitrary` bytes (as cargo-fuzz's typed target decodes them).
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else { return };
    match input {
    Input::Padded { shape, batch_first, lengths, fill, values: raw, total } => {
        let shape = shape.map(Size::get);
        let lengths: Vec<usize> = lengths.into_iter().map(Size::get).collect();
        let n = shape[0].checked_mul(shape[1]).and_then(|v| v.checked_mul(shape[2]));
        let x = values(if fill { n } else { None }, raw);
        let r = PackedSequence::from_padded(&x, shape, batch_first, &lengths);
        if shape[2] == 0 {
            assert!(r.is_err(), "from_padded accepted rows of no features");
        }
        if let Ok(p) = r {
            assert_eq!(p.features, shape[2]);
            if p.features > 0 {
                assert_eq!(p.lengths().expect("lengths"), lengths, "lengths come back in the caller's order");
            }
            check(&p, batch_first, total.map(Size::get));
        }
    }
    Input::Sequences { features, lens, fill, raw } => {
        let f = features.get();
        let seqs: Vec<Vec<f32>> = if fill {
            lens.iter().map(|l| values(l.get().checked_mul(f), Vec::new())).collect()
        } else {
            raw
        };
        let refs: Vec<&[f32]> = seqs.iter().map(|s| s.as_slice()).collect();
        if let Ok(p) = PackedSequence::from_sequences(&refs, f) {
            assert_eq!(p.lengths().expect("lengths"), seqs.iter().map(|s| s.len() / f).collect::<Vec<_>>());
            check(&p, false, None);
        }
    }
    Input::Hand { features, batch_sizes, identity, sorted, unsorted, fill, data, total, batch_first, width } => {
        let features = features.get();
        let batch_sizes: Vec<usize> = batch_sizes.into_iter().map(Size::get).collect();
        let b = batch_sizes.first().copied().unwrap_or(0);
        let (sorted_indices, unsorted_indices) = if identity && b <= MAX_FILL {
            ((0..b).collect(), (0..b).collect())
        } else {
            (sorted.into_iter().map(Size::get).collect(), unsorted.into_iter().map(Size::get).collect())
        };
        let n = batch_sizes.iter().try_fold(0usize, |a, &v| a.checked_add(v)).and_then(|n| n.checked_mul(features));
        let data = values(if fill { n } else { None }, data);
        let p = PackedSequence { data, features, batch_sizes, sorted_indices, unsorted_indices };
        let ok = p.validate().is_ok();
        // Accessors never panic, valid or not.
        if ok {
            check(&p, batch_first, total.map(Size::get));
            let w = width.get();
            let rows = p.rows();
            if let Some(m) = rows.checked_mul(w).filter(|&m| m <= MAX_FILL) {
                p.with_data(vec![0u8; m], w).expect("with_data of the right length");
            }
            let _ = p.with_data(vec![0u8; 3], w);
        } else {
            assert!(p.to_padded(batch_first, 0.0, total.map(Size::get)).is_err(), "to_padded of an invalid sequence");
            assert!(p.lengths().is_err() && p.sorted_lengths().is_err(), "lengths of an invalid sequence");
            let _ = (p.batch(), p.steps(), p.rows());
            let _ = p.with_data(vec![0u8; 3], width.get());
        }
    }
}
}
