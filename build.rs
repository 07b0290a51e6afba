//! With the `cuda-emu` feature, compiles kernels/*.cu with the host C++ compiler against
//! kernels/emu/cuda_emu.h (one translation unit per family, as NVRTC compiles them), plus the
//! scheduler in kernels/emu/runtime.cpp, and generates each family's entry table from its
//! `ENTRY_F32_F64(name, …)` lines. Without the feature it does nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cuda-emu")]
    emulator::build();
}

#[cfg(feature = "cuda-emu")]
mod emulator {
    use std::path::Path;

    /// Compiles the scheduler and one translation unit per family into `liblaplace_cuda_emu.a`.
    pub fn build() {
        let root =
            std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        let kernels = root.join("kernels");
        for file in ["common.cuh", "emu/cuda_emu.h", "emu/runtime.cpp", "emu/selftest.cpp"] {
            println!("cargo:rerun-if-changed={}", kernels.join(file).display());
        }
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .std("c++17")
            .opt_level(2)
            .include(&kernels)
            .flag_if_supported("-fno-strict-aliasing")
            .flag_if_supported("-Wno-unknown-pragmas")
            .flag_if_supported("-Wno-unused-parameter")
            .flag_if_supported("-Wno-unused-variable")
            .file(kernels.join("emu/runtime.cpp"))
            .file(kernels.join("emu/selftest.cpp"));
        // Every kernels/*.cu is a family (tests/nvrtc.rs checks that the registry lists each).
        println!("cargo:rerun-if-changed={}", kernels.display());
        let mut stems: Vec<String> = std::fs::read_dir(&kernels)
            .expect("kernels/ is readable")
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".cu").map(str::to_string))
            .collect();
        stems.sort();
        for stem in &stems {
            let path = kernels.join(format!("{stem}.cu"));
            println!("cargo:rerun-if-changed={}", path.display());
            let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let unit = translation_unit(stem, &path, &source);
            let unit_path = out.join(format!("emu_{stem}.cpp"));
            std::fs::write(&unit_path, unit).unwrap_or_else(|e| panic!("writing {}: {e}", unit_path.display()));
            build.file(unit_path);
        }
        let index_path = out.join("emu_index.cpp");
        std::fs::write(&index_path, index(&stems)).unwrap_or_else(|e| panic!("writing {}: {e}", index_path.display()));
        build.file(index_path);
        build.compile("laplace_cuda_emu");
    }

    /// Every `name` of an `ENTRY_F32_F64(name, …)` line (the macro's own definition excluded).
    fn entry_names(source: &str) -> Vec<String> {
        source
            .lines()
            .filter(|line| !line.trim_start().starts_with("#define"))
            .filter_map(|line| line.trim_start().strip_prefix("ENTRY_F32_F64("))
            .filter_map(|rest| rest.split(',').next())
            .map(|name| name.trim().to_string())
            .collect()
    }

    /// The family's source after the emulation header and common.cuh, then its entry table
    /// `laplace_emu_entries_<stem>`.
    fn translation_unit(stem: &str, path: &Path, source: &str) -> String {
        let mut rows = String::new();
        for name in entry_names(source) {
            for dtype in ["f32", "f64"] {
                rows += &format!("    EMU_ENTRY({name}_{dtype}),\n");
            }
        }
        format!(
            "#include \"emu/cuda_emu.h\"\n#include \"common.cuh\"\n#line 1 \"{file}\"\n{source}\n\
         static const EmuEntry emu_entries[] = {{\n{rows}}};\n\
         extern \"C\" const EmuEntry* laplace_emu_entries_{stem}(size_t* len) {{\n\
         \x20   *len = sizeof(emu_entries) / sizeof(emu_entries[0]);\n\
         \x20   return emu_entries;\n}}\n",
            file = path.display(),
        )
    }

    /// `laplace_emu_entries(i, &len)`: the entry table of the i-th family (null past the last).
    fn index(stems: &[String]) -> String {
        let declarations: String = stems
            .iter()
            .map(|stem| format!("extern \"C\" const EmuEntry* laplace_emu_entries_{stem}(size_t* len);\n"))
            .collect();
        let cases: String = stems
            .iter()
            .enumerate()
            .map(|(i, stem)| format!("        case {i}: return laplace_emu_entries_{stem}(len);\n"))
            .collect();
        format!(
            "#include \"emu/cuda_emu.h\"\n{declarations}\
             extern \"C\" const EmuEntry* laplace_emu_entries(size_t family, size_t* len) {{\n\
             \x20   switch (family) {{\n{cases}        default: *len = 0; return nullptr;\n    }}\n}}\n"
        )
    }
}
