"""Executes every notebook in notebooks/ with the evcxr kernel, headlessly, one at a time.

Fails (exit 1) when a cell errors, when a cell writes to stderr (evcxr reports some failures
only there) unless the cell is tagged "allow-stderr", when a notebook shows no image/png, or
when a cell prints a "candle build:" other than the vendored candle-core's marker (a notebook
must link the same patched candle as the crate's own tests and CLI).
Executed copies go to $NOTEBOOK_OUT (default: target/notebooks), never over the sources.
"""
import os
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
nb_dir = os.path.join(root, "notebooks")
out_dir = os.environ.get("NOTEBOOK_OUT", os.path.join(root, "target", "notebooks"))
os.makedirs(out_dir, exist_ok=True)
names = sorted(f for f in os.listdir(nb_dir) if f.endswith(".ipynb"))
if len(sys.argv) > 1:
    names = [n for n in names if any(a in n for a in sys.argv[1:])]
import re
src = open(os.path.join(root, "vendor", "candle-core", "src", "backprop.rs")).read()
want_candle = re.search(r'pub const HESSIAN_LAB_PATCH: &str = "([^"]*)"', src).group(1)
failures = []
for name in names:
    path = os.path.join(nb_dir, name)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=int(os.environ.get("NOTEBOOK_CELL_TIMEOUT", "2400")), kernel_name="rust",
                            resources={"metadata": {"path": nb_dir}})
    t0 = time.time()
    problems = []
    try:
        client.execute()
    except CellExecutionError as e:
        problems.append(f"cell error: {str(e)[:2000]}")
    except Exception as e:  # kernel died, timeout, ...
        problems.append(f"execution failed: {type(e).__name__}: {str(e)[:2000]}")
    images = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.get("tags", [])
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
            if out.get("output_type") == "stream" and out.get("name") == "stderr" and "allow-stderr" not in tags:
                problems.append(f"cell {i} wrote to stderr: {out.get('text', '')[:2000]}")
            if "image/png" in out.get("data", {}):
                images += 1
            text = out.get("text", "") if out.get("output_type") == "stream" else ""
            for line in text.splitlines():
                if line.startswith("candle build: ") and line[len("candle build: "):] != want_candle:
                    problems.append(f"cell {i} runs another candle: {line!r}, expected {want_candle!r}")
    if images == 0:
        problems.append("no image/png output")
    nbformat.write(nb, os.path.join(out_dir, name))
    dt = time.time() - t0
    if problems:
        failures.append(name)
        print(f"FAIL {name} ({dt:.0f}s)")
        for p in problems:
            print("   ", p)
    else:
        print(f"ok   {name} ({dt:.0f}s, {images} image(s))")
    sys.stdout.flush()
print(f"notebooks: {len(names) - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
