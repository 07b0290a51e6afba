//! Update-driven batch selection, the seed paper's contribution: pick one candidate, fold it
//! into a copy of the posterior, rescore, repeat.

use super::strategy::{Pool, Strategy, check_batch_size};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::host::HostMatrix;
use crate::posterior::{Link, Posterior, StepControl, UpdateConfig};
use crate::scalar::Scalar;

/// Where the label of a picked candidate comes from, for the update inside the loop.
#[derive(Debug, Clone, Copy)]
pub enum LabelSource<'a> {
    /// The true labels of the candidates (simulations, as in the seed paper).
    Oracle(&'a [u32]),
    /// The posterior's own most probable class.
    Predicted,
    /// No label: the expected update. For the GGN the covariance does not depend on the label,
    /// and the expected mean step `γ Σ' Σ_y p(y)(e_y − p) ⊗ φ` is zero, so the update is
    /// covariance-only (γ = 0).
    Expected,
}

/// A strategy wrapped in update-driven selection: b rounds of (select 1, update with it).
///
/// With b = 1 it is exactly the base strategy. The pool's features are uploaded once per
/// pick; everything else stays with the posterior's device.
#[derive(Debug, Clone, Copy)]
pub struct UpdateDriven<'a> {
    /// The strategy that picks each candidate.
    pub base: Strategy,
    /// Labels for the updates.
    pub labels: LabelSource<'a>,
    /// How each pick is folded in (the rule does not matter for one sample).
    pub update: UpdateConfig,
}

impl UpdateDriven<'_> {
    /// Selects `batch` distinct candidates (indices into `pool.candidates`).
    ///
    /// Errors: those of [`Strategy::select`] and [`Posterior::update`]; `ShapeMismatch` when
    /// the oracle labels do not cover the candidates. The posterior itself is not changed.
    pub fn select<D: Device, T: Scalar>(
        &self,
        post: &Posterior<D, T>,
        pool: &Pool<'_, T>,
        batch: usize,
        seed: u64,
    ) -> Result<Vec<usize>> {
        let (n, d) = (pool.candidates.rows(), pool.candidates.cols());
        if let LabelSource::Oracle(labels) = self.labels
            && labels.len() != n
        {
            return Err(Error::shape("labels", (n, 1), (labels.len(), 1)));
        }
        check_batch_size(batch, n)?;
        let mut work: Option<Posterior<D, T>> = None;
        let mut remaining: Vec<usize> = (0..n).collect();
        let mut chosen = Vec::with_capacity(batch);
        let mut labeled: Vec<T> = pool.labeled.data().to_vec();
        for round in 0..batch {
            let current = work.as_ref().unwrap_or(post);
            let rows: Vec<T> = remaining
                .iter()
                .flat_map(|&i| pool.candidates.row(i).iter().copied())
                .collect();
            let sub = Pool {
                candidates: HostMatrix::new(&rows, remaining.len(), d)?,
                labeled: HostMatrix::new(&labeled, labeled.len() / d.max(1), d)?,
            };
            let pick = self.base.select(current, &sub, 1, seed.wrapping_add(round as u64))?[0];
            let index = remaining.remove(pick);
            chosen.push(index);
            if round + 1 == batch {
                break;
            }
            let x = pool.candidates.row(index);
            let features = HostMatrix::new(x, 1, d)?;
            let (label, config) = match self.labels {
                LabelSource::Oracle(labels) => (labels[index], self.update),
                LabelSource::Predicted | LabelSource::Expected => {
                    let p = current.predict(features, Link::None)?.probs;
                    let best = (0..p.len()).fold(0, |b, c| if p[c] > p[b] { c } else { b }) as u32;
                    let config = match self.labels {
                        LabelSource::Expected => UpdateConfig {
                            step: StepControl::newton(0.0),
                            ..self.update
                        },
                        _ => self.update,
                    };
                    (best, config)
                }
            };
            let mut next = match work.take() {
                Some(w) => w,
                None => post.try_clone()?,
            };
            next.update(features, &[label], &config)?;
            work = Some(next);
            labeled.extend_from_slice(x);
        }
        Ok(chosen)
    }
}
