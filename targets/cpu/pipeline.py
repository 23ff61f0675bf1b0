"""Named pass pipelines, each a sequence of stages; a stage is a function returning passes.

A target picks a pipeline by name (``cpu`` for the CPU family's float models) and may replace single stages,
as TVM's per-backend pipelines do. ``run_pipeline`` applies stage by stage, timing each and
recording what it changed (kernel calls, fused groups), which goes into report.json.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from toolchain.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineContext:
    """What a stage may depend on."""

    target: object  # tvm.target.Target
    schedule: str = "auto"  # "auto" (edgec's CPU rules) or "none" (TVM's plain loops)
    threads: int = 1  # > 1: schedule stages make the heavy kernels' outer loops parallel
    vector: object = None  # the device's SIMD facts (targets/cpu/vector.py VectorUnit); None: LLVM's
    tune: object = None  # targets/cpu/tune.py TuneConfig: MetaSchedule records; None: hand only
    tune_log: object = None  # targets/cpu/tune.py TuneLog that the tuning pass fills


Stage = Callable[[PipelineContext], list]


def simplify(ctx: PipelineContext) -> list:
    """Batch-norm folding and constant folding on the graph, before ops become kernels."""
    from tvm import relax

    from toolchain.optimizer.fold_reshapes import FoldConstantReshapes
    from toolchain.targets.cpu.qgather import GatherQuantizedRows
    from toolchain.targets.cpu.weight_only import LowerWeightOnlyMatMul

    # Weight-only quantized matmuls and embedding tables keep their int8/int4 weights
    # (before FoldConstant).
    return [GatherQuantizedRows(), LowerWeightOnlyMatMul(ctx.target, ctx.threads),
            relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(),
            FoldConstantReshapes(), relax.transform.FoldConstant(),
            relax.transform.DeadCodeElimination(["main"])]


def simplify_integer(ctx: PipelineContext) -> list:
    """``simplify``, with quantized conv2d/matmul first lowered to int8 GEMM kernels that
    requantize to the next layer's int8 activation (targets/cpu/integer.py)."""
    from toolchain.targets.cpu.integer import LowerQDQToInteger

    return [LowerQDQToInteger(ctx.target, ctx.vector), *simplify(ctx)]


def kv_cache(ctx: PipelineContext) -> list:
    """A language model's KV cache updated in place (toolchain/optimizer/kvcache.py);
    nothing for a model without ``past_*`` inputs."""
    from toolchain.optimizer.kvcache import write_cache_in_place

    return [write_cache_in_place()]


def simplify_int8_activations(ctx: PipelineContext) -> list:
    """``simplify_integer``, with weight-only matmuls in the int8-activation variant: x
    quantized per row at run time, int8 dot products (sdot on arm-a76); outputs then differ
    from float compute by the activation quantization (~0.5% of their range)."""
    from toolchain.targets.cpu.weight_only import LowerWeightOnlyMatMul

    return [LowerWeightOnlyMatMul(ctx.target, ctx.threads, int8_activations=True),
            *simplify_integer(ctx)]


def legalize(ctx: PipelineContext, winograd: bool = True) -> list:
    """Each Relax op becomes a TIR kernel (call_tir); constants fold through them. With the
    CPU schedule, convs with constant weights first read them packed in the schedule's
    register-tile layout (targets/cpu/pack_weights.py); on AArch64, 3x3 stride-1 convs with
    enough channels first become Winograd F(2x2,3x3) kernels (targets/cpu/winograd.py)."""
    from tvm import relax

    from toolchain.targets.cpu.pack_weights import PackConvWeights

    pack = [] if ctx.schedule == "none" else [PackConvWeights(ctx.target, ctx.vector)]
    if ctx.schedule != "none" and winograd:
        from toolchain.targets.cpu.winograd import WinogradConv

        pack.insert(0, WinogradConv(ctx.target, ctx.vector, ctx.threads))
    return [*pack, relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(), relax.transform.DeadCodeElimination(["main"])]


def legalize_direct(ctx: PipelineContext) -> list:
    """``legalize`` with every conv direct (no Winograd)."""
    return legalize(ctx, winograd=False)


def fuse_ops(ctx: PipelineContext) -> list:
    """Group kernels: a producer with its injective/elementwise consumers (conv+add+relu)."""
    from tvm import relax

    return [relax.transform.FuseOps()]


def fuse_tir(ctx: PipelineContext) -> list:
    """Merge each group into one TIR kernel."""
    from tvm import relax

    return [relax.transform.FuseTIR(), relax.transform.DeadCodeElimination(["main"])]


def cpu_schedule(ctx: PipelineContext) -> list:
    """Give every kernel a CPU schedule (inlining, tiling, vectorization; the int8 GEMM
    kernels their register tiles and dot instructions) for the target and thread count."""
    if ctx.schedule == "none":
        return []
    from toolchain.targets.cpu.schedule import ScheduleForCPU
    from toolchain.targets.cpu.weight_only import ScheduleWeightOnly

    if ctx.tune is not None:  # MetaSchedule where it measured faster (targets/cpu/tune.py)
        from toolchain.targets.cpu.tune import TuneKernels

        then = TuneKernels(ctx.target, ctx.threads, ctx.vector, ctx.tune, ctx.tune_log)
    else:
        then = ScheduleForCPU(ctx.target, ctx.threads, ctx.vector)
    return [ScheduleWeightOnly(ctx.target, ctx.threads, then=then)]


PIPELINES: dict[str, tuple[tuple[str, Stage], ...]] = {}


def register_pipeline(name: str, *stages: tuple[str, Stage]) -> None:
    """Make ``--pipeline name`` mean these stages, in order (as TVM's ``register_pipeline``).
    A backend registers its own pipelines when it is imported; names are unique."""
    if name in PIPELINES:
        raise ValueError(f"pipeline '{name}' is already registered")
    PIPELINES[name] = tuple(stages)


_TAIL = (("legalize", legalize), ("fuse_ops", fuse_ops), ("fuse_tir", fuse_tir),
         ("schedule", cpu_schedule))
register_pipeline("cpu", ("simplify", simplify), ("kv_cache", kv_cache), *_TAIL)
register_pipeline("cpu-int", ("simplify", simplify_integer), ("kv_cache", kv_cache), *_TAIL)
register_pipeline("cpu-int8-act", ("simplify", simplify_int8_activations),
                  ("kv_cache", kv_cache), *_TAIL)
register_pipeline("cpu-nowinograd", ("simplify", simplify), ("kv_cache", kv_cache),
                  ("legalize", legalize_direct), *_TAIL[1:])
register_pipeline("cpu-nofuse", ("simplify", simplify), ("kv_cache", kv_cache),
                  ("legalize", legalize), ("schedule", cpu_schedule))


def default_pipeline(quantized: bool) -> str:
    """What ``--pipeline auto`` means: integer compute for a QDQ model, float otherwise."""
    return "cpu-int" if quantized else "cpu"


def get_pipeline(name: str) -> tuple[tuple[str, Stage], ...]:
    if name not in PIPELINES:
        raise ConfigError(f"unknown pipeline '{name}'; known pipelines: " + ", ".join(PIPELINES))
    return PIPELINES[name]


@dataclass
class StageRecord:
    name: str
    seconds: float
    kernel_calls: int
    passes: list[str] = field(default_factory=list)


@dataclass
class PipelineResult:
    mod: object  # tvm.IRModule
    stages: list[StageRecord]
    fused_groups: dict[str, list[str]]  # fused kernel name -> the ops it holds
    calls_before_fusion: int
    calls_after_fusion: int

    def kernel_report(self, plan) -> dict:
        """report.json's kernel keys for the static plan built from ``mod``: calls before
        and after fusion, calls in the plan, and each kernel's ops and number of calls."""
        kernels = {k: {"ops": self.fused_groups.get(k, [k.rstrip("0123456789")]),
                       "calls": sum(1 for c in plan.calls if c.kernel == k)}
                   for k in plan.kernels()}
        return {"kernel_calls_before_fusion": self.calls_before_fusion,
                "kernel_calls_after_fusion": self.calls_after_fusion,
                "kernel_calls": len(plan.calls),
                "distinct_kernels": len(kernels),
                "kernels": kernels}


def count_kernel_calls(mod) -> int:
    """call_tir calls in ``main``."""
    from tvm import relax

    n = 0

    def visit(expr):
        nonlocal n
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir":
            n += 1

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return n


def _op_name(prim_name: str) -> str:
    """``conv2d3`` -> ``conv2d``: LegalizeOps names kernels after their op plus a counter."""
    return re.sub(r"\d+$", "", prim_name) or prim_name


def fused_groups(mod) -> dict[str, list[str]]:
    """After FuseOps: for each primitive Relax function, the ops of the kernels it calls."""
    from tvm import relax

    groups: dict[str, list[str]] = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function) or gv.name_hint == "main":
            continue
        attrs = func.attrs
        if attrs is None or "Primitive" not in attrs:
            continue
        ops: list[str] = []

        def visit(expr, ops=ops):
            if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.call_tir":
                ops.append(_op_name(expr.args[0].name_hint))

        relax.analysis.post_order_visit(func.body, visit)
        groups[gv.name_hint] = ops
    return groups


def run_pipeline(mod, name: str, ctx: PipelineContext,
                 overrides: Mapping[str, Stage] | None = None) -> PipelineResult:
    """Apply the named pipeline stage by stage; ``overrides`` replace stages by name."""
    import tvm

    from toolchain.tvm_log import known_warnings_filtered

    stages = get_pipeline(name)
    overrides = dict(overrides or {})
    unknown = set(overrides) - {s for s, _ in stages}
    if unknown:
        raise ConfigError(f"pipeline '{name}' has no stage(s) {sorted(unknown)}")
    records: list[StageRecord] = []
    groups: dict[str, list[str]] = {}
    before = after = None
    for stage_name, stage in stages:
        passes = overrides.get(stage_name, stage)(ctx)
        t0 = time.perf_counter()
        with tvm.transform.PassContext(opt_level=3), known_warnings_filtered():
            for p in passes:
                mod = p(mod)
        if stage_name == "fuse_ops":
            groups = fused_groups(mod)
        calls = count_kernel_calls(mod)
        if stage_name == "legalize":
            before = calls
        records.append(StageRecord(stage_name, round(time.perf_counter() - t0, 3), calls,
                                   [getattr(p, "info", None) and p.info.name or type(p).__name__
                                    for p in passes]))
        log.info("stage %s: %.2f s, %d kernel calls", stage_name, records[-1].seconds, calls)
    after = records[-1].kernel_calls
    return PipelineResult(mod, records, groups, before if before is not None else after, after)
