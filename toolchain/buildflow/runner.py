"""Plan a build's jobs from its config and run them: in step order, cached, staged, resumable.

A job runs when its step lies between ``start`` and ``stop``. A job before ``start`` is not
run: its folder from an earlier build is used, after checking it was made from what the
config gives now (same key), so a restart never mixes in a stale result. Each job's folder is
written into a staging folder and renamed into place (``toolchain.outdir.staged_output``), so
a killed build leaves earlier results intact and no half-written step.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from toolchain.buildflow.cache import STEP_JSON, StepCache, key_of, tool_versions, tree_hash
from toolchain.buildflow.config import BuildConfig
from toolchain.buildflow.steps import STEPS, Job, StepContext, material
from toolchain.errors import ConfigError, VerificationError
from toolchain.outdir import staged_file, staged_output

log = logging.getLogger(__name__)

STEP_NAMES = tuple(STEPS)
BUILD_JSON = "build.json"


def step_index(name: str | None, default: int, option: str) -> int:
    if name is None:
        return default
    if name not in STEPS:
        raise ConfigError(f"unknown step '{name}' for {option}; the steps are: "
                          + ", ".join(STEP_NAMES))
    return STEP_NAMES.index(name)


def plan(cfg: BuildConfig) -> list[Job]:
    """Every job of the build, in step order (a target with a model of its own has its own
    load/compress/export chain in its folder)."""
    from toolchain.targets import backend_for
    from toolchain.targets.registry import Backend

    jobs: list[Job] = []

    def chain(prefix: str, model, compress) -> str:
        load = Job("load", f"{prefix}load", model, compress)
        comp = Job("compress", f"{prefix}compress", model, compress,
                   inputs=(("model", load.folder),))
        exp = Job("export", f"{prefix}export", model, compress, inputs=(("model", comp.folder),))
        jobs.extend((load, comp, exp))
        return exp.folder

    main_export = chain("", cfg.model, cfg.compress) if cfg.model is not None else None
    for t in cfg.targets:
        exported = chain(f"{t.name}/", t.model, t.compress) if t.own_model else main_export
        comp = Job("compile", f"{t.name}/compile", t.model, t.compress, t,
                   (("model", exported),))
        jobs.append(comp)
        jobs.append(Job("verify", f"{t.name}/verify", t.model, t.compress, t,
                        (("compiled", comp.folder),)))
        if type(backend_for(t.family)).simulate is not Backend.simulate:
            jobs.append(Job("simulate", f"{t.name}/simulate", t.model, t.compress, t,
                            (("compiled", comp.folder),)))
    jobs.append(Job("report", "report", None, None,
                    inputs=tuple((j.folder, j.folder) for j in jobs)))
    return sorted(jobs, key=lambda j: STEP_NAMES.index(j.step))


@dataclass(frozen=True)
class StepResult:
    folder: str
    step: str
    cached: bool
    seconds: float
    ran: bool  # False: taken from an earlier build (before --from)


def _recorded(out: Path, job: Job) -> dict:
    path = out / job.folder / STEP_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{out / job.folder} has no finished '{job.step}' step from an "
                          f"earlier build; start at an earlier step (or without --from)") from None


def _key(job: Job, input_hashes: dict[str, str]) -> str:
    return key_of({"step": job.step, "material": material(job), "inputs": input_hashes,
                   "versions": tool_versions()})


def _prepare_output(out: Path) -> None:
    """Create OUT, refusing a folder edgec did not write; drop what a killed build left."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / BUILD_JSON).is_file():
        raise ConfigError(f"output folder {out} is not empty and holds no {BUILD_JSON}; "
                          "choose another folder or empty it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write the output folder {out}: {exc.strerror or exc}") \
            from None
    for leftover in list(out.glob(".*.partial")) + list(out.glob("*/.*.partial")):
        shutil.rmtree(leftover, ignore_errors=True)


def run_build(cfg: BuildConfig, out: Path, start: str | None = None, stop: str | None = None,
              use_cache: bool = True, echo=print) -> list[StepResult]:
    """Run the build into ``out``; ``echo`` gets one line per step."""
    first = step_index(start, 0, "--from")
    last = step_index(stop, len(STEP_NAMES) - 1, "--to")
    if first > last:
        raise ConfigError(f"--from {start} comes after --to {stop}")
    out = Path(out).resolve()
    _prepare_output(out)
    with staged_file(out / BUILD_JSON) as tmp:
        tmp.write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
    cache = StepCache() if use_cache else None
    hashes: dict[str, str] = {}
    results = []
    for job in plan(cfg):
        index = STEP_NAMES.index(job.step)
        if index > last:
            continue
        inputs = {role: hashes[folder] for role, folder in job.inputs}
        key = _key(job, inputs)
        if index < first:
            rec = _recorded(out, job)
            if rec.get("key") != key:
                raise ConfigError(f"{out / job.folder} is out of date: the build file or an "
                                  f"input changed since it was built; start at '{job.step}' "
                                  "or earlier")
            hashes[job.folder] = rec["output_hash"]
            results.append(StepResult(job.folder, job.step, bool(rec.get("cached")),
                                      float(rec.get("seconds", 0)), False))
            continue
        result, output_hash = _run_job(job, out, key, inputs, cache)
        hashes[job.folder] = output_hash
        results.append(result)
        echo(f"{job.folder:<28} {'cached' if result.cached else 'built':<6} "
             f"{result.seconds:7.1f} s")
    return results


def _run_job(job: Job, out: Path, key: str, inputs: dict[str, str],
             cache: StepCache | None) -> tuple[StepResult, str]:
    started = time.perf_counter()
    final = out / job.folder
    meta = None
    with staged_output(final) as stage:
        if cache is not None:
            meta = cache.fetch(key, stage)
        if meta is None:
            ctx = StepContext(job, out, stage, {role: out / folder
                                                for role, folder in job.inputs})
            summary = STEPS[job.step](ctx)
            built_seconds = round(time.perf_counter() - started, 3)
        else:
            summary, built_seconds = meta.get("summary", {}), meta.get("built_seconds")
        output_hash = tree_hash(stage)
        seconds = round(time.perf_counter() - started, 3)
        record = {"step": job.step, "folder": job.folder, "key": key, "cached": meta is not None,
                  "seconds": seconds, "built_seconds": built_seconds, "inputs": inputs,
                  "output_hash": output_hash, "versions": tool_versions(), "summary": summary}
        (stage / STEP_JSON).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    failed = summary.get("ok") is False
    if cache is not None and meta is None and not failed:
        cache.store(key, final, {"step": job.step, "built_seconds": built_seconds,
                                 "summary": summary})
    if failed:  # the folder stays for inspection, uncached, and the build stops here
        raise VerificationError(f"{job.folder}: outputs outside tolerance: "
                                + ", ".join(summary.get("bad_outputs", [])) +
                                f" (see {final / 'verify.json'})")
    return StepResult(job.folder, job.step, meta is not None, seconds, True), output_hash
