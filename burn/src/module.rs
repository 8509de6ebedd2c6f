//! [`FusedRnn`]: any registered cell's stack as a burn module over padded `[T, B, I]` (or
//! batch-first `[B, T, I]`) tensors with per-sequence lengths.

use crate::{FusedRnnBackend, RnnSpec};
use burn::backend::Dispatch;
use burn::module::{Module, Param};
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use wgpu_rnn::{Mode, RnnConfig, Weights};

/// The stack a [`FusedRnn`] runs: PyTorch's `nn.LSTM(input_size, hidden_size, num_layers,
/// bidirectional=..., batch_first=...)` for `Mode::Lstm`, and the same for every other
/// registered cell.
#[derive(Clone, Debug)]
pub struct FusedRnnConfig {
    pub rnn: RnnConfig,
    /// Input and output `[B, T, ..]` instead of `[T, B, ..]`.
    pub batch_first: bool,
}

impl FusedRnnConfig {
    pub fn new(mode: Mode, input_size: usize, hidden_size: usize) -> Self {
        FusedRnnConfig { rnn: RnnConfig::new(mode, input_size, hidden_size), batch_first: false }
    }

    /// The module with the cell's own initialisation (PyTorch's for its cells), from `seed`.
    pub fn init(&self, seed: u64, device: &Device) -> wgpu_rnn::Result<FusedRnn> {
        let w = Weights::<f32>::init_uniform(&self.rnn, seed)?;
        FusedRnn::from_weights(&w, self.batch_first, device)
    }
}

/// A recurrent stack on wgpu-rnn's fused kernels. Its one parameter holds the weights in
/// `wgpu_rnn::gpu::flat_weights`' layout (for PyTorch's cells, `state_dict` order); load a
/// PyTorch `state_dict` with [`FusedRnn::from_weights`] (`Weights::from_file`) and save one
/// with [`FusedRnn::weights`].
#[derive(Module, Debug)]
pub struct FusedRnn {
    pub weights: Param<Tensor<1>>,
    #[module(skip)]
    config: RnnConfig,
    #[module(skip)]
    batch_first: bool,
}

/// The result of [`FusedRnn::forward`].
#[derive(Debug)]
pub struct FusedRnnOutput {
    /// `[T, B, D * H_out]` (`[B, T, ..]` batch-first), zeros past each sequence's length.
    pub output: Tensor<3>,
    /// Per state of the cell (`h`, then `c` for an LSTM, ...), `[L * D, B, S_i]`: each
    /// sequence's state after its last step.
    pub states: Vec<Tensor<3>>,
}

impl FusedRnn {
    /// The module with `w`'s values.
    pub fn from_weights(w: &Weights<f32>, batch_first: bool, device: &Device) -> wgpu_rnn::Result<Self> {
        w.config.validate()?;
        let flat = wgpu_rnn::gpu::flat_weights(w);
        let n = flat.len();
        Ok(FusedRnn { weights: Param::from_tensor(Tensor::from_data(TensorData::new(flat, [n]), device)), config: w.config.clone(), batch_first })
    }

    /// The parameters as wgpu-rnn weights (PyTorch's names in a saved file).
    pub fn weights(&self) -> wgpu_rnn::Result<Weights<f32>> {
        let flat: Vec<f32> = self.weights.val().into_data().to_vec().map_err(|e| wgpu_rnn::Error::Gpu(format!("reading burn's parameter: {e:?}")))?;
        wgpu_rnn::gpu::weights_from_flat(&self.config, &flat)
    }

    pub fn config(&self) -> &RnnConfig {
        &self.config
    }

    /// Runs the stack over `input` (`[T, B, I]`, or `[B, T, I]` batch-first) with each
    /// sequence's length (all `T` when `None`) and initial states (zeros when `None`: one
    /// `[L * D, B, S_i]` tensor per state).
    pub fn forward(&self, input: Tensor<3>, lengths: Option<&[usize]>, states0: Option<Vec<Tensor<3>>>) -> wgpu_rnn::Result<FusedRnnOutput> {
        let device = input.device();
        crate::check_device(&device)?;
        let same = |d: Device| d.without_autodiff() == device.clone().without_autodiff();
        if !same(self.weights.device()) {
            return Err(wgpu_rnn::Error::InvalidConfig(format!("the input is on {device:?} but the module's weights on {:?}", self.weights.device())));
        }
        let input = if self.batch_first { input.swap_dims(0, 1) } else { input };
        let [t, b, i] = input.dims();
        if i != self.config.input_size {
            return Err(wgpu_rnn::Error::ShapeMismatch { what: "input [T, B, I]".into(), expected: vec![t, b, self.config.input_size], got: vec![t, b, i] });
        }
        let lengths: Vec<usize> = lengths.map(|l| l.to_vec()).unwrap_or_else(|| vec![t; b]);
        // The packed rows: time-major, at each step the sequences still running, longest first
        // (PackedSequence's order); `rows[k]` is packed row k's row in the padded [T * B, I].
        let template = wgpu_rnn::PackedSequence::from_padded(&vec![0f32; t * b], [t, b, 1], false, &lengths)?;
        let order = template.sorted_indices.clone();
        let mut rows = Vec::with_capacity(template.rows());
        for (step, &bs) in template.batch_sizes.iter().enumerate() {
            for &seq in &order[..bs] {
                rows.push((step * b + seq) as i64);
            }
        }
        let n = rows.len();
        let spec = RnnSpec::new(self.config.clone(), lengths.clone());
        // Every sequence T long: the padded rows are the packed rows, in order (no gather).
        let identity = n == t * b && rows.iter().enumerate().all(|(k, &r)| r == k as i64);
        let idx = (!identity).then(|| Tensor::<1, Int>::from_data(TensorData::new(rows.clone(), [n]), &device));
        let x = match &idx {
            Some(idx) => input.reshape([t * b, i]).select(0, idx.clone()).reshape([n * i]),
            None => input.reshape([n * i]),
        };
        let elems = self.config.state_elems(b);
        let s0 = match states0 {
            Some(s) => {
                if s.len() != elems.len() {
                    return Err(wgpu_rnn::Error::InvalidConfig(format!("{} has {} states, {} given", self.config.mode, elems.len(), s.len())));
                }
                for (v, st) in s.iter().zip(self.config.states()) {
                    let want = self.config.state_shape(&st, b);
                    if v.dims().to_vec() != want {
                        return Err(wgpu_rnn::Error::ShapeMismatch { what: format!("initial state {}0", st.name), expected: want, got: v.dims().to_vec() });
                    }
                    if !same(v.device()) {
                        return Err(wgpu_rnn::Error::InvalidConfig(format!("the input is on {device:?} but initial state {}0 on {:?}", st.name, v.device())));
                    }
                }
                Tensor::cat(s.into_iter().map(|v| v.flatten::<1>(0, 2)).collect(), 0)
            }
            None => Tensor::zeros([elems.iter().sum::<usize>()], &device),
        };
        let y = Tensor::<1>::from_dispatch(<Dispatch as FusedRnnBackend>::fused_rnn(x.into_dispatch(), self.weights.val().into_dispatch(), s0.into_dispatch(), spec.clone()));
        let o = self.config.output_size();
        let out_rows = y.clone().slice([0..n * o]).reshape([n, o]);
        // Back to padded [T * B, O]: scatter the packed rows (zeros elsewhere).
        let padded = match idx {
            Some(idx) => Tensor::<2>::zeros([t * b, o], &device).select_assign(0, idx, out_rows, IndexingUpdateOp::Assign),
            None => out_rows,
        };
        let mut output = padded.reshape([t, b, o]);
        if self.batch_first {
            output = output.swap_dims(0, 1);
        }
        let mut at = n * o;
        let shapes: Vec<[usize; 3]> = self.config.states().iter().map(|s| {
            let sh = self.config.state_shape(s, b);
            [sh[0], sh[1], sh[2]]
        }).collect();
        let states = shapes
            .into_iter()
            .map(|sh| {
                let e = sh.iter().product::<usize>();
                let s = y.clone().slice([at..at + e]).reshape(sh);
                at += e;
                s
            })
            .collect();
        Ok(FusedRnnOutput { output, states })
    }
}
