//! The Rust side of the Python package's per-call overhead: one small Joint update (each on a
//! fresh copy read from the posterior's bytes) and one prediction (K = 10, D = 64, Full, f64, a posterior fitted on 500 samples), each the median
//! of 2,000 calls. `python/examples/call_overhead.py` times the same calls through the package.
//!
//! `cargo run --release --no-default-features --example call_overhead`

use std::time::Instant;

use laplace_update::{CpuDevice, FitConfig, HostMatrix, Link, Posterior, Structure, UpdateConfig};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> laplace_update::Result<()> {
    let (n, d, k) = (500, 64, 10);
    let mut state = 7u64;
    let mut uniform = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let x: Vec<f64> = (0..n * d).map(|_| uniform()).collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % k as u32).collect();
    let head: Vec<f64> = (0..k * d).map(|_| 0.1 * uniform()).collect();
    let cpu = CpuDevice::new(0)?;
    let config = FitConfig {
        structure: Structure::Full,
        ..Default::default()
    };
    let post = Posterior::fit(
        &cpu,
        HostMatrix::new(&x, n, d)?,
        &labels,
        HostMatrix::new(&head, k, d)?,
        None,
        &config,
    )?;
    let (one, label) = (HostMatrix::new(&x[..d], 1, d)?, [labels[0]]);
    // Each update on a fresh copy read from the posterior's bytes, as the Python twin does; the
    // predictions in a loop of their own, so that both languages see the same caches.
    let blob = laplace_update::io::posterior_to_bytes(&post)?;
    let mut update = Vec::new();
    let mut predict = Vec::new();
    for _ in 0..2000 {
        let mut p: Posterior<CpuDevice, f64> = laplace_update::io::posterior_from_bytes(&cpu, &blob)?;
        let t = Instant::now();
        p.update(one, &label, &UpdateConfig::default())?;
        update.push(t.elapsed().as_secs_f64());
    }
    for _ in 0..2000 {
        let t = Instant::now();
        std::hint::black_box(post.predict(one, Link::default())?);
        predict.push(t.elapsed().as_secs_f64());
    }
    println!(
        "rust: update {:.1} µs, predict {:.1} µs (median of 2,000; K={k} D={d} Full f64)",
        median(update) * 1e6,
        median(predict) * 1e6
    );
    Ok(())
}
