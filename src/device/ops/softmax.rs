//! Row softmax of logits, `p_k = e^{f_k} / Σ_j e^{f_j}`, in place, and the categorical
//! curvature weights `p_max (1 − p_max)` of the Shared structure.
//!
//! | implementation | how |
//! |---|---|
//! | composition ([`Softmax`]'s default) | on the host, in parallel |
//! | faer ([`Faer`]) | softmax in place on the rows; the weights composed |
//! | GPU ([`Kernels`]) | `kernels/predictive.cu`, `shaders/predictive.wgsl`: `SoftmaxRows`, `CategoricalWeights` |

use rayon::prelude::*;

#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use super::Kernels;
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use super::links::record_link;
use super::{Composed, Faer};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::CovLayout;
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
use crate::device::gpu::{Args, GpuDevice, GpuMatrix, Kernel, Record, Runtime, raw};
use crate::device::{CpuDevice, Device, Matrix};
use crate::error::Result;
use crate::numerics::softmax_in_place;
use crate::scalar::Scalar;

/// The softmax and categorical weights of a backend; the defaults run on the host.
pub trait Softmax<D: Device> {
    /// [`softmax_rows`] on the host.
    fn softmax_rows<T: Scalar>(dev: &D, logits: &mut Matrix<D, T>) -> Result<()> {
        let (n, k) = logits.shape();
        if k == 0 {
            return Ok(());
        }
        let mut host = dev.download(logits)?;
        host.par_chunks_mut(k).for_each(softmax_in_place);
        *logits = dev.upload_owned(host, n, k)?;
        Ok(())
    }

    /// [`categorical_weights`] on the host.
    fn categorical_weights<T: Scalar>(dev: &D, probs: &Matrix<D, T>) -> Result<Matrix<D, T>> {
        let (n, k) = probs.shape();
        let host = dev.download(probs)?;
        let out = (0..n)
            .map(|i| {
                let pmax = host[i * k..(i + 1) * k].iter().fold(T::zero(), |a, &b| a.max(b));
                pmax * (T::one() - pmax)
            })
            .collect();
        dev.upload_owned(out, n, 1)
    }
}

/// Row-wise stable softmax in place.
pub fn softmax_rows<D: Device, T: Scalar>(dev: &D, logits: &mut Matrix<D, T>) -> Result<()> {
    <D::Ops as Softmax<D>>::softmax_rows(dev, logits)
}

/// `m_n = p_max,n (1 − p_max,n)` for each row of `probs`; returns n × 1.
pub fn categorical_weights<D: Device, T: Scalar>(dev: &D, probs: &Matrix<D, T>) -> Result<Matrix<D, T>> {
    <D::Ops as Softmax<D>>::categorical_weights(dev, probs)
}

impl<D: Device> Softmax<D> for Composed {}

impl Softmax<CpuDevice> for Faer {
    fn softmax_rows<T: Scalar>(dev: &CpuDevice, logits: &mut Matrix<CpuDevice, T>) -> Result<()> {
        let k = logits.cols();
        if k > 0 {
            let (len, values) = (logits.len(), logits.buffer_mut());
            dev.run_elementwise(len, |parallel| {
                if parallel {
                    values.par_chunks_mut(k).for_each(softmax_in_place)
                } else {
                    values.chunks_mut(k).for_each(softmax_in_place)
                }
            });
        }
        Ok(())
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
impl<Rt: Runtime> Softmax<GpuDevice<Rt>> for Kernels {
    /// [`softmax_rows`].
    fn softmax_rows<T: Scalar>(dev: &GpuDevice<Rt>, logits: &mut GpuMatrix<Rt, T>) -> Result<()> {
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

    /// [`categorical_weights`].
    fn categorical_weights<T: Scalar>(dev: &GpuDevice<Rt>, probs: &GpuMatrix<Rt, T>) -> Result<GpuMatrix<Rt, T>> {
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
}
