//! The operations every structure, likelihood and curvature provides, written once over the
//! [`Device`] trait: the output curvature of a batch, adding it to the precision, the new
//! covariance of a Newton step, and products with Σ or Π in weight space.

use super::{Curvature, Likelihood, Moments, Structure, logits};
use crate::device::{Device, LowRankFactor, Matrix, Op, OutputWeighting, Sign};
use crate::error::{Error, Result};
use crate::random::SplitMix64;
use crate::scalar::Scalar;

/// A batch on the device, with what the host-side curvature needs.
pub(crate) struct Batch<D: Device, T: Scalar> {
    /// Φ, m × D_aug.
    pub phi: Matrix<D, T>,
    /// Targets, m × K: one-hot rows (classification) or values (regression); 0 × K in fits
    /// whose curvature does not read them (all but the empirical Fisher).
    pub targets: Matrix<D, T>,
    /// The same targets on the host (empty where `targets` is).
    pub host_targets: Vec<T>,
    /// Per-sample keys that seed Monte Carlo draws, a hash of the sample's features; empty
    /// unless the curvature draws.
    pub keys: Vec<u64>,
}

impl<D: Device, T: Scalar> Batch<D, T> {
    /// Number of samples m.
    pub fn rows(&self) -> usize {
        self.phi.rows()
    }
}

/// FNV-1a over the bytes of a feature row.
pub(crate) fn sample_key<T: Scalar>(row: &[T]) -> u64 {
    bytemuck::cast_slice::<T, u8>(row)
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// The Kron structure's state: running sums `A = Σ_n w_n M_n` (K × K) and
/// `G = Σ_n w_n φ_nφ_nᵀ` (D_aug × D_aug) with their weight `N = Σ_n w_n` (the sample count, until
/// forgetting discounts old samples), and their eigenvectors (columns of U_A and U_G).
pub(crate) struct KronFactors<D: Device, T: Scalar> {
    pub a_sum: Matrix<D, T>,
    pub g_sum: Matrix<D, T>,
    pub a_vecs: Matrix<D, T>,
    pub g_vecs: Matrix<D, T>,
    pub weight: f64,
}

impl<D: Device, T: Scalar> KronFactors<D, T> {
    pub fn copy(&self, device: &D) -> Result<Self> {
        Ok(KronFactors {
            a_sum: device.copy(&self.a_sum)?,
            g_sum: device.copy(&self.g_sum)?,
            a_vecs: device.copy(&self.a_vecs)?,
            g_vecs: device.copy(&self.g_vecs)?,
            weight: self.weight,
        })
    }

    /// Empty sums with identity bases.
    pub fn empty(device: &D, classes: usize, da: usize) -> Result<Self> {
        let identity = |n: usize| -> Result<Matrix<D, T>> {
            let mut m = device.zeros(n, n)?;
            device.add_diagonal(&mut m, T::one())?;
            Ok(m)
        };
        Ok(KronFactors {
            a_sum: device.zeros(classes, classes)?,
            g_sum: device.zeros(da, da)?,
            a_vecs: identity(classes)?,
            g_vecs: identity(da)?,
            weight: 0.0,
        })
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

/// The covariance part of a Newton step, computed before anything is committed.
pub(crate) enum CovarianceStep<D: Device, T: Scalar> {
    /// `Σ' = Σ ∓ U C⁻¹ Uᵀ` with `c_chol = chol(C)`; Π gains (or loses) the curvature.
    Woodbury { u: Matrix<D, T>, c_chol: Matrix<D, T> },
    /// The new pair, refactored (and the new Kron factors).
    Replace {
        precision: Matrix<D, T>,
        covariance: Matrix<D, T>,
        kron: Option<KronFactors<D, T>>,
    },
}

/// The output curvature `M_n` (K × K) of each sample of a batch, held on the host by what
/// defines it: the likelihood's outputs (probabilities or logits), the targets and, for the
/// Monte Carlo Fisher, the per-sample keys of its draws. Each structure asks for the reduction
/// it needs, in closed form; only [`OutputCurvature::factors`] (the Full structure's) forms
/// anything of size K × K per sample.
pub(crate) struct OutputCurvature<'a> {
    likelihood: Likelihood,
    curvature: Curvature,
    /// n × K: probabilities (classification) or logits (regression).
    outputs: &'a [f64],
    /// n × K: one-hot rows or values.
    targets: &'a [f64],
    keys: &'a [u64],
    /// n.
    rows: usize,
    classes: usize,
}

/// Rows of draws gathered before one GEMM folds them into `Σ_n M_n`.
const DRAW_BLOCK_ELEMENTS: usize = 1 << 20;

impl<'a> OutputCurvature<'a> {
    /// The output curvature of n samples; `outputs` and `targets` are n × K.
    pub fn new(
        likelihood: Likelihood,
        curvature: Curvature,
        outputs: &'a [f64],
        targets: &'a [f64],
        keys: &'a [u64],
        rows: usize,
    ) -> Self {
        OutputCurvature {
            likelihood,
            curvature,
            outputs,
            targets,
            keys,
            rows,
            classes: outputs.len() / rows.max(1),
        }
    }

    /// `1/σ²` (regression) or 1: the scale of the log-likelihood gradient in f.
    fn gradient_scale(&self) -> f64 {
        match self.likelihood {
            Likelihood::Classification => 1.0,
            Likelihood::Regression { sigma_noise } => 1.0 / (sigma_noise * sigma_noise),
        }
    }

    /// Calls `f(g)` for each Monte Carlo draw of sample `i`, `g = ∂_f log p(y | f)/√S` for
    /// y drawn from the model (`e_y − p`, or `ε/σ` for regression), seeded by the sample's key
    /// so that chunking, sharding and order do not change the draws.
    fn for_each_draw(&self, i: usize, samples: usize, seed: u64, mut f: impl FnMut(&[f64])) {
        let k = self.classes;
        let norm = 1.0 / (samples as f64).sqrt();
        let out = &self.outputs[i * k..(i + 1) * k];
        let mut rng = SplitMix64::new(seed ^ self.keys[i].rotate_left(17));
        let mut g = vec![0.0; k];
        for _ in 0..samples {
            match self.likelihood {
                Likelihood::Classification => {
                    let u = rng.uniform();
                    let mut cum = 0.0;
                    let mut drawn = k - 1;
                    for (c, &p) in out.iter().enumerate() {
                        cum += p;
                        if u < cum {
                            drawn = c;
                            break;
                        }
                    }
                    g.iter_mut()
                        .enumerate()
                        .for_each(|(a, v)| *v = (f64::from(u8::from(a == drawn)) - out[a]) * norm);
                }
                Likelihood::Regression { sigma_noise } => {
                    // y ~ N(f, σ²I): the residual gradient is ε/σ.
                    let eps = rng.normals(k);
                    g.iter_mut().zip(&eps).for_each(|(v, e)| *v = e / sigma_noise * norm);
                }
            }
            f(&g);
        }
    }

    /// The residual gradients `r_n = c (t_n − o_n)`, n × K (empirical Fisher: `M_n = r_n r_nᵀ`).
    fn residuals(&self) -> Vec<f64> {
        let c = self.gradient_scale();
        self.outputs
            .iter()
            .zip(self.targets)
            .map(|(o, t)| (t - o) * c)
            .collect()
    }

    /// Factors `S_n` (K × rank) with `S_n S_nᵀ = M_n`, as rows `S_nᵀ`: (n·rank) × K, and the rank.
    /// GGN: `S = diag(√p) − p√pᵀ` (rank K) or `I/σ`; empirical Fisher: `r_n` (rank 1); Monte
    /// Carlo: the draws (rank S).
    pub fn factors(&self) -> (Vec<f64>, usize) {
        let (n, k) = (self.rows, self.classes);
        match (self.likelihood, self.curvature) {
            (Likelihood::Classification, Curvature::Ggn) => {
                let mut values = Vec::with_capacity(n * k * k);
                for p in self.outputs.chunks_exact(k) {
                    for c in 0..k {
                        let sc = p[c].max(0.0).sqrt();
                        values.extend((0..k).map(|a| f64::from(u8::from(a == c)) * sc - p[a] * sc));
                    }
                }
                (values, k)
            }
            (Likelihood::Regression { sigma_noise }, Curvature::Ggn) => {
                let mut values = Vec::with_capacity(n * k * k);
                for _ in 0..n {
                    for c in 0..k {
                        values.extend((0..k).map(|a| f64::from(u8::from(a == c)) / sigma_noise));
                    }
                }
                (values, k)
            }
            (_, Curvature::EmpiricalFisher) => (self.residuals(), 1),
            (_, Curvature::MonteCarloFisher { samples, seed }) => {
                let mut values = Vec::with_capacity(n * samples * k);
                for i in 0..n {
                    self.for_each_draw(i, samples, seed, |g| values.extend_from_slice(g));
                }
                (values, samples)
            }
        }
    }

    /// `M_n[k,k]`, n × K: `p(1 − p)`, `1/σ²`, `r²`, or the draws' mean square.
    pub fn diagonals(&self) -> Vec<f64> {
        let (n, k) = (self.rows, self.classes);
        match (self.likelihood, self.curvature) {
            (Likelihood::Classification, Curvature::Ggn) => self.outputs.iter().map(|p| p * (1.0 - p)).collect(),
            (Likelihood::Regression { sigma_noise }, Curvature::Ggn) => vec![1.0 / (sigma_noise * sigma_noise); n * k],
            (_, Curvature::EmpiricalFisher) => self.residuals().iter().map(|r| r * r).collect(),
            (_, Curvature::MonteCarloFisher { samples, seed }) => {
                let mut out = vec![0.0; n * k];
                for (i, row) in out.chunks_exact_mut(k.max(1)).enumerate() {
                    self.for_each_draw(i, samples, seed, |g| {
                        row.iter_mut().zip(g).for_each(|(o, v)| *o += v * v)
                    });
                }
                out
            }
        }
    }

    /// `tr(M_n) / K` per sample.
    pub fn mean_traces(&self) -> Vec<f64> {
        let k = self.classes;
        self.diagonals()
            .chunks_exact(k.max(1))
            .map(|d| d.iter().sum::<f64>() / k as f64)
            .collect()
    }

    /// `Σ_n M_n`, K × K: `diag(Σ_n p_n) − PᵀP` (softmax GGN), `(n/σ²) I`, `RᵀR`, or the
    /// draws' Gram matrix, each by GEMMs over n × K operands.
    pub fn sum(&self) -> Vec<f64> {
        use faer::linalg::matmul::matmul;
        use faer::{Accum, MatMut, MatRef, Par};
        let (n, k) = (self.rows, self.classes);
        let mut out = vec![0.0; k * k];
        // out += alpha · XᵀX for X (rows × K).
        let gram = |out: &mut [f64], x: &[f64], rows: usize, alpha: f64| {
            let x = MatRef::from_row_major_slice(x, rows, k);
            matmul(
                MatMut::from_row_major_slice_mut(out, k, k),
                Accum::Add,
                x.transpose(),
                x,
                alpha,
                Par::rayon(0),
            );
            crate::device::cpu::settle_vector_state();
        };
        match (self.likelihood, self.curvature) {
            (Likelihood::Classification, Curvature::Ggn) => {
                gram(&mut out, self.outputs, n, -1.0);
                for p in self.outputs.chunks_exact(k.max(1)) {
                    (0..k).for_each(|c| out[c * k + c] += p[c]);
                }
            }
            (Likelihood::Regression { sigma_noise }, Curvature::Ggn) => {
                (0..k).for_each(|c| out[c * k + c] = n as f64 / (sigma_noise * sigma_noise));
            }
            (_, Curvature::EmpiricalFisher) => gram(&mut out, &self.residuals(), n, 1.0),
            (_, Curvature::MonteCarloFisher { samples, seed }) => {
                let block_rows = (DRAW_BLOCK_ELEMENTS / k.max(1)).max(samples);
                let mut block: Vec<f64> = Vec::with_capacity(block_rows * k);
                for i in 0..n {
                    self.for_each_draw(i, samples, seed, |g| block.extend_from_slice(g));
                    if block.len() + samples * k > block_rows * k || i + 1 == n {
                        gram(&mut out, &block, block.len() / k.max(1), 1.0);
                        block.clear();
                    }
                }
            }
        }
        out
    }
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

fn cast<T: Scalar>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

/// What the per-structure operations read of a posterior besides its moments.
pub(crate) struct Model<'a, D: Device, T: Scalar> {
    pub device: &'a D,
    pub structure: Structure,
    pub likelihood: Likelihood,
    pub curvature: Curvature,
    pub fixed_bias: Option<&'a Matrix<D, T>>,
}

impl<D: Device, T: Scalar> Model<'_, D, T> {
    fn is_classification(&self) -> bool {
        self.likelihood == Likelihood::Classification
    }

    /// The likelihood's mean at `head`: probabilities `softmax(f)` (classification) or the
    /// logits f (regression); n × K.
    pub fn outputs(&self, phi: &Matrix<D, T>, head: &Matrix<D, T>) -> Result<Matrix<D, T>> {
        let mut f = logits(self.device, phi, head, self.fixed_bias)?;
        if self.is_classification() {
            self.device.softmax_rows(&mut f)?;
        }
        Ok(f)
    }

    /// Outputs at `head` and the log-likelihood gradient `G = c (T − outputs)ᵀ Φ` (K × D_aug),
    /// with `c = 1` (classification) or `1/σ²` (regression).
    pub fn evaluate(&self, batch: &Batch<D, T>, head: &Matrix<D, T>) -> Result<(Matrix<D, T>, Matrix<D, T>)> {
        let device = self.device;
        let outputs = self.outputs(&batch.phi, head)?;
        let mut residual = device.copy(&batch.targets)?;
        device.axpy(&mut residual, -T::one(), &outputs)?;
        let scale = match self.likelihood {
            Likelihood::Classification => 1.0,
            Likelihood::Regression { sigma_noise } => 1.0 / (sigma_noise * sigma_noise),
        };
        let mut grad = device.zeros(batch.targets.cols(), batch.phi.cols())?;
        device.gemm(
            &mut grad,
            T::zero(),
            &residual,
            Op::T,
            &batch.phi,
            Op::N,
            T::from_f64(scale),
        )?;
        Ok((outputs, grad))
    }

    /// The curvature term when it does not depend on the head: the Gaussian Shared weighting
    /// of the softmax GGN, `Σ_n φ_nφ_nᵀ` (m_n = 1), so that a fit needs neither logits nor a
    /// softmax. `None` otherwise.
    pub fn head_free_term(&self) -> Option<CurvatureTerm<D, T>> {
        let softmax_ggn = self.is_classification() && self.curvature == Curvature::Ggn;
        (softmax_ggn && self.structure == Structure::Shared(OutputWeighting::Gaussian))
            .then_some(CurvatureTerm::Weighted { weights: None })
    }

    /// The batch's curvature at the head that gave `outputs`. For Full, `basis` (R, K') asks
    /// for the curvature in the reduced class basis `(Rᵀ M_n R) ⊗ φφᵀ`.
    pub fn curvature_term(
        &self,
        batch: &Batch<D, T>,
        outputs: &Matrix<D, T>,
        basis: Option<(&[f64], usize)>,
    ) -> Result<CurvatureTerm<D, T>> {
        if let Some(term) = self.head_free_term() {
            return Ok(term);
        }
        let device = self.device;
        let softmax_ggn = self.is_classification() && self.curvature == Curvature::Ggn;
        match self.structure {
            Structure::Full if softmax_ggn => {
                return Ok(CurvatureTerm::Softmax {
                    probs: device.copy(outputs)?,
                });
            }
            Structure::Shared(weighting) if softmax_ggn => {
                debug_assert_eq!(weighting, OutputWeighting::Categorical, "Gaussian is head-free");
                return Ok(CurvatureTerm::Weighted {
                    weights: Some(device.categorical_weights(outputs)?),
                });
            }
            Structure::Diag if softmax_ggn => {
                // M_n[k,k] = p_nk (1 − p_nk) = p − p∘p, on the device.
                let mut squares = device.copy(outputs)?;
                device.hadamard(&mut squares, outputs)?;
                let mut weights = device.copy(outputs)?;
                device.axpy(&mut weights, -T::one(), &squares)?;
                return Ok(CurvatureTerm::Diagonal { weights });
            }
            Structure::Kron if softmax_ggn => {
                // Σ_n M_n = diag(Σ_n p_n) − PᵀP, on the device: the column sums s = 1ᵀP by one
                // GEMM, diag(s) = (1 sᵀ) ∘ I, then one SYRK.
                let (n, k) = outputs.shape();
                let ones = device.upload(&vec![T::one(); n], 1, n)?;
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
            _ => {}
        }
        let host = |v: &[T]| v.iter().map(|x| x.as_f64()).collect::<Vec<f64>>();
        let (outputs, targets) = (host(&device.download(outputs)?), host(&batch.host_targets));
        let (n, k) = (batch.rows(), outputs.len() / batch.rows().max(1));
        let curvature = OutputCurvature::new(self.likelihood, self.curvature, &outputs, &targets, &batch.keys, n);
        Ok(match self.structure {
            Structure::Full => {
                let (values, rank) = curvature.factors();
                let (values, width) = reduce_factors(values, k, basis);
                let s = device.upload(&cast::<T>(&values), n * rank, width)?;
                CurvatureTerm::Rows {
                    rows: device.kron_rows(&s, &batch.phi, rank)?,
                }
            }
            Structure::Shared(_) => CurvatureTerm::Weighted {
                weights: Some(device.upload(&cast::<T>(&curvature.mean_traces()), n, 1)?),
            },
            Structure::Diag => CurvatureTerm::Diagonal {
                weights: device.upload(&cast::<T>(&curvature.diagonals()), n, k)?,
            },
            Structure::Kron => CurvatureTerm::Kronecker {
                gram: device.upload(&cast::<T>(&curvature.sum()), k, k)?,
            },
        })
    }

    /// Adds `alpha` times the term's curvature: to `precision` (Full, Shared: the dense matrix;
    /// Diag: its K × D_aug diagonal) or to the Kron sums. `basis` is the reduced class basis
    /// the Softmax term is accumulated in (Full fit).
    pub fn add_curvature(
        &self,
        precision: &mut Matrix<D, T>,
        kron: Option<&mut KronFactors<D, T>>,
        phi: &Matrix<D, T>,
        term: &CurvatureTerm<D, T>,
        alpha: T,
        basis: Option<&Matrix<D, T>>,
    ) -> Result<()> {
        let device = self.device;
        match term {
            CurvatureTerm::Softmax { probs } => device.ggn_accumulate(precision, phi, probs, basis, alpha),
            CurvatureTerm::Weighted { weights } => {
                device.weighted_syrk(precision, T::one(), phi, weights.as_ref(), alpha)
            }
            CurvatureTerm::Rows { rows } => device.weighted_syrk(precision, T::one(), rows, None, alpha),
            CurvatureTerm::Diagonal { weights } => {
                let mut squares = device.copy(phi)?;
                device.hadamard(&mut squares, phi)?;
                device.gemm(precision, T::one(), weights, Op::T, &squares, Op::N, alpha)
            }
            CurvatureTerm::Kronecker { gram } => {
                let kron = require_kron(kron)?;
                device.axpy(&mut kron.a_sum, alpha, gram)?;
                device.weighted_syrk(&mut kron.g_sum, T::one(), phi, None, alpha)?;
                let n = phi.rows() as f64;
                kron.weight = if alpha > T::zero() {
                    kron.weight + n
                } else {
                    (kron.weight - n).max(0.0)
                };
                Ok(())
            }
        }
    }

    /// Forgetting: the data part of the precision scaled by ρ ∈ (0, 1),
    /// `Π ← ρ(Π − Π₀) + Π₀` with the prior `Π₀ = diag(τ_k)` (`prior` holds 1 or K values), and
    /// Σ recomputed. Full and Shared: one elementwise pass and one Cholesky inverse of Π
    /// (O(P³) and O(D³)); Diag: O(K·D) on the diagonal; Kron: the sums A, G and their weight N
    /// scaled by ρ (so `a_i g_j / N` scales by ρ, the eigenvectors unchanged), O(K·D) on the
    /// eigenvalues. Exact for every structure: for Kron it is the KFAC of the ρ-weighted sums.
    pub fn forget(&self, moments: &mut Moments<D, T>, rho_f64: f64, prior: &[T]) -> Result<()> {
        let device = self.device;
        let rho = T::from_f64(rho_f64);
        let keep = |tau: T| (T::one() - rho) * tau;
        let (rows, cols) = moments.precision.shape();
        let mut precision = device.zeros(rows, cols)?;
        device.axpy(&mut precision, rho, &moments.precision)?;
        let tau_of = |k: usize| prior[if prior.len() == 1 { 0 } else { k }];
        match self.structure {
            // Shared keeps one τ (a per-class prior is refused for it).
            Structure::Shared(_) => device.add_diagonal(&mut precision, keep(prior[0]))?,
            Structure::Full if prior.len() == 1 => device.add_diagonal(&mut precision, keep(prior[0]))?,
            Structure::Full => {
                // One τ per class: the diagonal of class k's block gains (1 − ρ) τ_k.
                let da = rows / prior.len();
                let mut values = device.download(&precision)?;
                (0..rows).for_each(|i| values[i * rows + i] += keep(tau_of(i / da)));
                precision = device.upload(&values, rows, cols)?;
            }
            Structure::Diag | Structure::Kron => {
                // K × D_aug values: row k gains (1 − ρ) τ_k.
                let mut values = device.download(&precision)?;
                values
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v += keep(tau_of(i / cols)));
                precision = device.upload(&values, rows, cols)?;
            }
        }
        if let Some(kron) = moments.kron.as_mut() {
            let scaled = |m: &Matrix<D, T>| -> Result<Matrix<D, T>> {
                let mut out = device.zeros(m.rows(), m.cols())?;
                device.axpy(&mut out, rho, m)?;
                Ok(out)
            };
            kron.a_sum = scaled(&kron.a_sum)?;
            kron.g_sum = scaled(&kron.g_sum)?;
            kron.weight *= rho_f64;
        }
        moments.covariance = self.covariance_of(&precision)?;
        moments.precision = precision;
        Ok(())
    }

    /// `Σ = Π⁻¹` of a stored precision: Cholesky inverse (Full, Shared) or reciprocals
    /// (Diag, Kron), `NotPositiveDefinite` at the first value that is not positive.
    pub fn covariance_of(&self, precision: &Matrix<D, T>) -> Result<Matrix<D, T>> {
        match self.structure {
            Structure::Full | Structure::Shared(_) => {
                let covariance = self.device.spd_inverse(precision)?;
                check_inverse(self.device, precision, &covariance)?;
                Ok(covariance)
            }
            Structure::Diag | Structure::Kron => {
                let mut values = self.device.download(precision)?;
                for (index, v) in values.iter_mut().enumerate() {
                    if !(*v > T::zero() && v.is_finite()) {
                        return Err(Error::NotPositiveDefinite { index });
                    }
                    *v = T::one() / *v;
                }
                self.device.upload(&values, precision.rows(), precision.cols())
            }
        }
    }

    /// Refactors the Kron sums: eigenbases of A and G and the precision eigenvalues
    /// `λ_ij = a_i g_j / N + τ` (negative rounding in a_i, g_j clipped to 0; N = 0 gives τ).
    /// Returns `(precision, covariance)`, K × D_aug each; the eigenvectors go into `kron`.
    pub fn kron_refactor(&self, kron: &mut KronFactors<D, T>, tau: T) -> Result<(Matrix<D, T>, Matrix<D, T>)> {
        let device = self.device;
        let (k, da) = (kron.a_sum.rows(), kron.g_sum.rows());
        let (a_vals, a_vecs) = symmetric_eigen(&device.download(&kron.a_sum)?, k)?;
        let (g_vals, g_vecs) = symmetric_eigen(&device.download(&kron.g_sum)?, da)?;
        let inv_n = if kron.weight > 0.0 { 1.0 / kron.weight } else { 0.0 };
        let tau = tau.as_f64();
        let lambda: Vec<f64> = a_vals
            .iter()
            .flat_map(|&a| g_vals.iter().map(move |&g| a.max(0.0) * g.max(0.0) * inv_n + tau))
            .collect();
        kron.a_vecs = device.upload(&cast::<T>(&a_vecs), k, k)?;
        kron.g_vecs = device.upload(&cast::<T>(&g_vecs), da, da)?;
        let precision = device.upload(&cast::<T>(&lambda), k, da)?;
        let inverse: Vec<f64> = lambda.iter().map(|l| 1.0 / l).collect();
        Ok((precision, device.upload(&cast::<T>(&inverse), k, da)?))
    }

    /// The rank of the term's curvature (Woodbury columns), for the dense structures.
    fn rank(&self, term: &CurvatureTerm<D, T>, phi: &Matrix<D, T>) -> usize {
        match term {
            CurvatureTerm::Softmax { probs } => phi.rows() * probs.cols(),
            CurvatureTerm::Rows { rows } => rows.rows(),
            _ => phi.rows(),
        }
    }

    /// The covariance after adding (`Sign::Minus`, an update) or removing (`Sign::Plus`, a
    /// downdate) `scale` (> 0) times the term's curvature. Dense structures take Woodbury
    /// factors while the rank r is below half the side n of Σ (cost ≈ 2n²r + r³/3), else
    /// refactor (≈ n³).
    pub fn covariance_step(
        &self,
        moments: &Moments<D, T>,
        phi: &Matrix<D, T>,
        term: &CurvatureTerm<D, T>,
        sign: Sign,
        tau: T,
        scale: T,
    ) -> Result<CovarianceStep<D, T>> {
        let device = self.device;
        let alpha = if sign == Sign::Minus { scale } else { -scale };
        match self.structure {
            Structure::Full | Structure::Shared(_) if 2 * self.rank(term, phi) < moments.covariance.rows() => {
                let (u, c_chol) = self.woodbury_factor(&moments.covariance, phi, term, sign, scale)?;
                Ok(CovarianceStep::Woodbury { u, c_chol })
            }
            Structure::Kron => {
                let source = require_kron(moments.kron.as_ref())?;
                let mut kron = source.copy(device)?;
                let mut unused = device.zeros(1, 1)?;
                self.add_curvature(&mut unused, Some(&mut kron), phi, term, alpha, None)?;
                let (precision, covariance) = self.kron_refactor(&mut kron, tau)?;
                Ok(CovarianceStep::Replace {
                    precision,
                    covariance,
                    kron: Some(kron),
                })
            }
            _ => {
                let mut precision = device.copy(&moments.precision)?;
                self.add_curvature(&mut precision, None, phi, term, alpha, None)?;
                let covariance = self.covariance_of(&precision)?;
                Ok(CovarianceStep::Replace {
                    precision,
                    covariance,
                    kron: None,
                })
            }
        }
    }

    /// Writes a step into `moments`; only device faults can fail here.
    pub fn commit(
        &self,
        moments: &mut Moments<D, T>,
        step: CovarianceStep<D, T>,
        phi: &Matrix<D, T>,
        term: &CurvatureTerm<D, T>,
        sign: Sign,
    ) -> Result<()> {
        match step {
            CovarianceStep::Woodbury { u, c_chol } => {
                self.device
                    .low_rank_update(&mut moments.covariance, &u, &c_chol, sign)?;
                let alpha = if sign == Sign::Minus { T::one() } else { -T::one() };
                self.add_curvature(&mut moments.precision, None, phi, term, alpha, None)
            }
            CovarianceStep::Replace {
                precision,
                covariance,
                kron,
            } => {
                moments.precision = precision;
                moments.covariance = covariance;
                moments.kron = kron;
                Ok(())
            }
        }
    }

    /// The covariance a step leads to, without touching `moments`.
    pub fn stepped_covariance(
        &self,
        moments: &Moments<D, T>,
        step: CovarianceStep<D, T>,
        sign: Sign,
    ) -> Result<Moments<D, T>> {
        let device = self.device;
        Ok(match step {
            CovarianceStep::Woodbury { u, c_chol } => {
                let mut covariance = device.copy(&moments.covariance)?;
                device.low_rank_update(&mut covariance, &u, &c_chol, sign)?;
                Moments {
                    head: device.copy(&moments.head)?,
                    precision: device.zeros(1, 1)?,
                    covariance,
                    kron: None,
                }
            }
            CovarianceStep::Replace {
                precision,
                covariance,
                kron,
            } => Moments {
                head: device.copy(&moments.head)?,
                precision,
                covariance,
                kron,
            },
        })
    }

    /// `(U, L)` with `U = ΣB` and `L = chol(I/s ± BᵀΣB)` for the term's factor B and the
    /// curvature's scale s: `+` for an update (`Sign::Minus` in Σ' = Σ − U C⁻¹ Uᵀ), `−` for a
    /// downdate (`Sign::Plus`).
    pub fn woodbury_factor(
        &self,
        covariance: &Matrix<D, T>,
        phi: &Matrix<D, T>,
        term: &CurvatureTerm<D, T>,
        sign: Sign,
        scale: T,
    ) -> Result<(Matrix<D, T>, Matrix<D, T>)> {
        let device = self.device;
        let (u, g) = match term {
            CurvatureTerm::Softmax { probs } => {
                device.kron_products(covariance, phi, LowRankFactor::Kronecker { probs })?
            }
            CurvatureTerm::Weighted { weights } => device.kron_products(
                covariance,
                phi,
                LowRankFactor::Shared {
                    weights: weights.as_ref(),
                },
            )?,
            CurvatureTerm::Rows { rows } => {
                let mut u = device.zeros(covariance.rows(), rows.rows())?;
                device.gemm(&mut u, T::zero(), covariance, Op::N, rows, Op::T, T::one())?;
                let mut g = device.zeros(rows.rows(), rows.rows())?;
                device.gemm(&mut g, T::zero(), rows, Op::N, &u, Op::N, T::one())?;
                (u, g)
            }
            _ => return Err(Error::invalid("structure", "no Woodbury factor for Diag or Kron")),
        };
        let mut c = device.zeros(g.rows(), g.cols())?;
        device.add_diagonal(&mut c, T::one() / scale)?;
        device.axpy(&mut c, if sign == Sign::Minus { T::one() } else { -T::one() }, &g)?;
        device.cholesky(&mut c)?;
        Ok((u, c))
    }

    /// `out ← out + α · A x` for A = Σ or Π of `moments` (`values` is the stored matrix)
    /// acting on weight space and x a K × D_aug head-shaped matrix: `vec(out) += α A vec(x)`
    /// (Full), `out += α x A` (Shared, `A = I_K ⊗ A_D`), `out += α x ∘ A` (Diag),
    /// `out += α U_A ((U_Aᵀ x U_G) ∘ A) U_Gᵀ` (Kron).
    pub fn apply(
        &self,
        values: &Matrix<D, T>,
        kron: Option<&KronFactors<D, T>>,
        x: &Matrix<D, T>,
        out: &mut Matrix<D, T>,
        alpha: T,
    ) -> Result<()> {
        let device = self.device;
        match self.structure {
            Structure::Full => {
                let (k, da) = x.shape();
                let mut x_vec = device.copy(x)?;
                x_vec.reshape(k * da, 1)?;
                out.reshape(k * da, 1)?;
                let result = device.gemm(out, T::one(), values, Op::N, &x_vec, Op::N, alpha);
                out.reshape(k, da)?;
                result
            }
            Structure::Shared(_) => device.gemm(out, T::one(), x, Op::N, values, Op::N, alpha),
            Structure::Diag => {
                let mut scaled = device.copy(x)?;
                device.hadamard(&mut scaled, values)?;
                device.axpy(out, alpha, &scaled)
            }
            Structure::Kron => {
                let kron = require_kron(kron)?;
                let (k, da) = x.shape();
                let mut left = device.zeros(k, da)?;
                device.gemm(&mut left, T::zero(), &kron.a_vecs, Op::T, x, Op::N, T::one())?;
                let mut rotated = device.zeros(k, da)?;
                device.gemm(&mut rotated, T::zero(), &left, Op::N, &kron.g_vecs, Op::N, T::one())?;
                device.hadamard(&mut rotated, values)?;
                device.gemm(&mut left, T::zero(), &kron.a_vecs, Op::N, &rotated, Op::N, T::one())?;
                device.gemm(out, T::one(), &left, Op::N, &kron.g_vecs, Op::T, alpha)
            }
        }
    }
}

/// Kron's factors where a code path needs them. Only Kron posteriors keep them, and every path
/// that asks is Kron's, so their absence is an inconsistency of the library, reported as
/// `Unsupported`, never as the caller's argument.
pub(crate) fn require_kron<X>(kron: Option<X>) -> Result<X> {
    kron.ok_or_else(|| Error::Unsupported("Kronecker factors are kept only by Kron posteriors".into()))
}

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
    let mut e = vec![T::zero(); n * probes];
    for c in 0..probes {
        e[(c * n / probes) * probes + c] = T::one();
    }
    let e = device.upload(&e, n, probes)?;
    let mut x = device.zeros(n, probes)?;
    device.gemm(&mut x, T::zero(), covariance, Op::N, &e, Op::N, T::one())?;
    let mut y = device.copy(&e)?;
    device.gemm(&mut y, -T::one(), precision, Op::N, &x, Op::N, T::one())?;
    let drift = device.max_abs(&y)?.as_f64();
    if drift.is_nan() || drift > crate::error::ILL_CONDITIONED_DRIFT {
        return Err(Error::IllConditioned { drift });
    }
    Ok(())
}

/// Eigendecomposition of a symmetric n × n matrix (row-major, in f64 on the host): ascending
/// eigenvalues and the eigenvectors as the columns of a row-major n × n matrix.
pub(crate) fn symmetric_eigen<T: Scalar>(a: &[T], n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let m = faer::Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (a[i * n + j].as_f64() + a[j * n + i].as_f64()));
    let eig = m.self_adjoint_eigen(faer::Side::Lower).map_err(|e| Error::Device {
        backend: "cpu",
        reason: format!("eigendecomposition failed: {e:?}"),
    })?;
    let values = (0..n).map(|i| eig.S()[i]).collect();
    let vectors = (0..n * n).map(|ij| eig.U()[(ij / n, ij % n)]).collect();
    Ok((values, vectors))
}

/// Ascending eigenvalues of a symmetric n × n matrix, in f64 on the host.
pub(crate) fn symmetric_eigenvalues<T: Scalar>(a: &[T], n: usize) -> Result<Vec<f64>> {
    let m = faer::Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (a[i * n + j].as_f64() + a[j * n + i].as_f64()));
    m.self_adjoint_eigenvalues(faer::Side::Lower)
        .map_err(|e| Error::Device {
            backend: "cpu",
            reason: format!("eigendecomposition failed: {e:?}"),
        })
}
