"""Language models (issue 9): the decode-graph contract, the in-place KV cache, the generating
binary and its C API, and edgec verify's token-by-token comparison with onnxruntime.

One tiny LM (2 layers, dim 32, T=32, random weights) compiled once per form: S=1 with
ScatterElements on the host, S=4 with ScatterND on arm-a72 under qemu."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from lm_tiny import export_tiny_lm
from onnx_graphs import needs_target
from toolchain.cli import main
from toolchain.errors import ModelError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    return {"elements": export_tiny_lm(root / "lm_s1.onnx", seq=1, scatter="elements"),
            "nd": export_tiny_lm(root / "lm_s4.onnx", seq=4, scatter="nd")}


@pytest.fixture(scope="module")
def host_lm(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_host") / "out"
    assert main(["compile", str(tiny["elements"]), "-t", "host", "-o", str(out)]) == 0
    return out


def _run(out: Path, *args, check=True):
    return subprocess.run([str(out / "model"), *args], capture_output=True, text=True,
                          timeout=120, check=check)


# ---------------------------------------------------------------- contract and plan
def test_contract_recognised_and_half_contracts_refused(tiny, small_cnn):
    from toolchain.optimizer.kvcache import lm_contract

    lm = lm_contract(onnx.load(str(tiny["nd"])))
    assert (lm.seq, lm.context, lm.vocab, lm.layers, lm.heads, lm.head_dim) == (4, 32, 256, 2, 2,
                                                                               16)
    assert lm_contract(onnx.load(str(small_cnn))) is None
    broken = onnx.load(str(tiny["elements"]))
    broken.graph.input[1].name = "pos"  # position renamed
    with pytest.raises(ModelError, match="position is not int64"):
        lm_contract(broken)


def test_windowed_prefill_graph_generates_what_the_step_graph_does(tiny):
    """The S=4 graph, fed as the driver feeds it (padded windows, the window moved back to
    T - S near the end of the context), gives the S=1 graph's tokens and logits (same weights)."""
    from toolchain.lm_reference import OrtGenerator
    from toolchain.optimizer.kvcache import lm_contract

    one, four = (OrtGenerator(tiny[k], lm_contract(onnx.load(str(tiny[k]))))
                 for k in ("elements", "nd"))
    for prompt in (b"def main(args):\n", b"x" * 30, b"ab"):
        ids1, logits1 = one.generate(list(prompt), 40)
        ids4, logits4 = four.generate(list(prompt), 40)
        assert ids1 == ids4 and len(ids1) == 33 - len(prompt)
        np.testing.assert_allclose(logits1, logits4, atol=1e-5)


def test_cache_read_elsewhere_is_a_one_line_error(tiny, tmp_path, capsys):
    from onnx import helper

    m = onnx.load(str(tiny["elements"]))  # the past cache is read by another node too
    m.graph.node.append(helper.make_node("ReduceSum", ["past_key_0"], ["extra"], keepdims=0))
    m.graph.output.append(helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, []))
    onnx.save(m, str(tmp_path / "bad.onnx"))
    assert main(["compile", str(tmp_path / "bad.onnx"), "-t", "host", "-o",
                 str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "past_key_0 are read by more than the node" in err and "Traceback" not in err


def test_cache_is_updated_in_place_and_never_shares_memory(tiny):
    from toolchain.onnx_io import fix_input_shapes, input_specs, load_model, output_specs
    from toolchain.optimizer.frontend import import_onnx
    from toolchain.optimizer.kvcache import lm_contract
    from toolchain.optimizer.memplan import MemoryPlan, plan_memory
    from toolchain.targets.cpu.pipeline import PipelineContext, run_pipeline
    from toolchain.optimizer.plan import build_plan
    from toolchain.passes import cleanup_passes, transform
    from toolchain.targets.cpu.device import CpuDevice
    from toolchain.targets.cpu.lm_driver import check_cache_buffers
    from toolchain.targets.registry import device

    model = transform(fix_input_shapes(load_model(tiny["elements"]), {}), cleanup_passes())
    lm = lm_contract(model)
    ctx = PipelineContext(target=CpuDevice.from_device(device("host")).tvm_target(),
                          schedule="none")
    plan = build_plan(run_pipeline(import_onnx(model, "host"), "cpu", ctx).mod)
    names_in = [s.name for s in input_specs(model)]
    names_out = [s.name for s in output_specs(model)]
    writes = [c for c in plan.calls if c.kernel == "kv_write_rows"]
    assert len(writes) == 4 and not any("scatter" in c.kernel for c in plan.calls)
    caches = set(plan.inputs[2:])
    for call in plan.calls:  # the caches are only written in place and read by matmuls
        if caches & set(call.inputs):
            assert call.kernel == "kv_write_rows" or call.kernel.startswith("matmul"), call
    for name in ("key_0", "value_0", "key_1", "value_1"):  # present is past: one buffer
        assert plan.outputs[names_out.index(f"present_{name}")] == \
            plan.inputs[names_in.index(f"past_{name}")]
    for call in writes:  # S rows written: the rows argument is [1, H, 1, D]
        assert plan.buffers[call.args[2]].shape == (1, 2, 1, 16)
    mem = plan_memory(plan)
    check_cache_buffers(plan, mem, names_in, names_out, lm)
    cache = plan.inputs[names_in.index("past_key_0")]
    other = next(b for b in mem.offsets if b != cache and plan.buffers[b].nbytes)
    clash = dict(mem.offsets)
    clash[other] = mem.offsets[cache]  # a planner that aliased the cache is caught
    with pytest.raises(ModelError, match="shares memory"):
        check_cache_buffers(plan, MemoryPlan(clash, mem.arena_bytes, mem.no_reuse_bytes),
                            names_in, names_out, lm)


# ---------------------------------------------------------------- host binary
def test_host_lm_verifies_and_generates(host_lm):
    report = json.loads((host_lm / "report.json").read_text())
    assert report["lm"]["context"] == 32 and report["lm"]["tokens"] == 256
    # the embedding table counts one row per token: less than all weights
    assert report["lm"]["weight_bytes_per_token"] < report["memory"]["weight_bytes"]
    assert main(["verify", str(host_lm)]) == 0

    greedy = _run(host_lm, "--prompt", "Hi", "--tokens", "8", "--temperature", "0", "--ids")
    lines = greedy.stdout.splitlines()
    assert len(lines) == 9 and lines[-1].startswith("prefill ") and "decode" in lines[-1]
    ids = [int(x) for x in lines[:-1]]
    from toolchain.lm_reference import OrtGenerator
    from toolchain.optimizer.kvcache import LMContract

    ref = OrtGenerator(host_lm / "model.onnx", LMContract.from_json(report["lm"]))
    assert ids == ref.generate(list(b"Hi"), 8)[0]

    sampled = [_run(host_lm, "--prompt", "Hi", "--tokens", "12", "--seed", str(s), "--ids")
               .stdout.splitlines()[:-1] for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]
    text = _run(host_lm, "--prompt", "Hi", "--tokens", "4").stdout.splitlines()
    assert text[0].startswith("Hi") and "tokens/s" in text[-1]

    limited = _run(host_lm, "--prompt", "x" * 30, "--tokens", "10", "--ids")
    assert "limited to 3" in limited.stderr and len(limited.stdout.splitlines()) == 4
    full = _run(host_lm, "--prompt", "x" * 33, check=False)
    assert full.returncode == 2 and "context full" in full.stderr
    assert "context 32 tokens, 1 per graph call" in _run(host_lm, "--help").stdout
    bench = _run(host_lm, "--bench-tokens", "40").stdout.splitlines()
    assert bench[-1].startswith("decode_tokens_per_s ") and float(bench[-1].split()[1]) > 0


def test_token_id_out_of_range_is_refused(host_lm, tmp_path):
    # raw tensor mode: the Gather index check of every edgec model
    specs = json.loads((host_lm / "edgec.json").read_text())["inputs"]
    files = []
    for i, s in enumerate(specs):
        arr = np.zeros(s["shape"], s["dtype"])
        if s["name"] == "input_ids":
            arr[...] = 1000000
        files.append(tmp_path / f"in{i}.bin")
        arr.tofile(files[-1])
    outs = [tmp_path / f"out{i}.bin" for i in range(5)]
    run = _run(host_lm, *map(str, files + outs), check=False)
    assert run.returncode == 2 and "1000000" in run.stderr
    np.zeros(1, np.int64).tofile(files[0])
    np.full(1, 1000, np.int64).tofile(files[1])  # position past the context
    run = _run(host_lm, *map(str, files + outs), check=False)
    assert run.returncode == 2 and "input 'position' 1000 is outside [0, 32)" in run.stderr

    # the C API: an application linking libmodel.a
    app = tmp_path / "app.c"
    app.write_text("""
#include <stdio.h>
#include "model.h"
int main(void) {
  static float logits[EDGEC_LM_VOCAB];
  int32_t ids[3] = {72, 105, 1000000};
  edgec_lm_reset();
  int bad = edgec_lm_prefill(ids, 3, logits);
  printf("%d %d %s\\n", bad, edgec_lm_position(), edgec_model_last_error());
  int ok = edgec_lm_prefill(ids, 2, logits);
  for (int i = 2; i < EDGEC_LM_CONTEXT && ok == 0; ++i) ok = edgec_lm_step(33, logits);
  int full = edgec_lm_step(33, logits);
  printf("%d %d %d %s\\n", ok, full, edgec_lm_position(), edgec_model_last_error());
  return 0;
}
""")
    subprocess.run(["cc", "-O1", "-I", str(host_lm), str(app), str(host_lm / "libmodel.a"),
                    "-lm", "-o", str(tmp_path / "app")], check=True)
    lines = subprocess.run([str(tmp_path / "app")], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert lines[0] == "-2 0 token id 1000000 is outside [0, 256)"
    assert lines[1] == "0 -3 32 context full: position + 33 tokens, the context holds 32"


# ---------------------------------------------------------------- arm-a72, S=4 prefill graph
@needs_target("arm-a72")
def test_arm_a72_prefill_graph_verifies(tiny, tmp_path):
    out = tmp_path / "out"
    assert main(["compile", str(tiny["nd"]), "-t", "arm-a72", "-o", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["lm"]["seq"] == 4
    # verify's prompts run past T - S: the window re-feeds cached tokens there
    assert main(["verify", str(out)]) == 0
