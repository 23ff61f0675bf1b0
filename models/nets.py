"""The zoo's architectures: small, plain PyTorch modules built from Conv2d / Linear / BatchNorm.

They avoid fused or opaque modules (``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``)
so that every weight is an ordinary Conv2d or Linear that the compression steps can prune,
factorize and quantize, and that torch.fx can trace for structured pruning.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(c_in: int, c_out: int, k: int = 3, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU()]


class MLP(nn.Module):
    """Fully connected layers with ReLU between them: ``sizes[0] -> ... -> sizes[-1]``."""

    def __init__(self, sizes: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class CNN(nn.Module):
    """conv-bn-relu x2, maxpool, conv-bn-relu, global average pool, linear. Input (N, 1, 8, 8)."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), classes: int = 10):
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(*conv_bn_relu(1, a), *conv_bn_relu(a, b), nn.MaxPool2d(2),
                                      *conv_bn_relu(b, c), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(c, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class DSCNN(nn.Module):
    """A stem conv, then depthwise-separable blocks (depthwise 3x3 + pointwise 1x1, each with
    batchnorm and ReLU), global average pool and a linear classifier. Input (N, 1, 8, 8)."""

    def __init__(self, stem: int = 16, widths: tuple[int, ...] = (32, 64), classes: int = 10):
        super().__init__()
        layers = conv_bn_relu(1, stem)
        c = stem
        for i, w in enumerate(widths):
            layers += conv_bn_relu(c, c, 3, groups=c) + conv_bn_relu(c, w, 1)
            if i == 0:
                layers.append(nn.MaxPool2d(2))
            c = w
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class SelfAttention(nn.Module):
    """Multi-head self-attention written with plain Linear layers (q, k, v, out)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads

        def split(z):
            return z.reshape(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // h), dim=-1)
        return self.out((att @ v).transpose(1, 2).reshape(b, t, d))

    def macs(self, inputs, output) -> int:
        """MACs of the two attention matmuls per sample (the Linears count themselves)."""
        _, t, d = inputs[0].shape
        return 2 * t * t * d


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block: x + attn(ln(x)), then x + ffn(ln(x))."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, hidden)
        self.ff2 = nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ff2(F.relu(self.ff1(self.norm2(x))))


class TinyTransformer(nn.Module):
    """Digits rows as 8 tokens of 8 pixels: embed, learned positions, encoder blocks, mean pool,
    linear classifier. Input (N, 8, 8)."""

    def __init__(self, tokens: int = 8, features: int = 8, dim: int = 32, heads: int = 2,
                 hidden: int = 64, depth: int = 1, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.blocks(self.embed(x) + self.pos)
        return self.classifier(self.norm(h).mean(dim=1))
