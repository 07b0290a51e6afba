//! One tensor of a `.safetensors` file as an [`Array`].

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::array::{Array, ArrayData};
use super::io_error;
use crate::error::{Error, Result};

/// Reads tensor `name` of the `.safetensors` file at `path`. f16 and bf16 are widened to f32.
pub fn read_safetensors_tensor(path: &Path, name: &str) -> Result<Array> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let source = format!("{}:{name}", path.display());
    let fail = |reason: String| Error::Format {
        what: source.clone(),
        reason,
    };
    let file = SafeTensors::deserialize(&bytes).map_err(|e| fail(format!("not a valid safetensors file: {e}")))?;
    let view = file.tensor(name).map_err(|_| {
        let mut names = file.names();
        names.sort();
        fail(format!("no tensor named `{name}` (has: {})", names.join(", ")))
    })?;
    let raw = view.data();
    let data = match view.dtype() {
        Dtype::F32 => ArrayData::F32(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::F64 => ArrayData::F64(raw.chunks_exact(8).map(|b| f64::from_le_bytes(le8(b))).collect()),
        Dtype::F16 => ArrayData::F32(
            raw.chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        Dtype::BF16 => ArrayData::F32(
            raw.chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        Dtype::I64 => ArrayData::I64(raw.chunks_exact(8).map(|b| i64::from_le_bytes(le8(b))).collect()),
        Dtype::I32 => ArrayData::I32(
            raw.chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::U32 => ArrayData::U32(
            raw.chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::U8 => ArrayData::U8(raw.to_vec()),
        other => return Err(fail(format!("unsupported dtype {other:?}"))),
    };
    Ok(Array {
        source,
        shape: view.shape().to_vec(),
        data,
    })
}

fn le8(b: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&b[..8]);
    out
}
