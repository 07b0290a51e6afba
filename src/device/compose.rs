//! The kernel compositions shared by the GPU backends (wgpu and CUDA).
//!
//! Both backends ship the same kernel families (`shaders/<family>.wgsl`, `kernels/<family>.cu`)
//! with the same parameters, so every [`Device`] method is written here once, as a sequence of
//! launches on a [`Gpu`]: the Full-GGN accumulation is the gemm kernel weighted per block, the
//! Cholesky factorisation is diagonal block, panel solve and gemm trailing update, and so on.
//! A backend supplies buffers, a [`Record`] that launches kernels, and readback.

use crate::device::launch::{GridLimits, GridPart, LaunchPolicy, gemm_launches};
use crate::device::{
    CovLayout, Device, LowRankFactor, Matrix, Op, Sign, congruence_shapes, cov_layout, ggn_shapes, low_rank_shapes,
    predictive_shapes,
};
use crate::error::{Error, Result};
use crate::scalar::{DType, Scalar};

/// Side of the blocks of the Cholesky factorisation and the triangular solve (`NB`).
const BLOCK: usize = 32;
/// "No failure" in a status word.
pub(crate) const NONE: u32 = u32::MAX;

/// Every kernel entry point of the GPU backends. The WGSL name is [`Kernel::name`]; the CUDA
/// name adds the dtype suffix (`gemm_f32`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Kernel {
    Gemm,
    GgnWeights,
    KronRows,
    KronMixColumns,
    KronFactors,
    KronMixU,
    KronMixG,
    /// wgpu's per-sample Sherman–Morrison steps.
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    SmProject,
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    SmScalars,
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    SmApply,
    /// CUDA's persistent Sherman–Morrison kernel.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    SmSequence,
    PotrfDiagonal,
    TrsmPanel,
    TrsmBlock,
    RowDot,
    SoftmaxRows,
    Probit,
    MonteCarlo,
    Bridge,
    CategoricalWeights,
    Axpy,
    Hadamard,
    AddRow,
    AddDiagonal,
    MaxAbs,
    MirrorLower,
    ZeroUpper,
    Symmetrize,
    Transpose,
    SetIdentity,
    ScaleRows,
    ScaleColumns,
}

impl Kernel {
    /// The entry point's name, without a dtype suffix.
    pub(crate) fn name(self) -> &'static str {
        use Kernel::*;
        match self {
            Gemm => "gemm",
            GgnWeights => "ggn_weights",
            KronRows => "kron_rows",
            KronMixColumns => "kron_mix_columns",
            KronFactors => "kron_factors",
            KronMixU => "kron_mix_u",
            KronMixG => "kron_mix_g",
            SmProject => "sm_project",
            SmScalars => "sm_scalars",
            SmApply => "sm_apply",
            SmSequence => "sm_sequence",
            PotrfDiagonal => "potrf_diagonal",
            TrsmPanel => "trsm_panel",
            TrsmBlock => "trsm_block",
            RowDot => "row_dot",
            SoftmaxRows => "softmax_rows",
            Probit => "probit",
            MonteCarlo => "monte_carlo",
            Bridge => "bridge",
            CategoricalWeights => "categorical_weights",
            Axpy => "axpy",
            Hadamard => "hadamard",
            AddRow => "add_row",
            AddDiagonal => "add_diagonal",
            MaxAbs => "max_abs",
            MirrorLower => "mirror_lower",
            ZeroUpper => "zero_upper",
            Symmetrize => "symmetrize",
            Transpose => "transpose",
            SetIdentity => "set_identity",
            ScaleRows => "scale_rows",
            ScaleColumns => "scale_columns",
        }
    }

    /// Threads per block (workgroup) the kernel is written for.
    pub(crate) fn block_threads(self) -> (u32, u32) {
        use Kernel::*;
        match self {
            Gemm => (16, 16),
            PotrfDiagonal => (32, 1),
            TrsmPanel | TrsmBlock | SmProject | SmScalars => (64, 1),
            _ => (256, 1),
        }
    }
}

/// A kernel's scalar parameters: integer fields, then real fields, each in the order of the
/// kernel's `Params` struct. WGSL structs hold the integers then the reals as f32; CUDA
/// structs hold the reals as f64 first, then the integers.
#[derive(Default, Clone, Debug)]
pub(crate) struct KernelParams {
    pub(crate) ints: Vec<u32>,
    pub(crate) reals: Vec<f64>,
}

impl KernelParams {
    pub(crate) fn new() -> Self {
        Self::default()
    }
    /// Appends an integer field. Every size and offset indexes a buffer whose element count
    /// the backend checked against 32 bits when it was allocated, so the conversion cannot fail.
    pub(crate) fn u(mut self, v: usize) -> Self {
        debug_assert!(u32::try_from(v).is_ok(), "kernel parameter {v} exceeds 32 bits");
        self.ints.push(v as u32);
        self
    }
    /// Appends a real field.
    pub(crate) fn r(mut self, v: f64) -> Self {
        self.reals.push(v);
        self
    }
}

/// How many blocks a launch runs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Grid {
    /// One thread per item, in blocks of [`Kernel::block_threads`], folded into (x, y).
    Threads(usize),
    /// An explicit grid of blocks.
    Blocks(usize, usize, usize),
}

/// A queue of launches, submitted at once.
pub(crate) trait Record {
    /// A backend's handle to a device buffer.
    type Raw: Clone;
    /// Records one launch; `None` buffers are slots the kernel does not use.
    fn launch(
        &mut self,
        kernel: Kernel,
        dtype: DType,
        params: KernelParams,
        buffers: &[Option<Self::Raw>],
        grid: Grid,
    ) -> Result<()>;
    /// Submits the launches and waits for them.
    fn submit(self) -> Result<()>;
}

/// A GPU backend for the compositions of this module.
pub(crate) trait Gpu: Device {
    type Raw: Clone;
    type Rec: Record<Raw = Self::Raw>;
    /// The handle of a matrix's buffer.
    fn raw<T: Scalar>(m: &Matrix<Self, T>) -> Self::Raw;
    /// The handle of a scratch buffer.
    fn raw_buffer<T: Scalar>(b: &Self::Buffer<T>) -> Self::Raw;
    /// An empty launch queue.
    fn recorder(&self) -> Self::Rec;
    /// A scratch buffer of `len` elements (contents unspecified).
    fn scratch<T: Scalar>(&self, len: usize, label: &'static str) -> Result<Self::Buffer<T>>;
    /// A status pair `[NONE, 0]` (first failing index, step counter) as 32-bit words.
    fn status(&self) -> Result<Self::Buffer<f32>>;
    /// The first failing index recorded in `status`, if any.
    fn failed_at(&self, status: &Self::Buffer<f32>) -> Result<Option<usize>>;
    /// The largest grid one launch may have.
    fn grid_limits(&self) -> GridLimits;
    /// Contraction, scratch and Monte Carlo sizes per launch.
    fn policy(&self) -> &LaunchPolicy;
}

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
    fn record<D: Gpu<Raw = R>>(&self, dev: &D, rec: &mut impl Record<Raw = R>, dtype: DType) -> Result<()> {
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
        let flags = usize::from(self.lower)
            | (usize::from(self.w.is_some()) << 1)
            | (usize::from(self.beta == 0.0) << 2)
            | (usize::from(self.lower_blocks) << 3)
            | (usize::from(self.lower_diagonal_blocks) << 4);
        let (a, b, c) = (self.a.1, self.b.1, self.c.1);
        let w = self.w.as_ref().map_or(Strided::default(), |w| w.1);
        let params = KernelParams::new()
            .u(self.m)
            .u(self.n)
            .u(self.k)
            .u(flags)
            .u(a.off)
            .u(a.rs)
            .u(a.cs)
            .u(b.off)
            .u(b.rs)
            .u(b.cs)
            .u(c.off)
            .u(c.rs)
            .u(w.off)
            .u(w.rs)
            .u(self.inner)
            .u(a.bo)
            .u(a.bi)
            .u(b.bo)
            .u(b.bi)
            .u(c.bo)
            .u(c.bi)
            .u(w.bo)
            .u(w.bi)
            .u(part.origin[0])
            .u(part.origin[1])
            .u(part.origin[2])
            .r(self.alpha)
            .r(self.beta);
        let [x, y, z] = part.size;
        rec.launch(
            Kernel::Gemm,
            dtype,
            params,
            &[
                Some(self.a.0.clone()),
                Some(self.b.0.clone()),
                self.w.as_ref().map(|w| w.0.clone()),
                Some(self.c.0.clone()),
            ],
            Grid::Blocks(x as usize, y as usize, z as usize),
        )
    }
}

/// Records a 1-D elementwise kernel over `len` items.
#[allow(clippy::too_many_arguments)]
fn elementwise<R: Clone>(
    rec: &mut impl Record<Raw = R>,
    dtype: DType,
    kernel: Kernel,
    x: Option<R>,
    y: R,
    (len, rows, cols): (usize, usize, usize),
    flags: usize,
    alpha: f64,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let params = KernelParams::new().u(len).u(rows).u(cols).u(flags).r(alpha);
    rec.launch(kernel, dtype, params, &[x, Some(y)], Grid::Threads(len))
}

/// Mirrors the lower triangle of the n × n `y` onto the upper one.
fn mirror<R: Clone>(rec: &mut impl Record<Raw = R>, dtype: DType, y: R, n: usize) -> Result<()> {
    elementwise(rec, dtype, Kernel::MirrorLower, None, y, (n * n, n, n), 0, 0.0)
}

/// Records the blocked Cholesky factorisation of the n × n `a` in place (lower factor, upper
/// triangle zeroed); failing pivots go to `status`.
fn record_cholesky<D: Gpu, T: Scalar>(dev: &D, rec: &mut D::Rec, a: D::Raw, n: usize, status: D::Raw) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let dtype = T::DTYPE;
    let diagonal = dev.scratch::<T>(BLOCK * BLOCK, "cholesky diagonal block")?;
    let panel = dev.scratch::<T>(n.saturating_sub(BLOCK).max(1) * BLOCK, "cholesky panel")?;
    let (diagonal, panel) = (D::raw_buffer(&diagonal), D::raw_buffer(&panel));
    for j0 in (0..n).step_by(BLOCK) {
        let nb = BLOCK.min(n - j0);
        let rows = n - j0 - nb;
        let params = KernelParams::new().u(n).u(j0).u(nb).u(rows).u(0).u(0);
        rec.launch(
            Kernel::PotrfDiagonal,
            dtype,
            params.clone(),
            &[None, Some(a.clone()), Some(diagonal.clone()), Some(status.clone())],
            Grid::Blocks(1, 1, 1),
        )?;
        if rows == 0 {
            continue;
        }
        rec.launch(
            Kernel::TrsmPanel,
            dtype,
            params,
            &[Some(diagonal.clone()), Some(a.clone()), Some(panel.clone())],
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
    elementwise(rec, dtype, Kernel::ZeroUpper, None, a, (n * n, n, n), 0, 0.0)
}

/// Records `B ← L⁻¹ B` (`Op::N`) or `B ← L⁻ᵀ B` (`Op::T`) for the n × n lower-triangular `l`
/// and the n × cols `b`, blocked: a diagonal-block solve, then a gemm update of the rest.
fn record_trsm<D: Gpu, T: Scalar>(
    dev: &D,
    rec: &mut D::Rec,
    l: D::Raw,
    n: usize,
    b: D::Raw,
    cols: usize,
    op: Op,
) -> Result<()> {
    if n == 0 || cols == 0 {
        return Ok(());
    }
    let dtype = T::DTYPE;
    let solved = dev.scratch::<T>(BLOCK * cols, "solved rows")?;
    let solved = D::raw_buffer(&solved);
    let mut starts: Vec<usize> = (0..n).step_by(BLOCK).collect();
    if op == Op::T {
        starts.reverse();
    }
    for j0 in starts {
        let nb = BLOCK.min(n - j0);
        let params = KernelParams::new()
            .u(n)
            .u(j0)
            .u(nb)
            .u(0)
            .u(cols)
            .u(usize::from(op == Op::T));
        rec.launch(
            Kernel::TrsmBlock,
            dtype,
            params,
            &[Some(l.clone()), Some(b.clone()), Some(solved.clone())],
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

/// [`Device::gemm`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<D: Gpu, T: Scalar>(
    dev: &D,
    c: &mut Matrix<D, T>,
    beta: T,
    a: &Matrix<D, T>,
    ta: Op,
    b: &Matrix<D, T>,
    tb: Op,
    alpha: T,
) -> Result<()> {
    let (m, k) = if ta == Op::N { a.shape() } else { (a.cols(), a.rows()) };
    let (kb, n) = if tb == Op::N { b.shape() } else { (b.cols(), b.rows()) };
    if k != kb {
        return Err(Error::shape("b", (k, n), (kb, n)));
    }
    c.expect_shape("c", m, n)?;
    let mut rec = dev.recorder();
    Gemm::new(
        (m, n, k),
        (D::raw(a), Strided::op(0, a.cols(), ta)),
        (D::raw(b), Strided::op(0, b.cols(), tb)),
        (D::raw(c), Strided::rows(0, n)),
        alpha.as_f64(),
        beta.as_f64(),
    )
    .record(dev, &mut rec, T::DTYPE)?;
    rec.submit()
}

/// [`Device::weighted_syrk`]: lower tiles of `Aᵀ diag(w) A`, mirrored.
pub(crate) fn weighted_syrk<D: Gpu, T: Scalar>(
    dev: &D,
    c: &mut Matrix<D, T>,
    beta: T,
    a: &Matrix<D, T>,
    weights: Option<&Matrix<D, T>>,
    alpha: T,
) -> Result<()> {
    let (n, d) = a.shape();
    c.expect_shape("c", d, d)?;
    if let Some(w) = weights {
        w.expect_shape("weights", n, 1)?;
    }
    let mut rec = dev.recorder();
    let mut g = Gemm::new(
        (d, d, n),
        (D::raw(a), Strided::rows(0, d).t()),
        (D::raw(a), Strided::rows(0, d)),
        (D::raw(c), Strided::rows(0, d)),
        alpha.as_f64(),
        beta.as_f64(),
    );
    g.w = weights.map(|w| (D::raw(w), Strided::rows(0, 1)));
    g.lower = true;
    g.record(dev, &mut rec, T::DTYPE)?;
    mirror(&mut rec, T::DTYPE, D::raw(c), d)?;
    rec.submit()
}

/// [`Device::ggn_accumulate`]: per chunk of samples, the block weights `M_n = Rᵀ Λ_n R`, then
/// the blocks b ≤ a as one batched weighted gemm (lower tiles only inside the diagonal blocks),
/// mirrored at the end.
pub(crate) fn ggn_accumulate<D: Gpu, T: Scalar>(
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
    let dtype = T::DTYPE;
    let blocks = kr * kr;
    let chunk = dev.policy().rows_per_chunk(n, blocks);
    let weights = dev.scratch::<T>(chunk * blocks, "GGN block weights")?;
    let weights = D::raw_buffer(&weights);
    let mut rec = dev.recorder();
    for start in (0..n).step_by(chunk) {
        let c = chunk.min(n - start);
        let params = KernelParams::new()
            .u(c)
            .u(k)
            .u(kr)
            .u(d)
            .u(0)
            .u(usize::from(basis.is_none()))
            .u(start)
            .r(0.0);
        rec.launch(
            Kernel::GgnWeights,
            dtype,
            params,
            &[Some(D::raw(probs)), basis.map(D::raw), Some(weights.clone())],
            Grid::Threads(c * blocks),
        )?;
        // Block (a, b ≤ a) += α Σ_n M_n[a, b] φ_n φ_nᵀ.
        let mut g = Gemm::new(
            (d, d, c),
            (D::raw(phi), Strided::rows(start * d, d).t()),
            (D::raw(phi), Strided::rows(start * d, d)),
            (D::raw(precision), Strided::rows(0, p).batch(d * p, d)),
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
    mirror(&mut rec, dtype, D::raw(precision), p)?;
    rec.submit()
}

/// [`Device::kron_congruence`].
pub(crate) fn kron_congruence<D: Gpu, T: Scalar>(
    dev: &D,
    x: &Matrix<D, T>,
    basis: &Matrix<D, T>,
    complement: T,
) -> Result<Matrix<D, T>> {
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
        (D::raw(basis), Strided::rows(0, kr)),
        (D::raw(x), Strided::rows(0, d * n_red)),
        (D::raw(&z), Strided::rows(0, d * n_red)),
        1.0,
        0.0,
    )
    .record(dev, &mut rec, dtype)?;
    let params = KernelParams::new()
        .u(0)
        .u(k)
        .u(kr)
        .u(d)
        .u(0)
        .u(0)
        .u(0)
        .r(complement.as_f64());
    rec.launch(
        Kernel::KronMixColumns,
        dtype,
        params,
        &[Some(D::raw(&z)), Some(D::raw(basis)), Some(D::raw(&y))],
        Grid::Threads(p * p),
    )?;
    mirror(&mut rec, dtype, D::raw(&y), p)?;
    rec.submit()?;
    Ok(y)
}

/// [`Device::kron_rows`].
pub(crate) fn kron_rows<D: Gpu, T: Scalar>(
    dev: &D,
    factors: &Matrix<D, T>,
    phi: &Matrix<D, T>,
    rank: usize,
) -> Result<Matrix<D, T>> {
    let (n, d) = phi.shape();
    let k = factors.cols();
    factors.expect_shape("factors", n * rank, k)?;
    let out = dev.zeros::<T>(n * rank, k * d)?;
    let mut rec = dev.recorder();
    if !out.is_empty() {
        let params = KernelParams::new().u(n).u(k).u(0).u(d).u(rank).u(0).u(0).r(0.0);
        rec.launch(
            Kernel::KronRows,
            T::DTYPE,
            params,
            &[Some(D::raw(factors)), Some(D::raw(phi)), Some(D::raw(&out))],
            Grid::Threads(out.len()),
        )?;
    }
    rec.submit()?;
    Ok(out)
}

/// [`Device::kron_products`].
pub(crate) fn kron_products<D: Gpu, T: Scalar>(
    dev: &D,
    sigma: &Matrix<D, T>,
    phi: &Matrix<D, T>,
    factor: LowRankFactor<'_, D, T>,
) -> Result<(Matrix<D, T>, Matrix<D, T>)> {
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
                (D::raw(sigma), Strided::rows(0, d)),
                (D::raw(phi), Strided::rows(0, d).t()),
                (D::raw(&u), Strided::rows(0, m)),
                1.0,
                0.0,
            )
            .record(dev, &mut rec, dtype)?;
            if let Some(w) = weights {
                elementwise(
                    &mut rec,
                    dtype,
                    Kernel::ScaleColumns,
                    Some(D::raw(w)),
                    D::raw(&u),
                    (d * m, d, m),
                    1,
                    0.0,
                )?;
            }
            Gemm::new(
                (m, m, d),
                (D::raw(phi), Strided::rows(0, d)),
                (D::raw(&u), Strided::rows(0, m)),
                (D::raw(&g), Strided::rows(0, m)),
                1.0,
                0.0,
            )
            .record(dev, &mut rec, dtype)?;
            if let Some(w) = weights {
                elementwise(
                    &mut rec,
                    dtype,
                    Kernel::ScaleRows,
                    Some(D::raw(w)),
                    D::raw(&g),
                    (m * m, m, m),
                    1,
                    0.0,
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
            let (s, t, y) = (D::raw_buffer(&s), D::raw_buffer(&t), D::raw_buffer(&y));
            let u = dev.zeros::<T>(p, mk)?;
            let g = dev.zeros::<T>(mk, mk)?;
            let params = KernelParams::new().u(m).u(k).u(d).u(p);
            if m * k > 0 {
                rec.launch(
                    Kernel::KronFactors,
                    dtype,
                    params.clone(),
                    &[Some(D::raw(probs)), None, Some(s.clone())],
                    Grid::Threads(m * k * k),
                )?;
            }
            // T[(r, a), j] = Σ_x Σ[r, aD + x] φ_j[x]: Σ seen as (P·K) × D.
            Gemm::new(
                (p * k, m, d),
                (D::raw(sigma), Strided::rows(0, d)),
                (D::raw(phi), Strided::rows(0, d).t()),
                (t.clone(), Strided::rows(0, m)),
                1.0,
                0.0,
            )
            .record(dev, &mut rec, dtype)?;
            if p * mk > 0 {
                rec.launch(
                    Kernel::KronMixU,
                    dtype,
                    params.clone(),
                    &[Some(t), Some(s.clone()), Some(D::raw(&u))],
                    Grid::Threads(p * mk),
                )?;
            }
            // Y_a = Φ U[aD..(a+1)D, :], batched over a.
            let mut ya = Gemm::new(
                (m, mk, d),
                (D::raw(phi), Strided::rows(0, d)),
                (D::raw(&u), Strided::rows(0, mk).batch(d * mk, 0)),
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
                    params,
                    &[Some(y), Some(s), Some(D::raw(&g))],
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
        D::raw(&g),
        (side * side, side, side),
        0,
        0.0,
    )?;
    rec.submit()?;
    Ok((u, g))
}

/// [`Device::low_rank_update`]: `Vᵀ = L⁻¹ Uᵀ`, then `Σ ± V Vᵀ` on the lower tiles, mirrored.
pub(crate) fn low_rank_update<D: Gpu, T: Scalar>(
    dev: &D,
    sigma: &mut Matrix<D, T>,
    u: &Matrix<D, T>,
    c_chol: &Matrix<D, T>,
    sign: Sign,
) -> Result<()> {
    let (n, r) = low_rank_shapes(sigma, u, c_chol)?;
    if r == 0 || n == 0 {
        return Ok(());
    }
    let dtype = T::DTYPE;
    let vt = dev.scratch::<T>(r * n, "L⁻¹ Uᵀ")?;
    let vt = D::raw_buffer(&vt);
    let mut rec = dev.recorder();
    elementwise(
        &mut rec,
        dtype,
        Kernel::Transpose,
        Some(D::raw(u)),
        vt.clone(),
        (n * r, n, r),
        0,
        0.0,
    )?;
    record_trsm::<D, T>(dev, &mut rec, D::raw(c_chol), r, vt.clone(), n, Op::N)?;
    let mut g = Gemm::new(
        (n, n, r),
        (vt.clone(), Strided::rows(0, n).t()),
        (vt, Strided::rows(0, n)),
        (D::raw(sigma), Strided::rows(0, n)),
        if sign == Sign::Plus { 1.0 } else { -1.0 },
        1.0,
    );
    g.lower = true;
    g.record(dev, &mut rec, dtype)?;
    mirror(&mut rec, dtype, D::raw(sigma), n)?;
    rec.submit()
}

/// [`Device::cholesky`].
pub(crate) fn cholesky<D: Gpu, T: Scalar>(dev: &D, a: &mut Matrix<D, T>) -> Result<()> {
    let n = a.expect_square("a")?;
    let status = dev.status()?;
    let mut rec = dev.recorder();
    record_cholesky::<D, T>(dev, &mut rec, D::raw(a), n, D::raw_buffer(&status))?;
    rec.submit()?;
    match dev.failed_at(&status)? {
        Some(index) => Err(Error::NotPositiveDefinite { index }),
        None => Ok(()),
    }
}

/// [`Device::triangular_solve`].
pub(crate) fn triangular_solve<D: Gpu, T: Scalar>(
    dev: &D,
    l: &Matrix<D, T>,
    b: &mut Matrix<D, T>,
    op: Op,
) -> Result<()> {
    let n = l.expect_square("l")?;
    if b.rows() != n {
        return Err(Error::shape("b", (n, b.cols()), b.shape()));
    }
    let mut rec = dev.recorder();
    record_trsm::<D, T>(dev, &mut rec, D::raw(l), n, D::raw(b), b.cols(), op)?;
    rec.submit()
}

/// [`Device::spd_inverse`]: `L = chol(A)`, `X = L⁻¹`, `A⁻¹ = Xᵀ X` (lower tiles, mirrored).
pub(crate) fn spd_inverse<D: Gpu, T: Scalar>(dev: &D, a: &Matrix<D, T>) -> Result<Matrix<D, T>> {
    let n = a.expect_square("a")?;
    let dtype = T::DTYPE;
    let l = dev.copy(a)?;
    let x = dev.zeros::<T>(n, n)?;
    let out = dev.zeros::<T>(n, n)?;
    let status = dev.status()?;
    let mut rec = dev.recorder();
    record_cholesky::<D, T>(dev, &mut rec, D::raw(&l), n, D::raw_buffer(&status))?;
    elementwise(
        &mut rec,
        dtype,
        Kernel::SetIdentity,
        None,
        D::raw(&x),
        (n * n, n, n),
        0,
        0.0,
    )?;
    record_trsm::<D, T>(dev, &mut rec, D::raw(&l), n, D::raw(&x), n, Op::N)?;
    let mut g = Gemm::new(
        (n, n, n),
        (D::raw(&x), Strided::rows(0, n).t()),
        (D::raw(&x), Strided::rows(0, n)),
        (D::raw(&out), Strided::rows(0, n)),
        1.0,
        0.0,
    );
    g.lower = true;
    g.record(dev, &mut rec, dtype)?;
    mirror(&mut rec, dtype, D::raw(&out), n)?;
    rec.submit()?;
    match dev.failed_at(&status)? {
        Some(index) => Err(Error::NotPositiveDefinite { index }),
        None => Ok(out),
    }
}

/// [`Device::predictive_covariance`]: per chunk of rows, `T_a = Φ Σ[aD.., :]` batched over a,
/// then the row contraction with φ_n.
pub(crate) fn predictive_covariance<D: Gpu, T: Scalar>(
    dev: &D,
    sigma: &Matrix<D, T>,
    phi: &Matrix<D, T>,
) -> Result<Matrix<D, T>> {
    let (n, d, k) = predictive_shapes(sigma, phi)?;
    let p = k * d;
    let dtype = T::DTYPE;
    let out = dev.zeros::<T>(n, k * k)?;
    if n == 0 {
        return Ok(out);
    }
    let chunk = dev.policy().rows_per_chunk(n, k * p);
    let t = dev.scratch::<T>(k * chunk * p, "Φ Σ")?;
    let t = D::raw_buffer(&t);
    let mut rec = dev.recorder();
    for start in (0..n).step_by(chunk) {
        let c = chunk.min(n - start);
        let mut g = Gemm::new(
            (c, p, d),
            (D::raw(phi), Strided::rows(start * d, d)),
            (D::raw(sigma), Strided::rows(0, p).batch(d * p, 0)),
            (t.clone(), Strided::rows(0, p).batch(c * p, 0)),
            1.0,
            0.0,
        );
        g.outer = k;
        g.record(dev, &mut rec, dtype)?;
        let params = KernelParams::new()
            .u(c)
            .u(k)
            .u(d)
            .u(0)
            .u(0)
            .u(start * d)
            .u(start * k * k)
            .u(0)
            .r(0.0);
        rec.launch(
            Kernel::RowDot,
            dtype,
            params,
            &[Some(t.clone()), Some(D::raw(phi)), None, Some(D::raw(&out))],
            Grid::Threads(c * k * k),
        )?;
    }
    rec.submit()?;
    Ok(out)
}

/// Records one of the row-wise link kernels: `(first, last, samples)` is the Monte Carlo sample
/// range of this launch (flag 1: first, flag 2: last).
#[allow(clippy::too_many_arguments)]
fn record_link<R: Clone>(
    rec: &mut impl Record<Raw = R>,
    dtype: DType,
    kernel: Kernel,
    inputs: [Option<R>; 3],
    out: R,
    scratch: Option<R>,
    (n, k, layout): (usize, usize, CovLayout),
    (first, last, samples): (usize, usize, usize),
    lambda: f64,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let layout = match layout {
        CovLayout::Full => 0,
        CovLayout::Isotropic => 1,
        CovLayout::Diagonal => 2,
    };
    let flags = usize::from(first == 0) | (usize::from(last == samples) << 1);
    let params = KernelParams::new()
        .u(n)
        .u(k)
        .u(0)
        .u(layout)
        .u(samples)
        .u(first)
        .u(last)
        .u(flags)
        .r(lambda);
    let [mean, cov, eps] = inputs;
    rec.launch(
        kernel,
        dtype,
        params,
        &[mean, cov, eps, Some(out), scratch],
        Grid::Threads(n),
    )
}

/// A link from logit mean and covariance to probabilities, on a new n × K matrix. Monte Carlo
/// samples are split into launches of about the policy's loop iterations per row.
fn link<D: Gpu, T: Scalar>(
    dev: &D,
    kernel: Kernel,
    mean: &Matrix<D, T>,
    cov: &Matrix<D, T>,
    eps: Option<&Matrix<D, T>>,
    lambda: f64,
) -> Result<Matrix<D, T>> {
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
            [Some(D::raw(mean)), Some(D::raw(cov)), eps.map(D::raw)],
            D::raw(&out),
            Some(D::raw_buffer(&scratch)),
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
pub(crate) fn probit_softmax<D: Gpu, T: Scalar>(
    dev: &D,
    mean: &Matrix<D, T>,
    cov: &Matrix<D, T>,
    lambda: T,
) -> Result<Matrix<D, T>> {
    link(dev, Kernel::Probit, mean, cov, None, lambda.as_f64())
}

/// [`Device::monte_carlo_softmax`].
pub(crate) fn monte_carlo_softmax<D: Gpu, T: Scalar>(
    dev: &D,
    mean: &Matrix<D, T>,
    cov: &Matrix<D, T>,
    eps: &Matrix<D, T>,
) -> Result<Matrix<D, T>> {
    let samples = eps.rows();
    eps.expect_shape("eps", samples, mean.cols())?;
    if samples == 0 {
        return Err(Error::invalid("samples", "at least one Monte Carlo sample is required"));
    }
    link(dev, Kernel::MonteCarlo, mean, cov, Some(eps), 0.0)
}

/// [`Device::bridge_dirichlet`].
pub(crate) fn bridge_dirichlet<D: Gpu, T: Scalar>(
    dev: &D,
    mean: &Matrix<D, T>,
    cov: &Matrix<D, T>,
) -> Result<Matrix<D, T>> {
    link(dev, Kernel::Bridge, mean, cov, None, 0.0)
}

/// [`Device::softmax_rows`].
pub(crate) fn softmax_rows<D: Gpu, T: Scalar>(dev: &D, logits: &mut Matrix<D, T>) -> Result<()> {
    let (n, k) = logits.shape();
    if k == 0 {
        return Ok(());
    }
    let mut rec = dev.recorder();
    record_link(
        &mut rec,
        T::DTYPE,
        Kernel::SoftmaxRows,
        [None, None, None],
        D::raw(logits),
        None,
        (n, k, CovLayout::Full),
        (0, 0, 0),
        0.0,
    )?;
    rec.submit()
}

/// [`Device::categorical_weights`].
pub(crate) fn categorical_weights<D: Gpu, T: Scalar>(dev: &D, probs: &Matrix<D, T>) -> Result<Matrix<D, T>> {
    let (n, k) = probs.shape();
    let out = dev.zeros::<T>(n, 1)?;
    let mut rec = dev.recorder();
    record_link(
        &mut rec,
        T::DTYPE,
        Kernel::CategoricalWeights,
        [Some(D::raw(probs)), None, None],
        D::raw(&out),
        None,
        (n, k, CovLayout::Full),
        (0, 0, 0),
        0.0,
    )?;
    rec.submit()?;
    Ok(out)
}

/// `y ← op(y, x)` elementwise for two equal shapes ([`Device::axpy`], [`Device::hadamard`]).
pub(crate) fn binary<D: Gpu, T: Scalar>(
    dev: &D,
    kernel: Kernel,
    y: &mut Matrix<D, T>,
    x: &Matrix<D, T>,
    alpha: T,
) -> Result<()> {
    x.expect_shape("x", y.rows(), y.cols())?;
    let mut rec = dev.recorder();
    let (rows, cols) = y.shape();
    elementwise(
        &mut rec,
        T::DTYPE,
        kernel,
        Some(D::raw(x)),
        D::raw(y),
        (y.len(), rows, cols),
        0,
        alpha.as_f64(),
    )?;
    rec.submit()
}

/// [`Device::add_row`].
pub(crate) fn add_row<D: Gpu, T: Scalar>(dev: &D, a: &mut Matrix<D, T>, row: &Matrix<D, T>) -> Result<()> {
    row.expect_shape("row", 1, a.cols())?;
    let mut rec = dev.recorder();
    let (rows, cols) = a.shape();
    elementwise(
        &mut rec,
        T::DTYPE,
        Kernel::AddRow,
        Some(D::raw(row)),
        D::raw(a),
        (a.len(), rows, cols),
        0,
        0.0,
    )?;
    rec.submit()
}

/// [`Device::add_diagonal`].
pub(crate) fn add_diagonal<D: Gpu, T: Scalar>(dev: &D, a: &mut Matrix<D, T>, value: T) -> Result<()> {
    let n = a.expect_square("a")?;
    let mut rec = dev.recorder();
    elementwise(
        &mut rec,
        T::DTYPE,
        Kernel::AddDiagonal,
        None,
        D::raw(a),
        (n, n, n),
        0,
        value.as_f64(),
    )?;
    rec.submit()
}
