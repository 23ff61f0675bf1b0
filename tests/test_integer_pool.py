"""Integer global average pooling: quantize(mean(dequantize(q))) over H, W runs as one int32 sum
per channel, requantized once (integer.qmean_te), on an onnxruntime.quantization QDQ model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from onnx_graphs import needs_target
from toolchain.cli import main
from toolchain.commands.build import verify_folder


class _PoolHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)  # exports as GlobalAveragePool
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


@pytest.fixture(scope="module")
def pool_qdq(tmp_path_factory):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    root = tmp_path_factory.mktemp("pool")
    fp, q = root / "fp.onnx", root / "pool_qdq.onnx"
    torch.manual_seed(0)
    torch.onnx.export(_PoolHead().eval(), torch.randn(1, 3, 9, 7), str(fp), dynamo=False,
                      input_names=["x"], output_names=["y"], opset_version=17)

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.data = iter([{"x": rng.standard_normal((1, 3, 9, 7)).astype(np.float32)}
                              for _ in range(8)])

        def get_next(self):
            return next(self.data, None)

    quantize_static(str(fp), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return q


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t))
                                    for t in ("cortex-m4", "arm-a72")])
def test_global_average_pool_is_integer(pool_qdq, tmp_path, target):
    out = tmp_path / "out"
    assert main(["compile", str(pool_qdq), "-t", target, "-o", str(out)]) == 0
    for seed in (0, 1):
        assert all(c.ok and c.output_range > 0 for c in verify_folder(out, seed=seed))
    fused = [v["ops"] for v in json.loads((out / "report.json").read_text())["kernels"].values()]
    assert any("qmean" in ops for ops in fused), fused
    assert not any("mean" in ops for ops in fused), fused  # no float mean left
