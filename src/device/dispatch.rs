//! Values generic over the device and the element type, held where code cannot be generic (the
//! Python module's classes): a [`Kind`] names the generic type, [`OnAnyDevice`] holds one value
//! of it on whichever device and element type the build has, and three macros open, convert
//! and make one:
//!
//! - [`with_any!`](crate::with_any)`(value, |x: T| body)` runs `body` on the concrete value,
//!   with `T` its element type;
//! - [`map_any!`](crate::map_any)`(value, |x: T| body)` does the same and wraps the result in
//!   the same variant of another kind;
//! - [`build_any!`](crate::build_any)`(device, dtype, |d: T| body)` makes one on an
//!   [`AnyDevice`](super::AnyDevice) in a [`DType`](crate::DType), or says why it cannot;
//! - [`with_any_pair!`](crate::with_any_pair) opens two values of the same device and type.
//!
//! ```
//! use laplace_update::device::{Kind, OnAnyDevice};
//! use laplace_update::{AnyDevice, CpuDevice, DType, Device, FitConfig, HostMatrix, Posterior, build_any, with_any};
//! struct Posteriors;
//! impl Kind for Posteriors {
//!     type On<D: Device, T: laplace_update::Scalar> = Posterior<D, T>;
//! }
//! let device = AnyDevice::Cpu(CpuDevice::new(1)?);
//! let any: OnAnyDevice<Posteriors> = build_any!(device, DType::F32, |d: T| {
//!     let head = HostMatrix::new(&[1.0 as T, -1.0], 2, 1)?;
//!     Posterior::fit(&d, HostMatrix::new(&[0.5 as T, -0.5], 2, 1)?, &[0u32, 1], head, None, &FitConfig::default())?
//! })?;
//! assert_eq!(with_any!(&any, |p: T| p.classes()), 2);
//! # Ok::<(), laplace_update::Error>(())
//! ```

use super::{CpuDevice, Device};
use crate::scalar::Scalar;

/// A type generic over the device and the element type: `On<D, T>` is it on `D` in `T`.
pub trait Kind {
    /// The type on device `D` in element type `T`.
    type On<D: Device, T: Scalar>;
}

/// One value of kind `K` on one of the devices and element types of this build (wgpu computes
/// in f32 only).
pub enum OnAnyDevice<K: Kind> {
    /// On the CPU, in f32.
    CpuF32(K::On<CpuDevice, f32>),
    /// On the CPU, in f64.
    CpuF64(K::On<CpuDevice, f64>),
    /// On an NVIDIA GPU, in f32.
    #[cfg(feature = "cuda")]
    CudaF32(K::On<super::cuda::CudaDevice, f32>),
    /// On an NVIDIA GPU, in f64.
    #[cfg(feature = "cuda")]
    CudaF64(K::On<super::cuda::CudaDevice, f64>),
    /// On a wgpu device, in f32.
    #[cfg(feature = "wgpu")]
    WgpuF32(K::On<super::WgpuDevice, f32>),
}

/// Defines the dispatch macros over one build's variants: `(variant, AnyDevice variant, DType
/// variant, element type)`. `$d` is a literal `$`, for the macros it defines.
macro_rules! dispatch_macros {
    ($d:tt $(($variant:ident, $device:ident, $dtype:ident, $t:ty)),* $(,)?) => {
        #[doc(hidden)]
        #[macro_export]
        macro_rules! __with_any {
            ($d value:expr, $d x:ident, $d T:ident, $d body:expr) => {
                match $d value {
                    $($crate::device::OnAnyDevice::$variant($d x) => {
                        #[allow(dead_code)]
                        type $d T = $t;
                        $d body
                    })*
                }
            };
        }

        #[doc(hidden)]
        #[macro_export]
        macro_rules! __map_any {
            ($d value:expr, $d x:ident, $d T:ident, $d body:expr) => {
                match $d value {
                    $($crate::device::OnAnyDevice::$variant($d x) => $crate::device::OnAnyDevice::$variant({
                        #[allow(dead_code)]
                        type $d T = $t;
                        $d body
                    }),)*
                }
            };
        }

        #[doc(hidden)]
        #[macro_export]
        macro_rules! __with_any_pair {
            ($d a:expr, $d b:expr, $d x:ident, $d y:ident, $d T:ident, $d body:expr, $d other:expr) => {
                match ($d a, $d b) {
                    $(($crate::device::OnAnyDevice::$variant($d x), $crate::device::OnAnyDevice::$variant($d y)) => {
                        #[allow(dead_code)]
                        type $d T = $t;
                        $d body
                    })*
                    #[allow(unreachable_patterns)]
                    _ => $d other,
                }
            };
        }

        #[doc(hidden)]
        #[macro_export]
        macro_rules! __build_any {
            ($d device:expr, $d dtype:expr, $d x:ident, $d T:ident, $d body:expr) => {
                match ($d device, $d dtype) {
                    $(($crate::AnyDevice::$device($d x), $crate::DType::$dtype) => {
                        Ok($crate::device::OnAnyDevice::$variant({
                            #[allow(dead_code)]
                            type $d T = $t;
                            $d body
                        }))
                    })*
                    #[allow(unreachable_patterns)]
                    (device, dtype) => Err($crate::Error::Unsupported(format!(
                        "{} in {}",
                        device.name(),
                        dtype.name()
                    ))),
                }
            };
        }
    };
}

#[cfg(all(feature = "cuda", feature = "wgpu"))]
dispatch_macros!($
    (CpuF32, Cpu, F32, f32),
    (CpuF64, Cpu, F64, f64),
    (CudaF32, Cuda, F32, f32),
    (CudaF64, Cuda, F64, f64),
    (WgpuF32, Wgpu, F32, f32),
);

#[cfg(all(feature = "cuda", not(feature = "wgpu")))]
dispatch_macros!($
    (CpuF32, Cpu, F32, f32),
    (CpuF64, Cpu, F64, f64),
    (CudaF32, Cuda, F32, f32),
    (CudaF64, Cuda, F64, f64),
);

#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
dispatch_macros!($
    (CpuF32, Cpu, F32, f32),
    (CpuF64, Cpu, F64, f64),
    (WgpuF32, Wgpu, F32, f32),
);

#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
dispatch_macros!($
    (CpuF32, Cpu, F32, f32),
    (CpuF64, Cpu, F64, f64),
);

/// Runs `body` with `x` bound to the concrete value inside an
/// [`OnAnyDevice`](crate::device::OnAnyDevice) (or a reference to one) and `T` its element
/// type; see [`dispatch`](crate::device::dispatch).
#[macro_export]
macro_rules! with_any {
    ($value:expr, |$x:ident: $T:ident| $body:expr) => {
        $crate::__with_any!($value, $x, $T, $body)
    };
}

/// [`with_any!`](crate::with_any), with the result wrapped in the same variant of another
/// kind's [`OnAnyDevice`](crate::device::OnAnyDevice): an accumulator's posterior stays on its
/// device and type.
#[macro_export]
macro_rules! map_any {
    ($value:expr, |$x:ident: $T:ident| $body:expr) => {
        $crate::__map_any!($value, $x, $T, $body)
    };
}

/// Runs `body` on two values of the same device and element type, else evaluates `other`.
#[macro_export]
macro_rules! with_any_pair {
    ($a:expr, $b:expr, |$x:ident, $y:ident: $T:ident| $body:expr, else $other:expr) => {
        $crate::__with_any_pair!($a, $b, $x, $y, $T, $body, $other)
    };
}

/// Makes an [`OnAnyDevice`](crate::device::OnAnyDevice) by running `body` with `d` bound to
/// the concrete device of an [`AnyDevice`](crate::AnyDevice) and `T` the element type of a
/// [`DType`](crate::DType): `Ok` of the variant, or `Error::Unsupported` for a pair the build
/// has not (wgpu in f64).
#[macro_export]
macro_rules! build_any {
    ($device:expr, $dtype:expr, |$d:ident: $T:ident| $body:expr) => {
        $crate::__build_any!($device, $dtype, $d, $T, $body)
    };
}
