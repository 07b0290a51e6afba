//! [`CurvatureAccumulator`]: the curvature of a data set, accumulated in shards that merge.

use super::Features;
use super::fit::null_free_basis;
use super::structure::{DataTerm, RawTensor, cheaper_structures, describe, fit_bytes, pass_bytes, uses_reduced_basis};
use super::{FitConfig, Posterior, positive};
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
    /// The data term in the structure's parts.
    sum: DataTerm<D, T>,
    /// The reduced class basis Q₁ (K × (K−1)) of Full classification, host and device.
    basis: Option<(Vec<f64>, Matrix<D, T>)>,
    chunk_rows: usize,
    count: usize,
}

impl<D: Device, T: Scalar> CurvatureAccumulator<D, T> {
    /// An empty accumulator around the head `(W, b)` with the structure, likelihood,
    /// curvature, bias mode and chunk size of `config` (its τ is not used until `finish`).
    ///
    /// Errors: `ShapeMismatch`, `NonFinite`, `InvalidArgument`, and `OutOfMemory` when the
    /// fit's peak ([`FitConfig::peak_bytes`]) exceeds the [memory budget](crate::memory),
    /// checked before anything but the head is allocated.
    pub fn new(device: &D, head: HostMatrix<'_, T>, bias: Option<&[T]>, config: &FitConfig) -> Result<Self> {
        config.validate()?;
        let da = config.bias.augmented(head.cols());
        fit_fits_in_memory::<D, T>(device, config.structure, head.rows(), da)?;
        let shell = Posterior::assemble(device, head, bias, config)?;
        let (k, da) = (shell.classes, shell.augmented_features());
        let basis = match uses_reduced_basis(config.structure, config.likelihood) {
            true => {
                let host = null_free_basis(k);
                let cast: Vec<T> = host.iter().map(|&x| T::from_f64(x)).collect();
                let dev = device.upload(&cast, k, k - 1)?;
                Some((host, dev))
            }
            false => None,
        };
        let sum = shell.moments.state.empty_sum(device, k, da, basis.is_some())?;
        Ok(CurvatureAccumulator {
            sum,
            shell,
            basis,
            chunk_rows: config.chunk_rows,
            count: 0,
        })
    }

    /// The likelihood the curvature is of.
    pub fn likelihood(&self) -> super::Likelihood {
        self.shell.likelihood
    }

    /// Samples accumulated so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Adds the curvature of features Φ (n × D) with their targets, in chunks of the
    /// configured `chunk_rows`. On error the accumulator is unchanged.
    ///
    /// Errors: `EmptyBatch`, `ShapeMismatch`, `NonFinite`, `LabelOutOfRange`, `InvalidArgument`.
    pub fn accumulate<F: Features<D, T>, Y: Targets<T> + ?Sized>(&mut self, features: F, targets: &Y) -> Result<()> {
        let device = self.shell.device.clone();
        device.scope(|| self.accumulate_in_scope(features, targets))
    }

    fn accumulate_in_scope<F: Features<D, T>, Y: Targets<T> + ?Sized>(
        &mut self,
        features: F,
        targets: &Y,
    ) -> Result<()> {
        let post = &self.shell;
        let device = &post.device;
        let model = post.model();
        let state = &*post.moments.state;
        let gram_only = state.gram_only(&model);
        match gram_only {
            // Φ's finiteness is read off its Gram instead: `Σ_n φ_nj²` is finite exactly when
            // column j is (and does not overflow), so Φ is read once, not twice.
            true => post.check_batch_shape(&features, targets)?,
            false => post.check_batch(&features, targets)?,
        }
        let (k, da) = (post.classes, post.augmented_features());
        // Passes of at most about 2³⁶ multiply-adds (a fraction of a second on a CPU), so that
        // a long fit can be interrupted between them.
        let chunk = super::pass_rows(self.chunk_rows, k, da, state.pass_elements())
            .min(super::structure::rows_for_flops(state.kind(), k, da, 36, 2048))
            .min(features.rows().max(1));
        // Smaller passes where a pass would not fit in half the memory left; one row must.
        let elem = std::mem::size_of::<T>();
        let per_row = pass_bytes(state.kind(), 1, k, da, elem).max(1);
        let chunk = match crate::memory::headroom_for(per_row.saturating_mul(chunk as u64)) {
            Some(bytes) => chunk.min(usize::try_from(bytes / 2 / per_row).unwrap_or(usize::MAX).max(1)),
            None => chunk,
        };
        crate::memory::ensure_on(
            device,
            pass_bytes(state.kind(), chunk, k, da, elem),
            || format!("a pass of {chunk} rows (K = {k}, D_aug = {da})"),
            |_| String::new(),
        )?;
        // A fresh partial sum, added at the end, so that a failure changes nothing.
        let mut sum = state.empty_sum(device, k, da, self.basis.is_some())?;
        if gram_only {
            let augment = post.bias_mode == super::BiasMode::InPosterior;
            features.add_gram(device, &mut sum.parts[0], augment, chunk)?;
            if !num_traits::Float::is_finite(device.max_abs(&sum.parts[0])?) {
                features.check(device, "features", post.features)?;
                return Err(Error::invalid(
                    "features",
                    "their Gram Σ φφᵀ overflows the element type; rescale them or use f64",
                ));
            }
            sum.weight += features.rows() as f64;
            return self.add(sum, features.rows());
        }
        let host_basis = self.basis.as_ref().map(|(h, _)| (h.as_slice(), k - 1));
        let device_basis = self.basis.as_ref().map(|(_, d)| d);
        // One host allocation for every chunk's Φ (none on the CPU after the first chunk).
        let mut staging = Vec::new();
        // Only the empirical Fisher's curvature reads the targets.
        let with_targets = post.curvature == super::Curvature::EmpiricalFisher;
        for start in (0..features.rows()).step_by(chunk) {
            crate::interrupt::check()?;
            let rows = chunk.min(features.rows() - start);
            let batch = post.upload_batch_staged(&features, targets, start, rows, &mut staging, with_targets)?;
            let outputs = model.outputs(&batch.phi, &post.moments.head)?;
            let term = state.curvature_term(&model, &batch, &outputs, host_basis)?;
            state.add_curvature(device, &mut sum, &batch.phi, &term, T::one(), device_basis)?;
            sum.weight += rows as f64;
            features.release(device, batch.phi, &mut staging);
        }
        self.add(sum, features.rows())
    }

    /// Adds a partial sum: moved in when this accumulator is empty (bit-exact), else added.
    fn add(&mut self, sum: DataTerm<D, T>, count: usize) -> Result<()> {
        self.sum = match self.count {
            0 => sum,
            _ => self.sum.sum(&self.shell.device, &sum)?,
        };
        self.count += count;
        Ok(())
    }

    /// Adds another accumulator's sums. It must have the same structure, likelihood,
    /// curvature, bias mode, shape and a bit-identical head and bias; otherwise
    /// `InvalidArgument` and nothing changes.
    pub fn merge(&mut self, other: &Self) -> Result<()> {
        let (a, b) = (&self.shell, &other.shell);
        let same = a.structure() == b.structure()
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
        let (kind, k, da) = (a.structure(), a.classes, a.augmented_features());
        crate::memory::ensure_on(
            &a.device,
            super::resident_bytes(kind, k, da, std::mem::size_of::<T>()),
            || format!("merging the accumulators of {}", describe::<T>(kind, k, da)),
            |_| String::new(),
        )?;
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
        let sum = other.sum.copy(&self.shell.device)?;
        self.add(sum, other.count)
    }

    /// The posterior `Π = τ I + sum`, `Σ = Π⁻¹`, around the accumulator's head.
    ///
    /// Errors: `InvalidArgument` (τ ≤ 0), `NotPositiveDefinite`.
    pub fn finish(&self, prior_precision: f64) -> Result<Posterior<D, T>> {
        let device = self.shell.device.clone();
        device.scope(|| {
            let sum = self.sum.copy(&device)?;
            self.finish_with(self.shell.try_clone()?, sum, prior_precision)
        })
    }

    /// [`CurvatureAccumulator::finish`] without copying the sum: the accumulator is consumed.
    pub fn into_posterior(mut self, prior_precision: f64) -> Result<Posterior<D, T>> {
        let device = self.shell.device.clone();
        device.scope(|| {
            let empty = DataTerm {
                parts: Vec::new(),
                weight: 0.0,
            };
            let sum = std::mem::replace(&mut self.sum, empty);
            let shell = self.shell.try_clone()?;
            self.finish_with(shell, sum, prior_precision)
        })
    }

    /// The posterior around `out` (the shell) from the data term `sum` (taken).
    fn finish_with(
        &self,
        mut out: Posterior<D, T>,
        sum: DataTerm<D, T>,
        prior_precision: f64,
    ) -> Result<Posterior<D, T>> {
        let tau: T = positive("prior_precision", prior_precision)?;
        let device = &self.shell.device;
        let basis = self.basis.as_ref().map(|(_, d)| d);
        out.moments.state = self.shell.moments.state.finish(device, sum, tau, basis)?;
        out.prior_precision = vec![tau];
        out.samples_seen = self.count;
        Ok(out)
    }

    /// The accumulator's contents for the io layer: the shell's, with the data term's parts
    /// as its factors.
    pub(crate) fn to_raw(&self) -> Result<super::RawPosterior<T>> {
        let mut raw = self.shell.to_raw()?;
        let device = &self.shell.device;
        let names = self.shell.moments.state.sum_names();
        raw.precision = Vec::new();
        raw.covariance = Vec::new();
        raw.samples_seen = self.count;
        raw.factor_weight = self.sum.weight;
        raw.factors = names
            .iter()
            .zip(&self.sum.parts)
            .map(|(name, part)| {
                Ok(RawTensor {
                    name: name.to_string(),
                    rows: part.rows(),
                    cols: part.cols(),
                    values: device.download(part)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(raw)
    }

    /// Rebuilds an accumulator from its contents, checking every shape and value.
    pub(crate) fn from_raw(device: &D, raw: super::RawPosterior<T>, chunk_rows: usize) -> Result<Self> {
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
        let names = acc.shell.moments.state.sum_names();
        for (name, part) in names.iter().zip(acc.sum.parts.iter_mut()) {
            let stored = raw
                .factors
                .iter()
                .find(|t| t.name == *name)
                .ok_or_else(|| Error::invalid("sum", format!("missing part `{name}` of the sum")))?;
            if (stored.rows, stored.cols) != part.shape() || stored.values.len() != part.len() {
                return Err(Error::shape("sum", part.shape(), (stored.rows, stored.cols)));
            }
            crate::host::check_finite("sum", &stored.values)?;
            *part = device.upload(&stored.values, stored.rows, stored.cols)?;
        }
        if !(raw.factor_weight.is_finite() && raw.factor_weight >= 0.0) {
            return Err(Error::invalid("kron_weight", "must be finite and ≥ 0"));
        }
        acc.sum.weight = raw.factor_weight;
        acc.count = raw.samples_seen;
        Ok(acc)
    }
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

/// `OutOfMemory`, naming the structures that would fit, when a fit of `structure` at K
/// classes and D_aug columns needs more than the [memory budget](crate::memory).
fn fit_fits_in_memory<D: Device, T: Scalar>(
    device: &D,
    structure: super::Structure,
    k: usize,
    da: usize,
) -> Result<()> {
    let elem = std::mem::size_of::<T>();
    crate::memory::ensure_on(
        device,
        fit_bytes(structure, k, da, elem),
        || format!("{} with its fit's workspace", describe::<T>(structure, k, da)),
        |available| cheaper_structures(structure, k, da, elem, available),
    )
}
