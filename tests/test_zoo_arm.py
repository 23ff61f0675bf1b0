"""The zoo models (float, and the int8 QDQ CNN) compile for each CPU target and match onnxruntime."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnx_graphs import needs_target
from toolchain.cli import main
from toolchain.commands.build import verify_folder
from toolchain.models import names

TARGETS = ["host", "arm-a72", "armv7-a7"]
CASES = [(n, []) for n in names("classifier")] + [("cnn", ["--quantize", "int8"])]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    cache: dict[str, Path] = {}

    def get(name: str, flags: list[str]) -> Path:
        key = name + "".join(flags)
        if key not in cache:
            path = root / f"{key.replace('-', '')}.onnx"
            assert main(["compress", name, *flags, "-o", str(path)]) == 0
            cache[key] = path
        return cache[key]

    return get


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t)) for t in TARGETS])
@pytest.mark.parametrize("name, flags", CASES, ids=[n + "".join(f) for n, f in CASES])
def test_zoo_model_on_cpu_target(exported, tmp_path, name, flags, target):
    out = tmp_path / "out"
    assert main(["compile", str(exported(name, flags)), "-t", target, "-o", str(out)]) == 0
    for seed in (0, 1):
        results = verify_folder(out, seed=seed)
        assert all(c.ok and c.output_range > 0 for c in results), results
