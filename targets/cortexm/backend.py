"""The Cortex-M family backend: TVM kernels + the generated C driver on bare metal, no runtime.

compile: ONNX -> Relax -> the CPU pipelines (``cpu``, or ``cpu-int`` for a QDQ model) -> a
static kernel plan -> memory plan -> kernels.o (LLVM for the thumb triple, CPU and features)
+ model.c (the ARM family's static plan: ``const`` weights in flash, the arena a static buffer
in SRAM) -> ``libmodel.a`` (no I/O, no heap, no OS) and ``model.elf``, an image for the
device's board model with edgec's start-up, linker script and a semihosting ``main``.
The arena, workspace and stack are checked against the device's SRAM before anything is built,
and the linker's regions have the device's flash and SRAM sizes.
run: the image under qemu-system-arm, inputs and outputs through semihosting.
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
from toolchain.targets.cpu.backend import BASELINE_TOLERANCES
from toolchain.targets.cortexm.device import McuDevice
from toolchain.targets.cortexm.options import CortexMOptions
from toolchain.targets.registry import Backend, Device, NodeSupport, register_backend

log = logging.getLogger(__name__)


@register_backend
class CortexMBackend(Backend):
    family = "cortexm"
    Options = CortexMOptions
    report_class = CpuReport
    baseline_tolerances = BASELINE_TOLERANCES  # the CPU family's keys

    # the report: targets/cpu/report_page.py (the CPU family's, plus flash and SRAM)
    report_page = "toolchain.targets.cpu.report_page"

    def report_rows(self, folder) -> list[tuple[str, str]]:
        return super().report_rows(folder) + self._page().mcu_rows(folder)

    def describe(self, device: Device) -> str:
        d = McuDevice.from_device(device)
        return (f"triple {d.triple}, cpu {d.cpu}, features {' '.join(d.features) or '-'}, "
                f"flash {d.flash_bytes // 1024} KiB, SRAM {d.ram_bytes // 1024} KiB "
                f"(runs under {d.qemu} -M {d.qemu_machine})")

    def compiler_argv(self, device: Device, options) -> tuple[str, ...]:
        from toolchain.errors import EdgecError
        from toolchain.targets.cortexm.cc import find_compiler

        try:
            return (find_compiler(McuDevice.from_device(device)).gcc,)
        except EdgecError:
            return ("absent",)

    def support(self, model, device: Device) -> list[NodeSupport]:
        """The CPU family's answer (the same passes and kernels), then this family's own
        limit: without a double-precision FPU, a Cast between a float type and a 64-bit
        integer needs libgcc helpers that LLVM calls with another convention (see
        ``_refuse_soft_conversions``, which checks the built objects for the same)."""
        from toolchain.targets.cpu.support import cpu_support

        if McuDevice.from_device(device).double_fpu:
            return cpu_support(model)
        # judged after the cleanup passes, as the frontend's checks: a folded cast needs none
        return cpu_support(model, _float_int64_casts)

    def check_tools(self, device: Device, workdir: Path) -> list[str]:
        """Build ``int main(void) { return 0; }`` with edgec's start-up and run it on the board."""
        from toolchain.errors import EdgecError
        from toolchain.targets.cortexm import board
        from toolchain.targets.cortexm.cc import find_compiler
        from toolchain.targets.cortexm.runner import run_image

        dev = McuDevice.from_device(device)
        for name in board.BOARD_FILES:
            (workdir / name).write_text(board.board_source(name))
        (workdir / "hello.c").write_text("#include <string.h>\nint main(void) { return 0; }\n")
        (workdir / "link.ld").write_text(board.linker_script(dev))
        try:
            cc = find_compiler(dev)
            for src in ("hello.c", "board.c"):
                cc.compile(workdir / src, workdir / (Path(src).stem + ".o"), workdir)
            cc.link([workdir / "hello.o", workdir / "board.o"], workdir / "link.ld",
                    workdir / "hello.elf", workdir)
            run_image(dev, workdir / "hello.elf", [], what=f"running a {dev.name} program",
                      timeout=60)
        except EdgecError as exc:
            said = "apt-get" in str(exc)
            return [f"{device.name}: {exc}" + ("" if said else f"  (install: {dev.install_hint})")]
        return []

    def compile(self, model_path, model, device, options: CortexMOptions,
                stage: Path) -> dict:
        from toolchain.targets.cpu import codegen
        from toolchain.optimizer.frontend import import_onnx
        from toolchain.targets.cpu.integer import is_quantized
        from toolchain.optimizer.memplan import check_plan, plan_memory
        from toolchain.reports.arena import arena_trace
        from toolchain.targets.cpu.pipeline import (PipelineContext, default_pipeline,
                                                  get_pipeline, run_pipeline)
        from toolchain.optimizer.plan import build_plan
        from toolchain.onnx_io import input_specs, output_specs
        from toolchain.passes import cleanup_passes, transform
        from toolchain.targets.cpu import driver
        from toolchain.targets.cortexm import board, fit, int8_dot, soft_double
        from toolchain.targets.cortexm.cc import find_compiler
        from toolchain.targets.cortexm.workspace import compacted_workspace_bytes

        dev = McuDevice.from_device(device)
        if options.stack_bytes is not None:
            dev = McuDevice(**{**dev.__dict__, "stack_bytes": options.stack_bytes})
        cc = find_compiler(dev)  # fail fast if the tools are missing
        quantized = is_quantized(model)
        pipeline = default_pipeline(quantized)
        get_pipeline(pipeline)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        model = transform(model, cleanup_passes())
        timings["onnx_passes"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mod = import_onnx(model, device.name)
        timings["import"] = time.perf_counter() - t0

        target = dev.tvm_target()
        int8_dot.register_all()
        ctx = PipelineContext(target=target, schedule="auto", threads=1,
                              vector=dev.vector_unit())
        result = run_pipeline(mod, pipeline, ctx)
        for rec in result.stages:
            timings[f"pipeline.{rec.name}"] = rec.seconds

        t0 = time.perf_counter()
        plan = build_plan(result.mod)
        mem = plan_memory(plan)
        check_plan(plan, mem)
        timings["plan"] = time.perf_counter() - t0

        with tempfile.TemporaryDirectory(prefix="edgec-build-") as tmp:
            build = Path(tmp)
            t0 = time.perf_counter()
            kmod = codegen.kernel_module(result.mod, plan.kernels())
            ws = compacted_workspace_bytes(kmod)
            layout, blob = driver.layout_weights(plan)
            # Before the slow steps: the arena, workspace and stack must fit the SRAM, the
            # weights the flash.
            io_bytes = 0 if dev.harness_bytes else sum(
                plan.buffers[b].nbytes for b in (*plan.inputs, *plan.outputs))
            fit.check_planned(dev, Path(model_path).name, mem.arena_bytes, ws, layout.total,
                              io_bytes)
            codegen.compile_kernels(kmod, target, build / "kernels.o")
            cc.drop_unwind_tables(build / "kernels.o")
            undefined = cc.undefined_symbols(build / "kernels.o")
            _refuse_soft_conversions(dev, undefined)
            renames, shim_c = ({}, "") if dev.double_fpu else soft_double.shims(undefined)
            cc.redefine_symbols(build / "kernels.o", renames)
            timings["codegen"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            (build / "weights.bin").write_bytes(blob)
            (build / "weights.S").write_text(driver.weights_asm("weights.bin"))
            names_in = [s.name for s in input_specs(model)]
            names_out = [s.name for s in output_specs(model)]
            sources = {
                "model.h": driver.header(plan, names_in, names_out, Path(model_path).name),
                "model.c": driver.model_c(plan, mem, layout, ws),
                "main.c": board.main_c(plan, dev),
                "link.ld": board.linker_script(dev),
                **{name: board.board_source(name) for name in board.BOARD_FILES},
            }
            for name, text in sources.items():
                (build / name).write_text(text)
            lib_srcs = ["weights.S", "model.c"]
            if shim_c:
                (build / "soft_double.c").write_text(shim_c)
                lib_srcs.append("soft_double.c")
            for src in (*lib_srcs, "main.c", "board.c"):
                cc.compile(build / src, build / (Path(src).stem + ".o"), build)
            lib_objs = [build / "kernels.o", *[build / (Path(s).stem + ".o") for s in lib_srcs]]
            cc.archive(lib_objs, build / "libmodel.a", build)
            try:
                cc.link([build / "main.o", build / "board.o", build / "libmodel.a"],
                        build / "link.ld", build / "model.elf", build)
            except fit.DoesNotFitError as exc:
                raise fit.DoesNotFitError(f"{Path(model_path).name} on {dev.name} "
                                          f"({fit.capacity(dev)}): {exc}") from None
            timings["cc"] = time.perf_counter() - t0
            memory = fit.measure(cc, dev, build / "model.elf", build / "libmodel.a",
                                 mem.arena_bytes, ws, layout.total)

            shutil.copyfile(build / "model.elf", stage / "model.elf")
            shutil.copyfile(build / "libmodel.a", stage / "libmodel.a")
            shutil.copyfile(build / "model.h", stage / "model.h")
            (stage / "src").mkdir()
            for name in ("model.c", "main.c", "link.ld", *board.BOARD_FILES):
                shutil.copyfile(build / name, stage / "src" / name)

        return {
            "family": self.family,
            "target": device.name,
            "triple": dev.triple,
            "cpu": dev.cpu,
            "features": list(dev.features),
            "compiler": "gcc",
            "pipeline": pipeline,
            "schedule": ctx.schedule,
            "threads": 1,
            **result.kernel_report(plan),
            "memory": {**mem.to_json(), "workspace_bytes": ws, "weight_bytes": layout.total,
                       "arena_trace": arena_trace(plan, mem, names_in, names_out)},
            "mcu": memory,
            "binary_bytes": (stage / "model.elf").stat().st_size,
            "library_bytes": (stage / "libmodel.a").stat().st_size,
            "stage_seconds": {k: round(v, 3) for k, v in timings.items()},
            "tolerance": 1e-4,
        }

    def run(self, out_dir: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
        from toolchain.targets.cortexm.runner import run_model

        manifest = json.loads((out_dir / "edgec.json").read_text())
        dev = McuDevice.from_device(_device(manifest["target"]))
        specs = [(tuple(o["shape"]), o["dtype"]) for o in manifest["outputs"]]
        return run_model(dev, out_dir / "model.elf", inputs, specs)


# LLVM calls these with the hard-float convention; libgcc's are base-PCS aliases (see
# targets/cpu/driver_runtime.py), and model.c can define its own only with a double-precision FPU.
_INT64_FLOAT_HELPERS = {"__fixsfdi", "__fixunssfdi", "__fixdfdi", "__fixunsdfdi", "__floatdisf",
                        "__floatundisf", "__floatdidf", "__floatundidf"}


_FLOATS = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
_INT64S = (7, 13)  # INT64, UINT64


def _float_int64_casts(model) -> dict[int, str]:
    """Cast nodes between a float type and a 64-bit integer: node index -> why refused."""
    from onnx import TensorProto, helper, shape_inference

    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (an input of unknown type is then not judged)
        inferred = model
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    types.update({v.name: v.type.tensor_type.elem_type
                  for v in [*g.input, *g.value_info, *g.output] if v.type.HasField("tensor_type")})
    # values known at compile time (constants, shapes) are folded by TVM: no helper is called
    runtime = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    found = {}
    for idx, node in enumerate(model.graph.node):
        if node.op_type not in ("Shape", "Size") and any(i in runtime for i in node.input):
            runtime.update(o for o in node.output if o)
        if node.op_type != "Cast" or not node.input or node.input[0] not in runtime:
            continue
        to = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "to"), 0)
        pair = {types.get(node.input[0], 0), to}
        if pair & set(_FLOATS) and pair & set(_INT64S):
            names = sorted(TensorProto.DataType.Name(t).lower() for t in pair)
            found[idx] = (f"a cast between {names[0]} and {names[1]} needs 64-bit integer "
                          "conversion helpers edgec cannot build correctly for a single-"
                          "precision FPU; use a device with a double-precision FPU, e.g. "
                          "cortex-m7, or cast through int32")
    return found


def _refuse_soft_conversions(dev: McuDevice, undefined: set[str]) -> None:
    needed = sorted(undefined & _INT64_FLOAT_HELPERS)
    if needed and not dev.double_fpu:
        raise ConfigError(f"the model converts between float and 64-bit integers "
                          f"({', '.join(needed)}), which edgec cannot build correctly for "
                          f"{dev.name} (single-precision FPU); use a device with a "
                          f"double-precision FPU, e.g. cortex-m7")


def _device(name: str) -> Device:
    from toolchain.targets.registry import device

    try:
        return device(name)
    except ConfigError:
        raise ConfigError(f"the folder was built for target '{name}', which this edgec "
                          "does not know") from None
