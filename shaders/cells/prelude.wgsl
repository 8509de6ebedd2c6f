// The prelude of every cell's kernels (shaders/cells/<cell>.wgsl follows it). A cell's file
// defines the pointwise step of one stage, forward and backward, mirroring its Rust module in
// src/cells/: a cell with a per-unit step (Cell::UNIT_STEP) as functions, `unit_forward(row,
// j)` (one unit of one row) and `row_backward(row, l)` (one row, invocation l of 64 striding
// over its units, every such loop over at most p.hidden and ending with
// `if (ONE_PASS_UNITS) { break; }`: see below), which stage.wgsl's kernels call; a cell whose
// step reduces over the row as `row_forward(row, l)` (which row_step.wgsl's entry point
// `cell_forward` calls) and the entry point `cell_backward`. The per-step kernels run one
// workgroup per active row of the step: (rows, 1, 1); a workgroup's 64 invocations stride over
// the row's units.
//   @0 params uniform, dynamic offset: CellParams
//   @1 w     read: all weights; the pointwise parameters at p.e
//   @2 xin   read: the layer input [N, inw] at p.x_off
//   @3 tp    read_write: input projection [N, gx] at p.xp, tape rows at p.tape, the states
//            before each packed row [N, sw] at p.sprev (written forward in training and with
//            zoneout; read by zoneout and by the backward)
//   @4 st    read_write: states [B, sw] at p.s (forward), their gradients (backward)
//   @5 scr   read_write: products [B, rw] at p.r (forward), tape gradients [B, tw] at
//            p.dtape (backward); zoneout's set-aside gradients [B, H_out] at 0 (its own buffer)
//   @6 io    read_write: output rows [N, out_w] (forward), output gradients (backward)
//   @7 bws   read_write: dxp [N, gx] at p.dxp, dr [N, rw] at p.dr, de [B, ew] or [N, ew] at p.de
//   @8 dxin  read_write: input gradients [N, inw] (direct terms of cells that read x)
//   (The fused stage kernel, stage.wgsl, binds its own @7 and @8 instead: see there.)
// The regularisers' kernels (end of file) bind the step counter (an optimiser's step count,
// f32 at element 0) at @1 instead of the weights.
// Rows: `row` is the step's row (0..p.rows, the sorted state row); its packed row is
// packed(row) = p.o + row and its tape row tape_row(row) = p.trow + row (p.trow = p.o in
// training, 0 in inference). A cell asks `stage()` for the stage it runs.
// Every value has one writer and every sum a fixed order: results are reproducible.

struct CellParams {
    rows: u32,
    o: u32,
    stage: u32,
    hidden: u32,
    proj: u32,
    inw: u32,
    x_off: u32,
    gx: u32,
    xp_off: u32,
    rw: u32,
    r_off: u32,
    sw: u32,
    s_off: u32,
    tw: u32,
    tape_off: u32,
    trow: u32,
    sprev_off: u32,
    ew: u32,
    e_off: u32,
    out_w: u32,
    col: u32,
    dtape_off: u32,
    dxp_off: u32,
    dr_off: u32,
    de_off: u32,
    seed: u32,
    thresh: u32,
    f: f32,
    // The fused stage kernel (shaders/cells/stage.wgsl) only:
    units: u32,       // invocations per row along x
    pg: u32,          // the stage's product: gates per unit (0: no product)
    prows: u32,       //   its rows (the product's width)
    pk: u32,          //   its k
    pw: u32,          //   R [prows, pk] row-major in w
    pb: u32,          //   its bias [prows] in w, or NONE
    pcol: u32,        //   its first column in r
    pa_off: u32,      //   v of row `row` at pa_off + row * pa_ld in st (pa_state 1) or tp
    pa_ld: u32,
    pa_state: u32,
    save: u32,        // 1: copy the step's states to the tape's states before each row
    // The single-dispatch loop (stage.wgsl's cell_loop) only:
    steps: u32,       // steps of the run
    ltab: u32,        // the run's first step in the loop table
    q_rows: u32,      // stage 1's product (stage 0's is pg..pa_state): rows,
    q_k: u32,         //   k,
    q_w: u32,         //   R in w,
    q_b: u32,         //   bias in w or NONE,
    q_col: u32,       //   first column in r,
    q_off: u32,       //   input v (in tp) at tape row 0,
    q_ld: u32,        //   its row stride
    // The backward: 1 when de holds one row per batch row (the step's row), each step's
    // values added (f32 storage); 0: one row per packed row (f16 storage, summed in f32 after).
    de_acc: u32,
}

@group(0) @binding(0) var<uniform> p: CellParams;
@group(0) @binding(1) var<storage, read> w: array<S>;
@group(0) @binding(2) var<storage, read> xin: array<S>;
@group(0) @binding(3) var<storage, read_write> tp: array<S>;
@group(0) @binding(4) var<storage, read_write> st: array<S>;
@group(0) @binding(5) var<storage, read_write> scr: array<S>;
@group(0) @binding(6) var<storage, read_write> io: array<S>;
@group(0) @binding(7) var<storage, read_write> bws: array<S>;
@group(0) @binding(8) var<storage, read_write> dxin: array<S>;

const WG: u32 = 64u;

// One-pass loops. The loop kernels (stage.wgsl's cell_loop, loop_grad.wgsl's cell_loop_grad)
// are specialised (kernels::LoopShape) for a layer whose units (kernels' `units`, hence
// p.hidden) are at most WG: ONE_PASS_UNITS; and whose products' rows and k are:
// ONE_PASS_PRODUCTS. A loop `for (var j = l; j < n; j += WG)` whose n is within the flag's
// bound then ends with `if (ONE_PASS_...) { break; }`: the same work when the flag holds (j
// starts below WG, so a second pass would find j >= n), and code that lavapipe runs as one
// pass instead of a divergent loop (DeepBench's RNN H 32 B 1 T 672 training on lavapipe:
// 1.05x -> 1.00x the old fused loops' time, benches/results/one-pass-loops-lavapipe-2026-12-06.txt).
// Every other pipeline leaves them false. A flag set for a wider layer would skip units:
// LoopShape sets them from the sizes.
override ONE_PASS_UNITS: bool = false;
override ONE_PASS_PRODUCTS: bool = false;

// Activation slots (src/cells/activation.rs): a cell computes the nonlinearities it lists in
// Cell::SLOTS as slot(k, x, own), own its own function of x. A config's custom slots set
// these pipeline-overridable constants on the forward stage and loop kernels; left at OWN
// (every other pipeline), slot() is own and the rest folds away. ACTk: the function's id in
// Function::ALL order (plus 128 for its complement 1 - f(-x)), ACTk_A / _B its alpha and
// beta; CLIP > 0 clips every slot's input but slot 2's (h).
const OWN: u32 = 255u;
override ACT0: u32 = 255u;
override ACT0_A: f32 = 0.0;
override ACT0_B: f32 = 0.0;
override ACT1: u32 = 255u;
override ACT1_A: f32 = 0.0;
override ACT1_B: f32 = 0.0;
override ACT2: u32 = 255u;
override ACT2_A: f32 = 0.0;
override ACT2_B: f32 = 0.0;
override ACT3: u32 = 255u;
override ACT3_A: f32 = 0.0;
override ACT3_B: f32 = 0.0;
override CLIP: f32 = 0.0;

fn act_fn(f: u32, a: f32, b: f32, x: f32) -> f32 {
    switch f {
        case 0u: { return sigmoid(x); }
        case 1u: { return tanh_safe(x); }
        case 2u: { return max(x, 0.0); }
        case 3u: { return a * x + b; }
        case 4u: { return select(a * x, x, x >= 0.0); }
        case 5u: { return select(0.0, x, x > a); }
        case 6u: { return a * tanh_safe(b * x); }
        case 7u: { return clamp(a * x + b, 0.0, 1.0); }
        case 8u: { return select(a * (exp(min(x, 0.0)) - 1.0), x, x >= 0.0); }
        case 9u: { return x / (1.0 + abs(x)); }
        default: { return max(x, 0.0) + log(1.0 + exp(-abs(x))); }
    }
}

fn slot(k: u32, x: f32, own: f32) -> f32 {
    var f = ACT0;
    var a = ACT0_A;
    var b = ACT0_B;
    if (k == 1u) {
        f = ACT1;
        a = ACT1_A;
        b = ACT1_B;
    } else if (k == 2u) {
        f = ACT2;
        a = ACT2_A;
        b = ACT2_B;
    } else if (k == 3u) {
        f = ACT3;
        a = ACT3_A;
        b = ACT3_B;
    }
    if (f == OWN) {
        return own;
    }
    var v = x;
    if (CLIP > 0.0 && k != 2u) {
        v = clamp(x, -CLIP, CLIP);
    }
    if (f >= 128u) {
        return 1.0 - act_fn(f - 128u, a, b, -v);
    }
    return act_fn(f, a, b, v);
}

// Where a kernel is in the sequence. The per-step kernels take the step's first packed row,
// its first tape row and the stage from p (p.o, p.trow, p.stage), and leave these at 0; the
// single-dispatch loop (stage.wgsl's cell_loop) runs with those at 0 and walks these.
var<private> at_o: u32 = 0u;
var<private> at_trow: u32 = 0u;
var<private> at_stage: u32 = 0u;
fn packed(row: u32) -> u32 { return p.o + at_o + row; }
fn tape_row(row: u32) -> u32 { return p.trow + at_trow + row; }
fn stage() -> u32 { return p.stage + at_stage; }

// Forward accessors.
fn x(row: u32, k: u32) -> f32 { return f32(xin[p.x_off + packed(row) * p.inw + k]); }
fn xp(row: u32, j: u32) -> f32 { return f32(tp[p.xp_off + packed(row) * p.gx + j]); }
fn r(row: u32, j: u32) -> f32 { return f32(scr[p.r_off + row * p.rw + j]); }
fn e(j: u32) -> f32 { return f32(w[p.e_off + j]); }
fn s_get(row: u32, j: u32) -> f32 { return f32(st[p.s_off + row * p.sw + j]); }
fn s_set(row: u32, j: u32, v: f32) { st[p.s_off + row * p.sw + j] = S(v); }
fn tape_get(row: u32, j: u32) -> f32 { return f32(tp[p.tape_off + tape_row(row) * p.tw + j]); }
fn tape_set(row: u32, j: u32, v: f32) { tp[p.tape_off + tape_row(row) * p.tw + j] = S(v); }
fn out_set(row: u32, j: u32, v: f32) { io[packed(row) * p.out_w + p.col + j] = S(v); }

// Backward accessors (tape_row(row) = packed(row)).
fn s_prev(row: u32, j: u32) -> f32 { return f32(tp[p.sprev_off + packed(row) * p.sw + j]); }
fn dout(row: u32, j: u32) -> f32 { return f32(io[packed(row) * p.out_w + p.col + j]); }
fn ds_get(row: u32, j: u32) -> f32 { return f32(st[p.s_off + row * p.sw + j]); }
fn ds_set(row: u32, j: u32, v: f32) { st[p.s_off + row * p.sw + j] = S(v); }
// The gradient of tape value j where a later stage's product read it (the driver writes
// those values before this stage runs; other tape gradients are undefined on the GPU).
fn dtape(row: u32, j: u32) -> f32 { return f32(scr[p.dtape_off + row * p.tw + j]); }
// dxp and dr rows: zero when the step's first (last-run) stage starts; each stage writes
// its own values, and a later-run (earlier) stage may read what a stage run before it wrote.
fn dxp_set(row: u32, j: u32, v: f32) { bws[p.dxp_off + packed(row) * p.gx + j] = S(v); }
fn dxp_get(row: u32, j: u32) -> f32 { return f32(bws[p.dxp_off + packed(row) * p.gx + j]); }
fn dr_set(row: u32, j: u32, v: f32) { bws[p.dr_off + packed(row) * p.rw + j] = S(v); }
fn dr_get(row: u32, j: u32) -> f32 { return f32(bws[p.dr_off + packed(row) * p.rw + j]); }
// de (the pointwise parameters' gradient terms) is added to, never read: each stage adds a
// row's term for an element at most once a step. With p.de_acc its rows are the batch rows, so
// the terms are summed over the steps as the backward walks them (a fixed order) and the
// column sums after the loop read B rows, not N (cache-resident, a fraction of the memory);
// without, each packed row is written once into a cleared row.
fn de_row(row: u32) -> u32 { return p.de_off + select(packed(row), row, p.de_acc == 1u) * p.ew; }
fn de_add(row: u32, j: u32, v: f32) {
    let i = de_row(row) + j;
    bws[i] = S(f32(bws[i]) + v);
}
fn dx_add(row: u32, k: u32, v: f32) {
    let i = packed(row) * p.inw + k;
    dxin[i] = S(f32(dxin[i]) + v);
}

// Workgroup sums for cells whose step reduces over the row (layer norm) or over a column of a
// derived matrix (the uRNN): invocation l's partial sums v (up to four at once) added in a
// fixed order in two levels: invocations 0-7 each add 8 slots (8l .. 8l + 7), then every
// invocation adds those 8; three barriers a call (a 64-to-1 tree took eight: on lavapipe each
// costs a pass over the workgroup's invocations: LSTM_LAYERNORM's cell_forward, with four
// calls, 55 -> 48 ms at C1). Every invocation must call it (uniform control flow), and gets
// the sums.
var<workgroup> red: array<vec4<f32>, 72>;
fn row_sum(l: u32, v: vec4<f32>) -> vec4<f32> {
    red[l] = v;
    workgroupBarrier();
    if (l < 8u) {
        let b = 8u * l;
        red[64u + l] = ((red[b] + red[b + 1u]) + (red[b + 2u] + red[b + 3u])) + ((red[b + 4u] + red[b + 5u]) + (red[b + 6u] + red[b + 7u]));
    }
    workgroupBarrier();
    let t = ((red[64u] + red[65u]) + (red[66u] + red[67u])) + ((red[68u] + red[69u]) + (red[70u] + red[71u]));
    // Everyone has read the result before the next call overwrites the slots.
    workgroupBarrier();
    return t;
}

fn dsigmoid(y: f32) -> f32 { return y * (1.0 - y); }
fn dtanh(y: f32) -> f32 { return 1.0 - y * y; }

// The step's state row `row` to the tape's states before each row, invocation l of a
// workgroup's share (stage.wgsl's stage_input, row_step.wgsl's cell_forward).
fn save_row(row: u32, l: u32) {
    for (var j = l; j < p.sw; j += WG) {
        tp[p.sprev_off + packed(row) * p.sw + j] = st[p.s_off + row * p.sw + j];
    }
}

// Regularisers (src/masks.rs; the CPU twin is src/cpu/generic.rs). p.seed and p.thresh: the
// mask stream and hit threshold; the counter is w[0] (see the top; f32 plans only, as
// gpu::CellPlan refuses the regularisers with f16 storage).
fn counter() -> u32 { return u32(f32(w[0])); }
// h is state 0 and the output (RnnConfig::validate), H_out wide.
fn h_width() -> u32 { return select(p.hidden, p.proj, p.proj > 0u); }
fn zoned(row: u32, j: u32) -> bool { return mask_hit(packed(row) * h_width() + j, p.seed, counter(), p.thresh); }

// Zoneout after a step's last stage: h (state and output) keeps its previous value where hit
// (p.stage == 1: training), or takes p.f h_prev + (1 - p.f) h_new (p.stage == 0: inference).
// The previous states are at p.sprev (saved in stage 0).
@compute @workgroup_size(64)
fn zoneout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.x;
    for (var j = lid.x; j < h_width(); j += WG) {
        let hp = s_prev(row, j);
        let hn = s_get(row, j);
        var h = p.f * hp + (1.0 - p.f) * hn;
        if (p.stage == 1u) {
            h = select(hn, hp, zoned(row, j));
        }
        s_set(row, j, h);
        out_set(row, j, h);
    }
}

// Zoneout's backward, before a step's last stage: where h kept its previous value, its
// gradient g = dh + dout is set aside in scr [B, H_out] (added to the previous h's by
// zoneout_add) and dh = -dout, so the cell's `dh + dout` is exactly 0.
@compute @workgroup_size(64)
fn zoneout_stash(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.x;
    let n = h_width();
    for (var j = lid.x; j < n; j += WG) {
        var g = 0.0;
        if (zoned(row, j)) {
            g = ds_get(row, j) + dout(row, j);
            ds_set(row, j, -dout(row, j));
        }
        scr[row * n + j] = S(g);
    }
}

// Zoneout's backward, after the step: the set-aside gradients added to the previous h's.
@compute @workgroup_size(64)
fn zoneout_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.x;
    let n = h_width();
    for (var j = lid.x; j < n; j += WG) {
        if (zoned(row, j)) {
            ds_set(row, j, ds_get(row, j) + f32(scr[row * n + j]));
        }
    }
}

// Inverted dropout of [p.rows, p.out_w] (every packed row of a layer's output, or the
// gradient of the next layer's input): io[i] = xin[i] * p.f where not hit, else 0. Linear
// over the elements in workgroups of 256, folded into (x, y).
@compute @workgroup_size(256)
fn dropout_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid.x;
    if (i >= p.rows * p.out_w) {
        return;
    }
    io[i] = S(select(f32(xin[i]) * p.f, 0.0, mask_hit(i, p.seed, counter(), p.thresh)));
}
