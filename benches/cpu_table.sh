#!/usr/bin/env bash
# The whole matrix of the speed issue on this machine, in one command: every model of the paper
# (M1, C1, C2, C3 and ResNet18 at batch 128, ResNet18 also at 32), f32 and f64, 1 and 2 threads,
# each configuration as benches/compare.sh runs it (ours and PyTorch alternating), then one table
# in BENCHMARKS.md's layout, headed by the CPU and SIMD level `bench` reports. This is how a
# table for another CPU (e.g. an Intel Xeon) is made.
# Usage: benches/cpu_table.sh [python-with-torch] [rounds] [out-dir]
# Environment: THREADS (default "1 2"), DTYPES (default "f32 f64"), MODELS (default
# "m1 c1 c2 c3 resnet18"), BUILD_FLAGS as for compare.sh.
# One round of everything takes two to three hours on the 2-core AMD EPYC VM (ResNet18 at 128 in
# f64 is half of it); more rounds make the medians steadier.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-/tmp/torchenv/bin/python}"
ROUNDS="${2:-1}"
OUT="${3:-bench-$(date +%Y%m%d-%H%M)}"
MODELS="${MODELS:-m1 c1 c2 c3 resnet18}"
mkdir -p "$OUT"
lscpu > "$OUT/lscpu.txt" 2>/dev/null || true
for dtype in ${DTYPES:-f32 f64}; do
  for t in ${THREADS:-1 2}; do
    DTYPE=$dtype BATCH=128 benches/compare.sh "$t" "$PY" "$MODELS" "$ROUNDS" >> "$OUT/$dtype-$t-128.jsonl"
    case " $MODELS " in *" resnet18 "*)
      DTYPE=$dtype BATCH=32 benches/compare.sh "$t" "$PY" resnet18 "$ROUNDS" >> "$OUT/$dtype-$t-32.jsonl" ;;
    esac
  done
done
python3 benches/summarize.py --table "$OUT"/*.jsonl | tee "$OUT/table.md"
