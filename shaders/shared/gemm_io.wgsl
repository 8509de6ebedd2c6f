// The GEMM kernels' shared part, joined before `gemm.wgsl` and before `gemm_subgroup.wgsl`:
// the parameters, the bindings, the generic kernels' column layout and the stores.
// General matrix product for the input projection of all steps and the post-loop gradient
// GEMMs: C = alpha * op(A) op(B) + beta * C + bias, with op() chosen by strides, so one
// kernel serves A B, A^T B and A B^T over sub-blocks of larger buffers.
//   @0 params uniform, dynamic offset: GemmParams
//   @1 a      read: element (i, k) of op(A) at a_off + i*a_rs + k*a_cs
//   @2 b      read: element (k, j) of op(B) at b_off + k*b_rs + j*b_cs
//   @3 c      read_write: C[i, j] at c_off + i*ldc + j; not read when beta == 0 (NaN-safe)
//   @4 bias   read: bias[bias_off + j] added to each row when bias_off != NONE
//   @5 b4     read: the same buffer as @2 seen as vec4s (gemm4, gemm44)
//   @6 a4     read: the same buffer as @1 seen as vec4s (gemm44, gemm4t)
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
@group(0) @binding(1) var<storage, read> a: array<S>;
@group(0) @binding(2) var<storage, read> b: array<S>;
@group(0) @binding(3) var<storage, read_write> c: array<S>;
@group(0) @binding(4) var<storage, read> bias: array<S>;
@group(0) @binding(5) var<storage, read> b4: array<vec4<S>>;
@group(0) @binding(6) var<storage, read> a4: array<vec4<S>>;

// Writes 4 adjacent columns of row i: store_row's with adjacent columns (the vec4 kernels'
// n is a multiple of 4, so all or none are valid). (The kernels call it once per row with
// named accumulators: passing the 8 accumulators as an array made lavapipe keep them in
// memory, and the 1600x1024x128 product went from 36 to 60 ms.)
fn store4(i: u32, j0: u32, acc: vec4<f32>) {
    store_row(i, j0, 1u, acc);
}

// How an invocation's four columns lie. false: 64 apart, so each load and store is
// contiguous across the workgroup's invocations. true (narrow C, n <= 128, as dX = dG W_ih
// or dW_ih = dG^T X when the input size is not a multiple of 4): adjacent, so no invocation
// computes clamped copies of the last column (64-apart columns leave 3 of 4 accumulators
// idle when n < 64).
override ADJACENT: bool = false;

// Writes the valid part of a row block (columns j0 + u * cstep, u < 4):
// alpha * acc + beta * C + bias.
fn store_row(i: u32, j0: u32, cstep: u32, acc: vec4<f32>) {
    if (i >= p.m) {
        return;
    }
    for (var u = 0u; u < 4u; u++) {
        let j = j0 + cstep * u;
        if (j >= p.n) {
            return;
        }
        var v = p.alpha * acc[u];
        let at = p.c_off + i * p.ldc + j;
        if (p.beta != 0.0) {
            v += p.beta * f32(c[at]);
        }
        if (p.bias_off != NONE) {
            v += f32(bias[p.bias_off + j]);
        }
        c[at] = S(v);
    }
}
