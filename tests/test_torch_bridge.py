"""fastrnn.torch.RNN against torch.nn.RNN: values, every gradient, gradcheck, training, errors.

torch is optional for fastrnn: without it these tests skip, and fail instead under
FASTRNN_REQUIRE_BRIDGES=1 (CI sets it: no bridge test may be skipped there).
"""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from cases import ALL_BACKENDS, require_backend

if os.environ.get("FASTRNN_REQUIRE_BRIDGES", "") in ("1", "true", "yes"):
    import torch  # noqa: F401  (an ImportError fails the run under FASTRNN_REQUIRE_BRIDGES=1)
torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import fastrnn.torch as ft  # noqa: E402

TOL = {torch.float32: 1e-6, torch.float64: 1e-10}  # on max|a − b| / max(1, max|a|) per tensor
ERRORS = {}  # the largest error seen per dtype, printed at the end (pytest -s)


@pytest.fixture(scope="module", autouse=True)
def _print_error_maxima():
    yield
    if ERRORS:
        print("\nmax error vs nn.RNN:", {str(k): f"{v:.2e}" for k, v in ERRORS.items()})


def _pair(L, nl, bi, bias, batch_first, dtype, backend=None, d=5, h=4, dropout=0.0):
    ref = nn.RNN(d, h, L, nl, bias, batch_first, dropout, bi, dtype=dtype)
    with torch.no_grad():
        for p in ref.parameters():  # biases too, nonzero, so a lost one shows
            p.uniform_(-0.6, 0.6)
    return ref, ft.RNN.from_torch(ref, backend=backend)


def _max_err(a, b):
    """Largest |a − b| over the tensors, each relative to its largest entry when that exceeds 1."""
    return max(((x - y).abs().max() / max(1.0, x.abs().max().item())).item() for x, y in zip(a, b))


def _run_both(ref, ours, make_input, hx, dtype):
    """Outputs, h_n and the gradients of a random linear functional of both, for each module."""
    results = []
    for m in (ref, ours):
        x, leaves = make_input()
        h = None if hx is None else hx.detach().clone().requires_grad_(True)
        out, hn = m(x, h)
        data = out.data if isinstance(out, nn.utils.rnn.PackedSequence) else out
        g = torch.Generator().manual_seed(1)
        go = torch.randn(data.shape, generator=g, dtype=dtype)
        gh = torch.randn(hn.shape, generator=g, dtype=dtype)
        wrt = leaves + ([] if h is None else [h]) + list(m.parameters())
        grads = torch.autograd.grad((data * go).sum() + (hn * gh).sum(), wrt)
        results.append([data.detach(), hn.detach(), *grads])
    return results


COMBOS = [
    (L, nl, bi, bias, bf, hx, packed)
    for L, nl, bi in itertools.product((1, 2, 3), ("tanh", "relu"), (False, True))
    for bias, bf, hx, packed in [(True, False, False, False), (False, True, True, False),
                                 (True, True, True, True), (True, False, False, True)]
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("L,nl,bi,bias,bf,use_hx,packed", COMBOS)
def test_matches_nn_rnn(L, nl, bi, bias, bf, use_hx, packed, dtype):
    torch.manual_seed(L * 7 + bi)
    ref, ours = _pair(L, nl, bi, bias, bf, dtype)
    T, n, d = 6, 4, 5
    D = 2 if bi else 1
    X = torch.randn(T, n, d, dtype=dtype)
    if bf:
        X = X.transpose(0, 1).contiguous()
    lengths = torch.tensor([4, 6, 1, 6])  # unsorted, with ties, length 1 and length T

    def make_input():
        x = X.clone().requires_grad_(True)
        if packed:
            return pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False), [x]
        return x, [x]

    hx = torch.randn(L * D, n, 4, dtype=dtype) if use_hx else None
    a, b = _run_both(ref, ours, make_input, hx, dtype)
    assert len(a) == len(b) == 2 + 1 + int(use_hx) + len(list(ref.parameters()))
    err = _max_err(a, b)
    ERRORS[dtype] = max(ERRORS.get(dtype, 0.0), err)
    assert err < TOL[dtype]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_every_backend(backend):
    require_backend(backend)
    torch.manual_seed(3)
    ref, ours = _pair(2, "tanh", True, True, False, torch.float64, backend=backend)
    X = torch.randn(5, 3, 5, dtype=torch.float64)
    lengths = torch.tensor([2, 5, 3])

    def make_input():
        x = X.clone().requires_grad_(True)
        return pack_padded_sequence(x, lengths, enforce_sorted=False), [x]

    a, b = _run_both(ref, ours, make_input, torch.randn(4, 3, 4, dtype=torch.float64), torch.float64)
    assert _max_err(a, b) < 1e-10


def test_unbatched_and_padded_output():
    torch.manual_seed(4)
    for bf in (False, True):
        ref, ours = _pair(2, "tanh", True, True, bf, torch.float64)
        x = torch.randn(6, 5, dtype=torch.float64)
        h = torch.randn(4, 4, dtype=torch.float64)
        (o1, h1), (o2, h2) = ref(x, h), ours(x, h)
        assert o2.shape == o1.shape == (6, 8) and h2.shape == h1.shape == (4, 4)
        assert _max_err([o1, h1], [o2, h2]) < 1e-12
    ref, ours = _pair(1, "tanh", False, True, True, torch.float64)
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor([6, 2, 4]), batch_first=True, enforce_sorted=False)
    (p1, h1), (p2, h2) = ref(packed), ours(packed)
    assert isinstance(p2, nn.utils.rnn.PackedSequence)
    assert torch.equal(p1.batch_sizes, p2.batch_sizes) and torch.equal(p1.sorted_indices, p2.sorted_indices)
    (u1, l1), (u2, l2) = pad_packed_sequence(p1, batch_first=True), pad_packed_sequence(p2, batch_first=True)
    assert torch.equal(l1, l2) and _max_err([u1, h1], [u2, h2]) < 1e-12


def test_dropout_follows_torch_generator():
    ref, ours = _pair(3, "tanh", True, True, False, torch.float64, dropout=0.4)
    ref.train(), ours.train()
    x = torch.randn(7, 3, 5, dtype=torch.float64)
    torch.manual_seed(11)
    o1, h1 = ref(x)
    torch.manual_seed(11)
    o2, h2 = ours(x)
    assert _max_err([o1, h1], [o2, h2]) < 1e-12
    torch.manual_seed(12)
    o3, _ = ours(x)
    assert (o3 - o2).abs().max() > 1e-3  # another seed, other masks: the masks are really applied
    ours.eval(), ref.eval()
    assert _max_err(ref(x), ours(x)) < 1e-12  # no dropout in eval mode


def test_dropout_gradients():
    ref, ours = _pair(2, "relu", False, True, False, torch.float64, dropout=0.5)
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    grads = []
    for m in (ref, ours):
        torch.manual_seed(5)
        out, hn = m(x)
        grads.append(torch.autograd.grad(out.sum() + hn.pow(2).sum(), list(m.parameters())))
    assert _max_err(*grads) < 1e-12


@pytest.mark.parametrize("bi,packed", [(False, False), (True, True)])
def test_gradcheck_float64(bi, packed):
    torch.manual_seed(6)
    ours = ft.RNN(3, 3, 2, bidirectional=bi, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4 if bi else 2, 2, 3, dtype=torch.float64, requires_grad=True)
    params = list(ours.parameters())
    names = [n for n, _ in ours.named_parameters()]

    def f(x, h0, *ps):
        state = dict(zip(names, ps))
        inp = pack_padded_sequence(x, torch.tensor([3, 4]), enforce_sorted=False) if packed else x
        out, hn = torch.func.functional_call(ours, state, (inp, h0))
        return (out.data if packed else out), hn

    assert torch.autograd.gradcheck(f, (x, h0, *params), eps=1e-6, atol=1e-7)


def test_adam_loop_matches_nn_rnn():
    torch.manual_seed(7)
    ref, ours = _pair(2, "tanh", True, True, True, torch.float32, d=6, h=8)
    heads = [nn.Linear(16, 6), None]
    heads[1] = nn.Linear(16, 6)
    heads[1].load_state_dict(heads[0].state_dict())
    data = torch.randn(8, 12, 6)
    targets = torch.randint(0, 6, (8, 12))
    losses = []
    for rnn, head in zip((ref, ours), heads):
        opt = torch.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=1e-2)
        run = []
        for step in range(100):
            out, _ = rnn(data)
            loss = nn.functional.cross_entropy(head(out).reshape(-1, 6), targets.reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(np.array(run))
    rel = np.abs(losses[0] - losses[1]) / np.abs(losses[0])
    assert losses[1][-1] < 0.8 * losses[1][0]  # it trains
    assert rel.max() < 1e-5, rel.max()


def test_in_place_change_of_the_output_is_refused():
    m = ft.RNN(3, 2)
    out, _ = m(torch.randn(4, 2, 3))
    out.add_(1)  # the saved states share this memory, as nn.RNN's saved output does
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_double_backward_is_refused():
    m = ft.RNN(3, 2, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    out, _ = m(x)
    (gx,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


def test_state_dict_both_ways_and_conversions():
    plain = nn.RNN(4, 3, 2, bidirectional=True)
    ours = ft.RNN(4, 3, 2, bidirectional=True)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert "weight_ih_l1_reverse" in ours.state_dict()
    ours.load_state_dict(plain.state_dict())
    plain2 = nn.RNN(4, 3, 2, bidirectional=True)
    plain2.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 4)
    assert _max_err(plain(x), plain2(x)) == 0
    back = ours.to_torch()
    assert type(back) is nn.RNN and _max_err(back(x), plain(x)) == 0
    assert isinstance(ours, nn.RNN)


def test_clear_errors():
    m = ft.RNN(4, 3)
    with pytest.raises(ValueError, match="proj_size"):
        ft.RNN(4, 3, proj_size=2)
    with pytest.raises(TypeError, match="float64.*float32|float32.*float64"):
        m(torch.randn(5, 2, 4, dtype=torch.float64))  # mixed dtypes
    with pytest.raises(TypeError, match="hx is torch.float64"):
        m(torch.randn(5, 2, 4), torch.zeros(1, 2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        ft.RNN(4, 3, dtype=torch.float16)(torch.randn(5, 2, 4, dtype=torch.float16))
    with pytest.raises(RuntimeError, match="fastrnn runs on the CPU"):
        m(torch.randn(5, 2, 4, device="meta"))
    with pytest.raises(RuntimeError, match="fastrnn runs on the CPU"):
        ft.RNN(4, 3, device="meta")(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match="input_size=4"):
        m(torch.randn(5, 2, 3))
    with pytest.raises(ValueError, match="2D or 3D"):
        m(torch.randn(5, 2, 4, 1))
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(1, 2, 3\)"):
        m(torch.randn(5, 2, 4), torch.zeros(1, 3, 3))
    with pytest.raises(TypeError, match="nn.RNN"):
        ft.RNN.from_torch(nn.GRU(4, 3))


def test_replaced_parameters_are_used_and_checked():
    torch.manual_seed(9)
    m, x = ft.RNN(4, 3, dtype=torch.float64), torch.randn(5, 2, 4, dtype=torch.float64)
    m.weight_hh_l0 = nn.Parameter(torch.randn(3, 3, dtype=torch.float64))  # nn.RNN's setattr updates _flat_weights
    ref = nn.RNN(4, 3, dtype=torch.float64)
    ref.load_state_dict(m.state_dict())
    assert _max_err(m(x)[0], ref(x)[0]) < 1e-14
    m.weight_hh_l0 = nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"weight_hh_l0 has shape \(2, 3\), expected \(3, 3\)"):
        m(x)


def test_torch_compile_runs_with_a_graph_break():
    torch.manual_seed(8)
    ref, ours = _pair(1, "tanh", False, True, False, torch.float32)
    x = torch.randn(5, 2, 5)
    compiled = torch.compile(ours, backend="eager")
    out, hn = compiled(x)
    assert _max_err(ref(x), (out, hn)) < 1e-6
    out.sum().backward()
    assert ours.weight_hh_l0.grad is not None


def test_import_fastrnn_imports_no_framework():
    code = ("import sys, fastrnn, fastrnn.interop, fastrnn.packed; bad = [m for m in ('torch', 'jax', 'flax', 'keras', 'mpi4py') if m in sys.modules]; "
            "sys.exit(', '.join(bad) or None)")
    subprocess.run([sys.executable, "-c", code], check=True)



def test_missing_torch_is_named():
    code = "import sys; sys.modules['torch'] = None; import fastrnn.torch"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and "fastrnn[torch]" in r.stderr and "PyTorch" in r.stderr


def test_readme_example_runs():
    """The README's one-line swap runs and gives the shapes it states."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## From PyTorch, JAX and Keras"):]
    start = section.index("```python") + len("```python")
    scope = {}
    exec(compile(section[start : section.index("```\n", start)], "README", "exec"), scope)
    assert scope["output"].shape == (16, 50, 256) and scope["h_n"].shape == (4, 16, 128)
    assert type(scope["plain"]) is nn.RNN and isinstance(scope["rnn"], ft.RNN)
