//! Covariance structures: one file each, behind [`CovarianceStructure`].
//!
//! A structure owns its state (Π and Σ in its stored layout, and whatever else it keeps, such
//! as Kron's running sums and eigenbases) and every operation that depends on it: the closed
//! form of a batch's curvature, accumulating it, the covariance of a Newton step, products
//! with Σ or Π, the logit covariance of a prediction, `log det Π`, prior changes, forgetting,
//! posterior draws and its tensors in the posterior file. Fit, update, predict, evidence and
//! unlearn are written once over the trait; a new structure is one new file and one arm in
//! [`placeholder`].

mod diag;
mod full;
mod kron;
mod shared;

pub(crate) use kron::KronFactors;

use super::model::{Batch, Model};
use super::{Likelihood, Structure};
use crate::device::ops;
use crate::device::{Device, Matrix, Op, OutputWeighting, Sign};
use crate::error::{Error, Result};
use crate::scalar::Scalar;

/// A structure's state and operations.
///
/// `k` is the number of classes K and `da` the head's columns D_aug wherever they appear.
pub(crate) trait CovarianceStructure<D: Device, T: Scalar>: Send + Sync {
    /// The public tag.
    fn kind(&self) -> Structure;

    /// A device-side deep copy.
    fn copy(&self, device: &D) -> Result<Box<dyn CovarianceStructure<D, T>>>;

    /// Π and Σ in the stored layout ([`stored_shape`]).
    fn pair(&self) -> &StoredPair<D, T>;

    /// Π and Σ, to replace (they must stay each other's inverse).
    fn pair_mut(&mut self) -> &mut StoredPair<D, T>;

    /// Π in the stored layout.
    fn precision(&self) -> &Matrix<D, T> {
        &self.pair().precision
    }

    /// Σ = Π⁻¹ in the stored layout.
    fn covariance(&self) -> &Matrix<D, T> {
        &self.pair().covariance
    }

    /// `Σ = Π⁻¹` of a precision in the stored layout: a Cholesky inverse checked for drift
    /// (dense structures) or the reciprocals of the eigenvalues, `NotPositiveDefinite` at the
    /// first one that is not positive.
    fn covariance_of(&self, device: &D, precision: &Matrix<D, T>) -> Result<Matrix<D, T>>;

    /// `max |(ΠΣ − I)|` over all entries, or over `probes` columns drawn from `seed`.
    fn drift(&self, device: &D, probes: Option<(usize, u64)>) -> Result<T>;

    /// The most `rows × (K + D_aug)` values one pass over the data holds for this structure
    /// ([`pass_rows`](crate::posterior::pass_rows)): large passes amortise Full's and Kron's
    /// per-pass GEMMs, small ones keep an elementwise structure's n × K temporaries in cache.
    fn pass_elements(&self) -> usize {
        crate::posterior::CHUNK_ELEMENTS
    }

    /// Whether the data term is the Gram `Σ_n φ_nφ_nᵀ` in part 0 of the sum, whatever the
    /// head (no logits needed): a fit is then one [`Features`](crate::posterior::Features)
    /// Gram over the whole batch.
    fn gram_only(&self, _model: &Model<'_, D, T>) -> bool {
        false
    }

    /// The batch's curvature at the head that gave `outputs` (probabilities or logits,
    /// n × K), in closed form for this structure. Full takes `basis` (R, K'), the reduced
    /// class basis its fit accumulates in.
    fn curvature_term(
        &self,
        model: &Model<'_, D, T>,
        batch: &Batch<D, T>,
        outputs: &Matrix<D, T>,
        basis: Option<(&[f64], usize)>,
    ) -> Result<CurvatureTerm<D, T>>;

    /// A zero data term `Σ_n H_n` for K classes and D_aug columns (`reduced`: Full's fit in
    /// the basis of the classes' complement of 1, side (K−1)·D_aug).
    fn empty_sum(&self, device: &D, k: usize, da: usize, reduced: bool) -> Result<DataTerm<D, T>>;

    /// `sum.parts += α H(term)` (the caller keeps `sum.weight`); `basis` is the reduced class
    /// basis Full's fit accumulates in.
    fn add_curvature(
        &self,
        device: &D,
        sum: &mut DataTerm<D, T>,
        phi: &Matrix<D, T>,
        term: &CurvatureTerm<D, T>,
        alpha: T,
        basis: Option<&Matrix<D, T>>,
    ) -> Result<()>;

    /// The state with `Π = τ I + sum`, `Σ = Π⁻¹` (`basis`: the reduced basis the sum is in).
    fn finish(
        &self,
        device: &D,
        sum: DataTerm<D, T>,
        tau: T,
        basis: Option<&Matrix<D, T>>,
    ) -> Result<Box<dyn CovarianceStructure<D, T>>>;

    /// The covariance after adding (`Sign::Minus`, an update) or removing (`Sign::Plus`, a
    /// downdate) `scale` (> 0) times the term's curvature, computed before anything changes.
    /// `tau` is the prior Kron adds to its eigenvalues.
    fn covariance_step(
        &self,
        device: &D,
        phi: &Matrix<D, T>,
        term: &CurvatureTerm<D, T>,
        sign: Sign,
        tau: T,
        scale: T,
    ) -> Result<CovarianceStep<D, T>>;

    /// The Cholesky factor L of `Π + H(term)` = L Lᵀ (P × P), where factoring is cheaper than
    /// the covariance step (Full's refactor path: P³/3 flops, not the inverse's P³); `None`
    /// where the structure takes the step instead. See [`Preconditioner`].
    fn curvature_factor(
        &self,
        _device: &D,
        _phi: &Matrix<D, T>,
        _term: &CurvatureTerm<D, T>,
    ) -> Result<Option<Matrix<D, T>>> {
        Ok(None)
    }

    /// Applies a Woodbury step `Σ ← Σ ∓ U C⁻¹ Uᵀ` and adds (or removes) the term to Π. Only
    /// the dense structures take Woodbury steps.
    fn commit_woodbury(
        &mut self,
        _device: &D,
        _woodbury: Woodbury<D, T>,
        _phi: &Matrix<D, T>,
        _term: &CurvatureTerm<D, T>,
        _sign: Sign,
    ) -> Result<()> {
        Err(no_woodbury(self.kind()))
    }

    /// `out ← out + α Σ' x` for the covariance `Σ' = Σ ∓ U C⁻¹ Uᵀ` of a Woodbury step,
    /// without forming Σ' (x head-shaped, K × D_aug).
    fn apply_woodbury(
        &self,
        _device: &D,
        _woodbury: &Woodbury<D, T>,
        _sign: Sign,
        _x: &Matrix<D, T>,
        _out: &mut Matrix<D, T>,
        _alpha: T,
    ) -> Result<()> {
        Err(no_woodbury(self.kind()))
    }

    /// Σ after a Woodbury step, in a copy of the state.
    fn woodbury_stepped(
        &self,
        device: &D,
        woodbury: Woodbury<D, T>,
        sign: Sign,
    ) -> Result<Box<dyn CovarianceStructure<D, T>>> {
        let mut next = self.copy(device)?;
        ops::low_rank_update(
            device,
            &mut next.pair_mut().covariance,
            &woodbury.u,
            &woodbury.c_chol,
            sign,
        )?;
        Ok(next)
    }

    /// `out ← out + α · A x` for A = Σ or Π acting on weight space, x a K × D_aug head-shaped
    /// matrix.
    fn apply(&self, device: &D, which: Operand, x: &Matrix<D, T>, out: &mut Matrix<D, T>, alpha: T) -> Result<()>;

    /// The logit covariance of Φ (n × D_aug) in the structure's layout (see
    /// [`Prediction`](super::Prediction)).
    fn logit_covariance(&self, device: &D, phi: &Matrix<D, T>, k: usize) -> Result<Matrix<D, T>>;

    /// The orthonormal basis the logit covariances are diagonal in (Kron's U_A), if any.
    fn logit_basis(&self) -> Option<&Matrix<D, T>> {
        None
    }

    /// [`logit_basis`](Self::logit_basis) in host memory, downloaded once per basis and shared
    /// by every prediction.
    fn host_logit_basis(&self, _device: &D) -> Result<Option<std::sync::Arc<[T]>>> {
        Ok(None)
    }

    /// `diag Σ_f` of Φ (n × K) for a structure with a [`logit_basis`](Self::logit_basis),
    /// whose layout does not hold the diagonal; `Unsupported` for the others.
    fn logit_variances(&self, _device: &D, _phi: &Matrix<D, T>, _k: usize) -> Result<Matrix<D, T>> {
        Err(Error::Unsupported(format!(
            "logit variances outside the {:?} layout",
            self.kind()
        )))
    }

    /// `log det Π` over all K·D_aug weights.
    fn log_det_precision(&self, device: &D, k: usize) -> Result<f64>;

    /// The eigenvalues `h_i ≥ 0` of the data term `Π − diag(τ)` (`prior` holds τ per class)
    /// and how many weights each stands for; `shift_null` as for
    /// [`CovarianceStructure::curvature_spectrum`].
    fn curvature_eigenvalues(
        &self,
        device: &D,
        prior: &[f64],
        k: usize,
        da: usize,
        shift_null: bool,
    ) -> Result<(Vec<f64>, f64)>;

    /// The data curvature `H = Π − T` (T the prior `prior`, 1 or K values) in weight space as
    /// `U diag(h) Uᵀ`, in the form the structure holds it (see [`Spectrum`]): one
    /// eigendecomposition for Full and Shared, none for Diag and Kron. `shift_null`: H is null
    /// on a shift of all K logits together, `1_K ⊗ v` (a softmax likelihood's curvature), which
    /// Full's eigendecomposition then leaves out.
    fn curvature_spectrum(
        &self,
        device: &D,
        prior: &[f64],
        k: usize,
        da: usize,
        shift_null: bool,
    ) -> Result<Spectrum<T>>;

    /// Whether the structure takes one τ per class.
    fn per_class_prior(&self) -> bool;

    /// The per-class τ that maximise the evidence (`norms`: `‖ŵ_k‖²`; `prior`: the current
    /// τ per class); `None` where the structure has no per-class prior.
    fn per_class_optimum(&self, _device: &D, _norms: &[f64], _prior: &[f64], _da: usize) -> Result<Option<Vec<f64>>> {
        Ok(None)
    }

    /// `precision + diag(δ)` with δ constant over each class's weights (`delta` holds 1 value,
    /// or one per class), in place where the structure can.
    fn shift_prior(&self, device: &D, precision: Matrix<D, T>, delta: &[f64], da: usize) -> Result<Matrix<D, T>>;

    /// Scales what the structure keeps besides Π by ρ, for forgetting (Kron's sums and their
    /// weight N); nothing for the others.
    fn scale_sums(&mut self, _device: &D, _rho: f64) -> Result<()> {
        Ok(())
    }

    /// Whether a scaled removal of curvature is a covariance step the structure has (the
    /// Newton head recovery of unlearning); Kron refactors its sums instead.
    fn scaled_removal(&self) -> bool {
        true
    }

    /// The Shared structure's output weighting, where the fused sequential Sherman–Morrison
    /// routine of the device applies to it.
    fn fused_sequential(&self) -> Option<OutputWeighting> {
        None
    }

    /// `Σ ← Π⁻¹` from the stored precision, discarding drift. On error nothing changes.
    fn refresh_covariance(&mut self, device: &D) -> Result<()> {
        let covariance = self.covariance_of(device, self.precision())?;
        self.pair_mut().covariance = covariance;
        Ok(())
    }

    /// `Π ← base + diag(δ)` with δ constant over each class's weights ([`shift_prior`]), and
    /// `Σ ← Π⁻¹`: a new prior, or forgetting. On error nothing changes.
    ///
    /// [`shift_prior`]: CovarianceStructure::shift_prior
    ///
    /// With `spectrum`, the spectrum of `base` less its prior, and one τ for every class, Σ comes
    /// from it ([`Spectrum::dense_covariance`]) where the structure's spectrum gives Σ in the
    /// stored layout, in place of a Cholesky inverse.
    fn reprior(
        &mut self,
        device: &D,
        base: Matrix<D, T>,
        delta: &[f64],
        da: usize,
        spectrum: Option<(&Spectrum<T>, f64)>,
    ) -> Result<()> {
        let precision = self.shift_prior(device, base, delta, da)?;
        let covariance = match spectrum.and_then(|(s, tau)| s.dense_covariance(tau)) {
            Some(sigma) => {
                let n = precision.rows();
                let covariance = device.upload_owned(sigma, n, n)?;
                check_inverse(device, &precision, &covariance)?;
                covariance
            }
            None => self.covariance_of(device, &precision)?,
        };
        *self.pair_mut() = StoredPair { precision, covariance };
        Ok(())
    }

    /// The seed paper's sequential rule (one undamped step of `gamma` per sample) fused on the
    /// device, where the structure has it ([`fused_sequential`]): the head and Σ by the
    /// Sherman–Morrison recursion, then Π by the weights the recursion used. `false`, and
    /// nothing changed, where it has not.
    ///
    /// [`fused_sequential`]: CovarianceStructure::fused_sequential
    fn sequential_fused(
        &mut self,
        device: &D,
        head: &mut Matrix<D, T>,
        fixed_bias: Option<&Matrix<D, T>>,
        batch: &Batch<D, T>,
        gamma: T,
    ) -> Result<bool> {
        let Some(weighting) = self.fused_sequential() else {
            return Ok(false);
        };
        let pair = self.pair_mut();
        let used = ops::sherman_morrison_sequence(
            device,
            &mut pair.covariance,
            head,
            fixed_bias,
            &batch.phi,
            &batch.targets,
            gamma,
            weighting,
        )?;
        device.weighted_syrk(&mut pair.precision, T::one(), &batch.phi, Some(&used), T::one())?;
        Ok(true)
    }

    /// `L Z` for the P × S standard normal draws Z (row `c·D_aug + t` is weight (c, t)) and
    /// `L Lᵀ = Σ`.
    fn sample_factor(&self, device: &D, z: faer::MatRef<'_, f64>, k: usize, da: usize) -> Result<faer::Mat<f64>>;

    /// What the structure keeps besides Π and Σ, for the posterior file.
    fn factor_tensors(&self, _device: &D) -> Result<Vec<RawTensor<T>>> {
        Ok(Vec::new())
    }

    /// The weight N of Kron's sums `(A ⊗ G)/N`; `None` for the others.
    fn factor_weight(&self) -> Option<f64> {
        None
    }

    /// The state from stored Π, Σ and the structure's own tensors, each shape checked.
    fn restore(
        &self,
        device: &D,
        parts: StoredParts<'_, T>,
        k: usize,
        da: usize,
    ) -> Result<Box<dyn CovarianceStructure<D, T>>>;

    /// The names of the data term's parts, in the order of [`DataTerm::parts`].
    fn sum_names(&self) -> &'static [&'static str];
}

/// Π and Σ = Π⁻¹ in a structure's stored layout: P × P (Full), D_aug × D_aug (Shared), or
/// K × D_aug eigenvalues (Diag: the diagonal; Kron: `a_i g_j / N + τ` in its bases) and their
/// reciprocals.
pub(crate) struct StoredPair<D: Device, T: Scalar> {
    pub precision: Matrix<D, T>,
    pub covariance: Matrix<D, T>,
}

impl<D: Device, T: Scalar> StoredPair<D, T> {
    /// 1 × 1 zeros, for a state that holds no data yet.
    fn placeholder(device: &D) -> Result<Self> {
        Ok(StoredPair {
            precision: device.zeros(1, 1)?,
            covariance: device.zeros(1, 1)?,
        })
    }

    /// A device-side copy.
    pub fn copy(&self, device: &D) -> Result<Self> {
        Ok(StoredPair {
            precision: device.copy(&self.precision)?,
            covariance: device.copy(&self.covariance)?,
        })
    }

    /// Σ or Π.
    pub fn get(&self, which: Operand) -> &Matrix<D, T> {
        match which {
            Operand::Covariance => &self.covariance,
            Operand::Precision => &self.precision,
        }
    }
}

/// Which stored matrix [`CovarianceStructure::apply`] multiplies by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operand {
    /// Σ.
    Covariance,
    /// Π.
    Precision,
}

/// The data part `Σ_n H_n` of a precision as a structure accumulates it, with the weight of the
/// samples in it.
pub(crate) struct DataTerm<D: Device, T: Scalar> {
    /// Full, Shared: the dense sum; Diag: K × D_aug; Kron: `A = Σ w_n M_n` and `G = Σ w_n φφᵀ`.
    pub parts: Vec<Matrix<D, T>>,
    /// `Σ_n w_n`: the samples in the sum, until forgetting discounts them.
    pub weight: f64,
}

impl<D: Device, T: Scalar> DataTerm<D, T> {
    /// Zeros of the given part shapes.
    pub fn zeros(device: &D, shapes: &[(usize, usize)]) -> Result<Self> {
        Ok(DataTerm {
            parts: shapes.iter().map(|&(r, c)| device.zeros(r, c)).collect::<Result<_>>()?,
            weight: 0.0,
        })
    }

    /// A device-side copy.
    pub fn copy(&self, device: &D) -> Result<Self> {
        Ok(DataTerm {
            parts: self.parts.iter().map(|p| device.copy(p)).collect::<Result<_>>()?,
            weight: self.weight,
        })
    }

    /// `self + other`, part by part (shapes checked).
    pub fn sum(&self, device: &D, other: &Self) -> Result<Self> {
        let mut out = self.copy(device)?;
        if out.parts.len() != other.parts.len() {
            return Err(Error::invalid("sum", "data terms of different structures"));
        }
        for (mine, theirs) in out.parts.iter_mut().zip(&other.parts) {
            device.axpy(mine, T::one(), theirs)?;
        }
        out.weight += other.weight;
        Ok(out)
    }
}

/// A tensor a structure stores in the posterior file beside Π and Σ.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawTensor<T> {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<T>,
}

/// What a posterior file holds of a structure's state, for [`CovarianceStructure::restore`].
pub(crate) struct StoredParts<'a, T> {
    pub precision: &'a [T],
    pub covariance: &'a [T],
    /// The file's other tensors.
    pub tensors: &'a [RawTensor<T>],
    pub weight: f64,
}

impl<T: Scalar> StoredParts<'_, T> {
    /// The tensor `name`, checked to hold `len` finite values; `None` if absent.
    pub fn tensor(&self, name: &'static str, len: usize) -> Result<Option<&[T]>> {
        match self.tensors.iter().find(|t| t.name == name) {
            None => Ok(None),
            Some(t) if t.values.len() != len => Err(Error::ShapeMismatch {
                argument: name,
                expected: format!("{len} elements"),
                got: format!("{} elements", t.values.len()),
            }),
            Some(t) => {
                crate::host::check_finite(name, &t.values)?;
                Ok(Some(&t.values))
            }
        }
    }

    /// Π and Σ checked against the stored shape (rows × cols) and for finite values.
    pub fn pair(&self, rows: usize, cols: usize) -> Result<(&[T], &[T])> {
        for (name, v) in [("precision", self.precision), ("covariance", self.covariance)] {
            if v.len() != rows * cols {
                return Err(Error::ShapeMismatch {
                    argument: name,
                    expected: format!("{} elements", rows * cols),
                    got: format!("{} elements", v.len()),
                });
            }
            crate::host::check_finite(name, v)?;
        }
        Ok((self.precision, self.covariance))
    }

    /// Refuses tensors this structure does not keep.
    pub fn only(&self, known: &[&str]) -> Result<()> {
        match self.tensors.iter().find(|t| !known.contains(&t.name.as_str())) {
            Some(t) => Err(Error::invalid(
                "tensors",
                format!("`{}` is not kept by this structure", t.name),
            )),
            None => Ok(()),
        }
    }
}

/// One batch's curvature, in the form its structure consumes.
pub(crate) enum CurvatureTerm<D: Device, T: Scalar> {
    /// Softmax GGN for Full: the device kernels build `Λ_n` from the probabilities.
    Softmax { probs: Matrix<D, T> },
    /// Shared: `Σ_n m_n φ_nφ_nᵀ`, `None` for all ones.
    Weighted { weights: Option<Matrix<D, T>> },
    /// Full, any other curvature: rows `s ⊗ φ` whose Gram matrix is the curvature.
    Rows { rows: Matrix<D, T> },
    /// Diag: `Q_nk = M_n[k,k]`, n × K; the curvature is `Qᵀ (Φ ∘ Φ)`.
    Diagonal { weights: Matrix<D, T> },
    /// Kron: `Σ_n M_n` (K × K); G gains `ΦᵀΦ`.
    Kronecker { gram: Matrix<D, T> },
}

/// `Σ' = Σ ∓ U C⁻¹ Uᵀ` with `c_chol = chol(C)`.
pub(crate) struct Woodbury<D: Device, T: Scalar> {
    pub u: Matrix<D, T>,
    pub c_chol: Matrix<D, T>,
}

/// The covariance part of a Newton step, computed before anything is committed.
pub(crate) enum CovarianceStep<D: Device, T: Scalar> {
    /// A low-rank change of Σ; Π gains (or loses) the curvature on commit.
    Woodbury(Woodbury<D, T>),
    /// The new state, refactored.
    Replace(Box<dyn CovarianceStructure<D, T>>),
}

/// Writes a step into `state`; only device faults can fail here.
pub(crate) fn commit<D: Device, T: Scalar>(
    device: &D,
    state: &mut Box<dyn CovarianceStructure<D, T>>,
    step: CovarianceStep<D, T>,
    phi: &Matrix<D, T>,
    term: &CurvatureTerm<D, T>,
    sign: Sign,
) -> Result<()> {
    match step {
        CovarianceStep::Woodbury(w) => state.commit_woodbury(device, w, phi, term, sign),
        CovarianceStep::Replace(next) => {
            *state = next;
            Ok(())
        }
    }
}

/// The error of a Woodbury operation on a structure that refactors instead.
fn no_woodbury(kind: Structure) -> Error {
    Error::Unsupported(format!("a Woodbury step for the {kind:?} structure"))
}

/// An approximation M⁻¹ of `(Π + H)⁻¹` for a batch's curvature H, applied without touching the
/// state: the state's own covariance `Π⁻¹` (H left out, nothing formed), or `(Π + H_s(w_p))⁻¹`
/// for the structure's curvature H_s at some head `w_p`, by a Cholesky factor of `Π + H_s`
/// where the structure has one ([`CovarianceStructure::curvature_factor`]) or by the
/// covariance step H_s makes.
pub(crate) struct Preconditioner<D: Device, T: Scalar> {
    /// The curvature at `w_p`, for the caller to commit.
    pub term: CurvatureTerm<D, T>,
    inverse: Inverse<D, T>,
}

enum Inverse<D: Device, T: Scalar> {
    Prior,
    Factor(Matrix<D, T>),
    Step(CovarianceStep<D, T>),
}

impl<D: Device, T: Scalar> Preconditioner<D, T> {
    /// The state's covariance `Π⁻¹`, with the batch's curvature `term` kept for the caller.
    pub fn prior(term: CurvatureTerm<D, T>) -> Self {
        Preconditioner {
            term,
            inverse: Inverse::Prior,
        }
    }

    /// Factors `Π + H_s(term)`, or forms the covariance step where the structure has no factor.
    pub fn new(
        device: &D,
        state: &dyn CovarianceStructure<D, T>,
        phi: &Matrix<D, T>,
        term: CurvatureTerm<D, T>,
        tau: T,
    ) -> Result<Self> {
        let inverse = match state.curvature_factor(device, phi, &term)? {
            Some(factor) => Inverse::Factor(factor),
            None => Inverse::Step(state.covariance_step(device, phi, &term, Sign::Minus, tau, T::one())?),
        };
        Ok(Preconditioner { term, inverse })
    }

    /// The curvature and the covariance step it made, where one was formed.
    pub fn into_parts(self) -> (CurvatureTerm<D, T>, Option<CovarianceStep<D, T>>) {
        match self.inverse {
            Inverse::Step(step) => (self.term, Some(step)),
            Inverse::Prior | Inverse::Factor(_) => (self.term, None),
        }
    }

    /// `out += M⁻¹ x` (x head-shaped, K × D_aug): `Σ x`, `L⁻ᵀ L⁻¹ vec(x)`, or `Σ' x` for the
    /// step's covariance Σ'.
    pub fn apply(
        &self,
        device: &D,
        state: &dyn CovarianceStructure<D, T>,
        x: &Matrix<D, T>,
        out: &mut Matrix<D, T>,
    ) -> Result<()> {
        match &self.inverse {
            Inverse::Prior => state.apply(device, Operand::Covariance, x, out, T::one()),
            Inverse::Factor(factor) => {
                let (k, da) = x.shape();
                let mut v = device.copy(x)?;
                v.reshape(k * da, 1)?;
                device.triangular_solve(factor, &mut v, Op::N)?;
                device.triangular_solve(factor, &mut v, Op::T)?;
                v.reshape(k, da)?;
                device.axpy(out, T::one(), &v)
            }
            Inverse::Step(step) => apply_stepped(device, state, step, Sign::Minus, x, out, T::one()),
        }
    }
}

/// `out += α Σ' x` for the covariance Σ' a step leads to, without touching `state`.
pub(crate) fn apply_stepped<D: Device, T: Scalar>(
    device: &D,
    state: &dyn CovarianceStructure<D, T>,
    step: &CovarianceStep<D, T>,
    sign: Sign,
    x: &Matrix<D, T>,
    out: &mut Matrix<D, T>,
    alpha: T,
) -> Result<()> {
    match step {
        CovarianceStep::Woodbury(w) => state.apply_woodbury(device, w, sign, x, out, alpha),
        CovarianceStep::Replace(next) => next.apply(device, Operand::Covariance, x, out, alpha),
    }
}

/// `out += α X Σ'` for rows X (r × n) and the covariance `Σ' = Σ ∓ U C⁻¹ Uᵀ` (n × n, symmetric)
/// of a Woodbury step: `X Σ ∓ ((C⁻¹ Uᵀ Xᵀ)ᵀ) Uᵀ`, O(r·n·(n + rank)).
pub(super) fn woodbury_rows<D: Device, T: Scalar>(
    device: &D,
    covariance: &Matrix<D, T>,
    woodbury: &Woodbury<D, T>,
    sign: Sign,
    x: &Matrix<D, T>,
    out: &mut Matrix<D, T>,
    alpha: T,
) -> Result<()> {
    device.gemm(out, T::one(), x, Op::N, covariance, Op::N, alpha)?;
    let mut y = device.zeros(woodbury.u.cols(), x.rows())?;
    device.gemm(&mut y, T::zero(), &woodbury.u, Op::T, x, Op::T, T::one())?;
    device.triangular_solve(&woodbury.c_chol, &mut y, Op::N)?;
    device.triangular_solve(&woodbury.c_chol, &mut y, Op::T)?;
    let beta = if sign == Sign::Minus { -alpha } else { alpha };
    device.gemm(out, T::one(), &y, Op::T, &woodbury.u, Op::T, beta)
}

/// The state a step leads to, without touching `state`.
pub(crate) fn stepped<D: Device, T: Scalar>(
    device: &D,
    state: &dyn CovarianceStructure<D, T>,
    step: CovarianceStep<D, T>,
    sign: Sign,
) -> Result<Box<dyn CovarianceStructure<D, T>>> {
    match step {
        CovarianceStep::Woodbury(w) => state.woodbury_stepped(device, w, sign),
        CovarianceStep::Replace(next) => Ok(next),
    }
}

/// A structure's state of 1 × 1 placeholders, for a shell that holds no data yet and to
/// [`restore`](CovarianceStructure::restore) or [`finish`](CovarianceStructure::finish) from.
/// The one place that maps a [`Structure`] to its implementation.
pub(crate) fn placeholder<D: Device, T: Scalar>(
    structure: Structure,
    device: &D,
) -> Result<Box<dyn CovarianceStructure<D, T>>> {
    let pair = StoredPair::placeholder(device)?;
    Ok(match structure {
        Structure::Full => Box::new(full::Full { pair }),
        Structure::Shared(weighting) => Box::new(shared::Shared { weighting, pair }),
        Structure::Diag => Box::new(diag::Diag { pair }),
        Structure::Kron => Box::new(kron::Kron::new(
            pair,
            KronFactors::unfactored(device, device.zeros(1, 1)?, device.zeros(1, 1)?, 0.0)?,
        )),
    })
}

/// Shape of the stored Π and Σ for a structure, K classes and D_aug columns.
pub(crate) fn stored_shape(structure: Structure, k: usize, da: usize) -> (usize, usize) {
    match structure {
        Structure::Full => (k * da, k * da),
        Structure::Shared(_) => (da, da),
        Structure::Diag | Structure::Kron => (k, da),
    }
}

/// Bytes a posterior of this structure holds at K classes, D_aug columns and `elem`-byte
/// elements: Π and Σ (Full 2P², P = K·D_aug; Shared 2·D_aug²; Diag 2·K·D_aug), Kron's factor
/// sums and eigenbases (4K² + 4D_aug² more), and the mean (K·D_aug).
pub(crate) fn resident_bytes(structure: Structure, k: usize, da: usize, elem: usize) -> u64 {
    // In f64, so that no K or D (a corrupted file's included) overflows; saturated on return.
    let (k, da, elem) = (k as f64, da as f64, elem as f64);
    let pair = 2.0
        * match structure {
            Structure::Full => (k * da) * (k * da),
            Structure::Shared(_) => da * da,
            Structure::Diag | Structure::Kron => k * da,
        };
    let factors = match structure {
        Structure::Kron => 4.0 * (k * k + da * da),
        _ => 0.0,
    };
    saturate((pair + factors + k * da) * elem)
}

/// How memory errors name a posterior: "a full posterior at K = 30, D_aug = 513 (f32)".
pub(crate) fn describe<T: Scalar>(structure: Structure, k: usize, da: usize) -> String {
    format!(
        "a {} posterior at K = {k}, D_aug = {da} ({})",
        structure.name(),
        T::DTYPE.name()
    )
}

/// Peak bytes a fit of this structure allocates before its passes over the data: the data
/// term, Π, Σ and the workspace that inverts Π. Measured with a counting allocator (the
/// memory suite checks it): Full 3.6–3.8 P² elements, counted as 4P²; Shared's D_aug² pair,
/// sum and factorisation, 4·D_aug²; Kron's and Shared's eigendecompositions in f64.
pub(crate) fn fit_bytes(structure: Structure, k: usize, da: usize, elem: usize) -> u64 {
    let (kk, d, e) = (k as f64, da as f64, elem as f64);
    let bytes = match structure {
        Structure::Full => 4.0 * (kk * d) * (kk * d) * e,
        Structure::Shared(_) => 4.0 * d * d * e + 64.0 * d * d,
        Structure::Diag => 4.0 * kk * d * e,
        Structure::Kron => (3.0 * kk * d + 4.0 * kk * kk + 4.0 * d * d) * 8.0,
    };
    saturate(bytes + resident_bytes(structure, k, da, elem) as f64 / 2.0)
}

/// Peak bytes of one pass of `rows` samples over the data: the logits and the per-sample
/// output curvatures (Full K², Shared 1, else K each) in f64, and the staged features.
pub(crate) fn pass_bytes(structure: Structure, rows: usize, k: usize, da: usize, elem: usize) -> u64 {
    let (rows, k, da, elem) = (rows as f64, k as f64, da as f64, elem as f64);
    let curvature = match structure {
        Structure::Full => k * k,
        Structure::Shared(_) => 1.0,
        Structure::Diag | Structure::Kron => k,
    };
    saturate(rows * ((k + curvature) * 8.0 + da * elem))
}

/// Multiply-adds per input row of a pass over the data (accumulating its curvature, or
/// predicting): Full K²·D_aug², Shared D_aug², Diag K·D_aug, Kron K·D_aug² + K²·D_aug.
pub(crate) fn row_flops(structure: Structure, k: usize, da: usize) -> u64 {
    let (k, da) = (k as f64, da as f64);
    saturate(match structure {
        Structure::Full => k * k * da * da,
        Structure::Shared(_) => da * da + k,
        Structure::Diag => k * da,
        Structure::Kron => k * da * da + k * k * da,
    })
}

/// Rows per pass so that a pass is about `2^log2_flops` multiply-adds, so that a long
/// operation can be [interrupted](crate::interrupt) between passes; at least `least` rows.
pub(crate) fn rows_for_flops(structure: Structure, k: usize, da: usize, log2_flops: u32, least: usize) -> usize {
    usize::try_from((1u64 << log2_flops) / row_flops(structure, k, da).max(1))
        .unwrap_or(usize::MAX)
        .max(least)
}

/// A non-negative byte or flop count as a `u64`, saturating.
fn saturate(value: f64) -> u64 {
    match value >= u64::MAX as f64 {
        true => u64::MAX,
        false => value as u64,
    }
}

/// "; Kron needs 12 MB, Diag 123 KB" over the structures other than `structure` whose fit
/// needs at most `available` bytes, or "" when none does.
pub(crate) fn cheaper_structures(structure: Structure, k: usize, da: usize, elem: usize, available: u64) -> String {
    let fitting: Vec<String> = [
        Structure::Kron,
        Structure::Diag,
        Structure::Shared(crate::posterior::OutputWeighting::default()),
    ]
    .into_iter()
    .filter(|s| std::mem::discriminant(s) != std::mem::discriminant(&structure))
    .map(|s| (s, fit_bytes(s, k, da, elem)))
    .filter(|&(_, bytes)| bytes <= available)
    .map(|(s, bytes)| format!("{} {}", s.name(), crate::memory::format_bytes(bytes)))
    .collect();
    match fitting.split_first() {
        None => String::new(),
        Some((first, rest)) => {
            let mut text = format!(
                "; {} would fit: {}",
                if rest.is_empty() {
                    "this structure"
                } else {
                    "these structures"
                },
                first
            );
            for r in rest {
                text.push_str(", ");
                text.push_str(r);
            }
            text
        }
    }
}

/// Whether the Full fit accumulates in the reduced class basis: softmax curvature vanishes
/// along `1 ⊗ x`.
pub(crate) fn uses_reduced_basis(structure: Structure, likelihood: Likelihood) -> bool {
    structure == Structure::Full && likelihood == Likelihood::Classification
}

// ---- Helpers shared by the structures ------------------------------------------------------

/// Rejects an inverse whose `max |(ΠΣ − I)[:, j]|` over 8 fixed probe columns exceeds
/// [`ILL_CONDITIONED_DRIFT`](crate::error::ILL_CONDITIONED_DRIFT): a Cholesky that succeeded on a
/// nearly singular matrix.
pub(crate) fn check_inverse<D: Device, T: Scalar>(
    device: &D,
    precision: &Matrix<D, T>,
    covariance: &Matrix<D, T>,
) -> Result<()> {
    let n = precision.rows();
    if n == 0 {
        return Ok(());
    }
    let probes = 8.min(n);
    let columns: Vec<usize> = (0..probes).map(|c| c * n / probes).collect();
    let drift = probe_drift(device, precision, covariance, &columns)?.as_f64();
    if drift.is_nan() || drift > crate::error::ILL_CONDITIONED_DRIFT {
        return Err(Error::IllConditioned { drift });
    }
    Ok(())
}

/// `max_j |(ΠΣ − I)[:, j]|` over the given columns j (two n × probes products).
fn probe_drift<D: Device, T: Scalar>(
    device: &D,
    precision: &Matrix<D, T>,
    covariance: &Matrix<D, T>,
    columns: &[usize],
) -> Result<T> {
    let (n, count) = (precision.rows(), columns.len());
    let mut e = vec![T::zero(); n * count];
    for (c, &row) in columns.iter().enumerate() {
        e[row * count + c] = T::one();
    }
    let e = device.upload(&e, n, count)?;
    let mut x = device.zeros(n, count)?;
    device.gemm(&mut x, T::zero(), covariance, Op::N, &e, Op::N, T::one())?;
    let mut y = device.copy(&e)?;
    device.gemm(&mut y, -T::one(), precision, Op::N, &x, Op::N, T::one())?;
    device.max_abs(&y)
}

/// Drift of a dense pair: all of `ΠΣ − I`, or `probes` columns drawn from `seed`.
fn dense_drift<D: Device, T: Scalar>(
    device: &D,
    precision: &Matrix<D, T>,
    covariance: &Matrix<D, T>,
    probes: Option<(usize, u64)>,
) -> Result<T> {
    let n = precision.rows();
    match probes {
        Some((probes, seed)) => {
            let mut rng = crate::random::SplitMix64::new(seed);
            let count = probes.clamp(1, n.max(1));
            let columns: Vec<usize> = (0..count).map(|_| (rng.next_u64() % n as u64) as usize).collect();
            probe_drift(device, precision, covariance, &columns)
        }
        None => {
            let mut product = device.zeros(n, n)?;
            device.gemm(&mut product, T::zero(), precision, Op::N, covariance, Op::N, T::one())?;
            device.add_diagonal(&mut product, -T::one())?;
            device.max_abs(&product)
        }
    }
}

/// Drift of eigenvalue pairs: `max |π σ − 1|`.
fn elementwise_drift<D: Device, T: Scalar>(
    device: &D,
    precision: &Matrix<D, T>,
    covariance: &Matrix<D, T>,
) -> Result<T> {
    let mut product = device.copy(precision)?;
    device.hadamard(&mut product, covariance)?;
    let ones = device.upload(&vec![T::one(); product.len()], product.rows(), product.cols())?;
    device.axpy(&mut product, -T::one(), &ones)?;
    device.max_abs(&product)
}

/// The checked Cholesky inverse of a dense SPD precision.
fn dense_inverse<D: Device, T: Scalar>(device: &D, precision: &Matrix<D, T>) -> Result<Matrix<D, T>> {
    let covariance = ops::spd_inverse(device, precision)?;
    check_inverse(device, precision, &covariance)?;
    Ok(covariance)
}

/// Reciprocals of positive eigenvalues, `NotPositiveDefinite` at the first that is not.
fn reciprocals<D: Device, T: Scalar>(device: &D, precision: &Matrix<D, T>) -> Result<Matrix<D, T>> {
    let mut values = device.download(precision)?;
    for (index, v) in values.iter_mut().enumerate() {
        if !(*v > T::zero() && v.is_finite()) {
            return Err(Error::NotPositiveDefinite { index });
        }
        *v = T::one() / *v;
    }
    device.upload_owned(values, precision.rows(), precision.cols())
}

/// `2 Σ log L_ii` of the Cholesky factor of a dense SPD matrix.
fn dense_log_det<D: Device, T: Scalar>(device: &D, precision: &Matrix<D, T>) -> Result<f64> {
    let mut l = device.copy(precision)?;
    device.cholesky(&mut l)?;
    let n = l.rows();
    let l = device.download(&l)?;
    Ok(2.0 * (0..n).map(|i| l[i * n + i].as_f64().ln()).sum::<f64>())
}

/// Eigenvalues of a dense precision less its prior diagonal (`tau_of(i)` for row i), clipped
/// at 0; `shift_null` as for [`dense_spectrum`].
fn dense_curvature_eigenvalues<D: Device, T: Scalar>(
    device: &D,
    precision: &Matrix<D, T>,
    tau_of: impl Fn(usize) -> f64,
    shift_null: Option<usize>,
) -> Result<Vec<f64>> {
    let (n, (p, null)) = (
        precision.rows(),
        host_curvature_matrix(device, precision, tau_of, shift_null)?,
    );
    let mut h = vec![0.0; null];
    h.extend(symmetric_eigenvalues(decomposed(&p, n, null))?);
    Ok(h.into_iter().map(|x| x.max(0.0)).collect())
}

/// A structure's data curvature `H = U diag(h) Uᵀ` in weight space (P = K·D_aug, weights
/// ordered class by class), from which the covariance at any prior τ is
/// `Σ(τ) = U diag(1/(h + τ)) Uᵀ` without another factorisation.
pub(crate) enum Spectrum<T> {
    /// Full, h of length P. Not `reduced`: U = V, the P × P `vectors` (row-major, one
    /// eigenvector per column). `reduced` (H null on every `1_K ⊗ v`):
    /// `U = [1_K/√K ⊗ I | (Q₁ ⊗ I) W]`, h's first D_aug values 0, and `vectors` the
    /// `(P − D_aug)`-square W of `H₁` (see [`dense_spectrum`]).
    Dense {
        h: Vec<f64>,
        vectors: Vec<T>,
        reduced: bool,
    },
    /// Shared: `U = I_K ⊗ V` with V D_aug × D_aug (row-major, columns); h of length D_aug,
    /// the same for every class.
    Shared { h: Vec<f64>, vectors: Vec<f64> },
    /// Diag: U = I, h K × D_aug.
    Diagonal { h: Vec<f64> },
    /// Kron: `U = U_A ⊗ U_G` (K × K and D_aug × D_aug, row-major, columns), h K × D_aug with
    /// `h[a·D_aug + g]` on `u_a ⊗ u_g`.
    Kron { h: Vec<f64>, ua: Vec<f64>, ug: Vec<f64> },
}

/// The spectrum of `H = precision − diag(τ)` (Full, Shared): eigenvalues clamped at 0,
/// eigenvectors as the columns of a row-major matrix in the precision's own T.
///
/// With `shift_null = Some(K)` (H null on every `1_K ⊗ v`, v of length n/K), only the other
/// class directions are decomposed: with Q the K × K reflection of [`shift_reflector`], whose
/// first column is `1/√K`, and `Q₁` its other columns, `H = (Q₁ ⊗ I) H₁ (Q₁ ⊗ I)ᵀ` for the
/// `(K − 1)·n/K` square `H₁ = (Q₁ ⊗ I)ᵀ H (Q₁ ⊗ I)` ([`reflect_classes`]), whose eigenpairs
/// `(h, W)` give H's as `(h, (Q₁ ⊗ I) W)`, beside `(0, 1_K/√K ⊗ e_d)` on the null space:
/// `((K − 1)/K)³` of the dense eigendecomposition's work. Returns `(h, vectors, reduced)` as
/// [`Spectrum::Dense`] holds them.
fn dense_spectrum<D: Device, T: Scalar>(
    device: &D,
    precision: &Matrix<D, T>,
    tau_of: impl Fn(usize) -> f64,
    shift_null: Option<usize>,
) -> Result<(Vec<f64>, Vec<T>, bool)> {
    let (n, (p, null)) = (
        precision.rows(),
        host_curvature_matrix(device, precision, tau_of, shift_null)?,
    );
    let (values, vectors) = symmetric_eigen_of(decomposed(&p, n, null))?;
    let mut h = vec![0.0; null];
    h.extend(values.into_iter().map(|x| x.max(0.0)));
    Ok((h, vectors, null > 0))
}

/// `H = precision − diag(τ)` on the host (row-major n × n), and the rows of the null space it
/// leaves out: with `shift_null = Some(K)` (K > 1 dividing n) H is reflected in place
/// ([`reflect_classes`]) and its first n/K rows and columns are the common shift's, else none
/// are left out.
fn host_curvature_matrix<D: Device, T: Scalar>(
    device: &D,
    precision: &Matrix<D, T>,
    tau_of: impl Fn(usize) -> f64,
    shift_null: Option<usize>,
) -> Result<(Vec<T>, usize)> {
    let n = precision.rows();
    let mut p = device.download(precision)?;
    for i in 0..n {
        p[i * n + i] -= T::from_f64(tau_of(i));
    }
    match shift_null.filter(|&k| k > 1 && n.is_multiple_of(k)) {
        Some(k) => {
            reflect_classes(&mut p, n, k);
            Ok((p, n / k))
        }
        None => Ok((p, 0)),
    }
}

/// The trailing `(n − null)` square of the row-major n × n `p`: what [`host_curvature_matrix`] leaves
/// to decompose.
fn decomposed<T: Scalar>(p: &[T], n: usize, null: usize) -> faer::MatRef<'_, T> {
    faer::MatRef::from_row_major_slice(p, n, n).submatrix(null, null, n - null, n - null)
}

/// `H ← (Q ⊗ I) H (Q ⊗ I)` in place for the row-major n × n symmetric H (`p`) and the K × K
/// reflection `Q = I − β u uᵀ` of [`shift_reflector`], summed in f64: with `Y = H (u ⊗ I)`
/// (n × n/K) and `S = (u ⊗ I)ᵀ Y`, the new `H[(a,i),(b,j)]` is
/// `H[(a,i),(b,j)] − β u_b Y[(a,i),j] − β u_a Y[(b,j),i] + β² u_a u_b S[i,j]`. Its trailing
/// `(K − 1)·n/K` square is then `H₁ = (Q₁ ⊗ I)ᵀ H (Q₁ ⊗ I)`. O(n²) work and n²/K f64 beside H.
fn reflect_classes<T: Scalar>(p: &mut [T], n: usize, k: usize) {
    let da = n / k;
    let (u, beta) = shift_reflector(k);
    // Y (n × da) and its transpose, so that both of an entry's Y terms read along a row.
    let mut y = vec![0.0f64; n * da];
    for (row, out) in y.chunks_exact_mut(da).enumerate() {
        for (c, &uc) in u.iter().enumerate() {
            let from = &p[row * n + c * da..row * n + (c + 1) * da];
            out.iter_mut().zip(from).for_each(|(t, v)| *t += uc * v.as_f64());
        }
    }
    let mut yt = vec![0.0f64; da * n];
    for (row, from) in y.chunks_exact(da).enumerate() {
        from.iter().enumerate().for_each(|(d, v)| yt[d * n + row] = *v);
    }
    let mut s = vec![0.0f64; da * da];
    for (c, &uc) in u.iter().enumerate() {
        for (i, out) in s.chunks_exact_mut(da).enumerate() {
            let from = &y[(c * da + i) * da..(c * da + i + 1) * da];
            out.iter_mut().zip(from).for_each(|(t, v)| *t += uc * v);
        }
    }
    for a in 0..k {
        for i in 0..da {
            let row = a * da + i;
            let (y_row, y_col, s_row) = (
                &y[row * da..(row + 1) * da],
                &yt[i * n..(i + 1) * n],
                &s[i * da..(i + 1) * da],
            );
            for (b, &ub) in u.iter().enumerate() {
                let out = &mut p[row * n + b * da..row * n + (b + 1) * da];
                let y_col = &y_col[b * da..(b + 1) * da];
                for (j, o) in out.iter_mut().enumerate() {
                    let v =
                        o.as_f64() - beta * ub * y_row[j] - beta * u[a] * y_col[j] + beta * beta * u[a] * ub * s_row[j];
                    *o = T::from_f64(v);
                }
            }
        }
    }
}

impl<T: Scalar> Spectrum<T> {
    /// `Σ = (H + τI)⁻¹` from a [`Spectrum::Dense`] (row-major P × P in T; `None` for the other
    /// spectra): `W diag(1/(h + τ)) Wᵀ`, one triangular GEMM of W's side (a third of a Cholesky
    /// inverse's work at P). Where `reduced`, that is H₁'s block, beside `I/τ` on the common
    /// shift's rows (n/K of them, so K = n/null), and the whole is reflected back
    /// ([`reflect_classes`]: `(Q ⊗ I)` is its own inverse).
    pub(crate) fn dense_covariance(&self, tau: f64) -> Option<Vec<T>> {
        let Spectrum::Dense { h, vectors, reduced } = self else {
            return None;
        };
        let n = h.len();
        let side = vectors.len().isqrt();
        let null = n - side;
        // A = W diag(1/√(h + τ)), so that Σ₁ = A Aᵀ, formed in Σ's trailing block.
        let scale: Vec<T> = h[null..]
            .iter()
            .map(|&v| T::from_f64((v + tau).recip().sqrt()))
            .collect();
        let a = faer::Mat::<T>::from_fn(side, side, |i, j| vectors[i * side + j] * scale[j]);
        let mut sigma = vec![T::zero(); n * n];
        faer::linalg::matmul::triangular::matmul(
            faer::MatMut::from_row_major_slice_mut(&mut sigma, n, n).submatrix_mut(null, null, side, side),
            faer::linalg::matmul::triangular::BlockStructure::TriangularLower,
            faer::Accum::Replace,
            a.as_ref(),
            faer::linalg::matmul::triangular::BlockStructure::Rectangular,
            a.transpose(),
            faer::linalg::matmul::triangular::BlockStructure::Rectangular,
            T::one(),
            faer::Par::rayon(0),
        );
        crate::device::cpu::settle_vector_state();
        for i in 0..null {
            sigma[i * n + i] = T::from_f64(tau.recip());
        }
        crate::device::cpu::fill_triangle(&mut sigma, n, crate::device::cpu::Fill::LowerToUpper);
        if *reduced {
            reflect_classes(&mut sigma, n, n / null);
        }
        Some(sigma)
    }
}

/// The reflection `Q = I − β u uᵀ` (K × K, symmetric and orthogonal) with `u = e₁ − 1_K/√K`
/// and `β = 2/uᵀu`, which maps e₁ to `1_K/√K`: its other columns `Q₁` span the class
/// directions orthogonal to a common shift. Returns `(u, β)`.
pub(crate) fn shift_reflector(k: usize) -> (Vec<f64>, f64) {
    let root = 1.0 / (k as f64).sqrt();
    let u: Vec<f64> = (0..k).map(|i| f64::from(u8::from(i == 0)) - root).collect();
    let beta = 2.0 / u.iter().map(|v| v * v).sum::<f64>();
    (u, beta)
}

/// `K × D_aug` eigenvalues (Diag, Kron) with `delta` added to class k's row.
fn shift_rows<D: Device, T: Scalar>(
    device: &D,
    precision: &Matrix<D, T>,
    delta: &[f64],
    da: usize,
) -> Result<Matrix<D, T>> {
    let of = |k: usize| delta[if delta.len() == 1 { 0 } else { k }];
    let mut values = device.download(precision)?;
    values
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v += T::from_f64(of(i / da)));
    device.upload_owned(values, precision.rows(), precision.cols())
}

/// The eigenvalues of a row-eigenvalue structure's data term, `π − τ_k` clipped at 0.
pub(super) fn row_curvature_eigenvalues<D: Device, T: Scalar>(
    device: &D,
    precision: &Matrix<D, T>,
    prior: &[f64],
    da: usize,
) -> Result<Vec<f64>> {
    let of = |k: usize| prior[if prior.len() == 1 { 0 } else { k }];
    Ok(device
        .download(precision)?
        .iter()
        .enumerate()
        .map(|(i, x)| (x.as_f64() - of(i / da)).max(0.0))
        .collect())
}

/// `Σ_i log π_i` of eigenvalue pairs.
fn row_log_det<D: Device, T: Scalar>(device: &D, precision: &Matrix<D, T>) -> Result<f64> {
    Ok(device.download(precision)?.iter().map(|x| x.as_f64().ln()).sum())
}

/// The Woodbury factors from `(U, G) = (ΣB, BᵀΣB)` for the factor B of a dense structure's
/// curvature (`B Bᵀ` its curvature) and the scale s: `U` and `L = chol(I/s ± G)`, `+` for an
/// update (`Sign::Minus`), `−` for a downdate.
fn woodbury_factor<D: Device, T: Scalar>(
    device: &D,
    (u, g): (Matrix<D, T>, Matrix<D, T>),
    sign: Sign,
    scale: T,
) -> Result<Woodbury<D, T>> {
    let mut c = device.zeros(g.rows(), g.cols())?;
    device.add_diagonal(&mut c, T::one() / scale)?;
    device.axpy(&mut c, if sign == Sign::Minus { T::one() } else { -T::one() }, &g)?;
    device.cholesky(&mut c)?;
    Ok(Woodbury { u, c_chol: c })
}

/// The batch's output curvature at the head that gave `outputs`, on the host: what the
/// structures reduce in closed form, and what the exact curvature product reads.
pub(crate) fn host_curvature<'a, D: Device, T: Scalar>(
    model: &Model<'_, D, T>,
    batch: &'a Batch<D, T>,
    outputs: &Matrix<D, T>,
    storage: &'a mut (Vec<f64>, Vec<f64>),
) -> Result<super::model::OutputCurvature<'a>> {
    let host = |v: &[T]| v.iter().map(|x| x.as_f64()).collect::<Vec<f64>>();
    storage.0 = host(&model.device.download(outputs)?);
    storage.1 = host(&batch.host_targets);
    Ok(super::model::OutputCurvature::new(
        model.likelihood,
        model.curvature,
        &storage.0,
        &storage.1,
        &batch.keys,
        batch.rows(),
    ))
}

/// Eigendecomposition of the symmetric n × n matrix whose lower triangle the row-major `a` holds
/// ([`symmetric_eigen_of`]).
pub(crate) fn symmetric_eigen<T: Scalar>(a: &[T], n: usize) -> Result<(Vec<f64>, Vec<T>)> {
    symmetric_eigen_of(faer::MatRef::from_row_major_slice(&a[..n * n], n, n))
}

/// Eigendecomposition of the symmetric matrix whose lower triangle `a` holds, on the host in
/// its own precision T: ascending eigenvalues and the eigenvectors as the columns of a
/// row-major n × n matrix. In f32 it runs about 2.7× faster than in f64 at n = 3,100 (half the
/// bytes through the tridiagonalisation's matrix-vector products), with backward error
/// `O(ε_T ‖A‖)`, the order of the rounding A was summed with.
fn symmetric_eigen_of<T: Scalar>(a: faer::MatRef<'_, T>) -> Result<(Vec<f64>, Vec<T>)> {
    let n = a.nrows();
    let eig = a.self_adjoint_eigen(faer::Side::Lower).map_err(|e| Error::Device {
        backend: "cpu",
        reason: format!("eigendecomposition failed: {e:?}"),
    })?;
    let values = (0..n).map(|i| eig.S()[i].as_f64()).collect();
    let mut vectors = vec![T::zero(); n * n];
    faer::MatMut::from_row_major_slice_mut(&mut vectors, n, n).copy_from(eig.U());
    Ok((values, vectors))
}

/// Ascending eigenvalues of a symmetric matrix, in f64 on the host.
fn symmetric_eigenvalues<T: Scalar>(a: faer::MatRef<'_, T>) -> Result<Vec<f64>> {
    let m = faer::Mat::<f64>::from_fn(a.nrows(), a.ncols(), |i, j| {
        0.5 * (a[(i, j)].as_f64() + a[(j, i)].as_f64())
    });
    m.self_adjoint_eigenvalues(faer::Side::Lower)
        .map_err(|e| Error::Device {
            backend: "cpu",
            reason: format!("eigendecomposition failed: {e:?}"),
        })
}
