//! How every host module dispatches a kernel (`Plan`, `MatMul`, the training kit's
//! `Program`, the cell driver `gpu::generic`): parameter blocks laid out at the context's stride and
//! uploaded once ([`ParamBlocks`]), a bind group in the kernel family's layout
//! ([`bind_group`]), and a compute pass that sets the pipeline and bind group and dispatches
//! ([`Recorder`]).
//!
//! Every family's layout has its parameter block at binding 0 (a uniform buffer with a dynamic
//! offset, one block per dispatch) and its storage buffers at bindings 1.. (see
//! `kernels::Family::storage_bindings`).

use super::context::{Context, TrackedBuffer};
use super::kernels::Kernel;
use super::profile::KernelProfile;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

/// Parameter blocks, one per dispatch, each at a multiple of the context's stride (the
/// largest block rounded up to the device's uniform offset alignment).
pub(crate) struct ParamBlocks {
    bytes: Vec<u8>,
    stride: usize,
}

impl ParamBlocks {
    pub(crate) fn new(ctx: &Context) -> Self {
        ParamBlocks { bytes: Vec::new(), stride: ctx.param_stride as usize }
    }

    /// Appends a block; returns its offset, the dispatch's dynamic offset.
    pub(crate) fn push<T: bytemuck::Pod>(&mut self, v: &T) -> u32 {
        self.push_bytes(bytemuck::bytes_of(v))
    }

    /// Appends a block given as bytes (at most one stride); returns its offset.
    pub(crate) fn push_bytes(&mut self, block: &[u8]) -> u32 {
        debug_assert!(block.len() <= self.stride, "a parameter block of {} bytes exceeds the stride {}", block.len(), self.stride);
        let off = self.bytes.len();
        self.bytes.extend_from_slice(block);
        self.bytes.resize(off + self.stride, 0);
        off as u32
    }

    /// Uploads the blocks into a new uniform buffer (one block of zeros when none was pushed),
    /// inside an error scope: a write the device refuses is a typed error, not wgpu's panic.
    pub(crate) fn upload(mut self, ctx: &Context, label: &str) -> Result<TrackedBuffer> {
        if self.bytes.is_empty() {
            self.bytes.resize(self.stride, 0);
        }
        let buf = ctx.buffer(label, self.bytes.len() as u64, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST)?;
        super::readback::write(ctx, &buf, &self.bytes)?;
        Ok(buf)
    }
}

/// The bind group of a dispatch of `kernel`: `params` at binding 0 (one block wide; the block
/// is chosen by the dynamic offset at dispatch), then `bufs` at bindings 1.. in the order of
/// the kernel family's layout. Call inside an error scope.
///
/// wgpu cannot be asked for a buffer's device, and wgpu-core asserts (panics) when a buffer of
/// another device carries an id that this device's storage holds at another epoch: that is the
/// caller's error, returned here as [`Error::Gpu`], not a panic.
pub(crate) fn bind_group(ctx: &Context, kernel: Kernel, params: &wgpu::Buffer, bufs: &[wgpu::BufferSlice<'_>]) -> Result<wgpu::BindGroup> {
    let fam = kernel.family();
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: params, offset: 0, size: std::num::NonZeroU64::new(fam.param_size()) }),
    }];
    for (i, s) in bufs.iter().enumerate() {
        // Storage bindings are whole 4-byte words: a slice's last partial word is left out
        // (the checks made sure its role fits in the words before it).
        let size = std::num::NonZeroU64::new((s.size() & !3).max(4));
        let binding = wgpu::BufferBinding { buffer: s.buffer(), offset: s.offset(), size };
        entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: wgpu::BindingResource::Buffer(binding) });
    }
    let desc = wgpu::BindGroupDescriptor { label: Some(kernel.entry()), layout: ctx.layouts.bind_group_layout(fam), entries: &entries };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.device.create_bind_group(&desc))).map_err(|p| {
        let msg = p.downcast_ref::<String>().map(String::as_str).or_else(|| p.downcast_ref::<&str>().copied()).unwrap_or("a panic");
        Error::Gpu(format!("wgpu panicked binding the buffers of {} (a buffer of another device?): {msg}", kernel.entry()))
    })
}

/// One compute pass of dispatches, ended when dropped. The pipeline is set when it changes,
/// the bind group when it, its offset or the pipeline changes; with a profile, a timestamp
/// opens the pass and follows every dispatch.
pub(crate) struct Recorder<'e> {
    pass: wgpu::ComputePass<'e>,
    pipeline: Option<wgpu::ComputePipeline>,
    bound: Option<(wgpu::BindGroup, u32)>,
    profile: Option<Arc<KernelProfile>>,
}

impl<'e> Recorder<'e> {
    /// Begins a compute pass labelled `label` in `encoder`.
    pub(crate) fn begin(encoder: &'e mut wgpu::CommandEncoder, label: &str, profile: Option<Arc<KernelProfile>>) -> Self {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(label), timestamp_writes: None });
        if let Some(p) = &profile {
            p.mark(&mut pass, None);
        }
        Recorder { pass, pipeline: None, bound: None, profile }
    }

    /// The same pass without the borrow of its encoder (`wgpu::ComputePass::forget_lifetime`):
    /// the encoder must not be used until this is dropped.
    pub(crate) fn forget_lifetime(self) -> Recorder<'static> {
        Recorder { pass: self.pass.forget_lifetime(), pipeline: self.pipeline, bound: self.bound, profile: self.profile }
    }

    /// Records one dispatch of `kernel` (`pipeline` is its pipeline; `param_offset` its
    /// parameter block in the buffer `bind_group` holds at binding 0).
    pub(crate) fn dispatch(&mut self, kernel: Kernel, pipeline: &wgpu::ComputePipeline, bind_group: &wgpu::BindGroup, param_offset: u32, groups: [u32; 3]) {
        let mut rebind = false;
        if self.pipeline.as_ref() != Some(pipeline) {
            self.pass.set_pipeline(pipeline);
            self.pipeline = Some(pipeline.clone());
            rebind = true;
        }
        if rebind || self.bound.as_ref().is_none_or(|(bg, off)| bg != bind_group || *off != param_offset) {
            self.pass.set_bind_group(0, bind_group, &[param_offset]);
            self.bound = Some((bind_group.clone(), param_offset));
        }
        self.pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        if let Some(p) = &self.profile {
            p.mark(&mut self.pass, Some(kernel.label()));
        }
    }
}

/// [`Error::BufferAliasing`] when two roles (`(role, slice, written)`) share bytes and at
/// least one of them is written, or, on a context without
/// [`Context::with_shared_buffers`], share a buffer at all and one of them is written: a
/// dispatch binding one buffer as read-only and read-write storage is a usage conflict that
/// wgpu reports only when the caller finishes the encoder. Read-only roles may share
/// anything.
pub(crate) fn check_aliasing(ctx: &Context, roles: &[(&str, Option<wgpu::BufferSlice<'_>>, bool)]) -> Result<()> {
    check_roles(roles, ctx.shares_buffers())
}

/// [`Error::BufferAliasing`] only when two roles share bytes and one of them is written: for
/// roles that no one dispatch binds together (one buffer may then hold read and written
/// roles on any context).
pub(crate) fn check_overlap(roles: &[(&str, Option<wgpu::BufferSlice<'_>>, bool)]) -> Result<()> {
    check_roles(roles, true)
}

/// The two checks above: bytes a written role shares, and unless `shared` a buffer it shares.
fn check_roles(roles: &[(&str, Option<wgpu::BufferSlice<'_>>, bool)], shared: bool) -> Result<()> {
    for (i, &(a, sa, wa)) in roles.iter().enumerate() {
        for &(b, sb, wb) in &roles[i + 1..] {
            let (Some(x), Some(y)) = (sa, sb) else { continue };
            if !(wa || wb) || x.buffer() != y.buffer() {
                continue;
            }
            let overlap = x.offset() < y.offset() + y.size() && y.offset() < x.offset() + x.size();
            let role = |r: &str, w: bool, s: wgpu::BufferSlice<'_>| format!("{r} ({}, bytes {}..{})", if w { "written" } else { "read" }, s.offset(), s.offset() + s.size());
            if overlap {
                return Err(Error::BufferAliasing(format!("one buffer's bytes are bound as {} and as {}", role(a, wa, x), role(b, wb, y))));
            }
            if !shared {
                return Err(Error::BufferAliasing(format!(
                    "one buffer is bound as {} and as {}: slices of one buffer read and written in one dispatch need a context made with Context::with_shared_buffers",
                    role(a, wa, x),
                    role(b, wb, y)
                )));
            }
        }
    }
    Ok(())
}

/// Checks a caller's slice bound as `what` to hold `elems` f32: see [`check_stored`].
pub(crate) fn check_buffer(ctx: &Context, what: &str, s: wgpu::BufferSlice<'_>, elems: usize) -> Result<()> {
    check_stored(ctx, what, s, elems, crate::precision::Precision::F32)
}

/// Checks a caller's slice bound as `what` to hold `elems` elements stored in `precision`:
/// large enough (the elements rounded up to 4 bytes, what a clear or copy of them touches),
/// starting at a multiple of the device's storage offset alignment, its buffer with
/// `STORAGE` usage, within one storage binding of the device.
pub(crate) fn check_stored(ctx: &Context, what: &str, s: wgpu::BufferSlice<'_>, elems: usize, precision: crate::precision::Precision) -> Result<()> {
    let bytes = precision.bytes();
    if s.size() < (elems * bytes).next_multiple_of(4) as u64 {
        return Err(Error::ShapeMismatch {
            what: format!("{what} buffer ({precision} elements)"),
            expected: vec![elems],
            got: vec![(s.size() / bytes as u64) as usize],
        });
    }
    let usage = s.buffer().usage();
    if !usage.contains(wgpu::BufferUsages::STORAGE) {
        return Err(Error::Gpu(format!("{what} buffer lacks BufferUsages::STORAGE (has {usage:?})")));
    }
    let align = u64::from(ctx.limits().min_storage_buffer_offset_alignment.max(1));
    if s.offset() % align != 0 {
        return Err(Error::Gpu(format!("{what} slice starts at byte {}, not a multiple of the device's min_storage_buffer_offset_alignment ({align})", s.offset())));
    }
    if s.size() > ctx.binding_limit() {
        return Err(Error::Limit(format!("{what} slice of {} bytes exceeds the device's storage binding size", s.size())));
    }
    Ok(())
}

/// The bind groups of a recording of an engine plan's dispatches (`(kernel, buffer roles)`,
/// roles resolved to buffers by `resolve`): one per family and role list, and for each
/// dispatch the index of its group. Call inside an error scope.
pub(crate) fn bind_groups<'r, 'b, R: Copy + Eq + Hash + 'r>(
    ctx: &Context,
    params: &wgpu::Buffer,
    dispatches: impl Iterator<Item = (Kernel, &'r [R])>,
    resolve: &dyn Fn(R) -> wgpu::BufferSlice<'b>,
) -> Result<(Vec<wgpu::BindGroup>, Vec<usize>)> {
    let mut index: HashMap<(super::kernels::Family, &'r [R]), usize> = HashMap::new();
    let (mut groups, mut of_op) = (Vec::new(), Vec::new());
    for (kernel, roles) in dispatches {
        let i = match index.get(&(kernel.family(), roles)) {
            Some(&i) => i,
            None => {
                let bufs: Vec<wgpu::BufferSlice<'b>> = roles.iter().map(|&r| resolve(r)).collect();
                groups.push(bind_group(ctx, kernel, params, &bufs)?);
                index.insert((kernel.family(), roles), groups.len() - 1);
                groups.len() - 1
            }
        };
        of_op.push(i);
    }
    Ok((groups, of_op))
}
