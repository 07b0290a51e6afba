//! Scores against values worked out by hand.

use laplace_update::metrics::score;

#[test]
fn accuracy_nll_and_ece_match_hand_computation() {
    // Confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.55 (wrong), each alone in its bin.
    let probs = [0.9, 0.1, 0.8, 0.2, 0.3, 0.7, 0.45, 0.55];
    let labels = [0u8, 1, 1, 0];
    let s = score(&probs, &labels, 2, 10).unwrap();
    assert_eq!(s.accuracy, 0.5);
    let nll = -(0.9f64.ln() + 0.2f64.ln() + 0.7f64.ln() + 0.45f64.ln()) / 4.0;
    assert!((s.nll - nll).abs() < 1e-12);
    assert!((s.ece - (0.1 + 0.8 + 0.3 + 0.55) / 4.0).abs() < 1e-12);
    // One bin: |accuracy − mean confidence|.
    let one = score(&probs, &labels, 2, 1).unwrap();
    assert!((one.ece - (0.5f64 - (0.9 + 0.8 + 0.7 + 0.55) / 4.0).abs()).abs() < 1e-12);
}

#[test]
fn bad_inputs_are_typed_errors() {
    assert!(score::<f64, u8>(&[], &[], 2, 10).is_err());
    assert!(score(&[0.5f64, 0.5], &[2u8], 2, 10).is_err());
    assert!(score(&[0.5f64, 0.5], &[0u8], 2, 0).is_err());
    assert!(score(&[0.5f64, 0.5, 0.1], &[0u8], 2, 10).is_err());
}

/// Brier score, mean confidence and the reliability bins against a direct computation over
/// seeded rows of 5 classes.
#[test]
fn brier_confidence_and_bins_match_direct_loops() {
    let (n, k, bins) = (200, 5, 15);
    let mut rng = laplace_update::random::SplitMix64::new(11);
    let mut probs = Vec::with_capacity(n * k);
    for _ in 0..n {
        let row: Vec<f64> = (0..k).map(|_| (3.0 * rng.uniform()).exp()).collect();
        let total: f64 = row.iter().sum();
        probs.extend(row.iter().map(|v| v / total));
    }
    let labels: Vec<u32> = (0..n).map(|i| ((i * 7) % k) as u32).collect();
    let (scores, diagram) = laplace_update::metrics::evaluate(&probs, &labels, k, bins).unwrap();
    let (mut brier, mut confidence) = (0.0, 0.0);
    let mut count = vec![0usize; bins];
    let mut correct = vec![0usize; bins];
    let mut sums = vec![0.0; bins];
    for i in 0..n {
        let row = &probs[i * k..(i + 1) * k];
        let y = labels[i] as usize;
        for (c, p) in row.iter().enumerate() {
            let t = if c == y { 1.0 } else { 0.0 };
            brier += (p - t) * (p - t);
        }
        let top = (0..k).fold(0, |b, c| if row[c] > row[b] { c } else { b });
        confidence += row[top];
        let b = ((row[top] * bins as f64).floor() as usize).min(bins - 1);
        count[b] += 1;
        correct[b] += usize::from(top == y);
        sums[b] += row[top];
    }
    assert!((scores.brier - brier / n as f64).abs() < 1e-12);
    assert!((scores.confidence - confidence / n as f64).abs() < 1e-12);
    let ece: f64 = (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| count[b] as f64 / n as f64 * (correct[b] as f64 / count[b] as f64 - sums[b] / count[b] as f64).abs())
        .sum();
    assert!((scores.ece - ece).abs() < 1e-12);
    for b in 0..bins {
        assert_eq!(
            (diagram[b].count, diagram[b].correct),
            (count[b], correct[b]),
            "bin {b}"
        );
        assert!((diagram[b].confidence_sum - sums[b]).abs() < 1e-12);
    }
}
