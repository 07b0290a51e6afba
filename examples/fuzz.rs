//! A mutation fuzzer for the file readers that runs on the stable toolchain, for machines
//! without cargo-fuzz (`scripts/fuzz.sh` picks cargo-fuzz when it is there):
//!
//! `cargo run --release --example fuzz -- npy|safetensors|posterior SECONDS [OUT_DIR]`
//!
//! It mutates valid seed files (bit flips, special bytes, truncation, duplicated and inserted
//! runs, and edits of the ASCII digits in the headers, where shapes and offsets live), feeds
//! them to `laplace_update::io::fuzz`, and writes every input that panics to OUT_DIR
//! (default `target/fuzz-crashes/TARGET`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use laplace_update::io::{fuzz, save_accumulator, save_posterior, write_npy};
use laplace_update::random::SplitMix64;
use laplace_update::{CpuDevice, CurvatureAccumulator, FitConfig, HostMatrix, Posterior, Structure};

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("laplace-fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let read = |name: &str| std::fs::read(dir.join(name)).expect("seed");
    let out = match target {
        "npy" => {
            write_npy(&dir.join("a.npy"), &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).expect("npy");
            write_npy(&dir.join("b.npy"), &[0.5f64, -1.0, 2.0], &[3]).expect("npy");
            vec![read("a.npy"), read("b.npy")]
        }
        "safetensors" => {
            let x: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
            let y: Vec<u8> = [0i64, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
            let views = vec![
                (
                    "x",
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &x).expect("view"),
                ),
                (
                    "labels",
                    safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![2], &y).expect("view"),
                ),
            ];
            vec![safetensors::serialize(views, None).expect("serialize")]
        }
        "posterior" => {
            let cpu = CpuDevice::new(1).expect("cpu");
            let x = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0];
            let head = [0.5f32, -0.5, -0.5, 0.5];
            let mut files = Vec::new();
            for structure in [Structure::Full, Structure::Kron, Structure::Diag] {
                let config = FitConfig {
                    structure,
                    ..Default::default()
                };
                let post = Posterior::fit(
                    &cpu,
                    HostMatrix::new(&x, 3, 2).unwrap(),
                    &[0u8, 1, 1],
                    HostMatrix::new(&head, 2, 2).unwrap(),
                    None,
                    &config,
                )
                .expect("fit");
                save_posterior(&post, &dir.join("p.safetensors")).expect("save");
                files.push(read("p.safetensors"));
            }
            let mut acc =
                CurvatureAccumulator::new(&cpu, HostMatrix::new(&head, 2, 2).unwrap(), None, &FitConfig::default())
                    .expect("acc");
            acc.accumulate(HostMatrix::new(&x, 3, 2).unwrap(), &[0u8, 1, 1])
                .expect("accumulate");
            save_accumulator(&acc, &dir.join("a.safetensors")).expect("save");
            files.push(read("a.safetensors"));
            files
        }
        other => panic!("unknown target `{other}`: npy, safetensors or posterior"),
    };
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn mutate(input: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    let mut v = input.to_vec();
    let below = |rng: &mut SplitMix64, n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    for _ in 0..1 + below(rng, 4) {
        if v.is_empty() {
            v.push(rng.next_u64() as u8);
            continue;
        }
        let i = below(rng, v.len());
        match below(rng, 7) {
            0 => v[i] ^= 1 << below(rng, 8),
            1 => v[i] = [0u8, 0xff, 0x7f, 0x80, b'9', b'-', b'"'][below(rng, 7)],
            2 => v.truncate(i),
            3 => {
                let end = (i + 1 + below(rng, 16)).min(v.len());
                let run = v[i..end].to_vec();
                let at = below(rng, v.len());
                v.splice(at..at, run);
            }
            4 => {
                let bytes: Vec<u8> = (0..1 + below(rng, 8)).map(|_| rng.next_u64() as u8).collect();
                v.splice(i..i, bytes);
            }
            _ => {
                // Edit a digit in the first 512 bytes, where the headers keep shapes and offsets.
                let digits: Vec<usize> = v
                    .iter()
                    .take(512)
                    .enumerate()
                    .filter(|(_, b)| b.is_ascii_digit())
                    .map(|(j, _)| j)
                    .collect();
                if !digits.is_empty() {
                    let j = digits[below(rng, digits.len())];
                    v[j] = b'0' + below(rng, 10) as u8;
                    if below(rng, 3) == 0 {
                        v.insert(j, b'9');
                    }
                }
            }
        }
    }
    v
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let target = args.get(1).map(String::as_str).unwrap_or("npy");
    let seconds: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(60);
    let out = args
        .get(3)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("target/fuzz-crashes/{target}")));
    let run: fn(&[u8]) = match target {
        "npy" => fuzz::npy,
        "safetensors" => fuzz::safetensors,
        "posterior" => fuzz::posterior,
        other => panic!("unknown target `{other}`"),
    };
    let corpus = seeds(target);
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = SplitMix64::new(seconds ^ 0xF022);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut runs, mut crashes) = (0u64, 0u64);
    while Instant::now() < deadline {
        let seed = &corpus[(rng.next_u64() % corpus.len() as u64) as usize];
        let input = mutate(seed, &mut rng);
        runs += 1;
        if std::panic::catch_unwind(|| run(&input)).is_err() {
            crashes += 1;
            std::fs::create_dir_all(&out).expect("crash dir");
            std::fs::write(out.join(format!("crash-{runs}")), &input).expect("write crash");
        }
    }
    let _ = std::panic::take_hook();
    println!(
        "{target}: {runs} inputs in {seconds} s, {crashes} panics (saved to {})",
        out.display()
    );
}
