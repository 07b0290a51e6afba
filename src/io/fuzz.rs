//! Entry points for fuzzing the readers on raw bytes (used by `fuzz/`, `examples/fuzz.rs` and
//! the regression tests). Each feeds the bytes to a reader and discards the `Result`: the only
//! failure is a panic.

use std::path::PathBuf;

use crate::device::CpuDevice;

/// A per-thread scratch file for the readers that take paths.
fn scratch(bytes: &[u8], suffix: &str) -> Option<PathBuf> {
    let path = std::env::temp_dir().join(format!(
        "laplace-fuzz-{}-{:?}.{suffix}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, bytes).ok()?;
    Some(path)
}

/// [`parse_npy`](super::parse_npy) and the conversions a caller applies next.
pub fn npy(bytes: &[u8]) {
    if let Ok(array) = super::parse_npy(bytes, "fuzz") {
        let _ = array.to_matrix::<f32>();
        let _ = array.to_matrix::<f64>();
        let _ = array.to_vector::<f32>();
        let _ = array.to_labels();
    }
}

/// [`read_safetensors_tensor`](super::read_safetensors_tensor) for the tensor names a test file
/// would use, and the conversions.
pub fn safetensors(bytes: &[u8]) {
    let Some(path) = scratch(bytes, "safetensors") else {
        return;
    };
    for name in ["x", "features", "half", "labels"] {
        if let Ok(array) = super::read_safetensors_tensor(&path, name) {
            let _ = array.to_matrix::<f32>();
            let _ = array.to_labels();
        }
    }
    let _ = std::fs::remove_file(path);
}

/// [`peek_posterior`](super::peek_posterior), [`load_posterior`](super::load_posterior) in both
/// element types and [`load_accumulator`](super::load_accumulator).
pub fn posterior(bytes: &[u8]) {
    let Some(path) = scratch(bytes, "safetensors") else {
        return;
    };
    let Ok(cpu) = CpuDevice::new(1) else { return };
    let _ = super::peek_posterior(&path);
    let _ = super::load_posterior::<_, f32>(&cpu, &path);
    let _ = super::load_posterior::<_, f64>(&cpu, &path);
    let _ = super::load_accumulator::<_, f32>(&cpu, &path, 16);
    let _ = std::fs::remove_file(path);
}
