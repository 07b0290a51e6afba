//! [`Posterior::fit`] and [`Posterior::prior`]: the Laplace posterior around a given head.

use super::Features;
use super::{BiasMode, CurvatureAccumulator, FitConfig, Likelihood, Moments, Posterior};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::host::{HostMatrix, Targets, check_finite};
use crate::scalar::Scalar;

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// The prior `N(ŵ, τ⁻¹ I)` around the head `(W, b)`, before any data: `Π = τ I`.
    ///
    /// Updating it with data and `iterations > 1` is Newton's method for the MAP head under
    /// an L2 prior, ending at the Laplace posterior there; for regression one update is exact.
    ///
    /// Errors: `ShapeMismatch`, `NonFinite`, `InvalidArgument` (τ ≤ 0, K < 2 classes, D = 0).
    pub fn prior(device: &D, head: HostMatrix<'_, T>, bias: Option<&[T]>, config: &FitConfig) -> Result<Self> {
        CurvatureAccumulator::new(device, head, bias, config)?.into_posterior(config.prior_precision)
    }

    /// Fits the posterior `N(ŵ, Σ)` around the head `(W, b)` from features Φ (N × D) and their
    /// targets (class labels, or N × K values for regression).
    ///
    /// `Π = τ I + Σ_n J_nᵀ M_n J_n` in the configured structure and curvature, accumulated over
    /// Φ in chunks of `config.chunk_rows` rows (see [`CurvatureAccumulator`]), then `Σ = Π⁻¹`.
    /// `bias` (length K) defaults to zero.
    ///
    /// Errors: `EmptyBatch`, `ShapeMismatch`, `NonFinite`, `LabelOutOfRange`, `InvalidArgument`
    /// (τ ≤ 0, σ ≤ 0, K < 2 classes or no output, D = 0, targets of the wrong kind), `NotPositiveDefinite`.
    pub fn fit<F: Features<D, T>, Y: Targets<T> + ?Sized>(
        device: &D,
        features: F,
        targets: &Y,
        head: HostMatrix<'_, T>,
        bias: Option<&[T]>,
        config: &FitConfig,
    ) -> Result<Self> {
        if features.cols() != head.cols() {
            return Err(Error::head_shape("head", head.rows(), head.cols(), features.cols()));
        }
        let mut accumulator = CurvatureAccumulator::new(device, head, bias, config)?;
        accumulator.accumulate(features, targets)?;
        accumulator.into_posterior(config.prior_precision)
    }

    /// Validates the head and settings and uploads them: a posterior whose moments are
    /// placeholders (1 × 1, Kron's sums empty) until the caller sets them.
    pub(crate) fn assemble(
        device: &D,
        head: HostMatrix<'_, T>,
        bias: Option<&[T]>,
        config: &FitConfig,
    ) -> Result<Self> {
        config.validate()?;
        let (classes, dim) = (head.rows(), head.cols());
        let fewest = if config.likelihood == Likelihood::Classification {
            2
        } else {
            1
        };
        if classes < fewest {
            return Err(Error::invalid(
                "head",
                format!("needs at least {fewest} rows (classes or outputs), got {classes}"),
            ));
        }
        if dim == 0 {
            return Err(Error::invalid("head", "needs at least one feature column"));
        }
        crate::host::check_finite_rows("head", head.data(), head.cols())?;
        if let Some(b) = bias {
            if b.len() != classes {
                return Err(Error::shape("bias", (classes, 1), (b.len(), 1)));
            }
            check_finite("bias", b)?;
        }
        let augment = config.bias == BiasMode::InPosterior;
        let head_host: Vec<T> = if augment {
            (0..classes)
                .flat_map(|k| head.row(k).iter().copied().chain([bias.map_or(T::zero(), |b| b[k])]))
                .collect()
        } else {
            head.data().to_vec()
        };
        let da = dim + usize::from(augment);
        Ok(Posterior::from_parts(
            device,
            super::Parts {
                likelihood: config.likelihood,
                curvature: config.curvature,
                bias_mode: config.bias,
                prior_precision: vec![T::from_f64(config.prior_precision)],
                classes,
                features: dim,
                fixed_bias: match (augment, bias) {
                    (false, Some(b)) => Some(device.upload(b, 1, classes)?),
                    _ => None,
                },
                moments: Moments {
                    head: device.upload(&head_host, classes, da)?,
                    state: super::structure::placeholder(config.structure, device)?,
                },
                samples_seen: 0,
                calibration: super::Calibration::default(),
            },
        ))
    }
}

/// An orthonormal basis Q₁ (K × (K−1), row-major) of the complement of `1`: the first K−1
/// columns of the Householder reflection that maps `e_K` to `1/√K`.
pub(crate) fn null_free_basis(k: usize) -> Vec<f64> {
    let q = 1.0 / (k as f64).sqrt();
    let v: Vec<f64> = (0..k).map(|i| if i + 1 == k { 1.0 - q } else { -q }).collect();
    let vv: f64 = v.iter().map(|x| x * x).sum();
    let mut out = Vec::with_capacity(k * (k - 1));
    for i in 0..k {
        for j in 0..k - 1 {
            let h = f64::from(u8::from(i == j)) - 2.0 * v[i] * v[j] / vv;
            out.push(h);
        }
    }
    out
}
