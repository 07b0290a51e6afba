//! [`fit_head`]: the MAP last layer for users who have features but no head, and the
//! "retrain" baseline every update is compared against.

use super::{logits, positive};
use crate::device::{Device, Op};
use crate::error::{Error, Result};
use crate::host::{HostMatrix, Label, check_features, check_labels, feature_rows};
use crate::scalar::Scalar;

/// Settings of [`fit_head`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadConfig {
    /// Prior precision τ of the L2 prior `τ/2 ‖w‖²`.
    pub prior_precision: f64,
    /// Whether to fit a bias (with the same prior); without, the bias is zero.
    pub bias: bool,
    /// Iteration cap.
    pub max_iterations: usize,
    /// Stop when `‖∇J(w)‖_∞ ≤ tolerance · max(1, ‖∇J(w₀)‖_∞)`.
    pub tolerance: f64,
    /// Number of curvature pairs L-BFGS keeps.
    pub memory: usize,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig {
            prior_precision: 1.0,
            bias: true,
            max_iterations: 500,
            tolerance: 1e-5,
            memory: 10,
        }
    }
}

/// The fitted head.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadFit<T> {
    /// W, K × D row-major.
    pub weights: Vec<T>,
    /// b, length K (zeros when no bias was fitted).
    pub bias: Vec<T>,
    /// Iterations taken.
    pub iterations: usize,
    /// `‖∇J‖_∞` at the returned head.
    pub gradient_norm: f64,
    /// The objective `J(w) = −Σ_n log p(y_n | φ_n, w) + τ/2 ‖w‖²` there.
    pub objective: f64,
    /// Whether the tolerance was met within the iteration cap.
    pub converged: bool,
}

/// The MAP head of softmax regression with an L2 prior, by L-BFGS with a backtracking
/// (Armijo) line search, minimising `J(w) = −Σ_n log softmax(W φ_n + b)_{y_n} + τ/2 ‖w‖²`.
///
/// Logits and gradients (`∇J = (P − Y)ᵀ Φ + τ w`) are computed on the device; the L-BFGS
/// recursion runs in f64 on the host over the `K·D` weights. Starts from zero.
///
/// ```
/// use laplace_update::{CpuDevice, HostMatrix, posterior::{fit_head, HeadConfig}};
/// let cpu = CpuDevice::new(1)?;
/// let phi = [1.0f64, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.8];
/// let fit = fit_head(&cpu, HostMatrix::new(&phi, 4, 2)?, &[0u8, 0, 1, 1], 2, &HeadConfig::default())?;
/// assert!(fit.converged && fit.weights[0] > fit.weights[2]);
/// # Ok::<(), laplace_update::Error>(())
/// ```
pub fn fit_head<D: Device, T: Scalar, L: Label>(
    device: &D,
    features: HostMatrix<'_, T>,
    labels: &[L],
    classes: usize,
    config: &HeadConfig,
) -> Result<HeadFit<T>> {
    let tau: f64 = positive::<f64>("prior_precision", config.prior_precision)?;
    if classes < 2 {
        return Err(Error::invalid("classes", format!("needs at least 2, got {classes}")));
    }
    if config.memory == 0 {
        return Err(Error::invalid("memory", "must be at least 1"));
    }
    if !(config.tolerance.is_finite() && config.tolerance >= 0.0) {
        return Err(Error::invalid("tolerance", "must be finite and >= 0"));
    }
    if features.cols() == 0 {
        return Err(Error::invalid("features", "need at least one column"));
    }
    check_features("features", &features, features.cols())?;
    check_labels(labels, features.rows(), classes)?;
    let (n, d) = (features.rows(), features.cols());
    let da = d + usize::from(config.bias);
    let dim = classes * da;
    let phi = device.upload(&feature_rows(&features, 0, n, config.bias), n, da)?;
    let y: Vec<usize> = labels.iter().map(|l| l.to_i64() as usize).collect();

    // J(w) and ∇J(w), in f64.
    let evaluate = |w: &[f64]| -> Result<(f64, Vec<f64>)> {
        let head: Vec<T> = w.iter().map(|&x| T::from_f64(x)).collect();
        let head = device.upload(&head, classes, da)?;
        let f = device.download(&logits(device, &phi, &head, None)?)?;
        let mut residual = vec![T::zero(); n * classes];
        let mut loss = 0.0;
        for i in 0..n {
            let row = &f[i * classes..(i + 1) * classes];
            let max = row.iter().fold(f64::NEG_INFINITY, |m, x| m.max(x.as_f64()));
            let sum: f64 = row.iter().map(|x| (x.as_f64() - max).exp()).sum();
            loss -= row[y[i]].as_f64() - max - sum.ln();
            for c in 0..classes {
                let p = (row[c].as_f64() - max).exp() / sum;
                residual[i * classes + c] = T::from_f64(p - f64::from(u8::from(c == y[i])));
            }
        }
        let residual = device.upload(&residual, n, classes)?;
        let mut grad = device.zeros(classes, da)?;
        device.gemm(&mut grad, T::zero(), &residual, Op::T, &phi, Op::N, T::one())?;
        let mut g: Vec<f64> = device.download(&grad)?.iter().map(|x| x.as_f64()).collect();
        g.iter_mut().zip(w).for_each(|(gi, wi)| *gi += tau * wi);
        loss += 0.5 * tau * w.iter().map(|x| x * x).sum::<f64>();
        Ok((loss, g))
    };
    let norm_inf = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();

    let mut w = vec![0.0f64; dim];
    let (mut loss, mut g) = evaluate(&w)?;
    let target = config.tolerance * norm_inf(&g).max(1.0);
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    let mut iterations = 0;
    let mut converged = norm_inf(&g) <= target;
    while !converged && iterations < config.max_iterations {
        // Two-loop recursion: direction = −H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, yv, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(yv).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        let scale = history
            .back()
            .map_or(1.0 / norm_inf(&g).max(1.0), |(s, yv, _)| dot(s, yv) / dot(yv, yv));
        q.iter_mut().for_each(|x| *x *= scale);
        for ((s, yv, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(yv, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let mut direction: Vec<f64> = q.iter().map(|x| -x).collect();
        let mut slope = dot(&g, &direction);
        if slope >= 0.0 {
            // Not a descent direction: restart from steepest descent.
            history.clear();
            direction = g.iter().map(|x| -x / norm_inf(&g).max(1.0)).collect();
            slope = dot(&g, &direction);
        }
        let mut step = 1.0;
        let accepted = loop {
            let trial: Vec<f64> = w.iter().zip(&direction).map(|(wi, di)| wi + step * di).collect();
            let (trial_loss, trial_g) = evaluate(&trial)?;
            if trial_loss.is_finite() && trial_loss <= loss + 1e-4 * step * slope {
                break Some((trial, trial_loss, trial_g));
            }
            step *= 0.5;
            if step < 1e-12 {
                break None;
            }
        };
        iterations += 1;
        let Some((w_new, loss_new, g_new)) = accepted else {
            break; // no decrease is possible at this precision
        };
        let s: Vec<f64> = w_new.iter().zip(&w).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &yv);
        if sy > 1e-12 * dot(&yv, &yv).sqrt() * dot(&s, &s).sqrt() {
            if history.len() == config.memory {
                history.pop_front();
            }
            history.push_back((s, yv, 1.0 / sy));
        }
        (w, loss, g) = (w_new, loss_new, g_new);
        converged = norm_inf(&g) <= target;
    }
    let weights = (0..classes)
        .flat_map(|k| w[k * da..k * da + d].iter().map(|&x| T::from_f64(x)))
        .collect();
    let bias = (0..classes)
        .map(|k| {
            if config.bias {
                T::from_f64(w[k * da + d])
            } else {
                T::zero()
            }
        })
        .collect();
    Ok(HeadFit {
        weights,
        bias,
        iterations,
        gradient_norm: norm_inf(&g),
        objective: loss,
        converged,
    })
}
