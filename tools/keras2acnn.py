#!/usr/bin/env python3
"""Convert a Keras Sequential CNN (HDF5 weights + JSON config) to an AstroCNN `.acnn` model.

    python3 tools/keras2acnn.py WEIGHTS.h5 CONFIG.json -o OUT.acnn [--name NAME]
        [--normalization clip_max|none|minmax|meanstd|sky_mad] [--kernels auto|convolution|correlation]
        [--float16]

Supported layers: Keras 1 `Convolution2D` and Keras 2/3 `Conv2D` (stride 1, padding valid or
same, activation relu/linear/leaky_relu), `Activation` (relu, linear), `LeakyReLU`, and the
inference no-ops `InputLayer` and `Dropout`. Anything else is refused with a clear message.

Kernel conventions. The `.acnn` format stores OIHW kernels for cross-correlation. Keras 1 on
Theano (`dim_ordering: "th"`) stores kernels for TRUE convolution (Theano flips them), so they are
rotated by 180 degrees; TensorFlow-ordered kernels (`dim_ordering: "tf"`, and every Keras 2+
`Conv2D`, shape kh x kw x in x out) are correlation kernels and are only transposed. `--kernels`
overrides the automatic choice (`auto`: convolution for Keras 1 "th", correlation otherwise).

Needs numpy and h5py. The format is specified in docs/MODEL_FORMAT.md; this file is an
independent writer of it, cross-checked against the Swift reader by the test suite.
"""
import argparse
import hashlib
import json
import os
import struct
import sys

try:
    import numpy as np
except ImportError:  # pragma: no cover
    sys.exit("keras2acnn: numpy is required (pip install numpy h5py)")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from acnn_format import encode_acnn  # noqa: E402

# ---------------------------------------------------------------- Keras model reading
class ConversionError(Exception):
    pass


def _layers(config):
    if isinstance(config, dict) and "config" in config:
        cls = config.get("class_name")
        if cls not in (None, "Sequential"):
            raise ConversionError(f"only Sequential models are supported, this is a {cls}")
        inner = config["config"]
        if isinstance(inner, dict):
            return inner.get("layers", []), config.get("keras_version", "2")
        return inner, config.get("keras_version", "1")
    if isinstance(config, list):
        return config, "1"
    raise ConversionError("unrecognised Keras config JSON")


def _weight_group(h5):
    return h5["model_weights"] if "model_weights" in h5 else h5


def _layer_weights(group, layer_name):
    if layer_name not in group:
        return []
    g = group[layer_name]
    names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs.get("weight_names", [])]
    out = []
    for n in names:
        out.append(np.array(g[n], dtype=np.float32))
    if not names:  # Keras 3 layout: vars/0, vars/1
        if "vars" in g:
            for k in sorted(g["vars"].keys(), key=int):
                out.append(np.array(g["vars"][k], dtype=np.float32))
    return out


def convert(h5_path, json_path, name=None, normalization="none", kernels="auto", float16=False, channels=1):
    import h5py

    with open(json_path) as f:
        config = json.load(f)
    layers, keras_version = _layers(config)
    nodes, tensors = [], {}
    value = "image"
    in_channels = None
    rf, anchor = 1, 0.0
    flipped = False
    with h5py.File(h5_path, "r") as h5:
        group = _weight_group(h5)
        for idx, layer in enumerate(layers):
            cls = layer.get("class_name")
            cfg = layer.get("config", {})
            lname = cfg.get("name", f"layer{idx}")
            if cls in ("InputLayer", "Dropout", "GaussianNoise", "SpatialDropout2D"):
                shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
                if shape and in_channels is None:
                    fmt = cfg.get("data_format", "channels_last")
                    in_channels = shape[1] if fmt == "channels_first" else shape[-1]
                continue
            act = None
            if cls in ("Convolution2D", "Conv2D"):
                w = _layer_weights(group, lname)
                if not w:
                    raise ConversionError(f"layer '{lname}': no weights in {h5_path}")
                kernel = w[0]
                bias = w[1] if len(w) > 1 and cfg.get("bias", cfg.get("use_bias", True)) else None
                if cls == "Convolution2D":  # Keras 1
                    ordering = cfg.get("dim_ordering", "th")
                    pad = cfg.get("border_mode", "valid")
                    stride = tuple(cfg.get("subsample", (1, 1)))
                    shape = cfg.get("batch_input_shape")
                    if shape and in_channels is None:
                        in_channels = shape[1] if ordering == "th" else shape[-1]
                    if ordering == "th":
                        oihw = kernel
                    else:
                        oihw = kernel.transpose(3, 2, 0, 1)
                    semantics = "convolution" if (kernels == "auto" and ordering == "th") else (
                        "correlation" if kernels == "auto" else kernels)
                else:  # Keras 2/3 Conv2D: (kh, kw, in, out), correlation
                    pad = cfg.get("padding", "valid")
                    stride = tuple(cfg.get("strides", (1, 1)))
                    shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
                    fmt = cfg.get("data_format", "channels_last")
                    if shape and in_channels is None:
                        in_channels = shape[1] if fmt == "channels_first" else shape[-1]
                    if tuple(cfg.get("dilation_rate", (1, 1))) != (1, 1):
                        raise ConversionError(f"layer '{lname}': dilated convolutions are not in format v1")
                    oihw = kernel.transpose(3, 2, 0, 1)
                    semantics = "correlation" if kernels == "auto" else kernels
                if stride != (1, 1):
                    raise ConversionError(f"layer '{lname}': stride {stride} is not supported (format v1 has stride 1)")
                if pad not in ("valid", "same"):
                    raise ConversionError(f"layer '{lname}': padding '{pad}' is not supported")
                if semantics == "convolution":
                    oihw = oihw[:, :, ::-1, ::-1]
                    flipped = True
                oihw = np.ascontiguousarray(oihw, dtype=np.float32)
                if in_channels is None:
                    in_channels = oihw.shape[1]
                params = [f"{lname}.weight"]
                tensors[f"{lname}.weight"] = (oihw, "float16" if float16 else "float32")
                if bias is not None:
                    params.append(f"{lname}.bias")
                    tensors[f"{lname}.bias"] = (np.ascontiguousarray(bias, dtype=np.float32), "float16" if float16 else "float32")
                out = f"{lname}"
                nodes.append(dict(name=lname, op="conv2d", inputs=[value], output=out, params=params,
                                  attrs={"padding": pad}))
                value = out
                kh = oihw.shape[2]
                if pad == "valid":
                    rf += kh - 1
                    anchor += (kh - 1) / 2
                else:
                    p = (kh - 1) // 2
                    rf += kh - 1
                    anchor += (kh - 1) / 2 - p
                act = cfg.get("activation", "linear")
            elif cls == "Activation":
                act = cfg.get("activation")
            elif cls in ("LeakyReLU",):
                act = ("leaky_relu", float(cfg.get("alpha", cfg.get("negative_slope", 0.3))))
            elif cls in ("ReLU",):
                act = "relu"
            else:
                raise ConversionError(f"layer '{lname}': Keras layer {cls} is not supported by format v1")
            if act in (None, "linear"):
                continue
            if act == "relu":
                nodes.append(dict(name=f"{lname}.relu", op="relu", inputs=[value], output=f"{lname}.relu", params=[]))
                value = f"{lname}.relu"
            elif isinstance(act, tuple) and act[0] == "leaky_relu":
                nodes.append(dict(name=f"{lname}.leaky", op="leaky_relu", inputs=[value], output=f"{lname}.leaky",
                                  params=[], attrs={"alpha": act[1]}))
                value = f"{lname}.leaky"
            else:
                raise ConversionError(f"layer '{lname}': activation '{act}' is not supported")
    if not nodes:
        raise ConversionError("the model has no convolution layer")
    if in_channels is None:
        in_channels = channels
    with open(h5_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    model_name = name or os.path.splitext(os.path.basename(h5_path))[0]
    offset = int(np.floor(anchor))
    metadata = {
        "name": model_name,
        "description": f"Keras {keras_version} Sequential CNN converted by tools/keras2acnn.py",
        "provenance": f"{os.path.basename(h5_path)} sha256 {digest}; config {os.path.basename(json_path)}; kernels as stored: "
                      + ("true convolution (rotated 180 degrees on conversion)" if flipped else "cross-correlation"),
        "normalization": normalization,
        "receptive_field": [rf, rf],
        "output_offset": [offset, offset],
        "size_multiple": 1,
    }
    if isinstance(config, dict):
        opt = config.get("optimizer")
        if opt:
            metadata["training.optimizer"] = json.dumps(opt, sort_keys=True)
        if config.get("loss"):
            metadata["training.loss"] = str(config["loss"])
    return encode_acnn(metadata, [("image", int(in_channels))], [value], nodes, tensors)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Convert a Keras Sequential CNN (HDF5 + JSON) to .acnn")
    ap.add_argument("weights", help="Keras HDF5 weights file")
    ap.add_argument("config", help="Keras model JSON (model.to_json())")
    ap.add_argument("-o", "--output", required=True, help="output .acnn file")
    ap.add_argument("--name", help="model name (default: the weights file name)")
    ap.add_argument("--normalization", default="none", choices=["none", "clip_max", "minmax", "meanstd", "sky_mad"],
                    help="input normalisation the runtime applies (Flamary 2017 models: clip_max)")
    ap.add_argument("--kernels", default="auto", choices=["auto", "convolution", "correlation"],
                    help="how the stored kernels are meant (auto: Keras 1 'th' = convolution, else correlation)")
    ap.add_argument("--float16", action="store_true", help="store weights as float16")
    ap.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    args = ap.parse_args(argv)
    for p in (args.weights, args.config):
        if not os.path.exists(p):
            print(f"keras2acnn: error: {p}: no such file", file=sys.stderr)
            return 1
    if os.path.exists(args.output) and not args.overwrite:
        print(f"keras2acnn: error: {args.output} exists (pass --overwrite)", file=sys.stderr)
        return 1
    try:
        blob = convert(args.weights, args.config, name=args.name, normalization=args.normalization,
                       kernels=args.kernels, float16=args.float16)
    except ConversionError as e:
        print(f"keras2acnn: error: {e}", file=sys.stderr)
        return 1
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as e:
        print(f"keras2acnn: error: cannot read the Keras model: {e}", file=sys.stderr)
        return 1
    tmp = f"{args.output}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, args.output)
    print(f"wrote {args.output} ({len(blob)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
