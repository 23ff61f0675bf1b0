"""Load and check ONNX models: clear errors for missing, broken, truncated and dynamic models."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolchain.errors import ConfigError, DynamicShapeError, ModelError
from toolchain.passes.upgrade_model import UpgradeModel

log = logging.getLogger(__name__)

# onnxruntime and qonnx reject IR versions newer than they know; files edgec writes use this one.
SAVE_IR_VERSION = 10


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output with a fully static shape."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, e.g. "float32"
    high: int | None = None  # integer inputs used as indices: valid values are [0, high)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict:
        out = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.high is not None:
            out["high"] = self.high
        return out

    @classmethod
    def from_json(cls, d: Mapping) -> "TensorSpec":
        high = d.get("high")
        return cls(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d["dtype"]),
                   None if high is None else int(high))


class InputShape(tuple):
    """A parsed --input-shape: the dimensions (a tuple) and the element type given with
    ``:dtype`` (e.g. ``input_ids=1,32:int64``), or None when none was given."""

    dtype: str | None

    def __new__(cls, dims, dtype: str | None = None):
        obj = super().__new__(cls, dims)
        obj.dtype = dtype
        return obj

    def __reduce__(self):
        return (InputShape, (tuple(self), self.dtype))


INPUT_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8",
                "bool")


def parse_input_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``name=1,3,224,224`` strings (from --input-shape) into a dict; an element type may
    follow the dimensions (``input_ids=1,32:int64``) and is kept as the value's ``.dtype``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.partition("=")
        dims, _, dtype = dims.partition(":")
        dtype = dtype.strip().lower() or None
        if dtype is not None and dtype not in INPUT_DTYPES:
            raise ConfigError(f"bad --input-shape '{item}': unknown element type '{dtype}'; "
                              f"use one of {', '.join(INPUT_DTYPES)}")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.split(","))
            if any(d <= 0 for d in shape):
                raise ValueError
        except ValueError:
            raise ConfigError(f"bad --input-shape '{item}': expected NAME=D1,D2,...[:dtype] "
                              "with positive integers, e.g. input=1,3,224,224 or "
                              "input_ids=1,32:int64") from None
        shapes[name] = InputShape(shape, dtype)
    return shapes


def load_model(path: Path) -> onnx.ModelProto:
    """Read an ONNX file, turning every way it can be broken into a one-line ModelError."""
    return load_model_upgraded(path)[0]


def load_model_upgraded(path: Path) -> tuple[onnx.ModelProto, bool]:
    """``load_model``, and whether UpgradeModel changed the file's IR version or opsets."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelError(f"model path is not a file: {path}")
    data = path.read_bytes()
    if not data:
        raise ModelError(f"{path} is empty")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelError(f"{path} is not a valid ONNX file (truncated or another format): "
                         f"{type(exc).__name__}") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{path} is not a valid ONNX file: it holds no graph")
    model, changed = _upgrade(model, path)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path} failed the ONNX checker: {first}") from None
    return model, changed


def _upgrade(model: onnx.ModelProto, path: Path) -> tuple[onnx.ModelProto, bool]:
    """What onnxruntime's tools write, made checkable: an old IR version whose initializers
    are not inputs, nodes newer than the opset (toolchain/passes/upgrade_model.py)."""
    try:
        model, changed = UpgradeModel().apply(model)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    if changed:
        log.info("%s upgraded to IR version %d, opset %s", path.name, model.ir_version,
                 ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import))
    return model, changed


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs: graph inputs that are not initializers (old exporters list both)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _dtype_of(type_proto: onnx.TypeProto) -> str:
    elem = type_proto.tensor_type.elem_type
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name


# One input tensor's element limit: larger shapes are a corrupt file or a typo, and would take
# the schedulers into loops over absurd extents.
MAX_INPUT_ELEMENTS = 1 << 31


def fix_input_shapes(model: onnx.ModelProto,
                     overrides: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    """Return a copy whose inputs all have static shapes, with ``overrides`` applied.

    Raises DynamicShapeError naming each input that still has a symbolic or unknown dimension.
    Shapes are then re-inferred so that every intermediate tensor is static too.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inputs = graph_inputs(model)
    names = [i.name for i in inputs]
    for name in overrides:
        if name not in names:
            raise ConfigError(f"--input-shape names '{name}', but the model's inputs are: "
                              + ", ".join(names))
    for inp in inputs:
        if not inp.type.HasField("tensor_type"):
            kind = inp.type.WhichOneof("value") or "untyped"
            readers = [f"'{n.name or f'#{i}'}' ({n.op_type})" for i, n in enumerate(model.graph.node)
                       if inp.name in n.input]
            raise ModelError(f"input '{inp.name}' is a {kind.removesuffix('_type')}, not a tensor"
                             + (f" (read by node {readers[0]})" if readers else "")
                             + "; edgec compiles tensor inputs only")
    dynamic = []
    for inp in inputs:
        dims = inp.type.tensor_type.shape.dim
        if inp.name in overrides:
            shape = overrides[inp.name]
            given = getattr(shape, "dtype", None)
            if given is not None and given != _dtype_of(inp.type):
                raise ConfigError(f"--input-shape {inp.name} says {given}, the model's input is "
                                  f"{_dtype_of(inp.type)}")
            if len(shape) != len(dims) and len(dims) > 0:
                raise ConfigError(f"--input-shape {inp.name} has {len(shape)} dimensions, "
                                  f"the model's input has {len(dims)}")
            del inp.type.tensor_type.shape.dim[:]
            for d in shape:
                inp.type.tensor_type.shape.dim.add().dim_value = d
            continue
        if not inp.type.tensor_type.HasField("shape") or any(
                not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
            shown = [d.dim_param or "?" if not d.HasField("dim_value") else str(d.dim_value)
                     for d in dims]
            guess = [str(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else "1"
                     for d in dims] or ["1"]
            dynamic.append((f"{inp.name}[{','.join(shown)}]", f"{inp.name}={','.join(guess)}"))
    for inp in inputs:
        size = 1
        for d in inp.type.tensor_type.shape.dim:
            size *= max(int(d.dim_value), 1)
        if size > MAX_INPUT_ELEMENTS:
            raise ConfigError(f"input '{inp.name}' has {size} elements, more than the "
                              f"{MAX_INPUT_ELEMENTS} a static plan can hold")
    if dynamic:
        raise DynamicShapeError(
            "input(s) with dynamic dimensions: " + ", ".join(d for d, _ in dynamic)
            + "; give static shapes, e.g. "
            + " ".join(f"--input-shape {g}" for _, g in dynamic))
    # Clear stale intermediate shapes so inference recomputes them from the new inputs.
    if overrides:
        del model.graph.value_info[:]
        for out in model.graph.output:
            if out.type.tensor_type.HasField("shape"):
                out.type.tensor_type.ClearField("shape")
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelError(f"shape inference failed with the given input shapes: {first}") from None
    return model


def input_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The inputs; an integer input that indexes a Gather (token ids into an embedding table)
    gets ``high``, the smallest gathered dimension, so generated inputs stay valid."""
    specs = []
    for i in graph_inputs(model):
        dtype = _dtype_of(i.type)
        high = index_bound(model, i.name) if np.dtype(dtype).kind in "iu" else None
        specs.append(TensorSpec(i.name, tuple(d.dim_value for d in i.type.tensor_type.shape.dim),
                                dtype, high))
    return specs


# ops through which an index tensor keeps its values (on its first input)
_INDEX_PASS = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Transpose",
               "Expand", "Slice", "Tile"}


def index_bound(model: onnx.ModelProto, name: str) -> int | None:
    """The smallest dimension that tensor ``name`` indexes through Gather nodes (following
    shape-only ops), or None if it reaches no Gather whose data shape is known."""
    dims: dict[str, list[int]] = {t.name: list(t.dims) for t in model.graph.initializer}
    for vi in list(model.graph.value_info) + list(model.graph.input):
        if vi.type.tensor_type.HasField("shape"):
            d = [x.dim_value if x.HasField("dim_value") else -1
                 for x in vi.type.tensor_type.shape.dim]
            dims.setdefault(vi.name, d)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            dims.setdefault(n.output[0], list(n.attribute[0].t.dims))
    users: dict[str, list] = {}
    for n in model.graph.node:
        for k, inp in enumerate(n.input):
            users.setdefault(inp, []).append((n, k))
    bounds, todo, seen = [], [name], set()
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        for n, k in users.get(t, []):
            if n.op_type == "Gather" and k == 1:
                axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
                shape = dims.get(n.input[0])
                if shape and -len(shape) <= axis < len(shape) and shape[axis] > 0:
                    bounds.append(shape[axis])
            elif n.op_type in _INDEX_PASS and k == 0:
                todo.extend(n.output)
    return min(bounds) if bounds else None


def output_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    specs = []
    for o in model.graph.output:
        dims = o.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise DynamicShapeError(f"output '{o.name}' has a dynamic shape after shape inference; "
                                    "fix the input shapes with --input-shape")
        specs.append(TensorSpec(o.name, tuple(d.dim_value for d in dims), _dtype_of(o.type)))
    return specs


def random_inputs(specs: Sequence[TensorSpec], seed: int = 0) -> list[np.ndarray]:
    """Seeded inputs: standard normal for floats; integers in [0, high) for an index input
    (``TensorSpec.high``), else in [0, 8)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for s in specs:
        if np.issubdtype(np.dtype(s.dtype), np.floating):
            arrays.append(rng.standard_normal(s.shape).astype(s.dtype))
        elif np.dtype(s.dtype) == np.bool_:
            arrays.append(rng.integers(0, 2, s.shape).astype(bool))
        else:  # an index input: anywhere in its valid range, else a small range
            arrays.append(rng.integers(0, s.high or 8, s.shape).astype(s.dtype))
    return arrays


def _random_tensor(rng, name: str, shape: tuple[int, ...], role: str = "") -> np.ndarray:
    lname = role or name.lower()
    if len(shape) >= 2:  # weights: LeCun-normal, so deep nets neither vanish nor saturate
        fan_in = int(np.prod(shape[1:]))
        return rng.standard_normal(shape) * np.sqrt(1.0 / max(fan_in, 1))
    if "var" in lname:
        return rng.uniform(0.5, 1.5, shape)
    if "scale" in lname or "gamma" in lname:
        return rng.uniform(0.8, 1.2, shape)
    return rng.uniform(-0.1, 0.1, shape)


def randomize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace float weights by seeded random ones of a scale that keeps activations sane.

    Used on the onnx package's light_* models, whose weights are ``ConstantOfShape`` fills:
    each such node (with a constant shape) becomes a random initializer of that shape, and
    float initializers are redrawn the same way.
    """
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    # Batch-norm parameters by role, whatever they are called (a negative variance gives NaN).
    roles = {}
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            for name, role in zip(node.input[1:5], ("scale", "bias", "mean", "var")):
                roles[name] = role
    keep_nodes = []
    new_inits = []
    used_shapes = set()
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in inits:
            shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
            value = _random_tensor(rng, node.output[0], shape,
                                   roles.get(node.output[0], "")).astype(np.float32)
            new_inits.append(numpy_helper.from_array(value, node.output[0]))
            used_shapes.add(node.input[0])
        else:
            keep_nodes.append(node)
    for i, init in enumerate(model.graph.initializer):
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and init.name not in used_shapes:
            value = _random_tensor(rng, init.name, arr.shape, roles.get(init.name, "")).astype(np.float32)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, init.name))
    still_used = {name for n in keep_nodes for name in n.input}
    remaining = [i for i in model.graph.initializer
                 if i.name not in used_shapes or i.name in still_used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(remaining + new_inits)
    del model.graph.node[:]
    model.graph.node.extend(keep_nodes)
    names = {i.name for i in model.graph.initializer}
    graph_ins = [i for i in model.graph.input if i.name not in used_shapes or i.name in names]
    if model.ir_version < 4:  # old IR: every initializer must also be a graph input
        graph_ins += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                      for t in new_inits]
    del model.graph.input[:]
    model.graph.input.extend(graph_ins)
    return model


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Save with an IR version onnxruntime and qonnx accept (see SAVE_IR_VERSION)."""
    if model.ir_version > SAVE_IR_VERSION:
        model.ir_version = SAVE_IR_VERSION
    onnx.save_model(model, str(path))


def output_steps(model: onnx.ModelProto) -> dict[str, float]:
    """Graph outputs produced by a DequantizeLinear with one constant scale: name -> that
    scale (one quantization step). Such outputs are compared with onnxruntime to one step:
    a float difference before the final QuantizeLinear can move a value across a rounding
    boundary (e.g. a fused multiply-add on one side), which is one step, not an error."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in model.graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    producers = {o: n for n in model.graph.node for o in n.output}
    steps = {}
    for out in model.graph.output:
        node = producers.get(out.name)
        if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 2:
            continue
        tensor = inits.get(node.input[1]) or consts.get(node.input[1])
        if tensor is None:
            continue
        scale = numpy_helper.to_array(tensor)
        if scale.size == 1 and float(scale.reshape(())) > 0:
            steps[out.name] = float(scale.reshape(()))
    return steps
