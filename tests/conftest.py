"""Shared fixtures; the graph builders live in onnx_graphs.py."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from onnx_graphs import LIGHT_DIR, LIGHT_MODELS, make_small_cnn, save


@pytest.fixture
def small_cnn(tmp_path) -> Path:
    return save(make_small_cnn(), tmp_path / "small_cnn.onnx")


@pytest.fixture(scope="session")
def light_model_dir(tmp_path_factory) -> Path:
    """The light_* models with seeded random weights (their stored weights are constant)."""
    from toolchain.onnx_io import randomize_weights, save_model

    out = tmp_path_factory.mktemp("light")
    for name in LIGHT_MODELS:
        save_model(randomize_weights(onnx.load(str(LIGHT_DIR / f"light_{name}.onnx"))),
                   out / f"{name}.onnx")
    return out
