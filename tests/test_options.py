"""One typed options class per target family: the CLI, a build file, a [compile] config table
and the Python API give the same object and the same edgec.json; bad values and options of
another family are one-line errors (exit 2); the manifest reads back to the same object.

The plumbing tests record what reaches ``Backend.compile`` (a recording stand-in writes one
file); the real compiles are in the e2e tests, and one real host folder is checked here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from onnx_graphs import save
from toolchain import api
from toolchain.cli import main
from toolchain.errors import ConfigError
from toolchain.targets import device
from toolchain.targets.registry import available_backends

# target -> (flags, the same as build-file lines, the same as API keywords)
CASES = {
    "host": (["--threads", "2", "--schedule", "none", "--keep-build", "--pipeline", "cpu"],
             'threads = 2\nschedule = "none"\nkeep_build = true\npipeline = "cpu"',
             {"threads": 2, "schedule": "none", "keep_build": True, "pipeline": "cpu"}),
    "cortex-m4": (["--stack-bytes", "4096"], "stack_bytes = 4096", {"stack_bytes": 4096}),
    "fpga-xcu250": (["--reuse-factor", "2", "--reuse-factor", "fc=4", "--strategy", "Resource",
                     "--clock-period", "4", "--default-precision", "fixed<12,4>"],
                    'reuse_factor = [2, "fc=4"]\nstrategy = "resource"\nclock_period = 4\n'
                    'default_precision = "fixed<12,4>"',
                    {"reuse_factor": [2, "fc=4"], "strategy": "resource", "clock_period": 4,
                     "default_precision": "fixed<12,4>"}),
}


def _dense(path: Path) -> Path:
    from test_pipeline_robustness import make_dense

    return save(make_dense(1), path)


@pytest.fixture
def recorded(monkeypatch):
    """Every backend's compile replaced by one that records the options it is given."""
    calls = []

    def compile_(self, model_path, model, dev, options, stage):
        calls.append(options)
        (stage / "artifact").write_text(f"{dev.name}\n")
        return {"target": dev.name}

    for backend in available_backends():
        monkeypatch.setattr(type(backend), "compile", compile_)
    return calls


def _one_line(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgec: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "edgec.json").read_text())


@pytest.mark.parametrize("target", sorted(CASES))
def test_cli_toml_config_and_api_are_one_thing(tmp_path, recorded, target):
    flags, lines, keywords = CASES[target]
    model = _dense(tmp_path / "dense.onnx")
    # 1. flags
    assert main(["compile", str(model), "-t", target, "-o", str(tmp_path / "cli"), *flags]) == 0
    # 2. a build file's [[target]] table (the compile step of edgec build)
    build = tmp_path / "edgec.toml"
    build.write_text(f'[model]\nsource = "{model}"\n[[target]]\nname = "{target}"\n{lines}\n')
    assert main(["build", str(build), "-o", str(tmp_path / "build"), "--to", "compile",
                 "--no-cache"]) == 0
    # 3. edgec compile --config with a [compile] table
    table = tmp_path / "compile.toml"
    table.write_text(f'[compile]\ntarget = "{target}"\n{lines}\n')
    assert main(["compile", str(model), "-o", str(tmp_path / "config"), "--config",
                 str(table)]) == 0
    # 4. the Python API, keywords and an options object
    api.compile(model, target, tmp_path / "api", **keywords)
    typed = api.compile_options(target, **keywords)
    api.compile(model, target, tmp_path / "object", options=typed)

    assert len(recorded) == 5
    cls = type(recorded[0])
    assert cls.__name__ == {"host": "CpuOptions", "cortex-m4": "CortexMOptions",
                            "fpga-xcu250": "FpgaOptions"}[target]
    assert all(o == typed for o in recorded), recorded
    assert typed.changed() and set(typed.changed()) == set(keywords)
    manifests = [_manifest(tmp_path / f) for f in ("cli", "build/" + target + "/compile",
                                                     "config", "api", "object")]
    assert all(m == manifests[0] for m in manifests[1:])
    assert manifests[0]["options"] == typed.to_json()
    # the manifest reads back to the same object
    from toolchain.commands.build import folder_options

    assert folder_options(manifests[0]) == typed
    assert cls.from_json(json.loads(json.dumps(typed.to_json()))) == typed


@pytest.mark.parametrize("target, flags, needles", [
    ("host", ["--threads", "0"], ["--threads must be an integer from 1 to 256, not 0"]),
    ("host", ["--threads", "two"], ["--threads must be an integer, not 'two'"]),
    ("host", ["--pipeline", "turbo"], ["--pipeline 'turbo' is not one of auto, cpu, cpu-int"]),
    ("host", ["--compiler", "msvc"], ["--compiler 'msvc' is not one of auto, gcc, zig"]),
    ("host", ["--input-shape", "input=1,a"], ["bad --input-shape 'input=1,a'"]),
    ("cortex-m4", ["--stack-bytes", "100"], ["--stack-bytes must be an integer of at least 1024, not 100"]),
    ("fpga-xcu250", ["--strategy", "fastest"], [
        "--strategy 'fastest' is not one of latency, resource, distributed_arithmetic"]),
    ("fpga-xcu250", ["--io-type", "serial"], ["--io-type 'serial' is not one of io_parallel, io_stream"]),
    ("fpga-xcu250", ["--budget", "dsp=10", "--reuse-factor", "2"], ["--budget", "not both"]),
    ("fpga-xcu250", ["--default-precision", "float"], ["--default-precision 'float'"]),
    ("fpga-xcu250", ["--clock-period", "0.1"], ["--clock-period", "0.5 to 100"]),
])
def test_bad_value_is_one_line_exit_2(tmp_path, capsys, recorded, target, flags, needles):
    model = _dense(tmp_path / "dense.onnx")
    rc = main(["compile", str(model), "-t", target, "-o", str(tmp_path / "o"), *flags])
    _one_line(capsys, rc, *needles)
    assert not recorded and not (tmp_path / "o").exists()


@pytest.mark.parametrize("target, keywords, needle", [
    ("host", {"threads": 0}, "--threads must be an integer from 1 to 256, not 0"),
    ("fpga-xcu250", {"threads": 2}, "option --threads does not apply to target fpga-xcu250 "
                                    "(family fpga); it is an option of the cpu targets"),
    ("host", {"reuse_factor": ["2"]}, "option --reuse-factor does not apply to target host"),
    ("arm-a72", {"stack_bytes": 4096}, "it is an option of the cortexm targets"),
    ("host", {"speed": 11}, "unknown option --speed of the cpu targets"),
])
def test_api_refuses_what_the_cli_refuses(tmp_path, recorded, target, keywords, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        api.compile(_dense(tmp_path / "dense.onnx"), target, tmp_path / "o", **keywords)
    assert not recorded


def test_options_object_of_another_family_is_refused(tmp_path, recorded):
    from toolchain.targets.fpga.options import FpgaOptions

    with pytest.raises(ConfigError, match="target host .family cpu. takes CpuOptions, not "
                                          "FpgaOptions"):
        api.compile(_dense(tmp_path / "dense.onnx"), "host", tmp_path / "o",
                    options=FpgaOptions())
    with pytest.raises(ConfigError, match="not both"):
        api.compile(_dense(tmp_path / "dense.onnx"), "host", tmp_path / "o",
                    options=api.compile_options("host"), threads=2)


def test_cpu_int_pipeline_on_a_float_model_is_refused(tmp_path, capsys):
    model = _dense(tmp_path / "dense.onnx")
    rc = main(["compile", str(model), "-t", "host", "-o", str(tmp_path / "o"),
               "--pipeline", "cpu-int"])
    _one_line(capsys, rc, "--pipeline cpu-int does not apply to target host",
              "no QuantizeLinear/DequantizeLinear")
    assert not (tmp_path / "o").exists()


def test_simulate_takes_its_family_options_and_reads_the_rest_back(tmp_path, capsys,
                                                                   recorded):
    """Simulate options are typed too; the compile options come from the folder."""
    from toolchain.targets.fpga.backend import folder_config

    flags, _, keywords = CASES["fpga-xcu250"]
    model = _dense(tmp_path / "dense.onnx")
    out = tmp_path / "fpga"
    assert main(["compile", str(model), "-t", "fpga-xcu250", "-o", str(out), *flags]) == 0
    cfg = folder_config(_manifest(out), device("fpga-xcu250"))
    assert (cfg.strategy, cfg.clock_period_ns, cfg.reuse_default, cfg.reuse_per_layer,
            cfg.default_precision.hls()) == ("resource", 4.0, 2, {"fc": 4}, "fixed<12,4,RND,SAT>")
    # a bad simulate value, and an option of no family, before anything runs
    _one_line(capsys, main(["simulate", str(out), "--samples", "0"]),
              "--samples must be a positive integer, not 0")
    with pytest.raises(ConfigError, match="unknown option --threads of the fpga targets"):
        api.simulate(out, threads=2)
    # a CPU folder takes no simulate options
    cpu = tmp_path / "cpu"
    assert main(["compile", str(model), "-t", "host", "-o", str(cpu)]) == 0
    with pytest.raises(ConfigError, match="option --samples does not apply to .*family cpu"):
        api.simulate(cpu, samples=3)


def test_a_manifest_with_a_bad_option_is_one_line(tmp_path, capsys, recorded):
    out = tmp_path / "o"
    assert main(["compile", str(_dense(tmp_path / "dense.onnx")), "-t", "host", "-o",
                 str(out)]) == 0
    manifest = _manifest(out)
    manifest["options"]["threads"] = 0
    (out / "edgec.json").write_text(json.dumps(manifest))
    _one_line(capsys, main(["run", str(out)]), "edgec.json", "--threads must be an integer from 1 to 256, not 0")


def test_real_host_folder_saves_its_options(compiled_small_cnn):
    from toolchain.commands.build import folder_options, read_manifest
    from toolchain.targets.cpu.options import CpuOptions

    manifest = read_manifest(compiled_small_cnn("host"))
    assert manifest["options"] == CpuOptions().to_json()
    assert folder_options(manifest) == CpuOptions()


def test_a_folder_written_before_the_options_were_typed_still_reads():
    """Such a manifest saved every flag of every family (None for an unset FPGA option)."""
    from toolchain.commands.build import folder_options
    from toolchain.targets.fpga.options import FpgaOptions

    old = {"model": "m.onnx", "target": "fpga-xcu250", "output": "o", "threads": 1,
           "pipeline": "auto", "keep_build": False, "module_path": [], "input_shape": [],
           "reuse_factor": ["2"], "hls_backend": None, "strategy": None, "budget": None}
    assert folder_options({"family": "fpga", "options": old}) == FpgaOptions(reuse_factor=("2",))
