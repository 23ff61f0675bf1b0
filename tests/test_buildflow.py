"""edgec build: steps, the step cache, --from/--to, staging and config errors (zoo mlp, int8,
host). One build is made per module and the later tests change one thing each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnx_graphs import needs_target
from toolchain.cli import main

pytestmark = needs_target("host")

CONFIG = """\
[model]
source = "mlp"

[compress]
quantize = "int8"

[[target]]
name = "host"
{extra}
"""
ALL = ["load", "compress", "export", "host/compile", "host/verify", "report"]


def _step(out: Path, folder: str) -> dict:
    return json.loads((out / folder / "step.json").read_text())


def _cached(out: Path) -> dict[str, bool]:
    return {f: _step(out, f)["cached"] for f in ALL if (out / f / "step.json").is_file()}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private cache (the zoo's trained weights shared, so nothing is trained here) and a
    build file; yields (folder, write_config)."""
    from toolchain import models

    root = tmp_path_factory.mktemp("buildflow")
    (root / "cache").mkdir()
    (root / "cache" / "zoo").symlink_to(models.cache_folder().resolve(),
                                        target_is_directory=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEC_CACHE", str(root / "cache"))

    def write(extra: str = "", name: str = "edgec.toml") -> Path:
        path = root / name
        path.write_text(CONFIG.format(extra=extra))
        return path

    write()
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def first(env):
    out = env / "first"
    assert main(["build", str(env / "edgec.toml"), "-o", str(out)]) == 0
    return out


def test_build_runs_every_step_and_records_it(first, env):
    from toolchain.buildflow import from_table, load_config

    assert _cached(first) == {f: False for f in ALL}
    for folder in ALL:
        rec = _step(first, folder)
        assert rec["seconds"] >= 0 and len(rec["key"]) == 64 and len(rec["output_hash"]) == 64
        assert set(rec["versions"]) >= {"edgec", "apache-tvm", "onnx", "onnxruntime", "hls4ml"}
    # each step's inputs are the content hashes of the folders it read
    assert _step(first, "compress")["inputs"] == {"model": _step(first, "load")["output_hash"]}
    assert _step(first, "host/verify")["inputs"] == {
        "compiled": _step(first, "host/compile")["output_hash"]}
    assert (first / "export" / "model.onnx").is_file()
    assert (first / "host" / "compile" / "libmodel.a").is_file()
    assert json.loads((first / "host" / "verify" / "verify.json").read_text())["ok"]
    report = json.loads((first / "report" / "report.json").read_text())
    assert report["targets"]["host"]["verify"]["ok"]
    assert report["models"]["main"]["export"]["quantization"]["mode"] == "int8"
    # build.json is the validated config and reads back to an equal one
    saved = json.loads((first / "build.json").read_text())
    assert from_table(saved, first / "build.json", first) == load_config(env / "edgec.toml")
    assert not list(first.glob("**/.*.partial"))


def test_second_build_is_served_from_the_cache(first, env, capsys):
    out = env / "second"
    assert main(["build", str(env / "edgec.toml"), "-o", str(out)]) == 0
    assert _cached(out) == {f: True for f in ALL}
    for folder in ALL:  # the same content as built
        assert _step(out, folder)["output_hash"] == _step(first, folder)["output_hash"]
    printed = capsys.readouterr().out
    assert "6 from the cache" in printed
    assert f"report: {out / 'report' / 'report.html'}" in printed


@pytest.mark.parametrize("extra, rebuilt", [
    ("threads = 2", {"host/compile", "host/verify", "report"}),
    ("[target.verify]\nseed = 3", {"host/verify", "report"}),
])
def test_changed_option_reruns_only_what_depends_on_it(first, env, extra, rebuilt):
    path = env / "changed.toml"
    path.write_text(CONFIG.format(extra=extra))
    out = env / f"changed-{len(rebuilt)}"
    assert main(["build", str(path), "-o", str(out)]) == 0
    assert {f for f, cached in _cached(out).items() if not cached} == rebuilt


def test_from_and_to_stop_and_restart(first, env, capsys):
    out = env / "partial"
    cfg = str(env / "edgec.toml")
    assert main(["build", cfg, "-o", str(out), "--to", "compress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["build.json", "compress", "load"]
    before = (out / "load" / "step.json").stat().st_mtime_ns
    assert main(["build", cfg, "-o", str(out), "--from", "export"]) == 0
    assert set(_cached(out)) == set(ALL)
    assert (out / "load" / "step.json").stat().st_mtime_ns == before  # not run again
    # --from a step whose earlier folders a build never wrote
    capsys.readouterr()
    assert main(["build", cfg, "-o", str(env / "empty"), "--from", "verify"]) == 2
    assert "no finished 'load' step" in capsys.readouterr().err
    # a changed config makes the kept folders stale: refused, not mixed in
    stale = env / "stale.toml"
    stale.write_text(CONFIG.format(extra="").replace('"int8"', '"int4"'))
    assert main(["build", str(stale), "-o", str(out), "--from", "compile"]) == 2
    assert "out of date" in capsys.readouterr().err


def test_unknown_step_lists_the_steps(env, capsys):
    assert main(["build", str(env / "edgec.toml"), "-o", str(env / "x"), "--to", "link"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "load, compress, export, compile, verify, simulate, report" in err


def test_corrupted_cache_entry_is_rebuilt(first, env):
    key = _step(first, "host/verify")["key"]
    entry = env / "cache" / "build" / key[:2] / key
    (entry / "files" / "verify.json").write_text('{"ok": true, "forged": 1}\n')
    out = env / "corrupt"
    assert main(["build", str(env / "edgec.toml"), "-o", str(out)]) == 0
    assert _cached(out)["host/verify"] is False
    assert "forged" not in (out / "host" / "verify" / "verify.json").read_text()
    assert "forged" not in (entry / "files" / "verify.json").read_text()  # stored again
    assert _cached(out)["report"] is True  # the same content, so the report still matches


def test_killed_step_leaves_no_half_written_folder(first, env, monkeypatch):
    from toolchain.buildflow import steps

    def killed(ctx):
        (ctx.stage / "model.onnx").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setitem(steps.STEPS, "export", killed)
    out = env / "killed"
    assert main(["build", str(env / "edgec.toml"), "-o", str(out), "--no-cache"]) == 130
    assert sorted(p.name for p in out.iterdir()) == ["build.json", "compress", "load"]


@pytest.mark.parametrize("text, words", [
    ('[model]\nsource = "mlp"\n[compress]\nquantise = "int8"\n[[target]]\nname = "host"\n',
     ["[compress]", "unknown key 'quantise'"]),
    ('[model]\nsource = "mlp"\n[[target]]\nname = "host"\nthreads = "two"\n',
     ["[target host]", "threads"]),
    ('[model]\nsource = "mlp"\n[[target]]\nname = "fpga-xcu250"\nthreads = 2\n',
     ["[target fpga-xcu250]", "threads", "cpu targets"]),
    ('[model]\nsource = "mlp"\n[[target]]\nname = "arm-a99"\n',
     ["[target arm-a99]", "unknown target"]),
    ('[model]\nsource = "mlp"\n[[target]]\nname = "host"\nreuse_factor = 2\n',
     ["[target host]", "--reuse-factor does not apply", "fpga targets"]),
    ('[model]\nsource = "mlp"\n[[target]]\nname = "host"\npipeline = "turbo"\n',
     ["[target host]", "--pipeline 'turbo' is not one of auto, cpu"]),
    ('[model]\nsource = "mlp16"\n[[target]]\nname = "fpga-xcu250"\n[target.simulate]\n'
     'samples = 0\n', ["[target fpga-xcu250.simulate]", "--samples must be a positive"]),
    ('[model]\nsource = "nope"\n[[target]]\nname = "host"\n', ["[model]", "source"]),
    ('[model]\nsource = "mlp"\n[compress]\nprune = 1.5\n[[target]]\nname = "host"\n',
     ["[compress]", "--prune"]),
])
def test_bad_config_is_one_line_exit_2(env, capsys, text, words):
    path = env / "bad.toml"
    path.write_text(text)
    assert main(["build", str(path), "-o", str(env / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("edgec: error: config file ")
    assert str(path) in err
    for word in words:
        assert word in err
    assert not (env / "bad").exists()


def test_example_build_file_is_valid():
    from toolchain.buildflow import load_config, plan

    cfg = load_config(Path(__file__).parents[1] / "examples" / "edgec.toml")
    folders = [j.folder for j in plan(cfg)]
    assert {"arm-a72/verify", "arm-a76/verify", "fpga-xcu250/simulate"} <= set(folders)
    assert "fpga-xcu250/export" in folders
    assert [t.model.source for t in cfg.targets] == ["cnn", "cnn", "mlp16"]
