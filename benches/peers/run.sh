#!/usr/bin/env bash
# Runs every peer comparison on this machine in one go: laplace-torch (last-layer Full
# Laplace), a PyTorch implementation of the seed paper's update rule, and this library's CLI,
# on the same synthetic features saved as .npy. Prints the ratio table and writes it, with
# the machine description, to BENCHMARKS.md.
#
#   benches/peers/run.sh [--quick]
#
# The Python environment (pinned torch and laplace-torch from PyPI) goes to target/peers-venv,
# or to $PEERS_VENV. Heavy: a few GB of wheels and several minutes; CI does not run it.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${PEERS_VENV:-$root/target/peers-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/benches/peers/requirements.txt"
(cd "$root" && cargo build --release --quiet)
"$venv/bin/python" "$root/benches/peers/compare.py" \
    --bin "$root/target/release/laplace-update" \
    --work "$root/target/peers" \
    --report "$root/BENCHMARKS.md" "$@"
