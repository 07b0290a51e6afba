//! Active learning with Bayesian updates.
//!
//! - [`Strategy`]: Random, Entropy, Margin, LeastConfidence, BALD, BADGE, BAIT, CoreSet and
//!   TypiClust, each selecting a batch from a [`Pool`] given a posterior.
//! - [`UpdateDriven`]: the seed paper's batch selection: select one candidate, update a copy of
//!   the posterior with it (label from a [`LabelSource`]), rescore, repeat.
//! - [`LookAhead`]: the seed paper's look-ahead baseline, with the [`UpdateMethod`]s it is
//!   compared with (Laplace update, first-order step, Monte Carlo reweighting, MAP refit).
//!
//! ```
//! use laplace_update::active::{LabelSource, Pool, Strategy, UpdateDriven};
//! use laplace_update::{CpuDevice, FitConfig, HostMatrix, Posterior, UpdateConfig};
//! let cpu = CpuDevice::new(1)?;
//! let x = [1.0f64, 0.0, 0.0, 1.0, 0.5, 0.5, -1.0, 0.2];
//! let post = Posterior::fit(&cpu, HostMatrix::new(&x[..4], 2, 2)?, &[0u8, 1],
//!                           HostMatrix::new(&[1.0, -1.0, -1.0, 1.0], 2, 2)?, None, &FitConfig::default())?;
//! let pool = Pool { candidates: HostMatrix::new(&x[4..], 2, 2)?, labeled: HostMatrix::new(&x[..4], 2, 2)? };
//! let margin = Strategy::Margin.select(&post, &pool, 1, 0)?;
//! let driven = UpdateDriven { base: Strategy::Margin, labels: LabelSource::Expected, update: UpdateConfig::default() };
//! assert_eq!(driven.select(&post, &pool, 1, 0)?, margin); // b = 1: the base strategy's choice
//! # Ok::<(), laplace_update::Error>(())
//! ```

pub mod cluster;
mod lookahead;
mod strategy;
mod update_driven;

pub use lookahead::{Labelled, LookAhead, UpdateMethod, negative_log_likelihood, updated_probabilities};
pub use strategy::{Pool, Strategy, entropy, top};
pub use update_driven::{LabelSource, UpdateDriven};
