"""PyTorch reference timings for `hessian-lab bench` (same models, batch, dtype and threads).

Run in its own venv with torch from PyPI:
    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy safetensors
    /tmp/torchenv/bin/python benches/pytorch_reference.py --model m1 --batch-size 128 --threads 1
Prints one JSON object with forward_ms, grad_ms, hvp_ms, hvp_reuse_graph_ms, hvp_grad_ratio,
hvp_reuse_grad_ratio, ggn_ms, ggn_grad_ratio, ggn_reuse_graph_ms, ggn_reuse_grad_ratio, power20_ms,
power20_hvp_grad_ratio, peak_rss_mb and hvp_peak_rss_above_baseline_mb (medians;
model in eval mode, mean cross-entropy, the same data as hessian-lab's bench: the first MNIST test images for m1, the
shipped CIFAR-10 sample for c1/c2/c3, uniform random images for resnet18); --dtype f32|f64.
"""
import argparse
import gzip
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
from export_pytorch import C1, C2, CIFAR100, M1, Normalize, ResNet18  # noqa: E402  (the fixtures' architectures)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return float(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def data(model, n):
    if model == "resnet18":
        # no CIFAR-100 training set ships; hessian-lab's bench uses random data of that shape too
        g = torch.Generator().manual_seed(0)
        return torch.rand((n, 3, 32, 32), generator=g), torch.zeros(n, dtype=torch.long)
    if model == "m1":
        with gzip.open(os.path.join(ROOT, "data/mnist/t10k-images-idx3-ubyte.gz")) as f:
            raw = f.read()
        x = torch.frombuffer(bytearray(raw[16 : 16 + n * 784]), dtype=torch.uint8).float().div(255).view(n, 1, 28, 28)
        with gzip.open(os.path.join(ROOT, "data/mnist/t10k-labels-idx1-ubyte.gz")) as f:
            y = torch.tensor(list(f.read()[8 : 8 + n]), dtype=torch.long)
    else:
        raw = open(os.path.join(ROOT, "data/cifar10-sample/dogs5_cats3.bin"), "rb").read()
        rec = 3073
        y = torch.tensor([raw[i * rec] for i in range(n)], dtype=torch.long)
        x = torch.stack([torch.frombuffer(bytearray(raw[i * rec + 1 : (i + 1) * rec]), dtype=torch.uint8) for i in range(n)])
        x = x.float().div(255).view(n, 3, 32, 32)
    return x, y


MODELS = {
    "m1": M1,
    "c1": C1,
    "c2": lambda: C2(True),
    "c3": lambda: C2(False),
    "resnet18": lambda: torch.nn.Sequential(Normalize(*CIFAR100), ResNet18(100)),
}

SYNC = lambda: None  # noqa: E731  (replaced by torch.cuda.synchronize on a GPU)


# Untimed calls before each measurement, as in `hessian-lab bench`: at least WARMUP calls and
# at least WARMUP_S seconds of them (criterion-style), so fast calls reach their steady state.
WARMUP = 3
WARMUP_S = 1.0


def timeit(f, repeats):
    start, calls = time.perf_counter(), 0
    while calls < WARMUP or time.perf_counter() - start < WARMUP_S:
        f()
        SYNC()
        calls += 1
    t = []
    for _ in range(repeats):
        s = time.perf_counter()
        f()
        SYNC()
        t.append((time.perf_counter() - s) * 1e3)
    return statistics.median(t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="m1", choices=list(MODELS))
    ap.add_argument("--dtype", default="f32", choices=["f32", "f64"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tf32", action="store_true", help="allow TF32 on the GPU (off by default)")
    a = ap.parse_args()
    global SYNC
    torch.set_num_threads(a.threads)
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
        SYNC = torch.cuda.synchronize
    torch.manual_seed(0)
    dtype = torch.float64 if a.dtype == "f64" else torch.float32
    model = MODELS[a.model]().eval().to(a.device, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = data(a.model, a.batch_size)
    x, y = x.to(a.device, dtype), y.to(a.device)
    v = [torch.randn_like(p) for p in params]
    base = rss("VmRSS")

    def fwd():
        with torch.no_grad():
            model(x)

    def grad():
        loss = F.cross_entropy(model(x), y)
        torch.autograd.grad(loss, params)

    def hvp():
        loss = F.cross_entropy(model(x), y)
        g = torch.autograd.grad(loss, params, create_graph=True)
        torch.autograd.grad(g, params, grad_outputs=v)

    forward_ms = timeit(fwd, a.repeats)
    grad_ms = timeit(grad, a.repeats)
    reset_peak()
    before = rss("VmRSS")
    hvp_ms = timeit(hvp, a.repeats)
    hvp_peak = rss("VmHWM") - before
    loss = F.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, params, create_graph=True)
    reuse_ms = timeit(lambda: torch.autograd.grad(g, params, grad_outputs=v, retain_graph=True), a.repeats)

    def ggn():
        # G v = Jᵀ (diag p − ppᵀ)/N J v, Jv by the double-backward trick as hessian-lab does:
        # 1 forward + 3 backward passes
        z = model(x)
        u = torch.zeros_like(z, requires_grad=True)
        jtu = torch.autograd.grad((z * u).sum(), params, create_graph=True)
        jv = torch.autograd.grad(jtu, u, grad_outputs=v)[0]
        p = torch.softmax(z.detach(), 1)
        pjv = p * jv
        r = (pjv - p * pjv.sum(1, keepdim=True)) / z.shape[0]
        torch.autograd.grad(z, params, grad_outputs=r)

    ggn_ms = timeit(ggn, a.repeats)
    # Jᵀu's graph does not depend on v: built once, 2 backward passes per v
    z = model(x)
    u = torch.zeros_like(z, requires_grad=True)
    jtu = torch.autograd.grad((z * u).sum(), params, create_graph=True)
    p = torch.softmax(z.detach(), 1)

    def ggn_reuse():
        jv = torch.autograd.grad(jtu, u, grad_outputs=v, retain_graph=True)[0]
        pjv = p * jv
        r = (pjv - p * pjv.sum(1, keepdim=True)) / z.shape[0]
        torch.autograd.grad(z, params, grad_outputs=r, retain_graph=True)

    ggn_reuse_ms = timeit(ggn_reuse, a.repeats)
    del z, u, jtu, p

    def power20():
        loss = F.cross_entropy(model(x), y)
        gg = torch.autograd.grad(loss, params, create_graph=True)
        w = [torch.randn_like(p) for p in params]
        for _ in range(21):
            n = torch.sqrt(sum((t * t).sum() for t in w))
            w = [t / n for t in w]
            hw = torch.autograd.grad(gg, params, grad_outputs=w, retain_graph=True)
            w = [t.detach() for t in hw]

    SYNC()
    t = time.perf_counter()
    power20()
    SYNC()
    power_ms = (time.perf_counter() - t) * 1e3
    print(json.dumps({
        "framework": f"torch {torch.__version__}", "device": a.device, "model": a.model, "batch_size": a.batch_size, "threads": a.threads,
        "forward_ms": forward_ms, "grad_ms": grad_ms, "hvp_ms": hvp_ms, "hvp_reuse_graph_ms": reuse_ms,
        "hvp_grad_ratio": hvp_ms / grad_ms,
        "hvp_reuse_grad_ratio": reuse_ms / grad_ms, "ggn_ms": ggn_ms, "ggn_grad_ratio": ggn_ms / grad_ms,
        "ggn_reuse_graph_ms": ggn_reuse_ms, "ggn_reuse_grad_ratio": ggn_reuse_ms / grad_ms,
        "dtype": a.dtype, "power20_ms": power_ms, "power20_hvps": 21,
        "power20_hvp_grad_ratio": power_ms / 21 / grad_ms, "peak_rss_mb": rss("VmHWM"),
        "baseline_rss_mb": base, "hvp_peak_rss_above_baseline_mb": hvp_peak,
    }))


if __name__ == "__main__":
    main()
