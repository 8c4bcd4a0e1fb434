#!/usr/bin/env python3
"""Training throughput of the Flamary 3-CNN or the Astro U-net: astrocnn's trainer against PyTorch
CPU, side by side in one run, same network, batch size, optimizer and thread count.

    python3 Benchmarks/train_peers.py [--threads 2] [--samples 20000] [--astrocnn .build/release/astrocnn]
    python3 Benchmarks/train_peers.py --model unet [--widths 16,32,64,128,256] [--crop 128] [--batch 4] [--samples 400]

U-net: both sides draw random crops of one 1024x1024 image, simulate the short exposure with
Poisson noise per crop, run forward, backward (L1 loss) and an Adam step; the network is the
Astro U-net (two 3x3 'same' convolutions + LeakyReLU 0.02 per level, 2x2 max-pool, 2x2 transposed
convolutions, skip concatenations, the exposure ratio as a constant channel at the bottom, a 1x1
head). astrocnn reports crops/s over its epoch (`astrocnn train --recipe astro-unet`).

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


UNET_LOOP = r'''
import sys, time, numpy as np, torch
import torch.nn as nn
threads, samples, channels_last = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
widths = [int(w) for w in sys.argv[4].split(",")]; crop = int(sys.argv[5]); batch = int(sys.argv[6])
torch.set_num_threads(threads)
torch.manual_seed(1)
rng = np.random.default_rng(1)
image = (rng.random((1024, 1024)) * 50 + 100).astype(np.float32)
def block(i, o):
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.LeakyReLU(0.02), nn.Conv2d(o, o, 3, padding=1), nn.LeakyReLU(0.02))
class UNet(nn.Module):
    def __init__(s):
        super().__init__()
        s.down = nn.ModuleList(); c = 1
        for w in widths[:-1]:
            s.down.append(block(c, w)); c = w
        s.bottom = block(c + 1, widths[-1])
        s.ups = nn.ModuleList(); s.blocks = nn.ModuleList(); c = widths[-1]
        for w in reversed(widths[:-1]):
            s.ups.append(nn.ConvTranspose2d(c, w, 2, stride=2)); s.blocks.append(block(2 * w, w)); c = w
        s.head = nn.Conv2d(c, 1, 1)
    def forward(s, x, ratio):
        skips = []
        for d in s.down:
            x = d(x); skips.append(x); x = nn.functional.max_pool2d(x, 2)
        x = torch.cat([x, ratio.expand(x.shape[0], 1, x.shape[2], x.shape[3])], 1)
        x = s.bottom(x)
        for u, b, k in zip(s.ups, s.blocks, reversed(skips)):
            x = b(torch.cat([k, u(x)], 1))
        return s.head(x)
net = UNet()
if channels_last:
    net = net.to(memory_format=torch.channels_last)
opt = torch.optim.Adam(net.parameters(), lr=1e-4)
def step():
    ys = rng.integers(0, 1024 - crop, batch); xs = rng.integers(0, 1024 - crop, batch)
    t = np.stack([image[y:y + crop, q:q + crop] for y, q in zip(ys, xs)])[:, None]
    x = (rng.poisson(t / 2) * 2).astype(np.float32)
    xt = torch.from_numpy(x); tt = torch.from_numpy(t)
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last)
    opt.zero_grad(); l = (net(xt, torch.full((1, 1, 1, 1), 2.0)) - tt).abs().mean(); l.backward(); opt.step()
for _ in range(3): step()
n = max(1, samples // batch)
s = time.perf_counter()
for _ in range(n): step()
print(n * batch / (time.perf_counter() - s))
'''


def write_fits(path, a):
    """A minimal FITS writer (float32 image), so the benchmark needs no astropy."""
    import numpy as np
    cards = ["SIMPLE  =                    T", "BITPIX  =                  -32", "NAXIS   =                    2",
             f"NAXIS1  = {a.shape[1]:20d}", f"NAXIS2  = {a.shape[0]:20d}", "GAIN    =                  1.0", "END"]
    head = "".join(c.ljust(80) for c in cards).encode()
    head += b" " * (-len(head) % 2880)
    data = a.astype(">f4").tobytes()
    with open(path, "wb") as f:
        f.write(head + data + b"\0" * (-len(data) % 2880))


def unet(a):
    import numpy as np
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as d:
        for name in ["train.fits", "val.fits"]:
            img = rng.random((1024, 1024)) * 50 + 100
            for _ in range(400):
                y, x = rng.integers(8, 1016, 2); img[y - 2:y + 3, x - 2:x + 3] += rng.random() * 5000
            write_fits(os.path.join(d, name), img)
        batches = max(1, a.samples // a.batch)
        r = subprocess.run([a.astrocnn, "train", "--recipe", "astro-unet", "--images", os.path.join(d, "train.fits"), os.path.join(d, "val.fits"),
                            "--validate", "val.fits", "--widths", a.widths, "--crop", str(a.crop), "--batch", str(a.batch),
                            "--samples", str(batches * a.batch), "--validation-samples", str(a.batch), "--epochs", "1", "--ratios", "2",
                            "--threads", str(a.threads), "-o", os.path.join(d, "u.acnn")], capture_output=True, text=True, check=True)
        rates = re.findall(r"batch (\d+)/(\d+)\s+([0-9.]+) crops/s", r.stderr)
        ours = float([x for x in rates if x[0] == x[1]][-1][2])
    print(f"Astro U-net training, widths {a.widths}, {a.crop}x{a.crop} crops, batch {a.batch}, Adam, L1, {a.threads} threads")
    print(f"  astrocnn train --recipe astro-unet   {ours:8.2f} crops/s")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(UNET_LOOP)
        script = f.name
    keep = dict(os.environ, MALLOC_MMAP_THRESHOLD_="10000000000", MALLOC_TRIM_THRESHOLD_="10000000000")
    best = 0
    for name, env, cl in [("PyTorch default", dict(os.environ), "0"), ("PyTorch malloc kept", keep, "0"),
                          ("PyTorch malloc kept + channels_last", keep, "1")]:
        rate = float(subprocess.run([sys.executable, script, str(a.threads), str(a.samples), cl, a.widths, str(a.crop), str(a.batch)],
                                    env=env, capture_output=True, text=True, check=True).stdout.strip())
        best = max(best, rate)
        print(f"  {name:<36} {rate:8.2f} crops/s   astrocnn / this = {ours / rate:.2f}")
    print(f"  astrocnn / best PyTorch = {ours / best:.2f}")
    os.unlink(script)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["flamary3", "unet"], default="flamary3")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--widths", default="16,32,64,128,256")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--astrocnn", default=os.path.join(ROOT, ".build/release/astrocnn"))
    a = ap.parse_args()
    if a.model == "unet":
        a.samples = a.samples or 400
        return unet(a)
    a.samples = a.samples or 20000
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
