//! [`Posterior::sample_heads`]: draws from the posterior over the head.

use super::Posterior;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::random::SplitMix64;
use crate::scalar::Scalar;

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// `samples` heads `w_s = ŵ + L z_s ~ N(ŵ, Σ)`, `L Lᵀ = Σ`, `z_s` standard normal drawn from
    /// `seed`; returned as `samples × K × D_aug` row-major (the bias column last when the bias
    /// is in the posterior). L is the Cholesky factor (Full: P × P; Shared: `I_K ⊗ L_D`), the
    /// square roots of the variances (Diag), or `(U_A ⊗ U_G) diag(λ)^{-1/2}` (Kron).
    ///
    /// Errors: `InvalidArgument` for 0 samples, `NotPositiveDefinite`.
    pub fn sample_heads(&self, samples: usize, seed: u64) -> Result<Vec<T>> {
        if samples == 0 {
            return Err(Error::invalid("samples", "at least one sample is required"));
        }
        let device = &self.device;
        let (k, da) = (self.classes, self.augmented_features());
        let p = k * da;
        let mean: Vec<f64> = device
            .download(&self.moments.head)?
            .iter()
            .map(|x| x.as_f64())
            .collect();
        let z = SplitMix64::new(seed).normals(samples * p);
        // Z as P × S (column s is z_s).
        let z_mat = faer::Mat::<f64>::from_fn(p, samples, |i, s| z[s * p + i]);
        let draws = self.moments.state.sample_factor(device, z_mat.as_ref(), k, da)?;
        Ok((0..samples)
            .flat_map(|s| {
                let (draws, mean) = (&draws, &mean);
                (0..p).map(move |i| T::from_f64(mean[i] + draws[(i, s)]))
            })
            .collect())
    }
}
