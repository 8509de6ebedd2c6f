// Layer-normalised LSTM, as in haste (src/cells/lstm_layernorm.rs). Gates i, f, g, o:
//   v  = LN_ih(W_ih x) + LN_hh(W_hh h) + bias           [4H]
//   c' = s(v_f) c + s(v_i) tanh(v_g)
//   h' = s(v_o) tanh(LN_c(c'))                           (output h')
// LN(a) = (a - mean(a)) * rstd * weight + bias, rstd = 1 / sqrt(var(a) + 1e-5), the mean and
// the biased variance over the whole vector (4H for LN_ih and LN_hh, H for LN_c), both from
// one reduction (`row_moments`, below; the CPU takes two passes, the mean, then the mean of
// squared deviations); rstd = inverseSqrt in f32 (the CPU: 1 / sqrt). States h [H], c [H]
// (h first). xp = W_ih x (no input bias), one product r = W_hh h (no bias), one stage.
// Pointwise parameters: bias [0, 4H), ln_ih_weight [4H, 8H), ln_ih_bias [8H, 12H),
// ln_hh_weight [12H, 16H), ln_hh_bias [16H, 20H), ln_c_weight [20H, 21H), ln_c_bias
// [21H, 22H). de (14H, Layout::de_blocks): the gates' dv at [0, 4H) (the gradient of bias,
// ln_ih_bias and ln_hh_bias alike), dv n_ih at [4H, 8H), dv n_hh at [8H, 12H), dy n_c at 12H,
// dy at 13H.
// Tape (13H + 3): normalised W_ih x [0, 4H), normalised W_hh h [4H, 8H), the gates i, f, g, o
// [8H, 12H), normalised c' [12H, 13H), then rstd of LN_ih, LN_hh, LN_c at 13H, 13H+1, 13H+2.
// Backward: dh = ds_h + dout; dy = dh o tanh'(.), the LN_c input gradient
// rstd_c (dn - mean(dn) - n_c mean(dn n_c)) with dn = dy w_c, then the gates' dv, the
// parameters' gradients, and LN_ih / LN_hh backward the same way into dxp and dr.
//
// Reductions: invocation l takes, in order, the elements l, l + 64, l + 128, ... of the
// vector (the LN_ih / LN_hh moments read only xp and r, which nothing here writes; the later
// phases read only values the same invocation wrote). The forward's means and variances go
// through `row_moments` (two reductions a row, where a sum for the mean and another for the
// variance took four: C1 on lavapipe, cell_forward 48 -> 41 ms), the backward's sums through
// the prelude's `row_sum`; each combines the 64 invocations' values in a fixed order, up to
// four values together as a vec4. No atomics: the order of every addition is fixed, so results
// are bitwise reproducible. All barriers are at the top level of the entry points (uniform
// control flow); no invocation returns early.

const LN_EPS: f32 = 1e-5;

// Means and variances in one reduction (Chan, Golub and LeVeque's pairwise update): invocation
// l reads its share of an m-vector (elements l, l + WG, ...; `share(l, m)` of them) and keeps
// its mean and M2 (the sum of squared deviations from that mean), from sums shifted by its
// first element (so no large mean cancels: the shift is one of the values); two vectors'
// (mean, M2) travel together as a vec4 through `row_moments`, which merges them in a fixed
// order: invocations 0-7 each merge a group of 8 in turn, then every invocation the 8 groups.
var<workgroup> mom: array<vec4<f32>, 72>;
fn share(l: u32, m: u32) -> f32 {
    return f32(select(0u, (m - l - 1u) / WG + 1u, l < m));
}
// (mean, M2) pairs a (count na) and b (count nb) merged.
fn merge(a: vec4<f32>, na: f32, b: vec4<f32>, nb: f32) -> vec4<f32> {
    let n = na + nb;
    let f = select(nb / n, 0.0, n == 0.0);
    let d = vec2<f32>(b.x - a.x, b.z - a.z);
    return vec4<f32>(a.x + d.x * f, a.y + b.y + d.x * d.x * na * f, a.z + d.y * f, a.w + b.w + d.y * d.y * na * f);
}
// Invocation l's (mean, M2) pairs from its shifted sums s (sum d, sum d^2 per vector, d the
// element minus the shift k) over its c elements.
fn local_moments(k: vec2<f32>, s: vec4<f32>, c: f32) -> vec4<f32> {
    let ic = 1.0 / max(c, 1.0);
    return vec4<f32>(k.x + s.x * ic, max(s.y - s.x * s.x * ic, 0.0), k.y + s.z * ic, max(s.w - s.z * s.z * ic, 0.0));
}
// Every invocation calls it (uniform control flow) and gets the row's (mean, M2) pairs.
fn row_moments(l: u32, m: u32, v: vec4<f32>) -> vec4<f32> {
    mom[l] = v;
    workgroupBarrier();
    if (l < 8u) {
        var a = mom[8u * l];
        var na = share(8u * l, m);
        for (var i = 1u; i < 8u; i++) {
            let nb = share(8u * l + i, m);
            a = merge(a, na, mom[8u * l + i], nb);
            na += nb;
        }
        mom[64u + l] = a;
    }
    workgroupBarrier();
    var t = mom[64u];
    var nt = 0.0;
    for (var i = 0u; i < 8u; i++) {
        nt += share(i, m);
    }
    for (var g = 1u; g < 8u; g++) {
        var ng = 0.0;
        for (var i = 0u; i < 8u; i++) {
            ng += share(8u * g + i, m);
        }
        t = merge(t, nt, mom[64u + g], ng);
        nt += ng;
    }
    // Everyone has read the result before the next call overwrites the slots.
    workgroupBarrier();
    return t;
}

// A row's forward (row_step.wgsl's cell_forward, a workgroup per row; invocation l).
fn row_forward(row: u32, l: u32) {
    let n = p.hidden;
    let g4 = 4u * n;
    let m4 = f32(g4);

    // LN_ih and LN_hh: means and biased variances of xp and r.
    var sh = vec2<f32>(0.0);
    if (l < g4) {
        sh = vec2<f32>(xp(row, l), r(row, l));
    }
    var a = vec4<f32>(0.0);
    for (var k = l; k < g4; k += WG) {
        let di = xp(row, k) - sh.x;
        let dh = r(row, k) - sh.y;
        a += vec4<f32>(di, di * di, dh, dh * dh);
    }
    let mv = row_moments(l, g4, local_moments(sh, a, share(l, g4)));
    let mean_ih = mv.x;
    let mean_hh = mv.z;
    let rstd_ih = inverseSqrt(mv.y / m4 + LN_EPS);
    let rstd_hh = inverseSqrt(mv.w / m4 + LN_EPS);

    // The gates and c'; c' goes to the state (read back below by the same invocation). LN_c's
    // shifted sums take the shift from this invocation's first c'.
    a = vec4<f32>(0.0);
    var kc = 0.0;
    for (var j = l; j < n; j += WG) {
        var gv: array<f32, 4>;
        for (var q = 0u; q < 4u; q++) {
            let k = q * n + j;
            let nih = (xp(row, k) - mean_ih) * rstd_ih;
            let nhh = (r(row, k) - mean_hh) * rstd_hh;
            tape_set(row, k, nih);
            tape_set(row, g4 + k, nhh);
            gv[q] = nih * e(g4 + k) + e(2u * g4 + k) + (nhh * e(3u * g4 + k) + e(4u * g4 + k)) + e(k);
        }
        let ig = sigmoid(gv[0]);
        let fg = sigmoid(gv[1]);
        let gg = tanh_safe(gv[2]);
        let og = sigmoid(gv[3]);
        let c = fg * s_get(row, n + j) + ig * gg;
        s_set(row, n + j, c);
        tape_set(row, 2u * g4 + j, ig);
        tape_set(row, 2u * g4 + n + j, fg);
        tape_set(row, 2u * g4 + 2u * n + j, gg);
        tape_set(row, 2u * g4 + 3u * n + j, og);
        if (j == l) {
            kc = c;
        }
        let d = c - kc;
        a += vec4<f32>(d, d * d, 0.0, 0.0);
    }
    let mc = row_moments(l, n, local_moments(vec2<f32>(kc, 0.0), a, share(l, n)));
    let mean_c = mc.x;
    let rstd_c = inverseSqrt(mc.y / f32(n) + LN_EPS);

    // h' = o tanh(LN_c(c')).
    for (var j = l; j < n; j += WG) {
        let nc = (s_get(row, n + j) - mean_c) * rstd_c;
        tape_set(row, 3u * g4 + j, nc);
        let hn = tape_get(row, 2u * g4 + 3u * n + j) * tanh_safe(nc * e(5u * g4 + j) + e(5u * g4 + n + j));
        s_set(row, j, hn);
        out_set(row, j, hn);
    }
    if (l == 0u) {
        tape_set(row, 13u * n, rstd_ih);
        tape_set(row, 13u * n + 1u, rstd_hh);
        tape_set(row, 13u * n + 2u, rstd_c);
    }
}

@compute @workgroup_size(64)
fn cell_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.x;
    let l = lid.x;
    let n = p.hidden;
    let g4 = 4u * n;
    let rstd_ih = tape_get(row, 13u * n);
    let rstd_hh = tape_get(row, 13u * n + 1u);
    let rstd_c = tape_get(row, 13u * n + 2u);

    // h' = o tanh(y), y = LN_c(c'): d o (kept in dxp until the gates' loop), dy (kept in dr
    // until then: the same invocation overwrites both there).
    var a = vec4<f32>(0.0);
    for (var j = l; j < n; j += WG) {
        let og = tape_get(row, 2u * g4 + 3u * n + j);
        let nc = tape_get(row, 3u * g4 + j);
        let dh = ds_get(row, j) + dout(row, j);
        let ty = tanh_safe(nc * e(5u * g4 + j) + e(5u * g4 + n + j));
        let dy = dh * og * dtanh(ty);
        dxp_set(row, 3u * n + j, dh * ty * dsigmoid(og));
        de_add(row, 3u * g4 + j, dy * nc);
        de_add(row, 3u * g4 + n + j, dy);
        dr_set(row, 3u * n + j, dy);
        let dn = dy * e(5u * g4 + j);
        a.x += dn;
        a.y += dn * nc;
    }
    let s = row_sum(l, a);
    let hm = f32(n);
    let m1 = s.x / hm;
    let m2 = s.y / hm;

    // Through LN_c to c', the gates' pre-activations v, the parameters' gradients; dxp and dr
    // get the gradients of the normalised W_ih x and W_hh h (LN backward follows).
    a = vec4<f32>(0.0);
    for (var j = l; j < n; j += WG) {
        let nc = tape_get(row, 3u * g4 + j);
        let dn = dr_get(row, 3u * n + j) * e(5u * g4 + j);
        let dcn = ds_get(row, n + j) + rstd_c * (dn - m1 - nc * m2);
        let ig = tape_get(row, 2u * g4 + j);
        let fg = tape_get(row, 2u * g4 + n + j);
        let gg = tape_get(row, 2u * g4 + 2u * n + j);
        var dv: array<f32, 4>;
        dv[0] = dcn * gg * dsigmoid(ig);
        dv[1] = dcn * s_prev(row, n + j) * dsigmoid(fg);
        dv[2] = dcn * ig * dtanh(gg);
        dv[3] = dxp_get(row, 3u * n + j);
        ds_set(row, n + j, dcn * fg);
        ds_set(row, j, 0.0);
        for (var q = 0u; q < 4u; q++) {
            let k = q * n + j;
            let d = dv[q];
            let nih = tape_get(row, k);
            let nhh = tape_get(row, g4 + k);
            de_add(row, k, d);
            de_add(row, g4 + k, d * nih);
            de_add(row, 2u * g4 + k, d * nhh);
            let gi = d * e(g4 + k);
            let gh = d * e(3u * g4 + k);
            dxp_set(row, k, gi);
            dr_set(row, k, gh);
            a += vec4<f32>(gi, gi * nih, gh, gh * nhh);
        }
    }
    let t = row_sum(l, a);
    let m4 = f32(g4);
    let mi1 = t.x / m4;
    let mi2 = t.y / m4;
    let mh1 = t.z / m4;
    let mh2 = t.w / m4;

    // LN_ih and LN_hh backward: rstd (g - mean(g) - n mean(g n)).
    for (var j = l; j < n; j += WG) {
        for (var q = 0u; q < 4u; q++) {
            let k = q * n + j;
            dxp_set(row, k, rstd_ih * (dxp_get(row, k) - mi1 - tape_get(row, k) * mi2));
            dr_set(row, k, rstd_hh * (dr_get(row, k) - mh1 - tape_get(row, g4 + k) * mh2));
        }
    }
}
