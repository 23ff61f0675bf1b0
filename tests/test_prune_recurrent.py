"""prune-channels on recurrent models: the hidden units of LSTM / GRU / RNN stacks
(rnn_channels.py, through torch-pruning's dependency graph), the head's inputs following."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from toolchain.compress import Context, PruneChannels, compress, export_onnx
from toolchain.errors import UnsupportedOpError

pytest.importorskip("torch_pruning")


class Spotter(nn.Module):
    def __init__(self, kind=nn.LSTM, layers=2, hidden=8, bidirectional=False):
        super().__init__()
        self.rnn = kind(5, hidden, num_layers=layers, batch_first=True,
                        bidirectional=bidirectional)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), 4)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


def _ctx(seed=0):
    X = np.random.default_rng(seed).standard_normal((48, 6, 5)).astype(np.float32)
    return Context(X[:32], None, X[32:], None, source="test")


def _kill_units(model: Spotter, dead: list[int]) -> None:
    """Zero every weight and bias row of the units ``dead`` in every layer, and the head's
    columns that read them: such a unit stays 0 for any input (LSTM: c = 0; GRU: h = h/2
    from 0; RNN: tanh(0)), so removing it is exact."""
    r = model.rnn
    g = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[type(r)]
    rows = [j + k * r.hidden_size for k in range(g) for j in dead]
    with torch.no_grad():
        for l in range(r.num_layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(r, f"{name}_l{l}")[rows] = 0
        model.fc.weight[:, dead] = 0


@pytest.mark.parametrize("kind,layers", [(nn.LSTM, 2), (nn.GRU, 2), (nn.RNN, 1)])
def test_removing_dead_hidden_units_is_exact(kind, layers):
    torch.manual_seed(0)
    model = Spotter(kind, layers).eval()
    _kill_units(model, [1, 2, 4, 7])
    ctx = _ctx()
    small, report = compress(model, [PruneChannels(0.5, epochs=0)], ctx)
    r = small.rnn
    assert r.hidden_size == 4 and small.fc.in_features == 4
    gates = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[kind]
    for l in range(layers):  # inner layers lose as many units (torch keeps one hidden_size)
        assert getattr(r, f"weight_hh_l{l}").shape == (4 * gates, 4)
        assert getattr(r, f"weight_ih_l{l}").shape == (4 * gates, 5 if l == 0 else 4)
    x = torch.tensor(ctx.X_test)
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=1e-6)
    assert report.final.params < 0.5 * report.initial.params


def test_a_pruned_lstm_exports_and_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    ctx = _ctx(1)
    small, _ = compress(Spotter(nn.LSTM, 2, 16).eval(), [PruneChannels(0.5, epochs=0)], ctx)
    assert small.rnn.hidden_size == 8
    res = export_onnx(small, tmp_path / "s.onnx", ctx.X_test)
    assert not res.quantized and res.max_abs_error <= res.tolerance


def test_a_bidirectional_lstm_is_refused_naming_the_layer():
    with pytest.raises(UnsupportedOpError, match=r"'LSTM' in node 'rnn'.*bidirectional"):
        compress(Spotter(bidirectional=True).eval(), [PruneChannels(0.5, epochs=0)], _ctx())


@pytest.mark.parametrize("kind,gates", [(nn.LSTM, 4), (nn.GRU, 3)])
def test_macs_count_every_gate_of_every_layer_and_step(kind, gates):
    from toolchain.compress.metrics import model_stats

    model = Spotter(kind, 2, 8).eval()
    s = model_stats(model, np.zeros((1, 6, 5), np.float32))
    assert s.macs == 6 * (gates * 8 * (5 + 8) + gates * 8 * (8 + 8)) + 8 * 4


class FinalState(nn.Module):
    """Reads the LSTM's final state h_n, which torch-pruning's graph does not follow."""

    def __init__(self):
        super().__init__()
        self.rnn, self.fc = nn.LSTM(5, 8, batch_first=True), nn.Linear(8, 4)

    def forward(self, x):
        _, (h, _) = self.rnn(x)
        return self.fc(h[-1])


def test_a_layer_read_through_its_final_state_is_refused_naming_it():
    with pytest.raises(UnsupportedOpError, match=r"'LSTM' in node 'rnn'.*h_n"):
        compress(FinalState().eval(), [PruneChannels(0.5, epochs=0)], _ctx())
