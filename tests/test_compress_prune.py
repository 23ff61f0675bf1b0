"""Prune (unstructured) and PruneChannels (structured): sparsity, masks, shapes and MACs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from toolchain import models
from toolchain.compress import Context, Prune, PruneChannels, compress, weight_sparsity
from toolchain.compress.channels import find_groups
from toolchain.compress.metrics import model_stats
from toolchain.errors import ConfigError, UnsupportedOpError
from toolchain.models.train import MASK, Recipe, fit


def ctx_for(name, **kw):
    return replace(Context.for_zoo(name), **kw)


def layer_sparsities(model):
    return {n: float((m.weight == 0).float().mean()) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9])
def test_layer_scope_hits_the_target_in_every_layer(sparsity):
    small, report = compress(models.trained("mlp16"), [Prune(sparsity, rounds=2, epochs=1)],
                             ctx_for("mlp16"))
    for name, s in layer_sparsities(small).items():
        assert abs(s - sparsity) < 0.01, name
    assert report.final.nonzeros < report.initial.nonzeros * (1 - sparsity) + 400
    assert report.final.params == report.initial.params


def test_global_scope_hits_the_target_overall_but_not_per_layer():
    small, _ = compress(models.trained("cnn"), [Prune(0.8, scope="global", rounds=1, epochs=0)],
                        ctx_for("cnn"))
    assert abs(weight_sparsity(small) - 0.8) < 0.001
    per_layer = layer_sparsities(small).values()
    assert max(per_layer) - min(per_layer) > 0.05


def test_masks_survive_fine_tuning():
    ctx = ctx_for("mlp16")
    small, _ = compress(models.trained("mlp16"), [Prune(0.6, rounds=1, epochs=0)], ctx)
    zeros_before = {n: (m.weight == 0) for n, m in small.named_modules() if hasattr(m, MASK)}
    fit(small, ctx.X_train, ctx.y_train, Recipe(epochs=2, lr=1e-2))
    for n, m in small.named_modules():
        if n in zeros_before:
            assert bool((m.weight[zeros_before[n]] == 0).all()), n


def test_fine_tuning_recovers_accuracy():
    # short schedule here; the full one (bar: drop <= 1.0 with int8) is in bench_compression.py
    _, tuned = compress(models.trained("cnn"), [Prune(0.75, rounds=2, epochs=4)], ctx_for("cnn"))
    _, raw = compress(models.trained("cnn"), [Prune(0.75, rounds=1, epochs=0)], ctx_for("cnn"))
    assert tuned.final.accuracy > raw.final.accuracy
    assert tuned.initial.accuracy - tuned.final.accuracy <= 2.5
    assert tuned.final.macs_nonzero < 0.3 * tuned.initial.macs


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_sparsity_outside_range_is_a_config_error(bad):
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        Prune(bad)


@pytest.mark.parametrize("name,fraction", [("cnn", 0.5), ("dscnn", 0.5), ("mlp", 0.25)])
def test_channel_pruning_shrinks_layers_and_macs(name, fraction):
    base = models.trained(name)
    ctx = ctx_for(name)
    small, report = compress(base, [PruneChannels(fraction, epochs=0)], ctx)
    # every producer in a group lost `fraction` of its channels; output shape unchanged
    groups, _ = find_groups(base, ctx.X_train)
    assert groups
    for g in groups:
        m = small.get_submodule(g.producer)
        kept = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        assert kept == round(g.channels * (1 - fraction))
    x = torch.tensor(ctx.X_test[:4])
    assert small(x).shape == base(x).shape
    expected_max = (1 - fraction) if name != "mlp" else 0.9
    assert report.final.macs <= expected_max * report.initial.macs


def test_cnn_half_channels_gives_a_quarter_of_the_macs():
    ctx = ctx_for("cnn")
    _, report = compress(models.trained("cnn"), [PruneChannels(0.5, epochs=0)], ctx)
    # conv1 halves (1 input channel), every other layer loses half its inputs and outputs
    assert report.final.macs == 8 * 64 * 9 + 16 * 8 * 64 * 9 + 32 * 16 * 16 * 9 + 32 * 10


def test_removing_dead_neurons_changes_nothing():
    """Neurons with zero weights and bias contribute nothing: pruning exactly those is exact."""
    model = models.trained("mlp")
    first = model.layers[0]
    with torch.no_grad():
        first.weight[::2] = 0
        first.bias[::2] = 0
        model.layers[2].weight[::2] = 0  # dead neurons also in the second layer
        model.layers[2].bias[::2] = 0
    ctx = ctx_for("mlp")
    small, _ = compress(model, [PruneChannels(0.5, epochs=0)], ctx)
    assert small.layers[0].out_features == 64 and small.layers[2].in_features == 64
    x = torch.tensor(ctx.X_test)
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-5)


def test_transformer_prunes_only_the_ffn():
    ctx = ctx_for("transformer")
    groups, skipped = find_groups(models.trained("transformer"), ctx.X_train)
    assert [g.producer for g in groups] == ["blocks.0.ff1"]
    assert any("add" in s for s in skipped)


def test_nothing_to_prune_is_one_clear_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    ctx = ctx_for("cnn")
    with pytest.raises(UnsupportedOpError, match="no layer can lose channels"):
        PruneChannels(0.5).apply(model, ctx)


def test_stats_count_zeros_and_bytes():
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0, 2], [0, 0, 0, 0], [3, 0, 0, 0]]))
    s = model_stats(model, np.zeros((1, 4), np.float32))
    assert (s.params, s.nonzeros, s.macs, s.bytes) == (12, 3, 12, 48)
    assert s.macs_nonzero == 3
