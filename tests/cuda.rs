//! The cross-backend suites on the CUDA backend (f32 and f64) against f64 references. Without
//! a GPU they show as ignored, with the reason (`tests/common/harness.rs`), and fail instead
//! when `LAPLACE_REQUIRE` contains `cuda` (`scripts/gpu-check.sh` sets it on a GPU machine).

mod common;

use common::harness;

fn main() -> std::process::ExitCode {
    let mut cases = crate::backend_suites!("cuda", laplace_update::CudaDevice::new(0), f32, f64);
    cases.extend(crate::tests!(always: a_missing_driver_or_device_is_backend_unavailable));
    cases.extend(crate::tests!(case: an_existing_stream_and_its_memory_are_used_in_place));
    harness::run("cuda", laplace_update::CudaDevice::new(0), cases)
}

/// Without a driver (or NVRTC, or a device), construction is `BackendUnavailable` with the
/// reason: never a panic, whatever this machine has.
fn a_missing_driver_or_device_is_backend_unavailable() {
    match laplace_update::CudaDevice::new(0) {
        Ok(gpu) => eprintln!("cuda present: {gpu:?}"),
        Err(laplace_update::Error::BackendUnavailable {
            backend: "cuda",
            reason,
        }) => {
            assert!(!reason.is_empty());
            eprintln!("cuda unavailable, as a typed error: {reason}");
        }
        Err(other) => panic!("expected BackendUnavailable, got {other:?}"),
    }
    // An ordinal no machine has.
    assert!(matches!(
        laplace_update::CudaDevice::new(4096),
        Err(laplace_update::Error::BackendUnavailable { backend: "cuda", .. })
    ));
}

/// A device on an existing cudarc stream (as candle's): slices are adopted and borrowed memory
/// wrapped in place (a write through the matrix shows in the owner's memory), and a fit on the
/// resident features equals the fit on the same rows from the host.
fn an_existing_stream_and_its_memory_are_used_in_place() {
    use laplace_update::{CudaDevice, CudaOptions, Device, FitConfig, HostMatrix, Posterior};
    use std::sync::Arc;
    if common::backend_or_skip("cuda", CudaDevice::new(0)).is_none() {
        return;
    }
    let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    let stream = ctx.new_stream().unwrap();
    let gpu = CudaDevice::from_stream(stream.clone(), &CudaOptions::default()).unwrap();
    assert!(Arc::ptr_eq(gpu.stream(), &stream));
    let data: Vec<f64> = (0..12).map(|i| i as f64 * 0.5 - 2.0).collect();

    // Owned: the matrix takes the slice; a slice of another stream is waited for first.
    let m = gpu.matrix_from_slice(stream.clone_htod(&data).unwrap(), 4, 3).unwrap();
    assert_eq!(gpu.download(&m).unwrap(), data);
    let other = ctx.default_stream().clone_htod(&data).unwrap();
    assert_eq!(
        gpu.download(&gpu.matrix_from_slice(other, 3, 4).unwrap()).unwrap(),
        data
    );
    let wrong = stream.clone_htod(&data).unwrap();
    assert!(matches!(
        gpu.matrix_from_slice(wrong, 5, 3),
        Err(laplace_update::Error::ShapeMismatch { .. })
    ));

    // Borrowed: rows 1..4 of the owner's memory; a write through the matrix lands there.
    let owner = Arc::new(stream.clone_htod(&data).unwrap());
    let base = cudarc::driver::DevicePtr::device_ptr(&*owner, &stream).0;
    // SAFETY: 9 f64 at base + 3 elements lie inside `owner`'s 12, kept alive by the clone the
    // matrix holds; nothing else writes them while the matrix lives.
    let mut view = unsafe { gpu.matrix_from_device_ptr::<f64>(base + 3 * 8, 3, 3, owner.clone()) }.unwrap();
    assert_eq!(gpu.download(&view).unwrap(), data[3..]);
    gpu.add_diagonal(&mut view, 10.0).unwrap();
    let seen = stream.clone_dtoh(&*owner).unwrap();
    assert_eq!(seen[3], data[3] + 10.0);
    assert_eq!(seen[7], data[7] + 10.0);
    assert_eq!(seen[0], data[0]);
    drop(view);
    assert_eq!(Arc::strong_count(&owner), 1);

    // A fit on resident features equals the fit from host rows.
    let (n, d, k) = (40, 6, 3);
    let x: Vec<f64> = (0..n * d).map(|i| ((i * 37 % 101) as f64 / 50.0) - 1.0).collect();
    let labels: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
    let head: Vec<f64> = (0..k * d).map(|i| ((i * 13 % 7) as f64 - 3.0) / 10.0).collect();
    let config = FitConfig {
        chunk_rows: 16,
        ..Default::default()
    };
    let head = HostMatrix::new(&head, k, d).unwrap();
    let resident = gpu.matrix_from_slice(stream.clone_htod(&x).unwrap(), n, d).unwrap();
    let a = Posterior::fit(&gpu, &resident, &labels, head, None, &config).unwrap();
    let b = Posterior::fit(&gpu, HostMatrix::new(&x, n, d).unwrap(), &labels, head, None, &config).unwrap();
    let (ca, cb) = (a.covariance().unwrap(), b.covariance().unwrap());
    let scale = cb.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = ca.iter().zip(&cb).fold(0.0f64, |m, (p, q)| m.max((p - q).abs())) / scale;
    assert!(err < 1e-12, "resident fit differs from the host fit by {err}");
}
