//! Fit a Full posterior around a given head, fold in one new sample, and predict.
//!
//! `cargo run --release --example quickstart`

use laplace_update::{CpuDevice, FitConfig, HostMatrix, Link, Posterior, Structure, UpdateConfig};

fn main() -> laplace_update::Result<()> {
    let cpu = CpuDevice::new(0)?;
    let (n, d, k) = (4, 2, 2);
    let phi = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0, -1.0, 0.5];
    let labels = [0u32, 1, 1, 0];
    let head = [0.5f32, -0.5, -0.5, 0.5];
    let config = FitConfig {
        structure: Structure::Full,
        prior_precision: 1.0,
        ..Default::default()
    };
    let mut post = Posterior::fit(
        &cpu,
        HostMatrix::new(&phi, n, d)?,
        &labels,
        HostMatrix::new(&head, k, d)?,
        None,
        &config,
    )?;
    post.update(HostMatrix::new(&[2.0, 0.0], 1, d)?, &[0u32], &UpdateConfig::default())?;
    let pred = post.predict(HostMatrix::new(&[0.3, 0.7], 1, d)?, Link::default())?;
    println!("probabilities {:?}", pred.probs);
    println!("logit covariance {:?}", pred.logit_cov);
    Ok(())
}
