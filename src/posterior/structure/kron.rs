//! Kron (KFAC): `Σ_n M_n ⊗ φ_nφ_nᵀ ≈ (1/N)(Σ_n M_n) ⊗ (Σ_n φ_nφ_nᵀ) = (1/N) A ⊗ G`.
//!
//! Kept as the eigendecompositions `A = U_A diag(a) U_Aᵀ`, `G = U_G diag(g) U_Gᵀ` with the prior
//! on the eigenvalues: `Π = (U_A ⊗ U_G) diag(a_i g_j / N + τ) (U_A ⊗ U_G)ᵀ`; Π and Σ are stored as
//! the K × D_aug eigenvalues λ_ij and 1/λ_ij. The softmax GGN's class factor is
//! `A = diag(Σ_n p_n) − PᵀP`, one GEMM and one SYRK on the device. An update adds the new
//! samples to the running sums and refactors them (two symmetric eigendecompositions, K³ and
//! D³): an approximation, since the Kronecker factorisation of a sum is not the sum of the
//! factorisations.

use super::{
    CovarianceStep, CovarianceStructure, CurvatureTerm, DataTerm, Operand, RawTensor, Spectrum, StoredPair,
    StoredParts, elementwise_drift, host_curvature, reciprocals, row_curvature_eigenvalues, row_log_det, shift_rows,
    symmetric_eigen,
};
use crate::device::{Device, Matrix, Op, Sign};
use crate::error::{Error, Result};
use crate::numerics::from_f64s;
use crate::posterior::Structure;
use crate::posterior::model::{Batch, Model};
use crate::scalar::Scalar;
use std::sync::{Arc, OnceLock};

/// Kron's running sums `A = Σ_n w_n M_n` (K × K) and `G = Σ_n w_n φ_nφ_nᵀ` (D_aug × D_aug) with
/// their weight `N = Σ_n w_n` (the sample count, until forgetting discounts old samples), and
/// their eigenvectors (columns of U_A and U_G).
pub(crate) struct KronFactors<D: Device, T: Scalar> {
    pub a_sum: Matrix<D, T>,
    pub g_sum: Matrix<D, T>,
    pub a_vecs: Matrix<D, T>,
    pub g_vecs: Matrix<D, T>,
    pub weight: f64,
}

impl<D: Device, T: Scalar> KronFactors<D, T> {
    fn copy(&self, device: &D) -> Result<Self> {
        Ok(KronFactors {
            a_sum: device.copy(&self.a_sum)?,
            g_sum: device.copy(&self.g_sum)?,
            a_vecs: device.copy(&self.a_vecs)?,
            g_vecs: device.copy(&self.g_vecs)?,
            weight: self.weight,
        })
    }

    /// The sums with 1 × 1 placeholder bases, until [`KronFactors::refactor`] computes them.
    pub fn unfactored(device: &D, a_sum: Matrix<D, T>, g_sum: Matrix<D, T>, weight: f64) -> Result<Self> {
        Ok(KronFactors {
            a_sum,
            g_sum,
            a_vecs: device.zeros(1, 1)?,
            g_vecs: device.zeros(1, 1)?,
            weight,
        })
    }

    /// Refactors the sums: eigenbases of A and G and the precision eigenvalues
    /// `λ_ij = a_i g_j / N + τ` (negative rounding in a_i, g_j clipped to 0; N = 0 gives τ).
    fn refactor(mut self, device: &D, tau: T) -> Result<Kron<D, T>> {
        let (k, da) = (self.a_sum.rows(), self.g_sum.rows());
        let (a_vals, a_vecs) = symmetric_eigen(&device.download(&self.a_sum)?, k)?;
        let (g_vals, g_vecs) = symmetric_eigen(&device.download(&self.g_sum)?, da)?;
        let inv_n = if self.weight > 0.0 { 1.0 / self.weight } else { 0.0 };
        let tau = tau.as_f64();
        let lambda: Vec<f64> = a_vals
            .iter()
            .flat_map(|&a| g_vals.iter().map(move |&g| a.max(0.0) * g.max(0.0) * inv_n + tau))
            .collect();
        self.a_vecs = device.upload_owned(a_vecs, k, k)?;
        self.g_vecs = device.upload_owned(g_vecs, da, da)?;
        let inverse: Vec<f64> = lambda.iter().map(|l| 1.0 / l).collect();
        let pair = StoredPair {
            precision: device.upload_owned(from_f64s::<T>(&lambda), k, da)?,
            covariance: device.upload_owned(from_f64s::<T>(&inverse), k, da)?,
        };
        Ok(Kron::new(pair, self))
    }
}

pub(crate) struct Kron<D: Device, T: Scalar> {
    /// Π and Σ: λ_ij and 1/λ_ij, K × D_aug.
    pair: StoredPair<D, T>,
    factors: KronFactors<D, T>,
    /// `R = (U_A ∘ U_A) Σ` (K × D_aug), made by the first prediction after Σ changes and dropped
    /// by [`CovarianceStructure::pair_mut`]: `diag Σ_f(φ) = R (U_Gᵀφ)²`.
    variance_weights: OnceLock<Matrix<D, T>>,
    /// U_A in host memory, for [`Prediction::logit_basis`](crate::Prediction::logit_basis);
    /// U_A never changes within one `Kron` (a refactor makes a new one).
    host_basis: OnceLock<Arc<[T]>>,
}

impl<D: Device, T: Scalar> Kron<D, T> {
    pub fn new(pair: StoredPair<D, T>, factors: KronFactors<D, T>) -> Self {
        Kron {
            pair,
            factors,
            variance_weights: OnceLock::new(),
            host_basis: OnceLock::new(),
        }
    }

    /// `Ψ∘Ψ` for `Ψ = Φ U_G` (n × D_aug): the inputs' squared coordinates in G's eigenbasis.
    fn squared_rotation(&self, device: &D, phi: &Matrix<D, T>) -> Result<Matrix<D, T>> {
        let mut psi = device.zeros(phi.rows(), phi.cols())?;
        device.gemm(&mut psi, T::zero(), phi, Op::N, &self.factors.g_vecs, Op::N, T::one())?;
        let rotated = device.copy(&psi)?;
        device.hadamard(&mut psi, &rotated)?;
        Ok(psi)
    }
}

/// `A += α gram`, `G += α ΦᵀΦ`.
fn add_term<D: Device, T: Scalar>(
    device: &D,
    a: &mut Matrix<D, T>,
    g: &mut Matrix<D, T>,
    phi: &Matrix<D, T>,
    term: &CurvatureTerm<D, T>,
    alpha: T,
) -> Result<()> {
    let CurvatureTerm::Kronecker { gram } = term else {
        return Err(Error::Unsupported("a non-Kron curvature term for Kron".into()));
    };
    device.axpy(a, alpha, gram)?;
    device.weighted_syrk(g, T::one(), phi, None, alpha)
}

impl<D: Device, T: Scalar> CovarianceStructure<D, T> for Kron<D, T> {
    fn kind(&self) -> Structure {
        Structure::Kron
    }

    fn copy(&self, device: &D) -> Result<Box<dyn CovarianceStructure<D, T>>> {
        Ok(Box::new(Kron::new(self.pair.copy(device)?, self.factors.copy(device)?)))
    }

    fn pair(&self) -> &StoredPair<D, T> {
        &self.pair
    }

    fn pair_mut(&mut self) -> &mut StoredPair<D, T> {
        self.variance_weights = OnceLock::new();
        &mut self.pair
    }

    fn covariance_of(&self, device: &D, precision: &Matrix<D, T>) -> Result<Matrix<D, T>> {
        reciprocals(device, precision)
    }

    fn drift(&self, device: &D, _probes: Option<(usize, u64)>) -> Result<T> {
        elementwise_drift(device, &self.pair.precision, &self.pair.covariance)
    }

    fn curvature_term(
        &self,
        model: &Model<'_, D, T>,
        batch: &Batch<D, T>,
        outputs: &Matrix<D, T>,
        _basis: Option<(&[f64], usize)>,
    ) -> Result<CurvatureTerm<D, T>> {
        let device = model.device;
        let (n, k) = outputs.shape();
        if model.softmax_ggn() {
            // Σ_n M_n = diag(Σ_n p_n) − PᵀP, on the device: the column sums s = 1ᵀP by one
            // GEMM, diag(s) = (1 sᵀ) ∘ I, then one SYRK.
            let ones = device.upload_owned(vec![T::one(); n], 1, n)?;
            let mut sums = device.zeros(1, k)?;
            device.gemm(&mut sums, T::zero(), &ones, Op::N, outputs, Op::N, T::one())?;
            let mut gram = device.zeros(k, k)?;
            device.add_row(&mut gram, &sums)?;
            let mut identity = device.zeros(k, k)?;
            device.add_diagonal(&mut identity, T::one())?;
            device.hadamard(&mut gram, &identity)?;
            device.weighted_syrk(&mut gram, T::one(), outputs, None, -T::one())?;
            return Ok(CurvatureTerm::Kronecker { gram });
        }
        let mut storage = Default::default();
        let sum = host_curvature(model, batch, outputs, &mut storage)?.sum();
        Ok(CurvatureTerm::Kronecker {
            gram: device.upload_owned(from_f64s::<T>(&sum), k, k)?,
        })
    }

    fn empty_sum(&self, device: &D, k: usize, da: usize, _reduced: bool) -> Result<DataTerm<D, T>> {
        DataTerm::zeros(device, &[(k, k), (da, da)])
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
        let [a, g] = sum.parts.as_mut_slice() else {
            return Err(Error::Unsupported("a Kron data term has two parts".into()));
        };
        add_term(device, a, g, phi, term, alpha)
    }

    fn finish(
        &self,
        device: &D,
        mut sum: DataTerm<D, T>,
        tau: T,
        _basis: Option<&Matrix<D, T>>,
    ) -> Result<Box<dyn CovarianceStructure<D, T>>> {
        let (g_sum, a_sum) = (sum.parts.pop(), sum.parts.pop());
        let (Some(a_sum), Some(g_sum)) = (a_sum, g_sum) else {
            return Err(Error::Unsupported("a Kron data term has two parts".into()));
        };
        let factors = KronFactors::unfactored(device, a_sum, g_sum, sum.weight)?;
        Ok(Box::new(factors.refactor(device, tau)?))
    }

    /// The sums with the term added (or removed), refactored.
    fn covariance_step(
        &self,
        device: &D,
        phi: &Matrix<D, T>,
        term: &CurvatureTerm<D, T>,
        sign: Sign,
        tau: T,
        scale: T,
    ) -> Result<CovarianceStep<D, T>> {
        let alpha = if sign == Sign::Minus { scale } else { -scale };
        let mut factors = self.factors.copy(device)?;
        add_term(device, &mut factors.a_sum, &mut factors.g_sum, phi, term, alpha)?;
        // N gains the samples of an update, and loses those of a downdate (never below 0).
        let n = phi.rows() as f64;
        factors.weight = match sign {
            Sign::Minus => factors.weight + n,
            Sign::Plus => (factors.weight - n).max(0.0),
        };
        Ok(CovarianceStep::Replace(Box::new(factors.refactor(device, tau)?)))
    }

    /// `out += α U_A ((U_Aᵀ x U_G) ∘ A) U_Gᵀ`.
    fn apply(&self, device: &D, which: Operand, x: &Matrix<D, T>, out: &mut Matrix<D, T>, alpha: T) -> Result<()> {
        let values = self.pair.get(which);
        let f = &self.factors;
        let (k, da) = x.shape();
        let mut left = device.zeros(k, da)?;
        device.gemm(&mut left, T::zero(), &f.a_vecs, Op::T, x, Op::N, T::one())?;
        let mut rotated = device.zeros(k, da)?;
        device.gemm(&mut rotated, T::zero(), &left, Op::N, &f.g_vecs, Op::N, T::one())?;
        device.hadamard(&mut rotated, values)?;
        device.gemm(&mut left, T::zero(), &f.a_vecs, Op::N, &rotated, Op::N, T::one())?;
        device.gemm(out, T::one(), &left, Op::N, &f.g_vecs, Op::T, alpha)
    }

    /// `e_n[i] = Σ_j (U_Gᵀφ_n)_j² / λ_ij`, n × K, in the basis U_A.
    fn logit_covariance(&self, device: &D, phi: &Matrix<D, T>, k: usize) -> Result<Matrix<D, T>> {
        let psi = self.squared_rotation(device, phi)?;
        let mut eigen = device.zeros(phi.rows(), k)?;
        device.gemm(
            &mut eigen,
            T::zero(),
            &psi,
            Op::N,
            &self.pair.covariance,
            Op::T,
            T::one(),
        )?;
        Ok(eigen)
    }

    /// `diag Σ_f[k] = Σ_i U_A[k,i]² e_n[i] = Σ_j R[k,j] (U_Gᵀφ_n)_j²` with `R = (U_A ∘ U_A) Σ`:
    /// O(K·D_aug) per input instead of the O(K²) of expanding `e_n` in the basis. R costs one
    /// K × K × D_aug GEMM, once per Σ.
    fn logit_variances(&self, device: &D, phi: &Matrix<D, T>, k: usize) -> Result<Matrix<D, T>> {
        let weights = match self.variance_weights.get() {
            Some(weights) => weights,
            None => {
                let mut squares = device.copy(&self.factors.a_vecs)?;
                device.hadamard(&mut squares, &self.factors.a_vecs)?;
                let mut weights = device.zeros(k, phi.cols())?;
                device.gemm(
                    &mut weights,
                    T::zero(),
                    &squares,
                    Op::N,
                    &self.pair.covariance,
                    Op::N,
                    T::one(),
                )?;
                // A racing prediction may have set it first: the same values.
                self.variance_weights.get_or_init(|| weights)
            }
        };
        let psi = self.squared_rotation(device, phi)?;
        let mut variances = device.zeros(phi.rows(), k)?;
        device.gemm(&mut variances, T::zero(), &psi, Op::N, weights, Op::T, T::one())?;
        Ok(variances)
    }

    fn logit_basis(&self) -> Option<&Matrix<D, T>> {
        Some(&self.factors.a_vecs)
    }

    fn host_logit_basis(&self, device: &D) -> Result<Option<Arc<[T]>>> {
        if let Some(basis) = self.host_basis.get() {
            return Ok(Some(basis.clone()));
        }
        let basis: Arc<[T]> = device.download(&self.factors.a_vecs)?.into();
        Ok(Some(self.host_basis.get_or_init(|| basis).clone()))
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
        let host =
            |m: &Matrix<D, T>| -> Result<Vec<f64>> { Ok(device.download(m)?.iter().map(|x| x.as_f64()).collect()) };
        Ok(Spectrum::Kron {
            h: row_curvature_eigenvalues(device, &self.pair.precision, prior, da)?,
            ua: host(&self.factors.a_vecs)?,
            ug: host(&self.factors.g_vecs)?,
        })
    }

    fn per_class_prior(&self) -> bool {
        false
    }

    fn shift_prior(&self, device: &D, precision: Matrix<D, T>, delta: &[f64], da: usize) -> Result<Matrix<D, T>> {
        shift_rows(device, &precision, delta, da)
    }

    /// A, G and N scale by ρ, so `a_i g_j / N` scales by ρ with the eigenvectors unchanged.
    fn scale_sums(&mut self, device: &D, rho: f64) -> Result<()> {
        let scaled = |m: &Matrix<D, T>| -> Result<Matrix<D, T>> {
            let mut out = device.zeros(m.rows(), m.cols())?;
            device.axpy(&mut out, T::from_f64(rho), m)?;
            Ok(out)
        };
        self.factors.a_sum = scaled(&self.factors.a_sum)?;
        self.factors.g_sum = scaled(&self.factors.g_sum)?;
        self.factors.weight *= rho;
        Ok(())
    }

    fn scaled_removal(&self) -> bool {
        false
    }

    /// `vec(U_A (Z_s ∘ √σ) U_Gᵀ)` per draw s.
    fn sample_factor(&self, device: &D, z: faer::MatRef<'_, f64>, k: usize, da: usize) -> Result<faer::Mat<f64>> {
        let host = |m: &Matrix<D, T>, side: usize| -> Result<faer::Mat<f64>> {
            let v = device.download(m)?;
            Ok(faer::Mat::<f64>::from_fn(side, side, |i, j| v[i * side + j].as_f64()))
        };
        let (ua, ug) = (host(&self.factors.a_vecs, k)?, host(&self.factors.g_vecs, da)?);
        let var = device.download(&self.pair.covariance)?;
        let mut out = faer::Mat::<f64>::zeros(z.nrows(), z.ncols());
        for s in 0..z.ncols() {
            let zs = faer::Mat::<f64>::from_fn(k, da, |c, t| {
                z[(c * da + t, s)] * var[c * da + t].as_f64().max(0.0).sqrt()
            });
            let x = &ua * &zs * ug.transpose();
            for c in 0..k {
                for t in 0..da {
                    out[(c * da + t, s)] = x[(c, t)];
                }
            }
        }
        Ok(out)
    }

    /// A, G, U_A and U_G, row-major.
    fn factor_tensors(&self, device: &D) -> Result<Vec<RawTensor<T>>> {
        let f = &self.factors;
        let tensor = |name: &str, m: &Matrix<D, T>| -> Result<RawTensor<T>> {
            Ok(RawTensor {
                name: name.to_string(),
                rows: m.rows(),
                cols: m.cols(),
                values: device.download(m)?,
            })
        };
        Ok(vec![
            tensor("kron_a", &f.a_sum)?,
            tensor("kron_g", &f.g_sum)?,
            tensor("kron_a_vectors", &f.a_vecs)?,
            tensor("kron_g_vectors", &f.g_vecs)?,
        ])
    }

    fn factor_weight(&self) -> Option<f64> {
        Some(self.factors.weight)
    }

    fn restore(
        &self,
        device: &D,
        parts: StoredParts<'_, T>,
        k: usize,
        da: usize,
    ) -> Result<Box<dyn CovarianceStructure<D, T>>> {
        parts.only(&["kron_a", "kron_g", "kron_a_vectors", "kron_g_vectors"])?;
        let (precision, covariance) = parts.pair(k, da)?;
        let required = |name: &'static str, side: usize| -> Result<Matrix<D, T>> {
            let values = parts
                .tensor(name, side * side)?
                .ok_or_else(|| Error::invalid("kron", format!("missing Kronecker factor `{name}`")))?;
            device.upload(values, side, side)
        };
        if !(parts.weight.is_finite() && parts.weight >= 0.0) {
            return Err(Error::invalid(
                "kron_weight",
                format!("must be finite and ≥ 0, got {}", parts.weight),
            ));
        }
        let pair = StoredPair {
            precision: device.upload(precision, k, da)?,
            covariance: device.upload(covariance, k, da)?,
        };
        let factors = KronFactors {
            a_sum: required("kron_a", k)?,
            g_sum: required("kron_g", da)?,
            a_vecs: required("kron_a_vectors", k)?,
            g_vecs: required("kron_g_vectors", da)?,
            weight: parts.weight,
        };
        Ok(Box::new(Kron::new(pair, factors)))
    }

    fn sum_names(&self) -> &'static [&'static str] {
        &["kron_a", "kron_g"]
    }
}
