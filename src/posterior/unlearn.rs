//! [`Posterior::unlearn`]: remove samples that a Joint update added.

use super::Features;
use super::model::Model;
use super::structure::{self, Operand};
use super::{Curvature, CurvatureAt, Posterior, StepControl};
use crate::device::{Device, Sign};
use crate::error::{Error, Result};
use crate::host::Targets;
use crate::scalar::Scalar;

/// Settings of [`Posterior::unlearn`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnlearnConfig {
    /// The step control the samples were added with (a Joint update's).
    pub step: StepControl,
    /// Cap on the iterations that recover the head before a [`StepControl::Newton`] update.
    pub max_iterations: usize,
    /// Stop when the head moves by at most `tol · max(1, ‖w‖_∞)` in one iteration, with
    /// `tol = max(tolerance, 8 ε)` for the posterior's element type.
    pub tolerance: f64,
}

impl Default for UnlearnConfig {
    fn default() -> Self {
        UnlearnConfig {
            step: StepControl::default(),
            max_iterations: 200,
            tolerance: 1e-12,
        }
    }
}

impl UnlearnConfig {
    /// The default settings for samples added by one Newton step of scale γ.
    pub fn newton(gamma: f64) -> Self {
        UnlearnConfig {
            step: StepControl::newton(gamma),
            ..Default::default()
        }
    }

    /// Checks the settings: a damped update whose covariance is at the mode, or one Newton
    /// step with 0 < γ ≤ 1; a finite tolerance ≥ 0.
    ///
    /// Errors: `InvalidArgument`, `Unsupported` (γ > 1, several Newton steps, or a damped
    /// update whose covariance is at its start).
    pub fn validate(&self) -> Result<()> {
        self.step.validate()?;
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(Error::invalid("tolerance", "must be finite and >= 0"));
        }
        let gamma = match self.step {
            StepControl::Damped {
                curvature_at: CurvatureAt::Mode,
                ..
            } => return Ok(()),
            StepControl::Damped {
                curvature_at: CurvatureAt::Start,
                ..
            } => {
                // Π' = Π + H(ŵ) with ŵ unknown: the precision to remove depends on the answer.
                return Err(Error::Unsupported(
                    "unlearning a damped update whose covariance is at its start: use CurvatureAt::Mode".into(),
                ));
            }
            StepControl::Newton { iterations, .. } if iterations > 1 => {
                return Err(Error::Unsupported(format!(
                    "unlearning an update of {iterations} Newton steps: only one step is invertible here"
                )));
            }
            StepControl::Newton { gamma, .. } => gamma,
        };
        if gamma <= 0.0 {
            return Err(Error::invalid("gamma", format!("must be finite and > 0, got {gamma}")));
        }
        if gamma > 1.0 {
            // w ↦ w + γ Σ' g(w) need not be one-to-one for γ > 1: the head before the update
            // would not be determined by the head after it.
            return Err(Error::Unsupported(format!(
                "unlearning an update with γ = {} > 1: the head before it is not uniquely determined",
                gamma
            )));
        }
        Ok(())
    }
}

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// Removes m samples that a Joint update added: the inverse of that update.
    ///
    /// A damped update ([`StepControl::Damped`], covariance at the mode) ended at the mode w' of
    /// `J(w) = Σ_j log p(y_j | w) − ½ (w − ŵ)ᵀ Π (w − ŵ)`, where `∇J(w') = 0`, so
    /// `ŵ = w' − Π⁻¹ Σ_j g_j(w')` with `Π = Π' − Σ_j H_j(w')`: one downdate and one product, in
    /// closed form. The head is recovered to the accuracy the update converged to (its
    /// [`UpdateReport::converged`](super::UpdateReport)).
    ///
    /// After one Newton step of scale 0 < γ ≤ 1 ([`StepControl::Newton`]), the head ŵ the update started from solves `w' = ŵ + γ Σ' g(ŵ)`, with Σ' the current
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
    /// w ↦ w + γΣ'g(w) need not be one-to-one), several Newton steps, or a damped update with
    /// its covariance at the start; `InvalidArgument` when more samples are
    /// removed than were seen, or when the head recovery does not converge;
    /// `NotPositiveDefinite` when `I − BᵀΣ'B` is not positive definite (the samples cannot have
    /// been added). On any error the posterior is unchanged.
    pub fn unlearn<F: Features<D, T>, Y: Targets<T> + ?Sized>(
        &mut self,
        features: F,
        targets: &Y,
        config: &UnlearnConfig,
    ) -> Result<()> {
        self.ensure_working_memory("unlearning", features.rows())?;
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
        let tau = self.prior_precision[0];
        let (model, moments) = self.split();
        let device = model.device;
        let gamma = match config.step {
            StepControl::Newton { gamma, .. } => T::from_f64(gamma),
            StepControl::Damped { .. } => {
                // ŵ = w' − Π⁻¹ g(w'), Π⁻¹ the covariance after removing H(w').
                let (outputs, grad) = model.evaluate(&batch, &moments.head)?;
                let term = moments.state.curvature_term(&model, &batch, &outputs, None)?;
                let step = moments
                    .state
                    .covariance_step(device, &batch.phi, &term, Sign::Plus, tau, T::one())?;
                let mut head = device.copy(&moments.head)?;
                structure::apply_stepped(device, &*moments.state, &step, Sign::Plus, &grad, &mut head, -T::one())?;
                // Commit: only device faults can fail from here.
                structure::commit(device, &mut moments.state, step, &batch.phi, &term, Sign::Plus)?;
                moments.head = head;
                self.samples_seen -= m;
                return Ok(());
            }
        };

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
