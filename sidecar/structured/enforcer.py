"""The structured-output enforcer: native parameters, local validation, retry with feedback.

The promise: with a ``responseFormat``, a request either returns content that is valid
(JSON matching the whole schema, or well-formed XML matching the root element and XSD)
with ``parsed`` filled for JSON, or fails with ``StructuredOutputError`` carrying the
validation errors and the last content. Never a silently invalid success.

Each attempt asks the chosen provider for its strongest native mechanism (per candidate,
so a fallback to another provider gets that provider's parameters) plus instructions in
the system prompt; whatever the provider did, the answer is extracted (code fences,
prose around it), repaired only for small syntax faults (then flagged), and validated
locally against the original schema. An invalid answer goes back to the model with the
error list as the next turn, at most ``maxRetries`` times (default 2); every retry is a
routed call of its own, so it is rate-limited, budgeted and listed in the attempts.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace
from typing import Any

import orjson
import structlog

from sidecar.core.planner import Decision
from sidecar.core.registry import ModelProfile
from sidecar.core.router import Outcome, Router, Shape, StreamSink
from sidecar.core.tokens import context_text
from sidecar.errors import AttemptRecord, InvalidParams, StructuredOutputError
from sidecar.providers.base import ProviderRequest
from sidecar.structured.extract import ExtractionFailed, extract_json
from sidecar.structured.grammar_profiles import Dropped
from sidecar.structured.lower import (
    drop_added_nulls,
    feedback,
    instructions,
    native_params,
    openai_strict_schema,
)
from sidecar.structured.tools import CheckedCall, check_calls, tool_feedback
from sidecar.structured.validate import compile_schema, validation_errors
from sidecar.structured.xmlcheck import XmlInvalid, check_xml, compile_xsd
from sidecar.wire.config import FormatTemplate
from sidecar.wire.model import (
    AssistantTurn,
    JsonFormat,
    JsonSchemaFormat,
    ModelRequest,
    NamedToolChoice,
    TemplateFormat,
    UserTurn,
    XmlFormat,
)

__all__ = ["DEFAULT_MAX_RETRIES", "Enforced", "Enforcer", "FormatSpec", "ToolRules"]

DEFAULT_MAX_RETRIES = 2
log = structlog.get_logger("sidecar.structured")
_NAME = re.compile(r"[^a-zA-Z0-9_-]")

AnyFormat = JsonSchemaFormat | JsonFormat | XmlFormat | TemplateFormat


@dataclass(frozen=True, slots=True)
class FormatSpec:
    """A response format resolved: kind, schema (JSON) or XML checks, extra instructions."""

    kind: str  # "json" | "xml"
    schema: dict[str, Any] | None
    name: str
    max_retries: int
    extra_instructions: str | None = None
    root_element: str | None = None
    xsd: str | None = None


@dataclass(slots=True)
class Enforced:
    """A valid answer: the last routed call's outcome, carrying every round's attempts
    and the cost of them all."""

    outcome: Outcome
    parsed: Any
    repaired: bool
    #: The structured-output mechanism (None without a responseFormat).
    mechanism: str | None
    #: The answer's tool calls, all valid (None when the answer is text).
    tool_calls: list[CheckedCall] | None = None


def resolve(fmt: AnyFormat, templates: dict[str, FormatTemplate]) -> FormatSpec:
    """The spec of a ``responseFormat``; an unknown template or bad schema is InvalidParams."""
    if isinstance(fmt, TemplateFormat):
        template = templates.get(fmt.template)
        if template is None:
            raise InvalidParams(f"unknown format template {fmt.template!r}", errors=[
                {"path": "/responseFormat/template", "message": "no such template in config formatTemplates"}])
        retries = fmt.max_retries if fmt.max_retries is not None else template.max_retries
        spec = FormatSpec("json", template.schema_, fmt.template, retries if retries is not None
                          else DEFAULT_MAX_RETRIES, template.instructions)
    elif isinstance(fmt, JsonSchemaFormat):
        spec = FormatSpec("json", fmt.schema_, fmt.name or "response", _retries(fmt.max_retries))
    elif isinstance(fmt, JsonFormat):
        spec = FormatSpec("json", None, "response", _retries(fmt.max_retries))
    else:
        spec = FormatSpec("xml", None, "response", _retries(fmt.max_retries),
                          root_element=fmt.root_element, xsd=fmt.xsd)
    if spec.schema is not None:
        compile_schema(spec.schema)  # raises InvalidParams for an invalid schema
    if spec.xsd is not None:
        compile_xsd(spec.xsd)  # raises InvalidParams for an invalid XSD
    return replace(spec, name=_NAME.sub("_", spec.name)[:64] or "response")


def _retries(value: int | None) -> int:
    return DEFAULT_MAX_RETRIES if value is None else value


@dataclass(frozen=True, slots=True)
class ToolRules:
    """What a tool-call answer must satisfy: an offered tool, valid arguments, and the
    request's ``toolChoice`` and ``parallelToolCalls``. Every request with tools has
    rules, ``toolChoice`` "none" included (``forbidden``: any call is invalid)."""

    schemas: dict[str, dict[str, Any]]
    #: ``required`` or a named tool: an answer without a call is invalid.
    required: bool = False
    #: The one tool a named ``toolChoice`` forces.
    forced: str | None = None
    at_most_one: bool = False
    #: ``toolChoice`` "none": the tools are offered, but no call is accepted.
    forbidden: bool = False

    @classmethod
    def of(cls, request: ModelRequest) -> ToolRules | None:
        """The rules of a request with tools; None without tools."""
        if not request.tools:
            return None
        choice = request.tool_choice
        forced = choice.name if isinstance(choice, NamedToolChoice) else None
        return cls(
            schemas={tool.name: dict(tool.parameters) for tool in request.tools},
            required=choice == "required" or forced is not None, forced=forced, forbidden=choice == "none",
            at_most_one=request.parallel_tool_calls is False,
        )


@dataclass(slots=True)
class _Verdict:
    """One answer judged: ``errors`` empty when it stands."""

    about_tools: bool
    errors: list[dict[str, str]]
    parsed: Any = None
    repaired: bool = False
    truncated: bool = False
    calls: list[CheckedCall] | None = None
    #: The answer called a tool where none may be called.
    forbidden: bool = False


class Enforcer:
    """Runs a request until its answer is valid (its format, its tool calls), or gives up
    with the errors."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def run(self, request: ModelRequest, decision: Decision, spec: FormatSpec | None, *, tag: str,
                  sink: StreamSink | None = None, tools: ToolRules | None = None) -> Enforced:
        mechanism = "instructions"
        attempts: list[AttemptRecord] = []
        cost = 0.0
        current = request
        # Tool retries apply whether or not tools may be called (calls despite toolChoice
        # "none" are invalid too).
        left = {True: _retries(request.max_tool_retries), False: spec.max_retries if spec else 0}
        for attempt in itertools.count():
            mechanisms: list[str] = []
            shape = self._shaper(spec, tools, mechanisms)
            if sink is not None:
                outcome = await self.router.stream(current, decision, sink, tag=tag, shape=shape)
            else:
                outcome = await self.router.generate(current, decision, tag=tag, shape=shape)
            mechanism = mechanisms[-1] if mechanisms else mechanism
            attempts.extend(replace(a, structured_attempt=attempt) for a in outcome.attempts)
            cost += outcome.cost_usd
            verdict = self._judge(spec, tools, outcome)
            if not verdict.errors:
                return Enforced(replace(outcome, attempts=attempts, cost_usd=cost), verdict.parsed, verdict.repaired,
                                mechanism if spec is not None else None, verdict.calls)
            if left[verdict.about_tools] == 0:
                raise self._gave_up(verdict, outcome, attempts, attempt + 1, mechanism)
            left[verdict.about_tools] -= 1
            current = self._with_feedback(current, outcome, verdict, spec.kind if spec else "json")
            if sink is not None:
                await sink("", outcome.completion.model, restart=True)
        raise AssertionError("unreachable")

    def _shaper(self, spec: FormatSpec | None, tools: ToolRules | None, mechanisms: list[str]) -> Shape | None:
        """Per candidate: the format's native parameters and instructions. With tools,
        only OpenAI's ``response_format`` goes along (it does not touch tool calls); the
        others' mechanisms (a forced tool, a grammar) would take the tools away."""
        if spec is None:
            return None

        def shape(candidate: ModelProfile, preq: ProviderRequest) -> ProviderRequest:
            callable_tools = tools is not None and not tools.forbidden
            params, used = ({}, "instructions") if callable_tools and candidate.kind != "openai" \
                else self._native(spec, candidate)
            mechanisms.append(used)
            guide = instructions(spec.schema, spec.kind, root_element=spec.root_element, xsd=spec.xsd)
            system = "\n\n".join(p for p in (preq.system, guide, spec.extra_instructions) if p)
            return replace(preq, system=system, native_format=params or None)

        return shape

    def _judge(self, spec: FormatSpec | None, tools: ToolRules | None, outcome: Outcome) -> _Verdict:
        completion = outcome.completion
        if completion.tool_calls or (tools is not None and tools.required):
            if tools is None or tools.forbidden:  # no tools offered, or toolChoice "none"
                why = "no tool was offered" if tools is None else "no tool may be called now (toolChoice none)"
                return _Verdict(True, [{"path": "/toolCalls", "message": why}], forbidden=True)
            return self._judge_calls(tools, outcome)
        if spec is None:
            return _Verdict(False, [])
        parsed, repaired, errors, truncated = self._check(spec, outcome)
        return _Verdict(False, errors, parsed, repaired, truncated)

    @staticmethod
    def _judge_calls(tools: ToolRules, outcome: Outcome) -> _Verdict:
        calls = outcome.completion.tool_calls
        if not calls:
            return _Verdict(True, [{"path": "/toolCalls", "message": "a tool call was required, the answer had none"}])
        strict = outcome.candidate.kind == "openai"
        check = check_calls(calls, tools.schemas, nullable_optionals=strict, at_most_one=tools.at_most_one)
        if tools.forced is not None:
            check.errors.extend({"path": f"/toolCalls/{i}/name", "message": f"toolChoice requires {tools.forced!r}"}
                                for i, call in enumerate(calls) if call.name != tools.forced)
        return _Verdict(True, check.errors, None, check.repaired, False, None if check.errors else check.calls)

    @staticmethod
    def _gave_up(verdict: _Verdict, outcome: Outcome, attempts: list[AttemptRecord], rounds: int,
                 mechanism: str) -> StructuredOutputError:
        errors = verdict.errors
        completion = outcome.completion
        if verdict.about_tools:
            last = orjson.dumps([{"name": c.name, "arguments": c.arguments} for c in completion.tool_calls]).decode()
            cause, what = "invalid_tool_call", "tool call"
        else:
            last, cause = completion.content, "truncated" if verdict.truncated else "invalid"
            what = "output"
        return StructuredOutputError(
            f"{what} still invalid after {rounds} attempt(s) ({cause}): "
            + "; ".join(f"{e['path'] or '/'}: {e['message']}" for e in errors[:3]),
            attempts=attempts,
            extra={"validationErrors": errors, "lastContent": last, "cause": cause, "mechanism": mechanism},
        )

    @staticmethod
    def _native(spec: FormatSpec, candidate: ModelProfile) -> tuple[dict[str, Any], str]:
        if spec.kind == "xml":
            return {}, "instructions"
        # Ollama and OpenAI-compatible servers take a schema whatever the model; OpenAI's
        # strict mode is tried for every model; Anthropic's JSON output only on models
        # the catalog knows to have it (others get a forced tool).
        supports = candidate.kind != "anthropic" or "json_schema" in candidate.capabilities
        dropped: list[Dropped] = []
        params = native_params(candidate.kind, spec.schema, name=spec.name, model=candidate.model,
                               supports_native=supports, dropped=dropped)
        if dropped:  # still enforced: the answer is validated against the whole schema
            log.info("structured.keywords_not_sent", provider=candidate.provider, model=candidate.model,
                     dropped=[d.to_dict() for d in dropped[:50]], count=len(dropped))
        return params

    @staticmethod
    def _check(spec: FormatSpec, outcome: Outcome) -> tuple[Any, bool, list[dict[str, str]], bool]:
        """(parsed, repaired, errors, truncated) of one answer."""
        content = outcome.completion.content
        if outcome.completion.finish_reason == "length":
            return None, False, [{"path": "", "message": "the answer was cut off at maxTokens (truncated)"}], True
        if spec.kind == "xml":
            try:
                check_xml(content, root_element=spec.root_element, xsd=spec.xsd)
            except XmlInvalid as exc:
                return None, False, exc.errors, False
            return None, False, [], False
        validator = compile_schema(spec.schema) if spec.schema is not None else None
        try:
            # A later JSON span in the text may be the valid one (prose can quote examples).
            extracted = extract_json(content, accept=validator.is_valid if validator is not None else None)
        except ExtractionFailed as exc:
            return None, False, [{"path": "", "message": exc.reason}], exc.truncated
        value = extracted.value
        if spec.schema is None:
            return value, extracted.repaired, [], False
        if outcome.candidate.kind == "openai" and openai_strict_schema(spec.schema) is not None:
            value = drop_added_nulls(value, spec.schema)  # strict mode made optionals nullable
        assert validator is not None
        errors = validation_errors(validator, value)
        return value, extracted.repaired, errors, False

    @staticmethod
    def _with_feedback(request: ModelRequest, outcome: Outcome, verdict: _Verdict, kind: str) -> ModelRequest:
        """The conversation so far plus the model's answer and what was wrong with it."""
        completion = outcome.completion
        turns: list[Any] = list(request.messages or [])
        asked = request.prompt
        if request.context is not None:
            asked = f"Context:\n{context_text(request.context)}\n\n{asked}"
        if asked:
            turns.append(UserTurn(role="user", content=asked))
        if verdict.about_tools:
            calls = completion.tool_calls
            said = completion.content or ("(tool call)" if calls else "(no tool call)")
            prompt = tool_feedback(calls, verdict.errors, missing=not calls, forbidden=verdict.forbidden)
        else:
            said = completion.content or "(empty)"
            prompt = feedback(completion.content, verdict.errors, verdict.truncated, fmt=kind)
        turns.append(AssistantTurn(role="assistant", content=said))
        return request.model_copy(update={"messages": turns, "prompt": prompt, "context": None})
