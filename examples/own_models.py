"""Models written outside the zoo, compressed with data given on the command line, then compiled
and verified: a Conv1d sensor net (residual, transposed conv), a ResNet-style and a
MobileNetV2-style CNN, and a transformer encoder.

    python examples/own_models.py [--targets arm-a72,armv7-a7] [--out /tmp/own]

For each model: ``edgec compress M.pt --data M.npz`` (unlabelled: calibration and pruning
without fine-tuning, metric ``agree`` with the original model) with int8 PTQ, 50% structured
pruning, and both; the last one compiled for each target and verified against onnxruntime.
The weights are seeded random (no training here), so pruning without fine-tuning moves the
argmax a lot: the figures show what each step does to size and agreement, not accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
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


MODELS = {"sensor-conv1d": (Sensor, (3, 32)), "resnet-style": (ResNetStyle, (3, 16, 16)),
          "mobilenetv2-style": (MobileNetV2Style, (3, 16, 16)), "transformer-encoder": (Encoder,
                                                                                       (8, 32))}
CONFIGS = {"int8": ["--quantize", "int8"], "prune50": ["--prune-channels", "0.5"],
           "prune50+int8": ["--prune-channels", "0.5", "--quantize", "int8"]}


def _quiet(argv) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


def run(out: Path, targets: list[str]) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    sys.modules.setdefault("own_models", sys.modules[__name__])  # torch.load finds the classes
    rows = []
    rng = np.random.default_rng(0)
    for name, (cls, shape) in MODELS.items():
        torch.manual_seed(0)
        cls.__module__ = "own_models"
        torch.save(cls().eval(), out / f"{name}.pt")
        np.savez(out / f"{name}.npz", x=rng.standard_normal((200,) + shape).astype(np.float32))
        for cfg, flags in CONFIGS.items():
            onnx_path = out / f"{name}-{cfg}.onnx"
            rc = _quiet(["compress", str(out / f"{name}.pt"), "--data", str(out / f"{name}.npz"),
                         *flags, "-o", str(onnx_path)])
            row = {"model": name, "steps": cfg, "ok": rc == 0}
            if rc == 0:
                r = json.loads(onnx_path.with_suffix(".json").read_text())
                row.update(metric=r["export"]["metric"], before=r["initial"]["score"],
                           after=r["export"]["onnx_score"], params=(r["initial"]["params"],
                                                                    r["final"]["params"]),
                           bytes=(r["initial"]["bytes"], r["final"]["bytes"]))
                if cfg == "prune50+int8":
                    for t in targets:
                        folder = out / f"{name}-{t}"
                        ok = _quiet(["compile", str(onnx_path), "-t", t, "-o", str(folder)]) == 0
                        row[t] = "ok" if ok and _quiet(["verify", str(folder)]) == 0 else "FAIL"
            rows.append(row)
    return rows


def main_(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="arm-a72,armv7-a7")
    ap.add_argument("--out", type=Path, default=Path("/tmp/edgec-own-models"))
    args = ap.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    rows = run(args.out, targets)
    print(f"{'model':<20}{'steps':<14}{'agree % (ort)':>15}{'params':>16}{'bytes':>16}"
          + "".join(f"{t:>10}" for t in targets))
    for r in rows:
        if not r["ok"]:
            print(f"{r['model']:<20}{r['steps']:<14}  compress failed")
            continue
        print(f"{r['model']:<20}{r['steps']:<14}{r['before']:>7.1f} ->{r['after']:>5.1f}"
              f"{r['params'][0]:>8} ->{r['params'][1]:>5}{r['bytes'][0]:>8} ->{r['bytes'][1]:>5}"
              + "".join(f"{r.get(t, ''):>10}" for t in targets))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main_())
