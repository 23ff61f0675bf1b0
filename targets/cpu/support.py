"""Which nodes the CPU family takes (``Backend.support``), before any slow step.

The CPU compile runs edgec's cleanup passes (toolchain.passes.cleanup_passes), then the
frontend's checks and TVM's import and legalization (toolchain.optimizer.frontend). This
module runs the same, without building a kernel, and collects every refusal instead of
stopping at the first: a node a cleanup pass refuses (an LSTM it cannot unroll) is set aside
and the passes run again; the frontend then lists the rest (``frontend.refusals``). Refusals
in the cleaned graph are reported on the nodes of the model as given: by name, by an output
they share, or by the name prefix a pass gives the nodes it writes out (``lstm/...``).
"""

from __future__ import annotations

from typing import Callable

import onnx

from toolchain.errors import UnsupportedOpError
from toolchain.targets.registry import NodeSupport

# A node set aside after a cleanup pass refused it: no pass or check looks inside this domain.
SET_ASIDE = "edgec.set_aside"


def label(node: onnx.NodeProto, idx: int) -> str:
    return node.name or f"#{idx}"


def _set_aside(model: onnx.ModelProto, idx: int) -> onnx.ModelProto:
    """A copy of ``model`` whose node ``idx`` is opaque (same place, inputs and outputs)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.node[idx].domain = SET_ASIDE
    if not any(o.domain == SET_ASIDE for o in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(SET_ASIDE, 1))
    return out


def _clean(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[int, str]]:
    """The cleanup passes applied, and the nodes (by index in ``model``) a pass refused."""
    from toolchain.passes import cleanup_passes, transform

    refused: dict[int, str] = {}
    work = model
    while True:
        try:
            return transform(work, cleanup_passes()), refused
        except UnsupportedOpError as exc:
            idx = next((i for i, n in enumerate(work.graph.node)
                        if label(n, i) == exc.node_name and i not in refused), None)
            if idx is None:
                raise
            refused[idx] = exc.detail
            work = _set_aside(work, idx)


def _origin(original: onnx.ModelProto, node: onnx.NodeProto) -> int | None:
    """The node of ``original`` that a node of the cleaned graph comes from."""
    nodes = original.graph.node
    if node.name:
        for i, n in enumerate(nodes):
            if n.name == node.name:
                return i
    outputs = {o for o in node.output if o}
    for i, n in enumerate(nodes):
        if outputs & set(n.output):
            return i
    if node.name:  # written out by a pass under the original's name: "lstm/matmul_3"
        for i, n in enumerate(nodes):
            if n.name and (node.name.startswith(n.name + "/")
                           or node.name.startswith(n.name + "_")):
                return i
    return None


def cpu_support(model: onnx.ModelProto,
                more: Callable[[onnx.ModelProto], dict[int, str]] | None = None,
                cleaned_out: list | None = None) -> list[NodeSupport]:
    """Every node of ``model`` for the CPU family, then the whole-graph problems. ``more``
    adds a family's own refusals (node index -> why), judged on the cleaned graph as the
    frontend's are. ``cleaned_out``, a list, receives the cleaned graph when no pass refused.
    """
    from toolchain.optimizer import frontend

    cleaned, refused = _clean(model)
    if cleaned_out is not None and not refused:  # the compile may start from it
        cleaned_out.append(cleaned)
    reasons: dict[int, str] = dict(refused)
    extra: list[NodeSupport] = []
    found, graph = frontend.refusals(cleaned)
    for idx, why in (more(cleaned) if more else {}).items():
        found.setdefault(idx, why)
    for idx, why in sorted(found.items()):
        node = cleaned.graph.node[idx]
        if node.domain == SET_ASIDE:
            continue
        origin = _origin(model, node)
        if origin is None:
            extra.append(NodeSupport(label(node, idx), node.op_type, False,
                                     f"{why} (a node edgec's cleanup passes wrote)"))
        else:
            reasons.setdefault(origin, why)
    result = [NodeSupport(label(n, i), n.op_type, i not in reasons, reasons.get(i, ""), i)
              for i, n in enumerate(model.graph.node)]
    return result + extra + [NodeSupport("", "", False, why) for why in graph]
