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

/// Scores `probs` (n × K) against `labels`, with `bins` ECE bins.
///
/// ```
/// use laplace_update::metrics::score;
/// let s = score(&[0.9f64, 0.1, 0.2, 0.8], &[0u8, 0], 2, 15)?;
/// assert_eq!(s.accuracy, 0.5);
/// # Ok::<(), laplace_update::Error>(())
/// ```
pub fn score<T: Scalar, L: Label>(probs: &[T], labels: &[L], classes: usize, bins: usize) -> Result<Scores> {
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
    let mut bin_count = vec![0usize; bins];
    let mut bin_correct = vec![0usize; bins];
    let mut bin_confidence = vec![0.0f64; bins];
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
        let b = ((confidence * bins as f64) as usize).min(bins - 1);
        bin_count[b] += 1;
        bin_correct[b] += usize::from(hit);
        bin_confidence[b] += confidence;
    }
    let ece = (0..bins)
        .filter(|&b| bin_count[b] > 0)
        .map(|b| {
            let count = bin_count[b] as f64;
            (count / n as f64) * (bin_correct[b] as f64 / count - bin_confidence[b] / count).abs()
        })
        .sum();
    Ok(Scores {
        accuracy: correct as f64 / n as f64,
        nll: nll / n as f64,
        ece,
        brier: brier / n as f64,
        confidence: total_confidence / n as f64,
    })
}
