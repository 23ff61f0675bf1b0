"""A tiny decode-graph language model that follows edgec's LM contract (random weights).

For the tests of the LM compile path: 2 layers, dim 32, 2 heads, context T=32, vocabulary 256.
``scatter`` picks how the new K/V rows are written into the cache: ``elements``
(ScatterElements on axis 2) or ``nd`` (ScatterND), the two forms an exporter may use.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn


class TinyLM(nn.Module):
    def __init__(self, layers: int = 2, dim: int = 32, heads: int = 2, context: int = 32,
                 vocab: int = 256, scatter: str = "elements"):
        super().__init__()
        self.layers, self.heads, self.context, self.scatter = layers, heads, context, scatter
        self.head_dim = dim // heads
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.ln1 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in range(layers))
        self.proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.ln2 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.fc1 = nn.ModuleList(nn.Linear(dim, 4 * dim) for _ in range(layers))
        self.fc2 = nn.ModuleList(nn.Linear(4 * dim, dim) for _ in range(layers))
        self.lnf = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def _write(self, cache, new, pos):
        h, s, d = new.shape[1], new.shape[2], new.shape[3]
        if self.scatter == "elements":
            idx = pos.view(1, 1, s, 1).expand(1, h, s, d)
            return cache.scatter(2, idx, new)
        # ScatterND: the indices name (batch, head, position) of each new row.
        b = torch.zeros(1, h, s, dtype=torch.int64)
        hh = torch.arange(h).view(1, h, 1).expand(1, h, s)
        pp = pos.view(1, 1, s).expand(1, h, s)
        return cache.index_put((b, hh, pp), new)

    def forward(self, input_ids, position, *past):
        s = input_ids.shape[1]
        pos = position + torch.arange(s)
        x = self.tok(input_ids) + self.pos(pos)[None]
        keep = torch.arange(self.context)[None, :] <= pos[:, None]  # [S, T]
        presents = []
        for i in range(self.layers):
            h = self.ln1[i](x)
            q, k, v = self.qkv[i](h).split(x.shape[-1], dim=-1)
            q, k, v = (t.view(1, s, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
            pk = self._write(past[2 * i], k, pos)
            pv = self._write(past[2 * i + 1], v, pos)
            presents += [pk, pv]
            att = q @ pk.transpose(-1, -2) / math.sqrt(self.head_dim)
            att = att.masked_fill(~keep, float("-inf")).softmax(-1)
            y = (att @ pv).transpose(1, 2).reshape(1, s, -1)
            x = x + self.proj[i](y)
            x = x + self.fc2[i](torch.nn.functional.gelu(self.fc1[i](self.ln2[i](x))))
        return (self.head(self.lnf(x)), *presents)


def export_tiny_lm(path: Path, seq: int = 1, scatter: str = "elements", seed: int = 0,
                   **kw) -> Path:
    torch.manual_seed(seed)
    model = TinyLM(scatter=scatter, **kw).eval()
    past = [torch.zeros(1, model.heads, model.context, model.head_dim)
            for _ in range(2 * model.layers)]
    names_in = ["input_ids", "position"] + [f"past_{kv}_{i}" for i in range(model.layers)
                                             for kv in ("key", "value")]
    names_out = ["logits"] + [f"present_{kv}_{i}" for i in range(model.layers)
                              for kv in ("key", "value")]
    ids = torch.zeros(1, seq, dtype=torch.int64)
    pos = torch.zeros(1, dtype=torch.int64)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, pos, *past), buf, dynamo=False, opset_version=17,
                          input_names=names_in, output_names=names_out)
    path = Path(path)
    onnx.save(onnx.load_model_from_string(buf.getvalue()), str(path))
    return path
