// Conversions between the training kit's f32 buffers and the cell drivers' storage precision
// (S: f32 or f16, src/precision.rs), for mixed-precision training: master weights to their
// f16 copy, a layer's f16 input and output to and from the f32 kit, and the loss scale.
//   @0 params uniform, dynamic offset: CastParams
//   @1 a32    read: f32 source (to_stored)
//   @2 a_s    read: S source (to_f32)
//   @3 d32    read_write: f32 target (to_f32)
//   @4 d_s    read_write: S target (to_stored)
//   @5 state  read: an optimiser state block (f32); the loss scale at scale_off
// Both copy a [rows, width] block between row strides: dst[dst_off + r * dst_ld + c] =
// src[src_off + r * src_ld + c] * k, k = 1 (scale_off == NONE), the loss scale at
// state[scale_off] (0 meaning none: k = 1), or its inverse with `invert`. Linear over
// rows * width in workgroups of 256, folded into (x, y).

const NONE: u32 = 0xffffffffu;

struct CastParams {
    rows: u32,
    width: u32,
    src_off: u32,
    src_ld: u32,
    dst_off: u32,
    dst_ld: u32,
    scale_off: u32,
    invert: u32,
}

@group(0) @binding(0) var<uniform> p: CastParams;
@group(0) @binding(1) var<storage, read> a32: array<f32>;
@group(0) @binding(2) var<storage, read> a_s: array<S>;
@group(0) @binding(3) var<storage, read_write> d32: array<f32>;
@group(0) @binding(4) var<storage, read_write> d_s: array<S>;
@group(0) @binding(5) var<storage, read> state: array<f32>;

fn factor() -> f32 {
    if (p.scale_off == NONE) {
        return 1.0;
    }
    let s = state[p.scale_off];
    if (s <= 0.0) {
        return 1.0;
    }
    return select(s, 1.0 / s, p.invert != 0u);
}

// (source index, target index) of element i of the block, or false past its end.
fn at(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> vec3<u32> {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid.x;
    let r = i / max(p.width, 1u);
    let c = i % max(p.width, 1u);
    return vec3<u32>(p.src_off + r * p.src_ld + c, p.dst_off + r * p.dst_ld + c, u32(i < p.rows * p.width));
}

@compute @workgroup_size(256)
fn to_stored(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let ix = at(wid, nwg, lid);
    if (ix.z == 0u) {
        return;
    }
    d_s[ix.y] = S(a32[ix.x] * factor());
}

@compute @workgroup_size(256)
fn to_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let ix = at(wid, nwg, lid);
    if (ix.z == 0u) {
        return;
    }
    d32[ix.y] = f32(a_s[ix.x]) * factor();
}
