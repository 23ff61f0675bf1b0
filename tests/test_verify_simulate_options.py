"""edgec verify says which absolute allowance it applied; edgec simulate refuses the options
of another target family instead of ignoring them."""

from __future__ import annotations

import json

import pytest

from toolchain.cli import main
from toolchain.commands.build import _step_allowance


@pytest.mark.parametrize("allowed,step,text", [
    (0.125 * 1.0001, 0.03125, "4 output steps of 0.03125 = 0.125"),  # an FPGA design: 4 steps
    (0.03125 * 1.0001, 0.03125, "one output step 0.03125"),           # a CPU target: 1 step
    (0.0039 * 1.0001, None, "abs error 0.0039"),     # a float model's fixed-point design
    (0.05, 0.03125, "abs error 0.05"),               # not a whole number of steps
])
def test_verify_names_the_allowance_applied(allowed, step, text):
    assert _step_allowance(allowed, step) == text


def _folder(tmp_path, family: str, target: str):
    out = tmp_path / target
    out.mkdir()
    (out / "edgec.json").write_text(json.dumps({"edgec": 1, "family": family, "target": target,
                                                "inputs": [], "outputs": []}))
    return out


@pytest.mark.parametrize("flags", [["--samples", "3"], ["--no-rtl"], ["--dataset", "cnn"]])
def test_simulate_refuses_an_fpga_option_on_a_cpu_folder(tmp_path, capsys, flags):
    out = _folder(tmp_path, "cpu", "host")
    assert main(["simulate", str(out), *flags]) != 0
    err = capsys.readouterr().err.strip()
    assert err == (f"edgec: error: option {flags[0]} does not apply to {out} (target host, "
                   "family cpu); it is an option of the fpga targets' simulation")
    assert not (out / "simulation.json").exists()


def test_simulate_refuses_a_compile_option(tmp_path, capsys):
    out = _folder(tmp_path, "fpga", "fpga-xcu250")
    with pytest.raises(SystemExit) as exc:
        main(["simulate", str(out), "--threads", "2"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --threads 2" in capsys.readouterr().err
