"""Suite-wide set-up: the secret guard (markers are declared in pyproject.toml).

The guard (:mod:`tests.support.secret_guard`) fails any test whose captured output, or
whose spawned sidecars' stdout/stderr, contains one of the fake API keys.
"""

from __future__ import annotations

from tests.support.secret_guard import pytest_runtest_makereport

__all__ = ["pytest_runtest_makereport"]

pytest_plugins = ["pytester"]


