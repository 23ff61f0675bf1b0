"""The HTML report: one self-contained page rendered from the validated JSON (no network, plots
embedded as PNG). On top it answers "did it pass, and what does it cost"; the JSON files follow
as tables, folded."""

from __future__ import annotations

import html
import json

from . import plots
from .folder import Folder
from .schema import CpuReport, FpgaReport, Profile, to_json
from .summary import fpga_latency_note, memory_needs, size, verdict

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


def _e(text) -> str:
    return html.escape(str(text))


def _table(head: list[str], body: list[list], numeric: set[int] = frozenset()) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    rows = "".join("<tr>" + "".join(
        f"<td class='n'>{c}</td>" if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>" for r in body)
    return f"<table><tr>{th}</tr>{rows}</table>"


def _figure(title_png: tuple[str, str], css: str = "") -> str:
    title, png = title_png
    return (f"<figure{css and f' class={css!r}'}><img alt='{_e(title)}' src='data:image/png;base64,{png}'>"
            f"<figcaption>{_e(title)}</figcaption></figure>")


def json_table(value, depth: int = 0) -> str:
    """Scalars and flat lists as text; dicts as key/value tables; lists of dicts as one table
    with a column per key."""
    flat = not isinstance(value, (dict, list)) or (
        isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value))
    if flat:
        if isinstance(value, float):
            return f"{value:.6g}"
        return _e(", ".join(map(str, value)) if isinstance(value, list) else value)
    if depth > 4:
        return f"<code>{_e(json.dumps(value)[:200])}</code>"
    if isinstance(value, dict):
        if not value:
            return "<i>empty</i>"
        return "<table class='kv'>" + "".join(
            f"<tr><th>{_e(k)}</th><td>{json_table(v, depth + 1)}</td></tr>"
            for k, v in value.items()) + "</table>"
    if all(isinstance(v, dict) for v in value):
        keys: list[str] = []
        for v in value:
            keys += [k for k in v if k not in keys]
        return _table(keys, [[json_table(v.get(k, ""), depth + 1) for k in keys]
                             for v in value])
    return "<ul>" + "".join(f"<li>{json_table(v, depth + 1)}</li>" for v in value) + "</ul>"


# ---------------------------------------------------------------- sections
def _verdict(folder: Folder) -> str:
    v = verdict(folder)
    css = v.status.split()[0]
    parts = [f"<div class='verdict'><span class='badge {css}'>{_e(v.status.upper())}</span>"
             f"<span>{_e(v.detail)}</span></div>"]
    if folder.verification:
        parts.append(_table(
            ["output", "max abs error", "of range", "tolerance", "mismatched", "result"],
            [[_e(c.name), f"{c.max_abs_error:.3e}", f"{c.max_rel_error:.3e}",
              f"{c.tolerance:.1e}" + (f" or {c.abs_tolerance:.4g}" if c.abs_tolerance else ""),
              c.mismatched, "ok" if c.ok else "<span class='over'>MISMATCH</span>"]
             for c in folder.verification.outputs], numeric={1, 2, 4}))
    return "".join(parts)


def _cpu_memory(r: CpuReport) -> str:
    rows = []
    for n in memory_needs(r):
        if n.available is None:
            offer = "not in the device file" if n.checked else "-"
        else:
            pct = 100 * n.bytes / n.available
            offer = (f"{size(n.available)} ({pct:.1f}% used)" if pct <= 100 else
                     f"<span class='over'>{size(n.available)}: does not fit ({pct:.0f}%)</span>")
        rows.append([_e(n.what), n.where, size(n.bytes), f"{n.bytes:,}", offer])
    m = r.memory
    saved = 100 * (1 - m.arena_bytes / m.arena_bytes_without_reuse) \
        if m.arena_bytes_without_reuse else 0.0
    return (_table(["what", "in", "size", "bytes", "the device has"], rows, numeric={2, 3})
            + f"<p class='note'>Buffer reuse (liveness-based planning of {m.buffers} buffers) "
              f"saves {saved:.0f}% of the arena: {size(m.arena_bytes_without_reuse)} -> "
              f"{size(m.arena_bytes)}. Library (libmodel.a): {size(r.library_bytes)}."
              + ("" if all(n.available for n in memory_needs(r) if n.checked) else
                 f" targets/devices/{_e(r.target)}.toml gives no ram_bytes / flash_bytes to "
                 "check these against.") + "</p>")


def _arena(r: CpuReport) -> str:
    """The arena plot, what it shows, and its buffers (folded)."""
    t, m = r.memory.arena_trace, r.memory
    if t is None:
        return ("<p class='note'>This report.json has no arena trace (schema "
                f"{r.schema_version}; compile again with this edgec to get it).</p>")
    n = len(t.calls)
    peak = (f"call {t.peak_call} (<code>{_e(t.calls[t.peak_call])}</code>)" if n else "-")
    rows = [[b.id, _e(b.name), b.role, f"{b.offset:,}", f"{b.bytes:,}",
             "before 0" if b.first < 0 else b.first, "after the last" if b.last >= n else b.last]
            for b in sorted(t.buffers, key=lambda b: (b.first, b.offset))]
    return (_figure(plots.arena(t, m.arena_bytes), 'wide')
            + f"<p class='note'>Each box is one buffer of the activation arena: its height is "
              f"its size, its place the offset the memory planner gave it, its width the calls "
              f"from the one that writes it to the last that reads it. Boxes at the same height "
              f"share bytes at different times. {len(t.buffers)} buffers over {n} kernel calls; "
              f"at most {size(t.peak_bytes)} are alive at once, at {peak}; the arena is "
              f"{size(m.arena_bytes)} (offsets are {64}-byte aligned, so it can exceed the "
              "peak).</p>"
            + "<details><summary>The arena's buffers</summary>"
            + _table(["buffer", "name", "role", "offset", "bytes", "written by call",
                      "last read by call"], rows, numeric={0, 3, 4, 5, 6}) + "</details>")


def _cpu_speed(r: CpuReport, profile: Profile | None = None) -> str:
    """The kernels in call order with their time or instructions and share, from
    OUT/profile.json when it exists (else report.json's optional figures), and where the
    figures come from."""
    speed, head_unit, fmt = r.kernel_seconds or r.kernel_instructions, "", str
    if profile is not None:
        speed = {k: f.value for k, f in profile.kernels.items()}
        if profile.kind == "time":
            factor, unit = plots.time_unit(profile.kernel_sum)
            head_unit, fmt = f"median time ({unit})", lambda v: f"{v * factor:,.2f}"
        else:
            unit, head_unit, fmt = "instructions", "instructions", lambda v: f"{v:,.0f}"
    elif speed:
        head_unit = "seconds" if r.kernel_seconds else "instructions"
        fmt = (lambda v: f"{v:.6g}") if r.kernel_seconds else (lambda v: f"{v:,}")
    head = ["#", "kernel", "fused ops", "calls"] + ([head_unit, "share"] if speed else [])
    total = sum(speed.values()) if speed else 0
    body = []
    for i, (name, k) in enumerate(r.kernels.items()):
        row = [i, _e(name), _e(" + ".join(k.ops)), k.calls]
        if speed:
            v = speed.get(name)
            row += ["-" if v is None else fmt(v),
                    "-" if v is None else f"{100 * v / (total or 1):.1f}%"]
        body.append(row)
    if profile is not None:
        what = (f"the median time of each kernel over {profile.runs} runs, "
                f"{_e(profile.where)}" if profile.kind == "time" else
                f"the exact guest instructions of each kernel under {_e(profile.where)} (the "
                "counting plugin of examples/armcount; emulated: instructions, not time)")
        note = (f"<p class='note'>From profile.json (<code>edgec run OUT --profile</code>): "
                f"{what}. The kernels sum to {fmt(profile.kernel_sum)} {unit}, "
                f"{100 * profile.kernel_sum / (profile.total or 1):.1f}% of the whole "
                f"inference's {fmt(profile.total)} {unit} ("
                + ("the rest is the driver: copying inputs and outputs, the call loop"
                   if profile.kernel_sum <= profile.total else
                   "more than the whole: each kernel's figure includes the timer's own cost, "
                   "which the whole run, timed apart, does not")
                + ").</p>")
    elif speed:
        note = ""
    else:
        note = ("<p class='note'>No per-kernel time or instruction count yet: "
                "<code>edgec run OUT --profile</code> measures them (time natively, "
                "instructions under qemu). The kernels in call order.</p>")
    return (f"<p>{r.kernel_calls_before_fusion} -> {r.kernel_calls_after_fusion} kernel calls "
            f"after fusion, {r.distinct_kernels} distinct kernels; pipeline "
            f"<code>{_e(r.pipeline)}</code>, {r.threads} thread(s), {_e(r.cpu)} "
            f"{_e(' '.join(r.features))}</p>" + note
            + _table(head, body, numeric={0, 3, 4, 5}))


def _fpga_cost(folder: Folder, r: FpgaReport) -> tuple[str, str]:
    """(the fit table, the latency text and per-layer table)."""
    fit = r.utilization
    rows = [[k.upper(), f"{x.used:,}", f"{x.available:,}",
             f"<span class='over'>{x.percent:.1f}%</span>" if x.percent > 100
             else f"{x.percent:.1f}%"] for k, x in fit.resources.items()]
    est, sim = r.estimate, folder.simulation
    text = (f"<p><b>{'Fits' if fit.fits else 'Does NOT fit'}</b> {_e(r.device.part)} "
            f"(estimate). Latency: HLS estimate <b>{est.latency_cycles} cycles</b> = "
            f"{est.latency_ns} ns at II {est.ii_cycles} ({_e(est.strategy)} strategy)")
    if sim and sim.rtl.ran:
        text += (f"; RTL simulated under Verilator: <b>{sim.rtl.latency_cycles} cycles</b> = "
                 f"{sim.rtl.latency_ns} ns, II {sim.rtl.ii_cycles}")
    elif sim:
        text += f"; RTL not simulated ({_e(sim.rtl.reason)})"
    else:
        text += "; not simulated (run <code>edgec simulate</code>)"
    text += f".</p><p class='why'><b>Why two figures.</b> {_e(fpga_latency_note(r, sim))}</p>"
    if sim and sim.rtl.ran and sim.rtl.lut_estimate is not None:
        text += (f"<p class='note'>The da4ml RTL itself: ~{sim.rtl.lut_estimate:,} LUT, "
                 f"~{sim.rtl.ff_estimate or 0:,} FF (da4ml's estimates, beside the HLS "
                 f"estimate of {fit.resources['lut'].used:,} LUT above).</p>"
                 if "lut" in fit.resources else "")
    layers = _table(["layer", "kind", "reuse", "cycles", "DSP", "LUT", "FF", "BRAM18"],
                    [[_e(l.get("name")), _e(l.get("kind")), l.get("reuse_factor", ""),
                      *(f"{l[k]:,}" if isinstance(l.get(k), int) else "" for k in
                        ("cycles", "dsp", "lut", "ff", "bram18"))] for l in est.layers], numeric={2, 3, 4, 5, 6, 7})
    return (_table(["resource", "used (estimate)", "available", "share"], rows,
                   numeric={1, 2, 3}), text + "<h3>Per layer (estimate)</h3>" + layers)


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
        f"<details><summary>{_e(name)}</summary>{json_table(data)}</details>"
        for name, data in parts)


def _row(text: str, figure: tuple[str, str]) -> str:
    return f"<div class='row'><div>{text}</div>{_figure(figure)}</div>"


def _headline(folder: Folder) -> str:
    """The figures that say what the build costs, as a row of boxes under the verdict."""
    r, sim = folder.report, folder.simulation
    if isinstance(r, CpuReport):
        m = r.memory
        boxes = [(size(m.arena_bytes + m.workspace_bytes), "RAM (arena + workspace)"),
                 (size(m.weight_bytes), "weights"), (size(r.binary_bytes), "static executable"),
                 (str(r.kernel_calls), "kernel calls")]
        if folder.bench is not None:
            b = folder.bench
            boxes.append((plots._time(b["median_ms"] * 1e6), f"per inference (median of "
                          f"{b['runs']} runs, {b['where']})"))
        prof = folder.profile
        if prof is not None and prof.kind == "time":
            boxes.append((plots._time(prof.total * 1e9), f"per inference (profile: median of "
                          f"{prof.runs} runs, {prof.where})"))
        elif prof is not None:
            boxes.append((f"{prof.total:,.0f}", f"instructions per inference (profile: exact, "
                          f"{prof.where})"))
    else:
        res = r.utilization.resources
        boxes = [(f"{r.estimate.latency_cycles} cycles", "latency (HLS estimate)")]
        if sim and sim.rtl.ran:
            boxes.append((f"{sim.rtl.latency_cycles} cycles", "latency (RTL simulated)"))
        boxes += [(f"{x.percent:.1f}%", f"{k.upper()} of the part") for k, x in res.items()]
        boxes.append(("yes" if r.utilization.fits else "NO", "fits (estimate)"))
    return "<div class='head'>" + "".join(f"<div><b>{_e(v)}</b><span>{_e(k)}</span></div>"
                                          for v, k in boxes) + "</div>"


def render(folder: Folder) -> str:
    m, r = folder.manifest, folder.report
    title = f"edgec report: {folder.path.name} ({m['target']})"
    ins = ", ".join(f"{s['name']} {s['dtype']}{s['shape']}" for s in m["inputs"])
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>",
             f"<p class='note'>model {_e(r.input_model)}, input {_e(ins)}, compiled in "
             f"{r.total_seconds:.1f} s; read from {_e(', '.join(folder.files))} (report schema "
             f"{r.schema_version}). Figures labelled <b>estimate</b> come from models, not from "
             "a simulator or vendor tool.</p>",
             "<h2>Did it pass</h2>", _verdict(folder), _headline(folder)]
    if isinstance(r, CpuReport):
        ram = memory_needs(r)[2].available
        parts += ["<h2>What it costs: memory</h2>", _row(_cpu_memory(r), plots.memory(r, ram)),
                  "<h3>The arena over the kernel sequence</h3>", _arena(r),
                  "<h2>What it costs: speed</h2>", _row(_cpu_speed(r, folder.profile),
                                                              plots.kernel_share(r, folder.profile))]
    elif isinstance(r, FpgaReport):
        fit, layers = _fpga_cost(folder, r)
        parts += ["<h2>What it costs: the part</h2>", _row(fit, plots.fpga_resources(r)),
                  "<h2>What it costs: latency</h2>",
                  _row(layers, plots.fpga_latency(r, folder.simulation))]
    parts.append(_raw(folder))
    parts.append("</body></html>\n")
    return "".join(parts)
