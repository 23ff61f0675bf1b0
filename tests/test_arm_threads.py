"""--threads N: parallel kernels over the driver's static pthread pool, no TVM runtime.

Threaded builds must verify like serial ones on the host and under qemu, reference the
parallel launch only when N > 1, and leave N = 1 builds byte-identical to what they were.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from onnx_graphs import have, make_small_cnn, needs_target, save
from toolchain.cli import main
from toolchain.commands.build import verify_folder

TARGETS = ["host", "arm-a72", "armv7-a7"]


def compile_model(model: Path, target: str, out: Path, *flags: str) -> Path:
    assert main(["compile", str(model), "-t", target, "-o", str(out), *flags]) == 0
    return out


def symbols(path: Path, *flags: str) -> set[str]:
    text = subprocess.run(["nm", *flags, str(path)], capture_output=True, text=True,
                          check=True).stdout
    return {line.split()[-1] for line in text.splitlines() if line.strip() and ":" not in line}


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory) -> Path:
    return save(make_small_cnn(), tmp_path_factory.mktemp("m") / "small_cnn.onnx")


@pytest.fixture(scope="module")
def host_threaded(small_cnn, tmp_path_factory) -> Path:
    return compile_model(small_cnn, "host", tmp_path_factory.mktemp("h") / "out",
                         "--threads", "2", "--keep-build")


@pytest.mark.parametrize("target", [pytest.param(t, marks=needs_target(t)) for t in TARGETS])
def test_threaded_build_verifies(small_cnn, host_threaded, tmp_path, target):
    out = host_threaded if target == "host" else compile_model(
        small_cnn, target, tmp_path / "out", "--threads", "2")
    for seed in (0, 1):
        results = verify_folder(out, seed=seed)
        assert results and all(c.ok for c in results), results
        assert all(c.output_range > 0 for c in results)
    report = json.loads((out / "report.json").read_text())
    assert report["threads"] == 2
    header = (out / "model.h").read_text()
    assert "#define EDGEC_MODEL_NEEDS_PTHREAD 1" in header and "-pthread" in header


@needs_target("host")
@pytest.mark.parametrize("threads", [2, 3])
def test_batched_conv_parallel_over_channel_tiles(tmp_path, threads):
    """Batch 4: the convs go parallel over (batch, channel tile), each task packing its own
    weights in workspace from inside the parallel body (per-thread stacks); 3 threads take
    the row-parallel path with an uneven split instead."""
    model = save(make_small_cnn(batch=4), tmp_path / "cnn4.onnx")
    out = compile_model(model, "host", tmp_path / "out", "--threads", str(threads))
    results = verify_folder(out, seed=3)
    assert results and all(c.ok for c in results), results


@needs_target("host")
def test_zoo_cnn_threaded(tmp_path):
    path = tmp_path / "cnn.onnx"
    assert main(["compress", "cnn", "-o", str(path)]) == 0
    out = compile_model(path, "host", tmp_path / "out", "--threads", "2")
    results = verify_folder(out)
    assert results and all(c.ok for c in results), results


@pytest.mark.skipif(not have("nm"), reason="no nm")
def test_kernels_reference_parallel_launch_only_when_threaded(host_threaded, small_cnn, tmp_path):
    kernels = symbols(host_threaded / "build" / "kernels.o")
    assert "__TVMBackendParallelLaunch" in kernels
    # The driver defines it (and the pool needs pthreads); still no heap, no TVM runtime.
    lib = host_threaded / "libmodel.a"
    undefined = symbols(lib, "-u") - symbols(lib, "--defined-only")
    assert "__TVMBackendParallelLaunch" in symbols(lib, "--defined-only")
    assert "pthread_create" in undefined
    for sym in ("malloc", "calloc", "realloc", "TVMBackendParallelLaunch",
                "TVMFFIErrorSetRaisedFromCStrParts"):
        assert sym not in undefined, sym

    serial = compile_model(small_cnn, "host", tmp_path / "serial", "--keep-build")
    assert "__TVMBackendParallelLaunch" not in symbols(serial / "build" / "kernels.o")
    assert "pthread_create" not in symbols(serial / "libmodel.a", "-u")


@needs_target("arm-a72")
def test_threads_one_is_the_serial_build(small_cnn, compiled_small_cnn, tmp_path):
    """``threads = 1`` (from a config file) builds the same bytes as no option at all."""
    default = compiled_small_cnn("arm-a72")
    cfg = tmp_path / "edgec.toml"
    cfg.write_text(f'[compile]\ntarget = "arm-a72"\nthreads = 1\noutput = "{tmp_path / "one"}"\n')
    assert main(["compile", str(small_cnn), "--config", str(cfg)]) == 0
    for name in ("model", "libmodel.a", "model.h"):
        assert (default / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert "pthread" not in (default / "model.h").read_text()


def test_config_file_sets_threads(small_cnn, tmp_path):
    cfg = tmp_path / "edgec.toml"
    cfg.write_text(f'[compile]\ntarget = "host"\nthreads = 2\noutput = "{tmp_path / "o"}"\n')
    assert main(["compile", str(small_cnn), "--config", str(cfg)]) == 0
    assert json.loads((tmp_path / "o" / "report.json").read_text())["threads"] == 2


@pytest.mark.parametrize("value", ["0", "-3", "100000"])
def test_bad_thread_count_is_one_line_error(small_cnn, tmp_path, capsys, value):
    assert main(["compile", str(small_cnn), "-t", "host", "-o", str(tmp_path / "o"),
                 "--threads", value]) != 0
    assert "--threads must be" in capsys.readouterr().err


@needs_target("host")
def test_bench_reuses_the_pool(host_threaded):
    proc = subprocess.run([str(host_threaded / "model"), "--bench", "20"], capture_output=True,
                          text=True, check=True)
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("median_ms ") and float(last.split()[1]) > 0


@needs_target("host")
def test_embedded_threaded_library_links_with_pthread(host_threaded, tmp_path):
    (tmp_path / "app.c").write_text(r"""
#include <stdio.h>
#include "model.h"
#if !EDGEC_MODEL_NEEDS_PTHREAD
#error "model.h should say that the library needs pthreads"
#endif
int main(void) {
  static float x[EDGEC_MODEL_INPUT0_ELEMENTS], y[EDGEC_MODEL_OUTPUT0_ELEMENTS];
  for (int run = 0; run < 3; ++run) {
    for (unsigned i = 0; i < EDGEC_MODEL_INPUT0_ELEMENTS; ++i) x[i] = (float)((i + run) % 7) / 7.0f - 0.5f;
    if (edgec_model_run(x, y) != 0) { printf("error %s\n", edgec_model_last_error()); return 1; }
  }
  for (unsigned i = 0; i < EDGEC_MODEL_OUTPUT0_ELEMENTS; ++i) printf("%.9g\n", y[i]);
  return 0;
}
""")
    subprocess.run(["cc", "-O1", f"-I{host_threaded}", "app.c", str(host_threaded / "libmodel.a"),
                    "-pthread", "-lm", "-o", "app"], cwd=tmp_path, check=True)
    got = np.array([float(v) for v in subprocess.run([str(tmp_path / "app")], capture_output=True,
                                                     text=True, check=True).stdout.split()])
    x = (((np.arange(3 * 16 * 16) + 2) % 7) / 7.0 - 0.5).astype(np.float32).reshape(1, 3, 16, 16)
    from toolchain.reference import run_reference

    ref = run_reference(host_threaded / "model.onnx", [x])[0].reshape(-1)
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_integer_model_threaded_verifies(tmp_path):
    """The threads field reaches the integer pipeline's schedule too (int8 GEMM kernels)."""
    q = tmp_path / "cnn_q8.onnx"
    assert main(["compress", "cnn", "--quantize", "int8", "-o", str(q)]) == 0
    out = tmp_path / "o"
    assert main(["compile", str(q), "-t", "host", "--threads", "2", "-o", str(out)]) == 0
    import json

    report = json.loads((out / "report.json").read_text())
    assert report["pipeline"] == "cpu-int" and report["threads"] == 2
    assert main(["verify", str(out)]) == 0
