//! [`Posterior::predict`]: the predictive distribution at new inputs.

use super::{Posterior, Structure, logits};
use crate::device::{Device, Matrix, Op};
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
    /// Logit covariance: n × K² (row n is Σ_f of input n, row-major) for Full and Kron, n × K
    /// (its diagonal) for Diag, n × 1 for Shared (`Σ_f = v I_K`).
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
        match width {
            1 if k == l => self.logit_cov[n],
            w if w == self.classes && k == l => self.logit_cov[n * w + k],
            w if w == self.classes * self.classes => self.logit_cov[n * w + k * self.classes + l],
            _ => T::zero(),
        }
    }
}

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// The predictive distribution at the inputs Φ (n × D).
    ///
    /// Logit covariance: `Σ_f[k,l] = φᵀ Σ_{kl} φ` (Full), `v = φᵀ Σ_D φ` (Shared),
    /// `Σ_f[k,k] = Σ_d Σ_kd φ_d²` (Diag), `Σ_f = U_A diag_i(Σ_j (U_Gᵀφ)_j² / λ_ij) U_Aᵀ` (Kron,
    /// without forming the Kronecker product), computed for the whole batch by GEMMs. For
    /// regression the predictive mean is f and the probabilities are the logits themselves
    /// (the link is ignored); the predictive variance of output k adds σ² to `Σ_f[k,k]`. Errors: `EmptyBatch`, `ShapeMismatch`, `NonFinite`,
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
        let cov = self.logit_covariance(&phi)?;
        let probs = match link {
            _ if self.is_regression() => device.copy(&mean)?,
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

    /// The logit covariance of Φ (n × D_aug) in the structure's layout (see [`Prediction`]).
    fn logit_covariance(&self, phi: &Matrix<D, T>) -> Result<Matrix<D, T>> {
        let device = &self.device;
        let (n, k) = (phi.rows(), self.classes);
        let sigma = &self.moments.covariance;
        match self.structure {
            Structure::Full | Structure::Shared(_) => device.predictive_covariance(sigma, phi),
            Structure::Diag => {
                let mut squares = device.copy(phi)?;
                device.hadamard(&mut squares, phi)?;
                let mut cov = device.zeros(n, k)?;
                device.gemm(&mut cov, T::zero(), &squares, Op::N, sigma, Op::T, T::one())?;
                Ok(cov)
            }
            Structure::Kron => {
                let kron = self
                    .moments
                    .kron
                    .as_ref()
                    .ok_or_else(|| Error::invalid("structure", "Kron factors missing"))?;
                let mut psi = device.zeros(n, phi.cols())?;
                device.gemm(&mut psi, T::zero(), phi, Op::N, &kron.g_vecs, Op::N, T::one())?;
                let rotated = device.copy(&psi)?;
                device.hadamard(&mut psi, &rotated)?;
                let mut eigen = device.zeros(n, k)?;
                device.gemm(&mut eigen, T::zero(), &psi, Op::N, sigma, Op::T, T::one())?;
                // V[i, (a, b)] = U_A[a, i] U_A[b, i], so Σ_f = eigen · V.
                let u = device.download(&kron.a_vecs)?;
                let v: Vec<T> = (0..k)
                    .flat_map(|i| {
                        let u = &u;
                        (0..k * k).map(move |ab| u[(ab / k) * k + i] * u[(ab % k) * k + i])
                    })
                    .collect();
                let v = device.upload(&v, k, k * k)?;
                let mut cov = device.zeros(n, k * k)?;
                device.gemm(&mut cov, T::zero(), &eigen, Op::N, &v, Op::N, T::one())?;
                Ok(cov)
            }
        }
    }
}
