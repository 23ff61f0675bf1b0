"""Compression frontend: make a PyTorch model small and integer-friendly, then export ONNX.

Python API::

    from toolchain import models
    from toolchain.compress import (Context, Distill, LowRank, Prune, PruneChannels, Quantize,
                                    compress, export_onnx)

    ctx = Context.for_zoo("cnn")                       # digits split + training settings
    small, report = compress(models.trained("cnn"), [Prune(0.75), Quantize("int8")], ctx)
    export_onnx(small, "cnn.onnx", ctx.X_test, steps=report.step_configs())

Steps (each a frozen dataclass ``apply(model, ctx) -> model``, one module each):

- ``Distill(teacher, temperature, alpha)``: knowledge distillation into the model (distill.py).
- ``LowRank(energy | params_ratio)``: truncated SVD of Linear / 1x1 conv layers (lowrank.py).
- ``PruneChannels(fraction)``: structured channel / neuron removal via torch.fx (channels.py).
- ``Prune(sparsity, scope)``: unstructured magnitude pruning with torch.nn.utils.prune,
  iterative with fine-tuning (prune.py).
- ``Quantize(mode, calibration, qat_epochs)``: int8 / int4 / fixed<W,I> fake quantization with
  torch's fake_quantize ops and torch.ao observers, PTQ then optional QAT (quantize.py).

What was chosen and why: torch's own pruning (masks) and fake-quant ops/observers, so that every
step stays a PyTorch model that can be fine-tuned and compared; the QDQ ONNX graph is written by
export.py from those quantizers (onnxruntime.quantization would quantize a separate ONNX copy
that QAT and the PyTorch comparison could not see). Brevitas is not used: it is not installed
and nothing here needs it.

Metadata contract (``metadata_props`` key ``edgec.compression``, a JSON object)::

    {
      "format": 1,
      "steps": [{"step": "prune", "sparsity": 0.75, ...}, {"step": "quantize", ...}],
      "quantization": {"mode": "float" | "int8" | "int4" | "fixed", "W": 8, "I": 3},
                                           # W and I only for fixed<W,I>
      "layers": {                          # one entry per Conv2d / Linear, by torch module name
                                           # (every key is always present; null when float)
        "features.0": {
          "op": "Conv2d" | "Linear",
          "onnx_node": "/features/features.0/Conv",   # the Conv / Gemm / MatMul node
          "onnx_op": "Conv" | "Gemm" | "MatMul",
          "onnx_weight": "<initializer name or null>", # int8 initializer if quantized, then
                                                       # DequantizeLinear(axis=weight_axis)
          "weight_axis": 0 | 1 | null,     # quantized: the DequantizeLinear's output-channel
                                           # axis; null when the scale is one scalar (fixed)
          "weight_bits": 8 | 4 | W | null, # null: float
          "weight_scale_pow2": bool,       # one power-of-two scale per layer (fixed mode)
          "weight_frac_bits": int | null,  # scale = 2^-weight_frac_bits when pow2
          "sparsity": 0.75,                # fraction of zero weights as deployed (after
                                           # quantization, which can round weights to 0)
          "act_bits": 8 | W | null,        # input activation quantizer of this layer
          "act_signed": bool | null, "act_scale": float | null, "act_zero_point": int | null,
          "act_frac_bits": int | null      # W - I in fixed mode (scale = 2^-act_frac_bits)
        }
      },
      "output": {"act_bits": ..., "act_scale": ..., "act_zero_point": ..., ...} | null
    }

Weight scales are per output channel and stored in the ``<weight>_scale`` initializer of the
DequantizeLinear; biases stay float32.
"""

import logging as _logging

# torchao 0.18 registers an Enum with torch's pytree at import, and torch 2.13 logs a deprecation
# warning for it on every run ("KernelPreference is an Enum subclass ..."): not the user's concern.
_logging.getLogger("torch.utils._pytree").setLevel(_logging.ERROR)

from toolchain.compress.channels import PruneChannels  # noqa: E402
from toolchain.compress.data import load_data
from toolchain.compress.evaluate import Metric, metric_for
from toolchain.compress.distill import Distill
from toolchain.compress.export import (METADATA_KEY, ExportResult, export_onnx, metadata_of,
                                       onnx_accuracy, onnx_outputs)
from toolchain.compress.lowrank import LowRank
from toolchain.compress.metrics import ModelStats, model_stats
from toolchain.compress.pipeline import CompressionReport, Context, Measure, compress
from toolchain.compress.prune import Prune, weight_sparsity
from toolchain.compress.quantize import Quantize, QuantSpec, parse_mode

__all__ = ["Context", "CompressionReport", "Distill", "ExportResult", "LowRank", "METADATA_KEY",
           "Measure", "Metric", "ModelStats", "Prune", "PruneChannels", "QuantSpec", "Quantize",
           "compress", "export_onnx", "load_data", "metadata_of", "metric_for", "model_stats",
           "onnx_accuracy", "onnx_outputs",
           "parse_mode", "quantization_meta", "step_from_json", "STEPS", "weight_sparsity"]


STEPS = {c.name: c for c in (Distill, LowRank, PruneChannels, Prune, Quantize)}


def step_from_json(d: dict, teacher=None):
    """Rebuild a step from its ``to_json()`` (as stored in reports and metadata).

    A distill step names its teacher; pass the teacher module, or a zoo teacher is loaded.
    """
    from toolchain.errors import ConfigError

    d = dict(d)
    name = d.pop("step", None)
    if name not in STEPS:
        raise ConfigError(f"unknown step '{name}'; known steps: {', '.join(STEPS)}")
    if name == "distill":
        from toolchain import models

        teacher_name = d.pop("teacher")
        d["teacher"] = teacher if teacher is not None else models.trained(teacher_name)
        d["teacher_name"] = teacher_name
    try:
        return STEPS[name](**d)
    except TypeError as exc:
        raise ConfigError(f"bad {name} step {d}: {exc}") from None


def quantization_meta(mode: str | None) -> dict:
    """The ``quantization`` entry of the metadata for a mode string (None: float)."""
    if mode is None:
        return {"mode": "float"}
    spec = parse_mode(mode)
    out = {"mode": spec.mode, "weight_bits": spec.weight_bits, "act_bits": spec.act_bits}
    if spec.fixed:
        out.update(W=spec.fixed[0], I=spec.fixed[1])
    return out
