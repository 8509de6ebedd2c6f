//! Per-kernel GPU time from timestamp queries written between dispatches.
//!
//! Needs `TIMESTAMP_QUERY` and `TIMESTAMP_QUERY_INSIDE_PASSES`, which [`Context`] requests
//! when the adapter has them (lavapipe and llvmpipe through GL both do). A [`KernelProfile`] given to
//! [`super::Plan::set_profile`] makes the plan's recordings write a timestamp before the first
//! dispatch of each pass and after every dispatch; [`KernelProfile::read`] then sums the
//! intervals per kernel. Profiling is for finding where time goes (`wgpu-rnn bench
//! --profile`), not for the benchmark figures, which come from a device wait.

use std::sync::{Arc, Mutex};

use super::context::Context;
use crate::error::{Error, Result};

/// Most timestamps one profile holds (one per dispatch plus one per pass).
pub const MAX_TIMESTAMPS: u32 = 4096;

/// Time spent in one kernel entry point over a profiled recording.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The WGSL entry point (and override variant) as the plan names it.
    pub kernel: String,
    /// Dispatches of it.
    pub dispatches: u32,
    /// Summed GPU time, ms.
    pub ms: f64,
}

/// Timestamp queries for one recording (see the module docs).
pub struct KernelProfile {
    ctx: Arc<Context>,
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
    /// Per query: the kernel whose dispatch it ends (`None` for a pass's first timestamp).
    marks: Mutex<Vec<Option<String>>>,
}

impl KernelProfile {
    /// Whether the context's device can profile inside passes.
    pub fn supported(ctx: &Context) -> bool {
        ctx.device.features().contains(wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
    }

    /// A profiler on `ctx`; `Unsupported` where the device has no timestamp queries inside passes.
    pub fn new(ctx: &Arc<Context>) -> Result<Self> {
        if !Self::supported(ctx) {
            return Err(Error::Unsupported(format!("{}: no timestamp queries inside passes", ctx.describe())));
        }
        let bytes = u64::from(MAX_TIMESTAMPS) * 8;
        let queries = ctx.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("wgpu-rnn profile"), ty: wgpu::QueryType::Timestamp, count: MAX_TIMESTAMPS });
        let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-rnn profile resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-rnn profile read"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(KernelProfile { ctx: ctx.clone(), queries, resolve, read, marks: Mutex::new(Vec::new()) })
    }

    fn marks(&self) -> std::sync::MutexGuard<'_, Vec<Option<String>>> {
        self.marks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the next timestamp into `pass`: `None` at a pass's start, else after a dispatch
    /// of `kernel`. Past [`MAX_TIMESTAMPS`] nothing is written (and `read` says so).
    pub(crate) fn mark(&self, pass: &mut wgpu::ComputePass<'_>, kernel: Option<String>) {
        let mut marks = self.marks();
        let i = marks.len() as u32;
        if i < MAX_TIMESTAMPS {
            pass.write_timestamp(&self.queries, i);
        }
        marks.push(kernel);
    }

    /// Resolves the written timestamps into a readable buffer; record after the passes.
    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        let n = (self.marks().len() as u32).min(MAX_TIMESTAMPS);
        if n > 0 {
            encoder.resolve_query_set(&self.queries, 0..n, &self.resolve, 0);
            encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.read, 0, u64::from(n) * 8);
        }
    }

    /// After the submission that holds the resolve: per-kernel sums, slowest first, and
    /// clears the marks for the next recording.
    pub fn read(&self) -> Result<Vec<KernelTime>> {
        let marks = std::mem::take(&mut *self.marks());
        if marks.len() > MAX_TIMESTAMPS as usize {
            return Err(Error::Unsupported(format!("{} timestamps in one profile, at most {MAX_TIMESTAMPS}", marks.len())));
        }
        if marks.is_empty() {
            return Ok(Vec::new());
        }
        let bytes = marks.len() as u64 * 8;
        let slice = self.read.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.ctx.wait()?;
        rx.recv().map_err(|e| Error::Gpu(format!("profile readback: {e}")))?.map_err(|e| Error::Gpu(format!("profile readback: {e}")))?;
        let ticks: Vec<u64> = {
            let view = slice.get_mapped_range().map_err(|e| Error::Gpu(format!("profile readback: {e}")))?;
            bytemuck::cast_slice(&view).to_vec()
        };
        self.read.unmap();
        let period_ms = f64::from(self.ctx.queue.get_timestamp_period()) * 1e-6;
        let mut out: Vec<KernelTime> = Vec::new();
        for (i, kernel) in marks.iter().enumerate() {
            let Some(kernel) = kernel else { continue };
            let dt = ticks[i].saturating_sub(ticks[i - 1]) as f64 * period_ms;
            match out.iter_mut().find(|k| &k.kernel == kernel) {
                Some(k) => {
                    k.dispatches += 1;
                    k.ms += dt;
                }
                None => out.push(KernelTime { kernel: kernel.clone(), dispatches: 1, ms: dt }),
            }
        }
        out.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(out)
    }
}
