"""Data-parallel training over MPI: K ranks equal one process on the global batch."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastrnn import distributed as dist

HERE = Path(__file__).parent


def test_split_streams_covers_the_batch_once():
    for n, size in [(5, 2), (4, 2), (7, 3), (3, 3), (64, 8)]:
        parts = [dist.split_streams(n, size, r) for r in range(size)]
        assert [p.start for p in parts] == [0] + [p.stop for p in parts[:-1]]
        assert parts[-1].stop == n
        lengths = [p.stop - p.start for p in parts]
        assert max(lengths) - min(lengths) <= 1 and min(lengths) >= 1


@pytest.mark.parametrize("n, size, rank", [(1, 2, 0), (4, 2, 2), (4, 0, 0), (4, 2, -1)])
def test_split_streams_refuses(n, size, rank):
    with pytest.raises(ValueError, match="batch must be|rank must be"):
        dist.split_streams(n, size, rank)


def test_launched_by_mpi_reads_the_launchers_variables(monkeypatch):
    for name in dist._SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not dist.launched_by_mpi()
    monkeypatch.setenv("PMI_SIZE", "1")
    assert not dist.launched_by_mpi()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert dist.launched_by_mpi()


def test_reducer_refuses_a_bad_weight():
    for weight in (0.0, -1.0, float("nan"), 1):
        with pytest.raises(ValueError, match="weight"):
            dist.Reducer(None, weight=weight)


def _mpiexec():
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        exe = None
    if exe is None:
        if os.environ.get("FASTRNN_REQUIRE_MPI"):
            pytest.fail("FASTRNN_REQUIRE_MPI is set but mpi4py/mpiexec are missing")
        pytest.skip('needs mpi4py and mpiexec: pip install "fastrnn[mpi]"')
    return exe


def run_ranks(case, *args, k=2, timeout=180, rc=0):
    proc = subprocess.run(
        [_mpiexec(), "-n", str(k), sys.executable, str(HERE / "mpi_cases.py"), case, *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=HERE,
    )
    if rc is None:
        return proc
    assert proc.returncode == rc, proc.stdout + proc.stderr
    assert proc.stdout.count("ok rank") == k, proc.stdout + proc.stderr  # ranks' lines may interleave
    return proc.stdout


@pytest.mark.parametrize("case", ["reduce_f64", "reduce_f32"])
def test_two_ranks_equal_one_process(case):
    run_ranks(case)


def test_a_failing_rank_stops_every_rank_with_its_message():
    out = run_ranks("failing_rank")
    assert out.count("rank 1: ValueError") == 2


def test_ranks_out_of_sync_are_detected():
    run_ranks("out_of_sync")


@pytest.mark.parametrize("case", ["train_f64", "train_f32"])
def test_fifty_steps_on_two_ranks_equal_one_process(case):
    run_ranks(case)


def test_resume_on_two_ranks_is_bit_exact_and_one_process_resplits(tmp_path):
    run_ranks("resume", tmp_path)


@pytest.mark.parametrize("case", ["rank_raises", "rank_nan"])
def test_a_failing_rank_stops_every_rank_at_the_same_step(case):
    run_ranks(case)


def test_a_crashing_rank_ends_the_job_in_bounded_time():
    proc = run_ranks("rank_crashes", rc=None, timeout=120)  # a hang would time out here
    assert proc.returncode != 0


def _cli(tmp_path, *args, timeout=240):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("def f(x):\n    return x + 1\n" * 40)
    cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "fastrnn", "train", str(corpus), "--hidden", "16",
           "--batch", "4", "--seq-len", "8", "--quiet", "--sample-length", "20", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def test_mpiexec_fastrnn_train_writes_one_checkpoint_and_prints_once(tmp_path):
    out = tmp_path / "m.npz"
    proc = _cli(tmp_path, "--steps", "30", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("data-parallel over 2 MPI ranks") == 1, proc.stdout
    assert proc.stdout.count("checkpoint written") == 1
    assert out.exists() and not list(tmp_path.glob("*.tmp"))
    again = _cli(tmp_path, "--steps", "10", "--out", str(out), "--resume")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming" in again.stdout and "from step 30" in again.stdout and "split anew" not in again.stdout


def test_mpiexec_refusal_on_every_rank_ends_the_job(tmp_path):
    out = tmp_path / "m.npz"
    out.write_bytes(b"x")
    proc = _cli(tmp_path, "--steps", "5", "--out", str(out), timeout=120)
    assert proc.returncode != 0
    assert "pass --resume" in proc.stderr


def test_import_fastrnn_imports_no_framework_and_no_mpi():
    from cases import run_python

    proc = run_python(
        "import sys, fastrnn, fastrnn.cli, fastrnn.train, fastrnn.distributed\n"
        "fastrnn.cli.build_parser()\n"
        "bad = sorted(m for m in ('torch', 'jax', 'flax', 'keras', 'mpi4py', 'tensorflow') if m in sys.modules)\n"
        "print('imported:', bad)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "imported: []" in proc.stdout, proc.stdout
