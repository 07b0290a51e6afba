//! A network trained with candle-nn, extended with new labelled digits by Laplace updates of its
//! last layer, against retraining that layer and fine-tuning the whole network.
//!
//! ```sh
//! cargo run --release --features candle --example candle_digits [OUT_DIR]
//! ```
//!
//! A seeded MLP (64 → 128 → 64 → 10, ReLU) is trained on 300 of the bundled digits. Its
//! penultimate activations are the features and its last layer the head of a Full-GGN Laplace
//! posterior, τ by marginal likelihood, its predictive's temperature and probit λ tuned on 300
//! validation digits. Then 10 batches of 30 new labelled digits arrive; after each, every method
//! is scored on the 897 held-out digits: no update; the seed paper's Sequential update
//! (γ = 10); one undamped Newton step; the default (damped) update; retraining the
//! head on every label seen (AdamW, 200 full-batch epochs, from the current head, as the seed
//! paper's code does with RAdam); and fine-tuning the whole network the same way. It prints a
//! table and writes `candle_digits.csv` and `candle_digits.png` to OUT_DIR (default
//! `candle-digits-out`).
//!
//! The features go from candle to the posterior without a copy: `TensorMatrix` borrows the
//! activations' storage.

#[allow(dead_code)]
#[path = "../src/bin/laplace-update/digits.rs"]
mod digits;
#[allow(dead_code)]
#[path = "../src/bin/laplace-update/figure.rs"]
mod figure;
#[path = "support/mlp.rs"]
mod mlp;
#[path = "../src/bin/laplace-update/report.rs"]
mod report;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::Module;
use laplace_update::candle::TensorMatrix;
use laplace_update::metrics::{Scores, score};
use laplace_update::random::SplitMix64;
use laplace_update::{
    CpuDevice, FitConfig, HostMatrix, Posterior, PriorShape, StepControl, Structure, TuneConfig, UpdateConfig,
    UpdateRule,
};
use report::Row;

use digits::load_digits;
use mlp::{AnyResult, CLASSES, FEATURES, HIDDEN, Network, PIXELS, digit_rows, softmax_scores, train};

const INITIAL: usize = 300;
const BATCHES: usize = 10;
const BATCH: usize = 30;
const EPOCHS: usize = 200;
const SEED: u64 = 7;
/// Digits held out to calibrate the predictive on.
const VALIDATION: usize = 300;
/// The prior precision of every weight during training: the head the network ends with is the
/// MAP that the Laplace posterior is built around.
const TAU: f64 = 1.0;

const METHODS: [&str; 6] = [
    "no update",
    "paper rule (γ = 10)",
    "undamped Newton",
    "update (default)",
    "retrain head (AdamW 200)",
    "fine-tune network (AdamW 200)",
];

fn main() -> AnyResult<()> {
    let out_dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "candle-digits-out".into()));
    let started = Instant::now();
    let (pixels, labels) = load_digits()?;
    let n = labels.len();
    let order = SplitMix64::new(SEED).permutation(n);
    let rows = |idx: &[usize]| digit_rows(&pixels, &labels, idx);
    let stream_end = INITIAL + BATCHES * BATCH;
    let (x_val, y_val) = rows(&order[stream_end..stream_end + VALIDATION])?;
    let (x_test, y_test) = rows(&order[stream_end + VALIDATION..])?;
    let (x0, y0) = rows(&order[..INITIAL])?;
    let target = |y: &[u32]| Tensor::new(y, &Device::Cpu);

    // The network, trained on the initial digits.
    let t = Instant::now();
    let net = Network::new(SEED)?;
    train(net.vars.clone(), 1e-2, EPOCHS, TAU, || net.logits(&x0), &target(&y0)?)?;
    let train_ms = t.elapsed().as_secs_f64() * 1e3;
    let base = softmax_scores(&net.logits(&x_test)?, &y_test)?;
    println!(
        "network: {PIXELS} → {HIDDEN} → {FEATURES} → {CLASSES} MLP, trained on {INITIAL} digits in {train_ms:.0} ms \
         ({EPOCHS} AdamW epochs); test accuracy {:.3}, NLL {:.3}",
        base.accuracy, base.nll
    );

    // The posterior over its head, from the penultimate features (borrowed, not copied).
    let cpu = CpuDevice::new(0)?;
    let (w, b) = net.head()?;
    let phi0 = net.features(&x0)?;
    let phi0 = TensorMatrix::<f32>::new(&phi0)?;
    assert!(phi0.is_borrowed());
    let config = FitConfig {
        structure: Structure::Full,
        prior_precision: TAU,
        ..Default::default()
    };
    let t = Instant::now();
    let mut start = Posterior::fit(
        &cpu,
        phi0.view(),
        &y0,
        HostMatrix::new(&w, CLASSES, FEATURES)?,
        Some(&b),
        &config,
    )?;
    let tau = start.optimize_prior_precision(PriorShape::Scalar)?[0];
    let fit_ms = t.elapsed().as_secs_f64() * 1e3;
    // The predictive calibrated on validation digits: a temperature and the probit's λ, with τ
    // kept (it sets how far updates move the head).
    let phi_val = net.features(&x_val)?;
    let phi_val = TensorMatrix::<f32>::new(&phi_val)?;
    let calibrate = TuneConfig {
        prior: false,
        temperature: true,
        lambda: true,
        ..Default::default()
    };
    let report = start.tune_prior_precision(phi_val.view(), &y_val, &calibrate)?;
    println!(
        "Laplace posterior (Full GGN, bias in the posterior): τ = {tau:.3} by marginal likelihood, {fit_ms:.1} ms; \
         on {VALIDATION} validation digits T = {:.3}, λ = {:.4}",
        report.temperature,
        report.link.lambda().unwrap_or(0.0)
    );

    let phi_test = net.features(&x_test)?;
    let phi_test = TensorMatrix::<f32>::new(&phi_test)?;
    let evaluate = |post: &Posterior<CpuDevice, f32>| -> AnyResult<Scores> {
        let pred = post.predict(phi_test.view(), post.calibration().link)?;
        Ok(score(&pred.probs, &y_test, CLASSES, 15)?)
    };
    let updates = [
        (1, UpdateRule::Sequential, StepControl::newton(StepControl::PAPER_GAMMA)),
        (2, UpdateRule::Joint, StepControl::newton(1.0)),
        (3, UpdateRule::Joint, StepControl::default()),
    ];
    let mut posts: Vec<Posterior<CpuDevice, f32>> = (0..updates.len())
        .map(|_| start.try_clone())
        .collect::<laplace_update::Result<_>>()?;
    let retrained = net.duplicate()?;
    let tuned = net.duplicate()?;

    let mut table = Vec::new();
    let initial = evaluate(&start)?;
    for method in &METHODS {
        let scores = if method.starts_with("retrain") || method.starts_with("fine-tune") {
            base
        } else {
            initial
        };
        table.push(Row {
            labels: INITIAL,
            method,
            scores,
            ms: 0.0,
        });
    }
    for batch in 0..BATCHES {
        let seen = INITIAL + (batch + 1) * BATCH;
        let (xb, yb) = rows(&order[seen - BATCH..seen])?;
        let (x_all, y_all) = rows(&order[..seen])?;
        let mut push = |method: &'static str, scores: Scores, ms: f64| {
            table.push(Row {
                labels: seen,
                method,
                scores,
                ms,
            })
        };
        push(METHODS[0], initial, 0.0);
        let phi_b = net.features(&xb)?;
        let phi_b = TensorMatrix::<f32>::new(&phi_b)?;
        for (&(m, rule, step), post) in updates.iter().zip(posts.iter_mut()) {
            let update = UpdateConfig {
                rule,
                step,
                ..Default::default()
            };
            let t = Instant::now();
            post.update(phi_b.view(), &yb, &update)?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            push(METHODS[m], evaluate(post)?, ms);
        }
        // Retraining the head on the fixed features of every label seen.
        let t = Instant::now();
        let phi_all = net.features(&x_all)?;
        let head = &retrained.layers[2];
        train(
            retrained.vars[4..].to_vec(),
            1e-2,
            EPOCHS,
            TAU,
            || head.forward(&phi_all),
            &target(&y_all)?,
        )?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        push(
            METHODS[4],
            softmax_scores(&head.forward(&net.features(&x_test)?)?, &y_test)?,
            ms,
        );
        // Fine-tuning every layer on every label seen.
        let t = Instant::now();
        train(
            tuned.vars.clone(),
            1e-3,
            EPOCHS,
            TAU,
            || tuned.logits(&x_all),
            &target(&y_all)?,
        )?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        push(METHODS[5], softmax_scores(&tuned.logits(&x_test)?, &y_test)?, ms);
        println!("batch {}/{BATCHES}: {seen} labels", batch + 1);
    }

    let last = INITIAL + BATCHES * BATCH;
    println!(
        "\nafter {last} labels ({BATCHES} batches of {BATCH}), {} held-out digits:\n",
        y_test.len()
    );
    print_table(&table, &METHODS, INITIAL, METHODS[4]);
    std::fs::create_dir_all(&out_dir)?;
    let seeded: Vec<(u64, &Row)> = table.iter().map(|row| (0, row)).collect();
    report::write_csv(&out_dir.join("candle_digits.csv"), &seeded)?;
    report::plot(
        &out_dir.join("candle_digits.png"),
        &METHODS,
        &table,
        INITIAL as f64..last as f64,
    )?;
    println!(
        "wrote {}/candle_digits.csv and .png in {:.1} s",
        out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The scores after the last batch, the mean time per batch, and the speed-up over `baseline`
/// (`-` for a method that takes no time).
fn print_table(table: &[Row], methods: &[&str], initial: usize, baseline: &str) {
    let last = table.iter().map(|r| r.labels).max().unwrap_or(0);
    let width = methods.iter().map(|m| m.chars().count()).max().unwrap_or(0) + 2;
    let reference = report::mean_ms(table, baseline, initial);
    println!(
        "{:<width$} {:>9} {:>7} {:>7} {:>10} {:>9}",
        "method", "accuracy", "NLL", "ECE", "ms/batch", "speed-up"
    );
    for method in methods {
        let Some(row) = table.iter().find(|r| r.method == *method && r.labels == last) else {
            continue;
        };
        let ms = report::mean_ms(table, method, initial);
        // A method that takes no measurable time (no update) has no speed-up to show.
        let speedup = if ms >= 0.01 {
            format!("{:.0}x", reference / ms)
        } else {
            "-".into()
        };
        println!(
            "{:<width$} {:>9.3} {:>7.3} {:>7.3} {:>10.2} {:>9}",
            method, row.scores.accuracy, row.scores.nll, row.scores.ece, ms, speedup
        );
    }
    println!();
}
