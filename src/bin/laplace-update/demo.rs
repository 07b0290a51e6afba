//! The demo: labelled digits arrive in small batches; each method folds them in its own way and
//! is scored on held-out digits after every batch. Every posterior's τ is chosen by marginal
//! likelihood (it also sets how far an update moves the head) and its predictive's temperature
//! on a validation split; a first table compares the initial fit's calibration with τ chosen on
//! validation, the network's softmax and its temperature-scaled softmax.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use laplace_update::metrics::{Scores, score};
use laplace_update::random::SplitMix64;
use laplace_update::{
    BiasMode, CurvatureAt, Device, Error, FitConfig, HeadConfig, HostMatrix, Link, OutputWeighting, Posterior,
    PriorShape, Result, StepControl, Structure, TuneConfig, UpdateConfig, UpdateRule, fit_head,
};

use super::{DeviceArg, select_device};

use super::digits::{CLASSES, FEATURES, load_digits, random_fourier_features};
use super::report::{self, Row};

const INITIAL: usize = 100;
const BATCHES: usize = 10;
const BATCH: usize = 10;
/// Digits held out to tune τ on (the rest after the stream are the test digits).
const VALIDATION: usize = 300;
/// The prior precision of the MAP head; each posterior then chooses its own τ by marginal
/// likelihood.
const PRIOR_PRECISION: f64 = 0.1;

#[derive(Args)]
pub struct DemoArgs {
    /// Compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Folder for the table (CSV) and the figure (PNG).
    #[arg(long, default_value = "demo-out")]
    out_dir: PathBuf,
    /// Seed of the data split and of the feature map.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// How a method folds a batch in.
#[derive(Clone, Copy)]
enum Method {
    NoUpdate,
    Update {
        structure: Structure,
        rule: UpdateRule,
        step: StepControl,
    },
    Retrain,
}

const METHODS: [(&str, Method); 6] = [
    ("no update", Method::NoUpdate),
    (
        "paper rule (γ = 10)",
        Method::Update {
            structure: Structure::Shared(OutputWeighting::Gaussian),
            rule: UpdateRule::Sequential,
            step: StepControl::Newton {
                gamma: StepControl::PAPER_GAMMA,
                iterations: 1,
            },
        },
    ),
    (
        "shared update",
        Method::Update {
            structure: Structure::Shared(OutputWeighting::Gaussian),
            rule: UpdateRule::Joint,
            step: StepControl::Damped {
                max_iterations: StepControl::DEFAULT_MAX_ITERATIONS,
                tolerance: StepControl::DEFAULT_TOLERANCE,
                curvature_at: CurvatureAt::Mode,
            },
        },
    ),
    (
        "undamped full Newton",
        Method::Update {
            structure: Structure::Full,
            rule: UpdateRule::Joint,
            step: StepControl::Newton {
                gamma: 1.0,
                iterations: 1,
            },
        },
    ),
    (
        "update (default)",
        Method::Update {
            structure: Structure::Full,
            rule: UpdateRule::Joint,
            step: StepControl::Damped {
                max_iterations: StepControl::DEFAULT_MAX_ITERATIONS,
                tolerance: StepControl::DEFAULT_TOLERANCE,
                curvature_at: CurvatureAt::Mode,
            },
        },
    ),
    ("retrain head (MAP refit)", Method::Retrain),
];

pub fn run(args: &DemoArgs) -> Result<()> {
    let device = select_device(args.device)?;
    laplace_update::with_device!(&device, |d| run_on(d, args))
}

fn run_on<D: Device>(device: &D, args: &DemoArgs) -> Result<()> {
    let started = Instant::now();
    println!("device: {}", device.name());
    let (pixels, labels) = load_digits()?;
    let n = labels.len();
    let phi = random_fourier_features(&pixels, n, args.seed);
    let order = SplitMix64::new(args.seed ^ 0xD161_7500).permutation(n);
    let rows_of = |idx: &[usize]| -> (Vec<f32>, Vec<u32>) {
        (
            idx.iter()
                .flat_map(|&i| phi[i * FEATURES..(i + 1) * FEATURES].iter().copied())
                .collect(),
            idx.iter().map(|&i| labels[i]).collect(),
        )
    };
    let stream_end = INITIAL + BATCHES * BATCH;
    let val = rows_of(&order[stream_end..stream_end + VALIDATION]);
    let (test_x, test_y) = rows_of(&order[stream_end + VALIDATION..]);
    println!(
        "digits: {n} images, {INITIAL} labelled to start, {BATCHES} batches of {BATCH} arriving, {VALIDATION} to \
         tune τ on, {} held out; backbone: {FEATURES} random Fourier features",
        test_y.len()
    );

    // The head every method starts from: MAP on the initial labels.
    let (x0, y0) = rows_of(&order[..INITIAL]);
    let head = fit_map(device, &x0, &y0)?;
    print_calibration(device, &x0, &y0, &head, &val, (&test_x, &test_y))?;
    let mut states: Vec<Option<Posterior<D, f32>>> = Vec::with_capacity(METHODS.len());
    for (_, method) in METHODS {
        let structure = match method {
            Method::Update { structure, .. } => structure,
            _ => Structure::Shared(OutputWeighting::Gaussian),
        };
        states.push(Some(fit_posterior(device, &x0, &y0, &head, structure, &val)?));
    }
    let tau_of = |want: Structure| {
        METHODS
            .iter()
            .position(|(_, m)| matches!(m, Method::Update { structure, .. } if *structure == want))
            .and_then(|i| states[i].as_ref())
            .map_or(f64::NAN, |p| f64::from(p.prior_precision()[0]))
    };
    println!(
        "prior precision by marginal likelihood: shared τ = {:.3}, full τ = {:.3} (the MAP head's τ = {PRIOR_PRECISION}); \
         temperature and probit λ by validation",
        tau_of(Structure::Shared(OutputWeighting::Gaussian)),
        tau_of(Structure::Full)
    );

    let mut table: Vec<Row> = Vec::new();
    for (i, (name, _)) in METHODS.iter().enumerate() {
        if let Some(post) = &states[i] {
            table.push(Row {
                labels: INITIAL,
                method: name,
                scores: evaluate(post, &test_x, &test_y)?,
                ms: 0.0,
            });
        }
    }
    let bar = ProgressBar::new((BATCHES * METHODS.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} updates  {msg}")
            .map_err(|e| Error::invalid("progress", e.to_string()))?,
    );
    for b in 0..BATCHES {
        let seen = INITIAL + (b + 1) * BATCH;
        let (xb, yb) = rows_of(&order[seen - BATCH..seen]);
        for (i, (name, method)) in METHODS.iter().enumerate() {
            bar.set_message(format!("{seen} labels, {name}"));
            let start = Instant::now();
            match *method {
                Method::NoUpdate => {}
                Method::Update { rule, step, .. } => {
                    let config = UpdateConfig {
                        rule,
                        step,
                        ..UpdateConfig::default()
                    };
                    if let Some(post) = states[i].as_mut() {
                        post.update(HostMatrix::new(&xb, BATCH, FEATURES)?, &yb, &config)?;
                    }
                }
                Method::Retrain => {
                    let (xs, ys) = rows_of(&order[..seen]);
                    let head = fit_map(device, &xs, &ys)?;
                    states[i] = Some(fit_posterior(
                        device,
                        &xs,
                        &ys,
                        &head,
                        Structure::Shared(OutputWeighting::Gaussian),
                        &val,
                    )?);
                }
            }
            let update_ms = start.elapsed().as_secs_f64() * 1e3;
            if let Some(post) = &states[i] {
                table.push(Row {
                    labels: seen,
                    method: name,
                    scores: evaluate(post, &test_x, &test_y)?,
                    ms: update_ms,
                });
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    print_summary(&table);
    std::fs::create_dir_all(&args.out_dir).map_err(|e| Error::Io {
        path: args.out_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let csv = args.out_dir.join("demo.csv");
    report::write_csv(&csv, &table)?;
    let png = args.out_dir.join("demo.png");
    let names: Vec<&str> = METHODS.iter().map(|(name, _)| *name).collect();
    report::plot(&png, &names, &table, INITIAL as f64..(INITIAL + BATCHES * BATCH) as f64)?;
    println!(
        "wrote {} and {} in {:.1} s",
        csv.display(),
        png.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

struct Head {
    weights: Vec<f32>,
    bias: Vec<f32>,
}

fn fit_map<D: Device>(device: &D, x: &[f32], y: &[u32]) -> Result<Head> {
    let config = HeadConfig {
        prior_precision: PRIOR_PRECISION,
        tolerance: 1e-4,
        ..Default::default()
    };
    let fit = fit_head(device, HostMatrix::new(x, y.len(), FEATURES)?, y, CLASSES, &config)?;
    Ok(Head {
        weights: fit.weights,
        bias: fit.bias,
    })
}

/// Labelled rows: features (n × FEATURES) and labels.
type Rows = (Vec<f32>, Vec<u32>);

/// A posterior fitted around `head` on (x, y), its τ by marginal likelihood (τ is also how far
/// updates move the head) and its predictive's temperature and λ chosen on the validation rows.
fn fit_posterior<D: Device>(
    device: &D,
    x: &[f32],
    y: &[u32],
    head: &Head,
    structure: Structure,
    (val_x, val_y): &Rows,
) -> Result<Posterior<D, f32>> {
    let mut post = fit_raw(device, x, y, head, structure)?;
    post.optimize_prior_precision(PriorShape::Scalar)?;
    let val = HostMatrix::new(val_x, val_y.len(), FEATURES)?;
    post.tune_prior_precision(val, val_y, &PREDICTIVE_ONLY)?;
    Ok(post)
}

/// Validation tuning of the predictive alone: its temperature and the probit's λ, with τ kept.
const PREDICTIVE_ONLY: TuneConfig = TuneConfig {
    metric: laplace_update::TuneMetric::Nll,
    link: Link::Probit {
        lambda: Link::PROBIT_LAMBDA,
    },
    grid_min: 1e-4,
    grid_max: 1e4,
    grid_points: 41,
    prior: false,
    temperature: true,
    lambda: true,
    choose_link: false,
};

/// The initial fit's calibration on the test digits: the network's softmax (alone and with a
/// temperature tuned on the validation digits) and the Full posterior's probit predictive with
/// τ by marginal likelihood, by validation, and by validation with a temperature.
fn print_calibration<D: Device>(
    device: &D,
    x: &[f32],
    y: &[u32],
    head: &Head,
    (val_x, val_y): &Rows,
    (test_x, test_y): (&[f32], &[u32]),
) -> Result<()> {
    let fitted = fit_raw(device, x, y, head, Structure::Full)?;
    let val = HostMatrix::new(val_x, val_y.len(), FEATURES)?;
    let tuned = |config: TuneConfig| -> Result<Posterior<D, f32>> {
        let mut post = fitted.try_clone()?;
        post.tune_prior_precision(val, val_y, &config)?;
        Ok(post)
    };
    let score_of = |post: &Posterior<D, f32>, link: Link| -> Result<Scores> {
        let pred = post.predict(HostMatrix::new(test_x, test_y.len(), FEATURES)?, link)?;
        score(&pred.probs, test_y, CLASSES, 15)
    };
    let mut marglik = fitted.try_clone()?;
    marglik.optimize_prior_precision(PriorShape::Scalar)?;
    let mut marglik_t = marglik.try_clone()?;
    marglik_t.tune_prior_precision(val, val_y, &PREDICTIVE_ONLY)?;
    let scaled = tuned(TuneConfig {
        link: Link::None,
        temperature: true,
        ..Default::default()
    })?;
    let rows = [
        ("network (MAP softmax)", score_of(&fitted, Link::None)?),
        ("network + temperature", score_of(&scaled, Link::None)?),
        (
            "Laplace, τ by marginal likelihood",
            score_of(&marglik, Link::default())?,
        ),
        (
            "Laplace, τ by m. l., T and λ by validation",
            score_of(&marglik_t, marglik_t.calibration().link)?,
        ),
        (
            "Laplace, τ by validation",
            score_of(&tuned(TuneConfig::default())?, Link::default())?,
        ),
        (
            "Laplace, τ and T by validation",
            score_of(
                &tuned(TuneConfig {
                    temperature: true,
                    ..Default::default()
                })?,
                Link::default(),
            )?,
        ),
    ];
    println!("\ninitial fit ({INITIAL} labels), held-out digits:\n");
    println!("{:<44} {:>9} {:>8} {:>8}", "predictive", "accuracy", "NLL", "ECE");
    for (name, s) in rows {
        println!("{name:<44} {:>9.3} {:>8.3} {:>8.3}", s.accuracy, s.nll, s.ece);
    }
    println!();
    Ok(())
}

/// A posterior fitted around `head` on (x, y) at the MAP head's τ.
fn fit_raw<D: Device>(
    device: &D,
    x: &[f32],
    y: &[u32],
    head: &Head,
    structure: Structure,
) -> Result<Posterior<D, f32>> {
    let config = FitConfig {
        structure,
        prior_precision: PRIOR_PRECISION,
        bias: BiasMode::InPosterior,
        ..Default::default()
    };
    Posterior::fit(
        device,
        HostMatrix::new(x, y.len(), FEATURES)?,
        y,
        HostMatrix::new(&head.weights, CLASSES, FEATURES)?,
        Some(&head.bias),
        &config,
    )
}

fn evaluate<D: Device>(post: &Posterior<D, f32>, x: &[f32], y: &[u32]) -> Result<Scores> {
    let pred = post.predict(HostMatrix::new(x, y.len(), FEATURES)?, post.calibration().link)?;
    score(&pred.probs, y, CLASSES, 15)
}

fn print_summary(table: &[Row]) {
    let last = table.iter().map(|r| r.labels).max().unwrap_or(0);
    println!(
        "\nafter {last} labels ({BATCHES} batches of {BATCH}), held-out digits, probit predictive at each \
         posterior's tuned temperature and λ:\n"
    );
    let names: Vec<&str> = METHODS.iter().map(|(name, _)| *name).collect();
    report::print_table(table, &names, INITIAL, names[names.len() - 1]);
}
