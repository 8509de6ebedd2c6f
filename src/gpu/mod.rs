//! The GPU path: WGSL kernels composed from each cell's own, driven through wgpu.
//!
//! - [`Context`]: a device of our own or the caller's, with the pipeline cache;
//! - [`Plan`]: the engine API, for every registered cell. Prepared once per problem
//!   structure, recorded into the caller's `CommandEncoder` over the caller's buffers
//!   ([`ForwardBuffers`], [`BackwardBuffers`]: weights in [`flat_weights`]' layout, one
//!   `[L*D, B, S_i]` buffer per state in the caller's batch order), with no hidden submit,
//!   readback or buffer write;
//! - [`GpuRnn`]: the convenience API (upload, one submit, read back) with the CPU engine's
//!   types and state convention, for every registered cell;
//! - [`StepPlan`]: one time step at a time (streaming inference, generation);
//! - [`RowMoves`]: rows moved by tables between the caller's buffers (layouts around a plan).

mod api;
mod context;
mod engine;
mod gemm;
pub mod generic;
pub mod kernels;
pub mod profile;
mod readback;
mod record;
mod rows;
mod sequence;
pub mod train;

pub use api::{GpuRnn, GpuTape};
pub use engine::{BackwardBuffers, ForwardBuffers, Plan};
pub use generic::{flat_weights, weight_elems, weights_from_flat, StepBuffers, StepPlan};
pub use gemm::{MatMul, MatMulDesc};
pub use rows::{RowMove, RowMoves};
pub(crate) use record::{check_aliasing, check_buffer as check_slice, check_overlap};
pub use context::{parse_backends, Context, ContextOptions, GlGuard, TrackedBuffer, ENV_ADAPTER, ENV_BACKEND, ENV_SUBGROUPS};
pub use sequence::{loop_iteration_budget, loop_run_steps, SeqLayout, StepStrategy, LOOP_ITERATIONS_CAPPED, LOOP_ITERATIONS_GPU, SINGLE_DISPATCH_MAX_MACS};
pub use readback::{storage, storage_at, upload, upload_stored, PendingRead, Readback};
