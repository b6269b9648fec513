"""A character-level language model (CharRNN): params, vocabulary, config, sampling.

Saving and loading live in :mod:`fastrnn.checkpoint`, which builds models; this
module does not know about files.
"""

from __future__ import annotations

import math

import numpy as np

from . import api
from ._params import init_params
from ._validate import check_params
from .data import Vocab

__all__ = ["CharRNN"]


class CharRNN:
    """A vanilla CharRNN language model over a character vocabulary.

    Inputs are token ids (one-hot rows of X, d = v = len(vocab)). ``backend``
    picks the kernels (None: the default backend).

    Fresh parameters are drawn with ``seed`` for ``hidden`` units (default 128)
    in ``dtype`` (default float32). Given ``params``, the model takes its hidden
    size and dtype from them; ``hidden`` or ``dtype``, if also given, must agree,
    and U and V must have one row and one column per character of ``vocab``.
    """

    def __init__(self, vocab, hidden=None, *, dtype=None, seed=None, backend=None, params=None):
        if not isinstance(vocab, Vocab):
            raise TypeError(f"vocab must be a fastrnn.data.Vocab, got {type(vocab).__name__}")
        if hidden is not None and (isinstance(hidden, (bool, np.bool_)) or not isinstance(hidden, (int, np.integer)) or hidden < 1):
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        if dtype is not None:
            dtype = np.dtype(dtype)
            if dtype not in (np.float32, np.float64):
                raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        v = len(vocab)
        if params is None:
            hidden = 128 if hidden is None else int(hidden)
            dtype = np.dtype(np.float32) if dtype is None else dtype
            params = init_params(v, hidden, v, dtype=dtype, seed=seed)
        else:
            params = check_params(params)
            d, h = params.U.shape
            if d != v or params.V.shape[1] != v:
                raise ValueError(
                    f"params are for d={d} inputs and v={params.V.shape[1]} outputs, but the vocabulary has {v} characters"
                )
            if hidden is not None and hidden != h:
                raise ValueError(f"hidden={hidden} but the params have h={h}")
            if dtype is not None and dtype != params.U.dtype:
                raise TypeError(f"dtype={dtype} but the params are {params.U.dtype}")
            hidden, dtype = h, params.U.dtype
        self.vocab = vocab
        self.hidden = int(hidden)
        self.dtype = np.dtype(dtype)
        self.backend = backend
        self.params = params

    @property
    def config(self):
        return {"hidden": self.hidden, "dtype": self.dtype.name, "vocab_size": len(self.vocab)}

    def zero_state(self, n):
        return np.zeros((n, self.hidden), dtype=self.dtype)

    def loss_and_grads(self, inputs, targets, h0=None, reduction="mean", params_only=True):
        return api.loss_and_grads(
            self.params, inputs, targets, h0=h0, reduction=reduction, params_only=params_only, backend=self.backend
        )

    def sample(self, length, *, prime="", temperature=1.0, top_k=None, seed=None, rng=None):
        """Generate ``length`` characters after ``prime``.

        ``temperature`` divides the logits (lower is more conservative);
        ``top_k`` keeps only the k most likely characters at each step. The
        same ``seed`` (or a generator in the same state) gives the same text.
        """
        if isinstance(length, (bool, np.bool_)) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(f"length must be a non-negative integer, got {length!r}")
        real = isinstance(temperature, (int, float, np.integer, np.floating)) and not isinstance(temperature, (bool, np.bool_))
        if not real or not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer))
                                  or top_k < 1):
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        if not isinstance(prime, str):
            raise TypeError(f"prime must be a str, got {type(prime).__name__}")
        if rng is not None and not callable(getattr(rng, "random", None)):
            raise TypeError(f"rng must have a random() method (a numpy Generator, say), got {type(rng).__name__}")
        try:
            rng = rng if rng is not None else np.random.default_rng(seed)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"seed must be None or a non-negative integer, got {seed!r}") from None
        h = np.zeros(self.hidden, dtype=self.dtype)
        given = prime
        if not prime:  # start as a text starts: after a newline, if the vocabulary has one (not returned)
            prime = "\n" if "\n" in self.vocab.chars else self.vocab.chars[0]
        prime_ids = self.vocab.encode(prime)
        params, _ = api._checked_params(self.params)  # once, and the prime once; the draws need no check
        # Run the prime through the network; its last step predicts the first new character.
        P, h = api._step_probs(params, prime_ids, h, self.backend)
        p, h = P[-1], h[None, :]
        step = api._sampler(params, self.backend)  # each draw is a valid id: nothing left to check
        out = []
        for _ in range(length):
            k = _draw(p, temperature, top_k, rng)
            out.append(k)
            p, h = step(k, h)
        return given + self.vocab.decode(out)


def _draw(p, temperature, top_k, rng):
    if not np.isfinite(p).all():
        raise ValueError("the model's next-character probabilities are not finite (its weights overflow)")
    logits = np.log(np.maximum(p.astype(np.float64), 1e-300))
    logits -= logits.max()  # before dividing: a tiny temperature then gives 0 and −Inf, never Inf − Inf
    with np.errstate(over="ignore"):
        logits /= temperature
    if top_k is not None and top_k < len(logits):
        cut = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits >= cut, logits, -np.inf)
    w = np.exp(logits - logits.max())
    # rng.choice(len(w), p=w / w.sum()) without its checks of p (the same draw, 3x faster)
    cdf = np.cumsum(w / w.sum())
    cdf /= cdf[-1]
    return int(cdf.searchsorted(rng.random(), side="right"))
