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
