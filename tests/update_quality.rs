//! The update on a head trained to saturation, on real data: the undamped Newton step from
//! confidently wrong new samples wrecks it, the default (damped) update does not.

#[allow(dead_code)]
#[path = "../src/bin/laplace-update/digits.rs"]
mod digits;

use laplace_update::metrics::score;
use laplace_update::random::SplitMix64;
use laplace_update::{
    CpuDevice, FitConfig, HeadConfig, HostMatrix, Link, OutputWeighting, Posterior, PriorShape, Structure,
    UpdateConfig, fit_head,
};

const PIXELS: usize = 64;
const CHUNK: usize = 180;

#[test]
fn damped_update_does_not_lose_accuracy_on_a_saturated_head() {
    let (pixels, labels) = digits::load_digits().unwrap();
    let order = SplitMix64::new(3).permutation(labels.len());
    let rows = |idx: &[usize]| -> (Vec<f64>, Vec<u32>) {
        (
            idx.iter()
                .flat_map(|&i| pixels[i * PIXELS..(i + 1) * PIXELS].iter().map(|&v| f64::from(v)))
                .collect(),
            idx.iter().map(|&i| labels[i]).collect(),
        )
    };
    let (x0, y0) = rows(&order[..CHUNK]);
    let (xb, yb) = rows(&order[CHUNK..2 * CHUNK]);
    let (xt, yt) = rows(&order[2 * CHUNK..]);
    let cpu = CpuDevice::new(0).unwrap();
    // A linear head on the pixels with almost no weight decay: it fits its 180 digits.
    let head = fit_head(
        &cpu,
        HostMatrix::new(&x0, CHUNK, PIXELS).unwrap(),
        &y0,
        digits::CLASSES,
        &HeadConfig {
            prior_precision: 1e-3,
            ..Default::default()
        },
    )
    .unwrap();
    let accuracy = |post: &Posterior<CpuDevice, f64>, x: &[f64], y: &[u32]| {
        let pred = post
            .predict(HostMatrix::new(x, y.len(), PIXELS).unwrap(), Link::None)
            .unwrap();
        score(&pred.probs, y, digits::CLASSES, 15).unwrap().accuracy
    };
    for structure in [
        Structure::Full,
        Structure::Kron,
        Structure::Diag,
        Structure::Shared(OutputWeighting::Gaussian),
    ] {
        let config = FitConfig {
            structure,
            prior_precision: 1e-3,
            ..Default::default()
        };
        let mut start = Posterior::fit(
            &cpu,
            HostMatrix::new(&x0, CHUNK, PIXELS).unwrap(),
            &y0,
            HostMatrix::new(&head.weights, digits::CLASSES, PIXELS).unwrap(),
            Some(&head.bias),
            &config,
        )
        .unwrap();
        start.optimize_prior_precision(PriorShape::Scalar).unwrap();
        assert!(
            accuracy(&start, &x0, &y0) >= 0.99,
            "{structure:?}: the head should fit its data"
        );
        let before = accuracy(&start, &xt, &yt);
        let new = HostMatrix::new(&xb, CHUNK, PIXELS).unwrap();
        let mut damped = start.try_clone().unwrap();
        let report = damped.update(new, &yb, &UpdateConfig::default()).unwrap();
        let after = accuracy(&damped, &xt, &yt);
        assert!(
            report.objective_after > report.objective_before,
            "{structure:?}: {report:?}"
        );
        assert!(after >= before, "{structure:?}: damped {after} < no update {before}");
        if structure == Structure::Full {
            assert!(report.undamped_rejected && report.converged, "{report:?}");
            let mut undamped = start.try_clone().unwrap();
            let report = undamped.update(new, &yb, &UpdateConfig::newton(1.0)).unwrap();
            let lost = accuracy(&undamped, &xt, &yt);
            assert!(report.objective_after < report.objective_before, "{report:?}");
            assert!(
                lost < before - 0.05,
                "the undamped step should lose accuracy here: {lost} vs {before}"
            );
        }
    }
}
