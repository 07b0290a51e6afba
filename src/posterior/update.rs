//! [`Posterior::update`]: closed-form Bayesian updates with new labelled samples.

use super::{Moments, Posterior, Structure, add_curvature, probabilities, shared_weights};
use crate::device::{Device, LowRankFactor, Matrix, Op, Sign};
use crate::error::{Error, Result};
use crate::host::{HostMatrix, Label, check_features, check_labels};
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
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            rule: UpdateRule::Joint,
            gamma: 1.0,
            iterations: 1,
        }
    }
}

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// Folds m new labelled samples (Φ_new m × D, labels) into the posterior.
    ///
    /// `Σ' = (Σ⁻¹ + Σ_j H_j)⁻¹` by Woodbury (`Σ' = Σ − U C⁻¹ Uᵀ`, `U = ΣB`, `C = I + BᵀΣB`),
    /// `Π' = Π + Σ_j H_j`, and `w' = ŵ + γ Σ' Σ_j (e_{y_j} − p_j) ⊗ φ_j`.
    ///
    /// The update is a transaction: on any error the posterior is exactly as before.
    ///
    /// Errors: `EmptyBatch`, `ShapeMismatch`, `NonFinite`, `LabelOutOfRange`, `InvalidArgument`
    /// (γ not finite, `iterations == 0`), `NotPositiveDefinite`.
    pub fn update<L: Label>(&mut self, features: HostMatrix<'_, T>, labels: &[L], config: &UpdateConfig) -> Result<()> {
        let device = self.device.clone();
        device.scope(|| self.update_in_scope(features, labels, config))
    }

    fn update_in_scope<L: Label>(
        &mut self,
        features: HostMatrix<'_, T>,
        labels: &[L],
        config: &UpdateConfig,
    ) -> Result<()> {
        if !config.gamma.is_finite() {
            return Err(Error::invalid("gamma", format!("must be finite, got {}", config.gamma)));
        }
        if config.iterations == 0 {
            return Err(Error::invalid("iterations", "must be at least 1"));
        }
        check_features("features", &features, self.features)?;
        check_labels(labels, features.rows(), self.classes)?;
        let gamma = T::from_f64(config.gamma);
        let m = features.rows();
        // One sample: both rules are the same update, and Joint needs no working copy.
        let rule = if m == 1 { UpdateRule::Joint } else { config.rule };

        match (rule, self.structure) {
            (UpdateRule::Joint, _) => {
                let (phi, targets) = self.upload_batch(&features, labels, 0, m)?;
                let model = Model {
                    device: &self.device,
                    structure: self.structure,
                    fixed_bias: self.fixed_bias.as_ref(),
                };
                model.newton(&mut self.moments, &phi, &targets, gamma, config.iterations)?;
            }
            (UpdateRule::Sequential, Structure::Shared(weighting)) if config.iterations == 1 => {
                let (phi, targets) = self.upload_batch(&features, labels, 0, m)?;
                let mut work = self.moments.copy(&self.device)?;
                let used = self.device.sherman_morrison_sequence(
                    &mut work.covariance,
                    &mut work.head,
                    self.fixed_bias.as_ref(),
                    &phi,
                    &targets,
                    gamma,
                    weighting,
                )?;
                self.device
                    .weighted_syrk(&mut work.precision, T::one(), &phi, Some(&used), T::one())?;
                self.moments = work;
            }
            (UpdateRule::Sequential, _) => {
                let mut work = self.moments.copy(&self.device)?;
                let model = Model {
                    device: &self.device,
                    structure: self.structure,
                    fixed_bias: self.fixed_bias.as_ref(),
                };
                for j in 0..m {
                    let (phi, targets) = self.upload_batch(&features, labels, j, 1)?;
                    model.newton(&mut work, &phi, &targets, gamma, config.iterations)?;
                }
                self.moments = work;
            }
        }
        self.samples_seen += m;
        Ok(())
    }
}

/// The covariance part of a Newton step, computed before anything is committed.
enum CovarianceStep<D: Device, T: Scalar> {
    /// `Σ' = Σ − U C⁻¹ Uᵀ` with `c_chol = chol(C)`; Π gains the samples' curvature.
    Woodbury { u: Matrix<D, T>, c_chol: Matrix<D, T> },
    /// Π' and `Σ' = Π'⁻¹`, refactored.
    Refactor {
        precision: Matrix<D, T>,
        covariance: Matrix<D, T>,
    },
}

/// What a Newton step reads of a posterior besides its moments.
pub(super) struct Model<'a, D: Device, T: Scalar> {
    pub(super) device: &'a D,
    pub(super) structure: Structure,
    pub(super) fixed_bias: Option<&'a Matrix<D, T>>,
}

impl<D: Device, T: Scalar> Model<'_, D, T> {
    /// Joint Newton update of `moments` with the samples Φ (m × D_aug) and one-hot targets.
    ///
    /// Every fallible computation of a step (Woodbury factor, Cholesky of C) runs before
    /// `moments` is written, so an error leaves it untouched.
    fn newton(
        &self,
        moments: &mut Moments<D, T>,
        phi: &Matrix<D, T>,
        targets: &Matrix<D, T>,
        gamma: T,
        iterations: usize,
    ) -> Result<()> {
        let device = self.device;
        // Iterate w_t; `None` while it is still the anchor ŵ = moments.head.
        let mut iterate: Option<Matrix<D, T>> = None;
        for t in 0..iterations {
            let head = iterate.as_ref().unwrap_or(&moments.head);
            // Gradient of the log-likelihood, K × D_aug: G = (T − P)ᵀ Φ, plus −Π(w_t − ŵ).
            let (probs, mut grad) = self.likelihood_gradient(phi, targets, head)?;
            let step = self.covariance_step(moments, phi, &probs)?;
            if let Some(w_t) = &iterate {
                let mut diff = device.copy(w_t)?;
                device.axpy(&mut diff, -T::one(), &moments.head)?;
                self.apply_matrix(&moments.precision, &diff, &mut grad, -T::one())?;
            }

            let mut new_head = match iterate.take() {
                Some(w_t) => w_t,
                None => device.copy(&moments.head)?,
            };
            if t + 1 == iterations {
                // Commit: from here on only device faults can fail.
                match step {
                    CovarianceStep::Woodbury { u, c_chol } => {
                        device.low_rank_update(&mut moments.covariance, &u, &c_chol, Sign::Minus)?;
                        add_curvature(device, self.structure, &mut moments.precision, phi, &probs, T::one())?;
                    }
                    CovarianceStep::Refactor { precision, covariance } => {
                        moments.precision = precision;
                        moments.covariance = covariance;
                    }
                }
                self.apply_matrix(&moments.covariance, &grad, &mut new_head, gamma)?;
                moments.head = new_head;
            } else {
                let cov_t = match step {
                    CovarianceStep::Woodbury { u, c_chol } => {
                        let mut cov_t = device.copy(&moments.covariance)?;
                        device.low_rank_update(&mut cov_t, &u, &c_chol, Sign::Minus)?;
                        cov_t
                    }
                    CovarianceStep::Refactor { covariance, .. } => covariance,
                };
                self.apply_matrix(&cov_t, &grad, &mut new_head, gamma)?;
                iterate = Some(new_head);
            }
        }
        Ok(())
    }

    /// The new covariance `(Π + Σ_j H_j)⁻¹` of a step, in the cheaper of two forms: Woodbury
    /// factors while the rank r of `Σ_j H_j` (m·K for Full, m for Shared) is below half the side
    /// n of Σ (cost ≈ 2n²r + r³/3), else the refactored pair (cost ≈ n³).
    fn covariance_step(
        &self,
        moments: &Moments<D, T>,
        phi: &Matrix<D, T>,
        probs: &Matrix<D, T>,
    ) -> Result<CovarianceStep<D, T>> {
        let rank = match self.structure {
            Structure::Full => phi.rows() * probs.cols(),
            Structure::Shared(_) => phi.rows(),
        };
        if 2 * rank < moments.covariance.rows() {
            let (u, c_chol) = self.woodbury_factor(&moments.covariance, phi, probs, Sign::Minus)?;
            return Ok(CovarianceStep::Woodbury { u, c_chol });
        }
        let mut precision = self.device.copy(&moments.precision)?;
        add_curvature(self.device, self.structure, &mut precision, phi, probs, T::one())?;
        let covariance = self.device.spd_inverse(&precision)?;
        Ok(CovarianceStep::Refactor { precision, covariance })
    }

    /// `(U, L)` with `U = ΣB` and `L = chol(I ± BᵀΣB)` for the curvature factor B of the samples:
    /// `+` for an update (`Sign::Minus` in Σ' = Σ − U C⁻¹ Uᵀ), `−` for a downdate (`Sign::Plus`).
    pub(super) fn woodbury_factor(
        &self,
        covariance: &Matrix<D, T>,
        phi: &Matrix<D, T>,
        probs: &Matrix<D, T>,
        sign: Sign,
    ) -> Result<(Matrix<D, T>, Matrix<D, T>)> {
        let device = self.device;
        let weights;
        let factor = match self.structure {
            Structure::Full => LowRankFactor::Kronecker { probs },
            Structure::Shared(weighting) => {
                weights = shared_weights(device, weighting, probs)?;
                LowRankFactor::Shared {
                    weights: weights.as_ref(),
                }
            }
        };
        let (u, g) = device.kron_products(covariance, phi, factor)?;
        let mut c = device.zeros(g.rows(), g.cols())?;
        device.add_diagonal(&mut c, T::one())?;
        device.axpy(&mut c, if sign == Sign::Minus { T::one() } else { -T::one() }, &g)?;
        device.cholesky(&mut c)?;
        Ok((u, c))
    }

    /// Probabilities at `head` and the log-likelihood gradient `G = (T − P)ᵀ Φ` (K × D_aug).
    pub(super) fn likelihood_gradient(
        &self,
        phi: &Matrix<D, T>,
        targets: &Matrix<D, T>,
        head: &Matrix<D, T>,
    ) -> Result<(Matrix<D, T>, Matrix<D, T>)> {
        let device = self.device;
        let probs = probabilities(device, phi, head, self.fixed_bias)?;
        let mut residual = device.copy(targets)?;
        device.axpy(&mut residual, -T::one(), &probs)?;
        let mut grad = device.zeros(targets.cols(), phi.cols())?;
        device.gemm(&mut grad, T::zero(), &residual, Op::T, phi, Op::N, T::one())?;
        Ok((probs, grad))
    }

    /// `out ← out + α · A x` for a matrix A acting on weight space and x a K × D_aug head-shaped
    /// matrix: `vec(out) += α A vec(x)` for Full, `out += α x A` for Shared (`A = I_K ⊗ A_D`).
    pub(super) fn apply_matrix(
        &self,
        a: &Matrix<D, T>,
        x: &Matrix<D, T>,
        out: &mut Matrix<D, T>,
        alpha: T,
    ) -> Result<()> {
        let device = self.device;
        match self.structure {
            Structure::Full => {
                let (k, da) = x.shape();
                let mut x_vec = device.copy(x)?;
                x_vec.reshape(k * da, 1)?;
                out.reshape(k * da, 1)?;
                let result = device.gemm(out, T::one(), a, Op::N, &x_vec, Op::N, alpha);
                out.reshape(k, da)?;
                result
            }
            Structure::Shared(_) => device.gemm(out, T::one(), x, Op::N, a, Op::N, alpha),
        }
    }
}
