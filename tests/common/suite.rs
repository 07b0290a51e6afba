//! Posterior-level checks against the dense f64 reference, generic over backend and dtype.
//! Instantiated per backend by `posterior_suite!`.

use super::*;
use laplace_update::*;

pub const TAU: f64 = 0.7;

pub fn structures() -> [(Structure, &'static str); 3] {
    [
        (Structure::Full, "full"),
        (Structure::Shared(OutputWeighting::Gaussian), "shared"),
        (Structure::Shared(OutputWeighting::Categorical), "shared-categorical"),
    ]
}

pub fn fit<D: Device, T: Scalar>(dev: &D, pb: &Problem, structure: Structure) -> Posterior<D, T> {
    let config = FitConfig {
        structure,
        prior_precision: TAU,
        bias: if pb.bias_in {
            BiasMode::InPosterior
        } else {
            BiasMode::Fixed
        },
        chunk_rows: 7, // several chunks, and a ragged last one
        ..Default::default()
    };
    let phi = Problem::cast::<T>(&pb.phi);
    let head = Problem::cast::<T>(&pb.head);
    let bias = Problem::cast::<T>(&pb.bias);
    Posterior::fit(
        dev,
        HostMatrix::new(&phi, pb.n, pb.d).unwrap(),
        &pb.labels,
        HostMatrix::new(&head, pb.k, pb.d).unwrap(),
        Some(&bias),
        &config,
    )
    .unwrap()
}

pub fn dense_precision(pb: &Problem, w: &Dense, rows: &[usize], structure: Structure) -> Dense {
    match structure {
        Structure::Full => full_precision(pb, w, rows, TAU),
        Structure::Shared(weighting) => shared_precision(pb, w, rows, TAU, weighting == OutputWeighting::Categorical),
        _ => unreachable!("see complete.rs"),
    }
}

/// Adds the curvature of `rows` at head `w` to `prec` (same structure).
pub fn add_dense_curvature(pb: &Problem, w: &Dense, rows: &[usize], structure: Structure, prec: &Dense) -> Dense {
    let zero = dense_precision(pb, w, &[], structure);
    prec.add(&dense_precision(pb, w, rows, structure), 1.0).add(&zero, -1.0)
}

/// `w + γ Σ g` in weight space for either structure.
pub fn dense_step(w: &Dense, sigma: &Dense, g: &Dense, gamma: f64, structure: Structure) -> Dense {
    match structure {
        Structure::Full => {
            let step = sigma.mul(&Dense::from(g.rows * g.cols, 1, g.a.clone()));
            w.add(&Dense::from(w.rows, w.cols, step.a), gamma)
        }
        Structure::Shared(_) => w.add(&g.mul(sigma), gamma),
        _ => unreachable!("see complete.rs"),
    }
}

pub fn dense_head_of<D: Device, T: Scalar>(post: &Posterior<D, T>, pb: &Problem) -> Vec<f64> {
    let head = post.head().unwrap();
    let bias = post.bias().unwrap();
    let mut out = Vec::new();
    for c in 0..pb.k {
        out.extend(head[c * pb.d..(c + 1) * pb.d].iter().map(|x| x.as_f64()));
        if pb.bias_in {
            out.push(bias[c].as_f64());
        }
    }
    out
}

pub fn check_fit<D: Device, T: Scalar>(dev: &D) {
    for bias_in in [true, false] {
        for (structure, name) in structures() {
            let pb = Problem::random(11, 23, 5, 3, bias_in);
            let post = fit::<D, T>(dev, &pb, structure);
            let all: Vec<usize> = (0..pb.n).collect();
            let prec = dense_precision(&pb, &pb.head_aug(), &all, structure);
            let cov = prec.inverse();
            let dim = prec.rows;
            let e = rel_err(&post.precision().unwrap(), &prec.a);
            assert!(e < tol::<T>(dim, 20.0), "{name} bias_in={bias_in}: precision err {e}");
            let e = rel_err(&post.covariance().unwrap(), &cov.a);
            assert!(e < tol::<T>(dim, 200.0), "{name} bias_in={bias_in}: covariance err {e}");
            assert_eq!(post.samples_seen(), pb.n);
        }
    }
}

/// m = 1 and 2 take the Woodbury path (rank m·K or m below half of Σ's side), m = 10 the
/// refactoring path; both must equal the dense inverse.
pub fn check_joint_update<D: Device, T: Scalar>(dev: &D) {
    for (structure, name) in structures() {
        for bias_in in [true, false] {
            for m in [1usize, 2, 10] {
                let pb = Problem::random(5 + m as u64, 20 + m, 9, 4, bias_in);
                let fit_rows: Vec<usize> = (0..20).collect();
                let new_rows: Vec<usize> = (20..20 + m).collect();
                let pb_fit = pb.first(20);
                let mut post = fit::<D, T>(dev, &pb_fit, structure);
                let phi_new = Problem::cast::<T>(&pb.phi[20 * pb.d..]);
                let gamma = 1.5;
                let config = UpdateConfig {
                    rule: UpdateRule::Joint,
                    step: StepControl::Newton { gamma, iterations: 1 },
                    forgetting: 1.0,
                };
                post.update(HostMatrix::new(&phi_new, m, pb.d).unwrap(), &pb.labels[20..], &config)
                    .unwrap();

                let w0 = pb.head_aug();
                let prec0 = dense_precision(&pb, &w0, &fit_rows, structure);
                let prec1 = add_dense_curvature(&pb, &w0, &new_rows, structure, &prec0);
                let cov1 = prec1.inverse();
                let g = gradient(&pb, &w0, &new_rows);
                let w1 = dense_step(&w0, &cov1, &g, gamma, structure);
                let dim = prec1.rows;
                let e = rel_err(&post.covariance().unwrap(), &cov1.a);
                assert!(
                    e < tol::<T>(dim, 500.0),
                    "{name}/{bias_in}/m={m}: joint covariance err {e}"
                );
                let e = rel_err(&post.precision().unwrap(), &prec1.a);
                assert!(
                    e < tol::<T>(dim, 20.0),
                    "{name}/{bias_in}/m={m}: joint precision err {e}"
                );
                let e = rel_err(&dense_head_of(&post, &pb), &w1.a);
                assert!(e < tol::<T>(dim, 500.0), "{name}/{bias_in}/m={m}: joint mean err {e}");
                assert_eq!(post.samples_seen(), 20 + m);
            }
        }
    }
}

/// Several Newton steps: `w_{t+1} = w_t + γ (Π + Σ H(w_t))⁻¹ (Σ Jᵀ(e − p(w_t)) − Π (w_t − ŵ))`.
pub fn check_joint_iterations<D: Device, T: Scalar>(dev: &D) {
    for ((structure, name), m) in structures().into_iter().flat_map(|s| [(s, 1usize), (s, 8)]) {
        let pb = Problem::random(9, 18 + m, 6, 3, true);
        let fit_rows: Vec<usize> = (0..18).collect();
        let new_rows: Vec<usize> = (18..18 + m).collect();
        let pb_fit = pb.first(18);
        let mut post = fit::<D, T>(dev, &pb_fit, structure);
        let phi_new = Problem::cast::<T>(&pb.phi[18 * pb.d..]);
        let iterations = 3;
        let config = UpdateConfig {
            rule: UpdateRule::Joint,
            step: StepControl::Newton { gamma: 1.0, iterations },
            forgetting: 1.0,
        };
        post.update(HostMatrix::new(&phi_new, m, pb.d).unwrap(), &pb.labels[18..], &config)
            .unwrap();

        let w0 = pb.head_aug();
        let prec0 = dense_precision(&pb, &w0, &fit_rows, structure);
        let mut w = w0.clone();
        let mut cov = Dense::zeros(0, 0);
        for _ in 0..iterations {
            let prec_t = add_dense_curvature(&pb, &w, &new_rows, structure, &prec0);
            cov = prec_t.inverse();
            let diff = w.add(&w0, -1.0);
            let prior = match structure {
                Structure::Full => Dense::from(
                    w.rows,
                    w.cols,
                    prec0.mul(&Dense::from(diff.a.len(), 1, diff.a.clone())).a,
                ),
                Structure::Shared(_) => diff.mul(&prec0),
                _ => unreachable!(),
            };
            let g = gradient(&pb, &w, &new_rows).add(&prior, -1.0);
            w = dense_step(&w, &cov, &g, 1.0, structure);
        }
        let e = rel_err(&dense_head_of(&post, &pb), &w.a);
        assert!(e < tol::<T>(cov.rows, 1000.0), "{name}: iterated mean err {e}");
        let e = rel_err(&post.covariance().unwrap(), &cov.a);
        assert!(e < tol::<T>(cov.rows, 1000.0), "{name}: iterated covariance err {e}");
    }
}

/// The seed paper's per-sample loop, written plainly in dense f64.
pub fn paper_sequential_shared(
    pb: &Problem,
    rows: &[usize],
    sigma: &mut Dense,
    w: &mut Dense,
    gamma: f64,
    categorical: bool,
) {
    for &j in rows {
        let x = pb.phi_aug(pb.x(j));
        let xm = Dense::from(x.len(), 1, x.clone());
        let u = sigma.mul(&xm);
        let s: f64 = x.iter().zip(&u.a).map(|(a, b)| a * b).sum();
        let p = pb.probs(w, pb.x(j));
        let m = shared_weight(&p, categorical);
        *sigma = sigma.add(&u.mul(&u.t()), -m / (1.0 + m * s));
        let sigma_x = sigma.mul(&xm);
        for c in 0..pb.k {
            let r = f64::from(u8::from(pb.labels[j] as usize == c)) - p[c];
            for i in 0..x.len() {
                w.a[c * x.len() + i] += gamma * r * sigma_x.a[i];
            }
        }
    }
}

pub fn check_sequential_shared<D: Device, T: Scalar>(dev: &D) {
    for categorical in [false, true] {
        let weighting = if categorical {
            OutputWeighting::Categorical
        } else {
            OutputWeighting::Gaussian
        };
        let structure = Structure::Shared(weighting);
        for bias_in in [true, false] {
            let pb = Problem::random(21, 40, 7, 5, bias_in);
            let fit_rows: Vec<usize> = (0..25).collect();
            let new_rows: Vec<usize> = (25..40).collect();
            let pb_fit = pb.first(25);
            let mut post = fit::<D, T>(dev, &pb_fit, structure);
            let gamma = 10.0;
            let phi_new = Problem::cast::<T>(&pb.phi[25 * pb.d..]);
            let config = UpdateConfig {
                rule: UpdateRule::Sequential,
                step: StepControl::Newton { gamma, iterations: 1 },
                forgetting: 1.0,
            };
            post.update(HostMatrix::new(&phi_new, 15, pb.d).unwrap(), &pb.labels[25..], &config)
                .unwrap();

            let mut w = pb.head_aug();
            let prec0 = dense_precision(&pb, &w, &fit_rows, structure);
            let mut sigma = prec0.inverse();
            let mut prec = prec0.clone();
            for &j in &new_rows {
                // The precision gains m_j φ_j φ_jᵀ with m_j at the head the step starts from.
                prec = add_dense_curvature(&pb, &w, &[j], structure, &prec);
                paper_sequential_shared(&pb, &[j], &mut sigma, &mut w, gamma, categorical);
            }
            let dim = sigma.rows;
            let e = rel_err(&post.covariance().unwrap(), &sigma.a);
            assert!(
                e < tol::<T>(dim, 2000.0),
                "categorical={categorical}/{bias_in}: covariance err {e}"
            );
            let e = rel_err(&post.precision().unwrap(), &prec.a);
            assert!(
                e < tol::<T>(dim, 200.0),
                "categorical={categorical}/{bias_in}: precision err {e}"
            );
            let e = rel_err(&dense_head_of(&post, &pb), &w.a);
            assert!(
                e < tol::<T>(dim, 2000.0),
                "categorical={categorical}/{bias_in}: mean err {e}"
            );
        }
    }
}

pub fn check_sequential_full<D: Device, T: Scalar>(dev: &D) {
    let pb = Problem::random(33, 24, 5, 3, true);
    let pb_fit = pb.first(20);
    let fit_rows: Vec<usize> = (0..20).collect();
    // m = 1: Sequential and Joint are the same update.
    let one = Problem::cast::<T>(&pb.phi[20 * pb.d..21 * pb.d]);
    let mut seq = fit::<D, T>(dev, &pb_fit, Structure::Full);
    let mut joint = seq.try_clone().unwrap();
    let cfg = |rule| UpdateConfig {
        rule,
        step: StepControl::Newton {
            gamma: 2.0,
            iterations: 1,
        },
        forgetting: 1.0,
    };
    seq.update(
        HostMatrix::new(&one, 1, pb.d).unwrap(),
        &pb.labels[20..21],
        &cfg(UpdateRule::Sequential),
    )
    .unwrap();
    joint
        .update(
            HostMatrix::new(&one, 1, pb.d).unwrap(),
            &pb.labels[20..21],
            &cfg(UpdateRule::Joint),
        )
        .unwrap();
    let dim = pb.k * pb.da();
    let e = rel_err(
        &seq.covariance().unwrap(),
        &joint
            .covariance()
            .unwrap()
            .iter()
            .map(|x| x.as_f64())
            .collect::<Vec<_>>(),
    );
    assert!(e < tol::<T>(dim, 50.0), "sequential m=1 vs joint covariance err {e}");
    let e = rel_err(
        &seq.head().unwrap(),
        &joint.head().unwrap().iter().map(|x| x.as_f64()).collect::<Vec<_>>(),
    );
    assert!(e < tol::<T>(dim, 50.0), "sequential m=1 vs joint mean err {e}");

    // m = 4 against a dense per-sample loop.
    let mut post = fit::<D, T>(dev, &pb_fit, Structure::Full);
    let four = Problem::cast::<T>(&pb.phi[20 * pb.d..]);
    post.update(
        HostMatrix::new(&four, 4, pb.d).unwrap(),
        &pb.labels[20..],
        &cfg(UpdateRule::Sequential),
    )
    .unwrap();
    let mut w = pb.head_aug();
    let mut prec = dense_precision(&pb, &w, &fit_rows, Structure::Full);
    for j in 20..24 {
        prec = add_dense_curvature(&pb, &w, &[j], Structure::Full, &prec);
        let cov = prec.inverse();
        let g = gradient(&pb, &w, &[j]);
        w = dense_step(&w, &cov, &g, 2.0, Structure::Full);
    }
    let e = rel_err(&post.covariance().unwrap(), &prec.inverse().a);
    assert!(e < tol::<T>(dim, 1000.0), "sequential full covariance err {e}");
    let e = rel_err(&dense_head_of(&post, &pb), &w.a);
    assert!(e < tol::<T>(dim, 1000.0), "sequential full mean err {e}");
}

pub fn check_predict<D: Device, T: Scalar>(dev: &D) {
    for (structure, name) in structures() {
        for bias_in in [true, false] {
            let pb = Problem::random(44, 30, 6, 4, bias_in);
            let post = fit::<D, T>(dev, &pb, structure);
            let all: Vec<usize> = (0..pb.n).collect();
            let w = pb.head_aug();
            let cov = dense_precision(&pb, &w, &all, structure).inverse();
            let test = Problem::random(45, 9, 6, 4, bias_in);
            let x = Problem::cast::<T>(&test.phi);
            let lambda = std::f64::consts::PI / 8.0;
            let pred = post
                .predict(HostMatrix::new(&x, 9, 6).unwrap(), Link::Probit { lambda })
                .unwrap();
            let dim = cov.rows;
            for i in 0..9 {
                let xa = pb.phi_aug(test.x(i));
                let j = jacobian(&xa, pb.k);
                let full_cov = match structure {
                    Structure::Full => cov.clone(),
                    Structure::Shared(_) => kron_identity(&cov, pb.k),
                    _ => unreachable!(),
                };
                let sf = j.mul(&full_cov).mul(&j.t());
                let f: Vec<f64> = (0..pb.k)
                    .map(|c| {
                        w.row(c).iter().zip(&xa).map(|(a, b)| a * b).sum::<f64>()
                            + if bias_in { 0.0 } else { pb.bias[c] }
                    })
                    .collect();
                let scaled: Vec<f64> = (0..pb.k).map(|c| f[c] / (1.0 + lambda * sf.at(c, c)).sqrt()).collect();
                let probs = softmax(&scaled);
                let got_mean: Vec<T> = pred.logit_mean[i * pb.k..(i + 1) * pb.k].to_vec();
                let e = rel_err(&got_mean, &f);
                assert!(e < tol::<T>(dim, 20.0), "{name}: logit mean err {e}");
                let got_cov: Vec<T> = (0..pb.k * pb.k)
                    .map(|kl| pred.logit_cov_at(i, kl / pb.k, kl % pb.k))
                    .collect();
                let e = rel_err(&got_cov, &sf.a);
                assert!(e < tol::<T>(dim, 500.0), "{name}: logit cov err {e}");
                let e = rel_err(&pred.probs[i * pb.k..(i + 1) * pb.k], &probs);
                assert!(e < tol::<T>(dim, 500.0), "{name}: probit err {e}");
            }
            let plain = post.predict(HostMatrix::new(&x, 9, 6).unwrap(), Link::None).unwrap();
            for i in 0..9 {
                let want = softmax(
                    &plain.logit_mean[i * pb.k..(i + 1) * pb.k]
                        .iter()
                        .map(|v| v.as_f64())
                        .collect::<Vec<_>>(),
                );
                let e = rel_err(&plain.probs[i * pb.k..(i + 1) * pb.k], &want);
                assert!(e < tol::<T>(pb.k, 20.0), "{name}: plain softmax err {e}");
            }
        }
    }
}

/// `I_K ⊗ A`.
pub fn kron_identity(a: &Dense, k: usize) -> Dense {
    let d = a.rows;
    let mut m = Dense::zeros(k * d, k * d);
    for c in 0..k {
        for i in 0..d {
            for j in 0..d {
                m.set(c * d + i, c * d + j, a.at(i, j));
            }
        }
    }
    m
}

/// With two classes the exact predictive is `E[σ(f₀ − f₁)]`, `f₀ − f₁ ~ N(μ, s²)`: a 1-D
/// integral done here by the trapezoid rule. Monte Carlo must approach it as samples grow.
pub fn check_monte_carlo<D: Device, T: Scalar>(dev: &D) {
    let pb = Problem::random(77, 6, 3, 2, true);
    // Few samples and a weak prior: a wide predictive, so the link matters.
    let config = FitConfig {
        structure: Structure::Full,
        prior_precision: 0.05,
        bias: BiasMode::InPosterior,
        chunk_rows: 64,
        ..Default::default()
    };
    let (phi, head) = (Problem::cast::<T>(&pb.phi), Problem::cast::<T>(&pb.head));
    let post = Posterior::fit(
        dev,
        HostMatrix::new(&phi, pb.n, pb.d).unwrap(),
        &pb.labels,
        HostMatrix::new(&head, 2, pb.d).unwrap(),
        None,
        &config,
    )
    .unwrap();
    let x = Problem::cast::<T>(&[0.8, -1.1, 0.4]);
    let probit = post
        .predict(HostMatrix::new(&x, 1, 3).unwrap(), Link::default())
        .unwrap();
    let mu = probit.logit_mean[0].as_f64() - probit.logit_mean[1].as_f64();
    let s2 = probit.logit_cov_at(0, 0, 0).as_f64() + probit.logit_cov_at(0, 1, 1).as_f64()
        - 2.0 * probit.logit_cov_at(0, 0, 1).as_f64();
    assert!(s2 > 1.0, "test needs a wide predictive, got s² = {s2}");
    let s = s2.sqrt();
    let steps = 20_000;
    let exact: f64 = (0..=steps)
        .map(|i| {
            let z = -10.0 + 20.0 * i as f64 / steps as f64;
            let wgt = if i == 0 || i == steps { 0.5 } else { 1.0 };
            wgt * (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt() / (1.0 + (-(mu + s * z)).exp())
        })
        .sum::<f64>()
        * (20.0 / steps as f64);
    let err_at = |samples| {
        let pred = post
            .predict(
                HostMatrix::new(&x, 1, 3).unwrap(),
                Link::MonteCarlo { samples, seed: 3 },
            )
            .unwrap();
        let again = post
            .predict(
                HostMatrix::new(&x, 1, 3).unwrap(),
                Link::MonteCarlo { samples, seed: 3 },
            )
            .unwrap();
        assert_eq!(pred.probs, again.probs, "Monte Carlo must be deterministic for a seed");
        (pred.probs[0].as_f64() - exact).abs()
    };
    let (e_small, e_large) = (err_at(100), err_at(200_000));
    assert!(
        e_large < 5e-3,
        "MC with 200k samples is {e_large} from the exact {exact}"
    );
    assert!(
        e_large < e_small.max(1e-3),
        "MC error did not shrink: {e_small} -> {e_large}"
    );
}

/// Sizes 0 (a clear error), 1, 15, 16, 17, 33, 64 with non-square heads.
pub fn check_shape_sweep<D: Device, T: Scalar>(dev: &D) {
    for d in [1usize, 15, 16, 17, 33, 64] {
        for k in [2usize, 3, 5] {
            for (structure, name) in structures() {
                if matches!(structure, Structure::Full) && d * k > 200 {
                    continue; // dense reference inverse cost; the large Full sizes run below
                }
                let n = 12;
                let pb = Problem::random((d * 31 + k) as u64, n + 3, d, k, d % 2 == 1);
                let pb_fit = pb.first(n);
                let mut post = fit::<D, T>(dev, &pb_fit, structure);
                let phi_new = Problem::cast::<T>(&pb.phi[n * d..]);
                post.update(
                    HostMatrix::new(&phi_new, 3, d).unwrap(),
                    &pb.labels[n..],
                    &UpdateConfig::newton(1.0),
                )
                .unwrap();
                let w0 = pb.head_aug();
                let fit_rows: Vec<usize> = (0..n).collect();
                let prec = add_dense_curvature(
                    &pb,
                    &w0,
                    &[n, n + 1, n + 2],
                    structure,
                    &dense_precision(&pb, &w0, &fit_rows, structure),
                );
                let cov = prec.inverse();
                let dim = cov.rows;
                let e = rel_err(&post.covariance().unwrap(), &cov.a);
                assert!(e < tol::<T>(dim, 1000.0), "{name} d={d} k={k}: covariance err {e}");
                let w1 = dense_step(&w0, &cov, &gradient(&pb, &w0, &[n, n + 1, n + 2]), 1.0, structure);
                let e = rel_err(&dense_head_of(&post, &pb), &w1.a);
                assert!(e < tol::<T>(dim, 1000.0), "{name} d={d} k={k}: mean err {e}");
                let pred = post
                    .predict(HostMatrix::new(&phi_new, 3, d).unwrap(), Link::default())
                    .unwrap();
                assert_eq!(pred.probs.len(), 3 * k);
            }
        }
    }
    // Size 0: a clear error, not a panic.
    let pb = Problem::random(1, 4, 3, 2, true);
    let post = fit::<D, T>(dev, &pb, Structure::Full);
    let empty: [T; 0] = [];
    let err = post
        .predict(HostMatrix::new(&empty, 0, 3).unwrap(), Link::default())
        .unwrap_err();
    assert!(matches!(err, Error::EmptyBatch { .. }), "{err}");
    let zero_cols = Posterior::<D, T>::fit(
        dev,
        HostMatrix::new(&empty, 4, 0).unwrap(),
        &[0u32, 1, 0, 1],
        HostMatrix::new(&empty, 2, 0).unwrap(),
        None,
        &FitConfig::default(),
    );
    assert!(matches!(zero_cols, Err(Error::InvalidArgument { .. })));
    let no_rows = Posterior::<D, T>::fit(
        dev,
        HostMatrix::new(&empty, 0, 3).unwrap(),
        &[] as &[u32],
        HostMatrix::new(&Problem::cast::<T>(&[0.0; 6]), 2, 3).unwrap(),
        None,
        &FitConfig::default(),
    );
    assert!(matches!(no_rows, Err(Error::EmptyBatch { .. })));
}

/// Snapshot of everything observable about a posterior, for bit-for-bit comparisons.
pub fn snapshot<D: Device, T: Scalar>(p: &Posterior<D, T>) -> (Vec<T>, Vec<T>, Vec<T>, Vec<T>, usize) {
    (
        p.head().unwrap(),
        p.bias().unwrap(),
        p.precision().unwrap(),
        p.covariance().unwrap(),
        p.samples_seen(),
    )
}

pub fn check_bad_inputs_leave_posterior_unchanged<D: Device, T: Scalar>(dev: &D) {
    for (structure, name) in structures() {
        let pb = Problem::random(3, 10, 4, 3, true);
        let mut post = fit::<D, T>(dev, &pb, structure);
        let before = snapshot(&post);
        let good = Problem::cast::<T>(&pb.phi[..8]);
        let mut nan = good.clone();
        nan[5] = T::nan();
        let mut inf = good.clone();
        inf[0] = T::infinity();
        let cfg = UpdateConfig::default();
        for rule in [UpdateRule::Joint, UpdateRule::Sequential] {
            let cfg = UpdateConfig { rule, ..cfg };
            let e = post
                .update(HostMatrix::new(&nan, 2, 4).unwrap(), &[0u32, 1], &cfg)
                .unwrap_err();
            assert_eq!(
                e,
                Error::NonFinite {
                    argument: "features",
                    index: 5,
                    columns: 4
                },
                "{name}"
            );
            let e = post
                .update(HostMatrix::new(&inf, 2, 4).unwrap(), &[0u32, 1], &cfg)
                .unwrap_err();
            assert_eq!(
                e,
                Error::NonFinite {
                    argument: "features",
                    index: 0,
                    columns: 4
                },
                "{name}"
            );
            let e = post
                .update(HostMatrix::new(&good, 2, 4).unwrap(), &[0u32, 3], &cfg)
                .unwrap_err();
            assert_eq!(
                e,
                Error::LabelOutOfRange {
                    index: 1,
                    label: 3,
                    classes: 3
                },
                "{name}"
            );
            let e = post
                .update(HostMatrix::new(&good, 2, 4).unwrap(), &[0i64, -1], &cfg)
                .unwrap_err();
            assert!(matches!(e, Error::LabelOutOfRange { label: -1, .. }), "{name}: {e}");
            let e = post
                .update(HostMatrix::new(&good, 4, 2).unwrap(), &[0u32, 1, 2, 0], &cfg)
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::ShapeMismatch {
                        argument: "features",
                        ..
                    }
                ),
                "{name}: {e}"
            );
            let e = post
                .update(HostMatrix::new(&good[..0], 0, 4).unwrap(), &[] as &[u32], &cfg)
                .unwrap_err();
            assert!(matches!(e, Error::EmptyBatch { .. }), "{name}: {e}");
            let e = post
                .update(HostMatrix::new(&good, 2, 4).unwrap(), &[0u32], &cfg)
                .unwrap_err();
            assert!(
                matches!(e, Error::ShapeMismatch { argument: "labels", .. }),
                "{name}: {e}"
            );
            let bad_gamma = UpdateConfig {
                step: StepControl::newton(f64::NAN),
                ..cfg
            };
            let e = post
                .update(HostMatrix::new(&good, 2, 4).unwrap(), &[0u32, 1], &bad_gamma)
                .unwrap_err();
            assert!(
                matches!(e, Error::InvalidArgument { argument: "gamma", .. }),
                "{name}: {e}"
            );
            let no_steps = UpdateConfig {
                step: StepControl::Newton {
                    gamma: 1.0,
                    iterations: 0,
                },
                ..cfg
            };
            let e = post
                .update(HostMatrix::new(&good, 2, 4).unwrap(), &[0u32, 1], &no_steps)
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidArgument {
                        argument: "iterations",
                        ..
                    }
                ),
                "{name}: {e}"
            );
            assert!(
                snapshot(&post) == before,
                "{name}: posterior changed by a failed update"
            );
        }
        // Fit-time checks: wrong head shape, NaN head, label = K, τ ≤ 0.
        let phi = Problem::cast::<T>(&pb.phi);
        let head = Problem::cast::<T>(&pb.head);
        let x = HostMatrix::new(&phi, pb.n, pb.d).unwrap();
        let fit_with = |head: HostMatrix<'_, T>, labels: &[u32], tau: f64| {
            Posterior::<D, T>::fit(
                dev,
                x,
                labels,
                head,
                None,
                &FitConfig {
                    structure,
                    prior_precision: tau,
                    ..Default::default()
                },
            )
        };
        let e = fit_with(HostMatrix::new(&head[..8], 2, 4).unwrap(), &pb.labels, TAU)
            .err()
            .unwrap();
        assert!(
            matches!(e, Error::LabelOutOfRange { .. } | Error::ShapeMismatch { .. }),
            "{name}: {e}"
        );
        // A head given as D × K (4 × 3 for features of 4 columns) is the head's fault, named so.
        let e = fit_with(HostMatrix::new(&head, 4, 3).unwrap(), &pb.labels, TAU)
            .err()
            .unwrap();
        assert!(
            matches!(e, Error::ShapeMismatch { argument: "head", .. }) && e.to_string().contains("transposed"),
            "{name}: {e}"
        );
        let mut bad_head = head.clone();
        bad_head[7] = T::nan();
        let e = fit_with(HostMatrix::new(&bad_head, 3, 4).unwrap(), &pb.labels, TAU)
            .err()
            .unwrap();
        assert_eq!(
            e,
            Error::NonFinite {
                argument: "head",
                index: 7,
                columns: 4
            }
        );
        let mut labels = pb.labels.clone();
        labels[4] = 3;
        let e = fit_with(HostMatrix::new(&head, 3, 4).unwrap(), &labels, TAU)
            .err()
            .unwrap();
        assert_eq!(
            e,
            Error::LabelOutOfRange {
                index: 4,
                label: 3,
                classes: 3
            }
        );
        // NaN and ±∞ features are found at their index (the Gaussian weighting reads them off
        // the Gram), features whose Gram overflows are refused, and the accumulator that saw
        // them is unchanged.
        let config = FitConfig {
            structure,
            prior_precision: TAU,
            ..Default::default()
        };
        let mut acc = CurvatureAccumulator::new(dev, HostMatrix::new(&head, 3, 4).unwrap(), None, &config).unwrap();
        acc.accumulate(HostMatrix::new(&phi[..8], 2, 4).unwrap(), &pb.labels[..2])
            .unwrap();
        let accumulated = snapshot(&acc.finish(TAU).unwrap());
        for (value, index) in [(T::nan(), 13usize), (T::infinity(), 0), (T::neg_infinity(), 6)] {
            let mut bad = phi.clone();
            bad[index] = value;
            let e = acc
                .accumulate(HostMatrix::new(&bad, pb.n, pb.d).unwrap(), &pb.labels)
                .unwrap_err();
            assert_eq!(
                e,
                Error::NonFinite {
                    argument: "features",
                    index,
                    columns: pb.d
                },
                "{name}"
            );
        }
        if structure == Structure::Shared(OutputWeighting::Gaussian) {
            let huge = T::from_f64(T::max_value().as_f64().sqrt() * 4.0);
            let mut big = phi.clone();
            big[2] = huge;
            let e = acc
                .accumulate(HostMatrix::new(&big, pb.n, pb.d).unwrap(), &pb.labels)
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidArgument {
                        argument: "features",
                        ..
                    }
                ),
                "{name}: {e}"
            );
        }
        assert_eq!(acc.count(), 2, "{name}");
        assert!(
            snapshot(&acc.finish(TAU).unwrap()) == accumulated,
            "{name}: accumulator changed by failed calls"
        );
        for tau in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = fit_with(HostMatrix::new(&head, 3, 4).unwrap(), &pb.labels, tau)
                .err()
                .unwrap();
            assert!(
                matches!(
                    e,
                    Error::InvalidArgument {
                        argument: "prior_precision",
                        ..
                    }
                ),
                "{name}: {e}"
            );
        }
        // Predict-time checks.
        let e = post
            .predict(HostMatrix::new(&nan, 2, 4).unwrap(), Link::default())
            .unwrap_err();
        assert_eq!(
            e,
            Error::NonFinite {
                argument: "features",
                index: 5,
                columns: 4
            }
        );
        assert!(
            e.to_string().contains("at row 1, column 1 (flat index 5)"),
            "the message names the row and column: {e}"
        );
        let e = post
            .predict(
                HostMatrix::new(&good, 2, 4).unwrap(),
                Link::MonteCarlo { samples: 0, seed: 1 },
            )
            .unwrap_err();
        assert!(matches!(
            e,
            Error::InvalidArgument {
                argument: "samples",
                ..
            }
        ));
        assert!(snapshot(&post) == before, "{name}: posterior changed by failed calls");
    }
}

/// `100 · chunks` sequential updates at D = `d` (1,000 at 64 in the GPU and CPU suites) keep
/// ‖ΠΣ − I‖_max small, and refresh() resets it.
pub fn check_drift<D: Device, T: Scalar>(dev: &D, bound: f64, d: usize, chunks: usize) {
    for (structure, name) in [
        (Structure::Shared(OutputWeighting::Gaussian), "shared"),
        (Structure::Shared(OutputWeighting::Categorical), "shared-categorical"),
        (Structure::Full, "full"),
    ] {
        let k = 10;
        let n = 100 * (chunks + 1);
        let pb = Problem::random(99, n, d, k, true);
        let pb_fit = pb.first(100);
        let mut post = fit::<D, T>(dev, &pb_fit, structure);
        let phi = Problem::cast::<T>(&pb.phi[100 * d..]);
        let cfg = UpdateConfig {
            rule: UpdateRule::Sequential,
            step: StepControl::Newton {
                gamma: 1.0,
                iterations: 1,
            },
            forgetting: 1.0,
        };
        for chunk in 0..chunks {
            let rows = chunk * 100..(chunk + 1) * 100;
            let x = HostMatrix::new(&phi[rows.start * d..rows.end * d], 100, d).unwrap();
            post.update(x, &pb.labels[100 + rows.start..100 + rows.end], &cfg)
                .unwrap();
        }
        assert_eq!(post.samples_seen(), n);
        let drift = post.drift().unwrap().as_f64();
        let mut fresh = post.try_clone().unwrap();
        fresh.refresh().unwrap();
        let host_drift = |p: &Posterior<D, T>| {
            let n = p.stored_shape().0;
            let a = Dense::from(n, n, p.precision().unwrap().iter().map(|x| x.as_f64()).collect());
            let b = Dense::from(n, n, p.covariance().unwrap().iter().map(|x| x.as_f64()).collect());
            a.mul(&b).add(&Dense::identity(n), -1.0).max_abs()
        };
        eprintln!(
            "{name}: drift {drift:e}, after refresh {:e}; f64 product {:e} / {:e}",
            fresh.drift().unwrap().as_f64(),
            host_drift(&post),
            host_drift(&fresh)
        );
        assert!(
            drift < bound,
            "{name}: drift {drift} after {} sequential updates (bound {bound})",
            n - 100
        );
        post.refresh().unwrap();
        let after = post.drift().unwrap().as_f64();
        assert!(
            after < bound && after <= drift.max(tol::<T>(d, 10.0)),
            "{name}: refresh left drift {after} (was {drift})"
        );
    }
}

/// The posterior suite's tests for a backend (`make` starts its device) and element types,
/// named `prefix::type::test`, for [`harness::run`](crate::common::harness::run).
#[macro_export]
macro_rules! posterior_suite {
    ($prefix:literal, $backend:literal, $make:expr, $($t:ident),+) => {
        $crate::posterior_suite!($prefix, $backend, $make, drift(64, 10), $($t),+)
    };
    // `drift(d, chunks)`: the drift test's feature count and its chunks of 100 sequential
    // updates (64 and 10 by default; an emulator takes fewer).
    ($prefix:literal, $backend:literal, $make:expr, drift($drift_d:expr, $drift_chunks:expr), $($t:ident),+) => {{
        let mut cases: Vec<$crate::common::harness::Case> = Vec::new();
        $(
        $crate::backend_cases!(cases, $prefix, $backend, $make, $t, suite, [
            fit_matches_dense => check_fit,
            joint_update_matches_dense => check_joint_update,
            joint_iterations_match_dense_newton => check_joint_iterations,
            sequential_shared_matches_paper_loop => check_sequential_shared,
            sequential_full_matches_joint_and_dense => check_sequential_full,
            predict_matches_dense => check_predict,
            monte_carlo_converges => check_monte_carlo,
            shape_sweep => check_shape_sweep,
            bad_inputs_leave_posterior_unchanged => check_bad_inputs_leave_posterior_unchanged,
            unlearn_inverts_joint_update => check_unlearn,
            damped_update_matches_dense_line_search => check_damped_update,
            unlearn_inverts_damped_update => check_unlearn_damped,
            fit_head_matches_dense_newton => check_fit_head,
        ]);
        cases.push($crate::common::harness::case(
            concat!($prefix, "::", stringify!($t), "::drift_stays_bounded"),
            move || {
                let bound = if <$t as laplace_update::Scalar>::DTYPE == laplace_update::DType::F32 { 1e-4 } else { 1e-10 };
                if let Some(d) = $crate::common::backend_or_skip($backend, $make) {
                    $crate::common::suite::check_drift::<_, $t>(&d, bound, $drift_d, $drift_chunks)
                }
            },
        ));
        )+
        cases
    }};
}

/// Pushes onto `cases` one test per `name => check` of `module`, for element type `t`: each
/// starts its device with `make` and runs `module::check::<_, t>` on it.
#[macro_export]
macro_rules! backend_cases {
    ($cases:ident, $prefix:literal, $backend:literal, $make:expr, $t:ident, $module:ident, [$($name:ident => $check:ident),+ $(,)?]) => {
        $(
        $cases.push($crate::common::harness::case(
            concat!($prefix, "::", stringify!($t), "::", stringify!($name)),
            move || {
                if let Some(d) = $crate::common::backend_or_skip($backend, $make) {
                    $crate::common::$module::$check::<_, $t>(&d);
                    $crate::common::report_worst();
                }
            },
        ));
        )+
    };
}

/// `fit_head` against Newton's method on the same objective in dense f64, and the gradient at
/// the solution below the tolerance.
pub fn check_fit_head<D: Device, T: Scalar>(dev: &D) {
    for (bias, solver) in [
        (true, HeadSolver::Newton),
        (false, HeadSolver::Newton),
        (true, HeadSolver::Lbfgs),
        (false, HeadSolver::Lbfgs),
    ] {
        let pb = Problem::random(61, 40, 5, 3, bias);
        let tau = 0.5;
        let config = HeadConfig {
            prior_precision: tau,
            bias,
            max_iterations: 500,
            tolerance: 1e-7,
            memory: 10,
            solver,
        };
        let x = Problem::cast::<T>(&pb.phi);
        let fit = fit_head(dev, HostMatrix::new(&x, pb.n, pb.d).unwrap(), &pb.labels, pb.k, &config).unwrap();
        assert!(fit.converged || T::DTYPE == DType::F32, "did not converge: {fit:?}");
        // Dense Newton from zero.
        let rows: Vec<usize> = (0..pb.n).collect();
        let mut w = Dense::zeros(pb.k, pb.da());
        let zero_head = Problem {
            bias: vec![0.0; pb.k],
            ..pb.clone()
        };
        for _ in 0..50 {
            let h = full_precision(&zero_head, &w, &rows, tau);
            let g = gradient(&zero_head, &w, &rows).scale(-1.0).add(&w, tau);
            let step = h.inverse().mul(&Dense::from(g.a.len(), 1, g.a.clone()));
            w = w.add(&Dense::from(pb.k, pb.da(), step.a), -1.0);
        }
        let g = gradient(&zero_head, &w, &rows).scale(-1.0).add(&w, tau);
        assert!(g.max_abs() < 1e-10, "reference Newton did not converge");
        let mut got = Vec::new();
        for c in 0..pb.k {
            got.extend(fit.weights[c * pb.d..(c + 1) * pb.d].iter().copied());
            if bias {
                got.push(fit.bias[c]);
            } else {
                assert_eq!(fit.bias[c], T::zero());
            }
        }
        let e = rel_err(&got, &w.a);
        let bound = if T::DTYPE == DType::F32 { 1e-3 } else { 1e-5 };
        assert!(e < bound, "bias={bias}: head err {e}");
        if T::DTYPE == DType::F64 {
            assert!(fit.gradient_norm <= 1e-7 * 40.0, "gradient norm {}", fit.gradient_norm);
        }
    }
    let x = Problem::cast::<T>(&[0.0, 1.0]);
    let e = fit_head(
        dev,
        HostMatrix::new(&x, 1, 2).unwrap(),
        &[0u8],
        1,
        &HeadConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(
        e,
        Error::InvalidArgument {
            argument: "classes",
            ..
        }
    ));
    let e = fit_head(
        dev,
        HostMatrix::new(&x, 1, 2).unwrap(),
        &[5u8],
        2,
        &HeadConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::LabelOutOfRange { .. }));
}

/// Unlearn inverts a Joint update: covariance, precision and mean come back.
pub fn check_unlearn<D: Device, T: Scalar>(dev: &D) {
    let bound = if T::DTYPE == DType::F64 { 1e-9 } else { 2e-3 };
    for (structure, name) in structures() {
        for (bias_in, gamma, m) in [(true, 1.0, 3usize), (false, 1.0, 1), (true, 0.5, 12)] {
            let pb = Problem::random(71 + m as u64, 20 + m, 5, 3, bias_in);
            let pb_fit = pb.first(20);
            let mut post = fit::<D, T>(dev, &pb_fit, structure);
            let before = snapshot(&post);
            let x = Problem::cast::<T>(&pb.phi[20 * pb.d..]);
            let new = HostMatrix::new(&x, m, pb.d).unwrap();
            post.update(
                new,
                &pb.labels[20..],
                &UpdateConfig {
                    rule: UpdateRule::Joint,
                    step: StepControl::Newton { gamma, iterations: 1 },
                    forgetting: 1.0,
                },
            )
            .unwrap();
            post.unlearn(new, &pb.labels[20..], &UnlearnConfig::newton(gamma))
                .unwrap();
            let after = snapshot(&post);
            let f64s = |v: &[T]| v.iter().map(|x| x.as_f64()).collect::<Vec<f64>>();
            for (what, got, want) in [
                ("covariance", &after.3, &before.3),
                ("precision", &after.2, &before.2),
                ("head", &after.0, &before.0),
                ("bias", &after.1, &before.1),
            ] {
                let e = rel_err(got, &f64s(want));
                assert!(e < bound, "{name} bias_in={bias_in} γ={gamma} m={m}: {what} err {e}");
            }
            assert_eq!(after.4, 20);
        }
        // Samples that were never added can make I − BᵀΣB indefinite: a typed error, no change.
        // With unit output weights B = Φᵀ does not depend on the recovered head.
        let pb = Problem::random(5, 2, 4, 3, true);
        let mut post = fit::<D, T>(dev, &pb, structure);
        let before = snapshot(&post);
        let big: Vec<T> = Problem::cast::<T>(&[3.0, -3.0, 3.0, 3.0, 3.0, 3.0, -3.0, 3.0]);
        if structure == Structure::Shared(OutputWeighting::Gaussian) {
            let e = post
                .unlearn(
                    HostMatrix::new(&big, 2, 4).unwrap(),
                    &[0u8, 1],
                    &UnlearnConfig::default(),
                )
                .unwrap_err();
            assert!(matches!(e, Error::NotPositiveDefinite { .. }), "{name}: {e}");
        }
        assert!(
            snapshot(&post) == before,
            "{name}: a failed unlearn changed the posterior"
        );
    }
}

/// The update's objective `J(w) = Σ_j log p(y_j | w) − ½ vec(w − ŵ)ᵀ Π vec(w − ŵ)` in dense f64,
/// Π in the structure's dense form (Full: P × P; Shared: the D_aug × D_aug block of `I_K ⊗ Π_D`).
fn dense_objective(pb: &Problem, w: &Dense, anchor: &Dense, prec: &Dense, rows: &[usize], structure: Structure) -> f64 {
    let likelihood: f64 = rows
        .iter()
        .map(|&i| pb.probs(w, pb.x(i))[pb.labels[i] as usize].ln())
        .sum();
    let diff = w.add(anchor, -1.0);
    let pdiff = match structure {
        Structure::Full => prec.mul(&Dense::from(diff.a.len(), 1, diff.a.clone())).a,
        _ => diff.mul(prec).a,
    };
    likelihood - 0.5 * diff.a.iter().zip(&pdiff).map(|(a, b)| a * b).sum::<f64>()
}

/// Damped Newton with the library's Armijo rule, in dense f64: from ŵ, at most `cap` steps
/// `w ← w + α (Π + H(w))⁻¹ ∇J(w)` with the exact softmax GGN H (whatever the structure, which
/// enters only through Π), α the largest of 1, ½, … (40 halvings) with
/// `J(w + αd) ≥ J(w) + 10⁻⁴ α λ²`, stopping when `λ²/2 ≤ tol · max(1, |J|)`. Returns the
/// mean, the structure's precision `Π + H_s` at it and whether the first full step was
/// rejected.
pub fn dense_damped_newton(
    pb: &Problem,
    anchor: &Dense,
    prec: &Dense,
    rows: &[usize],
    structure: Structure,
    cap: usize,
    tol: f64,
) -> (Dense, Dense, bool) {
    let mut w = anchor.clone();
    let mut steps = 0;
    let mut rejected = false;
    // Π in weight space (P × P).
    let prior = match structure {
        Structure::Full => prec.clone(),
        _ => kron_identity(prec, pb.k),
    };
    loop {
        let objective = dense_objective(pb, &w, anchor, prec, rows, structure);
        let diff = w.add(anchor, -1.0);
        let prior_grad = prior.mul(&Dense::from(diff.a.len(), 1, diff.a.clone()));
        let grad = gradient(pb, &w, rows).add(&Dense::from(w.rows, w.cols, prior_grad.a), -1.0);
        let hessian = prior.add(&full_precision(pb, &w, rows, 0.0), 1.0);
        let zero = Dense::zeros(w.rows, w.cols);
        let d = dense_step(&zero, &hessian.inverse(), &grad, 1.0, Structure::Full);
        let decrement: f64 = grad.a.iter().zip(&d.a).map(|(a, b)| a * b).sum();
        if decrement / 2.0 <= tol * objective.abs().max(1.0) || steps == cap {
            return (w.clone(), add_dense_curvature(pb, &w, rows, structure, prec), rejected);
        }
        let mut alpha = 1.0;
        let mut next = None;
        for _ in 0..=40 {
            let trial = w.add(&d, alpha);
            if dense_objective(pb, &trial, anchor, prec, rows, structure) >= objective + 1e-4 * alpha * decrement {
                next = Some(trial);
                break;
            }
            alpha *= 0.5;
        }
        let Some(next) = next else {
            return (w.clone(), add_dense_curvature(pb, &w, rows, structure, prec), rejected);
        };
        rejected |= steps == 0 && alpha < 1.0;
        w = next;
        steps += 1;
    }
}

/// The default (damped) update of every structure against [`dense_damped_newton`] on a
/// saturated head (logits scaled ×6, the new samples labelled with their least likely class,
/// so that they are confidently wrong, and features ×5, so that their gradient outweighs what J
/// can gain): J rising and bounded by its maximum after 1 and 2 steps; the mode, the precision
/// there and the report after all; and the undamped step on the same batch, which lowers the
/// objective the damped one raises.
pub fn check_damped_update<D: Device, T: Scalar>(dev: &D) {
    let f64_only = T::DTYPE == DType::F64;
    let diag_kron = [(Structure::Diag, "diag"), (Structure::Kron, "kron")];
    for (structure, name) in structures().into_iter().chain(diag_kron) {
        for bias_in in [true, false] {
            let m = 8;
            let mut pb = Problem::random(71, 20 + m, 9, 4, bias_in);
            pb.head.iter_mut().for_each(|v| *v *= 6.0);
            pb.bias.iter_mut().for_each(|v| *v *= 6.0);
            let w_saturated = pb.head_aug();
            pb.phi[20 * pb.d..].iter_mut().for_each(|v| *v *= 5.0);
            for i in 20..20 + m {
                let p = pb.probs(&w_saturated, pb.x(i));
                pb.labels[i] = (0..pb.k).fold(0, |b, c| if p[c] < p[b] { c } else { b }) as u32;
            }
            let fit_rows: Vec<usize> = (0..20).collect();
            let new_rows: Vec<usize> = (20..20 + m).collect();
            let start = fit::<D, T>(dev, &pb.first(20), structure);
            let phi_new = Problem::cast::<T>(&pb.phi[20 * pb.d..]);
            let new = HostMatrix::new(&phi_new, m, pb.d).unwrap();
            let w0 = pb.head_aug();
            // Diag's and Kron's prior enters the dense reference as Π in weight space, and its
            // directions with the exact curvature as Full's do.
            let (reference, prec0) = match structure {
                Structure::Diag | Structure::Kron => (Structure::Full, super::complete::dense_of(&start).0),
                _ => (structure, dense_precision(&pb, &w0, &fit_rows, structure)),
            };
            let tolerance = if f64_only { 1e-13 } else { 1e-7 };
            let (mode, prec, rejected) = dense_damped_newton(&pb, &w0, &prec0, &new_rows, reference, 50, tolerance);
            let j0 = dense_objective(&pb, &w0, &w0, &prec0, &new_rows, reference);
            let top = dense_objective(&pb, &mode, &w0, &prec0, &new_rows, reference);
            for cap in [1usize, 2, 25] {
                let mut post = start.try_clone().unwrap();
                let config = UpdateConfig {
                    step: StepControl::Damped {
                        max_iterations: cap,
                        tolerance,
                        curvature_at: CurvatureAt::Mode,
                    },
                    ..Default::default()
                };
                let report = post.update(new, &pb.labels[20..], &config).unwrap();
                let case = format!("{name}/{bias_in}/cap={cap}");
                assert!(
                    (report.objective_before - j0).abs() < 1e-4 * j0.abs().max(1.0),
                    "{case}: J before"
                );
                assert!(
                    report.objective_after > report.objective_before,
                    "{case}: J did not rise"
                );
                assert!(report.steps <= cap, "{case}: {} steps", report.steps);
                // Directions are solved by preconditioned conjugate gradients to a forcing term
                // that tightens towards the mode: the iterates before it follow Newton's only
                // approximately, and cannot rise above J's maximum.
                if cap < 25 {
                    assert!(
                        report.objective_after <= top + 1e-6 * top.abs().max(1.0),
                        "{case}: above J's maximum"
                    );
                    continue;
                }
                // Two runs that stop at λ²/2 ≤ tol·|J| by different paths agree to about √tol.
                let bound = tol::<T>(prec.rows, 2000.0).max(10.0 * tolerance.sqrt());
                let e = rel_err(&dense_head_of(&post, &pb), &mode.a);
                assert!(e < bound, "{case}: damped mean err {e}");
                if reference == structure {
                    let e = rel_err(&post.precision().unwrap(), &prec.a);
                    assert!(e < bound, "{case}: precision at the mode err {e}");
                }
                assert!(
                    (report.objective_after - top).abs() < 1e-4 * top.abs().max(1.0),
                    "{case}: J after"
                );
                if structure == Structure::Full {
                    assert_eq!(report.undamped_rejected, rejected, "{case}: rejection");
                    assert!(rejected, "{case}: the test batch should need damping");
                }
                assert!(report.converged, "{case}: not converged");
            }
            // The undamped step lowers J on this batch (Full; Shared's unit curvature weights
            // keep its step short).
            if structure != Structure::Full {
                continue;
            }
            let mut undamped = start.try_clone().unwrap();
            let report = undamped
                .update(new, &pb.labels[20..], &UpdateConfig::newton(1.0))
                .unwrap();
            assert!(
                report.objective_after < report.objective_before,
                "{name}/{bias_in}: the undamped step should overshoot here: {report:?}"
            );
        }
    }
}

/// Unlearning a damped update restores the head and the precision; a damped update with its
/// covariance at the start, and several Newton steps, cannot be unlearned (typed error,
/// nothing changed).
pub fn check_unlearn_damped<D: Device, T: Scalar>(dev: &D) {
    for (structure, name) in structures() {
        let m = 6;
        let mut pb = Problem::random(73, 20 + m, 7, 3, true);
        pb.head.iter_mut().for_each(|v| *v *= 4.0);
        let mut post = fit::<D, T>(dev, &pb.first(20), structure);
        let (head0, prec0) = (post.head().unwrap(), post.precision().unwrap());
        let phi_new = Problem::cast::<T>(&pb.phi[20 * pb.d..]);
        let new = HostMatrix::new(&phi_new, m, pb.d).unwrap();
        let tolerance = if T::DTYPE == DType::F64 { 1e-14 } else { 1e-7 };
        let step = StepControl::Damped {
            max_iterations: 50,
            tolerance,
            curvature_at: CurvatureAt::Mode,
        };
        let report = post
            .update(
                new,
                &pb.labels[20..],
                &UpdateConfig {
                    step,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(report.converged && report.steps > 1, "{name}: {report:?}");
        for refused in [
            StepControl::Damped {
                max_iterations: 50,
                tolerance,
                curvature_at: CurvatureAt::Start,
            },
            StepControl::Newton {
                gamma: 1.0,
                iterations: 2,
            },
        ] {
            let before = snapshot(&post);
            let e = post
                .unlearn(
                    new,
                    &pb.labels[20..],
                    &UnlearnConfig {
                        step: refused,
                        ..Default::default()
                    },
                )
                .unwrap_err();
            assert!(matches!(e, Error::Unsupported(_)), "{name}: {e}");
            assert!(snapshot(&post) == before, "{name}: changed by a refused unlearn");
        }
        post.unlearn(
            new,
            &pb.labels[20..],
            &UnlearnConfig {
                step,
                ..Default::default()
            },
        )
        .unwrap();
        // Exact up to how far the update's steps were from the mode: √tolerance.
        let bound = tol::<T>(pb.k * pb.da(), 2000.0).max(10.0 * tolerance.sqrt());
        let want: Vec<f64> = head0.iter().map(|v| v.as_f64()).collect();
        let e = rel_err(&post.head().unwrap(), &want);
        assert!(e < bound, "{name}: head after unlearning err {e}");
        let want: Vec<f64> = prec0.iter().map(|v| v.as_f64()).collect();
        let e = rel_err(&post.precision().unwrap(), &want);
        assert!(e < bound, "{name}: precision after unlearning err {e}");
        assert_eq!(post.samples_seen(), 20);
    }
}
