"""The report's plots, drawn with matplotlib's Agg backend and returned as base64 PNG, so the
page embeds them and needs no network and no files beside it.

``pyplot()`` and ``png(fig)`` are for a family's own plots too (e.g. the FPGA family's, in
targets/fpga/report_page.py)."""

from __future__ import annotations

import base64
import io

from matplotlib.ticker import MaxNLocator

from .schema import ArenaTrace

W = 4.6  # inches at 100 dpi: a plot beside its table on a 1200 px page
BLUE, GREY, ORANGE, RED, GREEN = "#3b6ea8", "#9aa5b1", "#e08a2c", "#c0392b", "#2e8b57"


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> str:
    """``fig`` as base64 PNG (closed afterwards)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def time_unit(seconds: float) -> tuple[float, str]:
    """(factor, unit) that shows ``seconds`` with a few digits: µs or ms."""
    return (1e3, "ms") if seconds >= 1e-2 else (1e6, "µs")


ROLE_COLORS = {"input": GREEN, "output": ORANGE}
TEMP_COLORS = (BLUE, "#6d94c4", "#2f5a8c", "#89a9d0")


def arena(trace: ArenaTrace, arena_bytes: int) -> tuple[str, str]:
    """(title, PNG): top, each arena buffer as a box from the call that writes it to the last
    call that reads it, at its offset; below, the bytes alive during each call."""
    plt = pyplot()
    n = len(trace.calls)
    kib = 1 / 1024
    width = min(11.5, max(7.0, 0.18 * n + 4))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(width, 4.6), sharex=True,
                                      gridspec_kw={"height_ratios": [2.2, 1]})
    temps = 0
    px_per_call = 0.85 * width * 100 / (n + 0.2)
    for b in sorted(trace.buffers, key=lambda b: (b.first, b.offset)):
        lo, hi = max(b.first, -0.5) - 0.4 * (b.first >= 0), min(b.last, n - 0.5) + 0.4 * (
            b.last < n)
        color = ROLE_COLORS.get(b.role)
        if color is None:
            color, temps = TEMP_COLORS[temps % len(TEMP_COLORS)], temps + 1
        shown = max(b.bytes, 0.015 * arena_bytes)  # a 12-byte output still shows
        top.add_patch(plt.Rectangle((lo, b.offset * kib), hi - lo, shown * kib,
                                    facecolor=color, edgecolor="white", lw=0.8))
        fits = int((hi - lo) * px_per_call / 5.5)  # characters of 7 pt text the box holds
        if b.bytes >= 0.12 * arena_bytes and fits >= 6:
            label = b.name if len(b.name) <= fits else b.name[:fits - 1] + "…"
            top.text((lo + hi) / 2, (b.offset + b.bytes / 2) * kib, label, ha="center",
                     va="center", fontsize=7, color="white", clip_on=True)
    top.axhline(arena_bytes * kib, color=GREY, ls="--", lw=1)
    top.text(n - 0.5, arena_bytes * kib, f"arena {arena_bytes * kib:.1f} KiB", ha="right",
             va="bottom", fontsize=8, color="#555")
    top.set_ylim(0, arena_bytes * kib * 1.12 or 1)
    top.set_ylabel("offset (KiB)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (GREEN, BLUE, ORANGE)]
    top.legend(handles, ["graph input", "kernel result", "model output"], fontsize=8,
               loc="upper left", ncols=3, frameon=False, bbox_to_anchor=(0, 1.16))
    live = [v * kib for v in trace.live_bytes]
    colors = [RED if i == trace.peak_call else BLUE for i in range(n)]
    bottom.bar(range(n), live, color=colors, width=0.8)
    if n:
        bottom.annotate(f"peak {live[trace.peak_call]:.1f} KiB: call {trace.peak_call} "
                        f"({trace.calls[trace.peak_call][:32]})",
                        (trace.peak_call, live[trace.peak_call]), xytext=(0, 4),
                        textcoords="offset points", ha="left" if trace.peak_call < n / 2
                        else "right", fontsize=8, color=RED)
    bottom.set_ylim(0, max(live, default=1) * 1.35 or 1)
    bottom.set_ylabel("live (KiB)")
    bottom.set_xlabel("kernel call (in order; buffers left of 0 are copied in before it)")
    bottom.set_xlim(-0.6, n - 0.4)
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(max(n, 1), 25)))
    for ax in (top, bottom):
        ax.spines[["top", "right"]].set_visible(False)
    return "The activation arena over the kernel sequence", png(fig)


def compression_steps(chains: dict, names: dict | None = None) -> tuple[str, str]:
    """(title, PNG): per model chain, the bytes after each compression step (bars) and the
    metric on the test set (dots, right axis, above the bars)."""
    plt = pyplot()
    chains = {k: v for k, v in chains.items() if v}
    names = names or {}
    fig, axes = plt.subplots(1, max(len(chains), 1), figsize=(4.4 * max(len(chains), 1), 3.0),
                             squeeze=False)
    for ax, (name, rows) in zip(axes[0], chains.items()):
        xs = range(len(rows))
        kib = [r.bytes / 1024 for r in rows]
        bars = ax.bar(xs, kib, color=[GREY if r.bytes_what != "weights" else BLUE
                                      for r in rows])
        top = max(kib, default=1) or 1
        for bar, v in zip(bars, kib):
            inside = v > 0.25 * top
            ax.text(bar.get_x() + bar.get_width() / 2, v - 0.03 * top if inside else v,
                    f"{v:.1f} KiB", ha="center", va="top" if inside else "bottom",
                    fontsize=8, color="white" if inside else "#222")
        ax.set_xticks(list(xs), [r.label.replace(" ", "\n", 1) for r in rows], fontsize=8)
        ax.set_ylabel("KiB (weights; grey: ONNX file)", fontsize=8)
        ax.set_ylim(0, top * 1.6)  # the metric's dots ride above the bars
        ax.set_title(f"model {names.get(name, name)}", fontsize=9)
        scores = [(i, r.score) for i, r in enumerate(rows) if r.score is not None]
        if scores:
            right = ax.twinx()
            right.plot([i for i, _ in scores], [s for _, s in scores], "o-", color=ORANGE)
            for i, s in scores:
                right.annotate(f"{s:g}", (i, s), xytext=(0, 5), textcoords="offset points",
                               ha="center", fontsize=8, color=ORANGE)
            low, high = min(s for _, s in scores), max(s for _, s in scores)
            pad = max(0.5, 0.5 * (high - low))
            right.set_ylim(low - 5 * pad, high + pad)  # the dots in the top third
            right.set_ylabel(rows[0].metric, color=ORANGE, fontsize=8)
            right.spines[["top"]].set_visible(False)
        ax.spines[["top"]].set_visible(False)
    return "Compression steps: size (bars) and test metric (dots)", png(fig)


def targets_side_by_side(rows: list) -> tuple[str, str]:
    """(title, PNG): per target, its memory (weights and RAM, CPU) or its use of the part
    (FPGA: LUT share), and every latency figure it has on one log time axis, each bar
    labelled with where the figure comes from (estimate, RTL simulation, measured run)."""
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter
    from matplotlib.transforms import blended_transform_factory

    fig, (mem_ax, lat_ax) = plt.subplots(1, 2, figsize=(10.5, 0.62 * len(rows) + 1.5),
                                         sharey=True)
    ys = list(range(len(rows)))
    weights = [(r.weight_bytes or 0) / 1024 for r in rows]
    ram = [(r.ram_bytes or 0) / 1024 for r in rows]
    mem_ax.barh([y - 0.2 for y in ys], weights, height=0.38, color=ORANGE, label="weights")
    mem_ax.barh([y + 0.2 for y in ys], ram, height=0.38, color=BLUE,
                label="RAM (arena + workspace)")
    for y, r, w, m in zip(ys, rows, weights, ram):
        if r.weight_bytes is None:
            mem_ax.text(0, y, " " + (r.facts.memory_text or "no memory figure"),
                        va="center", fontsize=8, color="#333")
        else:
            mem_ax.text(w, y - 0.2, f" {w:.1f}", va="center", fontsize=7)
            mem_ax.text(m, y + 0.2, f" {m:.1f}", va="center", fontsize=7)
    mem_ax.set_yticks(ys, [r.name for r in rows])
    for label, r in zip(mem_ax.get_yticklabels(), rows):
        label.set_color(GREEN if r.verdict.status == "pass" else
                        RED if r.verdict.status == "fail" else "#555")
    mem_ax.set_ylim(len(rows) - 0.5, -0.5)
    mem_ax.set_xlabel("KiB")
    mem_ax.margins(x=0.15)
    mem_ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2,
                  frameon=False)
    left = blended_transform_factory(lat_ax.transAxes, lat_ax.transData)
    timed_any = []
    for y, r in zip(ys, rows):
        timed = [lat for lat in r.latencies() if lat.ns is not None][:2]
        for k, lat in enumerate(timed):
            dy = (k - (len(timed) - 1) / 2) * 0.4
            color = GREEN if "simulated" in lat.source else GREY if "estimate" in \
                lat.source else BLUE
            lat_ax.barh(y + dy, lat.ns, height=0.38, color=color)
            lat_ax.text(lat.ns, y + dy, f" {_time(lat.ns)}: {lat.source}", va="center",
                        fontsize=7)
            timed_any.append(lat.ns)
        if not timed:
            lat_ax.text(0.01, y, "no latency figure", transform=left, va="center",
                        fontsize=8, color="#555")
    lat_ax.set_xscale("log")
    if timed_any:
        lat_ax.set_xlim(min(timed_any) / 3, max(timed_any) * 300)
    lat_ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _time(v)))
    lat_ax.set_xlabel("latency per inference (log scale)")
    lat_ax.tick_params(axis="y", left=False)
    lat_ax.set_title("grey: estimate, green: RTL simulated, blue: measured run", fontsize=8,
                     loc="left")
    for ax in (mem_ax, lat_ax):
        ax.spines[["top", "right"]].set_visible(False)
    return "Targets side by side: memory and latency (target names in green: verified)", \
        png(fig)


def _time(ns: float) -> str:
    if ns < 1e3:
        return f"{ns:.3g} ns"
    return f"{ns / 1e3:.3g} µs" if ns < 1e6 else f"{ns / 1e6:.3g} ms" if ns < 1e9 else \
        f"{ns / 1e9:.3g} s"
