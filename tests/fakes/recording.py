"""What a fake server received: one `RecordedRequest` per HTTP request.

Requests are recorded by the server's event-loop thread and read by test threads,
so the log is guarded by a lock and readers always get a snapshot list. The two
`threading.Event` fields let a test wait for the fate of a response from any
thread (for example to prove that cancelling a sidecar request closed the
upstream HTTP request).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["RecordedRequest", "RequestLog"]


@dataclass
class RecordedRequest:
    """One request as the server saw it.

    Attributes:
        method: HTTP method.
        path: URL path without the query string (see ``query``).
        headers: header names lowercased; repeated headers joined with ``", "``.
        body: raw request body.
        json: the parsed body, or None when it is empty or not valid JSON.
        received_at: ``time.monotonic()`` when the request line arrived.
        disconnected: set when the client closed the connection before the response
            was fully written.
        completed: set when the full response was written.
        query: the raw query string.
        behaviour: the scripted behaviour a chat request was answered with (None for
            other requests and for chat requests refused before the script, such as
            auth failures).
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    query: str = ""
    json: Any = None
    disconnected: threading.Event = field(default_factory=threading.Event)
    completed: threading.Event = field(default_factory=threading.Event)
    behaviour: Any = None

    def __post_init__(self) -> None:
        if self.json is None and self.body:
            try:
                self.json = orjson.loads(self.body)
            except orjson.JSONDecodeError:
                self.json = None


class RequestLog:
    """Thread-safe append-only list of `RecordedRequest`s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[RecordedRequest] = []

    def append(self, item: RecordedRequest) -> None:
        with self._lock:
            self._items.append(item)

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
