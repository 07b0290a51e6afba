//! Last-layer Laplace posteriors: fit, closed-form update, predictive.
//!
//! The head W (K × D) of a trained network is the mean of a Gaussian posterior over
//! `w = vec_row(W)`; its precision is `Π = τ I + Σ_n H_n` with the softmax GGN
//! `H_n = Λ_n ⊗ φ_n φ_nᵀ`, `Λ_n = diag(p_n) − p_n p_nᵀ`. [`Posterior::update`] folds new labelled
//! samples in by damped Newton steps to the mode of `Σ_j log p(y_j | w) − ½ (w − ŵ)ᵀ Π (w − ŵ)`,
//! each `d = Σ_w ∇J(w)` with `Σ_w = (Σ⁻¹ + Σ_j H_j(w))⁻¹` by Woodbury, and keeps the Laplace
//! approximation at the new mode.

mod accumulate;
mod evidence;
mod features;
mod fit;
mod head;
mod model;
mod predict;
mod sample;
mod step;
mod structure;
mod tune;
mod unlearn;
mod update;

pub use accumulate::CurvatureAccumulator;
pub use evidence::PriorShape;
pub use features::Features;
pub use head::{HeadConfig, HeadFit, HeadSolver, HeadTargets, fit_head, fit_head_gaussian, fit_map_head};
pub use predict::{Calibration, Link, Prediction};
pub(crate) use structure::{RawTensor, resident_bytes};
pub use tune::{TuneConfig, TuneMetric, TuneReport};

pub use unlearn::UnlearnConfig;
pub use update::{CurvatureAt, StepControl, UpdateConfig, UpdateReport, UpdateRule};

use crate::device::{Device, Matrix, OutputWeighting};
use crate::error::{Error, Result};
use crate::host::Targets;
use crate::scalar::Scalar;
use model::Batch;
use structure::CovarianceStructure;

/// Which covariance the posterior keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    /// The exact curvature over all `P = K·D` weights: Π and Σ are P × P.
    Full,
    /// One D × D covariance shared by all classes (`Π = I_K ⊗ Π_D`), the seed paper's form,
    /// with curvature `Π_D = τ I + Σ_n m_n φ_n φ_nᵀ`. The weighting sets m_n for the softmax GGN;
    /// every other curvature uses `m_n = tr(M_n)/K` for the output curvature M_n, the nearest
    /// `I_K ⊗ ·` form in Frobenius norm.
    Shared(OutputWeighting),
    /// The diagonal of the curvature: `Π_kd = τ + Σ_n M_n[k,k] φ_nd²`, P values. Updates are
    /// exact for this structure.
    Diag,
    /// KFAC: `Σ_n M_n ⊗ φ_nφ_nᵀ ≈ (1/N)(Σ_n M_n) ⊗ (Σ_n φ_nφ_nᵀ) = (1/N) A ⊗ G`, kept as the
    /// eigendecompositions `A = U_A diag(a) U_Aᵀ`, `G = U_G diag(g) U_Gᵀ` with the prior added on
    /// the eigenvalues: `Π = (U_A ⊗ U_G) diag(a_i g_j / N + τ) (U_A ⊗ U_G)ᵀ`. An update adds the
    /// new samples to the running sums A, G and N and refactors them, an approximation: the
    /// Kronecker factorisation of a sum is not the sum of the factorisations.
    Kron,
}

/// The likelihood of a target given the logits `f = W φ + b`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Likelihood {
    /// Softmax cross-entropy over K classes; targets are class labels.
    #[default]
    Classification,
    /// Gaussian `N(y | f, σ² I_K)` over K outputs; targets are n × K real values. The GGN is
    /// `I_K ⊗ φφᵀ / σ²`, independent of the head, so the Newton step is exact and an update
    /// equals a refit on all data (the Bayesian linear model).
    Regression {
        /// Observation noise σ > 0.
        sigma_noise: f64,
    },
}

/// Which curvature approximates the Hessian of the negative log-likelihood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Curvature {
    /// The generalised Gauss–Newton `J_nᵀ M_n J_n`: for softmax `M_n = diag(p_n) − p_n p_nᵀ`
    /// (equal to the Fisher), for regression `I_K / σ²`.
    #[default]
    Ggn,
    /// The empirical Fisher `Σ_n g_n g_nᵀ` with `g_n = ∂_f log p(y_n | f_n) ⊗ φ_n`:
    /// `M_n = r_n r_nᵀ`, `r_n = e_{y_n} − p_n` (classification) or `(y_n − f_n)/σ²` (regression).
    EmpiricalFisher,
    /// The empirical Fisher with targets drawn from the model, averaged over `samples` draws:
    /// `M_n = (1/S) Σ_s r_s r_sᵀ`. The draws for a sample are seeded by `seed` and the sample's
    /// own feature values, so they do not depend on chunking, sharding or order.
    MonteCarloFisher {
        /// Draws per sample S ≥ 1.
        samples: usize,
        /// Seed of the draws.
        seed: u64,
    },
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

impl BiasMode {
    /// D_aug, the head's stored columns for `features` columns: D + 1 with the bias in the
    /// posterior, else D.
    pub fn augmented(self, features: usize) -> usize {
        features + usize::from(self == BiasMode::InPosterior)
    }
}

/// Settings of [`Posterior::fit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitConfig {
    /// Covariance structure.
    pub structure: Structure,
    /// Likelihood of the targets.
    pub likelihood: Likelihood,
    /// Curvature approximation.
    pub curvature: Curvature,
    /// Prior precision τ > 0 (`Π = τ I + curvature`).
    pub prior_precision: f64,
    /// Whether the bias is part of the posterior.
    pub bias: BiasMode,
    /// Rows of Φ uploaded and accumulated per pass, at most: a pass also holds at most
    /// [`CHUNK_ELEMENTS`] values of its `rows × (K + D_aug)` features and outputs, so that memory
    /// stays bounded for large N and for large heads (K = 32,000 gives passes of 1,000 rows).
    pub chunk_rows: usize,
}

/// The most `rows × (K + D_aug)` values one pass over the data holds (2²⁵: 128 MB of f32).
pub const CHUNK_ELEMENTS: usize = 1 << 25;

/// The rows of one pass: `chunk_rows`, capped so that `rows × (K + D_aug) ≤ elements`
/// (at most [`CHUNK_ELEMENTS`], a structure may ask for fewer), and at least 1.
pub(crate) fn pass_rows(chunk_rows: usize, classes: usize, augmented_features: usize, elements: usize) -> usize {
    chunk_rows
        .min(elements.min(CHUNK_ELEMENTS) / (classes + augmented_features).max(1))
        .max(1)
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            structure: Structure::Full,
            likelihood: Likelihood::Classification,
            curvature: Curvature::Ggn,
            prior_precision: 1.0,
            bias: BiasMode::InPosterior,
            chunk_rows: 32_768,
        }
    }
}

impl FitConfig {
    /// Peak bytes a fit with these settings allocates at K classes and D feature columns in
    /// `T` before its passes over the data: the data term, Π, Σ and the workspace of Π's
    /// inverse (Full about 4P² elements, P = K·D_aug). A fit that would exceed the
    /// [memory budget](crate::memory) is refused with `OutOfMemory` before it allocates.
    ///
    /// ```
    /// use laplace_update::{FitConfig, Structure};
    /// let full = FitConfig::default().peak_bytes::<f32>(30, 512);
    /// let kron = FitConfig { structure: Structure::Kron, ..Default::default() }.peak_bytes::<f32>(30, 512);
    /// assert!(full > 3_000_000_000 && kron < 20_000_000);
    /// ```
    pub fn peak_bytes<T: Scalar>(&self, classes: usize, features: usize) -> u64 {
        let da = self.bias.augmented(features);
        structure::fit_bytes(self.structure, classes, da, std::mem::size_of::<T>())
    }

    /// Peak bytes of one pass of `rows` samples over the data in `T`: the logits, the output
    /// curvatures and the staged features. A pass that would exceed the
    /// [memory budget](crate::memory) is refused with `OutOfMemory`.
    pub fn pass_bytes<T: Scalar>(&self, rows: usize, classes: usize, features: usize) -> u64 {
        let da = self.bias.augmented(features);
        structure::pass_bytes(self.structure, rows, classes, da, std::mem::size_of::<T>())
    }

    /// Checks the settings that do not depend on data: τ, σ, Monte Carlo samples, chunk size.
    ///
    /// Errors: `InvalidArgument`.
    pub fn validate(&self) -> Result<()> {
        positive::<f64>("prior_precision", self.prior_precision)?;
        if let Likelihood::Regression { sigma_noise } = self.likelihood {
            positive::<f64>("sigma_noise", sigma_noise)?;
        }
        if let Curvature::MonteCarloFisher { samples: 0, .. } = self.curvature {
            return Err(Error::invalid("samples", "at least one Monte Carlo sample is required"));
        }
        if self.chunk_rows == 0 {
            return Err(Error::invalid("chunk_rows", "must be at least 1"));
        }
        Ok(())
    }
}

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

/// When [`Posterior::update`] checks the drift of Σ against Π and refreshes Σ from Π.
///
/// After every `every` updated samples, the drift is estimated on `probes` seeded columns,
/// `max |(ΠΣ − I)[:, j]|` (two n × probes products), and Σ is recomputed from Π when it exceeds
/// `threshold`. So at every check the drift is at most `threshold`; between checks it grows by
/// what `every` updates add, unless the element type cannot do better: after a refresh that
/// leaves the drift at `f`, the next refresh waits for `2f`. The check costs about
/// `4 n² · probes` flops (n the side of Σ), the refresh one Cholesky inverse; a refresh that
/// fails leaves the (successful) update as it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshPolicy {
    /// Updated samples between checks (≥ 1).
    pub every: usize,
    /// Largest drift left in place.
    pub threshold: f64,
    /// Columns of ΠΣ − I examined per check (≥ 1).
    pub probes: usize,
}

impl Default for RefreshPolicy {
    /// Every 1,000 samples, threshold 1e-4, 8 probe columns.
    fn default() -> Self {
        RefreshPolicy {
            every: 1000,
            threshold: 1e-4,
            probes: 8,
        }
    }
}

impl<D: Device, T: Scalar> Posterior<D, T> {
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
        Ok(Posterior {
            device: self.device.clone(),
            likelihood: self.likelihood,
            curvature: self.curvature,
            bias_mode: self.bias_mode,
            prior_precision: self.prior_precision.clone(),
            classes: self.classes,
            features: self.features,
            fixed_bias: self.fixed_bias.as_ref().map(|b| self.device.copy(b)).transpose()?,
            moments: self.moments.copy(&self.device)?,
            samples_seen: self.samples_seen,
            refresh_policy: self.refresh_policy,
            since_check: self.since_check,
            drift_floor: self.drift_floor,
            calibration: self.calibration,
        })
    }

    /// Numerical drift of the stored pair: `max_ij |(Π Σ − I)_ij|`, the entrywise max-abs norm
    /// (Diag and Kron: `max |π σ − 1|` over their eigenvalues).
    ///
    /// Costs one product of the stored matrices. Exact arithmetic gives 0; updates in floating
    /// point let it grow, and [`Posterior::refresh`] resets it.
    pub fn drift(&self) -> Result<T> {
        self.moments.state.drift(&self.device, None)
    }

    /// The automatic drift check of [`Posterior::update`] (on by default).
    pub fn refresh_policy(&self) -> Option<RefreshPolicy> {
        self.refresh_policy
    }

    /// Sets (or, with `None`, turns off) the automatic drift check.
    ///
    /// Errors: `InvalidArgument` for `every` or `probes` of 0, or a threshold that is not
    /// finite and positive.
    pub fn set_refresh_policy(&mut self, policy: Option<RefreshPolicy>) -> Result<()> {
        if let Some(p) = policy {
            if p.every == 0 || p.probes == 0 {
                return Err(Error::invalid(
                    "refresh_policy",
                    "`every` and `probes` must be at least 1",
                ));
            }
            positive::<f64>("threshold", p.threshold)?;
        }
        self.refresh_policy = policy;
        self.since_check = 0;
        Ok(())
    }

    /// `max_j |(ΠΣ − I)[:, j]|` over `probes` columns j drawn from `seed`: a lower bound of
    /// [`Posterior::drift`] at O(n² · probes) cost.
    pub fn drift_estimate(&self, probes: usize, seed: u64) -> Result<T> {
        self.moments.state.drift(&self.device, Some((probes, seed)))
    }

    /// Runs the refresh policy after `m` updated samples.
    pub(crate) fn after_update(&mut self, m: usize) {
        let Some(policy) = self.refresh_policy else { return };
        self.since_check += m;
        if self.since_check < policy.every {
            return;
        }
        self.since_check = 0;
        let seed = self.samples_seen as u64;
        let Ok(drift) = self.drift_estimate(policy.probes, seed) else {
            return;
        };
        let drift = drift.as_f64();
        // Refresh above the threshold, unless the last refresh could do no better: an f32
        // inverse of a badly conditioned precision has a floor, and refreshing down to it
        // again would cost a Cholesky inverse every check for nothing.
        let due = drift.is_nan() || (drift > policy.threshold && drift > 2.0 * self.drift_floor);
        if due && self.refresh().is_ok() {
            self.drift_floor = self.drift_estimate(policy.probes, seed).map_or(0.0, |d| d.as_f64());
        }
    }

    /// Recomputes `Σ = Π⁻¹` from the precision (Cholesky, or the reciprocals of the
    /// eigenvalues), discarding accumulated drift. On failure the posterior is unchanged.
    pub fn refresh(&mut self) -> Result<()> {
        let state = &mut self.moments.state;
        let covariance = state.covariance_of(&self.device, state.precision())?;
        state.pair_mut().covariance = covariance;
        Ok(())
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
        Ok(Posterior {
            device: device.clone(),
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
            refresh_policy: Some(RefreshPolicy::default()),
            since_check: 0,
            drift_floor: 0.0,
            calibration: raw.calibration,
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

/// Validates a finite, positive scalar setting and converts it.
pub(crate) fn positive<T: Scalar>(argument: &'static str, value: f64) -> Result<T> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::invalid(argument, format!("must be finite and > 0, got {value}")));
    }
    Ok(T::from_f64(value))
}
