//! The seed paper's look-ahead baseline: score candidate batches by the validation loss after
//! updating with each, and the update methods it is compared with.

use super::cluster::{Points, kmeans};
use super::strategy::{Pool, Strategy};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::host::HostMatrix;
use crate::posterior::{BiasMode, HeadConfig, Link, Posterior, UpdateConfig, fit_head};
use crate::random::SplitMix64;
use crate::scalar::Scalar;

/// How a batch of labelled samples is folded in before the validation loss is measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UpdateMethod {
    /// The Laplace update (Newton step with the posterior covariance); probit predictive.
    Laplace(UpdateConfig),
    /// One gradient step on the log-likelihood, `w' = ŵ + η Σ_j (e_{y_j} − p_j) ⊗ φ_j`; plain
    /// softmax predictive.
    FirstOrder {
        /// Step size η.
        learning_rate: f64,
    },
    /// Importance reweighting of posterior samples `w_s ~ N(ŵ, Σ)` by the batch likelihood
    /// `ω_s ∝ Π_j p(y_j | φ_j, w_s)`; predictive `Σ_s ω_s softmax(f_s)`.
    MonteCarloReweighting {
        /// Posterior samples S.
        samples: usize,
        /// Seed of the samples.
        seed: u64,
    },
    /// MAP refit of the head on the labelled data and the batch; plain softmax predictive.
    Refit(HeadConfig),
}

/// Labelled features with their labels.
#[derive(Clone, Copy)]
pub struct Labelled<'a, T> {
    /// Features, n × D.
    pub features: HostMatrix<'a, T>,
    /// Labels, n.
    pub labels: &'a [u32],
}

/// Class probabilities (n_eval × K, f64) at `eval` after folding `batch` into `post` by
/// `method`. `seen` is the data the posterior was fitted on (read by `Refit` only).
pub fn updated_probabilities<D: Device, T: Scalar>(
    method: UpdateMethod,
    post: &Posterior<D, T>,
    batch: Labelled<'_, T>,
    seen: Labelled<'_, T>,
    eval: HostMatrix<'_, T>,
) -> Result<Vec<f64>> {
    let k = post.classes();
    let cast = |v: Vec<T>| v.into_iter().map(|x| x.as_f64()).collect::<Vec<f64>>();
    match method {
        UpdateMethod::Laplace(config) => {
            let mut next = post.try_clone()?;
            next.update(batch.features, batch.labels, &config)?;
            Ok(cast(next.predict(eval, Link::default())?.probs))
        }
        UpdateMethod::FirstOrder { learning_rate } => {
            let probs = cast(post.predict(batch.features, Link::None)?.probs);
            let (d, augment) = (post.features(), post.bias_mode() == BiasMode::InPosterior);
            let mut w = cast(post.head()?);
            let mut b = cast(post.bias()?);
            for (j, p) in probs.chunks(k).enumerate() {
                let x = batch.features.row(j);
                for c in 0..k {
                    let r = f64::from(u8::from(batch.labels[j] as usize == c)) - p[c];
                    for t in 0..d {
                        w[c * d + t] += learning_rate * r * x[t].as_f64();
                    }
                    if augment {
                        b[c] += learning_rate * r;
                    }
                }
            }
            Ok(crate::numerics::softmax_rows(&linear(&w, &b, eval, k), k))
        }
        UpdateMethod::MonteCarloReweighting { samples, seed } => {
            let heads = post.sample_heads(samples, seed)?;
            let (d, da) = (post.features(), post.augmented_features());
            let fixed = cast(post.bias()?);
            let split = |h: &[T]| -> (Vec<f64>, Vec<f64>) {
                let w = (0..k)
                    .flat_map(|c| h[c * da..c * da + d].iter().map(|x| x.as_f64()))
                    .collect();
                let b = if da > d {
                    (0..k).map(|c| h[c * da + d].as_f64()).collect()
                } else {
                    fixed.clone()
                };
                (w, b)
            };
            let mut log_weights = Vec::with_capacity(samples);
            let mut predictive = Vec::with_capacity(samples);
            for h in heads.chunks(k * da) {
                let (w, b) = split(h);
                let p = crate::numerics::softmax_rows(&linear(&w, &b, batch.features, k), k);
                let ll: f64 = batch
                    .labels
                    .iter()
                    .enumerate()
                    .map(|(j, &y)| p[j * k + y as usize].max(1e-300).ln())
                    .sum();
                log_weights.push(ll);
                predictive.push(crate::numerics::softmax_rows(&linear(&w, &b, eval, k), k));
            }
            let max = log_weights.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = log_weights.iter().map(|l| (l - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            let mut out = vec![0.0; eval.rows() * k];
            for (p, w) in predictive.iter().zip(&weights) {
                out.iter_mut().zip(p).for_each(|(o, v)| *o += w / total * v);
            }
            Ok(out)
        }
        UpdateMethod::Refit(config) => {
            let d = post.features();
            let mut x: Vec<T> = seen.features.data().to_vec();
            x.extend_from_slice(batch.features.data());
            let mut y = seen.labels.to_vec();
            y.extend_from_slice(batch.labels);
            let fit = fit_head(post.device(), HostMatrix::new(&x, y.len(), d)?, &y, k, &config)?;
            Ok(crate::numerics::softmax_rows(
                &linear(&cast(fit.weights), &cast(fit.bias), eval, k),
                k,
            ))
        }
    }
}

/// Logits `X Wᵀ + b` (n × K) on the host.
fn linear<T: Scalar>(w: &[f64], b: &[f64], x: HostMatrix<'_, T>, k: usize) -> Vec<f64> {
    let d = x.cols();
    (0..x.rows())
        .flat_map(|i| {
            let row = x.row(i);
            (0..k).map(move |c| b[c] + (0..d).map(|t| w[c * d + t] * row[t].as_f64()).sum::<f64>())
        })
        .collect()
}

/// Mean negative log-likelihood of probabilities (n × K) against labels.
pub fn negative_log_likelihood(probs: &[f64], labels: &[u32]) -> f64 {
    let k = probs.len() / labels.len().max(1);
    labels
        .iter()
        .enumerate()
        .map(|(i, &y)| crate::numerics::label_nll(probs[i * k + y as usize]))
        .sum::<f64>()
        / labels.len().max(1) as f64
}

/// The look-ahead selection: among candidate batches (`random_batches` random ones, one diverse
/// by k-means on the features, one informative by margin), the one whose update by `method`
/// gives the lowest validation NLL.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LookAhead {
    /// How each candidate batch is folded in.
    pub method: UpdateMethod,
    /// Random candidate batches.
    pub random_batches: usize,
}

impl LookAhead {
    /// Selects `batch` candidates. `oracle` holds the candidates' labels (a simulation), `seen`
    /// the data the posterior was fitted on, `validation` the held-out data scored.
    ///
    /// Errors: `ShapeMismatch` for labels that do not match, `InvalidArgument` for a bad batch
    /// size, and the errors of the update method.
    #[allow(clippy::too_many_arguments)]
    pub fn select<D: Device, T: Scalar>(
        &self,
        post: &Posterior<D, T>,
        pool: &Pool<'_, T>,
        oracle: &[u32],
        seen: Labelled<'_, T>,
        validation: Labelled<'_, T>,
        batch: usize,
        seed: u64,
    ) -> Result<Vec<usize>> {
        let (n, d) = (pool.candidates.rows(), pool.candidates.cols());
        if oracle.len() != n {
            return Err(Error::shape("oracle", (n, 1), (oracle.len(), 1)));
        }
        if validation.labels.len() != validation.features.rows() || validation.labels.is_empty() {
            return Err(Error::shape(
                "validation",
                (validation.features.rows(), 1),
                (validation.labels.len(), 1),
            ));
        }
        let mut candidates: Vec<Vec<usize>> = Vec::new();
        for r in 0..self.random_batches {
            candidates.push(Strategy::Random.select(post, pool, batch, seed.wrapping_add(r as u64))?);
        }
        candidates.push(diverse(pool.candidates, batch, seed));
        candidates.push(Strategy::Margin.select(post, pool, batch, seed)?);
        let mut best = (f64::INFINITY, Vec::new());
        for picks in candidates {
            let x: Vec<T> = picks
                .iter()
                .flat_map(|&i| pool.candidates.row(i).iter().copied())
                .collect();
            let y: Vec<u32> = picks.iter().map(|&i| oracle[i]).collect();
            let labelled = Labelled {
                features: HostMatrix::new(&x, picks.len(), d)?,
                labels: &y,
            };
            let probs = updated_probabilities(self.method, post, labelled, seen, validation.features)?;
            let loss = negative_log_likelihood(&probs, validation.labels);
            if loss < best.0 {
                best = (loss, picks);
            }
        }
        Ok(best.1)
    }
}

/// One candidate per k-means cluster (k = batch): the member nearest its cluster's mean.
fn diverse<T: Scalar>(x: HostMatrix<'_, T>, batch: usize, seed: u64) -> Vec<usize> {
    let points = Points::new(x.data().iter().map(|v| v.as_f64()).collect(), x.rows(), x.cols());
    let assignment = kmeans(&points, batch, 30, &mut SplitMix64::new(seed));
    let k = assignment.iter().copied().max().map_or(0, |m| m + 1);
    let mut picks = Vec::with_capacity(batch);
    for c in 0..k {
        let members: Vec<usize> = (0..points.n).filter(|&i| assignment[i] == c).collect();
        if members.is_empty() {
            continue;
        }
        let mut mean = vec![0.0; points.d];
        for &i in &members {
            mean.iter_mut()
                .zip(points.row(i))
                .for_each(|(m, v)| *m += v / members.len() as f64);
        }
        let norm: f64 = mean.iter().map(|v| v * v).sum();
        let nearest = members
            .iter()
            .copied()
            .min_by(|&a, &b| {
                points
                    .dist2_to(a, &mean, norm)
                    .total_cmp(&points.dist2_to(b, &mean, norm))
            })
            .unwrap_or(members[0]);
        picks.push(nearest);
    }
    // Fewer distinct clusters than the batch: fill in index order.
    for i in 0..points.n {
        if picks.len() == batch {
            break;
        }
        if !picks.contains(&i) {
            picks.push(i);
        }
    }
    picks
}
