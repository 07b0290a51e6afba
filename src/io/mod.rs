//! Files: `.npy` and `.safetensors` arrays in, `.npy` out, and durable posterior files, with
//! [`PosteriorFile`] for read-modify-write under a lock that concurrent writers respect.
//!
//! Every reader validates what it parses and fails with [`Error::Format`]
//! or [`Error::Io`]; none panics on malformed input.

mod array;
mod durable;
pub mod fuzz;
mod locked;
mod npy;
mod posterior_file;
mod safetensors_array;

pub use array::{Array, ArrayData};
pub use durable::remove_dead_temporaries;
pub use locked::{DEFAULT_LOCK_TIMEOUT, PosteriorFile};
pub use npy::{parse_npy, read_npy, write_npy};
pub use posterior_file::{
    PosteriorHeader, accumulator_from_bytes, accumulator_to_bytes, load_accumulator, load_posterior, peek_bytes,
    peek_posterior, posterior_from_bytes, posterior_to_bytes, save_accumulator, save_posterior,
};
pub use safetensors_array::read_safetensors_tensor;

use crate::error::{Error, Result};
use std::path::Path;

/// Reads an array from `FILE.npy` or `FILE.safetensors:TENSOR`.
pub fn read_array(spec: &str) -> Result<Array> {
    if let Some((file, tensor)) = spec.rsplit_once(':').filter(|(f, _)| f.ends_with(".safetensors")) {
        return read_safetensors_tensor(Path::new(file), tensor);
    }
    if spec.ends_with(".safetensors") {
        return Err(Error::Format {
            what: spec.to_string(),
            reason: "name the tensor: FILE.safetensors:TENSOR".into(),
        });
    }
    read_npy(Path::new(spec))
}

pub(crate) fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}
