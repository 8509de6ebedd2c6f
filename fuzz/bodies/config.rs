//! The `config` target's body (fuzz/fuzz_targets/config.rs; replayed by the stable tests,
//! tests/it/fuzz_replay.rs). Configurations: arbitrary `RnnConfig` fields of any registered
//! cell, dropout, zoneout, precision (and mode strings) -> `validate` ->
//! for small valid ones, `Weights::zeros` and `init_uniform`, checked against the parameter
//! specs, and a save/load round trip through safetensors bytes. Invalid configs must be
//! refused by every constructor.
use arbitrary::Arbitrary;
use wgpu_rnn::io::TensorFile;
use wgpu_rnn::cells::Init;
use wgpu_rnn::config::Prob;
use wgpu_rnn::{Mode, Precision, RnnConfig, Weights};

/// Configs with more parameters than this are validated but not allocated.
const MAX_PARAMS: usize = 10_000;
/// Configs up to this many parameters also go through a save/load round trip.
const MAX_ROUND_TRIP: usize = 1_000;

#[path = "size.rs"]
mod size;
/// A config size: mostly below 12, sometimes anything.
type Size = size::Size<12>;

#[derive(Arbitrary, Debug)]
struct Input {
    mode: u8,
    mode_str: String,
    input: Size,
    hidden: Size,
    layers: Size,
    bidirectional: bool,
    bias: bool,
    proj: Size,
    seed: u64,
    // Appended after the first fields, so older inputs decode as before (these as zero).
    dropout: u8,
    zoneout: u8,
    f16: bool,
}

/// Total parameter count from the specs, `None` on overflow.
fn total_params(c: &RnnConfig) -> Option<usize> {
    c.param_specs().iter().try_fold(0usize, |acc, s| {
        let n = s.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
        acc.checked_add(n)
    })
}

/// The target's body: `arbitrary` bytes (as cargo-fuzz's typed target decodes them) ->
/// a config of any registered cell, with or without dropout, zoneout and f16 storage.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else { return };
    let _ = input.mode_str.parse::<Mode>();
    let prob = |v: u8| Prob::new(v as f32 / 256.0).expect("below 1");
    let cfg = RnnConfig {
        mode: Mode::REGISTRY[input.mode as usize % Mode::REGISTRY.len()],
        input_size: input.input.get(),
        hidden_size: input.hidden.get(),
        num_layers: input.layers.get(),
        bidirectional: input.bidirectional,
        bias: input.bias,
        proj_size: input.proj.get(),
        dropout: prob(input.dropout),
        zoneout: prob(input.zoneout),
        precision: if input.f16 { Precision::F16 } else { Precision::F32 },
        pointwise: Vec::new(),
    };
    if cfg.validate().is_err() {
        assert!(Weights::<f32>::zeros(&cfg).is_err(), "zeros accepted an invalid config");
        assert!(Weights::<f64>::init_uniform(&cfg, input.seed).is_err(), "init accepted an invalid config");
        return;
    }
    // Cheap queries on any valid config.
    let _ = (cfg.out_size(), cfg.output_size(), cfg.layer_input_size(cfg.num_layers - 1), cfg.h_shape(3), cfg.c_shape(3));
    if cfg.num_layers > 64 {
        return;
    }
    let Some(total) = total_params(&cfg).filter(|&t| t <= MAX_PARAMS) else { return };
    let z = Weights::<f32>::zeros(&cfg).expect("zeros of a small valid config");
    assert_eq!(z.num_scalars(), total, "zeros has every parameter of the specs");
    let w = Weights::<f32>::init_uniform(&cfg, input.seed).expect("init of a small valid config");
    assert_eq!(w.num_scalars(), total);
    let k = 1.0 / (cfg.hidden_size as f64).sqrt();
    w.for_each(|def, _, _, v| match def.init {
        Init::Uniform => assert!(v.iter().all(|&x| (x as f64).abs() <= k * (1.0 + 1e-6)), "{}: init outside +-1/sqrt(H)", def.stem),
        Init::Ones => assert!(v.iter().all(|&x| x == 1.0), "{}: not ones", def.stem),
        Init::Zeros => assert!(v.iter().all(|&x| x == 0.0), "{}: not zeros", def.stem),
        Init::Range(lo, hi) => assert!(v.iter().all(|&x| (x as f64) >= lo - 1e-6 && (x as f64) <= hi + 1e-6), "{}: init outside [{lo}, {hi})", def.stem),
        Init::Glorot => {
            let g = (6.0 / def.shape.iter().take(2).sum::<usize>().max(1) as f64).sqrt();
            assert!(v.iter().all(|&x| (x as f64).abs() <= g * (1.0 + 1e-6)), "{}: init outside Glorot's range", def.stem)
        }
        Init::Permutation => {
            let mut s: Vec<usize> = v.iter().map(|&x| x as usize).collect();
            s.sort_unstable();
            assert!(s.iter().enumerate().all(|(i, &x)| i == x), "{}: not a permutation", def.stem)
        }
    });
    if total > MAX_ROUND_TRIP || cfg.num_layers > 4 {
        // (Headers of hundreds of tensors made the round trip cost milliseconds an input.)
        return;
    }
    // Save -> bytes -> load gives the same weights, with and without the config as a hint.
    let mut f = TensorFile::default();
    w.to_tensor_file(&mut f, "").expect("weights made by init_uniform are valid");
    let bytes = f.to_bytes().expect("serialise");
    let back = TensorFile::from_bytes(&bytes).expect("parse what we wrote");
    let loaded = Weights::<f32>::from_file(&back, "", None).expect("load what we saved");
    assert!(loaded == w, "save/load changed the weights: {:?} -> {:?}", w.config, loaded.config);
    let hinted = Weights::<f32>::from_file(&back, "", Some(&cfg)).expect("load with own config");
    assert!(hinted == w);
}
