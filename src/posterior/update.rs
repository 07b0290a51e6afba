//! [`Posterior::update`]: closed-form Bayesian updates with new labelled samples.

use super::model::{Batch, Model};
use super::{Curvature, Likelihood, Moments, Posterior, Structure};
use crate::device::{Device, Matrix, Sign};
use crate::error::{Error, Result};
use crate::host::{HostMatrix, Targets};
use crate::scalar::Scalar;

/// How the m new samples are folded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpdateRule {
    /// One sample after another, as in the seed paper's code: each sample updates Σ by
    /// Sherman–Morrison (rank K for Full) and then the mean with the Σ just updated.
    Sequential,
    /// One Woodbury update for all m samples, then one Newton step with the summed gradient.
    #[default]
    Joint,
}

/// Settings of [`Posterior::update`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateConfig {
    /// Update rule.
    pub rule: UpdateRule,
    /// Step scale γ of the Newton step (1 is the true Newton step; the seed paper tuned 10).
    pub gamma: f64,
    /// Newton steps per update (≥ 1). Steps after the first are taken at the current iterate
    /// `w_t`, with the prior term `−Π(w_t − ŵ)` in the gradient; the stored covariance is the
    /// one of the last step, evaluated at the iterate that step started from.
    pub iterations: usize,
    /// Forgetting ρ ∈ (0, 1], for streams that drift; 1 (the default) forgets nothing. Before
    /// the new samples are folded in, the data part of the precision is scaled by ρ:
    /// `Π ← ρ(Π − Π₀) + Π₀` with Π₀ the prior, so that after batches B_1..B_t the precision is
    /// `Π₀ + Σ_s ρ^{t−s} H(B_s)`. Exact for every structure; it costs one refactor of Σ (Full:
    /// O(P³), Shared: O(D³), Diag and Kron: O(K·D)) on top of the update. [`Posterior::unlearn`]
    /// removes samples at full weight, so unlearn only samples added since the last forgetting.
    pub forgetting: f64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            rule: UpdateRule::Joint,
            gamma: 1.0,
            iterations: 1,
            forgetting: 1.0,
        }
    }
}

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// Folds m new samples (Φ_new m × D, with class labels or m × K regression targets) into
    /// the posterior.
    ///
    /// `Σ' = (Σ⁻¹ + Σ_j H_j)⁻¹` (dense structures by Woodbury, `Σ' = Σ − U C⁻¹ Uᵀ`, `U = ΣB`,
    /// `C = I + BᵀΣB`; Diag exactly on its diagonal; Kron by refactoring its running sums),
    /// `Π' = Π + Σ_j H_j`, and `w' = ŵ + γ Σ' Σ_j g_j` with the log-likelihood gradient
    /// `g_j = (e_{y_j} − p_j) ⊗ φ_j` (or `(y_j − f_j)/σ² ⊗ φ_j` for regression).
    ///
    /// The update is a transaction: on any error the posterior is exactly as before. After it,
    /// the [`RefreshPolicy`](super::RefreshPolicy) may recompute Σ from Π to bound drift.
    ///
    /// Errors: `EmptyBatch`, `ShapeMismatch`, `NonFinite`, `LabelOutOfRange`, `InvalidArgument`
    /// (γ not finite, `iterations == 0`, forgetting outside (0, 1], targets of the wrong kind),
    /// `NotPositiveDefinite`.
    pub fn update<Y: Targets<T> + ?Sized>(
        &mut self,
        features: HostMatrix<'_, T>,
        targets: &Y,
        config: &UpdateConfig,
    ) -> Result<()> {
        let device = self.device.clone();
        device.scope(|| self.update_in_scope(features, targets, config))
    }

    fn update_in_scope<Y: Targets<T> + ?Sized>(
        &mut self,
        features: HostMatrix<'_, T>,
        targets: &Y,
        config: &UpdateConfig,
    ) -> Result<()> {
        if !config.gamma.is_finite() {
            return Err(Error::invalid("gamma", format!("must be finite, got {}", config.gamma)));
        }
        if config.iterations == 0 {
            return Err(Error::invalid("iterations", "must be at least 1"));
        }
        let rho = config.forgetting;
        if !(rho > 0.0 && rho <= 1.0) {
            return Err(Error::invalid("forgetting", format!("must be in (0, 1], got {rho}")));
        }
        self.check_batch(&features, targets)?;
        if rho < 1.0 {
            // Forget, then fold the batch in; a failure in either restores the saved moments.
            let saved = self.moments.copy(&self.device)?;
            let prior = self.prior_precision.clone();
            let forgotten = {
                let (model, moments) = self.split();
                model.forget(moments, rho, &prior)
            };
            let updated = forgotten.and_then(|()| self.fold_in(features, targets, config));
            if updated.is_err() {
                self.moments = saved;
            }
            return updated;
        }
        self.fold_in(features, targets, config)
    }

    /// The update after the checks (and any forgetting): the batch folded in by the rule.
    fn fold_in<Y: Targets<T> + ?Sized>(
        &mut self,
        features: HostMatrix<'_, T>,
        targets: &Y,
        config: &UpdateConfig,
    ) -> Result<()> {
        let gamma = T::from_f64(config.gamma);
        let tau = self.prior_precision[0];
        let m = features.rows();
        // One sample: both rules are the same update, and Joint needs no working copy.
        let rule = if m == 1 { UpdateRule::Joint } else { config.rule };
        let fused = self.likelihood == Likelihood::Classification && self.curvature == Curvature::Ggn;

        match (rule, self.structure) {
            (UpdateRule::Joint, _) => {
                let batch = self.upload_batch(&features, targets, 0, m)?;
                let (model, moments) = self.split();
                newton(&model, moments, &batch, gamma, config.iterations, tau)?;
            }
            (UpdateRule::Sequential, Structure::Shared(weighting)) if config.iterations == 1 && fused => {
                let batch = self.upload_batch(&features, targets, 0, m)?;
                let mut work = self.moments.copy(&self.device)?;
                let used = self.device.sherman_morrison_sequence(
                    &mut work.covariance,
                    &mut work.head,
                    self.fixed_bias.as_ref(),
                    &batch.phi,
                    &batch.targets,
                    gamma,
                    weighting,
                )?;
                self.device
                    .weighted_syrk(&mut work.precision, T::one(), &batch.phi, Some(&used), T::one())?;
                self.moments = work;
            }
            (UpdateRule::Sequential, _) => {
                let mut work = self.moments.copy(&self.device)?;
                let model = self.model();
                for j in 0..m {
                    let batch = self.upload_batch(&features, targets, j, 1)?;
                    newton(&model, &mut work, &batch, gamma, config.iterations, tau)?;
                }
                self.moments = work;
            }
        }
        self.samples_seen += m;
        self.after_update(m);
        Ok(())
    }
}

/// Joint Newton update of `moments` with a batch: `iterations` steps, the covariance of the
/// last one kept. Every fallible computation of a step runs before `moments` is written, so an
/// error leaves it untouched. `tau` is the prior the Kron structure adds to its eigenvalues.
fn newton<D: Device, T: Scalar>(
    model: &Model<'_, D, T>,
    moments: &mut Moments<D, T>,
    batch: &Batch<D, T>,
    gamma: T,
    iterations: usize,
    tau: T,
) -> Result<()> {
    let device = model.device;
    // Iterate w_t; `None` while it is still the anchor ŵ = moments.head.
    let mut iterate: Option<Matrix<D, T>> = None;
    for t in 0..iterations {
        let head = iterate.as_ref().unwrap_or(&moments.head);
        // Gradient of the log-likelihood, K × D_aug, plus −Π(w_t − ŵ) after the first step.
        let (outputs, mut grad) = model.evaluate(batch, head)?;
        let term = model.curvature_term(batch, &outputs, None)?;
        let step = model.covariance_step(moments, &batch.phi, &term, Sign::Minus, tau, T::one())?;
        if let Some(w_t) = &iterate {
            let mut diff = device.copy(w_t)?;
            device.axpy(&mut diff, -T::one(), &moments.head)?;
            model.apply(&moments.precision, moments.kron.as_ref(), &diff, &mut grad, -T::one())?;
        }
        let mut new_head = match iterate.take() {
            Some(w_t) => w_t,
            None => device.copy(&moments.head)?,
        };
        if t + 1 == iterations {
            // Commit: from here on only device faults can fail.
            model.commit(moments, step, &batch.phi, &term, Sign::Minus)?;
            model.apply(&moments.covariance, moments.kron.as_ref(), &grad, &mut new_head, gamma)?;
            moments.head = new_head;
        } else {
            let stepped = model.stepped_covariance(moments, step, Sign::Minus)?;
            model.apply(&stepped.covariance, stepped.kron.as_ref(), &grad, &mut new_head, gamma)?;
            iterate = Some(new_head);
        }
    }
    Ok(())
}
