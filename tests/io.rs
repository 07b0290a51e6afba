//! `.npy` and `.safetensors` readers and writers, and posterior files: round trips, every
//! supported layout, and malformed files as typed errors.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{Problem, complete, le_bytes as le, npy_bytes as npy, suite};
use laplace_update::io::{
    ArrayData, load_posterior, parse_npy, peek_posterior, read_array, read_npy, save_posterior, write_npy,
};
use laplace_update::{CpuDevice, Error, OutputWeighting, Posterior, Structure};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("laplace-io-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn npy_round_trips_f32_and_f64() {
    let dir = temp_dir("npy");
    let a: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    write_npy(&dir.join("a.npy"), &a, &[3, 4]).unwrap();
    let back = read_npy(&dir.join("a.npy")).unwrap();
    assert_eq!(back.shape, vec![3, 4]);
    assert_eq!(back.data, ArrayData::F32(a.clone()));
    let b: Vec<f64> = vec![1.5, -2.0, 1e-300];
    write_npy(&dir.join("b.npy"), &b, &[3]).unwrap();
    assert_eq!(read_npy(&dir.join("b.npy")).unwrap().data, ArrayData::F64(b));
    assert!(matches!(
        write_npy(&dir.join("c.npy"), &a, &[5, 5]),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn npy_reads_every_supported_dtype_and_fortran_order() {
    // 2 × 3 stored column-major: [[1, 2, 3], [4, 5, 6]].
    let f = npy("<f8", true, "(2, 3)", &le(&[1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0]));
    let a = parse_npy(&f, "f.npy").unwrap();
    assert_eq!(
        a.to_matrix::<f64>().unwrap(),
        (vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3)
    );
    let f32s = parse_npy(&npy("<f4", false, "(2, 1)", &le(&[0.5f32, 2.0])), "x").unwrap();
    assert_eq!(f32s.to_matrix::<f64>().unwrap(), (vec![0.5, 2.0], 2, 1));
    for (descr, body) in [
        ("<i8", le(&[0i64, 2, 1])),
        ("<i4", le(&[0i32, 2, 1])),
        ("<u4", le(&[0u32, 2, 1])),
        ("|u1", vec![0u8, 2, 1]),
    ] {
        let a = parse_npy(&npy(descr, false, "(3,)", &body), descr).unwrap();
        assert_eq!(a.to_labels().unwrap(), vec![0, 2, 1], "{descr}");
    }
}

#[test]
fn malformed_npy_files_are_format_errors() {
    let good = npy("<f4", false, "(2, 2)", &le(&[1.0f32, 2.0, 3.0, 4.0]));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("bad magic", b"NOTNUMPY\x01\x00\x00\x00".to_vec()),
        ("truncated data", good[..good.len() - 3].to_vec()),
        ("truncated header", good[..20].to_vec()),
        ("trailing data", [good.clone(), vec![0u8; 4]].concat()),
        ("big endian", npy(">f4", false, "(1,)", &[0, 0, 0, 0])),
        ("complex dtype", npy("<c8", false, "(1,)", &[0; 8])),
        ("bad shape", npy("<f4", false, "(2, x)", &[0; 8])),
        ("huge shape", npy("<f4", false, "(18446744073709551615, 2)", &[])),
    ];
    for (name, bytes) in cases {
        let e = parse_npy(&bytes, name).unwrap_err();
        assert!(matches!(e, Error::Format { .. }), "{name}: {e}");
    }
    // Wrong kind or rank for the use.
    let floats = parse_npy(&good, "floats").unwrap();
    assert!(matches!(floats.to_labels(), Err(Error::Format { .. })));
    let labels = parse_npy(&npy("<i8", false, "(2,)", &le(&[1i64, 2])), "labels").unwrap();
    assert!(matches!(labels.to_matrix::<f32>(), Err(Error::Format { .. })));
    let big = parse_npy(&npy("<f8", false, "(1, 1)", &le(&[1e300f64])), "big").unwrap();
    assert!(matches!(big.to_matrix::<f32>(), Err(Error::Format { .. })));
    assert!(matches!(
        read_npy(std::path::Path::new("/nonexistent/x.npy")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn safetensors_tensors_are_read_by_name() {
    use safetensors::{Dtype, tensor::TensorView};
    let dir = temp_dir("st");
    let x = le(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let h: Vec<u8> = [0.5f32, -2.0]
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let y = le(&[3i64, 1]);
    let tensors = vec![
        ("features", TensorView::new(Dtype::F32, vec![2, 3], &x).unwrap()),
        ("half", TensorView::new(Dtype::F16, vec![1, 2], &h).unwrap()),
        ("labels", TensorView::new(Dtype::I64, vec![2], &y).unwrap()),
    ];
    let path = dir.join("t.safetensors");
    std::fs::write(&path, safetensors::serialize(tensors, None).unwrap()).unwrap();
    let spec = |t: &str| format!("{}:{t}", path.display());
    assert_eq!(
        read_array(&spec("features")).unwrap().to_matrix::<f64>().unwrap(),
        (vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3)
    );
    assert_eq!(
        read_array(&spec("half")).unwrap().to_matrix::<f32>().unwrap(),
        (vec![0.5, -2.0], 1, 2)
    );
    assert_eq!(read_array(&spec("labels")).unwrap().to_labels().unwrap(), vec![3, 1]);
    let e = read_array(&spec("nope")).unwrap_err();
    assert!(e.to_string().contains("features, half, labels"), "{e}");
    assert!(matches!(
        read_array(&path.display().to_string()),
        Err(Error::Format { .. })
    ));
    std::fs::write(dir.join("bad.safetensors"), b"garbage").unwrap();
    assert!(matches!(
        read_array(&format!("{}:x", dir.join("bad.safetensors").display())),
        Err(Error::Format { .. })
    ));
}

fn posteriors(cpu: &CpuDevice) -> Vec<Posterior<CpuDevice, f32>> {
    use laplace_update::{Curvature, Likelihood, PriorShape};
    let mut out = Vec::new();
    for (structure, bias_in) in [
        (Structure::Full, false),
        (Structure::Shared(OutputWeighting::Gaussian), true),
        (Structure::Shared(OutputWeighting::Categorical), false),
    ] {
        let pb = Problem::random(8, 12, 4, 3, bias_in);
        out.push(suite::fit::<CpuDevice, f32>(cpu, &pb, structure));
    }
    // Every other structure, likelihood and curvature, and a per-class prior.
    let regression = Likelihood::Regression { sigma_noise: 0.3 };
    let mc = Curvature::MonteCarloFisher { samples: 3, seed: 7 };
    for (structure, likelihood, curvature, per_class) in [
        (
            Structure::Diag,
            Likelihood::Classification,
            Curvature::EmpiricalFisher,
            true,
        ),
        (Structure::Kron, Likelihood::Classification, mc, false),
        (Structure::Full, regression, Curvature::Ggn, true),
        (Structure::Kron, regression, Curvature::EmpiricalFisher, false),
    ] {
        let case = complete::Case::new(9, 12, 4, 3, true);
        let config = case.config(structure, likelihood, curvature, 5);
        let mut post = case.fit::<CpuDevice, f32>(cpu, 12, &config).unwrap();
        if per_class {
            post.optimize_prior_precision(PriorShape::PerClass).unwrap();
        }
        out.push(post);
    }
    out
}

#[test]
fn posterior_files_round_trip_bit_for_bit() {
    let cpu = CpuDevice::new(1).unwrap();
    let dir = temp_dir("post");
    for (i, post) in posteriors(&cpu).into_iter().enumerate() {
        let path = dir.join(format!("p{i}.safetensors"));
        save_posterior(&post, &path).unwrap();
        let header = peek_posterior(&path).unwrap();
        assert_eq!(
            (header.structure, header.classes, header.features, header.likelihood),
            (post.structure(), 3, 4, post.likelihood())
        );
        assert_eq!(header.bias, post.bias_mode());
        let back: Posterior<CpuDevice, f32> = load_posterior(&cpu, &path).unwrap();
        assert!(suite::snapshot(&back) == suite::snapshot(&post));
        let bits = |p: &Posterior<CpuDevice, f32>| p.prior_precision().iter().map(|t| t.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&post));
        assert_eq!(back.kron_factors().unwrap(), post.kron_factors().unwrap());
        assert_eq!(
            (back.likelihood(), back.curvature()),
            (post.likelihood(), post.curvature())
        );
        assert_eq!(
            (back.structure(), back.bias_mode()),
            (post.structure(), post.bias_mode())
        );
        // Saving over an existing file replaces it and leaves no temporary behind.
        save_posterior(&back, &path).unwrap();
        assert!(matches!(
            load_posterior::<CpuDevice, f64>(&cpu, &path),
            Err(Error::Format { .. })
        ));
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn damaged_posterior_files_are_format_errors() {
    let cpu = CpuDevice::new(1).unwrap();
    let dir = temp_dir("damaged");
    let post = &posteriors(&cpu)[0];
    let path = dir.join("p.safetensors");
    save_posterior(post, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let load = |bytes: &[u8]| {
        let p = dir.join("x.safetensors");
        std::fs::write(&p, bytes).unwrap();
        load_posterior::<CpuDevice, f32>(&cpu, &p).map(|_| ()).unwrap_err()
    };
    // A flipped bit in the tensor data: the checksum catches it.
    let mut flipped = bytes.clone();
    let last = flipped.len() - 5;
    flipped[last] ^= 0x10;
    let e = load(&flipped);
    assert!(e.to_string().contains("checksum"), "{e}");
    // Truncated, empty, garbage.
    for damaged in [
        &bytes[..bytes.len() / 2],
        &bytes[..4],
        &[][..],
        b"not a posterior at all".as_slice(),
    ] {
        assert!(matches!(load(damaged), Error::Format { .. }));
    }
    // Another version, and a file with no metadata.
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata: HashMap<String, String> = meta.metadata().clone().unwrap();
    metadata.insert("version".into(), "99".into());
    let tensors: Vec<_> = file.tensors();
    let e = load(&safetensors::serialize(tensors.clone(), Some(metadata)).unwrap());
    assert!(e.to_string().contains("version 99"), "{e}");
    assert!(matches!(
        load(&safetensors::serialize(tensors, None).unwrap()),
        Error::Format { .. }
    ));
    assert!(matches!(
        load_posterior::<CpuDevice, f32>(&cpu, &dir.join("missing.safetensors")),
        Err(Error::Io { .. })
    ));
}
