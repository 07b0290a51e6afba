//! The kernel compositions of [`GpuDevice`], shared by every GPU runtime.
//!
//! Every runtime ships the same kernel families (`shaders/<family>.wgsl`, `kernels/<family>.cu`)
//! with the same parameters, so every [`Device`](crate::Device) method is written here once, as
//! a sequence of launches: the Full-GGN accumulation is the gemm kernel weighted per block, the
//! Cholesky factorisation is diagonal block, panel solve and gemm trailing update, and so on.
//! A runtime supplies allocations, a [`Record`] that launches kernels, and readback.

use crate::device::gpu::{Args, GpuDevice, GpuMatrix, Grid, Kernel, Record, Runtime, raw};
use crate::device::launch::{GridPart, gemm_launches};
use crate::device::registry::{
    CholeskyFlag, CholeskyParams, ElementwiseFlag, ElementwiseParams, GemmFlag, GemmParams, GgnFlag, GgnParams,
    KronParams, PredictiveFlag, PredictiveParams, field,
};
use crate::device::{
    CovLayout, Device, LowRankFactor, Op, Sign, congruence_shapes, cov_layout, ggn_shapes, low_rank_shapes,
    predictive_shapes,
};
use crate::error::{Error, Result};
use crate::scalar::{DType, Scalar};

/// Side of the blocks of the Cholesky factorisation and the triangular solve (`NB`).
const BLOCK: usize = 32;

/// A strided operand of the gemm kernel: element (i, j) of batch entry (o, n) is at
/// `off + i·rs + j·cs + o·bo + n·bi`.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Strided {
    off: usize,
    rs: usize,
    cs: usize,
    bo: usize,
    bi: usize,
}

impl Strided {
    /// A row-major matrix of `cols` columns starting at `off`.
    fn rows(off: usize, cols: usize) -> Self {
        Strided {
            off,
            rs: cols,
            cs: 1,
            ..Default::default()
        }
    }
    /// The transpose of this view.
    fn t(self) -> Self {
        Strided {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
    /// `op(A)` of a stored row-major matrix with `cols` columns.
    fn op(off: usize, cols: usize, op: Op) -> Self {
        let s = Strided::rows(off, cols);
        if op == Op::T { s.t() } else { s }
    }
    fn batch(self, bo: usize, bi: usize) -> Self {
        Strided { bo, bi, ..self }
    }
    /// The view moved `steps` along the contraction: columns of a left operand, rows of a
    /// right one.
    fn advance(self, steps: usize, rows: bool) -> Self {
        let stride = if rows { self.rs } else { self.cs };
        Strided {
            off: self.off + steps * stride,
            ..self
        }
    }
}

/// One gemm: `C ← β C + α op(A) diag(w) op(B)` over a batch of `outer × inner` entries.
#[derive(Clone)]
struct Gemm<R: Clone> {
    m: usize,
    n: usize,
    k: usize,
    a: (R, Strided),
    b: (R, Strided),
    /// Weights along the contraction: offset and stride in `Strided::{off, rs}`, batch strides.
    w: Option<(R, Strided)>,
    c: (R, Strided),
    alpha: f64,
    beta: f64,
    /// Skip tiles strictly above the diagonal (the caller mirrors).
    lower: bool,
    /// Skip batch entries whose inner index exceeds the outer one.
    lower_blocks: bool,
    /// Skip tiles above the diagonal in the diagonal batch entries only.
    lower_diagonal_blocks: bool,
    outer: usize,
    inner: usize,
}

impl<R: Clone> Gemm<R> {
    fn new(
        (m, n, k): (usize, usize, usize),
        a: (R, Strided),
        b: (R, Strided),
        c: (R, Strided),
        alpha: f64,
        beta: f64,
    ) -> Self {
        Gemm {
            m,
            n,
            k,
            a,
            b,
            w: None,
            c,
            alpha,
            beta,
            lower: false,
            lower_blocks: false,
            lower_diagonal_blocks: false,
            outer: 1,
            inner: 1,
        }
    }

    /// Records the product as the launches of [`gemm_launches`]: contraction chunks (the first
    /// with β, the rest accumulating), each over the tile grid split within the device's limits.
    fn record<Rt: Runtime<Raw = R>>(
        &self,
        dev: &GpuDevice<Rt>,
        rec: &mut impl Record<Raw = R>,
        dtype: DType,
    ) -> Result<()> {
        let batch = self.outer * self.inner;
        for launch in gemm_launches((self.m, self.n, self.k), batch, dev.grid_limits(), dev.policy()) {
            let start = launch.k_start;
            let part = Gemm {
                k: launch.k_len,
                a: (self.a.0.clone(), self.a.1.advance(start, false)),
                b: (self.b.0.clone(), self.b.1.advance(start, true)),
                w: self.w.clone().map(|(buf, w)| {
                    (
                        buf,
                        Strided {
                            off: w.off + start * w.rs,
                            ..w
                        },
                    )
                }),
                beta: if start == 0 { self.beta } else { 1.0 },
                ..self.clone()
            };
            part.record_launch(rec, dtype, launch.part)?;
        }
        Ok(())
    }

    /// One launch over the tiles and batch entries of `part`, which the kernel offsets by the
    /// part's origin.
    fn record_launch(&self, rec: &mut impl Record<Raw = R>, dtype: DType, part: GridPart) -> Result<()> {
        let flags = GemmFlag::when(&[
            (self.lower, GemmFlag::Lower),
            (self.w.is_some(), GemmFlag::Weighted),
            (self.beta == 0.0, GemmFlag::Overwrite),
            (self.lower_blocks, GemmFlag::LowerBlocks),
            (self.lower_diagonal_blocks, GemmFlag::LowerDiagonalTiles),
        ]);
        let (a, b, c) = (self.a.1, self.b.1, self.c.1);
        let w = self.w.as_ref().map_or(Strided::default(), |w| w.1);
        let params = GemmParams {
            m: field(self.m),
            n: field(self.n),
            k: field(self.k),
            flags,
            a_off: field(a.off),
            a_rs: field(a.rs),
            a_cs: field(a.cs),
            b_off: field(b.off),
            b_rs: field(b.rs),
            b_cs: field(b.cs),
            c_off: field(c.off),
            c_rs: field(c.rs),
            w_off: field(w.off),
            w_s: field(w.rs),
            inner: field(self.inner),
            a_bo: field(a.bo),
            a_bi: field(a.bi),
            b_bo: field(b.bo),
            b_bi: field(b.bi),
            c_bo: field(c.bo),
            c_bi: field(c.bi),
            w_bo: field(w.bo),
            w_bi: field(w.bi),
            x0: field(part.origin[0]),
            y0: field(part.origin[1]),
            z0: field(part.origin[2]),
            alpha: self.alpha,
            beta: self.beta,
        };
        let [x, y, z] = part.size;
        rec.launch(
            Kernel::Gemm,
            dtype,
            params.into(),
            Args::Gemm {
                a: self.a.0.clone(),
                b: self.b.0.clone(),
                weights: self.w.as_ref().map(|w| w.0.clone()),
                c: self.c.0.clone(),
            },
            Grid::Blocks(x as usize, y as usize, z as usize),
        )
    }
}

/// Records a 1-D elementwise kernel over the `params.len` items of `y`.
fn elementwise<R: Clone>(
    rec: &mut impl Record<Raw = R>,
    dtype: DType,
    kernel: Kernel,
    x: Option<R>,
    y: R,
    params: ElementwiseParams,
) -> Result<()> {
    if params.len == 0 {
        return Ok(());
    }
    let len = params.len as usize;
    rec.launch(
        kernel,
        dtype,
        params.into(),
        Args::Elementwise { x, y },
        Grid::Threads(len),
    )
}

/// Mirrors the lower triangle of the n × n `y` onto the upper one.
fn mirror<R: Clone>(rec: &mut impl Record<Raw = R>, dtype: DType, y: R, n: usize) -> Result<()> {
    elementwise(
        rec,
        dtype,
        Kernel::MirrorLower,
        None,
        y,
        ElementwiseParams::matrix(n, n),
    )
}

/// Records the blocked Cholesky factorisation of the n × n `a` in place (lower factor, upper
/// triangle zeroed); failing pivots go to `status`.
fn record_cholesky<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    rec: &mut Rt::Rec,
    a: Rt::Raw,
    n: usize,
    status: Rt::Raw,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let dtype = T::DTYPE;
    let diagonal = dev.scratch::<T>(BLOCK * BLOCK, "cholesky diagonal block")?;
    let panel = dev.scratch::<T>(n.saturating_sub(BLOCK).max(1) * BLOCK, "cholesky panel")?;
    for j0 in (0..n).step_by(BLOCK) {
        let nb = BLOCK.min(n - j0);
        let rows = n - j0 - nb;
        let params = CholeskyParams {
            n: field(n),
            j0: field(j0),
            nb: field(nb),
            rows: field(rows),
            ..Default::default()
        };
        rec.launch(
            Kernel::PotrfDiagonal,
            dtype,
            params.into(),
            Args::PotrfDiagonal {
                a: a.clone(),
                diagonal: diagonal.clone(),
                status: status.clone(),
            },
            Grid::Blocks(1, 1, 1),
        )?;
        if rows == 0 {
            continue;
        }
        rec.launch(
            Kernel::TrsmPanel,
            dtype,
            params.into(),
            Args::TrsmPanel {
                diagonal: diagonal.clone(),
                a: a.clone(),
                panel: panel.clone(),
            },
            Grid::Threads(rows),
        )?;
        // A₂₂ ← A₂₂ − L₂₁ L₂₁ᵀ on the lower tiles.
        let start = (j0 + nb) * n + j0 + nb;
        let mut g = Gemm::new(
            (rows, rows, nb),
            (panel.clone(), Strided::rows(0, nb)),
            (panel.clone(), Strided::rows(0, nb).t()),
            (a.clone(), Strided::rows(start, n)),
            -1.0,
            1.0,
        );
        g.lower = true;
        g.record(dev, rec, dtype)?;
    }
    elementwise(rec, dtype, Kernel::ZeroUpper, None, a, ElementwiseParams::matrix(n, n))
}

/// Records `B ← L⁻¹ B` (`Op::N`) or `B ← L⁻ᵀ B` (`Op::T`) for the n × n lower-triangular `l`
/// and the n × cols `b`, blocked: a diagonal-block solve, then a gemm update of the rest.
fn record_trsm<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    rec: &mut Rt::Rec,
    l: Rt::Raw,
    n: usize,
    b: Rt::Raw,
    cols: usize,
    op: Op,
) -> Result<()> {
    if n == 0 || cols == 0 {
        return Ok(());
    }
    let dtype = T::DTYPE;
    let solved = dev.scratch::<T>(BLOCK * cols, "solved rows")?;
    let mut starts: Vec<usize> = (0..n).step_by(BLOCK).collect();
    if op == Op::T {
        starts.reverse();
    }
    for j0 in starts {
        let nb = BLOCK.min(n - j0);
        let params = CholeskyParams {
            n: field(n),
            j0: field(j0),
            nb: field(nb),
            cols: field(cols),
            flags: CholeskyFlag::when(&[(op == Op::T, CholeskyFlag::Transposed)]),
            ..Default::default()
        };
        rec.launch(
            Kernel::TrsmBlock,
            dtype,
            params.into(),
            Args::TrsmBlock {
                l: l.clone(),
                b: b.clone(),
                solved: solved.clone(),
            },
            Grid::Threads(cols),
        )?;
        let update = match op {
            // B[j0+nb.., :] −= L[j0+nb.., j0..j0+nb] X
            Op::N if j0 + nb < n => Some((
                n - j0 - nb,
                Strided::rows((j0 + nb) * n + j0, n),
                Strided::rows((j0 + nb) * cols, cols),
            )),
            // B[..j0, :] −= L[j0..j0+nb, ..j0]ᵀ X
            Op::T if j0 > 0 => Some((j0, Strided::rows(j0 * n, n).t(), Strided::rows(0, cols))),
            _ => None,
        };
        if let Some((rows, l_view, b_view)) = update {
            Gemm::new(
                (rows, cols, nb),
                (l.clone(), l_view),
                (solved.clone(), Strided::rows(0, cols)),
                (b.clone(), b_view),
                -1.0,
                1.0,
            )
            .record(dev, rec, dtype)?;
        }
    }
    Ok(())
}

/// [`Device::gemm`]: the runtime's vendor BLAS when it has one turned on, else the gemm kernel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    c: &mut GpuMatrix<Rt, T>,
    beta: T,
    a: &GpuMatrix<Rt, T>,
    ta: Op,
    b: &GpuMatrix<Rt, T>,
    tb: Op,
    alpha: T,
) -> Result<()> {
    let (m, k) = if ta == Op::N { a.shape() } else { (a.cols(), a.rows()) };
    let (kb, n) = if tb == Op::N { b.shape() } else { (b.cols(), b.rows()) };
    if k != kb {
        return Err(Error::shape("b", (k, n), (kb, n)));
    }
    c.expect_shape("c", m, n)?;
    let vendor = dev.runtime.vendor_gemm(
        T::DTYPE,
        (m, n, k),
        (&raw(a), ta, a.cols()),
        (&raw(b), tb, b.cols()),
        &raw(c),
        alpha.as_f64(),
        beta.as_f64(),
    )?;
    if vendor {
        return Ok(());
    }
    let mut rec = dev.recorder();
    Gemm::new(
        (m, n, k),
        (raw(a), Strided::op(0, a.cols(), ta)),
        (raw(b), Strided::op(0, b.cols(), tb)),
        (raw(c), Strided::rows(0, n)),
        alpha.as_f64(),
        beta.as_f64(),
    )
    .record(dev, &mut rec, T::DTYPE)?;
    rec.submit()
}

/// [`Device::weighted_syrk`]: lower tiles of `Aᵀ diag(w) A`, mirrored (the vendor BLAS's SYRK
/// for unit weights when the runtime has one).
pub(crate) fn weighted_syrk<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    c: &mut GpuMatrix<Rt, T>,
    beta: T,
    a: &GpuMatrix<Rt, T>,
    weights: Option<&GpuMatrix<Rt, T>>,
    alpha: T,
) -> Result<()> {
    let (n, d) = a.shape();
    c.expect_shape("c", d, d)?;
    if let Some(w) = weights {
        w.expect_shape("weights", n, 1)?;
    }
    let mut rec = dev.recorder();
    if weights.is_none()
        && dev
            .runtime
            .vendor_syrk(T::DTYPE, (n, d), &raw(a), &raw(c), alpha.as_f64(), beta.as_f64())?
    {
        mirror(&mut rec, T::DTYPE, raw(c), d)?;
        return rec.submit();
    }
    let mut g = Gemm::new(
        (d, d, n),
        (raw(a), Strided::rows(0, d).t()),
        (raw(a), Strided::rows(0, d)),
        (raw(c), Strided::rows(0, d)),
        alpha.as_f64(),
        beta.as_f64(),
    );
    g.w = weights.map(|w| (raw(w), Strided::rows(0, 1)));
    g.lower = true;
    g.record(dev, &mut rec, T::DTYPE)?;
    mirror(&mut rec, T::DTYPE, raw(c), d)?;
    rec.submit()
}

/// [`Device::ggn_accumulate`]: per chunk of samples, the block weights `M_n = Rᵀ Λ_n R`, then
/// the blocks b ≤ a as one batched weighted gemm (lower tiles only inside the diagonal blocks),
/// mirrored at the end.
pub(crate) fn ggn_accumulate<Rt: Runtime, T: Scalar>(
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

/// [`Device::kron_congruence`].
pub(crate) fn kron_congruence<Rt: Runtime, T: Scalar>(
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

/// [`Device::kron_rows`].
pub(crate) fn kron_rows<Rt: Runtime, T: Scalar>(
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

/// [`Device::kron_products`].
pub(crate) fn kron_products<Rt: Runtime, T: Scalar>(
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

/// [`Device::low_rank_update`]: `Vᵀ = L⁻¹ Uᵀ`, then `Σ ± V Vᵀ` on the lower tiles, mirrored.
pub(crate) fn low_rank_update<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    sigma: &mut GpuMatrix<Rt, T>,
    u: &GpuMatrix<Rt, T>,
    c_chol: &GpuMatrix<Rt, T>,
    sign: Sign,
) -> Result<()> {
    let (n, r) = low_rank_shapes(sigma, u, c_chol)?;
    if r == 0 || n == 0 {
        return Ok(());
    }
    let dtype = T::DTYPE;
    let vt = dev.scratch::<T>(r * n, "L⁻¹ Uᵀ")?;
    let mut rec = dev.recorder();
    elementwise(
        &mut rec,
        dtype,
        Kernel::Transpose,
        Some(raw(u)),
        vt.clone(),
        ElementwiseParams::matrix(n, r),
    )?;
    record_trsm::<Rt, T>(dev, &mut rec, raw(c_chol), r, vt.clone(), n, Op::N)?;
    let mut g = Gemm::new(
        (n, n, r),
        (vt.clone(), Strided::rows(0, n).t()),
        (vt, Strided::rows(0, n)),
        (raw(sigma), Strided::rows(0, n)),
        if sign == Sign::Plus { 1.0 } else { -1.0 },
        1.0,
    );
    g.lower = true;
    g.record(dev, &mut rec, dtype)?;
    mirror(&mut rec, dtype, raw(sigma), n)?;
    rec.submit()
}

/// [`Device::cholesky`].
pub(crate) fn cholesky<Rt: Runtime, T: Scalar>(dev: &GpuDevice<Rt>, a: &mut GpuMatrix<Rt, T>) -> Result<()> {
    let n = a.expect_square("a")?;
    let status = dev.status()?;
    let mut rec = dev.recorder();
    record_cholesky::<Rt, T>(dev, &mut rec, raw(a), n, status.clone())?;
    rec.submit()?;
    match dev.failed_at(&status)? {
        Some(index) => Err(Error::NotPositiveDefinite { index }),
        None => Ok(()),
    }
}

/// [`Device::triangular_solve`].
pub(crate) fn triangular_solve<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    l: &GpuMatrix<Rt, T>,
    b: &mut GpuMatrix<Rt, T>,
    op: Op,
) -> Result<()> {
    let n = l.expect_square("l")?;
    if b.rows() != n {
        return Err(Error::shape("b", (n, b.cols()), b.shape()));
    }
    let mut rec = dev.recorder();
    record_trsm::<Rt, T>(dev, &mut rec, raw(l), n, raw(b), b.cols(), op)?;
    rec.submit()
}

/// [`Device::predictive_covariance`]: per chunk of rows, `T_a = Φ Σ[aD.., :]` batched over a,
/// then the row contraction with φ_n.
pub(crate) fn predictive_covariance<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    sigma: &GpuMatrix<Rt, T>,
    phi: &GpuMatrix<Rt, T>,
) -> Result<GpuMatrix<Rt, T>> {
    let (n, d, k) = predictive_shapes(sigma, phi)?;
    let p = k * d;
    let dtype = T::DTYPE;
    let out = dev.zeros::<T>(n, k * k)?;
    if n == 0 {
        return Ok(out);
    }
    let chunk = dev.policy().rows_per_chunk(n, k * p);
    let t = dev.scratch::<T>(k * chunk * p, "Φ Σ")?;
    let mut rec = dev.recorder();
    for start in (0..n).step_by(chunk) {
        let c = chunk.min(n - start);
        let mut g = Gemm::new(
            (c, p, d),
            (raw(phi), Strided::rows(start * d, d)),
            (raw(sigma), Strided::rows(0, p).batch(d * p, 0)),
            (t.clone(), Strided::rows(0, p).batch(c * p, 0)),
            1.0,
            0.0,
        );
        g.outer = k;
        g.record(dev, &mut rec, dtype)?;
        let params = PredictiveParams {
            n: field(c),
            k: field(k),
            d: field(d),
            in_off: field(start * d),
            out_off: field(start * k * k),
            ..Default::default()
        };
        rec.launch(
            Kernel::RowDot,
            dtype,
            params.into(),
            Args::RowDot {
                t: t.clone(),
                phi: raw(phi),
                out: raw(&out),
            },
            Grid::Threads(c * k * k),
        )?;
    }
    rec.submit()?;
    Ok(out)
}

/// Records one of the row-wise link kernels on `args`: `(first, last, samples)` is the Monte
/// Carlo sample range of this launch.
fn record_link<R: Clone>(
    rec: &mut impl Record<Raw = R>,
    dtype: DType,
    kernel: Kernel,
    args: Args<R>,
    (n, k, layout): (usize, usize, CovLayout),
    (first, last, samples): (usize, usize, usize),
    lambda: f64,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let flags = PredictiveFlag::when(&[
        (first == 0, PredictiveFlag::FirstLaunch),
        (last == samples, PredictiveFlag::LastLaunch),
    ]);
    let params = PredictiveParams {
        n: field(n),
        k: field(k),
        cov_layout: layout.code(),
        samples: field(samples),
        first: field(first),
        last: field(last),
        flags,
        lambda,
        ..Default::default()
    };
    rec.launch(kernel, dtype, params.into(), args, Grid::Threads(n))
}

/// A link from logit mean and covariance to probabilities, on a new n × K matrix. Monte Carlo
/// samples are split into launches of about the policy's loop iterations per row.
fn link<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    kernel: Kernel,
    mean: &GpuMatrix<Rt, T>,
    cov: &GpuMatrix<Rt, T>,
    eps: Option<&GpuMatrix<Rt, T>>,
    lambda: f64,
) -> Result<GpuMatrix<Rt, T>> {
    let layout = cov_layout(mean, cov)?;
    let (n, k) = mean.shape();
    let out = dev.zeros::<T>(n, k)?;
    let scratch_len = match kernel {
        Kernel::MonteCarlo => n * (k * k + 2 * k),
        Kernel::Bridge => n * 2 * k,
        _ => 0,
    };
    let scratch = dev.scratch::<T>(scratch_len, "link scratch")?;
    let mut rec = dev.recorder();
    let samples = eps.map_or(0, |e| e.rows());
    let per_sample = k * (k + 1) / 2 + 3 * k + 1;
    let chunk = dev.policy().samples_per_launch(per_sample);
    let mut first = 0;
    loop {
        let last = (first + chunk).min(samples);
        record_link(
            &mut rec,
            T::DTYPE,
            kernel,
            Args::Link {
                mean: raw(mean),
                cov: raw(cov),
                eps: eps.map(raw),
                out: raw(&out),
                scratch: scratch.clone(),
            },
            (n, k, layout),
            (first, last, samples),
            lambda,
        )?;
        first = last;
        if first >= samples {
            break;
        }
    }
    rec.submit()?;
    Ok(out)
}

/// [`Device::probit_softmax`].
pub(crate) fn probit_softmax<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    mean: &GpuMatrix<Rt, T>,
    cov: &GpuMatrix<Rt, T>,
    lambda: T,
) -> Result<GpuMatrix<Rt, T>> {
    link(dev, Kernel::Probit, mean, cov, None, lambda.as_f64())
}

/// [`Device::monte_carlo_softmax`].
pub(crate) fn monte_carlo_softmax<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    mean: &GpuMatrix<Rt, T>,
    cov: &GpuMatrix<Rt, T>,
    eps: &GpuMatrix<Rt, T>,
) -> Result<GpuMatrix<Rt, T>> {
    let samples = eps.rows();
    eps.expect_shape("eps", samples, mean.cols())?;
    if samples == 0 {
        return Err(Error::invalid("samples", "at least one Monte Carlo sample is required"));
    }
    link(dev, Kernel::MonteCarlo, mean, cov, Some(eps), 0.0)
}

/// [`Device::bridge_dirichlet`].
pub(crate) fn bridge_dirichlet<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    mean: &GpuMatrix<Rt, T>,
    cov: &GpuMatrix<Rt, T>,
) -> Result<GpuMatrix<Rt, T>> {
    link(dev, Kernel::Bridge, mean, cov, None, 0.0)
}

/// [`Device::softmax_rows`].
pub(crate) fn softmax_rows<Rt: Runtime, T: Scalar>(dev: &GpuDevice<Rt>, logits: &mut GpuMatrix<Rt, T>) -> Result<()> {
    let (n, k) = logits.shape();
    if k == 0 {
        return Ok(());
    }
    let mut rec = dev.recorder();
    record_link(
        &mut rec,
        T::DTYPE,
        Kernel::SoftmaxRows,
        Args::SoftmaxRows { logits: raw(logits) },
        (n, k, CovLayout::Full),
        (0, 0, 0),
        0.0,
    )?;
    rec.submit()
}

/// [`Device::categorical_weights`].
pub(crate) fn categorical_weights<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    probs: &GpuMatrix<Rt, T>,
) -> Result<GpuMatrix<Rt, T>> {
    let (n, k) = probs.shape();
    let out = dev.zeros::<T>(n, 1)?;
    let mut rec = dev.recorder();
    record_link(
        &mut rec,
        T::DTYPE,
        Kernel::CategoricalWeights,
        Args::CategoricalWeights {
            probs: raw(probs),
            out: raw(&out),
        },
        (n, k, CovLayout::Full),
        (0, 0, 0),
        0.0,
    )?;
    rec.submit()?;
    Ok(out)
}

/// `y ← op(y, x)` elementwise for two equal shapes ([`Device::axpy`], [`Device::hadamard`]).
pub(crate) fn binary<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    kernel: Kernel,
    y: &mut GpuMatrix<Rt, T>,
    x: &GpuMatrix<Rt, T>,
    alpha: T,
) -> Result<()> {
    x.expect_shape("x", y.rows(), y.cols())?;
    let mut rec = dev.recorder();
    let (rows, cols) = y.shape();
    elementwise(
        &mut rec,
        T::DTYPE,
        kernel,
        Some(raw(x)),
        raw(y),
        ElementwiseParams {
            alpha: alpha.as_f64(),
            ..ElementwiseParams::matrix(rows, cols)
        },
    )?;
    rec.submit()
}

/// [`Device::add_row`].
pub(crate) fn add_row<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    a: &mut GpuMatrix<Rt, T>,
    row: &GpuMatrix<Rt, T>,
) -> Result<()> {
    row.expect_shape("row", 1, a.cols())?;
    let mut rec = dev.recorder();
    let (rows, cols) = a.shape();
    elementwise(
        &mut rec,
        T::DTYPE,
        Kernel::AddRow,
        Some(raw(row)),
        raw(a),
        ElementwiseParams::matrix(rows, cols),
    )?;
    rec.submit()
}

/// [`Device::feature_rows`]: one gather launch, the ones column written by the same threads.
pub(crate) fn feature_rows<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    x: &GpuMatrix<Rt, T>,
    start: usize,
    count: usize,
    augment: bool,
) -> Result<GpuMatrix<Rt, T>> {
    crate::device::check_row_range(x, start, count)?;
    let cols = x.cols() + usize::from(augment);
    let out = dev.zeros::<T>(count, cols)?;
    let mut rec = dev.recorder();
    elementwise(
        &mut rec,
        T::DTYPE,
        Kernel::FeatureRows,
        Some(raw(x)),
        raw(&out),
        ElementwiseParams {
            start: field(start),
            flags: ElementwiseFlag::when(&[(augment, ElementwiseFlag::AppendOnes)]),
            ..ElementwiseParams::matrix(count, cols)
        },
    )?;
    rec.submit()?;
    Ok(out)
}

/// [`Device::add_diagonal`].
pub(crate) fn add_diagonal<Rt: Runtime, T: Scalar>(
    dev: &GpuDevice<Rt>,
    a: &mut GpuMatrix<Rt, T>,
    value: T,
) -> Result<()> {
    let n = a.expect_square("a")?;
    let mut rec = dev.recorder();
    elementwise(
        &mut rec,
        T::DTYPE,
        Kernel::AddDiagonal,
        None,
        raw(a),
        ElementwiseParams {
            len: field(n),
            rows: field(n),
            cols: field(n),
            alpha: value.as_f64(),
            ..Default::default()
        },
    )?;
    rec.submit()
}

/// [`Device::max_abs`]: the largest `|a_ij|` as IEEE bits, reduced with an atomic max into one
/// element-sized word (32 bits for f32, 64 for f64), so NaN wins and the result is exact.
pub(crate) fn max_abs<Rt: Runtime, T: Scalar>(dev: &GpuDevice<Rt>, a: &GpuMatrix<Rt, T>) -> Result<T> {
    let result = dev.scratch::<T>(1, "max |a|")?;
    let mut rec = dev.recorder();
    if !a.is_empty() {
        let params = ElementwiseParams::matrix(a.rows(), a.cols());
        rec.launch(
            Kernel::MaxAbs,
            T::DTYPE,
            params.into(),
            Args::MaxAbs {
                x: raw(a),
                result: result.clone(),
            },
            Grid::Threads(a.len()),
        )?;
    }
    rec.submit()?;
    Ok(match T::DTYPE {
        DType::F32 => T::from_f64(f32::from_le_bytes(dev.read_bytes(&result)?) as f64),
        DType::F64 => T::from_f64(f64::from_le_bytes(dev.read_bytes(&result)?)),
    })
}
