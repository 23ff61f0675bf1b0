"""examples/own_models.py records what a step refuses instead of crashing: the LSTM keyword
spotter's rows (no compile, so it stays fast)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import own_models  # noqa: E402


def test_refused_steps_are_rows_with_their_reason(tmp_path):
    rows = {r["steps"]: r for r in own_models.run(tmp_path, [], ["lstm-kws"])}
    assert not rows["int8"]["ok"] and "LSTM" in rows["int8"]["why"]
    assert not rows["prune50"]["ok"] and "prune-channels" in rows["prune50"]["why"]
    retry = rows["int8/torchao"]  # the head is int8, the LSTM float: fewer bytes, same argmax
    assert retry["ok"] and retry["bytes"][1] < retry["bytes"][0] and retry["after"] == 100.0


def test_unknown_model_is_a_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        own_models.main_(["--models", "nope"])
    assert exc.value.code == 2 and "unknown model nope" in capsys.readouterr().err
