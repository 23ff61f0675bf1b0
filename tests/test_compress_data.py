"""edgec compress with the user's own data and metric: .npz, a folder of .npy, module:function;
no labels = calibration and pruning only; one-line errors for bad data."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from toolchain.cli import main
from toolchain.compress import load_data, metadata_of, onnx_outputs
from toolchain.errors import ConfigError


def _mlp(n_in=16, n_out=5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n_in, 24), nn.ReLU(), nn.Linear(24, n_out)).eval()


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    return x, x[:, :5].argmax(axis=1)


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A user's model file and data in all three forms, in their own folder."""
    monkeypatch.chdir(tmp_path)
    model = _mlp()
    torch.save(model, tmp_path / "net.pt")
    x, y = _data()
    np.savez(tmp_path / "labelled.npz", x=x, y=y)
    (tmp_path / "unlabelled").mkdir()
    np.save(tmp_path / "unlabelled" / "x.npy", x)
    (tmp_path / "mydata.py").write_text(textwrap.dedent("""
        import numpy as np, torch
        def _xy():
            rng = np.random.default_rng(0)
            x = rng.standard_normal((120, 16)).astype(np.float32)
            return torch.tensor(x), torch.tensor(x[:, :5].argmax(axis=1))
        def dataset():
            return torch.utils.data.TensorDataset(*_xy())
        def loader():
            return torch.utils.data.DataLoader(dataset(), batch_size=32)
        def unlabelled():
            return torch.utils.data.TensorDataset(_xy()[0])
        def spread(outputs, labels):
            return float(outputs.std())
        def not_data():
            return 42
    """))
    return tmp_path, model


def _report(path):
    return json.loads(path.with_suffix(".json").read_text())


def test_labelled_npz_prunes_without_retraining_a_model_file(user):
    folder, model = user
    out = folder / "p.onnx"
    assert main(["compress", "net.pt", "--data", "labelled.npz", "--prune", "0.5",
                 "--quantize", "int8", "-o", str(out)]) == 0
    r = _report(out)
    prune = r["steps"][0]
    assert prune["config"]["epochs"] == 0  # a model file is fine-tuned only with --epochs
    assert prune["before"]["metric"] == "top1" and r["export"]["metric"] == "top1"
    assert r["export"]["data"] == "labelled.npz" and r["export"]["labels"] is True
    assert prune["after"]["nonzeros"] < 0.55 * prune["before"]["nonzeros"]
    # every weight pruning kept is the user's own: nothing was retrained
    meta = metadata_of(onnx.load(str(out)))["layers"]
    assert meta["0"]["sparsity"] >= 0.5
    ctx = load_data("labelled.npz")  # the same seeded evaluation split
    ort = onnx_outputs(out, ctx.X_test)
    assert r["export"]["onnx_score"] == pytest.approx(
        float((ort.argmax(1) == ctx.y_test).mean() * 100), abs=1e-3)


def test_pruned_weights_are_the_originals(user):
    from toolchain.compress import Prune, compress

    folder, model = user
    ctx = load_data(str(folder / "unlabelled"))
    small, _ = compress(model, [Prune(0.5, epochs=0)], ctx)
    w0, w1 = model[0].weight.detach(), small[0].weight.detach()
    kept = w1 != 0
    assert 0.45 < float(kept.float().mean()) < 0.55
    assert torch.equal(w0[kept], w1[kept])


def test_unlabelled_folder_calibrates_and_scores_agreement(user):
    folder, _ = user
    out = folder / "q.onnx"
    assert main(["compress", "net.pt", "--data", "unlabelled", "--quantize", "int8",
                 "--prune", "0.3", "-o", str(out)]) == 0
    r = _report(out)
    assert r["export"]["metric"] == "agree" and r["export"]["labels"] is False
    assert r["initial"]["score"] == 100.0 and r["initial"]["accuracy"] is None
    assert 50.0 <= r["final"]["score"] <= 100.0
    assert r["export"]["quantized"] is True


@pytest.mark.parametrize("extra,message", [
    (["--prune", "0.5", "--epochs", "2"], "prune: fine-tuning (2 epochs per round) needs labels"),
    (["--quantize", "int8", "--qat-epochs", "1"], "quantization-aware training (1 epochs) needs "
                                                  "labels"),
    (["--prune-channels", "0.5", "--epochs", "1"], "prune-channels: fine-tuning (1 epochs) needs"),
    (["--distill", "net.pt"], "distill: the label loss (alpha 0.7 < 1"),
    (["--metric", "top1"], "--metric top1 needs labels"),
    (["--metric", "f1"], "unknown metric 'f1'"),
])
def test_steps_that_need_labels_say_so(user, extra, message, capsys):
    folder, _ = user
    rc = main(["compress", "net.pt", "--data", "unlabelled", *extra, "-o", str(folder / "x.onnx")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and message in err
    assert not (folder / "x.onnx").exists()


def test_distill_without_labels_at_alpha_one(user):
    folder, _ = user
    out = folder / "d.onnx"
    assert main(["compress", "net.pt", "--data", "unlabelled", "--distill", "net.pt",
                 "--alpha", "1", "-o", str(out)]) == 0
    assert _report(out)["steps"][0]["step"] == "distill"


@pytest.mark.parametrize("ref", ["mydata:dataset", "mydata:loader", "mydata.py:dataset"])
def test_module_function_data_equals_the_arrays(user, ref):
    folder, _ = user
    ctx = load_data(ref, module_paths=[folder])
    ref_ctx = load_data(str(folder / "labelled.npz"))
    for a, b in ((ctx.X_train, ref_ctx.X_train), (ctx.y_train, ref_ctx.y_train),
                 (ctx.X_test, ref_ctx.X_test), (ctx.y_test, ref_ctx.y_test)):
        np.testing.assert_array_equal(a, b)
    assert len(ctx.X_test) == 24 and len(ctx.X_train) == 96


def test_own_metric_scores_the_onnx_file(user):
    folder, _ = user
    out = folder / "m.onnx"
    assert main(["compress", "net.pt", "--data", "mydata:unlabelled", "--module-path",
                 str(folder), "--metric", "mydata:spread", "--quantize", "int8",
                 "-o", str(out)]) == 0
    r = _report(out)
    ctx = load_data("mydata:unlabelled", module_paths=[folder])
    assert r["export"]["onnx_score"] == pytest.approx(float(onnx_outputs(out, ctx.X_test).std()),
                                                      rel=1e-6)
    assert r["initial"]["metric"] == "mydata:spread"


def test_float_targets_train_with_mse_when_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(_mlp(n_out=3), tmp_path / "reg.pt")
    x, _ = _data(200)
    np.savez(tmp_path / "reg.npz", x=x, y=(x[:, :3] * 2.0).astype(np.float32))
    out = tmp_path / "r.onnx"
    assert main(["compress", "reg.pt", "--data", "reg.npz", "--prune", "0.5", "--epochs", "20",
                 "-o", str(out)]) == 0
    prune = _report(out)["steps"][0]
    assert prune["before"]["metric"] == "mse"
    assert prune["after"]["score"] < 0.6 * prune["before"]["score"]  # it learned the targets


@pytest.mark.parametrize("make,message", [
    (lambda d: np.savez(d / "a.npz", inputs=np.zeros((4, 16), np.float32)), "has no array 'x'"),
    (lambda d: np.savez(d / "a.npz", x=np.zeros((12, 7), np.float32)),
     "the model cannot run on the data's input of shape (7,)"),
    (lambda d: np.savez(d / "a.npz", x=np.zeros((12, 16), np.float32), y=np.zeros(5, np.int64)),
     "x has 12 samples but y has 5"),
    (lambda d: np.savez(d / "a.npz", x=np.zeros(12, np.float32)), "inputs need a batch dimension"),
    (lambda d: np.savez(d / "a.npz", x=np.zeros((12, 16), np.float32), y=np.full(12, 9)),
     "logits of shape (batch, 10)"),
    (lambda d: np.savez(d / "a.npz", x=np.full((12, 16), np.nan, np.float32)), "NaN"),
    (lambda d: (d / "a.npz").write_bytes(b"nope"), "cannot read"),
    (lambda d: (d / "a.npz").mkdir() or np.save(d / "a.npz" / "y.npy", np.zeros(3)),
     "has no x.npy (found: y.npy)"),
])
def test_bad_data_is_one_line(user, make, message, capsys):
    folder, _ = user
    make(folder)
    rc = main(["compress", "net.pt", "--data", "a.npz", "--quantize", "int8",
               "-o", str(folder / "x.onnx")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("ref,message", [
    ("nowhere", "unknown data 'nowhere'"),
    ("missing.npz", "data file not found"),
    ("mydata:not_data", "returned a int; it must return a torch.utils.data.Dataset"),
    ("mydata:ghost", "mydata has no 'ghost'"),
    ("nomodule:f", "cannot import nomodule"),
])
def test_bad_data_reference(user, ref, message):
    folder, _ = user
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_data(ref, module_paths=[folder])


def test_a_model_file_needs_data(user, capsys):
    assert main(["compress", "net.pt", "--quantize", "int8", "-o", "x.onnx"]) != 0
    assert "give its data with --data" in capsys.readouterr().err


class _Sensor(nn.Module):
    """Conv1d, a residual add and a transposed conv: edgec's own quantizer refuses them."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv1d(3, 8, 5, padding=2), nn.BatchNorm1d(8)
        self.c2 = nn.Conv1d(8, 8, 3, padding=1)
        self.up, self.fc = nn.ConvTranspose1d(8, 4, 2, stride=2), nn.Linear(4, 3)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x)))
        y = torch.relu(self.c2(y)) + y
        return self.fc(torch.relu(self.up(y)).mean(2))


@pytest.fixture
def sensor(tmp_path):
    torch.manual_seed(0)
    torch.save(_Sensor().eval(), tmp_path / "sensor.pt")
    x = np.random.default_rng(0).standard_normal((60, 3, 32)).astype(np.float32)
    np.savez(tmp_path / "sensor.npz", x=x)
    return tmp_path


def _compress_sensor(folder, *extra):
    out = folder / "s.onnx"
    assert main(["compress", str(folder / "sensor.pt"), "--module-path", str(folder.parent),
                 "--data", str(folder / "sensor.npz"), "--prune", "0.5", "--quantize", "int8",
                 *extra, "-o", str(out)]) == 0
    return out


def test_torchao_quantizes_what_edgecs_quantizer_refuses(sensor, monkeypatch):
    monkeypatch.setitem(sys.modules, __name__, sys.modules[__name__])
    out = _compress_sensor(sensor)
    r = _report(out)
    quant = r["steps"][1]
    assert quant["after"]["bytes"] < 0.35 * quant["before"]["bytes"]  # int8 weights
    assert r["export"]["quantized"] and r["export"]["max_abs_error"] <= r["export"]["tolerance"]
    proto = onnx.load(str(out))
    producer = {o: n for n in proto.graph.node for o in n.output}
    inits = {t.name: t for t in proto.graph.initializer}
    layers = metadata_of(proto)["layers"]
    for op in ("Conv", "ConvTranspose", "Gemm"):
        nodes = [n for n in proto.graph.node if n.op_type == op]
        assert nodes
        for n in nodes:
            dq = producer[n.input[1]]
            assert dq.op_type == "DequantizeLinear"
            assert inits[dq.input[0]].data_type == onnx.TensorProto.INT8
            assert producer[n.input[0]].op_type == "DequantizeLinear"  # quantized activation
            entry = next(e for e in layers.values() if e["onnx_node"] == n.name)
            assert entry["weight_bits"] == 8 and entry["act_bits"] == 8
            assert entry["weight_axis"] == (1 if op == "ConvTranspose" else 0)
    # the pruned zeros survive torchao's conversion
    assert min(e["sparsity"] for e in layers.values()) >= 0.45


def test_edgec_quantizer_still_refuses_when_asked(sensor, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, __name__, sys.modules[__name__])
    rc = main(["compress", str(sensor / "sensor.pt"), "--data", str(sensor / "sensor.npz"),
               "--quantize", "int8", "--quantizer", "edgec", "-o", str(sensor / "x.onnx")])
    assert rc != 0 and "unsupported op 'Conv1d' in node 'c1'" in capsys.readouterr().err


@pytest.mark.slow
def test_torchao_quantized_sensor_net_compiles_and_verifies(sensor, monkeypatch):
    monkeypatch.setitem(sys.modules, __name__, sys.modules[__name__])
    out = _compress_sensor(sensor)
    for target in ("host", "arm-a72"):
        folder = sensor / target
        assert main(["compile", str(out), "-t", target, "-o", str(folder)]) == 0
        assert main(["verify", str(folder)]) == 0


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.b1, self.bn = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = torch.relu(y + self.dw(torch.relu(self.bn(self.b1(y)))))  # residual + depthwise
        return self.fc(y.mean((2, 3)))


def test_structured_pruning_goes_through_residual_adds(tmp_path):
    """The fx remover must leave stem and dw alone (they feed the Add): torch-pruning's
    dependency graph shrinks both sides of the residual together."""
    from toolchain.compress import PruneChannels, Quantize, compress, export_onnx
    from toolchain.compress.channels import find_groups

    torch.manual_seed(0)
    model = _Residual().eval()
    x = np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    ctx = load_data(str(tmp_path / "d.npz"))
    assert find_groups(model, x)[1]  # the fx remover skips the residual producers
    small, report = compress(model, [PruneChannels(0.5, epochs=0), Quantize("int8")], ctx)
    assert small.stem.out_channels == small.dw.out_channels == small.fc.in_features == 8
    assert small.b1.out_channels == 8  # (its batchnorm, also 8, is folded by quantize)
    assert small.fc.out_features == 5  # the output layer keeps its outputs
    assert report.steps[0].after.params < 0.35 * report.initial.params
    res = export_onnx(small, tmp_path / "r.onnx", ctx.X_test)
    assert res.quantized and res.max_abs_error <= res.tolerance
    with pytest.raises(Exception, match="no layer can lose channels"):
        compress(model, [PruneChannels(0.5, epochs=0, engine="fx")], ctx)


def test_conv1d_net_loses_channels_and_quantizes(sensor, monkeypatch):
    monkeypatch.setitem(sys.modules, __name__, sys.modules[__name__])
    out = sensor / "pc.onnx"
    assert main(["compress", str(sensor / "sensor.pt"), "--data", str(sensor / "sensor.npz"),
                 "--prune-channels", "0.5", "--quantize", "int8", "-o", str(out)]) == 0
    r = _report(out)
    assert r["steps"][0]["after"]["params"] < 0.4 * r["initial"]["params"]
    assert r["export"]["quantized"] and r["export"]["max_abs_error"] <= r["export"]["tolerance"]


def test_torchao_int4_counts_four_bits_per_weight():
    """torchao's int4 codes sit in int8 buffers; the size report counts them as 4-bit codes,
    so int4 reports about half the int8 bytes (it counted 8 bits before)."""
    from toolchain import models
    from toolchain.compress import Context, Quantize, compress

    ctx = Context.for_zoo("cnn")
    sizes = {}
    for mode in ("int8", "int4"):
        _, report = compress(models.trained("cnn"), [Quantize(mode, quantizer="torchao")], ctx)
        sizes[mode] = report.final.bytes
    assert 0.45 < sizes["int4"] / sizes["int8"] < 0.6, sizes
