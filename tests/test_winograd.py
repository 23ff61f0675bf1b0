"""Winograd F(2x2, 3x3) for fp32 3x3 stride-1 convs (targets/cpu/winograd.py): the weight
transform against a direct conv in numpy, and compiled models against onnxruntime: on
arm-a72 the 3x3 stride-1 conv takes the Winograd kernels and the stride-2 one does not; on the
host (where it measured slower) no conv takes them."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import needs_target, save
from toolchain.cli import main
from toolchain.commands.build import verify_folder
from toolchain.targets.cpu.winograd import _G, transform_weight


def _model() -> onnx.ModelProto:
    """3x3 stride-1 conv 32 -> 32 on an odd 11x11 (a cropped tile row/column) with bias and
    ReLU, then a 3x3 stride-2 conv 32 -> 32."""
    rng = np.random.default_rng(5)

    def init(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32),
                                       name)

    inits = [init("w1", (32, 32, 3, 3), 0.06), init("b1", (32,), 0.1),
             init("w2", (32, 32, 3, 3), 0.06), init("b2", (32,), 0.1)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="k3", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="k3s2",
                              pads=[1, 1, 1, 1], strides=[2, 2])]
    graph = helper.make_graph(
        nodes, "wino", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 11, 11])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_transforms_reproduce_a_direct_conv():
    """One 4x4 tile: A^T [(G g G^T) * (B^T d B)] A equals the 2x2 valid correlation."""
    rng = np.random.default_rng(0)
    g = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
    d = rng.standard_normal((4, 4))
    bt = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float)
    at = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)
    u = transform_weight(g)[:, :, 0, 0]
    np.testing.assert_allclose(u, _G @ g[0, 0] @ _G.T, rtol=1e-6)
    y = at @ (u * (bt @ d @ bt.T)) @ at.T
    direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * g[0, 0]) for j in range(2)]
                       for i in range(2)])
    np.testing.assert_allclose(y, direct, rtol=1e-5, atol=1e-6)


def _kernels(out) -> list[str]:
    return list(json.loads((out / "report.json").read_text())["kernels"])


@needs_target("arm-a72")
def test_aarch64_winograd_matches_onnxruntime(tmp_path):
    path = save(_model(), tmp_path / "w.onnx")
    out = tmp_path / "a72"
    assert main(["compile", str(path), "-t", "arm-a72", "-o", str(out)]) == 0
    kernels = _kernels(out)
    # The stride-1 conv only: one GEMM, and the stride-2 conv stays a direct conv kernel.
    assert sum(k.startswith("winograd_gemm") for k in kernels) == 1, kernels
    assert any("conv2d" in k for k in kernels), kernels
    results = verify_folder(out, seed=0)
    assert results and all(c.ok for c in results), results


def test_host_keeps_direct_convs(tmp_path):
    path = save(_model(), tmp_path / "w.onnx")
    out = tmp_path / "host"
    assert main(["compile", str(path), "-t", "host", "-o", str(out)]) == 0
    assert not any("winograd" in k for k in _kernels(out))
    results = verify_folder(out, seed=0)
    assert results and all(c.ok for c in results), results


@needs_target("arm-a72")
def test_cpu_nowinograd_pipeline_turns_it_off(tmp_path):
    path = save(_model(), tmp_path / "w.onnx")
    out = tmp_path / "a72n"
    assert main(["compile", str(path), "-t", "arm-a72", "--pipeline", "cpu-nowinograd",
                 "-o", str(out)]) == 0
    assert not any("winograd" in k for k in _kernels(out))
