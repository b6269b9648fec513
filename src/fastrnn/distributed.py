"""Data-parallel training over MPI: every rank takes a slice of the global batch's
streams, and the gradients are summed across ranks once per step.

mpi4py is imported only here, and only when a communicator is asked for
(:func:`world`); ``import fastrnn`` never imports it. Install it with
``pip install "fastrnn[mpi]"`` (mpi4py and the mpich wheel, which brings
``mpiexec``), or build mpi4py against a cluster's own MPI.

The rule that makes K ranks equal one process: with the 'mean' loss, rank r's
gradient is the mean over its T·n_r predictions, so it is weighted by n_r / N
before the sum; the sum of the weighted gradients is then the gradient of the
mean over all T·N predictions, as one process on the global batch computes it
(to rounding: the sum is split into K partial sums). Clipping and the
optimizer step happen after the reduction, identically on every rank.

What MPI gives here, and nothing home-made: one in-place ``Allreduce`` of a
single contiguous buffer per step (every gradient, the loss and a failure flag
packed together), ``allgather`` for the rare error messages and checksums, and
``Gather`` for the hidden state at checkpoints.
"""

from __future__ import annotations

import os
import zlib

import numpy as np

__all__ = [
    "DistributedError",
    "launched_by_mpi",
    "world",
    "local_size",
    "split_streams",
    "allreduce_grads",
    "Reducer",
    "check_in_sync",
]

#: Environment variables that MPI launchers set to the number of processes
#: (MPICH/hydra and Intel MPI, Open MPI, Slurm's srun with PMI/PMIx).
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


class DistributedError(RuntimeError):
    """A rank failed, or the ranks disagree; raised on every rank alike."""


def launched_by_mpi():
    """True when this process is one of several started by an MPI launcher.

    Reads only the launcher's environment variables, so a plain run imports no
    MPI. A run under ``mpiexec -n 1`` counts as plain.
    """
    for name in _SIZE_VARIABLES:
        try:
            if int(os.environ.get(name, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def world():
    """``MPI.COMM_WORLD``, importing mpi4py; a clear error if it is missing."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            "data-parallel training needs mpi4py: pip install \"fastrnn[mpi]\" "
            f"(or mpi4py built against your cluster's MPI); {exc}"
        ) from None
    return MPI.COMM_WORLD


def _mpi():
    from mpi4py import MPI

    return MPI


def local_size(comm):
    """How many ranks of ``comm`` share this machine (its shared-memory node)."""
    MPI = _mpi()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_size()
    finally:
        node.Free()


def split_streams(n, size, rank):
    """The slice of ``n`` streams that ``rank`` of ``size`` takes: contiguous
    blocks whose sizes differ by at most one, the larger ones first."""
    if not (isinstance(size, int) and size >= 1 and isinstance(rank, int) and 0 <= rank < size):
        raise ValueError(f"rank must be in [0, size), got rank={rank!r}, size={size!r}")
    if n < size:
        raise ValueError(f"batch must be at least the number of ranks ({size}) so that every rank has a stream, got {n}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


_GRAD_NAMES = ("U", "W", "V", "b", "c")


class Reducer:
    """Sums the parameters' gradients (and the loss) across the ranks of ``comm``,
    in one in-place ``Allreduce`` of one contiguous buffer per step.

    ``weight`` scales this rank's contribution before the sum: n_r / N for the
    'mean' loss, 1 for 'sum'. The same buffer can carry the hidden state of
    the whole batch (each rank fills its own rows, the others are zero, so the
    sum assembles it exactly on every rank) and a stop request (any rank's
    Ctrl-C stops every rank after the same step). A rank that failed calls
    :meth:`fail` instead of :meth:`reduce`; then every rank raises
    :class:`DistributedError` naming it, rather than the others waiting for it
    forever.
    """

    def __init__(self, comm, *, weight=1.0):
        if not (isinstance(weight, float) and np.isfinite(weight) and weight > 0):
            raise ValueError(f"weight must be a positive finite float, got {weight!r}")
        self.comm = comm
        self.weight = weight
        self._key = None

    def _layout(self, grads, state_shape=None):
        shapes = tuple(getattr(grads, name).shape for name in _GRAD_NAMES)
        if state_shape is not None:
            shapes += (tuple(state_shape),)
        dtype = grads.U.dtype
        if self._key != (dtype, shapes):
            sizes = [int(np.prod(s)) for s in shapes]
            self._buf = np.empty(sum(sizes) + 3, dtype=dtype)  # + loss, stop requests, failures
            offsets = np.cumsum([0] + sizes)
            self._views = [self._buf[a:b].reshape(s) for a, b, s in zip(offsets[:-1], offsets[1:], shapes)]
            self._key = (dtype, shapes)
        return self._buf, self._views

    def reduce(self, grads, loss, *, state=None, rows=None, batch=None, stop=False):
        """Sum ``weight``·(grads, loss) over the ranks, into ``grads`` in place.

        Returns the global loss; with ``state`` (this rank's hidden state),
        ``rows`` (its slice of the batch) and ``batch`` (the whole batch's
        size) it returns ``(loss, state of the whole batch, stop)``, where
        ``stop`` is True when any rank asked to stop. ``grads`` needs U, W, V,
        b, c; h0 and the per-step tensors stay per rank.
        """
        buf, views = self._layout(grads, None if state is None else (batch,) + state.shape[1:])
        for view, name in zip(views, _GRAD_NAMES):
            np.multiply(getattr(grads, name), self.weight, out=view)
        if state is not None:
            views[-1][...] = 0
            views[-1][rows] = state
        buf[-3] = loss * self.weight
        buf[-2] = 1 if stop else 0
        buf[-1] = 0
        total = self._allreduce(buf)
        for view, name in zip(views, _GRAD_NAMES):
            getattr(grads, name)[...] = view
        if state is None:
            return total
        return total, views[-1].copy(), bool(buf[-2] != 0)

    def fail(self, exc, like, state_shape=None):
        """Take part in the step's reduction as a failed rank (``like``: any
        gradients of the right shapes, e.g. the parameters); always raises."""
        buf, _ = self._layout(like, state_shape)
        buf[:] = 0
        buf[-1] = 1
        self._allreduce(buf, error=exc)
        raise AssertionError("unreachable")  # _allreduce raised

    def _allreduce(self, buf, error=None):
        MPI = _mpi()
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        if buf[-1] != 0:
            why = None if error is None else f"{type(error).__name__}: {error}"
            reports = self.comm.allgather(why)
            failed = [f"rank {r}: {msg}" for r, msg in enumerate(reports) if msg is not None]
            raise DistributedError("training stopped on every rank because " + "; ".join(failed)) from error
        return float(buf[-3])


def allreduce_grads(grads, comm, *, weight=1.0):
    """Sum ``weight``·grads over the ranks of ``comm``, in place, in one
    ``Allreduce`` of one contiguous buffer. For your own loop: with the 'mean'
    loss on a local batch of n_r of N sequences, pass ``weight = n_r / N``;
    with 'sum', 1. Returns ``grads``."""
    Reducer(comm, weight=float(weight)).reduce(grads, 0.0)
    return grads


def checksum(params):
    """A cheap identity of the parameters' bits (crc32 over their bytes)."""
    crc = 0
    for a in params:
        crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8), crc)
    return crc


def check_in_sync(params, comm, *, step=None):
    """Raise :class:`DistributedError` on every rank unless all ranks hold
    bit-identical parameters."""
    sums = comm.allgather(checksum(params))
    if len(set(sums)) > 1:
        where = "" if step is None else f" at step {step}"
        raise DistributedError(
            f"the ranks' parameters differ{where} (checksums {', '.join(f'{s:08x}' for s in sums)}): "
            "every rank must start from the same weights and apply the same update"
        )
