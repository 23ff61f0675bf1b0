"""edgec report: the text summary and the HTML page show what compile/simulate wrote; the
report schema and the baselines (toolchain.reports); the global --quiet / --json options and
the exit codes, which every command shares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from toolchain.cli import EXIT_CODES, main
from toolchain.reports import SchemaError, baseline, load_report
from toolchain.reports.schema import SCHEMA_VERSION, CpuReport, from_json, to_json
from toolchain.reports.summary import size

README = Path(__file__).resolve().parents[1] / "README.md"


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
    assert f"activation arena  {size(mem['arena_bytes'])} (without reuse" in text
    assert "float32 [1, 8]" in text


def test_html_page_holds_the_reports(host_build, tmp_path, capsys):
    page = tmp_path / "r.html"
    assert main(["report", str(host_build), "--html", str(page)]) == 0
    html = page.read_text()
    report = json.loads((host_build / "report.json").read_text())
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    for kernel in report["kernels"]:
        assert kernel in html
    assert "<summary>report.json</summary>" in html and "simulation.json" not in html
    assert "NOT VERIFIED" in html
    assert page.stat().st_mode & 0o044  # readable by others, like any written file


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "not an edgec output folder" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- the schema
def test_compile_writes_the_documented_schema(host_build):
    report = load_report(host_build / "report.json")
    assert isinstance(report, CpuReport) and report.schema_version == SCHEMA_VERSION
    assert report.extra == {}, f"keys compile writes that schema.py does not document: " \
                               f"{sorted(report.extra)}"
    assert from_json(CpuReport, to_json(report)) == report


@pytest.mark.parametrize("change, needle", [
    (lambda r: r["memory"].pop("arena_bytes"), "key 'memory.arena_bytes' is missing"),
    (lambda r: r.update(kernel_calls="ten"), "'kernel_calls' should be int, got str"),
    (lambda r: r["kernels"][next(iter(r["kernels"]))].update(ops=3), "should be a list"),
    (lambda r: r.update(schema_version=99), "schema_version 99"),
])
def test_a_report_off_the_schema_is_one_line(host_build, tmp_path, capsys, change, needle):
    out = tmp_path / "out"
    out.mkdir()
    (out / "edgec.json").write_text((host_build / "edgec.json").read_text())
    report = json.loads((host_build / "report.json").read_text())
    change(report)
    (out / "report.json").write_text(json.dumps(report))
    with pytest.raises(SchemaError, match="report.json"):
        load_report(out / "report.json")
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------- the arena trace
def _plan():
    """x -> a -> t1; t1 -> b -> t2; (t1, t2) -> c -> y, with a constant read by a."""
    import importlib

    from toolchain.optimizer import memplan

    plan_mod = importlib.import_module(memplan.KernelPlan.__module__)
    plan = plan_mod.KernelPlan()
    x = plan.add("input", (1, 16), "float32", 0)
    w = plan.add("const", (16, 64), "float32", 0)
    t1, t2 = plan.add("temp", (1, 64), "float32"), plan.add("temp", (1, 64), "float32")
    y = plan.add("temp", (1, 16), "float32")
    plan.inputs, plan.outputs = [x], [y]
    plan.calls = [plan_mod.KernelCall("a", (x, w, t1), 1), plan_mod.KernelCall("b", (t1, t2), 1),
                  plan_mod.KernelCall("c", (t1, t2, y), 1)]
    return plan, memplan.plan_memory(plan)


def test_arena_trace_follows_the_lifetimes():
    from toolchain.reports.arena import arena_trace

    plan, mem = _plan()
    t = arena_trace(plan, mem, ["x"], ["y"])
    assert t["calls"] == ["a", "b", "c"]
    # call 0: x (64 B) + t1 (256); call 1: t1 + t2; call 2: t1 + t2 + y (64)
    assert t["live_bytes"] == [320, 512, 576] and (t["peak_bytes"], t["peak_call"]) == (576, 2)
    by_name = {b["name"]: b for b in t["buffers"]}
    assert set(by_name) == {"x", "a", "b", "y"}  # the constant is not in the arena
    assert (by_name["x"]["first"], by_name["x"]["last"], by_name["x"]["role"]) == (-1, 0, "input")
    assert (by_name["y"]["first"], by_name["y"]["last"], by_name["y"]["role"]) == (2, 3, "output")
    assert by_name["a"]["role"] == "temp" and by_name["a"]["bytes"] == 256
    # buffers alive at the same call never share a byte; all lie inside the arena
    for i in range(3):
        alive = sorted((b["offset"], b["offset"] + b["bytes"]) for b in t["buffers"]
                       if b["first"] <= i <= b["last"])
        assert all(hi <= lo for (_, hi), (lo, _) in zip(alive, alive[1:])), (i, alive)
        assert alive[-1][1] <= mem.arena_bytes
    doc = {"calls": t["calls"], "live_bytes": t["live_bytes"], "buffers": t["buffers"],
           "peak_bytes": t["peak_bytes"], "peak_call": t["peak_call"]}
    from toolchain.reports.schema import ArenaTrace
    assert to_json(from_json(ArenaTrace, doc)) == doc


def test_compile_writes_the_arena_trace(host_build):
    report = load_report(host_build / "report.json")
    t = report.memory.arena_trace
    assert t is not None and len(t.calls) == report.kernel_calls
    assert {k: t.calls.count(k) for k in report.kernels} == {
        k: v.calls for k, v in report.kernels.items()}
    assert max(t.live_bytes) == t.peak_bytes <= report.memory.arena_bytes
    assert len(t.buffers) == report.memory.buffers
    manifest = json.loads((host_build / "edgec.json").read_text())
    names = {b.name for b in t.buffers if b.role != "temp"}
    assert names == {s["name"] for s in manifest["inputs"] + manifest["outputs"]}


def test_a_version_1_report_still_reads(host_build, tmp_path):
    data = json.loads((host_build / "report.json").read_text())
    data.pop("schema_version", None)
    data["memory"].pop("arena_trace")
    (tmp_path / "report.json").write_text(json.dumps(data))
    report = load_report(tmp_path / "report.json")
    assert report.schema_version == 1 and report.memory.arena_trace is None


# ---------------------------------------------------------------- the baselines
def _bumped(report: dict, key: str, factor: float) -> dict:
    data = json.loads(json.dumps(report))
    *path, last = key.split(".")
    node = data
    for part in path:
        node = node[part]
    node[last] = type(node[last])(node[last] * factor)
    return data


@pytest.mark.parametrize("key, factor, ok", [
    ("binary_bytes", 1.05, True), ("binary_bytes", 1.2, False),
    ("memory.weight_bytes", 1.02, True), ("memory.weight_bytes", 1.1, False),
    ("memory.arena_bytes", 2.0, False),
    ("kernel_calls", 1.1, True), ("kernel_calls", 2.0, False),
    ("memory.buffers", 3.0, True),  # a key without a tolerance is not compared
])
def test_baseline_tolerance_per_key(key, factor, ok):
    want = baseline.read(baseline.CASES["arm-a76-cnn-int8"])
    assert not [k for k in want if k.endswith("seconds")]  # timings are not even stored
    problems = baseline.compare(_bumped(want, key, factor), want)
    assert (problems == []) == ok, problems
    assert ok or problems[0].startswith(key)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(baseline.CASES))
def test_reports_match_their_baselines(name, tmp_path):
    """As hls4ml checks its synthesis reports; regenerate with
    `python -m toolchain.reports.baseline --write` after a deliberate change."""
    case = baseline.CASES[name]
    got = baseline.normalized(baseline.build(case, tmp_path), name)
    assert baseline.compare(got, baseline.read(case)) == [], \
        "report drifted from tests/baselines/; if intended: python -m " \
        "toolchain.reports.baseline --write"


# ---------------------------------------------------------------- --quiet, --json, exit codes
def test_exit_codes_are_stable_and_documented():
    assert sorted(EXIT_CODES) == [0, 1, 2, 3, 4, 130, 141]
    readme = README.read_text()
    section = readme[readme.index("## Exit codes"):]
    for code in EXIT_CODES:
        assert f"| {code} |" in section, f"README's exit-code table lacks {code}"


def test_closed_stdout_ends_quietly_with_141():
    """`edgec --json doctor | head -0`: the reader is gone before edgec writes; no traceback."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", "from toolchain.cli import main; "
                             "raise SystemExit(main())", "--json", "doctor", "host"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # long before the interpreter has started and printed anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.parametrize("error, code", [
    ("VerificationError", 1), ("ConfigError", 2), ("ModelError", 2), ("ToolMissingError", 3),
    ("ToolFailedError", 4), ("KeyboardInterrupt", 130)])
def test_each_error_has_its_exit_code(monkeypatch, capsys, error, code):
    from toolchain import errors
    from toolchain.commands import build

    exc = KeyboardInterrupt() if error == "KeyboardInterrupt" else getattr(errors, error)("boom")

    def fail(args):
        raise exc

    monkeypatch.setattr(build, "cmd_targets", fail)
    assert main(["targets"]) == code
    capsys.readouterr()
    assert main(["--json", "targets"]) == code
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit_code"] == code and doc["ok"] is False and doc["error"]


def test_quiet_prints_nothing_but_errors(host_build, capfd):
    assert main(["--quiet", "report", str(host_build)]) == 0
    assert main(["report", str(host_build), "-q"]) == 0
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert main(["-q", "report", str(host_build / "nope")]) == 2
    out, err = capfd.readouterr()
    assert out == "" and err.startswith("edgec: error: ") and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, check", [
    (["targets"], lambda r: any(t["name"] == "host" for t in r)),
    (["zoo"], lambda r: any(m["name"] == "cnn" for m in r)),
    (["report", "{out}"], lambda r: r["verdict"]["status"] == "not verified"
     and r["report"]["schema_version"] == SCHEMA_VERSION),
    (["verify", "{out}"], lambda r: r["ok"] and r["outputs"][0]["name"]),
    (["run", "{out}"], lambda r: r is None),
    (["compile", "{out}/model.onnx", "-t", "host", "-o", "{tmp}/again"],
     lambda r: r["kernel_calls"] >= 1),
])
def test_json_gives_one_object_on_stdout(host_build, tmp_path, capfd, argv, check):
    argv = [a.format(out=host_build, tmp=tmp_path) for a in argv]
    assert main(["--json", *argv]) == 0
    out, _ = capfd.readouterr()
    doc = json.loads(out)
    assert doc["command"] == argv[0] and doc["ok"] and doc["exit_code"] == 0
    assert doc["error"] is None and check(doc["result"]), doc
