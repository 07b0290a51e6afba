//! `evaluate`: the predictive's quality on labelled data beside the network's own softmax (the
//! posterior mean's, at T = 1): accuracy, NLL, ECE, Brier score and mean confidence, as a table,
//! a CSV and a reliability diagram.

use std::path::{Path, PathBuf};

use clap::Args;
use laplace_update::io::load_posterior;
use laplace_update::metrics::{Bin, Scores, evaluate};
use laplace_update::{Calibration, Device, Error, HostMatrix, Likelihood, Link, Posterior, Result, Scalar};
use plotters::prelude::*;

use super::figure;
use super::{DeviceArg, LinkArgs};

#[derive(Args)]
pub struct EvaluateArgs {
    /// Posterior file.
    #[arg(long)]
    pub posterior: PathBuf,
    /// Features, n × D.
    #[arg(long)]
    pub features: String,
    /// Labels, n integers in 0..K.
    #[arg(long)]
    pub labels: String,
    #[command(flatten)]
    pub link: LinkArgs,
    /// Equal-width confidence bins of the ECE and the diagram.
    #[arg(long, default_value_t = 15)]
    bins: usize,
    /// Write the reliability diagram (PNG).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write the metrics as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
}

/// One evaluated predictive: its name, scores and bins.
struct Row {
    name: String,
    scores: Scores,
    bins: Vec<Bin>,
}

pub fn run<D: Device, T: Scalar>(device: &D, args: &EvaluateArgs) -> Result<()> {
    if args.bins == 0 {
        return Err(Error::invalid("bins", "must be at least 1"));
    }
    let mut post: Posterior<D, T> = load_posterior(device, &args.posterior)?;
    if post.likelihood() != Likelihood::Classification {
        return Err(Error::Unsupported("evaluating a regression posterior".into()));
    }
    let (phi, n, d) = super::inputs::take(&args.features)?.into_matrix::<T>()?;
    let labels = super::inputs::array(&args.labels)?.to_labels()?;
    let features = HostMatrix::new(&phi, n, d)?;
    let link = args.link.apply(&mut post)?;
    let k = post.classes();
    let laplace = post.predict(features, link)?;
    let temperature = post.calibration().temperature;
    let network = post.predict_calibrated(
        features,
        Calibration {
            temperature: 1.0,
            link: Link::None,
        },
    )?;
    let row = |name: String, probs: &[T]| -> Result<Row> {
        let (scores, bins) = evaluate(probs, &labels, k, args.bins)?;
        Ok(Row { name, scores, bins })
    };
    let rows = [
        row(
            format!("Laplace ({}, T = {temperature:.3})", link.name()),
            &laplace.probs,
        )?,
        row("network (softmax of the mean)".into(), &network.probs)?,
    ];
    println!(
        "{:<36} {:>9} {:>8} {:>8} {:>8} {:>11}",
        "predictive", "accuracy", "NLL", "ECE", "Brier", "confidence"
    );
    for r in &rows {
        let s = &r.scores;
        println!(
            "{:<36} {:>9.4} {:>8.4} {:>8.4} {:>8.4} {:>11.4}",
            r.name, s.accuracy, s.nll, s.ece, s.brier, s.confidence
        );
    }
    if let Some(path) = &args.csv {
        let mut text = String::from("predictive,accuracy,nll,ece,brier,confidence\n");
        for r in &rows {
            let s = &r.scores;
            text += &format!(
                "{},{},{},{},{},{}\n",
                r.name.replace(',', ";"),
                s.accuracy,
                s.nll,
                s.ece,
                s.brier,
                s.confidence
            );
        }
        std::fs::write(path, text).map_err(|e| figure::failure(path, e))?;
    }
    if let Some(path) = &args.plot {
        plot(path, &rows, n)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The reliability diagram: accuracy against mean confidence per bin, beside the diagonal of
/// perfect calibration (left), and the share of inputs in each bin (right).
fn plot(path: &Path, rows: &[Row], n: usize) -> Result<()> {
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let (root, panels) = figure::two_panels(path, &names)?;
    let fail = |e: &dyn std::fmt::Display| figure::failure(path, e);
    let bins = rows[0].bins.len();
    let width = 1.0 / bins as f64;
    let mut chart = ChartBuilder::on(&panels[0])
        .caption("reliability", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("confidence")
        .y_desc("accuracy")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| fail(&e))?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (1.0, 1.0)],
            BLACK.mix(0.4).stroke_width(1),
        ))
        .map_err(|e| fail(&e))?;
    for (i, r) in rows.iter().enumerate() {
        let points = r
            .bins
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| (b.confidence(), b.accuracy()));
        let color = figure::color(i);
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))
            .map_err(|e| fail(&e))?;
        chart
            .draw_series(points.map(|p| Circle::new(p, 4, color.filled())))
            .map_err(|e| fail(&e))?;
    }
    let top = rows
        .iter()
        .flat_map(|r| r.bins.iter().map(|b| b.count as f64 / n as f64))
        .fold(0.0, f64::max);
    let mut chart = ChartBuilder::on(&panels[1])
        .caption("inputs per confidence bin", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..1.0, 0.0..(top * 1.05).max(1e-3))
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("confidence")
        .y_desc("share of inputs")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, r) in rows.iter().enumerate() {
        // Side by side within each bin, one bar per predictive.
        let share = width / rows.len() as f64;
        let color = figure::color(i);
        chart
            .draw_series(r.bins.iter().enumerate().map(|(b, bin)| {
                let x0 = b as f64 * width + i as f64 * share;
                Rectangle::new(
                    [(x0, 0.0), (x0 + share * 0.9, bin.count as f64 / n as f64)],
                    color.filled(),
                )
            }))
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))
}
