"""Reports checked against stored baselines with a tolerance per key, as hls4ml checks its
synthesis reports (``test/pytest/baselines/``).

A baseline is ``tests/baselines/<case>.json``: the case (zoo model, compression, target), and
the report compile wrote for it (schema-validated, timings dropped). ``compare`` checks only the
keys its family's backend names (``Backend.baseline_tolerances``: sizes and counts; timings
are never compared):

    python -m toolchain.reports.baseline            # build every case, compare, exit 1 on drift
    python -m toolchain.reports.baseline --write    # build every case, rewrite the baselines
    python -m toolchain.reports.baseline --case arm-a76-cnn-int8 [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .schema import SCHEMA_VERSION, from_json, report_class, to_json

BASELINES = Path(__file__).resolve().parents[2] / "tests" / "baselines"


@dataclass(frozen=True)
class Case:
    """One baseline: ``edgec compress MODEL COMPRESS -o m.onnx``, then compile for TARGET."""

    name: str
    model: str
    target: str
    compress: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"model": self.model, "compress": list(self.compress), "target": self.target}


CASES = {c.name: c for c in (
    Case("host-cnn-int8", "cnn", "host", ("--quantize", "int8")),
    Case("arm-a76-cnn-int8", "cnn", "arm-a76", ("--quantize", "int8")),
    Case("fpga-xcu250-mlp16", "mlp16", "fpga-xcu250"),
)}


@dataclass(frozen=True)
class Tolerance:
    """``got`` passes if ``|got - want| <= max(abs, rel * |want|)``; strings/bools: equal."""

    rel: float = 0.0
    abs: float = 0.0

    def accepts(self, got, want) -> bool:
        if isinstance(want, (bool, str)) or isinstance(got, (bool, str)) or want is None:
            return got == want
        return abs(got - want) <= max(self.abs, self.rel * abs(want))

    def __str__(self) -> str:
        parts = ([f"{100 * self.rel:g}%"] if self.rel else []) + (
            [f"+-{self.abs:g}"] if self.abs else [])
        return " or ".join(parts) or "exact"


def tolerances(family: str) -> dict[str, Tolerance]:
    """The keys a family's reports are compared on (its backend's ``baseline_tolerances``:
    dotted keys, ``name#`` a list's length, each ``(rel, abs)``)."""
    from toolchain.targets import backend_for

    return {key: Tolerance(rel, abs_)
            for key, (rel, abs_) in backend_for(family).baseline_tolerances.items()}


def lookup(report: dict, key: str):
    """The value at a dotted ``key``; ``name#`` is the length of the list at ``name``."""
    count = key.endswith("#")
    value = report
    for part in key.rstrip("#").split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return len(value) if count else value


def compare(got: dict, want: dict) -> list[str]:
    """One line per compared key (``tolerances``) where report ``got`` is outside baseline
    ``want``."""
    problems = []
    for key, tol in tolerances(got.get("family", "cpu")).items():
        g, w = lookup(got, key), lookup(want, key)
        if g is None and w is None:
            continue
        if g is None or w is None or not tol.accepts(g, w):
            problems.append(f"{key}: {g} (baseline {w}, tolerance {tol})")
    return problems


def normalized(report: dict, source: str = "report") -> dict:
    """The report validated by the schema, with every timing dropped."""
    data = to_json(from_json(report_class(report, source), report, source))
    for key in ("stage_seconds", "total_seconds", "kernel_seconds"):
        data.pop(key, None)
    return data


def build(case: Case, work: Path) -> dict:
    """Compress and compile ``case`` in ``work`` with the CLI; return the report."""
    from toolchain.cli import main
    from toolchain.errors import EdgecError

    onnx_path, out = work / f"{case.model}.onnx", work / case.name
    for argv in (["compress", case.model, *case.compress, "-o", str(onnx_path)],
                 ["compile", str(onnx_path), "-t", case.target, "-o", str(out)]):
        rc = main(["--quiet", *argv])
        if rc:
            raise EdgecError(f"baseline {case.name}: 'edgec {' '.join(argv)}' exited {rc}")
    return json.loads((out / "report.json").read_text())


def baseline_path(case: Case, folder: Path = BASELINES) -> Path:
    return Path(folder) / f"{case.name}.json"


def write(case: Case, report: dict, folder: Path = BASELINES) -> Path:
    path = baseline_path(case, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema_version": SCHEMA_VERSION, "case": case.to_json(),
           "regenerate": "python -m toolchain.reports.baseline --write",
           "report": normalized(report, case.name)}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def read(case: Case, folder: Path = BASELINES) -> dict:
    return json.loads(baseline_path(case, folder).read_text())["report"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m toolchain.reports.baseline",
                                description="Build the baseline cases; compare or --write.")
    p.add_argument("--write", action="store_true", help="rewrite tests/baselines/*.json")
    p.add_argument("--case", action="append", choices=sorted(CASES), help="only this case")
    p.add_argument("--dir", type=Path, default=BASELINES, help="the baselines folder")
    args = p.parse_args(argv)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="edgec-baseline-") as tmp:
        for name in args.case or list(CASES):
            case = CASES[name]
            report = build(case, Path(tmp))
            if args.write:
                print(f"wrote {write(case, report, args.dir)}")
                continue
            problems = compare(normalized(report, name), read(case, args.dir))
            failed += bool(problems)
            print(f"{name}: " + ("ok" if not problems else "DRIFT\n  " + "\n  ".join(problems)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
