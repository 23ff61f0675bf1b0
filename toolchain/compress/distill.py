"""Distill: train the model (the student) on a teacher's soft targets.

Before: a student model (usually untrained: ``edgec compress cnn_small --distill cnn`` starts
from the zoo's untrained ``cnn_small``) and a trained teacher with the same input and output
shapes. After: the student trained with loss ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T))
+ (1 - alpha) * cross_entropy`` for ``epochs`` (Hinton et al., 2015), with the same optimizer
and schedule as the zoo recipe, so it can be compared with the student trained on labels only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from toolchain.errors import ConfigError
from toolchain.compress.finetune import finetune, labels_needed
from toolchain.models.train import Distillation, Recipe


@dataclass(frozen=True)
class Distill:
    name: ClassVar[str] = "distill"
    teacher: nn.Module = field(default=None, compare=False, repr=False)
    teacher_name: str = "teacher"
    temperature: float = 4.0
    alpha: float = 0.7
    epochs: int | None = None  # None: the zoo recipe's epochs (ctx.epochs)

    def __post_init__(self):
        if self.teacher is None:
            raise ConfigError("distill needs a teacher model")
        if self.temperature <= 0 or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError("distill needs temperature > 0 and alpha in [0, 1]")

    def to_json(self) -> dict:
        return {"step": self.name, "teacher": self.teacher_name, "temperature": self.temperature,
                "alpha": self.alpha, "epochs": self.epochs}

    def labels_needed(self, ctx) -> None:
        if self.alpha < 1.0:
            labels_needed(ctx, self.name, f"the label loss (alpha {self.alpha} < 1; --alpha 1 "
                                          "trains on the teacher's outputs only)")

    def apply(self, model: nn.Module, ctx) -> nn.Module:
        x = torch.tensor(np.asarray(ctx.X_train[:2]))
        self.teacher.eval()
        model.eval()
        try:
            with torch.no_grad():
                t_out, s_out = self.teacher(x), model(x)
        except RuntimeError as exc:
            raise ConfigError(f"distill: teacher '{self.teacher_name}' does not take this "
                              f"model's input: {str(exc).splitlines()[0]}") from None
        if t_out.shape != s_out.shape:
            raise ConfigError(f"distill: teacher '{self.teacher_name}' outputs "
                              f"{tuple(t_out.shape[1:])}, the student {tuple(s_out.shape[1:])}")
        recipe = Recipe(epochs=self.epochs if self.epochs is not None else ctx.epochs,
                        lr=ctx.lr, batch=ctx.batch, seed=ctx.seed)
        return finetune(model, ctx, recipe,
                        Distillation(self.teacher, self.temperature, self.alpha))
