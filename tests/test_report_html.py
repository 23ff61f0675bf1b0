"""The HTML report rendered from the JSON: what it says for ARM and FPGA folders, and how it
looks in headless Chromium (Debian's `chromium`; CI installs it through targets/devices)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from toolchain.cli import main
from toolchain.reports import baseline

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def arm_out(tmp_path_factory) -> Path:
    """The zoo cnn, int8, for arm-a76, verified (verify.json in the folder)."""
    work = tmp_path_factory.mktemp("html_arm")
    baseline.build(baseline.CASES["arm-a76-cnn-int8"], work)
    out = work / "arm-a76-cnn-int8"
    assert main(["-q", "verify", str(out), "--json", str(out / "verify.json")]) == 0
    return out


@pytest.fixture(scope="module")
def fpga_out(tmp_path_factory) -> Path:
    """The zoo mlp16 for fpga-xcu250, simulated in C (no RTL: that build takes a minute)."""
    work = tmp_path_factory.mktemp("html_fpga")
    baseline.build(baseline.CASES["fpga-xcu250-mlp16"], work)
    out = work / "fpga-xcu250-mlp16"
    assert main(["-q", "simulate", str(out), "--dataset", "mlp16", "--samples", "50",
                 "--no-rtl"]) == 0
    return out


def _page(out: Path, dest: Path) -> str:
    assert main(["-q", "report", str(out), "--html", str(dest)]) == 0
    return dest.read_text()


def _pngs(page: str) -> list[str]:
    return re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)


def test_arm_page_answers_pass_and_cost(arm_out, tmp_path):
    page = _page(arm_out, tmp_path / "arm.html")
    report = json.loads((arm_out / "report.json").read_text())
    assert "<span class='badge pass'>PASS</span>" in page
    mem = report["memory"]
    for figure in (mem["weight_bytes"], mem["arena_bytes"], mem["workspace_bytes"],
                   mem["arena_bytes"] + mem["workspace_bytes"], report["binary_bytes"]):
        assert f"{figure:,}" in page
    assert "not in the device file" in page  # arm-a76.toml gives no RAM / flash sizes
    for kernel in report["kernels"]:
        assert kernel in page
    assert len(_pngs(page)) == 2  # kernel share, memory
    # self-contained: no link, script or image from anywhere else
    assert not re.search(r"(src|href)=['\"](?!data:)", page)
    assert "<script" not in page


def test_unverified_folder_says_so(arm_out, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(arm_out, out)
    (out / "verify.json").unlink()
    page = _page(out, tmp_path / "r.html")
    assert "NOT VERIFIED" in page and "edgec verify" in page


def test_a_failed_verification_is_red(arm_out, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(arm_out, out)
    results = json.loads((out / "verify.json").read_text())
    results[0].update(ok=False, mismatched=3)
    (out / "verify.json").write_text(json.dumps(results))
    page = _page(out, tmp_path / "r.html")
    assert "<span class='badge fail'>FAIL</span>" in page and "MISMATCH" in page


def test_fpga_page_shows_fit_and_the_estimate_beside_the_simulation(fpga_out, tmp_path):
    page = _page(fpga_out, tmp_path / "fpga.html")
    report = json.loads((fpga_out / "report.json").read_text())
    for res in report["utilization"]["resources"].values():
        assert f"{res['used']:,}" in page and f"{res['available']:,}" in page
    assert f"HLS estimate <b>{report['estimate']['latency_cycles']} cycles</b>" in page
    assert "RTL not simulated (--no-rtl)" in page
    assert "SIMULATED" in page and len(_pngs(page)) == 2
    # an RTL run: its cycles next to the estimate
    out = tmp_path / "rtl"
    shutil.copytree(fpga_out, out)
    sim = json.loads((out / "simulation.json").read_text())
    sim["rtl"] = {"ran": True, "bit_exact": True, "mismatched_values": 0, "latency_cycles": 5,
                  "latency_ns": 25.0, "ii_cycles": 1, "lut_estimate": 30000,
                  "ff_estimate": 9000, "simulator": "verilator"}
    (out / "simulation.json").write_text(json.dumps(sim))
    page = _page(out, tmp_path / "rtl.html")
    assert "RTL simulated under Verilator: <b>5 cycles</b>" in page and "RTL bit-exact" in page


def _screenshot(page: Path, png: Path, tmp: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: apt-get install chromium "
                    "(bash .ci/setup installs it)")
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--hide-scrollbars",
                    f"--user-data-dir={tmp / 'profile'}", f"--screenshot={png}",
                    "--window-size=1200,1600", page.resolve().as_uri()],
                   capture_output=True, timeout=180, check=False)


@pytest.mark.parametrize("which", ["arm", "fpga"])
def test_page_renders_in_headless_chromium(which, arm_out, fpga_out, tmp_path):
    import matplotlib.image

    out = arm_out if which == "arm" else fpga_out
    page = tmp_path / f"{which}.html"
    _page(out, page)
    png = tmp_path / f"{which}.png"
    _screenshot(page, png, tmp_path)
    assert png.is_file() and png.stat().st_size > 10_000, "chromium wrote no screenshot"
    pixels = matplotlib.image.imread(png)[..., :3]
    assert pixels.shape[:2] == (1600, 1200)
    inked = np.mean(pixels.min(axis=2) < 0.9)  # not white
    coloured = np.mean(pixels.max(axis=2) - pixels.min(axis=2) > 0.2)  # badge, plots
    keep = os.environ.get("EDGEC_SCREENSHOTS")  # a folder to keep them in, to look at
    if keep:
        shutil.copy(png, Path(keep) / png.name)
    assert inked > 0.03 and coloured > 0.002, (inked, coloured)
