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
@group(0) @binding(1) var<storage, read> weights: array<S>;
@group(0) @binding(2) var<storage, read> dy: array<S>;
@group(0) @binding(3) var<storage, read> tape: array<S>;
@group(0) @binding(4) var<storage, read> prev: array<S>;
@group(0) @binding(5) var<storage, read> seq: array<u32>;
@group(0) @binding(6) var<storage, read_write> bw: array<S>;
@group(0) @binding(7) var<storage, read_write> dg: array<S>;

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
        let w = f32(weights[p.w_hr + q * p.hidden + j]);
        a0 += vec4<f32>(dh_total(n0, q), dh_total(n1, q), dh_total(n2, q), dh_total(n3, q)) * w;
        a1 += vec4<f32>(dh_total(n4, q), dh_total(n5, q), dh_total(n6, q), dh_total(n7, q)) * w;
    }
    let acc = array<f32, 8>(a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w);
    for (var t = 0u; t < min(RB, p.rows - rb); t++) {
        let n = p.row_off + rb + t;
        bw[p.dhpre_off + n * p.hidden + j] = S(acc[t]);
        if (j < p.out_size) {
            bw[p.dhtot_off + n * p.out_size + j] = S(dh_total(n, j));
        }
    }
}

fn dgx_at(n: u32, g: u32, j: u32) -> u32 {
    return p.dgx_off + n * GATES * p.hidden + g * p.hidden + j;
}

fn gate(n: u32, g: u32, j: u32) -> f32 {
    return f32(tape[p.gates_off + n * GATES * p.hidden + g * p.hidden + j]);
}

// A cell's gate gradients for unit j of packed row n, from the gradient reaching its h (dh,
// before projection) and its c (dc, LSTM): the input side dG_x, the hidden side dG_h (they
// differ for GRU, whose n block is scaled by r because b_hn sits inside the reset product),
// the gradient passed to c_prev (LSTM: dc * f) and GRU's direct path to h_prev (dh * z).
struct Grad {
    dgx: vec4<f32>,
    dgh: vec4<f32>,
    dc_prev: f32,
    direct: f32,
}

fn cell_grad(n: u32, j: u32, dh: f32, dc_in: f32) -> Grad {
    let hs = p.hidden;
    var o: Grad;
    if (GATES == 4u) {
        let i = gate(n, 0u, j);
        let f = gate(n, 1u, j);
        let g = gate(n, 2u, j);
        let og = gate(n, 3u, j);
        let tc = tanh_safe(f32(tape[p.c_off + n * hs + j]));
        let dc = dc_in + dh * og * (1.0 - tc * tc);
        o.dgx = vec4<f32>(dc * g * i * (1.0 - i), dc * f32(prev[p.cprev_off + n * hs + j]) * f * (1.0 - f), dc * i * (1.0 - g * g), dh * tc * og * (1.0 - og));
        o.dgh = o.dgx;
        o.dc_prev = dc * f;
    } else if (GATES == 3u) {
        let r = gate(n, 0u, j);
        let z = gate(n, 1u, j);
        let nn = gate(n, 2u, j);
        let hprev = f32(prev[p.hprev_off + n * hs + j]);
        let dan = dh * (1.0 - z) * (1.0 - nn * nn);
        let dar = dan * f32(tape[p.aux_off + n * hs + j]) * r * (1.0 - r);
        let daz = dh * (hprev - nn) * z * (1.0 - z);
        o.dgx = vec4<f32>(dar, daz, dan, 0.0);
        o.dgh = vec4<f32>(dar, daz, dan * r, 0.0);
        o.direct = dh * z;
    } else {
        let h = gate(n, 0u, j);
        var d: f32;
        if (RELU) {
            d = select(0.0, dh, h > 0.0);
        } else {
            d = dh * (1.0 - h * h);
        }
        o.dgx = vec4<f32>(d, 0.0, 0.0, 0.0);
        o.dgh = o.dgx;
    }
    return o;
}

// Stores a row's gate gradients for the post-loop GEMMs (and GRU's hidden side).
fn store_grad(n: u32, j: u32, o: Grad) {
    for (var g = 0u; g < GATES; g++) {
        dg[dgx_at(n, g, j)] = S(o.dgx[g]);
    }
    if (GATES == 3u) {
        let h = p.dgh_off + n * 3u * p.hidden;
        for (var g = 0u; g < 3u; g++) {
            dg[h + g * p.hidden + j] = S(o.dgh[g]);
        }
    }
}

// One backward step's gate gradients (any cell; GATES and RELU choose it): unit x, row y.
// LSTM passes dc_prev to the row the cell state came from; recurrent_grad.wgsl then forms
// dh_prev.
@compute @workgroup_size(64)
fn cell_grad_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let r = gid.y;
    let hs = p.hidden;
    if (j >= hs || r >= p.rows) {
        return;
    }
    let n = p.row_off + r;
    var dc_in = 0.0;
    if (GATES == 4u) {
        dc_in = f32(bw[p.dc_off + n * hs + j]);
    }
    let o = cell_grad(n, j, dh_cell(n, j), dc_in);
    store_grad(n, j, o);
    if (GATES == 4u) {
        bw[p.dc_off + dst_row(n) * hs + j] = S(o.dc_prev);
    }
}

// ---- The single-dispatch backward for small problems ----
// Walks a run of consecutive steps of one layer-direction (every step, unless the adapter's
// loop budget cuts the sequence into runs: `loop_runs` in plan.rs) in reverse processing order
// in one dispatch; each workgroup owns LOOP_ROWS sorted rows (as the forward's loop_step did),
// invocation j owns unit j and keeps the row's dh and dc in registers, and the hidden-side
// gate gradients of a step go through workgroup memory for dh_prev = dG_h W_hh. dh and dc
// start from the seeds at each sequence's final row (scatter_last), or from what the previous
// run left at the run's first rows, and end as dh0 / dc0 in rows N+b, as the per-step path
// leaves them. Requires H_out == H <= LOOP_UNITS. Runs' parameters as in loop_body
// (step_forward.wgsl). Dispatch: (ceil(rows of the run's widest step / LOOP_ROWS), 1, 1),
// workgroup LOOP_UNITS (or 64 for H <= 64).
const LOOP_ROWS: u32 = 4u;
const LOOP_UNITS: u32 = 256u;

var<workgroup> dgl: array<f32, 4096>;

@compute @workgroup_size(256)
fn loop_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    loop_grad_body(wid.x, lid.x);
}

@compute @workgroup_size(64)
fn loop_grad_64(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    loop_grad_body(wid.x, lid.x);
}

// The run's local time of backward processing step s (the reverse of the forward's order).
fn loop_time(s: u32) -> u32 {
    return select(p.steps - 1u - s, s, p.reverse != 0u);
}

fn loop_grad_body(wg: u32, j: u32) {
    let hs = p.hidden;
    let gh = GATES * hs;
    let r0 = wg * LOOP_ROWS;
    // Rows of the run's widest step (its smallest time): every row the run touches.
    let batch = seq[p.bs_tab];
    let unit = j < hs;
    var dh = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    var dc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    var direct = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    // Entering the run: a row active at its first step takes the gradient waiting at that step's
    // row (the seed from grad_h_n at a sequence's final row, or what the previous run left
    // there); a row that starts later in the run (the forward direction, walked backwards) takes
    // its seed at its final row.
    let t0 = loop_time(0u);
    let rows0 = seq[p.bs_tab + t0];
    let off0 = seq[p.off_tab + t0];
    for (var t = 0u; t < LOOP_ROWS; t++) {
        let r = r0 + t;
        if (unit && r < batch) {
            let last = seq[p.last_off + seq[p.init_off + r] - p.n_rows];
            let src = select(last, off0 + r, r < rows0);
            dh[t] = f32(bw[p.dh_off + src * hs + j]);
            if (GATES == 4u) {
                dc[t] = f32(bw[p.dc_off + src * hs + j]);
            }
        }
    }
    var s = 0u;
    for (; s < p.steps; s++) {
        let ts = loop_time(s);
        let rows = seq[p.bs_tab + ts];
        let off = seq[p.off_tab + ts];
        if (unit) {
            for (var t = 0u; t < LOOP_ROWS; t++) {
                if (r0 + t < rows) {
                    let n = off + r0 + t;
                    let o = cell_grad(n, j, dh[t] + f32(dy[n * p.out_ld + p.out_col + j]), dc[t]);
                    store_grad(n, j, o);
                    for (var g = 0u; g < GATES; g++) {
                        dgl[t * gh + g * hs + j] = f32(S(o.dgh[g]));
                    }
                    dc[t] = f32(S(o.dc_prev));
                    direct[t] = o.direct;
                }
            }
        }
        workgroupBarrier();
        if (unit) {
            for (var t = 0u; t < LOOP_ROWS; t++) {
                if (r0 + t < rows) {
                    var acc = direct[t];
                    for (var g = 0u; g < gh; g++) {
                        acc += dgl[t * gh + g] * f32(weights[p.w_hh_flat + g * hs + j]);
                    }
                    dh[t] = f32(S(acc));
                }
            }
        }
        workgroupBarrier();
    }
    // Leaving the run: a row active at its last step passes dh_prev (dc_prev) to the row its
    // state came from (the next run's first row, or N+b: dh0); a row that ended earlier in the
    // run (the reverse direction, walked forwards) holds its dh0 for row N+b.
    let tl = loop_time(p.steps - 1u);
    let rowsl = seq[p.bs_tab + tl];
    let offl = seq[p.off_tab + tl];
    if (s < p.steps) {
        // Cut short by the adapter (see loop_body in step_forward.wgsl): a backstop in
        // straight-line code (later loops of this invocation would end at once). NaN in the
        // gate gradients of the run's last step, which every weight gradient sums, and in every
        // row's gradient where the run would leave it (the next run's first row, or dh0 / dc0),
        // so the next run, grad_input and grad_h0 carry it on.
        if (unit && r0 < batch) { poison_grad(offl, rowsl, r0, j); }
        if (unit && r0 + 1u < batch) { poison_grad(offl, rowsl, r0 + 1u, j); }
        if (unit && r0 + 2u < batch) { poison_grad(offl, rowsl, r0 + 2u, j); }
        if (unit && r0 + 3u < batch) { poison_grad(offl, rowsl, r0 + 3u, j); }
        return;
    }
    for (var t = 0u; t < LOOP_ROWS; t++) {
        let r = r0 + t;
        if (unit && r < batch) {
            let init = seq[p.init_off + r];
            let row = select(init, seq[p.prev_off + offl + r], r < rowsl);
            bw[p.dh_off + row * hs + j] = S(dh[t]);
            if (GATES == 4u) {
                bw[p.dc_off + row * hs + j] = S(dc[t]);
            }
        }
    }
}

// NaN for sorted row r and unit j at the end of a cut run whose last step has `rowsl` rows from
// packed row `offl`: its gate gradients there (every gate, and GRU's hidden side) if it is
// active, and its gradient where the run would leave it (as the normal end of loop_grad_body).
fn poison_grad(offl: u32, rowsl: u32, r: u32, j: u32) {
    let hs = p.hidden;
    let nan = S(poison(j));
    let live = r < rowsl;
    if (live) {
        let n = offl + r;
        dg[dgx_at(n, 0u, j)] = nan;
        if (GATES >= 3u) {
            dg[dgx_at(n, 1u, j)] = nan;
            dg[dgx_at(n, 2u, j)] = nan;
        }
        if (GATES == 4u) {
            dg[dgx_at(n, 3u, j)] = nan;
        }
        if (GATES == 3u) {
            let h = p.dgh_off + n * 3u * hs;
            dg[h + j] = nan;
            dg[h + hs + j] = nan;
            dg[h + 2u * hs + j] = nan;
        }
    }
    let row = select(seq[p.init_off + r], seq[p.prev_off + offl + r], live);
    bw[p.dh_off + row * hs + j] = nan;
    if (GATES == 4u) {
        bw[p.dc_off + row * hs + j] = nan;
    }
}
