"""The report's plots, drawn with matplotlib's Agg backend and returned as base64 PNG, so the
page embeds them and needs no network and no files beside it."""

from __future__ import annotations

import base64
import io
from collections import Counter

from matplotlib.ticker import MaxNLocator

from .schema import CpuReport, FpgaReport, Simulation

W = 4.6  # inches at 100 dpi: a plot beside its table on a 1200 px page
BLUE, GREY, ORANGE, RED, GREEN = "#3b6ea8", "#9aa5b1", "#e08a2c", "#c0392b", "#2e8b57"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def kernel_share(report: CpuReport) -> tuple[str, str]:
    """(title, PNG): per-kernel time or instructions when the report has them, else the ops
    the kernels run (calls x fused ops, by op)."""
    plt = _pyplot()
    speed = report.kernel_seconds or report.kernel_instructions
    if speed:
        what = "time (s)" if report.kernel_seconds else "instructions"
        items = sorted(speed.items(), key=lambda kv: kv[1])
        title = f"Kernel share of {what}"
    else:
        ops: Counter = Counter()
        for k in report.kernels.values():
            for op in k.ops:
                ops[op] += k.calls
        items = sorted(ops.items(), key=lambda kv: kv[1])
        what = "op instances (calls x fused ops)"
        title = "Kernel share by op (report.json has no per-kernel timing)"
    fig, ax = plt.subplots(figsize=(W, 0.32 * len(items) + 1.1))
    total = sum(v for _, v in items) or 1
    bars = ax.barh([k for k, _ in items], [v for _, v in items], color=BLUE)
    for bar, (_, v) in zip(bars, items):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f" {100 * v / total:.0f}%", va="center", fontsize=8)
    ax.set_xlabel(what)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(x=0.15)
    ax.tick_params(axis="y", labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return title, _png(fig)


def memory(report: CpuReport, ram_bytes: int | None = None) -> tuple[str, str]:
    """(title, PNG): the arena over the kernel sequence if the report has it, else bars of
    the arena with and without reuse beside workspace and weights."""
    plt = _pyplot()
    mem = report.memory
    kib = 1 / 1024
    fig, ax = plt.subplots(figsize=(W, 2.8))
    if mem.arena_over_calls:
        xs = list(range(len(mem.arena_over_calls)))
        ax.step(xs, [b * kib for b in mem.arena_over_calls], where="mid", color=BLUE)
        ax.axhline(mem.arena_bytes * kib, color=GREY, ls="--", lw=1, label="arena size")
        ax.set_xlabel("kernel call")
        ax.set_ylabel("live arena (KiB)")
        ax.legend(fontsize=8)
        title = "Arena over the kernel sequence"
    else:
        names = ["arena", "arena\nno reuse", "workspace", "weights"]
        values = [mem.arena_bytes, mem.arena_bytes_without_reuse, mem.workspace_bytes,
                  mem.weight_bytes]
        colors = [BLUE, GREY, BLUE, ORANGE]
        bars = ax.bar(names, [v * kib for v in values], color=colors)
        for bar, v in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{v * kib:.1f}",
                    ha="center", va="bottom", fontsize=8)
        if ram_bytes:
            ax.axhline(ram_bytes * kib, color=RED, ls="--", lw=1, label="device RAM")
            ax.legend(fontsize=8)
        ax.set_ylabel("KiB")
        ax.margins(y=0.15)
        title = "Memory (report.json has no per-call arena trace)"
    ax.spines[["top", "right"]].set_visible(False)
    return title, _png(fig)


def fpga_latency(report: FpgaReport, sim: Simulation | None) -> tuple[str, str]:
    """(title, PNG): latency cycles, HLS estimate beside the RTL simulation when it ran."""
    plt = _pyplot()
    names, values, colors = [f"HLS estimate\n({report.estimate.strategy})"], \
        [report.estimate.latency_cycles], [GREY]
    for strategy, est in sorted(report.estimates_by_strategy.items()):
        if strategy != report.estimate.strategy and isinstance(est, dict) \
                and "latency_cycles" in est:
            names.append(f"HLS estimate\n({strategy})")
            values.append(est["latency_cycles"])
            colors.append("#c8ced6")
    ran = bool(sim and sim.rtl.ran and sim.rtl.latency_cycles is not None)
    if ran:
        names.append("RTL simulated\n(Verilator)")
        values.append(sim.rtl.latency_cycles)
        colors.append(GREEN)
    fig, ax = plt.subplots(figsize=(W, 2.8))
    bars = ax.bar(names, values, color=colors)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), str(v), ha="center",
                va="bottom", fontsize=9)
    ax.set_ylabel("latency (clock cycles)")
    ax.margins(y=0.15)
    ax.spines[["top", "right"]].set_visible(False)
    return ("Latency: HLS estimate beside the RTL simulation" if ran else
            "Latency: HLS estimates (RTL not simulated)"), _png(fig)


def fpga_resources(report: FpgaReport) -> tuple[str, str]:
    """(title, PNG): each resource's estimated use in percent of the part."""
    plt = _pyplot()
    res = report.utilization.resources
    names = [k.upper() for k in res]
    pct = [r.percent for r in res.values()]
    fig, ax = plt.subplots(figsize=(W, 2.4))
    bars = ax.barh(names, pct, color=[RED if p > 100 else BLUE for p in pct])
    for bar, r in zip(bars, res.values()):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f" {r.used:,} / {r.available:,} ({r.percent:.1f}%)", va="center", fontsize=8)
    ax.axvline(100, color=RED, ls="--", lw=1)
    ax.set_xlim(0, max(110, max(pct, default=0) * 1.1))
    ax.set_xlabel(f"% of {report.device.part} (estimate)")
    ax.invert_yaxis()
    ax.spines[["top", "right"]].set_visible(False)
    return "Resources against the part (estimate)", _png(fig)
