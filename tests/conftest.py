"""Shared fixtures; the graph builders live in onnx_graphs.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import onnx
import pytest

from onnx_graphs import LIGHT_DIR, LIGHT_MODELS, make_small_cnn, save


@pytest.fixture
def small_cnn(tmp_path) -> Path:
    return save(make_small_cnn(), tmp_path / "small_cnn.onnx")


@pytest.fixture(scope="session")
def compiled_small_cnn(tmp_path_factory):
    """``get(target)``: small_cnn compiled once per target for the whole session (umask 022).

    The folders are shared: a test may read them, never change them; one that changes its
    folder takes ``get.copy(target, dest)``.
    """
    from toolchain.cli import main

    root = tmp_path_factory.mktemp("small_cnn_built")
    model = save(make_small_cnn(), root / "small_cnn.onnx")
    cache: dict[str, Path] = {}

    def get(target: str) -> Path:
        if target not in cache:
            out = root / target
            old = os.umask(0o022)
            try:
                assert main(["compile", str(model), "-t", target, "-o", str(out)]) == 0
            finally:
                os.umask(old)
            cache[target] = out
        return cache[target]

    def copy(target: str, dest: Path) -> Path:
        shutil.copytree(get(target), dest, symlinks=True)
        return dest

    get.model = model
    get.copy = copy
    return get


@pytest.fixture(scope="session")
def light_model_dir(tmp_path_factory) -> Path:
    """The light_* models with seeded random weights (their stored weights are constant)."""
    from toolchain.onnx_io import randomize_weights, save_model

    out = tmp_path_factory.mktemp("light")
    for name in LIGHT_MODELS:
        save_model(randomize_weights(onnx.load(str(LIGHT_DIR / f"light_{name}.onnx"))),
                   out / f"{name}.onnx")
    return out
