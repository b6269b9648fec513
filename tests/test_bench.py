"""The installed step benchmark: peers are loaded by name and checked against the
reference before they are timed; `fastrnn bench` refuses a bad peer in one line."""

import numpy as np
import pytest

import fastrnn
from fastrnn import cli
from fastrnn.bench import CONFIGS, check_against_reference, load_peer, make

PEER = """
import fastrnn

def right(params, inputs, targets, **kw):
    return fastrnn.loss_and_grads(params, inputs, targets, backend="numpy", **kw)

def wrong(params, inputs, targets, **kw):
    loss, g, h = fastrnn.loss_and_grads(params, inputs, targets, backend="numpy", **kw)
    return loss, g._replace(b=g.b * (1 + 1e-6)), h
"""


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_backend_passes_the_check_and_a_wrong_gradient_does_not(backend, dtype):
    params, x, y = make("char", dtype)
    check_against_reference(lambda *a: fastrnn.loss_and_grads(*a, backend=backend, params_only=True), params, x, y)

    def off(*a):
        loss, g, h = fastrnn.loss_and_grads(*a, backend=backend)
        return loss, g._replace(V=g.V * (1 + 1e-3)), h

    with pytest.raises(AssertionError, match=r"dV differs from the reference by 1\.00e-03"):
        check_against_reference(off, params, x, y)
    with pytest.raises(AssertionError, match="loss"):
        check_against_reference(lambda *a: (1.0,) + tuple(fastrnn.loss_and_grads(*a, backend=backend)[1:]), params, x, y)


def test_configurations_match_their_data():
    for name, (T, n, d, h, v, ids) in CONFIGS.items():
        params, x, y = make(name, np.float32)
        assert params.U.shape == (d, h) and params.V.shape == (h, v) and y.shape == (T, n)
        assert x.shape == ((T, n) if ids else (T, n, d))


def test_peers_load_from_a_file_or_a_module(tmp_path):
    path = tmp_path / "peer.py"
    path.write_text(PEER)
    right, wrong = load_peer(f"{path}:right"), load_peer(f"{path}:wrong")
    params, x, y = make("char", np.float64)
    check_against_reference(right, params, x, y)
    with pytest.raises(AssertionError, match="db differs"):
        check_against_reference(wrong, params, x, y)
    assert load_peer("fastrnn:loss_and_grads") is fastrnn.loss_and_grads
    with pytest.raises(ValueError, match="module:function or file.py:function"):
        load_peer("no_colon")
    with pytest.raises(ValueError, match="has no 'missing'"):
        load_peer(f"{path}:missing")


@pytest.mark.parametrize(
    "peer, message",
    [("nowhere.py:f", "nowhere.py: no such file"), ("fastrnn:nothing", "has no 'nothing'"),
     ("no_such_module_xyz:f", "No module named 'no_such_module_xyz'")],
)
def test_cli_bench_refuses_a_bad_peer_in_one_line(peer, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--peer", peer]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
