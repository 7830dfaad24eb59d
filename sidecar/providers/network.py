"""Trust and proxy decisions for the providers' HTTP clients, as plain values.

Whatever transport sends the requests (httpx's own, or another one plugged into
:class:`~sidecar.providers.http.HttpClientFactory`) gets the same two values per
provider: an :class:`ssl.SSLContext` and a proxy URL or ``None`` (direct).

Trust: the operating system's store (``truststore`` on macOS and Windows; on Linux the
OpenSSL default paths or a well-known distribution bundle), ``certifi`` only where no
system store exists; ``SSL_CERT_FILE``, ``SSL_CERT_DIR`` and an entry's ``caFile`` are
trusted besides it. ``insecureSkipVerify`` turns verification off for one entry only.

Proxies: an entry's ``proxy`` wins over the top-level ``proxy``, which wins over the
environment (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``, ``NO_PROXY``; lowercase
first, as curl reads them). ``""`` means "no proxy". Loopback targets always go direct;
an entry with ``local: true`` goes direct unless the entry itself names a proxy.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import certifi
import httpx

from sidecar.wire.config import proxy_url_problem

__all__ = [
    "ProxyFailed",
    "SetupFailed",
    "TlsRejected",
    "Trust",
    "build_ssl_context",
    "choose_proxy",
    "deny_remote_reason",
    "env_proxy",
    "explain",
    "is_loopback_url",
    "no_proxy_matches",
    "proxy_address",
    "proxy_problem",
    "proxy_status_failure",
    "system_trust",
]

#: Where Linux distributions keep their CA bundle, when OpenSSL's compiled-in default
#: path holds none (a binary built elsewhere): Alpine/Arch/Fedora/BSD, newer Fedora/RHEL,
#: older Fedora/RHEL/CentOS, Debian/Ubuntu, SUSE.
_CA_FILE_CANDIDATES = (
    "/etc/ssl/cert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/cert.pem",
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/ssl/ca-bundle.pem",
)
#: OpenSSL's ``c_rehash`` names in a CA directory: 8 hex digits, a dot, a number.
_HASHED_NAME = re.compile(r"^[0-9a-fA-F]{8}\.[0-9]+$")
_EXPIRED_CODES = frozenset({9, 10})  # not yet valid, expired
_NAME_MISMATCH_CODES = frozenset({62, 64})  # host name, IP address
_TRUST_HINT = ("set caFile on the provider entry to the PEM file of the root that signed it, or "
               "SSL_CERT_FILE in the sidecar's environment, or install that root in the operating "
               "system's trust store (a proxy that inspects TLS signs with its own root)")


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` points at this machine: a loopback IP literal or ``localhost``.

    Names are never matched by prefix (``127.attacker.example`` is not local), and no
    name other than ``localhost`` is trusted, since resolving it could lead anywhere.
    """
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


# -- trust --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trust:
    """What one provider's TLS trusts; equal values share one ``SSLContext``."""

    ca_file: str | None = None
    insecure: bool = False
    #: ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` of the sidecar's environment.
    cert_file: str | None = None
    cert_dir: str | None = None


class SetupFailed(httpx.ConnectError):
    """The provider's TLS or proxy settings cannot be used; every request fails with this."""

    def __init__(self, explanation: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(explanation, request=request)
        self.explanation = explanation


def system_trust() -> str:
    """Which store verifies by default here: ``"truststore"``, ``"openssl:<path>"``, ``"certifi"``."""
    if sys.platform in ("darwin", "win32"):
        try:
            import truststore  # noqa: F401  (the native verifier of macOS and Windows)
        except ImportError:
            return "certifi"
        return "truststore"
    found = _linux_store()
    return f"openssl:{found}" if found else "certifi"


def _linux_store() -> str | None:
    """The system CA bundle or directory OpenSSL would use, or a distribution's bundle.

    truststore does the same on Linux but reloads the bundle on every handshake (~17 ms
    per new connection measured here); loading it once into a plain context is equivalent.
    """
    defaults = ssl.get_default_verify_paths()
    if defaults.openssl_cafile and os.path.isfile(defaults.openssl_cafile):
        return defaults.openssl_cafile
    capath = defaults.openssl_capath
    if capath and os.path.isdir(capath) and any(_HASHED_NAME.match(n) for n in os.listdir(capath)):
        return capath
    return next((path for path in _CA_FILE_CANDIDATES if os.path.isfile(path)), None)


def _system_context() -> ssl.SSLContext:
    store = system_trust()
    if store == "truststore":
        import truststore

        return truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies peer and host name
    location = store.removeprefix("openssl:") if store.startswith("openssl:") else certifi.where()
    if os.path.isdir(location):
        ctx.load_verify_locations(capath=location)
    else:
        ctx.load_verify_locations(cafile=location)
    return ctx


def build_ssl_context(trust: Trust) -> ssl.SSLContext:
    """The client context for ``trust``.

    Raises:
        SetupFailed: ``caFile``, ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` cannot be read.
    """
    if trust.insecure:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = _system_context()
    for label, path, is_dir in (("SSL_CERT_FILE", trust.cert_file, False), ("SSL_CERT_DIR", trust.cert_dir, True),
                                ("caFile", trust.ca_file, False)):
        if path:
            _load_extra(ctx, label, path, is_dir)
    return ctx


def _load_extra(ctx: ssl.SSLContext, label: str, path: str, is_dir: bool) -> None:
    try:
        if is_dir:
            if not os.path.isdir(path):
                raise NotADirectoryError(20, "not a directory")
            ctx.load_verify_locations(capath=path)
        else:
            ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:  # an OSError too: first
        raise SetupFailed(f"{label} {path} holds no PEM certificate") from exc
    except OSError as exc:
        raise SetupFailed(f"{label} {path} cannot be read ({exc.strerror or type(exc).__name__})") from exc


# -- proxies ------------------------------------------------------------------------


def proxy_problem(url: str) -> str | None:
    """Why ``url`` cannot be used as a proxy (the same rules as the config's ``proxy``)."""
    return proxy_url_problem(url)


def _env_value(env: Mapping[str, str], name: str) -> str | None:
    """The lowercase variable, else the uppercase one (curl's order); empty is unset."""
    for key in (name.lower(), name.upper()):
        value = env.get(key, "").strip()
        if value:
            return value
    return None


def env_proxy(url: str, env: Mapping[str, str]) -> str | None:
    """The proxy the environment names for ``url`` (``NO_PROXY`` applied), else None."""
    parts = urlsplit(url)
    scheme_var = "https_proxy" if parts.scheme == "https" else "http_proxy"
    value = _env_value(env, scheme_var) or _env_value(env, "all_proxy")
    if value is None:
        return None
    no_proxy = _env_value(env, "no_proxy")
    if no_proxy and no_proxy_matches(parts.hostname or "", parts.port or _default_port(parts.scheme), no_proxy):
        return None
    return value if "://" in value else f"http://{value}"  # curl's default scheme


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def no_proxy_matches(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` exempts ``host:port``: ``*``, a domain and its subdomains
    (a leading ``.`` or ``*.`` is ignored), an IP address or CIDR range, each optionally
    with ``:port``."""
    host = host.lower().strip("[]").rstrip(".")
    address = _ip(host)
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if entry == "*":
            return True
        entry, want_port = _split_port(entry)
        if not entry or (want_port is not None and want_port != port):
            continue
        network = _network(entry)
        if network is not None:
            if address is not None and address in network:
                return True
            continue
        domain = entry.removeprefix("*").lstrip(".").rstrip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [v6]:port
        inside, _, rest = entry[1:].partition("]")
        return inside, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return name, int(port) if port.isdigit() else None
    return entry, None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def choose_proxy(url: str, *, entry: str | None, top: str | None, env: Mapping[str, str],
                 local: bool) -> str | None:
    """The proxy of one provider (None: direct).

    Loopback always goes direct. Otherwise the entry's ``proxy`` wins, then the top-level
    one, then the environment; ``""`` at any level means direct. An entry marked
    ``local`` (a server on the local network) uses only its own ``proxy``.
    """
    if is_loopback_url(url):
        return None
    if entry is not None:
        return entry or None
    if local:
        return None
    if top is not None:
        return top or None
    return env_proxy(url, env)


def proxy_address(url: str) -> str:
    """``host:port`` of a proxy, for messages (never the user info)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port or _default_port(parts.scheme)
    except ValueError:
        return "(invalid proxy URL)"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def deny_remote_reason(url: str, proxy: str | None) -> str | None:
    """Why ``MODEL_SIDECAR_DENY_REMOTE`` refuses a request to ``url`` (None: allowed).

    Allowed: loopback targets, and names in the reserved ``.test`` domain (RFC 6761
    section 6.2: never resolved on the internet) reached through a loopback proxy, which
    is how the tests stand up a "remote" provider. A proxy off this machine is refused.
    """
    if proxy is not None and not is_loopback_url(proxy):
        return f"the proxy {proxy_address(proxy)} is not on this machine"
    if is_loopback_url(url):
        return None
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    if proxy is not None and host.endswith(".test"):
        return None
    return f"{host} is not on this machine"


# -- failures -----------------------------------------------------------------------


class TlsRejected(httpx.ConnectError):
    """The server's certificate (or the TLS handshake) was not accepted."""

    def __init__(self, explanation: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(explanation, request=request)
        self.explanation = explanation


class ProxyFailed(httpx.ProxyError):
    """The proxy could not be connected, or refused to carry the request.

    ``retryable``: a proxy that cannot be reached may be back soon; one that refuses
    (its answer to CONNECT, a 407) will refuse again.
    """

    def __init__(self, explanation: str, *, request: httpx.Request | None = None, retryable: bool = True) -> None:
        super().__init__(explanation, request=request)
        self.explanation = explanation
        self.retryable = retryable


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in found):
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _tls_explanation(error: ssl.SSLError, host: str, tls_proxy: str | None) -> str:
    """What went wrong and what to do. Through an https:// proxy the failing handshake may
    be the one with the proxy: both are named (the error does not tell which)."""
    who = host if tls_proxy is None else f"{host} (or of the proxy {tls_proxy})"
    if isinstance(error, ssl.SSLCertVerificationError):
        code = getattr(error, "verify_code", None)
        problem = getattr(error, "verify_message", None) or str(error)
        if code in _EXPIRED_CODES:
            hint = "the server must renew its certificate (or this machine's clock is wrong)"
        elif code in _NAME_MISMATCH_CODES:
            hint = (f"the certificate is not valid for {host.rsplit(':', 1)[0]}: check the host name in baseURL"
                    + (" and in the proxy URL" if tls_proxy else ""))
        else:  # the untrusted-root codes, and whatever a native verifier reports
            hint = _TRUST_HINT
        return f"TLS certificate of {who} not accepted: {problem}; {hint}"
    reason = getattr(error, "reason", None) or type(error).__name__
    return f"TLS handshake with {who} failed ({reason}); is it an https:// server?"


def _target(request: httpx.Request) -> str:
    url = request.url
    port = url.port or _default_port(url.scheme)
    return f"{url.host}:{port}"


def explain(exc: Exception, request: httpx.Request, proxy: str | None) -> Exception | None:
    """The typed, explained failure of a request that could not be sent (None: leave it).

    A certificate problem names the target host and what to set; with a proxy, a failure
    to connect or a refused tunnel names the proxy (``host:port``, never its password).
    """
    if isinstance(exc, httpx.TimeoutException):
        if proxy is not None and isinstance(exc, httpx.ConnectTimeout):
            return ProxyFailed(f"connecting through the proxy {proxy_address(proxy)} to {_target(request)} "
                               "timed out", request=request)
        return None
    # The deepest one is the ssl module's own (aiohttp's wrapper is an SSLError subclass too).
    tls = next((item for item in reversed(_chain(exc)) if isinstance(item, ssl.SSLError)), None)
    if tls is not None:
        tls_proxy = proxy_address(proxy) if proxy is not None and proxy.startswith("https://") else None
        return TlsRejected(_tls_explanation(tls, _target(request), tls_proxy), request=request)
    if proxy is None:
        return None
    chain = _chain(exc)
    where = f"the proxy {proxy_address(proxy)}"
    status = _tunnel_status(chain)
    if status is not None or isinstance(exc, httpx.ProxyError):
        # httpcore's ProxyError text is the proxy's status line to CONNECT ("407 Proxy ...").
        answer = f"HTTP {status}" if status is not None else str(exc)
        # httpx's transport gives the status only as text: then the hint says when it applies.
        hint = _AUTH_HINT if status == 407 else "" if status is not None else _AUTH_HINT_IF_407
        return ProxyFailed(f"{where} refused the tunnel to {_target(request)} ({answer}){hint}",
                           request=request, retryable=False)
    if not isinstance(exc, httpx.ConnectError):
        return None
    if any(isinstance(item, ConnectionRefusedError) for item in chain):
        return ProxyFailed(f"{where} refused the connection", request=request)
    return ProxyFailed(f"cannot connect to {where} ({exc or type(exc).__name__})", request=request)


_AUTH_HINT = ": set user:password in the proxy URL, or check them"
_AUTH_HINT_IF_407 = "; if that is 407, set user:password in the proxy URL, or check them"


def _tunnel_status(chain: list[BaseException]) -> int | None:
    """The proxy's status to CONNECT when the transport is aiohttp's (its typed error)."""
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is None:
        return None
    found = next((item for item in chain if isinstance(item, aiohttp.ClientHttpProxyError)), None)
    return None if found is None else int(found.status)


def proxy_status_failure(status: int, request: httpx.Request, proxy: str) -> ProxyFailed | None:
    """A plain-HTTP request's answer that came from the proxy itself (407), else None."""
    if status != 407:
        return None
    return ProxyFailed(f"the proxy {proxy_address(proxy)} asks for authentication (407) for "
                       f"{_target(request)}{_AUTH_HINT}", request=request, retryable=False)
