#!/usr/bin/env bash
# Side-by-side CPU timings: hessian-lab (our fused CPU kernels, the default) vs PyTorch, same
# machine, alternating runs (fused, torch, fused, torch, …) so that both see the same drift of a
# shared VM; candle's own ops once per model when CANDLE=1.
# Usage: benches/compare.sh [threads] [python-with-torch] [models] [rounds] > runs.jsonl
#        python3 benches/summarize.py runs.jsonl
# Models: m1 c1 c2 c3 resnet18. Environment: DTYPE=f32|f64 (default f32), BATCH (default 128;
# the issue asks ResNet18 at 32 too), BUILD_FLAGS (e.g. --no-default-features for the AVX2-only
# gemm path), CANDLE=1 adds candle's own ops.
set -euo pipefail
cd "$(dirname "$0")/.."
T="${1:-1}"
PY="${2:-/tmp/torchenv/bin/python}"
MODELS="${3:-m1 c2}"
ROUNDS="${4:-3}"
DTYPE="${DTYPE:-f32}"
B="${BATCH:-128}"
cargo build --release -q ${BUILD_FLAGS:-}
tag() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d.update(round=$1); print(json.dumps(d))"; }
for m in $MODELS; do
  # repeats per call: about the same seconds per call for every model
  case "$m" in m1) R=11 ;; c1) R=5 ;; resnet18) R=2 ;; *) R=3 ;; esac
  if [ "${CANDLE:-0}" = 1 ]; then
    ./target/release/hessian-lab bench --model "$m" --batch-size "$B" --dtype "$DTYPE" --threads "$T" --kernels candle --repeats $R --json | tag 0
  fi
  for r in $(seq 1 "$ROUNDS"); do
    ./target/release/hessian-lab bench --model "$m" --batch-size "$B" --dtype "$DTYPE" --threads "$T" --kernels fused --repeats $R --json | tag "$r"
    "$PY" benches/pytorch_reference.py --model "$m" --batch-size "$B" --dtype "$DTYPE" --threads "$T" --repeats $R | tag "$r"
  done
done
