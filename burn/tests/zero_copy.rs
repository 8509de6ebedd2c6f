#![allow(deprecated)] // burn 0.22 deprecates ndarray (and TensorData::to_vec); the issue asks for ndarray
//! No staging copy between burn's tensors and our kernels, shown by the module's own
//! accounting of the buffers it makes (in a test binary of its own, so that no other test's
//! calls count).

use burn::tensor::{Device, Tensor};
use wgpu_rnn::{Mode, RnnConfig, Weights};
use wgpu_rnn_burn::FusedRnn;

/// No staging copy: a C1-sized forward on burn's wgpu device binds burn's input, weights and
/// output buffers where they lie; the only buffers of our own are the states' (h and c, in
/// and out), a fraction of the input's bytes. (The context's own workspaces, the plan's, are
/// the engine's, as in any engine-API call.)
#[test]
fn a_forward_on_wgpu_stages_only_the_states() {
    let (device, ctx) = wgpu_rnn_burn::init_wgpu(Device::wgpu_options()).unwrap();
    let (t, b, i, h) = (50, 32, 128, 256);
    let cfg = RnnConfig::new(Mode::Lstm, i, h);
    let w = Weights::<f32>::init_uniform(&cfg, 3).unwrap();
    let m = FusedRnn::from_weights(&w, false, &device).unwrap();
    let x = Tensor::<3>::ones([t, b, i], &device);
    let before = wgpu_rnn_burn::staged_bytes();
    let out = m.forward(x, None, None).unwrap();
    let _ = out.output.into_data();
    // The states read back too, and the device idle, so no work is in flight when the test
    // process exits (lavapipe still compiling a kernel in its queue thread while LLVM's exit
    // handlers run segfaults the process after the test has passed, about one run in three).
    for s in out.states {
        let _ = s.into_data();
    }
    ctx.wait().unwrap();
    let staged = wgpu_rnn_burn::staged_bytes() - before;
    let states = 2 * 2 * b * h * 4; // h and c, initial and final
    assert_eq!(staged, states as u64, "bytes staged in buffers of our own");
    assert!(staged * 10 < (t * b * i * 4 + wgpu_rnn::gpu::flat_weights(&w).len() * 4) as u64);
}
