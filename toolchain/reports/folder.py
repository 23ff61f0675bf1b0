"""What a compiled folder holds for the report: the manifest, report.json, and the results of
simulate and verify when they exist, each validated by the schema.

simulate writes ``OUT/simulation.json``; ``edgec verify`` writes nothing unless asked
(``edgec verify OUT --json OUT/verify.json``). In an ``edgec build`` tree the compiled folder is
``T/compile/`` and the others are ``T/simulate/simulation.json`` and ``T/verify/verify.json``.
``edgec run OUT --profile`` writes ``OUT/profile.json`` (time or instructions per kernel).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.errors import ConfigError

from .schema import (Profile, Simulation, Verification, load_profile, load_report,
                     load_simulation, load_verification)


@dataclass(frozen=True)
class Folder:
    path: Path
    manifest: dict
    report: Any  # an instance of the family backend's ``report_class``
    simulation: Simulation | None = None
    verification: Verification | None = None
    files: tuple[str, ...] = ()  # the JSON files read, relative to path
    bench: dict | None = None  # an edgec build's verify/bench.json: {runs, median_ms, where}
    profile: Profile | None = None  # OUT/profile.json (edgec run OUT --profile)

    @property
    def family(self) -> str:
        return self.manifest["family"]


def _first(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def load_folder(out_dir: Path) -> Folder:
    from toolchain.commands.build import read_manifest

    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    path = out_dir / "report.json"
    if not path.is_file():
        raise ConfigError(f"{out_dir} has no report.json; compile it again")
    report = load_report(path)
    sim = _first([out_dir / "simulation.json", out_dir.parent / "simulate" / "simulation.json"])
    ver = _first([out_dir / "verify.json", out_dir.parent / "verify" / "verify.json"])
    bench = _first([out_dir / "bench.json", out_dir.parent / "verify" / "bench.json"])
    prof = _first([out_dir / "profile.json"])
    files = tuple(str(p.relative_to(out_dir.parent)) if p.parent != out_dir else p.name
                  for p in (path, sim, ver, bench, prof) if p is not None)
    return Folder(out_dir, manifest, report, load_simulation(sim) if sim else None,
                  load_verification(ver) if ver else None, files, _bench(bench),
                  load_profile(prof) if prof else None)


def _bench(path: Path | None) -> dict | None:
    """bench.json as the build's verify step writes it, or None (absent or not that shape)."""
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
        return {"runs": int(data["runs"]), "median_ms": float(data["median_ms"]),
                "where": str(data["where"])}
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a bench.json of edgec build (runs, median_ms, "
                          "where)") from None
