"""ExpandNodes: the shape every "replace a node by the ops of its definition" pass shares.

A subclass says which nodes it looks at (``select``: a predicate, built once per model) and how
one of them is written out (``expand``: its replacement nodes, or None to keep the node as it
is, for the frontend to take or refuse). ``apply`` copies the model only when some node is
selected, keeps the node order, and reports whether anything changed.
"""

from __future__ import annotations

from typing import Callable

import onnx

from toolchain.passes import Pass
from toolchain.passes.graph import Names, tensor_types


class ExpandNodes(Pass):
    def select(self, model: onnx.ModelProto) -> Callable[[onnx.NodeProto], bool]:
        raise NotImplementedError

    def expand(self, model: onnx.ModelProto, node: onnx.NodeProto, types: dict,
               fresh: Names) -> list[onnx.NodeProto] | None:
        raise NotImplementedError

    def apply(self, model):
        picked = self.select(model)
        if not any(picked(n) for n in model.graph.node):
            return model, False
        model = onnx.ModelProto.FromString(model.SerializeToString())
        types = tensor_types(model)
        fresh = Names(model)
        nodes, changed = [], False
        for node in model.graph.node:
            new = self.expand(model, node, types, fresh) if picked(node) else None
            if new is None:
                nodes.append(node)
                continue
            nodes += new
            changed = True
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        return model, changed


class NodeWriter:
    """Builds the nodes that replace ``node``: ``writer(op, inputs, out=None, **attrs)``
    appends one, named ``<node>/<op>_<i>`` with a fresh output name unless ``out`` is given,
    and returns its output. ``nodes`` holds them in order."""

    def __init__(self, node: onnx.NodeProto, fresh: Names):
        self.base = node.name or node.output[0]
        self.fresh = fresh
        self.nodes: list[onnx.NodeProto] = []

    def __call__(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        from onnx import helper

        out = out or self.fresh(f"{self.base}_{op.lower()}")
        self.nodes.append(helper.make_node(op, inputs, [out],
                                           name=f"{self.base}/{op}_{len(self.nodes)}", **attrs))
        return out
