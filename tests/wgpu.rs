//! The cross-backend suites on the wgpu backend (f32), compared against f64 references, plus
//! the wgpu-specific checks. Without an adapter every test prints `SKIPPED wgpu: reason`, and
//! fails instead when `LAPLACE_REQUIRE` contains `wgpu`. CI runs them on Mesa's lavapipe with
//! `LAPLACE_WGPU_ADAPTER=software`.
#![cfg(feature = "wgpu")]

mod common;

fn device() -> laplace_update::Result<laplace_update::WgpuDevice> {
    laplace_update::WgpuDevice::new()
}

mod posterior {
    use super::common;
    crate::posterior_suite!("wgpu", laplace_update::WgpuDevice::new(), f32);
}

mod complete {
    use super::common;
    crate::complete_suite!("wgpu", laplace_update::WgpuDevice::new(), f32);
}

mod kernels {
    use super::common;
    crate::kernel_suite!("wgpu", laplace_update::WgpuDevice::new(), f32);
}

/// f64 is a typed `Unsupported`, not a panic or a wrong answer.
#[test]
fn f64_is_unsupported() {
    use laplace_update::{Device, Error};
    let Some(gpu) = common::backend_or_skip("wgpu", device()) else {
        return;
    };
    assert!(matches!(gpu.upload(&[1.0f64], 1, 1), Err(Error::Unsupported(_))));
    assert!(matches!(gpu.zeros::<f64>(2, 2), Err(Error::Unsupported(_))));
}

/// A matrix beyond the adapter's largest buffer is a typed device error, and the device keeps
/// working afterwards.
#[test]
fn allocation_beyond_the_limit_is_a_typed_error() {
    use laplace_update::{Device, Error};
    let Some(gpu) = common::backend_or_skip("wgpu", device()) else {
        return;
    };
    let side = ((gpu.max_buffer_bytes() / 4) as f64).sqrt() as usize + 2;
    assert!(matches!(
        gpu.zeros::<f32>(side, side),
        Err(Error::Device { backend: "wgpu", .. })
    ));
    let a = gpu.upload(&[3.0f32, -4.0], 1, 2).unwrap();
    assert_eq!(gpu.max_abs(&a).unwrap(), 4.0);
}

/// Without software adapters allowed and with a name no adapter has, construction is
/// `BackendUnavailable` with the reason, never a panic.
#[test]
fn no_matching_adapter_is_backend_unavailable() {
    use laplace_update::{Error, WgpuDevice, WgpuOptions};
    let options = WgpuOptions {
        allow_software: true,
        name_contains: Some("no adapter is called this".into()),
    };
    match WgpuDevice::with_options(&options) {
        Err(Error::BackendUnavailable {
            backend: "wgpu",
            reason,
        }) => assert!(!reason.is_empty()),
        other => panic!("expected BackendUnavailable, got {other:?}"),
    }
}
