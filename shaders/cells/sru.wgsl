// SRU (src/cells/sru.rs), input size == hidden size. xp = W_ih x [3H] (rows x~, f, r; no
// input bias), no product; pointwise parameters weight_c = (v_f, v_r) at e[0, H), e[H, 2H),
// bias = (b_f, b_r) at e[2H, 3H), e[3H, 4H):
//   f  = s(W_f x + v_f * c + b_f)
//   r  = s(W_r x + v_r * c + b_r)
//   c' = f c + (1 - f) x~
//   h  = r c' + (1 - r) x        (the output; the only state is c [H])
// Tape: f [0, H), r [H, 2H), c' [2H, 3H). Backward adds the highway's (1 - r) dh to the input
// gradient directly (dx_add). No reductions: every unit is independent.

fn unit_forward(row: u32, j: u32) {
    let n = p.hidden;
    if (j >= n) {
        return;
    }
    let cp = s_get(row, j);
    let f = sigmoid(xp(row, n + j) + e(j) * cp + e(2u * n + j));
    let rg = sigmoid(xp(row, 2u * n + j) + e(n + j) * cp + e(3u * n + j));
    let cn = f * cp + (1.0 - f) * xp(row, j);
    s_set(row, j, cn);
    out_set(row, j, rg * cn + (1.0 - rg) * x(row, j));
    tape_set(row, j, f);
    tape_set(row, n + j, rg);
    tape_set(row, 2u * n + j, cn);
}

fn row_backward(row: u32, l: u32) {
    let n = p.hidden;
    for (var j = l; j < n; j += WG) {
        let f = tape_get(row, j);
        let rg = tape_get(row, n + j);
        let cn = tape_get(row, 2u * n + j);
        let cp = s_prev(row, j);
        let dh = dout(row, j);
        let dcn = ds_get(row, j) + dh * rg;
        let dr = dh * (cn - x(row, j)) * dsigmoid(rg);
        let df = dcn * (cp - xp(row, j)) * dsigmoid(f);
        dxp_set(row, j, dcn * (1.0 - f));
        dxp_set(row, n + j, df);
        dxp_set(row, 2u * n + j, dr);
        dx_add(row, j, dh * (1.0 - rg));
        de_add(row, j, df * cp);
        de_add(row, n + j, dr * cp);
        de_add(row, 2u * n + j, df);
        de_add(row, 3u * n + j, dr);
        ds_set(row, j, dcn * f + df * e(j) + dr * e(n + j));
        if (ONE_PASS_UNITS) { break; }
    }
}
