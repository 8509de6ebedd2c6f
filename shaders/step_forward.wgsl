// Per-step forward kernels: one dispatch per time step computes, for the rows active at t,
// the recurrent product h_prev W_hh^T + b_hh, adds the precomputed input projection, applies
// the cell (one entry point per cell), writes the output row and, in training mode, saves
// what backward needs. Each invocation owns all G gates of one hidden unit for a block of up
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
}

@group(0) @binding(0) var<uniform> p: StepParams;
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read> xp: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> tape: array<f32>;
@group(0) @binding(5) var<storage, read> seq: array<u32>;
@group(0) @binding(6) var<storage, read> wt4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> hp4: array<vec4<f32>>;

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

// The G gate pre-activations from the recurrence, sum_k h_prev[k] W_hh[g*H + j, k] + b_hh,
// for unit j and rows rb..rb+RB, as one vec4 (gates in x, y, z, w) per row.
fn gate_products(j: u32, rb: u32) -> array<vec4<f32>, 8> {
    if (VEC4) {
        return gate_products4(j, rb);
    }
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
    for (var k = 0u; k < ho; k++) {
        let w = p.wt_hh + k * gh + j;
        var wv = vec4<f32>(wt[w], 0.0, 0.0, 0.0);
        if (GATES >= 3u) {
            wv.y = wt[w + hs];
            wv.z = wt[w + 2u * hs];
        }
        if (GATES == 4u) {
            wv.w = wt[w + 3u * hs];
        }
        a0 += tape[h0 + k] * wv;
        a1 += tape[h1 + k] * wv;
        a2 += tape[h2 + k] * wv;
        a3 += tape[h3 + k] * wv;
        a4 += tape[h4 + k] * wv;
        a5 += tape[h5 + k] * wv;
        a6 += tape[h6 + k] * wv;
        a7 += tape[h7 + k] * wv;
    }
    var bias = vec4<f32>(0.0);
    if (p.b_hh != NONE) {
        bias.x = wt[p.b_hh + j];
        if (GATES >= 3u) {
            bias.y = wt[p.b_hh + hs + j];
            bias.z = wt[p.b_hh + 2u * hs + j];
        }
        if (GATES == 4u) {
            bias.w = wt[p.b_hh + 3u * hs + j];
        }
    }
    return array<vec4<f32>, 8>(a0 + bias, a1 + bias, a2 + bias, a3 + bias, a4 + bias, a5 + bias, a6 + bias, a7 + bias);
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
        var w = mat4x4<f32>(wt4[w0 + q], vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
        if (GATES >= 3u) {
            w[1] = wt4[w1 + q];
            w[2] = wt4[w2 + q];
        }
        if (GATES == 4u) {
            w[3] = wt4[w3 + q];
        }
        a0 += hp4[h0 + q] * w;
        a1 += hp4[h1 + q] * w;
        a2 += hp4[h2 + q] * w;
        a3 += hp4[h3 + q] * w;
        a4 += hp4[h4 + q] * w;
        a5 += hp4[h5 + q] * w;
        a6 += hp4[h6 + q] * w;
        a7 += hp4[h7 + q] * w;
    }
    var bias = vec4<f32>(0.0);
    if (p.b_hh != NONE) {
        bias.x = wt[p.b_hh + j];
        if (GATES >= 3u) {
            bias.y = wt[p.b_hh + hs + j];
            bias.z = wt[p.b_hh + 2u * hs + j];
        }
        if (GATES == 4u) {
            bias.w = wt[p.b_hh + 3u * hs + j];
        }
    }
    return array<vec4<f32>, 8>(a0 + bias, a1 + bias, a2 + bias, a3 + bias, a4 + bias, a5 + bias, a6 + bias, a7 + bias);
}

fn tape_gate(n: u32, g: u32, j: u32, v: f32) {
    tape[p.gates_off + n * GATES * p.hidden + g * p.hidden + j] = v;
}

// Writes the new h of row n, unit j, to the output and to the tape's state rows.
fn write_h(n: u32, j: u32, h: f32) {
    out[n * p.out_ld + p.out_col + j] = h;
    tape[p.hs_off + n * p.out_size + j] = h;
}

// LSTM (gates i, f, g, o): c' = f*c + i*g, h' = o*tanh(c'). With projection h' goes to the
// tape's aux region and proj_forward applies W_hr.
@compute @workgroup_size(64)
fn lstm_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let rb = gid.y * RB;
    let hs = p.hidden;
    if (j >= hs || rb >= p.rows) {
        return;
    }
    let acc = gate_products(j, rb);
    for (var t = 0u; t < min(RB, p.rows - rb); t++) {
        let n = p.row_off + rb + t;
        let x = n * 4u * hs + j;
        let a = acc[t];
        let i = sigmoid(xp[x] + a.x);
        let f = sigmoid(xp[x + hs] + a.y);
        let g = tanh_safe(xp[x + 2u * hs] + a.z);
        let o = sigmoid(xp[x + 3u * hs] + a.w);
        let c = f * tape[p.c_off + prev_row(rb, t) * hs + j] + i * g;
        tape[p.c_off + n * hs + j] = c;
        let h = o * tanh_safe(c);
        if (p.wt_hr != NONE) {
            tape[p.aux_off + n * hs + j] = h;
        } else {
            write_h(n, j, h);
        }
        if (p.training != 0u) {
            tape_gate(n, 0u, j, i);
            tape_gate(n, 1u, j, f);
            tape_gate(n, 2u, j, g);
            tape_gate(n, 3u, j, o);
        }
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
        let w = wt[p.wt_hr + j * p.out_size + q];
        a0 += vec4<f32>(tape[r0 + j], tape[r1 + j], tape[r2 + j], tape[r3 + j]) * w;
        a1 += vec4<f32>(tape[r4 + j], tape[r5 + j], tape[r6 + j], tape[r7 + j]) * w;
    }
    let acc = array<f32, 8>(a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w);
    for (var t = 0u; t < min(RB, p.rows - rb); t++) {
        write_h(p.row_off + rb + t, q, acc[t]);
    }
}

// GRU (gates r, z, n): n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1-z)*n + z*h.
// Saves W_hn h + b_hn in the aux region for backward.
@compute @workgroup_size(64)
fn gru_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let rb = gid.y * RB;
    let hs = p.hidden;
    if (j >= hs || rb >= p.rows) {
        return;
    }
    let acc = gate_products(j, rb);
    for (var t = 0u; t < min(RB, p.rows - rb); t++) {
        let n = p.row_off + rb + t;
        let x = n * 3u * hs + j;
        let a = acc[t];
        let rg = sigmoid(xp[x] + a.x);
        let z = sigmoid(xp[x + hs] + a.y);
        let nn = tanh_safe(xp[x + 2u * hs] + rg * a.z);
        let h = (1.0 - z) * nn + z * tape[p.hs_off + prev_row(rb, t) * hs + j];
        write_h(n, j, h);
        if (p.training != 0u) {
            tape_gate(n, 0u, j, rg);
            tape_gate(n, 1u, j, z);
            tape_gate(n, 2u, j, nn);
            tape[p.aux_off + n * hs + j] = a.z;
        }
    }
}

// Vanilla RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh). Saves h' as its "gate".
@compute @workgroup_size(64)
fn rnn_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let rb = gid.y * RB;
    if (j >= p.hidden || rb >= p.rows) {
        return;
    }
    let acc = gate_products(j, rb);
    for (var t = 0u; t < min(RB, p.rows - rb); t++) {
        let n = p.row_off + rb + t;
        let a = xp[n * p.hidden + j] + acc[t].x;
        var h: f32;
        if (RELU) {
            h = max(a, 0.0);
        } else {
            h = tanh_safe(a);
        }
        write_h(n, j, h);
        if (p.training != 0u) {
            tape_gate(n, 0u, j, h);
        }
    }
}
