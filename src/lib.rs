//! # laplace-update
//!
//! Closed-form Bayesian updates of a trained network's last layer. Hand the library the
//! penultimate features Φ and the linear head (W, b); it fits a Laplace posterior over the head
//! and folds new labelled samples in with one Newton step, the inverse Hessian coming from
//! Sherman–Morrison and Woodbury updates, instead of retraining.
//!
//! The method is from Huseljic et al., "Efficient Bayesian Updates for Deep Learning via Laplace
//! Approximations" (arXiv 2210.06112).
//!
//! - [`Device`]: device-resident buffers and every kernel; [`CpuDevice`] (faer) is the reference.
//! - [`Posterior`]: `Full`, `Shared`, `Diag` and `Kron` structures; classification and
//!   regression; GGN, empirical and Monte Carlo Fisher curvature. [`Posterior::fit`],
//!   [`Posterior::update`], [`Posterior::unlearn`], [`Posterior::predict`],
//!   [`Posterior::log_marginal_likelihood`], [`Posterior::optimize_prior_precision`],
//!   [`Posterior::drift`], [`Posterior::refresh`].
//! - [`CurvatureAccumulator`]: fits sharded over machines, merged, finished anywhere.
//! - [`fit_map_head`] ([`fit_head`], [`fit_head_gaussian`]): the MAP head, when there is none.
//! - [`Error`]: one typed error enum for everything.
//! - `candle` (feature `candle`): candle tensors as inputs, contiguous CPU tensors borrowed in
//!   place.
//!
//! ```
//! use laplace_update::{CpuDevice, FitConfig, HostMatrix, Link, Posterior, UpdateConfig, UpdateRule};
//! let cpu = CpuDevice::new(0)?;
//! let (n, d, k) = (6, 3, 3);
//! let phi: Vec<f32> = (0..n * d).map(|i| ((i * 7) % 5) as f32 / 5.0 - 0.4).collect();
//! let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
//! let head = vec![0.1f32; k * d];
//! let mut post = Posterior::fit(&cpu, HostMatrix::new(&phi, n, d)?, &labels,
//!                               HostMatrix::new(&head, k, d)?, None, &FitConfig::default())?;
//! let rule = UpdateConfig { rule: UpdateRule::Sequential, ..Default::default() };
//! post.update(HostMatrix::new(&phi[..d], 1, d)?, &[2u32], &rule)?;
//! let pred = post.predict(HostMatrix::new(&phi, n, d)?, Link::default())?;
//! assert_eq!(pred.probs.len(), n * k);
//! # Ok::<(), laplace_update::Error>(())
//! ```

#![warn(missing_docs)]

pub mod active;
#[cfg(feature = "candle")]
pub mod candle;
pub mod device;
pub mod error;
pub mod host;
pub mod interrupt;
pub mod io;
pub mod memory;
pub mod metrics;
mod numerics;
pub mod posterior;
pub mod profile;
pub mod random;
pub mod scalar;

#[cfg(feature = "cuda")]
pub use device::cuda::{CudaDevice, CudaOptions};
#[cfg(feature = "cuda-emu")]
pub use device::cuda::{CudaEmuDevice, CudaEmuOptions};
pub use device::{
    AnyDevice, AutoChoice, CpuDevice, Device, DeviceBuffer, LowRankFactor, Matrix, Op, OutputWeighting, Sign,
};
#[cfg(feature = "wgpu")]
pub use device::{WgpuDevice, WgpuOptions};
pub use error::{Error, Result};
pub use host::{HostMatrix, Label, Targets};
pub use posterior::{
    BiasMode, Calibration, Curvature, CurvatureAccumulator, CurvatureAt, Features, FitConfig, HeadConfig, HeadFit,
    HeadSolver, HeadTargets, Likelihood, Link, Posterior, Prediction, PriorShape, RefreshPolicy, StepControl,
    Structure, TuneConfig, TuneMetric, TuneReport, TuneSelection, UnlearnConfig, UpdateConfig, UpdateReport,
    UpdateRule, fit_head, fit_head_gaussian, fit_map_head,
};
pub use scalar::{DType, Scalar};

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
