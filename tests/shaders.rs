//! Every WGSL shader parses and validates with naga, with no adapter needed.

use std::path::Path;

fn shader_files() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_shader_parses_and_validates() {
    let files = shader_files();
    assert!(files.len() >= 6, "shaders/ holds {} files", files.len());
    for (name, source) in &files {
        let module =
            naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
        let mut validator =
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty());
        if let Err(e) = validator.validate(&module) {
            panic!("{name}: {}", e.emit_to_string(source));
        }
        assert!(
            module
                .entry_points
                .iter()
                .all(|e| e.stage == naga::ShaderStage::Compute),
            "{name}: only compute entry points belong in shaders/"
        );
    }
}

/// The library builds in exactly the files of `shaders/`.
#[cfg(feature = "wgpu")]
#[test]
fn the_library_embeds_every_shader() {
    let on_disk: Vec<(String, String)> = shader_files();
    let mut built: Vec<(String, String)> = laplace_update::device::wgpu::shader_sources()
        .into_iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
    built.sort();
    assert_eq!(on_disk, built);
}
