"""A byte-level decoder-only transformer language model, its KV-cache step, training and bpb.

Architecture (GPT-2 style, vocabulary 256 = the bytes, no tokenizer)::

    x = tok(input_ids) + pos(positions)            # token + learned position embeddings
    for each block:                                # pre-norm
        x = x + attn.o(attention(attn.q(n1(x)), attn.k(n1(x)), attn.v(n1(x))))
        x = x + mlp.proj(act(mlp.fc(n2(x))))
    logits = head(norm(x))                         # separate (untied) output head

Module names (every weight is a plain ``nn.Linear`` with bias, so compression sees each one):
``tok``, ``pos`` (``nn.Embedding``), ``blocks.<i>.norm1``, ``blocks.<i>.attn.{q,k,v,o}``,
``blocks.<i>.norm2``, ``blocks.<i>.mlp.{fc,proj}``, ``norm``, ``head``. Attention is written by
hand (no ``nn.MultiheadAttention``, no fused kernels): scores ``q @ k^T / sqrt(head_dim)``,
masked with ``-inf`` where a key comes after its query, softmax, ``@ v``.

Two ways to call the model:

- ``model(input_ids)`` with ``input_ids`` int64 [B, S], S <= context: logits [B, S, 256] with a
  causal mask (training, evaluation);
- ``model(input_ids, position, pasts)`` with ``input_ids`` [1, S], ``position`` int64 [1] (the
  index of the first of the S tokens) and ``pasts`` a list of one ``(key, value)`` pair per
  layer, each float32 [1, heads, context, head_dim]: returns ``(logits [1, S, 256], presents)``,
  ``presents`` shaped like ``pasts`` with the S new keys / values written at rows
  ``position .. position+S-1`` of axis 2 (``Tensor.scatter`` on axis 2, i.e. ONNX
  ``ScatterElements``), and query s attending to key rows ``0 .. position+s`` only. Rows after
  them may hold anything finite (zeros at the start: ``empty_cache``). This is the decode-graph
  contract of ``toolchain.compress.lm_export``.

``bits_per_byte(model, data)`` is the held-out metric: the mean negative log2-likelihood of each
byte given the bytes before it, the data cut into consecutive windows of ``context`` bytes (each
byte but the first scored once, with the context restarting at each window).
``perplexity = 2 ** bits_per_byte`` (per byte).

Training (``train_lm``) is deterministic: one CPU thread, seeded initial weights and a seeded
generator for the random windows; AdamW with warm-up and cosine decay, gradient clipping.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from toolchain import progress

log = logging.getLogger(__name__)

VOCAB = 256


@dataclass(frozen=True)
class LMConfig:
    """Shape of one language model. ``dim`` must be a multiple of ``heads``."""

    layers: int = 4
    dim: int = 128
    heads: int = 4
    hidden: int = 512          # MLP width
    context: int = 128         # maximum number of positions (T)
    norm: str = "layer"        # "layer" (LayerNorm) or "rms" (RMSNorm)
    act: str = "gelu"          # "gelu" or "silu"
    vocab: int = VOCAB

    def __post_init__(self):
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        if self.norm not in ("layer", "rms") or self.act not in ("gelu", "silu"):
            raise ValueError(f"norm must be layer|rms and act gelu|silu, got {self.norm}, "
                             f"{self.act}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


@dataclass(frozen=True)
class LMRecipe:
    """How a zoo language model is trained (``train_lm``)."""

    steps: int = 1500
    batch: int = 16            # windows of ``context`` + 1 bytes per step
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    clip: float = 1.0
    seed: int = 0
    threads: int = 1


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, written out: torch's ``nn.RMSNorm`` exports
    only at opset 23 (RMSNormalization), which the TorchScript exporter does not reach."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps) * self.weight


def _norm(cfg: LMConfig) -> nn.Module:
    return nn.LayerNorm(cfg.dim) if cfg.norm == "layer" else RMSNorm(cfg.dim)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention from four plain Linears, with an optional KV cache."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = nn.Linear(cfg.dim, cfg.dim)
        self.o = nn.Linear(cfg.dim, cfg.dim)

    def _split(self, z: torch.Tensor) -> torch.Tensor:
        b, s, _ = z.shape
        return z.reshape(b, s, self.heads, self.head_dim).transpose(1, 2)  # [B, h, S, hd]

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                rows: torch.Tensor | None = None):
        """``mask`` [S, keys] is True where a query may see a key. With ``cache`` (past key,
        value) the new keys / values are scattered into it at ``rows`` [1, 1, S, 1] and the
        queries attend over the whole cache; returns (output, (present key, present value))."""
        b, s, d = x.shape
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        present = None
        if cache is not None:
            index = rows.expand(b, self.heads, s, self.head_dim)
            k = cache[0].scatter(2, index, k)
            v = cache[1].scatter(2, index, v)
            present = (k, v)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        scores = torch.where(mask, scores, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        return self.o(out.transpose(1, 2).reshape(b, s, d)), present


class MLP(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.dim, cfg.hidden)
        self.act = nn.GELU() if cfg.act == "gelu" else nn.SiLU()
        self.proj = nn.Linear(cfg.hidden, cfg.dim)

    def forward(self, x):
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.norm1 = _norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = _norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, mask, cache=None, rows=None):
        a, present = self.attn(self.norm1(x), mask, cache, rows)
        x = x + a
        return x + self.mlp(self.norm2(x)), present


class ByteLM(nn.Module):
    """The byte-level decoder-only transformer; see the module docstring for both call forms."""

    def __init__(self, cfg: LMConfig = LMConfig()):
        super().__init__()
        self.config = cfg
        self.tok = nn.Embedding(cfg.vocab, cfg.dim)
        self.pos = nn.Embedding(cfg.context, cfg.dim)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        self.norm = _norm(cfg)
        self.head = nn.Linear(cfg.dim, cfg.vocab)
        self.register_buffer("key_positions", torch.arange(cfg.context), persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def empty_cache(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Zero past keys / values for position 0: one (key, value) per layer."""
        c = self.config
        shape = (1, c.heads, c.context, c.head_dim)
        return [(torch.zeros(shape), torch.zeros(shape)) for _ in range(c.layers)]

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor | None = None,
                pasts: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        s = input_ids.shape[1]
        if position is None:
            if s > self.config.context:
                raise ValueError(f"{s} tokens exceed the context of {self.config.context}")
            positions = self.key_positions[:s]
            mask = positions[None, :] <= positions[:, None]            # [S, S] causal
            x = self.tok(input_ids) + self.pos(positions)
            for block in self.blocks:
                x, _ = block(x, mask)
            return self.head(self.norm(x))
        if pasts is None or len(pasts) != self.config.layers:
            raise ValueError(f"the cached forward needs one (key, value) per layer "
                             f"({self.config.layers})")
        if not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
            p = int(position.reshape(-1)[0])
            if input_ids.shape[0] != 1 or p < 0 or p + s > self.config.context:
                raise ValueError(f"positions {p}..{p + s - 1} of batch {input_ids.shape[0]} "
                                 f"do not fit the context 0..{self.config.context - 1} of batch 1")
        positions = position.reshape(1) + torch.arange(s)                  # [S]
        mask = self.key_positions[None, :] <= positions[:, None]           # [S, T]
        rows = positions.reshape(1, 1, s, 1)
        x = self.tok(input_ids) + self.pos(positions)[None]
        presents = []
        for block, cache in zip(self.blocks, pasts):
            x, present = block(x, mask, cache, rows)
            presents.append(present)
        return self.head(self.norm(x)), presents


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- evaluation
def _windows(data: bytes, context: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Consecutive windows: inputs [N, context], targets [N, context], valid [N, context]."""
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    n = max(1, math.ceil((len(t) - 1) / context))
    pad = n * context + 1 - len(t)
    t = torch.cat([t, torch.zeros(pad, dtype=torch.long)])
    valid = torch.ones(n * context, dtype=torch.bool)
    if pad:
        valid[-pad:] = False
    x = t[:-1].reshape(n, context)
    y = t[1:].reshape(n, context)
    return x, y, valid.reshape(n, context)


@torch.no_grad()
def bits_per_byte(model: nn.Module, data: bytes, context: int | None = None,
                  batch: int = 16) -> float:
    """Mean -log2 p(byte | the bytes before it in its window) over ``data`` (see module doc)."""
    if len(data) < 2:
        raise ValueError("bits_per_byte needs at least 2 bytes")
    context = context or model.config.context
    was_training = model.training
    model.eval()
    x, y, valid = _windows(data, context)
    total = 0.0
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch])
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                              y[i:i + batch].reshape(-1), reduction="none")
        total += float(nll[valid[i:i + batch].reshape(-1)].double().sum())
    model.train(was_training)
    return total / int(valid.sum()) / math.log(2)


def perplexity(model: nn.Module, data: bytes, context: int | None = None) -> float:
    """Per-byte perplexity, ``2 ** bits_per_byte``."""
    return 2.0 ** bits_per_byte(model, data, context)


# ---------------------------------------------------------------- training
def _lr(step: int, r: LMRecipe) -> float:
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    frac = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def batches(data: bytes, context: int, batch: int, generator: torch.Generator):
    """Endless random (input, target) windows of ``context`` bytes from ``data``."""
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    offsets = torch.arange(context + 1)
    while True:
        starts = torch.randint(0, len(t) - context - 1, (batch,), generator=generator)
        w = t[starts[:, None] + offsets]
        yield w[:, :-1], w[:, 1:]


def train_lm(model: ByteLM, recipe: LMRecipe, data: bytes,
             teacher: nn.Module | None = None, temperature: float = 1.0,
             alpha: float = 0.0) -> ByteLM:
    """Train in place on ``data`` (next-byte cross-entropy); returns the model in eval mode.

    With a ``teacher``, the loss mixes in ``alpha`` times the KL divergence to its soft
    targets at ``temperature`` (distillation)."""
    torch.set_num_threads(recipe.threads)
    gen = torch.Generator().manual_seed(recipe.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=recipe.lr, betas=(0.9, 0.95))
    if teacher is not None:
        teacher.eval()
    model.train()
    start = time.monotonic()
    stream = batches(data, model.config.context, recipe.batch, gen)
    steps = progress.bar(range(recipe.steps), desc="training" if teacher is None else
                         "distilling", unit="step")
    for step in steps:
        for g in opt.param_groups:
            g["lr"] = _lr(step, recipe)
        x, y = next(stream)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        if teacher is not None and alpha > 0:
            with torch.no_grad():
                soft = F.softmax(teacher(x) / temperature, dim=-1)
            kd = F.kl_div(F.log_softmax(logits / temperature, dim=-1), soft,
                          reduction="batchmean") * temperature ** 2 / x.shape[1]
            loss = alpha * kd + (1 - alpha) * loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
        opt.step()
        if step % 25 == 0:
            progress.postfix(steps, loss=loss.item())
        if step % 250 == 0 or step == recipe.steps - 1:
            log.info("step %d/%d loss %.3f (%.0f s)", step, recipe.steps, loss.item(),
                     time.monotonic() - start)
    model.eval()
    return model
