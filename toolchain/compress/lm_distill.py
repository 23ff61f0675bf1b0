"""LMDistill: train a language model on a larger teacher's next-byte distributions.

Before: a student LM (usually the trained zoo ``lm``) and a teacher with the same vocabulary
(the zoo's ``lm-teacher``). After: the student trained for ``steps`` on the training text
with ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy`` on every
position (Hinton et al., 2015), the logits' KL being the word-level distillation of
Kim & Rush (2016) applied per byte. Pruning masks, if any, are re-applied after each update.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from toolchain.compress.lm_prune import apply_masks
from toolchain.compress.lm_task import finetune
from toolchain.errors import ConfigError


@dataclass(frozen=True)
class LMDistill:
    name: ClassVar[str] = "distill"
    teacher: nn.Module = field(default=None, compare=False, repr=False)
    teacher_name: str = "teacher"
    temperature: float = 1.0
    alpha: float = 0.5
    steps: int = 300
    lr: float | None = None

    def __post_init__(self):
        if self.teacher is None:
            raise ConfigError("distill needs a teacher model")
        if self.temperature <= 0 or not 0.0 < self.alpha <= 1.0:
            raise ConfigError("distill needs temperature > 0 and alpha in (0, 1]")
        if self.steps < 1:
            raise ConfigError("distill needs steps >= 1")

    def to_json(self) -> dict:
        return {"step": self.name, "teacher": self.teacher_name, "temperature": self.temperature,
                "alpha": self.alpha, "steps": self.steps}

    def apply(self, model: nn.Module, task) -> nn.Module:
        probe = task.calibration(1)[:, :8]
        with torch.no_grad():
            t_out, s_out = self.teacher.eval()(probe), model.eval()(probe)
        if t_out.shape != s_out.shape:
            raise ConfigError(f"distill: teacher '{self.teacher_name}' gives logits "
                              f"{tuple(t_out.shape)}, the student {tuple(s_out.shape)}")
        finetune(model, task, self.steps, teacher=self.teacher, temperature=self.temperature,
                 alpha=self.alpha, lr=self.lr, seed=17, after_step=lambda: apply_masks(model))
        return model.eval()
