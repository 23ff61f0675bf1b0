"""The build steps, in order: load, compress, export, compile, verify, simulate, report.

Each step is a function ``step(ctx) -> summary``: it reads the folders of the steps it depends
on (``ctx.inputs``, by role), writes its artifact into ``ctx.stage`` (an empty folder that is
renamed into ``OUT/<step>/`` or ``OUT/<target>/<step>/`` once the step is done) and returns a
small dict for its ``step.json``. ``material(job)`` is what, besides its inputs' content, the
step's result depends on: it goes into the cache key.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from toolchain.buildflow.cache import file_hash, version_line
from toolchain.buildflow.config import (STEP_KEYS, ModelSource, TargetConfig, changed,
                                        namespace, options_json)


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
    """Copy the folder's model file (model.onnx or model.pt) into ``stage``; return its name."""
    for name in ("model.onnx", "model.pt"):
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
    elif m.kind == "torch":
        from toolchain.torch_input import load_module

        load_module(Path(m.source))
        shutil.copyfile(m.source, ctx.stage / "model.pt")
    else:
        from toolchain.onnx_io import load_model

        load_model(Path(m.source))
        shutil.copyfile(m.source, ctx.stage / "model.onnx")
    summary = {"source": m.source, "kind": m.kind}
    _write_json(ctx.stage / "source.json", summary)
    return summary


# ---------------------------------------------------------------- compress
def compress(ctx: StepContext) -> dict:
    """The compression steps of ``edgec compress`` on the loaded module (none: a copy)."""
    import torch

    from toolchain import models
    from toolchain.commands.compress import _load_module, build_steps
    from toolchain.compress import Context
    from toolchain.compress import compress as run_steps
    from toolchain.torch_input import load_module

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
        module = load_module(src / "model.pt")
    name = m.source if m.kind == "zoo" else Path(m.source).stem
    small, report = run_steps(module, steps, Context.for_zoo(m.data_name), name)
    torch.save(small, ctx.stage / "model.pt")
    _write_json(ctx.stage / "compress.json", report.to_json())
    return {"steps": [s.name for s in steps], "accuracy": [report.initial.accuracy,
                                                          report.final.accuracy]}


# ---------------------------------------------------------------- export
def export(ctx: StepContext) -> dict:
    """ONNX (QDQ when quantized), checked against PyTorch with onnxruntime."""
    from toolchain.compress import Context, export_onnx, onnx_accuracy, quantization_meta
    from toolchain.onnx_io import parse_input_shapes
    from toolchain.torch_input import (export_module, input_shape_for, load_module,
                                       quantization_of)

    m, src, opts = ctx.job.model, ctx.input("model"), ctx.job.compress
    if (src / "model.onnx").is_file():
        _copy_model(src, ctx.stage)
        return {}
    module = load_module(src / "model.pt")
    out = ctx.stage / "model.onnx"
    if m.data_name is None:
        name, shape = input_shape_for(parse_input_shapes(m.input_shape), m.source)
        export_module(module, out, shape, name)
        return {"file_bytes": out.stat().st_size}
    data = Context.for_zoo(m.data_name)
    mode = quantization_meta(opts.quantize) if opts.quantize else (
        quantization_of(module) or quantization_meta(None))
    steps = _read_json(src / "compress.json").get("steps", [])
    result = export_onnx(module, out, data.X_test, steps=[s["config"] for s in steps],
                         mode=mode, batch=opts.batch or None)
    summary = {**result.to_json(), "path": out.name, "quantization": mode,
               "onnx_accuracy": round(onnx_accuracy(out, data.X_test, data.y_test), 3)}
    _write_json(ctx.stage / "export.json", summary)
    return {"onnx_accuracy": summary["onnx_accuracy"], "file_bytes": result.file_bytes}


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
    else:
        ident = {"file_sha256": file_hash(Path(m.source)), "kind": m.kind}
    return {**ident, "input_shape": list(m.input_shape), "data": m.data_name}


def material(job: Job) -> dict:
    """What the step's output depends on besides its inputs' content."""
    if job.step in ("load", "compress", "export"):
        out = {"model": _source_identity(job.model)}
        if job.step != "load":
            out["compress"] = options_json(job.compress)
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
