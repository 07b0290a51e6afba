//! The cross-backend suites on the faer CPU backend, in f32 and f64.

mod common;

mod posterior {
    use super::common;
    crate::posterior_suite!("cpu", laplace_update::CpuDevice::new(2), f32, f64);
}

mod kernels {
    use super::common;
    crate::kernel_suite!("cpu", laplace_update::CpuDevice::new(2), f32, f64);
}

/// A posterior too large for memory is a typed error, not an aborted process.
#[test]
fn impossible_allocation_is_a_typed_error() {
    use laplace_update::{CpuDevice, Error, FitConfig, HostMatrix, Posterior};
    let cpu = CpuDevice::new(1).unwrap();
    let d = 300_000; // Full: P = 600,000 and P² f32 is 1.4 TB.
    let phi = vec![0.5f32; d];
    let head = vec![0.0f32; 2 * d];
    let result = Posterior::<_, f32>::fit(
        &cpu,
        HostMatrix::new(&phi, 1, d).unwrap(),
        &[1u8],
        HostMatrix::new(&head, 2, d).unwrap(),
        None,
        &FitConfig::default(),
    );
    assert!(
        matches!(result, Err(Error::Device { backend: "cpu", .. })),
        "{:?}",
        result.err()
    );
}
