//! GGN accumulation: `Π += α Σ_n (Rᵀ Λ_n R) ⊗ φ_nφ_nᵀ`, `Λ_n = diag(p_n) − p_n p_nᵀ` (R the
//! K × K' basis of a reduced output space, the identity without one).
//!
//! | implementation | how |
//! |---|---|
//! | composition ([`Ggn`]'s default) | the factor rows `(Rᵀ s_{n,c}) ⊗ φ_n` by [`kron_rows`](super::kron_rows), folded in by [`Device::weighted_syrk`] in passes of at most 2²⁴ elements |
//! | faer ([`Faer`]) | one `Φᵀ diag(w_ab) Φ` per class pair a ≥ b, lower triangles only |
//! | GPU ([`Kernels`]) | `kernels/ggn.cu`, `shaders/ggn.wgsl` (the pair weights) and the weighted gemm of `kernels/gemm.cu`, `shaders/gemm.wgsl` |
//!
//! The factors `s_{n,c} = √p_c (e_c − p_n)` are the columns of `S_n = diag(√p_n) − p_n √p_nᵀ`,
//! `S_n S_nᵀ = Λ_n`.

#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use super::Kernels;
use super::{Composed, Faer};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::compose::{Gemm, Strided, mirror};
use crate::device::cpu::{
    Fill, SCRATCH_ELEMENTS, fill_triangle, kernel_gram, row_major, symmetric_add, transposed, view, view_mut, zeroed,
};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::gpu::{Args, GpuMatrix, Grid, Kernel, Record, raw};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::gpu::{GpuDevice, Runtime};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::registry::{GgnFlag, GgnParams, field};
use crate::device::{CpuDevice, Device, Matrix, ggn_shapes};
use crate::error::Result;
use crate::numerics::dot;
use crate::scalar::Scalar;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// The GGN accumulation of a backend; the default is the composition over the primitives.
pub trait Ggn<D: Device> {
    /// `Π += α Σ_n (Rᵀ Λ_n R) ⊗ φ_nφ_nᵀ` for Φ (n × D), probabilities (n × K) and the optional
    /// basis R (K × K'); Π is (K'·D)². The composition: `Π += α (rows)ᵀ(rows)` for the rows
    /// `(Rᵀ s_{n,c}) ⊗ φ_n` by [`kron_rows`](super::kron_rows) and [`Device::weighted_syrk`], in
    /// passes of at most 2²⁴ factor row elements.
    fn ggn_accumulate<T: Scalar>(
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
            let rows = super::kron_rows(dev, &factors, &x, k)?;
            dev.weighted_syrk(precision, T::one(), &rows, None, alpha)?;
        }
        Ok(())
    }
}

/// `Π += α Σ_n (Rᵀ Λ_n R) ⊗ φ_nφ_nᵀ` on `dev` (see the module notes).
///
/// Errors: `ShapeMismatch` (Π not (K'·D)², probabilities not n × K, R not K × K').
pub fn ggn_accumulate<D: Device, T: Scalar>(
    dev: &D,
    precision: &mut Matrix<D, T>,
    phi: &Matrix<D, T>,
    probs: &Matrix<D, T>,
    basis: Option<&Matrix<D, T>>,
    alpha: T,
) -> Result<()> {
    ggn_shapes(precision, phi, probs, basis)?;
    <D::Ops as Ggn<D>>::ggn_accumulate(dev, precision, phi, probs, basis, alpha)
}

/// Elements of factor rows one pass of [`ggn_accumulate`] builds.
const FACTOR_ROWS_ELEMENTS: usize = 1 << 24;

/// The factor rows `s_{n,c}ᵀ R` (K' wide, R the K × K' basis or the identity) for the samples of
/// `probs` (row-major, K wide): `rows · K` rows, sample-major.
pub(super) fn softmax_factor_rows<T: Scalar>(probs: &[T], k: usize, basis: Option<(&[f64], usize)>) -> Vec<T> {
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

/// Feature widths from which the CPU's softmax GGN is summed class pair by class pair
/// ([`ggn_by_class_pairs`]); narrower features keep one SYRK over the `K'·D`-wide rows
/// `p̃_n ⊗ φ_n`, whose per-pair blocks would be too small to run well.
const PAIR_GGN_MIN_FEATURES: usize = 32;
/// Rows of Φ per pass of [`ggn_by_class_pairs`]: the pass's rows and each thread's weighted
/// copy of them (2 MB at D = 512 in f32) stay in cache across the pairs.
const PAIR_GGN_ROWS: usize = 1024;

impl<D: Device> Ggn<D> for Composed {}

impl Ggn<CpuDevice> for Faer {
    fn ggn_accumulate<T: Scalar>(
        dev: &CpuDevice,
        precision: &mut Matrix<CpuDevice, T>,
        phi: &Matrix<CpuDevice, T>,
        probs: &Matrix<CpuDevice, T>,
        basis: Option<&Matrix<CpuDevice, T>>,
        alpha: T,
    ) -> Result<()> {
        let (n, d, k, kr, p) = ggn_shapes(precision, phi, probs, basis)?;
        if n == 0 || p == 0 {
            return Ok(());
        }
        let par = dev.par();
        if d >= PAIR_GGN_MIN_FEATURES {
            let shape = PairGgnShape { n, d, k, kr };
            let (phi, probs) = (&phi.buffer()[..n * d], &probs.buffer()[..n * k]);
            let basis = basis.map(|r| &r.buffer()[..k * kr]);
            let threads = dev.threads();
            dev.run_dense(|| ggn_by_class_pairs(precision.buffer_mut(), phi, probs, basis, shape, alpha, threads));
            return Ok(());
        }
        let chunk = (SCRATCH_ELEMENTS / p).clamp(64, 16_384).min(n);
        dev.run_dense(|| {
            let mut a_t = zeroed(p * chunk);
            let mut diag_t = zeroed(d * chunk);
            let mut grams = basis.map(|_| zeroed::<T>(k * d * d));
            // The grams are combined into lower blocks only, so the basis path always mirrors.
            let mut mirror = basis.is_some();
            for start in (0..n).step_by(chunk) {
                let c = chunk.min(n - start);
                // Φ_cᵀ (D × c) and P_cᵀ (K × c): every packed row below is then a contiguous
                // elementwise product.
                let phi_t = transposed(&phi.buffer()[start * d..(start + c) * d], c, d);
                let pr_t = transposed(&probs.buffer()[start * k..(start + c) * k], c, k);
                // Rᵀ p_i for every sample, K' × c (P_cᵀ itself without a basis).
                let pr_red = match basis {
                    None => None,
                    Some(r) => {
                        let mut out = zeroed(kr * c);
                        matmul(
                            MatMut::from_row_major_slice_mut(&mut out, kr, c),
                            Accum::Replace,
                            view(r).transpose(),
                            MatRef::from_row_major_slice(&pr_t, k, c),
                            T::one(),
                            Par::Seq,
                        );
                        Some(out)
                    }
                };
                let pr_a = pr_red.as_deref().unwrap_or(&pr_t);
                // Aᵀ, with row (a, d) holding p̃_ia φ_id over the chunk's samples i.
                a_t[..p * c].par_chunks_mut(c).enumerate().for_each(|(row, out)| {
                    let (pk, xd) = (
                        &pr_a[(row / d) * c..(row / d + 1) * c],
                        &phi_t[(row % d) * c..(row % d + 1) * c],
                    );
                    out.iter_mut()
                        .zip(pk.iter().zip(xd))
                        .for_each(|(o, (a, b))| *o = *a * *b);
                });
                let a_view = MatRef::from_row_major_slice(&a_t[..p * c], p, c);
                mirror |= symmetric_add(view_mut(precision), a_view, a_view, -alpha, par);
                // G_k = Φᵀ diag(p_k) Φ as (diag(√p_k) Φ)ᵀ (diag(√p_k) Φ): straight into block
                // (k, k) without a basis, else kept for the combination below.
                for kk in 0..k {
                    let sqrt_p: Vec<T> = pr_t[kk * c..(kk + 1) * c].iter().map(|x| x.sqrt()).collect();
                    diag_t[..d * c].par_chunks_mut(c).enumerate().for_each(|(dd, out)| {
                        let xd = &phi_t[dd * c..(dd + 1) * c];
                        out.iter_mut()
                            .zip(sqrt_p.iter().zip(xd))
                            .for_each(|(o, (a, b))| *o = *a * *b);
                    });
                    let dv = MatRef::from_row_major_slice(&diag_t[..d * c], d, c);
                    match grams.as_mut() {
                        None => {
                            let block = view_mut(precision).submatrix_mut(kk * d, kk * d, d, d);
                            mirror |= symmetric_add(block, dv, dv, alpha, par);
                        }
                        Some(g) => {
                            let gk = &mut g[kk * d * d..(kk + 1) * d * d];
                            gk.fill(T::zero());
                            if symmetric_add(MatMut::from_row_major_slice_mut(gk, d, d), dv, dv, alpha, par) {
                                fill_triangle(gk, d, Fill::LowerToUpper);
                            }
                        }
                    }
                }
                // Block (a, b ≤ a) += Σ_k R[k, a] R[k, b] G_k.
                if let (Some(g), Some(r)) = (grams.as_ref(), basis) {
                    let rb = r.buffer();
                    precision
                        .buffer_mut()
                        .par_chunks_mut(d * p)
                        .enumerate()
                        .for_each(|(a, block_row)| {
                            for b in 0..=a {
                                let coef: Vec<T> = (0..k).map(|kk| rb[kk * kr + a] * rb[kk * kr + b]).collect();
                                for x in 0..d {
                                    let dst = &mut block_row[x * p + b * d..x * p + (b + 1) * d];
                                    for (kk, ck) in coef.iter().enumerate() {
                                        let src = &g[kk * d * d + x * d..kk * d * d + (x + 1) * d];
                                        dst.iter_mut().zip(src).for_each(|(o, v)| *o += *ck * *v);
                                    }
                                }
                            }
                        });
                }
            }
            if mirror {
                fill_triangle(precision.buffer_mut(), p, Fill::LowerToUpper);
            }
        });
        Ok(())
    }
}

/// The sizes of one [`ggn_by_class_pairs`] call: n rows of Φ (D wide), K classes, K' reduced ones.
#[derive(Clone, Copy)]
struct PairGgnShape {
    n: usize,
    d: usize,
    k: usize,
    kr: usize,
}

/// `Π += α Σ_n (Rᵀ Λ_n R) ⊗ φ_nφ_nᵀ` with `Λ_n = diag(p_n) − p_n p_nᵀ` (R = I without a basis),
/// for the row-major `(K'·D)²` Π, one D × D block per class pair a ≥ b:
///
/// `B_ab = Φᵀ diag(w_ab) Φ`, `w_ab[n] = Σ_c R[c,a] R[c,b] p_nc − p̃_na p̃_nb`, `p̃_n = Rᵀ p_n`.
///
/// Every `B_ab` is symmetric, so only its lower triangle is summed (the Gram kernel where the CPU
/// has it, faer's triangular product otherwise), then mirrored and added to blocks (a, b) and
/// (b, a): `K'(K'+1)/2 · N·D²` FLOP, about half of one SYRK over the rows `p̃_n ⊗ φ_n`, which sums
/// both triangles of every off-diagonal block. Scratch: the `K'(K'+1)/2` blocks (about half of
/// Π) and one pass of rows per thread. Runs inside the pool.
fn ggn_by_class_pairs<T: Scalar>(
    precision: &mut [T],
    phi: &[T],
    probs: &[T],
    basis: Option<&[T]>,
    shape: PairGgnShape,
    alpha: T,
    threads: usize,
) {
    let PairGgnShape { n, d, k, kr } = shape;
    let p = kr * d;
    let pairs: Vec<(usize, usize)> = (0..kr).flat_map(|a| (0..=a).map(move |b| (a, b))).collect();
    // R[c,a] R[c,b] per pair (K values each), for the diagonal part Rᵀ diag(p) R.
    let products: Option<Vec<T>> = basis.map(|r| {
        pairs
            .iter()
            .flat_map(|&(a, b)| (0..k).map(move |c| r[c * kr + a] * r[c * kr + b]))
            .collect()
    });
    let mut blocks = zeroed::<T>(pairs.len() * d * d);
    // Few pairs: one pair at a time over the whole pool. Many: each thread its share of the
    // pairs (they cost the same), with its own scratch kept across passes.
    let across_pairs = pairs.len() >= 4 * threads;
    let share = pairs.len().div_ceil(threads.max(1));
    let mut scratches: Vec<(Vec<T>, Vec<T>)> = (0..threads.max(1)).map(|_| Default::default()).collect();
    let mut reduced = vec![T::zero(); PAIR_GGN_ROWS.min(n) * kr];
    for start in (0..n).step_by(PAIR_GGN_ROWS) {
        let rows = PAIR_GGN_ROWS.min(n - start);
        let (phi_pass, probs_pass) = (
            &phi[start * d..(start + rows) * d],
            &probs[start * k..(start + rows) * k],
        );
        let reduced = &mut reduced[..rows * kr];
        match basis {
            None => reduced.copy_from_slice(probs_pass),
            Some(r) => {
                for (out, pn) in reduced.chunks_exact_mut(kr).zip(probs_pass.chunks_exact(k)) {
                    for (a, o) in out.iter_mut().enumerate() {
                        *o = (0..k).fold(T::zero(), |s, c| s + r[c * kr + a] * pn[c]);
                    }
                }
            }
        }
        let reduced = &*reduced;
        let add_pair = |index: usize, block: &mut [T], (weighted, packing): &mut (Vec<T>, Vec<T>), parallel: bool| {
            let (a, b) = pairs[index];
            weighted.resize(rows * d, T::zero());
            for (i, (out, x)) in weighted.chunks_exact_mut(d).zip(phi_pass.chunks_exact(d)).enumerate() {
                let pn = &probs_pass[i * k..(i + 1) * k];
                let diagonal = match &products {
                    Some(prod) => dot(&prod[index * k..(index + 1) * k], pn),
                    None if a == b => pn[a],
                    None => T::zero(),
                };
                let w = diagonal - reduced[i * kr + a] * reduced[i * kr + b];
                out.iter_mut().zip(x).for_each(|(o, v)| *o = w * *v);
            }
            if !kernel_gram(block, phi_pass, weighted, d, T::one(), parallel, packing) {
                let (lhs, rhs) = (
                    row_major(phi_pass, rows, d).transpose(),
                    row_major(weighted, rows, d).transpose(),
                );
                let par = if parallel { Par::rayon(threads) } else { Par::Seq };
                let _lower_only = symmetric_add(MatMut::from_row_major_slice_mut(block, d, d), lhs, rhs, T::one(), par);
            }
        };
        if across_pairs {
            blocks
                .par_chunks_mut(share * d * d)
                .zip(scratches.par_iter_mut())
                .enumerate()
                .for_each(|(t, (group, scratch))| {
                    for (j, block) in group.chunks_mut(d * d).enumerate() {
                        add_pair(t * share + j, block, scratch, false);
                    }
                });
        } else {
            for (index, block) in blocks.chunks_mut(d * d).enumerate() {
                add_pair(index, block, &mut scratches[0], threads > 1);
            }
        }
    }
    blocks
        .par_chunks_mut(d * d)
        .for_each(|block| fill_triangle(block, d, Fill::LowerToUpper));
    // Row x of block row a: block b of it is row x of B_{max(a,b), min(a,b)}.
    precision[..p * p].par_chunks_mut(p).enumerate().for_each(|(row, out)| {
        let (a, x) = (row / d, row % d);
        for b in 0..kr {
            let (hi, lo) = (a.max(b), a.min(b));
            let block = &blocks[(hi * (hi + 1) / 2 + lo) * d * d..][..d * d];
            out[b * d..(b + 1) * d]
                .iter_mut()
                .zip(&block[x * d..(x + 1) * d])
                .for_each(|(o, v)| *o += alpha * *v);
        }
    });
}

#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
impl<Rt: Runtime> Ggn<GpuDevice<Rt>> for Kernels {
    /// [`ggn_accumulate`]: per chunk of samples, the block weights `M_n = Rᵀ Λ_n R`, then
    /// the blocks b ≤ a as one batched weighted gemm (lower tiles only inside the diagonal blocks),
    /// mirrored at the end.
    fn ggn_accumulate<T: Scalar>(
        dev: &GpuDevice<Rt>,
        precision: &mut GpuMatrix<Rt, T>,
        phi: &GpuMatrix<Rt, T>,
        probs: &GpuMatrix<Rt, T>,
        basis: Option<&GpuMatrix<Rt, T>>,
        alpha: T,
    ) -> Result<()> {
        let (n, d, k, kr, p) = ggn_shapes(precision, phi, probs, basis)?;
        if n == 0 || p == 0 {
            return Ok(());
        }
        let dtype = T::DTYPE;
        let blocks = kr * kr;
        let chunk = dev.policy().rows_per_chunk(n, blocks);
        let weights = dev.scratch::<T>(chunk * blocks, "GGN block weights")?;
        let mut rec = dev.recorder();
        for start in (0..n).step_by(chunk) {
            let c = chunk.min(n - start);
            let params = GgnParams {
                n: field(c),
                k: field(k),
                kr: field(kr),
                d: field(d),
                flags: GgnFlag::when(&[(basis.is_none(), GgnFlag::IdentityBasis)]),
                row0: field(start),
                ..Default::default()
            };
            rec.launch(
                Kernel::GgnWeights,
                dtype,
                params.into(),
                Args::GgnWeights {
                    probs: raw(probs),
                    basis: basis.map(raw),
                    out: weights.clone(),
                },
                Grid::Threads(c * blocks),
            )?;
            // Block (a, b ≤ a) += α Σ_n M_n[a, b] φ_n φ_nᵀ.
            let mut g = Gemm::new(
                (d, d, c),
                (raw(phi), Strided::rows(start * d, d).t()),
                (raw(phi), Strided::rows(start * d, d)),
                (raw(precision), Strided::rows(0, p).batch(d * p, d)),
                alpha.as_f64(),
                1.0,
            );
            g.w = Some((
                weights.clone(),
                Strided {
                    off: 0,
                    rs: blocks,
                    cs: 0,
                    bo: kr,
                    bi: 1,
                },
            ));
            g.outer = kr;
            g.inner = kr;
            g.lower_blocks = true;
            g.lower_diagonal_blocks = true;
            g.record(dev, &mut rec, dtype)?;
        }
        mirror(&mut rec, dtype, raw(precision), p)?;
        rec.submit()
    }
}
