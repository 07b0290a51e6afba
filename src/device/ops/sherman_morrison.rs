//! The sequential Sherman–Morrison recursion of the Shared structure, blocked: one implementation
//! for every backend, written over the [`Device`] primitives (gemm, weighted SYRK, upload,
//! download). Its precision is the same everywhere: the recursion's scalars (`P`, `c_j`, `d_j`,
//! the logits) in f64 on the host, Σ and W updated in the posterior's element type by the
//! backend's gemm and SYRK. BAIT's rank-one downdates of a small host inverse (`HostInverse`)
//! live here too, in f64.
//!
//! For samples j = 1..m in order, with `u_j = Σ_{j−1} φ_j`, `s_j = φ_jᵀ u_j`, `p_j =
//! softmax(W_{j−1} φ_j + b)`, the weight `m_j` and `d_j = 1 + m_j s_j`:
//! `Σ_j = Σ_{j−1} − (m_j/d_j) u_j u_jᵀ` and `W_j = W_{j−1} + γ (t_j − p_j)(u_j/d_j)ᵀ`.
//!
//! A block of b ≤ 64 samples reads Σ and W once. With `Y = Φ_B Σ₀` and `A = Y Φ_Bᵀ` (b × b),
//! every quantity of the recursion lives in the b-dimensional span of the block:
//! `P_ji = φ_jᵀ Σ_{i−1} φ_i = A_ji − Σ_{l<i} c_l P_jl P_il` (so `s_j = P_jj`), `c_l = m_l/d_l`,
//! and the logits are `F_j + b + Σ_{i<j} γ r_i P_ji / d_i` with `F = Φ_B W₀ᵀ`. The host runs that
//! recursion in f64 (O(b³ + b²K) per block) and returns the block's update as small matrices:
//! `U = M Y` with `M = (I + L)⁻¹`, `L_il = c_l P_il` (l < i), so that
//! `Σ ← Σ − (diag(√c) M Y)ᵀ (diag(√c) M Y)` (one weighted SYRK) and
//! `W ← W + (Rᵀ diag(1/d) M) Y` (one gemm). Exactly the sequential recursion, in two gemms, one
//! SYRK and one gemm per block on the device, plus one small download and two small uploads.

use crate::device::{Device, Matrix, Op, OutputWeighting, sherman_morrison_shapes};
use crate::error::{Error, Result};
use crate::numerics::dot;
use crate::scalar::Scalar;

/// Samples per block.
pub(crate) const BLOCK: usize = 64;

/// The sequential rule over the samples of Φ in order (see the module notes), by blocks of 64
/// samples: Σ and the head (with the optional bias) are updated in place, and the returned
/// m × 1 matrix holds each sample's curvature weight `m_j`. `targets` are one-hot rows (or
/// regression targets) and `weighting` chooses `m_j`.
///
/// Errors: `ShapeMismatch`; `NotPositiveDefinite { index: j }` at the first `1 + m_j s_j` that
/// is not positive and finite (Σ and W then hold the blocks before j's).
#[allow(clippy::too_many_arguments)]
pub fn sherman_morrison_sequence<D: Device, T: Scalar>(
    dev: &D,
    sigma: &mut Matrix<D, T>,
    head: &mut Matrix<D, T>,
    bias: Option<&Matrix<D, T>>,
    phi: &Matrix<D, T>,
    targets: &Matrix<D, T>,
    gamma: T,
    weighting: OutputWeighting,
) -> Result<Matrix<D, T>> {
    let (m, d, k) = sherman_morrison_shapes(sigma, head, bias, phi, targets)?;
    let mut used = vec![T::zero(); m];
    if m == 0 || d == 0 {
        return dev.upload(&used, m, 1);
    }
    let phi_host = dev.download(phi)?;
    let targets_host = dev.download(targets)?;
    let bias_host: Vec<f64> = match bias {
        Some(b) => dev.download(b)?.iter().map(|x| x.as_f64()).collect(),
        None => vec![0.0; k],
    };
    let gamma = gamma.as_f64();
    for start in (0..m).step_by(BLOCK) {
        let b = BLOCK.min(m - start);
        let block = dev.upload(&phi_host[start * d..(start + b) * d], b, d)?;
        // Y = Φ_B Σ₀ (Σ symmetric), A = Y Φ_Bᵀ, F = Φ_B W₀ᵀ.
        let mut y = dev.zeros::<T>(b, d)?;
        dev.gemm(&mut y, T::zero(), &block, Op::N, sigma, Op::N, T::one())?;
        let mut a = dev.zeros::<T>(b, b)?;
        dev.gemm(&mut a, T::zero(), &y, Op::N, &block, Op::T, T::one())?;
        let mut f = dev.zeros::<T>(b, k)?;
        dev.gemm(&mut f, T::zero(), &block, Op::N, head, Op::T, T::one())?;
        let a: Vec<f64> = dev.download(&a)?.iter().map(|x| x.as_f64()).collect();
        let f: Vec<f64> = dev.download(&f)?.iter().map(|x| x.as_f64()).collect();
        let t: Vec<f64> = targets_host[start * k..(start + b) * k]
            .iter()
            .map(|x| x.as_f64())
            .collect();
        let step = block_recursion(&a, &f, &t, &bias_host, (b, k), gamma, weighting)
            .map_err(|jj| Error::NotPositiveDefinite { index: start + jj })?;
        for (jj, w) in step.weights.iter().enumerate() {
            used[start + jj] = T::from_f64(*w);
        }
        // Σ ← Σ − (diag(√c) M Y)ᵀ (diag(√c) M Y), symmetric by construction.
        let scaled = dev.upload(&crate::numerics::from_f64s::<T>(&step.sigma_factor), b, b)?;
        let mut us = dev.zeros::<T>(b, d)?;
        dev.gemm(&mut us, T::zero(), &scaled, Op::N, &y, Op::N, T::one())?;
        dev.weighted_syrk(sigma, T::one(), &us, None, -T::one())?;
        // W ← W + (Rᵀ diag(1/d) M) Y.
        let q = dev.upload(&crate::numerics::from_f64s::<T>(&step.head_factor), k, b)?;
        dev.gemm(head, T::one(), &q, Op::N, &y, Op::N, T::one())?;
    }
    dev.upload(&used, m, 1)
}

/// One block's update, in the span of its samples.
struct BlockStep {
    /// `m_j` per sample.
    weights: Vec<f64>,
    /// `diag(√c) M`, b × b.
    sigma_factor: Vec<f64>,
    /// `Rᵀ diag(1/d) M` with `R` the rows `γ (t_j − p_j)`, K × b.
    head_factor: Vec<f64>,
}

/// The recursion of one block from `A = Φ_B Σ₀ Φ_Bᵀ` (b × b), the logits `F = Φ_B W₀ᵀ` (b × K)
/// and the targets (b × K). `Err(j)` names the first sample whose `d_j = 1 + m_j s_j` is not
/// positive and finite.
fn block_recursion(
    a: &[f64],
    f: &[f64],
    targets: &[f64],
    bias: &[f64],
    (b, k): (usize, usize),
    gamma: f64,
    weighting: OutputWeighting,
) -> std::result::Result<BlockStep, usize> {
    // P[j][i] = φ_jᵀ Σ_{i−1} φ_i for i ≤ j.
    let mut p = vec![0.0; b * b];
    let mut c = vec![0.0; b];
    let mut inv = vec![0.0; b];
    let mut r = vec![0.0; b * k];
    let mut weights = vec![0.0; b];
    let mut logits = vec![0.0; k];
    for j in 0..b {
        for i in 0..=j {
            let correction: f64 = (0..i).map(|l| c[l] * p[j * b + l] * p[i * b + l]).sum();
            p[j * b + i] = a[j * b + i] - correction;
        }
        let s = p[j * b + j];
        for (cc, z) in logits.iter_mut().enumerate() {
            let carried: f64 = (0..j).map(|i| r[i * k + cc] * p[j * b + i] * inv[i]).sum();
            *z = f[j * k + cc] + bias[cc] + carried;
        }
        crate::numerics::softmax_in_place(&mut logits);
        let mj = match weighting {
            OutputWeighting::Gaussian => 1.0,
            OutputWeighting::Categorical => {
                let top = logits.iter().fold(0.0f64, |acc, &x| acc.max(x));
                top * (1.0 - top)
            }
        };
        let denom = 1.0 + mj * s;
        if !(denom.is_finite() && denom > 0.0) {
            return Err(j);
        }
        weights[j] = mj;
        c[j] = mj / denom;
        inv[j] = 1.0 / denom;
        for cc in 0..k {
            r[j * k + cc] = gamma * (targets[j * k + cc] - logits[cc]);
        }
    }
    // M = (I + L)⁻¹ row by row: M_i = e_i − Σ_{l<i} c_l P_il M_l.
    let mut mm = vec![0.0; b * b];
    for i in 0..b {
        mm[i * b + i] = 1.0;
        for l in 0..i {
            let coef = c[l] * p[i * b + l];
            if coef != 0.0 {
                for q in 0..=l {
                    mm[i * b + q] -= coef * mm[l * b + q];
                }
            }
        }
    }
    let sigma_factor = (0..b * b).map(|iq| c[iq / b].sqrt() * mm[iq]).collect();
    let mut head_factor = vec![0.0; k * b];
    for i in 0..b {
        for cc in 0..k {
            let ri = r[i * k + cc] * inv[i];
            for q in 0..=i {
                head_factor[cc * b + q] += ri * mm[i * b + q];
            }
        }
    }
    Ok(BlockStep {
        weights,
        sigma_factor,
        head_factor,
    })
}

/// The same blocked recursion on the host in f64, for callers that choose each rank-one term
/// from the current inverse (BAIT's greedy picks), so that no block of samples is known ahead.
///
/// Holds `Σ = Σ₀ − Σ_l c_l u_l u_lᵀ` with at most [`BLOCK`] pending terms: Σ₀ is read, never
/// written, inside a block, `Σx = Σ₀x − U diag(c) Uᵀx` costs one d × d product plus O(d·t), and
/// a full block is folded into Σ₀ by one rank-64 product `Σ₀ ← Σ₀ − Uᵀ diag(c) U`.
pub(crate) struct HostInverse {
    d: usize,
    /// Σ₀, d × d row-major, symmetric.
    base: Vec<f64>,
    /// Pending `u_l`, one row each, up to [`BLOCK`] × d.
    pending: Vec<f64>,
    coefficients: Vec<f64>,
}

impl HostInverse {
    /// `Σ = Σ₀`, d × d row-major and symmetric.
    pub(crate) fn new(base: Vec<f64>, d: usize) -> Self {
        debug_assert_eq!(base.len(), d * d);
        HostInverse {
            d,
            base,
            pending: Vec::with_capacity(BLOCK * d),
            coefficients: Vec::with_capacity(BLOCK),
        }
    }

    /// `Σx`.
    pub(crate) fn apply(&self, x: &[f64]) -> Vec<f64> {
        let mut y: Vec<f64> = self.base.chunks_exact(self.d).map(|row| dot(row, x)).collect();
        for (u, c) in self.pending.chunks_exact(self.d).zip(&self.coefficients) {
            let scale = c * dot(u, x);
            y.iter_mut().zip(u).for_each(|(yi, ui)| *yi -= scale * ui);
        }
        y
    }

    /// The Sherman–Morrison step for `Σ⁻¹ ← Σ⁻¹ + m vvᵀ` given `u = Σv` (from [`Self::apply`])
    /// and `s = vᵀu`: `Σ ← Σ − c uuᵀ` with `c = m/(1 + m s)`, returned. `None`, with Σ
    /// unchanged, when `1 + m s` is not positive and finite.
    pub(crate) fn downdate(&mut self, u: &[f64], s: f64, m: f64) -> Option<f64> {
        let denom = 1.0 + m * s;
        if !(denom.is_finite() && denom > 0.0) {
            return None;
        }
        let c = m / denom;
        self.pending.extend_from_slice(u);
        self.coefficients.push(c);
        if self.coefficients.len() == BLOCK {
            self.fold();
        }
        Some(c)
    }

    /// `Σ₀ ← Σ₀ − Uᵀ diag(c) U`, emptying the block.
    fn fold(&mut self) {
        use faer::{Accum, Mat, MatMut, MatRef, Par};
        let (t, d) = (self.coefficients.len(), self.d);
        let u = MatRef::from_row_major_slice(&self.pending, t, d);
        let cu = Mat::<f64>::from_fn(t, d, |l, i| self.coefficients[l] * u[(l, i)]);
        faer::linalg::matmul::matmul(
            MatMut::from_row_major_slice_mut(&mut self.base, d, d),
            Accum::Add,
            u.transpose(),
            cu.as_ref(),
            -1.0,
            Par::Seq,
        );
        crate::device::cpu::settle_vector_state();
        self.pending.clear();
        self.coefficients.clear();
    }
}
