#!/usr/bin/env bash
# Side-by-side CPU timings: hessian-lab (our fused CPU kernels, the default) vs PyTorch, same
# machine, alternating runs (fused, torch, fused, torch, …) so that both see the same drift of a
# shared VM; candle's own ops once per model when CANDLE=1.
# Usage: benches/compare.sh [threads] [python-with-torch] [models] [rounds] > runs.jsonl
#        python3 benches/summarize.py runs.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
T="${1:-1}"
PY="${2:-/tmp/torchenv/bin/python}"
MODELS="${3:-m1 c2}"
ROUNDS="${4:-3}"
cargo build --release -q
tag() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d.update(round=$1); print(json.dumps(d))"; }
for m in $MODELS; do
  R=11; [ "$m" = c2 ] && R=3
  if [ "${CANDLE:-0}" = 1 ]; then
    ./target/release/hessian-lab bench --model "$m" --batch-size 128 --threads "$T" --kernels candle --repeats $R --json | tag 0
  fi
  for r in $(seq 1 "$ROUNDS"); do
    ./target/release/hessian-lab bench --model "$m" --batch-size 128 --threads "$T" --kernels fused --repeats $R --json | tag "$r"
    "$PY" benches/pytorch_reference.py --model "$m" --batch-size 128 --threads "$T" --repeats $R | tag "$r"
  done
done
