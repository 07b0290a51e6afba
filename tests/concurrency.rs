//! Concurrent and killed writers of one posterior file, through the `laplace-update` program:
//! no update is lost, a killed write leaves the last complete file, and the next writer
//! removes what the killed ones left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Dense, Rng, temp_dir, write_labels};
use laplace_update::io::{PosteriorFile, load_posterior, remove_dead_temporaries, write_npy};
use laplace_update::{CpuDevice, Error, Posterior};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_laplace-update"))
}

fn run_ok(args: &[&str]) {
    let out = bin().args(args).output().expect("the binary runs");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `fit` in f64 on the CPU from `x0.npy`, `y0.npy` and `w.npy` in `dir`, with τ = `tau`;
/// returns the posterior file.
fn fit_f64(dir: &Path, structure: &str, tau: f64) -> PathBuf {
    let post = dir.join("post.safetensors");
    run_ok(&[
        "fit",
        "--features",
        s(&dir.join("x0.npy")),
        "--labels",
        s(&dir.join("y0.npy")),
        "--weights",
        s(&dir.join("w.npy")),
        "--fixed-bias",
        "--structure",
        structure,
        "--prior-precision",
        &tau.to_string(),
        "--dtype",
        "f64",
        "--device",
        "cpu",
        "--out",
        s(&post),
    ]);
    post
}

/// `command` (`update` or `unlearn`) of `post` in place on the CPU with the batch `(x, y)`,
/// stdout discarded; further options may follow.
fn change_in_place(command: &str, post: &Path, x: &Path, y: &Path) -> Command {
    let mut cli = bin();
    cli.args([
        command,
        "--posterior",
        s(post),
        "--features",
        s(x),
        "--labels",
        s(y),
        "--device",
        "cpu",
        "--out",
        s(post),
    ])
    .stdout(Stdio::null());
    cli
}

/// `update` of `post` in place: see [`change_in_place`].
fn update_in_place(post: &Path, x: &Path, y: &Path) -> Command {
    change_in_place("update", post, x, y)
}

/// The temporaries of `post` in its folder.
fn temporaries(post: &Path) -> Vec<PathBuf> {
    let prefix = format!(".{}.tmp-", post.file_name().unwrap().to_string_lossy());
    std::fs::read_dir(post.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Sixteen `update` processes started together on one Shared (Gaussian) posterior, each with
/// its own batch: every batch is counted, and the precision is exactly τI + Σ φφᵀ over the
/// fit's samples and all batches (a sum that does not depend on the order of the updates).
#[test]
fn concurrent_updates_of_one_file_lose_nothing() {
    let dir = temp_dir("writers");
    let (d, k, n0, writers, m, tau) = (24, 3, 50, 16, 40, 0.7);
    let mut rng = Rng::new(41);
    let x0 = rng.normals(n0 * d, 1.0);
    write_npy(&dir.join("x0.npy"), &x0, &[n0, d]).unwrap();
    write_labels(
        &dir.join("y0.npy"),
        &(0..n0).map(|i| (i % k) as u32).collect::<Vec<_>>(),
    );
    write_npy(&dir.join("w.npy"), &rng.normals(k * d, 0.3), &[k, d]).unwrap();
    let post = fit_f64(&dir, "shared", tau);
    let mut all = x0.clone();
    let mut batches = Vec::new();
    for b in 0..writers {
        let x = rng.normals(m * d, 1.0);
        all.extend_from_slice(&x);
        let (xp, yp) = (dir.join(format!("x{b}.npy")), dir.join(format!("y{b}.npy")));
        write_npy(&xp, &x, &[m, d]).unwrap();
        write_labels(&yp, &(0..m).map(|_| rng.below(k) as u32).collect::<Vec<_>>());
        batches.push((xp, yp));
    }
    let children: Vec<Child> = batches
        .iter()
        .map(|(xp, yp)| update_in_place(&post, xp, yp).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    let cpu = CpuDevice::new(1).unwrap();
    let got: Posterior<_, f64> = load_posterior(&cpu, &post).unwrap();
    let rows = n0 + writers * m;
    let phi = Dense::from(rows, d, all);
    let want = phi.t().mul(&phi).add(&Dense::identity(d), tau);
    let precision = got.precision().unwrap();
    let error = precision
        .iter()
        .zip(&want.a)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
        / want.max_abs();
    println!(
        "concurrent writers: {writers}, batches counted {}/{writers}, precision max relative error {error:.2e}",
        (got.samples_seen() - n0) / m
    );
    assert_eq!(got.samples_seen(), rows, "every batch is counted");
    assert!(error < 1e-12, "precision off by {error:e}");
    assert!(temporaries(&post).is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

/// A writer that cannot get the lock within `--lock-timeout` fails with one `error:` line and
/// leaves the file as it was.
#[test]
fn a_writer_that_cannot_get_the_lock_gives_up_cleanly() {
    let dir = temp_dir("timeout");
    let (d, k) = (4, 2);
    let mut rng = Rng::new(5);
    write_npy(&dir.join("x0.npy"), &rng.normals(6 * d, 1.0), &[6, d]).unwrap();
    write_labels(&dir.join("y0.npy"), &[0, 1, 0, 1, 1, 0]);
    write_npy(&dir.join("w.npy"), &rng.normals(k * d, 0.5), &[k, d]).unwrap();
    let post = fit_f64(&dir, "full", 1.0);
    let (x, y, w) = (dir.join("x0.npy"), dir.join("y0.npy"), dir.join("w.npy"));
    let before = std::fs::read(&post).unwrap();

    let held = PosteriorFile::lock(&post, Duration::ZERO).unwrap();
    // A second handle in this process waits like another process would.
    match PosteriorFile::lock(&post, Duration::from_millis(50)) {
        Err(Error::LockTimeout { waited_s, .. }) => assert!(waited_s >= 0.05),
        other => panic!("expected LockTimeout, got {other:?}"),
    }
    let started = Instant::now();
    for command in ["update", "unlearn"] {
        let out = change_in_place(command, &post, &x, &y)
            .args(["--lock-timeout", "0.3"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains("being written by another process"),
            "{stderr}"
        );
    }
    let out = bin()
        .args([
            "fit",
            "--features",
            s(&x),
            "--labels",
            s(&y),
            "--weights",
            s(&w),
            "--device",
            "cpu",
            "--lock-timeout",
            "0.2",
            "--out",
            s(&post),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "fit over a locked file must wait and give up");
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(std::fs::read(&post).unwrap(), before, "the file is unchanged");
    for bad in ["-1", "nan", "inf"] {
        let out = update_in_place(&post, &x, &y)
            .arg(format!("--lock-timeout={bad}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.starts_with("error: ") && stderr.contains("lock-timeout"));
    }

    drop(held);
    assert!(update_in_place(&post, &x, &y).status().unwrap().success());
    std::fs::remove_dir_all(&dir).ok();
}

/// A temporary is removed only once nobody holds it: a writer's lock on it keeps it.
#[test]
fn temporaries_are_removed_only_when_their_writer_is_gone() {
    let dir = temp_dir("housekeeping");
    let post = dir.join("post.safetensors");
    std::fs::write(&post, b"target").unwrap();
    // PIDs above the kernel's maximum (2²² on Linux) belong to no process.
    let dead = dir.join(".post.safetensors.tmp-99999999-0");
    let held = dir.join(".post.safetensors.tmp-99999998-0");
    let unrelated = dir.join(".other.safetensors.tmp-99999999-0");
    for p in [&dead, &held, &unrelated] {
        std::fs::write(p, b"partial").unwrap();
    }
    let writer = std::fs::File::open(&held).unwrap();
    writer.lock().unwrap();
    assert_eq!(remove_dead_temporaries(&post), vec![dead.clone()]);
    assert!(held.exists() && unrelated.exists() && post.exists());
    drop(writer);
    assert_eq!(remove_dead_temporaries(&post), vec![held.clone()]);
    assert!(unrelated.exists());
    std::fs::remove_dir_all(&dir).ok();
}

/// Writers of a large Full posterior killed (SIGKILL) at random moments, half of them while
/// their temporary is being written: the file always loads and holds either the state before
/// or after that writer's update, and after one clean write no temporary is left.
#[test]
fn killed_writers_leave_the_file_intact_and_their_temporaries_are_removed() {
    let dir = temp_dir("kill");
    // P = K·D = 1,600: a 41 MB posterior file in f64.
    let (d, k, n0) = (200, 8, 64);
    let mut rng = Rng::new(77);
    write_npy(&dir.join("x0.npy"), &rng.normals(n0 * d, 0.3), &[n0, d]).unwrap();
    write_labels(
        &dir.join("y0.npy"),
        &(0..n0).map(|i| (i % k) as u32).collect::<Vec<_>>(),
    );
    write_npy(&dir.join("w.npy"), &rng.normals(k * d, 0.05), &[k, d]).unwrap();
    write_npy(&dir.join("x1.npy"), &rng.normals(d, 0.3), &[1, d]).unwrap();
    write_labels(&dir.join("y1.npy"), &[3]);
    let post = fit_f64(&dir, "full", 1.0);
    let update = || {
        update_in_place(&post, &dir.join("x1.npy"), &dir.join("y1.npy"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // How long one clean update takes here, to spread the random kills over it.
    let started = Instant::now();
    assert!(update().wait().unwrap().success());
    let span = started.elapsed();
    let cpu = CpuDevice::new(1).unwrap();
    let seen = |p: &Path| -> usize {
        let post: Posterior<_, f64> = load_posterior(&cpu, p).expect("the file loads after a kill");
        post.samples_seen()
    };
    let mut expected = seen(&post);

    let kills = 12;
    let (mut intact, mut completed) = (0, 0);
    let mut left_behind = std::collections::BTreeSet::new();
    for kill in 0..kills {
        let mut child = update();
        if kill % 2 == 0 {
            std::thread::sleep(span.mul_f64(rng.uniform()));
        } else {
            // Wait for the temporary to appear, then kill a few milliseconds into the write.
            let deadline = Instant::now() + span * 4;
            while temporaries(&post).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
            std::thread::sleep(Duration::from_millis(rng.below(20) as u64));
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        left_behind.extend(temporaries(&post));
        let now = seen(&post);
        intact += 1;
        if status.success() {
            completed += 1;
        }
        assert!(
            now == expected || now == expected + 1,
            "samples seen {now}, expected {expected} or {}",
            expected + 1
        );
        expected = now;
    }
    println!(
        "killed writers: {kills} kills ({completed} finished first), file intact after {intact}/{kills}, \
         temporaries left by the kills {}",
        left_behind.len()
    );
    assert!(
        !left_behind.is_empty(),
        "no kill landed during a write: the test proved nothing"
    );
    assert!(update().wait().unwrap().success());
    assert_eq!(seen(&post), expected + 1);
    let remaining = temporaries(&post);
    println!("temporaries after one clean write: {}", remaining.len());
    assert!(remaining.is_empty(), "{remaining:?}");
    std::fs::remove_dir_all(&dir).ok();
}
