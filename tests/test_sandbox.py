"""The sandbox, over real HTTP on 127.0.0.1: every check answers the vendor's status and
code, and the exactly-once backbone (idempotent replay after a dropped answer) holds."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from runner import vendor
from runner.sandbox import Sandbox, SandboxSettings, StoredMessage

KEY = "service-key-123"
SECRET = base64.b64encode(b"the service secret").decode()
A, B, C = "+447911000001", "+447911000002", "+447911000003"

Start = Callable[..., tuple[Sandbox, httpx.Client]]


@pytest.fixture
def start() -> Iterator[Start]:
    opened: list[tuple[Sandbox, httpx.Client]] = []

    def _start(**settings: Any) -> tuple[Sandbox, httpx.Client]:
        settings.setdefault("service_key", KEY)
        sandbox = Sandbox(SandboxSettings(**settings))
        client = httpx.Client(base_url=sandbox.start(), trust_env=False, verify=False, timeout=5)
        opened.append((sandbox, client))
        return sandbox, client

    yield _start
    for sandbox, client in opened:
        client.close()
        sandbox.stop()


def _changed(body: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`body` with fields set by `changes`, or removed where the value is DROP."""
    for name, value in changes.items():
        if value is DROP:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def v2(**changes: Any) -> dict[str, Any]:
    return _changed({"channel": "sms", "from": "12025550100", "to": [{"msisdn": [A], "correlationId": "c-1"}],
                     "content": {"type": "text", "text": "Hello"}}, changes)


def v1(**changes: Any) -> dict[str, Any]:
    return _changed({"from": "12025550100", "to": A, "content": "Hello", "correlationId": "c-1"}, changes)


DROP = object()
AUTH = {vendor.SERVICE_KEY_HEADER: KEY, "Content-Type": "application/json"}
AUTH_ANY = {vendor.SERVICE_KEY_HEADER: "any", "Content-Type": "application/json"}


def iso(delta: timedelta, *, zone: bool = True) -> str:
    moment = datetime.now(timezone.utc) + delta
    return moment.isoformat() if zone else moment.replace(tzinfo=None).isoformat()


def make_jwt(secret: str | None = SECRET, **claims: Any) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    payload = {"iss": "service-id", "iat": int(time.time()), **claims}
    signed = f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({k: v for k, v in payload.items() if v is not None})}"
    key = base64.b64decode(secret) if secret else b"some other secret"
    signature = base64.urlsafe_b64encode(hmac.new(key, signed.encode(), hashlib.sha256).digest()).rstrip(b"=")
    return f"{signed}.{signature.decode()}"


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --- validation: status and code per check -------------------------------------------

V2_CASES: list[tuple[str, Any, int, str]] = [
    ("not-json", b"{nope", 400, "7000"),
    ("json-array", b"[1, 2]", 400, "7000"),
    ("nan", b'{"channel": NaN}', 400, "7000"),
    ("channel-other", v2(channel="whatsapp"), 400, "7003"),
    ("channel-missing", v2(channel=DROP), 400, "7003"),
    ("from-missing", v2(**{"from": DROP}), 400, "7003"),
    ("to-missing", v2(to=DROP), 400, "7003"),
    ("to-empty", v2(to=[]), 400, "7003"),
    ("to-no-msisdn", v2(to=[{"correlationId": "x"}]), 400, "7003"),
    ("to-empty-msisdn", v2(to=[{"msisdn": []}]), 400, "7003"),
    ("no-content-or-template", v2(content=DROP), 400, "7003"),
    ("content-no-text", v2(content={"type": "text"}), 400, "7003"),
    ("content-no-type", v2(content={"text": "hi"}), 400, "7003"),
    ("1001-destinations", v2(to=[{"msisdn": [f"+4479110{i:05d}" for i in range(1001)]}]), 400, "7009"),
    ("from-plus", v2(**{"from": "+12025550100"}), 400, "7004"),
    ("msisdn-no-plus", v2(to=[{"msisdn": ["447911000001"]}]), 400, "7004"),
    ("msisdn-leading-zero", v2(to=[{"msisdn": ["+0447911000001"]}]), 400, "7004"),
    ("msisdn-too-short", v2(to=[{"msisdn": ["+12345"]}]), 400, "7004"),
    ("content-type-binary", v2(content={"type": "binary", "text": "hi"}), 400, "7004"),
    ("text-not-gsm", v2(content={"type": "text", "text": "日本"}), 400, "7004"),
    ("text-too-long", v2(content={"type": "text", "text": "x" * (vendor.MAX_TEXT_CHARS + 1)}), 400, "7004"),
    ("expire-and-validity", v2(expireAt=iso(timedelta(hours=1)), validity="60"), 400, "7004"),
    ("validity-number", v2(validity=60), 400, "7004"),
    ("validity-words", v2(validity="sixty"), 400, "7004"),
    ("validity-too-long", v2(validity=str(vendor.MAX_VALIDITY_SECONDS + 1)), 400, "7004"),
    ("send-at-no-zone", v2(sendAt=iso(timedelta(hours=1), zone=False)), 400, "7004"),
    ("send-at-words", v2(sendAt="tomorrow"), 400, "7004"),
    ("send-at-8-days", v2(sendAt=iso(timedelta(days=8))), 400, "7004"),
    ("expire-at-8-days", v2(expireAt=iso(timedelta(days=8))), 400, "7004"),
    ("callback-data-2001", v2(callbackData="x" * (vendor.MAX_CALLBACK_DATA_CHARS + 1)), 400, "7004"),
    ("options-no-domain", v2(options={"shortenLinks": "true"}), 400, "7004"),
    ("receipt-type-unknown", v2(requestedReceipts=["READ"]), 400, "7004"),
    ("notify-url-ftp", v2(notifyUrl="ftp://example.com/x"), 400, "7004"),
    ("notify-url-words", v2(notifyUrl="not a url"), 400, "7004"),
    ("notify-url-spaces", v2(notifyUrl=" https://example.com/x"), 400, "7004"),
    ("content-and-template", v2(template={"id": "T1"}), 400, "7004"),
    ("template-unknown", v2(content=DROP, template={"id": "nope"}), 400, "7108"),
]


@pytest.mark.parametrize(("body", "status", "code"), [c[1:] for c in V2_CASES], ids=[c[0] for c in V2_CASES])
def test_v2_checks_answer_the_vendor_code(start: Start, body: Any, status: int, code: str) -> None:
    sandbox, client = start(templates={"T1": "Template $(name)"})
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(vendor.V2_MESSAGES_PATH, content=content, headers=AUTH)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == code
    assert sandbox.messages() == []
    assert sandbox.stats()[f"rejected_{code}"] == 1


def test_v2_error_messages_name_the_parameter(start: Start) -> None:
    _, client = start(tps=5)
    assert client.post(vendor.V2_MESSAGES_PATH, json=v2(to=DROP), headers=AUTH).json() == {
        "code": "7003", "message": "Mandatory parameters missing - to"}
    assert client.post(vendor.V2_MESSAGES_PATH, json=v2(**{"from": "+1"}), headers=AUTH).json() == {
        "code": "7004", "message": "Invalid parameter - from"}
    assert client.post(vendor.V2_MESSAGES_PATH, json=v2(to=[{"msisdn": [A, B, C, A, B, C]}]),
                       headers=AUTH).json() == {
        "code": "7009", "message": "Max number of destination addresses limited to 5"}
    assert client.post(vendor.V2_MESSAGES_PATH, json=v2(content=DROP, template={"id": "x"}),
                       headers=AUTH).json() == {"code": "7108", "message": "Invalid template ID"}


@pytest.mark.parametrize("body", [
    v2(validity="60", sendAt=iso(timedelta(days=1))),
    v2(expireAt=iso(timedelta(days=6)).replace("+00:00", "Z")),
    v2(options={"domain": "https://s.example", "shortenLinks": "true", "trackClicks": False}),
    v2(content={"type": "unicode", "text": "日本 👍"}),
    v2(content={"type": "text", "text": "Price: 5€ [ok]"}),
    v2(requestedReceipts=list(vendor.RECEIPT_TYPES), notifyUrl="", callbackData="cb"),
    v2(contactPolicy={"contactPolicyGroup": "g1", "channelCheckConsent": True},
       smartlinks=[{"smartlinkId": "4371", "validity": 1}]),
], ids=["validity+sendAt", "expireAt-Z", "options", "unicode", "gsm-extension", "receipts", "policy+smartlinks"])
def test_v2_accepts_documented_optional_fields(start: Start, body: dict[str, Any]) -> None:
    _, client = start()
    response = client.post(vendor.V2_MESSAGES_PATH, json=body, headers=AUTH)
    assert response.status_code == 201, response.text


V1_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("from-missing", v1(**{"from": DROP}), 400, "7003"),
    ("to-missing", v1(to=DROP), 400, "7003"),
    ("content-missing", v1(content=DROP), 400, "7003"),
    ("to-list", v1(to=[A]), 400, "7004"),
    ("to-not-e164", v1(to="07911000001"), 400, "7004"),
    ("from-plus", v1(**{"from": "+12025550100"}), 400, "7004"),
    ("content-type-binary", v1(contentType="binary"), 400, "7004"),
    ("text-not-gsm", v1(content="日本"), 400, "7004"),
    ("callback-url-bad", v1(callbackUrl="mailto:x@example.com"), 400, "7004"),
    ("expire-no-zone", v1(expireAt=iso(timedelta(hours=1), zone=False)), 400, "7004"),
    ("callback-data-long", v1(callbackData="x" * 2001), 400, "7004"),
    ("shorten-urls-number", v1(shortenUrls=1), 400, "7004"),
]


@pytest.mark.parametrize(("body", "status", "code"), [c[1:] for c in V1_CASES], ids=[c[0] for c in V1_CASES])
def test_v1_checks_answer_the_vendor_code(start: Start, body: dict[str, Any], status: int, code: str) -> None:
    sandbox, client = start()
    response = client.post(vendor.V1_SMS_PATH, json=body, headers=AUTH)
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert sandbox.messages() == []


def test_oversized_body_is_7022_and_the_connection_survives(start: Start) -> None:
    _, client = start()
    huge = b'{"x": "' + b"a" * (1 << 20) + b'"}'
    response = client.post(vendor.V2_MESSAGES_PATH, content=huge, headers=AUTH)
    assert (response.status_code, response.json()) == (400, {"code": "7022", "message": "JSON size exceeded"})
    assert client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers=AUTH).status_code == 201


# --- success shapes ------------------------------------------------------------------


def test_v2_success_shape(start: Start) -> None:
    sandbox, client = start()
    response = client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers=AUTH)
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"requestTimestamp", "messageId", "correlationId", "status"}
    assert datetime.fromisoformat(body["requestTimestamp"]).utcoffset() is not None
    assert uuid.UUID(body["messageId"]).version == 4
    assert (body["correlationId"], body["status"]) == ("c-1", "queued")
    [stored] = sandbox.messages()
    assert stored == StoredMessage(body["messageId"], A, "c-1", "Hello", "v2", None, 1, stored.accepted_at,
                                   stored.arrived_at)
    assert stored.arrived_at <= stored.accepted_at


def test_v2_answers_empty_correlation_id_when_none_given(start: Start) -> None:
    _, client = start()
    body = client.post(vendor.V2_MESSAGES_PATH, json=v2(to=[{"msisdn": [A]}]), headers=AUTH).json()
    assert body["correlationId"] == ""


def test_v1_success_shape(start: Start) -> None:
    sandbox, client = start()
    response = client.post(vendor.V1_SMS_PATH, json=v1(contentType="UNICODE", content="日本"), headers=AUTH)
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"acceptedTime", "messageId", "correlationId"}
    assert datetime.fromisoformat(body["acceptedTime"]).utcoffset() is not None
    assert body["correlationId"] == "c-1"
    [stored] = sandbox.messages()
    assert (stored.api, stored.msisdn, stored.text, stored.message_id) == ("v1", A, "日本", body["messageId"])


def test_segments_are_counted_on_the_final_text(start: Start) -> None:
    sandbox, client = start()
    body = v2(to=[{"msisdn": [A], "substitutions": {"tail": "y" * 100}}],
              content={"type": "text", "text": "x" * 61 + "$(tail)"})
    client.post(vendor.V2_MESSAGES_PATH, json=body, headers=AUTH)
    client.post(vendor.V2_MESSAGES_PATH, json=v2(content={"type": "unicode", "text": "hi"}), headers=AUTH)
    assert [m.segments for m in sandbox.messages()] == [2, 1]  # 161 GSM-7 characters after substitution


# --- substitutions -------------------------------------------------------------------


def test_substitution_precedence_and_verbatim_tokens(start: Start) -> None:
    sandbox, client = start()
    body = v2(
        to=[{"msisdn": [A, B], "substitutions": {"name": "Ann", "n": 3}, "correlationId": "ab"},
            {"msisdn": [C], "correlationId": "c"}],
        substitutions={"name": "friend", "code": "X1", "price": 1.50},
        content={"type": "text", "text": "Hi $(name) $(code) $(n) $(price) $(missing) {{smartlink_4371}}"},
    )
    assert client.post(vendor.V2_MESSAGES_PATH, content=json.dumps(body).replace("1.5", "1.50"),
                       headers=AUTH).status_code == 201
    texts = {m.msisdn: (m.text, m.correlation_id) for m in sandbox.messages()}
    assert texts == {
        A: ("Hi Ann X1 3 1.50 $(missing) {{smartlink_4371}}", "ab"),
        B: ("Hi Ann X1 3 1.50 $(missing) {{smartlink_4371}}", "ab"),
        C: ("Hi friend X1 $(n) 1.50 $(missing) {{smartlink_4371}}", "c"),
    }
    assert len({m.message_id for m in sandbox.messages()}) == 1  # one messageId per request


def test_v1_global_substitutions(start: Start) -> None:
    sandbox, client = start()
    client.post(vendor.V1_SMS_PATH, json=v1(content="Hi $(name), $(other)", substitutions={"name": "Bo"}),
                headers=AUTH)
    assert [m.text for m in sandbox.messages()] == ["Hi Bo, $(other)"]


def test_template_text_is_substituted(start: Start) -> None:
    sandbox, client = start(templates={"T1": "Code $(code) for $(name)"})
    sandbox.add_template("T2", "Bye $(name)")
    for template in ("T1", "T2"):
        body = v2(content=DROP, template={"id": template}, substitutions={"code": "42"},
                  to=[{"msisdn": [A], "substitutions": {"name": "Ann"}}])
        assert client.post(vendor.V2_MESSAGES_PATH, json=body, headers=AUTH).status_code == 201
    assert [m.text for m in sandbox.messages()] == ["Code 42 for Ann", "Bye Ann"]


# --- authentication ------------------------------------------------------------------


def test_v2_missing_and_wrong_auth_are_401_without_body(start: Start) -> None:
    sandbox, client = start()
    missing = client.post(vendor.V2_MESSAGES_PATH, content=b"{nope")  # auth is checked before the body
    wrong = client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers={"key": "wrong"})
    for response in (missing, wrong):
        assert (response.status_code, response.content) == (401, b"")
    stats = sandbox.stats()
    assert (stats["rejected_7002"], stats["rejected_7001"], stats["accepted_requests"]) == (1, 1, 0)


def test_v1_auth_errors_are_403_with_body(start: Start) -> None:
    _, client = start()
    missing = client.post(vendor.V1_SMS_PATH, json=v1())
    wrong = client.post(vendor.V1_SMS_PATH, json=v1(), headers={"Authorization": "wrong"})
    assert (missing.status_code, missing.json()["code"]) == (403, "7002")
    assert (wrong.status_code, wrong.json()) == (403, {"code": "7001", "message": "Authentication failed."})


@pytest.mark.parametrize("headers", [{"key": KEY}, {"Authorization": KEY}, {"Authorization": f"Bearer {make_jwt()}"}],
                         ids=["key-header", "bare-authorization", "jwt"])
def test_v1_auth_forms(start: Start, headers: dict[str, str]) -> None:
    _, client = start(jwt_secret=SECRET)
    assert client.post(vendor.V1_SMS_PATH, json=v1(), headers=headers).status_code == 202


def test_jwt_wins_over_the_service_key(start: Start) -> None:
    _, client = start(jwt_secret=SECRET)
    good_jwt_bad_key = {"Authorization": f"Bearer {make_jwt()}", "key": "wrong"}
    bad_jwt_good_key = {"Authorization": f"Bearer {make_jwt(secret=None)}", "key": KEY}
    assert client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers=good_jwt_bad_key).status_code == 201
    assert client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers=bad_jwt_good_key).status_code == 401
    assert client.post(vendor.V1_SMS_PATH, json=v1(), headers=bad_jwt_good_key).status_code == 403


@pytest.mark.parametrize(("token", "status"), [
    (make_jwt(secret=None), 201),  # without a configured secret any well-formed JWT passes
    (make_jwt(iss=None), 401),
    (make_jwt(iat="yesterday"), 401),
    ("not.a.jwt", 401),
    ("abc", 401),
], ids=["unverified", "no-iss", "bad-iat", "garbage", "one-part"])
def test_jwt_needs_iss_and_iat(start: Start, token: str, status: int) -> None:
    _, client = start()
    response = client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == status


def test_without_a_configured_key_any_key_passes_but_one_is_needed(start: Start) -> None:
    _, client = start(service_key=None)
    assert client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers={"key": "anything"}).status_code == 201
    assert client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers={"key": ""}).status_code == 401


def test_secrets_never_reach_stderr(start: Start, capfd: pytest.CaptureFixture[str]) -> None:
    _, client = start()
    client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers={"key": "wrong-secret-value"})
    client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers={"Authorization": "Bearer jwt-secret-value"})
    client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers=AUTH)
    out, err = capfd.readouterr()
    assert "secret-value" not in out + err and KEY not in out + err


# --- idempotency and faults ----------------------------------------------------------


def test_idempotent_replay_and_conflict(start: Start) -> None:
    sandbox, client = start()
    headers = {**AUTH, vendor.IDEMPOTENCY_HEADER: "batch-1"}
    first = client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers=headers)
    reordered = json.dumps(dict(reversed(list(v2().items()))))  # same body, other key order
    again = client.post(vendor.V2_MESSAGES_PATH, content=reordered, headers=headers)
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    conflict = client.post(vendor.V2_MESSAGES_PATH, json=v2(content={"type": "text", "text": "Other"}),
                           headers=headers)
    assert conflict.status_code == 409
    assert conflict.json() == {"code": "7004", "message": "Idempotency-Key reused with a different body"}
    [stored] = sandbox.messages()
    assert stored.idempotency_key == "batch-1"
    assert (sandbox.stats()["replayed"], sandbox.stats()["accepted_requests"]) == (1, 1)


def test_concurrent_retries_with_one_key_store_once(start: Start) -> None:
    sandbox, _ = start(latency=0.05)
    headers = {**AUTH, vendor.IDEMPOTENCY_HEADER: "race-1"}
    statuses: list[int] = []

    def post() -> None:
        with httpx.Client(base_url=sandbox.url, trust_env=False, verify=False, timeout=5) as client:
            statuses.append(client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers=headers).status_code)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [201] * 8
    assert len(sandbox.messages()) == 1 and sandbox.stats()["replayed"] == 7


def test_rejected_request_does_not_burn_its_key(start: Start) -> None:
    sandbox, client = start()
    headers = {**AUTH, vendor.IDEMPOTENCY_HEADER: "k-1"}
    assert client.post(vendor.V2_MESSAGES_PATH, json=v2(to=[]), headers=headers).status_code == 400
    assert client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers=headers).status_code == 201
    assert len(sandbox.messages()) == 1


def test_idempotency_key_longer_than_64_is_7004(start: Start) -> None:
    _, client = start()
    headers = {**AUTH, vendor.IDEMPOTENCY_HEADER: "k" * (vendor.IDEMPOTENCY_KEY_MAX + 1)}
    response = client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers=headers)
    assert (response.status_code, response.json()["code"]) == (400, "7004")


def test_dropped_answer_then_retry_is_replayed_not_stored_twice(start: Start) -> None:
    sandbox, client = start(drop_rate=1.0, seed=7)
    headers = {**AUTH, vendor.IDEMPOTENCY_HEADER: "drop-1"}
    body = v2(to=[{"msisdn": [A, B]}])
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(vendor.V2_MESSAGES_PATH, json=body, headers=headers)
    assert [m.msisdn for m in sandbox.messages()] == [A, B]  # accepted before the hang-up
    retry = client.post(vendor.V2_MESSAGES_PATH, json=body, headers=headers)
    assert retry.status_code == 201 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json()["messageId"] == sandbox.messages()[0].message_id
    assert len(sandbox.messages()) == 2
    stats = sandbox.stats()
    assert (stats["dropped"], stats["replayed"], stats["accepted_requests"]) == (1, 1, 1)


def test_fail_rate_answers_7006_and_stores_nothing(start: Start) -> None:
    sandbox, client = start(fail_rate=1.0)
    headers = {**AUTH, vendor.IDEMPOTENCY_HEADER: "fail-1"}
    for _ in range(2):  # the key is not recorded, so the retry is judged afresh
        response = client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers=headers)
        assert (response.status_code, response.json()) == (500, {"code": "7006", "message": "Internal error occurred"})
    assert sandbox.messages() == [] and sandbox.stats()["rejected_7006"] == 2


def test_seed_makes_faults_reproducible(start: Start) -> None:
    def outcomes() -> list[int]:
        _, client = start(fail_rate=0.5, seed=42)
        return [client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers=AUTH).status_code for _ in range(12)]

    first = outcomes()
    assert first == outcomes() and set(first) == {201, 500}


def test_latency_delays_each_send(start: Start) -> None:
    _, client = start(latency=0.2)
    began = time.monotonic()
    client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers=AUTH)
    assert time.monotonic() - began >= 0.2


def test_tps_window_rejects_with_7020_and_retry_after(start: Start) -> None:
    sandbox, client = start(tps=3)
    assert client.post(vendor.V2_MESSAGES_PATH, json=v2(to=[{"msisdn": [A, B]}]), headers=AUTH).status_code == 201
    assert client.post(vendor.V1_SMS_PATH, json=v1(), headers=AUTH).status_code == 202  # v1 shares the window
    limited = client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers=AUTH)
    assert (limited.status_code, limited.json()["code"]) == (429, vendor.RATE_LIMIT_CODE)
    assert int(limited.headers["Retry-After"]) >= 1
    too_big = client.post(vendor.V2_MESSAGES_PATH, json=v2(to=[{"msisdn": [A, B, C, A]}]), headers=AUTH)
    assert (too_big.status_code, too_big.json()["code"]) == (400, "7009")
    time.sleep(1.05)
    assert client.post(vendor.V2_MESSAGES_PATH, json=v2(to=[{"msisdn": [A, B, C]}]), headers=AUTH).status_code == 201
    assert sandbox.stats()["rejected_7020"] == 1


# --- receipts ------------------------------------------------------------------------


class Receiver:
    """A tiny loopback webhook that records what it is sent."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_receipts_are_posted_in_the_vendor_envelope(start: Start, receiver: Receiver) -> None:
    sandbox, client = start()
    body = v2(to=[{"msisdn": [A], "correlationId": "c-a"}, {"msisdn": [B], "correlationId": "c-b"}],
              content={"type": "text", "text": "y" * 200}, notifyUrl=receiver.url, callbackData="cb-1")
    message_id = client.post(vendor.V2_MESSAGES_PATH, json=body, headers=AUTH).json()["messageId"]
    wait_for(lambda: len(receiver.received) == 4)
    by_destination: dict[str, list[dict[str, Any]]] = {}
    for receipt in receiver.received:
        assert list(receipt) == ["deliveryInfoNotification"]
        envelope = receipt["deliveryInfoNotification"]
        assert list(envelope) == ["deliveryInfo", "carrier", "subtid", "transid", "callbackData", "correlationid"]
        assert (envelope["transid"], envelope["callbackData"], envelope["subtid"]) == (message_id, "cb-1", "")
        info = envelope["deliveryInfo"]
        assert datetime.fromisoformat(info["timeStamp"]).utcoffset() is not None
        assert (info["deliveryChannel"], info["destinationType"], info["additionalInfo"]) == ("SMS", "msisdn", "")
        assert info["Description"] == info["deliveryStatus"]
        by_destination.setdefault(info["destination"], []).append(envelope)
    assert set(by_destination) == {A[1:], B[1:]}  # msisdn without '+'
    for msisdn, correlation in ((A, "c-a"), (B, "c-b")):
        submitted, delivered = by_destination[msisdn[1:]]
        assert submitted["correlationid"] == delivered["correlationid"] == correlation
        assert (submitted["deliveryInfo"]["code"], submitted["deliveryInfo"]["deliveryStatus"]) == ("7501", "Submitted")
        assert "messageCount" not in submitted["deliveryInfo"]
        assert (delivered["deliveryInfo"]["code"], delivered["deliveryInfo"]["deliveryStatus"]) == ("7500", "Delivered")
        assert delivered["deliveryInfo"]["messageCount"] == "2"  # 200 GSM characters
    assert list(delivered["deliveryInfo"]) == ["timeStamp", "Description", "code", "messageCount", "deliveryChannel",
                                               "additionalInfo", "destination", "destinationType", "deliveryStatus"]
    wait_for(lambda: sandbox.stats()["receipts_posted"] == 4)


def test_requested_receipts_filter_what_is_posted(start: Start, receiver: Receiver) -> None:
    sandbox, client = start()
    for correlation, wanted in (("d", ["DELIVERED"]), ("s", ["SENT"]), ("f", ["FAILED"])):
        body = v2(to=[{"msisdn": [A], "correlationId": correlation}], notifyUrl=receiver.url,
                  requestedReceipts=wanted)
        assert client.post(vendor.V2_MESSAGES_PATH, json=body, headers=AUTH).status_code == 201
    client.post(vendor.V1_SMS_PATH, json=v1(correlationId="v1", callbackUrl=receiver.url), headers=AUTH)
    wait_for(lambda: len(receiver.received) >= 4)
    time.sleep(0.2)  # nothing more may arrive
    seen = sorted((r["deliveryInfoNotification"]["correlationid"], r["deliveryInfoNotification"]["deliveryInfo"]["code"])
                  for r in receiver.received)
    assert seen == [("d", "7500"), ("s", "7501"), ("v1", "7500"), ("v1", "7501")]


def test_non_loopback_receipts_go_to_the_outbox(start: Start) -> None:
    sandbox, client = start()
    url = "http://receipts.example.invalid/hook"
    client.post(vendor.V2_MESSAGES_PATH, json=v2(notifyUrl=url), headers=AUTH)
    outbox = client.get("/_sandbox/receipts").json()
    assert [(o["url"], o["receipt"]["deliveryInfoNotification"]["deliveryInfo"]["code"]) for o in outbox] == [
        (url, "7501"), (url, "7500")]
    time.sleep(0.1)
    stats = sandbox.stats()
    assert (stats["receipts_outboxed"], stats["receipts_posted"], stats["receipts_failed"]) == (2, 0, 0)


def test_receipts_off(start: Start, receiver: Receiver) -> None:
    sandbox, client = start(receipts=False)
    client.post(vendor.V2_MESSAGES_PATH, json=v2(notifyUrl=receiver.url), headers=AUTH)
    time.sleep(0.1)
    assert receiver.received == [] and sandbox.outbox() == []


# --- inspection, robustness, lifecycle -------------------------------------------------


def test_inspection_endpoints(start: Start) -> None:
    _, client = start()
    headers = {**AUTH, vendor.IDEMPOTENCY_HEADER: "i-1"}
    client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers=headers)
    [message] = client.get("/_sandbox/messages").json()
    assert set(message) == {"messageId", "msisdn", "correlationId", "text", "api", "idempotencyKey", "segments",
                            "acceptedAt", "arrivedAt"}
    assert (message["msisdn"], message["idempotencyKey"], message["api"]) == (A, "i-1", "v2")
    stats = client.get("/_sandbox/stats").json()
    assert (stats["requests"], stats["accepted_requests"], stats["accepted_messages"]) == (1, 1, 1)
    assert client.post("/_sandbox/reset").status_code == 200
    assert client.get("/_sandbox/messages").json() == []
    assert client.get("/_sandbox/stats").json()["requests"] == 0
    assert client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers=headers).headers.get("Idempotent-Replayed") is None


def test_unknown_paths_are_404_json(start: Start) -> None:
    _, client = start()
    for response in (client.get("/nope"), client.get(vendor.V2_MESSAGES_PATH), client.delete("/_sandbox/stats")):
        assert response.status_code == 404 and response.headers["content-type"] == "application/json"


def raw(url: str, data: bytes, *, half_close: bool = False) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize(("request_bytes", "half_close", "status"), [
    (b"POST /v2/messages HTTP/1.1\r\nHost: x\r\nkey: k\r\nContent-Length: abc\r\n\r\n{}", False, b"400"),
    (b"POST /v2/messages HTTP/1.1\r\nHost: x\r\nkey: k\r\nContent-Length: -5\r\n\r\n{}", False, b"400"),
    (b"POST /v2/messages HTTP/1.1\r\nHost: x\r\nkey: k\r\nContent-Length: 100\r\n\r\n{}", True, b"400"),
    (b"POST /v2/messages HTTP/1.1\r\nHost: x\r\nkey: k\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", False, b"411"),
    (b"GARBAGE\r\n\r\n", False, b"400"),
], ids=["length-words", "length-negative", "body-short", "chunked", "garbage"])
def test_bad_requests_never_crash_the_server(start: Start, request_bytes: bytes, half_close: bool,
                                             status: bytes) -> None:
    sandbox, client = start(service_key=None)
    answer = raw(sandbox.url, request_bytes, half_close=half_close)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == status
    assert "code" in json.loads(body)
    assert client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers={"key": "k"}).status_code == 201


def test_keep_alive_serves_many_requests_on_one_connection(start: Start) -> None:
    sandbox, _ = start()
    connection = http.client.HTTPConnection(sandbox.url.removeprefix("http://"), timeout=5)
    statuses, sockets = [], set()
    sends = [("/v2/messages", b"{nope"), ("/v2/messages", json.dumps(v2()).encode()), ("/v2/messages", b""),
             (vendor.V1_SMS_PATH, json.dumps(v1()).encode()), ("/_sandbox/stats", b"")]
    for path, body in sends:
        connection.request("POST", path, body=body, headers={**AUTH, "Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)
        sockets.add(id(connection.sock))
    connection.close()
    assert statuses == [400, 201, 400, 202, 404] and len(sockets) == 1


@pytest.mark.parametrize("settings", [
    {"host": "0.0.0.0"}, {"host": "192.168.1.10"}, {"host": "example.com"},
    {"fail_rate": 0.6, "drop_rate": 0.5}, {"fail_rate": -0.1}, {"tps": 0},
    {"jwt_secret": "not base64!"}, {"service_key": ""},
])
def test_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SandboxSettings(**settings)


def test_localhost_is_allowed_and_stop_closes_connections() -> None:
    with Sandbox(SandboxSettings(host="localhost")) as sandbox:
        assert sandbox.url.startswith("http://127.0.0.1:")
        client = httpx.Client(base_url=sandbox.url, trust_env=False, verify=False, timeout=2)
        assert client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers={"key": "any"}).status_code == 201
    with pytest.raises(httpx.TransportError):
        client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers={"key": "any"})
    client.close()


def test_serve_blocks_until_interrupted() -> None:
    # port=0: a free port from the OS, never the CLI's default 8765 (another run may hold it);
    # the timeouts are generous because a loaded machine is slow, not wrong
    code = ("import sys; from runner.sandbox import serve, SandboxSettings; "
            "serve(SandboxSettings(port=0), ready=lambda url: print(url, flush=True))")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":8765"), url
        with httpx.Client(base_url=url, trust_env=False, verify=False, timeout=30) as client:
            assert client.post(vendor.V2_MESSAGES_PATH, json=v2(), headers=AUTH_ANY).status_code == 201
            assert client.get("/_sandbox/stats").json()["accepted_requests"] == 1
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        process.wait()
