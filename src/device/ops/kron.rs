//! The Kronecker products of the Full and Kron structures: the rows `(r_{n,c}) ⊗ φ_n`, the
//! congruence `(R ⊗ I)ᵀ X (R ⊗ I)`, and the Woodbury products `(ΣB, BᵀΣB)` of a low-rank
//! curvature `B Bᵀ`.
//!
//! | operation | composition | faer ([`Faer`]) | GPU ([`Kernels`]: `kernels/kron.cu`, `shaders/kron.wgsl`, and the gemm) |
//! |---|---|---|---|
//! | [`kron_rows`] | — | one pass over the rows | `KronRows` |
//! | [`kron_congruence`] | — | faer products per block | `KronMixColumns` and gemms |
//! | [`kron_products`] | two gemms on `Bᵀ` ([`Kron`]'s default) | fused per class pair | `KronFactors`, `KronMixU`, `KronMixG`, gemms |

#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use super::Kernels;
use super::ggn::softmax_factor_rows;
use super::{Composed, Faer};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::compose::{Gemm, Strided, elementwise, mirror};
use crate::device::cpu::{Fill, SyncPtr, fill_triangle, reserve, view, zeroed};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::gpu::{Args, GpuMatrix, Grid, Kernel, Record, raw};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::gpu::{GpuDevice, Runtime};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::registry::{ElementwiseFlag, ElementwiseParams, GgnParams, KronParams, field};
use crate::device::{CpuDevice, Device, LowRankFactor, Matrix, Op, congruence_shapes};
use crate::error::Result;
use crate::scalar::Scalar;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef};
use rayon::prelude::*;

/// The Kronecker products of a backend.
pub trait Kron<D: Device> {
    /// The rows `s_r ⊗ φ_{⌊r/rank⌋}` for the (n·rank) × K' factors S and Φ (n × D): (n·rank) ×
    /// (K'·D).
    fn kron_rows<T: Scalar>(dev: &D, factors: &Matrix<D, T>, phi: &Matrix<D, T>, rank: usize) -> Result<Matrix<D, T>>;

    /// `Y = (R ⊗ I_D) X (Rᵀ ⊗ I_D) + c·(I_K − R Rᵀ) ⊗ I_D` for X (K'D × K'D) and R (K × K').
    fn kron_congruence<T: Scalar>(
        dev: &D,
        x: &Matrix<D, T>,
        basis: &Matrix<D, T>,
        complement: T,
    ) -> Result<Matrix<D, T>>;

    /// The Woodbury products `(U, G) = (Σ B, Bᵀ Σ B)` for the factor B of `factor`; the
    /// composition builds `Bᵀ` (by [`kron_rows`] for `Kronecker`, by scaling Φ's rows for
    /// `Shared`), then two gemms: `U = Σ B`, `G = Bᵀ U`.
    fn kron_products<T: Scalar>(
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
                super::kron_rows(dev, &factors, phi, k)?
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
}

/// The rows `s_r ⊗ φ_{⌊r/rank⌋}` for the (n·rank) × K' factors S and Φ (n × D): returns
/// (n·rank) × (K'·D). Each sample n owns `rank` consecutive factor rows, the columns of its
/// output factor S_n with `S_n S_nᵀ` its output curvature; the rows A then give the curvature
/// `Σ_n (S_n S_nᵀ) ⊗ φ_n φ_nᵀ = Aᵀ A` (empirical and Monte Carlo Fisher, regression).
pub fn kron_rows<D: Device, T: Scalar>(
    dev: &D,
    factors: &Matrix<D, T>,
    phi: &Matrix<D, T>,
    rank: usize,
) -> Result<Matrix<D, T>> {
    <D::Ops as Kron<D>>::kron_rows(dev, factors, phi, rank)
}

/// `Y = (R ⊗ I_D) X (Rᵀ ⊗ I_D) + c·(I_K − R Rᵀ) ⊗ I_D` for X (K'D × K'D) symmetric and
/// R (K × K'): lifts a matrix from the span of R back to all K classes, with `c` on the
/// orthogonal complement when R has orthonormal columns.
///
/// Errors: `ShapeMismatch` (X not square, or its side not a multiple of R's columns).
pub fn kron_congruence<D: Device, T: Scalar>(
    dev: &D,
    x: &Matrix<D, T>,
    basis: &Matrix<D, T>,
    complement: T,
) -> Result<Matrix<D, T>> {
    congruence_shapes(x, basis)?;
    <D::Ops as Kron<D>>::kron_congruence(dev, x, basis, complement)
}

/// The Woodbury products `(U, G) = (Σ B, Bᵀ Σ B)` for the factor B of `factor`, without
/// forming B. Σ is (K·D) × (K·D) for `Kronecker`, D × D for `Shared`; Φ is m × D.
pub fn kron_products<D: Device, T: Scalar>(
    dev: &D,
    sigma: &Matrix<D, T>,
    phi: &Matrix<D, T>,
    factor: LowRankFactor<'_, D, T>,
) -> Result<(Matrix<D, T>, Matrix<D, T>)> {
    <D::Ops as Kron<D>>::kron_products(dev, sigma, phi, factor)
}

impl<D: Device> Kron<D> for Composed {
    fn kron_rows<T: Scalar>(dev: &D, factors: &Matrix<D, T>, phi: &Matrix<D, T>, rank: usize) -> Result<Matrix<D, T>> {
        <D::Ops as Kron<D>>::kron_rows(dev, factors, phi, rank)
    }

    fn kron_congruence<T: Scalar>(
        dev: &D,
        x: &Matrix<D, T>,
        basis: &Matrix<D, T>,
        complement: T,
    ) -> Result<Matrix<D, T>> {
        <D::Ops as Kron<D>>::kron_congruence(dev, x, basis, complement)
    }
}

impl Kron<CpuDevice> for Faer {
    fn kron_rows<T: Scalar>(
        dev: &CpuDevice,
        factors: &Matrix<CpuDevice, T>,
        phi: &Matrix<CpuDevice, T>,
        rank: usize,
    ) -> Result<Matrix<CpuDevice, T>> {
        let (n, d) = phi.shape();
        let k = factors.cols();
        factors.expect_shape("factors", n * rank, k)?;
        let width = k * d;
        let mut out = reserve::<T>(n * rank, width)?;
        out.resize(n * rank * width, T::zero());
        if width > 0 {
            dev.run(|| {
                out.par_chunks_mut(width).enumerate().for_each(|(row, dst)| {
                    let x = &phi.buffer()[(row / rank) * d..(row / rank + 1) * d];
                    let s = &factors.buffer()[row * k..(row + 1) * k];
                    for (block, &sa) in dst.chunks_mut(d).zip(s) {
                        block.iter_mut().zip(x).for_each(|(o, &xv)| *o = sa * xv);
                    }
                })
            });
        }
        Matrix::from_parts(out, n * rank, width)
    }

    fn kron_congruence<T: Scalar>(
        dev: &CpuDevice,
        x: &Matrix<CpuDevice, T>,
        basis: &Matrix<CpuDevice, T>,
        complement: T,
    ) -> Result<Matrix<CpuDevice, T>> {
        let (k, kr, d) = congruence_shapes(x, basis)?;
        let n_red = kr * d;
        let p = k * d;
        dev.run(|| {
            let (xb, rb) = (x.buffer(), basis.buffer());
            let rrt: Vec<T> = (0..k * k)
                .map(|kl| (0..kr).map(|b| rb[(kl / k) * kr + b] * rb[(kl % k) * kr + b]).sum())
                .collect();
            let mut y = zeroed::<T>(p * p);
            let rows = SyncPtr(y.as_mut_ptr());
            // One task per feature x: the rows (·, x) of Z = (R ⊗ I) X, `Z[(k, x), ·] =
            // Σ_a R[k, a] X[(a, x), ·]`, from the K' rows (a, x) of X (each read once, Z never
            // held whole), then rows (k, x) of Y = Z (Rᵀ ⊗ I) + c (I − R Rᵀ) ⊗ I, lower triangle:
            // block l ≤ k is Σ_b R[l, b] Z[(k, x), (b, ·)].
            (0..d).into_par_iter().for_each_init(
                || vec![T::zero(); k * n_red],
                |z, xx| {
                    let rows = &rows;
                    z.fill(T::zero());
                    for a in 0..kr {
                        let xrow = &xb[(a * d + xx) * n_red..(a * d + xx + 1) * n_red];
                        for (kk, zrow) in z.chunks_exact_mut(n_red).enumerate() {
                            let coef = rb[kk * kr + a];
                            zrow.iter_mut().zip(xrow).for_each(|(o, v)| *o += coef * *v);
                        }
                    }
                    for (kk, zrow) in z.chunks_exact(n_red).enumerate() {
                        let row = kk * d + xx;
                        // SAFETY: row (kk, xx) is written by the task of xx alone, and
                        // (row + 1)·p ≤ p² = y.len().
                        let yrow = unsafe { std::slice::from_raw_parts_mut(rows.0.add(row * p), p) };
                        for l in 0..=kk {
                            let dst = &mut yrow[l * d..(l + 1) * d];
                            for b in 0..kr {
                                let coef = rb[l * kr + b];
                                dst.iter_mut()
                                    .zip(&zrow[b * d..(b + 1) * d])
                                    .for_each(|(o, v)| *o += coef * *v);
                            }
                            let delta = if l == kk { T::one() } else { T::zero() };
                            dst[xx] += complement * (delta - rrt[kk * k + l]);
                        }
                    }
                },
            );
            fill_triangle(&mut y, p, Fill::LowerToUpper);
            Matrix::from_parts(y, p, p)
        })
    }

    fn kron_products<T: Scalar>(
        dev: &CpuDevice,
        sigma: &Matrix<CpuDevice, T>,
        phi: &Matrix<CpuDevice, T>,
        factor: LowRankFactor<'_, CpuDevice, T>,
    ) -> Result<(Matrix<CpuDevice, T>, Matrix<CpuDevice, T>)> {
        let (m, d) = phi.shape();
        let par = dev.par();
        match factor {
            LowRankFactor::Shared { weights } => {
                sigma.expect_shape("sigma", d, d)?;
                if let Some(w) = weights {
                    w.expect_shape("weights", m, 1)?;
                }
                dev.run_dense(|| {
                    let mut u = zeroed(d * m);
                    let uv = MatMut::from_row_major_slice_mut(&mut u, d, m);
                    matmul(uv, Accum::Replace, view(sigma), view(phi).transpose(), T::one(), par);
                    let sqrt_w: Option<Vec<T>> = weights.map(|w| w.buffer().iter().map(|x| x.sqrt()).collect());
                    if let Some(sw) = &sqrt_w {
                        u.par_chunks_mut(m.max(1)).for_each(|row| {
                            for (x, s) in row.iter_mut().zip(sw) {
                                *x *= *s;
                            }
                        });
                    }
                    let mut g = zeroed(m * m);
                    let gv = MatMut::from_row_major_slice_mut(&mut g, m, m);
                    matmul(
                        gv,
                        Accum::Replace,
                        view(phi),
                        MatRef::from_row_major_slice(&u, d, m),
                        T::one(),
                        par,
                    );
                    if let Some(sw) = &sqrt_w {
                        for (row, s) in g.chunks_mut(m.max(1)).zip(sw) {
                            row.iter_mut().for_each(|x| *x *= *s);
                        }
                    }
                    symmetrize_small(&mut g, m);
                    Ok((Matrix::from_parts(u, d, m)?, Matrix::from_parts(g, m, m)?))
                })
            }
            LowRankFactor::Kronecker { probs } => {
                let k = probs.cols();
                probs.expect_shape("probs", m, k)?;
                let p = k * d;
                sigma.expect_shape("sigma", p, p)?;
                dev.run_dense(|| {
                    // S_j = diag(√p_j) − p_j √p_jᵀ, stored m × K × K.
                    let mut s = zeroed(m * k * k);
                    for j in 0..m {
                        let pj = &probs.buffer()[j * k..(j + 1) * k];
                        for a in 0..k {
                            for c in 0..k {
                                let delta = if a == c { pj[a].sqrt() } else { T::zero() };
                                s[(j * k + a) * k + c] = delta - pj[a] * pj[c].sqrt();
                            }
                        }
                    }
                    // T[(r, k), j] = Σ_d Σ[r, kD + d] φ_j[d]: Σ seen as (P·K) × D.
                    let mut t = zeroed(p * k * m);
                    let sigma_rows = MatRef::from_row_major_slice(sigma.buffer().as_slice(), p * k, d);
                    matmul(
                        MatMut::from_row_major_slice_mut(&mut t, p * k, m),
                        Accum::Replace,
                        sigma_rows,
                        view(phi).transpose(),
                        T::one(),
                        par,
                    );
                    // U[r, (j, c)] = Σ_k T[(r, k), j] S_j[k, c].
                    let mk = m * k;
                    let mut u = zeroed(p * mk);
                    u.par_chunks_mut(mk.max(1)).enumerate().for_each(|(r, urow)| {
                        let trow = &t[r * k * m..(r + 1) * k * m];
                        for j in 0..m {
                            for c in 0..k {
                                let mut acc = T::zero();
                                for a in 0..k {
                                    acc += trow[a * m + j] * s[(j * k + a) * k + c];
                                }
                                urow[j * k + c] = acc;
                            }
                        }
                    });
                    // Y_a = Φ · U[aD..(a+1)D, :] (m × mK); G[(j, c), :] = Σ_a S_j[a, c] Y_a[j, :].
                    let mut y = zeroed(k * m * mk);
                    for a in 0..k {
                        let ua = MatRef::from_row_major_slice(&u[a * d * mk..(a + 1) * d * mk], d, mk);
                        matmul(
                            MatMut::from_row_major_slice_mut(&mut y[a * m * mk..(a + 1) * m * mk], m, mk),
                            Accum::Replace,
                            view(phi),
                            ua,
                            T::one(),
                            par,
                        );
                    }
                    let mut g = zeroed(mk * mk);
                    g.par_chunks_mut(mk.max(1)).enumerate().for_each(|(row, grow)| {
                        let (j, c) = (row / k, row % k);
                        for a in 0..k {
                            let coef = s[(j * k + a) * k + c];
                            let yrow = &y[(a * m + j) * mk..(a * m + j + 1) * mk];
                            for (gx, yx) in grow.iter_mut().zip(yrow) {
                                *gx += coef * *yx;
                            }
                        }
                    });
                    symmetrize_small(&mut g, mk);
                    Ok((Matrix::from_parts(u, p, mk)?, Matrix::from_parts(g, mk, mk)?))
                })
            }
        }
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
impl<Rt: Runtime> Kron<GpuDevice<Rt>> for Kernels {
    /// [`kron_rows`].
    fn kron_rows<T: Scalar>(
        dev: &GpuDevice<Rt>,
        factors: &GpuMatrix<Rt, T>,
        phi: &GpuMatrix<Rt, T>,
        rank: usize,
    ) -> Result<GpuMatrix<Rt, T>> {
        let (n, d) = phi.shape();
        let k = factors.cols();
        factors.expect_shape("factors", n * rank, k)?;
        let out = dev.zeros::<T>(n * rank, k * d)?;
        let mut rec = dev.recorder();
        if !out.is_empty() {
            let params = GgnParams {
                n: field(n),
                k: field(k),
                d: field(d),
                rank: field(rank),
                ..Default::default()
            };
            rec.launch(
                Kernel::KronRows,
                T::DTYPE,
                params.into(),
                Args::KronRows {
                    factors: raw(factors),
                    phi: raw(phi),
                    out: raw(&out),
                },
                Grid::Threads(out.len()),
            )?;
        }
        rec.submit()?;
        Ok(out)
    }

    /// [`kron_congruence`].
    fn kron_congruence<T: Scalar>(
        dev: &GpuDevice<Rt>,
        x: &GpuMatrix<Rt, T>,
        basis: &GpuMatrix<Rt, T>,
        complement: T,
    ) -> Result<GpuMatrix<Rt, T>> {
        let (k, kr, d) = congruence_shapes(x, basis)?;
        let n_red = kr * d;
        let p = k * d;
        let dtype = T::DTYPE;
        let z = dev.zeros::<T>(p, n_red)?;
        let y = dev.zeros::<T>(p, p)?;
        let mut rec = dev.recorder();
        // Z = (R ⊗ I) X: X seen as K' × (D·K'D).
        Gemm::new(
            (k, d * n_red, kr),
            (raw(basis), Strided::rows(0, kr)),
            (raw(x), Strided::rows(0, d * n_red)),
            (raw(&z), Strided::rows(0, d * n_red)),
            1.0,
            0.0,
        )
        .record(dev, &mut rec, dtype)?;
        let params = GgnParams {
            k: field(k),
            kr: field(kr),
            d: field(d),
            complement: complement.as_f64(),
            ..Default::default()
        };
        rec.launch(
            Kernel::KronMixColumns,
            dtype,
            params.into(),
            Args::KronMixColumns {
                z: raw(&z),
                basis: raw(basis),
                out: raw(&y),
            },
            Grid::Threads(p * p),
        )?;
        mirror(&mut rec, dtype, raw(&y), p)?;
        rec.submit()?;
        Ok(y)
    }

    /// [`kron_products`].
    fn kron_products<T: Scalar>(
        dev: &GpuDevice<Rt>,
        sigma: &GpuMatrix<Rt, T>,
        phi: &GpuMatrix<Rt, T>,
        factor: LowRankFactor<'_, GpuDevice<Rt>, T>,
    ) -> Result<(GpuMatrix<Rt, T>, GpuMatrix<Rt, T>)> {
        let (m, d) = phi.shape();
        let dtype = T::DTYPE;
        let mut rec = dev.recorder();
        let (u, g) = match factor {
            LowRankFactor::Shared { weights } => {
                sigma.expect_shape("sigma", d, d)?;
                if let Some(w) = weights {
                    w.expect_shape("weights", m, 1)?;
                }
                let u = dev.zeros::<T>(d, m)?;
                let g = dev.zeros::<T>(m, m)?;
                // U = Σ Φᵀ diag(√w), G = diag(√w) Φ U.
                Gemm::new(
                    (d, m, d),
                    (raw(sigma), Strided::rows(0, d)),
                    (raw(phi), Strided::rows(0, d).t()),
                    (raw(&u), Strided::rows(0, m)),
                    1.0,
                    0.0,
                )
                .record(dev, &mut rec, dtype)?;
                if let Some(w) = weights {
                    elementwise(
                        &mut rec,
                        dtype,
                        Kernel::ScaleColumns,
                        Some(raw(w)),
                        raw(&u),
                        ElementwiseParams {
                            flags: ElementwiseFlag::Sqrt.bit(),
                            ..ElementwiseParams::matrix(d, m)
                        },
                    )?;
                }
                Gemm::new(
                    (m, m, d),
                    (raw(phi), Strided::rows(0, d)),
                    (raw(&u), Strided::rows(0, m)),
                    (raw(&g), Strided::rows(0, m)),
                    1.0,
                    0.0,
                )
                .record(dev, &mut rec, dtype)?;
                if let Some(w) = weights {
                    elementwise(
                        &mut rec,
                        dtype,
                        Kernel::ScaleRows,
                        Some(raw(w)),
                        raw(&g),
                        ElementwiseParams {
                            flags: ElementwiseFlag::Sqrt.bit(),
                            ..ElementwiseParams::matrix(m, m)
                        },
                    )?;
                }
                (u, g)
            }
            LowRankFactor::Kronecker { probs } => {
                let k = probs.cols();
                probs.expect_shape("probs", m, k)?;
                let p = k * d;
                sigma.expect_shape("sigma", p, p)?;
                let mk = m * k;
                let s = dev.scratch::<T>(m * k * k, "Kronecker factors")?;
                let t = dev.scratch::<T>(p * k * m, "Σ (I ⊗ Φᵀ)")?;
                let y = dev.scratch::<T>(k * m * mk, "Φ U")?;
                let u = dev.zeros::<T>(p, mk)?;
                let g = dev.zeros::<T>(mk, mk)?;
                let params = KronParams {
                    m: field(m),
                    k: field(k),
                    d: field(d),
                    rows: field(p),
                };
                if m * k > 0 {
                    rec.launch(
                        Kernel::KronFactors,
                        dtype,
                        params.into(),
                        Args::KronFactors {
                            probs: raw(probs),
                            out: s.clone(),
                        },
                        Grid::Threads(m * k * k),
                    )?;
                }
                // T[(r, a), j] = Σ_x Σ[r, aD + x] φ_j[x]: Σ seen as (P·K) × D.
                Gemm::new(
                    (p * k, m, d),
                    (raw(sigma), Strided::rows(0, d)),
                    (raw(phi), Strided::rows(0, d).t()),
                    (t.clone(), Strided::rows(0, m)),
                    1.0,
                    0.0,
                )
                .record(dev, &mut rec, dtype)?;
                if p * mk > 0 {
                    rec.launch(
                        Kernel::KronMixU,
                        dtype,
                        params.into(),
                        Args::KronMixU {
                            t,
                            factors: s.clone(),
                            u: raw(&u),
                        },
                        Grid::Threads(p * mk),
                    )?;
                }
                // Y_a = Φ U[aD..(a+1)D, :], batched over a.
                let mut ya = Gemm::new(
                    (m, mk, d),
                    (raw(phi), Strided::rows(0, d)),
                    (raw(&u), Strided::rows(0, mk).batch(d * mk, 0)),
                    (y.clone(), Strided::rows(0, mk).batch(m * mk, 0)),
                    1.0,
                    0.0,
                );
                ya.outer = k;
                ya.record(dev, &mut rec, dtype)?;
                if mk > 0 {
                    rec.launch(
                        Kernel::KronMixG,
                        dtype,
                        params.into(),
                        Args::KronMixG {
                            y,
                            factors: s,
                            g: raw(&g),
                        },
                        Grid::Threads(mk * mk),
                    )?;
                }
                (u, g)
            }
        };
        let side = g.rows();
        elementwise(
            &mut rec,
            dtype,
            Kernel::Symmetrize,
            None,
            raw(&g),
            ElementwiseParams::matrix(side, side),
        )?;
        rec.submit()?;
        Ok((u, g))
    }
}

/// `G ← (G + Gᵀ) / 2` for a small row-major square matrix.
fn symmetrize_small<T: Scalar>(g: &mut [T], n: usize) {
    let half = T::from_f64(0.5);
    for i in 0..n {
        for j in i + 1..n {
            let v = (g[i * n + j] + g[j * n + i]) * half;
            g[i * n + j] = v;
            g[j * n + i] = v;
        }
    }
}
