"""What the language-model compression steps share: the text, the metric, fine-tuning, stats.

An ``LMTask`` holds the training and held-out text (bytes), the function that scores a model
in held-out bits per byte, and the settings of the short fine-tunes that follow pruning,
low-rank factorization and distillation. Any ``nn.Module`` that maps int64 ids ``[B, S]`` to
logits ``[B, S, 256]`` (its ``forward(ids)``) and keeps its weights in ``nn.Linear`` layers
can be compressed; the zoo's ``lm`` is one (``LMTask.for_zoo``).

``measure`` gives the figures every step reports before and after: bits per byte, parameters,
non-zero parameters and weight bytes as deployed (quantized Linear weights at their bit width
plus their float32 scales, everything else float32).

``run_steps`` applies the steps in order and returns the model and a JSON-ready report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def default_bpb(model: nn.Module, data: bytes, seq_len: int = 128, batch: int = 16) -> float:
    """Held-out bits per byte: mean next-byte cross entropy over non-overlapping windows."""
    ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    n = (len(ids) - 1) // seq_len
    if n < 1:
        raise ValueError("held-out text is shorter than one window")
    x = ids[:n * seq_len].view(n, seq_len)
    y = ids[1:n * seq_len + 1].view(n, seq_len)
    was = model.training
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, batch):
            logits = model(x[i:i + batch])
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                     y[i:i + batch].reshape(-1), reduction="sum").item()
    model.train(was)
    return total / (n * seq_len) / float(np.log(2.0))


@dataclass(frozen=True)
class LMTask:
    """Text and settings for compressing a byte-level language model.

    ``bpb(model, heldout) -> float`` scores a model; ``seq_len`` is the window used for
    calibration and fine-tuning (at most the model's context).
    """

    train: bytes
    heldout: bytes
    bpb: Callable[[nn.Module, bytes], float] = field(default=default_bpb, compare=False)
    seq_len: int = 128
    batch: int = 16
    lr: float = 1e-3
    seed: int = 0

    @classmethod
    def for_zoo(cls, **overrides) -> "LMTask":
        """The zoo corpus (pydoc_data.topics split by topic) and its metric."""
        from toolchain.models import lm, text

        return cls(train=text.train_bytes(), heldout=text.held_out_bytes(),
                   bpb=lm.bits_per_byte, **overrides)

    def windows(self, count: int, seed: int) -> torch.Tensor:
        """``count`` random training windows of ``seq_len + 1`` bytes, seeded."""
        gen = torch.Generator().manual_seed(seed)
        top = len(self.train) - self.seq_len - 1
        if top <= 0:
            raise ValueError("training text is shorter than one window")
        starts = torch.randint(0, top, (count,), generator=gen)
        buf = torch.frombuffer(bytearray(self.train), dtype=torch.uint8).long()
        return torch.stack([buf[s:s + self.seq_len + 1] for s in starts.tolist()])

    def calibration(self, count: int = 32, seed: int = 1234) -> torch.Tensor:
        """Input ids for calibration (GPTQ Hessians): ``[count, seq_len]``."""
        return self.windows(count, seed)[:, :-1]


def finetune(model: nn.Module, task: LMTask, steps: int, *, teacher: nn.Module | None = None,
             temperature: float = 1.0, alpha: float = 1.0, lr: float | None = None,
             seed: int = 0, after_step: Callable[[], None] | None = None) -> list[float]:
    """Train ``model`` in place for ``steps`` AdamW steps on training windows; returns losses.

    With a teacher the loss is ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE``
    on every position's next-byte distribution. ``after_step`` runs after each update (e.g. to
    re-apply a pruning mask). The learning rate decays linearly to zero.
    """
    torch.set_num_threads(1)  # deterministic sums, as the zoo's training
    params = [p for p in model.parameters() if p.requires_grad]
    if steps <= 0 or not params:
        return []
    opt = torch.optim.AdamW(params, lr=lr or task.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / steps)
    data = task.windows(steps * task.batch, seed=task.seed + 7919 * (seed + 1))
    if teacher is not None:
        teacher.eval()
    model.train()
    losses = []
    for i in range(steps):
        xy = data[i * task.batch:(i + 1) * task.batch]
        x, y = xy[:, :-1], xy[:, 1:]
        logits = model(x)
        flat = logits.reshape(-1, logits.shape[-1])
        loss = F.cross_entropy(flat, y.reshape(-1)) if alpha < 1.0 or teacher is None else 0.0
        if teacher is not None:
            with torch.no_grad():
                soft = F.softmax(teacher(x).reshape(flat.shape) / temperature, dim=-1)
            kd = F.kl_div(F.log_softmax(flat / temperature, dim=-1), soft,
                          reduction="batchmean") * temperature ** 2
            loss = alpha * kd + (1.0 - alpha) * loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if after_step is not None:
            after_step()
        losses.append(loss.item())
    model.eval()
    return losses


@dataclass(frozen=True)
class LMStats:
    bpb: float
    params: int
    nonzeros: int
    weight_bytes: int

    def to_json(self) -> dict:
        return {"bpb": round(self.bpb, 5), "params": self.params, "nonzeros": self.nonzeros,
                "weight_bytes": self.weight_bytes}


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters as deployed: a quantized Linear's weight at its bit width plus
    float32 scales (see lm_quant.QuantizedLinear.storage_bytes), anything else float32."""
    total = 0.0
    seen: set[int] = set()
    for m in model.modules():
        own = getattr(m, "storage_bytes", None)
        for pname, p in m.named_parameters(recurse=False):
            if id(p) in seen:  # tied weights are stored once
                continue
            seen.add(id(p))
            total += own() if (own is not None and pname == "weight") else p.numel() * 4
    return int(np.ceil(total))


def measure(model: nn.Module, task: LMTask) -> LMStats:
    params = {id(p): p for p in model.parameters()}.values()
    return LMStats(bpb=float(task.bpb(model, task.heldout)),
                   params=sum(p.numel() for p in params),
                   nonzeros=sum(int((p.detach() != 0).sum()) for p in params),
                   weight_bytes=weight_bytes(model))


@dataclass
class LMReport:
    model: str
    initial: LMStats
    steps: list[dict] = field(default_factory=list)

    @property
    def final(self) -> LMStats:
        return self.steps[-1]["_after"] if self.steps else self.initial

    def to_json(self) -> dict:
        return {"model": self.model, "initial": self.initial.to_json(),
                "steps": [{k: v for k, v in s.items() if not k.startswith("_")}
                          for s in self.steps],
                "final": self.final.to_json()}


def run_steps(model: nn.Module, steps: Sequence, task: LMTask, name: str = "model",
              initial: LMStats | None = None) -> tuple[nn.Module, LMReport]:
    """Apply each step (``apply(model, task) -> model``), measuring before and after."""
    report = LMReport(name, initial or measure(model, task))
    before = report.initial
    for step in steps:
        t0 = time.time()
        model = step.apply(model, task)
        after = measure(model, task)
        delta = (after.bpb - before.bpb) / before.bpb * 100.0
        report.steps.append({**step.to_json(), "before": before.to_json(),
                             "after": after.to_json(), "bpb_change_percent": round(delta, 3),
                             "seconds": round(time.time() - t0, 2), "_after": after})
        log.info("%s: bpb %.4f -> %.4f (%+.2f%%), weight bytes %d -> %d", step.name, before.bpb,
                 after.bpb, delta, before.weight_bytes, after.weight_bytes)
        before = after
    return model, report
