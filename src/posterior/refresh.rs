//! Drift of the stored covariance from the precision's inverse, and when it is refreshed.

use super::{Posterior, positive};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::scalar::Scalar;

/// When [`Posterior::update`] checks the drift of Σ against Π and refreshes Σ from Π.
///
/// After every `every` updated samples, the drift is estimated on `probes` seeded columns,
/// `max |(ΠΣ − I)[:, j]|` (two n × probes products), and Σ is recomputed from Π when it exceeds
/// `threshold`. So at every check the drift is at most `threshold`; between checks it grows by
/// what `every` updates add, unless the element type cannot do better: after a refresh that
/// leaves the drift at `f`, the next refresh waits for `2f`. The check costs about
/// `4 n² · probes` flops (n the side of Σ), the refresh one Cholesky inverse; a refresh that
/// fails leaves the (successful) update as it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshPolicy {
    /// Updated samples between checks (≥ 1).
    pub every: usize,
    /// Largest drift left in place.
    pub threshold: f64,
    /// Columns of ΠΣ − I examined per check (≥ 1).
    pub probes: usize,
}

impl Default for RefreshPolicy {
    /// Every 1,000 samples, threshold 1e-4, 8 probe columns.
    fn default() -> Self {
        RefreshPolicy {
            every: 1000,
            threshold: 1e-4,
            probes: 8,
        }
    }
}

impl<D: Device, T: Scalar> Posterior<D, T> {
    /// Numerical drift of the stored pair: `max_ij |(Π Σ − I)_ij|`, the entrywise max-abs norm
    /// (Diag and Kron: `max |π σ − 1|` over their eigenvalues).
    ///
    /// Costs one product of the stored matrices. Exact arithmetic gives 0; updates in floating
    /// point let it grow, and [`Posterior::refresh`] resets it.
    pub fn drift(&self) -> Result<T> {
        self.moments.state.drift(&self.device, None)
    }

    /// The automatic drift check of [`Posterior::update`] (on by default).
    pub fn refresh_policy(&self) -> Option<RefreshPolicy> {
        self.refresh_policy
    }

    /// Sets (or, with `None`, turns off) the automatic drift check.
    ///
    /// Errors: `InvalidArgument` for `every` or `probes` of 0, or a threshold that is not
    /// finite and positive.
    pub fn set_refresh_policy(&mut self, policy: Option<RefreshPolicy>) -> Result<()> {
        if let Some(p) = policy {
            if p.every == 0 || p.probes == 0 {
                return Err(Error::invalid(
                    "refresh_policy",
                    "`every` and `probes` must be at least 1",
                ));
            }
            positive::<f64>("threshold", p.threshold)?;
        }
        self.refresh_policy = policy;
        self.since_check = 0;
        Ok(())
    }

    /// `max_j |(ΠΣ − I)[:, j]|` over `probes` columns j drawn from `seed`: a lower bound of
    /// [`Posterior::drift`] at O(n² · probes) cost.
    pub fn drift_estimate(&self, probes: usize, seed: u64) -> Result<T> {
        self.moments.state.drift(&self.device, Some((probes, seed)))
    }

    /// Runs the refresh policy after `m` updated samples.
    pub(crate) fn after_update(&mut self, m: usize) {
        let Some(policy) = self.refresh_policy else { return };
        self.since_check += m;
        if self.since_check < policy.every {
            return;
        }
        self.since_check = 0;
        let seed = self.samples_seen as u64;
        let Ok(drift) = self.drift_estimate(policy.probes, seed) else {
            return;
        };
        let drift = drift.as_f64();
        // Refresh above the threshold, unless the last refresh could do no better: an f32
        // inverse of a badly conditioned precision has a floor, and refreshing down to it
        // again would cost a Cholesky inverse every check for nothing.
        let due = drift.is_nan() || (drift > policy.threshold && drift > 2.0 * self.drift_floor);
        if due && self.refresh().is_ok() {
            self.drift_floor = self.drift_estimate(policy.probes, seed).map_or(0.0, |d| d.as_f64());
        }
    }

    /// Recomputes `Σ = Π⁻¹` from the precision (Cholesky, or the reciprocals of the
    /// eigenvalues), discarding accumulated drift. On failure the posterior is unchanged.
    pub fn refresh(&mut self) -> Result<()> {
        self.moments.state.refresh_covariance(&self.device)
    }
}
