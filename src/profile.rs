//! Kernel workloads with their operation counts, shared by the criterion benches and the
//! `profile` command: one definition of each kernel's work, timed the same way everywhere.

use crate::device::ops;
use std::time::{Duration, Instant};

use crate::device::{Device, LowRankFactor, Matrix, Op, OutputWeighting, Sign};
use crate::error::Result;
use crate::random::SplitMix64;
use crate::scalar::Scalar;

/// Problem sizes: feature dimension D, classes K, samples N (fit-like kernels), new samples m
/// (update-like kernels); the Full weight count is `P = K·D`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Feature dimension D.
    pub d: usize,
    /// Classes K.
    pub k: usize,
    /// Samples N of the accumulation and prediction kernels.
    pub n: usize,
    /// New samples m of the update kernels.
    pub m: usize,
}

impl Sizes {
    /// Parses `D,K,N,m`.
    pub fn parse(text: &str) -> Result<Sizes> {
        let v: Vec<usize> = text
            .split(',')
            .map(|t| t.trim().parse::<usize>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| crate::Error::invalid("sizes", format!("expected D,K,N,m, got `{text}`")))?;
        match v[..] {
            [d, k, n, m] if d > 0 && k > 1 && n > 0 && m > 0 => Ok(Sizes { d, k, n, m }),
            _ => Err(crate::Error::invalid(
                "sizes",
                format!("expected D,K,N,m (D, N, m ≥ 1, K ≥ 2), got `{text}`"),
            )),
        }
    }
}

/// What a kernel's time is divided by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Work {
    /// Floating-point operations (a multiply-add counts 2).
    Flops(f64),
    /// Bytes read and written.
    Bytes(f64),
}

/// One kernel on one device at one size: a closure that runs it once (and synchronises).
pub struct KernelCase<'a> {
    /// Kernel family (the trait method).
    pub family: &'static str,
    /// Shapes, e.g. `"N=10000 D=768 K=10"`.
    pub shape: String,
    /// Work per run.
    pub work: Work,
    run: Box<dyn FnMut() -> Result<()> + 'a>,
}

impl KernelCase<'_> {
    /// Runs the kernel once, synchronised.
    pub fn run(&mut self) -> Result<()> {
        (self.run)()
    }

    /// The median of `repeats` synchronised runs after one warm-up run.
    pub fn time(&mut self, repeats: usize) -> Result<Duration> {
        self.run()?;
        let mut times = Vec::with_capacity(repeats.max(1));
        for _ in 0..repeats.max(1) {
            let start = Instant::now();
            self.run()?;
            times.push(start.elapsed());
        }
        times.sort();
        Ok(times[times.len() / 2])
    }
}

fn random<T: Scalar>(rng: &mut SplitMix64, len: usize, scale: f64) -> Vec<T> {
    (0..len)
        .map(|_| T::from_f64((rng.uniform() - 0.5) * 2.0 * scale))
        .collect()
}

/// A symmetric positive definite n × n matrix `I + XXᵀ/n`.
fn spd<D: Device, T: Scalar>(device: &D, n: usize, rng: &mut SplitMix64) -> Result<Matrix<D, T>> {
    let x = device.upload(&random::<T>(rng, n * n, 1.0), n, n)?;
    let mut a = device.zeros(n, n)?;
    device.gemm(&mut a, T::zero(), &x, Op::N, &x, Op::T, T::from_f64(1.0 / n as f64))?;
    device.add_diagonal(&mut a, T::one())?;
    Ok(a)
}

/// Probabilities: softmax of random logits, n × k.
fn probabilities<D: Device, T: Scalar>(device: &D, n: usize, k: usize, rng: &mut SplitMix64) -> Result<Matrix<D, T>> {
    let mut p = device.upload(&random::<T>(rng, n * k, 3.0), n, k)?;
    ops::softmax_rows(device, &mut p)?;
    Ok(p)
}

/// The kernel families [`kernel_cases`] knows, in its order.
pub const FAMILIES: [&str; 10] = [
    "gemm",
    "weighted_syrk",
    "ggn_accumulate",
    "kron_products",
    "low_rank_update",
    "sherman_morrison_sequence",
    "cholesky",
    "triangular_solve",
    "predictive_covariance",
    "softmax_rows",
];

/// Every kernel family of the [`Device`] trait at `sizes` (or those named in `only`): the
/// inputs are made once, the closures only run the kernel and synchronise.
pub fn kernel_cases<'a, D: Device, T: Scalar>(
    device: &'a D,
    sizes: Sizes,
    only: &[&str],
) -> Result<Vec<KernelCase<'a>>> {
    if let Some(unknown) = only.iter().find(|f| !FAMILIES.contains(f)) {
        return Err(crate::Error::invalid(
            "kernels",
            format!("unknown kernel `{unknown}`; one of {}", FAMILIES.join(", ")),
        ));
    }
    let wanted = |family: &str| only.is_empty() || only.contains(&family);
    let Sizes { d, k, n, m } = sizes;
    let p = k * d;
    let mut rng = SplitMix64::new(7);
    let (df, kf, nf, mf, pf) = (d as f64, k as f64, n as f64, m as f64, p as f64);
    let mut cases: Vec<KernelCase<'a>> = Vec::new();
    let sync = move || device.synchronize();

    if wanted("gemm") {
        // The fit's dominant shape, C (D × D) = Φᵀ Φ with Φ (N × D), as a plain GEMM.
        let phi = device.upload(&random::<T>(&mut rng, n * d, 1.0), n, d)?;
        let mut c = device.zeros::<T>(d, d)?;
        cases.push(KernelCase {
            family: "gemm",
            shape: format!("C({d}x{d}) = A^T A, A {n}x{d}"),
            work: Work::Flops(2.0 * nf * df * df),
            run: Box::new(move || {
                device.gemm(&mut c, T::zero(), &phi, Op::T, &phi, Op::N, T::one())?;
                sync()
            }),
        });
    }

    if wanted("weighted_syrk") {
        let phi = device.upload(&random::<T>(&mut rng, n * d, 1.0), n, d)?;
        let weights = device.upload(&random::<T>(&mut rng, n, 1.0), n, 1)?;
        let mut c = device.zeros::<T>(d, d)?;
        cases.push(KernelCase {
            family: "weighted_syrk",
            shape: format!("N={n} D={d}"),
            work: Work::Flops(nf * df * (df + 1.0)),
            run: Box::new(move || {
                device.weighted_syrk(&mut c, T::one(), &phi, Some(&weights), T::one())?;
                sync()
            }),
        });
    }

    if wanted("ggn_accumulate") {
        // Σ_n Λ_n ⊗ φφᵀ: the SYRK of the N × P matrix plus K diagonal blocks.
        let phi = device.upload(&random::<T>(&mut rng, n * d, 1.0), n, d)?;
        let probs = probabilities::<D, T>(device, n, k, &mut rng)?;
        let mut prec = device.zeros::<T>(p, p)?;
        cases.push(KernelCase {
            family: "ggn_accumulate",
            shape: format!("N={n} D={d} K={k}"),
            work: Work::Flops(nf * pf * (pf + 1.0) + kf * nf * df * (df + 1.0)),
            run: Box::new(move || {
                ops::ggn_accumulate(device, &mut prec, &phi, &probs, None, T::one())?;
                sync()
            }),
        });
    }

    // Woodbury products, the low-rank update and the predictive share one P × P covariance.
    let r = m * k;
    let rf = r as f64;
    let dense = ["kron_products", "low_rank_update", "predictive_covariance"];
    if dense.iter().any(|f| wanted(f)) {
        let sigma = spd::<D, T>(device, p, &mut rng)?;
        let phi_new = device.upload(&random::<T>(&mut rng, m * d, 1.0), m, d)?;
        let probs_new = probabilities::<D, T>(device, m, k, &mut rng)?;
        if wanted("kron_products") {
            let (sigma, phi_new, probs_new) = (device.copy(&sigma)?, device.copy(&phi_new)?, device.copy(&probs_new)?);
            cases.push(KernelCase {
                family: "kron_products",
                shape: format!("P={p} m={m} K={k}"),
                // U: Σ times the m·K columns of B, D nonzeros per block (2P²m), then the K × K
                // factors (2PmK²); G: K products Φ U_a (2m²K²D) and their K-term sums (2m²K³).
                work: Work::Flops(2.0 * pf * pf * mf + 2.0 * pf * mf * kf * kf + 2.0 * mf * mf * kf * kf * (df + kf)),
                run: Box::new(move || {
                    ops::kron_products(device, &sigma, &phi_new, LowRankFactor::Kronecker { probs: &probs_new })?;
                    sync()
                }),
            });
        }
        if wanted("low_rank_update") {
            let (u, g) = ops::kron_products(device, &sigma, &phi_new, LowRankFactor::Kronecker { probs: &probs_new })?;
            let mut c_chol = device.zeros::<T>(r, r)?;
            device.add_diagonal(&mut c_chol, T::one())?;
            device.axpy(&mut c_chol, T::one(), &g)?;
            device.cholesky(&mut c_chol)?;
            let mut target = device.copy(&sigma)?;
            let mut flip = false;
            cases.push(KernelCase {
                family: "low_rank_update",
                shape: format!("P={p} rank={r}"),
                work: Work::Flops(pf * pf * rf + pf * rf * rf),
                run: Box::new(move || {
                    // Alternate signs so that repeated runs keep Σ where it started.
                    let sign = if flip { Sign::Plus } else { Sign::Minus };
                    flip = !flip;
                    ops::low_rank_update(device, &mut target, &u, &c_chol, sign)?;
                    sync()
                }),
            });
        }
        if wanted("predictive_covariance") {
            let phi_test = device.upload(&random::<T>(&mut rng, n * d, 1.0), n, d)?;
            cases.push(KernelCase {
                family: "predictive_covariance",
                shape: format!("N={n} D={d} K={k}"),
                work: Work::Flops(nf * kf * pf * df + 2.0 * nf * kf * kf * df),
                run: Box::new(move || {
                    device.predictive_covariance(&sigma, &phi_test)?;
                    sync()
                }),
            });
        }
    }

    if wanted("sherman_morrison_sequence") {
        // The fused sequential loop of the Shared structure over m samples, D × D.
        let sigma_d = spd::<D, T>(device, d, &mut rng)?;
        let head = device.upload(&random::<T>(&mut rng, k * d, 0.1), k, d)?;
        let phi_seq = device.upload(&random::<T>(&mut rng, m * d, 1.0 / df.sqrt()), m, d)?;
        let mut targets = vec![T::zero(); m * k];
        (0..m).for_each(|j| targets[j * k + j % k] = T::one());
        let targets = device.upload(&targets, m, k)?;
        let mut sigma_work = device.copy(&sigma_d)?;
        let mut head_work = device.copy(&head)?;
        cases.push(KernelCase {
            family: "sherman_morrison_sequence",
            shape: format!("D={d} K={k} m={m}"),
            // The per-sample recursion's count: Σφ and the rank-1 update (4D²), logits and the
            // mean step (4KD), whatever blocking the kernel uses.
            work: Work::Flops(mf * (4.0 * df * df + 4.0 * kf * df)),
            run: Box::new(move || {
                ops::sherman_morrison_sequence(
                    device,
                    &mut sigma_work,
                    &mut head_work,
                    None,
                    &phi_seq,
                    &targets,
                    T::zero(),
                    OutputWeighting::Gaussian,
                )?;
                sync()
            }),
        });
    }

    if wanted("cholesky") {
        let a = spd::<D, T>(device, p, &mut rng)?;
        let mut work = device.copy(&a)?;
        cases.push(KernelCase {
            family: "cholesky",
            shape: format!("n={p}"),
            work: Work::Flops(pf * pf * pf / 3.0),
            run: Box::new(move || {
                device.cholesky(&mut work)?;
                // Restore the input for the next run (a copy, not counted in the FLOP).
                work = device.copy(&a)?;
                sync()
            }),
        });
    }

    if wanted("triangular_solve") {
        let mut l = spd::<D, T>(device, p, &mut rng)?;
        device.cholesky(&mut l)?;
        let rhs = device.upload(&random::<T>(&mut rng, p * r, 1.0), p, r)?;
        let mut b = device.copy(&rhs)?;
        cases.push(KernelCase {
            family: "triangular_solve",
            shape: format!("n={p} rhs={r}"),
            work: Work::Flops(pf * pf * rf),
            run: Box::new(move || {
                device.triangular_solve(&l, &mut b, Op::N)?;
                b = device.copy(&rhs)?;
                sync()
            }),
        });
    }

    if wanted("softmax_rows") {
        let logits = device.upload(&random::<T>(&mut rng, n * k, 3.0), n, k)?;
        let mut scratch = device.copy(&logits)?;
        let bytes = (2 * n * k * std::mem::size_of::<T>()) as f64;
        cases.push(KernelCase {
            family: "softmax_rows",
            shape: format!("N={n} K={k}"),
            work: Work::Bytes(bytes),
            run: Box::new(move || {
                ops::softmax_rows(device, &mut scratch)?;
                sync()
            }),
        });
    }
    Ok(cases)
}

/// The device's measured GEMM throughput (FLOP/s): the median of 3 square `n × n` products of
/// its own [`Device::gemm`], the peak that the other kernels are compared with.
pub fn gemm_peak<D: Device, T: Scalar>(device: &D, n: usize) -> Result<f64> {
    let mut rng = SplitMix64::new(3);
    let a = device.upload(&random::<T>(&mut rng, n * n, 1.0), n, n)?;
    let b = device.upload(&random::<T>(&mut rng, n * n, 1.0), n, n)?;
    let mut c = device.zeros::<T>(n, n)?;
    let mut case = KernelCase {
        family: "gemm",
        shape: format!("{n}x{n}x{n}"),
        work: Work::Flops(2.0 * (n as f64).powi(3)),
        run: Box::new(move || {
            device.gemm(&mut c, T::zero(), &a, Op::N, &b, Op::N, T::one())?;
            device.synchronize()
        }),
    };
    let t = case.time(3)?;
    Ok(2.0 * (n as f64).powi(3) / t.as_secs_f64())
}
