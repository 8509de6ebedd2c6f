// The training kit: embedding lookup and its gradient, row/block rearrangement for heads on
// several states, losses with their gradients and metrics, global-norm clipping and the
// optimisers. Every reduction has one owner and a fixed order (no float atomics), so a
// training run is bitwise reproducible.
//   @0 params uniform, dynamic offset: TrainParams
//   @1 a      read: the main input (a table, logits, gradients, ...)
//   @2 b      read: a second input (targets)
//   @3 idx    read: u32 data (token ids, sort tables, class targets)
//   @4 out    read_write: the main output (rows, gradients, parameters)
//   @5 out2   read_write: a second output (per-row losses, optimiser moments)
//   @6 state  read_write: scalars (loss / metric accumulators, optimiser state)
// Dispatch: elementwise kernels are linear over their elements in workgroups of 256, folded
// into (min(groups, 65535), ceil(groups / 65535), 1); reductions run as one workgroup.
//
// Optimiser state block (at state_off): [0] step t, [1] beta1^t, [2] beta2^t, [3] the step's
// gradient scale (< 0: the step is skipped because the gradient norm was not finite),
// [4] the step's gradient norm before clipping, [5] skipped steps, [8 + i] the sum of squares
// of parameter group i.
//
// Metric block (at state_off): [0] sum of per-row losses, [1] correct predictions, [2] rows.

struct TrainParams {
    n: u32,
    width: u32,
    a_off: u32,
    b_off: u32,
    idx_off: u32,
    out_off: u32,
    out2_off: u32,
    state_off: u32,
    count: u32,
    extra: u32,
    _pad1: u32,
    _pad2: u32,
    f0: f32,
    f1: f32,
    f2: f32,
    f3: f32,
}

@group(0) @binding(0) var<uniform> p: TrainParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> idx: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> out2: array<f32>;
@group(0) @binding(6) var<storage, read_write> state: array<f32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;
var<workgroup> red2: array<f32, 256>;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

// Sums red[] and red2[] over the workgroup in a fixed tree; the totals end in red[0], red2[0].
fn reduce_pair(l: u32) {
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if (l < s) {
            red[l] += red[l + s];
            red2[l] += red2[l + s];
        }
    }
    workgroupBarrier();
}

// out[out_off + r * width + d] = a[a_off + idx[idx_off + r] * width + d], r < n. Ids are
// range-checked on the host (EmbeddingIndex::new); the kernel also clamps them below
// extra (the vocabulary), so a bad buffer can't read outside the table.
@compute @workgroup_size(256)
fn embed_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.n * p.width) {
        return;
    }
    let r = i / p.width;
    let d = i % p.width;
    let id = min(idx[p.idx_off + r], p.extra - 1u);
    out[p.out_off + i] = a[p.a_off + id * p.width + d];
}

// The embedding gradient without atomics. idx at idx_off holds, for the `count` distinct ids
// of a batch (padding excluded): seg[count + 1] (start of each id's run), ids[count], then
// the rows sorted by id (stable). out[out_off + id * width + d] = sum of a[a_off + row * width
// + d] over the id's rows, in row order. Rows of ids absent from the batch are not written
// (the caller zeroes the table gradient first). Ids are clamped below extra (the
// vocabulary) and rows below n, as in embed_forward.
@compute @workgroup_size(256)
fn embed_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.count * p.width) {
        return;
    }
    let u = i / p.width;
    let d = i % p.width;
    let start = min(idx[p.idx_off + u], p.n);
    let end = min(idx[p.idx_off + u + 1u], p.n);
    let id = min(idx[p.idx_off + p.count + 1u + u], p.extra - 1u);
    let rows = p.idx_off + 2u * p.count + 1u;
    var acc = 0.0;
    for (var j = start; j < end; j++) {
        acc += a[p.a_off + min(idx[rows + j], p.n - 1u) * p.width + d];
    }
    out[p.out_off + id * p.width + d] = acc;
}

// out[out_off + i] = f0, i < n.
@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    out[p.out_off + i] = p.f0;
}

// count blocks [n, width] (as h_n's [directions, B, H]) side by side as rows [n, count * width]:
// out[r, d * width + j] = a[d, r, j].
@compute @workgroup_size(256)
fn blocks_to_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    let wide = p.count * p.width;
    if (i >= p.n * wide) {
        return;
    }
    let r = i / wide;
    let d = (i % wide) / p.width;
    let j = i % p.width;
    out[p.out_off + i] = a[p.a_off + (d * p.n + r) * p.width + j];
}

// The inverse of blocks_to_rows: out[d, r, j] = a[r, d * width + j].
@compute @workgroup_size(256)
fn rows_to_blocks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.count * p.n * p.width) {
        return;
    }
    let d = i / (p.n * p.width);
    let r = (i / p.width) % p.n;
    let j = i % p.width;
    out[p.out_off + i] = a[p.a_off + r * p.count * p.width + d * p.width + j];
}

// Inverted dropout: out[out_off + i] = a[a_off + i] * f1 where the element is kept, else 0,
// for i < n. Element i is dropped when mask_hit(i, seed, counter, width) (shared/random.wgsl;
// width is the drop probability times 2^32); seed is idx_off, and counter is the float
// state[state_off] (e.g. an optimiser's step count, so one prepared Program draws a new mask
// every step) when count == 1, else 0. The same call on the gradient is the backward.
@compute @workgroup_size(256)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    var counter = 0u;
    if (p.count == 1u) {
        counter = u32(state[p.state_off]);
    }
    var v = 0.0;
    if (!mask_hit(i, p.idx_off, counter, p.width)) {
        v = a[p.a_off + i] * p.f1;
    }
    out[p.out_off + i] = v;
}

// Adds this batch's totals to the metric block: sum of per-row losses, correct predictions
// and the row count, summed by thread 0 after the fixed tree.
fn add_metrics(l: u32, loss: f32, correct: f32) {
    red[l] = loss;
    red2[l] = correct;
    reduce_pair(l);
    if (l == 0u) {
        state[p.state_off] += red[0];
        state[p.state_off + 1u] += red2[0];
        state[p.state_off + 2u] += f32(p.n);
    }
}

// Binary cross-entropy with logits over n rows: a = logits, b = targets in [0, 1];
// out = f0 * (sigmoid(z) - y) (f0 = 1/n for the mean); a prediction is correct when
// (z > 0) == (y > 0.5). One workgroup.
@compute @workgroup_size(256)
fn bce_logits(@builtin(local_invocation_id) lid: vec3<u32>) {
    let l = lid.x;
    var loss = 0.0;
    var correct = 0.0;
    for (var r = l; r < p.n; r += WG) {
        let z = a[p.a_off + r];
        let y = b[p.b_off + r];
        loss += max(z, 0.0) - z * y + log(1.0 + exp(-abs(z)));
        var s: f32;
        if (z >= 0.0) {
            s = 1.0 / (1.0 + exp(-z));
        } else {
            let e = exp(z);
            s = e / (1.0 + e);
        }
        out[p.out_off + r] = p.f0 * (s - y);
        if ((z > 0.0) == (y > 0.5)) {
            correct += 1.0;
        }
    }
    add_metrics(l, loss, correct);
}

// Mean squared error over n values: a = predictions, b = targets; out = f0 * 2 (x - y).
// One workgroup.
@compute @workgroup_size(256)
fn mse(@builtin(local_invocation_id) lid: vec3<u32>) {
    let l = lid.x;
    var loss = 0.0;
    for (var r = l; r < p.n; r += WG) {
        let e = a[p.a_off + r] - b[p.b_off + r];
        loss += e * e;
        out[p.out_off + r] = p.f0 * 2.0 * e;
    }
    add_metrics(l, loss, 0.0);
}

// A NaN that is not a constant expression (WGSL refuses those): softmax_ce's answer to a
// class target out of range.
fn nan_at(i: u32) -> f32 {
    return bitcast<f32>(0x7fc00000u | (i & 0u));
}

// Softmax cross-entropy, one invocation per row: a = logits [n, width], idx = class ids;
// out = f0 * (softmax(z) - onehot(y)); out2[out2_off + r] = the row's loss and
// out2[out2_off + n + r] = 1 when the arg-max is the target.
// A target >= width (not written through ClassTargets) gives the row NaN, not a clamped loss.
@compute @workgroup_size(256)
fn softmax_ce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = linear_id(wid, nwg, lid);
    if (r >= p.n) {
        return;
    }
    let row = p.a_off + r * p.width;
    let tr = idx[p.idx_off + r];
    let bad = tr >= p.width; // ClassTargets checks them; one written around it is loud, not clamped
    let t = min(tr, p.width - 1u);
    var m = a[row];
    var best = 0u;
    for (var c = 1u; c < p.width; c++) {
        let z = a[row + c];
        if (z > m) {
            m = z;
            best = c;
        }
    }
    var s = 0.0;
    for (var c = 0u; c < p.width; c++) {
        s += exp(a[row + c] - m);
    }
    let inv = 1.0 / s;
    for (var c = 0u; c < p.width; c++) {
        var g = exp(a[row + c] - m) * inv;
        if (c == t) {
            g -= 1.0;
        }
        out[p.out_off + r * p.width + c] = select(p.f0 * g, nan_at(r), bad);
    }
    out2[p.out2_off + r] = select(log(s) + m - a[row + t], nan_at(r), bad);
    out2[p.out2_off + p.n + r] = select(0.0, 1.0, best == t && !bad);
}

// Adds softmax_ce's per-row losses and hits (a at a_off: [n] losses then [n] hits) to the
// metric block. One workgroup.
@compute @workgroup_size(256)
fn row_metrics(@builtin(local_invocation_id) lid: vec3<u32>) {
    let l = lid.x;
    var loss = 0.0;
    var correct = 0.0;
    for (var r = l; r < p.n; r += WG) {
        loss += a[p.a_off + r];
        correct += a[p.a_off + p.n + r];
    }
    add_metrics(l, loss, correct);
}

// state[state_off] = sum of a[a_off + i]^2, i < n. One workgroup.
@compute @workgroup_size(256)
fn sumsq(@builtin(local_invocation_id) lid: vec3<u32>) {
    let l = lid.x;
    var acc = 0.0;
    for (var i = l; i < p.n; i += WG) {
        let g = a[p.a_off + i];
        acc += g * g;
    }
    red[l] = acc;
    red2[l] = 0.0;
    reduce_pair(l);
    if (l == 0u) {
        state[p.state_off] = red[0];
    }
}

// Starts an optimiser step (one invocation): the global gradient norm over `count` groups,
// the clipping scale min(1, f0 / (norm + 1e-6)) (f0 <= 0: no clipping), t += 1 and the
// bias-correction powers (f1 = beta1, f2 = beta2). A non-finite norm skips the step.
// State block: [t, beta1^t, beta2^t, clip scale (-1: skip), norm, skipped, loss scale,
// finite steps since the loss scale last changed], then one squared norm per group.
@compute @workgroup_size(1)
fn opt_begin() {
    let s = p.state_off;
    var total = 0.0;
    for (var i = 0u; i < p.count; i++) {
        total += state[s + 8u + i];
    }
    let norm = sqrt(total);
    state[s + 4u] = norm;
    // NaN or infinite, tested on the bits (a compiler may assume floats are finite).
    if ((bitcast<u32>(norm) & 0x7f800000u) == 0x7f800000u) {
        state[s + 3u] = -1.0;
        state[s + 5u] += 1.0;
        // Dynamic loss scaling (f3: growth interval, 0 = off): an overflow halves the scale.
        if (p.f3 > 0.0) {
            state[s + 6u] = max(state[s + 6u] * 0.5, 1.0);
            state[s + 7u] = 0.0;
        }
        return;
    }
    // ... and f3 finite steps in a row double it.
    if (p.f3 > 0.0) {
        state[s + 7u] += 1.0;
        if (state[s + 7u] >= p.f3) {
            state[s + 6u] = min(state[s + 6u] * 2.0, 16777216.0);
            state[s + 7u] = 0.0;
        }
    }
    var scale = 1.0;
    if (p.f0 > 0.0 && norm > p.f0) {
        scale = p.f0 / (norm + 1e-6);
    }
    state[s + 3u] = scale;
    state[s] += 1.0;
    if (state[s] == 1.0) {
        state[s + 1u] = p.f1;
        state[s + 2u] = p.f2;
    } else {
        state[s + 1u] *= p.f1;
        state[s + 2u] *= p.f2;
    }
}

// Adam (PyTorch's form) on n parameters out[out_off..], gradients a[a_off..], moments
// out2[out2_off..] (m, then v): f0 = lr, f1 = beta1, f2 = beta2, f3 = eps.
@compute @workgroup_size(256)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    let scale = state[p.state_off + 3u];
    if (i >= p.n || scale < 0.0) {
        return;
    }
    let g = a[p.a_off + i] * scale;
    let mi = p.out2_off + i;
    let vi = p.out2_off + p.n + i;
    let m = p.f1 * out2[mi] + (1.0 - p.f1) * g;
    let v = p.f2 * out2[vi] + (1.0 - p.f2) * g * g;
    out2[mi] = m;
    out2[vi] = v;
    let bc1 = 1.0 - state[p.state_off + 1u];
    let bc2 = 1.0 - state[p.state_off + 2u];
    out[p.out_off + i] -= (p.f0 / bc1) * m / (sqrt(v) / sqrt(bc2) + p.f3);
}

// SGD with momentum (PyTorch's form, no dampening): buf = f1 * buf + g; w -= f0 * buf.
@compute @workgroup_size(256)
fn sgd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    let scale = state[p.state_off + 3u];
    if (i >= p.n || scale < 0.0) {
        return;
    }
    let g = a[p.a_off + i] * scale;
    let bi = p.out2_off + i;
    let buf = p.f1 * out2[bi] + g;
    out2[bi] = buf;
    out[p.out_off + i] -= p.f0 * buf;
}
