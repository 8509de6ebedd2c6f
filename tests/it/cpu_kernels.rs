//! The CPU path's own kernels against plain arithmetic: the packed per-step GEMM (every
//! kernel the machine can run) and the vectorisable f32 activations.

use crate::common::{rng, uniform};
use wgpu_rnn::cpu::fast;
use wgpu_rnn::cpu::smallgemm::{self, portable, PackedB};

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

/// A clone of packed weights (1 MiB: malloc puts such a block 16 bytes past a page) gives the
/// original's bits: its panels are placed on a cache line of its own buffer, which debug
/// builds assert at every panel the kernels read.
#[test]
fn cloned_packed_weights_give_the_same_bits() {
    let mut g = rng(11);
    let (rows, k, n) = (19, 256, 1030);
    let a: Vec<f32> = uniform(&mut g, rows * k, 1.0).into_iter().map(|v| v as f32).collect();
    let w: Vec<f32> = uniform(&mut g, n * k, 1.0).into_iter().map(|v| v as f32).collect();
    let pb = PackedB::transposed(&w, n, k);
    let copy = pb.clone();
    let (mut want, mut got) = (vec![0f32; rows * n], vec![0f32; rows * n]);
    pb.gemm(&a, rows, k, &mut want, n);
    copy.gemm(&a, rows, k, &mut got, n);
    assert!(want.iter().any(|v| *v != 0.0), "the product is all zeros");
    assert!(got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()), "a clone's product differs from the original's");
}

#[test]
fn packed_gemm_matches_naive_on_awkward_sizes() {
    let mut g = rng(3);
    for &(rows, k, n) in &[(1, 1, 1), (3, 7, 17), (9, 65, 33), (17, 16, 16), (32, 129, 257), (8, 256, 1024), (1, 256, 1030), (2, 100, 400), (4, 65, 1000), (0, 16, 40)] {
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

/// The general f32 GEMM (`cpu::gemm`), which past `BLOCKED_MIN_*` runs the micro-kernels with
/// B packed and k blocked, against f64 arithmetic: both operands in both orientations, leading
/// dimensions past the columns, C overwritten (`beta` 0, over NaN) or added to (`beta` 1), rows
/// and columns off the kernels' blocks, k over several of its k-blocks; and bitwise the same on
/// 1 and 3 threads.
#[test]
fn general_gemm_matches_f64_in_every_orientation() {
    use wgpu_rnn::cpu::gemm::{try_gemm, Mat, Op};
    use wgpu_rnn::cpu::split::with_threads;
    let mut g = rng(29);
    for &(m, k, n) in &[(37, 300, 97), (130, 129, 70), (64, 1000, 33), (40, 2, 16), (33, 40000, 1)] {
        for opa in [Op::N, Op::T] {
            for opb in [Op::N, Op::T] {
                for beta in [0f32, 1.0] {
                    // Stored shapes and leading dimensions (3 and 5 past the columns).
                    let (ar, ac) = if opa == Op::N { (m, k) } else { (k, m) };
                    let (br, bc) = if opb == Op::N { (k, n) } else { (n, k) };
                    let (lda, ldb, ldc) = (ac + 3, bc + 5, n + 2);
                    let a: Vec<f32> = uniform(&mut g, ar * lda, 1.0).into_iter().map(|v| v as f32).collect();
                    let b: Vec<f32> = uniform(&mut g, br * ldb, 1.0).into_iter().map(|v| v as f32).collect();
                    let c0: Vec<f32> = if beta == 0.0 { vec![f32::NAN; m * ldc] } else { uniform(&mut g, m * ldc, 1.0).into_iter().map(|v| v as f32).collect() };
                    let at = |i: usize, kk: usize| if opa == Op::N { a[i * lda + kk] } else { a[kk * lda + i] } as f64;
                    let bt = |kk: usize, j: usize| if opb == Op::N { b[kk * ldb + j] } else { b[j * ldb + kk] } as f64;
                    let run = |threads: usize| {
                        let mut c = c0.clone();
                        with_threads(threads, || try_gemm(1.0, Mat::with_ld(&a, ar, ac, lda).unwrap(), opa, Mat::with_ld(&b, br, bc, ldb).unwrap(), opb, beta, &mut c, ldc)).unwrap();
                        c
                    };
                    let c = run(3);
                    let what = format!("{m}x{k}x{n} {opa:?}{opb:?} beta {beta}");
                    assert_eq!(c.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), run(1).iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{what}: 1 and 3 threads differ");
                    for i in 0..m {
                        for j in 0..n {
                            let want = (0..k).map(|kk| at(i, kk) * bt(kk, j)).sum::<f64>() + if beta == 0.0 { 0.0 } else { c0[i * ldc + j] as f64 };
                            let got = c[i * ldc + j] as f64;
                            assert!((got - want).abs() <= GEMM_F32_RTOL * (k as f64).sqrt() * (1.0 + want.abs()), "{what} at ({i},{j}): {got} vs {want}");
                        }
                        // Padding columns of C are untouched.
                        for j in n..ldc {
                            assert_eq!(c[i * ldc + j].to_bits(), c0[i * ldc + j].to_bits(), "{what}: padding ({i},{j}) written");
                        }
                    }
                }
            }
        }
    }
}

/// `try_gemm_bias` (the forward's input projection up front, the training kit's linear layer)
/// and `PackedB::gemm_bias` (the forward's per-step products, over 1 to 20 rows) give bitwise
/// what the product and then adding the bias to each row give; `try_gemm_bias` on our
/// blocked GEMM (which adds it chunk by chunk, on 1 and 3 threads) and on matrixmultiply's
/// (small products, f64), in every orientation; C's padding columns are untouched, k = 0 gives
/// the bias, and a bias shorter than C's columns is a typed error.
#[test]
fn gemm_with_bias_matches_gemm_then_bias_bitwise() {
    use wgpu_rnn::cpu::gemm::{try_gemm, try_gemm_bias, Mat, Op};
    use wgpu_rnn::cpu::split::with_threads;
    use wgpu_rnn::Error;
    fn check<T: wgpu_rnn::cpu::Float + std::fmt::Debug>(g: &mut impl FnMut(usize) -> Vec<T>, m: usize, k: usize, n: usize, opa: Op, opb: Op) {
        let (ar, ac) = if opa == Op::N { (m, k) } else { (k, m) };
        let (br, bc) = if opb == Op::N { (k, n) } else { (n, k) };
        let (lda, ldb, ldc) = (ac + 3, bc + 5, n + 2);
        let (a, b, bias) = (g(ar * lda), g(br * ldb), g(n + 1));
        let (av, bv) = (Mat::with_ld(&a, ar, ac, lda).unwrap(), Mat::with_ld(&b, br, bc, ldb).unwrap());
        let c0 = g(m * ldc);
        let mut want = c0.clone();
        try_gemm(T::one(), av, opa, bv, opb, T::zero(), &mut want, ldc).unwrap();
        for r in 0..m {
            for j in 0..n {
                want[r * ldc + j] += bias[j];
            }
        }
        let what = format!("{m}x{k}x{n} {opa:?}{opb:?} {}", std::any::type_name::<T>());
        for threads in [1, 3] {
            let mut c = c0.clone();
            with_threads(threads, || try_gemm_bias(av, opa, bv, opb, &mut c, ldc, Some(&bias[..n]))).unwrap();
            assert!(c.iter().zip(&want).all(|(x, y)| x.to_f64().to_bits() == y.to_f64().to_bits()), "{what}, {threads} threads: not the bits of the GEMM and then the bias");
        }
        let mut c = c0.clone();
        match try_gemm_bias(av, opa, bv, opb, &mut c, ldc, Some(&bias[..n - 1])) {
            Err(Error::LengthMismatch { .. }) => {}
            other => panic!("{what}: a bias of {} for {n} columns gave {other:?}", n - 1),
        }
    }
    let mut r = rng(37);
    let mut g32 = |len: usize| uniform(&mut r, len, 1.0).into_iter().map(|v| v as f32).collect::<Vec<f32>>();
    // Blocked (2^20 multiply-adds or more, 32 rows or more), then small, then k = 0.
    for &(m, k, n) in &[(300, 129, 70), (37, 300, 97), (130, 129, 70), (40, 2, 16), (33, 0, 20)] {
        for opa in [Op::N, Op::T] {
            for opb in [Op::N, Op::T] {
                check(&mut g32, m, k, n, opa, opb);
            }
        }
    }
    let mut r = rng(38);
    let mut g64 = |len: usize| uniform(&mut r, len, 1.0);
    check(&mut g64, 37, 300, 97, Op::N, Op::T);
    // The per-step products' `PackedB::gemm_bias`: the k-blocked kernel adds the bias from 8
    // rows (k 64 or more), the few-row kernels and k 40 after the product.
    let mut r = rng(39);
    for &(rows, k, n) in &[(1, 128, 70), (3, 100, 33), (8, 129, 70), (20, 300, 97), (16, 40, 50)] {
        let v = |len: usize, r: &mut _| uniform(r, len, 1.0).into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        let (w, a, bias) = (v(n * k, &mut r), v(rows * (k + 3), &mut r), v(n, &mut r));
        let pb = wgpu_rnn::cpu::smallgemm::PackedB::transposed(&w, n, k);
        let ldc = n + 2;
        let mut want = v(rows * ldc, &mut r);
        let mut got = want.clone();
        pb.gemm(&a, rows, k + 3, &mut want, ldc);
        for row in 0..rows {
            for j in 0..n {
                want[row * ldc + j] += bias[j];
            }
        }
        pb.gemm_bias(&a, rows, k + 3, &mut got, ldc, Some(&bias));
        assert!(got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()), "PackedB::gemm_bias {rows}x{k}x{n}: not the bits of the product and then the bias");
    }
}

/// The backward's shared weight-gradient products (`gemm::shared_at_b`: several `A[ks]^T B`
/// over row ranges of one A, packed once, with A's column sums) against f64 and against one
/// `try_gemm` a product: bitwise where every product is large enough for our blocked GEMM on
/// its own, as each element is the same chain of FMAs; the sums bitwise those of adding A's
/// rows in order; 1 and 3 threads bitwise equal; a product over no rows zero over NaN; C's
/// padding columns untouched; and typed errors for rows past A's, a B of the wrong rows and a
/// short C.
#[test]
fn shared_weight_gradient_products_match_separate_gemms() {
    use wgpu_rnn::cpu::gemm::{shared_at_b, try_gemm, AtB, Mat, Op};
    use wgpu_rnn::cpu::split::with_threads;
    use wgpu_rnn::Error;
    let mut g = rng(31);
    // (m, k, [(rows of A, n)], each product large enough for the blocked GEMM alone)
    let cases: [(usize, usize, Vec<(std::ops::Range<usize>, usize)>, bool); 4] = [
        (70, 1500, vec![(0..1500, 20), (100..1500, 33), (7..7, 5)], true),
        (131, 257, vec![(0..257, 17), (0..200, 40)], false),
        (33, 40, vec![(3..40, 9), (40..40, 4)], false),
        (200, 1600, vec![(0..1600, 40), (32..1600, 72)], true),
    ];
    for (m, k, prods, big) in cases {
        let lda = m + 3;
        // Exactly the elements the view addresses: the last row ends at its m-th column.
        let a: Vec<f32> = uniform(&mut g, (k - 1) * lda + m, 1.0).into_iter().map(|v| v as f32).collect();
        let bs: Vec<(Vec<f32>, usize)> = prods.iter().map(|(ks, n)| (uniform(&mut g, ks.len() * (n + 1), 1.0).into_iter().map(|v| v as f32).collect(), n + 1)).collect();
        let run = |threads: usize| {
            let mut cs: Vec<Vec<f32>> = prods.iter().map(|(_, n)| vec![f32::NAN; m * (n + 2)]).collect();
            let mut sums = vec![f32::NAN; m];
            {
                let mut products: Vec<AtB<'_, f32>> = prods
                    .iter()
                    .zip(&bs)
                    .zip(cs.iter_mut())
                    .map(|(((ks, n), (b, ldb)), c)| AtB::try_new(ks.clone(), Mat::with_ld(b, ks.len(), *n, *ldb).unwrap(), c, n + 2).unwrap())
                    .collect();
                with_threads(threads, || shared_at_b(Mat::with_ld(&a, k, m, lda).unwrap(), &mut products, Some(&mut sums))).unwrap();
            }
            (cs, sums)
        };
        let (cs, sums) = run(3);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let (cs1, sums1) = run(1);
        assert_eq!(bits(&sums), bits(&sums1), "m {m} k {k}: sums differ on 1 and 3 threads");
        for ((c, c1), ((ks, n), (b, ldb))) in cs.iter().zip(&cs1).zip(prods.iter().zip(&bs)) {
            let what = format!("m {m} k {k} rows {ks:?} n {n}");
            assert_eq!(bits(c), bits(c1), "{what}: 1 and 3 threads differ");
            let ldc = n + 2;
            // One GEMM for this product alone.
            let mut alone = vec![f32::NAN; m * ldc];
            if !ks.is_empty() {
                try_gemm(1.0, Mat::with_ld(&a[ks.start * lda..], ks.len(), m, lda).unwrap(), Op::T, Mat::with_ld(b, ks.len(), *n, *ldb).unwrap(), Op::N, 0.0, &mut alone, ldc).unwrap();
            }
            for i in 0..m {
                for j in 0..*n {
                    let got = c[i * ldc + j];
                    if ks.is_empty() {
                        assert_eq!(got.to_bits(), 0f32.to_bits(), "{what}: ({i},{j}) of an empty product");
                        continue;
                    }
                    let want: f64 = ks.clone().map(|r| a[r * lda + i] as f64 * b[(r - ks.start) * ldb + j] as f64).sum();
                    assert!((got as f64 - want).abs() <= GEMM_F32_RTOL * (ks.len() as f64).sqrt() * (1.0 + want.abs()), "{what} at ({i},{j}): {got} vs {want}");
                    if big {
                        assert_eq!(got.to_bits(), alone[i * ldc + j].to_bits(), "{what} at ({i},{j}): not the lone GEMM's bits");
                    }
                }
                for j in *n..ldc {
                    assert!(c[i * ldc + j].is_nan(), "{what}: padding ({i},{j}) written");
                }
            }
        }
        for (j, s) in sums.iter().enumerate() {
            let in_order = (0..k).fold(0f32, |acc, r| acc + a[r * lda + j]);
            assert_eq!(s.to_bits(), in_order.to_bits(), "m {m} k {k}: sum of column {j}");
        }
    }
    // Typed errors, not panics.
    let a = vec![0f32; 10 * 4];
    let b = vec![0f32; 10 * 3];
    let mut c = vec![0f32; 4 * 3];
    assert!(matches!(AtB::try_new(0..9, Mat::new(&b, 10, 3), &mut c, 3), Err(Error::ShapeMismatch { .. })));
    let mut past = [AtB::try_new(1..11, Mat::new(&b, 10, 3), &mut c, 3).unwrap()];
    assert!(matches!(shared_at_b(Mat::new(&a, 10, 4), &mut past, None), Err(Error::ShapeMismatch { .. })));
    let mut short = vec![0f32; 4 * 3 - 1];
    let mut small = [AtB::try_new(0..10, Mat::new(&b, 10, 3), &mut short, 3).unwrap()];
    assert!(matches!(shared_at_b(Mat::new(&a, 10, 4), &mut small, None), Err(Error::LengthMismatch { .. })));
    #[allow(clippy::reversed_empty_ranges)]
    let mut reversed = [AtB::try_new(20..0, Mat::new(&b, 0, 3), &mut c, 3).unwrap()];
    assert!(matches!(shared_at_b(Mat::new(&a, 10, 4), &mut reversed, None), Err(Error::ShapeMismatch { .. })));
    let mut ok = [AtB::try_new(0..10, Mat::new(&b, 10, 3), &mut c, 3).unwrap()];
    assert!(matches!(shared_at_b(Mat::new(&a, 10, 4), &mut ok, Some(&mut [0f32; 3])), Err(Error::LengthMismatch { .. })));
}

/// LSTM's weight and bias gradients through the shared products (W_ih's and W_hh's share dG,
/// packed once; the biases share its column sums) at sizes where our blocked GEMM runs them
/// (4H = 96 rows, 1,140 packed rows), in f32 against the same run in f64: both directions (the
/// state product leaves out the first step processed, step 0's rows forward and the last
/// step's in reverse), from zero states and from given ones (all rows).
#[test]
fn lstm_weight_gradients_through_shared_products_match_f64() {
    use wgpu_rnn::cpu::{self, Pass};
    use wgpu_rnn::{Mode, PackedSequence, RnnConfig, Weights};
    let mut g = rng(83);
    let cfg = RnnConfig::new(Mode::Lstm, 48, 24).bidirectional(true);
    let w64 = Weights::<f64>::init_uniform(&cfg, 3).unwrap();
    let w32: Weights<f32> = w64.cast();
    let (t, b) = (40, 30);
    let lengths: Vec<usize> = (0..b).map(|i| t - i % 7).collect();
    let x = uniform(&mut g, t * b * cfg.input_size, 1.0);
    let x64 = PackedSequence::from_padded(&x, [t, b, cfg.input_size], false, &lengths).unwrap();
    let x32 = PackedSequence::from_padded(&wgpu_rnn::cpu::cast::<f64, f32>(&x), [t, b, cfg.input_size], false, &lengths).unwrap();
    let s0: Vec<Vec<f64>> = cfg.states().iter().map(|s| uniform(&mut g, cfg.directions() * b * s.width, 0.5)).collect();
    let s0_32: Vec<Vec<f32>> = s0.iter().map(|v| wgpu_rnn::cpu::cast(v)).collect();
    for given in [false, true] {
        let st64: Vec<Option<&[f64]>> = s0.iter().map(|v| given.then_some(v.as_slice())).collect();
        let st32: Vec<Option<&[f32]>> = s0_32.iter().map(|v| given.then_some(v.as_slice())).collect();
        let (o64, t64) = cpu::forward(&w64, &x64, &st64, Pass::Training).unwrap();
        let (_, t32) = cpu::forward(&w32, &x32, &st32, Pass::Training).unwrap();
        let go = uniform(&mut g, o64.output.data.len(), 1.0);
        let g64 = cpu::backward(&w64, &t64.unwrap(), &go, &[]).unwrap().params.to_flat();
        let g32 = cpu::backward(&w32, &t32.unwrap(), &wgpu_rnn::cpu::cast::<f64, f32>(&go), &[]).unwrap().params.to_flat();
        let scale = g64.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(scale > 1.0 && scale.is_finite(), "gradient scale {scale}");
        for (k, (&u, &v)) in g32.iter().zip(&g64).enumerate() {
            assert!((u as f64 - v).abs() <= SHARED_GRAD_RTOL * scale, "states given {given}: parameter gradient {k}: {u} in f32, {v} in f64");
        }
    }
}

/// f32 against f64 weight gradients summed over 1,140 rows, relative to the largest.
const SHARED_GRAD_RTOL: f64 = 1e-5;

/// The f32 GEMM's error against f64, relative to `sqrt(k) (1 + |C|)`.
const GEMM_F32_RTOL: f64 = 1e-5;

/// A direct view of B ([`PackedB::try_direct`]: W read in place, only a partial last panel
/// copied) gives bitwise what the packed B gives, on every kernel, through the threaded product
/// on 1 and 3 threads too; and `xwt_direct` (C = X W^T computed as (W X^T)^T with X^T packed)
/// gives bitwise what the transposed packing of W gives. Sizes with and without a partial last
/// panel, a single column, k = 1, and 1 to 4 rows over many panels (the few-row blocks: the
/// AVX2 ones for 1 and 2 rows, on either kind of machine, the 4 x 6 zmm ones for 3 and 4, with
/// every remainder of panels they take at a time).
#[test]
fn direct_products_match_packed_bitwise() {
    use wgpu_rnn::cpu::split;
    let mut g = rng(5);
    for &(rows, k, n) in &[(1, 1, 1), (3, 7, 17), (9, 65, 33), (17, 16, 16), (32, 129, 257), (64, 40, 48), (5, 1, 100), (64, 256, 520), (1, 256, 1030), (2, 100, 400), (3, 300, 200), (4, 65, 1000)] {
        let a: Vec<f32> = uniform(&mut g, rows * k, 1.0).into_iter().map(|v| v as f32).collect();
        // W [k, n] for the plain product.
        let w: Vec<f32> = uniform(&mut g, k * n, 1.0).into_iter().map(|v| v as f32).collect();
        let packed = PackedB::plain(&w, k, n);
        let direct = PackedB::try_direct(&w, k, n).unwrap();
        assert!(direct.is_direct() && !packed.is_direct());
        let mut want = vec![f32::NAN; rows * n];
        packed.gemm(&a, rows, k, &mut want, n);
        let mut got = vec![f32::NAN; rows * n];
        direct.gemm(&a, rows, k, &mut got, n);
        assert_eq!(got, want, "direct {rows}x{k}x{n}");
        let (mut pw, mut pg) = (vec![f32::NAN; rows * n], vec![f32::NAN; rows * n]);
        portable(&packed, &a, rows, k, &mut pw, n);
        portable(&direct, &a, rows, k, &mut pg, n);
        assert_eq!(pg, pw, "portable direct {rows}x{k}x{n}");
        for threads in [1, 3] {
            let mut t = vec![f32::NAN; rows * n];
            split::with_threads(threads, || smallgemm::gemm_threaded(&direct, &a, rows, k, &mut t, n));
            assert_eq!(t, want, "threaded direct {rows}x{k}x{n}, {threads} threads");
        }
        // C[rows, n] = X[rows, k] W2[n, k]^T.
        let w2: Vec<f32> = uniform(&mut g, n * k, 1.0).into_iter().map(|v| v as f32).collect();
        let mut want = vec![f32::NAN; rows * n];
        PackedB::transposed(&w2, n, k).gemm(&a, rows, k, &mut want, n);
        for threads in [1, 3] {
            let mut got = vec![f32::NAN; rows * n];
            split::with_threads(threads, || smallgemm::xwt_direct(&a, rows, k, &w2, n, &mut got)).unwrap();
            assert_eq!(got, want, "xwt_direct {rows}x{k}x{n}, {threads} threads");
        }
    }
    // Short operands are typed errors, not panics.
    let v = vec![0f32; 12];
    assert!(matches!(PackedB::try_direct(&v, 4, 4), Err(wgpu_rnn::Error::LengthMismatch { .. })));
    let mut c = vec![0f32; 12];
    assert!(matches!(smallgemm::xwt_direct(&v, 3, 4, &v, 4, &mut c), Err(wgpu_rnn::Error::LengthMismatch { .. })));
    assert!(matches!(smallgemm::xwt_direct(&v, 4, 3, &v, 4, &mut c[..11]), Err(wgpu_rnn::Error::LengthMismatch { .. })));
    assert!(matches!(smallgemm::xwt_direct(&v[..11], 4, 3, &v, 4, &mut c), Err(wgpu_rnn::Error::LengthMismatch { .. })));
}

/// One step over a batch of `SPLIT_B` rows, so at most `smallgemm::DIRECT_MAX_ROWS` rows in all
/// (the products read W in place: the forward's input projection, the backward's `dh0` and dX),
/// with a hidden size that splits the loops and the products: 1, 2 and 3 threads agree bit for
/// bit.
#[test]
fn direct_products_do_not_depend_on_the_thread_count() {
    use wgpu_rnn::config::{Mode, RnnConfig};
    use wgpu_rnn::weights::Weights;
    assert!(SPLIT_B <= smallgemm::DIRECT_MAX_ROWS);
    let lengths = vec![1; SPLIT_B];
    let mut g = rng(19);
    for cfg in [
        RnnConfig::new(Mode::Lstm, SPLIT_I, 192).bidirectional(true),
        RnnConfig::new(Mode::Gru, SPLIT_I, 192).layers(2),
        RnnConfig::new(Mode::GruResetBefore, SPLIT_I, 192),
    ] {
        let w = Weights::<f32>::init_uniform(&cfg, 5).unwrap();
        let x: Vec<f32> = uniform(&mut g, SPLIT_B * SPLIT_I, 1.0).into_iter().map(|v| v as f32).collect();
        let go: Vec<f32> = uniform(&mut g, SPLIT_B * cfg.output_size(), 1.0).into_iter().map(|v| v as f32).collect();
        let one = run_with_threads(1, || run_split_case(&w, &x, &go, 1, &lengths));
        for n in [2, 3] {
            assert!(one == run_with_threads(n, || run_split_case(&w, &x, &go, 1, &lengths)), "{cfg:?}: {n} threads differ from 1");
        }
    }
}

/// The products computed once per call take W in place up to `smallgemm::DIRECT_MAX_ROWS` rows
/// in all and a general GEMM past it. Two sequences a little longer than half of it (both
/// together past it, each alone within it; batch 2, so the input side is one product up front)
/// through the cells of different product structures: the batch against each sequence alone,
/// in f64, so each path checks the other.
#[test]
fn direct_products_match_the_general_gemm_across_the_row_limit() {
    use wgpu_rnn::config::{Mode, RnnConfig};
    use wgpu_rnn::weights::Weights;
    let t = smallgemm::DIRECT_MAX_ROWS / 2 + 3;
    let lengths = [t, t - 1];
    assert!(lengths.iter().sum::<usize>() > smallgemm::DIRECT_MAX_ROWS && t <= smallgemm::DIRECT_MAX_ROWS);
    let mut g = rng(17);
    for cfg in [
        RnnConfig::new(Mode::Lstm, 20, 24).bidirectional(true),
        RnnConfig::new(Mode::Gru, 20, 24).layers(2),
        RnnConfig::new(Mode::GruResetBefore, 20, 24),
        RnnConfig::new(Mode::Scrn, 20, 24),
    ] {
        let (ld, out_w, b) = (cfg.num_layers * cfg.directions(), cfg.output_size(), lengths.len());
        let w = Weights::<f64>::init_uniform(&cfg, 3).unwrap();
        let x = uniform(&mut g, t * b * cfg.input_size, 1.0);
        let go = uniform(&mut g, t * b * out_w, 1.0);
        let batched = run_split_case(&w, &x, &go, t, &lengths);
        let mut params = vec![0f64; batched[2].len()];
        for (s, &len) in lengths.iter().enumerate() {
            let pick = |m: &[f64], f: usize| -> Vec<f64> { (0..len).flat_map(|tt| m[(tt * b + s) * f..(tt * b + s + 1) * f].to_vec()).collect() };
            let one = run_split_case(&w, &pick(&x, cfg.input_size), &pick(&go, out_w), len, &[len]);
            let what = |part: &str| format!("{cfg:?} sequence {s} {part}");
            crate::common::assert_close(&what("output"), &one[0], &pick(&batched[0], out_w), BATCH_VS_SINGLE_ATOL, 0.0);
            crate::common::assert_close(&what("input gradient"), &one[1], &pick(&batched[1], cfg.input_size), BATCH_VS_SINGLE_ATOL, 0.0);
            let state = |m: &[f64], f: usize| -> Vec<f64> { (0..ld).flat_map(|l| m[(l * b + s) * f..(l * b + s + 1) * f].to_vec()).collect() };
            for (i, st) in cfg.states().iter().enumerate() {
                crate::common::assert_close(&what(&format!("{}_n", st.name)), &one[3 + 2 * i], &state(&batched[3 + 2 * i], st.width), BATCH_VS_SINGLE_ATOL, 0.0);
                crate::common::assert_close(&what(&format!("d{}0", st.name)), &one[4 + 2 * i], &state(&batched[4 + 2 * i], st.width), BATCH_VS_SINGLE_ATOL, 0.0);
            }
            for (acc, v) in params.iter_mut().zip(&one[2]) {
                *acc += v;
            }
        }
        crate::common::assert_close(&format!("{cfg:?} parameter gradients"), &params, &batched[2], BATCH_VS_SINGLE_ATOL, 0.0);
    }
}

/// f32 against f64 on the same configuration (the f32 path runs the machine's SIMD kernels,
/// the f64 one the portable kernel): absolute tolerance for outputs and gradients.
const F32_VS_F64_ATOL: f64 = 2e-4;
/// A batch against its sequences one at a time, in f64 (different GEMM paths and summation
/// orders, same arithmetic): absolute tolerance.
const BATCH_VS_SINGLE_ATOL: f64 = 1e-10;

/// Sizes for the split tests: with these lengths every configuration below is above the time
/// loops' split threshold (`cpu::split::MIN_PARALLEL_MACS`), each thread gets a full row block,
/// and N >= 256 rows, so the input side runs step by step (the per-step input projection and dX).
const SPLIT_T: usize = 24;
const SPLIT_B: usize = 26;
const SPLIT_I: usize = 24;

fn split_lengths() -> Vec<usize> {
    (0..SPLIT_B).map(|i| 1 + (i * 7) % SPLIT_T).collect()
}

fn split_configs() -> Vec<wgpu_rnn::config::RnnConfig> {
    use wgpu_rnn::config::{Mode, RnnConfig};
    vec![
        RnnConfig::new(Mode::Lstm, SPLIT_I, 96).layers(2).bidirectional(true),
        RnnConfig::new(Mode::Lstm, SPLIT_I, 96).proj(40),
        RnnConfig::new(Mode::Gru, SPLIT_I, 96).layers(2).bidirectional(true),
        RnnConfig::new(Mode::RnnTanh, SPLIT_I, 160).bidirectional(true),
        RnnConfig::new(Mode::RnnRelu, SPLIT_I, 160),
        // The engine's other mechanisms: a product of tape values (stage 1 of
        // GRU_RESET_BEFORE), two states of different widths (SCRN), pointwise parameters
        // (the peepholes).
        RnnConfig::new(Mode::GruResetBefore, SPLIT_I, 96).bidirectional(true),
        RnnConfig::new(Mode::Scrn, SPLIT_I, 96).layers(2),
        RnnConfig::new(Mode::LstmPeephole, SPLIT_I, 96),
    ]
}

/// Training forward and backward on padded, time-major `x [t, b, in]` and `go [t, b, out]`;
/// returns the padded output, the padded input gradient, every parameter gradient (flattened),
/// then for each state of the cell its final value and its initial value's gradient.
fn run_split_case<T: wgpu_rnn::cpu::Float>(w: &wgpu_rnn::weights::Weights<T>, x: &[T], go: &[T], t: usize, lengths: &[usize]) -> Vec<Vec<T>> {
    use wgpu_rnn::cpu::{self, Pass};
    use wgpu_rnn::packing::PackedSequence;
    let (b, cfg) = (lengths.len(), &w.config);
    let xs = PackedSequence::from_padded(x, [t, b, cfg.input_size], false, lengths).unwrap();
    let gos = PackedSequence::from_padded(go, [t, b, cfg.output_size()], false, lengths).unwrap();
    let (out, tape) = cpu::forward(w, &xs, &[], Pass::Training).unwrap();
    let grads = cpu::backward(w, &tape.unwrap(), &gos.data, &[]).unwrap();
    let mut params = Vec::new();
    grads.params.for_each(|_, _, _, v| params.extend(v));
    let mut v = vec![
        out.output.to_padded(false, T::zero(), Some(t)).unwrap().0.data,
        grads.input.to_padded(false, T::zero(), Some(t)).unwrap().0.data,
        params,
    ];
    assert_eq!((out.states.len(), grads.states.len()), (cfg.states().len(), cfg.states().len()));
    for (s, g) in out.states.into_iter().zip(&grads.states) {
        v.push(s.data);
        v.push(g.data.clone());
    }
    v
}

/// Runs `f` with the CPU time loops on exactly `n` threads, through the calling thread's own
/// override (`split::with_threads`), so tests running in parallel cannot change the count
/// under it; asserts that the loops did use `n` parts (the split sizes guarantee `n <= 3`
/// parts of at least `MIN_ROWS_PER_THREAD` rows each).
fn run_with_threads<R>(n: usize, f: impl FnOnce() -> R) -> R {
    use wgpu_rnn::cpu::split;
    assert!(n <= SPLIT_B / split::MIN_ROWS_PER_THREAD, "{n} threads cannot each get a row block of {SPLIT_B} rows");
    let _ = split::take_max_parts();
    let r = split::with_threads(n, f);
    assert_eq!(split::take_max_parts(), n, "the time loops did not run on {n} threads");
    r
}

/// The thread count given to `split::with_threads` is honoured even while another thread keeps
/// changing the process-wide count (as another test calling `split::set_threads` would): the
/// comparisons of 1, 2 and 3 threads above compare what they claim.
#[test]
fn cpu_thread_count_is_honoured_while_the_global_count_changes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use wgpu_rnn::cpu::split;
    use wgpu_rnn::weights::Weights;

    let lengths = split_lengths();
    let cfg = &split_configs()[3];
    let w = Weights::<f32>::init_uniform(cfg, 7).unwrap();
    let mut g = rng(13);
    let x: Vec<f32> = uniform(&mut g, SPLIT_T * SPLIT_B * SPLIT_I, 1.0).into_iter().map(|v| v as f32).collect();
    let go: Vec<f32> = uniform(&mut g, SPLIT_T * SPLIT_B * cfg.output_size(), 1.0).into_iter().map(|v| v as f32).collect();
    let stop = AtomicBool::new(false);
    /// Stops the flipping thread when the runs end, a failing one included: the scope joins
    /// that thread before it passes the panic on, so without this a failure hung the test.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        // Flips the global count between "default" and 1 thread while the runs below happen.
        s.spawn(|| {
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                split::set_threads(k % 2);
                k += 1;
                std::thread::yield_now();
            }
            split::set_threads(0);
        });
        for _round in 0..3 {
            for n in [1, 2, 3] {
                run_with_threads(n, || run_split_case(&w, &x, &go, SPLIT_T, &lengths));
            }
        }
    });
}

/// The time loops split the batch across threads (`cpu::split`): each row is computed by the
/// same operations whatever the thread count, so 1, 2 and 3 threads must agree bit for bit,
/// forward and backward, for every mode, with variable lengths, two bidirectional layers and a
/// projection; and the f32 results stay within rounding of the f64 ones.
#[test]
fn cpu_thread_count_does_not_change_results() {
    use wgpu_rnn::cpu::split;
    use wgpu_rnn::weights::Weights;

    let lengths = split_lengths();
    let n: usize = lengths.iter().sum();
    let mut g = rng(11);
    for cfg in split_configs() {
        let macs = n * cfg.mode.layout(cfg.sizes(0)).product_macs();
        assert!(macs >= split::MIN_PARALLEL_MACS && n >= 256, "{cfg:?} too small to split");
        let w64 = Weights::<f64>::init_uniform(&cfg, 5).unwrap();
        let w32 = w64.cast::<f32>();
        let x64 = uniform(&mut g, SPLIT_T * SPLIT_B * SPLIT_I, 1.0);
        let go64 = uniform(&mut g, SPLIT_T * SPLIT_B * cfg.output_size(), 1.0);
        let x32: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
        let go32: Vec<f32> = go64.iter().map(|&v| v as f32).collect();
        let one = run_with_threads(1, || run_split_case(&w32, &x32, &go32, SPLIT_T, &lengths));
        assert!(one == run_with_threads(2, || run_split_case(&w32, &x32, &go32, SPLIT_T, &lengths)), "{cfg:?}: 2 threads differ from 1");
        assert!(one == run_with_threads(3, || run_split_case(&w32, &x32, &go32, SPLIT_T, &lengths)), "{cfg:?}: 3 threads differ from 1");

        let want = run_split_case(&w64, &x64, &go64, SPLIT_T, &lengths);
        for (k, (got, want)) in one.iter().zip(&want).enumerate() {
            let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
            crate::common::assert_close(&format!("{cfg:?} part {k} f32 vs f64"), &got, want, F32_VS_F64_ATOL, 0.0);
        }
    }
}

/// The batched path (split across threads, input side step by step) against each sequence run
/// alone (batch 1: one thread, input side by one GEMM up front), in f64: outputs, final states
/// and input gradients row by row, parameter gradients summed over the sequences.
#[test]
fn cpu_batch_matches_its_sequences_one_at_a_time() {
    use wgpu_rnn::weights::Weights;

    let lengths = split_lengths();
    let mut g = rng(12);
    for cfg in split_configs() {
        let (ld, out_w) = (cfg.num_layers * cfg.directions(), cfg.output_size());
        let w = Weights::<f64>::init_uniform(&cfg, 6).unwrap();
        let x = uniform(&mut g, SPLIT_T * SPLIT_B * SPLIT_I, 1.0);
        let go = uniform(&mut g, SPLIT_T * SPLIT_B * out_w, 1.0);
        let batched = run_with_threads(3, || run_split_case(&w, &x, &go, SPLIT_T, &lengths));
        let mut params = vec![0f64; batched[2].len()];
        for (s, &len) in lengths.iter().enumerate() {
            let pick = |m: &[f64], f: usize| -> Vec<f64> { (0..len).flat_map(|tt| m[(tt * SPLIT_B + s) * f..(tt * SPLIT_B + s + 1) * f].to_vec()).collect() };
            let one = run_split_case(&w, &pick(&x, SPLIT_I), &pick(&go, out_w), len, &[len]);
            let what = |part: &str| format!("{cfg:?} sequence {s} {part}");
            crate::common::assert_close(&what("output"), &one[0], &pick(&batched[0], out_w), BATCH_VS_SINGLE_ATOL, 0.0);
            crate::common::assert_close(&what("input gradient"), &one[1], &pick(&batched[1], SPLIT_I), BATCH_VS_SINGLE_ATOL, 0.0);
            // States [L*D, B, F]: this sequence's column, for every state of the cell.
            let state = |m: &[f64], f: usize| -> Vec<f64> { (0..ld).flat_map(|l| m[(l * SPLIT_B + s) * f..(l * SPLIT_B + s + 1) * f].to_vec()).collect() };
            for (i, st) in cfg.states().iter().enumerate() {
                crate::common::assert_close(&what(&format!("{}_n", st.name)), &one[3 + 2 * i], &state(&batched[3 + 2 * i], st.width), BATCH_VS_SINGLE_ATOL, 0.0);
                crate::common::assert_close(&what(&format!("d{}0", st.name)), &one[4 + 2 * i], &state(&batched[4 + 2 * i], st.width), BATCH_VS_SINGLE_ATOL, 0.0);
            }
            for (acc, v) in params.iter_mut().zip(&one[2]) {
                *acc += v;
            }
        }
        crate::common::assert_close(&format!("{cfg:?} parameter gradients"), &params, &batched[2], BATCH_VS_SINGLE_ATOL, 0.0);
    }
}

/// One step from zero states skips packing the state's matrices (`pack_products`): the output
/// and final states must be bitwise those of the same step from explicit zero states (packed,
/// multiplied), for every registered cell, one and two layers (layer 2 starts from zeros too).
/// The backward after it (which packs them) and a second backward after the first one's
/// gradients were dropped (their buffers reused from the pool) must agree bitwise too.
#[test]
fn one_step_from_zero_states_matches_explicit_zeros() {
    use wgpu_rnn::cpu::{self, Pass};
    use wgpu_rnn::{Mode, PackedSequence, RnnConfig, Weights};
    let mut g = rng(71);
    for &mode in Mode::REGISTRY {
        for layers in [1, 2] {
            let cfg = {
                let c = RnnConfig::new(mode, 6, 8).layers(layers);
                if c.validate().is_ok() { c } else { RnnConfig::new(mode, 8, 8).layers(layers) }
            };
            let w = Weights::<f32>::init_uniform(&cfg, 5).unwrap();
            let b = 3;
            let x: Vec<f32> = uniform(&mut g, b * cfg.input_size, 1.0).into_iter().map(|v| v as f32).collect();
            let x = PackedSequence::from_padded(&x, [1, b, cfg.input_size], false, &[1, 1, 1]).unwrap();
            let zeros: Vec<Vec<f32>> = cfg.states().iter().map(|s| vec![0f32; layers * b * s.width]).collect();
            let explicit: Vec<Option<&[f32]>> = zeros.iter().map(|v| Some(v.as_slice())).collect();
            let (a, ta) = cpu::forward(&w, &x, &[], Pass::Training).unwrap();
            let (e, te) = cpu::forward(&w, &x, &explicit, Pass::Training).unwrap();
            assert_eq!(a.output.data, e.output.data, "{mode:?} L{layers}: output");
            for (sa, se) in a.states.iter().zip(&e.states) {
                assert_eq!(sa.data, se.data, "{mode:?} L{layers}: final state");
            }
            let (inf, _) = cpu::forward(&w, &x, &[], Pass::Inference).unwrap();
            assert_eq!(inf.output.data, a.output.data, "{mode:?} L{layers}: inference");
            let go: Vec<f32> = uniform(&mut g, a.output.data.len(), 1.0).into_iter().map(|v| v as f32).collect();
            let (ta, te) = (ta.unwrap(), te.unwrap());
            let ga = cpu::backward(&w, &ta, &go, &[]).unwrap();
            let (gi, gs, gp) = cpu::backward(&w, &te, &go, &[]).unwrap().into_parts();
            assert_eq!(ga.input.data, gi.data, "{mode:?} L{layers}: input gradient");
            assert_eq!(ga.params.to_flat(), gp.to_flat(), "{mode:?} L{layers}: parameter gradients");
            assert_eq!(ga.states.len(), gs.len());
            let flat = ga.params.to_flat();
            drop(ga);
            let again = cpu::backward(&w, &ta, &go, &[]).unwrap();
            assert_eq!(again.params.to_flat(), flat, "{mode:?} L{layers}: gradients into reused buffers");
        }
    }
}

/// Gradients of a backward whose forward had no initial states (the state products' weight
/// gradients then leave out the first processed step's rows, which started from zeros) against
/// those of the same forward with explicit zero states (every row in the GEMMs): the same to
/// the rounding of a regrouped sum, in f64, for every registered cell, two layers, both
/// directions (the reverse direction's first step is the last), sequences of several lengths.
const ZERO_START_RTOL: f64 = 1e-12;

#[test]
fn zero_start_weight_gradients_match_explicit_zero_states() {
    use wgpu_rnn::cpu::{self, Pass};
    use wgpu_rnn::{Mode, PackedSequence, RnnConfig, Weights};
    let mut g = rng(79);
    for &mode in Mode::REGISTRY {
        // Both directions where the cell allows it (SRU and MUT1 need the input as wide as H).
        let (cfg, w) = [(6, true), (8, true), (8, false)]
            .into_iter()
            .map(|(i, bidir)| RnnConfig::new(mode, i, 8).layers(2).bidirectional(bidir))
            .find_map(|c| Weights::<f64>::init_uniform(&c, 5).ok().map(|w| (c, w)))
            .expect("a valid config");
        let (t, b) = (5, 3);
        let x = uniform(&mut g, t * b * cfg.input_size, 1.0);
        let x = PackedSequence::from_padded(&x, [t, b, cfg.input_size], false, &[5, 3, 1]).unwrap();
        let zeros: Vec<Vec<f64>> = cfg.states().iter().map(|s| vec![0.0; 2 * cfg.directions() * b * s.width]).collect();
        let explicit: Vec<Option<&[f64]>> = zeros.iter().map(|v| Some(v.as_slice())).collect();
        let (a, ta) = cpu::forward(&w, &x, &[], Pass::Training).unwrap();
        let (_, te) = cpu::forward(&w, &x, &explicit, Pass::Training).unwrap();
        let go = uniform(&mut g, a.output.data.len(), 1.0);
        let ga = cpu::backward(&w, &ta.unwrap(), &go, &[]).unwrap();
        let ge = cpu::backward(&w, &te.unwrap(), &go, &[]).unwrap();
        let (pa, pe) = (ga.params.to_flat(), ge.params.to_flat());
        let scale = pe.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.0 && scale.is_finite(), "{mode:?}: gradient scale {scale}");
        for (k, (u, v)) in pa.iter().zip(&pe).enumerate() {
            assert!((u - v).abs() <= ZERO_START_RTOL * scale, "{mode:?}: parameter gradient {k}: {u} without states, {v} with explicit zeros");
        }
        assert_eq!(ga.input.data, ge.input.data, "{mode:?}: input gradient");
    }
}

/// The column split (`split::run_steps`: each step's products split by panels across threads,
/// a batch too small to split by rows), forward and backward, gives bitwise the results of one
/// thread, for every registered cell with per-step products, in training (with its tape, then
/// the backward) and inference, with zoneout, bidirectional (the reverse direction's sequences
/// start at their own last steps), and for LSTM with a projection (a second stage whose
/// product reads the tape) and two layers.
#[test]
fn column_split_matches_one_thread_bitwise() {
    use wgpu_rnn::config::Prob;
    use wgpu_rnn::cpu::{self, split, Pass};
    use wgpu_rnn::{Mode, PackedSequence, RnnConfig, Weights};
    let mut g = rng(73);
    let (t, b, h) = (6, 5, 256);
    let mut configs: Vec<RnnConfig> = Mode::REGISTRY
        .iter()
        .map(|&m| {
            let c = RnnConfig::new(m, 24, h);
            if c.validate().is_ok() { c } else { RnnConfig::new(m, h, h) }
        })
        .collect();
    configs.push(RnnConfig::new(Mode::Lstm, 24, h).proj(96).layers(2));
    configs.push(RnnConfig::new(Mode::Gru, 24, h).zoneout(Prob::new(0.25).unwrap()));
    configs.push(RnnConfig::new(Mode::Lstm, 24, h).bidirectional(true));
    // And a batch of 8 over 40 steps, whose input side is made step by step (320 rows): it
    // keeps the row split (one part), so no thread count changes its arithmetic.
    configs.push(RnnConfig::new(Mode::Lstm, 24, h));
    let n_cfg = configs.len();
    let mut split_runs = 0;
    for (ci, cfg) in configs.into_iter().enumerate() {
        let w = Weights::<f32>::init_uniform(&cfg, 9).unwrap();
        let (t, b, lengths) = if ci + 1 == n_cfg { (40, 8, vec![40; 8]) } else { (t, b, vec![6, 6, 4, 3, 1]) };
        let x: Vec<f32> = uniform(&mut g, t * b * cfg.input_size, 1.0).into_iter().map(|v| v as f32).collect();
        let x = PackedSequence::from_padded(&x, [t, b, cfg.input_size], false, &lengths).unwrap();
        let run = |threads: usize| {
            let _ = split::take_max_parts();
            let r = split::with_threads(threads, || {
                let (inf, _) = cpu::forward(&w, &x, &[], Pass::Inference).unwrap();
                let (out, tape) = cpu::forward(&w, &x, &[], Pass::Training).unwrap();
                let go = vec![0.5f32; out.output.data.len()];
                let gr = cpu::backward(&w, &tape.unwrap(), &go, &[]).unwrap();
                let states: Vec<Vec<f32>> = out.states.iter().map(|s| s.data.clone()).collect();
                (inf.output.data, out.output.data, states, gr.input.data.clone(), gr.params.to_flat())
            });
            (r, split::take_max_parts())
        };
        let (one, _) = run(1);
        for threads in [2, 3] {
            let (many, parts) = run(threads);
            if parts == threads {
                split_runs += 1;
            }
            assert!(one == many, "{:?}: {threads} threads differ from one", cfg.mode);
        }
    }
    // Every cell whose step has a product of 256 x 256 or more takes the column split at B = 5.
    assert!(split_runs >= 2 * 10, "the column split ran {split_runs} times");
}

/// The AVX-512 and AVX2 paths (the per-step kernels, our GEMM and the time loops' pointwise
/// code, `smallgemm::isa`) give the same bits: the test binary runs this test again in two
/// child processes, one with `WGPU_RNN_CPU_KERNEL=avx2` (the choice is made once a process),
/// and compares a hash of every result of LSTM, GRU and SRU training runs and of a blocked
/// GEMM with a bias. Only a machine
/// with both instruction sets can check it; elsewhere it says so and checks nothing.
#[test]
fn avx512_and_avx2_paths_give_the_same_bits() {
    use wgpu_rnn::cpu::{self, Pass};
    use wgpu_rnn::{Mode, PackedSequence, RnnConfig, Weights};
    const CHILD: &str = "WGPU_RNN_TEST_ISA_CHILD";
    const NAME: &str = "cpu_kernels::avx512_and_avx2_paths_give_the_same_bits";
    if std::env::var_os(CHILD).is_some() {
        // FNV-1a over every result's bits.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |v: &[f32]| {
            for x in v {
                h = (h ^ u64::from(x.to_bits())).wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for (mode, i) in [(Mode::Lstm, 40), (Mode::Gru, 40), (Mode::Sru, 48)] {
            let mut cfg = RnnConfig::new(mode, i, 48).layers(2).bidirectional(true);
            if cfg.validate().is_err() {
                cfg = RnnConfig::new(mode, i, 48).layers(2);
            }
            let w = Weights::<f32>::init_uniform(&cfg, 4).unwrap();
            let (t, b) = (9, 20);
            let lengths: Vec<usize> = (0..b).map(|k| 1 + (k * 5) % t).collect();
            let xs: Vec<f32> = uniform(&mut rng(5), t * b * i, 1.0).into_iter().map(|v| v as f32).collect();
            let x = PackedSequence::from_padded(&xs, [t, b, i], false, &lengths).unwrap();
            let (out, tape) = cpu::forward(&w, &x, &[], Pass::Training).unwrap();
            let go: Vec<f32> = uniform(&mut rng(6), out.output.data.len(), 1.0).into_iter().map(|v| v as f32).collect();
            let g = cpu::backward(&w, &tape.unwrap(), &go, &[]).unwrap();
            eat(&out.output.data);
            out.states.iter().for_each(|s| eat(&s.data));
            eat(&g.input.data);
            g.states.iter().for_each(|s| eat(&s.data));
            eat(&g.params.to_flat());
        }
        // Our blocked GEMM with a bias (the kernels add it before their last store).
        {
            use wgpu_rnn::cpu::gemm::{try_gemm_bias, Mat, Op};
            let (m, k, n) = (300, 129, 70);
            let v = |len: usize, seed: u64| uniform(&mut rng(seed), len, 1.0).into_iter().map(|v| v as f32).collect::<Vec<f32>>();
            let (a, b, bias) = (v(m * k, 7), v(n * k, 8), v(n, 9));
            let mut c = vec![f32::NAN; m * n];
            try_gemm_bias(Mat::new(&a, m, k), Op::N, Mat::new(&b, n, k), Op::T, &mut c, n, Some(&bias)).unwrap();
            eat(&c);
        }
        println!("result bits hash {h:016x}");
        return;
    }
    #[cfg(target_arch = "x86_64")]
    let both = std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let both = false;
    if !both {
        eprintln!("{NAME}: this machine lacks AVX-512 or AVX2: nothing to compare");
        return;
    }
    let run = |kernel: Option<&str>| -> String {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", NAME, "--nocapture", "--test-threads=1"]).env(CHILD, "1");
        match kernel {
            Some(k) => cmd.env("WGPU_RNN_CPU_KERNEL", k),
            None => cmd.env_remove("WGPU_RNN_CPU_KERNEL"),
        };
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "child ({kernel:?}) failed: {text}{}", String::from_utf8_lossy(&out.stderr));
        // The harness prints the test's name first, on the same line.
        text.split("result bits hash ").nth(1).and_then(|r| r.get(..16)).map(str::to_owned).unwrap_or_else(|| panic!("child ({kernel:?}) printed no hash: {text}"))
    };
    assert_eq!(run(None), run(Some("avx2")), "AVX-512 and AVX2 results differ");
}
