//! [`Posterior::fit`]: the Laplace posterior around a given head.

use super::{BiasMode, FitConfig, Moments, Posterior, Structure, add_curvature, positive, probabilities, spd_inverse};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::host::{HostMatrix, Label, check_features, check_finite, check_labels, feature_rows};
use crate::scalar::Scalar;

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// Fits the posterior `N(ŵ, Σ)` around the head `(W, b)` from features Φ (N × D).
    ///
    /// `Π = τ I + Σ_n H_n`, accumulated over Φ in chunks of `config.chunk_rows` rows, then
    /// `Σ = Π⁻¹` by Cholesky. The GGN does not depend on the labels; they are validated and
    /// counted. `bias` (length K) defaults to zero.
    ///
    /// Errors: `EmptyBatch`, `ShapeMismatch`, `NonFinite`, `LabelOutOfRange`, `InvalidArgument`
    /// (τ ≤ 0, K < 2), `NotPositiveDefinite`.
    pub fn fit<L: Label>(
        device: &D,
        features: HostMatrix<'_, T>,
        labels: &[L],
        head: HostMatrix<'_, T>,
        bias: Option<&[T]>,
        config: &FitConfig,
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
        check_features("features", &features, dim)?;
        check_labels(labels, features.rows(), classes)?;
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
        let head_dev = device.upload(&head_host, classes, da)?;
        let fixed_bias = match (augment, bias) {
            (false, Some(b)) => Some(device.upload(b, 1, classes)?),
            _ => None,
        };
        let n = match config.structure {
            Structure::Full => classes * da,
            Structure::Shared(_) => da,
        };
        let mut precision = device.zeros(n, n)?;
        device.add_diagonal(&mut precision, prior_precision)?;
        for start in (0..features.rows()).step_by(config.chunk_rows) {
            let rows = config.chunk_rows.min(features.rows() - start);
            let phi = device.upload(&feature_rows(&features, start, rows, augment), rows, da)?;
            let probs = probabilities(device, &phi, &head_dev, fixed_bias.as_ref())?;
            add_curvature(device, config.structure, &mut precision, &phi, &probs)?;
        }
        let covariance = spd_inverse(device, &precision)?;
        Ok(Posterior {
            device: device.clone(),
            structure: config.structure,
            bias_mode: config.bias,
            prior_precision,
            classes,
            features: dim,
            fixed_bias,
            moments: Moments {
                head: head_dev,
                precision,
                covariance,
            },
            samples_seen: features.rows(),
        })
    }
}
