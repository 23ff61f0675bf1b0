"""Conformance: the onnx package's test models through ``edgec compile`` + run, per target.

Each test folder holds ``model.onnx`` and ``test_data_set_0/{input,output}_*.pb``. Every model
is compiled with the CLI (``edgec compile``, in process) for each target, run with the stored
inputs (natively or under qemu) and compared with the stored outputs. Outcomes:

    pass         every output within the dtype's tolerance
    unsupported  a one-line edgec error naming the node and the op (the clean refusal)
    error        another one-line edgec error (the model, an input type, a failed run)
    wrong        it compiled and ran, and an output is off: the worst outcome
    crash        a traceback, a non-edgec exception, a dead worker
    timeout      past --timeout seconds

Suites: ``pytorch-converted`` and ``pytorch-operator`` ship in the onnx package;
``node`` is written once from ``onnx.backend.test.case.node`` into a cache folder (the wheel
does not ship its data). Cases run in at most two worker processes (each imports TVM once),
each case under a time limit; a worker that dies or hangs is replaced.

    python examples/conformance.py --suites node --sample 150 --seed 0 --targets host
    python examples/conformance.py --suites pytorch-converted,pytorch-operator --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from multiprocessing.connection import wait
from pathlib import Path

import numpy as np

SUITES = ("pytorch-converted", "pytorch-operator", "node")
OUTCOMES = ("pass", "unsupported", "error", "wrong", "crash", "timeout")
# (rtol, atol) per output dtype kind; integers, bools and strings must match exactly.
TOLERANCES = {"float16": (1e-2, 1e-3), "float32": (1e-3, 1e-5), "float64": (1e-6, 1e-9)}
MAX_WORKERS = 2


# ---------------------------------------------------------------- test folders
def onnx_data_dir() -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data"


def node_cache_dir() -> Path:
    import onnx

    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "edgec" / f"onnx-node-tests-{onnx.__version__}"


def write_node_tests(dest: Path) -> Path:
    """Write the node test cases as onnx's ``cmd_tools generate-data`` does (tensor inputs
    only), into ``dest`` atomically: a half-written cache is never used."""
    import warnings

    from onnx import numpy_helper
    from onnx.backend.test.case import node

    if (dest / "DONE").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node.collect_testcases(None)
    for case in cases:
        folder = tmp / case.name
        data = folder / "test_data_set_0"
        data.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(case.model.SerializeToString())
        inputs, outputs = case.data_sets[0]
        for kind, values, infos in (("input", inputs, case.model.graph.input),
                                    ("output", outputs, case.model.graph.output)):
            for j, (value, info) in enumerate(zip(values, infos)):
                if not info.type.HasField("tensor_type"):
                    continue  # sequences, maps, optionals: edgec refuses those models
                proto = value if hasattr(value, "SerializeToString") else \
                    numpy_helper.from_array(np.asarray(value), info.name)
                (data / f"{kind}_{j}.pb").write_bytes(proto.SerializeToString())
    (tmp / "DONE").write_text(f"{len(cases)}\n")
    if dest.exists():
        shutil.rmtree(tmp)  # another process finished first
    else:
        tmp.rename(dest)
    return dest


def suite_dir(suite: str) -> Path:
    if suite == "node":
        return write_node_tests(node_cache_dir())
    return onnx_data_dir() / suite


def list_cases(suites, limit: int | None = None, sample: int | None = None,
               seed: int = 0) -> list[tuple[str, Path]]:
    """(suite, folder) pairs, sorted; ``sample`` draws that many per suite, ``limit`` keeps
    the first that many per suite."""
    chosen = []
    for suite in suites:
        if suite not in SUITES:
            raise SystemExit(f"unknown suite '{suite}'; choose from {', '.join(SUITES)}")
        folders = sorted(p for p in suite_dir(suite).iterdir() if (p / "model.onnx").is_file())
        if sample is not None and sample < len(folders):
            folders = sorted(random.Random(seed).sample(folders, sample))
        if limit is not None:
            folders = folders[:limit]
        chosen += [(suite, f) for f in folders]
    return chosen


def read_tensors(folder: Path, kind: str) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    files = sorted(folder.glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))
    return [numpy_helper.to_array(onnx.TensorProto.FromString(p.read_bytes())) for p in files]


# ---------------------------------------------------------------- one case, one target
def outputs_match(got: np.ndarray, want: np.ndarray) -> tuple[bool, str]:
    if got.shape != want.shape:
        return False, f"shape {got.shape}, expected {want.shape}"
    if want.dtype.kind not in "fc":
        bad = int((got != want).sum())
        return bad == 0, f"{bad} of {want.size} values differ"
    rtol, atol = TOLERANCES.get(want.dtype.name, (1e-3, 1e-5))
    g, w = got.astype(np.float64), want.astype(np.float64)
    close = np.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
    bad = int((~close).sum())
    worst = float(np.nanmax(np.abs(g - w), initial=0.0)) if bad else 0.0
    return bad == 0, f"{bad} of {want.size} values off (max abs error {worst:.3g})"


def _edgec_error_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("edgec: error:")]
    return lines[-1][len("edgec: error:"):].strip() if lines else text.strip()[-300:]


def run_case(folder: Path, target: str, workdir: Path) -> dict:
    """Compile ``folder``/model.onnx for ``target`` with the CLI and run it on the stored
    inputs. Never raises: every result is a dict with an ``outcome`` and a ``detail``."""
    from toolchain.cli import main
    from toolchain.errors import EdgecError
    from toolchain.targets import backend_for, device

    out = workdir / f"{folder.name}-{target}"
    started = time.perf_counter()
    result = {"case": folder.name, "target": target}

    def done(outcome: str, detail: str) -> dict:
        shutil.rmtree(out, ignore_errors=True)
        return {**result, "outcome": outcome, "detail": detail.strip().replace("\n", " | "),
                "seconds": round(time.perf_counter() - started, 2)}

    err = io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            code = main(["compile", str(folder / "model.onnx"), "-t", target, "-o", str(out)])
    except SystemExit as exc:  # argparse
        return done("crash", f"SystemExit {exc.code}: {err.getvalue()[-300:]}")
    except BaseException:
        return done("crash", traceback.format_exc().strip().splitlines()[-1])
    if code != 0:
        line = _edgec_error_line(err.getvalue())
        return done("unsupported" if "unsupported op '" in line and "in node '" in line
                    else "error", line)
    data = folder / "test_data_set_0"
    try:
        inputs = read_tensors(data, "input")
        expected = read_tensors(data, "output")
        manifest = json.loads((out / "edgec.json").read_text())
        inputs = [np.ascontiguousarray(x.astype(spec["dtype"], copy=False))
                  for x, spec in zip(inputs, manifest["inputs"])]
        got = backend_for(device(target).family).run(out, inputs)
    except EdgecError as exc:
        return done("error", f"run: {exc}")
    except BaseException:
        return done("crash", "run: " + traceback.format_exc().strip().splitlines()[-1])
    if len(got) != len(expected):
        return done("wrong", f"{len(got)} outputs, expected {len(expected)}")
    for i, (g, w) in enumerate(zip(got, expected)):
        ok, why = outputs_match(g, w)
        if not ok:
            return done("wrong", f"output {i} ({manifest['outputs'][i]['name']}): {why}")
    return done("pass", "")


# ---------------------------------------------------------------- the pool
def _worker(conn, workdir: str, log_path: str) -> None:
    # TVM and the compilers write to the C-level stdout/stderr: keep that out of the table.
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import logging

    logging.disable(logging.WARNING)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        folder, target = task
        conn.send(run_case(Path(folder), target, Path(workdir)))


class _Slot:
    def __init__(self, ctx, workdir: Path, index: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, daemon=True,
                                args=(child, str(workdir), str(workdir / f"worker{index}.log")))
        self.proc.start()
        child.close()
        self.task = None
        self.deadline = 0.0

    def give(self, task: tuple[int, tuple[Path, str]], timeout: float) -> None:
        """``task`` is (index, (folder, target))."""
        self.task, self.deadline = task, time.monotonic() + timeout
        folder, target = task[1]
        self.conn.send((str(folder), target))

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def run_all(tasks: list[tuple[Path, str]], workers: int = MAX_WORKERS, timeout: float = 300,
            progress=None) -> list[dict]:
    """Run (folder, target) tasks in up to ``workers`` (at most 2) processes, each task
    under ``timeout`` seconds. Results come back in the order of ``tasks``."""
    ctx = mp.get_context("spawn")  # no TVM state forked into the workers
    workers = max(1, min(workers, MAX_WORKERS, len(tasks)))
    results: dict[int, dict] = {}
    pending = list(enumerate(tasks))[::-1]
    with tempfile.TemporaryDirectory(prefix="edgec-conformance-") as tmp:
        workdir = Path(tmp)
        slots = [_Slot(ctx, workdir, i) for i in range(workers)]
        spawned = workers

        def next_task(slot) -> None:
            if pending:
                slot.give(pending.pop(), timeout)

        def finish(slot, res: dict) -> None:
            results[slot.task[0]] = res
            slot.task = None
            if progress:
                progress(len(results), len(tasks), res)

        for s in slots:
            next_task(s)
        while any(s.task for s in slots):
            busy = [s for s in slots if s.task]
            ready = wait([s.conn for s in busy] + [s.proc.sentinel for s in busy], timeout=1.0)
            for idx, s in enumerate(slots):
                if not s.task:
                    continue
                if s.conn in ready:
                    try:
                        finish(s, s.conn.recv())
                        next_task(s)
                        continue
                    except EOFError:
                        pass
                dead = not s.proc.is_alive()
                late = time.monotonic() > s.deadline
                if dead or late:
                    folder, target = s.task[1]
                    finish(s, {"case": Path(folder).name, "target": target,
                               "outcome": "crash" if dead else "timeout",
                               "detail": f"worker died (exit code {s.proc.exitcode})" if dead
                               else f"over {timeout:.0f} s", "seconds": None})
                    s.proc.kill()  # our own worker, by its handle
                    s.proc.join()
                    slots[idx] = _Slot(ctx, workdir, spawned)
                    spawned += 1
                    next_task(slots[idx])
        for s in slots:
            s.stop()
    return [results[i] for i in range(len(tasks))]


# ---------------------------------------------------------------- report
def summarize(results: list[dict]) -> dict:
    """Per target: counts per outcome and the pass rate."""
    summary = {}
    for target in sorted({r["target"] for r in results}):
        counts = Counter(r["outcome"] for r in results if r["target"] == target)
        total = sum(counts.values())
        summary[target] = {"total": total, **{o: counts.get(o, 0) for o in OUTCOMES},
                           "pass_rate": round(counts.get("pass", 0) / total, 4) if total else 0}
    return summary


def print_report(results: list[dict], summary: dict, all_rows: bool) -> None:
    print(f"{'target':<10} {'models':>6} " + " ".join(f"{o:>11}" for o in OUTCOMES)
          + f" {'pass rate':>9}")
    for target, s in summary.items():
        print(f"{target:<10} {s['total']:>6} " + " ".join(f"{s[o]:>11}" for o in OUTCOMES)
              + f" {100 * s['pass_rate']:>8.1f}%")
    shown = results if all_rows else [r for r in results if r["outcome"] not in ("pass",
                                                                                   "unsupported")]
    if shown:
        print()
        width = max(len(r["case"]) for r in shown)
        for r in shown:
            print(f"{r['case']:<{width}}  {r['target']:<9} {r['outcome']:<11} {r['detail'][:160]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="host,arm-a72", help="comma-separated (host,arm-a72)")
    p.add_argument("--suites", default=",".join(SUITES), help="comma-separated: " + ", ".join(SUITES))
    p.add_argument("--limit", type=int, help="the first N models of each suite")
    p.add_argument("--sample", type=int, help="N models drawn per suite (with --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", help="comma-separated case names to keep (e.g. test_isinf_positive)")
    p.add_argument("--workers", type=int, default=MAX_WORKERS, help="processes (at most 2)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per model and target")
    p.add_argument("--json", type=Path, help="write the summary and every result here")
    p.add_argument("--all", action="store_true", help="list passes and refusals too")
    args = p.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    cases = list_cases(args.suites.split(","), args.limit, args.sample, args.seed)
    if args.cases:
        keep = set(args.cases.split(","))
        cases = [c for c in cases if c[1].name in keep]
    tasks = [(folder, t) for _, folder in cases for t in targets]

    def progress(done, total, res):
        if sys.stderr.isatty():
            print(f"\r{done}/{total} {res['case'][:50]:<50}", end="", file=sys.stderr, flush=True)

    results = run_all(tasks, args.workers, args.timeout, progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    suite_of = {folder.name: suite for suite, folder in cases}
    for r in results:
        r["suite"] = suite_of[r["case"]]
    summary = summarize(results)
    print_report(results, summary, args.all)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
