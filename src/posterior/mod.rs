//! Last-layer Laplace posteriors: fit, closed-form update, predictive.
//!
//! The head W (K × D) of a trained network is the mean of a Gaussian posterior over
//! `w = vec_row(W)`; its precision is `Π = τ I + Σ_n H_n` with the softmax GGN
//! `H_n = Λ_n ⊗ φ_n φ_nᵀ`, `Λ_n = diag(p_n) − p_n p_nᵀ`. [`Posterior::update`] folds new labelled
//! samples in with one Newton step, `Σ' = (Σ⁻¹ + Σ_j H_j)⁻¹` by Woodbury and
//! `w' = ŵ + γ Σ' Σ_j (e_{y_j} − p_j) ⊗ φ_j`.

mod fit;
mod head;
mod predict;
mod unlearn;
mod update;

pub use head::{HeadConfig, HeadFit, fit_head};
pub use predict::{Link, Prediction};
pub use unlearn::UnlearnConfig;
pub use update::{UpdateConfig, UpdateRule};

use crate::device::{Device, Matrix, OutputWeighting};
use crate::error::{Error, Result};
use crate::host::{HostMatrix, Label, feature_rows, one_hot};
use crate::scalar::Scalar;

/// Which covariance the posterior keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    /// The exact softmax GGN over all `P = K·D` weights: Π and Σ are P × P.
    Full,
    /// One D × D covariance shared by all classes (`Π = I_K ⊗ Π_D`), the seed paper's form,
    /// with curvature `Π_D = τ I + Σ_n m_n φ_n φ_nᵀ`.
    Shared(OutputWeighting),
}

/// Where the head's bias lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BiasMode {
    /// The bias is a weight of the posterior: features are augmented to `[φ, 1]` and D counts
    /// the extra column.
    #[default]
    InPosterior,
    /// The bias is held fixed at the value given to `fit` (or zero) and added to the logits.
    Fixed,
}

/// Settings of [`Posterior::fit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitConfig {
    /// Covariance structure.
    pub structure: Structure,
    /// Prior precision τ > 0 (`Π = τ I + curvature`).
    pub prior_precision: f64,
    /// Whether the bias is part of the posterior.
    pub bias: BiasMode,
    /// Rows of Φ uploaded and accumulated per pass; bounds device memory for large N.
    pub chunk_rows: usize,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            structure: Structure::Full,
            prior_precision: 1.0,
            bias: BiasMode::InPosterior,
            chunk_rows: 32_768,
        }
    }
}

/// Mean, precision and covariance: everything an update changes, kept together so that an
/// update can work on a copy and commit by a move.
struct Moments<D: Device, T: Scalar> {
    /// Head `[W, b]` (K × D_aug) when the bias is in the posterior, W (K × D) otherwise.
    head: Matrix<D, T>,
    /// Π: P × P (Full) or D_aug × D_aug (Shared).
    precision: Matrix<D, T>,
    /// Σ = Π⁻¹, same shape.
    covariance: Matrix<D, T>,
}

impl<D: Device, T: Scalar> Moments<D, T> {
    fn copy(&self, device: &D) -> Result<Self> {
        Ok(Moments {
            head: device.copy(&self.head)?,
            precision: device.copy(&self.precision)?,
            covariance: device.copy(&self.covariance)?,
        })
    }
}

/// A last-layer Laplace posterior living on device `D`, computing in `T`.
///
/// ```
/// use laplace_update::{CpuDevice, FitConfig, HostMatrix, Link, Posterior, Structure, UpdateConfig};
/// let cpu = CpuDevice::new(1)?;
/// // Four samples with two features, two classes, and a head W (2 × 2).
/// let phi = [1.0f64, 0.0, 0.0, 1.0, 1.0, 1.0, -1.0, 0.5];
/// let labels = [0u32, 1, 1, 0];
/// let head = [0.5f64, -0.5, -0.5, 0.5];
/// let config = FitConfig { structure: Structure::Full, prior_precision: 1.0, ..Default::default() };
/// let mut post = Posterior::fit(&cpu, HostMatrix::new(&phi, 4, 2)?, &labels,
///                               HostMatrix::new(&head, 2, 2)?, None, &config)?;
/// post.update(HostMatrix::new(&[2.0, 0.0], 1, 2)?, &[0u32], &UpdateConfig::default())?;
/// let pred = post.predict(HostMatrix::new(&[0.3, 0.7], 1, 2)?, Link::default())?;
/// assert!((pred.probs.iter().sum::<f64>() - 1.0).abs() < 1e-12);
/// # Ok::<(), laplace_update::Error>(())
/// ```
pub struct Posterior<D: Device, T: Scalar> {
    device: D,
    structure: Structure,
    bias_mode: BiasMode,
    prior_precision: T,
    classes: usize,
    features: usize,
    fixed_bias: Option<Matrix<D, T>>,
    moments: Moments<D, T>,
    samples_seen: usize,
}

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// The device the posterior lives on.
    pub fn device(&self) -> &D {
        &self.device
    }
    /// Covariance structure.
    pub fn structure(&self) -> Structure {
        self.structure
    }
    /// Bias mode.
    pub fn bias_mode(&self) -> BiasMode {
        self.bias_mode
    }
    /// Prior precision τ.
    pub fn prior_precision(&self) -> T {
        self.prior_precision
    }
    /// Number of classes K.
    pub fn classes(&self) -> usize {
        self.classes
    }
    /// Feature dimension D of the inputs (without the bias column).
    pub fn features(&self) -> usize {
        self.features
    }
    /// Samples folded in so far (fit plus updates).
    pub fn samples_seen(&self) -> usize {
        self.samples_seen
    }
    /// Columns of the head as stored: D + 1 when the bias is in the posterior, else D.
    pub fn augmented_features(&self) -> usize {
        self.features + usize::from(self.bias_mode == BiasMode::InPosterior)
    }
    /// Side of the stored Π and Σ: K·D_aug (Full) or D_aug (Shared).
    pub fn dim(&self) -> usize {
        match self.structure {
            Structure::Full => self.classes * self.augmented_features(),
            Structure::Shared(_) => self.augmented_features(),
        }
    }

    /// The posterior mean of W (K × D, row-major), without the bias column.
    pub fn head(&self) -> Result<Vec<T>> {
        let da = self.augmented_features();
        let all = self.device.download(&self.moments.head)?;
        Ok(all
            .chunks(da)
            .flat_map(|r| r[..self.features].iter().copied())
            .collect())
    }
    /// The bias (length K): the posterior mean when in the posterior, the fixed value otherwise.
    pub fn bias(&self) -> Result<Vec<T>> {
        match (&self.fixed_bias, self.bias_mode) {
            (_, BiasMode::InPosterior) => {
                let da = self.augmented_features();
                Ok(self
                    .device
                    .download(&self.moments.head)?
                    .chunks(da)
                    .map(|r| r[da - 1])
                    .collect())
            }
            (Some(b), BiasMode::Fixed) => self.device.download(b),
            (None, BiasMode::Fixed) => Ok(vec![T::zero(); self.classes]),
        }
    }
    /// Σ, row-major `dim() × dim()`, index `(k, d) ↦ k·D_aug + d` for Full.
    pub fn covariance(&self) -> Result<Vec<T>> {
        self.device.download(&self.moments.covariance)
    }
    /// Π, same layout as [`Posterior::covariance`].
    pub fn precision(&self) -> Result<Vec<T>> {
        self.device.download(&self.moments.precision)
    }

    /// Uploads rows `start..start + count` of `features`, with the column of ones appended when
    /// the bias is in the posterior: the Φ (count × D_aug) every kernel sees.
    pub(crate) fn upload_features(
        &self,
        features: &HostMatrix<'_, T>,
        start: usize,
        count: usize,
    ) -> Result<Matrix<D, T>> {
        let augment = self.bias_mode == BiasMode::InPosterior;
        self.device.upload(
            &feature_rows(features, start, count, augment),
            count,
            self.augmented_features(),
        )
    }

    /// [`Posterior::upload_features`] and the one-hot targets (count × K) of the same rows.
    pub(crate) fn upload_batch<L: Label>(
        &self,
        features: &HostMatrix<'_, T>,
        labels: &[L],
        start: usize,
        count: usize,
    ) -> Result<(Matrix<D, T>, Matrix<D, T>)> {
        let targets = one_hot::<T, L>(&labels[start..start + count], self.classes);
        Ok((
            self.upload_features(features, start, count)?,
            self.device.upload(&targets, count, self.classes)?,
        ))
    }

    /// A device-side deep copy.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Posterior {
            device: self.device.clone(),
            structure: self.structure,
            bias_mode: self.bias_mode,
            prior_precision: self.prior_precision,
            classes: self.classes,
            features: self.features,
            fixed_bias: self.fixed_bias.as_ref().map(|b| self.device.copy(b)).transpose()?,
            moments: self.moments.copy(&self.device)?,
            samples_seen: self.samples_seen,
        })
    }

    /// Numerical drift of the stored pair: `max_ij |(Π Σ − I)_ij|`, the entrywise max-abs norm.
    ///
    /// Costs one `dim()³` product. Exact arithmetic gives 0; updates in floating point let it
    /// grow, and [`Posterior::refresh`] resets it.
    pub fn drift(&self) -> Result<T> {
        let n = self.dim();
        let mut product = self.device.zeros(n, n)?;
        let (prec, cov) = (&self.moments.precision, &self.moments.covariance);
        use crate::device::Op;
        self.device
            .gemm(&mut product, T::zero(), prec, Op::N, cov, Op::N, T::one())?;
        self.device.add_diagonal(&mut product, -T::one())?;
        self.device.max_abs(&product)
    }

    /// Recomputes `Σ = Π⁻¹` from the precision by Cholesky, discarding accumulated drift.
    /// On failure the posterior is unchanged.
    pub fn refresh(&mut self) -> Result<()> {
        self.moments.covariance = self.device.spd_inverse(&self.moments.precision)?;
        Ok(())
    }
}

/// Validates a finite, positive scalar setting and converts it.
pub(crate) fn positive<T: Scalar>(argument: &'static str, value: f64) -> Result<T> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::invalid(argument, format!("must be finite and > 0, got {value}")));
    }
    Ok(T::from_f64(value))
}

/// A posterior's contents in host memory, row-major: what a posterior file stores.
pub(crate) struct RawPosterior<T> {
    pub structure: Structure,
    pub bias_mode: BiasMode,
    pub prior_precision: T,
    pub classes: usize,
    pub features: usize,
    /// K × D_aug.
    pub head: Vec<T>,
    /// 1 × K, when the bias is fixed and was given.
    pub fixed_bias: Option<Vec<T>>,
    pub precision: Vec<T>,
    pub covariance: Vec<T>,
    pub samples_seen: usize,
}

impl<T> RawPosterior<T> {
    pub fn precision_dim(&self) -> usize {
        let da = self.features + usize::from(self.bias_mode == BiasMode::InPosterior);
        match self.structure {
            Structure::Full => self.classes * da,
            Structure::Shared(_) => da,
        }
    }
}

impl<D: Device, T: Scalar> Posterior<D, T> {
    pub(crate) fn to_raw(&self) -> Result<RawPosterior<T>> {
        Ok(RawPosterior {
            structure: self.structure,
            bias_mode: self.bias_mode,
            prior_precision: self.prior_precision,
            classes: self.classes,
            features: self.features,
            head: self.device.download(&self.moments.head)?,
            fixed_bias: self.fixed_bias.as_ref().map(|b| self.device.download(b)).transpose()?,
            precision: self.device.download(&self.moments.precision)?,
            covariance: self.device.download(&self.moments.covariance)?,
            samples_seen: self.samples_seen,
        })
    }

    /// Rebuilds a posterior from its contents, checking every shape and value.
    pub(crate) fn from_raw(device: &D, raw: RawPosterior<T>) -> Result<Self> {
        use crate::host::check_finite;
        if raw.classes < 2 || raw.features == 0 {
            return Err(Error::invalid(
                "shape",
                format!("K = {}, D = {}", raw.classes, raw.features),
            ));
        }
        if !(raw.prior_precision.is_finite() && raw.prior_precision > T::zero()) {
            return Err(Error::invalid("prior_precision", "must be finite and > 0"));
        }
        let da = raw.features + usize::from(raw.bias_mode == BiasMode::InPosterior);
        let n = raw.precision_dim();
        for (name, len, want) in [
            ("head", raw.head.len(), raw.classes * da),
            ("precision", raw.precision.len(), n * n),
            ("covariance", raw.covariance.len(), n * n),
        ] {
            if len != want {
                return Err(Error::ShapeMismatch {
                    argument: name,
                    expected: format!("{want} elements"),
                    got: format!("{len} elements"),
                });
            }
        }
        check_finite("head", &raw.head)?;
        check_finite("precision", &raw.precision)?;
        check_finite("covariance", &raw.covariance)?;
        let fixed_bias = match (&raw.fixed_bias, raw.bias_mode) {
            (None, _) => None,
            (Some(b), BiasMode::Fixed) if b.len() == raw.classes => {
                check_finite("bias", b)?;
                Some(device.upload(b, 1, raw.classes)?)
            }
            (Some(b), _) => {
                return Err(Error::invalid(
                    "bias",
                    format!(
                        "{} values for mode {:?} and K = {}",
                        b.len(),
                        raw.bias_mode,
                        raw.classes
                    ),
                ));
            }
        };
        Ok(Posterior {
            device: device.clone(),
            structure: raw.structure,
            bias_mode: raw.bias_mode,
            prior_precision: raw.prior_precision,
            classes: raw.classes,
            features: raw.features,
            fixed_bias,
            moments: Moments {
                head: device.upload(&raw.head, raw.classes, da)?,
                precision: device.upload(&raw.precision, n, n)?,
                covariance: device.upload(&raw.covariance, n, n)?,
            },
            samples_seen: raw.samples_seen,
        })
    }
}

/// Logits `f = Φ Wᵀ (+ b)` for Φ (n × D_aug) on the device; n × K.
pub(crate) fn logits<D: Device, T: Scalar>(
    device: &D,
    phi: &Matrix<D, T>,
    head: &Matrix<D, T>,
    fixed_bias: Option<&Matrix<D, T>>,
) -> Result<Matrix<D, T>> {
    use crate::device::Op;
    let mut f = device.zeros(phi.rows(), head.rows())?;
    device.gemm(&mut f, T::zero(), phi, Op::N, head, Op::T, T::one())?;
    if let Some(b) = fixed_bias {
        device.add_row(&mut f, b)?;
    }
    Ok(f)
}

/// Class probabilities `softmax(Φ Wᵀ + b)`; n × K.
pub(crate) fn probabilities<D: Device, T: Scalar>(
    device: &D,
    phi: &Matrix<D, T>,
    head: &Matrix<D, T>,
    fixed_bias: Option<&Matrix<D, T>>,
) -> Result<Matrix<D, T>> {
    let mut p = logits(device, phi, head, fixed_bias)?;
    device.softmax_rows(&mut p)?;
    Ok(p)
}

/// Adds `alpha` times the curvature of the samples Φ (with probabilities `probs`) to the
/// precision: `Σ_n Λ_n ⊗ φ_nφ_nᵀ` (Full) or `Σ_n m_n φ_nφ_nᵀ` (Shared).
pub(crate) fn add_curvature<D: Device, T: Scalar>(
    device: &D,
    structure: Structure,
    precision: &mut Matrix<D, T>,
    phi: &Matrix<D, T>,
    probs: &Matrix<D, T>,
    alpha: T,
) -> Result<()> {
    match structure {
        Structure::Full => device.ggn_accumulate(precision, phi, probs, None, alpha),
        Structure::Shared(weighting) => {
            let weights = shared_weights(device, weighting, probs)?;
            device.weighted_syrk(precision, T::one(), phi, weights.as_ref(), alpha)
        }
    }
}

/// The Shared structure's output weights m_n: `None` (all ones) for Gaussian.
pub(crate) fn shared_weights<D: Device, T: Scalar>(
    device: &D,
    weighting: OutputWeighting,
    probs: &Matrix<D, T>,
) -> Result<Option<Matrix<D, T>>> {
    match weighting {
        OutputWeighting::Gaussian => Ok(None),
        OutputWeighting::Categorical => device.categorical_weights(probs).map(Some),
    }
}
