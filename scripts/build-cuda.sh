#!/usr/bin/env bash
# Builds the CLI and the device-generic test binary with `--features cuda` and copies them to
# .gpu/ (git-ignored) for the GPU machine. The first build compiles candle's CUDA kernels
# (~40 min on 2 cores); later builds reuse target/.
set -euo pipefail
cd "$(dirname "$0")/.."
EXPORTS=$(scripts/cuda-toolkit.sh)   # fails loudly if the toolkit cannot be set up
eval "$EXPORTS"
# A target dir of its own: the CPU build in target/release stays valid and unlocked.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}"
T="$CARGO_TARGET_DIR"
cargo build --release --features cuda --bin hessian-lab
cargo test --release --features cuda --test device --no-run 2>&1 | tee /tmp/hl-cuda-test-build.log
mkdir -p .gpu
cp "$T/release/hessian-lab" .gpu/
cp "$(grep -oE "$T/release/deps/device-[0-9a-f]+" /tmp/hl-cuda-test-build.log | tail -1)" .gpu/device-tests
strip .gpu/hessian-lab .gpu/device-tests || true
cp -r data/mnist .gpu/ 2>/dev/null || true
cp benches/pytorch_reference.py tests/fixtures/export_pytorch.py .gpu/
echo "built .gpu/hessian-lab and .gpu/device-tests; on a GPU-less machine they run on the CPU:"
LD_LIBRARY_PATH="$CUDA_ROOT/lib:$CUDA_ROOT/lib/stubs" .gpu/hessian-lab spectrum --model m1 --samples 8 --device cuda --json | head -c 300; echo
