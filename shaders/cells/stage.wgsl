// The fused stage kernel, after the file of a cell whose pointwise step is per unit
// (Cell::UNIT_STEP): that file defines `unit_forward(row, j)`, the stage `stage()` of unit j
// for one row, which reads and writes only unit j's columns (of the states, of this stage's
// product, of the tape; earlier stages' values are any). A stage with a product is two
// dispatches, one without is one:
// - stage_input copies the product's input rows (a state before the step, or tape values an
//   earlier stage wrote) to `pin` [rows, kp] (kp = k rounded up to 4, zero-padded), where
//   cell_stage reads them as vec4s through a read-only binding (on lavapipe a vec4 load per
//   invocation is several times faster than four scalar loads from a read-write buffer, and
//   the copy lets the step overwrite its states while the product reads them). In stage 0
//   of a training step (and with zoneout) it also copies the step's states to the tape's
//   states before each row (p.save), which the backward and zoneout read.
// - cell_stage: invocation (j0, row block) computes units j0 .. j0 + 4 / GATES's columns of
//   the stage's product for RB rows (unit j's are g * U + j, g < GATES, U = p.prows / GATES,
//   bias included; register-blocked: each weight read serves RB rows), writes them to r, and
//   runs unit_forward for those units on the block's rows.
// Dispatch: stage_input (rows, 1, 1); cell_stage (ceil(p.units / (4 / GATES) / 64),
// ceil(rows / RB), 1),
// workgroup 64. The product GEMM and the whole-row pointwise dispatch become one kernel.
// Bindings: as the prelude; stage_input writes `pin` through @5 (scr). cell_stage has its own
// layout (kernels::Family::Stage), @7 and @8 read-only vec4 views in place of the backward's
// buffers: @7 the weights again (w4), @8 `pin` (pin4). No entry point reads both pairs.

@group(0) @binding(7) var<storage, read> w4: array<vec4<S>>;

// The backward of one stage for the step's rows, a workgroup per row: the cell's row_backward.
@compute @workgroup_size(64)
fn cell_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    row_backward(wid.x, lid.x);
}
@group(0) @binding(8) var<storage, read> pin4: array<vec4<S>>;

const RB: u32 = 8u;
// R's offset and row length are multiples of 4: read its rows as vec4s (w4).
override VEC4: bool = false;
// The stage's product's gates per unit (p.pg; 1 where it has none).
override GATES: u32 = 1u;

// The product's input row length in `pin`: k rounded up to 4.
fn pin_len() -> u32 {
    return (p.pk + 3u) / 4u * 4u;
}

@compute @workgroup_size(64)
fn stage_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.x;
    if (p.save != 0u) {
        save_row(row, lid.x);
    }
    if (p.pg == 0u) {
        return;
    }
    let kp = pin_len();
    for (var c = lid.x; c < kp; c += WG) {
        var v = S(0.0);
        if (c < p.pk) {
            let at = p.pa_off + row * p.pa_ld + c;
            if (p.pa_state != 0u) {
                v = st[at];
            } else {
                v = tp[at];
            }
        }
        scr[row * kp + c] = v;
    }
}

// Row `row` of R at k = 4q .. 4q + 3 (0 past k's end).
fn prod_row4(row: u32, q: u32) -> vec4<f32> {
    let at = p.pw + row * p.pk;
    if (VEC4) {
        return vec4<f32>(w4[at / 4u + q]);
    }
    let k = 4u * q;
    var v = vec4<f32>(f32(w[at + k]), 0.0, 0.0, 0.0);
    if (k + 1u < p.pk) {
        v.y = f32(w[at + k + 1u]);
    }
    if (k + 2u < p.pk) {
        v.z = f32(w[at + k + 2u]);
    }
    if (k + 3u < p.pk) {
        v.w = f32(w[at + k + 3u]);
    }
    return v;
}

// Units per invocation: the 4 columns of the product's accumulators hold LANES units' GATES
// gates each (column c: unit j0 + c / GATES, gate c % GATES), so a 1- or 2-gate product
// wastes no lanes of the vec4 arithmetic.
fn lanes() -> u32 {
    return 4u / GATES;
}

// Column c's row of R for the units from j0 (u units per gate), or NONE past the lanes or
// the product's units.
fn col_row(c: u32, j0: u32, u: u32) -> u32 {
    let l = c / GATES;
    if (l >= lanes() || j0 + l >= u) {
        return NONE;
    }
    return (c % GATES) * u + j0 + l;
}

fn col_w4(c: u32, j0: u32, u: u32, q: u32) -> vec4<f32> {
    let row = col_row(c, j0, u);
    if (row == NONE) {
        return vec4<f32>(0.0);
    }
    return prod_row4(row, q);
}

fn col_bias(c: u32, j0: u32, u: u32) -> f32 {
    let row = col_row(c, j0, u);
    if (row == NONE || p.pb == NONE) {
        return 0.0;
    }
    return f32(w[p.pb + row]);
}

// The stage's product's columns of the units j0 .. j0 + lanes() for rows rb .. rb + nr
// (nr <= RB), bias included, written to r.
fn stage_product(j0: u32, rb: u32, nr: u32) {
    let u = p.prows / GATES;
    let kq = pin_len() / 4u;
    let last = nr - 1u;
    let v0 = rb * kq;
    let v1 = (rb + min(1u, last)) * kq;
    let v2 = (rb + min(2u, last)) * kq;
    let v3 = (rb + min(3u, last)) * kq;
    let v4 = (rb + min(4u, last)) * kq;
    let v5 = (rb + min(5u, last)) * kq;
    let v6 = (rb + min(6u, last)) * kq;
    let v7 = (rb + min(7u, last)) * kq;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    for (var q = 0u; q < kq; q++) {
        let m = mat4x4<f32>(col_w4(0u, j0, u, q), col_w4(1u, j0, u, q), col_w4(2u, j0, u, q), col_w4(3u, j0, u, q));
        a0 += vec4<f32>(pin4[v0 + q]) * m;
        a1 += vec4<f32>(pin4[v1 + q]) * m;
        a2 += vec4<f32>(pin4[v2 + q]) * m;
        a3 += vec4<f32>(pin4[v3 + q]) * m;
        a4 += vec4<f32>(pin4[v4 + q]) * m;
        a5 += vec4<f32>(pin4[v5 + q]) * m;
        a6 += vec4<f32>(pin4[v6 + q]) * m;
        a7 += vec4<f32>(pin4[v7 + q]) * m;
    }
    let bias = vec4<f32>(col_bias(0u, j0, u), col_bias(1u, j0, u), col_bias(2u, j0, u), col_bias(3u, j0, u));
    var acc = array<vec4<f32>, 8>(a0 + bias, a1 + bias, a2 + bias, a3 + bias, a4 + bias, a5 + bias, a6 + bias, a7 + bias);
    for (var t = 0u; t < nr; t++) {
        let at = p.r_off + (rb + t) * p.rw + p.pcol;
        for (var c = 0u; c < 4u; c++) {
            let row = col_row(c, j0, u);
            if (row != NONE) {
                scr[at + row] = S(acc[t][c]);
            }
        }
    }
}

@compute @workgroup_size(64)
fn cell_stage(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j0 = (wid.x * 64u + lid.x) * lanes();
    let rb = wid.y * RB;
    if (j0 >= p.units || rb >= p.rows) {
        return;
    }
    let nr = min(RB, p.rows - rb);
    if (p.pg > 0u && j0 < p.prows / GATES) {
        stage_product(j0, rb, nr);
    }
    for (var l = 0u; l < lanes(); l++) {
        let j = j0 + l;
        if (j < p.units) {
            for (var t = 0u; t < nr; t++) {
                unit_forward(rb + t, j);
            }
        }
    }
}
