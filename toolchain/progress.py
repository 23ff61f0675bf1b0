"""Progress bars for edgec's long steps (training, fine-tuning, distillation, the hls4ml C
compile, the RTL build and simulation).

``bar`` wraps a loop with a known length; ``spinner`` shows the elapsed time of a step that
has no count (a compiler or simulator run as one call); ``postfix`` adds figures (a loss) to
a bar. A bar is drawn with tqdm on stderr, and only when stderr is a terminal: build logs, pipes,
``--json``/``--quiet`` runs and CI (``CI`` set) get no bar at all, so stdout and captured output
stay exactly as they were. tqdm was chosen because it is small, pure Python and has no
dependencies of its own; rich would bring a renderer edgec does not otherwise need.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Iterable, Iterator, TypeVar

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


def postfix(iterable: Iterable, **values) -> None:
    """Show ``values`` (e.g. ``loss=1.23``) after the bar; nothing when ``iterable`` is no bar."""
    setter = getattr(iterable, "set_postfix", None)
    if setter is not None:
        setter({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items()},
               refresh=False)


@contextlib.contextmanager
def spinner(desc: str, interval: float = 0.5) -> Iterator[None]:
    """While inside, a line ``desc: 00:12`` counting the elapsed time (redrawn every
    ``interval`` seconds by a thread), removed at the end; nothing when no bar is shown."""
    if not shown():
        yield
        return
    from tqdm import tqdm

    line = tqdm(total=None, desc=desc, bar_format="{desc}: {elapsed}", leave=False,
                file=sys.stderr, dynamic_ncols=True)
    stop = threading.Event()

    def tick():
        while not stop.wait(interval):
            line.refresh()

    ticker = threading.Thread(target=tick, daemon=True, name="edgec-spinner")
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        line.close()
