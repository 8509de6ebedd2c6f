//! Parameters under PyTorch's names and shapes: loading a `state_dict` saved as safetensors,
//! saving one that `load_state_dict` takes, and PyTorch's random initialisation.

use crate::cells::{Init, ParamDef, Slot};
use crate::config::{Mode, RnnConfig};
use crate::float::{cast, Float};
use crate::error::{check_len, Error, Result};
use crate::precision::Precision;
use crate::masks::Prob;
use crate::io::TensorFile;
use crate::tensor::{bytes_of, checked_len, try_with_capacity};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

/// The parameters of one layer and direction, by slot (see [`crate::cells::Slot`]). For
/// PyTorch's cells each slot is one tensor: `w_ih: [G*H, in]`, `w_hh: [G*H, H_out]`,
/// `b_ih, b_hh: [G*H]`, `w_hr: [P, H]`. Other cells place their named tensors in the slots as
/// their description says (e.g. MUT1's `weight_xz` and `weight_xr` are the rows of `w_ih`).
#[derive(Clone, Debug, PartialEq)]
pub struct DirParams<T> {
    /// The input matrix `W_x` (slot `WeightIh`).
    pub w_ih: Vec<T>,
    /// The stages' recurrent matrices, concatenated (slot `WeightHh`).
    pub w_hh: Vec<T>,
    /// The input projection's bias (slot `BiasIh`); `None` with `bias=False`.
    pub b_ih: Option<Vec<T>>,
    /// The stages' product biases (slot `BiasHh`); `None` with `bias=False`.
    pub b_hh: Option<Vec<T>>,
    /// LSTM's projection `W_hr [P, H]` (slot `WeightHr`); `None` without projection.
    pub w_hr: Option<Vec<T>>,
    /// The pointwise parameters (peepholes, layer-norm gains, ...).
    pub pointwise: Option<Vec<T>>,
}

impl<T: Float> DirParams<T> {
    /// The slot's elements, `None` when the slot is absent.
    pub fn get(&self, slot: Slot) -> Option<&[T]> {
        match slot {
            Slot::WeightIh => Some(&self.w_ih),
            Slot::WeightHh => Some(&self.w_hh),
            Slot::BiasIh => self.b_ih.as_deref(),
            Slot::BiasHh => self.b_hh.as_deref(),
            Slot::WeightHr => self.w_hr.as_deref(),
            Slot::Pointwise => self.pointwise.as_deref(),
        }
    }

    /// The slot's vector, mutable; `None` when the slot is absent.
    pub fn get_mut(&mut self, slot: Slot) -> Option<&mut Vec<T>> {
        match slot {
            Slot::WeightIh => Some(&mut self.w_ih),
            Slot::WeightHh => Some(&mut self.w_hh),
            Slot::BiasIh => self.b_ih.as_mut(),
            Slot::BiasHh => self.b_hh.as_mut(),
            Slot::WeightHr => self.w_hr.as_mut(),
            Slot::Pointwise => self.pointwise.as_mut(),
        }
    }

    /// The elements of one named parameter (`None` when its slot is absent or too short).
    pub fn param(&self, def: &ParamDef) -> Option<&[T]> {
        self.get(def.slot)?.get(def.offset..def.offset + def.len())
    }

    /// The elements of one named parameter, mutable (`None` when its slot is absent or too short).
    pub fn param_mut(&mut self, def: &ParamDef) -> Option<&mut [T]> {
        self.get_mut(def.slot)?.get_mut(def.offset..def.offset + def.len())
    }
}

/// All parameters of a stack; `params[layer * D + direction]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights<T> {
    /// The stack the parameters belong to.
    pub config: RnnConfig,
    /// One entry per layer-direction, `params[layer * D + direction]`.
    pub params: Vec<DirParams<T>>,
}

impl<T: Float> Weights<T> {
    /// All-zero parameters for a validated config.
    ///
    /// Every allocation goes through a fallible reservation: parameters that do not fit in
    /// memory are [`Error::OutOfMemory`], never an abort.
    pub fn zeros(config: &RnnConfig) -> Result<Self> {
        Self::build(config, |_, _, _, _| Ok(()))
    }

    /// [`Weights::zeros`], except that every layer-direction's `slot` holds unspecified values
    /// (zeros or an earlier call's, from the CPU path's buffer pool): for the CPU backward,
    /// which writes all of it before anyone reads it.
    pub(crate) fn zeros_except(config: &RnnConfig, slot: Slot) -> Result<Self> {
        Self::build_reusing(config, Some(slot), |_, _, _, _| Ok(()))
    }

    /// Builds every parameter of a validated config, after checking that the total size is
    /// addressable: each slot zeroed (from the CPU path's buffer pool where it has one of the
    /// size, e.g. a dropped `Gradients`' own), then `fill(def, layer, direction, elements)`
    /// writes each parameter's elements in place.
    fn build(config: &RnnConfig, fill: impl FnMut(&ParamDef, usize, usize, &mut [T]) -> Result<()>) -> Result<Self> {
        Self::build_reusing(config, None, fill)
    }

    /// [`Weights::build`], with `reuse`'s slot taken from the pool unzeroed.
    fn build_reusing(config: &RnnConfig, reuse: Option<Slot>, mut fill: impl FnMut(&ParamDef, usize, usize, &mut [T]) -> Result<()>) -> Result<Self> {
        config.validate()?;
        let ld = config.num_layers.checked_mul(config.directions());
        let mut total: u128 = 0;
        for layer in 0..config.num_layers.min(2) {
            let per_dir: u128 = config
                .param_defs(layer)
                .iter()
                .map(|p| p.shape.iter().fold(1u128, |a, &d| a.saturating_mul(d as u128)))
                .sum();
            // Layers above 0 all have layer 1's shapes.
            let count = if layer == 0 { 1 } else { config.num_layers as u128 - 1 };
            total = total.saturating_add(per_dir.saturating_mul(count).saturating_mul(config.directions() as u128));
        }
        let bytes = bytes_of::<T>(total);
        let Some(ld) = ld.filter(|_| bytes <= isize::MAX as u128) else {
            return Err(Error::OutOfMemory { what: format!("parameters of {config:?}"), bytes });
        };
        let mut params = try_with_capacity("parameter list", ld)?;
        for layer in 0..config.num_layers {
            let defs = config.param_defs(layer);
            for dir in 0..config.directions() {
                let mut slot = |s: Slot| -> Result<Option<Vec<T>>> {
                    let Some(len) = config.slot_len(s, layer) else { return Ok(None) };
                    let name = slot_name(&defs, s, layer, dir);
                    let mut v = if reuse == Some(s) { crate::cpu::pool::try_reused(&name, len)? } else { crate::cpu::pool::try_zeroed(&name, len)? };
                    for def in defs.iter().filter(|d| d.slot == s) {
                        checked_len::<T>(&RnnConfig::param_name(def.stem, layer, dir), &def.shape)?;
                        fill(def, layer, dir, &mut v[def.offset..def.offset + def.len()])?;
                    }
                    Ok(Some(v))
                };
                params.push(DirParams {
                    w_ih: slot(Slot::WeightIh)?.unwrap_or_default(),
                    w_hh: slot(Slot::WeightHh)?.unwrap_or_default(),
                    b_ih: slot(Slot::BiasIh)?,
                    b_hh: slot(Slot::BiasHh)?,
                    w_hr: slot(Slot::WeightHr)?,
                    pointwise: slot(Slot::Pointwise)?,
                });
            }
        }
        Ok(Weights { config: config.clone(), params })
    }

    /// Checks that the parameters are what the (public) config says: the config is valid,
    /// there are `num_layers * D` layer-directions, each has exactly the tensors the config
    /// implies (biases, projection), and every tensor's length is its shape's product.
    ///
    /// The CPU path, [`Weights::save`] and everything else that trusts the sizes call it, so
    /// weights edited after construction (a raised `input_size`, a shortened `w_hh`, more
    /// `num_layers` than stored) are a typed error, not an out-of-bounds read or a panic.
    pub fn validate(&self) -> Result<()> {
        let cfg = &self.config;
        cfg.validate()?;
        let ld = cfg.num_layers.saturating_mul(cfg.directions());
        if self.params.len() != ld {
            return Err(Error::ShapeMismatch {
                what: format!(
                    "parameter sets (num_layers {} x {} directions)",
                    cfg.num_layers,
                    cfg.directions()
                ),
                expected: vec![ld],
                got: vec![self.params.len()],
            });
        }
        let d = cfg.directions();
        for (i, p) in self.params.iter().enumerate() {
            let layer = i / d;
            let defs = cfg.param_defs(layer);
            for slot in Slot::ALL {
                let what = slot_name(&defs, slot, layer, i % d);
                match (p.get(slot), cfg.slot_len(slot, layer)) {
                    (Some(v), Some(len)) => check_len(&what, &[len], v.len())?,
                    // An empty matrix slot stands for an absent one.
                    (Some([]), None) => {}
                    (None, None) => {}
                    (None, Some(_)) => return Err(Error::MissingTensor(what)),
                    (Some(_), None) => return Err(Error::UnexpectedTensor(what)),
                }
            }
            if let Some(e) = p.get(Slot::Pointwise) {
                cfg.mode.check_params(cfg.sizes(layer), e).map_err(|why| Error::InvalidParameter { name: slot_name(&defs, Slot::Pointwise, layer, i % d), why })?;
            }
        }
        Ok(())
    }

    /// PyTorch's `reset_parameters`: every parameter uniform in `[-1/sqrt(H), 1/sqrt(H)]`,
    /// except those the cell initialises otherwise (layer-norm gains 1, shifts 0).
    pub fn init_uniform(config: &RnnConfig, seed: u64) -> Result<Self> {
        let mut w = Self::zeros(config)?;
        let k = 1.0 / (config.hidden_size as f64).sqrt();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        w.for_each_mut(|def, _, _, v| {
            if def.init == Init::Permutation {
                use rand::seq::SliceRandom;
                let mut p: Vec<usize> = (0..v.len()).collect();
                p.shuffle(&mut rng);
                v.iter_mut().zip(p).for_each(|(x, i)| *x = T::from_f64(i as f64));
                return;
            }
            let glorot = (6.0 / def.shape.iter().take(2).sum::<usize>().max(1) as f64).sqrt();
            for x in v.iter_mut() {
                *x = match def.init {
                    Init::Uniform => T::from_f64(rng.random_range(-k..=k)),
                    Init::Ones => T::one(),
                    Init::Zeros => T::zero(),
                    Init::Range(lo, hi) => T::from_f64(rng.random_range(lo..hi)),
                    Init::Glorot => T::from_f64(rng.random_range(-glorot..=glorot)),
                    Init::Permutation => unreachable!("filled above"),
                };
            }
        });
        Ok(w)
    }

    /// The parameters of one layer-direction.
    ///
    /// # Panics
    /// When `layer * D + direction` is past the stored parameters (see [`Weights::validate`]).
    pub fn dir(&self, layer: usize, direction: usize) -> &DirParams<T> {
        &self.params[layer * self.config.directions() + direction]
    }

    /// Visits every parameter in `state_dict` order: `(definition, layer, direction, values)`.
    /// Parameters whose storage does not match the config (see [`Weights::validate`]) are
    /// skipped.
    pub fn for_each(&self, mut f: impl FnMut(&ParamDef, usize, usize, &[T])) {
        let d = self.config.directions();
        let mut defs: Vec<Vec<ParamDef>> = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            let layer = i / d;
            if defs.len() <= layer.min(1) {
                defs.push(self.config.param_defs(layer));
            }
            for def in &defs[layer.min(1)] {
                if let Some(v) = p.param(def) {
                    f(def, layer, i % d, v);
                }
            }
        }
    }

    /// Visits every parameter mutably, in `state_dict` order.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&ParamDef, usize, usize, &mut [T])) {
        let d = self.config.directions();
        let defs: Vec<Vec<ParamDef>> = (0..self.config.num_layers.min(2)).map(|l| self.config.param_defs(l)).collect();
        for (i, p) in self.params.iter_mut().enumerate() {
            let layer = i / d;
            for def in &defs[layer.min(1)] {
                if let Some(v) = p.param_mut(def) {
                    f(def, layer, i % d, v);
                }
            }
        }
    }

    /// [`Error::NonFinite`] naming the first parameter (in `state_dict` order) that holds a NaN
    /// or an infinity.
    pub fn check_finite(&self) -> Result<()> {
        self.check_finite_past(|_, _| 0)
    }

    /// [`Weights::check_finite`] with each parameter's first `skip(definition, layer)`
    /// elements left out (for the CPU engine, which checks a part of W_ih on its product).
    pub(crate) fn check_finite_past(&self, skip: impl Fn(&ParamDef, usize) -> usize) -> Result<()> {
        let mut bad = None;
        self.for_each(|def, layer, dir, v| {
            if bad.is_none() && !crate::float::all_finite(&v[skip(def, layer).min(v.len())..]) {
                bad = Some(RnnConfig::param_name(def.stem, layer, dir));
            }
        });
        match bad {
            Some(name) => Err(Error::NonFinite(name)),
            None => Ok(()),
        }
    }

    /// Every parameter, one after another in `state_dict` order. For PyTorch's four cells
    /// this is the GPU weights buffer's layout; in general that is [`crate::gpu::flat_weights`]
    /// (slot order), which the GPU paths use.
    pub fn to_flat(&self) -> Vec<T> {
        let mut flat = Vec::with_capacity(self.num_scalars());
        self.for_each(|_, _, _, v| flat.extend_from_slice(v));
        flat
    }

    /// The inverse of [`Weights::to_flat`]: parameters for a validated config from their
    /// values in `state_dict` order ([`Error::LengthMismatch`] unless `flat` holds exactly
    /// as many).
    pub fn from_flat(config: &RnnConfig, flat: &[T]) -> Result<Self> {
        let mut w = Self::zeros(config)?;
        let n = w.num_scalars();
        if flat.len() != n {
            return Err(Error::LengthMismatch { what: "flat weights".into(), shape: vec![n], expected: n, got: flat.len() });
        }
        let mut at = 0;
        w.for_each_mut(|_, _, _, v| {
            let len = v.len();
            v.copy_from_slice(&flat[at..at + len]);
            at += len;
        });
        Ok(w)
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
                pointwise: p.pointwise.as_deref().map(cast),
            })
            .collect();
        Weights { config: self.config.clone(), params }
    }

    /// Builds weights from named tensors (as `state_dict` keys after `prefix`), checking that
    /// every expected tensor is there with its shape and that no unexpected one is.
    ///
    /// Every tensor's shape is checked against the config before anything is allocated, so a
    /// small file cannot ask for a large allocation; the copies go through fallible
    /// reservations ([`Error::OutOfMemory`]).
    pub fn from_tensor_file(config: &RnnConfig, file: &TensorFile, prefix: &str) -> Result<Self> {
        config.validate()?;
        // 1. Presence and shapes of every expected tensor (whatever its dtype), stopping at the
        // first missing one, so a config with more layers than the file costs nothing.
        for layer in 0..config.num_layers {
            for dir in 0..config.directions() {
                for def in config.param_defs(layer) {
                    let full = format!("{prefix}{}", RnnConfig::param_name(def.stem, layer, dir));
                    let got = file.tensors.get(&full).ok_or_else(|| Error::MissingTensor(full.clone()))?.shape();
                    if got != def.shape.as_slice() {
                        return Err(Error::ShapeMismatch { what: full, expected: def.shape, got: got.to_vec() });
                    }
                }
            }
        }
        // 2. Dtypes, and data that fills the shapes (a hand-built TensorFile may not).
        for layer in 0..config.num_layers {
            for dir in 0..config.directions() {
                for def in config.param_defs(layer) {
                    let full = format!("{prefix}{}", RnnConfig::param_name(def.stem, layer, dir));
                    if def.fixed {
                        // Whole numbers, as integers (or floats holding them).
                        let t = file.int(&full)?;
                        check_len(&full, &t.shape, t.data.len())?;
                    } else {
                        let t = file.float(&full)?;
                        check_len(&full, &t.shape, t.data.len())?;
                    }
                }
            }
        }
        // 3. Anything else that looks like an RNN parameter under the prefix is a mismatch
        // (e.g. a bias in a file for a bias=False config, or an extra layer). Every expected
        // name is in the file (1.), so this set is no larger than the file.
        let expected: std::collections::HashSet<String> =
            config.param_specs().into_iter().map(|s| format!("{prefix}{}", s.name)).collect();
        let mut stems: Vec<String> = ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"].map(String::from).to_vec();
        stems.extend(config.param_defs(0).iter().map(|d| d.stem.to_string()));
        for name in file.tensors.keys() {
            if let Some(rest) = name.strip_prefix(prefix) {
                let is_param = stems.iter().any(|s| rest.starts_with(&format!("{s}_l")));
                if is_param && !expected.contains(name) {
                    return Err(Error::UnexpectedTensor(name.clone()));
                }
            }
        }
        // 4. The copies, each a fallible allocation of a size the file's data already has.
        let w = Self::build(config, |def, layer, dir, dst| {
            let full = format!("{prefix}{}", RnnConfig::param_name(def.stem, layer, dir));
            let mismatch = |got: usize| Error::LengthMismatch { what: full.clone(), shape: def.shape.clone(), expected: dst.len(), got };
            if def.fixed {
                // Out-of-range indices are the cell's to refuse (validate below); keep them
                // out of range rather than wrapping.
                let t = file.int(&full)?;
                if t.data.len() != dst.len() {
                    return Err(mismatch(t.data.len()));
                }
                for (d, &x) in dst.iter_mut().zip(&t.data) {
                    *d = T::from_f64(x.clamp(-1, 1 << 30) as f64);
                }
            } else {
                let t = file.float(&full)?;
                if t.data.len() != dst.len() {
                    return Err(mismatch(t.data.len()));
                }
                for (d, &x) in dst.iter_mut().zip(&t.data) {
                    *d = T::from_f64(x);
                }
            }
            Ok(())
        })?;
        w.validate()?;
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
    /// Checks the weights first ([`Weights::validate`]); on error `file` is left unchanged.
    pub fn to_tensor_file(&self, file: &mut TensorFile, prefix: &str) -> Result<()> {
        self.validate()?;
        let mut err = None;
        self.for_each(|def, layer, dir, v| {
            if err.is_some() {
                return;
            }
            let name = format!("{prefix}{}", RnnConfig::param_name(def.stem, layer, dir));
            if def.fixed {
                match try_with_capacity(&name, v.len()) {
                    Ok(mut data) => {
                        data.extend(v.iter().map(|x| x.to_f64() as i64));
                        file.put_int(name, def.shape.clone(), data);
                    }
                    Err(e) => err = Some(e),
                }
                return;
            }
            match try_with_capacity(&name, v.len()) {
                Ok(mut data) => {
                    data.extend(v.iter().map(|x| x.to_f64()));
                    file.put_float(name, def.shape.clone(), data);
                }
                Err(e) => err = Some(e),
            }
        });
        if let Some(e) = err {
            // Leave no half-written set of parameters behind.
            self.for_each(|def, layer, dir, _| {
                file.tensors.remove(&format!("{prefix}{}", RnnConfig::param_name(def.stem, layer, dir)));
            });
            return Err(e);
        }
        file.metadata.extend(config_metadata(&self.config));
        Ok(())
    }

    /// Saves as safetensors under PyTorch's names, with the config in the metadata, so that
    /// `module.load_state_dict(safetensors.torch.load_file(path))` takes it. Checks the
    /// weights first ([`Weights::validate`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_as(path, Precision::F32)
    }

    /// [`Weights::save`] with the tensors stored as F32 or F16 (half the file; PyTorch loads
    /// either). F16 and BF16 files load back through [`Weights::load`] like F32 ones, and an
    /// F16 file's values reach an f16 plan's device buffers unchanged.
    pub fn save_as(&self, path: impl AsRef<Path>, precision: Precision) -> Result<()> {
        let mut f = TensorFile::default();
        self.to_tensor_file(&mut f, "")?;
        f.write_as(path, precision)
    }
}

/// The names of the parameters stored in `slot` (`weight_ih_l0`; `weight_xz_l0+weight_xr_l0`
/// where a cell keeps several there), for errors.
fn slot_name(defs: &[ParamDef], slot: Slot, layer: usize, dir: usize) -> String {
    let names: Vec<String> = defs.iter().filter(|d| d.slot == slot).map(|d| RnnConfig::param_name(d.stem, layer, dir)).collect();
    if names.is_empty() {
        // PyTorch's name for the slot (e.g. a `weight_hr` the config does not have).
        let stem = match slot {
            Slot::WeightIh => "weight_ih",
            Slot::WeightHh => "weight_hh",
            Slot::BiasIh => "bias_ih",
            Slot::BiasHh => "bias_hh",
            Slot::WeightHr => "weight_hr",
            Slot::Pointwise => "pointwise",
        };
        RnnConfig::param_name(stem, layer, dir)
    } else {
        names.join("+")
    }
}

/// The metadata strings that describe a config (numbers and booleans as JSON).
pub fn config_metadata(c: &RnnConfig) -> HashMap<String, String> {
    let mut m = HashMap::from([
        ("mode".into(), c.mode.as_str().into()),
        ("input_size".into(), c.input_size.to_string()),
        ("hidden_size".into(), c.hidden_size.to_string()),
        ("num_layers".into(), c.num_layers.to_string()),
        ("bidirectional".into(), c.bidirectional.to_string()),
        ("proj_size".into(), c.proj_size.to_string()),
        ("bias".into(), c.bias.to_string()),
        // How the model runs (issue 26: without these a model trained with zoneout, whose
        // inference mixes in the previous h, loaded back as another model).
        ("dropout".into(), c.dropout.get().to_string()),
        ("zoneout".into(), c.zoneout.get().to_string()),
        ("precision".into(), c.precision.name().into()),
    ]);
    // Custom activation slots, per direction (absent: the cell's own).
    if !c.pointwise.is_empty() {
        m.insert("pointwise".into(), c.pointwise.iter().map(|p| p.encode()).collect::<Vec<_>>().join("/"));
    }
    m
}

/// The metadata's activation slots per direction (`config_metadata`), empty if absent.
fn meta_pointwise(meta: &HashMap<String, String>) -> Result<Vec<crate::cells::Pointwise>> {
    match meta.get("pointwise") {
        None => Ok(Vec::new()),
        Some(s) => s.split('/').map(crate::cells::Pointwise::parse).collect(),
    }
}

/// The activation slots of a model loaded with `hint`: they are part of the model, not a run
/// setting, so the file's when it has them (a caller's other slots are an error), else the
/// caller's.
fn model_pointwise(meta: &HashMap<String, String>, hint: Option<&RnnConfig>) -> Result<Vec<crate::cells::Pointwise>> {
    let file = meta_pointwise(meta)?;
    match hint {
        Some(h) if !file.is_empty() && !h.pointwise.is_empty() && h.pointwise != file => {
            Err(Error::Metadata("the file's activation slots (pointwise) differ from the caller's".into()))
        }
        Some(h) if file.is_empty() => Ok(h.pointwise.clone()),
        _ => Ok(file),
    }
}

/// The metadata's run settings (dropout, zoneout, storage precision); each absent from files
/// written before they were saved, and then 0, 0 and f32.
fn meta_run_settings(meta: &HashMap<String, String>) -> Result<(Prob, Prob, Precision)> {
    let prob = |key: &str| -> Result<Prob> {
        match meta.get(key) {
            None => Ok(Prob::ZERO),
            Some(s) => {
                let p = s.trim().parse::<f32>().map_err(|_| Error::Metadata(format!("{key}={s:?} is not a number")))?;
                Prob::new(p).map_err(|_| Error::Metadata(format!("{key}={s:?} is not a probability in [0, 1)")))
            }
        }
    };
    let precision = match meta.get("precision").map(|s| s.trim().to_ascii_lowercase()) {
        None => Precision::F32,
        Some(s) if s == Precision::F32.name() => Precision::F32,
        Some(s) if s == Precision::F16.name() => Precision::F16,
        Some(s) => return Err(Error::Metadata(format!("precision={s:?} is neither f32 nor f16"))),
    };
    Ok((prob("dropout")?, prob("zoneout")?, precision))
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
/// tensors: a disagreement is an error, not a guess. How the model runs (dropout, zoneout,
/// storage precision) is the caller's when `hint` is given, else the metadata's (0, 0 and
/// f32 in files that predate those keys). The activation slots (`pointwise`) are the model's:
/// the file's when it has them (a caller's that differ are an error), else the caller's.
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
    if !mode.optional_bias() {
        return infer_described(file, prefix, hint, mode);
    }
    let w_ih0 = shape("weight_ih_l0").ok_or_else(|| Error::MissingTensor(format!("{prefix}weight_ih_l0")))?;
    let w_hh0 = shape("weight_hh_l0").ok_or_else(|| Error::MissingTensor(format!("{prefix}weight_hh_l0")))?;
    for (name, s) in [("weight_ih_l0", &w_ih0), ("weight_hh_l0", &w_hh0)] {
        if s.len() != 2 {
            return Err(Error::RankMismatch { what: format!("{prefix}{name}"), expected: 2, got: s.clone() });
        }
    }
    let w_hr0 = shape("weight_hr_l0");
    if let Some(s) = w_hr0.as_ref().filter(|s| s.len() != 2) {
        return Err(Error::RankMismatch { what: format!("{prefix}weight_hr_l0"), expected: 2, got: s.clone() });
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
        proj_size: w_hr0.map(|s| s[0]).unwrap_or(0),
        ..Default::default()
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
    } else {
        (c.dropout, c.zoneout, c.precision) = meta_run_settings(meta)?;
    }
    c.pointwise = model_pointwise(meta, hint)?;
    c.validate()?;
    Ok(c)
}

/// [`infer_config`] for the cells beyond PyTorch's: sizes from the metadata or the caller
/// (which must agree), layers and directions from the metadata or the names present; every
/// tensor's shape is then checked by [`Weights::from_tensor_file`].
fn infer_described(file: &TensorFile, prefix: &str, hint: Option<&RnnConfig>, mode: Mode) -> Result<RnnConfig> {
    let meta = &file.metadata;
    let first = mode.params(crate::cells::Sizes { input: 1, hidden: 1, proj: 0, bias: true })[0].stem;
    let has = |name: String| file.tensors.contains_key(&format!("{prefix}{name}"));
    let mut layers = 0;
    while has(RnnConfig::param_name(first, layers, 0)) {
        layers += 1;
    }
    let found = [
        ("input_size", meta_usize(meta, "input_size")?, hint.map(|h| h.input_size)),
        ("hidden_size", meta_usize(meta, "hidden_size")?, hint.map(|h| h.hidden_size)),
        ("num_layers", meta_usize(meta, "num_layers")?, hint.map(|h| h.num_layers).or(Some(layers))),
        ("proj_size", meta_usize(meta, "proj_size")?, hint.map(|h| h.proj_size).or(Some(0))),
        (
            "bidirectional",
            meta_bool(meta, "bidirectional")?.map(usize::from),
            hint.map(|h| usize::from(h.bidirectional)).or(Some(usize::from(has(RnnConfig::param_name(first, 0, 1))))),
        ),
    ];
    let mut v = [0usize; 5];
    for (i, (what, m, h)) in found.into_iter().enumerate() {
        v[i] = match (m, h) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::Metadata(format!("{what} is {a} in the file but {b} from the caller or the tensors")))
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => return Err(Error::Metadata(format!("{mode} weights need {what} in the metadata or from the caller"))),
        };
    }
    if meta_bool(meta, "bias")? == Some(false) {
        return Err(Error::Metadata(format!("bias=false: {mode} always has its biases")));
    }
    // How the model runs: the caller's, else the file's.
    let (dropout, zoneout, precision) = match hint {
        Some(h) => (h.dropout, h.zoneout, h.precision),
        None => meta_run_settings(meta)?,
    };
    let pointwise = model_pointwise(meta, hint)?;
    let c = RnnConfig {
        mode,
        input_size: v[0],
        hidden_size: v[1],
        num_layers: v[2],
        proj_size: v[3],
        bidirectional: v[4] == 1,
        bias: true,
        dropout,
        zoneout,
        precision,
        pointwise,
    };
    c.validate()?;
    Ok(c)
}
