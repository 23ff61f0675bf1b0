"""TVM's C++ log lines that edgec has answered, kept off the user's terminal.

TVM 0.27 writes warnings from C++ straight to file descriptor 2, and has no environment
variable or Python switch for its log level. One of them reaches the user on every model
with a Gather or an Embedding (so on every attention model): lowering ``take`` prints
"Fast mode segfaults when there are out-of-bounds indices". edgec has answered it: the
generated driver checks every index a graph input feeds to a Gather before any kernel runs
and refuses an out-of-range one (``model: bad input: input 'ids' element 4: index 10 is
outside [-10, 10)``), and constant indices are checked at compile time.

``known_warnings_filtered()`` points fd 2 at a pipe while TVM lowers and a thread copies
everything on to the real fd 2 as it arrives, except the lines in ``KNOWN``. Nothing else is
held back or reordered (a partial line is passed on at once unless it may be the start of a
TVM log line, which waits for its newline).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from typing import Iterator

log = logging.getLogger(__name__)

# TVM's log prefix, then the message: "[17:00:01] /project/include/tvm/topi/transform.h:1261:
# Warning: Fast mode segfaults when there are out-of-bounds indices. Make sure ..."
KNOWN = (
    re.compile(rb"^\[[0-9:.]+\] \S+: Warning: Fast mode segfaults when there are "
               rb"out-of-bounds indices"),
)
_TVM_START = re.compile(rb"^\[[0-9:.]*(\]|$)")  # "[", "[17:0", "[17:00:01] /proj..."

_lock = threading.Lock()
_active = 0
_dropped = 0


def is_known(line: bytes) -> bool:
    return any(p.match(line) for p in KNOWN)


def _copy(read_fd: int, write_fd: int) -> None:
    """Copy ``read_fd`` to ``write_fd`` until end of file, dropping known lines."""
    global _dropped
    pending = b""
    while True:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        out = []
        for line in lines:
            if is_known(line):
                _dropped += 1
            else:
                out.append(line + b"\n")
        if pending and not _TVM_START.match(pending):
            out.append(pending)
            pending = b""
        if out:
            _write_all(write_fd, b"".join(out))
    if pending and not is_known(pending):
        _write_all(write_fd, pending)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data):]
        except OSError:  # the terminal went away: nothing to tell it
            return


@contextlib.contextmanager
def known_warnings_filtered() -> Iterator[None]:
    """While inside, fd 2 goes through the filter. Nested uses share the outer one."""
    global _active
    with _lock:
        _active += 1
        outer = _active > 1
    if outer:
        try:
            yield
        finally:
            with _lock:
                _active -= 1
        return
    dropped_before = _dropped
    _flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    copier = threading.Thread(target=_copy, args=(read_fd, saved), daemon=True,
                              name="edgec-tvm-log")
    copier.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        _flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the copier sees end of file
        copier.join()
        os.close(read_fd)
        os.close(saved)
        with _lock:
            _active -= 1
        if _dropped > dropped_before:
            log.debug("dropped %d TVM warning(s) about out-of-bounds indices: the driver "
                      "checks Gather indices itself", _dropped - dropped_before)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
