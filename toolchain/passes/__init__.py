"""ONNX graph passes (qonnx style): a class per pass, ``apply(model) -> (model, changed)``.

``transform(model, passes)`` applies each pass until it reports no change. Passes are pure:
they take and return ``onnx.ModelProto`` and never touch files or print.
"""

from __future__ import annotations

import logging
from typing import Sequence

import onnx

log = logging.getLogger(__name__)

MAX_ROUNDS = 50


class Pass:
    """Base class: subclasses implement ``apply``."""

    def apply(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
        raise NotImplementedError


def transform(model: onnx.ModelProto, passes: Sequence[Pass]) -> onnx.ModelProto:
    for p in passes:
        for _ in range(MAX_ROUNDS):
            model, changed = p.apply(model)
            if not changed:
                break
        log.debug("pass %s done: %d nodes", type(p).__name__, len(model.graph.node))
    return model


def cleanup_passes() -> list[Pass]:
    """The passes every CPU compile runs before TVM import."""
    from toolchain.passes.bound_bitshift import BoundBitShift
    from toolchain.passes.channel_prelu import ChannelPReluSlope
    from toolchain.passes.expand_batchnorm_training import ExpandBatchNormTraining
    from toolchain.passes.expand_float_mod import ExpandFloatMod
    from toolchain.passes.expand_layernorm_stats import ExpandLayerNormStats
    from toolchain.passes.expand_spacetodepth_crd import ExpandSpaceToDepthCRD
    from toolchain.passes.fold_batchnorm import FoldBatchNorm
    from toolchain.passes.fold_constants import FoldConstants
    from toolchain.passes.fold_shape_outputs import FoldShapeOutputs
    from toolchain.passes.pretranspose_gemm import PretransposeGemm
    from toolchain.passes.remove_dropout import RemoveDropout
    from toolchain.passes.rewrite_isinf import RewriteSignedIsInf
    from toolchain.passes.unroll_recurrent import UnrollRecurrent

    return [RemoveDropout(), UnrollRecurrent(), ExpandBatchNormTraining(), FoldConstants(),
            FoldBatchNorm(), PretransposeGemm(), ChannelPReluSlope(), RewriteSignedIsInf(),
            ExpandLayerNormStats(), ExpandSpaceToDepthCRD(), ExpandFloatMod(), FoldShapeOutputs(),
            BoundBitShift()]
