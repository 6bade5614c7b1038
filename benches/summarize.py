"""Summarises benches/compare.sh output: per model, threads and implementation the median over
rounds of each metric, and the median over rounds of the paired ratio fused / torch (both runs
of a round are back to back, so the ratio cancels most of a shared machine's drift).
Usage: python3 benches/summarize.py runs.jsonl [more.jsonl …]
       python3 benches/summarize.py --table runs.jsonl [more.jsonl …]
--table prints instead one row per model, batch, dtype and threads (the layout of BENCHMARKS.md's
per-CPU tables), headed by the CPU and SIMD level `bench` reported: what benches/cpu_table.sh
collects on a machine."""
import json
import statistics
import sys
from collections import defaultdict

KEYS = ["forward_ms", "grad_ms", "hvp_ms", "hvp_reuse_graph_ms", "hvp_grad_ratio", "hvp_reuse_grad_ratio",
        "ggn_ms", "ggn_grad_ratio", "ggn_reuse_graph_ms", "ggn_reuse_grad_ratio", "power20_ms", "power20_hvp_grad_ratio",
        "peak_rss_mb", "hvp_peak_rss_above_baseline_mb"]


def impl(d):
    return d.get("kernels") or d.get("framework", "torch").split("+")[0]


args = sys.argv[1:]
table = "--table" in args
args = [a for a in args if a != "--table"]
runs = defaultdict(list)
for fi, path in enumerate(args):
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            d = json.loads(line)
            d["_pair"] = (fi, d.get("round"))  # rounds are numbered per file
            runs[(d["model"], d.get("batch_size", 128), d.get("dtype", "f32"), d["threads"])].append(d)


def paired(ds):
    """(fused, torch) runs of the same file and round."""
    fused = {d["_pair"]: d for d in ds if impl(d) == "fused"}
    torch = {d["_pair"]: d for d in ds if impl(d).startswith("torch")}
    return [(fused[r], torch[r]) for r in sorted(fused) if r in torch]


def ratio(pairs, k):
    rs = [f[k] / t[k] for f, t in pairs if f.get(k) and t.get(k)]
    return statistics.median(rs) if rs else None


def med(xs, k):
    vs = [x[k] for x in xs if x.get(k) is not None]
    return statistics.median(vs) if vs else None


def print_table():
    """One row per configuration: paired ratios fused / torch, then our medians."""
    cpus = sorted({(d.get("cpu", "?"), d.get("simd", "?")) for ds in runs.values() for d in ds if impl(d) == "fused"})
    torches = sorted({d["framework"] for ds in runs.values() for d in ds if impl(d).startswith("torch")})
    print("CPU (as `bench` reports it): " + "; ".join(f"{c}, SIMD {s}" for c, s in cpus))
    print("Against: " + (", ".join(torches) or "–") + ". Ratios: ours / PyTorch's, medians of paired rounds.\n")
    cols = [("forward", "forward_ms"), ("gradient", "grad_ms"), ("HVP", "hvp_ms"),
            ("HVP, graph reused", "hvp_reuse_graph_ms"), ("GGN-vector", "ggn_ms"),
            ("GGN, graph reused", "ggn_reuse_graph_ms"), ("20-step power", "power20_ms"),
            ("peak RSS", "peak_rss_mb"), ("HVP memory", "hvp_peak_rss_above_baseline_mb")]
    print("| model (batch) | dtype | threads | rounds | " + " | ".join(c for c, _ in cols)
          + " | ours ms: gradient / HVP | HVP / gradient, fresh / reused: ours (PyTorch) | GGN / gradient, fresh / reused: ours (PyTorch) |")
    print("|---" * (len(cols) + 7) + "|")
    order = {m: i for i, m in enumerate(["m1", "c1", "c2", "c3", "resnet18"])}
    key = lambda kv: (kv[0][2], -kv[0][3], order.get(kv[0][0], 9), kv[0][1])  # noqa: E731
    for (model, batch, dtype, threads), ds in sorted(runs.items(), key=key):
        pairs = paired(ds)
        fused = [d for d in ds if impl(d) == "fused"]
        torch = [d for d in ds if impl(d).startswith("torch")]
        if not fused:
            continue
        f2 = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        f1 = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
        cells = [f2(ratio(pairs, k)) for _, k in cols]
        per = lambda xs, a, b: f"{f2(med(xs, a))} / {f2(med(xs, b))}"  # noqa: E731
        name = {"resnet18": "ResNet18"}.get(model, model.upper())
        print(f"| {name} ({batch}) | {dtype} | {threads} | {len(pairs)} | " + " | ".join(cells)
              + f" | {f1(med(fused, 'grad_ms'))} / {f1(med(fused, 'hvp_ms'))}"
              + f" | {per(fused, 'hvp_grad_ratio', 'hvp_reuse_grad_ratio')} ({per(torch, 'hvp_grad_ratio', 'hvp_reuse_grad_ratio')})"
              + f" | {per(fused, 'ggn_grad_ratio', 'ggn_reuse_grad_ratio')} ({per(torch, 'ggn_grad_ratio', 'ggn_reuse_grad_ratio')}) |")


if table:
    print_table()
    sys.exit(0)

for (model, batch, dtype, threads), ds in sorted(runs.items()):
    print(f"\n## {model}, batch {batch}, {dtype}, {threads} thread(s)")
    print("| implementation | rounds | " + " | ".join(KEYS) + " |")
    print("|---" * (len(KEYS) + 2) + "|")
    by = defaultdict(list)
    for d in ds:
        by[impl(d)].append(d)
    for name, xs in by.items():
        medians = [med(xs, k) for k in KEYS]  # None: key added later
        cell = lambda v: "–" if v is None else f"{v:.1f}" if v >= 10 else f"{v:.2f}"  # noqa: E731
        print(f"| {name} | {len(xs)} | " + " | ".join(cell(v) for v in medians) + " |")
    pairs = paired(ds)
    if pairs:
        print(f"\nfused / torch, median of {len(pairs)} paired rounds (each round's ratios in brackets):")
        for k in KEYS:
            rs = [f[k] / t[k] for f, t in pairs if f.get(k) and t.get(k)]
            if rs:
                print(f"- {k}: **{statistics.median(rs):.2f}** [" + ", ".join(f"{r:.2f}" for r in rs) + "]")
