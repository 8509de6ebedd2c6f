// Per-step forward kernels: one dispatch per time step computes, for the rows active at t,
// the recurrent product h_prev W_hh^T + b_hh, adds the precomputed input projection, applies
// the cell (one entry point per cell), writes the output row and, in training mode, saves
// what backward needs. Each invocation owns all G gates of its hidden unit (gate-interleaved),
// so the update needs no other invocation.
// Joined after shared/activations.wgsl. Layout "step_forward": the kernel's signature.
//   @0 params  uniform, dynamic offset: one StepParams per dispatch, prepared once per plan
//   @1 weights all parameters of the stack, flat, in state_dict order
//   @2 xp      [N, G*H]   input projection of every packed row, b_ih included
//   @3 out     [N, ld]    layer output; this direction's columns out_col..out_col+H_out.
//                         Rows of earlier steps are read as h_prev, so h needs no ping-pong.
//   @4 h0      [L*D, B, H_out] initial hidden state, caller's batch order (dummy when absent)
//   @5 c0      [L*D, B, H]     initial cell state (LSTM; dummy when absent)
//   @6 tape    regions: gates [N, G*H] at gates_off, c [N, H] at c_off, aux [N, H] at aux_off
//   @7 seq     u32: prev[n] = packed row of the state row n starts from, or FROM_STATE0|b
// Dispatch: (ceil(H / 64), rows_t, 1), workgroup 64: x = hidden unit, y = row of step t.

struct StepParams {
    row_off: u32,     // packed row of step t's first row
    rows: u32,        // rows active at step t
    hidden: u32,      // H
    out_size: u32,    // H_out (P with projection)
    out_ld: u32,      // row stride of `out` (D * H_out)
    out_col: u32,     // this direction's first column in `out`
    w_hh: u32,        // offset of W_hh [G*H, H_out] in `weights`
    b_hh: u32,        // offset of b_hh [G*H], or NONE
    w_hr: u32,        // offset of W_hr [P, H], or NONE
    h0_off: u32,      // offset of this layer-direction's [B, H_out] block in h0, or NONE
    c0_off: u32,      // offset of its [B, H] block in c0, or NONE
    prev_off: u32,    // offset of this direction's prev[] in seq
    gates_off: u32,   // tape regions
    c_off: u32,
    aux_off: u32,
    training: u32,    // 1: save what backward needs
}

@group(0) @binding(0) var<uniform> p: StepParams;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
@group(0) @binding(2) var<storage, read> xp: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> h0: array<f32>;
@group(0) @binding(5) var<storage, read> c0: array<f32>;
@group(0) @binding(6) var<storage, read_write> tape: array<f32>;
@group(0) @binding(7) var<storage, read> seq: array<u32>;

// Element k of the state row n starts from: a row of `out` or of h0 (zeros without h0).
fn h_prev(pv: u32, k: u32) -> f32 {
    if ((pv & FROM_STATE0) != 0u) {
        if (p.h0_off == NONE) {
            return 0.0;
        }
        return h0[p.h0_off + (pv & INDEX_MASK) * p.out_size + k];
    }
    return out[pv * p.out_ld + p.out_col + k];
}

// The cell state row n starts from (LSTM).
fn c_prev(pv: u32, j: u32) -> f32 {
    if ((pv & FROM_STATE0) != 0u) {
        if (p.c0_off == NONE) {
            return 0.0;
        }
        return c0[p.c0_off + (pv & INDEX_MASK) * p.hidden + j];
    }
    return tape[p.c_off + pv * p.hidden + j];
}

// sum_k h_prev[k] * W_hh[row, k] + b_hh[row]
fn recurrent_dot(pv: u32, row: u32) -> f32 {
    var acc = 0.0;
    let w = p.w_hh + row * p.out_size;
    if ((pv & FROM_STATE0) != 0u) {
        if (p.h0_off != NONE) {
            let base = p.h0_off + (pv & INDEX_MASK) * p.out_size;
            for (var k = 0u; k < p.out_size; k++) {
                acc += h0[base + k] * weights[w + k];
            }
        }
    } else {
        let base = pv * p.out_ld + p.out_col;
        for (var k = 0u; k < p.out_size; k++) {
            acc += out[base + k] * weights[w + k];
        }
    }
    if (p.b_hh != NONE) {
        acc += weights[p.b_hh + row];
    }
    return acc;
}

fn tape_gate(n: u32, g: u32, j: u32, v: f32) {
    tape[p.gates_off + n * GATES * p.hidden + g * p.hidden + j] = v;
}

override GATES: u32 = 4u;

// LSTM (gates i, f, g, o): c' = f*c + i*g, h' = o*tanh(c'). With projection h' goes to the
// tape's aux region and proj_forward applies W_hr.
@compute @workgroup_size(64)
fn lstm_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let r = gid.y;
    let hs = p.hidden;
    if (j >= hs || r >= p.rows) {
        return;
    }
    let n = p.row_off + r;
    let pv = seq[p.prev_off + n];
    let x = n * 4u * hs;
    let i = sigmoid(xp[x + j] + recurrent_dot(pv, j));
    let f = sigmoid(xp[x + hs + j] + recurrent_dot(pv, hs + j));
    let g = tanh_safe(xp[x + 2u * hs + j] + recurrent_dot(pv, 2u * hs + j));
    let o = sigmoid(xp[x + 3u * hs + j] + recurrent_dot(pv, 3u * hs + j));
    let c = f * c_prev(pv, j) + i * g;
    tape[p.c_off + n * hs + j] = c;
    let h = o * tanh_safe(c);
    if (p.w_hr != NONE) {
        tape[p.aux_off + n * hs + j] = h;
    } else {
        out[n * p.out_ld + p.out_col + j] = h;
    }
    if (p.training != 0u) {
        tape_gate(n, 0u, j, i);
        tape_gate(n, 1u, j, f);
        tape_gate(n, 2u, j, g);
        tape_gate(n, 3u, j, o);
    }
}

// LSTM projection: out[n, q] = sum_j W_hr[q, j] * (o*tanh(c))[n, j]. Dispatch over q < P.
@compute @workgroup_size(64)
fn proj_forward(@builtin(global_invocation_id) gid: vec3<u32>) {
    let q = gid.x;
    let r = gid.y;
    if (q >= p.out_size || r >= p.rows) {
        return;
    }
    let n = p.row_off + r;
    var acc = 0.0;
    for (var j = 0u; j < p.hidden; j++) {
        acc += weights[p.w_hr + q * p.hidden + j] * tape[p.aux_off + n * p.hidden + j];
    }
    out[n * p.out_ld + p.out_col + q] = acc;
}

// GRU (gates r, z, n): n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1-z)*n + z*h.
// Saves W_hn h + b_hn in the aux region for backward.
@compute @workgroup_size(64)
fn gru_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let r = gid.y;
    let hs = p.hidden;
    if (j >= hs || r >= p.rows) {
        return;
    }
    let n = p.row_off + r;
    let pv = seq[p.prev_off + n];
    let x = n * 3u * hs;
    let rg = sigmoid(xp[x + j] + recurrent_dot(pv, j));
    let z = sigmoid(xp[x + hs + j] + recurrent_dot(pv, hs + j));
    let hn = recurrent_dot(pv, 2u * hs + j);
    let nn = tanh_safe(xp[x + 2u * hs + j] + rg * hn);
    let h = (1.0 - z) * nn + z * h_prev(pv, j);
    out[n * p.out_ld + p.out_col + j] = h;
    if (p.training != 0u) {
        tape_gate(n, 0u, j, rg);
        tape_gate(n, 1u, j, z);
        tape_gate(n, 2u, j, nn);
        tape[p.aux_off + n * hs + j] = hn;
    }
}

// Vanilla RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh); RELU selects relu over tanh.
override RELU: bool = false;

@compute @workgroup_size(64)
fn rnn_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let r = gid.y;
    if (j >= p.hidden || r >= p.rows) {
        return;
    }
    let n = p.row_off + r;
    let pv = seq[p.prev_off + n];
    let a = xp[n * p.hidden + j] + recurrent_dot(pv, j);
    var h: f32;
    if (RELU) {
        h = max(a, 0.0);
    } else {
        h = tanh_safe(a);
    }
    out[n * p.out_ld + p.out_col + j] = h;
    if (p.training != 0u) {
        tape_gate(n, 0u, j, h);
    }
}
