"""Fail any test that lets an API key out, wherever the output went.

Loaded for the whole suite by ``tests/conftest.py``. After each phase of each test
(setup, call, teardown) it scans

* what pytest captured: stdout, stderr and log records of the test and its fixtures;
* the stdout and stderr of every process registered with :func:`watch` (the stdio
  harness registers every sidecar it spawns; the hardening hosts do too),

* every file in the data dir of every such process (:func:`data_dir_blobs`): no key may
  be kept there in plain text, except in ``config.json`` by a sidecar that keeps keys in
  the file (no credential store),

for every key in :data:`SECRETS` (the fake keys of :mod:`tests.support.keys`, plus the
comma-separated ``SIDECAR_TEST_EXTRA_SECRETS`` read once at import, which lets the
guard's own test plant a canary). A hit turns a passing phase into a failure naming the
key by its preview and where it was found; processes that have exited are scanned a
last time and then forgotten.
"""

from __future__ import annotations

import fnmatch
import os
import threading
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.keys import ALL_KEYS

__all__ = ["SECRETS", "data_dir_blobs", "find_secrets", "pytest_runtest_makereport", "watch"]

SECRETS: tuple[str, ...] = (
    *ALL_KEYS,
    *(s for s in os.environ.get("SIDECAR_TEST_EXTRA_SECRETS", "").split(",") if len(s) >= 12),
)

Streams = Callable[[], Iterable[tuple[str, bytes]]]


@dataclass
class _Watched:
    label: str
    streams: Streams
    finished: Callable[[], bool]
    reported: set[str] = field(default_factory=set)


_lock = threading.Lock()
_watched: list[_Watched] = []
_REPORTED = pytest.StashKey[set[str]]()


def watch(label: str, streams: Streams, finished: Callable[[], bool]) -> None:
    """Scan ``streams()`` (``[(name, bytes)]``) after every test phase until ``finished()``."""
    with _lock:
        _watched.append(_Watched(label, streams, finished))


#: Where a sidecar without a credential store keeps keys (mode 0600), and the copies it
#: makes of that file (a backup of a file that did not load, a write in progress).
KEY_FILES = ("config.json", "config.json.bad-*", "config.json.tmp-*")
#: Larger files are scanned up to this many bytes.
_MAX_SCAN_BYTES = 64 * 1024 * 1024


def data_dir_blobs(data_dir: Path, *, keys_in_file: bool) -> list[tuple[str, bytes]]:
    """``(where, bytes)`` of every file under ``data_dir``, for the scan.

    ``keys_in_file``: the sidecar keeps keys in config.json (no credential store), so the
    :data:`KEY_FILES` are left out; every other file is always scanned.
    """
    blobs = []
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        if keys_in_file and any(fnmatch.fnmatch(path.name, pattern) for pattern in KEY_FILES):
            continue
        try:
            with path.open("rb") as file:
                blobs.append((f"data dir file {path.relative_to(data_dir)}", file.read(_MAX_SCAN_BYTES)))
        except OSError:  # removed meanwhile, or not readable: nothing to scan
            continue
    return blobs


def _preview(secret: str) -> str:
    return f"{secret[:5]}…{secret[-4:]}"


def find_secrets(blobs: Iterable[tuple[str, str | bytes]], secrets: Iterable[str] = SECRETS) -> list[str]:
    """``"<preview> in <where>"`` for every secret found in any ``(where, text)`` blob."""
    keys = [s for s in secrets if s]
    found = []
    for where, blob in blobs:
        data = blob.encode("utf-8", "replace") if isinstance(blob, str) else blob
        found.extend(f"{_preview(key)} in {where}" for key in keys if key.encode() in data)
    return found


def _process_findings() -> list[str]:
    with _lock:
        watched = list(_watched)
    findings = []
    for item in watched:
        done = item.finished()  # before the scan: nothing can be written after it
        hits = find_secrets((f"{item.label} {name}", data) for name, data in item.streams())
        findings.extend(hit for hit in hits if hit not in item.reported)
        item.reported.update(hits)
        if done:
            with _lock:
                _watched.remove(item)
    return findings


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    reported = item.stash.setdefault(_REPORTED, set())
    findings = [f for f in find_secrets(report.sections) if f not in reported]
    findings += _process_findings()
    if not findings:
        return
    reported.update(findings)
    message = "an API key leaked: " + "; ".join(findings)
    if report.passed:
        report.outcome = "failed"
        report.longrepr = message
    else:
        report.sections.append(("secret guard", message))
