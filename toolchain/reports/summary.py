"""The answers the report gives, as data: did it pass (``verdict``), what does it need
(``memory_needs``, ``fpga_fit``), and the headline rows of the text summary (``rows``)."""

from __future__ import annotations

from dataclasses import dataclass

from .folder import Folder
from .schema import CpuReport, FpgaReport, Simulation


@dataclass(frozen=True)
class Verdict:
    status: str  # "pass", "fail", "simulated" or "not verified"
    detail: str


@dataclass(frozen=True)
class Need:
    """One figure a board needs, and what the device file offers for it (None: not given)."""

    what: str
    bytes: int
    where: str  # "RAM" or "flash"
    available: int | None = None  # what the device has (None: the device file does not say)
    checked: bool = False  # a total that is compared with the device's RAM or flash


def size(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 2**20:
        return f"{n / 2**20:.2f} MiB"
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def verdict(folder: Folder) -> Verdict:
    v, sim = folder.verification, folder.simulation
    rtl_bad = sim is not None and sim.rtl.ran and sim.rtl.bit_exact is False
    if v is not None:
        bad = [c.name for c in v.outputs if not c.ok]
        worst = max((c.max_rel_error for c in v.outputs), default=0.0)
        if not v.ok or rtl_bad:
            return Verdict("fail", "outputs outside tolerance vs onnxruntime: "
                           + ", ".join(bad) if bad else "RTL differs from the C emulation")
        return Verdict("pass", f"{len(v.outputs)} output(s) match onnxruntime "
                               f"(max error {worst:.2e} of the output range)")
    if sim is not None:
        c = sim.c_emulation
        text = (f"C emulation: {100 * c.argmax_agreement:.1f}% argmax agreement with onnxruntime "
                f"on {c.samples} samples")
        if sim.rtl.ran:
            text += "; RTL " + ("bit-exact" if sim.rtl.bit_exact else "MISMATCH")
        return Verdict("fail" if rtl_bad else "simulated", text)
    return Verdict("not verified", f"no verify.json: run 'edgec verify {folder.path} --json "
                                   f"{folder.path}/verify.json'")


def device_facts(name: str) -> dict:
    from toolchain.errors import EdgecError
    from toolchain.targets import device

    try:
        return dict(device(name).facts)
    except EdgecError:
        return {}


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


def rows(folder: Folder) -> list[tuple[str, str]]:
    """The headline figures, as (label, value) rows."""
    m, r = folder.manifest, folder.report
    out = [("target", m["target"]), ("family", m["family"])]
    for spec in m["inputs"]:
        out.append((f"input {spec['name']}", f"{spec['dtype']} {spec['shape']}"))
    v = verdict(folder)
    out.append(("verified", f"{v.status.upper()}: {v.detail}"))
    if isinstance(r, CpuReport):
        mem = r.memory
        out += [("kernels", f"{r.distinct_kernels} distinct, {r.kernel_calls_before_fusion} -> "
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
        if r.mcu is not None:
            u = r.mcu
            out += [(f"flash on {r.target}", f"{size(u.flash_bytes)} of "
                     f"{size(u.flash_available)} ({100 * u.flash_bytes / u.flash_available:.1f}%)"
                     f"; libmodel.a {size(u.library_flash_bytes)}"),
                    (f"SRAM on {r.target}", f"{size(u.ram_bytes)} of {size(u.ram_available)} "
                     f"({100 * u.ram_bytes / u.ram_available:.1f}%, stack "
                     f"{size(u.stack_bytes)}); libmodel.a {size(u.library_ram_bytes)}")]
    elif isinstance(r, FpgaReport):
        est, fit = r.estimate, r.utilization
        out += [("device", f"{r.device.name} ({r.device.part})"),
                ("strategy / io", f"{r.config.get('strategy')} / {r.config.get('io_type')}"),
                ("latency (estimate)", f"{est.latency_cycles} cycles = {est.latency_ns} ns, "
                                       f"II {est.ii_cycles}"),
                ("fits", "yes" if fit.fits else "NO")]
        for key, res in fit.resources.items():
            out.append((f"{key.upper()} (estimate)",
                        f"{res.used} of {res.available} ({res.percent:.1f}%)"))
    sim = folder.simulation
    if sim:
        c = sim.c_emulation
        out.append(("C emulation", f"{c.samples} samples, argmax agreement "
                                   f"{100 * c.argmax_agreement:.2f}%, max error "
                                   f"{c.max_abs_error:.4g}"))
        rtl = sim.rtl
        if rtl.ran:
            out.append(("RTL (simulated)", f"{'bit-exact' if rtl.bit_exact else 'MISMATCH'}, "
                                           f"{rtl.latency_cycles} cycles, II {rtl.ii_cycles}, "
                                           f"~{rtl.lut_estimate} LUT"))
        else:
            out.append(("RTL", f"not simulated: {rtl.reason}"))
    return out


def fpga_latency_note(report: FpgaReport, sim: Simulation | None) -> str:
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
