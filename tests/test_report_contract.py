"""The report half of the backend contract: a backend declares its report schema
(``report_class``) and how it summarises it (``report_rows``, ``report_headline``,
``report_sections``); toolchain.reports only frames what the folder's backend gives.

A toy family registered here, with its own report class, gets its rows and sections into
``edgec report`` and the HTML page with no change in toolchain/reports/."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from toolchain.cli import main
from toolchain.reports.html import esc, table
from toolchain.reports.schema import SCHEMA_VERSION
from toolchain.targets import registry


@dataclass(frozen=True)
class BlinkReport:
    """The toy family's report.json: the frame's keys plus its own."""

    target: str
    input_model: str
    total_seconds: float
    blinks: int
    led_colours: list[str]
    family: str = "toyled"
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


class BlinkBackend(registry.Backend):
    family = "toyled"
    report_class = BlinkReport

    def describe(self, device):
        return "a toy"

    def support(self, model, device):
        return []

    def compile(self, model_path, model, device, options, stage):
        raise NotImplementedError("the toy only reports")

    def run(self, out_dir, inputs):
        raise NotImplementedError("the toy only reports")

    def report_rows(self, folder):
        return [("blinks", f"{folder.report.blinks} per inference")]

    def report_headline(self, folder):
        return [(str(folder.report.blinks), "blinks")]

    def report_sections(self, folder):
        r = folder.report
        return ["<h2>What it costs: blinks</h2>",
                table(["colour", "blinks"], [[esc(c), r.blinks] for c in r.led_colours],
                      numeric={1})]


@pytest.fixture
def toy_folder(tmp_path, monkeypatch) -> Path:
    """A compiled folder of the toy family, its backend registered for this test only."""
    monkeypatch.setitem(registry._BACKENDS, "toyled", None)  # removed again afterwards
    registry.register_backend(BlinkBackend)
    out = tmp_path / "toy"
    out.mkdir()
    (out / "edgec.json").write_text(json.dumps({
        "edgec": 1, "family": "toyled", "target": "toy-board", "options": {},
        "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 2]}]}))
    (out / "report.json").write_text(json.dumps({
        "family": "toyled", "schema_version": SCHEMA_VERSION, "target": "toy-board",
        "input_model": "toy.onnx", "total_seconds": 0.5, "blinks": 37,
        "led_colours": ["red", "<green>"]}))
    return out


def test_a_toy_backend_gets_its_rows_and_sections_on_the_page(toy_folder, tmp_path, capsys):
    page = tmp_path / "toy.html"
    assert main(["report", str(toy_folder), "--html", str(page)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^family\s+toyled$", text, re.M)
    assert re.search(r"^blinks\s+37 per inference$", text, re.M)
    assert re.search(r"^verified\s+NOT VERIFIED", text, re.M)
    html = page.read_text()
    # the frame: title, verdict, the JSON files; the backend's: headline box and section
    assert "edgec report: toy (toy-board)" in html and "The JSON files" in html
    assert "<div class='head'><div><b>37</b><span>blinks</span></div></div>" in html
    assert "<h2>What it costs: blinks</h2>" in html
    assert "<td>&lt;green&gt;</td><td class='n'>37</td>" in html
    # nothing of another family leaks in
    assert "kernel" not in html.lower() and "estimate)" not in html


def test_the_toy_report_is_read_as_its_declared_class(toy_folder, capsys):
    report = json.loads((toy_folder / "report.json").read_text())
    report["blinks"] = "many"
    (toy_folder / "report.json").write_text(json.dumps(report))
    assert main(["report", str(toy_folder)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'blinks' should be int" in err


def test_an_unknown_family_is_one_line(toy_folder, capsys):
    report = json.loads((toy_folder / "report.json").read_text())
    (toy_folder / "report.json").write_text(json.dumps({**report, "family": "nosuch"}))
    assert main(["report", str(toy_folder)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown family 'nosuch'" in err
    assert "fpga" in err  # the known families are listed


CORE = Path(__file__).resolve().parents[1] / "toolchain" / "reports"


@pytest.mark.parametrize("module", ["html.py", "summary.py", "plots.py", "folder.py", "build.py",
                                    "buildpage.py"])
def test_the_single_folder_report_core_names_no_family(module):
    source = (CORE / module).read_text()
    assert not re.search(r"\b(CpuReport|FpgaReport|McuMemory)\b", source)
    assert not re.search(r"[\"'](cpu|cortexm|fpga|arm)[\"']", source)
