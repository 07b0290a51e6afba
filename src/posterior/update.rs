//! [`Posterior::update`]: closed-form Bayesian updates with new labelled samples.

use super::Features;
use super::model::{Batch, Model};
use super::structure::{self, Operand, StoredPair};
use super::{Curvature, Likelihood, Moments, Posterior};
use crate::device::{Device, Matrix, Sign};
use crate::error::{Error, Result};
use crate::host::Targets;
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

impl UpdateConfig {
    /// Checks the settings: γ finite, `iterations ≥ 1`, forgetting in (0, 1].
    ///
    /// Errors: `InvalidArgument`.
    pub fn validate(&self) -> Result<()> {
        if !self.gamma.is_finite() {
            return Err(Error::invalid("gamma", format!("must be finite, got {}", self.gamma)));
        }
        if self.iterations == 0 {
            return Err(Error::invalid("iterations", "must be at least 1"));
        }
        let rho = self.forgetting;
        if !(rho > 0.0 && rho <= 1.0) {
            return Err(Error::invalid("forgetting", format!("must be in (0, 1], got {rho}")));
        }
        Ok(())
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
    pub fn update<F: Features<D, T>, Y: Targets<T> + ?Sized>(
        &mut self,
        features: F,
        targets: &Y,
        config: &UpdateConfig,
    ) -> Result<()> {
        let device = self.device.clone();
        device.scope(|| self.update_in_scope(features, targets, config))
    }

    fn update_in_scope<F: Features<D, T>, Y: Targets<T> + ?Sized>(
        &mut self,
        features: F,
        targets: &Y,
        config: &UpdateConfig,
    ) -> Result<()> {
        config.validate()?;
        let rho = config.forgetting;
        self.check_batch(&features, targets)?;
        if rho < 1.0 {
            // Forget, then fold the batch in; a failure in either restores the saved moments.
            let saved = self.moments.copy(&self.device)?;
            let forgotten = self.forget(rho);
            let updated = forgotten.and_then(|()| self.fold_in(&features, targets, config));
            if updated.is_err() {
                self.moments = saved;
            }
            return updated;
        }
        self.fold_in(&features, targets, config)
    }

    /// The update after the checks (and any forgetting): the batch folded in by the rule.
    fn fold_in<F: Features<D, T>, Y: Targets<T> + ?Sized>(
        &mut self,
        features: &F,
        targets: &Y,
        config: &UpdateConfig,
    ) -> Result<()> {
        let gamma = T::from_f64(config.gamma);
        let tau = self.prior_precision[0];
        let m = features.rows();
        // One sample: both rules are the same update, and Joint needs no working copy.
        let rule = if m == 1 { UpdateRule::Joint } else { config.rule };
        let fused = self.likelihood == Likelihood::Classification && self.curvature == Curvature::Ggn;

        match (rule, self.moments.state.fused_sequential()) {
            (UpdateRule::Joint, _) => {
                let batch = self.upload_batch(features, targets, 0, m)?;
                let (model, moments) = self.split();
                newton(&model, moments, &batch, gamma, config.iterations, tau)?;
            }
            (UpdateRule::Sequential, Some(weighting)) if config.iterations == 1 && fused => {
                // Shared's Sherman–Morrison recursion runs fused on the device.
                let batch = self.upload_batch(features, targets, 0, m)?;
                let mut work = self.moments.copy(&self.device)?;
                let pair = work.state.pair_mut();
                let used = self.device.sherman_morrison_sequence(
                    &mut pair.covariance,
                    &mut work.head,
                    self.fixed_bias.as_ref(),
                    &batch.phi,
                    &batch.targets,
                    gamma,
                    weighting,
                )?;
                self.device
                    .weighted_syrk(&mut pair.precision, T::one(), &batch.phi, Some(&used), T::one())?;
                self.moments = work;
            }
            (UpdateRule::Sequential, _) => {
                let mut work = self.moments.copy(&self.device)?;
                let model = self.model();
                for j in 0..m {
                    let batch = self.upload_batch(features, targets, j, 1)?;
                    newton(&model, &mut work, &batch, gamma, config.iterations, tau)?;
                }
                self.moments = work;
            }
        }
        self.samples_seen += m;
        self.after_update(m);
        Ok(())
    }

    /// Forgetting: the data part of the precision scaled by ρ ∈ (0, 1),
    /// `Π ← ρ(Π − Π₀) + Π₀ = ρΠ + (1 − ρ)Π₀` with the prior `Π₀ = diag(τ_k)`, the structure's
    /// own sums scaled by ρ, and Σ recomputed. Full and Shared: one elementwise pass and one
    /// Cholesky inverse of Π (O(P³) and O(D³)); Diag: O(K·D) on the diagonal; Kron: A, G and
    /// their weight N scaled by ρ (so `a_i g_j / N` scales by ρ, the eigenvectors unchanged),
    /// O(K·D) on the eigenvalues. Exact for every structure: for Kron it is the KFAC of the
    /// ρ-weighted sums. The caller restores the moments on error.
    fn forget(&mut self, rho: f64) -> Result<()> {
        let device = &self.device;
        let da = self.augmented_features();
        let state = &mut self.moments.state;
        let mut scaled = device.zeros(state.precision().rows(), state.precision().cols())?;
        device.axpy(&mut scaled, T::from_f64(rho), state.precision())?;
        let keep: Vec<f64> = self.prior_precision.iter().map(|t| (1.0 - rho) * t.as_f64()).collect();
        let precision = state.shift_prior(device, scaled, &keep, da)?;
        state.scale_sums(device, rho)?;
        let covariance = state.covariance_of(device, &precision)?;
        *state.pair_mut() = StoredPair { precision, covariance };
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
        let state = &moments.state;
        let term = state.curvature_term(model, batch, &outputs, None)?;
        let step = state.covariance_step(device, &batch.phi, &term, Sign::Minus, tau, T::one())?;
        if let Some(w_t) = &iterate {
            let mut diff = device.copy(w_t)?;
            device.axpy(&mut diff, -T::one(), &moments.head)?;
            state.apply(device, Operand::Precision, &diff, &mut grad, -T::one())?;
        }
        let mut new_head = match iterate.take() {
            Some(w_t) => w_t,
            None => device.copy(&moments.head)?,
        };
        if t + 1 == iterations {
            // Commit: from here on only device faults can fail.
            structure::commit(device, &mut moments.state, step, &batch.phi, &term, Sign::Minus)?;
            moments
                .state
                .apply(device, Operand::Covariance, &grad, &mut new_head, gamma)?;
            moments.head = new_head;
        } else {
            let stepped = structure::stepped(device, &**state, step, Sign::Minus)?;
            stepped.apply(device, Operand::Covariance, &grad, &mut new_head, gamma)?;
            iterate = Some(new_head);
        }
    }
    Ok(())
}
