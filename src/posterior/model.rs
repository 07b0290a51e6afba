//! What the likelihood and curvature give every structure: a batch on the device, the
//! likelihood's outputs and gradient at a head, and the per-sample output curvature `M_n` in
//! the closed forms the structures reduce it to.

use super::{Curvature, Likelihood, logits};
use crate::device::ops;
use crate::device::{Device, Matrix, Op};
use crate::error::Result;
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

    /// `M_n x_n` for each sample's row `x_n` of `x` (n × K): `p⊙x − p(pᵀx)` (softmax GGN),
    /// `x/σ²`, `r(rᵀx)` (empirical Fisher), or `Σ_s g_s(g_sᵀx)` over the draws; O(n·K) (times
    /// S for the draws), nothing of size K × K.
    pub fn product(&self, x: &[f64]) -> Vec<f64> {
        let k = self.classes.max(1);
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(u, v)| u * v).sum::<f64>();
        let mut out = vec![0.0; x.len()];
        match (self.likelihood, self.curvature) {
            (Likelihood::Classification, Curvature::Ggn) => {
                for ((o, x), p) in out
                    .chunks_exact_mut(k)
                    .zip(x.chunks_exact(k))
                    .zip(self.outputs.chunks_exact(k))
                {
                    let px = dot(p, x);
                    o.iter_mut()
                        .zip(p.iter().zip(x))
                        .for_each(|(o, (p, x))| *o = p * (x - px));
                }
            }
            (Likelihood::Regression { sigma_noise }, Curvature::Ggn) => {
                let c = 1.0 / (sigma_noise * sigma_noise);
                out.iter_mut().zip(x).for_each(|(o, x)| *o = c * x);
            }
            (_, Curvature::EmpiricalFisher) => {
                let r = self.residuals();
                for ((o, x), r) in out.chunks_exact_mut(k).zip(x.chunks_exact(k)).zip(r.chunks_exact(k)) {
                    let rx = dot(r, x);
                    o.iter_mut().zip(r).for_each(|(o, r)| *o = r * rx);
                }
            }
            (_, Curvature::MonteCarloFisher { samples, seed }) => {
                for (i, (o, x)) in out.chunks_exact_mut(k).zip(x.chunks_exact(k)).enumerate() {
                    self.for_each_draw(i, samples, seed, |g| {
                        let gx = dot(g, x);
                        o.iter_mut().zip(g).for_each(|(o, g)| *o += g * gx);
                    });
                }
            }
        }
        out
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

/// What the per-structure operations read of a posterior besides its state: the device, the
/// likelihood and curvature, and a fixed bias.
pub(crate) struct Model<'a, D: Device, T: Scalar> {
    pub device: &'a D,
    pub likelihood: Likelihood,
    pub curvature: Curvature,
    pub fixed_bias: Option<&'a Matrix<D, T>>,
}

impl<D: Device, T: Scalar> Model<'_, D, T> {
    fn is_classification(&self) -> bool {
        self.likelihood == Likelihood::Classification
    }

    /// Whether the curvature is the softmax GGN, which every structure forms on the device.
    pub fn softmax_ggn(&self) -> bool {
        self.is_classification() && self.curvature == Curvature::Ggn
    }

    /// Whether the curvature depends on the head (all but the Gaussian likelihood's GGN).
    pub fn head_dependent_curvature(&self) -> bool {
        self.is_classification() || self.curvature != Curvature::Ggn
    }

    /// The likelihood's mean at `head`: probabilities `softmax(f)` (classification) or the
    /// logits f (regression); n × K.
    pub fn outputs(&self, phi: &Matrix<D, T>, head: &Matrix<D, T>) -> Result<Matrix<D, T>> {
        let mut f = logits(self.device, phi, head, self.fixed_bias)?;
        if self.is_classification() {
            ops::softmax_rows(self.device, &mut f)?;
        }
        Ok(f)
    }

    /// `Σ_n (M_n (v φ_n)) φ_nᵀ` (K × D_aug): the batch's exact curvature, at the head whose
    /// outputs `curvature` holds, applied to the head-shaped v. Two GEMMs of m × K × D_aug
    /// and the m × K output curvature's product on the host.
    pub fn curvature_product(
        &self,
        batch: &Batch<D, T>,
        curvature: &OutputCurvature<'_>,
        v: &Matrix<D, T>,
    ) -> Result<Matrix<D, T>> {
        let device = self.device;
        let (m, k) = (batch.rows(), v.rows());
        let mut df = device.zeros(m, k)?;
        device.gemm(&mut df, T::zero(), &batch.phi, Op::N, v, Op::T, T::one())?;
        let df: Vec<f64> = device.download_owned(df)?.iter().map(|x| x.as_f64()).collect();
        let u: Vec<T> = curvature.product(&df).into_iter().map(T::from_f64).collect();
        let u = device.upload_owned(u, m, k)?;
        let mut out = device.zeros(k, batch.phi.cols())?;
        device.gemm(&mut out, T::zero(), &u, Op::T, &batch.phi, Op::N, T::one())?;
        Ok(out)
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
}
