"""The answers the report gives, as data: did it pass (``verdict``), what does it need
(``memory_needs``, ``fpga_fit``), and the headline rows of the text summary (``rows``)."""

from __future__ import annotations

from dataclasses import dataclass

from .folder import Folder
from .schema import CpuReport, FpgaReport


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
                                     f"{size(mem.arena_bytes_without_reuse)})"),
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
