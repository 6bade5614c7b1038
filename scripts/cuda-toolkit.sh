#!/usr/bin/env bash
# Installs a pinned CUDA 13.0 toolkit from PyPI (no apt, no NVIDIA repo) into a cache folder,
# adds link stubs for the driver (libcuda.so) and unversioned library names, and prints the
# exports for building with `--features cuda`. Pins matter: the GPU machines run driver 580
# (CUDA 13.0); a newer nvcc emits PTX that driver rejects.
# Usage: eval "$(scripts/cuda-toolkit.sh)"
set -euo pipefail
CACHE="${HESSIAN_LAB_CACHE:-$HOME/.cache/hessian-lab}"
D="$CACHE/cuda13"
ROOT="$D/nvidia/cu13"
if [ ! -x "$ROOT/bin/nvcc" ]; then
  python3 -m pip install -q --target "$D" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 >&2
fi
mkdir -p "$ROOT/lib/stubs"
# Driver stub: every cu* entry point cudarc binds returns CUDA_ERROR_STUB_LIBRARY (34), so a
# binary built here starts on a GPU-less machine and falls back to the CPU.
if [ ! -f "$ROOT/lib/stubs/libcuda.so" ]; then
  cargo fetch -q >&2 || true
  SYS=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.* 2>/dev/null | tail -1)
  [ -n "$SYS" ] || { echo "cudarc sources not found (run cargo fetch)" >&2; exit 1; }
  grep -rhoE 'fn cu[A-Za-z0-9_]+' "$SYS/src/driver/sys" | sed 's/^fn //' | sort -u \
    | awk '{print "int " $1 "(void) { return 34; }"}' > "$D/cuda_stub.c"
  gcc -shared -fPIC -o "$ROOT/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$D/cuda_stub.c" >&2
  # Stubs for the math libraries cudarc links (entry points return an error status).
  for lib in cublas:cublas:13 cublasLt:cublaslt:13 curand:curand:10 nvrtc:nvrtc:13; do
    IFS=: read -r name dir ver <<<"$lib"
    if [ ! -e "$ROOT/lib/lib$name.so" ]; then
      grep -rhoE "fn [a-zA-Z][A-Za-z0-9_]+" "$SYS/src/$dir/sys" 2>/dev/null | sed 's/^fn //' | sort -u \
        | awk '{print "int " $1 "(void) { return 1; }"}' > "$D/${name}_stub.c"
      gcc -shared -fPIC -o "$ROOT/lib/stubs/lib$name.so" -Wl,-soname,lib$name.so.$ver "$D/${name}_stub.c" >&2
      ln -sf "lib$name.so" "$ROOT/lib/stubs/lib$name.so.$ver"
    fi
  done
  ln -sf libcuda.so "$ROOT/lib/stubs/libcuda.so.1"
fi
[ -e "$ROOT/lib/libcudart.so" ] || ln -sf "$(ls "$ROOT"/lib/libcudart.so.13* | head -1)" "$ROOT/lib/libcudart.so"
echo "export CUDA_ROOT=$ROOT CUDA_HOME=$ROOT CUDA_PATH=$ROOT CUDA_COMPUTE_CAP=90"
echo "export PATH=$ROOT/bin:\$PATH"
echo "export LIBRARY_PATH=$ROOT/lib:$ROOT/lib/stubs:\${LIBRARY_PATH:-}"
