// Per-step forward kernels: one dispatch per time step computes, for the rows active at t,
// the recurrent product h_prev W_hh^T + b_hh, adds the precomputed input projection, applies
// the cell (chosen by the GATES and RELU constants), writes the output row and, in training
// mode, saves what backward needs. Small problems take the single-dispatch loop_step instead. Each invocation owns all G gates of one hidden unit for a block of up
// to RB rows (gate-interleaved, register-blocked), so the update needs no other invocation.
// Joined after shared/activations.wgsl. Layout "step_forward", the kernels' signature:
//   @0 params  uniform, dynamic offset: one StepParams per dispatch, prepared once per plan
//   @1 wt      this layer-direction's weights rearranged for the kernels: W_hh^T [H_out, G*H]
//              at wt_hh, b_hh [G*H] at b_hh (or NONE), W_hr^T [H, P] at wt_hr (or NONE)
//   @2 xp      [N, G*H]   input projection of every packed row, b_ih included
//   @3 out     [N, ld]    layer output; this direction's columns out_col..out_col+H_out
//   @4 tape    regions: gates [N, G*H], c [N+B, H], aux [N, H], hs [N+B, H_out]. Rows N+b of
//              c and hs hold sequence b's initial state (copied in before the first step).
//   @5 seq     u32 prev[n]: the c/hs row that packed row n starts from (a packed row or N+b)
//   @6 wt4     `wt` seen as vec4s: W_hh [G*H, H_out] row-major at w4_off (VEC4 variant)
//   @7 hp4     [rows_t, H_out] as vec4s: the states step t's rows start from, gathered by
//              the dispatch before (VEC4 variant)
// Dispatch: (ceil(width / 64), ceil(rows_t / RB), 1), workgroup 64: x = unit, y = row block.

const RB: u32 = 8u;

struct StepParams {
    row_off: u32,     // packed row of step t's first row
    rows: u32,        // rows active at step t
    hidden: u32,      // H
    out_size: u32,    // H_out (P with projection)
    out_ld: u32,      // row stride of `out` (D * H_out)
    out_col: u32,     // this direction's first column in `out`
    wt_hh: u32,       // offset of W_hh^T in `wt`
    b_hh: u32,        // offset of b_hh in `wt`, or NONE
    wt_hr: u32,       // offset of W_hr^T in `wt`, or NONE
    prev_off: u32,    // offset of this direction's prev[] in `seq`
    gates_off: u32,   // tape regions
    c_off: u32,
    aux_off: u32,
    hs_off: u32,
    training: u32,    // 1: save what backward needs
    w4_off: u32,      // offset of row-major W_hh in `wt` (a multiple of 4; VEC4 variant)
    // The single-dispatch path (*_loop) only:
    steps: u32,       // T
    reverse: u32,     // 1: walk t = T-1 .. 0
    off_tab: u32,     // offset in `seq` of the step offsets off[t]
    bs_tab: u32,      // offset in `seq` of batch_sizes[t]
    init_off: u32,    // offset in `seq` of init[r]: the initial-state row of sorted row r
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: StepParams;
@group(0) @binding(1) var<storage, read> wt: array<S>;
@group(0) @binding(2) var<storage, read> xp: array<S>;
@group(0) @binding(3) var<storage, read_write> out: array<S>;
@group(0) @binding(4) var<storage, read_write> tape: array<S>;
@group(0) @binding(5) var<storage, read> seq: array<u32>;
@group(0) @binding(6) var<storage, read> wt4: array<vec4<S>>;
@group(0) @binding(7) var<storage, read> hp4: array<vec4<S>>;

override GATES: u32 = 4u;
// Vanilla RNN: relu instead of tanh.
override RELU: bool = false;
// H_out is a multiple of 4: read W_hh rows and the gathered states as vec4s along k (on
// lavapipe a vec4 per invocation loads far faster than four scalars).
override VEC4: bool = false;

// The c/hs row the t-th row of block rb starts from; rows past the end repeat the last one.
fn prev_row(rb: u32, t: u32) -> u32 {
    return seq[p.prev_off + p.row_off + min(rb + t, p.rows - 1u)];
}

// Unit j's G gate values of a [G*H] vector at `base` in `wt`, as a vec4 (unused gates 0).
fn wt_gates(base: u32, j: u32) -> vec4<f32> {
    let hs = p.hidden;
    var v = vec4<f32>(f32(wt[base + j]), 0.0, 0.0, 0.0);
    if (GATES >= 3u) {
        v.y = f32(wt[base + hs + j]);
        v.z = f32(wt[base + 2u * hs + j]);
    }
    if (GATES == 4u) {
        v.w = f32(wt[base + 3u * hs + j]);
    }
    return v;
}

// b_hh of unit j's gates (zeros without bias).
fn hh_bias(j: u32) -> vec4<f32> {
    if (p.b_hh == NONE) {
        return vec4<f32>(0.0);
    }
    return wt_gates(p.b_hh, j);
}

// The G gate pre-activations from the recurrence, sum_k h_prev[k] W_hh[g*H + j, k] + b_hh,
// for unit j and rows rb..rb+RB, as one vec4 (gates in x, y, z, w) per row.
fn gate_products(j: u32, rb: u32) -> array<vec4<f32>, 8> {
    if (VEC4) {
        return gate_products4(j, rb);
    }
    let a = gate_partial(j, rb, 0u, 1u);
    let bias = hh_bias(j);
    return array<vec4<f32>, 8>(a[0] + bias, a[1] + bias, a[2] + bias, a[3] + bias, a[4] + bias, a[5] + bias, a[6] + bias, a[7] + bias);
}

// The recurrent products over k = k0, k0 + kstep, ... < H_out only (no bias), from W_hh^T
// (neighbouring units on neighbouring addresses).
fn gate_partial(j: u32, rb: u32, k0: u32, kstep: u32) -> array<vec4<f32>, 8> {
    let hs = p.hidden;
    let gh = GATES * hs;
    let ho = p.out_size;
    let h0 = p.hs_off + prev_row(rb, 0u) * ho;
    let h1 = p.hs_off + prev_row(rb, 1u) * ho;
    let h2 = p.hs_off + prev_row(rb, 2u) * ho;
    let h3 = p.hs_off + prev_row(rb, 3u) * ho;
    let h4 = p.hs_off + prev_row(rb, 4u) * ho;
    let h5 = p.hs_off + prev_row(rb, 5u) * ho;
    let h6 = p.hs_off + prev_row(rb, 6u) * ho;
    let h7 = p.hs_off + prev_row(rb, 7u) * ho;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    for (var k = k0; k < ho; k += kstep) {
        let wv = wt_gates(p.wt_hh + k * gh, j);
        a0 += f32(tape[h0 + k]) * wv;
        a1 += f32(tape[h1 + k]) * wv;
        a2 += f32(tape[h2 + k]) * wv;
        a3 += f32(tape[h3 + k]) * wv;
        a4 += f32(tape[h4 + k]) * wv;
        a5 += f32(tape[h5 + k]) * wv;
        a6 += f32(tape[h6 + k]) * wv;
        a7 += f32(tape[h7 + k]) * wv;
    }
    return array<vec4<f32>, 8>(a0, a1, a2, a3, a4, a5, a6, a7);
}

// gate_products with vec4 loads along k: W_hh rows from wt4, states from hp4.
fn gate_products4(j: u32, rb: u32) -> array<vec4<f32>, 8> {
    let hs = p.hidden;
    let kq = p.out_size / 4u;
    let last = p.rows - 1u;
    let w0 = p.w4_off / 4u + j * kq;
    let w1 = w0 + hs * kq;
    let w2 = w1 + hs * kq;
    let w3 = w2 + hs * kq;
    let h0 = min(rb, last) * kq;
    let h1 = min(rb + 1u, last) * kq;
    let h2 = min(rb + 2u, last) * kq;
    let h3 = min(rb + 3u, last) * kq;
    let h4 = min(rb + 4u, last) * kq;
    let h5 = min(rb + 5u, last) * kq;
    let h6 = min(rb + 6u, last) * kq;
    let h7 = min(rb + 7u, last) * kq;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    for (var q = 0u; q < kq; q++) {
        // Columns: one gate each (x, y, z, w); unused gates stay zero.
        var w = mat4x4<f32>(vec4<f32>(wt4[w0 + q]), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
        if (GATES >= 3u) {
            w[1] = vec4<f32>(wt4[w1 + q]);
            w[2] = vec4<f32>(wt4[w2 + q]);
        }
        if (GATES == 4u) {
            w[3] = vec4<f32>(wt4[w3 + q]);
        }
        a0 += vec4<f32>(hp4[h0 + q]) * w;
        a1 += vec4<f32>(hp4[h1 + q]) * w;
        a2 += vec4<f32>(hp4[h2 + q]) * w;
        a3 += vec4<f32>(hp4[h3 + q]) * w;
        a4 += vec4<f32>(hp4[h4 + q]) * w;
        a5 += vec4<f32>(hp4[h5 + q]) * w;
        a6 += vec4<f32>(hp4[h6 + q]) * w;
        a7 += vec4<f32>(hp4[h7 + q]) * w;
    }
    let bias = hh_bias(j);
    return array<vec4<f32>, 8>(a0 + bias, a1 + bias, a2 + bias, a3 + bias, a4 + bias, a5 + bias, a6 + bias, a7 + bias);
}

fn tape_gate(n: u32, g: u32, j: u32, v: f32) {
    tape[p.gates_off + n * GATES * p.hidden + g * p.hidden + j] = S(v);
}

// Writes the new h of row n, unit j, to the output and to the tape's state rows.
fn write_h(n: u32, j: u32, h: f32) {
    out[n * p.out_ld + p.out_col + j] = S(h);
    tape[p.hs_off + n * p.out_size + j] = S(h);
}

// One cell update for one unit: the new h (before projection) and c, and what backward
// needs (the activated gates, and GRU's W_hn h + b_hn in `aux`).
struct Cell {
    h: f32,
    c: f32,
    gates: vec4<f32>,
    aux: f32,
}

// x: the input projection of the G gates, a: their recurrent products (b_hh included);
// c_prev (LSTM) or h_prev (GRU) of this unit.
fn cell(x: vec4<f32>, a: vec4<f32>, c_prev: f32, h_prev: f32) -> Cell {
    var o: Cell;
    if (GATES == 4u) {
        // LSTM (gates i, f, g, o): c' = f*c + i*g, h' = o*tanh(c').
        let i = sigmoid(x.x + a.x);
        let f = sigmoid(x.y + a.y);
        let g = tanh_safe(x.z + a.z);
        let og = sigmoid(x.w + a.w);
        o.c = f * c_prev + i * g;
        o.h = og * tanh_safe(o.c);
        o.gates = vec4<f32>(i, f, g, og);
    } else if (GATES == 3u) {
        // GRU (gates r, z, n): n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1-z)*n + z*h.
        let r = sigmoid(x.x + a.x);
        let z = sigmoid(x.y + a.y);
        let nn = tanh_safe(x.z + r * a.z);
        o.h = (1.0 - z) * nn + z * h_prev;
        o.gates = vec4<f32>(r, z, nn, 0.0);
        o.aux = a.z;
    } else {
        // Vanilla RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh); its "gate" is h'.
        let pre = x.x + a.x;
        if (RELU) {
            o.h = max(pre, 0.0);
        } else {
            o.h = tanh_safe(pre);
        }
        o.gates = vec4<f32>(o.h, 0.0, 0.0, 0.0);
    }
    return o;
}

// The input projection of unit j's G gates for packed row n.
fn xp_gates(n: u32, j: u32) -> vec4<f32> {
    let hs = p.hidden;
    let x = n * GATES * hs + j;
    var v = vec4<f32>(f32(xp[x]), 0.0, 0.0, 0.0);
    if (GATES >= 3u) {
        v.y = f32(xp[x + hs]);
        v.z = f32(xp[x + 2u * hs]);
    }
    if (GATES == 4u) {
        v.w = f32(xp[x + 3u * hs]);
    }
    return v;
}

// Stores a cell's results for packed row n: c and h (to the output, or to aux for the
// projection kernel), and in training mode the gates and GRU's aux.
fn store(n: u32, j: u32, o: Cell) {
    let hs = p.hidden;
    if (GATES == 4u) {
        tape[p.c_off + n * hs + j] = S(o.c);
    }
    if (GATES == 4u && p.wt_hr != NONE) {
        tape[p.aux_off + n * hs + j] = S(o.h);
    } else {
        write_h(n, j, o.h);
    }
    if (p.training != 0u) {
        for (var g = 0u; g < GATES; g++) {
            tape_gate(n, g, j, o.gates[g]);
        }
        if (GATES == 3u) {
            tape[p.aux_off + n * hs + j] = S(o.aux);
        }
    }
}

// One step for unit j of a block of RB rows (every cell; GATES and RELU choose it).
fn step_block(j: u32, rb: u32) {
    finish_block(j, rb, gate_products(j, rb));
}

// The cell update of unit j for the block's rows, given their recurrent products `acc`
// (b_hh included).
fn finish_block(j: u32, rb: u32, acc: array<vec4<f32>, 8>) {
    let hs = p.hidden;
    for (var t = 0u; t < min(RB, p.rows - rb); t++) {
        let n = p.row_off + rb + t;
        let pv = prev_row(rb, t);
        var c_prev = 0.0;
        var h_prev = 0.0;
        if (GATES == 4u) {
            c_prev = f32(tape[p.c_off + pv * hs + j]);
        }
        if (GATES == 3u) {
            h_prev = f32(tape[p.hs_off + pv * hs + j]);
        }
        store(n, j, cell(xp_gates(n, j), acc[t], c_prev, h_prev));
    }
}

// One step of any cell (GATES and RELU choose it): unit x, row block y.
@compute @workgroup_size(64)
fn step(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x < p.hidden && gid.y * RB < p.rows) {
        step_block(gid.x, gid.y * RB);
    }
}

// The GPU-shaped step (Kernel::Step { split: true }, StepStrategy::PerStepSplit): the
// k-reduction of the recurrent product split across the workgroup, so a step runs KS times
// the invocations of `step` with a KS times shorter loop each (a discrete GPU has thousands
// of lanes per step to fill; `step` gives one per unit and row block). Workgroup (SU, KS):
// SU adjacent units (neighbouring addresses of W_hh^T) x KS slices of k; invocation (u, s)
// sums k = s, s + KS, ... for its unit and the block's RB rows, the partial sums meet in
// workgroup memory, and slice 0 adds them in slice order (a fixed order: reproducible) and
// updates the cell. Dispatch: (ceil(H / SU), ceil(rows / RB), 1).
const SU: u32 = 16u;
const KS: u32 = 4u;
var<workgroup> partial: array<array<vec4<f32>, 8>, 64>;

@compute @workgroup_size(16, 4)
fn step_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = wid.x * SU + lid.x;
    let rb = wid.y * RB;
    let live = j < p.hidden && rb < p.rows;
    var acc = array<vec4<f32>, 8>();
    if (live) {
        acc = gate_partial(j, rb, lid.y, KS);
    }
    partial[lid.y * SU + lid.x] = acc;
    // Uniform control flow: every invocation reaches the barrier.
    workgroupBarrier();
    if (live && lid.y == 0u) {
        var sum = partial[lid.x];
        for (var s = 1u; s < KS; s++) {
            let o = partial[s * SU + lid.x];
            for (var t = 0u; t < RB; t++) {
                sum[t] += o[t];
            }
        }
        let bias = hh_bias(j);
        for (var t = 0u; t < RB; t++) {
            sum[t] += bias;
        }
        finish_block(j, rb, sum);
    }
}

// LSTM projection: h[n, q] = sum_j W_hr[q, j] * (o*tanh(c))[n, j]. Dispatch over q < P.
@compute @workgroup_size(64)
fn proj_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let q = gid.x;
    let rb = gid.y * RB;
    if (q >= p.out_size || rb >= p.rows) {
        return;
    }
    let hs = p.hidden;
    let last = p.rows - 1u;
    let r0 = p.aux_off + (p.row_off + min(rb, last)) * hs;
    let r1 = p.aux_off + (p.row_off + min(rb + 1u, last)) * hs;
    let r2 = p.aux_off + (p.row_off + min(rb + 2u, last)) * hs;
    let r3 = p.aux_off + (p.row_off + min(rb + 3u, last)) * hs;
    let r4 = p.aux_off + (p.row_off + min(rb + 4u, last)) * hs;
    let r5 = p.aux_off + (p.row_off + min(rb + 5u, last)) * hs;
    let r6 = p.aux_off + (p.row_off + min(rb + 6u, last)) * hs;
    let r7 = p.aux_off + (p.row_off + min(rb + 7u, last)) * hs;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    for (var j = 0u; j < hs; j++) {
        let w = f32(wt[p.wt_hr + j * p.out_size + q]);
        a0 += vec4<f32>(f32(tape[r0 + j]), f32(tape[r1 + j]), f32(tape[r2 + j]), f32(tape[r3 + j])) * w;
        a1 += vec4<f32>(f32(tape[r4 + j]), f32(tape[r5 + j]), f32(tape[r6 + j]), f32(tape[r7 + j])) * w;
    }
    let acc = array<f32, 8>(a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w);
    for (var t = 0u; t < min(RB, p.rows - rb); t++) {
        write_h(p.row_off + rb + t, q, acc[t]);
    }
}

// ---- The single-dispatch path for small problems ----
// One dispatch walks a run of consecutive steps of one layer-direction (every step, unless the
// adapter's budget of loop iterations per invocation cuts the sequence into several runs: see
// `loop_runs` in plan.rs): each workgroup owns LOOP_ROWS sorted rows for the whole run (rows
// do not depend on each other, so no cross-workgroup synchronisation is needed) and keeps their
// h in workgroup memory; invocation j owns unit j and keeps c in registers. A run starts from
// the states in the tape (the row each row's state came from, through prev[], or its initial
// state row where it starts later), so runs chain through the tape. Requires H_out == H <=
// LOOP_UNITS (no projection). Writes the same output and tape as the per-step kernels, so
// backward and the h_n gathers are shared.
// For a run, `steps` is its length and `off_tab` / `bs_tab` point at its first time step's
// entries (the smallest t of the run), so local step s is time off_tab-relative ts.
// Dispatch: (ceil(rows of the run's widest step / LOOP_ROWS), 1, 1), workgroup LOOP_UNITS.
const LOOP_ROWS: u32 = 4u;
const LOOP_UNITS: u32 = 256u;

var<workgroup> hloop: array<f32, 1024>;

@compute @workgroup_size(256)
fn loop_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    loop_body(wid.x, lid.x);
}

// The same with 64 invocations, for H <= 64: fewer idle invocations to carry through each
// barrier (on lavapipe every barrier switches between the workgroup's 8-wide fibers).
@compute @workgroup_size(64)
fn loop_step_64(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    loop_body(wid.x, lid.x);
}

// The run's local time of processing step s.
fn loop_time(s: u32) -> u32 {
    return select(s, p.steps - 1u - s, p.reverse != 0u);
}

fn loop_body(wg: u32, j: u32) {
    let hs = p.hidden;
    let gh = GATES * hs;
    let r0 = wg * LOOP_ROWS;
    // Rows of the run's widest step (its smallest time): every row the run touches.
    let batch = seq[p.bs_tab];
    let unit = j < hs;
    let t0 = loop_time(0u);
    let rows0 = seq[p.bs_tab + t0];
    let off0 = seq[p.off_tab + t0];
    var c = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var t = 0u; t < LOOP_ROWS; t++) {
        let r = r0 + t;
        if (unit && r < batch) {
            // The state the row enters the run with: where its first step's state comes from,
            // or its initial state if it starts later in the run (the reverse direction).
            let init = select(seq[p.init_off + r], seq[p.prev_off + off0 + r], r < rows0);
            hloop[t * LOOP_UNITS + j] = f32(tape[p.hs_off + init * hs + j]);
            if (GATES == 4u) {
                c[t] = f32(tape[p.c_off + init * hs + j]);
            }
        }
    }
    workgroupBarrier();
    var s = 0u;
    for (; s < p.steps; s++) {
        let ts = loop_time(s);
        let rows = seq[p.bs_tab + ts];
        let off = seq[p.off_tab + ts];
        var results: array<Cell, 4>;
        if (unit) {
            for (var t = 0u; t < LOOP_ROWS; t++) {
                if (r0 + t < rows) {
                    var a = vec4<f32>(0.0);
                    for (var k = 0u; k < hs; k++) {
                        a += hloop[t * LOOP_UNITS + k] * wt_gates(p.wt_hh + k * gh, j);
                    }
                    a += hh_bias(j);
                    let n = off + r0 + t;
                    results[t] = cell(xp_gates(n, j), a, c[t], hloop[t * LOOP_UNITS + j]);
                }
            }
        }
        workgroupBarrier();
        if (unit) {
            for (var t = 0u; t < LOOP_ROWS; t++) {
                if (r0 + t < rows) {
                    let n = off + r0 + t;
                    c[t] = f32(S(results[t].c));
                    hloop[t * LOOP_UNITS + j] = f32(S(results[t].h));
                    store(n, j, results[t]);
                }
            }
        }
        workgroupBarrier();
    }
    // An adapter that ends loops after a fixed number of iterations (Mesa's gallivm, behind
    // lavapipe and llvmpipe) leaves the loop early without an error, and every later loop of
    // the invocation ends at once. The plan sizes runs to stay within that budget (with a
    // margin); should a run still be cut short, a backstop in straight-line code (no loop):
    // the rows of the run's last step get NaN, which the next run and h_n of the sequences
    // ending there carry on. (A sequence that ends earlier inside a cut run is not marked.)
    if (s < p.steps && unit) {
        let tl = loop_time(p.steps - 1u);
        let rl = seq[p.bs_tab + tl];
        let ol = seq[p.off_tab + tl];
        if (r0 < rl) { poison_row(ol + r0, j); }
        if (r0 + 1u < rl) { poison_row(ol + r0 + 1u, j); }
        if (r0 + 2u < rl) { poison_row(ol + r0 + 2u, j); }
        if (r0 + 3u < rl) { poison_row(ol + r0 + 3u, j); }
    }
}

// NaN in unit j's h (output and tape) and c of packed row n.
fn poison_row(n: u32, j: u32) {
    write_h(n, j, poison(j));
    if (GATES == 4u) {
        tape[p.c_off + n * p.hidden + j] = S(poison(j));
    }
}
