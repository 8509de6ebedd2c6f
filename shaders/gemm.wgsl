// General matrix product for the input projection of all steps and the post-loop gradient
// GEMMs: C = alpha * op(A) op(B) + beta * C + bias, with op() chosen by strides, so one
// kernel serves A B, A^T B and A B^T over sub-blocks of larger buffers.
//   @0 params uniform, dynamic offset: GemmParams
//   @1 a      read: element (i, k) of op(A) at a_off + i*a_rs + k*a_cs
//   @2 b      read: element (k, j) of op(B) at b_off + k*b_rs + j*b_cs
//   @3 c      read_write: C[i, j] at c_off + i*ldc + j; not read when beta == 0 (NaN-safe)
//   @4 bias   read: bias[bias_off + j] added to each row when bias_off != NONE
// Dispatch: (ceil(n / 64), ceil(m / 64), 1); workgroup 16x16, each invocation a 4x4 block
// of C held in registers. No workgroup memory (on lavapipe shared tiles were slower).
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

@compute @workgroup_size(16, 16)
fn gemm(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i0 = gid.y * 4u;
    let j0 = gid.x * 4u;
    if (i0 >= p.m || j0 >= p.n) {
        return;
    }
    var acc: array<vec4<f32>, 4>;
    // Rows / columns past the edge read row/column 0 of the block instead: always in
    // bounds, and their results are never stored.
    var ai: array<u32, 4>;
    var bj: array<u32, 4>;
    for (var t = 0u; t < 4u; t++) {
        ai[t] = p.a_off + select(i0, i0 + t, i0 + t < p.m) * p.a_rs;
        bj[t] = p.b_off + select(j0, j0 + t, j0 + t < p.n) * p.b_cs;
    }
    for (var kk = 0u; kk < p.k; kk++) {
        let ka = kk * p.a_cs;
        let kb = kk * p.b_rs;
        let bv = vec4<f32>(b[bj[0] + kb], b[bj[1] + kb], b[bj[2] + kb], b[bj[3] + kb]);
        acc[0] += a[ai[0] + ka] * bv;
        acc[1] += a[ai[1] + ka] * bv;
        acc[2] += a[ai[2] + ka] * bv;
        acc[3] += a[ai[3] + ka] * bv;
    }
    for (var t = 0u; t < 4u; t++) {
        let i = i0 + t;
        if (i >= p.m) {
            break;
        }
        for (var u = 0u; u < 4u; u++) {
            let j = j0 + u;
            if (j >= p.n) {
                break;
            }
            var v = p.alpha * acc[t][u];
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
}
