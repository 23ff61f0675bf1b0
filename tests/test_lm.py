"""The zoo language model: KV-cache forward, corpus split, bits per byte, training, and the ONNX
decode-graph contract (checked against PyTorch with onnxruntime). Tiny configs only."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from toolchain import models
from toolchain.compress.lm_export import (OrtDecoder, build_decode_graph, export_lm,
                                          io_names, linear_weights, lm_meta)
from toolchain.errors import ConfigError, ModelError
from toolchain.models import lm, text

TINY = lm.LMConfig(layers=2, dim=32, heads=2, hidden=64, context=16)
VARIANTS = [TINY, lm.LMConfig(layers=2, dim=32, heads=4, hidden=48, context=16, norm="rms",
                              act="silu")]


def tiny(cfg: lm.LMConfig = TINY, seed: int = 0) -> lm.ByteLM:
    torch.manual_seed(seed)
    return lm.ByteLM(cfg).eval()


def stepwise(model: lm.ByteLM, ids: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    pasts, pos, out = model.empty_cache(), 0, []
    for n in chunks:
        logits, pasts = model(ids[:, pos:pos + n], torch.tensor([pos]), pasts)
        out.append(logits)
        pos += n
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("cfg", VARIANTS, ids=["layernorm-gelu", "rmsnorm-silu"])
def test_kv_cache_steps_equal_the_full_forward(cfg):
    model = tiny(cfg)
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)
        for chunks in ([16], [1] * 16, [5, 1, 1, 9]):
            assert torch.allclose(stepwise(model, ids, chunks), full, atol=1e-5), chunks


def test_cache_rows_written_and_rows_after_ignored():
    model = tiny()
    ids = torch.tensor([[7, 8, 9]])
    zeros = model.empty_cache()
    junk = [(torch.randn_like(k), torch.randn_like(v)) for k, v in zeros]
    with torch.no_grad():
        a, pa = model(ids, torch.tensor([0]), zeros)
        b, pb = model(ids, torch.tensor([0]), junk)
    assert torch.allclose(a, b, atol=1e-6)  # rows >= 3 of the past are masked out
    for (k0, v0), (kj, vj), (k_junk, v_junk) in zip(pa, pb, junk):
        assert torch.equal(k0[:, :, :3], kj[:, :, :3]) and torch.equal(v0[:, :, :3], vj[:, :, :3])
        assert torch.equal(kj[:, :, 3:], k_junk[:, :, 3:]) and torch.equal(vj[:, :, 3:],
                                                                             v_junk[:, :, 3:])
        assert not k0[:, :, :3].eq(0).all() and k0[:, :, 3:].eq(0).all()


def test_cached_forward_rejects_positions_outside_the_context():
    model = tiny()
    with pytest.raises(ValueError, match="do not fit"):
        model(torch.zeros(1, 2, dtype=torch.long), torch.tensor([15]), model.empty_cache())
    with pytest.raises(ValueError, match="exceed the context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_corpus_split_by_topic_is_deterministic_and_disjoint():
    train, held = text.split_topics()
    assert len(train) + len(held) == len(text.topics()) >= 70
    assert not set(train) & set(held) and 5 <= len(held) <= len(train) // 4
    t, h = text.train_bytes(), text.held_out_bytes()
    assert len(t) > 300_000 and 10_000 < len(h) < len(t) // 5
    assert text.topics()[held[0]].encode() in h and text.topics()[held[0]].encode() not in t
    assert len(text.corpus_hash()) == 12


def test_bits_per_byte_of_a_uniform_model_is_8():
    model = tiny()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    data = bytes(range(256)) * 2
    assert lm.bits_per_byte(model, data) == pytest.approx(8.0, abs=1e-6)
    assert lm.perplexity(model, data) == pytest.approx(256.0, rel=1e-5)


def test_bits_per_byte_scores_every_byte_but_the_first_once():
    model = tiny()
    data = text.held_out_bytes()[:100]  # 99 scored bytes: 6 windows of 16, the last partial
    x = torch.tensor(list(data))[None]
    with torch.no_grad():
        nll = 0.0
        for i in range(0, 99, 16):
            logits = model(x[:, i:min(i + 16, 99)])
            nll += float(nn.functional.cross_entropy(logits[0], x[0, i + 1:i + 17],
                                                     reduction="sum"))
    assert lm.bits_per_byte(model, data) == pytest.approx(nll / 99 / math.log(2), rel=1e-5)


def test_training_is_deterministic_and_lowers_bits_per_byte():
    recipe = lm.LMRecipe(steps=40, batch=8, lr=3e-3, warmup=5)
    held = text.held_out_bytes()[:4000]
    a, b = tiny(), tiny()
    before = lm.bits_per_byte(a, held)
    lm.train_lm(a, recipe, text.train_bytes())
    lm.train_lm(b, recipe, text.train_bytes())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert lm.bits_per_byte(a, held) < before - 1.0


def test_distillation_pulls_the_student_towards_the_teacher():
    teacher, student = tiny(seed=1), tiny(seed=0)
    x = torch.tensor(list(text.held_out_bytes()[:64])).reshape(4, 16)

    def kl() -> float:
        with torch.no_grad():
            return float(nn.functional.kl_div(student(x).log_softmax(-1),
                                              teacher(x).softmax(-1), reduction="batchmean"))

    before = kl()
    lm.train_lm(student, lm.LMRecipe(steps=15, batch=4, warmup=2), text.train_bytes(),
                teacher=teacher, temperature=1.0, alpha=1.0)
    assert kl() < before / 2


def test_zoo_entries(tmp_path, monkeypatch):
    assert models.names("lm") == ["lm", "lm-teacher"]
    assert "lm" not in models.names("classifier") and "mlp" in models.names()
    assert 0.8e6 <= lm.parameters(models.build("lm")) <= 1.2e6
    assert 2e6 <= lm.parameters(models.build("lm-teacher")) <= 4e6
    assert models.spec("lm").input_shape == (128,)
    assert models.cache_key("lm") != models.cache_key("lm-teacher")
    with pytest.raises(ConfigError, match="language model"):
        models.dataset("lm")
    # the cache, with a tiny stand-in entry
    monkeypatch.setitem(models._ZOO, "lm-tiny", models.ZooModel(
        "lm-tiny", "tiny", models.TEXT, lambda: lm.ByteLM(TINY),
        lm.LMRecipe(steps=3, batch=2, warmup=1), models._train_lm))
    first = models.trained("lm-tiny", tmp_path)
    assert len(list(tmp_path.glob("lm-tiny-*.pt"))) == 1
    again = models.trained("lm-tiny", tmp_path)
    for k, v in first.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    assert not torch.equal(first.head.weight, models.build("lm-tiny").head.weight)


# ---------------------------------------------------------------- the ONNX decode graph
@pytest.fixture(scope="module")
def graphs():
    model = tiny()
    return model, {s: build_decode_graph(model, s) for s in (1, 4)}


def test_graph_follows_the_contract(graphs):
    model, built = graphs
    for s, (proto, weights) in built.items():
        g = proto.graph
        ins, outs = io_names(TINY.layers)
        assert [i.name for i in g.input] == ins and [o.name for o in g.output] == outs
        shape = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
        types = {v.name: (v.type.tensor_type.elem_type, shape(v)) for v in [*g.input, *g.output]}
        cache = [1, TINY.heads, TINY.context, TINY.head_dim]
        assert types["input_ids"] == (onnx.TensorProto.INT64, [1, s])
        assert types["position"] == (onnx.TensorProto.INT64, [1])
        assert types["logits"] == (onnx.TensorProto.FLOAT, [1, s, 256])
        assert types["past_key_1"] == types["present_value_0"] == (onnx.TensorProto.FLOAT, cache)
        assert lm_meta(proto) == {"format": 1, "layers": 2, "heads": 2, "head_dim": 16,
                                  "context": 16, "vocab": 256, "seq_len": s}
        ops = {n.op_type for n in g.node}
        assert not ops & {"Shape", "ConstantOfShape", "Identity", "Gemm", "ScatterND"}
        scatters = [n for n in g.node if n.op_type == "ScatterElements"]
        assert sorted(n.output[0] for n in scatters) == sorted(o for o in outs if "present" in o)
        for n in scatters:
            assert n.input[0] == "past" + n.output[0][len("present"):]
            assert [(a.name, a.i) for a in n.attribute] == [("axis", 2)]
        linears = {p: m for p, m in model.named_modules() if isinstance(m, nn.Linear)}
        assert weights == linear_weights(proto) == {f"{p}.weight": p for p in linears}
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
        for p, m in linears.items():
            np.testing.assert_array_equal(inits[f"{p}.weight"], m.weight.detach().numpy().T)
            np.testing.assert_array_equal(inits[f"{p}.bias"], m.bias.detach().numpy())
            (mm,) = [n for n in g.node if n.op_type == "MatMul" and n.input[1] == f"{p}.weight"]
            (add,) = [n for n in g.node if n.op_type == "Add" and n.input[0] == mm.output[0]]
            assert add.input[1] == f"{p}.bias"
        assert {"tok.weight", "pos.weight", "norm.weight", "blocks.1.norm2.bias"} <= set(inits)


@pytest.mark.parametrize("s", [1, 4])
def test_onnxruntime_matches_pytorch(graphs, s):
    model, built = graphs
    ids = np.random.default_rng(2).integers(0, 256, 14)
    with torch.no_grad():
        want = model(torch.tensor(ids)[None])[0].numpy()
    prefill = OrtDecoder(built[s][0])
    got = [prefill.feed(ids[i:i + s]) for i in range(0, 8, s)]
    step = OrtDecoder(built[1][0])  # then decode one token at a time from the same cache
    step.cache, step.position = prefill.cache, prefill.position
    got += [step.feed(ids[i:i + 1]) for i in range(8, 14)]
    np.testing.assert_allclose(np.concatenate(got), want, atol=1e-4, rtol=0)
    with pytest.raises(ModelError, match="feed takes"):
        step.feed(ids[:2])


def test_export_lm_writes_and_checks(tmp_path):
    model = tiny(VARIANTS[1])
    r = export_lm(model, tmp_path / "lm.onnx", seq_len=8, check_tokens=12)
    assert r.max_abs_error < 1e-4 and r.meta["seq_len"] == 8
    proto = onnx.load(str(tmp_path / "lm.onnx"))
    assert linear_weights(proto) == r.weights and lm_meta(proto) == r.meta
    with pytest.raises(ModelError, match="seq_len"):
        export_lm(model, tmp_path / "x.onnx", seq_len=17)
    assert not (tmp_path / "x.onnx").exists()
