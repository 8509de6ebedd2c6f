//! The convenience API: upload, run (one submit for a whole forward or backward), read back.
//! Mirrors [`crate::cpu::forward`] / [`crate::cpu::backward`] and returns the same types.

use super::context::{Context, TrackedBuffer};
use super::plan::{weight_layout, BackwardBuffers, ForwardBuffers, Plan, SeqLayout, StateInputs};
use super::readback::{storage, upload, Readback};
use crate::config::{Mode, RnnConfig};
use crate::cpu::{ForwardOutput, Gradients, Pass};
use crate::error::{check_len, Error, Result};
use crate::packing::PackedSequence;
use crate::tensor::Tensor;
use crate::weights::Weights;
use std::sync::{Arc, Mutex};

/// How many plans (distinct batch structures) a model keeps prepared.
const PLAN_CACHE: usize = 8;

/// A recurrent stack resident on the GPU.
pub struct GpuRnn {
    ctx: Arc<Context>,
    cfg: RnnConfig,
    weights: TrackedBuffer,
    plans: Mutex<Vec<(PlanKey, Arc<Plan>)>>,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct PlanKey {
    layout: SeqLayout,
    pass: Pass,
    inputs: StateInputs,
}

/// What a training forward keeps on the device for [`GpuRnn::backward`].
pub struct GpuTape {
    /// The context and weights it was recorded with: backward refuses any other model.
    ctx: Arc<Context>,
    weights: wgpu::Buffer,
    plan: Arc<Plan>,
    input: TrackedBuffer,
    output: TrackedBuffer,
    h0: Option<TrackedBuffer>,
    c0: Option<TrackedBuffer>,
    unsorted_indices: Vec<usize>,
}

fn check_finite(what: &str, x: &[f32]) -> Result<()> {
    if x.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(Error::NonFinite(what.into()))
    }
}

impl GpuRnn {
    /// Uploads the weights.
    pub fn new(ctx: &Arc<Context>, w: &Weights<f32>) -> Result<Self> {
        w.config.validate()?;
        let mut flat = Vec::with_capacity(w.num_scalars());
        let mut bad = None;
        w.for_each(|kind, layer, dir, v| {
            if bad.is_none() && !v.iter().all(|x| x.is_finite()) {
                bad = Some(RnnConfig::param_name(kind, layer, dir));
            }
            flat.extend_from_slice(v);
        });
        if let Some(name) = bad {
            return Err(Error::NonFinite(name));
        }
        let _serial = ctx.exclusive();
        if flat.len() != weight_layout(&w.config).1 {
            return Err(Error::LengthMismatch { what: "flat weights".into(), shape: vec![weight_layout(&w.config).1], expected: weight_layout(&w.config).1, got: flat.len() });
        }
        Ok(GpuRnn { ctx: ctx.clone(), cfg: w.config.clone(), weights: upload(ctx, "weights", &flat)?, plans: Mutex::new(Vec::new()) })
    }

    /// The configuration the weights were uploaded for.
    pub fn config(&self) -> &RnnConfig {
        &self.cfg
    }

    /// The context the model lives on.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The flat weights buffer ([`weight_layout`] order), for the engine API.
    pub fn weights_buffer(&self) -> &wgpu::Buffer {
        &self.weights
    }

    /// A prepared plan for this structure: cached, and never one a live tape still uses.
    pub fn plan(&self, layout: &SeqLayout, pass: Pass, inputs: StateInputs) -> Result<Arc<Plan>> {
        let key = PlanKey { layout: layout.clone(), pass, inputs };
        // A panic elsewhere while the cache was locked leaves it consistent (entries are
        // pushed whole), so a poisoned lock is used as is.
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = plans.iter().position(|(k, p)| *k == key && Arc::strong_count(p) == 1) {
            let entry = plans.remove(pos);
            let plan = entry.1.clone();
            plans.push(entry);
            return Ok(plan);
        }
        let plan = Arc::new(Plan::new(&self.ctx, &self.cfg, layout, pass, inputs)?);
        plans.push((key, plan.clone()));
        if plans.len() > PLAN_CACHE {
            plans.remove(0);
        }
        Ok(plan)
    }

    /// Forward over a packed batch; shapes as [`crate::cpu::forward`].
    pub fn forward(
        &self,
        input: &PackedSequence<f32>,
        h0: Option<&[f32]>,
        c0: Option<&[f32]>,
        pass: Pass,
    ) -> Result<(ForwardOutput<f32>, Option<GpuTape>)> {
        let c = &self.cfg;
        self.ctx.check_alive()?;
        input.validate()?;
        if input.features != c.input_size {
            return Err(Error::ShapeMismatch { what: "input features".into(), expected: vec![c.input_size], got: vec![input.features] });
        }
        let b = input.batch();
        if let Some(h) = h0 {
            check_len("h0", &c.h_shape(b), h.len())?;
            check_finite("h0", h)?;
        }
        match (c0, c.mode) {
            (Some(x), Mode::Lstm) => {
                check_len("c0", &c.c_shape(b), x.len())?;
                check_finite("c0", x)?;
            }
            (Some(_), m) => return Err(Error::InvalidConfig(format!("c0 given, but {m} has no cell state"))),
            _ => {}
        }
        check_finite("input", &input.data)?;
        let lstm = c.mode == Mode::Lstm;
        let inputs = StateInputs { h0: h0.is_some(), c0: c0.is_some(), grad_h_n: pass == Pass::Training, grad_c_n: pass == Pass::Training && lstm };
        let plan = self.plan(&SeqLayout::of(input)?, pass, inputs)?;
        let ctx = &self.ctx;
        let _serial = ctx.exclusive();
        let n = input.rows();
        let hn_elems = c.h_shape(b).iter().product();
        let cn_elems = c.c_shape(b).iter().product();
        let x = upload(ctx, "input", &input.data)?;
        let h0b = h0.map(|h| upload(ctx, "h0", h)).transpose()?;
        let c0b = c0.map(|v| upload(ctx, "c0", v)).transpose()?;
        let out = storage(ctx, "output", n * c.output_size())?;
        let hn = storage(ctx, "h_n", hn_elems)?;
        let cn = if lstm { Some(storage(ctx, "c_n", cn_elems)?) } else { None };
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-rnn forward") });
        plan.record_forward(
            &mut enc,
            &ForwardBuffers {
                weights: &self.weights,
                input: &x,
                output: &out,
                h0: h0b.as_deref(),
                c0: c0b.as_deref(),
                h_n: &hn,
                c_n: cn.as_deref(),
            },
        )?;
        let mut rb = Readback::new();
        rb.copy(ctx, &mut enc, &out, n * c.output_size())?;
        rb.copy(ctx, &mut enc, &hn, hn_elems)?;
        if let Some(cn) = &cn {
            rb.copy(ctx, &mut enc, cn, cn_elems)?;
        }
        let mut got = rb.submit_and_read(ctx, enc)?.into_iter();
        let out_data = next_read(&mut got, "output")?;
        let h_n = Tensor { shape: c.h_shape(b), data: next_read(&mut got, "h_n")? };
        let c_n = got.next().map(|data| Tensor { shape: c.c_shape(b), data });
        let fwd = ForwardOutput { output: input.with_data(out_data, c.output_size())?, h_n, c_n };
        let tape = (pass == Pass::Training).then(|| GpuTape {
            ctx: ctx.clone(),
            weights: self.weights.buffer.clone(),
            plan,
            input: x,
            output: out,
            h0: h0b,
            c0: c0b,
            unsorted_indices: input.unsorted_indices.clone(),
        });
        Ok((fwd, tape))
    }

    /// Backward through time from a training forward's tape; shapes as [`crate::cpu::backward`].
    pub fn backward(&self, tape: &GpuTape, grad_output: &[f32], grad_h_n: Option<&[f32]>, grad_c_n: Option<&[f32]>) -> Result<Gradients<f32>> {
        let c = &self.cfg;
        let plan = &tape.plan;
        // A tape's buffers and plan belong to its context's device: binding them on another
        // device trips wgpu-core assertions, so compare before recording anything.
        if !Arc::ptr_eq(&tape.ctx, &self.ctx) {
            return Err(Error::TapeMismatch(format!(
                "tape was recorded on another context ({}), this model is on {}",
                tape.ctx.describe(),
                self.ctx.describe()
            )));
        }
        if plan.config() != c {
            return Err(Error::TapeMismatch("tape was recorded by a model of another configuration".into()));
        }
        if tape.weights != self.weights.buffer {
            return Err(Error::TapeMismatch("tape was recorded by another model (other weights)".into()));
        }
        self.ctx.check_alive()?;
        let (n, b) = (plan.rows(), plan.layout().batch());
        let lstm = c.mode == Mode::Lstm;
        check_len("grad_output", &[n, c.output_size()], grad_output.len())?;
        check_finite("grad_output", grad_output)?;
        let hn_elems: usize = c.h_shape(b).iter().product();
        let cn_elems: usize = c.c_shape(b).iter().product();
        if let Some(g) = grad_h_n {
            check_len("grad_h_n", &c.h_shape(b), g.len())?;
            check_finite("grad_h_n", g)?;
        }
        match (grad_c_n, c.mode) {
            (Some(g), Mode::Lstm) => {
                check_len("grad_c_n", &c.c_shape(b), g.len())?;
                check_finite("grad_c_n", g)?;
            }
            (Some(_), m) => return Err(Error::InvalidConfig(format!("grad_c_n given, but {m} has no cell state"))),
            _ => {}
        }
        let ctx = &self.ctx;
        let _serial = ctx.exclusive();
        let zeros_h;
        let gh = match grad_h_n {
            Some(g) => g,
            None => {
                zeros_h = vec![0.0; hn_elems];
                &zeros_h
            }
        };
        let zeros_c;
        let gc = match grad_c_n {
            Some(g) => g,
            None => {
                zeros_c = vec![0.0; cn_elems];
                &zeros_c
            }
        };
        let go = upload(ctx, "grad_output", grad_output)?;
        let ghb = upload(ctx, "grad_h_n", gh)?;
        let gcb = if lstm { Some(upload(ctx, "grad_c_n", gc)?) } else { None };
        let gi = storage(ctx, "grad_input", n * c.input_size)?;
        let gh0 = storage(ctx, "grad_h0", hn_elems)?;
        let gc0 = if lstm { Some(storage(ctx, "grad_c0", cn_elems)?) } else { None };
        let gw = storage(ctx, "grad_weights", plan.weight_elems())?;
        let mut enc = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-rnn backward") });
        plan.record_backward(
            &mut enc,
            &BackwardBuffers {
                weights: &self.weights,
                input: &tape.input,
                output: &tape.output,
                h0: tape.h0.as_deref(),
                c0: tape.c0.as_deref(),
                grad_output: &go,
                grad_h_n: Some(&ghb),
                grad_c_n: gcb.as_deref(),
                grad_input: &gi,
                grad_h0: &gh0,
                grad_c0: gc0.as_deref(),
                grad_weights: &gw,
            },
        )?;
        let mut rb = Readback::new();
        rb.copy(ctx, &mut enc, &gi, n * c.input_size)?;
        rb.copy(ctx, &mut enc, &gh0, hn_elems)?;
        rb.copy(ctx, &mut enc, &gw, plan.weight_elems())?;
        if let Some(g) = &gc0 {
            rb.copy(ctx, &mut enc, g, cn_elems)?;
        }
        let mut got = rb.submit_and_read(ctx, enc)?.into_iter();
        let gi_data = next_read(&mut got, "grad_input")?;
        let gh0_data = next_read(&mut got, "grad_h0")?;
        let flat = next_read(&mut got, "grad_weights")?;
        let gc0_data = got.next();
        let mut params = Weights::<f32>::zeros(c)?;
        if flat.len() != params.num_scalars() {
            return Err(Error::LengthMismatch { what: "grad_weights read back".into(), shape: vec![params.num_scalars()], expected: params.num_scalars(), got: flat.len() });
        }
        let mut at = 0;
        params.for_each_mut(|_, _, _, v| {
            let len = v.len();
            v.copy_from_slice(&flat[at..at + len]);
            at += len;
        });
        let layout = plan.layout();
        let input = PackedSequence {
            data: gi_data,
            features: c.input_size,
            batch_sizes: layout.batch_sizes().to_vec(),
            sorted_indices: layout.sorted_indices().to_vec(),
            unsorted_indices: tape.unsorted_indices.clone(),
        };
        Ok(Gradients {
            input,
            h0: Tensor { shape: c.h_shape(b), data: gh0_data },
            c0: gc0_data.map(|data| Tensor { shape: c.c_shape(b), data }),
            params,
        })
    }
}

/// The next buffer a [`Readback`] returned (one per copy recorded, so always present).
fn next_read(got: &mut impl Iterator<Item = Vec<f32>>, what: &str) -> Result<Vec<f32>> {
    got.next().ok_or_else(|| Error::Gpu(format!("readback returned no {what}")))
}
