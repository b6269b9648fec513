"""Fixtures. Every backend other than the numpy reference is run against it
through the ``backend`` and ``fast_backend`` fixtures."""

import os

import pytest
from hypothesis import settings

from cases import ALL_BACKENDS, OTHER_BACKENDS


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=OTHER_BACKENDS)
def fast_backend(request):
    return request.param


# CI runs the property tests on a fixed example sequence, so a red run can be replayed.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
