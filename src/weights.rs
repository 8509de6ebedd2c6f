//! Parameters under PyTorch's names and shapes: loading a `state_dict` saved as safetensors,
//! saving one that `load_state_dict` takes, and PyTorch's random initialisation.

use crate::config::{Mode, ParamKind, RnnConfig};
use crate::cpu::{cast, Float};
use crate::error::{Error, Result};
use crate::io::TensorFile;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

/// The parameters of one layer and direction. Shapes (row-major):
/// `w_ih: [G*H, in]`, `w_hh: [G*H, H_out]`, `b_ih, b_hh: [G*H]`, `w_hr: [P, H]`.
#[derive(Clone, Debug, PartialEq)]
pub struct DirParams<T> {
    pub w_ih: Vec<T>,
    pub w_hh: Vec<T>,
    pub b_ih: Option<Vec<T>>,
    pub b_hh: Option<Vec<T>>,
    pub w_hr: Option<Vec<T>>,
}

impl<T: Float> DirParams<T> {
    pub fn get(&self, kind: ParamKind) -> Option<&[T]> {
        match kind {
            ParamKind::WeightIh => Some(&self.w_ih),
            ParamKind::WeightHh => Some(&self.w_hh),
            ParamKind::BiasIh => self.b_ih.as_deref(),
            ParamKind::BiasHh => self.b_hh.as_deref(),
            ParamKind::WeightHr => self.w_hr.as_deref(),
        }
    }

    pub fn get_mut(&mut self, kind: ParamKind) -> Option<&mut Vec<T>> {
        match kind {
            ParamKind::WeightIh => Some(&mut self.w_ih),
            ParamKind::WeightHh => Some(&mut self.w_hh),
            ParamKind::BiasIh => self.b_ih.as_mut(),
            ParamKind::BiasHh => self.b_hh.as_mut(),
            ParamKind::WeightHr => self.w_hr.as_mut(),
        }
    }
}

/// All parameters of a stack; `params[layer * D + direction]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights<T> {
    pub config: RnnConfig,
    pub params: Vec<DirParams<T>>,
}

/// Metadata keys written with the weights (the golden format's names).
pub const META_KEYS: [&str; 7] =
    ["mode", "input_size", "hidden_size", "num_layers", "bidirectional", "proj_size", "bias"];

impl<T: Float> Weights<T> {
    /// All-zero parameters for a validated config.
    pub fn zeros(config: &RnnConfig) -> Result<Self> {
        config.validate()?;
        let mut params = Vec::new();
        for layer in 0..config.num_layers {
            for _ in 0..config.directions() {
                let z = |k: ParamKind| vec![T::zero(); config.param_shape(k, layer).iter().product()];
                params.push(DirParams {
                    w_ih: z(ParamKind::WeightIh),
                    w_hh: z(ParamKind::WeightHh),
                    b_ih: config.bias.then(|| z(ParamKind::BiasIh)),
                    b_hh: config.bias.then(|| z(ParamKind::BiasHh)),
                    w_hr: (config.proj_size > 0).then(|| z(ParamKind::WeightHr)),
                });
            }
        }
        Ok(Weights { config: config.clone(), params })
    }

    /// PyTorch's `reset_parameters`: every parameter uniform in `[-1/sqrt(H), 1/sqrt(H)]`.
    pub fn init_uniform(config: &RnnConfig, seed: u64) -> Result<Self> {
        let mut w = Self::zeros(config)?;
        let k = 1.0 / (config.hidden_size as f64).sqrt();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        w.for_each_mut(|_, _, _, v| {
            for x in v.iter_mut() {
                *x = T::from_f64(rng.random_range(-k..=k));
            }
        });
        Ok(w)
    }

    /// The parameters of one layer-direction.
    pub fn dir(&self, layer: usize, direction: usize) -> &DirParams<T> {
        &self.params[layer * self.config.directions() + direction]
    }

    /// Visits every parameter in `state_dict` order: `(kind, layer, direction, values)`.
    pub fn for_each(&self, mut f: impl FnMut(ParamKind, usize, usize, &[T])) {
        let d = self.config.directions();
        for (i, p) in self.params.iter().enumerate() {
            for kind in self.config.param_kinds() {
                if let Some(v) = p.get(kind) {
                    f(kind, i / d, i % d, v);
                }
            }
        }
    }

    /// Visits every parameter mutably, in `state_dict` order.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(ParamKind, usize, usize, &mut Vec<T>)) {
        let d = self.config.directions();
        let kinds = self.config.param_kinds();
        for (i, p) in self.params.iter_mut().enumerate() {
            for &kind in &kinds {
                if let Some(v) = p.get_mut(kind) {
                    f(kind, i / d, i % d, v);
                }
            }
        }
    }

    /// Total number of scalars.
    pub fn num_scalars(&self) -> usize {
        let mut n = 0;
        self.for_each(|_, _, _, v| n += v.len());
        n
    }

    /// Converts to another float type.
    pub fn cast<U: Float>(&self) -> Weights<U> {
        let params = self
            .params
            .iter()
            .map(|p| DirParams {
                w_ih: cast(&p.w_ih),
                w_hh: cast(&p.w_hh),
                b_ih: p.b_ih.as_deref().map(cast),
                b_hh: p.b_hh.as_deref().map(cast),
                w_hr: p.w_hr.as_deref().map(cast),
            })
            .collect();
        Weights { config: self.config.clone(), params }
    }

    /// Builds weights from named tensors (as `state_dict` keys after `prefix`), checking that
    /// every expected tensor is there with its shape and that no unexpected one is.
    pub fn from_tensor_file(config: &RnnConfig, file: &TensorFile, prefix: &str) -> Result<Self> {
        let mut w = Self::zeros(config)?;
        let cfg = config.clone();
        let mut err = None;
        w.for_each_mut(|kind, layer, dir, v| {
            if err.is_some() {
                return;
            }
            let name = RnnConfig::param_name(kind, layer, dir);
            let full = format!("{prefix}{name}");
            let res = file.float(&full).and_then(|t| {
                let expected = cfg.param_shape(kind, layer);
                if t.shape != expected {
                    return Err(Error::ShapeMismatch { what: full.clone(), expected, got: t.shape.clone() });
                }
                for (dst, &src) in v.iter_mut().zip(&t.data) {
                    *dst = T::from_f64(src);
                }
                Ok(())
            });
            if let Err(e) = res {
                err = Some(e);
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        // Anything else that looks like an RNN parameter under the prefix is a mismatch
        // (e.g. a bias in a file for a bias=False config, or an extra layer).
        let expected: std::collections::HashSet<String> =
            config.param_specs().into_iter().map(|s| format!("{prefix}{}", s.name)).collect();
        for name in file.tensors.keys() {
            if let Some(rest) = name.strip_prefix(prefix) {
                let is_param = ["weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l", "weight_hr_l"]
                    .iter()
                    .any(|s| rest.starts_with(s));
                if is_param && !expected.contains(name) {
                    return Err(Error::UnexpectedTensor(name.clone()));
                }
            }
        }
        Ok(w)
    }

    /// Loads a `state_dict` saved as safetensors (e.g. `safetensors.torch.save_file(
    /// lstm.state_dict(), path)`). See [`infer_config`] for how the config is found.
    pub fn load(path: impl AsRef<Path>, prefix: &str, hint: Option<&RnnConfig>) -> Result<Self> {
        let file = TensorFile::read(path)?;
        Self::from_file(&file, prefix, hint)
    }

    /// As [`Weights::load`], from a parsed file.
    pub fn from_file(file: &TensorFile, prefix: &str, hint: Option<&RnnConfig>) -> Result<Self> {
        let config = infer_config(file, prefix, hint)?;
        Self::from_tensor_file(&config, file, prefix)
    }

    /// Puts the parameters and the config's metadata into a tensor file, under `prefix`.
    pub fn to_tensor_file(&self, file: &mut TensorFile, prefix: &str) {
        self.for_each(|kind, layer, dir, v| {
            let name = format!("{prefix}{}", RnnConfig::param_name(kind, layer, dir));
            file.put_float(name, self.config.param_shape(kind, layer), v.iter().map(|x| x.to_f64()).collect());
        });
        file.metadata.extend(config_metadata(&self.config));
    }

    /// Saves as safetensors under PyTorch's names, with the config in the metadata, so that
    /// `module.load_state_dict(safetensors.torch.load_file(path))` takes it.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut f = TensorFile::default();
        self.to_tensor_file(&mut f, "");
        f.write(path)
    }
}

/// The metadata strings that describe a config (numbers and booleans as JSON).
pub fn config_metadata(c: &RnnConfig) -> HashMap<String, String> {
    HashMap::from([
        ("mode".into(), c.mode.as_str().into()),
        ("input_size".into(), c.input_size.to_string()),
        ("hidden_size".into(), c.hidden_size.to_string()),
        ("num_layers".into(), c.num_layers.to_string()),
        ("bidirectional".into(), c.bidirectional.to_string()),
        ("proj_size".into(), c.proj_size.to_string()),
        ("bias".into(), c.bias.to_string()),
    ])
}

fn meta_usize(meta: &HashMap<String, String>, key: &str) -> Result<Option<usize>> {
    meta.get(key)
        .map(|s| s.trim().parse::<usize>().map_err(|_| Error::Metadata(format!("{key}={s:?} is not a whole number"))))
        .transpose()
}

fn meta_bool(meta: &HashMap<String, String>, key: &str) -> Result<Option<bool>> {
    meta.get(key)
        .map(|s| match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(Error::Metadata(format!("{key}={s:?} is not a boolean"))),
        })
        .transpose()
}

/// Finds the config of the stack stored in `file` under `prefix`.
///
/// The mode comes from the metadata, else from `hint`; sizes from the metadata when present,
/// else from `hint` and the tensor shapes. Every source that is present must agree with the
/// tensors: a disagreement is an error, not a guess.
pub fn infer_config(file: &TensorFile, prefix: &str, hint: Option<&RnnConfig>) -> Result<RnnConfig> {
    let meta = &file.metadata;
    let mode = match (meta.get("mode"), hint) {
        (Some(m), Some(h)) => {
            let m: Mode = m.parse()?;
            if m != h.mode {
                return Err(Error::Metadata(format!("file says mode {m}, caller says {}", h.mode)));
            }
            m
        }
        (Some(m), None) => m.parse()?,
        (None, Some(h)) => h.mode,
        (None, None) => {
            return Err(Error::Metadata("no mode in the metadata and none given by the caller".into()))
        }
    };
    let shape = |name: &str| file.tensors.get(&format!("{prefix}{name}")).map(|v| v.shape().to_vec());
    let w_ih0 = shape("weight_ih_l0").ok_or_else(|| Error::MissingTensor(format!("{prefix}weight_ih_l0")))?;
    let w_hh0 = shape("weight_hh_l0").ok_or_else(|| Error::MissingTensor(format!("{prefix}weight_hh_l0")))?;
    if w_ih0.len() != 2 || w_hh0.len() != 2 {
        return Err(Error::ShapeMismatch {
            what: format!("{prefix}weight_ih_l0 (2-D expected)"),
            expected: vec![0, 0],
            got: w_ih0,
        });
    }
    let g = mode.gates();
    if w_ih0[0] % g != 0 {
        return Err(Error::Metadata(format!(
            "weight_ih_l0 has {} rows, not a multiple of {g} gates for {mode}",
            w_ih0[0]
        )));
    }
    let mut layers = 0;
    while shape(&format!("weight_ih_l{layers}")).is_some() {
        layers += 1;
    }
    let from_tensors = RnnConfig {
        mode,
        input_size: w_ih0[1],
        hidden_size: w_ih0[0] / g,
        num_layers: layers,
        bidirectional: shape("weight_ih_l0_reverse").is_some(),
        bias: shape("bias_ih_l0").is_some(),
        proj_size: shape("weight_hr_l0").map(|s| s[0]).unwrap_or(0),
    };
    let mut c = from_tensors.clone();
    // Metadata and the caller must agree with what the tensors say.
    let check = |what: &str, declared: Option<usize>, found: usize| -> Result<()> {
        match declared {
            Some(v) if v != found => Err(Error::Metadata(format!("{what} is {v} but the tensors say {found}"))),
            _ => Ok(()),
        }
    };
    check("input_size", meta_usize(meta, "input_size")?, c.input_size)?;
    check("hidden_size", meta_usize(meta, "hidden_size")?, c.hidden_size)?;
    check("num_layers", meta_usize(meta, "num_layers")?, c.num_layers)?;
    check("proj_size", meta_usize(meta, "proj_size")?, c.proj_size)?;
    check("bidirectional", meta_bool(meta, "bidirectional")?.map(usize::from), usize::from(c.bidirectional))?;
    check("bias", meta_bool(meta, "bias")?.map(usize::from), usize::from(c.bias))?;
    if let Some(h) = hint {
        check("caller's input_size", Some(h.input_size), c.input_size)?;
        check("caller's hidden_size", Some(h.hidden_size), c.hidden_size)?;
        check("caller's num_layers", Some(h.num_layers), c.num_layers)?;
        check("caller's proj_size", Some(h.proj_size), c.proj_size)?;
        check("caller's bidirectional", Some(h.bidirectional as usize), c.bidirectional as usize)?;
        check("caller's bias", Some(h.bias as usize), c.bias as usize)?;
        c = h.clone();
    }
    c.validate()?;
    Ok(c)
}
