//! Every selection strategy, plain and update-driven, on random small problems: degenerate
//! pools and labelled sets, features of very different scales. Nothing panics, the picks are
//! distinct valid indices (or a typed error when the request is impossible), and a seed fixes
//! them.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::Rng;
use laplace_update::active::{LabelSource, Pool, Strategy, UpdateDriven};
use laplace_update::*;
use proptest::prelude::{TestCaseError, any, prop, prop_assert, prop_assert_eq};
use proptest::strategy::Strategy as _;
use proptest::test_runner::{Config, TestRunner};

/// How the pool and the labelled set are shaped.
/// Selections that returned a typed ill-conditioning error (f32 on raw tabular columns).
static LIMITED: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, Copy)]
enum Degenerate {
    None,
    /// Repeated pool points, and labelled points repeated in the pool.
    Duplicates,
    /// Every point (pool and labelled) the same.
    AllEqual,
    /// Nothing labelled yet: the posterior is the prior.
    EmptyLabelled,
    /// Every labelled point of one class.
    OneClass,
}

/// The pool's size relative to the batch.
#[derive(Debug, Clone, Copy)]
enum PoolSize {
    Smaller,
    Equal,
    Larger,
}

#[derive(Debug, Clone)]
struct Spec {
    seed: u64,
    d: usize,
    k: usize,
    batch: usize,
    pool: PoolSize,
    degenerate: Degenerate,
    /// Raw tabular columns: positive, column j of scale 10^(4j/(D−1)), from 1 to 1e4.
    tabular: bool,
    structure: Structure,
    bias: BiasMode,
    /// f32 instead of f64 (the `al` command's element type).
    single: bool,
}

fn spec() -> impl proptest::strategy::Strategy<Value = Spec> {
    (
        any::<u64>(),
        prop::sample::select(vec![1usize, 2, 3, 30]),
        prop::sample::select(vec![2usize, 3, 10]),
        1usize..=6,
        prop::sample::select(vec![PoolSize::Smaller, PoolSize::Equal, PoolSize::Larger]),
        prop::sample::select(vec![
            Degenerate::None,
            Degenerate::Duplicates,
            Degenerate::AllEqual,
            Degenerate::EmptyLabelled,
            Degenerate::OneClass,
        ]),
        any::<bool>(),
        prop::sample::select(vec![
            Structure::Full,
            Structure::Shared(OutputWeighting::Gaussian),
            Structure::Shared(OutputWeighting::Categorical),
            Structure::Diag,
            Structure::Kron,
        ]),
        prop::sample::select(vec![BiasMode::InPosterior, BiasMode::Fixed]),
        any::<bool>(),
    )
        .prop_map(
            |(seed, d, k, batch, pool, degenerate, tabular, structure, bias, single)| Spec {
                seed,
                d,
                k,
                batch,
                pool,
                degenerate,
                tabular,
                structure,
                bias,
                single,
            },
        )
}

struct Problem<T> {
    candidates: Vec<T>,
    n: usize,
    labeled: Vec<T>,
    labeled_y: Vec<u32>,
    oracle: Vec<u32>,
}

fn problem<T: Scalar>(spec: &Spec) -> Problem<T> {
    let mut rng = Rng::new(spec.seed);
    let d = spec.d;
    let n = match spec.pool {
        PoolSize::Smaller => spec.batch - 1,
        PoolSize::Equal => spec.batch,
        PoolSize::Larger => spec.batch + 1 + rng.below(20),
    };
    let n_l = match spec.degenerate {
        Degenerate::EmptyLabelled => 0,
        _ => 1 + rng.below(14),
    };
    let point = |rng: &mut Rng| -> Vec<f64> {
        (0..d)
            .map(|j| {
                let z = rng.normal();
                if spec.tabular {
                    let scale = 10f64.powf(4.0 * j as f64 / (d.max(2) - 1) as f64);
                    scale * (1.0 + z.abs())
                } else {
                    z
                }
            })
            .collect()
    };
    let mut candidates: Vec<Vec<f64>> = (0..n).map(|_| point(&mut rng)).collect();
    let mut labeled: Vec<Vec<f64>> = (0..n_l).map(|_| point(&mut rng)).collect();
    match spec.degenerate {
        Degenerate::Duplicates if n > 0 => {
            for i in 0..n {
                if rng.below(2) == 0 {
                    candidates[i] = candidates[rng.below(n)].clone();
                }
            }
            if let Some(first) = labeled.first().cloned() {
                candidates[0] = first;
            }
        }
        Degenerate::AllEqual => {
            let p = point(&mut rng);
            candidates
                .iter_mut()
                .chain(labeled.iter_mut())
                .for_each(|c| *c = p.clone());
        }
        _ => {}
    }
    let labeled_y = (0..n_l)
        .map(|_| match spec.degenerate {
            Degenerate::OneClass => (spec.seed % spec.k as u64) as u32,
            _ => rng.below(spec.k) as u32,
        })
        .collect();
    Problem {
        candidates: candidates.concat().into_iter().map(T::from_f64).collect(),
        n,
        labeled: labeled.concat().into_iter().map(T::from_f64).collect(),
        labeled_y,
        oracle: (0..n).map(|_| rng.below(spec.k) as u32).collect(),
    }
}

/// The head fitted by MAP on the labelled set (zero with nothing labelled), and its posterior,
/// as the `al` command builds them.
fn posterior<T: Scalar>(cpu: &CpuDevice, spec: &Spec, pb: &Problem<T>) -> Result<Posterior<CpuDevice, T>> {
    let (d, k) = (spec.d, spec.k);
    let n_l = pb.labeled_y.len();
    let config = FitConfig {
        structure: spec.structure,
        prior_precision: 1.0,
        bias: spec.bias,
        ..Default::default()
    };
    if n_l == 0 {
        let head = vec![T::from_f64(0.0); k * d];
        return Posterior::prior(cpu, HostMatrix::new(&head, k, d)?, None, &config);
    }
    // The head in f64: Newton on raw tabular columns needs more than f32 carries.
    let wide: Vec<f64> = pb.labeled.iter().map(|v| v.as_f64()).collect();
    let head_config = HeadConfig {
        prior_precision: 1.0,
        bias: true,
        ..Default::default()
    };
    let head = fit_head(cpu, HostMatrix::new(&wide, n_l, d)?, &pb.labeled_y, k, &head_config)?;
    let narrow = |v: &[f64]| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
    Posterior::fit(
        cpu,
        HostMatrix::new(&pb.labeled, n_l, d)?,
        &pb.labeled_y,
        HostMatrix::new(&narrow(&head.weights), k, d)?,
        Some(&narrow(&head.bias)),
        &config,
    )
}

/// Checks one selector: deterministic, and distinct valid picks or the typed batch error.
/// With `precision_limited` (f32 on raw tabular columns, whose precision f32 cannot carry) the
/// typed errors of an ill-conditioned precision are accepted too.
fn check(
    name: &str,
    n: usize,
    batch: usize,
    precision_limited: bool,
    select: impl Fn() -> Result<Vec<usize>>,
) -> Result<(), TestCaseError> {
    let first = select();
    let again = select();
    prop_assert_eq!(&first, &again, "{} is not deterministic under a seed", name);
    if batch > n {
        prop_assert!(
            matches!(
                (&first, n),
                (Err(Error::InvalidArgument { argument: "batch", .. }), _)
                    | (Err(Error::EmptyBatch { argument: "candidates" }), 0)
            ),
            "{}: batch {} from a pool of {} must be a typed error, got {:?}",
            name,
            batch,
            n,
            first
        );
        return Ok(());
    }
    let picks = match first {
        Ok(p) => p,
        Err(Error::IllConditioned { .. } | Error::NotPositiveDefinite { .. }) if precision_limited => {
            LIMITED.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Err(e) => return Err(TestCaseError::fail(format!("{name}: {e}"))),
    };
    prop_assert_eq!(picks.len(), batch, "{}: {:?}", name, picks);
    let mut sorted = picks.clone();
    sorted.sort_unstable();
    sorted.dedup();
    prop_assert_eq!(sorted.len(), batch, "{}: repeated picks {:?}", name, picks);
    prop_assert!(picks.iter().all(|&i| i < n), "{}: out of range {:?}", name, picks);
    Ok(())
}

/// Every strategy, plain and update-driven, on one problem.
fn run_case<T: Scalar>(cpu: &CpuDevice, spec: &Spec) -> Result<(), TestCaseError> {
    let pb = problem::<T>(spec);
    let post = match posterior(cpu, spec, &pb) {
        Ok(post) => post,
        Err(Error::IllConditioned { .. } | Error::NotPositiveDefinite { .. })
            if T::DTYPE == DType::F32 && spec.tabular =>
        {
            LIMITED.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Err(e) => return Err(TestCaseError::fail(format!("fit: {e}"))),
    };
    let d = spec.d;
    let candidates = HostMatrix::new(&pb.candidates, pb.n, d).unwrap();
    let labeled = HostMatrix::new(&pb.labeled, pb.labeled_y.len(), d).unwrap();
    let pool = Pool { candidates, labeled };
    let limited = T::DTYPE == DType::F32 && spec.tabular;
    for (i, &(name, strategy)) in Strategy::ALL.iter().enumerate() {
        let strategy = match strategy {
            Strategy::Bald { .. } => Strategy::Bald { samples: 20 },
            s => s,
        };
        check(name, pb.n, spec.batch, limited, || {
            strategy.select(&post, &pool, spec.batch, spec.seed)
        })?;
        let labels = match (spec.seed as usize + i) % 3 {
            0 => LabelSource::Oracle(&pb.oracle),
            1 => LabelSource::Predicted,
            _ => LabelSource::Expected,
        };
        let driven = UpdateDriven {
            base: strategy,
            labels,
            update: UpdateConfig::default(),
        };
        check(
            &format!("{name}+update ({labels:?})"),
            pb.n,
            spec.batch,
            limited,
            || driven.select(&post, &pool, spec.batch, spec.seed),
        )?;
    }
    Ok(())
}

#[test]
fn every_strategy_is_total_on_random_degenerate_problems() {
    let cases = AtomicUsize::new(0);
    let cpu = CpuDevice::new(1).unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&spec(), |spec| {
            if spec.single {
                run_case::<f32>(&cpu, &spec)?;
            } else {
                run_case::<f64>(&cpu, &spec)?;
            }
            cases.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    println!(
        "strategy property test: {} random problems, {} selectors each (every strategy, plain and +update); \
         {} fits or selections in f32 on raw tabular columns were typed ill-conditioning errors",
        cases.load(Ordering::Relaxed),
        2 * Strategy::ALL.len(),
        LIMITED.load(Ordering::Relaxed)
    );
}

/// Cases the random search found, kept as regressions.
#[test]
fn found_cases_stay_fixed() {
    let cpu = CpuDevice::new(1).unwrap();
    // BAIT's backward step on raw tabular columns with no labelled data: a rank-one removal
    // that rounding made singular (1 − s ≤ 0) was an error; it is now refactored exactly.
    let spec = Spec {
        seed: 500030214940941914,
        d: 30,
        k: 2,
        batch: 3,
        pool: PoolSize::Larger,
        degenerate: Degenerate::EmptyLabelled,
        tabular: true,
        structure: Structure::Full,
        bias: BiasMode::InPosterior,
        single: false,
    };
    run_case::<f64>(&cpu, &spec).unwrap();
}
