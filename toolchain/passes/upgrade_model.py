"""UpgradeModel: make old files that onnxruntime's tools write pass the ONNX checker.

onnxruntime.quantization keeps an old model's IR version and opset while writing newer
constructs into it. Two cases, fixed in this order:

- IR version < 4 with initializers that are not graph inputs (IR 3 requires every
  initializer to be listed as an input). After: the IR version is raised to the one that
  came with the model's opsets (at least 4), so initializers need not be inputs.
- Nodes that need a newer opset than the model imports, e.g. ``DequantizeLinear`` with a
  per-channel ``axis`` (opset >= 13) in an opset 10/11 model. After: the model is converted
  by onnx's version converter to the lowest opset at which every node checks.

A model that needs neither is returned as is (not copied). The converted model computes the
same outputs. If the converter fails, ``apply`` raises a one-line ModelError saying how to fix
the file.
"""

from __future__ import annotations

import onnx
from onnx import checker, helper, version_converter
from onnx.onnx_cpp2py_export import checker as c_checker

from toolchain.errors import ModelError
from toolchain.passes import Pass

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 0)


def _node_checks(node: onnx.NodeProto, opset: int) -> bool:
    ctx = c_checker.CheckerContext()
    ctx.ir_version = onnx.IR_VERSION
    ctx.opset_imports = {"": opset}
    try:
        checker.check_node(node, ctx)
    except Exception:  # noqa: BLE001  (ValidationError: not valid at this opset)
        return False
    return True


def needed_opset(model: onnx.ModelProto) -> tuple[int, onnx.NodeProto | None]:
    """The opset the model needs: for each node that does not check at the model's opset,
    the lowest newer one at which it does; the highest of these, and its node (the model's
    own opset and None when all nodes check, or no opset makes a failing node check)."""
    current = _opset(model)
    latest = onnx.defs.onnx_opset_version()
    need, which = current, None
    for node in model.graph.node:
        if node.domain not in _DEFAULT_DOMAINS or _node_checks(node, current):
            continue
        v = next((v for v in range(current + 1, latest + 1) if _node_checks(node, v)), None)
        if v is not None and v > need:
            need, which = v, node
    return need, which


def _min_ir_version(model: onnx.ModelProto) -> int:
    return helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)


def _describe(node: onnx.NodeProto) -> str:
    return f"node '{node.name or node.output[0]}' ({node.op_type})"


class UpgradeModel(Pass):
    def apply(self, model):
        inputs = {i.name for i in model.graph.input}
        old_ir = model.ir_version < 4 and any(t.name not in inputs
                                              for t in model.graph.initializer)
        current = _opset(model)
        need, node = needed_opset(model) if current else (current, None)
        if not old_ir and need == current:
            return model, False
        model = onnx.ModelProto.FromString(model.SerializeToString())
        if old_ir:  # the converter also needs this: it sees such initializers as undefined
            model.ir_version = max(4, _min_ir_version(model))
        if need != current:
            try:
                model = version_converter.convert_version(model, need)
            except Exception as exc:  # noqa: BLE001  (ConvertError and friends)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelError(
                    f"{_describe(node)} needs opset {need}, the model imports opset {current}, "
                    f"and onnx's version converter cannot upgrade it ({first}); re-export the "
                    f"model with opset >= {need} (e.g. quantize a float model converted first "
                    f"with onnx.version_converter.convert_version(model, {need}))") from None
            model.ir_version = max(model.ir_version, _min_ir_version(model))
        return model, True
