//! The links from a logit mean f and covariance Σ_f to class probabilities:
//! the probit `softmax(f_k / √(1 + λ Σ_f[k,k]))`, Monte Carlo `mean_s softmax(f + L ε_s)`, and
//! the normalised Laplace bridge. Σ_f is dense (n × K²), isotropic (n × 1) or diagonal (n × K).
//!
//! | implementation | how |
//! |---|---|
//! | composition ([`Links`]' default; the CPU's) | row by row on the host, in parallel, in f64 |
//! | GPU ([`Kernels`]) | `kernels/predictive.cu`, `shaders/predictive.wgsl`: `Probit`, `MonteCarlo` (samples split over launches), `Bridge` |

use rayon::prelude::*;

#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use super::Kernels;
use super::{Composed, Faer};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::gpu::{Args, GpuDevice, GpuMatrix, Grid, Kernel, Record, Runtime, raw};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::registry::{PredictiveFlag, PredictiveParams, field};
use crate::device::{CovLayout, CpuDevice, Device, Matrix, cov_layout};
use crate::error::{Error, Result};
use crate::numerics::{psd_cholesky, psd_pivot_floor, softmax};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::scalar::DType;
use crate::scalar::Scalar;

/// The links of a backend; the default is the host composition.
pub trait Links<D: Device> {
    /// [`probit_softmax`] on the host.
    fn probit_softmax<T: Scalar>(dev: &D, mean: &Matrix<D, T>, cov: &Matrix<D, T>, lambda: T) -> Result<Matrix<D, T>> {
        let lambda = lambda.as_f64();
        map_rows(dev, mean, cov, |f, sigma| {
            let k = f.len();
            let scaled: Vec<f64> = (0..k)
                .map(|a| f[a] / (1.0 + lambda * sigma.diag(a, k).max(0.0)).sqrt())
                .collect();
            softmax(&scaled)
        })
    }

    /// [`monte_carlo_softmax`] on the host.
    fn monte_carlo_softmax<T: Scalar>(
        dev: &D,
        mean: &Matrix<D, T>,
        cov: &Matrix<D, T>,
        eps: &Matrix<D, T>,
    ) -> Result<Matrix<D, T>> {
        let samples = eps.rows();
        eps.expect_shape("eps", samples, mean.cols())?;
        if samples == 0 {
            return Err(Error::invalid("samples", "at least one Monte Carlo sample is required"));
        }
        let eps: Vec<f64> = dev.download(eps)?.iter().map(|x| x.as_f64()).collect();
        map_rows(dev, mean, cov, |f, sigma| {
            let mut acc = vec![0.0f64; f.len()];
            sigma.for_each_draw(f, &eps, |z| {
                acc.iter_mut().zip(softmax(z)).for_each(|(x, p)| *x += p);
            });
            acc.iter().map(|x| x / samples as f64).collect()
        })
    }

    /// [`bridge_dirichlet`] on the host.
    fn bridge_dirichlet<T: Scalar>(dev: &D, mean: &Matrix<D, T>, cov: &Matrix<D, T>) -> Result<Matrix<D, T>> {
        map_rows(dev, mean, cov, laplace_bridge)
    }
}

/// Mean-field probit: `p_nk = softmax_k(f_nk / √(1 + λ Σ_f[n,k,k]))`. `cov` is n × K², n × K
/// for a diagonal Σ_f, or n × 1 for an isotropic `v_n I`.
///
/// Errors: `ShapeMismatch` (Σ_f neither n × K², n × K nor n × 1).
pub fn probit_softmax<D: Device, T: Scalar>(
    dev: &D,
    mean: &Matrix<D, T>,
    cov: &Matrix<D, T>,
    lambda: T,
) -> Result<Matrix<D, T>> {
    cov_layout(mean, cov)?;
    <D::Ops as Links<D>>::probit_softmax(dev, mean, cov, lambda)
}

/// Monte Carlo link: `p_n = (1/S) Σ_s softmax(f_n + L_n ε_s)` with `L_n L_nᵀ = Σ_f[n]`, a
/// Cholesky factor in which pivots that are not positive count as zero, so semidefinite
/// covariances (rank K − 1 is usual for softmax) are fine. `cov` as in [`probit_softmax`];
/// `eps` is S × K.
///
/// Errors: `ShapeMismatch`, `InvalidArgument` (no draws).
pub fn monte_carlo_softmax<D: Device, T: Scalar>(
    dev: &D,
    mean: &Matrix<D, T>,
    cov: &Matrix<D, T>,
    eps: &Matrix<D, T>,
) -> Result<Matrix<D, T>> {
    cov_layout(mean, cov)?;
    <D::Ops as Links<D>>::monte_carlo_softmax(dev, mean, cov, eps)
}

/// Laplace bridge to a Dirichlet (Hobbhahn et al. 2022), normalised as in their paper and in
/// laplace-torch's `bridge_norm`, returning the Dirichlet mean `α / Σα` per row. Per row:
/// zero-mean correction `f ← f − s (1ᵀf)/S`, `Σ ← Σ − s sᵀ/S` (`s = Σ 1`, `S = 1ᵀΣ1`); with
/// `d = diag Σ` and `c = mean(d)/√(K/2)`: `f ← f/√c`, `d ← d/c`; then
/// `α_k = (1 − 2/K + e^{f_k} Σ_l e^{−f_l} / K²) / d_k`. Where the corrected variance vanishes
/// the bridge is undefined and the row is `softmax(f)`. `cov` as in [`probit_softmax`].
///
/// Errors: `ShapeMismatch`.
pub fn bridge_dirichlet<D: Device, T: Scalar>(
    dev: &D,
    mean: &Matrix<D, T>,
    cov: &Matrix<D, T>,
) -> Result<Matrix<D, T>> {
    cov_layout(mean, cov)?;
    <D::Ops as Links<D>>::bridge_dirichlet(dev, mean, cov)
}

/// One input's logit covariance Σ_f (K × K) as its structure stores it, so that a link costs
/// O(K) per input unless Σ_f is dense.
pub(crate) enum LogitCov<'a> {
    /// The K × K matrix, row-major.
    Full(&'a [f64]),
    /// `v I_K`.
    Isotropic(f64),
    /// `diag(d)`.
    Diagonal(&'a [f64]),
}

impl LogitCov<'_> {
    /// `Σ_f[a, a]`.
    fn diag(&self, a: usize, k: usize) -> f64 {
        match self {
            LogitCov::Full(c) => c[a * k + a],
            LogitCov::Isotropic(v) => *v,
            LogitCov::Diagonal(d) => d[a],
        }
    }

    /// `Σ_b Σ_f[a, b]`.
    fn row_sum(&self, a: usize, k: usize) -> f64 {
        match self {
            LogitCov::Full(c) => c[a * k..(a + 1) * k].iter().sum(),
            _ => self.diag(a, k),
        }
    }

    /// `f + L e` for each standard-normal draw e (rows of `eps`, K wide), `L Lᵀ = Σ_f` the
    /// lower Cholesky factor with pivots at rounding level counted as zero
    /// ([`psd_cholesky`]); O(K) per draw unless Σ_f is dense.
    fn for_each_draw(&self, f: &[f64], eps: &[f64], mut draw: impl FnMut(&[f64])) {
        let k = f.len();
        let mut z = vec![0.0; k];
        match self {
            LogitCov::Full(c) => {
                let mut l = c.to_vec();
                psd_cholesky(&mut l, k);
                for e in eps.chunks_exact(k) {
                    for a in 0..k {
                        z[a] = f[a] + (0..=a).map(|b| l[a * k + b] * e[b]).sum::<f64>();
                    }
                    draw(&z);
                }
            }
            _ => {
                let d: Vec<f64> = (0..k).map(|a| self.diag(a, k)).collect();
                let floor = psd_pivot_floor(&d);
                let l: Vec<f64> = d.iter().map(|&v| if v > floor { v.sqrt() } else { 0.0 }).collect();
                for e in eps.chunks_exact(k) {
                    for a in 0..k {
                        z[a] = f[a] + l[a] * e[a];
                    }
                    draw(&z);
                }
            }
        }
    }
}

/// Applies a link to every input on the host, in parallel: `link(f, Σ_f)` gets the logit mean
/// (K, f64) and the logit covariance as `cov` stores it (dense n × K², isotropic n × 1 or
/// diagonal n × K) and returns the K probabilities.
fn map_rows<D: Device, T: Scalar>(
    dev: &D,
    mean: &Matrix<D, T>,
    cov: &Matrix<D, T>,
    link: impl Fn(&[f64], &LogitCov<'_>) -> Vec<f64> + Sync,
) -> Result<Matrix<D, T>> {
    let layout = cov_layout(mean, cov)?;
    let (n, k) = mean.shape();
    let cw = cov.cols();
    // Read in place where the device's buffers are host memory.
    let (mean_copy, cov_copy);
    let (mean_h, cov_h) = match (dev.host_slice(mean), dev.host_slice(cov)) {
        (Some(m), Some(c)) => (m, c),
        _ => {
            (mean_copy, cov_copy) = (dev.download(mean)?, dev.download(cov)?);
            (&mean_copy[..], &cov_copy[..])
        }
    };
    let mut out = vec![T::zero(); n * k];
    if k > 0 {
        out.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
            let c: Vec<f64> = cov_h[i * cw..(i + 1) * cw].iter().map(|x| x.as_f64()).collect();
            let sigma = match layout {
                CovLayout::Full => LogitCov::Full(&c),
                CovLayout::Isotropic => LogitCov::Isotropic(c[0]),
                CovLayout::Diagonal => LogitCov::Diagonal(&c),
            };
            let f: Vec<f64> = mean_h[i * k..(i + 1) * k].iter().map(|x| x.as_f64()).collect();
            row.iter_mut()
                .zip(link(&f, &sigma))
                .for_each(|(o, p)| *o = T::from_f64(p));
        });
    }
    dev.upload_owned(out, n, k)
}

/// The normalised Laplace bridge of one row (see [`bridge_dirichlet`]), in f64, with the
/// Dirichlet parameters handled in log space so that large logits cannot overflow.
fn laplace_bridge(f: &[f64], sigma: &LogitCov<'_>) -> Vec<f64> {
    let k = f.len();
    let kf = k as f64;
    let row_sums: Vec<f64> = (0..k).map(|a| sigma.row_sum(a, k)).collect();
    let total: f64 = row_sums.iter().sum();
    let (mut mu, mut diag) = (f.to_vec(), (0..k).map(|a| sigma.diag(a, k)).collect::<Vec<f64>>());
    if total > 0.0 {
        let f_sum: f64 = f.iter().sum();
        for a in 0..k {
            mu[a] -= row_sums[a] * f_sum / total;
            diag[a] -= row_sums[a] * row_sums[a] / total;
        }
    }
    let mean_diag = diag.iter().sum::<f64>() / kf / (kf / 2.0).sqrt();
    if mean_diag.is_nan() || mean_diag <= 0.0 || diag.iter().any(|d| d.is_nan() || *d <= 0.0) {
        return softmax(f);
    }
    mu.iter_mut().for_each(|m| *m /= mean_diag.sqrt());
    diag.iter_mut().for_each(|d| *d /= mean_diag);
    // log Σ_l e^{−μ_l}
    let max_neg = mu.iter().fold(f64::NEG_INFINITY, |m, x| m.max(-x));
    let lse_neg = max_neg + mu.iter().map(|x| (-x - max_neg).exp()).sum::<f64>().ln();
    let base = 1.0 - 2.0 / kf;
    let log_alpha: Vec<f64> = (0..k)
        .map(|a| {
            let t = mu[a] + lse_neg - 2.0 * kf.ln();
            let log_num = if base > 0.0 {
                t.max(base.ln()) + (-(t - base.ln()).abs()).exp().ln_1p()
            } else {
                t
            };
            log_num - diag[a].ln()
        })
        .collect();
    softmax(&log_alpha)
}

impl<D: Device> Links<D> for Composed {}

impl Links<CpuDevice> for Faer {}

#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
impl<Rt: Runtime> Links<GpuDevice<Rt>> for Kernels {
    /// [`probit_softmax`].
    fn probit_softmax<T: Scalar>(
        dev: &GpuDevice<Rt>,
        mean: &GpuMatrix<Rt, T>,
        cov: &GpuMatrix<Rt, T>,
        lambda: T,
    ) -> Result<GpuMatrix<Rt, T>> {
        link(dev, Kernel::Probit, mean, cov, None, lambda.as_f64())
    }

    /// [`monte_carlo_softmax`].
    fn monte_carlo_softmax<T: Scalar>(
        dev: &GpuDevice<Rt>,
        mean: &GpuMatrix<Rt, T>,
        cov: &GpuMatrix<Rt, T>,
        eps: &GpuMatrix<Rt, T>,
    ) -> Result<GpuMatrix<Rt, T>> {
        let samples = eps.rows();
        eps.expect_shape("eps", samples, mean.cols())?;
        if samples == 0 {
            return Err(Error::invalid("samples", "at least one Monte Carlo sample is required"));
        }
        link(dev, Kernel::MonteCarlo, mean, cov, Some(eps), 0.0)
    }

    /// [`bridge_dirichlet`].
    fn bridge_dirichlet<T: Scalar>(
        dev: &GpuDevice<Rt>,
        mean: &GpuMatrix<Rt, T>,
        cov: &GpuMatrix<Rt, T>,
    ) -> Result<GpuMatrix<Rt, T>> {
        link(dev, Kernel::Bridge, mean, cov, None, 0.0)
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
/// Records one of the row-wise link kernels on `args`: `(first, last, samples)` is the Monte
/// Carlo sample range of this launch.
pub(super) fn record_link<R: Clone>(
    rec: &mut impl Record<Raw = R>,
    dtype: DType,
    kernel: Kernel,
    args: Args<R>,
    (n, k, layout): (usize, usize, CovLayout),
    (first, last, samples): (usize, usize, usize),
    lambda: f64,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let flags = PredictiveFlag::when(&[
        (first == 0, PredictiveFlag::FirstLaunch),
        (last == samples, PredictiveFlag::LastLaunch),
    ]);
    let params = PredictiveParams {
        n: field(n),
        k: field(k),
        cov_layout: layout.code(),
        samples: field(samples),
        first: field(first),
        last: field(last),
        flags,
        lambda,
        ..Default::default()
    };
    rec.launch(kernel, dtype, params.into(), args, Grid::Threads(n))
}

/// A link from logit mean and covariance to probabilities, on a new n × K matrix. Monte Carlo
/// samples are split into launches of about the policy's loop iterations per row.
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
fn link<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    kernel: Kernel,
    mean: &GpuMatrix<Rt, T>,
    cov: &GpuMatrix<Rt, T>,
    eps: Option<&GpuMatrix<Rt, T>>,
    lambda: f64,
) -> Result<GpuMatrix<Rt, T>> {
    let layout = cov_layout(mean, cov)?;
    let (n, k) = mean.shape();
    let out = dev.zeros::<T>(n, k)?;
    let scratch_len = match kernel {
        Kernel::MonteCarlo => n * (k * k + 2 * k),
        Kernel::Bridge => n * 2 * k,
        _ => 0,
    };
    let scratch = dev.scratch::<T>(scratch_len, "link scratch")?;
    let mut rec = dev.recorder();
    let samples = eps.map_or(0, |e| e.rows());
    let per_sample = k * (k + 1) / 2 + 3 * k + 1;
    let chunk = dev.policy().samples_per_launch(per_sample);
    let mut first = 0;
    loop {
        let last = (first + chunk).min(samples);
        record_link(
            &mut rec,
            T::DTYPE,
            kernel,
            Args::Link {
                mean: raw(mean),
                cov: raw(cov),
                eps: eps.map(raw),
                out: raw(&out),
                scratch: scratch.clone(),
            },
            (n, k, layout),
            (first, last, samples),
            lambda,
        )?;
        first = last;
        if first >= samples {
            break;
        }
    }
    rec.submit()?;
    Ok(out)
}
