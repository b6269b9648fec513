"""Character vocabularies, the default corpus, and the truncated-BPTT batcher."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

__all__ = ["Vocab", "default_corpus", "Batcher"]

#: Standard-library modules whose source makes the default corpus: text every
#: Python install has, so `fastrnn train` needs no download.
DEFAULT_CORPUS_MODULES = ("argparse", "difflib", "shlex", "string", "fnmatch", "heapq", "bisect", "glob", "textwrap")


def default_corpus():
    """Python source from the standard library (about 300 kB), as one string."""
    parts = []
    for name in DEFAULT_CORPUS_MODULES:
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None)
        if origin and origin.endswith(".py") and Path(origin).is_file():
            parts.append(Path(origin).read_text(encoding="utf-8"))
    if not parts:
        raise RuntimeError("the standard library's .py sources are not installed here; pass a corpus file")
    return "\n".join(parts)


class Vocab:
    """The sorted set of characters of a text, with id <-> character maps."""

    def __init__(self, chars):
        chars = "".join(chars)
        if len(set(chars)) != len(chars) or not chars:
            raise ValueError("a vocabulary needs at least one character, each once")
        self.chars = chars
        self._index = {ch: i for i, ch in enumerate(chars)}

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def __len__(self):
        return len(self.chars)

    def __eq__(self, other):
        return isinstance(other, Vocab) and other.chars == self.chars

    def __repr__(self):
        return f"Vocab({len(self)} chars)"

    def encode(self, text):
        try:
            return np.fromiter((self._index[ch] for ch in text), dtype=np.intp, count=len(text))
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids):
        ids = np.asarray(ids)
        if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= len(self.chars)):
            raise ValueError(f"ids must be integers in [0, {len(self.chars)}) to decode, got {ids.dtype} "
                             f"from {ids.min()} to {ids.max()}")
        return "".join(self.chars[i] for i in ids.ravel())


class Batcher:
    """Cuts a token sequence into ``n`` parallel streams and walks them in windows of ``T``.

    Stream i is ``ids[i·L : (i+1)·L]`` with ``L = len(ids) // n``. Window k gives
    inputs ``stream[:, kT : kT+T]`` and targets one step ahead; consecutive
    windows continue each stream, so the hidden state is carried from one to
    the next. When a stream has no full window left, the walk restarts at the
    beginning and :meth:`next` reports ``reset=True``: the state must be zeroed.
    Arrays come out time-major, (T, n).

    The wrap rule: window k is used while ``k·T + T ≤ L − 1`` (its last target is
    inside the stream), so each pass has ``(L − 1) // T`` windows. min-char-rnn's
    loop (one stream, ``n = 1``) wraps when ``p + T + 1 ≥ len(data)``, which skips
    the last window when it would end exactly on the last character; the two
    agree whenever ``(L − 1) % T ≠ 0``.
    """

    def __init__(self, ids, n, T):
        ids = np.asarray(ids)
        for name, k in (("batch", n), ("seq_len", T)):
            if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
                raise TypeError(f"{name} must be an integer, got {k!r}")
        if n < 1 or T < 1:
            raise ValueError(f"batch and seq_len must be positive, got n={n}, T={T}")
        L = len(ids) // n
        if L < T + 1:
            raise ValueError(f"the corpus ({len(ids)} tokens) is too short for {n} streams of {T + 1} tokens")
        self.streams = np.ascontiguousarray(ids[: n * L].reshape(n, L).T)  # (L, n)
        self.n, self.T = n, T
        self.windows = (L - 1) // T
        self.position = 0  # index of the next window

    def next(self):
        """(inputs (T, n), targets (T, n), reset): the next window."""
        reset = self.position == 0
        start = self.position * self.T
        x = self.streams[start : start + self.T]
        y = self.streams[start + 1 : start + self.T + 1]
        self.position = (self.position + 1) % self.windows
        return x, y, reset
