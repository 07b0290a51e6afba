//! Choosing a backend at run time: [`AnyDevice`] holds whichever device was found, and
//! [`with_device!`](crate::with_device) runs code generic over [`Device`] on it.

use super::{CpuDevice, Device};
use crate::error::{Error, Result};

/// A device chosen at run time. Run generic code on it with
/// [`with_device!`](crate::with_device).
#[derive(Clone, Debug)]
pub enum AnyDevice {
    /// The faer CPU backend.
    Cpu(CpuDevice),
    /// An NVIDIA GPU through CUDA.
    #[cfg(feature = "cuda")]
    Cuda(super::cuda::CudaDevice),
    /// A Vulkan, Metal or DX12 GPU through wgpu.
    #[cfg(feature = "wgpu")]
    Wgpu(super::WgpuDevice),
}

/// [`AnyDevice::auto`]'s choice, with the reason each better backend was passed over.
#[derive(Debug)]
pub struct AutoChoice {
    /// The device chosen.
    pub device: AnyDevice,
    /// Every backend tried before it and why it was not used, best first.
    pub passed_over: Vec<Error>,
}

/// Runs `$body` with `$d` bound to the concrete device inside an [`AnyDevice`], so generic code
/// (`fn f<D: Device>(d: &D)`) runs on whichever backend was chosen.
///
/// ```
/// use laplace_update::{AnyDevice, Device, with_device};
/// let any = AnyDevice::select("cpu")?;
/// let name = with_device!(&any, |d| d.name());
/// assert!(name.starts_with("cpu"));
/// # Ok::<(), laplace_update::Error>(())
/// ```
#[macro_export]
macro_rules! with_device {
    ($device:expr, |$d:ident| $body:expr) => {
        $crate::__with_device_arms!($device, $d, $body)
    };
}

#[doc(hidden)]
#[cfg(all(feature = "cuda", feature = "wgpu"))]
#[macro_export]
macro_rules! __with_device_arms {
    ($device:expr, $d:ident, $body:expr) => {
        match $device {
            $crate::AnyDevice::Cpu($d) => $body,
            $crate::AnyDevice::Cuda($d) => $body,
            $crate::AnyDevice::Wgpu($d) => $body,
        }
    };
}

#[doc(hidden)]
#[cfg(all(feature = "cuda", not(feature = "wgpu")))]
#[macro_export]
macro_rules! __with_device_arms {
    ($device:expr, $d:ident, $body:expr) => {
        match $device {
            $crate::AnyDevice::Cpu($d) => $body,
            $crate::AnyDevice::Cuda($d) => $body,
        }
    };
}

#[doc(hidden)]
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
#[macro_export]
macro_rules! __with_device_arms {
    ($device:expr, $d:ident, $body:expr) => {
        match $device {
            $crate::AnyDevice::Cpu($d) => $body,
            $crate::AnyDevice::Wgpu($d) => $body,
        }
    };
}

#[doc(hidden)]
#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
#[macro_export]
macro_rules! __with_device_arms {
    ($device:expr, $d:ident, $body:expr) => {
        match $device {
            $crate::AnyDevice::Cpu($d) => $body,
        }
    };
}

/// Runs a small gemm and reads it back: a GPU that constructs but cannot compute (a kernel that
/// does not build, a driver older than NVRTC) fails here instead of in the caller's work.
fn smoke_test<D: Device>(device: &D) -> Result<()> {
    let a = device.upload(&[1.0f32, 2.0, 3.0, 4.0], 2, 2)?;
    let mut c = device.zeros::<f32>(2, 2)?;
    device.gemm(&mut c, 0.0, &a, super::Op::N, &a, super::Op::T, 1.0)?;
    let got = device.download(&c)?;
    if got != [5.0, 11.0, 11.0, 25.0] {
        return Err(Error::Device {
            backend: "auto",
            reason: format!("{}: smoke test computed {got:?} for [[5, 11], [11, 25]]", device.name()),
        });
    }
    Ok(())
}

#[cfg(not(all(feature = "cuda", feature = "wgpu")))]
fn not_built(backend: &'static str) -> Error {
    Error::BackendUnavailable {
        backend,
        reason: format!("this build has no `{backend}` backend (enable the `{backend}` feature)"),
    }
}

impl AnyDevice {
    /// The best working device: CUDA, then a hardware wgpu adapter, then the CPU. Each GPU
    /// candidate must pass a small smoke test; the ones that fail, or are absent, are listed in
    /// [`AutoChoice::passed_over`] with the reason. A software adapter is never chosen here.
    pub fn auto() -> Result<AutoChoice> {
        let mut passed_over = Vec::new();
        for backend in ["cuda", "wgpu"] {
            match Self::candidate(backend).and_then(|d| with_device!(&d, |g| smoke_test(g)).map(|()| d)) {
                Ok(device) => return Ok(AutoChoice { device, passed_over }),
                Err(e) => passed_over.push(e),
            }
        }
        Ok(AutoChoice {
            device: AnyDevice::Cpu(CpuDevice::new(0)?),
            passed_over,
        })
    }

    /// A GPU backend as `auto` considers it: wgpu on hardware adapters only, whatever
    /// `LAPLACE_WGPU_ADAPTER` says.
    fn candidate(backend: &str) -> Result<AnyDevice> {
        match backend {
            #[cfg(feature = "wgpu")]
            "wgpu" => Ok(AnyDevice::Wgpu(super::WgpuDevice::with_options(
                &super::WgpuOptions::default(),
            )?)),
            other => Self::select(other),
        }
    }

    /// The backend named `cpu`, `cuda` (GPU 0) or `wgpu` (hardware adapters unless
    /// `LAPLACE_WGPU_ADAPTER` allows software), without fallback.
    pub fn select(backend: &str) -> Result<AnyDevice> {
        match backend {
            "cpu" => Ok(AnyDevice::Cpu(CpuDevice::new(0)?)),
            #[cfg(feature = "cuda")]
            "cuda" => Ok(AnyDevice::Cuda(super::cuda::CudaDevice::new(0)?)),
            #[cfg(not(feature = "cuda"))]
            "cuda" => Err(not_built("cuda")),
            #[cfg(feature = "wgpu")]
            "wgpu" => Ok(AnyDevice::Wgpu(super::WgpuDevice::new()?)),
            #[cfg(not(feature = "wgpu"))]
            "wgpu" => Err(not_built("wgpu")),
            other => Err(Error::invalid(
                "backend",
                format!("`{other}` is not one of cpu, cuda, wgpu"),
            )),
        }
    }

    /// The device's name.
    pub fn name(&self) -> String {
        with_device!(self, |d| d.name())
    }
}
