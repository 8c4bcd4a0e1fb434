#!/usr/bin/env python3
"""Self-test of tools/onnx2acnn.py on the committed fixtures (Tests/RuntimeTests/Fixtures/onnx,
written by tools/make_onnx_fixtures.py) and on small graphs built here with onnx.helper.

Each positive fixture is converted and the `.acnn` graph is run by the plain numpy executor below
(float64, an implementation of docs/MODEL_FORMAT.md independent of the Swift runtime); its output
must match the onnxruntime output stored in the fixture (max abs error < 1e-4 of the output scale).
Each negative fixture must fail with exit status 1 and one line naming the node, op type and
attribute. Needs numpy and onnx only (onnxruntime, when installed, also re-checks the stored outputs).
Exit status 0 on success. Run by the Swift test suite (ONNXImportTests)."""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from acnn_format import read_acnn  # noqa: E402

FIXTURES = os.path.join(HERE, "..", "Tests", "RuntimeTests", "Fixtures", "onnx")
CONVERTER = os.path.join(HERE, "onnx2acnn.py")


# ---------------------------------------------------------------- reference executor of the format
def run_acnn(graph, tensors, x, params=None):
    """Runs an .acnn graph on x [C, H, W] in float64; params overrides constant_channel parameters."""
    params = params or {}
    vals = {graph["inputs"][0][0]: np.asarray(x, np.float64)}
    pending = list(graph["nodes"])
    while pending:
        ready = next((n for n in pending if all(i in vals for i in n["inputs"])), None)
        if ready is None:
            raise AssertionError("the graph has a cycle or reads an unknown value")
        pending.remove(ready)
        n, ins, a = ready, [vals[i] for i in ready["inputs"]], ready["attrs"]
        op = n["op"]
        if op == "conv2d":
            w = tensors[n["params"][0]].astype(np.float64)
            o, c, kh, kw = w.shape
            v = ins[0]
            assert v.shape[0] == c, (n["name"], v.shape, w.shape)
            if a.get("padding", "valid") == "same":
                ph, pw = (kh - 1) // 2, (kw - 1) // 2
                v = np.pad(v, ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw)))
            h, wd = v.shape[1] - kh + 1, v.shape[2] - kw + 1
            y = np.zeros((o, h, wd))
            for u in range(kh):
                for t in range(kw):
                    y += np.einsum("oc,chw->ohw", w[:, :, u, t], v[:, u:u + h, t:t + wd])
            if len(n["params"]) > 1:
                y += tensors[n["params"][1]].astype(np.float64)[:, None, None]
        elif op == "relu":
            y = np.maximum(ins[0], 0)
        elif op == "leaky_relu":
            y = np.where(ins[0] >= 0, ins[0], a["alpha"] * ins[0])
        elif op == "maxpool2d":
            c, h, wd = ins[0].shape
            y = ins[0].reshape(c, h // 2, 2, wd // 2, 2).max(axis=(2, 4))
        elif op == "conv_transpose2d":
            w = tensors[n["params"][0]].astype(np.float64)
            v = ins[0]
            y = np.zeros((w.shape[0], 2 * v.shape[1], 2 * v.shape[2]))
            for u in range(2):
                for t in range(2):
                    y[:, u::2, t::2] = np.einsum("oc,chw->ohw", w[:, :, u, t], v)
            if len(n["params"]) > 1:
                y += tensors[n["params"][1]].astype(np.float64)[:, None, None]
        elif op == "concat":
            y = np.concatenate(ins, axis=0)
        elif op == "constant_channel":
            value = params.get(a["parameter"], a["value"]) if "parameter" in a else a["value"]
            y = np.full((1,) + ins[0].shape[1:], float(value))
        else:
            raise AssertionError(f"unknown op {op}")
        vals[n["output"]] = y
    return vals[graph["outputs"][0]]


# ---------------------------------------------------------------- helpers
def convert(onnx_path, out, *extra):
    return subprocess.run([sys.executable, CONVERTER, onnx_path, "-o", out, "--overwrite", *extra],
                          capture_output=True, text=True)


def check_error(result, fragments, what):
    assert result.returncode == 1, f"{what}: exit status {result.returncode}, stderr {result.stderr!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx2acnn: error: "), f"{what}: not one error line: {result.stderr!r}"
    for f in fragments:
        assert f in lines[0], f"{what}: {f!r} not in {lines[0]!r}"


def rel_error(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def small_model(nodes, inputs, inits, output="y", opset=17):
    g = helper.make_graph(nodes, "t", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, None, None, None])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


# ---------------------------------------------------------------- tests
def test_fixtures(d):
    with open(os.path.join(FIXTURES, "manifest.json")) as f:
        manifest = json.load(f)
    tol = manifest["tolerance"]
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    for case in manifest["positive"]:
        name = case["name"]
        out = os.path.join(d, name + ".acnn")
        r = convert(os.path.join(FIXTURES, case["onnx"]), out, *case["args"])
        assert r.returncode == 0, f"{name}: {r.stderr}"
        meta, graph, tensors = read_acnn(out)
        assert meta["onnx.source_file"] == case["onnx"] and meta["converter"].startswith("onnx2acnn ")
        assert isinstance(meta["onnx.opset"], int) and meta["onnx.opset"] >= 13, meta["onnx.opset"]
        assert meta["onnx.producer"], meta
        x = np.fromfile(os.path.join(FIXTURES, case["input"]), dtype="<f4").reshape(case["input_shape"])
        expected = np.fromfile(os.path.join(FIXTURES, case["expected"]), dtype="<f4").reshape(case["expected_shape"])
        assert np.mean(expected != 0) > 0.5 and np.std(expected) > 1e-3 * np.abs(expected).max(), f"{name}: degenerate fixture"
        y = run_acnn(graph, tensors, x, case["parameters"])
        assert y.shape == expected.shape, (name, y.shape, expected.shape)
        err = rel_error(y, expected)
        assert err < tol, f"{name}: relative error {err} against onnxruntime"
        if ort is not None:  # the stored outputs are still what onnxruntime computes
            sess = ort.InferenceSession(os.path.join(FIXTURES, case["onnx"]), providers=["CPUExecutionProvider"])
            feeds = {k: x[None] if v == "input" else np.full(v["shape"], v["value"], np.float32)
                     for k, v in case["onnxruntime_feeds"].items()}
            assert rel_error(sess.run(None, feeds)[0][0], expected) < 1e-6, f"{name}: stale fixture"
        ops = [n["op"] for n in graph["nodes"]]
        if name.startswith("unet"):
            assert meta["size_multiple"] == 2 and meta["receptive_field"] == [19, 19], meta
            cc = [n for n in graph["nodes"] if n["op"] == "constant_channel"]
            assert len(cc) == 1 and cc[0]["attrs"]["parameter"] == "exposure_ratio", cc
            assert ops.count("conv2d") == 7 and ops.count("conv_transpose2d") == 1 and ops.count("concat") == 2, ops
            assert ops.count("leaky_relu") == 6 and ops.count("maxpool2d") == 1, ops
            assert all(n["attrs"]["alpha"] == 0.02 for n in graph["nodes"] if n["op"] == "leaky_relu")
            # The parameter is live: another ratio gives another output.
            other = run_acnn(graph, tensors, x, {"exposure_ratio": 0.5})
            assert rel_error(other, expected) > 1e-3, f"{name}: the exposure ratio has no effect"
        if name == "unet_torchscript_repeat_static":
            # Input 'ratio' renamed to the parameter 'exposure_ratio', default 3.5 (the value onnxruntime was run with).
            assert cc[0]["attrs"]["value"] == 3.5 and case["parameters"] == {}
            assert "input 'ratio'" in meta["onnx.parameters"] and meta["name"] == "unet-static"
        if name == "flamary3":
            assert meta["receptive_field"] == [19, 19] and meta["output_offset"] == [9, 9] and meta["normalization"] == "clip_max"
            assert [tensors[n["params"][0]].shape[2] for n in graph["nodes"] if n["op"] == "conv2d"] == [10, 6, 5]
        if name == "every_op":
            assert set(ops) == {"conv2d", "relu", "leaky_relu", "maxpool2d", "conv_transpose2d", "concat", "constant_channel"}, ops
            cc = {n["attrs"].get("parameter"): n["attrs"]["value"] for n in graph["nodes"] if n["op"] == "constant_channel"}
            assert cc == {None: 0.5, "exposure_ratio": 1.0}, cc
            pads = {n["name"]: n["attrs"]["padding"] for n in graph["nodes"] if n["op"] == "conv2d"}
            assert pads == {"conv_same3": "same", "conv_same2_explicit": "same", "conv_same4_upper": "same", "conv_same3x5_nobias": "same",
                            "conv1x1": "valid", "conv_valid5": "valid"}, pads
            assert meta["size_multiple"] == 2
        print(f"  {name}: ok (relative error {err:.2e})")
    for case in manifest["negative"]:
        r = convert(os.path.join(FIXTURES, case["onnx"]), os.path.join(d, case["name"] + ".acnn"))
        check_error(r, case["error"], case["name"])
        assert not os.path.exists(os.path.join(d, case["name"] + ".acnn")), f"{case['name']}: an output was written"
        print(f"  {case['name']}: refused ({r.stderr.strip()[len('onnx2acnn: error: '):][:90]}...)")


def test_more_refusals(d):
    rng = np.random.default_rng(3)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, "H", "W"])
    cases = [
        ("same_lower_even", [helper.make_node("Conv", ["x", "w"], ["y"], name="c", auto_pad="SAME_LOWER")],
         [numpy_helper.from_array(rng.standard_normal((1, 1, 4, 4)).astype(np.float32), "w")],
         ["node 'c' (Conv)", "attribute auto_pad=SAME_LOWER"]),
        ("pads_lower_even", [helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 1, 0, 0])],
         [numpy_helper.from_array(rng.standard_normal((1, 1, 2, 2)).astype(np.float32), "w")],
         ["node 'c' (Conv)", "attribute pads=[1, 1, 0, 0]"]),
        ("convt3", [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", strides=[2, 2])],
         [numpy_helper.from_array(rng.standard_normal((1, 1, 3, 3)).astype(np.float32), "w")],
         ["node 'up' (ConvTranspose)", "attribute kernel_shape=[3, 3]"]),
        ("convt_stride1", [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up")],
         [numpy_helper.from_array(rng.standard_normal((1, 1, 2, 2)).astype(np.float32), "w")],
         ["node 'up' (ConvTranspose)", "attribute strides=[1, 1]"]),
        ("pool_stride1", [helper.make_node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2, 2])], [],
         ["node 'p' (MaxPool)", "attribute strides=[1, 1]"]),
        ("concat_axis", [helper.make_node("Concat", ["x", "x"], ["y"], name="cat", axis=2)], [],
         ["node 'cat' (Concat)", "attribute axis=2"]),
        ("valid_same_mix", [helper.make_node("Conv", ["x", "w"], ["y"], name="c", pads=[1, 0, 1, 0])],
         [numpy_helper.from_array(rng.standard_normal((1, 1, 3, 3)).astype(np.float32), "w")],
         ["node 'c' (Conv)", "attribute pads=[1, 0, 1, 0]"]),
        ("weight_input", [helper.make_node("Conv", ["x", "x"], ["y"], name="c")], [],
         ["node 'c' (Conv)", "weight must be a constant"]),
        ("nhwc_no_transpose", [helper.make_node("Conv", ["x", "w"], ["y"], name="c")],
         [numpy_helper.from_array(rng.standard_normal((1, 1, 3, 3)).astype(np.float32), "w")],
         ["node 'c' (Conv)", "NHWC"]),
        ("param_unbroadcast", [helper.make_node("Reshape", ["r", "s"], ["r4"], name="view"),
                               helper.make_node("Concat", ["x", "r4"], ["y"], name="cat", axis=1)],
         [numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "s")],
         ["node 'cat' (Concat)", "run-time parameter 'r'"]),
        ("param_scaled", [helper.make_node("Reshape", ["r", "s"], ["r4"], name="view"),
                          helper.make_node("Expand", ["r4", "shape"], ["rm"], name="expand"),
                          helper.make_node("Shape", ["x"], ["shape"], name="shape"),
                          helper.make_node("Mul", ["rm", "two"], ["r2"], name="scale"),
                          helper.make_node("Concat", ["x", "r2"], ["y"], name="cat", axis=1)],
         [numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "s"), numpy_helper.from_array(np.array(2.0, np.float32), "two")],
         ["node 'scale' (Mul)", "scales the run-time parameter 'r' by 2.0"]),
    ]
    for name, nodes, inits, fragments in cases:
        inputs = [x]
        if name == "nhwc_no_transpose":
            inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 32, 1])]
        if name.startswith("param"):
            inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1]))
        if name == "param_scaled":  # ONNX needs topological order: Shape before Expand
            nodes = [nodes[i] for i in (2, 0, 1, 3, 4)]
        m = small_model(nodes, inputs, inits)
        p = os.path.join(d, name + ".onnx")
        onnx.save(m, p)
        check_error(convert(p, os.path.join(d, name + ".acnn")), fragments, name)
    # Command-line errors.
    fx = os.path.join(FIXTURES, "unet_torchscript_expand.onnx")
    check_error(convert(os.path.join(d, "missing.onnx"), os.path.join(d, "m.acnn")), ["no such file"], "missing file")
    junk = os.path.join(d, "junk.onnx")
    with open(junk, "wb") as f:
        f.write(b"\x00not an onnx model\xff" * 10)
    check_error(convert(junk, os.path.join(d, "j.acnn")), ["junk.onnx"], "junk file")
    check_error(convert(fx, os.path.join(d, "p.acnn"), "--param", "exposure_ratio=abc"), ["not a number"], "bad default")
    two = os.path.join(FIXTURES, "every_op.onnx")
    r = convert(two, os.path.join(d, "e.acnn"), "--param", "gain=2")
    assert r.returncode == 0, r.stderr  # one scalar input: renamed
    _, g, _ = read_acnn(os.path.join(d, "e.acnn"))
    assert [n["attrs"].get("parameter") for n in g["nodes"] if n["op"] == "constant_channel" and "parameter" in n["attrs"]] == ["gain"]
    out = os.path.join(d, "exists.acnn")
    open(out, "wb").close()
    r = subprocess.run([sys.executable, CONVERTER, fx, "-o", out], capture_output=True, text=True)
    check_error(r, ["--overwrite"], "existing output")
    # float16 storage: a smaller file, weights within half precision.
    r32, r16 = os.path.join(d, "u32.acnn"), os.path.join(d, "u16.acnn")
    assert convert(fx, r32).returncode == 0 and convert(fx, r16, "--float16").returncode == 0
    assert os.path.getsize(r16) < os.path.getsize(r32)
    _, _, t32 = read_acnn(r32)
    _, _, t16 = read_acnn(r16)
    for k in t32:
        assert np.allclose(t16[k], t32[k], rtol=1e-3, atol=1e-4), k
    print("  refusals and options: ok")


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
    os.makedirs(d, exist_ok=True)
    test_fixtures(d)
    test_more_refusals(d)
    print("onnx2acnn self-test: ok")


if __name__ == "__main__":
    main()
