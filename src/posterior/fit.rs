//! [`Posterior::fit`]: the Laplace posterior around a given head.

use super::{BiasMode, FitConfig, Moments, Posterior, Structure, add_curvature, positive, probabilities};
use crate::device::{Device, Matrix};
use crate::error::{Error, Result};
use crate::host::{HostMatrix, Label, check_features, check_finite, check_labels};
use crate::scalar::Scalar;

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// The prior `N(ŵ, τ⁻¹ I)` around the head `(W, b)`, before any data: `Π = τ I`.
    ///
    /// Updating it with data and `iterations > 1` is Newton's method for the MAP head under
    /// an L2 prior, ending at the Laplace posterior there.
    ///
    /// Errors: `ShapeMismatch`, `NonFinite`, `InvalidArgument` (τ ≤ 0, K < 2, D = 0).
    pub fn prior(device: &D, head: HostMatrix<'_, T>, bias: Option<&[T]>, config: &FitConfig) -> Result<Self> {
        Self::assemble(device, head, bias, config, |post| {
            let (n, tau) = (post.dim(), post.prior_precision);
            let mut precision = device.zeros(n, n)?;
            device.add_diagonal(&mut precision, tau)?;
            let mut covariance = device.zeros(n, n)?;
            device.add_diagonal(&mut covariance, T::one() / tau)?;
            Ok((precision, covariance))
        })
    }

    /// Fits the posterior `N(ŵ, Σ)` around the head `(W, b)` from features Φ (N × D).
    ///
    /// `Π = τ I + Σ_n H_n`, accumulated over Φ in chunks of `config.chunk_rows` rows, then
    /// `Σ = Π⁻¹` by Cholesky. The GGN does not depend on the labels; they are validated and
    /// counted. `bias` (length K) defaults to zero.
    ///
    /// For `Full`, the softmax's redundant direction is split off exactly: `Λ_n 1 = 0`, so with
    /// an orthonormal basis Q₁ (K × (K−1)) of `1^⊥`, `Π = (Q₁⊗I) Π̃ (Q₁⊗I)ᵀ + τ (11ᵀ/K ⊗ I)` with
    /// `Π̃ = τ I + Σ_n (Q₁ᵀ Λ_n Q₁) ⊗ φ_nφ_nᵀ` of side (K−1)·D, and Σ likewise from `Π̃⁻¹` and
    /// `1/τ`. Accumulation and inversion then run on the smaller matrix.
    ///
    /// Errors: `EmptyBatch`, `ShapeMismatch`, `NonFinite`, `LabelOutOfRange`, `InvalidArgument`
    /// (τ ≤ 0, K < 2, D = 0), `NotPositiveDefinite`.
    pub fn fit<L: Label>(
        device: &D,
        features: HostMatrix<'_, T>,
        labels: &[L],
        head: HostMatrix<'_, T>,
        bias: Option<&[T]>,
        config: &FitConfig,
    ) -> Result<Self> {
        let mut post = Self::assemble(device, head, bias, config, |post| {
            check_features("features", &features, post.features)?;
            check_labels(labels, features.rows(), post.classes)?;
            let (da, k, tau) = (post.augmented_features(), post.classes, post.prior_precision);
            let basis = match post.structure {
                Structure::Full => Some(device.upload(&null_free_basis::<T>(k), k, k - 1)?),
                Structure::Shared(_) => None,
            };
            let n = basis.as_ref().map_or(da, |_| (k - 1) * da);
            let mut precision = device.zeros(n, n)?;
            device.add_diagonal(&mut precision, tau)?;
            for start in (0..features.rows()).step_by(config.chunk_rows) {
                let rows = config.chunk_rows.min(features.rows() - start);
                let phi = post.upload_features(&features, start, rows)?;
                let probs = probabilities(device, &phi, &post.moments.head, post.fixed_bias.as_ref())?;
                match &basis {
                    Some(r) => device.ggn_accumulate(&mut precision, &phi, &probs, Some(r), T::one())?,
                    None => add_curvature(device, post.structure, &mut precision, &phi, &probs, T::one())?,
                }
            }
            let covariance = device.spd_inverse(&precision)?;
            match &basis {
                Some(r) => Ok((
                    device.kron_congruence(&precision, r, tau)?,
                    device.kron_congruence(&covariance, r, T::one() / tau)?,
                )),
                None => Ok((precision, covariance)),
            }
        })?;
        post.samples_seen = features.rows();
        Ok(post)
    }

    /// Validates the head and settings, uploads them, and completes the posterior with the
    /// `(precision, covariance)` that `moments` computes for it.
    fn assemble(
        device: &D,
        head: HostMatrix<'_, T>,
        bias: Option<&[T]>,
        config: &FitConfig,
        moments: impl FnOnce(&Self) -> Result<(Matrix<D, T>, Matrix<D, T>)>,
    ) -> Result<Self> {
        let prior_precision: T = positive("prior_precision", config.prior_precision)?;
        let (classes, dim) = (head.rows(), head.cols());
        if classes < 2 {
            return Err(Error::invalid(
                "head",
                format!("needs at least 2 classes (rows), got {classes}"),
            ));
        }
        if dim == 0 {
            return Err(Error::invalid("head", "needs at least one feature column"));
        }
        if config.chunk_rows == 0 {
            return Err(Error::invalid("chunk_rows", "must be at least 1"));
        }
        check_finite("head", head.data())?;
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
        let placeholder = device.zeros(1, 1)?;
        let mut post = Posterior {
            device: device.clone(),
            structure: config.structure,
            bias_mode: config.bias,
            prior_precision,
            classes,
            features: dim,
            fixed_bias: match (augment, bias) {
                (false, Some(b)) => Some(device.upload(b, 1, classes)?),
                _ => None,
            },
            moments: Moments {
                head: device.upload(&head_host, classes, da)?,
                precision: device.copy(&placeholder)?,
                covariance: placeholder,
            },
            samples_seen: 0,
        };
        let (precision, covariance) = moments(&post)?;
        post.moments.precision = precision;
        post.moments.covariance = covariance;
        Ok(post)
    }
}

/// An orthonormal basis Q₁ (K × (K−1), row-major) of the complement of `1`: the first K−1
/// columns of the Householder reflection that maps `e_K` to `1/√K`.
fn null_free_basis<T: Scalar>(k: usize) -> Vec<T> {
    let q = 1.0 / (k as f64).sqrt();
    let v: Vec<f64> = (0..k).map(|i| if i + 1 == k { 1.0 - q } else { -q }).collect();
    let vv: f64 = v.iter().map(|x| x * x).sum();
    let mut out = Vec::with_capacity(k * (k - 1));
    for i in 0..k {
        for j in 0..k - 1 {
            let h = f64::from(u8::from(i == j)) - 2.0 * v[i] * v[j] / vv;
            out.push(T::from_f64(h));
        }
    }
    out
}
