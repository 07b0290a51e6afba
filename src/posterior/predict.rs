//! [`Posterior::predict`]: the predictive distribution at new inputs.

use crate::device::ops;
use std::sync::Arc;

use super::Features;
use super::{Posterior, logits};
use crate::device::{Device, Matrix};
use crate::error::{Error, Result};
use crate::numerics::dot;
use crate::scalar::Scalar;

/// How logit uncertainty is turned into class probabilities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Link {
    /// Mean-field probit: `softmax_k(f_k / √(1 + λ Σ_f[k,k]))`; λ = π/8 is the usual factor.
    Probit {
        /// Mean-field factor λ ≥ 0.
        lambda: f64,
    },
    /// The mean-field probit on the centred logit covariance `C Σ_f C`, `C = I − 11ᵀ/K`:
    /// `softmax_k(f_k / √(1 + λ (CΣ_fC)[k,k]))`. Softmax ignores a shift of all logits
    /// together, so the part of Σ_f that moves them together should not shrink them; the plain
    /// probit reads it anyway and is under-confident where much of Σ_f is such a shift.
    CentredProbit {
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
    /// `α / Σα`; see [`ops::bridge_dirichlet`].
    Bridge,
    /// Plain `softmax(f)`, ignoring the covariance.
    None,
}

impl Default for Link {
    /// The centred probit with λ = π/8: with τ by marginal likelihood its test NLL was below
    /// the plain probit's and Monte Carlo's on every network and data set measured (two to ten
    /// classes, regularised and saturated; see the README), and equal to the plain probit's
    /// once τ is tuned on validation data.
    fn default() -> Self {
        Link::CentredProbit {
            lambda: Link::PROBIT_LAMBDA,
        }
    }
}

impl Link {
    /// The mean-field factor λ = π/8 of both probits.
    pub const PROBIT_LAMBDA: f64 = std::f64::consts::PI / 8.0;

    /// The link of a name, as the command line, Python and posterior files spell it:
    /// `probit`, `centred-probit`, `mc` (or `monte-carlo`), `bridge`, `none` (or `map`), with
    /// λ for the probits and the draws for Monte Carlo.
    ///
    /// Errors: `InvalidArgument` (an unknown name, or settings [`Link::validate`] refuses).
    pub fn from_name(name: &str, lambda: f64, samples: usize, seed: u64) -> Result<Link> {
        let link = match name {
            "probit" => Link::Probit { lambda },
            "centred-probit" | "centered-probit" => Link::CentredProbit { lambda },
            "mc" | "monte-carlo" => Link::MonteCarlo { samples, seed },
            "bridge" => Link::Bridge,
            "none" | "map" => Link::None,
            other => {
                return Err(Error::invalid(
                    "link",
                    format!("unknown link {other:?}: probit, centred-probit, mc, bridge or none"),
                ));
            }
        };
        link.validate()?;
        Ok(link)
    }

    /// The link's name for [`Link::from_name`].
    pub fn name(&self) -> &'static str {
        match self {
            Link::Probit { .. } => "probit",
            Link::CentredProbit { .. } => "centred-probit",
            Link::MonteCarlo { .. } => "mc",
            Link::Bridge => "bridge",
            Link::None => "none",
        }
    }

    /// λ of a probit link.
    pub fn lambda(&self) -> Option<f64> {
        match *self {
            Link::Probit { lambda } | Link::CentredProbit { lambda } => Some(lambda),
            _ => None,
        }
    }

    /// Checks the settings: λ finite and ≥ 0, at least one Monte Carlo sample.
    ///
    /// Errors: `InvalidArgument`.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Link::Probit { lambda } | Link::CentredProbit { lambda } if !(lambda.is_finite() && lambda >= 0.0) => Err(
                Error::invalid("lambda", format!("must be finite and >= 0, got {lambda}")),
            ),
            Link::MonteCarlo { samples: 0, .. } => {
                Err(Error::invalid("samples", "at least one Monte Carlo sample is required"))
            }
            _ => Ok(()),
        }
    }
}

/// How [`Posterior::predict`] reads the posterior beyond its moments: the logit temperature T
/// (the link sees `f/T` and `Σ_f/T²`; 1 leaves the logits as they are) and the link the
/// posterior was tuned with ([`Posterior::tune_prior_precision`]), which callers pass to
/// `predict` unless they choose another. Stored in posterior files.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Logit temperature T > 0.
    pub temperature: f64,
    /// The link predictions use by default.
    pub link: Link,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            temperature: 1.0,
            link: Link::default(),
        }
    }
}

impl Calibration {
    /// Checks the settings: T finite and > 0, and the link's.
    ///
    /// Errors: `InvalidArgument`.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::invalid(
                "temperature",
                format!("must be finite and > 0, got {}", self.temperature),
            ));
        }
        self.link.validate()
    }
}

/// The predictive distribution at n inputs, in host memory (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction<T> {
    /// Class probabilities, n × K.
    pub probs: Vec<T>,
    /// Logit mean `f = W φ + b`, n × K.
    pub logit_mean: Vec<T>,
    /// Logit covariance in the structure's layout: n × K² (row n is Σ_f of input n, row-major)
    /// for Full, n × K (its diagonal) for Diag, n × 1 for Shared (`Σ_f = v I_K`), and for Kron
    /// n × K eigenvalues `e_n` in the basis [`Prediction::logit_basis`]:
    /// `Σ_f = U_A diag(e_n) U_Aᵀ`. [`Prediction::logit_cov_at`] reads any of them.
    pub logit_cov: Vec<T>,
    /// Kron only: the K × K orthonormal eigenvectors U_A (row-major, one per column) shared by
    /// every input's logit covariance, and by every prediction of one posterior (one host copy);
    /// `None` for the other structures.
    pub logit_basis: Option<Arc<[T]>>,
    /// Number of inputs n.
    pub rows: usize,
    /// Number of classes K.
    pub classes: usize,
}

impl<T: Scalar> Prediction<T> {
    /// `Σ_f[k, l]` of input `n`.
    pub fn logit_cov_at(&self, n: usize, k: usize, l: usize) -> T {
        let width = self.logit_cov.len() / self.rows.max(1);
        if let Some(u) = &self.logit_basis {
            let (c, e) = (self.classes, &self.logit_cov[n * width..(n + 1) * width]);
            return (0..c).fold(T::zero(), |acc, i| acc + u[k * c + i] * e[i] * u[l * c + i]);
        }
        match width {
            1 if k == l => self.logit_cov[n],
            w if w == self.classes && k == l => self.logit_cov[n * w + k],
            w if w == self.classes * self.classes => self.logit_cov[n * w + k * self.classes + l],
            _ => T::zero(),
        }
    }
}

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// The predictive distribution at the inputs Φ (n × D), the link reading the logits at the
    /// posterior's temperature ([`Calibration`]; `logit_mean` and `logit_cov` are reported at
    /// T = 1).
    ///
    /// Logit covariance: `Σ_f[k,l] = φᵀ Σ_{kl} φ` (Full), `v = φᵀ Σ_D φ` (Shared),
    /// `Σ_f[k,k] = Σ_d Σ_kd φ_d²` (Diag), `Σ_f = U_A diag_i(Σ_j (U_Gᵀφ)_j² / λ_ij) U_Aᵀ` (Kron,
    /// without forming the Kronecker product; the probit reads its diagonal as
    /// `R (U_Gᵀφ)²` with `R = (U_A ∘ U_A) Σ` made once per Σ, O(K·D) per input), computed for
    /// the whole batch by GEMMs. For regression the predictive mean is f and the probabilities are the logits themselves
    /// (the link is ignored); the predictive variance of output k adds σ² to `Σ_f[k,k]`. Errors: `EmptyBatch`, `ShapeMismatch`, `NonFinite`,
    /// `InvalidArgument` (λ < 0 or not finite, 0 Monte Carlo samples).
    pub fn predict<F: Features<D, T>>(&self, features: F, link: Link) -> Result<Prediction<T>> {
        let calibration = Calibration {
            temperature: self.calibration.temperature,
            link,
        };
        self.predict_calibrated(features, calibration)
    }

    /// [`Posterior::predict`] at another temperature and link than the posterior's own, with
    /// nothing changed or copied.
    ///
    /// Errors: those of [`Posterior::predict`], `InvalidArgument` (T ≤ 0 or not finite).
    pub fn predict_calibrated<F: Features<D, T>>(
        &self,
        features: F,
        calibration: Calibration,
    ) -> Result<Prediction<T>> {
        calibration.validate()?;
        self.device.scope(|| self.predict_in_scope(features, calibration))
    }

    /// Peak bytes a prediction allocates per input row: the staged features, the logits and
    /// the K × K logit covariance with its tempered copy and the link's output, in `T`. A
    /// prediction over more rows than fit in the [memory budget](crate::memory) is refused
    /// with `OutOfMemory`; predict such a batch in passes of
    /// `available / predict_row_bytes()` rows.
    pub fn predict_row_bytes(&self) -> u64 {
        let (k, da) = (self.classes as u64, self.augmented_features() as u64);
        (da + 3 * k + 3 * k * k) * std::mem::size_of::<T>() as u64
    }

    /// Rows per pass of a prediction: about 2³³ multiply-adds each (a fraction of a second on a
    /// CPU), so that a long prediction can be [interrupted](crate::interrupt) between passes;
    /// at least 256 rows (64 for Full), so that each pass stays one efficient product.
    fn predict_pass_rows(&self) -> usize {
        let least = if self.moments.state.kind() == super::Structure::Full {
            64
        } else {
            256
        };
        super::structure::rows_for_flops(
            self.moments.state.kind(),
            self.classes,
            self.augmented_features(),
            33,
            least,
        )
    }

    fn predict_in_scope<F: Features<D, T>>(&self, features: F, calibration: Calibration) -> Result<Prediction<T>> {
        features.check(&self.device, "features", self.features)?;
        let n = features.rows();
        let per_row = self.predict_row_bytes();
        crate::memory::ensure_on(
            &self.device,
            per_row.saturating_mul(n as u64),
            || format!("a prediction over {n} rows (K = {})", self.classes),
            |available| format!("; predict in passes of at most {} rows", (available / per_row).max(1)),
        )?;
        let pass = self.predict_pass_rows();
        if n <= pass {
            return self.predict_rows(&features, 0, n, calibration);
        }
        let mut out: Option<Prediction<T>> = None;
        for start in (0..n).step_by(pass) {
            crate::interrupt::check()?;
            let part = self.predict_rows(&features, start, pass.min(n - start), calibration)?;
            match &mut out {
                None => out = Some(part),
                Some(all) => {
                    all.probs.extend_from_slice(&part.probs);
                    all.logit_mean.extend_from_slice(&part.logit_mean);
                    all.logit_cov.extend_from_slice(&part.logit_cov);
                    all.rows += part.rows;
                }
            }
        }
        out.ok_or(Error::EmptyBatch { argument: "features" })
    }

    /// The prediction for rows `start .. start + n` of `features`.
    fn predict_rows<F: Features<D, T>>(
        &self,
        features: &F,
        start: usize,
        n: usize,
        calibration: Calibration,
    ) -> Result<Prediction<T>> {
        let Calibration { temperature, link } = calibration;
        let device = &self.device;
        let phi = self.upload_features(features, start, n)?;
        let mean = logits(device, &phi, &self.moments.head, self.fixed_bias.as_ref())?;
        let state = &self.moments.state;
        let cov = state.logit_covariance(device, &phi, self.classes)?;
        // The link reads the logits at temperature T: f/T, Σ_f/T².
        let scaled = |m: &Matrix<D, T>, power: i32| -> Result<Option<Matrix<D, T>>> {
            if temperature == 1.0 || self.is_regression() {
                return Ok(None);
            }
            let mut out = device.zeros(m.rows(), m.cols())?;
            device.axpy(&mut out, T::from_f64(temperature.powi(-power)), m)?;
            Ok(Some(out))
        };
        let (mean_t, cov_t) = (scaled(&mean, 1)?, scaled(&cov, 2)?);
        let (link_mean, link_cov) = (mean_t.as_ref().unwrap_or(&mean), cov_t.as_ref().unwrap_or(&cov));
        // A covariance in a basis, Σ_f = U diag(e_n) Uᵀ per input (Kron): its diagonal from the
        // structure for the probit, and K × K matrices in passes of at most CHUNK_ELEMENTS for the links that
        // read all of it.
        let basis = state.logit_basis();
        // The Monte Carlo draws, once for every pass of the link.
        let eps = match link {
            Link::MonteCarlo { samples, seed } => {
                let eps: Vec<T> = crate::random::SplitMix64::new(seed)
                    .normals(samples * self.classes)
                    .into_iter()
                    .map(T::from_f64)
                    .collect();
                Some(device.upload_owned(eps, samples, self.classes)?)
            }
            _ => None,
        };
        let link_of = |mean: &Matrix<D, T>, cov: &Matrix<D, T>| -> Result<Matrix<D, T>> {
            Ok(match (link, &eps) {
                _ if self.is_regression() => device.copy(mean)?,
                (Link::Probit { lambda }, _) => ops::probit_softmax(device, mean, cov, T::from_f64(lambda))?,
                (Link::CentredProbit { .. }, _) => unreachable!("the centred probit reads centred variances"),
                (Link::MonteCarlo { .. }, Some(eps)) => ops::monte_carlo_softmax(device, mean, cov, eps)?,
                (Link::MonteCarlo { .. }, None) => unreachable!("the draws are made for every Monte Carlo link"),
                (Link::Bridge, _) => ops::bridge_dirichlet(device, mean, cov)?,
                (Link::None, _) => {
                    let mut p = device.copy(mean)?;
                    ops::softmax_rows(device, &mut p)?;
                    p
                }
            })
        };
        let probs = match (link, basis) {
            _ if self.is_regression() => link_of(&mean, &cov)?,
            (Link::CentredProbit { lambda }, _) => {
                let variances = logit_variances(device, link_cov, basis, self.classes, true)?;
                ops::probit_softmax(device, link_mean, &variances, T::from_f64(lambda))?
            }
            (Link::Probit { .. }, Some(_)) => {
                let variances = state.logit_variances(device, &phi, self.classes)?;
                let variances = scaled(&variances, 2)?.unwrap_or(variances);
                link_of(link_mean, &variances)?
            }
            (Link::None, _) | (_, None) => link_of(link_mean, link_cov)?,
            (_, Some(u)) => self.expanded_link(link_mean, link_cov, u, link_of)?,
        };
        Ok(Prediction {
            probs: device.download_owned(probs)?,
            logit_mean: device.download_owned(mean)?,
            logit_cov: device.download_owned(cov)?,
            logit_basis: state.host_logit_basis(device)?,
            rows: n,
            classes: self.classes,
        })
    }

    /// A link over Kron's `Σ_f = U diag(e_n) Uᵀ` expanded to K × K per input, in passes of at
    /// most [`CHUNK_ELEMENTS`](super::CHUNK_ELEMENTS) values.
    fn expanded_link(
        &self,
        mean: &Matrix<D, T>,
        eigen: &Matrix<D, T>,
        basis: &Matrix<D, T>,
        link: impl Fn(&Matrix<D, T>, &Matrix<D, T>) -> Result<Matrix<D, T>>,
    ) -> Result<Matrix<D, T>> {
        let device = &self.device;
        let (n, k) = mean.shape();
        let rows = (super::CHUNK_ELEMENTS / (k * k).max(1)).max(1);
        let (mean_h, eigen_h) = (device.download(mean)?, device.download(eigen)?);
        let u: Vec<f64> = device.download(basis)?.iter().map(|x| x.as_f64()).collect();
        let mut probs = Vec::with_capacity(n * k);
        for start in (0..n).step_by(rows) {
            let r = rows.min(n - start);
            let mut full = vec![T::zero(); r * k * k];
            for (i, block) in full.chunks_exact_mut(k * k).enumerate() {
                let e = &eigen_h[(start + i) * k..(start + i + 1) * k];
                // Σ_f[a, b] = (u_a ∘ e) · u_b for the rows u_a of U.
                let scaled: Vec<f64> = (0..k * k).map(|aj| u[aj] * e[aj % k].as_f64()).collect();
                for a in 0..k {
                    for b in 0..=a {
                        let v = T::from_f64(dot(&scaled[a * k..(a + 1) * k], &u[b * k..(b + 1) * k]));
                        block[a * k + b] = v;
                        block[b * k + a] = v;
                    }
                }
            }
            let m = device.upload(&mean_h[start * k..(start + r) * k], r, k)?;
            let c = device.upload_owned(full, r, k * k)?;
            probs.extend(device.download(&link(&m, &c)?)?);
        }
        device.upload_owned(probs, n, k)
    }
}

/// The logit variances (n × K) from the logit covariance in its structure's layout:
/// `diag Σ_f`, or with `centred` `diag(C Σ_f C)`, `C = I − 11ᵀ/K`:
/// `Σ_kk − (2/K) Σ_l Σ_kl + (1/K²) Σ_lm Σ_lm` (Full, n × K²), `d_k (1 − 2/K) + Σ_l d_l/K²`
/// (Diag, n × K), `v (1 − 1/K)` (Shared, n × 1), and `Σ_a ((C U)_ka)² e_a` in the basis U (Kron).
pub(crate) fn logit_variances<D: Device, T: Scalar>(
    device: &D,
    cov: &Matrix<D, T>,
    basis: Option<&Matrix<D, T>>,
    k: usize,
    centred: bool,
) -> Result<Matrix<D, T>> {
    let (n, width) = cov.shape();
    let values: Vec<f64> = device.download(cov)?.iter().map(|x| x.as_f64()).collect();
    let kf = k as f64;
    let c = if centred { 1.0 } else { 0.0 };
    let mut out = vec![T::zero(); n * k];
    // Weights ((C U)_ka)² of Kron's eigenvalues.
    let weights = match basis {
        Some(u) => {
            let u: Vec<f64> = device.download(u)?.iter().map(|x| x.as_f64()).collect();
            let column_mean = |a: usize| c * (0..k).map(|r| u[r * k + a]).sum::<f64>() / kf;
            let means: Vec<f64> = (0..k).map(column_mean).collect();
            Some((0..k * k).map(|i| (u[i] - means[i % k]).powi(2)).collect::<Vec<f64>>())
        }
        None => None,
    };
    for (row, o) in values.chunks_exact(width.max(1)).zip(out.chunks_exact_mut(k)) {
        match (&weights, width) {
            (Some(w), _) => o
                .iter_mut()
                .enumerate()
                .for_each(|(a, o)| *o = T::from_f64(dot(&w[a * k..(a + 1) * k], row))),
            (None, 1) => o.iter_mut().for_each(|o| *o = T::from_f64(row[0] * (1.0 - c / kf))),
            (None, w) if w == k => {
                let total: f64 = row.iter().sum();
                o.iter_mut()
                    .zip(row)
                    .for_each(|(o, d)| *o = T::from_f64(d * (1.0 - 2.0 * c / kf) + c * total / (kf * kf)));
            }
            _ => {
                let total: f64 = row.iter().sum();
                for (a, o) in o.iter_mut().enumerate() {
                    let row_sum: f64 = row[a * k..(a + 1) * k].iter().sum();
                    *o = T::from_f64(row[a * k + a] - c * (2.0 * row_sum / kf - total / (kf * kf)));
                }
            }
        }
    }
    device.upload_owned(out, n, k)
}
