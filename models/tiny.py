"""MLPerf Tiny's four reference architectures (inference v1.x), as plain PyTorch modules.

Their data sets (Speech Commands, Visual Wake Words, CIFAR-10, ToyADMOS/MIMII) cannot be
downloaded here. Each model keeps its reference input shape and reads scikit-learn's 8x8
digits resized to that shape (bilinear; three equal channels for the image models), with the
zoo's usual split (``toolchain.models.data``):

- ``kws_dscnn``  keyword spotting DS-CNN (the "small" DS-CNN of ARM's ML-KWS-for-MCU): conv
  64 10x4 stride 2 ("same" padding), 4 depthwise-separable blocks of 64, average pool, linear.
  Input (1, 49, 10), the reference's 49 frames x 10 MFCCs. Trained on the digits (10 classes
  where the reference has 12 keywords): 2 epochs, 87% test accuracy (27 s on this machine).
- ``vww_mobilenet`` visual wake words MobileNetV1 at width 0.25: 3x3 stem of 8 channels
  stride 2, 13 depthwise-separable blocks (16 ... 256 channels), average pool, linear to 2
  classes. Input (3, 96, 96), the reference's. Seeded weights, not trained (a pass over the
  digits at 96x96 takes longer than this zoo's training budget); its 2 classes are the parity
  of the digit.
- ``resnet8``     image classification ResNet-8 (CIFAR-10 reference): conv 16, three residual
  stacks (16, 32 stride 2, 64 stride 2; 1x1 shortcut convs where the shape changes), average
  pool, linear. Input (3, 32, 32), 10 classes as CIFAR-10. Seeded weights, not trained: two
  epochs on the digits at 32x32 (over a minute here) reached only 18-32% accuracy.
- ``ad_autoencoder`` anomaly detection autoencoder: dense 640 -> 128 x4 -> 8 -> 128 x4 -> 640
  with batchnorm and ReLU after every layer but the last. Input (640,), the reference's 5
  frames x 128 mel bins (the digits resized to 5x128). Seeded weights, not trained (the zoo's
  trainer fits classifiers; its reconstruction output has no labels to train on).

Batchnorm everywhere folds into the convs/dense layers on export, as on the reference MCUs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolchain.models import data as _data
from toolchain.models.train import Recipe


def _bn_relu(c: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(c), nn.ReLU()]


def _separable(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    """Depthwise 3x3 + pointwise 1x1, each with batchnorm and ReLU."""
    return [nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), *_bn_relu(c_in),
            nn.Conv2d(c_in, c_out, 1, bias=False), *_bn_relu(c_out)]


class KwsDSCNN(nn.Module):
    """DS-CNN for keyword spotting. Input (N, 1, 49, 10)."""

    def __init__(self, width: int = 64, blocks: int = 4, classes: int = 10):
        super().__init__()
        # 49x10 -> 25x5 as TensorFlow's "same" padding gives, which pads 4 rows above and 5
        # below; a conv pads symmetrically, so 5 and 5 (the last row is never read). A
        # separate ZeroPad2d would export as a computed Pad that static shapes cannot follow.
        layers: list[nn.Module] = [nn.Conv2d(1, width, (10, 4), 2, (5, 1), bias=False),
                                   *_bn_relu(width)]
        for _ in range(blocks):
            layers += _separable(width, width)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(width, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


# MobileNetV1's (pointwise channels, stride) per depthwise-separable block, at width 1.0.
_MOBILENET_V1 = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
                 (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class MobileNetV1(nn.Module):
    """MobileNetV1 at a width multiplier ``alpha``. Input (N, 3, H, W)."""

    def __init__(self, alpha: float = 0.25, classes: int = 2):
        super().__init__()
        c = int(32 * alpha)
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, 2, 1, bias=False), *_bn_relu(c)]
        for channels, stride in _MOBILENET_V1:
            layers += _separable(c, int(channels * alpha), stride)
            c = int(channels * alpha)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(c, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class _ResidualStack(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                                  *_bn_relu(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c_out))
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out
                         else nn.Conv2d(c_in, c_out, 1, stride))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class ResNet8(nn.Module):
    """MLPerf Tiny's ResNet-8. Input (N, 3, 32, 32)."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), classes: int = 10):
        super().__init__()
        a, b, c = widths
        self.stem = nn.Sequential(nn.Conv2d(3, a, 3, 1, 1, bias=False), *_bn_relu(a))
        self.stacks = nn.Sequential(_ResidualStack(a, a, 1), _ResidualStack(a, b, 2),
                                    _ResidualStack(b, c, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.stacks(self.stem(x))), 1))


class AnomalyAutoencoder(nn.Module):
    """Dense autoencoder 640 -> 128 x4 -> 8 -> 128 x4 -> 640. Input (N, 640)."""

    def __init__(self, inputs: int = 640, hidden: int = 128, code: int = 8):
        super().__init__()
        sizes = (inputs, hidden, hidden, hidden, hidden, code, hidden, hidden, hidden, hidden)
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        self.layers = nn.Sequential(*layers, nn.Linear(hidden, inputs))

    def forward(self, x):
        return self.layers(x)


def _resized(size: tuple[int, int], channels: int = 1, flat: bool = False):
    """A data layout: the 8x8 digits resized (bilinear) to ``size``, ``channels`` copies."""

    def transform(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        img = torch.tensor(np.asarray(X)).reshape(-1, 1, 8, 8)
        out = F.interpolate(img, size=size, mode="bilinear", align_corners=False)
        out = out.expand(-1, channels, -1, -1)
        return (out.reshape(len(out), -1) if flat else out).numpy().copy(), y

    return transform


def _parity(transform):
    def two_classes(X, y):
        X, y = transform(X, y)
        return X, y % 2

    return two_classes


LAYOUTS = {
    "kws49x10": _resized((49, 10)),
    "vww96": _parity(_resized((96, 96), channels=3)),
    "ic32": _resized((32, 32), channels=3),
    "ad640": _resized((5, 128), flat=True),
}


def register(add: Callable[..., None]) -> None:
    """Add the layouts to ``toolchain.models.data`` and the four models to the zoo with
    ``add(name, summary, layout, make, recipe)``. ``epochs=0``: seeded weights only."""
    for name, transform in LAYOUTS.items():
        _data.register_layout(name, transform)
    add("kws_dscnn", "MLPerf Tiny keyword spotting DS-CNN (64 ch, 4 blocks), digits at 49x10",
        "kws49x10", lambda: KwsDSCNN(), Recipe(epochs=2, lr=1e-2, batch=64))
    add("vww_mobilenet", "MLPerf Tiny visual wake words MobileNetV1 0.25x, 96x96x3, seeded "
        "weights", "vww96", lambda: MobileNetV1(0.25, classes=2), Recipe(epochs=0))
    add("resnet8", "MLPerf Tiny image classification ResNet-8, 32x32x3, seeded weights",
        "ic32", lambda: ResNet8(), Recipe(epochs=0))
    add("ad_autoencoder", "MLPerf Tiny anomaly detection autoencoder 640-128x4-8-128x4-640, "
        "seeded weights", "ad640", lambda: AnomalyAutoencoder(), Recipe(epochs=0))
