#!/usr/bin/env bash
# Builds, on a machine with Rust, the executables that scripts/gpu-check.sh runs on a GPU
# machine without Rust: the CUDA and wgpu test suites, the launch-plan tests, the kernel and
# posterior benches and the command-line tool (for `profile`), with `--features cuda,wgpu`,
# stripped, into target/gpu-bundle/ (carry that folder).
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/gpu-bundle
rm -rf "$out"
mkdir -p "$out"

executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    kinds = msg.get("target", {}).get("kind", [])
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and ("test" in kinds or "bench" in kinds):
        print(msg["target"]["name"], msg["executable"])
'
}

cargo test --release --no-run --features cuda,wgpu --test cuda --test wgpu --test launch_plans --message-format=json-render-diagnostics |
    executables | while read -r name path; do cp "$path" "$out/$name-tests"; done
cargo bench --no-run --features cuda,wgpu --bench kernels --bench posterior --message-format=json-render-diagnostics |
    executables | while read -r name path; do cp "$path" "$out/$name-bench"; done
cargo build --release --features cli,cuda,wgpu --bin laplace-update
cp target/release/laplace-update "$out/"
strip "$out"/* 2>/dev/null || true
cp scripts/gpu-check.sh "$out/"
ls -la "$out"
du -sh "$out"
