#!/usr/bin/env bash
# Fuzzes the .npy reader, the safetensors reader and the posterior loader for SECONDS each.
#
#   scripts/fuzz.sh [SECONDS]
#
# With cargo-fuzz and a nightly toolchain it runs the libFuzzer targets in fuzz/; otherwise the
# stable mutation fuzzer in examples/fuzz.rs. Inputs that panic land in fuzz/artifacts or
# target/fuzz-crashes; copy them to tests/fuzz-corpus/<target>/ so the regression test keeps
# them fixed.
set -euo pipefail
seconds="${1:-600}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
targets=(npy safetensors posterior)
if cargo +nightly fuzz --version >/dev/null 2>&1; then
    for t in "${targets[@]}"; do
        (cd fuzz && cargo +nightly fuzz run "$t" -- -max_total_time="$seconds")
    done
else
    echo "cargo-fuzz with nightly not found: using the stable mutation fuzzer" >&2
    cargo build --release --example fuzz
    for t in "${targets[@]}"; do
        ./target/release/examples/fuzz "$t" "$seconds"
    done
fi
