//! End-to-end posterior operations on the CPU backend at the sizes users have, next to faer's
//! own GEMM on the same shapes (the reference for the throughput the fit reaches).
//!
//! `cargo bench --bench posterior`; set `LAPLACE_BENCH_THREADS` to pin the thread count.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use laplace_update::{
    BiasMode, CpuDevice, FitConfig, HostMatrix, Link, OutputWeighting, Posterior, Structure, UpdateConfig, UpdateRule,
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

    /// Fits on the first `n` rows.
    fn fit(&self, cpu: &CpuDevice, structure: Structure, n: usize) -> Posterior<CpuDevice, f32> {
        let config = FitConfig {
            structure,
            prior_precision: 1.0,
            bias: BiasMode::Fixed,
            ..Default::default()
        };
        Posterior::fit(
            cpu,
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
                    gamma: 1.0,
                    iterations: 1,
                    forgetting: 1.0,
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

fn bench_predict(c: &mut Criterion) {
    let cpu = CpuDevice::new(threads()).unwrap();
    let mut group = c.benchmark_group(format!("predict [{}]", laplace_update::Device::name(&cpu)));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    let pb = Problem::new(2_000, 512, 10, 4);
    let post = pb.fit(&cpu, Structure::Full, pb.n);
    group.bench_function("full f32 probit 2000 points D=512 K=10", |b| {
        b.iter(|| {
            black_box(
                post.predict(HostMatrix::new(&pb.phi, pb.n, pb.d).unwrap(), Link::default())
                    .unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench_fit, bench_update, bench_predict);
criterion_main!(benches);
