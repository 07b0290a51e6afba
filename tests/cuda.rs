//! The cross-backend suites on the CUDA backend (f32 and f64) against f64 references. Without
//! a GPU every test prints `SKIPPED cuda: reason`, and fails instead when `LAPLACE_REQUIRE`
//! contains `cuda` (`scripts/gpu-check.sh` sets it on a GPU machine).
#![cfg(feature = "cuda")]

mod common;

mod posterior {
    use super::common;
    crate::posterior_suite!("cuda", laplace_update::CudaDevice::new(0), f32, f64);
}

mod complete {
    use super::common;
    crate::complete_suite!("cuda", laplace_update::CudaDevice::new(0), f32, f64);
}

mod kernels {
    use super::common;
    crate::kernel_suite!("cuda", laplace_update::CudaDevice::new(0), f32, f64);
}

/// Without a driver (or NVRTC, or a device), construction is `BackendUnavailable` with the
/// reason: never a panic, whatever this machine has.
#[test]
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
