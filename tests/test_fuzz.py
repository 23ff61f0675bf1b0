"""A fixed seeded sample of examples/fuzz.py's broken ONNX and TOML files: only clean errors.

Run in-process through toolchain.cli.main (no interpreter start-up per case); the full run
with subprocesses, timeouts and a few hundred cases is ``python examples/fuzz.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from toolchain.cli import main

FUZZ = Path(__file__).resolve().parents[1] / "examples" / "fuzz.py"


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("edgec_fuzz", FUZZ)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_seeded_sample_gives_only_clean_errors(fuzz, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a mutated relative output path lands here, not in the tree
    cases = fuzz.generate(seed=10, count=42, root=tmp_path)
    outcomes = [fuzz.run_in_process(c) for c in cases]
    bad = [f"{o.kind} {o.case.mutation}: edgec {' '.join(o.case.argv)}\n{o.stderr[-800:]}"
           for o in outcomes if o.kind not in fuzz.GOOD]
    assert not bad, "\n\n".join(bad)
    kinds = {o.kind for o in outcomes}
    assert "error" in kinds and "ok" in kinds  # the sample exercises both paths


@pytest.mark.parametrize("command", ["compile", "compress", "build"])
@pytest.mark.parametrize("text", [
    b'[compile]\ntarget = "host"\nx = "\xff\xfe"\n',      # not UTF-8
    b"\xc1\x00\x9f garbage",
    b"deep = " + b"[" * 5000 + b"]" * 5000 + b"\n",         # RecursionError in tomllib
    b"deep = " + b"{a = " * 2000 + b"1" + b"}" * 2000 + b"\n",
], ids=["bad-utf8", "garbage", "deep-array", "deep-inline-table"])
def test_unreadable_config_is_one_line_error(tmp_path, capsys, command, text):
    cfg = tmp_path / "edgec.toml"
    cfg.write_bytes(text)
    argv = {"compile": ["compile", "--config", str(cfg)],
            "compress": ["compress", "--config", str(cfg)],
            "build": ["build", str(cfg), "-o", str(tmp_path / "b")]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgec: error:") and "not valid TOML" in err[0]


def test_classify(fuzz):
    assert fuzz.classify(0, "") == "ok"
    assert fuzz.classify(2, "edgec: error: bad\n") == "error"
    assert fuzz.classify(2, "usage: edgec\nedgec: error: bad\n") == "error"
    assert fuzz.classify(1, "boom\n") == "unclean"
    assert fuzz.classify(1, "Traceback (most recent call last):\n  x\nValueError\n") == "traceback"
    assert fuzz.classify(-11, "") == "crash"
    assert fuzz.classify(None, "") == "hang"


def test_initializer_whose_data_does_not_fit_its_dims(fuzz, tmp_path, capsys):
    """Found by the fuzzer on the zoo cnn: passes the checker, then numpy could not reshape."""
    import onnx

    model = fuzz.seed_graph("tiny_mlp")
    bias = next(t for t in model.graph.initializer if t.name == "b2")
    bias.dims[0] = 3  # the raw data still holds 4 floats
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    rc = main(["compile", str(tmp_path / "m.onnx"), "-t", "host", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "initializer 'b2' does not match its dims [3]" in err[0]
