//! [`fit_head`]: the MAP last layer for users who have features but no head, and the
//! "retrain" baseline every update is compared against.

use super::{logits, positive};
use crate::device::ops;
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
    /// Which search direction the iterations take.
    pub solver: HeadSolver,
}

/// The search direction of [`fit_head`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadSolver {
    /// Newton while `P = K·D_aug ≤ 4096`, L-BFGS above.
    #[default]
    Auto,
    /// Newton with the Full GGN `τI + Σ_n Λ_n ⊗ φ_nφ_nᵀ` (the exact Hessian of softmax
    /// regression): one P × P Cholesky per iteration, quadratic convergence.
    Newton,
    /// L-BFGS: O(P · memory) per iteration, for large P.
    Lbfgs,
}

/// Largest P for which [`HeadSolver::Auto`] takes Newton steps.
const NEWTON_MAX_WEIGHTS: usize = 4096;

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig {
            prior_precision: 1.0,
            bias: true,
            max_iterations: 500,
            tolerance: 1e-5,
            memory: 10,
            solver: HeadSolver::Auto,
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

/// What a head is fitted to: class labels, or regression targets (N × K).
#[derive(Clone, Copy)]
pub enum HeadTargets<'a, T> {
    /// Class labels, 0 … K−1.
    Labels(&'a [i64]),
    /// Real targets, one row per sample.
    Values(HostMatrix<'a, T>),
}

/// The MAP head for `targets` under the prior `τ/2 ‖w‖²`, as a fit needs one when none is
/// given: softmax regression by [`fit_head`] over `classes` (default: the largest label + 1),
/// or ridge regression by [`fit_head_gaussian`] with noise `sigma_noise`.
///
/// ```
/// use laplace_update::{CpuDevice, HostMatrix, posterior::{fit_map_head, HeadTargets}};
/// let cpu = CpuDevice::new(1)?;
/// let phi = [1.0f64, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.8];
/// let x = HostMatrix::new(&phi, 4, 2)?;
/// let fit = fit_map_head(&cpu, x, HeadTargets::Labels(&[0, 0, 1, 1]), None, 1.0, 1.0)?;
/// assert_eq!(fit.bias.len(), 2);
/// # Ok::<(), laplace_update::Error>(())
/// ```
pub fn fit_map_head<D: Device, T: Scalar>(
    device: &D,
    features: HostMatrix<'_, T>,
    targets: HeadTargets<'_, T>,
    classes: Option<usize>,
    prior_precision: f64,
    sigma_noise: f64,
) -> Result<HeadFit<T>> {
    match targets {
        HeadTargets::Labels(labels) => {
            let classes = classes.unwrap_or_else(|| labels.iter().copied().max().map_or(0, |m| m.max(0) as usize + 1));
            let config = HeadConfig {
                prior_precision,
                ..Default::default()
            };
            fit_head(device, features, labels, classes, &config)
        }
        HeadTargets::Values(values) => fit_head_gaussian(device, features, values, prior_precision, sigma_noise),
    }
}

/// The MAP head of the Gaussian linear model `y = W φ + b + ε`, `ε ~ N(0, σ² I)`, with the
/// prior `τ/2 ‖[W, b]‖²`: the ridge solution `[W, b]ᵀ = (τσ² I + Φ_aᵀ Φ_a)⁻¹ Φ_aᵀ Y` with
/// `Φ_a = [Φ, 1]`, from one exact Newton step of the Bayesian linear model from the prior
/// (Shared structure, so its cost is one D_aug × D_aug solve).
///
/// ```
/// use laplace_update::{CpuDevice, HostMatrix, posterior::fit_head_gaussian};
/// let cpu = CpuDevice::new(1)?;
/// let phi = [0.0f64, 1.0, 2.0, 3.0];
/// let y = [1.0f64, 3.0, 5.0, 7.0]; // y = 2φ + 1
/// let fit = fit_head_gaussian(&cpu, HostMatrix::new(&phi, 4, 1)?, HostMatrix::new(&y, 4, 1)?, 1e-9, 1.0)?;
/// assert!((fit.weights[0] - 2.0).abs() < 1e-6 && (fit.bias[0] - 1.0).abs() < 1e-6);
/// # Ok::<(), laplace_update::Error>(())
/// ```
pub fn fit_head_gaussian<D: Device, T: Scalar>(
    device: &D,
    features: HostMatrix<'_, T>,
    targets: HostMatrix<'_, T>,
    prior_precision: f64,
    sigma_noise: f64,
) -> Result<HeadFit<T>> {
    use super::{BiasMode, FitConfig, Likelihood, OutputWeighting, Posterior, Structure, UpdateConfig};
    let k = targets.cols();
    let d = features.cols();
    let config = FitConfig {
        structure: Structure::Shared(OutputWeighting::Gaussian),
        likelihood: Likelihood::Regression { sigma_noise },
        prior_precision,
        bias: BiasMode::InPosterior,
        ..Default::default()
    };
    let zero = vec![T::zero(); k * d];
    let mut map = Posterior::prior(device, HostMatrix::new(&zero, k, d)?, None, &config)?;
    map.update(features, &targets, &UpdateConfig::default())?;
    Ok(HeadFit {
        weights: map.head()?,
        bias: map.bias()?,
        iterations: 1,
        gradient_norm: 0.0,
        objective: f64::NAN,
        converged: true,
    })
}

/// The MAP head of softmax regression with an L2 prior, minimising
/// `J(w) = −Σ_n log softmax(W φ_n + b)_{y_n} + τ/2 ‖w‖²` by Newton (Full GGN Hessian) or
/// L-BFGS steps (see [`HeadSolver`]) with a backtracking (Armijo) line search.
///
/// Logits, gradients (`∇J = (P − Y)ᵀ Φ + τ w`) and the Newton system are computed on the
/// device; the L-BFGS recursion runs in f64 on the host over the `K·D` weights. Starts from
/// zero.
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
            let row: Vec<f64> = f[i * classes..(i + 1) * classes].iter().map(|x| x.as_f64()).collect();
            loss -= row[y[i]] - crate::numerics::log_sum_exp(&row);
            for (c, p) in crate::numerics::softmax(&row).into_iter().enumerate() {
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
    let newton = match config.solver {
        HeadSolver::Newton => true,
        HeadSolver::Lbfgs => false,
        HeadSolver::Auto => dim <= NEWTON_MAX_WEIGHTS,
    };
    // −H⁻¹ g with H = τI + Σ_n Λ_n ⊗ φ_nφ_nᵀ at w.
    let newton_direction = |w: &[f64], g: &[f64]| -> Result<Vec<f64>> {
        let cast = |v: &[f64]| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
        let head = device.upload(&cast(w), classes, da)?;
        let mut probs = logits(device, &phi, &head, None)?;
        ops::softmax_rows(device, &mut probs)?;
        let mut hessian = device.zeros(dim, dim)?;
        device.add_diagonal(&mut hessian, T::from_f64(tau))?;
        ops::ggn_accumulate(device, &mut hessian, &phi, &probs, None, T::one())?;
        device.cholesky(&mut hessian)?;
        let mut x = device.upload(&cast(g), dim, 1)?;
        device.triangular_solve(&hessian, &mut x, Op::N)?;
        device.triangular_solve(&hessian, &mut x, Op::T)?;
        Ok(device.download(&x)?.iter().map(|v| -v.as_f64()).collect())
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
        crate::interrupt::check()?;
        let (mut direction, mut slope) = if newton {
            let direction = newton_direction(&w, &g)?;
            let slope = dot(&g, &direction);
            (direction, slope)
        } else {
            lbfgs_direction(&history, &g)
        };
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

/// L-BFGS two-loop recursion: the direction `−H g` for the inverse-Hessian estimate H of the
/// stored pairs `(s, y, 1/sᵀy)`, and its slope `gᵀ d`.
fn lbfgs_direction(history: &std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)>, g: &[f64]) -> (Vec<f64>, f64) {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let norm_inf = g.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let mut q = g.to_vec();
    let mut alphas = Vec::with_capacity(history.len());
    for (s, yv, rho) in history.iter().rev() {
        let a = rho * dot(s, &q);
        q.iter_mut().zip(yv).for_each(|(qi, yi)| *qi -= a * yi);
        alphas.push(a);
    }
    let scale = history
        .back()
        .map_or(1.0 / norm_inf.max(1.0), |(s, yv, _)| dot(s, yv) / dot(yv, yv));
    q.iter_mut().for_each(|x| *x *= scale);
    for ((s, yv, rho), a) in history.iter().zip(alphas.iter().rev()) {
        let b = rho * dot(yv, &q);
        q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
    }
    let direction: Vec<f64> = q.iter().map(|x| -x).collect();
    let slope = dot(g, &direction);
    (direction, slope)
}
