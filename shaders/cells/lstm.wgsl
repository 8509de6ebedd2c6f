// PyTorch's LSTM (src/cells/lstm.rs). States h [H_out], c [H]. Tape: i, f, g, o, c' and,
// with projection (P = p.proj > 0), the pre-projection h at 5H, which stage 1's product
// W_hr reads. Stage 1 copies that product into h.

fn unit_forward(row: u32, j: u32) {
    let n = p.hidden;
    let ho = select(n, p.proj, p.proj > 0u);
    if (stage() == 1u) {
        if (j < ho) {
            let y = r(row, 4u * n + j);
            s_set(row, j, y);
            out_set(row, j, y);
        }
        return;
    }
    if (j >= n) {
        return;
    }
    let ai = xp(row, j) + r(row, j);
    let af = xp(row, n + j) + r(row, n + j);
    let ag = xp(row, 2u * n + j) + r(row, 2u * n + j);
    let ao = xp(row, 3u * n + j) + r(row, 3u * n + j);
    let i = slot(0u, ai, sigmoid(ai));
    let f = slot(0u, af, sigmoid(af));
    let g = slot(1u, ag, tanh_safe(ag));
    let o = slot(0u, ao, sigmoid(ao));
    let c = f * s_get(row, ho + j) + i * g;
    let h = o * slot(2u, c, tanh_safe(c));
    s_set(row, ho + j, c);
    tape_set(row, j, i);
    tape_set(row, n + j, f);
    tape_set(row, 2u * n + j, g);
    tape_set(row, 3u * n + j, o);
    tape_set(row, 4u * n + j, c);
    if (p.proj > 0u) {
        tape_set(row, 5u * n + j, h);
    } else {
        s_set(row, j, h);
        out_set(row, j, h);
    }
}

fn row_backward(row: u32, l: u32) {
    let n = p.hidden;
    let ho = select(n, p.proj, p.proj > 0u);
    if (stage() == 1u) {
        for (var j = l; j < ho; j += WG) {
            dr_set(row, 4u * n + j, ds_get(row, j) + dout(row, j));
            ds_set(row, j, 0.0);
            if (ONE_PASS_UNITS) { break; }
        }
        return;
    }
    for (var j = l; j < n; j += WG) {
        let i = tape_get(row, j);
        let f = tape_get(row, n + j);
        let g = tape_get(row, 2u * n + j);
        let o = tape_get(row, 3u * n + j);
        let c = tape_get(row, 4u * n + j);
        var dh: f32;
        if (p.proj > 0u) {
            dh = dtape(row, 5u * n + j);
        } else {
            dh = ds_get(row, j) + dout(row, j);
        }
        let tc = tanh_safe(c);
        let dct = ds_get(row, ho + j) + dh * o * dtanh(tc);
        let di = dct * g * dsigmoid(i);
        let df = dct * s_prev(row, ho + j) * dsigmoid(f);
        let dg = dct * i * dtanh(g);
        let d_o = dh * tc * dsigmoid(o);
        dxp_set(row, j, di);
        dxp_set(row, n + j, df);
        dxp_set(row, 2u * n + j, dg);
        dxp_set(row, 3u * n + j, d_o);
        dr_set(row, j, di);
        dr_set(row, n + j, df);
        dr_set(row, 2u * n + j, dg);
        dr_set(row, 3u * n + j, d_o);
        ds_set(row, ho + j, dct * f);
        if (ONE_PASS_UNITS) { break; }
    }
    if (p.proj == 0u) {
        for (var j = l; j < n; j += WG) {
            ds_set(row, j, 0.0);
            if (ONE_PASS_UNITS) { break; }
        }
    }
}
