"""UnrollRecurrent: LSTM / GRU / RNN nodes unrolled into plain ops compute what onnxruntime's
recurrent kernels compute (onnx.helper graphs and torch.nn exports), and compile and verify
on every CPU target."""

from __future__ import annotations

import io
import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_graphs import needs_target
from toolchain.cli import main
from toolchain.errors import ModelError, UnsupportedOpError
from toolchain.passes import transform
from toolchain.passes.unroll_recurrent import UnrollRecurrent
from toolchain.reference import run_reference

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
S, N, I, H = 5, 3, 4, 6  # steps, batch, input features, hidden


def make_recurrent(op: str, direction: str = "forward", layout: int = 0, *, states=False,
                   lens=None, peephole=False, bias=True, opset: int = 17, outputs=(0, 1, 2),
                   **attrs) -> onnx.ModelProto:
    """One recurrent node; ``lens`` is None, a list (a constant) or "input" (a graph input)."""
    rng = np.random.default_rng(zlib.crc32(f"{op} {direction}".encode()))
    D = 2 if direction == "bidirectional" else 1
    n = GATES[op]

    def init(name, shape, scale=0.5):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32),
                                       name)

    inits = [init("W", (D, n * H, I)), init("R", (D, n * H, H))]
    if bias:
        inits.append(init("B", (D, 2 * n * H), 0.3))
    x_shape = [S, N, I] if layout == 0 else [N, S, I]
    state_shape = [D, N, H] if layout == 0 else [N, D, H]
    ins = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    node_in = ["X", "W", "R", "B" if bias else "", "", "", "", ""]
    if lens == "input":
        ins.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [N]))
        node_in[4] = "lens"
    elif lens is not None:
        inits.append(numpy_helper.from_array(np.array(lens, np.int32), "lens"))
        node_in[4] = "lens"
    if states:
        ins.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, state_shape))
        node_in[5] = "h0"
        if op == "LSTM":
            ins.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, state_shape))
            node_in[6] = "c0"
    if peephole:
        inits.append(init("P", (D, 3 * H), 0.3))
        node_in[7] = "P"
    node_in = node_in[:max(i for i, v in enumerate(node_in) if v) + 1]
    names = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    y_shape = [S, D, N, H] if layout == 0 else [N, S, D, H]
    shapes = {"Y": y_shape, "Y_h": state_shape, "Y_c": state_shape}
    node_out = [nm if i in outputs else "" for i, nm in enumerate(names)]
    if layout:
        attrs["layout"] = layout
    node = helper.make_node(op, node_in, node_out, name=f"{op.lower()}0", hidden_size=H,
                            direction=direction, **attrs)
    outs = [helper.make_tensor_value_info(nm, TensorProto.FLOAT, shapes[nm])
            for nm in node_out if nm]
    graph = helper.make_graph([node], "rnn", ins, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if vi.type.tensor_type.elem_type == TensorProto.INT32:
            feeds[vi.name] = rng.integers(0, S + 1, shape).astype(np.int32)
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _check_unrolled(model: onnx.ModelProto, atol: float = 2e-6) -> onnx.ModelProto:
    unrolled = transform(model, [UnrollRecurrent()])
    onnx.checker.check_model(unrolled)
    assert not any(n.op_type in GATES for n in unrolled.graph.node)
    feeds = _feeds(model)
    inputs = [feeds[i.name] for i in model.graph.input if i.name in feeds]
    want = run_reference(model.SerializeToString(), inputs)
    got = run_reference(unrolled.SerializeToString(), inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=0, atol=atol)
    return unrolled


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_directions_match_onnxruntime(op, direction):
    _check_unrolled(make_recurrent(op, direction))


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_initial_states_constant_lengths(op):
    _check_unrolled(make_recurrent(op, "bidirectional", states=True, lens=[5, 2, 3]))


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_layout1_is_layout0_transposed(op):
    """onnxruntime refuses layout 1 (batch first), so compare with its layout-0 twin."""
    kw = dict(states=True, lens=[5, 2, 3])
    twin = make_recurrent(op, "bidirectional", **kw)
    unrolled = transform(make_recurrent(op, "bidirectional", layout=1, **kw), [UnrollRecurrent()])
    onnx.checker.check_model(unrolled)
    feeds = _feeds(twin)
    x, states = feeds["X"], [feeds[k] for k in ("h0", "c0") if k in feeds]
    want = run_reference(twin.SerializeToString(), [x, *states])
    got = run_reference(unrolled.SerializeToString(),
                        [x.transpose(1, 0, 2), *(s.transpose(1, 0, 2) for s in states)])
    np.testing.assert_allclose(got[0], want[0].transpose(2, 0, 1, 3), atol=2e-6, rtol=0)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w.transpose(1, 0, 2), atol=2e-6, rtol=0)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_sequence_lens_graph_input_is_masked(op):
    _check_unrolled(make_recurrent(op, "bidirectional", states=True, lens="input"))


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_linear_before_reset(lbr):
    _check_unrolled(make_recurrent("GRU", "bidirectional", linear_before_reset=lbr))


def test_lstm_peephole_clip_activations_opset9():
    _check_unrolled(make_recurrent("LSTM", "forward", peephole=True, clip=0.7, opset=9,
                                   activations=["HardSigmoid", "Tanh", "Relu"],
                                   activation_alpha=[0.3], activation_beta=[0.4]))


def test_only_used_outputs_and_no_bias():
    m = _check_unrolled(make_recurrent("LSTM", "forward", bias=False, outputs=(1,)))
    assert [o.name for o in m.graph.output] == ["Y_h"]
    assert not any(n.op_type == "Concat" and "Y" in n.output for n in m.graph.node)


def test_constant_lengths_longer_than_the_sequence_refused():
    with pytest.raises(ModelError, match="sequence_lens"):
        transform(make_recurrent("GRU", lens=[5, 9, 1]), [UnrollRecurrent()])


def test_non_constant_weights_refused_by_node():
    m = make_recurrent("LSTM")
    w = next(t for t in m.graph.initializer if t.name == "W")
    m.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, list(w.dims)))
    m.graph.initializer.remove(w)
    with pytest.raises(UnsupportedOpError, match="'lstm0'.*W input 'W' is not a constant"):
        transform(m, [UnrollRecurrent("host")])


def test_input_forget_refused():
    with pytest.raises(UnsupportedOpError, match="input_forget"):
        transform(make_recurrent("LSTM", input_forget=1), [UnrollRecurrent()])


def _torch_rnn(cell: str, **kw):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(nn, cell)(I, H, batch_first=True, **kw)
            self.fc = nn.Linear(H * (2 if kw.get("bidirectional") else 1), 3)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.fc(y[:, -1])

    torch.manual_seed(0)
    net = Net().eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.randn(2, S, I),), buf, dynamo=False, opset_version=17,
                      input_names=["x"])
    return net, onnx.load_from_string(buf.getvalue())


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_torch_stacked_bidirectional_export(cell):
    import torch

    net, model = _torch_rnn(cell, num_layers=2, bidirectional=True)
    assert sum(n.op_type == cell for n in model.graph.node) == 2
    model = onnx.shape_inference.infer_shapes(model)
    _check_unrolled(model)
    x = np.random.default_rng(3).standard_normal((2, S, I)).astype(np.float32)
    unrolled = transform(model, [UnrollRecurrent()])
    got = run_reference(unrolled.SerializeToString(), [x])[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), atol=2e-6, rtol=0)


@pytest.fixture(scope="module")
def two_cell_model(tmp_path_factory):
    """torch GRU then LSTM (stacked), batch 1: what the zoo keyword spotter looks like."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(I, H, batch_first=True)
            self.lstm = nn.LSTM(H, H, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(2 * H, 3)

        def forward(self, x):
            y, _ = self.gru(x)
            y, _ = self.lstm(y)
            return self.fc(y[:, -1])

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("rnn") / "rnn.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(1, S, I),), str(path), dynamo=False,
                      opset_version=17, input_names=["x"])
    return path


@pytest.mark.parametrize("target", [
    pytest.param("host"),
    pytest.param("arm-a72", marks=[needs_target("arm-a72"), pytest.mark.slow]),
    pytest.param("armv7-a7", marks=[needs_target("armv7-a7"), pytest.mark.slow]),
])
def test_compile_and_verify(two_cell_model, tmp_path, target):
    out = tmp_path / target
    assert main(["compile", str(two_cell_model), "-t", target, "-o", str(out)]) == 0
    assert main(["verify", str(out)]) == 0
    assert main(["verify", str(out), "--seed", "3"]) == 0


def test_zoo_keyword_spotter_exports_lstm_nodes_and_learns():
    import torch

    from toolchain import models
    from toolchain.models.train import accuracy

    assert models.spec("kws").input_shape == (8, 8)  # 8 image rows = 8 steps of 8 features
    buf = io.BytesIO()
    torch.onnx.export(models.build("kws"), (torch.zeros(1, 8, 8),), buf, dynamo=False,
                      opset_version=17)
    ops = [n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node]
    assert ops.count("LSTM") == 2
    _, _, X_te, y_te = models.dataset("kws")
    assert accuracy(models.trained("kws"), X_te, y_te) >= 93.0
