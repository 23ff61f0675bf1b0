"""The ARM family backend (and ``host``): TVM kernels + generated C driver, no runtime.

compile: ONNX -> Relax -> the ``cpu`` pipeline (fold, legalize, fuse, schedule) -> a static
kernel plan -> memory plan -> kernels.o (LLVM for the device) + model.c/main.c -> a static
executable ``model`` and an embeddable ``libmodel.a`` + ``model.h``.
run: the executable, natively or under qemu-user.
``--threads N`` (N > 1) makes the heavy kernels' outer loops parallel and adds a static pthread
pool to the driver; 1 (the default) builds exactly what it always did.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from toolchain.errors import ConfigError
from toolchain.reports.schema import CpuReport
from toolchain.targets.cpu.cc import find_compiler
from toolchain.targets.cpu.device import CpuDevice
from toolchain.targets.cpu.options import CpuOptions
from toolchain.targets.registry import Backend, Device, NodeSupport, register_backend

log = logging.getLogger(__name__)



# Kernel counts: the integer pipeline is still changing, so a few kernels more or fewer is not a
# regression worth a red test; sizes are tight; the binary moves with the compiler and libc.
_EXACT, _COUNTS, _BYTES, _BINARY = (0.0, 0.0), (0.2, 2.0), (0.05, 256.0), (0.10, 0.0)
BASELINE_TOLERANCES = {
    "target": _EXACT, "pipeline": _EXACT, "schedule": _EXACT, "threads": _EXACT,
    "kernel_calls_before_fusion": _COUNTS, "kernel_calls_after_fusion": _COUNTS,
    "kernel_calls": _COUNTS, "distinct_kernels": _COUNTS,
    "memory.weight_bytes": _BYTES, "memory.arena_bytes": _BYTES,
    "memory.arena_bytes_without_reuse": _BYTES, "memory.workspace_bytes": (0.1, 1024.0),
    "binary_bytes": _BINARY, "library_bytes": _BINARY,
    # schema 2: the arena over the kernel sequence (its peak, its length, its buffers)
    "memory.arena_trace.peak_bytes": _BYTES, "memory.arena_trace.live_bytes#": _COUNTS,
    "memory.arena_trace.buffers#": _COUNTS,
}


@register_backend
class CpuBackend(Backend):
    family = "cpu"
    Options = CpuOptions
    report_class = CpuReport
    baseline_tolerances = BASELINE_TOLERANCES

    # the report: targets/cpu/report_page.py
    report_page = "toolchain.targets.cpu.report_page"

    def describe(self, device: Device) -> str:
        d = CpuDevice.from_device(device)
        where = "native" if d.is_native else f"runs under {d.qemu}"
        return (f"triple {d.triple}, cpu {d.cpu}, features {' '.join(d.features) or '-'}"
                f" ({where})")

    def compiler_argv(self, device: Device, options: CpuOptions) -> tuple[str, ...]:
        from toolchain.errors import EdgecError

        try:
            return find_compiler(CpuDevice.from_device(device), options.compiler).cc
        except EdgecError:
            return ("absent",)

    def support(self, model, device: Device) -> list[NodeSupport]:
        """edgec's cleanup passes, the frontend's checks, then TVM's import and legalization
        (per node when anything fails; no kernel is built): every node, and why each refused
        one is (targets/cpu/support.py)."""
        from toolchain.targets.cpu.support import cpu_support

        cleaned: list = []
        result = cpu_support(model, cleaned_out=cleaned)
        # the compile that follows (edgec compile asks support first) starts from the cleaned
        # graph instead of running the cleanup passes again; kept by identity, taken once
        self._cleaned = (model, cleaned[0]) if cleaned and all(n.supported for n in result) \
            else None
        return result

    def check_tools(self, device: Device, workdir: Path) -> list[str]:
        """Compile, link statically and run ``int main(void) { return 0; }`` for the device."""
        from toolchain.errors import EdgecError
        from toolchain.targets.cpu.runner import clean_env, launcher
        from toolchain.tools import run_tool

        dev = CpuDevice.from_device(device)
        hint = f"apt-get install {' '.join(dev.debian_packages)}" if dev.debian_packages else ""
        src = workdir / "hello.c"
        src.write_text("int main(void) { return 0; }\n")
        try:
            cc = find_compiler(dev)
            cc.compile(src, workdir / "hello.o", workdir)
            cc.link([workdir / "hello.o"], workdir / "hello", workdir)
            run_tool([*launcher(dev), workdir / "hello"], what=f"running a {dev.name} program",
                     env=clean_env(), timeout=120)
        except EdgecError as exc:
            said = "apt-get" in str(exc) or not hint
            return [f"{device.name}: {exc}" + ("" if said else f"  (install: {hint})")]
        return []

    def compile(self, model_path, model, device, options: CpuOptions, stage: Path) -> dict:
        from toolchain.targets.cpu import codegen
        from toolchain.optimizer.frontend import import_onnx
        from toolchain.optimizer.memplan import check_plan, plan_memory
        from toolchain.reports.arena import arena_trace
        from toolchain.targets.cpu.pipeline import PipelineContext, run_pipeline
        from toolchain.optimizer.plan import build_plan
        from toolchain.onnx_io import input_specs, output_specs
        from toolchain.passes import cleanup_passes, transform
        from toolchain.optimizer.kvcache import lm_contract
        from toolchain.targets.cpu import driver, lm_driver

        dev = CpuDevice.from_device(device)
        cc = find_compiler(dev, options.compiler)  # fail fast if missing
        from toolchain.targets.cpu.integer import is_quantized
        from toolchain.targets.cpu.pipeline import default_pipeline, get_pipeline

        threads = options.threads
        quantized = is_quantized(model)
        pipeline = options.pipeline
        if pipeline == "auto":
            pipeline = default_pipeline(quantized)
        get_pipeline(pipeline)  # an unknown name fails before the slow steps
        if pipeline == "cpu-int" and not quantized:
            raise ConfigError(f"option --pipeline cpu-int does not apply to target {device.name} "
                              "for this model: it needs a quantized (QDQ) model, and this one "
                              "has no QuantizeLinear/DequantizeLinear nodes (use --pipeline cpu)")
        if threads > 1 and options.schedule == "none":
            log.warning("--threads %d with --schedule none: plain loops stay serial", threads)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        kept, self._cleaned = getattr(self, "_cleaned", None), None
        model = kept[1] if kept and kept[0] is model else transform(model, cleanup_passes())
        lm = lm_contract(model)  # a language model's decode graph (README, Language models)
        timings["onnx_passes"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mod = import_onnx(model, device.name)
        timings["import"] = time.perf_counter() - t0

        target = dev.tvm_target()
        tune, tune_log = _tune_config(options, dev, device.name)
        ctx = PipelineContext(target=target, schedule=options.schedule,
                              threads=threads, vector=dev.vector_unit(), tune=tune,
                              tune_log=tune_log)
        result = run_pipeline(mod, pipeline, ctx)
        for rec in result.stages:
            timings[f"pipeline.{rec.name}"] = rec.seconds

        t0 = time.perf_counter()
        plan = build_plan(result.mod)
        mem = plan_memory(plan)
        check_plan(plan, mem)
        names_in = [s.name for s in input_specs(model)]
        names_out = [s.name for s in output_specs(model)]
        if lm is not None:
            lm_driver.check_cache_buffers(plan, mem, names_in, names_out, lm)
        timings["plan"] = time.perf_counter() - t0

        with tempfile.TemporaryDirectory(prefix="edgec-build-") as tmp:
            build = Path(tmp)
            t0 = time.perf_counter()
            kmod = codegen.kernel_module(result.mod, plan.kernels())
            ws = codegen.workspace_bytes(kmod)
            codegen.compile_kernels(kmod, target, build / "kernels.o")
            timings["codegen"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            layout, blob = driver.layout_weights(plan)
            (build / "weights.bin").write_bytes(blob)
            (build / "weights.S").write_text(driver.weights_asm("weights.bin"))
            sources = {
                "model.h": driver.header(plan, names_in, names_out, Path(model_path).name,
                                         threads),
                "model.c": driver.model_c(plan, mem, layout, ws, threads,
                                          lm_driver.position_check(plan, mem, names_in, lm)
                                          if lm is not None else ""),
                "main.c": driver.main_c(plan),
            }
            if lm is not None:
                bound = lm_driver.token_bound(plan, names_in, lm)
                sources["model.h"] = lm_driver.add_to_header(sources["model.h"], lm, bound)
                sources["model.c"] += lm_driver.model_c_lm(plan, mem, names_in, names_out, lm)
                sources["main.c"] = lm_driver.main_c(plan)
            for name, text in sources.items():
                (build / name).write_text(text)
            pthread = ("-pthread",) if threads > 1 else ()
            for src in ("weights.S", "model.c", "main.c"):
                cc.compile(build / src, build / (Path(src).stem + ".o"), build,
                           pthread if src == "model.c" else ())
            lib_objs = [build / "kernels.o", build / "weights.o", build / "model.o"]
            try:
                cc.archive(lib_objs, build / "libmodel.a", build)
                cc.link([build / "main.o", build / "libmodel.a"], build / "model", build,
                        pthread)
            finally:
                if options.keep_build:
                    shutil.copytree(build, stage / "build")
            timings["cc"] = time.perf_counter() - t0

            shutil.copyfile(build / "model", stage / "model")
            (stage / "model").chmod(0o755)
            shutil.copyfile(build / "libmodel.a", stage / "libmodel.a")
            shutil.copyfile(build / "model.h", stage / "model.h")
            (stage / "src").mkdir()
            for name in ("model.c", "main.c"):
                shutil.copyfile(build / name, stage / "src" / name)

        return {
            "target": device.name,
            "triple": dev.triple,
            "cpu": dev.cpu,
            "features": list(dev.features),
            "compiler": cc.kind,
            "pipeline": pipeline,
            "schedule": ctx.schedule,
            "threads": threads,
            **result.kernel_report(plan),
            "memory": {**mem.to_json(), "workspace_bytes": driver.workspace_total(ws, threads),
                       "weight_bytes": layout.total,
                       "arena_trace": arena_trace(plan, mem, names_in, names_out)},
            "binary_bytes": (stage / "model").stat().st_size,
            "library_bytes": (stage / "libmodel.a").stat().st_size,
            "stage_seconds": {k: round(v, 3) for k, v in timings.items()},
            "tolerance": 1e-4,
            **({"tuning": tune_log.to_json()} if tune_log is not None else {}),
            **({"lm": {**lm.to_json(), "tokens": bound,
                       "weight_bytes_per_token": lm_driver.weight_bytes_per_token(plan)}}
               if lm is not None else {}),
        }

    def run(self, out_dir: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
        from toolchain.targets.cpu.runner import run_binary

        manifest = json.loads((out_dir / "edgec.json").read_text())
        dev = CpuDevice.from_device(_device(manifest["target"]))
        specs = [(tuple(o["shape"]), o["dtype"]) for o in manifest["outputs"]]
        return run_binary(dev, out_dir / "model", inputs, specs)

    def bench(self, out_dir: Path, runs: int) -> dict:
        """The median milliseconds per inference of the binary's own ``--bench`` loop: on
        this machine for the host, under qemu-user for another CPU (emulated time)."""
        from toolchain.targets.cpu.runner import bench_binary, launcher

        manifest = json.loads((out_dir / "edgec.json").read_text())
        dev = CpuDevice.from_device(_device(manifest["target"]))
        emulator = launcher(dev)
        where = (f"{Path(emulator[0]).name} on this machine, not the board" if emulator
                 else "on this machine")
        return {"runs": runs, "median_ms": bench_binary(dev, out_dir / "model", runs),
                "where": where}

    def profile(self, out_dir: Path, inputs: list[np.ndarray], runs: int):
        """Time per kernel natively, exact instructions per kernel under qemu-user
        (targets/cpu/profile.py): a ``Profile`` for OUT/profile.json."""
        from toolchain.commands.build import folder_options
        from toolchain.targets.cpu.profile import profile_folder

        manifest = json.loads((out_dir / "edgec.json").read_text())
        dev = CpuDevice.from_device(_device(manifest["target"]))
        options = folder_options(manifest)
        return profile_folder(out_dir, dev, options.compiler, options.threads, inputs, runs)

    def generate(self, out_dir: Path, prompt: bytes, tokens: int) -> tuple[list[int], np.ndarray]:
        """A language model's greedy generation by the binary: the ids and their logits."""
        from toolchain.targets.cpu.runner import generate_binary

        manifest = json.loads((out_dir / "edgec.json").read_text())
        dev = CpuDevice.from_device(_device(manifest["target"]))
        return generate_binary(dev, out_dir / "model", prompt, tokens,
                               int(manifest["lm"]["vocab"]))


def _tune_config(options: CpuOptions, dev: CpuDevice, name: str):
    """(TuneConfig, TuneLog) for ``--tune`` / ``--tune-db``, or (None, None)."""
    if options.tune is None and options.tune_db is None:
        return None, None
    flag = "--tune" if options.tune is not None else "--tune-db"
    if not dev.is_native and not dev.qemu:
        raise ConfigError(f"{flag} on {name} scores candidates by instruction counts under "
                          f"qemu-user, and {name} names no emulator")
    if not dev.is_native and options.threads > 1:
        raise ConfigError(f"{flag} on {name} counts instructions under qemu, exact for one "
                          f"thread only; compile with --threads 1")
    if options.schedule == "none":
        raise ConfigError(f"{flag} needs --schedule auto (tuned kernels replace edgec's "
                          "schedules only where they measured faster)")
    from toolchain.targets.cpu.tune import (DEFAULT_DB, TuneConfig, TuneLog, check_xgboost,
                                            open_database)

    if options.tune is not None:
        check_xgboost()
        if not dev.is_native:  # qemu and the counting plugin: one-line errors, before tuning
            from toolchain.targets.cpu.profile import count_plugin
            from toolchain.targets.cpu.tune_count import emulator

            emulator(dev)
            count_plugin()
    config = TuneConfig(options.tune or 0, options.tune_db or DEFAULT_DB,
                        None if dev.is_native else dev, options.compiler)
    return config, TuneLog(db=open_database(config, dev.tvm_target(), options.threads))


def _device(name: str) -> Device:
    from toolchain.targets.registry import device

    try:
        return device(name)
    except ConfigError:
        raise ConfigError(f"the folder was built for target '{name}', which this edgec "
                          "does not know") from None
