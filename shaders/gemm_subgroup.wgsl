// gemm.wgsl's kernels (after shared/gemm_io.wgsl, as there) with A shared through subgroup
// broadcasts, for adapters whose subgroups have at least 8 invocations (the context chooses
// them: `Context::subgroup_kernels`). On lavapipe every storage-buffer load is a loop over the 8
// lanes of a vector, uniform address or not (Mesa 22.3), so the GEMMs spend most of their
// time in the 8 loads of A per k that every invocation of a workgroup makes alike. Here lane
// l of each subgroup loads only row l % 8 of a block (and 8 + l % 8; in gemm4t_sg one vec4 of
// a pair of k), and `subgroupBroadcast` hands each lane the others' values: one or two loads
// of A per lane instead of eight, and each invocation owns 16 rows x 4 columns of C (in
// gemm44_sg two loads of A and four of B per four k feed 256 FMAs). Every element of C is the
// same chain of operations in k order as in the kernel of gemm.wgsl it stands for, so the
// results are bitwise its (tested).
// Dispatch: (ceil(n / 256), ceil(m / 16), 1), workgroup 64. Only a subgroup whose columns
// all lie past n returns before the loop (subgroup operations need the subgroup's control
// flow uniform): in the others, columns past n read B's last column and rows past m repeat
// the last row; neither is stored.

// gemm44 (A and B row-major, vec4-aligned along k and n) over 16 rows.
@compute @workgroup_size(64)
fn gemm44_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(subgroup_invocation_id) sl: u32) {
    let j0 = (wid.x * 64u + lid.x) * 4u;
    let i0 = wid.y * 16u;
    // A subgroup wholly past the columns leaves (the others stay whole, as the broadcasts need).
    if (subgroupAll(j0 >= p.n)) {
        return;
    }
    let last_i = p.m - 1u;
    let arq = p.a_rs / 4u;
    let aq = p.a_off / 4u;
    // This lane's row of each half of the block, for the others' broadcasts.
    let ra = aq + min(i0 + (sl & 7u), last_i) * arq;
    let rb = aq + min(i0 + 8u + (sl & 7u), last_i) * arq;
    let bq = p.b_off / 4u + min(j0, p.n - 4u) / 4u;
    let brq = p.b_rs / 4u;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    var c8 = vec4<f32>(0.0);
    var c9 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0);
    var c11 = vec4<f32>(0.0);
    var c12 = vec4<f32>(0.0);
    var c13 = vec4<f32>(0.0);
    var c14 = vec4<f32>(0.0);
    var c15 = vec4<f32>(0.0);
    for (var kq = 0u; kq < p.k / 4u; kq++) {
        let kb = bq + kq * 4u * brq;
        let b = mat4x4<f32>(vec4<f32>(b4[kb]), vec4<f32>(b4[kb + brq]), vec4<f32>(b4[kb + 2u * brq]), vec4<f32>(b4[kb + 3u * brq]));
        let av = vec4<f32>(a4[ra + kq]);
        let aw = vec4<f32>(a4[rb + kq]);
        c0 += b * subgroupBroadcast(av, 0u);
        c1 += b * subgroupBroadcast(av, 1u);
        c2 += b * subgroupBroadcast(av, 2u);
        c3 += b * subgroupBroadcast(av, 3u);
        c4 += b * subgroupBroadcast(av, 4u);
        c5 += b * subgroupBroadcast(av, 5u);
        c6 += b * subgroupBroadcast(av, 6u);
        c7 += b * subgroupBroadcast(av, 7u);
        c8 += b * subgroupBroadcast(aw, 0u);
        c9 += b * subgroupBroadcast(aw, 1u);
        c10 += b * subgroupBroadcast(aw, 2u);
        c11 += b * subgroupBroadcast(aw, 3u);
        c12 += b * subgroupBroadcast(aw, 4u);
        c13 += b * subgroupBroadcast(aw, 5u);
        c14 += b * subgroupBroadcast(aw, 6u);
        c15 += b * subgroupBroadcast(aw, 7u);
    }
    if (j0 < p.n) {
        store4(i0, j0, c0);
        store4(i0 + 1u, j0, c1);
        store4(i0 + 2u, j0, c2);
        store4(i0 + 3u, j0, c3);
        store4(i0 + 4u, j0, c4);
        store4(i0 + 5u, j0, c5);
        store4(i0 + 6u, j0, c6);
        store4(i0 + 7u, j0, c7);
        store4(i0 + 8u, j0, c8);
        store4(i0 + 9u, j0, c9);
        store4(i0 + 10u, j0, c10);
        store4(i0 + 11u, j0, c11);
        store4(i0 + 12u, j0, c12);
        store4(i0 + 13u, j0, c13);
        store4(i0 + 14u, j0, c14);
        store4(i0 + 15u, j0, c15);
    }
}

// gemm4t (A stored transposed: the block's rows at k are adjacent, 4-aligned; m a multiple of
// 8) over 16 rows: lane l of a subgroup loads the vec4 of rows 4 (l % 4).. at k + (l / 4) % 2,
// so one load a lane covers the block for two k. A last block of 8 rows has two such vec4s;
// lanes past them repeat the last.
@compute @workgroup_size(64)
fn gemm4t_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(subgroup_invocation_id) sl: u32) {
    let j0 = (wid.x * 64u + lid.x) * 4u;
    let i0 = wid.y * 16u;
    // A subgroup wholly past the columns leaves (the others stay whole, as the broadcasts need).
    if (subgroupAll(j0 >= p.n)) {
        return;
    }
    let quads = min(4u, (p.m - i0) / 4u);
    let aq = (p.a_off + i0) / 4u + min(sl & 3u, quads - 1u);
    let ku = (sl >> 2u) & 1u;
    let acq = p.a_cs / 4u;
    let bq = p.b_off / 4u + min(j0, p.n - 4u) / 4u;
    let brq = p.b_rs / 4u;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    var c8 = vec4<f32>(0.0);
    var c9 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0);
    var c11 = vec4<f32>(0.0);
    var c12 = vec4<f32>(0.0);
    var c13 = vec4<f32>(0.0);
    var c14 = vec4<f32>(0.0);
    var c15 = vec4<f32>(0.0);
    let k2 = p.k & ~1u;
    var kk = 0u;
    for (; kk < k2; kk += 2u) {
        let av = vec4<f32>(a4[aq + (kk + ku) * acq]);
        let bv0 = vec4<f32>(b4[bq + kk * brq]);
        let q00 = subgroupBroadcast(av, 0u);
        c0 += q00.x * bv0;
        c1 += q00.y * bv0;
        c2 += q00.z * bv0;
        c3 += q00.w * bv0;
        let q01 = subgroupBroadcast(av, 1u);
        c4 += q01.x * bv0;
        c5 += q01.y * bv0;
        c6 += q01.z * bv0;
        c7 += q01.w * bv0;
        let q02 = subgroupBroadcast(av, 2u);
        c8 += q02.x * bv0;
        c9 += q02.y * bv0;
        c10 += q02.z * bv0;
        c11 += q02.w * bv0;
        let q03 = subgroupBroadcast(av, 3u);
        c12 += q03.x * bv0;
        c13 += q03.y * bv0;
        c14 += q03.z * bv0;
        c15 += q03.w * bv0;
        let bv1 = vec4<f32>(b4[bq + (kk + 1u) * brq]);
        let q10 = subgroupBroadcast(av, 4u);
        c0 += q10.x * bv1;
        c1 += q10.y * bv1;
        c2 += q10.z * bv1;
        c3 += q10.w * bv1;
        let q11 = subgroupBroadcast(av, 5u);
        c4 += q11.x * bv1;
        c5 += q11.y * bv1;
        c6 += q11.z * bv1;
        c7 += q11.w * bv1;
        let q12 = subgroupBroadcast(av, 6u);
        c8 += q12.x * bv1;
        c9 += q12.y * bv1;
        c10 += q12.z * bv1;
        c11 += q12.w * bv1;
        let q13 = subgroupBroadcast(av, 7u);
        c12 += q13.x * bv1;
        c13 += q13.y * bv1;
        c14 += q13.z * bv1;
        c15 += q13.w * bv1;
    }
    if (kk < p.k) {
        let av = vec4<f32>(a4[aq + kk * acq]);
        let bv0 = vec4<f32>(b4[bq + kk * brq]);
        let q00 = subgroupBroadcast(av, 0u);
        c0 += q00.x * bv0;
        c1 += q00.y * bv0;
        c2 += q00.z * bv0;
        c3 += q00.w * bv0;
        let q01 = subgroupBroadcast(av, 1u);
        c4 += q01.x * bv0;
        c5 += q01.y * bv0;
        c6 += q01.z * bv0;
        c7 += q01.w * bv0;
        let q02 = subgroupBroadcast(av, 2u);
        c8 += q02.x * bv0;
        c9 += q02.y * bv0;
        c10 += q02.z * bv0;
        c11 += q02.w * bv0;
        let q03 = subgroupBroadcast(av, 3u);
        c12 += q03.x * bv0;
        c13 += q03.y * bv0;
        c14 += q03.z * bv0;
        c15 += q03.w * bv0;
    }
    if (j0 < p.n) {
        store4(i0, j0, c0);
        store4(i0 + 1u, j0, c1);
        store4(i0 + 2u, j0, c2);
        store4(i0 + 3u, j0, c3);
        store4(i0 + 4u, j0, c4);
        store4(i0 + 5u, j0, c5);
        store4(i0 + 6u, j0, c6);
        store4(i0 + 7u, j0, c7);
        store4(i0 + 8u, j0, c8);
        store4(i0 + 9u, j0, c9);
        store4(i0 + 10u, j0, c10);
        store4(i0 + 11u, j0, c11);
        store4(i0 + 12u, j0, c12);
        store4(i0 + 13u, j0, c13);
        store4(i0 + 14u, j0, c14);
        store4(i0 + 15u, j0, c15);
    }
}

// gemm (any strides; ADJACENT as there) over 16 rows: lane l of a subgroup loads A's element
// of rows l % 8 and 8 + l % 8 at each k.
@compute @workgroup_size(64)
fn gemm_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(subgroup_invocation_id) sl: u32) {
    let cstep = select(64u, 1u, ADJACENT);
    let j0 = select(wid.x * 256u + lid.x, (wid.x * 64u + lid.x) * 4u, ADJACENT);
    let i0 = wid.y * 16u;
    // A subgroup wholly past the columns leaves (the others stay whole, as the broadcasts need).
    if (subgroupAll(j0 >= p.n)) {
        return;
    }
    let last_i = p.m - 1u;
    let ra = p.a_off + min(i0 + (sl & 7u), last_i) * p.a_rs;
    let rb = p.a_off + min(i0 + 8u + (sl & 7u), last_i) * p.a_rs;
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
    var c8 = vec4<f32>(0.0);
    var c9 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0);
    var c11 = vec4<f32>(0.0);
    var c12 = vec4<f32>(0.0);
    var c13 = vec4<f32>(0.0);
    var c14 = vec4<f32>(0.0);
    var c15 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let kb = kk * p.b_rs;
        let bv = vec4<f32>(f32(b[b0 + kb]), f32(b[b1 + kb]), f32(b[b2 + kb]), f32(b[b3 + kb]));
        let ka = kk * p.a_cs;
        let xa = f32(a[ra + ka]);
        let xb = f32(a[rb + ka]);
        c0 += subgroupBroadcast(xa, 0u) * bv;
        c1 += subgroupBroadcast(xa, 1u) * bv;
        c2 += subgroupBroadcast(xa, 2u) * bv;
        c3 += subgroupBroadcast(xa, 3u) * bv;
        c4 += subgroupBroadcast(xa, 4u) * bv;
        c5 += subgroupBroadcast(xa, 5u) * bv;
        c6 += subgroupBroadcast(xa, 6u) * bv;
        c7 += subgroupBroadcast(xa, 7u) * bv;
        c8 += subgroupBroadcast(xb, 0u) * bv;
        c9 += subgroupBroadcast(xb, 1u) * bv;
        c10 += subgroupBroadcast(xb, 2u) * bv;
        c11 += subgroupBroadcast(xb, 3u) * bv;
        c12 += subgroupBroadcast(xb, 4u) * bv;
        c13 += subgroupBroadcast(xb, 5u) * bv;
        c14 += subgroupBroadcast(xb, 6u) * bv;
        c15 += subgroupBroadcast(xb, 7u) * bv;
    }
    if (j0 < p.n) {
        store_row(i0, j0, cstep, c0);
        store_row(i0 + 1u, j0, cstep, c1);
        store_row(i0 + 2u, j0, cstep, c2);
        store_row(i0 + 3u, j0, cstep, c3);
        store_row(i0 + 4u, j0, cstep, c4);
        store_row(i0 + 5u, j0, cstep, c5);
        store_row(i0 + 6u, j0, cstep, c6);
        store_row(i0 + 7u, j0, cstep, c7);
        store_row(i0 + 8u, j0, cstep, c8);
        store_row(i0 + 9u, j0, cstep, c9);
        store_row(i0 + 10u, j0, cstep, c10);
        store_row(i0 + 11u, j0, cstep, c11);
        store_row(i0 + 12u, j0, cstep, c12);
        store_row(i0 + 13u, j0, cstep, c13);
        store_row(i0 + 14u, j0, cstep, c14);
        store_row(i0 + 15u, j0, cstep, c15);
    }
}

// gemm4 (B's rows read as vec4s, A any strides) over 16 rows, A shared as in gemm_sg.
@compute @workgroup_size(64)
fn gemm4_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(subgroup_invocation_id) sl: u32) {
    let j0 = (wid.x * 64u + lid.x) * 4u;
    let i0 = wid.y * 16u;
    // A subgroup wholly past the columns leaves (the others stay whole, as the broadcasts need).
    if (subgroupAll(j0 >= p.n)) {
        return;
    }
    let last_i = p.m - 1u;
    let ra = p.a_off + min(i0 + (sl & 7u), last_i) * p.a_rs;
    let rb = p.a_off + min(i0 + 8u + (sl & 7u), last_i) * p.a_rs;
    let bq = p.b_off / 4u + min(j0, p.n - 4u) / 4u;
    let brq = p.b_rs / 4u;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    var c8 = vec4<f32>(0.0);
    var c9 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0);
    var c11 = vec4<f32>(0.0);
    var c12 = vec4<f32>(0.0);
    var c13 = vec4<f32>(0.0);
    var c14 = vec4<f32>(0.0);
    var c15 = vec4<f32>(0.0);
    for (var kk = 0u; kk < p.k; kk++) {
        let bv = vec4<f32>(b4[bq + kk * brq]);
        let ka = kk * p.a_cs;
        let xa = f32(a[ra + ka]);
        let xb = f32(a[rb + ka]);
        c0 += subgroupBroadcast(xa, 0u) * bv;
        c1 += subgroupBroadcast(xa, 1u) * bv;
        c2 += subgroupBroadcast(xa, 2u) * bv;
        c3 += subgroupBroadcast(xa, 3u) * bv;
        c4 += subgroupBroadcast(xa, 4u) * bv;
        c5 += subgroupBroadcast(xa, 5u) * bv;
        c6 += subgroupBroadcast(xa, 6u) * bv;
        c7 += subgroupBroadcast(xa, 7u) * bv;
        c8 += subgroupBroadcast(xb, 0u) * bv;
        c9 += subgroupBroadcast(xb, 1u) * bv;
        c10 += subgroupBroadcast(xb, 2u) * bv;
        c11 += subgroupBroadcast(xb, 3u) * bv;
        c12 += subgroupBroadcast(xb, 4u) * bv;
        c13 += subgroupBroadcast(xb, 5u) * bv;
        c14 += subgroupBroadcast(xb, 6u) * bv;
        c15 += subgroupBroadcast(xb, 7u) * bv;
    }
    if (j0 < p.n) {
        store4(i0, j0, c0);
        store4(i0 + 1u, j0, c1);
        store4(i0 + 2u, j0, c2);
        store4(i0 + 3u, j0, c3);
        store4(i0 + 4u, j0, c4);
        store4(i0 + 5u, j0, c5);
        store4(i0 + 6u, j0, c6);
        store4(i0 + 7u, j0, c7);
        store4(i0 + 8u, j0, c8);
        store4(i0 + 9u, j0, c9);
        store4(i0 + 10u, j0, c10);
        store4(i0 + 11u, j0, c11);
        store4(i0 + 12u, j0, c12);
        store4(i0 + 13u, j0, c13);
        store4(i0 + 14u, j0, c14);
        store4(i0 + 15u, j0, c15);
    }
}
