"""Language-model decode speed: edgec's binary against onnxruntime in its own KV-cache loop.

    python3 examples/bench_lm.py [--model LABEL=PATH ...] [--targets arm-a72,arm-a76]
                                 [--steps 64] [--repeats 5] [--no-arm] [--no-ort-arm] [--json F]

Default model: the zoo ``lm`` (trained or from the cache) exported as an S = 1 decode graph
with toolchain/compress/lm_export.py. A quantized variant is one more ``--model int8=PATH``.

Host, 1 thread: ``model --bench-tokens STEPS`` (median ms of one decode step, in C) against
examples/lm_ort_guest.py (onnxruntime, intra_op_num_threads=1, the caches fed back as OrtValues,
median of one ``run_with_ort_values`` step); each run REPEATS times, the medians printed and
their ratio (> 1: edgec faster).
ARM (exact guest instructions under qemu-user with examples/armcount's plugin, per target CPU):
edgec per generated token = (count(model --tokens N2) - count(model --tokens N1)) / (N2 - N1)
for greedy generation (the decode steps and the sampling); onnxruntime's aarch64 wheel
(/opt/arm64root, built by examples/armcount/sysroot.sh) on the same file: each decode step
between marker system calls, less the markers' own cost.
Weight bytes per token: what one decode step reads of the weights (all of them, the token
embedding one row); a board that cannot cache them decodes at most bandwidth / bytes tokens/s
(Raspberry Pi 4: about 3-5 GB/s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "armcount"))
GUEST = ROOT / "examples" / "lm_ort_guest.py"


def zoo_lm(folder: Path) -> Path:
    from toolchain import models
    from toolchain.compress.lm_export import export_lm

    path = folder / "lm_s1.onnx"
    export_lm(models.trained("lm"), path, seq_len=1)
    return path


def compile_lm(model: Path, target: str, out: Path) -> dict:
    from toolchain.cli import main

    if main(["--quiet", "compile", str(model), "-t", target, "-o", str(out)]) != 0:
        raise SystemExit(f"edgec compile {model} -t {target} failed")
    return json.loads((out / "report.json").read_text())


def host_edgec(out: Path, steps: int, repeats: int) -> float:
    """Median over repeats of the binary's median decode ms per token."""
    ms = []
    for _ in range(repeats):
        p = subprocess.run([str(out / "model"), "--bench-tokens", str(steps)], check=True,
                           capture_output=True, text=True)
        ms.append(1e3 / float(p.stdout.split()[-1]))
    return statistics.median(ms)


def host_ort(model: Path, steps: int, repeats: int) -> float:
    ms = []
    for _ in range(repeats):
        p = subprocess.run([sys.executable, str(GUEST), str(model), str(steps), "time"],
                           check=True, capture_output=True, text=True)
        ms.append(float(p.stdout.split()[-1]) * 1e3)
    return statistics.median(ms)


def arm_edgec(out: Path, cpu: str, n1: int = 4, n2: int = 20) -> float:
    import count as armcount

    def run(n):
        return armcount.count([out / "model", "--prompt", "T", "--tokens", str(n),
                               "--temperature", "0", "--ids"], cpu=cpu).insns
    return (run(n2) - run(n1)) / (n2 - n1)


def arm_ort(model: Path, cpu: str, steps: int = 8) -> float:
    import count as armcount

    argv = [armcount.SYSROOT / "usr/bin/python3.11", GUEST, Path(model).resolve(),
            str(steps), "marker"]
    c = armcount.count(argv, cpu=cpu, sysroot=armcount.ort_root(cpu), env=armcount.ORT_ENV,
                       plugin=[f"marker={armcount.MARK:x}"], timeout=3600)
    if c.threads != 1:
        raise SystemExit(f"onnxruntime ran {c.threads} guest threads: counts are not exact")
    empty = c.calls[:3] + c.calls[-3:]
    base = sum(empty) / len(empty)
    return statistics.mean(x - base for x in c.calls[3:-3])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], metavar="LABEL=PATH")
    ap.add_argument("--targets", default="arm-a72,arm-a76")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-arm", action="store_true", help="host timing only")
    ap.add_argument("--no-ort-arm", action="store_true",
                    help="skip onnxruntime's aarch64 counts (minutes each)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from toolchain.targets import device

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-lm-") as tmp:
        tmp = Path(tmp)
        models = [m.split("=", 1) for m in args.model] or [["float", str(zoo_lm(tmp))]]
        for label, path in models:
            path = Path(path)
            out = tmp / f"{label}-host"
            rep = compile_lm(path, "host", out)
            lm = rep["lm"]
            e_ms = host_edgec(out, args.steps, args.repeats)
            o_ms = host_ort(path, args.steps, args.repeats)
            row = {"model": label, "lm": lm, "host_edgec_ms": e_ms, "host_ort_ms": o_ms,
                   "host_ratio": o_ms / e_ms, "weight_bytes_per_token":
                   lm["weight_bytes_per_token"], "arm": {}}
            print(f"{label}: {lm['layers']} layers, T={lm['context']}, S={lm['seq']}; host 1 "
                  f"thread decode: edgec {1e3 / e_ms:.1f} tokens/s ({e_ms:.4f} ms), onnxruntime "
                  f"{1e3 / o_ms:.1f} tokens/s ({o_ms:.4f} ms): {o_ms / e_ms:.2f}x", flush=True)
            wb = lm["weight_bytes_per_token"]
            print(f"{label}: weight bytes per token {wb}: at 3-5 GB/s at most "
                  f"{3e9 / wb:.0f}-{5e9 / wb:.0f} tokens/s", flush=True)
            for target in ([] if args.no_arm else args.targets.split(",")):
                cpu = device(target).facts["cpu"]  # as examples/bench_arm_count.py
                aout = tmp / f"{label}-{target}"
                compile_lm(path, target, aout)
                e = arm_edgec(aout, cpu)
                o = None if args.no_ort_arm else arm_ort(path, cpu)
                row["arm"][target] = {"edgec_insns_per_token": e, "ort_insns_per_token": o}
                print(f"{label} {target}: instructions per generated token edgec {e / 1e6:.3f}M"
                      + ("" if o is None else f", onnxruntime {o / 1e6:.3f}M: edgec/ORT "
                         f"{e / o:.2f}"), flush=True)
            results.append(row)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
