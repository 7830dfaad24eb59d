"""``ModelConfig``: the shape of ``config.json`` and of ``model:get-config``/``set-config``.

Every field has a default, so a missing or partial file still validates; the stored file
holds only what the host set, and defaults are applied on top when it is read.
"""

from __future__ import annotations

import re
import unicodedata
import zoneinfo
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from sidecar.wire.base import ParamsModel, ResultModel
from sidecar.wire.kinds import BUILTIN_PROVIDERS
from sidecar.wire.model import Priority

__all__ = [
    "MAX_BASE_URL_CHARS",
    "RESERVED_HEADERS",
    "BudgetConfig",
    "ConfigIgnored",
    "ConfigStatus",
    "ConfigView",
    "CustomProviderEntry",
    "FormatTemplate",
    "ModelConfig",
    "ModelOverride",
    "ProviderEntry",
    "ProvidersConfig",
    "RateLimitConfig",
    "SelectionDefaults",
    "ServerConfig",
    "check_api_key",
    "check_base_url",
    "check_ca_file",
    "check_proxy_url",
    "proxy_url_problem",
]

#: The embedded local model's default entry (see ``scripts/local_model.py``).
LOCAL_PROVIDER = "local-llm"
LOCAL_PORT = 8080
LOCAL_BASE_URL = f"http://127.0.0.1:{LOCAL_PORT}/v1"
LOCAL_MODEL = "smollm2-135m-instruct"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
#: A header value after trimming: visible ASCII, with single spaces or tabs only inside
#: (RFC 9110 field-value; h11 refuses leading or trailing whitespace and every control).
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?")
#: Longer base URLs are refused: no real endpoint needs one, and httpx refuses URLs over
#: 64 KiB only when a request is built.
MAX_BASE_URL_CHARS = 2048
MAX_HEADER_VALUE_CHARS = 8192
MAX_HEADERS = 64
#: Headers the HTTP layer writes itself (framing, connection management, the target
#: host; RFC 9110 section 7.6.1 and RFC 9112): a configured value would corrupt the
#: request or be refused by the HTTP library before it is sent.
RESERVED_HEADERS = frozenset({
    "connection", "content-length", "content-encoding", "expect", "host", "keep-alive",
    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
})
MAX_PROVIDER_NAME_CHARS = 64
#: Each provider holds a connection pool and is probed by ``model:health``.
MAX_CUSTOM_PROVIDERS = 100
#: Prices, limits and token counts above these are typing errors; the caps keep every
#: computed amount finite and every count within JSON's safe integer range.
MAX_PRICE_PER_1M_USD = 100_000.0
MAX_LIMIT_USD = 1_000_000_000.0
MAX_TOKENS_CAP = 1_000_000_000
MAX_WINDOW_MS = 31 * 86_400_000


def _invisible(char: str) -> bool:
    """Control, format, surrogate, unassigned, separator (incl. U+2028/U+2029) or space."""
    return unicodedata.category(char)[0] in "CZ"


def _describe(text: str, field: str) -> str | None:
    """Why ``text`` may not be sent, naming the position but never the text itself."""
    for index, char in enumerate(text):
        if _invisible(char):
            return f"{field} contains a control or whitespace character (U+{ord(char):04X}) at index {index}"
    return None


def check_base_url(value: str) -> str:
    """``value`` if it is an http(s) URL with a host that httpx can send to.

    Raises:
        ValueError: the reason, without the URL (it may hold a password).
    """
    if len(value) > MAX_BASE_URL_CHARS:
        raise ValueError(f"baseURL is longer than {MAX_BASE_URL_CHARS} characters")
    problem = _describe(value, "baseURL")
    if problem:
        raise ValueError(problem)
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError when the port is out of range or not a number
    except ValueError:
        raise ValueError("baseURL is not a valid URL (port or IPv6 host)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("baseURL must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError("baseURL must not have a query or a fragment (request paths are appended to it)")
    try:
        httpx.URL(value)
    except httpx.InvalidURL:
        raise ValueError("baseURL is not a URL httpx can send to (invalid host name?)") from None
    return value


def proxy_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be used as a proxy (never quoting it: it may hold a password)."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return "the proxy URL is not a valid URL (port or IPv6 host)"
    if parts.scheme not in ("http", "https"):
        return "the proxy URL must start with http:// or https:// (SOCKS proxies are not supported)"
    if not parts.hostname:
        return "the proxy URL has no host"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "the proxy URL must be scheme://[user:password@]host[:port] with nothing after it"
    if _describe(url, "proxy"):
        return "the proxy URL contains a control or whitespace character"
    return None


def check_proxy_url(value: str | None) -> str | None:
    """``value`` trimmed if it is a usable proxy URL; ``""`` (direct) and None pass."""
    if value is None:
        return None
    value = value.strip()
    if value == "":
        return value
    if len(value) > MAX_BASE_URL_CHARS:
        raise ValueError(f"proxy is longer than {MAX_BASE_URL_CHARS} characters")
    problem = proxy_url_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def check_ca_file(value: str | None) -> str | None:
    """An absolute path without NUL (the file itself is read when a client is built)."""
    if value is None:
        return None
    if "\0" in value or not (value.startswith("/") or re.match(r"^(?:[A-Za-z]:[\\/]|\\\\)", value)):
        raise ValueError("caFile must be an absolute path")
    return value


def check_api_key(value: str | None, field: str = "apiKey") -> str | None:
    """The key without surrounding whitespace (a paste often adds a newline)."""
    if value is None:
        return None
    value = value.strip()
    for index, char in enumerate(value):
        if not " " <= char <= "~":
            raise ValueError(f"{field} contains a control or non-ASCII character at index {index} "
                             "(it is sent in an HTTP header)")
    return value


class RateLimitConfig(ParamsModel):
    max_requests: int = Field(default=0, ge=0, le=MAX_TOKENS_CAP, description="Requests per window; 0 = no limit.")
    window_ms: int = Field(default=60_000, ge=1, le=MAX_WINDOW_MS)
    strategy: Literal["linear", "exponential"] = "exponential"
    max_retries: int = Field(default=2, ge=0, le=10)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    max_concurrent: int | None = Field(default=None, ge=1, le=100_000)


class ProviderEntry(ParamsModel):
    base_url: str = Field(alias="baseURL", min_length=1)
    api_key: str | None = None
    #: Set by the sidecar in config.json only: the credential-store item that holds the
    #: key (``sidecar.store.keys``). Never shown to hosts, never taken from them.
    api_key_ref: str | None = Field(default=None, exclude=True, min_length=1, max_length=256)
    default_model: str = Field(min_length=1)
    enabled: bool = True
    models: list[str] | None = None
    headers: dict[str, str] | None = None
    timeout_ms: int | None = Field(default=None, ge=100, le=3_600_000, description=(
        "Not streaming: the whole answer; streaming: the longest silence between chunks (default 120000)."))
    #: Extension: the wait for the first token, which on a local server may include loading the model.
    first_token_timeout_ms: int | None = Field(default=None, ge=100, le=3_600_000, description=(
        "Streaming: the wait for the first chunk; not streaming: added to timeoutMs. Default: 120000 "
        "(or timeoutMs if longer) for local providers, none for remote ones (timeoutMs alone)."))
    #: Extension: load the default model after start-up instead of on the first request.
    preload: bool | None = Field(default=None, description=(
        "Local providers: after start-up, start a managed server, or have Ollama load the default model."))
    #: Extension: Ollama's keep_alive, sent with every request and the preload.
    keep_alive: str | None = Field(default=None, pattern=r"^-?[0-9]+(\.[0-9]+)?(ms|s|m|h)?$", max_length=32,
                                   description=(
        "Ollama: how long the model stays loaded after a request (\"10m\", \"1h\", \"-1\" for ever, "
        "\"0\" to unload at once); default: Ollama's own (5 minutes)."))
    rate_limit: RateLimitConfig | None = None
    #: Extension: limits of single models, applied on top of the provider's ``rateLimit``.
    model_rate_limits: dict[str, RateLimitConfig] | None = None
    #: Extension: corporate networks (docs/protocol.md "Trust and proxies").
    proxy: str | None = Field(default=None, description=(
        "http(s)://[user:password@]host:port for this provider; \"\" = direct. Wins over the top-level "
        "proxy and the environment."))
    ca_file: str | None = Field(default=None, min_length=1, max_length=4096, description=(
        "Absolute path of a PEM file whose certificates are trusted besides the system store."))
    insecure_skip_verify: bool | None = Field(default=None, description=(
        "true: no TLS certificate check for this provider (logged as a warning, shown by model:health)."))

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        return check_proxy_url(value)

    @field_validator("ca_file")
    @classmethod
    def _ca_path(cls, value: str | None) -> str | None:
        return check_ca_file(value)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_base_url(value)

    @field_validator("api_key")
    @classmethod
    def _trimmed_key(cls, value: str | None) -> str | None:
        return check_api_key(value)

    @field_validator("headers")
    @classmethod
    def _http_headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_HEADERS:
            raise ValueError(f"at most {MAX_HEADERS} headers")
        out: dict[str, str] = {}
        seen: set[str] = set()
        for name, raw in value.items():
            if not _HEADER_NAME.fullmatch(name) or len(name) > 256:
                shown = name[:40] if _describe(name, "") is None else "with control characters"
                raise ValueError(f"header name {shown!r} is not a valid HTTP header name")
            if name.lower() in RESERVED_HEADERS or name.lower() in seen:
                raise ValueError(f"header {name!r} is set by the HTTP layer or given twice")
            seen.add(name.lower())
            text = raw.strip()  # a pasted value often ends in a newline
            if len(text) > MAX_HEADER_VALUE_CHARS or not _HEADER_VALUE.fullmatch(text):
                raise ValueError(f"header {name!r}: the value must be printable ASCII without control "
                                 f"characters, at most {MAX_HEADER_VALUE_CHARS} characters")
            out[name] = text
        return out


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
#: Hosts a server the sidecar runs may listen on: this machine only.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServerConfig(ParamsModel):
    """How the sidecar runs a custom entry's server itself (``sidecar.local.managed``).

    Started on first use, stopped after ``idleStopMs`` without requests and when the
    sidecar exits; the port in the entry's ``baseURL`` is replaced by the server's.
    """

    run: Literal["embedded", "command", "off"] = Field(default="command", description=(
        "embedded: llama-cpp-python's server with the bundled SmolLM2 model (when installed, and only "
        "while baseURL is the default); command: run `command` + `args`; off: run nothing, use baseURL."))
    command: list[str] | None = Field(default=None, min_length=1, max_length=256, description=(
        "Program and arguments; {port}, {host} and {modelFile} in any element are replaced."))
    args: list[str] = Field(default_factory=list, max_length=256)
    env: dict[str, str] | None = Field(default=None, description="Set on top of the sidecar's environment "
                                                                 "(API key variables are never passed on).")
    model_file: str | None = Field(default=None, min_length=1, max_length=4096)
    port: int | Literal["auto"] = Field(default="auto", description="auto: a free port chosen by the sidecar.")
    health_path: str | None = Field(default=None, pattern=r"^/[\x21-\x7e]*$", max_length=512, description=(
        "GET on http://127.0.0.1:<port><healthPath> answers 2xx once the server is ready "
        "(default /health; /v1/models for the embedded server)."))
    idle_stop_ms: int = Field(default=600_000, ge=0, le=MAX_WINDOW_MS, description="0: never stopped when idle.")
    start_timeout_ms: int = Field(default=60_000, ge=1_000, le=600_000)
    max_restarts: int = Field(default=5, ge=0, le=100, description=(
        "Consecutive failed starts or crashes before the sidecar stops restarting it."))

    @field_validator("port", mode="before")
    @classmethod
    def _port_range(cls, value: object) -> object:
        # One error at /port for anything else (the union alone reports one per member).
        if value != "auto" and not (type(value) is int and 1 <= value <= 65535):
            raise ValueError("port must be a number 1-65535 or \"auto\"")
        return value

    @field_validator("command", "args")
    @classmethod
    def _no_nul(cls, value: list[str] | None) -> list[str] | None:
        # A NUL cannot go into a process argument; an empty program name runs nothing.
        if value and any("\0" in item for item in value):
            raise ValueError("no element may contain a NUL character")
        return value

    @field_validator("command")
    @classmethod
    def _program(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value[0].strip():
            raise ValueError("the program (first element) is empty")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, item in (value or {}).items():
            if not _ENV_NAME.fullmatch(name) or "\0" in item:
                raise ValueError(f"env: {name[:64]!r} is not a variable name, or its value contains NUL")
        return value

    @model_validator(mode="after")
    def _has_command(self) -> ServerConfig:
        if self.run == "command" and not self.command:
            raise ValueError("run \"command\" needs a command")
        return self


class CustomProviderEntry(ProviderEntry):
    local: bool = False
    #: Extension: the sidecar runs this entry's server itself.
    server: ServerConfig | None = None

    @model_validator(mode="after")
    def _server_on_loopback(self) -> CustomProviderEntry:
        if self.server is not None and self.server.run == "command":
            if urlsplit(self.base_url).hostname not in LOOPBACK_HOSTS:
                raise ValueError("a server the sidecar runs must be reached on loopback (baseURL host 127.0.0.1)")
        return self


class ProvidersConfig(ParamsModel):
    openai: ProviderEntry = ProviderEntry(
        base_url="https://api.openai.com/v1", default_model="gpt-4o-mini"
    )
    anthropic: ProviderEntry = ProviderEntry(
        base_url="https://api.anthropic.com", default_model="claude-haiku-4-5"
    )
    ollama: ProviderEntry = ProviderEntry(base_url="http://127.0.0.1:11434", default_model="llama3.2")
    #: One default entry: the embedded local model (SmolLM2 served by llama-cpp-python,
    #: which the sidecar runs itself on first use, see ``sidecar.local.embedded``). Hosts
    #: add entries beside it; a stored ``"local-llm"`` entry merges over this one,
    #: ``enabled: false`` turns it off.
    custom: dict[str, CustomProviderEntry] = Field(default_factory=lambda: {LOCAL_PROVIDER: CustomProviderEntry(
        base_url=LOCAL_BASE_URL, default_model=LOCAL_MODEL, server=ServerConfig(run="embedded"),
    )})

    def entries(self) -> dict[str, ProviderEntry]:
        """Every entry by provider name: the built-in ones, then the custom ones."""
        return {**{name: getattr(self, name) for name in BUILTIN_PROVIDERS}, **self.custom}

    def entry(self, name: str) -> ProviderEntry | None:
        """The entry called ``name``, built in or custom; None for an unknown name."""
        found: ProviderEntry | None = getattr(self, name) if name in BUILTIN_PROVIDERS else self.custom.get(name)
        return found

    @field_validator("custom")
    @classmethod
    def _custom_names(cls, value: dict[str, CustomProviderEntry]) -> dict[str, CustomProviderEntry]:
        if len(value) > MAX_CUSTOM_PROVIDERS:
            raise ValueError(f"at most {MAX_CUSTOM_PROVIDERS} custom providers")
        for name in value:
            if name in (*BUILTIN_PROVIDERS, "auto") or not name.strip():
                raise ValueError(f"custom provider name {name!r} is reserved or empty")
            if len(name) > MAX_PROVIDER_NAME_CHARS or "/" in name or _describe(name, "name"):
                raise ValueError(f"a custom provider name has at most {MAX_PROVIDER_NAME_CHARS} characters, "
                                 "no '/', no control or whitespace characters")
        return value


class BudgetConfig(ParamsModel):
    daily_limit: float | None = Field(default=None, ge=0, le=MAX_LIMIT_USD)
    monthly_limit: float | None = Field(default=None, ge=0, le=MAX_LIMIT_USD)
    alert_threshold: float = Field(default=0.8, ge=0, le=1)
    block_on_limit: bool = True
    #: Extension: IANA zone for day and month boundaries (default UTC).
    timezone: str | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                if len(value) > 64:
                    raise ValueError("too long")
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
                raise ValueError(f"unknown time zone {value[:64]!r}") from exc
        return value


class FormatTemplate(ParamsModel):
    """A named structured-output format: a JSON Schema plus extra instructions."""

    schema_: dict[str, Any] = Field(alias="schema")
    instructions: str | None = None
    max_retries: int | None = Field(default=None, ge=0, le=10)

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Checked when stored, not first when a request names the template.
        from sidecar.errors import InvalidParams
        from sidecar.structured.validate import compile_schema

        try:
            compile_schema(value)
        except InvalidParams as exc:
            where = "; ".join(f"{e['path'].removeprefix('/responseFormat/schema') or '/'}: {e['message']}"
                              for e in exc.errors) or exc.message
            raise ValueError(f"not a valid JSON Schema ({where})") from None
        return value


class ModelOverride(ParamsModel):
    """What the user knows better than the catalog about one model (``provider/model``)."""

    context_window: int | None = Field(default=None, ge=256, le=MAX_TOKENS_CAP)
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    input_per_1m: float | None = Field(default=None, ge=0, le=MAX_PRICE_PER_1M_USD, alias="inputPer1M")
    output_per_1m: float | None = Field(default=None, ge=0, le=MAX_PRICE_PER_1M_USD, alias="outputPer1M")
    tier: Literal["frontier", "strong", "fast", "small"] | None = None
    capabilities: list[str] | None = None


class SelectionDefaults(ParamsModel):
    """Defaults for ``ModelSelection`` fields a request leaves out."""

    priority: Priority = Field(default=Priority.balanced, strict=False)
    fallback: bool = True
    fallback_mid_stream: bool = False
    local_only: bool = False
    max_cost_usd: float | None = Field(default=None, ge=0, le=MAX_LIMIT_USD)


class ModelConfig(ParamsModel):
    providers: ProvidersConfig = Field(default_factory=ProvidersConfig)
    default_provider: str = "ollama"
    fallback_chain: list[str] = Field(default_factory=list)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    selection: SelectionDefaults = Field(default_factory=SelectionDefaults)
    #: Extension: per-model facts that win over the catalog, keyed ``provider/model``.
    model_overrides: dict[str, ModelOverride] = Field(default_factory=dict)
    #: Extension: structured-output templates usable as ``{"type": "template", "template": name}``.
    format_templates: dict[str, FormatTemplate] = Field(default_factory=dict)
    #: Extension: overall deadline of one request, retries and fallbacks included.
    deadline_ms: int = Field(default=600_000, ge=1_000, le=3_600_000)
    #: Extension: the most bytes a provider may send in one stream line or event, in one
    #: non-streamed body, and as one answer's text (more is an oversized-response ModelError).
    max_response_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=1024 * 1024 * 1024)
    #: Extension: the proxy of every remote provider without its own ``proxy``; wins over
    #: the environment (``HTTPS_PROXY``...). ``""``: direct.
    proxy: str | None = Field(default=None, description=(
        "http(s)://[user:password@]host:port for remote providers; \"\" = direct, ignoring HTTPS_PROXY & co."))

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, value: str | None) -> str | None:
        return check_proxy_url(value)

    def provider_names(self) -> list[str]:
        return [*BUILTIN_PROVIDERS, *self.providers.custom]

    @model_validator(mode="after")
    def _names_exist(self) -> ModelConfig:
        # The error types name the field at fault (a model-level error has no location).
        known = set(self.provider_names())
        if self.default_provider not in known:
            raise PydanticCustomError(UNKNOWN_DEFAULT_PROVIDER, "defaultProvider {name} is not a configured provider",
                                      {"name": repr(self.default_provider[:MAX_PROVIDER_NAME_CHARS])})
        unknown = [name[:MAX_PROVIDER_NAME_CHARS] for name in self.fallback_chain if name not in known]
        if unknown:
            raise PydanticCustomError(UNKNOWN_FALLBACK_PROVIDER, "fallbackChain names unknown providers: {names}",
                                      {"names": ", ".join(unknown[:10])})
        return self


#: pydantic error types of :meth:`ModelConfig._names_exist`, and the field each is about.
UNKNOWN_DEFAULT_PROVIDER = "unknown_default_provider"
UNKNOWN_FALLBACK_PROVIDER = "unknown_fallback_provider"
CROSS_FIELD_ERRORS = {UNKNOWN_DEFAULT_PROVIDER: "defaultProvider", UNKNOWN_FALLBACK_PROVIDER: "fallbackChain"}


class ConfigIgnored(ResultModel):
    """One part of ``config.json`` that did not load: where (JSON pointer) and why."""

    path: str
    message: str


class ConfigStatus(ResultModel):
    """How ``config.json`` loaded (``model:health``'s ``config``)."""

    status: Literal["loaded", "partial", "defaults"] = Field(description=(
        "loaded: the file (or its absence) gave the config; partial: some entries or fields "
        "were ignored (see ignored); defaults: the file could not be used at all (see problem)."))
    path: str
    problem: str | None = None
    ignored: list[ConfigIgnored] | None = None
    backup: str | None = Field(default=None, description=(
        "Where the last file that did not load was copied before set-config replaced it."))
    key_storage: Literal["keychain", "file"] = Field(default="file", description=(
        "Where stored API keys live: keychain (the OS credential store; config.json names the "
        "item only) or file (config.json, mode 0600: no credential store works here)."))
    key_storage_problem: str | None = Field(default=None, description=(
        "Why keys are kept in the file, or which stored keys cannot be read from the credential store."))


class ConfigView(ModelConfig):
    """``model:get-config``'s and ``model:set-config``'s result: the config, keys as previews."""

    key_storage: Literal["keychain", "file"] = Field(description=(
        "Read-only (set-config ignores it): where stored API keys live; keychain: the OS "
        "credential store, config.json names the item only; file: config.json (mode 0600)."))
