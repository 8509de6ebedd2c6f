// The strided GEMMs, after shared/gemm_io.wgsl (parameters, bindings, ADJACENT, store_row,
// store4).
// Dispatch: (ceil(n / 256), ceil(m / 8), 1); workgroup 64, each invocation an 8-row x
// 4-column block of C in registers (columns 64 apart): per k, four loads of B (each
// contiguous across the workgroup when b_cs == 1) and 8 loads of A shared by every
// invocation of the workgroup.
// No workgroup memory (on lavapipe shared tiles were slower than this).

@compute @workgroup_size(64)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let cstep = select(64u, 1u, ADJACENT);
    let j0 = select(wid.x * 256u + lid.x, (wid.x * 64u + lid.x) * 4u, ADJACENT);
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
    let b1 = p.b_off + min(j0 + cstep, last_j) * p.b_cs;
    let b2 = p.b_off + min(j0 + 2u * cstep, last_j) * p.b_cs;
    let b3 = p.b_off + min(j0 + 3u * cstep, last_j) * p.b_cs;
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
        let bv = vec4<f32>(f32(b[b0 + kb]), f32(b[b1 + kb]), f32(b[b2 + kb]), f32(b[b3 + kb]));
        let ka = kk * p.a_cs;
        c0 += f32(a[a0 + ka]) * bv;
        c1 += f32(a[a1 + ka]) * bv;
        c2 += f32(a[a2 + ka]) * bv;
        c3 += f32(a[a3 + ka]) * bv;
        c4 += f32(a[a4 + ka]) * bv;
        c5 += f32(a[a5 + ka]) * bv;
        c6 += f32(a[a6 + ka]) * bv;
        c7 += f32(a[a7 + ka]) * bv;
    }
    store_row(i0, j0, cstep, c0);
    store_row(i0 + 1u, j0, cstep, c1);
    store_row(i0 + 2u, j0, cstep, c2);
    store_row(i0 + 3u, j0, cstep, c3);
    store_row(i0 + 4u, j0, cstep, c4);
    store_row(i0 + 5u, j0, cstep, c5);
    store_row(i0 + 6u, j0, cstep, c6);
    store_row(i0 + 7u, j0, cstep, c7);
}

// The same product when B is row-major with 4-aligned offset and row stride (b_cs == 1,
// b_off % 4 == 0, b_rs % 4 == 0, n % 4 == 0): each invocation owns 4 adjacent columns and
// reads them as one vec4 per k, so a workgroup reads 1 KiB of contiguous B per k.
// Dispatch: (ceil(n / 256), ceil(m / 8), 1), workgroup 64.
@compute @workgroup_size(64)
fn gemm4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j0 = (wid.x * 64u + lid.x) * 4u;
    let i0 = wid.y * 8u;
    if (j0 >= p.n || i0 >= p.m) {
        return;
    }
    let last_i = p.m - 1u;
    let a0 = p.a_off + min(i0, last_i) * p.a_rs;
    let a1 = p.a_off + min(i0 + 1u, last_i) * p.a_rs;
    let a2 = p.a_off + min(i0 + 2u, last_i) * p.a_rs;
    let a3 = p.a_off + min(i0 + 3u, last_i) * p.a_rs;
    let a4 = p.a_off + min(i0 + 4u, last_i) * p.a_rs;
    let a5 = p.a_off + min(i0 + 5u, last_i) * p.a_rs;
    let a6 = p.a_off + min(i0 + 6u, last_i) * p.a_rs;
    let a7 = p.a_off + min(i0 + 7u, last_i) * p.a_rs;
    let bq = p.b_off / 4u + j0 / 4u;
    let brq = p.b_rs / 4u;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let bv = vec4<f32>(b4[bq + kk * brq]);
        let ka = kk * p.a_cs;
        c0 += f32(a[a0 + ka]) * bv;
        c1 += f32(a[a1 + ka]) * bv;
        c2 += f32(a[a2 + ka]) * bv;
        c3 += f32(a[a3 + ka]) * bv;
        c4 += f32(a[a4 + ka]) * bv;
        c5 += f32(a[a5 + ka]) * bv;
        c6 += f32(a[a6 + ka]) * bv;
        c7 += f32(a[a7 + ka]) * bv;
    }
    store4(i0, j0, c0);
    store4(i0 + 1u, j0, c1);
    store4(i0 + 2u, j0, c2);
    store4(i0 + 3u, j0, c3);
    store4(i0 + 4u, j0, c4);
    store4(i0 + 5u, j0, c5);
    store4(i0 + 6u, j0, c6);
    store4(i0 + 7u, j0, c7);
}

// gemm4 when A is also row-major and 4-aligned along k (a_cs == 1, a_off, a_rs and k
// multiples of 4): four k at a time, one vec4 of A per row and four vec4s of B.
@compute @workgroup_size(64)
fn gemm44(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j0 = (wid.x * 64u + lid.x) * 4u;
    let i0 = wid.y * 8u;
    if (j0 >= p.n || i0 >= p.m) {
        return;
    }
    let last_i = p.m - 1u;
    let arq = p.a_rs / 4u;
    let aq = p.a_off / 4u;
    let r0 = aq + min(i0, last_i) * arq;
    let r1 = aq + min(i0 + 1u, last_i) * arq;
    let r2 = aq + min(i0 + 2u, last_i) * arq;
    let r3 = aq + min(i0 + 3u, last_i) * arq;
    let r4 = aq + min(i0 + 4u, last_i) * arq;
    let r5 = aq + min(i0 + 5u, last_i) * arq;
    let r6 = aq + min(i0 + 6u, last_i) * arq;
    let r7 = aq + min(i0 + 7u, last_i) * arq;
    let bq = p.b_off / 4u + j0 / 4u;
    let brq = p.b_rs / 4u;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    for (var kq = 0u; kq < p.k / 4u; kq++) {
        let kb = bq + kq * 4u * brq;
        let b = mat4x4<f32>(vec4<f32>(b4[kb]), vec4<f32>(b4[kb + brq]), vec4<f32>(b4[kb + 2u * brq]), vec4<f32>(b4[kb + 3u * brq]));
        c0 += b * vec4<f32>(a4[r0 + kq]);
        c1 += b * vec4<f32>(a4[r1 + kq]);
        c2 += b * vec4<f32>(a4[r2 + kq]);
        c3 += b * vec4<f32>(a4[r3 + kq]);
        c4 += b * vec4<f32>(a4[r4 + kq]);
        c5 += b * vec4<f32>(a4[r5 + kq]);
        c6 += b * vec4<f32>(a4[r6 + kq]);
        c7 += b * vec4<f32>(a4[r7 + kq]);
    }
    store4(i0, j0, c0);
    store4(i0 + 1u, j0, c1);
    store4(i0 + 2u, j0, c2);
    store4(i0 + 3u, j0, c3);
    store4(i0 + 4u, j0, c4);
    store4(i0 + 5u, j0, c5);
    store4(i0 + 6u, j0, c6);
    store4(i0 + 7u, j0, c7);
}

// gemm4 when A is stored transposed (a_rs == 1: element (i, k) at a_off + i + k*a_cs) with
// a_off and a_cs multiples of 4 and m a multiple of 8: the 8 rows of a block are 8 adjacent
// elements, read as two vec4s per k. This is the shape of the weight gradients dG^T X.
@compute @workgroup_size(64)
fn gemm4t(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let j0 = (wid.x * 64u + lid.x) * 4u;
    let i0 = wid.y * 8u;
    if (j0 >= p.n || i0 >= p.m) {
        return;
    }
    let aq = (p.a_off + i0) / 4u;
    let acq = p.a_cs / 4u;
    let bq = p.b_off / 4u + j0 / 4u;
    let brq = p.b_rs / 4u;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    // Four k a pass (then the rest one at a time): a quarter of the loop's own work, each
    // accumulator still summed over k in order. The tail repeats the body on purpose (C1 LSTM's
    // gemm4t on lavapipe, benches/results/gemm4t-unroll-lavapipe-2026-12-06.txt): one loop
    // whose passes run min(4, k - k0) times was not unrolled (145-152 ms against 111-114 ms),
    // and the body as a function over pointers to the accumulators was slower too (117-128 ms
    // against 107-110 ms).
    let k4 = p.k & ~3u;
    var kk = 0u;
    for (; kk < k4; kk += 4u) {
        for (var u = 0u; u < 4u; u++) {
            let bv = vec4<f32>(b4[bq + (kk + u) * brq]);
            let lo = vec4<f32>(a4[aq + (kk + u) * acq]);
            let hi = vec4<f32>(a4[aq + (kk + u) * acq + 1u]);
            c0 += lo.x * bv;
            c1 += lo.y * bv;
            c2 += lo.z * bv;
            c3 += lo.w * bv;
            c4 += hi.x * bv;
            c5 += hi.y * bv;
            c6 += hi.z * bv;
            c7 += hi.w * bv;
        }
    }
    for (; kk < p.k; kk++) {
        let bv = vec4<f32>(b4[bq + kk * brq]);
        let lo = vec4<f32>(a4[aq + kk * acq]);
        let hi = vec4<f32>(a4[aq + kk * acq + 1u]);
        c0 += lo.x * bv;
        c1 += lo.y * bv;
        c2 += lo.z * bv;
        c3 += lo.w * bv;
        c4 += hi.x * bv;
        c5 += hi.y * bv;
        c6 += hi.z * bv;
        c7 += hi.w * bv;
    }
    store4(i0, j0, c0);
    store4(i0 + 1u, j0, c1);
    store4(i0 + 2u, j0, c2);
    store4(i0 + 3u, j0, c3);
    store4(i0 + 4u, j0, c4);
    store4(i0 + 5u, j0, c5);
    store4(i0 + 6u, j0, c6);
    store4(i0 + 7u, j0, c7);
}
