"""Small models for the FPGA tests and benchmark while the zoo (issue 3) is not there.

``digits_mlp`` trains the zoo's MLP shape (16-64-32-32-5) on scikit-learn's 8x8 digits (4x4
pooled to 16 features, classes 0-4); ``quantize_qdq`` turns its float ONNX into QDQ ONNX with
power-of-two scales, as the compression stage writes it. ``digits_cnn`` is a conv-bn-relu net
on the 1x8x8 digits.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from toolchain.onnx_io import save_model


def digits_data(image: bool = False, seed: int = 0):
    """(X_train, y_train, X_test, y_test) for digits 0-4, features scaled to about [-2, 2]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    keep = y < 5
    x, y = x[keep], y[keep]
    if image:
        x = (x / 16.0 * 4 - 2).reshape(-1, 1, 8, 8)
    else:
        x = x.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(-1, 16) / 16.0 * 4 - 2
    xtr, xte, ytr, yte = train_test_split(x.astype(np.float32), y.astype(np.int64),
                                          test_size=0.4, random_state=seed, stratify=y)
    return xtr, ytr, xte, yte


def _train(model, x, y, epochs: int, seed: int):
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model[:-1](xt), yt)
        loss.backward()
        opt.step()
    model.eval()
    return model


def _export(model, example, path: Path) -> Path:
    import torch

    torch.onnx.export(model, example, str(path), input_names=["x"], output_names=["y"],
                      dynamo=False)
    save_model(onnx.load(str(path)), path)
    return path


def digits_mlp(path: Path, seed: int = 0, epochs: int = 300) -> Path:
    """Train the 16-64-32-32-5 MLP (softmax output) and save it as float ONNX."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                          nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5), nn.Softmax(dim=-1))
    xtr, ytr, _, _ = digits_data()
    _train(model, xtr, ytr, epochs, seed)
    return _export(model, torch.zeros(1, 16), Path(path))


def digits_cnn(path: Path, seed: int = 0, epochs: int = 150) -> Path:
    """Train conv(4, 3x3)-bn-relu-maxpool-flatten-linear(5)-softmax on 1x8x8 digits."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 5), nn.Softmax(dim=-1))
    xtr, ytr, _, _ = digits_data(image=True)
    _train(model, xtr, ytr, epochs, seed)
    return _export(model, torch.zeros(1, 1, 8, 8), Path(path))


def _frac_for(max_abs: float, bits: int, signed: bool) -> int:
    """Fractional bits of the power-of-two scale that just holds ``max_abs``."""
    top = bits - (1 if signed else 0)
    return top - max(0, math.ceil(math.log2(max_abs + 1e-12))) if max_abs > 0 else top


def quantize_qdq(src: Path, dst: Path, calib: np.ndarray, bits: int = 8,
                 prune: float = 0.0) -> Path:
    """QDQ-quantize a Gemm/Relu/Softmax chain with power-of-two scales (int8 weights, int32
    biases, int8 input and uint8 post-ReLU activations), optionally pruning the smallest
    weights first. Activation ranges come from ``calib``.
    """
    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    qmax = 2 ** (bits - 1) - 1
    itype = {8: np.int8, 16: np.int16}[bits]
    utype = {8: np.uint8, 16: np.uint16}[bits]
    new_nodes, new_inits = [], []

    def const(name, value):
        new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def qdq(tensor, frac, dtype, tag):
        s = const(f"{tag}_scale", np.float32(2.0 ** -frac))
        z = const(f"{tag}_zero", np.zeros((), dtype=dtype))
        new_nodes.append(helper.make_node("QuantizeLinear", [tensor, s, z], [f"{tag}_q"],
                                          name=f"{tag}_Quantize"))
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{tag}_q", s, z], [f"{tag}_dq"],
                                          name=f"{tag}_Dequantize"))
        return f"{tag}_dq"

    x = calib.reshape(calib.shape[0], -1).astype(np.float64)
    in_frac = _frac_for(float(np.abs(x).max()), bits, True)
    x = np.clip(np.round(x * 2.0 ** in_frac), -qmax - 1, qmax) / 2.0 ** in_frac
    rename = {g.input[0].name: qdq(g.input[0].name, in_frac, itype, "input")}
    act_frac = in_frac
    for node in g.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        if node.op_type == "Gemm":
            w = inits[node.input[1]].astype(np.float64)
            if prune > 0:
                w = np.where(np.abs(w) < np.quantile(np.abs(w), prune), 0.0, w)
            w_frac = _frac_for(float(np.abs(w).max()), bits, True)
            w_int = np.clip(np.round(w * 2.0 ** w_frac), -qmax - 1, qmax).astype(itype)
            b_frac = act_frac + w_frac
            b = inits[node.input[2]].astype(np.float64)
            b_int = np.round(b * 2.0 ** b_frac).astype(np.int32)
            tag = node.name.strip("/").replace("/", "_")
            wq = const(f"{tag}_w_int", w_int)
            bq = const(f"{tag}_b_int", b_int)
            for src_name, frac, zt, out in ((wq, w_frac, itype, f"{tag}_w"),
                                            (bq, b_frac, np.int32, f"{tag}_b")):
                s = const(f"{out}_scale", np.float32(2.0 ** -frac))
                z = const(f"{out}_zero", np.zeros((), dtype=zt))
                new_nodes.append(helper.make_node("DequantizeLinear", [src_name, s, z], [out],
                                                  name=f"{out}_Dequantize"))
            node.input[1], node.input[2] = f"{tag}_w", f"{tag}_b"
            wf = w_int.astype(np.float64) / 2.0 ** w_frac
            x = x @ (wf.T if any(a.name == "transB" and a.i for a in node.attribute) else wf)
            x = x + b_int / 2.0 ** b_frac
            new_nodes.append(node)
        elif node.op_type == "Relu":
            x = np.maximum(x, 0)
            act_frac = _frac_for(float(x.max()), bits, False)
            x = np.clip(np.round(x * 2.0 ** act_frac), 0, 2 * qmax + 1) / 2.0 ** act_frac
            new_nodes.append(node)
            tag = node.name.strip("/").replace("/", "_")
            rename[node.output[0]] = qdq(node.output[0], act_frac, utype, tag)
        else:
            new_nodes.append(node)
    keep = [i for i in g.initializer if any(i.name in nd.input for nd in new_nodes)]
    del g.node[:]
    g.node.extend(new_nodes)
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    if model.opset_import[0].version < 13:
        model.opset_import[0].version = 13
    onnx.checker.check_model(model)
    save_model(model, Path(dst))
    return Path(dst)
