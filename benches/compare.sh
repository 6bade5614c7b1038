#!/usr/bin/env bash
# Side-by-side CPU timings: hessian-lab (our fused CPU kernels, the default, and candle's own ops) vs
# PyTorch, same machine, same run. Usage: benches/compare.sh [threads] [python-with-torch] [models]
set -euo pipefail
cd "$(dirname "$0")/.."
T="${1:-1}"
PY="${2:-/tmp/torchenv/bin/python}"
MODELS="${3:-m1 c2}"
cargo build --release -q
for m in $MODELS; do
  R=7; [ "$m" = c2 ] && R=2
  ./target/release/hessian-lab bench --model "$m" --batch-size 128 --threads "$T" --kernels candle --repeats $R --json
  ./target/release/hessian-lab bench --model "$m" --batch-size 128 --threads "$T" --kernels fused --repeats $R --json
  "$PY" benches/pytorch_reference.py --model "$m" --batch-size 128 --threads "$T" --repeats $R
done
