"""The HTML summary of an ``edgec build`` output folder (``edgec report BUILD_OUT --html F``):
did every target pass, and what each compression step and each target costs, side by side.
Self-contained like the per-target page (``html``), which each target row points to."""

from __future__ import annotations

from . import plots
from .build import BuildFolder, TargetRow
from .html import STYLE, esc as _e, figure as _figure, table as _table
from .summary import size


def _max_error(row: TargetRow) -> str:
    v = row.folder.verification
    if v is None:
        return "not verified"
    return f"{max((c.max_rel_error for c in v.outputs), default=0.0):.1e}"


def _status(row: TargetRow) -> str:
    css = row.verdict.status.split()[0]
    return f"<span class='tag {css}'>{_e(row.verdict.status.upper())}</span>"


def _latency(row: TargetRow) -> str:
    lat = row.latencies()
    if not lat:
        return "<span class='note'>not measured</span>"
    def figure(x) -> str:
        if x.unit == "ms" and x.ns is not None:
            return f"<b>{plots._time(x.ns)}</b>"
        text = f"<b>{x.value:,g} {_e(x.unit)}</b>"
        return text + (f" = {plots._time(x.ns)}" if x.ns is not None else "")

    return "<br>".join(f"{figure(x)} <span class='note'>({_e(x.source)})</span>" for x in lat)


def _memory(row: TargetRow) -> str:
    """The RAM a board needs, or the family's own cell (an FPGA's share of the part)."""
    facts = row.facts
    return facts.memory_html if facts.memory_html is not None else f"{size(row.ram_bytes)}"


def _targets(b: BuildFolder) -> str:
    rows = []
    for t in b.targets:
        emu = t.folder.simulation
        check = _max_error(t)
        if emu is not None:
            check += (f"; C emulation {100 * emu.c_emulation.argmax_agreement:.1f}% argmax "
                      f"agreement on {emu.c_emulation.samples} samples")
        rows.append([f"<b>{_e(t.name)}</b><br><span class='note'>{_e(t.family)}</span>",
                     _e(b.sources.get(t.chain, t.chain)), _status(t), check,
                     size(t.weight_bytes) if t.weight_bytes is not None else
                     "<span class='note'>in the logic</span>", _memory(t),
                     size(t.binary_bytes) if t.binary_bytes is not None else "-",
                     _latency(t)])
    table = _table(["target", "model", "verified", "max error (of range)", "weights",
                    "RAM (arena + workspace) / part", "executable", "latency per inference"],
                   rows, numeric={4, 6})
    table += ("<p class='note'>Each target's own page (memory, arena, kernels, resources): "
              + ", ".join(f"<code>edgec report {_e(t.folder.path.relative_to(b.path))} "
                          f"--html {_e(t.name)}.html</code>" for t in b.targets) + ".</p>")
    if any(not t.latencies() for t in b.targets):
        table += ("<p class='note'>Not measured: that target's folders hold no time or "
                  "instruction count (compile does not run the model).</p>")
    why = "".join(f"<p class='why'><b>{_e(t.name)}: why two latency figures.</b> "
                  f"{_e(t.facts.note)}</p>" for t in b.targets if t.facts.note)
    return table + why


def _chains(b: BuildFolder) -> str:
    parts = []
    for name, rows in b.chains.items():
        if not rows:
            continue
        targets = ", ".join(t.name for t in b.targets if t.chain == name) or "no target"
        parts.append(f"<h3>Model {_e(b.sources.get(name, name))} "
                     f"<span class='note'>(for {_e(targets)})</span></h3>")
        first = rows[0].bytes
        parts.append(_table(
            ["step", rows[0].metric + " (test set)", "size", "of the original", "non-zero "
             "parameters", "seconds"],
            [[_e(r.label), "-" if r.score is None else f"{r.score:g}",
              f"{size(r.bytes)} <span class='note'>{_e(r.bytes_what)}</span>",
              f"{100 * r.bytes / first:.0f}%" if first else "-",
              "-" if r.nonzero_params is None else f"{r.nonzero_params:,}",
              "-" if r.seconds is None else f"{r.seconds:.2f}"] for r in rows],
            numeric={1, 2, 3, 4, 5}))
    return "".join(parts)


def render(b: BuildFolder) -> str:
    title = f"edgec build: {b.path.name}"
    passed = sum(t.verdict.status == "pass" for t in b.targets)
    failed = sum(t.verdict.status == "fail" for t in b.targets)
    css = "fail" if failed else "pass" if passed == len(b.targets) and b.targets else "not"
    badge = ("FAIL" if failed else "PASS" if css == "pass" else "INCOMPLETE")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>",
             f"<p class='note'>Read from {_e(b.path.name)}/: build.json, each model's "
             "compress.json and export.json, and each target's compile/report.json with its "
             "verify/verify.json and simulate/simulation.json. Figures labelled "
             "<b>estimate</b> come from models, not from a simulator or vendor tool.</p>",
             "<h2>Did it pass</h2>",
             f"<div class='verdict'><span class='badge {css}'>{badge}</span><span>"
             f"{passed} of {len(b.targets)} target(s) verified against onnxruntime"
             + (f", {failed} failed" if failed else "") + "</span></div>"]
    if any(b.chains.values()):
        parts += ["<h2>Compression steps</h2>", _chains(b),
                  _figure(plots.compression_steps(b.chains, b.sources), "wide")]
    if b.targets:
        parts += ["<h2>Targets side by side</h2>", _targets(b),
                  _figure(plots.targets_side_by_side(b.targets), "wide")]
    parts.append("</body></html>\n")
    return "".join(parts)
