//! Calibration of the Laplace predictive on the bundled digits: the network's own softmax, the
//! network with a temperature tuned on validation data, and the Laplace predictive with τ by
//! marginal likelihood (alone, or with the temperature and the probit's λ tuned on validation
//! data) or by validation (with and without a temperature; the largest τ within one standard
//! error of the best, and for the centred probit also the best τ itself), for the probit and
//! the centred probit, on held-out test digits.
//!
//! ```sh
//! cargo run --release --features candle,cli --example calibration [SEEDS]
//! ```
//!
//! Per seed, the digits are split 50% train, 20% validation, 30% test, and a seeded MLP
//! (64 → 128 → 64 → 10) is trained on the train split twice: regularised (weight decay as a
//! prior of precision 1, 300 epochs) and to saturation (precision 10⁻², 1,000 epochs). Its
//! last layer is the head of a Full posterior. The table is the mean over seeds of test
//! accuracy, NLL and ECE (15 bins).

#[allow(dead_code)]
#[path = "support/mlp.rs"]
mod mlp;

use candle_core::{Device, Tensor};
use laplace_update::candle::TensorMatrix;
use laplace_update::metrics::{Scores, score};
use laplace_update::random::SplitMix64;
use laplace_update::{
    Calibration, CpuDevice, FitConfig, HostMatrix, Link, Posterior, PriorShape, Structure, TuneConfig, TuneSelection,
};
use mlp::{AnyResult, CLASSES, FEATURES, Network, digit_rows, train};

#[allow(dead_code)]
#[path = "../src/bin/laplace-update/digits.rs"]
mod digits;

fn main() -> AnyResult<()> {
    let seeds: u64 = std::env::args().nth(1).map_or(Ok(3), |s| s.parse())?;
    let (pixels, labels) = digits::load_digits()?;
    let cpu = CpuDevice::new(0)?;
    let mut rows: Vec<(String, Vec<Scores>)> = Vec::new();
    for seed in 0..seeds {
        for (network, tau, epochs) in [("regularised", 1.0, 300), ("saturated", 1e-2, 1000)] {
            for (method, scores) in run(&cpu, seed, &pixels, &labels, tau, epochs)? {
                let name = format!("{network}: {method}");
                match rows.iter_mut().find(|r| r.0 == name) {
                    Some(row) => row.1.push(scores),
                    None => rows.push((name, vec![scores])),
                }
            }
        }
    }
    println!("\ntest accuracy / NLL / ECE, mean over {seeds} seeds:\n");
    println!("{:<58} {:>8} {:>8} {:>8}", "method", "accuracy", "NLL", "ECE");
    for (name, scores) in &rows {
        let mean = |f: fn(&Scores) -> f64| scores.iter().map(f).sum::<f64>() / scores.len() as f64;
        println!(
            "{name:<58} {:>8.4} {:>8.4} {:>8.4}",
            mean(|s| s.accuracy),
            mean(|s| s.nll),
            mean(|s| s.ece)
        );
    }
    Ok(())
}

/// One seed and network: every method's test scores.
fn run(
    cpu: &CpuDevice,
    seed: u64,
    pixels: &[f32],
    labels: &[u32],
    tau: f64,
    epochs: usize,
) -> AnyResult<Vec<(String, Scores)>> {
    let n = labels.len();
    let order = SplitMix64::new(0xCA1 ^ seed).permutation(n);
    let rows = |idx: &[usize]| digit_rows(pixels, labels, idx);
    let (train_end, val_end) = (n / 2, n / 2 + n / 5);
    let (x_train, y_train) = rows(&order[..train_end])?;
    let (x_val, y_val) = rows(&order[train_end..val_end])?;
    let (x_test, y_test) = rows(&order[val_end..])?;
    let net = Network::new(seed)?;
    train(
        net.vars.clone(),
        1e-2,
        epochs,
        tau,
        || net.logits(&x_train),
        &Tensor::new(y_train.as_slice(), &Device::Cpu)?,
    )?;
    let features = |x: &Tensor| -> AnyResult<Tensor> { Ok(net.features(x)?) };
    let (phi_train, phi_val, phi_test) = (features(&x_train)?, features(&x_val)?, features(&x_test)?);
    let (phi_train, phi_val, phi_test) = (
        TensorMatrix::<f32>::new(&phi_train)?,
        TensorMatrix::<f32>::new(&phi_val)?,
        TensorMatrix::<f32>::new(&phi_test)?,
    );
    let (w, b) = net.head()?;
    let fit = |structure: Structure| -> AnyResult<Posterior<CpuDevice, f32>> {
        let config = FitConfig {
            structure,
            prior_precision: tau,
            ..Default::default()
        };
        let head = HostMatrix::new(&w, CLASSES, FEATURES)?;
        Ok(Posterior::fit(
            cpu,
            phi_train.view(),
            &y_train,
            head,
            Some(&b),
            &config,
        )?)
    };
    let fitted = fit(Structure::Full)?;
    let test = |post: &Posterior<CpuDevice, f32>, link: Link| -> AnyResult<Scores> {
        let pred = post.predict(phi_test.view(), link)?;
        Ok(score(&pred.probs, &y_test, CLASSES, 15)?)
    };
    let probit = Link::Probit {
        lambda: Link::PROBIT_LAMBDA,
    };
    let centred = Link::CentredProbit {
        lambda: Link::PROBIT_LAMBDA,
    };
    let mut out = Vec::new();
    out.push(("network (MAP softmax)".to_string(), test(&fitted, Link::None)?));
    let mut scaled = fitted.try_clone()?;
    let tuned = TuneConfig {
        link: Link::None,
        temperature: true,
        ..Default::default()
    };
    scaled.tune_prior_precision(phi_val.view(), &y_val, &tuned)?;
    out.push((
        "network + temperature (validation)".to_string(),
        test(&scaled, Link::None)?,
    ));
    let mut marglik = fitted.try_clone()?;
    marglik.optimize_prior_precision(PriorShape::Scalar)?;
    out.push((
        "Laplace, τ by marginal likelihood, probit".into(),
        test(&marglik, probit)?,
    ));
    out.push((
        "Laplace, τ by marginal likelihood, centred probit".into(),
        test(&marglik, centred)?,
    ));
    let mut marglik_t = marglik.try_clone()?;
    marglik_t.tune_prior_precision(
        phi_val.view(),
        &y_val,
        &TuneConfig {
            prior: false,
            temperature: true,
            lambda: true,
            ..Default::default()
        },
    )?;
    let link = marglik_t.calibration().link;
    out.push((
        "Laplace, τ by m. l., T and λ by validation".into(),
        test(&marglik_t, link)?,
    ));
    for (link, name, selection) in [
        (probit, "probit", TuneSelection::Auto),
        (centred, "centred probit", TuneSelection::Auto),
        (centred, "centred, best τ", TuneSelection::Best),
    ] {
        for temperature in [false, true] {
            let mut post = fitted.try_clone()?;
            let report = post.tune_prior_precision(
                phi_val.view(),
                &y_val,
                &TuneConfig {
                    link,
                    temperature,
                    selection,
                    ..Default::default()
                },
            )?;
            let label = format!(
                "Laplace, τ{} by validation, {name}",
                if temperature { " and T" } else { "" }
            );
            eprintln!(
                "seed {seed}, τ = {tau}: {label}: τ = {:.3e}, T = {:.3}",
                report.prior_precision, report.temperature
            );
            debug_assert_eq!(
                post.calibration(),
                Calibration {
                    temperature: report.temperature,
                    link
                }
            );
            out.push((label, test(&post, link)?));
        }
    }
    // A Diag posterior, one τ for all classes or one per class, by validation.
    let diag = fit(Structure::Diag)?;
    for per_class in [false, true] {
        let mut post = diag.try_clone()?;
        let report = post.tune_prior_precision(
            phi_val.view(),
            &y_val,
            &TuneConfig {
                link: probit,
                per_class,
                ..Default::default()
            },
        )?;
        eprintln!(
            "seed {seed}, τ = {tau}: Diag τ per class {per_class}: {:?}",
            report.class_prior_precision.unwrap_or(vec![report.prior_precision])
        );
        let label = match per_class {
            false => "Laplace Diag, τ by validation, probit",
            true => "Laplace Diag, τ per class by validation, probit",
        };
        out.push((label.into(), test(&post, probit)?));
    }
    Ok(out)
}
