//! Reference cases in the golden format (`../shared/golden/README.md`): a stack's parameters,
//! padded time-major input with lengths, optional initial states and output gradients, and
//! optionally the expected results. Used by the CLI (`wgpu-rnn run`, `wgpu-rnn check`) and
//! the tests.

use crate::config::RnnConfig;
use crate::cpu::{self, Float, Pass};
use crate::error::{check_len, Error, Result};
use crate::io::TensorFile;
use crate::packing::PackedSequence;
use crate::weights::Weights;
use std::path::Path;

/// Tolerances of the golden cases: an element passes when `|got - want| <= atol + rtol*|want|`.
pub mod tolerance {
    /// Forward (`output`, `h_n`, `c_n`) absolute tolerance.
    pub const FORWARD_ATOL: f64 = 2e-5;
    /// Forward relative tolerance.
    pub const FORWARD_RTOL: f64 = 2e-4;
    /// Gradient absolute tolerance.
    pub const GRAD_ATOL: f64 = 1e-4;
    /// Gradient relative tolerance.
    pub const GRAD_RTOL: f64 = 1e-3;

    /// f16 storage (`Precision::F16`): forward absolute tolerance.
    pub const F16_FORWARD_ATOL: f64 = 5e-3;
    /// f16 storage: forward relative tolerance.
    pub const F16_FORWARD_RTOL: f64 = 1e-2;
    /// f16 storage: gradient absolute tolerance.
    pub const F16_GRAD_ATOL: f64 = 2e-2;
    /// f16 storage: gradient relative tolerance.
    pub const F16_GRAD_RTOL: f64 = 5e-2;

    /// `(forward atol, forward rtol, gradient atol, gradient rtol)` for results stored in
    /// `precision`.
    pub fn for_precision(precision: crate::precision::Precision) -> (f64, f64, f64, f64) {
        match precision {
            crate::precision::Precision::F32 => (FORWARD_ATOL, FORWARD_RTOL, GRAD_ATOL, GRAD_RTOL),
            crate::precision::Precision::F16 => (F16_FORWARD_ATOL, F16_FORWARD_RTOL, F16_GRAD_ATOL, F16_GRAD_RTOL),
        }
    }
}

/// A case's inputs, in compute type `T`. Shapes: `input: [T, B, I]` (time-major, padded),
/// each state's `{s}0: [L*D, B, S]` (`h0: [L*D, B, H_out]`, `c0: [L*D, B, H]`, ...),
/// `grad_output: [T, B, D*H_out]`.
#[derive(Clone, Debug)]
pub struct Case<T> {
    /// The model's weights (its configuration inside).
    pub weights: Weights<T>,
    /// Sequence length `T` of the padded input.
    pub steps: usize,
    /// Batch size `B`.
    pub batch: usize,
    /// The padded input `[T, B, I]`, time-major.
    pub input: Vec<T>,
    /// Each sequence's length `[B]`, in any order.
    pub lengths: Vec<usize>,
    /// Each state's initial value `{s}0`, in the cell's state order (`h`, `c`, ...).
    pub states0: Vec<Option<Vec<T>>>,
    /// The output's gradient `[T, B, D*H_out]`; `None` for a forward-only case.
    pub grad_output: Option<Vec<T>>,
    /// Each state's final-value gradient `grad_{s}_n`.
    pub grad_states_n: Vec<Option<Vec<T>>>,
    /// The file's metadata, written back with the results.
    pub metadata: std::collections::HashMap<String, String>,
}

/// Gradients as [`Case::result`] takes them: the input's, each initial state's, the parameters'.
pub type CaseGrads<T> = (PackedSequence<T>, Vec<crate::tensor::Tensor<T>>, Weights<T>);

/// What running a case produces, as named tensors in the golden names (`output`, `h_n`,
/// `c_n`, `grad_input`, `grad_h0`, `grad_c0`, `grad.<param>`), padded like the case.
pub type CaseResult = TensorFile;

fn opt_float<T: Float>(file: &TensorFile, name: &str, shape: &[usize]) -> Result<Option<Vec<T>>> {
    match file.float_opt(name)? {
        None => Ok(None),
        Some(t) => {
            if t.shape != shape {
                return Err(Error::ShapeMismatch { what: name.into(), expected: shape.to_vec(), got: t.shape.clone() });
            }
            Ok(Some(cpu::cast(&t.data)))
        }
    }
}

impl<T: Float> Case<T> {
    /// Reads a case file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(&TensorFile::read(path)?)
    }

    /// Builds a case from a parsed file; checks every shape.
    pub fn from_file(file: &TensorFile) -> Result<Self> {
        if let Some(bf) = file.metadata.get("batch_first") {
            if bf.trim() == "true" {
                return Err(Error::Unsupported("batch_first cases (the golden format is time-major)".into()));
            }
        }
        let weights = Weights::<T>::from_file(file, "", None)?;
        let cfg = weights.config.clone();
        let input = file.float("input")?;
        if input.shape.len() != 3 || input.shape[2] != cfg.input_size {
            return Err(Error::ShapeMismatch {
                what: "input [T, B, I]".into(),
                expected: vec![input.shape.first().copied().unwrap_or(0), input.shape.get(1).copied().unwrap_or(0), cfg.input_size],
                got: input.shape.clone(),
            });
        }
        let (steps, batch) = (input.shape[0], input.shape[1]);
        let lengths_t = file.int("lengths")?;
        if lengths_t.shape != [batch] {
            return Err(Error::ShapeMismatch { what: "lengths".into(), expected: vec![batch], got: lengths_t.shape.clone() });
        }
        let mut lengths = Vec::with_capacity(batch);
        for (i, &l) in lengths_t.data.iter().enumerate() {
            if l < 0 {
                return Err(Error::InvalidLengths(format!("sequence {i} has negative length {l}")));
            }
            lengths.push(l as usize);
        }
        let out_shape = [steps, batch, cfg.output_size()];
        let states = cfg.states();
        if let Some(declared) = file.metadata.get("states") {
            let names: Vec<String> = declared
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(|x| x.trim().trim_matches('"').to_string())
                .filter(|x| !x.is_empty())
                .collect();
            let ours: Vec<String> = states.iter().map(|s| s.name.to_string()).collect();
            if names != ours {
                return Err(Error::Metadata(format!("states {declared} in the file, but {} has {ours:?}", cfg.mode)));
            }
        }
        let mut states0 = Vec::new();
        let mut grad_states_n = Vec::new();
        for st in &states {
            let shape = cfg.state_shape(st, batch);
            states0.push(opt_float(file, &format!("{}0", st.name), &shape)?);
            grad_states_n.push(opt_float(file, &format!("grad_{}_n", st.name), &shape)?);
        }
        Ok(Case {
            steps,
            batch,
            input: cpu::cast(&input.data),
            lengths,
            states0,
            grad_output: opt_float(file, "grad_output", &out_shape)?,
            grad_states_n,
            metadata: file.metadata.clone(),
            weights,
        })
    }

    /// The configuration the weights were made for.
    pub fn config(&self) -> &RnnConfig {
        &self.weights.config
    }

    /// The input packed as `pack_padded_sequence(input, lengths, enforce_sorted=False)`.
    pub fn packed_input(&self) -> Result<PackedSequence<T>> {
        PackedSequence::from_padded(&self.input, [self.steps, self.batch, self.config().input_size], false, &self.lengths)
    }

    /// Runs the case on the CPU engine ([`cpu::forward`]): forward, and backward when
    /// `backward` is set.
    pub fn run_cpu(&self, backward: bool) -> Result<CaseResult> {
        let packed = self.packed_input()?;
        let pass = if backward { Pass::Training } else { Pass::Inference };
        let s0: Vec<Option<&[T]>> = self.states0.iter().map(|s| s.as_deref()).collect();
        let (fwd, tape) = cpu::forward(&self.weights, &packed, &s0, pass)?;
        let grads = match (backward, tape) {
            (true, Some(tape)) => {
                let go = self.packed_grad_output()?;
                let gs: Vec<Option<&[T]>> = self.grad_states_n.iter().map(|s| s.as_deref()).collect();
                Some(cpu::backward(&self.weights, &tape, &go, &gs)?)
            }
            _ => None,
        };
        self.result_of(fwd, grads)
    }

    /// Runs the case on the CPU engine with its values stored in `precision` (f16: the twin
    /// of the GPU's f16 storage, rounding where the GPU stores).
    pub fn run_cpu_at(&self, backward: bool, precision: crate::precision::Precision) -> Result<CaseResult> {
        self.stored_in(precision).run_cpu(backward)
    }

    /// The same case with its values stored in `precision` (the `*_at` runs).
    fn stored_in(&self, precision: crate::precision::Precision) -> Self {
        let mut case = self.clone();
        case.weights.config.precision = precision;
        case
    }

    /// `grad_output` packed like the output (zeros when the case has none).
    pub fn packed_grad_output(&self) -> Result<Vec<T>> {
        let w = self.config().output_size();
        let shape = [self.steps, self.batch, w];
        let padded = match &self.grad_output {
            Some(g) => g.clone(),
            None => vec![T::zero(); shape.iter().product()],
        };
        check_len("grad_output", &shape, padded.len())?;
        Ok(PackedSequence::from_padded(&padded, shape, false, &self.lengths)?.data)
    }

    /// [`Case::result`] of a forward's output and, after a backward, its gradients.
    pub fn result_of(&self, fwd: cpu::ForwardOutput<T>, grads: Option<cpu::Gradients<T>>) -> Result<CaseResult> {
        self.result(&fwd.output, fwd.states, grads.map(cpu::Gradients::into_parts))
    }

    /// Turns forward outputs and gradients into the golden names (`output`, `{s}_n`,
    /// `grad_input`, `grad_{s}0`, `grad.<param>`), padded to the case's T.
    pub fn result(
        &self,
        output: &PackedSequence<T>,
        states_n: Vec<crate::tensor::Tensor<T>>,
        grads: Option<CaseGrads<T>>,
    ) -> Result<CaseResult> {
        let mut out = TensorFile { metadata: self.metadata.clone(), ..Default::default() };
        let to64 = |v: &[T]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
        let (padded, _) = output.to_padded(false, T::zero(), Some(self.steps))?;
        out.put_float("output", padded.shape, to64(&padded.data));
        let names = self.config().states();
        for (st, t) in names.iter().zip(states_n) {
            out.put_float(format!("{}_n", st.name), t.shape, to64(&t.data));
        }
        if let Some((gi, gs, gp)) = grads {
            let (gi, _) = gi.to_padded(false, T::zero(), Some(self.steps))?;
            out.put_float("grad_input", gi.shape, to64(&gi.data));
            for (st, t) in names.iter().zip(gs) {
                out.put_float(format!("grad_{}0", st.name), t.shape, to64(&t.data));
            }
            gp.for_each(|def, layer, dir, v| {
                // A fixed tensor (the uRNN's permutation) has no gradient.
                if def.fixed {
                    return;
                }
                let name = format!("grad.{}", RnnConfig::param_name(def.stem, layer, dir));
                out.put_float(name, def.shape.clone(), to64(v));
            });
        }
        Ok(out)
    }
}

/// The largest `|got - want| / (atol + rtol * |want|)` over two equally long slices: 1 or less
/// is within tolerance. A NaN in either, or slices of different lengths, gives infinity
/// (never skipped, as a plain `max` would skip a NaN).
pub fn worst_ratio(got: &[f32], want: &[f32], atol: f64, rtol: f64) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter().zip(want).fold(0.0, |worst: f64, (&g, &w)| {
        let r = (g as f64 - w as f64).abs() / (atol + rtol * (w as f64).abs());
        if r.is_nan() {
            f64::INFINITY
        } else {
            worst.max(r)
        }
    })
}

/// One tensor's comparison against the expected values.
#[derive(Clone, Debug)]
pub struct Mismatch {
    /// The tensor's name in the case file (e.g. `output`, `grad.weight_hh_l0`).
    pub name: String,
    /// Elements outside tolerance.
    pub failures: usize,
    /// Elements compared.
    pub total: usize,
    /// The worst element: index, got, want.
    pub worst: (usize, f64, f64),
    /// Largest `|got - want| / (atol + rtol*|want|)`; <= 1 passes.
    pub worst_ratio: f64,
    /// Largest `|got - want|` (infinite for a missing tensor or a NaN).
    pub max_abs: f64,
}

/// Compares every expected tensor of `expected` that `got` also names (forward tolerances for
/// `output`, `h_n`, `c_n`; gradient tolerances for `grad*`). Returns one entry per tensor
/// compared; a tensor missing from `got` counts as a failure.
pub fn compare(got: &TensorFile, expected: &TensorFile, backward: bool) -> Vec<Mismatch> {
    compare_at(got, expected, backward, crate::precision::Precision::F32)
}

/// [`compare`] with the tolerances of results stored in `precision`
/// ([`tolerance::for_precision`]).
pub fn compare_at(got: &TensorFile, expected: &TensorFile, backward: bool, precision: crate::precision::Precision) -> Vec<Mismatch> {
    let (fa, fr, ga, gr) = tolerance::for_precision(precision);
    let mut names: Vec<String> = vec!["output".into()];
    let mut grads: Vec<String> = vec!["grad_input".into()];
    // Every state the file names (`h_n`, `c_n`, `s_n`, `y_n`, ...).
    for k in expected.tensors.keys() {
        if let Some(s) = k.strip_suffix("_n").filter(|s| !s.starts_with("grad")) {
            names.push(k.clone());
            grads.push(format!("grad_{s}0"));
        }
    }
    if backward {
        names.extend(grads);
    }
    let param_grads: Vec<String> = expected.tensors.keys().filter(|k| k.starts_with("grad.")).cloned().collect();
    if backward {
        names.extend(param_grads);
    }
    names.sort();
    let mut report = Vec::new();
    for name in names.iter().map(|s| s.as_str()) {
        let Ok(want) = expected.float(name) else { continue };
        let (atol, rtol) = if name.starts_with("grad") { (ga, gr) } else { (fa, fr) };
        let mut m = Mismatch { name: name.into(), failures: 0, total: want.data.len(), worst: (0, f64::NAN, f64::NAN), worst_ratio: 0.0, max_abs: 0.0 };
        match got.float(name) {
            Ok(g) if g.shape == want.shape => {
                for (i, (&gv, &wv)) in g.data.iter().zip(&want.data).enumerate() {
                    let ratio = (gv - wv).abs() / (atol + rtol * wv.abs());
                    let ratio = if ratio.is_nan() { f64::INFINITY } else { ratio };
                    let err = (gv - wv).abs();
                    m.max_abs = m.max_abs.max(if err.is_nan() { f64::INFINITY } else { err });
                    if ratio > 1.0 {
                        m.failures += 1;
                    }
                    if ratio > m.worst_ratio || i == 0 {
                        m.worst_ratio = m.worst_ratio.max(ratio);
                        m.worst = (i, gv, wv);
                    }
                }
            }
            _ => {
                m.failures = m.total.max(1);
                m.worst_ratio = f64::INFINITY;
                m.max_abs = f64::INFINITY;
            }
        }
        report.push(m);
    }
    report
}

impl Case<f32> {
    /// [`Case::run_gpu`] with the case's values stored in `precision`
    /// ([`crate::precision::Precision`]; f16 needs the device's `SHADER_F16`), through
    /// [`crate::gpu::GpuRnn`].
    pub fn run_gpu_at(&self, ctx: &std::sync::Arc<crate::gpu::Context>, backward: bool, precision: crate::precision::Precision) -> Result<CaseResult> {
        self.stored_in(precision).run_gpu(ctx, backward)
    }

    /// [`Case::run_gpu`] without blocking ([`crate::gpu::GpuRnn::forward_async`] and
    /// [`crate::gpu::GpuRnn::backward_async`], any cell, in the config's precision): the form a
    /// browser (`wasm32`) can run, where [`Case::run_gpu`]'s waits are refused; on native
    /// targets something must poll the device while it is awaited. A problem beyond one
    /// binding is split as the blocking form splits it.
    pub async fn run_gpu_async(&self, ctx: &std::sync::Arc<crate::gpu::Context>, backward: bool) -> Result<CaseResult> {
        let rnn = crate::gpu::GpuRnn::new(ctx, &self.weights)?;
        let packed = self.packed_input()?;
        let (pass, s0, gs) = self.gpu_run_args(backward);
        let (fwd, tape) = rnn.forward_async(&packed, &s0, pass).await?;
        let grads = match (backward, tape) {
            (true, Some(tape)) => Some(rnn.backward_async(&tape, &self.packed_grad_output()?, &gs).await?),
            _ => None,
        };
        self.result_of(fwd, grads)
    }

    /// The pass, the initial states and the final states' gradients of a GPU run.
    #[allow(clippy::type_complexity)]
    fn gpu_run_args(&self, backward: bool) -> (Pass, Vec<Option<&[f32]>>, Vec<Option<&[f32]>>) {
        let pass = if backward { Pass::Training } else { Pass::Inference };
        let s0 = self.states0.iter().map(|s| s.as_deref()).collect();
        let gs = self.grad_states_n.iter().map(|s| s.as_deref()).collect();
        (pass, s0, gs)
    }

    /// Runs the case on the GPU (in its config's precision, f32 unless set) through
    /// [`crate::gpu::GpuRnn`], whatever the cell: forward, and backward when `backward` is set.
    pub fn run_gpu(&self, ctx: &std::sync::Arc<crate::gpu::Context>, backward: bool) -> Result<CaseResult> {
        self.run_on(&crate::gpu::GpuRnn::new(ctx, &self.weights)?, backward)
    }

    fn run_on(&self, rnn: &crate::gpu::GpuRnn, backward: bool) -> Result<CaseResult> {
        let packed = self.packed_input()?;
        let (pass, s0, gs) = self.gpu_run_args(backward);
        let (fwd, tape) = rnn.forward(&packed, &s0, pass)?;
        let grads = match (backward, tape) {
            (true, Some(tape)) => Some(rnn.backward(&tape, &self.packed_grad_output()?, &gs)?),
            _ => None,
        };
        self.result_of(fwd, grads)
    }
}
