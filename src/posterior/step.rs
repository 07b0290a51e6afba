//! The Newton steps of an update: damped to the mode of the update's objective, or of fixed
//! scale (the seed paper's rule), each through the structure's own covariance step.
//!
//! The objective of a batch under the posterior `N(ŵ, Π⁻¹)` is
//! `J(w) = Σ_j log p(y_j | w) − ½ (w − ŵ)ᵀ Π (w − ŵ)`; a step at w is
//! `d = (Π + Σ_j H_j(w))⁻¹ ∇J(w)`, and the Newton decrement `λ² = ∇J(w)ᵀ d`.

use super::config::{CurvatureAt, StepControl};
use super::model::{Batch, Model, OutputCurvature};
use super::structure::{self, CovarianceStep, CurvatureTerm, Operand, Preconditioner};
use super::{Likelihood, Moments, logits};
use crate::device::{Device, Matrix, Sign};
use crate::error::{Error, Result};
use crate::numerics::log_sum_exp;
use crate::scalar::Scalar;

/// Armijo's sufficient-increase constant c in `J(w + αd) ≥ J(w) + c α λ²`.
const ARMIJO: f64 = 1e-4;
/// Halvings of the step length before the line search gives up (α ≥ 2⁻⁴⁰).
const HALVINGS: usize = 40;

/// What an update did, returned by [`Posterior::update`](super::Posterior::update).
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
///
/// Each direction solves `(Π + H(w)) d = ∇J(w)` with the batch's exact curvature H (the
/// likelihood's own, whatever the structure) by conjugate gradients. The first is
/// preconditioned by the covariance Π⁻¹ the posterior already holds; once a solve takes more
/// than [`REUSE_ITERATIONS`], the next step forms the structure's `(Π + H_s(w))⁻¹`
/// ([`Preconditioner`]), exact for Full, and keeps it while it keeps the iterations few. So
/// Full factors `Π + H` about once per update besides its final covariance, not once per step,
/// and Diag, Kron and Shared, whose `H_s` approximates H, still converge to J's mode at
/// Newton's rate.
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
    let quadratic = !model.head_dependent_curvature();
    let (k, da) = moments.head.shape();
    let mut w = device.copy(&moments.head)?;
    // r = Π(w − ŵ) and q = (w − ŵ)ᵀ Π (w − ŵ), kept along the steps.
    let mut r = device.zeros(k, da)?;
    let mut q = 0.0;
    let before = log_likelihood(model, batch, &w)?;
    let mut objective = before;
    // The preconditioner and the step it was formed at; the curvature at ŵ once the
    // preconditioner formed there is replaced, kept for `CurvatureAt::Start`.
    let mut preconditioner: Option<(Preconditioner<D, T>, usize)> = None;
    let mut start: Option<Curvature<D, T>> = None;
    let mut last_iterations = 0;
    let mut outcome = UpdateReport {
        objective_before: before,
        ..UpdateReport::fixed(0, 0.0)
    };
    for t in 0.. {
        let (outputs, mut grad) = model.evaluate(batch, &w)?;
        device.axpy(&mut grad, -T::one(), &r)?;
        let mut here = Some(moments.state.curvature_term(model, batch, &outputs, None)?);
        if preconditioner.is_none() || last_iterations > REUSE_ITERATIONS {
            let term = here.take().expect("the term at this step");
            // The first direction is preconditioned by the covariance the posterior holds,
            // unless the curvature is the same at every head (J quadratic): then the
            // structure's own solve serves every step.
            let fresh = if preconditioner.is_none() && !quadratic {
                Preconditioner::prior(term)
            } else {
                Preconditioner::new(device, &*moments.state, &batch.phi, term, tau)?
            };
            if let Some((old, 0)) = preconditioner.replace((fresh, t))
                && curvature_at == CurvatureAt::Start
            {
                start = Some(old.into());
            }
        }
        let (pre, made_at) = preconditioner.as_ref().expect("formed above");
        let mut storage = Default::default();
        let curvature = structure::host_curvature(model, batch, &outputs, &mut storage)?;
        // A quadratic J's one Newton step is solved to working precision.
        let scale = if quadratic {
            f64::INFINITY
        } else {
            objective.abs().max(1.0)
        };
        let (d, iterations) = conjugate_gradient(model, moments, batch, &curvature, pre, &grad, scale)?;
        last_iterations = iterations;
        let decrement = inner(device, &grad, &d)?;
        if !decrement.is_finite() {
            return Err(Error::NonFinite {
                argument: "update step",
                index: 0,
                columns: 1,
            });
        }
        let converged = decrement / 2.0 <= tolerance * objective.abs().max(1.0);
        crate::interrupt::check()?;
        let accepted = if t == max_iterations {
            None
        } else {
            // Line search along d: J(w + αd) = log p(w + αd) − ½(q + 2α rᵀd + α² dᵀΠd). Once
            // converged, the last Newton step is taken whole if it does not lower J: it changes J
            // by less than the tolerance, but takes a quadratic J (a Gaussian likelihood) to its
            // mode to working precision, and any J's error to λ⁴'s order.
            let (sufficient, halvings) = if converged {
                (0.0, 0)
            } else {
                (ARMIJO * decrement, HALVINGS)
            };
            let mut pd = device.zeros(k, da)?;
            moments.state.apply(device, Operand::Precision, &d, &mut pd, T::one())?;
            let (rd, dpd) = (inner(device, &r, &d)?, inner(device, &d, &pd)?);
            let mut alpha = 1.0;
            let mut accepted = None;
            for _ in 0..=halvings {
                let mut trial = device.copy(&w)?;
                device.axpy(&mut trial, T::from_f64(alpha), &d)?;
                let trial_q = q + 2.0 * alpha * rd + alpha * alpha * dpd;
                let trial_objective = log_likelihood(model, batch, &trial)? - 0.5 * trial_q;
                if trial_objective >= objective + alpha * sufficient {
                    accepted = Some((alpha, trial, trial_q, trial_objective, pd));
                    break;
                }
                alpha *= 0.5;
            }
            accepted
        };
        let moved = accepted.is_some();
        if let Some((alpha, trial, trial_q, trial_objective, pd)) = accepted {
            outcome.undamped_rejected |= t == 0 && alpha < 1.0;
            outcome.steps += 1;
            outcome.step_length = alpha;
            device.axpy(&mut r, T::from_f64(alpha), &pd)?;
            (w, q, objective) = (trial, trial_q, trial_objective);
        }
        if converged || !moved {
            // Converged, at the cap, or no increase along an ascent direction (J is at its
            // maximum to working precision).
            outcome.converged = converged || t < max_iterations;
            outcome.objective_after = objective;
            let made_at = *made_at;
            let (pre, _) = preconditioner.take().expect("formed above");
            let keep = match (curvature_at, start) {
                (CurvatureAt::Start, Some(kept)) => kept,
                (CurvatureAt::Start, None) => pre.into(),
                // The final step moved the head: the curvature where it landed.
                (CurvatureAt::Mode, _) if moved => {
                    let outputs = model.outputs(&batch.phi, &w)?;
                    Curvature {
                        term: moments.state.curvature_term(model, batch, &outputs, None)?,
                        step: None,
                    }
                }
                (CurvatureAt::Mode, _) if made_at == t => pre.into(),
                (CurvatureAt::Mode, _) => Curvature {
                    term: here.take().expect("the term at this step, not taken"),
                    step: None,
                },
            };
            keep.commit(model.device, moments, batch, tau)?;
            moments.head = w;
            return Ok(outcome);
        }
    }
    unreachable!("the loop returns by its cap")
}

/// Conjugate-gradient iterations a preconditioner may take before the next step forms a new one.
const REUSE_ITERATIONS: usize = 12;
/// Cap on the conjugate-gradient iterations of one direction.
const CG_ITERATIONS: usize = 100;

/// Solves `(Π + H) d = g` for the batch's exact curvature H at the head whose outputs
/// `curvature` holds, by conjugate gradients preconditioned by `pre` (M⁻¹), until the residual
/// r has `rᵀM⁻¹r ≤ η² gᵀM⁻¹g`, or for [`CG_ITERATIONS`]. The forcing term
/// `η² = min(10⁻², max(gᵀM⁻¹g / scale, η²_min))` (`scale = max(1, |J|)`,
/// `η²_min = max(10⁻¹², ε_T)`) is loose far from the mode and tightens as the Newton decrement
/// `gᵀM⁻¹g ≈ λ²` falls, which keeps Newton's superlinear rate (`scale = ∞`: η_min throughout). Returns d and the iterations
/// taken. Every iterate is an ascent direction of J (`gᵀd > 0`), so a capped solve still gives
/// a usable step.
fn conjugate_gradient<D: Device, T: Scalar>(
    model: &Model<'_, D, T>,
    moments: &Moments<D, T>,
    batch: &Batch<D, T>,
    curvature: &OutputCurvature<'_>,
    pre: &Preconditioner<D, T>,
    g: &Matrix<D, T>,
    scale: f64,
) -> Result<(Matrix<D, T>, usize)> {
    let device = model.device;
    let state = &*moments.state;
    let (k, da) = g.shape();
    let precondition = |x: &Matrix<D, T>| -> Result<Matrix<D, T>> {
        let mut z = device.zeros(k, da)?;
        pre.apply(device, state, x, &mut z)?;
        Ok(z)
    };
    let mut d = device.zeros(k, da)?;
    let mut residual = device.copy(g)?;
    let mut z = precondition(&residual)?;
    let mut p = device.copy(&z)?;
    let mut rz = inner(device, &residual, &z)?;
    let forcing = (rz / scale).clamp(T::EPS.as_f64().max(1e-12), 1e-2);
    let target = rz * forcing;
    for iteration in 1..=CG_ITERATIONS {
        crate::interrupt::check()?;
        if rz <= target || rz == 0.0 {
            return Ok((d, iteration - 1));
        }
        let mut ap = model.curvature_product(batch, curvature, &p)?;
        state.apply(device, Operand::Precision, &p, &mut ap, T::one())?;
        let pap = inner(device, &p, &ap)?;
        if pap.is_nan() || pap <= 0.0 {
            return Ok((d, iteration - 1));
        }
        let alpha = rz / pap;
        device.axpy(&mut d, T::from_f64(alpha), &p)?;
        device.axpy(&mut residual, T::from_f64(-alpha), &ap)?;
        z = precondition(&residual)?;
        let next = inner(device, &residual, &z)?;
        // p ← z + β p.
        let mut direction = device.copy(&z)?;
        device.axpy(&mut direction, T::from_f64(next / rz), &p)?;
        (p, rz) = (direction, next);
    }
    Ok((d, CG_ITERATIONS))
}

/// A batch's curvature at some head, and the covariance step it made if one was formed.
struct Curvature<D: Device, T: Scalar> {
    term: CurvatureTerm<D, T>,
    step: Option<CovarianceStep<D, T>>,
}

impl<D: Device, T: Scalar> From<Preconditioner<D, T>> for Curvature<D, T> {
    fn from(pre: Preconditioner<D, T>) -> Self {
        let (term, step) = pre.into_parts();
        Curvature { term, step }
    }
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
