//! The engine API of every cell (`gpu::Plan`) and one step at a time
//! (`StepPlan`): a sequence stepped one call at a time equals the same sequence run whole,
//! for every registered cell, on Vulkan and GL; a plan recorded twice gives the same bits
//! (the backward clears what it adds into); bad buffers are typed errors.

use crate::common::{rng, uniform};
use crate::gpu_common::contexts;
use wgpu::util::DeviceExt;
use wgpu_rnn::cpu::{cast, Pass};
use wgpu_rnn::gpu::generic::{flat_weights, weights_from_flat};
use wgpu_rnn::gpu::{BackwardBuffers, Context, ForwardBuffers, GpuRnn, Plan, Readback, SeqLayout, StepBuffers, StepPlan};
use wgpu_rnn::config::Prob;
use wgpu_rnn::{Error, Mode, PackedSequence, RnnConfig, Weights};

fn init(ctx: &Context, data: &[f32]) -> wgpu::Buffer {
    let mut v = data.to_vec();
    v.resize(v.len().max(4), 0.0);
    ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&v),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
    })
}

fn empty(ctx: &Context, elems: usize) -> wgpu::Buffer {
    init(ctx, &vec![0.0; elems])
}

/// A 2-layer unidirectional config of `mode` (input 6, or the hidden size where the cell
/// needs input == hidden).
fn config(mode: Mode, hidden: usize) -> RnnConfig {
    let cfg = RnnConfig::new(mode, 6, hidden).layers(2);
    if cfg.validate().is_ok() {
        cfg
    } else {
        RnnConfig::new(mode, hidden, hidden).layers(2)
    }
}

/// Runs `cfg` over T 5, B 3 whole (`GpuRnn`, inference) and one step at a time
/// (`StepPlan`, T steps in one encoder) and asserts the same bits.
fn step_against_whole(ctx: &std::sync::Arc<Context>, cfg: &RnnConfig, g: &mut impl rand::Rng) {
    let backend = ctx.adapter_info().backend;
    let w = Weights::<f64>::init_uniform(cfg, 5).unwrap().cast::<f32>();
    let (t, b) = (5, 3);
    let x: Vec<f32> = cast(&uniform(g, t * b * cfg.input_size, 1.0));
    let states = cfg.states();
    let widths: Vec<usize> = states.iter().map(|s| s.width).collect();
    let s0: Vec<Vec<f32>> = widths.iter().map(|&wd| cast(&uniform(g, cfg.num_layers * b * wd, 0.5))).collect();
    // Whole sequence (equal lengths: packed rows are time-major, batch order).
    let packed = PackedSequence::from_padded(&x, [t, b, cfg.input_size], false, &[t; 3]).unwrap();
    let s0r: Vec<Option<&[f32]>> = s0.iter().map(|v| Some(&v[..])).collect();
    let (whole, _) = GpuRnn::new(ctx, &w).unwrap().forward(&packed, &s0r, Pass::Inference).unwrap();

    // One step at a time: T steps recorded into one encoder, one submit.
    let plan = StepPlan::new(ctx, cfg, b).unwrap();
    assert_eq!(plan.state_elems(), widths.iter().map(|w| cfg.num_layers * b * w).collect::<Vec<_>>());
    let wbuf = init(ctx, &flat_weights(&w));
    let sbufs: Vec<wgpu::Buffer> = s0.iter().map(|v| init(ctx, v)).collect();
    let sref: Vec<wgpu::BufferSlice<'_>> = sbufs.iter().map(|b| b.slice(..)).collect();
    let i = cfg.input_size;
    let xs: Vec<wgpu::Buffer> = (0..t).map(|s| init(ctx, &x[s * b * i..(s + 1) * b * i])).collect();
    let ho = cfg.output_size();
    let outs: Vec<wgpu::Buffer> = (0..t).map(|_| empty(ctx, b * ho)).collect();
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    for s in 0..t {
        plan.record_step(&mut enc, &StepBuffers { weights: wbuf.slice(..), input: xs[s].slice(..), states: &sref, output: outs[s].slice(..) }).unwrap();
    }
    let mut rb = Readback::new();
    for o in &outs {
        rb.copy(ctx, &mut enc, o, b * ho).unwrap();
    }
    for (sb, e) in sbufs.iter().zip(plan.state_elems()) {
        rb.copy(ctx, &mut enc, sb, e).unwrap();
    }
    let got = rb.submit_and_read(ctx, enc).unwrap();
    let name = format!("{backend:?} {} (zoneout {})", cfg.mode, cfg.zoneout.get());
    let stepped: Vec<f32> = got[..t].concat();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&stepped), bits(&whole.output.data), "{name}: output stepped one call at a time");
    for (k, st) in whole.states.iter().enumerate() {
        assert_eq!(bits(&got[t + k]), bits(&st.data), "{name}: final state {k}");
    }
}

#[test]
fn stepping_equals_the_whole_sequence_for_every_cell() {
    let mut g = rng(33);
    for ctx in contexts() {
        for &mode in Mode::REGISTRY {
            step_against_whole(ctx, &config(mode, 20), &mut g);
        }
    }
}

#[test]
fn stepping_with_zoneout_equals_the_whole_sequence() {
    // A step is inference: zoneout takes its expectation, from the states saved before it.
    let mut g = rng(35);
    let Some(ctx) = contexts().first() else { return };
    for mode in [Mode::Lstm, Mode::Gru, Mode::Scrn, Mode::IndRnn] {
        step_against_whole(ctx, &config(mode, 20).zoneout(Prob::new(0.3).unwrap()), &mut g);
    }
}

#[test]
fn cell_plan_recorded_twice_gives_the_same_bits() {
    // Forward and backward, twice in one encoder over the same buffers: the backward clears
    // the gradients it adds into (input, inner layers, weights), so the second run is equal.
    let Some(ctx) = contexts().first() else { return };
    let mut g = rng(34);
    for mode in [Mode::Gru, Mode::Scrn, Mode::LstmLayerNorm] {
        let cfg = RnnConfig::new(mode, 5, 12).layers(2).bidirectional(true);
        let w = Weights::<f64>::init_uniform(&cfg, 9).unwrap().cast::<f32>();
        let lengths = [4usize, 2, 3];
        let (t, b) = (4, 3);
        let x = PackedSequence::from_padded(&cast::<f64, f32>(&uniform(&mut g, t * b * 5, 1.0)), [t, b, 5], false, &lengths).unwrap();
        let plan = Plan::new(ctx, &cfg, &SeqLayout::of(&x).unwrap(), Pass::Training).unwrap();
        let n = x.rows();
        let (wbuf, xbuf) = (init(ctx, &flat_weights(&w)), init(ctx, &x.data));
        let state_len = |s: &wgpu_rnn::cells::StateDef| cfg.state_shape(s, b).iter().product::<usize>();
        let obuf = empty(ctx, n * cfg.output_size());
        let (sn, gs0): (Vec<_>, Vec<_>) = cfg.states().iter().map(|s| (empty(ctx, state_len(s)), empty(ctx, state_len(s)))).unzip();
        let (sn, gs0): (Vec<wgpu::BufferSlice<'_>>, Vec<wgpu::BufferSlice<'_>>) = (sn.iter().map(|b| b.slice(..)).collect(), gs0.iter().map(|b| b.slice(..)).collect());
        let gobuf = init(ctx, &cast::<f64, f32>(&uniform(&mut g, n * cfg.output_size(), 1.0)));
        let (dxbuf, dwbuf) = (empty(ctx, n * 5), empty(ctx, plan.weight_elems()));
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        let mut rb = Readback::new();
        for _ in 0..2 {
            plan.record_forward(&mut enc, &ForwardBuffers { weights: wbuf.slice(..), input: xbuf.slice(..), output: obuf.slice(..), states0: &[], states_n: &sn, counter: None }).unwrap();
            let bb = BackwardBuffers {
                weights: wbuf.slice(..),
                input: xbuf.slice(..),
                output: obuf.slice(..),
                states0: &[],
                grad_output: gobuf.slice(..),
                grad_states_n: &[],
                grad_input: Some(dxbuf.slice(..)),
                grad_states0: &gs0,
                grad_weights: dwbuf.slice(..),
                counter: None,
            };
            plan.record_backward(&mut enc, &bb).unwrap();
            rb.copy(ctx, &mut enc, &dxbuf, n * 5).unwrap();
            rb.copy(ctx, &mut enc, &dwbuf, plan.weight_elems()).unwrap();
        }
        let got = rb.submit_and_read(ctx, enc).unwrap();
        assert_eq!(got[0], got[2], "{mode}: input gradients of the second run");
        assert_eq!(got[1], got[3], "{mode}: weight gradients of the second run");
        // And they are the convenience path's (which takes the same driver).
        let rnn = GpuRnn::new(ctx, &w).unwrap();
        let (_, tape) = rnn.forward(&x, &[], Pass::Training).unwrap();
        let go: Vec<f32> = {
            let mut e = ctx.device.create_command_encoder(&Default::default());
            let mut r = Readback::new();
            r.copy(ctx, &mut e, &gobuf, n * cfg.output_size()).unwrap();
            r.submit_and_read(ctx, e).unwrap().remove(0)
        };
        let grads = rnn.backward(&tape.unwrap(), &go, &[]).unwrap();
        assert_eq!(flat_weights(&grads.params), got[1], "{mode}: weight gradients against the convenience path");
        assert_eq!(weights_from_flat(&cfg, &got[1]).unwrap().params, grads.params.params);
    }
}

#[test]
fn step_plan_refuses_bad_buffers_and_configs() {
    let Some(ctx) = contexts().first() else { return };
    let cfg = RnnConfig::new(Mode::Lstm, 4, 8);
    assert!(matches!(StepPlan::new(ctx, &cfg.clone().bidirectional(true), 2), Err(Error::Unsupported(_))));
    assert!(matches!(StepPlan::new(ctx, &cfg, 0), Err(Error::EmptyBatch(_))));
    assert!(matches!(StepPlan::new(ctx, &RnnConfig::new(Mode::Sru, 4, 8), 2), Err(Error::InvalidConfig(_))));
    let plan = StepPlan::new(ctx, &cfg, 2).unwrap();
    let w = init(ctx, &vec![0.1; plan.weight_elems()]);
    let e = plan.state_elems();
    let (x, h, c, o) = (empty(ctx, 8), empty(ctx, e[0]), empty(ctx, e[1]), empty(ctx, 16));
    let small = empty(ctx, 4);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let r = plan.record_step(&mut enc, &StepBuffers { weights: w.slice(..), input: x.slice(..), states: &[h.slice(..), small.slice(..)], output: o.slice(..) });
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
    let r = plan.record_step(&mut enc, &StepBuffers { weights: small.slice(..), input: x.slice(..), states: &[h.slice(..), c.slice(..)], output: o.slice(..) });
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
    let r = plan.record_step(&mut enc, &StepBuffers { weights: w.slice(..), input: x.slice(..), states: &[h.slice(..)], output: o.slice(..) });
    assert!(matches!(r, Err(Error::InvalidConfig(_))), "one state buffer for an LSTM: {r:?}");
    let r = plan.record_step(&mut enc, &StepBuffers { weights: w.slice(..), input: x.slice(..), states: &[h.slice(..), c.slice(..)], output: h.slice(..) });
    assert!(matches!(r, Err(Error::BufferAliasing(_))), "{r:?}");
    let r = plan.record_step(&mut enc, &StepBuffers { weights: w.slice(..), input: x.slice(..), states: &[h.slice(..), h.slice(..)], output: o.slice(..) });
    assert!(matches!(r, Err(Error::BufferAliasing(_))), "h and c one buffer: {r:?}");
    // A good step still records after the refusals, and the encoder finishes cleanly.
    plan.record_step(&mut enc, &StepBuffers { weights: w.slice(..), input: x.slice(..), states: &[h.slice(..), c.slice(..)], output: o.slice(..) }).unwrap();
    ctx.queue.submit([enc.finish()]);
    ctx.wait().unwrap();
}

#[test]
fn plan_backward_needs_clearable_gradient_buffers() {
    // The backward clears grad_input and grad_weights first: without COPY_DST that is a typed
    // error at recording, not a validation panic when the caller finishes the encoder.
    let Some(ctx) = contexts().first() else { return };
    for mode in [Mode::Gru, Mode::Scrn] {
    let cfg = RnnConfig::new(mode, 4, 8);
    let x = PackedSequence::from_padded(&[0.5f32; 16], [2, 2, 4], false, &[2, 2]).unwrap();
    let plan = Plan::new(ctx, &cfg, &SeqLayout::of(&x).unwrap(), Pass::Training).unwrap();
    let storage_only = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (plan.weight_elems() * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let (w, xb, out, go, gx) = (empty(ctx, plan.weight_elems()), init(ctx, &x.data), empty(ctx, 4 * 8), empty(ctx, 4 * 8), empty(ctx, 16));
    let gs: Vec<wgpu::Buffer> = cfg.states().iter().map(|s| empty(ctx, cfg.state_shape(s, 2).iter().product())).collect();
    let gs: Vec<wgpu::BufferSlice<'_>> = gs.iter().map(|b| b.slice(..)).collect();
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let bb = BackwardBuffers {
        weights: w.slice(..),
        input: xb.slice(..),
        output: out.slice(..),
        states0: &[],
        grad_output: go.slice(..),
        grad_states_n: &[],
        grad_input: Some(gx.slice(..)),
        grad_states0: &gs,
        grad_weights: storage_only.slice(..),
        counter: None,
    };
    assert!(matches!(plan.record_backward(&mut enc, &bb), Err(Error::Gpu(_))), "{mode}");
    }
}
