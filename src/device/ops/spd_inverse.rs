//! The inverse of a symmetric positive definite matrix, `A⁻¹`, exactly symmetric.
//!
//! | implementation | how |
//! |---|---|
//! | composition ([`SpdInverse`]'s default; the GPU's) | `L = chol(A)` by [`Device::cholesky`], `X = L⁻¹` by [`Device::triangular_solve`] on the identity, `A⁻¹ = XᵀX` by [`Device::weighted_syrk`] (kernels: `kernels/cholesky.cu`, `shaders/cholesky.wgsl` and the gemm) |
//! | faer ([`Faer`]) | faer's Cholesky and its fused inverse, in column-major order |

#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use super::Kernels;
use super::{Composed, Faer};
use crate::device::cpu::{Fill, cholesky_col_major, fill_triangle, scratch, zeroed};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::gpu::{GpuDevice, Runtime};
use crate::device::{CpuDevice, Device, Matrix, Op};
use crate::error::Result;
use crate::scalar::Scalar;
use faer::dyn_stack::MemStack;
use faer::{MatMut, MatRef};

/// The SPD inverse of a backend; the default is the composition over the primitives.
pub trait SpdInverse<D: Device> {
    /// `A⁻¹` of a symmetric positive definite A. The composition: `L = chol(A)`, `X = L⁻¹` by
    /// [`Device::triangular_solve`] on the identity, `A⁻¹ = XᵀX` by [`Device::weighted_syrk`],
    /// so the result is exactly symmetric.
    fn spd_inverse<T: Scalar>(dev: &D, a: &Matrix<D, T>) -> Result<Matrix<D, T>> {
        let n = a.expect_square("a")?;
        let mut l = dev.copy(a)?;
        dev.cholesky(&mut l)?;
        let mut x = dev.zeros(n, n)?;
        dev.add_diagonal(&mut x, T::one())?;
        dev.triangular_solve(&l, &mut x, Op::N)?;
        let mut out = dev.zeros(n, n)?;
        dev.weighted_syrk(&mut out, T::zero(), &x, None, T::one())?;
        Ok(out)
    }
}

/// `A⁻¹` of a symmetric positive definite A by Cholesky, both triangles.
///
/// Errors: `ShapeMismatch` (A not square), `NotPositiveDefinite { index }` at the first failing
/// pivot.
pub fn spd_inverse<D: Device, T: Scalar>(dev: &D, a: &Matrix<D, T>) -> Result<Matrix<D, T>> {
    a.expect_square("a")?;
    <D::Ops as SpdInverse<D>>::spd_inverse(dev, a)
}

impl<D: Device> SpdInverse<D> for Composed {}

impl SpdInverse<CpuDevice> for Faer {
    /// faer's fused Cholesky inverse.
    fn spd_inverse<T: Scalar>(dev: &CpuDevice, a: &Matrix<CpuDevice, T>) -> Result<Matrix<CpuDevice, T>> {
        let n = a.expect_square("a")?;
        dev.run_sized(n * n * n, |par| {
            // A symmetric row-major buffer is also A in column-major order: factor and invert in
            // faer's fast layout with no transposes.
            let mut l = a.buffer()[..n * n].to_vec();
            cholesky_col_major(&mut l, n, par)?;
            let mut out = zeroed(n * n);
            let mut mem = scratch(faer::linalg::cholesky::llt::inverse::inverse_scratch::<T>(n, par));
            faer::linalg::cholesky::llt::inverse::inverse(
                MatMut::from_column_major_slice_mut(&mut out, n, n),
                MatRef::from_column_major_slice(&l, n, n),
                par,
                MemStack::new(&mut mem),
            );
            // The column-major lower triangle is the row-major upper triangle of the result.
            fill_triangle(&mut out, n, Fill::UpperToLower);
            Matrix::from_parts(out, n, n)
        })
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
impl<Rt: Runtime> SpdInverse<GpuDevice<Rt>> for Kernels {}
