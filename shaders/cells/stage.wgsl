// The fused stage kernel, after the file of a cell whose pointwise step is per unit
// (Cell::UNIT_STEP): that file defines `unit_forward(row, j)`, the stage p.stage of unit j
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
// - cell_stage: invocation (j, row block) computes unit j's columns of the stage's product
//   for RB rows (columns g * U + j, g < GATES, U = p.prows / GATES, bias included;
//   register-blocked: each weight read serves RB rows), writes them to r, and runs
//   unit_forward on the block's rows.
// Dispatch: stage_input (rows, 1, 1); cell_stage (ceil(p.units / 64), ceil(rows / RB), 1),
// workgroup 64. The product GEMM and the whole-row pointwise dispatch become one kernel.
// Bindings: as the prelude; stage_input writes `pin` through @5 (scr). cell_stage has its own
// layout (kernels::Family::Stage), @7 and @8 read-only vec4 views in place of the backward's
// buffers: @7 the weights again (w4), @8 `pin` (pin4). No entry point reads both pairs.

@group(0) @binding(7) var<storage, read> w4: array<vec4<S>>;
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
        for (var c = lid.x; c < p.sw; c += WG) {
            tp[p.sprev_off + (p.o + row) * p.sw + c] = st[p.s_off + row * p.sw + c];
        }
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

// Unit j's columns of the stage's product for rows rb .. rb + nr (nr <= RB), bias included,
// written to r. Gate g accumulates in component g.
fn stage_product(j: u32, rb: u32, nr: u32) {
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
        // Columns: one gate each; gates past GATES stay zero.
        var m = mat4x4<f32>(prod_row4(j, q), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
        if (GATES >= 2u) {
            m[1] = prod_row4(u + j, q);
        }
        if (GATES >= 3u) {
            m[2] = prod_row4(2u * u + j, q);
        }
        if (GATES >= 4u) {
            m[3] = prod_row4(3u * u + j, q);
        }
        a0 += vec4<f32>(pin4[v0 + q]) * m;
        a1 += vec4<f32>(pin4[v1 + q]) * m;
        a2 += vec4<f32>(pin4[v2 + q]) * m;
        a3 += vec4<f32>(pin4[v3 + q]) * m;
        a4 += vec4<f32>(pin4[v4 + q]) * m;
        a5 += vec4<f32>(pin4[v5 + q]) * m;
        a6 += vec4<f32>(pin4[v6 + q]) * m;
        a7 += vec4<f32>(pin4[v7 + q]) * m;
    }
    var bias = vec4<f32>(0.0);
    if (p.pb != NONE) {
        bias.x = f32(w[p.pb + j]);
        if (GATES >= 2u) {
            bias.y = f32(w[p.pb + u + j]);
        }
        if (GATES >= 3u) {
            bias.z = f32(w[p.pb + 2u * u + j]);
        }
        if (GATES >= 4u) {
            bias.w = f32(w[p.pb + 3u * u + j]);
        }
    }
    var acc = array<vec4<f32>, 8>(a0 + bias, a1 + bias, a2 + bias, a3 + bias, a4 + bias, a5 + bias, a6 + bias, a7 + bias);
    for (var t = 0u; t < nr; t++) {
        let at = p.r_off + (rb + t) * p.rw + p.pcol + j;
        for (var g = 0u; g < GATES; g++) {
            scr[at + g * u] = S(acc[t][g]);
        }
    }
}

@compute @workgroup_size(64)
fn cell_stage(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = wid.x * 64u + lid.x;
    let rb = wid.y * RB;
    if (j >= p.units || rb >= p.rows) {
        return;
    }
    let nr = min(RB, p.rows - rb);
    if (p.pg > 0u && j < p.prows / GATES) {
        stage_product(j, rb, nr);
    }
    for (var t = 0u; t < nr; t++) {
        unit_forward(rb + t, j);
    }
}
