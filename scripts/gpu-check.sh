#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the repository root, after scripts/build-cuda.sh here and with
# .gpu/ carried over. Correctness (device tests on CUDA), a short reproduce table9, and the
# GPU benchmark candle vs PyTorch (TF32 off), all into $OUT (or ./gpu-results).
set -uo pipefail
OUT="${OUT:-gpu-results}"; mkdir -p "$OUT"
TORCH_LIB=$(python3 -c "import nvidia, os; print(os.path.join(os.path.dirname(nvidia.__path__[0]), 'nvidia', 'cu13', 'lib'))" 2>/dev/null)
export LD_LIBRARY_PATH="${TORCH_LIB:-}:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
HESSIAN_LAB_TEST_DEVICE=cuda .gpu/device-tests --test-threads 1 2>&1 | tee "$OUT/device-tests.log"
.gpu/hessian-lab reproduce table9 --quick --device cuda --out "$OUT/table9" 2>&1 | tee "$OUT/table9.log"
for b in 256 1024; do
  .gpu/hessian-lab bench --model m1 --batch-size $b --device cuda --json | tee -a "$OUT/bench.jsonl"
  python3 .gpu/pytorch_reference.py --model m1 --batch-size $b --device cuda | tee -a "$OUT/bench.jsonl"
done
