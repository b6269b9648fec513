"""Mutation testing of the fast kernels, run by hand (not in CI).

Each mutant changes one transpose flag or one branch condition in
src/fastrnn/backends/numba_kernels.py or csrc/ (one exact text, which must
occur exactly once). For each mutant this script

1. copies the repository (src/, csrc/, tests/, pyproject.toml, README.md) into a temporary
   folder and applies the mutant there (the checkout is never touched);
2. builds the C extension in that copy when a csrc/ file changed (otherwise it
   reuses the unmutated build);
3. runs the chosen tests against the copy (PYTHONPATH=copy/src) with
   ``pytest -x -q`` and a fresh NUMBA_CACHE_DIR, so that no cached compile of
   the unmutated module is reused (Numba's cache index checks only the source
   file's timestamp);
4. counts the mutant killed if the tests fail (or crash, or time out).

Usage, from the repository root with the project's venv active:

    python bench/mutate.py                       # every mutant, default tests
    python bench/mutate.py -k wt -k chunk        # mutants whose name contains a word
    python bench/mutate.py --list
    python bench/mutate.py --tests tests/test_branches.py tests/test_backends.py

The unmutated copy is tested first; if it fails, nothing else runs. To add a
mutant, append a Mutant(name, file, original, replacement) to MUTANTS.
An "equivalent" mutant changes no result (only which path computes it), so no
test can kill it; such mutants are marked and reported apart.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBA = "src/fastrnn/backends/numba_kernels.py"
CFFI = "src/fastrnn/backends/cffi_kernels.py"
KERNELS = "csrc/kernels.inc"
CMAIN = "csrc/fastrnn.c"
NPACK = "src/fastrnn/backends/numba_packed.py"
CPACK = "csrc/packed.inc"
CFFIPACK = "src/fastrnn/backends/cffi_packed.py"
TILES = "csrc/tiles.h"
PACKED = "src/fastrnn/backends/_packed.py"
DEFAULT_TESTS = ["tests/test_branches.py", "tests/test_float32_sums.py", "tests/test_backends.py"]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    original: str
    replacement: str
    equivalent: str = ""  # why no test can tell, for mutants that change no number


MUTANTS = [
    # ---- Numba: the contiguous-Wᵀ cutoff and the two sides of it
    Mutant("nb-wt-cutoff-le", NUMBA, "if n * h * h < COPY_WT_BELOW or", "if n * h * h <= COPY_WT_BELOW or"),
    Mutant("nb-wt-cutoff-flip", NUMBA, "if n * h * h < COPY_WT_BELOW or", "if n * h * h >= COPY_WT_BELOW or"),
    Mutant("nb-wt-tiles-ignored", NUMBA, "COPY_WT_BELOW or tiles_apply(max(fewest, 2), h, W.itemsize):",
           "COPY_WT_BELOW:"),
    Mutant("nb-wt-copy-untransposed", NUMBA, "return np.ascontiguousarray(W.T)", "return np.ascontiguousarray(W)"),
    Mutant("nb-wt-view-untransposed", NUMBA, "np.dot(Gt, W.T, carry)", "np.dot(Gt, W, carry)"),
    Mutant("nb-wt-size-flip", NUMBA, "if WTc.size:  # dA_t", "if not WTc.size:  # dA_t"),
    # ---- Numba: other transposes
    Mutant("nb-dV-transpose", NUMBA, "dV = np.dot(H.T, O)", "dV = np.dot(H, O.T)"),
    Mutant("nb-dOVT-transpose", NUMBA, "np.dot(O, V.T, G.reshape(T * n, h))", "np.dot(O, V, G.reshape(T * n, h))"),
    Mutant("nb-dW-transpose", NUMBA, "dW = np.dot(Hs[:T].reshape(T * n, h).T, dA)", "dW = np.dot(dA.T, Hs[:T].reshape(T * n, h))"),
    # (dAᵀX)ᵀ is XᵀdA itself, so a mutant that swaps the operands is equivalent; this one pairs
    # each row of X with another timestep's dA, as a wrong transpose of the (T·n, d) view would.
    Mutant("nb-dU-transpose", NUMBA, "dU = np.dot(X.reshape(T * n, d).T, dA)", "dU = np.dot(X.reshape(T * n, d)[::-1].T, dA)"),
    Mutant("nb-dX-transpose", NUMBA, "dX = np.dot(dA, U.T).reshape(T, n, d)", "dX = np.dot(dA, U.T[::-1]).reshape(T, n, d)"),
    Mutant("nb-chunk-dOVT-transpose", NUMBA, "np.dot(O[t0 * n : t1 * n], V.T, rows)", "np.dot(O[t0 * n : t1 * n], V.T[::-1], rows)"),
    Mutant("nb-chunk-dW-transpose", NUMBA, "Hc = Hs[t0:t1].reshape(m * n, h).T",
           "Hc = Hs[t0:t1].reshape(m * n, h).T[::-1]"),
    Mutant("nb-chunk-first-dW", NUMBA, "        if t1 == T:  # the first chunk", "        if t1 > 0:  # the first chunk"),
    Mutant("nb-chunk-first-dW-never", NUMBA, "        if t1 == T:  # the first chunk", "        if t1 == T + 1:  # the first chunk"),
    Mutant("nb-chunk-first-dU", NUMBA, "            if t1 == T:\n                np.dot(Xc", "            if t1 > 0:\n                np.dot(Xc"),
    # ---- Numba: params_only chunks
    Mutant("nb-chunk-ceil-T", NUMBA, "max(-(-T // _CHUNKS),", "max(T // _CHUNKS,"),
    Mutant("nb-chunk-ceil-rows", NUMBA, "-(-_MIN_CHUNK_ROWS // n)))", "_MIN_CHUNK_ROWS // n))",
           equivalent="floor instead of ceil of the 256-row floor only changes how many steps a chunk holds"),
    Mutant("nb-chunk-max-min", NUMBA, "return min(T, max(", "return min(T, min("),
    Mutant("nb-chunk-cap-T", NUMBA, "return min(T, max(-(-T // _CHUNKS), -(-_MIN_CHUNK_ROWS // n)))",
           "return max(-(-T // _CHUNKS), -(-_MIN_CHUNK_ROWS // n))",
           equivalent="the cap only bounds G's size; a longer G computes the same numbers"),
    Mutant("nb-chunk-start", NUMBA, "t0 = max(0, t1 - steps)", "t0 = max(1, t1 - steps)"),
    Mutant("nb-chunk-loop", NUMBA, "    while t1 > 0:\n", "    while t1 > 1:\n"),
    Mutant("nb-chunk-ids-flip", NUMBA, "        if ids.size == 0:\n            Xc = X[t0:t1]",
           "        if ids.size != 0:\n            Xc = X[t0:t1]"),
    # ---- Numba: float64 sums (the new accumulators)
    Mutant("nb-acc-float32", NUMBA, "_ACC = np.float64", "_ACC = np.float32"),
    Mutant("nb-chunk-acc-copy-flip", NUMBA, "    if ids.size:\n        dU = dU_acc", "    if not ids.size:\n        dU = dU_acc"),
    Mutant("nb-backward-ids-flip", NUMBA, "    if ids.size == 0:\n        dU = np.dot", "    if ids.size != 0:\n        dU = np.dot"),
    # ---- Numba: softmax row max over four partials
    Mutant("nb-max-loop-lt", NUMBA, "    while k + 4 <= v:\n", "    while k + 4 < v:\n",
           equivalent="the tail loop takes the last four columns instead; the max is the same"),
    Mutant("nb-max-tail", NUMBA, "    while k < v:\n        t0 =", "    while k < v - 1:\n        t0 ="),
    Mutant("nb-max-partial-t3", NUMBA, "top = max(max(t0, t1), max(t2, t3))", "top = max(max(t0, t1), t2)"),
    Mutant("nb-max-partial-cmp", NUMBA, "t2 = row[k + 2] if row[k + 2] > t2 else t2", "t2 = row[k + 2] if row[k + 2] < t2 else t2"),
    # ---- C: the contiguous-Wᵀ cutoff and the two sides of it
    Mutant("c-wt-cutoff-le", CMAIN, "return n * h * h < copy_wt_below ||", "return n * h * h <= copy_wt_below ||"),
    Mutant("c-wt-cutoff-flip", CMAIN, "return n * h * h < copy_wt_below ||", "return n * h * h >= copy_wt_below ||"),
    Mutant("c-wt-copy-untransposed", KERNELS, "WT[(int64_t)j * h + i] = W[(int64_t)i * h + j]",
           "WT[(int64_t)i * h + j] = W[(int64_t)i * h + j]"),
    Mutant("c-wt-flag-view-T-to-N", KERNELS, "const char tb = WT ? 'N' : 'T';", "const char tb = WT ? 'N' : 'N';"),
    Mutant("c-wt-flag-copy-N-to-T", KERNELS, "const char tb = WT ? 'N' : 'T';", "const char tb = WT ? 'T' : 'T';"),
    Mutant("c-wt-buffer-flip", KERNELS, "const REAL *B = WT ? WT : W;", "const REAL *B = WT ? W : WT;"),
    # ---- C: other transpose flags
    Mutant("c-forward-W-flag", KERNELS, "FN(step)(n, h, Hs + t * nh, W, 'N', At);",
           "FN(step)(n, h, Hs + t * nh, W, 'T', At);"),
    Mutant("c-XU-flag", KERNELS, "FN(gemm)('N', 'N', T * n, h, d, X, d, U, h, 0, XU, h);",
           "FN(gemm)('N', 'T', T * n, h, d, X, d, U, h, 0, XU, h);"),
    Mutant("c-dW-flag", KERNELS, "FN(gemm)('T', 'N', h, h, Tn, Hs, h, G, h, 0, dW, h);",
           "FN(gemm)('N', 'N', h, h, Tn, Hs, h, G, h, 0, dW, h);"),
    Mutant("c-dU-flag", KERNELS, "FN(gemm)('T', 'N', d, h, Tn, X, d, G, h, 0, dU, h);",
           "FN(gemm)('T', 'T', d, h, Tn, X, d, G, h, 0, dU, h);"),
    Mutant("c-dX-flag", KERNELS, "FN(gemm)('N', 'T', Tn, d, h, G, h, U, h, 0, dX, d);",
           "FN(gemm)('N', 'N', Tn, d, h, G, h, U, h, 0, dX, d);"),
    Mutant("c-dV-flag", KERNELS, "FN(gemm)('T', 'N', h, v, Tn, Hs + (int64_t)n * h, h, O, v, 0, dV, v);",
           "FN(gemm)('N', 'N', h, v, Tn, Hs + (int64_t)n * h, h, O, v, 0, dV, v);"),
    Mutant("c-dOVT-flag", KERNELS, "FN(gemm)('N', 'T', Tn, h, v, O, v, V, v, 0, G, h);",
           "FN(gemm)('N', 'N', Tn, h, v, O, v, V, v, 0, G, h);"),
    Mutant("c-HV-flag", KERNELS, "FN(gemm)('N', 'N', (int)Tn, v, h, Hs + (int64_t)n * h, h, V, v, 0, O, v);",
           "FN(gemm)('N', 'T', (int)Tn, v, h, Hs + (int64_t)n * h, h, V, v, 0, O, v);"),
    # ---- C: other branches
    Mutant("c-last-step", KERNELS, "        if (t < T - 1) {\n", "        if (t < T - 2) {\n"),
    Mutant("c-max-loop-lt", KERNELS, "    for (; k + 4 <= v; k += 4) {\n        t0 =", "    for (; k + 4 < v; k += 4) {\n        t0 =",
           equivalent="the tail loop takes the last four columns instead; the max is the same"),
    Mutant("c-max-tail", KERNELS, "    for (; k < v; k++) t0 = row[k] > t0", "    for (; k < v - 1; k++) t0 = row[k] > t0"),
    Mutant("c-max-partial-t3", KERNELS, "    t2 = t3 > t2 ? t3 : t2;\n", "\n"),
    Mutant("c-sum-loop-lt", KERNELS, "    for (k = 0; k + 4 <= v; k += 4) {\n        s0", "    for (k = 0; k + 4 < v; k += 4) {\n        s0",
           equivalent="the tail loop adds the last four columns instead: a different order, within rounding"),
    Mutant("c-sum-tail", KERNELS, "    for (; k < v; k++) s0 += row[k];", "    for (; k < v - 1; k++) s0 += row[k];"),
    # ---- C: float64 sums (the new accumulators)
    Mutant("c-acc-float", CMAIN, "#define ACC double", "#define ACC REAL"),
    # ---- the general model on packed sequences (run with --tests tests/test_lengths.py)
    Mutant("pk-nothing-padded-flip", PACKED, "if off[T] == T * n:", "if off[T] != T * n:"),
    Mutant("nbp-equal-flip", NPACK, "equal = bs[T - 1] == n", "equal = bs[T - 1] != n"),
    Mutant("nbp-rev-h0-end", NPACK, "            Hs[N:] = h0s", "            Hs[N:] = 0"),
    Mutant("nbp-rev-continuing-rows", NPACK, "k = bs[t + 1] if t + 1 < T else 0", "k = bs[t] if t + 1 < T else 0"),
    Mutant("nbp-fwd-first-step", NPACK, "k = m if t > 0 else 0", "k = m if t > 1 else 0"),
    Mutant("nbp-wt-view-untransposed", NPACK, "np.dot(G[o : o + m], W.T, carry[:m])", "np.dot(G[o : o + m], W, carry[:m])"),
    Mutant("nbp-backward-order", NPACK, "t = s if reverse else T - 1 - s", "t = T - 1 - s if reverse else s"),
    Mutant("nbp-relu-kink", NPACK, "if Ht[i, j] > zero else zero", "if Ht[i, j] >= zero else zero"),
    Mutant("nbp-ignored-rows", NPACK, "        if y[r] < 0:\n", "        if y[r] < -1:\n"),
    Mutant("nbp-head-second-direction", NPACK, "    if H2.size:\n        np.dot(H2.T", "    if not H2.size:\n        np.dot(H2.T"),
    Mutant("cffip-equal-flip", CFFIPACK, "equal = bs[-1] == n", "equal = bs[-1] != n"),
    Mutant("cp-copy-prev-flip", CPACK, "        if (copy_prev) {", "        if (!copy_prev) {"),
    Mutant("cp-rev-continuing-rows", CPACK, "const int k = reverse ? (t + 1 < T ? (int)bs[t + 1] : 0)",
           "const int k = reverse ? (t + 1 < T ? (int)bs[t] : 0)"),
    Mutant("cp-wt-flag-view-T-to-N", CPACK, "const char tb = WT ? 'N' : 'T';", "const char tb = WT ? 'N' : 'N';"),
    Mutant("cp-backward-order", CPACK, "const int t = reverse ? s : T - 1 - s;", "const int t = reverse ? T - 1 - s : s;"),
    Mutant("cp-relu-kink", CPACK, "g[k] = y[k] > 0 ? g[k] + carry[k] : 0;", "g[k] = y[k] >= 0 ? g[k] + carry[k] : 0;"),
    Mutant("cp-head-second-direction", CPACK, "    if (H2) {\n        FN(gemm)('T'", "    if (!H2) {\n        FN(gemm)('T'"),
    # ---- the per-step product's register tiles (run with --tests tests/test_branches.py)
    Mutant("nb-tiles-rows-lt", NUMBA, "return 2 <= m <= TILE_ROWS and", "return 2 <= m < TILE_ROWS and"),
    Mutant("nb-tiles-one-row", NUMBA, "return 2 <= m <= TILE_ROWS and", "return 1 <= m <= TILE_ROWS and"),
    Mutant("nb-tiles-bytes-lt", NUMBA, "h * h * itemsize <= TILE_BYTES", "h * h * itemsize < TILE_BYTES"),
    Mutant("nb-step-dot-flip", NUMBA, "    if tiles_apply(A.shape[0], B.shape[1], A.itemsize):\n        tiles_dot",
           "    if not tiles_apply(A.shape[0], B.shape[1], A.itemsize):\n        tiles_dot"),
    Mutant("nb-tile-rows-of-4", NUMBA, "                if r >= 4:\n                    _tile(A, i, B, j0, C, 4, 0)",
           "                if r > 4:\n                    _tile(A, i, B, j0, C, 4, 0)"),
    Mutant("nb-tile-rest-1", NUMBA, "                else:\n                    _tile(A, i, B, j0, C, 1, 0)",
           "                else:\n                    _tile(A, i, B, j0, C, 2, 0)"),
    Mutant("nb-tile-rest-2-masked", NUMBA, "            elif r == 2:\n                _tile(A, i, B, j0, C, 2, cols)",
           "            elif r == 2:\n                _tile(A, i, B, j0, C, 1, cols)"),
    Mutant("nb-tile-rest-3", NUMBA, "                elif r == 3:\n                    _tile(A, i, B, j0, C, 3, 0)",
           "                elif r == 3:\n                    _tile(A, i, B, j0, C, 2, 0)"),
    Mutant("nb-tile-mask", NUMBA, 'builder.icmp_signed("<", ir.Constant(iv, [p * lanes + q', 'builder.icmp_signed("<=", ir.Constant(iv, [p * lanes + q'),
    Mutant("nb-tile-whole-panels", NUMBA, "            if cols >= width:", "            if cols >= width - 1:"),
    Mutant("c-tiles-rows-lt", TILES, "m <= FASTRNN_TILE_ROWS &&", "m < FASTRNN_TILE_ROWS &&"),
    Mutant("c-tiles-bytes-lt", TILES, "h * h * itemsize <= FASTRNN_TILE_BYTES", "h * h * itemsize < FASTRNN_TILE_BYTES"),
    Mutant("c-tiles-rest-3", TILES, "case 3: TILE(3,", "case 3: TILE(2,"),
    Mutant("c-tiles-rest-1", TILES, "case 1: TILE(1,", "case 4: TILE(1,"),
    Mutant("c-tiles-rows-of-4", TILES, "for (; i + 4 <= M; i += 4)", "for (; i + 4 < M; i += 4)"),
    Mutant("c-tiles-mask-f32", TILES, "_mm256_cmpgt_epi32(_mm256_set1_epi32(cols), lane)",
           "_mm256_cmpgt_epi32(_mm256_set1_epi32(cols + 1), lane)"),
    Mutant("c-tiles-mask-f64", TILES, "_mm256_cmpgt_epi64(_mm256_set1_epi64x(cols - 4), lane)",
           "_mm256_cmpgt_epi64(_mm256_set1_epi64x(cols - 3), lane)"),
    Mutant("c-tiles-wt-ignored", CMAIN, "copy_wt_below || fastrnn_tiles(fewest < 2 ? 2 : fewest, h, itemsize);",
           "copy_wt_below;"),
    Mutant("cp-tiles-fewest", CPACK, "fastrnn_copy_wt(n, fewest, h,", "fastrnn_copy_wt(n, n, h,",
           equivalent="a step of few rows then multiplies by Wᵀ through the BLAS: the same numbers within rounding"),
    # ---- the C wrapper's 32-bit size check
    Mutant("c-size-check-ge", CFFI, "> _INT_MAX:", ">= _INT_MAX:"),
]


def _copy_tree(dest: Path):
    for name in ("src", "csrc", "tests"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns(
            "__pycache__", "*.so", "*.nbi", "*.nbc", ".pytest_cache", "build"))
    for name in ("pyproject.toml", "README.md"):  # tests/test_lengths.py runs the README's example
        shutil.copy2(ROOT / name, dest / name)


def _build_c(tree: Path):
    """Compile the C extension into tree/src/fastrnn (the cffi build script, run in the copy)."""
    for old in (tree / "src" / "fastrnn").glob("_fastrnn_c*.so"):
        old.unlink()
    # cffi's build reads setup configuration from the working folder; keep pyproject.toml out of it.
    hidden = tree / "pyproject.toml.hidden"
    (tree / "pyproject.toml").rename(hidden)
    try:
        # The build script names its sources relative to the tree: build from there.
        code = ("import runpy; ns = runpy.run_path('src/fastrnn/_cffi_build.py'); "
                "ns['ffibuilder'].compile(tmpdir='.', verbose=False)")
        env = {**os.environ, "FASTRNN_REQUIRE_C": "1"}
        done = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True)
    finally:
        hidden.rename(tree / "pyproject.toml")
    built = list((tree / "fastrnn").glob("_fastrnn_c*.so"))
    if done.returncode or not built:
        return False, (done.stdout + done.stderr)[-2000:]
    shutil.move(str(built[0]), tree / "src" / "fastrnn" / built[0].name)
    shutil.rmtree(tree / "fastrnn", ignore_errors=True)
    return True, ""


def _run_tests(tree: Path, tests, timeout):
    env = {k: v for k, v in os.environ.items() if k != "FASTRNN_BACKEND"}
    env["PYTHONPATH"] = str(tree / "src")
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        env["NUMBA_CACHE_DIR"] = cache
        check = subprocess.run([sys.executable, "-c", "import fastrnn; print(fastrnn.__file__)"],
                               cwd=tree / "tests", env=env, capture_output=True, text=True)
        if not check.stdout.strip().startswith(str(tree)):
            raise SystemExit(f"the copy's fastrnn is not the one imported: {check.stdout}{check.stderr}")
        t0 = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                  cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout", time.perf_counter() - t0, ""
    last = (done.stdout.strip().splitlines() or [""])[-1]
    return done.returncode, time.perf_counter() - t0, last


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", action="append", default=[], help="run mutants whose name contains this (repeatable)")
    ap.add_argument("--tests", nargs="+", default=DEFAULT_TESTS, help="test files or node ids to run")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per mutant before it counts as killed")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.k or any(k in m.name for k in args.k)]
    for m in chosen:
        text = (ROOT / m.file).read_text()
        if text.count(m.original) != 1:
            raise SystemExit(f"{m.name}: the original text occurs {text.count(m.original)} times in {m.file}")
    if args.list:
        for m in chosen:
            print(f"{m.name:28s} {m.file}{'  (equivalent)' if m.equivalent else ''}")
        return 0

    with tempfile.TemporaryDirectory(prefix="fastrnn-mutants-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        ok, log = _build_c(tree)
        if not ok:
            raise SystemExit(f"the unmutated C extension does not build:\n{log}")
        clean_so = next((tree / "src" / "fastrnn").glob("_fastrnn_c*.so")).read_bytes()
        so_name = next((tree / "src" / "fastrnn").glob("_fastrnn_c*.so")).name
        rc, secs, last = _run_tests(tree, args.tests, args.timeout)
        print(f"{'(unmutated)':28s} {'passed' if rc == 0 else 'FAILED'}  {secs:6.1f} s  {last}", flush=True)
        if rc != 0:
            return 1
        rows = []
        for m in chosen:
            path = tree / m.file
            original = path.read_text()
            path.write_text(original.replace(m.original, m.replacement))
            try:
                if m.file.startswith("csrc/"):
                    ok, log = _build_c(tree)
                    if not ok:
                        rows.append((m, "no build", 0.0, log.strip().splitlines()[-1:]))
                        print(f"{m.name:28s} does not build", flush=True)
                        continue
                rc, secs, last = _run_tests(tree, args.tests, args.timeout)
            finally:
                path.write_text(original)
                if m.file.startswith("csrc/"):
                    for so in (tree / "src" / "fastrnn").glob("_fastrnn_c*.so"):
                        so.unlink()
                    (tree / "src" / "fastrnn" / so_name).write_bytes(clean_so)
            verdict = "survived" if rc == 0 else ("killed (timeout)" if rc == "timeout" else
                                                 "killed" if rc == 1 else f"killed (rc {rc})")
            rows.append((m, verdict, secs, last))
            print(f"{m.name:28s} {verdict:18s} {secs:6.1f} s  {last}", flush=True)

    print("\nmutant                       file                                      result")
    for m, verdict, secs, _ in rows:
        note = f"  [equivalent: {m.equivalent}]" if m.equivalent else ""
        print(f"{m.name:28s} {m.file:41s} {verdict}{note}")
    real = [r for r in rows if not r[0].equivalent]
    killed = sum(r[1].startswith("killed") for r in real)
    print(f"\nkilled {killed} of {len(real)} (plus {len(rows) - len(real)} equivalent mutants, "
          f"{sum(r[1].startswith('killed') for r in rows if r[0].equivalent)} of them killed)")
    return 0 if killed == len(real) else 1


if __name__ == "__main__":
    sys.exit(main())
