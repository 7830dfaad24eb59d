"""hypothesis: random schedules of acquire / release / cancel / clock moves on an injected
clock. Invariants: never more than maxConcurrent in flight, never more than maxRequests
starts in any window, the token budget respected (or one oversized call alone), strict
FIFO admission, a full queue refused at once, and no lost permits: once everything is
released every surviving call has been admitted and in-flight is back to 0."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.core.ratelimit import Permit, RateLimiter
from sidecar.errors import RateLimitError
from sidecar.wire.config import RateLimitConfig
from tests.ratelimit.helpers import FakeClock, settle

# Fake time is in seconds and windows are >= 10 s, so the limiter's real loop timers
# (armed for fake-time distances) never fire inside an example: only wake() drives it.
configs = st.builds(
    RateLimitConfig,
    max_requests=st.integers(0, 4),
    window_ms=st.integers(10_000, 40_000),
    max_tokens=st.none() | st.integers(1, 12),
    max_concurrent=st.none() | st.integers(1, 3),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.integers(0, 15), st.none() | st.integers(0, 30_000)),
        st.tuples(st.just("release"), st.integers(0, 50), st.none() | st.integers(0, 15)),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
        st.tuples(st.just("advance"), st.integers(0, 25_000)),
    ),
    max_size=40,
)


@dataclass
class Run:
    config: RateLimitConfig
    max_queue: int
    clock: FakeClock = field(default_factory=FakeClock)
    admitted: list[tuple[int, float]] = field(default_factory=list)
    tokens: dict[int, int] = field(default_factory=dict)  # per admitted call, as corrected
    held: dict[int, Permit] = field(default_factory=dict)
    refused: set[int] = field(default_factory=set)
    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    deadlines: dict[int, float] = field(default_factory=dict)

    async def call(self, lim: RateLimiter, i: int, tokens: int, max_wait_s: float | None) -> None:
        asked = self.clock()
        try:
            permit = await lim.acquire(tokens, max_wait_s=max_wait_s)
        except RateLimitError as exc:
            reason = exc.to_data()["reason"]
            if reason == "queueFull":
                assert lim.state()["queued"] == self.max_queue  # refused only when full
            elif reason == "waitTooLong":
                assert max_wait_s is not None and self.clock() == asked  # refused at once
            else:
                assert reason == "waitTimedOut" and max_wait_s is not None
                assert self.clock() >= asked + max_wait_s
            assert exc.retry_after_ms is not None and exc.retry_after_ms >= 1
            self.refused.add(i)
            return
        now = self.clock()
        cfg = self.config
        span = cfg.window_ms / 1000
        in_window = [j for j, at in self.admitted if at + span > now]
        if cfg.max_requests:
            assert len(in_window) < cfg.max_requests
        if cfg.max_tokens and tokens:
            used = sum(self.tokens[j] for j in in_window)
            assert used == 0 or used + tokens <= cfg.max_tokens
        if self.admitted:
            assert i > self.admitted[-1][0]  # FIFO: calls start in the order they asked
        self.admitted.append((i, now))
        self.tokens[i] = tokens
        self.held[i] = permit
        if cfg.max_concurrent:
            assert len(self.held) <= cfg.max_concurrent


async def drive(config: RateLimitConfig, max_queue: int, schedule: list[tuple[Any, ...]]) -> None:
    run = Run(config, max_queue)
    lim = RateLimiter("p", config, clock=run.clock, max_queue=max_queue)
    for op in schedule:
        kind = op[0]
        if kind == "acquire":
            i = len(run.tasks)
            wait = None if op[2] is None else int(op[2]) / 1000
            if wait is not None:
                run.deadlines[i] = run.clock() + wait
            run.tasks[i] = asyncio.create_task(run.call(lim, i, int(op[1]), wait))
        elif kind == "release" and run.held:
            i = sorted(run.held)[int(op[1]) % len(run.held)]
            actual = op[2]
            run.held.pop(i).release(actual_tokens=actual)
            if actual is not None and i in run.tokens:
                run.tokens[i] = int(actual)
        elif kind == "cancel":
            pending = [t for t in run.tasks.values() if not t.done()]
            if pending:
                pending[int(op[1]) % len(pending)].cancel()
        elif kind == "advance":
            run.clock.advance(int(op[1]) / 1000)
            lim.wake()
        await settle()
        state = lim.state()
        assert state["inFlight"] == len(run.held)
        assert state["queued"] == sum(not t.done() for t in run.tasks.values())  # cancelled ones left
        # max_wait_s: nobody is still waiting once its bound has passed (it started or was refused).
        assert all(run.deadlines[i] > run.clock() for i, t in run.tasks.items() if not t.done() and i in run.deadlines)
    # Drain: release everything and let time pass until every surviving call got in.
    for _ in range(200):
        for i in list(run.held):
            run.held.pop(i).release()
        if all(t.done() for t in run.tasks.values()):
            break
        run.clock.advance(config.window_ms / 1000)
        lim.wake()
        await settle()
    assert all(t.done() for t in run.tasks.values())
    for i, task in run.tasks.items():
        assert task.cancelled() or i in run.refused or i in run.tokens
        if not task.cancelled():
            task.result()  # no unexpected exception
    state = lim.state()
    assert state["inFlight"] == 0 and state["queued"] == 0


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs, st.integers(1, 4), ops)
def test_random_schedules_keep_every_invariant(
    config: RateLimitConfig, max_queue: int, schedule: list[tuple[Any, ...]]
) -> None:
    asyncio.run(drive(config, max_queue, schedule))
