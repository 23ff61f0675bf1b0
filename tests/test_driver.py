"""Driver generation: header constants, plan-as-C that compiles, no heap in the library."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from onnx_graphs import have
from toolchain.optimizer.memplan import plan_memory
from toolchain.optimizer.plan import CONST, INPUT, TEMP, KernelCall, KernelPlan
from toolchain.targets.cpu import driver


def tiny_plan() -> KernelPlan:
    p = KernelPlan()
    x = p.add(INPUT, (1, 4), "float32", 0)
    p.inputs.append(x)
    w = p.add(CONST, (4, 3), "float32", 0)
    p.constants.append(np.arange(12, dtype=np.float32).reshape(4, 3))
    b = p.add(CONST, (3,), "int8", 1)
    p.constants.append(np.array([1, -2, 3], np.int8))
    h = p.add(TEMP, (1, 3), "float32")
    y = p.add(TEMP, (1, 3), "int32")
    p.calls += [KernelCall("mm", (x, w, h), 1), KernelCall("cast", (h, b, y), 1)]
    p.outputs.append(y)
    return p


def test_weight_layout_is_aligned_and_complete():
    p = tiny_plan()
    layout, blob = driver.layout_weights(p)
    assert layout.offsets == [0, 64]
    assert len(blob) == layout.total == 64 + 3
    assert np.frombuffer(blob[:48], np.float32).tolist() == list(range(12))
    assert np.frombuffer(blob[64:], np.int8).tolist() == [1, -2, 3]


def test_header_describes_io():
    h = driver.header(tiny_plan(), ["x"], ["y"], "tiny.onnx")
    assert "#define EDGEC_MODEL_INPUT0_SHAPE {1, 4}" in h
    assert "#define EDGEC_MODEL_OUTPUT0_DTYPE \"int32\"" in h
    assert "#define EDGEC_MODEL_INPUT_BYTES 16u" in h
    assert "#define EDGEC_MODEL_OUTPUT_BYTES 12u" in h
    assert "typedef int32_t edgec_model_output0_t;" in h
    assert "int edgec_model_run(const void *input, void *output);" in h


@pytest.mark.skipif(not have("cc"), reason="no host C compiler")
def test_generated_c_compiles(tmp_path):
    p = tiny_plan()
    mem = plan_memory(p)
    layout, _ = driver.layout_weights(p)
    (tmp_path / "model.h").write_text(driver.header(p, ["x"], ["y"], "tiny.onnx"))
    (tmp_path / "model.c").write_text(driver.model_c(p, mem, layout, 256))
    (tmp_path / "main.c").write_text(driver.main_c(p))
    for src in ("model.c", "main.c"):
        subprocess.run(["cc", "-std=c11", "-Wall", "-Werror", "-Wno-unused-function", "-c", src],
                       cwd=tmp_path, check=True, capture_output=True)
    code = (tmp_path / "model.c").read_text()
    # int8 constants and int32 results get the right DLPack codes
    assert "{0, 8, 1}" in code and "{0, 32, 1}" in code and "{2, 32, 1}" in code
    assert code.count("__tvm_ffi_mm") == 2 and code.count("__tvm_ffi_cast") == 2


@pytest.mark.skipif(not have("nm"), reason="no nm")
def test_library_has_no_heap_and_no_tvm_runtime(compiled_small_cnn):
    out = compiled_small_cnn("host")
    def symbols(*flags):
        text = subprocess.run(["nm", *flags, str(out / "libmodel.a")], capture_output=True,
                              text=True, check=True).stdout
        return {line.split()[-1] for line in text.splitlines() if line.strip() and ":" not in line}

    undefined = symbols("-u") - symbols("--defined-only")
    assert undefined <= {"memcpy", "memset", "strlen", "strncpy", "strncat", "expf", "exp",
                         "tanhf", "sqrtf", "powf", "logf", "erff", "fmaxf", "fminf"} | {
        s for s in undefined if s.startswith("__")}, undefined
    for sym in ("malloc", "calloc", "realloc", "free", "TVMFFIErrorSetRaisedFromCStrParts",
                "TVMBackendAllocWorkspace", "pthread_create"):
        assert sym not in undefined, sym
