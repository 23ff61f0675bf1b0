"""Language models: onnxruntime in the same generation loop as edgec's driver, and verify.

``OrtGenerator`` runs the decode graph (the contract in toolchain/optimizer/kvcache.py) in a
KV-cache loop exactly as the generated driver does (targets/cpu/lm_driver.py): up to S new
tokens per call, padded with token 0, the window starting at T - S near the end of the
context, each call's present caches fed back as the next past. ``verify_lm`` generates
greedily from a few prompts with the artifact and with onnxruntime and compares the tokens
one by one and the logits of every step.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from toolchain.errors import ConfigError
from toolchain.optimizer.kvcache import LMContract

log = logging.getLogger(__name__)

PROMPTS = ("The ", "def main(args):\n", "Hello, world. ")


class OrtGenerator:
    """Greedy (or any caller-chosen) generation with onnxruntime, one session, ``threads``."""

    def __init__(self, model: Path, lm: LMContract, threads: int = 1):
        from toolchain.reference import ort_session

        self.lm = lm
        self.sess = ort_session(Path(model), threads)
        self.names_out = [o.name for o in self.sess.get_outputs()]
        self.reset()

    def reset(self) -> None:
        shape = (1, self.lm.heads, self.lm.context, self.lm.head_dim)
        self.past = {f"past_{kv}_{i}": np.zeros(shape, np.float32)
                     for i in range(self.lm.layers) for kv in ("key", "value")}
        self.history: list[int] = []

    @property
    def position(self) -> int:
        return len(self.history)

    def feed(self, ids: list[int]) -> np.ndarray:
        """Feed tokens (any number that fits); return the logits after the last one."""
        lm = self.lm
        if not ids or self.position + len(ids) > lm.context:
            raise ConfigError(f"context full: {self.position} + {len(ids)} tokens, the context "
                              f"holds {lm.context}")
        for k in range(0, len(ids), lm.seq):
            logits = self._call(ids[k:k + lm.seq])
        return logits

    def _call(self, new: list[int]) -> np.ndarray:
        lm = self.lm
        start = min(self.position, lm.context - lm.seq)
        self.history.extend(new)
        stop = self.position
        window = [self.history[p] if p < stop else 0 for p in range(start, start + lm.seq)]
        feeds = {"input_ids": np.array([window], np.int64),
                 "position": np.array([start], np.int64), **self.past}
        outs = dict(zip(self.names_out, self.sess.run(None, feeds)))
        for name in self.past:
            self.past[name] = outs["present" + name[len("past"):]]
        return outs["logits"][0, stop - 1 - start]

    def generate(self, prompt: list[int], tokens: int) -> tuple[list[int], np.ndarray]:
        """Greedy: the generated ids and the logits each was chosen from."""
        self.reset()
        tokens = min(tokens, self.lm.context - len(prompt) + 1)
        logits = self.feed(list(prompt))
        ids, seen = [], []
        for i in range(tokens):
            seen.append(logits)
            ids.append(int(np.argmax(logits)))
            if i + 1 < tokens:
                logits = self.feed([ids[-1]])
        return ids, np.stack(seen)


def verify_lm(out_dir: Path, manifest: dict, backend, tolerance: float | None = None,
              tokens: int = 24) -> list:
    """Greedy generation from ``PROMPTS`` by the artifact and by onnxruntime: one Comparison
    per prompt, ok when every token is identical and the logits are within tolerance."""
    from toolchain.reference import compare

    lm = LMContract.from_json(manifest["lm"])
    if not hasattr(backend, "generate"):
        raise ConfigError(f"the {manifest['family']} family cannot run a language model")
    ref = OrtGenerator(Path(out_dir) / "model.onnx", lm)
    tol = tolerance if tolerance is not None else float(manifest.get("tolerance", 1e-4))
    results = []
    for i, text in enumerate(PROMPTS):
        prompt = list(text.encode()[: max(1, lm.context // 2)])
        want_ids, want_logits = ref.generate(prompt, tokens)
        got_ids, got_logits = backend.generate(Path(out_dir), bytes(prompt), len(want_ids))
        same = next((k for k, (a, b) in enumerate(zip(got_ids, want_ids)) if a != b), None)
        if same is None and len(got_ids) != len(want_ids):
            same = min(len(got_ids), len(want_ids))
        n = len(want_ids) if same is None else same
        c = compare(f"prompt {i}", got_logits[:max(n, 1)], want_logits[:max(n, 1)], tol)
        note = (f"{len(want_ids)} greedy tokens identical" if same is None
                else f"tokens differ from step {same}")
        results.append(dataclasses.replace(
            c, name=f"logits, prompt {i} {text!r} ({note})", ok=c.ok and same is None,
            mismatched=c.mismatched + (0 if same is None else len(want_ids) - same)))
        log.info("prompt %d: edgec %s, onnxruntime %s", i, got_ids, want_ids)
    return results
