//! NumPy `.npy` files, versions 1 to 3: little-endian f32, f64, i64, i32, u32 and u8, in C or
//! Fortran order, in; f32 and f64 in C order, out.

use std::path::Path;

use super::array::{Array, ArrayData};
use super::io_error;
use crate::error::{Error, Result};
use crate::scalar::{DType, Scalar};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<Array> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    parse_npy(&bytes, &path.display().to_string())
}

/// Parses the bytes of a `.npy` file; `source` names it in errors.
pub fn parse_npy(bytes: &[u8], source: &str) -> Result<Array> {
    let fail = |reason: String| Error::Format {
        what: source.to_string(),
        reason,
    };
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(fail("not a .npy file (bad magic)".into()));
    }
    let (header_len, start): (usize, usize) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(fail(format!("unsupported .npy version {v}"))),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| fail("truncated header".into()))?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| fail("header is not text".into()))?;
    let descr = dict_value(header, "descr").ok_or_else(|| fail("header has no 'descr'".into()))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran = match dict_value(header, "fortran_order") {
        Some("True") => true,
        Some("False") => false,
        _ => return Err(fail("header has no valid 'fortran_order'".into())),
    };
    let shape_text = dict_value(header, "shape").ok_or_else(|| fail("header has no 'shape'".into()))?;
    let shape = parse_shape(shape_text).ok_or_else(|| fail(format!("bad shape {shape_text}")))?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| fail("shape overflows".into()))?;
    let body = &bytes[end..];
    let item = match descr {
        "<f4" | "<i4" | "<u4" => 4,
        "<f8" | "<i8" => 8,
        "|u1" | "<u1" => 1,
        other if other.starts_with('>') => return Err(fail(format!("big-endian data ({other}) is not supported"))),
        other => {
            return Err(fail(format!(
                "unsupported dtype {other}; use f32, f64, i64, i32, u32 or u8"
            )));
        }
    };
    let expected = count.checked_mul(item).ok_or_else(|| fail("shape overflows".into()))?;
    if body.len() < expected {
        return Err(fail(format!("truncated data: {} of {expected} bytes", body.len())));
    }
    if body.len() > expected {
        return Err(fail(format!("{} bytes of trailing data", body.len() - expected)));
    }
    let data = match descr {
        "<f4" => ArrayData::F32(
            body.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        "<f8" => ArrayData::F64(body.chunks_exact(8).map(|b| f64::from_le_bytes(le8(b))).collect()),
        "<i8" => ArrayData::I64(body.chunks_exact(8).map(|b| i64::from_le_bytes(le8(b))).collect()),
        "<i4" => ArrayData::I32(
            body.chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        "<u4" => ArrayData::U32(
            body.chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        _ => ArrayData::U8(body.to_vec()),
    };
    let mut array = Array {
        source: source.to_string(),
        shape,
        data,
    };
    if fortran && array.shape.len() > 1 {
        to_c_order(&mut array);
    }
    Ok(array)
}

/// Writes `data` (C order, `shape`) as a version 1 `.npy` file of `T`.
pub fn write_npy<T: Scalar>(path: &Path, data: &[T], shape: &[usize]) -> Result<()> {
    if shape.iter().product::<usize>() != data.len() {
        return Err(Error::ShapeMismatch {
            argument: "data",
            expected: format!("{shape:?}"),
            got: format!("{} elements", data.len()),
        });
    }
    let descr = match T::DTYPE {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
    };
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending the header with a newline.
    while !(MAGIC.len() + 4 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let header_len = u16::try_from(header.len()).map_err(|_| Error::Format {
        what: path.display().to_string(),
        reason: "shape too long for a header".into(),
    })?;
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + std::mem::size_of_val(data));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(bytemuck::cast_slice(data));
    super::durable::write_durably(path, &out)
}

fn le8(b: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&b[..8]);
    out
}

/// The raw text of `key`'s value in a Python dict literal: up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[at + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

fn parse_shape(text: &str) -> Option<Vec<usize>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect()
}

/// Reorders Fortran-order (column-major) data to C order.
fn to_c_order(array: &mut Array) {
    fn reorder<T: Copy>(v: &[T], shape: &[usize]) -> Vec<T> {
        let n = v.len();
        let mut out = Vec::with_capacity(n);
        let mut index = vec![0usize; shape.len()];
        for _ in 0..n {
            // Fortran offset of the C-order multi-index.
            let mut offset = 0;
            let mut stride = 1;
            for (i, &d) in index.iter().zip(shape) {
                offset += i * stride;
                stride *= d;
            }
            out.push(v[offset]);
            for axis in (0..shape.len()).rev() {
                index[axis] += 1;
                if index[axis] < shape[axis] {
                    break;
                }
                index[axis] = 0;
            }
        }
        out
    }
    let shape = array.shape.clone();
    array.data = match &array.data {
        ArrayData::F32(v) => ArrayData::F32(reorder(v, &shape)),
        ArrayData::F64(v) => ArrayData::F64(reorder(v, &shape)),
        ArrayData::I64(v) => ArrayData::I64(reorder(v, &shape)),
        ArrayData::I32(v) => ArrayData::I32(reorder(v, &shape)),
        ArrayData::U32(v) => ArrayData::U32(reorder(v, &shape)),
        ArrayData::U8(v) => ArrayData::U8(reorder(v, &shape)),
    };
}
