"""Exact dynamic instruction counts under qemu-user, with the counting plugin beside this file.

Library (import with sys.path.insert(0, ".../armcount")):
    count(argv, qemu=, cpu=, sysroot=, env=, plugin=)   count any command; -> Count
    edgec_inference(outdir, input_bin)       instructions inside the one edgec_model_run call of
                                             `model IN OUT` (exact, the given input)
    edgec_bench_diff(outdir, hi=11, lo=1)    (count(model --bench hi) - count(--bench lo)) / (hi-lo)
    ort_inference(model, input_npy, cpu=)    onnxruntime (aarch64 wheel, 1 thread) under
                                             qemu-aarch64: per-run counts between marker syscalls
    ort_diff(model, input_npy, cpu=)         (count(N=hi runs) - count(N=lo runs)) / (hi-lo)
    macs(model)                              multiply-accumulates of Conv/Gemm/MatMul from shapes
Command line:
    count.py selftest
    count.py run [--qemu Q] [--cpu C] -- CMD ...
    count.py edgec OUTDIR --input X.bin [--bench-diff] [--mix] [--per-kernel]
    count.py ort MODEL.onnx INPUT.npy [--cpu C] [--runs N] [--call run|binding|ortvalue] [--diff] [--mix]
    count.py macs MODEL.onnx
Counts are exact and repeatable only with a fixed environment (ENV below: `env -i` style) and a
single-threaded guest; the plugin reports the number of guest threads it saw.
"""
from __future__ import annotations

import argparse, json, os, struct, subprocess, sys, tempfile, time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN = HERE / "libcount.so"
GUEST = HERE / "ort_guest.py"
SYSROOT = Path(os.environ.get("ARMCOUNT_SYSROOT", "/opt/arm64root"))  # built by sysroot.sh
MARK = 0x7C0DE  # the marker system call number ort_guest.py uses
# the whole guest environment: the C library's and Python's start-up work depends on it
ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
# and for onnxruntime: fixed str hashing; telemetry off (it starts 4-13 threads and writes files)
ORT_ENV = {**ENV, "PYTHONHASHSEED": "0", "ORT_DISABLE_TELEMETRY": "1", "OPENBLAS_NUM_THREADS": "1"}


@dataclass
class Count:
    insns: int                   # all guest instructions of the process
    threads: int                 # guest threads seen (1 = exact)
    calls: list[int] = field(default_factory=list)  # instructions in each window
    matches: dict = field(default_factory=dict)      # "mask/val" -> executed, whole run
    call_matches: list = field(default_factory=list)  # per window: {"mask/val": executed}
    seconds: float = 0.0
    stdout: str = ""
    stderr: str = ""


def build() -> Path:
    """Runs build.sh when a product is missing or older than a source (products: .gitignore)."""
    src = [HERE / "count.c", HERE / "build.sh", HERE / "selftest.c", HERE / "selftest_mix.c"]
    products = [PLUGIN, HERE / "selftest.aarch64", HERE / "selftest_mix.aarch64"]
    if not all(p.exists() for p in products) or \
            max(s.stat().st_mtime for s in src) > min(p.stat().st_mtime for p in products):
        subprocess.run(["bash", str(HERE / "build.sh")], check=True, stdout=subprocess.DEVNULL)
    return PLUGIN


def qemu_for(triple: str) -> str:
    return "qemu-aarch64" if triple.startswith("aarch64") else "qemu-arm"


def count(argv, *, qemu="qemu-aarch64", cpu=None, sysroot=None, env=None, plugin=(), cwd=None,
          timeout=None, check=True) -> Count:
    """Run argv under qemu-user with the counting plugin; plugin: extra 'key=value' arguments."""
    build()
    with tempfile.TemporaryDirectory() as td:
        rep = Path(td) / "count.txt"
        cmd = [qemu]
        if cpu:
            cmd += ["-cpu", cpu]
        if sysroot:
            cmd += ["-L", str(sysroot)]
        cmd += ["-plugin", ",".join([str(PLUGIN), f"out={rep}", *plugin]), *map(str, argv)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=ENV if env is None else env, cwd=cwd, capture_output=True,
                           text=True, timeout=timeout)
        dt = time.perf_counter() - t0
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
        if not rep.exists():
            raise RuntimeError(f"no count report from {' '.join(cmd)}: {p.stderr.strip()[-2000:]}")
        c = Count(0, 0, seconds=dt, stdout=p.stdout, stderr=p.stderr)
        for line in rep.read_text().splitlines():
            f = line.split()
            if f[0] == "insns":
                c.insns = int(f[1])
            elif f[0] == "threads":
                c.threads = int(f[1])
            elif f[0] == "call":
                c.calls.append(int(f[3]))
            elif f[0] == "match":
                c.matches[f[1]] = int(f[2])
            elif f[0] == "callmatch":
                i = int(f[1])
                while len(c.call_matches) <= i:
                    c.call_matches.append({})
                c.call_matches[i][f[2]] = int(f[3])
        return c


# A64 encodings (mask, value) for an instruction mix: plugin match=MASK/VAL (at most 16 in all).
# The Q bit (64/128-bit form, e.g. smull and smull2) is always masked out.
MIX = {
    "sdot": [(0xBFE0FC00, 0x0E809400), (0xBFC0F400, 0x0F80E000)],    # vector, by element
    "udot": [(0xBFE0FC00, 0x2E809400), (0xBFC0F400, 0x2F80E000)],
    "fmla": [(0xBFE0FC00, 0x0E20CC00), (0xBFC0F400, 0x0F801000)],    # fp32 vector, by element
    # widening integer multiply (-accumulate), vector form, any element size (8b->8h, 4h->4s, ...)
    "smull": [(0xBF20FC00, 0x0E20C000)],
    "smlal": [(0xBF20FC00, 0x0E208000)],
    "umull": [(0xBF20FC00, 0x2E20C000)],
    "umlal": [(0xBF20FC00, 0x2E208000)],
    "sadalp": [(0xBF3FFC00, 0x0E206800)],                            # pairwise add-accumulate long
    "uadalp": [(0xBF3FFC00, 0x2E206800)],
    "saddw": [(0xBF20FC00, 0x0E201000)],                             # add wide
}


MIX_HELP = "also count the executed " + "/".join(MIX)


def mix_args() -> list[str]:
    return [f"match={m:x}/{v:x}" for encs in MIX.values() for m, v in encs]


def mix_of(d: dict) -> dict:
    """{"mask/val": n} from the plugin -> {mix name: n}"""
    return {name: sum(d.get(f"{m:x}/{v:x}", 0) for m, v in encs) for name, encs in MIX.items()}


# ---------------------------------------------------------------------------- ELF symbols
def elf_symbols(path) -> dict[str, tuple[int, int]]:
    """{name: (address, size)} of the function symbols in an ELF file's .symtab (32 or 64 bit)."""
    b = Path(path).read_bytes()
    if b[:4] != b"\x7fELF":
        raise ValueError(f"{path}: not ELF")
    is64, end = b[4] == 2, "<" if b[5] == 1 else ">"
    machine = struct.unpack_from(end + "H", b, 18)[0]
    if is64:
        shoff, = struct.unpack_from(end + "Q", b, 0x28)
        shentsize, shnum = struct.unpack_from(end + "HH", b, 0x3A)
    else:
        shoff, = struct.unpack_from(end + "I", b, 0x20)
        shentsize, shnum = struct.unpack_from(end + "HH", b, 0x2E)
    secs = []
    for i in range(shnum):
        o = shoff + i * shentsize
        if is64:
            name, typ, _, _, off, size, link, _, _, entsize = struct.unpack_from(end + "IIQQQQIIQQ", b, o)
        else:
            name, typ, _, _, off, size, link, _, _, entsize = struct.unpack_from(end + "IIIIIIIIII", b, o)
        secs.append((typ, off, size, link, entsize))
    out = {}
    for typ, off, size, link, entsize in secs:
        if typ != 2:  # SHT_SYMTAB
            continue
        stroff = secs[link][1]
        for o in range(off, off + size, entsize):
            if is64:
                nm, info, _, _, val, sz = struct.unpack_from(end + "IBBHQQ", b, o)
            else:
                nm, val, sz, info, _, _ = struct.unpack_from(end + "IIIBBH", b, o)
            if info & 0xF != 2:  # STT_FUNC
                continue
            name = b[stroff + nm: b.index(b"\0", stroff + nm)].decode()
            if machine == 40:  # ARM: bit 0 marks Thumb code
                val &= ~1
            out[name] = (val, sz)
    return out


# ---------------------------------------------------------------------------- edgec
def _edgec_manifest(outdir: Path) -> dict:
    return json.loads((Path(outdir) / "report.json").read_text())


def edgec_symbols(outdir) -> dict:
    """Addresses of edgec_model_run and main in OUTDIR/model (which is stripped).

    Relinks OUTDIR/src/main.c with OUTDIR/libmodel.a as edgec links (same cross gcc and flags),
    checks that the relink with -s is byte-identical to OUTDIR/model, and reads the symbols of
    the same link without -s (the same layout: -s only drops the symbol table)."""
    outdir = Path(outdir)
    rep = _edgec_manifest(outdir)
    triple, cpu = rep["triple"], rep["cpu"]
    if triple.startswith("aarch64"):
        cc, flags, ldflags = "aarch64-linux-gnu-gcc", ["-O2", f"-mcpu={cpu}"], []
    else:  # as toolchain/targets/cpu/cc.py builds armv7 (hard float, long PLT entries)
        cc, ldflags = "arm-linux-gnueabihf-gcc", ["-Wl,--long-plt"]
        flags = ["-O2", f"-mcpu={cpu}", "-mfloat-abi=hard",
                 "-mfpu=neon-vfpv4" if "+vfp4" in rep["features"] else "-mfpu=neon"]
    if rep.get("compiler") != "gcc":
        raise RuntimeError(f"{outdir}: built with {rep.get('compiler')}; only gcc builds are relinked")
    pthread = ["-pthread"] if rep.get("threads", 1) > 1 else []
    with tempfile.TemporaryDirectory() as td:
        t = Path(td)
        for f in ("src/main.c", "model.h", "libmodel.a"):
            (t / Path(f).name).write_bytes((outdir / f).read_bytes())
        run = lambda a: subprocess.run(a, cwd=t, check=True, capture_output=True)
        run([cc, *flags, "-ffile-prefix-map=.=.", "-fno-ident", "-c", "main.c", "-o", "main.o"])
        run([cc, *flags, "-static", "-s", "main.o", "libmodel.a", "-lm", *ldflags, *pthread, "-o", "model.s"])
        if (t / "model.s").read_bytes() != (outdir / "model").read_bytes():
            raise RuntimeError(f"relinking {outdir}/model did not reproduce it byte for byte")
        run([cc, *flags, "-static", "main.o", "libmodel.a", "-lm", *ldflags, *pthread, "-o", "model.sym"])
        syms = elf_symbols(t / "model.sym")
    enter = syms["edgec_model_run"][0]
    lo, size = syms["main"]
    return {"enter": enter, "back": (lo, lo + size), "triple": triple, "cpu": cpu,
            "threads": rep.get("threads", 1), "symbols": syms}


def edgec_kernel_profile(outdir, input_bin, cpu=None, timeout=None) -> dict[str, dict]:
    """Instructions per kernel of one inference: for each kernel (``__tvm_ffi_<name>``), a
    window from its entry back to its caller (edgec_model_run_multi), summed over its calls. One qemu run per
    kernel; kernels that call each other are not separated (edgec's never do)."""
    s = edgec_symbols(outdir)
    if s["threads"] > 1:
        raise RuntimeError("window counts need a single-threaded model (--threads 1)")
    syms = s["symbols"]
    run_lo, run_size = syms.get("edgec_model_run_multi", syms["edgec_model_run"])
    out = {}
    with tempfile.TemporaryDirectory() as td:
        for name, (addr, _) in sorted(syms.items()):
            if not name.startswith("__tvm_ffi_"):
                continue
            c = count([Path(outdir).resolve() / "model", Path(input_bin).resolve(),
                       Path(td) / "out.bin"], qemu=qemu_for(s["triple"]), cpu=cpu or s["cpu"],
                      cwd=td, timeout=timeout,
                      plugin=[f"enter={addr:x}", f"back={run_lo:x}-{run_lo + run_size:x}"])
            if c.calls:
                out[name[len("__tvm_ffi_"):]] = {"calls": len(c.calls), "instructions": sum(c.calls)}
    return out


def edgec_inference(outdir, input_bin, cpu=None, timeout=None, mix=False) -> dict:
    """Exact instructions of one inference: the dynamic extent of the one edgec_model_run call
    of `OUTDIR/model INPUT OUT` (a window from its entry to the first block back in main)."""
    s = edgec_symbols(outdir)
    if mix and not s["triple"].startswith("aarch64"):
        raise RuntimeError("the instruction mix decodes A64 encodings only (not armv7)")
    if s["threads"] > 1:
        raise RuntimeError("window counts need a single-threaded model (--threads 1)")
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "out.bin"
        c = count([Path(outdir).resolve() / "model", Path(input_bin).resolve(), out],
                  qemu=qemu_for(s["triple"]), cpu=cpu or s["cpu"], cwd=td, timeout=timeout,
                  plugin=[f"enter={s['enter']:x}", f"back={s['back'][0]:x}-{s['back'][1]:x}",
                          *(mix_args() if mix else [])])
        output = out.read_bytes()
    if len(c.calls) != 1:
        raise RuntimeError(f"expected one edgec_model_run call, saw {len(c.calls)}")
    r = {"per_inference": c.calls[0], "process": c.insns, "threads": c.threads,
         "seconds": c.seconds, "output": output}
    if mix:
        r["mix"] = mix_of(c.call_matches[0])
    return r


def edgec_bench_diff(outdir, cpu=None, hi=11, lo=1, timeout=None) -> dict:
    """(count(model --bench hi) - count(model --bench lo)) / (hi - lo): a cross-check.
    Includes the timing code around each run; the printed times make counts vary slightly."""
    rep = _edgec_manifest(outdir)
    model = Path(outdir).resolve() / "model"
    kw = dict(qemu=qemu_for(rep["triple"]), cpu=cpu or rep["cpu"], timeout=timeout)
    a = count([model, "--bench", lo], **kw)
    b = count([model, "--bench", hi], **kw)
    return {"per_inference": (b.insns - a.insns) / (hi - lo), "lo": a.insns, "hi": b.insns,
            "threads": max(a.threads, b.threads), "seconds": a.seconds + b.seconds}


# ---------------------------------------------------------------------------- onnxruntime
def ort_root(cpu: str) -> Path:
    r = SYSROOT.parent / f"{SYSROOT.name}-{cpu}"
    if not (r / "proc/cpuinfo").exists():
        raise RuntimeError(f"no {r}: build the aarch64 Python with {HERE}/sysroot.sh")
    return r


def ort_count(model, input_npy, n, mode, cpu="cortex-a72", call="run", out_npy=None,
              timeout=None, mix=False) -> Count:
    """One guest Python process running ort_guest.py (see there for MODE and CALL). N is passed
    zero-padded, so that runs with different N have the same argv length (the same layout)."""
    argv = [SYSROOT / "usr/bin/python3.11", GUEST, Path(model).resolve(), Path(input_npy).resolve(),
            f"{n:04d}", mode, call]
    if out_npy:
        argv.append(Path(out_npy).resolve())
    plugin = ([f"marker={MARK:x}"] if mode == "marker" else []) + (mix_args() if mix else [])
    return count(argv, cpu=cpu, sysroot=ort_root(cpu), env=ORT_ENV, plugin=plugin, timeout=timeout)


def ort_inference(model, input_npy, cpu="cortex-a72", runs=5, call="run", out_npy=None,
                  timeout=None, mix=False) -> dict:
    """Per-run instructions of InferenceSession.run (CALL=run; or the layers under it, see
    ort_guest.py) after two warm-up runs, each between two marker syscalls, less the mean of
    the empty windows (the markers' own cost, ~4k)."""
    c = ort_count(model, input_npy, runs, "marker", cpu, call, out_npy, timeout, mix)
    empty = c.calls[:3] + c.calls[-3:]
    base = sum(empty) / len(empty)
    per = [x - base for x in c.calls[3:-3]]
    r = {"per_inference": sum(per) / len(per), "min": min(per), "max": max(per), "runs": per,
         "raw": c.calls[3:-3], "empty": empty, "process": c.insns, "threads": c.threads,
         "seconds": c.seconds}
    if mix:
        r["mix"] = [mix_of(d) for d in c.call_matches[3:-3]]
    return r


def ort_diff(model, input_npy, cpu="cortex-a72", hi=11, lo=1, call="run", timeout=None) -> dict:
    """(count(hi runs) - count(lo runs)) / (hi - lo), whole guest Python processes (a
    cross-check; includes the Python loop's ~100 instructions per run)."""
    a = ort_count(model, input_npy, lo, "loop", cpu, call, timeout=timeout)
    b = ort_count(model, input_npy, hi, "loop", cpu, call, timeout=timeout)
    return {"per_inference": (b.insns - a.insns) / (hi - lo), "lo": a.insns, "hi": b.insns,
            "threads": max(a.threads, b.threads), "seconds": a.seconds + b.seconds}


# ---------------------------------------------------------------------------- MACs
def macs(model) -> int:
    """Multiply-accumulates of the Conv, ConvInteger, QLinearConv, Gemm, MatMul(Integer) nodes,
    from the shapes onnx's shape inference gives (a QDQ model's Conv/Gemm count as float ones)."""
    import numpy as np
    import onnx
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    m = onnx.shape_inference.infer_shapes(model)
    g = m.graph
    shapes = {t.name: list(t.dims) for t in g.initializer}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        shapes.setdefault(vi.name, [d.dim_value or 1 for d in dims])
    total = 0
    for nd in g.node:
        op = nd.op_type
        if op in ("Conv", "ConvInteger", "QLinearConv"):
            w = shapes[nd.input[3 if op == "QLinearConv" else 1]]
            y = shapes[nd.output[0]]
            total += int(np.prod(y, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
        elif op == "Gemm":
            a = shapes[nd.input[0]]
            attrs = {x.name: x.i for x in nd.attribute}
            k = a[0] if attrs.get("transA", 0) else a[1]
            y = shapes[nd.output[0]]
            total += y[0] * y[1] * k
        elif op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
            a = shapes[nd.input[0]]
            y = shapes[nd.output[0]]
            total += int(np.prod(y, dtype=np.int64)) * a[-1]
    return int(total)


# ---------------------------------------------------------------------------- self-check
def selftest() -> None:
    """The plugin on a loop of known length: 5 instructions per iteration, exact."""
    build()
    for arch, qemu in (("aarch64", "qemu-aarch64"), ("armv7", "qemu-arm")):
        exe = HERE / f"selftest.{arch}"
        if not exe.exists():
            continue
        a, b, b2 = (count([exe, n], qemu=qemu, check=False).insns for n in (1000000, 2000000, 2000000))
        print(f"{arch}: count(1e6 iterations) {a}, count(2e6) {b}, again {b2}, "
              f"difference {b - a} (expected 5000000), repeatable {b == b2}")
        assert b - a == 5_000_000 and b == b2
    m = count([HERE / "selftest_mix.aarch64", 1000], cpu="cortex-a76", plugin=mix_args(), check=False)
    got = mix_of(m.matches)
    print(f"mix of 1000 iterations of (2 sdot, udot, 2 fmla, smull, smlal, sadalp): {got}")
    want = {"sdot": 2000, "udot": 1000, "fmla": 2000, "smull": 1000, "smlal": 1000, "sadalp": 1000}
    assert got == {k: want.get(k, 0) for k in MIX}, got


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("selftest")
    r = sub.add_parser("run"); r.add_argument("--qemu", default="qemu-aarch64"); r.add_argument("--cpu")
    r.add_argument("argv", nargs=argparse.REMAINDER)
    e = sub.add_parser("edgec"); e.add_argument("outdir"); e.add_argument("--input", required=True)
    e.add_argument("--cpu"); e.add_argument("--bench-diff", action="store_true")
    e.add_argument("--mix", action="store_true", help=MIX_HELP)
    e.add_argument("--per-kernel", action="store_true",
                   help="also instructions per kernel (one qemu run per kernel)")
    o = sub.add_parser("ort"); o.add_argument("model"); o.add_argument("input")
    o.add_argument("--cpu", default="cortex-a72"); o.add_argument("--runs", type=int, default=5)
    o.add_argument("--diff", action="store_true")
    o.add_argument("--call", default="run", choices=["run", "binding", "ortvalue"])
    o.add_argument("--mix", action="store_true", help=MIX_HELP)
    mc = sub.add_parser("macs"); mc.add_argument("model")
    a = ap.parse_args(argv)
    if a.cmd == "selftest":
        selftest()
    elif a.cmd == "run":
        args = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
        c = count(args, qemu=a.qemu, cpu=a.cpu, check=False)
        print(json.dumps({"insns": c.insns, "threads": c.threads, "seconds": round(c.seconds, 2)}))
    elif a.cmd == "edgec":
        r = edgec_inference(a.outdir, a.input, a.cpu, mix=a.mix)
        r.pop("output")
        if a.bench_diff:
            r["bench_diff"] = edgec_bench_diff(a.outdir, a.cpu)
        if a.per_kernel:
            r["kernels"] = edgec_kernel_profile(a.outdir, a.input, a.cpu)
        print(json.dumps(r))
    elif a.cmd == "ort":
        r = (ort_diff(a.model, a.input, a.cpu, call=a.call) if a.diff
             else ort_inference(a.model, a.input, a.cpu, a.runs, a.call, mix=a.mix))
        print(json.dumps(r))
    elif a.cmd == "macs":
        print(macs(a.model))


if __name__ == "__main__":
    main()
