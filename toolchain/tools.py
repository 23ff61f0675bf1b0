"""Find external programs, and fail with an install hint when one is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from toolchain.errors import ToolFailedError, ToolMissingError


def require(program: str, install_hint: str) -> Path:
    """Return the full path of ``program`` on PATH or raise ToolMissingError with the hint."""
    found = shutil.which(program)
    if found is None:
        raise ToolMissingError(f"'{program}' not found on PATH; install it: {install_hint}")
    return Path(found)


def run_tool(cmd: Sequence[str | Path], *, what: str, cwd: Path | None = None,
             timeout: float | None = 600, env: dict | None = None,
             input_bytes: bytes | None = None) -> subprocess.CompletedProcess:
    """Run a command; a non-zero exit becomes ToolFailedError with the tail of its stderr."""
    argv = [str(c) for c in cmd]
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=timeout, env=env,
                              input=input_bytes)
    except FileNotFoundError as exc:
        raise ToolMissingError(f"{what}: cannot run '{argv[0]}': {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise ToolFailedError(f"{what}: '{Path(argv[0]).name}' timed out after {timeout} s") from None
    if proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
        tail = " | ".join(err[-3:]) if err else "(no error output)"
        raise ToolFailedError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc
