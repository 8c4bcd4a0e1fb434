#!/usr/bin/env python3
"""Whole-process `astrocnn restore` beside the in-process time, side by side in one run.

    python3 Benchmarks/restore_process.py [--astrocnn .build/release/astrocnn]
        [--model flamary3=models/flamary3.acnn --model unet=U.acnn] [--sizes 1024,2048]
        [--threads 2] [--repeats 5] [--csv out.csv] [--keep DIR]

For each model and image side:

- in process: `astrocnn bench --skip-layers` (the network over an image held in memory, plan
  and memory reused between repeats, as for a stream of same-size frames; no file I/O): median
  wall seconds and the median process CPU seconds and minor page faults of one run (binaries
  whose bench reports wall time only: CPU and faults of one run by difference of two bench
  processes, repeats + 6 and repeats runs, which is noisier);
- whole process: `astrocnn restore IN.fits -m MODEL -o OUT.fits` run `repeats` times, each a fresh
  process (argument parsing, model load and checksums, weight packing and Winograd transforms,
  planning, first touch of every feature map, FITS read, statistics pass, input checksum, FITS
  write, fsync): median wall seconds, and user + system CPU seconds and minor faults of the child
  from wait4(2), which do not depend on what else the machine runs.

The ratios whole / in process are printed for wall and CPU time. Inputs are FITS files written
here (a sky with noise and stars, float32); without --model the script uses models/flamary3.acnn
and a U-net of the paper's widths (32-64-128-256-512) made with `astrocnn init --arch unet`.
Nothing is timed inside the test suite: this is a benchmark.
"""
import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def write_fits(path, image):
    """A minimal primary-HDU FITS file: BITPIX -32, big-endian float32 data."""
    h, w = image.shape
    cards = ["SIMPLE  =                    T", "BITPIX  =                  -32", "NAXIS   =                    2",
             f"NAXIS1  = {w:20d}", f"NAXIS2  = {h:20d}", "END"]
    header = "".join(c.ljust(80) for c in cards)
    header += " " * (-len(header) % 2880)
    data = image.astype(">f4").tobytes()
    data += b"\0" * (-len(data) % 2880)
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(data)


def sky(side, seed):
    rng = np.random.default_rng(seed)
    img = 100.0 + rng.normal(0.0, 5.0, (side, side))
    yy, xx = np.mgrid[0:side, 0:side]
    for _ in range(side // 8):
        y, x = rng.uniform(0, side, 2)
        flux = rng.pareto(1.5) * 200 + 50
        s = rng.uniform(1.0, 2.5)
        y0, y1 = int(max(0, y - 5 * s)), int(min(side, y + 5 * s + 1))
        x0, x1 = int(max(0, x - 5 * s)), int(min(side, x + 5 * s + 1))
        img[y0:y1, x0:x1] += flux * np.exp(-((yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2) / (2 * s * s))
    return img.astype(np.float32)


def run_child(cmd):
    """Wall seconds, CPU seconds (user + system) and minor faults of one child process."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_minflt


def in_process(astrocnn, model, side, threads, repeats, tmp):
    out = os.path.join(tmp, "bench.csv")

    def bench(r):
        cmd = [astrocnn, "bench", "-m", model, "--sizes", str(side), "--threads", str(threads), "--skip-layers",
               "--repeats", str(r), "--csv", out]
        _, cpu, faults = run_child(cmd)
        with open(out) as f:
            return next(csv.DictReader(f)), cpu, faults

    row, cpu_r, faults_r = bench(repeats)
    if "cpu_seconds" in row:
        return float(row["seconds"]), float(row["cpu_seconds"]), int(row["minor_faults"])
    # Older binaries report wall time only: one warm run's CPU time and faults by difference of
    # two bench processes (repeats + 6 and repeats runs; noisier than the binary's own figure).
    _, cpu_r2, faults_r2 = bench(repeats + 6)
    return float(row["seconds"]), max(0.0, (cpu_r2 - cpu_r) / 6), max(0, (faults_r2 - faults_r) // 6)


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--astrocnn", default=os.path.join(ROOT, ".build/release/astrocnn"))
    ap.add_argument("--model", action="append", default=[], help="NAME=PATH (repeatable)")
    ap.add_argument("--sizes", default="1024,2048")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--csv")
    ap.add_argument("--keep", help="directory for the inputs, outputs and models (default: a temporary one)")
    ap.add_argument("--restore-args", default="", help="extra arguments for restore, e.g. '--in-memory'")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = args.keep or tempfile.mkdtemp(prefix="restore_process_")
    os.makedirs(tmp, exist_ok=True)
    models = []
    for m in args.model:
        name, _, path = m.partition("=")
        models.append((name, path))
    if not models:
        unet = os.path.join(tmp, "unet-32-512.acnn")
        if not os.path.exists(unet):
            subprocess.run([args.astrocnn, "init", "--arch", "unet", "-o", unet], check=True, stdout=subprocess.DEVNULL)
        models = [("3-CNN", os.path.join(ROOT, "models/flamary3.acnn")), ("U-net 32-512", unet)]

    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at start")
    print(f"astrocnn: {args.astrocnn}; {args.threads} threads; median of {args.repeats}")
    header = ["model", "side", "in_wall_s", "in_cpu_s", "in_minor_faults", "proc_wall_s", "proc_cpu_s", "proc_minor_faults",
              "wall_ratio", "cpu_ratio"]
    rows = []
    print(f"{'model':14} {'side':>5} | {'in-process':>10} {'CPU':>7} {'faults':>7} | {'whole proc':>10} {'CPU':>7} {'faults':>8} | "
          f"{'wall x':>6} {'CPU x':>6}")
    for side in sizes:
        inp = os.path.join(tmp, f"sky{side}.fits")
        if not os.path.exists(inp):
            write_fits(inp, sky(side, seed=side))
        for name, model in models:
            iw, ic, ifl = in_process(args.astrocnn, model, side, args.threads, args.repeats, tmp)
            out = os.path.join(tmp, f"out{side}.fits")
            cmd = [args.astrocnn, "restore", inp, "-m", model, "-o", out, "--overwrite", "--quiet",
                   "--threads", str(args.threads)] + args.restore_args.split()
            runs = [run_child(cmd) for _ in range(args.repeats)]
            pw = statistics.median(r[0] for r in runs)
            pc = statistics.median(r[1] for r in runs)
            pf = int(statistics.median(r[2] for r in runs))
            wr = pw / iw
            cr = pc / ic if ic else None
            rows.append([name, side, iw, ic, ifl, pw, pc, pf, wr, cr])
            fmt = lambda v, f: (f % v) if v is not None else "-"  # noqa: E731
            print(f"{name:14} {side:5d} | {iw:10.3f} {fmt(ic, '%7.3f')} {fmt(ifl, '%7d')} | {pw:10.3f} {pc:7.3f} {pf:8d} | "
                  f"{wr:6.2f} {fmt(cr, '%6.2f')}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
