// The unitary evolution RNN (src/cells/urnn.rs). N = H / 2 complex units; h = [Re | Im].
//   z = W h + u (u = xp: Re rows, then Im), m = sqrt(re^2 + im^2 + 1e-5),
//   h' = z relu(m + bias) / m  (modReLU; output h').
// One product (stage 0), 2 gates: unit j's product rows are j (Re) and N + j (Im). Tape: z.
// Pointwise parameters: theta [0, 3N), reflection [3N, 7N) (Re v1, Im v1, Re v2, Im v2),
// bias [7N, 8N) (de: its gradient, N wide), permutation [8N, 9N) (whole numbers, fixed).
//
// W = D3 R2 F^-1 D2 P R1 F D1 is derived from theta, reflection and permutation once per
// call (Cell::derive; the same chain as the CPU's, in f32):
// - cell_derive (N workgroups, column k each): column k of W to the scratch, in f32; then
//   cell_derive_polish (N workgroups): one Newton-Schulz step with W* W - I summed exactly,
//   and W into the WeightHh slot as [[Re W, -Im W], [Im W, Re W]] at p.pw. The weights
//   buffer is bound read_write at @7 (cell_derive reads the parameters there too); @1 holds
//   another buffer. Divisions are refined (recip), sin and cos are computed here (phase), and
//   the twiddles and 1 / sqrt(N) come from the host: a device's approximate reciprocal, sin
//   or cos made the composed W measurably non-unitary (tests/it/urnn.rs) or, in the browser,
//   moved the outputs past the golden tolerance.
// - cell_derive_grad (N workgroups): column k's chain again and its backward from the
//   product's gradient G at p.pw in the gradients buffer (@7), the parameters at @1; column
//   k's share of the gradients of theta and reflection to row k of a [N, 7N] partials block
//   in scr.
// - cell_derive_sum: the partials' column sums (k = 0, 1, ... in order) to the gradients of
//   theta and reflection at p.e_off in @7, and zeros over G (no parameter's gradient).
// The DFT's twiddles exp(2 pi i t / N) and 1 / sqrt(N) come from the host at @2
// (Cell::derive_table: [cos N | sin N | scale], computed in f64, as F's columns are orthogonal
// only as far as its angles are exact). Scratch (scr) per column k at k * 10N: W's column, b,
// u, g_u, g_y1 (each [Re N | Im N]); the partials after N columns' worth. Every value has one
// writer and every sum a fixed order (row_sum's tree), so results are reproducible.

const EPS: f32 = 1e-5;

fn unit_forward(row: u32, j: u32) {
    let n = p.hidden / 2u;
    if (j < n) {
        let zr = xp(row, j) + r(row, j);
        let zi = xp(row, n + j) + r(row, n + j);
        tape_set(row, j, zr);
        tape_set(row, n + j, zi);
        let m = sqrt(zr * zr + zi * zi + EPS);
        let b = e(7u * n + j);
        // (|z| + b) / |z| as 1 + b / |z|: exactly 1 with b = 0 (unitary steps keep |h|).
        let sc = select(0.0, 1.0 + b / m, m + b > 0.0);
        s_set(row, j, zr * sc);
        s_set(row, n + j, zi * sc);
        out_set(row, j, zr * sc);
        out_set(row, n + j, zi * sc);
    }
}

fn row_backward(row: u32, l: u32) {
    let n = p.hidden / 2u;
    for (var j = l; j < n; j += WG) {
        let zr = tape_get(row, j);
        let zi = tape_get(row, n + j);
        let gr = ds_get(row, j) + dout(row, j);
        let gi = ds_get(row, n + j) + dout(row, n + j);
        let m = sqrt(zr * zr + zi * zi + EPS);
        let b = e(7u * n + j);
        let a = m + b;
        var dzr = 0.0;
        var dzi = 0.0;
        var db = 0.0;
        if (a > 0.0) {
            let dot = gr * zr + gi * zi;
            let sc = 1.0 + b / m;
            let k = -b * dot / (m * m * m);
            dzr = gr * sc + k * zr;
            dzi = gi * sc + k * zi;
            db = dot / m;
        }
        dxp_set(row, j, dzr);
        dxp_set(row, n + j, dzi);
        dr_set(row, j, dzr);
        dr_set(row, n + j, dzi);
        de_add(row, j, db);
        ds_set(row, j, 0.0);
        ds_set(row, n + j, 0.0);
        if (ONE_PASS_UNITS) { break; }
    }
}

// ---- The derived matrix ----

// cell_derive reads the parameters from @7 (the weights, bound read_write there), the
// gradient kernels from @1.
var<private> params_at_bws: bool = false;
fn ep(j: u32) -> f32 {
    if (params_at_bws) {
        return f32(bws[p.e_off + j]);
    }
    return f32(w[p.e_off + j]);
}
fn units() -> u32 { return p.hidden / 2u; }
// Vector v (0 the column of W, 1 b, 2 u, 3 g_u or (W* W - I) e_k, 4 g_y1) of column k: Re at
// j, Im at N + j.
fn sv(k: u32, v: u32, j: u32) -> u32 { return (k * 5u + v) * 2u * units() + j; }
fn sget(i: u32) -> f32 { return f32(scr[i]); }
fn sset(i: u32, x: f32) { scr[i] = S(x); }
// Column k's partials row (7N wide) after the N columns' vectors.
fn partial(k: u32, i: u32) -> u32 { let n = units(); return 10u * n * n + k * 7u * n + i; }

fn cmul(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> { return vec2<f32>(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x); }
fn conj(a: vec2<f32>) -> vec2<f32> { return vec2<f32>(a.x, -a.y); }
// exp(i t) = (cos t, sin t) to about an ulp, on any device: WGSL's cos and sin may be far
// less exact (Vulkan allows an absolute error of 2^-11, and SwiftShader's, the browser check's,
// moved the uRNN's outputs 8x past the golden tolerance). t is reduced by the nearest multiple
// k of pi/2 (pi/2 in two parts, with fma: exact for |t| up to about 1e4), then Taylor
// polynomials on [-pi/4, pi/4] (truncation under 2e-9) and the quadrant k mod 4.
fn phase(t: f32) -> vec2<f32> {
    let v = sincos(t);
    // Normalised: a phase of modulus 1 to rounding keeps D unitary (the polynomials' own
    // rounding left |exp(i t)| a systematic ulp off, and h drifted).
    return v * recip(sqrt(dot(v, v)));
}
fn sincos(t: f32) -> vec2<f32> {
    let k = round(t * 0.6366197723675814);
    var r = fma(-k, 1.5707963705062866, t);
    r = fma(-k, -4.371139000186243e-8, r);
    let r2 = r * r;
    let s = r * (1.0 + r2 * (-1.0 / 6.0 + r2 * (1.0 / 120.0 + r2 * (-1.0 / 5040.0 + r2 * (1.0 / 362880.0)))));
    let c = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24.0 + r2 * (-1.0 / 720.0 + r2 * (1.0 / 40320.0 + r2 * (-1.0 / 3628800.0)))));
    switch (i32(k) & 3) {
        case 1: { return vec2<f32>(-s, c); }
        case 2: { return vec2<f32>(-c, -s); }
        case 3: { return vec2<f32>(s, -c); }
        default: { return vec2<f32>(c, s); }
    }
}
// 1 / b, refined by a Newton step with fma: a device's division may be an approximate
// reciprocal (a systematic error of 1e-7 in a reflection's 2 / |v|^2 shrinks or grows h a
// little every step; 1,000 steps would show it).
fn recip(b: f32) -> f32 {
    let r = 1.0 / b;
    return fma(r, fma(-b, r, 1.0), r);
}
// exp(2 pi i t / N): the host's table at @2 ([cos | sin], computed in f64).
fn twiddle(k: u32, t: u32) -> vec2<f32> { return vec2<f32>(f32(xin[t]), f32(xin[units() + t])); }
// 1 / sqrt(N) from the host's table (after the twiddles).
fn dft_scale() -> f32 { return f32(xin[2u * units()]); }
fn sload(k: u32, v: u32, j: u32) -> vec2<f32> { return vec2<f32>(sget(sv(k, v, j)), sget(sv(k, v, units() + j))); }
fn sstore(k: u32, v: u32, j: u32, x: vec2<f32>) { sset(sv(k, v, j), x.x); sset(sv(k, v, units() + j), x.y); }
// Reflection r's vector (0: v1, 1: v2) at j.
fn refl(r: u32, j: u32) -> vec2<f32> { let n = units(); return vec2<f32>(ep((3u + 2u * r) * n + j), ep((4u + 2u * r) * n + j)); }
fn perm(j: u32) -> u32 { return u32(ep(8u * units() + j) + 0.5); }
// y0 = exp(i theta1_k) F e_k at j (F[j, k] = exp(-2 pi i jk / N) / sqrt(N)).
fn y0(k: u32, j: u32) -> vec2<f32> {
    let n = units();
    return cmul(phase(ep(k)), conj(twiddle(k, (j * k) % n))) * dft_scale();
}

// b = D2 P R1 y0 of column k (invocation l's share), given a1 = v1* y0 and f1 = 2 / |v1|^2.
fn fill_b(k: u32, l: u32, a1: vec2<f32>, f1: f32) {
    let n = units();
    for (var j = l; j < n; j += WG) {
        let m = perm(j);
        let y1 = y0(k, m) - f1 * cmul(refl(0u, m), a1);
        sstore(k, 1u, j, cmul(phase(ep(n + j)), y1));
    }
}

// sum over m of exp(sign 2 pi i jm / N) x_m / sqrt(N), x vector v of column k.
fn dft(k: u32, v: u32, j: u32, sign: f32) -> vec2<f32> {
    let n = units();
    var acc = vec2<f32>(0.0);
    var t = 0u;
    for (var m = 0u; m < n; m++) {
        let tw = twiddle(k, t);
        acc += cmul(vec2<f32>(tw.x, sign * tw.y), sload(k, v, m));
        t += j;
        if (t >= n) {
            t -= n;
        }
    }
    return acc * dft_scale();
}

// The chain up to u = F^-1 b of column k (b and u into the scratch), returning [a1, a2,
// (f1, f2)]: a1 = v1* y0, a2 = v2* u, fk = 2 / |vk|^2. All invocations must call it.
fn column_forward(k: u32, l: u32) -> array<vec2<f32>, 3> {
    let n = units();
    var a = vec4<f32>(0.0);
    for (var j = l; j < n; j += WG) {
        let v1 = refl(0u, j);
        let v2 = refl(1u, j);
        let y = y0(k, j);
        a += vec4<f32>(v1.x * y.x + v1.y * y.y, v1.x * y.y - v1.y * y.x, dot(v1, v1), dot(v2, v2));
    }
    let s1 = row_sum(l, a);
    let a1 = s1.xy;
    let f1 = 2.0 * recip(s1.z);
    let f2 = 2.0 * recip(s1.w);
    fill_b(k, l, a1, f1);
    storageBarrier();
    a = vec4<f32>(0.0);
    for (var j = l; j < n; j += WG) {
        let u = dft(k, 1u, j, 1.0);
        sstore(k, 2u, j, u);
        let v2 = refl(1u, j);
        a += vec4<f32>(v2.x * u.x + v2.y * u.y, v2.x * u.y - v2.y * u.x, 0.0, 0.0);
    }
    let s2 = row_sum(l, a);
    return array<vec2<f32>, 3>(a1, s2.xy, vec2<f32>(f1, f2));
}

// Column k of W from u (this invocation's j, after column_forward).
fn w_col(k: u32, j: u32, a2: vec2<f32>, f2: f32) -> vec2<f32> {
    let n = units();
    let x1 = sload(k, 2u, j) - f2 * cmul(refl(1u, j), a2);
    return cmul(phase(ep(2u * n + j)), x1);
}

@compute @workgroup_size(64)
fn cell_derive(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    params_at_bws = true;
    let k = wid.x;
    let l = lid.x;
    let n = units();
    let c = column_forward(k, l);
    // Column k of the complex W to the scratch (vector 0); cell_derive_polish writes W.
    for (var j = l; j < n; j += WG) {
        sstore(k, 0u, j, w_col(k, j, c[1], c[2].y));
    }
}

// The real [H, H] form of W in @7 at p.pw, [[Re W, -Im W], [Im W, Re W]]: W[r, k] = w
// written to its four places, and the complex gradient of W[r, k] (d/dRe + i d/dIm) from the
// real one's four places.
fn w_at(row: u32, col: u32) -> u32 { return p.pw + row * p.hidden + col; }
fn w_store(r: u32, k: u32, w: vec2<f32>) {
    let n = units();
    bws[w_at(r, k)] = S(w.x);
    bws[w_at(n + r, n + k)] = S(w.x);
    bws[w_at(n + r, k)] = S(w.y);
    bws[w_at(r, n + k)] = S(-w.y);
}
fn w_grad(r: u32, k: u32) -> vec2<f32> {
    let n = units();
    return vec2<f32>(f32(bws[w_at(r, k)]) + f32(bws[w_at(n + r, n + k)]), f32(bws[w_at(n + r, k)]) - f32(bws[w_at(r, n + k)]));
}

// Exact sums of products for cell_derive_polish: a product of two f32 values is split into
// four products of 12-bit halves (the high half by masking the bits, so no compiler rewrite
// of float arithmetic can undo it: Kahan-style compensation can be, as Mesa's NIR optimiser
// treats float operations as reassociable), each exact in f32, and added as fixed-point
// integers with 46 fractional bits in two 32-bit words (exact for |sum| < 2^17).
struct Fix {
    hi: i32,
    lo: u32,
}
fn fix_add(a: Fix, b: Fix) -> Fix {
    let lo = a.lo + b.lo;
    return Fix(a.hi + b.hi + select(0, 1, lo < a.lo), lo);
}
// An f32 of magnitude below 2^17 (times 2^46 below 2^63), to 2^-46.
fn fix_of(x: f32) -> Fix {
    let v = x * 70368744177664.0;
    let hi = floor(v * 2.3283064365386963e-10);
    return Fix(i32(hi), u32(v - hi * 4294967296.0));
}
fn fix_value(a: Fix) -> f32 { return (f32(a.hi) * 4294967296.0 + f32(a.lo)) * 1.4210854715202004e-14; }
fn split_hi(x: f32) -> f32 { return bitcast<f32>(bitcast<u32>(x) & 0xfffff000u); }
// acc + a b, exactly.
fn fix_mul_add(acc: Fix, a: f32, b: f32) -> Fix {
    let ah = split_hi(a);
    let bh = split_hi(b);
    let al = a - ah;
    let bl = b - bh;
    var s = fix_add(acc, fix_of(ah * bh));
    s = fix_add(s, fix_of(ah * bl));
    s = fix_add(s, fix_of(al * bh));
    return fix_add(s, fix_of(al * bl));
}

// W = W (3 I - W* W) / 2, one Newton-Schulz step towards the nearest unitary matrix, then W
// to the weights as [[Re W, -Im W], [Im W, Re W]]. cell_derive's f32 chain leaves W* W - I at
// a few ulps (its rounding errors add up over ten operations), and a state multiplied by W a
// thousand times drifts in norm by about a thousand times the average of that; with
// E = W* W - I summed exactly, this step leaves W unitary to the rounding of its entries, as
// a W composed in f64 and stored in f32 is. Column k: e = E e_k (vector 3), then
// w_k' = w_k - 0.5 W e.
@compute @workgroup_size(64)
fn cell_derive_polish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let k = wid.x;
    let l = lid.x;
    let n = units();
    for (var j = l; j < n; j += WG) {
        // conj(w_j) . w_k = sum of (a.x b.x + a.y b.y) + i (a.x b.y - a.y b.x).
        var re = Fix(0, 0u);
        var im = Fix(0, 0u);
        for (var r = 0u; r < n; r++) {
            let a = sload(j, 0u, r);
            let b = sload(k, 0u, r);
            re = fix_mul_add(re, a.x, b.x);
            re = fix_mul_add(re, a.y, b.y);
            im = fix_mul_add(im, a.x, b.y);
            im = fix_mul_add(im, -a.y, b.x);
        }
        if (j == k) {
            re.hi -= 16384; // 1 = 2^46 = 2^14 words of 2^32
        }
        sstore(k, 3u, j, vec2<f32>(fix_value(re), fix_value(im)));
    }
    storageBarrier();
    workgroupBarrier();
    for (var r = l; r < n; r += WG) {
        var u = vec2<f32>(0.0);
        for (var j = 0u; j < n; j++) {
            u += cmul(sload(j, 0u, r), sload(k, 3u, j));
        }
        w_store(r, k, sload(k, 0u, r) - 0.5 * u);
    }
}

// The backward of R z (z the reflection's input, g the gradient of its output, gamma = g* v,
// alpha = v* z, f = 2 / |v|^2): the gradient of v at j.
fn refl_grad(v: vec2<f32>, z: vec2<f32>, g: vec2<f32>, alpha: vec2<f32>, gamma: vec2<f32>, f: f32) -> vec2<f32> {
    let re_ga = gamma.x * alpha.x - gamma.y * alpha.y;
    return -f * (cmul(conj(alpha), g) + cmul(gamma, z)) + f * f * re_ga * v;
}

@compute @workgroup_size(64)
fn cell_derive_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let k = wid.x;
    let l = lid.x;
    let n = units();
    let c = column_forward(k, l);
    let a1 = c[0];
    let a2 = c[1];
    let f1 = c[2].x;
    let f2 = c[2].y;
    // D3: theta3's share; the gradient of x1 = R2 u into g_u's slot for now; gamma2 = g* v2.
    var a = vec4<f32>(0.0);
    for (var j = l; j < n; j += WG) {
        let g = w_grad(j, k);
        let wc = w_col(k, j, a2, f2);
        sset(partial(k, 2u * n + j), g.y * wc.x - g.x * wc.y);
        let gx = cmul(conj(phase(ep(2u * n + j))), g);
        sstore(k, 3u, j, gx);
        let v2 = refl(1u, j);
        a += vec4<f32>(gx.x * v2.x + gx.y * v2.y, gx.x * v2.y - gx.y * v2.x, 0.0, 0.0);
    }
    let g2 = row_sum(l, a).xy;
    // R2: v2's share, g_u = R2 g_x1 (v2* g = conj(gamma2)).
    for (var j = l; j < n; j += WG) {
        let v2 = refl(1u, j);
        let gx = sload(k, 3u, j);
        let dv = refl_grad(v2, sload(k, 2u, j), gx, a2, g2, f2);
        sset(partial(k, 5u * n + j), dv.x);
        sset(partial(k, 6u * n + j), dv.y);
        sstore(k, 3u, j, gx - f2 * cmul(v2, conj(g2)));
    }
    storageBarrier();
    // F^-1: g_b = F g_u; D2 and P: theta2's share, g_y1[perm j] = exp(-i theta2_j) g_b.
    for (var j = l; j < n; j += WG) {
        let gb = dft(k, 3u, j, -1.0);
        let b = sload(k, 1u, j);
        sset(partial(k, n + j), gb.y * b.x - gb.x * b.y);
        sstore(k, 4u, perm(j), cmul(conj(phase(ep(n + j))), gb));
    }
    storageBarrier();
    // R1: gamma1 = g_y1* v1, v1's share, g_y0 = R1 g_y1; theta1_k from y0.
    a = vec4<f32>(0.0);
    for (var j = l; j < n; j += WG) {
        let g = sload(k, 4u, j);
        let v1 = refl(0u, j);
        a += vec4<f32>(g.x * v1.x + g.y * v1.y, g.x * v1.y - g.y * v1.x, 0.0, 0.0);
    }
    let g1 = row_sum(l, a).xy;
    a = vec4<f32>(0.0);
    for (var j = l; j < n; j += WG) {
        let g = sload(k, 4u, j);
        let v1 = refl(0u, j);
        let y = y0(k, j);
        let dv = refl_grad(v1, y, g, a1, g1, f1);
        sset(partial(k, 3u * n + j), dv.x);
        sset(partial(k, 4u * n + j), dv.y);
        let g0 = g - f1 * cmul(v1, conj(g1));
        a.x += g0.y * y.x - g0.x * y.y;
    }
    let d1 = row_sum(l, a).x;
    for (var j = l; j < n; j += WG) {
        sset(partial(k, j), select(0.0, d1, j == k));
    }
}

@compute @workgroup_size(64)
fn cell_derive_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = units();
    let h = p.hidden;
    let stride = nwg.x * WG;
    for (var i = wid.x * WG + lid.x; i < max(7u * n, h * h); i += stride) {
        if (i < 7u * n) {
            var acc = 0.0;
            for (var k = 0u; k < n; k++) {
                acc += sget(partial(k, i));
            }
            bws[p.e_off + i] = S(acc);
        }
        if (i < h * h) {
            bws[p.pw + i] = S(0.0);
        }
    }
}
