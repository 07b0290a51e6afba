//! The fused operations of the posteriors, one file each, every implementation of an operation in
//! its file.
//!
//! An operation's file holds a trait (its default methods are the composition over the
//! [`Device`](crate::Device) primitives, where one exists), the entry function callers use
//! (it checks the shapes once, then dispatches on the backend's [`Device::Ops`](crate::Device::Ops)),
//! the faer override for [`CpuDevice`](crate::CpuDevice) ([`Faer`]), and the GPU composition for
//! every GPU runtime ([`Kernels`]), which names its kernels in `kernels/<family>.cu` and
//! `shaders/<family>.wgsl`.
//!
//! | file | operations | composition | faer | GPU kernels |
//! |---|---|---|---|---|
//! | [`ggn`] | [`ggn_accumulate`] | ✓ | ✓ | `ggn`, `gemm` |
//! | [`kron`] | [`kron_rows`], [`kron_congruence`], [`kron_products`] | products only | ✓ | `kron`, `gemm` |
//! | [`woodbury`] | [`low_rank_update`] | — | ✓ | `cholesky`, `gemm` |
//! | [`sherman_morrison`] | [`sherman_morrison_sequence`] | the only one, on every backend | — | — |
//! | [`spd_inverse`](mod@spd_inverse) | [`spd_inverse()`] | ✓ (the GPU's) | ✓ | `cholesky`, `gemm` |
//! | [`links`] | [`probit_softmax`], [`monte_carlo_softmax`], [`bridge_dirichlet`] | ✓ (the CPU's) | — | `predictive` |
//! | [`softmax`] | [`softmax_rows`], [`categorical_weights`] | ✓ | softmax only | `predictive` |
//!
//! ```
//! use laplace_update::device::ops;
//! use laplace_update::{CpuDevice, Device};
//! let cpu = CpuDevice::new(1)?;
//! let a = cpu.upload(&[4.0f64, 2.0, 2.0, 3.0], 2, 2)?;
//! let inverse = cpu.download(&ops::spd_inverse(&cpu, &a)?)?;
//! let expected = [0.375, -0.25, -0.25, 0.5]; // [[3, −2], [−2, 4]] / 8
//! assert!(inverse.iter().zip(expected).all(|(x, e)| (x - e).abs() < 1e-12));
//! # Ok::<(), laplace_update::Error>(())
//! ```

pub mod ggn;
pub mod kron;
pub mod links;
pub mod sherman_morrison;
pub mod softmax;
pub mod spd_inverse;
pub mod woodbury;

pub use ggn::{Ggn, ggn_accumulate};
pub use kron::{Kron, kron_congruence, kron_products, kron_rows};
pub use links::{Links, bridge_dirichlet, monte_carlo_softmax, probit_softmax};
pub use sherman_morrison::sherman_morrison_sequence;
pub use softmax::{Softmax, categorical_weights, softmax_rows};
pub use spd_inverse::{SpdInverse, spd_inverse};
pub use woodbury::{Woodbury, low_rank_update};

pub use super::cpu::Faer;
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
pub use super::gpu::Kernels;

/// The compositions over the [`Device`](crate::Device) primitives, on any device, where an
/// operation has one (GGN, Kronecker products, SPD inverse, links, softmax); the device's own
/// implementation otherwise (`kron_rows`, `kron_congruence`, `low_rank_update`). The tests check
/// every backend's overrides against these.
///
/// ```
/// use laplace_update::device::ops::{self, Composed, SpdInverse};
/// use laplace_update::{CpuDevice, Device};
/// let cpu = CpuDevice::new(1)?;
/// let a = cpu.upload(&[4.0f64, 2.0, 2.0, 3.0], 2, 2)?;
/// let faer = cpu.download(&ops::spd_inverse(&cpu, &a)?)?;
/// let composed = cpu.download(&<Composed as SpdInverse<CpuDevice>>::spd_inverse(&cpu, &a)?)?;
/// assert!(faer.iter().zip(&composed).all(|(x, y)| (x - y).abs() < 1e-12));
/// # Ok::<(), laplace_update::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Composed;
