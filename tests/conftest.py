"""Fixtures. Every backend other than the numpy reference is run against it
through the ``backend`` and ``fast_backend`` fixtures, which are parametrised over
every backend name: one that does not load is skipped with its reason (and fails
under FASTRNN_REQUIRE_BACKENDS=1, which CI sets)."""

import os

import pytest
from hypothesis import settings

from cases import ALL_BACKENDS, OTHER_BACKENDS, require_backend


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    return require_backend(request.param)


@pytest.fixture(params=OTHER_BACKENDS)
def fast_backend(request):
    return require_backend(request.param)


# CI runs the property tests on a fixed example sequence, so a red run can be replayed.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
