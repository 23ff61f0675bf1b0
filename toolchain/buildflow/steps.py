"""The build steps, in order: load, compress, export, compile, verify, simulate, report.

Each step is a function ``step(ctx) -> summary``: it reads the folders of the steps it depends
on (``ctx.inputs``, by role), writes its artifact into ``ctx.stage`` (an empty folder that is
renamed into ``OUT/<step>/`` or ``OUT/<target>/<step>/`` once the step is done) and returns a
small dict for its ``step.json``. ``material(job)`` is what, besides its inputs' content, the
step's result depends on: it goes into the cache key.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from toolchain.buildflow.cache import file_hash, version_line
from toolchain.buildflow.sources import (MODEL_FILES, code_identity, data_context,
                                         data_identity, data_ref, load_folder, load_source)
from toolchain.buildflow.config import (STEP_KEYS, ModelSource, TargetConfig, changed,
                                        namespace, options_json)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One step of the build for one model chain or one target."""

    step: str
    folder: str                            # relative to OUT: "export", "arm-a72/compile"
    model: ModelSource
    compress: Any
    target: TargetConfig | None = None
    inputs: tuple[tuple[str, str], ...] = ()   # (role, folder of the job it reads)


@dataclass(frozen=True)
class StepContext:
    job: Job
    out: Path                              # the build's output folder
    stage: Path                            # where the step writes; renamed into place after
    inputs: dict[str, Path] = field(default_factory=dict)

    def input(self, role: str) -> Path:
        return self.inputs[role]


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _copy_model(src: Path, stage: Path) -> str:
    """Copy the folder's model file (model.onnx, .pt or .pt2) into ``stage``; its name."""
    for name in MODEL_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, stage / name)
            return name
    raise FileNotFoundError(src / "model.onnx")


# ---------------------------------------------------------------- load
def load(ctx: StepContext) -> dict:
    """The model as given: a trained zoo module, or the file (checked that it loads)."""
    import torch

    m = ctx.job.model
    if m.kind == "zoo":
        from toolchain import models

        torch.save(models.trained(m.source), ctx.stage / "model.pt")
    elif m.kind == "class":  # pickled by reference to its registered source (sources.py)
        torch.save(load_source(m), ctx.stage / "model.pt")
    elif m.kind in ("torch", "program"):
        load_source(m)
        shutil.copyfile(m.source, ctx.stage / ("model.pt2" if m.kind == "program" else
                                               "model.pt"))
    else:
        from toolchain.onnx_io import load_model

        load_model(Path(m.source))
        shutil.copyfile(m.source, ctx.stage / "model.onnx")
    summary = {"source": m.source, "kind": m.kind}
    _write_json(ctx.stage / "source.json", summary)
    return summary


# ---------------------------------------------------------------- compress
def compress(ctx: StepContext) -> dict:
    """The compression steps of ``edgec compress`` on the loaded module (none: a copy).
    A module that does not pickle (a torchao-converted graph) is exported here at once:
    the folder then holds model.onnx and export.json, which the export step takes as they are."""
    import numpy as np
    import torch

    from toolchain import models
    from toolchain.commands.compress import _load_module, build_steps
    from toolchain.compress import compress as run_steps

    m, src = ctx.job.model, ctx.input("model")
    if not any(k in STEP_KEYS for k in changed(ctx.job.compress)):
        _copy_model(src, ctx.stage)
        return {"steps": []}
    args = namespace("compress", ctx.job.compress)
    teacher = teacher_name = None
    if args.distill is not None:
        teacher, teacher_name = _load_module(str(args.distill), "teacher")
        teacher = teacher if teacher is not None else models.trained(teacher_name)
    # a model file is never fine-tuned unless the build asks for epochs (as edgec compress)
    steps = build_steps(args, teacher, teacher_name, model_file=m.kind != "zoo")
    if steps[0].name == "distill" and m.kind == "zoo":
        module = models.build(m.source)  # a distilled student starts untrained
    else:
        module = load_folder(src, m)
    name = m.source if m.kind == "zoo" else Path(m.source.rpartition(":")[2] if m.kind ==
                                                  "class" else m.source).stem
    data = data_context(m, ctx.job.compress, module)
    small, report = run_steps(module, steps, data, name)
    _write_json(ctx.stage / "compress.json", report.to_json())
    if report.reference is not None:  # the original's outputs, for export's onnxruntime score
        np.save(ctx.stage / "reference.npy", report.reference)
    try:
        torch.save(small, ctx.stage / "model.pt")
    except (AttributeError, TypeError, pickle.PicklingError) as exc:
        (ctx.stage / "model.pt").unlink(missing_ok=True)
        log.info("the compressed model does not pickle (%s); exporting it now", exc)
        _write_onnx(small, ctx.job, data, ctx.stage, ctx.stage)
    return {"steps": [s.name for s in steps], "accuracy": [report.initial.accuracy,
                                                          report.final.accuracy],
            "metric": report.final.metric, "score": [report.initial.score, report.final.score]}


# ---------------------------------------------------------------- export
def _write_onnx(module, job: Job, data, src: Path, stage: Path) -> dict:
    """model.onnx (QDQ when quantized) and export.json: onnxruntime checked against PyTorch,
    and scored with the run's metric on the evaluation split."""
    import numpy as np

    from toolchain.compress import export_onnx, onnx_accuracy, onnx_outputs, quantization_meta
    from toolchain.compress.evaluate import PERCENT
    from toolchain.models.train import predict
    from toolchain.onnx_io import parse_input_shapes
    from toolchain.torch_input import quantization_of

    m, opts, out = job.model, job.compress, stage / "model.onnx"
    mode = quantization_meta(opts.quantize) if opts.quantize else (
        quantization_of(module) or quantization_meta(None))
    steps = _read_json(src / "compress.json").get("steps", [])
    names = list(parse_input_shapes(m.input_shape))
    result = export_onnx(module, out, data.X_test, steps=[s["config"] for s in steps],
                         mode=mode, batch=opts.batch or None,
                         **({"input_name": names[0]} if len(names) == 1 else {}))
    summary = {**result.to_json(), "path": out.name, "quantization": mode}
    if data.metric is None:  # a zoo data set: top-1
        summary["onnx_accuracy"] = round(onnx_accuracy(out, data.X_test, data.y_test), 3)
    else:
        reference = (np.load(src / "reference.npy") if (src / "reference.npy").is_file()
                     else predict(module, data.X_test))
        score = data.metric.score(onnx_outputs(out, data.X_test), data.y_test, reference)
        score = round(score, 3) if data.metric.name in PERCENT else score
        summary.update(metric=data.metric.name, onnx_score=score,
                       onnx_accuracy=score if data.metric.name == "top1" else None)
    _write_json(stage / "export.json", summary)
    return summary


def export(ctx: StepContext) -> dict:
    """ONNX (QDQ when quantized), checked against PyTorch with onnxruntime."""
    from toolchain.onnx_io import parse_input_shapes
    from toolchain.torch_input import export_module, input_shape_for

    m, src, opts = ctx.job.model, ctx.input("model"), ctx.job.compress
    if (src / "model.onnx").is_file():  # an ONNX model, or exported by compress
        _copy_model(src, ctx.stage)
        if not (src / "export.json").is_file():
            return {}
        shutil.copyfile(src / "export.json", ctx.stage / "export.json")
        summary = _read_json(src / "export.json")
    else:
        module = load_folder(src, m)
        if data_ref(m, opts) is None:
            name, shape = input_shape_for(parse_input_shapes(m.input_shape), m.source)
            export_module(module, ctx.stage / "model.onnx", shape, name)
            return {"file_bytes": (ctx.stage / "model.onnx").stat().st_size}
        summary = _write_onnx(module, ctx.job, data_context(m, opts, module), src, ctx.stage)
    return {"onnx_accuracy": summary.get("onnx_accuracy"), "file_bytes": summary["file_bytes"],
            "onnx_score": summary.get("onnx_score", summary.get("onnx_accuracy"))}


# ---------------------------------------------------------------- compile
def compile(ctx: StepContext) -> dict:
    """optimize + emit + link for one target: ``edgec compile`` into the step's folder."""
    from toolchain.commands.build import compile_folder

    t, m = ctx.job.target, ctx.job.model
    shapes = t.compile.input_shape or (m.input_shape if m.kind == "onnx" else ())
    # the target's typed options as the build file gave them (edgec.json saves them)
    report = compile_folder(ctx.input("model") / "model.onnx", t.name, ctx.stage,
                            replace(t.compile, input_shape=tuple(shapes)))
    keep = ("binary_bytes", "library_bytes", "memory", "total_seconds")
    return {k: report[k] for k in keep if k in report}


# ---------------------------------------------------------------- verify
BENCH_RUNS = 10  # timed runs of a verified artifact; bench.json keeps their median
def verify(ctx: StepContext) -> dict:
    """Run the artifact and onnxruntime on the same inputs (``edgec verify``); then, for a
    target whose backend can time its artifact (``bench``), BENCH_RUNS timed runs."""
    from toolchain.commands.build import verify_folder
    from toolchain.targets import backend_for

    v = ctx.job.target.verify
    results = verify_folder(ctx.input("compiled"), list(v.input), v.seed, v.tolerance)
    ok = all(c.ok for c in results)
    _write_json(ctx.stage / "verify.json", {"ok": ok, "outputs": [c.to_json() for c in results]})
    summary = {"ok": ok, "bad_outputs": [c.name for c in results if not c.ok]}
    bench = getattr(backend_for(ctx.job.target.family), "bench", None)
    if ok and bench is not None and "lm" not in _read_json(ctx.input("compiled") / "edgec.json"):
        # the latency the build's report shows beside the other targets' (a language model
        # generates instead: edgec run --prompt gives its tokens/s)
        timing = bench(ctx.input("compiled"), BENCH_RUNS)
        _write_json(ctx.stage / "bench.json", timing)
        summary["median_ms"] = timing["median_ms"]
    return summary


# ---------------------------------------------------------------- simulate
def _simulate_args(job: Job):
    """The target's typed simulate options; by default the zoo test set the model was
    trained for."""
    options = job.target.simulate
    if options.dataset is None and options.test_data is None:
        options = replace(options, dataset=job.model.data_name)
    return options


def simulate(ctx: StepContext) -> dict:
    """The target's simulators (``edgec simulate``) on a copy of the compiled folder (they
    write into it; the compile step's folder stays as it was built)."""
    from toolchain.targets import backend_for

    with tempfile.TemporaryDirectory(prefix=".design.", dir=ctx.stage) as tmp:
        design = Path(tmp) / "design"
        shutil.copytree(ctx.input("compiled"), design)
        report = backend_for(ctx.job.target.family).simulate(design, _simulate_args(ctx.job))
    _write_json(ctx.stage / "simulation.json", report)
    return {}


# ---------------------------------------------------------------- report
def _write_page(ctx: StepContext) -> None:
    """report.html: the build's summary page (``edgec report OUT --html`` writes the same),
    read from the finished step folders in OUT."""
    from toolchain.reports.build import load_build
    from toolchain.reports.buildpage import render

    (ctx.stage / "report.html").write_text(render(load_build(ctx.out)))


def _slim(d: dict, drop: tuple[str, ...] = ("layers",)) -> dict:
    return {k: v for k, v in d.items() if k not in drop}


def report(ctx: StepContext) -> dict:
    """One report.json: what each model chain and each target gave, from the artifacts."""
    models_out: dict[str, dict] = {}
    targets: dict[str, dict] = {}
    for role, folder in ctx.inputs.items():
        owner, _, step = role.rpartition("/")
        if step in ("load", "compress", "export"):
            entry = models_out.setdefault(owner or "main", {})
            if step == "load":
                entry["source"] = _read_json(folder / "source.json").get("source")
            elif step == "compress" and (folder / "compress.json").is_file():
                c = _read_json(folder / "compress.json")
                entry["compress"] = {"steps": [s["config"] for s in c["steps"]],
                                     "initial": c["initial"], "final": c["final"]}
            elif step == "export":
                entry["export"] = _read_json(folder / "export.json")
        elif step == "compile":
            r = _read_json(folder / "report.json")
            keep = ("target", "binary_bytes", "library_bytes", "memory", "kernel_calls",
                    "utilization", "total_seconds")
            entry = targets.setdefault(owner, {})
            entry["compile"] = {k: r[k] for k in keep if k in r}
            if "estimate" in r:
                entry["compile"]["estimate"] = _slim(r["estimate"])
        elif step == "verify":
            targets.setdefault(owner, {})["verify"] = _read_json(folder / "verify.json")
        elif step == "simulate":
            s = _read_json(folder / "simulation.json")
            targets.setdefault(owner, {})["simulate"] = {
                k: _slim(v) if isinstance(v, dict) else v for k, v in s.items()}
    for name, entry in targets.items():  # which model chain each target compiled
        entry["model"] = name if f"{name}/export" in ctx.inputs else "main"
    _write_json(ctx.stage / "report.json", {"models": models_out, "targets": targets})
    _write_page(ctx)
    return {"targets": sorted(targets),
            "verified": sorted(n for n, e in targets.items() if e.get("verify", {}).get("ok"))}


# ---------------------------------------------------------------- cache material
def _compiler_of(target: TargetConfig) -> tuple[str, ...]:
    """The argv of the C/C++ compiler a target's compile runs (for its --version line)."""
    from toolchain.targets import backend_for, device

    return backend_for(target.family).compiler_argv(device(target.name), target.compile)


def _files_hashed(options: dict, typed: Any) -> dict:
    """Options as JSON, each file-valued one replaced by its content hash."""
    out = {}
    for key, value in options.items():
        original = getattr(typed, key)
        items = original if isinstance(original, tuple) else (original,)
        if any(isinstance(v, Path) for v in items):
            value = [file_hash(v) if Path(v).is_file() else str(v) for v in items]
        out[key] = value
    return out


def _source_identity(m: ModelSource) -> dict:
    if m.kind == "zoo":
        from toolchain import models

        ident = {"zoo": m.source, "zoo_key": models.cache_key(m.source)}
    elif m.kind == "class":
        ident = {**code_identity(m.source, m.module_path), "kind": m.kind,
                 "weights_sha256": file_hash(Path(m.weights))}
    else:
        ident = {"file_sha256": file_hash(Path(m.source)), "kind": m.kind}
    return {**ident, "input_shape": list(m.input_shape), "data": m.data_name}


def _data_identity(job: Job) -> dict:
    """The content of the step's data and of a metric of the user's own (sources.py)."""
    m, opts = job.model, job.compress
    out = {"data": data_identity(data_ref(m, opts), m.module_path)}
    if opts.metric is not None and ":" in opts.metric:
        out["metric"] = code_identity(opts.metric, m.module_path)
    return out


def material(job: Job) -> dict:
    """What the step's output depends on besides its inputs' content."""
    if job.step in ("load", "compress", "export"):
        out = {"model": _source_identity(job.model)}
        if job.step != "load":
            out["compress"] = options_json(job.compress)
            out["data_content"] = _data_identity(job)
        return out
    t = job.target
    if job.step == "compile":
        return {"target": t.name, "options": options_json(t.compile),
                "compiler": version_line(_compiler_of(t))}
    if job.step == "verify":
        return {"target": t.name, "options": _files_hashed(options_json(t.verify), t.verify)}
    if job.step == "simulate":
        args = _simulate_args(job)
        return {"target": t.name, "options": _files_hashed(options_json(t.simulate),
                                                           t.simulate),
                "dataset": args.dataset}
    return {}


STEPS: dict[str, Callable[[StepContext], dict]] = {
    "load": load, "compress": compress, "export": export, "compile": compile,
    "verify": verify, "simulate": simulate, "report": report,
}
