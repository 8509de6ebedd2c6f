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
// Dispatch: (ceil(H_out / 64), ceil(rows_t / RB), 1), workgroup 64.

@group(0) @binding(0) var<uniform> p: BackParams;
@group(0) @binding(1) var<storage, read> wt: array<f32>;
@group(0) @binding(2) var<storage, read> dg: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read> tape: array<f32>;
@group(0) @binding(5) var<storage, read> seq: array<u32>;
@group(0) @binding(6) var<storage, read_write> bw: array<f32>;
@group(0) @binding(7) var<storage, read> wt4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> dg4: array<vec4<f32>>;

// Read W_hh^T rows and dG rows as vec4s along g (chosen for CPU-emulated adapters, where a
// vec4 per invocation is one load; GPUs want the coalesced scalar path).
override VEC4: bool = false;

@compute @workgroup_size(64)
fn recurrent_grad(@builtin(global_invocation_id) gid: vec3<u32>) {
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
            let wv = wt4[w + q];
            a0 += vec4<f32>(dot(dg4[d0 + q], wv), dot(dg4[d1 + q], wv), dot(dg4[d2 + q], wv), dot(dg4[d3 + q], wv));
            a1 += vec4<f32>(dot(dg4[d4 + q], wv), dot(dg4[d5 + q], wv), dot(dg4[d6 + q], wv), dot(dg4[d7 + q], wv));
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
            let wv = wt[p.w_hh + g * p.out_size + k];
            a0 += vec4<f32>(dg[d0 + g], dg[d1 + g], dg[d2 + g], dg[d3 + g]) * wv;
            a1 += vec4<f32>(dg[d4 + g], dg[d5 + g], dg[d6 + g], dg[d7 + g]) * wv;
        }
    }
    let acc = array<f32, 8>(a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w);
    for (var t = 0u; t < min(RB, p.rows - rb); t++) {
        let n = p.row_off + rb + t;
        var v = acc[t];
        if (GATES == 3u) {
            v += dh_total(n, k) * tape[p.gates_off + n * gh + p.hidden + k];
        }
        bw[p.dh_off + dst_row(n) * p.out_size + k] = v;
    }
}
