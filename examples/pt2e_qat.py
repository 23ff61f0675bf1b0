"""torchao PT2E quantization of trained attention models: float vs PTQ vs QAT, int8 and int4.

    python examples/pt2e_qat.py [--models transformer-encoder,gpt-decoder] [--epochs 3]
                                [--out /tmp/edgec-pt2e-qat] [--target host]

The transformer encoder and the GPT-style decoder of ``own_models.py`` are trained (float) on a
small synthetic labelled task each, then go through ``edgec compress --quantizer torchao`` with
the labels on the command line: int8 and int4 weights, post-training (calibration) and with
``--qat-epochs N``. Every quantized model is compiled for ``--target`` and verified against
onnxruntime. Tasks (seeded):

- transformer encoder, inputs (8, 32) normal: the class is the argmax of the first 5 features
  averaged over the sequence;
- GPT decoder, token ids in [0, 64): the class is the first token's id modulo 6 (the last
  position must attend to the first).

Printed per row: top-1 on the held-out 20% (PyTorch before, onnxruntime after), weight bytes
(edgec's report: int4 codes count as 8-bit until metrics.py reads the bit width), and verify.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import own_models  # noqa: E402

from toolchain.models.train import Recipe, fit  # noqa: E402

CONFIGS = {"int8 PTQ": ["--quantize", "int8"], "int8 QAT": ["--quantize", "int8", "--qat-epochs"],
           "int4 PTQ": ["--quantize", "int4"], "int4 QAT": ["--quantize", "int4", "--qat-epochs"]}


def _task(name: str, rng) -> tuple[np.ndarray, np.ndarray]:
    if name == "gpt-decoder":
        x = rng.integers(0, 64, (1500, 16)).astype(np.int64)
        return x, (x[:, 0] % 6).astype(np.int64)
    x = rng.standard_normal((1500, 8, 32)).astype(np.float32)
    return x, x.mean(1)[:, :5].argmax(1).astype(np.int64)


def run(out: Path, names: list[str], epochs: int, target: str) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    sys.modules.setdefault("own_models", own_models)
    rows = []
    for name in names:
        cls = own_models.MODELS[name][0]
        cls.__module__ = "own_models"
        rng = np.random.default_rng(0)
        torch.manual_seed(0)
        x, y = _task(name, rng)
        model = fit(cls(), x[:1200], y[:1200], Recipe(epochs=30, lr=3e-3, batch=64, seed=0))
        torch.save(model.eval(), out / f"{name}.pt")
        np.savez(out / f"{name}.npz", x=x[:1200], y=y[:1200], x_test=x[1200:], y_test=y[1200:])
        for cfg, flags in CONFIGS.items():
            flags = flags + [str(epochs)] if flags[-1] == "--qat-epochs" else flags
            onnx_path = out / f"{name}-{cfg.replace(' ', '-')}.onnx"
            ok, why = own_models._edgec(["compress", str(out / f"{name}.pt"), "--data",
                                         str(out / f"{name}.npz"), "--quantizer", "torchao",
                                         *flags, "-o", str(onnx_path)])
            row = {"model": name, "config": cfg, "ok": ok, "why": why}
            if ok:
                r = json.loads(onnx_path.with_suffix(".json").read_text())
                row.update(before=r["initial"]["score"], after=r["export"]["onnx_score"],
                           bytes=(r["initial"]["bytes"], r["final"]["bytes"]))
                folder = out / f"{name}-{cfg.replace(' ', '-')}-{target}"
                ok_c, why_c = own_models._edgec(["compile", str(onnx_path), "-t", target,
                                                 "-o", str(folder)])
                ok_v, why_v = own_models._edgec(["verify", str(folder)]) if ok_c else (False, "")
                row["verify"] = "ok" if ok_v else f"FAIL {why_v or why_c}"
            rows.append(row)
    return rows


def main_(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="transformer-encoder,gpt-decoder")
    ap.add_argument("--epochs", type=int, default=3, help="QAT epochs")
    ap.add_argument("--target", default="host")
    ap.add_argument("--out", type=Path, default=Path("/tmp/edgec-pt2e-qat"))
    args = ap.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in ("transformer-encoder", "gpt-decoder")]
    if unknown:
        ap.error(f"unknown model {', '.join(unknown)} (transformer-encoder, gpt-decoder)")
    rows = run(args.out, names, args.epochs, args.target)
    print(f"{'model':<20}{'quantization':<14}{'top1 (ort)':<20}{'bytes':>18}  {args.target}")
    for r in rows:
        if not r["ok"]:
            print(f"{r['model']:<20}{r['config']:<14}refused: {r['why']}")
            continue
        print(f"{r['model']:<20}{r['config']:<14}{r['before']:>6.1f} -> {r['after']:<9.1f}"
              f"{r['bytes'][0]:>8} ->{r['bytes'][1]:>7}  {r['verify']}")
    return 1 if any(not r["ok"] or r["verify"] != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main_())
