// Rows moved by tables (src/gpu/rows.rs, RowMoves): a block of `rows` rows of `width` elements,
// row n read from src row stab[n] (at column src_col, row stride src_ld) and written to dst
// row dtab[n] (at column dst_col, row stride dst_ld). Layout changes around a plan (ONNX's
// padded, time- or batch-major tensors and reversed sequences to and from the packed rows).
//   @0 params uniform, dynamic offset: RowsParams
//   @1 src    read
//   @2 tab    read: u32 row tables
//   @3 dst    read_write
// Dispatch: linear over rows * width in workgroups of 256, folded into
// (min(groups, 65535), ceil(groups / 65535), 1).

struct RowsParams {
    rows: u32,
    width: u32,
    src_off: u32,
    src_ld: u32,
    src_col: u32,
    stab: u32,
    dst_off: u32,
    dst_ld: u32,
    dst_col: u32,
    dtab: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: RowsParams;
@group(0) @binding(1) var<storage, read> src: array<S>;
@group(0) @binding(2) var<storage, read> tab: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<S>;

@compute @workgroup_size(256)
fn move_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid.x;
    if (i >= p.rows * p.width) {
        return;
    }
    let n = i / p.width;
    let k = i % p.width;
    dst[p.dst_off + tab[p.dtab + n] * p.dst_ld + p.dst_col + k] = src[p.src_off + tab[p.stab + n] * p.src_ld + p.src_col + k];
}
