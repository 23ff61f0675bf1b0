"""examples/c_app: a C program linking libmodel.a + model.h, cross-built for aarch64 with its
Makefile and run under qemu; its argmax must be onnxruntime's on the same inputs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from onnx_graphs import have, needs_target
from toolchain.cli import main

APP = Path(__file__).parents[1] / "examples" / "c_app"

pytestmark = [pytest.mark.slow, needs_target("arm-a72"),
              pytest.mark.skipif(not have("make"), reason="missing make (apt-get install make)")]


def test_c_app_cross_built_for_aarch64_agrees_with_onnxruntime(tmp_path):
    from toolchain import models
    from toolchain.reference import run_reference
    from toolchain.targets import device

    model = tmp_path / "cnn.onnx"
    assert main(["compress", "cnn", "--quantize", "int8", "-o", str(model)]) == 0
    out = tmp_path / "out"
    assert main(["compile", str(model), "-t", "arm-a72", "-o", str(out)]) == 0
    facts = device("arm-a72").facts
    subprocess.run(["make", "-C", str(APP), f"OUT={out}", f"CC={facts['cc_prefix']}gcc",
                    f"BUILD={tmp_path}"], check=True, capture_output=True)
    app = tmp_path / "classify"
    assert app.is_file()

    x_test = models.dataset("cnn")[2]
    for i in range(8):  # a few digits of the test set, one inference each
        x = np.ascontiguousarray(x_test[i:i + 1], dtype=np.float32)
        x.tofile(tmp_path / "x.bin")
        run = subprocess.run([facts["qemu"], "-cpu", facts["qemu_cpu"], str(app),
                              str(tmp_path / "x.bin")],
                             capture_output=True, text=True, timeout=120, check=True)
        first = run.stdout.splitlines()[0]
        assert first.startswith("argmax ")
        expected = int(np.argmax(run_reference(out / "model.onnx", [x])[0]))
        assert int(first.split()[1]) == expected, (i, run.stdout)
        values = np.array(run.stdout.splitlines()[1].split(), dtype=np.float32)
        assert values.shape == (10,)

    # a wrong-sized input file is refused before the model runs
    (tmp_path / "short.bin").write_bytes(b"\0" * 10)
    run = subprocess.run([facts["qemu"], str(app), str(tmp_path / "short.bin")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "must hold exactly 256 bytes" in run.stderr
