// SCRN (src/cells/scrn.rs), alpha 0.95, context size S = max(1, H / 2):
//   s' = 0.05 (W_b x) + 0.95 s, h' = sigmoid(W_p s' + W_a x + W_r h); output h'.
// States, concatenated: h [H] at 0, s [S] at H. xp = [W_b x; W_a x] [S + H], no biases.
// Stage 0: product W_r h (r columns 0..H), then s' to the state and the tape. Stage 1:
// product W_p s' (r columns H..2H) read from the tape at 0, then h' (state, tape, output).
// Tape: s' at 0 (S values, stage 1's product input), h' at S (H values).
// Backward: stage 1 writes da = (ds_h + dout) h'(1 - h') to dxp[S..S+H] and dr[H..2H] and
// zeroes ds_h. Stage 0 copies dxp[S..S+H] (written by stage 1, an earlier dispatch) to
// dr[0..H] (W_r h shares the pre-activation), then with g = ds_s + dtape[0..S] (the driver's
// dr W_p) writes dxp[0..S] = 0.05 g and ds_s = 0.95 g.
// Each invocation reads and writes only its own units j (or values of earlier dispatches):
// no barriers, no reductions.

const SCRN_ALPHA: f32 = 0.95;
const SCRN_BETA: f32 = 0.05;

fn scrn_context() -> u32 { return max(1u, p.hidden / 2u); }

fn unit_forward(row: u32, j: u32) {
    let n = p.hidden;
    let c = scrn_context();
    if (stage() == 0u) {
        if (j < c) {
            let v = SCRN_BETA * xp(row, j) + SCRN_ALPHA * s_get(row, n + j);
            s_set(row, n + j, v);
            tape_set(row, j, v);
        }
        return;
    }
    if (j < n) {
        let y = sigmoid(r(row, n + j) + xp(row, c + j) + r(row, j));
        s_set(row, j, y);
        tape_set(row, c + j, y);
        out_set(row, j, y);
    }
}

fn row_backward(row: u32, l: u32) {
    let n = p.hidden;
    let c = scrn_context();
    if (stage() == 1u) {
        for (var j = l; j < n; j += WG) {
            let da = (ds_get(row, j) + dout(row, j)) * dsigmoid(tape_get(row, c + j));
            dxp_set(row, c + j, da);
            dr_set(row, n + j, da);
            ds_set(row, j, 0.0);
            if (ONE_PASS_UNITS) { break; }
        }
        return;
    }
    for (var j = l; j < n; j += WG) {
        dr_set(row, j, dxp_get(row, c + j));
        if (ONE_PASS_UNITS) { break; }
    }
    for (var j = l; j < c; j += WG) {
        let g = ds_get(row, n + j) + dtape(row, j);
        dxp_set(row, j, SCRN_BETA * g);
        ds_set(row, n + j, SCRN_ALPHA * g);
        if (ONE_PASS_UNITS) { break; }
    }
}
