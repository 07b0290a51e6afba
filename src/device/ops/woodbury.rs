//! The Woodbury update of a covariance: `Σ ← Σ ± V Vᵀ` with `V = U L⁻ᵀ` for a factor U (n × r)
//! and the Cholesky factor L of the r × r capacitance, `+` for [`Sign::Plus`].
//!
//! | implementation | how |
//! |---|---|
//! | faer ([`Faer`]) | a triangular solve on `Uᵀ`, then the lower triangle of `V Vᵀ` |
//! | GPU ([`Kernels`]) | `kernels/cholesky.cu`, `shaders/cholesky.wgsl` (the panel solve), then the SYRK of `kernels/gemm.cu`, `shaders/gemm.wgsl` |

use super::Faer;
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use super::Kernels;
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::Op;
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::compose::{Gemm, Strided, elementwise, mirror, record_trsm};
use crate::device::cpu::{Fill, fill_triangle, symmetric_add, view, view_mut};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::gpu::{GpuDevice, Runtime};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::gpu::{GpuMatrix, Kernel, Record, raw};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::registry::ElementwiseParams;
use crate::device::{CpuDevice, Device, Matrix, Sign, low_rank_shapes};
use crate::error::Result;
use crate::scalar::Scalar;
use faer::{MatMut, MatRef};

/// The Woodbury update of a backend.
pub trait Woodbury<D: Device> {
    /// `Σ ← Σ ± (U L⁻ᵀ)(U L⁻ᵀ)ᵀ` with L = `c_chol` lower triangular.
    fn low_rank_update<T: Scalar>(
        dev: &D,
        sigma: &mut Matrix<D, T>,
        u: &Matrix<D, T>,
        c_chol: &Matrix<D, T>,
        sign: Sign,
    ) -> Result<()>;
}

/// `Σ ← Σ ± U C⁻¹ Uᵀ = Σ ± (U L⁻ᵀ)(U L⁻ᵀ)ᵀ`, where `c_chol` is the lower Cholesky factor L of
/// `C = L Lᵀ`.
///
/// Errors: `ShapeMismatch` (Σ not n × n, U not n × r, L not r × r).
pub fn low_rank_update<D: Device, T: Scalar>(
    dev: &D,
    sigma: &mut Matrix<D, T>,
    u: &Matrix<D, T>,
    c_chol: &Matrix<D, T>,
    sign: Sign,
) -> Result<()> {
    low_rank_shapes(sigma, u, c_chol)?;
    <D::Ops as Woodbury<D>>::low_rank_update(dev, sigma, u, c_chol, sign)
}

impl Woodbury<CpuDevice> for Faer {
    fn low_rank_update<T: Scalar>(
        dev: &CpuDevice,
        sigma: &mut Matrix<CpuDevice, T>,
        u: &Matrix<CpuDevice, T>,
        c_chol: &Matrix<CpuDevice, T>,
        sign: Sign,
    ) -> Result<()> {
        let (n, r) = low_rank_shapes(sigma, u, c_chol)?;
        if r == 0 || n == 0 {
            return Ok(());
        }
        let par = dev.par();
        dev.run_dense(|| {
            // V = U L⁻ᵀ (n × r, rows contiguous along r), solved as Vᵀ = L⁻¹ Uᵀ on a transposed
            // view; then Σ ± V Vᵀ on the lower triangle.
            let mut v = u.buffer()[..n * r].to_vec();
            faer::linalg::triangular_solve::solve_lower_triangular_in_place(
                view(c_chol),
                MatMut::from_row_major_slice_mut(&mut v, n, r).transpose_mut(),
                par,
            );
            let v_view = MatRef::from_row_major_slice(&v, n, r);
            let alpha = if sign == Sign::Plus { T::one() } else { -T::one() };
            if symmetric_add(view_mut(sigma), v_view, v_view, alpha, par) {
                fill_triangle(sigma.buffer_mut(), n, Fill::LowerToUpper);
            }
        });
        Ok(())
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
impl<Rt: Runtime> Woodbury<GpuDevice<Rt>> for Kernels {
    /// [`low_rank_update`]: `Vᵀ = L⁻¹ Uᵀ`, then `Σ ± V Vᵀ` on the lower tiles, mirrored.
    fn low_rank_update<T: Scalar>(
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
}
