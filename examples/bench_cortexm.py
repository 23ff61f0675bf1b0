"""Instructions per inference on Cortex-M, under qemu-system-arm (MPS2/MPS3 boards).

Exact dynamic instruction counts, not cycles: the counting TCG plugin of examples/armcount/
(count.c) runs in system mode too (qemu-system-arm -plugin), counting from the entry of
``edgec_model_run`` to the first block back in ``main`` of ``model.elf``, for one inference on a
seeded input (the image keeps its symbols). With --mix it also counts the DSP instructions
(smlad/smuad, sxtb16), the MVE vmladav(a).s8 and the FP multiply-adds (vmla/vfma .f32)
executed inside it.

    python examples/bench_cortexm.py                           # zoo mlp, cnn, dscnn, cnn int8
    python examples/bench_cortexm.py --targets cortex-m4 --models cnn cnn:int8 --mix
    python examples/bench_cortexm.py --folder OUT/             # one compiled folder

Per row: the model, target, instructions per inference, MACs per instruction, flash and SRAM
of the image against the device. No peer runs on a Cortex-M here (onnxruntime has no bare-metal
build), so the ratio column compares int8 with the float model on the same target.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "armcount"))

import count as armcount  # noqa: E402  (examples/armcount/count.py)

# Thumb-2 encodings as the plugin reads them: first halfword low, second high (mask/value).
MIX = {
    "smlad": (0x00E0FFF0, 0x0000FB20),  # SMLAD/SMLADX (and SMUAD: Ra = 15)
    "sxtb16": (0xF0C0FFF0, 0xF080FA20),  # SXTB16 (Rn = 15) and SXTAB16
    "vmla.f32": (0x0F50FFB0, 0x0A00EE00),  # VMLA.F32
    "vfma.f32": (0x0F50FFB0, 0x0A00EEA0),  # VFMA.F32
    "vmladav.s8": (0x0F01FFF1, 0x0F00EEF0),  # MVE VMLADAV(A).S8: 16 signed byte products
}


def build_plugin() -> Path:
    """libcount.so, built from examples/armcount/count.c with the host gcc if it is stale."""
    plugin, src = HERE / "armcount" / "libcount.so", HERE / "armcount" / "count.c"
    if not plugin.exists() or plugin.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(plugin), str(src)],
                       check=True)
    return plugin


def count_inference(out_dir: Path, mix: bool = False, seed: int = 0) -> dict:
    """Instructions of one edgec_model_run on a seeded input (and the mix, if asked)."""
    from toolchain.commands.build import load_inputs, read_manifest
    from toolchain.targets import device
    from toolchain.targets.cortexm.device import McuDevice
    from toolchain.targets.cortexm.runner import qemu_argv

    manifest = read_manifest(out_dir)
    dev = McuDevice.from_device(device(manifest["target"]))
    elf = (out_dir / "model.elf").resolve()
    sym = armcount.elf_symbols(elf)
    enter = sym["edgec_model_run"][0]
    main_lo, main_size = sym["main"]
    with tempfile.TemporaryDirectory(prefix="edgec-count-") as tmp:
        tmp = Path(tmp)
        files = []
        for i, arr in enumerate(load_inputs(manifest, [], seed)):
            files.append(tmp / f"in{i}.bin")
            files[-1].write_bytes(np.ascontiguousarray(arr).tobytes())
        files += [tmp / f"out{i}.bin" for i in range(len(manifest["outputs"]))]
        rep = tmp / "count.txt"
        opts = [str(build_plugin()), f"out={rep}", f"enter={enter:x}",
                f"back={main_lo:x}-{main_lo + main_size:x}"]
        if mix:
            opts += [f"match={m:x}/{v:x}" for m, v in MIX.values()]
        argv = qemu_argv(dev, elf, files, plugin=",".join(opts))
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-500:]}")
        calls, matches = [], {}
        for line in rep.read_text().splitlines():
            f = line.split()
            if f[0] == "call":
                calls.append(int(f[3]))
            elif f[0] == "callmatch":
                matches[f[2]] = int(f[3])
    if len(calls) != 1:
        raise RuntimeError(f"expected one call of edgec_model_run, counted {len(calls)}")
    names = {f"{m:x}/{v:x}": n for n, (m, v) in MIX.items()}
    return {"instructions": calls[0],
            "mix": {names[k]: v for k, v in matches.items() if k in names}}


def _compile(model_name: str, target: str, root: Path) -> Path:
    from toolchain.cli import main

    name, _, quant = model_name.partition(":")
    onnx_path = root / f"{name}{'_' + quant if quant else ''}.onnx"
    if not onnx_path.exists():
        flags = ["--quantize", quant] if quant else []
        if main(["compress", name, *flags, "-o", str(onnx_path), "-q"]) != 0:
            raise SystemExit(f"compress {model_name} failed")
    out = root / f"{onnx_path.stem}-{target}"
    if not (out / "model.elf").exists():
        if main(["compile", str(onnx_path), "-t", target, "-o", str(out), "-q"]) != 0:
            raise SystemExit(f"compile {model_name} for {target} failed")
    return out


def row(out_dir: Path, mix: bool) -> dict:
    report = json.loads((out_dir / "report.json").read_text())
    got = count_inference(out_dir, mix)
    macs = armcount.macs(out_dir / "model.onnx")
    u = report["mcu"]
    return {"folder": str(out_dir), "target": report["target"],
            "model": report["input_model"], "pipeline": report["pipeline"],
            "instructions": got["instructions"], "macs": macs,
            "macs_per_instruction": round(macs / got["instructions"], 3), "mix": got["mix"],
            "flash_bytes": u["flash_bytes"], "flash_available": u["flash_available"],
            "ram_bytes": u["ram_bytes"], "ram_available": u["ram_available"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=["cortex-m4", "cortex-m7"])
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn", "dscnn", "cnn:int8"],
                    help="zoo names; NAME:int8 is the int8 QDQ model from edgec compress")
    ap.add_argument("--folder", type=Path, nargs="*", help="compiled folders instead")
    ap.add_argument("--work", type=Path, help="where to keep models and builds (cached)")
    ap.add_argument("--mix", action="store_true", help="also count smlad/sxtb16/vmla/vfma/vmladava")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-cortexm-"))
    folders = list(args.folder or [])
    if not folders:
        folders = [_compile(m, t, work) for t in args.targets for m in args.models]
    rows = [row(f, args.mix) for f in folders]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    floats = {(r["target"], r["model"].replace("_int8", "")): r["instructions"] for r in rows
              if r["pipeline"] == "cpu"}
    print(f"{'model':<26}{'target':<11}{'instructions':>14}{'MAC/insn':>10}{'int8/fp32':>10}"
          f"{'flash KiB':>17}{'SRAM KiB':>17}  mix")
    for r in rows:
        base = floats.get((r["target"], r["model"].replace("_int8", "")))
        ratio = f"{r['instructions'] / base:.2f}" if base and r["pipeline"] != "cpu" else "-"
        flash = f"{r['flash_bytes'] / 1024:.1f}/{r['flash_available'] / 1024:.0f}"
        ram = f"{r['ram_bytes'] / 1024:.1f}/{r['ram_available'] / 1024:.0f}"
        mix = " ".join(f"{k} {v}" for k, v in r["mix"].items())
        print(f"{r['model']:<26}{r['target']:<11}{r['instructions']:>14,}"
              f"{r['macs_per_instruction']:>10.3f}{ratio:>10}{flash:>17}{ram:>17}  {mix}")
    print("instructions: exact dynamic instruction counts under qemu-system-arm (TCG plugin), "
          "not cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
