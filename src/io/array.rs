//! A typed n-dimensional array read from a file, and its conversions to library inputs.

use crate::error::{Error, Result};
use crate::scalar::Scalar;

/// Element data of an [`Array`], in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayData {
    /// 32-bit floats (also f16 and bf16 inputs, widened exactly).
    F32(Vec<f32>),
    /// 64-bit floats.
    F64(Vec<f64>),
    /// Signed 64-bit integers.
    I64(Vec<i64>),
    /// Signed 32-bit integers.
    I32(Vec<i32>),
    /// Unsigned 32-bit integers.
    U32(Vec<u32>),
    /// Unsigned bytes.
    U8(Vec<u8>),
}

/// An array with its shape, in C order whatever order the file stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Where it came from, for error messages.
    pub source: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements, `shape.iter().product()` of them.
    pub data: ArrayData,
}

impl Array {
    fn dtype_name(&self) -> &'static str {
        match self.data {
            ArrayData::F32(_) => "f32",
            ArrayData::F64(_) => "f64",
            ArrayData::I64(_) => "i64",
            ArrayData::I32(_) => "i32",
            ArrayData::U32(_) => "u32",
            ArrayData::U8(_) => "u8",
        }
    }

    fn format_error(&self, reason: impl Into<String>) -> Error {
        Error::Format {
            what: self.source.clone(),
            reason: reason.into(),
        }
    }

    /// A 2-D float array as `(row-major data, rows, cols)`; a 1-D array is one row per element
    /// only when `allow_vector` is set.
    pub fn to_matrix<T: Scalar>(&self) -> Result<(Vec<T>, usize, usize)> {
        let (rows, cols) = match self.shape[..] {
            [r, c] => (r, c),
            _ => return Err(self.format_error(format!("expected a 2-D array, got shape {:?}", self.shape))),
        };
        Ok((self.to_floats()?, rows, cols))
    }

    /// [`to_matrix`](Self::to_matrix), consuming the array: its elements are moved, not
    /// copied, when they already are `T`.
    pub fn into_matrix<T: Scalar>(self) -> Result<(Vec<T>, usize, usize)> {
        let (rows, cols) = match self.shape[..] {
            [r, c] => (r, c),
            _ => return Err(self.format_error(format!("expected a 2-D array, got shape {:?}", self.shape))),
        };
        match self.data {
            ArrayData::F32(v) if T::DTYPE == crate::DType::F32 => {
                let any: Box<dyn std::any::Any> = Box::new(v);
                match any.downcast::<Vec<T>>() {
                    Ok(v) => Ok((*v, rows, cols)),
                    Err(_) => Err(Error::Format {
                        what: self.source,
                        reason: "f32 elements that are not f32".into(),
                    }),
                }
            }
            data => Array {
                source: self.source,
                shape: self.shape,
                data,
            }
            .to_matrix(),
        }
    }

    /// A 1-D float array (or 2-D with one row or one column).
    pub fn to_vector<T: Scalar>(&self) -> Result<Vec<T>> {
        match self.shape[..] {
            [_] | [1, _] | [_, 1] => self.to_floats(),
            _ => Err(self.format_error(format!("expected a 1-D array, got shape {:?}", self.shape))),
        }
    }

    fn to_floats<T: Scalar>(&self) -> Result<Vec<T>> {
        match &self.data {
            ArrayData::F32(v) => Ok(v.iter().map(|&x| T::from_f64(f64::from(x))).collect()),
            ArrayData::F64(v) => {
                if T::DTYPE == crate::DType::F32
                    && let Some(index) = v.iter().position(|x| x.is_finite() && x.abs() > f64::from(f32::MAX))
                {
                    return Err(self.format_error(format!("value at index {index} overflows f32")));
                }
                Ok(v.iter().map(|&x| T::from_f64(x)).collect())
            }
            _ => Err(self.format_error(format!("expected floats (f32 or f64), got {}", self.dtype_name()))),
        }
    }

    /// A 1-D integer array of class labels (i64, i32, u32 or u8).
    pub fn to_labels(&self) -> Result<Vec<i64>> {
        if !matches!(self.shape[..], [_] | [_, 1]) {
            return Err(self.format_error(format!("labels must be 1-D, got shape {:?}", self.shape)));
        }
        match &self.data {
            ArrayData::I64(v) => Ok(v.clone()),
            ArrayData::I32(v) => Ok(v.iter().map(|&x| i64::from(x)).collect()),
            ArrayData::U32(v) => Ok(v.iter().map(|&x| i64::from(x)).collect()),
            ArrayData::U8(v) => Ok(v.iter().map(|&x| i64::from(x)).collect()),
            _ => Err(self.format_error(format!(
                "labels must be integers (i64, i32, u32, u8), got {}",
                self.dtype_name()
            ))),
        }
    }
}
