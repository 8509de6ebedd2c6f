// MUT1 (src/cells/mut1.rs), input size == hidden size H:
//   z = sigmoid(W_xz x + b_z), r = sigmoid(W_xr x + b_r + W_hr h),
//   u = tanh(W_hh (r * h) + b_h + tanh(x)), h' = u z + h (1 - z).
// xp = [W_xz x + b_z; W_xr x + b_r] [2H]. Stage 0: product W_hr h (r columns 0..H), gates z
// and r, and r * h to the tape. Stage 1: product W_hh (r * h) + b_h (r columns H..2H) read
// from the tape at 2H, then u and h' (state h, output h').
// Tape (H each): z at 0, r at H, r * h at 2H (stage 1's product input), u at 3H.
// Backward: stage 1 writes dr[H..2H] = du_pre, dxp[0..H] = dz_pre, the direct input term
// dx += du_pre (1 - tanh(x)^2), ds_h = dh (1 - z). Stage 0 reads dtape at 2H (the driver's
// da W_hh), writes dxp[H..2H] = dr[0..H] = dr_pre, and adds dtape * r to ds_h.
// Each invocation reads and writes only its own units j: no barriers, no reductions.

fn unit_forward(row: u32, j: u32) {
    let n = p.hidden;
    if (j >= n) {
        return;
    }
    if (stage() == 0u) {
        let z = sigmoid(xp(row, j));
        let rg = sigmoid(xp(row, n + j) + r(row, j));
        tape_set(row, j, z);
        tape_set(row, n + j, rg);
        tape_set(row, 2u * n + j, rg * s_get(row, j));
        return;
    }
    let u = tanh_safe(r(row, n + j) + tanh_safe(x(row, j)));
    let z = tape_get(row, j);
    let y = u * z + s_get(row, j) * (1.0 - z);
    tape_set(row, 3u * n + j, u);
    s_set(row, j, y);
    out_set(row, j, y);
}

fn row_backward(row: u32, l: u32) {
    let n = p.hidden;
    if (stage() == 1u) {
        for (var j = l; j < n; j += WG) {
            let z = tape_get(row, j);
            let u = tape_get(row, 3u * n + j);
            let dh = ds_get(row, j) + dout(row, j);
            let dau = dh * z * dtanh(u);
            dr_set(row, n + j, dau);
            dx_add(row, j, dau * dtanh(tanh_safe(x(row, j))));
            dxp_set(row, j, dh * (u - s_prev(row, j)) * dsigmoid(z));
            ds_set(row, j, dh * (1.0 - z));
            if (ONE_PASS_UNITS) { break; }
        }
        return;
    }
    for (var j = l; j < n; j += WG) {
        let rg = tape_get(row, n + j);
        let drh = dtape(row, 2u * n + j);
        let dar = drh * s_prev(row, j) * dsigmoid(rg);
        dxp_set(row, n + j, dar);
        dr_set(row, j, dar);
        ds_set(row, j, ds_get(row, j) + drh * rg);
        if (ONE_PASS_UNITS) { break; }
    }
}
