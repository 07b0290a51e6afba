//! Host-side inputs and the validation every public entry point runs before touching a device.

use crate::error::{Error, Result};
use crate::scalar::Scalar;

/// A borrowed, row-major matrix in host memory: the form every public input takes.
///
/// ```
/// use laplace_update::HostMatrix;
/// let data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
/// let m = HostMatrix::new(&data, 2, 3)?;
/// assert_eq!(m.row(1), &[4.0, 5.0, 6.0]);
/// # Ok::<(), laplace_update::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct HostMatrix<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
}

impl<'a, T: Scalar> HostMatrix<'a, T> {
    /// Wraps `data` as a `rows × cols` row-major matrix; the length must match.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::ShapeMismatch {
                argument: "data",
                expected: format!("{rows} x {cols} = {} elements", rows.saturating_mul(cols)),
                got: format!("{} elements", data.len()),
            });
        }
        Ok(HostMatrix { data, rows, cols })
    }
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The row-major elements.
    pub fn data(&self) -> &'a [T] {
        self.data
    }
    /// Row `i`.
    ///
    /// # Panics
    /// If `i >= rows()`, like slice indexing.
    pub fn row(&self, i: usize) -> &'a [T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Integer types accepted as class labels.
pub trait Label: Copy + Send + Sync {
    /// The label as a signed integer, so that negative values can be reported.
    fn to_i64(self) -> i64;
}

macro_rules! impl_label {
    ($($t:ty),*) => {$(
        impl Label for $t {
            fn to_i64(self) -> i64 {
                i64::try_from(self).unwrap_or(i64::MAX)
            }
        }
    )*};
}
impl_label!(u8, u16, u32, u64, usize, i8, i16, i32, i64);

/// What a batch is labelled with: class labels (`&[L]`, `&Vec<L>`, `&[L; N]`) for
/// classification, or an n × K [`HostMatrix`] of real values for regression.
pub trait Targets<T: Scalar>: Sync {
    /// Number of samples.
    fn count(&self) -> usize;
    /// Checks the targets of `rows` samples with `outputs` classes (or outputs), for a
    /// regression likelihood when `regression` is set.
    ///
    /// Errors: `ShapeMismatch`, `LabelOutOfRange`, `NonFinite`, and `InvalidArgument` for
    /// labels under regression or real values under classification.
    fn check(&self, rows: usize, outputs: usize, regression: bool) -> Result<()>;
    /// Rows `start..start + count` as a row-major `count × outputs` matrix: one-hot rows for
    /// labels, the values for regression. Only called after [`Targets::check`] succeeded.
    fn target_rows(&self, start: usize, count: usize, outputs: usize) -> Vec<T>;
}

impl<T: Scalar, L: Label> Targets<T> for [L] {
    fn count(&self) -> usize {
        self.len()
    }
    fn check(&self, rows: usize, outputs: usize, regression: bool) -> Result<()> {
        if regression {
            return Err(Error::invalid(
                "targets",
                "a regression likelihood needs real-valued targets (n x K), not class labels",
            ));
        }
        check_labels(self, rows, outputs)
    }
    fn target_rows(&self, start: usize, count: usize, outputs: usize) -> Vec<T> {
        one_hot(&self[start..start + count], outputs)
    }
}

impl<T: Scalar, L: Label> Targets<T> for Vec<L> {
    fn count(&self) -> usize {
        self.len()
    }
    fn check(&self, rows: usize, outputs: usize, regression: bool) -> Result<()> {
        Targets::<T>::check(self.as_slice(), rows, outputs, regression)
    }
    fn target_rows(&self, start: usize, count: usize, outputs: usize) -> Vec<T> {
        one_hot(&self[start..start + count], outputs)
    }
}

impl<T: Scalar, L: Label, const N: usize> Targets<T> for [L; N] {
    fn count(&self) -> usize {
        N
    }
    fn check(&self, rows: usize, outputs: usize, regression: bool) -> Result<()> {
        Targets::<T>::check(self.as_slice(), rows, outputs, regression)
    }
    fn target_rows(&self, start: usize, count: usize, outputs: usize) -> Vec<T> {
        one_hot(&self[start..start + count], outputs)
    }
}

impl<T: Scalar> Targets<T> for HostMatrix<'_, T> {
    fn count(&self) -> usize {
        self.rows
    }
    fn check(&self, rows: usize, outputs: usize, regression: bool) -> Result<()> {
        if !regression {
            return Err(Error::invalid(
                "targets",
                "a classification likelihood needs class labels, not real-valued targets",
            ));
        }
        if (self.rows, self.cols) != (rows, outputs) {
            return Err(Error::shape("targets", (rows, outputs), (self.rows, self.cols)));
        }
        check_finite("targets", self.data)
    }
    fn target_rows(&self, start: usize, count: usize, _outputs: usize) -> Vec<T> {
        self.data[start * self.cols..(start + count) * self.cols].to_vec()
    }
}

/// Fails with `NonFinite` at the first NaN or ±Inf.
pub(crate) fn check_finite<T: Scalar>(argument: &'static str, data: &[T]) -> Result<()> {
    match data.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(Error::NonFinite { argument, index }),
        None => Ok(()),
    }
}

/// Checks a batch of features: non-empty, `cols` columns, finite.
pub(crate) fn check_features<T: Scalar>(argument: &'static str, x: &HostMatrix<'_, T>, cols: usize) -> Result<()> {
    if x.rows() == 0 {
        return Err(Error::EmptyBatch { argument });
    }
    if x.cols() != cols {
        return Err(Error::shape(argument, (x.rows(), cols), (x.rows(), x.cols())));
    }
    check_finite(argument, x.data())
}

/// Checks labels against the batch size and the class count.
pub(crate) fn check_labels<L: Label>(labels: &[L], rows: usize, classes: usize) -> Result<()> {
    if labels.len() != rows {
        return Err(Error::shape("labels", (rows, 1), (labels.len(), 1)));
    }
    for (index, &l) in labels.iter().enumerate() {
        let label = l.to_i64();
        if label < 0 || label as u64 >= classes as u64 {
            return Err(Error::LabelOutOfRange { index, label, classes });
        }
    }
    Ok(())
}

/// Row-major one-hot targets (rows × classes) of already validated labels.
pub(crate) fn one_hot<T: Scalar, L: Label>(labels: &[L], classes: usize) -> Vec<T> {
    let mut out = vec![T::zero(); labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        out[i * classes + l.to_i64() as usize] = T::one();
    }
    out
}

/// Rows `start..start + count` of `x`, with a trailing column of ones when `augment` is set.
pub(crate) fn feature_rows<T: Scalar>(x: &HostMatrix<'_, T>, start: usize, count: usize, augment: bool) -> Vec<T> {
    if !augment {
        return x.data()[start * x.cols()..(start + count) * x.cols()].to_vec();
    }
    let mut out = Vec::with_capacity(count * (x.cols() + 1));
    for i in start..start + count {
        out.extend_from_slice(x.row(i));
        out.push(T::one());
    }
    out
}
