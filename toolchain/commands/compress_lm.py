"""``edgec compress lm ...``: the language-model branch of ``edgec compress``.

``edgec compress lm [--distill lm-teacher] [--low-rank R] [--prune 2:4|SPARSITY]
[--quantize int8|int4 --group-size G --method rtn|gptq] -o lm_int4.onnx`` loads the zoo LM (or
a ``torch.save``d ``ByteLM``), applies the steps in the order distill, low-rank, prune,
quantize (or ``--steps``), measures held-out bits per byte, parameters and weight bytes before
and after each, writes the QDQ decode graph (lm_qdq.py) and OUT.json (the report; what
``edgec --json compress`` prints as its result).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from toolchain.errors import ConfigError

log = logging.getLogger(__name__)

ORDER = ("distill", "lowrank", "prune", "quantize")


def prune_value(text: str):
    """``--prune``: a sparsity (float) or the pattern ``2:4`` (language models only)."""
    if ":" in text:
        return text.strip()
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a sparsity or 2:4, got '{text}'") from None


def add_options(p) -> None:
    """The options only the language-model branch reads."""
    g = p.add_argument_group("language models (edgec compress lm)")
    g.add_argument("--group-size", type=int, metavar="G",
                   help="int4: inputs per scale (default 32); int8: per channel unless given")
    g.add_argument("--method", default="rtn", help="weight rounding: rtn (default) or gptq")
    g.add_argument("--low-rank", type=int, metavar="R", help="SVD-factorize the MLP Linears "
                                                              "(or --low-rank-part) to rank R")
    g.add_argument("--low-rank-part", default="mlp", help="mlp (default), attn or all")
    g.add_argument("--finetune-steps", type=int, metavar="N",
                   help="training steps after prune / low-rank and of distillation")
    g.add_argument("--seq-len", type=int, default=1,
                   help="tokens per call of the exported graph (1: decode step)")


def is_lm(ref: str | None) -> bool:
    """A zoo language model's name, or a .pt file holding a ByteLM."""
    from toolchain import models

    if ref is None:
        return False
    if ref in models.names():
        return models.spec(ref).kind == "lm"
    path = Path(ref)
    if path.suffix.lower() == ".pt" and path.is_file():
        return _is_bytelm(_load(path))
    return False


def _is_bytelm(module) -> bool:
    return hasattr(module, "config") and callable(getattr(module, "empty_cache", None))


def _load(path: Path):
    from toolchain.torch_input import load_module

    return load_module(path, "model")


def _module(ref: str, what: str, cache_dir):
    from toolchain import models

    if ref in models.names():
        if models.spec(ref).kind != "lm":
            raise ConfigError(f"{what} '{ref}' is not a language model")
        return models.trained(ref, cache_dir), ref
    path = Path(ref)
    if not path.is_file():
        raise ConfigError(f"unknown {what} '{ref}': not a zoo language model "
                          f"({', '.join(models.names('lm'))}) and no such file")
    module = _load(path)
    if not _is_bytelm(module):
        raise ConfigError(f"{what} {path} is not a byte-level language model (ByteLM)")
    return module.eval(), path.stem


def _refuse_classifier_options(args) -> None:
    if args.lowrank is not None:
        raise ConfigError("--lowrank ENERGY is for classifiers; give a language model "
                          "--low-rank RANK")
    if args.prune_channels is not None:
        raise ConfigError("--prune-channels is not supported for language models")
    if args.qat_epochs:
        raise ConfigError("--qat-epochs is not supported for language models (weight-only PTQ)")


def build_steps(args, teacher=None, teacher_name: str | None = None) -> list:
    from toolchain.compress.lm_distill import LMDistill
    from toolchain.compress.lm_lowrank import LMLowRank
    from toolchain.compress.lm_prune import LMPrune
    from toolchain.compress.lm_quant import LMQuantize

    ft = {} if args.finetune_steps is None else {"steps": args.finetune_steps}
    wanted = {}
    if teacher is not None:
        wanted["distill"] = LMDistill(teacher, teacher_name, args.temperature, args.alpha, **ft)
    if args.low_rank is not None:
        wanted["lowrank"] = LMLowRank(args.low_rank, args.low_rank_part, **ft)
    if args.prune is not None:
        wanted["prune"] = LMPrune.parse(args.prune, **ft)
    if args.quantize is not None:
        mode = str(args.quantize)
        if mode not in ("int8", "int4"):
            raise ConfigError(f"language models quantize to int8 or int4 (weights only), "
                              f"got '{mode}'")
        bits = int(mode[3:])
        group = args.group_size if args.group_size is not None else (32 if bits == 4 else None)
        wanted["quantize"] = LMQuantize(bits, group, args.method)
    order = [s.strip() for s in str(args.steps).split(",") if s.strip()] if args.steps \
        else list(ORDER)
    unknown = [s for s in order if s not in ORDER]
    if unknown or len(set(order)) != len(order):
        raise ConfigError(f"bad --steps {args.steps} for a language model; steps: "
                          + ", ".join(ORDER))
    missing = [s for s in wanted if s not in order]
    if missing:
        raise ConfigError(f"--steps {args.steps} leaves out {', '.join(missing)}")
    return [wanted[s] for s in order if s in wanted]


def quantization_meta(steps) -> dict:
    q = next((s for s in steps if s.name == "quantize"), None)
    if q is None:
        return {"mode": "float"}
    return {"mode": q.mode, "weight_bits": q.bits, "group_size": q.group_size,
            "method": q.method, "symmetric": True, "act_bits": None}


def cmd_compress_lm(args) -> int:
    import numpy as np

    from toolchain.compress.lm_qdq import export_qdq
    from toolchain.compress.lm_task import LMTask, run_steps
    from toolchain.outdir import staged_file

    if args.output is None:
        raise ConfigError("compress needs -o OUT.onnx (on the command line or in --config)")
    if args.output.suffix != ".onnx":
        raise ConfigError(f"-o must name an .onnx file, got {args.output}")
    _refuse_classifier_options(args)
    model, name = _module(str(args.model), "model", args.cache_dir)
    teacher, teacher_name = (None, None)
    if args.distill is not None:
        teacher, teacher_name = _module(str(args.distill), "teacher", args.cache_dir)
    steps = build_steps(args, teacher, teacher_name)
    if not 1 <= args.seq_len <= model.config.context:
        raise ConfigError(f"--seq-len must be in 1..{model.config.context}")
    task = LMTask.for_zoo(seq_len=min(128, model.config.context))
    model, report = run_steps(model, steps, task, name)
    check = np.frombuffer(task.heldout[:model.config.context], np.uint8)
    result = export_qdq(model, args.output, seq_len=args.seq_len,
                        steps=[s.to_json() for s in steps], quantization=quantization_meta(steps),
                        check_ids=check)
    out = {**report.to_json(), "quantization": quantization_meta(steps),
           "export": result.to_json()}
    out_json = args.output.with_suffix(".json")
    with staged_file(out_json) as tmp:
        tmp.write_text(json.dumps(out, indent=2) + "\n")
    first, last = out["initial"], out["final"]  # the rounded figures OUT.json holds
    print(f"{name}: {' -> '.join(s.name for s in steps) or 'no step (float export)'}")
    for s in report.steps:
        print(f"  {s['step']:<9} bpb {s['before']['bpb']:.4f} -> {s['after']['bpb']:.4f} "
              f"({s['bpb_change_percent']:+.2f}%), weight bytes {s['before']['weight_bytes']} "
              f"-> {s['after']['weight_bytes']}")
    print(f"  held-out bits per byte {first['bpb']:.4f} -> {last['bpb']:.4f}, params "
          f"{first['params']} -> {last['params']}, non-zeros {first['nonzeros']} -> "
          f"{last['nonzeros']}, weight bytes {first['weight_bytes']} -> {last['weight_bytes']}")
    print(f"  wrote {args.output} ({result.file_bytes} bytes, onnxruntime vs PyTorch "
          f"{result.max_abs_error:.2g}) and {out_json}")
    return 0
