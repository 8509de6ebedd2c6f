//! The engine API over slices of buffers: tensors that live inside a larger allocation, as a
//! framework's pooled tensors do (burn's, cubecl's), bound where they lie, with no copy.

use crate::gpu_common::contexts;
use std::sync::Arc;
use wgpu::util::DeviceExt;
use wgpu_rnn::cpu::Pass;
use wgpu_rnn::gpu::{flat_weights, BackwardBuffers, Context, ForwardBuffers, Plan, Readback, SeqLayout, StepBuffers, StepPlan};
use wgpu_rnn::{Error, Mode, PackedSequence, RnnConfig, Weights};

/// What the pool's bytes between slices hold; every one must survive a run bit for bit.
const SENTINEL: u32 = 0x7fc0_dead;
/// Bytes after each slice before the next one's aligned start.
const GAP: u64 = 64;

/// A context with [`Context::with_shared_buffers`] on a device of its own, per backend the
/// tests cover.
fn shared_contexts() -> Vec<Arc<Context>> {
    contexts()
        .iter()
        .map(|c| {
            let backends = match c.adapter_info().backend {
                wgpu::Backend::Vulkan => wgpu::Backends::VULKAN,
                _ => wgpu::Backends::GL,
            };
            let instance = wgpu::Instance::new(wgpu::InstanceDescriptor { backends, ..wgpu::InstanceDescriptor::new_without_display_handle() });
            let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
            let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor { required_limits: adapter.limits(), ..Default::default() })).unwrap();
            let ctx = Context::with_shared_buffers(device, queue, Some(adapter.get_info())).unwrap();
            assert!(ctx.shares_buffers());
            ctx
        })
        .collect()
}

const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// Every role's contents in one buffer, each at an aligned offset, the bytes between them
/// [`SENTINEL`]s.
struct Pool {
    buf: wgpu::Buffer,
    /// Each role's first byte and its f32 elements.
    at: Vec<(u64, usize)>,
    /// The pool's words as uploaded.
    words: Vec<u32>,
}

impl Pool {
    fn new(ctx: &Context, contents: &[Vec<f32>]) -> Pool {
        let align = u64::from(ctx.limits().min_storage_buffer_offset_alignment);
        let (mut at, mut end) = (Vec::new(), 0u64);
        for c in contents {
            let start = end.next_multiple_of(align);
            at.push((start, c.len()));
            end = start + 4 * c.len() as u64 + GAP;
        }
        let mut words = vec![SENTINEL; (end.next_multiple_of(align) / 4) as usize];
        for (c, &(start, _)) in contents.iter().zip(&at) {
            let s = (start / 4) as usize;
            words[s..s + c.len()].copy_from_slice(bytemuck::cast_slice(c));
        }
        let buf = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some("pool"), contents: bytemuck::cast_slice(&words), usage: USAGE });
        Pool { buf, at, words }
    }

    fn slice(&self, i: usize) -> wgpu::BufferSlice<'_> {
        let (start, n) = self.at[i];
        self.buf.slice(start..start + 4 * n as u64)
    }

    /// Role i's elements in `words` (a read-back copy of the pool).
    fn of<'w>(&self, words: &'w [u32], i: usize) -> &'w [u32] {
        let (start, n) = self.at[i];
        &words[(start / 4) as usize..(start / 4) as usize + n]
    }

    /// Panics where a byte outside every slice changed.
    fn check_gaps(&self, words: &[u32], what: &str) {
        let mut inside = vec![false; words.len()];
        for &(start, n) in &self.at {
            inside[(start / 4) as usize..(start / 4) as usize + n].iter_mut().for_each(|b| *b = true);
        }
        for (k, (&got, &was)) in words.iter().zip(&self.words).enumerate() {
            assert!(inside[k] || got == was, "{what}: word {k} outside every slice changed from {was:#x} to {got:#x}");
        }
    }
}

/// The roles of a training forward and backward, in the order of [`contents`].
struct Roles {
    ns: usize,
}

impl Roles {
    const WEIGHTS: usize = 0;
    const INPUT: usize = 1;
    const OUTPUT: usize = 2;
    const GRAD_OUTPUT: usize = 3;
    const GRAD_INPUT: usize = 4;
    const GRAD_WEIGHTS: usize = 5;
    fn states0(&self, i: usize) -> usize {
        6 + i
    }
    fn states_n(&self, i: usize) -> usize {
        6 + self.ns + i
    }
    fn grad_states_n(&self, i: usize) -> usize {
        6 + 2 * self.ns + i
    }
    fn grad_states0(&self, i: usize) -> usize {
        6 + 3 * self.ns + i
    }
    /// The roles the run writes.
    fn written(&self) -> Vec<usize> {
        let mut w = vec![Self::OUTPUT, Self::GRAD_INPUT, Self::GRAD_WEIGHTS];
        w.extend((0..self.ns).map(|i| self.states_n(i)));
        w.extend((0..self.ns).map(|i| self.grad_states0(i)));
        w
    }
}

/// A problem's contents per role (outputs NaN, so an element left unwritten shows).
fn contents(cfg: &RnnConfig, x: &PackedSequence<f32>, seed: u64) -> (Vec<Vec<f32>>, Roles) {
    let w = Weights::<f32>::init_uniform(cfg, seed).unwrap();
    let elems = cfg.state_elems(x.batch());
    let n = x.rows();
    let wave = |len: usize, k: f32| (0..len).map(|i| (i as f32 * k).sin() * 0.5).collect::<Vec<f32>>();
    let flat = flat_weights(&w);
    let mut c = vec![flat.clone(), x.data.clone(), vec![f32::NAN; n * cfg.output_size()], wave(n * cfg.output_size(), 0.37), vec![f32::NAN; n * cfg.input_size], vec![f32::NAN; flat.len()]];
    c.extend(elems.iter().map(|&e| wave(e, 0.11)));
    c.extend(elems.iter().map(|&e| vec![f32::NAN; e]));
    c.extend(elems.iter().map(|&e| wave(e, 0.23)));
    c.extend(elems.iter().map(|&e| vec![f32::NAN; e]));
    (c, Roles { ns: elems.len() })
}

/// Records a training forward and backward with each role bound to `slot(role)`.
fn record<'a>(ctx: &Context, plan: &Plan, r: &Roles, slot: &dyn Fn(usize) -> wgpu::BufferSlice<'a>) -> Result<wgpu::CommandEncoder, Error> {
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let s0: Vec<_> = (0..r.ns).map(|i| Some(slot(r.states0(i)))).collect();
    let sn: Vec<_> = (0..r.ns).map(|i| slot(r.states_n(i))).collect();
    let gsn: Vec<_> = (0..r.ns).map(|i| Some(slot(r.grad_states_n(i)))).collect();
    let gs0: Vec<_> = (0..r.ns).map(|i| slot(r.grad_states0(i))).collect();
    plan.record_forward(&mut enc, &ForwardBuffers { weights: slot(Roles::WEIGHTS), input: slot(Roles::INPUT), output: slot(Roles::OUTPUT), states0: &s0, states_n: &sn, counter: None })?;
    plan.record_backward(
        &mut enc,
        &BackwardBuffers {
            weights: slot(Roles::WEIGHTS),
            input: slot(Roles::INPUT),
            output: slot(Roles::OUTPUT),
            states0: &s0,
            grad_output: slot(Roles::GRAD_OUTPUT),
            grad_states_n: &gsn,
            grad_input: Some(slot(Roles::GRAD_INPUT)),
            grad_states0: &gs0,
            grad_weights: slot(Roles::GRAD_WEIGHTS),
            counter: None,
        },
    )?;
    Ok(enc)
}

fn problem() -> PackedSequence<f32> {
    let (t, b, i) = (6, 3, 5);
    let xs: Vec<f32> = (0..t * b * i).map(|k| (k as f32 * 0.29).cos()).collect();
    PackedSequence::from_padded(&xs, [t, b, i], false, &[6, 3, 5]).unwrap()
}

#[test]
fn slices_of_one_pooled_buffer_give_the_separate_buffers_bits() {
    let x = problem();
    for ctx in shared_contexts() {
        // LSTM (two states, both directions, two layers) on the fused stage kernels; the
        // layer-norm LSTM on the whole-row kernels with pointwise parameters.
        for cfg in [RnnConfig::new(Mode::Lstm, 5, 7).layers(2).bidirectional(true), RnnConfig::new(Mode::LstmLayerNorm, 5, 6)] {
            let what = format!("{} on {}", cfg.mode, ctx.describe());
            let (contents, roles) = contents(&cfg, &x, 7);
            let _serial = ctx.exclusive();
            let plan = Plan::new(&ctx, &cfg, &SeqLayout::of(&x).unwrap(), Pass::Training).unwrap();
            // Separate whole buffers: the reference.
            let own: Vec<wgpu::Buffer> = contents
                .iter()
                .map(|c| ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytemuck::cast_slice(c), usage: USAGE }))
                .collect();
            let mut enc = record(&ctx, &plan, &roles, &|i| own[i].slice(..)).unwrap();
            let mut rb = Readback::new();
            for &i in &roles.written() {
                rb.copy(&ctx, &mut enc, &own[i], contents[i].len()).unwrap();
            }
            let want = rb.submit_and_read(&ctx, enc).unwrap();
            // Every role a slice of one pool, written roles beside read ones.
            let pool = Pool::new(&ctx, &contents);
            let mut enc = record(&ctx, &plan, &roles, &|i| pool.slice(i)).unwrap();
            let mut rb = Readback::new();
            rb.copy(&ctx, &mut enc, &pool.buf, pool.words.len()).unwrap();
            let got = rb.submit_and_read(&ctx, enc).unwrap().remove(0);
            let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            pool.check_gaps(&got, &what);
            for (k, &i) in roles.written().iter().enumerate() {
                let w: Vec<u32> = want[k].iter().map(|v| v.to_bits()).collect();
                assert!(w.iter().all(|&b| f32::from_bits(b).is_finite()), "{what}: role {i} has non-finite values on separate buffers");
                assert_eq!(pool.of(&got, i), &w[..], "{what}: role {i} differs between the pool's slice and a buffer of its own");
            }
        }
    }
}

#[test]
fn slices_are_checked_for_alignment_size_and_overlap() {
    let x = problem();
    let cfg = RnnConfig::new(Mode::Gru, 5, 4);
    let (contents, roles) = contents(&cfg, &x, 3);
    for ctx in shared_contexts() {
        let _serial = ctx.exclusive();
        let plan = Plan::new(&ctx, &cfg, &SeqLayout::of(&x).unwrap(), Pass::Training).unwrap();
        let pool = Pool::new(&ctx, &contents);
        let align = u64::from(ctx.limits().min_storage_buffer_offset_alignment);
        // An input that starts off the device's alignment.
        let (start, n) = pool.at[Roles::INPUT];
        let misaligned = |i: usize| if i == Roles::INPUT { pool.buf.slice(start + 4..start + 4 + 4 * n as u64) } else { pool.slice(i) };
        if align > 4 {
            match record(&ctx, &plan, &roles, &misaligned) {
                Err(Error::Gpu(m)) => assert!(m.contains("min_storage_buffer_offset_alignment"), "{m}"),
                other => panic!("misaligned input: expected Error::Gpu, got {:?}", other.map(|_| ())),
            }
        }
        // A slice one element short.
        let short = |i: usize| if i == Roles::OUTPUT { pool.buf.slice(pool.at[i].0..pool.at[i].0 + 4 * (pool.at[i].1 as u64 - 1)) } else { pool.slice(i) };
        assert!(matches!(record(&ctx, &plan, &roles, &short), Err(Error::ShapeMismatch { .. })), "a short output slice");
        // The output overlapping the input's last bytes: refused, even with shared buffers.
        let overlap = |i: usize| if i == Roles::OUTPUT { pool.buf.slice(start..start + 4 * pool.at[i].1 as u64) } else { pool.slice(i) };
        match record(&ctx, &plan, &roles, &overlap) {
            Err(Error::BufferAliasing(m)) => assert!(m.contains("bytes"), "{m}"),
            other => panic!("overlapping output and input: expected BufferAliasing, got {:?}", other.map(|_| ())),
        }
        // Read roles may share bytes: the input read from the weights' first elements.
        let (w0, wn) = pool.at[Roles::WEIGHTS];
        assert!(wn >= n, "the weights cover the input");
        let shared_read = |i: usize| if i == Roles::INPUT { pool.buf.slice(w0..w0 + 4 * n as u64) } else { pool.slice(i) };
        let enc = record(&ctx, &plan, &roles, &shared_read).expect("two read roles over the same bytes");
        ctx.queue.submit([enc.finish()]);
        ctx.wait().unwrap();
    }
    // Without shared buffers, disjoint slices of one buffer read and written in one dispatch
    // are refused before wgpu would refuse the encoder.
    for ctx in contexts() {
        let _serial = ctx.exclusive();
        let plan = Plan::new(ctx, &cfg, &SeqLayout::of(&x).unwrap(), Pass::Training).unwrap();
        let pool = Pool::new(ctx, &contents);
        match record(ctx, &plan, &roles, &|i| pool.slice(i)) {
            Err(Error::BufferAliasing(m)) => assert!(m.contains("with_shared_buffers"), "{m}"),
            other => panic!("one pool on a context without shared buffers: expected BufferAliasing, got {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn step_plan_runs_on_slices_of_one_pool() {
    let cfg = RnnConfig::new(Mode::Gru, 3, 4);
    let w = Weights::<f32>::init_uniform(&cfg, 5).unwrap();
    let b = 2;
    let x: Vec<f32> = (0..b * 3).map(|k| (k as f32 * 0.7).sin()).collect();
    let h0: Vec<f32> = (0..b * 4).map(|k| (k as f32 * 0.3).cos() * 0.5).collect();
    for ctx in shared_contexts() {
        let _serial = ctx.exclusive();
        let plan = StepPlan::new(&ctx, &cfg, b).unwrap();
        let contents = vec![flat_weights(&w), x.clone(), h0.clone(), vec![f32::NAN; b * 4]];
        fn run(ctx: &Context, plan: &StepPlan, slots: [wgpu::BufferSlice<'_>; 4], read: &dyn Fn(&mut Readback, &mut wgpu::CommandEncoder)) -> Vec<Vec<f32>> {
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            plan.record_step(&mut enc, &StepBuffers { weights: slots[0], input: slots[1], states: &[slots[2]], output: slots[3] }).unwrap();
            let mut rb = Readback::new();
            read(&mut rb, &mut enc);
            rb.submit_and_read(ctx, enc).unwrap()
        }
        let own: Vec<wgpu::Buffer> = contents
            .iter()
            .map(|c| ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytemuck::cast_slice(c), usage: USAGE }))
            .collect();
        let want = run(&ctx, &plan, [0, 1, 2, 3].map(|i| own[i].slice(..)), &|rb, enc| {
            rb.copy(&ctx, enc, &own[2], b * 4).unwrap();
            rb.copy(&ctx, enc, &own[3], b * 4).unwrap();
        });
        let pool = Pool::new(&ctx, &contents);
        let got = run(&ctx, &plan, [0, 1, 2, 3].map(|i| pool.slice(i)), &|rb, enc| {
            rb.copy(&ctx, enc, &pool.buf, pool.words.len()).unwrap();
        });
        let got: Vec<u32> = got[0].iter().map(|v| v.to_bits()).collect();
        pool.check_gaps(&got, "step");
        for (k, i) in [2, 3].into_iter().enumerate() {
            let w: Vec<u32> = want[k].iter().map(|v| v.to_bits()).collect();
            assert!(want[k].iter().all(|v| v.is_finite()));
            assert_eq!(pool.of(&got, i), &w[..], "step role {i} on {}", ctx.describe());
        }
    }
}
