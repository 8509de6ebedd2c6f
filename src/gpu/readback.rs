//! All uploads, polling, mapping and readback in one place (wgpu's API moves between versions).

use super::context::{Context, ErrorScope, TrackedBuffer};
use crate::error::{Error, Result};

/// A storage buffer holding `data` (at least 16 bytes), usable as a copy source and target.
pub fn upload(ctx: &Context, label: &str, data: &[f32]) -> Result<TrackedBuffer> {
    let b = ctx.buffer(label, (data.len() * 4) as u64, storage_usage())?;
    if !data.is_empty() {
        ctx.queue.write_buffer(&b, 0, bytemuck::cast_slice(data));
    }
    Ok(b)
}

/// An uninitialised storage buffer of `elems` f32.
pub fn storage(ctx: &Context, label: &str, elems: usize) -> Result<TrackedBuffer> {
    ctx.buffer(label, (elems * 4) as u64, storage_usage())
}

/// The usage of buffers the convenience API makes: storage, copy source and target.
pub fn storage_usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}

/// Collects copies of device buffers into staging buffers in an encoder, then reads them all
/// after one submit.
pub struct Readback {
    staging: Vec<(TrackedBuffer, usize)>,
}

impl Readback {
    pub fn new() -> Self {
        Readback { staging: Vec::new() }
    }

    /// Records a copy of the first `elems` f32 of `src`; returns its slot.
    pub fn copy(&mut self, ctx: &Context, encoder: &mut wgpu::CommandEncoder, src: &wgpu::Buffer, elems: usize) -> Result<usize> {
        let bytes = (elems * 4) as u64;
        let st = ctx.buffer("readback", bytes, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST)?;
        if bytes > 0 {
            encoder.copy_buffer_to_buffer(src, 0, &st, 0, Some(bytes));
        }
        self.staging.push((st, elems));
        Ok(self.staging.len() - 1)
    }

    /// Submits `encoder` (the one submit of a convenience call), waits, and returns every
    /// copied buffer's contents in slot order. Validation and out-of-memory errors raised by
    /// the submitted work come back as [`Error::Gpu`].
    pub fn submit_and_read(self, ctx: &Context, encoder: wgpu::CommandEncoder) -> Result<Vec<Vec<f32>>> {
        let scope = ErrorScope::push(&ctx.device);
        ctx.queue.submit([encoder.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, (b, elems)) in self.staging.iter().enumerate() {
            if *elems == 0 {
                continue;
            }
            let tx = tx.clone();
            b.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send((i, r));
            });
        }
        drop(tx);
        ctx.wait()?;
        scope.pop()?;
        for (i, r) in rx.iter() {
            r.map_err(|e| Error::Gpu(format!("mapping readback buffer {i}: {e}")))?;
        }
        let mut out = Vec::with_capacity(self.staging.len());
        for (b, elems) in &self.staging {
            if *elems == 0 {
                out.push(Vec::new());
                continue;
            }
            let view = b.slice(..).get_mapped_range().map_err(|e| Error::Gpu(format!("get_mapped_range: {e}")))?;
            let v: Vec<f32> = bytemuck::pod_collect_to_vec(&view[..elems * 4]);
            drop(view);
            b.unmap();
            out.push(v);
        }
        Ok(out)
    }
}

impl Default for Readback {
    fn default() -> Self {
        Self::new()
    }
}
