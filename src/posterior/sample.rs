//! [`Posterior::sample_heads`]: draws from the posterior over the head.

use super::{Posterior, Structure};
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
        let factor = |side: usize| -> Result<faer::Mat<f64>> {
            let mut l = device.copy(&self.moments.covariance)?;
            device.cholesky(&mut l)?;
            let l = device.download(&l)?;
            Ok(faer::Mat::<f64>::from_fn(side, side, |i, j| l[i * side + j].as_f64()))
        };
        let draws: faer::Mat<f64> = match self.structure {
            Structure::Full => &factor(p)? * &z_mat,
            Structure::Shared(_) => {
                let l = factor(da)?;
                let mut out = faer::Mat::<f64>::zeros(p, samples);
                for c in 0..k {
                    let block = &l * z_mat.as_ref().subrows(c * da, da);
                    out.as_mut().subrows_mut(c * da, da).copy_from(&block);
                }
                out
            }
            Structure::Diag => {
                let var = device.download(&self.moments.covariance)?;
                faer::Mat::<f64>::from_fn(p, samples, |i, s| var[i].as_f64().max(0.0).sqrt() * z_mat[(i, s)])
            }
            Structure::Kron => {
                let (_, _, ua, ug) = self
                    .kron_factors()?
                    .ok_or_else(|| Error::invalid("structure", "Kron factors missing"))?;
                let var = device.download(&self.moments.covariance)?;
                let ua = faer::Mat::<f64>::from_fn(k, k, |i, j| ua[i * k + j].as_f64());
                let ug = faer::Mat::<f64>::from_fn(da, da, |i, j| ug[i * da + j].as_f64());
                let mut out = faer::Mat::<f64>::zeros(p, samples);
                for s in 0..samples {
                    // X = U_A (Z_s ∘ √var) U_Gᵀ with Z_s the K × D_aug draw.
                    let zs = faer::Mat::<f64>::from_fn(k, da, |c, t| {
                        z_mat[(c * da + t, s)] * var[c * da + t].as_f64().max(0.0).sqrt()
                    });
                    let x = &ua * &zs * ug.transpose();
                    for c in 0..k {
                        for t in 0..da {
                            out[(c * da + t, s)] = x[(c, t)];
                        }
                    }
                }
                out
            }
        };
        Ok((0..samples)
            .flat_map(|s| {
                let (draws, mean) = (&draws, &mean);
                (0..p).map(move |i| T::from_f64(mean[i] + draws[(i, s)]))
            })
            .collect())
    }
}
