//! A fit split over shards, as a map-reduce engine would run it: each shard accumulates its
//! curvature around the same head and saves it; the partial sums are merged and finished with a
//! prior chosen by the marginal likelihood.
//!
//! `cargo run --release --example sharded_fit`

use laplace_update::io::{load_accumulator, save_accumulator};
use laplace_update::random::SplitMix64;
use laplace_update::{
    CpuDevice, CurvatureAccumulator, FitConfig, HeadConfig, HostMatrix, Link, PriorShape, Structure, fit_head,
};

fn main() -> laplace_update::Result<()> {
    let cpu = CpuDevice::new(0)?;
    let (n, d, k, shards) = (4_000, 64, 5, 4);
    let mut rng = SplitMix64::new(1);
    let x: Vec<f32> = rng.normals(n * d).into_iter().map(|v| (v / 8.0) as f32).collect();
    let labels: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
    // The head every shard shares (here fitted on the first shard; in practice the trained network's).
    let head = fit_head(
        &cpu,
        HostMatrix::new(&x[..1000 * d], 1000, d)?,
        &labels[..1000],
        k,
        &HeadConfig::default(),
    )?;
    let config = FitConfig {
        structure: Structure::Diag,
        ..Default::default()
    };
    let dir = std::env::temp_dir().join("laplace-sharded-fit");
    std::fs::create_dir_all(&dir).map_err(|e| laplace_update::Error::Io {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    // Map: one partial accumulator per shard, written to disk.
    let rows = n / shards;
    for s in 0..shards {
        let mut acc =
            CurvatureAccumulator::new(&cpu, HostMatrix::new(&head.weights, k, d)?, Some(&head.bias), &config)?;
        let part = &x[s * rows * d..(s + 1) * rows * d];
        acc.accumulate(HostMatrix::new(part, rows, d)?, &labels[s * rows..(s + 1) * rows])?;
        save_accumulator(&acc, &dir.join(format!("shard-{s}.safetensors")))?;
    }
    // Reduce: merge the partial sums anywhere, then finish with a prior.
    let mut total: CurvatureAccumulator<_, f32> = load_accumulator(&cpu, &dir.join("shard-0.safetensors"), 4096)?;
    for s in 1..shards {
        total.merge(&load_accumulator(
            &cpu,
            &dir.join(format!("shard-{s}.safetensors")),
            4096,
        )?)?;
    }
    let mut post = total.into_posterior(1.0)?;
    let tau = post.optimize_prior_precision(PriorShape::PerClass)?;
    let evidence = post.log_marginal_likelihood(HostMatrix::new(&x, n, d)?, &labels)?;
    let pred = post.predict(HostMatrix::new(&x[..d], 1, d)?, Link::default())?;
    println!(
        "{} samples from {shards} shards; τ per class {tau:.3?}; log evidence {evidence:.1}",
        post.samples_seen()
    );
    println!("first sample: p = {:.3?}", pred.probs);
    Ok(())
}
