"""PyTorch models in the forms people have them: .pt2 programs, file.py:ClassName + state dict,
pickled modules with --module-path; integer (token id) inputs; verify inputs in range."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from toolchain.cli import main
from toolchain.compress import export_onnx, onnx_outputs
from toolchain.errors import ConfigError, ModelError
from toolchain.onnx_io import TensorSpec, index_bound, input_specs, parse_input_shapes, random_inputs
from toolchain.torch_input import load_module

SOURCE = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(16, 12), nn.Linear(12, 5)
        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(30, 8)
            self.head = nn.Linear(8, 4)
        def forward(self, ids):
            return self.head(self.emb(ids).mean(1))
""")


@pytest.fixture
def src(tmp_path):
    """A user's model source in its own folder, importable only while the test puts it on the
    path; yields (folder, module)."""
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "usernet.py").write_text(SOURCE)
    sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module("usernet")
        yield folder, module
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("usernet", None)


def _x(n=8):
    return np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)


def test_pt2_loads_without_the_source(src, tmp_path):
    folder, mod = src
    torch.manual_seed(0)
    net = mod.Net().eval()
    ep = torch.export.export(net, (torch.zeros(2, 16),),
                             dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, tmp_path / "net.pt2")
    sys.path.remove(str(folder))
    sys.modules.pop("usernet")
    sys.path.insert(0, str(folder))  # (the fixture removes it again)
    (folder / "usernet.py").unlink()   # no source anywhere now
    loaded = load_module(tmp_path / "net.pt2")
    x = torch.tensor(_x())
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-6)
    export_onnx(loaded, tmp_path / "net.onnx", _x())
    np.testing.assert_allclose(onnx_outputs(tmp_path / "net.onnx", _x()), net(x).detach().numpy(),
                               atol=1e-5)


def test_static_batch_pt2_runs_in_chunks_and_refuses_compression(src, tmp_path, capsys):
    _, mod = src
    ep = torch.export.export(mod.Net().eval(), (torch.zeros(1, 16),))
    torch.export.save(ep, tmp_path / "one.pt2")
    loaded = load_module(tmp_path / "one.pt2")
    assert loaded(torch.zeros(3, 16)).shape == (3, 5)
    np.savez(tmp_path / "d.npz", x=_x(20))
    rc = main(["compress", str(tmp_path / "one.pt2"), "--data", str(tmp_path / "d.npz"),
               "--quantize", "int8", "-o", str(tmp_path / "q.onnx")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "a .pt2 program is a graph of aten ops" in err


def test_class_and_state_dict(src, tmp_path, capsys):
    folder, mod = src
    torch.manual_seed(1)
    net = mod.Net().eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    ref = f"{folder / 'usernet.py'}:Net"
    loaded = load_module(ref, weights=tmp_path / "w.pt")
    x = torch.tensor(_x())
    assert torch.equal(loaded(x), net(x))
    np.savez(tmp_path / "d.npz", x=_x(40), y=np.arange(40) % 5)
    out = tmp_path / "c.onnx"
    assert main(["compress", ref, "--weights", str(tmp_path / "w.pt"), "--data",
                 str(tmp_path / "d.npz"), "--quantize", "int8", "-o", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["model"] == "Net"


@pytest.mark.parametrize("weights,message", [
    (None, "is an architecture: give its trained weights with --weights"),
    ("tokens", "does not fit"),
    ("missing", "weights file not found"),
])
def test_class_ref_errors(src, tmp_path, weights, message):
    folder, mod = src
    if weights == "tokens":
        torch.save(mod.Tokens().state_dict(), tmp_path / "tokens.pt")
    path = None if weights is None else tmp_path / f"{weights}.pt"
    with pytest.raises(ModelError, match=message):
        load_module(f"{folder / 'usernet.py'}:Net", weights=path)


def test_pickled_module_needs_module_path(src, tmp_path, capsys):
    folder, mod = src
    torch.save(mod.Net().eval(), tmp_path / "pickled.pt")
    sys.path.remove(str(folder))
    sys.modules.pop("usernet")
    try:
        with pytest.raises(ModelError, match="needs module 'usernet'.*--module-path DIR"):
            load_module(tmp_path / "pickled.pt")
        assert isinstance(load_module(tmp_path / "pickled.pt", module_paths=[folder]), nn.Module)
        assert str(folder) not in sys.path  # the folder is on the path only while loading
        sys.modules.pop("usernet")  # (imported by that load)
        assert main(["compile", str(tmp_path / "pickled.pt"), "-t", "host", "--input-shape",
                     "x=1,16", "-o", str(tmp_path / "no")]) == 2  # the one-line error above
        assert main(["compile", str(tmp_path / "pickled.pt"), "--module-path", str(folder),
                     "-t", "host", "--input-shape", "x=1,16", "-o", str(tmp_path / "out")]) == 0
    finally:
        sys.path.insert(0, str(folder))


def test_input_shape_dtype():
    shapes = parse_input_shapes(["input_ids=1,32:int64", "x=1,3"])
    assert tuple(shapes["input_ids"]) == (1, 32) and shapes["input_ids"].dtype == "int64"
    assert shapes["x"].dtype is None
    with pytest.raises(ConfigError, match="unknown element type 'int65'"):
        parse_input_shapes(["ids=1,32:int65"])


def test_token_model_compiles_and_verifies_with_ids_in_range(src, tmp_path):
    _, mod = src
    torch.manual_seed(0)
    torch.save(mod.Tokens().eval(), tmp_path / "tok.pt")
    out = tmp_path / "out"
    assert main(["compile", str(tmp_path / "tok.pt"), "-t", "host", "--input-shape",
                 "ids=1,6:int64", "-o", str(out)]) == 0
    manifest = json.loads((out / "edgec.json").read_text())
    assert manifest["inputs"][0]["dtype"] == "int64" and manifest["inputs"][0]["high"] == 30
    assert main(["verify", str(out)]) == 0


def test_float_dtype_contradicting_an_onnx_input_is_an_error(src, tmp_path, capsys):
    _, mod = src
    export_onnx(mod.Net().eval(), tmp_path / "n.onnx", _x())
    rc = main(["compile", str(tmp_path / "n.onnx"), "-t", "host", "--input-shape",
               "input=1,16:int64", "-o", str(tmp_path / "o")])
    assert rc != 0 and "says int64, the model's input is float32" in capsys.readouterr().err


def _gather_model(table_rows: int, through: list[str]) -> onnx.ModelProto:
    nodes, name = [], "ids"
    for i, op in enumerate(through):
        attrs = {"to": TensorProto.INT64} if op == "Cast" else {}
        extra = ["shape"] if op == "Reshape" else []
        nodes.append(helper.make_node(op, [name] + extra, [f"t{i}"], **attrs))
        name = f"t{i}"
    nodes.append(helper.make_node("Gather", ["table", name], ["y"]))
    inits = [numpy_helper.from_array(np.zeros((table_rows, 4), np.float32), "table"),
             numpy_helper.from_array(np.array([1, 6], np.int64), "shape")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT32,
                                                                     [1, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("rows,through", [(100, []), (7, ["Cast"]), (1000, ["Cast", "Reshape"])])
def test_index_bound_follows_the_ids_to_the_gather(rows, through):
    model = _gather_model(rows, through)
    assert index_bound(model, "ids") == rows
    spec = input_specs(model)[0]
    assert spec.high == rows
    many = TensorSpec(spec.name, (1, 4000), spec.dtype, spec.high)  # enough draws to span it
    values = random_inputs([many], seed=0)[0]
    assert values.min() == 0 and values.max() == rows - 1


def test_integer_input_without_gather_keeps_the_small_range():
    g = helper.make_graph([helper.make_node("Cast", ["n"], ["y"], to=TensorProto.FLOAT)], "g",
                          [helper.make_tensor_value_info("n", TensorProto.INT64, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    spec = input_specs(helper.make_model(g))[0]
    assert spec.high is None and random_inputs([spec])[0].max() < 8


def test_copied_transformer_layers_export_and_quantize(tmp_path):
    """nn.TransformerEncoder deep-copies its layer: the exporter shares the equal weights."""
    from toolchain.compress import PruneChannels, Quantize, compress, load_data

    torch.manual_seed(0)
    enc = nn.Sequential(nn.TransformerEncoder(nn.TransformerEncoderLayer(
        8, 2, 16, dropout=0.0, batch_first=True), 2), nn.Flatten(), nn.Linear(4 * 8, 3)).eval()
    x = np.random.default_rng(0).standard_normal((30, 4, 8)).astype(np.float32)
    res = export_onnx(enc, tmp_path / "f.onnx", x[:8])
    assert res.max_abs_error <= res.tolerance
    np.savez(tmp_path / "d.npz", x=x)
    small, _ = compress(enc, [Quantize("int8")], load_data(str(tmp_path / "d.npz")))
    q = export_onnx(small, tmp_path / "q.onnx", x[:8])  # checked exact against PyTorch
    assert q.quantized and q.max_abs_error <= q.tolerance
    # structured pruning of the encoder goes through torch-pruning (fx sees it as one leaf)
    small, report = compress(enc, [PruneChannels(0.5, epochs=0), Quantize("int8")],
                             load_data(str(tmp_path / "d.npz")))
    assert report.steps[0].after.params < 0.9 * report.initial.params
    q = export_onnx(small, tmp_path / "pq.onnx", x[:8])
    assert q.quantized and q.max_abs_error <= q.tolerance
