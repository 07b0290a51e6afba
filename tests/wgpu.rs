//! The cross-backend suites on the wgpu backend (f32), compared against f64 references, plus
//! the wgpu-specific checks. Without an adapter every test prints `SKIPPED wgpu: reason`, and
//! fails instead when `LAPLACE_REQUIRE` contains `wgpu`. CI runs them on Mesa's lavapipe with
//! `LAPLACE_WGPU_ADAPTER=software`.
#![cfg(feature = "wgpu")]

mod common;

fn device() -> laplace_update::Result<laplace_update::WgpuDevice> {
    laplace_update::WgpuDevice::new()
}

mod posterior {
    use super::common;
    crate::posterior_suite!("wgpu", laplace_update::WgpuDevice::new(), f32);
}

mod complete {
    use super::common;
    crate::complete_suite!("wgpu", laplace_update::WgpuDevice::new(), f32);
}

mod kernels {
    use super::common;
    crate::kernel_suite!("wgpu", laplace_update::WgpuDevice::new(), f32);
}

/// f64 is a typed `Unsupported`, not a panic or a wrong answer.
#[test]
fn f64_is_unsupported() {
    use laplace_update::{Device, Error};
    let Some(gpu) = common::backend_or_skip("wgpu", device()) else {
        return;
    };
    assert!(matches!(gpu.upload(&[1.0f64], 1, 1), Err(Error::Unsupported(_))));
    assert!(matches!(gpu.zeros::<f64>(2, 2), Err(Error::Unsupported(_))));
}

/// A matrix beyond the adapter's largest buffer is a typed device error, and the device keeps
/// working afterwards.
#[test]
fn allocation_beyond_the_limit_is_a_typed_error() {
    use laplace_update::{Device, Error};
    let Some(gpu) = common::backend_or_skip("wgpu", device()) else {
        return;
    };
    let side = ((gpu.max_buffer_bytes() / 4) as f64).sqrt() as usize + 2;
    assert!(matches!(
        gpu.zeros::<f32>(side, side),
        Err(Error::Device { backend: "wgpu", .. })
    ));
    let a = gpu.upload(&[3.0f32, -4.0], 1, 2).unwrap();
    assert_eq!(gpu.max_abs(&a).unwrap(), 4.0);
}

/// Without software adapters allowed and with a name no adapter has, construction is
/// `BackendUnavailable` with the reason, never a panic.
#[test]
fn no_matching_adapter_is_backend_unavailable() {
    use laplace_update::{Error, WgpuDevice, WgpuOptions};
    let options = WgpuOptions {
        allow_software: true,
        name_contains: Some("no adapter is called this".into()),
    };
    match WgpuDevice::with_options(&options) {
        Err(Error::BackendUnavailable {
            backend: "wgpu",
            reason,
        }) => assert!(!reason.is_empty()),
        other => panic!("expected BackendUnavailable, got {other:?}"),
    }
}

/// The paths that split work across dispatches (GGN weights in row chunks, predictive products
/// in row chunks, contractions longer than one dispatch takes) agree with the faer reference.
#[test]
fn chunked_paths_match_faer() {
    use common::Rng;
    use laplace_update::{CpuDevice, Device, Op};
    let Some(gpu) = common::backend_or_skip("wgpu", device()) else {
        return;
    };
    let cpu = CpuDevice::new(2).unwrap();
    let mut rng = Rng::new(21);
    let mut normals =
        |n: usize, scale: f64| -> Vec<f32> { rng.normals(n, scale).into_iter().map(|x| x as f32).collect() };
    let compare = |what: &str, got: Vec<f32>, want: Vec<f32>, tol: f32| {
        let scale = want.iter().fold(1e-30f32, |m, x| m.max(x.abs()));
        let err = got.iter().zip(&want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(err < tol, "{what}: relative error {err}");
    };
    // GGN: 45,000 samples at K = 10 exceed one chunk of block weights.
    let (n, d, k) = (45_000, 3, 10);
    let phi = normals(n * d, 1.0);
    let logits = normals(n * k, 1.0);
    let mut probs = cpu.upload(&logits, n, k).unwrap();
    cpu.softmax_rows(&mut probs).unwrap();
    let probs = cpu.download(&probs).unwrap();
    let on_cpu = {
        let mut prec = cpu.zeros::<f32>(k * d, k * d).unwrap();
        let (x, p) = (cpu.upload(&phi, n, d).unwrap(), cpu.upload(&probs, n, k).unwrap());
        cpu.ggn_accumulate(&mut prec, &x, &p, None, 1.0).unwrap();
        cpu.download(&prec).unwrap()
    };
    let on_gpu = {
        let mut prec = gpu.zeros::<f32>(k * d, k * d).unwrap();
        let (x, p) = (gpu.upload(&phi, n, d).unwrap(), gpu.upload(&probs, n, k).unwrap());
        gpu.ggn_accumulate(&mut prec, &x, &p, None, 1.0).unwrap();
        gpu.download(&prec).unwrap()
    };
    compare("chunked ggn_accumulate", on_gpu, on_cpu, 1e-4);
    // Predictive covariance over 2,000 inputs at K·D = 500: three row chunks.
    let (n, d, k) = (2_000, 50, 10);
    let phi = normals(n * d, 1.0);
    let a = normals(k * d * k * d, 0.1);
    let mut sigma_cpu = cpu.zeros::<f32>(k * d, k * d).unwrap();
    cpu.gemm(
        &mut sigma_cpu,
        0.0,
        &cpu.upload(&a, k * d, k * d).unwrap(),
        Op::N,
        &cpu.upload(&a, k * d, k * d).unwrap(),
        Op::T,
        1.0,
    )
    .unwrap();
    let sigma = cpu.download(&sigma_cpu).unwrap();
    let want = cpu
        .download(
            &cpu.predictive_covariance(&sigma_cpu, &cpu.upload(&phi, n, d).unwrap())
                .unwrap(),
        )
        .unwrap();
    let got = gpu
        .download(
            &gpu.predictive_covariance(
                &gpu.upload(&sigma, k * d, k * d).unwrap(),
                &gpu.upload(&phi, n, d).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
    compare("chunked predictive_covariance", got, want, 1e-4);
    // A 3,000-long contraction: three gemm dispatches accumulating.
    let (m, kk, nn) = (40, 3_000, 30);
    let (x, y) = (normals(m * kk, 1.0), normals(kk * nn, 1.0));
    let mut c = cpu.zeros::<f32>(m, nn).unwrap();
    cpu.gemm(
        &mut c,
        0.0,
        &cpu.upload(&x, m, kk).unwrap(),
        Op::N,
        &cpu.upload(&y, kk, nn).unwrap(),
        Op::N,
        1.0,
    )
    .unwrap();
    let mut g = gpu.zeros::<f32>(m, nn).unwrap();
    gpu.gemm(
        &mut g,
        0.0,
        &gpu.upload(&x, m, kk).unwrap(),
        Op::N,
        &gpu.upload(&y, kk, nn).unwrap(),
        Op::N,
        1.0,
    )
    .unwrap();
    compare(
        "long-contraction gemm",
        gpu.download(&g).unwrap(),
        cpu.download(&c).unwrap(),
        1e-4,
    );
}
