//! The LSTM family's forget-gate bias, for the examples here and the burn crate's sentiment
//! example (which takes this file by `#[path]`: it may use std and wgpu-rnn only).

use wgpu_rnn::{Mode, Weights};

/// The forget-gate bias of the LSTM family set to 1 in total (the notebook's advice for LSTMs;
/// PyTorch's LSTM has two biases, so 0.5 in each); other cells are left as initialised.
pub fn forget_bias(w: &mut Weights<f32>) {
    let h = w.config.hidden_size;
    let (stems, range, value): (&[&str], _, f32) = match w.config.mode {
        Mode::Lstm | Mode::LstmPeephole => (&["bias_ih", "bias_hh"], h..2 * h, 0.5),
        Mode::LstmCifg => (&["bias_ih", "bias_hh"], 0..h, 0.5),
        Mode::LstmLayerNorm => (&["bias"], h..2 * h, 1.0),
        _ => return,
    };
    w.for_each_mut(|def, _, _, v| {
        if stems.contains(&def.stem) {
            v[range.clone()].iter_mut().for_each(|x| *x = value);
        }
    });
}
