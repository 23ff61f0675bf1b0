"""The HTML report: one self-contained page rendered from the validated JSON (no network, plots
embedded as PNG). On top it answers "did it pass, and what does it cost"; the JSON files follow
as tables, folded.

This module is the page frame every family shares: the title, the verdict, the headline boxes,
the JSON files. What a family shows between them (its headline boxes and its sections) comes
from its backend (``Backend.report_headline`` / ``report_sections``, e.g.
targets/cpu/report_page.py), built with the helpers here: ``table``, ``row``, ``figure``,
``esc``; the core never branches on a family."""

from __future__ import annotations

import html
import json

from .folder import Folder
from .schema import to_json
from .summary import verdict

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em 2em;max-width:78em;color:#222}
h1{font-size:1.5em;margin:.2em 0}h2{margin:1.4em 0 .4em;font-size:1.2em;border-bottom:1px solid
#ddd}table{border-collapse:collapse;margin:.3em 0}th,td{border:1px solid #ccc;padding:2px 7px;
text-align:left;vertical-align:top;font-size:90%}th{background:#f3f3f3}td.n{text-align:right;
white-space:nowrap;font-variant-numeric:tabular-nums}table.kv th{width:16em}.badge{display:inline-block;
padding:.35em .9em;border-radius:.3em;color:#fff;font-weight:bold;font-size:1.3em;
margin-right:.6em}.pass{background:#2e8b57}.fail{background:#c0392b}.simulated{background:#3b6ea8}
.not{background:#888}.verdict{display:flex;align-items:center;margin:.8em 0}.over{color:#c0392b;
font-weight:bold}.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.row>div{flex:1 1 30em;min-width:0}.row>figure{flex:0 1 auto;max-width:30em}.row>div{overflow-x:auto}.head{display:flex;gap:.8em;flex-wrap:wrap;margin:.6em 0}
.head div{border:1px solid #ddd;border-radius:.3em;padding:.3em .8em}.head b{display:block;
font-size:1.25em}.head span{font-size:85%;color:#555}figure{margin:0;border:1px solid
#ddd;padding:.4em}figcaption{font-size:90%;color:#444}.note{color:#555;font-size:90%}
.why{background:#f5f7fa;border-left:3px solid #3b6ea8;padding:.4em .7em;font-size:92%}.tag{color:#fff;padding:.1em .45em;border-radius:.25em;font-weight:bold;font-size:85%;white-space:nowrap}details{margin:.5em 0}figure.wide{display:inline-block}figure img{max-width:100%}summary{cursor:pointer;font-weight:bold}"""


def esc(text) -> str:
    """``text`` escaped for HTML."""
    return html.escape(str(text))


def table(head: list[str], body: list[list], numeric: set[int] = frozenset()) -> str:
    """A table: ``head`` escaped, ``body`` cells as given (HTML), ``numeric`` columns right
    aligned."""
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    rows = "".join("<tr>" + "".join(
        f"<td class='n'>{c}</td>" if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>" for r in body)
    return f"<table><tr>{th}</tr>{rows}</table>"


def figure(title_png: tuple[str, str], css: str = "") -> str:
    """A (title, base64 PNG) plot of ``toolchain.reports.plots`` as an embedded figure."""
    title, png = title_png
    return (f"<figure{css and f' class={css!r}'}><img alt='{esc(title)}' src='data:image/png;base64,{png}'>"
            f"<figcaption>{esc(title)}</figcaption></figure>")


def json_table(value, depth: int = 0) -> str:
    """Scalars and flat lists as text; dicts as key/value tables; lists of dicts as one table
    with a column per key."""
    flat = not isinstance(value, (dict, list)) or (
        isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value))
    if flat:
        if isinstance(value, float):
            return f"{value:.6g}"
        return esc(", ".join(map(str, value)) if isinstance(value, list) else value)
    if depth > 4:
        return f"<code>{esc(json.dumps(value)[:200])}</code>"
    if isinstance(value, dict):
        if not value:
            return "<i>empty</i>"
        return "<table class='kv'>" + "".join(
            f"<tr><th>{esc(k)}</th><td>{json_table(v, depth + 1)}</td></tr>"
            for k, v in value.items()) + "</table>"
    if all(isinstance(v, dict) for v in value):
        keys: list[str] = []
        for v in value:
            keys += [k for k in v if k not in keys]
        return table(keys, [[json_table(v.get(k, ""), depth + 1) for k in keys]
                             for v in value])
    return "<ul>" + "".join(f"<li>{json_table(v, depth + 1)}</li>" for v in value) + "</ul>"


# ---------------------------------------------------------------- sections
def _verdict(folder: Folder) -> str:
    v = verdict(folder)
    css = v.status.split()[0]
    parts = [f"<div class='verdict'><span class='badge {css}'>{esc(v.status.upper())}</span>"
             f"<span>{esc(v.detail)}</span></div>"]
    if folder.verification:
        parts.append(table(
            ["output", "max abs error", "of range", "tolerance", "mismatched", "result"],
            [[esc(c.name), f"{c.max_abs_error:.3e}", f"{c.max_rel_error:.3e}",
              f"{c.tolerance:.1e}" + (f" or {c.abs_tolerance:.4g}" if c.abs_tolerance else ""),
              c.mismatched, "ok" if c.ok else "<span class='over'>MISMATCH</span>"]
             for c in folder.verification.outputs], numeric={1, 2, 4}))
    return "".join(parts)


def _raw(folder: Folder) -> str:
    parts = [("report.json", to_json(folder.report)), ("edgec.json (manifest)",
                                                       folder.manifest)]
    if folder.profile:
        parts.insert(1, ("profile.json", to_json(folder.profile)))
    if folder.simulation:
        parts.insert(1, ("simulation.json", to_json(folder.simulation)))
    if folder.verification:
        parts.insert(1, ("verify.json", to_json(folder.verification)))
    return "<h2>The JSON files</h2>" + "".join(
        f"<details><summary>{esc(name)}</summary>{json_table(data)}</details>"
        for name, data in parts)


def row(text: str, plot: tuple[str, str]) -> str:
    """A text block (HTML) with its plot beside it."""
    return f"<div class='row'><div>{text}</div>{figure(plot)}</div>"


def _headline(folder: Folder) -> str:
    """The figures that say what the build costs (the backend's ``report_headline``), as a
    row of boxes under the verdict."""
    boxes = _backend(folder).report_headline(folder)
    return "<div class='head'>" + "".join(f"<div><b>{esc(v)}</b><span>{esc(k)}</span></div>"
                                          for v, k in boxes) + "</div>"


def _backend(folder: Folder):
    from toolchain.targets import backend_for

    return backend_for(folder.family)


def render(folder: Folder) -> str:
    m, r = folder.manifest, folder.report
    title = f"edgec report: {folder.path.name} ({m['target']})"
    ins = ", ".join(f"{s['name']} {s['dtype']}{s['shape']}" for s in m["inputs"])
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>",
             f"<p class='note'>model {esc(r.input_model)}, input {esc(ins)}, compiled in "
             f"{r.total_seconds:.1f} s; read from {esc(', '.join(folder.files))} (report schema "
             f"{r.schema_version}). Figures labelled <b>estimate</b> come from models, not from "
             "a simulator or vendor tool.</p>",
             "<h2>Did it pass</h2>", _verdict(folder), _headline(folder)]
    parts += _backend(folder).report_sections(folder)
    parts.append(_raw(folder))
    parts.append("</body></html>\n")
    return "".join(parts)
