//! Active-learning strategies against brute-force computations on small pools.

mod common;

use common::complete::{Case, dense_of};
use common::{Dense, Rng, softmax};
use laplace_update::active::cluster::{Points, k_center, kmeans_pp_seeds};
use laplace_update::active::{
    LabelSource, Labelled, LookAhead, Pool, Strategy, UpdateDriven, UpdateMethod, negative_log_likelihood,
    updated_probabilities,
};
use laplace_update::random::SplitMix64;
use laplace_update::*;

const D: usize = 4;
const K: usize = 3;

struct Setup {
    cpu: CpuDevice,
    post: Posterior<CpuDevice, f64>,
    pool: Vec<f64>,
    labeled: Vec<f64>,
    labeled_y: Vec<u32>,
    oracle: Vec<u32>,
}

impl Setup {
    fn new(structure: Structure, n_pool: usize) -> Setup {
        let cpu = CpuDevice::new(1).unwrap();
        let mut rng = Rng::new(3);
        let labeled = rng.normals(12 * D, 1.0);
        let labeled_y: Vec<u32> = (0..12).map(|i| (i % K) as u32).collect();
        let head = rng.normals(K * D, 1.0);
        let pool = rng.normals(n_pool * D, 1.0);
        let oracle: Vec<u32> = (0..n_pool).map(|_| rng.below(K) as u32).collect();
        let config = FitConfig {
            structure,
            prior_precision: 0.5,
            ..Default::default()
        };
        let post = Posterior::fit(
            &cpu,
            HostMatrix::new(&labeled, 12, D).unwrap(),
            &labeled_y,
            HostMatrix::new(&head, K, D).unwrap(),
            Some(&[0.1, -0.2, 0.3]),
            &config,
        )
        .unwrap();
        Setup {
            cpu,
            post,
            pool,
            labeled,
            labeled_y,
            oracle,
        }
    }
    fn pool(&self) -> Pool<'_, f64> {
        Pool {
            candidates: HostMatrix::new(&self.pool, self.pool.len() / D, D).unwrap(),
            labeled: HostMatrix::new(&self.labeled, self.labeled.len() / D, D).unwrap(),
        }
    }
    fn n(&self) -> usize {
        self.pool.len() / D
    }
    fn probs(&self, link: Link) -> Vec<Vec<f64>> {
        let pred = self.post.predict(self.pool().candidates, link).unwrap();
        pred.probs.chunks(K).map(|r| r.to_vec()).collect()
    }
}

fn argsort_desc(v: &[f64]) -> Vec<usize> {
    let mut i: Vec<usize> = (0..v.len()).collect();
    i.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    i
}

#[test]
fn uncertainty_scores_match_their_formulas() {
    let s = Setup::new(Structure::Full, 15);
    let probs = s.probs(Link::default());
    let entropy: Vec<f64> = probs
        .iter()
        .map(|p| -p.iter().map(|x| x * x.ln()).sum::<f64>())
        .collect();
    let margin: Vec<f64> = probs
        .iter()
        .map(|p| {
            let mut q = p.clone();
            q.sort_by(|a, b| b.total_cmp(a));
            q[1] - q[0]
        })
        .collect();
    let confidence: Vec<f64> = probs
        .iter()
        .map(|p| 1.0 - p.iter().copied().fold(0.0, f64::max))
        .collect();
    for (strategy, want) in [
        (Strategy::Entropy, &entropy),
        (Strategy::Margin, &margin),
        (Strategy::LeastConfidence, &confidence),
    ] {
        let got = strategy.scores(&s.post, s.pool().candidates, 0).unwrap();
        for (g, w) in got.iter().zip(want.iter()) {
            assert!((g - w).abs() < 1e-12, "{strategy:?}: {g} vs {w}");
        }
        let picks = strategy.select(&s.post, &s.pool(), 4, 0).unwrap();
        assert_eq!(picks, argsort_desc(want)[..4].to_vec(), "{strategy:?}");
    }
    assert!(matches!(
        Strategy::Badge.scores(&s.post, s.pool().candidates, 0),
        Err(Error::Unsupported(_))
    ));
}

/// BALD against `H(E p) − E H(p)` by an independent Monte Carlo with many more draws.
#[test]
fn bald_is_the_mutual_information() {
    let s = Setup::new(Structure::Full, 6);
    let got = Strategy::Bald { samples: 200_000 }
        .scores(&s.post, s.pool().candidates, 1)
        .unwrap();
    let pred = s.post.predict(s.pool().candidates, Link::None).unwrap();
    let mut rng = Rng::new(99);
    for (i, &bald) in got.iter().enumerate() {
        // Σ_f = V diag(λ) Vᵀ by Jacobi-free means: a Cholesky of Σ_f + tiny jitter.
        let mut l = Dense::zeros(K, K);
        let mut c = Dense::zeros(K, K);
        for a in 0..K {
            for b in 0..K {
                c.set(a, b, pred.logit_cov_at(i, a, b) + if a == b { 1e-10 } else { 0.0 });
            }
        }
        for j in 0..K {
            let dj = c.at(j, j) - (0..j).map(|p| l.at(j, p).powi(2)).sum::<f64>();
            l.set(j, j, dj.max(0.0).sqrt());
            for r in j + 1..K {
                let t = c.at(r, j) - (0..j).map(|p| l.at(r, p) * l.at(j, p)).sum::<f64>();
                l.set(r, j, if l.at(j, j) > 0.0 { t / l.at(j, j) } else { 0.0 });
            }
        }
        let mean = &pred.logit_mean[i * K..(i + 1) * K];
        let draws = 200_000;
        let mut avg = [0.0; K];
        let mut h = 0.0;
        for _ in 0..draws {
            let z = rng.normals(K, 1.0);
            let f: Vec<f64> = (0..K)
                .map(|a| mean[a] + (0..K).map(|b| l.at(a, b) * z[b]).sum::<f64>())
                .collect();
            let p = softmax(&f);
            h -= p.iter().map(|x| x * x.ln()).sum::<f64>();
            avg.iter_mut().zip(&p).for_each(|(a, b)| *a += b / draws as f64);
        }
        let want = -avg.iter().map(|x| x * x.ln()).sum::<f64>() - h / draws as f64;
        assert!((bald - want).abs() < 5e-3, "candidate {i}: BALD {bald} vs {want}");
    }
}

/// BADGE starts at the largest gradient embedding `(p − e_ŷ) ⊗ [φ, 1]`.
#[test]
fn badge_starts_at_the_largest_gradient_embedding() {
    let s = Setup::new(Structure::Full, 20);
    let probs = s.probs(Link::None);
    let norms: Vec<f64> = probs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let y = (0..K).fold(0, |b, c| if p[c] > p[b] { c } else { b });
            let r: f64 = (0..K).map(|c| (p[c] - f64::from(u8::from(c == y))).powi(2)).sum();
            let x: f64 = s.pool[i * D..(i + 1) * D].iter().map(|v| v * v).sum::<f64>() + 1.0;
            r * x
        })
        .collect();
    let picks = Strategy::Badge.select(&s.post, &s.pool(), 5, 7).unwrap();
    assert_eq!(picks[0], argsort_desc(&norms)[0]);
    let mut sorted = picks.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 5);
}

/// The k-means++ law: after a fixed first center, the next is drawn with probability ∝ D².
#[test]
fn kmeans_pp_seeding_follows_the_d2_law() {
    let xs = [0.0f64, 1.0, 2.0, 4.0, 7.0];
    let dist2 = |a: usize, b: usize| (xs[a] - xs[b]).powi(2);
    let trials = 40_000;
    let mut counts = [0usize; 5];
    for seed in 0..trials {
        let picks = kmeans_pp_seeds(5, 2, Some(0), dist2, &mut SplitMix64::new(seed));
        assert_eq!(picks[0], 0);
        counts[picks[1]] += 1;
    }
    let total: f64 = xs.iter().map(|x| x * x).sum();
    for i in 0..5 {
        let want = xs[i] * xs[i] / total;
        let got = counts[i] as f64 / trials as f64;
        assert!((got - want).abs() < 0.01, "point {i}: frequency {got}, law {want}");
    }
}

/// Greedy k-center: the first pick is the candidate farthest from the labelled set, and the
/// covering radius is within twice the optimum found by brute force.
#[test]
fn coreset_is_a_two_approximate_k_center() {
    let s = Setup::new(Structure::Full, 11);
    let b = 3;
    let picks = Strategy::CoreSet.select(&s.post, &s.pool(), b, 0).unwrap();
    let x = |i: usize| &s.pool[i * D..(i + 1) * D];
    let l = |j: usize| &s.labeled[j * D..(j + 1) * D];
    let d2 = |a: &[f64], c: &[f64]| a.iter().zip(c).map(|(p, q)| (p - q).powi(2)).sum::<f64>();
    let to_labeled = |i: usize| (0..12).map(|j| d2(x(i), l(j))).fold(f64::INFINITY, f64::min);
    let n = s.n();
    let far = (0..n).fold(0, |a, i| if to_labeled(i) > to_labeled(a) { i } else { a });
    assert_eq!(picks[0], far);
    let radius = |set: &[usize]| {
        (0..n)
            .map(|i| set.iter().map(|&c| d2(x(i), x(c))).fold(to_labeled(i), f64::min))
            .fold(0.0, f64::max)
            .sqrt()
    };
    let mut best = f64::INFINITY;
    for a in 0..n {
        for b2 in a + 1..n {
            for c in b2 + 1..n {
                best = best.min(radius(&[a, b2, c]));
            }
        }
    }
    assert!(
        radius(&picks) <= 2.0 * best + 1e-12,
        "{} vs optimum {best}",
        radius(&picks)
    );
    // The library's own k-center on plain points, no labelled set: starts at candidate 0.
    let p = Points::new(s.pool.clone(), n, D);
    assert_eq!(k_center(&p, vec![f64::INFINITY; n], 2)[0], 0);
}

/// BAIT against the same forward–backward greedy written with dense inverses:
/// `J(S) = tr((M + Σ_{x∈S} V_x)⁻¹ F)`.
#[test]
fn bait_minimises_the_fisher_objective() {
    bait_against_dense_greedy(14, 3);
}

/// 80 forward picks and 40 removals: the blocked inverse folds its first block of 64 picks
/// mid-way through the forward pass and holds removals pending across the second.
#[test]
fn bait_across_blocks_minimises_the_fisher_objective() {
    bait_against_dense_greedy(150, 40);
}

fn bait_against_dense_greedy(n_pool: usize, b: usize) {
    let s = Setup::new(Structure::Full, n_pool);
    let picks = Strategy::Bait.select(&s.post, &s.pool(), b, 0).unwrap();
    let da = D + 1;
    let weight = |p: &[f64]| (1.0 - p.iter().map(|v| v * v).sum::<f64>()) / K as f64;
    let v_of = |x: &[f64], p: &[f64]| {
        let mut v: Vec<f64> = x.iter().copied().chain([1.0]).collect();
        v.iter_mut().for_each(|t| *t *= weight(p).sqrt());
        Dense::from(da, 1, v)
    };
    let pool_probs = s.probs(Link::None);
    let lab_pred = s
        .post
        .predict(HostMatrix::new(&s.labeled, 12, D).unwrap(), Link::None)
        .unwrap();
    let pool_v: Vec<Dense> = (0..s.n())
        .map(|i| v_of(&s.pool[i * D..(i + 1) * D], &pool_probs[i]))
        .collect();
    let lab_v: Vec<Dense> = (0..12)
        .map(|j| v_of(&s.labeled[j * D..(j + 1) * D], &lab_pred.probs[j * K..(j + 1) * K]))
        .collect();
    let outer = |v: &Dense| v.mul(&v.t());
    let m0 = lab_v
        .iter()
        .fold(Dense::identity(da).scale(0.5), |a, v| a.add(&outer(v), 1.0));
    let f = lab_v
        .iter()
        .chain(&pool_v)
        .fold(Dense::zeros(da, da), |a, v| a.add(&outer(v), 1.0));
    let objective = |set: &[usize]| {
        let m = set.iter().fold(m0.clone(), |a, &i| a.add(&outer(&pool_v[i]), 1.0));
        let prod = m.inverse().mul(&f);
        (0..da).map(|i| prod.at(i, i)).sum::<f64>()
    };
    let mut chosen: Vec<usize> = Vec::new();
    for _ in 0..2 * b {
        let best = (0..s.n())
            .filter(|i| !chosen.contains(i))
            .min_by(|&a, &c| {
                let mut sa = chosen.clone();
                sa.push(a);
                let mut sc = chosen.clone();
                sc.push(c);
                objective(&sa).total_cmp(&objective(&sc))
            })
            .unwrap();
        chosen.push(best);
    }
    while chosen.len() > b {
        let drop = (0..chosen.len())
            .min_by(|&a, &c| {
                let without = |slot: usize| {
                    let mut t = chosen.clone();
                    t.remove(slot);
                    objective(&t)
                };
                without(a).total_cmp(&without(c))
            })
            .unwrap();
        chosen.remove(drop);
    }
    assert_eq!(
        picks,
        chosen,
        "objective {} vs {}",
        objective(&picks),
        objective(&chosen)
    );
}

/// TypiClust on three separated blobs with nothing labelled: one pick per blob, each the most
/// typical member by brute force.
#[test]
fn typiclust_picks_the_most_typical_point_of_each_cluster() {
    let cpu = CpuDevice::new(1).unwrap();
    let mut rng = Rng::new(5);
    let centers = [[0.0, 0.0, 0.0, 0.0], [30.0, 0.0, 0.0, 0.0], [0.0, 30.0, 0.0, 0.0]];
    let sizes = [12usize, 9, 6];
    let mut pool = Vec::new();
    let mut blob = Vec::new();
    for (c, &size) in sizes.iter().enumerate() {
        for _ in 0..size {
            pool.extend(rng.normals(D, 1.0).iter().zip(&centers[c]).map(|(a, b)| a + b));
            blob.push(c);
        }
    }
    let n = blob.len();
    let head = vec![0.0f64; K * D];
    let post = Posterior::prior(&cpu, HostMatrix::new(&head, K, D).unwrap(), None, &FitConfig::default()).unwrap();
    let p = Pool {
        candidates: HostMatrix::new(&pool, n, D).unwrap(),
        labeled: HostMatrix::new(&[], 0, D).unwrap(),
    };
    let picks = Strategy::TypiClust.select(&post, &p, 3, 11).unwrap();
    let dist = |a: usize, b: usize| {
        (0..D)
            .map(|t| (pool[a * D + t] - pool[b * D + t]).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    for (slot, &pick) in picks.iter().enumerate() {
        // Largest cluster first.
        assert_eq!(blob[pick], slot, "pick {slot} is from blob {}", blob[pick]);
        let members: Vec<usize> = (0..n).filter(|&i| blob[i] == slot).collect();
        let typicality = |i: usize| {
            let mut d: Vec<f64> = members.iter().filter(|&&j| j != i).map(|&j| dist(i, j)).collect();
            d.sort_by(f64::total_cmp);
            let m = 20.min(d.len());
            1.0 / (d[..m].iter().sum::<f64>() / m as f64)
        };
        let best = members
            .iter()
            .copied()
            .fold(members[0], |a, i| if typicality(i) > typicality(a) { i } else { a });
        assert_eq!(pick, best);
    }
}

#[test]
fn every_strategy_is_deterministic_under_a_seed() {
    let s = Setup::new(Structure::Shared(OutputWeighting::Gaussian), 25);
    for (_, strategy) in Strategy::ALL {
        let a = strategy.select(&s.post, &s.pool(), 4, 42).unwrap();
        let b = strategy.select(&s.post, &s.pool(), 4, 42).unwrap();
        assert_eq!(a, b, "{strategy:?}");
        let mut u = a.clone();
        u.sort_unstable();
        u.dedup();
        assert_eq!(u.len(), 4, "{strategy:?} repeated a pick: {a:?}");
    }
    let r1 = Strategy::Random.select(&s.post, &s.pool(), 4, 1).unwrap();
    let r2 = Strategy::Random.select(&s.post, &s.pool(), 4, 2).unwrap();
    assert_ne!(r1, r2);
    assert!(matches!(
        Strategy::Margin.select(&s.post, &s.pool(), 0, 0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        Strategy::Margin.select(&s.post, &s.pool(), 26, 0),
        Err(Error::InvalidArgument { .. })
    ));
}

/// With b = 1 the wrapper is the base strategy; with b > 1 its first pick is, and the later
/// picks are the base strategy's choices on the posterior updated with the earlier ones.
#[test]
fn update_driven_selection_updates_between_picks() {
    let s = Setup::new(Structure::Full, 18);
    let update = UpdateConfig::default();
    for (_, base) in Strategy::ALL {
        for labels in [
            LabelSource::Oracle(&s.oracle),
            LabelSource::Predicted,
            LabelSource::Expected,
        ] {
            let driven = UpdateDriven { base, labels, update };
            let one = driven.select(&s.post, &s.pool(), 1, 3).unwrap();
            assert_eq!(one, base.select(&s.post, &s.pool(), 1, 3).unwrap(), "{base:?}");
        }
    }
    let driven = UpdateDriven {
        base: Strategy::Margin,
        labels: LabelSource::Oracle(&s.oracle),
        update,
    };
    let picks = driven.select(&s.post, &s.pool(), 3, 0).unwrap();
    // Replay by hand: update with the first pick and its true label, remove it, rescore.
    let mut post = s.post.try_clone().unwrap();
    let first = picks[0];
    post.update(
        HostMatrix::new(&s.pool[first * D..(first + 1) * D], 1, D).unwrap(),
        &[s.oracle[first]],
        &update,
    )
    .unwrap();
    let rest: Vec<usize> = (0..s.n()).filter(|&i| i != first).collect();
    let x: Vec<f64> = rest
        .iter()
        .flat_map(|&i| s.pool[i * D..(i + 1) * D].iter().copied())
        .collect();
    let scores = Strategy::Margin
        .scores(&post, HostMatrix::new(&x, rest.len(), D).unwrap(), 0)
        .unwrap();
    assert_eq!(picks[1], rest[argsort_desc(&scores)[0]]);
    assert!(matches!(
        UpdateDriven {
            base: Strategy::Margin,
            labels: LabelSource::Oracle(&s.oracle[..3]),
            update
        }
        .select(&s.post, &s.pool(), 2, 0),
        Err(Error::ShapeMismatch { .. })
    ));
}

/// The update baselines against their definitions, and the look-ahead's choice against the
/// candidates it had.
#[test]
fn look_ahead_and_update_baselines() {
    let s = Setup::new(Structure::Full, 20);
    let cpu = &s.cpu;
    let batch_idx = [2usize, 5, 9];
    let bx: Vec<f64> = batch_idx
        .iter()
        .flat_map(|&i| s.pool[i * D..(i + 1) * D].iter().copied())
        .collect();
    let by: Vec<u32> = batch_idx.iter().map(|&i| s.oracle[i]).collect();
    let batch = Labelled {
        features: HostMatrix::new(&bx, 3, D).unwrap(),
        labels: &by,
    };
    let seen = Labelled {
        features: HostMatrix::new(&s.labeled, 12, D).unwrap(),
        labels: &s.labeled_y,
    };
    let eval = HostMatrix::new(&s.pool[..5 * D], 5, D).unwrap();
    // First order: w' = ŵ + η Σ_j (e_y − p) ⊗ [φ, 1].
    let eta = 0.3;
    let got = updated_probabilities(
        UpdateMethod::FirstOrder { learning_rate: eta },
        &s.post,
        batch,
        seen,
        eval,
    )
    .unwrap();
    let (w, b) = (s.post.head().unwrap(), s.post.bias().unwrap());
    let p_batch = s.post.predict(batch.features, Link::None).unwrap().probs;
    let mut w2 = w.clone();
    let mut b2 = b.clone();
    for j in 0..3 {
        for c in 0..K {
            let r = f64::from(u8::from(by[j] as usize == c)) - p_batch[j * K + c];
            for t in 0..D {
                w2[c * D + t] += eta * r * bx[j * D + t];
            }
            b2[c] += eta * r;
        }
    }
    for i in 0..5 {
        let f: Vec<f64> = (0..K)
            .map(|c| b2[c] + (0..D).map(|t| w2[c * D + t] * s.pool[i * D + t]).sum::<f64>())
            .collect();
        let p = softmax(&f);
        for c in 0..K {
            assert!((got[i * K + c] - p[c]).abs() < 1e-12);
        }
    }
    // Monte Carlo reweighting against weights recomputed from the same posterior samples.
    let samples = 50;
    let got = updated_probabilities(
        UpdateMethod::MonteCarloReweighting { samples, seed: 4 },
        &s.post,
        batch,
        seen,
        eval,
    )
    .unwrap();
    let heads = s.post.sample_heads(samples, 4).unwrap();
    let da = D + 1;
    let logits = |h: &[f64], x: &[f64]| -> Vec<f64> {
        (0..K)
            .map(|c| h[c * da + D] + (0..D).map(|t| h[c * da + t] * x[t]).sum::<f64>())
            .collect()
    };
    let mut lw = Vec::new();
    for h in heads.chunks(K * da) {
        lw.push(
            (0..3)
                .map(|j| softmax(&logits(h, &bx[j * D..(j + 1) * D]))[by[j] as usize].ln())
                .sum::<f64>(),
        );
    }
    let m = lw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = lw.iter().map(|l| (l - m).exp()).sum();
    for i in 0..5 {
        let mut want = [0.0; K];
        for (h, l) in heads.chunks(K * da).zip(&lw) {
            let p = softmax(&logits(h, &s.pool[i * D..(i + 1) * D]));
            want.iter_mut()
                .zip(&p)
                .for_each(|(a, q)| *a += (l - m).exp() / total * q);
        }
        for c in 0..K {
            assert!((got[i * K + c] - want[c]).abs() < 1e-12);
        }
    }
    // Refit: the MAP head on the union.
    let config = HeadConfig {
        prior_precision: 0.5,
        ..Default::default()
    };
    let got = updated_probabilities(UpdateMethod::Refit(config), &s.post, batch, seen, eval).unwrap();
    let mut ux = s.labeled.clone();
    ux.extend_from_slice(&bx);
    let mut uy = s.labeled_y.clone();
    uy.extend_from_slice(&by);
    let fit = fit_head(cpu, HostMatrix::new(&ux, 15, D).unwrap(), &uy, K, &config).unwrap();
    for i in 0..5 {
        let f: Vec<f64> = (0..K)
            .map(|c| fit.bias[c] + (0..D).map(|t| fit.weights[c * D + t] * s.pool[i * D + t]).sum::<f64>())
            .collect();
        let p = softmax(&f);
        for c in 0..K {
            assert!((got[i * K + c] - p[c]).abs() < 1e-12);
        }
    }
    // Look-ahead: its batch is at least as good on validation as the random and margin ones.
    let val_x: Vec<f64> = Rng::new(8).normals(10 * D, 1.0);
    let val_y: Vec<u32> = (0..10).map(|i| (i % K) as u32).collect();
    let val = Labelled {
        features: HostMatrix::new(&val_x, 10, D).unwrap(),
        labels: &val_y,
    };
    let method = UpdateMethod::Laplace(UpdateConfig::default());
    let look = LookAhead {
        method,
        random_batches: 2,
    };
    let chosen = look.select(&s.post, &s.pool(), &s.oracle, seen, val, 3, 6).unwrap();
    let loss = |picks: &[usize]| {
        let x: Vec<f64> = picks
            .iter()
            .flat_map(|&i| s.pool[i * D..(i + 1) * D].iter().copied())
            .collect();
        let y: Vec<u32> = picks.iter().map(|&i| s.oracle[i]).collect();
        let b = Labelled {
            features: HostMatrix::new(&x, picks.len(), D).unwrap(),
            labels: &y,
        };
        negative_log_likelihood(
            &updated_probabilities(method, &s.post, b, seen, val.features).unwrap(),
            &val_y,
        )
    };
    for other in [
        Strategy::Random.select(&s.post, &s.pool(), 3, 6).unwrap(),
        Strategy::Random.select(&s.post, &s.pool(), 3, 7).unwrap(),
        Strategy::Margin.select(&s.post, &s.pool(), 3, 6).unwrap(),
    ] {
        assert!(loss(&chosen) <= loss(&other) + 1e-12);
    }
}

/// Posterior samples have the posterior's mean and covariance, for every structure.
#[test]
fn sampled_heads_have_the_posterior_moments() {
    for structure in [
        Structure::Full,
        Structure::Shared(OutputWeighting::Gaussian),
        Structure::Diag,
        Structure::Kron,
    ] {
        let case = Case::new(3, 30, 3, 3, true);
        let config = case.config(structure, Likelihood::Classification, Curvature::Ggn, 8);
        let post = case
            .fit::<CpuDevice, f64>(&CpuDevice::new(1).unwrap(), 30, &config)
            .unwrap();
        let (_, sigma) = dense_of(&post);
        let p = sigma.rows;
        let samples = 40_000;
        let heads = post.sample_heads(samples, 1).unwrap();
        let mean = common::suite::dense_head_of(&post, &case.pb);
        let mut cov = Dense::zeros(p, p);
        for h in heads.chunks(p) {
            for a in 0..p {
                for b in 0..p {
                    cov.a[a * p + b] += (h[a] - mean[a]) * (h[b] - mean[b]) / samples as f64;
                }
            }
        }
        let scale = sigma.max_abs();
        let err = cov.add(&sigma, -1.0).max_abs() / scale;
        assert!(err < 0.05, "{structure:?}: sample covariance off by {err}");
    }
}
