"""The export check's tolerance for float-output QDQ graphs (torchao): one activation step at the
final quantized layers' inputs, carried through their weights. A correct export passes, a
corrupted one (wrong zero point, scale or weight) still fails."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from toolchain.compress import Context, Quantize, compress
from toolchain.compress.export import FLOAT_TOLERANCE, check_outputs
from toolchain.compress.pt2e import export_proto
from toolchain.compress.qdq_bound import output_step_bound
from toolchain.errors import VerificationError


def _qdq_conv(prefix: str, src: str, step: float, w: np.ndarray) -> tuple[list, list]:
    q = (w / 0.01).round().astype(np.int8)
    inits = [numpy_helper.from_array(np.array(step, np.float32), f"{prefix}_s"),
             numpy_helper.from_array(np.array(0, np.uint8), f"{prefix}_z"),
             numpy_helper.from_array(q, f"{prefix}_wq"),
             numpy_helper.from_array(np.full(w.shape[0], 0.01, np.float32), f"{prefix}_ws"),
             numpy_helper.from_array(np.zeros(w.shape[0], np.int8), f"{prefix}_wz")]
    nodes = [helper.make_node("QuantizeLinear", [src, f"{prefix}_s", f"{prefix}_z"], [f"{prefix}_q"]),
             helper.make_node("DequantizeLinear", [f"{prefix}_q", f"{prefix}_s", f"{prefix}_z"],
                              [f"{prefix}_dq"]),
             helper.make_node("DequantizeLinear", [f"{prefix}_wq", f"{prefix}_ws", f"{prefix}_wz"],
                              [f"{prefix}_w"], axis=0),
             helper.make_node("Conv", [f"{prefix}_dq", f"{prefix}_w"], [f"{prefix}_y"])]
    return nodes, inits


def test_bound_is_step_times_the_largest_row_l1_norm_summed_over_final_layers():
    rng = np.random.default_rng(0)
    w1, w2, w3 = (np.round(rng.uniform(-1, 1, s), 2) for s in ((4, 2, 1, 1), (4, 4, 1, 1),
                                                               (4, 2, 1, 1)))
    n1, i1 = _qdq_conv("a", "x", 0.5, w1)        # feeds b: not final
    n2, i2 = _qdq_conv("b", "a_y", 0.25, w2)     # final, one branch of the Add
    n3, i3 = _qdq_conv("c", "x", 0.125, w3)      # final, the other branch
    g = helper.make_graph(n1 + n2 + n3 + [helper.make_node("Add", ["b_y", "c_y"], ["out"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                          i1 + i2 + i3)
    expected = 0.25 * np.abs(w2).sum(axis=(1, 2, 3)).max() + 0.125 * np.abs(w3).sum(
        axis=(1, 2, 3)).max()
    assert output_step_bound(helper.make_model(g)) == pytest.approx(expected, rel=1e-6)


def test_a_quantized_output_rounds_the_bound_up_to_whole_output_steps():
    w = np.array([0.5, -0.25], np.float32).reshape(1, 2, 1, 1)
    nodes, inits = _qdq_conv("a", "x", 0.1, w)  # bound before the output quantizer: 0.075
    inits += [numpy_helper.from_array(np.array(0.04, np.float32), "o_s"),
              numpy_helper.from_array(np.array(0, np.int8), "o_z")]
    nodes += [helper.make_node("QuantizeLinear", ["a_y", "o_s", "o_z"], ["o_q"]),
              helper.make_node("DequantizeLinear", ["o_q", "o_s", "o_z"], ["out"])]
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 1, 1])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    assert output_step_bound(helper.make_model(g)) == pytest.approx(0.04 * 2)  # floor(1.875)+1


def test_a_float_graph_has_no_bound():
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    assert output_step_bound(helper.make_model(g)) is None


class TinyUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.head = nn.Conv2d(7, 3, 1)

    def forward(self, x):
        return self.head(torch.cat([torch.relu(self.up(torch.relu(self.down(x)))), x], 1))


@pytest.fixture(scope="module")
def torchao_export():
    """(QDQ proto, test inputs, PyTorch outputs) of a torchao-quantized tiny U-Net."""
    torch.manual_seed(0)
    X = np.random.default_rng(0).standard_normal((96, 3, 8, 8)).astype(np.float32)
    ctx = Context(X[:64], None, X[64:], None, source="test")
    small, _ = compress(TinyUNet().eval(), [Quantize("int8")], ctx)  # ConvTranspose: torchao
    x = torch.tensor(ctx.X_test)
    with torch.no_grad():
        ref = small(x).numpy()
    proto = export_proto(small, x, "input", "logits", 1, 17)
    proto.ir_version = 10
    return proto, ctx.X_test, ref


def test_a_correct_torchao_export_passes_within_the_step_bound(torchao_export):
    proto, x, ref = torchao_export
    err, tol, _, _, step = check_outputs(proto, "input", x, ref, True, None)
    bound = output_step_bound(proto)
    assert step is None and bound > 0
    assert tol == pytest.approx(FLOAT_TOLERANCE * max(float(np.ptp(ref)), 1.0) + bound, rel=1e-3)
    assert err <= tol


def _activation_dq(proto, index):
    return [n for n in proto.graph.node if n.op_type == "DequantizeLinear"
            and not any(t.name == n.input[0] for t in proto.graph.initializer)][index]


def _set(proto, name, fn):
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            n.attribute[0].t.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(
                n.attribute[0].t))))
            return
    t = next(t for t in proto.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(t)), name))


def _input_zero_point_4_high(p):
    dq = _activation_dq(p, 0)
    _set(p, dq.input[2], lambda z: (z.astype(np.int64) + 4).astype(z.dtype))


def _inner_activation_scale_10_percent_high(p):  # the transposed conv's input
    _set(p, _activation_dq(p, 1).input[1], lambda s: (s * 1.1).astype(np.float32))


def _head_input_scale_10_percent_low(p):
    head = [n for n in p.graph.node if n.op_type == "Conv"][-1]
    dq = next(n for n in p.graph.node if n.output[0] == head.input[0])
    _set(p, dq.input[1], lambda s: (s * 0.9).astype(np.float32))


def _head_weight_channel_negated(p):
    head = [n for n in p.graph.node if n.op_type == "Conv"][-1]
    dq = next(n for n in p.graph.node if n.output[0] == head.input[1])

    def negate(w):
        w = w.copy()
        w[0] = -w[0]
        return w
    _set(p, dq.input[0], negate)


@pytest.mark.parametrize("corrupt", [_input_zero_point_4_high,
                                     _inner_activation_scale_10_percent_high,
                                     _head_input_scale_10_percent_low,
                                     _head_weight_channel_negated])
def test_a_corrupted_export_still_fails(torchao_export, corrupt):
    proto, x, ref = torchao_export
    bad = copy.deepcopy(proto)
    corrupt(bad)
    with pytest.raises(VerificationError, match="differs from PyTorch"):
        check_outputs(bad, "input", x, ref, True, None)


def test_one_output_off_by_more_than_the_bound_fails(torchao_export):
    proto, x, ref = torchao_export
    off = ref.copy()
    off.flat[7] += 2 * output_step_bound(proto)
    with pytest.raises(VerificationError, match=r"differs from PyTorch by [0-9.e-]+ \(allowed"):
        check_outputs(proto, "input", x, off, True, None)


def test_many_outputs_off_by_less_than_the_bound_fail(torchao_export):
    proto, x, ref = torchao_export
    off = ref + np.float32(0.2 * output_step_bound(proto))  # every output, well within the bound
    with pytest.raises(VerificationError, match="of the outputs"):
        check_outputs(proto, "input", x, off, True, None)
