//! The Laplace log marginal likelihood and the prior precision that maximises it.

use super::Features;
use super::structure::Spectrum;
use super::{Likelihood, Posterior};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::host::Targets;
use crate::numerics::evidence_root;
use crate::scalar::Scalar;

/// Which prior precisions [`Posterior::optimize_prior_precision`] fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PriorShape {
    /// One τ for all weights.
    #[default]
    Scalar,
    /// One τ_k per class (the weights of head row k, bias included): Full and Diag.
    PerClass,
}

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// The Laplace approximation of the log marginal likelihood of the data (Φ, targets) at
    /// the stored prior:
    ///
    /// `log Z ≈ Σ_n log p(y_n | ŵ) − ½ Σ_k τ_k ‖ŵ_k‖² + ½ Σ_k D_aug log τ_k − ½ log det Π`.
    ///
    /// The data should be the data the posterior was fitted on. Errors: those of
    /// [`Posterior::update`]'s inputs, `NotPositiveDefinite`.
    pub fn log_marginal_likelihood<F: Features<D, T>, Y: Targets<T> + ?Sized>(
        &self,
        features: F,
        targets: &Y,
    ) -> Result<f64> {
        self.device.scope(|| {
            self.check_batch(&features, targets)?;
            let model = self.model();
            let mut log_likelihood = 0.0;
            let chunk = super::pass_rows(8192, self.classes, self.augmented_features(), super::CHUNK_ELEMENTS);
            for start in (0..features.rows()).step_by(chunk) {
                crate::interrupt::check()?;
                let rows = chunk.min(features.rows() - start);
                let batch = self.upload_batch(&features, targets, start, rows)?;
                let outputs = self.device.download(&model.outputs(&batch.phi, &self.moments.head)?)?;
                log_likelihood += self.log_likelihood(&outputs, &batch.host_targets);
            }
            Ok(log_likelihood + self.log_occam_factor()?)
        })
    }

    /// The evidence's Occam factor, `log Z − Σ_n log p(y_n | ŵ)`:
    ///
    /// `−½ Σ_k τ_k ‖ŵ_k‖² + ½ Σ_k D_aug log τ_k − ½ log det Π`.
    ///
    /// With the log-likelihood of the fitted data at ŵ kept from the fit (as a streaming
    /// front end does), this gives [`Posterior::log_marginal_likelihood`] without the data.
    /// Errors: `NotPositiveDefinite`.
    pub fn log_occam_factor(&self) -> Result<f64> {
        self.device.scope(|| {
            let tau: Vec<f64> = (0..self.classes).map(|k| self.prior_of(k).as_f64()).collect();
            let log_det = self.moments.state.log_det_precision(&self.device, self.classes)?;
            Ok(self.prior_terms(&tau)? - 0.5 * log_det)
        })
    }

    /// `Σ_n log p(y_n | f_n)` from the outputs (probabilities or logits) and targets, n × K.
    fn log_likelihood(&self, outputs: &[T], targets: &[T]) -> f64 {
        match self.likelihood {
            Likelihood::Classification => outputs
                .iter()
                .zip(targets)
                .filter(|(_, t)| t.as_f64() > 0.5)
                .map(|(p, _)| p.as_f64().max(f64::MIN_POSITIVE).ln())
                .sum(),
            Likelihood::Regression { sigma_noise } => {
                let s2 = sigma_noise * sigma_noise;
                outputs
                    .iter()
                    .zip(targets)
                    .map(|(f, y)| {
                        let r = y.as_f64() - f.as_f64();
                        -0.5 * r * r / s2 - 0.5 * (2.0 * std::f64::consts::PI * s2).ln()
                    })
                    .sum()
            }
        }
    }

    /// `Σ_k (−½ τ_k ‖ŵ_k‖² + ½ D_aug log τ_k)`.
    fn prior_terms(&self, tau: &[f64]) -> Result<f64> {
        let norms = self.head_row_norms()?;
        let da = self.augmented_features() as f64;
        Ok(norms
            .iter()
            .zip(tau)
            .map(|(w2, t)| -0.5 * t * w2 + 0.5 * da * t.ln())
            .sum())
    }

    /// `‖ŵ_k‖²` for each head row (bias included when in the posterior).
    fn head_row_norms(&self) -> Result<Vec<f64>> {
        let head = self.device.download(&self.moments.head)?;
        let da = self.augmented_features();
        Ok(head
            .chunks(da)
            .map(|r| r.iter().map(|x| x.as_f64() * x.as_f64()).sum())
            .collect())
    }

    /// Maximises the log marginal likelihood over the prior precision, with the mean ŵ held
    /// fixed (post hoc, as is usual for Laplace), sets it, and returns it (1 or K values).
    ///
    /// Scalar: with the eigenvalues h_i of the curvature (one eigendecomposition, or the
    /// structure's own eigenvalues), `log det(H + τI) = Σ_i log(h_i + τ)` for every τ, and the
    /// optimum is the root of `Σ_i h_i/(h_i + τ) = τ ‖ŵ‖²`, found by bisection on log τ in
    /// [1e-10, 1e10]. Per class: Diag solves that equation per class; Full runs MacKay's
    /// fixed point `τ_k ← (D_aug − τ_k tr Σ_kk) / ‖ŵ_k‖²`, one Cholesky inverse per iteration.
    ///
    /// Errors: `Unsupported` for per-class τ with Shared or Kron; `NotPositiveDefinite`. On
    /// error the posterior is unchanged.
    ///
    /// ```
    /// use laplace_update::{CpuDevice, FitConfig, HostMatrix, Likelihood, Posterior, PriorShape, UpdateConfig};
    /// let cpu = CpuDevice::new(1)?;
    /// // Bayesian linear regression with one output: y ≈ 2x.
    /// let (x, y) = ([0.0f64, 1.0, 2.0, 3.0], [0.1f64, 1.9, 4.1, 5.9]);
    /// let (features, targets) = (HostMatrix::new(&x, 4, 1)?, HostMatrix::new(&y, 4, 1)?);
    /// let config = FitConfig { likelihood: Likelihood::Regression { sigma_noise: 0.2 }, ..Default::default() };
    /// let mut post = Posterior::prior(&cpu, HostMatrix::new(&[0.0], 1, 1)?, None, &config)?;
    /// post.update(features, &targets, &UpdateConfig::default())?; // exact for a Gaussian likelihood
    /// assert!((post.head()?[0] - 2.0).abs() < 0.1);
    /// let tau = post.optimize_prior_precision(PriorShape::Scalar)?;
    /// assert!(tau[0] > 0.0 && post.log_marginal_likelihood(features, &targets)?.is_finite());
    /// # Ok::<(), laplace_update::Error>(())
    /// ```
    pub fn optimize_prior_precision(&mut self, shape: PriorShape) -> Result<Vec<f64>> {
        let device = self.device.clone();
        device.scope(|| {
            let prior = self.prior_values();
            let da = self.augmented_features();
            let tau = match shape {
                PriorShape::Scalar => {
                    let (h, multiplicity) = self.moments.state.curvature_eigenvalues(
                        &self.device,
                        &prior,
                        self.classes,
                        da,
                        !self.is_regression(),
                    )?;
                    let norm: f64 = self.head_row_norms()?.iter().sum();
                    vec![evidence_root(&h, multiplicity, norm)]
                }
                PriorShape::PerClass => {
                    let norms = self.head_row_norms()?;
                    self.moments
                        .state
                        .per_class_optimum(&self.device, &norms, &prior, da)?
                        .ok_or_else(|| {
                            Error::Unsupported(format!(
                                "one prior precision per class for the {:?} structure (Full and Diag have it)",
                                self.structure()
                            ))
                        })?
                }
            };
            self.set_prior_precision(&tau)?;
            Ok(tau)
        })
    }

    /// Replaces the prior precision (1 value, or K for Full and Diag), keeping the curvature:
    /// `Π ← Π − T_old + T_new`, `Σ ← Π⁻¹`. On error the posterior is unchanged.
    ///
    /// Errors: `InvalidArgument` (a τ ≤ 0 or not finite, wrong count), `Unsupported` (K values
    /// for Shared or Kron), `NotPositiveDefinite`.
    pub fn set_prior_precision(&mut self, tau: &[f64]) -> Result<()> {
        self.set_prior_precision_with(tau, None)
    }

    /// [`set_prior_precision`](Self::set_prior_precision), with Σ from `spectrum` (the
    /// curvature's at the current τ) where it gives one for a single τ.
    pub(crate) fn set_prior_precision_with(&mut self, tau: &[f64], spectrum: Option<&Spectrum<T>>) -> Result<()> {
        if tau.iter().any(|t| !(t.is_finite() && *t > 0.0)) {
            return Err(Error::invalid("prior_precision", "every τ must be finite and > 0"));
        }
        let per_class = match tau.len() {
            1 => false,
            k if k == self.classes => true,
            other => {
                return Err(Error::invalid(
                    "prior_precision",
                    format!("needs 1 or K = {} values, got {other}", self.classes),
                ));
            }
        };
        if per_class && !self.moments.state.per_class_prior() {
            return Err(Error::Unsupported(format!(
                "one prior precision per class for the {:?} structure",
                self.structure()
            )));
        }
        let device = &self.device;
        let new_tau = |k: usize| tau[if per_class { k } else { 0 }];
        let delta: Vec<f64> = (0..self.classes)
            .map(|k| new_tau(k) - self.prior_of(k).as_f64())
            .collect();
        let da = self.augmented_features();
        let state = &mut self.moments.state;
        let base = device.copy(state.precision())?;
        let spectrum = spectrum.filter(|_| !per_class).map(|s| (s, tau[0]));
        state.reprior(device, base, &delta, da, spectrum)?;
        self.prior_precision = tau.iter().map(|&t| T::from_f64(t)).collect();
        Ok(())
    }

    /// Replaces σ of a regression posterior with the GGN curvature, keeping the mean and τ:
    /// the data curvature scales by `c = σ_old²/σ²`, `Π ← c(Π − T) + T`, and Σ is recomputed.
    /// On error the posterior is unchanged.
    ///
    /// Errors: `InvalidArgument` (σ ≤ 0 or not finite), `Unsupported` (classification, or a
    /// curvature other than the GGN), `NotPositiveDefinite`.
    pub fn set_sigma_noise(&mut self, sigma: f64) -> Result<()> {
        let old = self.gaussian_noise()?;
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(Error::invalid(
                "sigma_noise",
                format!("must be finite and > 0, got {sigma}"),
            ));
        }
        let mut next = self.try_clone()?;
        next.forget((old / sigma).powi(2))?;
        next.likelihood = Likelihood::Regression { sigma_noise: sigma };
        *self = next;
        Ok(())
    }

    /// σ of a regression posterior whose GGN curvature scales as 1/σ².
    pub(crate) fn gaussian_noise(&self) -> Result<f64> {
        match (self.likelihood, self.curvature) {
            (Likelihood::Regression { sigma_noise }, super::Curvature::Ggn) => Ok(sigma_noise),
            (Likelihood::Regression { .. }, _) => Err(Error::Unsupported(
                "choosing σ with a curvature other than the GGN (its scale in σ differs)".into(),
            )),
            _ => Err(Error::Unsupported("σ of a classification posterior".into())),
        }
    }

    /// Maximises the log marginal likelihood of the data (Φ, targets) over τ and σ jointly
    /// (regression with the GGN curvature), with the mean held fixed, sets them and returns
    /// `(τ, σ)`.
    ///
    /// With the eigenvalues h_i of the curvature at the current σ₀ (one eigendecomposition),
    /// `log Z(τ, σ) = −‖Y − F‖²/2σ² − (nK/2) log 2πσ² − ½τ‖ŵ‖² + ½P log τ − ½ Σ_i log(τ + c h_i)`
    /// with `c = σ₀²/σ²`; τ and σ are found by alternating the τ root of the evidence (as
    /// [`Posterior::optimize_prior_precision`]) and a golden-section search on log σ.
    ///
    /// Errors: those of [`Posterior::log_marginal_likelihood`], `Unsupported` (classification,
    /// a curvature other than the GGN). On error the posterior is unchanged.
    pub fn optimize_prior_and_noise<F: Features<D, T>, Y: Targets<T> + ?Sized>(
        &mut self,
        features: F,
        targets: &Y,
    ) -> Result<(f64, f64)> {
        let sigma0 = self.gaussian_noise()?;
        self.check_batch(&features, targets)?;
        let device = self.device.clone();
        device.scope(|| {
            let model = self.model();
            let (mut squares, mut count) = (0.0, 0usize);
            let chunk = super::pass_rows(8192, self.classes, self.augmented_features(), super::CHUNK_ELEMENTS);
            for start in (0..features.rows()).step_by(chunk) {
                crate::interrupt::check()?;
                let rows = chunk.min(features.rows() - start);
                let batch = self.upload_batch(&features, targets, start, rows)?;
                let f = self.device.download(&model.outputs(&batch.phi, &self.moments.head)?)?;
                squares += f
                    .iter()
                    .zip(&batch.host_targets)
                    .map(|(f, y)| (y.as_f64() - f.as_f64()).powi(2))
                    .sum::<f64>();
                count += f.len();
            }
            let prior = self.prior_values();
            let (h, multiplicity) = self.moments.state.curvature_eigenvalues(
                &self.device,
                &prior,
                self.classes,
                self.augmented_features(),
                false,
            )?;
            let norm: f64 = self.head_row_norms()?.iter().sum();
            let p = multiplicity * h.len() as f64;
            let evidence = |tau: f64, sigma: f64| {
                let c = (sigma0 / sigma).powi(2);
                -0.5 * squares / (sigma * sigma)
                    - 0.5 * count as f64 * (2.0 * std::f64::consts::PI * sigma * sigma).ln()
                    - 0.5 * tau * norm
                    + 0.5 * p * tau.ln()
                    - 0.5 * multiplicity * h.iter().map(|x| (tau + c * x).ln()).sum::<f64>()
            };
            let (mut tau, mut sigma) = (prior[0], sigma0);
            for _ in 0..50 {
                let c = (sigma0 / sigma).powi(2);
                let scaled: Vec<f64> = h.iter().map(|x| c * x).collect();
                tau = evidence_root(&scaled, multiplicity, norm);
                // Golden section on log σ over σ₀·10^(±4).
                let (mut a, mut b) = ((sigma0 * 1e-4).ln(), (sigma0 * 1e4).ln());
                let ratio = (5f64.sqrt() - 1.0) / 2.0;
                for _ in 0..100 {
                    let (l, r) = (b - ratio * (b - a), a + ratio * (b - a));
                    if evidence(tau, l.exp()) > evidence(tau, r.exp()) {
                        b = r;
                    } else {
                        a = l;
                    }
                }
                let next = (0.5 * (a + b)).exp();
                let done = ((next - sigma) / sigma).abs() < 1e-10;
                sigma = next;
                if done {
                    break;
                }
            }
            let mut next = self.try_clone()?;
            next.set_sigma_noise(sigma)?;
            next.set_prior_precision(&[tau])?;
            *self = next;
            Ok((tau, sigma))
        })
    }

    /// τ of every class, in f64.
    pub(super) fn prior_values(&self) -> Vec<f64> {
        (0..self.classes).map(|k| self.prior_of(k).as_f64()).collect()
    }
}
