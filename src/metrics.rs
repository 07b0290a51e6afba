//! Predictive quality of class probabilities: accuracy, negative log-likelihood, expected
//! calibration error, Brier score, mean confidence.

use crate::error::{Error, Result};
use crate::host::{Label, check_labels};
use crate::scalar::Scalar;

/// Accuracy, mean NLL, ECE, Brier score and mean confidence of `probs` (n × K, row-major) against `labels`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    /// Fraction of rows whose argmax is the label.
    pub accuracy: f64,
    /// `−(1/n) Σ_n log p_n[y_n]`, with probabilities floored at 1e-12.
    pub nll: f64,
    /// Expected calibration error over `bins` equal-width confidence bins:
    /// `Σ_b (|B_b|/n) |acc(B_b) − conf(B_b)|`.
    pub ece: f64,
    /// Mean Brier score `(1/n) Σ_n Σ_k (p_nk − [k = y_n])²`.
    pub brier: f64,
    /// Mean confidence `(1/n) Σ_n max_k p_nk`.
    pub confidence: f64,
}

/// One equal-width confidence bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Bin {
    /// Rows whose confidence `max_k p_nk` falls in the bin.
    pub count: usize,
    /// Of those, the rows whose argmax is the label.
    pub correct: usize,
    /// The sum of their confidences.
    pub confidence_sum: f64,
}

impl Bin {
    /// The bin's accuracy (0 when empty).
    pub fn accuracy(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.correct as f64 / self.count as f64
        }
    }

    /// The bin's mean confidence (0 when empty).
    pub fn confidence(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.confidence_sum / self.count as f64
        }
    }
}

/// Scores `probs` (n × K) against `labels`, with `bins` ECE bins.
///
/// ```
/// use laplace_update::metrics::score;
/// let s = score(&[0.9f64, 0.1, 0.2, 0.8], &[0u8, 0], 2, 15)?;
/// assert_eq!(s.accuracy, 0.5);
/// # Ok::<(), laplace_update::Error>(())
/// ```
pub fn score<T: Scalar, L: Label>(probs: &[T], labels: &[L], classes: usize, bins: usize) -> Result<Scores> {
    Ok(evaluate(probs, labels, classes, bins)?.0)
}

/// [`score`] and the reliability diagram's `bins` equal-width confidence bins, from one pass.
///
/// ```
/// use laplace_update::metrics::evaluate;
/// let (scores, bins) = evaluate(&[0.9f64, 0.1, 0.2, 0.8], &[0u8, 0], 2, 10)?;
/// // Confidences 0.9 (label 0: right) and 0.8 (label 0: wrong) in bins 9 and 8.
/// assert_eq!((bins[9].count, bins[9].correct, bins[8].count, bins[8].correct), (1, 1, 1, 0));
/// assert!((scores.confidence - 0.85).abs() < 1e-12);
/// # Ok::<(), laplace_update::Error>(())
/// ```
pub fn evaluate<T: Scalar, L: Label>(
    probs: &[T],
    labels: &[L],
    classes: usize,
    bins: usize,
) -> Result<(Scores, Vec<Bin>)> {
    let n = labels.len();
    if n == 0 {
        return Err(Error::EmptyBatch { argument: "labels" });
    }
    if bins == 0 {
        return Err(Error::invalid("bins", "must be at least 1"));
    }
    if probs.len() != n * classes {
        return Err(Error::shape(
            "probs",
            (n, classes),
            (probs.len() / classes.max(1), classes),
        ));
    }
    check_labels(labels, n, classes)?;
    let (mut correct, mut nll, mut brier, mut total_confidence) = (0usize, 0.0f64, 0.0f64, 0.0f64);
    let mut diagram = vec![Bin::default(); bins];
    for (i, label) in labels.iter().enumerate() {
        let row = &probs[i * classes..(i + 1) * classes];
        let y = label.to_i64() as usize;
        let (best, confidence) = row.iter().enumerate().fold((0, f64::NEG_INFINITY), |(bi, bv), (c, v)| {
            if v.as_f64() > bv { (c, v.as_f64()) } else { (bi, bv) }
        });
        let hit = best == y;
        correct += usize::from(hit);
        nll += crate::numerics::label_nll(row[y].as_f64());
        brier += row
            .iter()
            .enumerate()
            .map(|(c, p)| (p.as_f64() - f64::from(u8::from(c == y))).powi(2))
            .sum::<f64>();
        total_confidence += confidence;
        let bin = &mut diagram[((confidence * bins as f64) as usize).min(bins - 1)];
        bin.count += 1;
        bin.correct += usize::from(hit);
        bin.confidence_sum += confidence;
    }
    let ece = diagram
        .iter()
        .map(|b| (b.count as f64 / n as f64) * (b.accuracy() - b.confidence()).abs())
        .sum();
    let scores = Scores {
        accuracy: correct as f64 / n as f64,
        nll: nll / n as f64,
        ece,
        brier: brier / n as f64,
        confidence: total_confidence / n as f64,
    };
    Ok((scores, diagram))
}
