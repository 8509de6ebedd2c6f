// Jordan network (src/cells/jordan.rs): a = tanh(W_ih x + b_ih + W_hy y), y' = tanh(W_y a + b_y);
// state y [H], output y'.
// Stage 0: product W_hy y (r columns 0..H), then a to the tape. Stage 1: product W_y a + b_y
// (r columns H..2H) read from the tape at 0, then y' (state, tape, output).
// Tape (H each): a at 0 (stage 1's product input), y' at H.
// Backward: stage 1 writes dr[H..2H] = (ds + dout)(1 - y'^2) and zeroes ds (y reaches the
// step only through stage 0's product, whose gradient the driver adds). Stage 0 reads dtape at
// 0 (the driver's dr W_y) and writes dxp = dr[0..H] = dtape (1 - a^2).
// Each invocation reads and writes only its own units j: no barriers, no reductions.

fn unit_forward(row: u32, j: u32) {
    let n = p.hidden;
    if (j >= n) {
        return;
    }
    if (stage() == 0u) {
        tape_set(row, j, tanh_safe(xp(row, j) + r(row, j)));
        return;
    }
    let v = tanh_safe(r(row, n + j));
    s_set(row, j, v);
    tape_set(row, n + j, v);
    out_set(row, j, v);
}

fn row_backward(row: u32, l: u32) {
    let n = p.hidden;
    if (stage() == 1u) {
        for (var j = l; j < n; j += WG) {
            dr_set(row, n + j, (ds_get(row, j) + dout(row, j)) * dtanh(tape_get(row, n + j)));
            ds_set(row, j, 0.0);
            if (ONE_PASS_UNITS) { break; }
        }
        return;
    }
    for (var j = l; j < n; j += WG) {
        let da = dtape(row, j) * dtanh(tape_get(row, j));
        dxp_set(row, j, da);
        dr_set(row, j, da);
        if (ONE_PASS_UNITS) { break; }
    }
}
