//! Where a plan keeps each layer-direction's values: the regions of the tape, of the
//! backward's workspaces and of the rearranged weights, as element offsets computed in one
//! place from the config and the batch's N packed rows and B sequences. The kernels receive
//! these offsets in their parameter blocks (`StepParams`, `BackParams`, `UtilParams`); the
//! buffers' comments in shaders/step_forward.wgsl and shaders/step_backward.wgsl describe the
//! same regions.
//!
//! H is the hidden size, H_out the state width (P with a projection), G the gates.

use crate::cells::Mode;
use crate::config::RnnConfig;

/// One layer-direction's tape (binding `tape`): what the forward writes per packed row, and
/// what the backward reads. Rows N.. of `c` and `hs` hold sequence b's initial state at row
/// N + b (copied in before the first step), so a row's state is found through `prev[]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TapeLayout {
    /// `[N, G*H]`: the activated gates (training).
    pub gates: usize,
    /// `[N + B, H]`: the cell state c (LSTM).
    pub c: usize,
    /// `[N, H]`: GRU's `W_hn h + b_hn`, or LSTM's `o * tanh(c)` before the projection.
    pub aux: usize,
    /// `[N + B, H_out]`: the hidden state h.
    pub hs: usize,
    /// Elements of the whole tape.
    pub elems: usize,
}

impl TapeLayout {
    pub(crate) fn new(cfg: &RnnConfig, n: usize, b: usize) -> Self {
        let (hs, ho) = (cfg.hidden_size, cfg.out_size());
        let gh = cfg.gates() * hs;
        let (gates_off, c_off) = (0usize, n * gh);
        let aux_off = c_off + (n + b) * hs;
        let hs_off = aux_off + n * hs;
        let tape_elems = hs_off + (n + b) * ho;
        TapeLayout { gates: gates_off, c: c_off, aux: aux_off, hs: hs_off, elems: tape_elems }
    }
}

/// The backward's workspaces of one layer-direction (reused by the next): the recurrent
/// gradients (binding `bw`), the states each row started from (`prev`), the gate gradients
/// (`dg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GradLayout {
    /// `bw`: `[N + B, H_out]` dh reaching each row from later steps or `h_n`; rows N..
    /// collect dh0 per caller sequence.
    pub dh: usize,
    /// `bw`: `[N + B, H]` the same for c (LSTM).
    pub dc: usize,
    /// `bw`: `[N, P]` the gradient of the projected h (projection only).
    pub dhtot: usize,
    /// `bw`: `[N, H]` the gradient of h before the projection (projection only).
    pub dhpre: usize,
    /// Elements of `bw`.
    pub bw_elems: usize,
    /// `prev`: `[N, H_out]` each row's previous h (also the B operand of dW_hh).
    pub hprev: usize,
    /// `prev`: `[N, H]` each row's previous c (LSTM).
    pub cprev: usize,
    /// Elements of `prev`.
    pub prev_elems: usize,
    /// `dg`: `[N, G*H]` the hidden-side gate gradients dG_h: GRU's after the input-side
    /// dG_x at 0; for the other cells dG_x itself (they are equal).
    pub dgh: usize,
    /// Elements of `dg`.
    pub dg_elems: usize,
}

impl GradLayout {
    pub(crate) fn new(cfg: &RnnConfig, n: usize, b: usize) -> Self {
        let (hs, ho, p) = (cfg.hidden_size, cfg.out_size(), cfg.proj_size);
        let gh = cfg.gates() * hs;
        let lstm = cfg.mode == Mode::Lstm;
        let (dh_off, dc_off) = (0usize, (n + b) * ho);
        let dhtot_off = dc_off + (n + b) * hs;
        let dhpre_off = dhtot_off + n * p;
        let bw_elems = dhpre_off + if p > 0 { n * hs } else { 0 };
        let (hprev_off, cprev_off) = (0usize, n * ho);
        let prev_elems = n * ho + if lstm { n * hs } else { 0 };
        let dgh_off = if cfg.mode == Mode::Gru { n * gh } else { 0 };
        let dg_elems = if cfg.mode == Mode::Gru { 2 * n * gh } else { n * gh };
        GradLayout {
            dh: dh_off,
            dc: dc_off,
            dhtot: dhtot_off,
            dhpre: dhpre_off,
            bw_elems,
            hprev: hprev_off,
            cprev: cprev_off,
            prev_elems,
            dgh: dgh_off,
            dg_elems,
        }
    }
}

/// The width layer `layer`'s input is padded to for its GEMMs, when it is padded.
///
/// A layer input whose width is not a multiple of 4 is copied into zero-padded rows for the
/// GEMMs that read it (input projection, dW_ih), and W_ih likewise for dX, so those take the
/// vec4 kernels (gemm44 / gemm4t) instead of the scalar-B one: on lavapipe the IMDB BiLSTM's
/// (I 50) scalar GEMMs ran at 4 GFLOP/s against 7-8 for the vec4 ones.
pub(crate) fn padded_input(cfg: &RnnConfig, layer: usize) -> Option<usize> {
    let gh = cfg.gates() * cfg.hidden_size;
    let i = cfg.layer_input_size(layer);
    (!i.is_multiple_of(4) && gh.is_multiple_of(4)).then(|| i.next_multiple_of(4))
}

/// The weights of one layer-direction rearranged for the kernels (binding `wt`, rewritten per
/// layer-direction): `W_ih^T` `[I', G*H]` at 0 (I' the widest, padded, layer input; padding
/// rows zero), `W_hh^T` `[H_out, G*H]` at `hh`, `b_hh` `[G*H]` at `bhh`, `W_hr^T` `[H, P]` at
/// `hr`, and `W_hh` row-major `[G*H, H_out]` at `w4` (vec4 step kernels, scalar recurrent
/// gradient). `hh` and `w4` are multiples of 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WtLayout {
    pub hh: usize,
    pub bhh: usize,
    pub hr: usize,
    pub w4: usize,
    /// Elements of `wt`.
    pub elems: usize,
}

impl WtLayout {
    pub(crate) fn new(cfg: &RnnConfig) -> Self {
        let (hs, ho, p) = (cfg.hidden_size, cfg.out_size(), cfg.proj_size);
        let gh = cfg.gates() * hs;
        let in_max = (0..cfg.num_layers).map(|l| padded_input(cfg, l).unwrap_or(cfg.layer_input_size(l))).max().unwrap_or(0);
        let wt_hh_off = (in_max * gh).next_multiple_of(4);
        let wt_bhh_off = wt_hh_off + ho * gh;
        let wt_hr_off = wt_bhh_off + gh;
        let wt_w4_off = (wt_hr_off + hs * p).next_multiple_of(4);
        let wt_elems = wt_w4_off + gh * ho;
        WtLayout { hh: wt_hh_off, bhh: wt_bhh_off, hr: wt_hr_off, w4: wt_w4_off, elems: wt_elems }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs() -> Vec<RnnConfig> {
        vec![
            RnnConfig::new(Mode::Lstm, 6, 16).layers(2).bidirectional(true),
            RnnConfig::new(Mode::Lstm, 10, 20).proj(6),
            RnnConfig::new(Mode::Gru, 50, 12).layers(3),
            RnnConfig::new(Mode::RnnRelu, 5, 7).bidirectional(true),
            RnnConfig::new(Mode::RnnTanh, 1, 1),
        ]
    }

    /// `regions` as (start, length) in order: each starts where the one before ends.
    fn contiguous(what: &str, regions: &[(usize, usize)], total: usize) {
        let mut at = 0;
        for (i, &(start, len)) in regions.iter().enumerate() {
            assert_eq!(start, at, "{what}: region {i} starts at {start}, the one before ends at {at}");
            at += len;
        }
        assert_eq!(at, total, "{what}: regions end at {at}, the buffer has {total}");
    }

    #[test]
    fn regions_follow_each_other_with_the_documented_sizes() {
        for cfg in configs() {
            for (n, b) in [(1, 1), (10, 4), (37, 5)] {
                let (h, ho, p, g) = (cfg.hidden_size, cfg.out_size(), cfg.proj_size, cfg.gates());
                let t = TapeLayout::new(&cfg, n, b);
                contiguous("tape", &[(t.gates, n * g * h), (t.c, (n + b) * h), (t.aux, n * h), (t.hs, (n + b) * ho)], t.elems);
                let gl = GradLayout::new(&cfg, n, b);
                let pre = if p > 0 { n * h } else { 0 };
                contiguous("bw", &[(gl.dh, (n + b) * ho), (gl.dc, (n + b) * h), (gl.dhtot, n * p), (gl.dhpre, pre)], gl.bw_elems);
                let lstm = cfg.mode == Mode::Lstm;
                contiguous("prev", &[(gl.hprev, n * ho), (gl.cprev, if lstm { n * h } else { 0 })], gl.prev_elems);
                let gru = cfg.mode == Mode::Gru;
                assert_eq!(gl.dgh, if gru { n * g * h } else { 0 });
                assert_eq!(gl.dg_elems, if gru { 2 } else { 1 } * n * g * h);
            }
        }
    }

    #[test]
    fn rearranged_weights_fit_the_widest_padded_input_and_stay_aligned() {
        for cfg in configs() {
            let (h, ho, p, gh) = (cfg.hidden_size, cfg.out_size(), cfg.proj_size, cfg.gates() * cfg.hidden_size);
            let w = WtLayout::new(&cfg);
            for l in 0..cfg.num_layers {
                let width = padded_input(&cfg, l).unwrap_or(cfg.layer_input_size(l));
                assert!(width * gh <= w.hh, "{cfg:?}: W_ih^T of layer {l} overlaps W_hh^T");
                if let Some(pw) = padded_input(&cfg, l) {
                    assert!(pw.is_multiple_of(4) && pw > cfg.layer_input_size(l) && gh.is_multiple_of(4));
                }
            }
            assert!(w.hh.is_multiple_of(4) && w.w4.is_multiple_of(4), "{cfg:?}: {w:?}");
            assert_eq!((w.bhh, w.hr), (w.hh + ho * gh, w.hh + ho * gh + gh));
            assert!(w.hr + h * p <= w.w4 && w.w4 < w.hr + h * p + 4);
            assert_eq!(w.elems, w.w4 + gh * ho);
        }
        // GRU with I 50: 50 is padded to 52 (G*H = 36 is a multiple of 4), layers above read 12.
        let gru = RnnConfig::new(Mode::Gru, 50, 12).layers(2);
        assert_eq!((padded_input(&gru, 0), padded_input(&gru, 1)), (Some(52), None));
        assert_eq!(WtLayout::new(&gru).hh, 52 * 36);
    }
}
