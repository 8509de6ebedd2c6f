//! The engine-author path: your own `wgpu::Device`, your own buffers, one command encoder of
//! yours holding an LSTM forward and backward, and a single submit. The library records
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
use wgpu_rnn::gpu::{weight_layout, BackwardBuffers, Context, ForwardBuffers, Plan, Readback, SeqLayout, StateInputs};
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

    // 2. A bidirectional 2-layer LSTM and a batch of 3 sequences of lengths 5, 2, 4.
    let cfg = RnnConfig::new(Mode::Lstm, 6, 16).layers(2).bidirectional(true);
    let w = Weights::<f32>::init_uniform(&cfg, 42)?;
    let (t, b) = (5, 3);
    let padded: Vec<f32> = (0..t * b * cfg.input_size).map(|i| ((i * 7919) % 100) as f32 / 50.0 - 1.0).collect();
    let x = PackedSequence::from_padded(&padded, [t, b, cfg.input_size], false, &[5, 2, 4])?;
    let n = x.rows();

    // 3. The application's own buffers (weights flat in state_dict order).
    let flat = w.to_flat();
    assert_eq!(flat.len(), weight_layout(&cfg).1);
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let init = |data: &[f32]| device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytemuck::cast_slice(data), usage });
    let empty = |elems: usize| device.create_buffer(&wgpu::BufferDescriptor { label: None, size: (elems * 4) as u64, usage, mapped_at_creation: false });
    let states = cfg.num_layers * cfg.directions() * b * cfg.hidden_size;
    let (weights, input) = (init(&flat), init(&x.data));
    let (output, h_n, c_n) = (empty(n * cfg.output_size()), empty(states), empty(states));
    let grad_output_host = vec![0.1f32; n * cfg.output_size()];
    let grad_output = init(&grad_output_host);
    let (grad_input, grad_h0, grad_c0, grad_weights) = (empty(n * cfg.input_size), empty(states), empty(states), empty(flat.len()));

    // 4. Prepare once (uploads the per-dispatch parameters), then record into our encoder.
    let plan = Plan::new(&ctx, &cfg, &SeqLayout::of(&x)?, Pass::Training, StateInputs::default())?;
    let mut encoder = device.create_command_encoder(&Default::default());
    plan.record_forward(&mut encoder, &ForwardBuffers { weights: &weights, input: &input, output: &output, h0: None, c0: None, h_n: &h_n, c_n: Some(&c_n) })?;
    plan.record_backward(
        &mut encoder,
        &BackwardBuffers {
            weights: &weights,
            input: &input,
            output: &output,
            h0: None,
            c0: None,
            grad_output: &grad_output,
            grad_h_n: None,
            grad_c_n: None,
            grad_input: &grad_input,
            grad_h0: &grad_h0,
            grad_c0: Some(&grad_c0),
            grad_weights: &grad_weights,
        },
    )?;
    println!("recorded {} + {} dispatches into one encoder", plan.forward_dispatches(), plan.backward_dispatches());

    // 5. Our submit; read back to compare with the CPU reference.
    let mut rb = Readback::new();
    rb.copy(&ctx, &mut encoder, &output, n * cfg.output_size())?;
    rb.copy(&ctx, &mut encoder, &grad_weights, flat.len())?;
    let got = rb.submit_and_read(&ctx, encoder)?;
    let (fwd, tape) = cpu::forward(&w, &x, &[], Pass::Training)?;
    let grads = cpu::backward(&w, &tape.expect("training tape"), &grad_output_host, &[])?;
    let want_gw = grads.params.to_flat();
    let out_err = worst_ratio(&got[0], &fwd.output.data, FORWARD_ATOL, FORWARD_RTOL);
    let grad_err = worst_ratio(&got[1], &want_gw, GRAD_ATOL, GRAD_RTOL);
    println!("output: worst error {out_err:.3} of the golden tolerance; weight gradients: {grad_err:.3}");
    // `worst_ratio` is infinite for a NaN or a short read: `!(x <= 1.0)` fails on it too.
    if !(out_err <= 1.0 && grad_err <= 1.0) {
        return Err("GPU and CPU disagree".into());
    }
    Ok(())
}
