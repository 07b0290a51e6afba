//! Input arrays, read and checked against each other before any device is probed: a missing
//! file or a wrong shape is one `error:` line, before any note about devices. Each file is
//! read once; the command then takes its arrays from here.

use std::sync::{Arc, Mutex};

use laplace_update::io::{Array, read_array};
use laplace_update::{Error, Result};

/// Arrays read so far, by their file spec.
static READ: Mutex<Vec<(String, Arc<Array>)>> = Mutex::new(Vec::new());

/// The array of `spec` (`FILE.npy` or `FILE.safetensors:TENSOR`), read on first use.
pub fn array(spec: &str) -> Result<Arc<Array>> {
    let mut read = READ.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, a)) = read.iter().find(|(s, _)| s == spec) {
        return Ok(a.clone());
    }
    let a = Arc::new(read_array(spec)?);
    read.push((spec.to_string(), a.clone()));
    Ok(a)
}

/// The array of `spec`, no longer kept here: the caller owns it, and frees it when done.
pub fn take(spec: &str) -> Result<Array> {
    let mut read = READ.lock().unwrap_or_else(|e| e.into_inner());
    match read.iter().position(|(s, _)| s == spec) {
        Some(i) => {
            let (_, a) = read.swap_remove(i);
            Ok(Arc::try_unwrap(a).unwrap_or_else(|shared| (*shared).clone()))
        }
        None => read_array(spec),
    }
}

/// `(rows, cols)` of a 2-D array, or a shape error naming `argument`.
fn matrix_shape(argument: &'static str, a: &Array) -> Result<(usize, usize)> {
    match a.shape[..] {
        [rows, cols] => Ok((rows, cols)),
        _ => Err(Error::ShapeMismatch {
            argument,
            expected: "a 2-D array".into(),
            got: format!("shape {:?} in {}", a.shape, a.source),
        }),
    }
}

/// Checks features (n × D, D = `features` where the posterior fixes it) and their targets
/// (n labels, or n × K values for regression); returns `(n, D)`.
pub fn batch(
    features_spec: &str,
    targets_spec: Option<&str>,
    regression: bool,
    features: Option<usize>,
) -> Result<(usize, usize)> {
    let x = array(features_spec)?;
    let (n, d) = matrix_shape("features", &x)?;
    if let Some(expected) = features
        && d != expected
    {
        return Err(Error::ShapeMismatch {
            argument: "features",
            expected: format!("{n} x {expected} (the posterior's D = {expected})"),
            got: format!("{n} x {d}"),
        });
    }
    if let Some(spec) = targets_spec {
        let y = array(spec)?;
        let rows = match (regression, &y.shape[..]) {
            (true, [rows, _]) => *rows,
            (false, [rows] | [rows, 1]) => *rows,
            (true, _) => {
                return Err(Error::ShapeMismatch {
                    argument: "labels",
                    expected: format!("{n} x K regression targets"),
                    got: format!("shape {:?}", y.shape),
                });
            }
            (false, _) => {
                return Err(Error::ShapeMismatch {
                    argument: "labels",
                    expected: format!("{n} class labels (1-D)"),
                    got: format!("shape {:?}", y.shape),
                });
            }
        };
        if rows != n {
            return Err(Error::ShapeMismatch {
                argument: "labels",
                expected: format!("{n} rows, one per row of the features"),
                got: format!("{rows}"),
            });
        }
    }
    Ok((n, d))
}

/// Checks a head W (K × D, one row per class, D columns like the features) and its bias
/// (K values); returns K. A W that is D × K is named as transposed.
pub fn head(weights_spec: &str, bias_spec: Option<&str>, d: usize) -> Result<usize> {
    let w = array(weights_spec)?;
    let (k, dw) = matrix_shape("weights", &w)?;
    if dw != d {
        return Err(Error::head_shape("weights", k, dw, d));
    }
    if let Some(spec) = bias_spec {
        let b = array(spec)?;
        let len = match b.shape[..] {
            [len] | [1, len] | [len, 1] => len,
            _ => usize::MAX,
        };
        if len != k {
            return Err(Error::ShapeMismatch {
                argument: "bias",
                expected: format!("{k} values, one per row of the weights"),
                got: format!("shape {:?}", b.shape),
            });
        }
    }
    Ok(k)
}

/// The class labels of `spec` (negative ones refused) and K, the largest label + 1.
pub fn class_labels(spec: &str) -> Result<(Vec<u32>, usize)> {
    let y: Vec<u32> = array(spec)?
        .to_labels()?
        .into_iter()
        .map(|l| u32::try_from(l).map_err(|_| Error::invalid("labels", format!("negative label {l}"))))
        .collect::<Result<_>>()?;
    let k = y.iter().copied().max().map_or(0, |m| m as usize + 1);
    Ok((y, k))
}
