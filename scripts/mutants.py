"""Break each promise the README makes, one at a time, and check that a test notices.

Every mutant is one exact search → replace in one source file (the search text must
occur exactly once, or the run fails: an anchor that moved must be updated, never
skipped). For each mutant the repository's files (tracked and untracked, not ignored,
as they are in the working tree) are copied to a scratch directory, the mutant applied,
and the tests named for it run there with this repository's ``.venv`` Python, importing
the copy's ``sidecar`` (checked). A mutant is *killed* when those tests fail, and
*survives* when they pass: then the promise is unguarded. Before any mutant, the same
tests run once on an unchanged copy, where they must pass.

    .venv/bin/python scripts/mutants.py            # all, two at a time
    .venv/bin/python scripts/mutants.py --list
    .venv/bin/python scripts/mutants.py -m atomic-config -m ledger-fsync-settle --keep
    .venv/bin/python scripts/mutants.py --commit HEAD   # the last commit, not the work in progress

Exit status: 0 when every mutant was killed, 1 otherwise (survived, failed to apply, or
its tests could not run).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
#: Seconds one mutant's tests may take before the run counts as broken.
MUTANT_TIMEOUT_S = 300
#: Environment that would make the copy's tests run something else than the copy's source.
_DROP_ENV = ("SIDECAR_CMD", "SIDECAR_BIN", "PYTHONPATH", "PYTEST_ADDOPTS")


@dataclass(frozen=True)
class Mutant:
    name: str
    promise: str
    path: str
    search: str
    replace: str
    tests: tuple[str, ...]  # pytest node ids or test files (no options: the baseline runs them all at once)


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "atomic-config", "config.json is written atomically (temp file, fsync, rename)",
        "sidecar/core/config.py",
        'fd, tmp = tempfile.mkstemp(prefix=CONFIG_FILE + ".tmp-", dir=self.data_dir)',
        "fd, tmp = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), str(self.path)",
        ("tests/hardening/test_atomic_config.py",),
    ),
    Mutant(
        "config-validated-before-write", "a bad model:set-config patch changes nothing",
        "sidecar/core/config.py",
        "        candidate = merge_patch(disk.stored, patch)\n        return candidate, self._validate(candidate)\n",
        "        candidate = merge_patch(disk.stored, patch)\n        return candidate, self.config\n",
        ("tests/stdio/test_config.py::test_bad_patches_change_nothing",),
    ),
    Mutant(
        "ledger-fsync-settle", "a priced call's usage row is fsynced before its answer is sent",
        "sidecar/store/ledger.py",
        "rec.cost_micros > 0 or reservation_id is not None)",  # the settle's durable flag
        "False)",
        ("tests/budget/test_durability.py",),
    ),
    Mutant(
        "ledger-fsync-pragma", "commits that move money use synchronous=FULL",
        "sidecar/store/ledger.py",
        'conn.execute("PRAGMA synchronous=FULL")',
        'conn.execute("PRAGMA synchronous=NORMAL")',
        ("tests/budget/test_durability.py",),
    ),
    Mutant(
        "budget-cap", "a call that does not fit under the limit is refused (blockOnLimit)",
        "sidecar/store/ledger.py",
        "        if over and op.block:\n",
        "        if over and op.block and False:\n",
        ("tests/stdio/test_spending.py::test_a_burst_never_spends_past_the_daily_limit",),
    ),
    Mutant(
        "reservations-counted", "open reservations count against the cap (no overshoot in a burst)",
        "sidecar/store/ledger.py",
        "any(s + reserved + amount > cap.limit_micros",
        "any(s + amount > cap.limit_micros",
        ("tests/stdio/test_spending.py::test_a_burst_never_spends_past_the_daily_limit",),
    ),
    Mutant(
        "reservation-before-call", "each attempt reserves its worst case before it is sent",
        "sidecar/core/routing/billing.py",
        "amount_usd=run.decision.worst_case_cost(candidate))",
        "amount_usd=0.0)",
        ("tests/stdio/test_spending.py::test_a_burst_never_spends_past_the_daily_limit",),
    ),
    Mutant(
        "key-redaction", "every key in use is scrubbed from stdout and stderr",
        "sidecar/secrets.py",
        "    def scrub_bytes(self, data: bytes) -> bytes:\n",
        "    def scrub_bytes(self, data: bytes) -> bytes:\n        return data\n",
        ("tests/test_secrets.py::test_bytes_scrubbing_covers_json_escaped_forms",),
    ),
    Mutant(
        "key-preview", "model:get-config shows keys as sk-…abcd previews",
        "sidecar/secrets.py",
        '    return f"{key[:3]}{_ELLIPSIS}{key[-4:]}"',
        "    return key",
        ("tests/stdio/test_config.py::test_environment_keys_show_as_previews_only",),
    ),
    Mutant(
        "seq-numbering", "stream chunks are numbered 0, 1, 2, ... with no gap, however long",
        "sidecar/channels/generate.py",
        "            self.sent.append(content)\n        self.seq += 1\n",
        "            self.sent.append(content)\n        self.seq += 1 if self.seq != 200 else 2\n",
        ("tests/hardening/test_promises.py::test_a_long_stream_arrives_whole_and_numbered",),
    ),
    Mutant(
        "line-separators", "U+2028/U+2029 are escaped on stdout (one message per line for any reader)",
        "sidecar/transport/stdio.py",
        '    return _escape_line_separators(data) + b"\\n"',
        '    return data + b"\\n"',
        ("tests/stdio/test_generate.py::test_stream_each_provider",),
    ),
    Mutant(
        "cancel-closes-upstream", "a cancelled or timed-out call closes its upstream request",
        "sidecar/core/routing/attempt.py",
        "return await provider.generate(preq)",
        "return await asyncio.shield(provider.generate(preq))",
        ("tests/hardening/test_promises.py::test_cancelling_a_generate_closes_the_upstream_request",),
    ),
    Mutant(
        "host-cancel", "$/cancelRequest cancels the request (answered RequestCancelled)",
        "sidecar/transport/dispatcher.py",
        "        entry.task.cancel()\n",
        "        pass\n",
        ("tests/stdio/test_generate.py::test_cancel_mid_stream_closes_upstream",),
    ),
    Mutant(
        "fallback-before-first-chunk", "streams fall back only before the first chunk",
        "sidecar/core/routing/retry.py",
        "if not run.decision.fallback_mid_stream:",
        "if False:",
        ("tests/stdio/test_generate.py::test_cut_stream_after_first_chunk_fails_with_partial_content",),
    ),
    Mutant(
        "structured-validation", "a response that breaks the requested JSON Schema is not returned as valid",
        "sidecar/structured/validate.py",
        "            for e in validator.iter_errors(instance)\n",
        "            for e in validator.iter_errors(instance) if False\n",
        ("tests/stdio/test_structured.py::test_invalid_then_valid_succeeds_with_feedback_in_the_second_request",
         "tests/stdio/test_structured.py::test_formats_are_really_checked"),
    ),
    Mutant(
        "shutdown-cancels-in-flight", "on shutdown every request in flight is answered, within 2 s",
        "sidecar/transport/dispatcher.py",
        "            self.cancel(request_id, reason=reason)\n            tasks.append(entry.task)\n",
        "            tasks.append(entry.task)\n",
        ("tests/stdio/test_generate.py::test_shutdown_answers_in_flight_requests_cancelled",),
    ),
    Mutant(
        "retry-after", "a retry never comes sooner than the provider's Retry-After",
        "sidecar/core/ratelimit.py",
        "* (0.75 + 0.25 * rand), retry_after_ms or 0)",
        "* (0.75 + 0.25 * rand), 0)",
        ("tests/ratelimit/test_limiter.py::test_retry_delay_grows_is_capped_and_honours_retry_after",),
    ),
    Mutant(
        "one-answer-per-id", "a message reusing an in-flight id is never answered under that id",
        "sidecar/transport/dispatcher.py",
        "        if reply_id is not None and reply_id in self.inflight:\n",
        "        if False:\n",
        ("tests/stdio/test_generate.py::test_duplicate_in_flight_id_is_refused_without_a_second_answer",),
    ),
    Mutant(
        "settle-before-answer", "the answer is only sent once the call's usage row is committed",
        "sidecar/core/routing/billing.py",
        "        await self.budget.settle(\n"
        "            reservation, cost_usd=attempt.cost_usd, prompt_tokens=usage.prompt_tokens,\n"
        "            completion_tokens=usage.completion_tokens, outcome=\"ok\", estimated=completion.usage is None)\n",
        "        asyncio.ensure_future(self.budget.settle(\n"
        "            reservation, cost_usd=attempt.cost_usd, prompt_tokens=usage.prompt_tokens,\n"
        "            completion_tokens=usage.completion_tokens, outcome=\"ok\", estimated=completion.usage is None))\n",
        ("tests/budget/test_durability.py",),
    ),
    Mutant(
        "log-redaction", "keys (and anything shaped like one) are scrubbed from log lines",
        "sidecar/logs.py",
        "scrubbed: dict[str, Any] = redactor.scrub(dict(event), shapes=True)",
        "scrubbed: dict[str, Any] = dict(event)",
        ("tests/test_secrets.py::test_log_processor_scrubs_any_field_and_key_shaped_strings",
         "tests/stdio/test_config.py::test_keys_never_leave_in_logs_at_debug_level"),
    ),
    Mutant(
        "oversized-line", "a line over --max-message-bytes is discarded and answered, never buffered",
        "sidecar/transport/stdio.py",
        # The framer both readers cut lines with (transport.stdio._Framer).
        "        elif len(self._buffer) + size > self._max:\n",
        "        elif False:\n",
        ("tests/stdio/test_framing.py::test_oversized_line_is_discarded_and_answered",),
    ),
    Mutant(
        "cooldown-uncapped", "a long outage never turns a provider failure into an internal error",
        "sidecar/core/stats.py",
        "            doublings = min(stats.consecutive_failures - 1, _MAX_DOUBLINGS)\n",
        "            doublings = stats.consecutive_failures - 1\n",
        ("tests/core/test_stats_window.py::test_a_long_outage_keeps_the_cool_down_at_its_cap",),
    ),
    Mutant(
        "deny-remote-direct", "under MODEL_SIDECAR_DENY_REMOTE no provider call leaves the machine, on the direct path too",
        "sidecar/providers/http.py",
        "            reason = client._guard(text)\n",
        "            reason = None\n",
        ("tests/providers/test_lean_client.py::test_a_direct_call_refuses_what_httpx_refuses_before_sending",),
    ),
    Mutant(
        "httpx-fallback-ungated", "on httpx's own transport, requests over the connection limit wait outside httpcore's pool",
        "sidecar/providers/http.py",
        "        await self._slots.take(request, request.extensions.get(\"timeout\", {}).get(\"pool\"))\n",
        "        pass\n",
        ("tests/providers/test_httpx_gate.py::test_no_more_requests_than_the_limit_reach_httpcore_and_all_complete",),
    ),
    Mutant(
        "shutdown-cuts-a-line", "the exit at shutdown never cuts a line the writer has begun",
        "sidecar/transport/stdio.py",
        "        while self.writing and not self._task.done() and not self.stalled() and time.monotonic() < self._end_by:\n",
        "        while False:\n",
        ("tests/transport/test_writer_shutdown.py::test_a_line_begun_before_the_deadline_is_finished_before_drain_returns",),
    ),
    Mutant(
        "shutdown-begins-late", "at shutdown no line begins that could not be finished before the exit",
        "sidecar/transport/stdio.py",
        "                if self._begin_by is not None:\n",
        "                if False:\n",
        ("tests/transport/test_writer_shutdown.py::test_a_line_that_cannot_end_in_time_is_not_begun",
         "tests/transport/test_writer_shutdown.py::test_no_line_begins_once_the_time_to_begin_is_over"),
    ),
    Mutant(
        "no-retry-of-bad-requests", "bad keys and missing models are not retried",
        "sidecar/core/routing/retry.py",
        "if not exc.may_retry_same or retry == max_retries or candidate.provider in run.failed_wide:",
        "if retry == max_retries or candidate.provider in run.failed_wide:",
        ("tests/stdio/test_generate.py::test_single_provider_failure_keeps_its_type",),
    ),
    Mutant(
        "retry-after-pauses-all", "a provider's 429 with Retry-After pauses every call to it",
        "sidecar/core/routing/admission.py",
        "limits.pause_for(candidate.provider, candidate.model, exc.retry_after_ms, reason=exc.message)",
        "pass",
        ("tests/stdio/test_spending.py::test_retry_after_pauses_every_concurrent_call",),
    ),
    Mutant(
        "local-only", "localOnly never contacts a remote provider",
        "sidecar/core/selector.py",
        "        if local_only and not candidate.local:\n",
        "        if False:\n",
        ("tests/stdio/test_generate.py::test_local_only_never_contacts_remote_providers",
         "tests/core/test_selector.py::test_hard_filters_max_cost_and_local_only"),
    ),
    Mutant(
        "max-cost", "models over maxCostUsd are excluded",
        "sidecar/core/selector.py",
        "        elif max_cost_usd is not None and cost > max_cost_usd:\n",
        "        elif False:\n",
        ("tests/core/test_selector.py::test_hard_filters_max_cost_and_local_only",
         "tests/stdio/test_core_fixes.py::test_a_loopback_openai_entry_bills_the_list_price"),
    ),
    Mutant(
        "alert-once-per-period", "model:budget-alert fires once per period and kind, restarts included",
        "sidecar/core/budget.py",
        "            if first:\n                await self._emit(",
        "            if True:\n                await self._emit(",
        ("tests/budget/test_budget.py::test_alerts_are_not_repeated_after_reopening",),
    ),
    Mutant(
        "duplicate-keys", "a line with duplicate keys is refused, never resolved to the last one",
        "sidecar/transport/decode.py",
        "    if bound <= members:\n",
        "    if True:\n",
        ("tests/hardening/test_transport_attack.py::test_duplicate_keys_inside_a_config_patch_change_nothing",),
    ),
    Mutant(
        "deep-params", "params nested deeper than the limit are InvalidParams, not a handler's recursion",
        "sidecar/transport/dispatcher.py",
        '    if deep is not None and deep[:1] == ("params",):\n',
        "    if False:\n",
        ("tests/hardening/test_transport_attack.py::test_a_config_nested_300_deep_is_invalid_params",),
    ),
    Mutant(
        "answer-size-bound", "a provider's answer past maxResponseBytes is a ModelError, not unbounded memory",
        "sidecar/providers/guard.py",
        "        if self.received_bytes > self._max_bytes:\n",
        "        if False:\n",
        ("tests/hardening/test_hostile_providers.py",),
    ),
    Mutant(
        "journal-replayed", "a settle journalled by a killed sidecar is charged at its real cost at the next start",
        "sidecar/store/ledger.py",
        "                for entry in filter(None, map(_Deferred.from_line, read_journal(directory, token))):\n"
        "                    self._apply(db, entry)\n",
        "                for entry in ():\n"
        "                    self._apply(db, entry)\n",
        ("tests/hardening/test_ledger_attack.py::test_a_journal_left_by_a_killed_sidecar_is_settled_at_the_next_start",),
    ),
    Mutant(
        "dead-owner-charged", "a dead process's open reservation is charged at its amount, not deleted",
        "sidecar/store/ledger.py",
        "                           (ts_ms, request_id, provider, model, amount, ABANDONED, rid))\n",
        "                           (ts_ms, request_id, provider, model, 0, ABANDONED, rid))\n",
        ("tests/hardening/test_ledger_attack.py::test_a_dead_owners_reservation_is_charged_at_its_amount",),
    ),
    Mutant(
        "money-follows-the-model", "a cloud model is billed at its list price whichever address serves it",
        "sidecar/core/registry.py",
        "        free = KINDS[settings.kind].free and not priced_by_user\n",
        "        free = settings.local and not priced_by_user\n",
        ("tests/stdio/test_core_fixes.py::test_a_loopback_openai_entry_bills_the_list_price",),
    ),
    Mutant(
        "one-token-estimate", "a CJK prompt counts a token per character: the server is asked for a window that holds it",
        "sidecar/core/tokens.py",
        '    return math.ceil(len(text.encode("utf-8", "replace")) / 3)\n',
        "    return len(text) // 3\n",
        ("tests/stdio/test_core_fixes.py::test_a_cjk_prompt_gets_a_window_that_holds_it",),
    ),
    Mutant(
        "hostile-headers", "rate-limit and retry headers a server makes up never crash a request",
        "sidecar/providers/headers.py",
        "    if not math.isfinite(value) or value < 0:\n",
        "    if value < 0:\n",
        ("tests/providers/test_errors.py::test_hostile_rate_limit_headers_are_ignored_not_fatal",),
    ),
    Mutant(
        "tool-call-unvalidated", "a tool call in a success always validates against its tool's parameters",
        "sidecar/structured/tools.py",
        "errors = validation_errors(compile_schema(schema), value)", "errors: list[dict[str, str]] = []",
        ("tests/structured/test_tool_calls.py",),
    ),
    Mutant(
        "image-type-from-name", "an image's media type comes from its bytes, not its file name",
        "sidecar/core/agents.py",
        "    facts = sniff_image(data)\n",
        "    facts = ImageFacts(\"image/jpeg\", 1, 1) if (part.path or \"\").endswith(\".jpg\") else sniff_image(data)\n",
        ("tests/core/test_agents.py",),
    ),
    Mutant(
        "capability-ignored", "models known to lack tools or vision are no candidates",
        "sidecar/core/selector.py",
        "        elif missing:\n", "        elif missing and False:\n",
        ("tests/stdio/test_agents_checks.py",),
    ),
    Mutant(
        "proxy-loopback-direct", "a loopback provider is reached directly, never through a proxy",
        "sidecar/providers/network.py",
        "    if is_loopback_url(url):\n        return None\n    if entry is not None:",
        "    if entry is not None:",
        ("tests/stdio/test_network_proxy.py::test_loopback_providers_never_use_the_proxy",),
    ),
    Mutant(
        "key-left-in-file", "a key set with model:set-config goes to the credential store, not config.json",
        "sidecar/store/keys.py",
        "                del entry[\"apiKey\"]\n", "",
        ("tests/stdio/test_keychain.py::test_set_config_keeps_the_key_in_the_keychain_and_a_restart_reads_it",),
    ),
    Mutant(
        "loaded-window-ignored", "a prompt longer than the window a local server loaded is refused before sending",
        "sidecar/core/local_fit.py",
        "    if window.limit is not None and prompt_tokens > window.limit:",
        "    if False:",
        ("tests/stdio/test_local_windows.py::test_llamacpp_refuses_a_prompt_longer_than_the_loaded_window",),
    ),
    Mutant(
        "cold-load-timeout", "a local model's first token may take a load; the silence timeout applies after it",
        "sidecar/providers/timeouts.py",
        "        first = max(silence, LOCAL_FIRST_TOKEN_S)", "        first = silence",
        ("tests/stdio/test_local_cold_load.py::test_a_slow_first_token_of_a_local_model_is_a_load_not_a_failure",),
    ),
)


@dataclass
class Outcome:
    mutant: str
    status: str  # killed | survived | not-applied | error
    seconds: float
    detail: str = ""


def repo_files() -> list[str]:
    """Tracked and untracked files of the working tree, without ignored ones."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, check=True, capture_output=True).stdout
    return sorted({name for name in out.decode().split("\0") if name and (REPO / name).is_file()})


def make_copy(source: Iterable[str] | bytes, parent: Path, label: str) -> Path:
    """A scratch copy: the named working-tree files, or a ``git archive`` tar of a commit."""
    root = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=parent))
    if isinstance(source, bytes):
        with tarfile.open(fileobj=io.BytesIO(source)) as tar:
            tar.extractall(root, filter="data")
        return root
    for name in source:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    return root


def apply(mutant: Mutant, root: Path) -> None:
    """Apply the mutant in ``root``; ValueError unless its search text occurs exactly once."""
    path = root / mutant.path
    if not path.is_file():
        raise ValueError(f"{mutant.path} does not exist")
    text = path.read_text()
    count = text.count(mutant.search)
    if count != 1:
        raise ValueError(f"search text found {count} times in {mutant.path}: {mutant.search!r}")
    path.write_text(text.replace(mutant.search, mutant.replace))


def copy_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env["PYTHONPATH"] = str(root)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports_copy(root: Path) -> None:
    """The copy's tests must import the copy's sidecar, not the editable install's."""
    found = subprocess.run([str(PYTHON), "-c", "import sidecar, tests; print(sidecar.__file__); print(tests.__file__)"],
                           cwd=root, env=copy_env(root), check=True, capture_output=True, text=True).stdout.split()
    for path in found:
        if not Path(path).resolve().is_relative_to(root.resolve()):
            raise SystemExit(f"the copy imports {path}, not its own code: mutants would test nothing")


def run_tests(root: Path, tests: Sequence[str], *, stop_early: bool = True) -> tuple[int, str]:
    command = [str(PYTHON), "-m", "pytest", "-q", *(["-x"] if stop_early else []), "-p", "no:cacheprovider",
               *tests]
    try:
        proc = subprocess.run(command, cwd=root, env=copy_env(root), capture_output=True, text=True,
                              timeout=MUTANT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {MUTANT_TIMEOUT_S} s"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, "\n".join(lines[-15:])


def last_line(text: str) -> str:
    return text.splitlines()[-1] if text else ""


def run_mutant(mutant: Mutant, files: list[str] | bytes, scratch: Path, keep: bool) -> Outcome:
    started = time.monotonic()
    root = make_copy(files, scratch, mutant.name)
    try:
        try:
            apply(mutant, root)
        except ValueError as exc:
            return Outcome(mutant.name, "not-applied", time.monotonic() - started, str(exc))
        code, output = run_tests(root, mutant.tests)
        seconds = time.monotonic() - started
        if code == 1:  # tests ran and failed: the mutant was noticed
            return Outcome(mutant.name, "killed", seconds, failed_test(output))
        if code == 0:
            return Outcome(mutant.name, "survived", seconds, last_line(output))
        return Outcome(mutant.name, "error", seconds, f"pytest exit {code}:\n{output}")
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def failed_test(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0]
    return last_line(output)


def baseline(mutants: Sequence[Mutant], files: list[str] | bytes, scratch: Path) -> None:
    """Each mutant's tests pass on the unchanged code, or no kill would mean anything.

    All the node ids at once, in two pytest runs side by side."""
    root = make_copy(files, scratch, "baseline")
    try:
        check_imports_copy(root)
        ids = list(dict.fromkeys(test for m in mutants for test in m.tests))
        halves = [ids[0::2], ids[1::2]]
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda part: run_tests(root, part, stop_early=False), [h for h in halves if h]))
        broken = [output for code, output in results if code != 0]
        for output in broken:
            print(f"baseline FAILED:\n{output}", flush=True)
        if broken:
            raise SystemExit("the mutants' tests fail on the unchanged code; fix that first")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--mutant", action="append", default=[], help="run only these (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run on unchanged code")
    parser.add_argument("--keep", action="store_true", help="keep the mutated copies (printed)")
    parser.add_argument("--commit", help="mutate this commit (git archive) instead of the working tree")
    args = parser.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:30} {m.path:32} {' '.join(m.tests)}\n{'':30} {m.promise}")
        return 0
    unknown = set(args.mutant) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants: {sorted(unknown)}")
    chosen = [m for m in MUTANTS if not args.mutant or m.name in args.mutant]
    files: list[str] | bytes = repo_files()
    if args.commit:
        files = subprocess.run(["git", "archive", "--format=tar", args.commit], cwd=REPO, check=True,
                               capture_output=True).stdout
    scratch = Path(tempfile.mkdtemp(prefix="sidecar-mutants-"))
    started = time.monotonic()
    try:
        if not args.no_baseline:
            baseline(chosen, files, scratch)
            print(f"baseline: every mutant's tests pass on the unchanged code ({time.monotonic() - started:.0f} s)",
                  flush=True)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            outcomes = []
            for outcome in pool.map(lambda m: run_mutant(m, files, scratch, args.keep), chosen):
                print(f"{outcome.status:11} {outcome.seconds:6.1f} s  {outcome.mutant:30} {outcome.detail}",
                      flush=True)
                outcomes.append(outcome)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"copies kept in {scratch}")
    bad = [o for o in outcomes if o.status != "killed"]
    print(f"{len(outcomes) - len(bad)} of {len(outcomes)} mutants killed in {time.monotonic() - started:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
