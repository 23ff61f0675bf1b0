"""The model zoo: names, data layouts and split, seeded builds, deterministic cached training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toolchain import models
from toolchain.errors import ConfigError
from toolchain.models.train import accuracy

SHAPES = {"mlp": (64,), "cnn": (1, 8, 8), "cnn_small": (1, 8, 8), "dscnn": (1, 8, 8),
          "mlp16": (16,), "transformer": (8, 8)}
CLASSES = {"mlp16": 5}


def test_names_cover_the_contract():
    assert {"mlp", "cnn", "dscnn", "mlp16", "transformer"} <= set(models.names())


@pytest.mark.parametrize("name", list(SHAPES))
def test_dataset_layout_and_split(name):
    X_tr, y_tr, X_te, y_te = models.dataset(name)
    assert X_tr.dtype == np.float32 and y_tr.dtype == np.int64
    assert X_tr.shape[1:] == SHAPES[name] == X_te.shape[1:]
    n = len(X_tr) + len(X_te)
    assert n == (1797 if name != "mlp16" else int((models.data._digits()[1] < 5).sum()))
    assert len(X_te) == int(np.ceil(0.25 * n))
    assert 0.0 <= X_tr.min() and X_tr.max() <= 1.0 and X_tr.max() > 0.9
    assert set(np.unique(y_te)) == set(range(CLASSES.get(name, 10)))


def test_same_split_as_sklearn_for_flat_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    _, X_te, _, y_te = train_test_split(d.data / 16.0, d.target, test_size=0.25, random_state=0,
                                        stratify=d.target)
    got = models.dataset("mlp")
    np.testing.assert_allclose(got[2], X_te, rtol=1e-6)
    np.testing.assert_array_equal(got[3], y_te)
    # the image layout is the same pixels
    np.testing.assert_array_equal(models.dataset("cnn")[2].reshape(-1, 64), got[2])


def test_mlp16_features_are_pooled_pixels():
    X, y = models.data._digits()
    keep = y < 5
    pooled = X[keep].reshape(-1, 8, 8)[:, :2, :2].mean(axis=(1, 2))
    X16 = models.data.load("pool16")
    all16 = np.concatenate([X16[0], X16[2]])[:, 0]
    assert np.allclose(np.sort(all16), np.sort(pooled), atol=1e-6)


@pytest.mark.parametrize("name", list(SHAPES))
def test_build_is_seeded_and_runs(name):
    a, b = models.build(name), models.build(name)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    x = torch.tensor(models.dataset(name)[2][:3])
    assert a(x).shape == (3, CLASSES.get(name, 10))


def test_student_has_under_a_quarter_of_the_teacher():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(models.build("cnn_small")) * 4 <= count(models.build("cnn"))


def test_unknown_name_lists_the_zoo():
    with pytest.raises(ConfigError, match="known: mlp, cnn"):
        models.build("resnet")


def test_trained_is_deterministic_and_cached(tmp_path):
    first = models.trained("mlp16", tmp_path)
    files = list(tmp_path.glob("mlp16-*.pt"))
    assert len(files) == 1
    again = models.trained("mlp16", tmp_path)  # from the cache
    retrained = models.trained("mlp16", tmp_path / "other")  # trained anew
    for k, v in first.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
        assert torch.equal(v, retrained.state_dict()[k])
    X_tr, y_tr, X_te, y_te = models.dataset("mlp16")
    assert accuracy(first, X_te, y_te) > 90.0


def test_cache_env_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEC_CACHE", str(tmp_path))
    assert models.cache_folder() == tmp_path / "zoo"
    assert models.cache_folder(tmp_path / "x") == tmp_path / "x"


@pytest.mark.parametrize("name,floor", [("mlp", 96.0), ("cnn", 98.0), ("dscnn", 98.0),
                                        ("transformer", 95.0)])
def test_trained_zoo_accuracy(name, floor):
    _, _, X_te, y_te = models.dataset(name)
    assert accuracy(models.trained(name), X_te, y_te) >= floor
