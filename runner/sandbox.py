"""A local stand-in for the Webex Connect messaging API, on loopback only.

Rehearsals (`campaign apply --sandbox`) and the project's own tests talk real HTTP to
it, so the client, the retry logic and the ledger are exercised exactly as against the
vendor. Faults (latency, 500s, dropped connections after acceptance) are injected on
demand, because exactly-once delivery is only believable once it has survived them.

This module is the server side of that: authentication, idempotency, the TPS window,
faults and receipts. What the vendor accepts in a request body lives in
`runner.sandbox_checks`, which is deliberately at least as strict as the vendor
documents (fact sheet §1-§6): a client that works here should work there.

Receipts are posted only to loopback URLs; any other notifyUrl is kept in an outbox,
so a rehearsal of a real campaign file can never call a customer's webhook.
"""

from __future__ import annotations

import base64
import bisect
import binascii
import functools
import hashlib
import hmac
import ipaddress
import json
import math
import queue
import random
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from types import TracebackType
from typing import Any, Final, cast
from urllib.parse import urlsplit

import httpx

from runner import sandbox_reference as vendor  # the sandbox's own copy of the reference, never runner.vendor
from runner.errors import CampaignError, ExitCode
from runner.model import Encoding
from runner.sandbox_checks import (
    LINK,
    Plan,
    Reject,
    check_content_type,
    invalid,
    meaning,
    parse_json,
    validate_v1,
    validate_v2,
)
from runner.sandbox_reference import (
    RECEIPT_CLICKED,
    AUTH_FAILED,
    INTERNAL_ERROR,
    INVALID_JSON,
    JSON_TOO_LARGE,
    JWT_ALGORITHM,
    KEY_MISSING,
    PARAM_INVALID,
    RECEIPT_DELIVERED,
    V1_AUTH_FAILED_MESSAGE,
    V2_ACCEPTED_STATUS,
)

# --- the sandbox's own choices ---------------------------------------------------------

MAX_BODY_BYTES: Final = 1 << 20
DRAIN_LIMIT_BYTES: Final = 16 << 20  # past this an oversized body is not read, the socket is closed
IDLE_TIMEOUT_SECONDS: Final = 60.0
RECEIPT_POST_TIMEOUT_SECONDS: Final = 2.0
TPS_WINDOW_SECONDS: Final = 1.0
REPLAYED_HEADER: Final = "Idempotent-Replayed"
SANDBOX_CARRIER: Final = "SANDBOX"
INSPECT_PREFIX: Final = "/_sandbox/"
IDEMPOTENCY_CONFLICT_MESSAGE: Final = f"{vendor.IDEMPOTENCY_HEADER} reused with a different body"


def _loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class SandboxSettings:
    host: str = "127.0.0.1"
    port: int = 0
    service_key: str | None = field(default=None, repr=False)
    jwt_secret: str | None = field(default=None, repr=False)  # Base64, as the vendor issues it
    tps: int | None = None
    latency: float = 0.0
    fail_rate: float = 0.0
    drop_rate: float = 0.0
    seed: int | None = None
    templates: Mapping[str, str] = field(default_factory=dict)
    receipts: bool = True
    receipt_delay: float = 0.0
    # sent as `Authorization: Bearer ...` with each receipt, as a receiver behind a token needs
    receipts_token: str | None = field(default=None, repr=False)
    # Tests of what the vendor's deduplication saves us from: every request is stored,
    # a repeated Idempotency-Key included, as if the vendor did not deduplicate.
    ignore_idempotency: bool = False
    # Accept, store, then close the connection unanswered, for chosen requests: by their
    # 1-based number among message requests, or by Idempotency-Key (its first acceptance
    # only; a resend with the same key is replayed and answered).
    drop_requests: frozenset[int] = frozenset()
    drop_keys: frozenset[str] = frozenset()
    # The vendor's "now" for schedule checks (sendAt, expireAt); None = the real clock. A
    # rehearsal under CAMPAIGN_NOW passes its pinned time, so a dated example stays sendable.
    now: datetime | None = None

    def __post_init__(self) -> None:
        """Refuse at construction, not on first request: a rehearsal that is silently
        reachable from the network, or misconfigured, is worse than one that never starts."""
        if not _loopback_host(self.host):
            raise ValueError(f"sandbox host must be a loopback address, not {self.host!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
        if self.service_key == "":
            raise ValueError("service_key must be non-empty (None accepts any key)")
        if self.jwt_secret is not None:
            try:
                base64.b64decode(self.jwt_secret, validate=True)
            except binascii.Error:
                raise ValueError("jwt_secret must be Base64 (the vendor's Service Secret)") from None
        if self.tps is not None and self.tps < 1:
            raise ValueError(f"tps must be at least 1, not {self.tps}")
        rates = (self.fail_rate, self.drop_rate)
        if any(not 0.0 <= r <= 1.0 for r in rates) or sum(rates) > 1.0:
            raise ValueError("fail_rate and drop_rate must be within 0..1 and add up to at most 1")
        if self.latency < 0 or self.receipt_delay < 0:
            raise ValueError("latency and receipt_delay must not be negative")


@dataclass(frozen=True)
class StoredMessage:
    message_id: str
    msisdn: str
    correlation_id: str | None
    text: str
    api: str
    idempotency_key: str | None
    segments: int
    accepted_at: float  # epoch seconds, when stored
    arrived_at: float  # epoch seconds, when its request's headers were in (what the TPS limit counts)

    def as_json(self) -> dict[str, Any]:
        return {"messageId": self.message_id, "msisdn": self.msisdn, "correlationId": self.correlation_id,
                "text": self.text, "api": self.api, "idempotencyKey": self.idempotency_key,
                "segments": self.segments, "acceptedAt": self.accepted_at, "arrivedAt": self.arrived_at}


# --- answers and refusals ----------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    status: int
    body: Any  # JSON-able; None = no body at all (the v2 401)
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False


def _refused(reject: Reject) -> _Answer:
    """A refusal is raised by the request rules, which know nothing of HTTP answers."""
    return _Answer(reject.status, reject.body, reject.headers)


def _now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _jwt_valid(token: str, secret: bytes | None) -> bool:
    """Stdlib HS256 check: the vendor's JWT needs nothing more than HMAC-SHA256."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        header, claims = json.loads(_b64url(parts[0])), json.loads(_b64url(parts[1]))
        signature = _b64url(parts[2])
        signed = f"{parts[0]}.{parts[1]}".encode("ascii")
    except ValueError:
        return False
    if not isinstance(header, dict) or header.get("alg") != JWT_ALGORITHM or not isinstance(claims, dict):
        return False
    iss, iat = claims.get("iss"), claims.get("iat")
    if not isinstance(iss, str) or not iss or isinstance(iat, bool) or not isinstance(iat, (int, float)):
        return False
    if secret is None:
        return True
    return hmac.compare_digest(hmac.new(secret, signed, hashlib.sha256).digest(), signature)


def _receipt(message: StoredMessage, code: str, callback_data: str) -> dict[str, Any]:
    status = vendor.RECEIPT_STATUS_BY_CODE[code]
    info: dict[str, Any] = {"timeStamp": _now_iso(), "Description": status, "code": code}
    if code == RECEIPT_CLICKED:  # "<clicked long URL>|<client IP>"
        link = LINK.search(message.text)
        info["Description"] = f"{link.group() if link else ''}|127.0.0.1"
    if code == RECEIPT_DELIVERED:  # the vendor sends messageCount only on Delivered/Failed
        info["messageCount"] = str(message.segments)
    info.update({"deliveryChannel": "SMS", "additionalInfo": "", "destination": message.msisdn.lstrip("+"),
                 "destinationType": "msisdn", "deliveryStatus": status})
    return {vendor.RECEIPT_ENVELOPE: {"deliveryInfo": info, "carrier": SANDBOX_CARRIER, "subtid": "",
                                      "transid": message.message_id, "callbackData": callback_data,
                                      "correlationid": message.correlation_id or ""}}


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    body: bytes
    body_error: Reject | None
    key: str
    authorization: str
    idempotency_key: str | None
    arrived: float = 0.0  # time.monotonic() when the request's headers were in: the TPS window counts arrivals
    content_type: str | None = None  # the Content-Type header: the vendor reads only JSON


# --- the sandbox -----------------------------------------------------------------------


class Sandbox:
    """All state sits behind one lock: requests are tiny, and one lock makes the
    idempotency check, the TPS window and the store a single atomic step."""

    def __init__(self, settings: SandboxSettings = SandboxSettings()) -> None:
        self.settings = settings
        self._jwt_key = None if settings.jwt_secret is None else base64.b64decode(settings.jwt_secret)
        self._lock = threading.Lock()
        self._templates = dict(settings.templates)
        self._rng = random.Random(settings.seed)
        self._messages: list[StoredMessage] = []
        self._counts: Counter[str] = Counter()
        self._seen: dict[str, tuple[float, str, _Answer]] = {}
        self._window: deque[tuple[float, int]] = deque()
        self._outbox: list[dict[str, Any]] = []
        self._receipts: queue.Queue[tuple[float, str, Callable[[], dict[str, Any]]] | None] = queue.Queue()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    # lifecycle
    def start(self) -> str:
        if self._server is not None:
            raise RuntimeError("sandbox already started")
        host = "127.0.0.1" if self.settings.host.lower() == "localhost" else self.settings.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = _Server((host, self.settings.port), self, family)
        self._stopping.clear()
        self._receipts = queue.Queue()  # a stop() leaves its sentinel behind
        self._threads = [
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                             name="sandbox-http", daemon=True),
            threading.Thread(target=self._post_receipts, name="sandbox-receipts", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self.url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        self._receipts.put(None)
        server.shutdown()
        server.close_connections()  # keep-alive connections would otherwise outlive the server
        server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("sandbox not started")
        host, port = str(self._server.server_address[0]), int(self._server.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    # inspection
    def messages(self) -> list[StoredMessage]:
        with self._lock:
            return list(self._messages)

    def stats(self) -> dict[str, int]:
        with self._lock:
            base = dict.fromkeys(("requests", "accepted_requests", "accepted_messages", "rejected", "dropped",
                                  "replayed", "receipts_posted", "receipts_failed", "receipts_outboxed"), 0)
            return {**base, **self._counts}

    def outbox(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._outbox)

    def add_template(self, template_id: str, text: str) -> None:
        with self._lock:
            self._templates[template_id] = text

    def reset(self) -> None:
        with self._lock:
            self._messages.clear()
            self._counts.clear()
            self._seen.clear()
            self._window.clear()
            self._outbox.clear()

    # request handling
    def _route(self, request: _Request) -> _Answer:
        path, method = request.path, request.method
        if method == "POST" and path in (vendor.V2_MESSAGES_PATH, vendor.V1_SMS_PATH):
            answer = self._send("v2" if path == vendor.V2_MESSAGES_PATH else "v1", request)
            if self.settings.latency:
                time.sleep(self.settings.latency)
            return answer
        if path.startswith(INSPECT_PREFIX):
            found = self._inspect(method, path[len(INSPECT_PREFIX):])
            if found is not None:
                return found
        return _Answer(404, {"code": "404", "message": f"no such endpoint: {method} {path}"})

    def _inspect(self, method: str, name: str) -> _Answer | None:
        if method == "POST" and name == "reset":
            self.reset()
            return _Answer(200, {"reset": True})
        if method != "GET":
            return None
        if name == "messages":
            return _Answer(200, [m.as_json() for m in self.messages()])
        if name == "stats":
            return _Answer(200, self.stats())
        if name == "receipts":
            return _Answer(200, self.outbox())
        return None

    def _send(self, api: str, request: _Request) -> _Answer:
        with self._lock:
            self._counts["requests"] += 1
            number = self._counts["requests"]
        try:
            return self._accept(api, request, number)
        except Reject as reject:
            with self._lock:
                self._counts["rejected"] += 1
                self._counts[f"rejected_{reject.code}"] += 1
            return _refused(reject)

    def _authenticate(self, api: str, key: str, authorization: str) -> None:
        """JWT wins over the key when both are sent (vendor fact); on v1 a bare
        Authorization value is the service key itself."""
        scheme, _, token = authorization.partition(" ")
        if authorization and scheme.lower() == vendor.JWT_SCHEME.lower():
            ok = _jwt_valid(token.strip(), self._jwt_key)
            failure = None if ok else AUTH_FAILED
        else:
            if authorization and api == "v1":
                key = authorization
            expected = self.settings.service_key
            if authorization and api == "v2":
                failure = AUTH_FAILED
            elif not key:
                failure = KEY_MISSING
            elif expected is not None and not hmac.compare_digest(key.encode(), expected.encode()):
                failure = AUTH_FAILED
            else:
                failure = None
        if failure is None:
            return
        if api == "v2":
            raise Reject(401, failure, None)
        raise Reject(403, failure, V1_AUTH_FAILED_MESSAGE if failure == AUTH_FAILED
                      else vendor.ERROR_MEANINGS[KEY_MISSING])

    def _accept(self, api: str, request: _Request, number: int = 0) -> _Answer:
        self._authenticate(api, request.key, request.authorization)
        if request.body_error is not None:
            raise request.body_error
        check_content_type(request.content_type)
        body = parse_json(request.body)
        key = request.idempotency_key
        if key is not None and not 0 < len(key) <= vendor.IDEMPOTENCY_KEY_MAX:
            raise invalid(vendor.IDEMPOTENCY_HEADER)
        canonical = json.dumps([api, body], sort_keys=True, separators=(",", ":"), default=str)
        fingerprint = hashlib.sha256(canonical.encode("ascii")).hexdigest()
        settings = self.settings
        limit = min(vendor.MAX_DESTINATIONS_PER_REQUEST, settings.tps or vendor.MAX_DESTINATIONS_PER_REQUEST)
        with self._lock:
            if key is not None and not settings.ignore_idempotency:
                replay = self._replay(key, fingerprint)
                if replay is not None:
                    return replay
            now = settings.now
            plan = validate_v2(body, self._templates, limit, now) if api == "v2" else validate_v1(body, now)
            self._check_rate(len(plan.destinations), request.arrived or time.monotonic())
            roll = self._rng.random()
            if roll < settings.fail_rate:
                raise meaning(500, INTERNAL_ERROR)
            chosen = number in settings.drop_requests or (key is not None and key in settings.drop_keys)
            return self._store(api, plan, key, fingerprint,
                               drop=chosen or roll < settings.fail_rate + settings.drop_rate,
                               arrived=request.arrived or time.monotonic())

    def _replay(self, key: str, fingerprint: str) -> _Answer | None:
        seen = self._seen.get(key)
        if seen is None or seen[0] < time.monotonic():
            self._seen.pop(key, None)
            return None
        if seen[1] != fingerprint:
            raise Reject(409, PARAM_INVALID, IDEMPOTENCY_CONFLICT_MESSAGE)
        self._counts["replayed"] += 1
        answer = seen[2]
        return replace(answer, headers=answer.headers + ((REPLAYED_HEADER, "true"),))

    def _check_rate(self, destinations: int, now: float) -> None:
        tps = self.settings.tps
        if tps is None:
            return
        # requests are checked out of arrival order (threads): keep 2 s, count arrivals after now - 1 s
        while self._window and self._window[0][0] <= time.monotonic() - 2 * TPS_WINDOW_SECONDS:
            self._window.popleft()
        # the window is kept sorted by arrival (insort): the arrivals after now - 1 s are its
        # tail, so only that second is walked, not all of the two kept
        cutoff, inside = now - TPS_WINDOW_SECONDS, 0
        for at, n in reversed(self._window):
            if at <= cutoff:
                break
            inside += n
        excess = inside + destinations - tps
        if excess <= 0:
            return
        freed, wait = 0, TPS_WINDOW_SECONDS
        for at, n in self._window:
            if at <= now - TPS_WINDOW_SECONDS:
                continue
            freed += n
            if freed >= excess:
                wait = at + TPS_WINDOW_SECONDS - now
                break
        retry_after = str(max(1, math.ceil(wait)))
        raise Reject(429, vendor.RATE_LIMIT_CODE, vendor.ERROR_MEANINGS[vendor.RATE_LIMIT_CODE],
                      (("Retry-After", retry_after),))

    def _store(self, api: str, plan: Plan, key: str | None, fingerprint: str, *, drop: bool,
               arrived: float) -> _Answer:
        message_id, stamp, accepted_at = str(uuid.uuid4()), _now_iso(), time.time()
        arrived_at = accepted_at - (time.monotonic() - arrived)
        stored = [StoredMessage(message_id, msisdn, correlation, text, api, key,
                                vendor.segments(text, unicode=plan.encoding is Encoding.UCS2), accepted_at,
                                arrived_at)
                  for msisdn, correlation, text in plan.destinations]
        self._messages.extend(stored)
        if api == "v2":
            answer = _Answer(vendor.V2_SUCCESS_STATUS, {"requestTimestamp": stamp, "messageId": message_id,
                                                        "correlationId": plan.correlation_id,
                                                        "status": V2_ACCEPTED_STATUS})
        else:
            answer = _Answer(vendor.V1_SUCCESS_STATUS, {"acceptedTime": stamp, "messageId": message_id,
                                                        "correlationId": plan.correlation_id})
        bisect.insort(self._window, (arrived, len(stored)))
        if key is not None and not self.settings.ignore_idempotency:
            self._seen[key] = (time.monotonic() + vendor.IDEMPOTENCY_WINDOW_SECONDS, fingerprint, answer)
        self._counts["accepted_requests"] += 1
        self._counts["accepted_messages"] += len(stored)
        self._counts["dropped"] += drop
        self._queue_receipts(plan, stored)
        return replace(answer, drop=drop)

    def _queue_receipts(self, plan: Plan, stored: list[StoredMessage]) -> None:
        url = plan.notify_url
        if not self.settings.receipts or url is None:
            return
        local = _loopback_host(urlsplit(url).hostname or "")
        due = time.monotonic() + self.settings.receipt_delay
        for message in stored:
            for code in plan.receipt_codes:
                if code == RECEIPT_CLICKED and not LINK.search(message.text):
                    continue  # nothing to click
                if local:
                    self._receipts.put((due, url, functools.partial(_receipt, message, code, plan.callback_data)))
                else:  # never touch the network on behalf of a rehearsal
                    self._outbox.append({"url": url, "receipt": _receipt(message, code, plan.callback_data)})
                    self._counts["receipts_outboxed"] += 1

    def _post_receipts(self) -> None:
        # Loopback only, so no proxy (trust_env) and no certificate check: a local test receiver
        # has no CA-signed certificate, and building a verifying context costs ~50 ms per start.
        headers = {"Content-Type": "application/json"}
        if self.settings.receipts_token is not None:
            headers["Authorization"] = f"Bearer {self.settings.receipts_token}"
        with httpx.Client(timeout=RECEIPT_POST_TIMEOUT_SECONDS, trust_env=False, verify=False) as client:
            while (item := self._receipts.get()) is not None:
                due, url, build = item
                if self._stopping.wait(max(0.0, due - time.monotonic())):
                    return
                try:
                    response = client.post(url, content=json.dumps(build()).encode("ascii"), headers=headers)
                    ok = response.is_success
                except Exception:  # a receiver's failure must never take the sandbox down
                    ok = False
                with self._lock:
                    self._counts["receipts_posted" if ok else "receipts_failed"] += 1


# --- HTTP plumbing -------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog (socketserver's default is 5). A sender opening 64 connections at
    # once overflowed it: the kernel dropped the handshakes it could not queue and reset
    # those connections after their request had left, which the client must read as
    # "uncertain". A vendor's front end queues far more than this.
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], sandbox: Sandbox, family: socket.AddressFamily) -> None:
        self.address_family = family
        self.sandbox = sandbox
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn) that can stall for seconds.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            for sock in list(self._open):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up mid-answer is routine here (drop_rate, killed runs)."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_SECONDS
    disable_nagle_algorithm = True  # headers and body go out in two writes; Nagle would add 40 ms each
    server_version = "campaign-runner-sandbox"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: stderr belongs to the CLI, and headers may carry keys or JWTs."""

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """JSON instead of http.server's HTML page, so every answer has one shape."""
        if self.request_version == "HTTP/0.9":  # an unparsable request line: still answer with a status line
            self.request_version = "HTTP/1.0"
        self._write(_Answer(code, {"code": str(code), "message": message or "bad request"}), close=True)

    def _dispatch(self) -> None:
        sandbox = cast(_Server, self.server).sandbox
        arrived = time.monotonic()
        try:
            body, body_error = self._read_body()
            request = _Request(self.command, urlsplit(self.path).path, body, body_error,
                               (self.headers.get(vendor.SERVICE_KEY_HEADER) or "").strip(),
                               (self.headers.get(vendor.JWT_HEADER) or "").strip(),
                               self.headers.get(vendor.IDEMPOTENCY_HEADER), arrived,
                               self.headers.get("Content-Type"))
            answer = sandbox._route(request)
        except Exception:  # a sandbox bug answers 500, it never kills the server
            answer = _refused(meaning(500, INTERNAL_ERROR))
            self.close_connection = True
        if answer.drop:
            self.close_connection = True
            return
        self._write(answer)

    def _read_body(self) -> tuple[bytes, Reject | None]:
        """Always consume the body (or close) so a keep-alive connection stays in sync."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return b"", Reject(411, INVALID_JSON, "Content-Length required")
        raw = (self.headers.get("Content-Length") or "0").strip()
        if not raw.isascii() or not raw.isdigit():
            self.close_connection = True
            return b"", Reject(400, INVALID_JSON, "Invalid Content-Length")
        length = int(raw)
        if length > MAX_BODY_BYTES:
            if length > DRAIN_LIMIT_BYTES:
                self.close_connection = True
            else:
                while length > 0 and (chunk := self.rfile.read(min(length, 1 << 16))):
                    length -= len(chunk)
            return b"", meaning(400, JSON_TOO_LARGE)
        data = self.rfile.read(length)
        if len(data) < length:
            self.close_connection = True
            return data, meaning(400, INVALID_JSON)
        return data, None

    def _write(self, answer: _Answer, *, close: bool = False) -> None:
        payload = b"" if answer.body is None else json.dumps(answer.body).encode("ascii")
        try:
            self.send_response(answer.status)
            if answer.body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in answer.headers:
                self.send_header(name, value)
            if close or self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        except OSError:
            self.close_connection = True


def serve(settings: SandboxSettings, *, ready: Callable[[str], None] | None = None) -> None:
    """Block the calling thread: the `campaign sandbox` command has nothing else to do,
    and Ctrl-C is its normal way out."""
    sandbox = Sandbox(settings)
    try:
        sandbox.start()
    except OSError as error:  # the port is taken, or the address is not this machine's
        raise CampaignError(
            f"cannot listen on {settings.host}:{settings.port}: {error.strerror or error}",
            exit_code=ExitCode.USAGE,
            hint="pick another --port, or --port 0 for a free one",
        ) from None
    try:
        if ready is not None:
            ready(sandbox.url)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return
    finally:
        sandbox.stop()
