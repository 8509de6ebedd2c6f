//! Integration tests, in one binary so wgpu links once.

mod common;
mod errors;
mod golden_cpu;
mod gradcheck;
mod packing;
mod weights_io;
