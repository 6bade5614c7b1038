#!/usr/bin/env bash
# Executes every notebook (scripts/run-notebooks.sh: fails on an error, on stderr, on a notebook
# without an image) and commits-ready copies the executed notebooks, with their outputs and
# plots, over notebooks/, so that a visitor sees the results without running anything.
# Edit the notebooks' cells in scripts/make_notebooks.py (which writes them without outputs),
# then run this. CI executes them fresh and does not write them back.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/make_notebooks.py
scripts/run-notebooks.sh "$@"
out="${NOTEBOOK_OUT:-target/notebooks}"
for nb in "$out"/*.ipynb; do
  cp "$nb" notebooks/
done
echo "refreshed: $(ls "$out"/*.ipynb | wc -l) notebooks with outputs in notebooks/"
