"""The step cache: finished step folders stored under the hash of what made them.

A key hashes the step's name, its options, the content hashes of its inputs, and the versions
of edgec and the tools (tvm, onnx, onnxruntime, hls4ml, torch, da4ml, verilator, and the
target's C compiler's ``--version`` line). An entry is ``<root>/<key[:2]>/<key>/`` holding
``files/`` (the step's folder) and ``entry.json`` (the content hash of ``files/``). It is
written into a temporary folder and renamed into place, so a killed build leaves no entry;
when one is served, the copy is hashed again and an entry whose content changed is discarded
(then the step is rebuilt). Entries are never evicted: delete the folder to reclaim space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "EDGEC_CACHE"
STEP_JSON = "step.json"
# not content: the step's record, the marker toolchain.outdir writes into every folder, and the
# verify step's timing (a measurement, different on every run: a step keyed on it, the report,
# would never be reused; the report shows the latency measured when the verify step ran)
_NOT_CONTENT = {STEP_JSON, ".edgec", "bench.json"}
_TOOL_PACKAGES = ("torch", "apache-tvm", "onnx", "onnxruntime", "hls4ml", "da4ml", "verilator")


def cache_root() -> Path:
    """``$EDGEC_CACHE/build``, else ``~/.cache/edgec/build``."""
    env = os.environ.get(CACHE_ENV)
    return (Path(env) if env else Path.home() / ".cache" / "edgec") / "build"


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_hash(folder: Path) -> str:
    """The content of a folder: relative paths, executable bits and bytes (not step.json)."""
    h = hashlib.sha256()
    folder = Path(folder)
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel in _NOT_CONTENT:
                continue
            mode = "x" if os.access(path, os.X_OK) else "-"
            h.update(f"{rel}\0{mode}\0{file_hash(path)}\n".encode())
    return h.hexdigest()


def key_of(material: dict) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


@lru_cache(maxsize=1)
def source_hash() -> str:
    """A hash of edgec's own code and data (toolchain, targets, models: .py .c .h .toml), so a
    step cached before edgec changed is not served after it, even at the same version number."""
    import toolchain
    from toolchain import models, targets

    h = hashlib.sha256()
    for pkg in (toolchain, targets, models):
        root = Path(pkg.__file__).parent
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".c", ".h", ".toml") and "__pycache__" not in path.parts:
                h.update(f"{pkg.__name__}/{path.relative_to(root).as_posix()}\0".encode())
                h.update(path.read_bytes())
    return h.hexdigest()[:16]


@lru_cache(maxsize=1)
def tool_versions() -> dict[str, str]:
    from toolchain import __version__

    found = {"edgec": __version__, "edgec_source": source_hash()}
    for name in _TOOL_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


@lru_cache(maxsize=None)
def version_line(argv: tuple[str, ...]) -> str:
    """The first line ``argv + --version`` prints ('absent' when it cannot run)."""
    try:
        done = subprocess.run([*argv, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "absent"


class StepCache:
    """Finished step folders by key (see the module docstring)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else cache_root()

    def _entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def fetch(self, key: str, dest: Path) -> dict | None:
        """Copy the entry's files into the (empty) folder ``dest`` and return its metadata, or
        None when there is no sound entry (a corrupted one is removed)."""
        entry = self._entry(key)
        if not entry.is_dir():
            return None
        try:
            meta = json.loads((entry / "entry.json").read_text())
            shutil.copytree(entry / "files", dest, dirs_exist_ok=True, symlinks=True)
            sound = tree_hash(dest) == meta["content_hash"]
        except (OSError, ValueError, KeyError, TypeError):
            sound = False
        if sound:
            return meta
        log.warning("discarding the corrupted cache entry %s; the step is rebuilt", entry)
        self._discard(entry)
        for child in list(Path(dest).iterdir()):
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        return None

    def store(self, key: str, folder: Path, meta: dict) -> None:
        """Store a copy of ``folder`` (without step.json); a cache that cannot be written is a
        warning, not a failed build."""
        entry = self._entry(key)
        tmp = None
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", suffix=".partial",
                                        dir=entry.parent))
            shutil.copytree(folder, tmp / "files", symlinks=True,
                            ignore=lambda d, names: [STEP_JSON] if Path(d) == Path(folder)
                            else [])
            meta = {**meta, "key": key, "content_hash": tree_hash(tmp / "files")}
            (tmp / "entry.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            if entry.exists():
                self._discard(entry)
            os.rename(tmp, entry)
            tmp = None
        except OSError as exc:  # e.g. another build stored the same key first, or a full disk
            log.warning("not caching %s: %s", folder, exc.strerror or exc)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _discard(self, entry: Path) -> None:
        try:  # rename first, so no reader sees a half-deleted entry
            trash = Path(tempfile.mkdtemp(prefix=".trash.", dir=entry.parent))
            os.rename(entry, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        except OSError as exc:
            log.warning("cannot remove the cache entry %s: %s", entry, exc.strerror or exc)
