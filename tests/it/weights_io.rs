//! Weights under PyTorch's names: save/load round trips, config inference, init.

use crate::common::golden_dir;
use wgpu_rnn::io::TensorFile;
use wgpu_rnn::weights::infer_config;
use wgpu_rnn::{Error, Mode, RnnConfig, Weights};

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("wgpu-rnn-{}-{name}", std::process::id()))
}

#[test]
fn names_and_shapes_follow_pytorch() {
    let cfg = RnnConfig::new(Mode::Lstm, 6, 10).layers(2).bidirectional(true).proj(4);
    let specs = cfg.param_specs();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        &names[..10],
        &[
            "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0",
            "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0_reverse", "weight_hr_l0_reverse",
        ]
    );
    assert_eq!(specs[0].shape, vec![40, 6]);
    assert_eq!(specs[1].shape, vec![40, 4]);
    assert_eq!(specs[4].shape, vec![4, 10]);
    assert_eq!(specs[10].shape, vec![40, 8], "layer 1 takes both directions' projected outputs");
    let gru = RnnConfig::new(Mode::Gru, 3, 5).bias(false);
    assert_eq!(gru.param_specs().len(), 2);
    assert_eq!(gru.param_specs()[0].shape, vec![15, 3]);
}

#[test]
fn save_load_round_trip_with_and_without_metadata() {
    for mode in Mode::PYTORCH {
        let cfg = RnnConfig::new(mode, 3, 5).layers(2).bidirectional(true).bias(mode != Mode::Gru);
        let w = Weights::<f32>::init_uniform(&cfg, 7).unwrap();
        let path = tmp(&format!("rt-{mode}.safetensors"));
        w.save(&path).unwrap();
        let back = Weights::<f32>::load(&path, "", None).unwrap();
        assert_eq!(back, w);
        // Without metadata the caller gives the mode; sizes come from the shapes.
        let mut f = TensorFile::read(&path).unwrap();
        f.metadata.clear();
        assert!(matches!(Weights::<f32>::from_file(&f, "", None), Err(Error::Metadata(_))));
        let hint = RnnConfig::new(mode, 3, 5).layers(2).bidirectional(true).bias(mode != Mode::Gru);
        assert_eq!(Weights::<f32>::from_file(&f, "", Some(&hint)).unwrap(), w);
        let inferred = infer_config(&f, "", Some(&RnnConfig::new(mode, 3, 5).layers(2).bidirectional(true).bias(mode != Mode::Gru))).unwrap();
        assert_eq!(inferred, cfg);
        std::fs::remove_file(&path).ok();
    }
}

/// How a model runs is saved with it: a model trained with zoneout (whose inference mixes in
/// the previous h), dropout or f16 storage loads back as the same model (the config fuzz
/// target found these lost: tests/fuzz_regressions/config-save-load-round-trip). The caller's
/// config still decides when given; files without the keys load as 0, 0 and f32; a hostile
/// value is a typed error.
#[test]
fn run_settings_survive_save_and_load() {
    use wgpu_rnn::config::Prob;
    use wgpu_rnn::Precision;
    for mode in [Mode::Lstm, Mode::Scrn] {
        let cfg = RnnConfig::new(mode, 3, 4).layers(2).dropout(Prob::new(0.25).unwrap()).zoneout(Prob::new(0.1).unwrap()).with_precision(Precision::F16);
        let w = Weights::<f32>::init_uniform(&cfg, 5).unwrap();
        let mut f = TensorFile::default();
        w.to_tensor_file(&mut f, "").unwrap();
        let f = TensorFile::from_bytes(&f.to_bytes().unwrap()).unwrap();
        assert_eq!(Weights::<f32>::from_file(&f, "", None).unwrap(), w, "{mode}");
        let plain = RnnConfig::new(mode, 3, 4).layers(2);
        assert_eq!(Weights::<f32>::from_file(&f, "", Some(&plain)).unwrap().config, plain, "{mode}: the caller's settings");
        let mut old = f.clone();
        for k in ["dropout", "zoneout", "precision"] {
            old.metadata.remove(k);
        }
        assert_eq!(Weights::<f32>::from_file(&old, "", None).unwrap().config, plain, "{mode}: a file without them");
        for (k, v) in [("zoneout", "1.5"), ("zoneout", "NaN"), ("dropout", "x"), ("precision", "f64")] {
            let mut bad = f.clone();
            bad.metadata.insert(k.into(), v.into());
            assert!(matches!(Weights::<f32>::from_file(&bad, "", None), Err(Error::Metadata(_))), "{mode}: {k}={v}");
        }
    }
}

#[test]
fn loads_a_state_dict_with_a_module_prefix() {
    // A model's state_dict stores the LSTM under e.g. "rnn.".
    let cfg = RnnConfig::new(Mode::Lstm, 4, 3);
    let w = Weights::<f32>::init_uniform(&cfg, 1).unwrap();
    let mut f = TensorFile::default();
    w.to_tensor_file(&mut f, "rnn.").unwrap();
    f.put_float("head.weight", vec![1, 6], vec![0.0; 6]);
    let back = Weights::<f32>::from_file(&f, "rnn.", None).unwrap();
    assert_eq!(back, w);
}

#[test]
fn golden_parameters_load_and_save_back_identically() {
    let path = golden_dir().join("lstm_proj.safetensors");
    let w = Weights::<f32>::load(&path, "", None).unwrap();
    assert_eq!(w.config, RnnConfig::new(Mode::Lstm, 6, 10).layers(2).bidirectional(true).proj(4));
    let out = tmp("proj.safetensors");
    w.save(&out).unwrap();
    let a = TensorFile::read(&path).unwrap();
    let b = TensorFile::read(&out).unwrap();
    for spec in w.config.param_specs() {
        assert_eq!(a.float(&spec.name).unwrap(), b.float(&spec.name).unwrap(), "{}", spec.name);
    }
    std::fs::remove_file(&out).ok();
}

#[test]
fn init_is_uniform_in_pytorch_range_and_seeded() {
    let cfg = RnnConfig::new(Mode::Gru, 8, 16);
    let a = Weights::<f64>::init_uniform(&cfg, 3).unwrap();
    let b = Weights::<f64>::init_uniform(&cfg, 3).unwrap();
    let c = Weights::<f64>::init_uniform(&cfg, 4).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    let k = 1.0 / 16f64.sqrt();
    let all = a.to_flat();
    assert!(all.iter().all(|x| x.abs() <= k));
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    let var = all.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / all.len() as f64;
    // Uniform(-k, k) has variance k^2/3; 1,200 samples put the estimate well within 15%.
    assert!((var / (k * k / 3.0) - 1.0).abs() < 0.15, "variance {var}");
    assert!(mean.abs() < 0.1 * k);
}
