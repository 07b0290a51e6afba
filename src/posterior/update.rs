//! [`Posterior::update`]: Bayesian updates with new labelled samples, by damped Newton steps to
//! the new mode (the default) or by the seed paper's fixed-scale Newton step.

use super::Features;
use super::Moments;
use super::Posterior;
use super::step;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::host::Targets;
use crate::scalar::Scalar;

/// How the m new samples are folded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpdateRule {
    /// One sample after another, as in the seed paper's code: each sample is an update of its
    /// own, with the posterior left by the one before as its prior.
    Sequential,
    /// All m samples in one update: one Woodbury step per Newton step.
    #[default]
    Joint,
}

/// Where the curvature of the covariance an update stores is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CurvatureAt {
    /// At the new mean w': `Π' = Π + Σ_j H_j(w')`, the Laplace approximation at the new mode.
    #[default]
    Mode,
    /// At the mean the update started from: `Π' = Π + Σ_j H_j(ŵ)`.
    Start,
}

/// How an update moves the mean.
///
/// Both controls maximise the new samples' log-likelihood under the old posterior as prior,
/// `J(w) = Σ_j log p(y_j | w) − ½ (w − ŵ)ᵀ Π (w − ŵ)`, by Newton steps
/// `d = (Π + Σ_j H_j(w))⁻¹ ∇J(w)` through the structure's own Woodbury or refactor path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepControl {
    /// Newton steps with a backtracking (Armijo) line search, `w ← w + α d` with the largest
    /// `α ∈ {1, ½, ¼, …}` such that `J(w + α d) ≥ J(w) + 10⁻⁴ α λ²`, until the Newton decrement
    /// `λ² = ∇Jᵀ d` satisfies `λ²/2 ≤ tolerance · max(1, |J|)` (the tolerance is at least the
    /// element type's ε) or `max_iterations` steps were taken. `J` never decreases, so a batch
    /// of confidently wrong samples cannot throw the head off. The default.
    Damped {
        /// Cap on the Newton steps (≥ 1).
        max_iterations: usize,
        /// Relative tolerance on the Newton decrement (≥ 0).
        tolerance: f64,
        /// Where the stored covariance's curvature is evaluated.
        curvature_at: CurvatureAt,
    },
    /// The seed paper's rule: `iterations` undamped steps `w ← w + γ d`, the covariance of the
    /// last one kept (its curvature at the iterate that step started from). γ = 1 with one
    /// iteration is one full Newton step; the seed paper tuned γ = 10 for the Sequential rule.
    Newton {
        /// Step scale γ (finite).
        gamma: f64,
        /// Newton steps (≥ 1).
        iterations: usize,
    },
}

impl Default for StepControl {
    /// `Damped { max_iterations: 25, tolerance: 1e-10, curvature_at: Mode }`.
    fn default() -> Self {
        StepControl::Damped {
            max_iterations: Self::DEFAULT_MAX_ITERATIONS,
            tolerance: Self::DEFAULT_TOLERANCE,
            curvature_at: CurvatureAt::Mode,
        }
    }
}

impl StepControl {
    /// The step scale the seed paper tuned for its Sequential rule.
    pub const PAPER_GAMMA: f64 = 10.0;
    /// The default cap on damped steps.
    pub const DEFAULT_MAX_ITERATIONS: usize = 25;
    /// The default relative tolerance on the Newton decrement of damped steps.
    pub const DEFAULT_TOLERANCE: f64 = 1e-10;

    /// The step control that the command line's and Python's options name: `step` `"damped"`
    /// or `"newton"` (left out: `"newton"` when only γ is given, else `"damped"`); γ 1 and one
    /// step for `"newton"` where left out, the cap [`Self::DEFAULT_MAX_ITERATIONS`] for
    /// `"damped"`; `curvature_at` `"mode"` or `"start"`.
    ///
    /// ```
    /// use laplace_update::StepControl;
    /// assert_eq!(StepControl::from_options(None, Some(10.0), None, 1e-10, "mode")?, StepControl::newton(10.0));
    /// assert_eq!(StepControl::from_options(None, None, None, 1e-10, "mode")?, StepControl::default());
    /// assert!(StepControl::from_options(Some("damped"), Some(2.0), None, 1e-10, "mode").is_err());
    /// # Ok::<(), laplace_update::Error>(())
    /// ```
    ///
    /// Errors: `InvalidArgument` for an unknown name, γ with damped steps, or settings
    /// [`StepControl::validate`] refuses.
    pub fn from_options(
        step: Option<&str>,
        gamma: Option<f64>,
        iterations: Option<usize>,
        tolerance: f64,
        curvature_at: &str,
    ) -> Result<Self> {
        let curvature_at = match curvature_at {
            "mode" => CurvatureAt::Mode,
            "start" => CurvatureAt::Start,
            other => {
                return Err(Error::invalid(
                    "curvature_at",
                    format!("`mode` or `start`, got `{other}`"),
                ));
            }
        };
        let control = match (step, gamma) {
            (Some("damped"), Some(_)) => {
                return Err(Error::invalid("gamma", "applies to Newton steps, not to damped ones"));
            }
            (Some("damped"), None) | (None, None) => StepControl::Damped {
                max_iterations: iterations.unwrap_or(Self::DEFAULT_MAX_ITERATIONS),
                tolerance,
                curvature_at,
            },
            (Some("newton"), _) | (None, Some(_)) => StepControl::Newton {
                gamma: gamma.unwrap_or(1.0),
                iterations: iterations.unwrap_or(1),
            },
            (Some(other), _) => {
                return Err(Error::invalid("step", format!("`damped` or `newton`, got `{other}`")));
            }
        };
        control.validate()?;
        Ok(control)
    }

    /// One undamped Newton step of scale γ.
    pub fn newton(gamma: f64) -> Self {
        StepControl::Newton { gamma, iterations: 1 }
    }

    /// Checks the settings: γ finite, at least one step, a finite tolerance ≥ 0.
    ///
    /// Errors: `InvalidArgument`.
    pub fn validate(&self) -> Result<()> {
        match *self {
            StepControl::Damped {
                max_iterations,
                tolerance,
                ..
            } => {
                if max_iterations == 0 {
                    return Err(Error::invalid("iterations", "must be at least 1"));
                }
                if !(tolerance.is_finite() && tolerance >= 0.0) {
                    return Err(Error::invalid(
                        "tolerance",
                        format!("must be finite and >= 0, got {tolerance}"),
                    ));
                }
            }
            StepControl::Newton { gamma, iterations } => {
                if !gamma.is_finite() {
                    return Err(Error::invalid("gamma", format!("must be finite, got {gamma}")));
                }
                if iterations == 0 {
                    return Err(Error::invalid("iterations", "must be at least 1"));
                }
            }
        }
        Ok(())
    }
}

/// Settings of [`Posterior::update`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateConfig {
    /// Update rule.
    pub rule: UpdateRule,
    /// How the mean moves: damped Newton steps to the mode (the default), or fixed-scale steps.
    pub step: StepControl,
    /// Forgetting ρ ∈ (0, 1], for streams that drift; 1 (the default) forgets nothing. Before
    /// the new samples are folded in, the data part of the precision is scaled by ρ:
    /// `Π ← ρ(Π − Π₀) + Π₀` with Π₀ the prior, so that after batches B_1..B_t the precision is
    /// `Π₀ + Σ_s ρ^{t−s} H(B_s)`. Exact for every structure; it costs one refactor of Σ (Full:
    /// O(P³), Shared: O(D³), Diag and Kron: O(K·D)) on top of the update. [`Posterior::unlearn`]
    /// removes samples at full weight, so unlearn only samples added since the last forgetting.
    pub forgetting: f64,
}

impl Default for UpdateConfig {
    /// Joint rule, damped steps to the mode, no forgetting.
    fn default() -> Self {
        UpdateConfig {
            rule: UpdateRule::Joint,
            step: StepControl::default(),
            forgetting: 1.0,
        }
    }
}

impl UpdateConfig {
    /// The default settings with one undamped Newton step of scale γ (the seed paper's rule).
    pub fn newton(gamma: f64) -> Self {
        UpdateConfig {
            step: StepControl::newton(gamma),
            ..Default::default()
        }
    }

    /// Checks the settings: the step control's, and forgetting in (0, 1].
    ///
    /// Errors: `InvalidArgument`.
    pub fn validate(&self) -> Result<()> {
        self.step.validate()?;
        let rho = self.forgetting;
        if !(rho > 0.0 && rho <= 1.0) {
            return Err(Error::invalid("forgetting", format!("must be in (0, 1], got {rho}")));
        }
        Ok(())
    }
}

/// What an update did, returned by [`Posterior::update`].
///
/// The objective is the batch's `J(w) = Σ_j log p(y_j | w) − ½ (w − ŵ)ᵀ Π (w − ŵ)` under the
/// posterior before the update (for regression, the log-likelihood without its constant).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateReport {
    /// Newton steps taken (summed over the samples for the Sequential rule).
    pub steps: usize,
    /// The length α of the last step taken (γ for [`StepControl::Newton`]; the smallest over
    /// the samples for the Sequential rule).
    pub step_length: f64,
    /// `J(ŵ)`, at the mean before the update.
    pub objective_before: f64,
    /// `J(w')`, at the mean after it.
    pub objective_after: f64,
    /// `‖w' − ŵ‖ / ‖ŵ‖` (Frobenius norms of the head, bias included when in the posterior).
    pub relative_step: f64,
    /// Whether the line search rejected a full Newton step (a step of length 1 would have
    /// lowered J).
    pub undamped_rejected: bool,
    /// Whether the damped steps met their tolerance within the cap (always true for
    /// [`StepControl::Newton`]).
    pub converged: bool,
}

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
    /// [`CurvatureAt`] names.
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
        state.reprior(device, scaled, &keep, da)
    }
}
