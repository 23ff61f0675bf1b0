"""Speed per kernel of a compiled CPU folder (``edgec run OUT --profile``).

Before: a folder from ``edgec compile`` (src/model.c, src/main.c, model.h, libmodel.a). After: a
``Profile`` (toolchain/reports/schema.py), saved as OUT/profile.json by the command.

The folder's own ``model`` is never touched. A second executable is linked in a temporary
folder from the same sources compiled with ``-DEDGEC_PROFILE`` (targets/cpu/driver.py,
``PROFILE_C``) and the same kernels and weights (libmodel.a):
- natively (the host, or a board's binary on a machine of its architecture): clock_gettime
  around each kernel call, the median of N runs per call (``model --profile N``);
- under qemu-user (ARM, RISC-V on this machine): exact guest instructions per call, counted by
  the TCG plugin of examples/armcount (``libcount.so``, one qemu run): the driver frames every
  call with marker system calls (``model --profile-marks``) and the plugin counts each window;
  the hooks' own cost, measured with empty windows on the same path, is subtracted. Emulated
  time says little about a board, so the figure is labelled instructions, not time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from toolchain.errors import ConfigError, ToolMissingError
from toolchain.reports.schema import CallFigure, KernelFigure, Profile
from toolchain.targets.cpu.cc import find_compiler
from toolchain.targets.cpu.device import CpuDevice
from toolchain.targets.cpu.driver import PROFILE_MARKER
from toolchain.targets.cpu.runner import clean_env, launcher
from toolchain.tools import run_tool

log = logging.getLogger(__name__)

PLUGIN_ENV = "EDGEC_COUNT_PLUGIN"  # a libcount.so to use instead of building one
EMPTY_WINDOWS = 3  # per kind: from main, and on a kernel call's path (driver.py, profile_main)


def armcount_folder() -> Path:
    """examples/armcount of this edgec's source tree (the plugin's C source and build.sh)."""
    import toolchain

    return Path(toolchain.__file__).resolve().parent.parent / "examples" / "armcount"


def _cache_root() -> Path:
    root = os.environ.get("EDGEC_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "edgec"


def count_plugin() -> Path:
    """The counting plugin: $EDGEC_COUNT_PLUGIN, else examples/armcount/libcount.so when
    build.sh made it, else built once from examples/armcount/count.c with the host's cc into
    the cache ($EDGEC_CACHE or ~/.cache/edgec, keyed by the source's hash)."""
    given = os.environ.get(PLUGIN_ENV)
    if given:
        if not Path(given).is_file():
            raise ConfigError(f"{PLUGIN_ENV}={given}: no such file")
        return Path(given)
    src = armcount_folder() / "count.c"
    built = src.with_name("libcount.so")
    if built.is_file() and src.is_file() and built.stat().st_mtime >= src.stat().st_mtime:
        return built
    how = (f"build it with 'bash {armcount_folder() / 'build.sh'}' (needs gcc), or set "
           f"{PLUGIN_ENV}=/path/to/libcount.so")
    if not src.is_file():
        raise ToolMissingError(f"the instruction profile needs the qemu counting plugin "
                               f"libcount.so and this edgec has no {src}; {how}")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise ToolMissingError("the instruction profile needs the qemu counting plugin, "
                               f"built from {src} with a host C compiler: apt-get install gcc")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    dest = _cache_root() / "armcount" / f"libcount-{digest}.so"
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_suffix(f".{os.getpid()}.part")
        run_tool([cc, "-O2", "-shared", "-fPIC", "-o", part, src],
                 what="building the qemu counting plugin")
        part.replace(dest)  # atomic: a killed build leaves no half-written plugin
    return dest


def build_profiler(out_dir: Path, dev: CpuDevice, compiler: str, threads: int,
                   work: Path) -> Path:
    """``work/model-profile``: the folder's driver compiled with -DEDGEC_PROFILE, linked with
    its libmodel.a (kernels, weights; the archive's own model.o is not pulled in, since the
    profiling model.o defines every symbol it has)."""
    for name in ("src/model.c", "src/main.c", "model.h", "libmodel.a"):
        if not (out_dir / name).is_file():
            raise ConfigError(f"{out_dir / name} is missing; compile the folder again")
        shutil.copyfile(out_dir / name, work / Path(name).name)
    cc = find_compiler(dev, compiler)
    pthread = ("-pthread",) if threads > 1 else ()
    for src in ("model.c", "main.c"):
        cc.compile(work / src, work / f"profile_{Path(src).stem}.o", work,
                   ("-DEDGEC_PROFILE", *pthread))
    binary = work / "model-profile"
    cc.link([work / "profile_main.o", work / "profile_model.o", work / "libmodel.a"], binary,
            work, pthread)
    return binary


def _lines(text: str, key: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.split()[:1] == [key]]


def _figures(names: list[str], values: list[float], kind: str, where: str, runs: int,
             total: float, target: str) -> Profile:
    sums: dict[str, list[float]] = {}
    for name, value in zip(names, values):
        sums.setdefault(name, []).append(value)
    whole = sum(values) or 1.0
    kernels = {k: KernelFigure(len(v), float(sum(v)), float(sum(v) / whole))
               for k, v in sums.items()}
    return Profile(kind, "seconds" if kind == "time" else "instructions", where, runs,
                   float(total), kernels, [CallFigure(n, float(v)) for n, v in zip(names, values)],
                   target)


def time_profile(dev: CpuDevice, binary: Path, in_files: Sequence[Path], runs: int,
                 timeout: float) -> Profile:
    proc = run_tool([binary, "--profile", str(runs), *in_files], what="profiling the kernels",
                    timeout=timeout, env=clean_env())
    out = proc.stdout.decode()
    names = [f[2] for f in _lines(out, "call")]
    times = {int(f[1]): float(f[2]) for f in _lines(out, "time")}
    total = _lines(out, "total_seconds")
    if len(times) != len(names) or not total:
        raise ConfigError(f"the profiling driver printed an unexpected report: {out[-300:]!r}")
    return _figures(names, [times[i] for i in range(len(names))], "time",
                    f"on this machine ({platform.machine()})", runs, float(total[0][1]),
                    dev.name)


def instruction_profile(dev: CpuDevice, binary: Path, in_files: Sequence[Path],
                        timeout: float) -> Profile:
    plugin = count_plugin()
    emulator = launcher(dev)
    with tempfile.TemporaryDirectory(prefix="edgec-count-") as tmp:
        rep = Path(tmp) / "count.txt"
        proc = run_tool([*emulator, "-plugin", f"{plugin},out={rep},marker={PROFILE_MARKER:x}",
                         binary, "--profile-marks", *in_files],
                        what="counting the kernels' instructions", timeout=timeout,
                        env=clean_env())
        if not rep.is_file():
            raise ToolMissingError(f"{emulator[0]} wrote no count with the plugin {plugin}: "
                                   f"{proc.stderr.decode()[-300:]}")
        report = rep.read_text()
    names = [f[2] for f in _lines(proc.stdout.decode(), "call")]
    windows = [int(f[3]) for f in _lines(report, "call")]
    threads = int(_lines(report, "threads")[0][1])
    if threads != 1:
        raise ConfigError(f"the guest ran {threads} threads; the instruction windows are "
                          "exact for one (compile with --threads 1)")
    n = 2 * EMPTY_WINDOWS + 1 + len(names)
    if len(windows) != n:
        raise ConfigError(f"the counting plugin saw {len(windows)} windows, expected {n}")
    base_main = min(windows[:EMPTY_WINDOWS])
    base_call = min(windows[EMPTY_WINDOWS:2 * EMPTY_WINDOWS])
    whole = windows[2 * EMPTY_WINDOWS] - base_main
    per_call = [w - base_call for w in windows[2 * EMPTY_WINDOWS + 1:]]
    where = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(emulator))
    return _figures(names, [float(v) for v in per_call], "instructions", where, 1, whole,
                    dev.name)


def profile_folder(out_dir: Path, dev: CpuDevice, compiler: str, threads: int,
                   inputs: Sequence[np.ndarray], runs: int = 50,
                   timeout: float = 3600) -> Profile:
    """Time per kernel natively, else instructions per kernel under qemu (module docstring);
    ``inputs`` are the arrays the profiled inferences read."""
    if runs < 1:
        raise ConfigError(f"--runs must be at least 1, not {runs}")
    manifest = json.loads((out_dir / "edgec.json").read_text())
    if "lm" in manifest:
        raise ConfigError("--profile takes a tensor model; a language model's folder is "
                          "measured with 'edgec verify' (tokens/s)")
    emulated = bool(launcher(dev))
    if emulated and threads > 1:
        raise ConfigError(f"the instruction profile under {dev.qemu} needs a single-threaded "
                          f"build (this folder has --threads {threads}); compile with "
                          "--threads 1")
    with tempfile.TemporaryDirectory(prefix="edgec-profile-") as tmp:
        work = Path(tmp)
        binary = build_profiler(Path(out_dir), dev, compiler, threads, work)
        in_files = []
        for i, arr in enumerate(inputs):
            path = work / f"in{i}.bin"
            path.write_bytes(np.ascontiguousarray(arr).tobytes())
            in_files.append(path)
        if emulated:
            return instruction_profile(dev, binary, in_files, timeout)
        return time_profile(dev, binary, in_files, runs, timeout)
