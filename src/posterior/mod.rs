//! Last-layer Laplace posteriors: fit, closed-form update, predictive.
//!
//! The head W (K × D) of a trained network is the mean of a Gaussian posterior over
//! `w = vec_row(W)`; its precision is `Π = τ I + Σ_n H_n` with the softmax GGN
//! `H_n = Λ_n ⊗ φ_n φ_nᵀ`, `Λ_n = diag(p_n) − p_n p_nᵀ`. [`Posterior::update`] folds new labelled
//! samples in by damped Newton steps to the mode of `Σ_j log p(y_j | w) − ½ (w − ŵ)ᵀ Π (w − ŵ)`,
//! each `d = Σ_w ∇J(w)` with `Σ_w = (Σ⁻¹ + Σ_j H_j(w))⁻¹` by Woodbury, and keeps the Laplace
//! approximation at the new mode.

mod accumulate;
mod config;
mod evidence;
mod features;
mod fit;
mod head;
mod model;
mod predict;
mod raw;
mod refresh;
mod sample;
mod step;
mod structure;
mod tune;
mod unlearn;
mod update;

pub use accumulate::CurvatureAccumulator;
pub(crate) use config::pass_rows;
pub use config::{BiasMode, CHUNK_ELEMENTS, Curvature, FitConfig, Likelihood, Structure};
pub use evidence::PriorShape;
pub use features::Features;
pub use head::{HeadConfig, HeadFit, HeadSolver, HeadTargets, fit_head, fit_head_gaussian, fit_map_head};
pub use predict::{Calibration, Link, Prediction};
pub(crate) use raw::RawPosterior;
pub use refresh::RefreshPolicy;
pub(crate) use structure::{RawTensor, resident_bytes};
pub use tune::{TuneConfig, TuneMetric, TuneReport, TuneSelection};

pub use config::{CurvatureAt, StepControl, UpdateConfig, UpdateRule};
pub use step::UpdateReport;
pub use unlearn::UnlearnConfig;

use crate::device::{Device, Matrix, OutputWeighting};
use crate::error::{Error, Result};
use crate::host::Targets;
use crate::scalar::Scalar;
use model::Batch;
use structure::CovarianceStructure;

/// Mean and covariance state: everything an update changes, kept together so that an update
/// can work on a copy and commit by a move.
pub(crate) struct Moments<D: Device, T: Scalar> {
    /// Head `[W, b]` (K × D_aug) when the bias is in the posterior, W (K × D) otherwise.
    head: Matrix<D, T>,
    /// The structure's Π, Σ and whatever else it keeps.
    state: Box<dyn CovarianceStructure<D, T>>,
}

impl<D: Device, T: Scalar> Moments<D, T> {
    /// A deep copy; `OutOfMemory` first when it would not fit in the
    /// [memory budget](crate::memory).
    fn copy(&self, device: &D) -> Result<Self> {
        let (kind, k, da) = (self.state.kind(), self.head.rows(), self.head.cols());
        crate::memory::ensure_on(
            device,
            structure::resident_bytes(kind, k, da, std::mem::size_of::<T>()),
            || format!("a copy of {}", structure::describe::<T>(kind, k, da)),
            |_| String::new(),
        )?;
        Ok(Moments {
            head: device.copy(&self.head)?,
            state: self.state.copy(device)?,
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
    likelihood: Likelihood,
    curvature: Curvature,
    bias_mode: BiasMode,
    /// τ: one value, or one per class.
    prior_precision: Vec<T>,
    classes: usize,
    features: usize,
    fixed_bias: Option<Matrix<D, T>>,
    moments: Moments<D, T>,
    samples_seen: usize,
    /// Automatic drift checks after updates; `None` turns them off.
    refresh_policy: Option<RefreshPolicy>,
    /// Samples folded in by updates since the last drift check.
    since_check: usize,
    /// The drift a policy refresh last achieved: the floor this precision and element type allow.
    drift_floor: f64,
    /// Temperature and link of predictions.
    calibration: Calibration,
}

/// What a posterior is made of besides its drift bookkeeping: the fields
/// [`Posterior::from_parts`] builds every posterior from.
pub(crate) struct Parts<D: Device, T: Scalar> {
    pub likelihood: Likelihood,
    pub curvature: Curvature,
    pub bias_mode: BiasMode,
    pub prior_precision: Vec<T>,
    pub classes: usize,
    pub features: usize,
    pub fixed_bias: Option<Matrix<D, T>>,
    pub moments: Moments<D, T>,
    pub samples_seen: usize,
    pub calibration: Calibration,
}

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// The one place a posterior is built: `parts` on `device`, with the default drift checks
    /// ([`RefreshPolicy::default`]) and none run yet.
    pub(crate) fn from_parts(device: &D, parts: Parts<D, T>) -> Self {
        let Parts {
            likelihood,
            curvature,
            bias_mode,
            prior_precision,
            classes,
            features,
            fixed_bias,
            moments,
            samples_seen,
            calibration,
        } = parts;
        Posterior {
            device: device.clone(),
            likelihood,
            curvature,
            bias_mode,
            prior_precision,
            classes,
            features,
            fixed_bias,
            moments,
            samples_seen,
            refresh_policy: Some(RefreshPolicy::default()),
            since_check: 0,
            drift_floor: 0.0,
            calibration,
        }
    }

    /// The device the posterior lives on.
    pub fn device(&self) -> &D {
        &self.device
    }
    /// Covariance structure.
    pub fn structure(&self) -> Structure {
        self.moments.state.kind()
    }
    /// Bias mode.
    pub fn bias_mode(&self) -> BiasMode {
        self.bias_mode
    }
    /// Likelihood.
    pub fn likelihood(&self) -> Likelihood {
        self.likelihood
    }
    /// Curvature approximation.
    pub fn curvature(&self) -> Curvature {
        self.curvature
    }
    /// Prior precision τ: one value, or K (one per class) after
    /// [`Posterior::optimize_prior_precision`] with [`PriorShape::PerClass`].
    pub fn prior_precision(&self) -> &[T] {
        &self.prior_precision
    }
    /// τ of class `k`.
    /// The temperature and link of predictions ([`Calibration`]).
    pub fn calibration(&self) -> Calibration {
        self.calibration
    }

    /// Sets the temperature and link of predictions.
    ///
    /// Errors: `InvalidArgument` (T ≤ 0 or not finite, a link's settings).
    pub fn set_calibration(&mut self, calibration: Calibration) -> Result<()> {
        calibration.validate()?;
        self.calibration = calibration;
        Ok(())
    }

    pub(crate) fn prior_of(&self, k: usize) -> T {
        self.prior_precision[if self.prior_precision.len() == 1 { 0 } else { k }]
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
        self.bias_mode.augmented(self.features)
    }
    /// Shape of the stored Π and Σ: P × P (Full, `P = K·D_aug`), D_aug × D_aug (Shared), or
    /// K × D_aug (Diag and Kron, their eigenvalues).
    pub fn stored_shape(&self) -> (usize, usize) {
        structure::stored_shape(self.structure(), self.classes, self.augmented_features())
    }
    /// The Kron factors `(A, G, U_A, U_G)`, row-major, the eigenvectors as columns, with the
    /// weight N of [`Posterior::kron_weight`]; `None` for the other structures.
    #[allow(clippy::type_complexity)]
    pub fn kron_factors(&self) -> Result<Option<(Vec<T>, Vec<T>, Vec<T>, Vec<T>)>> {
        let mut tensors = self.moments.state.factor_tensors(&self.device)?;
        let mut take = |name: &str| {
            tensors
                .iter_mut()
                .find(|t| t.name == name)
                .map(|t| std::mem::take(&mut t.values))
        };
        Ok(
            match (
                take("kron_a"),
                take("kron_g"),
                take("kron_a_vectors"),
                take("kron_g_vectors"),
            ) {
                (Some(a), Some(g), Some(ua), Some(ug)) => Some((a, g, ua, ug)),
                _ => None,
            },
        )
    }

    /// The Kron structure's weight N in `(A ⊗ G)/N`: [`Posterior::samples_seen`], less what
    /// [`UpdateConfig::forgetting`] discounted (`None` for the other structures).
    pub fn kron_weight(&self) -> Option<f64> {
        self.moments.state.factor_weight()
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
    /// Σ, row-major in [`Posterior::stored_shape`], index `(k, d) ↦ k·D_aug + d` for Full.
    pub fn covariance(&self) -> Result<Vec<T>> {
        self.device.download(self.moments.state.covariance())
    }
    /// Π, same layout as [`Posterior::covariance`].
    pub fn precision(&self) -> Result<Vec<T>> {
        self.device.download(self.moments.state.precision())
    }

    /// Rows `start..start + count` of `features` on the device, with the column of ones
    /// appended when the bias is in the posterior: the Φ (count × D_aug) every kernel sees.
    pub(crate) fn upload_features<F: Features<D, T> + ?Sized>(
        &self,
        features: &F,
        start: usize,
        count: usize,
    ) -> Result<Matrix<D, T>> {
        let augment = self.bias_mode == BiasMode::InPosterior;
        features.chunk(&self.device, start, count, augment, &mut Vec::new())
    }

    /// Validates a batch of features and targets against the posterior.
    pub(crate) fn check_batch<F: Features<D, T> + ?Sized, Y: Targets<T> + ?Sized>(
        &self,
        features: &F,
        targets: &Y,
    ) -> Result<()> {
        features.check(&self.device, "features", self.features)?;
        targets.check(features.rows(), self.classes, self.is_regression())
    }

    /// [`Self::check_batch`] without the features' finiteness (the caller checks it another way).
    pub(crate) fn check_batch_shape<F: Features<D, T> + ?Sized, Y: Targets<T> + ?Sized>(
        &self,
        features: &F,
        targets: &Y,
    ) -> Result<()> {
        crate::host::check_batch_shape("features", (features.rows(), features.cols()), self.features)?;
        targets.check(features.rows(), self.classes, self.is_regression())
    }

    pub(crate) fn is_regression(&self) -> bool {
        matches!(self.likelihood, Likelihood::Regression { .. })
    }

    /// Rows `start..start + count` of a checked batch on the device.
    pub(crate) fn upload_batch<F: Features<D, T> + ?Sized, Y: Targets<T> + ?Sized>(
        &self,
        features: &F,
        targets: &Y,
        start: usize,
        count: usize,
    ) -> Result<Batch<D, T>> {
        self.upload_batch_staged(features, targets, start, count, &mut Vec::new(), true)
    }

    /// [`Self::upload_batch`] with host Φ through `staging` (give it back with
    /// `Source::release`), and the targets 0 × K unless `with_targets` (a curvature that never
    /// reads them).
    pub(crate) fn upload_batch_staged<F: Features<D, T> + ?Sized, Y: Targets<T> + ?Sized>(
        &self,
        features: &F,
        targets: &Y,
        start: usize,
        count: usize,
        staging: &mut Vec<T>,
        with_targets: bool,
    ) -> Result<Batch<D, T>> {
        let (host_targets, target_rows) = match with_targets {
            true => (targets.target_rows(start, count, self.classes), count),
            false => (Vec::new(), 0),
        };
        let keys = match self.curvature {
            Curvature::MonteCarloFisher { .. } => features.sample_keys(start, count)?,
            _ => Vec::new(),
        };
        let augment = self.bias_mode == BiasMode::InPosterior;
        Ok(Batch {
            phi: features.chunk(&self.device, start, count, augment, staging)?,
            targets: self.device.upload(&host_targets, target_rows, self.classes)?,
            host_targets,
            keys,
        })
    }

    /// `OutOfMemory` unless a change of this posterior by `rows` samples fits in the
    /// [memory budget](crate::memory): it builds the new Π and Σ (and Kron's factors) before
    /// it commits them, and passes over the rows.
    pub(crate) fn ensure_working_memory(&self, what: &str, rows: usize) -> Result<()> {
        let kind = self.moments.state.kind();
        let (k, da, elem) = (self.classes, self.augmented_features(), std::mem::size_of::<T>());
        let needed = structure::resident_bytes(kind, k, da, elem).saturating_add(structure::pass_bytes(
            kind,
            pass_rows(rows, k, da, CHUNK_ELEMENTS),
            k,
            da,
            elem,
        ));
        crate::memory::ensure_on(
            &self.device,
            needed,
            || format!("{what} of {} by {rows} rows", structure::describe::<T>(kind, k, da)),
            |_| String::new(),
        )
    }

    /// A device-side deep copy.
    pub fn try_clone(&self) -> Result<Self> {
        let parts = Parts {
            likelihood: self.likelihood,
            curvature: self.curvature,
            bias_mode: self.bias_mode,
            prior_precision: self.prior_precision.clone(),
            classes: self.classes,
            features: self.features,
            fixed_bias: self.fixed_bias.as_ref().map(|b| self.device.copy(b)).transpose()?,
            moments: self.moments.copy(&self.device)?,
            samples_seen: self.samples_seen,
            calibration: self.calibration,
        };
        Ok(Posterior {
            refresh_policy: self.refresh_policy,
            since_check: self.since_check,
            drift_floor: self.drift_floor,
            ..Self::from_parts(&self.device, parts)
        })
    }

    /// What the per-structure operations read of the posterior.
    pub(crate) fn model(&self) -> model::Model<'_, D, T> {
        Self::model_of(&self.device, self.settings(), self.fixed_bias.as_ref())
    }

    /// [`Posterior::model`] beside the moments, mutably.
    pub(crate) fn split(&mut self) -> (model::Model<'_, D, T>, &mut Moments<D, T>) {
        let model = Self::model_of(&self.device, self.settings(), self.fixed_bias.as_ref());
        (model, &mut self.moments)
    }

    fn settings(&self) -> (Likelihood, Curvature) {
        (self.likelihood, self.curvature)
    }

    fn model_of<'a>(
        device: &'a D,
        (likelihood, curvature): (Likelihood, Curvature),
        fixed_bias: Option<&'a Matrix<D, T>>,
    ) -> model::Model<'a, D, T> {
        model::Model {
            device,
            likelihood,
            curvature,
            fixed_bias,
        }
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

/// Validates a finite, positive scalar setting and converts it.
pub(crate) fn positive<T: Scalar>(argument: &'static str, value: f64) -> Result<T> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::invalid(argument, format!("must be finite and > 0, got {value}")));
    }
    Ok(T::from_f64(value))
}
