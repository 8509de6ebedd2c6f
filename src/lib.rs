//! # wgpu-rnn
//!
//! Fused recurrent-network kernels (each cell's own WGSL update fused with its products), forward
//! and backward through time, with PyTorch's
//! semantics exactly, and a CPU engine that every GPU result is tested against. The cells
//! ([`Mode`], one module each in [`cells`]): PyTorch's RNN (tanh, ReLU), LSTM (with optional
//! projection) and GRU, and LSTM with peepholes, coupled-gate LSTM (CIFG), GRU with the reset
//! before the product, layer-normalised LSTM, IndRNN, SRU, MUT1, Jordan and SCRN.
//!
//! ## Layouts (row-major everywhere)
//! - Padded input `x: [T, B, I]` (or `[B, T, I]` batch-first) with `lengths: [B]` in any order;
//!   packed input `PackedSequence { data: [N, I], batch_sizes: [T], sorted_indices,
//!   unsorted_indices }` as `torch.nn.utils.rnn.pack_padded_sequence` builds it.
//! - Output `[N, D*H_out]` packed (padded `[T, B, D*H_out]`), forward direction's columns first.
//! - States named and sized by the cell ([`RnnConfig::states`]): `[L*D, B, S]` each, index
//!   `layer*D + direction`, in the caller's batch order. PyTorch's cells: `h: [L*D, B, H_out]`,
//!   LSTM's `c: [L*D, B, H]`; `H_out = proj_size` when projecting, else `hidden_size`.
//! - Parameters under PyTorch's names: `weight_ih_l{k}[_reverse]: [G*H, in_k]`,
//!   `weight_hh_l{k}: [G*H, H_out]`, `bias_ih_l{k}`, `bias_hh_l{k}: [G*H]`,
//!   `weight_hr_l{k}: [P, H]`. Gate order: LSTM i, f, g, o; GRU r, z, n (G = 4, 3, 1). The
//!   other cells' names and shapes: `tests/golden-variants/README.md`.
//! - GRU keeps `b_hn` inside the reset product: `n = tanh(W_in x + b_in + r*(W_hn h + b_hn))`.
//!
//! ## Modules
//! - [`cells`]: the cells and their registry; [`config`]: the model description and
//!   parameter names; [`weights`]: load/save/init;
//! - [`packing`]: packed sequences; [`cpu`]: the CPU engine (forward and backward of every
//!   cell); [`gpu`]: the GPU engine API and convenience types; [`precision`], [`masks`]:
//!   f16 storage and the regularisers' masks;
//! - [`case`]: the golden case format; [`io`]: safetensors; [`bench`](mod@bench): `wgpu-rnn bench`.

#![warn(missing_docs)]

pub mod bench;
pub mod case;
pub mod cells;
pub mod config;
pub mod cpu;
pub mod error;
pub mod float;
pub mod gpu;
pub mod info;
pub mod io;
pub mod masks;
pub mod onnx;
pub mod packing;
pub mod precision;
pub mod tensor;
pub mod weights;

pub use cells::{Mode, ParamDef, Slot};
pub use config::RnnConfig;
pub use error::{Error, Result};
pub use packing::PackedSequence;
pub use precision::Precision;
pub use tensor::Tensor;
pub use weights::Weights;
/// The wgpu this crate is built on (its `Device`, `Buffer`, `CommandEncoder` are what the
/// engine API takes): an integration can name it, so a framework whose wgpu differs fails to
/// compile instead of mismatching at run time.
pub use wgpu;

/// The README's Rust, compiled as doctests (`cargo test --doc`, which CI runs), so the
/// front page cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
