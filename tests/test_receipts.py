"""Receipts end to end: the sandbox posts deliveryInfoNotification webhooks to a real
receipts server on loopback, which records them in a real ledger file."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import pytest

from runner.commands import ApplySettings, Console, StatusSettings, run_apply, run_status
from runner.errors import ExitCode
from runner.ledger import Ledger
from runner.receipts import ReceiptListener, parse_receipts
from runner.sandbox import Sandbox, SandboxSettings

from .helpers import NOW, number, write_campaign

TOKEN = "receipts-e2e-token-0123456789"


def _console() -> Console:
    return Console(out=io.StringIO(), err=io.StringIO(), interactive=False, confirm=lambda q: False,
                   environ={"WEBEX_CONNECT_SERVICE_KEY": "receipts-test-key"})


def test_sandbox_receipts_reach_the_ledger_through_the_listener(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    Ledger.open(state).close()
    with Ledger.open(state) as listener_ledger:
        server = ReceiptListener(listener_ledger, token=TOKEN, path="/wxc")
        url = server.start()
        try:
            campaign = write_campaign(tmp_path, {
                "content": {"text": "Hi {{ name }}"},
                "recipients": [{"msisdn": number(i), "substitutions": {"name": f"n{i}"}} for i in range(1, 4)],
                "requestedReceipts": ["DELIVERED"],
                "notifyUrl": url,
            })
            with Sandbox(SandboxSettings(receipts_token=TOKEN)) as sandbox:
                code = run_apply(ApplySettings(file=campaign, state=state, yes=True, base_url=sandbox.url),
                                 now=NOW, console=_console())
                assert code is ExitCode.OK
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and sandbox.stats().get("receipts_posted", 0) < 3:
                    time.sleep(0.05)
                assert sandbox.stats()["receipts_posted"] == 3
        finally:
            server.stop()
    with Ledger.open(state) as ledger:
        summary = ledger.summary("test-campaign")
    assert dict(summary.receipts) == {"Delivered": 3}
    out = io.StringIO()
    assert run_status(StatusSettings(campaign, state, "json"), now=NOW, out=out) is ExitCode.OK
    assert json.loads(out.getvalue())["receipts"] == {"Delivered": 3}


def test_listener_rejects_what_is_not_a_receipt_and_counts_unmatched(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "s.db") as ledger:
        server = ReceiptListener(ledger, token=None)
        url = server.start()
        try:
            bad = httpx.post(url, content=b"not json")
            assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
            shape = httpx.post(url, json={"hello": 1})
            assert shape.status_code == 400 and "deliveryInfo" in shape.json()["error"]
            unknown = {"deliveryInfoNotification": {"deliveryInfo": {"deliveryStatus": "Delivered",
                                                                     "destination": "447911000001"},
                                                    "transid": "nope", "correlationid": "nobody"}}
            answer = httpx.post(url, json=unknown)
            assert answer.status_code == 200 and answer.json() == {"matched": 0, "unmatched": 1}
        finally:
            server.stop()


def test_parse_receipts_accepts_one_or_a_list() -> None:
    one = {"deliveryInfoNotification": {"deliveryInfo": {"deliveryStatus": "Delivered"}, "correlationid": "a"}}
    assert parse_receipts(json.dumps(one).encode()) == [one]
    assert parse_receipts(json.dumps([one, one]).encode()) == [one, one]


def test_ledger_records_many_receipts_in_one_call_matched_or_not(tmp_path: Path) -> None:
    """The listener's group commit: one answer per receipt, duplicates stored once."""
    from runner.model import Batch, Destination

    def receipt(correlation: str, status: str) -> dict[str, object]:
        return {"deliveryInfoNotification": {"deliveryInfo": {"deliveryStatus": status}, "correlationid": correlation}}

    with Ledger.open(tmp_path / "s.db") as ledger:
        ledger.record_pending_many("camp", [Batch(key="k", index=0, api="v2", body={},
                                                  destinations=(Destination("+447911000001", "c1"),))])
        outcomes = ledger.record_receipts([receipt("c1", "Submitted"), receipt("nobody", "Delivered"),
                                           receipt("c1", "Delivered"), receipt("c1", "Delivered")])
        assert outcomes == [True, False, True, True]
        assert ledger.record_receipts([]) == []
        assert dict(ledger.summary("camp").receipts) == {"Submitted": 1, "Delivered": 1}
        # one transaction: a receipt that cannot be stored takes the whole group back
        with pytest.raises(UnicodeEncodeError):
            ledger.record_receipts([receipt("c1", "Failed"), receipt("c1", "\ud83d")])
        assert dict(ledger.summary("camp").receipts) == {"Submitted": 1, "Delivered": 1}
        assert ledger.record_receipts([receipt("c1", "Failed")]) == [True]
        assert dict(ledger.summary("camp").receipts) == {"Submitted": 1, "Delivered": 1, "Failed": 1}
