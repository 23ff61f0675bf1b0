"""ARM work per inference: edgec's binary against onnxruntime's own aarch64 build, exact counts.

For each model and ARM target: `edgec compile MODEL -t TARGET`, then the exact guest instructions
of one inference under qemu-user (examples/armcount/count.py: the one edgec_model_run call of
`model IN OUT`), and onnxruntime's aarch64 wheel on the same file and the same input, under the
same qemu CPU (1 thread, `run_with_ort_values`, the mean of the measured runs after two warm-up
runs). Prints edgec/ORT, MACs per instruction, the int8/fp32 instruction ratio of each model
pair on the same CPU and the instruction mix (sdot, udot, smull, smlal, sadalp, fmla, ...).

    python3 examples/bench_arm_count.py [--quick] [--models cnn,cnn_int8,squeezenet,squeezenet_qdq]
                                        [--targets arm-a72,arm-a76] [--json FILE] [--no-mix]

Models: a zoo name (`edgec zoo`: the fp32 export of `edgec compress NAME`), NAME_int8 / NAME_int4
(`edgec compress NAME --quantize int8`), a light_* model of the onnx package by its short name
(squeezenet, resnet50, ...: seeded random weights at its own input shape, upgraded to opset 13
for onnxruntime's per-channel QDQ), NAME_qdq (onnxruntime.quantization.quantize_static of that
model without its trailing Softmax, as examples/bench_int8.py's ort_qdq(logits=True) writes it:
QDQ, per-channel int8 weights, uint8 activations, calibrated on 4 seeded random inputs),
or a path to an .onnx file (shown by its stem).
Inputs are seeded standard normal. onnxruntime counts take minutes (squeezenet 20-90 s per CPU)
and are cached in ~/.cache/edgec/armcount/ort_counts.json, keyed by the model file's and the
input's sha256, the CPU, the call and the counting method. One-time setup:
`bash examples/armcount/sysroot.sh` (the aarch64 Python with onnxruntime, as root).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "armcount"))
import count as armcount  # noqa: E402  (examples/armcount/count.py)

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgec" / "armcount"
DEFAULT_MODELS = "cnn,cnn_int8,squeezenet,squeezenet_qdq"
QUICK_MODELS = "cnn,cnn_int8"
QUANT_SUFFIXES = ("_int8", "_int4", "_qdq")
MIX_SHOWN = ("sdot", "udot", "smull", "smlal", "sadalp", "fmla")  # others only when non-zero
CALL = "ortvalue"


def brief(exc: Exception) -> str:
    """The last non-empty line of an error (a failed qemu run ends with the guest's stderr)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    return lines[-1] if len(lines[-1]) <= 300 else "..." + lines[-1][-300:]


def die(msg: str) -> SystemExit:
    """A one-line exit: `raise die(...)`."""
    return SystemExit(f"bench_arm_count: {msg}")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def label(name: str) -> str:
    return Path(name).stem if name.endswith(".onnx") else name


def pair_base(name: str) -> str | None:
    """The fp32 model a quantized one pairs with (cnn_int8 -> cnn), or None."""
    for s in QUANT_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return None


# ------------------------------------------------------------------------------- models
def edgec_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolchain", *args], cwd=ROOT,
                          capture_output=True, text=True)


def last_line(p: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (p.stderr + p.stdout).splitlines() if ln.strip()]
    err = [ln for ln in lines if "error" in ln.lower()]
    return (err or lines or [f"exit {p.returncode}"])[-1].strip()


def light_fp32(name: str, out: Path) -> None:
    """light_NAME with seeded random weights, upgraded to opset 13 (IR 7, initializers no longer
    graph inputs). quantize_static upgrades these IR-3/opset-9 files only to opset 11 and writes
    per-channel DequantizeLinear nodes with an axis attribute that opset 11 lacks: onnxruntime
    refuses that file ("Unrecognized attribute: axis for operator DequantizeLinear")."""
    from onnx import version_converter
    from toolchain.onnx_io import randomize_weights, save_model
    m = randomize_weights(onnx.load(str(LIGHT / f"light_{name}.onnx")), seed=0)
    inits = {i.name for i in m.graph.initializer}
    keep = [i for i in m.graph.input if i.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    m.ir_version = 7
    m = version_converter.convert_version(m, 13)
    onnx.checker.check_model(m)
    save_model(m, out)


def prepare(name: str, folder: Path) -> Path:
    """The ONNX file for a model name (see the module docstring)."""
    if name.endswith(".onnx"):
        p = Path(name).resolve()
        if not p.exists():
            raise die(f"no model file {name}")
        return p
    path = folder / f"{name}.onnx"
    if path.exists():
        return path
    base = pair_base(name)
    if name.endswith("_qdq"):
        if not (LIGHT / f"light_{base}.onnx").exists():
            raise die(f"{name}: no light_{base}.onnx in {LIGHT}")
        # quantized from the logits (bench_int8.ort_qdq, as validate_light_models.py): a
        # trailing Softmax's [0, 1] grid gives 1000 near-uniform outputs one code, which no
        # error figure can check
        from bench_int8 import ort_qdq
        ort_qdq(base, folder, logits=True)[1].rename(path)
    elif (LIGHT / f"light_{name}.onnx").exists():
        light_fp32(name, path)
    else:
        quant = ["--quantize", name[len(base) + 1:]] if base else []
        p = edgec_cli("compress", base or name, *quant, "-o", str(path))
        if p.returncode != 0:
            raise die(f"edgec compress {base or name} failed: {last_line(p)}")
    return path


def model_input(path: Path, folder: Path) -> tuple[Path, Path, list[str]]:
    """Seeded input for the model's one input: (x.npy, x.bin, --input-shape args if dynamic)."""
    from toolchain.onnx_io import input_specs, random_inputs
    specs = input_specs(onnx.load(str(path)))
    if len(specs) != 1:
        raise die(f"{path.name} has {len(specs)} inputs; one is supported")
    s = specs[0]
    shape = tuple(d if d > 0 else 1 for d in s.shape)
    shape_args = [] if shape == tuple(s.shape) else [
        "--input-shape", f"{s.name}={','.join(map(str, shape))}"]
    x = np.ascontiguousarray(random_inputs([type(s)(s.name, shape, s.dtype)], seed=0)[0])
    npy, raw = folder / f"{path.stem}.x.npy", folder / f"{path.stem}.x.bin"
    np.save(npy, x)
    raw.write_bytes(x.tobytes())
    return npy, raw, shape_args


# ------------------------------------------------------------------------------- counts
def check_setup(targets: list[str]) -> dict[str, dict]:
    """Device facts per target; one-line exits for what is missing."""
    from toolchain.targets import device
    facts = {}
    for t in targets:
        try:
            d = device(t)
        except Exception as exc:  # an unknown name: the registry's own message
            raise die(f"target {t}: {str(exc).splitlines()[0]}") from None
        if d.facts.get("qemu") not in ("qemu-aarch64", "qemu-arm"):
            raise die(f"{t} is not an emulated ARM target (see 'edgec targets')")
        facts[t] = d.facts
    py = armcount.SYSROOT / "usr/bin/python3.11"
    for t, f in facts.items():
        if not f["triple"].startswith("aarch64"):
            continue  # no onnxruntime build for armv7 here: edgec is counted alone
        root = armcount.SYSROOT.parent / f"{armcount.SYSROOT.name}-{f['cpu']}"
        if not py.exists() or not (root / "proc/cpuinfo").exists():
            raise die(f"no aarch64 Python with onnxruntime in {root}: build it once with "
                      "`bash examples/armcount/sysroot.sh` (as root, ~1 min, apt-get + pip)")
    return facts


def ort_version() -> str:
    sp = armcount.SYSROOT / "usr/lib/python3/dist-packages"
    found = sorted(p.name for p in sp.glob("onnxruntime-*.dist-info"))
    return found[0].removesuffix(".dist-info") if found else "onnxruntime-?"


def method_id() -> str:
    h = hashlib.sha256()
    for f in ("count.c", "ort_guest.py"):
        h.update((armcount.HERE / f).read_bytes())
    return f"{ort_version()}-{h.hexdigest()[:12]}"


class OrtCache:
    """ORT counts in one JSON file, written atomically, re-read before each write."""

    def __init__(self, path: Path):
        self.path = path

    def _load(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> dict | None:
        return self._load().get(key)

    def put(self, key: str, value: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self._load()
        data[key] = value
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self.path)


def ort_count(model: Path, x_npy: Path, cpu: str, runs: int, mix: bool, cache: OrtCache,
              refresh: bool) -> dict:
    key = f"{sha256(model)}:{cpu}:{sha256(x_npy)}:{CALL}:runs={runs}:{method_id()}"
    hit = None if refresh else cache.get(key)
    if hit and (hit.get("mix") is not None or not mix):
        return {**hit, "cached": True}
    r = armcount.ort_inference(model, x_npy, cpu=cpu, runs=runs, call=CALL, mix=mix)
    if r["threads"] != 1:
        raise RuntimeError(f"onnxruntime ran {r['threads']} guest threads; counts are not exact")
    out = {"per_inference": r["per_inference"], "min": r["min"], "max": r["max"],
           "runs": r["runs"], "seconds": round(r["seconds"], 1), "model": model.name,
           "mix": r["mix"][0] if mix else None,
           "mix_same_each_run": all(m == r["mix"][0] for m in r["mix"]) if mix else None}
    cache.put(key, out)
    return {**out, "cached": False}


def edgec_count(out: Path, x_bin: Path, mix: bool) -> dict:
    r = armcount.edgec_inference(out, x_bin, mix=mix)
    if r["threads"] != 1:
        raise RuntimeError(f"the edgec binary ran {r['threads']} guest threads")
    return r


def output_error(outdir: Path, raw: bytes, model: Path, x_npy: Path) -> float:
    """max |edgec - onnxruntime (host)| over the outputs of the counted run, same input."""
    from toolchain.reference import run_reference
    specs = json.loads((outdir / "edgec.json").read_text())["outputs"]
    ref = run_reference(model, [np.load(x_npy)])
    err, off = 0.0, 0
    for s, r in zip(specs, ref):
        n = int(np.prod(s["shape"])) * np.dtype(s["dtype"]).itemsize
        got = np.frombuffer(raw[off:off + n], dtype=s["dtype"]).reshape(s["shape"])
        err = max(err, float(np.max(np.abs(got.astype(np.float64) - r.astype(np.float64)))))
        off += n
    return err


# ------------------------------------------------------------------------------- run
def measure(name: str, path: Path, target: str, facts: dict, work: Path, args,
            cache: OrtCache) -> dict:
    name = label(name)
    row = {"model": name, "file": str(path), "sha256": sha256(path), "target": target,
           "cpu": facts["cpu"]}
    x_npy, x_bin, shape_args = model_input(path, work)
    row["macs"] = armcount.macs(path)
    aarch64 = facts["triple"].startswith("aarch64")
    mix = args.mix and aarch64
    out = work / f"{name}-{target}"
    t0 = time.perf_counter()
    p = edgec_cli("compile", str(path), "-t", target, "-o", str(out), *shape_args)
    row["compile_seconds"] = round(time.perf_counter() - t0, 1)
    if p.returncode != 0:
        row["edgec_error"] = f"compile: {last_line(p)}"
        log(f"  {name} {target}: edgec compile failed: {last_line(p)}")
    else:
        rep = json.loads((out / "report.json").read_text())
        row.update(pipeline=rep.get("pipeline"), weight_bytes=rep["memory"].get("weight_bytes"),
                   binary_bytes=rep.get("binary_bytes"))
        try:
            e = edgec_count(out, x_bin, mix)
            row.update(edgec=e["per_inference"], edgec_seconds=round(e["seconds"], 2),
                       edgec_mix=e.get("mix"))
        except Exception as exc:  # a crash or a relink mismatch: keep the other rows
            row["edgec_error"] = f"count: {brief(exc)}"
            log(f"  {name} {target}: edgec count failed: {row['edgec_error']}")
        else:
            try:
                row["max_abs_error"] = output_error(out, e["output"], path, x_npy)
            except Exception as exc:
                row["reference_error"] = brief(exc)
    log(f"  {name} {target}: edgec compile {row['compile_seconds']} s, count "
        f"{row.get('edgec_seconds', '-')} s")
    if aarch64:
        try:
            o = ort_count(path, x_npy, facts["cpu"], args.ort_runs, mix, cache, args.refresh)
            row.update(ort=o["per_inference"], ort_min=o["min"], ort_max=o["max"],
                       ort_mix=o.get("mix") if mix else None, ort_seconds=o["seconds"],
                       ort_cached=o["cached"])
            log(f"  {name} {target}: onnxruntime {'from the cache' if o['cached'] else 'counted'}"
                f" (counted in {o['seconds']} s)")
        except Exception as exc:
            row["ort_error"] = brief(exc)
            log(f"  {name} {target}: onnxruntime count failed: {row['ort_error']}")
    return row


def fmt_int(v) -> str:
    return "-" if v is None else f"{round(v):,}"


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_tables(rows: list[dict], models: list[str]) -> list[dict]:
    print(f"{'model':<17}{'target':<9}{'pipeline':<9}{'edgec insns':>14}{'ORT insns':>14}"
          f"{'edgec/ORT':>10}{'MACs':>13}{'MAC/i edgec':>12}{'ORT':>6}{'wt KiB':>8}{'max|d|':>9}")
    for r in rows:
        e, o, m = r.get("edgec"), r.get("ort"), r["macs"]
        print(f"{r['model']:<16} {r['target']:<9}{r.get('pipeline') or '-':<9}{fmt_int(e):>14}"
              f"{fmt_int(o):>14}{fmt(e / o if e and o else None, '.2f'):>10}{m:>13,}"
              f"{fmt(m / e if e else None, '.2f'):>12}{fmt(m / o if o else None, '.2f'):>6}"
              f"{fmt(r['weight_bytes'] / 1024 if r.get('weight_bytes') else None, '.1f'):>8}"
              f"{fmt(r.get('max_abs_error'), '.1e'):>9}")
        for k in ("edgec_error", "ort_error", "reference_error"):
            if k in r:
                print(f"    {k.split('_')[0]}: {r[k]}")
    by = {(r["model"], r["target"]): r for r in rows}
    pairs = []
    for q in models:
        base = pair_base(q)
        if base not in models:
            continue
        for t in dict.fromkeys(r["target"] for r in rows):
            a, b = by.get((base, t)), by.get((q, t))
            if not (a and b):
                continue
            pr = {"int8": q, "fp32": base, "target": t}
            for who in ("edgec", "ort"):
                if a.get(who) and b.get(who):
                    pr[who] = b[who] / a[who]
            pairs.append(pr)
    if pairs:
        print("\nint8/fp32 instructions, same model pair, same CPU")
        print(f"{'int8 model':<16}{'fp32 model':<14}{'target':<9}{'edgec':>8}{'ORT':>8}")
        for p in pairs:
            print(f"{p['int8']:<16}{p['fp32']:<14}{p['target']:<9}{fmt(p.get('edgec'), '.2f'):>8}"
                  f"{fmt(p.get('ort'), '.2f'):>8}")
    mixed = [(r, who) for r in rows for who in ("edgec", "ort") if r.get(f"{who}_mix")]
    if mixed:
        shown = list(MIX_SHOWN) + [k for k in armcount.MIX if k not in MIX_SHOWN
                                   and any(r[f"{w}_mix"].get(k) for r, w in mixed)]
        print("\ninstruction mix per inference (vector forms; smull/smlal/... any element size)")
        print(f"{'model':<16}{'target':<9}{'':<6}" + "".join(f"{k:>12}" for k in shown))
        for r, who in mixed:
            print(f"{r['model']:<16}{r['target']:<9}{'edgec' if who == 'edgec' else 'ORT':<6}"
                  + "".join(f"{r[f'{who}_mix'].get(k, 0):>12,}" for k in shown))
    return pairs


def qemu_version() -> str:
    p = subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True)
    return (p.stdout.splitlines() or ["qemu-aarch64 ?"])[0]


def git_describe() -> str:
    p = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                       capture_output=True, text=True)
    return p.stdout.strip() or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help=f"comma-separated (default {DEFAULT_MODELS})")
    ap.add_argument("--targets", default="arm-a72,arm-a76", help="comma-separated ARM targets")
    ap.add_argument("--quick", action="store_true", help=f"only the zoo CNN pair ({QUICK_MODELS})")
    ap.add_argument("--json", metavar="FILE", help="also write the rows and ratios as JSON")
    ap.add_argument("--no-mix", dest="mix", action="store_false",
                    help="skip the instruction mix (sdot, udot, smull, smlal, sadalp, fmla, ...)")
    ap.add_argument("--ort-runs", type=int, default=3,
                    help="measured onnxruntime runs per count, after 2 warm-up runs (default 3)")
    ap.add_argument("--refresh", action="store_true",
                    help="count onnxruntime again, ignoring the cache")
    ap.add_argument("--keep", metavar="DIR",
                    help="build in DIR and keep it (default: a temporary folder)")
    args = ap.parse_args()
    if args.quick and args.models:
        ap.error("--quick and --models exclude each other")
    models = (args.models or (QUICK_MODELS if args.quick else DEFAULT_MODELS)).split(",")
    targets = args.targets.split(",")
    facts = check_setup(targets)
    armcount.build()
    print("$ " + shlex.join(["python3", "examples/bench_arm_count.py", *sys.argv[1:]]), flush=True)
    print(f"edgec {git_describe()}, onnxruntime aarch64 {ort_version().split('-', 1)[1]} "
          f"(1 thread, {CALL}, mean of {args.ort_runs} runs), {qemu_version()}", flush=True)
    cache = OrtCache(CACHE / "ort_counts.json")
    t_start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep).resolve() if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in models:
            path = prepare(name, work)
            for t in targets:
                rows.append(measure(name, path, t, facts[t], work, args, cache))
    print(f"({time.perf_counter() - t_start:.0f} s)\n")
    pairs = print_tables(rows, models)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"command": sys.argv, "edgec": git_describe(), "onnxruntime": ort_version(),
             "call": CALL, "ort_runs": args.ort_runs, "rows": rows, "int8_over_fp32": pairs},
            indent=1, default=str))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
