//! `al`: pool-based active learning simulated on labelled data, with learning curves.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use laplace_update::active::{LabelSource, Labelled, LookAhead, Pool, Strategy, UpdateDriven, UpdateMethod};
use laplace_update::metrics::score;
use laplace_update::random::SplitMix64;
use laplace_update::{
    BiasMode, Device, Error, FitConfig, HeadConfig, HostMatrix, Link, OutputWeighting, Posterior, Result, Structure,
    UpdateConfig, fit_head,
};
use plotters::prelude::*;

use super::digits::{CLASSES, FEATURES, load_digits, random_fourier_features};
use super::figure;
use super::{DeviceArg, select_device};

#[derive(Args)]
pub struct AlArgs {
    /// Features, N × D (.npy or FILE.safetensors:TENSOR); without it, the bundled digits
    /// through the demo's feature map.
    #[arg(long, requires = "labels")]
    data: Option<String>,
    /// Labels, N integers in 0..K (with --data).
    #[arg(long)]
    labels: Option<String>,
    /// Use the --data features as they are. By default every column is standardised to mean 0
    /// and variance 1 over all N samples (constant columns become 0), so that raw tabular
    /// columns of very different scales work out of the box.
    #[arg(long, requires = "data")]
    raw_features: bool,
    /// Comma-separated strategies: random, entropy, margin, least-confidence, bald, badge,
    /// bait, coreset, typiclust; `NAME+update` for update-driven selection (oracle labels;
    /// `NAME+update:predicted` or `NAME+update:expected` for the other label sources);
    /// `lookahead` (Laplace update), `lookahead:first-order`, `lookahead:mc`, `lookahead:refit`.
    #[arg(
        long,
        default_value = "random,margin,margin+update,bald,bald+update,badge,bait,lookahead"
    )]
    strategies: String,
    /// Labelled samples at the start.
    #[arg(long, default_value_t = 20)]
    initial: usize,
    /// Samples labelled per cycle.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Selection cycles.
    #[arg(long, default_value_t = 20)]
    cycles: usize,
    /// Repetitions with different splits and seeds.
    #[arg(long, default_value_t = 5)]
    seeds: usize,
    /// Prior precision τ of the head and the posterior.
    #[arg(long, default_value_t = 0.1)]
    prior_precision: f64,
    /// Step scale γ of undamped updates inside update-driven selection; left out, those
    /// updates take damped steps to the mode.
    #[arg(long)]
    gamma: Option<f64>,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Folder for the curves (PNG), the per-cycle CSV and the area-under-curve table.
    #[arg(long, default_value = "al-out")]
    out_dir: PathBuf,
}

/// A strategy as the command line names it.
#[derive(Clone, Copy)]
enum Plan {
    Plain(Strategy),
    Driven(Strategy, Source),
    LookAhead(Method),
}

#[derive(Clone, Copy)]
enum Source {
    Oracle,
    Predicted,
    Expected,
}

#[derive(Clone, Copy)]
enum Method {
    Laplace,
    FirstOrder,
    MonteCarlo,
    Refit,
}

fn parse_plan(name: &str) -> Result<Plan> {
    if let Some(rest) = name.strip_prefix("lookahead") {
        let method = match rest {
            "" | ":laplace" => Method::Laplace,
            ":first-order" => Method::FirstOrder,
            ":mc" => Method::MonteCarlo,
            ":refit" => Method::Refit,
            other => {
                return Err(Error::invalid(
                    "strategies",
                    format!("unknown look-ahead method `{other}`"),
                ));
            }
        };
        return Ok(Plan::LookAhead(method));
    }
    match name.split_once('+') {
        None => Ok(Plan::Plain(Strategy::from_name(name)?)),
        Some((base, driven)) => {
            let source = match driven {
                "update" | "update:oracle" => Source::Oracle,
                "update:predicted" => Source::Predicted,
                "update:expected" => Source::Expected,
                other => return Err(Error::invalid("strategies", format!("unknown suffix `+{other}`"))),
            };
            Ok(Plan::Driven(Strategy::from_name(base)?, source))
        }
    }
}

/// One evaluation: a strategy's test scores after some labels, under one seed.
struct Point {
    strategy: usize,
    seed: usize,
    labels: usize,
    accuracy: f64,
    nll: f64,
}

/// Checks the arguments, then probes the device: a bad argument never touches a driver.
pub fn run(args: &AlArgs) -> Result<()> {
    let names: Vec<String> = args
        .strategies
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let plans = names.iter().map(|n| parse_plan(n)).collect::<Result<Vec<_>>>()?;
    if plans.is_empty() || args.batch == 0 || args.initial == 0 || args.seeds == 0 {
        return Err(Error::invalid(
            "arguments",
            "need at least one strategy, and --initial, --batch and --seeds of at least 1",
        ));
    }
    if let (Some(data), Some(labels)) = (&args.data, &args.labels) {
        super::inputs::batch(data, Some(labels), false, None)?;
    }
    let device = select_device(args.device)?;
    laplace_update::with_device!(&device, |d| run_on(d, args, &names, &plans))
}

fn run_on<D: Device>(device: &D, args: &AlArgs, names: &[String], plans: &[Plan]) -> Result<()> {
    let started = Instant::now();
    let (x, y, d, k) = match (&args.data, &args.labels) {
        (Some(data), Some(labels)) => {
            let (x, n, d) = super::inputs::take(data)?.into_matrix::<f32>()?;
            // Their shapes were checked against each other before the device.
            let (y, k) = super::inputs::class_labels(labels)?;
            let x = if args.raw_features { x } else { standardize(x, n, d) };
            (x, y, d, k)
        }
        _ => {
            let (pixels, y) = load_digits()?;
            (random_fourier_features(&pixels, y.len(), 0), y, FEATURES, CLASSES)
        }
    };
    let n = y.len();
    let held_out = n * 3 / 10;
    let validation = 100.min(n / 10);
    let pool_size = n - held_out - validation;
    let needed = args.initial + args.cycles * args.batch;
    if k < 2 || needed > pool_size {
        return Err(Error::invalid(
            "cycles",
            format!("{needed} labels needed but the pool holds {pool_size} (N = {n}, K = {k})"),
        ));
    }
    println!(
        "device: {}\ndata: {n} samples, D = {d}, K = {k}; {held_out} test, {validation} validation, pool {pool_size}; \
         {} labelled to start, {} cycles of {}, {} seeds",
        device.name(),
        args.initial,
        args.cycles,
        args.batch,
        args.seeds
    );

    let bar = ProgressBar::new((plans.len() * args.seeds * (args.cycles + 1)) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed_precise}]")
            .map_err(|e| Error::invalid("progress", e.to_string()))?,
    );
    let rows = |idx: &[usize]| -> (Vec<f32>, Vec<u32>) {
        (
            idx.iter()
                .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
                .collect(),
            idx.iter().map(|&i| y[i]).collect(),
        )
    };
    let mut points = Vec::new();
    for seed in 0..args.seeds {
        let order = SplitMix64::new(0x00A1_5EED ^ seed as u64).permutation(n);
        let (test_x, test_y) = rows(&order[..held_out]);
        let (val_x, val_y) = rows(&order[held_out..held_out + validation]);
        let pool_all = &order[held_out + validation..];
        for (s, plan) in plans.iter().enumerate() {
            bar.set_message(format!("{} seed {seed}", names[s]));
            let mut labeled: Vec<usize> = pool_all[..args.initial].to_vec();
            let mut unlabeled: Vec<usize> = pool_all[args.initial..].to_vec();
            for cycle in 0..=args.cycles {
                let (lx, ly) = rows(&labeled);
                let post = fit(device, &lx, &ly, d, k, args.prior_precision)?;
                let pred = post.predict(HostMatrix::new(&test_x, test_y.len(), d)?, Link::default())?;
                let scores = score(&pred.probs, &test_y, k, 15)?;
                points.push(Point {
                    strategy: s,
                    seed,
                    labels: labeled.len(),
                    accuracy: scores.accuracy,
                    nll: scores.nll,
                });
                bar.inc(1);
                if cycle == args.cycles {
                    break;
                }
                let (ux, uy) = rows(&unlabeled);
                let pool = Pool {
                    candidates: HostMatrix::new(&ux, unlabeled.len(), d)?,
                    labeled: HostMatrix::new(&lx, labeled.len(), d)?,
                };
                let choice_seed = (seed as u64) << 32 | cycle as u64;
                let update = match args.gamma {
                    Some(gamma) => UpdateConfig::newton(gamma),
                    None => UpdateConfig::default(),
                };
                let picks = match *plan {
                    Plan::Plain(strategy) => strategy.select(&post, &pool, args.batch, choice_seed)?,
                    Plan::Driven(base, source) => {
                        let labels = match source {
                            Source::Oracle => LabelSource::Oracle(&uy),
                            Source::Predicted => LabelSource::Predicted,
                            Source::Expected => LabelSource::Expected,
                        };
                        UpdateDriven { base, labels, update }.select(&post, &pool, args.batch, choice_seed)?
                    }
                    Plan::LookAhead(method) => {
                        let method = match method {
                            Method::Laplace => UpdateMethod::Laplace(update),
                            Method::FirstOrder => UpdateMethod::FirstOrder { learning_rate: 0.1 },
                            Method::MonteCarlo => UpdateMethod::MonteCarloReweighting {
                                samples: 100,
                                seed: choice_seed,
                            },
                            Method::Refit => UpdateMethod::Refit(head_config(args.prior_precision)),
                        };
                        let look = LookAhead {
                            method,
                            random_batches: 3,
                        };
                        let seen = Labelled {
                            features: HostMatrix::new(&lx, labeled.len(), d)?,
                            labels: &ly,
                        };
                        let val = Labelled {
                            features: HostMatrix::new(&val_x, val_y.len(), d)?,
                            labels: &val_y,
                        };
                        look.select(&post, &pool, &uy, seen, val, args.batch, choice_seed)?
                    }
                };
                let mut picked: Vec<usize> = picks.iter().map(|&i| unlabeled[i]).collect();
                let mut sorted = picks.clone();
                sorted.sort_unstable_by(|a, b| b.cmp(a));
                for i in sorted {
                    unlabeled.remove(i);
                }
                labeled.append(&mut picked);
            }
        }
    }
    bar.finish_and_clear();

    std::fs::create_dir_all(&args.out_dir).map_err(|e| Error::Io {
        path: args.out_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let table = auc_table(names, &points, args.seeds);
    print_auc(&table, args.seeds);
    write_csv(&args.out_dir.join("al.csv"), names, &points)?;
    write_auc(&args.out_dir.join("auc.csv"), &table)?;
    plot(&args.out_dir.join("al.png"), names, &points)?;
    println!(
        "wrote {}, {} and {} in {:.1} s",
        args.out_dir.join("al.csv").display(),
        args.out_dir.join("auc.csv").display(),
        args.out_dir.join("al.png").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn head_config(prior_precision: f64) -> HeadConfig {
    HeadConfig {
        prior_precision,
        tolerance: 1e-4,
        ..Default::default()
    }
}

/// The MAP head on the labelled data, then the Shared Laplace posterior around it.
fn fit<D: Device>(device: &D, x: &[f32], y: &[u32], d: usize, k: usize, tau: f64) -> Result<Posterior<D, f32>> {
    let features = HostMatrix::new(x, y.len(), d)?;
    let head = fit_head(device, features, y, k, &head_config(tau))?;
    let config = FitConfig {
        structure: Structure::Shared(OutputWeighting::Gaussian),
        prior_precision: tau,
        bias: BiasMode::InPosterior,
        ..Default::default()
    };
    Posterior::fit(
        device,
        features,
        y,
        HostMatrix::new(&head.weights, k, d)?,
        Some(&head.bias),
        &config,
    )
}

/// Per strategy: mean and standard deviation over seeds of the area under the accuracy and NLL
/// curves (each normalised by the number of evaluations, so it is a mean over the curve).
struct Auc {
    name: String,
    accuracy: (f64, f64),
    nll: (f64, f64),
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn auc_table(names: &[String], points: &[Point], seeds: usize) -> Vec<Auc> {
    names
        .iter()
        .enumerate()
        .map(|(s, name)| {
            let per_seed = |metric: fn(&Point) -> f64| -> Vec<f64> {
                (0..seeds)
                    .map(|seed| {
                        let curve: Vec<f64> = points
                            .iter()
                            .filter(|p| p.strategy == s && p.seed == seed)
                            .map(metric)
                            .collect();
                        curve.iter().sum::<f64>() / curve.len().max(1) as f64
                    })
                    .collect()
            };
            Auc {
                name: name.clone(),
                accuracy: mean_std(&per_seed(|p| p.accuracy)),
                nll: mean_std(&per_seed(|p| p.nll)),
            }
        })
        .collect()
}

fn print_auc(table: &[Auc], seeds: usize) {
    println!("\narea under the learning curve (mean over the curve), ± std over {seeds} seeds:\n");
    println!("{:<24} {:>18} {:>18}", "strategy", "accuracy AUC", "NLL AUC");
    for row in table {
        println!(
            "{:<24} {:>10.4} ± {:<6.4} {:>10.4} ± {:<6.4}",
            row.name, row.accuracy.0, row.accuracy.1, row.nll.0, row.nll.1
        );
    }
    println!();
}

fn write_csv(path: &Path, names: &[String], points: &[Point]) -> Result<()> {
    let mut text = String::from("strategy,seed,labels,accuracy,nll\n");
    for p in points {
        text.push_str(&format!(
            "{},{},{},{:.6},{:.6}\n",
            names[p.strategy], p.seed, p.labels, p.accuracy, p.nll
        ));
    }
    std::fs::write(path, text).map_err(|e| figure::failure(path, e))
}

fn write_auc(path: &Path, table: &[Auc]) -> Result<()> {
    let mut text = String::from("strategy,accuracy_auc,accuracy_auc_std,nll_auc,nll_auc_std\n");
    for r in table {
        text.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6}\n",
            r.name, r.accuracy.0, r.accuracy.1, r.nll.0, r.nll.1
        ));
    }
    std::fs::write(path, text).map_err(|e| figure::failure(path, e))
}

/// Accuracy and NLL against labels: per strategy the mean over seeds, with a ± std band.
fn plot(path: &Path, names: &[String], points: &[Point]) -> Result<()> {
    let key: Vec<&str> = names.iter().map(String::as_str).collect();
    let (root, panels) = figure::two_panels(path, &key)?;
    let mut labels: Vec<usize> = points.iter().map(|p| p.labels).collect();
    labels.sort_unstable();
    labels.dedup();
    let x_range = *labels.first().unwrap_or(&0) as f64..*labels.last().unwrap_or(&1) as f64;
    for (panel, (title, metric)) in panels.iter().zip([("test accuracy", 0usize), ("test NLL", 1)]) {
        let value = |p: &Point| if metric == 0 { p.accuracy } else { p.nll };
        // Per strategy and label count: mean and std over seeds.
        let curves: Vec<Vec<(f64, f64, f64)>> = (0..names.len())
            .map(|s| {
                labels
                    .iter()
                    .map(|&l| {
                        let v: Vec<f64> = points
                            .iter()
                            .filter(|p| p.strategy == s && p.labels == l)
                            .map(value)
                            .collect();
                        let (m, sd) = mean_std(&v);
                        (l as f64, m, sd)
                    })
                    .collect()
            })
            .collect();
        let span = curves
            .iter()
            .flatten()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (_, m, sd)| {
                (a.min(m - sd), b.max(m + sd))
            });
        let mut chart = figure::chart(panel, path, title, "labels", x_range.clone(), span, 0.05)?;
        for (s, curve) in curves.iter().enumerate() {
            let color = figure::color(s);
            let band: Vec<(f64, f64)> = curve
                .iter()
                .map(|(x, m, sd)| (*x, m + sd))
                .chain(curve.iter().rev().map(|(x, m, sd)| (*x, m - sd)))
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(band, color.mix(0.15).filled())))
                .map_err(|e| figure::failure(path, e))?;
            chart
                .draw_series(LineSeries::new(
                    curve.iter().map(|(x, m, _)| (*x, *m)),
                    color.stroke_width(2),
                ))
                .map_err(|e| figure::failure(path, e))?;
        }
    }
    root.present().map_err(|e| figure::failure(path, e))
}

/// Each column of the n × d row-major `x` shifted to mean 0 and scaled to variance 1 (computed
/// in f64); a constant column becomes 0.
pub(crate) fn standardize(mut x: Vec<f32>, n: usize, d: usize) -> Vec<f32> {
    for j in 0..d {
        let column = || x.iter().skip(j).step_by(d).take(n).map(|&v| f64::from(v));
        let mean = column().sum::<f64>() / n.max(1) as f64;
        let var = column().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n.max(1) as f64;
        let scale = if var > 0.0 { 1.0 / var.sqrt() } else { 0.0 };
        for v in x.iter_mut().skip(j).step_by(d).take(n) {
            *v = ((f64::from(*v) - mean) * scale) as f32;
        }
    }
    x
}
