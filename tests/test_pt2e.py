"""torchao PT2E path (toolchain/compress/pt2e*.py): attention matmuls, embeddings, the output,
QAT and int4 weights in the exported QDQ graph."""

import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from toolchain.cli import main
from toolchain.compress import Prune, Quantize, compress, export_onnx, load_data, metadata_of
from toolchain.compress.pt2e_quantizer import math_attention

pytest.importorskip("torchao")


class TinyGPT(nn.Module):
    """Token + position embeddings, one nn.TransformerEncoderLayer (causal), then hand-written
    attention: q/k/v by ``x @ W`` parameters, F.scaled_dot_product_attention."""

    def __init__(self, vocab=16, seq=8, d=16):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.block = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
        self.wq, self.wk, self.wv = (nn.Parameter(torch.randn(d, d) / 4) for _ in range(3))
        self.head = nn.Linear(d, 4)
        self.register_buffer("mask", torch.triu(torch.full((seq, seq), float("-inf")), 1))

    def forward(self, ids):
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        h = self.block(h, src_mask=self.mask, is_causal=True)
        q, k, v = (t.unflatten(-1, (2, -1)).transpose(1, 2) for t in (h @ self.wq, h @ self.wk,
                                                                       h @ self.wv))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2)
        return self.head((h + a)[:, -1])


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    """(folder, model, ctx, exported ONNX path): TinyGPT int8 through torchao, exported."""
    folder = tmp_path_factory.mktemp("pt2e")
    torch.manual_seed(0)
    model = TinyGPT().eval()
    ids = np.random.default_rng(0).integers(0, 16, (60, 8)).astype(np.int64)
    with torch.no_grad():
        y = model(torch.tensor(ids)).argmax(1).numpy()
    np.savez(folder / "gpt.npz", x=ids, y=y)
    np.savez(folder / "gpt-x.npz", x=ids)
    ctx = load_data(str(folder / "gpt.npz"))
    q, _ = compress(model, [Quantize("int8", quantizer="torchao")], ctx)
    path = folder / "gpt.onnx"
    res = export_onnx(q, path, ctx.X_test)
    assert res.quantized and res.max_abs_error <= res.tolerance
    return folder, model, q, ctx, path


def _producers(proto):
    return {o: n for n in proto.graph.node for o in n.output}


def test_math_attention_equals_torchs_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    bool_mask = torch.rand(5, 5) > 0.3
    bool_mask[:, 0] = True  # no fully masked row
    float_mask = torch.randn(5, 5)
    cases = [{}, {"is_causal": True}, {"attn_mask": bool_mask}, {"attn_mask": float_mask},
             {"scale": 0.3}]
    for kw in cases:
        want = F.scaled_dot_product_attention(q, k, v, **kw)
        with math_attention():
            got = F.scaled_dot_product_attention(q, k, v, **kw)
        assert torch.allclose(got, want, atol=1e-6), kw
    assert F.scaled_dot_product_attention.__name__ != "sdpa"  # restored


def test_every_matmul_and_embedding_is_quantized(gpt):
    _, _, _, _, path = gpt
    proto = onnx.load(str(path))
    prod = _producers(proto)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    matmuls = [n for n in proto.graph.node if n.op_type in ("MatMul", "Gemm")]
    # block: in_proj, QK^T, attn.V, out_proj, linear1, linear2; then 3 x @ W, QK^T, attn.V; head
    assert len(matmuls) == 12
    act_x_act = 0
    for n in matmuls:
        a, b = (prod.get(i) for i in n.input[:2])
        assert a is not None and a.op_type == "DequantizeLinear", n.name
        assert b is not None and b.op_type == "DequantizeLinear", n.name
        if b.input[0] in inits:  # a weight: int8, per channel
            assert inits[b.input[0]].dtype == np.int8
        else:  # attention: two quantized activations
            act_x_act += 1
            assert prod[b.input[0]].op_type == "QuantizeLinear"
    assert act_x_act == 4
    gathers = [n for n in proto.graph.node
               if n.op_type == "Gather" and n.input[0] in prod
               and prod[n.input[0]].op_type == "DequantizeLinear"]
    assert len(gathers) == 2  # both embedding tables
    for n in gathers:
        dq = prod[n.input[0]]
        table = inits[dq.input[0]]
        assert table.dtype == np.int8 and table.shape[1] == 16
        assert numpy_helper.to_array(next(t for t in proto.graph.initializer
                                          if t.name == dq.input[1])).shape == (table.shape[0],)
    assert prod[proto.graph.output[0].name].op_type == "DequantizeLinear"  # quantized output
    meta = metadata_of(proto)
    # keyed by the module each weight came from
    assert {"tok", "pos", "block.self_attn.in_proj", "block.self_attn.out_proj",
            "block.linear1", "block.linear2", "head"} <= set(meta["layers"])
    assert meta["layers"]["tok"]["onnx_weight"] == "tok.weight_quantized"
    ops = sorted(e["op"] for e in meta["layers"].values())
    assert ops.count("Embedding") == 2 and len(ops) == 2 + 8  # the 8 weight matmuls
    assert all(e["weight_bits"] == 8 for e in meta["layers"].values())
    weights = [e for e in meta["layers"].values() if e["op"] != "Embedding"]
    assert all(e["act_bits"] == 8 and e["act_scale"] > 0 for e in weights)
    assert meta["output"]["act_bits"] == 8 and meta["output"]["act_scale"] > 0


def test_export_leaves_the_pytorch_program_as_it_was(gpt):
    """torch.onnx.export restores the module's training flag: with True, torchao's train/eval
    swap would put dropout with p=0.5 into the program."""
    _, _, q, ctx, _ = gpt
    x = torch.tensor(ctx.X_test[:4])
    before = q(x)
    export_onnx(q, gpt[0] / "again.onnx", ctx.X_test[:4])
    assert torch.equal(q(x), before)


def test_int4_weights_in_the_torchao_path(gpt):
    folder, model, _, ctx, _ = gpt
    q, report = compress(model, [Quantize("int4", quantizer="torchao")], ctx)
    res = export_onnx(q, folder / "int4.onnx", ctx.X_test)
    proto = onnx.load(str(folder / "int4.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    layers = metadata_of(proto)["layers"]
    assert layers and all(e["weight_bits"] == 4 for e in layers.values())
    for e in layers.values():
        w = inits[e["onnx_weight"]]
        assert w.dtype == np.int8 and np.abs(w).max() == 7
    assert res.max_abs_error <= res.tolerance


def _cli(folder, data, *extra):
    sys.modules.setdefault("test_pt2e", sys.modules[__name__])
    TinyGPT.__module__ = "test_pt2e"
    torch.manual_seed(0)
    torch.save(TinyGPT().eval(), folder / "gpt.pt")
    out = folder / "cli.onnx"
    return main(["compress", str(folder / "gpt.pt"), "--data", str(folder / data),
                 "--quantize", "int8", "--quantizer", "torchao", *extra, "-o", str(out)]), out


def test_qat_needs_labels(gpt, capsys):
    rc, _ = _cli(gpt[0], "gpt-x.npz", "--qat-epochs", "1")
    err = capsys.readouterr().err
    assert rc != 0 and "quantization-aware training (1 epochs) needs labels" in err
    assert len(err.strip().splitlines()) == 1


def test_qat_fine_tunes_and_exports(gpt):
    import json

    rc, out = _cli(gpt[0], "gpt.npz", "--qat-epochs", "2")
    assert rc == 0
    r = json.loads(out.with_suffix(".json").read_text())
    assert r["steps"][0]["config"]["qat_epochs"] == 2
    assert r["export"]["quantized"] and r["export"]["onnx_score"] >= 50.0
    proto = onnx.load(str(out))
    meta = metadata_of(proto)
    assert sum(e["op"] == "Embedding" for e in meta["layers"].values()) == 2
    # training moved the weights: the int8 codes differ from the PTQ ones
    ptq = onnx.load(str(gpt[4]))
    codes = lambda p: sorted(numpy_helper.to_array(t).tobytes() for t in p.graph.initializer
                             if t.data_type == onnx.TensorProto.INT8)
    assert codes(proto) != codes(ptq)


def test_qat_keeps_pruned_weights_at_zero(gpt):
    folder, model, _, ctx, _ = gpt
    q, _ = compress(model, [Prune(0.5, epochs=0),
                            Quantize("int8", quantizer="torchao", qat_epochs=3)], ctx)
    export_onnx(q, folder / "pruned.onnx", ctx.X_test)
    layers = metadata_of(onnx.load(str(folder / "pruned.onnx")))["layers"]
    pruned = [e for e in layers.values() if e["op"] in ("Gemm", "MatMul")]
    # the four nn.Linear (out_proj, linear1, linear2, head) are pruned; in_proj and the x @ W
    # parameters are not (edgec's prune takes Linear / Conv modules)
    assert len(pruned) == 8 and sum(e["sparsity"] >= 0.5 for e in pruned) == 4


@pytest.mark.slow
def test_quantized_attention_model_compiles_and_verifies(gpt, tmp_path):
    out = tmp_path / "host"
    assert main(["compile", str(gpt[4]), "-t", "host", "-o", str(out)]) == 0
    assert main(["verify", str(out)]) == 0


def test_auto_sends_attention_and_embedding_models_to_torchao(gpt):
    from toolchain.compress.pt2e import PT2EQuantized
    from toolchain.compress.quantize import is_quantized

    _, model, _, ctx, _ = gpt
    q, _ = compress(model, [Quantize("int8")], ctx)
    assert isinstance(q, PT2EQuantized)
    # fixed<W,I> (power-of-two scales, for FPGAs) stays with edgec's quantizer
    q, _ = compress(model, [Quantize("fixed<8,3>")], ctx)
    assert is_quantized(q) and not isinstance(q, PT2EQuantized)
