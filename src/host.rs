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
    /// Wraps `data`, whose length the caller has already checked to be `rows · cols`.
    #[cfg_attr(not(feature = "candle"), allow(dead_code))]
    pub(crate) fn from_checked(data: &'a [T], rows: usize, cols: usize) -> Self {
        debug_assert_eq!(rows.checked_mul(cols), Some(data.len()));
        HostMatrix { data, rows, cols }
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
        check_finite_rows("targets", self.data, self.cols)
    }
    fn target_rows(&self, start: usize, count: usize, _outputs: usize) -> Vec<T> {
        self.data[start * self.cols..(start + count) * self.cols].to_vec()
    }
}

/// Fails with `NonFinite` at the first NaN or ±Inf.
pub(crate) fn check_finite<T: Scalar>(argument: &'static str, data: &[T]) -> Result<()> {
    check_finite_rows(argument, data, 1)
}

/// [`check_finite`] of a row-major array of rows of `columns` values: the error names the row
/// and column.
pub(crate) fn check_finite_rows<T: Scalar>(argument: &'static str, data: &[T], columns: usize) -> Result<()> {
    use rayon::prelude::*;
    if data.par_chunks(1 << 18).all(all_finite) {
        return Ok(());
    }
    match data.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(Error::NonFinite {
            argument,
            index,
            columns,
        }),
        None => Ok(()),
    }
}

/// Whether every value is finite, at memory speed: `0·x` is ±0 for a finite x and NaN for ±∞
/// and NaN, summed in 16 independent lanes that the compiler vectorises.
fn all_finite<T: Scalar>(data: &[T]) -> bool {
    let mut lanes = [T::zero(); 16];
    let chunks = data.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += x * T::zero();
        }
    }
    lanes.iter().all(|l| *l == T::zero()) && rest.iter().all(|x| x.is_finite())
}

/// Checks a batch of features: non-empty, `cols` columns, finite.
pub(crate) fn check_features<T: Scalar>(argument: &'static str, x: &HostMatrix<'_, T>, cols: usize) -> Result<()> {
    check_batch_shape(argument, (x.rows(), x.cols()), cols)?;
    check_finite_rows(argument, x.data(), x.cols())
}

/// `EmptyBatch` for no rows, `ShapeMismatch` unless a batch of `shape` has `cols` columns.
pub(crate) fn check_batch_shape(argument: &'static str, (rows, got): (usize, usize), cols: usize) -> Result<()> {
    if rows == 0 {
        return Err(Error::EmptyBatch { argument });
    }
    if got != cols {
        return Err(Error::shape(argument, (rows, cols), (rows, got)));
    }
    Ok(())
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
    let mut out = Vec::new();
    feature_rows_into(&mut out, x, start, count, augment);
    out
}

/// [`feature_rows`] written into `out`, whose allocation is reused when large enough.
pub(crate) fn feature_rows_into<T: Scalar>(
    out: &mut Vec<T>,
    x: &HostMatrix<'_, T>,
    start: usize,
    count: usize,
    augment: bool,
) {
    out.clear();
    if !augment {
        out.extend_from_slice(&x.data()[start * x.cols()..(start + count) * x.cols()]);
        return;
    }
    out.reserve(count * (x.cols() + 1));
    for i in start..start + count {
        out.extend_from_slice(x.row(i));
        out.push(T::one());
    }
}

#[cfg(test)]
mod finite_tests {
    use super::check_finite;
    use crate::error::Error;

    /// Every non-finite kind, in a lane, in the remainder and across parallel blocks, is found
    /// at its index; finite data of any length passes.
    #[test]
    fn non_finite_values_are_found_at_their_index() {
        for len in [0usize, 1, 15, 16, 17, 1000, (1 << 18) + 5, 3 << 18] {
            let data: Vec<f32> = (0..len).map(|i| (i % 97) as f32 - 48.0).collect();
            assert!(check_finite("x", &data).is_ok(), "len {len}");
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                for index in [0, len / 2, len.saturating_sub(1)].into_iter().filter(|&i| i < len) {
                    let mut d = data.clone();
                    d[index] = bad;
                    match check_finite("x", &d) {
                        Err(Error::NonFinite { index: got, .. }) => assert_eq!(got, index, "len {len}, {bad}"),
                        other => panic!("len {len}, {bad} at {index}: {other:?}"),
                    }
                }
            }
        }
        assert!(check_finite("x", &[f64::MAX, f64::MIN_POSITIVE, -0.0]).is_ok());
    }
}
