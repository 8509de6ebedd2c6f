//! Integration tests, in one binary so wgpu links once.

mod bench_cli;
mod cells;
mod common;
mod cpu_kernels;
mod errors;
mod every_path;
mod fuzz_replay;
mod f16;
mod golden_cpu;
mod gpu;
mod gpu_cells;
mod gpu_common;
mod gpu_step;
mod gradcheck;
mod long_sequences;
mod packing;
mod random_inputs;
mod regularisers;
mod reliability_cpu;
mod reliability_gpu;
mod shaders;
mod train;
mod urnn;
mod weights_io;
mod slices;
mod splitting;
