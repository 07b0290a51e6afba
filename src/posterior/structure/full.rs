//! Full: the exact curvature over all `P = K·D_aug` weights, Π and Σ dense P × P.
//!
//! Index `(k, d) ↦ k·D_aug + d`. Curvature: the softmax GGN `Σ_n Λ_n ⊗ φ_nφ_nᵀ` by the device's
//! GGN kernels, any other curvature as rows `S_nᵀ ⊗ φ_n` of its per-sample factors
//! `S_n S_nᵀ = M_n`. Updates are Woodbury steps while the rank r is below half of P
//! (≈ 2P²r + r³/3), else a refactor (≈ P³).

use super::{
    CovarianceStep, CovarianceStructure, CurvatureTerm, DataTerm, Operand, Spectrum, StoredPair, StoredParts, Woodbury,
    dense_curvature_eigenvalues, dense_drift, dense_inverse, dense_log_det, dense_spectrum, host_curvature,
    woodbury_factor, woodbury_rows,
};
use crate::device::ops;
use crate::device::{Device, LowRankFactor, Matrix, Op, Sign};
use crate::error::Result;
use crate::numerics::TAU_RANGE;
use crate::numerics::from_f64s;
use crate::posterior::Structure;
use crate::posterior::model::{Batch, Model};
use crate::scalar::Scalar;

pub(crate) struct Full<D: Device, T: Scalar> {
    /// Π and Σ.
    pub pair: StoredPair<D, T>,
}

/// Factor rows `s` (K wide) in the basis R (K × K', row-major): rows `Rᵀ s`, K' wide.
fn reduce_factors(values: Vec<f64>, k: usize, basis: Option<(&[f64], usize)>) -> (Vec<f64>, usize) {
    match basis {
        None => (values, k),
        Some((r, kk)) => {
            let mut out = Vec::with_capacity(values.len() / k.max(1) * kk);
            for s in values.chunks_exact(k) {
                out.extend((0..kk).map(|j| (0..k).map(|a| r[a * kk + j] * s[a]).sum::<f64>()));
            }
            (out, kk)
        }
    }
}

/// The rank of a term's curvature: a Woodbury step is taken while it is below half of P.
fn woodbury_rank<D: Device, T: Scalar>(phi: &Matrix<D, T>, term: &CurvatureTerm<D, T>) -> usize {
    match term {
        CurvatureTerm::Softmax { probs } => phi.rows() * probs.cols(),
        CurvatureTerm::Rows { rows } => rows.rows(),
        _ => phi.rows(),
    }
}

/// `target += α H(term)` for a Full term.
fn add_term<D: Device, T: Scalar>(
    device: &D,
    target: &mut Matrix<D, T>,
    phi: &Matrix<D, T>,
    term: &CurvatureTerm<D, T>,
    alpha: T,
    basis: Option<&Matrix<D, T>>,
) -> Result<()> {
    match term {
        CurvatureTerm::Softmax { probs } => ops::ggn_accumulate(device, target, phi, probs, basis, alpha),
        CurvatureTerm::Rows { rows } => device.weighted_syrk(target, T::one(), rows, None, alpha),
        _ => Err(crate::error::Error::Unsupported(
            "a non-Full curvature term for Full".into(),
        )),
    }
}

impl<D: Device, T: Scalar> CovarianceStructure<D, T> for Full<D, T> {
    fn kind(&self) -> Structure {
        Structure::Full
    }

    fn copy(&self, device: &D) -> Result<Box<dyn CovarianceStructure<D, T>>> {
        Ok(Box::new(Full {
            pair: self.pair.copy(device)?,
        }))
    }

    fn pair(&self) -> &StoredPair<D, T> {
        &self.pair
    }

    fn pair_mut(&mut self) -> &mut StoredPair<D, T> {
        &mut self.pair
    }

    fn covariance_of(&self, device: &D, precision: &Matrix<D, T>) -> Result<Matrix<D, T>> {
        dense_inverse(device, precision)
    }

    fn drift(&self, device: &D, probes: Option<(usize, u64)>) -> Result<T> {
        dense_drift(device, &self.pair.precision, &self.pair.covariance, probes)
    }

    fn curvature_term(
        &self,
        model: &Model<'_, D, T>,
        batch: &Batch<D, T>,
        outputs: &Matrix<D, T>,
        basis: Option<(&[f64], usize)>,
    ) -> Result<CurvatureTerm<D, T>> {
        let device = model.device;
        if model.softmax_ggn() {
            return Ok(CurvatureTerm::Softmax {
                probs: device.copy(outputs)?,
            });
        }
        let mut storage = Default::default();
        let curvature = host_curvature(model, batch, outputs, &mut storage)?;
        let (n, k) = (batch.rows(), outputs.cols());
        let (values, rank) = curvature.factors();
        let (values, width) = reduce_factors(values, k, basis);
        let s = device.upload_owned(from_f64s::<T>(&values), n * rank, width)?;
        Ok(CurvatureTerm::Rows {
            rows: ops::kron_rows(device, &s, &batch.phi, rank)?,
        })
    }

    fn empty_sum(&self, device: &D, k: usize, da: usize, reduced: bool) -> Result<DataTerm<D, T>> {
        let side = if reduced { k - 1 } else { k } * da;
        DataTerm::zeros(device, &[(side, side)])
    }

    fn add_curvature(
        &self,
        device: &D,
        sum: &mut DataTerm<D, T>,
        phi: &Matrix<D, T>,
        term: &CurvatureTerm<D, T>,
        alpha: T,
        basis: Option<&Matrix<D, T>>,
    ) -> Result<()> {
        add_term(device, &mut sum.parts[0], phi, term, alpha, basis)
    }

    fn finish(
        &self,
        device: &D,
        mut sum: DataTerm<D, T>,
        tau: T,
        basis: Option<&Matrix<D, T>>,
    ) -> Result<Box<dyn CovarianceStructure<D, T>>> {
        let mut precision = sum.parts.swap_remove(0);
        device.add_diagonal(&mut precision, tau)?;
        let covariance = dense_inverse(device, &precision)?;
        // In the reduced basis R = Q₁ ⊗ I: Π = R Π_r Rᵀ + τ(I − RRᵀ), and Σ the same with 1/τ.
        Ok(Box::new(match basis {
            Some(r) => Full {
                pair: StoredPair {
                    precision: ops::kron_congruence(device, &precision, r, tau)?,
                    covariance: ops::kron_congruence(device, &covariance, r, T::one() / tau)?,
                },
            },
            None => Full {
                pair: StoredPair { precision, covariance },
            },
        }))
    }

    fn covariance_step(
        &self,
        device: &D,
        phi: &Matrix<D, T>,
        term: &CurvatureTerm<D, T>,
        sign: Sign,
        _tau: T,
        scale: T,
    ) -> Result<CovarianceStep<D, T>> {
        let sigma = &self.pair.covariance;
        if 2 * woodbury_rank(phi, term) < sigma.rows() {
            let products = match term {
                CurvatureTerm::Softmax { probs } => {
                    ops::kron_products(device, sigma, phi, LowRankFactor::Kronecker { probs })?
                }
                CurvatureTerm::Rows { rows } => {
                    let mut u = device.zeros(sigma.rows(), rows.rows())?;
                    device.gemm(&mut u, T::zero(), sigma, Op::N, rows, Op::T, T::one())?;
                    let mut g = device.zeros(rows.rows(), rows.rows())?;
                    device.gemm(&mut g, T::zero(), rows, Op::N, &u, Op::N, T::one())?;
                    (u, g)
                }
                _ => {
                    return Err(crate::error::Error::Unsupported(
                        "a non-Full curvature term for Full".into(),
                    ));
                }
            };
            return Ok(CovarianceStep::Woodbury(woodbury_factor(
                device, products, sign, scale,
            )?));
        }
        let alpha = if sign == Sign::Minus { scale } else { -scale };
        let mut precision = device.copy(&self.pair.precision)?;
        add_term(device, &mut precision, phi, term, alpha, None)?;
        let covariance = dense_inverse(device, &precision)?;
        Ok(CovarianceStep::Replace(Box::new(Full {
            pair: StoredPair { precision, covariance },
        })))
    }

    /// On the refactor path (rank ≥ P/2), the Cholesky factor of `Π + H`.
    fn curvature_factor(
        &self,
        device: &D,
        phi: &Matrix<D, T>,
        term: &CurvatureTerm<D, T>,
    ) -> Result<Option<Matrix<D, T>>> {
        if 2 * woodbury_rank(phi, term) < self.pair.precision.rows() {
            return Ok(None);
        }
        let mut factor = device.copy(&self.pair.precision)?;
        add_term(device, &mut factor, phi, term, T::one(), None)?;
        device.cholesky(&mut factor)?;
        Ok(Some(factor))
    }

    fn commit_woodbury(
        &mut self,
        device: &D,
        woodbury: Woodbury<D, T>,
        phi: &Matrix<D, T>,
        term: &CurvatureTerm<D, T>,
        sign: Sign,
    ) -> Result<()> {
        ops::low_rank_update(device, &mut self.pair.covariance, &woodbury.u, &woodbury.c_chol, sign)?;
        let alpha = if sign == Sign::Minus { T::one() } else { -T::one() };
        add_term(device, &mut self.pair.precision, phi, term, alpha, None)
    }

    /// `vec(out) += α Σ' vec(x)`: `vec(x)ᵀ Σ'` as one row, Σ' symmetric.
    fn apply_woodbury(
        &self,
        device: &D,
        woodbury: &Woodbury<D, T>,
        sign: Sign,
        x: &Matrix<D, T>,
        out: &mut Matrix<D, T>,
        alpha: T,
    ) -> Result<()> {
        let (k, da) = x.shape();
        let mut x_row = device.copy(x)?;
        x_row.reshape(1, k * da)?;
        out.reshape(1, k * da)?;
        let result = woodbury_rows(device, &self.pair.covariance, woodbury, sign, &x_row, out, alpha);
        out.reshape(k, da)?;
        result
    }

    /// `vec(out) += α A vec(x)`.
    fn apply(&self, device: &D, which: Operand, x: &Matrix<D, T>, out: &mut Matrix<D, T>, alpha: T) -> Result<()> {
        let values = self.pair.get(which);
        let (k, da) = x.shape();
        let mut x_vec = device.copy(x)?;
        x_vec.reshape(k * da, 1)?;
        out.reshape(k * da, 1)?;
        let result = device.gemm(out, T::one(), values, Op::N, &x_vec, Op::N, alpha);
        out.reshape(k, da)?;
        result
    }

    /// `Σ_f[k,l] = φᵀ Σ_{kl} φ`, n × K².
    fn logit_covariance(&self, device: &D, phi: &Matrix<D, T>, _k: usize) -> Result<Matrix<D, T>> {
        device.predictive_covariance(&self.pair.covariance, phi)
    }

    fn log_det_precision(&self, device: &D, _k: usize) -> Result<f64> {
        dense_log_det(device, &self.pair.precision)
    }

    fn curvature_eigenvalues(
        &self,
        device: &D,
        prior: &[f64],
        k: usize,
        da: usize,
        shift_null: bool,
    ) -> Result<(Vec<f64>, f64)> {
        let h = dense_curvature_eigenvalues(
            device,
            &self.pair.precision,
            row_prior(prior, da),
            shift_null.then_some(k),
        )?;
        Ok((h, 1.0))
    }

    fn curvature_spectrum(
        &self,
        device: &D,
        prior: &[f64],
        k: usize,
        da: usize,
        shift_null: bool,
    ) -> Result<Spectrum<T>> {
        let (h, vectors, reduced) = dense_spectrum(
            device,
            &self.pair.precision,
            row_prior(prior, da),
            shift_null.then_some(k),
        )?;
        Ok(Spectrum::Dense { h, vectors, reduced })
    }

    fn per_class_prior(&self) -> bool {
        true
    }

    /// MacKay's fixed point `τ_k ← (D_aug − τ_k tr Σ_kk) / ‖ŵ_k‖²`, one Cholesky inverse per
    /// iteration.
    fn per_class_optimum(&self, device: &D, norms: &[f64], prior: &[f64], da: usize) -> Result<Option<Vec<f64>>> {
        let k = norms.len();
        let n = k * da;
        let of = |c: usize| prior[if prior.len() == 1 { 0 } else { c }];
        let mut curvature = device.download(&self.pair.precision)?;
        for i in 0..n {
            curvature[i * n + i] -= T::from_f64(of(i / da));
        }
        let mut tau: Vec<f64> = (0..k).map(of).collect();
        for _ in 0..500 {
            let mut p = curvature.clone();
            (0..n).for_each(|i| p[i * n + i] += T::from_f64(tau[i / da]));
            let sigma = device.download(&ops::spd_inverse(device, &device.upload_owned(p, n, n)?)?)?;
            let mut change: f64 = 0.0;
            for c in 0..k {
                let trace: f64 = (c * da..(c + 1) * da).map(|i| sigma[i * n + i].as_f64()).sum();
                let effective = (da as f64 - tau[c] * trace).max(0.0);
                let next = if norms[c] > 0.0 {
                    (effective / norms[c]).clamp(TAU_RANGE.0, TAU_RANGE.1)
                } else {
                    TAU_RANGE.1
                };
                change = change.max((next / tau[c]).ln().abs());
                tau[c] = next;
            }
            if change < 1e-10 {
                break;
            }
        }
        Ok(Some(tau))
    }

    fn shift_prior(&self, device: &D, precision: Matrix<D, T>, delta: &[f64], da: usize) -> Result<Matrix<D, T>> {
        if delta.iter().all(|&d| d == delta[0]) {
            let mut p = precision;
            device.add_diagonal(&mut p, T::from_f64(delta[0]))?;
            return Ok(p);
        }
        let n = precision.rows();
        let mut p = device.download(&precision)?;
        (0..n).for_each(|i| p[i * n + i] += T::from_f64(delta[i / da]));
        device.upload_owned(p, n, n)
    }

    /// `L Z` with L the P × P Cholesky factor of Σ.
    fn sample_factor(&self, device: &D, z: faer::MatRef<'_, f64>, _k: usize, _da: usize) -> Result<faer::Mat<f64>> {
        let p = z.nrows();
        let mut l = device.copy(&self.pair.covariance)?;
        device.cholesky(&mut l)?;
        let l = device.download(&l)?;
        Ok(faer::Mat::<f64>::from_fn(p, p, |i, j| l[i * p + j].as_f64()) * z)
    }

    fn restore(
        &self,
        device: &D,
        parts: StoredParts<'_, T>,
        k: usize,
        da: usize,
    ) -> Result<Box<dyn CovarianceStructure<D, T>>> {
        let side = k * da;
        parts.only(&[])?;
        let (precision, covariance) = parts.pair(side, side)?;
        Ok(Box::new(Full {
            pair: StoredPair {
                precision: device.upload(precision, side, side)?,
                covariance: device.upload(covariance, side, side)?,
            },
        }))
    }

    fn sum_names(&self) -> &'static [&'static str] {
        &["sum"]
    }
}

/// τ of weight row i (class i / D_aug) from one τ or one per class.
fn row_prior(prior: &[f64], da: usize) -> impl Fn(usize) -> f64 + '_ {
    move |i| prior[if prior.len() == 1 { 0 } else { i / da }]
}
