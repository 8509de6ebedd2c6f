// Elman RNN (src/cells/rnn.rs): h' = act(xp + r), act tanh or relu (RELU, set by the cell's
// Rust module before this file). State h [H]; tape: h'.

fn act(v: f32) -> f32 { return select(tanh_safe(v), max(v, 0.0), RELU); }
fn dact(y: f32) -> f32 { return select(1.0 - y * y, select(0.0, 1.0, y > 0.0), RELU); }

fn unit_forward(row: u32, j: u32) {
    if (j < p.hidden) {
        let a = xp(row, j) + r(row, j);
        let y = slot(0u, a, act(a));
        s_set(row, j, y);
        tape_set(row, j, y);
        out_set(row, j, y);
    }
}

fn row_backward(row: u32, l: u32) {
    for (var j = l; j < p.hidden; j += WG) {
        let da = (ds_get(row, j) + dout(row, j)) * dact(tape_get(row, j));
        dxp_set(row, j, da);
        dr_set(row, j, da);
        ds_set(row, j, 0.0);
        if (ONE_PASS_UNITS) { break; }
    }
}
