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

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import structlog

from sidecar.core.planner import Decision
from sidecar.core.registry import ModelProfile
from sidecar.core.router import Outcome, Router, StreamSink
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
from sidecar.structured.validate import compile_schema, validation_errors
from sidecar.structured.xmlcheck import XmlInvalid, check_xml, compile_xsd
from sidecar.wire.config import FormatTemplate
from sidecar.wire.model import ChatTurn, JsonFormat, JsonSchemaFormat, ModelRequest, TemplateFormat, XmlFormat

__all__ = ["DEFAULT_MAX_RETRIES", "Enforced", "Enforcer", "FormatSpec"]

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
    mechanism: str


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


class Enforcer:
    """Runs a request until its answer is valid, or gives up with the errors."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def run(self, request: ModelRequest, decision: Decision, spec: FormatSpec, *, tag: str,
                  sink: StreamSink | None = None,
                  on_partial: Callable[[Any], Awaitable[None]] | None = None) -> Enforced:
        mechanism = "instructions"
        attempts: list[AttemptRecord] = []
        cost = 0.0
        current = request
        last_content = ""
        errors: list[dict[str, str]] = []
        truncated = False
        for attempt in range(1 + spec.max_retries):
            mechanisms: list[str] = []

            def shape(candidate: ModelProfile, preq: ProviderRequest,
                      mechanisms: list[str] = mechanisms) -> ProviderRequest:
                params, used = self._native(spec, candidate)
                mechanisms.append(used)
                guide = instructions(spec.schema, spec.kind, root_element=spec.root_element, xsd=spec.xsd)
                system = "\n\n".join(p for p in (preq.system, guide, spec.extra_instructions) if p)
                return replace(preq, system=system, native_format=params or None)

            if sink is not None:
                outcome = await self.router.stream(current, decision, sink, tag=tag, shape=shape)
            else:
                outcome = await self.router.generate(current, decision, tag=tag, shape=shape)
            mechanism = mechanisms[-1] if mechanisms else mechanism
            attempts.extend(replace(a, structured_attempt=attempt) for a in outcome.attempts)
            cost += outcome.cost_usd
            last_content = outcome.completion.content
            parsed, repaired, errors, truncated = self._check(spec, outcome)
            if not errors:
                return Enforced(replace(outcome, attempts=attempts, cost_usd=cost), parsed, repaired, mechanism)
            if attempt < spec.max_retries:
                current = self._with_feedback(current, last_content, errors, truncated, spec.kind)
                if sink is not None:
                    await sink("", outcome.completion.model, restart=True)
        cause = "truncated" if truncated else "invalid"
        raise StructuredOutputError(
            f"output still invalid after {1 + spec.max_retries} attempt(s) ({cause}): "
            + "; ".join(f"{e['path'] or '/'}: {e['message']}" for e in errors[:3]),
            attempts=attempts,
            extra={"validationErrors": errors, "lastContent": last_content, "cause": cause,
                   "mechanism": mechanism},
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
    def _with_feedback(request: ModelRequest, content: str, errors: list[dict[str, str]],
                       truncated: bool, kind: str) -> ModelRequest:
        """The conversation so far plus the model's answer and what was wrong with it."""
        turns = list(request.messages or [])
        asked = request.prompt
        if request.context is not None:
            asked = f"Context:\n{context_text(request.context)}\n\n{asked}"
        if asked:
            turns.append(ChatTurn(role="user", content=asked))
        turns.append(ChatTurn(role="assistant", content=content or "(empty)"))
        return request.model_copy(update={
            "messages": turns, "prompt": feedback(content, errors, truncated, fmt=kind), "context": None})
