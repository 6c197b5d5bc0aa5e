"""The sandbox is an honest stand-in for the vendor: it refuses what the vendor would,
with the vendor's codes, from its own copy of the reference, and it can be told to stop
deduplicating or to swallow chosen answers.

Real HTTP on 127.0.0.1 against a started sandbox; expected codes are written out.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner.sandbox import Sandbox, SandboxSettings
from runner.sandbox_reference import GSM7_BASIC, GSM7_EXTENSION, segments

KEY = "service-key-123"
JSON_HEADERS = {"key": KEY, "Content-Type": "application/json"}
A = "+447911000001"
V2, V1 = "/v2/messages", "/v1/sms/messages"
RUNNER = Path(__file__).resolve().parent.parent / "runner"


def v2(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"channel": "sms", "from": "12025550100", "to": [{"msisdn": [A], "correlationId": "c-1"}],
                            "content": {"type": "text", "text": "Hello"}}
    body.update(changes)
    return body


def v1(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"from": "12025550100", "to": A, "content": "Hello", "correlationId": "c-1"}
    body.update(changes)
    return body


@pytest.fixture
def started() -> Iterator[Any]:
    opened: list[tuple[Sandbox, httpx.Client]] = []

    def start(**settings: Any) -> tuple[Sandbox, httpx.Client]:
        sandbox = Sandbox(SandboxSettings(service_key=KEY, **settings))
        client = httpx.Client(base_url=sandbox.start(), trust_env=False, timeout=5)
        opened.append((sandbox, client))
        return sandbox, client

    yield start
    for sandbox, client in opened:
        client.close()
        sandbox.stop()


# --- refusals the vendor would give ------------------------------------------------------

REFUSED_V2 = [
    ("notifyURL-misspelt", v2(notifyURL="https://example.com/hook"), "7004", "Invalid parameter - notifyURL"),
    ("sendat-misspelt", v2(sendat="2030-01-01T00:00:00Z"), "7004", "Invalid parameter - sendat"),
    ("unknown-top-level", v2(priority="high"), "7004", "Invalid parameter - priority"),
    ("unknown-in-to", v2(to=[{"msisdn": [A], "correlationID": "x"}]), "7004", "Invalid parameter - to.correlationID"),
    ("unknown-in-content", v2(content={"type": "text", "text": "hi", "encoding": "gsm"}), "7004",
     "Invalid parameter - content.encoding"),
    ("unknown-in-options", v2(options={"domain": "https://s.example", "trackClick": "true"}), "7004",
     "Invalid parameter - options.trackClick"),
    ("boolean-substitution", v2(substitutions={"vip": True}), "7004", "Invalid parameter - substitutions.vip"),
    ("boolean-personal-substitution", v2(to=[{"msisdn": [A], "substitutions": {"ok": False}}]), "7004",
     "Invalid parameter - to.substitutions.ok"),
    ("correlation-id-5000", v2(to=[{"msisdn": [A], "correlationId": "x" * 5000}]), "7004",
     "Invalid parameter - to.correlationId"),
    ("send-at-2020", v2(sendAt="2020-01-01T09:00:00Z"), "7004", "Invalid parameter - sendAt"),
    ("domain-not-a-url", v2(options={"domain": "not a url"}), "7004", "Invalid parameter - options.domain"),
    ("smartlink-without-validity", v2(smartlinks=[{"smartlinkId": "4371"}]), "7003",
     "Mandatory parameters missing - smartlinks.validity"),
]


@pytest.mark.parametrize(("body", "code", "message"), [c[1:] for c in REFUSED_V2], ids=[c[0] for c in REFUSED_V2])
def test_v2_refuses_what_the_vendor_refuses(started: Any, body: dict[str, Any], code: str, message: str) -> None:
    sandbox, client = started()
    response = client.post(V2, content=json.dumps(body), headers=JSON_HEADERS)
    assert response.status_code == 400
    assert response.json() == {"code": code, "message": message}
    assert sandbox.messages() == []


REFUSED_V1 = [
    ("callbackURL-misspelt", v1(callbackURL="https://example.com/hook"), "Invalid parameter - callbackURL"),
    ("notifyUrl-is-v2-only", v1(notifyUrl="https://example.com/hook"), "Invalid parameter - notifyUrl"),
    ("boolean-substitution", v1(substitutions={"vip": True}), "Invalid parameter - substitutions.vip"),
    ("correlation-id-5000", v1(correlationId="x" * 5000), "Invalid parameter - correlationId"),
]


@pytest.mark.parametrize(("body", "message"), [c[1:] for c in REFUSED_V1], ids=[c[0] for c in REFUSED_V1])
def test_v1_refuses_what_the_vendor_refuses(started: Any, body: dict[str, Any], message: str) -> None:
    sandbox, client = started()
    response = client.post(V1, content=json.dumps(body), headers=JSON_HEADERS)
    assert response.status_code == 400
    assert response.json() == {"code": "7004", "message": message}
    assert sandbox.messages() == []


def test_v1_accepts_its_documented_callback_url(started: Any) -> None:
    sandbox, client = started(receipts=False)
    response = client.post(V1, content=json.dumps(v1(callbackUrl="https://example.com/hook")), headers=JSON_HEADERS)
    assert response.status_code == 202


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
def test_a_body_not_declared_json_is_refused(started: Any, content_type: str | None) -> None:
    sandbox, client = started()
    headers = {"key": KEY} | ({"Content-Type": content_type} if content_type else {})
    response = client.post(V2, content=json.dumps(v2()).encode(), headers=headers)
    assert response.status_code == 415
    assert response.json() == {"code": "7126", "message": "Invalid content type"}
    assert sandbox.messages() == []


def test_json_with_a_charset_is_accepted(started: Any) -> None:
    sandbox, client = started()
    response = client.post(V2, content=json.dumps(v2()).encode(),
                           headers={"key": KEY, "Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 201
    assert len(sandbox.messages()) == 1


# --- its own tables -----------------------------------------------------------------------


@pytest.mark.parametrize("module", ["sandbox.py", "sandbox_checks.py", "sandbox_reference.py"])
def test_the_sandbox_never_reads_the_clients_facts(module: str) -> None:
    """A wrong fact in runner/vendor.py or runner/segments.py must be caught by the sandbox,
    not mirrored: the sandbox modules import neither."""
    tree = ast.parse((RUNNER / module).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not {"runner.vendor", "runner.segments", "runner.compile", "runner.render"} & imported
    assert "vendor" not in {name.rsplit(".", 1)[-1] for name in imported if name.startswith("runner")}


def test_the_sandboxs_gsm7_table_is_the_standard_one() -> None:
    assert len(GSM7_BASIC) == 127  # 128 code points, ESC left out
    assert len(GSM7_EXTENSION) == 10
    assert {"€", "[", "]", "{", "}", "\\", "^", "~", "|", "\x0c"} == GSM7_EXTENSION
    assert "`" not in GSM7_BASIC and "ç" not in GSM7_BASIC and "Ç" in GSM7_BASIC


@pytest.mark.parametrize(("text", "unicode", "expected"), [
    ("x" * 160, False, 1), ("x" * 161, False, 2), ("x" * 306, False, 2), ("x" * 307, False, 3),
    ("€" * 80, False, 1), ("€" * 81, False, 2), ("x" * 152 + "€" + "x" * 152, False, 3),  # 306 septets, but the ESC pair is not split
    ("ё" * 70, False, 1), ("ё" * 71, False, 2), ("x" * 70, True, 1), ("x" * 71, True, 2),
    ("👍" * 35, False, 1), ("👍" * 36, False, 2),
])
def test_the_sandboxs_segment_count(text: str, unicode: bool, expected: int) -> None:
    assert segments(text, unicode=unicode) == expected


# --- switches -------------------------------------------------------------------------------


def test_by_default_a_repeated_idempotency_key_is_stored_once(started: Any) -> None:
    sandbox, client = started()
    headers = JSON_HEADERS | {"Idempotency-Key": "batch-1"}
    first = client.post(V2, content=json.dumps(v2()), headers=headers)
    again = client.post(V2, content=json.dumps(v2()), headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["messageId"] == first.json()["messageId"]
    assert len(sandbox.messages()) == 1


def test_ignore_idempotency_lets_duplicates_reach_handsets(started: Any) -> None:
    sandbox, client = started(ignore_idempotency=True)
    headers = JSON_HEADERS | {"Idempotency-Key": "batch-1"}
    first = client.post(V2, content=json.dumps(v2()), headers=headers)
    again = client.post(V2, content=json.dumps(v2()), headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["messageId"] != first.json()["messageId"]
    assert [m.msisdn for m in sandbox.messages()] == [A, A]


def test_drop_requests_accepts_then_swallows_the_chosen_answer(started: Any) -> None:
    sandbox, client = started(drop_requests=frozenset({2}))
    assert client.post(V2, content=json.dumps(v2()), headers=JSON_HEADERS).status_code == 201
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(V2, content=json.dumps(v2()), headers=JSON_HEADERS)
    assert client.post(V2, content=json.dumps(v2()), headers=JSON_HEADERS).status_code == 201
    assert len(sandbox.messages()) == 3  # the second was taken although its answer never came
    assert sandbox.stats()["dropped"] == 1


def test_drop_keys_swallows_the_first_answer_then_replays(started: Any) -> None:
    sandbox, client = started(drop_keys=frozenset({"batch-2"}))
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(V2, content=json.dumps(v2()), headers=JSON_HEADERS | {"Idempotency-Key": "batch-2"})
    resent = client.post(V2, content=json.dumps(v2()), headers=JSON_HEADERS | {"Idempotency-Key": "batch-2"})
    assert resent.status_code == 201 and resent.headers["Idempotent-Replayed"] == "true"
    other = client.post(V2, content=json.dumps(v2()), headers=JSON_HEADERS | {"Idempotency-Key": "batch-3"})
    assert other.status_code == 201
    assert len(sandbox.messages()) == 2


# --- CLICKED receipts ---------------------------------------------------------------------

LINK_TEXT = {"type": "text", "text": "Sale https://shop.example/x today"}
HOOK = "https://receipts.example/hook"  # not loopback: receipts are kept in the outbox, never sent


def _receipt_codes(sandbox: Sandbox) -> list[str]:
    return [item["receipt"]["deliveryInfoNotification"]["deliveryInfo"]["code"] for item in sandbox.outbox()]


def test_no_clicked_receipt_without_click_tracking(started: Any) -> None:
    sandbox, client = started()
    body = v2(content=LINK_TEXT, notifyUrl=HOOK, requestedReceipts=["DELIVERED", "CLICKED"])
    assert client.post(V2, content=json.dumps(body), headers=JSON_HEADERS).status_code == 201
    assert _receipt_codes(sandbox) == ["7500"]


def test_clicked_receipt_with_shorten_and_track(started: Any) -> None:
    sandbox, client = started()
    body = v2(content=LINK_TEXT, notifyUrl=HOOK, requestedReceipts=["CLICKED"],
              options={"domain": "https://s.example", "shortenLinks": "true", "trackClicks": "true"})
    assert client.post(V2, content=json.dumps(body), headers=JSON_HEADERS).status_code == 201
    assert _receipt_codes(sandbox) == ["7528"]
    info = sandbox.outbox()[0]["receipt"]["deliveryInfoNotification"]["deliveryInfo"]
    assert info["Description"] == "https://shop.example/x|127.0.0.1"
    assert info["deliveryStatus"] == "Clicked"


def test_no_clicked_receipt_for_a_text_without_a_link(started: Any) -> None:
    sandbox, client = started()
    body = v2(notifyUrl=HOOK, options={"domain": "https://s.example", "shortenLinks": "true", "trackClicks": "true"})
    assert client.post(V2, content=json.dumps(body), headers=JSON_HEADERS).status_code == 201
    assert _receipt_codes(sandbox) == ["7501", "7500"]


def test_the_client_and_the_sandbox_agree_on_gsm7() -> None:
    """Written apart, compared here: a character missing from either table fails this."""
    from runner import segments as client_segments

    assert GSM7_BASIC == client_segments.GSM7_BASIC
    assert GSM7_EXTENSION == client_segments.GSM7_EXTENSION


def test_a_pinned_now_judges_the_schedule(started: Any) -> None:
    """`apply --sandbox` under CAMPAIGN_NOW: the rehearsal's vendor lives at the pinned time."""
    from datetime import datetime, timezone

    sandbox, client = started(now=datetime(2020, 1, 1, 8, 0, tzinfo=timezone.utc))
    body = v2(sendAt="2020-01-01T09:00:00Z")  # an hour ahead of the pinned time
    assert client.post(V2, content=json.dumps(body), headers=JSON_HEADERS).status_code == 201
    late = v2(sendAt="2019-12-31T09:00:00Z")
    assert client.post(V2, content=json.dumps(late), headers=JSON_HEADERS).json()["message"] == (
        "Invalid parameter - sendAt")
