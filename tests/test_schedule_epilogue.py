"""The fp32 rules for short reductions (targets/cpu/schedule.py): a conv tile's epilogue (bias,
ReLU) stored straight from its accumulators, and the global mean summed along contiguous rows;
structure on the host, results against onnxruntime on the host and arm-a72."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import needs_target, save
from test_fp32_schedule import _kernels
from toolchain.cli import main
from toolchain.commands.build import verify_folder


def _stem_squeeze_pool() -> onnx.ModelProto:
    """A 3-channel 3x3/2 stem conv, a 1x1 conv from 32 to 16 channels (both bias + ReLU), a
    global average pool: squeezenet's short-reduction kernels, small."""
    rng = np.random.default_rng(11)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * k).astype(np.float32), n)
             for n, s, k in (("w1", (32, 3, 3, 3), 0.3), ("b1", (32,), 0.1),
                             ("w2", (16, 32, 1, 1), 0.2), ("b2", (16,), 0.1))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["y"])]
    graph = helper.make_graph(
        nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 27, 27])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _allocations(func) -> list:
    from tvm.s_tir import Schedule

    sch, found, stack = Schedule(func), [], []
    stack.append(sch.get_sblock("root"))
    while stack:
        block = stack.pop()
        found.extend(sch.get(block).alloc_buffers)
        stack.extend(sch.get_child_blocks(block))
    return found


def test_conv_epilogue_needs_no_full_size_intermediate(tmp_path):
    kernels = _kernels(save(_stem_squeeze_pool(), tmp_path / "m.onnx"), "host")
    convs = {n: f for n, f in kernels.items() if "conv2d" in n}
    assert len(convs) == 2, list(kernels)
    for name, func in convs.items():
        out_shape = [int(d) for d in func.params[-1].shape]
        # only the tile's accumulators (local) remain, no global copy of the conv result
        full = [b.name for b in _allocations(func)
                if b.scope() != "local" and [int(d) for d in b.shape] == out_shape]
        assert not full, (name, full)
        assert "T.max" in func.script(), name  # the ReLU sits in the kernel


def test_global_mean_sums_contiguous_rows(tmp_path):
    kernels = _kernels(save(_stem_squeeze_pool(), tmp_path / "m.onnx"), "host")
    (mean,) = [f for n, f in kernels.items() if "conv2d" not in n]
    partial = [b for b in _allocations(mean) if b.name.endswith("rf_local")]
    # one partial sum per input column (13 of the 13x13 map), added a whole row at a time
    assert len(partial) == 1 and int(partial[0].shape[-1]) == 13, partial
    assert "T.vectorized(T.int64(13))" in mean.script()


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t))
                                    for t in ("host", "arm-a72")])
def test_short_reductions_match_onnxruntime(tmp_path, target):
    path = save(_stem_squeeze_pool(), tmp_path / "stem.onnx")
    out = tmp_path / target
    assert main(["compile", str(path), "-t", target, "-o", str(out)]) == 0
    for seed in (0, 1):
        results = verify_folder(out, seed=seed)
        assert results and all(c.ok and c.output_range > 0 for c in results), results
