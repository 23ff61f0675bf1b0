"""Residual adds in edgec's int8 quantization: both operands get QDQ in the export (found by
torch.fx), so the integer lowering keeps the add and the activations around it in int8."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from onnx_graphs import needs_target
from toolchain.cli import main
from toolchain.commands.build import verify_folder


class _TwoBlocks(nn.Module):
    """An identity shortcut, then a 1x1 conv shortcut (stride 2), each add followed by ReLU
    (torchvision's BasicBlock pattern: the identity operand is an nn.ReLU's output)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.b = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.short = nn.Conv2d(8, 16, 1, 2)
        self.head = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(self.a(h) + h)
        h = torch.relu(self.b(h) + self.short(h))
        return self.head(torch.flatten(h, 1))


@pytest.fixture(scope="module")
def residual_int8(tmp_path_factory):
    from toolchain.compress import Quantize, export_onnx

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32)
    model = Quantize("int8", calibration_samples=64).apply(_TwoBlocks(), SimpleNamespace(X_train=x))
    path = tmp_path_factory.mktemp("residual") / "residual_int8.onnx"
    export_onnx(model, path, x[:8])
    return path


def test_both_operands_of_each_add_are_quantized(residual_int8):
    from toolchain.compress.quantize import residual_producers

    assert residual_producers(_TwoBlocks()) == ["a.2", "stem.1", "b.2", "short"]
    graph = onnx.load(residual_int8).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    adds = [n for n in graph.node if n.op_type == "Add"]
    assert len(adds) == 2
    assert all(made_by.get(i) == "DequantizeLinear" for n in adds for i in n.input), adds


@needs_target("cortex-m4")
def test_residual_adds_run_in_int8_on_the_m4(residual_int8, tmp_path):
    out = tmp_path / "out"
    assert main(["compile", str(residual_int8), "-t", "cortex-m4", "-o", str(out)]) == 0
    assert all(c.ok and c.output_range > 0 for c in verify_folder(out, seed=0))
    kernels = json.loads((out / "report.json").read_text())["kernels"]
    fused = [v["ops"] for v in kernels.values()]
    adds = [ops for ops in fused if "qadd" in ops or "add" in ops]
    assert len(adds) == 2 and not any("dequantize" in ops for ops in adds), fused


@pytest.mark.slow
@needs_target("cortex-m4")
def test_resnet8_int8_fits_the_m4_and_verifies(tmp_path):
    """MLPerf Tiny's ResNet-8 (seeded weights), int8: with its residual adds in int8 the arena
    holds int8 activations only and the image fits the M4's 192 KiB (float adds: 201 KiB)."""
    from toolchain import models
    from toolchain.compress import Quantize, export_onnx

    torch.manual_seed(0)
    x = np.random.default_rng(0).random((32, 3, 32, 32), dtype=np.float32)
    model = Quantize("int8", calibration_samples=32).apply(models.build("resnet8"),
                                                            SimpleNamespace(X_train=x))
    path, out = tmp_path / "resnet8_int8.onnx", tmp_path / "out"
    export_onnx(model, path, x[:4])
    assert main(["compile", str(path), "-t", "cortex-m4", "-o", str(out)]) == 0
    assert all(c.ok and c.output_range > 0 for c in verify_folder(out, seed=0))
    report = json.loads((out / "report.json").read_text())
    assert report["mcu"]["ram_bytes"] < report["mcu"]["ram_available"]
    fused = [v["ops"] for v in report["kernels"].values()]
    assert sum("qadd" in ops for ops in fused) == 2, fused  # the third add feeds the pool
