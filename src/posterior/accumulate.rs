//! [`CurvatureAccumulator`]: the curvature of a data set, accumulated in shards that merge.

use super::fit::null_free_basis;
use super::model::KronFactors;
use super::{FitConfig, Likelihood, Posterior, Structure, positive};
use crate::device::{Device, Matrix};
use crate::error::{Error, Result};
use crate::host::{HostMatrix, Targets};
use crate::scalar::Scalar;

/// The data term `Σ_n J_nᵀ M_n J_n` of a posterior's precision, around a fixed head, summed
/// over any number of chunks and shards.
///
/// Each machine accumulates its shard; partial accumulators are saved with
/// [`save_accumulator`](crate::io::save_accumulator), summed with [`CurvatureAccumulator::merge`]
/// by any map-reduce engine, and [`CurvatureAccumulator::finish`]ed with a prior anywhere.
/// [`Posterior::fit`] is one accumulator over all the data.
///
/// For Full classification the sum is kept in the basis `Q₁ ⊗ I` of the classes' complement
/// of `1` (the softmax's curvature vanishes along `1 ⊗ x`), side (K−1)·D_aug.
///
/// ```
/// use laplace_update::{CpuDevice, FitConfig, HostMatrix, posterior::CurvatureAccumulator};
/// let cpu = CpuDevice::new(1)?;
/// let phi = [1.0f64, 0.0, 0.0, 1.0, 1.0, 1.0, -1.0, 0.5];
/// let head = [0.5f64, -0.5, -0.5, 0.5];
/// let config = FitConfig::default();
/// let shard = |rows: std::ops::Range<usize>, labels: &[u8]| {
///     let mut acc = CurvatureAccumulator::new(&cpu, HostMatrix::new(&head, 2, 2)?, None, &config)?;
///     acc.accumulate(HostMatrix::new(&phi[rows.start * 2..rows.end * 2], rows.len(), 2)?, labels)?;
///     Ok::<_, laplace_update::Error>(acc)
/// };
/// let mut total = shard(0..2, &[0, 1])?;
/// total.merge(&shard(2..4, &[1, 0])?)?;
/// let post = total.finish(1.0)?;
/// assert_eq!(post.samples_seen(), 4);
/// # Ok::<(), laplace_update::Error>(())
/// ```
pub struct CurvatureAccumulator<D: Device, T: Scalar> {
    /// The head, bias and settings, with placeholder moments.
    shell: Posterior<D, T>,
    /// Full: (K'·D_aug)², Shared: D_aug², Diag: K × D_aug, Kron: 1 × 1 (unused).
    sum: Matrix<D, T>,
    kron: Option<KronFactors<D, T>>,
    /// The reduced class basis Q₁ (K × (K−1)) of Full classification, host and device.
    basis: Option<(Vec<f64>, Matrix<D, T>)>,
    chunk_rows: usize,
    count: usize,
}

impl<D: Device, T: Scalar> CurvatureAccumulator<D, T> {
    /// An empty accumulator around the head `(W, b)` with the structure, likelihood,
    /// curvature, bias mode and chunk size of `config` (its τ is not used until `finish`).
    ///
    /// Errors: `ShapeMismatch`, `NonFinite`, `InvalidArgument`.
    pub fn new(device: &D, head: HostMatrix<'_, T>, bias: Option<&[T]>, config: &FitConfig) -> Result<Self> {
        let shell = Posterior::assemble(device, head, bias, config)?;
        let (k, da) = (shell.classes, shell.augmented_features());
        let basis = match (shell.structure, shell.likelihood) {
            (Structure::Full, Likelihood::Classification) => {
                let host = null_free_basis(k);
                let cast: Vec<T> = host.iter().map(|&x| T::from_f64(x)).collect();
                let dev = device.upload(&cast, k, k - 1)?;
                Some((host, dev))
            }
            _ => None,
        };
        let (rows, cols) = match shell.structure {
            Structure::Full => {
                let side = basis.as_ref().map_or(k, |_| k - 1) * da;
                (side, side)
            }
            Structure::Shared(_) => (da, da),
            Structure::Diag => (k, da),
            Structure::Kron => (1, 1),
        };
        let kron = match shell.structure {
            Structure::Kron => Some(KronFactors::empty(device, k, da)?),
            _ => None,
        };
        Ok(CurvatureAccumulator {
            sum: device.zeros(rows, cols)?,
            shell,
            kron,
            basis,
            chunk_rows: config.chunk_rows,
            count: 0,
        })
    }

    /// Samples accumulated so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Adds the curvature of features Φ (n × D) with their targets, in chunks of the
    /// configured `chunk_rows`. On error the accumulator is unchanged.
    ///
    /// Errors: `EmptyBatch`, `ShapeMismatch`, `NonFinite`, `LabelOutOfRange`, `InvalidArgument`.
    pub fn accumulate<Y: Targets<T> + ?Sized>(&mut self, features: HostMatrix<'_, T>, targets: &Y) -> Result<()> {
        let device = self.shell.device.clone();
        device.scope(|| self.accumulate_in_scope(features, targets))
    }

    fn accumulate_in_scope<Y: Targets<T> + ?Sized>(&mut self, features: HostMatrix<'_, T>, targets: &Y) -> Result<()> {
        let post = &self.shell;
        post.check_batch(&features, targets)?;
        let device = &post.device;
        let model = post.model();
        // A fresh partial sum, added at the end, so that a failure changes nothing.
        let mut sum = device.zeros(self.sum.rows(), self.sum.cols())?;
        let mut kron = match &self.kron {
            Some(_) => Some(KronFactors::empty(device, post.classes, post.augmented_features())?),
            None => None,
        };
        let chunk = super::pass_rows(self.chunk_rows, post.classes, post.augmented_features());
        let host_basis = self.basis.as_ref().map(|(h, _)| (h.as_slice(), post.classes - 1));
        let device_basis = self.basis.as_ref().map(|(_, d)| d);
        // One host allocation for every chunk's Φ (none on the CPU after the first chunk).
        let mut staging = Vec::new();
        // Only the empirical Fisher's curvature reads the targets.
        let with_targets = post.curvature == super::Curvature::EmpiricalFisher;
        for start in (0..features.rows()).step_by(chunk) {
            let rows = chunk.min(features.rows() - start);
            let batch = post.upload_batch_staged(&features, targets, start, rows, &mut staging, with_targets)?;
            let term = match model.head_free_term() {
                Some(term) => term,
                None => {
                    let outputs = model.outputs(&batch.phi, &post.moments.head)?;
                    model.curvature_term(&batch, &outputs, host_basis)?
                }
            };
            model.add_curvature(&mut sum, kron.as_mut(), &batch.phi, &term, T::one(), device_basis)?;
            device.reclaim(batch.phi, &mut staging);
        }
        self.add(sum, kron, features.rows())
    }

    /// Adds a partial sum: moved in when this accumulator is empty (bit-exact), else added.
    fn add(&mut self, sum: Matrix<D, T>, kron: Option<KronFactors<D, T>>, count: usize) -> Result<()> {
        let device = &self.shell.device;
        if self.count == 0 {
            self.sum = sum;
            if kron.is_some() {
                self.kron = kron;
            }
        } else {
            let mut total = device.copy(&self.sum)?;
            device.axpy(&mut total, T::one(), &sum)?;
            let total_kron = match (&self.kron, &kron) {
                (Some(mine), Some(theirs)) => {
                    let mut k = mine.copy(device)?;
                    device.axpy(&mut k.a_sum, T::one(), &theirs.a_sum)?;
                    device.axpy(&mut k.g_sum, T::one(), &theirs.g_sum)?;
                    k.weight += theirs.weight;
                    Some(k)
                }
                _ => None,
            };
            self.sum = total;
            if total_kron.is_some() {
                self.kron = total_kron;
            }
        }
        self.count += count;
        Ok(())
    }

    /// Adds another accumulator's sums. It must have the same structure, likelihood,
    /// curvature, bias mode, shape and a bit-identical head and bias; otherwise
    /// `InvalidArgument` and nothing changes.
    pub fn merge(&mut self, other: &Self) -> Result<()> {
        let (a, b) = (&self.shell, &other.shell);
        let same = a.structure == b.structure
            && a.likelihood == b.likelihood
            && a.curvature == b.curvature
            && a.bias_mode == b.bias_mode
            && a.classes == b.classes
            && a.features == b.features;
        if !same {
            return Err(Error::invalid(
                "other",
                "accumulators differ in structure, likelihood, curvature, bias mode or shape",
            ));
        }
        let bits = |p: &Posterior<D, T>| -> Result<Vec<u8>> {
            let mut v = bytemuck::cast_slice::<T, u8>(&p.device.download(&p.moments.head)?).to_vec();
            if let Some(bias) = &p.fixed_bias {
                v.extend_from_slice(bytemuck::cast_slice(&p.device.download(bias)?));
            }
            Ok(v)
        };
        if bits(a)? != bits(b)? {
            return Err(Error::invalid(
                "other",
                "accumulators were taken around different heads; curvature sums only add at one head",
            ));
        }
        if other.count == 0 {
            return Ok(());
        }
        let sum = self.shell.device.copy(&other.sum)?;
        let kron = other.kron.as_ref().map(|k| k.copy(&self.shell.device)).transpose()?;
        self.add(sum, kron, other.count)
    }

    /// The posterior `Π = τ I + sum`, `Σ = Π⁻¹`, around the accumulator's head.
    ///
    /// Errors: `InvalidArgument` (τ ≤ 0), `NotPositiveDefinite`.
    pub fn finish(&self, prior_precision: f64) -> Result<Posterior<D, T>> {
        let device = self.shell.device.clone();
        device.scope(|| {
            let sum = device.copy(&self.sum)?;
            self.finish_with(self.shell.try_clone()?, sum, prior_precision)
        })
    }

    /// [`CurvatureAccumulator::finish`] without copying the sum: the accumulator is consumed.
    pub fn into_posterior(mut self, prior_precision: f64) -> Result<Posterior<D, T>> {
        let device = self.shell.device.clone();
        device.scope(|| {
            let sum = std::mem::replace(&mut self.sum, device.zeros(1, 1)?);
            let shell = self.shell.try_clone()?;
            self.finish_with(shell, sum, prior_precision)
        })
    }

    /// The posterior around `out` (the shell) from the data term `sum` (taken).
    fn finish_with(
        &self,
        mut out: Posterior<D, T>,
        sum: Matrix<D, T>,
        prior_precision: f64,
    ) -> Result<Posterior<D, T>> {
        let tau: T = positive("prior_precision", prior_precision)?;
        let post = &self.shell;
        let device = &post.device;
        let model = post.model();
        out.prior_precision = vec![tau];
        out.samples_seen = self.count;
        match post.structure {
            Structure::Full | Structure::Shared(_) => {
                let mut precision = sum;
                device.add_diagonal(&mut precision, tau)?;
                let covariance = device.spd_inverse(&precision)?;
                super::model::check_inverse(device, &precision, &covariance)?;
                match &self.basis {
                    Some((_, r)) => {
                        out.moments.precision = device.kron_congruence(&precision, r, tau)?;
                        out.moments.covariance = device.kron_congruence(&covariance, r, T::one() / tau)?;
                    }
                    None => {
                        out.moments.precision = precision;
                        out.moments.covariance = covariance;
                    }
                }
            }
            Structure::Diag => {
                let mut precision = sum;
                let prior = device.upload(&vec![tau; precision.len()], precision.rows(), precision.cols())?;
                device.axpy(&mut precision, T::one(), &prior)?;
                out.moments.covariance = model.covariance_of(&precision)?;
                out.moments.precision = precision;
            }
            Structure::Kron => {
                let mut kron = super::model::require_kron(self.kron.as_ref())?.copy(device)?;
                let (precision, covariance) = model.kron_refactor(&mut kron, tau)?;
                out.moments.precision = precision;
                out.moments.covariance = covariance;
                out.moments.kron = Some(kron);
            }
        }
        Ok(out)
    }

    /// The accumulator's contents for the io layer.
    pub(crate) fn to_raw(&self) -> Result<RawAccumulator<T>> {
        let mut raw = self.shell.to_raw()?;
        let device = &self.shell.device;
        raw.precision = device.download(&self.sum)?;
        raw.covariance = Vec::new();
        raw.samples_seen = self.count;
        raw.kron_weight = self.count as f64;
        raw.kron = match &self.kron {
            Some(k) => Some([
                device.download(&k.a_sum)?,
                device.download(&k.g_sum)?,
                Vec::new(),
                Vec::new(),
            ]),
            None => None,
        };
        Ok(RawAccumulator {
            sum_shape: self.sum.shape(),
            raw,
        })
    }

    /// Rebuilds an accumulator from its contents, checking every shape and value.
    pub(crate) fn from_raw(device: &D, stored: RawAccumulator<T>, chunk_rows: usize) -> Result<Self> {
        let raw = stored.raw;
        let config = raw.config(chunk_rows);
        let da = raw.augmented_features();
        if raw.classes == 0 || raw.features == 0 || raw.head.len() != raw.classes * da {
            return Err(Error::invalid("head", "inconsistent with K and D"));
        }
        let (head, bias) = split_head(
            &raw.head,
            raw.classes,
            da,
            raw.bias_mode == super::BiasMode::InPosterior,
        );
        let bias = bias.or(raw.fixed_bias.clone());
        let mut acc = Self::new(
            device,
            HostMatrix::new(&head, raw.classes, raw.features)?,
            bias.as_deref(),
            &config,
        )?;
        if stored.sum_shape != acc.sum.shape() || raw.precision.len() != acc.sum.len() {
            return Err(Error::shape("sum", acc.sum.shape(), stored.sum_shape));
        }
        crate::host::check_finite("sum", &raw.precision)?;
        acc.sum = device.upload(&raw.precision, stored.sum_shape.0, stored.sum_shape.1)?;
        match (&mut acc.kron, raw.kron) {
            (Some(k), Some([a, g, _, _])) => {
                if a.len() != raw.classes * raw.classes || g.len() != da * da {
                    return Err(Error::invalid("kron", "factor sums of the wrong size"));
                }
                crate::host::check_finite("kron", &a)?;
                crate::host::check_finite("kron", &g)?;
                k.a_sum = device.upload(&a, raw.classes, raw.classes)?;
                k.g_sum = device.upload(&g, da, da)?;
                k.weight = raw.samples_seen as f64;
            }
            (None, None) => {}
            _ => return Err(Error::invalid("kron", "Kronecker sums do not match the structure")),
        }
        acc.count = raw.samples_seen;
        Ok(acc)
    }
}

/// An accumulator's contents: the shell posterior's raw form with `precision` holding the sum.
pub(crate) struct RawAccumulator<T> {
    pub sum_shape: (usize, usize),
    pub raw: super::RawPosterior<T>,
}

/// Splits a stored head K × D_aug into W (K × D) and, when augmented, the bias column.
fn split_head<T: Scalar>(head: &[T], k: usize, da: usize, augmented: bool) -> (Vec<T>, Option<Vec<T>>) {
    if !augmented {
        return (head.to_vec(), None);
    }
    let w = head.chunks(da).flat_map(|r| r[..da - 1].iter().copied()).collect();
    let b = (0..k).map(|c| head[c * da + da - 1]).collect();
    (w, Some(b))
}
