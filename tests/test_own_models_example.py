"""examples/own_models.py records what a step refuses instead of crashing: the LSTM keyword
spotter's rows (no compile, so it stays fast)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import own_models  # noqa: E402


def test_refused_steps_are_rows_with_their_reason(tmp_path):
    rows = {r["steps"]: r for r in own_models.run(tmp_path, [], ["lstm-kws"])}
    # --quantizer auto sends an LSTM model to torchao: the head is int8, the LSTM float
    int8 = rows["int8"]
    assert int8["ok"] and int8["bytes"][1] < int8["bytes"][0] and int8["after"] == 100.0
    assert not rows["prune50"]["ok"] and "prune-channels" in rows["prune50"]["why"]


def test_unknown_model_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        own_models.main_(["--models", "nope"])
    assert exc.value.code == 2 and "unknown model nope" in capsys.readouterr().err
