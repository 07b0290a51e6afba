//! End-to-end posterior operations on the CPU backend at the sizes users have, next to faer's
//! own GEMM on the same shapes (the reference for the throughput the fit reaches).
//!
//! `cargo bench --bench posterior [--features cuda,wgpu]`; set `LAPLACE_BENCH_THREADS` to pin
//! the thread count, and `LAPLACE_BENCH_DEVICES` (`cpu,cuda,wgpu`, default `cpu`) to choose the
//! devices of the `scale` group.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use laplace_update::{
    AnyDevice, BiasMode, CpuDevice, Device, FitConfig, HeadConfig, HostMatrix, Link, OutputWeighting, Posterior,
    Structure, TuneConfig, UpdateConfig, UpdateRule, fit_head, with_device,
};

#[path = "../tests/common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::peak_during;

/// The plain probit the "probit" rows time (the figures compared with laplace-torch's).
const PROBIT: Link = Link::Probit {
    lambda: Link::PROBIT_LAMBDA,
};

fn threads() -> usize {
    std::env::var("LAPLACE_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Seeded features with a realistic spread, labels from a head that fits them loosely.
struct Problem {
    phi: Vec<f32>,
    labels: Vec<u32>,
    head: Vec<f32>,
    n: usize,
    d: usize,
    k: usize,
}

impl Problem {
    fn new(n: usize, d: usize, k: usize, seed: u64) -> Self {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let phi: Vec<f32> = (0..n * d).map(|_| next() * 2.0).collect();
        let head: Vec<f32> = (0..k * d).map(|_| next() / (d as f32).sqrt() * 4.0).collect();
        let labels = (0..n)
            .map(|i| {
                let x = &phi[i * d..(i + 1) * d];
                (0..k)
                    .map(|c| {
                        (
                            c,
                            head[c * d..(c + 1) * d].iter().zip(x).map(|(a, b)| a * b).sum::<f32>(),
                        )
                    })
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map_or(0, |(c, _)| c as u32)
            })
            .collect();
        Problem {
            phi,
            labels,
            head,
            n,
            d,
            k,
        }
    }

    /// Seeded features and labels uniform over the classes, for heads too large to label by
    /// their own argmax in reasonable time (K = 32,000).
    fn uniform_labels(n: usize, d: usize, k: usize, seed: u64) -> Self {
        let mut p = Problem::new(0, d, k, seed);
        let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 33
        };
        p.phi = (0..n * d)
            .map(|_| (next() as f32 / (1u64 << 31) as f32 - 0.5) * 2.0)
            .collect();
        p.labels = (0..n).map(|_| (next() % k as u64) as u32).collect();
        p.n = n;
        p
    }

    /// Fits on the first `n` rows.
    fn fit<D: Device>(&self, device: &D, structure: Structure, n: usize) -> Posterior<D, f32> {
        let config = FitConfig {
            structure,
            prior_precision: 1.0,
            bias: BiasMode::Fixed,
            ..Default::default()
        };
        Posterior::fit(
            device,
            HostMatrix::new(&self.phi[..n * self.d], n, self.d).unwrap(),
            &self.labels[..n],
            HostMatrix::new(&self.head, self.k, self.d).unwrap(),
            None,
            &config,
        )
        .unwrap()
    }
}

fn bench_fit(c: &mut Criterion) {
    let cpu = CpuDevice::new(threads()).unwrap();
    let mut group = c.benchmark_group(format!("fit [{}]", laplace_update::Device::name(&cpu)));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30))
        .warm_up_time(Duration::from_secs(1));
    let (n, d, k) = (10_000, 512, 10);
    let full = Problem::new(n, d, k, 1);
    group.bench_function("full f32 N=10000 D=512 K=10 (covariance included)", |b| {
        b.iter(|| black_box(full.fit(&cpu, Structure::Full, n)))
    });
    // faer's own GEMM on the dominant shape of the fit: C (P × P) = Aᵀ A with A (N × P).
    let p = k * d;
    let a_t: Vec<f32> = (0..p * n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    let mut c_out = Mat::<f32>::zeros(p, p);
    group.bench_function("faer gemm f32 C(5120x5120) = A^T A, A 10000x5120 (5.24e11 FLOP)", |b| {
        b.iter(|| {
            let a = MatRef::from_row_major_slice(&a_t, p, n);
            matmul(
                c_out.as_mut(),
                Accum::Replace,
                a,
                a.transpose(),
                1.0f32,
                Par::rayon(cpu.threads()),
            );
            black_box(&c_out);
        })
    });
    let shared = Problem::new(n, 1536, k, 2);
    group.bench_function("shared f32 N=10000 D=1536 K=10", |b| {
        b.iter(|| black_box(shared.fit(&cpu, Structure::Shared(OutputWeighting::Gaussian), n)))
    });
    group.finish();
}

fn bench_update(c: &mut Criterion) {
    let cpu = CpuDevice::new(threads()).unwrap();
    let mut group = c.benchmark_group(format!("update [{}]", laplace_update::Device::name(&cpu)));
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    let k = 10;
    for (structure, name, d, n_fit) in [
        (Structure::Shared(OutputWeighting::Gaussian), "shared", 1536, 2_000),
        (Structure::Full, "full", 512, 2_000),
    ] {
        let pb = Problem::new(n_fit + 100, d, k, 3);
        let post = pb.fit(&cpu, structure, n_fit);
        for m in [1usize, 10, 100] {
            for rule in [UpdateRule::Joint, UpdateRule::Sequential] {
                let new_phi = &pb.phi[n_fit * d..(n_fit + m) * d];
                let new_labels = &pb.labels[n_fit..n_fit + m];
                let config = UpdateConfig {
                    rule,
                    ..UpdateConfig::newton(1.0)
                };
                // Updates streamed into one posterior, as in use: the cost of an update does not
                // depend on how many came before.
                let mut streamed = post.try_clone().unwrap();
                group.bench_function(format!("{name} f32 {rule:?} D={d} K={k} m={m}"), |b| {
                    b.iter(|| {
                        streamed
                            .update(HostMatrix::new(new_phi, m, d).unwrap(), new_labels, &config)
                            .unwrap()
                    })
                });
            }
        }
    }
    group.finish();
}

/// The default (damped) update against one undamped Newton step and against retraining the head
/// (`fit_head` by Newton on every sample seen), each from the same posterior, at K = 10,
/// D = 512, m = 100 (Full) and at the candle example's D = 64.
fn bench_step_control(c: &mut Criterion) {
    let cpu = CpuDevice::new(threads()).unwrap();
    let mut group = c.benchmark_group(format!("step control [{}]", laplace_update::Device::name(&cpu)));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    let k = 10;
    for (d, n_fit, m) in [(512usize, 2_000usize, 100usize), (64, 300, 30)] {
        let pb = Problem::new(n_fit + m, d, k, 5);
        let post = pb.fit(&cpu, Structure::Full, n_fit);
        let new_phi = &pb.phi[n_fit * d..(n_fit + m) * d];
        let new_labels = &pb.labels[n_fit..n_fit + m];
        for (name, config) in [
            ("damped (default)", UpdateConfig::default()),
            ("undamped Newton", UpdateConfig::newton(1.0)),
        ] {
            group.bench_function(format!("full f32 {name} D={d} K={k} m={m}"), |b| {
                b.iter_batched(
                    || post.try_clone().unwrap(),
                    |mut p| {
                        p.update(HostMatrix::new(new_phi, m, d).unwrap(), new_labels, &config)
                            .unwrap();
                        p
                    },
                    criterion::BatchSize::LargeInput,
                )
            });
        }
        let all = n_fit + m;
        group.bench_function(format!("retrain head (fit_head) f32 D={d} K={k} N={all}"), |b| {
            b.iter(|| {
                black_box(
                    fit_head(
                        &cpu,
                        HostMatrix::new(&pb.phi[..all * d], all, d).unwrap(),
                        &pb.labels[..all],
                        k,
                        &HeadConfig::default(),
                    )
                    .unwrap(),
                )
            })
        });
    }
    group.finish();
}

fn bench_predict(c: &mut Criterion) {
    let cpu = CpuDevice::new(threads()).unwrap();
    let mut group = c.benchmark_group(format!("predict [{}]", laplace_update::Device::name(&cpu)));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    let pb = Problem::new(2_000, 512, 10, 4);
    let post = pb.fit(&cpu, Structure::Full, pb.n);
    group.bench_function("full f32 probit 2000 points D=512 K=10", |b| {
        b.iter(|| {
            black_box(
                post.predict(HostMatrix::new(&pb.phi, pb.n, pb.d).unwrap(), PROBIT)
                    .unwrap(),
            )
        })
    });
    group.finish();
}

/// Validation tuning of τ (41 grid points, then 16 refining, on 2,000 validation points) beside
/// the fit it tunes, at Full K = 10, D = 512, N = 10,000: the tuning should cost at most about
/// three fits.
fn bench_tune(c: &mut Criterion) {
    let cpu = CpuDevice::new(threads()).unwrap();
    let mut group = c.benchmark_group(format!("tune prior [{}]", laplace_update::Device::name(&cpu)));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30))
        .warm_up_time(Duration::from_secs(1));
    let (n, d, k) = (10_000, 512, 10);
    let pb = Problem::new(n + 2_000, d, k, 5);
    let post = pb.fit(&cpu, Structure::Full, n);
    group.bench_function("fit full f32 N=10000 D=512 K=10", |b| {
        b.iter(|| black_box(pb.fit(&cpu, Structure::Full, n)))
    });
    let val = HostMatrix::new(&pb.phi[n * d..], 2_000, d).unwrap();
    for (name, temperature) in [("tau", false), ("tau and temperature", true)] {
        group.bench_function(format!("tune {name} full f32 2000 validation points D=512 K=10"), |b| {
            b.iter(|| {
                let mut p = post.try_clone().unwrap();
                let config = TuneConfig {
                    temperature,
                    ..Default::default()
                };
                black_box(p.tune_prior_precision(val, &pb.labels[n..], &config).unwrap())
            })
        });
    }
    group.finish();
}

/// Times `f` like `Bencher::iter`, and prints the peak heap bytes of its second run (by the
/// counting allocator) beside the case's name, once per case (`reported`: criterion calls a
/// case's routine once per sample).
fn iter_with_peak<R>(
    b: &mut criterion::Bencher<'_>,
    reported: &std::cell::Cell<bool>,
    label: &str,
    mut f: impl FnMut() -> R,
) {
    b.iter_custom(|iters| {
        if !reported.replace(true) {
            // A first run makes the process's one-time allocations (faer's per-thread GEMM
            // packing buffers, sized from the L3 and mostly never touched).
            black_box(f());
            let (_, peak) = peak_during(&mut f);
            eprintln!("scale: {label}: peak heap {:.0} MB", peak as f64 / 1e6);
        }
        let start = std::time::Instant::now();
        for _ in 0..iters {
            black_box(f());
        }
        start.elapsed()
    });
}

/// The `scale` group on each device of `LAPLACE_BENCH_DEVICES` (default `cpu`), as
/// [`AnyDevice::select`] opens it (the CPU with `LAPLACE_BENCH_THREADS`); a device that cannot
/// start is reported and skipped.
fn bench_scale(c: &mut Criterion) {
    let devices = std::env::var("LAPLACE_BENCH_DEVICES").unwrap_or_else(|_| "cpu".into());
    for name in devices.split(',').map(str::trim) {
        let device = match name {
            "cpu" => CpuDevice::new(threads()).map(AnyDevice::Cpu),
            other => AnyDevice::select(other),
        };
        match device {
            Ok(device) => with_device!(&device, |d| scale_on(c, d, name == "cpu")),
            Err(e) => eprintln!("SKIPPED {name}: {e}"),
        }
    }
}

/// The sizes users run: heads of 1,000, 3,100 and 32,000 classes, and N = 500,000. Each case
/// prints its peak heap bytes (host memory only); with `numpy_peer`, the Shared fit at
/// N = 500,000 also prints numpy's `XᵀX` plus inverse on the same shape
/// (`benches/peers/numpy_scale.py`) when python3 and numpy are there. Data and fits are made
/// lazily, so that a filter that skips a case skips its cost.
fn scale_on<D: Device>(c: &mut Criterion, device: &D, numpy_peer: bool) {
    use std::cell::{Cell, OnceCell};
    let mut group = c.benchmark_group(format!("scale [{}]", device.name()));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_millis(500));
    let warmed = OnceCell::new();
    // The first sizeable fit of a process allocates once (thread pools, faer's workspace).
    let warm_up = || {
        warmed.get_or_init(|| {
            Problem::new(2_000, 64, 10, 9).fit(device, Structure::Diag, 2_000);
        })
    };
    let shared = Structure::Shared(OutputWeighting::Gaussian);
    let structures = [("diag", Structure::Diag), ("kron", Structure::Kron), ("shared", shared)];
    let points = 2_000;
    for (n, d, k, names) in [
        (5_000, 512, 1_000, &["diag", "kron", "shared"][..]),
        (20_000, 128, 3_100, &["diag", "kron", "shared"][..]),
        (10_000, 768, 32_000, &["diag", "shared"][..]),
    ] {
        let pb = OnceCell::new();
        let problem = || pb.get_or_init(|| Problem::uniform_labels(n.max(points), d, k, 11));
        for &(name, structure) in structures.iter().filter(|(s, _)| names.contains(s)) {
            let label = format!("{name} f32 N={n} D={d} K={k}");
            let reported = Cell::new(false);
            group.throughput(Throughput::Elements(n as u64));
            group.bench_function(format!("fit {label}"), |b| {
                warm_up();
                iter_with_peak(b, &reported, &format!("fit {label}"), || {
                    problem().fit(device, structure, n)
                })
            });
            let reported = Cell::new(false);
            let fitted = OnceCell::new();
            group.throughput(Throughput::Elements(points as u64));
            group.bench_function(format!("predict {label} ({points} points, probit)"), |b| {
                warm_up();
                let post = fitted.get_or_init(|| problem().fit(device, structure, n));
                let x = HostMatrix::new(&problem().phi[..points * d], points, d).unwrap();
                iter_with_peak(b, &reported, &format!("predict {label}"), || {
                    post.predict(x, PROBIT).unwrap()
                })
            });
        }
    }
    let (n, d, k) = (500_000, 512, 10);
    let label = format!("shared f32 N={n} D={d} K={k}");
    group.throughput(Throughput::Elements(n as u64));
    let pb = OnceCell::new();
    let reported = Cell::new(false);
    group.bench_function(format!("fit {label}"), |b| {
        warm_up();
        let pb = pb.get_or_init(|| {
            if numpy_peer {
                let numpy = std::process::Command::new("python3")
                    .args(["benches/peers/numpy_scale.py", &n.to_string(), &d.to_string()])
                    .output();
                match numpy {
                    Ok(out) if out.status.success() => {
                        eprintln!("scale: {}", String::from_utf8_lossy(&out.stdout).trim())
                    }
                    _ => eprintln!("scale: numpy not available, no peer figure"),
                }
            }
            Problem::uniform_labels(n, d, k, 12)
        });
        iter_with_peak(b, &reported, &format!("fit {label}"), || pb.fit(device, shared, n))
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_fit,
    bench_update,
    bench_step_control,
    bench_predict,
    bench_tune,
    bench_scale
);
criterion_main!(benches);
