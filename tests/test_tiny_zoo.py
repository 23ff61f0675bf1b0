"""MLPerf Tiny's reference architectures in the zoo (toolchain/models/tiny.py): their input
shapes and layers, seeded builds, and (slow) compile + verify on host and arm-a72."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from onnx_graphs import needs_target
from toolchain import models
from toolchain.cli import main

SHAPES = {"kws_dscnn": (1, 49, 10), "vww_mobilenet": (3, 96, 96), "resnet8": (3, 32, 32),
          "ad_autoencoder": (640,)}
OUTPUTS = {"kws_dscnn": 10, "vww_mobilenet": 2, "resnet8": 10, "ad_autoencoder": 640}


def _layers(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


def test_registered_beside_the_digits_models():
    assert set(SHAPES) <= set(models.names())
    assert {"mlp", "cnn"} <= set(models.names())


@pytest.mark.parametrize("name", ["kws_dscnn", "resnet8", "ad_autoencoder"])
def test_layout_is_the_digits_resized(name):
    X_tr, y_tr, X_te, y_te = models.dataset(name)
    assert X_tr.shape[1:] == SHAPES[name] == X_te.shape[1:] and X_tr.dtype == np.float32
    assert len(X_tr) + len(X_te) == 1797
    # the same split as the 8x8 digits: same labels in the same order
    np.testing.assert_array_equal(y_te, models.dataset("mlp")[3])
    assert 0.0 <= X_tr.min() and X_tr.max() <= 1.0 and X_tr.max() > 0.5


@pytest.mark.parametrize("name", list(SHAPES))
def test_build_is_seeded_and_runs(name):
    a, b = models.build(name), models.build(name)
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(va, vb)
    x = torch.rand(2, *SHAPES[name])
    assert a(x).shape == (2, OUTPUTS[name])


def test_reference_layers():
    kws = models.build("kws_dscnn")
    convs = _layers(kws, nn.Conv2d)
    assert convs[0].kernel_size == (10, 4) and convs[0].stride == (2, 2)
    assert sum(c.groups == 64 for c in convs) == 4 and all(c.out_channels == 64 for c in convs)
    # "same" padding: 49x10 -> 25x5 after the stride-2 stem
    assert kws.features[:3](torch.zeros(1, 1, 49, 10)).shape == (1, 64, 25, 5)

    vww = models.build("vww_mobilenet")
    dw = [c for c in _layers(vww, nn.Conv2d) if c.groups > 1]
    assert len(dw) == 13 and _layers(vww, nn.Conv2d)[0].out_channels == 8
    assert vww.classifier.in_features == 256  # 1024 x 0.25

    res = models.build("resnet8")
    convs = _layers(res, nn.Conv2d)
    assert sum(c.kernel_size == (3, 3) for c in convs) == 7
    assert sum(c.kernel_size == (1, 1) for c in convs) == 2  # the two shortcut convs

    ad = models.build("ad_autoencoder")
    sizes = [(m.in_features, m.out_features) for m in _layers(ad, nn.Linear)]
    assert sizes == [(640, 128), (128, 128), (128, 128), (128, 128), (128, 8), (8, 128),
                     (128, 128), (128, 128), (128, 128), (128, 640)]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """Each model's seeded build exported to ONNX once (batchnorm folded): the compile and
    verify steps check the arithmetic, which does not depend on trained weights."""
    from toolchain.compress.export import export_onnx

    root = tmp_path_factory.mktemp("tiny")
    cache = {}

    def get(name):
        if name not in cache:
            path = root / f"{name}.onnx"
            x = np.random.default_rng(0).random((1, *SHAPES[name]), dtype=np.float32)
            export_onnx(models.build(name), path, x)
            cache[name] = path
        return cache[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t))
                                    for t in ("host", "arm-a72")])
@pytest.mark.parametrize("name", list(SHAPES))
def test_compiles_and_verifies(tiny_onnx, tmp_path, name, target):
    out = tmp_path / "out"
    assert main(["compile", str(tiny_onnx(name)), "-t", target, "-o", str(out)]) == 0
    assert main(["verify", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    model = models.build(name)
    params = sum(p.numel() for p in model.parameters())
    tensors = len(model.state_dict())
    # fp32 weights, batchnorm folded into the layers before it: about the parameters' bytes
    # (each tensor aligned to 64 bytes)
    # On AArch64, Winograd F(2x2,3x3) convs (targets/cpu/winograd.py) store 4x4 transformed
    # weights, 16/9 of the 3x3 kernel's bytes: at most that factor over the parameters.
    grow = 16 / 9 if target.startswith("arm-") else 1.0
    assert params * 4 * 0.8 <= report["memory"]["weight_bytes"] <= params * 4 * grow + 64 * tensors
