//! The CUDA kernels: one file per kernel family under `kernels/`, the twins of the WGSL files
//! in `shaders/` and of the faer code in `cpu.rs`, compiled at run time by NVRTC for the device's
//! own architecture. Entry points are `extern "C"` with a dtype suffix (`gemm_f32`, `gemm_f64`).
//!
//! NVRTC is loaded dynamically, so building needs no CUDA toolkit. cudarc panics when a library
//! it loads is absent, so `nvrtc_available` probes for it first and every NVRTC failure maps to
//! a typed error (feature `cuda`).
//!
//! With the feature `cuda-emu`, the same kernels also run on the CPU (`CudaEmuDevice`): the host
//! C++ compiler builds them against `kernels/emu/cuda_emu.h`, and the launch code they share
//! with the GPU (`abi.rs`: the parameter block and the launch dimensions) drives them.

#[cfg(feature = "cuda")]
use crate::error::Error;

mod abi;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda-emu")]
mod emu;
#[cfg(feature = "cuda")]
mod nvrtc;

#[cfg(feature = "cuda")]
pub use device::{BLAS_ENV, CudaDevice, CudaOptions, CudaRuntime};
#[cfg(feature = "cuda-emu")]
pub use emu::{CudaEmuDevice, CudaEmuOptions, CudaEmuRuntime};
#[cfg(feature = "cuda")]
pub use nvrtc::{Compiled, compile, compile_source, nvrtc_available};

pub use crate::device::gpu::Family;

#[cfg(feature = "cuda")]
fn unavailable(reason: impl Into<String>) -> Error {
    Error::BackendUnavailable {
        backend: "cuda",
        reason: reason.into(),
    }
}
