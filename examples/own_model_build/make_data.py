"""Write data.npz (x: 320 x 16 float32 sensor features, y: class 0-3, and 80 held-out samples
as x_test, y_test) and weights.pt (a SensorNet trained on x for a second) next to this file:

    python examples/own_model_build/make_data.py [--seed 0] [--out FOLDER]

Four noisy clusters: a stand-in for features you would record yourself. Both files are
committed (about 30 KB), so the example builds as it is; rerun this to change them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from net import SensorNet

SAMPLES, FEATURES, CLASSES = 400, 16, 4


def make(out: Path, seed: int = 0, epochs: int = 30) -> None:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 0.6, (CLASSES, FEATURES))
    y = rng.integers(0, CLASSES, SAMPLES)
    x = (centers[y] + rng.normal(0, 1.2, (SAMPLES, FEATURES))).astype(np.float32)
    y = y.astype(np.int64)
    train = SAMPLES - SAMPLES // 5  # the rest is held out: the metric before and after
    np.savez_compressed(out / "data.npz", x=x[:train], y=y[:train], x_test=x[train:],
                        y_test=y[train:])
    torch.manual_seed(seed)
    net = SensorNet(FEATURES, 32, CLASSES)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    xt, yt = torch.from_numpy(x[:train]), torch.from_numpy(y[:train])
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    torch.save(net.state_dict(), out / "weights.pt")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    a = p.parse_args()
    make(a.out, a.seed)
    print(f"wrote {a.out / 'data.npz'} and {a.out / 'weights.pt'}")
