// Per-step backward kernels, walking the steps in reverse processing order: a cell's
// gate-gradient kernel turns the gradient reaching h (and c) into gate gradients dG, then
// recurrent_grad.wgsl forms dh_prev = dG W_hh for the rows the states came from. After the
// loop, GEMMs over all rows give the weight gradients (gemm.wgsl) and column sums the biases.
// Joined after shared/activations.wgsl and shared/backward.wgsl. Layout "step_backward":
//   @0 params  uniform, dynamic offset: one BackParams per dispatch
//   @1 weights all parameters, flat; W_hr [P, H] at w_hr
//   @2 dy      [N, ld] gradient of the layer output; this direction's columns at out_col
//   @3 tape    what the forward kept: gates [N, G*H], c [N, H], aux [N, H] (GRU W_hn h + b_hn,
//              LSTM-projection o*tanh(c))
//   @4 prev    regions: h_prev [N, H_out] at hprev_off, c_prev [N, H] at cprev_off, gathered
//              before the loop (they also feed the dW_hh GEMM)
//   @5 seq     u32 prev[]: the row each packed row's state came from (a packed row, or N+b
//              for sequence b's initial state)
//   @6 bw      regions: dh_rec [(N+B), H_out] (gradient reaching each row's h from later
//              steps or h_n; rows N.. collect dh0 per caller sequence), dc_rec [(N+B), H],
//              dh_tot [N, P] (projection), dh_pre [N, H] (projection)
//   @7 dg      regions: dG_x [N, G*H] at dgx_off; GRU's hidden-side dG_h [N, G*H] at dgh_off
// Dispatch: gate kernels (ceil(H / 64), rows_t, 1); proj_grad (ceil(H / 64),
// ceil(rows_t / RB), 1), each invocation a block of RB rows. Workgroup 64.


@group(0) @binding(0) var<uniform> p: BackParams;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> tape: array<f32>;
@group(0) @binding(4) var<storage, read> prev: array<f32>;
@group(0) @binding(5) var<storage, read> seq: array<u32>;
@group(0) @binding(6) var<storage, read_write> bw: array<f32>;
@group(0) @binding(7) var<storage, read_write> dg: array<f32>;

// Vanilla RNN: relu instead of tanh.
override RELU: bool = false;

// Projection backward for step t: dh_pre[n, j] = sum_q dh_tot[n, q] * W_hr[q, j]; also keeps
// dh_tot [N, P] for the dW_hr GEMM. Dispatch over j < H.
@compute @workgroup_size(64)
fn proj_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let rb = gid.y * RB;
    if (j >= p.hidden || rb >= p.rows) {
        return;
    }
    let n0 = block_row(rb, 0u);
    let n1 = block_row(rb, 1u);
    let n2 = block_row(rb, 2u);
    let n3 = block_row(rb, 3u);
    let n4 = block_row(rb, 4u);
    let n5 = block_row(rb, 5u);
    let n6 = block_row(rb, 6u);
    let n7 = block_row(rb, 7u);
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    for (var q = 0u; q < p.out_size; q++) {
        let w = weights[p.w_hr + q * p.hidden + j];
        a0 += vec4<f32>(dh_total(n0, q), dh_total(n1, q), dh_total(n2, q), dh_total(n3, q)) * w;
        a1 += vec4<f32>(dh_total(n4, q), dh_total(n5, q), dh_total(n6, q), dh_total(n7, q)) * w;
    }
    let acc = array<f32, 8>(a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w);
    for (var t = 0u; t < min(RB, p.rows - rb); t++) {
        let n = p.row_off + rb + t;
        bw[p.dhpre_off + n * p.hidden + j] = acc[t];
        if (j < p.out_size) {
            bw[p.dhtot_off + n * p.out_size + j] = dh_total(n, j);
        }
    }
}

fn dgx_at(n: u32, g: u32, j: u32) -> u32 {
    return p.dgx_off + n * GATES * p.hidden + g * p.hidden + j;
}

fn gate(n: u32, g: u32, j: u32) -> f32 {
    return tape[p.gates_off + n * GATES * p.hidden + g * p.hidden + j];
}

// LSTM gate gradients; also passes dc_prev = dc * f to the row the cell state came from.
@compute @workgroup_size(64)
fn lstm_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let r = gid.y;
    let hs = p.hidden;
    if (j >= hs || r >= p.rows) {
        return;
    }
    let n = p.row_off + r;
    let i = gate(n, 0u, j);
    let f = gate(n, 1u, j);
    let g = gate(n, 2u, j);
    let o = gate(n, 3u, j);
    let tc = tanh_safe(tape[p.c_off + n * hs + j]);
    let dh = dh_cell(n, j);
    let dc = bw[p.dc_off + n * hs + j] + dh * o * (1.0 - tc * tc);
    dg[dgx_at(n, 0u, j)] = dc * g * i * (1.0 - i);
    dg[dgx_at(n, 1u, j)] = dc * prev[p.cprev_off + n * hs + j] * f * (1.0 - f);
    dg[dgx_at(n, 2u, j)] = dc * i * (1.0 - g * g);
    dg[dgx_at(n, 3u, j)] = dh * tc * o * (1.0 - o);
    bw[p.dc_off + dst_row(n) * hs + j] = dc * f;
}

// GRU gate gradients: the input side (dG_x) and the hidden side (dG_h, whose n block is
// scaled by r because b_hn sits inside the reset product).
@compute @workgroup_size(64)
fn gru_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let r = gid.y;
    let hs = p.hidden;
    if (j >= hs || r >= p.rows) {
        return;
    }
    let n = p.row_off + r;
    let rg = gate(n, 0u, j);
    let z = gate(n, 1u, j);
    let nn = gate(n, 2u, j);
    let dh = dh_total(n, j);
    let hprev = prev[p.hprev_off + n * hs + j];
    let dan = dh * (1.0 - z) * (1.0 - nn * nn);
    let dar = dan * tape[p.aux_off + n * hs + j] * rg * (1.0 - rg);
    let daz = dh * (hprev - nn) * z * (1.0 - z);
    dg[dgx_at(n, 0u, j)] = dar;
    dg[dgx_at(n, 1u, j)] = daz;
    dg[dgx_at(n, 2u, j)] = dan;
    let h = p.dgh_off + n * 3u * hs;
    dg[h + j] = dar;
    dg[h + hs + j] = daz;
    dg[h + 2u * hs + j] = dan * rg;
}

// Vanilla RNN gate gradient: dh * act'(a), from the saved output h' = act(a).
@compute @workgroup_size(64)
fn rnn_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let r = gid.y;
    if (j >= p.hidden || r >= p.rows) {
        return;
    }
    let n = p.row_off + r;
    let h = gate(n, 0u, j);
    let dh = dh_total(n, j);
    var d: f32;
    if (RELU) {
        d = select(0.0, dh, h > 0.0);
    } else {
        d = dh * (1.0 - h * h);
    }
    dg[dgx_at(n, 0u, j)] = d;
}
