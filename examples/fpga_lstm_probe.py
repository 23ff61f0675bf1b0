"""Can hls4ml 1.3 map the zoo's 2-layer LSTM keyword spotter (kws)? A probe, not a backend.

    python examples/fpga_lstm_probe.py [--table-size 4096] [--precision "fixed<24,8>"]

hls4ml 1.3's PyTorch front end has an LSTM layer, but (hls4ml/converters/pytorch/recurrent.py)
it refuses ``num_layers > 1`` and hard-codes ``return_sequences = False``, so a second LSTM
cannot read the first one's sequence. Here the zoo's 2-layer LSTM is split into two 1-layer
LSTMs with the same weights; the first is wrapped in a leaf module whose handler (registered
with ``register_pytorch_layer_handler``, as edgec's FPGA backend does for depthwise convs)
calls hls4ml's own RNN parser and sets ``return_sequences = True``. hls4ml's channels-last
conversion would transpose (time, features) as if it were (C, W): it is turned off. The
design's C emulation is compiled and compared with PyTorch's last hidden state on random
inputs; prints the largest difference and the output range. The error comes from the
lookup-table sigmoid / tanh (``table_size``, default 1024) and the fixed-point width.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch
from torch import nn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table-size", type=int, default=4096)
    ap.add_argument("--precision", default="fixed<24,8>")
    args = ap.parse_args(argv)

    import hls4ml
    from hls4ml.converters.pytorch.recurrent import parse_rnn_layer
    from hls4ml.utils.torch import HLS4MLModule

    from toolchain import models

    kws = models.trained("kws").eval()

    class SequenceLSTM(HLS4MLModule):
        def __init__(self, lstm):
            super().__init__()
            self.lstm = lstm

        def forward(self, x):
            return self.lstm(x)[0]

    def handler(operation, name, inputs, shapes, node, obj, reader, config):
        layer, shape = parse_rnn_layer("LSTM", name, inputs, shapes, node, obj.lstm, reader,
                                       config)
        layer["return_sequences"] = True
        return layer, [shape[0], shapes[0][1], layer["n_out"]]

    hls4ml.converters.register_pytorch_layer_handler("SequenceLSTM", handler)

    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            rnn = kws.rnn
            first = nn.LSTM(rnn.input_size, rnn.hidden_size, batch_first=True)
            self.second = nn.LSTM(rnn.hidden_size, rnn.hidden_size, batch_first=True)
            for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(first, f"{k}_l0").data = getattr(rnn, f"{k}_l0").data.clone()
                getattr(self.second, f"{k}_l0").data = getattr(rnn, f"{k}_l1").data.clone()
            self.first = SequenceLSTM(first)

        def forward(self, x):
            out, (_, _) = self.second(self.first(x))
            return out

    steps, features = 8, kws.rnn.input_size
    model = Split().eval()
    cfg = hls4ml.utils.config_from_pytorch_model(
        model, input_shape=(steps, features), granularity="name",
        default_precision=args.precision, backend="Vitis", channels_last_conversion="off")
    for layer in ("first", "second"):
        cfg["LayerName"][layer]["table_size"] = args.table_size
        cfg["LayerName"][layer]["Precision"]["table"] = args.precision.replace(">", ",RND>")
    x = torch.randn(64, steps, features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden, _ = kws.rnn(x)
        ref = hidden[:, -1].numpy()
    with tempfile.TemporaryDirectory() as tmp:
        hm = hls4ml.converters.convert_from_pytorch_model(
            model, hls_config=cfg, output_dir=tmp, backend="Vitis", io_type="io_parallel")
        hm.compile()
        got = np.asarray(hm.predict(np.ascontiguousarray(x.numpy().reshape(len(x), -1))))
    err = float(np.abs(got.reshape(ref.shape) - ref).max())
    print(f"kws 2-layer LSTM on hls4ml ({args.precision}, table {args.table_size}): max abs "
          f"error {err:.4f} of output range {float(np.abs(ref).max()):.4f} "
          f"({[l.class_name for l in hm.get_layers()]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
