"""examples/own_models.py records each step as a row (no compile here, so it stays fast): the
LSTM keyword spotter's int8 (torchao: LSTM float, head int8) and 50% structured rows (hidden
units pruned), and the U-Net's prune50+int8 row, which passes the export check's int8
tolerance and is scored per pixel."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import own_models  # noqa: E402


def test_lstm_rows_quantize_and_prune_the_hidden_units(tmp_path):
    rows = {r["steps"]: r for r in own_models.run(tmp_path, [], ["lstm-kws"])}
    int8 = rows["int8"]  # --quantizer auto sends an LSTM model to torchao
    assert int8["ok"] and int8["bytes"][1] < int8["bytes"][0] and int8["metric"] == "agree"
    pruned = rows["prune50"]
    # 2 layers x 4 gates x 32 units lose half their units; the head its inputs
    assert pruned["ok"] and pruned["params"][1] < 0.35 * pruned["params"][0]
    assert rows["prune50+int8"]["ok"]


def test_unet_prune_and_int8_passes_the_export_check_scored_per_pixel(tmp_path):
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
