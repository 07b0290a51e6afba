//! Shared: one D_aug × D_aug covariance for all classes, `Π = I_K ⊗ Π_D`, the seed paper's form.
//!
//! `Π_D = τ I + Σ_n m_n φ_nφ_nᵀ`: the weighting sets m_n for the softmax GGN (1 for the
//! Gaussian weighting, with no softmax at all; `p_max(1 − p_max)` for the categorical one);
//! every other curvature uses `m_n = tr(M_n)/K`. Logit covariances are `v I_K`, `v = φᵀΣ_Dφ`,
//! O(D²) per input whatever K. Updates are Woodbury steps of rank m while m < D_aug/2.

use super::{
    CovarianceStep, CovarianceStructure, CurvatureTerm, DataTerm, Operand, Spectrum, StoredPair, StoredParts, Woodbury,
    dense_curvature_eigenvalues, dense_drift, dense_inverse, dense_log_det, dense_spectrum, host_curvature,
    woodbury_factor, woodbury_rows,
};
use crate::device::ops;
use crate::device::{Device, LowRankFactor, Matrix, Op, OutputWeighting, Sign};
use crate::error::{Error, Result};
use crate::numerics::from_f64s;
use crate::posterior::Structure;
use crate::posterior::model::{Batch, Model};
use crate::scalar::Scalar;

pub(crate) struct Shared<D: Device, T: Scalar> {
    pub weighting: OutputWeighting,
    /// Π and Σ.
    pub pair: StoredPair<D, T>,
}

/// The weights m_n of a Shared term.
fn weights<D: Device, T: Scalar>(term: &CurvatureTerm<D, T>) -> Result<Option<&Matrix<D, T>>> {
    match term {
        CurvatureTerm::Weighted { weights } => Ok(weights.as_ref()),
        _ => Err(Error::Unsupported("a non-Shared curvature term for Shared".into())),
    }
}

impl<D: Device, T: Scalar> CovarianceStructure<D, T> for Shared<D, T> {
    fn kind(&self) -> Structure {
        Structure::Shared(self.weighting)
    }

    fn copy(&self, device: &D) -> Result<Box<dyn CovarianceStructure<D, T>>> {
        Ok(Box::new(Shared {
            weighting: self.weighting,
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

    /// The Gaussian weighting of the softmax GGN: `Σ_n φ_nφ_nᵀ`, no logits needed.
    fn gram_only(&self, model: &Model<'_, D, T>) -> bool {
        model.softmax_ggn() && self.weighting == OutputWeighting::Gaussian
    }

    fn curvature_term(
        &self,
        model: &Model<'_, D, T>,
        batch: &Batch<D, T>,
        outputs: &Matrix<D, T>,
        _basis: Option<(&[f64], usize)>,
    ) -> Result<CurvatureTerm<D, T>> {
        if self.gram_only(model) {
            return Ok(CurvatureTerm::Weighted { weights: None });
        }
        let device = model.device;
        if model.softmax_ggn() {
            return Ok(CurvatureTerm::Weighted {
                weights: Some(ops::categorical_weights(device, outputs)?),
            });
        }
        let mut storage = Default::default();
        let traces = host_curvature(model, batch, outputs, &mut storage)?.mean_traces();
        Ok(CurvatureTerm::Weighted {
            weights: Some(device.upload_owned(from_f64s::<T>(&traces), batch.rows(), 1)?),
        })
    }

    fn empty_sum(&self, device: &D, _k: usize, da: usize, _reduced: bool) -> Result<DataTerm<D, T>> {
        DataTerm::zeros(device, &[(da, da)])
    }

    fn add_curvature(
        &self,
        device: &D,
        sum: &mut DataTerm<D, T>,
        phi: &Matrix<D, T>,
        term: &CurvatureTerm<D, T>,
        alpha: T,
        _basis: Option<&Matrix<D, T>>,
    ) -> Result<()> {
        device.weighted_syrk(&mut sum.parts[0], T::one(), phi, weights(term)?, alpha)
    }

    fn finish(
        &self,
        device: &D,
        mut sum: DataTerm<D, T>,
        tau: T,
        _basis: Option<&Matrix<D, T>>,
    ) -> Result<Box<dyn CovarianceStructure<D, T>>> {
        let mut precision = sum.parts.swap_remove(0);
        device.add_diagonal(&mut precision, tau)?;
        let covariance = dense_inverse(device, &precision)?;
        Ok(Box::new(Shared {
            weighting: self.weighting,
            pair: StoredPair { precision, covariance },
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
        let weights = weights(term)?;
        if 2 * phi.rows() < self.pair.covariance.rows() {
            let products = ops::kron_products(device, &self.pair.covariance, phi, LowRankFactor::Shared { weights })?;
            return Ok(CovarianceStep::Woodbury(woodbury_factor(
                device, products, sign, scale,
            )?));
        }
        let alpha = if sign == Sign::Minus { scale } else { -scale };
        let mut precision = device.copy(&self.pair.precision)?;
        device.weighted_syrk(&mut precision, T::one(), phi, weights, alpha)?;
        let covariance = dense_inverse(device, &precision)?;
        Ok(CovarianceStep::Replace(Box::new(Shared {
            weighting: self.weighting,
            pair: StoredPair { precision, covariance },
        })))
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
        device.weighted_syrk(&mut self.pair.precision, T::one(), phi, weights(term)?, alpha)
    }

    /// `out += α x Σ'_D` (`Σ' = I_K ⊗ Σ'_D`).
    fn apply_woodbury(
        &self,
        device: &D,
        woodbury: &Woodbury<D, T>,
        sign: Sign,
        x: &Matrix<D, T>,
        out: &mut Matrix<D, T>,
        alpha: T,
    ) -> Result<()> {
        woodbury_rows(device, &self.pair.covariance, woodbury, sign, x, out, alpha)
    }

    /// `out += α x A_D` (`A = I_K ⊗ A_D`).
    fn apply(&self, device: &D, which: Operand, x: &Matrix<D, T>, out: &mut Matrix<D, T>, alpha: T) -> Result<()> {
        let values = self.pair.get(which);
        device.gemm(out, T::one(), x, Op::N, values, Op::N, alpha)
    }

    /// `v = φᵀ Σ_D φ`, n × 1 (`Σ_f = v I_K`).
    fn logit_covariance(&self, device: &D, phi: &Matrix<D, T>, _k: usize) -> Result<Matrix<D, T>> {
        device.predictive_covariance(&self.pair.covariance, phi)
    }

    /// `K log det Π_D`.
    fn log_det_precision(&self, device: &D, k: usize) -> Result<f64> {
        Ok(dense_log_det(device, &self.pair.precision)? * k as f64)
    }

    /// The eigenvalues of `Π_D − τ I`, each standing for K weights.
    fn curvature_eigenvalues(
        &self,
        device: &D,
        prior: &[f64],
        k: usize,
        _da: usize,
        _shift_null: bool,
    ) -> Result<(Vec<f64>, f64)> {
        Ok((
            dense_curvature_eigenvalues(device, &self.pair.precision, |_| prior[0], None)?,
            k as f64,
        ))
    }

    fn curvature_spectrum(
        &self,
        device: &D,
        prior: &[f64],
        _k: usize,
        _da: usize,
        _shift_null: bool,
    ) -> Result<Spectrum<T>> {
        let (h, vectors, _) = dense_spectrum(device, &self.pair.precision, |_| prior[0], None)?;
        Ok(Spectrum::Shared {
            h,
            vectors: vectors.iter().map(|v| v.as_f64()).collect(),
        })
    }

    fn per_class_prior(&self) -> bool {
        false
    }

    fn shift_prior(&self, device: &D, precision: Matrix<D, T>, delta: &[f64], _da: usize) -> Result<Matrix<D, T>> {
        let mut p = precision;
        device.add_diagonal(&mut p, T::from_f64(delta[0]))?;
        Ok(p)
    }

    fn fused_sequential(&self) -> Option<OutputWeighting> {
        Some(self.weighting)
    }

    /// `(I_K ⊗ L_D) Z` with L_D the Cholesky factor of Σ_D.
    fn sample_factor(&self, device: &D, z: faer::MatRef<'_, f64>, k: usize, da: usize) -> Result<faer::Mat<f64>> {
        let mut l = device.copy(&self.pair.covariance)?;
        device.cholesky(&mut l)?;
        let l = device.download(&l)?;
        let l = faer::Mat::<f64>::from_fn(da, da, |i, j| l[i * da + j].as_f64());
        let mut out = faer::Mat::<f64>::zeros(z.nrows(), z.ncols());
        for c in 0..k {
            let block = &l * z.subrows(c * da, da);
            out.as_mut().subrows_mut(c * da, da).copy_from(&block);
        }
        Ok(out)
    }

    fn restore(
        &self,
        device: &D,
        parts: StoredParts<'_, T>,
        _k: usize,
        da: usize,
    ) -> Result<Box<dyn CovarianceStructure<D, T>>> {
        parts.only(&[])?;
        let (precision, covariance) = parts.pair(da, da)?;
        Ok(Box::new(Shared {
            weighting: self.weighting,
            pair: StoredPair {
                precision: device.upload(precision, da, da)?,
                covariance: device.upload(covariance, da, da)?,
            },
        }))
    }

    fn sum_names(&self) -> &'static [&'static str] {
        &["sum"]
    }
}
