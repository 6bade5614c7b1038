"""Summarises benches/compare.sh output: per model, threads and implementation the median over
rounds of each metric, and the median over rounds of the paired ratio fused / torch (both runs
of a round are back to back, so the ratio cancels most of a shared machine's drift).
Usage: python3 benches/summarize.py runs.jsonl [more.jsonl …]"""
import json
import statistics
import sys
from collections import defaultdict

KEYS = ["forward_ms", "grad_ms", "hvp_ms", "hvp_reuse_graph_ms", "hvp_grad_ratio", "hvp_reuse_grad_ratio",
        "ggn_ms", "ggn_grad_ratio", "ggn_reuse_graph_ms", "ggn_reuse_grad_ratio", "power20_ms", "power20_hvp_grad_ratio",
        "peak_rss_mb", "hvp_peak_rss_above_baseline_mb"]


def impl(d):
    return d.get("kernels") or d.get("framework", "torch").split("+")[0]


runs = defaultdict(list)
for fi, path in enumerate(sys.argv[1:]):
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            d = json.loads(line)
            d["_pair"] = (fi, d.get("round"))  # rounds are numbered per file
            runs[(d["model"], d.get("batch_size", 128), d.get("dtype", "f32"), d["threads"])].append(d)

for (model, batch, dtype, threads), ds in sorted(runs.items()):
    print(f"\n## {model}, batch {batch}, {dtype}, {threads} thread(s)")
    print("| implementation | rounds | " + " | ".join(KEYS) + " |")
    print("|---" * (len(KEYS) + 2) + "|")
    by = defaultdict(list)
    for d in ds:
        by[impl(d)].append(d)
    for name, xs in by.items():
        vals = [[x[k] for x in xs if x.get(k) is not None] for k in KEYS]
        med = [statistics.median(v) if v else None for v in vals]  # None: key added later
        cell = lambda v: "–" if v is None else f"{v:.1f}" if v >= 10 else f"{v:.2f}"  # noqa: E731
        print(f"| {name} | {len(xs)} | " + " | ".join(cell(v) for v in med) + " |")
    fused = {d["_pair"]: d for d in by.get("fused", [])}
    torch = {d["_pair"]: d for d in ds if impl(d).startswith("torch")}
    pairs = [(fused[r], torch[r]) for r in sorted(fused) if r in torch]
    if pairs:
        print(f"\nfused / torch, median of {len(pairs)} paired rounds (each round's ratios in brackets):")
        for k in KEYS:
            rs = [f[k] / t[k] for f, t in pairs if f.get(k) and t.get(k)]
            if rs:
                print(f"- {k}: **{statistics.median(rs):.2f}** [" + ", ".join(f"{r:.2f}" for r in rs) + "]")
