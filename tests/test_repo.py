"""The repository keeps its promises: CI runs exactly the README's test command."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    if not (ROOT / ".ci" / "run").exists():
        pytest.fail("run the suite from a checkout: .ci/run is missing")
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    lines = ci.splitlines()
    command = lines[lines.index("# The README's test command:") + 1]
    assert command.strip() and f"\n{command}\n" in readme


def test_the_version_lives_in_one_place():
    """pyproject.toml reads the version from fastrnn.__version__; the installed metadata agrees."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from importlib.metadata import version

    import fastrnn

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fastrnn.__version__"}
    assert version("fastrnn") == fastrnn.__version__
