#!/usr/bin/env python3
"""Training throughput of the Flamary 3-CNN: astrocnn's trainer against PyTorch CPU, side by
side in one run, same network, batch size, optimizer and thread count.

    python3 Benchmarks/train_peers.py [--threads 2] [--samples 20000] [--astrocnn .build/release/astrocnn]

The whole step counts for both: drawing 32x32 patches (and 14x14 targets) from a degraded
image with fresh noise, forward, backward, SGD with Nesterov momentum. astrocnn runs
`astrocnn train --synthetic 1` (one simulated 1024x1024 sky) and reports samples/s over the
epoch; PyTorch runs the same loop in numpy + torch, in three configurations: default; glibc
malloc told to keep freed memory (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_); and that plus
channels_last. The best PyTorch configuration is the one to beat.

Install the peer with: pip install torch
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

TORCH_LOOP = r'''
import sys, time, numpy as np, torch
threads, samples, channels_last = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
torch.set_num_threads(threads)
torch.manual_seed(1)
rng = np.random.default_rng(1)
truth = rng.random((1024, 1024)).astype(np.float32)
blurred = truth.copy()
net = torch.nn.Sequential(torch.nn.Conv2d(1, 64, 10), torch.nn.ReLU(), torch.nn.Conv2d(64, 16, 6), torch.nn.ReLU(),
                          torch.nn.Conv2d(16, 1, 5), torch.nn.ReLU())
if channels_last:
    net = net.to(memory_format=torch.channels_last)
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
loss_fn = torch.nn.MSELoss()
batch = 50
def step():
    ys = rng.integers(0, 1024 - 32, batch); xs = rng.integers(0, 1024 - 32, batch)
    x = np.stack([blurred[y:y + 32, q:q + 32] for y, q in zip(ys, xs)])[:, None] + 0.01 * rng.standard_normal((batch, 1, 32, 32), dtype=np.float32)
    t = np.stack([truth[y + 9:y + 23, q + 9:q + 23] for y, q in zip(ys, xs)])[:, None]
    xt = torch.from_numpy(x); tt = torch.from_numpy(t)
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last)
    opt.zero_grad(); l = loss_fn(net(xt), tt); l.backward(); opt.step()
for _ in range(20): step()
n = samples // batch
s = time.perf_counter()
for _ in range(n): step()
print(n * batch / (time.perf_counter() - s))
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--astrocnn", default=os.path.join(ROOT, ".build/release/astrocnn"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([a.astrocnn, "train", "--synthetic", "1", "--samples", str(a.samples), "--validation-samples", "500",
                            "--epochs", "1", "--threads", str(a.threads), "-o", os.path.join(d, "m.acnn")],
                           capture_output=True, text=True, check=True)
        rates = re.findall(r"batch (\d+)/(\d+)\s+(\d+) samples/s", r.stderr)
        ours = float([x for x in rates if x[0] == x[1]][-1][2])
    print(f"Flamary 3-CNN training, batch 50, SGD Nesterov, {a.threads} threads, {a.samples} samples")
    print(f"  astrocnn train            {ours:8.0f} samples/s")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("  PyTorch: not installed (pip install torch)")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(TORCH_LOOP)
        script = f.name
    keep = dict(os.environ, MALLOC_MMAP_THRESHOLD_="10000000000", MALLOC_TRIM_THRESHOLD_="10000000000")
    best = 0
    for name, env, cl in [("PyTorch default", dict(os.environ), "0"), ("PyTorch malloc kept", keep, "0"),
                          ("PyTorch malloc kept + channels_last", keep, "1")]:
        rate = float(subprocess.run([sys.executable, script, str(a.threads), str(a.samples), cl], env=env,
                                    capture_output=True, text=True, check=True).stdout.strip())
        best = max(best, rate)
        print(f"  {name:<36} {rate:8.0f} samples/s   astrocnn / this = {ours / rate:.2f}")
    print(f"  astrocnn / best PyTorch = {ours / best:.2f}")
    os.unlink(script)


if __name__ == "__main__":
    main()
