//! Central-difference gradient checks of the CPU reference in f64: every mode, packed
//! variable lengths, bidirectional, multi-layer, projection, no bias.

use crate::common::{rng, uniform};
use rand::Rng;
use wgpu_rnn::cpu::{self, Pass};
use wgpu_rnn::{Mode, PackedSequence, RnnConfig, Weights};

/// Step of the central difference.
const EPS: f64 = 1e-6;
/// A gradient element passes when `|analytic - numeric| <= ATOL + RTOL * |numeric|`.
const GRADCHECK_ATOL: f64 = 1e-7;
const GRADCHECK_RTOL: f64 = 1e-5;

struct Problem {
    w: Weights<f64>,
    x: PackedSequence<f64>,
    h0: Vec<f64>,
    c0: Option<Vec<f64>>,
    r_out: Vec<f64>,
    r_h: Vec<f64>,
    r_c: Option<Vec<f64>>,
}

impl Problem {
    fn new(cfg: RnnConfig, lengths: &[usize], seed: u64) -> Self {
        let mut g = rng(seed);
        let w = Weights::<f64>::init_uniform(&cfg, seed).unwrap();
        let t = *lengths.iter().max().unwrap();
        let b = lengths.len();
        let xpad = uniform(&mut g, t * b * cfg.input_size, 1.0);
        let x = PackedSequence::from_padded(&xpad, [t, b, cfg.input_size], false, lengths).unwrap();
        let n = x.rows();
        let h0 = uniform(&mut g, cfg.h_shape(b).iter().product(), 0.5);
        let c0 = cfg.has_cell_state().then(|| uniform(&mut g, cfg.c_shape(b).iter().product(), 0.5));
        let r_out = uniform(&mut g, n * cfg.output_size(), 1.0);
        let r_h = uniform(&mut g, h0.len(), 1.0);
        let r_c = c0.as_ref().map(|c| uniform(&mut g, c.len(), 1.0));
        Problem { w, x, h0, c0, r_out, r_h, r_c }
    }

    fn loss(&self, w: &Weights<f64>, x: &PackedSequence<f64>, h0: &[f64], c0: Option<&[f64]>) -> f64 {
        let (f, _) = cpu::forward(w, x, &[Some(h0), c0][..w.config.states().len()], Pass::Inference).unwrap();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let mut l = dot(&f.output.data, &self.r_out) + dot(&f.states[0].data, &self.r_h);
        if let (Some(c), Some(r)) = (&f.states.get(1).cloned(), &self.r_c) {
            l += dot(&c.data, r);
        }
        l
    }

    fn check(&self, label: &str) {
        let (_, tape) = cpu::forward(&self.w, &self.x, &[Some(&self.h0[..]), self.c0.as_deref()][..self.w.config.states().len()], Pass::Training).unwrap();
        let g = cpu::backward(&self.w, &tape.unwrap(), &self.r_out, &[Some(&self.r_h[..]), self.r_c.as_deref()][..self.w.config.states().len()]).unwrap();
        let c0 = self.c0.as_deref();
        let numeric = |f: &dyn Fn(f64) -> f64| (f(EPS) - f(-EPS)) / (2.0 * EPS);
        let check = |what: String, analytic: f64, num: f64| {
            assert!(
                (analytic - num).abs() <= GRADCHECK_ATOL + GRADCHECK_RTOL * num.abs(),
                "{label}: {what}: analytic {analytic} vs numeric {num}"
            );
        };
        // Input.
        for i in 0..self.x.data.len() {
            let num = numeric(&|e| {
                let mut x = self.x.clone();
                x.data[i] += e;
                self.loss(&self.w, &x, &self.h0, c0)
            });
            check(format!("input[{i}]"), g.input.data[i], num);
        }
        // h0, c0.
        for i in 0..self.h0.len() {
            let num = numeric(&|e| {
                let mut h = self.h0.clone();
                h[i] += e;
                self.loss(&self.w, &self.x, &h, c0)
            });
            check(format!("h0[{i}]"), g.states[0].data[i], num);
        }
        if let Some(c0v) = &self.c0 {
            for i in 0..c0v.len() {
                let num = numeric(&|e| {
                    let mut c = c0v.clone();
                    c[i] += e;
                    self.loss(&self.w, &self.x, &self.h0, Some(&c))
                });
                check(format!("c0[{i}]"), g.states.get(1).cloned().as_ref().unwrap().data[i], num);
            }
        }
        // Every parameter element.
        let mut analytic = Vec::new();
        g.params.for_each(|def, layer, dir, v| analytic.push((def.clone(), layer, dir, v.to_vec())));
        let mut checked = 0;
        for (kind, layer, dir, av) in analytic {
            let s = layer * self.w.config.directions() + dir;
            for (i, &a) in av.iter().enumerate() {
                let num = numeric(&|e| {
                    let mut w = self.w.clone();
                    w.params[s].param_mut(&kind).unwrap()[i] += e;
                    self.loss(&w, &self.x, &self.h0, c0)
                });
                check(format!("{}[{i}]", wgpu_rnn::RnnConfig::param_name(kind.stem, layer, dir)), a, num);
                checked += 1;
            }
        }
        assert_eq!(checked, self.w.num_scalars());
    }
}

#[test]
fn gradcheck_every_mode_packed_bidirectional_two_layers() {
    for (k, mode) in Mode::PYTORCH.into_iter().enumerate() {
        let cfg = RnnConfig::new(mode, 3, 4).layers(2).bidirectional(true);
        Problem::new(cfg, &[3, 5, 1, 4], 10 + k as u64).check(&format!("{mode} L2 D2 packed"));
    }
}

#[test]
fn gradcheck_lstm_projection() {
    let cfg = RnnConfig::new(Mode::Lstm, 3, 5).layers(2).bidirectional(true).proj(2);
    Problem::new(cfg, &[4, 2, 4], 21).check("LSTM proj L2 D2");
    let cfg = RnnConfig::new(Mode::Lstm, 2, 4).proj(3);
    Problem::new(cfg, &[1, 3], 22).check("LSTM proj L1");
}

#[test]
fn gradcheck_no_bias_and_random_shapes() {
    let mut g = rng(99);
    for (k, mode) in Mode::PYTORCH.into_iter().enumerate() {
        let cfg = RnnConfig::new(mode, 2, 3).bias(false);
        Problem::new(cfg, &[2, 3], 30 + k as u64).check(&format!("{mode} no bias"));
    }
    for trial in 0..6 {
        let mode = Mode::PYTORCH[trial % 4];
        let i = g.random_range(1..5);
        let h = g.random_range(1..6);
        let b = g.random_range(1..5);
        let lengths: Vec<usize> = (0..b).map(|_| g.random_range(1..6)).collect();
        let mut cfg = RnnConfig::new(mode, i, h).layers(g.random_range(1..3)).bidirectional(g.random_bool(0.5));
        if mode == Mode::Lstm && h > 1 && g.random_bool(0.5) {
            cfg = cfg.proj(g.random_range(1..h));
        }
        Problem::new(cfg.clone(), &lengths, 40 + trial as u64).check(&format!("random {cfg:?} lengths {lengths:?}"));
    }
}
