//! The engine-author path: your own `wgpu::Device`, your own buffers, one command encoder of
//! yours holding a forward and backward (an LSTM, then SCRN: the same code for any cell), and
//! a single submit each. The library records
//! dispatches only: no hidden submit, readback or buffer write. The result is checked against
//! the CPU reference.
//!
//! ```sh
//! cargo run --release --example engine_api
//! ```

use wgpu::util::DeviceExt;
use wgpu_rnn::case::tolerance::{FORWARD_ATOL, FORWARD_RTOL, GRAD_ATOL, GRAD_RTOL};
use wgpu_rnn::case::worst_ratio;
use wgpu_rnn::cpu::{self, Pass};
use wgpu_rnn::gpu::{flat_weights, BackwardBuffers, Context, ForwardBuffers, Plan, Readback, SeqLayout};
use wgpu_rnn::{Mode, PackedSequence, RnnConfig, Weights};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The application's device (here: whatever adapter wgpu picks).
    let instance = wgpu::Instance::default();
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?;
    let info = adapter.get_info();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    println!("adapter: {} ({:?})", info.name, info.backend);
    let ctx = Context::from_device(device.clone(), queue.clone(), Some(info))?;

    // 2. The same code for any registered cell: PyTorch's LSTM, and SCRN, which no peer has.
    for mode in [Mode::Lstm, Mode::Scrn] {
        run(&ctx, &device, mode)?;
    }
    Ok(())
}

/// A bidirectional 2-layer stack of `mode` over a batch of 3 sequences of lengths 5, 2, 4,
/// forward and backward recorded into one encoder of ours, checked against the CPU engine.
fn run(ctx: &std::sync::Arc<Context>, device: &wgpu::Device, mode: Mode) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = RnnConfig::new(mode, 6, 16).layers(2).bidirectional(true);
    let w = Weights::<f32>::init_uniform(&cfg, 42)?;
    let (t, b) = (5, 3);
    let padded: Vec<f32> = (0..t * b * cfg.input_size).map(|i| ((i * 7919) % 100) as f32 / 50.0 - 1.0).collect();
    let x = PackedSequence::from_padded(&padded, [t, b, cfg.input_size], false, &[5, 2, 4])?;
    let n = x.rows();

    // 3. The application's own buffers: weights flat (for PyTorch's cells, state_dict order),
    //    and one [L*D, B, S_i] buffer per state of the cell (an LSTM's h and c), batch order.
    let flat = flat_weights(&w);
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let init = |data: &[f32]| device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytemuck::cast_slice(data), usage });
    let empty = |elems: usize| device.create_buffer(&wgpu::BufferDescriptor { label: None, size: (elems * 4) as u64, usage, mapped_at_creation: false });
    let per_state = |_: &str| -> Vec<wgpu::Buffer> { cfg.state_elems(b).into_iter().map(|e| empty(e)).collect() };
    let (weights, input) = (init(&flat), init(&x.data));
    let output = empty(n * cfg.output_size());
    let states_n = per_state("final states");
    let grad_output_host = vec![0.1f32; n * cfg.output_size()];
    let grad_output = init(&grad_output_host);
    let (grad_input, grad_weights) = (empty(n * cfg.input_size), empty(flat.len()));
    let grad_states0 = per_state("initial-state gradients");
    let states_n: Vec<wgpu::BufferSlice<'_>> = states_n.iter().map(|b| b.slice(..)).collect();
    let grad_states0: Vec<wgpu::BufferSlice<'_>> = grad_states0.iter().map(|b| b.slice(..)).collect();

    // 4. Prepare once (uploads the per-dispatch parameters), then record into our encoder.
    let plan = Plan::new(ctx, &cfg, &SeqLayout::of(&x)?, Pass::Training)?;
    let mut encoder = device.create_command_encoder(&Default::default());
    plan.record_forward(&mut encoder, &ForwardBuffers { weights: weights.slice(..), input: input.slice(..), output: output.slice(..), states0: &[], states_n: &states_n, counter: None })?;
    plan.record_backward(
        &mut encoder,
        &BackwardBuffers {
            weights: weights.slice(..),
            input: input.slice(..),
            output: output.slice(..),
            states0: &[],
            grad_output: grad_output.slice(..),
            grad_states_n: &[],
            grad_input: Some(grad_input.slice(..)),
            grad_states0: &grad_states0,
            grad_weights: grad_weights.slice(..),
            counter: None,
        },
    )?;
    println!("{mode}: recorded {} + {} dispatches into one encoder", plan.forward_dispatches(), plan.backward_dispatches());

    // 5. Our submit; read back to compare with the CPU reference.
    let mut rb = Readback::new();
    rb.copy(ctx, &mut encoder, &output, n * cfg.output_size())?;
    rb.copy(ctx, &mut encoder, &grad_weights, flat.len())?;
    let got = rb.submit_and_read(ctx, encoder)?;
    let (fwd, tape) = cpu::forward(&w, &x, &[], Pass::Training)?;
    let grads = cpu::backward(&w, &tape.expect("training tape"), &grad_output_host, &[])?;
    let want_gw = flat_weights(&grads.params);
    let out_err = worst_ratio(&got[0], &fwd.output.data, FORWARD_ATOL, FORWARD_RTOL);
    let grad_err = worst_ratio(&got[1], &want_gw, GRAD_ATOL, GRAD_RTOL);
    println!("{mode}: output: worst error {out_err:.3} of the golden tolerance; weight gradients: {grad_err:.3}");
    // `worst_ratio` is infinite for a NaN or a short read: `!(x <= 1.0)` fails on it too.
    if !(out_err <= 1.0 && grad_err <= 1.0) {
        return Err(format!("{mode}: GPU and CPU disagree").into());
    }
    Ok(())
}
