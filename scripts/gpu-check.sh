#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU and no Rust toolchain: runs the executables that
# scripts/gpu-build.sh collected in target/gpu-bundle/ (or $BUNDLE).
#   1. the launch plans at the sizes users run (host only, seconds);
#   2. the CUDA suite (f32 and f64 against f64 references) with LAPLACE_REQUIRE=cuda: kernels
#      loaded from CUBIN, split grids, the blocked Sherman–Morrison;
#   3. `laplace-update profile --device cuda`: every kernel family against the measured GEMM
#      peak at D = 768, K = 10, N = 100,000, then gemm and SYRK through cuBLAS beside them;
#   4. the kernel benches on CUDA (and gemm, SYRK on cuBLAS) at the [bench] target sizes: Full-GGN accumulation at
#      N = 100,000, D = 768, K = 10; the low-rank update at P = 7,680 (D = 768, K = 10);
#      sequential Sherman–Morrison at D = 1,536;
#   5. the structures at the sizes users run on CUDA: the Diag, Kron and Shared fits and probit
#      predictions of the `scale` bench group at K = 1,000 (D = 512, N = 5,000) and K = 3,100
#      (D = 128, N = 20,000), in criterion's quick mode;
#   6. the wgpu suite when a Vulkan loader is present.
# Writes OUTDIR/gpu-check.log and OUTDIR/results.md; finishes in under 9 minutes.
set -uo pipefail
out="${1:?usage: scripts/gpu-check.sh OUTDIR}"
here="$(cd "$(dirname "$0")" && pwd)"
bundle="${BUNDLE:-$here/../target/gpu-bundle}"
[ -x "$bundle/cuda-tests" ] || bundle="$here"
mkdir -p "$out"
log="$out/gpu-check.log"
: >"$log"
step() { echo "== $*" | tee -a "$log"; }

step "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true; } >>"$log" 2>&1

step "launch plans"
timeout 60 "$bundle/launch_plans-tests" >>"$log" 2>&1
plans_rc=$?

step "CUDA suite (LAPLACE_REQUIRE=cuda)"
start=$(date +%s)
LAPLACE_REQUIRE=cuda timeout 200 "$bundle/cuda-tests" --test-threads 2 >"$out/cuda.log" 2>&1
tests_rc=$?
tests_s=$(( $(date +%s) - start ))
cat "$out/cuda.log" >>"$log"
passed=$(grep -c '\.\.\. ok$' "$out/cuda.log" || true)
failed=$(grep -c '\.\.\. FAILED$' "$out/cuda.log" || true)

step "profile --device cuda"
start=$(date +%s)
timeout 120 "$bundle/laplace-update" profile --device cuda --sizes 768,10,100000,100 \
    --csv "$out/profile.csv" >"$out/profile.txt" 2>&1
profile_rc=$?
profile_s=$(( $(date +%s) - start ))
cat "$out/profile.txt" >>"$log"

step "kernel benches on CUDA"
start=$(date +%s)
LAPLACE_BENCH_DEVICES=cuda,cublas LAPLACE_BENCH_SIZES="768,10,100000,10;1536,10,10000,100" \
    timeout 200 "$bundle/kernels-bench" --bench --noplot >"$out/bench.log" 2>&1
bench_rc=$?
bench_s=$(( $(date +%s) - start ))
cat "$out/bench.log" >>"$log"

step "structures at scale on CUDA"
start=$(date +%s)
LAPLACE_BENCH_DEVICES=cuda timeout 120 "$bundle/posterior-bench" --bench --quick --noplot \
    'scale .*K=(1000|3100)' >"$out/scale.log" 2>&1
scale_rc=$?
scale_s=$(( $(date +%s) - start ))
cat "$out/scale.log" >>"$log"

wgpu_line="not run (no Vulkan loader)"
if ldconfig -p 2>/dev/null | grep -q libvulkan.so.1 && [ -x "$bundle/wgpu-tests" ]; then
    step "wgpu suite"
    LAPLACE_REQUIRE=wgpu timeout 60 "$bundle/wgpu-tests" --test-threads 2 >>"$log" 2>&1
    wgpu_line="exit $?"
fi

{
    echo "# GPU check"
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---|"
    echo "| launch plans | exit $plans_rc | |"
    echo "| CUDA suite | exit $tests_rc: $passed passed, $failed failed | $tests_s |"
    echo "| profile | exit $profile_rc | $profile_s |"
    echo "| kernel benches | exit $bench_rc | $bench_s |"
    echo "| structures at scale | exit $scale_rc | $scale_s |"
    echo "| wgpu suite | $wgpu_line | |"
    echo
    echo "## profile --device cuda"
    echo
    echo '```'
    cat "$out/profile.txt"
    echo '```'
    echo
    echo "## Kernel throughput (criterion: benchmark, time, throughput)"
    echo
    echo '```'
    grep -E '^[a-z_]+ \[|time:|thrpt:' "$out/bench.log" || true
    echo '```'
    echo
    echo "## Structures at scale on CUDA (criterion --quick: case, peak host heap, time, throughput)"
    echo
    echo '```'
    grep -E '^scale|time:|thrpt:|SKIPPED' "$out/scale.log" || true
    echo '```'
} >"$out/results.md"
cat "$out/results.md"
[ "$plans_rc" = 0 ] && [ "$tests_rc" = 0 ] && [ "$profile_rc" = 0 ] && [ "$bench_rc" = 0 ] && [ "$scale_rc" = 0 ]
