//! The cross-backend suites on the faer CPU backend, in f32 and f64 (libtest-mimic harness,
//! `tests/common/harness.rs`).

mod common;

use common::harness;

fn main() -> std::process::ExitCode {
    let mut cases = crate::backend_suites!("cpu", laplace_update::CpuDevice::new(2), f32, f64);
    cases.extend(crate::tests!(case:
        impossible_allocation_is_a_typed_error,
        concurrent_predictions_while_a_clone_updates,
        auto_falls_back_to_the_cpu_and_says_why,
        required_backends_are_built,
    ));
    harness::run("cpu", laplace_update::CpuDevice::new(2), cases)
}

/// A posterior too large for memory is a typed error, not an aborted process: the fit's peak is
/// known before it allocates, and the error names it, what is available and what would fit.
fn impossible_allocation_is_a_typed_error() {
    use laplace_update::{CpuDevice, Error, FitConfig, HostMatrix, Posterior};
    let cpu = CpuDevice::new(1).unwrap();
    let d = 300_000; // Full: P = 600,000 and P² f32 is 1.4 TB.
    let phi = vec![0.5f32; d];
    let head = vec![0.0f32; 2 * d];
    let result = Posterior::<_, f32>::fit(
        &cpu,
        HostMatrix::new(&phi, 1, d).unwrap(),
        &[1u8],
        HostMatrix::new(&head, 2, d).unwrap(),
        None,
        &FitConfig::default(),
    );
    match result {
        Err(e @ Error::OutOfMemory { needed, available, .. }) => {
            // Full: 4 P² f32 for Π, Σ and the inverse's workspace, P = 2 × 300,001.
            let p = 2 * (d as u64 + 1);
            assert!(needed >= 4 * p * p * 4 && needed > available, "{e}");
            assert!(e.to_string().contains("diag"), "{e}");
        }
        other => panic!("expected OutOfMemory, got {:?}", other.err()),
    }
}

/// A posterior is `Send + Sync`: many threads predict from one `&Posterior` while another thread
/// updates a clone, and every prediction equals the one made before the threads started.
fn concurrent_predictions_while_a_clone_updates() {
    use common::Problem;
    use laplace_update::{CpuDevice, HostMatrix, Link, Posterior, Structure, UpdateConfig};
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Posterior<CpuDevice, f32>>();
    let cpu = CpuDevice::new(2).unwrap();
    let pb = Problem::random(3, 60, 8, 4, true);
    let post = common::suite::fit::<CpuDevice, f32>(&cpu, &pb.first(40), Structure::Full);
    let x = Problem::cast::<f32>(&pb.phi[40 * 8..]);
    let reference = post
        .predict(HostMatrix::new(&x, 20, 8).unwrap(), Link::default())
        .unwrap();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..20 {
                    let p = post
                        .predict(HostMatrix::new(&x, 20, 8).unwrap(), Link::default())
                        .unwrap();
                    assert_eq!(p, reference);
                }
            });
        }
        s.spawn(|| {
            let mut clone = post.try_clone().unwrap();
            for j in 0..20 {
                let row = HostMatrix::new(&x[j * 8..(j + 1) * 8], 1, 8).unwrap();
                clone
                    .update(row, &pb.labels[40 + j..41 + j], &UpdateConfig::default())
                    .unwrap();
            }
            assert_eq!(clone.samples_seen(), 60);
        });
    });
    assert_eq!(post.samples_seen(), 40);
}

/// `AnyDevice::auto` takes CUDA, then a hardware wgpu adapter, then the CPU, and lists why each
/// better backend was passed over: a machine without a GPU gets the CPU and two reasons.
fn auto_falls_back_to_the_cpu_and_says_why() {
    use laplace_update::{AnyDevice, Device, Error, with_device};
    let auto = AnyDevice::auto().unwrap();
    match &auto.device {
        AnyDevice::Cpu(_) => {
            assert_eq!(auto.passed_over.len(), 2, "{:?}", auto.passed_over);
            for (reason, backend) in auto.passed_over.iter().zip(["cuda", "wgpu"]) {
                match reason {
                    Error::BackendUnavailable { backend: b, reason } => {
                        assert_eq!(*b, backend);
                        assert!(!reason.is_empty());
                    }
                    // A GPU that constructs but fails the smoke test.
                    Error::Device { .. } | Error::Unsupported(_) => {}
                    other => panic!("unexpected reason {other:?}"),
                }
            }
        }
        #[allow(unreachable_patterns)]
        gpu => eprintln!("auto chose {} after {:?}", gpu.name(), auto.passed_over),
    }
    // Whatever was chosen computes.
    let ok = with_device!(&auto.device, |d| d
        .upload(&[1.0f32, 2.0], 1, 2)
        .and_then(|m| d.download(&m)));
    assert_eq!(ok.unwrap(), vec![1.0, 2.0]);
    assert!(matches!(AnyDevice::select("tpu"), Err(Error::InvalidArgument { .. })));
}

/// Every backend `LAPLACE_REQUIRE` names is known and built into this test run: a suite whose
/// feature is off compiles to nothing, which would otherwise pass silently.
fn required_backends_are_built() {
    let Ok(required) = std::env::var("LAPLACE_REQUIRE") else {
        return;
    };
    for backend in required.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let built = match backend {
            "cpu" => true,
            "wgpu" => cfg!(feature = "wgpu"),
            "cuda" | "nvrtc" => cfg!(feature = "cuda"),
            "cuda-emu" => cfg!(feature = "cuda-emu"),
            "cgroup" => cfg!(feature = "cli"),
            other => panic!(
                "LAPLACE_REQUIRE names `{other}`, which is no backend (cpu, wgpu, cuda, nvrtc, cuda-emu, cgroup)"
            ),
        };
        assert!(
            built,
            "LAPLACE_REQUIRE names `{backend}`, but its feature is not built into this test run"
        );
    }
}
