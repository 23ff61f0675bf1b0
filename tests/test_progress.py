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


def test_spinner_shows_the_elapsed_time_on_a_terminal_only(terminal, monkeypatch):
    tty = terminal()
    with progress.spinner("building the RTL emulator", interval=0.01):
        import time

        time.sleep(0.05)
    assert "building the RTL emulator: 00:00" in tty.getvalue()
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with progress.spinner("quiet"):
        pass
    assert "quiet" not in tty.getvalue()


def test_postfix_on_a_bar_and_on_a_plain_loop(terminal):
    terminal()
    steps = progress.bar(range(3), desc="training lm", unit="step")
    for _ in steps:
        progress.postfix(steps, loss=1.23456)
    assert steps.postfix == "loss=1.235"  # drawn with the next refresh
    progress.postfix(range(3), loss=1.0)  # no bar: nothing to do, no error


@pytest.fixture
def recorded(monkeypatch):
    """What ``progress.bar`` and ``progress.spinner`` were asked to show, in order, with the
    tool runs made inside a spinner."""
    import contextlib

    events = []

    def bar(iterable, *, total=None, desc="", unit="it"):
        events.append(("bar", desc, unit))
        return iterable

    @contextlib.contextmanager
    def spinner(desc, interval=0.5):
        events.append(("spinner", desc))
        yield
        events.append(("end", desc))

    monkeypatch.setattr(progress, "bar", bar)
    monkeypatch.setattr(progress, "spinner", spinner)
    return events


def test_lm_training_and_fine_tuning_show_a_bar(recorded):
    import numpy as np
    import torch

    from toolchain.compress.finetune import _fit_regression
    from toolchain.models.lm import ByteLM, LMConfig, LMRecipe, train_lm
    from toolchain.models.train import Recipe

    lm = ByteLM(LMConfig(layers=1, dim=8, heads=2, hidden=16, context=8))
    train_lm(lm, LMRecipe(steps=2, batch=2, warmup=1), bytes(range(256)) * 2)
    net = torch.nn.Linear(3, 2)
    X = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    _fit_regression(net, X, X[:, :2].copy(), Recipe(epochs=1, batch=4), None)
    assert recorded == [("bar", "training", "step"), ("bar", "fine-tuning", "epoch")]


def test_hls4ml_compile_and_rtl_build_and_run_show_a_spinner(recorded, monkeypatch, tmp_path):
    import numpy as np

    from toolchain import tools
    from toolchain.targets.fpga import hls, rtl

    def run_tool(cmd, **kw):
        recorded.append(("tool", kw["what"]))

    monkeypatch.setattr(tools, "run_tool", run_tool)
    monkeypatch.setattr(tools, "require", lambda name, hint: name)
    hls.build_emulation(tmp_path, "p")

    class Model:
        def _load_lib(self, stamp):
            recorded.append(("tool", "load"))

        def predict(self, flat, n_threads):
            recorded.append(("tool", "predict"))
            return flat

    monkeypatch.setattr(rtl, "verilator_env", lambda: {})
    (tmp_path / "sim").mkdir()
    rtl.verilate(Model(), tmp_path)
    rtl.run(Model(), np.zeros((3, 2)))
    c, rtl_build, sim = ("hls4ml: compiling the C emulation",
                         "Verilator: building the RTL emulator", "Verilator: simulating 3 samples")
    assert recorded[0] == ("spinner", c)
    assert set(recorded[1:3]) == {("tool", "compiling the C emulation (firmware/p.cpp)"),
                                  ("tool", "compiling the C emulation (p_bridge.cpp)")}  # 2 threads
    assert recorded[3:] == [
        ("tool", "linking the C emulation"), ("end", c), ("spinner", rtl_build), ("tool", "building the RTL emulator with Verilator"),
        ("end", rtl_build), ("tool", "load"), ("spinner", sim), ("tool", "predict"), ("end", sim)]
