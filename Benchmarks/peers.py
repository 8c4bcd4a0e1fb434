#!/usr/bin/env python3
"""Side-by-side benchmark of astrocnn against CPU inference engines on the SAME weights.

    python3 Benchmarks/peers.py --model MODEL.acnn [--sizes 256,512,1024] [--threads 2]
        [--astrocnn .build/release/astrocnn] [--repeats 5] [--csv out.csv]

The `.acnn` file is read with tools/acnn_format.py and rebuilt as an ONNX graph (Conv, Relu,
LeakyRelu, MaxPool, ConvTranspose, Concat; the constant channel as 0*x+value), which ONNX Runtime
and OpenVINO load; ncnn gets its own param/bin files written here. Every engine runs FP32 in its
best configuration for this CPU (stated in the output): ONNX Runtime with all graph optimisations
and `intra_op_num_threads`; OpenVINO with `INFERENCE_PRECISION_HINT=f32` (it defaults to bf16 on
CPUs that have it) and the LATENCY hint; ncnn with packing and Winograd enabled.

Work is the same for all: the network on the input astrocnn itself feeds it (for 'valid'
networks the image plus the receptive-field halo, so every engine produces side x side outputs).
astrocnn is timed by its own `bench` command (median of repeats, plan reused, as for a stream
of same-size frames); peers by the median of `repeats` runs after one warm-up.
Before timing, each engine's output is checked against `astrocnn restore` on a small image.

PyTorch runs eager under no_grad in NCHW and channels_last (both reported). The script re-runs
itself with glibc malloc told to keep freed memory (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_),
PyTorch's best configuration on large images, unless --default-malloc is given.

Install the peers with: pip install onnx onnxruntime openvino ncnn torch
"""
import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
from acnn_format import read_acnn  # noqa: E402


# ---------------------------------------------------------------- geometry (as the runtime)
def geometry(metadata):
    rf = metadata["receptive_field"]
    off = metadata["output_offset"]
    return rf, off, int(metadata["size_multiple"])


def shrink(graph, tensors):
    """Rows lost by 'valid' convolutions (0 for 'same' networks): sum of k-1 along the chain."""
    total = 0
    for n in graph["nodes"]:
        if n["op"] == "conv2d" and n["attrs"].get("padding", "valid") == "valid":
            total += tensors[n["params"][0]].shape[2] - 1
    return total


# ---------------------------------------------------------------- ONNX
def to_onnx(graph, tensors, params=None):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    inp = graph["inputs"][0]
    for n in graph["nodes"]:
        op, x, y, a = n["op"], n["inputs"], n["output"], n["attrs"]
        if op == "conv2d":
            w = tensors[n["params"][0]]
            kh, kw = w.shape[2], w.shape[3]
            pads = [(kh - 1) // 2, (kw - 1) // 2, kh - 1 - (kh - 1) // 2, kw - 1 - (kw - 1) // 2] if a.get("padding") == "same" else [0, 0, 0, 0]
            names = [x[0]] + list(n["params"])
            for p in n["params"]:
                inits.append(numpy_helper.from_array(tensors[p], p))
            nodes.append(helper.make_node("Conv", names, [y], kernel_shape=[kh, kw], pads=pads, strides=[1, 1]))
        elif op == "relu":
            nodes.append(helper.make_node("Relu", x, [y]))
        elif op == "leaky_relu":
            nodes.append(helper.make_node("LeakyRelu", x, [y], alpha=float(a["alpha"])))
        elif op == "maxpool2d":
            nodes.append(helper.make_node("MaxPool", x, [y], kernel_shape=[2, 2], strides=[2, 2]))
        elif op == "conv_transpose2d":
            w = tensors[n["params"][0]]  # [O, C, 2, 2] -> ONNX [C, O, 2, 2]
            wn = n["params"][0] + ".onnx"
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.transpose(1, 0, 2, 3)), wn))
            names = [x[0], wn]
            if len(n["params"]) > 1:
                inits.append(numpy_helper.from_array(tensors[n["params"][1]], n["params"][1]))
                names.append(n["params"][1])
            nodes.append(helper.make_node("ConvTranspose", names, [y], kernel_shape=[2, 2], strides=[2, 2]))
        elif op == "concat":
            nodes.append(helper.make_node("Concat", x, [y], axis=1))
        elif op == "constant_channel":
            value = float((params or {}).get(a.get("parameter"), a["value"]))
            sl = y + ".slice"
            for nm, v in ((y + ".s0", [0]), (y + ".s1", [1]), (y + ".ax", [1])):
                inits.append(numpy_helper.from_array(np.array(v, dtype=np.int64), nm))
            inits.append(numpy_helper.from_array(np.array(0, dtype=np.float32), y + ".zero"))
            inits.append(numpy_helper.from_array(np.array(value, dtype=np.float32), y + ".value"))
            nodes.append(helper.make_node("Slice", [x[0], y + ".s0", y + ".s1", y + ".ax"], [sl]))
            nodes.append(helper.make_node("Mul", [sl, y + ".zero"], [y + ".z"]))
            nodes.append(helper.make_node("Add", [y + ".z", y + ".value"], [y]))
        else:
            raise ValueError(f"op {op} has no ONNX mapping here")
    g = helper.make_graph(nodes, "acnn", [helper.make_tensor_value_info(inp[0], TensorProto.FLOAT, [1, inp[1], "H", "W"])],
                          [helper.make_tensor_value_info(graph["outputs"][0], TensorProto.FLOAT, [1, "C", "OH", "OW"])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


class OnnxRuntimeEngine:
    name = "onnxruntime"

    def __init__(self, onnx_path, threads):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        self.input = self.sess.get_inputs()[0].name
        self.config = f"onnxruntime {ort.__version__}, CPU EP, ORT_ENABLE_ALL, {threads} intra-op threads"

    def run(self, x):
        return self.sess.run(None, {self.input: x})[0]


class OpenVINOEngine:
    name = "openvino"

    def __init__(self, onnx_path, threads):
        import openvino as ov
        self.core = ov.Core()
        self.model = self.core.read_model(onnx_path)
        self.threads = threads
        self.compiled = {}
        self.config = (f"openvino {ov.__version__}, CPU, INFERENCE_PRECISION_HINT=f32, PERFORMANCE_HINT=LATENCY, "
                       f"{threads} inference threads")

    def run(self, x):
        key = x.shape
        if key not in self.compiled:
            m = self.model.clone()
            m.reshape({m.inputs[0].get_any_name(): list(x.shape)})
            self.compiled[key] = self.core.compile_model(m, "CPU", {
                "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": str(self.threads)}).create_infer_request()
        r = self.compiled[key]
        r.infer({0: x})
        return r.get_output_tensor(0).data.copy()


class TorchEngine:
    """PyTorch eager on the CPU, the graph rebuilt from the .acnn nodes, under torch.no_grad with
    `threads` intra-op threads; NCHW or channels_last (both are tried; the faster is reported)."""
    name = "pytorch"

    def __init__(self, graph, tensors, threads, channels_last=False):
        import torch
        import torch.nn.functional as F
        torch.set_num_threads(threads)
        self.torch, self.F, self.graph, self.cl = torch, F, graph, channels_last
        self.t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
        if channels_last:
            self.t = {k: (v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v) for k, v in self.t.items()}
        malloc = "glibc malloc keeps freed memory" if os.environ.get("MALLOC_MMAP_THRESHOLD_") else "default malloc"
        self.config = (f"torch {torch.__version__}, eager, no_grad, {threads} threads, "
                       f"{'channels_last' if channels_last else 'NCHW'}, {malloc}")
        if channels_last:
            self.name = "pytorch-cl"

    def run(self, x):
        torch, F = self.torch, self.F
        with torch.no_grad():
            v = {self.graph["inputs"][0][0]: torch.from_numpy(x)}
            if self.cl:
                v = {k: a.contiguous(memory_format=torch.channels_last) for k, a in v.items()}
            for n in self.graph["nodes"]:
                op, xs, a = n["op"], [v[i] for i in n["inputs"]], n["attrs"]
                if op == "conv2d":
                    w = self.t[n["params"][0]]
                    b = self.t[n["params"][1]] if len(n["params"]) > 1 else None
                    y = F.conv2d(xs[0], w, b, padding="same" if a.get("padding") == "same" else 0)
                elif op == "relu":
                    y = F.relu(xs[0])
                elif op == "leaky_relu":
                    y = F.leaky_relu(xs[0], float(a["alpha"]))
                elif op == "maxpool2d":
                    y = F.max_pool2d(xs[0], 2)
                elif op == "conv_transpose2d":
                    w = self.t[n["params"][0]].permute(1, 0, 2, 3).contiguous()  # [O,C,2,2] -> [C,O,2,2]
                    b = self.t[n["params"][1]] if len(n["params"]) > 1 else None
                    y = F.conv_transpose2d(xs[0], w, b, stride=2)
                elif op == "concat":
                    y = torch.cat(xs, 1)
                elif op == "constant_channel":
                    y = torch.full_like(xs[0][:, :1], float(a["value"]))
                else:
                    raise ValueError(op)
                v[n["output"]] = y
            return v[self.graph["outputs"][0]].contiguous().numpy()


class NcnnEngine:
    """ncnn from param/bin files written here (Convolution with fused activation, Pooling,
    Deconvolution, Concat, and the constant channel as a MemoryData blob per input size)."""
    name = "ncnn"

    def __init__(self, graph, tensors, threads, workdir, params=None):
        import ncnn
        self.ncnn, self.graph, self.tensors, self.threads, self.workdir, self.params = ncnn, graph, tensors, threads, workdir, params or {}
        self.nets = {}
        self.config = f"ncnn {ncnn.__version__}, packing layout and Winograd on, {threads} threads"

    def _write(self, h, w):
        g, t = self.graph, self.tensors
        layers, blobs = [], set()
        shapes = {g["inputs"][0][0]: (g["inputs"][0][1], h, w)}
        binary = bytearray()
        fused = {}
        consumers = {}
        for n in g["nodes"]:
            for v in n["inputs"]:
                consumers.setdefault(v, []).append(n)
        for n in g["nodes"]:
            if n["op"] == "conv2d" and len(consumers.get(n["output"], [])) == 1 and consumers[n["output"]][0]["op"] in ("relu", "leaky_relu") \
                    and n["output"] not in g["outputs"]:
                fused[n["name"]] = consumers[n["output"]][0]
        skip = {a["name"] for a in fused.values()}
        inp = g["inputs"][0][0]
        layers.append(f"Input {inp} 0 1 {inp} 0={w} 1={h} 2={g['inputs'][0][1]}")
        for n in g["nodes"]:
            if n["name"] in skip:
                continue
            x, y, a = n["inputs"], n["output"], n["attrs"]
            c, hh, ww = shapes[x[0]]
            if n["op"] == "conv2d":
                wt = t[n["params"][0]]
                o, _, kh, kw = wt.shape
                same = a.get("padding") == "same"
                act = fused.get(n["name"])
                out = act["output"] if act else y
                acts = ""
                if act and act["op"] == "relu":
                    acts = " 9=1"
                elif act:
                    acts = f" 9=2 -23310=1,{act['attrs']['alpha']}"
                pad = f" 4={(kw - 1) // 2} 14={(kh - 1) // 2} 15={kw - 1 - (kw - 1) // 2} 16={kh - 1 - (kh - 1) // 2}" if same else ""
                has_bias = len(n["params"]) > 1
                layers.append(f"Convolution {n['name']} 1 1 {x[0]} {out} 0={o} 1={kw} 11={kh}{pad} 5={1 if has_bias else 0} 6={wt.size}{acts}")
                binary += np.array([0], dtype="<u4").tobytes() + wt.astype("<f4").tobytes()
                if has_bias:
                    binary += t[n["params"][1]].astype("<f4").tobytes()
                shapes[out] = (o, hh if same else hh - kh + 1, ww if same else ww - kw + 1)
            elif n["op"] in ("relu", "leaky_relu"):
                slope = f" 0={a['alpha']}" if n["op"] == "leaky_relu" else ""
                layers.append(f"ReLU {n['name']} 1 1 {x[0]} {y}{slope}")
                shapes[y] = shapes[x[0]]
            elif n["op"] == "maxpool2d":
                layers.append(f"Pooling {n['name']} 1 1 {x[0]} {y} 0=0 1=2 2=2 5=1")
                shapes[y] = (c, hh // 2, ww // 2)
            elif n["op"] == "conv_transpose2d":
                wt = t[n["params"][0]]  # [O, C, 2, 2]: ncnn Deconvolution stores [O][C][kh][kw] as is
                o = wt.shape[0]
                has_bias = len(n["params"]) > 1
                layers.append(f"Deconvolution {n['name']} 1 1 {x[0]} {y} 0={o} 1=2 11=2 3=2 13=2 5={1 if has_bias else 0} 6={wt.size}")
                binary += np.array([0], dtype="<u4").tobytes() + np.ascontiguousarray(wt).astype("<f4").tobytes()
                if has_bias:
                    binary += t[n["params"][1]].astype("<f4").tobytes()
                shapes[y] = (o, hh * 2, ww * 2)
            elif n["op"] == "concat":
                layers.append(f"Concat {n['name']} {len(x)} 1 {' '.join(x)} {y} 0=0")
                shapes[y] = (sum(shapes[v][0] for v in x), hh, ww)
            elif n["op"] == "constant_channel":
                value = float(self.params.get(a.get("parameter"), a["value"]))
                layers.append(f"MemoryData {n['name']} 0 1 {y} 0={ww} 1={hh} 2=1")
                binary += np.full((1, hh, ww), value, dtype="<f4").tobytes()
                shapes[y] = (1, hh, ww)
        # Split layers for blobs consumed more than once (ncnn requires it).
        uses = {}
        for L in layers:
            parts = L.split()
            nin = int(parts[2])
            for b in parts[4:4 + nin]:
                uses[b] = uses.get(b, 0) + 1
        out_layers = []
        counter = {}
        for L in layers:
            parts = L.split()
            nin, nout = int(parts[2]), int(parts[3])
            ins = parts[4:4 + nin]
            for i, b in enumerate(ins):
                if uses.get(b, 0) > 1:
                    k = counter.get(b, 0)
                    counter[b] = k + 1
                    ins[i] = f"{b}_split_{k}"
            out_layers.append(" ".join(parts[:4] + ins + parts[4 + nin:]))
            for b in parts[4 + nin:4 + nin + nout]:
                if uses.get(b, 0) > 1:
                    outs = " ".join(f"{b}_split_{k}" for k in range(uses[b]))
                    out_layers.append(f"Split {b}_split 1 {uses[b]} {b} {outs}")
        all_blobs = set()
        for L in out_layers:
            parts = L.split()
            nin, nout = int(parts[2]), int(parts[3])
            all_blobs.update(parts[4:4 + nin + nout])
        param = f"7767517\n{len(out_layers)} {len(all_blobs)}\n" + "\n".join(out_layers) + "\n"
        pp = os.path.join(self.workdir, f"net_{h}x{w}.param")
        bp = os.path.join(self.workdir, f"net_{h}x{w}.bin")
        open(pp, "w").write(param)
        open(bp, "wb").write(bytes(binary))
        return pp, bp

    def run(self, x):
        ncnn = self.ncnn
        h, w = x.shape[2], x.shape[3]
        if (h, w) not in self.nets:
            pp, bp = self._write(h, w)
            net = ncnn.Net()
            net.opt.num_threads = self.threads
            net.opt.use_packing_layout = True
            net.opt.use_winograd_convolution = True
            net.opt.use_fp16_packed = False
            net.opt.use_fp16_storage = False
            net.opt.use_fp16_arithmetic = False
            net.opt.use_bf16_storage = False
            net.load_param(pp)
            net.load_model(bp)
            self.nets[(h, w)] = net
        ex = self.nets[(h, w)].create_extractor()
        ex.input(self.graph["inputs"][0][0], ncnn.Mat(np.ascontiguousarray(x[0])))
        _, out = ex.extract(self.graph["outputs"][0])
        return np.array(out)[None]


# ---------------------------------------------------------------- astrocnn
def astrocnn_restore(exe, model, image, workdir):
    from astropy.io import fits
    src = os.path.join(workdir, "check_in.fits")
    dst = os.path.join(workdir, "check_out.fits")
    fits.writeto(src, image.astype(np.float32), overwrite=True)
    subprocess.run([exe, "restore", src, "-m", model, "-o", dst, "--overwrite", "--quiet", "--threads", "1"], check=True,
                   stdout=subprocess.DEVNULL)
    return fits.getdata(dst).astype(np.float32)


def astrocnn_bench(exe, model, sizes, threads, repeats, workdir):
    out = os.path.join(workdir, "astrocnn.csv")
    subprocess.run([exe, "bench", "-m", model, "--sizes", ",".join(map(str, sizes)), "--threads", str(threads),
                    "--repeats", str(repeats), "--csv", out, "--skip-layers"], check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return {int(r["side"]): float(r["seconds"]) for r in csv.DictReader(f)}


def median_time(fn, x, repeats):
    fn(x)  # warm-up (compilation, allocation)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--astrocnn", default=os.path.join(ROOT, ".build/release/astrocnn"))
    ap.add_argument("--engines", default="onnxruntime,openvino,ncnn,pytorch")
    ap.add_argument("--csv")
    ap.add_argument("--default-malloc", action="store_true",
                    help="do not re-run with glibc malloc keeping freed memory (PyTorch loses 2-4x to page faults without)")
    args = ap.parse_args()
    if not args.default_malloc and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="10000000000", MALLOC_TRIM_THRESHOLD_="10000000000")
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    sizes = [int(s) for s in args.sizes.split(",")]
    metadata, graph, tensors = read_acnn(args.model)
    rf, off, mult = geometry(metadata)
    sh = shrink(graph, tensors)
    work = tempfile.mkdtemp(prefix="acnn-peers-")
    onnx_path = os.path.join(work, "model.onnx")
    import onnx
    onnx.save(to_onnx(graph, tensors), onnx_path)

    engines = []
    for name in args.engines.split(","):
        try:
            if name == "onnxruntime":
                engines.append(OnnxRuntimeEngine(onnx_path, args.threads))
            elif name == "openvino":
                engines.append(OpenVINOEngine(onnx_path, args.threads))
            elif name == "ncnn":
                engines.append(NcnnEngine(graph, tensors, args.threads, work))
            elif name == "pytorch":
                engines.append(TorchEngine(graph, tensors, args.threads))
                engines.append(TorchEngine(graph, tensors, args.threads, channels_last=True))
        except ImportError as e:
            print(f"skipping {name}: {e}")

    # Correctness: each engine against astrocnn restore on a small image (max exactly 1, so the
    # clip_max normalisation is the identity; reflect padding reproduced here).
    rng = np.random.default_rng(0)
    side = 64 if sh else 128
    img = rng.random((side, side), dtype=np.float32)
    img[0, 0] = 1.0
    ref = astrocnn_restore(args.astrocnn, args.model, img, work)
    x = np.pad(img, sh // 2 if sh else 0, mode="reflect")[None, None] if sh else img[None, None]
    print(f"model {metadata['name']}: receptive field {rf}, size multiple {mult}; input for side S is S+{sh}")
    for e in engines:
        y = e.run(x.astype(np.float32))[0, 0]
        err = float(np.abs(y - ref).max())
        scale = float(np.abs(ref).max())
        print(f"check {e.name:12s} max |engine - astrocnn| = {err:.3g} (output max {scale:.3g})")
        e.error = err / max(scale, 1e-30)

    ours = astrocnn_bench(args.astrocnn, args.model, sizes, args.threads, args.repeats, work)
    rows = []
    print(f"\n{args.threads} threads, median of {args.repeats}; ratio = engine time / astrocnn time (>1: astrocnn faster)")
    print("  side   astrocnn s  " + "  ".join(f"{e.name:>11s} s  ratio" for e in engines))
    for s in sizes:
        x = rng.random((1, 1, s + sh, s + sh), dtype=np.float32)
        line = f"  {s:5d}  {ours[s]:10.4f}  "
        row = {"side": s, "threads": args.threads, "astrocnn": ours[s]}
        for e in engines:
            t = median_time(e.run, x, args.repeats)
            row[e.name] = t
            line += f"  {t:11.4f}  {t / ours[s]:5.2f}"
        print(line)
        rows.append(row)
    print("\nconfigurations:")
    print(f"  astrocnn: {args.astrocnn} bench (kernels chosen by cpuid)")
    for e in engines:
        print(f"  {e.config}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
