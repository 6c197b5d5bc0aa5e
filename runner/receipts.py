"""Receipts: the vendor's delivery webhooks, recorded in the ledger.

Acceptance by the API only means "queued"; what reached handsets arrives later as
`deliveryInfoNotification` posts to notifyUrl. `campaign receipts listen` is that
webhook endpoint: it stores each receipt against the destination it belongs to, so
`campaign status` can say what was delivered, not just what was sent.

The endpoint faces the internet, so it runs on uvicorn (a production ASGI server) and
trusts nothing: a shared secret on every request, one method on one path, a body limit,
and no traceback in an answer or the log. A 2xx means "committed": what was not
acknowledged is left to the sender's retry (UNCONFIRMED for the vendor: runner/vendor.py),
and nothing acknowledged is lost to a crash. Receipts that arrive together are
committed together (group commit, one transaction and one fsync for many), by one writer
that runs the ledger's blocking calls off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from . import vendor
from .errors import CampaignError, ExitCode
from .ledger import Ledger

MAX_BODY_BYTES: Final = 1 << 20  # a webhook body is a few hundred bytes; a list of receipts stays far below
MAX_TOKEN_FILE_BYTES: Final = 4096
MIN_TOKEN_CHARS: Final = 16  # a guessable secret on an internet-facing endpoint is no secret
MAX_RECEIPTS_PER_COMMIT: Final = 2000  # one transaction stays short even when a queue has built up
MAX_CONCURRENT_REQUESTS: Final = 256  # beyond this uvicorn answers 503; bounds memory
BODY_TIMEOUT_SECONDS: Final = 30.0  # a sender that trickles its body must not hold one of those slots forever
DEFAULT_PATH: Final = "/receipts"
TOKEN_ENV: Final = "CAMPAIGN_RECEIPTS_TOKEN"
TOKEN_FILE_ENV: Final = "CAMPAIGN_RECEIPTS_TOKEN_FILE"

LOG = logging.getLogger("campaign.receipts")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class ReceiptTally:
    matched: int
    unmatched: int


def parse_receipts(body: bytes) -> list[Mapping[str, Any]]:
    """One envelope, or a list of them; anything else is a ValueError with a reason."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"receipt is not JSON: {error}") from None
    except RecursionError:  # 100,000 `[`: the decoder gives up before the stack does
        raise ValueError("receipt is not JSON: nested too deeply") from None
    if b"\\u" in body or b"\\U" in body:
        try:  # a lone surrogate ("\ud83d") decodes, but no database can store it
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("receipt is not JSON: a string holds a lone surrogate") from None
    items = data if isinstance(data, list) else [data]
    receipts: list[Mapping[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("receipt is not a JSON object")
        inner = item.get(vendor.RECEIPT_ENVELOPE, item)
        if not isinstance(inner, dict) or not isinstance(inner.get("deliveryInfo"), dict):
            raise ValueError(f"receipt has no {vendor.RECEIPT_ENVELOPE}.deliveryInfo object")
        receipts.append(item)
    return receipts


def record_receipts(ledger: Ledger, receipts: Iterable[Mapping[str, Any]], campaign_id: str | None = None) -> ReceiptTally:
    matched = unmatched = 0
    for receipt in receipts:
        if ledger.record_receipt(campaign_id, receipt):
            matched += 1
        else:
            unmatched += 1
    return ReceiptTally(matched, unmatched)


# --- the shared secret --------------------------------------------------------------


def receipts_token(environ: Mapping[str, str]) -> str | None:
    """The token from CAMPAIGN_RECEIPTS_TOKEN or the file CAMPAIGN_RECEIPTS_TOKEN_FILE names.

    Empty counts as unset; both set is refused (no silent precedence). The value is never
    part of a message: it is the only thing standing between the internet and the ledger.
    """
    value = environ.get(TOKEN_ENV, "").strip()
    file_name = environ.get(TOKEN_FILE_ENV, "").strip()
    if value and file_name:
        raise CampaignError(f"both {TOKEN_ENV} and {TOKEN_FILE_ENV} are set", exit_code=ExitCode.USAGE,
                            hint=f"set only one of them ({TOKEN_FILE_ENV} names a file holding the token)")
    source = TOKEN_ENV
    if file_name:
        value = _read_token_file(Path(file_name))
        source = f"{TOKEN_FILE_ENV} ({file_name})"
    if not value:
        return None
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in value):
        raise CampaignError(f"{source} holds a space, a line break or a non-ASCII character",
                            exit_code=ExitCode.USAGE, hint="the token must be one word of printable ASCII")
    if len(value) < MIN_TOKEN_CHARS:
        raise CampaignError(f"{source} is shorter than {MIN_TOKEN_CHARS} characters", exit_code=ExitCode.USAGE,
                            hint='make one with: python3 -c "import secrets; print(secrets.token_urlsafe(32))"')
    return value


def _read_token_file(path: Path) -> str:
    where = f"{TOKEN_FILE_ENV} ({path})"
    try:
        # O_NONBLOCK: a FIFO must be refused, not waited on
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise CampaignError(f"cannot read {where}: {error.strerror or error}", exit_code=ExitCode.USAGE,
                            hint=f"{TOKEN_FILE_ENV} must name a readable file holding only the token") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CampaignError(f"{where} is not a regular file", exit_code=ExitCode.USAGE,
                                hint=f"{TOKEN_FILE_ENV} must name a file holding only the token")
        data = b""
        while len(data) <= MAX_TOKEN_FILE_BYTES and (chunk := os.read(fd, MAX_TOKEN_FILE_BYTES + 1 - len(data))):
            data += chunk
    except OSError as error:
        raise CampaignError(f"cannot read {where}: {error.strerror or error}", exit_code=ExitCode.USAGE,
                            hint=f"{TOKEN_FILE_ENV} must name a readable file holding only the token") from None
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise CampaignError(f"{where} is larger than {MAX_TOKEN_FILE_BYTES} bytes", exit_code=ExitCode.USAGE,
                            hint=f"{TOKEN_FILE_ENV} must name a file holding only the token")
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CampaignError(f"{where} is not UTF-8 text", exit_code=ExitCode.USAGE,
                            hint="the token must be one word of printable ASCII") from None
    if not value:
        raise CampaignError(f"{where} is empty", exit_code=ExitCode.USAGE,
                            hint=f"{TOKEN_FILE_ENV} must name a file holding the token")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen_auth(host: str, token: str | None, no_auth: bool) -> None:
    """Anyone who can reach an endpoint without a secret can write receipts into the
    ledger; that is acceptable only when nobody but this machine can reach it."""
    if no_auth and not is_loopback(host):
        raise CampaignError(f"--no-auth is refused on {host}: only a loopback address may listen without a token",
                            exit_code=ExitCode.USAGE,
                            hint=f"set {TOKEN_ENV} (or {TOKEN_FILE_ENV}) instead, or listen on 127.0.0.1")
    if token is None and not no_auth:
        raise CampaignError("no receipts token: the listener needs a shared secret",
                            exit_code=ExitCode.USAGE,
                            hint=f"set {TOKEN_ENV} or {TOKEN_FILE_ENV} (and send it as `Authorization: Bearer "
                                 "TOKEN` or as the basic-auth password), or use --no-auth on a loopback address")


def authorized(header: bytes | None, token: bytes) -> bool:
    """`Bearer TOKEN`, or HTTP basic auth whose password is TOKEN (any user name), compared
    in constant time so the answer's timing tells nothing about the token."""
    if header is None:
        return False
    scheme, _, credentials = header.strip().partition(b" ")
    credentials = credentials.strip()
    scheme = scheme.lower()
    if scheme == b"bearer":
        return hmac.compare_digest(credentials, token)
    if scheme == b"basic":
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            return False
        _, colon, password = decoded.partition(b":")
        return bool(colon) and hmac.compare_digest(password, token)
    return False


# --- group commit -------------------------------------------------------------------


class LedgerUnavailable(Exception):
    """The commit failed (disk full, database locked past its timeout): answer 503 (retry
    later), never a 2xx for a receipt that is not stored."""


class GroupCommitter:
    """One writer for the whole listener: requests queue their receipts; the writer takes
    whatever has arrived, records it in one ledger transaction on its own thread, and then
    answers every request of the group. Under load a group grows while the previous one
    commits, so fsyncs per receipt fall as traffic rises."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._queue: asyncio.Queue[tuple[list[Mapping[str, Any]], asyncio.Future[list[bool]]] | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="receipts-writer")

    def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._drain(self._queue))

    async def stop(self) -> None:
        """Commit what is queued, then stop; called once the server answers no more requests."""
        if self._task is not None and self._queue is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = self._queue = None
        self._executor.shutdown(wait=True)

    async def record(self, receipts: list[Mapping[str, Any]]) -> list[bool]:
        """Matched (True) or unmatched (False) per receipt, once committed."""
        self.start()
        assert self._queue is not None and self._task is not None
        if self._task.done():  # the writer is gone (stopped, or died): nothing would answer
            raise LedgerUnavailable()
        answer: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((receipts, answer))
        return await answer

    async def _drain(self, queue: asyncio.Queue[tuple[list[Mapping[str, Any]], asyncio.Future[list[bool]]] | None]) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await queue.get()
            if first is None:
                return
            group = [first]
            count = len(first[0])
            while count < MAX_RECEIPTS_PER_COMMIT and not queue.empty():
                item = queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                group.append(item)
                count += len(item[0])
            try:
                outcomes = await loop.run_in_executor(self._executor, self._commit,
                                                      [receipts for receipts, _ in group])
            except Exception as error:  # the executor itself failed: answer, never leave a request hanging
                outcomes = [_unavailable(error)] * len(group)
            for (_, answer), outcome in zip(group, outcomes):
                if answer.done():  # its request was cancelled (server shutting down)
                    continue
                if isinstance(outcome, BaseException):
                    answer.set_exception(outcome)
                else:
                    answer.set_result(outcome)

    def _commit(self, requests: list[list[Mapping[str, Any]]]) -> list[list[bool] | BaseException]:
        """One transaction for the group; if it fails, each request alone, so one request
        that cannot be stored does not cost the others their answer."""
        try:
            flat = self.ledger.record_receipts([receipt for receipts in requests for receipt in receipts])
        except Exception as error:
            if len(requests) == 1:
                return [_unavailable(error)]
        else:
            outcomes: list[list[bool] | BaseException] = []
            start = 0
            for receipts in requests:
                outcomes.append(flat[start:start + len(receipts)])
                start += len(receipts)
            return outcomes
        results: list[list[bool] | BaseException] = []
        for receipts in requests:
            try:
                results.append(self.ledger.record_receipts(receipts))
            except Exception as error:
                results.append(_unavailable(error))
        return results


def _unavailable(error: Exception) -> LedgerUnavailable:
    LOG.error("receipts: cannot store a receipt: %s: %s", type(error).__name__, str(error).splitlines()[0][:200]
              if str(error) else "")
    return LedgerUnavailable()


# --- the ASGI application -------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    status: int
    payload: Mapping[str, Any] | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()


_NOT_FOUND: Final = _Answer(404, {"error": "not found"})
_NOT_ALLOWED: Final = _Answer(405, {"error": "method not allowed"}, ((b"allow", b"POST"),))
_UNAUTHORIZED: Final = _Answer(401, None, ((b"www-authenticate", b'Bearer realm="campaign receipts"'),))
_TOO_LARGE: Final = _Answer(413, {"error": f"body larger than {MAX_BODY_BYTES} bytes"}, ((b"connection", b"close"),))
_UNAVAILABLE: Final = _Answer(503, {"error": "receipt not stored, retry later"}, ((b"retry-after", b"5"),))
_BROKEN: Final = _Answer(500, None)
_TOO_SLOW: Final = _Answer(408, {"error": "body not received in time"}, ((b"connection", b"close"),))


class ReceiptsApp:
    """A plain ASGI callable (no framework: one route, one method, one body kind)."""

    def __init__(self, ledger: Ledger, *, token: str | None, path: str = DEFAULT_PATH,
                 body_timeout: float = BODY_TIMEOUT_SECONDS) -> None:
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', not {path!r}")
        self.path = path
        self.body_timeout = body_timeout
        self.token = token.encode("ascii") if token is not None else None
        self.committer = GroupCommitter(ledger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            answer = await self._handle(scope, receive)
        except Exception as error:  # a bug: one line in the log, no detail to the client
            LOG.error("receipts: unexpected %s", type(error).__name__)
            answer = _BROKEN
        if answer is not None:
            await _send(send, answer)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.committer.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.committer.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(self, scope: Scope, receive: Receive) -> _Answer | None:
        if scope["path"] != self.path:
            return _NOT_FOUND
        if scope["method"] != "POST":
            return _NOT_ALLOWED
        headers = dict(scope["headers"])  # names arrive lower-cased
        if self.token is not None and not authorized(headers.get(b"authorization"), self.token):
            return _UNAUTHORIZED
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return _Answer(400, {"error": "bad Content-Length"}, ((b"connection", b"close"),))
            if int(declared) > MAX_BODY_BYTES:
                return _TOO_LARGE  # before reading a byte of it
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await self._body(receive)
        except TimeoutError:
            return _TOO_SLOW
        if body is None or isinstance(body, _Answer):
            return body
        try:
            receipts = parse_receipts(body)
        except ValueError as error:
            return _Answer(400, {"error": str(error)})
        try:
            outcomes = await self.committer.record(receipts)
        except LedgerUnavailable:
            return _UNAVAILABLE
        matched = sum(outcomes)
        return _Answer(200, {"matched": matched, "unmatched": len(outcomes) - matched})

    @staticmethod
    async def _body(receive: Receive) -> bytes | _Answer | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the client hung up: nobody to answer, nothing stored
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:  # chunked bodies have no Content-Length to check first
                return _TOO_LARGE
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _send(send: Send, answer: _Answer) -> None:
    body = json.dumps(answer.payload).encode() if answer.payload is not None else b""
    headers = [(b"content-length", str(len(body)).encode())]
    if body:
        headers.append((b"content-type", b"application/json"))
    headers.extend(answer.headers)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --- serving it -----------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts: the real port is known (port 0
    in tests) and a taken port is a clear error instead of a log line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a crash
        sock.bind((host.strip("[]"), port))
        sock.listen(1024)
    except OSError as error:
        sock.close()
        raise CampaignError(f"cannot listen on {host}:{port}: {error.strerror or error}", exit_code=ExitCode.USAGE,
                            hint="choose another --port or --host") from None
    sock.set_inheritable(True)
    return sock


class ReceiptListener:
    """The app on uvicorn, on a socket of its own. `serve()` blocks (the CLI; Ctrl-C or
    SIGTERM ends it gracefully: requests in flight are answered first); `start()`/`stop()`
    run it on a thread (tests, rehearsals)."""

    def __init__(self, ledger: Ledger, *, token: str | None, host: str = "127.0.0.1", port: int = 0,
                 path: str = DEFAULT_PATH, body_timeout: float = BODY_TIMEOUT_SECONDS) -> None:
        import uvicorn  # the sending commands never pay for the server

        self.app = ReceiptsApp(ledger, token=token, path=path, body_timeout=body_timeout)
        self.socket = bind(host, port)
        config = uvicorn.Config(self.app, http="httptools", lifespan="on", log_level="warning", access_log=False,
                                server_header=False, limit_concurrency=MAX_CONCURRENT_REQUESTS)
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        shown = f"[{host}]" if ":" in str(host) else str(host)
        return f"http://{shown}:{port}{self.app.path}"

    def serve(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self) -> str:
        """The socket already listens, so requests made right away wait in its backlog."""
        self.thread = threading.Thread(target=self.serve, name="receipts", daemon=True)
        self.thread.start()
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
