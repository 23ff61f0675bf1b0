"""Keyword spotters: a recurrent classifier over a short sequence of feature frames.

A real keyword spotter reads ~50 frames of ~10 MFCCs; the zoo has no audio, so it reads the
8x8 digits as a sequence instead: the 8 image rows are 8 time steps of 8 features (layout
``tokens``, input (N, 8, 8), batch first). The recurrent layers (``nn.LSTM`` or ``nn.GRU``)
export as ONNX ``LSTM`` / ``GRU`` nodes, which ``toolchain.passes.unroll_recurrent`` unrolls for
the CPU targets; the classifier reads the last step's output, as a streaming spotter would.
"""

from __future__ import annotations

import torch
from torch import nn


class KeywordSpotter(nn.Module):
    """``cell`` ("lstm" or "gru") layers of ``hidden`` units over (N, steps, features), then a
    linear classifier on the last step's output."""

    def __init__(self, cell: str = "lstm", features: int = 8, hidden: int = 32, layers: int = 1,
                 classes: int = 10):
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(features, hidden, num_layers=layers, batch_first=True)
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.classifier(y[:, -1])
