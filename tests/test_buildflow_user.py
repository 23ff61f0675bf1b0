"""edgec build with a model and data of the user's own (examples/own_model_build): a
file.py:ClassName with its state dict and an .npz, int8 PTQ, host compile and verify; the data's
content is in the compress step's key; bad data and model values are one line, exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from onnx_graphs import needs_target
from toolchain.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_model_build"
CONFIG = """\
[model]
source = "net.py:SensorNet"
weights = "weights.pt"
input_shape = "features=1,16"
{model}
[compress]
data = "{data}"
metric = "top1"
quantize = "int8"
{compress}
[[target]]
name = "host"
"""


def _write(folder: Path, data: str = "data.npz", model: str = "", compress: str = "") -> Path:
    path = folder / "edgec.toml"
    path.write_text(CONFIG.format(data=data, model=model, compress=compress))
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the example's model, weights and data, a private step cache."""
    root = tmp_path_factory.mktemp("own_build")
    for name in ("net.py", "weights.pt", "data.npz"):
        shutil.copyfile(EXAMPLE / name, root / name)
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEC_CACHE", str(root / "cache"))
    yield root
    mp.undo()


def _cached(out: Path) -> dict[str, bool]:
    return {f: json.loads((out / f / "step.json").read_text())["cached"]
            for f in ("load", "compress", "export", "host/compile", "host/verify")}


@needs_target("host")
def test_own_model_and_data_build_verify_and_rerun_from_the_cache(project):
    out = project / "out"
    assert main(["build", str(_write(project)), "-o", str(out)]) == 0
    report = json.loads((out / "compress" / "compress.json").read_text())
    assert report["initial"]["metric"] == "top1"
    # the held-out split of the npz (80 samples): a score in steps of 1.25%
    assert (report["initial"]["score"] / 1.25) == pytest.approx(round(report["initial"]
                                                                      ["score"] / 1.25))
    assert report["initial"]["score"] > 50.0  # four classes: chance is 25%
    export = json.loads((out / "export" / "export.json").read_text())
    assert export["quantization"]["mode"] == "int8" and export["metric"] == "top1"
    assert abs(export["onnx_score"] - report["final"]["score"]) <= 2.5
    import onnx

    model = onnx.load(out / "export" / "model.onnx")
    assert [i.name for i in model.graph.input] == ["features"]
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert json.loads((out / "host" / "verify" / "verify.json").read_text())["ok"]
    assert not any(_cached(out).values())

    # unchanged: every step from the cache
    again = project / "again"
    assert main(["build", str(project / "edgec.toml"), "-o", str(again)]) == 0
    assert all(_cached(again).values())

    # the same file name with other content: load is cached, compress and later rerun
    with np.load(project / "data.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x"] = arrays["x"] * 1.5
    np.savez(project / "data.npz", **arrays)
    changed = project / "changed"
    assert main(["build", str(project / "edgec.toml"), "-o", str(changed)]) == 0
    cached = _cached(changed)
    assert cached["load"] and not cached["compress"] and not cached["export"]


@pytest.mark.parametrize("data, model, expect", [
    ("missing.npz", "", "data = 'missing.npz': no such file or folder"),
    ("bad.npz", "", "has no array 'x'"),
    ("notes.txt", "", "is not an .npz or .npy file"),
    ("nomodule_xyz:make", "", "data = 'nomodule_xyz:make'"),
    ("data.npz", 'module_path = "nowhere"', "module_path: no such folder"),
])
def test_bad_data_is_one_line_naming_the_file_and_key(project, capsys, data, model, expect):
    np.savez(project / "bad.npz", inputs=np.zeros((4, 16), np.float32))
    (project / "notes.txt").write_text("x")
    path = _write(project, data, model)
    assert main(["build", str(path), "-o", str(project / "bad_out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(path) in err and expect in err
    assert not (project / "bad_out" / "load").exists()


def test_bad_model_and_metric_values_are_one_line(project, capsys):
    cases = [
        (CONFIG.replace('weights = "weights.pt"\n', ""), "is an architecture: add weights"),
        (CONFIG.replace('"weights.pt"', '"w.pt"'), "weights = 'w.pt': file not found"),
        (CONFIG.replace("net.py:", "nets.py:"), "'nets.py:SensorNet': file not found"),
        (CONFIG.replace('"top1"', '"top9"'), "metric = 'top9' is unknown"),
    ]
    for text, expect in cases:
        path = project / "bad.toml"
        path.write_text(text.format(data="data.npz", model="", compress=""))
        assert main(["build", str(path), "-o", str(project / "bad_out")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and expect in err, err
