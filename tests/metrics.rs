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
