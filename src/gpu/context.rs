//! The device context: creates its own device (default adapter, overridable by backend and
//! adapter name) or wraps a caller's `wgpu::Device` and `Queue`; owns the shader modules,
//! bind-group layouts and the pipeline cache; captures validation and out-of-memory errors
//! through error scopes and returns them as typed errors.

use super::kernels::{Kernel, Layouts, Modules};
use crate::error::{Error, Result};
use crate::precision::Precision;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

thread_local! {
    /// The GL guards ([`Context::exclusive`]) this thread holds, by the address of their mutex.
    static GL_HELD: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`Context::exclusive`]'s guard: the GL context is this thread's until it is dropped. A
/// guard taken by a thread that already held one locks nothing.
pub struct GlGuard<'a> {
    lock: Option<std::sync::MutexGuard<'a, ()>>,
    key: usize,
}

/// Takes a GL guard's mutex, or nothing where this thread holds it already (re-entrant).
fn lock_gl(m: &Mutex<()>) -> GlGuard<'_> {
    let key = m as *const Mutex<()> as usize;
    if GL_HELD.with(|h| h.borrow().contains(&key)) {
        return GlGuard { lock: None, key };
    }
    let lock = m.lock().unwrap_or_else(|e| e.into_inner());
    GL_HELD.with(|h| h.borrow_mut().push(key));
    GlGuard { lock: Some(lock), key }
}

impl Drop for GlGuard<'_> {
    fn drop(&mut self) {
        if self.lock.is_some() {
            // Forgotten first, unlocked after (the field drops when this returns).
            GL_HELD.with(|h| h.borrow_mut().retain(|&k| k != self.key));
        }
    }
}

impl std::fmt::Debug for GlGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlGuard").field("outermost", &self.lock.is_some()).finish()
    }
}

/// Environment variable choosing the backend: `vulkan`, `gl`, `metal`, `dx12` (comma list).
pub const ENV_BACKEND: &str = "WGPU_RNN_BACKEND";
/// Environment variable choosing the adapter by a case-insensitive substring of its name.
pub const ENV_ADAPTER: &str = "WGPU_RNN_ADAPTER";
/// Environment variable: `1` / `0` turns the subgroup kernels on or off for new contexts
/// (see [`Context::subgroup_kernels`]).
pub const ENV_SUBGROUPS: &str = "WGPU_RNN_SUBGROUPS";

/// How to pick the adapter for a context of our own.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// Backends to search; `None` = all (or `WGPU_RNN_BACKEND`).
    pub backends: Option<wgpu::Backends>,
    /// Substring of the adapter's name; `None` = the default adapter (or `WGPU_RNN_ADAPTER`).
    pub adapter_name: Option<String>,
}

impl ContextOptions {
    /// Options from `WGPU_RNN_BACKEND` and `WGPU_RNN_ADAPTER`.
    pub fn from_env() -> Result<Self> {
        let backends = match std::env::var(ENV_BACKEND) {
            Ok(s) if !s.trim().is_empty() => Some(parse_backends(&s)?),
            _ => None,
        };
        let adapter_name = std::env::var(ENV_ADAPTER).ok().filter(|s| !s.trim().is_empty());
        Ok(ContextOptions { backends, adapter_name })
    }
}

/// Parses `vulkan`, `gl`/`gles`/`opengl`, `metal`, `dx12`, comma separated.
pub fn parse_backends(s: &str) -> Result<wgpu::Backends> {
    let mut b = wgpu::Backends::empty();
    for part in s.split(',').map(|p| p.trim().to_ascii_lowercase()) {
        b |= match part.as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "gl" | "gles" | "opengl" => wgpu::Backends::GL,
            "metal" | "mtl" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "" => continue,
            other => return Err(Error::NoAdapter(format!("unknown backend {other:?} in {ENV_BACKEND}"))),
        };
    }
    Ok(b)
}

/// Bytes of GPU buffers the library holds right now (workspaces, plans, uploads).
#[derive(Debug, Default)]
pub struct MemoryCounter(AtomicU64);

impl MemoryCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A buffer the library allocated (the wgpu buffer, through `Deref`); its size is counted
/// while it lives. On GL it is destroyed under its context's guard ([`Context::exclusive`])
/// wherever it is dropped: destroying a buffer takes the shared GL context.
#[derive(Debug)]
pub struct TrackedBuffer {
    buffer: std::mem::ManuallyDrop<wgpu::Buffer>,
    counter: Arc<MemoryCounter>,
    /// The context's GL guard; `None` on other backends.
    gl: Option<Arc<Mutex<()>>>,
}

impl std::ops::Deref for TrackedBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for TrackedBuffer {
    fn drop(&mut self) {
        self.counter.0.fetch_sub(self.buffer.size(), Ordering::Relaxed);
        let _serial = self.gl.as_deref().map(lock_gl);
        // SAFETY: `buffer` is dropped here only, once, and never used again.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.buffer) }
    }
}

/// A wgpu device with everything the kernels need, built once.
pub struct Context {
    /// The device every pipeline and buffer of this context lives on.
    pub device: wgpu::Device,
    /// The device's queue; the convenience API submits here.
    pub queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    pub(crate) layouts: Layouts,
    modules: Modules,
    pipelines: Mutex<HashMap<(Kernel, Precision), wgpu::ComputePipeline>>,
    memory: Arc<MemoryCounter>,
    /// Serialises the library's work on the GL backend (see [`Context::exclusive`]).
    gl_serial: Arc<Mutex<()>>,
    /// Stride of the per-dispatch parameter blocks (dynamic uniform offsets).
    pub(crate) param_stride: u32,
    /// The longest a wait on the device may take, in nanoseconds (see [`Context::set_wait_timeout`]).
    wait_timeout_ns: AtomicU64,
    /// Set (once) by the device-lost callback: why the device is gone.
    lost: Arc<OnceLock<String>>,
    /// The largest storage binding (bytes) the library plans for (see [`Context::set_binding_limit`]).
    binding_limit: AtomicU64,
    /// Whether plans and products built now take the subgroup kernels (see
    /// [`Context::subgroup_kernels`]).
    subgroup_kernels: AtomicBool,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("adapter", &self.info.name).field("backend", &self.info.backend).finish()
    }
}

impl Context {
    /// How long a wait on the device (a readback, [`Context::wait`]) may take by default
    /// before it gives up with [`Error::Timeout`]; change it with [`Context::set_wait_timeout`].
    pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(60);

    /// A context on the default adapter, or the one `WGPU_RNN_BACKEND` / `WGPU_RNN_ADAPTER` name.
    pub fn new() -> Result<Arc<Self>> {
        Self::with_options(&ContextOptions::from_env()?)
    }

    /// A context on the adapter the options choose.
    ///
    /// It waits for the adapter and the device, which a browser cannot: on `wasm32` this is
    /// [`Error::Unsupported`]; request them there with `await` and wrap them with
    /// [`Context::from_device`].
    pub fn with_options(opts: &ContextOptions) -> Result<Arc<Self>> {
        if cfg!(target_arch = "wasm32") {
            return Err(Error::Unsupported(
                "Context::new in the browser (wasm32): await the adapter and device there and use Context::from_device".into(),
            ));
        }
        let backends = opts.backends.unwrap_or(wgpu::Backends::all());
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapter = match &opts.adapter_name {
            Some(name) => {
                let want = name.to_ascii_lowercase();
                let all = pollster::block_on(instance.enumerate_adapters(backends));
                let names: Vec<String> = all.iter().map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().backend)).collect();
                all.into_iter()
                    .find(|a| a.get_info().name.to_ascii_lowercase().contains(&want))
                    .ok_or_else(|| Error::NoAdapter(format!("no adapter named like {name:?}; found {names:?}")))?
            }
            None => pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            }))
            .map_err(|e| Error::NoAdapter(format!("{e} (backends {backends:?})")))?,
        };
        let info = adapter.get_info();
        // The adapter's real limits: the defaults cap workgroups at 256 invocations.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgpu-rnn"),
            // Timestamps inside passes, where the adapter has them, for `gpu::profile`; f16
            // storage (`Precision::F16`) and subgroups (`Context::subgroup_kernels`) where the
            // adapter has them.
            required_features: adapter.features()
                & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES | wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::NoAdapter(format!("request_device on {}: {e}", info.name)))?;
        Self::build(device, queue, info, false)
    }

    /// Wraps a caller's device and queue. `info` describes its adapter when known (for
    /// reports); the device's own limits are used. The context sets the device's lost
    /// callback (replacing the caller's) so that it can answer [`Error::DeviceLost`].
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, info: Option<wgpu::AdapterInfo>) -> Result<Arc<Self>> {
        Self::build(device, queue, Self::caller_info(info), false)
    }

    /// The caller's adapter info, or a placeholder naming the caller's device.
    fn caller_info(info: Option<wgpu::AdapterInfo>) -> wgpu::AdapterInfo {
        info.unwrap_or_else(|| wgpu::AdapterInfo {
            name: "caller's device".into(),
            vendor: 0,
            device: 0,
            device_type: wgpu::DeviceType::Other,
            device_pci_bus_id: String::new(),
            driver: String::new(),
            driver_info: String::new(),
            backend: wgpu::Backend::Noop,
            subgroup_min_size: 0,
            subgroup_max_size: 0,
            transient_saves_memory: None,
            limit_bucket: None,
        })
    }

    /// As [`Context::from_device`], for a device whose tensors share buffers: a pooling
    /// allocator's (burn's, cubecl's), which places many tensors in one buffer. Every storage
    /// binding of every kernel is then read-write (the pool's own kernels do the same), so
    /// slices of one buffer may be bound as a read role and a written role in one dispatch,
    /// which wgpu refuses for a read-only binding beside a read-write one. They still may
    /// not overlap (`Error::BufferAliasing`). A read-only binding can be faster on some
    /// drivers: use [`Context::from_device`] where each tensor has a buffer of its own.
    pub fn with_shared_buffers(device: wgpu::Device, queue: wgpu::Queue, info: Option<wgpu::AdapterInfo>) -> Result<Arc<Self>> {
        Self::build(device, queue, Self::caller_info(info), true)
    }

    /// Whether slices of one buffer may be read and written in one dispatch
    /// ([`Context::with_shared_buffers`]).
    pub fn shares_buffers(&self) -> bool {
        self.modules.shared()
    }

    /// Wraps the device. The context installs its own device-lost callback (replacing one a
    /// caller set on a device passed to [`Context::from_device`]) so that it can refuse work
    /// on a lost device with [`Error::DeviceLost`].
    fn build(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo, shared: bool) -> Result<Arc<Self>> {
        let limits = device.limits();
        if limits.max_storage_buffers_per_shader_stage < super::kernels::MAX_STORAGE_BINDINGS {
            return Err(Error::Limit(format!(
                "the kernels bind up to {} storage buffers per stage; this device allows {}",
                super::kernels::MAX_STORAGE_BINDINGS,
                limits.max_storage_buffers_per_shader_stage
            )));
        }
        let lost = Arc::new(OnceLock::new());
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            let _ = flag.set(if message.is_empty() { format!("{reason:?}") } else { format!("{reason:?}: {message}") });
        });
        let scope = ErrorScope::push(&device);
        let layouts = Layouts::new(&device, shared);
        let subgroups_run = Self::subgroup_kernels_run(&device, &info);
        let modules = Modules::new(&device, shared, subgroups_run);
        scope.pop()?;
        let align = limits.min_uniform_buffer_offset_alignment.max(1);
        let param_stride = super::kernels::MAX_PARAM_BYTES.div_ceil(align) * align;
        let subgroup_kernels = subgroups_run
            && match std::env::var(ENV_SUBGROUPS) {
                Ok(v) => v.trim() != "0",
                Err(_) => info.device_type == wgpu::DeviceType::Cpu,
            };
        Ok(Arc::new(Context {
            device,
            queue,
            info,
            layouts,
            modules,
            pipelines: Mutex::new(HashMap::new()),
            memory: Arc::new(MemoryCounter::default()),
            gl_serial: Arc::new(Mutex::new(())),
            param_stride,
            wait_timeout_ns: AtomicU64::new(Self::DEFAULT_WAIT_TIMEOUT.as_nanos() as u64),
            lost,
            binding_limit: AtomicU64::new(limits.max_storage_buffer_binding_size),
            limits,
            subgroup_kernels: AtomicBool::new(subgroup_kernels),
        }))
    }

    /// Whether the device can run the subgroup kernels: it has `SUBGROUP`, and its
    /// adapter's subgroups are known to hold at least 8 invocations (the kernels broadcast
    /// from lanes 0..7). A caller's device given without its adapter's info never can.
    /// (Not in the browser: its WGSL compiler wants `enable subgroups;`, which naga does not
    /// parse yet.)
    fn subgroup_kernels_run(device: &wgpu::Device, info: &wgpu::AdapterInfo) -> bool {
        !cfg!(target_arch = "wasm32") && device.features().contains(wgpu::Features::SUBGROUP) && info.subgroup_min_size >= 8
    }

    /// Whether the plans and products built now run the subgroup twins of the GEMMs
    /// (`shaders/gemm_subgroup.wgsl`) and of the fused stage kernel
    /// (`shaders/cells/stage_subgroup.wgsl`): the operand every invocation of a workgroup reads
    /// alike (A, the product's input rows) loaded once a lane and shared through subgroup
    /// broadcasts, 16 rows a block; the same bits. By default on CPU adapters whose subgroups
    /// hold at least 8 invocations (lavapipe), where each storage load is a loop over the
    /// vector's lanes: there a 1024 x 1024 x 256 product went from 11 to 28 GFLOP/s, C1 LSTM
    /// training took 0.49x the time and forward 0.52x, the IMDB BiLSTM's training 0.54x
    /// (`benches/results/subgroup-gemm-lavapipe-2026-12-07.txt`). Off on other adapters,
    /// where they have not been measured. `WGPU_RNN_SUBGROUPS=1` / `=0` overrides the default
    /// (on only where the device can run them).
    pub fn subgroup_kernels(&self) -> bool {
        self.subgroup_kernels.load(Ordering::Relaxed)
    }

    /// Turns the subgroup kernels on or off for plans and products built after this
    /// (those built before keep their kernels); on only where the device can run them.
    /// Returns whether they are on now.
    pub fn set_subgroup_kernels(&self, on: bool) -> bool {
        let on = on && Self::subgroup_kernels_run(&self.device, &self.info);
        self.subgroup_kernels.store(on, Ordering::Relaxed);
        on
    }

    /// The adapter in use.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The device's limits.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The largest storage-buffer binding, in bytes, the library plans for: the device's
    /// `max_storage_buffer_binding_size` unless lowered with [`Context::set_binding_limit`].
    pub fn binding_limit(&self) -> u64 {
        self.binding_limit.load(Ordering::Relaxed)
    }

    /// Lowers the largest storage-buffer binding the library plans for to `bytes` (never above
    /// the device's `max_storage_buffer_binding_size`: a larger value sets the device's limit)
    /// and returns the value now in effect. Buffers and plans are checked against it when they
    /// are made and recorded ([`Error::Limit`] beyond it), and the convenience API
    /// ([`crate::gpu::GpuRnn`]) splits a problem whose plan would exceed it. For testing the
    /// splitting on small problems, or for leaving headroom on a device; buffers made before
    /// keep their size, and recording a plan whose buffers exceed a lowered limit is refused.
    pub fn set_binding_limit(&self, bytes: u64) -> u64 {
        let v = bytes.min(self.limits.max_storage_buffer_binding_size);
        self.binding_limit.store(v, Ordering::Relaxed);
        v
    }

    /// A one-line description: name, backend, device type (and "CPU emulation" for lavapipe).
    pub fn describe(&self) -> String {
        let i = &self.info;
        let emu = if i.device_type == wgpu::DeviceType::Cpu { ", CPU emulation" } else { "" };
        format!("{} ({:?}, {:?}{emu})", i.name, i.backend, i.device_type)
    }

    /// Bytes of GPU buffers the library holds now.
    pub fn live_buffer_bytes(&self) -> u64 {
        self.memory.get()
    }

    /// Number of pipelines built so far (each built once per distinct kernel variant).
    pub fn pipeline_count(&self) -> usize {
        self.pipelines.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// A buffer whose size is checked against the device limits and counted.
    pub(crate) fn buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> Result<TrackedBuffer> {
        self.check_alive()?;
        // Multiples of 16 bytes, so any buffer can also be bound as an array of vec4s.
        let size = size.max(16).next_multiple_of(16);
        if size > self.limits.max_buffer_size {
            return Err(Error::Limit(format!(
                "buffer {label} needs {size} bytes; the device's largest buffer is {}",
                self.limits.max_buffer_size
            )));
        }
        if usage.contains(wgpu::BufferUsages::STORAGE) && size > self.binding_limit() {
            return Err(Error::Limit(format!(
                "storage buffer {label} needs {size} bytes; the device binds at most {} (Context::binding_limit)",
                self.binding_limit()
            )));
        }
        let scope = ErrorScope::push(&self.device);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false });
        scope.pop_on(self)?;
        self.memory.0.fetch_add(size, Ordering::Relaxed);
        let gl = (self.info.backend == wgpu::Backend::Gl).then(|| self.gl_serial.clone());
        Ok(TrackedBuffer { buffer: std::mem::ManuallyDrop::new(buffer), counter: self.memory.clone(), gl })
    }

    /// The pipeline for a kernel variant, built on first use.
    pub(crate) fn pipeline(&self, k: Kernel) -> Result<wgpu::ComputePipeline> {
        self.pipeline_at(k, Precision::F32)
    }

    /// [`Error::MissingFeature`] unless this device runs kernels that store in `precision`
    /// (f16 needs `SHADER_F16`, which [`Context::new`] requests where the adapter has it).
    pub fn check_precision(&self, precision: Precision) -> Result<()> {
        if precision == Precision::F16 && !self.device.features().contains(wgpu::Features::SHADER_F16) {
            return Err(Error::MissingFeature { feature: "SHADER_F16".into(), wanted: "f16 storage".into(), device: self.describe() });
        }
        Ok(())
    }

    /// The pipeline for a kernel variant storing in `precision` (see
    /// [`super::kernels::Family::stores_precision`]), built on first use.
    pub(crate) fn pipeline_at(&self, k: Kernel, precision: Precision) -> Result<wgpu::ComputePipeline> {
        self.lost_error()?;
        self.check_precision(precision)?;
        let precision = if k.family().stores_precision() { precision } else { Precision::F32 };
        let mut cache = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(&(k, precision)) {
            return Ok(p.clone());
        }
        let scope = ErrorScope::push(&self.device);
        let module = self.modules.get(&self.device, k.family(), precision);
        let constants = k.constants();
        let p = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(k.entry()),
            layout: Some(self.layouts.pipeline_layout(k.family())),
            module: &module,
            entry_point: Some(k.entry()),
            compilation_options: wgpu::PipelineCompilationOptions { constants: &constants, ..Default::default() },
            cache: None,
        });
        scope.pop_on(self)?;
        cache.insert((k, precision), p.clone());
        Ok(p)
    }

    /// On the GL backend, a guard that serialises GPU work across threads; `None` elsewhere.
    ///
    /// wgpu's GL backend shares one GL context between threads and panics when a thread waits
    /// more than a second for it (as it can while another thread compiles or waits on a long
    /// dispatch). The convenience API, plan creation, a [`super::PendingRead`]'s completion
    /// and the destruction of every [`TrackedBuffer`] take this guard; engine-API callers that
    /// drive one GL context from several threads should hold it around their work too.
    ///
    /// Re-entrant: a thread that already holds this context's guard gets one that locks
    /// nothing (and releases nothing), so holding it around calls that take it themselves
    /// (`Plan::new`, dropping a plan or a buffer) is safe, never a deadlock.
    pub fn exclusive(&self) -> Option<GlGuard<'_>> {
        (self.info.backend == wgpu::Backend::Gl).then(|| lock_gl(&self.gl_serial))
    }

    /// Waits for all submitted work, at most [`Context::wait_timeout`]: [`Error::Timeout`]
    /// after that, [`Error::DeviceLost`] if the device is lost.
    ///
    /// A browser cannot block: on `wasm32` this is [`Error::Unsupported`] (await a
    /// [`super::PendingRead`] instead).
    pub fn wait(&self) -> Result<()> {
        if cfg!(target_arch = "wasm32") {
            return Err(Error::Unsupported("Context::wait in the browser (wasm32): await Readback::submit instead".into()));
        }
        self.check_alive()?;
        self.poll_until(self.deadline(), "waiting for submitted work", |finished| finished)
    }

    /// Sets how long a wait on the device (a readback, [`Context::wait`], a training-kit run)
    /// may take before it gives up with [`Error::Timeout`] ([`Context::DEFAULT_WAIT_TIMEOUT`] unless
    /// set). The abandoned work may still finish on the device later; nothing is read back.
    pub fn set_wait_timeout(&self, timeout: Duration) {
        self.wait_timeout_ns.store(timeout.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// The longest a wait on the device may take (see [`Context::set_wait_timeout`]).
    pub fn wait_timeout(&self) -> Duration {
        Duration::from_nanos(self.wait_timeout_ns.load(Ordering::Relaxed))
    }

    /// When a wait starting now must give up.
    pub(crate) fn deadline(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.wait_timeout()).unwrap_or(now + Duration::from_secs(365 * 24 * 3600))
    }

    /// Whether the device is known to be lost (destroyed, or lost by the driver).
    pub fn is_lost(&self) -> bool {
        self.lost_error().is_err() || {
            let _ = self.device.poll(wgpu::PollType::Poll);
            self.lost_error().is_err()
        }
    }

    /// [`Error::DeviceLost`] if the device-lost callback has run; does not poll.
    pub(crate) fn lost_error(&self) -> Result<()> {
        match self.lost.get() {
            Some(reason) => Err(Error::DeviceLost(format!("{} ({reason})", self.describe()))),
            None => Ok(()),
        }
    }

    /// [`Error::DeviceLost`] if the device is lost. `Device::destroy` reports the loss (runs
    /// the callback) only from a poll that finds the queue empty, so this polls once without
    /// waiting; while work is still in flight it probes the device instead (objects made on
    /// a destroyed device are invalid, and using one is a validation error, not a panic here).
    pub fn check_alive(&self) -> Result<()> {
        self.lost_error()?;
        let idle = matches!(self.device.poll(wgpu::PollType::Poll), Ok(status) if status.is_queue_empty());
        self.lost_error()?;
        if !idle && !self.probe_valid() {
            let _ = self.lost.set("destroyed while work was in flight".into());
        }
        self.lost_error()
    }

    /// Whether a new 4-byte buffer is valid (a zero-length write to it validates it and does
    /// nothing else); false on a destroyed device. A browser answers only asynchronously (and
    /// its devices poll themselves, so this is not reached there): true on `wasm32`.
    fn probe_valid(&self) -> bool {
        if cfg!(target_arch = "wasm32") {
            return true;
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let probe = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-rnn device probe"),
            size: 4,
            usage: wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&probe, 0, &[]);
        pollster::block_on(scope.pop()).is_none()
    }

    /// Polls until `done(finished)` holds, where `finished` says whether the latest submission
    /// has completed (`done` is asked after every poll; map callbacks run inside the poll), or
    /// until `deadline` passes ([`Error::Timeout`]). Each poll waits for the latest submission
    /// at most until the deadline; GL caps one wait at about 4.3 s, so this loops.
    pub(crate) fn poll_until(&self, deadline: Instant, what: &str, mut done: impl FnMut(bool) -> bool) -> Result<()> {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let finished = match self.device.poll(wgpu::PollType::Wait { submission_index: None, timeout: Some(remaining) }) {
                Ok(status) => status.is_queue_empty() || status.wait_finished(),
                Err(wgpu::PollError::Timeout) => false,
                Err(e) => {
                    self.lost_error()?;
                    return Err(Error::Gpu(format!("{what}: poll: {e}")));
                }
            };
            self.lost_error()?;
            if done(finished) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "{what} on {}: no result within {:?} (Context::set_wait_timeout)",
                    self.describe(),
                    self.wait_timeout()
                )));
            }
            if finished {
                // The queue is idle but callbacks are outstanding: don't spin.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Validation and out-of-memory error scopes around a piece of work.
///
/// Field order matters: a scope dropped without `pop` (an early `?` return) drops its guards
/// in declaration order, and wgpu panics unless scopes are popped in reverse push order.
///
/// On `wasm32` no scope is pushed: a browser resolves a scope only asynchronously, and a
/// scope dropped unread would swallow its error. The device's errors reach its
/// uncaptured-error handler there instead (see [`super::Readback::submit`]).
pub(crate) struct ErrorScope {
    #[cfg(not(target_arch = "wasm32"))]
    validation: wgpu::ErrorScopeGuard,
    #[cfg(not(target_arch = "wasm32"))]
    oom: wgpu::ErrorScopeGuard,
}

impl ErrorScope {
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn push(device: &wgpu::Device) -> Self {
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        ErrorScope { validation, oom }
    }

    #[cfg(target_arch = "wasm32")]
    pub(crate) fn push(_device: &wgpu::Device) -> Self {
        ErrorScope {}
    }

    /// As [`ErrorScope::pop`], but an error on a lost device is [`Error::DeviceLost`] (work on
    /// a lost device fails with whatever validation error its invalid objects cause first).
    pub(crate) fn pop_on(self, ctx: &Context) -> Result<()> {
        let r = self.pop();
        if r.is_err() {
            ctx.check_alive()?;
        }
        r
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn pop(self) -> Result<()> {
        let v = pollster::block_on(self.validation.pop());
        let o = pollster::block_on(self.oom.pop());
        match (v, o) {
            (Some(e), _) => Err(Error::Gpu(format!("validation: {e}"))),
            (None, Some(e)) => Err(Error::Gpu(format!("out of memory: {e}"))),
            (None, None) => Ok(()),
        }
    }

    #[cfg(target_arch = "wasm32")]
    pub(crate) fn pop(self) -> Result<()> {
        Ok(())
    }
}
