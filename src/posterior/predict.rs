//! [`Posterior::predict`]: the predictive distribution at new inputs.

use super::{Posterior, Structure, logits};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::host::{HostMatrix, check_features};
use crate::scalar::Scalar;

/// How logit uncertainty is turned into class probabilities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Link {
    /// Mean-field probit: `softmax_k(f_k / √(1 + λ Σ_f[k,k]))`; λ = π/8 is the usual factor.
    Probit {
        /// Mean-field factor λ ≥ 0.
        lambda: f64,
    },
    /// `(1/S) Σ_s softmax(f + L ε_s)` with `L Lᵀ = Σ_f` and ε_s standard normal,
    /// drawn from `seed` (the same draws for every input and backend).
    MonteCarlo {
        /// Number of samples S ≥ 1.
        samples: usize,
        /// Seed of the draws.
        seed: u64,
    },
    /// The normalised Laplace bridge to a Dirichlet (Hobbhahn et al. 2022), its mean
    /// `α / Σα`; see [`Device::bridge_dirichlet`](crate::Device::bridge_dirichlet).
    Bridge,
    /// Plain `softmax(f)`, ignoring the covariance.
    None,
}

impl Default for Link {
    fn default() -> Self {
        Link::Probit {
            lambda: std::f64::consts::PI / 8.0,
        }
    }
}

/// The predictive distribution at n inputs, in host memory (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction<T> {
    /// Class probabilities, n × K.
    pub probs: Vec<T>,
    /// Logit mean `f = W φ + b`, n × K.
    pub logit_mean: Vec<T>,
    /// Logit covariance: n × K² (row n is Σ_f of input n, row-major) for Full, n × 1 for
    /// Shared (`Σ_f = v I_K`).
    pub logit_cov: Vec<T>,
    /// Number of inputs n.
    pub rows: usize,
    /// Number of classes K.
    pub classes: usize,
}

impl<T: Scalar> Prediction<T> {
    /// `Σ_f[k, l]` of input `n`.
    pub fn logit_cov_at(&self, n: usize, k: usize, l: usize) -> T {
        let width = self.logit_cov.len() / self.rows.max(1);
        if width == 1 {
            if k == l { self.logit_cov[n] } else { T::zero() }
        } else {
            self.logit_cov[n * width + k * self.classes + l]
        }
    }
}

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// The predictive distribution at the inputs Φ (n × D).
    ///
    /// Logit covariance: `Σ_f[k,l] = φᵀ Σ_{kl} φ` (Full), `v = φᵀ Σ_D φ` (Shared), computed for the
    /// whole batch by GEMMs. Errors: `EmptyBatch`, `ShapeMismatch`, `NonFinite`,
    /// `InvalidArgument` (λ < 0 or not finite, 0 Monte Carlo samples).
    pub fn predict(&self, features: HostMatrix<'_, T>, link: Link) -> Result<Prediction<T>> {
        self.device.scope(|| self.predict_in_scope(features, link))
    }

    fn predict_in_scope(&self, features: HostMatrix<'_, T>, link: Link) -> Result<Prediction<T>> {
        match link {
            Link::Probit { lambda } if !(lambda.is_finite() && lambda >= 0.0) => {
                return Err(Error::invalid(
                    "lambda",
                    format!("must be finite and >= 0, got {lambda}"),
                ));
            }
            Link::MonteCarlo { samples: 0, .. } => {
                return Err(Error::invalid("samples", "at least one Monte Carlo sample is required"));
            }
            _ => {}
        }
        check_features("features", &features, self.features)?;
        let device = &self.device;
        let n = features.rows();
        let phi = self.upload_features(&features, 0, n)?;
        let mean = logits(device, &phi, &self.moments.head, self.fixed_bias.as_ref())?;
        let cov = device.predictive_covariance(&self.moments.covariance, &phi)?;
        debug_assert!(matches!(self.structure, Structure::Full) || cov.cols() == 1);
        let probs = match link {
            Link::Probit { lambda } => device.probit_softmax(&mean, &cov, T::from_f64(lambda))?,
            Link::MonteCarlo { samples, seed } => {
                let eps: Vec<T> = crate::random::SplitMix64::new(seed)
                    .normals(samples * self.classes)
                    .into_iter()
                    .map(T::from_f64)
                    .collect();
                let eps = device.upload(&eps, samples, self.classes)?;
                device.monte_carlo_softmax(&mean, &cov, &eps)?
            }
            Link::Bridge => device.bridge_dirichlet(&mean, &cov)?,
            Link::None => {
                let mut p = device.copy(&mean)?;
                device.softmax_rows(&mut p)?;
                p
            }
        };
        Ok(Prediction {
            probs: device.download(&probs)?,
            logit_mean: device.download(&mean)?,
            logit_cov: device.download(&cov)?,
            rows: n,
            classes: self.classes,
        })
    }
}
