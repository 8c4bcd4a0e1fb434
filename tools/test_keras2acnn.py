#!/usr/bin/env python3
"""Self-test of tools/keras2acnn.py on synthetic Keras files written here with h5py:
a Keras 2 Sequential (Conv2D, TensorFlow kernel layout kh x kw x in x out, cross-correlation,
'same' and 'valid' padding, LeakyReLU layer) and a Keras 1 Theano model (Convolution2D, OIHW,
true convolution). Checks the tensors written against the expected OIHW correlation kernels and
the graph against the layers. Exit status 0 on success. Run by the Swift test suite."""
import json
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from acnn_format import read_acnn  # noqa: E402


def keras2_model(d):
    rng = np.random.default_rng(1)
    k1 = rng.standard_normal((3, 3, 1, 4)).astype(np.float32)  # kh, kw, in, out
    b1 = rng.standard_normal(4).astype(np.float32)
    k2 = rng.standard_normal((5, 5, 4, 2)).astype(np.float32)
    b2 = rng.standard_normal(2).astype(np.float32)
    h5 = os.path.join(d, "k2.h5")
    with h5py.File(h5, "w") as f:
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [b"conv_a", b"leaky", b"conv_b"]
        for name, k, b in (("conv_a", k1, b1), ("conv_b", k2, b2)):
            g = mw.create_group(name)
            g.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            g.create_dataset(f"{name}/kernel:0", data=k)
            g.create_dataset(f"{name}/bias:0", data=b)
        mw.create_group("leaky").attrs["weight_names"] = []
    config = {"class_name": "Sequential", "keras_version": "2.4.0", "config": {"name": "seq", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, None, None, 1], "name": "in"}},
        {"class_name": "Conv2D", "config": {"name": "conv_a", "filters": 4, "kernel_size": [3, 3], "padding": "same",
                                            "strides": [1, 1], "activation": "linear", "use_bias": True,
                                            "data_format": "channels_last", "dilation_rate": [1, 1]}},
        {"class_name": "LeakyReLU", "config": {"name": "leaky", "alpha": 0.1}},
        {"class_name": "Conv2D", "config": {"name": "conv_b", "filters": 2, "kernel_size": [5, 5], "padding": "valid",
                                            "strides": [1, 1], "activation": "relu", "use_bias": True,
                                            "data_format": "channels_last", "dilation_rate": [1, 1]}},
    ]}}
    js = os.path.join(d, "k2.json")
    json.dump(config, open(js, "w"))
    return h5, js, {"conv_a": (k1.transpose(3, 2, 0, 1), b1), "conv_b": (k2.transpose(3, 2, 0, 1), b2)}


def keras1_model(d):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 1, 4, 4)).astype(np.float32)  # O, C, kh, kw (Theano: true convolution)
    b = rng.standard_normal(3).astype(np.float32)
    h5 = os.path.join(d, "k1.h5")
    with h5py.File(h5, "w") as f:
        f.attrs["layer_names"] = [b"convolution2d_1"]
        g = f.create_group("convolution2d_1")
        g.attrs["weight_names"] = [b"convolution2d_1_W", b"convolution2d_1_b"]
        g.create_dataset("convolution2d_1_W", data=w)
        g.create_dataset("convolution2d_1_b", data=b)
    config = {"class_name": "Sequential", "keras_version": "1.0.5", "config": [
        {"class_name": "Convolution2D", "config": {"name": "convolution2d_1", "nb_filter": 3, "nb_row": 4, "nb_col": 4,
                                                   "border_mode": "valid", "subsample": [1, 1], "activation": "relu",
                                                   "dim_ordering": "th", "bias": True, "batch_input_shape": [None, 1, 32, 32]}}]}
    js = os.path.join(d, "k1.json")
    json.dump(config, open(js, "w"))
    return h5, js, {"convolution2d_1": (w[:, :, ::-1, ::-1], b)}


def convert(h5, js, out, *extra):
    r = subprocess.run([sys.executable, os.path.join(HERE, "keras2acnn.py"), h5, js, "-o", out, *extra], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"conversion failed: {r.stderr}")


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
    h5, js, expected = keras2_model(d)
    out = os.path.join(d, "k2.acnn")
    convert(h5, js, out)
    meta, graph, tensors = read_acnn(out)
    ops = [(n["op"], n["attrs"].get("padding"), n["attrs"].get("alpha")) for n in graph["nodes"]]
    assert ops == [("conv2d", "same", None), ("leaky_relu", None, 0.1), ("conv2d", "valid", None), ("relu", None, None)], ops
    for name, (w, b) in expected.items():
        assert np.array_equal(tensors[f"{name}.weight"], w), f"{name}: weights (TensorFlow layout, no flip)"
        assert np.array_equal(tensors[f"{name}.bias"], b), f"{name}: bias"
    assert meta["receptive_field"] == [7, 7] and meta["output_offset"] == [2, 2], (meta["receptive_field"], meta["output_offset"])

    h5, js, expected = keras1_model(d)
    out = os.path.join(d, "k1.acnn")
    convert(h5, js, out, "--normalization", "clip_max")
    meta, graph, tensors = read_acnn(out)
    w, b = expected["convolution2d_1"]
    assert np.array_equal(tensors["convolution2d_1.weight"], w), "Theano kernels must be rotated by 180 degrees"
    assert meta["normalization"] == "clip_max" and meta["receptive_field"] == [4, 4]
    # --kernels correlation overrides the automatic rotation.
    convert(h5, js, out, "--kernels", "correlation", "--overwrite")
    _, _, tensors = read_acnn(out)
    assert np.array_equal(tensors["convolution2d_1.weight"], w[:, :, ::-1, ::-1])
    print("keras2acnn self-test: ok")


if __name__ == "__main__":
    main()
