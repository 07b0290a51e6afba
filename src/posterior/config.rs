//! What a posterior is fitted with: its structure, likelihood, curvature, bias and passes.

use super::{positive, structure};
use crate::device::OutputWeighting;
use crate::error::{Error, Result};
use crate::scalar::Scalar;

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

impl Structure {
    /// Every structure, in the order the names list them.
    pub const ALL: [Structure; 5] = [
        Structure::Full,
        Structure::Shared(OutputWeighting::Gaussian),
        Structure::Shared(OutputWeighting::Categorical),
        Structure::Diag,
        Structure::Kron,
    ];

    /// The structure's name, as the command line, Python and posterior files spell it: `full`,
    /// `shared` (unit output weights, the seed paper's form), `shared-categorical`, `diag`,
    /// `kron`.
    pub fn name(self) -> &'static str {
        match self {
            Structure::Full => "full",
            Structure::Shared(OutputWeighting::Gaussian) => "shared",
            Structure::Shared(OutputWeighting::Categorical) => "shared-categorical",
            Structure::Diag => "diag",
            Structure::Kron => "kron",
        }
    }

    /// The structure of a [`Structure::name`], or of `shared-gaussian` (another spelling of
    /// `shared`, which older posterior files hold).
    ///
    /// Errors: `InvalidArgument` for any other name.
    ///
    /// ```
    /// use laplace_update::Structure;
    /// for s in Structure::ALL {
    ///     assert_eq!(Structure::from_name(s.name())?, s);
    /// }
    /// assert_eq!(Structure::from_name("shared-gaussian")?, Structure::from_name("shared")?);
    /// # Ok::<(), laplace_update::Error>(())
    /// ```
    pub fn from_name(name: &str) -> Result<Structure> {
        if name == "shared-gaussian" {
            return Ok(Structure::Shared(OutputWeighting::Gaussian));
        }
        Structure::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Structure::ALL.iter().map(|s| s.name()).collect();
            Error::invalid("structure", format!("unknown `{name}`; one of {}", names.join(", ")))
        })
    }
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

/// Settings of [`Posterior::fit`](super::Posterior::fit).
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

/// How the m new samples are folded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpdateRule {
    /// One sample after another, as in the seed paper's code: each sample is an update of its
    /// own, with the posterior left by the one before as its prior.
    Sequential,
    /// All m samples in one update: one Woodbury step per Newton step.
    #[default]
    Joint,
}

/// Where the curvature of the covariance an update stores is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CurvatureAt {
    /// At the new mean w': `Π' = Π + Σ_j H_j(w')`, the Laplace approximation at the new mode.
    #[default]
    Mode,
    /// At the mean the update started from: `Π' = Π + Σ_j H_j(ŵ)`.
    Start,
}

/// How an update moves the mean.
///
/// Both controls maximise the new samples' log-likelihood under the old posterior as prior,
/// `J(w) = Σ_j log p(y_j | w) − ½ (w − ŵ)ᵀ Π (w − ŵ)`, by Newton steps
/// `d = (Π + Σ_j H_j(w))⁻¹ ∇J(w)` through the structure's own Woodbury or refactor path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepControl {
    /// Newton steps with a backtracking (Armijo) line search, `w ← w + α d` with the largest
    /// `α ∈ {1, ½, ¼, …}` such that `J(w + α d) ≥ J(w) + 10⁻⁴ α λ²`, until the Newton decrement
    /// `λ² = ∇Jᵀ d` satisfies `λ²/2 ≤ tolerance · max(1, |J|)` (the tolerance is at least the
    /// element type's ε) or `max_iterations` steps were taken. `J` never decreases, so a batch
    /// of confidently wrong samples cannot throw the head off. The default.
    Damped {
        /// Cap on the Newton steps (≥ 1).
        max_iterations: usize,
        /// Relative tolerance on the Newton decrement (≥ 0).
        tolerance: f64,
        /// Where the stored covariance's curvature is evaluated.
        curvature_at: CurvatureAt,
    },
    /// The seed paper's rule: `iterations` undamped steps `w ← w + γ d`, the covariance of the
    /// last one kept (its curvature at the iterate that step started from). γ = 1 with one
    /// iteration is one full Newton step; the seed paper tuned γ = 10 for the Sequential rule.
    Newton {
        /// Step scale γ (finite).
        gamma: f64,
        /// Newton steps (≥ 1).
        iterations: usize,
    },
}

impl Default for StepControl {
    /// `Damped { max_iterations: 25, tolerance: 1e-10, curvature_at: Mode }`.
    fn default() -> Self {
        StepControl::Damped {
            max_iterations: Self::DEFAULT_MAX_ITERATIONS,
            tolerance: Self::DEFAULT_TOLERANCE,
            curvature_at: CurvatureAt::Mode,
        }
    }
}

impl StepControl {
    /// The step scale the seed paper tuned for its Sequential rule.
    pub const PAPER_GAMMA: f64 = 10.0;
    /// The default cap on damped steps.
    pub const DEFAULT_MAX_ITERATIONS: usize = 25;
    /// The default relative tolerance on the Newton decrement of damped steps.
    pub const DEFAULT_TOLERANCE: f64 = 1e-10;

    /// The step control that the command line's and Python's options name: `step` `"damped"`
    /// or `"newton"` (left out: `"newton"` when only γ is given, else `"damped"`); γ 1 and one
    /// step for `"newton"` where left out, the cap [`Self::DEFAULT_MAX_ITERATIONS`] for
    /// `"damped"`; `curvature_at` `"mode"` or `"start"`.
    ///
    /// ```
    /// use laplace_update::StepControl;
    /// assert_eq!(StepControl::from_options(None, Some(10.0), None, 1e-10, "mode")?, StepControl::newton(10.0));
    /// assert_eq!(StepControl::from_options(None, None, None, 1e-10, "mode")?, StepControl::default());
    /// assert!(StepControl::from_options(Some("damped"), Some(2.0), None, 1e-10, "mode").is_err());
    /// # Ok::<(), laplace_update::Error>(())
    /// ```
    ///
    /// Errors: `InvalidArgument` for an unknown name, γ with damped steps, or settings
    /// [`StepControl::validate`] refuses.
    pub fn from_options(
        step: Option<&str>,
        gamma: Option<f64>,
        iterations: Option<usize>,
        tolerance: f64,
        curvature_at: &str,
    ) -> Result<Self> {
        let curvature_at = match curvature_at {
            "mode" => CurvatureAt::Mode,
            "start" => CurvatureAt::Start,
            other => {
                return Err(Error::invalid(
                    "curvature_at",
                    format!("`mode` or `start`, got `{other}`"),
                ));
            }
        };
        let control = match (step, gamma) {
            (Some("damped"), Some(_)) => {
                return Err(Error::invalid("gamma", "applies to Newton steps, not to damped ones"));
            }
            (Some("damped"), None) | (None, None) => StepControl::Damped {
                max_iterations: iterations.unwrap_or(Self::DEFAULT_MAX_ITERATIONS),
                tolerance,
                curvature_at,
            },
            (Some("newton"), _) | (None, Some(_)) => StepControl::Newton {
                gamma: gamma.unwrap_or(1.0),
                iterations: iterations.unwrap_or(1),
            },
            (Some(other), _) => {
                return Err(Error::invalid("step", format!("`damped` or `newton`, got `{other}`")));
            }
        };
        control.validate()?;
        Ok(control)
    }

    /// One undamped Newton step of scale γ.
    pub fn newton(gamma: f64) -> Self {
        StepControl::Newton { gamma, iterations: 1 }
    }

    /// Checks the settings: γ finite, at least one step, a finite tolerance ≥ 0.
    ///
    /// Errors: `InvalidArgument`.
    pub fn validate(&self) -> Result<()> {
        match *self {
            StepControl::Damped {
                max_iterations,
                tolerance,
                ..
            } => {
                if max_iterations == 0 {
                    return Err(Error::invalid("iterations", "must be at least 1"));
                }
                if !(tolerance.is_finite() && tolerance >= 0.0) {
                    return Err(Error::invalid(
                        "tolerance",
                        format!("must be finite and >= 0, got {tolerance}"),
                    ));
                }
            }
            StepControl::Newton { gamma, iterations } => {
                if !gamma.is_finite() {
                    return Err(Error::invalid("gamma", format!("must be finite, got {gamma}")));
                }
                if iterations == 0 {
                    return Err(Error::invalid("iterations", "must be at least 1"));
                }
            }
        }
        Ok(())
    }
}

/// Settings of [`Posterior::update`](super::Posterior::update).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateConfig {
    /// Update rule.
    pub rule: UpdateRule,
    /// How the mean moves: damped Newton steps to the mode (the default), or fixed-scale steps.
    pub step: StepControl,
    /// Forgetting ρ ∈ (0, 1], for streams that drift; 1 (the default) forgets nothing. Before
    /// the new samples are folded in, the data part of the precision is scaled by ρ:
    /// `Π ← ρ(Π − Π₀) + Π₀` with Π₀ the prior, so that after batches B_1..B_t the precision is
    /// `Π₀ + Σ_s ρ^{t−s} H(B_s)`. Exact for every structure; it costs one refactor of Σ (Full:
    /// O(P³), Shared: O(D³), Diag and Kron: O(K·D)) on top of the update. [`Posterior::unlearn`](super::Posterior::unlearn)
    /// removes samples at full weight, so unlearn only samples added since the last forgetting.
    pub forgetting: f64,
}

impl Default for UpdateConfig {
    /// Joint rule, damped steps to the mode, no forgetting.
    fn default() -> Self {
        UpdateConfig {
            rule: UpdateRule::Joint,
            step: StepControl::default(),
            forgetting: 1.0,
        }
    }
}

impl UpdateConfig {
    /// The default settings with one undamped Newton step of scale γ (the seed paper's rule).
    pub fn newton(gamma: f64) -> Self {
        UpdateConfig {
            step: StepControl::newton(gamma),
            ..Default::default()
        }
    }

    /// Checks the settings: the step control's, and forgetting in (0, 1].
    ///
    /// Errors: `InvalidArgument`.
    pub fn validate(&self) -> Result<()> {
        self.step.validate()?;
        let rho = self.forgetting;
        if !(rho > 0.0 && rho <= 1.0) {
            return Err(Error::invalid("forgetting", format!("must be in (0, 1], got {rho}")));
        }
        Ok(())
    }
}
