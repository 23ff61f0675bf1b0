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


BUILD = """\
[model]
source = "mlp"

[compress]
prune = 0.5
epochs = 1
quantize = "int8"

[[target]]
name = "host"
"""


@pytest.fixture(scope="module")
def build_out(tmp_path_factory, fpga_out) -> Path:
    """``edgec build`` of the zoo mlp (prune 50%, int8) for host; then the fpga_out folder is
    added as a second target of its own model, as a build with an FPGA target lays it out."""
    from toolchain import models

    root = tmp_path_factory.mktemp("html_build")
    (root / "cache").mkdir()
    (root / "cache" / "zoo").symlink_to(models.cache_folder().resolve(),
                                        target_is_directory=True)
    (root / "edgec.toml").write_text(BUILD)
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEC_CACHE", str(root / "cache"))
        assert main(["-q", "build", str(root / "edgec.toml"), "-o", str(out)]) == 0
    fpga = out / "fpga-xcu250"
    shutil.copytree(fpga_out, fpga / "compile")
    (fpga / "simulate").mkdir()
    shutil.move(fpga / "compile" / "simulation.json", fpga / "simulate" / "simulation.json")
    (fpga / "load").mkdir()
    (fpga / "load" / "source.json").write_text(json.dumps({"source": "mlp16", "kind": "zoo"}))
    config = json.loads((out / "build.json").read_text())
    config["target"].append({"name": "fpga-xcu250"})
    (out / "build.json").write_text(json.dumps(config))
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
    assert len(_pngs(page)) == 3  # memory, arena, kernel share
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
    # beside each other, and why they differ: two implementations of the same network
    why = re.search(r"<p class='why'>(.*?)</p>", page).group(1)
    est = report["estimate"]["latency_cycles"]
    assert f"The estimate ({est} cycles" in why and "No HLS tool ran" in why
    assert "simulated figure (5 cycles, II 1)" in why and "da4ml" in why
    assert {0: "Here the two agree."}.get(est - 5, f"{abs(est - 5)} cycle(s)") in why


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


@pytest.mark.parametrize("which", ["arm", "fpga", "build"])
def test_page_renders_in_headless_chromium(which, arm_out, fpga_out, build_out, tmp_path):
    import matplotlib.image

    out = {"arm": arm_out, "fpga": fpga_out, "build": build_out}[which]
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


def test_arm_page_draws_the_arena_over_the_kernel_sequence(arm_out, tmp_path):
    page = _page(arm_out, tmp_path / "arm.html")
    trace = json.loads((arm_out / "report.json").read_text())["memory"]["arena_trace"]
    assert "The arena over the kernel sequence" in page
    assert f"{len(trace['buffers'])} buffers over {len(trace['calls'])} kernel calls" in page
    for b in trace["buffers"]:  # the folded table names every buffer and its offset
        assert f"<td class='n'>{b['offset']:,}</td><td class='n'>{b['bytes']:,}</td>" in page


def test_build_page_puts_steps_and_targets_side_by_side(build_out, tmp_path, capsys):
    page = _page(build_out, tmp_path / "build.html")
    compress = json.loads((build_out / "compress" / "compress.json").read_text())
    assert [s["step"] for s in compress["steps"]] == ["prune", "quantize"]
    for m in [compress["initial"]] + [s["after"] for s in compress["steps"]]:
        assert f"<td class='n'>{m['score']:g}</td>" in page  # the metric after each step
    assert "<td>prune 0.5</td>" in page and "<td>quantize int8</td>" in page
    host = json.loads((build_out / "host" / "compile" / "report.json").read_text())
    fpga = json.loads((build_out / "fpga-xcu250" / "compile" / "report.json").read_text())
    assert page.count("<span class='tag pass'>PASS</span>") == 1  # host verified
    assert "<span class='tag simulated'>SIMULATED</span>" in page  # fpga: C emulation only
    assert f"<b>{fpga['estimate']['latency_cycles']} cycles</b>" in page
    assert "fpga-xcu250: why two latency figures." in page
    mem = host["memory"]
    from toolchain.reports.summary import size
    assert size(mem["weight_bytes"]) in page
    assert size(mem["arena_bytes"] + mem["workspace_bytes"]) in page
    bench = json.loads((build_out / "host" / "verify" / "bench.json").read_text())
    from toolchain.reports.plots import _time
    assert f"<b>{_time(bench['median_ms'] * 1e6)}</b>" in page and bench["runs"] >= 1
    assert len(_pngs(page)) == 2  # the compression steps, the targets
    own = _page(build_out / "host" / "compile", tmp_path / "host.html")  # the target's page
    assert f"{_time(bench['median_ms'] * 1e6)}</b><span>per inference (median of " \
           f"{bench['runs']} runs, on this machine)" in own
    assert not re.search(r"(src|href)=['\"](?!data:)", page) and "<script" not in page
    # the text summary and --json say the same
    assert main(["--json", "report", str(build_out)]) == 0
    doc = json.loads(capsys.readouterr().out)["result"]
    assert [t["name"] for t in doc["targets"]] == ["host", "fpga-xcu250"]
    assert doc["targets"][0]["verdict"]["status"] == "pass"
    assert [r["label"] for r in doc["steps"]["main"]] == ["as trained", "prune 0.5",
                                                          "quantize int8", "ONNX export"]


def test_an_unfinished_build_is_one_line(tmp_path, capsys):
    (tmp_path / "build.json").write_text(json.dumps({"target": [{"name": "host"}]}))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no finished step" in err and len(err.strip().splitlines()) == 1
