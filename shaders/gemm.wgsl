// General matrix product for the input projection of all steps and the post-loop gradient
// GEMMs: C = alpha * op(A) op(B) + beta * C + bias, with op() chosen by strides, so one
// kernel serves A B, A^T B and A B^T over sub-blocks of larger buffers.
//   @0 params uniform, dynamic offset: GemmParams
//   @1 a      read: element (i, k) of op(A) at a_off + i*a_rs + k*a_cs
//   @2 b      read: element (k, j) of op(B) at b_off + k*b_rs + j*b_cs
//   @3 c      read_write: C[i, j] at c_off + i*ldc + j; not read when beta == 0 (NaN-safe)
//   @4 bias   read: bias[bias_off + j] added to each row when bias_off != NONE
// Dispatch: (ceil(n / 256), ceil(m / 8), 1); workgroup 64, each invocation an 8-row x
// 4-column block of C in registers (columns 64 apart): per k, four loads of B (each
// contiguous across the workgroup when b_cs == 1) and 8 loads of A shared by every
// invocation of the workgroup.
// No workgroup memory (on lavapipe shared tiles were slower than this).
// Every C element is summed over k in order by one invocation: results are bitwise
// reproducible run to run.

const NONE: u32 = 0xffffffffu;

struct GemmParams {
    m: u32,
    n: u32,
    k: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    c_off: u32,
    ldc: u32,
    bias_off: u32,
    alpha: f32,
    beta: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: GemmParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

@compute @workgroup_size(64)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    // The four columns are 64 apart, so each load and store is contiguous across the
    // workgroup's invocations.
    let j0 = wid.x * 256u + lid.x;
    let i0 = wid.y * 8u;
    if (j0 >= p.n || i0 >= p.m) {
        return;
    }
    // Rows / columns past the edge repeat the last valid one: always in bounds, never stored.
    let last_i = p.m - 1u;
    let a0 = p.a_off + min(i0, last_i) * p.a_rs;
    let a1 = p.a_off + min(i0 + 1u, last_i) * p.a_rs;
    let a2 = p.a_off + min(i0 + 2u, last_i) * p.a_rs;
    let a3 = p.a_off + min(i0 + 3u, last_i) * p.a_rs;
    let a4 = p.a_off + min(i0 + 4u, last_i) * p.a_rs;
    let a5 = p.a_off + min(i0 + 5u, last_i) * p.a_rs;
    let a6 = p.a_off + min(i0 + 6u, last_i) * p.a_rs;
    let a7 = p.a_off + min(i0 + 7u, last_i) * p.a_rs;
    let last_j = p.n - 1u;
    let b0 = p.b_off + min(j0, last_j) * p.b_cs;
    let b1 = p.b_off + min(j0 + 64u, last_j) * p.b_cs;
    let b2 = p.b_off + min(j0 + 128u, last_j) * p.b_cs;
    let b3 = p.b_off + min(j0 + 192u, last_j) * p.b_cs;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let kb = kk * p.b_rs;
        let bv = vec4<f32>(b[b0 + kb], b[b1 + kb], b[b2 + kb], b[b3 + kb]);
        let ka = kk * p.a_cs;
        c0 += a[a0 + ka] * bv;
        c1 += a[a1 + ka] * bv;
        c2 += a[a2 + ka] * bv;
        c3 += a[a3 + ka] * bv;
        c4 += a[a4 + ka] * bv;
        c5 += a[a5 + ka] * bv;
        c6 += a[a6 + ka] * bv;
        c7 += a[a7 + ka] * bv;
    }
    store_row(i0, j0, c0);
    store_row(i0 + 1u, j0, c1);
    store_row(i0 + 2u, j0, c2);
    store_row(i0 + 3u, j0, c3);
    store_row(i0 + 4u, j0, c4);
    store_row(i0 + 5u, j0, c5);
    store_row(i0 + 6u, j0, c6);
    store_row(i0 + 7u, j0, c7);
}

// Writes the valid part of a row block (columns j0, j0+64, j0+128, j0+192):
// alpha * acc + beta * C + bias.
fn store_row(i: u32, j0: u32, acc: vec4<f32>) {
    if (i >= p.m) {
        return;
    }
    for (var u = 0u; u < 4u; u++) {
        let j = j0 + 64u * u;
        if (j >= p.n) {
            return;
        }
        var v = p.alpha * acc[u];
        let at = p.c_off + i * p.ldc + j;
        if (p.beta != 0.0) {
            v += p.beta * c[at];
        }
        if (p.bias_off != NONE) {
            v += bias[p.bias_off + j];
        }
        c[at] = v;
    }
}
