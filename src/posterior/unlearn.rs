//! [`Posterior::unlearn`]: remove samples that a Joint update added.

use super::Features;
use super::model::Model;
use super::structure::{self, Operand};
use super::{Curvature, Posterior};
use crate::device::{Device, Sign};
use crate::error::{Error, Result};
use crate::host::Targets;
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

impl UnlearnConfig {
    /// Checks the settings: 0 < γ ≤ 1, a finite tolerance ≥ 0.
    ///
    /// Errors: `InvalidArgument`, `Unsupported` (γ > 1).
    pub fn validate(&self) -> Result<()> {
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            return Err(Error::invalid(
                "gamma",
                format!("must be finite and > 0, got {}", self.gamma),
            ));
        }
        if self.gamma > 1.0 {
            // w ↦ w + γ Σ' g(w) need not be one-to-one for γ > 1: the head before the update
            // would not be determined by the head after it.
            return Err(Error::Unsupported(format!(
                "unlearning an update with γ = {} > 1: the head before it is not uniquely determined",
                self.gamma
            )));
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(Error::invalid("tolerance", "must be finite and >= 0"));
        }
        Ok(())
    }
}

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// Removes m samples that a Joint update (step scale 0 < γ ≤ 1, one Newton step) added: the
    /// exact inverse of that update.
    ///
    /// The head ŵ the update started from solves `w' = ŵ + γ Σ' g(ŵ)`, with Σ' the current
    /// covariance and `g(w) = Σ_j (e_{y_j} − p_j(w)) ⊗ φ_j`; it is found by the fixed-point
    /// iteration `w ← w' − γ Σ' g(w)`, which contracts when `γ ‖Σ' G‖ < 1` for the curvature
    /// G of the removed samples: for the GGN (Σ' is the inverse of a precision that contains G),
    /// not necessarily for the Fisher variants. When it has not converged after 100 iterations,
    /// Newton's method on `F(w) = w + γ Σ' g(w) − w'` takes over (all structures but Kron):
    /// `w ← w − (Π' − γ G(w))⁻¹ Π' F(w)`, G the GGN in the posterior's structure. A recovery
    /// that converges neither way is an `InvalidArgument` error. With B evaluated at ŵ, the covariance is downdated by
    /// `Σ = Σ' + Σ'B (I − BᵀΣ'B)⁻¹ BᵀΣ'`, the precision loses `Σ_j H_j(ŵ)`, and the mean becomes ŵ.
    ///
    /// Errors: the input errors of [`Posterior::update`]; `Unsupported` for γ > 1 (the map
    /// w ↦ w + γΣ'g(w) need not be one-to-one); `InvalidArgument` when more samples are
    /// removed than were seen, or when the head recovery does not converge;
    /// `NotPositiveDefinite` when `I − BᵀΣ'B` is not positive definite (the samples cannot have
    /// been added). On any error the posterior is unchanged.
    pub fn unlearn<F: Features<D, T>, Y: Targets<T> + ?Sized>(
        &mut self,
        features: F,
        targets: &Y,
        config: &UnlearnConfig,
    ) -> Result<()> {
        let device = self.device.clone();
        device.scope(|| self.unlearn_in_scope(features, targets, config))
    }

    fn unlearn_in_scope<F: Features<D, T>, Y: Targets<T> + ?Sized>(
        &mut self,
        features: F,
        targets: &Y,
        config: &UnlearnConfig,
    ) -> Result<()> {
        config.validate()?;
        self.check_batch(&features, targets)?;
        let m = features.rows();
        if m > self.samples_seen {
            return Err(Error::invalid(
                "features",
                format!("removes {m} samples from a posterior that saw {}", self.samples_seen),
            ));
        }
        let batch = self.upload_batch(&features, targets, 0, m)?;
        let gamma = T::from_f64(config.gamma);
        let tau = self.prior_precision[0];
        let (model, moments) = self.split();
        let device = model.device;

        let tolerance = config.tolerance.max(8.0 * T::EPS.as_f64());
        let state = &moments.state;
        // Fixed point w ← w' − γ Σ' g(w), from w = w': cheap, and contracting for the GGN.
        let mut head = device.copy(&moments.head)?;
        let mut converged = false;
        for _ in 0..config.max_iterations.min(FIXED_POINT_ITERATIONS) {
            let (_, grad) = model.evaluate(&batch, &head)?;
            let mut next = device.copy(&moments.head)?;
            state.apply(device, Operand::Covariance, &grad, &mut next, -gamma)?;
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
        if !converged && state.scaled_removal() {
            // Newton on F(w) = w + γ Σ' g(w) − w': F'(w) = I − γ Σ' G(w) with G the GGN of the
            // removed samples, so w ← w − (Π' − γ G(w))⁻¹ Π' F(w), from w = w' again.
            let newton = Model {
                curvature: Curvature::Ggn,
                ..model
            };
            head = device.copy(&moments.head)?;
            for _ in 0..config.max_iterations {
                let (outputs, grad) = model.evaluate(&batch, &head)?;
                let mut residual = device.copy(&head)?;
                state.apply(device, Operand::Covariance, &grad, &mut residual, gamma)?;
                device.axpy(&mut residual, -T::one(), &moments.head)?;
                let (size, norm) = (device.max_abs(&residual)?, device.max_abs(&head)?);
                if !size.is_finite() {
                    break;
                }
                if size.as_f64() <= tolerance * norm.as_f64().max(1.0) {
                    converged = true;
                    break;
                }
                let mut rhs = device.zeros(residual.rows(), residual.cols())?;
                state.apply(device, Operand::Precision, &residual, &mut rhs, T::one())?;
                let term = state.curvature_term(&newton, &batch, &outputs, None)?;
                let step = state.covariance_step(device, &batch.phi, &term, Sign::Plus, tau, gamma)?;
                let jacobian = structure::stepped(device, &**state, step, Sign::Plus)?;
                jacobian.apply(device, Operand::Covariance, &rhs, &mut head, -T::one())?;
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
        let (outputs, _) = model.evaluate(&batch, &head)?;
        let term = state.curvature_term(&model, &batch, &outputs, None)?;
        let step = state.covariance_step(device, &batch.phi, &term, Sign::Plus, tau, T::one())?;
        // Commit: only device faults can fail from here.
        structure::commit(device, &mut moments.state, step, &batch.phi, &term, Sign::Plus)?;
        moments.head = head;
        self.samples_seen -= m;
        Ok(())
    }
}

/// Fixed-point iterations tried before Newton's method takes over.
const FIXED_POINT_ITERATIONS: usize = 100;
