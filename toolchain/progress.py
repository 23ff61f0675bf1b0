"""Progress bars for edgec's long steps (training, fine-tuning, distillation).

A bar is drawn with tqdm on stderr, and only when stderr is a terminal: build logs, pipes,
``--json``/``--quiet`` runs and CI (``CI`` set) get no bar at all, so stdout and captured output
stay exactly as they were. tqdm was chosen because it is small, pure Python and has no
dependencies of its own; rich would bring a renderer edgec does not otherwise need.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")

_enabled = True


def set_enabled(flag: bool) -> None:
    """Turn every bar off (the CLI does so for ``--quiet`` and ``--json``)."""
    global _enabled
    _enabled = bool(flag)


def shown() -> bool:
    """Whether a bar would be drawn now."""
    stream = sys.stderr
    return (_enabled and not os.environ.get("CI") and hasattr(stream, "isatty")
            and stream.isatty())


def bar(iterable: Iterable[T], *, total: int | None = None, desc: str = "",
        unit: str = "it") -> Iterable[T]:
    """``iterable`` itself when no bar is shown, else a tqdm bar over it that is removed from
    the terminal when it ends."""
    if not shown():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=sys.stderr,
                dynamic_ncols=True)
