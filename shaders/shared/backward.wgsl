// Shared by the backward kernel families (step_backward.wgsl, recurrent_grad.wgsl): the
// per-step parameters and the helpers that read the gradient reaching a row. Each family
// declares `p`, `dy`, `bw` and `seq` with its own bindings.

const RB: u32 = 8u;

override GATES: u32 = 4u;

struct BackParams {
    row_off: u32,
    rows: u32,
    hidden: u32,
    out_size: u32,
    out_ld: u32,
    out_col: u32,
    w_hh: u32,        // offset of row-major W_hh [G*H, H_out] in `wt` (recurrent_grad)
    w_hr: u32,
    prev_off: u32,
    n_rows: u32,      // N: rows N.. of dh_rec / dc_rec are the initial-state gradients
    gates_off: u32,
    c_off: u32,
    aux_off: u32,
    hprev_off: u32,
    cprev_off: u32,
    dh_off: u32,
    dc_off: u32,
    dhtot_off: u32,
    dhpre_off: u32,
    dgx_off: u32,
    dgh_off: u32,
    proj: u32,
    wt_hh: u32,       // offset of W_hh^T [H_out, G*H] in `wt` (recurrent_grad)
    // The single-dispatch backward (loop_grad) only:
    w_hh_flat: u32,   // offset of W_hh [G*H, H] in the flat weights
    steps: u32,       // T
    reverse: u32,     // 1 for the reverse direction
    off_tab: u32,     // offsets in `seq` of off[t], batch_sizes[t], init[r], last[b]
    bs_tab: u32,
    init_off: u32,
    last_off: u32,
    _pad: u32,
}

// The dh_rec / dc_rec row that receives the gradient of row n's starting state.
fn dst_row(n: u32) -> u32 {
    return seq[p.prev_off + n];
}

// Total gradient reaching h of row n, element k (< H_out): output gradient + recurrent.
fn dh_total(n: u32, k: u32) -> f32 {
    return f32(dy[n * p.out_ld + p.out_col + k]) + f32(bw[p.dh_off + n * p.out_size + k]);
}

// Gradient reaching the cell output o*tanh(c) (before projection), element j (< H).
fn dh_cell(n: u32, j: u32) -> f32 {
    if (p.proj != 0u) {
        return f32(bw[p.dhpre_off + n * p.hidden + j]);
    }
    return dh_total(n, j);
}

// Row n of block rb (rows past the end repeat the last one).
fn block_row(rb: u32, t: u32) -> u32 {
    return p.row_off + min(rb + t, p.rows - 1u);
}
