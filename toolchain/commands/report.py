"""edgec report: a compiled folder's report.json (and simulation.json) as a short text summary,
or as one self-contained HTML page for people who do not read JSON.

Nothing is recomputed: the page shows what compile and simulate wrote, with every estimate
still labelled as one.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from toolchain.errors import ConfigError
from toolchain.outdir import staged_file

from .build import read_manifest


def register_report(sub) -> None:
    p = sub.add_parser("report", help="summarize a compiled folder (text, or --html FILE)",
                       description="Summarize OUT/report.json and, if present, "
                                   "OUT/simulation.json; --html writes one self-contained page.")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--html", type=Path, metavar="FILE.html", help="write an HTML report here")
    p.set_defaults(func=cmd_report, command_parser=p)


def _load(out_dir: Path) -> tuple[dict, dict, dict | None]:
    manifest = read_manifest(out_dir)
    path = out_dir / "report.json"
    if not path.is_file():
        raise ConfigError(f"{out_dir} has no report.json; compile it again")
    try:
        report = json.loads(path.read_text())
        sim_path = out_dir / "simulation.json"
        sim = json.loads(sim_path.read_text()) if sim_path.is_file() else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{out_dir}: a report file is not valid JSON ({exc})") from None
    return manifest, report, sim


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def summary(manifest: dict, report: dict, sim: dict | None) -> list[tuple[str, str]]:
    """The headline figures, as (label, value) rows."""
    rows = [("target", manifest["target"]), ("family", manifest["family"])]
    for spec in manifest["inputs"]:
        rows.append((f"input {spec['name']}", f"{spec['dtype']} {spec['shape']}"))
    if manifest["family"] == "arm":
        mem = report.get("memory", {})
        rows += [("kernels", f"{report.get('distinct_kernels')} distinct, "
                             f"{report.get('kernel_calls_before_fusion')} -> "
                             f"{report.get('kernel_calls_after_fusion')} calls by fusion"),
                 ("activation arena", f"{_mib(mem.get('arena_bytes', 0))} (without reuse "
                                      f"{_mib(mem.get('arena_bytes_without_reuse', 0))})"),
                 ("weights", _mib(mem.get("weight_bytes", 0))),
                 ("binary / library", f"{_mib(report.get('binary_bytes', 0))} / "
                                      f"{_mib(report.get('library_bytes', 0))}"),
                 ("compile", f"{report.get('total_seconds', 0):.1f} s")]
    elif manifest["family"] == "fpga":
        est, fit = report["estimate"], report["utilization"]
        rows += [("device", f"{report['device']['name']} ({report['device']['part']})"),
                 ("strategy / io", f"{report['config'].get('strategy')} / "
                                   f"{report['config'].get('io_type')}"),
                 ("latency (estimate)", f"{est['latency_cycles']} cycles = {est['latency_ns']} "
                                        f"ns, II {est['ii_cycles']}"),
                 ("fits", "yes" if fit["fits"] else "NO")]
        for key, r in fit["resources"].items():
            rows.append((f"{key.upper()} (estimate)",
                         f"{r['used']} of {r['available']} ({r['percent']:.1f}%)"))
    if sim:
        c = sim.get("c_emulation")
        if c:
            rows.append(("C emulation", f"{c['samples']} samples, argmax agreement "
                                        f"{100 * c['argmax_agreement']:.2f}%, max error "
                                        f"{c['max_abs_error']:.4g}"))
        rtl = sim.get("rtl", {})
        if rtl.get("ran"):
            rows.append(("RTL (simulated)", f"{'bit-exact' if rtl['bit_exact'] else 'MISMATCH'}"
                                            f", {rtl['latency_cycles']} cycles, II "
                                            f"{rtl['ii_cycles']}, ~{rtl['lut_estimate']} LUT"))
        elif rtl:
            rows.append(("RTL", f"not simulated: {rtl.get('reason', '')}"))
    return rows


def _scalar_or_flat(value) -> bool:
    return not isinstance(value, (dict, list)) or (
        isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value))


def _html_value(value, depth: int = 0) -> str:
    """Scalars and flat lists as text; nested dicts as key/value tables; lists of dicts as
    one table with a column per key."""
    if _scalar_or_flat(value):
        if isinstance(value, float):
            return f"{value:.6g}"
        if isinstance(value, list):
            return html.escape(", ".join(str(v) for v in value))
        return html.escape(str(value))
    if depth > 4:
        return f"<code>{html.escape(json.dumps(value)[:200])}</code>"
    if isinstance(value, dict):
        if not value:
            return "<i>empty</i>"
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th>"
                       f"<td>{_html_value(v, depth + 1)}</td></tr>" for k, v in value.items())
        return f"<table class='kv'>{rows}</table>"
    if all(isinstance(v, dict) for v in value):
        keys: list[str] = []
        for v in value:
            keys += [k for k in v if k not in keys]
        head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
        body = "".join("<tr>" + "".join(f"<td>{_html_value(v.get(k, ''), depth + 1)}</td>"
                                        for k in keys) + "</tr>" for v in value)
        return f"<table><tr>{head}</tr>{body}</table>"
    return "<ul>" + "".join(f"<li>{_html_value(v, depth + 1)}</li>" for v in value) + "</ul>"


STYLE = """body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;
margin:.3em 0}th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top;
font-size:90%}th{background:#f3f3f3}table.kv th{width:14em}h2{margin-top:1.5em}"""


def render_html(out_dir: Path, manifest: dict, report: dict, sim: dict | None) -> str:
    title = f"edgec report: {out_dir.name} ({manifest['target']})"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p>Figures labelled <b>estimate</b> come from models, not from a simulator or "
             "vendor tool; simulated and measured figures say so.</p>",
             "<h2>Summary</h2><table class='kv'>"]
    parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
              for k, v in summary(manifest, report, sim)]
    parts.append("</table>")
    for name, data in (("report.json", report), ("simulation.json", sim),
                       ("edgec.json (manifest)", manifest)):
        if data is None:
            continue
        parts.append(f"<h2>{html.escape(name)}</h2>{_html_value(data)}")
    parts.append("</body></html>\n")
    return "".join(parts)


def cmd_report(args) -> int:
    out_dir = Path(args.out_dir)
    if args.html and Path(args.html).is_dir():
        raise ConfigError(f"cannot write --html {args.html}: it is a folder; give a file name, "
                          f"e.g. {Path(args.html) / 'report.html'}")
    manifest, report, sim = _load(out_dir)
    rows = summary(manifest, report, sim)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.html:
        with staged_file(args.html) as tmp:
            tmp.write_text(render_html(out_dir, manifest, report, sim))
        print(f"HTML report written to {args.html}")
    return 0
