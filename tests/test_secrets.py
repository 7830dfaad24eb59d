"""Keys never leave: previews, byte scrubbing of protocol lines, structured log scrubbing."""

from __future__ import annotations

import io
import json

import structlog

from sidecar.logs import configure_logging
from sidecar.secrets import Redactor, is_preview, preview


def test_preview_shows_only_the_ends() -> None:
    assert preview("sk-proj-abcdefghijklmnop1234") == "sk-\u20261234"
    assert preview("short") == "\u2026"
    assert is_preview(preview("sk-proj-abcdefghijklmnop1234"))
    assert not is_preview("sk-proj-abcdefghijklmnop1234")


def test_bytes_scrubbing_covers_json_escaped_forms() -> None:
    redactor = Redactor()
    redactor.add('key"with\\quote-123456')
    line = json.dumps({"m": 'x key"with\\quote-123456 y'}).encode()
    assert b"quote-123456" not in redactor.scrub_bytes(line)


def test_log_processor_scrubs_any_field_and_key_shaped_strings() -> None:
    redactor = Redactor()
    redactor.add("known-secret-value-42")
    out = io.StringIO()
    configure_logging("debug", redactor, stream=out)
    log = structlog.get_logger("t")
    log.info("event", note="has known-secret-value-42 inside", api_key="anything",
             nested={"authorization": "Bearer abc"}, text="leaked sk-abcdefghijklmnopqrstu here")
    structlog.reset_defaults()
    record = json.loads(out.getvalue().splitlines()[-1])
    dumped = json.dumps(record)
    assert "known-secret-value-42" not in dumped
    assert record["api_key"] == "[redacted]"
    assert record["nested"]["authorization"] == "[redacted]"
    assert "sk-abcdefghijklmnopqrstu" not in dumped
