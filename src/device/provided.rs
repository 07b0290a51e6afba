//! The provided methods of [`Device`]: each fused operation written once over the storage
//! methods and the primitives, so that a backend implements only those and overrides an
//! operation where it has a faster kernel (the GPU runtimes override all of these with kernel
//! compositions; the CPU backend overrides the GGN accumulation and the Woodbury products with
//! fused faer code and uses the links as they are here).
//!
//! - the links ([`probit_softmax`], [`monte_carlo_softmax`], [`bridge_dirichlet`]),
//!   [`softmax_rows`] and [`categorical_weights`]: row by row on the host, in parallel, in f64;
//! - [`ggn_accumulate`]: the factor rows `(Rᵀ s_{n,c}) ⊗ φ_n` of the softmax GGN by
//!   [`Device::kron_rows`], folded in by [`Device::weighted_syrk`] in passes of bounded size;
//! - [`spd_inverse`]: Cholesky, a triangular solve on the identity, and a SYRK;
//! - [`sherman_morrison_sequence`]: the Shared structure's sequential loop, blocked by 64 samples;
//! - [`kron_products`]: the Woodbury products `(ΣB, BᵀΣB)` by two gemms on `Bᵀ`, built by
//!   [`Device::kron_rows`] (Full) or by scaling Φ's rows (Shared).
//!
//! The factors `s_{n,c} = √p_c (e_c − p_n)` are the columns of `S_n = diag(√p_n) − p_n √p_nᵀ`,
//! `S_n S_nᵀ = Λ_n = diag(p_n) − p_n p_nᵀ`.

use rayon::prelude::*;

use super::{CovLayout, Device, LowRankFactor, Matrix, Op, cov_layout, ggn_shapes};
use crate::error::{Error, Result};
use crate::numerics::{psd_cholesky, psd_pivot_floor, softmax};
use crate::scalar::Scalar;

pub use super::sherman_morrison::blocked as sherman_morrison_sequence;

/// [`Device::spd_inverse`]: `L = chol(A)`, `X = L⁻¹` by [`Device::triangular_solve`] on the
/// identity, `A⁻¹ = XᵀX` by [`Device::weighted_syrk`], so the result is exactly symmetric.
pub fn spd_inverse<D: Device, T: Scalar>(dev: &D, a: &Matrix<D, T>) -> Result<Matrix<D, T>> {
    let n = a.expect_square("a")?;
    let mut l = dev.copy(a)?;
    dev.cholesky(&mut l)?;
    let mut x = dev.zeros(n, n)?;
    dev.add_diagonal(&mut x, T::one())?;
    dev.triangular_solve(&l, &mut x, Op::N)?;
    let mut out = dev.zeros(n, n)?;
    dev.weighted_syrk(&mut out, T::zero(), &x, None, T::one())?;
    Ok(out)
}

/// Elements of factor rows one pass of [`ggn_accumulate`] builds.
const FACTOR_ROWS_ELEMENTS: usize = 1 << 24;

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

/// [`Device::probit_softmax`] on the host.
pub fn probit_softmax<D: Device, T: Scalar>(
    dev: &D,
    mean: &Matrix<D, T>,
    cov: &Matrix<D, T>,
    lambda: T,
) -> Result<Matrix<D, T>> {
    let lambda = lambda.as_f64();
    map_rows(dev, mean, cov, |f, sigma| {
        let k = f.len();
        let scaled: Vec<f64> = (0..k)
            .map(|a| f[a] / (1.0 + lambda * sigma.diag(a, k).max(0.0)).sqrt())
            .collect();
        softmax(&scaled)
    })
}

/// [`Device::monte_carlo_softmax`] on the host.
pub fn monte_carlo_softmax<D: Device, T: Scalar>(
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

/// [`Device::bridge_dirichlet`] on the host.
pub fn bridge_dirichlet<D: Device, T: Scalar>(
    dev: &D,
    mean: &Matrix<D, T>,
    cov: &Matrix<D, T>,
) -> Result<Matrix<D, T>> {
    map_rows(dev, mean, cov, laplace_bridge)
}

/// [`Device::softmax_rows`] on the host.
pub fn softmax_rows<D: Device, T: Scalar>(dev: &D, logits: &mut Matrix<D, T>) -> Result<()> {
    let (n, k) = logits.shape();
    if k == 0 {
        return Ok(());
    }
    let mut host = dev.download(logits)?;
    host.par_chunks_mut(k).for_each(crate::numerics::softmax_in_place);
    *logits = dev.upload_owned(host, n, k)?;
    Ok(())
}

/// [`Device::categorical_weights`] on the host.
pub fn categorical_weights<D: Device, T: Scalar>(dev: &D, probs: &Matrix<D, T>) -> Result<Matrix<D, T>> {
    let (n, k) = probs.shape();
    let host = dev.download(probs)?;
    let out = (0..n)
        .map(|i| {
            let pmax = host[i * k..(i + 1) * k].iter().fold(T::zero(), |a, &b| a.max(b));
            pmax * (T::one() - pmax)
        })
        .collect();
    dev.upload_owned(out, n, 1)
}

/// The factor rows `s_{n,c}ᵀ R` (K' wide, R the K × K' basis or the identity) for the samples of
/// `probs` (row-major, K wide): `rows · K` rows, sample-major.
fn softmax_factor_rows<T: Scalar>(probs: &[T], k: usize, basis: Option<(&[f64], usize)>) -> Vec<T> {
    let kr = basis.map_or(k, |b| b.1);
    let mut out = Vec::with_capacity(probs.len() * kr);
    let mut s = vec![0.0f64; k];
    for p in probs.chunks_exact(k) {
        for c in 0..k {
            let root = p[c].as_f64().max(0.0).sqrt();
            s.iter_mut()
                .enumerate()
                .for_each(|(a, v)| *v = root * (f64::from(u8::from(a == c)) - p[a].as_f64()));
            match basis {
                None => out.extend(s.iter().map(|&v| T::from_f64(v))),
                Some((r, kr)) => {
                    out.extend((0..kr).map(|j| T::from_f64((0..k).map(|a| r[a * kr + j] * s[a]).sum::<f64>())))
                }
            }
        }
    }
    out
}

/// [`Device::ggn_accumulate`] over [`Device::kron_rows`] and [`Device::weighted_syrk`]:
/// `Π += α (rows)ᵀ(rows)` for the rows `(Rᵀ s_{n,c}) ⊗ φ_n`, in passes of at most 2²⁴ factor
/// row elements.
pub fn ggn_accumulate<D: Device, T: Scalar>(
    dev: &D,
    precision: &mut Matrix<D, T>,
    phi: &Matrix<D, T>,
    probs: &Matrix<D, T>,
    basis: Option<&Matrix<D, T>>,
    alpha: T,
) -> Result<()> {
    let (n, d, k, kr, p) = ggn_shapes(precision, phi, probs, basis)?;
    if n == 0 || p == 0 {
        return Ok(());
    }
    let phi_h = dev.download(phi)?;
    let probs_h = dev.download(probs)?;
    let basis_h: Option<Vec<f64>> = basis
        .map(|r| dev.download(r))
        .transpose()?
        .map(|r| r.iter().map(|x| x.as_f64()).collect());
    let chunk = (FACTOR_ROWS_ELEMENTS / (k * p)).clamp(1, n);
    for start in (0..n).step_by(chunk) {
        let c = chunk.min(n - start);
        let factors = softmax_factor_rows(
            &probs_h[start * k..(start + c) * k],
            k,
            basis_h.as_deref().map(|r| (r, kr)),
        );
        let factors = dev.upload_owned(factors, c * k, kr)?;
        let x = dev.upload(&phi_h[start * d..(start + c) * d], c, d)?;
        let rows = dev.kron_rows(&factors, &x, k)?;
        dev.weighted_syrk(precision, T::one(), &rows, None, alpha)?;
    }
    Ok(())
}

/// [`Device::kron_products`] by two gemms on `Bᵀ`: `U = Σ B`, `G = Bᵀ U`.
pub fn kron_products<D: Device, T: Scalar>(
    dev: &D,
    sigma: &Matrix<D, T>,
    phi: &Matrix<D, T>,
    factor: LowRankFactor<'_, D, T>,
) -> Result<(Matrix<D, T>, Matrix<D, T>)> {
    let (m, d) = phi.shape();
    let bt = match factor {
        LowRankFactor::Kronecker { probs } => {
            let k = probs.cols();
            probs.expect_shape("probs", m, k)?;
            sigma.expect_shape("sigma", k * d, k * d)?;
            let factors = softmax_factor_rows(&dev.download(probs)?, k, None);
            let factors = dev.upload_owned(factors, m * k, k)?;
            dev.kron_rows(&factors, phi, k)?
        }
        LowRankFactor::Shared { weights } => {
            sigma.expect_shape("sigma", d, d)?;
            match weights {
                None => dev.copy(phi)?,
                Some(w) => {
                    w.expect_shape("weights", m, 1)?;
                    let w = dev.download(w)?;
                    let mut rows = dev.download(phi)?;
                    rows.chunks_mut(d.max(1))
                        .zip(&w)
                        .for_each(|(row, &wi)| row.iter_mut().for_each(|x| *x *= wi.max(T::zero()).sqrt()));
                    dev.upload_owned(rows, m, d)?
                }
            }
        }
    };
    let (r, n) = bt.shape();
    let mut u = dev.zeros(n, r)?;
    dev.gemm(&mut u, T::zero(), sigma, Op::N, &bt, Op::T, T::one())?;
    let mut g = dev.zeros(r, r)?;
    dev.gemm(&mut g, T::zero(), &bt, Op::N, &u, Op::N, T::one())?;
    Ok((u, g))
}

/// The normalised Laplace bridge of one row (see [`Device::bridge_dirichlet`]), in f64, with the
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
