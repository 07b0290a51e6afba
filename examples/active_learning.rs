//! Pool-based active learning with update-driven selection: each round picks a batch by margin,
//! folding every pick into a copy of the posterior before choosing the next.
//!
//! `cargo run --release --example active_learning`

use laplace_update::active::{LabelSource, Pool, Strategy, UpdateDriven};
use laplace_update::metrics::score;
use laplace_update::random::SplitMix64;
use laplace_update::{
    CpuDevice, FitConfig, HeadConfig, HostMatrix, Link, OutputWeighting, Posterior, Structure, UpdateConfig, fit_head,
};

fn main() -> laplace_update::Result<()> {
    let cpu = CpuDevice::new(0)?;
    let (d, k) = (16, 4);
    let mut rng = SplitMix64::new(3);
    // Four Gaussian classes in 16 dimensions.
    let centers: Vec<f64> = rng.normals(k * d);
    let sample = |rng: &mut SplitMix64, c: usize| -> Vec<f32> {
        rng.normals(d)
            .iter()
            .zip(&centers[c * d..(c + 1) * d])
            .map(|(z, m)| (m + 0.8 * z) as f32)
            .collect()
    };
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..600 {
        x.extend(sample(&mut rng, i % k));
        y.push((i % k) as u32);
    }
    let (test_x, test_y) = (x[400 * d..].to_vec(), y[400..].to_vec());
    let mut labeled: Vec<usize> = (0..8).collect();
    let mut pool: Vec<usize> = (8..400).collect();
    for round in 0..5 {
        let gather = |idx: &[usize]| -> (Vec<f32>, Vec<u32>) {
            (
                idx.iter()
                    .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
                    .collect(),
                idx.iter().map(|&i| y[i]).collect(),
            )
        };
        let (lx, ly) = gather(&labeled);
        let head = fit_head(&cpu, HostMatrix::new(&lx, ly.len(), d)?, &ly, k, &HeadConfig::default())?;
        let config = FitConfig {
            structure: Structure::Shared(OutputWeighting::Gaussian),
            ..Default::default()
        };
        let post = Posterior::fit(
            &cpu,
            HostMatrix::new(&lx, ly.len(), d)?,
            &ly,
            HostMatrix::new(&head.weights, k, d)?,
            Some(&head.bias),
            &config,
        )?;
        let pred = post.predict(HostMatrix::new(&test_x, test_y.len(), d)?, Link::default())?;
        let s = score(&pred.probs, &test_y, k, 15)?;
        println!(
            "round {round}: {} labels, test accuracy {:.3}, NLL {:.3}",
            labeled.len(),
            s.accuracy,
            s.nll
        );
        let (px, py) = gather(&pool);
        let candidates = Pool {
            candidates: HostMatrix::new(&px, pool.len(), d)?,
            labeled: HostMatrix::new(&lx, ly.len(), d)?,
        };
        let select = UpdateDriven {
            base: Strategy::Margin,
            labels: LabelSource::Oracle(&py),
            update: UpdateConfig::default(),
        };
        let mut picks = select.select(&post, &candidates, 8, round)?;
        picks.sort_unstable_by(|a, b| b.cmp(a));
        for p in picks {
            labeled.push(pool.remove(p));
        }
    }
    Ok(())
}
