// PyTorch's GRU (src/cells/gru.rs). State h [H]; tape: r, z, n, W_hn h + b_hn.

fn unit_forward(row: u32, j: u32) {
    let n = p.hidden;
    if (j >= n) {
        return;
    }
    let ar = xp(row, j) + r(row, j);
    let az = xp(row, n + j) + r(row, n + j);
    let rg = slot(0u, ar, sigmoid(ar));
    let z = slot(0u, az, sigmoid(az));
    let hn = r(row, 2u * n + j);
    let an = xp(row, 2u * n + j) + rg * hn;
    let nn = slot(1u, an, tanh_safe(an));
    let y = (1.0 - z) * nn + z * s_get(row, j);
    s_set(row, j, y);
    out_set(row, j, y);
    tape_set(row, j, rg);
    tape_set(row, n + j, z);
    tape_set(row, 2u * n + j, nn);
    tape_set(row, 3u * n + j, hn);
}

fn row_backward(row: u32, l: u32) {
    let n = p.hidden;
    for (var j = l; j < n; j += WG) {
        let rg = tape_get(row, j);
        let z = tape_get(row, n + j);
        let nn = tape_get(row, 2u * n + j);
        let hn = tape_get(row, 3u * n + j);
        let dh = ds_get(row, j) + dout(row, j);
        let dan = dh * (1.0 - z) * dtanh(nn);
        let dar = dan * hn * dsigmoid(rg);
        let daz = dh * (s_prev(row, j) - nn) * dsigmoid(z);
        dxp_set(row, j, dar);
        dxp_set(row, n + j, daz);
        dxp_set(row, 2u * n + j, dan);
        dr_set(row, j, dar);
        dr_set(row, n + j, daz);
        dr_set(row, 2u * n + j, dan * rg);
        ds_set(row, j, dh * z);
        if (ONE_PASS_UNITS) { break; }
    }
}
