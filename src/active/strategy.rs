//! Pool-based selection strategies, each choosing a batch from a posterior's view of the pool.

use super::cluster::{Points, k_center, kmeans, kmeans_pp_seeds};
use crate::device::Device;
use crate::device::ops::sherman_morrison::HostInverse;
use crate::error::{Error, Result};
use crate::host::{HostMatrix, check_features};
use crate::numerics::dot;
use crate::posterior::{BiasMode, Link, Posterior};
use crate::random::SplitMix64;
use crate::scalar::Scalar;

/// The unlabelled candidates and the features already labelled (n_L × D, possibly empty).
#[derive(Clone, Copy)]
pub struct Pool<'a, T> {
    /// Candidates, n × D.
    pub candidates: HostMatrix<'a, T>,
    /// Labelled features, n_L × D (CoreSet, TypiClust and BAIT read them).
    pub labeled: HostMatrix<'a, T>,
}

/// A selection strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Uniformly at random.
    Random,
    /// Highest entropy `−Σ_k p_k log p_k` of the probit predictive.
    Entropy,
    /// Smallest margin `p_(1) − p_(2)` between the two most probable classes.
    Margin,
    /// Lowest confidence `max_k p_k`.
    LeastConfidence,
    /// BALD (Houlsby et al. 2011): the mutual information `H(E[p]) − E[H(p)]` between the label
    /// and the head, by Monte Carlo over the logits `f ~ N(μ_f, Σ_f)`, `samples` seeded draws.
    Bald {
        /// Draws per candidate.
        samples: usize,
    },
    /// BADGE (Ash et al. 2020): k-means++ seeding on the gradient embeddings
    /// `g = (p − e_ŷ) ⊗ φ` at the MAP head, ŷ the predicted class, the first seed the largest ‖g‖.
    Badge,
    /// BAIT (Ash et al. 2021): greedily minimise `tr((M + Σ_x V_x)⁻¹ F)`, with the Fisher
    /// `V_x = m_x φ_xφ_xᵀ`, `m_x = tr(Λ_x)/K` (the shared-covariance form), `M = τI + Σ_labelled V`
    /// and `F = Σ_{labelled ∪ pool} V`: forward to 2b picks, then backward to b, every step a
    /// Sherman–Morrison update of `M⁻¹` and `M⁻¹FM⁻¹`.
    Bait,
    /// CoreSet (Sener and Savarese 2018): greedy k-center on the features.
    CoreSet,
    /// TypiClust (Hacohen et al. 2022): k-means with `n_L + b` clusters over pool and labelled
    /// points; from the clusters with fewest labelled points (largest first), the most typical
    /// candidate, typicality being the inverse mean distance to its 20 nearest cluster mates.
    TypiClust,
}

impl Strategy {
    /// The strategies and their command-line names.
    pub const ALL: [(&'static str, Strategy); 9] = [
        ("random", Strategy::Random),
        ("entropy", Strategy::Entropy),
        ("margin", Strategy::Margin),
        ("least-confidence", Strategy::LeastConfidence),
        ("bald", Strategy::Bald { samples: 100 }),
        ("badge", Strategy::Badge),
        ("bait", Strategy::Bait),
        ("coreset", Strategy::CoreSet),
        ("typiclust", Strategy::TypiClust),
    ];

    /// The strategy called `name` (as in [`Strategy::ALL`]).
    pub fn from_name(name: &str) -> Result<Strategy> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                Error::invalid("strategy", format!("unknown `{name}`; one of {}", names.join(", ")))
            })
    }

    /// The command-line name.
    pub fn name(&self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, s)| std::mem::discriminant(s) == std::mem::discriminant(self))
            .map_or("?", |(n, _)| n)
    }

    /// Whether the strategy ranks candidates by a per-candidate score (and so picks the top b).
    pub fn is_scoring(&self) -> bool {
        matches!(
            self,
            Strategy::Entropy | Strategy::Margin | Strategy::LeastConfidence | Strategy::Bald { .. }
        )
    }

    /// Per-candidate informativeness, higher first, for the scoring strategies.
    ///
    /// Errors: `Unsupported` for the batch strategies; the input errors of
    /// [`Posterior::predict`]; `InvalidArgument` for 0 BALD samples.
    pub fn scores<D: Device, T: Scalar>(
        &self,
        post: &Posterior<D, T>,
        candidates: HostMatrix<'_, T>,
        seed: u64,
    ) -> Result<Vec<f64>> {
        let k = post.classes();
        let probit = || -> Result<Vec<Vec<f64>>> {
            let pred = post.predict(candidates, Link::default())?;
            Ok(pred
                .probs
                .chunks(k)
                .map(|r| r.iter().map(|x| x.as_f64()).collect())
                .collect())
        };
        match *self {
            Strategy::Entropy => Ok(probit()?.iter().map(|p| entropy(p)).collect()),
            Strategy::Margin => Ok(probit()?
                .iter()
                .map(|p| {
                    let (first, second) = top_two(p);
                    -(first - second)
                })
                .collect()),
            Strategy::LeastConfidence => Ok(probit()?.iter().map(|p| 1.0 - top_two(p).0).collect()),
            Strategy::Bald { samples } => {
                if samples == 0 {
                    return Err(Error::invalid("samples", "BALD needs at least one sample"));
                }
                let pred = post.predict(candidates, Link::None)?;
                let eps = SplitMix64::new(seed).normals(samples * k);
                Ok((0..pred.rows)
                    .map(|i| {
                        let mean: Vec<f64> = pred.logit_mean[i * k..(i + 1) * k].iter().map(|x| x.as_f64()).collect();
                        let mut l: Vec<f64> = (0..k * k)
                            .map(|ab| pred.logit_cov_at(i, ab / k, ab % k).as_f64())
                            .collect();
                        crate::numerics::psd_cholesky(&mut l, k);
                        mutual_information(&mean, &l, &eps)
                    })
                    .collect())
            }
            _ => Err(Error::Unsupported(format!(
                "`{}` selects batches; it has no per-candidate score",
                self.name()
            ))),
        }
    }

    /// Selects `batch` distinct candidates (indices into `pool.candidates`), seeded by `seed`.
    ///
    /// Errors: `InvalidArgument` (batch 0 or larger than the pool), the input errors of
    /// [`Posterior::predict`] for the candidates and the labelled features.
    pub fn select<D: Device, T: Scalar>(
        &self,
        post: &Posterior<D, T>,
        pool: &Pool<'_, T>,
        batch: usize,
        seed: u64,
    ) -> Result<Vec<usize>> {
        let n = pool.candidates.rows();
        check_features("candidates", &pool.candidates, post.features())?;
        if pool.labeled.rows() > 0 {
            check_features("labeled", &pool.labeled, post.features())?;
        } else if pool.labeled.cols() != post.features() && !pool.labeled.data().is_empty() {
            return Err(Error::shape("labeled", (0, post.features()), (0, pool.labeled.cols())));
        }
        check_batch_size(batch, n)?;
        let mut rng = SplitMix64::new(seed);
        match *self {
            Strategy::Random => {
                let mut order = rng.permutation(n);
                order.truncate(batch);
                Ok(order)
            }
            s if s.is_scoring() => Ok(top(&s.scores(post, pool.candidates, seed)?, batch)),
            Strategy::Badge => badge(post, pool.candidates, batch, &mut rng),
            Strategy::Bait => bait(post, pool, batch),
            Strategy::CoreSet => {
                let candidates = points(&pool.candidates, false);
                let labeled = points(&pool.labeled, false);
                let covered = nearest_distances(&candidates, &labeled);
                Ok(k_center(&candidates, covered, batch))
            }
            Strategy::TypiClust => Ok(typiclust(pool, batch, &mut rng)),
            _ => unreachable!("every strategy is handled"),
        }
    }
}

/// `InvalidArgument` unless `1 ≤ batch ≤ pool`.
pub(crate) fn check_batch_size(batch: usize, pool: usize) -> Result<()> {
    if batch == 0 || batch > pool {
        return Err(Error::invalid(
            "batch",
            format!("must be in 1..={pool} (the pool size), got {batch}"),
        ));
    }
    Ok(())
}

/// Indices of the `count` largest scores, ties to the lower index.
pub fn top(scores: &[f64], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(count);
    order
}

/// `−Σ p log p`.
pub fn entropy(p: &[f64]) -> f64 {
    -p.iter().filter(|&&x| x > 0.0).map(|x| x * x.ln()).sum::<f64>()
}

fn top_two(p: &[f64]) -> (f64, f64) {
    p.iter().fold((f64::NEG_INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
        if x > a { (x, a) } else { (a, b.max(x)) }
    })
}

/// `H((1/S) Σ_s softmax(μ + L ε_s)) − (1/S) Σ_s H(softmax(μ + L ε_s))` for lower-triangular L.
fn mutual_information(mean: &[f64], l: &[f64], eps: &[f64]) -> f64 {
    let k = mean.len();
    let samples = eps.len() / k;
    let mut average = vec![0.0; k];
    let mut expected_entropy = 0.0;
    for e in eps.chunks_exact(k) {
        let f: Vec<f64> = (0..k)
            .map(|a| mean[a] + (0..=a).map(|b| l[a * k + b] * e[b]).sum::<f64>())
            .collect();
        let p = crate::numerics::softmax(&f);
        expected_entropy += entropy(&p);
        average.iter_mut().zip(&p).for_each(|(x, y)| *x += y);
    }
    average.iter_mut().for_each(|x| *x /= samples as f64);
    (entropy(&average) - expected_entropy / samples as f64).max(0.0)
}

/// Rows of a host matrix in f64, with a column of ones appended when `augment`.
fn points<T: Scalar>(m: &HostMatrix<'_, T>, augment: bool) -> Points {
    let d = m.cols() + usize::from(augment);
    let mut x = Vec::with_capacity(m.rows() * d);
    for i in 0..m.rows() {
        x.extend(m.row(i).iter().map(|v| v.as_f64()));
        if augment {
            x.push(1.0);
        }
    }
    Points::new(x, m.rows(), d)
}

/// For each candidate, the squared distance to its nearest labelled point (∞ with none).
fn nearest_distances(candidates: &Points, labeled: &Points) -> Vec<f64> {
    if labeled.n == 0 {
        return vec![f64::INFINITY; candidates.n];
    }
    let x = faer::MatRef::from_row_major_slice(&candidates.x, candidates.n, candidates.d);
    let y = faer::MatRef::from_row_major_slice(&labeled.x, labeled.n, labeled.d);
    let dots = x * y.transpose();
    (0..candidates.n)
        .map(|i| {
            (0..labeled.n)
                .map(|j| (candidates.norms[i] + labeled.norms[j] - 2.0 * dots[(i, j)]).max(0.0))
                .fold(f64::INFINITY, f64::min)
        })
        .collect()
}

/// MAP probabilities of the candidates, n × K in f64.
fn map_probabilities<D: Device, T: Scalar>(post: &Posterior<D, T>, x: HostMatrix<'_, T>) -> Result<Vec<f64>> {
    if x.rows() == 0 {
        return Ok(Vec::new());
    }
    Ok(post.predict(x, Link::None)?.probs.iter().map(|v| v.as_f64()).collect())
}

fn augmented<D: Device, T: Scalar>(post: &Posterior<D, T>) -> bool {
    post.bias_mode() == BiasMode::InPosterior
}

fn badge<D: Device, T: Scalar>(
    post: &Posterior<D, T>,
    candidates: HostMatrix<'_, T>,
    batch: usize,
    rng: &mut SplitMix64,
) -> Result<Vec<usize>> {
    let k = post.classes();
    let probs = map_probabilities(post, candidates)?;
    let phi = points(&candidates, augmented(post));
    // r = p − e_ŷ; ‖g_a − g_b‖² = ‖r_a‖²‖φ_a‖² + ‖r_b‖²‖φ_b‖² − 2 (r_a·r_b)(φ_a·φ_b).
    let residuals: Vec<Vec<f64>> = probs
        .chunks(k)
        .map(|p| {
            let best = (0..k).fold(0, |b, c| if p[c] > p[b] { c } else { b });
            (0..k).map(|c| p[c] - f64::from(u8::from(c == best))).collect()
        })
        .collect();
    let r_norms: Vec<f64> = residuals.iter().map(|r| r.iter().map(|v| v * v).sum()).collect();
    let g_norm = |i: usize| r_norms[i] * phi.norms[i];
    let dist2 = |a: usize, b: usize| {
        let rr: f64 = residuals[a].iter().zip(&residuals[b]).map(|(x, y)| x * y).sum();
        let pp: f64 = phi.row(a).iter().zip(phi.row(b)).map(|(x, y)| x * y).sum();
        (g_norm(a) + g_norm(b) - 2.0 * rr * pp).max(0.0)
    };
    let first = (0..phi.n).fold(0, |b, i| if g_norm(i) > g_norm(b) { i } else { b });
    let mut picks = kmeans_pp_seeds(phi.n, batch, Some(first), dist2, rng);
    // Identical embeddings leave no mass to sample: fill with the largest norms.
    let mut rest: Vec<usize> = (0..phi.n).filter(|i| !picks.contains(i)).collect();
    rest.sort_by(|&a, &b| g_norm(b).total_cmp(&g_norm(a)).then(a.cmp(&b)));
    picks.extend(rest.into_iter().take(batch - picks.len()));
    Ok(picks)
}

/// The BAIT state: `M⁻¹`, kept blocked ([`HostInverse`]: read-only inside a block of 64
/// picks, folded by one rank-64 product), the Fisher F (d × d), and per candidate
/// `s_x = v_xᵀ M⁻¹ v_x` and `q_x = v_xᵀ M⁻¹FM⁻¹ v_x` for `v_x = √m_x φ_x`.
struct Bait {
    d: usize,
    minv: HostInverse,
    f: Vec<f64>,
    v: Points,
    s: Vec<f64>,
    q: Vec<f64>,
}

impl Bait {
    /// The state for `M` (d × d, row-major) from its Cholesky factorisation: `M⁻¹`, and `s`,
    /// `q` for every candidate. `InvalidArgument` when M is not positive definite (τ ≤ 0).
    fn factored(m: &[f64], f: Vec<f64>, v: Points) -> Result<Self> {
        let d = v.d;
        let m_mat = faer::Mat::<f64>::from_fn(d, d, |i, j| m[i * d + j]);
        let llt = m_mat.llt(faer::Side::Lower).map_err(|_| {
            Error::invalid(
                "prior_precision",
                "BAIT's M = τI + Σ V_x is not positive definite: τ must be positive",
            )
        })?;
        let minv_mat = faer::linalg::solvers::DenseSolveCore::inverse(&llt);
        let f_mat = faer::Mat::<f64>::from_fn(d, d, |i, j| f[i * d + j]);
        let a_mat = &minv_mat * &f_mat * &minv_mat;
        let flat = |m: &faer::Mat<f64>| (0..d * d).map(|ij| m[(ij / d, ij % d)]).collect::<Vec<f64>>();
        let x = faer::MatRef::from_row_major_slice(&v.x, v.n, d);
        let vm = x * &minv_mat;
        let va = x * &a_mat;
        let s = (0..v.n)
            .map(|c| (0..d).map(|t| vm[(c, t)] * v.x[c * d + t]).sum())
            .collect();
        let q = (0..v.n)
            .map(|c| (0..d).map(|t| va[(c, t)] * v.x[c * d + t]).sum())
            .collect();
        Ok(Bait {
            d,
            minv: HostInverse::new(flat(&minv_mat), d),
            f,
            v,
            s,
            q,
        })
    }

    /// Adds (`m = 1`) or removes (`m = −1`) candidate `x`. With `u = M⁻¹v_x`, the
    /// Sherman–Morrison step `M⁻¹ ← M⁻¹ − c uuᵀ`, `c = m/(1 + m v_xᵀu)`, and for every
    /// candidate, with `P = v_cᵀu` and `e = v_cᵀM⁻¹Fu` (the M⁻¹ before the step):
    /// `s_c ← s_c − c P²` and `q_c ← q_c − 2c P e + c² (uᵀFu) P²`.
    ///
    /// Errors: `NotPositiveDefinite { index: x }` when `1 + m v_xᵀu` is not positive (a removal
    /// that rounding made singular); the state is then unchanged.
    fn apply(&mut self, x: usize, m: f64) -> Result<()> {
        let d = self.d;
        let vx = self.v.row(x);
        let u = self.minv.apply(vx);
        let s = dot(vx, &u);
        let fu: Vec<f64> = self.f.chunks_exact(d).map(|row| dot(row, &u)).collect();
        let h = self.minv.apply(&fu);
        let ufu = dot(&u, &fu);
        let c = self
            .minv
            .downdate(&u, s, m)
            .ok_or(Error::NotPositiveDefinite { index: x })?;
        for cand in 0..self.v.n {
            let row = self.v.row(cand);
            let (p, e) = (dot(row, &u), dot(row, &h));
            self.s[cand] -= c * p * p;
            self.q[cand] += -2.0 * c * p * e + c * c * ufu * p * p;
        }
        Ok(())
    }
}

fn bait<D: Device, T: Scalar>(post: &Posterior<D, T>, pool: &Pool<'_, T>, batch: usize) -> Result<Vec<usize>> {
    let k = post.classes() as f64;
    let augment = augmented(post);
    let weight = |probs: Vec<f64>| -> Vec<f64> {
        probs
            .chunks(post.classes())
            // Clipped at 0: rounding can push Σp² of a confident prediction past 1.
            .map(|p| ((1.0 - p.iter().map(|x| x * x).sum::<f64>()) / k).max(0.0))
            .collect()
    };
    let scaled = |m: &HostMatrix<'_, T>, w: &[f64]| {
        let mut p = points(m, augment);
        let d = p.d;
        for (i, wi) in w.iter().enumerate() {
            p.x[i * d..(i + 1) * d].iter_mut().for_each(|x| *x *= wi.sqrt());
        }
        Points::new(p.x, p.n, d)
    };
    let v = scaled(&pool.candidates, &weight(map_probabilities(post, pool.candidates)?));
    let labeled = scaled(&pool.labeled, &weight(map_probabilities(post, pool.labeled)?));
    let d = v.d;
    let gram = |p: &Points| {
        let x = faer::MatRef::from_row_major_slice(&p.x, p.n, d);
        let g = x.transpose() * x;
        (0..d * d).map(|ij| g[(ij / d, ij % d)]).collect::<Vec<f64>>()
    };
    let tau = post.prior_precision()[0].as_f64();
    let mut base = gram(&labeled);
    (0..d).for_each(|i| base[i * d + i] += tau);
    let f: Vec<f64> = gram(&labeled).iter().zip(gram(&v)).map(|(a, b)| a + b).collect();
    let mut state = Bait::factored(&base, f, v)?;
    // A rank-one step that rounding made singular (a removal with 1 − s ≤ 0 on an
    // ill-conditioned M) is redone exactly: M = base + Σ_chosen v vᵀ factored afresh.
    let refactor = |state: Bait, chosen: &[usize]| -> Result<Bait> {
        let rows = chosen.iter().flat_map(|&c| state.v.row(c).iter().copied()).collect();
        let picked = gram(&Points::new(rows, chosen.len(), d));
        let m: Vec<f64> = base.iter().zip(&picked).map(|(a, b)| a + b).collect();
        Bait::factored(&m, state.f, state.v)
    };
    // Forward: the largest decrease q/(1 + s) of tr(M⁻¹F), up to 2b picks.
    let mut chosen: Vec<usize> = Vec::new();
    let mut available = vec![true; state.v.n];
    for _ in 0..(2 * batch).min(state.v.n) {
        crate::interrupt::check()?;
        let gains = (0..state.v.n)
            .filter(|&c| available[c])
            .map(|c| (c, state.q[c] / (1.0 + state.s[c])));
        let Some(best) = arg_max(gains) else { break };
        available[best] = false;
        chosen.push(best);
        if state.apply(best, 1.0).is_err() {
            state = refactor(state, &chosen)?;
        }
    }
    // Backward: drop the pick whose removal raises tr(M⁻¹F) least, q/(1 − s), down to b.
    while chosen.len() > batch {
        let costs = chosen
            .iter()
            .enumerate()
            .map(|(slot, &c)| (slot, -(state.q[c] / (1.0 - state.s[c]))));
        let Some(slot) = arg_max(costs) else { break };
        let c = chosen.remove(slot);
        if state.apply(c, -1.0).is_err() {
            state = refactor(state, &chosen)?;
        }
    }
    Ok(chosen)
}

/// The index of the largest score, the first on ties; a score that is not a number (a
/// rank-one update that lost its accuracy) ranks below every number. `None` only when empty.
fn arg_max(scores: impl Iterator<Item = (usize, f64)>) -> Option<usize> {
    let rank = |v: f64| if v.is_nan() { f64::NEG_INFINITY } else { v };
    scores
        .fold(None, |best: Option<(usize, f64)>, (i, v)| match best {
            Some((_, b)) if rank(v) <= b => best,
            _ => Some((i, rank(v))),
        })
        .map(|(i, _)| i)
}

fn typiclust<T: Scalar>(pool: &Pool<'_, T>, batch: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let (n, nl) = (pool.candidates.rows(), pool.labeled.rows());
    let mut all = points(&pool.candidates, false);
    let labeled = points(&pool.labeled, false);
    all.x.extend_from_slice(&labeled.x);
    let all = Points::new(all.x, n + nl, all.d);
    let clusters = (nl + batch).min(n + nl);
    let assignment = kmeans(&all, clusters, 30, rng);
    let k = assignment.iter().copied().max().map_or(0, |m| m + 1);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (i, &c) in assignment.iter().enumerate() {
        members[c].push(i);
    }
    let labeled_count = |c: usize| members[c].iter().filter(|&&i| i >= n).count();
    let mut order: Vec<usize> = (0..k).filter(|&c| members[c].iter().any(|&i| i < n)).collect();
    order.sort_by(|&a, &b| {
        labeled_count(a)
            .cmp(&labeled_count(b))
            .then(members[b].len().cmp(&members[a].len()))
            .then(a.cmp(&b))
    });
    let typicality = |c: usize, i: usize| -> f64 {
        let neighbours = 20.min(members[c].len() - 1);
        if neighbours == 0 {
            return 0.0;
        }
        let mut d: Vec<f64> = members[c]
            .iter()
            .filter(|&&j| j != i)
            .map(|&j| all.dist2(i, j).sqrt())
            .collect();
        d.sort_by(f64::total_cmp);
        let mean = d[..neighbours].iter().sum::<f64>() / neighbours as f64;
        1.0 / (mean + 1e-12)
    };
    let mut picks: Vec<usize> = Vec::with_capacity(batch);
    while picks.len() < batch {
        let before = picks.len();
        for &c in &order {
            if picks.len() == batch {
                break;
            }
            let best = members[c]
                .iter()
                .copied()
                .filter(|&i| i < n && !picks.contains(&i))
                .map(|i| (i, typicality(c, i)))
                .fold((usize::MAX, f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
            if best.0 != usize::MAX {
                picks.push(best.0);
            }
        }
        if picks.len() == before {
            break;
        }
    }
    picks
}
