//! The program inside a real memory cgroup, as ML jobs run: a posterior too large for the limit
//! is refused with one error line and exit 1 (not killed, exit 137), a fit that fits succeeds,
//! and a predict over a batch larger than the limit's headroom succeeds in smaller passes.
//!
//! Creating a cgroup needs root and a writable memory controller (v2, or v1's). Without them
//! the test shows as ignored with the reason, and fails instead when `LAPLACE_REQUIRE` names
//! `cgroup`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use laplace_update::io::write_npy;

/// The memory limit of the test's cgroup: 1.5 GiB.
const LIMIT: u64 = 3 << 29;

/// A memory cgroup made for this test, removed when dropped.
struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    /// A fresh cgroup limited to `limit` bytes (swap off where v2 allows it), or why not.
    fn new(limit: u64) -> Result<Self, String> {
        let name = format!("laplace-update-test-{}", std::process::id());
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let (dir, limit_file) = match std::fs::read_to_string(v2) {
            Ok(controllers) if controllers.split_whitespace().any(|c| c == "memory") => {
                (Path::new("/sys/fs/cgroup").join(&name), "memory.max")
            }
            _ if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() => {
                (Path::new("/sys/fs/cgroup/memory").join(&name), "memory.limit_in_bytes")
            }
            _ => return Err("no memory cgroup controller is mounted".into()),
        };
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let group = MemoryCgroup { dir };
        std::fs::write(group.dir.join(limit_file), limit.to_string())
            .map_err(|e| format!("cannot set {limit_file}: {e}"))?;
        // Without swap the limit is the limit (v2; v1 leaves swap to memsw, often absent).
        let _ = std::fs::write(group.dir.join("memory.swap.max"), "0");
        Ok(group)
    }

    /// Runs the program with `args` inside the cgroup.
    fn run(&self, args: &[&str]) -> Output {
        let procs = self.dir.join("cgroup.procs");
        Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {} && exec \"$0\" \"$@\"", procs.display()))
            .arg(env!("CARGO_BIN_EXE_laplace-update"))
            .args(args)
            .output()
            .expect("sh runs")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn main() -> std::process::ExitCode {
    // Whether a cgroup can be made here (it is removed at once).
    let probe = MemoryCgroup::new(LIMIT)
        .map(drop)
        .map_err(|reason| laplace_update::Error::BackendUnavailable {
            backend: "cgroup",
            reason,
        });
    let cases = vec![common::harness::case(
        "a_memory_cgroup_limit_is_an_error_not_a_kill",
        a_memory_cgroup_limit_is_an_error_not_a_kill,
    )];
    common::harness::run("cgroup", probe, cases)
}

fn a_memory_cgroup_limit_is_an_error_not_a_kill() {
    let group = MemoryCgroup::new(LIMIT).expect("a memory cgroup");
    let dir = common::temp_dir("cgroup");
    let path = |name: &str| dir.join(name).display().to_string();
    // K = 30, D = 512: a Full posterior's Π and Σ alone are 2 × 0.95 GB.
    let (n, k, d) = (64usize, 30usize, 512usize);
    let x: Vec<f32> = (0..n * d).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let w: Vec<f32> = (0..k * d).map(|i| ((i * 31) % 100) as f32 / 5000.0 - 0.01).collect();
    write_npy(Path::new(&path("x.npy")), &x, &[n, d]).unwrap();
    write_npy(Path::new(&path("w.npy")), &w, &[k, d]).unwrap();
    common::write_labels(
        Path::new(&path("y.npy")),
        &(0..n).map(|i| (i % k) as u32).collect::<Vec<_>>(),
    );
    let fit = |structure: &str, out: &str| {
        group.run(&[
            "fit",
            "--features",
            &path("x.npy"),
            "--labels",
            &path("y.npy"),
            "--weights",
            &path("w.npy"),
            "--structure",
            structure,
            "--out",
            &path(out),
        ])
    };

    let full = fit("full", "full.st");
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(1), "{}", text(&full));
    assert_eq!(stderr.trim_end().lines().count(), 1, "{}", text(&full));
    assert!(
        stderr.starts_with("error: a full posterior at K = 30, D_aug = 513") && stderr.contains("kron"),
        "{stderr}"
    );
    assert!(!Path::new(&path("full.st")).exists());

    let kron = fit("kron", "kron.st");
    assert!(kron.status.success(), "{}", text(&kron));

    // 200,000 inputs: the features (410 MB) fit, but their K × K logit covariances (720 MB)
    // with the features, their copy and the outputs do not, in one pass.
    let rows = 200_000usize;
    let big: Vec<f32> = (0..rows * d)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    write_npy(Path::new(&path("big.npy")), &big, &[rows, d]).unwrap();
    drop(big);
    let predict = group.run(&[
        "predict",
        "--posterior",
        &path("kron.st"),
        "--features",
        &path("big.npy"),
        "--out",
        &path("p.npy"),
        "--logit-var",
        &path("v.npy"),
    ]);
    assert!(predict.status.success(), "{}", text(&predict));
    assert!(
        String::from_utf8_lossy(&predict.stdout).contains("passes"),
        "{}",
        text(&predict)
    );
    let probs = laplace_update::io::read_npy(Path::new(&path("p.npy"))).unwrap();
    assert_eq!(probs.shape, vec![rows, k]);
    let _ = std::fs::remove_dir_all(&dir);
}
