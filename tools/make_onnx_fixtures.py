#!/usr/bin/env python3
"""Writes the ONNX fixtures of tools/test_onnx2acnn.py and Tests/RuntimeTests/ONNXImportTests.swift
into Tests/RuntimeTests/Fixtures/onnx/ (or the folder given as the first argument):

- four small Astro U-nets (2 levels, widths 8 and 16, LeakyReLU 0.02, max-pool, ConvTranspose 2x2/2,
  skip concatenation, the exposure ratio fed in at the bottom as a constant channel, 1x1 head) defined
  in PyTorch and exported by both PyTorch exporters with the common ways of broadcasting the ratio
  (`expand`, `ones_like * ratio`, `repeat`), with static and dynamic image sizes;
- graphs built with onnx.helper: the Flamary 2017 3-layer chain (valid 10x10, 6x6, 5x5 convolutions),
  a graph with every supported op and pattern, and negative cases the converter must refuse.

For each positive case the input (random, fixed seed) and the output onnxruntime computes from it
are stored as raw little-endian float32 files, so the tests need neither PyTorch nor onnxruntime.
manifest.json lists the cases. Needs: numpy, onnx, onnxruntime, torch (the CPU build:
pip install "torch==2.13.0+cpu"; plus onnxscript for the dynamo exporter).
"""
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "Tests", "RuntimeTests", "Fixtures", "onnx")
OPSET = 17


# ---------------------------------------------------------------- PyTorch U-nets
def torch_unets(out):
    import torch
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
            self.act = nn.LeakyReLU(0.02)

        def forward(self, x):
            return self.act(self.conv2(self.act(self.conv1(x))))

    class AstroUNet(nn.Module):
        """Vojtekova et al. 2020 in miniature: the exposure ratio r (a scalar input) is broadcast to
        one constant channel and concatenated to the pooled maps at the bottom."""

        def __init__(self, broadcast):
            super().__init__()
            self.broadcast = broadcast
            self.down = Block(1, 8)
            self.pool = nn.MaxPool2d(2)
            self.bottom = Block(8 + 1, 16)
            self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
            self.up_block = Block(16, 8)
            self.dropout = nn.Dropout(0.1)
            self.head = nn.Conv2d(8, 1, 1)

        def forward(self, x, r):
            d = self.down(x)
            p = self.pool(d)
            if self.broadcast == "expand":
                c = r.view(-1, 1, 1, 1).expand(-1, 1, p.shape[2], p.shape[3])
            elif self.broadcast == "ones":
                c = torch.ones_like(p[:, :1]) * r.view(-1, 1, 1, 1)
            else:  # repeat
                c = r.view(1, 1, 1, 1).repeat(1, 1, p.shape[2], p.shape[3])
            b = self.bottom(torch.cat([p, c], dim=1))
            u = self.up(b)
            return self.head(self.dropout(self.up_block(torch.cat([d, u], dim=1))))

    torch.manual_seed(2020)
    base = AstroUNet("expand")
    # Give the biases non-zero values so that they are tested too.
    with torch.no_grad():
        for m in base.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.bias.uniform_(-0.2, 0.2)
    state = base.state_dict()
    cases = []
    specs = [
        # file, broadcast, exporter (dynamo?), dynamic H/W, ratio shape, input names, sample size, run size
        ("unet_torchscript_expand", "expand", False, True, (1,), ["image", "exposure_ratio"], 32, (40, 56)),
        ("unet_torchscript_ones", "ones", False, True, (1,), ["image", "exposure_ratio"], 32, (48, 32)),
        ("unet_torchscript_repeat_static", "repeat", False, False, (1, 1, 1, 1), ["image", "ratio"], 32, (32, 32)),
        ("unet_dynamo_ones", "ones", True, True, (1,), ["image", "exposure_ratio"], 32, (40, 56)),
    ]
    rng = np.random.default_rng(7)
    for name, broadcast, dynamo, dynamic, rshape, names, sample, (h, w) in specs:
        m = AstroUNet(broadcast).eval()
        m.load_state_dict(state)
        x = torch.randn(1, 1, sample, sample)
        r = torch.full(rshape, 2.0)
        path = os.path.join(out, name + ".onnx")
        kwargs = dict(input_names=names, output_names=["restored"], dynamo=dynamo)
        if dynamo:
            kwargs.update(opset_version=18, external_data=False)
            if dynamic:
                kwargs["dynamic_shapes"] = ({2: torch.export.Dim("h", min=4, max=4096) * 2,
                                             3: torch.export.Dim("w", min=4, max=4096) * 2}, None)
        else:
            kwargs.update(opset_version=OPSET)
            if dynamic:
                kwargs["dynamic_axes"] = {names[0]: {2: "height", 3: "width"}, "restored": {2: "height", 3: "width"}}
        torch.onnx.export(m, (x, r), path, **kwargs)
        for extra in (path + ".data",):
            if os.path.exists(extra):
                raise SystemExit(f"{extra}: the fixture must keep its weights inside the .onnx file")
        image = rng.uniform(0, 1, (1, 1, h, w)).astype(np.float32)
        if name == "unet_torchscript_repeat_static":
            # The input is named 'ratio': the converter renames its parameter and sets the default, and
            # the Swift test runs the converted model without parameters (the default must be used).
            ratio, args, params = 3.5, ["--param", "exposure_ratio=3.5", "--name", "unet-static"], {}
        else:
            ratio, args, params = 2.5, [], {"exposure_ratio": 2.5}
        feeds = {names[0]: image, names[1]: np.full(rshape, ratio, np.float32)}
        cases.append(positive(out, name, path, feeds, image, args, params))
        with torch.no_grad():  # PyTorch itself agrees with onnxruntime
            ref = m(torch.from_numpy(image), torch.full(rshape, ratio)).numpy()
        ort_out = np.fromfile(os.path.join(out, name + ".expected.f32"), dtype="<f4").reshape(ref.shape)
        assert np.abs(ref - ort_out).max() <= 1e-5 * max(1.0, np.abs(ref).max()), name
    return cases


# ---------------------------------------------------------------- onnx.helper graphs
def _model(nodes, inputs, outputs, inits, name):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="make_onnx_fixtures.py",
                          producer_version="1")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _f(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def flamary3():
    rng = np.random.default_rng(17)
    inits, nodes, x = [], [], "image"
    for i, (o, c, k) in enumerate([(64, 1, 10), (16, 64, 6), (1, 16, 5)], start=1):
        s = np.sqrt(2.0 / (c * k * k))
        lo = -s if i < 3 else -0.3 * s  # the last layer mostly positive, so that the final ReLU passes most pixels
        inits += [_init(f"conv{i}.weight", rng.uniform(lo, s, (o, c, k, k)).astype(np.float32)),
                  _init(f"conv{i}.bias", rng.uniform(0.0, 0.1, o).astype(np.float32))]
        nodes += [helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"c{i}"], name=f"conv{i}",
                                   kernel_shape=[k, k], pads=[0, 0, 0, 0], strides=[1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    return _model(nodes, [_f("image", [1, 1, "H", "W"])], [_f(x, [1, 1, None, None])], inits, "flamary3")


def every_op():
    """Every mapping of the converter in one graph: 'same' pads of odd, even (explicit pads and
    SAME_UPPER) and rectangular kernels, a 'valid' conv, weights from initializers (float32, float16 and float64 through
    Cast) and from a Constant node, LeakyRelu, Relu, Identity, Dropout, MaxPool, ConvTranspose, Concat
    with a skip, a constant fill channel and the run-time parameter channel, and a symbolic batch."""
    rng = np.random.default_rng(23)

    def w(*shape):
        s = np.sqrt(2.0 / np.prod(shape[1:]))
        return rng.uniform(-s, s, shape)

    inits = [
        _init("c1.w", w(6, 2, 3, 3).astype(np.float32)), _init("c1.b", rng.uniform(-0.1, 0.1, 6).astype(np.float32)),
        _init("c0.w", w(6, 6, 2, 2).astype(np.float32)),
        _init("c2.w16", w(6, 6, 4, 4).astype(np.float16)), _init("c2.b64", rng.uniform(-0.1, 0.1, 6).astype(np.float64)),
        _init("c4.w64", w(4, 8, 1, 1).astype(np.float64)),
        _init("up.w", w(4, 5, 2, 2).astype(np.float32)), _init("up.b", rng.uniform(-0.1, 0.1, 5).astype(np.float32)),
        _init("c5.w", w(1, 11, 5, 5).astype(np.float32)), _init("c5.b", np.array([0.05], np.float32)),
        _init("shape_prefix", np.array([1, 1], np.int64)), _init("hw_start", np.array([2], np.int64)),
        _init("hw_end", np.array([4], np.int64)), _init("ratio_shape", np.array([1, 1, 1, 1], np.int64)),
        _init("drop_ratio", np.array(0.3, np.float32)),
    ]
    c3 = w(6, 6, 3, 5).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="conv_same3", pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["c1"], ["a1"], name="leaky", alpha=0.1),
        helper.make_node("Identity", ["a1"], ["i0"], name="identity"),
        helper.make_node("Conv", ["i0", "c0.w"], ["i1"], name="conv_same2_explicit", pads=[0, 0, 1, 1]),
        helper.make_node("Cast", ["c2.w16"], ["c2.w"], name="cast_w16", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["c2.b64"], ["c2.b"], name="cast_b64", to=TensorProto.FLOAT),
        helper.make_node("Conv", ["i1", "c2.w", "c2.b"], ["c2"], name="conv_same4_upper", auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Constant", [], ["c3.w"], name="c3_weight", value=numpy_helper.from_array(c3)),
        helper.make_node("Conv", ["r2", "c3.w"], ["c3"], name="conv_same3x5_nobias", pads=[1, 2, 1, 2], kernel_shape=[3, 5]),
        helper.make_node("Dropout", ["c3", "drop_ratio"], ["d3"], name="dropout"),
        helper.make_node("MaxPool", ["d3"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        # A constant channel of 0.5, sized from the pooled map at run time.
        helper.make_node("Shape", ["p"], ["p_shape"], name="shape"),
        helper.make_node("Slice", ["p_shape", "hw_start", "hw_end"], ["p_hw"], name="slice_hw"),
        helper.make_node("Concat", ["shape_prefix", "p_hw"], ["fill_shape"], name="fill_shape", axis=0),
        helper.make_node("ConstantOfShape", ["fill_shape"], ["half"], name="fill",
                         value=numpy_helper.from_array(np.array([0.5], np.float32))),
        # The run-time parameter, broadcast with Expand.
        helper.make_node("Reshape", ["exposure_ratio", "ratio_shape"], ["r4"], name="ratio_view"),
        helper.make_node("Expand", ["r4", "fill_shape"], ["ratio_map"], name="ratio_expand"),
        helper.make_node("Concat", ["p", "half", "ratio_map"], ["bottom_in"], name="bottom_concat", axis=1),
        helper.make_node("Cast", ["c4.w64"], ["c4.w"], name="cast_w64", to=TensorProto.FLOAT),
        helper.make_node("Conv", ["bottom_in", "c4.w"], ["c4"], name="conv1x1"),
        helper.make_node("ConvTranspose", ["c4", "up.w", "up.b"], ["u"], name="upconv", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Concat", ["u", "d3"], ["skip"], name="skip_concat", axis=-3),
        helper.make_node("Conv", ["skip", "c5.w", "c5.b"], ["c5"], name="conv_valid5", kernel_shape=[5, 5]),
        helper.make_node("Relu", ["c5"], ["y"], name="relu_out"),
    ]
    return _model(nodes, [_f("x", ["N", 2, "H", "W"]), _f("exposure_ratio", [1])], [_f("y", ["N", 1, None, None])],
                  inits, "every_op")


def negatives():
    """(file stem, model, expected message fragments)."""
    rng = np.random.default_rng(5)
    x = _f("x", [1, 1, "H", "W"])

    def w(o, c, k):
        return _init("w", rng.standard_normal((o, c, k, k)).astype(np.float32))

    def conv(name="conv", inp="x", out="c", **kw):
        return helper.make_node("Conv", [inp, "w"], [out], name=name, **kw)

    y = _f("y", [1, None, None, None])
    cases = [
        ("neg_add", _model([conv(), helper.make_node("Add", ["c", "c"], ["y"], name="residual")], [x], [y], [w(1, 1, 3)], "n"),
         ["node 'residual' (Add)", "not supported"]),
        ("neg_sigmoid", _model([conv(), helper.make_node("Sigmoid", ["c"], ["y"], name="sigmoid")], [x], [y], [w(1, 1, 3)], "n"),
         ["node 'sigmoid' (Sigmoid)", "op type Sigmoid is not supported"]),
        ("neg_stride2", _model([conv(out="y", strides=[2, 2])], [x], [y], [w(2, 1, 3)], "n"),
         ["node 'conv' (Conv)", "attribute strides=[2, 2]"]),
        ("neg_group2", _model([conv(out="y", group=2)], [_f("x", [1, 2, "H", "W"])], [y], [w(2, 1, 3)], "n"),
         ["node 'conv' (Conv)", "attribute group=2"]),
        ("neg_dilation2", _model([conv(out="y", dilations=[2, 2])], [x], [y], [w(2, 1, 3)], "n"),
         ["node 'conv' (Conv)", "attribute dilations=[2, 2]"]),
        ("neg_pads", _model([conv(out="y", pads=[0, 0, 2, 2])], [x], [y], [w(2, 1, 3)], "n"),
         ["node 'conv' (Conv)", "attribute pads=[0, 0, 2, 2]"]),
        ("neg_maxpool3", _model([conv(), helper.make_node("MaxPool", ["c"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2])],
                                [x], [y], [w(2, 1, 3)], "n"),
         ["node 'pool' (MaxPool)", "attribute kernel_shape=[3, 3]"]),
        ("neg_batch4", _model([conv(out="y")], [_f("x", [4, 1, "H", "W"])], [y], [w(2, 1, 3)], "n"),
         ["batch size 4"]),
        ("neg_nhwc", _model([helper.make_node("Transpose", ["x"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]), conv(inp="t", out="y")],
                            [_f("x", [1, "H", "W", 1])], [y], [w(2, 1, 3)], "n"),
         ["symbolic channel axis", "NHWC"]),
        ("neg_two_outputs", _model([conv(), helper.make_node("Relu", ["c"], ["y"], name="relu")], [x], [y, _f("c", [1, None, None, None])],
                                   [w(2, 1, 3)], "n"),
         ["2 outputs"]),
        ("neg_param_scale", _model([conv(), helper.make_node("Mul", ["c", "gain"], ["y"], name="gain_mul")],
                                   [x, _f("gain", [1])], [y], [w(1, 1, 3)], "n"),
         ["node 'gain_mul' (Mul)", "not supported"]),
    ]
    return cases


# ---------------------------------------------------------------- outputs
def positive(out, name, path, feeds, image, args, params):
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y = sess.run(None, feeds)[0]
    image.astype("<f4").tofile(os.path.join(out, name + ".input.f32"))
    y.astype("<f4").tofile(os.path.join(out, name + ".expected.f32"))
    return {"name": name, "onnx": name + ".onnx", "args": args, "input": name + ".input.f32",
            "input_shape": list(image.shape[1:]), "parameters": params, "expected": name + ".expected.f32",
            "expected_shape": list(y.shape[1:]),
            "onnxruntime_feeds": {k: "input" if v is image else {"shape": list(v.shape), "value": float(v.reshape(-1)[0])}
                                  for k, v in feeds.items()}}


def main():
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT)
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        if f.endswith((".onnx", ".f32", ".data")) or f == "manifest.json":
            os.remove(os.path.join(out, f))
    cases = torch_unets(out)
    rng = np.random.default_rng(11)
    m = flamary3()
    onnx.save(m, os.path.join(out, "flamary3.onnx"))
    img = rng.uniform(0, 1, (1, 1, 40, 36)).astype(np.float32)
    cases.append(positive(out, "flamary3", os.path.join(out, "flamary3.onnx"), {"image": img}, img,
                          ["--normalization", "clip_max"], {}))
    m = every_op()
    onnx.save(m, os.path.join(out, "every_op.onnx"))
    img = rng.standard_normal((1, 2, 20, 28)).astype(np.float32)
    cases.append(positive(out, "every_op", os.path.join(out, "every_op.onnx"),
                          {"x": img, "exposure_ratio": np.array([0.75], np.float32)}, img, [], {"exposure_ratio": 0.75}))
    errors = []
    for stem, model, fragments in negatives():
        onnx.save(model, os.path.join(out, stem + ".onnx"))
        errors.append({"name": stem, "onnx": stem + ".onnx", "error": fragments})
    manifest = {"generator": "tools/make_onnx_fixtures.py", "tolerance": 1e-4,
                "tolerance_meaning": "max |astrocnn - onnxruntime| / max |onnxruntime|",
                "positive": cases, "negative": errors}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"wrote {len(cases)} positive and {len(errors)} negative cases to {out} ({total} bytes)")


if __name__ == "__main__":
    main()
