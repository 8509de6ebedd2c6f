// The single-dispatch loop's backward (cell_loop_grad), after stage.wgsl (whose loop table,
// LR and Prod it shares) for the cells with a per-unit step that do not read the layer input
// (cells::cell_wgsl!): a run of p.steps steps of a layer-direction in the backward's
// processing order, stages last to first, in one dispatch;
// workgroup w owns the sorted rows w * LR .. w * LR + LR, as in cell_loop. Per stage:
// row_backward for the rows (the cell's gradients: dxp, dr, de, the state gradients), then
// where the stage has a product, its dr rows into workgroup memory (`dgr`, the rows in the
// components) and dv = dr R: invocation l computes v's columns l, l + 64, ... and writes them
// where the product read v: the tape gradients (scratch, [B, tw] at 0, which an earlier stage
// reads as dtape) or added to the state gradients. storageBarrier between these. It writes
// what the per-step backward writes (bws, state and tape gradients), so the weight gradients
// after it are the same GEMMs. The cells whose step reads the layer input (Layout::uses_input)
// do not have this file: their backward adds to the input gradient, at @8, where this kernel
// reads the loop table.
// Bindings (kernels::Family::LoopGrad): the prelude's up to @7 (bws read-write); @8 the loop
// table. A cut run (Mesa's loop cap) leaves NaN in the rows' state gradients and in the dxp,
// dr and de rows of its last step, which the weight and input gradients sum and a next run
// carries on (on lavapipe only in the columns of invocations 0..7: see loop_cut).

// A product's most rows: its dr rows in workgroup memory, with `cut` within WebGPU's default
// 16 KiB (so a 4-gate product up to 255 units).
const LOOP_PROWS: u32 = 1020u;
var<workgroup> dgr: array<vec4<f32>, LOOP_PROWS>;

// dv = dr R for the rows r0 .. r0 + nr (their dr in dgr), to where the product read v; one
// row in scalar sums (as cell_loop's loop_product).
fn loop_product_grad(pr: Prod, r0: u32, nr: u32, l: u32) {
    for (var k = l; k < pr.pk; k += WG) {
        var acc = vec4<f32>(0.0);
        if (nr == 1u) {
            var a = 0.0;
            for (var c = 0u; c < pr.prows; c++) {
                a += f32(w[pr.pw + c * pr.pk + k]) * dgr[c].x;
            }
            acc.x = a;
        } else {
            for (var c = 0u; c < pr.prows; c++) {
                acc += f32(w[pr.pw + c * pr.pk + k]) * dgr[c];
            }
        }
        for (var i = 0u; i < nr; i++) {
            if (pr.pa_state != 0u) {
                let at = pr.pa_off + (r0 + i) * pr.pa_ld + k;
                st[at] = S(f32(st[at]) + acc[i]);
            } else {
                scr[p.dtape_off + (r0 + i) * p.tw + (pr.pa_off - p.tape_off) + k] = S(acc[i]);
            }
        }
        if (ONE_PASS_PRODUCTS) { break; }
    }
}

// NaN into `len` (<= 24 * 64) elements of bws from `at`, invocation l's share, no loops.
fn poison_span(at: u32, len: u32, l: u32) {
    let nan = S(poison(l));
    var j = l;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; } j += WG;
    if (j < len) { bws[at + j] = nan; }
}

fn poison_grad_row(row: u32, l: u32) {
    // The state gradients (the states' slot in this binding; stage.wgsl's poison_row).
    poison_row(row, l, false);
    poison_span(p.dxp_off + packed(row) * p.gx, p.gx, l);
    poison_span(p.dr_off + packed(row) * p.rw, p.rw, l);
    poison_span(de_row(row), p.ew, l);
}

fn poison_grad_rows(r0: u32, l: u32) {
    let last = p.ltab + 2u * (p.steps - 1u);
    at_o = ltab[last];
    let rows = ltab[last + 1u];
    if (r0 < rows) {
        poison_grad_row(r0, l);
    }
    if (r0 + 1u < rows) {
        poison_grad_row(r0 + 1u, l);
    }
    if (r0 + 2u < rows) {
        poison_grad_row(r0 + 2u, l);
    }
    if (r0 + 3u < rows) {
        poison_grad_row(r0 + 3u, l);
    }
}

@compute @workgroup_size(64)
fn cell_loop_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r0 = wid.x * LR;
    let l = lid.x;
    var t = 0u;
    loop {
        if (t >= p.steps) {
            break;
        }
        let nr = loop_step(t, r0);
        if (nr > 0u) {
            for (var s = LOOP_STAGES; s > 0u; s--) {
                at_stage = s - 1u;
                for (var i = 0u; i < nr; i++) {
                    row_backward(r0 + i, l);
                }
                workgroupBarrier();
                storageBarrier();
                let pr = loop_prod(s - 1u);
                if (pr.pg > 0u) {
                    for (var c = l; c < pr.prows; c += WG) {
                        var v = vec4<f32>(0.0);
                        for (var i = 0u; i < nr; i++) {
                            v[i] = dr_get(r0 + i, pr.pcol + c);
                        }
                        dgr[c] = v;
                        if (ONE_PASS_PRODUCTS) { break; }
                    }
                    workgroupBarrier();
                    loop_product_grad(pr, r0, nr, l);
                    workgroupBarrier();
                    storageBarrier();
                }
            }
        }
        t++;
    }
    if (loop_cut(t)) {
        poison_grad_rows(r0, l);
    }
}
