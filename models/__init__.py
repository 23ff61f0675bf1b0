"""The reference model zoo: small real models trained deterministically on scikit-learn's digits,
and two byte-level language models trained on Python's documentation text.

API (other parts of edgec rely on it)::

    names(kind=None) -> list[str]               # kind: None (all), "classifier" or "lm"
    build(name) -> nn.Module                    # untrained, seeded initial weights
    trained(name, cache_dir=None) -> nn.Module  # trained (or loaded from the cache), eval mode
    dataset(name) -> (X_train, y_train, X_test, y_test)   # classifiers only: float32 / int64
    spec(name) -> ZooModel                      # layout, recipe, kind and a one-line summary

Models (input shapes without the batch dimension; data layouts are documented in
``toolchain.models.data``):

- ``mlp``         64 -> 128 -> 64 -> 10                        input (64,)
- ``cnn``         3 conv-bn-relu blocks (16, 32, 64 ch) + linear input (1, 8, 8)
- ``cnn_small``   the same shape with 8, 16, 24 channels: a student with under a quarter of
  ``cnn``'s parameters, for knowledge distillation   input (1, 8, 8)
- ``dscnn``       stem conv + 2 depthwise-separable blocks      input (1, 8, 8)
- ``mlp16``       16 -> 64 -> 32 -> 32 -> 5, the FPGA benchmark MLP shape, on 2x2-average-pooled
  digits (4x4 = 16 features) of classes 0-4                   input (16,)
- ``transformer`` 1 pre-norm encoder block (dim 32, 2 heads, ffn 64) over 8 tokens (image rows
  of 8 pixels), mean pool, linear                               input (8, 8)
- MLPerf Tiny's reference architectures (``toolchain.models.tiny``, on the digits resized to
  their input shapes): ``kws_dscnn`` input (1, 49, 10), trained; ``vww_mobilenet`` (3, 96, 96),
  ``resnet8`` (3, 32, 32) and ``ad_autoencoder`` (640,), seeded weights
- ``kws``         keyword-spotting LSTM (2 layers, 32 units) over 8 time steps of 8 features
  (the image rows), linear on the last step (``toolchain.models.kws``)   input (8, 8)

Language models (``kind == "lm"``, layout ``text``; ``toolchain.models.lm``): byte-level
decoder-only transformers with a KV-cache forward, trained by their own recipe
(``lm.train_lm``) on ``toolchain.models.text`` (``pydoc_data.topics``, split by topic).
``dataset()`` refuses them (their data is ``text.train_bytes()`` / ``text.held_out_bytes()``,
their metric ``lm.bits_per_byte``); their ``input_shape`` is (context,).

- ``lm``          4 layers, dim 128, 4 heads, MLP 512, context 128: 0.88M parameters;
  700 steps of 16 x 128 bytes (about 4 minutes on one idle core)
- ``lm-teacher``  5 layers, dim 192, 6 heads, MLP 768, context 128: 2.35M parameters, for
  distillation into ``lm``; 1500 steps at lr 2e-3 (15 minutes on one core of a lightly
  loaded machine; 300 or 600 steps at lr 2e-3 / 3e-3 gave a teacher worse than ``lm``)

Trained weights are cached as ``<cache>/<name>-<key>.pt`` (state dicts only, loaded with
``weights_only=True``); the cache folder is ``cache_dir``, else ``$EDGEC_CACHE/zoo``, else
``~/.cache/edgec/zoo``. The key hashes the architecture and the recipe, so a changed recipe
never loads stale weights. Training is deterministic (one thread, fixed seeds): a cached model
equals a freshly trained one.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
from torch import nn

from toolchain.errors import ConfigError
from toolchain.models import data as _data
from toolchain.models import tiny
from toolchain.models import kws, lm, nets, text
from toolchain.models.train import Recipe, accuracy, fit

log = logging.getLogger(__name__)

CACHE_ENV = "EDGEC_CACHE"
TEXT = "text"  # the layout of the language models: bytes of toolchain.models.text


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry: how to build it, which data layout it reads, and how it is trained.

    ``train`` is the entry's own trainer ``train(model, recipe)`` (the language models); None
    means ``models.train.fit`` on the digits layout."""

    name: str
    summary: str
    layout: str
    make: Callable[[], nn.Module]
    recipe: Union[Recipe, lm.LMRecipe]
    train: Callable[[nn.Module, lm.LMRecipe], None] | None = None

    @property
    def kind(self) -> str:
        return "lm" if self.layout == TEXT else "classifier"

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.kind == "lm":
            return (self.make().config.context,)
        return tuple(_data.load(self.layout)[0].shape[1:])


_ZOO: dict[str, ZooModel] = {}


def _add(name: str, summary: str, layout: str, make: Callable[[], nn.Module],
         recipe: Recipe | lm.LMRecipe, train=None) -> None:
    _ZOO[name] = ZooModel(name, summary, layout, make, recipe, train)


def _train_lm(model: nn.Module, recipe: lm.LMRecipe) -> None:
    lm.train_lm(model, recipe, text.train_bytes())


_add("mlp", "MLP 64-128-64-10 on flattened digits", "flat",
     lambda: nets.MLP((64, 128, 64, 10)), Recipe(epochs=40, lr=3e-3))
_add("cnn", "CNN, 3 conv-bn-relu blocks (16/32/64 ch), 8x8x1 digits", "image",
     lambda: nets.CNN((16, 32, 64)), Recipe(epochs=30, lr=5e-3))
_add("cnn_small", "student CNN (8/16/24 ch, < 1/4 of cnn's parameters)", "image",
     lambda: nets.CNN((8, 16, 24)), Recipe(epochs=30, lr=5e-3))
_add("dscnn", "depthwise-separable CNN (stem 16, blocks 32/64), 8x8x1 digits", "image",
     lambda: nets.DSCNN(16, (32, 64)), Recipe(epochs=30, lr=5e-3))
_add("mlp16", "FPGA benchmark MLP 16-64-32-32-5 on 4x4-pooled digits 0-4", "pool16",
     lambda: nets.MLP((16, 64, 32, 32, 5)), Recipe(epochs=60, lr=3e-3))
_add("transformer", "tiny transformer encoder, 8 tokens of 8 pixels", "tokens",
     lambda: nets.TinyTransformer(), Recipe(epochs=40, lr=3e-3))
tiny.register(_add)
_add("kws", "keyword-spotting LSTM (2x32), 8 steps of 8 features (image rows)", "tokens",
     lambda: kws.KeywordSpotter("lstm", layers=2), Recipe(epochs=30, lr=5e-3))

LM = lm.LMConfig(layers=4, dim=128, heads=4, hidden=512, context=128)
LM_TEACHER = lm.LMConfig(layers=5, dim=192, heads=6, hidden=768, context=128)
_add("lm", "byte-level transformer LM, 4 layers, dim 128, context 128", TEXT,
     lambda: lm.ByteLM(LM), lm.LMRecipe(steps=700, batch=16, lr=3e-3), _train_lm)
_add("lm-teacher", "larger byte-level LM (5 layers, dim 192), teacher for lm", TEXT,
     lambda: lm.ByteLM(LM_TEACHER), lm.LMRecipe(steps=1500, batch=16, lr=2e-3, warmup=100),
     _train_lm)


def names(kind: str | None = None) -> list[str]:
    """Zoo names; ``kind`` "classifier" (the digits models) or "lm" keeps only that kind."""
    return [n for n, s in _ZOO.items() if kind is None or s.kind == kind]


def spec(name: str) -> ZooModel:
    try:
        return _ZOO[name]
    except KeyError:
        raise ConfigError(f"unknown zoo model '{name}'; known: {', '.join(_ZOO)}") from None


def build(name: str) -> nn.Module:
    """The untrained model, with initial weights seeded by its recipe's seed."""
    s = spec(name)
    torch.manual_seed(s.recipe.seed)
    return s.make().eval()


def dataset(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, y_train, X_test, y_test) shaped as the model's input, batch first."""
    s = spec(name)
    if s.kind == "lm":
        raise ConfigError(f"zoo model '{name}' is a language model: it has no digits data set "
                          "(its text is toolchain.models.text, its metric bits per byte)")
    return _data.load(s.layout)


def cache_folder(cache_dir: Path | str | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) / "zoo" if env else Path.home() / ".cache" / "edgec" / "zoo"


def cache_key(name: str) -> str:
    s = spec(name)
    key = f"v1|{name}|{s.layout}|{s.recipe}|{build(name)}"
    if s.kind == "lm":  # the corpus differs between Python versions
        key += f"|{text.corpus_hash()}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def trained(name: str, cache_dir: Path | str | None = None) -> nn.Module:
    """The trained model in eval mode: loaded from the cache, or trained and then cached."""
    s = spec(name)
    path = cache_folder(cache_dir) / f"{name}-{cache_key(name)}.pt"
    model = build(name)
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval()
        except Exception as exc:  # a corrupt cache entry is retrained, not fatal
            log.warning("ignoring unreadable cached weights %s: %s", path, exc)
    if s.train is not None:
        log.info("training zoo model %s (%s)", name, s.recipe)
        s.train(model, s.recipe)
    else:
        X_tr, y_tr, X_te, y_te = dataset(name)
        log.info("training zoo model %s (%d epochs)", name, s.recipe.epochs)
        fit(model, X_tr, y_tr, s.recipe)
        log.info("%s: test accuracy %.2f%%", name, accuracy(model, X_te, y_te))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.partial")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return model.eval()
