"""Models written outside the zoo, compressed with data given on the command line, then compiled
and verified: a Conv1d sensor net (residual, transposed conv), a ResNet-style and a
MobileNetV2-style CNN, a transformer encoder, a GPT-style causal decoder on int64 token ids, an
LSTM keyword spotter and a small U-Net (strided conv down, ConvTranspose2d up, skip concat).

    python examples/own_models.py [--models gpt-decoder,lstm-kws] [--targets arm-a72,armv7-a7]
                                  [--fpga fpga-xcu250] [--out /tmp/own]

A step that refuses a model is a row with its one-line reason (``edgec --json`` error), not a
crash.

For each model: ``edgec compress M.pt --data M.npz`` (unlabelled: calibration and pruning
without fine-tuning, metric ``agree`` with the original model, ``pixel-agree`` for the U-Net's
per-pixel class maps) with int8 PTQ, 50% structured pruning (the LSTM's hidden units too),
and both; the most compressed int8 model that exports (else the float export) is compiled for
each target and verified against onnxruntime. An int8 step edgec's quantizer refuses is tried
again with ``--quantizer torchao`` (a ``/torchao`` row). The ``export`` column is the export
check: onnxruntime's largest difference from PyTorch on the data, and what it may be (float:
1e-5 of the range; int8: one activation step carried to the output).
The FPGA column (``--fpga``, default fpga-xcu250; ``--fpga ""`` skips it): the FPGA designs
take fixed-point (power-of-two) grids, so each model is compressed with ``--quantize
fixed<8,3>`` (a ``fixed<8,3>`` row; where that is refused, the float export at the backend's
default fixed<16,6>), compiled into an hls4ml project and its C emulation verified against
onnxruntime (``edgec verify``); a model the backend cannot map gets ``no`` and the one-line
reason ``edgec compile`` gives from ``edgec check`` (the first unsupported node; ``edgec
check M.onnx -t fpga-xcu250`` lists them all). An hls4ml C compile takes minutes on 2 cores.
The weights are seeded random (no training here), so pruning without fine-tuning moves the
argmax a lot: the figures show what each step does to size and agreement, not accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolchain.cli import main


class Sensor(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv1d(3, 16, 5, padding=2), nn.BatchNorm1d(16)
        self.c2 = nn.Conv1d(16, 16, 3, padding=1)
        self.up, self.fc = nn.ConvTranspose1d(16, 8, 2, stride=2), nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x)))
        y = torch.relu(self.c2(y)) + y
        return self.fc(torch.relu(self.up(y)).mean(2))


class ResNetStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.b1, self.bn1 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.b2, self.fc = nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = torch.relu(y + self.b2(torch.relu(self.bn1(self.b1(y)))))
        return self.fc(y.mean((2, 3)))


class MobileNetV2Style(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.exp = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 64, 1)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.proj, self.fc = nn.Conv2d(64, 16, 1), nn.Linear(16, 10)

    def forward(self, x):
        y = F.relu6(self.stem(x))
        z = self.proj(F.relu6(self.dw(F.relu6(self.exp(y)))))
        return self.fc((y + z).mean((2, 3)))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.e = nn.TransformerEncoder(nn.TransformerEncoderLayer(
            32, 4, 64, dropout=0.0, batch_first=True), 2)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.e(x).mean(1))


class GPTDecoder(nn.Module):
    """Token + position embeddings, two pre-norm causal self-attention blocks, a class head on
    the last position (a next-token head would be the same graph with a wider Linear)."""

    def __init__(self, vocab: int = 64, seq: int = 16, d: int = 32):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.blocks = nn.TransformerEncoder(nn.TransformerEncoderLayer(
            d, 4, 64, dropout=0.0, batch_first=True, norm_first=True), 2,
            enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 6)
        self.register_buffer("mask", torch.triu(torch.full((seq, seq), float("-inf")), 1))

    def forward(self, input_ids):
        n = input_ids.shape[1]
        h = self.tok(input_ids) + self.pos(torch.arange(n, device=input_ids.device))
        h = self.blocks(h, mask=self.mask[:n, :n], is_causal=True)
        return self.head(self.norm(h[:, -1]))


class LSTMKeywordSpotter(nn.Module):
    """MFCC-like frames (time, 10 coefficients) -> two-layer LSTM -> 12 keywords."""

    def __init__(self):
        super().__init__()
        self.lstm, self.fc = nn.LSTM(10, 32, num_layers=2, batch_first=True), nn.Linear(32, 12)
        # seeded random weights: with torch's default head bias every input gives the same
        # keyword (agree could not move); a zero bias lets the input decide
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.fc(y[:, -1])


class UNet(nn.Module):
    """Two levels: conv, strided conv down, bottleneck, ConvTranspose2d up, skip concat, a
    per-pixel 3-class head."""

    def __init__(self):
        super().__init__()
        self.e1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(16, 16, 3, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.d1, self.head = nn.Conv2d(16, 8, 3, padding=1), nn.Conv2d(8, 3, 1)

    def forward(self, x):
        s = torch.relu(self.bn1(self.e1(x)))
        y = torch.relu(self.mid(torch.relu(self.down(s))))
        y = torch.relu(self.d1(torch.cat([torch.relu(self.up(y)), s], 1)))
        return self.head(y)


# name: (class, one example's shape, dtype of the data, metric); token ids are int64 in [0, 64).
# The U-Net's outputs are per-pixel class maps: pixel-agree (argmax over channels per pixel).
MODELS = {"sensor-conv1d": (Sensor, (3, 32), "float32", "agree"),
          "resnet-style": (ResNetStyle, (3, 16, 16), "float32", "agree"),
          "mobilenetv2-style": (MobileNetV2Style, (3, 16, 16), "float32", "agree"),
          "transformer-encoder": (Encoder, (8, 32), "float32", "agree"),
          "gpt-decoder": (GPTDecoder, (16,), "int64", "agree"),
          "lstm-kws": (LSTMKeywordSpotter, (20, 10), "float32", "agree"),
          "unet": (UNet, (3, 16, 16), "float32", "pixel-agree")}
CONFIGS = {"int8": ["--quantize", "int8"], "prune50": ["--prune-channels", "0.5"],
           "prune50+int8": ["--prune-channels", "0.5", "--quantize", "int8"]}
FLOAT: list[str] = []  # no step: the float export, compiled when compression refuses the model
FIXED = ("fixed<8,3>", ["--quantize", "fixed<8,3>"])  # the FPGA column's model


@contextlib.contextmanager
def _silent_fd2():
    """TVM's C++ warnings write to file descriptor 2 directly, past sys.stderr."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _edgec(argv) -> tuple[bool, str]:
    """Run one edgec command quietly: (ok, the one-line reason when it is not)."""
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(io.StringIO()), \
                _silent_fd2():
            rc = main(["--json", *argv])
    except Exception as exc:  # a crash is a finding for the table, not the end of the run
        return False, f"crash: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
    text = sink.getvalue()
    try:
        report = json.loads(text[text.index("{"):])
    except ValueError:
        report = {}
    error = report.get("error") or f"exit code {rc}"
    return rc == 0, "" if rc == 0 else " ".join(str(error).split())[:200]


def _data(shape: tuple, dtype: str, rng) -> np.ndarray:
    if dtype == "int64":
        return rng.integers(0, 64, (200,) + shape).astype(np.int64)
    return rng.standard_normal((200,) + shape).astype(np.float32)


def _compress(out: Path, name: str, metric: str, cfg: str, flags: list[str]) -> dict:
    onnx_path = out / f"{name}-{cfg.replace('/', '-')}.onnx"
    ok, why = _edgec(["compress", str(out / f"{name}.pt"), "--data", str(out / f"{name}.npz"),
                      "--metric", metric, *flags, "-o", str(onnx_path)])
    row = {"model": name, "steps": cfg, "ok": ok, "why": why, "onnx": str(onnx_path)}
    if ok:
        r = json.loads(onnx_path.with_suffix(".json").read_text())
        row.update(metric=r["export"]["metric"], before=r["initial"]["score"],
                   after=r["export"]["onnx_score"], params=(r["initial"]["params"],
                                                            r["final"]["params"]),
                   bytes=(r["initial"]["bytes"], r["final"]["bytes"]),
                   export=(r["export"]["max_abs_error"], r["export"]["tolerance"]))
    return row


def _target(row: dict, out: Path, name: str, t: str, column: str | None = None) -> None:
    """Compile ``row``'s ONNX for ``t`` and verify it; the result goes into ``row[column]``."""
    column = column or t
    folder = out / f"{name}-{t}"
    ok_c, why_c = _edgec(["compile", row["onnx"], "-t", t, "-o", str(folder)])
    ok_v, why_v = _edgec(["verify", str(folder)]) if ok_c else (False, "")
    refused = not ok_c and why_c.startswith("unsupported op")
    row[column] = "ok" if ok_v else "no" if refused else "FAIL"
    if not ok_v:
        row["why"] += f"{t} {'verify' if ok_c else 'compile'}: {why_v or why_c}; "


def _fpga(out: Path, name: str, metric: str, rows: list[dict], fpga: str) -> None:
    """The FPGA column: the fixed-point model (else the float export) for ``fpga``."""
    row = _compress(out, name, metric, *FIXED)
    rows.append(row)
    if not row["ok"]:
        row = next((r for r in rows if r["model"] == name and r["steps"] == "float"), None) \
            or _compress(out, name, metric, "float", FLOAT)
        if row not in rows:
            rows.append(row)
    if row["ok"]:
        _target(row, out, name, fpga, "fpga")


def run(out: Path, targets: list[str], names: list[str],
        fpga: str | None = None) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    sys.modules.setdefault("own_models", sys.modules[__name__])  # torch.load finds the classes
    rows = []
    for name in names:
        cls, shape, dtype, metric = MODELS[name]
        rng = np.random.default_rng(0)
        torch.manual_seed(0)
        cls.__module__ = "own_models"
        torch.save(cls().eval(), out / f"{name}.pt")
        np.savez(out / f"{name}.npz", x=_data(shape, dtype, rng))
        for cfg, flags in CONFIGS.items():
            rows.append(_compress(out, name, metric, cfg, flags))
            if not rows[-1]["ok"] and "--quantize" in flags:  # torchao's int8 takes more layers
                retry = _compress(out, name, metric, f"{cfg}/torchao",
                                  [*flags, "--quantizer", "torchao"])
                if retry["ok"] or retry["why"] != rows[-1]["why"]:
                    rows.append(retry)
        done = [r for r in rows if r["model"] == name and r["ok"] and "int8" in r["steps"]]
        done.sort(key=lambda r: r["steps"].startswith("prune50+int8"))  # most compressed last
        last = done[-1] if done else None
        if last is None:  # still show whether the targets take the model: its float export
            last = _compress(out, name, metric, "float", FLOAT)
            rows.append(last)
        if last["ok"]:
            for t in targets:
                _target(last, out, name, t)
        if fpga:
            _fpga(out, name, metric, rows, fpga)
    return rows


def main_(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated, from {', '.join(MODELS)} (default: all)")
    ap.add_argument("--targets", default="arm-a72,armv7-a7")
    ap.add_argument("--fpga", default="fpga-xcu250",
                    help="the FPGA target of the fpga column ('' to leave it out)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/edgec-own-models"))
    args = ap.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        ap.error(f"unknown model {', '.join(unknown)} (known: {', '.join(MODELS)})")
    rows = run(args.out, targets, names, args.fpga or None)
    print(f"{'model':<20}{'steps':<22}{'metric (ort)':<30}{'params':>16}{'bytes':>18}"
          f"{'export err/tol':>20}" + "".join(f"{t:>10}" for t in targets)
          + (f"{args.fpga:>14}" if args.fpga else ""))
    for r in rows:
        if not r["ok"]:
            print(f"{r['model']:<20}{r['steps']:<22}refused: {r['why']}")
            continue
        score = f"{r['metric']} {r['before']:.4g} -> {r['after']:.4g}"
        check = f"{r['export'][0]:.1e}/{r['export'][1]:.1e}"
        print(f"{r['model']:<20}{r['steps']:<22}{score:<30}"
              f"{r['params'][0]:>7} ->{r['params'][1]:>6}{r['bytes'][0]:>8} ->{r['bytes'][1]:>7}"
              f"{check:>20}" + "".join(f"{r.get(t, ''):>10}" for t in targets)
              + (f"{r.get('fpga', ''):>14}" if args.fpga else ""))
        if r["why"]:
            print(f"{'':<42}{r['why']}")
    # a step refusing a model is a finding (its row says why); a crash or a failed target is not
    bad = [r for r in rows if r["why"].startswith("crash") or "FAIL" in r.values()]
    return 1 if bad else 0

if __name__ == "__main__":
    sys.exit(main_())
