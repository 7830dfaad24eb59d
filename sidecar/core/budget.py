"""The budget manager: reserve a call's worst case before it, settle its real cost after.

Policy only; the :class:`~sidecar.store.ledger.Ledger` stores everything. Rules:

* ``reserve`` is refused (``BudgetExceededError``, ``data.usage`` = :meth:`usage`) when
  ``blockOnLimit`` and, for the daily or the monthly period, settled spend + every open
  reservation + this amount > the limit. The check and the insert are one SQLite
  transaction in the ledger's single worker thread, so no other coroutine (nor another
  connection) can slip in between: a burst of concurrent reserves never overshoots, and
  no asyncio lock is held across an fsync. A zero amount (local models) always fits.
  Not blocking, the reservation is made anyway and marked ``over``.
* A reservation the ledger cannot write (another process holds it past the wait, a
  read-only or full disk, no ledger file at all) is ``StorageError``: the call is not
  made. A paid call on the in-memory fallback ledger is refused alike; free calls
  (nothing to reserve) go on.
* ``settle`` replaces the reservation by the real cost; ``release`` drops it (nothing was
  used). Neither fails because of the storage: the ledger defers what it cannot write
  (journal) and this manager retries it in the background until it is in. Settling for more than was reserved is recorded as is (the provider's usage is
  what it is): that is the only way spending can pass a limit, and the next paid
  ``reserve`` is then refused. Spend counts in the period where the call is settled.
* Alerts: when settled spend reaches ``alertThreshold * limit`` (kind ``threshold``) or
  the limit (kind ``limit``), ``on_alert`` gets ``{period, spentUsd, limitUsd, threshold}``
  (``threshold`` is 1.0 for the limit alert) once per period and kind, restarts included:
  the ledger's ``alerts`` table decides who is first.
* Periods are calendar days and months in UTC, or in the IANA ``timezone`` given.
* Money is integer micro-dollars everywhere (:func:`usd_to_micros`, half up); floats only
  at the edges, rounded to 6 decimals for display.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog

from sidecar.errors import BudgetExceededError, StorageError
from sidecar.store.ledger import OUTCOMES, Cap, Ledger, LedgerWriteError, Settled, UsageRecord
from sidecar.wire.config import BudgetConfig

__all__ = [
    "BudgetManager",
    "Period",
    "Reservation",
    "call_cost_micros",
    "micros_to_usd",
    "periods_at",
    "resolve_timezone",
    "usd_to_micros",
]

log = structlog.get_logger("sidecar.budget")

MICROS_PER_USD = 1_000_000
#: Largest amount handled (SQLite integers are 64-bit); larger limits mean "no limit".
MAX_MICROS = 2**62
AlertCallback = Callable[[dict[str, Any]], Awaitable[None]]
#: Retries of records the ledger could not take: the first after this, then doubling.
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 5.0


def usd_to_micros(usd: float | Decimal) -> int:
    """USD → integer micro-dollars, half up, from the shortest decimal form of the float."""
    if type(usd) is float:
        # Most amounts have at most six decimals in their shortest form ("0.000123"): then
        # the digits are the micro-dollars, nothing to round (two calls per paid request).
        whole, dot, frac = repr(usd).partition(".")
        if dot and len(frac) <= 6 and whole.isdigit() and frac.isdigit():
            micros = int(whole) * MICROS_PER_USD + int(frac.ljust(6, "0"))
            if micros <= MAX_MICROS:
                return micros
    if isinstance(usd, float) and not math.isfinite(usd):
        raise ValueError(f"not a finite amount: {usd!r}")
    value = Decimal(str(usd)) * MICROS_PER_USD
    if not 0 <= value <= MAX_MICROS:
        raise ValueError(f"amounts must be between 0 and {MAX_MICROS / MICROS_PER_USD:.0f} USD, got {usd!r}")
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def micros_to_usd(micros: int) -> float:
    """Micro-dollars → USD rounded to 6 decimals (for display only)."""
    return round(micros / MICROS_PER_USD, 6)


def call_cost_micros(prompt_tokens: int, completion_tokens: int, *, input_per_1m: float,
                     output_per_1m: float) -> int:
    """Exact cost of a call at list prices: USD per 1M tokens is micro-dollars per token."""
    total = prompt_tokens * Decimal(str(input_per_1m)) + completion_tokens * Decimal(str(output_per_1m))
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def resolve_timezone(name: str | None) -> tzinfo:
    """``None``/``"UTC"`` → UTC, else the IANA zone; ``ValueError`` for an unknown name."""
    if name is None or name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r}") from exc


@dataclass(frozen=True, slots=True)
class Period:
    name: str  # "daily" | "monthly"
    key: str  # "daily:2026-11-26" | "monthly:2026-11" (local calendar)
    start: datetime  # local, aware
    end: datetime
    start_ms: int = field(init=False)
    end_ms: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_ms", _ms(self.start))
        object.__setattr__(self, "end_ms", _ms(self.end))


def periods_at(now: datetime, zone: tzinfo) -> tuple[Period, Period]:
    """The day and the month containing ``now`` in ``zone``, as [start, end) instants."""
    local = _aware(now).astimezone(zone)
    day = local.date()
    tomorrow = day + timedelta(days=1)
    first = day.replace(day=1)
    next_first = (first + timedelta(days=32)).replace(day=1)

    def midnight(d: date) -> datetime:
        return datetime(d.year, d.month, d.day, tzinfo=zone)

    return (Period("daily", f"daily:{day.isoformat()}", midnight(day), midnight(tomorrow)),
            Period("monthly", f"monthly:{first.strftime('%Y-%m')}", midnight(first), midnight(next_first)))


class _Alert(NamedTuple):
    period: Period
    kind: str  # "threshold" | "limit"
    level: float  # the fraction of the limit it announces
    spent: int
    limit: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """An admitted worst case, held until settled or released."""

    id: int
    request_id: str
    provider: str
    model: str
    amount_micros: int
    over: bool  # admitted past a limit because blockOnLimit is off

    @property
    def amount_usd(self) -> float:
        return micros_to_usd(self.amount_micros)


class BudgetManager:
    """Budget policy over a :class:`Ledger`; ``config`` is read afresh on every call."""

    def __init__(self, ledger: Ledger, config: Callable[[], BudgetConfig], *,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 timezone: str | None = None, on_alert: AlertCallback | None = None) -> None:
        self._ledger = ledger
        self._config = config
        self._now = now
        self._zone_name = timezone or "UTC"
        self._zone = resolve_timezone(timezone)
        self._on_alert = on_alert
        self._open: dict[int, Reservation] = {}
        #: Ids of free in-memory reservations count down from -1 (database ids are > 0).
        self._free_ids = 0
        self._alerted: set[tuple[str, str]] = set()
        self._background: set[asyncio.Future[Any]] = set()
        self._retrying: asyncio.Task[None] | None = None
        #: The day and month of the last reading (see :meth:`_periods_at`).
        self._periods: tuple[Period, Period] | None = None

    def set_timezone(self, name: str | None) -> None:
        """Change the zone of day/month boundaries (``ValueError`` for an unknown one)."""
        self._zone = resolve_timezone(name)
        self._zone_name = name or "UTC"
        self._periods = None

    @property
    def open_reservations(self) -> int:
        return len(self._open)

    async def reserve(self, *, request_id: str, provider: str, model: str, amount_usd: float) -> Reservation:
        """Hold ``amount_usd`` (the call's worst case) or raise ``BudgetExceededError``."""
        amount = usd_to_micros(amount_usd)
        if amount == 0:
            # A free call (local model) cannot push spending anywhere: hold it in memory
            # only, and write just its usage row at settle (one commit instead of two).
            self._free_ids -= 1
            free = Reservation(self._free_ids, request_id, provider, model, 0, False)
            self._open[free.id] = free
            return free
        cfg = self._config()
        now = self._now_utc()
        limited = self._limited(now, cfg)
        caps = [Cap(p.start_ms, p.end_ms, limit) for p, limit in limited]
        job = self._ledger.reserve_soon(
            ts_ms=_ms(now), request_id=request_id, provider=provider, model=model,
            amount_micros=amount, caps=caps, block=cfg.block_on_limit)
        self._background.add(job)
        job.add_done_callback(self._background.discard)
        try:
            result = await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(self._release_orphan)  # admitted for nobody: give it back
            raise
        except LedgerWriteError as exc:
            # Nothing may go upstream that the ledger cannot answer for.
            log.error("budget_reservation_not_written", request_id=request_id, provider=provider,
                      amount_micros=amount, reason=exc.reason)
            raise StorageError(f"the usage ledger cannot be written ({exc.reason}); the request was not sent",
                               path=str(exc.path), reason=exc.reason, provider=provider,
                               model_id=model) from exc
        if result.reservation_id is None:
            worst = [f"{p.name} limit ${micros_to_usd(c.limit_micros)}: spent ${micros_to_usd(s)}"
                     f" + reserved ${micros_to_usd(result.reserved_micros)}"
                     for (p, _), c, s in zip(limited, caps, result.spent_micros, strict=True)
                     if amount > 0 and s + result.reserved_micros + amount > c.limit_micros]
            log.info("budget_blocked", request_id=request_id, provider=provider, model=model,
                     amount_micros=amount, reason="; ".join(worst))
            raise BudgetExceededError(
                f"budget exceeded: this request may cost up to ${micros_to_usd(amount)} and the "
                + "; ".join(worst) + " leave no room for it",
                provider=provider, model_id=model, extra={"usage": await self.usage()})
        reservation = Reservation(result.reservation_id, request_id, provider, model, amount, result.over)
        self._open[reservation.id] = reservation
        if result.over:  # nothing awaited past admission: a cancel here cannot strand it
            log.warning("budget_over_limit_admitted", request_id=request_id, amount_micros=amount)
            self._spawn(self._check_alerts())
        return reservation

    async def settle(self, reservation: Reservation, *, cost_usd: float, prompt_tokens: int,
                     completion_tokens: int, outcome: str = "ok", estimated: bool = False) -> None:
        """Replace the reservation by what the call really cost (one transaction).

        ``outcome``: ok | cancelled | failed | partial; ``estimated`` when the tokens were
        counted locally (a stream cut before the provider's usage arrived). Completes even
        if the caller is cancelled meanwhile."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError("token counts must be >= 0")
        cost = usd_to_micros(cost_usd)
        self._claim(reservation)
        now = self._now_utc()
        record = UsageRecord(ts_ms=_ms(now), request_id=reservation.request_id,
                             provider=reservation.provider, model=reservation.model,
                             prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                             cost_micros=cost, outcome=outcome, estimated=estimated)
        # A paid settle reads the capped periods' spend on the same visit to the ledger's
        # thread, right after its commit: the alert check needs no visit of its own.
        limited = self._limited(now) if cost > 0 else []
        try:
            job = self._ledger.settle_soon(reservation.id if reservation.id > 0 else None, record,
                                           read_spends=[(p.start_ms, p.end_ms) for p, _ in limited])
        except BaseException:
            self._open[reservation.id] = reservation  # nothing queued: still held
            raise
        self._background.add(job)
        job.add_done_callback(lambda done: self._settled(done, reservation, record, limited, now))
        # Shielded: a caller cancelled meanwhile does not stop the write or what follows it.
        await asyncio.shield(job)

    async def release(self, reservation: Reservation) -> None:
        """Drop a reservation for a call that used nothing (failed before any token)."""
        self._claim(reservation)
        await asyncio.shield(self._spawn(self._release(reservation)))

    async def usage(self) -> dict[str, Any]:
        """The ``model:usage`` result (camelCase, JSON-ready)."""
        cfg = self._config()
        day, month = self._periods_at(self._now_utc())
        _, reserved = await self._ledger.reserved()
        sent = await self._ledger.alerts((day.key, month.key))
        out: dict[str, Any] = {"timezone": self._zone_name}
        spends = await self._ledger.spends([(day.start_ms, day.end_ms), (month.start_ms, month.end_ms)])
        for period, limit_usd, spent in ((day, cfg.daily_limit, spends[0]), (month, cfg.monthly_limit, spends[1])):
            limit = None if limit_usd is None else _limit_micros(limit_usd)
            out[period.name] = {
                "periodStart": period.start.isoformat(),
                "periodEnd": period.end.isoformat(),
                "spentUsd": micros_to_usd(spent),
                "reservedUsd": micros_to_usd(reserved),
                "limitUsd": None if limit is None else micros_to_usd(limit),
                "remainingUsd": None if limit is None else micros_to_usd(max(0, limit - spent - reserved)),
                "over": limit is not None and spent + reserved > limit,
                "alertSent": any(key == period.key for key, _ in sent),
            }
        by_provider: dict[str, dict[str, Any]] = {}
        by_model: dict[str, dict[str, Any]] = {}
        for row in await self._ledger.breakdown(month.start_ms, month.end_ms):
            totals = by_provider.setdefault(row.provider, {"micros": 0, "requests": 0, "promptTokens": 0,
                                                           "completionTokens": 0})
            for name, value in (("micros", row.cost_micros), ("requests", row.requests),
                                ("promptTokens", row.prompt_tokens), ("completionTokens", row.completion_tokens)):
                totals[name] += value
            by_model[f"{row.provider}/{row.model}"] = _entry(row.cost_micros, row.requests, row.prompt_tokens,
                                                             row.completion_tokens)
        out["byProvider"] = {name: _entry(t["micros"], t["requests"], t["promptTokens"], t["completionTokens"])
                             for name, t in by_provider.items()}
        out["byModel"] = by_model
        out["blockOnLimit"] = cfg.block_on_limit
        out["alertThreshold"] = cfg.alert_threshold
        return out

    async def drain(self) -> None:
        """Wait for settles, releases and alerts still running in the background."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # -- internals ---------------------------------------------------------------------

    def _now_utc(self) -> datetime:
        return _aware(self._now()).astimezone(UTC)

    def _periods_at(self, now: datetime) -> tuple[Period, Period]:
        """:func:`periods_at` in the budget's zone, computed again only when ``now`` is
        outside the day of the last answer (the month holds the day, so both are right)."""
        last = self._periods
        if last is None or not last[0].start <= now < last[0].end:
            last = self._periods = periods_at(now, self._zone)
        return last

    def _claim(self, reservation: Reservation) -> None:
        if self._open.pop(reservation.id, None) is None:
            raise ValueError(f"reservation {reservation.id} was already settled or released")

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[None]:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("budget_ledger_write_failed", error=repr(exc))

    def _settled(self, job: asyncio.Future[Settled], reservation: Reservation, record: UsageRecord,
                 limited: list[tuple[Period, int]], now: datetime) -> None:
        """After a settle's commit (on the event loop, whether or not its caller still waits)."""
        self._background.discard(job)
        if job.cancelled() or job.exception() is not None:
            self._open[reservation.id] = reservation  # nothing written: still held
            if not job.cancelled():
                log.error("budget_ledger_write_failed", error=repr(job.exception()))
            return
        self._retry_deferred()
        if record.cost_micros > reservation.amount_micros:
            log.warning("budget_settled_over_reservation", request_id=record.request_id,
                        reserved_micros=reservation.amount_micros, cost_micros=record.cost_micros)
        spends = job.result().spends
        if limited and spends is None:
            self._spawn(self._check_alerts())  # the spends could not be read with the settle
        elif limited and spends is not None:
            due = self._due(limited, spends)
            if due:
                self._spawn(self._announce(due, now))

    async def _release(self, reservation: Reservation) -> None:
        if reservation.id < 0:
            return  # a free reservation never reached the database
        try:
            await self._ledger.release(reservation.id)
        except BaseException:
            self._open[reservation.id] = reservation
            raise
        self._retry_deferred()

    def _retry_deferred(self) -> None:
        """While the ledger holds deferred records, keep trying to write them (they are
        also written by the next write that succeeds, and at the next start)."""
        if self._ledger.pending and (self._retrying is None or self._retrying.done()):
            self._retrying = asyncio.get_running_loop().create_task(self._retry_loop())

    async def _retry_loop(self) -> None:
        delay = RETRY_FIRST_S
        try:
            while await self._ledger.flush():
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        except RuntimeError:
            return  # the ledger closed: what is left is in the journal or charged at next start

    def _release_orphan(self, job: asyncio.Future[Any]) -> None:
        if job.cancelled() or job.exception() is not None:
            return
        reservation_id = job.result().reservation_id
        if reservation_id is not None:
            self._spawn(self._ledger.release(reservation_id))

    def _limited(self, now: datetime, cfg: BudgetConfig | None = None) -> list[tuple[Period, int]]:
        """The day and month that have a limit, with the limit in micro-dollars."""
        cfg = cfg or self._config()
        return [(period, _limit_micros(limit_usd)) for period, limit_usd
                in zip(self._periods_at(now), (cfg.daily_limit, cfg.monthly_limit), strict=True)
                if limit_usd is not None]

    def _due(self, limited: list[tuple[Period, int]], spends: Sequence[int]) -> list[_Alert]:
        """The alerts the spends reach that were not sent yet (as far as this process knows:
        the ledger's mark decides, across processes)."""
        level = self._config().alert_threshold
        threshold = Decimal(str(level))
        due: list[_Alert] = []
        for (period, limit), spent in zip(limited, spends, strict=True):
            if spent <= 0:
                continue
            for kind, reached, at in (("threshold", spent >= threshold * limit, level), ("limit", spent >= limit, 1.0)):
                if reached and (period.key, kind) not in self._alerted:
                    due.append(_Alert(period, kind, at, spent, limit))
        return due

    async def _check_alerts(self) -> None:
        """Read the spends (one visit to the ledger's thread) and announce what they reach."""
        now = self._now_utc()
        limited = self._limited(now)
        if limited:
            spends = await self._ledger.spends([(period.start_ms, period.end_ms) for period, _ in limited])
            await self._announce(self._due(limited, spends), now)

    async def _announce(self, due: list[_Alert], now: datetime) -> None:
        """Mark each alert in the ledger; the process whose mark was first sends it."""
        for alert in due:
            key = (alert.period.key, alert.kind)
            if key in self._alerted:  # another settle's announcement got there first
                continue
            first = await self._ledger.mark_alert(alert.period.key, alert.kind, _ms(now))
            if len(self._alerted) > 256:
                self._alerted.clear()
            self._alerted.add(key)
            if first:
                await self._emit(alert.period, alert.kind, {
                    "period": alert.period.name, "spentUsd": micros_to_usd(alert.spent),
                    "limitUsd": micros_to_usd(alert.limit), "threshold": alert.level})

    async def _emit(self, period: Period, kind: str, payload: dict[str, Any]) -> None:
        log.warning("budget_alert", period_key=period.key, kind=kind, **payload)
        if self._on_alert is None:
            return
        try:
            await self._on_alert(payload)
        except Exception:
            log.exception("budget_alert_callback_failed", period_key=period.key, kind=kind)


def _entry(micros: int, requests: int, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"spentUsd": micros_to_usd(micros), "requests": requests, "promptTokens": prompt_tokens,
            "completionTokens": completion_tokens}


@functools.lru_cache(maxsize=64)
def _limit_micros(limit_usd: float) -> int:
    return MAX_MICROS if limit_usd >= MAX_MICROS // MICROS_PER_USD else usd_to_micros(limit_usd)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def _ms(moment: datetime) -> int:
    return (_aware(moment) - _EPOCH) // _ONE_MS
