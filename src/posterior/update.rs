//! [`Posterior::update`]: Bayesian updates with new labelled samples, by damped Newton steps to
//! the new mode (the default) or by the seed paper's fixed-scale Newton step.

use super::Features;
use super::Moments;
use super::Posterior;
use super::config::{StepControl, UpdateConfig, UpdateRule};
use super::step::{self, UpdateReport};
use crate::device::Device;
use crate::error::Result;
use crate::host::Targets;
use crate::scalar::Scalar;

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// Folds m new samples (Φ_new m × D, with class labels or m × K regression targets) into
    /// the posterior, and says what the step did.
    ///
    /// The mean moves by Newton steps on `J(w) = Σ_j log p(y_j | w) − ½ (w − ŵ)ᵀ Π (w − ŵ)`,
    /// `d = Σ_w ∇J(w)` with `Σ_w = (Π + Σ_j H_j(w))⁻¹` (dense structures by Woodbury,
    /// `Σ_w = Σ − U C⁻¹ Uᵀ`, `U = ΣB`, `C = I + BᵀΣB`; Diag exactly on its diagonal; Kron by
    /// refactoring its running sums) and `∇J(w) = Σ_j g_j(w) − Π(w − ŵ)` with the
    /// log-likelihood gradient `g_j = (e_{y_j} − p_j) ⊗ φ_j` (or `(y_j − f_j)/σ² ⊗ φ_j`). The
    /// steps are damped to the mode by default, or of fixed scale γ
    /// ([`StepControl`]); the stored precision is `Π' = Π + Σ_j H_j` at the point
    /// [`CurvatureAt`](super::CurvatureAt) names.
    ///
    /// The update is a transaction: on any error the posterior is exactly as before. After it,
    /// the [`RefreshPolicy`](super::RefreshPolicy) may recompute Σ from Π to bound drift.
    ///
    /// Errors: `EmptyBatch`, `ShapeMismatch`, `NonFinite`, `LabelOutOfRange`, `InvalidArgument`
    /// (γ not finite, no steps, a bad tolerance, forgetting outside (0, 1], targets of the
    /// wrong kind), `NotPositiveDefinite`.
    pub fn update<F: Features<D, T>, Y: Targets<T> + ?Sized>(
        &mut self,
        features: F,
        targets: &Y,
        config: &UpdateConfig,
    ) -> Result<UpdateReport> {
        self.ensure_working_memory("an update", features.rows())?;
        let device = self.device.clone();
        device.scope(|| self.update_in_scope(features, targets, config))
    }

    fn update_in_scope<F: Features<D, T>, Y: Targets<T> + ?Sized>(
        &mut self,
        features: F,
        targets: &Y,
        config: &UpdateConfig,
    ) -> Result<UpdateReport> {
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
    ) -> Result<UpdateReport> {
        let tau = self.prior_precision[0];
        let m = features.rows();
        // One sample: both rules are the same update, and Joint needs no working copy.
        let rule = if m == 1 { UpdateRule::Joint } else { config.rule };
        let fused = self.model().softmax_ggn();
        let batch = self.upload_batch(features, targets, 0, m)?;
        let before = self.device.copy(&self.moments.head)?;

        let step = config.step;
        let outcome = match rule {
            UpdateRule::Joint => {
                // In place: every fallible computation runs before the moments are written.
                let (model, moments) = self.split();
                step::solve(&model, moments, &batch, step, tau)?
            }
            UpdateRule::Sequential => {
                let mut work = self.moments.copy(&self.device)?;
                // The seed paper's rule runs fused on the device where the structure has it.
                let fused_gamma = match step {
                    StepControl::Newton { gamma, iterations: 1 } if fused => {
                        let Moments { head, state } = &mut work;
                        let bias = self.fixed_bias.as_ref();
                        let gamma_t = T::from_f64(gamma);
                        state
                            .sequential_fused(&self.device, head, bias, &batch, gamma_t)?
                            .then_some(gamma)
                    }
                    _ => None,
                };
                let mut outcome = match fused_gamma {
                    Some(gamma) => UpdateReport::fixed(m, gamma),
                    None => {
                        let model = self.model();
                        let mut outcome = UpdateReport::empty();
                        for j in 0..m {
                            crate::interrupt::check()?;
                            let one = self.upload_batch(features, targets, j, 1)?;
                            outcome = outcome.then(step::solve(&model, &mut work, &one, step, tau)?);
                        }
                        outcome
                    }
                };
                // The report's objective is the whole batch's under the posterior before it.
                let model = self.model();
                outcome.objective_before = step::log_likelihood(&model, &batch, &before)?;
                outcome.objective_after = step::objective(&model, &self.moments, &batch, &work.head)?;
                self.moments = work;
                outcome
            }
        };
        let report = UpdateReport {
            relative_step: step::relative_change(&self.device, &before, &self.moments.head)?,
            ..outcome
        };
        self.samples_seen += m;
        self.after_update(m);
        Ok(report)
    }

    /// Forgetting: the data part of the precision scaled by ρ ∈ (0, 1),
    /// `Π ← ρ(Π − Π₀) + Π₀ = ρΠ + (1 − ρ)Π₀` with the prior `Π₀ = diag(τ_k)`, the structure's
    /// own sums scaled by ρ, and Σ recomputed. Full and Shared: one elementwise pass and one
    /// Cholesky inverse of Π (O(P³) and O(D³)); Diag: O(K·D) on the diagonal; Kron: A, G and
    /// their weight N scaled by ρ (so `a_i g_j / N` scales by ρ, the eigenvectors unchanged),
    /// O(K·D) on the eigenvalues. Exact for every structure: for Kron it is the KFAC of the
    /// ρ-weighted sums. The caller restores the moments on error.
    pub(crate) fn forget(&mut self, rho: f64) -> Result<()> {
        let device = &self.device;
        let da = self.augmented_features();
        let state = &mut self.moments.state;
        let mut scaled = device.zeros(state.precision().rows(), state.precision().cols())?;
        device.axpy(&mut scaled, T::from_f64(rho), state.precision())?;
        let keep: Vec<f64> = self.prior_precision.iter().map(|t| (1.0 - rho) * t.as_f64()).collect();
        state.scale_sums(device, rho)?;
        state.reprior(device, scaled, &keep, da, None)
    }
}
