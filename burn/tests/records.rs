#![allow(deprecated)] // burn 0.22 deprecates ndarray (and TensorData::to_vec); the issue asks for ndarray
//! The module's weights in and out: burn's own record file (burnpack, `Module::save_file`) and a
//! PyTorch `state_dict` under PyTorch's names (safetensors), each round trip bit for bit.

use burn::module::Module;
use burn::tensor::Device;
use wgpu_rnn::{Mode, RnnConfig, Weights};
use wgpu_rnn_burn::{FusedRnn, FusedRnnConfig};

fn bits(m: &FusedRnn) -> Vec<u32> {
    let v: Vec<f32> = m.weights.val().into_data().to_vec().unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn burn_records_and_pytorch_state_dicts_round_trip() {
    let device = Device::ndarray();
    let dir = std::env::temp_dir().join(format!("wgpu-rnn-burn-records-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for mode in [Mode::Lstm, Mode::Scrn, Mode::Urnn] {
        let cfg = FusedRnnConfig { rnn: RnnConfig::new(mode, 4, 6).layers(2).bidirectional(true), batch_first: false };
        let a = cfg.init(1, &device).unwrap();
        let b = cfg.init(2, &device).unwrap();
        assert_ne!(bits(&a), bits(&b), "{mode}: two seeds, two models");
        // burn's record.
        let path = dir.join(format!("{mode}.bpk"));
        a.clone().save_file(&path).unwrap();
        let loaded = b.clone().try_load_file(&path).unwrap();
        assert_eq!(bits(&loaded), bits(&a), "{mode}: burn record round trip");
        // PyTorch's names.
        let st = dir.join(format!("{mode}.safetensors"));
        a.weights().unwrap().save(&st).unwrap();
        let w = Weights::<f32>::load(&st, "", None).unwrap();
        let again = FusedRnn::from_weights(&w, false, &device).unwrap();
        assert_eq!(bits(&again), bits(&a), "{mode}: state_dict round trip");
    }
    std::fs::remove_dir_all(&dir).ok();
}
