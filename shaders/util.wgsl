// Row movement and reductions around the recurrent loop: states moved between the caller's
// order and a plan's (gather_rows), weights transposed for the kernels, and deterministic
// column sums for the bias gradients (no float atomics).
//   @0 params uniform, dynamic offset: UtilParams
//   @1 src    read
//   @2 src4   read: src again, as vec4s (colsum4)
//   @3 seq    read: u32 row tables
//   @4 dst    read_write
// Dispatch: linear over rows * width (colsum: width) in workgroups of 256, folded into
// (min(groups, 65535), ceil(groups / 65535), 1).

struct UtilParams {
    rows: u32,
    width: u32,
    src_off: u32,
    src_ld: u32,
    src_col: u32,
    seq_off: u32,
    dst_off: u32,
    dst_ld: u32,
    accumulate: u32,  // colsum: 1 adds to dst (a later run of rows), 0 overwrites it

    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: UtilParams;
@group(0) @binding(1) var<storage, read> src: array<S>;
@group(0) @binding(2) var<storage, read> src4: array<vec4<S>>;
@group(0) @binding(3) var<storage, read> seq: array<u32>;
@group(0) @binding(4) var<storage, read_write> dst: array<S>;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * 256u + lid.x;
}

// dst[dst_off + c * rows + r] = src[src_off + r * width + c]: a [rows, width] block of src
// transposed into dst.
@compute @workgroup_size(256)
fn transpose(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.rows * p.width) {
        return;
    }
    let c = i / p.rows;
    let r = i % p.rows;
    dst[p.dst_off + i] = S(f32(src[p.src_off + r * p.width + c]));
}

// dst[dst_off + n * dst_ld + k] = src[src_off + rows_of[n] * src_ld + src_col + k], rows_of
// = seq[seq_off..]: rows moved between orders and strides (the cell plans' states between the
// caller's per-state tensors in batch order and their own interleaved rows in sorted order).
@compute @workgroup_size(256)
fn gather_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.rows * p.width) {
        return;
    }
    let n = i / p.width;
    let k = i % p.width;
    dst[p.dst_off + n * p.dst_ld + k] = S(f32(src[p.src_off + seq[p.seq_off + n] * p.src_ld + p.src_col + k]));
}

// dst[j] = sum over n < rows of src[n, j] (row stride src_ld), summed in row order; with
// `accumulate`, added to what dst holds, so long columns are summed in runs of rows (one
// invocation's loop must stay within an adapter's cap on loop iterations) in the same order.
@compute @workgroup_size(256)
fn colsum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j = linear_id(wid, nwg, lid);
    if (j >= p.width) {
        return;
    }
    var acc = select(0.0, f32(dst[p.dst_off + j]), p.accumulate != 0u);
    for (var n = 0u; n < p.rows; n++) {
        acc += f32(src[p.src_off + n * p.src_ld + j]);
    }
    dst[p.dst_off + j] = S(acc);
}

// colsum for 4 adjacent columns per invocation, read as vec4s (src_off, src_ld and width
// multiples of 4; src bound again at @2): each column's sum is the same additions in the same
// order as colsum's (the same bits), with a quarter of the loads, and lane-varying vec4 loads
// instead of scalar gathers on lavapipe. Workgroups of 64, so a narrow block still spreads
// over several.
@compute @workgroup_size(64)
fn colsum4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let q = (wid.y * nwg.x + wid.x) * 64u + lid.x;
    let j = 4u * q;
    if (j >= p.width) {
        return;
    }
    let o = p.dst_off + j;
    var acc = vec4<f32>(0.0);
    if (p.accumulate != 0u) {
        acc = vec4<f32>(f32(dst[o]), f32(dst[o + 1u]), f32(dst[o + 2u]), f32(dst[o + 3u]));
    }
    let base = p.src_off / 4u + q;
    let ld = p.src_ld / 4u;
    for (var n = 0u; n < p.rows; n++) {
        acc += vec4<f32>(src4[base + n * ld]);
    }
    dst[o] = S(acc.x);
    dst[o + 1u] = S(acc.y);
    dst[o + 2u] = S(acc.z);
    dst[o + 3u] = S(acc.w);
}
