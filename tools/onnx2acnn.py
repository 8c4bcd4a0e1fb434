#!/usr/bin/env python3
"""Convert an ONNX image-to-image CNN (e.g. a U-net exported from PyTorch) to an AstroCNN `.acnn` model.

    python3 tools/onnx2acnn.py MODEL.onnx -o OUT.acnn [--name NAME] [--param NAME=DEFAULT]
        [--normalization none|clip_max|minmax|meanstd] [--float16] [--overwrite]

Mapped ONNX ops (default domain):
  Conv            2-D, any kernel size, strides 1, dilations 1, group 1; zero pads ('valid') or the
                  'same' pads of the format (top/left (k-1)//2, bottom/right the rest: symmetric for
                  odd kernels, auto_pad SAME_UPPER for even ones), optional bias
  ConvTranspose   kernel 2x2, strides 2, no pads, no output_padding, group 1 (weights [in, out, 2, 2]
                  transposed to the format's [out, in, 2, 2])
  Relu, LeakyRelu (alpha), MaxPool (2x2, strides 2, no pads), Concat (channel axis)
  Identity, Dropout                       removed (inference)
  the constant-channel pattern            a scalar graph input (shape [1], [1,1,1,1], ...) broadcast
                  to one constant channel (Reshape/Unsqueeze + Expand, Tile, ConstantOfShape or
                  ones * ratio, with static or dynamic shapes) and concatenated to feature maps becomes
                  the format's `constant_channel` node with a named run-time parameter (the U-net's
                  exposure-time ratio); a constant fill becomes a `constant_channel` with that value.
Constant sub-graphs (Constant nodes, Cast of float16/float64 weights, shape arithmetic) are folded;
shape computations that depend on the image size (Shape, Gather, Concat, ...) are evaluated as far as
they are known and may only feed the shape operands of Expand/Tile/ConstantOfShape.

Run-time parameters. Each scalar graph input becomes a run-time parameter of the same name, default
1.0. `--param NAME=DEFAULT` sets the default of the input NAME; when the graph has exactly one scalar
input and NAME is not an input name, that input's parameter is named NAME (e.g. an input `ratio`
exported from PyTorch becomes `exposure_ratio`).

Anything else (other ops, attribute values, batch sizes other than 1, NHWC inputs, several outputs)
is refused with a one-line error naming the node, its op type and the attribute, and exit status 1.
Needs only `onnx` and `numpy`; tools/acnn_format.py writes the file (docs/MODEL_FORMAT.md).
"""
import argparse
import hashlib
import os
import sys

try:
    import numpy as np
except ImportError:  # pragma: no cover
    sys.exit("onnx2acnn: error: numpy is required (pip install numpy onnx)")
try:
    import onnx
    from onnx import numpy_helper
except ImportError:  # pragma: no cover
    sys.exit("onnx2acnn: error: the onnx package is required (pip install onnx)")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from acnn_format import encode_acnn  # noqa: E402

VERSION = "1.0"
SUPPORTED = ("Conv, ConvTranspose, Relu, LeakyRelu, MaxPool, Concat, Identity, Dropout, and a scalar input "
             "broadcast to a constant channel")


class ConversionError(Exception):
    pass


# ---------------------------------------------------------------- abstract values
class Map:
    """A feature map of the image: the acnn value `name`, [1, c, h, w] (h, w None when dynamic)."""

    def __init__(self, name, c, h, w):
        self.name, self.c, self.h, self.w = name, c, h, w


class Const:
    """A value known at conversion time."""

    def __init__(self, arr):
        self.arr = np.asarray(arr)


class Dyn:
    """A shape computation that depends on the image size: a scalar or 1-D vector whose elements
    are known ints/floats or None; `vals` is None when not even its length is known."""

    def __init__(self, vals=None, scalar=False):
        self.vals, self.scalar = vals, scalar


class Param:
    """The run-time scalar `name`, reshaped to `shape` (one element)."""

    def __init__(self, name, shape):
        self.name, self.shape = name, tuple(shape)


class Fill:
    """A tensor of `shape` (entries None when dynamic) filled with the run-time parameter `param`
    or the constant `value`."""

    def __init__(self, shape, value=None, param=None):
        self.shape, self.value, self.param = tuple(shape), value, param


class Deferred:
    """A value that cannot be converted (e.g. a Slice of a feature map); fine when only its shape
    is read, else the error is raised where it is used."""

    def __init__(self, message, shape):
        self.message, self.shape = message, tuple(shape)


# ---------------------------------------------------------------- helpers
def _attrs(node):
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, list):
            v = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


def _where(node):
    name = node.name or (node.output[0] if node.output else "?")
    return f"node '{name}' ({node.op_type})"


def _fail(node, message):
    raise ConversionError(f"{_where(node)}: {message}")


def _uniform(arr):
    """The single value of an array whose elements are all equal, else None."""
    a = np.asarray(arr)
    if a.size == 0:
        return None
    flat = a.reshape(-1)
    return float(flat[0]) if np.all(flat == flat[0]) else None


def _dims_of(value):
    """Shape of a value with None for unknown entries (or None when unknown)."""
    if isinstance(value, Map):
        return (1, value.c, value.h, value.w)
    if isinstance(value, Const):
        return value.arr.shape
    if isinstance(value, (Param, Fill, Deferred)):
        return value.shape
    if isinstance(value, Dyn):
        if value.scalar:
            return ()
        return None if value.vals is None else (len(value.vals),)
    return None


def _as_list(value):
    """Elements of a Const or Dyn scalar/vector as a Python list (None entries for unknown), or None."""
    if isinstance(value, Const):
        if value.arr.ndim > 1:
            return None
        return [x.item() for x in value.arr.reshape(-1)]
    if isinstance(value, Dyn):
        return None if value.vals is None else list(value.vals)
    return None


def _broadcast(a, b):
    """Numpy broadcasting of two shapes with None (unknown) entries."""
    if a is None or b is None:
        return None
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x == 1:
            out.append(y)
        elif y == 1:
            out.append(x)
        elif x is None or y is None:
            out.append(x if y is None else y)
        elif x == y:
            out.append(x)
        else:
            return None
    return tuple(out)


def _expand_shape(data_shape, target):
    """Output shape of Expand(data of data_shape, shape vector target with None entries)."""
    if target is None:
        return None
    return _broadcast(tuple(data_shape), tuple(None if t is None else int(t) for t in target))


# ---------------------------------------------------------------- constant folding
def _np_dtype(elem_type):
    if hasattr(onnx.helper, "tensor_dtype_to_np_dtype"):
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    return onnx.mapping.TENSOR_TYPE_TO_NP_TYPE[elem_type]  # onnx < 1.13


def _fold(node, a, ins):
    """Evaluates `node` on constant inputs (numpy arrays; None for omitted optional inputs)."""
    op = node.op_type
    x = ins[0] if ins else None
    if op in ("Identity", "Cast", "CastLike"):
        if op == "Identity":
            return x
        to = a.get("to") if op == "Cast" else None
        dtype = _np_dtype(to) if to is not None else ins[1].dtype
        return x.astype(dtype)
    if op == "Reshape":
        shape = [int(s) for s in ins[1]]
        if not a.get("allowzero", 0):
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return x.reshape(shape)
    if op in ("Unsqueeze", "Squeeze"):
        axes = a.get("axes")
        if axes is None and len(ins) > 1 and ins[1] is not None:
            axes = [int(v) for v in ins[1]]
        if op == "Squeeze":
            return np.squeeze(x, axis=tuple(axes) if axes is not None else None)
        out = x
        rank = x.ndim + len(axes)
        for ax in sorted(v % rank for v in axes):
            out = np.expand_dims(out, ax)
        return out
    if op == "Flatten":
        ax = a.get("axis", 1) % max(x.ndim, 1)
        return x.reshape(int(np.prod(x.shape[:ax])), -1)
    if op == "Concat":
        return np.concatenate([i for i in ins if i is not None and i.size > 0] or [ins[0]], axis=a["axis"])
    if op == "Gather":
        return np.take(x, ins[1].astype(np.int64), axis=a.get("axis", 0))
    if op == "Shape":
        s = np.array(x.shape, dtype=np.int64)
        return s[a.get("start", 0):a.get("end", None)]
    if op == "Size":
        return np.array(x.size, dtype=np.int64)
    if op == "ConstantOfShape":
        v = a.get("value")
        fill = numpy_helper.to_array(v).reshape(-1) if v is not None else np.zeros(1, np.float32)
        return np.full([int(s) for s in x], fill[0], dtype=fill.dtype)
    if op == "Expand":
        return x * np.ones([int(s) for s in ins[1]], dtype=x.dtype)
    if op == "Tile":
        return np.tile(x, [int(s) for s in ins[1]])
    if op == "Slice":
        starts, ends = ins[1], ins[2]
        axes = ins[3] if len(ins) > 3 and ins[3] is not None else range(len(starts))
        steps = ins[4] if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
        idx = [slice(None)] * x.ndim
        for s, e, ax, st in zip(starts, ends, axes, steps):
            idx[int(ax)] = slice(int(s), int(e), int(st))
        return x[tuple(idx)]
    if op == "Range":
        return np.arange(ins[0].item(), ins[1].item(), ins[2].item()).astype(ins[0].dtype)
    binary = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Equal": np.equal,
              "Less": np.less, "Greater": np.greater, "Max": np.maximum, "Min": np.minimum, "Pow": np.power}
    if op in binary:
        out = ins[0]
        for y in ins[1:]:
            out = binary[op](out, y)
        return out if op in ("Equal", "Less", "Greater") else out.astype(ins[0].dtype)
    if op == "Div":
        if np.issubdtype(x.dtype, np.integer):
            return np.trunc(x / ins[1]).astype(x.dtype)
        return (x / ins[1]).astype(x.dtype)
    if op == "Where":
        return np.where(ins[0], ins[1], ins[2])
    unary = {"Neg": np.negative, "Floor": np.floor, "Ceil": np.ceil, "Abs": np.abs, "Sqrt": np.sqrt, "Not": np.logical_not}
    if op in unary:
        return unary[op](x)
    return None


# ---------------------------------------------------------------- the converter
class _Converter:
    def __init__(self, model, name, param_args, normalization, float16, source):
        self.model = model
        self.g = model.graph
        self.float16 = float16
        self.values = {}       # ONNX value name -> abstract value
        self.nodes = []        # acnn nodes
        self.tensors = {}      # acnn tensors
        self.names = set()     # acnn node and value names in use
        self.uses = {}         # ONNX value name -> number of consumers (graph outputs count)
        self.param_args = param_args
        self.normalization = normalization
        self.model_name = name
        self.source = source
        self.param_info = {}   # acnn parameter name -> (ONNX input, default)

    # -- names
    def _fresh(self, base):
        base = (base or "v")[:200]
        n, k = base, 1
        while n in self.names:
            k += 1
            n = f"{base}.{k}"
        self.names.add(n)
        return n

    def _add(self, node, op, inputs, params=(), attrs=None, suffix=""):
        name = self._fresh((node.name or node.output[0]) + suffix)
        self.nodes.append(dict(name=name, op=op, inputs=list(inputs), output=name, params=list(params), attrs=attrs or {}))
        return name

    def _tensor(self, base, arr):
        name = self._fresh(base)
        self.tensors[name] = (np.ascontiguousarray(arr, dtype=np.float32), "float16" if self.float16 else "float32")
        return name

    # -- graph inputs
    def inputs(self):
        inits = {t.name for t in self.g.initializer}
        for t in self.g.initializer:
            self.values[t.name] = Const(numpy_helper.to_array(t))
        for t in self.g.sparse_initializer:
            raise ConversionError(f"sparse initializer '{t.values.name}' is not supported")
        real = [i for i in self.g.input if i.name not in inits]
        images, scalars = [], []
        for i in real:
            tt = i.type.tensor_type
            if not i.type.HasField("tensor_type"):
                raise ConversionError(f"graph input '{i.name}' is not a tensor")
            if tt.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
                raise ConversionError(f"graph input '{i.name}' has element type "
                                      f"{onnx.TensorProto.DataType.Name(tt.elem_type)}; only float inputs are supported")
            if not tt.HasField("shape"):
                raise ConversionError(f"graph input '{i.name}' has no shape; export with a static rank (NCHW)")
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            if len(dims) <= 4 and all(d == 1 for d in dims):
                scalars.append((i.name, dims))
            else:
                images.append((i.name, dims))
        if len(images) != 1:
            names = ", ".join(f"'{n}' {d}" for n, d in images) or "none"
            raise ConversionError(f"the graph needs exactly one image input [1, C, H, W] besides scalar inputs, it has {names}")
        iname, dims = images[0]
        if len(dims) != 4:
            raise ConversionError(f"graph input '{iname}' has shape {dims}; only 4-D NCHW images [1, C, H, W] are supported")
        if dims[0] is not None and dims[0] != 1:
            raise ConversionError(f"graph input '{iname}' has batch size {dims[0]}; the runtime runs one image "
                                  "(export with batch 1 or a symbolic batch)")
        if dims[1] is None:
            raise ConversionError(f"graph input '{iname}' has a symbolic channel axis (shape {dims}); "
                                  "only NCHW inputs with a fixed channel count are supported (is the model NHWC?)")
        self.input_name = self._fresh(iname)
        self.input_channels = int(dims[1])
        self.values[iname] = Map(self.input_name, int(dims[1]), dims[2], dims[3])

        # Run-time parameters.
        scalar_names = [n for n, _ in scalars]
        chosen = {n: [n, 1.0] for n in scalar_names}  # ONNX input -> [parameter name, default]
        for spec in self.param_args:
            if "=" not in spec:
                raise ConversionError(f"--param expects NAME=DEFAULT, got '{spec}'")
            pname, text = spec.split("=", 1)
            try:
                default = float(text)
            except ValueError:
                raise ConversionError(f"--param {pname}: '{text}' is not a number")
            if not np.isfinite(default):
                raise ConversionError(f"--param {pname}: the default must be finite")
            if pname in chosen:
                chosen[pname][1] = default
            elif len(scalar_names) == 1:
                chosen[scalar_names[0]] = [pname, default]
            else:
                raise ConversionError(f"--param {pname}: the graph has no scalar input of that name "
                                      f"(scalar inputs: {', '.join(scalar_names) or 'none'})")
        for (n, d) in scalars:
            pname, default = chosen[n]
            self.values[n] = Param(pname, d)
            self.param_info[pname] = (n, default)

    # -- node conversion
    def run(self):
        for out in self.g.output:
            self.uses[out.name] = self.uses.get(out.name, 0) + 1
        for node in self.g.node:
            for v in node.input:
                if v:
                    self.uses[v] = self.uses.get(v, 0) + 1
        for node in self.g.node:
            if node.domain not in ("", "ai.onnx"):
                _fail(node, f"op type {node.domain}::{node.op_type} is not supported (supported: {SUPPORTED})")
            ins = []
            for v in node.input:
                if not v:
                    ins.append(None)
                elif v not in self.values:
                    _fail(node, f"input '{v}' is not produced before this node (the graph is not sorted or is incomplete)")
                else:
                    ins.append(self.values[v])
            outs = self.node(node, _attrs(node), ins)
            if not isinstance(outs, list):
                outs = [outs]
            for i, o in enumerate(node.output):
                if not o:
                    continue
                if i < len(outs) and outs[i] is not None:
                    self.values[o] = outs[i]
                elif self.uses.get(o):
                    _fail(node, f"output {i} ('{o}') is used, which format v1 cannot compute")

    def node(self, node, a, ins):
        op = node.op_type
        present = [v for v in ins if v is not None]
        # Constant folding.
        if op == "Constant":
            return Const(self.constant(node, a))
        if present and all(isinstance(v, Const) for v in present):
            try:
                r = _fold(node, a, [v.arr if v is not None else None for v in ins])
            except (ValueError, TypeError, IndexError, KeyError) as e:
                _fail(node, f"cannot evaluate on constant inputs: {e}")
            if r is not None:
                return Const(r)
            if op not in ("Conv", "ConvTranspose", "Relu", "LeakyRelu", "MaxPool", "Dropout"):
                _fail(node, f"op type {op} is not supported (supported: {SUPPORTED})")

        x = ins[0] if ins else None
        for v in ins:
            if isinstance(v, Deferred) and op not in ("Shape", "Size"):
                raise ConversionError(v.message)

        if op in ("Identity", "Dropout"):
            if op == "Dropout":
                mode = ins[2] if len(ins) > 2 else None
                if isinstance(mode, Const) and bool(np.asarray(mode.arr).reshape(-1)[0]):
                    _fail(node, "training_mode=True is not supported (inference only)")
                if mode is not None and not isinstance(mode, Const):
                    _fail(node, "training_mode must be a constant")
            return [x, None]
        if op in ("Shape", "Size"):
            return self.shape_op(node, a, ins)
        if op == "Slice" and isinstance(x, Map):
            # Allowed as long as only its shape is read (torch.ones_like(x[:, :1]) exports this way).
            return Deferred(f"{_where(node)}: slicing feature maps is not supported", self.slice_shape(x, ins))
        if isinstance(x, Map) or (op == "Concat" and any(isinstance(v, Map) for v in present)):
            return self.map_op(node, a, ins)
        if any(isinstance(v, Map) for v in present):
            _fail(node, self.unsupported_on_map(op))
        return self.shape_op(node, a, ins)

    @staticmethod
    def slice_shape(x, ins):
        dims = [1, x.c, x.h, x.w]
        consts = [v.arr.reshape(-1) if isinstance(v, Const) else None for v in ins[1:]]
        if len(consts) < 2 or consts[0] is None or consts[1] is None or any(c is None for c in consts[2:] if c is not None):
            return None
        axes = consts[2] if len(consts) > 2 and consts[2] is not None else range(len(consts[0]))
        steps = consts[3] if len(consts) > 3 and consts[3] is not None else [1] * len(consts[0])
        out = list(dims)
        for s, e, ax, st in zip(consts[0], consts[1], axes, steps):
            ax = int(ax) % 4
            if out[ax] is not None:
                out[ax] = len(range(out[ax])[slice(int(s), int(e), int(st))])
            elif int(st) == 1 and 0 <= int(s) < int(e) < 2 ** 31:
                out[ax] = int(e) - int(s)
        return tuple(out)

    def constant(self, node, a):
        if "value" in a:
            return numpy_helper.to_array(a["value"])
        for k, dt in (("value_float", np.float32), ("value_int", np.int64), ("value_floats", np.float32), ("value_ints", np.int64)):
            if k in a:
                return np.array(a[k], dtype=dt)
        _fail(node, f"attribute {', '.join(a) or '(none)'} is not supported (dense 'value' tensors and value_float(s)/value_int(s) only)")

    @staticmethod
    def unsupported_on_map(op):
        hint = ""
        if op == "Transpose":
            hint = " (NHWC models: export the model in NCHW layout)"
        elif op in ("Add", "Sub", "Mul", "Div", "Sum"):
            hint = " (format v1 has no element-wise arithmetic on feature maps: residual additions cannot be converted)"
        elif op == "BatchNormalization":
            hint = " (fold batch normalisation into the convolution before exporting, e.g. export in eval mode with constant folding)"
        return f"op type {op} is not supported (supported: {SUPPORTED}){hint}"

    # -- ops on feature maps
    def map_op(self, node, a, ins):
        op = node.op_type
        x = ins[0]
        if op == "Conv":
            return self.conv(node, a, ins)
        if op == "ConvTranspose":
            return self.conv_transpose(node, a, ins)
        if op == "Relu":
            return Map(self._add(node, "relu", [x.name]), x.c, x.h, x.w)
        if op == "LeakyRelu":
            # ONNX float attributes are float32: keep the shortest decimal that gives the same float32.
            alpha = float(str(np.float32(a.get("alpha", 0.01))))
            if not np.isfinite(alpha):
                _fail(node, f"attribute alpha={alpha} is not finite")
            return Map(self._add(node, "leaky_relu", [x.name], attrs={"alpha": alpha}), x.c, x.h, x.w)
        if op == "MaxPool":
            return self.maxpool(node, a, x)
        if op == "Concat":
            return self.concat(node, a, ins)
        _fail(node, self.unsupported_on_map(op))

    def _check_attrs(self, node, a, allowed):
        for k in a:
            if k not in allowed:
                _fail(node, f"attribute {k}={a[k]!r} is not supported")

    def _weights(self, node, ins, role_rank=4):
        if len(ins) < 2 or ins[1] is None:
            _fail(node, "needs a weight input")
        w = ins[1]
        if not isinstance(w, Const):
            _fail(node, "the weight must be a constant (an initializer or Constant node)")
        w = w.arr
        if not np.issubdtype(w.dtype, np.floating):
            _fail(node, f"weight has element type {w.dtype}; float16, float32 or float64 weights only")
        if w.ndim != role_rank:
            _fail(node, f"weight shape {list(w.shape)} is not 4-D: only 2-D convolutions are supported")
        b = None
        if len(ins) > 2 and ins[2] is not None:
            if not isinstance(ins[2], Const):
                _fail(node, "the bias must be a constant (an initializer or Constant node)")
            b = ins[2].arr
            if not np.issubdtype(b.dtype, np.floating):
                _fail(node, f"bias has element type {b.dtype}")
        if not np.all(np.isfinite(w)) or (b is not None and not np.all(np.isfinite(b))):
            _fail(node, "weights or bias hold NaN or infinite values")
        return w.astype(np.float64), None if b is None else b.astype(np.float64)

    def conv(self, node, a, ins):
        x = ins[0]
        self._check_attrs(node, a, {"auto_pad", "pads", "strides", "dilations", "group", "kernel_shape"})
        w, b = self._weights(node, ins)
        o, c, kh, kw = w.shape
        if a.get("group", 1) != 1:
            _fail(node, f"attribute group={a['group']} is not supported (format v1 convolutions have group 1)")
        if "kernel_shape" in a and list(a["kernel_shape"]) != [kh, kw]:
            _fail(node, f"attribute kernel_shape={a['kernel_shape']} disagrees with the weight shape {list(w.shape)}")
        strides = list(a.get("strides", [1, 1]))
        if strides != [1, 1]:
            _fail(node, f"attribute strides={strides} is not supported (format v1 convolutions have stride 1)")
        dil = list(a.get("dilations", [1, 1]))
        if dil != [1, 1]:
            _fail(node, f"attribute dilations={dil} is not supported (format v1 convolutions are not dilated)")
        if c != x.c:
            hint = " (is the model NHWC? only NCHW is supported)" if x.name == self.input_name else ""
            _fail(node, f"the weight expects {c} input channels, its input has {x.c}{hint}")
        auto = a.get("auto_pad", "NOTSET")
        modes = []
        for axis, k in ((0, kh), (1, kw)):
            p = (k - 1) // 2
            if auto == "VALID":
                m = {"valid"}
            elif auto == "SAME_UPPER":
                m = {"same"}
            elif auto == "SAME_LOWER":
                if k % 2 == 0:
                    _fail(node, f"attribute auto_pad=SAME_LOWER with the even kernel {kh}x{kw} puts the extra padding "
                                "at the top/left; format v1 'same' puts it at the bottom/right (SAME_UPPER)")
                m = {"same"}
            elif auto == "NOTSET":
                pads = list(a.get("pads", [0, 0, 0, 0]))
                if len(pads) != 4:
                    _fail(node, f"attribute pads={pads} is not 2-D")
                begin, end = pads[axis], pads[axis + 2]
                m = set()
                if begin == 0 and end == 0:
                    m.add("valid")
                if begin == p and end == k - 1 - p:
                    m.add("same")
                if not m:
                    _fail(node, f"attribute pads={pads} is not supported for the {kh}x{kw} kernel: only zero pads "
                                f"('valid') or 'same' pads [{(kh - 1) // 2}, {(kw - 1) // 2}, {kh - 1 - (kh - 1) // 2}, "
                                f"{kw - 1 - (kw - 1) // 2}] (begin (k-1)//2, end the rest)")
            else:
                _fail(node, f"attribute auto_pad={auto} is not supported")
            modes.append(m)
        both = modes[0] & modes[1]
        if not both:
            _fail(node, f"attribute pads={list(a.get('pads', []))} is 'valid' along one axis and 'same' along the other, "
                        "which format v1 cannot express")
        padding = "same" if "same" in both and not (both == {"same", "valid"}) else "valid"
        params = [self._tensor((node.name or node.output[0]) + ".weight", w)]
        if b is not None:
            if b.shape != (o,):
                _fail(node, f"bias shape {list(b.shape)} does not match {o} output channels")
            params.append(self._tensor((node.name or node.output[0]) + ".bias", b))
        h, wd = x.h, x.w
        if padding == "valid":
            h = None if h is None else h - kh + 1
            wd = None if wd is None else wd - kw + 1
            if (h is not None and h < 1) or (wd is not None and wd < 1):
                _fail(node, f"the {kh}x{kw} kernel is larger than its {x.h}x{x.w} input")
        out = self._add(node, "conv2d", [x.name], params, {"padding": padding})
        return Map(out, o, h, wd)

    def conv_transpose(self, node, a, ins):
        x = ins[0]
        self._check_attrs(node, a, {"auto_pad", "pads", "strides", "dilations", "group", "kernel_shape",
                                     "output_padding", "output_shape"})
        w, b = self._weights(node, ins)
        if a.get("group", 1) != 1:
            _fail(node, f"attribute group={a['group']} is not supported (group 1 only)")
        cin, o, kh, kw = w.shape
        if (kh, kw) != (2, 2):
            _fail(node, f"attribute kernel_shape={[kh, kw]} is not supported (format v1 transposed convolutions are 2x2, stride 2)")
        if "kernel_shape" in a and list(a["kernel_shape"]) != [2, 2]:
            _fail(node, f"attribute kernel_shape={a['kernel_shape']} disagrees with the weight shape {list(w.shape)}")
        strides = list(a.get("strides", [1, 1]))
        if strides != [2, 2]:
            _fail(node, f"attribute strides={strides} is not supported (format v1 transposed convolutions are 2x2, stride 2)")
        for k, default in (("pads", [0, 0, 0, 0]), ("output_padding", [0, 0]), ("dilations", [1, 1])):
            v = list(a.get(k, default))
            if any(int(e) != d for e, d in zip(v, default)) or len(v) != len(default):
                _fail(node, f"attribute {k}={v} is not supported (must be {default})")
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            _fail(node, f"attribute auto_pad={a['auto_pad']} is not supported")
        if cin != x.c:
            _fail(node, f"the weight expects {cin} input channels, its input has {x.c}")
        h = None if x.h is None else 2 * x.h
        wd = None if x.w is None else 2 * x.w
        if "output_shape" in a:
            os_ = list(a["output_shape"])[-2:]
            if (h is not None and os_[0] != h) or (wd is not None and os_[1] != wd) or h is None or wd is None:
                _fail(node, f"attribute output_shape={a['output_shape']} is not supported (the output must be twice the input size)")
        params = [self._tensor((node.name or node.output[0]) + ".weight", w.transpose(1, 0, 2, 3))]
        if b is not None:
            if b.shape != (o,):
                _fail(node, f"bias shape {list(b.shape)} does not match {o} output channels")
            params.append(self._tensor((node.name or node.output[0]) + ".bias", b))
        out = self._add(node, "conv_transpose2d", [x.name], params, {"stride": 2})
        return Map(out, o, h, wd)

    def maxpool(self, node, a, x):
        self._check_attrs(node, a, {"auto_pad", "pads", "strides", "dilations", "kernel_shape", "ceil_mode", "storage_order"})
        if list(a.get("kernel_shape", [])) != [2, 2]:
            _fail(node, f"attribute kernel_shape={a.get('kernel_shape')} is not supported (format v1 max-pooling is 2x2, stride 2)")
        if list(a.get("strides", [1, 1])) != [2, 2]:
            _fail(node, f"attribute strides={a.get('strides', [1, 1])} is not supported (format v1 max-pooling is 2x2, stride 2)")
        if any(list(a.get("pads", [0, 0, 0, 0]))):
            _fail(node, f"attribute pads={a['pads']} is not supported (no padding)")
        if list(a.get("dilations", [1, 1])) != [1, 1]:
            _fail(node, f"attribute dilations={a['dilations']} is not supported")
        if a.get("ceil_mode", 0) != 0:
            _fail(node, "attribute ceil_mode=1 is not supported (format v1 pools maps of even size)")
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            _fail(node, f"attribute auto_pad={a['auto_pad']} is not supported")
        for side in (x.h, x.w):
            if side is not None and side % 2:
                _fail(node, f"pools a map of odd size {x.h}x{x.w}")
        out = self._add(node, "maxpool2d", [x.name], attrs={"size": 2})
        return [Map(out, x.c, None if x.h is None else x.h // 2, None if x.w is None else x.w // 2), None]

    def concat(self, node, a, ins):
        axis = a.get("axis")
        if axis not in (1, -3):
            _fail(node, f"attribute axis={axis} is not supported (feature maps concatenate along the channel axis 1)")
        maps = [v for v in ins if isinstance(v, Map)]
        template = maps[0]
        names, channels = [], 0
        for k, v in enumerate(ins):
            if isinstance(v, Const):
                u = _uniform(v.arr)
                if v.arr.ndim != 4 or u is None or not np.isfinite(u):
                    _fail(node, f"input {k} is a constant of shape {list(v.arr.shape)} that is not one uniform channel")
                v = Fill(v.arr.shape, value=u)
            if isinstance(v, Map):
                if (v.h is not None and template.h is not None and v.h != template.h) or \
                   (v.w is not None and template.w is not None and v.w != template.w):
                    _fail(node, f"concatenates maps of sizes {template.h}x{template.w} and {v.h}x{v.w}")
                names.append(v.name)
                channels += v.c
            elif isinstance(v, Fill):
                if len(v.shape) != 4 or v.shape[1] != 1 or v.shape[0] not in (1, None):
                    _fail(node, f"input {k} broadcasts a scalar to shape {list(v.shape)}; format v1 adds one constant channel [1, 1, H, W]")
                for got, want in ((v.shape[2], template.h), (v.shape[3], template.w)):
                    if got is not None and want is not None and got != want:
                        _fail(node, f"input {k} is a constant channel of size {v.shape[2]}x{v.shape[3]}, the maps are {template.h}x{template.w}")
                attrs = {"value": float(v.value) if v.param is None else float(self.param_info[v.param][1])}
                if v.param is not None:
                    attrs["parameter"] = v.param
                names.append(self._add(node, "constant_channel", [template.name], attrs=attrs, suffix=f".const{k}"))
                channels += 1
            elif isinstance(v, Param):
                _fail(node, f"input {k} is the run-time parameter '{v.name}' not broadcast to the map size "
                            "(expected Expand, Tile or ones * parameter first)")
            else:
                _fail(node, f"input {k} is a shape computation, not a feature map")
        out = self._add(node, "concat", names)
        return Map(out, channels, template.h, template.w)

    # -- shape computations, parameters and fills
    def shape_op(self, node, a, ins):
        op = node.op_type
        x = ins[0] if ins else None
        present = [v for v in ins if v is not None]
        if op in ("Shape", "Size"):
            dims = _dims_of(x)
            if dims is None:
                return Dyn(None, scalar=(op == "Size"))
            if op == "Size":
                return Dyn([None], scalar=True) if any(d is None for d in dims) else Const(np.array(int(np.prod(dims)), np.int64))
            s = list(dims)[a.get("start", 0):a.get("end", None)]
            if all(d is not None for d in s):
                return Const(np.array(s, dtype=np.int64))
            return Dyn(s)
        if any(isinstance(v, Param) for v in present) or any(isinstance(v, Fill) for v in present):
            r = self.param_or_fill(node, a, ins)
            if r is not None:
                return r
        if op == "ConstantOfShape":
            v = a.get("value")
            fill = float(numpy_helper.to_array(v).reshape(-1)[0]) if v is not None else 0.0
            target = _as_list(x)
            return Fill(tuple(target) if target is not None else (None,) * 4, value=fill)
        if op == "Expand" and isinstance(x, Const) and x.arr.size == 1:
            target = _as_list(ins[1])
            shape = _expand_shape(x.arr.shape, target) if target is not None else (None,) * 4
            return Fill(shape if shape is not None else (None,) * 4, value=float(x.arr.reshape(-1)[0]))
        return self.dyn_op(node, a, ins)

    def param_or_fill(self, node, a, ins):
        """Reshapes of the parameter, its broadcasts to a constant channel, and ones * parameter."""
        op = node.op_type
        x = ins[0]
        if op in ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Cast", "CastLike", "Identity") and isinstance(x, (Param, Fill)):
            if isinstance(x, Param):
                shape = x.shape
                if op == "Reshape" and isinstance(ins[1], Const):
                    shape = tuple(1 for _ in ins[1].arr.reshape(-1))
                elif op == "Unsqueeze":
                    axes = a.get("axes") or (list(ins[1].arr.reshape(-1)) if len(ins) > 1 and isinstance(ins[1], Const) else None)
                    shape = x.shape + (1,) * len(axes) if axes is not None else x.shape
                elif op == "Squeeze":
                    shape = ()
                elif op == "Flatten":
                    shape = (1, 1)
                return Param(x.name, shape)
            if op in ("Cast", "CastLike", "Identity"):
                return x
            return None
        if op == "Expand" and isinstance(x, (Param, Fill)):
            target = _as_list(ins[1])
            shape = _expand_shape(x.shape, target) if target is not None else None
            return Fill(shape if shape is not None else (None,) * 4, value=getattr(x, "value", None), param=self._pname(x))
        if op == "Tile" and isinstance(x, (Param, Fill)):
            reps = _as_list(ins[1])
            if reps is None or len(reps) != len(x.shape):
                shape = (None,) * max(4, len(x.shape))
            else:
                shape = tuple(None if (d is None or r is None) else d * int(r) for d, r in zip(x.shape, reps))
            return Fill(shape, value=getattr(x, "value", None), param=self._pname(x))
        if op in ("Mul", "Add") and len(ins) == 2:
            p, q = ins
            if isinstance(q, Param) or (isinstance(q, Fill) and q.param is not None):
                p, q = q, p
            # p: parameter (or a fill of it) or a constant fill; q: the other operand.
            qshape = _dims_of(q)
            neutral = 1.0 if op == "Mul" else 0.0
            if isinstance(p, (Param, Fill)) and self._pname(p) is not None:
                qv = _uniform(q.arr) if isinstance(q, Const) else (q.value if isinstance(q, Fill) and q.param is None else None)
                if qv is None:
                    _fail(node, f"combines the run-time parameter '{self._pname(p)}' with a non-constant value; "
                                "only a broadcast to a constant channel (e.g. ones * parameter) is supported")
                if qv != neutral:
                    _fail(node, f"{'scales' if op == 'Mul' else 'offsets'} the run-time parameter '{self._pname(p)}' by {qv}; "
                                "format v1 constant channels hold the parameter itself")
                shape = _broadcast(p.shape, qshape) if qshape is not None else None
                if shape is not None and all(d == 1 for d in shape) and isinstance(p, Param):
                    return Param(p.name, shape)
                return Fill(shape if shape is not None else (None,) * 4, param=p.name if isinstance(p, Param) else p.param)
            # A constant fill times / plus a constant.
            if isinstance(q, Fill) and q.param is None:
                p, q = q, p
            if isinstance(p, Fill) and p.param is None and isinstance(q, Const) and _uniform(q.arr) is not None:
                c = _uniform(q.arr)
                shape = _broadcast(p.shape, q.arr.shape) or (None,) * 4
                return Fill(shape, value=p.value * c if op == "Mul" else p.value + c)
        if any(isinstance(v, Param) for v in ins if v is not None):
            pname = next(v.name for v in ins if isinstance(v, Param))
            _fail(node, f"uses the run-time parameter '{pname}' in a way format v1 cannot express "
                        "(it may only be broadcast to a constant channel and concatenated to feature maps)")
        return None

    @staticmethod
    def _pname(v):
        return v.name if isinstance(v, Param) else v.param

    def dyn_op(self, node, a, ins):
        """Shape arithmetic on partially known scalars and vectors."""
        op = node.op_type
        lists = []
        for v in ins:
            if v is None:
                lists.append(None)
            elif isinstance(v, Fill):
                lists.append(None)  # a fill read as a shape: unknown
            else:
                lists.append(_as_list(v))
        x = lists[0]
        scalar = isinstance(ins[0], Dyn) and ins[0].scalar or (isinstance(ins[0], Const) and ins[0].arr.ndim == 0)
        allowed = {"Gather", "Unsqueeze", "Squeeze", "Reshape", "Cast", "CastLike", "Concat", "Slice", "Add", "Sub",
                   "Mul", "Div", "Equal", "Where", "Floor", "Ceil", "Neg", "Max", "Min", "Identity", "Range"}
        if op not in allowed:
            _fail(node, f"op type {op} is not supported (supported: {SUPPORTED})")
        if op in ("Cast", "CastLike", "Identity", "Floor", "Ceil"):
            return Dyn(x, scalar)
        if op == "Neg":
            return Dyn(None if x is None else [None if e is None else -e for e in x], scalar)
        if op == "Unsqueeze":
            return Dyn(x if x is None or len(x) == 1 else None, scalar=False)
        if op == "Squeeze":
            return Dyn(x if x is not None and len(x) == 1 else None, scalar=x is not None and len(x) == 1)
        if op == "Reshape":
            return Dyn(x, scalar=False) if lists[1] is not None and len(lists[1]) == 1 else Dyn(None)
        if op == "Gather":
            idx = lists[1]
            if x is None or idx is None or any(i is None for i in idx):
                return Dyn(None)
            picked = [x[int(i)] for i in idx]
            return Dyn(picked, scalar=isinstance(ins[1], Const) and ins[1].arr.ndim == 0)
        if op == "Concat":
            out = []
            for v in lists:
                if v is None:
                    return Dyn(None)
                out += v
            return Dyn(out)
        if op == "Slice":
            if x is None or any(l is None or any(e is None for e in l) for l in lists[1:] if l is not None) \
               or lists[1] is None or lists[2] is None:
                return Dyn(None)
            steps = lists[4] if len(lists) > 4 and lists[4] is not None else [1]
            return Dyn(x[int(lists[1][0]):int(lists[2][0]):int(steps[0])])
        if op == "Range":
            return Dyn(None)
        if op == "Where":
            c, p, q = lists
            if c is None or p is None or q is None:
                return Dyn(None)
            n = max(len(c), len(p), len(q))
            c, p, q = [l * n if len(l) == 1 else l for l in (c, p, q)]
            return Dyn([None if ci is None else (pi if ci else qi) for ci, pi, qi in zip(c, p, q)])
        # element-wise binary ops
        y = lists[1] if len(lists) > 1 else None
        if x is None or y is None:
            return Dyn(None)
        n = max(len(x), len(y))
        if len(x) not in (1, n) or len(y) not in (1, n):
            return Dyn(None)
        x, y = (x * n if len(x) == 1 else x), (y * n if len(y) == 1 else y)
        f = {"Add": lambda p, q: p + q, "Sub": lambda p, q: p - q, "Mul": lambda p, q: p * q,
             "Div": lambda p, q: (int(p / q) if isinstance(p, int) and isinstance(q, int) else p / q),
             "Equal": lambda p, q: p == q, "Max": max, "Min": min}[op]
        y_scalar = isinstance(ins[1], Dyn) and ins[1].scalar or (isinstance(ins[1], Const) and ins[1].arr.ndim == 0)
        return Dyn([None if (p is None or q is None) else f(p, q) for p, q in zip(x, y)], scalar and y_scalar)

    # -- output
    def finish(self):
        if len(self.g.output) != 1:
            raise ConversionError(f"the graph has {len(self.g.output)} outputs "
                                  f"({', '.join(o.name for o in self.g.output)}); image restoration needs exactly one")
        oname = self.g.output[0].name
        out = self.values.get(oname)
        if not isinstance(out, Map):
            raise ConversionError(f"graph output '{oname}' is not a feature map computed from the image")
        if not self.nodes:
            raise ConversionError("the graph has no convertible node (its output is its input)")
        # Drop nodes whose results are not used (e.g. a branch only read by Shape).
        used, live = {out.name}, []
        for n in reversed(self.nodes):
            if n["output"] in used:
                live.append(n)
                used.update(n["inputs"])
        self.nodes = list(reversed(live))
        kept = {p for n in self.nodes for p in n["params"]}
        self.tensors = {k: v for k, v in self.tensors.items() if k in kept}
        return out.name


# ---------------------------------------------------------------- geometry (mirror of GraphAnalysis.swift)
def geometry(input_name, nodes, tensors):
    """receptive_field, output_offset and size_multiple of a graph, computed as the Swift
    GraphAnalysis does (the reader refuses a file whose metadata disagrees)."""
    class Axis:
        def __init__(self, s, lo, hi, anchor, constant):
            self.s, self.lo, self.hi, self.anchor, self.constant = s, lo, hi, anchor, constant

        def copy(self):
            return Axis(self.s, self.lo, self.hi, self.anchor, self.constant)

    axes = {input_name: (Axis(1.0, 0.0, 0.0, 0.0, False), Axis(1.0, 0.0, 0.0, 0.0, False))}
    for n in nodes:
        op = n["op"]
        src = axes[n["inputs"][0]]
        if op == "conv2d":
            shape = tensors[n["params"][0]][0].shape

            def conv(a, k):
                r = a.copy()
                if n["attrs"].get("padding", "valid") == "valid":
                    r.hi = a.hi + a.s * (k - 1)
                    r.anchor = a.anchor + a.s * (k - 1) / 2
                else:
                    p = (k - 1) // 2
                    r.lo = a.lo - a.s * p
                    r.hi = a.hi + a.s * (k - 1 - p)
                    r.anchor = a.anchor + a.s * ((k - 1) / 2 - p)
                return r
            ax = (conv(src[0], shape[2]), conv(src[1], shape[3]))
        elif op in ("relu", "leaky_relu"):
            ax = src
        elif op == "maxpool2d":
            ax = tuple(Axis(a.s * 2, a.lo, a.hi + a.s, a.anchor + a.s * 0.5, a.constant) for a in src)
        elif op == "conv_transpose2d":
            ax = tuple(Axis(a.s / 2, a.lo - a.s / 2, a.hi, a.anchor - a.s / 4, a.constant) for a in src)
        elif op == "concat":
            parts = [axes[v] for v in n["inputs"]]
            real = [p for p in parts if not p[0].constant]
            if not real:
                ax = parts[0]
            else:
                y, x = real[0][0].copy(), real[0][1].copy()
                for p in real[1:]:
                    if abs(p[0].s - y.s) > 1e-9 or abs(p[1].s - x.s) > 1e-9:
                        raise ConversionError(f"node '{n['name']}': concat inputs are at different scales")
                    if abs(p[0].anchor - y.anchor) > 1e-9 or abs(p[1].anchor - x.anchor) > 1e-9:
                        raise ConversionError(f"node '{n['name']}': concat inputs are not aligned "
                                              "(a 'valid' branch would need cropping, which format v1 lacks)")
                    y.lo, y.hi = min(y.lo, p[0].lo), max(y.hi, p[0].hi)
                    x.lo, x.hi = min(x.lo, p[1].lo), max(x.hi, p[1].hi)
                ax = (y, x)
        elif op == "constant_channel":
            ay, axx = src[0].copy(), src[1].copy()
            ay.constant = axx.constant = True
            ax = (ay, axx)
        else:  # pragma: no cover
            raise ConversionError(f"internal: unknown op {op}")
        axes[n["output"]] = ax
    return axes


def derived_metadata(input_name, output, nodes, tensors):
    import math
    axes = geometry(input_name, nodes, tensors)
    gy, gx = axes[output]
    if abs(gy.s - 1) > 1e-9 or abs(gx.s - 1) > 1e-9:
        raise ConversionError("the output is not at the input's scale (pooling and upsampling must balance)")
    max_scale = max([1.0] + [max(y.s, x.s) for y, x in axes.values()])
    rf = [int(math.ceil(gy.hi - gy.lo)) + 1, int(math.ceil(gx.hi - gx.lo)) + 1]
    off = [int(math.floor(gy.anchor)), int(math.floor(gx.anchor))]
    return {"receptive_field": rf, "output_offset": off, "size_multiple": int(round(max_scale))}


# ---------------------------------------------------------------- entry points
def convert(path, name=None, params=(), normalization="none", float16=False):
    """Returns (acnn bytes, summary dict)."""
    try:
        model = onnx.load(path)
    except Exception as e:  # noqa: BLE001 (protobuf raises various errors)
        raise ConversionError(f"cannot read {path} as an ONNX model: {type(e).__name__}: {e}")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
        raise ConversionError(f"{os.path.basename(path)} is not a valid ONNX model: {first}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    for o in model.opset_import:
        if o.domain not in ("", "ai.onnx", "ai.onnx.ml"):
            used = any(n.domain == o.domain for n in model.graph.node)
            if used:
                raise ConversionError(f"the model uses operators of the domain '{o.domain}', which is not supported")
    if model.functions:
        raise ConversionError("the model defines local functions, which are not supported (export with functions inlined)")
    cv = _Converter(model, name, list(params), normalization, float16, path)
    cv.inputs()
    cv.run()
    output = cv.finish()
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    base = os.path.basename(path)
    producer = (model.producer_name + " " + model.producer_version).strip() or "unknown"
    metadata = {
        "name": name or os.path.splitext(base)[0],
        "description": "ONNX model converted by tools/onnx2acnn.py",
        "provenance": f"{base} sha256 {digest}",
        "normalization": normalization,
        "onnx.source_file": base,
        "onnx.opset": int(opset) if opset is not None else 0,
        "onnx.producer": producer,
        "onnx.ir_version": int(model.ir_version),
        "converter": f"onnx2acnn {VERSION}",
    }
    if model.doc_string:
        metadata["onnx.doc_string"] = model.doc_string[:4096]
    used_params = {n["attrs"].get("parameter") for n in cv.nodes if n["op"] == "constant_channel"} - {None}
    if used_params:
        metadata["onnx.parameters"] = "; ".join(
            f"{p} <- input '{cv.param_info[p][0]}', default {cv.param_info[p][1]:g}" for p in sorted(used_params))
    metadata.update(derived_metadata(cv.input_name, output, cv.nodes, cv.tensors))
    blob = encode_acnn(metadata, [(cv.input_name, cv.input_channels)], [output], cv.nodes, cv.tensors)
    summary = dict(nodes=len(cv.nodes), tensors=len(cv.tensors), parameters={p: cv.param_info[p] for p in used_params},
                   metadata=metadata)
    return blob, summary


def main(argv=None):
    ap = argparse.ArgumentParser(description="Convert an ONNX image-to-image CNN to .acnn")
    ap.add_argument("model", help="ONNX model file")
    ap.add_argument("-o", "--output", required=True, help="output .acnn file")
    ap.add_argument("--name", help="model name (default: the ONNX file name)")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=DEFAULT",
                    help="default of a run-time parameter (a scalar graph input, e.g. exposure_ratio=1); "
                         "with one scalar input, NAME also renames its parameter. Repeatable.")
    ap.add_argument("--normalization", default="none", choices=["none", "clip_max", "minmax", "meanstd"],
                    help="input normalisation the runtime applies (default none)")
    ap.add_argument("--float16", action="store_true", help="store weights as float16")
    ap.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    args = ap.parse_args(argv)
    if not os.path.exists(args.model):
        print(f"onnx2acnn: error: {args.model}: no such file", file=sys.stderr)
        return 1
    if os.path.exists(args.output) and not args.overwrite:
        print(f"onnx2acnn: error: {args.output} exists (pass --overwrite)", file=sys.stderr)
        return 1
    try:
        blob, summary = convert(args.model, name=args.name, params=args.param, normalization=args.normalization,
                                float16=args.float16)
    except ConversionError as e:
        print("onnx2acnn: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 (one line, never a traceback)
        print(f"onnx2acnn: error: cannot convert {args.model}: {type(e).__name__}: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    tmp = f"{args.output}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, args.output)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        print(f"onnx2acnn: error: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
        return 1
    extra = "".join(f", run-time parameter {p} (input '{i}', default {d:g})" for p, (i, d) in sorted(summary["parameters"].items()))
    print(f"wrote {args.output} ({len(blob)} bytes, {summary['nodes']} nodes{extra})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
