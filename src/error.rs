//! The crate's one error type. Every entry point that takes user input returns
//! [`Result`]; nothing panics on bad shapes, lengths, files or adapter limits.

use thiserror::Error;

/// Everything that can go wrong in wgpu-rnn, with enough structure to act on.
#[derive(Debug, Error)]
pub enum Error {
    /// A configuration field is out of range (e.g. `hidden_size == 0`, `proj_size >= hidden_size`).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// The mode string names no registered cell ([`crate::Mode::REGISTRY`]).
    #[error("unknown mode {0:?}: expected one of {names} (or RNN, TANH, RELU)", names = crate::cells::Mode::names())]
    UnknownMode(String),

    /// A tensor has the wrong shape.
    #[error("shape mismatch for {what}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// The tensor or argument.
        what: String,
        /// The shape it must have.
        expected: Vec<usize>,
        /// The shape it has.
        got: Vec<usize>,
    },

    /// A buffer's element count does not match the shape it was described with.
    #[error("{what}: {got} elements do not fill shape {shape:?} ({expected} elements)")]
    LengthMismatch {
        /// The buffer or argument.
        what: String,
        /// The shape it was described with.
        shape: Vec<usize>,
        /// Elements the shape holds.
        expected: usize,
        /// Elements the buffer holds.
        got: usize,
    },

    /// A required tensor is absent from a weights or case file.
    #[error("missing tensor {0:?}")]
    MissingTensor(String),

    /// A tensor present in a file that the configuration does not expect.
    #[error("unexpected tensor {0:?} for this configuration")]
    UnexpectedTensor(String),

    /// A tensor has a dtype we cannot read.
    #[error("tensor {name:?} has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The tensor's name in the file.
        name: String,
        /// The file's dtype, as safetensors names it.
        dtype: String,
    },

    /// Sequence lengths are out of range or inconsistent.
    #[error("invalid lengths: {0}")]
    InvalidLengths(String),

    /// A batch with no sequences, or a sequence with no steps.
    #[error("empty batch: {0}")]
    EmptyBatch(String),

    /// Metadata in a file disagrees with the tensors or with the caller.
    #[error("metadata: {0}")]
    Metadata(String),

    /// A parameter whose values break its cell's rules (a uRNN permutation that repeats an
    /// index or leaves the range, a zero reflection vector).
    #[error("invalid parameter {name}: {why}")]
    InvalidParameter {
        /// The parameter set (layer and direction) or tensor.
        name: String,
        /// The rule broken.
        why: String,
    },

    /// A non-finite value where finite input is required.
    #[error("non-finite value in {0}")]
    NonFinite(String),

    /// Backward was asked of a forward pass that kept nothing (inference mode).
    #[error("backward needs a forward pass run in training mode")]
    NotTraining,

    /// The safetensors container could not be parsed or written.
    #[error("safetensors: {0}")]
    SafeTensors(String),

    /// An ONNX model or tensor file that is malformed, or a node this crate does not run
    /// (another operator, an attribute value outside ONNX's, a graph of other nodes): the
    /// message names what.
    #[error("onnx: {0}")]
    Onnx(String),

    /// File system errors.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),

    /// No wgpu adapter was found (or none matching the requested backend or name).
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),

    /// The adapter cannot run this problem (binding too large, missing feature ...).
    #[error("beyond the adapter's limits: {0}")]
    Limit(String),

    /// A wgpu validation or out-of-memory error captured through an error scope.
    #[error("wgpu: {0}")]
    Gpu(String),

    /// The device lacks a feature the work needs (e.g. `SHADER_F16` for f16 storage).
    #[error("{wanted} needs the device feature {feature}, which {device} does not have")]
    MissingFeature {
        /// The wgpu feature, as wgpu names it.
        feature: String,
        /// What needed it.
        wanted: String,
        /// The device, as the context describes it.
        device: String,
    },

    /// A feature that is not available on this path yet.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A host allocation that could not be met (or whose size overflows), refused before it
    /// was attempted or through a fallible reservation, instead of aborting the process.
    #[error("out of memory: {what} needs {bytes} bytes")]
    OutOfMemory {
        /// What the allocation was for.
        what: String,
        /// Bytes it needs.
        bytes: u128,
    },

    /// A training tape handed to backward with weights of another configuration or layout.
    #[error("tape mismatch: {0}")]
    TapeMismatch(String),

    /// A tensor has the wrong number of dimensions (e.g. a 0-d or 3-d `weight_hh_l0`).
    #[error("{what}: expected a {expected}-D tensor, got shape {got:?}")]
    RankMismatch {
        /// The tensor.
        what: String,
        /// The number of dimensions it must have.
        expected: usize,
        /// The shape it has.
        got: Vec<usize>,
    },

    /// A wait on the device (a readback, a submit-and-wait) did not finish within the
    /// context's wait timeout (`Context::set_wait_timeout`); the work is abandoned.
    #[error("timed out: {0}")]
    Timeout(String),

    /// The device was lost or destroyed; every later call on its context fails with this.
    #[error("device lost: {0}")]
    DeviceLost(String),

    /// One buffer bound to two roles of a recording where at least one of them is written.
    #[error("buffer aliasing: {0}")]
    BufferAliasing(String),
}

impl From<safetensors::SafeTensorError> for Error {
    fn from(e: safetensors::SafeTensorError) -> Self {
        Error::SafeTensors(e.to_string())
    }
}

/// Shorthand for `std::result::Result<T, wgpu_rnn::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

/// Checks that `data.len()` fills `shape`.
pub(crate) fn check_len(what: &str, shape: &[usize], got: usize) -> Result<()> {
    let expected: usize = shape.iter().product();
    if expected != got {
        return Err(Error::LengthMismatch { what: what.into(), shape: shape.to_vec(), expected, got });
    }
    Ok(())
}
