"""A mean over both spatial axes (``x.mean((2, 3))``, ONNX ReduceMean) lowers for the FPGA as
a global average pool (hls4ml AvgPool2d over the whole map) and, without keepdims, a flatten;
a mean over another axis is refused by node. The compiled design (C emulation) is checked in
examples/own_models.py's FPGA column (resnet-style, mobilenetv2-style: minutes to compile)."""

from __future__ import annotations

import io

import onnx
import pytest

from toolchain.errors import UnsupportedOpError
from toolchain.onnx_io import fix_input_shapes
from toolchain.targets.fpga.lower import lower, refusals

TARGET = "fpga-xcu250"


def _net(dims, keepdim: bool):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8 if dims == (2, 3) else 36, 4)

        def forward(self, x):
            y = torch.relu(self.conv(x)).mean(dims, keepdim=keepdim)
            return self.fc(y.flatten(1))

    buf = io.BytesIO()
    torch.onnx.export(Net().eval(), (torch.randn(1, 3, 6, 6),), buf, dynamo=False,
                      opset_version=17, input_names=["input"])
    return fix_input_shapes(onnx.load_from_string(buf.getvalue()), {})


@pytest.mark.parametrize("keepdim", [False, True])
def test_spatial_mean_lowers_to_a_global_average_pool(keepdim):
    layers = lower(_net((2, 3), keepdim), TARGET).layers
    kinds = [l.kind for l in layers]
    pool = next(l for l in layers if l.kind == "avgpool2d")
    assert pool.attrs["kernel"] == (6, 6) and pool.in_shape == (8, 6, 6)
    assert kinds[kinds.index("avgpool2d") + 1] == "flatten" and kinds[-1] == "dense"
    assert layers[-1].fan_in == 8


def test_a_mean_over_channels_is_refused_naming_the_node():
    model = _net((1,), True)
    with pytest.raises(UnsupportedOpError, match="ReduceMean.*global average pool"):
        lower(model, TARGET)
    nodes, _ = refusals(model, TARGET)
    assert [model.graph.node[i].op_type for i in nodes] == ["ReduceMean"]
