//! [`Features`]: where a batch's Φ (n × D) comes from. Host rows ([`HostMatrix`]) are checked
//! and uploaded chunk by chunk; a matrix already on the posterior's device (`&Matrix<D, T>`,
//! e.g. a candle CUDA tensor adopted by
//! [`CudaDevice::matrix_from_device_ptr`](crate::CudaDevice)) is checked and gathered there, and
//! never crosses to the host.

use crate::device::{Device, Matrix};
use crate::error::{Error, Result};
use crate::host::{HostMatrix, check_batch_shape, check_features, feature_rows_into};
use crate::scalar::Scalar;

/// Features Φ (n × D) for [`Posterior::fit`](super::Posterior::fit), `update`, `unlearn`,
/// `predict`, `log_marginal_likelihood` and
/// [`CurvatureAccumulator::accumulate`](super::CurvatureAccumulator::accumulate): a
/// [`HostMatrix`] or a `&Matrix` on the posterior's device. Sealed.
///
/// ```
/// use laplace_update::{CpuDevice, Device, FitConfig, HostMatrix, Link, Posterior};
/// let cpu = CpuDevice::new(1)?;
/// let (x, labels) = ([0.5f64, -1.0, 1.5, 0.2, -0.3, 0.8], [0u32, 1, 1]);
/// let head = [0.1, 0.2, -0.1, 0.3];
/// let host = Posterior::fit(&cpu, HostMatrix::new(&x, 3, 2)?, &labels[..], HostMatrix::new(&head, 2, 2)?, None, &FitConfig::default())?;
/// let on_device = cpu.upload(&x, 3, 2)?;
/// let resident = Posterior::fit(&cpu, &on_device, &labels[..], HostMatrix::new(&head, 2, 2)?, None, &FitConfig::default())?;
/// assert_eq!(host.covariance()?, resident.covariance()?);
/// let p = resident.predict(&on_device, Link::default())?;
/// assert_eq!(p.probs.len(), 3 * 2);
/// # Ok::<(), laplace_update::Error>(())
/// ```
pub trait Features<D: Device, T: Scalar>: sealed::Source<D, T> + Send + Sync {
    /// n, the number of samples.
    fn rows(&self) -> usize;
    /// D, the number of features per sample.
    fn cols(&self) -> usize;
}

pub(crate) mod sealed {
    use super::*;

    /// What the posterior reads from [`Features`](super::Features).
    pub trait Source<D: Device, T: Scalar> {
        /// `EmptyBatch`, `ShapeMismatch` unless D = `cols`, `NonFinite` at the first NaN or ±∞.
        fn check(&self, device: &D, argument: &'static str, cols: usize) -> Result<()>;
        /// Rows `start..start + count` on the device, with a column of ones appended when
        /// `augment`; host rows go through `staging`, a buffer reused across chunks (give the
        /// matrix back with [`Source::release`]).
        fn chunk(
            &self,
            device: &D,
            start: usize,
            count: usize,
            augment: bool,
            staging: &mut Vec<T>,
        ) -> Result<Matrix<D, T>>;
        /// `C ← C + Xᵀ X` over all rows, `X = [Φ 1]` when `augment` (else Φ), in chunks of
        /// `chunk` rows where the rows have to move.
        fn add_gram(&self, device: &D, c: &mut Matrix<D, T>, augment: bool, chunk: usize) -> Result<()>;
        /// Ends the use of a [`Source::chunk`].
        fn release(&self, device: &D, chunk: Matrix<D, T>, staging: &mut Vec<T>);
        /// The keys of the Monte Carlo Fisher's draws for rows `start..start + count`: hashes
        /// of the rows' values, so that a sample draws the same noise wherever it is seen.
        fn sample_keys(&self, start: usize, count: usize) -> Result<Vec<u64>>;
    }
}

impl<D: Device, T: Scalar> Features<D, T> for HostMatrix<'_, T> {
    fn rows(&self) -> usize {
        HostMatrix::rows(self)
    }
    fn cols(&self) -> usize {
        HostMatrix::cols(self)
    }
}

impl<D: Device, T: Scalar> sealed::Source<D, T> for HostMatrix<'_, T> {
    fn check(&self, _device: &D, argument: &'static str, cols: usize) -> Result<()> {
        check_features(argument, self, cols)
    }

    fn chunk(
        &self,
        device: &D,
        start: usize,
        count: usize,
        augment: bool,
        staging: &mut Vec<T>,
    ) -> Result<Matrix<D, T>> {
        feature_rows_into(staging, self, start, count, augment);
        device.upload_staged(staging, count, HostMatrix::cols(self) + usize::from(augment))
    }

    fn add_gram(&self, device: &D, c: &mut Matrix<D, T>, augment: bool, chunk: usize) -> Result<()> {
        device.add_host_gram(c, *self, augment, chunk)
    }

    fn release(&self, device: &D, chunk: Matrix<D, T>, staging: &mut Vec<T>) {
        device.reclaim(chunk, staging);
    }

    fn sample_keys(&self, start: usize, count: usize) -> Result<Vec<u64>> {
        Ok((start..start + count)
            .map(|i| super::model::sample_key(self.row(i)))
            .collect())
    }
}

impl<D: Device, T: Scalar> Features<D, T> for &Matrix<D, T> {
    fn rows(&self) -> usize {
        Matrix::rows(self)
    }
    fn cols(&self) -> usize {
        Matrix::cols(self)
    }
}

impl<D: Device, T: Scalar> sealed::Source<D, T> for &Matrix<D, T> {
    /// The shape on the host; finiteness by [`Device::max_abs`] on the device (NaN and ±∞ win
    /// its maximum), a one-value read. Only a failing check downloads Φ, to name the index.
    fn check(&self, device: &D, argument: &'static str, cols: usize) -> Result<()> {
        check_batch_shape(argument, self.shape(), cols)?;
        if num_traits::Float::is_finite(device.max_abs(self)?) {
            return Ok(());
        }
        let host = device.download(self)?;
        let index = host.iter().position(|&v| !num_traits::Float::is_finite(v)).unwrap_or(0);
        Err(Error::NonFinite {
            argument,
            index,
            columns: self.cols(),
        })
    }

    fn chunk(
        &self,
        device: &D,
        start: usize,
        count: usize,
        augment: bool,
        _staging: &mut Vec<T>,
    ) -> Result<Matrix<D, T>> {
        device.feature_rows(self, start, count, augment)
    }

    fn add_gram(&self, device: &D, c: &mut Matrix<D, T>, augment: bool, chunk: usize) -> Result<()> {
        for start in (0..Matrix::rows(self)).step_by(chunk.max(1)) {
            let count = chunk.max(1).min(Matrix::rows(self) - start);
            let rows = device.feature_rows(self, start, count, augment)?;
            device.weighted_syrk(c, T::one(), &rows, None, T::one())?;
        }
        Ok(())
    }

    fn release(&self, _device: &D, _chunk: Matrix<D, T>, _staging: &mut Vec<T>) {}

    fn sample_keys(&self, _start: usize, _count: usize) -> Result<Vec<u64>> {
        Err(Error::Unsupported(
            "the Monte Carlo Fisher keys its draws by the feature values on the host; pass host features (HostMatrix) for it"
                .into(),
        ))
    }
}
