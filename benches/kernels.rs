//! One criterion group per kernel family of the `Device` trait, on every available device, at
//! the sizes users have (D ∈ {384, 768, 1536}, K ∈ {10, 100}). Throughput is in GFLOP/s (or
//! GB/s for the memory-bound kernels): the workloads and their operation counts come from
//! `laplace_update::profile`, the same ones the `profile` command times.
//!
//! `cargo bench --bench kernels [--features cuda,wgpu]`; `LAPLACE_BENCH_DEVICES` (`cpu,cuda,wgpu`,
//! the default, and `cublas` for cuBLAS's gemm and SYRK beside the library's) picks the devices, `LAPLACE_BENCH_THREADS` pins the CPU thread count,
//! `LAPLACE_BENCH_SIZES` (`D,K,N,m;D,K,N,m`) replaces the size list. GPUs run the Full
//! accumulation at the full N = 100,000.
//!
//! Sizes that do not fit the 2-core, 24 GiB reference machine in reasonable time are scaled
//! down: the Full (P × P) kernels run at K = 10 only (K = 100 at D = 768 is a 59 GB covariance),
//! with N = 10,000 instead of 100,000 for the accumulation (N·P² = 5.9e12 FLOP is about 30 s per
//! run there); the Shared and per-sample kernels run at every size.

use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use laplace_update::profile::{FAMILIES, Sizes, Work, kernel_cases};
use laplace_update::{CpuDevice, Device};

/// Wall time, with throughput shown as FLOP/s (criterion's `Elements` carry FLOP here) or B/s.
struct FlopClock;

struct FlopFormatter;

impl ValueFormatter for FlopFormatter {
    fn scale_values(&self, ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match ns {
            x if x < 1e3 => (1.0, "ns"),
            x if x < 1e6 => (1e-3, "µs"),
            x if x < 1e9 => (1e-6, "ms"),
            _ => (1e-9, "s"),
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(&self, _typical: f64, throughput: &Throughput, values: &mut [f64]) -> &'static str {
        // values are nanoseconds per iteration; work per ns is G-units per second.
        let (work, unit) = match *throughput {
            Throughput::Elements(flops) => (flops as f64, "GFLOP/s"),
            Throughput::Bytes(b) | Throughput::BytesDecimal(b) => (b as f64, "GB/s"),
        };
        values.iter_mut().for_each(|v| *v = work / *v);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

impl Measurement for FlopClock {
    type Intermediate = Instant;
    type Value = Duration;
    fn start(&self) -> Instant {
        Instant::now()
    }
    fn end(&self, i: Instant) -> Duration {
        i.elapsed()
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &FlopFormatter
    }
}

fn sizes(gpu: bool) -> Vec<(Sizes, &'static [&'static str])> {
    const ALL: &[&str] = &FAMILIES;
    const SHARED: &[&str] = &["gemm", "weighted_syrk", "sherman_morrison_sequence", "softmax_rows"];
    if let Ok(list) = std::env::var("LAPLACE_BENCH_SIZES") {
        return list
            .split(';')
            .filter(|s| !s.trim().is_empty())
            .map(|s| (Sizes::parse(s).expect("LAPLACE_BENCH_SIZES: D,K,N,m;..."), ALL))
            .collect();
    }
    let mut out = Vec::new();
    for d in [384, 768, 1536] {
        // Full kernels: K = 10, N = 100,000 on a GPU (10,000 on the CPU), m = 100.
        out.push((
            Sizes {
                d,
                k: 10,
                n: if gpu { 100_000 } else { 10_000 },
                m: 100,
            },
            ALL,
        ));
        // Shared and per-sample kernels also at K = 100 and N = 100,000.
        out.push((
            Sizes {
                d,
                k: 100,
                n: 100_000,
                m: 100,
            },
            SHARED,
        ));
    }
    out
}

fn bench_kernels<D: Device>(c: &mut Criterion<FlopClock>, device: &D, gpu: bool) {
    for (sizes, families) in sizes(gpu) {
        bench_cases(c, device, sizes, families);
    }
}

fn bench_cases<D: Device>(c: &mut Criterion<FlopClock>, device: &D, sizes: Sizes, families: &[&str]) {
    {
        let cases = kernel_cases::<D, f32>(device, sizes, families).expect("inputs fit");
        for mut case in cases {
            let mut group = c.benchmark_group(format!("{} [{}]", case.family, device.name()));
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(3));
            group.throughput(match case.work {
                Work::Flops(f) => Throughput::Elements(f as u64),
                Work::Bytes(b) => Throughput::Bytes(b as u64),
            });
            let name = format!("f32 {}", case.shape);
            group.bench_function(name, |b| b.iter(|| case.run().expect("kernel runs")));
            group.finish();
        }
    }
}

fn kernels(c: &mut Criterion<FlopClock>) {
    let threads = std::env::var("LAPLACE_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let devices = std::env::var("LAPLACE_BENCH_DEVICES").unwrap_or_else(|_| "cpu,cuda,wgpu".into());
    let wanted = |name: &str| devices.split(',').any(|d| d.trim() == name);
    if wanted("cpu") {
        let cpu = CpuDevice::new(threads).expect("cpu backend");
        bench_kernels(c, &cpu, false);
    }
    #[cfg(feature = "cuda")]
    if wanted("cuda") {
        match laplace_update::CudaDevice::new(0) {
            Ok(gpu) => bench_kernels(c, &gpu, true),
            Err(e) => eprintln!("SKIPPED cuda: {e}"),
        }
    }
    // cuBLAS's gemm and SYRK beside the library's (device name `… + cuBLAS`).
    #[cfg(feature = "cuda")]
    if wanted("cublas") {
        match laplace_update::CudaDevice::with_options(0, &laplace_update::CudaOptions { cublas: true }) {
            Ok(gpu) => {
                for (sizes, _) in sizes(true) {
                    bench_cases(c, &gpu, sizes, &["gemm", "weighted_syrk"]);
                }
            }
            Err(e) => eprintln!("SKIPPED cublas: {e}"),
        }
    }
    #[cfg(feature = "wgpu")]
    if wanted("wgpu") {
        match laplace_update::WgpuDevice::new() {
            Ok(gpu) => bench_kernels(c, &gpu, !gpu.is_software()),
            Err(e) => eprintln!("SKIPPED wgpu: {e}"),
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(FlopClock);
    targets = kernels
}
criterion_main!(benches);
