"""TVM's known C++ warnings are kept off fd 2; everything else written there still arrives."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from toolchain import tvm_log

WARNING = ("[17:00:01] /project/include/tvm/topi/transform.h:1261: Warning: Fast mode segfaults "
           "when there are out-of-bounds indices. Make sure input indices are in bound")


def _stderr_of(body: str) -> str:
    """Run ``body`` in a fresh Python whose fd 2 is a pipe we read."""
    code = "import os, sys\nfrom toolchain.tvm_log import known_warnings_filtered\n" + \
        textwrap.dedent(body)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stderr


def test_known_lines_are_dropped_and_the_rest_kept_in_order():
    err = _stderr_of(f"""
        with known_warnings_filtered():
            os.write(2, b"before\\n{WARNING}\\n")
            os.write(2, b"[17:00:02] other.cc:3: Warning: something else\\n")
            sys.stderr.write("python line\\n")
            os.write(2, b"{WARNING[:30]}")  # a warning split across writes
            os.write(2, b"{WARNING[30:]}\\npartial no newline")
        os.write(2, b"\\nafter\\n")
        """)
    assert err == ("before\n[17:00:02] other.cc:3: Warning: something else\npython line\n"
                   "partial no newline\nafter\n")


def test_nested_use_and_fd_2_restored():
    err = _stderr_of(f"""
        before = os.fstat(2).st_ino
        with known_warnings_filtered():
            with known_warnings_filtered():
                os.write(2, b"{WARNING}\\ninner\\n")
            os.write(2, b"outer\\n")
        assert os.fstat(2).st_ino == before
        os.write(2, b"{WARNING}\\n")  # outside: not filtered
        """)
    assert err == f"inner\nouter\n{WARNING}\n"


def test_tvm_take_lowering_warning_is_silenced():
    """The real warning, from TVM lowering a take (Gather), with and without the filter."""
    body = textwrap.dedent("""
        from tvm import relax

        bb = relax.BlockBuilder()
        t = relax.Var("t", relax.TensorType((10, 4), "float32"))
        i = relax.Var("i", relax.TensorType((3,), "int64"))
        with bb.function("main", [t, i]):
            bb.emit_func_output(bb.emit(relax.op.take(t, i, axis=0)))
        M = bb.get()
        """)
    err = _stderr_of(body + "relax.transform.LegalizeOps()(M)\n"
                            "os.write(2, b'--- filtered:\\n')\n"
                            "with known_warnings_filtered():\n"
                            "    relax.transform.LegalizeOps()(M)\n")
    plain, filtered = err.split("--- filtered:\n")
    assert "Fast mode segfaults" in plain  # TVM still prints it: the filter is needed
    assert filtered == ""


def test_is_known_matches_only_the_warning():
    assert tvm_log.is_known(WARNING.encode())
    assert not tvm_log.is_known(b"[17:00:01] x.cc:1: Warning: another one")
    assert not tvm_log.is_known(b"Fast mode segfaults when there are out-of-bounds indices")
