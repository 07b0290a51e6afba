//! [`GpuDevice`]'s storage and primitives, shared by every GPU runtime, and the launch helpers
//! the fused operations of `src/device/ops/` record with.
//!
//! Every runtime ships the same kernel families (`shaders/<family>.wgsl`, `kernels/<family>.cu`)
//! with the same parameters, so every [`Device`](crate::Device) primitive is written here once, as
//! a sequence of launches: the Cholesky factorisation is diagonal block, panel solve and gemm
//! trailing update, and so on. A runtime supplies allocations, a [`Record`] that launches
//! kernels, and readback.

use crate::device::gpu::{Args, GpuBuffer, GpuDevice, GpuMatrix, Grid, Kernel, Kernels, Record, Runtime, raw};
use crate::device::launch::{GridPart, gemm_launches};
use crate::device::registry::{
    CholeskyFlag, CholeskyParams, ElementwiseFlag, ElementwiseParams, GemmFlag, GemmParams, PredictiveParams, field,
};
use crate::device::{Device, Matrix, Op, check_upload, predictive_shapes};
use crate::error::{Error, Result};
use crate::scalar::{DType, Scalar};

/// Side of the blocks of the Cholesky factorisation and the triangular solve (`NB`).
pub(crate) const BLOCK: usize = 32;

/// A strided operand of the gemm kernel: element (i, j) of batch entry (o, n) is at
/// `off + i·rs + j·cs + o·bo + n·bi`.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Strided {
    pub(crate) off: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
    pub(crate) bo: usize,
    pub(crate) bi: usize,
}

impl Strided {
    /// A row-major matrix of `cols` columns starting at `off`.
    pub(crate) fn rows(off: usize, cols: usize) -> Self {
        Strided {
            off,
            rs: cols,
            cs: 1,
            ..Default::default()
        }
    }
    /// The transpose of this view.
    pub(crate) fn t(self) -> Self {
        Strided {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
    /// `op(A)` of a stored row-major matrix with `cols` columns.
    pub(crate) fn op(off: usize, cols: usize, op: Op) -> Self {
        let s = Strided::rows(off, cols);
        if op == Op::T { s.t() } else { s }
    }
    pub(crate) fn batch(self, bo: usize, bi: usize) -> Self {
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
pub(crate) struct Gemm<R: Clone> {
    m: usize,
    n: usize,
    k: usize,
    a: (R, Strided),
    b: (R, Strided),
    /// Weights along the contraction: offset and stride in `Strided::{off, rs}`, batch strides.
    pub(crate) w: Option<(R, Strided)>,
    c: (R, Strided),
    alpha: f64,
    beta: f64,
    /// Skip tiles strictly above the diagonal (the caller mirrors).
    pub(crate) lower: bool,
    /// Skip batch entries whose inner index exceeds the outer one.
    pub(crate) lower_blocks: bool,
    /// Skip tiles above the diagonal in the diagonal batch entries only.
    pub(crate) lower_diagonal_blocks: bool,
    pub(crate) outer: usize,
    pub(crate) inner: usize,
}

impl<R: Clone> Gemm<R> {
    pub(crate) fn new(
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
    pub(crate) fn record<Rt: Runtime<Raw = R>>(
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
pub(crate) fn elementwise<R: Clone>(
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
pub(crate) fn mirror<R: Clone>(rec: &mut impl Record<Raw = R>, dtype: DType, y: R, n: usize) -> Result<()> {
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
pub(crate) fn record_trsm<Rt: Runtime, T: Scalar>(
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

impl<Rt: Runtime> Device for GpuDevice<Rt> {
    type Buffer<T: Scalar> = GpuBuffer<Rt, T>;
    type Ops = Kernels;

    fn name(&self) -> String {
        self.runtime.name()
    }

    fn free_memory(&self) -> Option<u64> {
        self.runtime.free_memory()
    }

    fn upload<T: Scalar>(&self, data: &[T], rows: usize, cols: usize) -> Result<Matrix<Self, T>> {
        check_upload(data.len(), rows, cols)?;
        let buf = self.buffer::<T>(data.len(), "matrix")?;
        if !data.is_empty() {
            self.runtime.write(&buf.raw, bytemuck::cast_slice(data))?;
        }
        Matrix::from_parts(buf, rows, cols)
    }

    fn download<T: Scalar>(&self, m: &Matrix<Self, T>) -> Result<Vec<T>> {
        let bytes = self.runtime.read(&m.buffer().raw, m.len() * std::mem::size_of::<T>())?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn zeros<T: Scalar>(&self, rows: usize, cols: usize) -> Result<Matrix<Self, T>> {
        let len = rows.checked_mul(cols).ok_or_else(|| Error::Device {
            backend: "gpu",
            reason: format!("a {rows} x {cols} matrix overflows"),
        })?;
        Matrix::from_parts(self.buffer::<T>(len, "matrix")?, rows, cols)
    }

    fn copy<T: Scalar>(&self, m: &Matrix<Self, T>) -> Result<Matrix<Self, T>> {
        let out = self.zeros::<T>(m.rows(), m.cols())?;
        if !m.is_empty() {
            self.runtime
                .copy(&m.buffer().raw, &out.buffer().raw, m.len() * std::mem::size_of::<T>())?;
        }
        Ok(out)
    }

    fn synchronize(&self) -> Result<()> {
        self.runtime.synchronize()
    }

    fn gemm<T: Scalar>(
        &self,
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
        let vendor = self.runtime.vendor_gemm(
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
        let mut rec = self.recorder();
        Gemm::new(
            (m, n, k),
            (raw(a), Strided::op(0, a.cols(), ta)),
            (raw(b), Strided::op(0, b.cols(), tb)),
            (raw(c), Strided::rows(0, n)),
            alpha.as_f64(),
            beta.as_f64(),
        )
        .record(self, &mut rec, T::DTYPE)?;
        rec.submit()
    }

    fn weighted_syrk<T: Scalar>(
        &self,
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
        let mut rec = self.recorder();
        if weights.is_none()
            && self
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
        g.record(self, &mut rec, T::DTYPE)?;
        mirror(&mut rec, T::DTYPE, raw(c), d)?;
        rec.submit()
    }

    fn cholesky<T: Scalar>(&self, a: &mut GpuMatrix<Rt, T>) -> Result<()> {
        let n = a.expect_square("a")?;
        let status = self.status()?;
        let mut rec = self.recorder();
        record_cholesky::<Rt, T>(self, &mut rec, raw(a), n, status.clone())?;
        rec.submit()?;
        match self.failed_at(&status)? {
            Some(index) => Err(Error::NotPositiveDefinite { index }),
            None => Ok(()),
        }
    }

    fn triangular_solve<T: Scalar>(&self, l: &GpuMatrix<Rt, T>, b: &mut GpuMatrix<Rt, T>, op: Op) -> Result<()> {
        let n = l.expect_square("l")?;
        if b.rows() != n {
            return Err(Error::shape("b", (n, b.cols()), b.shape()));
        }
        let mut rec = self.recorder();
        record_trsm::<Rt, T>(self, &mut rec, raw(l), n, raw(b), b.cols(), op)?;
        rec.submit()
    }

    fn predictive_covariance<T: Scalar>(
        &self,
        sigma: &GpuMatrix<Rt, T>,
        phi: &GpuMatrix<Rt, T>,
    ) -> Result<GpuMatrix<Rt, T>> {
        let (n, d, k) = predictive_shapes(sigma, phi)?;
        let p = k * d;
        let dtype = T::DTYPE;
        let out = self.zeros::<T>(n, k * k)?;
        if n == 0 {
            return Ok(out);
        }
        let chunk = self.policy().rows_per_chunk(n, k * p);
        let t = self.scratch::<T>(k * chunk * p, "Φ Σ")?;
        let mut rec = self.recorder();
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
            g.record(self, &mut rec, dtype)?;
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

    fn axpy<T: Scalar>(&self, y: &mut Matrix<Self, T>, alpha: T, x: &Matrix<Self, T>) -> Result<()> {
        binary(self, Kernel::Axpy, y, x, alpha)
    }

    fn hadamard<T: Scalar>(&self, y: &mut Matrix<Self, T>, x: &Matrix<Self, T>) -> Result<()> {
        binary(self, Kernel::Hadamard, y, x, T::zero())
    }

    fn add_row<T: Scalar>(&self, a: &mut GpuMatrix<Rt, T>, row: &GpuMatrix<Rt, T>) -> Result<()> {
        row.expect_shape("row", 1, a.cols())?;
        let mut rec = self.recorder();
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

    fn add_diagonal<T: Scalar>(&self, a: &mut GpuMatrix<Rt, T>, value: T) -> Result<()> {
        let n = a.expect_square("a")?;
        let mut rec = self.recorder();
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

    fn max_abs<T: Scalar>(&self, a: &GpuMatrix<Rt, T>) -> Result<T> {
        let result = self.scratch::<T>(1, "max |a|")?;
        let mut rec = self.recorder();
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
            DType::F32 => T::from_f64(f32::from_le_bytes(self.read_bytes(&result)?) as f64),
            DType::F64 => T::from_f64(f64::from_le_bytes(self.read_bytes(&result)?)),
        })
    }

    fn feature_rows<T: Scalar>(
        &self,
        x: &GpuMatrix<Rt, T>,
        start: usize,
        count: usize,
        augment: bool,
    ) -> Result<GpuMatrix<Rt, T>> {
        crate::device::check_row_range(x, start, count)?;
        let cols = x.cols() + usize::from(augment);
        let out = self.zeros::<T>(count, cols)?;
        let mut rec = self.recorder();
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
}
