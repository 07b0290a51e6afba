//! The [`Device`] implementation of the wgpu backend. The kernel compositions are shared with
//! the CUDA backend in [`compose`](crate::device::compose); this file holds what is particular
//! to wgpu: buffers, readback, the per-sample Sherman–Morrison loop and the max-abs reduction.

use super::{Recorder, WgpuBuffer, WgpuDevice, backend_error, f32_only};
use crate::device::compose::{self, Gpu, Kernel, KernelParams, NONE, Record};
use crate::device::launch::{GridLimits, LaunchPolicy, fold_threads};
use crate::device::{Device, LowRankFactor, Matrix, Op, OutputWeighting, Sign, check_upload, sherman_morrison_shapes};
use crate::error::{Error, Result};
use crate::scalar::Scalar;

fn raw<T: Scalar>(m: &Matrix<WgpuDevice, T>) -> &wgpu::Buffer {
    &m.buffer().buffer
}

impl Gpu for WgpuDevice {
    type Raw = wgpu::Buffer;
    type Rec = Recorder;

    fn raw<T: Scalar>(m: &Matrix<Self, T>) -> wgpu::Buffer {
        m.buffer().buffer.clone()
    }
    fn raw_buffer<T: Scalar>(b: &WgpuBuffer<T>) -> wgpu::Buffer {
        b.buffer.clone()
    }
    fn recorder(&self) -> Recorder {
        Recorder::new(&self.ctx)
    }
    fn scratch<T: Scalar>(&self, len: usize, label: &'static str) -> Result<WgpuBuffer<T>> {
        self.buffer::<T>(len, label)
    }
    fn status(&self) -> Result<WgpuBuffer<f32>> {
        let status = self.buffer::<f32>(2, "status")?;
        let init = [NONE, 0u32];
        self.ctx
            .queue
            .write_buffer(&status.buffer, 0, bytemuck::cast_slice(&init));
        Ok(status)
    }
    fn failed_at(&self, status: &WgpuBuffer<f32>) -> Result<Option<usize>> {
        let words: Vec<u32> = self.read_back(&status.buffer, 1)?;
        Ok((words[0] != NONE).then_some(words[0] as usize))
    }
    fn grid_limits(&self) -> GridLimits {
        self.ctx.grid
    }
    fn policy(&self) -> &LaunchPolicy {
        &self.ctx.policy
    }
}

impl Device for WgpuDevice {
    type Buffer<T: Scalar> = WgpuBuffer<T>;

    fn name(&self) -> String {
        format!("wgpu: {} ({:?})", self.ctx.info.name, self.ctx.info.backend)
    }

    fn upload<T: Scalar>(&self, data: &[T], rows: usize, cols: usize) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        check_upload(data.len(), rows, cols)?;
        let buf = self.buffer::<T>(data.len(), "matrix")?;
        if !data.is_empty() {
            self.ctx.queue.write_buffer(&buf.buffer, 0, bytemuck::cast_slice(data));
        }
        Matrix::from_parts(buf, rows, cols)
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
        Matrix::from_parts(self.buffer::<T>(len, "matrix")?, rows, cols)
    }

    fn copy<T: Scalar>(&self, m: &Matrix<Self, T>) -> Result<Matrix<Self, T>> {
        let out = self.zeros::<T>(m.rows(), m.cols())?;
        let mut rec = self.recorder();
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
        compose::gemm(self, c, beta, a, ta, b, tb, alpha)
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
        compose::weighted_syrk(self, c, beta, a, weights, alpha)
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
        compose::ggn_accumulate(self, precision, phi, probs, basis, alpha)
    }

    fn kron_congruence<T: Scalar>(
        &self,
        x: &Matrix<Self, T>,
        basis: &Matrix<Self, T>,
        complement: T,
    ) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        compose::kron_congruence(self, x, basis, complement)
    }

    fn kron_rows<T: Scalar>(
        &self,
        factors: &Matrix<Self, T>,
        phi: &Matrix<Self, T>,
        rank: usize,
    ) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        compose::kron_rows(self, factors, phi, rank)
    }

    fn kron_products<T: Scalar>(
        &self,
        sigma: &Matrix<Self, T>,
        phi: &Matrix<Self, T>,
        factor: LowRankFactor<'_, Self, T>,
    ) -> Result<(Matrix<Self, T>, Matrix<Self, T>)> {
        f32_only::<T>()?;
        compose::kron_products(self, sigma, phi, factor)
    }

    fn low_rank_update<T: Scalar>(
        &self,
        sigma: &mut Matrix<Self, T>,
        u: &Matrix<Self, T>,
        c_chol: &Matrix<Self, T>,
        sign: Sign,
    ) -> Result<()> {
        f32_only::<T>()?;
        compose::low_rank_update(self, sigma, u, c_chol, sign)
    }

    /// Three dispatches per sample (`sm_project`, `sm_scalars`, `sm_apply`), all recorded into
    /// one compute pass with one bind group each: the sample index lives on the device.
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
        let (m, d, k) = sherman_morrison_shapes(sigma, head, bias, phi, targets)?;
        let used = self.zeros::<T>(m, 1)?;
        if m == 0 || d == 0 {
            return Ok(used);
        }
        let state = self.buffer::<f32>(d + 2 * k + 3, "Sherman–Morrison state")?;
        let status = self.status()?;
        let flags = usize::from(bias.is_some()) | (usize::from(weighting == OutputWeighting::Categorical) << 1);
        let params = KernelParams::new().u(d).u(k).u(flags).r(gamma.as_f64());
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
        let mut rec = self.recorder();
        let project = rec.bind(Kernel::SmProject, params.clone(), &buffers)?;
        let scalars = rec.bind(Kernel::SmScalars, params.clone(), &buffers)?;
        let apply = rec.bind(Kernel::SmApply, params, &buffers)?;
        rec.dispatch_bound(
            &[
                (Kernel::SmProject, &project, fold_threads(d + k, 1, self.ctx.grid)?),
                (Kernel::SmScalars, &scalars, [1, 1, 1]),
                (Kernel::SmApply, &apply, fold_threads((d + k) * d, 256, self.ctx.grid)?),
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
        compose::cholesky(self, a)
    }

    fn triangular_solve<T: Scalar>(&self, l: &Matrix<Self, T>, b: &mut Matrix<Self, T>, op: Op) -> Result<()> {
        f32_only::<T>()?;
        compose::triangular_solve(self, l, b, op)
    }

    fn spd_inverse<T: Scalar>(&self, a: &Matrix<Self, T>) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        compose::spd_inverse(self, a)
    }

    fn predictive_covariance<T: Scalar>(
        &self,
        sigma: &Matrix<Self, T>,
        phi: &Matrix<Self, T>,
    ) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        compose::predictive_covariance(self, sigma, phi)
    }

    fn softmax_rows<T: Scalar>(&self, logits: &mut Matrix<Self, T>) -> Result<()> {
        f32_only::<T>()?;
        compose::softmax_rows(self, logits)
    }

    fn probit_softmax<T: Scalar>(
        &self,
        mean: &Matrix<Self, T>,
        cov: &Matrix<Self, T>,
        lambda: T,
    ) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        compose::probit_softmax(self, mean, cov, lambda)
    }

    fn monte_carlo_softmax<T: Scalar>(
        &self,
        mean: &Matrix<Self, T>,
        cov: &Matrix<Self, T>,
        eps: &Matrix<Self, T>,
    ) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        compose::monte_carlo_softmax(self, mean, cov, eps)
    }

    fn bridge_dirichlet<T: Scalar>(&self, mean: &Matrix<Self, T>, cov: &Matrix<Self, T>) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        compose::bridge_dirichlet(self, mean, cov)
    }

    fn categorical_weights<T: Scalar>(&self, probs: &Matrix<Self, T>) -> Result<Matrix<Self, T>> {
        f32_only::<T>()?;
        compose::categorical_weights(self, probs)
    }

    fn axpy<T: Scalar>(&self, y: &mut Matrix<Self, T>, alpha: T, x: &Matrix<Self, T>) -> Result<()> {
        f32_only::<T>()?;
        compose::binary(self, Kernel::Axpy, y, x, alpha)
    }

    fn hadamard<T: Scalar>(&self, y: &mut Matrix<Self, T>, x: &Matrix<Self, T>) -> Result<()> {
        f32_only::<T>()?;
        compose::binary(self, Kernel::Hadamard, y, x, T::zero())
    }

    fn add_row<T: Scalar>(&self, a: &mut Matrix<Self, T>, row: &Matrix<Self, T>) -> Result<()> {
        f32_only::<T>()?;
        compose::add_row(self, a, row)
    }

    fn add_diagonal<T: Scalar>(&self, a: &mut Matrix<Self, T>, value: T) -> Result<()> {
        f32_only::<T>()?;
        compose::add_diagonal(self, a, value)
    }

    fn max_abs<T: Scalar>(&self, a: &Matrix<Self, T>) -> Result<T> {
        f32_only::<T>()?;
        let result = self.buffer::<f32>(1, "max |a|")?;
        let mut rec = self.recorder();
        if !a.is_empty() {
            let params = KernelParams::new().u(a.len()).u(a.rows()).u(a.cols()).u(0).r(0.0);
            rec.launch(
                Kernel::MaxAbs,
                T::DTYPE,
                params,
                &[Some(raw(a).clone()), None, Some(result.buffer.clone())],
                compose::Grid::Threads(a.len()),
            )?;
        }
        rec.submit()?;
        let bits: Vec<u32> = self.read_back(&result.buffer, 1)?;
        Ok(T::from_f64(f32::from_bits(bits[0]) as f64))
    }
}
