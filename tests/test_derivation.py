"""docs/derivation.md's worked example, recomputed by every backend."""

import re
from pathlib import Path

import numpy as np
import pytest

import fastrnn

DOC = Path(__file__).resolve().parents[1] / "docs" / "derivation.md"

PARAMS = fastrnn.Params(
    U=np.array([[0.5, -0.3], [0.2, 0.4]]),
    W=np.array([[0.1, 0.2], [-0.2, 0.3]]),
    V=np.array([[1.0, -1.0], [0.5, 0.25]]),
    b=np.array([0.0, 0.1]),
    c=np.array([0.2, -0.1]),
)
X = np.array([[1.0, 0.0], [0.0, 1.0]])  # one sequence: (T, d)
Y = np.array([1, 0])

EXPECTED = {
    "loss": 0.881596,
    "H": [[0.462117, -0.197375], [0.278160, 0.487832]],
    "P": [[0.764028, 0.235972], [0.726766, 0.273234]],
    "A": [[0.576949, 0.132734], [-0.252093, -0.026026]],
    "U": [[0.576949, 0.132734], [-0.252093, -0.026026]],
    "W": [[-0.116496, -0.012027], [0.049757, 0.005137]],
    "V": [[0.138534, -0.138534], [-0.142046, 0.142046]],
    "b": [0.324856, 0.106707],
    "c": [0.245397, -0.245397],
    "h0": [0.084242, -0.075570],
    "X": [[0.248654, 0.168483], [-0.118238, -0.060829]],
}


def test_worked_example(backend):
    loss, g, _ = fastrnn.loss_and_grads(PARAMS, X, Y, backend=backend)
    assert loss == pytest.approx(EXPECTED["loss"], abs=5e-7)
    H = fastrnn.rnn_forward(X, PARAMS.U, PARAMS.W, PARAMS.b, backend=backend)
    P, _ = fastrnn.predict_proba(PARAMS, X, backend=backend)
    np.testing.assert_allclose(H, EXPECTED["H"], atol=5e-7)
    np.testing.assert_allclose(P, EXPECTED["P"], atol=5e-7)
    for name in ("A", "U", "W", "V", "b", "c", "h0", "X"):
        np.testing.assert_allclose(getattr(g, name), EXPECTED[name], atol=5e-7, err_msg=name)


def test_the_document_shows_these_numbers():
    text = DOC.read_text()
    for name, value in EXPECTED.items():
        for number in np.ravel(value):
            shown = f"{abs(number):.6f}"
            assert re.search(rf"{re.escape(shown)}", text), f"{name}: {shown} missing from derivation.md"
