//! Every CUDA entry point ran on the emulator. Lists the `_f32`/`_f64` entry points the PTX
//! exports (NVRTC, when built with `cuda`; the registry otherwise), checks that the emulator
//! compiled exactly those, and fails unless the emulated suites (`tests/cuda_emu.rs`, which
//! `cargo test` runs before this binary) launched each one. Prints
//! `cuda-emu coverage: X/Y entry points`.
#![cfg(feature = "cuda-emu")]

mod common;

use std::collections::BTreeSet;

use laplace_update::CudaEmuDevice;
use laplace_update::device::cuda::Family;

/// The entry points of every family's PTX, from NVRTC.
#[cfg(feature = "cuda")]
fn exported() -> BTreeSet<String> {
    use laplace_update::device::cuda::{compile, nvrtc_available};
    if common::backend_or_skip("nvrtc", nvrtc_available()).is_none() {
        return registered();
    }
    let mut names = BTreeSet::new();
    for family in Family::ALL {
        let ptx = compile(family, "sm_90").unwrap_or_else(|e| panic!("{e}")).ptx;
        for line in ptx.lines() {
            if let Some(rest) = line.trim().strip_prefix(".visible .entry ") {
                let name = rest.split('(').next().unwrap_or("").trim();
                assert!(
                    name.ends_with("_f32") || name.ends_with("_f64"),
                    "{}: entry point `{name}` without a dtype suffix",
                    family.file()
                );
                names.insert(name.to_string());
            }
        }
    }
    names
}

#[cfg(not(feature = "cuda"))]
fn exported() -> BTreeSet<String> {
    registered()
}

/// The registry's kernels in both dtypes.
fn registered() -> BTreeSet<String> {
    Family::ALL
        .iter()
        .flat_map(|f| f.kernels())
        .flat_map(|k| [format!("{k}_f32"), format!("{k}_f64")])
        .collect()
}

#[test]
fn every_entry_point_ran_on_the_emulator() {
    let exported = exported();
    assert_eq!(exported, registered(), "the PTX exports differ from the registry");
    let compiled: BTreeSet<String> = CudaEmuDevice::compiled_entry_points().into_iter().collect();
    assert_eq!(
        compiled, exported,
        "the emulator compiled other entry points than the PTX exports"
    );
    let log = std::fs::read_to_string(common::EMU_LAUNCH_LOG).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run the emulated suites first (`cargo test --features cuda-emu --test cuda_emu`)",
            common::EMU_LAUNCH_LOG
        )
    });
    let launched: BTreeSet<String> = log.lines().map(str::to_string).collect();
    let covered = exported.intersection(&launched).count();
    // Straight to the stream, past the harness's capture, so that the line shows in CI logs.
    use std::io::Write;
    let line = format!("cuda-emu coverage: {covered}/{} entry points\n", exported.len());
    let _ = std::io::stderr().write_all(line.as_bytes());
    let missing: Vec<&String> = exported.difference(&launched).collect();
    assert!(missing.is_empty(), "never launched on the emulator: {missing:?}");
}
