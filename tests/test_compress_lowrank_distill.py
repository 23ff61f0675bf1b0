"""LowRank (SVD) and Distill (knowledge distillation)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from toolchain import models
from toolchain.compress import Context, Distill, LowRank, compress
from toolchain.compress.lowrank import rank_for
from toolchain.errors import ConfigError, UnsupportedOpError
from toolchain.models.train import Recipe, fit


@pytest.mark.parametrize("energy,rank", [(0.5, 1), (0.8, 2), (0.95, 3), (1.0, 4)])
def test_rank_for_energy(energy, rank):
    s = torch.tensor([4.0, 2.0, 1.0, 0.5])  # energies 16, 4, 1, 0.25 of 21.25
    assert rank_for(s, energy) == rank


def test_exact_low_rank_layer_is_reproduced():
    torch.manual_seed(0)
    layer = nn.Linear(64, 48)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(48, 5) @ torch.randn(5, 64))  # rank 5
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(48, 10))
    ctx = Context.for_zoo("mlp")
    small, report = compress(model, [LowRank(energy=0.9999, epochs=0)], ctx)
    assert isinstance(small[0], nn.Sequential) and small[0][0].out_features == 5
    x = torch.tensor(ctx.X_test)
    torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-4)
    assert report.final.params == 64 * 5 + 5 * 48 + 48 + 48 * 10 + 10


def test_half_params_of_the_mlp():
    ctx = Context.for_zoo("mlp")
    _, report = compress(models.trained("mlp"), [LowRank(energy=None, params_ratio=0.5,
                                                         epochs=3)], ctx)
    assert report.final.params <= 0.5 * report.initial.params
    assert report.final.params >= 0.4 * report.initial.params  # the largest energy that fits
    assert report.initial.accuracy - report.final.accuracy <= 1.5
    assert report.final.macs < 0.55 * report.initial.macs


def test_pointwise_convs_are_factorized_too():
    ctx = Context.for_zoo("dscnn")
    small, _ = compress(models.trained("dscnn"), [LowRank(energy=0.6, epochs=0)], ctx)
    factored = [n for n, m in small.named_modules()
                if isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[0], nn.Conv2d)]
    assert factored


@pytest.mark.parametrize("kw", [{"energy": 0.0}, {"energy": 1.5}, {"energy": None},
                                {"energy": 0.9, "params_ratio": 0.5}])
def test_bad_lowrank_options(kw):
    with pytest.raises(ConfigError):
        LowRank(**kw)


def test_no_factorizable_layer():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())
    with pytest.raises(UnsupportedOpError, match="no Linear or 1x1 Conv2d"):
        LowRank(0.9).apply(model, Context.for_zoo("cnn"))


def test_distillation_follows_the_teacher():
    """A student distilled with alpha=1 learns only from the teacher's soft targets: it agrees
    with the teacher more than a student trained on labels, and is still accurate."""
    ctx = replace(Context.for_zoo("mlp16"), epochs=40)
    teacher = models.trained("mlp16")
    student = lambda: nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))  # noqa: E731
    torch.manual_seed(0)
    kd, report = compress(student(), [Distill(teacher, "mlp16", temperature=4.0, alpha=1.0)],
                          ctx)
    torch.manual_seed(0)
    plain = fit(student(), ctx.X_train, ctx.y_train, Recipe(epochs=40, lr=ctx.lr))
    x = torch.tensor(ctx.X_test)
    with torch.no_grad():
        t = torch.softmax(teacher(x) / 4, -1)
        kl = lambda m: torch.nn.functional.kl_div(  # noqa: E731
            torch.log_softmax(m(x) / 4, -1), t, reduction="batchmean").item()
        assert kl(kd) < kl(plain)
    assert report.final.accuracy >= 90.0
    assert report.steps[0].config["teacher"] == "mlp16"


def test_distill_rejects_a_teacher_of_another_shape():
    teacher = models.trained("mlp")  # 64 inputs, mlp16 data has 16
    with pytest.raises(ConfigError, match="does not take"):
        Distill(teacher, "mlp").apply(models.build("mlp16"), Context.for_zoo("mlp16"))
    with pytest.raises(ConfigError, match="outputs"):
        Distill(models.trained("mlp16"), "mlp16").apply(nn.Linear(16, 3),
                                                        Context.for_zoo("mlp16"))
