"""edgec build: run a whole build (load ... report) from one TOML file (toolchain.buildflow)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from toolchain.errors import ConfigError


def register_build(sub) -> None:
    from toolchain.buildflow import STEP_NAMES

    p = sub.add_parser(
        "build", help="run a whole build from one TOML file (model, compression, targets)",
        description="Run the steps " + ", ".join(STEP_NAMES) + " for the model and targets of "
                    "BUILD.toml into OUT/ (each step in OUT/<step>/ or OUT/<target>/<step>/, "
                    "with a step.json). Unchanged steps come from the cache "
                    "($EDGEC_CACHE/build, else ~/.cache/edgec/build).")
    p.add_argument("build_file", type=Path, metavar="BUILD.toml",
                   help="the build file (see examples/edgec.toml)")
    p.add_argument("-o", "--output", type=Path,
                   help="output folder (default: [build] output in the file, else ./build)")
    p.add_argument("--from", dest="start", metavar="STEP",
                   help="start at STEP, taking the earlier steps' folders from OUT/")
    p.add_argument("--to", dest="stop", metavar="STEP", help="stop after STEP")
    p.add_argument("--no-cache", action="store_true",
                   help="run every step (the cache is neither read nor written)")
    p.add_argument("--json", action="store_true",
                   help="print the steps as JSON instead of a line per step")
    p.set_defaults(func=cmd_build, command_parser=p)


def cmd_build(args) -> int:
    from toolchain.buildflow import load_config, run_build

    cfg = load_config(args.build_file)
    out = args.output or Path(cfg.output or "build")
    echo = (lambda line: None) if args.json else print
    results = run_build(cfg, out, args.start, args.stop, not args.no_cache, echo)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
        return 0
    report = Path(out) / "report" / "report.json"
    if any(r.step == "report" and r.ran for r in results) and report.is_file():
        for line in summary_lines(json.loads(report.read_text())):
            print(line)
    cached = sum(r.cached for r in results if r.ran)
    ran = sum(r.ran for r in results)
    print(f"built {Path(out)}/: {ran} step(s), {cached} from the cache")
    page = Path(out) / "report" / "report.html"
    if page.is_file():
        print(f"report: {page}")
    return 0


def summary_lines(report: dict) -> list[str]:
    """One line per target: verify result, and the size or latency it reports."""
    lines = []
    for name, t in report.get("targets", {}).items():
        verify = t.get("verify", {})
        status = "verified" if verify.get("ok") else "NOT verified"
        c = t.get("compile", {})
        extra = []
        if "binary_bytes" in c:
            extra.append(f"binary {c['binary_bytes']} B")
        if "memory" in c:
            extra.append(f"arena {c['memory'].get('arena_bytes')} B")
        sim = t.get("simulate", {})
        if "c_emulation" in sim:
            agreement = sim["c_emulation"].get("argmax_agreement") or 0.0
            extra.append(f"C emulation argmax agreement {100 * agreement:.1f}%")
        if sim.get("rtl", {}).get("latency_cycles") is not None:
            extra.append(f"RTL latency {sim['rtl']['latency_cycles']} cycles")
        lines.append(f"{name}: {status} (model {t.get('model')})"
                     + (", " + ", ".join(extra) if extra else ""))
    if not lines:
        raise ConfigError("the report lists no target")
    return lines
