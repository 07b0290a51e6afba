//! The demo: labelled rows (the bundled digits' random Fourier features, or the user's own
//! `--data`) arrive in small batches; each method folds them in its own way and is scored on
//! held-out rows after every batch. Every posterior's τ is chosen by marginal likelihood (it
//! also sets how far an update moves the head) and its predictive's temperature on a validation
//! split; a first table compares the initial fit's calibration with τ chosen on validation, the
//! network's softmax and its temperature-scaled softmax. Over several `--seeds` (each its own
//! split) the closing table gives mean ± standard deviation, and the share of test predictions
//! each method flips against retraining the head.

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
    /// Seed of the first run's data split (and of the digits' feature map); run r uses seed + r.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Runs of the whole protocol, each on its own split: the closing table is their mean ± std.
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    /// Your own features, N × D (.npy or FILE.safetensors:TENSOR), instead of the bundled digits;
    /// each column is standardised to mean 0 and variance 1.
    #[arg(long, requires = "labels")]
    data: Option<String>,
    /// Class labels of --data (N integers, 0 … K−1).
    #[arg(long, requires = "data")]
    labels: Option<String>,
    /// Labelled rows to start from.
    #[arg(long, default_value_t = 100)]
    initial: usize,
    /// Rows per arriving batch.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Batches that arrive.
    #[arg(long, default_value_t = 10)]
    batches: usize,
    /// Rows held out to tune the temperature and λ on; the rest after the stream are the test rows.
    #[arg(long, default_value_t = 300)]
    validation: usize,
}

/// The rows the protocol draws from: features (n × d), labels in 0..k.
struct Data {
    x: Vec<f32>,
    y: Vec<u32>,
    d: usize,
    k: usize,
    what: String,
}

impl DemoArgs {
    /// Checks the sizes, before any file is read or device probed.
    fn validate(&self) -> Result<()> {
        if self.initial == 0 || self.batch == 0 || self.batches == 0 || self.validation == 0 || self.seeds == 0 {
            return Err(Error::invalid(
                "demo",
                "--initial, --batch, --batches, --validation and --seeds must be at least 1",
            ));
        }
        Ok(())
    }

    /// Rows used before the test rows: the stream and the validation rows.
    fn before_test(&self) -> usize {
        self.initial + self.batches * self.batch + self.validation
    }

    /// The user's rows (`--data`, `--labels`), standardised, read once for every run.
    fn user_data(&self) -> Result<Option<Data>> {
        let (Some(data), Some(labels)) = (&self.data, &self.labels) else {
            return Ok(None);
        };
        let (x, n, d) = super::inputs::take(data)?.into_matrix::<f32>()?;
        let (y, k) = super::inputs::class_labels(labels)?;
        if k < 2 {
            return Err(Error::invalid("labels", "need at least two classes"));
        }
        Ok(Some(Data {
            x: super::al::standardize(x, n, d),
            y,
            d,
            k,
            what: format!("{data}: {n} rows, {d} features, {k} classes (standardised)"),
        }))
    }
}

/// The bundled digits with the random Fourier features of `seed`.
fn digits(seed: u64) -> Result<Data> {
    let (pixels, y) = load_digits()?;
    let n = y.len();
    Ok(Data {
        x: random_fourier_features(&pixels, n, seed),
        y,
        d: FEATURES,
        k: CLASSES,
        what: format!("digits: {n} images; backbone: {FEATURES} random Fourier features"),
    })
}

/// One run's rows after every batch, and its methods' test predictions after the last.
struct Run {
    table: Vec<Row>,
    predictions: Vec<Vec<u32>>,
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
    args.validate()?;
    if let (Some(data), Some(labels)) = (&args.data, &args.labels) {
        let (n, _) = super::inputs::batch(data, Some(labels), false, None)?;
        if n <= args.before_test() {
            return Err(Error::invalid(
                "data",
                format!(
                    "{n} rows: the protocol takes {} (--initial, --batches × --batch, --validation) and needs test rows beyond",
                    args.before_test()
                ),
            ));
        }
    }
    let device = select_device(args.device)?;
    laplace_update::with_device!(&device, |d| run_on(d, args))
}

fn run_on<D: Device>(device: &D, args: &DemoArgs) -> Result<()> {
    let started = Instant::now();
    println!("device: {}", device.name());
    let user = args.user_data()?;
    let mut runs = Vec::with_capacity(args.seeds);
    for r in 0..args.seeds {
        let seed = args.seed + r as u64;
        let data = match &user {
            Some(data) => data,
            None => &digits(seed)?,
        };
        runs.push(run_seed(device, args, data, seed, r == 0)?);
    }
    let names: Vec<&str> = METHODS.iter().map(|(name, _)| *name).collect();
    let last = args.initial + args.batches * args.batch;
    println!(
        "\nafter {last} labels ({} batches of {}), held-out rows, probit predictive at each posterior's tuned \
         temperature and λ{}:\n",
        args.batches,
        args.batch,
        match args.seeds {
            1 => String::new(),
            s => format!("; mean ± std over {s} seeds"),
        }
    );
    print_summary(&runs, &names, args.initial, last);
    std::fs::create_dir_all(&args.out_dir).map_err(|e| Error::Io {
        path: args.out_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let csv = args.out_dir.join("demo.csv");
    let rows: Vec<(u64, &Row)> = runs
        .iter()
        .enumerate()
        .flat_map(|(r, run)| run.table.iter().map(move |row| (args.seed + r as u64, row)))
        .collect();
    report::write_csv(&csv, &rows)?;
    let png = args.out_dir.join("demo.png");
    report::plot(&png, &names, &runs[0].table, args.initial as f64..last as f64)?;
    println!(
        "wrote {} and {} in {:.1} s",
        csv.display(),
        png.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One run of the protocol on `data`, split by `seed`; the first also prints the calibration table.
fn run_seed<D: Device>(device: &D, args: &DemoArgs, data: &Data, seed: u64, first: bool) -> Result<Run> {
    let (d, k) = (data.d, data.k);
    let n = data.y.len();
    let order = SplitMix64::new(seed ^ 0xD161_7500).permutation(n);
    let rows_of = |idx: &[usize]| -> (Vec<f32>, Vec<u32>) {
        (
            idx.iter()
                .flat_map(|&i| data.x[i * d..(i + 1) * d].iter().copied())
                .collect(),
            idx.iter().map(|&i| data.y[i]).collect(),
        )
    };
    let (initial, batch, batches) = (args.initial, args.batch, args.batches);
    let stream_end = initial + batches * batch;
    let val = rows_of(&order[stream_end..stream_end + args.validation]);
    let (test_x, test_y) = rows_of(&order[stream_end + args.validation..]);
    let dims = Dims { d, k };
    if first {
        println!(
            "{}; {initial} labelled to start, {batches} batches of {batch} arriving, {} to tune on, {} held out",
            data.what,
            args.validation,
            test_y.len()
        );
    }

    // The head every method starts from: MAP on the initial labels.
    let (x0, y0) = rows_of(&order[..initial]);
    let head = fit_map(device, dims, &x0, &y0)?;
    if first {
        print_calibration(device, dims, initial, &x0, &y0, &head, &val, (&test_x, &test_y))?;
    }
    let mut states: Vec<Option<Posterior<D, f32>>> = Vec::with_capacity(METHODS.len());
    for (_, method) in METHODS {
        let structure = match method {
            Method::Update { structure, .. } => structure,
            _ => Structure::Shared(OutputWeighting::Gaussian),
        };
        states.push(Some(fit_posterior(device, dims, &x0, &y0, &head, structure, &val)?));
    }
    if first {
        let tau_of = |want: Structure| {
            METHODS
                .iter()
                .position(|(_, m)| matches!(m, Method::Update { structure, .. } if *structure == want))
                .and_then(|i| states[i].as_ref())
                .map_or(f64::NAN, |p| f64::from(p.prior_precision()[0]))
        };
        println!(
            "prior precision by marginal likelihood: shared τ = {:.3}, full τ = {:.3} (the MAP head's τ = \
             {PRIOR_PRECISION}); temperature and probit λ by validation",
            tau_of(Structure::Shared(OutputWeighting::Gaussian)),
            tau_of(Structure::Full)
        );
    }

    let mut table: Vec<Row> = Vec::new();
    for (i, (name, _)) in METHODS.iter().enumerate() {
        if let Some(post) = &states[i] {
            table.push(Row {
                labels: initial,
                method: name,
                scores: evaluate(post, dims, &test_x, &test_y)?.0,
                ms: 0.0,
            });
        }
    }
    let bar = ProgressBar::new((batches * METHODS.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} updates  {msg}")
            .map_err(|e| Error::invalid("progress", e.to_string()))?,
    );
    let mut predictions = vec![Vec::new(); METHODS.len()];
    for b in 0..batches {
        let seen = initial + (b + 1) * batch;
        let (xb, yb) = rows_of(&order[seen - batch..seen]);
        for (i, (name, method)) in METHODS.iter().enumerate() {
            bar.set_message(format!("seed {seed}, {seen} labels, {name}"));
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
                        post.update(HostMatrix::new(&xb, batch, d)?, &yb, &config)?;
                    }
                }
                Method::Retrain => {
                    let (xs, ys) = rows_of(&order[..seen]);
                    let head = fit_map(device, dims, &xs, &ys)?;
                    states[i] = Some(fit_posterior(
                        device,
                        dims,
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
                let (scores, predicted) = evaluate(post, dims, &test_x, &test_y)?;
                table.push(Row {
                    labels: seen,
                    method: name,
                    scores,
                    ms: update_ms,
                });
                predictions[i] = predicted;
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(Run { table, predictions })
}

/// Features and classes of the rows.
#[derive(Clone, Copy)]
struct Dims {
    d: usize,
    k: usize,
}

struct Head {
    weights: Vec<f32>,
    bias: Vec<f32>,
}

fn fit_map<D: Device>(device: &D, dims: Dims, x: &[f32], y: &[u32]) -> Result<Head> {
    let config = HeadConfig {
        prior_precision: PRIOR_PRECISION,
        tolerance: 1e-4,
        ..Default::default()
    };
    let fit = fit_head(device, HostMatrix::new(x, y.len(), dims.d)?, y, dims.k, &config)?;
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
    dims: Dims,
    x: &[f32],
    y: &[u32],
    head: &Head,
    structure: Structure,
    (val_x, val_y): &Rows,
) -> Result<Posterior<D, f32>> {
    let mut post = fit_raw(device, dims, x, y, head, structure)?;
    post.optimize_prior_precision(PriorShape::Scalar)?;
    let val = HostMatrix::new(val_x, val_y.len(), dims.d)?;
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
    extend_grid: true,
    selection: laplace_update::TuneSelection::Auto,
    prior: false,
    temperature: true,
    lambda: true,
    choose_link: false,
    per_class: false,
};

/// The initial fit's calibration on the test digits: the network's softmax (alone and with a
/// temperature tuned on the validation digits) and the Full posterior's probit predictive with
/// τ by marginal likelihood, by validation, and by validation with a temperature.
#[allow(clippy::too_many_arguments)]
fn print_calibration<D: Device>(
    device: &D,
    dims: Dims,
    initial: usize,
    x: &[f32],
    y: &[u32],
    head: &Head,
    (val_x, val_y): &Rows,
    (test_x, test_y): (&[f32], &[u32]),
) -> Result<()> {
    let fitted = fit_raw(device, dims, x, y, head, Structure::Full)?;
    let val = HostMatrix::new(val_x, val_y.len(), dims.d)?;
    let tuned = |config: TuneConfig| -> Result<Posterior<D, f32>> {
        let mut post = fitted.try_clone()?;
        post.tune_prior_precision(val, val_y, &config)?;
        Ok(post)
    };
    let score_of = |post: &Posterior<D, f32>, link: Link| -> Result<Scores> {
        let pred = post.predict(HostMatrix::new(test_x, test_y.len(), dims.d)?, link)?;
        score(&pred.probs, test_y, dims.k, 15)
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
    println!("\ninitial fit ({initial} labels), held-out rows:\n");
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
    dims: Dims,
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
        HostMatrix::new(x, y.len(), dims.d)?,
        y,
        HostMatrix::new(&head.weights, dims.k, dims.d)?,
        Some(&head.bias),
        &config,
    )
}

/// The scores of `post`'s calibrated predictive on (x, y), and its predicted classes.
fn evaluate<D: Device>(post: &Posterior<D, f32>, dims: Dims, x: &[f32], y: &[u32]) -> Result<(Scores, Vec<u32>)> {
    let pred = post.predict(HostMatrix::new(x, y.len(), dims.d)?, post.calibration().link)?;
    let predicted = pred
        .probs
        .chunks_exact(dims.k)
        .map(|p| (0..dims.k).fold(0, |best, c| if p[c] > p[best] { c } else { best }) as u32)
        .collect();
    Ok((score(&pred.probs, y, dims.k, 15)?, predicted))
}

/// The closing table: each method's scores after the last batch (mean ± std over the runs),
/// its time per batch and speed-up against retraining the head, and the share of test
/// predictions it flips against retraining the head.
fn print_summary(runs: &[Run], names: &[&str], initial: usize, last: usize) {
    let retrain = names.len() - 1;
    let width = names.iter().map(|m| m.chars().count()).max().unwrap_or(0) + 2;
    let stat = |values: Vec<f64>| -> String {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        match values.len() {
            1 => format!("{mean:.3}"),
            _ => {
                let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
                format!("{mean:.3} ± {:.3}", var.sqrt())
            }
        }
    };
    let cell = if runs.len() == 1 { 7 } else { 15 };
    println!(
        "{:<width$} {:>cell$} {:>cell$} {:>cell$} {:>10} {:>9} {:>7}",
        "method", "accuracy", "NLL", "ECE", "ms/batch", "speed-up", "flips"
    );
    let reference: f64 = runs
        .iter()
        .map(|r| report::mean_ms(&r.table, names[retrain], initial))
        .sum::<f64>()
        / runs.len() as f64;
    for (m, method) in names.iter().enumerate() {
        let finals: Vec<&Row> = runs
            .iter()
            .filter_map(|r| r.table.iter().find(|row| row.method == *method && row.labels == last))
            .collect();
        if finals.len() != runs.len() {
            continue;
        }
        let ms = runs
            .iter()
            .map(|r| report::mean_ms(&r.table, method, initial))
            .sum::<f64>()
            / runs.len() as f64;
        let speedup = if ms >= 0.01 {
            format!("{:.0}x", reference / ms)
        } else {
            "-".into()
        };
        let flips = runs
            .iter()
            .map(|r| {
                let (a, b) = (&r.predictions[m], &r.predictions[retrain]);
                a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len().max(1) as f64
            })
            .sum::<f64>()
            / runs.len() as f64;
        println!(
            "{:<width$} {:>cell$} {:>cell$} {:>cell$} {:>10.2} {:>9} {:>7.3}",
            method,
            stat(finals.iter().map(|r| r.scores.accuracy).collect()),
            stat(finals.iter().map(|r| r.scores.nll).collect()),
            stat(finals.iter().map(|r| r.scores.ece).collect()),
            ms,
            speedup,
            flips
        );
    }
    println!();
}
