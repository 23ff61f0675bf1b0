"""A ``torch.export`` program (``.pt2``) as an ``nn.Module`` the compression steps can hold.

``ExportedProgram.module()`` refuses ``eval()`` / ``train()`` (the graph was captured in one
mode, so they have no meaning): the wrapper keeps the flag and leaves the program alone. A
program exported with a static batch size runs larger batches in chunks of that size.
The program is a graph of aten ops, not of ``nn.Linear`` / ``nn.Conv2d`` modules, so the
compression steps refuse it with one line; it exports and compiles as it is.
"""

from __future__ import annotations

import torch
from torch import nn


class ExportedProgramModule(nn.Module):
    def __init__(self, program: nn.Module, batch: int | None):
        super().__init__()
        self.program = program
        self.batch = batch

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, x):
        if self.batch is None or x.shape[0] == self.batch:
            return self.program(x)
        if x.shape[0] % self.batch:
            raise ValueError(f"the exported program takes batches of {self.batch} "
                             f"(exported with a static batch size), got {x.shape[0]}")
        return torch.cat([self.program(c) for c in torch.split(x, self.batch)])
