"""Float export of every zoo model, the metadata contract, and atomic writes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from toolchain import models
from toolchain.compress import (METADATA_KEY, Context, Quantize, compress, export_onnx,
                                metadata_of, onnx_accuracy)
from toolchain.compress.export import _deployable
from toolchain.errors import ConfigError, ModelError, VerificationError
from toolchain.models.train import Recipe, fit
from toolchain.reference import run_reference


@pytest.mark.parametrize("name", ["mlp", "cnn", "dscnn", "mlp16", "transformer"])
def test_float_export_matches_pytorch(name, tmp_path):
    model = models.trained(name)
    _, _, X_te, y_te = models.dataset(name)
    path = tmp_path / f"{name}.onnx"
    res = export_onnx(model, path, X_te[:64], batch=None)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version <= 10
    assert not res.quantized and res.max_abs_error <= 1e-5 * 100
    got = run_reference(path, [X_te])[0]
    with torch.no_grad():
        ref = model(torch.tensor(X_te)).numpy()
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, float(ref.max() - ref.min()))
    assert abs(onnx_accuracy(path, X_te, y_te) - (ref.argmax(1) == y_te).mean() * 100) < 1e-9
    assert not any(n.op_type in ("QuantizeLinear", "BatchNormalization") for n in proto.graph.node)


def test_metadata_names_every_layer_and_its_initializer(tmp_path):
    model = models.trained("transformer")
    path = tmp_path / "t.onnx"
    export_onnx(model, path, models.dataset("transformer")[2][:8], steps=[{"step": "x"}])
    proto = onnx.load(str(path))
    keys = [p.key for p in proto.metadata_props]
    assert keys.count(METADATA_KEY) == 1
    meta = metadata_of(proto)
    assert meta["steps"] == [{"step": "x"}] and meta["quantization"] == {"mode": "float"}
    expected = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert set(meta["layers"]) == expected
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    for name, layer in meta["layers"].items():
        w = model.get_submodule(name).weight.detach().numpy()
        stored = inits[layer["onnx_weight"]]
        assert np.array_equal(stored, w) or np.array_equal(stored, w.T), name
        assert layer["weight_bits"] is None and layer["sparsity"] == 0.0
        assert set(layer) == {"op", "onnx_node", "onnx_op", "onnx_weight", "weight_axis",
                              "weight_bits", "weight_scale_pow2", "weight_frac_bits", "sparsity",
                              "act_bits", "act_signed", "act_scale", "act_zero_point",
                              "act_frac_bits"}
    json.dumps(meta)  # plain JSON


def test_batchnorm_is_folded_into_the_exported_conv():
    model = models.trained("cnn")
    dep, layers, out = _deployable(model)
    assert out is None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in dep.modules())
    x = torch.tensor(models.dataset("cnn")[2][:16])
    torch.testing.assert_close(dep(x), model(x), rtol=1e-5, atol=1e-5)


class _Mismatch(nn.Module):
    """Behaves differently when traced than when run: the export check must notice."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return self.fc(x)
        return self.fc(x) + 1.0


def test_a_mismatch_fails_and_writes_nothing(tmp_path):
    path = tmp_path / "bad.onnx"
    with pytest.raises(VerificationError, match="differs from PyTorch"):
        export_onnx(_Mismatch(), path, np.ones((3, 4), np.float32))
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_unexportable_model_is_a_model_error(tmp_path):
    class Bad(nn.Module):
        def forward(self, x):
            return torch.fft.fft(x).real

    with pytest.raises(ModelError):
        export_onnx(Bad(), tmp_path / "x.onnx", np.ones((2, 4), np.float32))


@pytest.mark.parametrize("batch", [1, 7])
def test_static_batch_by_default_for_the_compilers(batch, tmp_path):
    from toolchain.onnx_io import input_specs, load_model, output_specs

    model = models.trained("cnn")
    X_te = models.dataset("cnn")[2]
    path = tmp_path / "s.onnx"
    export_onnx(model, path, X_te[:20], **({} if batch == 1 else {"batch": batch}))
    proto = load_model(path)
    assert input_specs(proto)[0].shape == (batch, 1, 8, 8)
    assert output_specs(proto)[0].shape == (batch, 10)
    with torch.no_grad():
        ref = model(torch.tensor(X_te)).numpy()
    y = ref.argmax(1)  # labels = the model's own predictions: accuracy must be 100
    assert onnx_accuracy(path, X_te, y) == 100.0  # 450 rows in chunks of `batch`, padded


class _ConvBnAttrs(nn.Module):
    """conv and batchnorm as attributes used in forward (not in a Sequential)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


@pytest.mark.parametrize("quantize", [False, True])
def test_batchnorm_outside_a_sequential_is_folded(quantize, tmp_path):
    torch.manual_seed(0)
    model = _ConvBnAttrs()
    ctx = Context.for_zoo("cnn")
    fit(model, ctx.X_train, ctx.y_train, Recipe(epochs=1))  # non-trivial BN statistics
    steps = [Quantize("int8")] if quantize else []
    small, _ = compress(model, steps, ctx)
    res = export_onnx(small, tmp_path / "bn.onnx", ctx.X_test[:32])
    proto = onnx.load(str(tmp_path / "bn.onnx"))
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    assert set(metadata_of(proto)["layers"]) == {"conv", "fc"}
    assert res.max_abs_error <= res.tolerance


def test_steps_round_trip_through_json():
    from toolchain.compress import (Distill, LowRank, Prune, PruneChannels, step_from_json)

    teacher = nn.Linear(2, 2)
    steps = [Distill(teacher, "mlp16", 3.0, 0.5, 7), LowRank(energy=None, params_ratio=0.4),
             PruneChannels(0.3, epochs=2), Prune(0.6, scope="global", rounds=2),
             Quantize("fixed<6,2>", calibration="histogram", qat_epochs=1)]
    for step in steps:
        again = step_from_json(json.loads(json.dumps(step.to_json())), teacher=teacher)
        assert again == step and again.to_json() == step.to_json()
    with pytest.raises(ConfigError, match="unknown step 'squash'"):
        step_from_json({"step": "squash"})
    with pytest.raises(ConfigError, match="bad prune step"):
        step_from_json({"step": "prune", "amount": 0.5})
