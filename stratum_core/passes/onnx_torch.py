"""ONNX → torch: run an ONNX graph as a torch module, for the pose pass on CUDA without onnxruntime-gpu.

`onnx2torch` would do this but depends on torchvision, which stratum never installs; this is a small
interpreter over the operators the DWPose files (YOLOX-L detector, DWPose-L / RTMPose SimCC model)
are exported with, plus the shape plumbing exporters emit around them. `SUPPORTED_OPS` lists them;
a graph using anything else is refused at load with the missing operators named, never run on the
CPU behind the user's back.

The graph is parsed with the `onnx` package (protobuf only, no runtime). Initializers become buffers,
moved with the module; integer tensors (shapes, axes, indices) stay on the CPU as Python-side
constants, so the shape arithmetic of an exported graph never waits on the GPU.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from stratum_core.errors import InfrastructureError

Tensor = Any  # torch.Tensor; torch is imported lazily


def _torch():
    import torch

    return torch


def _ints(t: Any) -> list[int]:
    """An ONNX int tensor input (shape, axes, pads) as a Python list."""
    if t is None:
        return []
    values = t.tolist() if hasattr(t, "tolist") else t
    return [int(v) for v in values] if isinstance(values, (list, tuple)) else [int(values)]


def _axes(rank: int, axes: Sequence[int]) -> list[int]:
    return [a + rank if a < 0 else a for a in axes]


def _padding(pads: Sequence[int], spatial: int) -> tuple[list[int], bool]:
    """ONNX pads (x1_begin, x2_begin, …, x1_end, …) → symmetric per-dim pads, or asymmetric flag."""
    begin, end = list(pads[:spatial]), list(pads[spatial:])
    return begin, begin != end


def _f_pad_args(pads: Sequence[int], spatial: int) -> list[int]:
    """ONNX pads → F.pad's order (last dim first, begin/end pairs)."""
    out: list[int] = []
    for d in reversed(range(spatial)):
        out += [pads[d], pads[d + spatial]]
    return out


# ---------------------------------------------------------------------- operators
def _conv(x, w, b=None, *, attrs):
    F = _torch().nn.functional
    spatial = w.dim() - 2
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise InfrastructureError(f"Conv auto_pad={attrs['auto_pad']!r} is not supported")
    begin, asymmetric = _padding(pads, spatial)
    if asymmetric:
        x, begin = F.pad(x, _f_pad_args(pads, spatial)), [0] * spatial
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    return conv(x, w, b, stride=attrs.get("strides", 1), padding=begin, dilation=attrs.get("dilations", 1),
                groups=attrs.get("group", 1))


def _conv_transpose(x, w, b=None, *, attrs):
    F = _torch().nn.functional
    spatial = w.dim() - 2
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    begin, asymmetric = _padding(pads, spatial)
    if asymmetric or "output_shape" in attrs:
        raise InfrastructureError("ConvTranspose with asymmetric pads or output_shape is not supported")
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1]
    return fn(x, w, b, stride=attrs.get("strides", 1), padding=begin, output_padding=attrs.get("output_padding", 0),
              groups=attrs.get("group", 1), dilation=attrs.get("dilations", 1))


def _pool(kind: str):
    def run(x, *, attrs):
        F = _torch().nn.functional
        kernel = attrs["kernel_shape"]
        spatial = len(kernel)
        pads = list(attrs.get("pads", [0] * 2 * spatial))
        begin, asymmetric = _padding(pads, spatial)
        if asymmetric:
            value = float("-inf") if kind == "max" else 0.0
            x, begin = F.pad(x, _f_pad_args(pads, spatial), value=value), [0] * spatial
        stride = attrs.get("strides", [1] * spatial)
        ceil = bool(attrs.get("ceil_mode", 0))
        if kind == "max":
            fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1]
            return fn(x, kernel, stride, begin, dilation=attrs.get("dilations", 1), ceil_mode=ceil)
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial - 1]
        return fn(x, kernel, stride, begin, ceil_mode=ceil,
                  count_include_pad=bool(attrs.get("count_include_pad", 0)))
    return run


def _batch_norm(x, scale, bias, mean, var, *, attrs):
    F = _torch().nn.functional
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=attrs.get("epsilon", 1e-5))


def _layer_norm(x, scale, bias=None, *, attrs):
    F = _torch().nn.functional
    axis = attrs.get("axis", -1)
    axis = axis + x.dim() if axis < 0 else axis
    return F.layer_norm(x, x.shape[axis:], scale, bias, eps=attrs.get("epsilon", 1e-5))


def _gemm(a, b, c=None, *, attrs):
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    out = attrs.get("alpha", 1.0) * (a @ b)
    return out if c is None else out + attrs.get("beta", 1.0) * c


def _reduce(name: str):
    def run(x, axes=None, *, attrs):
        torch = _torch()
        dims = _ints(axes) if axes is not None else list(attrs.get("axes", []))
        if not dims:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            dims = list(range(x.dim()))
        keep = bool(attrs.get("keepdims", 1))
        dims = _axes(x.dim(), dims)
        if name == "ReduceMean":
            return x.mean(dim=dims, keepdim=keep)
        if name == "ReduceSum":
            return x.sum(dim=dims, keepdim=keep)
        if name == "ReduceMax":
            return x.amax(dim=dims, keepdim=keep)
        if name == "ReduceMin":
            return x.amin(dim=dims, keepdim=keep)
        if name == "ReduceL2":
            return torch.linalg.vector_norm(x, 2, dim=dims, keepdim=keep)
        raise AssertionError(name)
    return run


def _resize(x, roi=None, scales=None, sizes=None, *, attrs):
    F = _torch().nn.functional
    mode = _text(attrs.get("mode", "nearest"))
    transform = _text(attrs.get("coordinate_transformation_mode", "half_pixel"))
    if sizes is not None and sizes.numel():
        size = _ints(sizes)[2:]
        factor = None
    else:
        size, factor = None, [float(s) for s in scales.tolist()[2:]]
    if mode == "nearest":
        nearest = _text(attrs.get("nearest_mode", "round_prefer_floor"))
        if transform == "asymmetric" and nearest == "floor":
            return F.interpolate(x, size=size, scale_factor=factor, mode="nearest")
        if factor and all(f == int(f) and f >= 1 for f in factor):  # integer up-sampling: every mode agrees
            return F.interpolate(x, size=size, scale_factor=factor, mode="nearest")
        raise InfrastructureError(f"Resize nearest with {transform}/{nearest} is not supported")
    if mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        linear = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
        return F.interpolate(x, size=size, scale_factor=factor, mode=linear,
                             align_corners=transform == "align_corners")
    raise InfrastructureError(f"Resize mode {mode} with {transform} is not supported")


def _upsample(x, scales=None, *, attrs):
    return _resize(x, None, scales if scales is not None else _torch().tensor(attrs["scales"]),
                   attrs={"mode": attrs.get("mode", b"nearest"), "coordinate_transformation_mode": b"asymmetric",
                          "nearest_mode": b"floor"})


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _slice(x, starts=None, ends=None, axes=None, steps=None, *, attrs):
    starts = _ints(starts) if starts is not None else list(attrs["starts"])
    ends = _ints(ends) if ends is not None else list(attrs["ends"])
    axes = _ints(axes) if axes is not None else list(attrs.get("axes", range(len(starts))))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, _axes(x.dim(), axes), steps):
        size = x.shape[axis]
        if step < 0:
            raise InfrastructureError("Slice with a negative step is not supported")
        start = max(0, min(size, start + size if start < 0 else start))
        end = max(0, min(size, end + size if end < 0 else end))
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


def _split(x, split=None, *, attrs, outputs: int):
    axis = attrs.get("axis", 0)
    sizes = _ints(split) if split is not None else list(attrs.get("split", []))
    if not sizes:
        sizes = [x.shape[axis] // outputs] * outputs
    return list(_torch().split(x, sizes, dim=axis))


def _reshape(x, shape, *, attrs):
    target = _ints(shape)
    if not attrs.get("allowzero", 0):
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return x.reshape(target)


def _unsqueeze(x, axes=None, *, attrs):
    dims = _ints(axes) if axes is not None else list(attrs["axes"])
    rank = x.dim() + len(dims)
    for d in sorted(_axes(rank, dims)):
        x = x.unsqueeze(d)
    return x


def _squeeze(x, axes=None, *, attrs):
    dims = _ints(axes) if axes is not None else list(attrs.get("axes", []))
    if not dims:
        return x.squeeze()
    for d in sorted(_axes(x.dim(), dims), reverse=True):
        x = x.squeeze(d)
    return x


def _clip(x, low=None, high=None, *, attrs):
    low = low if low is not None else attrs.get("min")
    high = high if high is not None else attrs.get("max")
    low = float(low) if low is not None else None
    high = float(high) if high is not None else None
    return x.clamp(low, high)


def _gather(x, indices, *, attrs):
    torch = _torch()
    axis = attrs.get("axis", 0)
    axis = axis + x.dim() if axis < 0 else axis
    index = torch.as_tensor(indices, device=x.device).long()
    index = torch.where(index < 0, index + x.shape[axis], index)
    return x.index_select(axis, index.flatten()).reshape((*x.shape[:axis], *index.shape, *x.shape[axis + 1:]))


def _cast(x, *, attrs):
    return x.to(_onnx_dtype(attrs["to"]))


def _onnx_dtype(code: int) -> Any:
    torch = _torch()
    table = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
             9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}
    if code not in table:
        raise InfrastructureError(f"ONNX tensor type {code} is not supported")
    return table[code]


def _constant_of_shape(shape, *, attrs):
    torch = _torch()
    value = attrs.get("value")
    fill = torch.as_tensor(value).flatten()[0] if value is not None else torch.tensor(0.0)
    return torch.full(_ints(shape), fill.item(), dtype=fill.dtype)


def _expand(x, shape, *, attrs):
    target = _ints(shape)
    rank = max(x.dim(), len(target))
    current = [1] * (rank - x.dim()) + list(x.shape)
    target = [1] * (rank - len(target)) + target
    return x.reshape(current).expand([c if t == 1 else t for c, t in zip(current, target)])


def _softmax(x, *, attrs):
    """Opset 13+: along `axis`. Before 13 (default axis 1): over everything from `axis` on, as one row."""
    torch = _torch()
    if attrs.get("_opset", 13) >= 13:
        return torch.softmax(x, dim=attrs.get("axis", -1))
    axis = attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return torch.softmax(x.reshape(int(math.prod(x.shape[:axis])), -1), dim=1).reshape(x.shape)


def _pad(x, pads=None, value=None, axes=None, *, attrs):
    F = _torch().nn.functional
    mode = _text(attrs.get("mode", "constant"))
    if mode != "constant" or axes is not None:
        raise InfrastructureError(f"Pad mode {mode} (or with axes) is not supported")
    pads = _ints(pads) if pads is not None else list(attrs["pads"])
    fill = float(value.item()) if value is not None and value.numel() else float(attrs.get("value", 0.0))
    return F.pad(x, _f_pad_args(pads, x.dim()), value=fill)


def _flatten(x, *, attrs):
    axis = attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(int(math.prod(x.shape[:axis])), -1)


def _hard_sigmoid(x, *, attrs):
    return (attrs.get("alpha", 0.2) * x + attrs.get("beta", 0.5)).clamp(0.0, 1.0)


def _shape(x, *, attrs):
    dims = list(x.shape)[attrs.get("start", 0):attrs.get("end", None)]
    return _torch().tensor(dims, dtype=_torch().int64)


def _range(start, limit, delta, *, attrs):
    return _torch().arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


def _binary(fn: Callable[[Any, Any], Any]):
    def run(a, b, *, attrs):
        return fn(*_same_device(a, b))
    return run


def _same_device(a, b):
    """Integer constants live on the CPU; a 0-d CPU tensor mixes freely, anything else follows the other."""
    if a.device != b.device:
        if a.device.type == "cpu":
            a = a.to(b.device)
        else:
            b = b.to(a.device)
    return a, b


def _variadic(fn):
    def run(*xs, attrs):
        out = xs[0]
        for x in xs[1:]:
            out = fn(*_same_device(out, x))
        return out
    return run


def _concat(*xs, attrs):
    torch = _torch()
    devices = {x.device for x in xs}
    if len(devices) > 1:  # a shape vector next to a device tensor: compute on the device
        target = next(d for d in devices if d.type != "cpu")
        xs = [x.to(target) for x in xs]
    return torch.cat(xs, dim=attrs.get("axis", 0))


def _where(cond, a, b, *, attrs):
    torch = _torch()
    a, b = _same_device(a, b)
    return torch.where(cond.to(a.device), a, b)


def _unary(fn_name: str):
    def run(x, *, attrs):
        return getattr(_torch(), fn_name)(x)
    return run


def _op_table() -> dict[str, Callable[..., Any]]:
    torch = _torch()
    F = torch.nn.functional
    return {
        "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul),
        "Div": _binary(lambda a, b: torch.div(a, b, rounding_mode="trunc") if not a.is_floating_point()
                       else torch.div(a, b)),
        "Pow": _binary(torch.pow), "MatMul": _binary(torch.matmul),
        "Equal": _binary(torch.eq), "Less": _binary(torch.lt), "Greater": _binary(torch.gt),
        "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum), "Sum": _variadic(torch.add),
        "Relu": lambda x, *, attrs: F.relu(x), "Sigmoid": _unary("sigmoid"), "Tanh": _unary("tanh"),
        "Exp": _unary("exp"), "Log": _unary("log"), "Sqrt": _unary("sqrt"), "Neg": _unary("neg"),
        "Erf": _unary("erf"), "Abs": _unary("abs"), "Reciprocal": _unary("reciprocal"),
        "Floor": _unary("floor"), "Ceil": _unary("ceil"), "Not": _unary("logical_not"),
        "LeakyRelu": lambda x, *, attrs: F.leaky_relu(x, attrs.get("alpha", 0.01)),
        "HardSigmoid": _hard_sigmoid, "HardSwish": lambda x, *, attrs: F.hardswish(x),
        "Softmax": _softmax, "Identity": lambda x, *, attrs: x, "Dropout": lambda x, *args, attrs: x,
        "Pad": _pad,
        "Conv": _conv, "ConvTranspose": _conv_transpose, "BatchNormalization": _batch_norm,
        "LayerNormalization": _layer_norm, "Gemm": _gemm,
        "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
        "GlobalAveragePool": lambda x, *, attrs: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
        "GlobalMaxPool": lambda x, *, attrs: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
        "ReduceMean": _reduce("ReduceMean"), "ReduceSum": _reduce("ReduceSum"), "ReduceMax": _reduce("ReduceMax"),
        "ReduceMin": _reduce("ReduceMin"), "ReduceL2": _reduce("ReduceL2"),
        "Resize": _resize, "Upsample": _upsample,
        "Concat": _concat, "Split": _split, "Slice": _slice, "Reshape": _reshape, "Flatten": _flatten,
        "Transpose": lambda x, *, attrs: x.permute(*(attrs.get("perm") or reversed(range(x.dim())))),
        "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Clip": _clip, "Gather": _gather, "Cast": _cast,
        "Shape": _shape, "ConstantOfShape": _constant_of_shape, "Expand": _expand, "Where": _where,
        "Range": _range,
    }


# The operators this module runs (besides `Constant`, folded at load).
SUPPORTED_OPS: frozenset[str] = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "MatMul", "Equal", "Less", "Greater", "Max", "Min", "Sum", "Relu", "Sigmoid",
    "Tanh", "Exp", "Log", "Sqrt", "Neg", "Erf", "Abs", "Reciprocal", "Floor", "Ceil", "Not", "LeakyRelu",
    "HardSigmoid", "HardSwish", "Softmax", "Identity", "Conv", "ConvTranspose", "BatchNormalization",
    "LayerNormalization", "Gemm", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean",
    "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "Resize", "Upsample", "Concat", "Split", "Slice", "Reshape",
    "Flatten", "Transpose", "Unsqueeze", "Squeeze", "Clip", "Gather", "Cast", "Shape", "ConstantOfShape", "Expand",
    "Where", "Range", "Constant", "Pad", "Dropout",
})


# ---------------------------------------------------------------------- the module
def load_onnx(path: Path) -> Any:
    """The ModelProto of `path` (external data included); InfrastructureError for anything else."""
    try:
        import onnx
    except ImportError as exc:
        raise InfrastructureError("the pose pass's torch backend reads the ONNX files with the `onnx` package: "
                                  "pip install onnx (or `pip install 'stratum[pose]'`)") from exc
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises its own DecodeError types
        raise InfrastructureError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from exc


def unsupported_ops(model: Any) -> list[str]:
    """Operators of the main graph (default domain) this module cannot run, sorted; [] when all run."""
    found = {(n.domain or "", n.op_type) for n in model.graph.node}
    return sorted(f"{d}:{op}" if d not in ("", "ai.onnx") else op for d, op in found
                  if d not in ("", "ai.onnx") or op not in SUPPORTED_OPS)


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper, numpy_helper

    attrs = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if hasattr(value, "dims") and hasattr(value, "data_type"):  # a TensorProto
            value = numpy_helper.to_array(value)
        attrs[a.name] = list(value) if isinstance(value, (list, tuple)) or type(value).__name__.startswith("Repeated") \
            else value
    return attrs


def build_module(model: Any, path: Path | str = "<graph>") -> Any:
    """An `OnnxModule` (a torch.nn.Module) running `model`'s main graph; unsupported operators raise."""
    missing = unsupported_ops(model)
    if missing:
        raise InfrastructureError(
            f"{path}: the torch pose backend cannot run ONNX operator(s) {', '.join(missing)}; "
            "use --pose-backend onnxruntime (onnxruntime-gpu on CUDA)")
    return _module_class()(model)


def _module_class():
    torch = _torch()

    class OnnxModule(torch.nn.Module):
        """Interprets the graph node by node; float constants are buffers, integer ones CPU tensors."""

        def __init__(self, model: Any):
            super().__init__()
            from onnx import numpy_helper

            graph = model.graph
            self._ops = _op_table()
            opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
            self._consts: dict[str, Any] = {}  # name → buffer attribute name or CPU tensor
            self._cpu: dict[str, Any] = {}
            for i, init in enumerate(graph.initializer):
                self._add_constant(init.name, numpy_helper.to_array(init), i)
            initialised = {i.name for i in graph.initializer}
            self.input_names = [i.name for i in graph.input if i.name not in initialised]
            self.output_names = [o.name for o in graph.output]
            self._nodes: list[tuple[str, list[str], list[str], dict[str, Any]]] = []
            for j, node in enumerate(graph.node):
                attrs = _attributes(node)
                if node.op_type == "Softmax":
                    attrs["_opset"] = opset  # its meaning changed at opset 13
                if node.op_type == "Constant":
                    value = attrs.get("value")
                    if value is None:
                        value = next(np.asarray(v) for k, v in attrs.items() if k.startswith("value"))
                    self._add_constant(node.output[0], np.asarray(value), len(graph.initializer) + j)
                    continue
                self._nodes.append((node.op_type, list(node.input), list(node.output), attrs))
            # Values die after their last reader: an interpreter that kept every intermediate would hold
            # a whole forward's activations at once (GBs per image for YOLOX-L), not the live ones.
            last_use: dict[str, int] = {}
            for j, (_op, names, _outputs, _attrs) in enumerate(self._nodes):
                for n in names:
                    last_use[n] = j
            keep = set(self.output_names) | set(self._consts) | set(self._cpu)
            self._free_after: list[list[str]] = [[] for _ in self._nodes]
            for n, j in last_use.items():
                if n and n not in keep:
                    self._free_after[j].append(n)

        def _add_constant(self, name: str, array: np.ndarray, index: int) -> None:
            tensor = torch.from_numpy(np.array(array, copy=True))
            if tensor.is_floating_point():
                attr = f"_const{index}"
                self.register_buffer(attr, tensor, persistent=False)
                self._consts[name] = attr
            else:
                self._cpu[name] = tensor

        def forward(self, *inputs: Any) -> tuple[Any, ...]:
            env: dict[str, Any] = dict(self._cpu)
            env.update({name: getattr(self, attr) for name, attr in self._consts.items()})
            env.update(zip(self.input_names, inputs))
            for (op, names, outputs, attrs), dead in zip(self._nodes, self._free_after):
                args = [env[n] if n else None for n in names]
                while args and args[-1] is None:
                    args.pop()
                fn = self._ops[op]
                result = fn(*args, attrs=attrs, outputs=len(outputs)) if op == "Split" else fn(*args, attrs=attrs)
                del args
                for name, value in zip(outputs, result if isinstance(result, list) else [result]):
                    env[name] = value
                for name in dead:
                    env.pop(name, None)
            return tuple(env[n] for n in self.output_names)

    return OnnxModule


def declared_shapes(model: Any) -> tuple[list[Any], list[list[Any]]]:
    """(input shape, output shapes) as declared in the file: ints, or None where symbolic."""
    def dims(value_info: Any) -> list[Any]:
        return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]

    initialised = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialised]
    return (dims(inputs[0]) if inputs else []), [dims(o) for o in model.graph.output]


class TorchOnnxModel:
    """An ONNX file run by torch, with `dwpose.OnnxModel`'s interface: names, shapes, batch-aware `run`.

    A file that declares a fixed batch (the DWPose exports say 1) is tried at batch 2 at load: when
    the two images of that batch come out as they do one by one, the batch is free (torch does not
    hold the file to its declared batch the way onnxruntime does); otherwise the file's batch is kept.
    """

    def __init__(self, path: Path, device: str, precision: str = "fp32"):
        import torch

        from stratum_core.passes.torch_utils import torch_dtype

        self.path = Path(path)
        model = load_onnx(self.path)
        self.input_shape, self.output_shapes = declared_shapes(model)
        self.device = device
        self.dtype = torch_dtype(precision)
        self.module = build_module(model, self.path).to(device=device, dtype=self.dtype).eval()
        if len(self.module.input_names) != 1 or len(self.input_shape) != 4:
            raise InfrastructureError(f"{self.path}: expected one NCHW image input, found {self.module.input_names}")
        self.input_name = self.module.input_names[0]
        self.output_names = list(self.module.output_names)
        declared = self.input_shape[0] if isinstance(self.input_shape[0], int) and self.input_shape[0] > 0 else None
        self.declared_batch = declared
        self.fixed_batch = declared
        if declared is not None and all(isinstance(d, int) and d > 0 for d in self.input_shape[1:]):
            with torch.inference_mode():
                self.fixed_batch = None if self._batches_freely() else declared

    @property
    def providers(self) -> list[str]:
        return [f"torch ({self.device}, {str(self.dtype).removeprefix('torch.')})"]

    def _forward(self, batch: Any) -> list[Any]:
        return [o.float() for o in self.module(batch.to(device=self.device, dtype=self.dtype))]

    def _batches_freely(self) -> bool:
        """Whether two images in one call give what each gives alone (a file may bake batch 1 into a reshape)."""
        import torch

        generator = torch.Generator().manual_seed(0)
        pair = torch.rand((2, *self.input_shape[1:]), generator=generator) * 255
        try:
            together = self._forward(pair)
        except RuntimeError:
            return False
        alone = [self._forward(pair[i:i + 1]) for i in range(2)]
        for j, out in enumerate(together):
            if out.shape[0] != 2:
                return False
            for i in range(2):
                if not torch.allclose(out[i:i + 1], alone[i][j], rtol=1e-3, atol=1e-4):
                    return False
        return True

    def run(self, batch: np.ndarray, max_batch: int) -> list[np.ndarray]:
        """(N, C, H, W) float32 → every output concatenated over N, as float32 numpy arrays."""
        import torch

        from stratum_core.passes.torch_utils import to_device

        step = self.fixed_batch or max(1, max_batch)
        parts: list[list[np.ndarray]] = []
        with torch.inference_mode():
            for start in range(0, len(batch), step):
                chunk = torch.from_numpy(np.ascontiguousarray(batch[start:start + step]))
                outputs = self._forward(to_device(chunk, self.device))
                parts.append([o.cpu().numpy() for o in outputs])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(self.output_names))]
