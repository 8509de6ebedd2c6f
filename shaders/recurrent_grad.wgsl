// The recurrent gradient product of one backward step: dh_prev[k] = sum_g dG_h[n, g] *
// W_hh[g, k] for k < H_out, written to the row each state came from (or to row N+b, sequence
// b's initial state); GRU adds its direct path z * dh. Each invocation owns one k for a
// block of RB rows.
// Joined after shared/activations.wgsl and shared/backward.wgsl. Layout "recurrent_grad":
//   @0 params  uniform, dynamic offset: BackParams
//   @1 wt      W_hh^T [H_out, G*H] at wt_hh (VEC4), W_hh [G*H, H_out] at w_hh (otherwise)
//   @2 dg      gate gradients; the hidden side dG_h [N, G*H] at dgh_off (read only here)
//   @3 dy      [N, ld] gradient of the layer output
//   @4 tape    the forward's gates (GRU's z)
//   @5 seq     u32 prev[]
//   @6 bw      dh_rec [(N+B), H_out] at dh_off (written)
//   @7 wt4     `wt` as vec4s, @8 dg4 `dg` as vec4s (VEC4 variant: G*H a multiple of 4)
// Dispatch: (ceil(H_out / 64), ceil(rows_t / RB), 1), workgroup 64; with WIDE,
// (ceil(H_out / 256), ceil(rows_t / RB), 1).

@group(0) @binding(0) var<uniform> p: BackParams;
@group(0) @binding(1) var<storage, read> wt: array<S>;
@group(0) @binding(2) var<storage, read> dg: array<S>;
@group(0) @binding(3) var<storage, read> dy: array<S>;
@group(0) @binding(4) var<storage, read> tape: array<S>;
@group(0) @binding(5) var<storage, read> seq: array<u32>;
@group(0) @binding(6) var<storage, read_write> bw: array<S>;
@group(0) @binding(7) var<storage, read> wt4: array<vec4<S>>;
@group(0) @binding(8) var<storage, read> dg4: array<vec4<S>>;

// Read W_hh^T rows and dG rows as vec4s along g (chosen for CPU-emulated adapters, where a
// vec4 per invocation is one load; GPUs want the coalesced scalar path).
override VEC4: bool = false;

// With VEC4: each invocation owns 4 adjacent k (CPU-emulated adapters). The dG loads are the
// same for every invocation of a workgroup, and lavapipe makes each a scalar load and a
// broadcast per component; one k per invocation paid 32 of them per 32 multiply-adds, and the
// kernel took 2.4x the forward step's time for the same product (C1 training profile).
override WIDE: bool = false;

@compute @workgroup_size(64)
fn recurrent_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (VEC4 && WIDE) {
        recurrent_grad_wide(gid);
        return;
    }
    let k = gid.x;
    let rb = gid.y * RB;
    if (k >= p.out_size || rb >= p.rows) {
        return;
    }
    let gh = GATES * p.hidden;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    if (VEC4) {
        let gq = gh / 4u;
        let w = p.wt_hh / 4u + k * gq;
        let d0 = (p.dgh_off + block_row(rb, 0u) * gh) / 4u;
        let d1 = (p.dgh_off + block_row(rb, 1u) * gh) / 4u;
        let d2 = (p.dgh_off + block_row(rb, 2u) * gh) / 4u;
        let d3 = (p.dgh_off + block_row(rb, 3u) * gh) / 4u;
        let d4 = (p.dgh_off + block_row(rb, 4u) * gh) / 4u;
        let d5 = (p.dgh_off + block_row(rb, 5u) * gh) / 4u;
        let d6 = (p.dgh_off + block_row(rb, 6u) * gh) / 4u;
        let d7 = (p.dgh_off + block_row(rb, 7u) * gh) / 4u;
        for (var q = 0u; q < gq; q++) {
            let wv = vec4<f32>(wt4[w + q]);
            a0 += vec4<f32>(dot(vec4<f32>(dg4[d0 + q]), wv), dot(vec4<f32>(dg4[d1 + q]), wv), dot(vec4<f32>(dg4[d2 + q]), wv), dot(vec4<f32>(dg4[d3 + q]), wv));
            a1 += vec4<f32>(dot(vec4<f32>(dg4[d4 + q]), wv), dot(vec4<f32>(dg4[d5 + q]), wv), dot(vec4<f32>(dg4[d6 + q]), wv), dot(vec4<f32>(dg4[d7 + q]), wv));
        }
    } else {
        // Row-major W_hh at w_hh: neighbouring invocations (k) read neighbouring elements.
        let d0 = p.dgh_off + block_row(rb, 0u) * gh;
        let d1 = p.dgh_off + block_row(rb, 1u) * gh;
        let d2 = p.dgh_off + block_row(rb, 2u) * gh;
        let d3 = p.dgh_off + block_row(rb, 3u) * gh;
        let d4 = p.dgh_off + block_row(rb, 4u) * gh;
        let d5 = p.dgh_off + block_row(rb, 5u) * gh;
        let d6 = p.dgh_off + block_row(rb, 6u) * gh;
        let d7 = p.dgh_off + block_row(rb, 7u) * gh;
        for (var g = 0u; g < gh; g++) {
            let wv = f32(wt[p.w_hh + g * p.out_size + k]);
            a0 += vec4<f32>(f32(dg[d0 + g]), f32(dg[d1 + g]), f32(dg[d2 + g]), f32(dg[d3 + g])) * wv;
            a1 += vec4<f32>(f32(dg[d4 + g]), f32(dg[d5 + g]), f32(dg[d6 + g]), f32(dg[d7 + g])) * wv;
        }
    }
    store_dh(rb, k, array<f32, 8>(a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w));
}

// Stores row block rb's results for column k: dh_prev (+ GRU's direct path).
fn store_dh(rb: u32, k: u32, acc: array<f32, 8>) {
    let gh = GATES * p.hidden;
    for (var t = 0u; t < min(RB, p.rows - rb); t++) {
        let n = p.row_off + rb + t;
        var v = acc[t];
        if (GATES == 3u) {
            v += dh_total(n, k) * f32(tape[p.gates_off + n * gh + p.hidden + k]);
        }
        bw[p.dh_off + dst_row(n) * p.out_size + k] = S(v);
    }
}

// The VEC4 product with 4 adjacent k per invocation: per 4 g, four W_hh^T rows (one vec4
// each, as a matrix whose columns are the k) and one dG vec4 per row of the block.
fn recurrent_grad_wide(gid: vec3<u32>) {
    let k0 = gid.x * 4u;
    let rb = gid.y * RB;
    if (k0 >= p.out_size || rb >= p.rows) {
        return;
    }
    let gh = GATES * p.hidden;
    let gq = gh / 4u;
    let last_k = p.out_size - 1u;
    let w0 = p.wt_hh / 4u + k0 * gq;
    let w1 = p.wt_hh / 4u + min(k0 + 1u, last_k) * gq;
    let w2 = p.wt_hh / 4u + min(k0 + 2u, last_k) * gq;
    let w3 = p.wt_hh / 4u + min(k0 + 3u, last_k) * gq;
    let d0 = (p.dgh_off + block_row(rb, 0u) * gh) / 4u;
    let d1 = (p.dgh_off + block_row(rb, 1u) * gh) / 4u;
    let d2 = (p.dgh_off + block_row(rb, 2u) * gh) / 4u;
    let d3 = (p.dgh_off + block_row(rb, 3u) * gh) / 4u;
    let d4 = (p.dgh_off + block_row(rb, 4u) * gh) / 4u;
    let d5 = (p.dgh_off + block_row(rb, 5u) * gh) / 4u;
    let d6 = (p.dgh_off + block_row(rb, 6u) * gh) / 4u;
    let d7 = (p.dgh_off + block_row(rb, 7u) * gh) / 4u;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    for (var q = 0u; q < gq; q++) {
        let w = mat4x4<f32>(vec4<f32>(wt4[w0 + q]), vec4<f32>(wt4[w1 + q]), vec4<f32>(wt4[w2 + q]), vec4<f32>(wt4[w3 + q]));
        a0 += vec4<f32>(dg4[d0 + q]) * w;
        a1 += vec4<f32>(dg4[d1 + q]) * w;
        a2 += vec4<f32>(dg4[d2 + q]) * w;
        a3 += vec4<f32>(dg4[d3 + q]) * w;
        a4 += vec4<f32>(dg4[d4 + q]) * w;
        a5 += vec4<f32>(dg4[d5 + q]) * w;
        a6 += vec4<f32>(dg4[d6 + q]) * w;
        a7 += vec4<f32>(dg4[d7 + q]) * w;
    }
    for (var c = 0u; c < 4u; c++) {
        if (k0 + c < p.out_size) {
            store_dh(rb, k0 + c, array<f32, 8>(a0[c], a1[c], a2[c], a3[c], a4[c], a5[c], a6[c], a7[c]));
        }
    }
}
