// LSTM with coupled input and forget gates (src/cells/lstm_cifg.rs), one stage. With
// a = xp + r (the input projection and W_hh h + b_hh, gates f, g, o at 0, H, 2H):
//   f = s(a_f), g = tanh(a_g), o = s(a_o), c' = f c + (1 - f) g, h' = o tanh(c'); output h'.
// States h [H] at 0, c [H] at H. Tape [4H]: f at 0, g at H, o at 2H, c' at 3H.
// Backward: dc' = dc + dh o (1 - tanh(c')^2), df = dc' (c - g) f(1-f),
// dg = dc' (1 - f)(1 - g^2), d_o = dh tanh(c') o(1-o); dc = dc' f; dh state zeroed (h
// reaches the previous step only through the product, which the driver adds).
// Purely pointwise: no reductions, each invocation reads and writes only its own units j.

fn unit_forward(row: u32, j: u32) {
    let n = p.hidden;
    if (j >= n) {
        return;
    }
    let af = xp(row, j) + r(row, j);
    let ag = xp(row, n + j) + r(row, n + j);
    let ao = xp(row, 2u * n + j) + r(row, 2u * n + j);
    let f = slot(3u, af, sigmoid(af));
    let g = slot(1u, ag, tanh_safe(ag));
    let o = slot(0u, ao, sigmoid(ao));
    let cn = f * s_get(row, n + j) + (1.0 - f) * g;
    let y = o * slot(2u, cn, tanh_safe(cn));
    s_set(row, n + j, cn);
    s_set(row, j, y);
    out_set(row, j, y);
    tape_set(row, j, f);
    tape_set(row, n + j, g);
    tape_set(row, 2u * n + j, o);
    tape_set(row, 3u * n + j, cn);
}

fn row_backward(row: u32, l: u32) {
    let n = p.hidden;
    for (var j = l; j < n; j += WG) {
        let f = tape_get(row, j);
        let g = tape_get(row, n + j);
        let o = tape_get(row, 2u * n + j);
        let c = tape_get(row, 3u * n + j);
        let dh = ds_get(row, j) + dout(row, j);
        let tc = tanh_safe(c);
        let dct = ds_get(row, n + j) + dh * o * dtanh(tc);
        let df = dct * (s_prev(row, n + j) - g) * dsigmoid(f);
        let dg = dct * (1.0 - f) * dtanh(g);
        let d_o = dh * tc * dsigmoid(o);
        dxp_set(row, j, df);
        dxp_set(row, n + j, dg);
        dxp_set(row, 2u * n + j, d_o);
        dr_set(row, j, df);
        dr_set(row, n + j, dg);
        dr_set(row, 2u * n + j, d_o);
        ds_set(row, n + j, dct * f);
        ds_set(row, j, 0.0);
        if (ONE_PASS_UNITS) { break; }
    }
}
