"""The ledger, against real SQLite files and a real PostgreSQL server (the `ledger` and
`any_state` fixtures run each test on both backends), and its lock, against real processes."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from runner.errors import CampaignError, ExitCode
from runner.ledger import STATUSES, FailureGroup, Ledger, acquire_lock, lock_path, open_ledger
from runner.model import Batch, Destination

from .postgres import fresh_database, stop_postgres_at_session_end  # noqa: F401 (stops the server)

CAMPAIGN = "spring-sale"


def make_batch(index: int, count: int = 3, *, prefix: str = "k", api: str = "v2", first: int = 0) -> Batch:
    destinations = tuple(
        Destination(msisdn=f"+4477009{index:02d}{n:04d}", correlation_id=f"{CAMPAIGN}-{index}-{n}")
        for n in range(first, first + count)
    )
    body = {"channel": "sms", "from": "Shop", "to": [{"msisdn": [d.msisdn for d in destinations]}],
            "content": {"type": "text", "text": "Hello, 20% off today"}}
    return Batch(key=f"{prefix}{index}", index=index, api=api,  # type: ignore[arg-type]
                 body=body, destinations=destinations)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / ".campaign" / "state.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_state(request: pytest.FixtureRequest, state: Path) -> str | Path:
    """A fresh ledger's state on each backend: a SQLite path, or a new PostgreSQL database."""
    return state if request.param == "sqlite" else fresh_database()


@pytest.fixture
def ledger(any_state: str | Path) -> Ledger:
    with open_ledger(any_state) as opened:
        yield opened  # type: ignore[misc]


def rows(ledger: Ledger, sql: str) -> list[tuple[object, ...]]:
    """Rows of a query over the ledger's own connection (the SQL both dialects share)."""
    with ledger._read() as connection:
        return [tuple(row) for row in connection.execute(sql).fetchall()]


def table_columns(ledger: Ledger) -> dict[str, list[str]]:
    if ledger._connection().dialect.name == "sqlite":
        tables = [str(row[0]) for row in rows(ledger, "SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: [str(c[1]) for c in rows(ledger, f"PRAGMA table_info({t})")] for t in tables}
    found: dict[str, list[str]] = {}
    for table, column in rows(ledger, "SELECT table_name, column_name FROM information_schema.columns "
                                      "WHERE table_schema = current_schema()"):
        found.setdefault(str(table), []).append(str(column))
    return found


def run_child(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- schema ---------------------------------------------------------------------------


def test_open_creates_directory_schema_and_pragmas(state: Path) -> None:
    assert not state.parent.exists()
    with Ledger.open(state) as ledger:
        connection = ledger._connection()
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    raw = sqlite3.connect(state)
    tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"campaigns", "batches", "destinations", "receipts", "runs"} <= tables
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 3
    columns = {row[1] for row in raw.execute("PRAGMA table_info(batches)")}
    assert {"campaign_id", "batch_key", "batch_index", "api", "status", "attempts", "http_status",
            "vendor_code", "vendor_message", "message_id", "destinations_count", "run_id",
            "updated_at"} <= columns
    raw.execute("INSERT INTO campaigns VALUES ('default', 'c', NULL, 'now', 'now')")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):  # 'sent' is not a status
        raw.execute("INSERT INTO batches(environment, batch_key, campaign_id, batch_index, api, status,"
                    " destinations_count, created_at, updated_at)"
                    " VALUES ('default', 'b', 'c', 0, 'v2', 'sent', 1, 'now', 'now')")
    raw.close()


def test_reopen_keeps_data(state: Path) -> None:
    with Ledger.open(state) as ledger:
        ledger.set_campaign_hash(CAMPAIGN, "sha256:abc")
        ledger.record_pending(CAMPAIGN, make_batch(0))
    with Ledger.open(state) as ledger:
        assert ledger.campaign_hash(CAMPAIGN) == "sha256:abc"
        assert ledger.batch_status("k0") == "pending"


def test_newer_schema_is_refused(state: Path) -> None:
    Ledger.open(state).close()
    raw = sqlite3.connect(state)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(CampaignError) as caught:
        Ledger.open(state)
    assert caught.value.exit_code == ExitCode.REFUSED
    assert "newer" in caught.value.message


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "state.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CampaignError) as caught:
        Ledger.open(garbage)
    assert caught.value.exit_code == ExitCode.USAGE
    foreign = tmp_path / "other.db"
    raw = sqlite3.connect(foreign)
    raw.execute("CREATE TABLE something(x)")
    raw.commit()
    raw.close()
    with pytest.raises(CampaignError):
        Ledger.open(foreign)


def test_campaign_hash(ledger: Ledger) -> None:
    assert ledger.campaign_hash(CAMPAIGN) is None
    ledger.set_campaign_hash(CAMPAIGN, "h1")
    ledger.set_campaign_hash(CAMPAIGN, "h2")
    assert ledger.campaign_hash(CAMPAIGN) == "h2"
    assert ledger.campaign_hash("other") is None


# --- the pending upsert ---------------------------------------------------------------


def test_record_pending_inserts_batch_and_destinations(ledger: Ledger) -> None:
    batch = make_batch(0, count=5)
    ledger.record_pending(CAMPAIGN, batch)
    record = ledger.batch_record("k0")
    assert record is not None
    assert (record.status, record.attempts, record.destinations_count, record.api) == ("pending", 0, 5, "v2")
    assert ledger.summary(CAMPAIGN).destinations["pending"] == 5
    ledger.record_pending(CAMPAIGN, batch)  # idempotent
    assert ledger.summary(CAMPAIGN).destinations["pending"] == 5
    assert ledger.summary(CAMPAIGN).total_batches == 1


@pytest.mark.parametrize("final", ["accepted", "failed", "uncertain"])
def test_record_pending_never_downgrades(ledger: Ledger, final: str) -> None:
    batch = make_batch(0)
    ledger.record_pending(CAMPAIGN, batch)
    run = ledger.begin_run(CAMPAIGN)
    ledger.mark_in_flight("k0", run)
    if final == "accepted":
        ledger.mark_accepted("k0", http_status=201, message_id="m-1")
    elif final == "failed":
        ledger.mark_failed("k0", http_status=400, code="7004", message="Invalid parameter")
    else:
        ledger.mark_uncertain("k0", reason="read timeout")
    ledger.record_pending(CAMPAIGN, batch)
    ledger.record_pending_many(CAMPAIGN, [batch, make_batch(1)])
    record = ledger.batch_record("k0")
    assert record is not None and record.status == final and record.attempts == 1
    summary = ledger.summary(CAMPAIGN)
    assert summary.destinations[final] == 3
    assert summary.destinations["pending"] == 3  # batch 1 only


def test_record_pending_refuses_a_destination_already_accepted_elsewhere(ledger: Ledger) -> None:
    ledger.record_pending(CAMPAIGN, make_batch(0))
    run = ledger.begin_run(CAMPAIGN)
    ledger.mark_in_flight("k0", run)
    ledger.mark_accepted("k0", http_status=201, message_id="m")
    # the campaign changed: the same destinations in a batch with another key
    rekeyed = make_batch(0, prefix="changed")
    with pytest.raises(CampaignError) as caught:
        ledger.record_pending(CAMPAIGN, rekeyed)
    assert caught.value.exit_code == ExitCode.REFUSED
    assert "accepted in batch k0" in caught.value.message
    assert ledger.batch_status("changed0") is None  # rolled back entirely


def test_record_pending_refuses_a_destination_in_flight_elsewhere(ledger: Ledger) -> None:
    ledger.record_pending(CAMPAIGN, make_batch(0))
    ledger.mark_in_flight("k0", ledger.begin_run(CAMPAIGN))
    with pytest.raises(CampaignError) as caught:
        ledger.record_pending(CAMPAIGN, make_batch(0, prefix="changed"))
    assert caught.value.exit_code == ExitCode.REFUSED
    assert "in-flight in batch k0" in caught.value.message


def test_record_pending_moves_pending_failed_and_uncertain_destinations(ledger: Ledger) -> None:
    ledger.record_pending_many(CAMPAIGN, [make_batch(0), make_batch(1), make_batch(2), make_batch(3)])
    run = ledger.begin_run(CAMPAIGN)
    for key in ("k1", "k2", "k3"):
        ledger.mark_in_flight(key, run)
    ledger.mark_failed("k1", http_status=400, code="7101", message="Invalid sender ID")
    ledger.mark_uncertain("k2", reason="read timeout")
    ledger.mark_uncertain("k3", reason="read timeout")
    assert ledger.msisdns_with_status(CAMPAIGN, "uncertain") == {
        d.msisdn for i in (2, 3) for d in make_batch(i).destinations}
    # re-planned: batches 0-2 now live in new batches; the operator resends batch 2's uncertain ones
    ledger.record_pending_many(CAMPAIGN, [make_batch(i, prefix="new") for i in range(3)])
    assert ledger.batch_status("k0") is None  # never attempted, emptied: dropped
    assert ledger.batch_status("k1") == "failed"  # history kept...
    assert ledger.batch_status("k2") == "uncertain"
    superseded = {r.batch_key for r in ledger.batch_records(CAMPAIGN, include_superseded=True) if r.superseded}
    assert superseded == {"k1", "k2"}  # ...but superseded
    assert [r.batch_key for r in ledger.batch_records(CAMPAIGN, "uncertain")] == ["k3"]
    assert {ledger.batch_status(f"new{i}") for i in range(3)} == {"pending"}
    summary = ledger.summary(CAMPAIGN)
    assert dict(summary.batches) == {"pending": 3, "in-flight": 0, "accepted": 0, "failed": 0, "uncertain": 1}
    assert summary.superseded == 2
    assert summary.destinations["pending"] == 9 and summary.destinations["uncertain"] == 3
    assert summary.failures == ()
    assert ledger.has_uncertain(CAMPAIGN)
    ledger.record_pending(CAMPAIGN, make_batch(3, prefix="new"))
    assert not ledger.has_uncertain(CAMPAIGN)  # k3 is superseded too now
    with pytest.raises(CampaignError):
        ledger.msisdns_with_status(CAMPAIGN, "sent")


def test_batch_key_of_another_campaign_is_a_bug(ledger: Ledger) -> None:
    ledger.record_pending(CAMPAIGN, make_batch(0))
    with pytest.raises(CampaignError) as caught:
        ledger.record_pending("other", make_batch(0))
    assert caught.value.exit_code == ExitCode.INTERNAL


# --- transitions ----------------------------------------------------------------------


def test_transitions_and_attempts(ledger: Ledger) -> None:
    ledger.record_pending(CAMPAIGN, make_batch(0))
    run = ledger.begin_run(CAMPAIGN)
    ledger.mark_in_flight("k0", run)
    ledger.mark_in_flight("k0", run)  # a retry after a RETRY answer
    ledger.mark_pending("k0", http_status=None, code=None, message="could not connect")
    assert ledger.batch_status("k0") == "pending"
    ledger.mark_in_flight("k0", run)
    ledger.mark_accepted("k0", http_status=201, message_id="msg-1")
    record = ledger.batch_record("k0")
    assert record is not None
    assert (record.status, record.attempts, record.http_status, record.message_id, record.run_id) == (
        "accepted", 3, 201, "msg-1", run)
    assert record.vendor_code is None and record.vendor_message is None
    assert ledger.summary(CAMPAIGN).attempts == 3


@pytest.mark.parametrize(
    "mark",
    [
        lambda ledger, run: ledger.mark_in_flight("k0", run),
        lambda ledger, run: ledger.mark_accepted("k0", http_status=201, message_id=None),
        lambda ledger, run: ledger.mark_failed("k0", http_status=400, code="7004", message="x"),
        lambda ledger, run: ledger.mark_uncertain("k0", reason="x"),
        lambda ledger, run: ledger.mark_pending("k0", http_status=None, code=None, message="x"),
    ],
)
def test_accepted_is_terminal(ledger: Ledger, mark: object) -> None:
    ledger.record_pending(CAMPAIGN, make_batch(0))
    run = ledger.begin_run(CAMPAIGN)
    ledger.mark_in_flight("k0", run)
    ledger.mark_accepted("k0", http_status=201, message_id="m")
    with pytest.raises(CampaignError) as caught:
        mark(ledger, run)  # type: ignore[operator]
    assert caught.value.exit_code == ExitCode.INTERNAL
    assert ledger.batch_status("k0") == "accepted"
    assert ledger.accepted_destinations(CAMPAIGN) == {(d.msisdn, d.correlation_id) for d in make_batch(0).destinations}


def test_illegal_transitions_from_pending(ledger: Ledger) -> None:
    ledger.record_pending(CAMPAIGN, make_batch(0))
    for mark in (
        lambda: ledger.mark_accepted("k0", http_status=201, message_id=None),
        lambda: ledger.mark_uncertain("k0", reason="x"),
        lambda: ledger.mark_in_flight("nope", "run"),
    ):
        with pytest.raises(CampaignError) as caught:
            mark()
        assert caught.value.exit_code == ExitCode.INTERNAL
    assert ledger.batch_status("k0") == "pending"
    assert ledger.batch_status("nope") is None


def test_failed_and_uncertain_can_be_tried_again(ledger: Ledger) -> None:
    ledger.record_pending_many(CAMPAIGN, [make_batch(0), make_batch(1)])
    run = ledger.begin_run(CAMPAIGN)
    for key in ("k0", "k1"):
        ledger.mark_in_flight(key, run)
    ledger.mark_failed("k0", http_status=500, code="7006", message="Internal error")
    ledger.mark_uncertain("k1", reason="read timeout")
    assert ledger.has_uncertain(CAMPAIGN)
    ledger.mark_in_flight("k0", run)
    ledger.mark_in_flight("k1", run)
    assert not ledger.has_uncertain(CAMPAIGN)
    ledger.mark_accepted("k0", http_status=201, message_id="a")
    ledger.mark_uncertain("k1", reason="again")
    ledger.mark_failed("k1", http_status=None, code=None, message="operator: not sent")
    assert ledger.batch_status("k1") == "failed"


def test_destination_status_mirrors_batch(ledger: Ledger) -> None:
    ledger.record_pending_many(CAMPAIGN, [make_batch(0), make_batch(1)])
    run = ledger.begin_run(CAMPAIGN)
    ledger.mark_in_flight("k0", run)
    query = "SELECT DISTINCT batch_key, status FROM destinations ORDER BY batch_key"
    assert rows(ledger, query) == [("k0", "in-flight"), ("k1", "pending")]
    ledger.mark_uncertain("k0", reason="timeout")
    assert rows(ledger, query) == [("k0", "uncertain"), ("k1", "pending")]


def test_dead_in_flight_becomes_uncertain(any_state: str | Path) -> None:
    with open_ledger(any_state) as first:
        first.record_pending_many(CAMPAIGN, [make_batch(0), make_batch(1), make_batch(2)])
        dead_run = first.begin_run(CAMPAIGN)
        first.mark_in_flight("k0", dead_run)
        first.mark_in_flight("k1", dead_run)
        first.mark_accepted("k1", http_status=201, message_id="m")
        first.record_pending("other", make_batch(9, prefix="o"))
        first.mark_in_flight("o9", dead_run)
    with open_ledger(any_state) as second:
        run = second.begin_run(CAMPAIGN)
        second.mark_in_flight("k2", run)  # this run's own in-flight batch is not touched
        assert second.mark_dead_in_flight_uncertain(CAMPAIGN) == 1
        assert second.mark_dead_in_flight_uncertain(CAMPAIGN) == 0
        assert [second.batch_status(k) for k in ("k0", "k1", "k2", "o9")] == [
            "uncertain", "accepted", "in-flight", "in-flight"]
        record = second.batch_record("k0")
        assert record is not None and record.vendor_message is not None
        assert dead_run in record.vendor_message and str(os.getpid()) in record.vendor_message
        assert second.has_uncertain(CAMPAIGN) and not second.has_uncertain("other")
        assert second.summary(CAMPAIGN).destinations["uncertain"] == 3


# --- destinations, summary, receipts --------------------------------------------------


def test_accepted_destinations_and_msisdns(ledger: Ledger) -> None:
    shared = Destination("+447700900001", "again")
    first = Batch("a", 0, "v2", {}, (Destination("+447700900001", "one"), Destination("+447700900002", "two")))
    second = Batch("b", 1, "v2", {}, (shared, Destination("+447700900003", "three")))
    ledger.record_pending_many(CAMPAIGN, [first, second])
    run = ledger.begin_run(CAMPAIGN)
    ledger.mark_in_flight("a", run)
    ledger.mark_accepted("a", http_status=201, message_id="m")
    ledger.mark_in_flight("b", run)
    ledger.mark_failed("b", http_status=400, code="7102", message="Invalid destination address")
    assert ledger.accepted_destinations(CAMPAIGN) == {("+447700900001", "one"), ("+447700900002", "two")}
    assert ledger.accepted_msisdns(CAMPAIGN) == {"+447700900001", "+447700900002"}
    assert ledger.accepted_destinations("other") == set()


def test_summary_figures_are_exact(ledger: Ledger) -> None:
    ledger.set_campaign_hash(CAMPAIGN, "h")
    ledger.record_pending_many(CAMPAIGN, [make_batch(i, count=i + 1) for i in range(7)])
    run = ledger.begin_run(CAMPAIGN)
    for i in range(6):
        ledger.mark_in_flight(f"k{i}", run)
    ledger.mark_in_flight("k0", run)  # second attempt
    ledger.mark_accepted("k0", http_status=201, message_id="m0")
    ledger.mark_accepted("k1", http_status=201, message_id="m1")
    ledger.mark_failed("k2", http_status=400, code="7004", message="Invalid parameter - sendAt")
    ledger.mark_failed("k3", http_status=400, code="7004", message="Invalid parameter - sendAt")
    ledger.mark_failed("k4", http_status=401, code=None, message="HTTP 401 Unauthorized")
    # k5 stays in flight, k6 pending
    ledger.finish_run(run)
    summary = ledger.summary(CAMPAIGN)
    assert summary.input_hash == "h"
    assert dict(summary.batches) == {"pending": 1, "in-flight": 1, "accepted": 2, "failed": 3, "uncertain": 0}
    assert dict(summary.destinations) == {"pending": 7, "in-flight": 6, "accepted": 1 + 2, "failed": 3 + 4 + 5,
                                          "uncertain": 0}
    assert summary.failures == (
        FailureGroup("7004", "Invalid parameter - sendAt", 2, 3 + 4),
        FailureGroup(None, "HTTP 401 Unauthorized", 1, 5),
    )
    assert summary.attempts == 7
    assert summary.runs == 1
    assert summary.last_run_started_at is not None and summary.last_run_finished_at is not None
    assert summary.first_run_started_at == summary.last_run_started_at
    assert summary.total_batches == 7 and summary.total_destinations == 28
    empty = ledger.summary("nothing")
    assert empty.total_batches == 0 and set(empty.batches) == set(STATUSES) and empty.runs == 0
    assert empty.last_run_started_at is None and empty.input_hash is None


def receipt(correlation: str, destination: str, status: str = "Delivered", code: str = "7500",
            transid: str = "t-1", stamp: str = "2024-10-10T13:53:13.749+01:00") -> dict[str, object]:
    return {"deliveryInfoNotification": {
        "deliveryInfo": {"timeStamp": stamp, "Description": status, "code": code, "messageCount": "1",
                         "deliveryChannel": "SMS", "additionalInfo": "", "destination": destination,
                         "destinationType": "msisdn", "deliveryStatus": status},
        "carrier": "USTMO", "subtid": "", "transid": transid, "callbackData": "", "correlationid": correlation}}


def test_receipts_matched_by_correlation_id(ledger: Ledger) -> None:
    batch = make_batch(0)
    ledger.record_pending(CAMPAIGN, batch)
    # another campaign with the same correlation ids for other numbers
    other = tuple(Destination(d.msisdn.replace("+44", "+1"), d.correlation_id) for d in batch.destinations)
    ledger.record_pending("other", Batch("o0", 0, "v2", {}, other))
    run = ledger.begin_run(CAMPAIGN)
    ledger.mark_in_flight("k0", run)
    ledger.mark_accepted("k0", http_status=201, message_id="msg-k0")
    first, second = batch.destinations[0], batch.destinations[1]
    digits = first.msisdn.lstrip("+")
    assert ledger.record_receipt(CAMPAIGN, receipt(first.correlation_id, digits, "Submitted", "7501"))
    assert ledger.record_receipt(CAMPAIGN, receipt(first.correlation_id, digits))
    assert ledger.record_receipt(CAMPAIGN, receipt(first.correlation_id, digits))  # webhook retried
    # without the envelope, and without a campaign: found by correlation id + number
    inner = receipt(second.correlation_id, second.msisdn.lstrip("+"), "Failed", "7102")["deliveryInfoNotification"]
    assert ledger.record_receipt(None, inner)  # type: ignore[arg-type]
    assert not ledger.record_receipt(CAMPAIGN, receipt("unknown-id", "15550000000", transid="nope"))
    # found by transid = messageId when the correlation id is missing
    third = batch.destinations[2]
    assert ledger.record_receipt(None, receipt("", third.msisdn.lstrip("+"), transid="msg-k0"))
    assert dict(ledger.summary(CAMPAIGN).receipts) == {"Delivered": 2, "Failed": 1, "Submitted": 1}
    assert dict(ledger.summary("other").receipts) == {}
    failed = rows(ledger, "SELECT campaign_id, batch_key, msisdn, correlation_id, code, time_stamp FROM receipts "
                          "WHERE delivery_status = 'Failed'")
    assert failed == [(CAMPAIGN, "k0", second.msisdn, second.correlation_id, "7102", "2024-10-10T13:53:13.749+01:00")]


def test_ambiguous_receipt_is_not_matched(ledger: Ledger) -> None:
    ledger.record_pending("a", Batch("a0", 0, "v2", {}, (Destination("+15550000001", "same"),)))
    ledger.record_pending("b", Batch("b0", 0, "v2", {}, (Destination("+15550000002", "same"),)))
    assert not ledger.record_receipt(None, receipt("same", ""))
    assert ledger.record_receipt(None, receipt("same", "15550000002"))
    assert dict(ledger.summary("b").receipts) == {"Delivered": 1}


# --- secrets --------------------------------------------------------------------------


def test_nothing_secret_like_is_stored(ledger: Ledger) -> None:
    batch = make_batch(0)
    ledger.record_pending(CAMPAIGN, batch)
    run = ledger.begin_run(CAMPAIGN)
    ledger.mark_in_flight("k0", run)
    ledger.mark_accepted("k0", http_status=201, message_id="m")
    ledger.record_receipt(CAMPAIGN, receipt(batch.destinations[0].correlation_id, ""))
    suspicious = ("header", "auth", "secret", "token", "jwt", "password", "body", "content", "text")
    tables = table_columns(ledger)
    assert {"campaigns", "batches", "destinations", "receipts", "orphan_receipts", "runs"} <= set(tables)
    for table, columns in tables.items():
        for column in columns:
            name = column.lower()
            if (table, name) == ("destinations", "content_digest"):
                continue  # a 16-hex-digit digest of what was sent, checked below, never the text
            assert not any(word in name for word in suspicious), f"{table}.{name}"
            assert name == "batch_key" or "key" not in name, f"{table}.{name}"
        for row in rows(ledger, f"SELECT * FROM {table}"):
            assert not any(isinstance(value, str) and "20% off" in value for value in row)
    digests = [row[0] for row in rows(ledger, "SELECT content_digest FROM destinations")]
    assert digests and all(len(d) == 16 and int(d, 16) >= 0 for d in digests)


# --- concurrency and volume ------------------------------------------------------------


def test_thread_safe_transitions(ledger: Ledger) -> None:
    ledger.record_pending_many(CAMPAIGN, [make_batch(i, count=10) for i in range(200)])
    run = ledger.begin_run(CAMPAIGN)
    errors: list[BaseException] = []

    def worker(indexes: range) -> None:
        try:
            for i in indexes:
                ledger.mark_in_flight(f"k{i}", run)
                if i % 4:
                    ledger.mark_accepted(f"k{i}", http_status=201, message_id=f"m{i}")
                else:
                    ledger.mark_failed(f"k{i}", http_status=400, code="7004", message="bad")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(range(n, 200, 8),)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    summary = ledger.summary(CAMPAIGN)
    assert dict(summary.batches) == {"pending": 0, "in-flight": 0, "accepted": 150, "failed": 50, "uncertain": 0}
    assert summary.destinations["accepted"] == 1500 and summary.attempts == 200
    records = {r.batch_key: r for r in ledger.batch_records(CAMPAIGN)}
    assert all(records[f"k{i}"].message_id == (f"m{i}" if i % 4 else None) for i in range(200))


def test_hundred_thousand_destinations_insert_with_one_commit_per_batch(state: Path) -> None:
    """What keeps a large insert fast under synchronous=FULL: one fsynced transaction per
    batch of 1000 destinations (or per record_pending_many call), never one per destination."""
    statements: list[str] = []
    ledger = open_ledger(state)
    connection = ledger._connection().raw  # type: ignore[attr-defined]
    connection.set_trace_callback(statements.append)
    try:
        for i in range(90):
            ledger.record_pending(CAMPAIGN, make_batch(i, count=1000))
        ledger.record_pending_many(CAMPAIGN, [make_batch(i, count=1000) for i in range(90, 100)])
    finally:
        connection.set_trace_callback(None)
    commits = [s for s in statements if s.strip().upper().startswith(("COMMIT", "END"))]
    begins = [s for s in statements if s.strip().upper().startswith("BEGIN")]
    assert (len(begins), len(commits)) == (91, 91)
    summary = ledger.summary(CAMPAIGN)
    assert summary.destinations["pending"] == 100_000 == summary.total_destinations
    assert summary.total_batches == 100
    ledger.close()


# --- crash durability -----------------------------------------------------------------


def test_in_flight_survives_sigkill(state: Path) -> None:
    child = run_child(
        """
        import os, signal, sys
        from pathlib import Path
        from runner.ledger import Ledger
        from runner.model import Batch, Destination
        ledger = Ledger.open(Path(sys.argv[1]))
        ledger.record_pending("spring-sale", Batch("k0", 0, "v2", {}, (Destination("+15550000001", "c1"),)))
        run = ledger.begin_run("spring-sale")
        ledger.mark_in_flight("k0", run)
        os.kill(os.getpid(), signal.SIGKILL)  # the request would leave now
        """,
        str(state),
    )
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, stderr
    with Ledger.open(state) as ledger:
        assert ledger.batch_status("k0") == "in-flight"
        record = ledger.batch_record("k0")
        assert record is not None and record.attempts == 1
        ledger.begin_run(CAMPAIGN)
        assert ledger.mark_dead_in_flight_uncertain(CAMPAIGN) == 1
        assert ledger.batch_status("k0") == "uncertain"


def test_accepted_survives_os_exit(state: Path) -> None:
    child = run_child(
        """
        import os, sys
        from pathlib import Path
        from runner.ledger import Ledger
        from runner.model import Batch, Destination
        ledger = Ledger.open(Path(sys.argv[1]))
        ledger.record_pending("spring-sale", Batch("k0", 0, "v2", {}, (Destination("+15550000001", "c1"),)))
        run = ledger.begin_run("spring-sale")
        ledger.mark_in_flight("k0", run)
        ledger.mark_accepted("k0", http_status=201, message_id="m-1")
        os._exit(0)  # no close(), no checkpoint
        """,
        str(state),
    )
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr
    with Ledger.open(state) as ledger:
        assert ledger.batch_status("k0") == "accepted"
        assert ledger.accepted_msisdns(CAMPAIGN) == {"+15550000001"}


# --- the lock -------------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from runner.ledger import acquire_lock
with acquire_lock(Path(sys.argv[1]), sys.argv[2]):
    print("locked", flush=True)
    time.sleep(120)
"""


def start_holder(state: Path, campaign: str = CAMPAIGN) -> subprocess.Popen[str]:
    holder = run_child(HOLDER, str(state), campaign)
    assert holder.stdout is not None
    line = holder.stdout.readline()
    assert line.strip() == "locked", holder.stderr.read() if holder.stderr else ""
    return holder


def test_lock_contention_between_processes_and_release_on_kill(state: Path) -> None:
    holder = start_holder(state)
    try:
        with pytest.raises(CampaignError) as caught:
            with acquire_lock(state, CAMPAIGN):
                pytest.fail("got a lock another process holds")
        assert caught.value.exit_code == ExitCode.REFUSED
        assert caught.value.message.startswith(
            f"campaign '{CAMPAIGN}' is being applied by another process (host {socket.gethostname()}, "
            f"pid {holder.pid}, since 20")
        assert caught.value.hint
        with acquire_lock(state, "another-campaign"):  # other campaigns are not blocked
            pass
    finally:
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    with acquire_lock(state, CAMPAIGN):
        assert lock_path(state, CAMPAIGN).read_text().split("\n")[:2] == [str(os.getpid()), socket.gethostname()]
    assert lock_path(state, CAMPAIGN).read_text() == ""


def test_lock_is_not_reentrant_and_is_released(state: Path) -> None:
    with acquire_lock(state, CAMPAIGN):
        with pytest.raises(CampaignError) as caught:
            with acquire_lock(state, CAMPAIGN):
                pass
        assert f"pid {os.getpid()}" in caught.value.message
    with acquire_lock(state, CAMPAIGN):
        pass


def test_second_process_is_refused_with_exit_code(state: Path) -> None:
    holder = start_holder(state)
    try:
        contender = run_child(
            """
            import sys
            from pathlib import Path
            from runner.errors import CampaignError
            from runner.ledger import acquire_lock
            try:
                with acquire_lock(Path(sys.argv[1]), sys.argv[2]):
                    print("GOT IT")
            except CampaignError as exc:
                print(exc.message)
                sys.exit(int(exc.exit_code))
            """,
            str(state),
            CAMPAIGN,
        )
        out, _ = contender.communicate(timeout=60)
        assert contender.returncode == ExitCode.REFUSED
        assert f", pid {holder.pid}, since " in out and "GOT IT" not in out
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_lock_path_is_safe_for_odd_ids(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    assert lock_path(state, "spring-sale") == tmp_path / "state.db.spring-sale.lock"
    odd = lock_path(state, "../../etc/passwd")
    assert odd.parent == tmp_path and "/" not in odd.name
    assert lock_path(state, "a/b") != lock_path(state, "a_b")
