//! Diag: the diagonal of the curvature, `Π_kd = τ_k + Σ_n M_n[k,k] φ_nd²`, K × D_aug values.
//!
//! `M_n[k,k]` in closed form: `p(1 − p)` for the softmax GGN (on the device), `1/σ²`, squared
//! residuals for the empirical Fisher, the draws' mean square for the Monte Carlo Fisher; the
//! curvature is then one GEMM `Qᵀ(Φ ∘ Φ)`. Updates are exact on the diagonal, O(m·K·D).

use super::{
    CovarianceStep, CovarianceStructure, CurvatureTerm, DataTerm, Operand, Spectrum, StoredPair, StoredParts,
    elementwise_drift, host_curvature, reciprocals, row_curvature_eigenvalues, row_log_det, shift_rows,
};
use crate::device::{Device, Matrix, Op, Sign};
use crate::error::{Error, Result};
use crate::numerics::evidence_root;
use crate::numerics::from_f64s;
use crate::posterior::Structure;
use crate::posterior::model::{Batch, Model};
use crate::scalar::Scalar;

pub(crate) struct Diag<D: Device, T: Scalar> {
    /// Π and Σ.
    pub pair: StoredPair<D, T>,
}

/// `target += α Qᵀ (Φ ∘ Φ)` for the term's `Q_nk = M_n[k,k]`.
fn add_term<D: Device, T: Scalar>(
    device: &D,
    target: &mut Matrix<D, T>,
    phi: &Matrix<D, T>,
    term: &CurvatureTerm<D, T>,
    alpha: T,
) -> Result<()> {
    let CurvatureTerm::Diagonal { weights } = term else {
        return Err(Error::Unsupported("a non-Diag curvature term for Diag".into()));
    };
    let mut squares = device.copy(phi)?;
    device.hadamard(&mut squares, phi)?;
    device.gemm(target, T::one(), weights, Op::T, &squares, Op::N, alpha)
}

impl<D: Device, T: Scalar> CovarianceStructure<D, T> for Diag<D, T> {
    fn kind(&self) -> Structure {
        Structure::Diag
    }

    fn copy(&self, device: &D) -> Result<Box<dyn CovarianceStructure<D, T>>> {
        Ok(Box::new(Diag {
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
        reciprocals(device, precision)
    }

    fn drift(&self, device: &D, _probes: Option<(usize, u64)>) -> Result<T> {
        elementwise_drift(device, &self.pair.precision, &self.pair.covariance)
    }

    /// 2²² values (16 MB of f32): Diag's pass is a few elementwise sweeps over n × K between
    /// two GEMMs, which stay in cache at this size.
    fn pass_elements(&self) -> usize {
        1 << 22
    }

    fn curvature_term(
        &self,
        model: &Model<'_, D, T>,
        batch: &Batch<D, T>,
        outputs: &Matrix<D, T>,
        _basis: Option<(&[f64], usize)>,
    ) -> Result<CurvatureTerm<D, T>> {
        let device = model.device;
        if model.softmax_ggn() {
            // M_n[k,k] = p_nk (1 − p_nk) = p − p∘p, on the device.
            let mut squares = device.copy(outputs)?;
            device.hadamard(&mut squares, outputs)?;
            let mut weights = device.copy(outputs)?;
            device.axpy(&mut weights, -T::one(), &squares)?;
            return Ok(CurvatureTerm::Diagonal { weights });
        }
        let mut storage = Default::default();
        let diagonals = host_curvature(model, batch, outputs, &mut storage)?.diagonals();
        Ok(CurvatureTerm::Diagonal {
            weights: device.upload_owned(from_f64s::<T>(&diagonals), batch.rows(), outputs.cols())?,
        })
    }

    fn empty_sum(&self, device: &D, k: usize, da: usize, _reduced: bool) -> Result<DataTerm<D, T>> {
        DataTerm::zeros(device, &[(k, da)])
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
        add_term(device, &mut sum.parts[0], phi, term, alpha)
    }

    fn finish(
        &self,
        device: &D,
        mut sum: DataTerm<D, T>,
        tau: T,
        _basis: Option<&Matrix<D, T>>,
    ) -> Result<Box<dyn CovarianceStructure<D, T>>> {
        let sum = sum.parts.swap_remove(0);
        let da = sum.cols();
        let precision = shift_rows(device, &sum, &[tau.as_f64()], da)?;
        let covariance = reciprocals(device, &precision)?;
        Ok(Box::new(Diag {
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
        let alpha = if sign == Sign::Minus { scale } else { -scale };
        let mut precision = device.copy(&self.pair.precision)?;
        add_term(device, &mut precision, phi, term, alpha)?;
        let covariance = reciprocals(device, &precision)?;
        Ok(CovarianceStep::Replace(Box::new(Diag {
            pair: StoredPair { precision, covariance },
        })))
    }

    /// `out += α x ∘ A`.
    fn apply(&self, device: &D, which: Operand, x: &Matrix<D, T>, out: &mut Matrix<D, T>, alpha: T) -> Result<()> {
        let values = self.pair.get(which);
        let mut scaled = device.copy(x)?;
        device.hadamard(&mut scaled, values)?;
        device.axpy(out, alpha, &scaled)
    }

    /// `Σ_f[k,k] = Σ_d Σ_kd φ_d²`, n × K.
    fn logit_covariance(&self, device: &D, phi: &Matrix<D, T>, k: usize) -> Result<Matrix<D, T>> {
        let mut squares = device.copy(phi)?;
        device.hadamard(&mut squares, phi)?;
        let mut cov = device.zeros(phi.rows(), k)?;
        device.gemm(
            &mut cov,
            T::zero(),
            &squares,
            Op::N,
            &self.pair.covariance,
            Op::T,
            T::one(),
        )?;
        Ok(cov)
    }

    fn log_det_precision(&self, device: &D, _k: usize) -> Result<f64> {
        row_log_det(device, &self.pair.precision)
    }

    fn curvature_eigenvalues(
        &self,
        device: &D,
        prior: &[f64],
        _k: usize,
        da: usize,
        _shift_null: bool,
    ) -> Result<(Vec<f64>, f64)> {
        Ok((row_curvature_eigenvalues(device, &self.pair.precision, prior, da)?, 1.0))
    }

    fn curvature_spectrum(
        &self,
        device: &D,
        prior: &[f64],
        _k: usize,
        da: usize,
        _shift_null: bool,
    ) -> Result<Spectrum<T>> {
        Ok(Spectrum::Diagonal {
            h: row_curvature_eigenvalues(device, &self.pair.precision, prior, da)?,
        })
    }

    fn per_class_prior(&self) -> bool {
        true
    }

    /// The evidence's root per class: each class's weights are independent.
    fn per_class_optimum(&self, device: &D, norms: &[f64], prior: &[f64], da: usize) -> Result<Option<Vec<f64>>> {
        let h = row_curvature_eigenvalues(device, &self.pair.precision, prior, da)?;
        Ok(Some(
            (0..norms.len())
                .map(|k| evidence_root(&h[k * da..(k + 1) * da], 1.0, norms[k]))
                .collect(),
        ))
    }

    fn shift_prior(&self, device: &D, precision: Matrix<D, T>, delta: &[f64], da: usize) -> Result<Matrix<D, T>> {
        shift_rows(device, &precision, delta, da)
    }

    /// `√σ ∘ Z`.
    fn sample_factor(&self, device: &D, z: faer::MatRef<'_, f64>, _k: usize, _da: usize) -> Result<faer::Mat<f64>> {
        let var = device.download(&self.pair.covariance)?;
        Ok(faer::Mat::<f64>::from_fn(z.nrows(), z.ncols(), |i, s| {
            var[i].as_f64().max(0.0).sqrt() * z[(i, s)]
        }))
    }

    fn restore(
        &self,
        device: &D,
        parts: StoredParts<'_, T>,
        k: usize,
        da: usize,
    ) -> Result<Box<dyn CovarianceStructure<D, T>>> {
        parts.only(&[])?;
        let (precision, covariance) = parts.pair(k, da)?;
        Ok(Box::new(Diag {
            pair: StoredPair {
                precision: device.upload(precision, k, da)?,
                covariance: device.upload(covariance, k, da)?,
            },
        }))
    }

    fn sum_names(&self) -> &'static [&'static str] {
        &["sum"]
    }
}
