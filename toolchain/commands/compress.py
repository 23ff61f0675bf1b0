"""edgec zoo / edgec compress: list the reference models; compress one and export ONNX + report.

``edgec compress MODEL [--data DATA] [--metric M] [--distill TEACHER] [--lowrank ENERGY]
[--prune SPARSITY] [--prune-channels FRACTION] [--quantize int8|int4|fixed<W,I>] -o OUT.onnx``
trains the zoo model if needed, or loads the user's model (a ``torch.save``d module, a
``torch.export`` ``.pt2`` program, or ``file.py:ClassName`` with ``--weights``) with the data
``--data`` gives (a zoo data set, an .npz, a folder of .npy files or module:function; see
``toolchain.compress.data``), applies the steps in the order of ``--steps`` (default: distill,
lowrank, prune-channels, prune, quantize), exports OUT.onnx and writes OUT.json beside it, with
the metric (``toolchain.compress.evaluate``) before and after each step and on the ONNX file.

A model file is fine-tuned only when ``--epochs N`` (or ``--qat-epochs N``) asks for it, and
only on labelled data the user gave: without labels, quantization calibrates and pruning
prunes, and a step that needs labels says so. All options can come from the ``[compress]``
table of a ``--config`` TOML file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from toolchain.errors import ConfigError, ModelError
from toolchain.commands import compress_lm as lm_cli
from toolchain.commands.compress_lm import prune_value

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
    p.add_argument("model", nargs="?", help="zoo model name (see 'edgec zoo'), a .pt file "
                                            "holding a torch.save()d nn.Module, a .pt2 "
                                            "torch.export program, or file.py:ClassName "
                                            "(with --weights)")
    p.add_argument("-o", "--output", type=Path, help="the ONNX file to write (OUT.onnx)")
    p.add_argument("--data", help="the data: a zoo model's data set (e.g. cnn), DATA.npz (x, "
                                  "optional y, x_test, y_test), a folder of x.npy [y.npy ...], "
                                  "or module:function returning a torch Dataset / DataLoader")
    p.add_argument("--metric", help="top1, top5, mse, mae, agree, pixel-agree (per position of "
                                    "a dense output), drift, or module:function "
                                    "called as function(outputs, labels) (default: top1 for "
                                    "class labels, mse for float targets, agree without labels)")
    p.add_argument("--weights", type=Path, metavar="STATE_DICT",
                   help="state dict to load into a file.py:ClassName model")
    p.add_argument("--module-path", action="append", default=[], metavar="DIR",
                   help="folder with the source a pickled .pt module, a file.py:ClassName, "
                        "--data or --metric imports (repeatable)")
    p.add_argument("--distill", metavar="TEACHER",
                   help="train the model from scratch on TEACHER's soft targets (zoo name or .pt)")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    p.add_argument("--alpha", type=float, default=0.7, help="weight of the soft-target loss")
    p.add_argument("--lowrank", type=float, metavar="ENERGY",
                   help="SVD-factorize Linear / 1x1 conv layers keeping this energy, e.g. 0.9")
    p.add_argument("--prune", type=prune_value, metavar="SPARSITY",
                   help="unstructured magnitude pruning to this sparsity in [0, 1) "
                        "(language models also 2:4)")
    p.add_argument("--prune-scope", default="layer", help="layer (default) or global")
    p.add_argument("--prune-channels", type=float, metavar="FRACTION",
                   help="remove this fraction of the channels / neurons of each prunable layer")
    p.add_argument("--quantize", metavar="MODE", help="int8, int4 or fixed<W,I> (e.g. fixed<8,3>)")
    p.add_argument("--calibration", default="minmax", help="minmax, percentile or histogram")
    p.add_argument("--quantizer", default="auto",
                   help="auto (default: edgec's own; torchao's PT2E flow for Conv1d / "
                        "ConvTranspose / LSTM, which edgec's refuses, and for int8/int4 "
                        "models with attention or embeddings, which it leaves float), edgec, "
                        "or torchao (int8/int4 weights, PTQ or --qat-epochs)")
    p.add_argument("--qat-epochs", type=int, default=0,
                   help="quantization-aware fine-tuning epochs after calibration")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs after prune / lowrank steps "
                                              "(default: the step's for a zoo model, 0 for a "
                                              "model file)")
    p.add_argument("--steps", help="order of the steps, comma-separated (default: "
                                   + ",".join(ORDER) + ")")
    p.add_argument("--batch", type=int, default=1,
                   help="static batch size of the ONNX input (default 1; 0: dynamic)")
    p.add_argument("--cache-dir", type=Path, help="where trained zoo weights are cached")
    p.add_argument("--config", type=Path, help="TOML file with a [compress] table of options")
    lm_cli.add_options(p)  # language models: toolchain/commands/compress_lm.py
    p.set_defaults(func=cmd_compress, command_parser=p)


def _load_module(ref: str, what: str, module_paths=(), weights=None, untrained_ok=False):
    """A zoo name -> (None, name); a model file or file.py:ClassName -> (module, stem)."""
    from toolchain import models
    from toolchain.torch_input import is_class_ref, load_module

    if ref in models.names():
        return None, ref
    if is_class_ref(ref):
        return (load_module(ref, what, module_paths, weights, untrained_ok),
                ref.rpartition(":")[2])
    path = Path(ref)
    if not path.exists():
        if path.suffix or "/" in ref:
            raise ModelError(f"{what} file not found: {path}")
        raise ConfigError(f"unknown {what} '{ref}': not a zoo model ({', '.join(models.names())}) "
                          "and no such file")
    if path.suffix.lower() == ".onnx":
        raise ConfigError(f"{path} is an ONNX model; compress takes a PyTorch model (a zoo name "
                          "or a torch.save()d nn.Module), ONNX goes straight to 'edgec compile'")
    return load_module(path, what, module_paths, weights), path.stem


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


def build_steps(args, teacher=None, teacher_name: str | None = None,
                model_file: bool = False) -> list:
    """The steps the options ask for, in ``--steps`` order (each validates its own values).
    A model file (``model_file``) is not fine-tuned unless ``--epochs`` asks for it."""
    from toolchain.compress import Distill, LowRank, Prune, PruneChannels, Quantize

    epochs = 0 if args.epochs is None and model_file else args.epochs
    extra = {} if epochs is None else {"epochs": epochs}
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
                                      qat_epochs=args.qat_epochs,
                                      quantizer=getattr(args, "quantizer", "auto"))
    order = _order(args.steps)
    missing = [s for s in wanted if s not in order]
    if missing:
        raise ConfigError(f"--steps {args.steps} leaves out {', '.join(missing)}, "
                          "which the options ask for")
    return [wanted[s] for s in order if s in wanted]


def _validate_numbers(args) -> None:
    if isinstance(args.prune, str):
        raise ConfigError(f"--prune {args.prune} is for language models; give a sparsity")
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


def _context(args, module, name: str):
    """The data (``--data``, or the zoo model's own) with its metric chosen."""
    from toolchain.compress import Context, load_data, metric_for
    from toolchain.compress.pipeline import check_io
    from toolchain.models.train import predict

    if args.data is None and module is not None:
        raise ConfigError(f"{args.model} is a model file: give its data with --data (DATA.npz, "
                          "a folder of .npy files, module:function, or a zoo data set)")
    ctx = load_data(args.data, args.module_path) if args.data else Context.for_zoo(name)
    if module is not None:
        check_io(module, ctx)
        outputs = predict(module, ctx.X_test[:2])
    else:  # a zoo model gives (batch, classes) logits
        outputs = np.zeros((1, int(np.max(ctx.y_train)) + 1), np.float32)
    from dataclasses import replace

    return replace(ctx, metric=metric_for(args.metric, ctx.y_test, outputs, args.module_path))


def cmd_compress(args) -> int:
    from toolchain import models
    from toolchain.compress import compress, export_onnx, onnx_outputs, quantization_meta
    from toolchain.compress.evaluate import PERCENT
    from toolchain.outdir import staged_file

    if args.model is None:
        raise ConfigError("compress needs MODEL (a zoo name or a .pt file)")
    if lm_cli.is_lm(str(args.model)):
        return lm_cli.cmd_compress_lm(args)
    if args.output is None:
        raise ConfigError("compress needs -o OUT.onnx (on the command line or in --config)")
    if args.output.suffix != ".onnx":
        raise ConfigError(f"-o must name an .onnx file, got {args.output}")
    _validate_numbers(args)
    # a student that distillation trains from scratch may come without weights
    module, name = _load_module(str(args.model), "model", args.module_path, args.weights,
                                untrained_ok=args.distill is not None)
    if module is None and args.weights is not None:
        raise ConfigError("--weights goes with a file.py:ClassName model")
    ctx = _context(args, module, name)
    teacher, teacher_name = None, None
    if args.distill is not None:
        teacher, teacher_name = _load_module(str(args.distill), "teacher", args.module_path)
        if teacher is None:
            teacher = models.trained(teacher_name, args.cache_dir)
    steps = build_steps(args, teacher, teacher_name, model_file=module is not None)
    if module is None:
        # a distilled student starts untrained; otherwise start from the trained zoo model
        distill_first = bool(steps) and steps[0].name == "distill"
        module = models.build(name) if distill_first else models.trained(name, args.cache_dir)
    model, report = compress(module, steps, ctx, name)
    mode = next((s.mode for s in steps if s.name == "quantize"), None)
    result = export_onnx(model, args.output, ctx.X_test, steps=report.step_configs(),
                         mode=quantization_meta(mode), batch=args.batch or None)
    metric = ctx.metric
    onnx_score = metric.score(onnx_outputs(args.output, ctx.X_test), ctx.y_test,
                              report.reference)
    if metric.name in PERCENT:
        onnx_score = round(onnx_score, 3)
    report.export = {**result.to_json(), "metric": metric.name, "onnx_score": onnx_score,
                     "onnx_accuracy": onnx_score if metric.name == "top1" else None,
                     "quantization": quantization_meta(mode), "data": ctx.source,
                     "labels": ctx.has_labels}
    out_json = args.output.with_suffix(".json")
    with staged_file(out_json) as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    first, last = report.initial, report.final
    unit = "%" if metric.name in PERCENT else ""
    print(f"{name}: {' -> '.join(s.name for s in steps) or 'no step (float export)'}")
    print(f"  {metric.name} {first.score:.4g}{unit} -> {onnx_score:.4g}{unit} (onnxruntime), "
          f"params {first.params} -> {last.params}, non-zeros {first.nonzeros} -> "
          f"{last.nonzeros}, MACs {first.macs} -> {last.macs}, bytes {first.bytes} -> {last.bytes}")
    print(f"  wrote {args.output} ({result.file_bytes} bytes) and {out_json}")
    return 0
