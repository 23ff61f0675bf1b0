"""The language models' corpus: the English documentation topics in ``pydoc_data.topics``.

``pydoc_data.topics.topics`` ships with every CPython (79 topics, about 465k characters on
Python 3.11): real English prose and code, no download. Its text differs a little between Python
versions, so the trained weights' cache key includes a hash of the corpus (``corpus_hash``).

The split is by topic, deterministic: topics sorted by name, every 8th one starting at index 3
(``HELD_OUT_EVERY``, ``HELD_OUT_OFFSET``) is held out (10 topics, about 32k bytes, on 3.11), the
others are the training text. Each side is its topics' text in name order, UTF-8 encoded and
joined by a blank line (``SEPARATOR``). Bytes are the tokens (vocabulary 256).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

HELD_OUT_EVERY = 8
HELD_OUT_OFFSET = 3
SEPARATOR = b"\n\n"


@lru_cache(maxsize=None)
def topics() -> dict[str, str]:
    from pydoc_data.topics import topics as t

    return dict(sorted(t.items()))


def split_topics() -> tuple[list[str], list[str]]:
    """(train topic names, held-out topic names), both sorted."""
    names = list(topics())
    held = [n for i, n in enumerate(names) if i % HELD_OUT_EVERY == HELD_OUT_OFFSET]
    return [n for n in names if n not in held], held


def _join(names: list[str]) -> bytes:
    t = topics()
    return SEPARATOR.join(t[n].encode("utf-8") for n in names)


@lru_cache(maxsize=None)
def train_bytes() -> bytes:
    """The training text, UTF-8 bytes."""
    return _join(split_topics()[0])


@lru_cache(maxsize=None)
def held_out_bytes() -> bytes:
    """The held-out text (topics never seen in training), UTF-8 bytes."""
    return _join(split_topics()[1])


@lru_cache(maxsize=None)
def corpus_hash() -> str:
    """A short hash of the split corpus, so weights trained on another Python's text differ."""
    h = hashlib.sha256(train_bytes())
    h.update(b"|")
    h.update(held_out_bytes())
    return h.hexdigest()[:12]
