//! The [`Device`] implementation of the wgpu backend: shape checks, buffers and the recording of
//! the WGSL kernels of `shaders/`. Each method records its dispatches into one command buffer
//! and submits it once.

use super::{Context, Kernel, Params, Recorder, WgpuBuffer, WgpuDevice, backend_error, f32_only, kernels};
use crate::device::{CovLayout, Device, LowRankFactor, Matrix, Op, OutputWeighting, Sign, cov_layout};
use crate::error::{Error, Result};
use crate::scalar::Scalar;

type W<T> = Matrix<WgpuDevice, T>;

/// Side of the blocks of the Cholesky factorisation and the triangular solve (`NB` in
/// `cholesky.wgsl`).
const BLOCK: usize = 32;
/// Elements of scratch the chunked kernels (GGN weights, predictive covariance) keep at once.
const SCRATCH_ELEMENTS: usize = 1 << 22;
/// "No failure" in a status word.
const NONE: u32 = u32::MAX;

fn raw<T>(m: &W<T>) -> &wgpu::Buffer
where
    T: Scalar,
{
    &m.buffer().buffer
}

/// A strided operand of the gemm kernel: element (i, j) of batch entry (o, n) is at
/// `off + i·rs + j·cs + o·bo + n·bi`.
#[derive(Clone, Copy, Default)]
struct Strided {
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

/// Contraction steps per gemm dispatch. Longer contractions are split into accumulating
/// dispatches: the cost is one extra pass over C per chunk (under 1% of the multiply-adds), and
/// it keeps every invocation under the 65,535 loop iterations that llvmpipe/lavapipe allows
/// one shader invocation before it cuts loops short.
const CONTRACTION_CHUNK: usize = 1024;

/// One launch of the gemm kernel: `C ← β C + α op(A) diag(w) op(B)` over a batch of
/// `outer × inner` entries.
#[derive(Clone, Copy)]
struct Gemm<'a> {
    m: usize,
    n: usize,
    k: usize,
    a: (&'a wgpu::Buffer, Strided),
    b: (&'a wgpu::Buffer, Strided),
    /// Weights along the contraction: offset and stride in `Strided::{off, rs}`, batch strides.
    w: Option<(&'a wgpu::Buffer, Strided)>,
    c: (&'a wgpu::Buffer, Strided),
    alpha: f32,
    beta: f32,
    /// Skip tiles strictly above the diagonal (the caller mirrors).
    lower: bool,
    /// Skip batch entries whose inner index exceeds the outer one.
    lower_blocks: bool,
    outer: usize,
    inner: usize,
}

impl<'a> Gemm<'a> {
    fn new(
        (m, n, k): (usize, usize, usize),
        a: (&'a wgpu::Buffer, Strided),
        b: (&'a wgpu::Buffer, Strided),
        c: (&'a wgpu::Buffer, Strided),
        alpha: f32,
        beta: f32,
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
            outer: 1,
            inner: 1,
        }
    }

    /// Records the product as dispatches of at most [`CONTRACTION_CHUNK`] contraction steps,
    /// the first with β, the rest accumulating.
    fn record(&self, dev: &WgpuDevice, rec: &mut Recorder<'_>) -> Result<()> {
        if self.m == 0 || self.n == 0 || self.outer * self.inner == 0 {
            return Ok(());
        }
        let mut start = 0;
        loop {
            let len = CONTRACTION_CHUNK.min(self.k - start);
            let part = Gemm {
                k: len,
                a: (self.a.0, self.a.1.advance(start, false)),
                b: (self.b.0, self.b.1.advance(start, true)),
                w: self.w.map(|(buf, w)| {
                    (
                        buf,
                        Strided {
                            off: w.off + start * w.rs,
                            ..w
                        },
                    )
                }),
                beta: if start == 0 { self.beta } else { 1.0 },
                ..*self
            };
            part.record_chunk(dev, rec)?;
            start += len;
            if start >= self.k {
                return Ok(());
            }
        }
    }

    fn record_chunk(&self, dev: &WgpuDevice, rec: &mut Recorder<'_>) -> Result<()> {
        let flags = u32::from(self.lower)
            | (u32::from(self.w.is_some()) << 1)
            | (u32::from(self.beta == 0.0) << 2)
            | (u32::from(self.lower_blocks) << 3);
        let (a, b, c) = (self.a.1, self.b.1, self.c.1);
        let w = self.w.map_or(Strided::default(), |w| w.1);
        let params = Params::new()
            .u(self.m)
            .u(self.n)
            .u(self.k)
            .u(flags as usize)
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
            .f(self.alpha)
            .f(self.beta)
            .u(self.inner)
            .u(a.bo)
            .u(a.bi)
            .u(b.bo)
            .u(b.bi)
            .u(c.bo)
            .u(c.bi)
            .u(w.bo)
            .u(w.bi);
        let groups = kernels::groups_3d(
            &dev.ctx,
            self.n.div_ceil(64),
            self.m.div_ceil(64),
            self.outer * self.inner,
        )?;
        rec.dispatch(
            Kernel::Gemm,
            params,
            &[Some(self.a.0), Some(self.b.0), self.w.map(|w| w.0), Some(self.c.0)],
            groups,
        )
    }
}

impl WgpuDevice {
    fn ctx(&self) -> &Context {
        &self.ctx
    }

    /// Records a 1-D elementwise kernel over `len` invocations.
    #[allow(clippy::too_many_arguments)]
    fn record_elementwise(
        &self,
        rec: &mut Recorder<'_>,
        kernel: Kernel,
        x: Option<&wgpu::Buffer>,
        y: &wgpu::Buffer,
        len: usize,
        (rows, cols): (usize, usize),
        flags: u32,
        alpha: f32,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let params = Params::new().u(len).u(rows).u(cols).u(flags as usize).f(alpha);
        let groups = kernels::groups_1d(self.ctx(), len, 256)?;
        rec.dispatch(kernel, params, &[x, Some(y)], groups)
    }

    /// Mirrors the lower triangle of the n × n `y` onto the upper one.
    fn record_mirror(&self, rec: &mut Recorder<'_>, y: &wgpu::Buffer, n: usize) -> Result<()> {
        self.record_elementwise(rec, Kernel::MirrorLower, None, y, n * n, (n, n), 0, 0.0)
    }

    /// A status word pair `[NONE, 0]`: first failing index, and a step counter.
    fn status(&self) -> Result<WgpuBuffer<f32>> {
        let status = self.buffer::<f32>(2, "status")?;
        let init = [f32::from_bits(NONE), 0.0];
        self.ctx()
            .queue
            .write_buffer(&status.buffer, 0, bytemuck::cast_slice(&init));
        Ok(status)
    }

    /// The first failing index recorded in `status`, if any.
    fn failed_at(&self, status: &WgpuBuffer<f32>) -> Result<Option<usize>> {
        let words: Vec<u32> = self.read_back(&status.buffer, 1)?;
        Ok((words[0] != NONE).then_some(words[0] as usize))
    }

    /// Records the blocked Cholesky factorisation of the n × n `a` in place (lower factor, upper
    /// triangle zeroed); failing pivots go to `status`.
    fn record_cholesky(&self, rec: &mut Recorder<'_>, a: &wgpu::Buffer, n: usize, status: &wgpu::Buffer) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let diagonal = self.buffer::<f32>(BLOCK * BLOCK, "cholesky diagonal block")?;
        let panel = self.buffer::<f32>(n.saturating_sub(BLOCK).max(1) * BLOCK, "cholesky panel")?;
        for j0 in (0..n).step_by(BLOCK) {
            let nb = BLOCK.min(n - j0);
            let rows = n - j0 - nb;
            let params = Params::new().u(n).u(j0).u(nb).u(rows).u(0).u(0);
            rec.dispatch(
                Kernel::PotrfDiagonal,
                params.clone(),
                &[None, Some(a), Some(&diagonal.buffer), Some(status)],
                [1, 1, 1],
            )?;
            if rows == 0 {
                continue;
            }
            rec.dispatch(
                Kernel::TrsmPanel,
                params,
                &[Some(&diagonal.buffer), Some(a), Some(&panel.buffer)],
                kernels::groups_1d(self.ctx(), rows, 64)?,
            )?;
            // A₂₂ ← A₂₂ − L₂₁ L₂₁ᵀ on the lower tiles.
            let start = (j0 + nb) * n + j0 + nb;
            let mut g = Gemm::new(
                (rows, rows, nb),
                (&panel.buffer, Strided::rows(0, nb)),
                (&panel.buffer, Strided::rows(0, nb).t()),
                (a, Strided::rows(start, n)),
                -1.0,
                1.0,
            );
            g.lower = true;
            g.record(self, rec)?;
        }
        self.record_elementwise(rec, Kernel::ZeroUpper, None, a, n * n, (n, n), 0, 0.0)
    }

    /// Records `B ← L⁻¹ B` (`Op::N`) or `B ← L⁻ᵀ B` (`Op::T`) for the n × n lower-triangular
    /// `l` and the n × cols `b`, blocked: a diagonal-block solve, then a gemm update of the rest.
    fn record_trsm(
        &self,
        rec: &mut Recorder<'_>,
        l: &wgpu::Buffer,
        n: usize,
        b: &wgpu::Buffer,
        cols: usize,
        op: Op,
    ) -> Result<()> {
        if n == 0 || cols == 0 {
            return Ok(());
        }
        let solved = self.buffer::<f32>(BLOCK * cols, "solved rows")?;
        let starts: Vec<usize> = (0..n).step_by(BLOCK).collect();
        let ordered: Box<dyn Iterator<Item = &usize>> = match op {
            Op::N => Box::new(starts.iter()),
            Op::T => Box::new(starts.iter().rev()),
        };
        for &j0 in ordered {
            let nb = BLOCK.min(n - j0);
            let params = Params::new().u(n).u(j0).u(nb).u(0).u(cols).u(usize::from(op == Op::T));
            rec.dispatch(
                Kernel::TrsmBlock,
                params,
                &[Some(l), Some(b), Some(&solved.buffer)],
                kernels::groups_1d(self.ctx(), cols, 64)?,
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
                    (l, l_view),
                    (&solved.buffer, Strided::rows(0, cols)),
                    (b, b_view),
                    -1.0,
                    1.0,
                )
                .record(self, rec)?;
            }
        }
        Ok(())
    }

    /// Records one of the row-wise link kernels of `predictive.wgsl`.
    #[allow(clippy::too_many_arguments)]
    fn record_link(
        &self,
        rec: &mut Recorder<'_>,
        kernel: Kernel,
        inputs: [Option<&wgpu::Buffer>; 3],
        out: &wgpu::Buffer,
        scratch: Option<&wgpu::Buffer>,
        (n, k, layout): (usize, usize, CovLayout),
        (first, last, samples): (usize, usize, usize),
        lambda: f32,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let layout = match layout {
            CovLayout::Full => 0,
            CovLayout::Isotropic => 1,
            CovLayout::Diagonal => 2,
        };
        let params = Params::new()
            .u(n)
            .u(k)
            .u(0)
            .u(layout)
            .u(samples)
            .u(first)
            .u(last)
            .u(usize::from(first == 0) | (usize::from(last == samples) << 1))
            .f(lambda);
        let [mean, cov, eps] = inputs;
        rec.dispatch(
            kernel,
            params,
            &[mean, cov, eps, Some(out), scratch],
            kernels::groups_1d(self.ctx(), n, 256)?,
        )
    }

    /// A link from logit mean and covariance to probabilities, on a new n × K matrix.
    fn link<T: Scalar>(
        &self,
        kernel: Kernel,
        mean: &W<T>,
        cov: &W<T>,
        eps: Option<&W<T>>,
        lambda: f32,
    ) -> Result<W<T>> {
        f32_only::<T>()?;
        let layout = cov_layout(mean, cov)?;
        let (n, k) = mean.shape();
        let out = self.zeros::<T>(n, k)?;
        let scratch_len = match kernel {
            Kernel::MonteCarlo => n * (k * k + 2 * k),
            Kernel::Bridge => n * 2 * k,
            _ => 0,
        };
        let scratch = self.buffer::<f32>(scratch_len, "link scratch")?;
        let mut rec = Recorder::new(self.ctx());
        let samples = eps.map_or(0, |e| e.rows());
        // Monte Carlo: samples in chunks of about 16,000 loop iterations per invocation.
        let per_sample = k * (k + 1) / 2 + 3 * k + 1;
        let chunk = (16_384 / per_sample).max(1);
        let mut first = 0;
        loop {
            let last = (first + chunk).min(samples);
            self.record_link(
                &mut rec,
                kernel,
                [Some(raw(mean)), Some(raw(cov)), eps.map(raw)],
                raw(&out),
                Some(&scratch.buffer),
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

    /// `y ← op(y, x)` elementwise for two equal shapes.
    fn binary<T: Scalar>(&self, kernel: Kernel, y: &mut W<T>, x: &W<T>, alpha: f32) -> Result<()> {
        f32_only::<T>()?;
        x.expect_shape("x", y.rows(), y.cols())?;
        let mut rec = Recorder::new(self.ctx());
        self.record_elementwise(&mut rec, kernel, Some(raw(x)), raw(y), y.len(), y.shape(), 0, alpha)?;
        rec.submit()
    }
}

impl Device for WgpuDevice {
    type Buffer<T: Scalar> = WgpuBuffer<T>;

    fn name(&self) -> String {
        format!("wgpu: {} ({:?})", self.ctx.info.name, self.ctx.info.backend)
    }

    fn upload<T: Scalar>(&self, data: &[T], rows: usize, cols: usize) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::ShapeMismatch {
                argument: "data",
                expected: format!("{rows} x {cols} elements"),
                got: format!("{} elements", data.len()),
            });
        }
        let buf = self.buffer::<T>(data.len(), "matrix")?;
        if !data.is_empty() {
            self.ctx.queue.write_buffer(&buf.buffer, 0, bytemuck::cast_slice(data));
        }
        Ok(Matrix::from_parts(buf, rows, cols))
    }

    fn download<T: Scalar>(&self, m: &Matrix<Self, T>) -> Result<Vec<T>> {
        f32_only::<T>()?;
        self.read_back(raw(m), m.len())
    }

    fn zeros<T: Scalar>(&self, rows: usize, cols: usize) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        let len = rows
            .checked_mul(cols)
            .ok_or_else(|| backend_error(format!("a {rows} x {cols} matrix overflows")))?;
        // wgpu zero-initialises every new buffer.
        Ok(Matrix::from_parts(self.buffer::<T>(len, "matrix")?, rows, cols))
    }

    fn copy<T: Scalar>(&self, m: &Matrix<Self, T>) -> Result<Matrix<Self, T>> {
        let out = self.zeros::<T>(m.rows(), m.cols())?;
        let mut rec = Recorder::new(self.ctx());
        rec.copy(raw(m), 0, raw(&out), 0, (m.len() * 4) as u64);
        rec.submit()?;
        Ok(out)
    }

    fn synchronize(&self) -> Result<()> {
        self.ctx.wait()
    }

    fn gemm<T: Scalar>(
        &self,
        c: &mut Matrix<Self, T>,
        beta: T,
        a: &Matrix<Self, T>,
        ta: Op,
        b: &Matrix<Self, T>,
        tb: Op,
        alpha: T,
    ) -> Result<()> {
        f32_only::<T>()?;
        let (m, k) = if ta == Op::N { a.shape() } else { (a.cols(), a.rows()) };
        let (kb, n) = if tb == Op::N { b.shape() } else { (b.cols(), b.rows()) };
        if k != kb {
            return Err(Error::shape("b", (k, n), (kb, n)));
        }
        c.expect_shape("c", m, n)?;
        let mut rec = Recorder::new(self.ctx());
        Gemm::new(
            (m, n, k),
            (raw(a), Strided::op(0, a.cols(), ta)),
            (raw(b), Strided::op(0, b.cols(), tb)),
            (raw(c), Strided::rows(0, n)),
            alpha.as_f64() as f32,
            beta.as_f64() as f32,
        )
        .record(self, &mut rec)?;
        rec.submit()
    }

    fn weighted_syrk<T: Scalar>(
        &self,
        c: &mut Matrix<Self, T>,
        beta: T,
        a: &Matrix<Self, T>,
        weights: Option<&Matrix<Self, T>>,
        alpha: T,
    ) -> Result<()> {
        f32_only::<T>()?;
        let (n, d) = a.shape();
        c.expect_shape("c", d, d)?;
        if let Some(w) = weights {
            w.expect_shape("weights", n, 1)?;
        }
        let mut rec = Recorder::new(self.ctx());
        let mut g = Gemm::new(
            (d, d, n),
            (raw(a), Strided::rows(0, d).t()),
            (raw(a), Strided::rows(0, d)),
            (raw(c), Strided::rows(0, d)),
            alpha.as_f64() as f32,
            beta.as_f64() as f32,
        );
        g.w = weights.map(|w| (raw(w), Strided::rows(0, 1)));
        g.lower = true;
        g.record(self, &mut rec)?;
        self.record_mirror(&mut rec, raw(c), d)?;
        rec.submit()
    }

    fn ggn_accumulate<T: Scalar>(
        &self,
        precision: &mut Matrix<Self, T>,
        phi: &Matrix<Self, T>,
        probs: &Matrix<Self, T>,
        basis: Option<&Matrix<Self, T>>,
        alpha: T,
    ) -> Result<()> {
        f32_only::<T>()?;
        let (n, d) = phi.shape();
        let k = probs.cols();
        probs.expect_shape("probs", n, k)?;
        let kr = basis.map_or(k, |r| r.cols());
        if let Some(r) = basis {
            r.expect_shape("basis", k, kr)?;
        }
        let p = kr * d;
        precision.expect_shape("precision", p, p)?;
        if n == 0 || p == 0 {
            return Ok(());
        }
        let blocks = kr * kr;
        let chunk = (SCRATCH_ELEMENTS / blocks).clamp(1, n);
        let weights = self.buffer::<f32>(chunk * blocks, "GGN block weights")?;
        let mut rec = Recorder::new(self.ctx());
        for start in (0..n).step_by(chunk) {
            let c = chunk.min(n - start);
            // M_n = Rᵀ Λ_n R for the chunk's samples, c × K'².
            let params = Params::new()
                .u(c)
                .u(k)
                .u(kr)
                .u(d)
                .u(0)
                .u(usize::from(basis.is_none()))
                .f(0.0)
                .u(start);
            rec.dispatch(
                Kernel::GgnWeights,
                params,
                &[Some(raw(probs)), basis.map(raw), Some(&weights.buffer)],
                kernels::groups_1d(self.ctx(), c * blocks, 256)?,
            )?;
            // Block (a, b ≤ a) += α Σ_n M_n[a, b] φ_n φ_nᵀ.
            let mut g = Gemm::new(
                (d, d, c),
                (raw(phi), Strided::rows(start * d, d).t()),
                (raw(phi), Strided::rows(start * d, d)),
                (raw(precision), Strided::rows(0, p).batch(d * p, d)),
                alpha.as_f64() as f32,
                1.0,
            );
            g.w = Some((
                &weights.buffer,
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
            g.record(self, &mut rec)?;
        }
        self.record_mirror(&mut rec, raw(precision), p)?;
        rec.submit()
    }

    fn kron_congruence<T: Scalar>(
        &self,
        x: &Matrix<Self, T>,
        basis: &Matrix<Self, T>,
        complement: T,
    ) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        let (k, kr) = basis.shape();
        let n_red = x.expect_square("x")?;
        if kr == 0 || n_red % kr != 0 {
            return Err(Error::shape("x", (kr, kr), x.shape()));
        }
        let d = n_red / kr;
        let p = k * d;
        let z = self.zeros::<T>(p, n_red)?;
        let y = self.zeros::<T>(p, p)?;
        let mut rec = Recorder::new(self.ctx());
        // Z = (R ⊗ I) X: X seen as K' × (D·K'D).
        Gemm::new(
            (k, d * n_red, kr),
            (raw(basis), Strided::rows(0, kr)),
            (raw(x), Strided::rows(0, d * n_red)),
            (raw(&z), Strided::rows(0, d * n_red)),
            1.0,
            0.0,
        )
        .record(self, &mut rec)?;
        let params = Params::new()
            .u(0)
            .u(k)
            .u(kr)
            .u(d)
            .u(0)
            .u(0)
            .f(complement.as_f64() as f32);
        rec.dispatch(
            Kernel::KronMixColumns,
            params,
            &[Some(raw(&z)), Some(raw(basis)), Some(raw(&y))],
            kernels::groups_1d(self.ctx(), p * p, 256)?,
        )?;
        self.record_mirror(&mut rec, raw(&y), p)?;
        rec.submit()?;
        Ok(y)
    }

    fn kron_rows<T: Scalar>(
        &self,
        factors: &Matrix<Self, T>,
        phi: &Matrix<Self, T>,
        rank: usize,
    ) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        let (n, d) = phi.shape();
        let k = factors.cols();
        factors.expect_shape("factors", n * rank, k)?;
        let out = self.zeros::<T>(n * rank, k * d)?;
        let mut rec = Recorder::new(self.ctx());
        if !out.is_empty() {
            let params = Params::new().u(n).u(k).u(0).u(d).u(rank).u(0);
            rec.dispatch(
                Kernel::KronRows,
                params,
                &[Some(raw(factors)), Some(raw(phi)), Some(raw(&out))],
                kernels::groups_1d(self.ctx(), out.len(), 256)?,
            )?;
        }
        rec.submit()?;
        Ok(out)
    }

    fn kron_products<T: Scalar>(
        &self,
        sigma: &Matrix<Self, T>,
        phi: &Matrix<Self, T>,
        factor: LowRankFactor<'_, Self, T>,
    ) -> Result<(Matrix<Self, T>, Matrix<Self, T>)> {
        f32_only::<T>()?;
        let (m, d) = phi.shape();
        let mut rec = Recorder::new(self.ctx());
        let (u, g) = match factor {
            LowRankFactor::Shared { weights } => {
                sigma.expect_shape("sigma", d, d)?;
                if let Some(w) = weights {
                    w.expect_shape("weights", m, 1)?;
                }
                let u = self.zeros::<T>(d, m)?;
                let g = self.zeros::<T>(m, m)?;
                // U = Σ Φᵀ diag(√w), G = diag(√w) Φ U.
                Gemm::new(
                    (d, m, d),
                    (raw(sigma), Strided::rows(0, d)),
                    (raw(phi), Strided::rows(0, d).t()),
                    (raw(&u), Strided::rows(0, m)),
                    1.0,
                    0.0,
                )
                .record(self, &mut rec)?;
                if let Some(w) = weights {
                    self.record_elementwise(
                        &mut rec,
                        Kernel::ScaleColumns,
                        Some(raw(w)),
                        raw(&u),
                        d * m,
                        (d, m),
                        1,
                        0.0,
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
                .record(self, &mut rec)?;
                if let Some(w) = weights {
                    self.record_elementwise(
                        &mut rec,
                        Kernel::ScaleRows,
                        Some(raw(w)),
                        raw(&g),
                        m * m,
                        (m, m),
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
                let s = self.buffer::<f32>(m * k * k, "Kronecker factors")?;
                let t = self.buffer::<f32>(p * k * m, "Σ (I ⊗ Φᵀ)")?;
                let y = self.buffer::<f32>(k * m * mk, "Φ U")?;
                let u = self.zeros::<T>(p, mk)?;
                let g = self.zeros::<T>(mk, mk)?;
                let params = Params::new().u(m).u(k).u(d).u(p);
                if m * k > 0 {
                    rec.dispatch(
                        Kernel::KronFactors,
                        params.clone(),
                        &[Some(raw(probs)), None, Some(&s.buffer)],
                        kernels::groups_1d(self.ctx(), m * k * k, 256)?,
                    )?;
                }
                // T[(r, a), j] = Σ_x Σ[r, aD + x] φ_j[x]: Σ seen as (P·K) × D.
                Gemm::new(
                    (p * k, m, d),
                    (raw(sigma), Strided::rows(0, d)),
                    (raw(phi), Strided::rows(0, d).t()),
                    (&t.buffer, Strided::rows(0, m)),
                    1.0,
                    0.0,
                )
                .record(self, &mut rec)?;
                if p * mk > 0 {
                    rec.dispatch(
                        Kernel::KronMixU,
                        params.clone(),
                        &[Some(&t.buffer), Some(&s.buffer), Some(raw(&u))],
                        kernels::groups_1d(self.ctx(), p * mk, 256)?,
                    )?;
                }
                // Y_a = Φ U[aD..(a+1)D, :], batched over a.
                let mut ya = Gemm::new(
                    (m, mk, d),
                    (raw(phi), Strided::rows(0, d)),
                    (raw(&u), Strided::rows(0, mk).batch(d * mk, 0)),
                    (&y.buffer, Strided::rows(0, mk).batch(m * mk, 0)),
                    1.0,
                    0.0,
                );
                ya.outer = k;
                ya.record(self, &mut rec)?;
                if mk > 0 {
                    rec.dispatch(
                        Kernel::KronMixG,
                        params,
                        &[Some(&y.buffer), Some(&s.buffer), Some(raw(&g))],
                        kernels::groups_1d(self.ctx(), mk * mk, 256)?,
                    )?;
                }
                (u, g)
            }
        };
        let side = g.rows();
        self.record_elementwise(
            &mut rec,
            Kernel::Symmetrize,
            None,
            raw(&g),
            side * side,
            (side, side),
            0,
            0.0,
        )?;
        rec.submit()?;
        Ok((u, g))
    }

    fn low_rank_update<T: Scalar>(
        &self,
        sigma: &mut Matrix<Self, T>,
        u: &Matrix<Self, T>,
        c_chol: &Matrix<Self, T>,
        sign: Sign,
    ) -> Result<()> {
        f32_only::<T>()?;
        let n = sigma.expect_square("sigma")?;
        let r = u.cols();
        u.expect_shape("u", n, r)?;
        c_chol.expect_shape("c_chol", r, r)?;
        if r == 0 || n == 0 {
            return Ok(());
        }
        // Vᵀ = L⁻¹ Uᵀ (r × n), then Σ ± V Vᵀ on the lower tiles, mirrored.
        let vt = self.buffer::<f32>(r * n, "L⁻¹ Uᵀ")?;
        let mut rec = Recorder::new(self.ctx());
        self.record_elementwise(
            &mut rec,
            Kernel::Transpose,
            Some(raw(u)),
            &vt.buffer,
            n * r,
            (n, r),
            0,
            0.0,
        )?;
        self.record_trsm(&mut rec, raw(c_chol), r, &vt.buffer, n, Op::N)?;
        let mut g = Gemm::new(
            (n, n, r),
            (&vt.buffer, Strided::rows(0, n).t()),
            (&vt.buffer, Strided::rows(0, n)),
            (raw(sigma), Strided::rows(0, n)),
            if sign == Sign::Plus { 1.0 } else { -1.0 },
            1.0,
        );
        g.lower = true;
        g.record(self, &mut rec)?;
        self.record_mirror(&mut rec, raw(sigma), n)?;
        rec.submit()
    }

    fn sherman_morrison_sequence<T: Scalar>(
        &self,
        sigma: &mut Matrix<Self, T>,
        head: &mut Matrix<Self, T>,
        bias: Option<&Matrix<Self, T>>,
        phi: &Matrix<Self, T>,
        targets: &Matrix<Self, T>,
        gamma: T,
        weighting: OutputWeighting,
    ) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        let (m, d) = phi.shape();
        let k = head.rows();
        sigma.expect_shape("sigma", d, d)?;
        head.expect_shape("head", k, d)?;
        targets.expect_shape("targets", m, k)?;
        if let Some(b) = bias {
            b.expect_shape("bias", 1, k)?;
        }
        let used = self.zeros::<T>(m, 1)?;
        if m == 0 || d == 0 {
            return Ok(used);
        }
        let state = self.buffer::<f32>(d + 2 * k + 3, "Sherman–Morrison state")?;
        let status = self.status()?;
        let flags = usize::from(bias.is_some()) | (usize::from(weighting == OutputWeighting::Categorical) << 1);
        let params = Params::new().u(d).u(k).u(flags).u(0).f(gamma.as_f64() as f32);
        let buffers = [
            Some(raw(sigma)),
            Some(raw(head)),
            bias.map(raw),
            Some(raw(phi)),
            Some(raw(targets)),
            Some(&state.buffer),
            Some(raw(&used)),
            Some(&status.buffer),
        ];
        let mut rec = Recorder::new(self.ctx());
        let project = rec.bind(Kernel::SmProject, params.clone(), &buffers)?;
        let scalars = rec.bind(Kernel::SmScalars, params.clone(), &buffers)?;
        let apply = rec.bind(Kernel::SmApply, params, &buffers)?;
        rec.dispatch_bound(
            &[
                (Kernel::SmProject, &project, kernels::groups_1d(self.ctx(), d + k, 1)?),
                (Kernel::SmScalars, &scalars, [1, 1, 1]),
                (
                    Kernel::SmApply,
                    &apply,
                    kernels::groups_1d(self.ctx(), (d + k) * d, 256)?,
                ),
            ],
            m,
        )?;
        rec.submit()?;
        match self.failed_at(&status)? {
            Some(index) => Err(Error::NotPositiveDefinite { index }),
            None => Ok(used),
        }
    }

    fn cholesky<T: Scalar>(&self, a: &mut Matrix<Self, T>) -> Result<()> {
        f32_only::<T>()?;
        let n = a.expect_square("a")?;
        let status = self.status()?;
        let mut rec = Recorder::new(self.ctx());
        self.record_cholesky(&mut rec, raw(a), n, &status.buffer)?;
        rec.submit()?;
        match self.failed_at(&status)? {
            Some(index) => Err(Error::NotPositiveDefinite { index }),
            None => Ok(()),
        }
    }

    fn triangular_solve<T: Scalar>(&self, l: &Matrix<Self, T>, b: &mut Matrix<Self, T>, op: Op) -> Result<()> {
        f32_only::<T>()?;
        let n = l.expect_square("l")?;
        if b.rows() != n {
            return Err(Error::shape("b", (n, b.cols()), b.shape()));
        }
        let mut rec = Recorder::new(self.ctx());
        self.record_trsm(&mut rec, raw(l), n, raw(b), b.cols(), op)?;
        rec.submit()
    }

    fn spd_inverse<T: Scalar>(&self, a: &Matrix<Self, T>) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        let n = a.expect_square("a")?;
        let l = self.copy(a)?;
        let x = self.zeros::<T>(n, n)?;
        let out = self.zeros::<T>(n, n)?;
        let status = self.status()?;
        let mut rec = Recorder::new(self.ctx());
        // L = chol(A), X = L⁻¹, A⁻¹ = Xᵀ X (lower tiles, mirrored).
        self.record_cholesky(&mut rec, raw(&l), n, &status.buffer)?;
        self.record_elementwise(&mut rec, Kernel::SetIdentity, None, raw(&x), n * n, (n, n), 0, 0.0)?;
        self.record_trsm(&mut rec, raw(&l), n, raw(&x), n, Op::N)?;
        let mut g = Gemm::new(
            (n, n, n),
            (raw(&x), Strided::rows(0, n).t()),
            (raw(&x), Strided::rows(0, n)),
            (raw(&out), Strided::rows(0, n)),
            1.0,
            0.0,
        );
        g.lower = true;
        g.record(self, &mut rec)?;
        self.record_mirror(&mut rec, raw(&out), n)?;
        rec.submit()?;
        match self.failed_at(&status)? {
            Some(index) => Err(Error::NotPositiveDefinite { index }),
            None => Ok(out),
        }
    }

    fn predictive_covariance<T: Scalar>(
        &self,
        sigma: &Matrix<Self, T>,
        phi: &Matrix<Self, T>,
    ) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        let (n, d) = phi.shape();
        let p = sigma.expect_square("sigma")?;
        if d == 0 || p % d != 0 {
            return Err(Error::shape("sigma", (d, d), sigma.shape()));
        }
        let k = p / d;
        let out = self.zeros::<T>(n, k * k)?;
        if n == 0 {
            return Ok(out);
        }
        let chunk = (SCRATCH_ELEMENTS / (k * p)).clamp(1, n);
        let t = self.buffer::<f32>(k * chunk * p, "Φ Σ")?;
        let mut rec = Recorder::new(self.ctx());
        for start in (0..n).step_by(chunk) {
            let c = chunk.min(n - start);
            // T_a = Φ_c Σ[aD..(a+1)D, :], batched over a.
            let mut g = Gemm::new(
                (c, p, d),
                (raw(phi), Strided::rows(start * d, d)),
                (raw(sigma), Strided::rows(0, p).batch(d * p, 0)),
                (&t.buffer, Strided::rows(0, p).batch(c * p, 0)),
                1.0,
                0.0,
            );
            g.outer = k;
            g.record(self, &mut rec)?;
            let params = Params::new().u(c).u(k).u(d).u(0).u(0).u(start * d).u(start * k * k);
            rec.dispatch(
                Kernel::RowDot,
                params,
                &[Some(&t.buffer), Some(raw(phi)), None, Some(raw(&out))],
                kernels::groups_1d(self.ctx(), c * k * k, 256)?,
            )?;
        }
        rec.submit()?;
        Ok(out)
    }

    fn softmax_rows<T: Scalar>(&self, logits: &mut Matrix<Self, T>) -> Result<()> {
        f32_only::<T>()?;
        let (n, k) = logits.shape();
        if k == 0 {
            return Ok(());
        }
        let mut rec = Recorder::new(self.ctx());
        self.record_link(
            &mut rec,
            Kernel::SoftmaxRows,
            [None, None, None],
            raw(logits),
            None,
            (n, k, CovLayout::Full),
            (0, 0, 0),
            0.0,
        )?;
        rec.submit()
    }

    fn probit_softmax<T: Scalar>(
        &self,
        mean: &Matrix<Self, T>,
        cov: &Matrix<Self, T>,
        lambda: T,
    ) -> Result<Matrix<Self, T>> {
        self.link(Kernel::Probit, mean, cov, None, lambda.as_f64() as f32)
    }

    fn monte_carlo_softmax<T: Scalar>(
        &self,
        mean: &Matrix<Self, T>,
        cov: &Matrix<Self, T>,
        eps: &Matrix<Self, T>,
    ) -> Result<Matrix<Self, T>> {
        let samples = eps.rows();
        eps.expect_shape("eps", samples, mean.cols())?;
        if samples == 0 {
            return Err(Error::invalid("samples", "at least one Monte Carlo sample is required"));
        }
        self.link(Kernel::MonteCarlo, mean, cov, Some(eps), 0.0)
    }

    fn bridge_dirichlet<T: Scalar>(&self, mean: &Matrix<Self, T>, cov: &Matrix<Self, T>) -> Result<Matrix<Self, T>> {
        self.link(Kernel::Bridge, mean, cov, None, 0.0)
    }

    fn categorical_weights<T: Scalar>(&self, probs: &Matrix<Self, T>) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        let (n, k) = probs.shape();
        let out = self.zeros::<T>(n, 1)?;
        let mut rec = Recorder::new(self.ctx());
        self.record_link(
            &mut rec,
            Kernel::CategoricalWeights,
            [Some(raw(probs)), None, None],
            raw(&out),
            None,
            (n, k, CovLayout::Full),
            (0, 0, 0),
            0.0,
        )?;
        rec.submit()?;
        Ok(out)
    }

    fn axpy<T: Scalar>(&self, y: &mut Matrix<Self, T>, alpha: T, x: &Matrix<Self, T>) -> Result<()> {
        self.binary(Kernel::Axpy, y, x, alpha.as_f64() as f32)
    }

    fn hadamard<T: Scalar>(&self, y: &mut Matrix<Self, T>, x: &Matrix<Self, T>) -> Result<()> {
        self.binary(Kernel::Hadamard, y, x, 0.0)
    }

    fn add_row<T: Scalar>(&self, a: &mut Matrix<Self, T>, row: &Matrix<Self, T>) -> Result<()> {
        f32_only::<T>()?;
        row.expect_shape("row", 1, a.cols())?;
        let mut rec = Recorder::new(self.ctx());
        self.record_elementwise(
            &mut rec,
            Kernel::AddRow,
            Some(raw(row)),
            raw(a),
            a.len(),
            a.shape(),
            0,
            0.0,
        )?;
        rec.submit()
    }

    fn add_diagonal<T: Scalar>(&self, a: &mut Matrix<Self, T>, value: T) -> Result<()> {
        f32_only::<T>()?;
        let n = a.expect_square("a")?;
        let mut rec = Recorder::new(self.ctx());
        let params = Params::new().u(n).u(n).u(n).u(0).f(value.as_f64() as f32);
        if n > 0 {
            rec.dispatch(
                Kernel::AddDiagonal,
                params,
                &[None, Some(raw(a))],
                kernels::groups_1d(self.ctx(), n, 256)?,
            )?;
        }
        rec.submit()
    }

    fn max_abs<T: Scalar>(&self, a: &Matrix<Self, T>) -> Result<T> {
        f32_only::<T>()?;
        let result = self.buffer::<f32>(1, "max |a|")?;
        let mut rec = Recorder::new(self.ctx());
        if !a.is_empty() {
            let params = Params::new().u(a.len()).u(a.rows()).u(a.cols());
            rec.dispatch(
                Kernel::MaxAbs,
                params,
                &[Some(raw(a)), None, Some(&result.buffer)],
                kernels::groups_1d(self.ctx(), a.len(), 256)?,
            )?;
        }
        rec.submit()?;
        let bits: Vec<u32> = self.read_back(&result.buffer, 1)?;
        Ok(T::from_f64(f32::from_bits(bits[0]) as f64))
    }
}
