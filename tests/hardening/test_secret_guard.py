"""The secret guard of tests/conftest.py can fail a test, and does not fail clean ones.

The end-to-end check runs an inner pytest in a subprocess with the guard loaded and a
canary key planted through ``SIDECAR_TEST_EXTRA_SECRETS``. The canary is unknown to this
(outer) session's guard, which read its key list at import, so the inner output that
pytester echoes here does not fail this test.
"""

from __future__ import annotations

import pytest

from tests.stdio.harness import REPO
from tests.support import secret_guard
from tests.support.keys import ALL_KEYS, OPENAI_KEY

pytestmark = pytest.mark.hardening

CANARY = "canary-key-" + "5f3a9c0e7b2d4168"


def test_find_secrets_names_each_key_by_its_preview_only() -> None:
    blobs = [("stdout", f"prefix {OPENAI_KEY} suffix"), ("stderr", b"clean"), ("log", ALL_KEYS[1].encode())]
    found = secret_guard.find_secrets(blobs)
    assert len(found) == 2
    assert found[0].endswith("in stdout") and found[1].endswith("in log")
    assert not any(key in hit for hit in found for key in ALL_KEYS)
    assert secret_guard.find_secrets([("stdout", "sk-test-OPENAIKEY…cdef, a preview")]) == []


def test_every_fake_key_is_watched() -> None:
    assert set(ALL_KEYS) <= set(secret_guard.SECRETS)


def test_a_watched_process_stream_with_a_key_is_reported_once() -> None:
    secret_guard.watch("fake process", lambda: [("stderr", b"oops " + OPENAI_KEY.encode())], lambda: True)
    findings = secret_guard._process_findings()
    assert findings == [f"{OPENAI_KEY[:5]}…{OPENAI_KEY[-4:]} in fake process stderr"]
    assert secret_guard._process_findings() == []  # finished: scanned a last time, then dropped


INNER_TESTS = '''
import logging
import os
import sys

from tests.support.secret_guard import watch

CANARY = os.environ["SIDECAR_TEST_EXTRA_SECRETS"]


def test_clean():
    print("nothing to see here")


def test_prints_a_key():
    print("Authorization: Bearer " + CANARY)


def test_writes_a_key_to_stderr():
    sys.stderr.write(CANARY + "\\n")


def test_logs_a_key():
    logging.getLogger("inner").warning("key=%s", CANARY)


def test_spawned_process_leaks_a_key():
    watch("inner sidecar", lambda: [("stderr", ("x" + CANARY).encode())], lambda: True)


def test_already_failing_test_with_a_key():
    print(CANARY)
    assert False
'''


def test_the_guard_fails_tests_that_leak_a_key(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_TEST_EXTRA_SECRETS", CANARY)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeconftest("from tests.support.secret_guard import pytest_runtest_makereport  # noqa: F401\n")
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "-rA")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 1 and outcomes.get("failed") == 5, result.stdout.str()[-3000:]
    text = result.stdout.str()
    assert "PASSED test_inner.py::test_clean" in text
    for name in ("test_prints_a_key", "test_writes_a_key_to_stderr", "test_logs_a_key",
                 "test_spawned_process_leaks_a_key", "test_already_failing_test_with_a_key"):
        assert f"FAILED test_inner.py::{name}" in text
    assert text.count("an API key leaked: canar…4168 in") >= 4
    assert "secret guard" in text  # added to the report of the test that failed anyway
