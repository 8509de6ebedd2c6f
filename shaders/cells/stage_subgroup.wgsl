// cell_stage (stage.wgsl, joined before this file) with the product's input rows shared
// through subgroup broadcasts, for devices whose subgroups hold at least 8 invocations (the
// context adds this file to a per-unit cell's module and chooses the entry point there:
// `Context::subgroup_kernels`). Every invocation of a workgroup reads the same rows of `pin`;
// on lavapipe each of those loads is a loop over the vector's lanes (see gemm_subgroup.wgsl),
// so here lane l of each subgroup loads rows l % 8 and 8 + l % 8 of the block and
// `subgroupBroadcast` hands them to the others: RB_SG = 16 rows a workgroup, two loads of the
// input a lane per 4 k instead of sixteen. Each element of the product is the same chain of
// operations as in cell_stage, so the results are bitwise its (tested).
// Dispatch: (ceil(units / (4 / GATES) / 64), ceil(rows / RB_SG), 1), workgroup 64. Only a
// subgroup wholly past the units returns first; in the others the product runs in the
// subgroup's uniform control flow (subgroup operations need it): invocations past the units
// read unit 0's rows of R and rows past the step's repeat the last; neither is stored.

const RB_SG: u32 = 16u;

// stage_product for rows rb .. rb + nr (nr <= RB_SG), the input rows broadcast from lanes
// 0..7 (`sl`: the subgroup invocation id). Every invocation of the workgroup calls it.
fn stage_product_sg(j0: u32, rb: u32, nr: u32, sl: u32) {
    let u = p.prows / GATES;
    let kq = pin_len() / 4u;
    let last = nr - 1u;
    let va = (rb + min(sl & 7u, last)) * kq;
    let vb = (rb + min(8u + (sl & 7u), last)) * kq;
    // Loads for an invocation past the units use unit 0's rows (col_at of a unit in range).
    let jl = select(j0, 0u, j0 >= u);
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    var a8 = vec4<f32>(0.0);
    var a9 = vec4<f32>(0.0);
    var a10 = vec4<f32>(0.0);
    var a11 = vec4<f32>(0.0);
    var a12 = vec4<f32>(0.0);
    var a13 = vec4<f32>(0.0);
    var a14 = vec4<f32>(0.0);
    var a15 = vec4<f32>(0.0);
    let c0 = col_at(0u, jl, u);
    let c1 = col_at(1u, jl, u);
    let c2 = col_at(2u, jl, u);
    let c3 = col_at(3u, jl, u);
    for (var q = 0u; q < kq; q++) {
        let m = mat4x4<f32>(prod_row4(c0, q), prod_row4(c1, q), prod_row4(c2, q), prod_row4(c3, q));
        let xa = vec4<f32>(pin4[va + q]);
        let xb = vec4<f32>(pin4[vb + q]);
        a0 += subgroupBroadcast(xa, 0u) * m;
        a1 += subgroupBroadcast(xa, 1u) * m;
        a2 += subgroupBroadcast(xa, 2u) * m;
        a3 += subgroupBroadcast(xa, 3u) * m;
        a4 += subgroupBroadcast(xa, 4u) * m;
        a5 += subgroupBroadcast(xa, 5u) * m;
        a6 += subgroupBroadcast(xa, 6u) * m;
        a7 += subgroupBroadcast(xa, 7u) * m;
        a8 += subgroupBroadcast(xb, 0u) * m;
        a9 += subgroupBroadcast(xb, 1u) * m;
        a10 += subgroupBroadcast(xb, 2u) * m;
        a11 += subgroupBroadcast(xb, 3u) * m;
        a12 += subgroupBroadcast(xb, 4u) * m;
        a13 += subgroupBroadcast(xb, 5u) * m;
        a14 += subgroupBroadcast(xb, 6u) * m;
        a15 += subgroupBroadcast(xb, 7u) * m;
    }
    let bias = vec4<f32>(col_bias(0u, j0, u), col_bias(1u, j0, u), col_bias(2u, j0, u), col_bias(3u, j0, u));
    var acc = array<vec4<f32>, 16>(
        a0 + bias, a1 + bias, a2 + bias, a3 + bias, a4 + bias, a5 + bias, a6 + bias, a7 + bias,
        a8 + bias, a9 + bias, a10 + bias, a11 + bias, a12 + bias, a13 + bias, a14 + bias, a15 + bias,
    );
    for (var t = 0u; t < nr; t++) {
        store_product_row(rb + t, j0, u, acc[t]);
    }
}

@compute @workgroup_size(64)
fn cell_stage_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(subgroup_invocation_id) sl: u32) {
    let j0 = (wid.x * 64u + lid.x) * lanes();
    let rb = wid.y * RB_SG;
    // A subgroup wholly past the units leaves (the others stay whole, as the broadcasts need).
    if (subgroupAll(j0 >= p.units)) {
        return;
    }
    let nr = min(RB_SG, p.rows - rb);
    if (p.pg > 0u) {
        stage_product_sg(j0, rb, nr, sl);
    }
    stage_units(j0, rb, nr);
}
