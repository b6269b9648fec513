"""The `fastrnn` command: train a character-level language model, sample from it, benchmark a step."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]


class UsageError(Exception):
    """A bad argument or file: reported as one line and exit status 2."""


def _int_at_least(minimum, words):
    """An argparse type: an integer ≥ ``minimum``, named ``words`` in its error."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {words} integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {words} integer, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "positive")
_non_negative_int = _int_at_least(0, "non-negative")


def _hyperparameter(rule):
    """An argparse type for a hyperparameter, checked by the library's own rule."""

    def parse(text):
        from .optim import expectation

        try:
            value = float(text)
        except ValueError:
            value = None
        wanted = expectation(rule, value)
        if wanted is not None:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    parse.__name__ = {"positive": "positive number", "unit": "number in [0, 1)"}[rule]
    return parse


_positive_float = _hyperparameter("positive")

#: `fastrnn train`'s defaults for the flags a resumed run takes from its checkpoint.
TRAIN_DEFAULTS = {"hidden": 256, "seq_len": 50, "batch": 32, "optimizer": "adam", "dtype": "float32", "clip": 5.0}


def _threads_arg(text):
    from ._threads import check

    try:
        return check(text, "--threads") or "auto"
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _say_when_compiling():
    """Print one line when Numba starts compiling (a cold cache), so that a long
    first step is explained. One listener per process, however often called."""
    global _notice
    if _notice is None:
        from numba.core import event

        class CompileNotice(event.Listener):
            said = False

            def on_start(self, ev):
                if not self.said:
                    self.said = True
                    print("fastrnn: compiling the Numba kernels for this machine "
                          "(once; later runs load them from the cache)...", flush=True)

            def on_end(self, ev):
                pass

        _notice = CompileNotice()
        event.register("numba:compile", _notice)
    return _notice


_notice = None


def build_parser():
    from .backends import BACKEND_ORDER
    from .optim import DEFAULT_LR, OPTIMIZERS

    parser = argparse.ArgumentParser(prog="fastrnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a character-level CharRNN language model")
    t.add_argument("corpus", nargs="?", help="a UTF-8 text file (default: Python standard-library source)")
    lrs = ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
    # Flags whose default is None here take TRAIN_DEFAULTS on a fresh run and the
    # checkpoint's value with --resume (where giving a different one is an error).
    t.add_argument("--hidden", type=_positive_int, default=None, help="hidden size h (default 256)")
    t.add_argument("--seq-len", type=_positive_int, default=None, help="truncated-BPTT window T (default 50)")
    t.add_argument("--batch", type=_positive_int, default=None, help="parallel streams n (default 32)")
    t.add_argument("--steps", type=_positive_int, default=3000, help="optimizer steps (default 3000)")
    t.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=None, help="(default adam)")
    t.add_argument("--lr", type=_positive_float, default=None, help=f"learning rate (default: {lrs})")
    t.add_argument("--clip", type=_positive_float, default=None, help="clip gradients to [-CLIP, CLIP] (default 5)")
    t.add_argument("--clip-norm", type=_positive_float, default=None, help="clip by global norm instead")
    t.add_argument("--backend", choices=BACKEND_ORDER, default=None)
    t.add_argument("--dtype", choices=("float32", "float64"), default=None, help="(default float32)")
    t.add_argument("--threads", type=_threads_arg, default=None, metavar="K",
                   help="BLAS threads, a positive integer or 'auto' (default: $FASTRNN_NUM_THREADS, else auto)")
    t.add_argument("--seed", type=_non_negative_int, default=0)
    t.add_argument("--val-fraction", type=float, default=0.05, help="held-out tail for validation (default 0.05)")
    t.add_argument("--out", default="model.npz", help="checkpoint path (default model.npz)")
    t.add_argument("--checkpoint-every", type=_positive_int, default=500)
    t.add_argument("--resume", action="store_true", help="continue from --out instead of starting afresh")
    t.add_argument("--force", action="store_true", help="start afresh even if --out exists, replacing it")
    t.add_argument("--plot", default=None, metavar="PNG", help="save a loss curve (needs matplotlib)")
    t.add_argument("--sample-length", type=_non_negative_int, default=300, help="characters to sample at the end")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="generate text from a trained model")
    s.add_argument("model", help="a checkpoint written by `fastrnn train`")
    s.add_argument("--length", type=_positive_int, default=500)
    s.add_argument("--temperature", type=_positive_float, default=1.0)
    s.add_argument("--top-k", type=_positive_int, default=None)
    s.add_argument("--prime", default="")
    s.add_argument("--seed", type=_non_negative_int, default=None)
    s.add_argument("--backend", choices=BACKEND_ORDER, default=None)
    s.add_argument("--threads", type=_threads_arg, default=None, metavar="K", help="BLAS threads (as for train)")

    sub.add_parser("backends", help="list the backends available here, default first")

    bench = sub.add_parser(
        "bench", help="time one training step per backend, and your own implementations (needs fastrnn[bench])",
        description="Time one training step (loss and parameter gradients) of every fastrnn backend and of "
        "your own implementations with pytest-benchmark; each is checked against the numpy reference first. "
        "Anything after -- goes to pytest as it is.",
    )
    bench.add_argument("--quick", action="store_true", help="only the char, char32 and small configurations")
    bench.add_argument("--peer", action="append", default=[], metavar="MODULE:FUNCTION",
                       help="also time this function (loss_and_grads' signature); MODULE may be a path/to/file.py; repeatable")
    bench.add_argument("-k", dest="select", metavar="EXPR", help="pytest's -k, e.g. 'small and f32' or 'numba or mine'")
    bench.add_argument("--save", metavar="NAME", help="save the run (pytest-benchmark's --benchmark-save)")
    bench.add_argument("--compare", nargs="?", const="", metavar="RUN",
                       help="compare with a saved run, the latest by default (--benchmark-compare)")
    bench.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: more pytest options")
    return parser


def _read_corpus(path):
    if path is None:
        from .data import default_corpus

        return default_corpus(), "the Python standard library's source"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    if len(text) < 2:
        raise UsageError(f"{path}: the corpus needs at least two characters")
    return text, path


def _same_file(a, b):
    """Whether paths a and b name one file (a link to it included), existing or not."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def _check_output(flag, path):
    from .checkpoint import check_output_path

    try:
        check_output_path(path, what=flag)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _resume_command(args):
    corpus = f" {args.corpus}" if args.corpus else ""
    comm = getattr(args, "comm", None)
    launcher = f"mpiexec -n {comm.Get_size()} " if comm is not None else ""
    return f"{launcher}fastrnn train{corpus} --out {args.out} --resume"


def cmd_train(args):
    from . import CharRNN, get_backend, set_num_threads
    from ._config import REQUESTED_THREADS
    from .data import Vocab
    from .train import Trainer, TrainingInterrupted

    # Everything that can be checked is checked before any work starts.
    for flag, other in (("--out", args.out), ("--plot", args.plot)):
        if other and args.corpus and _same_file(other, args.corpus):
            raise UsageError(f"{flag} {other} is the corpus: it would be overwritten")
    if args.plot and _same_file(args.plot, args.out):
        raise UsageError(f"--plot {args.plot} is --out: give them different names")
    if args.plot:
        _check_output("--plot", args.plot)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install matplotlib") from None
    if not 0 <= args.val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.resume and args.force:
        raise UsageError("--resume continues --out and --force replaces it: give one of them")
    _check_output("--out", args.out)
    out_exists = Path(args.out).exists()
    if args.resume and not out_exists:
        raise UsageError(f"--resume: {args.out} does not exist; nothing to resume")
    if out_exists and not (args.resume or args.force):
        raise UsageError(f"{args.out} exists: pass --resume to continue training it, or --force to replace it")
    text, source = _read_corpus(args.corpus)
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    n_val = int(len(ids) * args.val_fraction)
    train_ids, val_ids = (ids[:-n_val], ids[-n_val:]) if n_val >= 2 else (ids, None)
    backend = args.backend or get_backend()
    comm = getattr(args, "comm", None)
    if args.threads is not None:
        set_num_threads(args.threads)
    elif comm is not None and REQUESTED_THREADS is None:
        # the machine's cores shared among the ranks on it
        from ._threads import NCPU
        from .distributed import local_size

        set_num_threads(max(1, NCPU // local_size(comm)))
    if backend == "numba":
        _say_when_compiling()
    if args.resume:
        trainer = Trainer.resume(args.out, train_ids, val_ids=val_ids, backend=backend, comm=comm)
        model = trainer.model
        if model.vocab != vocab:
            raise UsageError(f"{args.out}: was trained on a corpus with another vocabulary")
        _refuse_conflicts(args, trainer)
        print(f"fastrnn: resuming {args.out} from step {trainer.step_count}")
        if trainer.resplit_from is not None:
            print(f"fastrnn: note: {args.out} was written by {trainer.resplit_from} process(es) and this run has "
                  f"{1 if comm is None else comm.Get_size()}: the {trainer.batch} streams are split anew, so the "
                  "run continues the same training but is not bit-identical to one that never stopped")
    else:
        given = {k: getattr(args, k) for k in TRAIN_DEFAULTS}
        cfg = {k: TRAIN_DEFAULTS[k] if v is None else v for k, v in given.items()}
        model = CharRNN(vocab, cfg["hidden"], dtype=cfg["dtype"], seed=args.seed, backend=backend)
        trainer = Trainer(
            model, train_ids, seq_len=cfg["seq_len"], batch=cfg["batch"], optimizer=cfg["optimizer"], lr=args.lr,
            clip=None if args.clip_norm else cfg["clip"], clip_norm=args.clip_norm, val_ids=val_ids, comm=comm,
        )
        if out_exists:
            print(f"fastrnn: --force: {args.out} will be replaced")
    baseline = float(np.log(len(vocab)))
    print(
        f"fastrnn: training on {source}: {len(ids):,} characters, vocabulary {len(vocab)}, "
        f"h={model.hidden}, T={trainer.seq_len}, n={trainer.batch}, {model.dtype.name}, backend {backend}, "
        f"{trainer.optimizer_name} lr={trainer.optimizer.lr:g}"
    )
    print(f"fastrnn: ln(vocabulary) = {baseline:.3f} nats/char is the loss of a model that learned nothing")
    if comm is not None:
        fewest, most = trainer.batch // comm.Get_size(), -(-trainer.batch // comm.Get_size())
        each = f"{most}" if fewest == most else f"{fewest} or {most}"
        print(f"fastrnn: data-parallel over {comm.Get_size()} MPI ranks, {each} of the {trainer.batch} streams each")
    first = trainer.step_count
    t0 = time.perf_counter()
    try:
        history = trainer.run(
            args.steps, progress=not args.quiet, eval_every=max(args.steps // 5, 1),
            checkpoint=args.out, checkpoint_every=args.checkpoint_every,
        )
    except TrainingInterrupted as exc:
        resume = f"; resume with: {_resume_command(args)}" if exc.checkpoint else ""
        if trainer.is_root:
            print(f"fastrnn: {exc}{resume}", file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - t0
    done = trainer.step_count - first
    recent = history.loss[-min(50, done):] if done else []
    line = f"fastrnn: {done} steps in {elapsed:.1f} s"
    if recent:
        line += f"; train loss {np.mean(recent):.3f} nats/char (mean of the last {len(recent)} steps)"
    if history.val_loss:
        line += f", validation {history.val_loss[-1]:.3f} (perplexity {np.exp(history.val_loss[-1]):.2f})"
    print(line)
    print(f"fastrnn: checkpoint written to {args.out}")
    if not trainer.is_root:
        return 0  # rank 0 reports, plots and samples
    if args.plot:
        _plot(history, baseline, args.plot)
        print(f"fastrnn: loss curve written to {args.plot}")
    if args.sample_length > 0:
        print("fastrnn: a sample (temperature 0.8):")
        print(model.sample(args.sample_length, temperature=0.8, seed=args.seed))
    return 0


def _refuse_conflicts(args, trainer):
    """With --resume the checkpoint decides; a flag that says otherwise is an error."""
    model = trainer.model
    clip_norm = trainer.clip_norm
    stored = {
        "hidden": model.hidden, "dtype": model.dtype.name, "seq_len": trainer.seq_len, "batch": trainer.batch,
        "optimizer": trainer.optimizer_name, "lr": trainer.optimizer.lr,
        "clip": None if clip_norm is not None else trainer.clip, "clip_norm": clip_norm,
    }
    for key, kept in stored.items():
        given = getattr(args, key)
        if given is not None and given != kept:
            flag = "--" + key.replace("_", "-")
            raise UsageError(
                f"{flag} {given} conflicts with {args.out}, which was trained with {flag} {kept}; "
                f"drop {flag} to resume, or train afresh with --force"
            )


def _plot(history, baseline, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(history.steps, history.loss, lw=0.5, alpha=0.4, label="train loss")
    ax.plot(history.steps, history.smooth_loss, lw=1.5, label="smoothed")
    if history.val_loss:
        ax.plot(history.val_steps, history.val_loss, "o-", label="validation")
    ax.axhline(baseline, ls="--", c="gray", label="ln(vocabulary): nothing learned")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per character")
    ax.legend()
    fig.tight_layout()
    from .checkpoint import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, dpi=110, format=Path(path).suffix.lstrip(".") or "png"))
    plt.close(fig)


def cmd_sample(args):
    from . import set_num_threads
    from .checkpoint import load_model

    if args.threads is not None:
        set_num_threads(args.threads)

    model = load_model(args.model, backend=args.backend)
    try:
        model.vocab.encode(args.prime)
    except ValueError as exc:  # a prime character the model never saw
        raise UsageError(f"--prime: {exc}") from None
    text = model.sample(args.length, prime=args.prime, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print(text)
    return 0


def cmd_backends(args):
    from . import backends, unavailable

    for name in backends():
        print(name)
    for name, why in unavailable().items():
        print(f"# {name}: unavailable ({why})")
    return 0


def cmd_bench(args):
    import os

    try:
        import pytest
        import pytest_benchmark  # noqa: F401
    except ImportError:
        raise UsageError('the benchmark needs pytest and pytest-benchmark: pip install "fastrnn[bench]"') from None
    from .bench import PEERS_ENV, QUICK_ENV, load_peer

    for spec in args.peer:  # fail here, in one line, rather than inside pytest's collection
        try:
            load_peer(spec)
        except ImportError as exc:
            raise UsageError(f"--peer {spec}: {exc}") from None
        except ValueError as exc:
            raise UsageError(f"--peer: {exc}") from None
    if args.peer:
        os.environ[PEERS_ENV] = ",".join(args.peer)
    if args.quick:
        os.environ[QUICK_ENV] = "1"
    extra = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    pytest_argv = ["--pyargs", "fastrnn.bench", "--benchmark-only"]
    if args.select:
        pytest_argv += ["-k", args.select]
    if args.save:
        pytest_argv.append(f"--benchmark-save={args.save}")
    if args.compare is not None:
        pytest_argv.append(f"--benchmark-compare={args.compare}" if args.compare else "--benchmark-compare")
    return int(pytest.main(pytest_argv + extra))


def main(argv=None):
    from . import distributed

    if distributed.launched_by_mpi():
        return _main_on_every_rank(argv)
    return _main(argv)


def _main_on_every_rank(argv):
    """``mpiexec -n K fastrnn train ...``: every rank runs the command with the
    world communicator; rank 0 alone prints. An error that one rank meets alone
    would leave the others waiting in the next collective, so any failure other
    than the trainer's own (which every rank raises together) aborts the job."""
    import contextlib
    import os

    from . import distributed

    comm = distributed.world()
    rank = comm.Get_rank()
    quiet = open(os.devnull, "w") if rank else None
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            rc = _main(argv, comm=comm)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), the same on every rank
        if exc.code not in (0, None):
            comm.Abort(2)
        raise
    except BaseException:
        import traceback

        print(f"fastrnn: rank {rank} failed:", file=sys.stderr)
        traceback.print_exc()
        comm.Abort(1)
        raise
    if rc not in (0, 130) and not _collective_failure[0]:
        comm.Abort(rc)  # the others may be waiting for this rank: end them too
    return rc


#: Set when the command ended with an error that every rank raised together.
_collective_failure = [False]


def _main(argv=None, comm=None, stderr=None):
    from .checkpoint import CheckpointError
    from .distributed import DistributedError
    from .train import TrainingDiverged

    stderr = stderr or sys.stderr
    rank = 0 if comm is None else comm.Get_rank()
    who = f" (rank {rank})" if rank else ""
    args = build_parser().parse_args(argv)
    args.comm = comm
    command = {"train": cmd_train, "sample": cmd_sample, "backends": cmd_backends, "bench": cmd_bench}[args.command]
    try:
        return command(args)
    except (DistributedError, TrainingDiverged) as exc:  # raised by every rank alike
        _collective_failure[0] = comm is not None
        if rank == 0:
            print(f"fastrnn: error: {exc}", file=stderr)
        return 2
    except (UsageError, CheckpointError, TrainingDiverged, ValueError, TypeError, RuntimeError) as exc:
        print(f"fastrnn{who}: error: {exc}", file=stderr)
        return 2
    except MemoryError as exc:
        detail = f" ({exc})" if str(exc) else ""
        print(f"fastrnn{who}: error: out of memory{detail}; try a smaller --hidden, --batch or --seq-len", file=stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"fastrnn{who}: error: {where}{exc.strerror or exc}", file=stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastrnn{who}: interrupted", file=stderr)
        return 130
    except SystemError as exc:  # a Ctrl-C that landed inside a compiled kernel
        if not isinstance(exc.__context__, KeyboardInterrupt):
            raise
        print(f"fastrnn{who}: interrupted", file=stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
