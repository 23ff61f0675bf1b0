"""How the CPU family (and Cortex-M, which adds its flash and SRAM rows) summarises its
report (``Backend.report_rows / report_headline / report_sections``): kernels, memory against
the device, the arena over the kernel sequence, and speed per kernel. The page frame is
toolchain.reports.html."""

from __future__ import annotations

from collections import Counter

from matplotlib.ticker import MaxNLocator

from toolchain.reports import plots
from toolchain.reports.folder import Folder
from toolchain.reports.html import esc, figure, row, table
from toolchain.reports.schema import CpuReport, Profile
from toolchain.reports.summary import Need, device_facts, size


def rows(folder: Folder) -> list[tuple[str, str]]:
    """The rows of ``edgec report OUT``: kernels, arena, workspace, weights, sizes."""
    r = folder.report
    mem = r.memory
    return [("kernels", f"{r.distinct_kernels} distinct, {r.kernel_calls_before_fusion} -> "
                        f"{r.kernel_calls_after_fusion} calls by fusion"),
            ("activation arena", f"{size(mem.arena_bytes)} (without reuse "
                                 f"{size(mem.arena_bytes_without_reuse)})"
             + (f"; at most {size(mem.arena_trace.peak_bytes)} alive, at call "
                f"{mem.arena_trace.peak_call} of {len(mem.arena_trace.calls)}"
                if mem.arena_trace is not None and mem.arena_trace.calls else "")),
            ("workspace", size(mem.workspace_bytes)),
            ("weights", size(mem.weight_bytes)),
            ("binary / library", f"{size(r.binary_bytes)} / {size(r.library_bytes)}"),
            ("compile", f"{r.total_seconds:.1f} s")]


def mcu_rows(folder: Folder) -> list[tuple[str, str]]:
    """A microcontroller image's flash and SRAM against the device (Cortex-M's ``mcu``)."""
    r = folder.report
    if r.mcu is None:
        return []
    u = r.mcu
    return [(f"flash on {r.target}", f"{size(u.flash_bytes)} of "
             f"{size(u.flash_available)} ({100 * u.flash_bytes / u.flash_available:.1f}%)"
             f"; libmodel.a {size(u.library_flash_bytes)}"),
            (f"SRAM on {r.target}", f"{size(u.ram_bytes)} of {size(u.ram_available)} "
             f"({100 * u.ram_bytes / u.ram_available:.1f}%, stack "
             f"{size(u.stack_bytes)}); libmodel.a {size(u.library_ram_bytes)}")]


def headline(folder: Folder) -> list[tuple[str, str]]:
    r = folder.report
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
    return boxes


def sections(folder: Folder) -> list[str]:
    r = folder.report
    ram = memory_needs(r)[2].available
    return ["<h2>What it costs: memory</h2>", row(_memory(r), memory_plot(r, ram)),
            "<h3>The arena over the kernel sequence</h3>", _arena(r),
            "<h2>What it costs: speed</h2>", row(_speed(r, folder.profile),
                                                 kernel_share_plot(r, folder.profile))]


def build_facts(folder: Folder):
    """The target's row of a build page: weights, arena + workspace, the executable, and the
    latency figures its folder holds (kernel time or instructions, the verify step's bench)."""
    from toolchain.reports.build import BuildFacts, Latency

    r, out = folder.report, []
    if r.kernel_seconds:
        ms = 1e3 * sum(r.kernel_seconds.values())
        out.append(Latency(round(ms, 4), "ms", "kernel time", ms * 1e6))
    if r.kernel_instructions:
        out.append(Latency(sum(r.kernel_instructions.values()), "instructions",
                           "kernel instructions (qemu)"))
    b = folder.bench
    if b is not None:
        ms = b["median_ms"]
        out.append(Latency(ms, "ms", f"median of {b['runs']} runs, {b['where']}", ms * 1e6))
    return BuildFacts(weight_bytes=r.memory.weight_bytes,
                      ram_bytes=r.memory.arena_bytes + r.memory.workspace_bytes,
                      binary_bytes=r.binary_bytes, latencies=tuple(out))


def memory_needs(report: CpuReport) -> list[Need]:
    """What a board needs for the model: RAM for the arena and workspace, flash for the
    weights and the code (the static binary holds both)."""
    facts = device_facts(report.target)
    ram, flash = facts.get("ram_bytes"), facts.get("flash_bytes")
    m = report.memory
    if report.mcu is not None:  # a microcontroller image: its linked sections
        mcu = report.mcu
        return [Need("activation arena", m.arena_bytes, "RAM"),
                Need("kernel workspace", m.workspace_bytes, "RAM"),
                Need("SRAM in all (image, with the stack)", mcu.ram_bytes, "RAM",
                     mcu.ram_available, True),
                Need("stack (reserved)", mcu.stack_bytes, "RAM"),
                Need("weights", m.weight_bytes, "flash"),
                Need("libmodel.a (code + weights)", mcu.library_flash_bytes, "flash"),
                Need("flash in all (image)", mcu.flash_bytes, "flash", mcu.flash_available,
                     True)]
    return [Need("activation arena", m.arena_bytes, "RAM"),
            Need("kernel workspace", m.workspace_bytes, "RAM"),
            Need("RAM in all", m.arena_bytes + m.workspace_bytes, "RAM", ram, True),
            Need("weights", m.weight_bytes, "flash"),
            Need("executable (code + weights)", report.binary_bytes, "flash", flash,
                 True)]


def _memory(r: CpuReport) -> str:
    rows_ = []
    for n in memory_needs(r):
        if n.available is None:
            offer = "not in the device file" if n.checked else "-"
        else:
            pct = 100 * n.bytes / n.available
            offer = (f"{size(n.available)} ({pct:.1f}% used)" if pct <= 100 else
                     f"<span class='over'>{size(n.available)}: does not fit ({pct:.0f}%)</span>")
        rows_.append([esc(n.what), n.where, size(n.bytes), f"{n.bytes:,}", offer])
    m = r.memory
    saved = 100 * (1 - m.arena_bytes / m.arena_bytes_without_reuse) \
        if m.arena_bytes_without_reuse else 0.0
    return (table(["what", "in", "size", "bytes", "the device has"], rows_, numeric={2, 3})
            + f"<p class='note'>Buffer reuse (liveness-based planning of {m.buffers} buffers) "
              f"saves {saved:.0f}% of the arena: {size(m.arena_bytes_without_reuse)} -> "
              f"{size(m.arena_bytes)}. Library (libmodel.a): {size(r.library_bytes)}."
              + ("" if all(n.available for n in memory_needs(r) if n.checked) else
                 f" targets/devices/{esc(r.target)}.toml gives no ram_bytes / flash_bytes to "
                 "check these against.") + "</p>")


def _arena(r: CpuReport) -> str:
    """The arena plot, what it shows, and its buffers (folded)."""
    t, m = r.memory.arena_trace, r.memory
    if t is None:
        return ("<p class='note'>This report.json has no arena trace (schema "
                f"{r.schema_version}; compile again with this edgec to get it).</p>")
    n = len(t.calls)
    peak = (f"call {t.peak_call} (<code>{esc(t.calls[t.peak_call])}</code>)" if n else "-")
    rows_ = [[b.id, esc(b.name), b.role, f"{b.offset:,}", f"{b.bytes:,}",
              "before 0" if b.first < 0 else b.first, "after the last" if b.last >= n else b.last]
             for b in sorted(t.buffers, key=lambda b: (b.first, b.offset))]
    return (figure(plots.arena(t, m.arena_bytes), 'wide')
            + f"<p class='note'>Each box is one buffer of the activation arena: its height is "
              f"its size, its place the offset the memory planner gave it, its width the calls "
              f"from the one that writes it to the last that reads it. Boxes at the same height "
              f"share bytes at different times. {len(t.buffers)} buffers over {n} kernel calls; "
              f"at most {size(t.peak_bytes)} are alive at once, at {peak}; the arena is "
              f"{size(m.arena_bytes)} (offsets are {64}-byte aligned, so it can exceed the "
              "peak).</p>"
            + "<details><summary>The arena's buffers</summary>"
            + table(["buffer", "name", "role", "offset", "bytes", "written by call",
                     "last read by call"], rows_, numeric={0, 3, 4, 5, 6}) + "</details>")


def _speed(r: CpuReport, profile: Profile | None = None) -> str:
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
        line = [i, esc(name), esc(" + ".join(k.ops)), k.calls]
        if speed:
            v = speed.get(name)
            line += ["-" if v is None else fmt(v),
                     "-" if v is None else f"{100 * v / (total or 1):.1f}%"]
        body.append(line)
    if profile is not None:
        what = (f"the median time of each kernel over {profile.runs} runs, "
                f"{esc(profile.where)}" if profile.kind == "time" else
                f"the exact guest instructions of each kernel under {esc(profile.where)} (the "
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
            f"<code>{esc(r.pipeline)}</code>, {r.threads} thread(s), {esc(r.cpu)} "
            f"{esc(' '.join(r.features))}</p>" + note
            + table(head, body, numeric={0, 3, 4, 5}))


TOP_KERNELS = 15  # the plot's bars; the rest are summed into one


def kernel_share_plot(report: CpuReport, profile: Profile | None = None) -> tuple[str, str]:
    """(title, PNG): per-kernel time or instructions from ``profile`` (OUT/profile.json) or
    the report when they have them, else the ops the kernels run (calls x fused ops, by op)."""
    plt = plots.pyplot()
    speed = report.kernel_seconds or report.kernel_instructions
    integer = True
    if profile is not None:
        if profile.kind == "time":
            factor, unit = plots.time_unit(profile.kernel_sum)
            items = [(k, f.value * factor) for k, f in profile.kernels.items()]
            what, integer = f"median time per inference ({unit})", False
            title = (f"Kernel share of time (median of {profile.runs} runs, "
                     f"{profile.where})")
        else:
            items = [(k, f.value) for k, f in profile.kernels.items()]
            what = "guest instructions per inference"
            title = f"Kernel share of instructions (exact, under {profile.where}; not time)"
    elif speed:
        what = "time (s)" if report.kernel_seconds else "instructions"
        integer = not report.kernel_seconds
        items = list(speed.items())
        title = f"Kernel share of {what}"
    else:
        ops: Counter = Counter()
        for k in report.kernels.values():
            for op in k.ops:
                ops[op] += k.calls
        items = list(ops.items())
        what = "op instances (calls x fused ops)"
        title = ("Kernel share by op (no per-kernel time or instructions: "
                 "edgec run OUT --profile measures them)")
    total = sum(v for _, v in items) or 1
    items = sorted(items, key=lambda kv: kv[1])
    if len(items) > TOP_KERNELS:
        rest = items[:len(items) - TOP_KERNELS + 1]
        items = [(f"{len(rest)} others", sum(v for _, v in rest))] + \
            items[len(items) - TOP_KERNELS + 1:]
    fig, ax = plt.subplots(figsize=(plots.W, 0.32 * len(items) + 1.1))
    bars = ax.barh([k for k, _ in items], [v for _, v in items], color=plots.BLUE)
    for bar, (_, v) in zip(bars, items):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f" {100 * v / total:.1f}%", va="center", fontsize=8)
    ax.set_xlabel(what)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=integer))
    if integer and total >= 1e4:
        from matplotlib.ticker import FuncFormatter

        big = total >= 1e7
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda v, _: "0" if v == 0 else f"{v / 1e6:g}M" if big else f"{v / 1e3:g}k"))
    ax.margins(x=0.18)
    ax.tick_params(axis="y", labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return title, plots.png(fig)


def memory_plot(report: CpuReport, ram_bytes: int | None = None) -> tuple[str, str]:
    """(title, PNG): bars of the arena with and without reuse beside workspace and weights,
    against the device's RAM when its file gives it."""
    plt = plots.pyplot()
    mem = report.memory
    kib = 1 / 1024
    fig, ax = plt.subplots(figsize=(plots.W, 2.8))
    names = ["arena", "arena\nno reuse", "workspace", "weights"]
    values = [mem.arena_bytes, mem.arena_bytes_without_reuse, mem.workspace_bytes,
              mem.weight_bytes]
    colors = [plots.BLUE, plots.GREY, plots.BLUE, plots.ORANGE]
    bars = ax.bar(names, [v * kib for v in values], color=colors)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{v * kib:.1f}",
                ha="center", va="bottom", fontsize=8)
    if ram_bytes:
        ax.axhline(ram_bytes * kib, color=plots.RED, ls="--", lw=1, label="device RAM")
        ax.legend(fontsize=8)
    ax.set_ylabel("KiB")
    ax.margins(y=0.15)
    ax.spines[["top", "right"]].set_visible(False)
    return "Memory: arena, workspace and weights (KiB)", plots.png(fig)
