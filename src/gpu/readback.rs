//! All uploads, polling, mapping and readback in one place (wgpu's API moves between versions).

use super::context::{Context, ErrorScope, TrackedBuffer};
use crate::error::{Error, Result};
use crate::precision::Precision;
use std::sync::{Arc, Mutex};

/// A storage buffer holding `data` (at least 16 bytes), usable as a copy source and target.
pub fn upload(ctx: &Context, label: &str, data: &[f32]) -> Result<TrackedBuffer> {
    upload_bytes(ctx, label, bytemuck::cast_slice(data))
}

/// A storage buffer holding `bytes` (f32 or u32 data), written inside an error scope so that
/// a write the device refuses (a lost device's invalid buffer) is a typed error, not a panic.
pub(crate) fn upload_bytes(ctx: &Context, label: &str, bytes: &[u8]) -> Result<TrackedBuffer> {
    let b = ctx.buffer(label, bytes.len() as u64, storage_usage())?;
    write(ctx, &b, bytes)?;
    Ok(b)
}

/// `queue.write_buffer(buf, 0, bytes)` inside an error scope, on a device checked to be alive.
pub(crate) fn write(ctx: &Context, buf: &wgpu::Buffer, bytes: &[u8]) -> Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    ctx.check_alive()?;
    let scope = ErrorScope::push(&ctx.device);
    ctx.queue.write_buffer(buf, 0, bytes);
    scope.pop_on(ctx)
}

/// A storage buffer holding `data` stored in `precision` (at least 16 bytes);
/// [`crate::Error::NonFinite`] if a value overflows it (f16: beyond 65,504).
pub fn upload_stored(ctx: &Context, label: &str, data: &[f32], precision: Precision) -> Result<TrackedBuffer> {
    precision.check_range(label, data)?;
    let mut bytes = precision.encode(data);
    bytes.resize(bytes.len().max(16).next_multiple_of(4), 0);
    upload_bytes(ctx, label, &bytes)
}

/// A storage buffer of `elems` elements stored in `precision` (zeroed by wgpu), usable as a
/// copy source and target: the caller's buffers for an f16 [`super::Plan`].
pub fn storage_at(ctx: &Context, label: &str, elems: usize, precision: Precision) -> Result<TrackedBuffer> {
    ctx.buffer(label, (elems * precision.bytes()) as u64, storage_usage())
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
    staging: Vec<(TrackedBuffer, usize, Precision)>,
}

impl Readback {
    /// An empty set of copies.
    pub fn new() -> Self {
        Readback { staging: Vec::new() }
    }

    /// Records a copy of the first `elems` f32 of `src`; returns its slot.
    /// `src` must hold `elems` f32 and allow `COPY_SRC` (typed errors, not an encoder that
    /// fails to finish).
    pub fn copy(&mut self, ctx: &Context, encoder: &mut wgpu::CommandEncoder, src: &wgpu::Buffer, elems: usize) -> Result<usize> {
        self.copy_stored(ctx, encoder, src, elems, Precision::F32)
    }

    /// [`Readback::copy`] of `elems` values stored in `precision`, widened to f32 when read.
    /// `src` must hold them rounded up to 4 bytes.
    pub fn copy_stored(&mut self, ctx: &Context, encoder: &mut wgpu::CommandEncoder, src: &wgpu::Buffer, elems: usize, precision: Precision) -> Result<usize> {
        let bytes = (elems * precision.bytes()).next_multiple_of(4) as u64;
        if src.size() < bytes {
            let what = format!("readback source ({precision} elements)");
            return Err(Error::ShapeMismatch { what, expected: vec![elems], got: vec![(src.size() / precision.bytes() as u64) as usize] });
        }
        if !src.usage().contains(wgpu::BufferUsages::COPY_SRC) {
            return Err(Error::Gpu(format!("readback source lacks BufferUsages::COPY_SRC (has {:?})", src.usage())));
        }
        let st = ctx.buffer("readback", bytes, wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST)?;
        if bytes > 0 {
            encoder.copy_buffer_to_buffer(src, 0, &st, 0, Some(bytes));
        }
        self.staging.push((st, elems, precision));
        Ok(self.staging.len() - 1)
    }

    /// Submits `encoder` (the one submit of a convenience call), waits, and returns every
    /// copied buffer's contents in slot order. Validation and out-of-memory errors raised by
    /// the submitted work come back as [`Error::Gpu`]; a wait longer than the context's wait
    /// timeout as [`Error::Timeout`]; a lost device as [`Error::DeviceLost`]. On any error
    /// nothing is returned (the staging buffers are dropped, mapped or not).
    ///
    /// A browser cannot block: on `wasm32` this is [`Error::Unsupported`]; use
    /// [`Readback::submit`] and await the [`PendingRead`] instead.
    pub fn submit_and_read(self, ctx: &Context, encoder: wgpu::CommandEncoder) -> Result<Vec<Vec<f32>>> {
        if cfg!(target_arch = "wasm32") {
            return Err(Error::Unsupported(BLOCKING_IN_BROWSER.into()));
        }
        ctx.check_alive()?;
        let deadline = ctx.deadline();
        let scope = ErrorScope::push(&ctx.device);
        let pending = self.submit(ctx, encoder)?;
        // Every mapping callback, or the deadline: never an unbounded wait.
        let waited = ctx.poll_until(deadline, "reading back results", |_| pending.is_mapped());
        let popped = scope.pop_on(ctx);
        waited?;
        popped?;
        pending.finish()
    }

    /// Submits `encoder` and asks for every copy to be mapped, without waiting: the returned
    /// [`PendingRead`] is a future of what [`Readback::submit_and_read`] returns. In a browser
    /// the page's event loop completes it; on native targets something must poll the device
    /// (`device.poll`, [`Context::wait`]) while it is awaited.
    ///
    /// On native targets an encoder or submission the device refuses is [`Error::Gpu`]. In a
    /// browser (`wasm32`) such errors are not captured here (a browser resolves error scopes
    /// only asynchronously): they reach the device's uncaptured-error handler
    /// (`Device::on_uncaptured_error`), which a browser application should set.
    pub fn submit(self, ctx: &Context, encoder: wgpu::CommandEncoder) -> Result<PendingRead<'_>> {
        ctx.check_alive()?;
        // Native: an encoder or submit the device refuses is an Error::Gpu here, not a panic
        // in wgpu's default handler (wasm32 pushes no scope, see ErrorScope).
        let scope = ErrorScope::push(&ctx.device);
        ctx.queue.submit([encoder.finish()]);
        scope.pop_on(ctx)?;
        let want = self.staging.iter().filter(|(_, elems, _)| *elems > 0).count();
        let maps = Arc::new(Mutex::new(Maps { mapped: Vec::with_capacity(want), want, waker: None }));
        for (i, (b, elems, _)) in self.staging.iter().enumerate() {
            if *elems == 0 {
                continue;
            }
            let maps = maps.clone();
            b.slice(..).map_async(wgpu::MapMode::Read, move |r| {
                let waker = {
                    let mut m = maps.lock().unwrap_or_else(|e| e.into_inner());
                    m.mapped.push((i, r));
                    if m.mapped.len() == m.want { m.waker.take() } else { None }
                };
                // Woken outside the lock: an executor may poll from inside `wake`.
                if let Some(w) = waker {
                    w.wake();
                }
            });
        }
        Ok(PendingRead { ctx, staging: self.staging, maps })
    }
}

/// What [`Readback::submit_and_read`] says on `wasm32`.
const BLOCKING_IN_BROWSER: &str = "a blocking wait for the device in the browser (wasm32): record with the engine API \
     (Plan) and await Readback::submit instead";

/// The mapping callbacks' results, as they arrive.
struct Maps {
    mapped: Vec<(usize, std::result::Result<(), wgpu::BufferAsyncError>)>,
    want: usize,
    waker: Option<std::task::Waker>,
}

/// Copies submitted by [`Readback::submit`], waiting to be mapped: a future of every copied
/// buffer's contents in slot order (f32, widened from their stored precision), or of the
/// error a mapping met ([`Error::DeviceLost`] on a lost device).
///
/// On the GL backend, the poll that completes it takes [`Context::exclusive`] (the GL context
/// is shared between threads); dropped unfinished (a cancelled future), its copies are
/// destroyed under the guard too (every [`super::TrackedBuffer`] is).
pub struct PendingRead<'a> {
    ctx: &'a Context,
    staging: Vec<(TrackedBuffer, usize, Precision)>,
    maps: Arc<Mutex<Maps>>,
}

impl PendingRead<'_> {
    /// Whether every copy is mapped (or failed to map): awaiting it returns at once.
    pub fn is_mapped(&self) -> bool {
        let m = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        m.mapped.len() == m.want
    }

    /// The contents once every copy is mapped.
    fn finish(self) -> Result<Vec<Vec<f32>>> {
        let mapped = std::mem::take(&mut self.maps.lock().unwrap_or_else(|e| e.into_inner()).mapped);
        for (i, r) in mapped {
            if let Err(e) = r {
                self.ctx.check_alive()?;
                return Err(Error::Gpu(format!("mapping readback buffer {i}: {e}")));
            }
        }
        let mut out = Vec::with_capacity(self.staging.len());
        for (b, elems, precision) in &self.staging {
            if *elems == 0 {
                out.push(Vec::new());
                continue;
            }
            let view = b.slice(..).get_mapped_range().map_err(|e| Error::Gpu(format!("get_mapped_range: {e}")))?;
            let v = precision.decode(&view[..elems * precision.bytes()]);
            drop(view);
            b.unmap();
            out.push(v);
        }
        Ok(out)
    }
}

impl std::future::Future for PendingRead<'_> {
    type Output = Result<Vec<Vec<f32>>>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        {
            let mut m = this.maps.lock().unwrap_or_else(|e| e.into_inner());
            if m.mapped.len() < m.want {
                m.waker = Some(cx.waker().clone());
                return std::task::Poll::Pending;
            }
        }
        let done = PendingRead { ctx: this.ctx, staging: std::mem::take(&mut this.staging), maps: this.maps.clone() };
        // GL: reading and unmapping the copies, and destroying them, take the shared GL
        // context; other threads hold the guard around their GL work (Context::exclusive).
        let _serial = this.ctx.exclusive();
        std::task::Poll::Ready(done.finish())
    }
}

impl Default for Readback {
    fn default() -> Self {
        Self::new()
    }
}
