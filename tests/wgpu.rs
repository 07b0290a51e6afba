//! The cross-backend suites on the wgpu backend (f32), compared against f64 references, plus
//! the wgpu-specific checks. Without an adapter they show as ignored, with the reason
//! (`tests/common/harness.rs`), and fail instead when `LAPLACE_REQUIRE` contains `wgpu`. With
//! no hardware adapter they run on Mesa's lavapipe where it is installed.

mod common;

use laplace_update::device::ops;

fn device() -> laplace_update::Result<laplace_update::WgpuDevice> {
    laplace_update::WgpuDevice::new()
}

fn main() -> std::process::ExitCode {
    // No hardware adapter: Mesa's lavapipe, where it is installed, unless the user chose.
    if std::env::var_os("LAPLACE_WGPU_ADAPTER").is_none() && device().is_err() {
        // SAFETY: first in `main`, before this program starts any thread.
        unsafe { std::env::set_var("LAPLACE_WGPU_ADAPTER", "software") };
    }
    // 400 sequential updates for the drift test (1,000 on cpu and cuda): on lavapipe each one is
    // a few submits, and 1,000 per structure made it the suite's critical path (over 8 minutes).
    let mut cases = crate::backend_suites!("wgpu", crate::device(), drift(64, 4), f32);
    // The kernel suite with 16 workgroups per dimension: gemm tiles split beyond 1,024 rows or
    // columns and 16 batch entries (every Full GGN with K' ≥ 5), 1-D launches folded into z.
    cases.extend(crate::kernel_suite!(
        "kernels_on_split_grids",
        "wgpu",
        crate::small_grid_device(16),
        f32
    ));
    cases.extend(crate::tests!(case:
        f64_is_unsupported,
        allocation_beyond_the_limit_is_a_typed_error,
        chunked_paths_match_faer,
        grids_split_over_every_dimension_match_faer,
        nan_inf_and_subnormals_are_judged_on_their_bits,
    ));
    cases.extend(crate::tests!(always: no_matching_adapter_is_backend_unavailable));
    common::harness::run("wgpu", device(), cases)
}

/// A device opened with at most `cap` workgroups per dispatch dimension (wgpu validates every
/// dispatch against it), so that the launch plans split and fold their grids at small sizes.
fn small_grid_device(cap: u32) -> laplace_update::Result<laplace_update::WgpuDevice> {
    let options = laplace_update::WgpuOptions {
        max_workgroups_per_dimension: Some(cap),
        ..laplace_update::WgpuOptions::from_env()
    };
    laplace_update::WgpuDevice::with_options(&options)
}

/// f64 is a typed `Unsupported`, not a panic or a wrong answer.
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
fn no_matching_adapter_is_backend_unavailable() {
    use laplace_update::{Error, WgpuDevice, WgpuOptions};
    let options = WgpuOptions {
        allow_software: true,
        name_contains: Some("no adapter is called this".into()),
        ..WgpuOptions::default()
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
    ops::softmax_rows(&cpu, &mut probs).unwrap();
    let probs = cpu.download(&probs).unwrap();
    let on_cpu = {
        let mut prec = cpu.zeros::<f32>(k * d, k * d).unwrap();
        let (x, p) = (cpu.upload(&phi, n, d).unwrap(), cpu.upload(&probs, n, k).unwrap());
        ops::ggn_accumulate(&cpu, &mut prec, &x, &p, None, 1.0).unwrap();
        cpu.download(&prec).unwrap()
    };
    let on_gpu = {
        let mut prec = gpu.zeros::<f32>(k * d, k * d).unwrap();
        let (x, p) = (gpu.upload(&phi, n, d).unwrap(), gpu.upload(&probs, n, k).unwrap());
        ops::ggn_accumulate(&gpu, &mut prec, &x, &p, None, 1.0).unwrap();
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

/// Grids split over every dimension at once: a 2-workgroup cap turns a 300 × 200 gemm into
/// 6 launches and a 2,000-row logits gemm into 16 row launches; a 4-workgroup cap splits a
/// Full GGN over K = 6 classes (36 class blocks) into 9 launches in z. Each agrees with faer.
fn grids_split_over_every_dimension_match_faer() {
    use common::Rng;
    use laplace_update::{CpuDevice, Device, Op};
    let Some(gpu) = common::backend_or_skip("wgpu", small_grid_device(2)) else {
        return;
    };
    let cpu = CpuDevice::new(2).unwrap();
    let mut rng = Rng::new(5);
    let mut normals =
        |n: usize, scale: f64| -> Vec<f32> { rng.normals(n, scale).into_iter().map(|x| x as f32).collect() };
    let compare = |what: &str, got: Vec<f32>, want: Vec<f32>| {
        let scale = want.iter().fold(1e-30f32, |m, x| m.max(x.abs()));
        let err = got.iter().zip(&want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(err < 1e-4, "{what}: relative error {err}");
    };
    for (m, k, n, ta, tb) in [
        (300, 70, 200, Op::N, Op::N),
        (2_000, 40, 10, Op::N, Op::T),
        (130, 300, 257, Op::T, Op::N),
    ] {
        let a = normals(m * k, 1.0);
        let b = normals(k * n, 1.0);
        let c0 = normals(m * n, 1.0);
        let (ar, ac) = if ta == Op::N { (m, k) } else { (k, m) };
        let (br, bc) = if tb == Op::N { (k, n) } else { (n, k) };
        let mut want = cpu.upload(&c0, m, n).unwrap();
        cpu.gemm(
            &mut want,
            0.5,
            &cpu.upload(&a, ar, ac).unwrap(),
            ta,
            &cpu.upload(&b, br, bc).unwrap(),
            tb,
            1.5,
        )
        .unwrap();
        let mut got = gpu.upload(&c0, m, n).unwrap();
        gpu.gemm(
            &mut got,
            0.5,
            &gpu.upload(&a, ar, ac).unwrap(),
            ta,
            &gpu.upload(&b, br, bc).unwrap(),
            tb,
            1.5,
        )
        .unwrap();
        compare(
            &format!("gemm {m} x {k} x {n}"),
            gpu.download(&got).unwrap(),
            cpu.download(&want).unwrap(),
        );
    }
    // Full GGN over K = 6 classes, D = 20: 36 batch entries; 1-D launches of up to 14,400
    // threads fold into 4 × 4 × 4 workgroups.
    let Some(gpu) = common::backend_or_skip("wgpu", small_grid_device(4)) else {
        return;
    };
    let (n, d, k) = (90, 20, 6);
    let phi = normals(n * d, 1.0);
    let mut probs = cpu.upload(&normals(n * k, 1.0), n, k).unwrap();
    ops::softmax_rows(&cpu, &mut probs).unwrap();
    let probs = cpu.download(&probs).unwrap();
    let mut want = cpu.zeros::<f32>(k * d, k * d).unwrap();
    ops::ggn_accumulate(
        &cpu,
        &mut want,
        &cpu.upload(&phi, n, d).unwrap(),
        &cpu.upload(&probs, n, k).unwrap(),
        None,
        1.0,
    )
    .unwrap();
    let mut got = gpu.zeros::<f32>(k * d, k * d).unwrap();
    ops::ggn_accumulate(
        &gpu,
        &mut got,
        &gpu.upload(&phi, n, d).unwrap(),
        &gpu.upload(&probs, n, k).unwrap(),
        None,
        1.0,
    )
    .unwrap();
    compare(
        "batched ggn_accumulate",
        gpu.download(&got).unwrap(),
        cpu.download(&want).unwrap(),
    );
}

/// NaN, Inf and subnormal inputs are judged on their bits, as on the CPU: max-abs keeps a
/// subnormal (no `abs()` that a flushing driver zeroes) and lets NaN win, and a Cholesky pivot
/// that is NaN or +Inf is `NotPositiveDefinite` at its index.
fn nan_inf_and_subnormals_are_judged_on_their_bits() {
    use laplace_update::{CpuDevice, Device, Error};
    let Some(gpu) = common::backend_or_skip("wgpu", device()) else {
        return;
    };
    let cpu = CpuDevice::new(1).unwrap();
    let tiny = f32::from_bits(0x0000_0400); // a subnormal, ~1.4e-42
    for (values, want) in [
        (vec![tiny, -tiny * 2.0, 0.0], tiny * 2.0),
        (vec![1.0, f32::NEG_INFINITY, 3.0], f32::INFINITY),
    ] {
        let got = gpu.max_abs(&gpu.upload(&values, 1, values.len()).unwrap()).unwrap();
        assert_eq!(got.to_bits(), want.to_bits(), "max_abs of {values:?}");
        assert_eq!(
            cpu.max_abs(&cpu.upload(&values, 1, values.len()).unwrap()).unwrap(),
            want
        );
    }
    let nan = gpu
        .max_abs(&gpu.upload(&[1.0f32, f32::NAN, 2.0], 1, 3).unwrap())
        .unwrap();
    assert!(nan.is_nan(), "NaN must win max_abs, got {nan}");
    for bad in [f32::NAN, f32::INFINITY, -1.0] {
        let n = 40;
        let mut a = vec![0.0f32; n * n];
        (0..n).for_each(|i| a[i * n + i] = 2.0);
        a[33 * n + 33] = bad;
        for (name, result) in [
            ("wgpu", gpu.cholesky(&mut gpu.upload(&a, n, n).unwrap())),
            ("cpu", cpu.cholesky(&mut cpu.upload(&a, n, n).unwrap())),
        ] {
            assert!(
                matches!(result, Err(Error::NotPositiveDefinite { index: 33 })),
                "{name}: pivot {bad}: {result:?}"
            );
        }
    }
}
