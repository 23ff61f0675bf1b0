"""edgec compress with the user's own data and metric: .npz, a folder of .npy, module:function;
no labels = calibration and pruning only; one-line errors for bad data."""

from __future__ import annotations

import json
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
