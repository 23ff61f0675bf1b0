"""edgec report: the text summary and the HTML page show what compile/simulate wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from toolchain.cli import main


@pytest.fixture(scope="module")
def host_build(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    torch.save(model, root / "m.pt")
    out = root / "out"
    assert main(["compile", str(root / "m.pt"), "-t", "host", "--input-shape", "x=1,8",
                 "-o", str(out)]) == 0
    return out


def test_text_summary_matches_report_json(host_build, capsys):
    assert main(["report", str(host_build)]) == 0
    text = capsys.readouterr().out
    report = json.loads((host_build / "report.json").read_text())
    mem = report["memory"]
    assert "target" in text and "host" in text
    assert f"{report['kernel_calls_before_fusion']} -> {report['kernel_calls_after_fusion']}" \
        in text
    assert f"{mem['arena_bytes'] / 1024:.1f} KiB" in text
    assert "float32 [1, 8]" in text


def test_html_page_holds_the_reports(host_build, tmp_path, capsys):
    page = tmp_path / "r.html"
    assert main(["report", str(host_build), "--html", str(page)]) == 0
    html = page.read_text()
    report = json.loads((host_build / "report.json").read_text())
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    for kernel in report["kernels"]:
        assert kernel in html
    assert "<h2>report.json</h2>" in html and "simulation.json" not in html
    assert page.stat().st_mode & 0o044  # readable by others, like any written file


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "not an edgec output folder" in err and len(err.strip().splitlines()) == 1
