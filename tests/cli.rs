//! The `laplace-update` program end to end, on small files made here.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Problem, temp_dir, write_labels};
use laplace_update::io::{load_posterior, read_npy, write_npy};
use laplace_update::{BiasMode, CpuDevice, HostMatrix, Link, Posterior};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_laplace-update"))
}

/// Runs the program with a whitespace-separated command line (the test paths have no spaces).
fn run(command: &str) -> Output {
    bin()
        .args(command.split_whitespace())
        .output()
        .expect("the binary runs")
}

fn ok(command: &str) -> String {
    let out = run(command);
    assert!(
        out.status.success(),
        "{command} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail with one clean `error:` line and no panic.
fn fails(command: &str) -> String {
    let out = run(command);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{command} should fail");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{command} panicked: {stderr}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{command}: not one line: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{command}: {stderr}");
    stderr
}

struct Files {
    dir: PathBuf,
    pb: Problem,
}

impl Files {
    fn new(name: &str) -> Self {
        let dir = temp_dir(name);
        let mut pb = Problem::random(17, 40, 6, 3, false);
        // Labels the head explains, so that a fitted head has something to find.
        let w = pb.head_aug();
        pb.labels = (0..pb.n)
            .map(|i| {
                let p = pb.probs(&w, pb.x(i));
                (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap() as u32
            })
            .collect();
        let f32s = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<f32>>();
        write_npy(&dir.join("x.npy"), &f32s(&pb.phi[..30 * 6]), &[30, 6]).unwrap();
        write_labels(&dir.join("y.npy"), &pb.labels[..30]);
        write_npy(&dir.join("x_new.npy"), &f32s(&pb.phi[30 * 6..]), &[10, 6]).unwrap();
        write_labels(&dir.join("y_new.npy"), &pb.labels[30..]);
        write_npy(&dir.join("w.npy"), &f32s(&pb.head), &[3, 6]).unwrap();
        write_npy(&dir.join("b.npy"), &f32s(&pb.bias), &[3]).unwrap();
        Files { dir, pb }
    }
    fn p(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

#[test]
fn fit_update_predict_info_round_trip() {
    let f = Files::new("flow");
    let post = f.p("post.safetensors");
    ok(&format!(
        "fit --features {} --labels {} --weights {} --bias-vector {} --fixed-bias --structure full --prior-precision 0.5 --out {}",
        f.p("x.npy"),
        f.p("y.npy"),
        f.p("w.npy"),
        f.p("b.npy"),
        post
    ));
    let info = ok(&format!("info --posterior {post}"));
    assert!(
        info.contains("samples seen   30") && info.contains("structure      full"),
        "{info}"
    );
    // Update in place (POST2 = POST), then predict with logit variances.
    ok(&format!(
        "update --posterior {} --features {} --labels {} --rule sequential --gamma 2 --out {}",
        post,
        f.p("x_new.npy"),
        f.p("y_new.npy"),
        post
    ));
    assert!(ok(&format!("info --posterior {post}")).contains("samples seen   40"));
    // The default (damped) update reports its steps; γ belongs to `--step newton` only.
    let damped = f.p("damped.safetensors");
    let out = run(&format!(
        "update --posterior {} --features {} --labels {} --out {}",
        post,
        f.p("x_new.npy"),
        f.p("y_new.npy"),
        damped
    ));
    // Results on stdout, diagnostics (none here) on stderr.
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("Newton step(s)") && stdout.contains("objective J"),
        "{stdout}{stderr}"
    );
    assert!(stderr.trim().is_empty(), "{stderr}");
    let e = fails(&format!(
        "update --posterior {} --features {} --labels {} --step damped --gamma 2 --out {}",
        post,
        f.p("x_new.npy"),
        f.p("y_new.npy"),
        damped
    ));
    assert!(e.contains("gamma"), "{e}");
    ok(&format!(
        "predict --posterior {} --features {} --out {} --logit-var {}",
        post,
        f.p("x_new.npy"),
        f.p("p.npy"),
        f.p("v.npy")
    ));

    // The same computation through the library.
    let cpu = CpuDevice::new(1).unwrap();
    let loaded: Posterior<CpuDevice, f32> = load_posterior(&cpu, Path::new(&post)).unwrap();
    assert_eq!(loaded.bias_mode(), BiasMode::Fixed);
    let x: Vec<f32> = f.pb.phi[30 * 6..].iter().map(|v| *v as f32).collect();
    let want = loaded
        .predict(HostMatrix::new(&x, 10, 6).unwrap(), Link::default())
        .unwrap();
    let probs = read_npy(&f.dir.join("p.npy")).unwrap();
    assert_eq!(probs.shape, vec![10, 3]);
    assert_eq!(probs.to_matrix::<f32>().unwrap().0, want.probs);
    let var = read_npy(&f.dir.join("v.npy")).unwrap().to_matrix::<f32>().unwrap().0;
    for i in 0..10 {
        for k in 0..3 {
            assert_eq!(var[i * 3 + k], want.logit_cov_at(i, k, k));
        }
    }
    // Monte Carlo link, f64 posterior, shared structure, bias in the posterior.
    let post64 = f.p("post64.safetensors");
    ok(&format!(
        "fit --features {} --labels {} --weights {} --structure shared-categorical --dtype f64 --out {}",
        f.p("x.npy"),
        f.p("y.npy"),
        f.p("w.npy"),
        post64
    ));
    ok(&format!(
        "predict --posterior {} --features {} --link mc --samples 50 --seed 3 --out {}",
        post64,
        f.p("x.npy"),
        f.p("p64.npy")
    ));
    let default_bias = load_posterior::<CpuDevice, f64>(&cpu, Path::new(&post64))
        .unwrap()
        .bias_mode();
    assert_eq!(default_bias, BiasMode::InPosterior, "laplace-torch's default");
    let p64 = read_npy(&f.dir.join("p64.npy")).unwrap().to_matrix::<f64>().unwrap().0;
    assert!(p64.chunks(3).all(|r| (r.iter().sum::<f64>() - 1.0).abs() < 1e-9));
    ok(&format!(
        "predict --posterior {post64} --features {} --link bridge --out {}",
        f.p("x.npy"),
        f.p("pb.npy")
    ));
    let pb = read_npy(&f.dir.join("pb.npy")).unwrap().to_matrix::<f64>().unwrap().0;
    assert!(pb.chunks(3).all(|r| (r.iter().sum::<f64>() - 1.0).abs() < 1e-9));
    // Update then unlearn the same samples: the file's covariance comes back.
    let before = load_posterior::<CpuDevice, f64>(&cpu, Path::new(&post64))
        .unwrap()
        .covariance()
        .unwrap();
    let (xn, yn) = (f.p("x_new.npy"), f.p("y_new.npy"));
    ok(&format!(
        "update --posterior {post64} --features {xn} --labels {yn} --out {post64}"
    ));
    ok(&format!(
        "unlearn --posterior {post64} --features {xn} --labels {yn} --out {post64}"
    ));
    let after = load_posterior::<CpuDevice, f64>(&cpu, Path::new(&post64))
        .unwrap()
        .covariance()
        .unwrap();
    let scale = before.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(before.iter().zip(&after).all(|(a, b)| (a - b).abs() <= 1e-9 * scale));
    assert!(ok(&format!("info --posterior {post64}")).contains("samples seen   30"));
}

#[test]
fn fit_without_weights_fits_the_head_by_map() {
    let f = Files::new("map");
    let post = f.p("post.safetensors");
    ok(&format!(
        "fit --features {} --labels {} --structure shared --prior-precision 0.1 --out {}",
        f.p("x.npy"),
        f.p("y.npy"),
        post
    ));
    ok(&format!(
        "predict --posterior {} --features {} --link none --out {}",
        post,
        f.p("x.npy"),
        f.p("p.npy")
    ));
    let p = read_npy(&f.dir.join("p.npy")).unwrap().to_matrix::<f32>().unwrap().0;
    let correct = p
        .chunks(3)
        .zip(&f.pb.labels)
        .filter(|(row, y)| (0..3).max_by(|&a, &b| row[a].total_cmp(&row[b])) == Some(**y as usize))
        .count();
    assert!(correct >= 24, "the MAP head fits only {correct}/30 training labels");
}

#[test]
fn user_errors_are_one_line_and_leave_files_untouched() {
    let f = Files::new("errors");
    let post = f.p("post.safetensors");
    ok(&format!(
        "fit --features {} --labels {} --weights {} --out {}",
        f.p("x.npy"),
        f.p("y.npy"),
        f.p("w.npy"),
        post
    ));
    let before = std::fs::read(&post).unwrap();
    let e = fails(&format!(
        "update --posterior {} --features {} --labels {} --out {}",
        post,
        f.p("missing.npy"),
        f.p("y_new.npy"),
        post
    ));
    assert!(e.contains("missing.npy"), "{e}");
    // Labels out of range (K = 3).
    write_labels(&f.dir.join("bad_y.npy"), &[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]);
    let e = fails(&format!(
        "update --posterior {} --features {} --labels {} --out {}",
        post,
        f.p("x_new.npy"),
        f.p("bad_y.npy"),
        post
    ));
    assert!(e.contains("label 3"), "{e}");
    // Features of the wrong width.
    write_npy(&f.dir.join("wide.npy"), &[0.0f32; 14], &[2, 7]).unwrap();
    fails(&format!(
        "predict --posterior {} --features {} --out {}",
        post,
        f.p("wide.npy"),
        f.p("p.npy")
    ));
    // NaN features.
    write_npy(&f.dir.join("nan.npy"), &[0.0f32, f32::NAN, 0.0, 0.0, 0.0, 0.0], &[1, 6]).unwrap();
    let e = fails(&format!(
        "update --posterior {} --features {} --labels {} --out {}",
        post,
        f.p("nan.npy"),
        f.p("y_new.npy"),
        post
    ));
    assert!(e.contains("non-finite") || e.contains("shape"), "{e}");
    // Forgetting outside (0, 1].
    for rho in ["0", "1.5", "nan"] {
        let e = fails(&format!(
            "update --posterior {} --features {} --labels {} --forgetting {rho} --out {}",
            post,
            f.p("x_new.npy"),
            f.p("y_new.npy"),
            post
        ));
        assert!(e.contains("forgetting"), "{e}");
    }
    assert_eq!(
        std::fs::read(&post).unwrap(),
        before,
        "a failed update changed the posterior file"
    );
    // ρ = 0.5 discounts the fit's data: a different posterior than ρ = 1, with the same count.
    let forget = |rho: &str, out: &str| {
        ok(&format!(
            "update --posterior {} --features {} --labels {} --forgetting {rho} --out {}",
            post,
            f.p("x_new.npy"),
            f.p("y_new.npy"),
            f.p(out)
        ))
    };
    forget("1", "kept.safetensors");
    forget("0.5", "forgot.safetensors");
    let kept = laplace_update::io::load_posterior::<_, f32>(
        &laplace_update::CpuDevice::new(1).unwrap(),
        std::path::Path::new(&f.p("kept.safetensors")),
    )
    .unwrap();
    let forgot = laplace_update::io::load_posterior::<_, f32>(
        &laplace_update::CpuDevice::new(1).unwrap(),
        std::path::Path::new(&f.p("forgot.safetensors")),
    )
    .unwrap();
    assert_eq!(kept.samples_seen(), forgot.samples_seen());
    let (pk, pf) = (kept.precision().unwrap(), forgot.precision().unwrap());
    assert!(
        pk.iter().zip(&pf).any(|(a, b)| (a - b).abs() > 1e-3),
        "forgetting changed nothing"
    );
    // Not a posterior, an unavailable backend, a labels file of floats.
    fails(&format!("info --posterior {}", f.p("x.npy")));
    let e = fails(&format!(
        "fit --features {} --labels {} --device cuda --out {}",
        f.p("x.npy"),
        f.p("y.npy"),
        post
    ));
    assert!(e.contains("cuda"), "{e}");
    fails(&format!(
        "fit --features {} --labels {} --out {}",
        f.p("x.npy"),
        f.p("x.npy"),
        post
    ));
    fails(&format!(
        "fit --features {} --labels {} --prior-precision=0 --out {}",
        f.p("x.npy"),
        f.p("y.npy"),
        post
    ));
    assert_eq!(std::fs::read(&post).unwrap(), before);
}

#[test]
fn devices_and_help() {
    let out = ok("devices");
    assert!(
        out.contains("cpu") && out.contains("cuda") && out.contains("wgpu"),
        "{out}"
    );
    for sub in [
        "fit",
        "accumulate",
        "merge",
        "update",
        "unlearn",
        "predict",
        "info",
        "devices",
        "demo",
    ] {
        assert!(ok(&format!("{sub} --help")).contains("Usage"), "{sub} --help");
    }
}

#[test]
fn demo_writes_table_csv_and_figure() {
    let dir = temp_dir("demo");
    let out = ok(&format!("demo --out-dir {}", dir.display()));
    for method in [
        "no update",
        "paper rule (γ = 10)",
        "shared update",
        "undamped full Newton",
        "update (default)",
        "retrain head (MAP refit)",
    ] {
        assert!(out.contains(method), "table lacks {method}: {out}");
    }
    let csv = std::fs::read_to_string(dir.join("demo.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 6 * 11, "one row per method and step");
    let final_accuracy = |method: &str| -> f64 {
        rows.iter()
            .find(|r| r[0] == "0" && r[1] == "200" && r[2] == method)
            .map(|r| r[3].parse().unwrap())
            .unwrap()
    };
    let baseline = final_accuracy("no update");
    for method in [
        "paper rule (γ = 10)",
        "shared update",
        "undamped full Newton",
        "update (default)",
        "retrain head (MAP refit)",
    ] {
        assert!(final_accuracy(method) > baseline, "{method} does not beat no update");
    }
    let png = std::fs::read(dir.join("demo.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}

/// The demo's protocol on a user's own features over several seeds: the closing table has
/// mean ± std, a share of flips against retraining in [0, 1] (none for retraining itself), and
/// the CSV a row per seed, method and step; too few rows is one error line before any device.
#[test]
fn demo_runs_on_user_data_over_seeds() {
    let dir = temp_dir("demo-data");
    // Three Gaussian classes in 12 dimensions, 600 rows.
    let (n, d, k) = (600usize, 12usize, 3usize);
    let mut rng = common::Rng::new(31);
    let labels: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
    let x: Vec<f64> = (0..n * d)
        .map(|i| rng.normal() + if i % d == labels[i / d] as usize { 2.0 } else { 0.0 })
        .collect();
    write_npy(&dir.join("x.npy"), &x, &[n, d]).unwrap();
    write_labels(&dir.join("y.npy"), &labels);
    let out = ok(&format!(
        "demo --data {} --labels {} --initial 30 --batch 10 --batches 3 --validation 100 --seeds 3 --out-dir {}",
        dir.join("x.npy").display(),
        dir.join("y.npy").display(),
        dir.display()
    ));
    assert!(
        out.contains("600 rows, 12 features, 3 classes") && out.contains("mean ± std over 3 seeds"),
        "{out}"
    );
    let retrain = out.lines().find(|l| l.starts_with("retrain head")).unwrap();
    assert!(
        retrain.trim_end().ends_with("0.000") && retrain.contains(" ± "),
        "{retrain}"
    );
    for line in out
        .lines()
        .filter(|l| l.starts_with("update (default)") || l.starts_with("no update"))
    {
        let flips: f64 = line.split_whitespace().last().unwrap().parse().unwrap();
        assert!((0.0..=1.0).contains(&flips), "{line}");
    }
    let csv = std::fs::read_to_string(dir.join("demo.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3 * 6 * 4, "a row per seed, method and step");
    // Too few rows for the protocol: one error line, before any device.
    let e = fails(&format!(
        "demo -v --data {} --labels {} --initial 500 --out-dir {}",
        dir.join("x.npy").display(),
        dir.join("y.npy").display(),
        dir.display()
    ));
    assert!(e.contains("600 rows") && !e.contains("note"), "{e}");
}

/// Every structure and curvature through the program; the flags reach the posterior file.
#[test]
fn structures_curvatures_and_prior_optimisation() {
    let f = Files::new("structures");
    for (flags, structure, curvature) in [
        ("--structure diag --curvature ef", "diag", "EmpiricalFisher"),
        (
            "--structure kron --curvature mc --mc-samples 3 --seed 5",
            "kron",
            "MonteCarloFisher { samples: 3, seed: 5 }",
        ),
        // `shared-gaussian` is another spelling of `shared`.
        ("--structure shared-gaussian", "shared", "Ggn"),
        ("--structure shared --optimize-prior", "shared", "Ggn"),
    ] {
        let post = f.p("s.safetensors");
        ok(&format!(
            "fit --features {} --labels {} {flags} --out {post}",
            f.p("x.npy"),
            f.p("y.npy")
        ));
        let info = ok(&format!("info --posterior {post}"));
        assert!(info.contains(&format!("structure      {structure}")), "{info}");
        assert!(info.contains(&format!("curvature      {curvature}")), "{info}");
        ok(&format!(
            "update --posterior {post} --features {} --labels {} --out {post}",
            f.p("x_new.npy"),
            f.p("y_new.npy")
        ));
        ok(&format!(
            "predict --posterior {post} --features {} --out {}",
            f.p("x_new.npy"),
            f.p("probs.npy")
        ));
    }
    // The optimised τ, not the default 1, is what the file records.
    let info = ok(&format!("info --posterior {}", f.p("s.safetensors")));
    assert!(!info.contains("prior τ        1\n"), "{info}");
    fails(&format!(
        "fit --features {} --labels {} --prior-precision 2 --optimize-prior --out {}",
        f.p("x.npy"),
        f.p("y.npy"),
        f.p("z.safetensors")
    ));
    fails(&format!(
        "fit --features {} --labels {} --curvature mc --mc-samples 0 --out {}",
        f.p("x.npy"),
        f.p("y.npy"),
        f.p("z.safetensors")
    ));
}

/// Regression end to end in f64: the fitted head is the ridge solution and an update equals
/// the refit, both checked against dense normal equations solved here.
#[test]
fn regression_fit_update_predict() {
    let f = Files::new("regression");
    let pb = &f.pb;
    let (n, d, k, sigma, tau) = (40usize, 6usize, 2usize, 0.5f64, 2.0f64);
    let mut rng = common::Rng::new(3);
    let targets: Vec<f64> = (0..n)
        .flat_map(|i| {
            let x = pb.x(i).to_vec();
            let noise = rng.normals(k, 0.1);
            (0..k).map(move |c| {
                x.iter()
                    .enumerate()
                    .map(|(j, v)| v * ((j + c) as f64 - 2.0))
                    .sum::<f64>()
                    + noise[c]
            })
        })
        .collect();
    write_npy(&f.dir.join("xr.npy"), &pb.phi[..30 * d], &[30, d]).unwrap();
    write_npy(&f.dir.join("yr.npy"), &targets[..30 * k], &[30, k]).unwrap();
    write_npy(&f.dir.join("xr_new.npy"), &pb.phi[30 * d..], &[10, d]).unwrap();
    write_npy(&f.dir.join("yr_new.npy"), &targets[30 * k..], &[10, k]).unwrap();
    let post = f.p("r.safetensors");
    ok(&format!(
        "fit --features {} --labels {} --likelihood regression --sigma-noise {sigma} --prior-precision {tau} \
         --dtype f64 --structure full --out {post}",
        f.p("xr.npy"),
        f.p("yr.npy")
    ));
    // σ and τ by the marginal likelihood, and by validation, as the library chooses them.
    let cpu = CpuDevice::new(1).unwrap();
    let plain: Posterior<CpuDevice, f64> = load_posterior(&cpu, Path::new(&post)).unwrap();
    let (x, y) = (
        HostMatrix::new(&pb.phi[..30 * d], 30, d).unwrap(),
        HostMatrix::new(&targets[..30 * k], 30, k).unwrap(),
    );
    let mut want = plain.try_clone().unwrap();
    let (want_tau, want_sigma) = want.optimize_prior_and_noise(x, &y).unwrap();
    // The same head (the fitted ridge solution), given as weights.
    write_npy(&f.dir.join("wr.npy"), &plain.head().unwrap(), &[k, d]).unwrap();
    write_npy(&f.dir.join("br.npy"), &plain.bias().unwrap(), &[k]).unwrap();
    let noise = f.p("noise.safetensors");
    ok(&format!(
        "fit --features {} --labels {} --weights {} --bias-vector {} --likelihood regression --sigma-noise {sigma} \
         --optimize-prior --optimize-noise --dtype f64 --structure full --out {noise}",
        f.p("xr.npy"),
        f.p("yr.npy"),
        f.p("wr.npy"),
        f.p("br.npy")
    ));
    let got: Posterior<CpuDevice, f64> = load_posterior(&cpu, Path::new(&noise)).unwrap();
    let laplace_update::Likelihood::Regression { sigma_noise: got_sigma } = got.likelihood() else {
        panic!("a regression posterior")
    };
    assert!(
        (got.prior_precision()[0] / want_tau - 1.0).abs() < 1e-8,
        "{:?} vs {want_tau}",
        got.prior_precision()
    );
    assert!(
        (got_sigma / want_sigma - 1.0).abs() < 1e-8,
        "{got_sigma} vs {want_sigma}"
    );
    ok(&format!(
        "tune --posterior {post} --val-features {} --val-labels {} --out {noise}",
        f.p("xr_new.npy"),
        f.p("yr_new.npy")
    ));
    let mut want = plain.try_clone().unwrap();
    let (xv, yv) = (
        HostMatrix::new(&pb.phi[30 * d..], 10, d).unwrap(),
        HostMatrix::new(&targets[30 * k..], 10, k).unwrap(),
    );
    let report = want
        .tune_prior_precision(xv, &yv, &laplace_update::TuneConfig::default())
        .unwrap();
    let got: Posterior<CpuDevice, f64> = load_posterior(&cpu, Path::new(&noise)).unwrap();
    assert_eq!(got.prior_precision(), &[report.prior_precision][..]);
    assert_eq!(
        got.likelihood(),
        laplace_update::Likelihood::Regression {
            sigma_noise: report.sigma_noise.unwrap()
        }
    );
    ok(&format!(
        "update --posterior {post} --features {} --labels {} --out {post}",
        f.p("xr_new.npy"),
        f.p("yr_new.npy")
    ));
    ok(&format!(
        "predict --posterior {post} --features {} --out {}",
        f.p("xr_new.npy"),
        f.p("mean.npy")
    ));
    // Ridge on all 40 rows: (τσ² I + Φ̃ᵀΦ̃) W̃ᵀ = Φ̃ᵀ Y with Φ̃ = [Φ, 1].
    let da = d + 1;
    let aug = |i: usize| {
        pb.phi_aug(pb.x(i))
            .into_iter()
            .chain([1.0])
            .take(da)
            .collect::<Vec<f64>>()
    };
    let mut a = common::Dense::identity(da).scale(tau * sigma * sigma);
    let mut b = common::Dense::zeros(da, k);
    for i in 0..n {
        let x = aug(i);
        for p in 0..da {
            for q in 0..da {
                a.a[p * da + q] += x[p] * x[q];
            }
            for c in 0..k {
                b.a[p * k + c] += x[p] * targets[i * k + c];
            }
        }
    }
    let w = a.inverse().mul(&b); // D_aug × K
    let mean = read_npy(&f.dir.join("mean.npy")).unwrap().to_matrix::<f64>().unwrap().0;
    for i in 0..10 {
        let x = aug(30 + i);
        for c in 0..k {
            let want: f64 = (0..da).map(|p| x[p] * w.at(p, c)).sum();
            let got = mean[i * k + c];
            assert!(
                (got - want).abs() < 1e-8 * want.abs().max(1.0),
                "row {i} output {c}: {got} vs {want}"
            );
        }
    }
    // Class labels for a regression posterior are a clear error.
    fails(&format!(
        "update --posterior {post} --features {} --labels {} --out {post}",
        f.p("x_new.npy"),
        f.p("y_new.npy")
    ));
}

/// `al` on the bundled digits (tiny: 2 cycles, 2 seeds) and on user files, with every output.
#[test]
fn active_learning_simulation_writes_curves_and_auc() {
    let dir = temp_dir("al");
    let out = ok(&format!(
        "al --strategies random,margin+update,lookahead --cycles 2 --batch 5 --seeds 2 --out-dir {}",
        dir.display()
    ));
    for name in ["random", "margin+update", "lookahead"] {
        assert!(out.contains(name), "AUC table lacks {name}: {out}");
    }
    let csv = std::fs::read_to_string(dir.join("al.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        1 + 3 * 2 * 3,
        "one row per strategy, seed and cycle"
    );
    let auc = std::fs::read_to_string(dir.join("auc.csv")).unwrap();
    assert_eq!(auc.lines().count(), 4);
    assert!(std::fs::metadata(dir.join("al.png")).unwrap().len() > 1000);
    // User data: the flow's features and labels.
    let f = Files::new("al-files");
    let x: Vec<f64> = (0..200)
        .flat_map(|i| {
            let c = (i % 3) as f64;
            [c + 0.1 * (i as f64).sin(), -c + 0.1 * (i as f64).cos()]
        })
        .collect();
    let y: Vec<u32> = (0..200).map(|i| (i % 3) as u32).collect();
    write_npy(&f.dir.join("al_x.npy"), &x, &[200, 2]).unwrap();
    write_labels(&f.dir.join("al_y.npy"), &y);
    ok(&format!(
        "al --data {} --labels {} --strategies entropy,coreset --initial 6 --cycles 2 --batch 3 --seeds 1 --out-dir {}",
        f.p("al_x.npy"),
        f.p("al_y.npy"),
        f.p("al-out")
    ));
    fails(&format!("al --strategies nonsense --out-dir {}", dir.display()));
    fails(&format!("al --cycles 1000 --out-dir {}", dir.display()));
}

/// `al` on raw tabular columns of very different scales (569 × 30, K = 2, columns from 1 to
/// 1e4, as in a clinical data set), with the strategies that once panicked there: the
/// features are standardised by default, and `--raw-features` never panics.
#[test]
fn active_learning_on_raw_tabular_columns() {
    let dir = temp_dir("al-tabular");
    let (n, d) = (569, 30);
    let mut rng = common::Rng::new(569);
    let y: Vec<u32> = (0..n).map(|_| rng.below(2) as u32).collect();
    let x: Vec<f32> = (0..n)
        .flat_map(|i| {
            let shift = 0.4 * f64::from(y[i]);
            (0..d)
                .map(|j| {
                    let scale = 10f64.powf(4.0 * j as f64 / (d - 1) as f64);
                    (scale * (1.0 + shift + 0.3 * rng.normal().abs())) as f32
                })
                .collect::<Vec<f32>>()
        })
        .collect();
    write_npy(&dir.join("x.npy"), &x, &[n, d]).unwrap();
    write_labels(&dir.join("y.npy"), &y);
    let command = |extra: &str| {
        format!(
            "al --data {} --labels {} --initial 10 --batch 10 --cycles 8 --seeds 3 \
             --strategies random,margin,margin+update,bald,badge,bait --device cpu --out-dir {}{extra}",
            dir.join("x.npy").display(),
            dir.join("y.npy").display(),
            dir.join("out").display()
        )
    };
    let out = ok(&command(""));
    for name in ["margin+update", "badge", "bait"] {
        assert!(out.contains(name), "AUC table lacks {name}: {out}");
    }
    let raw = run(&command(" --raw-features"));
    let stderr = String::from_utf8_lossy(&raw.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        raw.status.success() || stderr.trim_end().lines().count() == 1,
        "{stderr}"
    );
}

/// `profile` at tiny sizes: every kernel family, its unit, and the CSV.
#[test]
fn profile_reports_every_kernel() {
    let dir = temp_dir("profile");
    let csv = dir.join("profile.csv");
    let out = ok(&format!(
        "profile --sizes 16,3,50,4 --peak-size 64 --repeats 1 --csv {}",
        csv.display()
    ));
    assert!(out.contains("peak:") && out.contains("measured"), "{out}");
    for family in laplace_update::profile::FAMILIES {
        assert!(out.contains(family), "{family} missing: {out}");
    }
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 1 + laplace_update::profile::FAMILIES.len());
    assert!(text.contains("GFLOP/s") && text.contains("GB/s"));
    fails("profile --sizes 16,1,50,4");
    fails("profile --kernels nonsense");
}

/// Largest |a − b| over the largest |b|.
fn relative_error(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Four shards accumulated apart and merged (at once, and as a tree of partial merges) give
/// the posterior of one fit over all rows, for every structure whose state is a sum.
#[test]
fn accumulate_and_merge_shards_equal_one_fit() {
    let f = Files::new("shards");
    let bounds = [0usize, 8, 16, 23, 30];
    for s in 0..4 {
        let (lo, hi) = (bounds[s], bounds[s + 1]);
        let rows: Vec<f32> = f.pb.phi[lo * 6..hi * 6].iter().map(|v| *v as f32).collect();
        write_npy(&f.dir.join(format!("x{s}.npy")), &rows, &[hi - lo, 6]).unwrap();
        write_labels(&f.dir.join(format!("y{s}.npy")), &f.pb.labels[lo..hi]);
    }
    let cpu = CpuDevice::new(1).unwrap();
    let load = |path: &str| load_posterior::<CpuDevice, f64>(&cpu, Path::new(path)).unwrap();
    let head = format!("--weights {} --bias-vector {}", f.p("w.npy"), f.p("b.npy"));
    let mut worst = 0.0f64;
    for structure in ["full", "kron", "diag"] {
        let model = format!("--structure {structure} --dtype f64 --device cpu");
        let whole = f.p(&format!("whole-{structure}.safetensors"));
        ok(&format!(
            "fit --features {} --labels {} {head} {model} --prior-precision 0.7 --out {whole}",
            f.p("x.npy"),
            f.p("y.npy")
        ));
        let shards: Vec<String> = (0..4)
            .map(|s| f.p(&format!("acc{s}-{structure}.safetensors")))
            .collect();
        for (s, acc) in shards.iter().enumerate() {
            ok(&format!(
                "accumulate --features {} --labels {} {head} {model} --out {acc}",
                f.p(&format!("x{s}.npy")),
                f.p(&format!("y{s}.npy"))
            ));
        }
        let merged = f.p(&format!("merged-{structure}.safetensors"));
        ok(&format!(
            "merge {} --prior-precision 0.7 --device cpu --out {merged}",
            shards.join(" ")
        ));
        // A tree: (3, 0) and (1, 2) merged partially, then the two partial sums.
        let (left, right) = (f.p("left.safetensors"), f.p("right.safetensors"));
        ok(&format!(
            "merge {} {} --partial --device cpu --out {left}",
            shards[3], shards[0]
        ));
        ok(&format!(
            "merge {} {} --partial --device cpu --out {right}",
            shards[1], shards[2]
        ));
        let tree = f.p(&format!("tree-{structure}.safetensors"));
        ok(&format!(
            "merge {left} {right} --prior-precision 0.7 --device cpu --out {tree}"
        ));
        let reference = load(&whole);
        assert_eq!(reference.samples_seen(), 30);
        for path in [&merged, &tree] {
            let post = load(path);
            assert_eq!(post.samples_seen(), 30, "{structure}");
            assert_eq!(post.structure(), reference.structure());
            let precision = relative_error(&post.precision().unwrap(), &reference.precision().unwrap());
            let covariance = relative_error(&post.covariance().unwrap(), &reference.covariance().unwrap());
            assert!(
                precision < 1e-10 && covariance < 1e-10,
                "{structure}: {precision:e} {covariance:e}"
            );
            worst = worst.max(precision).max(covariance);
        }
        // τ by marginal likelihood: the same optimum from the merged sums as from one fit.
        let (whole_opt, merged_opt) = (f.p("whole-opt.safetensors"), f.p("merged-opt.safetensors"));
        ok(&format!(
            "fit --features {} --labels {} {head} {model} --optimize-prior --out {whole_opt}",
            f.p("x.npy"),
            f.p("y.npy")
        ));
        ok(&format!(
            "merge {} --optimize-prior --device cpu --out {merged_opt}",
            shards.join(" ")
        ));
        let (a, b) = (load(&merged_opt), load(&whole_opt));
        let tau = relative_error(a.prior_precision(), b.prior_precision());
        assert!(
            tau < 1e-8,
            "{structure}: τ {:?} against {:?}",
            a.prior_precision(),
            b.prior_precision()
        );
        assert!(relative_error(&a.covariance().unwrap(), &b.covariance().unwrap()) < 1e-8);
    }
    println!("shard merge: worst relative error {worst:.2e} over full, kron, diag");
    // Shards of different heads do not merge, and the error names the file.
    let other_head = f.p("w2.npy");
    let doubled: Vec<f32> = f.pb.head.iter().map(|v| 2.0 * *v as f32).collect();
    write_npy(Path::new(&other_head), &doubled, &[3, 6]).unwrap();
    let stray = f.p("stray.safetensors");
    ok(&format!(
        "accumulate --features {} --labels {} --weights {other_head} --dtype f64 --device cpu --out {stray}",
        f.p("x0.npy"),
        f.p("y0.npy")
    ));
    let first = f.p("acc0-full.safetensors");
    let kept = f.p("never.safetensors");
    let message = fails(&format!("merge {first} {stray} --device cpu --out {kept}"));
    assert!(message.contains("stray.safetensors"), "{message}");
    assert!(!Path::new(&kept).exists());
    // A posterior is not an accumulator.
    fails(&format!(
        "merge {} --device cpu --out {kept}",
        f.p("whole-full.safetensors")
    ));
}

/// Without `XDG_RUNTIME_DIR` (containers, CI runners), no driver writes to the terminal:
/// `devices` prints only its table, and a bad argument is one line, found before any probe.
#[test]
fn no_driver_chatter_without_a_runtime_dir() {
    let f = Files::new("quiet");
    let quiet = |args: &str| {
        bin()
            .args(args.split_whitespace())
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .expect("the binary runs")
    };
    let out = quiet("devices");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "devices wrote to stderr: {stderr}");
    let out = quiet(&format!(
        "al --data {} --labels {} --strategies nonsense",
        f.p("x.npy"),
        f.p("y.npy")
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains("nonsense"), "{stderr}");
    let out = quiet(&format!(
        "fit --features {} --labels {} --out {}",
        f.p("x.npy"),
        f.p("y.npy"),
        f.p("post.safetensors")
    ));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.trim().is_empty(),
        "nothing but errors and warnings on stderr: {stderr}"
    );
    assert_eq!(
        stdout.trim_end().lines().count(),
        2,
        "head fit and fit lines only: {stdout}"
    );
}

/// Every input is read and checked before a device is probed: a missing file or a wrong shape
/// is one `error:` line naming the argument at fault, with no device note even under
/// `--verbose`, which otherwise names the device on stderr.
#[test]
fn inputs_are_checked_before_any_device() {
    let f = Files::new("order");
    let missing = f.p("missing.npy");
    for command in [
        format!(
            "-v fit --features {missing} --labels {} --out {}",
            f.p("y.npy"),
            f.p("o.st")
        ),
        format!(
            "fit -v --features {} --labels {missing} --out {}",
            f.p("x.npy"),
            f.p("o.st")
        ),
        format!(
            "fit -v --features {} --labels {} --weights {missing} --out {}",
            f.p("x.npy"),
            f.p("y.npy"),
            f.p("o.st")
        ),
    ] {
        let e = fails(&command);
        assert!(e.contains("missing.npy") && !e.contains("note"), "{e}");
    }
    // Weights passed as D × K are named, as transposed.
    let (d, k) = (f.pb.d, f.pb.k);
    let w: Vec<f64> = vec![0.0; d * k];
    write_npy(Path::new(&f.p("wt.npy")), &w, &[d, k]).unwrap();
    let e = fails(&format!(
        "fit -v --features {} --labels {} --weights {} --out {}",
        f.p("x.npy"),
        f.p("y.npy"),
        f.p("wt.npy"),
        f.p("o.st")
    ));
    assert!(e.contains("`weights`") && e.contains("transposed"), "{e}");
    // Labels of another length are the labels' fault.
    let n = read_npy(Path::new(&f.p("x.npy"))).unwrap().shape[0];
    write_labels(Path::new(&f.p("y_short.npy")), &[0u32; 7]);
    let e = fails(&format!(
        "fit --features {} --labels {} --out {}",
        f.p("x.npy"),
        f.p("y_short.npy"),
        f.p("o.st")
    ));
    assert!(
        e.contains("`labels`") && e.contains(&format!("expected {n} rows")),
        "{e}"
    );
    // A batch whose D is not the posterior's, before any device.
    ok(&format!(
        "fit --features {} --labels {} --out {}",
        f.p("x.npy"),
        f.p("y.npy"),
        f.p("p.st")
    ));
    let x: Vec<f64> = vec![0.0; 3 * (d + 1)];
    write_npy(Path::new(&f.p("x_wide.npy")), &x, &[3, d + 1]).unwrap();
    let e = fails(&format!(
        "-v predict --posterior {} --features {} --out {}",
        f.p("p.st"),
        f.p("x_wide.npy"),
        f.p("probs.npy")
    ));
    assert!(
        e.contains("`features`") && e.contains(&format!("posterior's D = {d}")),
        "{e}"
    );
    // With --verbose and valid inputs, the device is named on stderr, results stay on stdout.
    let out = run(&format!(
        "predict -v --posterior {} --features {} --out {}",
        f.p("p.st"),
        f.p("x.npy"),
        f.p("probs.npy")
    ));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stderr.starts_with("note: using ") && stdout.starts_with("predicted"),
        "{stdout}{stderr}"
    );
}

/// `--device cpu` loads no GPU driver: the Vulkan loader's own debug log stays silent, while
/// `--device auto` (with wgpu built and required) does load it.
#[test]
fn cpu_device_touches_no_driver() {
    let f = Files::new("nodriver");
    let fit = |device: &str| {
        let out = bin()
            .args(
                format!(
                    "fit --features {} --labels {} --device {device} --out {}",
                    f.p("x.npy"),
                    f.p("y.npy"),
                    f.p(&format!("{device}.safetensors"))
                )
                .split_whitespace(),
            )
            .env("VK_LOADER_DEBUG", "all")
            .output()
            .expect("the binary runs");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let log = fit("cpu");
    assert!(!log.contains("Vulkan Loader") && !log.contains("LOADER"), "{log}");
    let wgpu_required = std::env::var("LAPLACE_REQUIRE").is_ok_and(|r| r.split(',').any(|b| b == "wgpu"));
    if cfg!(feature = "wgpu") && wgpu_required {
        let log = fit("auto");
        assert!(
            log.contains("Vulkan Loader") || log.contains("LOADER"),
            "the control run: {log}"
        );
    }
}

/// Validation tuning from the command line: `fit --optimize-prior val` and `tune` choose the τ
/// and temperature the library's `tune_prior_precision` chooses, store them, and `predict`
/// reads them unless told otherwise; without validation files it is a one-line error.
#[test]
fn validation_tuning_fit_tune_predict() {
    let f = Files::new("tune");
    let plain = f.p("plain.safetensors");
    let fit = |extra: &str, out: &str| {
        ok(&format!(
            "fit --features {} --labels {} --weights {} --bias-vector {} --dtype f64 --out {out} {extra}",
            f.p("x.npy"),
            f.p("y.npy"),
            f.p("w.npy"),
            f.p("b.npy")
        ))
    };
    fit("", &plain);
    // One validation label off the head's argmax: where every label is ranked first the NLL
    // has no minimiser in T, and T is not tuned.
    let mut val_labels = f.pb.labels[30..].to_vec();
    let p = f.pb.probs(&f.pb.head_aug(), f.pb.x(30));
    val_labels[0] = (0..3).min_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap() as u32;
    write_labels(&f.dir.join("y_val.npy"), &val_labels);
    let val = format!(
        "--val-features {} --val-labels {} --tune-temperature",
        f.p("x_new.npy"),
        f.p("y_val.npy")
    );
    let tuned = f.p("tuned.safetensors");
    fit(&format!("--optimize-prior val {val}"), &tuned);
    let retuned = f.p("retuned.safetensors");
    ok(&format!("tune --posterior {plain} {val} --out {retuned}"));
    // The library on the same posterior file and validation data.
    let cpu = CpuDevice::new(1).unwrap();
    let x = read_npy(&f.dir.join("x_new.npy"))
        .unwrap()
        .to_matrix::<f64>()
        .unwrap()
        .0;
    let tuned_by = |file: &str, per_class: bool, selection: laplace_update::TuneSelection| {
        let mut post: Posterior<CpuDevice, f64> = load_posterior(&cpu, Path::new(file)).unwrap();
        let config = laplace_update::TuneConfig {
            temperature: true,
            per_class,
            selection,
            ..Default::default()
        };
        let report = post
            .tune_prior_precision(HostMatrix::new(&x, 10, 6).unwrap(), &val_labels[..], &config)
            .unwrap();
        (post, report)
    };
    let tuned_by_library = |file: &str, per_class: bool| tuned_by(file, per_class, Default::default());
    let (want, report) = tuned_by_library(&plain, false);
    // --val-selection best: the library's best τ.
    let best = f.p("best.safetensors");
    ok(&format!(
        "tune --posterior {plain} {val} --val-selection best --out {best}"
    ));
    let (_, best_report) = tuned_by(&plain, false, laplace_update::TuneSelection::Best);
    let got: Posterior<CpuDevice, f64> = load_posterior(&cpu, Path::new(&best)).unwrap();
    assert_eq!(got.prior_precision(), &[best_report.prior_precision][..]);
    for file in [&tuned, &retuned] {
        let got: Posterior<CpuDevice, f64> = load_posterior(&cpu, Path::new(file)).unwrap();
        assert_eq!(got.prior_precision(), &[report.prior_precision][..], "{file}");
        assert_eq!(got.calibration().temperature, report.temperature, "{file}");
        let info = ok(&format!("info --posterior {file}"));
        assert!(
            info.contains(&format!("temperature    {}", report.temperature)),
            "{info}"
        );
    }
    // predict reads the stored temperature; --temperature 1 overrides it.
    let probs = |extra: &str| -> Vec<f64> {
        let out = f.p("p.npy");
        ok(&format!(
            "predict --posterior {tuned} --features {} --out {out} {extra}",
            f.p("x_new.npy")
        ));
        read_npy(Path::new(&out)).unwrap().to_matrix::<f64>().unwrap().0
    };
    let expected = want
        .predict(HostMatrix::new(&x, 10, 6).unwrap(), Link::default())
        .unwrap()
        .probs;
    assert!(relative_error(&probs(""), &expected) < 1e-12);
    assert!(relative_error(&probs("--temperature 1"), &expected) > 1e-6);
    probs("--link centred-probit --probit-lambda 0.5");
    fails(&format!(
        "fit --features {} --labels {} --optimize-prior val --out {}",
        f.p("x.npy"),
        f.p("y.npy"),
        f.p("z.safetensors")
    ));
    fails(&format!("tune --posterior {plain} --out {}", f.p("z.safetensors")));
    // One τ per class: a Diag posterior stores the library's choice; Full refuses.
    let diag = f.p("diag.safetensors");
    fit("--structure diag", &diag);
    let per_class = f.p("per-class.safetensors");
    let printed = ok(&format!(
        "tune --posterior {diag} {val} --tune-per-class --out {per_class}"
    ));
    assert!(printed.contains("τ per class = ["), "{printed}");
    let (_, report) = tuned_by_library(&diag, true);
    let got: Posterior<CpuDevice, f64> = load_posterior(&cpu, Path::new(&per_class)).unwrap();
    assert_eq!(Some(got.prior_precision().to_vec()), report.class_prior_precision);
    fails(&format!(
        "tune --posterior {plain} {val} --tune-per-class --out {}",
        f.p("z.safetensors")
    ));
}

/// `evaluate` prints and writes the predictive's scores beside the network's softmax: the CSV's
/// numbers are the library's scores of the same predictions, and the diagram is a PNG.
#[test]
fn evaluate_scores_and_reliability_diagram() {
    let f = Files::new("evaluate");
    let post = f.p("post.safetensors");
    ok(&format!(
        "fit --features {} --labels {} --weights {} --bias-vector {} --dtype f64 --out {post}",
        f.p("x.npy"),
        f.p("y.npy"),
        f.p("w.npy"),
        f.p("b.npy")
    ));
    let (csv, png) = (f.p("m.csv"), f.p("r.png"));
    let table = ok(&format!(
        "evaluate --posterior {post} --features {} --labels {} --link centred-probit --temperature 1.5 --csv {csv} --plot {png}",
        f.p("x_new.npy"),
        f.p("y_new.npy")
    ));
    assert!(
        table.contains("Laplace (centred-probit, T = 1.500)") && table.contains("network"),
        "{table}"
    );
    let cpu = CpuDevice::new(1).unwrap();
    let mut p: Posterior<CpuDevice, f64> = load_posterior(&cpu, Path::new(&post)).unwrap();
    let x = read_npy(&f.dir.join("x_new.npy"))
        .unwrap()
        .to_matrix::<f64>()
        .unwrap()
        .0;
    let x = HostMatrix::new(&x, 10, 6).unwrap();
    let labels = &f.pb.labels[30..];
    let network = p.predict(x, Link::None).unwrap();
    p.set_calibration(laplace_update::Calibration {
        temperature: 1.5,
        link: Link::default(),
    })
    .unwrap();
    let laplace = p
        .predict(
            x,
            Link::CentredProbit {
                lambda: Link::PROBIT_LAMBDA,
            },
        )
        .unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "predictive,accuracy,nll,ece,brier,confidence");
    for (line, probs) in lines[1..].iter().zip([&laplace.probs, &network.probs]) {
        let s = laplace_update::metrics::score(probs, labels, 3, 15).unwrap();
        let got: Vec<f64> = line.split(',').skip(1).map(|v| v.parse().unwrap()).collect();
        let want = [s.accuracy, s.nll, s.ece, s.brier, s.confidence];
        assert!(relative_error(&got, &want) < 1e-12, "{line} vs {want:?}");
    }
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
    fails(&format!(
        "evaluate --posterior {post} --features {} --labels {} --temperature 0",
        f.p("x_new.npy"),
        f.p("y_new.npy")
    ));
}

/// SIGINT and SIGTERM during a long fit stop it at its next pass with one line and exit 130 or
/// 143; the output file is untouched (here: an older posterior, byte for byte) and no
/// temporary is left beside it.
#[test]
fn signals_stop_a_long_fit_cleanly() {
    let dir = temp_dir("signals");
    let p = |name: &str| dir.join(name).display().to_string();
    // Full at K = 10, D = 256 over 80,000 rows: three passes of about half a second each.
    let (n, d, k) = (80_000usize, 256usize, 10usize);
    let x: Vec<f32> = (0..n * d).map(|i| ((i * 7919 % 1009) as f32 / 504.5) - 1.0).collect();
    let w: Vec<f32> = (0..k * d).map(|i| ((i * 31 % 101) as f32 / 1010.0) - 0.05).collect();
    write_npy(Path::new(&p("x.npy")), &x, &[n, d]).unwrap();
    write_npy(Path::new(&p("w.npy")), &w, &[k, d]).unwrap();
    write_labels(
        Path::new(&p("y.npy")),
        &(0..n).map(|i| (i % k) as u32).collect::<Vec<_>>(),
    );
    let old = b"an older posterior".to_vec();
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        std::fs::write(p("post.st"), &old).unwrap();
        let child = bin()
            .args([
                "fit",
                "--features",
                &p("x.npy"),
                "--labels",
                &p("y.npy"),
                "--weights",
                &p("w.npy"),
            ])
            .args(["--out", &p("post.st"), "--device", "cpu"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        // The shell's own `kill`, so that no procps is needed.
        let killed = Command::new("sh")
            .args(["-c", &format!("kill -{signal} {}", child.id())])
            .status()
            .unwrap();
        assert!(killed.success());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "SIG{signal}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("error: interrupted by SIG{signal}")),
            "{stderr}"
        );
        // Interrupted before the write: the old file is untouched; after it: complete.
        let now = std::fs::read(p("post.st")).unwrap();
        assert!(now == old || load_posterior::<_, f32>(&CpuDevice::new(1).unwrap(), Path::new(&p("post.st"))).is_ok());
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| ["x.npy", "w.npy", "y.npy", "post.st"].contains(&n.as_str())),
            "left behind: {names:?}"
        );
    }
}
