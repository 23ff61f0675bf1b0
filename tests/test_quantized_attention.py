"""edgec's quantizer quantizes both operands of activation x activation matmuls (attention's
Q K^T and softmax . V, ``toolchain/compress/act_matmul.py``): the QDQ ONNX has DequantizeLinear
on both MatMul inputs, the CPU lowering computes them as int32 matmuls, and the compiled model
matches onnxruntime."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from onnx_graphs import needs_target
from toolchain.cli import main
from toolchain.commands.build import verify_folder
from toolchain.compress.act_matmul import Site, find_sites, quantize_sites
from toolchain.compress.quantize import ActQuant
from toolchain.errors import ModelError


class _Head(nn.Module):
    """bmm of two activations, and a matmul with a weight (which stays float)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 6))
        self.register_buffer("basis", torch.randn(6, 6))

    def forward(self, q, k):
        return torch.bmm(q, k.transpose(1, 2)) @ self.w @ self.basis


class _Outer(nn.Module):
    """Calls the same child twice, then a matmul of its own (``@``)."""

    def __init__(self):
        super().__init__()
        self.head = _Head()

    def forward(self, x):
        a = self.head(x, x)
        return torch.matmul(a, self.head(x, x * 2))


def test_sites_are_activation_matmuls_by_owner():
    model = _Outer()
    assert find_sites(model, torch.randn(2, 6, 6)) == [Site("", 0), Site("head", 0)]


def test_operands_are_fake_quantized_after_calibration():
    torch.manual_seed(0)
    model = _Outer().eval()
    x = torch.randn(2, 6, 6)
    with torch.no_grad():
        ref = model(x)
    assert quantize_sites(model, find_sites(model, x), lambda: ActQuant(8, False)) == 2
    quants = [q for q in model.modules() if isinstance(q, ActQuant)]
    assert len(quants) == 4
    for q in quants:
        q.start_observing()
    assert torch.equal(model(x), ref)  # observing changes nothing
    for q in quants:
        q.freeze()
    with torch.no_grad():
        out = model(x)
    assert not torch.equal(out, ref)
    assert float((out - ref).abs().max()) < 0.05 * float(ref.abs().max())


class _Varying(nn.Module):
    def forward(self, x):
        for _ in range(int(x.shape[0])):
            x = x @ x
        return x


def test_a_forward_with_more_matmuls_than_calibrated_is_refused():
    model = _Varying()
    quantize_sites(model, find_sites(model, torch.randn(1, 4, 4)), lambda: ActQuant(8, False))
    with pytest.raises(ModelError, match="control flow"):
        model(torch.randn(2, 4, 4))


@pytest.fixture(scope="module")
def transformer_int8(tmp_path_factory):
    path = tmp_path_factory.mktemp("qattn") / "tr.onnx"
    assert main(["compress", "transformer", "--quantize", "int8", "-o", str(path)]) == 0
    return path


def test_attention_matmuls_read_dequantized_operands(transformer_int8):
    g = onnx.load(str(transformer_int8)).graph
    producer = {o: n for n in g.node for o in n.output}
    attn = [n for n in g.node if n.op_type == "MatMul" and "/attn/MatMul" in n.name]
    assert len(attn) == 2
    for node in attn:
        assert [producer[i].op_type for i in node.input] == ["DequantizeLinear"] * 2, node.name


def test_attention_matmuls_are_integer_after_lowering(transformer_int8):
    import tvm

    from toolchain.optimizer.frontend import import_onnx
    from toolchain.passes import cleanup_passes, transform
    from toolchain.targets.cpu.integer import LowerQDQToInteger, integer_ops

    mod = import_onnx(transform(onnx.load(str(transformer_int8)), cleanup_passes()), "host")
    with tvm.transform.PassContext(opt_level=3):
        ops = integer_ops(LowerQDQToInteger()(mod))
    assert ops.get("matmul:int32") == 2 and "matmul:float32" not in ops, ops


@pytest.mark.parametrize("target", [pytest.param("host", marks=needs_target("host"))])
def test_quantized_transformer_verifies(transformer_int8, tmp_path, target):
    """Within one output step: the int32 sums are exact where onnxruntime rounds each
    dequantized product in float32, and a softmax probability that lands on another step
    moves the logits by one (measured: exact on 169 of 200 digits, one step on the rest)."""
    out = tmp_path / "out"
    assert main(["compile", str(transformer_int8), "-t", target, "-o", str(out)]) == 0
    for seed in (0, 1):
        results = verify_folder(out, seed=seed)
        assert all(c.ok and c.output_range > 0 and c.max_abs_error <= c.abs_tolerance
                   for c in results), results


class _SDPA(nn.Module):
    """Causal attention through F.scaled_dot_product_attention (one op: its math form's two
    matmuls are the quantized ones)."""

    def __init__(self):
        super().__init__()
        self.qkv, self.out = nn.Linear(8, 24), nn.Linear(8, 3)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, 2, d // 2).permute(2, 0, 3, 1, 4)
        att = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(att.transpose(1, 2).reshape(b, t, d).mean(1))


def test_scaled_dot_product_attention_exports_with_quantized_matmuls(tmp_path):
    import numpy as np

    from toolchain.compress import Context, Quantize, compress, export_onnx

    torch.manual_seed(0)
    X = np.random.default_rng(0).standard_normal((64, 5, 8)).astype(np.float32)
    ctx = Context(X, None, X[:8], None)
    small, _ = compress(_SDPA().eval(), [Quantize("int8", quantizer="edgec")], ctx)
    result = export_onnx(small, tmp_path / "sdpa.onnx", X[:8])
    assert result.max_abs_error <= result.tolerance
    g = onnx.load(str(result.path)).graph
    producer = {o: n for n in g.node for o in n.output}
    weights = {t.name for t in g.initializer}

    def dequantized_activation(name: str) -> bool:
        dq = producer.get(name)
        return dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] not in weights

    matmuls = [n for n in g.node if n.op_type == "MatMul"
               and not any(producer.get(i) and producer[i].input[0] in weights for i in n.input)]
    assert len(matmuls) == 2 and all(dequantized_activation(i) for n in matmuls
                                     for i in n.input), [n.name for n in matmuls]
