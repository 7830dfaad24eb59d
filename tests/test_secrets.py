"""Keys never leave: previews, byte scrubbing of protocol lines, structured log scrubbing."""

from __future__ import annotations

import io
import json

import structlog

from sidecar.logs import configure_logging
from sidecar.secrets import Redactor, StreamScrubber, is_preview, preview


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


def test_a_key_split_across_pieces_is_replaced_whole() -> None:
    key = "sk-test-SPLITKEY0123456789"
    scrubber = StreamScrubber([key + "\n", "short"])
    out = [scrubber.feed(p) for p in ("hello sk-te", "st-SPLITKEY01", "23456789 bye sk-", "x done", "s")]
    out.append(scrubber.flush())
    assert out == ["hello ", "", "[redacted] bye ", "sk-x done", "", "s"]
    assert "".join(out) == "hello [redacted] bye sk-x dones"


def test_text_without_a_key_prefix_is_never_held_back() -> None:
    scrubber = StreamScrubber(["sk-test-SPLITKEY0123456789"])
    assert [scrubber.feed(p) for p in ("Hello", " world", "!")] == ["Hello", " world", "!"]
    assert scrubber.flush() == ""


def test_every_form_of_a_key_is_scrubbed() -> None:
    redactor = Redactor()
    redactor.add("  sk-test-FORMS0123456789\n", "sk-test-HEAD0123\x01TAIL0123456789")
    text = "a sk-test-FORMS0123456789 b sk-test-HEAD0123\\x01TAIL0123456789 c"
    assert redactor.scrub_text(text) == "a [redacted] b [redacted]\\x01[redacted] c"
