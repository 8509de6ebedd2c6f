// IndRNN (src/cells/indrnn.rs): h' = relu(xp + u * h), u the pointwise parameters [H].
// State h [H]; tape: h'.

fn unit_forward(row: u32, j: u32) {
    if (j < p.hidden) {
        let y = max(xp(row, j) + e(j) * s_get(row, j), 0.0);
        s_set(row, j, y);
        tape_set(row, j, y);
        out_set(row, j, y);
    }
}

fn row_backward(row: u32, l: u32) {
    for (var j = l; j < p.hidden; j += WG) {
        let da = select(0.0, ds_get(row, j) + dout(row, j), tape_get(row, j) > 0.0);
        dxp_set(row, j, da);
        de_add(row, j, da * s_prev(row, j));
        ds_set(row, j, da * e(j));
        if (ONE_PASS_UNITS) { break; }
    }
}
