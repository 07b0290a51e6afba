//! The main job on real data: start from a head fitted on a few labelled digits, then fold in
//! new labelled batches by closed-form Laplace updates, and compare with retraining the head on
//! everything seen, for accuracy and time.
//!
//! `cargo run --release --example digits`
//!
//! Data: the UCI optical digits test set (1797 images of 8×8 pixels, 10 classes), bundled in
//! `data/digits.csv.gz`. Features are the pixels scaled to [0, 1]; the bias is in the posterior.

use std::io::Read;
use std::time::Instant;

use laplace_update::{
    BiasMode, CpuDevice, Device, FitConfig, HostMatrix, Link, Posterior, Structure, UpdateConfig, UpdateRule,
};

const D: usize = 64;
const K: usize = 10;

fn load_digits() -> Result<(Vec<f32>, Vec<u32>), Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits.csv.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path)?).read_to_string(&mut text)?;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Vec<f32> = line.split(',').map(|t| t.trim().parse()).collect::<Result<_, _>>()?;
        if v.len() != D + 1 {
            return Err(format!("expected {} columns, got {}", D + 1, v.len()).into());
        }
        x.extend(v[..D].iter().map(|p| p / 16.0));
        y.push(v[D] as u32);
    }
    Ok((x, y))
}

/// Test accuracy and mean negative log-likelihood of the probit predictive.
fn evaluate(post: &Posterior<CpuDevice, f32>, x: &[f32], y: &[u32]) -> Result<(f64, f64), laplace_update::Error> {
    let pred = post.predict(HostMatrix::new(x, y.len(), D)?, Link::default())?;
    let (mut correct, mut nll) = (0usize, 0.0f64);
    for (i, &label) in y.iter().enumerate() {
        let p = &pred.probs[i * K..(i + 1) * K];
        let best = (0..K).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
        correct += usize::from(best == label as usize);
        nll -= f64::from(p[label as usize].max(1e-12)).ln();
    }
    Ok((correct as f64 / y.len() as f64, nll / y.len() as f64))
}

/// MAP head and Laplace posterior from the prior by Newton's method: the retraining baseline.
fn train(cpu: &CpuDevice, x: &[f32], y: &[u32]) -> Result<Posterior<CpuDevice, f32>, laplace_update::Error> {
    let config = FitConfig {
        structure: Structure::Full,
        prior_precision: 1.0,
        bias: BiasMode::InPosterior,
        ..Default::default()
    };
    let mut post = Posterior::prior(cpu, HostMatrix::new(&[0.0; K * D], K, D)?, None, &config)?;
    let newton = UpdateConfig {
        rule: UpdateRule::Joint,
        gamma: 1.0,
        iterations: 12,
    };
    post.update(HostMatrix::new(x, y.len(), D)?, y, &newton)?;
    Ok(post)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (x, y) = load_digits()?;
    let n = y.len();
    // A seeded shuffle, then: 100 to start from, 1200 arriving in 12 batches, the rest to test.
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = 42u64;
    for i in (1..n).rev() {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    let take = |idx: &[usize]| -> (Vec<f32>, Vec<u32>) {
        (
            idx.iter()
                .flat_map(|&i| x[i * D..(i + 1) * D].iter().copied())
                .collect(),
            idx.iter().map(|&i| y[i]).collect(),
        )
    };
    let (start_x, start_y) = take(&order[..100]);
    let (stream_x, stream_y) = take(&order[100..1300]);
    let (test_x, test_y) = take(&order[1300..]);

    let cpu = CpuDevice::new(0)?;
    println!(
        "laplace-update demo on {} ({} digits, D = {D} + bias, K = {K}, Full posterior, f32)",
        cpu.name(),
        n
    );
    let t = Instant::now();
    let mut post = train(&cpu, &start_x, &start_y)?;
    let (acc, nll) = evaluate(&post, &test_x, &test_y)?;
    println!(
        "head trained on 100 digits in {:.1} ms: test accuracy {:.3}, NLL {:.3}",
        ms(t),
        acc,
        nll
    );

    println!("\n{:>6} {:>10} {:>10} {:>8}", "seen", "update ms", "accuracy", "NLL");
    let mut update_total = 0.0;
    let batch = 100;
    for b in 0..stream_y.len() / batch {
        let xb = &stream_x[b * batch * D..(b + 1) * batch * D];
        let yb = &stream_y[b * batch..(b + 1) * batch];
        let t = Instant::now();
        post.update(HostMatrix::new(xb, batch, D)?, yb, &UpdateConfig::default())?;
        let elapsed = ms(t);
        update_total += elapsed;
        let (acc, nll) = evaluate(&post, &test_x, &test_y)?;
        println!(
            "{:>6} {:>10.2} {:>10.3} {:>8.3}",
            post.samples_seen(),
            elapsed,
            acc,
            nll
        );
    }

    let (all_x, all_y) = take(&order[..1300]);
    let t = Instant::now();
    let retrained = train(&cpu, &all_x, &all_y)?;
    let retrain_ms = ms(t);
    let (acc_r, nll_r) = evaluate(&retrained, &test_x, &test_y)?;
    let (acc_u, nll_u) = evaluate(&post, &test_x, &test_y)?;
    println!(
        "\n{:<34} {:>10} {:>10} {:>8}",
        "after 1300 samples", "time ms", "accuracy", "NLL"
    );
    println!(
        "{:<34} {:>10.1} {:>10.3} {:>8.3}",
        "12 Laplace updates (Joint, γ = 1)", update_total, acc_u, nll_u
    );
    println!(
        "{:<34} {:>10.1} {:>10.3} {:>8.3}",
        "retrain on all (12 Newton steps)", retrain_ms, acc_r, nll_r
    );
    println!(
        "\nan update costs {:.1}% of a retrain",
        100.0 * update_total / 12.0 / retrain_ms
    );
    Ok(())
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
