"""How the FPGA family summarises its report (``Backend.report_rows / report_headline /
report_sections``): the fit against the part, the latency estimate beside the RTL simulation,
the per-layer estimate, and their plots. The page frame is toolchain.reports.html."""

from __future__ import annotations

from toolchain.reports import plots
from toolchain.reports.folder import Folder
from toolchain.reports.html import esc, row, table
from toolchain.reports.schema import FpgaReport, Simulation


def rows(folder: Folder) -> list[tuple[str, str]]:
    """The rows of ``edgec report OUT``: device, strategy, latency estimate and the fit."""
    r = folder.report
    est, fit = r.estimate, r.utilization
    out = [("device", f"{r.device.name} ({r.device.part})"),
           ("strategy / io", f"{r.config.get('strategy')} / {r.config.get('io_type')}"),
           ("latency (estimate)", f"{est.latency_cycles} cycles = {est.latency_ns} ns, "
                                  f"II {est.ii_cycles}"),
           ("fits", "yes" if fit.fits else "NO")]
    for key, res in fit.resources.items():
        out.append((f"{key.upper()} (estimate)",
                    f"{res.used} of {res.available} ({res.percent:.1f}%)"))
    return out


def headline(folder: Folder) -> list[tuple[str, str]]:
    r, sim = folder.report, folder.simulation
    res = r.utilization.resources
    boxes = [(f"{r.estimate.latency_cycles} cycles", "latency (HLS estimate)")]
    if sim and sim.rtl.ran:
        boxes.append((f"{sim.rtl.latency_cycles} cycles", "latency (RTL simulated)"))
    boxes += [(f"{x.percent:.1f}%", f"{k.upper()} of the part") for k, x in res.items()]
    boxes.append(("yes" if r.utilization.fits else "NO", "fits (estimate)"))
    return boxes


def sections(folder: Folder) -> list[str]:
    r = folder.report
    fit, layers = _cost(folder, r)
    return ["<h2>What it costs: the part</h2>", row(fit, resources_plot(r)),
            "<h2>What it costs: latency</h2>",
            row(layers, latency_plot(r, folder.simulation))]


def build_facts(folder: Folder):
    """The target's row of a build page: no byte figures (the weights are in the logic), the
    share of the part as its memory cell, the estimate and the RTL-simulated latency, and why
    the two differ or agree."""
    from toolchain.reports.build import BuildFacts, Latency

    r, sim = folder.report, folder.simulation
    res = r.utilization.resources
    used = ", ".join(f"{k.upper()} {x.percent:.1f}%" for k, x in res.items() if x.used)
    fits = "" if r.utilization.fits else "<span class='over'>does not fit</span> "
    memory = f"{fits}{esc(used or 'none')} <span class='note'>of the part (estimate)</span>"
    est = r.estimate
    lat = [Latency(est.latency_cycles, "cycles", f"{est.strategy} strategy, estimate",
                   est.latency_ns)]
    if sim is not None and sim.rtl.ran and sim.rtl.latency_cycles is not None:
        lat.append(Latency(sim.rtl.latency_cycles, "cycles", "RTL simulated (Verilator)",
                           sim.rtl.latency_ns))
    lut = res.get("lut")
    text = "FPGA: weights in the logic" + (f", {lut.percent:.1f}% of the LUTs (estimate)"
                                           if lut else "")
    return BuildFacts(memory_html=memory, memory_text=text, latencies=tuple(lat),
                      note=latency_note(r, sim))


def latency_note(report: FpgaReport, sim: Simulation | None) -> str:
    """Why the latency estimate and the simulated latency are two figures, and why they
    differ (or agree) for this design: one paragraph of plain text."""
    est, clock = report.estimate, report.config.get("clock_period_ns")
    period = f"{clock:g} ns" if isinstance(clock, (int, float)) else "one"
    rtl = sim.rtl if sim is not None else None
    ran = rtl is not None and rtl.ran and rtl.latency_cycles is not None
    if est.source.startswith("estimate (da4ml"):
        text = (f"Both figures describe the same da4ml design: the estimate of "
                f"{est.latency_cycles} cycles is the depth of da4ml's pipeline (plus the "
                "cycles of any layer left to HLS, such as a softmax), read from its solution")
        if ran:
            hls_only = est.latency_cycles - rtl.latency_cycles
            text += (f"; Verilator ran that Verilog and counted {rtl.latency_cycles} cycles"
                     + (", so they agree." if hls_only == 0 else
                        f"; the {hls_only} cycle(s) between them are the HLS-only layers, "
                        "which the RTL does not hold."))
        else:
            text += "; the RTL was not simulated."
        return text
    text = (f"The estimate ({est.latency_cycles} cycles, II {est.ii_cycles}) is for hls4ml's "
            f"C++ project as Vitis HLS would schedule it with the {est.strategy} strategy: "
            "per-layer pipeline depth from the reuse factor and the strategy, at a "
            f"{period} clock. No HLS tool ran: edgec computes it from hls4ml's template rules, "
            "calibrated on published synthesis reports (targets/fpga/README.md).")
    if not ran:
        return text + (" Simulating the RTL (edgec simulate without --no-rtl) would give a "
                       "cycle count measured on a design beside it.")
    text += (f" The simulated figure ({rtl.latency_cycles} cycles, II {rtl.ii_cycles}) comes "
             "from a different implementation of the same network: da4ml's "
             "distributed-arithmetic Verilog (adder trees, no DSPs, fully parallel), which "
             f"registers only where its logic would exceed one {period} clock period. "
             "Verilator counts its cycles exactly and its outputs are compared bit for bit "
             "with the C emulation, but it does not measure the HLS design.")
    diff = est.latency_cycles - rtl.latency_cycles
    if diff == 0:
        text += " Here the two agree."
    elif diff > 0:
        text += (f" Here the HLS estimate is {diff} cycle(s) longer: HLS pipelines every layer "
                 "(multiplier, accumulation and output registers"
                 + (", and reuse of each multiplier over several cycles" if
                    est.ii_cycles > 1 or est.strategy == "resource" else "")
                 + "), while da4ml's adder trees often fit several layers into one period.")
    else:
        text += (f" Here the RTL takes {-diff} cycle(s) more: da4ml's adder trees for these "
                 "layers are deeper than one clock period allows, so it adds pipeline "
                 "registers that the HLS rules do not count.")
    return text


def _cost(folder: Folder, r: FpgaReport) -> tuple[str, str]:
    """(the fit table, the latency text and per-layer table)."""
    fit = r.utilization
    rows_ = [[k.upper(), f"{x.used:,}", f"{x.available:,}",
              f"<span class='over'>{x.percent:.1f}%</span>" if x.percent > 100
              else f"{x.percent:.1f}%"] for k, x in fit.resources.items()]
    est, sim = r.estimate, folder.simulation
    text = (f"<p><b>{'Fits' if fit.fits else 'Does NOT fit'}</b> {esc(r.device.part)} "
            f"(estimate). Latency: HLS estimate <b>{est.latency_cycles} cycles</b> = "
            f"{est.latency_ns} ns at II {est.ii_cycles} ({esc(est.strategy)} strategy)")
    if sim and sim.rtl.ran:
        text += (f"; RTL simulated under Verilator: <b>{sim.rtl.latency_cycles} cycles</b> = "
                 f"{sim.rtl.latency_ns} ns, II {sim.rtl.ii_cycles}")
    elif sim:
        text += f"; RTL not simulated ({esc(sim.rtl.reason)})"
    else:
        text += "; not simulated (run <code>edgec simulate</code>)"
    text += f".</p><p class='why'><b>Why two figures.</b> {esc(latency_note(r, sim))}</p>"
    if sim and sim.rtl.ran and sim.rtl.lut_estimate is not None:
        text += (f"<p class='note'>The da4ml RTL itself: ~{sim.rtl.lut_estimate:,} LUT, "
                 f"~{sim.rtl.ff_estimate or 0:,} FF (da4ml's estimates, beside the HLS "
                 f"estimate of {fit.resources['lut'].used:,} LUT above).</p>"
                 if "lut" in fit.resources else "")
    layers = table(["layer", "kind", "reuse", "cycles", "DSP", "LUT", "FF", "BRAM18"],
                   [[esc(l.get("name")), esc(l.get("kind")), l.get("reuse_factor", ""),
                     *(f"{l[k]:,}" if isinstance(l.get(k), int) else "" for k in
                       ("cycles", "dsp", "lut", "ff", "bram18"))] for l in est.layers],
                   numeric={2, 3, 4, 5, 6, 7})
    return (table(["resource", "used (estimate)", "available", "share"], rows_,
                  numeric={1, 2, 3}), text + "<h3>Per layer (estimate)</h3>" + layers)


def latency_plot(report: FpgaReport, sim: Simulation | None) -> tuple[str, str]:
    """(title, PNG): latency cycles, HLS estimate beside the RTL simulation when it ran."""
    plt = plots.pyplot()
    names, values, colors = [f"HLS estimate\n({report.estimate.strategy})"], \
        [report.estimate.latency_cycles], [plots.GREY]
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
        colors.append(plots.GREEN)
    fig, ax = plt.subplots(figsize=(plots.W, 2.8))
    bars = ax.bar(names, values, color=colors)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), str(v), ha="center",
                va="bottom", fontsize=9)
    ax.set_ylabel("latency (clock cycles)")
    ax.margins(y=0.15)
    ax.spines[["top", "right"]].set_visible(False)
    return ("Latency: HLS estimate beside the RTL simulation" if ran else
            "Latency: HLS estimates (RTL not simulated)"), plots.png(fig)


def resources_plot(report: FpgaReport) -> tuple[str, str]:
    """(title, PNG): each resource's estimated use in percent of the part."""
    plt = plots.pyplot()
    res = report.utilization.resources
    names = [k.upper() for k in res]
    pct = [r.percent for r in res.values()]
    fig, ax = plt.subplots(figsize=(plots.W, 2.4))
    bars = ax.barh(names, pct, color=[plots.RED if p > 100 else plots.BLUE for p in pct])
    for bar, r in zip(bars, res.values()):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f" {r.used:,} / {r.available:,} ({r.percent:.1f}%)", va="center", fontsize=8)
    ax.axvline(100, color=plots.RED, ls="--", lw=1)
    ax.set_xlim(0, max(110, max(pct, default=0) * 1.1))
    ax.set_xlabel(f"% of {report.device.part} (estimate)")
    ax.invert_yaxis()
    ax.spines[["top", "right"]].set_visible(False)
    return "Resources against the part (estimate)", plots.png(fig)
