//! The Newton steps of an update: damped to the mode of the update's objective, or of fixed
//! scale (the seed paper's rule), each through the structure's own covariance step.
//!
//! The objective of a batch under the posterior `N(ŵ, Π⁻¹)` is
//! `J(w) = Σ_j log p(y_j | w) − ½ (w − ŵ)ᵀ Π (w − ŵ)`; a step at w is
//! `d = (Π + Σ_j H_j(w))⁻¹ ∇J(w)`, and the Newton decrement `λ² = ∇J(w)ᵀ d`.

use super::model::{Batch, Model};
use super::structure::{self, CovarianceStep, CurvatureTerm, Operand};
use super::update::{CurvatureAt, StepControl, UpdateReport};
use super::{Likelihood, Moments, logits};
use crate::device::{Device, Matrix, Sign};
use crate::error::{Error, Result};
use crate::numerics::log_sum_exp;
use crate::scalar::Scalar;

/// Armijo's sufficient-increase constant c in `J(w + αd) ≥ J(w) + c α λ²`.
const ARMIJO: f64 = 1e-4;
/// Halvings of the step length before the line search gives up (α ≥ 2⁻⁴⁰).
const HALVINGS: usize = 40;

impl UpdateReport {
    /// Nothing done yet: the identity of [`UpdateReport::then`].
    pub(crate) fn empty() -> Self {
        UpdateReport {
            steps: 0,
            step_length: f64::INFINITY,
            objective_before: 0.0,
            objective_after: 0.0,
            relative_step: 0.0,
            undamped_rejected: false,
            converged: true,
        }
    }

    /// `steps` fixed-scale steps of scale γ (objectives and the relative step filled in by the
    /// caller).
    pub(crate) fn fixed(steps: usize, gamma: f64) -> Self {
        UpdateReport {
            steps,
            step_length: gamma,
            ..Self::empty()
        }
    }

    /// Two solves in sequence: steps and objectives summed, the shorter step, either rejection.
    pub(crate) fn then(self, next: Self) -> Self {
        UpdateReport {
            steps: self.steps + next.steps,
            step_length: self.step_length.min(next.step_length),
            objective_before: self.objective_before + next.objective_before,
            objective_after: self.objective_after + next.objective_after,
            relative_step: 0.0,
            undamped_rejected: self.undamped_rejected || next.undamped_rejected,
            converged: self.converged && next.converged,
        }
    }
}

/// Moves `moments` to the batch's new mean by the step control, and adds the batch's curvature
/// to its covariance. Every fallible computation runs before `moments` is written, so an error
/// leaves it untouched. `tau` is the prior Kron adds to its eigenvalues. The report's
/// `relative_step` is left to the caller.
pub(crate) fn solve<D: Device, T: Scalar>(
    model: &Model<'_, D, T>,
    moments: &mut Moments<D, T>,
    batch: &Batch<D, T>,
    control: StepControl,
    tau: T,
) -> Result<UpdateReport> {
    match control {
        StepControl::Newton { gamma, iterations } => fixed(model, moments, batch, T::from_f64(gamma), iterations, tau),
        StepControl::Damped {
            max_iterations,
            tolerance,
            curvature_at,
        } => damped(model, moments, batch, max_iterations, tolerance, curvature_at, tau),
    }
}

/// The seed paper's rule: `iterations` steps `w ← w + γ Σ_w ∇J(w)`, the covariance of the last
/// step kept.
fn fixed<D: Device, T: Scalar>(
    model: &Model<'_, D, T>,
    moments: &mut Moments<D, T>,
    batch: &Batch<D, T>,
    gamma: T,
    iterations: usize,
    tau: T,
) -> Result<UpdateReport> {
    let device = model.device;
    let before = log_likelihood(model, batch, &moments.head)?;
    let mut head = device.copy(&moments.head)?;
    let mut last = None;
    for t in 0..iterations {
        let (outputs, mut grad) = model.evaluate(batch, &head)?;
        if t > 0 {
            let (_, prior) = prior_term(device, moments, &head)?;
            device.axpy(&mut grad, -T::one(), &prior)?;
        }
        let state = &*moments.state;
        let term = state.curvature_term(model, batch, &outputs, None)?;
        let step = state.covariance_step(device, &batch.phi, &term, Sign::Minus, tau, T::one())?;
        structure::apply_stepped(device, state, &step, Sign::Minus, &grad, &mut head, gamma)?;
        last = Some(Curvature { term, step: Some(step) });
    }
    let after = objective(model, moments, batch, &head)?;
    if let Some(here) = last {
        here.commit(device, moments, batch, tau)?;
    }
    moments.head = head;
    Ok(UpdateReport {
        objective_before: before,
        objective_after: after,
        ..UpdateReport::fixed(iterations, gamma.as_f64())
    })
}

/// Damped Newton steps to the mode of J with a backtracking (Armijo) line search, then the
/// covariance with the curvature at the mode (or at the start).
fn damped<D: Device, T: Scalar>(
    model: &Model<'_, D, T>,
    moments: &mut Moments<D, T>,
    batch: &Batch<D, T>,
    max_iterations: usize,
    tolerance: f64,
    curvature_at: CurvatureAt,
    tau: T,
) -> Result<UpdateReport> {
    let device = model.device;
    let tolerance = tolerance.max(T::EPS.as_f64());
    // The curvature of a Gaussian likelihood's GGN does not depend on the head.
    let fixed_curvature = !model.head_dependent_curvature();
    let (k, da) = moments.head.shape();
    let mut w = device.copy(&moments.head)?;
    // r = Π(w − ŵ) and q = (w − ŵ)ᵀ Π (w − ŵ), kept along the steps.
    let mut r = device.zeros(k, da)?;
    let mut q = 0.0;
    let before = log_likelihood(model, batch, &w)?;
    let mut objective = before;
    // The curvature at ŵ (and the covariance step it made, if any), kept for `CurvatureAt::Start`.
    let mut start: Option<Curvature<D, T>> = None;
    let mut outcome = UpdateReport {
        objective_before: before,
        ..UpdateReport::fixed(0, 0.0)
    };
    for t in 0.. {
        let (outputs, mut grad) = model.evaluate(batch, &w)?;
        device.axpy(&mut grad, -T::one(), &r)?;
        let term = moments.state.curvature_term(model, batch, &outputs, None)?;
        let mut d = device.zeros(k, da)?;
        let step = structure::newton_direction(device, &*moments.state, &batch.phi, &term, tau, &grad, &mut d)?;
        let here = Curvature { term, step };
        let decrement = inner(device, &grad, &d)?;
        if !decrement.is_finite() {
            return Err(Error::NonFinite {
                argument: "update step",
                index: 0,
            });
        }
        let converged = decrement / 2.0 <= tolerance * objective.abs().max(1.0);
        let accepted = if converged || t == max_iterations {
            None
        } else {
            // Line search along d: J(w + αd) = log p(w + αd) − ½(q + 2α rᵀd + α² dᵀΠd).
            let mut pd = device.zeros(k, da)?;
            moments.state.apply(device, Operand::Precision, &d, &mut pd, T::one())?;
            let (rd, dpd) = (inner(device, &r, &d)?, inner(device, &d, &pd)?);
            let mut alpha = 1.0;
            let mut accepted = None;
            for _ in 0..=HALVINGS {
                let mut trial = device.copy(&w)?;
                device.axpy(&mut trial, T::from_f64(alpha), &d)?;
                let trial_q = q + 2.0 * alpha * rd + alpha * alpha * dpd;
                let trial_objective = log_likelihood(model, batch, &trial)? - 0.5 * trial_q;
                if trial_objective >= objective + ARMIJO * alpha * decrement {
                    accepted = Some((alpha, trial, trial_q, trial_objective, pd));
                    break;
                }
                alpha *= 0.5;
            }
            accepted
        };
        // A Gaussian likelihood's J is quadratic: a full step lands on the mode.
        let exact = matches!(accepted, Some((alpha, ..)) if alpha == 1.0 && fixed_curvature);
        let finish = match accepted {
            Some((alpha, trial, trial_q, trial_objective, pd)) => {
                outcome.undamped_rejected |= t == 0 && alpha < 1.0;
                outcome.steps += 1;
                outcome.step_length = alpha;
                device.axpy(&mut r, T::from_f64(alpha), &pd)?;
                (w, q, objective) = (trial, trial_q, trial_objective);
                exact
            }
            // Converged, at the cap, or no increase along an ascent direction (J is at its
            // maximum to working precision).
            None => true,
        };
        if finish {
            outcome.converged = converged || exact || t < max_iterations;
            outcome.objective_after = objective;
            let keep = match (curvature_at, start) {
                (CurvatureAt::Start, Some(kept)) => kept,
                _ => here,
            };
            keep.commit(model.device, moments, batch, tau)?;
            moments.head = w;
            return Ok(outcome);
        }
        if t == 0 && curvature_at == CurvatureAt::Start {
            start = Some(here);
        }
    }
    unreachable!("the loop returns by its cap")
}

/// A batch's curvature at some head, and the covariance step it made if one was formed.
struct Curvature<D: Device, T: Scalar> {
    term: CurvatureTerm<D, T>,
    step: Option<CovarianceStep<D, T>>,
}

impl<D: Device, T: Scalar> Curvature<D, T> {
    /// Adds the curvature to the state (forming its covariance step if need be); only device
    /// faults and a covariance that fails its checks can fail here, before anything is written.
    fn commit(self, device: &D, moments: &mut Moments<D, T>, batch: &Batch<D, T>, tau: T) -> Result<()> {
        let step = match self.step {
            Some(step) => step,
            None => moments
                .state
                .covariance_step(device, &batch.phi, &self.term, Sign::Minus, tau, T::one())?,
        };
        structure::commit(device, &mut moments.state, step, &batch.phi, &self.term, Sign::Minus)
    }
}

/// `J(w)` of a batch under the posterior `moments` (mean ŵ, precision Π).
pub(crate) fn objective<D: Device, T: Scalar>(
    model: &Model<'_, D, T>,
    moments: &Moments<D, T>,
    batch: &Batch<D, T>,
    head: &Matrix<D, T>,
) -> Result<f64> {
    let device = model.device;
    let (diff, prior) = prior_term(device, moments, head)?;
    Ok(log_likelihood(model, batch, head)? - 0.5 * inner(device, &diff, &prior)?)
}

/// `(w − ŵ, Π(w − ŵ))` under the posterior `moments`.
fn prior_term<D: Device, T: Scalar>(
    device: &D,
    moments: &Moments<D, T>,
    w: &Matrix<D, T>,
) -> Result<(Matrix<D, T>, Matrix<D, T>)> {
    let diff = difference(device, w, &moments.head)?;
    let mut prior = device.zeros(diff.rows(), diff.cols())?;
    moments
        .state
        .apply(device, Operand::Precision, &diff, &mut prior, T::one())?;
    Ok((diff, prior))
}

/// `a − b`.
fn difference<D: Device, T: Scalar>(device: &D, a: &Matrix<D, T>, b: &Matrix<D, T>) -> Result<Matrix<D, T>> {
    let mut out = device.copy(a)?;
    device.axpy(&mut out, -T::one(), b)?;
    Ok(out)
}

/// `Σ_j log p(y_j | w)` in f64 from the logits: `f_{y_j} − logsumexp(f_j)` (classification) or
/// `−‖y_j − f_j‖² / 2σ²` (regression, without its constant).
pub(crate) fn log_likelihood<D: Device, T: Scalar>(
    model: &Model<'_, D, T>,
    batch: &Batch<D, T>,
    head: &Matrix<D, T>,
) -> Result<f64> {
    let f = logits(model.device, &batch.phi, head, model.fixed_bias)?;
    let k = f.cols();
    // m × K values, summed on the host in f64: the line search compares objectives that differ
    // by less than the working precision's rounding of them.
    let f: Vec<f64> = model.device.download_owned(f)?.iter().map(|v| v.as_f64()).collect();
    let targets = &batch.host_targets;
    Ok(match model.likelihood {
        Likelihood::Classification => f
            .chunks_exact(k)
            .zip(targets.chunks_exact(k))
            .map(|(row, t)| {
                let lse = log_sum_exp(row);
                row.iter().zip(t).map(|(v, t)| t.as_f64() * (v - lse)).sum::<f64>()
            })
            .sum(),
        Likelihood::Regression { sigma_noise } => {
            let squares: f64 = f.iter().zip(targets).map(|(v, t)| (t.as_f64() - v).powi(2)).sum();
            -0.5 * squares / (sigma_noise * sigma_noise)
        }
    })
}

/// `‖b − a‖_F / ‖a‖_F` (∞ when a is 0 and b is not).
pub(crate) fn relative_change<D: Device, T: Scalar>(device: &D, a: &Matrix<D, T>, b: &Matrix<D, T>) -> Result<f64> {
    let diff = difference(device, b, a)?;
    let (change, size) = (inner(device, &diff, &diff)?.sqrt(), inner(device, a, a)?.sqrt());
    Ok(if change == 0.0 { 0.0 } else { change / size })
}

/// `Σ_ij a_ij b_ij` accumulated in f64 on the host (K × D_aug values, read in place on the CPU),
/// for the same reason as [`log_likelihood`].
fn inner<D: Device, T: Scalar>(device: &D, a: &Matrix<D, T>, b: &Matrix<D, T>) -> Result<f64> {
    let product = |a: &[T], b: &[T]| a.iter().zip(b).map(|(x, y)| x.as_f64() * y.as_f64()).sum::<f64>();
    match (device.host_slice(a), device.host_slice(b)) {
        (Some(a), Some(b)) => Ok(product(a, b)),
        _ => Ok(product(&device.download(a)?, &device.download(b)?)),
    }
}
