// LSTM with peepholes (src/cells/lstm_peephole.rs), one stage. With a = xp + r (the input
// projection and W_hh h + b_hh, gates i, f, g, o at 0, H, 2H, 3H) and the peepholes
// e = weight_peephole [3, H] (w_ci at 0, w_cf at H, w_co at 2H):
//   i = s(a_i + w_ci c), f = s(a_f + w_cf c), g = tanh(a_g), c' = f c + i g,
//   o = s(a_o + w_co c'), h' = o tanh(c'); output h'.
// States h [H] at 0, c [H] at H. Tape [5H]: i at 0, f at H, g at 2H, o at 3H, c' at 4H.
// Backward: d_o = dh tanh(c') o(1-o), dc' = dc + dh o (1 - tanh(c')^2) + d_o w_co,
// di, df, dg as LSTM; de = (di c, df c, d_o c'); dc = dc' f + di w_ci + df w_cf; dh state
// zeroed (h reaches the previous step only through the product, which the driver adds).
// Purely pointwise: no reductions, each invocation reads and writes only its own units j.

fn unit_forward(row: u32, j: u32) {
    let n = p.hidden;
    if (j >= n) {
        return;
    }
    let cp = s_get(row, n + j);
    let ai = xp(row, j) + r(row, j) + e(j) * cp;
    let af = xp(row, n + j) + r(row, n + j) + e(n + j) * cp;
    let ag = xp(row, 2u * n + j) + r(row, 2u * n + j);
    let i = slot(0u, ai, sigmoid(ai));
    let f = slot(3u, af, sigmoid(af));
    let g = slot(1u, ag, tanh_safe(ag));
    let cn = f * cp + i * g;
    let ao = xp(row, 3u * n + j) + r(row, 3u * n + j) + e(2u * n + j) * cn;
    let o = slot(0u, ao, sigmoid(ao));
    let y = o * slot(2u, cn, tanh_safe(cn));
    s_set(row, n + j, cn);
    s_set(row, j, y);
    out_set(row, j, y);
    tape_set(row, j, i);
    tape_set(row, n + j, f);
    tape_set(row, 2u * n + j, g);
    tape_set(row, 3u * n + j, o);
    tape_set(row, 4u * n + j, cn);
}

fn row_backward(row: u32, l: u32) {
    let n = p.hidden;
    for (var j = l; j < n; j += WG) {
        let i = tape_get(row, j);
        let f = tape_get(row, n + j);
        let g = tape_get(row, 2u * n + j);
        let o = tape_get(row, 3u * n + j);
        let c = tape_get(row, 4u * n + j);
        let cp = s_prev(row, n + j);
        let dh = ds_get(row, j) + dout(row, j);
        let tc = tanh_safe(c);
        let d_o = dh * tc * dsigmoid(o);
        let dct = ds_get(row, n + j) + dh * o * dtanh(tc) + d_o * e(2u * n + j);
        let di = dct * g * dsigmoid(i);
        let df = dct * cp * dsigmoid(f);
        let dg = dct * i * dtanh(g);
        dxp_set(row, j, di);
        dxp_set(row, n + j, df);
        dxp_set(row, 2u * n + j, dg);
        dxp_set(row, 3u * n + j, d_o);
        dr_set(row, j, di);
        dr_set(row, n + j, df);
        dr_set(row, 2u * n + j, dg);
        dr_set(row, 3u * n + j, d_o);
        de_add(row, j, di * cp);
        de_add(row, n + j, df * cp);
        de_add(row, 2u * n + j, d_o * c);
        ds_set(row, n + j, dct * f + di * e(j) + df * e(n + j));
        ds_set(row, j, 0.0);
        if (ONE_PASS_UNITS) { break; }
    }
}
