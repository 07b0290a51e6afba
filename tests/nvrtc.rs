//! Every CUDA kernel compiles through NVRTC, in f32 and f64, for sm_80 (A100) and sm_90 (H100,
//! H200), to PTX and to CUBIN, with no GPU. Without NVRTC the tests show as ignored, with the reason, and fail instead when
//! `LAPLACE_REQUIRE` contains `nvrtc`. CI installs NVRTC from the nvidia-cuda-nvrtc-cu12 wheel.

mod common;

use laplace_update::device::cuda::{Family, compile, nvrtc_available};

fn main() -> std::process::ExitCode {
    let mut cases = crate::tests!(case: every_kernel_compiles_for_sm80_and_sm90, a_compile_error_carries_the_log);
    cases.extend(crate::tests!(always: the_kernel_files_are_all_listed));
    common::harness::run("nvrtc", nvrtc_available(), cases)
}

fn every_kernel_compiles_for_sm80_and_sm90() {
    if common::backend_or_skip("nvrtc", nvrtc_available()).is_none() {
        return;
    }
    for arch in ["sm_80", "sm_90"] {
        for family in Family::ALL {
            let compiled = compile(family, arch).unwrap_or_else(|e| panic!("{e}"));
            // A CUBIN for the real architecture: an ELF image the driver loads without a JIT.
            let cubin = compiled
                .cubin
                .as_deref()
                .unwrap_or_else(|| panic!("{}: no CUBIN for {arch}", family.file()));
            assert_eq!(
                &cubin[..4],
                b"\x7fELF",
                "{}: the CUBIN is not an ELF image",
                family.file()
            );
            let ptx = compiled.ptx;
            assert!(
                ptx.contains(&format!(".target {arch}")),
                "{}: PTX for another target",
                family.file()
            );
            for kernel in family.kernels() {
                for dtype in ["f32", "f64"] {
                    let entry = format!(".entry {kernel}_{dtype}(");
                    assert!(
                        ptx.contains(&entry),
                        "{} for {arch}: no `{kernel}_{dtype}` entry",
                        family.file()
                    );
                }
            }
        }
    }
}

/// A source error comes back as a typed error naming the file and carrying NVRTC's log.
fn a_compile_error_carries_the_log() {
    if common::backend_or_skip("nvrtc", nvrtc_available()).is_none() {
        return;
    }
    let broken = "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }";
    match laplace_update::device::cuda::compile_source("broken.cu", broken, "sm_90") {
        Err(laplace_update::Error::Device {
            backend: "cuda",
            reason,
        }) => {
            assert!(
                reason.contains("broken.cu") && reason.contains("undefined_name"),
                "{reason}"
            )
        }
        other => panic!("expected a typed compile error, got {other:?}"),
    }
}

/// `kernels/` holds exactly the families the library compiles.
fn the_kernel_files_are_all_listed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cu"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = Family::ALL.iter().map(|f| f.file().to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}
