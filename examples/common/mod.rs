//! Helpers the training examples share: the data folder, metric blocks read back from the
//! device, weights read back from a GPU model, and the PNG plot.
#![allow(dead_code)]

pub mod init;
pub mod plot;

#[allow(unused_imports)] // not every example trains an LSTM
pub use init::forget_bias;

use std::path::PathBuf;
use std::sync::Arc;
use wgpu_rnn::gpu::train::{read_f32, read_stored, METRIC_FLOATS};
use wgpu_rnn::gpu::{upload, Context, GpuRnn, TrackedBuffer};
use wgpu_rnn::{Error, Result, Weights};

/// `examples/data/<name>` (copied from ../shared/data, see its README for sources).
pub fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/data").join(name)
}

/// Metric blocks on the device (`[loss sum, correct, rows, -]` each, see the training kit).
pub struct Metrics {
    ctx: Arc<Context>,
    pub buf: TrackedBuffer,
}

/// Totals since a block was last reset.
#[derive(Clone, Copy, Debug)]
pub struct Totals {
    pub loss: f64,
    pub accuracy: f64,
    pub rows: f64,
}

impl Metrics {
    pub fn new(ctx: &Arc<Context>, blocks: usize) -> Result<Self> {
        Ok(Metrics { ctx: ctx.clone(), buf: upload(ctx, "metrics", &vec![0.0; blocks * METRIC_FLOATS])? })
    }

    /// Offset of block `i` in floats.
    pub fn offset(&self, i: usize) -> usize {
        i * METRIC_FLOATS
    }

    /// Reads block `i` (waits for the device) and resets it; a non-finite loss is an error.
    pub fn take(&self, i: usize) -> Result<Totals> {
        let at = i * METRIC_FLOATS;
        let m = read_f32(&self.ctx, &self.buf, at + METRIC_FLOATS)?;
        // Ordered before the next submit, which is the next batch.
        self.ctx.queue.write_buffer(&self.buf, (at * 4) as u64, bytemuck::cast_slice(&[0.0f32; METRIC_FLOATS]));
        let rows = m[at + 2] as f64;
        let t = Totals { loss: m[at] as f64 / rows.max(1.0), accuracy: m[at + 1] as f64 / rows.max(1.0), rows };
        if !t.loss.is_finite() {
            return Err(Error::NonFinite("training loss (lower the learning rate?)".into()));
        }
        Ok(t)
    }
}

/// The model's current weights, read back from the device.
pub fn weights_of(ctx: &Context, rnn: &GpuRnn) -> Result<Weights<f32>> {
    // In the model's storage precision (the examples keep f32 master weights; an f16 model's
    // buffer holds f16).
    let c = rnn.config();
    let flat = read_stored(ctx, rnn.weights_buffer(), wgpu_rnn::gpu::weight_elems(c), c.precision)?;
    wgpu_rnn::gpu::weights_from_flat(c, &flat)
}

/// Standard normal samples (Box-Muller), for embedding initialisation.
pub fn normal(rng: &mut impl rand::Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random::<f32>().max(1e-12);
            let u2: f32 = rng.random();
            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

/// The cells a `--cells` list names, in order: registry names in any case, the aliases lstm,
/// gru and rnn (= RNN_TANH), or `all` (every registered cell).
pub fn parse_cells(names: &[String]) -> Result<Vec<wgpu_rnn::Mode>> {
    use wgpu_rnn::Mode;
    let mut cells = Vec::new();
    for name in names {
        let mode = match name.trim().to_ascii_lowercase().as_str() {
            "all" => {
                cells.extend_from_slice(Mode::REGISTRY);
                continue;
            }
            "lstm" => Mode::Lstm,
            "gru" => Mode::Gru,
            "rnn" => Mode::RnnTanh,
            other => Mode::from_name(other).ok_or_else(|| Error::InvalidConfig(format!("unknown cell {name:?}: one of {} (any case), lstm, gru, rnn or all", Mode::names())))?,
        };
        cells.push(mode);
    }
    Ok(cells)
}

/// A smoke run's check (`--min-drop`): every run's last test loss is below its first by at
/// least `min_drop` of it. `runs`: (name, curve of (step, loss), diverged). NaN-aware: a
/// diverged run or a NaN loss fails (`!(x <= y)` holds for NaN).
pub fn check_min_drop<'a>(runs: impl IntoIterator<Item = (String, &'a [(f64, f64)], bool)>, min_drop: f64, what: &str) -> Result<()> {
    let stalled: Vec<String> = runs
        .into_iter()
        .filter_map(|(name, curve, diverged)| {
            let (first, last) = (curve.first().map_or(f64::NAN, |p| p.1), curve.last().map_or(f64::NAN, |p| p.1));
            (diverged || !(last <= first * (1.0 - min_drop))).then(|| format!("{name} ({first:.4} -> {last:.4})"))
        })
        .collect();
    if !stalled.is_empty() {
        return Err(Error::InvalidConfig(format!("{what} fell by less than {min_drop} of its first value for: {}", stalled.join(", "))));
    }
    println!("every cell's {what} fell by at least {min_drop} of its first value");
    Ok(())
}

/// Rows of `from` features padded with zeros to `width` (cells that need input size ==
/// hidden size take a narrower input this way, with no input layer); unchanged when
/// `width == from`.
pub fn pad_rows(x: &[f32], from: usize, width: usize) -> std::borrow::Cow<'_, [f32]> {
    if width == from {
        return x.into();
    }
    let mut v = vec![0.0f32; x.len() / from * width];
    for (row, src) in v.chunks_exact_mut(width).zip(x.chunks_exact(from)) {
        row[..from].copy_from_slice(src);
    }
    v.into()
}
