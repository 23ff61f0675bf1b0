"""edgec report: a compiled folder's report.json (with simulation.json and verify.json when
they exist), validated against the report schema (toolchain.reports.schema), as a short text
summary, as JSON (``edgec --json report``), or as one self-contained HTML page (``--html``).

Nothing is recomputed: the page shows what compile, simulate and verify wrote, with every
estimate still labelled as one.
"""

from __future__ import annotations

from pathlib import Path

from toolchain.errors import ConfigError
from toolchain.outdir import staged_file


def register_report(sub) -> None:
    p = sub.add_parser("report", help="summarize a compiled folder (text, or --html FILE)",
                       description="Summarize OUT/report.json and, if present, "
                                   "OUT/simulation.json and OUT/verify.json (edgec verify OUT "
                                   "--json OUT/verify.json); --html writes one self-contained "
                                   "page with plots.")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--html", type=Path, metavar="FILE.html", help="write an HTML report here")
    p.set_defaults(func=cmd_report, command_parser=p)


def cmd_report(args) -> int:
    from toolchain.reports import load_folder
    from toolchain.reports.html import render
    from toolchain.reports.schema import to_json
    from toolchain.reports.summary import rows, verdict

    if args.html and Path(args.html).is_dir():
        raise ConfigError(f"cannot write --html {args.html}: it is a folder; give a file name, "
                          f"e.g. {Path(args.html) / 'report.html'}")
    folder = load_folder(Path(args.out_dir))
    summary = rows(folder)
    width = max(len(k) for k, _ in summary)
    for k, v in summary:
        print(f"{k:<{width}}  {v}")
    if args.html:
        with staged_file(args.html) as tmp:
            tmp.write_text(render(folder))
        print(f"HTML report written to {args.html}")
    v = verdict(folder)
    # what `edgec --json report` prints as its result
    args.result = {"verdict": {"status": v.status, "detail": v.detail},
                   "summary": dict(summary), "files": list(folder.files),
                   "html": str(args.html) if args.html else None,
                   "report": to_json(folder.report),
                   "simulation": to_json(folder.simulation) if folder.simulation else None,
                   "verification": to_json(folder.verification) if folder.verification
                   else None}
    return 0
