"""A model of your own for examples/own_model_build/edgec.toml: a small classifier of 16
sensor features into 4 classes (the build loads it as net.py:SensorNet with its weights)."""

import torch
from torch import nn


class SensorNet(nn.Module):
    def __init__(self, features: int = 16, hidden: int = 32, classes: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
