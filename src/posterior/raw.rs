//! A posterior's file form: its contents in host memory, and their validation on the way back.

use super::{BiasMode, Calibration, Curvature, FitConfig, Likelihood, Moments, Parts, Posterior, Structure, structure};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::scalar::Scalar;

/// A posterior's contents in host memory, row-major: what a posterior file stores.
pub(crate) struct RawPosterior<T> {
    pub structure: Structure,
    pub likelihood: Likelihood,
    pub curvature: Curvature,
    pub bias_mode: BiasMode,
    /// 1 or K values.
    pub prior_precision: Vec<T>,
    pub classes: usize,
    pub features: usize,
    /// K × D_aug.
    pub head: Vec<T>,
    /// 1 × K, when the bias is fixed and was given.
    pub fixed_bias: Option<Vec<T>>,
    pub precision: Vec<T>,
    pub covariance: Vec<T>,
    /// What the structure keeps besides Π and Σ (Kron: A, G, U_A, U_G; accumulators: the
    /// parts of the data term).
    pub factors: Vec<structure::RawTensor<T>>,
    /// The weight of the structure's sums: the samples seen, less what forgetting discounted.
    pub factor_weight: f64,
    pub samples_seen: usize,
    pub calibration: Calibration,
}

impl<T> RawPosterior<T> {
    /// The settings the contents were made with (τ, stored apart, set to 1).
    pub fn config(&self, chunk_rows: usize) -> FitConfig {
        FitConfig {
            structure: self.structure,
            likelihood: self.likelihood,
            curvature: self.curvature,
            prior_precision: 1.0,
            bias: self.bias_mode,
            chunk_rows,
        }
    }
    pub fn augmented_features(&self) -> usize {
        self.bias_mode.augmented(self.features)
    }
    pub fn stored_shape(&self) -> (usize, usize) {
        structure::stored_shape(self.structure, self.classes, self.augmented_features())
    }
}

impl<D: Device, T: Scalar> Posterior<D, T> {
    pub(crate) fn to_raw(&self) -> Result<RawPosterior<T>> {
        Ok(RawPosterior {
            structure: self.structure(),
            likelihood: self.likelihood,
            curvature: self.curvature,
            bias_mode: self.bias_mode,
            prior_precision: self.prior_precision.clone(),
            classes: self.classes,
            features: self.features,
            head: self.device.download(&self.moments.head)?,
            fixed_bias: self.fixed_bias.as_ref().map(|b| self.device.download(b)).transpose()?,
            precision: self.precision()?,
            covariance: self.covariance()?,
            factors: self.moments.state.factor_tensors(&self.device)?,
            factor_weight: self.moments.state.factor_weight().unwrap_or(self.samples_seen as f64),
            samples_seen: self.samples_seen,
            calibration: self.calibration,
        })
    }

    /// Rebuilds a posterior from its contents, checking every shape and value.
    pub(crate) fn from_raw(device: &D, raw: RawPosterior<T>) -> Result<Self> {
        use crate::host::check_finite;
        let fewest = if raw.likelihood == Likelihood::Classification {
            2
        } else {
            1
        };
        if raw.classes < fewest || raw.features == 0 {
            return Err(Error::invalid(
                "shape",
                format!("K = {}, D = {}", raw.classes, raw.features),
            ));
        }
        raw.config(1).validate()?;
        raw.calibration.validate()?;
        if !(raw.prior_precision.len() == 1 || raw.prior_precision.len() == raw.classes)
            || raw.prior_precision.iter().any(|t| !(t.is_finite() && *t > T::zero()))
        {
            return Err(Error::invalid(
                "prior_precision",
                "must be 1 or K values, finite and > 0",
            ));
        }
        let da = raw.augmented_features();
        if raw.head.len() != raw.classes * da {
            return Err(Error::ShapeMismatch {
                argument: "head",
                expected: format!("{} elements", raw.classes * da),
                got: format!("{} elements", raw.head.len()),
            });
        }
        check_finite("head", &raw.head)?;
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
        let k = raw.classes;
        let parts = structure::StoredParts {
            precision: &raw.precision,
            covariance: &raw.covariance,
            tensors: &raw.factors,
            weight: raw.factor_weight,
        };
        let state = structure::placeholder(raw.structure, device)?.restore(device, parts, k, da)?;
        if raw.prior_precision.len() > 1 && !state.per_class_prior() {
            return Err(Error::invalid(
                "prior_precision",
                format!("one per class for the {:?} structure", raw.structure),
            ));
        }
        Ok(Posterior::from_parts(
            device,
            Parts {
                likelihood: raw.likelihood,
                curvature: raw.curvature,
                bias_mode: raw.bias_mode,
                prior_precision: raw.prior_precision,
                classes: k,
                features: raw.features,
                fixed_bias,
                moments: Moments {
                    head: device.upload(&raw.head, k, da)?,
                    state,
                },
                samples_seen: raw.samples_seen,
                calibration: raw.calibration,
            },
        ))
    }
}
