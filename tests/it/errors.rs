//! Bad input gets the right typed error, never a panic.

use crate::common::golden_dir;
use wgpu_rnn::case::Case;
use wgpu_rnn::cpu::{self, Pass};
use wgpu_rnn::io::TensorFile;
use wgpu_rnn::{Error, Mode, PackedSequence, RnnConfig, Weights};

fn packed(t: usize, b: usize, i: usize, lengths: &[usize]) -> PackedSequence<f32> {
    PackedSequence::from_padded(&vec![0.5; t * b * i], [t, b, i], false, lengths).unwrap()
}

#[test]
fn config_validation() {
    assert!(matches!("QRNN".parse::<Mode>(), Err(Error::UnknownMode(_))));
    assert_eq!("rnn_relu".parse::<Mode>().unwrap(), Mode::RnnRelu);
    let bad = |c: RnnConfig| assert!(matches!(c.validate(), Err(Error::InvalidConfig(_))), "{c:?}");
    bad(RnnConfig::new(Mode::Lstm, 3, 4).proj(4));
    bad(RnnConfig::new(Mode::Lstm, 3, 4).proj(5));
    bad(RnnConfig::new(Mode::Gru, 3, 4).proj(2));
    bad(RnnConfig::new(Mode::Lstm, 0, 4));
    bad(RnnConfig::new(Mode::Lstm, 3, 0));
    bad(RnnConfig::new(Mode::Lstm, 3, 4).layers(0));
    RnnConfig::new(Mode::Lstm, 3, 4).proj(3).validate().unwrap();
}

#[test]
fn forward_rejects_wrong_shapes_and_non_finite() {
    let cfg = RnnConfig::new(Mode::Lstm, 3, 4).layers(2);
    let w = Weights::<f32>::init_uniform(&cfg, 0).unwrap();
    let x = packed(5, 2, 3, &[5, 2]);
    let r = cpu::forward(&w, &packed(5, 2, 2, &[5, 2]), &[], Pass::Inference);
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
    let r = cpu::forward(&w, &x, &[Some(&[0.0; 7])], Pass::Inference);
    assert!(matches!(r, Err(Error::LengthMismatch { .. })));
    let r = cpu::forward(&w, &x, &[None, Some(&[0.0; 3])], Pass::Inference);
    assert!(matches!(r, Err(Error::LengthMismatch { .. })));
    let mut xn = x.clone();
    xn.data[3] = f32::NAN;
    assert!(matches!(cpu::forward(&w, &xn, &[], Pass::Inference), Err(Error::NonFinite(_))));
    let mut wn = w.clone();
    wn.params[1].w_hh[0] = f32::INFINITY;
    assert!(matches!(cpu::forward(&wn, &x, &[], Pass::Inference), Err(Error::NonFinite(n)) if n == "weight_hh_l1"));
    // c0 for a cell without a cell state.
    let g = Weights::<f32>::init_uniform(&RnnConfig::new(Mode::Gru, 3, 4), 0).unwrap();
    assert!(matches!(cpu::forward(&g, &x, &[None, Some(&[0.0; 8])], Pass::Inference), Err(Error::InvalidConfig(_))));
    // A hand-built packed sequence with an empty batch.
    let mut e = x.clone();
    e.batch_sizes.clear();
    assert!(matches!(cpu::forward(&w, &e, &[], Pass::Inference), Err(Error::EmptyBatch(_))));
}

/// A NaN or an infinity anywhere in any parameter of any cell (first, middle or last element)
/// gets the same error over every batch: whether the CPU engine checks the input projection's
/// part of W_ih on every row of its product (at most `smallgemm::DIRECT_MAX_ROWS`), on its first
/// row (more rows, made up front) or on W (made step by step), over zero inputs (the product's
/// terms then `0 x inf`), and
/// with a NaN input too; for a trained parameter that error names it (`NonFinite`), for the
/// uRNN's fixed permutation it is the permutation's own refusal. Likewise in f16 storage (the
/// same error over few rows as over many), and with a second bad parameter after it (the first
/// in `state_dict` order is named).
#[test]
fn every_non_finite_parameter_is_named() {
    use wgpu_rnn::cpu::smallgemm::DIRECT_MAX_ROWS;
    use wgpu_rnn::Precision;
    let (few, many) = (packed(3, 2, 3, &[3, 2]), packed(40, 2, 3, &[40, 33]));
    assert!(few.rows() <= DIRECT_MAX_ROWS && many.rows() > DIRECT_MAX_ROWS);
    // Enough rows and batch for the input projection made step by step (W_ih checked itself).
    let per_step = packed(32, 8, 3, &[32; 8]);
    let mut zeros = few.clone();
    zeros.data.iter_mut().for_each(|v| *v = 0.0);
    let mut many_zeros = many.clone();
    many_zeros.data.iter_mut().for_each(|v| *v = 0.0);
    let mut nan_input = few.clone();
    nan_input.data[0] = f32::NAN;
    let mut cells = 0;
    for &mode in Mode::REGISTRY {
        let cfg = RnnConfig::new(mode, 3, 4).layers(2).bidirectional(true);
        let Ok(w) = Weights::<f32>::init_uniform(&cfg, 1) else { continue };
        cells += 1;
        let mut params = 0;
        w.for_each(|_, _, _, _| params += 1);
        // Sets element `at(len)` of parameter `target` (state_dict order) to `bad`; its name and
        // whether it is a fixed tensor.
        let spoil = |w: &mut Weights<f32>, target: usize, at: &dyn Fn(usize) -> usize, bad: f32| {
            let (mut k, mut name, mut fixed) = (0, String::new(), false);
            w.for_each_mut(|def, l, d, v| {
                if k == target {
                    v[at(v.len())] = bad;
                    (name, fixed) = (RnnConfig::param_name(def.stem, l, d), def.fixed);
                }
                k += 1;
            });
            (name, fixed)
        };
        let error = |w: &Weights<f32>, x: &PackedSequence<f32>, what: &str| match cpu::forward(w, x, &[], Pass::Inference) {
            Err(e) => format!("{e:?}"),
            Ok(_) => panic!("{mode} {what}: accepted"),
        };
        let ats: [&dyn Fn(usize) -> usize; 3] = [&|_| 0, &|n| n / 2, &|n| n - 1];
        for target in 0..params {
            for (a, at) in ats.iter().enumerate() {
                let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][(target + a) % 3];
                let mut wn = w.clone();
                let (name, fixed) = spoil(&mut wn, target, at, bad);
                let what = format!("{name}[{a}] = {bad}");
                let want = error(&wn, &many, &what);
                if !fixed {
                    assert_eq!(want, format!("{:?}", Error::NonFinite(name.clone())), "{mode} {what}");
                }
                for (x, over) in [(&few, "few rows"), (&zeros, "zero inputs"), (&nan_input, "a NaN input too"), (&many_zeros, "many zero rows"), (&per_step, "the projection step by step")] {
                    assert_eq!(error(&wn, x, &what), want, "{mode} {what}, {over}");
                }
                if a == 0 && !fixed {
                    let f16 = Weights { config: cfg.clone().with_precision(Precision::F16), params: wn.params.clone() };
                    assert_eq!(error(&f16, &few, &what), error(&f16, &many, &what), "{mode} {what}, f16 storage");
                    // A second bad parameter after it: the first is named.
                    if target + 1 < params {
                        let (_, last_fixed) = spoil(&mut wn, params - 1, at, f32::NAN);
                        let both = error(&wn, &many, &what);
                        if !last_fixed {
                            assert_eq!(both, want, "{mode} {what} and the last parameter");
                        }
                        assert_eq!(error(&wn, &few, &what), both, "{mode} {what} and the last parameter, few rows");
                    }
                }
            }
        }
    }
    assert!(cells >= 10, "only {cells} cells built a 2-layer bidirectional stack");
}

#[test]
fn backward_rejects_wrong_gradient_shapes() {
    let cfg = RnnConfig::new(Mode::Lstm, 3, 4);
    let w = Weights::<f32>::init_uniform(&cfg, 0).unwrap();
    let x = packed(4, 2, 3, &[4, 3]);
    let (_, tape) = cpu::forward(&w, &x, &[], Pass::Training).unwrap();
    let tape = tape.unwrap();
    let n = x.rows();
    assert!(matches!(cpu::backward(&w, &tape, &vec![0.0; n * 4 - 1], &[]), Err(Error::LengthMismatch { .. })));
    assert!(matches!(cpu::backward(&w, &tape, &vec![0.0; n * 4], &[Some(&[0.0; 3])]), Err(Error::LengthMismatch { .. })));
    let (_, none) = cpu::forward(&w, &x, &[], Pass::Inference).unwrap();
    assert!(none.is_none(), "inference keeps nothing");
}

/// Copies a golden case with one tensor changed or removed.
fn edited(case: &str, f: impl FnOnce(&mut TensorFile)) -> TensorFile {
    let mut file = TensorFile::read(golden_dir().join(case)).unwrap();
    f(&mut file);
    file
}

#[test]
fn case_files_with_missing_or_misshaped_tensors() {
    let r = Case::<f32>::from_file(&edited("lstm_small.safetensors", |f| {
        f.tensors.remove("weight_hh_l0");
    }));
    assert!(matches!(r, Err(Error::MissingTensor(n)) if n == "weight_hh_l0"));
    let r = Case::<f32>::from_file(&edited("lstm_small.safetensors", |f| {
        f.tensors.remove("bias_hh_l0");
    }));
    assert!(matches!(r, Err(Error::MissingTensor(_))), "{r:?}");
    let r = Case::<f32>::from_file(&edited("gru_small.safetensors", |f| f.put_float("weight_hh_l0", vec![12, 3], vec![0.0; 36])));
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
    let r = Case::<f32>::from_file(&edited("gru_small.safetensors", |f| {
        f.tensors.remove("input");
    }));
    assert!(matches!(r, Err(Error::MissingTensor(n)) if n == "input"));
    let r = Case::<f32>::from_file(&edited("gru_small.safetensors", |f| f.put_float("h0", vec![1, 2, 5], vec![0.0; 10])));
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })));
    let r = Case::<f32>::from_file(&edited("gru_small.safetensors", |f| {
        f.metadata.insert("mode".into(), "QRNN".into());
    }));
    assert!(matches!(r, Err(Error::UnknownMode(_))));
    let r = Case::<f32>::from_file(&edited("gru_small.safetensors", |f| {
        f.metadata.insert("mode".into(), "LSTM".into());
    }));
    assert!(r.is_err(), "GRU tensors under an LSTM mode: 12 rows is 3 LSTM units but then shapes disagree");
    let r = Case::<f32>::from_file(&edited("gru_small.safetensors", |f| {
        f.metadata.insert("hidden_size".into(), "5".into());
    }));
    assert!(matches!(r, Err(Error::Metadata(_))));
    // proj_size >= hidden_size declared in metadata and tensors.
    let r = Case::<f32>::from_file(&edited("lstm_small.safetensors", |f| {
        f.put_float("weight_hr_l0", vec![4, 4], vec![0.0; 16]);
        f.metadata.insert("proj_size".into(), "4".into());
    }));
    assert!(matches!(r, Err(Error::InvalidConfig(_))), "{r:?}");
    // An extra layer the config does not have.
    let r = Case::<f32>::from_file(&edited("lstm_small.safetensors", |f| {
        f.put_float("weight_ih_l1", vec![16, 4], vec![0.0; 64]);
    }));
    assert!(matches!(r, Err(Error::Metadata(_))), "{r:?}");
}

#[test]
fn case_lengths_out_of_range() {
    for bad in [vec![0i64, 3], vec![6, 3], vec![-1, 3]] {
        let file = edited("lstm_small.safetensors", |f| f.put_int("lengths", vec![2], bad.clone()));
        let r = Case::<f32>::from_file(&file).and_then(|c| c.run_cpu(false));
        assert!(matches!(r, Err(Error::InvalidLengths(_))), "{bad:?}: {r:?}");
    }
    let file = edited("lstm_small.safetensors", |f| f.put_int("lengths", vec![3], vec![1, 2, 3]));
    assert!(matches!(Case::<f32>::from_file(&file), Err(Error::ShapeMismatch { .. })));
}
