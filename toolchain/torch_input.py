"""PyTorch modules as compiler input.

A ``torch.save()``d ``nn.Module`` (``.pt``/``.pth``) or a module object (Python API) is exported
to ONNX by the compression frontend's exporter, so a module straight out of
``toolchain.compress.compress`` keeps its quantizers (QDQ with exact grids) and its pruned
zeros, and carries the ``edgec.compression`` metadata the FPGA backend reads per layer. The
export checks onnxruntime against PyTorch on a seeded input before anything is compiled.

A PyTorch module has no input shape of its own: the caller gives one (``--input-shape
NAME=D1,D2,...``, batch first); NAME becomes the ONNX input's name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ConfigError, EdgecError, ModelError

TORCH_SUFFIXES = (".pt", ".pth")
DEFAULT_INPUT_NAME = "input"


def is_torch_file(path: Path | str) -> bool:
    return Path(path).suffix.lower() in TORCH_SUFFIXES


def load_module(path: Path | str, what: str = "model"):
    """Load a whole ``nn.Module`` saved with ``torch.save(model, path)``, in eval mode."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{what} file not found: {path}")
    try:
        obj = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load {path} with torch.load: {first}") from None
    if isinstance(obj, dict):
        raise ModelError(f"{path} holds a dict (a state dict?), not a torch.nn.Module: save the "
                         "whole module with torch.save(model, path) (compiling needs the "
                         "architecture)")
    if not isinstance(obj, torch.nn.Module):
        raise ModelError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module "
                         "(save the whole module with torch.save(model, path))")
    return obj.eval()


def input_shape_for(shapes: dict[str, tuple[int, ...]], source: str) -> tuple[str, tuple]:
    """The one (name, shape) a PyTorch input needs, from parsed --input-shape values."""
    if not shapes:
        raise ConfigError(f"{source} is a PyTorch model, which has no input shape: give one "
                          f"with --input-shape {DEFAULT_INPUT_NAME}=1,16 (batch first)")
    if len(shapes) > 1:
        raise ConfigError(f"PyTorch input supports one model input; got --input-shape for "
                          f"{', '.join(shapes)}")
    name, shape = next(iter(shapes.items()))
    return name, tuple(int(d) for d in shape)


def quantization_of(module) -> dict | None:
    """The metadata's ``quantization`` entry for a module carrying edgec's quantizers."""
    from .compress.quantize import QuantLayer

    layers = [m for m in module.modules() if isinstance(m, QuantLayer)]
    if not layers:
        return None
    bits = sorted({m.weight_bits for m in layers})
    if all(m.weight_pow2 for m in layers) and len(bits) == 1:
        fracs = {m.act_quant.frac_bits for m in layers}
        out = {"mode": "fixed", "weight_bits": bits[0], "act_bits": bits[0], "W": bits[0]}
        if len(fracs) == 1 and None not in fracs:
            out["I"] = bits[0] - fracs.pop()
        return out
    if bits == [8]:
        return {"mode": "int8", "weight_bits": 8, "act_bits": 8}
    if bits == [4]:
        return {"mode": "int4", "weight_bits": 4, "act_bits": 8}
    return {"mode": "mixed", "weight_bits": bits}


def export_module(module, path: Path | str, input_shape: tuple[int, ...],
                  input_name: str = DEFAULT_INPUT_NAME, seed: int = 0) -> Path:
    """Export ``module`` to ONNX at ``path`` with a static ``input_shape``; return the path."""
    from .compress import export_onnx

    if len(input_shape) < 2:
        raise ConfigError(f"the input shape of a PyTorch model must be batch first with at "
                          f"least two dimensions, got {','.join(map(str, input_shape))}")
    rng = np.random.default_rng(seed)
    # a few samples so the exporter's onnxruntime-vs-PyTorch check sees more than one point
    example = rng.standard_normal((max(8, input_shape[0]),) + tuple(input_shape[1:]))
    try:
        export_onnx(module, path, example.astype(np.float32), input_name=input_name,
                    batch=int(input_shape[0]), mode=quantization_of(module))
    except EdgecError:  # already one clear line (incl. onnxruntime vs PyTorch mismatches)
        raise
    except Exception as exc:  # torch's tracer raises many kinds; keep one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot export the PyTorch model to ONNX with input shape "
                         f"{','.join(map(str, input_shape))}: {first}") from None
    return Path(path)
