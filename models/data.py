"""The zoo's data: scikit-learn's 8x8 digits (1797 images, shipped with the package, no download).

Every model sees the same split, ``train_test_split(X, y, test_size=0.25, random_state=0,
stratify=y)``, with pixels scaled from 0..16 to [0, 1]. Only the input layout differs:

- ``flat``:   (N, 64)       the image as a vector (``mlp``)
- ``image``:  (N, 1, 8, 8)  one channel (``cnn``, ``dscnn``, ``cnn_small``)
- ``tokens``: (N, 8, 8)     8 tokens, one per image row of 8 pixels (``transformer``)
- ``pool16``: (N, 16)       2x2 average pooling of the image (4x4 = 16 features), classes 0-4
  only (the 5 classes of the 16-64-32-32-5 FPGA benchmark MLP, ``mlp16``); the split is taken
  on that subset, stratified as above.

Other modules add layouts with ``register_layout(name, transform)``: ``transform(X, y)`` maps
the flat pixels (N, 64) and labels to the new layout before the same split (the MLPerf Tiny
models of ``toolchain.models.tiny`` read the digits resized to their reference input shapes).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np

LAYOUTS = ("flat", "image", "tokens", "pool16")
_EXTRA: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {}


def register_layout(name: str,
                    transform: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
                    ) -> None:
    """Add a layout: ``transform(X, y)`` of the flat pixels (N, 64) and their labels."""
    _EXTRA[name] = transform


@lru_cache(maxsize=None)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


@lru_cache(maxsize=None)
def load(layout: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, y_train, X_test, y_test) for one input layout; arrays are read-only."""
    from sklearn.model_selection import train_test_split

    if layout not in LAYOUTS and layout not in _EXTRA:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join((*LAYOUTS, *_EXTRA))}")
    X, y = _digits()
    if layout in _EXTRA:
        X, y = _EXTRA[layout](X, y)
    elif layout == "pool16":
        keep = y < 5
        X = X[keep].reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(-1, 16)
        y = y[keep]
    elif layout == "image":
        X = X.reshape(-1, 1, 8, 8)
    elif layout == "tokens":
        X = X.reshape(-1, 8, 8)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    out = tuple(np.ascontiguousarray(a) for a in (X_tr.astype(np.float32), y_tr.astype(np.int64),
                                                   X_te.astype(np.float32), y_te.astype(np.int64)))
    for a in out:
        a.setflags(write=False)
    return out  # type: ignore[return-value]
