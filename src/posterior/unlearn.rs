//! [`Posterior::unlearn`]: remove samples that a Joint update added.

use super::update::Model;
use super::{Posterior, add_curvature};
use crate::device::{Device, Sign};
use crate::error::{Error, Result};
use crate::host::{HostMatrix, Label, check_features, check_labels};
use crate::scalar::Scalar;

/// Settings of [`Posterior::unlearn`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnlearnConfig {
    /// The step scale γ the samples were added with.
    pub gamma: f64,
    /// Cap on the fixed-point iterations that recover the head before the update.
    pub max_iterations: usize,
    /// Stop when the head moves by at most `tol · max(1, ‖w‖_∞)` in one iteration, with
    /// `tol = max(tolerance, 8 ε)` for the posterior's element type.
    pub tolerance: f64,
}

impl Default for UnlearnConfig {
    fn default() -> Self {
        UnlearnConfig {
            gamma: 1.0,
            max_iterations: 200,
            tolerance: 1e-12,
        }
    }
}

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// Removes m samples that a Joint update (step scale 0 < γ ≤ 1, one Newton step) added: the
    /// exact inverse of that update.
    ///
    /// The head ŵ the update started from solves `w' = ŵ + γ Σ' g(ŵ)`, with Σ' the current
    /// covariance and `g(w) = Σ_j (e_{y_j} − p_j(w)) ⊗ φ_j`; it is found by the fixed-point
    /// iteration `w ← w' − γ Σ' g(w)`. With B evaluated at ŵ, the covariance is downdated by
    /// `Σ = Σ' + Σ'B (I − BᵀΣ'B)⁻¹ BᵀΣ'`, the precision loses `Σ_j H_j(ŵ)`, and the mean becomes ŵ.
    ///
    /// Errors: the input errors of [`Posterior::update`]; `Unsupported` for γ > 1 (the map
    /// w ↦ w + γΣ'g(w) need not be one-to-one); `InvalidArgument` when more samples are
    /// removed than were seen, or when the head recovery does not converge;
    /// `NotPositiveDefinite` when `I − BᵀΣ'B` is not positive definite (the samples cannot have
    /// been added). On any error the posterior is unchanged.
    pub fn unlearn<L: Label>(
        &mut self,
        features: HostMatrix<'_, T>,
        labels: &[L],
        config: &UnlearnConfig,
    ) -> Result<()> {
        let device = self.device.clone();
        device.scope(|| self.unlearn_in_scope(features, labels, config))
    }

    fn unlearn_in_scope<L: Label>(
        &mut self,
        features: HostMatrix<'_, T>,
        labels: &[L],
        config: &UnlearnConfig,
    ) -> Result<()> {
        if !(config.gamma.is_finite() && config.gamma > 0.0) {
            return Err(Error::invalid(
                "gamma",
                format!("must be finite and > 0, got {}", config.gamma),
            ));
        }
        if config.gamma > 1.0 {
            // w ↦ w + γ Σ' g(w) need not be one-to-one for γ > 1: the head before the update
            // would not be determined by the head after it.
            return Err(Error::Unsupported(format!(
                "unlearning an update with γ = {} > 1: the head before it is not uniquely determined",
                config.gamma
            )));
        }
        if !(config.tolerance.is_finite() && config.tolerance >= 0.0) {
            return Err(Error::invalid("tolerance", "must be finite and >= 0"));
        }
        check_features("features", &features, self.features)?;
        check_labels(labels, features.rows(), self.classes)?;
        let m = features.rows();
        if m > self.samples_seen {
            return Err(Error::invalid(
                "features",
                format!("removes {m} samples from a posterior that saw {}", self.samples_seen),
            ));
        }
        let device = &self.device;
        let (phi, targets) = self.upload_batch(&features, labels, 0, m)?;
        let gamma = T::from_f64(config.gamma);
        let model = Model {
            device,
            structure: self.structure,
            fixed_bias: self.fixed_bias.as_ref(),
        };
        let moments = &self.moments;

        let tolerance = config.tolerance.max(8.0 * T::EPS.as_f64());
        // Fixed point w ← w' − γ Σ' g(w), from w = w'.
        let mut head = device.copy(&moments.head)?;
        let mut converged = false;
        for _ in 0..config.max_iterations {
            let (_, grad) = model.likelihood_gradient(&phi, &targets, &head)?;
            let mut next = device.copy(&moments.head)?;
            model.apply_matrix(&moments.covariance, &grad, &mut next, -gamma)?;
            let mut change = device.copy(&next)?;
            device.axpy(&mut change, -T::one(), &head)?;
            let (moved, size) = (device.max_abs(&change)?, device.max_abs(&next)?);
            head = next;
            if !moved.is_finite() {
                break;
            }
            if moved.as_f64() <= tolerance * size.as_f64().max(1.0) {
                converged = true;
                break;
            }
        }
        if !converged {
            return Err(Error::invalid(
                "gamma",
                format!(
                    "the head before the update was not recovered in {} iterations",
                    config.max_iterations
                ),
            ));
        }
        let (probs, _) = model.likelihood_gradient(&phi, &targets, &head)?;
        let (u, c_chol) = model.woodbury_factor(&moments.covariance, &phi, &probs, Sign::Plus)?;
        let mut precision = device.copy(&moments.precision)?;
        add_curvature(device, self.structure, &mut precision, &phi, &probs, -T::one())?;
        // Commit: only device faults can fail from here.
        device.low_rank_update(&mut self.moments.covariance, &u, &c_chol, Sign::Plus)?;
        self.moments.precision = precision;
        self.moments.head = head;
        self.samples_seen -= m;
        Ok(())
    }
}
