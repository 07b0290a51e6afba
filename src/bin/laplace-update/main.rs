//! `laplace-update`: fit, update and query last-layer Laplace posteriors from `.npy` and
//! `.safetensors` files, and run the demo.

mod al;
mod demo;
mod digits;
mod evaluate;
mod figure;
mod inputs;
mod profile;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use laplace_update::io::{PosteriorFile, load_accumulator, load_posterior, peek_posterior, write_npy};
use laplace_update::{
    AnyDevice, BiasMode, Curvature, CurvatureAccumulator, DType, Device, Error, FitConfig, HeadTargets, HostMatrix,
    Likelihood, Link, OutputWeighting, Posterior, PriorShape, Result, Scalar, Structure, Targets, UnlearnConfig,
    UpdateConfig, UpdateRule, fit_map_head,
};
use laplace_update::{Calibration, StepControl, TuneConfig, TuneMetric, TuneSelection, UpdateReport};

#[derive(Parser)]
#[command(
    name = "laplace-update",
    version,
    about = "Closed-form Bayesian updates of a network's last layer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Cap this process's memory (e.g. 1500M, 2G). An operation that would exceed the cap, the
    /// memory cgroup's limit or the machine's available memory stops with an error before it
    /// allocates, instead of being killed.
    #[arg(long, global = true, value_name = "BYTES", value_parser = laplace_update::memory::parse_bytes)]
    max_memory: Option<u64>,
    /// Also say which device was chosen and why GPU backends were passed over (on stderr).
    #[arg(short, long, global = true)]
    verbose: bool,
}

/// Whether `--verbose` was given.
static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Subcommand)]
enum Command {
    /// Fit a posterior from features, labels and (optionally) a head; without --weights the
    /// head is fitted first (MAP).
    Fit(FitArgs),
    /// Map step of a sharded fit: one shard's curvature around a given head, saved as a
    /// partial accumulator for `merge`.
    Accumulate(AccumulateArgs),
    /// Reduce step of a sharded fit: add the accumulators of `accumulate` (taken around the
    /// same head) and finish them into a posterior, or, with --partial, into one accumulator.
    Merge(MergeArgs),
    /// Fold new labelled samples into a posterior.
    Update(UpdateArgs),
    /// Remove samples that a Joint update added (its exact inverse).
    Unlearn(UnlearnArgs),
    /// Choose the prior precision (and temperature, and link) on validation data.
    Tune(TuneCommandArgs),
    /// Predict class probabilities (and logit variances) at new features.
    Predict(PredictArgs),
    /// Score the predictive on labelled data beside the network's own softmax: accuracy,
    /// NLL, ECE, Brier, confidence, and a reliability diagram.
    Evaluate(evaluate::EvaluateArgs),
    /// Describe a posterior file.
    Info {
        /// Posterior file.
        #[arg(long)]
        posterior: PathBuf,
    },
    /// List the compute backends and why any is unavailable.
    Devices,
    /// Stream labelled digits into posteriors and compare update rules with retraining.
    Demo(demo::DemoArgs),
    /// Simulate pool-based active learning and draw learning curves.
    Al(al::AlArgs),
    /// Time every kernel: throughput and fraction of the device's measured peak.
    Profile(profile::ProfileArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum StructureArg {
    /// Exact softmax GGN over all K·D weights.
    Full,
    /// One D × D covariance for all classes, unit output weights (the seed paper's form).
    #[value(alias = "shared-gaussian")]
    Shared,
    /// Shared with output weights p_max(1 − p_max).
    SharedCategorical,
    /// The diagonal of the curvature, K·D values.
    Diag,
    /// KFAC: Kronecker factors K × K and D × D.
    Kron,
}

#[derive(Clone, Copy, ValueEnum)]
enum CurvatureArg {
    /// Generalised Gauss–Newton (the Fisher for softmax).
    Ggn,
    /// Empirical Fisher from the labels.
    Ef,
    /// Monte Carlo Fisher from labels drawn from the model.
    Mc,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LikelihoodArg {
    /// Softmax over K classes; labels are integers.
    Classification,
    /// Gaussian over K outputs; labels are an N × K array of reals.
    Regression,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum DeviceArg {
    /// The best available backend.
    Auto,
    /// The faer CPU backend.
    Cpu,
    /// NVIDIA GPUs through CUDA.
    Cuda,
    /// Vulkan, Metal or DX12 GPUs through wgpu.
    Wgpu,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DTypeArg {
    F32,
    F64,
}

/// What the posterior models: shared by `fit` and `accumulate`.
#[derive(Args)]
struct ModelArgs {
    /// Hold the head's bias fixed (added to the logits). By default the bias is a weight of the
    /// posterior, as in laplace-torch's last-layer Laplace: features are augmented to [φ, 1].
    #[arg(long)]
    fixed_bias: bool,
    /// Covariance structure.
    #[arg(long, value_enum, default_value = "full")]
    structure: StructureArg,
    /// Curvature approximation.
    #[arg(long, value_enum, default_value = "ggn")]
    curvature: CurvatureArg,
    /// Label draws per sample of the Monte Carlo Fisher (with --curvature mc).
    #[arg(long, default_value_t = 10)]
    mc_samples: usize,
    /// Seed of the Monte Carlo Fisher's draws (with --curvature mc).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Likelihood of the labels.
    #[arg(long, value_enum, default_value = "classification")]
    likelihood: LikelihoodArg,
    /// Observation noise σ of the regression likelihood.
    #[arg(long, default_value_t = 1.0)]
    sigma_noise: f64,
}

impl ModelArgs {
    fn likelihood(&self) -> Likelihood {
        match self.likelihood {
            LikelihoodArg::Classification => Likelihood::Classification,
            LikelihoodArg::Regression => Likelihood::Regression {
                sigma_noise: self.sigma_noise,
            },
        }
    }

    fn regression(&self) -> bool {
        self.likelihood == LikelihoodArg::Regression
    }

    /// The fit's settings with prior precision τ, validated.
    fn config(&self, prior_precision: f64) -> Result<FitConfig> {
        let config = FitConfig {
            structure: match self.structure {
                StructureArg::Full => Structure::Full,
                StructureArg::Shared => Structure::Shared(OutputWeighting::Gaussian),
                StructureArg::SharedCategorical => Structure::Shared(OutputWeighting::Categorical),
                StructureArg::Diag => Structure::Diag,
                StructureArg::Kron => Structure::Kron,
            },
            likelihood: self.likelihood(),
            curvature: match self.curvature {
                CurvatureArg::Ggn => Curvature::Ggn,
                CurvatureArg::Ef => Curvature::EmpiricalFisher,
                CurvatureArg::Mc => Curvature::MonteCarloFisher {
                    samples: self.mc_samples,
                    seed: self.seed,
                },
            },
            prior_precision,
            bias: if self.fixed_bias {
                BiasMode::Fixed
            } else {
                BiasMode::InPosterior
            },
            ..Default::default()
        };
        config.validate()?;
        Ok(config)
    }
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum OptimizePriorArg {
    /// Maximise the Laplace marginal likelihood of the training data.
    Marglik,
    /// Minimise a metric of the predictive on validation data.
    Val,
}

#[derive(Clone, Copy, ValueEnum)]
enum MetricArg {
    Nll,
    Brier,
    Ece,
}

/// Validation tuning (`fit --optimize-prior val`, `tune`).
#[derive(Args)]
struct TuneArgs {
    /// Validation features, n × D.
    #[arg(long)]
    val_features: Option<String>,
    /// Validation labels, n integers in 0..K (n × K reals for a regression posterior).
    #[arg(long)]
    val_labels: Option<String>,
    /// Metric minimised on the validation data.
    #[arg(long, value_enum, default_value = "nll")]
    val_metric: MetricArg,
    /// How τ is picked: the largest within one standard error of the best (nearest the
    /// network), or the best; `auto`, the first with --tune-temperature, else the second.
    #[arg(long, value_enum, default_value = "auto")]
    val_selection: SelectionArg,
    /// Tune the logit temperature jointly with τ.
    #[arg(long)]
    tune_temperature: bool,
    /// Keep the posterior's τ (it also sets how far updates move the head): choose only the
    /// temperature and the link.
    #[arg(long)]
    keep_prior: bool,
    /// Tune the probit's λ (a scale of the logit variances) jointly.
    #[arg(long)]
    tune_lambda: bool,
    /// Then compare the probit, centred probit, Monte Carlo and bridge links there and keep
    /// the best.
    #[arg(long)]
    tune_link: bool,
    /// The link τ is tuned for.
    #[arg(long, value_enum, default_value = "centred-probit")]
    tune_for: TuneLinkArg,
    /// Then choose one τ per class (Diag), the temperature and λ held.
    #[arg(long)]
    tune_per_class: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum SelectionArg {
    Auto,
    OneSe,
    Best,
}

#[derive(Clone, Copy, ValueEnum)]
enum TuneLinkArg {
    Probit,
    CentredProbit,
    None,
}

impl TuneArgs {
    fn config(&self) -> TuneConfig {
        let lambda = Link::PROBIT_LAMBDA;
        TuneConfig {
            metric: match self.val_metric {
                MetricArg::Nll => TuneMetric::Nll,
                MetricArg::Brier => TuneMetric::Brier,
                MetricArg::Ece => TuneMetric::Ece,
            },
            link: match self.tune_for {
                TuneLinkArg::Probit => Link::Probit { lambda },
                TuneLinkArg::CentredProbit => Link::CentredProbit { lambda },
                TuneLinkArg::None => Link::None,
            },
            selection: match self.val_selection {
                SelectionArg::Auto => TuneSelection::Auto,
                SelectionArg::OneSe => TuneSelection::OneStandardError,
                SelectionArg::Best => TuneSelection::Best,
            },
            prior: !self.keep_prior,
            temperature: self.tune_temperature,
            lambda: self.tune_lambda,
            choose_link: self.tune_link,
            per_class: self.tune_per_class,
            ..Default::default()
        }
    }

    /// The validation files, both required.
    fn files(&self) -> Result<(&str, &str)> {
        match (&self.val_features, &self.val_labels) {
            (Some(x), Some(y)) => Ok((x, y)),
            _ => Err(Error::invalid(
                "val-features",
                "validation tuning needs --val-features and --val-labels",
            )),
        }
    }

    /// Tunes `post` on the validation files and prints the choice.
    fn run<D: Device, T: Scalar>(&self, post: &mut Posterior<D, T>) -> Result<()> {
        let (x, y) = self.files()?;
        let (phi, n, d) = inputs::take(x)?.into_matrix::<T>()?;
        let labels = targets_of::<T>(y, matches!(post.likelihood(), Likelihood::Regression { .. }))?;
        let started = std::time::Instant::now();
        let report = labels.with(|y| post.tune_prior_precision(HostMatrix::new(&phi, n, d)?, y, &self.config()))?;
        println!(
            "prior precision τ = {:.6e}, temperature {:.4}, link {}: validation {} {:.4} on {n} samples ({:.2} ms)",
            report.prior_precision,
            report.temperature,
            report.link.name(),
            match self.val_metric {
                MetricArg::Nll => "NLL",
                MetricArg::Brier => "Brier",
                MetricArg::Ece => "ECE",
            },
            report.score,
            started.elapsed().as_secs_f64() * 1e3
        );
        if let Some(sigma) = report.sigma_noise {
            println!("  noise σ = {sigma:.6e}");
        }
        if let Some(taus) = &report.class_prior_precision {
            let shown: Vec<String> = taus.iter().map(|t| format!("{t:.3e}")).collect();
            println!("  τ per class = [{}]", shown.join(", "));
        }
        for (link, score) in &report.links {
            println!("  link {:<15} {score:.4}", link.name());
        }
        Ok(())
    }
}

#[derive(Args)]
struct TuneCommandArgs {
    /// Posterior file to tune.
    #[arg(long)]
    posterior: PathBuf,
    #[command(flatten)]
    tune: TuneArgs,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Output posterior file; may be the input file.
    #[arg(long)]
    out: PathBuf,
    /// Seconds to wait for another process writing the output file to finish.
    #[arg(long, default_value = "60", value_name = "SECONDS", value_parser = seconds)]
    lock_timeout: std::time::Duration,
}

#[derive(Args)]
struct FitArgs {
    /// Features Φ, N × D (.npy or FILE.safetensors:TENSOR).
    #[arg(long)]
    features: String,
    /// Labels, N integers in 0..K (classification) or N × K reals (regression).
    #[arg(long)]
    labels: String,
    /// Head W, K × D; fitted by MAP when absent.
    #[arg(long)]
    weights: Option<String>,
    /// Bias b, length K (zero when absent; fitted with the head when --weights is absent).
    #[arg(long)]
    bias_vector: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
    /// Number of classes K when --weights is absent (default: largest label + 1).
    #[arg(long)]
    classes: Option<usize>,
    /// Prior precision τ.
    #[arg(long, default_value_t = 1.0, conflicts_with = "optimize_prior")]
    prior_precision: f64,
    /// Choose τ: by maximising the Laplace marginal likelihood (`marglik`, the default), or on
    /// validation data (`val`, with --val-features and --val-labels). The head's MAP, when
    /// fitted here, uses τ = 1.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "marglik")]
    optimize_prior: Option<OptimizePriorArg>,
    /// Regression: choose σ jointly with τ by the marginal likelihood (with --optimize-prior
    /// marglik; validation tuning always chooses both).
    #[arg(long, requires = "optimize_prior")]
    optimize_noise: bool,
    #[command(flatten)]
    tune: TuneArgs,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Element type of the posterior.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DTypeArg,
    /// Output posterior file (.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Seconds to wait for another process writing the output file to finish.
    #[arg(long, default_value = "60", value_name = "SECONDS", value_parser = seconds)]
    lock_timeout: std::time::Duration,
}

#[derive(Args)]
struct AccumulateArgs {
    /// This shard's features Φ, n × D (.npy or FILE.safetensors:TENSOR).
    #[arg(long)]
    features: String,
    /// Their labels, n integers in 0..K (classification) or n × K reals (regression).
    #[arg(long)]
    labels: String,
    /// The head W, K × D, that every shard shares.
    #[arg(long)]
    weights: String,
    /// The bias b, length K (zero when absent), that every shard shares.
    #[arg(long)]
    bias_vector: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Element type of the sums.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DTypeArg,
    /// Output accumulator file (.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Seconds to wait for another process writing the output file to finish.
    #[arg(long, default_value = "60", value_name = "SECONDS", value_parser = seconds)]
    lock_timeout: std::time::Duration,
}

#[derive(Args)]
struct MergeArgs {
    /// Accumulator files written by `accumulate` (or `merge --partial`), in any order.
    #[arg(num_args = 1.., required = true, value_name = "ACC")]
    inputs: Vec<PathBuf>,
    /// Prior precision τ of the finished posterior.
    #[arg(long, default_value_t = 1.0, conflicts_with_all = ["optimize_prior", "partial"])]
    prior_precision: f64,
    /// Choose τ by maximising the Laplace marginal likelihood.
    #[arg(long, conflicts_with = "partial")]
    optimize_prior: bool,
    /// Write the merged sums as one accumulator (a step of a tree reduction) instead of a
    /// posterior.
    #[arg(long)]
    partial: bool,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Output file: a posterior, or an accumulator with --partial.
    #[arg(long)]
    out: PathBuf,
    /// Seconds to wait for another process writing the output file to finish.
    #[arg(long, default_value = "60", value_name = "SECONDS", value_parser = seconds)]
    lock_timeout: std::time::Duration,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum StepArg {
    /// Newton steps with a backtracking line search, to the new mode.
    Damped,
    /// Undamped steps of scale γ (the seed paper's rule).
    Newton,
}

#[derive(Clone, Copy, ValueEnum)]
enum CurvatureAtArg {
    /// The Laplace approximation at the new mode.
    Mode,
    /// The curvature at the mean the update started from.
    Start,
}

/// How an update moves the mean (and how an update to unlearn moved it).
#[derive(Args)]
struct StepArgs {
    /// Step control: `damped` (the default) takes Newton steps with a line search to the mode
    /// of the new samples' likelihood under the old posterior; `newton` takes undamped steps of
    /// scale γ. Giving `--gamma` alone chooses `newton`.
    #[arg(long, value_enum)]
    step: Option<StepArg>,
    /// Step scale γ of `--step newton` (the seed paper tuned 10 for the sequential rule).
    #[arg(long)]
    gamma: Option<f64>,
    /// Newton steps: the cap for `damped` (default 25), the count for `newton` (default 1).
    #[arg(long)]
    iterations: Option<usize>,
    /// `damped`: stop when half the Newton decrement is at most this times max(1, |J|).
    #[arg(long, default_value_t = StepControl::DEFAULT_TOLERANCE)]
    tolerance: f64,
    /// `damped`: where the stored covariance's curvature is evaluated.
    #[arg(long, value_enum, default_value = "mode")]
    curvature_at: CurvatureAtArg,
}

impl StepArgs {
    /// The step control these flags name.
    fn control(&self) -> Result<StepControl> {
        // The flags' own spellings, which are the library's option names.
        let name = |v: Option<clap::builder::PossibleValue>| v.map(|p| p.get_name().to_owned());
        let step = name(self.step.and_then(|s| s.to_possible_value()));
        let at = name(self.curvature_at.to_possible_value()).unwrap_or_default();
        StepControl::from_options(step.as_deref(), self.gamma, self.iterations, self.tolerance, &at)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum RuleArg {
    Joint,
    Sequential,
}

/// A posterior file, a batch of labelled samples, and where the result goes.
#[derive(Args)]
struct BatchArgs {
    /// Posterior file to change.
    #[arg(long)]
    posterior: PathBuf,
    /// The samples' features, m × D.
    #[arg(long)]
    features: String,
    /// Their labels: m integers, or m × K reals for a regression posterior.
    #[arg(long)]
    labels: String,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Output posterior file; may be the input file.
    #[arg(long)]
    out: PathBuf,
    /// Seconds to wait for another process writing the output file to finish.
    #[arg(long, default_value = "60", value_name = "SECONDS", value_parser = seconds)]
    lock_timeout: std::time::Duration,
}

#[derive(Args)]
struct UpdateArgs {
    #[command(flatten)]
    batch: BatchArgs,
    #[command(flatten)]
    step: StepArgs,
    /// Update rule.
    #[arg(long, value_enum, default_value = "joint")]
    rule: RuleArg,
    /// Forgetting ρ in (0, 1] for drifting streams: the data part of the precision is scaled
    /// by ρ before the batch is folded in (1 forgets nothing).
    #[arg(long, default_value_t = 1.0, value_parser = forgetting_factor)]
    forgetting: f64,
    /// Benchmarking: run the update this many times (all but the last on copies) and report
    /// the median time; the result written is the same.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

#[derive(Args)]
struct UnlearnArgs {
    #[command(flatten)]
    batch: BatchArgs,
    #[command(flatten)]
    step: StepArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LinkArg {
    Probit,
    CentredProbit,
    Mc,
    Bridge,
    None,
}

/// How a command turns logit uncertainty into probabilities (`predict`, `evaluate`).
#[derive(Args)]
pub(crate) struct LinkArgs {
    /// How logit uncertainty becomes probabilities (default: the posterior's own, as tuned).
    #[arg(long, value_enum)]
    link: Option<LinkArg>,
    /// Monte Carlo samples (with --link mc).
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// Monte Carlo seed (with --link mc).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Mean-field factor λ of the probit links (default: the posterior's, or π/8).
    #[arg(long, visible_alias = "probit-lambda")]
    mean_field_factor: Option<f64>,
    /// Logit temperature T (default: the posterior's, as tuned).
    #[arg(long)]
    temperature: Option<f64>,
}

impl LinkArgs {
    /// The link asked for, else `stored` (the posterior's), with the λ asked for.
    fn link(&self, stored: Link) -> Result<Link> {
        let lambda = self
            .mean_field_factor
            .or(stored.lambda())
            .unwrap_or(Link::PROBIT_LAMBDA);
        let name = match self.link {
            Some(LinkArg::Probit) => "probit",
            Some(LinkArg::CentredProbit) => "centred-probit",
            Some(LinkArg::Mc) => "mc",
            Some(LinkArg::Bridge) => "bridge",
            Some(LinkArg::None) => "none",
            None => stored.name(),
        };
        match (self.link, stored) {
            (None, Link::MonteCarlo { samples, seed }) => Link::from_name(name, lambda, samples, seed),
            _ => Link::from_name(name, lambda, self.samples, self.seed),
        }
    }

    /// Checks the settings before any file is read or device probed.
    fn validate(&self) -> Result<()> {
        self.link(Link::default())?;
        if let Some(temperature) = self.temperature {
            Calibration {
                temperature,
                link: Link::default(),
            }
            .validate()?;
        }
        Ok(())
    }

    /// The link to predict with, and `post` at the temperature asked for.
    fn apply<D: Device, T: Scalar>(&self, post: &mut Posterior<D, T>) -> Result<Link> {
        if let Some(temperature) = self.temperature {
            post.set_calibration(Calibration {
                temperature,
                ..post.calibration()
            })?;
        }
        self.link(post.calibration().link)
    }
}

#[derive(Args)]
struct PredictArgs {
    /// Posterior file.
    #[arg(long)]
    posterior: PathBuf,
    /// Features, n × D.
    #[arg(long)]
    features: String,
    #[command(flatten)]
    link: LinkArgs,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Output probabilities, n × K (.npy); the predictive mean for regression.
    #[arg(long)]
    out: PathBuf,
    /// Also write the logit variances Σ_f[k, k], n × K (.npy).
    #[arg(long)]
    logit_var: Option<PathBuf>,
}

fn main() -> ExitCode {
    quiet_vulkan_loader();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help and --version
        Err(e) => {
            // One line: clap's first, without its usage block.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("error: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    laplace_update::memory::set_limit(cli.max_memory);
    VERBOSE.store(cli.verbose, std::sync::atomic::Ordering::Relaxed);
    signals::install();
    let result = match cli.command {
        Command::Fit(args) => fit(&args),
        Command::Accumulate(args) => accumulate(&args),
        Command::Merge(args) => merge(&args),
        Command::Update(args) => update(&args),
        Command::Unlearn(args) => unlearn(&args),
        Command::Tune(args) => tune(&args),
        Command::Predict(args) => predict(&args),
        Command::Evaluate(args) => evaluate(&args),
        Command::Info { posterior } => info(&posterior),
        Command::Devices => devices(),
        Command::Demo(args) => demo::run(&args),
        Command::Al(args) => al::run(&args),
        Command::Profile(args) => profile::run(&args),
    };
    match (result, signals::received()) {
        (Ok(()), None) => ExitCode::SUCCESS,
        (Ok(()), Some((name, code))) => {
            eprintln!("error: interrupted by {name} after the command finished; its output is complete");
            ExitCode::from(code)
        }
        (Err(Error::Interrupted), received) => {
            let (name, code) = received.unwrap_or(("a signal", 130));
            eprintln!("error: interrupted by {name}; nothing was written");
            ExitCode::from(code)
        }
        (Err(e), _) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT and SIGTERM, caught so that a long command stops at its next pass with one line and
/// exit 130 or 143, its output file untouched (or complete, when the signal came during the
/// write), instead of dying part-way. A second signal of the same kind exits at once.
mod signals {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

    static INTERRUPT: AtomicBool = AtomicBool::new(false);
    static TERMINATE: AtomicBool = AtomicBool::new(false);

    /// Installs the actions, and the library's interrupt hook reading them.
    pub fn install() {
        use signal_hook::consts::{SIGINT, SIGTERM};
        for (signal, flag, code) in [(SIGINT, &INTERRUPT, 130), (SIGTERM, &TERMINATE, 143)] {
            // SAFETY: the action only swaps an atomic and calls `_exit`, both async-signal-safe.
            let _ = unsafe {
                signal_hook::low_level::register(signal, move || {
                    if flag.swap(true, SeqCst) {
                        signal_hook::low_level::exit(code);
                    }
                })
            };
        }
        laplace_update::interrupt::set_hook(Some(|| INTERRUPT.load(SeqCst) || TERMINATE.load(SeqCst)));
    }

    /// The signal received, with its exit status, if any.
    pub fn received() -> Option<(&'static str, u8)> {
        match (INTERRUPT.load(SeqCst), TERMINATE.load(SeqCst)) {
            (true, _) => Some(("SIGINT", 130)),
            (_, true) => Some(("SIGTERM", 143)),
            _ => None,
        }
    }
}

/// Keeps window-system chatter off the terminal. Mesa's implicit Vulkan layer
/// `VK_LAYER_MESA_device_select` only reorders GPUs for a desktop session, and to do so connects
/// to Wayland, whose client library prints `error: XDG_RUNTIME_DIR is invalid or not set` twice
/// where that variable is unset (containers, CI runners). The wgpu backend picks its adapter by
/// type and name itself, so the layer is switched off (`NODEVICE_SELECT=1`) unless the user set
/// that variable, or asked the layer to choose with `MESA_VK_DEVICE_SELECT`.
fn quiet_vulkan_loader() {
    if cfg!(feature = "wgpu")
        && std::env::var_os("NODEVICE_SELECT").is_none()
        && std::env::var_os("MESA_VK_DEVICE_SELECT").is_none()
    {
        // SAFETY: called first in `main`, before this program starts any thread, so no other
        // thread reads or writes the environment at the same time.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

/// The device for `choice`. `auto` takes the best working backend (CUDA, a hardware wgpu
/// adapter, the CPU); with `--verbose` it says on stderr which, and why a GPU backend that
/// this build has was passed over.
pub(crate) fn select_device(choice: DeviceArg) -> Result<AnyDevice> {
    match choice {
        DeviceArg::Auto => {
            let auto = AnyDevice::auto()?;
            if !VERBOSE.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(auto.device);
            }
            let reasons: Vec<String> = auto
                .passed_over
                .iter()
                .filter(|e| !matches!(e, Error::BackendUnavailable { reason, .. } if reason.starts_with("this build has no")))
                .map(|e| e.to_string())
                .collect();
            match reasons.is_empty() {
                true => eprintln!("note: using {}", auto.device.name()),
                false => eprintln!(
                    "note: using {}; passed over: {}",
                    auto.device.name(),
                    reasons.join("; ")
                ),
            }
            Ok(auto.device)
        }
        DeviceArg::Cpu => AnyDevice::select("cpu"),
        DeviceArg::Cuda => AnyDevice::select("cuda"),
        DeviceArg::Wgpu => AnyDevice::select("wgpu"),
    }
}

/// Runs the f32 or the f64 variant of a command, as the posterior file's dtype says; the
/// file is read before any device is probed.
macro_rules! on_posterior {
    ($choice:expr, $posterior:expr, $run:ident, $args:expr) => {{
        let dtype = peek_posterior($posterior)?.dtype;
        let device = select_device($choice)?;
        laplace_update::with_device!(&device, |d| match dtype {
            DType::F32 => $run::<_, f32>(d, $args),
            DType::F64 => $run::<_, f64>(d, $args),
        })
    }};
}

/// Checks features (and their labels) against the posterior file they go with, before any
/// device: D, and the labels' kind and length.
fn check_against(posterior: &Path, features: &str, labels: Option<&str>) -> Result<()> {
    let header = peek_posterior(posterior)?;
    let regression = matches!(header.likelihood, Likelihood::Regression { .. });
    inputs::batch(features, labels, regression, Some(header.features))?;
    Ok(())
}

fn update(args: &UpdateArgs) -> Result<()> {
    args.config()?;
    check_against(&args.batch.posterior, &args.batch.features, Some(&args.batch.labels))?;
    on_posterior!(args.batch.device, &args.batch.posterior, update_as, args)
}

fn unlearn(args: &UnlearnArgs) -> Result<()> {
    args.config()?;
    check_against(&args.batch.posterior, &args.batch.features, Some(&args.batch.labels))?;
    on_posterior!(args.batch.device, &args.batch.posterior, unlearn_as, args)
}

fn predict(args: &PredictArgs) -> Result<()> {
    args.link.validate()?;
    check_against(&args.posterior, &args.features, None)?;
    on_posterior!(args.device, &args.posterior, predict_as, args)
}

fn evaluate(args: &evaluate::EvaluateArgs) -> Result<()> {
    args.link.validate()?;
    check_against(&args.posterior, &args.features, Some(&args.labels))?;
    on_posterior!(args.device, &args.posterior, evaluate_as, args)
}

fn evaluate_as<D: Device, T: Scalar>(device: &D, args: &evaluate::EvaluateArgs) -> Result<()> {
    evaluate::run::<D, T>(device, args)
}

fn tune(args: &TuneCommandArgs) -> Result<()> {
    let (x, y) = args.tune.files()?;
    check_against(&args.posterior, x, Some(y))?;
    on_posterior!(args.device, &args.posterior, tune_as, args)
}

fn tune_as<D: Device, T: Scalar>(device: &D, args: &TuneCommandArgs) -> Result<()> {
    let file = PosteriorFile::lock(&args.out, args.lock_timeout)?;
    let mut post: Posterior<D, T> = if same_file(&args.posterior, &args.out) {
        file.load(device)?
    } else {
        load_posterior(device, &args.posterior)?
    };
    args.tune.run(&mut post)?;
    file.commit(&post)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

fn devices() -> Result<()> {
    for backend in ["cpu", "cuda", "wgpu"] {
        match AnyDevice::select(backend) {
            Ok(device) => println!("{backend:<5} available    {}", device.name()),
            Err(e) => println!("{backend:<5} unavailable  {e}"),
        }
    }
    Ok(())
}

fn fit(args: &FitArgs) -> Result<()> {
    let regression = args.model.regression();
    let (_, d) = inputs::batch(&args.features, Some(&args.labels), regression, None)?;
    if let Some(weights) = &args.weights {
        inputs::head(weights, args.bias_vector.as_deref(), d)?;
    }
    if args.optimize_prior == Some(OptimizePriorArg::Val) {
        let (x, y) = args.tune.files()?;
        inputs::batch(x, Some(y), regression, Some(d))?;
    }
    let prior_precision = if args.optimize_prior.is_some() {
        1.0
    } else {
        args.prior_precision
    };
    let config = args.model.config(prior_precision)?;
    let device = select_device(args.device)?;
    laplace_update::with_device!(&device, |d| match args.dtype {
        DTypeArg::F32 => fit_as::<_, f32>(d, args, &config),
        DTypeArg::F64 => fit_as::<_, f64>(d, args, &config),
    })
}

fn accumulate(args: &AccumulateArgs) -> Result<()> {
    let (_, d) = inputs::batch(&args.features, Some(&args.labels), args.model.regression(), None)?;
    inputs::head(&args.weights, args.bias_vector.as_deref(), d)?;
    let config = args.model.config(1.0)?;
    let device = select_device(args.device)?;
    laplace_update::with_device!(&device, |d| match args.dtype {
        DTypeArg::F32 => accumulate_as::<_, f32>(d, args, &config),
        DTypeArg::F64 => accumulate_as::<_, f64>(d, args, &config),
    })
}

fn merge(args: &MergeArgs) -> Result<()> {
    if !(args.prior_precision.is_finite() && args.prior_precision > 0.0) {
        return Err(Error::invalid(
            "prior_precision",
            format!("must be finite and > 0, got {}", args.prior_precision),
        ));
    }
    let dtype = peek_posterior(&args.inputs[0])?.dtype;
    for path in &args.inputs[1..] {
        peek_posterior(path)?;
    }
    let device = select_device(args.device)?;
    laplace_update::with_device!(&device, |d| match dtype {
        DType::F32 => merge_as::<_, f32>(d, args),
        DType::F64 => merge_as::<_, f64>(d, args),
    })
}

/// Reads a head `W` (K × D) and an optional bias (length K), whose shapes [`inputs::head`]
/// checked before the device; returns them with K.
fn read_head<T: Scalar>(weights: &str, bias: Option<&str>) -> Result<(Vec<T>, Option<Vec<T>>, usize)> {
    let (w, k, _) = inputs::array(weights)?.to_matrix::<T>()?;
    let bias = bias.map(|b| inputs::array(b)?.to_vector::<T>()).transpose()?;
    Ok((w, bias, k))
}

/// A batch's labels as the command line reads them.
enum CliTargets<T> {
    /// Class labels.
    Labels(Vec<i64>),
    /// Regression targets, rows × cols.
    Values(Vec<T>, usize, usize),
}

impl<T: Scalar> CliTargets<T> {
    /// Runs `f` with the targets in the form the library takes.
    fn with<R>(&self, f: impl FnOnce(&dyn Targets<T>) -> Result<R>) -> Result<R> {
        match self {
            CliTargets::Labels(y) => f(y),
            CliTargets::Values(v, rows, cols) => f(&HostMatrix::new(v, *rows, *cols)?),
        }
    }
}

fn targets_of<T: Scalar>(spec: &str, regression: bool) -> Result<CliTargets<T>> {
    let array = inputs::array(spec)?;
    if regression {
        let (v, rows, cols) = array.to_matrix::<T>()?;
        Ok(CliTargets::Values(v, rows, cols))
    } else {
        Ok(CliTargets::Labels(array.to_labels()?))
    }
}

fn fit_as<D: Device, T: Scalar>(device: &D, args: &FitArgs, config: &FitConfig) -> Result<()> {
    let (phi, n, d) = inputs::take(&args.features)?.into_matrix::<T>()?;
    let targets = targets_of::<T>(&args.labels, args.model.regression())?;
    let features = HostMatrix::new(&phi, n, d)?;
    let (likelihood, prior_precision) = (config.likelihood, config.prior_precision);
    let (head, bias, classes) = match &args.weights {
        Some(spec) => read_head(spec, args.bias_vector.as_deref())?,
        None => {
            let sigma = match likelihood {
                Likelihood::Regression { sigma_noise } => sigma_noise,
                Likelihood::Classification => 1.0,
            };
            let head_targets = match &targets {
                CliTargets::Labels(labels) => HeadTargets::Labels(labels),
                CliTargets::Values(y, rows, k) => HeadTargets::Values(HostMatrix::new(y, *rows, *k)?),
            };
            let head = fit_map_head(device, features, head_targets, args.classes, prior_precision, sigma)?;
            match &targets {
                CliTargets::Labels(_) => println!(
                    "head fitted by MAP: {} iterations, |grad|_inf = {:.2e}{}",
                    head.iterations,
                    head.gradient_norm,
                    if head.converged { "" } else { " (iteration cap reached)" }
                ),
                CliTargets::Values(..) => println!("head fitted by MAP (exact for the Gaussian likelihood)"),
            }
            let classes = head.bias.len();
            (head.weights, Some(head.bias), classes)
        }
    };
    let head = HostMatrix::new(&head, classes, d)?;
    let started = std::time::Instant::now();
    let mut post = targets.with(|y| Posterior::fit(device, features, y, head, bias.as_deref(), config))?;
    let fit_ms = started.elapsed().as_secs_f64() * 1e3;
    match args.optimize_prior {
        Some(OptimizePriorArg::Marglik) if args.optimize_noise => {
            let (tau, sigma) = targets.with(|y| post.optimize_prior_and_noise(features, y))?;
            println!("prior precision τ = {tau:.6e} and noise σ = {sigma:.6e} maximise the marginal likelihood");
        }
        Some(OptimizePriorArg::Marglik) => {
            let tau = post.optimize_prior_precision(PriorShape::Scalar)?;
            println!("prior precision τ = {:.6e} maximises the marginal likelihood", tau[0]);
        }
        Some(OptimizePriorArg::Val) => args.tune.run(&mut post)?,
        None => {}
    }
    PosteriorFile::lock(&args.out, args.lock_timeout)?.commit(&post)?;
    println!(
        "fitted on {n} samples (K = {classes}, D = {d}) in {fit_ms:.2} ms on {}; wrote {}",
        device.name(),
        args.out.display()
    );
    Ok(())
}

fn accumulate_as<D: Device, T: Scalar>(device: &D, args: &AccumulateArgs, config: &FitConfig) -> Result<()> {
    let (phi, n, d) = inputs::take(&args.features)?.into_matrix::<T>()?;
    let targets = targets_of::<T>(&args.labels, args.model.regression())?;
    let (head, bias, classes) = read_head::<T>(&args.weights, args.bias_vector.as_deref())?;
    let started = std::time::Instant::now();
    let mut acc = CurvatureAccumulator::new(device, HostMatrix::new(&head, classes, d)?, bias.as_deref(), config)?;
    targets.with(|y| acc.accumulate(HostMatrix::new(&phi, n, d)?, y))?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    PosteriorFile::lock(&args.out, args.lock_timeout)?.commit_accumulator(&acc)?;
    println!(
        "accumulated {n} samples (K = {classes}, D = {d}) in {ms:.2} ms on {}; wrote {}",
        device.name(),
        args.out.display()
    );
    Ok(())
}

fn merge_as<D: Device, T: Scalar>(device: &D, args: &MergeArgs) -> Result<()> {
    let chunk_rows = FitConfig::default().chunk_rows;
    let load = |path: &Path| load_accumulator::<D, T>(device, path, chunk_rows);
    let mut total = load(&args.inputs[0])?;
    for path in &args.inputs[1..] {
        total.merge(&load(path)?).map_err(|e| match e {
            Error::InvalidArgument { reason, .. } => Error::invalid(
                "inputs",
                format!(
                    "{} does not merge with {}: {reason}",
                    path.display(),
                    args.inputs[0].display()
                ),
            ),
            other => other,
        })?;
    }
    let file = PosteriorFile::lock(&args.out, args.lock_timeout)?;
    let count = total.count();
    if args.partial {
        file.commit_accumulator(&total)?;
    } else {
        let mut post = total.into_posterior(args.prior_precision)?;
        if args.optimize_prior {
            let tau = post.optimize_prior_precision(PriorShape::Scalar)?;
            println!("prior precision τ = {:.6e} maximises the marginal likelihood", tau[0]);
        }
        file.commit(&post)?;
    }
    println!(
        "merged {} accumulators ({count} samples); wrote {}",
        args.inputs.len(),
        args.out.display()
    );
    Ok(())
}

/// Parses a forgetting factor in (0, 1] (`--forgetting`).
fn forgetting_factor(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rho) if rho > 0.0 && rho <= 1.0 => Ok(rho),
        _ => Err(format!("must be a number in (0, 1], got {text}")),
    }
}

/// Parses a non-negative, finite number of seconds (`--lock-timeout`).
fn seconds(text: &str) -> std::result::Result<std::time::Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|v| std::time::Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| format!("must be a non-negative number of seconds, got {text}"))
}

/// Whether `a` and `b` name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Loads the posterior, applies `change` to it with the batch, and saves it; returns the batch
/// size. The output file's write lock is held from before the input is read (when they are
/// the same file) until after the result is renamed into place, so concurrent changes of one
/// file queue up instead of overwriting each other.
fn change_posterior<D: Device, T: Scalar>(
    device: &D,
    batch: &BatchArgs,
    change: impl FnOnce(&mut Posterior<D, T>, HostMatrix<'_, T>, &dyn Targets<T>) -> Result<()>,
) -> Result<usize> {
    let (phi, m, d) = inputs::take(&batch.features)?.into_matrix::<T>()?;
    let file = PosteriorFile::lock(&batch.out, batch.lock_timeout)?;
    let mut post: Posterior<D, T> = if same_file(&batch.posterior, &batch.out) {
        file.load(device)?
    } else {
        load_posterior(device, &batch.posterior)?
    };
    let regression = matches!(post.likelihood(), Likelihood::Regression { .. });
    let targets = targets_of::<T>(&batch.labels, regression)?;
    let features = HostMatrix::new(&phi, m, d)?;
    targets.with(|y| change(&mut post, features, y))?;
    file.commit(&post)?;
    Ok(m)
}

impl UpdateArgs {
    fn config(&self) -> Result<UpdateConfig> {
        let config = UpdateConfig {
            rule: match self.rule {
                RuleArg::Joint => UpdateRule::Joint,
                RuleArg::Sequential => UpdateRule::Sequential,
            },
            step: self.step.control()?,
            forgetting: self.forgetting,
        };
        config.validate()?;
        Ok(config)
    }
}

impl UnlearnArgs {
    fn config(&self) -> Result<UnlearnConfig> {
        let config = UnlearnConfig {
            step: self.step.control()?,
            ..Default::default()
        };
        config.validate()?;
        Ok(config)
    }
}

fn update_as<D: Device, T: Scalar>(device: &D, args: &UpdateArgs) -> Result<()> {
    let config = args.config()?;
    let mut times = Vec::with_capacity(args.repeat.max(1));
    let mut report = None;
    let m = change_posterior::<D, T>(device, &args.batch, |post, x, y| {
        let mut update = |p: &mut Posterior<D, T>| -> Result<std::time::Duration> {
            let start = std::time::Instant::now();
            report = Some(p.update(x, y, &config)?);
            Ok(start.elapsed())
        };
        for _ in 1..args.repeat.max(1) {
            let mut copy = post.try_clone()?;
            times.push(update(&mut copy)?);
        }
        times.push(update(post)?);
        Ok(())
    })?;
    times.sort();
    let ms = times[times.len() / 2].as_secs_f64() * 1e3;
    if let Some(r) = report {
        for line in report_lines(&r, &config) {
            match line.starts_with("warning:") {
                true => eprintln!("{line}"),
                false => println!("{line}"),
            }
        }
    }
    println!(
        "updated with {m} samples in {ms:.2} ms; wrote {}",
        args.batch.out.display()
    );
    Ok(())
}

/// What an update did, and a warning where its step went wrong or was damped.
fn report_lines(r: &UpdateReport, config: &UpdateConfig) -> Vec<String> {
    let mut lines = vec![format!(
        "step: {} Newton step(s), last step length {}, objective J {:.6} -> {:.6}, mean moved by {:.3} of the head",
        r.steps, r.step_length, r.objective_before, r.objective_after, r.relative_step
    )];
    if r.undamped_rejected {
        lines.push(
            "warning: the full Newton step would have lowered J (confidently wrong samples pull the mean \
             too far); the line search took a shorter step"
                .into(),
        );
    }
    match config.step {
        StepControl::Newton { .. } if r.objective_after < r.objective_before => lines.push(format!(
            "warning: the undamped step lowered J from {:.6} to {:.6}; `--step damped` (the default) would not",
            r.objective_before, r.objective_after
        )),
        StepControl::Damped { max_iterations, .. } if !r.converged => lines.push(format!(
            "warning: the damped steps did not converge within {max_iterations} iterations (raise --iterations)"
        )),
        _ => {}
    }
    lines
}

fn unlearn_as<D: Device, T: Scalar>(device: &D, args: &UnlearnArgs) -> Result<()> {
    let config = args.config()?;
    let m = change_posterior::<D, T>(device, &args.batch, |post, x, y| post.unlearn(x, y, &config))?;
    println!("removed {m} samples; wrote {}", args.batch.out.display());
    Ok(())
}

fn predict_as<D: Device, T: Scalar>(device: &D, args: &PredictArgs) -> Result<()> {
    let mut post: Posterior<D, T> = load_posterior(device, &args.posterior)?;
    let (phi, n, d) = inputs::take(&args.features)?.into_matrix::<T>()?;
    let link = args.link.apply(&mut post)?;
    let k = post.classes();
    // Passes that use at most half of the memory available now.
    let per_row = post.predict_row_bytes().max(1);
    let rows_per_pass = laplace_update::memory::available()
        .map_or(n, |a| usize::try_from(a.bytes / 2 / per_row).unwrap_or(n))
        .clamp(1, n.max(1));
    let mut probs = Vec::with_capacity(n * k);
    let mut var = Vec::with_capacity(if args.logit_var.is_some() { n * k } else { 0 });
    let started = std::time::Instant::now();
    for start in (0..n).step_by(rows_per_pass) {
        let rows = rows_per_pass.min(n - start);
        let pred = post.predict(HostMatrix::new(&phi[start * d..(start + rows) * d], rows, d)?, link)?;
        if args.logit_var.is_some() {
            var.extend(
                (0..rows)
                    .flat_map(|i| (0..k).map(move |c| (i, c)))
                    .map(|(i, c)| pred.logit_cov_at(i, c, c)),
            );
        }
        probs.extend_from_slice(&pred.probs);
    }
    let passes = n.div_ceil(rows_per_pass);
    println!(
        "predicted {n} inputs in {:.2} ms{}",
        started.elapsed().as_secs_f64() * 1e3,
        if passes > 1 {
            format!(" ({passes} passes, to fit in memory)")
        } else {
            String::new()
        }
    );
    write_npy(&args.out, &probs, &[n, k])?;
    if let Some(path) = &args.logit_var {
        write_npy(path, &var, &[n, k])?;
    }
    Ok(())
}

fn info(path: &Path) -> Result<()> {
    let h = peek_posterior(path)?;
    println!("file           {}", path.display());
    println!("format version {}", h.version);
    println!("structure      {}", h.structure.name());
    println!("likelihood     {:?}", h.likelihood);
    println!("curvature      {:?}", h.curvature);
    println!("dtype          {}", h.dtype.name());
    println!("classes K      {}", h.classes);
    println!("features D     {}", h.features);
    println!("bias           {:?}", h.bias);
    let tau: Vec<String> = h.prior_precision.iter().map(|t| format!("{t}")).collect();
    println!("prior τ        {}", tau.join(", "));
    println!("temperature    {}", h.calibration.temperature);
    let lambda = h
        .calibration
        .link
        .lambda()
        .map(|l| format!(" (λ = {l})"))
        .unwrap_or_default();
    println!("link           {}{lambda}", h.calibration.link.name());
    println!("samples seen   {}", h.samples_seen);
    Ok(())
}
