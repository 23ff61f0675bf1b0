"""The answers the report gives, as data: did it pass (``verdict``) and the rows of the text
summary (``rows``: the frame's, then the family's own from its backend's ``report_rows``, then
the simulation's). What a family needs of a board lives with the family (e.g.
``toolchain.targets.cpu.report_page.memory_needs``)."""

from __future__ import annotations

from dataclasses import dataclass

from .folder import Folder


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


def rows(folder: Folder) -> list[tuple[str, str]]:
    """The headline figures, as (label, value) rows."""
    from toolchain.targets import backend_for

    m = folder.manifest
    out = [("target", m["target"]), ("family", m["family"])]
    for spec in m["inputs"]:
        out.append((f"input {spec['name']}", f"{spec['dtype']} {spec['shape']}"))
    v = verdict(folder)
    out.append(("verified", f"{v.status.upper()}: {v.detail}"))
    out += backend_for(folder.family).report_rows(folder)
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
