//! The results of a streaming comparison (the demo and the candle example): one row per method
//! and label count, a CSV and the accuracy and NLL curves.

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

/// Every row, with the seed of its run, as `seed,labels,method,accuracy,nll,ece,ms`.
pub fn write_csv(path: &Path, table: &[(u64, &Row)]) -> Result<()> {
    let mut text = String::from("seed,labels,method,accuracy,nll,ece,ms\n");
    for (seed, r) in table {
        text.push_str(&format!(
            "{seed},{},{},{:.6},{:.6},{:.6},{:.4}\n",
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
