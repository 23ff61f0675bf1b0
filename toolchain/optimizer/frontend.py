"""ONNX -> TVM Relax import, with what the targets cannot take reported by node first.

Before TVM sees the model, ``check_model`` refuses (as UnsupportedOpError naming the node and
the op): ops the importer lacks, custom domains, tensor types the C driver cannot describe
(bfloat16, float8, int4, strings...), shapes computed from run-time values, and the
(op, attribute) combinations TVM is known to compute wrongly (``KNOWN_WRONG``). After the
import, ``LegalizeOps`` runs once on a copy as a probe: an op TVM has no kernel for, or whose
kernel TVM fails to build, is traced back to its ONNX node. Any other TVM error becomes a
one-line ModelError. A wrong answer is worse than a refusal, so doubt means refuse.

``refusals`` runs the same checks and probes without stopping: every refused node with its
reason (what ``Backend.support`` reports, partitioner-style, before any slow step).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import helper

from toolchain.errors import ModelError, UnsupportedOpError
from toolchain.onnx_io import graph_inputs

log = logging.getLogger(__name__)

# Ops TVM's importer knows but whose output shape depends on the data: a static plan
# (no runtime, no heap) cannot hold them.
DATA_DEPENDENT_OPS = frozenset({
    "NonZero", "Unique", "NonMaxSuppression", "AllClassNMS", "Compress",
    "ConcatFromSequence", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SplitToSequence", "Optional", "OptionalGetElement",
    "OptionalHasElement",
})

# Element types the generated C driver (DLPack descriptors) and the kernels handle.
SUPPORTED_ELEM_TYPES = frozenset({
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
    onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32,
    onnx.TensorProto.INT64, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
    onnx.TensorProto.UINT32, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL,
})

# Inputs (by position) that decide an op's output shape: from a run-time value, the shape
# depends on the data and a static plan cannot hold it.
SHAPE_INPUTS = {
    "Slice": (1, 2, 3, 4), "Reshape": (1,), "Expand": (1,), "Tile": (1,),
    "ConstantOfShape": (0,), "Pad": (1, 3), "TopK": (1,), "OneHot": (1,), "Range": (0, 1, 2),
    "Squeeze": (1,), "Unsqueeze": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "Split": (1,),
    "CenterCropPad": (1,), "Col2Im": (1, 2),
}
# Ops whose output depends only on their input's shape, not its values.
_SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _used_outputs(model: onnx.ModelProto, node: onnx.NodeProto) -> list[int]:
    """Positions of ``node``'s outputs that a later node or the graph reads."""
    read = {n for other in model.graph.node for n in other.input}
    read |= {o.name for o in model.graph.output}
    return [i for i, name in enumerate(node.output) if name and name in read]


# (op, when, why): TVM 0.27's importer accepts these and computes something else.
KNOWN_WRONG: list[tuple[str, Callable[[onnx.ModelProto, onnx.NodeProto], bool], str]] = [
    ("IsInf", lambda m, n: not _attr(n, "detect_positive", 1) and not _attr(n, "detect_negative", 1),
     "detect_positive=0 with detect_negative=0 (TVM's isinf detects both signs)"),
    ("LayerNormalization", lambda m, n: any(i > 0 for i in _used_outputs(m, n)),
     "its Mean and InvStdDev outputs are read (TVM's importer returns 0 for them)"),
    ("SpaceToDepth", lambda m, n: _attr(n, "mode", b"DCR") not in (b"DCR", "DCR"),
     "mode CRD (TVM's importer only does DCR)"),
    # RemoveDropout takes out every Dropout that drops nothing; one left may run in training
    # mode, where it drops at random (TVM's importer computes the identity).
    ("Dropout", lambda m, n: True,
     "training_mode is not a constant false and the ratio not a constant 0, so it may drop "
     "at random"),
]


def supported_ops() -> frozenset[str]:
    """The ONNX op types the TVM importer converts and a static plan can hold."""
    from tvm.relax.frontend.onnx import onnx_frontend

    return frozenset(onnx_frontend._get_convert_map()) - DATA_DEPENDENT_OPS


def node_label(node: onnx.NodeProto, idx: int) -> str:
    return node.name or f"#{idx}"


# A refused node: its index in the graph and why (each check below yields them in order).
Refusal = tuple[int, str]


def _raise_first(model: onnx.ModelProto, target: str, found: Iterator[Refusal]) -> None:
    for idx, detail in found:
        node = model.graph.node[idx]
        raise UnsupportedOpError(node.op_type, node_label(node, idx), target, detail)


def op_refusals(model: onnx.ModelProto) -> Iterator[Refusal]:
    """Nodes whose op the importer cannot take."""
    ok = supported_ops()
    for idx, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx"):
            yield idx, f"custom domain '{node.domain}'"
        elif node.op_type not in ok:
            yield idx, ("its output shape depends on the data" if node.op_type in DATA_DEPENDENT_OPS
                        else "TVM's ONNX importer has no converter for it")


def check_ops(model: onnx.ModelProto, target: str) -> None:
    """Raise UnsupportedOpError for the first node whose op the importer cannot take."""
    _raise_first(model, target, op_refusals(model))


def _type_name(elem: int) -> str:
    return onnx.TensorProto.DataType.Name(elem).lower()


def dtype_refusals(model: onnx.ModelProto) -> Iterator[Refusal]:
    """Nodes with a tensor whose element type edgec cannot compute with."""
    g = model.graph
    types = _elem_types(model)
    for idx, node in enumerate(g.node):
        found = [(f"input '{n}'", types[n]) for n in node.input if n in types]
        found += [(f"output '{n}'", types[n]) for n in node.output if n in types]
        for key in ("to", "output_dtype", "dtype"):
            to = _attr(node, key)
            if isinstance(to, int) and to:
                found.append((f"attribute {key}", to))
        value = _attr(node, "value")
        if isinstance(value, onnx.TensorProto):
            found.append(("value", value.data_type))
        for what, elem in found:
            if elem not in SUPPORTED_ELEM_TYPES:
                kind = "not a tensor" if elem == -1 else f"type {_type_name(elem)}"
                yield idx, f"{what} is {kind}, which edgec's targets do not support"
                break


def io_dtype_problems(model: onnx.ModelProto) -> list[str]:
    """Graph inputs and outputs of a type edgec's targets cannot take (whole-graph problems)."""
    types = _elem_types(model)
    found = []
    for vi in [*graph_inputs(model), *model.graph.output]:
        elem = types[vi.name]
        if elem not in SUPPORTED_ELEM_TYPES:
            kind = "not a tensor" if elem == -1 else f"type {_type_name(elem)}"
            found.append(f"graph input or output '{vi.name}' is {kind}, which edgec's "
                         "targets do not support")
    return found


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    for vi in [*graph_inputs(model), *g.value_info, *g.output]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
        elif vi.type.WhichOneof("value"):
            types[vi.name] = -1  # sequence, map, optional
    return types


def check_dtypes(model: onnx.ModelProto, target: str) -> None:
    """Refuse tensors whose element type edgec cannot compute with, naming who has them."""
    _raise_first(model, target, dtype_refusals(model))
    for problem in io_dtype_problems(model):  # read or written by no node
        raise ModelError(problem)


def shape_refusals(model: onnx.ModelProto) -> Iterator[Refusal]:
    """Ops whose output shape is computed from a run-time value (a graph input, or anything
    derived from one other than through Shape/Size)."""
    runtime = {i.name for i in graph_inputs(model)}
    for idx, node in enumerate(model.graph.node):
        for pos in SHAPE_INPUTS.get(node.op_type, ()):
            if pos < len(node.input) and node.input[pos] in runtime:
                yield idx, (f"input {pos} ('{node.input[pos]}') is a run-time value, so the "
                            "output shape depends on the data")
                break
        if node.op_type not in _SHAPE_ONLY_OPS and any(i in runtime for i in node.input):
            runtime.update(o for o in node.output if o)


def check_static_shapes(model: onnx.ModelProto, target: str) -> None:
    """Refuse the first op whose output shape is computed from a run-time value."""
    _raise_first(model, target, shape_refusals(model))


def known_wrong_refusals(model: onnx.ModelProto) -> Iterator[Refusal]:
    for idx, node in enumerate(model.graph.node):
        for op, when, why in KNOWN_WRONG:
            if node.op_type == op and when(model, node):
                yield idx, f"{why}; refused rather than computed wrongly"
                break


def check_known_wrong(model: onnx.ModelProto, target: str) -> None:
    _raise_first(model, target, known_wrong_refusals(model))


_SCATTERS = frozenset({"ScatterElements", "ScatterND", "Scatter"})


def check_scatter_indices(model: onnx.ModelProto, target: str) -> None:
    """TVM's scatter kernels write wherever an index points, with no bounds check. Constant
    indices are checked here (one outside the data is a ModelError); indices computed at run
    time are refused, except on a language model's cache inputs (``past_*``), whose writes
    the kv_cache stage replaces by a bounds-checked kernel."""
    for idx, detail, outside in _scatter_problems(model):
        node = model.graph.node[idx]
        if outside:
            raise ModelError(f"node {node_label(node, idx)} ({node.op_type}): {detail}")
        raise UnsupportedOpError(node.op_type, node_label(node, idx), target, detail)


def scatter_refusals(model: onnx.ModelProto) -> Iterator[Refusal]:
    for idx, detail, _ in _scatter_problems(model):
        yield idx, detail


def _scatter_problems(model: onnx.ModelProto) -> Iterator[tuple[int, str, bool]]:
    """(index, why, whether an index lies outside the data) for each refused scatter."""
    from onnx import numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    consts.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    inputs = {v.name for v in model.graph.input}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.input) + list(model.graph.value_info)}
    for idx, node in enumerate(model.graph.node):
        if node.op_type not in _SCATTERS or len(node.input) < 2:
            continue
        data, indices = node.input[0], node.input[1]
        if indices not in consts:
            if data in inputs and data.startswith("past_"):
                continue
            yield (idx, "its indices are computed at run time and TVM's scatter kernel "
                   "does not bound-check them", False)
            continue
        shape = shapes.get(data)
        if not shape or not all(shape):
            continue
        ind = numpy_helper.to_array(consts[indices]).astype(np.int64)
        if node.op_type == "ScatterND":
            bounds = np.array(shape[:ind.shape[-1]], np.int64)
        else:
            axis = int(_attr(node, "axis", 0)) % len(shape)
            bounds = np.int64(shape[axis])
        if ind.size and (np.any(ind < -bounds) or np.any(ind >= bounds)):
            yield idx, f"an index lies outside the data's shape {shape}", True


def check_model(model: onnx.ModelProto, target: str) -> None:
    """Everything refused before TVM sees the model (UnsupportedOpError or ModelError)."""
    check_ops(model, target)
    check_dtypes(model, target)
    check_static_shapes(model, target)
    check_known_wrong(model, target)
    check_scatter_indices(model, target)


@contextlib.contextmanager
def _quiet():
    """TVM's importer prints to stdout when a converter fails; keep the CLI's one line. TVM's
    C++ warnings that edgec has answered stay off stderr too (toolchain/tvm_log.py)."""
    from toolchain.tvm_log import known_warnings_filtered

    with contextlib.redirect_stdout(io.StringIO()), known_warnings_filtered():
        yield


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # TVM's errors end with the message after a C++ traceback
    return next((ln for ln in reversed(lines) if "Error" in ln or "Check failed" in ln),
                lines[-1])


def _failing_node(exc: BaseException) -> onnx.NodeProto | None:
    """The ONNX node TVM's importer was converting when ``exc`` was raised."""
    tb = exc.__traceback__
    found = None
    while tb is not None:
        node = tb.tb_frame.f_locals.get("node")
        if tb.tb_frame.f_code.co_name == "_construct_nodes" and isinstance(node, onnx.NodeProto):
            found = node
        tb = tb.tb_next
    return found


def _label_of(model: onnx.ModelProto, node: onnx.NodeProto) -> str:
    for idx, n in enumerate(model.graph.node):
        if n is node or n == node:
            return node_label(n, idx)
    return node.name or "?"


def _from_onnx(model: onnx.ModelProto):
    from tvm.relax.frontend.onnx import from_onnx

    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in graph_inputs(model)}
    dtypes = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name
              for i in graph_inputs(model)}
    with _quiet():
        # sanitize_input_names=False keeps the ONNX input names as the Relax parameter names.
        return from_onnx(model, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False,
                         sanitize_input_names=False)


def _unlowered_ops(mod) -> list[str]:
    """Relax operators left in ``main`` after legalization (no kernel for them)."""
    import tvm
    from tvm import relax

    left = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            if expr.op.name not in _BUILTIN_OPS:
                left.append(expr.op.name)

    relax.analysis.post_order_visit(mod["main"], visit)
    return left


# Relax ops that remain after legalization and that the plan handles itself.
_BUILTIN_OPS = frozenset({"relax.call_tir", "relax.null_value", "relax.shape_of",
                          "relax.call_pure_packed", "relax.call_tir_inplace"})


def _probe(mod) -> str | None:
    """Legalize a copy of ``mod``: None if every op gets a kernel, else why not."""
    from tvm import relax

    try:
        with _quiet():
            legal = relax.transform.LegalizeOps()(mod)
    except Exception as exc:  # TVM raises InternalError, AssertionError, TypeError...
        return f"TVM cannot build its kernel: {_first_line(exc)}"
    left = _unlowered_ops(legal)
    return f"TVM has no kernel for {left[0]}" if left else None


def _single_node_model(model: onnx.ModelProto, node: onnx.NodeProto) -> onnx.ModelProto | None:
    """``node`` alone, its inputs graph inputs (or the initializers they are), for a probe."""
    g = model.graph
    infos = {v.name: v for v in [*g.input, *g.value_info, *g.output]}
    inits = {t.name: t for t in g.initializer}
    ins, init = [], []
    for name in node.input:
        if not name:
            continue
        if name in inits:
            init.append(inits[name])
        elif name in infos and infos[name].type.HasField("tensor_type"):
            ins.append(infos[name])
        else:
            return None
    outs = [infos[o] for o in node.output if o and o in infos]
    if len(outs) != len([o for o in node.output if o]):
        return None
    sub = helper.make_graph([node], "probe", ins, outs, init)
    return helper.make_model(sub, opset_imports=list(model.opset_import),
                             ir_version=model.ir_version)


def _probe_key(node: onnx.NodeProto, sub: onnx.ModelProto) -> bytes:
    """What a node's probe depends on: the node without its names, its inputs' types and
    shapes, and its constant inputs (nodes alike in all these probe alike)."""
    bare = onnx.NodeProto()
    bare.CopyFrom(node)
    bare.ClearField("name")
    del bare.input[:], bare.output[:]
    g = sub.graph
    parts = [bare.SerializeToString()]
    parts += [v.type.SerializeToString() for v in [*g.input, *g.output]]
    parts += [t.SerializeToString() for t in g.initializer]
    return b"\0".join(parts)


def probe_refusals(model: onnx.ModelProto, skip: frozenset[int] = frozenset()
                   ) -> Iterator[Refusal]:
    """Nodes (other than ``skip``) that TVM cannot import or legalize on their own.

    A node with a subgraph, or whose tensors have no known type, is not probed alone; nodes
    alike (same op, attributes, types and constants) are probed once.
    """
    seen: dict[bytes, str | None] = {}
    for idx, node in enumerate(model.graph.node):
        if idx in skip or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                              for a in node.attribute):
            continue
        sub = _single_node_model(model, node)
        if sub is None:
            continue
        key = _probe_key(node, sub)
        if key not in seen:
            try:
                with warnings.catch_warnings():  # the importer warns of missing shapes
                    warnings.simplefilter("ignore")
                    seen[key] = _probe(_from_onnx(sub))
            except Exception as exc:  # the importer raises assorted errors
                seen[key] = _first_line(exc)
        if seen[key]:
            yield idx, seen[key]


def locate(model: onnx.ModelProto, target: str, failed: str) -> None:
    """Raise UnsupportedOpError for the first node that fails the probe on its own, else a
    ModelError with ``failed``."""
    _raise_first(model, target, probe_refusals(model))
    raise ModelError(f"TVM cannot compile the model: {failed}")


def output_dtype_problems(model: onnx.ModelProto, mod) -> list[str]:
    """Graph outputs whose element type in TVM's import differs from the ONNX declaration (one
    line each). A mismatch would otherwise surface only at run time, as a wrong-size read of
    the output (a float mask for Dropout's bool mask was one)."""
    ret = mod["main"].ret_ty
    got = list(getattr(ret, "fields", None) or [ret])
    outs = list(model.graph.output)
    if len(got) != len(outs):
        return [f"TVM's import returns {len(got)} outputs, the model declares {len(outs)}"]
    problems = []
    for out, ty in zip(outs, got):
        elem = out.type.tensor_type.elem_type
        dtype = getattr(ty, "dtype", None)
        if not elem or dtype is None:
            continue
        want = np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name
        if str(dtype) != want:
            problems.append(f"output '{out.name}' is declared {want} but TVM's import computes "
                            f"it as {dtype}")
    return problems


# The import refusals() made and found whole (every check passed, every op legalized), kept for
# the compile that follows it (edgec compile asks the backend's support first): import_onnx
# takes it once for the same model instead of importing and legalizing it a second time.
_CHECKED_IMPORT: dict = {}


def _fingerprint(model: onnx.ModelProto) -> str:
    import hashlib

    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def refusals(model: onnx.ModelProto) -> tuple[dict[int, str], list[str]]:
    """Everything ``import_onnx`` refuses, without stopping at the first: node index -> why
    (the first reason per node), and the problems of the graph as a whole.

    ``model`` is what ``import_onnx`` would get (cleanup passes applied). The checks before
    TVM run on every node; when they pass, the whole graph is imported and legalized once
    (no kernel is built); when anything failed, each remaining node is probed on its own.
    """
    from toolchain.passes.expand_int4 import ExpandInt4Weights
    from toolchain.passes import transform

    model = transform(model, [ExpandInt4Weights()])
    found: dict[int, str] = {}
    for check in (op_refusals, dtype_refusals, shape_refusals, known_wrong_refusals,
                  scatter_refusals):
        for idx, why in check(model):
            found.setdefault(idx, why)
    graph = io_dtype_problems(model)
    failed = None
    _CHECKED_IMPORT.clear()
    if not found and not graph:
        try:
            mod = _from_onnx(model)
            failed = _probe(mod)
            graph += [] if failed else output_dtype_problems(model, mod)
            if graph:
                return found, graph
        except Exception as exc:  # the importer raises assorted errors for odd attributes
            failed = f"TVM could not import the model: {_first_line(exc)}"
        if failed is None:
            _CHECKED_IMPORT.update(key=_fingerprint(model), mod=mod)
            return found, graph
    found.update(probe_refusals(model, frozenset(found)))
    if failed and not found:
        graph.append(f"TVM cannot compile the model: {failed}")
    return found, graph


def import_onnx(model: onnx.ModelProto, target: str):
    """Return a Relax IRModule for ``model`` (static input shapes already set)."""
    from toolchain.passes.expand_int4 import ExpandInt4Weights
    from toolchain.passes import transform

    model = transform(model, [ExpandInt4Weights()])  # int4 weights: int8 containers for TVM
    if _CHECKED_IMPORT and _CHECKED_IMPORT["key"] == _fingerprint(model):
        mod = _CHECKED_IMPORT["mod"]
        _CHECKED_IMPORT.clear()
        return mod
    check_model(model, target)
    try:
        mod = _from_onnx(model)
    except UnsupportedOpError:
        raise
    except Exception as exc:  # the importer raises assorted errors for odd attributes
        node = _failing_node(exc)
        if node is not None:
            raise UnsupportedOpError(node.op_type, _label_of(model, node), target,
                                     f"TVM's importer failed: {_first_line(exc)}") from None
        raise ModelError(f"TVM could not import the model: {_first_line(exc)}") from None
    why = _probe(mod)
    if why:
        locate(model, target, why)
    problems = output_dtype_problems(model, mod)
    if problems:
        raise ModelError(f"cannot compile the model for '{target}': {problems[0]}")
    return mod
