"""The generated host driver under AddressSanitizer and UndefinedBehaviorSanitizer.

Each zoo model is compiled for the host with --keep-build; the driver (model.c, main.c) is
rebuilt with ``-fsanitize=address,undefined`` and linked with the same kernels.o and
weights.o (LLVM's kernels and the weights blob carry no instrumentation; the driver's arena,
descriptors and I/O are what is checked). The sanitized binary must give the plain binary's
output on a valid input, refuse wrong-size inputs cleanly, and never print a sanitizer report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from onnx_graphs import have, needs_target
from toolchain.cli import main

SAN_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=99",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=98"}
REPORTS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
           "SUMMARY: AddressSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")
MODELS = {"cnn": [], "cnn_int8": ["--quantize", "int8"], "mlp": []}


def _sanitizer_runtime_missing(tmp: Path) -> str | None:
    """None if gcc can build and run a sanitized program, else why not (with the fix)."""
    if not have("gcc"):
        return "no host gcc"
    src = tmp / "probe.c"
    src.write_text("#include <stdlib.h>\nint main(void){char *p = malloc(4); p[0] = 1;"
                   " int r = p[0] - 1; free(p); return r;}\n")
    build = subprocess.run(["gcc", *SAN_FLAGS, str(src), "-o", str(tmp / "probe")],
                           capture_output=True, text=True)
    if build.returncode == 0 and subprocess.run([str(tmp / "probe")]).returncode == 0:
        return None
    major = subprocess.run(["gcc", "-dumpversion"], capture_output=True,
                           text=True).stdout.strip().split(".")[0]
    asan = {"10": "libasan6", "11": "libasan6"}.get(major, "libasan8")
    return (f"gcc {major} cannot build with -fsanitize=address,undefined "
            f"({(build.stderr.strip().splitlines() or ['the probe failed'])[-1]}): "
            f"apt-get install {asan} libubsan1 (or libgcc-{major}-dev, which pulls both in)")


@pytest.fixture(scope="module")
def sanitizers(tmp_path_factory):
    why = _sanitizer_runtime_missing(tmp_path_factory.mktemp("probe"))
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module", params=sorted(MODELS))
def sanitized(request, sanitizers, tmp_path_factory) -> tuple[Path, Path]:
    """(the plain build folder, the sanitized executable) for one zoo model."""
    name = request.param
    root = tmp_path_factory.mktemp(f"san_{name}")
    onnx_path = root / f"{name}.onnx"
    zoo = name.split("_")[0]
    assert main(["compress", zoo, *MODELS[name], "-o", str(onnx_path)]) == 0
    out = root / "out"
    assert main(["compile", str(onnx_path), "-t", "host", "-o", str(out), "--keep-build"]) == 0
    build = out / "build"
    objs = []
    for src in ("model.c", "main.c"):
        obj = root / (Path(src).stem + ".san.o")
        subprocess.run(["gcc", *SAN_FLAGS, "-I", str(build), "-c", str(build / src), "-o",
                        str(obj)], check=True)
        objs.append(str(obj))
    exe = root / "model_san"
    subprocess.run(["gcc", *SAN_FLAGS, *objs, str(build / "kernels.o"), str(build / "weights.o"),
                    "-lm", "-pthread", "-o", str(exe)], check=True, cwd=build)
    return out, exe


def _run(exe: Path, *args) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **SAN_ENV}, timeout=120)
    found = [r for r in REPORTS if r in proc.stderr]
    assert not found, proc.stderr
    return proc


def _input(out: Path, seed: int = 0) -> tuple[np.ndarray, int]:
    (spec,) = json.loads((out / "edgec.json").read_text())["inputs"]
    x = np.random.default_rng(seed).standard_normal(spec["shape"]).astype(spec["dtype"])
    return x, x.nbytes


pytestmark = needs_target("host")


def test_valid_input_matches_the_plain_build(sanitized, tmp_path):
    out, exe = sanitized
    x, _ = _input(out)
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    proc = _run(exe, tmp_path / "x.bin", tmp_path / "y_san.bin")
    assert proc.returncode == 0, proc.stderr
    plain = subprocess.run([str(out / "model"), tmp_path / "x.bin", tmp_path / "y.bin"])
    assert plain.returncode == 0
    y_san, y = (tmp_path / "y_san.bin").read_bytes(), (tmp_path / "y.bin").read_bytes()
    assert len(y) > 0 and y_san == y


@pytest.mark.parametrize("delta", [-4, -1, 1, 4096])
def test_wrong_input_size_is_rejected(sanitized, tmp_path, delta):
    out, exe = sanitized
    x, nbytes = _input(out)
    data = (x.tobytes() + bytes(max(delta, 0)))[:nbytes + delta]
    (tmp_path / "x.bin").write_bytes(data)
    proc = _run(exe, tmp_path / "x.bin", tmp_path / "y.bin")
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert f"must hold exactly {nbytes} bytes" in proc.stderr
    assert not (tmp_path / "y.bin").exists()


def test_missing_input_and_bad_arguments(sanitized, tmp_path):
    _, exe = sanitized
    assert _run(exe, tmp_path / "nope.bin", tmp_path / "y.bin").returncode != 0
    assert _run(exe).returncode != 0
    assert _run(exe, "--bench", "-3").returncode != 0


def test_bench_and_info(sanitized):
    _, exe = sanitized
    bench = _run(exe, "--bench", "3")
    assert bench.returncode == 0, bench.stderr
    assert bench.stdout.strip().splitlines()[-1].startswith("median_ms ")
    assert _run(exe, "--info").returncode == 0


def test_no_sanitizer_runtime_needed_for_plain_builds(sanitized):
    """The shipped binary stays static and uninstrumented."""
    out, _ = sanitized
    if shutil.which("nm"):
        syms = subprocess.run(["nm", str(out / "libmodel.a")], capture_output=True, text=True)
        assert "__asan" not in syms.stdout and "__ubsan" not in syms.stdout
