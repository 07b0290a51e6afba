//! [`Posterior::tune_prior_precision`]: the prior precision τ (and the logit temperature, and
//! the link) that score best on validation data.
//!
//! The mean ŵ is held fixed, as for the marginal likelihood; τ changes only the covariance
//! `Σ(τ) = U diag(1/(h + τ)) Uᵀ`, with `H = U diag(h) Uᵀ` the data curvature in the form the
//! structure holds it (one eigendecomposition for Full and Shared, none for Diag and Kron). The
//! probit links read the logit variances `diag Σ_f(τ)` (or `diag CΣ_f(τ)C`), which are
//! `W · (1/(h + τ))` for fixed nonnegative weights W of each validation input: one product
//! scores every grid point, with no factorisation per τ.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use super::structure::{Spectrum, shift_reflector};
use super::{Calibration, Features, Link, Posterior, Structure, logits};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::host::Targets;
use crate::metrics::{Scores, score};
use crate::scalar::Scalar;

/// What [`Posterior::tune_prior_precision`] minimises on the validation data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TuneMetric {
    /// Mean negative log-likelihood of the labels.
    #[default]
    Nll,
    /// Mean Brier score `Σ_k (p_k − y_k)²`.
    Brier,
    /// Expected calibration error over 15 bins.
    Ece,
}

impl TuneMetric {
    /// The metric of a name: `nll`, `brier` or `ece`.
    ///
    /// Errors: `InvalidArgument`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "nll" => Ok(TuneMetric::Nll),
            "brier" => Ok(TuneMetric::Brier),
            "ece" => Ok(TuneMetric::Ece),
            other => Err(Error::invalid(
                "metric",
                format!("unknown metric {other:?}: nll, brier or ece"),
            )),
        }
    }

    /// The metric's value in `scores`.
    pub fn of(&self, scores: &Scores) -> f64 {
        match self {
            TuneMetric::Nll => scores.nll,
            TuneMetric::Brier => scores.brier,
            TuneMetric::Ece => scores.ece,
        }
    }
}

/// How [`Posterior::tune_prior_precision`] picks τ from the scored points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TuneSelection {
    /// [`TuneSelection::OneStandardError`] when the temperature is tuned with τ, else
    /// [`TuneSelection::Best`]. Jointly, the probit's logits `f/√(T² + λ v(τ))` depend on τ and
    /// T mostly through `T² + λ v(τ)`: a ridge of near-equal scores (a wide posterior with a
    /// sharp temperature, or the network with its own) along which the best pair follows the
    /// validation split's noise.
    #[default]
    Auto,
    /// The largest τ (the narrowest posterior, the nearest to the network itself) whose metric
    /// is within one standard error of the best: the mean over validation rows of its excess
    /// over the best row by row, `m`, against that excess's standard error `s/√n`, `m ≤ s/√n`.
    /// A τ away from the network is kept only where the validation data show it to be better.
    /// ECE, which has no per-row value, selects as [`TuneSelection::Best`] does.
    OneStandardError,
    /// The best τ, refined between the grid points beside it.
    Best,
}

impl TuneSelection {
    /// The rule of a name: `auto`, `one-se` or `best`.
    ///
    /// Errors: `InvalidArgument`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "auto" => Ok(TuneSelection::Auto),
            "one-se" => Ok(TuneSelection::OneStandardError),
            "best" => Ok(TuneSelection::Best),
            other => Err(Error::invalid(
                "selection",
                format!("unknown selection {other:?}: auto, one-se or best"),
            )),
        }
    }
}

/// Settings of [`Posterior::tune_prior_precision`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TuneConfig {
    /// The metric minimised.
    pub metric: TuneMetric,
    /// The link τ is tuned for: [`Link::Probit`], [`Link::CentredProbit`] or [`Link::None`]
    /// (which τ does not enter: τ is kept, and only the temperature is tuned, the network's
    /// own temperature scaling).
    pub link: Link,
    /// Smallest τ of the log grid.
    pub grid_min: f64,
    /// Largest τ of the log grid.
    pub grid_max: f64,
    /// Points of the log grid (≥ 2); 3 more inside each interval refine the best.
    pub grid_points: usize,
    /// Also score τ past the grid, `grid_max·10^j` for j = 1 … 6. A larger τ narrows the
    /// posterior toward the network itself (`Σ → 0`, the predictive → the mean's softmax), so
    /// the network, at the tuned temperature, is a candidate. The posterior stays a valid one
    /// at any such τ.
    pub extend_grid: bool,
    /// How τ is picked from the scored points.
    pub selection: TuneSelection,
    /// Choose τ (else keep the posterior's: only the temperature and link are chosen, as
    /// for a τ that also sets how far updates move the head).
    pub prior: bool,
    /// Tune the logit temperature T jointly with τ (else T = 1). T stays 1 where the mean
    /// ranks every validation label first: there the NLL falls as T → 0, with no minimiser.
    pub temperature: bool,
    /// Tune the probit's λ jointly (0, or the link's λ·10^(−3 … 1)): a scale of the logit
    /// variances the predictive reads, which calibrates it without changing τ, and so without
    /// changing how far updates move the head.
    pub lambda: bool,
    /// After τ and T, score the probit, centred probit, Monte Carlo (100 draws) and bridge
    /// links there and keep the best (else keep `link`).
    pub choose_link: bool,
    /// After the scalar τ, T and λ, choose one τ per class by coordinate descent over the
    /// scored τ values, T and λ held (Diag only: there class k's logit variance
    /// `Σ_i φ_i²/(h_ki + τ_k)` depends on τ_k alone, so every candidate is scored from the
    /// same pass).
    pub per_class: bool,
}

impl Default for TuneConfig {
    /// NLL, the centred probit (the default link), τ chosen on 41 points of 10⁻⁴ … 10⁴ and 6
    /// decades past it ([`TuneSelection::Auto`]); T = 1, the link kept.
    fn default() -> Self {
        TuneConfig {
            metric: TuneMetric::Nll,
            link: Link::default(),
            grid_min: 1e-4,
            grid_max: 1e4,
            grid_points: 41,
            extend_grid: true,
            selection: TuneSelection::Auto,
            prior: true,
            temperature: false,
            lambda: false,
            choose_link: false,
            per_class: false,
        }
    }
}

impl TuneConfig {
    /// Checks the settings: a grid `0 < grid_min < grid_max`, both finite, of ≥ 2 points, and
    /// a probit or no link to tune for.
    ///
    /// Errors: `InvalidArgument`.
    pub fn validate(&self) -> Result<()> {
        if !(self.grid_min.is_finite()
            && self.grid_max.is_finite()
            && 0.0 < self.grid_min
            && self.grid_min < self.grid_max)
        {
            return Err(Error::invalid(
                "grid",
                format!(
                    "needs 0 < min < max, both finite; got {} .. {}",
                    self.grid_min, self.grid_max
                ),
            ));
        }
        if self.grid_points < 2 {
            return Err(Error::invalid("grid_points", "at least 2"));
        }
        self.link.validate()?;
        if !matches!(self.link, Link::Probit { .. } | Link::CentredProbit { .. } | Link::None) {
            return Err(Error::invalid(
                "link",
                "τ is tuned for the probit, centred probit or no link; `choose_link` compares the others",
            ));
        }
        Ok(())
    }
}

/// What [`Posterior::tune_prior_precision`] chose, and what it saw.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneReport {
    /// The chosen τ (with `per_class`, the scalar τ the per-class descent started from).
    pub prior_precision: f64,
    /// With `per_class`, the chosen τ of each class, which is set.
    pub class_prior_precision: Option<Vec<f64>>,
    /// The chosen logit temperature (1 unless tuned).
    pub temperature: f64,
    /// The chosen link.
    pub link: Link,
    /// The metric at the choice.
    pub score: f64,
    /// `(τ, metric)` over the grid and the decades scored past its end (at the best
    /// temperature of each τ).
    pub curve: Vec<(f64, f64)>,
    /// `(link, metric)` of each link compared at the chosen τ and T (empty unless
    /// `choose_link`).
    pub links: Vec<(Link, f64)>,
    /// Regression: the chosen σ of the Gaussian likelihood (tuned jointly with τ).
    pub sigma_noise: Option<f64>,
}

/// Points scored inside each interval of the grid, among which the best grid point's
/// neighbourhood is refined.
const SUBDIVISIONS: usize = 3;
/// Values of λ > 0 tried, over `λ₀·10^(−3 … 1)`, then refined.
const LAMBDA_POINTS: usize = 13;
/// Values of σ tried for a regression posterior, over `σ₀·10^(−1 … 1)`.
const NOISE_POINTS: usize = 21;
/// f64 values of one validation pass's temporaries (64 MiB).
const PASS_ELEMENTS: usize = 1 << 23;
/// Temperatures tried: `10^(−1 … 1)` on this many log-spaced points, then refined.
const TEMPERATURE_POINTS: usize = 41;
/// Most sweeps of the per-class coordinate descent over τ.
const PER_CLASS_SWEEPS: usize = 5;
/// Decades past `grid_max` scored with `extend_grid`, one τ each: at `10⁴·10⁶` the logit
/// variances of unit features are `10⁻¹⁰`, the network's own predictive to any metric's
/// precision.
const EXTENSION_DECADES: usize = 6;

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// Chooses the prior precision τ that minimises `config.metric` of the predictive on the
    /// validation data (Φ, labels), and with `config.temperature` a logit temperature T jointly,
    /// then sets them (τ by [`Posterior::set_prior_precision`], T and the link in
    /// [`Posterior::calibration`]). The mean is held fixed.
    ///
    /// τ runs over a log grid (and, with `extend_grid`, 6 decades past it), each τ at its best T;
    /// `selection` picks the largest of these τ within one standard error of the best (by
    /// default when T is tuned too), or the best, which is then refined over the 3 points scored
    /// inside each interval next to it;
    /// every τ is scored from one spectrum of the curvature (see the module notes), so the cost
    /// is one eigendecomposition (Full: P³ order; Shared: D³; Diag, Kron: none) and
    /// O(n·K·P) per pass over the validation data for Full (O(n·K·D) for the others), whatever
    /// the number of grid points. With `per_class` (Diag), one τ per class is then chosen by
    /// coordinate descent over the same scored τ values with no further pass: for the NLL of
    /// the plain probit O(n·K) per class and O(n) per candidate τ; for other metrics or the
    /// centred probit O(n·K) per candidate, which is slow for large K. With `choose_link`, the
    /// probit, centred probit, Monte Carlo and bridge links are then scored by
    /// [`Posterior::predict`] at the chosen τ and T.
    ///
    /// A regression posterior (GGN curvature) is tuned for its Gaussian predictive NLL over τ
    /// (the grid alone) and σ jointly (σ over `σ₀·10^(−1 … 1)`), both set; the report's
    /// `sigma_noise` is the chosen σ.
    ///
    /// Errors: those of [`Posterior::update`]'s inputs, `InvalidArgument` (the config; for
    /// regression, a temperature, a link choice or a metric other than NLL; `per_class` without
    /// τ chosen for a probit link), `Unsupported` (regression with another curvature;
    /// `per_class` for a structure other than Diag), `NotPositiveDefinite`. On error the posterior is
    /// unchanged.
    ///
    /// ```
    /// use laplace_update::{CpuDevice, FitConfig, HostMatrix, Posterior, TuneConfig};
    /// let cpu = CpuDevice::new(1)?;
    /// // Two classes on one feature, the head already trained.
    /// let x = [-2.0f64, -1.0, -0.5, 0.5, 1.0, 2.0];
    /// let y = [0u32, 0, 1, 0, 1, 1];
    /// let head = [-1.5f64, 1.5];
    /// let features = HostMatrix::new(&x, 6, 1)?;
    /// let mut post = Posterior::fit(&cpu, features, &y[..], HostMatrix::new(&head, 2, 1)?, None, &FitConfig::default())?;
    /// let report = post.tune_prior_precision(features, &y[..], &TuneConfig::default())?;
    /// assert_eq!(post.prior_precision()[0], report.prior_precision);
    /// assert!(report.curve.len() >= 41); // the grid, and the decades scored past its end
    /// # Ok::<(), laplace_update::Error>(())
    /// ```
    pub fn tune_prior_precision<F: Features<D, T> + Copy, Y: Targets<T> + ?Sized>(
        &mut self,
        features: F,
        targets: &Y,
        config: &TuneConfig,
    ) -> Result<TuneReport> {
        config.validate()?;
        if self.is_regression() {
            if config.temperature || config.choose_link || config.metric != TuneMetric::Nll {
                return Err(Error::invalid(
                    "config",
                    "a regression posterior is tuned for its NLL, with no temperature or link",
                ));
            }
            self.gaussian_noise()?;
        }
        if config.per_class {
            if !config.prior || config.link == Link::None || self.is_regression() {
                return Err(Error::invalid(
                    "per_class",
                    "one τ per class is chosen with τ itself (`prior`), for a classifier's probit link",
                ));
            }
            if self.structure() != Structure::Diag {
                return Err(Error::Unsupported(format!(
                    "one τ per class tuned on validation data for the {:?} structure: only Diag's \
                     logit variances separate by class; the marginal likelihood chooses per-class τ \
                     for Full (`optimize_prior_precision(PriorShape::PerClass)`)",
                    self.structure()
                )));
            }
        }
        self.check_batch(&features, targets)?;
        // The curvature's spectrum (an eigendecomposition beside Π: about 3× the posterior)
        // and every validation row's logit variances at each grid column, in f64.
        let (kind, k, da) = (self.structure(), self.classes, self.augmented_features());
        let columns = (config.grid_points as u64).saturating_mul(4) + EXTENSION_DECADES as u64;
        let needed = super::resident_bytes(kind, k, da, 8).saturating_mul(3).saturating_add(
            (features.rows() as u64)
                .saturating_mul(k as u64)
                .saturating_mul(columns * 8),
        );
        crate::memory::ensure_on(
            &self.device,
            needed,
            || format!("tuning {}", super::structure::describe::<T>(kind, k, da)),
            |_| "; tune on fewer validation rows or grid points".into(),
        )?;
        let device = self.device.clone();
        device.scope(|| match self.is_regression() {
            true => self.tune_regression(features, targets, config),
            false => self.tune_in_scope(features, targets, config),
        })
    }

    /// Regression: τ and σ jointly on the grid of τ × [`NOISE_POINTS`] values of σ over
    /// `σ₀·10^(−1 … 1)`, minimising the Gaussian predictive NLL
    /// `½ log 2π(v + σ²) + (y − f)²/2(v + σ²)` with `v = diag Σ_f` of the covariance
    /// `((σ₀/σ)² H + τ I)⁻¹`: one pass scores every pair.
    fn tune_regression<F: Features<D, T> + Copy, Y: Targets<T> + ?Sized>(
        &mut self,
        features: F,
        targets: &Y,
        config: &TuneConfig,
    ) -> Result<TuneReport> {
        let (k, da) = (self.classes, self.augmented_features());
        let sigma0 = self.gaussian_noise()?;
        let prior = self.prior_values();
        let spectrum = self
            .moments
            .state
            .curvature_spectrum(&self.device, &prior, k, da, false)?;
        let grid = match config.prior {
            true => log_points(config.grid_min, config.grid_max, config.grid_points),
            false => prior[..1].to_vec(),
        };
        let sigmas = log_points(sigma0 / 10.0, sigma0 * 10.0, NOISE_POINTS);
        let columns: Vec<(f64, f64)> = sigmas
            .iter()
            .flat_map(|&sigma| grid.iter().map(move |&tau| (tau, (sigma0 / sigma).powi(2))))
            .collect();
        let validation = self.validation_pass(&features, targets, Some(&spectrum), false, &columns)?;
        let mut curve: Vec<(f64, f64)> = grid.iter().map(|&tau| (tau, f64::INFINITY)).collect();
        let mut best = (f64::INFINITY, grid[0], sigma0);
        for (s, &sigma) in sigmas.iter().enumerate() {
            for (g, &tau) in grid.iter().enumerate() {
                let nll = validation.gaussian_nll(s * grid.len() + g, sigma);
                curve[g].1 = curve[g].1.min(nll);
                if nll < best.0 {
                    best = (nll, tau, sigma);
                }
            }
        }
        let (score, tau, sigma) = best;
        let mut tuned = self.try_clone()?;
        tuned.set_sigma_noise(sigma)?;
        tuned.set_prior_precision(&[tau])?;
        *self = tuned;
        Ok(TuneReport {
            prior_precision: tau,
            temperature: 1.0,
            link: config.link,
            score,
            curve,
            links: Vec::new(),
            sigma_noise: Some(sigma),
            class_prior_precision: None,
        })
    }

    fn tune_in_scope<F: Features<D, T> + Copy, Y: Targets<T> + ?Sized>(
        &mut self,
        features: F,
        targets: &Y,
        config: &TuneConfig,
    ) -> Result<TuneReport> {
        let (k, da) = (self.classes, self.augmented_features());
        let prior = self.prior_values();
        let (lambda, centred) = match config.link {
            Link::Probit { lambda } => (lambda, false),
            Link::CentredProbit { lambda } => (lambda, true),
            _ => (0.0, false),
        };
        // With no link τ does not enter the predictive: it is kept, and only T is tuned.
        let grid = match config.link {
            _ if !config.prior => prior[..1].to_vec(),
            Link::None => prior[..1].to_vec(),
            _ => log_points(config.grid_min, config.grid_max, config.grid_points),
        };
        // λ = 0 (the mean's softmax) and λ₀·10^(−3 … 1).
        let lambdas: Vec<f64> = match config.lambda && lambda > 0.0 {
            true => std::iter::once(0.0)
                .chain(log_points(lambda * 1e-3, lambda * 10.0, LAMBDA_POINTS))
                .collect(),
            false => vec![lambda],
        };
        // One pass scores the grid and SUBDIVISIONS points inside each of its intervals (point
        // i of the grid is column i·(SUBDIVISIONS + 1)), then the decades past its end.
        let stride = SUBDIVISIONS + 1;
        let mut columns: Vec<f64> = match grid.len() {
            1 => grid.clone(),
            _ => log_points(grid[0], grid[grid.len() - 1], (grid.len() - 1) * stride + 1),
        };
        let grid_columns = columns.len();
        let extension: Vec<f64> = match grid.len() > 1 && config.extend_grid {
            true => (1..=EXTENSION_DECADES as i32)
                .map(|j| grid[grid.len() - 1] * 10f64.powi(j))
                .collect(),
            false => Vec::new(),
        };
        columns.extend(&extension);
        let shifts: Vec<(f64, f64)> = columns.iter().map(|&tau| (tau, 1.0)).collect();
        // One τ, the posterior's own: its covariance serves, with no spectrum.
        let spectrum = match columns.len() {
            1 => None,
            _ => Some(
                self.moments
                    .state
                    .curvature_spectrum(&self.device, &prior, k, da, true)?,
            ),
        };
        let validation = self.validation_pass(&features, targets, spectrum.as_ref(), centred, &shifts)?;
        // Where the mean already ranks every label first, the validation NLL falls as T → 0 and
        // has no minimiser: T is not identified there, and stays 1.
        let temperature = config.temperature && !validation.separated(k);
        let temperatures = if temperature {
            log_points(0.1, 10.0, TEMPERATURE_POINTS)
        } else {
            vec![1.0]
        };
        // A choice: (score, column, T, λ).
        let scored = |c: usize, t: f64, l: f64| -> Result<f64> {
            Ok(config.metric.of(&validation.scores(&vec![c; k], t, l, k)?))
        };
        // The best temperature and λ at column c: (score, T, λ).
        let best_at = |c: usize| -> Result<(f64, f64, f64)> {
            let mut here = (f64::INFINITY, 1.0, lambda);
            for &l in &lambdas {
                for &t in &temperatures {
                    let s = scored(c, t, l)?;
                    if s < here.0 {
                        here = (s, t, l);
                    }
                }
            }
            Ok(here)
        };
        // Every point of the grid and of the decades past it at its best T and λ: the curve.
        let points: Vec<(usize, f64)> = (0..grid.len())
            .map(|g| (g * stride, grid[g]))
            .chain((0..extension.len()).map(|j| (grid_columns + j, extension[j])))
            .collect();
        let mut curve = Vec::with_capacity(points.len());
        let mut at = Vec::with_capacity(points.len());
        for &(c, tau) in &points {
            let here = best_at(c)?;
            curve.push((tau, here.0));
            at.push((here.0, c, here.1, here.2));
        }
        let best = at
            .iter()
            .copied()
            .fold((f64::INFINITY, 0, 1.0, lambda), |b, a| if a.0 < b.0 { a } else { b });
        // One standard error: the largest τ whose excess over the best, per validation row, has
        // a mean within its standard error.
        let mut choice = best;
        let one_standard_error = config.metric != TuneMetric::Ece
            && match config.selection {
                TuneSelection::Auto => temperature,
                TuneSelection::OneStandardError => true,
                TuneSelection::Best => false,
            };
        if one_standard_error {
            let losses = |(_, c, t, l): (f64, usize, f64, f64)| validation.losses(config.metric, c, t, l, k);
            let reference = losses(best)?;
            let mut by_tau: Vec<usize> = (0..points.len()).collect();
            by_tau.sort_by(|&a, &b| points[b].1.total_cmp(&points[a].1));
            for i in by_tau {
                let excess: Vec<f64> = losses(at[i])?.iter().zip(&reference).map(|(a, b)| a - b).collect();
                if within_one_standard_error(&excess) {
                    choice = at[i];
                    break;
                }
            }
        }
        // The best, when it is a grid point: refined over the points between its neighbours,
        // at its T and λ.
        if !one_standard_error && best.1 < grid_columns {
            for c in best.1.saturating_sub(stride)..(best.1 + stride + 1).min(grid_columns) {
                let s = scored(c, best.2, best.3)?;
                if s < choice.0 {
                    choice = (s, c, best.2, best.3);
                }
            }
        }
        // Refine T, then λ, at the chosen τ: golden-section searches on their logarithms
        // between the grid values around them.
        let golden = |lo: f64, hi: f64, f: &dyn Fn(f64) -> Result<f64>| -> Result<f64> {
            let (mut a, mut b) = (lo.ln(), hi.ln());
            let ratio = (5f64.sqrt() - 1.0) / 2.0;
            for _ in 0..30 {
                let (c, d) = (b - ratio * (b - a), a + ratio * (b - a));
                if f(c.exp())? < f(d.exp())? {
                    b = d;
                } else {
                    a = c;
                }
            }
            Ok((0.5 * (a + b)).exp())
        };
        if temperature {
            let step = (10f64).powf(2.0 / (TEMPERATURE_POINTS - 1) as f64);
            let (c, l) = (choice.1, choice.3);
            let t = golden(choice.2 / step, choice.2 * step, &|t| scored(c, t, l))?;
            let s = scored(c, t, l)?;
            if s < choice.0 {
                choice = (s, c, t, l);
            }
        }
        if lambdas.len() > 1 && choice.3 > 0.0 {
            let step = (10f64).powf(4.0 / (LAMBDA_POINTS - 1) as f64);
            let (c, t) = (choice.1, choice.2);
            let l = golden(choice.3 / step, choice.3 * step, &|l| scored(c, t, l))?;
            let s = scored(c, t, l)?;
            if s < choice.0 {
                choice = (s, c, t, l);
            }
        }
        let link = match config.link {
            Link::Probit { .. } => Link::Probit { lambda: choice.3 },
            Link::CentredProbit { .. } => Link::CentredProbit { lambda: choice.3 },
            other => other,
        };
        let (mut score_at, tau, temperature) = (choice.0, columns[choice.1], choice.2);
        // One τ per class: coordinate descent over the scored columns, each class in turn,
        // keeping a change only when it lowers the metric. The NLL of the plain probit scores a
        // class's every column in O(n) each (the other classes' softmax terms summed once);
        // other metrics and the centred probit rescore all classes, O(n·K) per column.
        let mut class_prior_precision = None;
        if config.per_class {
            let (lambda, incremental) = (
                choice.3,
                config.metric == TuneMetric::Nll && !validation.centre_diagonal,
            );
            let mut chosen = vec![choice.1; k];
            for _ in 0..PER_CLASS_SWEEPS {
                let mut moved = false;
                for c in 0..k {
                    crate::interrupt::check()?;
                    let kept = chosen[c];
                    let by_column: Vec<f64> = match incremental {
                        true => validation.class_nll(&chosen, c, temperature, lambda, k),
                        false => (0..columns.len())
                            .map(|j| {
                                let mut trial = chosen.clone();
                                trial[c] = j;
                                Ok(config.metric.of(&validation.scores(&trial, temperature, lambda, k)?))
                            })
                            .collect::<Result<_>>()?,
                    };
                    let mut best_here = kept;
                    for (j, &s) in by_column.iter().enumerate() {
                        if s < by_column[best_here] {
                            best_here = j;
                        }
                    }
                    chosen[c] = best_here;
                    moved |= best_here != kept;
                }
                if !moved {
                    break;
                }
            }
            // The exact score of the choice; rounding in the per-class sums never makes it worse
            // than the scalar τ it started from.
            let per_class = config.metric.of(&validation.scores(&chosen, temperature, lambda, k)?);
            if per_class <= score_at {
                score_at = per_class;
            } else {
                chosen = vec![choice.1; k];
            }
            class_prior_precision = Some(chosen.iter().map(|&j| columns[j]).collect::<Vec<f64>>());
        }
        // Everything that can fail before the posterior changes: the refactor runs on a copy.
        let mut tuned = self.try_clone()?;
        tuned.set_prior_precision_with(class_prior_precision.as_deref().unwrap_or(&[tau]), spectrum.as_ref())?;
        tuned.set_calibration(Calibration { temperature, link })?;
        let mut report = TuneReport {
            prior_precision: tau,
            temperature,
            link,
            score: score_at,
            curve,
            links: Vec::new(),
            sigma_noise: None,
            class_prior_precision,
        };
        if config.choose_link {
            let lambda = config.link.lambda().unwrap_or(Link::PROBIT_LAMBDA);
            let labels = validation.labels.as_slice();
            for link in [
                Link::Probit { lambda },
                Link::CentredProbit { lambda },
                Link::MonteCarlo { samples: 100, seed: 0 },
                Link::Bridge,
            ] {
                let pred = tuned.predict(features, link)?;
                let s = config.metric.of(&score(&pred.probs, labels, k, 15)?);
                report.links.push((link, s));
                if s < report.score || report.link == Link::None {
                    (report.score, report.link) = (s, link);
                }
            }
            tuned.set_calibration(Calibration {
                temperature,
                link: report.link,
            })?;
        }
        *self = tuned;
        Ok(report)
    }

    /// One pass over the validation data: the mean logits, the labels (or targets), and the
    /// logit variances at every column `(τ, c)` of `grid` from the spectrum, or (`None`, one
    /// column) from the posterior's own covariance.
    fn validation_pass<F: Features<D, T>, Y: Targets<T> + ?Sized>(
        &self,
        features: &F,
        targets: &Y,
        spectrum: Option<&Spectrum<T>>,
        centred: bool,
        grid: &[(f64, f64)],
    ) -> Result<Validation> {
        let (k, da) = (self.classes, self.augmented_features());
        let n = features.rows();
        // Rows per pass: the pass's r·K × width weights and r·K × grid variances within
        // PASS_ELEMENTS f64 values.
        let per_row = k * (spectrum.map_or(da, |s| s.width(da)) + grid.len()) + da;
        let rows = (PASS_ELEMENTS / per_row).clamp(1, n.max(1));
        // A diagonal Σ_f keeps its variances per class and is centred when scored, so that one
        // τ per class can be chosen from the same pass.
        let centre_diagonal = centred && matches!(spectrum, Some(Spectrum::Diagonal { .. }));
        let mut out = Validation {
            mean: Vec::with_capacity(n * k),
            variances: Vec::with_capacity(n * k * grid.len()),
            labels: Vec::with_capacity(n),
            targets: Vec::with_capacity(n * k),
            grid: grid.len(),
            centre_diagonal,
        };
        for start in (0..n).step_by(rows.max(1)) {
            crate::interrupt::check()?;
            let r = rows.min(n - start);
            let batch = self.upload_batch(features, targets, start, r)?;
            let mean = logits(&self.device, &batch.phi, &self.moments.head, self.fixed_bias.as_ref())?;
            out.mean.extend(self.device.download(&mean)?.iter().map(|x| x.as_f64()));
            out.targets.extend(batch.host_targets.iter().map(|t| t.as_f64()));
            for row in batch.host_targets.chunks_exact(k) {
                out.labels
                    .push(row.iter().position(|t| t.as_f64() > 0.5).unwrap_or(0) as u32);
            }
            match spectrum {
                Some(spectrum) => {
                    let phi = self.device.download(&batch.phi)?;
                    out.variances
                        .extend(spectrum.variances(&phi, r, k, da, centred && !centre_diagonal, grid));
                }
                None => {
                    let state = &self.moments.state;
                    let cov = state.logit_covariance(&self.device, &batch.phi, k)?;
                    let v = super::predict::logit_variances(&self.device, &cov, state.logit_basis(), k, centred)?;
                    out.variances
                        .extend(self.device.download(&v)?.iter().map(|x| x.as_f64()));
                }
            }
        }
        Ok(out)
    }
}

/// The validation data as the scores read it: mean logits (n × K), labels (argmax of the
/// targets), targets (n × K), and the logit variances (n·K × grid, row `x·K + k`);
/// `centre_diagonal`: the variances are those of a diagonal Σ_f, centred when scored.
struct Validation {
    mean: Vec<f64>,
    variances: Vec<f64>,
    labels: Vec<u32>,
    targets: Vec<f64>,
    grid: usize,
    centre_diagonal: bool,
}

impl Validation {
    /// The mean Gaussian predictive NLL at column `g` with noise σ:
    /// `(1/n) Σ_x Σ_k [½ log 2π(v + σ²) + (y − f)²/2(v + σ²)]`.
    fn gaussian_nll(&self, g: usize, sigma: f64) -> f64 {
        let n = self.labels.len().max(1);
        let total: f64 = (0..self.mean.len())
            .map(|i| {
                let s = self.variances[i * self.grid + g] + sigma * sigma;
                0.5 * (2.0 * std::f64::consts::PI * s).ln() + (self.targets[i] - self.mean[i]).powi(2) / (2.0 * s)
            })
            .sum();
        total / n as f64
    }

    /// The mean NLL of the plain probit at temperature `t` for class `c`'s variance from each
    /// column, the other classes' from `columns`: per input, `m + ln(e^{−m} Σ_{j≠c} e^{z_j} +
    /// e^{z_c − m}) − z_y` with `m` the larger of the other classes' largest logit and `z_c`,
    /// floored like [`score`]'s NLL. O(n·K) once, then O(n) per column.
    fn class_nll(&self, columns: &[usize], c: usize, t: f64, lambda: f64, k: usize) -> Vec<f64> {
        let n = self.labels.len();
        let z = |x: usize, j: usize, column: usize| {
            let v = self.variances[(x * k + j) * self.grid + column];
            (self.mean[x * k + j] / t) / (1.0 + lambda * v / (t * t)).sqrt()
        };
        // Per input: the other classes' largest logit, their softmax sum relative to it, and
        // the label's logit when the label is not c.
        let others: Vec<(f64, f64, Option<f64>)> = (0..n)
            .map(|x| {
                let zs: Vec<f64> = (0..k).filter(|&j| j != c).map(|j| z(x, j, columns[j])).collect();
                let top = zs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum = zs.iter().map(|v| (v - top).exp()).sum::<f64>();
                let y = self.labels[x] as usize;
                (top, sum, (y != c).then(|| z(x, y, columns[y])))
            })
            .collect();
        let cap = -crate::numerics::PROBABILITY_FLOOR.ln();
        (0..self.grid)
            .map(|column| {
                let total: f64 = others
                    .iter()
                    .enumerate()
                    .map(|(x, &(top, sum, label))| {
                        let zc = z(x, c, column);
                        let m = top.max(zc);
                        let lse = m + (sum * (top - m).exp() + (zc - m).exp()).ln();
                        (lse - label.unwrap_or(zc)).min(cap)
                    })
                    .sum();
                total / n.max(1) as f64
            })
            .collect()
    }

    /// The scores of the probit (λ; λ = 0 is the plain softmax) with class k's variance from
    /// column `columns[k]` and temperature `t`: `softmax_k((f_k/t) / √(1 + λ v_k/t²))`, where
    /// a centred diagonal reads `v_k (1 − 2/K) + Σ_j v_j / K²`.
    fn scores(&self, columns: &[usize], t: f64, lambda: f64, k: usize) -> Result<Scores> {
        score(&self.probs(columns, t, lambda, k), &self.labels, k, 15)
    }

    /// Whether every row's label is the strict argmax of its mean logits.
    fn separated(&self, k: usize) -> bool {
        self.mean
            .chunks_exact(k)
            .zip(&self.labels)
            .all(|(f, &y)| f.iter().enumerate().all(|(c, &v)| c == y as usize || v < f[y as usize]))
    }

    /// Each row's NLL `−ln p_y` (floored like [`score`]'s) or Brier score `Σ_k (p_k − y_k)²`
    /// under [`Validation::scores`]' predictive at `column` for every class.
    fn losses(&self, metric: TuneMetric, column: usize, t: f64, lambda: f64, k: usize) -> Result<Vec<f64>> {
        let probs = self.probs(&vec![column; k], t, lambda, k);
        let rows = probs.chunks_exact(k).zip(&self.labels);
        Ok(match metric {
            TuneMetric::Nll => rows.map(|(p, &y)| crate::numerics::label_nll(p[y as usize])).collect(),
            TuneMetric::Brier => rows
                .map(|(p, &y)| {
                    p.iter()
                        .enumerate()
                        .map(|(c, &v)| (v - f64::from(u8::from(c == y as usize))).powi(2))
                        .sum()
                })
                .collect(),
            TuneMetric::Ece => return Err(Error::invalid("metric", "ECE has no per-row value")),
        })
    }

    /// The predictive's probabilities (n × K) of [`Validation::scores`].
    fn probs(&self, columns: &[usize], t: f64, lambda: f64, k: usize) -> Vec<f64> {
        let mut probs = vec![0.0; self.mean.len()];
        let kf = k as f64;
        let mut v = vec![0.0; k];
        for (x, p) in probs.chunks_exact_mut(k).enumerate() {
            for (c, v) in v.iter_mut().enumerate() {
                *v = self.variances[(x * k + c) * self.grid + columns[c]];
            }
            if self.centre_diagonal {
                let total: f64 = v.iter().sum();
                v.iter_mut()
                    .for_each(|v| *v = *v * (1.0 - 2.0 / kf) + total / (kf * kf));
            }
            for (c, p) in p.iter_mut().enumerate() {
                *p = (self.mean[x * k + c] / t) / (1.0 + lambda * v[c] / (t * t)).sqrt();
            }
            let top = p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            p.iter_mut().for_each(|v| *v = (*v - top).exp());
            let total: f64 = p.iter().sum();
            p.iter_mut().for_each(|v| *v /= total);
        }
        probs
    }
}

/// Whether the mean of the row-by-row excesses `e` is within its standard error:
/// `ē ≤ √(Σ (e − ē)² / (n − 1)) / √n`.
fn within_one_standard_error(excess: &[f64]) -> bool {
    let n = excess.len() as f64;
    let mean = excess.iter().sum::<f64>() / n;
    let variance = excess.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    mean <= (variance / n).sqrt()
}

/// `points` log-spaced values from `lo` to `hi`, both ends exactly.
fn log_points(lo: f64, hi: f64, points: usize) -> Vec<f64> {
    let last = (points - 1).max(1);
    (0..points)
        .map(|i| match i {
            0 => lo,
            i if i == last => hi,
            i => (lo.ln() + (hi.ln() - lo.ln()) * i as f64 / last as f64).exp(),
        })
        .collect()
}

/// `out = a · b` for row-major a (m × n) and b (n × p).
fn product<T: Scalar>(a: &[T], b: &[T], m: usize, n: usize, p: usize) -> Vec<T> {
    let mut out = vec![T::zero(); m * p];
    matmul(
        MatMut::from_row_major_slice_mut(&mut out, m, p),
        Accum::Replace,
        MatRef::from_row_major_slice(a, m, n),
        MatRef::from_row_major_slice(b, n, p),
        T::one(),
        Par::rayon(0),
    );
    crate::device::cpu::settle_vector_state();
    out
}

/// `S[j, g] = 1/(c_g h_j + τ_g)` for the columns `(τ_g, c_g)`, len(h) × len(columns).
fn inverse_shifts<T: Scalar>(h: &[f64], columns: &[(f64, f64)]) -> Vec<T> {
    h.iter()
        .flat_map(|&h| columns.iter().map(move |&(tau, c)| T::from_f64(1.0 / (c * h + tau))))
        .collect()
}

/// Full's logit variances (see [`Spectrum::variances`]), in T. With the common shift left
/// out (`reduced`), the logit weights of input x on the reduced eigenvectors are
/// `B[x, c, ·] = Σ_{b ≥ 1} Q[c, b] Z_b[x, ·]` with `Z_b = Φ W_b` (W_b: W's rows of class
/// direction b) and `Q = I − β u uᵀ`, so `B[x, c] = [c ≥ 1] Z_c[x] − β u_c Σ_{b ≥ 1} u_b Z_b[x]`;
/// these sum to 0 over c (already centred), and the null space adds `‖φ_x‖²/(K τ)` to every
/// class's uncentred variance.
#[allow(clippy::too_many_arguments)]
fn dense_variances<T: Scalar>(
    h: &[f64],
    vectors: &[T],
    reduced: bool,
    phi: &[T],
    r: usize,
    k: usize,
    da: usize,
    centred: bool,
    grid: &[(f64, f64)],
) -> Vec<T> {
    let (p, gn) = (h.len(), grid.len());
    if !reduced {
        // B[x, c, i] = Σ_d φ[x, d] V[c·D_aug + d, i]; Σ_f(τ)[c, c] = Σ_i B² / (h_i + τ).
        let mut b = vec![T::zero(); r * k * p];
        for c in 0..k {
            let block = product(phi, &vectors[c * da * p..(c + 1) * da * p], r, da, p);
            for x in 0..r {
                b[(x * k + c) * p..(x * k + c + 1) * p].copy_from_slice(&block[x * p..(x + 1) * p]);
            }
        }
        if centred {
            let kf = T::from_f64(k as f64);
            for x in 0..r {
                for i in 0..p {
                    let mean = (0..k).map(|c| b[(x * k + c) * p + i]).fold(T::zero(), |s, v| s + v) / kf;
                    (0..k).for_each(|c| b[(x * k + c) * p + i] -= mean);
                }
            }
        }
        b.iter_mut().for_each(|v| *v = *v * *v);
        return product(&b, &inverse_shifts(h, grid), r * k, p, gn);
    }
    let m = p - da;
    let (u, beta) = shift_reflector(k);
    let mut b = vec![T::zero(); r * k * m];
    let mut t = vec![T::zero(); r * m];
    for c in 1..k {
        let z = product(phi, &vectors[(c - 1) * da * m..c * da * m], r, da, m);
        let uc = T::from_f64(u[c]);
        for x in 0..r {
            let zx = &z[x * m..(x + 1) * m];
            b[(x * k + c) * m..(x * k + c + 1) * m].copy_from_slice(zx);
            t[x * m..(x + 1) * m]
                .iter_mut()
                .zip(zx)
                .for_each(|(t, z)| *t += uc * *z);
        }
    }
    for x in 0..r {
        let tx = &t[x * m..(x + 1) * m];
        for (c, &uc) in u.iter().enumerate() {
            let s = T::from_f64(-beta * uc);
            b[(x * k + c) * m..(x * k + c + 1) * m]
                .iter_mut()
                .zip(tx)
                .for_each(|(o, t)| {
                    let v = *o + s * *t;
                    *o = v * v;
                });
        }
    }
    let mut out = product(&b, &inverse_shifts(&h[da..], grid), r * k, m, gn);
    if !centred {
        for x in 0..r {
            let norm = phi[x * da..(x + 1) * da]
                .iter()
                .map(|v| v.as_f64() * v.as_f64())
                .sum::<f64>()
                / k as f64;
            for c in 0..k {
                for (o, &(tau, _)) in out[(x * k + c) * gn..(x * k + c + 1) * gn].iter_mut().zip(grid) {
                    *o += T::from_f64(norm / tau);
                }
            }
        }
    }
    out
}

impl<T: Scalar> Spectrum<T> {
    /// Columns of the logit weights of one input (the length of h, or D_aug for Diag and Kron,
    /// which reduce per class).
    fn width(&self, da: usize) -> usize {
        match self {
            Spectrum::Dense { h, .. } => h.len(),
            _ => da,
        }
    }

    /// The logit variances of r inputs Φ (r × D_aug, row-major) for every column `(τ, c)` of
    /// `grid`, the covariance `(c H + τ I)⁻¹` (c scales the curvature: a new σ of a Gaussian
    /// likelihood), (r·K) × grid: `diag Σ_f`, or `diag CΣ_fC` (`centred`; Diag's are never
    /// centred here, the scores centre them). Full's products run in T, the rest in f64.
    fn variances(&self, phi: &[T], r: usize, k: usize, da: usize, centred: bool, grid: &[(f64, f64)]) -> Vec<f64> {
        let gn = grid.len();
        let kf = k as f64;
        let wide = || phi.iter().map(|x| x.as_f64()).collect::<Vec<f64>>();
        match self {
            Spectrum::Dense { h, vectors, reduced } => {
                dense_variances(h, vectors, *reduced, phi, r, k, da, centred, grid)
                    .into_iter()
                    .map(|x| x.as_f64())
                    .collect()
            }
            Spectrum::Shared { h, vectors } => {
                let phi = wide();
                // Σ_f = v I_K, v = Σ_g (Vᵀφ)_g² / (h_g + τ); centred: v (1 − 1/K).
                let mut z = product(&phi, vectors, r, da, da);
                z.iter_mut().for_each(|v| *v *= *v);
                let v = product(&z, &inverse_shifts(h, grid), r, da, gn);
                let scale = if centred { 1.0 - 1.0 / kf } else { 1.0 };
                let mut out = vec![0.0; r * k * gn];
                for x in 0..r {
                    for c in 0..k {
                        for g in 0..gn {
                            out[(x * k + c) * gn + g] = v[x * gn + g] * scale;
                        }
                    }
                }
                out
            }
            Spectrum::Diagonal { h } => {
                // Σ_f[k, k] = Σ_i φ_i² / (h_ki + τ), per class.
                let phi = wide();
                let squares: Vec<f64> = phi.iter().map(|v| v * v).collect();
                let mut out = vec![0.0; r * k * gn];
                for c in 0..k {
                    let v = product(&squares, &inverse_shifts(&h[c * da..(c + 1) * da], grid), r, da, gn);
                    for x in 0..r {
                        out[(x * k + c) * gn..(x * k + c + 1) * gn].copy_from_slice(&v[x * gn..(x + 1) * gn]);
                    }
                }
                debug_assert!(!centred, "a diagonal Σ_f is centred when scored");
                out
            }
            Spectrum::Kron { h, ua, ug } => {
                // e[x, a] = Σ_j (U_Gᵀφ)_j² / (h_aj + τ); Σ_f[k, k] = Σ_a w[k, a] e[x, a] with
                // w = U_A² (or (C U_A)²).
                let phi = wide();
                let mut z = product(&phi, ug, r, da, da);
                z.iter_mut().for_each(|v| *v *= *v);
                let mut e = vec![0.0; r * k * gn];
                for a in 0..k {
                    let v = product(&z, &inverse_shifts(&h[a * da..(a + 1) * da], grid), r, da, gn);
                    for x in 0..r {
                        e[(x * k + a) * gn..(x * k + a + 1) * gn].copy_from_slice(&v[x * gn..(x + 1) * gn]);
                    }
                }
                let means: Vec<f64> = (0..k)
                    .map(|a| {
                        if centred {
                            (0..k).map(|c| ua[c * k + a]).sum::<f64>() / kf
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let w: Vec<f64> = (0..k * k).map(|i| (ua[i] - means[i % k]).powi(2)).collect();
                let mut out = vec![0.0; r * k * gn];
                for x in 0..r {
                    let block = product(&w, &e[x * k * gn..(x + 1) * k * gn], k, k, gn);
                    out[x * k * gn..(x + 1) * k * gn].copy_from_slice(&block);
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-class NLL of every column equals the full scores' NLL with that class moved
    /// there, including inputs whose moved class dominates the others and labels in and out of
    /// the moved class.
    #[test]
    fn class_nll_matches_the_full_scores() {
        let (n, k, grid) = (40, 5, 7);
        let mut state = 11u64;
        let mut uniform = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let validation = Validation {
            mean: (0..n * k).map(|_| 12.0 * uniform() - 6.0).collect(),
            variances: (0..n * k * grid).map(|_| 30.0 * uniform()).collect(),
            labels: (0..n).map(|x| (x % k) as u32).collect(),
            targets: Vec::new(),
            grid,
            centre_diagonal: false,
        };
        let columns: Vec<usize> = (0..k).map(|c| (3 * c) % grid).collect();
        for (t, lambda) in [(1.0, Link::PROBIT_LAMBDA), (0.4, 2.0)] {
            for c in 0..k {
                let fast = validation.class_nll(&columns, c, t, lambda, k);
                for (column, &got) in fast.iter().enumerate() {
                    let mut moved = columns.clone();
                    moved[c] = column;
                    let want = validation.scores(&moved, t, lambda, k).unwrap().nll;
                    assert!(
                        (got - want).abs() <= 1e-12 * want.max(1.0),
                        "c {c}, column {column}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
