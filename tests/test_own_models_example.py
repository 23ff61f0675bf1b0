"""examples/own_models.py records each step as a row (no compile here, so it stays fast): the
LSTM keyword spotter's 50% structured row (hidden units pruned), and the U-Net's prune50+int8 row, which passes the export check's int8
tolerance and is scored per pixel."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import own_models  # noqa: E402


def _only(monkeypatch, *configs):
    monkeypatch.setattr(own_models, "CONFIGS", {c: own_models.CONFIGS[c] for c in configs})


def test_lstm_row_prunes_the_hidden_units(tmp_path, monkeypatch):
    # (its int8 rows go through torchao, whose torch.export of the LSTM takes ~30 s here)
    _only(monkeypatch, "prune50")
    rows = {r["steps"]: r for r in own_models.run(tmp_path, [], ["lstm-kws"])}
    pruned = rows["prune50"]
    # 2 layers x 4 gates x 32 units lose half their units; the head its inputs
    assert pruned["ok"] and pruned["params"][1] < 0.35 * pruned["params"][0]
    assert pruned["metric"] == "agree" and pruned["export"][0] <= pruned["export"][1]


def test_unet_prune_and_int8_passes_the_export_check_scored_per_pixel(tmp_path, monkeypatch):
    _only(monkeypatch, "prune50+int8")
    rows = {r["steps"]: r for r in own_models.run(tmp_path, [], ["unet"])}
    both = rows["prune50+int8"]
    assert both["ok"], both["why"]
    assert both["metric"] == "pixel-agree" and both["before"] == 100.0
    assert 0.0 < both["after"] <= 100.0
    err, tol = both["export"]
    assert err <= tol and tol > 1e-5  # the int8 part of the tolerance, not the float one


def test_unknown_model_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        own_models.main_(["--models", "nope"])
    assert exc.value.code == 2 and "unknown model nope" in capsys.readouterr().err


def test_fpga_column_gives_the_backends_one_line_reason(tmp_path, monkeypatch):
    # Conv1d takes torchao's int8, which has no fixed-point grid: the float export goes to the
    # FPGA, whose support check refuses the ConvTranspose1d before anything is written
    _only(monkeypatch)
    rows = {r["steps"]: r for r in
            own_models.run(tmp_path, [], ["sensor-conv1d"], fpga="fpga-xcu250")}
    fixed, fpga = rows["fixed<8,3>"], rows["float"]
    assert not fixed["ok"] and "fixed<8,3>" in fixed["why"] and "fpga" not in fixed
    assert fpga["fpga"] == "no"
    assert "fpga-xcu250 compile: unsupported op 'ConvTranspose'" in fpga["why"]
    assert not (tmp_path / "sensor-conv1d-fpga-xcu250").exists()
