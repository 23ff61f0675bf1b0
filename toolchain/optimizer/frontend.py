"""ONNX -> TVM Relax import, with unsupported ops reported by node before TVM sees them."""

from __future__ import annotations

import logging

import onnx

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


def supported_ops() -> frozenset[str]:
    """The ONNX op types the TVM importer converts and a static plan can hold."""
    from tvm.relax.frontend.onnx import onnx_frontend

    return frozenset(onnx_frontend._get_convert_map()) - DATA_DEPENDENT_OPS


def check_ops(model: onnx.ModelProto, target: str) -> None:
    """Raise UnsupportedOpError for the first node whose op the importer cannot take."""
    ok = supported_ops()
    for idx, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(node.op_type, node.name or f"#{idx}", target,
                                     f"custom domain '{node.domain}'")
        if node.op_type not in ok:
            detail = ("its output shape depends on the data" if node.op_type in DATA_DEPENDENT_OPS
                      else "TVM's ONNX importer has no converter for it")
            raise UnsupportedOpError(node.op_type, node.name or f"#{idx}", target, detail)


def import_onnx(model: onnx.ModelProto, target: str):
    """Return a Relax IRModule for ``model`` (static input shapes already set)."""
    from tvm.relax.frontend.onnx import from_onnx

    check_ops(model, target)
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in graph_inputs(model)}
    dtypes = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name
              for i in graph_inputs(model)}
    try:
        # sanitize_input_names=False keeps the ONNX input names as the Relax parameter names.
        return from_onnx(model, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False,
                         sanitize_input_names=False)
    except UnsupportedOpError:
        raise
    except Exception as exc:  # the importer raises assorted errors for odd attributes
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"TVM could not import the model: {first}") from None
