//! The cross-backend suites on the CUDA emulator (f32 and f64): the kernels of `kernels/*.cu`,
//! built by the host C++ compiler, driven by the CUDA backend's host code, against f64
//! references. Each run records the entry points it launched for `tests/cuda_emu_coverage.rs`.

mod common;

use laplace_update::{CudaEmuDevice, CudaEmuOptions, Result};

/// Starts the launch log, once per process.
fn log_launches() {
    static START: std::sync::Once = std::sync::Once::new();
    START.call_once(|| {
        CudaEmuDevice::log_launches_to(std::path::Path::new(common::EMU_LAUNCH_LOG)).expect("launch log")
    });
}

/// The emulator with CUDA's limits.
fn device() -> Result<CudaEmuDevice> {
    log_launches();
    CudaEmuDevice::new()
}

/// At most `cap` blocks per grid dimension and the software launch policy, so that the
/// compositions split their grids and chunk their contractions at small sizes.
fn small_grid_device(cap: usize) -> Result<CudaEmuDevice> {
    log_launches();
    CudaEmuDevice::with_options(CudaEmuOptions {
        grid_limits: laplace_update::device::launch::GridLimits::uniform(cap),
        policy: laplace_update::device::launch::LaunchPolicy::software(),
        ..CudaEmuOptions::default()
    })
}

fn main() -> std::process::ExitCode {
    // The drift test at 16 features and 300 sequential updates: it measures rounding over
    // many launches, which the GPU suites cover at full size; here it checks the logic.
    let mut cases = crate::backend_suites!("cuda-emu", crate::device(), drift(16, 3), f32, f64);
    cases.extend(crate::kernel_suite!(
        "kernels_on_split_grids",
        "cuda-emu",
        crate::small_grid_device(16),
        f32,
        f64
    ));
    common::harness::run("cuda-emu", device(), cases)
}
