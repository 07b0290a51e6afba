//! candle tensors as the library's host inputs (feature `candle`).
//!
//! [`TensorMatrix`] reads a rank-2 candle tensor as a [`HostMatrix`]: a contiguous CPU tensor
//! whose element type is the posterior's (`f32` into `f32`, `f64` into `f64`) is borrowed in
//! place, with no copy, for as long as the `TensorMatrix` lives. Any other CPU tensor is copied
//! once into an owned row-major buffer: strided tensors (a transpose, a column slice) are
//! gathered, and `f16`, `bf16` and `f32`-into-`f64` are widened exactly (`f64` into `f32` is
//! rounded). [`labels`] reads a rank-1 integer tensor as class labels.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use laplace_update::candle::{TensorMatrix, labels};
//! use laplace_update::{CpuDevice, FitConfig, Posterior};
//!
//! let features = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &Device::Cpu)?;
//! let head = Tensor::new(&[[0.5f32, -0.5], [-0.5, 0.5]], &Device::Cpu)?;
//! let y = Tensor::new(&[0u32, 1, 1], &Device::Cpu)?;
//! let phi = TensorMatrix::<f32>::new(&features)?;
//! assert!(phi.is_borrowed()); // contiguous f32 on the CPU: no copy
//! let cpu = CpuDevice::new(1)?;
//! let post = Posterior::fit(&cpu, phi.view(), &labels(&y)?, TensorMatrix::new(&head)?.view(),
//!                           None, &FitConfig::default())?;
//! assert_eq!(post.classes(), 2);
//! // A transpose is strided: gathered into an owned copy.
//! let transposed = features.t()?;
//! assert!(!TensorMatrix::<f32>::new(&transposed)?.is_borrowed());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A borrowed view holds the tensor's storage read-locked: candle's in-place operations on that
//! storage wait until the view is dropped, so drop it before mutating the tensor on the same
//! thread. Tensors on a CUDA or Metal device are an [`Error::Unsupported`]; bring them to the
//! host with `tensor.to_device(&candle_core::Device::Cpu)`.

use std::ops::Range;

use candle_core::{CpuStorage, Storage, StorageRef, Tensor};

use crate::error::{Error, Result};
use crate::host::HostMatrix;
use crate::scalar::{DType, Scalar};

/// A rank-2 candle tensor as a row-major host matrix of `T`: borrowed when the tensor is a
/// contiguous CPU tensor of `T`, an owned copy otherwise.
pub struct TensorMatrix<'t, T> {
    data: Data<'t, T>,
    rows: usize,
    cols: usize,
}

enum Data<'t, T> {
    /// The tensor's storage, read-locked, and the range of its elements.
    Borrowed {
        storage: StorageRef<'t>,
        range: Range<usize>,
    },
    Owned(Vec<T>),
}

/// The elements of `cpu` as a slice of `T`, when they are of type `T`.
fn as_slice<T: Scalar>(cpu: &CpuStorage) -> Option<&[T]> {
    match (T::DTYPE, cpu) {
        (DType::F32, CpuStorage::F32(v)) => Some(bytemuck::cast_slice(v)),
        (DType::F64, CpuStorage::F64(v)) => Some(bytemuck::cast_slice(v)),
        _ => None,
    }
}

/// Element `offset` of `cpu` widened to `f64`, for the floating-point storages.
fn element(cpu: &CpuStorage, offset: usize) -> Option<f64> {
    Some(match cpu {
        CpuStorage::F32(v) => f64::from(v[offset]),
        CpuStorage::F64(v) => v[offset],
        CpuStorage::F16(v) => v[offset].to_f64(),
        CpuStorage::BF16(v) => v[offset].to_f64(),
        _ => return None,
    })
}

fn not_on_cpu(tensor: &Tensor) -> Error {
    Error::Unsupported(format!(
        "a tensor on {:?}: only CPU tensors are read in place; move it with to_device(&Device::Cpu)",
        tensor.device().location()
    ))
}

impl<'t, T: Scalar> TensorMatrix<'t, T> {
    /// Reads `tensor`, rank 2 (rows × cols), without a copy when it is a contiguous CPU tensor
    /// of `T`.
    ///
    /// Errors: `ShapeMismatch` for another rank; `InvalidArgument` for a non-float element type;
    /// `Unsupported` for a tensor that is not on the CPU.
    pub fn new(tensor: &'t Tensor) -> Result<Self> {
        let &[rows, cols] = tensor.dims() else {
            return Err(Error::ShapeMismatch {
                argument: "tensor",
                expected: "a rank-2 tensor (rows × cols)".into(),
                got: format!("shape {:?}", tensor.dims()),
            });
        };
        let (storage, layout) = tensor.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            return Err(not_on_cpu(tensor));
        };
        if let (Some((start, end)), Some(_)) = (layout.contiguous_offsets(), as_slice::<T>(cpu)) {
            let range = start..end;
            return Ok(TensorMatrix {
                data: Data::Borrowed { storage, range },
                rows,
                cols,
            });
        }
        // Gathered in row-major order through the strides, widened (or rounded) to T.
        let (start, stride) = (layout.start_offset(), layout.stride());
        let mut owned = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                let Some(v) = element(cpu, start + i * stride[0] + j * stride[1]) else {
                    return Err(Error::invalid(
                        "tensor",
                        format!("element type {:?}: features are f32, f64, f16 or bf16", tensor.dtype()),
                    ));
                };
                owned.push(T::from_f64(v));
            }
        }
        Ok(TensorMatrix {
            data: Data::Owned(owned),
            rows,
            cols,
        })
    }

    /// Whether the elements are the tensor's own storage (no copy was made).
    pub fn is_borrowed(&self) -> bool {
        matches!(self.data, Data::Borrowed { .. })
    }

    /// The matrix as the library's host input.
    pub fn view(&self) -> HostMatrix<'_, T> {
        let data = match &self.data {
            Data::Borrowed { storage, range } => match &**storage {
                Storage::Cpu(cpu) => as_slice::<T>(cpu).map_or(&[][..], |s| &s[range.clone()]),
                _ => &[],
            },
            Data::Owned(v) => v.as_slice(),
        };
        HostMatrix::from_checked(data, self.rows, self.cols)
    }
}

/// A rank-1 integer CPU tensor (u8, u32, i16, i32 or i64) as class labels.
///
/// Errors: `ShapeMismatch` for another rank; `InvalidArgument` for a float element type;
/// `Unsupported` for a tensor that is not on the CPU. Range checks are the fit's or update's.
pub fn labels(tensor: &Tensor) -> Result<Vec<i64>> {
    let &[n] = tensor.dims() else {
        return Err(Error::ShapeMismatch {
            argument: "labels",
            expected: "a rank-1 tensor".into(),
            got: format!("shape {:?}", tensor.dims()),
        });
    };
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(not_on_cpu(tensor));
    };
    let (start, step) = (layout.start_offset(), layout.stride()[0]);
    let at = |i: usize| start + i * step;
    Ok(match cpu {
        CpuStorage::U8(v) => (0..n).map(|i| i64::from(v[at(i)])).collect(),
        CpuStorage::U32(v) => (0..n).map(|i| i64::from(v[at(i)])).collect(),
        CpuStorage::I16(v) => (0..n).map(|i| i64::from(v[at(i)])).collect(),
        CpuStorage::I32(v) => (0..n).map(|i| i64::from(v[at(i)])).collect(),
        CpuStorage::I64(v) => (0..n).map(|i| v[at(i)]).collect(),
        _ => {
            return Err(Error::invalid(
                "labels",
                format!("element type {:?}: labels are integers", tensor.dtype()),
            ));
        }
    })
}

/// A row-major `rows × cols` host result (probabilities, logit variances) as a CPU tensor;
/// the vector becomes the tensor's storage without a copy.
///
/// Errors: `ShapeMismatch` when the length is not `rows · cols`.
pub fn to_tensor<T: Scalar + candle_core::WithDType>(data: Vec<T>, rows: usize, cols: usize) -> Result<Tensor> {
    HostMatrix::new(&data, rows, cols)?;
    Tensor::from_vec(data, (rows, cols), &candle_core::Device::Cpu).map_err(|e| Error::invalid("data", e.to_string()))
}
