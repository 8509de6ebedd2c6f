//! The `engine` target's body (fuzz/fuzz_targets/engine.rs; also run by the stable tests,
//! tests/it/fuzz_replay.rs, on lavapipe). The engine API (`gpu::Plan`) of any registered cell,
//! f32 or f16, with or without dropout and zoneout, over hostile buffers: each role's buffer
//! too short or long, with missing or wrong usages, aliased to another role, and the per-state
//! slices too short or too long. Recording must return `Ok` or a typed `Err`, never panic; and
//! when every recording returned `Ok`, finishing and submitting the encoder must raise no wgpu
//! validation error: the plan's own checks come before wgpu's.

use arbitrary::Arbitrary;
use std::sync::{Arc, OnceLock};
use wgpu_rnn::config::Prob;
use wgpu_rnn::cpu::Pass;
use wgpu_rnn::gpu::{BackwardBuffers, Context, ContextOptions, ForwardBuffers, Plan, SeqLayout, StepBuffers, StepPlan, StepStrategy};
use wgpu_rnn::{Mode, PackedSequence, Precision, RnnConfig};

/// Roles: weights, input, output, grad_output, grad_input, grad_weights, counter, then per
/// state (at most 2 used): states0, states_n, grad_states_n, grad_states0.
const ROLES: usize = 7 + 4 * 2;

/// One defect at most per input, so that a check that stops working shows (several defects
/// at once would each be refused by another check).
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Defect {
    None,
    /// A role's buffer `by` elements (1..=2) short, or one long.
    Size { role: u8, short: bool, by: u8 },
    /// A role's buffer without STORAGE, without COPY_DST, or UNIFORM instead.
    Usage { role: u8, kind: u8 },
    /// A role takes another role's buffer.
    Alias { role: u8, of: u8 },
    /// One of the four per-state slices one entry short or long.
    Slice { which: u8, longer: bool },
}

#[derive(Arbitrary, Debug)]
struct Input {
    mode: u8,
    input: u8,
    hidden: u8,
    layers: bool,
    bidirectional: bool,
    lengths: [u8; 4],
    batch: u8,
    training: bool,
    f16: bool,
    dropout: bool,
    zoneout: bool,
    /// Which initial states / final-state gradients are given (bits 0-3), and whether the
    /// backward is given no input gradient (bit 4).
    given: u8,
    defect: Defect,
    /// The one-step plan (`StepPlan`) instead, for a unidirectional stack.
    step: bool,
    /// The step strategy: Auto (the single-dispatch loops at these sizes, where the cell has
    /// them), one dispatch per step, or the loops asked for (refused, typed, where absent).
    strategy: u8,
    /// The convenience type (`GpuRnn`) instead: its async form against its blocking form,
    /// bit for bit, forward and (training) backward, with the binding limit lowered to
    /// `64 * limit` bytes (0: the device's), so that problems split into pieces.
    async_form: bool,
    limit: u8,
    /// Where each role lies in its buffer (engine plan only): `% 3` 0, the whole buffer; 1, a
    /// slice from the device's storage offset alignment to the end of a buffer that much
    /// longer (it must be taken exactly as the whole buffer is); 2, the same with role
    /// `(placement / 3) % roles` starting 4 bytes later, misaligned (refused where it is used).
    /// Last, so that older inputs decode as before with whole buffers.
    placement: u8,
}

/// One input's buffers with its defect applied, and what the defect made of them.
struct Made {
    bufs: Vec<wgpu::Buffer>,
    /// Per role: fewer bytes than the role needs (rounded up to 4), or no STORAGE usage.
    short: Vec<bool>,
    no_storage: Vec<bool>,
    /// The buffer each role binds (an alias binds another role's).
    role: Vec<usize>,
}

/// One buffer per role of `need[k]` elements of `elem_bytes[k]` bytes after `front` bytes, the
/// defect's size or usage change applied to its role and its alias to the role table, made
/// inside an error scope: `None` where wgpu refuses to make one (wgpu's validation, not the
/// plan's).
fn make_buffers(ctx: &Context, need: &[usize], elem_bytes: &[usize], defect: Defect, front: u64, label: &str) -> Option<Made> {
    let roles = need.len();
    let good = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let (mut bufs, mut short, mut no_storage) = (Vec::with_capacity(roles), vec![false; roles], vec![false; roles]);
    for (k, (&elems, &eb)) in need.iter().zip(elem_bytes).enumerate() {
        let (mut usage, mut e) = (good, elems as i64);
        match defect {
            Defect::Size { role, short: s, by } if role as usize % roles == k => e += if s { -(1 + by as i64 % 2) } else { 1 },
            Defect::Usage { role, kind } if role as usize % roles == k => match kind % 3 {
                0 => usage -= wgpu::BufferUsages::STORAGE,
                1 => usage -= wgpu::BufferUsages::COPY_DST,
                _ => usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            },
            _ => {}
        }
        let size = ((e.max(1) as u64 * eb as u64).next_multiple_of(4)).max(4);
        short[k] = size < ((elems * eb) as u64).next_multiple_of(4);
        no_storage[k] = !usage.contains(wgpu::BufferUsages::STORAGE);
        bufs.push(ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size: front + size, usage, mapped_at_creation: false }));
    }
    if pollster::block_on(scope.pop()).is_some() {
        return None;
    }
    let mut role: Vec<usize> = (0..roles).collect();
    if let Defect::Alias { role: r, of } = defect {
        role[r as usize % roles] = of as usize % roles;
    }
    Some(Made { bufs, short, no_storage, role })
}

/// One Vulkan context for every input (lavapipe in CI); `None` without an adapter.
fn context() -> Option<&'static Arc<Context>> {
    static CTX: OnceLock<Option<Arc<Context>>> = OnceLock::new();
    CTX.get_or_init(|| Context::with_options(&ContextOptions { backends: Some(wgpu::Backends::VULKAN), adapter_name: None }).ok()).as_ref()
}

/// Whether the body can run here (a Vulkan adapter exists).
#[allow(dead_code)] // the stable tests ask; the fuzz target does not
pub fn available() -> bool {
    context().is_some()
}

/// The target's body: `arbitrary` bytes.
pub fn run(data: &[u8]) {
    let _ = exercise(data);
}

/// [`run`], saying how far the input got: "no adapter", "undecodable", "config refused",
/// "plan refused", "buffers refused by wgpu", "recording refused" (a typed error) or "recorded
/// and validated", or for the one-step plan "one step refused" / "one step recorded and
/// validated".
pub fn exercise(data: &[u8]) -> &'static str {
    let Some(ctx) = context() else { return "no adapter" };
    let Ok(input) = Input::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else { return "undecodable" };
    let mode = Mode::REGISTRY[input.mode as usize % Mode::REGISTRY.len()];
    let hidden = 1 + input.hidden as usize % 8;
    let mut cfg = RnnConfig::new(mode, 1 + input.input as usize % 6, hidden).layers(1 + input.layers as usize).bidirectional(input.bidirectional);
    if cfg.validate().is_err() {
        cfg = RnnConfig::new(mode, hidden, hidden).layers(cfg.num_layers).bidirectional(cfg.bidirectional);
    }
    if input.f16 {
        cfg = cfg.with_precision(Precision::F16);
    }
    if input.dropout {
        cfg = cfg.dropout(Prob::new(0.25).expect("valid"));
    }
    if input.zoneout {
        cfg = cfg.zoneout(Prob::new(0.25).expect("valid"));
    }
    if cfg.validate().is_err() {
        return "config refused";
    }
    let lengths: Vec<usize> = input.lengths.iter().take(1 + input.batch as usize % 4).map(|&l| 1 + l as usize % 5).collect();
    if lengths.is_empty() {
        return "config refused";
    }
    let (t, b) = (*lengths.iter().max().expect("non-empty"), lengths.len());
    let Ok(x) = PackedSequence::from_padded(&vec![0.25f32; t * b * cfg.input_size], [t, b, cfg.input_size], false, &lengths) else { return "config refused" };
    let Ok(layout) = SeqLayout::of(&x) else { return "config refused" };
    if input.async_form {
        return async_leg(ctx, &cfg, &x, input.training, input.limit);
    }
    if input.step && !cfg.bidirectional {
        return step(ctx, &cfg, b, input.defect);
    }
    let pass = if input.training { Pass::Training } else { Pass::Inference };
    let plan = match input.strategy % 3 {
        0 => Plan::with_seed(ctx, &cfg, &layout, pass, 7),
        1 => Plan::with_strategy(ctx, &cfg, &layout, pass, StepStrategy::PerStep),
        _ => Plan::with_strategy(ctx, &cfg, &layout, pass, StepStrategy::SingleDispatch),
    };
    let plan = match plan {
        Ok(p) => p,
        Err(_) => return "plan refused", // typed (f16 without SHADER_F16, regularisers with f16, a strategy the cell lacks, ...)
    };
    let n = x.rows();
    let bytes = cfg.precision.bytes();
    let states = cfg.states();
    let state_elems = cfg.state_elems(b);
    let state = |i: usize| state_elems.get(i).copied().unwrap_or(4);
    let need: [usize; ROLES] = [
        plan.weight_elems(),
        n * cfg.input_size,
        n * cfg.output_size(),
        n * cfg.output_size(),
        n * cfg.input_size,
        plan.weight_elems(),
        1,
        state(0),
        state(0),
        state(0),
        state(0),
        state(1),
        state(1),
        state(1),
        state(1),
    ];
    let elem_bytes: Vec<usize> = (0..ROLES).map(|k| if k == 6 { 4 } else { bytes }).collect();
    let align = u64::from(ctx.limits().min_storage_buffer_offset_alignment);
    let (front, misaligned) = match input.placement % 3 {
        0 => (0, None),
        1 => (align, None),
        _ => (align, Some((input.placement / 3) as usize % ROLES)),
    };
    let Some(Made { bufs, short, no_storage: _, role }) = make_buffers(ctx, &need, &elem_bytes, input.defect, front, "fuzz") else {
        return "buffers refused by wgpu";
    };
    // Role k's slice: its buffer (another role's, when aliased) from `front` to the end.
    let buf = |k: usize| {
        let b = &bufs[role[k]];
        b.slice((front + if misaligned == Some(k) { 4 } else { 0 }).min(b.size())..)
    };
    let ns = states.len();
    let count = |which: usize| match input.defect {
        Defect::Slice { which: w, longer } if w as usize % 4 == which => if longer { ns + 1 } else { ns.saturating_sub(1) },
        _ => ns,
    }
    .min(2);
    let states0: Vec<Option<wgpu::BufferSlice<'_>>> = (0..count(0)).map(|i| (input.given & (1 << i) != 0).then(|| buf(7 + 4 * i))).collect();
    let states_n: Vec<wgpu::BufferSlice<'_>> = (0..count(1)).map(|i| buf(8 + 4 * i)).collect();
    let grad_states_n: Vec<Option<wgpu::BufferSlice<'_>>> = (0..count(2)).map(|i| (input.given & (4 << i) != 0).then(|| buf(9 + 4 * i))).collect();
    let grad_states0: Vec<wgpu::BufferSlice<'_>> = (0..count(3)).map(|i| buf(10 + 4 * i)).collect();
    let counter = (input.dropout || input.zoneout).then(|| buf(6));
    // Half the backwards want no input gradient (role 4 then unbound).
    let with_dx = input.given & 16 == 0;
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let fwd = ForwardBuffers { weights: buf(0), input: buf(1), output: buf(2), states0: &states0, states_n: &states_n, counter };
    let mut all_ok = plan.record_forward(&mut enc, &fwd).is_ok();
    if input.training {
        let bwd = BackwardBuffers {
            weights: buf(0),
            input: buf(1),
            output: buf(2),
            states0: &states0,
            grad_output: buf(3),
            grad_states_n: &grad_states_n,
            grad_input: with_dx.then(|| buf(4)),
            grad_states0: &grad_states0,
            grad_weights: buf(5),
            counter,
        };
        all_ok &= plan.record_backward(&mut enc, &bwd).is_ok();
    }
    ctx.queue.submit([enc.finish()]);
    let error = pollster::block_on(scope.pop());
    // The defects the plan must refuse, whatever wgpu would say (some, like an input bound as
    // the output of a later dispatch, wgpu's validation cannot see).
    let used = |k: usize| -> bool {
        let training = input.training;
        match k {
            0..=2 => true,
            3 | 5 => training,
            4 => training && with_dx,
            6 => counter.is_some(),
            _ => {
                // Bound only while its list (shortened or lengthened by a Slice defect) has
                // entry i.
                let (i, r) = ((k - 7) / 4, (k - 7) % 4);
                i < ns.min(count(r))
                    && match r {
                        0 => input.given & (1 << i) != 0,
                        1 => true,
                        2 => training && input.given & (4 << i) != 0,
                        _ => training,
                    }
            }
        }
    };
    // What each recording writes: the forward its output and final states, the backward the
    // input and weight gradients and the initial states' gradients (it reads the forward's
    // output). Two roles of one recording that are both read may share a buffer.
    // A cell with a derived matrix (the uRNN) writes it into the weights buffer too.
    let derives = mode.derived(cfg.sizes(0)).is_some();
    let fwd_writes = |k: usize| k == 2 || (k >= 7 && (k - 7) % 4 == 1) || (derives && k == 0);
    let bwd_writes = |k: usize| matches!(k, 4 | 5) || (k >= 7 && (k - 7) % 4 == 3);
    let must_refuse = match input.defect {
        Defect::None => false,
        Defect::Size { role, .. } => short[role as usize % ROLES] && used(role as usize % ROLES),
        Defect::Usage { role, kind } => {
            let k = role as usize % ROLES;
            used(k) && (kind % 3 != 1 || (input.training && matches!(k, 4 | 5)))
        }
        Defect::Alias { role: r, of } => {
            // Within one recording: the forward binds weights, input, output, counter, the
            // initial and final states; the backward all but the final states.
            let (a, b) = (r as usize % ROLES, of as usize % ROLES);
            let forward = |k: usize| matches!(k, 0..=2 | 6) || (k >= 7 && (k - 7) % 4 < 2);
            let backward = |k: usize| k <= 6 || (k >= 7 && (k - 7) % 4 != 1);
            let in_forward = forward(a) && forward(b) && (fwd_writes(a) || fwd_writes(b));
            let in_backward = input.training && backward(a) && backward(b) && (bwd_writes(a) || bwd_writes(b));
            a != b && used(a) && used(b) && (in_forward || in_backward)
        }
        Defect::Slice { which, longer } => {
            let w = which as usize % 4;
            // Slices 2 and 3 (the gradients) are read by the backward only.
            let read = w < 2 || input.training;
            read && ((longer && ns < 2) || (!longer && ns > 0 && (w == 1 || w == 3)))
        }
    };
    // A misaligned slice is refused wherever its role is used (beside any defect).
    let must_refuse = must_refuse || misaligned.is_some_and(used);
    if must_refuse {
        assert!(!all_ok, "{mode} {pass:?} {:?}: {:?} (placement {}) was accepted", cfg.precision, input.defect, input.placement);
    }
    if all_ok {
        assert!(error.is_none(), "{mode} {pass:?} {:?}: every recording returned Ok, and wgpu refused it: {error:?}", cfg.precision);
    }
    let _ = ctx.wait();
    if all_ok {
        "recorded and validated"
    } else {
        "recording refused"
    }
}

/// The one-step plan over at most one defect: roles weights (0), input `[B, I]` (1), output
/// `[B, H_out]` (2), then one `[L, B, S_i]` buffer per state (3, 4: read and overwritten).
/// Refused: a short or non-storage buffer, aliased written roles, a state slice of the wrong
/// length; what is accepted must pass wgpu's validation.
fn step(ctx: &Arc<Context>, cfg: &RnnConfig, b: usize, defect: Defect) -> &'static str {
    let Ok(plan) = StepPlan::new(ctx, cfg, b) else { return "plan refused" };
    let bytes = cfg.precision.bytes();
    let mut need = vec![plan.weight_elems(), b * cfg.input_size, b * cfg.output_size()];
    need.extend(plan.state_elems());
    let roles = need.len();
    let Some(Made { bufs, short, no_storage, role }) = make_buffers(ctx, &need, &vec![bytes; roles], defect, 0, "fuzz step") else {
        return "buffers refused by wgpu";
    };
    let ns = roles - 3;
    let count = match defect {
        Defect::Slice { longer, .. } => if longer { ns + 1 } else { ns - 1 },
        _ => ns,
    };
    let states: Vec<wgpu::BufferSlice<'_>> = (0..count).map(|i| bufs[role[3 + i.min(ns - 1)]].slice(..)).collect();
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    let ok = plan.record_step(&mut enc, &StepBuffers { weights: bufs[role[0]].slice(..), input: bufs[role[1]].slice(..), states: &states, output: bufs[role[2]].slice(..) }).is_ok();
    ctx.queue.submit([enc.finish()]);
    let error = pollster::block_on(scope.pop());
    let must_refuse = match defect {
        Defect::None => false,
        Defect::Size { role, .. } => short[role as usize % roles],
        Defect::Usage { role, .. } => no_storage[role as usize % roles],
        // Written: the output and every state (and the weights, where the cell derives a
        // matrix into them); a longer slice repeats the last state's buffer.
        Defect::Alias { role: r, of } => {
            let (a, o) = (r as usize % roles, of as usize % roles);
            let derives = cfg.mode.derived(cfg.sizes(0)).is_some();
            a != o && (a >= 2 || o >= 2 || (derives && (a == 0 || o == 0)))
        }
        Defect::Slice { .. } => true,
    };
    if must_refuse {
        assert!(!ok, "{} one step: {defect:?} was accepted", cfg.mode);
    }
    if ok {
        assert!(error.is_none(), "{} one step: recording returned Ok, and wgpu refused it: {error:?}", cfg.mode);
    }
    let _ = ctx.wait();
    if ok {
        "one step recorded and validated"
    } else {
        "one step refused"
    }
}

/// Polls `fut`, and the device between polls (as a browser's event loop would), until it is
/// ready; one that never completes is a hang, so a crash.
fn drive<F: std::future::Future>(ctx: &Context, fut: F) -> F::Output {
    let waker = std::task::Waker::noop();
    let mut fut = std::pin::pin!(fut);
    for _ in 0..10_000 {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
            return v;
        }
        let _ = ctx.wait();
    }
    panic!("an async call never completed");
}

/// The `async_form` leg: `GpuRnn`'s async forward and backward give the blocking form's
/// results bit for bit, or the same typed error, whole or split into pieces.
fn async_leg(ctx: &Arc<Context>, cfg: &RnnConfig, x: &PackedSequence<f32>, training: bool, limit: u8) -> &'static str {
    let Ok(w) = wgpu_rnn::Weights::<f32>::init_uniform(cfg, 3) else { return "config refused" };
    let before = ctx.binding_limit();
    if limit > 0 {
        ctx.set_binding_limit(64 * limit as u64);
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let outcome = (|| {
        let Ok(rnn) = wgpu_rnn::gpu::GpuRnn::new(ctx, &w) else { return "async: model refused" };
        let pass = if training { Pass::Training } else { Pass::Inference };
        let (a, b) = match (rnn.forward(x, &[], pass), drive(ctx, rnn.forward_async(x, &[], pass))) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(a), Err(b)) => {
                assert_eq!(std::mem::discriminant(&a), std::mem::discriminant(&b), "{}: blocking {a} but async {b}", cfg.mode);
                return "async: both refused";
            }
            (a, b) => panic!("{}: blocking {:?} but async {:?}", cfg.mode, a.err(), b.err()),
        };
        assert_eq!(bits(&a.0.output.data), bits(&b.0.output.data), "{}: async output differs", cfg.mode);
        for (s, t) in a.0.states.iter().zip(&b.0.states) {
            assert_eq!(bits(&s.data), bits(&t.data), "{}: async final state differs", cfg.mode);
        }
        let (Some(ta), Some(tb)) = (a.1, b.1) else { return "async: forward agrees" };
        let go: Vec<f32> = (0..a.0.output.data.len()).map(|i| (i % 5) as f32 * 0.25 - 0.5).collect();
        match (rnn.backward(&ta, &go, &[]), drive(ctx, rnn.backward_async(&tb, &go, &[]))) {
            (Ok(ga), Ok(gb)) => {
                assert_eq!(bits(&ga.input.data), bits(&gb.input.data), "{}: async input gradient differs", cfg.mode);
                assert_eq!(bits(&ga.params.to_flat()), bits(&gb.params.to_flat()), "{}: async parameter gradients differ", cfg.mode);
                "async: forward and backward agree"
            }
            (Err(a), Err(b)) => {
                assert_eq!(std::mem::discriminant(&a), std::mem::discriminant(&b), "{}: blocking {a} but async {b}", cfg.mode);
                "async: backward refused both ways"
            }
            (a, b) => panic!("{}: backward blocking {:?} but async {:?}", cfg.mode, a.err(), b.err()),
        }
    })();
    ctx.set_binding_limit(before);
    outcome
}
