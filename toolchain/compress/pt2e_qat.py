"""Quantization-aware training in torchao's PT2E flow: prepare_qat_pt2e, fine-tune, convert.

Before: a float model (batchnorm already folded into its convs, as for PTQ) and labelled data.
After: a ``PT2EQuantized`` program, exported like the PTQ one.

1. ``torch.export`` the model (attention in its matmul form, see ``pt2e_quantizer``);
2. ``prepare_qat_pt2e`` with the same annotations as PTQ but fake quantizers
   (FusedMovingAvgObsFakeQuantize: moving-average ranges, straight-through gradients);
3. one calibration pass with no gradient (the ranges start from the data, not from zero);
4. fine-tune with ``finetune.finetune`` on the run's labelled data (cross-entropy for class
   labels, MSE for float targets), pruning masks re-applied after each update (a pruned
   layer's ``edgec_mask`` buffer is kept by ``torch.export`` on the program's submodule of the
   same name, where ``apply_masks`` finds it);
5. ``convert_pt2e``: int8 weights, QDQ activations.

The graph trains in the eval form it was exported in: dropout off and batchnorm statistics
frozen, the usual QAT setting (the fake quantizers observe in either mode). torchao's
``move_exported_model_to_train`` is not used: it swaps every dropout for one with p=0.5.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from toolchain.compress.program import ExportedProgramModule
from toolchain.compress.pt2e import PT2EQuantized, _export, _first, calibrate, convert
from toolchain.compress.pt2e_quantizer import QuantizerConfig, make_quantizer
from toolchain.errors import ModelError
from toolchain.models.train import Recipe

log = logging.getLogger(__name__)


def qat_pt2e(model: nn.Module, ctx, epochs: int, lr: float, samples: int = 512,
             config: QuantizerConfig = QuantizerConfig()) -> PT2EQuantized:
    """PTQ-initialized QAT for ``epochs`` on ``ctx``'s labelled training split (see above)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from toolchain.compress.finetune import finetune

    model = model.eval()
    X = torch.tensor(np.asarray(ctx.X_train[:samples]))
    config = replace(config, qat=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program, batch = _export(model, X, config.attention)
        try:
            prepared = prepare_qat_pt2e(program.module(), make_quantizer(config))
        except Exception as exc:
            raise ModelError(f"quantize (torchao PT2E QAT) failed: {_first(exc)}") from None
        trainable = ExportedProgramModule(prepared, batch)
        calibrate(trainable, X, batch)
        finetune(trainable, ctx, Recipe(epochs=epochs, lr=lr, batch=ctx.batch, seed=ctx.seed))
        move_exported_model_to_eval(prepared)
        try:
            return convert(prepared, batch, config.weight_bits)
        except Exception as exc:
            raise ModelError(f"quantize (torchao PT2E QAT) failed: {_first(exc)}") from None
