"""Provider stats: the latency window's median, kept sorted as samples come and go, equals
``statistics.median`` of the window at every step; a long outage's cool-down stays capped."""

from __future__ import annotations

import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.stats import COOLDOWN_MAX_S, WINDOW, StatsBook


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=WINDOW + 5, max_size=3 * WINDOW))
def test_median_of_the_window_at_every_step(latencies: list[float]) -> None:
    book = StatsBook()
    assert book.model("p", "m").latency_p50() is None
    for ms in latencies:
        book.success("p", ms, "m")
        stats = book.model("p", "m")
        assert len(stats.latencies_ms) <= WINDOW
        assert stats.latency_p50() == round(statistics.median(stats.latencies_ms), 2)
        assert book.get("p").latency_p50() == stats.latency_p50()


def test_repeated_values_leave_the_window_one_at_a_time() -> None:
    book = StatsBook()
    for ms in [5.0] * WINDOW + [1.0] * (WINDOW // 2 + 1):
        book.success("p", ms)
    assert book.get("p").latency_p50() == 1.0


def test_a_long_outage_keeps_the_cool_down_at_its_cap() -> None:
    """Thousands of provider-wide failures in a row (a long outage under a busy host):
    the cool-down stays at its cap instead of overflowing (2 ** 1,100 is no float)."""
    now = [1000.0]
    book = StatsBook(clock=lambda: now[0])
    for _ in range(3000):
        book.failure("p", "NetworkError", "refused", "m", provider_wide=True)
    assert book.get("p").consecutive_failures == 3000
    assert book.down_for_ms("p") == COOLDOWN_MAX_S * 1000
    assert not book.available("p")
    now[0] += COOLDOWN_MAX_S
    assert book.available("p")
