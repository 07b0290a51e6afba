//! Floating-point element types the library computes in.

use std::fmt::{Debug, Display};

/// Element type tag, for backends that dispatch on it (kernel names, file headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary64.
    F64,
}

impl DType {
    /// Short lowercase name, `"f32"` or `"f64"`, used as a kernel-name suffix.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }
}

/// A real floating-point scalar: `f32` or `f64`.
///
/// Arithmetic comes from [`num_traits::Float`]; the faer bound lets the CPU backend
/// hand buffers straight to faer.
pub trait Scalar:
    num_traits::Float
    + faer::traits::RealField
    + bytemuck::Pod
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + std::iter::Sum
    + 'static
{
    /// Tag of this type.
    const DTYPE: DType;
    /// Machine epsilon.
    const EPS: Self;
    /// Rounds an `f64` to this type.
    fn from_f64(x: f64) -> Self;
    /// Widens to `f64`.
    fn as_f64(self) -> f64;
}

impl Scalar for f32 {
    const DTYPE: DType = DType::F32;
    const EPS: Self = f32::EPSILON;
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn as_f64(self) -> f64 {
        self as f64
    }
}

impl Scalar for f64 {
    const DTYPE: DType = DType::F64;
    const EPS: Self = f64::EPSILON;
    fn from_f64(x: f64) -> Self {
        x
    }
    fn as_f64(self) -> f64 {
        self
    }
}
