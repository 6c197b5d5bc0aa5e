"""The vendor API client, against a scripted HTTP server on 127.0.0.1 (real sockets)."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner import __version__, vendor
from runner.client import (
    AUTH_FAILED_MESSAGE,
    Answer,
    ApiClient,
    Credentials,
    Outcome,
    parse_retry_after,
    redact,
    resolve_base_url,
)
from runner.errors import CampaignError, ExitCode
from runner.model import Batch, Destination

SECRET_KEY = "sk-Th1s1sTheServ1ceKey+/="
SECRET_JWT = "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJzdmMifQ.c2lnbmF0dXJl"
KEY_ONLY = Credentials(service_key=SECRET_KEY, jwt=None)


def make_batch(api: str = "v2", key: str = "spring-sale-0000-3f9a2c") -> Batch:
    body = {"channel": "sms", "from": "12025550100", "to": [{"msisdn": ["+447700900001"], "correlationId": "c1"}],
            "content": {"type": "text", "text": "Grüße – 20% off"}}
    return Batch(key=key, index=0, api=api, body=body,  # type: ignore[arg-type]
                 destinations=(Destination("+447700900001", "c1"),))


# --- the scripted server --------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int


Action = Callable[["Handler"], None]


def reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Action:
    def act(handler: Handler) -> None:
        data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if body is not None and not isinstance(body, bytes):
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    return act


def held_until(release: threading.Event, answered: threading.Event, most: float) -> Action:
    """Answer 201 once `release` is set, or after `most` seconds: a client that does not give
    up by then gets an ACCEPTED answer the test sees (rather than a hang or a clock reading)."""
    def act(handler: Handler) -> None:
        release.wait(most)
        answered.set()
        reply(201, {"messageId": "late"})(handler)
    return act


def close_without_answer(handler: Handler) -> None:
    handler.close_connection = True


def reset_connection(handler: Handler) -> None:
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.connection.close()
    handler.close_connection = True


def status_then_drop(handler: Handler) -> None:
    handler.wfile.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 500\r\n\r\n{\"messageId\": \"abc")
    handler.wfile.flush()
    handler.close_connection = True


@dataclass
class Script:
    answers: list[Action] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self) -> Action:
        with self.lock:
            return self.answers.pop(0) if self.answers else reply(201, {"messageId": "default-id"})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse can be seen
    server: "ScriptedServer"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        script = self.server.script
        with script.lock:
            script.seen.append(Seen("POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                                    body, self.client_address[1]))
        script.next()(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except OSError:  # the reset_connection script closed the socket under the handler
            self.close_connection = True


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script = Script()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def send_one(server: ScriptedServer, action: Action, credentials: Credentials = KEY_ONLY,
             batch: Batch | None = None, timeout: float = 5.0) -> Answer:
    server.script.answers.append(action)
    with ApiClient(server.url, credentials, timeout=timeout) as client:
        return client.send(batch or make_batch())


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET_KEY not in text and SECRET_JWT not in text, text
        assert "Th1s1sTheServ1ceKey" not in text and "c2lnbmF0dXJl" not in text, text


# --- requests as sent -----------------------------------------------------------------


def test_v2_accepted_with_key_header(server: ScriptedServer) -> None:
    batch = make_batch("v2")
    answer = send_one(server, reply(201, {"requestTimestamp": "2024-09-05T00:03:01.708-04:00",
                                          "messageId": "8f2c", "correlationId": "c1", "status": "queued"}),
                      batch=batch)
    assert answer == Answer(Outcome.ACCEPTED, 201, None, "HTTP 201 Created", "8f2c", None)
    [seen] = server.script.seen
    assert seen.path == vendor.V2_MESSAGES_PATH
    assert seen.headers[vendor.SERVICE_KEY_HEADER] == SECRET_KEY
    assert vendor.JWT_HEADER.lower() not in seen.headers
    assert seen.headers[vendor.IDEMPOTENCY_HEADER.lower()] == batch.key
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["user-agent"] == f"campaign-runner/{__version__}"
    assert json.loads(seen.body) == batch.body


def test_v1_accepted_202_with_key_header(server: ScriptedServer) -> None:
    answer = send_one(server, reply(202, {"acceptedTime": "2024-06-26T13:47:18-04:00", "messageId": "v1-id",
                                          "correlationId": "c1"}), batch=make_batch("v1"))
    assert (answer.outcome, answer.http_status, answer.message_id) == (Outcome.ACCEPTED, 202, "v1-id")
    [seen] = server.script.seen
    assert seen.path == vendor.V1_SMS_PATH
    assert seen.headers[vendor.SERVICE_KEY_HEADER] == SECRET_KEY
    assert vendor.JWT_HEADER.lower() not in seen.headers


def test_jwt_wins_and_key_is_not_sent(server: ScriptedServer) -> None:
    both = Credentials(service_key=SECRET_KEY, jwt=SECRET_JWT)
    for api in ("v2", "v1"):
        answer = send_one(server, reply(201, {"messageId": "x"}), credentials=both, batch=make_batch(api))
        assert answer.outcome is Outcome.ACCEPTED
    for seen in server.script.seen:
        assert seen.headers["authorization"] == f"Bearer {SECRET_JWT}"
        assert vendor.SERVICE_KEY_HEADER not in seen.headers
        assert SECRET_KEY.encode() not in seen.body


def test_base_url_prefix_is_kept(server: ScriptedServer) -> None:
    with ApiClient(server.url + "/sandbox/", KEY_ONLY) as client:
        assert client.send(make_batch()).outcome is Outcome.ACCEPTED
    assert server.script.seen[0].path == "/sandbox" + vendor.V2_MESSAGES_PATH


def test_connections_are_reused(server: ScriptedServer) -> None:
    with ApiClient(server.url, KEY_ONLY) as client:
        answers = [client.send(make_batch()) for _ in range(5)]
    assert all(a.outcome is Outcome.ACCEPTED for a in answers)
    assert len({seen.client_port for seen in server.script.seen}) == 1


def test_concurrent_sends_share_one_client(server: ScriptedServer) -> None:
    results: list[Answer] = []
    with ApiClient(server.url, KEY_ONLY, max_connections=8) as client:
        def work() -> None:
            for _ in range(10):
                results.append(client.send(make_batch()))
        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(results) == 80 and all(a.outcome is Outcome.ACCEPTED for a in results)
    assert len({seen.client_port for seen in server.script.seen}) <= 8


# --- classification of answers --------------------------------------------------------


def test_400_vendor_error_is_rejected(server: ScriptedServer) -> None:
    answer = send_one(server, reply(400, {"code": "7004", "message": "Invalid parameter - sendAt"}))
    assert (answer.outcome, answer.http_status, answer.code, answer.message_id) == (
        Outcome.REJECTED, 400, "7004", None)
    assert answer.message == "HTTP 400 Bad Request: 7004 Invalid parameter - sendAt (Invalid parameters/values)"


def test_integer_code_is_tolerated(server: ScriptedServer) -> None:
    answer = send_one(server, reply(400, {"code": 7000, "message": "Invalid JSON"}))
    assert (answer.outcome, answer.code) == (Outcome.REJECTED, "7000")
    assert answer.message == "HTTP 400 Bad Request: 7000 Invalid JSON"


def test_401_without_body(server: ScriptedServer) -> None:
    answer = send_one(server, reply(401))
    assert (answer.outcome, answer.http_status, answer.code) == (Outcome.REJECTED, 401, None)
    assert answer.message == "HTTP 401 Unauthorized: " + AUTH_FAILED_MESSAGE
    assert answer.message == ("HTTP 401 Unauthorized: authentication failed "
                              "(check WEBEX_CONNECT_SERVICE_KEY / WEBEX_CONNECT_JWT)")


def test_403_7001(server: ScriptedServer) -> None:
    answer = send_one(server, reply(403, {"code": "7001", "message": "Authentication failed."}))
    assert (answer.outcome, answer.http_status, answer.code) == (Outcome.REJECTED, 403, "7001")
    assert answer.message.startswith("HTTP 403 Forbidden: 7001 Authentication failed.")
    assert "WEBEX_CONNECT_SERVICE_KEY" in answer.message


def test_429_with_retry_after_seconds(server: ScriptedServer) -> None:
    answer = send_one(server, reply(429, {"code": "7020", "message": "You have reached the maximum transaction limit"},
                                    {"Retry-After": "7"}))
    assert (answer.outcome, answer.http_status, answer.code, answer.retry_after) == (
        Outcome.RETRY, 429, "7020", 7.0)


def test_429_with_retry_after_date_and_no_body(server: ScriptedServer) -> None:
    when = (datetime.now(timezone.utc) + timedelta(hours=1)).replace(microsecond=0)  # an HTTP-date has whole seconds
    before = datetime.now(timezone.utc)
    answer = send_one(server, reply(429, None, {"Retry-After": format_datetime(when, usegmt=True)}))
    after = datetime.now(timezone.utc)
    assert answer.outcome is Outcome.RETRY and answer.code is None
    # the date less the client's clock when the answer came, whenever that was within the send
    assert answer.retry_after is not None
    assert (when - after).total_seconds() <= answer.retry_after <= (when - before).total_seconds()


def test_rate_limit_code_on_400_is_retried(server: ScriptedServer) -> None:
    answer = send_one(server, reply(400, {"code": vendor.RATE_LIMIT_CODE, "message": "limit"}))
    assert (answer.outcome, answer.code) == (Outcome.RETRY, "7020")


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_retried(server: ScriptedServer, status: int) -> None:
    answer = send_one(server, reply(status, b"<html><body>upstream trouble</body></html>"))
    assert (answer.outcome, answer.http_status, answer.code) == (Outcome.RETRY, status, None)
    assert "upstream trouble" in answer.message and "\n" not in answer.message


def test_internal_error_code_is_retried(server: ScriptedServer) -> None:
    answer = send_one(server, reply(500, {"code": "7006", "message": "Internal error occurred"}))
    assert (answer.outcome, answer.code) == (Outcome.RETRY, "7006")


def test_408_is_retried_and_409_is_uncertain(server: ScriptedServer) -> None:
    assert send_one(server, reply(408)).outcome is Outcome.RETRY
    answer = send_one(server, reply(409, {"message": "Duplicate request"}))
    assert (answer.outcome, answer.http_status) == (Outcome.UNCERTAIN, 409)
    assert "Idempotency-Key" in answer.message


def test_garbage_2xx_body_is_still_accepted(server: ScriptedServer) -> None:
    answer = send_one(server, reply(201, b"\xff\xfe not json at all"))
    assert (answer.outcome, answer.http_status, answer.message_id) == (Outcome.ACCEPTED, 201, None)
    answer = send_one(server, reply(200, ["unexpected", "shape"]))
    assert (answer.outcome, answer.http_status, answer.message_id) == (Outcome.ACCEPTED, 200, None)


def test_redirect_is_not_followed(server: ScriptedServer) -> None:
    answer = send_one(server, reply(302, None, {"Location": "http://127.0.0.1:1/elsewhere"}))
    assert (answer.outcome, answer.http_status) == (Outcome.REJECTED, 302)
    assert "not followed" in answer.message
    assert len(server.script.seen) == 1


# --- transport faults -----------------------------------------------------------------


def test_slow_answer_is_uncertain(server: ScriptedServer) -> None:
    release, answered = threading.Event(), threading.Event()
    try:
        # the server holds its answer ten times the client's timeout; the test ends when the client does
        answer = send_one(server, held_until(release, answered, most=5.0), timeout=0.5)
        # the client gave up on its own: the server had not answered when send() returned
        assert not answered.is_set()
    finally:
        release.set()
    assert (answer.outcome, answer.http_status, answer.message_id) == (Outcome.UNCERTAIN, None, None)
    assert answer.message.startswith("no answer within 0.5s, the vendor may have the request (ReadTimeout")
    assert len(server.script.seen) == 1  # the request did reach the server


def test_close_without_answer_is_uncertain(server: ScriptedServer) -> None:
    answer = send_one(server, close_without_answer)
    assert (answer.outcome, answer.http_status) == (Outcome.UNCERTAIN, None)
    assert "RemoteProtocolError" in answer.message
    assert len(server.script.seen) == 1


def test_reset_after_request_is_uncertain(server: ScriptedServer) -> None:
    answer = send_one(server, reset_connection)
    assert (answer.outcome, answer.http_status) == (Outcome.UNCERTAIN, None)


def test_dropped_after_status_line_counts_the_status(server: ScriptedServer) -> None:
    answer = send_one(server, status_then_drop)
    assert (answer.outcome, answer.http_status, answer.message_id) == (Outcome.ACCEPTED, 201, None)
    assert "cut short" in answer.message


def test_connection_refused_is_retry() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # nothing listens on `port` now
    with ApiClient(f"http://127.0.0.1:{port}", KEY_ONLY, timeout=2) as client:
        answer = client.send(make_batch())
    assert (answer.outcome, answer.http_status, answer.code) == (Outcome.RETRY, None, None)
    assert "ConnectError" in answer.message and "nothing was sent" in answer.message


def test_departure_is_told_once_per_request_after_connecting_and_never_when_nothing_left(
        server: ScriptedServer) -> None:
    """The sender counts a request in the TPS window from this moment."""
    told: list[int] = []  # requests the server had seen when the departure was told
    with ApiClient(server.url, KEY_ONLY, timeout=5) as client:
        for _ in range(2):
            answer = client.send(make_batch(), on_departure=lambda: told.append(len(server.script.seen)))
            assert answer.outcome is Outcome.ACCEPTED
    assert told == [0, 1]  # before each request arrived, once each
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused: list[int] = []
    with ApiClient(f"http://127.0.0.1:{port}", KEY_ONLY, timeout=2) as client:
        assert client.send(make_batch(), on_departure=lambda: refused.append(1)).outcome is Outcome.RETRY
    assert refused == []


# faults a real loopback socket cannot produce on demand: httpx.MockTransport
@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        (httpx.ConnectTimeout("timed out"), Outcome.RETRY),
        (httpx.PoolTimeout("no free connection"), Outcome.RETRY),
        (httpx.ProxyError("proxy refused"), Outcome.RETRY),
        (httpx.WriteTimeout("write timed out"), Outcome.UNCERTAIN),
        (httpx.WriteError("broken pipe"), Outcome.UNCERTAIN),
        (httpx.ReadError("reset"), Outcome.UNCERTAIN),
        (httpx.UnsupportedProtocol("ftp"), Outcome.REJECTED),
        (httpx.LocalProtocolError("bad header"), Outcome.REJECTED),
    ],
)
def test_transport_faults_are_classified(fault: Exception, outcome: Outcome) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise fault

    with ApiClient("https://api.us.webexconnect.io", KEY_ONLY, transport=httpx.MockTransport(handler)) as client:
        answer = client.send(make_batch())
    assert (answer.outcome, answer.http_status, answer.code, answer.message_id) == (outcome, None, None, None)
    assert type(fault).__name__ in answer.message


# --- secrets --------------------------------------------------------------------------


def test_secret_echoed_by_the_server_is_redacted(server: ScriptedServer) -> None:
    both = Credentials(service_key=SECRET_KEY, jwt=SECRET_JWT)
    answers = [
        send_one(server, reply(400, {"code": "7004", "message": f"bad key {SECRET_KEY} / token {SECRET_JWT}"}),
                 credentials=both),
        send_one(server, reply(401, {"message": f"Bearer {SECRET_JWT}\nrejected"}), credentials=both),
        send_one(server, reply(502, f"proxy saw key: {SECRET_KEY}".encode())),
        send_one(server, reply(403, {"code": "7001", "message": "encoded " + SECRET_KEY.replace("+", "%2B")
                                     .replace("/", "%2F").replace("=", "%3D")})),
    ]
    for answer in answers:
        assert "***" in answer.message
        assert_no_secret(answer.message, repr(answer))


def test_transport_error_text_is_redacted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError(f"failed while sending key: {request.headers['key']}")

    with ApiClient("https://api.us.webexconnect.io", KEY_ONLY, transport=httpx.MockTransport(handler)) as client:
        answer = client.send(make_batch())
    assert answer.outcome is Outcome.UNCERTAIN
    assert_no_secret(answer.message)
    assert "***" in answer.message


def test_credentials_repr_hides_secrets() -> None:
    both = Credentials(service_key=SECRET_KEY, jwt=SECRET_JWT)
    assert repr(both) == "Credentials(service_key=***, jwt=***)"
    assert repr(KEY_ONLY) == "Credentials(service_key=***, jwt=None)"
    assert_no_secret(repr(both), str(both), f"{both}", repr([both]), repr({"c": both}))
    with ApiClient("https://api.us.webexconnect.io", both) as client:
        assert_no_secret(repr(client))


def test_redact() -> None:
    both = Credentials(service_key="abc", jwt="xyz.123")
    # short secrets are redacted as tokens, not inside ordinary words ("--traceback" stays readable)
    assert redact("key abc and Bearer xyz.123, abcabc, key=abc&", both) == "key *** and Bearer ***, abcabc, key=***&"
    long_key = Credentials(service_key="s3cr3t-0123456789", jwt=None)
    assert redact("xs3cr3t-0123456789y", long_key) == "x***y"
    assert redact("nothing here", Credentials(None, None)) == "nothing here"
    assert redact("a%2Fb", Credentials("a/b", None)) == "***"


# --- credentials from the environment -------------------------------------------------


def test_from_env_values(tmp_path: Path) -> None:
    assert Credentials.from_env({}) == Credentials(None, None)
    assert Credentials.from_env({"WEBEX_CONNECT_SERVICE_KEY": f"  {SECRET_KEY}\n"}) == KEY_ONLY
    assert Credentials.from_env({"WEBEX_CONNECT_SERVICE_KEY": "", "WEBEX_CONNECT_JWT": " "}) == Credentials(None, None)
    assert Credentials.from_env({"WEBEX_CONNECT_JWT": f"Bearer {SECRET_JWT}"}).jwt == SECRET_JWT


def test_from_env_files(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"{SECRET_KEY}\n")
    jwt_file = tmp_path / "jwt"
    jwt_file.write_text(f"\n{SECRET_JWT}  \n")
    credentials = Credentials.from_env({"WEBEX_CONNECT_SERVICE_KEY_FILE": str(key_file),
                                        "WEBEX_CONNECT_JWT_FILE": str(jwt_file)})
    assert credentials == Credentials(service_key=SECRET_KEY, jwt=SECRET_JWT)
    mixed = Credentials.from_env({"WEBEX_CONNECT_SERVICE_KEY": SECRET_KEY, "WEBEX_CONNECT_JWT_FILE": str(jwt_file)})
    assert mixed == Credentials(service_key=SECRET_KEY, jwt=SECRET_JWT)


def test_from_env_errors_never_show_the_secret(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(SECRET_KEY)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    two_lines = tmp_path / "two"
    two_lines.write_text(f"{SECRET_KEY}\n{SECRET_KEY}\n")
    cases = [
        {"WEBEX_CONNECT_SERVICE_KEY": SECRET_KEY, "WEBEX_CONNECT_SERVICE_KEY_FILE": str(key_file)},
        {"WEBEX_CONNECT_JWT_FILE": str(tmp_path / "missing")},
        {"WEBEX_CONNECT_JWT_FILE": str(tmp_path)},  # a directory
        {"WEBEX_CONNECT_SERVICE_KEY_FILE": str(empty)},
        {"WEBEX_CONNECT_SERVICE_KEY_FILE": str(two_lines)},
        {"WEBEX_CONNECT_JWT": SECRET_JWT + "\r\nX-Injected: 1"},
    ]
    for environ in cases:
        with pytest.raises(CampaignError) as caught:
            Credentials.from_env(environ)
        assert caught.value.exit_code == ExitCode.USAGE
        assert_no_secret(str(caught.value), caught.value.message, caught.value.hint or "")
    with pytest.raises(CampaignError) as caught:
        Credentials.from_env(cases[0])
    assert "WEBEX_CONNECT_SERVICE_KEY" in caught.value.message and "_FILE" in caught.value.message


def test_client_needs_credentials() -> None:
    with pytest.raises(CampaignError) as caught:
        ApiClient("https://api.us.webexconnect.io", Credentials(None, None))
    assert caught.value.exit_code == ExitCode.USAGE
    assert caught.value.hint and "WEBEX_CONNECT_SERVICE_KEY" in caught.value.hint


def test_batch_key_must_fit_the_idempotency_header(server: ScriptedServer) -> None:
    with ApiClient(server.url, KEY_ONLY) as client:
        with pytest.raises(CampaignError) as caught:
            client.send(make_batch(key="x" * (vendor.IDEMPOTENCY_KEY_MAX + 1)))
    assert caught.value.exit_code == ExitCode.INTERNAL
    assert server.script.seen == []


# --- base URL ---------------------------------------------------------------------------


def test_resolve_base_url() -> None:
    assert resolve_base_url(base_url=None, region="eu") == "https://api.eu.webexconnect.io"
    assert resolve_base_url(base_url=None, region=" US1 ") == "https://api.us1.webexconnect.io"
    assert resolve_base_url(base_url="https://proxy.example.com/wxc/", region="eu") == "https://proxy.example.com/wxc"
    assert resolve_base_url(base_url="http://127.0.0.1:8089", region=None) == "http://127.0.0.1:8089"
    assert resolve_base_url(base_url="http://localhost:8089/", region=None) == "http://localhost:8089"
    assert resolve_base_url(base_url="", region="au") == "https://api.au.webexconnect.io"
    for region in vendor.REGIONS:
        assert resolve_base_url(base_url=None, region=region) == vendor.BASE_URL_TEMPLATE.format(region=region)


@pytest.mark.parametrize(
    ("base_url", "region", "words"),
    [
        (None, "sg", ["unknown Webex Connect region 'sg'"]),
        (None, None, ["no Webex Connect API address"]),
        (None, "", ["no Webex Connect API address"]),
        ("http://api.us.webexconnect.io", None, ["plain http"]),
        ("ftp://example.com", None, ["invalid base URL"]),
        ("https://", None, ["invalid base URL"]),
        ("https://api.us.webexconnect.io?x=1", None, ["query"]),
    ],
)
def test_resolve_base_url_errors(base_url: str | None, region: str | None, words: list[str]) -> None:
    with pytest.raises(CampaignError) as caught:
        resolve_base_url(base_url=base_url, region=region)
    assert caught.value.exit_code == ExitCode.USAGE
    for word in words:
        assert word in caught.value.message
    assert caught.value.hint
    if region == "sg":
        assert all(code in caught.value.hint for code in vendor.REGIONS)


def test_parse_retry_after() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("120", now=now) == 120.0
    assert parse_retry_after(" 1.5 ", now=now) == 1.5
    assert parse_retry_after("Mon, 01 Jan 2024 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Mon, 01 Jan 2024 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("-5", now=now) == 0.0
    for bad in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(bad, now=now) is None
