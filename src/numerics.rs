//! Host numerics shared by the posterior, the devices and the active-learning strategies: one
//! stable softmax, one log-sum-exp, one floored NLL, one vectorised dot product, one PSD Cholesky with one zero-pivot rule.

use crate::scalar::Scalar;

/// `log Σ_i e^{x_i}`, shifted by the maximum so that no term overflows; `−∞` for no terms.
pub(crate) fn log_sum_exp<T: Scalar>(x: &[T]) -> T {
    let max = x.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
    if !max.is_finite() {
        return max;
    }
    max + x.iter().fold(T::zero(), |s, &v| s + (v - max).exp()).ln()
}

/// The probability below which a label's probability counts as this value in a negative
/// log-likelihood, so that one confident mistake costs `−ln 1e-12 ≈ 27.6` and not infinity.
pub(crate) const PROBABILITY_FLOOR: f64 = 1e-12;

/// `−ln max(p, 1e-12)`: one sample's negative log-likelihood from its label's probability.
pub(crate) fn label_nll(p: f64) -> f64 {
    -p.max(PROBABILITY_FLOOR).ln()
}

/// f64 values converted to the working precision T.
pub(crate) fn from_f64s<T: Scalar>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

/// `Σ_i a_i b_i` with 16 independent partial sums, so that the reduction vectorises instead of
/// waiting on one running sum (the sequential Sherman–Morrison loops and BAIT are made of these).
pub(crate) fn dot<T: Scalar>(a: &[T], b: &[T]) -> T {
    const LANES: usize = 16;
    let mut acc = [T::zero(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let tail = ra.iter().zip(rb).fold(T::zero(), |s, (x, y)| s + *x * *y);
    acc.iter().fold(tail, |s, &v| s + v)
}

/// `x ← softmax(x) = e^{x − max} / Σ e^{x − max}` in place.
pub(crate) fn softmax_in_place<T: Scalar>(x: &mut [T]) {
    let max = x.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
    let mut sum = T::zero();
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `softmax(x)` as a new vector.
pub(crate) fn softmax<T: Scalar>(x: &[T]) -> Vec<T> {
    let mut out = x.to_vec();
    softmax_in_place(&mut out);
    out
}

/// Row-wise softmax of a row-major n × k matrix.
pub(crate) fn softmax_rows<T: Scalar>(x: &[T], k: usize) -> Vec<T> {
    let mut out = x.to_vec();
    out.chunks_mut(k.max(1)).for_each(softmax_in_place);
    out
}

/// Rounding units of the zero-pivot rule: a pivot at or below `PIVOT_ULPS · ε · K · max_k Σ_kk`
/// (ε of the precision the factorisation runs in) counts as zero. The one rule for the host
/// ([`psd_cholesky`], f64) and the Monte Carlo kernels (`shaders/predictive.wgsl`,
/// `kernels/predictive.cu`, in the working precision), which spell the same constant.
pub(crate) const PIVOT_ULPS: f64 = 64.0;

/// The pivot below which [`psd_cholesky`] counts a pivot as zero, from the variances
/// (the diagonal): pivots at rounding level relative to the largest variance, so that a rank-
/// deficient covariance does not divide rounding noise by rounding noise.
pub(crate) fn psd_pivot_floor(variances: &[f64]) -> f64 {
    PIVOT_ULPS * f64::EPSILON * variances.iter().copied().fold(0.0, f64::max) * variances.len() as f64
}

/// Lower Cholesky factor of a small PSD matrix (row-major k × k) in f64, in place, the strict
/// upper triangle zeroed. Pivots at or below [`psd_pivot_floor`] count as zero, so semidefinite
/// inputs (softmax logit covariances have rank K − 1) give a valid factor. The one rule for the
/// Monte Carlo link and BALD.
pub(crate) fn psd_cholesky(a: &mut [f64], k: usize) {
    let floor = psd_pivot_floor(&(0..k).map(|j| a[j * k + j]).collect::<Vec<f64>>());
    for j in 0..k {
        let mut d = a[j * k + j];
        for p in 0..j {
            d -= a[j * k + p] * a[j * k + p];
        }
        let d = if d > floor { d.sqrt() } else { 0.0 };
        a[j * k + j] = d;
        for i in j + 1..k {
            let mut s = a[i * k + j];
            for p in 0..j {
                s -= a[i * k + p] * a[j * k + p];
            }
            a[i * k + j] = if d > 0.0 { s / d } else { 0.0 };
        }
        for i in 0..j {
            a[i * k + j] = 0.0;
        }
    }
}

/// Search interval of the prior precision τ.
pub(crate) const TAU_RANGE: (f64, f64) = (1e-10, 1e10);

/// The τ that maximises `−½τ‖w‖² + ½P log τ − ½ c Σ_i log(h_i + τ)` (P = c·len(h)): the root
/// of `c Σ_i h_i/(h_i + τ) − τ‖w‖²`, which decreases in τ, by bisection on log τ.
pub(crate) fn evidence_root(h: &[f64], multiplicity: f64, norm: f64) -> f64 {
    let slope = |tau: f64| multiplicity * h.iter().map(|x| x / (x + tau)).sum::<f64>() - tau * norm;
    let (mut lo, mut hi) = (TAU_RANGE.0.ln(), TAU_RANGE.1.ln());
    if slope(hi.exp()) >= 0.0 {
        return TAU_RANGE.1;
    }
    if slope(lo.exp()) <= 0.0 {
        return TAU_RANGE.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if slope(mid.exp()) > 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (0.5 * (lo + hi)).exp()
}

#[cfg(test)]
mod pivot_rule_tests {
    use super::PIVOT_ULPS;

    /// The Monte Carlo kernels spell the host's zero-pivot constant.
    #[test]
    fn kernels_use_the_host_pivot_rule() {
        let wgsl = include_str!("../shaders/predictive.wgsl");
        assert!(wgsl.contains(&format!("{PIVOT_ULPS:.1} * 1.1920929e-7 * dmax * f32(k)")));
        let cuda = include_str!("../kernels/predictive.cu");
        assert!(cuda.contains(&format!("T({PIVOT_ULPS}) * eps_t * dmax * T(k)")));
    }
}
