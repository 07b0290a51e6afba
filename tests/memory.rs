//! Peak heap memory of streaming fits, measured by a counting global allocator: a Diag or Kron
//! fit at K = 2,000 classes keeps nothing per sample after its chunk, so its peak does not grow
//! with N beyond the chunk, and stays within a bound linear in N·K, far below the N·K² of
//! per-sample output curvatures.

use std::sync::Mutex;

use laplace_update::{CpuDevice, FitConfig, HostMatrix, Posterior, Structure};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::peak_during;

/// One device for every measurement, so that its thread pool's start-up is not measured.
static CPU: std::sync::OnceLock<CpuDevice> = std::sync::OnceLock::new();
/// Measurements run one at a time: the counters are global.
static SERIAL: Mutex<()> = Mutex::new(());

/// Peak bytes of an f32 fit of `structure` on n samples, K classes, D features, in chunks of
/// `chunk` rows, on one CPU thread.
fn fit_peak(structure: Structure, n: usize, k: usize, d: usize, chunk: usize) -> usize {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let phi: Vec<f32> = (0..n * d).map(|_| next() as f32).collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % k as u32).collect();
    let head: Vec<f32> = (0..k * d).map(|_| 0.1 * next() as f32).collect();
    let cpu = CPU.get_or_init(|| CpuDevice::new(1).unwrap());
    let config = FitConfig {
        structure,
        chunk_rows: chunk,
        ..Default::default()
    };
    let (post, peak) = peak_during(|| {
        Posterior::fit(
            cpu,
            HostMatrix::new(&phi, n, d).unwrap(),
            &labels,
            HostMatrix::new(&head, k, d).unwrap(),
            None,
            &config,
        )
        .unwrap()
    });
    assert_eq!(post.samples_seen(), n);
    peak
}

#[test]
fn diag_and_kron_fits_at_2000_classes_stream_their_chunks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (k, d, chunk) = (2_000usize, 32usize, 256usize);
    let da = d + 1;
    // The first large fit in a process makes a one-time allocation (about 635 MB here, the same
    // for any K, D or chunk size; a later fit does not repeat it): warm up before measuring.
    fit_peak(Structure::Diag, 1_000, 500, d, chunk);
    for structure in [Structure::Diag, Structure::Kron] {
        let small = fit_peak(structure, 1_000, k, d, chunk);
        let large = fit_peak(structure, 4_000, k, d, chunk);
        // The posterior (Diag: Π, Σ and the head, K × D_aug each; Kron: those plus A, U_A
        // (K × K) and G, U_G) and one chunk's outputs and curvature (chunk × K in f64, a few
        // times) bound the peak, whatever N is.
        let posterior = 8 * (3 * k * da + 2 * k * k + 2 * da * da);
        let per_chunk = 8 * chunk * (k + da) * 8;
        // Kron's eigendecomposition of A (K × K, in f64) and faer's workspace for it.
        let eigen = if structure == Structure::Kron { 8 * 8 * k * k } else { 0 };
        let bound = posterior + per_chunk + eigen;
        let quadratic = 8 * 4_000 * k * k;
        println!(
            "{structure:?}: peak {:.1} MB at N = 1,000, {:.1} MB at N = 4,000; bound {:.1} MB; N·K² would be {:.0} MB",
            small as f64 / 1e6,
            large as f64 / 1e6,
            bound as f64 / 1e6,
            quadratic as f64 / 1e6
        );
        assert!(
            large <= bound,
            "{structure:?}: peak {large} B exceeds the streaming bound {bound} B"
        );
        // Nothing per sample outlives its chunk: 4× the samples, at most one chunk more.
        assert!(
            large <= small + per_chunk,
            "{structure:?}: peak grew from {small} B to {large} B with N"
        );
    }
}

/// The peak a fit announces before it allocates (`FitConfig::peak_bytes`, what the memory budget
/// is checked against) bounds the peak it then allocates, and is not so loose that it refuses
/// fits that would fit: within 3× of the measured peak. At the sizes users run: Full at
/// K = 10, D = 384 (P = 3,850), the others at K = 1,000, D = 256.
#[test]
fn announced_fit_peaks_bound_the_measured_ones() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    fit_peak(Structure::Diag, 1_000, 500, 32, 256);
    let shared = Structure::Shared(laplace_update::OutputWeighting::Categorical);
    let mut rows = Vec::new();
    for (structure, k, d) in [
        (Structure::Full, 10, 384),
        (Structure::Kron, 1_000, 256),
        (Structure::Diag, 1_000, 256),
        (shared, 1_000, 256),
    ] {
        let (n, chunk) = (512, 256);
        let measured = fit_peak(structure, n, k, d, chunk) as u64;
        let config = FitConfig {
            structure,
            ..Default::default()
        };
        // The announced state, and one pass (checked separately when the data arrives).
        let announced = config.peak_bytes::<f32>(k, d) + config.pass_bytes::<f32>(chunk, k, d);
        println!(
            "{structure:?} K = {k}, D = {d}: measured {:.1} MB, announced {:.1} MB",
            measured as f64 / 1e6,
            announced as f64 / 1e6
        );
        rows.push((structure, measured, announced));
    }
    for (structure, measured, announced) in rows {
        assert!(
            measured <= announced,
            "{structure:?}: {measured} B > announced {announced} B"
        );
        assert!(
            announced <= 3 * measured,
            "{structure:?}: announced {announced} B, 3× the measured {measured} B"
        );
    }
}
