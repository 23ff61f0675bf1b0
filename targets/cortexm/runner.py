"""Run a Cortex-M image under qemu-system-arm: the MPS2/MPS3 board model, semihosting for the
command line and the files (``-semihosting-config enable=on,target=native``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from toolchain.errors import ConfigError, ToolFailedError
from toolchain.targets.cortexm.device import McuDevice
from toolchain.tools import require, run_tool

CMDLINE_MAX = 1023  # main.c's command-line buffer, less the terminating zero


def qemu_argv(dev: McuDevice, image: Path, args: Sequence[str | Path],
              plugin: str | None = None) -> list[str]:
    """qemu-system-arm running ``image`` with ``args`` as its semihosting command line."""
    qemu = require(dev.qemu, dev.install_hint)
    words = ["model", *[str(a) for a in args]]
    for w in words:  # qemu's option syntax: ',' separates options; main.c splits on spaces
        if not w or "," in w or " " in w:
            raise ConfigError(f"a semihosting argument may not be empty or hold ',' or ' ': {w!r}")
    if len(" ".join(words)) > CMDLINE_MAX:
        raise ConfigError(f"semihosting command line longer than {CMDLINE_MAX} characters")
    semi = ",".join(["enable=on", "target=native", *[f"arg={w}" for w in words]])
    argv = [str(qemu), "-M", dev.qemu_machine, "-nographic", "-monitor", "none",
            "-serial", "none", "-semihosting-config", semi, "-kernel", str(image)]
    if plugin:
        argv[1:1] = ["-plugin", plugin, "-d", "plugin"]
    return argv


def run_image(dev: McuDevice, image: Path, args: Sequence[str | Path], *, what: str,
              timeout: float = 1800, plugin: str | None = None):
    if not image.is_file():
        raise ConfigError(f"{image} is missing; compile again with 'edgec compile'")
    image = image.resolve()
    try:
        return run_tool(qemu_argv(dev, image, args, plugin), what=what, timeout=timeout,
                        cwd=image.parent)
    except ToolFailedError as exc:
        text = str(exc)
        if "(exit 3)" in text:
            raise ToolFailedError(f"{what}: the program faulted on {dev.qemu_machine} "
                                  f"({text.split(': ', 1)[-1]})") from None
        if "(exit -6)" in text:  # qemu's "Lockup": a fault while the stack itself was bad
            raise ToolFailedError(f"{what}: the core locked up on {dev.qemu_machine} (a fault "
                                  f"with no usable stack: a stack overflow past the "
                                  f"{dev.stack_bytes}-byte stack? compile with a larger "
                                  f"--stack-bytes)") from None
        raise


def run_model(dev: McuDevice, image: Path, inputs: Sequence[np.ndarray],
              output_specs: Sequence[tuple[tuple[int, ...], str]],
              timeout: float = 1800) -> list[np.ndarray]:
    with tempfile.TemporaryDirectory(prefix="edgec-run-") as tmp:
        tmpdir = Path(tmp)
        in_files = []
        for i, arr in enumerate(inputs):
            path = tmpdir / f"in{i}.bin"
            path.write_bytes(np.ascontiguousarray(arr).tobytes())
            in_files.append(path)
        out_files = [tmpdir / f"out{i}.bin" for i in range(len(output_specs))]
        run_image(dev, image, [*in_files, *out_files], what=f"running {image.name}",
                  timeout=timeout)
        result = []
        for p, (shape, dtype) in zip(out_files, output_specs):
            data = p.read_bytes() if p.is_file() else b""
            expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if len(data) != expected:
                raise ToolFailedError(f"running {image.name}: output {p.name} holds "
                                      f"{len(data)} bytes, expected {expected}")
            result.append(np.frombuffer(data, dtype=dtype).reshape(shape).copy())
        return result
