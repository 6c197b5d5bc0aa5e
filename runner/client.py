"""The HTTP client for the Webex Connect messaging API: one attempt per call.

`ApiClient.send` posts one batch and classifies what happened into an `Answer`; the
sender decides about retries, pacing and concurrency from `Answer.outcome`:

- ACCEPTED: any 2xx (201 for v2, 202 for v1 documented), whatever the body says.
- REJECTED: the vendor refused the request (4xx other than 408/429, or a redirect);
  sending it again unchanged will not help.
- RETRY: nothing was taken: the connection could not be made (nothing was sent), or
  the vendor answered 408, 429, 5xx or a retryable code (`vendor.RETRYABLE_CODES`).
- UNCERTAIN: the request may have reached the vendor but no status came back (read
  timeout, connection dropped after or while sending, a malformed answer), or the
  vendor answered 409 Conflict: the only documented duplicate refusal is for a reused
  Idempotency-Key, which means an earlier attempt of this batch may have been taken.

Credentials come from the environment (`Credentials.from_env`): for each of the
service key and the JWT, set either the variable or its `*_FILE` variant (the file's
content, stripped); setting both is refused rather than silently picking one. A JWT
wins over a service key, as the vendor documents, and the key is then not sent.

No secret leaves this module in text: `Credentials` hides its values in `repr`, and
every `Answer.message` passes through `redact`.
"""

from __future__ import annotations

import email.utils
import enum
import json
import math
import re
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import httpx

from runner import __version__, vendor
from runner.errors import CampaignError, ExitCode
from runner.files import FileRefused, os_reason, read_regular
from runner.model import Batch

SERVICE_KEY_ENV: Final = "WEBEX_CONNECT_SERVICE_KEY"
JWT_ENV: Final = "WEBEX_CONNECT_JWT"
BASE_URL_ENV: Final = "WEBEX_CONNECT_BASE_URL"
REGION_ENV: Final = "WEBEX_CONNECT_REGION"
FILE_SUFFIX: Final = "_FILE"

MAX_BODY_BYTES: Final = 1 << 20  # answers are small JSON objects; read no more than this
MAX_MESSAGE_CHARS: Final = 500
# A secret is a line; a *_FILE naming /dev/zero or a log must not be read without end.
MAX_SECRET_FILE_BYTES: Final = 64 * 1024
REDACT_ANYWHERE_LENGTH: Final = 12  # secrets at least this long are redacted even inside other text
CONNECT_TIMEOUT_MAX: Final = 10.0
LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})

# 7001 "Authentication failed", 7002 "Service Key Missing" (fact sheet §1; v1 answers 403 with
# 7001, v2 answers 401 with no body).
AUTH_FAILURE_CODES: Final = frozenset({"7001", "7002"})
AUTH_FAILED_MESSAGE: Final = (
    "authentication failed (check WEBEX_CONNECT_SERVICE_KEY / WEBEX_CONNECT_JWT)"
)


# --- credentials ------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    service_key: str | None = field(default=None, repr=False)
    jwt: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        def shown(value: str | None) -> str:
            return "None" if value is None else "***"

        return f"Credentials(service_key={shown(self.service_key)}, jwt={shown(self.jwt)})"

    __str__ = __repr__

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(value for value in (self.jwt, self.service_key) if value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Credentials:
        """Read WEBEX_CONNECT_SERVICE_KEY / WEBEX_CONNECT_JWT, or their *_FILE variants.

        An empty variable counts as unset. Setting both a variable and its *_FILE is a
        usage error (no silent precedence). A JWT given as `Bearer <token>` is accepted.
        Both may end up None; `ApiClient` refuses to start without either.
        """
        service_key = _secret_from_env(environ, SERVICE_KEY_ENV)
        jwt = _secret_from_env(environ, JWT_ENV)
        if jwt is not None and jwt[:7].lower() == f"{vendor.JWT_SCHEME.lower()} ":
            jwt = jwt[7:].strip() or None
        return cls(service_key=service_key, jwt=jwt)


def _secret_from_env(environ: Mapping[str, str], name: str) -> str | None:
    file_name = name + FILE_SUFFIX
    value = environ.get(name, "").strip()
    file_path = environ.get(file_name, "").strip()
    if value and file_path:
        raise CampaignError(
            f"both {name} and {file_name} are set",
            exit_code=ExitCode.USAGE,
            hint=f"set only one of them ({file_name} names a file holding the secret)",
        )
    if file_path:
        try:
            value = read_regular(Path(file_path), MAX_SECRET_FILE_BYTES).decode("utf-8").strip()
        except (OSError, FileRefused, UnicodeDecodeError) as exc:
            reason = (exc.reason if isinstance(exc, FileRefused) else os_reason(exc) if isinstance(exc, OSError)
                      else "not valid UTF-8")
            raise CampaignError(
                f"cannot read {file_name} ({file_path}): {reason}",
                exit_code=ExitCode.USAGE,
                hint=f"{file_name} must name a readable regular UTF-8 file (at most 64 KiB) holding only the secret",
            ) from None
        if not value:
            raise CampaignError(
                f"{file_name} ({file_path}) is empty",
                exit_code=ExitCode.USAGE,
                hint=f"{file_name} must name a file holding the secret",
            )
        source = f"{file_name} ({file_path})"
    else:
        source = name
    if not value:
        return None
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F or ord(ch) > 0x7E for ch in value):
        # never echo the value: it is a secret, and it would break the HTTP header
        raise CampaignError(
            f"{source} holds a character that cannot go in an HTTP header (a line break or non-ASCII)",
            exit_code=ExitCode.USAGE,
            hint="the secret must be a single line of printable ASCII",
        )
    return value


def redact(text: str, credentials: Credentials) -> str:
    """`text` with every occurrence of the service key or JWT (raw or URL-encoded) as '***'."""
    variants: set[str] = set()
    for secret in credentials.secrets:
        variants.add(secret)
        variants.add(urllib.parse.quote(secret, safe=""))
        variants.add(urllib.parse.quote_plus(secret, safe=""))
    for variant in sorted(variants, key=len, reverse=True):
        if len(variant) >= REDACT_ANYWHERE_LENGTH:
            text = text.replace(variant, "***")
        else:
            # A short secret (a test key like "k") would otherwise mangle ordinary words;
            # it is still redacted wherever it stands as a token of its own.
            text = re.sub(rf"(?<![A-Za-z0-9_.~-]){re.escape(variant)}(?![A-Za-z0-9_.~-])", "***", text)
    return text


# --- base URL ---------------------------------------------------------------------


def resolve_base_url(*, base_url: str | None, region: str | None) -> str:
    """The API base URL: `base_url` (from --base-url or WEBEX_CONNECT_BASE_URL) when given,
    else `https://api.<region>.webexconnect.io`. Plain http is refused except to loopback
    (the sandbox), so credentials never cross a network unencrypted."""
    if base_url is not None and base_url.strip():
        return _checked_base_url(base_url.strip())
    if region is not None and region.strip():
        name = region.strip().lower()
        if name not in vendor.REGIONS:
            known = ", ".join(f"{code} ({where})" for code, where in vendor.REGIONS.items())
            raise CampaignError(
                f"unknown Webex Connect region '{region.strip()}'",
                exit_code=ExitCode.USAGE,
                hint=f"use one of: {known}; or give --base-url",
            )
        return vendor.BASE_URL_TEMPLATE.format(region=name)
    raise CampaignError(
        "no Webex Connect API address: neither a region nor a base URL is given",
        exit_code=ExitCode.USAGE,
        hint=f"pass --region (one of {', '.join(vendor.REGIONS)}) or --base-url / {BASE_URL_ENV}",
    )


def _checked_base_url(text: str) -> str:
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise CampaignError(
            f"invalid base URL '{text}': {exc}", exit_code=ExitCode.USAGE, hint="e.g. https://api.us.webexconnect.io"
        ) from None
    if url.scheme not in ("http", "https") or not url.host:
        raise CampaignError(
            f"invalid base URL '{text}': it must be http(s)://host[:port][/prefix]",
            exit_code=ExitCode.USAGE,
            hint="e.g. https://api.us.webexconnect.io",
        )
    if url.query or url.fragment:
        raise CampaignError(
            f"invalid base URL '{text}': it must not have a query or fragment",
            exit_code=ExitCode.USAGE,
            hint="e.g. https://api.us.webexconnect.io",
        )
    if url.scheme == "http" and url.host not in LOOPBACK_HOSTS:
        raise CampaignError(
            f"refusing to send credentials over plain http to {url.host}",
            exit_code=ExitCode.USAGE,
            hint="use an https:// base URL (plain http is allowed only to localhost, for a sandbox)",
        )
    return strip_api_version(text.rstrip("/"))


# The vendor's OpenAPI server is `https://api.<region>.webexconnect.io/v2`: a base URL
# copied from it already names a version, and the request paths add their own.
_VERSION_SUFFIX = re.compile(r"/v[12]/*$")


def strip_api_version(base_url: str) -> str:
    """`base_url` without a trailing `/v1` or `/v2` (and slashes): the paths name the version."""
    return _VERSION_SUFFIX.sub("", base_url.rstrip("/")).rstrip("/")


# --- answers ----------------------------------------------------------------------


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"  # do not send again unchanged
    RETRY = "retry"  # not taken; safe to send again (after a pause)
    UNCERTAIN = "uncertain"  # may have been taken; sending again may duplicate


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    http_status: int | None
    code: str | None  # vendor error code, as a string
    message: str  # one line, never containing a secret
    message_id: str | None
    retry_after: float | None  # seconds, from a Retry-After header

    @property
    def auth_failed(self) -> bool:
        """The vendor refused the credentials: every other request would be refused too."""
        if self.code in AUTH_FAILURE_CODES:
            return True
        return self.http_status == 401 or (self.http_status == 403 and self.code is None)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds (>= 0): delta-seconds or an HTTP-date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def connect_failure(exc: BaseException, base_url: str) -> str:
    """What stopped a connection, in words a user can act on: refused, DNS, TLS, timeout.

    httpx raises one ConnectError for all of them; the cause (an OSError, a socket.gaierror,
    an ssl.SSLError) or its text says which. The host is named, never the credentials."""
    host = httpx.URL(base_url).host if base_url else "the API"
    chain = list(_causes(exc))
    text = " ".join(str(e) for e in chain).lower()
    if any(isinstance(e, ssl.SSLError) for e in chain) or "ssl" in text or "certificate" in text or "tls" in text:
        what = f"TLS handshake with {host} failed (certificate or protocol problem)"
    elif any(isinstance(e, socket.gaierror) for e in chain) or any(
        phrase in text for phrase in ("name or service not known", "nodename nor servname", "name resolution",
                                      "getaddrinfo", "no address associated")
    ):
        what = f"DNS lookup failed: {host} was not found (check --base-url / --region)"
    elif any(isinstance(e, ConnectionRefusedError) for e in chain) or "connection refused" in text or (
        "errno 111" in text
    ):
        what = f"connection refused by {host} (nothing listens there: check --base-url)"
    elif isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)):
        what = f"connecting to {host} timed out"
    elif isinstance(exc, httpx.ProxyError):
        what = f"the proxy refused the connection to {host}"
    else:
        what = f"could not connect to {host}"
    return f"{what}, nothing was sent"


def _one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _status_line(response: httpx.Response) -> str:
    phrase = response.reason_phrase
    return f"HTTP {response.status_code} {phrase}" if phrase else f"HTTP {response.status_code}"


# --- the client -------------------------------------------------------------------


def _on_headers_sent(callback: Callable[[], None]) -> Callable[[str, dict[str, Any]], None]:
    """An httpcore trace hook calling `callback` as the request headers start to go out."""

    def trace(event_name: str, info: dict[str, Any]) -> None:
        if event_name.endswith(".send_request_headers.started"):
            callback()

    return trace


class ApiClient:
    """Posts batches to the vendor API over reused connections; thread-safe."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        timeout: float = 30.0,
        max_connections: int = 32,
        user_agent: str = f"campaign-runner/{__version__}",
        transport: httpx.BaseTransport | None = None,  # tests only: faults a real socket cannot produce
    ) -> None:
        if not credentials.jwt and not credentials.service_key:
            raise CampaignError(
                "no Webex Connect credentials",
                exit_code=ExitCode.USAGE,
                hint=f"set {SERVICE_KEY_ENV} or {JWT_ENV} (or {SERVICE_KEY_ENV}{FILE_SUFFIX} / "
                f"{JWT_ENV}{FILE_SUFFIX} naming a file that holds it)",
            )
        self.base_url = strip_api_version(base_url)
        self.credentials = credentials
        self.timeout = timeout
        if credentials.jwt:
            # the vendor ignores the key when a JWT is present; not sending it keeps it off the wire
            self._auth_headers = {vendor.JWT_HEADER: f"{vendor.JWT_SCHEME} {credentials.jwt}"}
        else:
            assert credentials.service_key is not None
            self._auth_headers = {vendor.SERVICE_KEY_HEADER: credentials.service_key}
        # One httpx.Client per concurrent request, each with a pool of one connection, lent
        # out LIFO. A single client shared by every sender thread serialises them all on its
        # pool's lock, and each request scans every pooled connection under that lock: with
        # 64 in flight that was about a quarter of the client's CPU. The bound on connections
        # is kept: at most `max_connections` clients (so connections) ever exist.
        self.max_connections = max(1, max_connections)
        self._headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": user_agent,
        }
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT_MAX))
        self._limits = httpx.Limits(
            max_connections=1,
            max_keepalive_connections=1,
            # shorter than any server's idle timeout, so a pooled connection is not closed
            # under us mid-request (which would make the answer UNCERTAIN)
            keepalive_expiry=5.0,
        )
        self._transport = transport
        # built once (about 40 ms), here rather than at the first request, whose departure the
        # sender has already counted: shared by the clients
        self._ssl_context = httpx.create_ssl_context()
        self._idle: list[httpx.Client] = []  # LIFO: the most recently used connection is reused first
        self._clients: list[httpx.Client] = []
        self._lending = threading.Condition()
        self._closed = False

    def _borrow(self) -> httpx.Client:
        with self._lending:
            while True:
                if self._closed:
                    raise CampaignError("ApiClient: used after close()", exit_code=ExitCode.INTERNAL)
                if self._idle:
                    return self._idle.pop()
                if len(self._clients) < self.max_connections:
                    break
                self._lending.wait()
            client = httpx.Client(
                headers=self._headers,
                timeout=self._timeout,
                limits=self._limits,
                verify=self._ssl_context,
                follow_redirects=False,  # never carry credentials to another address
                transport=self._transport,
            )
            self._clients.append(client)
            return client

    def _give_back(self, client: httpx.Client) -> None:
        with self._lending:
            self._idle.append(client)
            self._lending.notify()

    def close(self) -> None:
        with self._lending:
            self._closed = True
            clients, self._clients, self._idle = self._clients, [], []
            self._lending.notify_all()
        for client in clients:
            client.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ApiClient(base_url={self.base_url!r}, credentials={self.credentials!r})"

    def url_for(self, batch: Batch) -> str:
        path = vendor.V2_MESSAGES_PATH if batch.api == "v2" else vendor.V1_SMS_PATH
        return self.base_url + path

    def send(self, batch: Batch, on_departure: Callable[[], None] | None = None) -> Answer:
        """POST `batch` once and classify the result. Never raises for network or HTTP trouble.

        `on_departure` is called when the request's first bytes are about to be written
        (httpcore's `trace` extension), after any connection set-up: the moment the
        vendor's TPS window counts. Measured before the call instead, a new connection's
        handshake made the first request of a run arrive 18 ms late, and the request a
        second after it then early (7020)."""
        if not batch.key or len(batch.key) > vendor.IDEMPOTENCY_KEY_MAX:
            raise CampaignError(
                f"batch key {batch.key!r} is not a valid {vendor.IDEMPOTENCY_HEADER} "
                f"(1-{vendor.IDEMPOTENCY_KEY_MAX} characters)",
                exit_code=ExitCode.INTERNAL,
            )
        content = batch.json().encode("utf-8")
        headers = {**self._auth_headers, vendor.IDEMPOTENCY_HEADER: batch.key}
        client = self._borrow()
        try:
            extensions = {"trace": _on_headers_sent(on_departure)} if on_departure is not None else None
            with client.stream("POST", self.url_for(batch), content=content, headers=headers,
                               extensions=extensions) as response:
                body, read_error = self._read_body(response)
                return self._classify_response(response, body, read_error)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError) as exc:
            return self._transport_answer(Outcome.RETRY, connect_failure(exc, self.base_url), exc)
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as exc:
            return self._transport_answer(Outcome.REJECTED, "the request could not be made", exc)
        except httpx.ReadTimeout as exc:
            return self._transport_answer(
                Outcome.UNCERTAIN, f"no answer within {self.timeout:g}s, the vendor may have the request", exc
            )
        except (httpx.TransportError, httpx.StreamError) as exc:
            # WriteError/WriteTimeout (part of the request may have left), ReadError,
            # RemoteProtocolError (connection closed or garbled after sending), ...
            return self._transport_answer(
                Outcome.UNCERTAIN, "the connection failed after sending began, the vendor may have the request", exc
            )
        except httpx.HTTPError as exc:  # anything else httpx may grow
            return self._transport_answer(Outcome.UNCERTAIN, "the request failed", exc)
        finally:
            self._give_back(client)

    @staticmethod
    def _read_body(response: httpx.Response) -> tuple[bytes, Exception | None]:
        """The answer body (at most MAX_BODY_BYTES); a failure while reading it is returned,
        since the status line has already arrived and decides the outcome."""
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size >= MAX_BODY_BYTES:
                    break
        except (httpx.HTTPError, httpx.StreamError) as exc:
            return b"".join(chunks), exc
        return b"".join(chunks)[:MAX_BODY_BYTES], None

    def _classify_response(self, response: httpx.Response, body: bytes, read_error: Exception | None) -> Answer:
        status = response.status_code
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        data: Any = None
        if body:
            try:
                data = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                data = None
        fields = data if isinstance(data, dict) else {}

        if 200 <= status < 300:
            message_id = fields.get("messageId")
            message_id = str(message_id) if isinstance(message_id, (str, int)) and str(message_id) else None
            text = _status_line(response)
            if read_error is not None:
                text += f" (the answer body was cut short: {type(read_error).__name__})"
            elif message_id is None:
                text += " (no messageId in the answer)"
            return Answer(Outcome.ACCEPTED, status, None, self._clean(text), message_id, retry_after)

        raw_code = fields.get("code")
        code = str(raw_code) if isinstance(raw_code, (str, int)) and not isinstance(raw_code, bool) else None
        code = code.strip() if code else None
        code = code or None
        vendor_message = fields.get("message")
        vendor_text = str(vendor_message).strip() if isinstance(vendor_message, (str, int, float)) else ""

        if code is not None:
            meaning = vendor.error_meaning(code)
            text = f"{_status_line(response)}: {code}"
            if vendor_text:
                text += f" {vendor_text}"
            if vendor_text.rstrip(".").lower() != meaning.rstrip(".").lower():
                text += f" ({meaning})"
        elif vendor_text:
            text = f"{_status_line(response)}: {vendor_text}"
        elif status in (401, 403):
            text = f"{_status_line(response)}: {AUTH_FAILED_MESSAGE}"
        elif body and data is None:
            # redacted whole, then cut: a cut first could keep all but the last characters of a secret
            snippet = _one_line(redact(body.decode("utf-8", "replace"), self.credentials), 200)
            text = f"{_status_line(response)}: {snippet}"
        else:
            text = _status_line(response)
        if code in AUTH_FAILURE_CODES and "WEBEX_CONNECT" not in text:
            text += " - check WEBEX_CONNECT_SERVICE_KEY / WEBEX_CONNECT_JWT"
        if 300 <= status < 400:
            location = response.headers.get("Location")
            text += f" (redirect to {location} not followed)" if location else " (redirect not followed)"

        if status == 409:
            text += (
                " (a conflict may mean the Idempotency-Key was already used:"
                " an earlier attempt may have been taken)"
            )
            return Answer(Outcome.UNCERTAIN, status, code, self._clean(text), None, retry_after)
        if (
            status == 408
            or status == 429
            or status in vendor.RATE_LIMIT_HTTP_STATUSES
            or status >= 500
            or code in vendor.RETRYABLE_CODES
        ):
            outcome = Outcome.RETRY
        else:
            outcome = Outcome.REJECTED
        return Answer(outcome, status, code, self._clean(text), None, retry_after)

    def _transport_answer(self, outcome: Outcome, what: str, exc: BaseException) -> Answer:
        detail = str(exc).strip()
        detail = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        return Answer(outcome, None, None, self._clean(f"{what} ({detail})"), None, None)

    def _clean(self, text: str) -> str:
        # redact before and after flattening, so a secret split by a line break is caught too
        return redact(_one_line(redact(text, self.credentials)), self.credentials)


def env_redactor(environ: Mapping[str, str]) -> Callable[[str], str] | None:
    """A function redacting the credentials `environ` holds, or None when it holds none:
    read once, so a command can redact every value it shows before a reporter wraps or
    cuts it (a key cut in two is no longer found by a later redaction)."""
    try:
        secrets = Credentials.from_env(environ).secrets
    except CampaignError:  # unreadable or conflicting settings: redact the raw values at least
        secrets = tuple(v for v in (environ.get(SERVICE_KEY_ENV), environ.get(JWT_ENV)) if v)
    if not secrets:
        return None
    credentials = Credentials(*secrets[:2])
    return lambda text: redact(text, credentials)
