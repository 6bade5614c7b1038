#!/usr/bin/env bash
# Executes every notebook in notebooks/ with the evcxr Jupyter kernel and fails if a cell
# errors, writes to stderr (unless tagged allow-stderr) or a notebook shows no image.
#
# On a fresh machine it installs, into a cache folder reused on later runs:
#   - evcxr_jupyter 0.22.0 (cargo install --locked; ~15-20 min on 2 cores the first time),
#   - a Python venv with nbclient 0.11 + nbformat 5.11 (from PyPI).
# Cache: $HESSIAN_LAB_CACHE (default ~/.cache/hessian-lab). evcxr's build folder
# (EVCXR_TMPDIR) lives there too, so candle is compiled once (cold ≈ 8 min, warm ≈ 30 s).
# Usage: scripts/run-notebooks.sh [name-filter ...]
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${HESSIAN_LAB_CACHE:-$HOME/.cache/hessian-lab}"
mkdir -p "$CACHE"
EVCXR_ROOT="$CACHE/evcxr"
if [ ! -x "$EVCXR_ROOT/bin/evcxr_jupyter" ]; then
  echo "installing evcxr_jupyter 0.22.0 into $EVCXR_ROOT (first run only)"
  cargo install --locked evcxr_jupyter --version 0.22.0 --root "$EVCXR_ROOT"
fi
VENV="$CACHE/venv"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import nbclient, nbformat" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "nbclient==0.11.*" "nbformat==5.11.*"
fi
export JUPYTER_PATH="$VENV/share/jupyter"
export JUPYTER_DATA_DIR="$VENV/share/jupyter"
export PATH="$EVCXR_ROOT/bin:$PATH"
evcxr_jupyter --install >/dev/null
# A kernel spec where nbclient looks for it, whatever evcxr chose.
if [ ! -f "$JUPYTER_PATH/kernels/rust/kernel.json" ]; then
  mkdir -p "$JUPYTER_PATH/kernels/rust"
  cat > "$JUPYTER_PATH/kernels/rust/kernel.json" <<JSON
{"argv": ["$EVCXR_ROOT/bin/evcxr_jupyter", "--control_file", "{connection_file}"], "display_name": "Rust", "language": "rust", "interrupt_mode": "message"}
JSON
fi
# evcxr: a panic must fail the cell; keep one build folder across notebooks and runs.
export EVCXR_CONFIG_DIR="$CACHE/evcxr-config"
mkdir -p "$EVCXR_CONFIG_DIR"
printf ':preserve_vars_on_panic 0\n:cache 2000\n' > "$EVCXR_CONFIG_DIR/init.evcxr"
export EVCXR_TMPDIR="$CACHE/evcxr-tmp"
# evcxr's cells link std dynamically: make the toolchain's libstd-*.so findable.
HOST=$(rustc -vV | sed -n 's/^host: //p')
export LD_LIBRARY_PATH="$(rustc --print sysroot)/lib/rustlib/$HOST/lib:${LD_LIBRARY_PATH:-}"
mkdir -p "$EVCXR_TMPDIR"
start=$(date +%s)
"$VENV/bin/python" scripts/run_notebooks.py "$@"
echo "notebooks took $(( $(date +%s) - start ))s"
