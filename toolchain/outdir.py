"""Write an output folder atomically: build it beside the target, move it into place when done."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from toolchain.errors import ConfigError

_MARKER = ".edgec"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _unwritable(what: str, out: Path, exc: OSError) -> ConfigError:
    return ConfigError(f"cannot write the {what} {out}: {exc.strerror or exc}")


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """Yield a fresh staging folder; on success it replaces ``out``, on error it is removed.

    An existing ``out`` is replaced only if it is empty or was written by edgec (it holds the
    marker file), so a typo cannot wipe an unrelated folder.
    """
    out = Path(out).resolve()
    try:
        if out.exists():
            if not out.is_dir():
                raise ConfigError(f"output path {out} exists and is not a folder")
            if any(out.iterdir()) and not (out / _MARKER).exists():
                raise ConfigError(f"output folder {out} is not empty and was not written by "
                                  "edgec; choose another folder or empty it")
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as exc:
        raise _unwritable("output folder", out, exc) from None
    try:
        # mkdtemp creates the folder private (0700); give it the mode a plain mkdir would
        stage.chmod(0o777 & ~_umask())
        yield stage
        _executables_for_all(stage)
        (stage / _MARKER).write_text("written by edgec\n")
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            out.rename(trash / "old")
            stage.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _executables_for_all(folder: Path) -> None:
    """A program a tool wrote executable for its owner only (hls4ml's build_lib.sh is 0744)
    gets the group/other read and execute bits the umask allows, as a compiled binary has."""
    extra = 0o055 & ~_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            mode = path.stat().st_mode & 0o7777
            if mode & 0o100 and (mode | extra) != mode:
                path.chmod(mode | extra)


@contextlib.contextmanager
def staged_file(out: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``out``; it is renamed to ``out`` on success."""
    out = Path(out).resolve()
    if out.is_dir():
        raise ConfigError(f"cannot write {out}: it is a folder; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    except OSError as exc:
        raise _unwritable("file", out, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file private (0600); give it the mode a plain open() would
        tmp_path.chmod(0o666 & ~_umask())
        tmp_path.replace(out)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
