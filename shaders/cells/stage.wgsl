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

// R's row from `at` (its first element) at k = 4q .. 4q + 3 (0 past k's end).
fn prod_row4(at: u32, q: u32) -> vec4<f32> {
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

// Where column c's row of R starts, or column 0's for a column without one: the product's
// loop then reads every column unconditionally, and what such a column sums is never stored.
fn col_at(c: u32, j0: u32, u: u32) -> u32 {
    let row = col_row(c, j0, u);
    return p.pw + select(row, col_row(0u, j0, u), row == NONE) * p.pk;
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
    let c0 = col_at(0u, j0, u);
    let c1 = col_at(1u, j0, u);
    let c2 = col_at(2u, j0, u);
    let c3 = col_at(3u, j0, u);
    for (var q = 0u; q < kq; q++) {
        let m = mat4x4<f32>(prod_row4(c0, q), prod_row4(c1, q), prod_row4(c2, q), prod_row4(c3, q));
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
        store_product_row(rb + t, j0, u, acc[t]);
    }
}

// Row `row`'s product columns of the units j0 .. j0 + lanes() (u units per gate) to r: v's
// columns, bias included (stage_product's and its subgroup twin's).
fn store_product_row(row: u32, j0: u32, u: u32, v: vec4<f32>) {
    let at = p.r_off + row * p.rw + p.pcol;
    for (var c = 0u; c < 4u; c++) {
        let col = col_row(c, j0, u);
        if (col != NONE) {
            scr[at + col] = S(v[c]);
        }
    }
}

// The stage's pointwise step (unit_forward) of the units j0 .. j0 + lanes() for rows rb ..
// rb + nr (cell_stage's and its subgroup twin's).
fn stage_units(j0: u32, rb: u32, nr: u32) {
    for (var l = 0u; l < lanes(); l++) {
        let j = j0 + l;
        if (j < p.units) {
            for (var t = 0u; t < nr; t++) {
                unit_forward(rb + t, j);
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
    stage_units(j0, rb, nr);
}

// ---------------------------------------------------------------------------------------
// The single-dispatch loop (StepStrategy::SingleDispatch, and Auto for small steps): one
// dispatch walks a run of p.steps steps of a layer-direction, every stage of each, where a
// step has too little work to pay for its dispatches. Workgroup w owns the sorted rows
// w * LR .. w * LR + LR for the whole run (rows are independent: no workgroup waits for
// another), and its 64 invocations share the work of a step:
// - stage 0 of a training step (and with zoneout, which the loop does not run) first saves the
//   rows' states to the tape (LOOP_TRAIN), as stage_input does;
// - a stage with a product reads its input rows into workgroup memory (`vin`, k-major, the
//   rows in the components), then invocation l computes the product's columns l, l + 64, ...
//   for the rows (each weight read once for LR rows) and writes them to r;
// - then unit_forward for units l, l + 64, ... of the rows.
// storageBarrier between these (a unit reads product columns, and the next step reads
// states, that other invocations wrote). It writes exactly what the per-step kernels write
// (r, states, tape, output), so the backward is the same.
// Where a step is: the loop table `ltab` (@8, u32, read-only): the run's steps from p.ltab,
// (first packed row, active rows) in processing order. The layer's stages: the pipeline is
// specialised for them (kernels::LoopShape: LOOP_STAGES, each product's gates LOOP_G0 and
// LOOP_G1, 0 for none, whether stage 0's reads a state, LOOP_S0, and training, LOOP_TRAIN),
// so what a layer does not have compiles away; the products' sizes and offsets are in p
// (stage 0's pg..pa_state, stage 1's q_*), pa_off for tape row 0 (a tape input's row moves
// with the step). The kernel sets at_o, at_trow and at_stage (prelude) for the cell's
// accessors; p.o, p.trow and p.stage are 0.
// Dispatch: (ceil(rows / LR), 1, 1), rows the run's most active rows.
// The backward (cell_loop_grad, loop_grad.wgsl, joined after this file) walks a run of steps
// the same way.
// Mesa's gallivm ends an invocation's loops after 65,535 iterations in all (see
// gpu::plan::loop_iteration_budget): the host sizes runs by `Shape::loop_iterations`, an upper
// bound of this kernel's loop iterations per step; should a run still be cut short, the step
// counter stops short (for some invocations: `loop_cut`) and every state and the run's last
// output row of the workgroup's rows become NaN (straight-line code), never stale values.

@group(0) @binding(8) var<storage, read> ltab: array<u32>;

const LR: u32 = 4u;
// The longest product k the loop takes (its input rows in workgroup memory: 4 KiB).
const LOOP_K: u32 = 256u;
var<workgroup> vin: array<vec4<f32>, LOOP_K>;

struct Prod {
    pg: u32,
    prows: u32,
    pk: u32,
    pw: u32,
    pb: u32,
    pcol: u32,
    pa_off: u32,
    pa_ld: u32,
    pa_state: u32,
}

override LOOP_STAGES: u32 = 1u;
override LOOP_G0: u32 = 0u;
override LOOP_G1: u32 = 0u;
override LOOP_S0: bool = false;
override LOOP_TRAIN: bool = false;

// Stage s's product (pg 0: none). A later stage's product reads the tape (Layout::check).
fn loop_prod(s: u32) -> Prod {
    if (s == 0u) {
        return Prod(LOOP_G0, p.prows, p.pk, p.pw, p.pb, p.pcol, p.pa_off, p.pa_ld, u32(LOOP_S0));
    }
    return Prod(LOOP_G1, p.q_rows, p.q_k, p.q_w, p.q_b, p.q_col, p.q_off, p.q_ld, 0u);
}

// The product's input rows r0 .. r0 + nr into vin (components past nr zero).
fn loop_input(pr: Prod, r0: u32, nr: u32, l: u32) {
    for (var k = l; k < pr.pk; k += WG) {
        var v = vec4<f32>(0.0);
        for (var i = 0u; i < nr; i++) {
            if (pr.pa_state != 0u) {
                v[i] = f32(st[pr.pa_off + (r0 + i) * pr.pa_ld + k]);
            } else {
                v[i] = f32(tp[pr.pa_off + (at_trow + r0 + i) * pr.pa_ld + k]);
            }
        }
        vin[k] = v;
        if (ONE_PASS_PRODUCTS) { break; }
    }
}

// The product's columns l, l + 64, ... for the rows in vin, bias included, to r. One row
// (a batch of one, or the last rows of a shrinking batch) takes scalar sums: vec4 arithmetic
// costs four scalar operations on a GPU and on lavapipe alike, and three would be wasted.
// Each row's sum is the same sequence of operations either way (the same bits).
fn loop_product(pr: Prod, r0: u32, nr: u32, l: u32) {
    for (var c = l; c < pr.prows; c += WG) {
        let at = pr.pw + c * pr.pk;
        var bias = 0.0;
        if (pr.pb != NONE) {
            bias = f32(w[pr.pb + c]);
        }
        let o = p.r_off + r0 * p.rw + pr.pcol + c;
        if (nr == 1u) {
            var a = 0.0;
            for (var k = 0u; k < pr.pk; k++) {
                a += f32(w[at + k]) * vin[k].x;
            }
            scr[o] = S(a + bias);
        } else {
            var acc = vec4<f32>(0.0);
            for (var k = 0u; k < pr.pk; k++) {
                acc += f32(w[at + k]) * vin[k];
            }
            acc += vec4<f32>(bias);
            for (var i = 0u; i < nr; i++) {
                scr[o + i * p.rw] = S(acc[i]);
            }
        }
        if (ONE_PASS_PRODUCTS) { break; }
    }
}

// Whether the run was cut short for any invocation of the workgroup: every invocation that
// gets here marks its columns when any was. (lavapipe runs a workgroup as batches of 8
// invocations, each counting its own loop iterations; the first batch, which has the most
// work, is cut first, and the batches after it were seen not to resume once it ended: there
// only the columns of invocations 0..7 get their marks. The marks are a backstop: runs keep a
// quarter of the budget as margin.)
var<workgroup> cut: atomic<u32>;

fn loop_cut(t: u32) -> bool {
    if (t < p.steps) {
        atomicStore(&cut, 1u);
    }
    workgroupBarrier();
    return atomicLoad(&cut) != 0u;
}

// A cut run's marks (no loops: after a cut every loop of the invocation ends at once).
fn poison_col(row: u32, j: u32, out: bool) {
    let nan = poison(j);
    if (j < p.sw) {
        s_set(row, j, nan);
    }
    if (out && j < h_width()) {
        out_set(row, j, nan);
    }
}

fn poison_row(row: u32, l: u32, out: bool) {
    poison_col(row, l, out);
    poison_col(row, l + 64u, out);
    poison_col(row, l + 128u, out);
    poison_col(row, l + 192u, out);
    poison_col(row, l + 256u, out);
    poison_col(row, l + 320u, out);
    poison_col(row, l + 384u, out);
    poison_col(row, l + 448u, out);
}

fn poison_rows(r0: u32, l: u32) {
    let first = p.ltab;
    let last = p.ltab + 2u * (p.steps - 1u);
    let rows = max(ltab[first + 1u], ltab[last + 1u]);
    at_o = ltab[last];
    let out_rows = ltab[last + 1u];
    if (r0 < rows) {
        poison_row(r0, l, r0 < out_rows);
    }
    if (r0 + 1u < rows) {
        poison_row(r0 + 1u, l, r0 + 1u < out_rows);
    }
    if (r0 + 2u < rows) {
        poison_row(r0 + 2u, l, r0 + 2u < out_rows);
    }
    if (r0 + 3u < rows) {
        poison_row(r0 + 3u, l, r0 + 3u < out_rows);
    }
}

// Step t of the run for the rows from r0: how many of them are active (0 to LR), and the
// accessors moved to the step (at_o, at_trow).
fn loop_step(t: u32, r0: u32) -> u32 {
    let at = p.ltab + 2u * t;
    let rows = ltab[at + 1u];
    if (r0 >= rows) {
        return 0u;
    }
    at_o = ltab[at];
    at_trow = select(0u, at_o, LOOP_TRAIN);
    return min(LR, rows - r0);
}

@compute @workgroup_size(64)
fn cell_loop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r0 = wid.x * LR;
    let l = lid.x;
    var t = 0u;
    loop {
        if (t >= p.steps) {
            break;
        }
        let nr = loop_step(t, r0);
        if (nr > 0u) {
            for (var s = 0u; s < LOOP_STAGES; s++) {
                at_stage = s;
                let pr = loop_prod(s);
                if (s == 0u && LOOP_TRAIN) {
                    for (var i = 0u; i < nr; i++) {
                        save_row(r0 + i, l);
                    }
                }
                if (pr.pg > 0u) {
                    loop_input(pr, r0, nr, l);
                }
                workgroupBarrier();
                storageBarrier();
                if (pr.pg > 0u) {
                    loop_product(pr, r0, nr, l);
                    storageBarrier();
                }
                for (var j = l; j < p.units; j += WG) {
                    for (var i = 0u; i < nr; i++) {
                        unit_forward(r0 + i, j);
                    }
                    if (ONE_PASS_UNITS) { break; }
                }
                storageBarrier();
            }
        }
        t++;
    }
    if (loop_cut(t)) {
        poison_rows(r0, l);
    }
}

