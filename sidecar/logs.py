"""structlog set-up: one JSON object per line on stderr, secrets scrubbed in every field."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

from sidecar.secrets import Redactor

__all__ = ["LEVELS", "configure_logging"]

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _json_renderer(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
    return orjson.dumps(event, default=repr).decode("utf-8")


def configure_logging(level: str, redactor: Redactor, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr) as JSON lines."""
    out = stream or sys.stderr

    def redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        scrubbed: dict[str, Any] = redactor.scrub(dict(event), shapes=True)
        return scrubbed

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            redact,
            _json_renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    # Libraries that use stdlib logging (httpx, asyncio) also end up as JSON on stderr.
    handler = logging.StreamHandler(out)
    handler.setFormatter(_StdlibJsonFormatter(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(LEVELS[level], logging.WARNING))


class _StdlibJsonFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "event": self._redactor.scrub_text(record.getMessage(), shapes=True),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if record.exc_info:
            event["exception"] = self._redactor.scrub_text(self.formatException(record.exc_info), shapes=True)
        return orjson.dumps(event).decode("utf-8")
