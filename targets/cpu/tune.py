"""TuneKernels: MetaSchedule tuning of the host's float kernels, kept only where it measured faster.

Before: kernels as FuseTIR leaves them (plain loops). After: every kernel carries edgec's hand
schedule (``ScheduleForCPU``), except those whose tuned schedule ran faster than the hand one
on the same workload, measured here back to back; those carry the tuned one.

Records live in a MetaSchedule ``JSONDatabase`` (workloads keyed by structural hash) in one
folder per target (triple, cpu, thread count) under the database folder, beside
``decisions.json``: per workload and hand schedule, both medians and which one won. A compile
with records for a workload tunes it no further; with a decision as well, it measures nothing.

What is tuned: kernels with a reduction (conv, matmul, pooling, reductions). Elementwise
kernels keep their hand schedule, and the tensorized int8 GEMM kernels (``edgec.qgemm``,
``edgec.wgemv``) are left out of tuning: their dot-product instructions come from edgec's own
tensorized schedule.

On an emulated target (ARM, RISC-V: ``TuneConfig.device``), nothing can be timed: candidates
and the hand-vs-tuned decision are scored by the exact instructions of one kernel call under
qemu-user instead (targets/cpu/tune_count.py, which says where that proxy fails), and the
figures are labelled instructions (``hand_instructions``, ``tuned_instructions``).

Host candidates are built and timed in this process (``InProcessBuilder``/``InProcessRunner``):
MetaSchedule's LocalBuilder starts a fresh worker per batch that imports
``tvm.s_tir.tensor_intrin`` (all CUDA intrinsics), which took 73-120 s per batch here; the
same import in ``TuneContext`` is skipped (``_skip_gpu_intrinsics``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tvm
import tvm_ffi

from toolchain.errors import ToolFailedError, ToolMissingError

log = logging.getLogger(__name__)

DEFAULT_DB = Path("~/.cache/edgec/tune")
XGBOOST_HINT = ("MetaSchedule tuning needs xgboost for its cost model: "
                "pip install xgboost-cpu==3.2.0 (or pip install edgec again)")
_SKIP_ATTRS = ("edgec.qgemm", "edgec.wgemv")
_ROUNDS = 5  # alternating hand / tuned measurements per decision


@dataclass(frozen=True)
class TuneConfig:
    """``trials``: candidates measured per kernel that has no records (0: apply records only);
    ``db``: the database folder (one subfolder per target); ``device``: an emulated device
    (targets/cpu/device.py CpuDevice) whose candidates are scored by instruction counts under
    qemu (targets/cpu/tune_count.py), None for the host (timed here); ``compiler``: the C
    compiler choice for that device's counting harness."""

    trials: int
    db: Path
    device: object = None
    compiler: str = "auto"

    @property
    def unit(self) -> str:
        return "us" if self.device is None else "instructions"


@dataclass
class KernelTuning:
    """What happened to one kernel: its schedule and both figures, in ``unit``: medians in
    microseconds (host), or exact instructions of one call under qemu (emulated targets)."""

    kernel: str
    workload: str
    schedule: str  # "tuned" or "hand"
    hand: float | None
    tuned: float | None
    trials: int  # candidates measured in this compile (0: records reused)
    records: int  # tuning records of the workload in the database
    unit: str = "us"

    def to_json(self) -> dict:
        d = asdict(self)
        unit = d.pop("unit")
        d[f"hand_{unit}"], d[f"tuned_{unit}"] = d.pop("hand"), d.pop("tuned")
        return d


@dataclass
class TuneLog:
    """Filled by ``TuneKernels``; report.json's ``tuning``."""

    database: str = ""
    seconds: float = 0.0
    measured: str = "time on this machine (median, microseconds)"
    db: object = None  # the opened JSONDatabase (open_database), not reported
    kernels: list[KernelTuning] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"database": self.database, "seconds": round(self.seconds, 2),
                "measured": self.measured,
                "trials_run": sum(k.trials for k in self.kernels),
                "tuned_kernels": sorted({k.kernel for k in self.kernels
                                         if k.schedule == "tuned"}),
                "kernels": [k.to_json() for k in self.kernels]}


def check_xgboost() -> None:
    if importlib.util.find_spec("xgboost") is None:
        raise ToolMissingError(XGBOOST_HINT)


def tuning_target(target, threads: int):
    """The target with MetaSchedule's ``num-cores`` (the thread count the schedules may use)."""
    return tvm.target.Target({**dict(target.export()), "num-cores": threads})


def target_folder(db: Path, target) -> Path:
    """One folder per target: JSONDatabase does not filter its records by target."""
    spec = dict(target.export())
    text = json.dumps({k: str(v) for k, v in sorted(spec.items())})
    slug = f"{spec.get('mtriple', 'llvm')}-{spec.get('mcpu', '')}-{spec.get('num-cores', 1)}t"
    return db.expanduser() / f"{slug}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _reduction(func) -> bool:
    from tvm.s_tir import Schedule

    from toolchain.targets.cpu.schedule import COMM_REDUCE, _blocks, _iter_types

    sch = Schedule(func)
    return any(COMM_REDUCE in _iter_types(sch, b) and _multiply_adds(sch.get(b).body)
               for b in _blocks(sch))


def _multiply_adds(store) -> bool:
    """``acc = acc + a * b`` (conv, matmul): pools and means are not tuned, since records of a
    global mean did not replay when the database loaded them again (TVM 0.27)."""
    value = getattr(store, "value", None)
    if not isinstance(value, tvm.tirx.Add):
        return False
    return any(isinstance(x, tvm.tirx.Mul)
               or (isinstance(x, tvm.tirx.Cast) and isinstance(x.value, tvm.tirx.Mul))
               for x in (value.a, value.b))


def tunable(func) -> bool:
    """A float kernel with a reduction, not one of edgec's tensorized int8 kernels."""
    if func.attrs is not None and any(a in func.attrs for a in _SKIP_ATTRS):
        return False
    try:
        return _reduction(func)
    except Exception:  # noqa: BLE001  (hand-built TIR without blocks)
        return False


def workload(func) -> tvm.IRModule:
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def _hash(mod) -> str:
    return f"{tvm_ffi.structural_hash(mod) & 0xFFFFFFFFFFFFFFFF:016x}"


# ---------------------------------------------------------------- build and time in-process
def _build(mod, target):
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.tirx.build(mod, target=target)


def _args(args_info):
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for info in args_info:
        shape = [int(d) for d in info.shape]
        dtype = str(info.dtype)
        data = (rng.uniform(-1, 1, shape) if "float" in dtype
                else rng.integers(-8, 8, shape)).astype(dtype)
        out.append(tvm.runtime.tensor(data, device=tvm.cpu(0)))
    return out


def _time(rt_mod, args, number: int = 3, repeat: int = 3) -> list[float]:
    f = rt_mod.time_evaluator(rt_mod.entry_name, tvm.cpu(0), number=number, repeat=repeat,
                              min_repeat_ms=20)
    return [float(r) for r in f(*args).results]


def _skip_gpu_intrinsics() -> None:
    """``TuneContext()`` imports ``tvm.s_tir.tensor_intrin``, whose ``__init__`` registers the
    CUDA/ROCm intrinsics (73 s on this machine); no CPU rule here uses them. The package is
    entered without running its ``__init__``, so its CPU submodules still import on demand."""
    import importlib.util
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules[name] = package


def _ms():
    import tvm.s_tir.meta_schedule as ms

    _skip_gpu_intrinsics()
    return ms


def _builder_runner(counter=None):
    """In-process builder and runner: timed here, or (``counter``, tune_count.py) each batch
    built into objects for the device and counted in one qemu run."""
    ms = _ms()
    from tvm.ir.utils import derived_object

    built: dict[str, object] = {}

    @derived_object
    class InProcessBuilder(ms.builder.PyBuilder):
        def build(self, build_inputs):
            results = []
            for bi in build_inputs:
                try:
                    key = f"mem:{len(built)}"
                    built[key] = (counter.build(bi.mod, bi.target) if counter is not None
                                  else _build(bi.mod, bi.target))
                    results.append(ms.builder.BuilderResult(key, None))
                except Exception as exc:  # noqa: BLE001  (a candidate that does not build)
                    results.append(ms.builder.BuilderResult(None, str(exc)[:500]))
            return results

    @derived_object
    class InProcessRunner(ms.runner.PyRunner):
        def run(self, runner_inputs):
            if counter is not None:
                return _count_batch(counter, runner_inputs, built)
            futures = []
            for ri in runner_inputs:
                rt_mod = built.pop(str(ri.artifact_path), None)
                try:
                    secs = _time(rt_mod, _args(ri.args_info))
                    futures.append(ms.runner.LocalRunnerFuture(res=secs))
                except Exception as exc:  # noqa: BLE001
                    futures.append(ms.runner.LocalRunnerFuture(error_message=str(exc)[:500]))
            return futures

    return InProcessBuilder(), InProcessRunner()


def _count_batch(counter, runner_inputs, built) -> list:
    """One qemu run for the batch; each candidate's "seconds" is its count * 1e-9."""
    from toolchain.targets.cpu.tune_count import SECONDS_PER_INSN

    ms = _ms()
    cands = [built.pop(str(ri.artifact_path), None) for ri in runner_inputs]
    ready = [(i, counter.with_args(c, ri.args_info))
             for i, (c, ri) in enumerate(zip(cands, runner_inputs)) if c is not None]
    try:
        counts = dict(zip([i for i, _ in ready], counter.count([c for _, c in ready])))
    except Exception as exc:  # noqa: BLE001  (the harness did not build or link)
        counts = {i: str(exc)[:500] for i, _ in ready}
    futures = []
    for i in range(len(runner_inputs)):
        got = counts.get(i, "not built")
        futures.append(ms.runner.LocalRunnerFuture(error_message=got) if isinstance(got, str)
                       else ms.runner.LocalRunnerFuture(res=[got * SECONDS_PER_INSN]))
    return futures


def _space(threads: int):
    """MetaSchedule's LLVM rules; with one thread no rule may make a loop parallel (the
    single-threaded driver has no thread pool)."""
    ms = _ms()
    rule = ms.schedule_rule
    jobs = 16 if threads > 1 else -1
    rules = [rule.ApplyCustomRule(), rule.InlineConstantScalars(),
             rule.AutoInline(into_producer=False, into_consumer=True, inline_const_tensor=True,
                             disallow_if_then_else=True, require_injective=True,
                             require_ordered=True, disallow_op=["tirx.exp"]),
             # no AddRFactor: its records (rfactor + compute_at of a global pool) did not
             # replay when loaded again ("old_outputs.size() == new_outputs.size()", TVM 0.27)
             rule.MultiLevelTiling("SSRSRS", max_innermost_factor=64,
                                   reuse_write=rule.ReuseType(req="may", levels=[1, 2],
                                                              scope="global")),
             rule.ParallelizeVectorizeUnroll(max_jobs_per_core=jobs, max_vectorize_extent=64,
                                             unroll_max_steps=[0, 16, 64, 512],
                                             unroll_explicit=True),
             rule.RandomComputeLocation()]
    mutators = {ms.mutator.MutateTileSize(): 0.9, ms.mutator.MutateComputeLocation(): 0.05,
                ms.mutator.MutateUnroll(): 0.03}
    if threads > 1:
        mutators[ms.mutator.MutateParallel(max_jobs_per_core=16)] = 0.02
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs="llvm",
                                             mutator_probs=mutators)


def _tune(workloads: dict[str, tvm.IRModule], target, threads: int, trials: int, db,
          folder: Path, counter=None) -> None:
    """Tune every workload for ``trials`` candidates into ``db``."""
    ms = _ms()
    population = max(64, min(512, 8 * trials))
    tasks = [ms.TuneContext(mod, target=target, space_generator=_space(threads),
                            search_strategy=ms.search_strategy.EvolutionarySearch(
                                population_size=population,
                                init_min_unmeasured=min(50, population // 4),
                                genetic_num_iters=2),
                            task_name=name, num_threads=1, rand_state=0)
             for name, mod in workloads.items()]
    builder, runner = _builder_runner(counter)
    ms.tune_tasks(tasks=tasks, task_weights=[1.0] * len(tasks), work_dir=str(folder),
                  max_trials_global=trials * len(tasks), max_trials_per_task=trials,
                  num_trials_per_iter=min(trials, 32), builder=builder, runner=runner,
                  database=db, cost_model="xgb", task_scheduler="round-robin",
                  # not the default RemoveBuildArtifact: nothing is written to disk
                  measure_callbacks=[ms.measure_callback.AddToDatabase(),
                                     ms.measure_callback.UpdateCostModel()])


def _compare(hand_mod, tuned_mod, target, func, counter=None) -> tuple[float, float]:
    """Median seconds of the hand and the tuned schedule, measured alternately; with a
    ``counter``, the exact instructions of one call of each (one qemu run)."""
    ms = _ms()
    if counter is not None:
        hand, tuned = counter.compare([hand_mod, tuned_mod], target,
                                      ms.arg_info.ArgInfo.from_prim_func(func))
        return float(hand), float(tuned)
    args = _args(ms.arg_info.ArgInfo.from_prim_func(func))
    hand, tuned = _build(hand_mod, target), _build(tuned_mod, target)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(_ROUNDS):
        times[0].extend(_time(hand, args, repeat=1))
        times[1].extend(_time(tuned, args, repeat=1))
    return statistics.median(times[0]), statistics.median(times[1])


def open_database(config: TuneConfig, target, threads: int):
    """The records of this target (opened before the pipeline, so that a database that does
    not load is a one-line error, not one raised through a TVM pass)."""
    folder = target_folder(config.db, tuning_target(target, threads))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _ms().database.JSONDatabase(work_dir=str(folder))
    except Exception as exc:  # noqa: BLE001  (a record that does not replay)
        raise ToolFailedError(f"the tuning records in {folder} do not load "
                              f"({str(exc).splitlines()[-1][:100]}); delete that folder and "
                              "tune again") from None


def _best_schedule(records, wl, name: str):
    """The fastest record whose trace replays on the workload (a trace that does not replay,
    which MetaSchedule's own query_schedule raises on, is skipped), or None."""
    from tvm.s_tir import Schedule

    for rec in records[:8]:
        try:
            sch = Schedule(wl)
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
            return sch
        except Exception as exc:  # noqa: BLE001
            log.warning("kernel %s: a tuning record does not replay (%s); trying the next",
                        name, str(exc).splitlines()[0][:120])
    return None


def TuneKernels(target, threads: int, vector, config: TuneConfig, tune_log: TuneLog):  # noqa: N802
    """The schedule pass with tuning (see the module doc); ``tune_log`` is filled."""
    from tvm import tirx

    from toolchain.targets.cpu.schedule import ScheduleForCPU

    hand_pass = ScheduleForCPU(target, threads, vector)

    @tvm.transform.module_pass(opt_level=0, name="TuneKernels")
    def _pass(mod, ctx):
        t0 = time.perf_counter()
        ms = _ms()
        tgt = tuning_target(target, threads)
        folder = target_folder(config.db, tgt)
        folder.mkdir(parents=True, exist_ok=True)
        tune_log.database = str(folder)
        unit = config.unit
        made: list = []

        def counter():  # the instruction counter of an emulated device, made on first use
            if config.device is None:
                return None
            if not made:
                from toolchain.targets.cpu.tune_count import InstructionCounter

                made.append(InstructionCounter(config.device, config.compiler))
            return made[0]

        if config.device is not None:
            dev = config.device
            tune_log.measured = (f"instructions of one kernel call, exact, under {dev.qemu}"
                                 f"{' -cpu ' + dev.qemu_cpu if dev.qemu_cpu else ''} "
                                 "(not time: see targets/cpu/tune_count.py)")
        originals = {gv: f for gv, f in mod.functions.items()
                     if isinstance(f, tirx.PrimFunc) and tunable(f)}
        out = hand_pass(mod)
        db = tune_log.db or open_database(config, target, threads)
        decisions_path = folder / "decisions.json"
        decisions = json.loads(decisions_path.read_text()) if decisions_path.exists() else {}
        loads = {gv: workload(f) for gv, f in originals.items()}
        todo = {}
        for gv, wl in loads.items():
            if not db.has_workload(wl) or not db.get_top_k(db.commit_workload(wl), 1):
                todo.setdefault(_hash(wl), wl)
        trials_of = {}
        if todo and config.trials > 0:
            check_xgboost()
            log.info("tuning %d kernel(s), %d trials each", len(todo), config.trials)
            before = {h: 0 for h in todo}
            _tune(todo, tgt, threads, config.trials, db, folder, counter())
            trials_of = {h: len(db.get_top_k(db.commit_workload(wl), 10**6)) - before[h]
                         for h, wl in todo.items()}
        seen: dict[str, KernelTuning] = {}
        for gv, func in originals.items():
            wl, name = loads[gv], gv.name_hint
            hand_func = out[gv]
            key = f"{_hash(wl)}:{_hash(workload(hand_func))}"
            records = db.get_top_k(db.commit_workload(wl), 10**6) if db.has_workload(wl) else []
            sch = _best_schedule(records, wl, name)
            entry = KernelTuning(name, _hash(wl), "hand", None, None,
                                 0 if _hash(wl) in seen else trials_of.get(_hash(wl), 0),
                                 len(records), unit)
            seen[_hash(wl)] = entry
            if sch is not None:
                if key not in decisions:
                    hand_s, tuned_s = _compare(workload(hand_func), sch.mod, tgt, func,
                                               counter())
                    scale = 1e6 if unit == "us" else 1  # instructions stay whole numbers
                    decisions[key] = {"kernel": name, f"hand_{unit}": round(hand_s * scale, 3),
                                      f"tuned_{unit}": round(tuned_s * scale, 3),
                                      "use": "tuned" if tuned_s < hand_s else "hand"}
                d = decisions[key]
                entry.hand, entry.tuned = d[f"hand_{unit}"], d[f"tuned_{unit}"]
                entry.schedule = d["use"]
                if d["use"] == "tuned":
                    new = sch.mod["main"].without_attr("global_symbol")
                    if func.attrs is not None:
                        new = new.with_attrs(func.attrs)
                    out.update_func(gv, new)
            tune_log.kernels.append(entry)
            log.info("kernel %s: %s schedule (hand %s %s, tuned %s %s, %d trials now)", name,
                     entry.schedule, entry.hand, unit, entry.tuned, unit, entry.trials)
        decisions_path.write_text(json.dumps(decisions, indent=1, sort_keys=True))
        tune_log.seconds = time.perf_counter() - t0
        return out

    return _pass
