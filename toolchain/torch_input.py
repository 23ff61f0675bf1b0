"""PyTorch modules as compiler input.

A PyTorch model comes as (``load_module``):

- a ``torch.save()``d ``nn.Module`` (``.pt``/``.pth``): unpickling needs the module's source,
  found on ``sys.path`` plus ``module_paths`` (``--module-path DIR``);
- a ``torch.export`` program (``.pt2``, ``torch.export.save``): loads without the source; it
  is wrapped in ``ExportedProgramModule`` (the program's own batch size, if static, is kept by
  running larger batches in chunks);
- ``file.py:ClassName`` (or ``package.module:ClassName``): the class (or a function) is called
  with no argument, then a state dict is loaded into it (``weights``, strict).

A module object (Python API) works too. It is exported
to ONNX by the compression frontend's exporter, so a module straight out of
``toolchain.compress.compress`` keeps its quantizers (QDQ with exact grids) and its pruned
zeros, and carries the ``edgec.compression`` metadata the FPGA backend reads per layer. The
export checks onnxruntime against PyTorch on a seeded input before anything is compiled.

A PyTorch module has no input shape of its own: the caller gives one (``--input-shape
NAME=D1,D2,...[:dtype]``, batch first, e.g. ``input_ids=1,32:int64`` for token ids); NAME
becomes the ONNX input's name. Integer inputs are exported with example values in
``[0, vocab)`` of the smallest ``nn.Embedding`` in the module (else ``[0, 2)``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ConfigError, EdgecError, ModelError

TORCH_SUFFIXES = (".pt", ".pth", ".pt2")
DEFAULT_INPUT_NAME = "input"


def is_torch_file(path: Path | str) -> bool:
    return Path(path).suffix.lower() in TORCH_SUFFIXES


def is_class_ref(ref: str) -> bool:
    """``file.py:ClassName`` or ``package.module:ClassName`` (not a file that exists)."""
    head, sep, tail = str(ref).rpartition(":")
    return bool(sep and head and tail.isidentifier() and not Path(ref).exists())


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_program(path: Path, what: str):
    import torch

    try:
        ep = torch.export.load(str(path))
    except Exception as exc:
        raise ModelError(f"cannot load {path} with torch.export.load: {_first(exc)}") from None
    users = [n for n in ep.graph.nodes if n.op == "placeholder"
             and n.name in ep.graph_signature.user_inputs]
    if len(users) != 1:
        raise ModelError(f"{path}: the exported program takes {len(users)} inputs; edgec "
                         "takes one")
    val = users[0].meta.get("val")
    batch = val.shape[0] if val is not None and val.ndim and isinstance(val.shape[0], int) \
        else None
    from toolchain.compress.program import ExportedProgramModule

    return ExportedProgramModule(ep.module(), batch)


def load_class(ref: str, weights: Path | str | None, module_paths=(), what: str = "model",
               untrained_ok: bool = False):
    """``file.py:ClassName`` called with no argument, then ``weights`` (a state dict) loaded
    (``untrained_ok``: no weights is fine, e.g. a student that distillation trains)."""
    import torch

    from toolchain.compress.data import import_attr

    try:
        cls = import_attr(ref, what, module_paths)
    except ConfigError as exc:
        raise ModelError(str(exc)) from None
    try:
        module = cls()
    except Exception as exc:
        raise ModelError(f"{what} {ref}: calling it with no argument failed: "
                         f"{type(exc).__name__}: {_first(exc)}") from None
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"{what} {ref} gave a {type(module).__name__}, not a torch.nn.Module")
    if weights is None and untrained_ok:
        return module.eval()
    if weights is None:
        raise ModelError(f"{what} {ref} is an architecture: give its trained weights with "
                         "--weights STATE_DICT.pt (torch.save(model.state_dict(), path))")
    weights = Path(weights)
    if not weights.is_file():
        raise ModelError(f"weights file not found: {weights}")
    try:
        state = torch.load(weights, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ModelError(f"cannot load {weights} as a state dict: {_first(exc)}") from None
    for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint layouts
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelError(f"{weights} holds a {type(state).__name__}, not a state dict")
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ModelError(f"{weights} does not fit {ref}: "
                         f"{_first(exc).removeprefix('Error(s) in loading state_dict for ')}"
                         ) from None
    problems = ([f"missing {', '.join(result.missing_keys[:3])}"] if result.missing_keys else []) \
        + ([f"unexpected {', '.join(result.unexpected_keys[:3])}"]
           if result.unexpected_keys else [])
    if problems:
        raise ModelError(f"{weights} does not fit {ref}: " + "; ".join(problems))
    return module.eval()


def load_module(path: Path | str, what: str = "model", module_paths=(), weights=None,
                untrained_ok: bool = False):
    """A model in any of the forms above, in eval mode."""
    import torch

    from toolchain.compress.data import on_path

    if is_class_ref(str(path)):
        return load_class(str(path), weights, module_paths, what, untrained_ok)
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{what} file not found: {path}")
    if weights is not None:
        raise ConfigError(f"--weights goes with a file.py:ClassName model, not with {path}")
    if path.suffix.lower() == ".pt2":
        return _load_program(path, what)
    try:
        with on_path(module_paths):
            obj = torch.load(path, weights_only=False, map_location="cpu")
    except (ModuleNotFoundError, AttributeError) as exc:
        where = f"module '{exc.name}'" if getattr(exc, "name", None) else "the source"
        raise ModelError(f"cannot load {path}: the pickled module needs {where} defining its "
                         f"classes ({_first(exc)}); pass --module-path DIR (the folder holding "
                         "that source), or save it with torch.export.save as a .pt2 file, "
                         "which loads without the source") from None
    except Exception as exc:
        raise ModelError(f"cannot load {path} with torch.load: {_first(exc)}") from None
    if isinstance(obj, dict):
        raise ModelError(f"{path} holds a dict (a state dict?), not a torch.nn.Module: give "
                         "the architecture as file.py:ClassName with --weights (edgec "
                         "compress), or save the whole module (torch.save(model, path) or "
                         "torch.export.save as .pt2)")
    if not isinstance(obj, torch.nn.Module):
        raise ModelError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module "
                         "(save the whole module with torch.save(model, path))")
    return obj.eval()


def embedding_bound(module) -> int | None:
    """The smallest ``num_embeddings`` of the module's ``nn.Embedding`` layers (valid token
    ids are below it), or None."""
    import torch

    sizes = [m.num_embeddings for m in module.modules() if isinstance(m, torch.nn.Embedding)]
    return min(sizes) if sizes else None


def input_shape_for(shapes: dict[str, tuple[int, ...]], source: str) -> tuple[str, tuple]:
    """The one (name, shape) a PyTorch input needs, from parsed --input-shape values."""
    if not shapes:
        raise ConfigError(f"{source} is a PyTorch model, which has no input shape: give one "
                          f"with --input-shape {DEFAULT_INPUT_NAME}=1,16 (batch first)")
    if len(shapes) > 1:
        raise ConfigError(f"PyTorch input supports one model input; got --input-shape for "
                          f"{', '.join(shapes)}")
    from .onnx_io import InputShape

    name, shape = next(iter(shapes.items()))
    return name, InputShape((int(d) for d in shape), getattr(shape, "dtype", None))


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
    size = (max(8, input_shape[0]),) + tuple(input_shape[1:])
    dtype = np.dtype(getattr(input_shape, "dtype", None) or "float32")
    if dtype.kind in "iu":
        example = rng.integers(0, embedding_bound(module) or 2, size).astype(np.int64)
    elif dtype.kind == "b":
        example = rng.integers(0, 2, size).astype(np.float32)
    else:
        example = rng.standard_normal(size).astype(np.float32)
    try:
        export_onnx(module, path, example, input_name=input_name,
                    batch=int(input_shape[0]), mode=quantization_of(module))
    except EdgecError:  # already one clear line (incl. onnxruntime vs PyTorch mismatches)
        raise
    except Exception as exc:  # torch's tracer raises many kinds; keep one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot export the PyTorch model to ONNX with input shape "
                         f"{','.join(map(str, input_shape))}: {first}") from None
    return Path(path)
