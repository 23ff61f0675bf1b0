"""Progress bars: drawn on a terminal's stderr only, never under --quiet/--json or CI."""

import io

import pytest

from toolchain import progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def terminal(monkeypatch):
    """Call it inside the test (pytest's capture swaps sys.stderr back after fixture setup)."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(progress, "_enabled", True)

    def attach():
        stream = _Tty()
        monkeypatch.setattr("sys.stderr", stream)
        return stream

    return attach


def test_a_terminal_gets_a_bar_and_the_items_are_unchanged(terminal):
    tty = terminal()
    assert list(progress.bar(range(5), desc="training", unit="epoch")) == list(range(5))
    assert "training" in tty.getvalue()


@pytest.mark.parametrize("why", ["disabled", "ci", "pipe"])
def test_no_bar_when_off_in_ci_or_piped(terminal, monkeypatch, why):
    tty = terminal()
    if why == "disabled":
        progress.set_enabled(False)
    elif why == "ci":
        monkeypatch.setenv("CI", "true")
    else:
        monkeypatch.setattr("sys.stderr", io.StringIO())
    items = range(3)
    assert progress.bar(items, desc="training") is items
    assert tty.getvalue() == ""


def test_cli_quiet_and_json_turn_bars_off(terminal):
    from toolchain.cli import main

    terminal()
    for flag in ("--quiet", "--json"):
        progress.set_enabled(True)
        main([flag, "doctor", "host"])
        assert not progress.shown()
