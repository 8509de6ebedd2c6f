// GRU with the reset applied before the product (src/cells/gru_reset_before.rs), two stages.
// Stage 0: r holds W_hh[0..2H] h + b_hh[0..2H] (columns 0..2H);
//   r_g = s(xp_r + r_r), z = s(xp_z + r_z); tape r_g, z and r_g h (stage 1's product input);
//   the state is unchanged.
// Stage 1: r columns 2H..3H hold W_hn (r_g h) + b_hn;
//   n = tanh(xp_n + r_n), h' = (1 - z) n + z h; output h'.
// State h [H]. Tape [4H]: r_g at 0, z at H, n at 2H, r_g h at 3H.
// Backward, stage 1: dh = ds + dout, dan = dh (1 - z)(1 - n^2), daz = dh (h - n) z(1-z);
//   dxp/dr columns H.. (z, stage 0's product) and 2H.. (n, stage 1's product); ds = dh z.
//   The driver then writes dan W_hn into dtape[3H..4H] (the gradient of r_g h).
// Backward, stage 0: dar = dtape(r_g h) h r_g(1-r_g) into dxp/dr columns 0..H;
//   ds += dtape(r_g h) r_g (the driver then adds dr[0..2H] W_hh[0..2H] to ds).
// Purely pointwise: no reductions, each invocation reads and writes only its own units j.

fn unit_forward(row: u32, j: u32) {
    let n = p.hidden;
    if (j >= n) {
        return;
    }
    if (stage() == 0u) {
        let ar = xp(row, j) + r(row, j);
        let az = xp(row, n + j) + r(row, n + j);
        let rg = slot(0u, ar, sigmoid(ar));
        let z = slot(0u, az, sigmoid(az));
        tape_set(row, j, rg);
        tape_set(row, n + j, z);
        tape_set(row, 3u * n + j, rg * s_get(row, j));
        return;
    }
    let z = tape_get(row, n + j);
    let an = xp(row, 2u * n + j) + r(row, 2u * n + j);
    let nn = slot(1u, an, tanh_safe(an));
    let y = (1.0 - z) * nn + z * s_get(row, j);
    tape_set(row, 2u * n + j, nn);
    s_set(row, j, y);
    out_set(row, j, y);
}

fn row_backward(row: u32, l: u32) {
    let n = p.hidden;
    if (stage() == 1u) {
        for (var j = l; j < n; j += WG) {
            let z = tape_get(row, n + j);
            let nn = tape_get(row, 2u * n + j);
            let dh = ds_get(row, j) + dout(row, j);
            let dan = dh * (1.0 - z) * dtanh(nn);
            let daz = dh * (s_prev(row, j) - nn) * dsigmoid(z);
            dxp_set(row, n + j, daz);
            dxp_set(row, 2u * n + j, dan);
            dr_set(row, n + j, daz);
            dr_set(row, 2u * n + j, dan);
            ds_set(row, j, dh * z);
            if (ONE_PASS_UNITS) { break; }
        }
        return;
    }
    for (var j = l; j < n; j += WG) {
        let rg = tape_get(row, j);
        let drh = dtape(row, 3u * n + j);
        let dar = drh * s_prev(row, j) * dsigmoid(rg);
        dxp_set(row, j, dar);
        dr_set(row, j, dar);
        ds_set(row, j, ds_get(row, j) + drh * rg);
        if (ONE_PASS_UNITS) { break; }
    }
}
