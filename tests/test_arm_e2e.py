"""End to end on real tools: TVM compiles, the cross gcc links, qemu runs, onnxruntime checks."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from onnx_graphs import have, make_two_io, needs_target, save
from toolchain.cli import main
from toolchain.commands.build import verify_folder

TARGETS = ["host", "arm-a72", "armv7-a7"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, compiled_small_cnn):
    """Compile each (model, target) once for the whole module (small_cnn: once a session)."""
    cache: dict[tuple[str, str], Path] = {}
    root = tmp_path_factory.mktemp("built")
    models = {"small_cnn": compiled_small_cnn.model,
              "two_io": save(make_two_io(), root / "two_io.onnx")}

    def get(model: str, target: str) -> Path:
        key = (model, target)
        if model == "small_cnn":
            return compiled_small_cnn(target)
        if key not in cache:
            out = root / f"{model}-{target}"
            assert main(["compile", str(models[model]), "-t", target, "-o", str(out)]) == 0
            cache[key] = out
        return cache[key]

    get.models = models
    return get


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t)) for t in TARGETS])
@pytest.mark.parametrize("model", ["small_cnn", "two_io"])
def test_compile_run_verify(built, model, target):
    out = built(model, target)
    for name in ("model", "libmodel.a", "model.h", "report.json", "model.onnx", "edgec.json"):
        assert (out / name).is_file(), name
    for seed in (0, 1):
        results = verify_folder(out, seed=seed)
        assert results and all(c.ok for c in results), results
        assert all(c.output_range > 0 for c in results)  # a constant output would prove little


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t))
                                    for t in ("arm-a53", "arm-a76")])
def test_other_aarch64_devices(built, target):
    results = verify_folder(built("small_cnn", target))
    assert all(c.ok for c in results)


@needs_target("arm-a72")
def test_binary_is_for_the_target(built):
    head = (built("small_cnn", "arm-a72") / "model").read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 2  # 64-bit
    assert int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    head = (built("small_cnn", "armv7-a7") / "model").read_bytes()[:20]
    assert head[4] == 1 and int.from_bytes(head[18:20], "little") == 40  # 32-bit EM_ARM


def test_report_contents(built):
    report = json.loads((built("small_cnn", "host") / "report.json").read_text())
    assert report["kernel_calls_before_fusion"] > report["kernel_calls_after_fusion"]
    mem = report["memory"]
    assert 0 < mem["arena_bytes"] < mem["arena_bytes_without_reuse"]
    # conv weights 8*3*3*3 + 16*8*3*3 + fc 16*10 floats, plus biases: batch norm was folded away
    assert mem["weight_bytes"] >= 4 * (216 + 1152 + 160)
    assert report["binary_bytes"] > 0 and report["library_bytes"] > 0
    assert any(k["ops"][:1] == ["conv2d"] and len(k["ops"]) > 1 for k in report["kernels"].values())
    for stage in ("import", "pipeline.legalize", "pipeline.fuse_ops", "codegen", "cc"):
        assert stage in report["stage_seconds"]


@needs_target("arm-a72")
def test_reproducible(built, tmp_path):
    first = built("small_cnn", "arm-a72")
    again = tmp_path / "again"
    assert main(["compile", str(built.models["small_cnn"]), "-t", "arm-a72", "-o", str(again)]) == 0
    for name in ("model", "libmodel.a", "model.h"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name


def test_run_command_writes_outputs(built, tmp_path, capsys):
    out = built("two_io", "host")
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((2, 12)).astype(np.float32), rng.standard_normal((2, 5)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    assert main(["run", str(out), "--input", str(tmp_path / "a.npy"), "--input", str(tmp_path / "b.npy"),
                 "--output", str(tmp_path / "y1.npy"), "--output", str(tmp_path / "y2.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y2.npy"), b * b, rtol=1e-6)
    w = None
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(out / "model.onnx"))
    w = numpy_helper.to_array(m.graph.initializer[0])
    np.testing.assert_allclose(np.load(tmp_path / "y1.npy"), np.tanh(a @ w + b), atol=1e-5)


def test_bench_prints_median_last(built):
    out = built("small_cnn", "host")
    proc = subprocess.run([str(out / "model"), "--bench", "5"], capture_output=True, text=True,
                          check=True)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("median_ms ") and float(last.split()[1]) > 0


@pytest.mark.skipif(not have("cc"), reason="no host C compiler")
def test_embedded_library_from_user_code(built, tmp_path):
    """A user's C program links libmodel.a with model.h and gets the binary's numbers."""
    out = built("small_cnn", "host")
    (tmp_path / "app.c").write_text(r"""
#include <stdio.h>
#include "model.h"
int main(void) {
  static float x[EDGEC_MODEL_INPUT0_ELEMENTS], y[EDGEC_MODEL_OUTPUT0_ELEMENTS];
  for (unsigned i = 0; i < EDGEC_MODEL_INPUT0_ELEMENTS; ++i) x[i] = (float)(i % 7) / 7.0f - 0.5f;
  if (edgec_model_run(x, y) != 0) { printf("error %s\n", edgec_model_last_error()); return 1; }
  for (unsigned i = 0; i < EDGEC_MODEL_OUTPUT0_ELEMENTS; ++i) printf("%.9g\n", y[i]);
  return 0;
}
""")
    subprocess.run(["cc", "-O1", f"-I{out}", "app.c", str(out / "libmodel.a"), "-lm", "-o", "app"],
                   cwd=tmp_path, check=True)
    got = np.array([float(v) for v in subprocess.run([str(tmp_path / "app")], capture_output=True,
                                                     text=True, check=True).stdout.split()])
    x = ((np.arange(3 * 16 * 16) % 7) / 7.0 - 0.5).astype(np.float32).reshape(1, 3, 16, 16)
    from toolchain.reference import run_reference

    ref = run_reference(out / "model.onnx", [x])[0].reshape(-1)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    header = (out / "model.h").read_text()
    assert "#define EDGEC_MODEL_INPUT0_SHAPE {1, 3, 16, 16}" in header
    assert '#define EDGEC_MODEL_OUTPUT0_NAME "y"' in header
