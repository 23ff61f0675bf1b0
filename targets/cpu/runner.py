"""Run a built executable: natively on a machine of its architecture, else under qemu-user."""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from toolchain.errors import ConfigError
from toolchain.targets.cpu.device import CpuDevice
from toolchain.tools import require, run_tool

def launcher(dev: CpuDevice) -> list[str]:
    """The argv prefix that runs a binary for ``dev`` on this machine."""
    if dev.is_native or dev.machine == platform.machine():
        return []
    hint = " ".join(p for p in dev.debian_packages if "qemu" in p) or "qemu-user"
    qemu = require(dev.qemu, f"apt-get install {hint}  (Debian/Ubuntu, as root)")
    return [str(qemu), "-cpu", dev.qemu_cpu] if dev.qemu_cpu else [str(qemu)]


def clean_env() -> dict[str, str]:
    # qemu-user passes the environment to the guest; a fixed, small one makes runs repeatable.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}


def run_binary(dev: CpuDevice, binary: Path, inputs: Sequence[np.ndarray],
               output_specs: Sequence[tuple[tuple[int, ...], str]],
               timeout: float = 1800) -> list[np.ndarray]:
    if not binary.is_file():
        raise ConfigError(f"{binary} is missing; compile again with 'edgec compile'")
    with tempfile.TemporaryDirectory(prefix="edgec-run-") as tmp:
        tmpdir = Path(tmp)
        in_files, out_files = [], []
        for i, arr in enumerate(inputs):
            path = tmpdir / f"in{i}.bin"
            path.write_bytes(np.ascontiguousarray(arr).tobytes())
            in_files.append(path)
        out_files = [tmpdir / f"out{i}.bin" for i in range(len(output_specs))]
        run_tool([*launcher(dev), binary, *in_files, *out_files], what=f"running {binary.name}",
                 timeout=timeout, env=clean_env())
        return [np.frombuffer(p.read_bytes(), dtype=dtype).reshape(shape).copy()
                for p, (shape, dtype) in zip(out_files, output_specs)]


def bench_binary(dev: CpuDevice, binary: Path, runs: int, timeout: float = 3600) -> float:
    """Median milliseconds per inference, as the binary's --bench reports it."""
    proc = run_tool([*launcher(dev), binary, "--bench", str(runs)], what="benchmarking",
                    timeout=timeout, env=clean_env())
    last = proc.stdout.decode().strip().splitlines()[-1]
    return float(last.split()[-1])


def generate_binary(dev: CpuDevice, binary: Path, prompt: bytes, tokens: int, vocab: int,
                    timeout: float = 1800) -> tuple[list[int], np.ndarray]:
    """A language model binary's greedy ids (``--ids``) and the logits of each step."""
    if not binary.is_file():
        raise ConfigError(f"{binary} is missing; compile again with 'edgec compile'")
    with tempfile.TemporaryDirectory(prefix="edgec-run-") as tmp:
        logits = Path(tmp) / "logits.bin"
        proc = run_tool([*launcher(dev), binary, "--prompt", prompt.decode("latin-1"),
                         "--tokens", str(tokens), "--temperature", "0", "--ids",
                         "--logits", logits], what=f"generating with {binary.name}",
                        timeout=timeout, env=clean_env())
        lines = proc.stdout.decode().strip().splitlines()[:-1]  # the last: tokens/s
        return [int(x) for x in lines], np.fromfile(logits, np.float32).reshape(-1, vocab)
