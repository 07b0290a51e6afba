//! The results of a streaming comparison (the demo and the candle example): one row per method
//! and label count, the closing table, a CSV and the accuracy and NLL curves.

use std::ops::Range;
use std::path::Path;

use laplace_update::metrics::Scores;
use laplace_update::{Error, Result};
use plotters::prelude::*;

use super::figure;

/// One method's scores after `labels` labels, and the time it took to fold the last batch in.
pub struct Row {
    pub labels: usize,
    pub method: &'static str,
    pub scores: Scores,
    pub ms: f64,
}

/// Mean time of `method` over the rows after the first `initial` labels.
pub fn mean_ms(table: &[Row], method: &str, initial: usize) -> f64 {
    let times: Vec<f64> = table
        .iter()
        .filter(|r| r.method == method && r.labels > initial)
        .map(|r| r.ms)
        .collect();
    times.iter().sum::<f64>() / times.len().max(1) as f64
}

/// The scores after the last batch, the mean time per batch, and the speed-up over `baseline`
/// (`-` for a method that takes no time).
pub fn print_table(table: &[Row], methods: &[&str], initial: usize, baseline: &str) {
    let last = table.iter().map(|r| r.labels).max().unwrap_or(0);
    let width = methods.iter().map(|m| m.chars().count()).max().unwrap_or(0) + 2;
    let reference = mean_ms(table, baseline, initial);
    println!(
        "{:<width$} {:>9} {:>7} {:>7} {:>10} {:>9}",
        "method", "accuracy", "NLL", "ECE", "ms/batch", "speed-up"
    );
    for method in methods {
        let Some(row) = table.iter().find(|r| r.method == *method && r.labels == last) else {
            continue;
        };
        let ms = mean_ms(table, method, initial);
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

/// Every row as `labels,method,accuracy,nll,ece,ms`.
pub fn write_csv(path: &Path, table: &[Row]) -> Result<()> {
    let mut text = String::from("labels,method,accuracy,nll,ece,ms\n");
    for r in table {
        text.push_str(&format!(
            "{},{},{:.6},{:.6},{:.6},{:.4}\n",
            r.labels, r.method, r.scores.accuracy, r.scores.nll, r.scores.ece, r.ms
        ));
    }
    std::fs::write(path, text).map_err(|e| Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Accuracy and NLL against the labels seen over `x`, one line per method.
pub fn plot(path: &Path, methods: &[&str], table: &[Row], x: Range<f64>) -> Result<()> {
    let (root, panels) = figure::two_panels(path, methods)?;
    for (panel, (title, metric)) in panels.iter().zip([("test accuracy", 0usize), ("test NLL", 1)]) {
        let value = |r: &Row| if metric == 0 { r.scores.accuracy } else { r.scores.nll };
        let span = table
            .iter()
            .map(value)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        let mut chart = figure::chart(panel, path, title, "labels seen", x.clone(), span, 0.08)?;
        for (i, method) in methods.iter().enumerate() {
            let points: Vec<(f64, f64)> = table
                .iter()
                .filter(|r| r.method == *method)
                .map(|r| (r.labels as f64, value(r)))
                .collect();
            chart
                .draw_series(LineSeries::new(points, figure::color(i).stroke_width(2)))
                .map_err(|e| figure::failure(path, e))?;
        }
    }
    root.present().map_err(|e| figure::failure(path, e))
}
