"""Language-model compression (toolchain/compress/lm_*.py): grids, GPTQ, pruning, low rank,
distillation, the QDQ decode graph and the CLI, on tiny ByteLMs (a few optimisation steps)."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from toolchain.compress.lm_distill import LMDistill
from toolchain.compress.lm_lowrank import LMLowRank, LowRankLinear
from toolchain.compress.lm_prune import LMPrune, is_2_4, mlp_linears
from toolchain.compress.lm_qdq import export_qdq, pack_int4
from toolchain.compress.lm_quant import (LMQuantize, QuantizedLinear, dequantize, gptq,
                                         quantized_layers, rtn)
from toolchain.compress.lm_task import LMTask, run_steps, weight_bytes
from toolchain.errors import ConfigError
from toolchain.models import lm, text

CFG = lm.LMConfig(layers=1, dim=32, heads=2, hidden=64, context=16)


@pytest.fixture(scope="module")
def task() -> LMTask:
    # a slice of the real corpus keeps each bpb evaluation short
    return LMTask(train=text.train_bytes()[:20000], heldout=text.held_out_bytes()[:1200],
                  bpb=lm.bits_per_byte, seq_len=16, batch=8)


@pytest.fixture(scope="module")
def tiny(task) -> lm.ByteLM:
    """A tiny LM trained for a few steps, so its weights are not the plain init."""
    torch.manual_seed(0)
    model = lm.ByteLM(CFG)
    lm.train_lm(model, lm.LMRecipe(steps=40, batch=8, lr=1e-2, warmup=5), task.train)
    return model.eval()


# ---------------------------------------------------------------- grids
@pytest.mark.parametrize("bits,group", [(8, None), (4, 32), (4, 16)])
def test_rtn_grid_equals_torchao(bits, group):
    """Codes and scales are exactly torchao's IntxWeightOnlyConfig (symmetric) on the same
    weight: the reference implementation of this grid."""
    torchao = pytest.importorskip("torchao")
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_primitives import MappingType

    torch.manual_seed(1)
    layer = torch.nn.Sequential(torch.nn.Linear(64, 24))
    q, s = rtn(layer[0].weight, bits, group)
    quantize_(layer, IntxWeightOnlyConfig(
        weight_dtype=getattr(torch, f"int{bits}"), mapping_type=MappingType.SYMMETRIC,
        granularity=PerGroup(group) if group else PerAxis(0)))
    ref = layer[0].weight
    assert torch.equal(q, ref.qdata.to(torch.int8))
    assert torch.equal(s, ref.scale.reshape(s.shape).float())
    assert torch.equal(dequantize(q, s), ref.dequantize().float())
    assert torchao.__version__ == "0.18.0"


def test_gptq_beats_rtn_on_correlated_inputs():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=gen)
    mix = torch.randn(64, 64, generator=gen)
    x = torch.randn(2048, 64, generator=gen) @ mix  # correlated features: a non-diagonal H
    h = (x.double().T @ x.double()) / len(x)
    for bits, group in ((4, 32), (8, None)):
        qr, sr = rtn(w, bits, group)
        qg, sg = gptq(w, h, bits, group)
        err_r = torch.linalg.norm(x @ (w - dequantize(qr, sr)).T)
        err_g = torch.linalg.norm(x @ (w - dequantize(qg, sg)).T)
        assert err_g < 0.8 * err_r, (bits, float(err_g), float(err_r))
        lo, hi = (-8, 7) if bits == 4 else (-128, 127)
        assert int(qg.min()) >= lo and int(qg.max()) <= hi


def test_gptq_keeps_pruned_zeros():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(8, 32, generator=gen)
    w[:, ::3] = 0.0
    x = torch.randn(256, 32, generator=gen)
    q, _ = gptq(w, x.double().T @ x.double(), 4, 16)
    assert bool((q[w == 0] == 0).all())


# ---------------------------------------------------------------- steps and report
def test_quantize_steps_report_bpb_and_bytes(tiny, task):
    _, rep8 = run_steps(copy.deepcopy(tiny), [LMQuantize(8, None, "rtn")], task, "tiny")
    q4, rep4 = run_steps(copy.deepcopy(tiny), [LMQuantize(4, 16, "gptq")], task, "tiny")
    float_bytes = rep8.initial.weight_bytes
    assert float_bytes == 4 * sum(p.numel() for p in tiny.parameters())
    layers = quantized_layers(q4)
    assert len(layers) == 1 * 6 + 1  # q, k, v, o, fc, proj per block + the head
    # int4 g16: half a byte per weight + one float32 scale per 16 weights, the rest float32
    lin = sum(m.weight.numel() for m in layers.values())
    other = sum(p.numel() for p in q4.parameters()) - lin
    assert rep4.final.weight_bytes == int(np.ceil(lin / 2 + lin / 16 * 4 + other * 4))
    assert rep4.final.weight_bytes < rep8.final.weight_bytes < float_bytes
    for rep in (rep8, rep4):
        step = rep.to_json()["steps"][0]
        assert step["before"]["bpb"] == pytest.approx(rep.initial.bpb, abs=1e-5)
        assert abs(step["bpb_change_percent"]) < 5.0
    assert rep8.final.bpb == pytest.approx(rep8.initial.bpb, rel=0.01)


def test_quantize_rejects_bad_settings(tiny, task):
    with pytest.raises(ConfigError, match="does not divide"):
        LMQuantize(4, 24).apply(copy.deepcopy(tiny), task)
    with pytest.raises(ConfigError, match="group size"):
        LMQuantize(4, None)
    with pytest.raises(ConfigError, match="method"):
        LMQuantize(4, 32, "awq")


def test_prune_2_4_only_mlp_and_held_through_finetune(tiny, task):
    model = LMPrune.parse("2:4", steps=3).apply(copy.deepcopy(tiny), task)
    mlp = mlp_linears(model)
    assert [n for n, _ in mlp] == ["blocks.0.mlp.fc", "blocks.0.mlp.proj"]
    assert all(is_2_4(m.weight) for _, m in mlp)
    assert float((model.blocks[0].attn.q.weight == 0).float().mean()) == 0.0
    # the fine-tune moved the surviving weights, and no pruned one grew back
    fc, orig = model.blocks[0].mlp.fc.weight, tiny.blocks[0].mlp.fc.weight
    assert not torch.equal(fc, orig * (fc != 0))
    assert int((fc != 0).sum()) == fc.numel() // 2


def test_prune_magnitude_sparsity(tiny, task):
    model = LMPrune.parse("0.75", steps=0).apply(copy.deepcopy(tiny), task)
    for _, m in mlp_linears(model):
        assert float((m.weight == 0).float().mean()) == pytest.approx(0.75, abs=0.01)
    with pytest.raises(ConfigError):
        LMPrune.parse("3:8")


def test_lowrank_full_rank_is_exact_and_saves_params(tiny, task):
    x = task.calibration(2)
    # rank 16 of a 32 x 64 MLP layer saves parameters; at zero steps, the error is SVD's only
    model = LMLowRank(16, "mlp", steps=0).apply(copy.deepcopy(tiny), task)
    assert isinstance(model.blocks[0].mlp.fc, LowRankLinear)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in tiny.parameters())
    fc = tiny.blocks[0].mlp.fc
    full = LMLowRank(32, "mlp").apply  # 32 * (32 + 64) >= 32 * 64 for fc: no saving
    with pytest.raises(ConfigError, match="saves no parameters"):
        full(copy.deepcopy(tiny), task)
    from toolchain.compress.lm_lowrank import factorize
    exact = factorize(fc, 32)
    h = torch.randn(5, 32)
    assert torch.allclose(exact(h), fc(h), atol=1e-5)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_distill_moves_student_towards_teacher(tiny, task):
    teacher = copy.deepcopy(tiny)
    torch.manual_seed(3)
    student = lm.ByteLM(CFG).eval()
    x = task.calibration(4)

    def kl(s):
        with torch.no_grad():
            t = torch.log_softmax(teacher(x), -1)
            return float((t.exp() * (t - torch.log_softmax(s(x), -1))).sum(-1).mean())

    before = kl(student)
    LMDistill(teacher, "tiny", temperature=1.0, alpha=1.0, steps=8, lr=3e-3).apply(student, task)
    assert kl(student) < 0.9 * before


# ---------------------------------------------------------------- QDQ export
@pytest.mark.parametrize("bits,group", [(8, None), (4, 16)])
def test_qdq_export_follows_the_contract(tiny, task, tmp_path, bits, group):
    model = LMQuantize(bits, group, "rtn").apply(copy.deepcopy(tiny), task)
    res = export_qdq(model, tmp_path / "q.onnx", steps=[{"step": "quantize"}],
                     quantization={"mode": f"int{bits}"})
    assert res.max_abs_error <= 1e-4
    proto = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name: i for i in proto.graph.initializer}
    dqs = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == len(quantized_layers(model))
    consumers = {i: n for n in proto.graph.node for i in n.input}
    for node in dqs:
        assert len(node.input) == 2  # no zero point: symmetric
        path = node.output[0][:-len(".weight")]
        layer = model.get_submodule(path)
        assert consumers[node.output[0]].op_type == "MatMul"
        qi, si = inits[node.input[0]], numpy_helper.to_array(inits[node.input[1]])
        attrs = {a.name: a.i for a in node.attribute}
        k, n = layer.in_features, layer.out_features
        assert list(qi.dims) == [k, n]
        assert np.array_equal(numpy_helper.to_array(qi).astype(np.int8),
                              layer.weight_q.numpy().T)
        if bits == 8:
            assert qi.data_type == TensorProto.INT8 and attrs == {"axis": 1}
            assert si.shape == (n,)
        else:
            assert qi.data_type == TensorProto.INT4 and len(qi.raw_data) == k * n // 2
            assert attrs == {"axis": 0, "block_size": group} and si.shape == (k // group, n)
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == (17 if bits == 8 else 21)
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["edgec.lm"]["layers"] == 1
    layer_meta = meta["edgec.compression"]["layers"]["blocks.0.mlp.fc"]
    assert layer_meta["weight_bits"] == bits and layer_meta["block_size"] == group
    assert not any(i.name.endswith(".weight") and i.name in
                   {d.output[0] for d in dqs} for i in proto.graph.initializer)


def test_pack_int4_low_nibble_first():
    packed = pack_int4(np.array([-8, 7, 1, -1], np.int8))
    assert packed == bytes([0x78, 0xF1])
    t = onnx.helper.make_tensor("t", TensorProto.INT4, [2, 2], packed, raw=True)
    assert numpy_helper.to_array(t).astype(np.int8).tolist() == [[-8, 7], [1, -1]]


def test_lowrank_pruned_gptq_model_exports(tiny, task, tmp_path):
    steps = [LMLowRank(16, "mlp", steps=1), LMPrune.parse("2:4", steps=1),
             LMQuantize(4, 16, "gptq")]
    model, report = run_steps(copy.deepcopy(tiny), steps, task, "tiny")
    assert [s["step"] for s in report.to_json()["steps"]] == ["lowrank", "prune", "quantize"]
    assert all(is_2_4(m.weight) for _, m in mlp_linears(model))  # GPTQ kept the 2:4 zeros
    res = export_qdq(model, tmp_path / "lr.onnx", seq_len=4)
    assert res.max_abs_error <= 1e-4
    names = {n.input[1] for n in onnx.load(str(tmp_path / "lr.onnx")).graph.node
             if n.op_type == "MatMul"}
    assert {"blocks.0.mlp.fc.down.weight", "blocks.0.mlp.fc.up.weight"} <= names
    assert isinstance(model.blocks[0].mlp.fc.down, QuantizedLinear)
    assert weight_bytes(model) == report.final.weight_bytes


# ---------------------------------------------------------------- CLI
def test_cli_compress_lm_file(tiny, tmp_path, capsys):
    from toolchain.cli import main

    pt = tmp_path / "tiny.pt"
    torch.save(tiny, pt)
    out = tmp_path / "tiny_int4.onnx"
    assert main(["compress", str(pt), "--quantize", "int4", "--group-size", "16",
                 "--method", "gptq", "-o", str(out)]) == 0
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["quantization"]["mode"] == "int4" and rep["steps"][0]["method"] == "gptq"
    assert rep["final"]["weight_bytes"] < rep["initial"]["weight_bytes"]
    assert "held-out bits per byte" in capsys.readouterr().out
    assert main(["compress", str(pt), "--quantize", "int4", "--group-size", "24",
                 "-o", str(out)]) == 2
    assert main(["compress", str(pt), "--quantize", "fixed<8,3>", "-o", str(out)]) == 2
    assert main(["compress", str(pt), "--lowrank", "0.9", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not divide" in err and "--low-rank RANK" in err and "Traceback" not in err
