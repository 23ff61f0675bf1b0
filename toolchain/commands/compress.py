"""edgec zoo / edgec compress: list the reference models; compress one and export ONNX + report.

``edgec compress NAME_OR_MODEL [--distill TEACHER] [--lowrank ENERGY] [--prune SPARSITY]
[--prune-channels FRACTION] [--quantize int8|int4|fixed<W,I>] -o OUT.onnx`` trains the zoo
model if needed (or loads a ``torch.save``d module, with ``--data ZOO_NAME`` naming the data it
takes), applies the steps in the order of ``--steps`` (default: distill, lowrank,
prune-channels, prune, quantize), exports OUT.onnx and writes OUT.json beside it. All options
can come from the ``[compress]`` table of a ``--config`` TOML file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from toolchain.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

ORDER = ("distill", "lowrank", "prune-channels", "prune", "quantize")


# ---------------------------------------------------------------- zoo
def register_zoo(sub) -> None:
    p = sub.add_parser("zoo", help="list the reference models (trained on the digits data set)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--config", type=Path, help="TOML file with a [zoo] table of options")
    p.set_defaults(func=cmd_zoo, command_parser=p)


def cmd_zoo(args) -> int:
    from toolchain import models

    rows = [{"name": n, "input_shape": list(models.spec(n).input_shape),
             "summary": models.spec(n).summary} for n in models.names()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        shape = "x".join(map(str, r["input_shape"]))
        print(f"{r['name']:<{width}}  {shape:<7}  {r['summary']}")
    return 0


# ---------------------------------------------------------------- compress
def register_compress(sub) -> None:
    p = sub.add_parser("compress", help="compress a zoo model or a PyTorch module, export ONNX",
                       description="Apply compression steps and write OUT.onnx and OUT.json "
                                   "(accuracy, parameters, non-zeros, MACs and bytes before and "
                                   "after each step). With no step, export the float model.")
    p.add_argument("model", nargs="?", help="zoo model name (see 'edgec zoo') or a .pt file "
                                            "holding a torch.save()d nn.Module")
    p.add_argument("-o", "--output", type=Path, help="the ONNX file to write (OUT.onnx)")
    p.add_argument("--data", help="zoo model whose data set a .pt model takes (e.g. cnn)")
    p.add_argument("--distill", metavar="TEACHER",
                   help="train the model from scratch on TEACHER's soft targets (zoo name or .pt)")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    p.add_argument("--alpha", type=float, default=0.7, help="weight of the soft-target loss")
    p.add_argument("--lowrank", type=float, metavar="ENERGY",
                   help="SVD-factorize Linear / 1x1 conv layers keeping this energy, e.g. 0.9")
    p.add_argument("--prune", type=float, metavar="SPARSITY",
                   help="unstructured magnitude pruning to this sparsity in [0, 1)")
    p.add_argument("--prune-scope", default="layer", help="layer (default) or global")
    p.add_argument("--prune-channels", type=float, metavar="FRACTION",
                   help="remove this fraction of the channels / neurons of each prunable layer")
    p.add_argument("--quantize", metavar="MODE", help="int8, int4 or fixed<W,I> (e.g. fixed<8,3>)")
    p.add_argument("--calibration", default="minmax", help="minmax, percentile or histogram")
    p.add_argument("--qat-epochs", type=int, default=0,
                   help="quantization-aware fine-tuning epochs after calibration")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs after prune / lowrank steps")
    p.add_argument("--steps", help="order of the steps, comma-separated (default: "
                                   + ",".join(ORDER) + ")")
    p.add_argument("--batch", type=int, default=1,
                   help="static batch size of the ONNX input (default 1; 0: dynamic)")
    p.add_argument("--cache-dir", type=Path, help="where trained zoo weights are cached")
    p.add_argument("--config", type=Path, help="TOML file with a [compress] table of options")
    p.set_defaults(func=cmd_compress, command_parser=p)


def _load_module(ref: str, what: str):
    """A zoo name -> (trained model, name); a .pt path -> (module, stem)."""
    from toolchain import models
    from toolchain.torch_input import load_module

    if ref in models.names():
        return None, ref
    path = Path(ref)
    if not path.exists():
        if path.suffix or "/" in ref:
            raise ModelError(f"{what} file not found: {path}")
        raise ConfigError(f"unknown {what} '{ref}': not a zoo model ({', '.join(models.names())}) "
                          "and no such file")
    if path.suffix.lower() == ".onnx":
        raise ConfigError(f"{path} is an ONNX model; compress takes a PyTorch model (a zoo name "
                          "or a torch.save()d nn.Module), ONNX goes straight to 'edgec compile'")
    return load_module(path, what), path.stem


def _order(text: str | None) -> list[str]:
    if not text:
        return list(ORDER)
    order = [s.strip() for s in str(text).split(",") if s.strip()]
    for s in order:
        if s not in ORDER:
            raise ConfigError(f"unknown step '{s}'; known steps: {', '.join(ORDER)}")
    if len(set(order)) != len(order):
        raise ConfigError(f"--steps lists a step twice: {text}")
    return order


def build_steps(args, teacher=None, teacher_name: str | None = None) -> list:
    """The steps the options ask for, in ``--steps`` order (each validates its own values)."""
    from toolchain.compress import Distill, LowRank, Prune, PruneChannels, Quantize

    extra = {} if args.epochs is None else {"epochs": args.epochs}
    wanted = {}
    if args.distill is not None:
        wanted["distill"] = Distill(teacher, teacher_name or str(args.distill),
                                    args.temperature, args.alpha)
    if args.lowrank is not None:
        wanted["lowrank"] = LowRank(energy=args.lowrank, **extra)
    if args.prune_channels is not None:
        wanted["prune-channels"] = PruneChannels(args.prune_channels, **extra)
    if args.prune is not None:
        wanted["prune"] = Prune(args.prune, scope=args.prune_scope, **extra)
    if args.quantize is not None:
        wanted["quantize"] = Quantize(args.quantize, calibration=args.calibration,
                                      qat_epochs=args.qat_epochs)
    order = _order(args.steps)
    missing = [s for s in wanted if s not in order]
    if missing:
        raise ConfigError(f"--steps {args.steps} leaves out {', '.join(missing)}, "
                          "which the options ask for")
    return [wanted[s] for s in order if s in wanted]


def _validate_numbers(args) -> None:
    if args.prune is not None and not 0.0 <= args.prune < 1.0:
        raise ConfigError(f"--prune sparsity must be in [0, 1), got {args.prune}")
    if args.prune_channels is not None and not 0.0 < args.prune_channels < 1.0:
        raise ConfigError(f"--prune-channels fraction must be in (0, 1), got {args.prune_channels}")
    if args.lowrank is not None and not 0.0 < args.lowrank <= 1.0:
        raise ConfigError(f"--lowrank energy must be in (0, 1], got {args.lowrank}")
    if args.batch < 0:
        raise ConfigError(f"--batch must be >= 0 (0: dynamic), got {args.batch}")
    if args.epochs is not None and args.epochs < 0:
        raise ConfigError("--epochs must be >= 0")


def cmd_compress(args) -> int:
    from toolchain import models
    from toolchain.compress import Context, compress, export_onnx, onnx_accuracy, quantization_meta
    from toolchain.outdir import staged_file

    if args.model is None:
        raise ConfigError("compress needs MODEL (a zoo name or a .pt file)")
    if args.output is None:
        raise ConfigError("compress needs -o OUT.onnx (on the command line or in --config)")
    if args.output.suffix != ".onnx":
        raise ConfigError(f"-o must name an .onnx file, got {args.output}")
    _validate_numbers(args)
    module, name = _load_module(str(args.model), "model")
    data_name = name if module is None else args.data
    if data_name is None:
        raise ConfigError(f"{args.model} is a model file: say which data it takes with --data "
                          f"(one of {', '.join(models.names())})")
    ctx = Context.for_zoo(data_name)
    teacher, teacher_name = None, None
    if args.distill is not None:
        teacher, teacher_name = _load_module(str(args.distill), "teacher")
        if teacher is None:
            teacher = models.trained(teacher_name, args.cache_dir)
    steps = build_steps(args, teacher, teacher_name)
    if module is None:
        # a distilled student starts untrained; otherwise start from the trained zoo model
        distill_first = bool(steps) and steps[0].name == "distill"
        module = models.build(name) if distill_first else models.trained(name, args.cache_dir)
    model, report = compress(module, steps, ctx, name)
    mode = next((s.mode for s in steps if s.name == "quantize"), None)
    result = export_onnx(model, args.output, ctx.X_test, steps=report.step_configs(),
                         mode=quantization_meta(mode), batch=args.batch or None)
    onnx_acc = round(onnx_accuracy(args.output, ctx.X_test, ctx.y_test), 3)
    report.export = {**result.to_json(), "onnx_accuracy": onnx_acc,
                     "quantization": quantization_meta(mode)}
    out_json = args.output.with_suffix(".json")
    with staged_file(out_json) as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    first, last = report.initial, report.final
    print(f"{name}: {' -> '.join(s.name for s in steps) or 'no step (float export)'}")
    print(f"  accuracy {first.accuracy:.2f}% -> {onnx_acc:.2f}% (onnxruntime), "
          f"params {first.params} -> {last.params}, non-zeros {first.nonzeros} -> "
          f"{last.nonzeros}, MACs {first.macs} -> {last.macs}, bytes {first.bytes} -> {last.bytes}")
    print(f"  wrote {args.output} ({result.file_bytes} bytes) and {out_json}")
    return 0
