//! The CPU path's own kernels against plain arithmetic: the packed per-step GEMM (every
//! kernel the machine can run) and the vectorisable f32 activations.

use crate::common::{rng, uniform};
use wgpu_rnn::cpu::fast;
use wgpu_rnn::cpu::smallgemm::{portable, PackedB};

/// fast::exp relative error bound (a few ulp).
const EXP_RTOL: f32 = 4e-7;
/// fast::tanh / fast::sigmoid absolute error bound.
const ACT_ATOL: f32 = 2e-7;

#[test]
fn fast_activations_match_libm() {
    let mut x = -100.0f32;
    while x <= 100.0 {
        if x.abs() < 87.0 {
            let want = (x as f64).exp();
            let got = fast::exp(x) as f64;
            assert!(((got - want) / want).abs() <= EXP_RTOL as f64, "exp({x}): {got} vs {want}");
        }
        let t = fast::tanh(x);
        assert!((t as f64 - (x as f64).tanh()).abs() <= ACT_ATOL as f64, "tanh({x}) = {t}");
        let s = fast::sigmoid(x);
        assert!((s as f64 - 1.0 / (1.0 + (-(x as f64)).exp())).abs() <= ACT_ATOL as f64, "sigmoid({x}) = {s}");
        assert!(t.is_finite() && s.is_finite());
        x += 0.01337;
    }
    assert_eq!(fast::tanh(1e30), 1.0);
    assert_eq!(fast::tanh(-1e30), -1.0);
    assert!(fast::sigmoid(-1e30) >= 0.0 && fast::sigmoid(-1e30) < 1e-37);
    assert_eq!(fast::sigmoid(1e30), 1.0);
}

#[test]
fn packed_gemm_matches_naive_on_awkward_sizes() {
    let mut g = rng(3);
    for &(rows, k, n) in &[(1, 1, 1), (3, 7, 17), (9, 65, 33), (17, 16, 16), (32, 129, 257), (8, 256, 1024)] {
        let a: Vec<f32> = uniform(&mut g, rows * k, 1.0).into_iter().map(|v| v as f32).collect();
        let w: Vec<f32> = uniform(&mut g, n * k, 1.0).into_iter().map(|v| v as f32).collect();
        // B = W^T with W [n, k].
        let pb = PackedB::transposed(&w, n, k);
        let mut want = vec![0f64; rows * n];
        for r in 0..rows {
            for j in 0..n {
                want[r * n + j] = (0..k).map(|kk| a[r * k + kk] as f64 * w[j * k + kk] as f64).sum();
            }
        }
        let ldc = n + 3;
        for kernel in ["dispatched", "portable"] {
            let mut c = vec![f32::NAN; rows * ldc];
            if kernel == "dispatched" {
                pb.gemm(&a, rows, k, &mut c, ldc);
            } else {
                portable(&pb, &a, rows, k, &mut c, ldc);
            }
            for r in 0..rows {
                for j in 0..n {
                    let (got, w) = (c[r * ldc + j] as f64, want[r * n + j]);
                    assert!((got - w).abs() <= 1e-5 * (k as f64).sqrt() * (1.0 + w.abs()), "{kernel} {rows}x{k}x{n} at ({r},{j}): {got} vs {w}");
                }
                // Padding columns of C are untouched.
                for j in n..ldc {
                    assert!(c[r * ldc + j].is_nan());
                }
            }
        }
        // B = W with W [k, n] gives the same as the transposed packing of W^T.
        let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        let pb2 = PackedB::plain(&wt, k, n);
        let mut c1 = vec![0f32; rows * n];
        let mut c2 = vec![0f32; rows * n];
        pb.gemm(&a, rows, k, &mut c1, n);
        pb2.gemm(&a, rows, k, &mut c2, n);
        assert_eq!(c1, c2);
    }
}
