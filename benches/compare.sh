#!/usr/bin/env bash
# Side-by-side CPU timings: hessian-lab (candle, both conv implementations) vs PyTorch, same
# machine, same run. Usage: benches/compare.sh [threads] [python-with-torch]
set -euo pipefail
cd "$(dirname "$0")/.."
T="${1:-1}"
PY="${2:-/tmp/torchenv/bin/python}"
cargo build --release -q
for m in m1 c2; do
  ./target/release/hessian-lab bench --model "$m" --batch-size 128 --threads "$T" --conv candle --repeats 7 --json
  ./target/release/hessian-lab bench --model "$m" --batch-size 128 --threads "$T" --conv im2col --repeats 7 --json
  "$PY" benches/pytorch_reference.py --model "$m" --batch-size 128 --threads "$T" --repeats 7
done
