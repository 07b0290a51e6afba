//! Single-kernel checks with adversarial shape sweeps against plain f64 loops, generic over
//! backend and dtype. Instantiated per backend by `kernel_suite!`.

use super::*;
use laplace_update::device::ops;
use laplace_update::*;

/// Sizes that straddle tile and vector widths.
pub const SIZES: [usize; 9] = [0, 1, 15, 16, 17, 31, 32, 33, 63];

fn up<D: Device, T: Scalar>(dev: &D, m: &Dense) -> Matrix<D, T> {
    dev.upload(&Problem::cast::<T>(&m.a), m.rows, m.cols).unwrap()
}

fn down<D: Device, T: Scalar>(dev: &D, m: &Matrix<D, T>) -> Vec<T> {
    dev.download(m).unwrap()
}

fn random(rng: &mut Rng, rows: usize, cols: usize) -> Dense {
    Dense::from(rows, cols, rng.normals(rows * cols, 1.0))
}

/// A random SPD matrix `A Aᵀ / n + I`.
fn spd(rng: &mut Rng, n: usize) -> Dense {
    let a = random(rng, n, n);
    a.mul(&a.t()).scale(1.0 / n.max(1) as f64).add(&Dense::identity(n), 1.0)
}

fn probs(rng: &mut Rng, n: usize, k: usize) -> Dense {
    let mut p = Dense::zeros(n, k);
    for i in 0..n {
        let row = softmax(&rng.normals(k, 1.5));
        p.a[i * k..(i + 1) * k].copy_from_slice(&row);
    }
    p
}

pub fn check_gemm<D: Device, T: Scalar>(dev: &D) {
    let mut rng = Rng::new(1);
    for &m in &SIZES {
        for &n in &[0usize, 1, 16, 17, 33] {
            for &k in &[0usize, 1, 15, 32, 63] {
                for (ta, tb) in [(Op::N, Op::N), (Op::T, Op::N), (Op::N, Op::T), (Op::T, Op::T)] {
                    let a = random(&mut rng, m, k);
                    let b = random(&mut rng, k, n);
                    let c0 = random(&mut rng, m, n);
                    let stored_a = if ta == Op::N { a.clone() } else { a.t() };
                    let stored_b = if tb == Op::N { b.clone() } else { b.t() };
                    let (alpha, beta) = (0.75, -0.5);
                    let want = c0.scale(beta).add(&a.mul(&b), alpha);
                    let mut c = up::<D, T>(dev, &c0);
                    dev.gemm(
                        &mut c,
                        T::from_f64(beta),
                        &up(dev, &stored_a),
                        ta,
                        &up(dev, &stored_b),
                        tb,
                        T::from_f64(alpha),
                    )
                    .unwrap();
                    let e = rel_err(&down(dev, &c), &want.a);
                    assert!(e < tol::<T>(k, 4.0), "gemm {m}x{k}x{n} {ta:?}{tb:?}: err {e}");
                }
            }
        }
    }
    // beta = 0 must not read C (NaN there must not leak).
    let mut c = dev.upload(&[T::nan(); 4], 2, 2).unwrap();
    let eye = up::<D, T>(dev, &Dense::identity(2));
    dev.gemm(&mut c, T::zero(), &eye, Op::N, &eye, Op::N, T::one()).unwrap();
    assert_eq!(down(dev, &c), Problem::cast::<T>(&[1.0, 0.0, 0.0, 1.0]));
    let mut bad = dev.zeros::<T>(3, 3).unwrap();
    assert!(matches!(
        dev.gemm(&mut bad, T::zero(), &eye, Op::N, &eye, Op::N, T::one()),
        Err(Error::ShapeMismatch { .. })
    ));
}

pub fn check_weighted_syrk<D: Device, T: Scalar>(dev: &D) {
    let mut rng = Rng::new(2);
    for (n, d) in SIZES
        .iter()
        .chain(&[64, 65, 200])
        .flat_map(|&n| [1usize, 16, 17, 33].map(|d| (n, d)))
        // Tall contractions (n ≥ 8·d·threads) take the CPU's split-over-rows path.
        .chain([(100, 600), (1100, 520), (3000, 60), (4001, 130)])
    {
        {
            let a = random(&mut rng, n, d);
            let w: Vec<f64> = (0..n).map(|_| rng.uniform()).collect();
            let c0 = spd(&mut rng, d);
            let mut want = c0.scale(0.5);
            for i in 0..n {
                for x in 0..d {
                    for y in 0..d {
                        want.a[x * d + y] += 2.0 * w[i] * a.at(i, x) * a.at(i, y);
                    }
                }
            }
            let mut c = up::<D, T>(dev, &c0);
            let wm = up::<D, T>(dev, &Dense::from(n, 1, w.clone()));
            dev.weighted_syrk(&mut c, T::from_f64(0.5), &up(dev, &a), Some(&wm), T::from_f64(2.0))
                .unwrap();
            let e = rel_err(&down(dev, &c), &want.a);
            assert!(e < tol::<T>(n, 8.0), "weighted_syrk n={n} d={d}: err {e}");
        }
    }
    // The Gram of host rows, `C + [Φ 1]ᵀ[Φ 1]` (or `C + ΦᵀΦ`), in chunks that do not divide n.
    for (n, d) in [(1usize, 1usize), (17, 16), (33, 33), (200, 65), (4001, 130)] {
        for augment in [false, true] {
            let phi = random(&mut rng, n, d);
            let da = d + usize::from(augment);
            let c0 = spd(&mut rng, da);
            let mut want = c0.clone();
            let x = |i: usize, j: usize| if j == d { 1.0 } else { phi.at(i, j) };
            for i in 0..n {
                for a in 0..da {
                    for b in 0..da {
                        want.a[a * da + b] += x(i, a) * x(i, b);
                    }
                }
            }
            let host = Problem::cast::<T>(&phi.a);
            for chunk in [n.div_ceil(3), n] {
                let mut c = up::<D, T>(dev, &c0);
                dev.add_host_gram(&mut c, HostMatrix::new(&host, n, d).unwrap(), augment, chunk)
                    .unwrap();
                let e = rel_err(&down(dev, &c), &want.a);
                assert!(
                    e < tol::<T>(n, 8.0),
                    "add_host_gram n={n} d={d} augment={augment} chunk={chunk}: err {e}"
                );
            }
        }
    }
    let mut wrong = dev.zeros::<T>(3, 3).unwrap();
    let two = [T::one(); 4];
    assert!(matches!(
        dev.add_host_gram(&mut wrong, HostMatrix::new(&two, 2, 2).unwrap(), false, 8),
        Err(Error::ShapeMismatch { .. })
    ));
}

pub fn check_ggn_accumulate<D: Device, T: Scalar>(dev: &D) {
    let mut rng = Rng::new(3);
    for &(n, d, k) in &[
        (0usize, 3usize, 2usize),
        (1, 1, 2),
        (17, 5, 3),
        (33, 16, 4),
        (64, 7, 10),
        (65, 3, 3),
        (150, 9, 4),
        (100, 130, 5),
        // D ≥ 32 sums class pair by class pair on the CPU: few pairs (one at a time over the
        // pool) and many (spread over the threads), with passes of rows past the pair path's.
        // The provided path's factor rows (n·K × K·D) stay within the split-grid devices'
        // 4,096 blocks of 256 threads per launch.
        (40, 64, 2),
        (1_030, 33, 4),
    ] {
        let phi = random(&mut rng, n, d);
        let p = probs(&mut rng, n, k);
        let base = spd(&mut rng, k * d);
        let mut want = base.clone();
        for i in 0..n {
            want = want.add(&ggn(phi.row(i), p.row(i)), 1.5);
        }
        // The device's implementation, and the composition over the primitives it may override.
        for provided in [false, true] {
            let mut prec = up::<D, T>(dev, &base);
            let (x, pr, alpha) = (up(dev, &phi), up(dev, &p), T::from_f64(1.5));
            if provided {
                <ops::Composed as ops::Ggn<D>>::ggn_accumulate(dev, &mut prec, &x, &pr, None, alpha)
            } else {
                ops::ggn_accumulate(dev, &mut prec, &x, &pr, None, alpha)
            }
            .unwrap();
            let e = rel_err(&down(dev, &prec), &want.a);
            assert!(
                e < tol::<T>(n.max(k * d), 8.0),
                "ggn n={n} d={d} k={k} provided={provided}: err {e}"
            );
        }
    }
}

/// `A ⊗ B` for dense matrices.
fn kron(a: &Dense, b: &Dense) -> Dense {
    let mut m = Dense::zeros(a.rows * b.rows, a.cols * b.cols);
    for i in 0..a.rows {
        for j in 0..a.cols {
            for x in 0..b.rows {
                for y in 0..b.cols {
                    m.set(i * b.rows + x, j * b.cols + y, a.at(i, j) * b.at(x, y));
                }
            }
        }
    }
    m
}

pub fn check_ggn_basis_and_congruence<D: Device, T: Scalar>(dev: &D) {
    let mut rng = Rng::new(31);
    for &(n, d, k, kr) in &[
        (1usize, 1usize, 2usize, 1usize),
        (17, 5, 3, 2),
        (33, 16, 4, 3),
        (20, 7, 10, 9),
        (9, 3, 3, 3),
        (130, 6, 4, 3),
        (70, 40, 3, 2),
        (50, 33, 10, 9),
    ] {
        let phi = random(&mut rng, n, d);
        let p = probs(&mut rng, n, k);
        let r = random(&mut rng, k, kr);
        let base = spd(&mut rng, kr * d);
        let mut want = base.clone();
        for i in 0..n {
            let lam = r.t().mul(&output_hessian(p.row(i))).mul(&r);
            let x = Dense::from(d, 1, phi.row(i).to_vec());
            want = want.add(&kron(&lam, &x.mul(&x.t())), 0.5);
        }
        let rd = up::<D, T>(dev, &r);
        for provided in [false, true] {
            let mut prec = up::<D, T>(dev, &base);
            let (x, pr, alpha) = (up(dev, &phi), up(dev, &p), T::from_f64(0.5));
            if provided {
                <ops::Composed as ops::Ggn<D>>::ggn_accumulate(dev, &mut prec, &x, &pr, Some(&rd), alpha)
            } else {
                ops::ggn_accumulate(dev, &mut prec, &x, &pr, Some(&rd), alpha)
            }
            .unwrap();
            let e = rel_err(&down(dev, &prec), &want.a);
            assert!(
                e < tol::<T>(n.max(kr * d), 8.0),
                "ggn with basis n={n} d={d} k={k} k'={kr} provided={provided}: err {e}"
            );
        }

        let x = spd(&mut rng, kr * d);
        let c = 0.37;
        let eye_d = Dense::identity(d);
        let want = kron(&r, &eye_d)
            .mul(&x)
            .mul(&kron(&r.t(), &eye_d))
            .add(&kron(&Dense::identity(k).add(&r.mul(&r.t()), -1.0), &eye_d), c);
        let y = ops::kron_congruence(dev, &up::<D, T>(dev, &x), &rd, T::from_f64(c)).unwrap();
        assert_eq!(y.shape(), (k * d, k * d));
        let e = rel_err(&down(dev, &y), &want.a);
        assert!(
            e < tol::<T>(kr * d, 8.0),
            "kron_congruence d={d} k={k} k'={kr}: err {e}"
        );
    }
}

/// The explicit Woodbury factor B (Full): column (j, c) is `S_j[:, c] ⊗ φ_j`.
fn explicit_b(phi: &Dense, p: &Dense) -> Dense {
    let (m, d, k) = (phi.rows, phi.cols, p.cols);
    let mut b = Dense::zeros(k * d, m * k);
    for j in 0..m {
        let pj = p.row(j);
        for a in 0..k {
            for c in 0..k {
                let s = if a == c { pj[a].sqrt() } else { 0.0 } - pj[a] * pj[c].sqrt();
                for x in 0..d {
                    b.set(a * d + x, j * k + c, s * phi.at(j, x));
                }
            }
        }
    }
    b
}

pub fn check_kron_products<D: Device, T: Scalar>(dev: &D) {
    let mut rng = Rng::new(4);
    for &(m, d, k) in &[(1usize, 1usize, 2usize), (3, 5, 3), (7, 16, 4), (2, 17, 10)] {
        let phi = random(&mut rng, m, d);
        let p = probs(&mut rng, m, k);
        let sigma = spd(&mut rng, k * d);
        let b = explicit_b(&phi, &p);
        // The factor really is a square root of the GGN sum.
        let mut ggn_sum = Dense::zeros(k * d, k * d);
        (0..m).for_each(|j| ggn_sum = ggn_sum.add(&ggn(phi.row(j), p.row(j)), 1.0));
        assert!(b.mul(&b.t()).add(&ggn_sum, -1.0).max_abs() < 1e-12);
        let u_want = sigma.mul(&b);
        let g_want = b.t().mul(&u_want);
        let pd = up::<D, T>(dev, &p);
        for provided in [false, true] {
            let (s, x) = (up(dev, &sigma), up(dev, &phi));
            let factor = LowRankFactor::Kronecker { probs: &pd };
            let (u, g) = if provided {
                <ops::Composed as ops::Kron<D>>::kron_products(dev, &s, &x, factor)
            } else {
                ops::kron_products(dev, &s, &x, factor)
            }
            .unwrap();
            assert_eq!((u.shape(), g.shape()), ((k * d, m * k), (m * k, m * k)));
            let e = rel_err(&down(dev, &u), &u_want.a);
            assert!(
                e < tol::<T>(k * d, 8.0),
                "kron U m={m} d={d} k={k} provided={provided}: err {e}"
            );
            let e = rel_err(&down(dev, &g), &g_want.a);
            assert!(
                e < tol::<T>(k * d, 8.0),
                "kron G m={m} d={d} k={k} provided={provided}: err {e}"
            );
        }
    }
    for &(m, d) in &[(1usize, 1usize), (5, 16), (17, 33)] {
        let phi = random(&mut rng, m, d);
        let w: Vec<f64> = (0..m).map(|_| rng.uniform()).collect();
        let sigma = spd(&mut rng, d);
        let mut b = phi.t();
        for x in 0..d {
            for j in 0..m {
                b.a[x * m + j] *= w[j].sqrt();
            }
        }
        let wd = up::<D, T>(dev, &Dense::from(m, 1, w));
        for provided in [false, true] {
            let (s, x) = (up(dev, &sigma), up(dev, &phi));
            let factor = LowRankFactor::Shared { weights: Some(&wd) };
            let (u, g) = if provided {
                <ops::Composed as ops::Kron<D>>::kron_products(dev, &s, &x, factor)
            } else {
                ops::kron_products(dev, &s, &x, factor)
            }
            .unwrap();
            let e = rel_err(&down(dev, &u), &sigma.mul(&b).a);
            assert!(
                e < tol::<T>(d, 8.0),
                "shared U m={m} d={d} provided={provided}: err {e}"
            );
            let e = rel_err(&down(dev, &g), &b.t().mul(&sigma).mul(&b).a);
            assert!(
                e < tol::<T>(d, 8.0),
                "shared G m={m} d={d} provided={provided}: err {e}"
            );
        }
    }
}

pub fn check_cholesky_family<D: Device, T: Scalar>(dev: &D) {
    let mut rng = Rng::new(5);
    for &n in &SIZES {
        let a = spd(&mut rng, n);
        let mut l = up::<D, T>(dev, &a);
        dev.cholesky(&mut l).unwrap();
        let lh = Dense::from(n, n, down(dev, &l).iter().map(|x| x.as_f64()).collect());
        for i in 0..n {
            for j in i + 1..n {
                assert_eq!(lh.at(i, j), 0.0, "cholesky n={n}: upper triangle not zeroed");
            }
        }
        let e = rel_err(&Problem::cast::<T>(&lh.mul(&lh.t()).a), &a.a);
        assert!(e < tol::<T>(n, 8.0), "cholesky n={n}: residual {e}");
        // Triangular solves against the same factor.
        let b = random(&mut rng, n, 5);
        for op in [Op::N, Op::T] {
            let mut x = up::<D, T>(dev, &b);
            dev.triangular_solve(&l, &mut x, op).unwrap();
            let xh = Dense::from(n, 5, down(dev, &x).iter().map(|v| v.as_f64()).collect());
            let lhs = if op == Op::N { lh.mul(&xh) } else { lh.t().mul(&xh) };
            let e = rel_err(&Problem::cast::<T>(&lhs.a), &b.a);
            assert!(e < tol::<T>(n, 50.0), "triangular_solve n={n} {op:?}: residual {e}");
        }
        for provided in [false, true] {
            let a_dev = up::<D, T>(dev, &a);
            let inv = if provided {
                <ops::Composed as ops::SpdInverse<D>>::spd_inverse(dev, &a_dev)
            } else {
                ops::spd_inverse(dev, &a_dev)
            }
            .unwrap();
            let e = rel_err(&down(dev, &inv), &a.inverse().a);
            assert!(e < tol::<T>(n, 50.0), "spd_inverse n={n} provided={provided}: err {e}");
        }
    }
    // Not positive definite: the failing pivot is reported.
    let mut bad = up::<D, T>(
        dev,
        &Dense::from(3, 3, vec![4.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]),
    );
    assert!(matches!(
        ops::spd_inverse(dev, &bad),
        Err(Error::NotPositiveDefinite { index: 1 })
    ));
    assert_eq!(dev.cholesky(&mut bad), Err(Error::NotPositiveDefinite { index: 1 }));
}

pub fn check_low_rank_update<D: Device, T: Scalar>(dev: &D) {
    let mut rng = Rng::new(6);
    for (n, r) in [1usize, 16, 17, 33, 63]
        .iter()
        .flat_map(|&n| [1usize, 3, 16, 64, 65, 90].map(|r| (n, r)))
        .chain([(600, 90), (530, 200)])
    {
        {
            let sigma = spd(&mut rng, n);
            let u = random(&mut rng, n, r).scale(0.3);
            let c = spd(&mut rng, r);
            let mut l = up::<D, T>(dev, &c);
            dev.cholesky(&mut l).unwrap();
            let corr = u.mul(&c.inverse()).mul(&u.t());
            for (sign, s) in [(Sign::Minus, -1.0), (Sign::Plus, 1.0)] {
                let mut sg = up::<D, T>(dev, &sigma);
                ops::low_rank_update(dev, &mut sg, &up(dev, &u), &l, sign).unwrap();
                let e = rel_err(&down(dev, &sg), &sigma.add(&corr, s).a);
                assert!(e < tol::<T>(n, 20.0), "low_rank_update n={n} r={r} {sign:?}: err {e}");
            }
        }
    }
}

pub fn check_predictive<D: Device, T: Scalar>(dev: &D) {
    let mut rng = Rng::new(7);
    for &(n, d, k) in &[(1usize, 1usize, 1usize), (17, 5, 3), (33, 16, 1), (15, 7, 10)] {
        let phi = random(&mut rng, n, d);
        let sigma = spd(&mut rng, k * d);
        let cov = dev
            .predictive_covariance(&up::<D, T>(dev, &sigma), &up(dev, &phi))
            .unwrap();
        assert_eq!(cov.shape(), (n, k * k));
        let got = down(dev, &cov);
        let mut want = Vec::new();
        for i in 0..n {
            let j = jacobian(phi.row(i), k);
            want.extend(j.mul(&sigma).mul(&j.t()).a);
        }
        let e = rel_err(&got, &want);
        assert!(
            e < tol::<T>(k * d, 8.0),
            "predictive_covariance n={n} d={d} k={k}: err {e}"
        );
    }
    // Links and softmax on rows with extreme logits.
    let mean = Dense::from(
        3,
        4,
        vec![1e4, -1e4, 0.0, 3.0, -2.0, 0.5, 0.25, 1.0, 0.0, 0.0, 0.0, 0.0],
    );
    let cov_iso = Dense::from(3, 1, vec![0.5, 2.0, 0.0]);
    let mut full = Dense::zeros(3, 16);
    for i in 0..3 {
        for a in 0..4 {
            full.set(i, a * 4 + a, 0.3 + i as f64);
        }
    }
    let lambda = std::f64::consts::PI / 8.0;
    for (cov, iso) in [(&cov_iso, true), (&full, false)] {
        let got = down(
            dev,
            &ops::probit_softmax(dev, &up(dev, &mean), &up(dev, cov), T::from_f64(lambda)).unwrap(),
        );
        for i in 0..3 {
            let scaled: Vec<f64> = (0..4)
                .map(|a| {
                    let var = if iso { cov.at(i, 0) } else { cov.at(i, a * 4 + a) };
                    mean.at(i, a) / (1.0 + lambda * var).sqrt()
                })
                .collect();
            let e = rel_err(&got[i * 4..(i + 1) * 4], &softmax(&scaled));
            assert!(
                e < tol::<T>(4, 8.0) && got.iter().all(|x| x.is_finite()),
                "probit row {i}: err {e}"
            );
        }
    }
    let mut logits = up::<D, T>(dev, &mean);
    ops::softmax_rows(dev, &mut logits).unwrap();
    let got = down(dev, &logits);
    for i in 0..3 {
        let e = rel_err(&got[i * 4..(i + 1) * 4], &softmax(mean.row(i)));
        assert!(e < tol::<T>(4, 8.0), "softmax row {i}: err {e}");
    }
    let p = probs(&mut Rng::new(8), 5, 3);
    let w = down(dev, &ops::categorical_weights(dev, &up::<D, T>(dev, &p)).unwrap());
    let want: Vec<f64> = (0..5).map(|i| shared_weight(p.row(i), true)).collect();
    assert!(rel_err(&w, &want) < tol::<T>(3, 4.0));
    // Isotropic (n × 1) and diagonal (n × K) covariances against the same draws through
    // L = diag(√Σ_f[a,a]) written out here, and against the dense (n × K²) layout.
    let (n, k, draws) = (3, 4, 64);
    let eps_host = random(&mut Rng::new(11), draws, k);
    let mut iso = Dense::zeros(n, 1);
    let mut diag = Dense::zeros(n, k);
    let (mut iso_dense, mut diag_dense) = (Dense::zeros(n, k * k), Dense::zeros(n, k * k));
    for i in 0..n {
        iso.set(i, 0, 0.2 + 0.5 * i as f64);
        for a in 0..k {
            diag.set(i, a, 0.1 + 0.3 * a as f64 + 0.2 * i as f64);
            iso_dense.set(i, a * k + a, iso.at(i, 0));
            diag_dense.set(i, a * k + a, diag.at(i, a));
        }
    }
    let eps = up::<D, T>(dev, &eps_host);
    for (compact, dense, name) in [(&iso, &iso_dense, "isotropic"), (&diag, &diag_dense, "diagonal")] {
        let got = down(
            dev,
            &ops::monte_carlo_softmax(dev, &up(dev, &mean), &up(dev, compact), &eps).unwrap(),
        );
        let via_dense = down(
            dev,
            &ops::monte_carlo_softmax(dev, &up(dev, &mean), &up(dev, dense), &eps).unwrap(),
        );
        for i in 0..n {
            let mut want = vec![0.0; k];
            for e in 0..draws {
                let z: Vec<f64> = (0..k)
                    .map(|a| mean.at(i, a) + dense.at(i, a * k + a).sqrt() * eps_host.at(e, a))
                    .collect();
                want.iter_mut()
                    .zip(softmax(&z))
                    .for_each(|(w, p)| *w += p / draws as f64);
            }
            let e = rel_err(&got[i * k..(i + 1) * k], &want);
            assert!(
                e < tol::<T>(k, 50.0),
                "monte carlo, {name} covariance, row {i}: err {e}"
            );
            let e = rel_err(&via_dense[i * k..(i + 1) * k], &want);
            assert!(e < tol::<T>(k, 50.0), "monte carlo, {name} as dense, row {i}: err {e}");
        }
    }
    // Zero covariance: Monte Carlo is the plain softmax whatever the draws.
    let eps = up::<D, T>(dev, &random(&mut Rng::new(9), 50, 4));
    let zero = up::<D, T>(dev, &Dense::zeros(3, 1));
    let mc = down(
        dev,
        &ops::monte_carlo_softmax(dev, &up(dev, &mean), &zero, &eps).unwrap(),
    );
    for i in 0..3 {
        let e = rel_err(&mc[i * 4..(i + 1) * 4], &softmax(mean.row(i)));
        assert!(
            e < tol::<T>(4, 8.0),
            "monte carlo with zero covariance row {i}: err {e}"
        );
    }
}

/// laplace-torch's `bridge_norm` written out step by step in f64.
fn bridge_reference(f: &[f64], sigma: &Dense) -> Vec<f64> {
    let k = f.len();
    let kf = k as f64;
    let s: Vec<f64> = (0..k).map(|a| (0..k).map(|b| sigma.at(a, b)).sum()).collect();
    let total: f64 = s.iter().sum();
    let f_sum: f64 = f.iter().sum();
    let mut mu: Vec<f64> = (0..k).map(|a| f[a] - s[a] * f_sum / total).collect();
    let mut var: Vec<f64> = (0..k).map(|a| sigma.at(a, a) - s[a] * s[a] / total).collect();
    let mean_var = var.iter().sum::<f64>() / kf / (kf / 2.0).sqrt();
    mu.iter_mut().for_each(|m| *m /= mean_var.sqrt());
    var.iter_mut().for_each(|v| *v /= mean_var);
    let sum_exp: f64 = mu.iter().map(|m| (-m).exp()).sum();
    let alpha: Vec<f64> = (0..k)
        .map(|a| (1.0 - 2.0 / kf + mu[a].exp() / (kf * kf) * sum_exp) / var[a])
        .collect();
    let total_alpha: f64 = alpha.iter().sum();
    alpha.iter().map(|a| a / total_alpha).collect()
}

pub fn check_bridge<D: Device, T: Scalar>(dev: &D) {
    let mut rng = Rng::new(12);
    for k in [2usize, 3, 10] {
        let n = 7;
        let mean = random(&mut rng, n, k);
        let mut covs = Dense::zeros(n, k * k);
        let mut iso = Dense::zeros(n, 1);
        for i in 0..n {
            let c = spd(&mut rng, k).scale(0.5 + i as f64);
            covs.a[i * k * k..(i + 1) * k * k].copy_from_slice(&c.a);
            iso.a[i] = 0.3 + i as f64;
        }
        let full = down(
            dev,
            &ops::bridge_dirichlet(dev, &up::<D, T>(dev, &mean), &up(dev, &covs)).unwrap(),
        );
        let isotropic = down(
            dev,
            &ops::bridge_dirichlet(dev, &up::<D, T>(dev, &mean), &up(dev, &iso)).unwrap(),
        );
        for i in 0..n {
            let c = Dense::from(k, k, covs.a[i * k * k..(i + 1) * k * k].to_vec());
            let e = rel_err(&full[i * k..(i + 1) * k], &bridge_reference(mean.row(i), &c));
            assert!(e < tol::<T>(k, 50.0), "bridge k={k} row {i}: err {e}");
            let c = Dense::identity(k).scale(iso.a[i]);
            let e = rel_err(&isotropic[i * k..(i + 1) * k], &bridge_reference(mean.row(i), &c));
            assert!(e < tol::<T>(k, 50.0), "isotropic bridge k={k} row {i}: err {e}");
        }
    }
    // Extreme logits stay finite; zero covariance falls back to the softmax.
    let mean = Dense::from(2, 3, vec![1e4, -1e4, 0.0, 0.5, 0.1, -0.3]);
    let cov = Dense::from(2, 1, vec![2.0, 0.0]);
    let p = down(
        dev,
        &ops::bridge_dirichlet(dev, &up::<D, T>(dev, &mean), &up(dev, &cov)).unwrap(),
    );
    assert!(p.iter().all(|x| x.is_finite()) && (p[..3].iter().map(|x| x.as_f64()).sum::<f64>() - 1.0).abs() < 1e-5);
    assert!(rel_err(&p[3..], &softmax(mean.row(1))) < tol::<T>(3, 8.0));
}

pub fn check_elementwise<D: Device, T: Scalar>(dev: &D) {
    let mut rng = Rng::new(10);
    let a = random(&mut rng, 17, 5);
    let b = random(&mut rng, 17, 5);
    let mut y = up::<D, T>(dev, &a);
    dev.axpy(&mut y, T::from_f64(-2.0), &up(dev, &b)).unwrap();
    assert!(rel_err(&down(dev, &y), &a.add(&b, -2.0).a) < tol::<T>(1, 4.0));
    let row = random(&mut rng, 1, 5);
    let mut y = up::<D, T>(dev, &a);
    dev.add_row(&mut y, &up(dev, &row)).unwrap();
    let want: Vec<f64> = a.a.iter().enumerate().map(|(i, x)| x + row.a[i % 5]).collect();
    assert!(rel_err(&down(dev, &y), &want) < tol::<T>(1, 4.0));
    let s = spd(&mut rng, 6);
    let mut y = up::<D, T>(dev, &s);
    dev.add_diagonal(&mut y, T::from_f64(3.0)).unwrap();
    assert!(rel_err(&down(dev, &y), &s.add(&Dense::identity(6), 3.0).a) < tol::<T>(1, 4.0));
    let got = dev.max_abs(&up::<D, T>(dev, &a)).unwrap().as_f64();
    assert!((got - a.max_abs()).abs() <= a.max_abs() * tol::<T>(1, 1.0));
    let mut r = up::<D, T>(dev, &a);
    assert!(r.reshape(5, 17).is_ok() && r.reshape(4, 4).is_err());
    // Feature-row gathers: whole, inner, last-row and wide (D = 769) ranges, with and without
    // the bias column, against rows copied here.
    for &(n, d, start, count) in &[
        (17, 5, 0, 17),
        (17, 5, 3, 9),
        (17, 5, 16, 1),
        (300, 769, 100, 200),
        (9, 1, 2, 0),
    ] {
        let x = random(&mut rng, n, d);
        let xd = up::<D, T>(dev, &x);
        for augment in [false, true] {
            let got = dev.feature_rows(&xd, start, count, augment).unwrap();
            let cols = d + usize::from(augment);
            assert_eq!(got.shape(), (count, cols));
            let want: Vec<f64> = (start..start + count)
                .flat_map(|i| x.row(i).iter().copied().chain(augment.then_some(1.0)))
                .collect();
            let got: Vec<f64> = down(dev, &got).iter().map(|v| v.as_f64()).collect();
            let exact: Vec<f64> = want.iter().map(|&v| T::from_f64(v).as_f64()).collect();
            assert_eq!(
                got, exact,
                "feature_rows n={n} d={d} start={start} count={count} augment={augment}"
            );
        }
        assert!(matches!(
            dev.feature_rows(&xd, start + 1, n - start, false),
            Err(laplace_update::Error::ShapeMismatch { .. })
        ));
    }
}

pub fn check_sherman_morrison<D: Device, T: Scalar>(dev: &D) {
    let mut rng = Rng::new(11);
    for &(m, d, k, categorical, with_bias) in &[
        (1usize, 1usize, 2usize, false, false),
        (5, 16, 3, false, true),
        (17, 33, 4, true, true),
        (70, 65, 10, true, false),
        (130, 40, 7, true, true),
    ] {
        let sigma0 = spd(&mut rng, d).scale(0.5);
        let head0 = random(&mut rng, k, d).scale(0.3);
        let bias0 = random(&mut rng, 1, k);
        let phi = random(&mut rng, m, d).scale(0.5);
        let mut targets = Dense::zeros(m, k);
        for j in 0..m {
            targets.set(j, rng.below(k), 1.0);
        }
        let gamma = 0.7;
        // The documented recursion, in f64.
        let (mut sigma, mut head) = (sigma0.clone(), head0.clone());
        let mut used = Vec::new();
        for j in 0..m {
            let x = phi.row(j);
            let u: Vec<f64> = (0..d).map(|r| (0..d).map(|c| sigma.at(r, c) * x[c]).sum()).collect();
            let s: f64 = (0..d).map(|c| x[c] * u[c]).sum();
            let f: Vec<f64> = (0..k)
                .map(|c| (0..d).map(|q| head.at(c, q) * x[q]).sum::<f64>() + if with_bias { bias0.a[c] } else { 0.0 })
                .collect();
            let p = softmax(&f);
            let mj = shared_weight(&p, categorical);
            let denom = 1.0 + mj * s;
            for r in 0..d {
                for c in 0..d {
                    let v = sigma.at(r, c) - mj * u[r] * u[c] / denom;
                    sigma.set(r, c, v);
                }
            }
            for c in 0..k {
                for q in 0..d {
                    let v = head.at(c, q) + gamma * (targets.at(j, c) - p[c]) * u[q] / denom;
                    head.set(c, q, v);
                }
            }
            used.push(mj);
        }
        let weighting = if categorical {
            OutputWeighting::Categorical
        } else {
            OutputWeighting::Gaussian
        };
        // The one blocked recursion, on every backend.
        {
            let mut sg = up::<D, T>(dev, &sigma0);
            let mut hd = up::<D, T>(dev, &head0);
            let bias = up::<D, T>(dev, &bias0);
            let args = (
                with_bias.then_some(&bias),
                up(dev, &phi),
                up(dev, &targets),
                T::from_f64(gamma),
            );
            let got_used =
                ops::sherman_morrison_sequence(dev, &mut sg, &mut hd, args.0, &args.1, &args.2, args.3, weighting)
                    .unwrap();
            let e = rel_err(&down(dev, &sg), &sigma.a);
            assert!(
                e < tol::<T>(m * d, 8.0),
                "sherman_morrison m={m} d={d} k={k}: Σ err {e}"
            );
            let e = rel_err(&down(dev, &hd), &head.a);
            assert!(
                e < tol::<T>(m * d, 8.0),
                "sherman_morrison m={m} d={d} k={k}: W err {e}"
            );
            let e = rel_err(&down(dev, &got_used), &used);
            assert!(
                e < tol::<T>(m * d, 8.0),
                "sherman_morrison m={m} d={d} k={k}: m_j err {e}"
            );
        }
    }
    // 1 + m s ≤ 0 at the second sample: Σ = −I and ‖φ_1‖² = 4.
    let d = 3;
    let mut sg = up::<D, T>(dev, &Dense::identity(d).scale(-1.0));
    let mut hd = up::<D, T>(dev, &Dense::zeros(2, d));
    let phi = up::<D, T>(dev, &Dense::from(2, d, vec![0.0, 0.0, 0.0, 2.0, 0.0, 0.0]));
    let targets = up::<D, T>(dev, &Dense::from(2, 2, vec![1.0, 0.0, 0.0, 1.0]));
    let result = ops::sherman_morrison_sequence(
        dev,
        &mut sg,
        &mut hd,
        None,
        &phi,
        &targets,
        T::one(),
        OutputWeighting::Gaussian,
    );
    assert!(
        matches!(result, Err(Error::NotPositiveDefinite { index: 1 })),
        "{:?}",
        result.err()
    );
}

/// The kernel suite's tests for a backend and element types, named `prefix::type::test`.
#[macro_export]
macro_rules! kernel_suite {
    ($prefix:literal, $backend:literal, $make:expr, $($t:ident),+) => {{
        let mut cases: Vec<$crate::common::harness::Case> = Vec::new();
        $(
        $crate::backend_cases!(cases, $prefix, $backend, $make, $t, kernels, [
            gemm => check_gemm,
            weighted_syrk => check_weighted_syrk,
            ggn_accumulate => check_ggn_accumulate,
            ggn_basis_and_congruence => check_ggn_basis_and_congruence,
            kron_products => check_kron_products,
            cholesky_family => check_cholesky_family,
            low_rank_update => check_low_rank_update,
            predictive => check_predictive,
            bridge => check_bridge,
            sherman_morrison => check_sherman_morrison,
            elementwise => check_elementwise,
        ]);
        )+
        cases
    }};
}
