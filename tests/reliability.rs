//! Long runs, extreme values, near-singular precisions and random sequences of valid and
//! invalid calls: typed errors, unchanged posteriors, bounded drift.

mod common;

use common::complete::{Case, dense_of};
use common::suite::{dense_head_of, snapshot};
use common::{Dense, Problem, jacobian};
use laplace_update::*;
use proptest::prelude::*;

/// 100,000 Sequential updates in f32 at D = 256: drift with the default refresh policy stays
/// below its bound; without it, it is reported (not bounded).
#[test]
fn long_sequential_runs_keep_drift_bounded() {
    let cpu = CpuDevice::new(2).unwrap();
    let (d, k, batch, batches) = (256usize, 10usize, 100usize, 1000usize);
    let mut rng = common::Rng::new(1);
    let head: Vec<f32> = rng.normals(k * d, 0.5).into_iter().map(|v| v as f32).collect();
    let start: Vec<f32> = rng.normals(50 * d, 1.0 / 16.0).into_iter().map(|v| v as f32).collect();
    let labels: Vec<u32> = (0..50).map(|i| (i % k) as u32).collect();
    let config = FitConfig {
        structure: Structure::Shared(OutputWeighting::Gaussian),
        prior_precision: 1.0,
        bias: BiasMode::Fixed,
        ..Default::default()
    };
    let fit = || {
        Posterior::fit(
            &cpu,
            HostMatrix::new(&start, 50, d).unwrap(),
            &labels,
            HostMatrix::new(&head, k, d).unwrap(),
            None,
            &config,
        )
        .unwrap()
    };
    let mut guarded = fit();
    let mut unguarded = fit();
    unguarded.set_refresh_policy(None).unwrap();
    let rule = UpdateConfig {
        rule: UpdateRule::Sequential,
        ..Default::default()
    };
    for b in 0..batches {
        let x: Vec<f32> = rng
            .normals(batch * d, 1.0 / 16.0)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let y: Vec<u32> = (0..batch).map(|i| ((i + b) % k) as u32).collect();
        guarded
            .update(HostMatrix::new(&x, batch, d).unwrap(), &y, &rule)
            .unwrap();
        unguarded
            .update(HostMatrix::new(&x, batch, d).unwrap(), &y, &rule)
            .unwrap();
    }
    assert_eq!(guarded.samples_seen(), 50 + batch * batches);
    let (with, without) = (guarded.drift().unwrap(), unguarded.drift().unwrap());
    eprintln!(
        "drift after {} sequential updates (f32, D = {d}): {with:.3e} with the default refresh policy, {without:.3e} without",
        batch * batches
    );
    let bound = RefreshPolicy::default().threshold;
    assert!((with as f64) < bound, "drift {with} above the policy's bound {bound}");
    assert!(with.is_finite() && without.is_finite());
}

/// Logits of ±1e4: every link and an update stay finite.
#[test]
fn extreme_logits_give_no_nan() {
    let cpu = CpuDevice::new(1).unwrap();
    for structure in [
        Structure::Full,
        Structure::Shared(OutputWeighting::Categorical),
        Structure::Diag,
        Structure::Kron,
    ] {
        let head = [1e4f32, -1e4, -1e4, 1e4, 0.0, 5e3];
        let x = [1.0f32, 0.0, 0.0, 1.0, 1.0, -1.0];
        let config = FitConfig {
            structure,
            ..Default::default()
        };
        let mut post = Posterior::fit(
            &cpu,
            HostMatrix::new(&x, 3, 2).unwrap(),
            &[1u8, 0, 2],
            HostMatrix::new(&head, 3, 2).unwrap(),
            None,
            &config,
        )
        .unwrap();
        for link in [
            Link::default(),
            Link::MonteCarlo { samples: 50, seed: 1 },
            Link::Bridge,
            Link::None,
        ] {
            let p = post.predict(HostMatrix::new(&x, 3, 2).unwrap(), link).unwrap();
            assert!(
                p.probs.iter().all(|v| v.is_finite()),
                "{structure:?} {link:?}: {:?}",
                p.probs
            );
            for row in p.probs.chunks(3) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
            }
        }
        post.update(
            HostMatrix::new(&x[..2], 1, 2).unwrap(),
            &[2u8],
            &UpdateConfig::default(),
        )
        .unwrap();
        assert!(post.head().unwrap().iter().all(|v| v.is_finite()));
        assert!(post.covariance().unwrap().iter().all(|v| v.is_finite()));
    }
}

/// τ = 1e-12 with rank-deficient features: a typed error, never a silently wrong covariance.
#[test]
fn near_singular_precision_is_a_typed_error() {
    let cpu = CpuDevice::new(1).unwrap();
    // Three identical columns and one zero column: rank 1 out of 4.
    let x: Vec<f64> = (0..20)
        .flat_map(|i| {
            let v = (i as f64 * 0.37).sin();
            [v, v, v, 0.0]
        })
        .collect();
    let labels: Vec<u32> = (0..20).map(|i| (i % 2) as u32).collect();
    let head = [0.3f64, -0.1, 0.2, 0.0, -0.3, 0.1, -0.2, 0.0];
    for structure in [Structure::Full, Structure::Shared(OutputWeighting::Gaussian)] {
        let config = FitConfig {
            structure,
            prior_precision: 1e-12,
            bias: BiasMode::Fixed,
            ..Default::default()
        };
        let f32x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let f32h: Vec<f32> = head.iter().map(|&v| v as f32).collect();
        let r32 = Posterior::fit(
            &cpu,
            HostMatrix::new(&f32x, 20, 4).unwrap(),
            &labels,
            HostMatrix::new(&f32h, 2, 4).unwrap(),
            None,
            &config,
        );
        let r64 = Posterior::fit(
            &cpu,
            HostMatrix::new(&x, 20, 4).unwrap(),
            &labels,
            HostMatrix::new(&head, 2, 4).unwrap(),
            None,
            &config,
        );
        for (name, result) in [
            ("f32", r32.map(|p| p.drift().unwrap() as f64)),
            ("f64", r64.map(|p| p.drift().unwrap())),
        ] {
            match result {
                Err(Error::NotPositiveDefinite { .. } | Error::IllConditioned { .. }) => {}
                // A covariance that comes back must be an inverse.
                Ok(drift) => assert!(
                    drift <= error::ILL_CONDITIONED_DRIFT,
                    "{structure:?} {name}: drift {drift}"
                ),
                Err(e) => panic!("{structure:?} {name}: unexpected {e}"),
            }
        }
    }
}

/// One call of a random sequence.
#[derive(Debug, Clone)]
enum Call {
    Update { rows: usize, gamma: f64, bad: Option<Bad> },
    Unlearn,
    Predict { bad: Option<Bad> },
}

/// An invalid input mixed into a call.
#[derive(Debug, Clone, Copy)]
enum Bad {
    NanFeature,
    InfFeature,
    LabelOutOfRange,
    WrongWidth,
    Empty,
    NanGamma,
}

fn call() -> impl Strategy<Value = Call> {
    let bad = prop_oneof![
        Just(None),
        Just(None),
        Just(Some(Bad::NanFeature)),
        Just(Some(Bad::InfFeature)),
        Just(Some(Bad::LabelOutOfRange)),
        Just(Some(Bad::WrongWidth)),
        Just(Some(Bad::Empty)),
        Just(Some(Bad::NanGamma)),
    ];
    prop_oneof![
        (1usize..4, 0.5f64..1.0, bad.clone()).prop_map(|(rows, gamma, bad)| Call::Update { rows, gamma, bad }),
        Just(Call::Unlearn),
        bad.prop_map(|bad| Call::Predict { bad }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random sequences of updates, unlearns and predictions with invalid inputs mixed in:
    /// after a failed call the posterior is bit-identical to before; after a successful one it
    /// matches the dense reference (precision, mean, covariance, predictive).
    #[test]
    fn transactions_hold_across_random_sequences(calls in prop::collection::vec(call(), 1..8), shared in any::<bool>()) {
        let cpu = CpuDevice::new(1).unwrap();
        let structure = if shared { Structure::Shared(OutputWeighting::Gaussian) } else { Structure::Full };
        let case = Case::new(5, 60, 3, 3, true);
        let pb = &case.pb;
        let config = case.config(structure, Likelihood::Classification, Curvature::Ggn, 16);
        let mut post = case.fit::<CpuDevice, f64>(&cpu, 20, &config).unwrap();
        let (mut prec, _) = dense_of(&post);
        let mut next = 20usize;
        let mut added: Vec<(usize, usize, f64, Dense)> = Vec::new();
        let p = pb.k * pb.da();
        for call in calls {
            let before = snapshot(&post);
            let result = match &call {
                Call::Update { rows, gamma, bad } => {
                    let rows = (*rows).min(60 - next).max(1);
                    let mut x = pb.phi[next * pb.d..(next + rows) * pb.d].to_vec();
                    let mut y = pb.labels[next..next + rows].to_vec();
                    let mut width = pb.d;
                    let mut g = *gamma;
                    match bad {
                        Some(Bad::NanFeature) => x[0] = f64::NAN,
                        Some(Bad::InfFeature) => x[1] = f64::NEG_INFINITY,
                        Some(Bad::LabelOutOfRange) => y[0] = 7,
                        Some(Bad::WrongWidth) => { width = pb.d - 1; x.truncate((x.len() / width) * width); }
                        Some(Bad::Empty) => { x.clear(); y.clear(); }
                        Some(Bad::NanGamma) => g = f64::NAN,
                        None => {}
                    }
                    let n = x.len().checked_div(width).unwrap_or(0);
                    let head = Dense::from(pb.k, pb.da(), dense_head_of(&post, pb));
                    let r = HostMatrix::new(&x, n, width).and_then(|m| post.update(m, &y, &UpdateConfig::newton(g)));
                    if r.is_ok() {
                        let idx: Vec<usize> = (next..next + rows).collect();
                        let curv = case.curvature(&head, &idx, structure, Likelihood::Classification, Curvature::Ggn);
                        prec = prec.add(&curv, 1.0);
                        let cov = prec.inverse();
                        let want = common::complete::step(&head, &cov, &case.gradient(&head, &idx, Likelihood::Classification), g);
                        let got = dense_head_of(&post, pb);
                        prop_assert!(common::rel_err(&got, &want.a) < 1e-8, "mean");
                        added.push((next, rows, g, curv));
                        next += rows;
                    }
                    r.map(|_| ())
                }
                Call::Unlearn => match added.pop() {
                    Some((start, rows, g, curv)) => {
                        let x = pb.phi[start * pb.d..(start + rows) * pb.d].to_vec();
                        let r = post.unlearn(HostMatrix::new(&x, rows, pb.d).unwrap(), &pb.labels[start..start + rows],
                                             &UnlearnConfig::newton(g));
                        if r.is_ok() { prec = prec.add(&curv, -1.0); next = start; } else { added.push((start, rows, g, curv)); }
                        r
                    }
                    None => Ok(()),
                },
                Call::Predict { bad } => {
                    let mut x = pb.phi[50 * pb.d..53 * pb.d].to_vec();
                    match bad {
                        Some(Bad::NanFeature) => x[2] = f64::NAN,
                        Some(Bad::InfFeature) => x[0] = f64::INFINITY,
                        Some(Bad::Empty) => x.clear(),
                        _ => {}
                    }
                    let n = x.len() / pb.d;
                    match post.predict(HostMatrix::new(&x, n, pb.d).unwrap(), Link::None) {
                        Ok(pred) => {
                            let (_, cov) = dense_of(&post);
                            for i in 0..n {
                                let j = jacobian(&pb.phi_aug(&x[i * pb.d..(i + 1) * pb.d]), pb.k);
                                let sf = j.mul(&cov).mul(&j.t());
                                for a in 0..pb.k {
                                    prop_assert!((pred.logit_cov_at(i, a, a) - sf.at(a, a)).abs() < 1e-8 * sf.max_abs().max(1.0));
                                }
                            }
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match result {
                Ok(()) => {
                    let (got_p, got_c) = dense_of(&post);
                    prop_assert!(common::rel_err(&Problem::cast::<f64>(&got_p.a), &prec.a) < 1e-9, "precision");
                    prop_assert!(common::rel_err(&Problem::cast::<f64>(&got_c.a), &prec.inverse().a) < 1e-7, "covariance");
                    prop_assert_eq!(got_p.rows, p);
                }
                Err(_) => prop_assert!(snapshot(&post) == before, "{:?} failed but changed the posterior", call),
            }
        }
    }
}
