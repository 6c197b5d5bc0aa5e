"""The ledger's shared contract on both backends, end to end: environments, the apply lock
across processes, receipts in groups and orphans, status from the ledger alone, schema
migrations, broken storage; and the done-when cases against a real PostgreSQL.

Applies run for real: `run_apply` in-process or the `campaign` command in a subprocess,
over HTTP on 127.0.0.1 against the project's sandbox; PostgreSQL is a real server
(tests/postgres.py)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from runner.commands import ApplySettings, Console, StatusSettings, parse_duration, run_apply, run_status
from runner.errors import CampaignError, ExitCode
from runner.ledger import Ledger, mask_state, open_ledger
from runner.model import Batch, Destination
from runner.sandbox import Sandbox, SandboxSettings

from .helpers import campaign_command, number, write_campaign, write_csv
from .postgres import fresh_database, stop_postgres_at_session_end, terminate_other_sessions  # noqa: F401

KEY = "backends-key-51c0"
ENV = {"WEBEX_CONNECT_SERVICE_KEY": KEY}
TIMEOUT = 120


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxSettings(service_key=KEY, latency=0.01)) as running:
        yield running


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh ledger on each backend, as `--state` takes it."""
    return str(tmp_path / "state.db") if request.param == "sqlite" else fresh_database()


@pytest.fixture
def pg_state() -> str:
    return fresh_database()


def campaign_file(folder: Path, campaign_id: str, first: int, count: int, *, groups: int = 50,
                  tps: int = 5000, **extra: Any) -> tuple[Path, list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [number(first + i) for i in range(count)]
    write_csv(folder / "people.csv", ["msisdn", "group"], [[m, f"g{i % groups}"] for i, m in enumerate(numbers)])
    path = write_campaign(folder, {"id": campaign_id, "content": {"text": "Hi {{ group | upper }}"},
                                   "recipients": [{"file": "people.csv"}], "throughput": {"tps": tps}, **extra})
    return path, numbers


def _never_asked(question: str) -> bool:
    raise AssertionError(question)


def apply_in_process(path: Path, state: str, base_url: str | None, **options: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    console = Console(out=out, err=err, interactive=False, confirm=_never_asked, environ=ENV)
    settings = ApplySettings(file=path, yes=True, base_url=base_url, state=state, output_format="json", **options)
    code = run_apply(settings, now=datetime.now(timezone.utc), console=console)
    return int(code), out.getvalue(), err.getvalue()



def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBEX_CONNECT", "CAMPAIGN_"))}
    env.update(ENV)
    return env


def apply_command(sandbox: Sandbox, state: str, path: Path, *extra: str) -> list[str]:
    return [*campaign_command(), "apply", "--yes", "--quiet", "--base-url", sandbox.url, "--state", state,
            *extra, str(path)]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*campaign_command(), *args], env=environment(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=TIMEOUT)


def stored(sandbox: Sandbox, numbers: list[str]) -> Counter[str]:
    mine = set(numbers)
    return Counter(m.msisdn for m in sandbox.messages() if m.msisdn in mine)


# --- environments ---------------------------------------------------------------------------


def test_staging_then_production_both_send(tmp_path: Path, state: str) -> None:
    path, numbers = campaign_file(tmp_path, "env-both", first=200_000, count=30)
    once = Counter({m: 1 for m in numbers})
    # two tenants: two sandboxes, both on 127.0.0.1 (the host each environment remembers)
    with Sandbox(SandboxSettings(service_key=KEY)) as staging, Sandbox(SandboxSettings(service_key=KEY)) as production:
        code, out, _ = apply_in_process(path, state, staging.url, environment="staging")
        assert code == 0 and json.loads(out)["accepted"] > 0
        code, out, _ = apply_in_process(path, state, production.url, environment="production")
        assert code == 0 and json.loads(out)["accepted"] > 0, out
        code, out, _ = apply_in_process(path, state, production.url, environment="production")
        assert code == 0 and json.loads(out)["accepted"] == 0  # a second run of one environment sends nothing
        assert stored(staging, numbers) == once and stored(production, numbers) == once
    with open_ledger(state, environment="staging") as ledger:
        assert ledger.summary("env-both").destinations["accepted"] == 30
        assert ledger.environment_hosts() == {"production": "127.0.0.1", "staging": "127.0.0.1"}
    with open_ledger(state) as ledger:  # the default environment never saw it
        assert ledger.summary("env-both").total_destinations == 0


def test_an_environment_pointing_at_another_host_is_refused(tmp_path: Path, sandbox: Sandbox, state: str) -> None:
    path, numbers = campaign_file(tmp_path, "env-host", first=211_000 + 5_000 * ("postgresql" in state), count=5)
    assert apply_in_process(path, state, sandbox.url, environment="staging")[0] == 0
    other = sandbox.url.replace("127.0.0.1", "localhost")
    with pytest.raises(CampaignError) as refused:
        apply_in_process(path, state, other, environment="staging", allow_changes=True)
    assert refused.value.exit_code == ExitCode.REFUSED
    assert refused.value.message.endswith("sent to 127.0.0.1, but this run points at localhost")
    assert stored(sandbox, numbers) == Counter({m: 1 for m in numbers})


def test_environment_names_are_checked(tmp_path: Path, sandbox: Sandbox) -> None:
    path, _ = campaign_file(tmp_path, "env-name", first=212_000, count=1)
    with pytest.raises(CampaignError) as refused:
        apply_in_process(path, str(tmp_path / "s.db"), sandbox.url, environment="../prod")
    assert refused.value.exit_code == ExitCode.USAGE


# --- schema migrations -------------------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE campaigns (campaign_id TEXT PRIMARY KEY, input_hash TEXT, created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL);
CREATE TABLE runs (run_id TEXT PRIMARY KEY, campaign_id TEXT NOT NULL REFERENCES campaigns(campaign_id),
    pid INTEGER NOT NULL, hostname TEXT NOT NULL, started_at TEXT NOT NULL, finished_at TEXT);
CREATE INDEX runs_by_campaign ON runs(campaign_id, started_at);
CREATE TABLE batches (batch_key TEXT PRIMARY KEY, campaign_id TEXT NOT NULL REFERENCES campaigns(campaign_id),
    batch_index INTEGER NOT NULL, api TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, http_status INTEGER, vendor_code TEXT, vendor_message TEXT,
    message_id TEXT, destinations_count INTEGER NOT NULL, run_id TEXT REFERENCES runs(run_id),
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE INDEX batches_by_campaign ON batches(campaign_id, status);
CREATE INDEX batches_by_message_id ON batches(message_id) WHERE message_id IS NOT NULL;
CREATE TABLE destinations (campaign_id TEXT NOT NULL, batch_key TEXT NOT NULL REFERENCES batches(batch_key),
    msisdn TEXT NOT NULL, correlation_id TEXT NOT NULL, status TEXT NOT NULL,
    UNIQUE (campaign_id, msisdn, correlation_id));
CREATE INDEX destinations_by_batch ON destinations(batch_key);
CREATE INDEX destinations_by_correlation ON destinations(correlation_id);
CREATE TABLE receipts (receipt_id INTEGER PRIMARY KEY, campaign_id TEXT NOT NULL REFERENCES campaigns(campaign_id),
    batch_key TEXT, correlation_id TEXT NOT NULL DEFAULT '', msisdn TEXT NOT NULL DEFAULT '',
    transid TEXT NOT NULL DEFAULT '', delivery_status TEXT NOT NULL DEFAULT '', code TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '', time_stamp TEXT NOT NULL DEFAULT '', received_at TEXT NOT NULL,
    UNIQUE (campaign_id, correlation_id, msisdn, transid, delivery_status, code, time_stamp));
CREATE INDEX receipts_by_campaign ON receipts(campaign_id, delivery_status);
INSERT INTO campaigns VALUES ('old', 'hash-1', 't0', 't0');
INSERT INTO runs VALUES ('r1', 'old', 42, 'ci-7', 't1', 't2');
INSERT INTO batches VALUES ('b0', 'old', 0, 'v2', 'accepted', 1, 201, NULL, NULL, 'm-0', 2, 'r1', 't1', 't2');
INSERT INTO batches VALUES ('b1', 'old', 1, 'v2', 'in-flight', 1, NULL, NULL, NULL, NULL, 1, 'r1', 't1', 't2');
INSERT INTO destinations VALUES ('old', 'b0', '+447911000001', 'c1', 'accepted');
INSERT INTO destinations VALUES ('old', 'b0', '+447911000002', 'c2', 'accepted');
INSERT INTO destinations VALUES ('old', 'b1', '+447911000003', 'c3', 'in-flight');
INSERT INTO receipts VALUES (1, 'old', 'b0', 'c1', '447911000001', 'm-0', 'Delivered', '7500', '', 'ts', 't3');
PRAGMA user_version = 1;
"""


def test_a_schema_1_sqlite_ledger_moves_to_the_default_environment(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    raw = sqlite3.connect(path)
    raw.executescript(V1_SCHEMA)
    raw.close()
    with open_ledger(path) as ledger:
        summary = ledger.summary("old")
        assert summary.input_hash == "hash-1" and summary.runs == 1
        assert dict(summary.batches) == {"pending": 0, "in-flight": 1, "accepted": 1, "failed": 0, "uncertain": 0}
        assert dict(summary.receipts) == {"Delivered": 1}
        assert ledger.accepted_msisdns("old") == {"+447911000001", "+447911000002"}
        assert ledger.mark_dead_in_flight_uncertain("old") == 1  # the dead run of the old tool
        record = ledger.batch_record("b0")
        assert record is not None and record.message_id == "m-0"
    with open_ledger(path, environment="staging") as ledger:
        assert ledger.summary("old").total_batches == 0
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 3
    assert not [r for r in raw.execute("SELECT name FROM sqlite_master WHERE name LIKE 'v1_%'")]
    raw.close()


def test_a_newer_postgres_schema_is_refused(pg_state: str) -> None:
    open_ledger(pg_state).close()
    import psycopg

    with psycopg.connect(pg_state, autocommit=True) as raw:
        raw.execute("UPDATE campaign_runner_schema SET version = 99")
    with pytest.raises(CampaignError) as refused:
        open_ledger(pg_state)
    assert refused.value.exit_code == ExitCode.REFUSED
    assert "newer campaign-runner (schema 99, this one knows 3)" in refused.value.message


# --- receipts ---------------------------------------------------------------------------------


def receipt(correlation: str, destination: str, transid: str = "", status: str = "Delivered",
            code: str = "7500") -> dict[str, Any]:
    return {"deliveryInfoNotification": {
        "deliveryInfo": {"code": code, "description": status, "timestamp": "2026-12-03T10:00:00Z",
                         "destination": destination, "deliveryStatus": status},
        "transid": transid, "correlationid": correlation}}


def accept(ledger: Ledger, campaign: str, batch: Batch, message_id: str) -> None:
    ledger.record_pending(campaign, batch)
    run = ledger.begin_run(campaign)
    ledger.mark_in_flight(batch.key, run)
    ledger.mark_accepted(batch.key, http_status=202, message_id=message_id)


def test_receipts_in_one_group_orphans_kept_and_matched_later(state: str) -> None:
    with open_ledger(state) as ledger:
        accept(ledger, "a", Batch("a0", 0, "v2", {}, (Destination("+15550000001", "x1"),)), "msg-a0")
        group = [receipt("x1", "15550000001", "msg-a0"),
                 receipt("x1", "15550000001", "msg-a0"),  # the vendor retried: stored once
                 receipt("later-1", "15550000009", "msg-b0"),  # its batch is not recorded yet
                 receipt("x1", "15550000777", "msg-a0")]  # a number batch a0 never held
        assert ledger.record_receipts(group) == [True, True, False, False]
        assert ledger.orphan_receipt_count() == 2
        assert dict(ledger.summary("a").receipts) == {"Delivered": 1}
        # the batch of the orphan appears: the receipt is matched then, and leaves the orphans
        ledger.record_pending("b", Batch("b0", 0, "v2", {}, (Destination("+15550000009", "later-1"),)))
        assert dict(ledger.summary("b").receipts) == {"Delivered": 1}
        assert ledger.orphan_receipt_count() == 1  # the wrong number stays an orphan
        assert ledger.record_receipts([receipt("later-1", "15550000009", "msg-b0")]) == [True]
        assert dict(ledger.summary("b").receipts) == {"Delivered": 1}


def test_orphan_found_by_transid_when_its_batch_gets_the_message_id(state: str) -> None:
    with open_ledger(state) as ledger:
        assert ledger.record_receipts([receipt("", "15550000031", "msg-late")]) == [False]
        accept(ledger, "t", Batch("t0", 0, "v2", {}, (Destination("+15550000031", "t-1"),)), "msg-late")
        assert dict(ledger.summary("t").receipts) == {"Delivered": 1} and ledger.orphan_receipt_count() == 0


def test_an_orphan_waiting_for_a_batch_accepted_inside_a_group_is_matched_when_the_group_commits(
        state: str) -> None:
    """The sender accepts in groups; orphans are looked for once per group, not skipped."""
    with open_ledger(state) as ledger:
        assert ledger.record_receipts([receipt("", "15550000061", "msg-g1")]) == [False]
        batches = [Batch(f"g{i}", i, "v2", {}, (Destination(f"+1555000006{i}", f"g-{i}"),)) for i in range(3)]
        ledger.record_pending_many("g", batches)
        run = ledger.begin_run("g")
        with ledger.group():
            for i, batch in enumerate(batches):
                ledger.mark_in_flight(batch.key, run)
                ledger.mark_accepted(batch.key, http_status=202, message_id=f"msg-g{i}")
        assert ledger.orphan_receipt_count() == 0
        assert dict(ledger.summary("g").receipts) == {"Delivered": 1}


def test_one_group_of_pending_batches_sharing_a_number_leaves_it_in_the_later_batch(state: str) -> None:
    """Never from one compile, but the contract of separate calls holds for one call too."""
    shared = Destination("+15550000071", "s-1")
    first = Batch("s0", 0, "v2", {}, (shared, Destination("+15550000072", "s-2")))
    second = Batch("s1", 1, "v2", {}, (shared,))
    only = Batch("s2", 2, "v2", {}, (Destination("+15550000073", "s-3"),))
    with open_ledger(state) as ledger:
        ledger.record_pending_many("s", [first, second, only])
        records = {record.batch_key: record for record in ledger.batch_records("s")}
        assert sorted(records) == ["s0", "s1", "s2"]
        assert ledger.summary("s").destinations["pending"] == 3
        run = ledger.begin_run("s")
        ledger.mark_in_flight("s1", run)
        assert ledger.msisdns_with_status("s", "in-flight") == {"+15550000071"}


def test_a_group_with_a_number_accepted_elsewhere_records_none_of_its_batches(state: str) -> None:
    with open_ledger(state) as ledger:
        accept(ledger, "r", Batch("r0", 0, "v2", {}, (Destination("+15550000081", "r-1"),)), "msg-r0")
        fresh = Batch("r1", 1, "v2", {}, (Destination("+15550000082", "r-2"),))
        taken = Batch("r2", 2, "v2", {}, (Destination("+15550000081", "r-1"),))
        with pytest.raises(CampaignError) as refused:
            ledger.record_pending_many("r", [fresh, taken])
        assert refused.value.exit_code == ExitCode.REFUSED
        assert "+15550000081 (r-1) is accepted in batch r0" in refused.value.message
        assert ledger.batch_status("r1") is None and ledger.batch_status("r2") is None


def test_same_correlation_id_in_two_campaigns_is_matched_by_transid(state: str) -> None:
    with open_ledger(state) as ledger:
        accept(ledger, "one", Batch("o0", 0, "v2", {}, (Destination("+15550000041", "shared"),)), "msg-one")
        accept(ledger, "two", Batch("t0", 0, "v2", {}, (Destination("+15550000041", "shared"),)), "msg-two")
        assert ledger.record_receipts([receipt("shared", "15550000041")]) == [False]  # ambiguous: kept
        assert ledger.record_receipts([receipt("shared", "15550000041", "msg-two")]) == [True]
        assert dict(ledger.summary("two").receipts) == {"Delivered": 1}
        assert dict(ledger.summary("one").receipts) == {}


def test_same_campaign_in_two_environments_receipts_go_to_the_right_one(state: str) -> None:
    batch = Batch("k0", 0, "v2", {}, (Destination("+15550000051", "c-51"),))
    with open_ledger(state, environment="staging") as staging:
        accept(staging, "c", batch, "msg-staging")
    with open_ledger(state, environment="production") as production:
        accept(production, "c", batch, "msg-production")
        assert production.record_receipts([receipt("c-51", "15550000051", "msg-production")]) == [True]
        assert dict(production.summary("c").receipts) == {"Delivered": 1}
    with open_ledger(state, environment="staging") as staging:
        assert dict(staging.summary("c").receipts) == {}


# --- the apply lock ------------------------------------------------------------------------------

HOLDER = """
import sys, time
from runner.ledger import open_ledger
with open_ledger(sys.argv[1], environment=sys.argv[3]) as ledger:
    with ledger.apply_lock(sys.argv[2]):
        print("locked", flush=True)
        time.sleep(300)
"""


def start_holder(state: str, campaign: str, environment: str = "default") -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), state, campaign, environment],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    line = holder.stdout.readline()
    assert line.strip() == "locked", holder.stderr.read() if holder.stderr else ""
    return holder


def test_second_apply_refused_naming_the_holder_and_lock_released_on_kill(state: str) -> None:
    holder = start_holder(state, "locked-one")
    try:
        with open_ledger(state) as ledger:
            with pytest.raises(CampaignError) as refused:
                with ledger.apply_lock("locked-one"):
                    pytest.fail("got a lock another process holds")
            assert refused.value.exit_code == ExitCode.REFUSED
            assert refused.value.message.startswith(
                f"campaign 'locked-one' is being applied by another process (host {socket.gethostname()}, "
                f"pid {holder.pid}, since 20")
            with ledger.apply_lock("another-one"):  # other campaigns are not blocked
                pass
        with open_ledger(state, environment="staging") as staging, staging.apply_lock("locked-one"):
            pass  # nor the same campaign in another environment
    finally:
        holder.kill()  # SIGKILL: no cleanup in the holder; its connection / file descriptor drops
        holder.wait(timeout=30)
    with open_ledger(state) as ledger, ledger.apply_lock("locked-one", timeout=60):
        assert ledger.read_lock_holder("locked-one") is not None


def test_lock_timeout_waits_for_the_holder(state: str) -> None:
    holder = start_holder(state, "waited")
    got: list[str] = []
    errors: list[BaseException] = []

    def contender() -> None:
        try:
            with open_ledger(state) as ledger, ledger.apply_lock("waited", timeout=120):
                got.append("locked")
        except BaseException as exc:  # reported below
            errors.append(exc)

    waiter = threading.Thread(target=contender)
    waiter.start()
    try:
        waiter.join(timeout=1.0)  # not a timing assertion: it must still be waiting for a live holder
        assert waiter.is_alive() and not got
    finally:
        holder.kill()
        holder.wait(timeout=30)
    waiter.join(timeout=TIMEOUT)
    assert not errors and got == ["locked"]


def test_the_lock_follows_the_real_file_through_a_symlink(tmp_path: Path, sandbox: Sandbox) -> None:
    path, numbers = campaign_file(tmp_path / "c", "linked", first=215_000, count=5)
    real = tmp_path / "real" / "state.db"
    real.parent.mkdir()
    link = tmp_path / "link.db"
    link.symlink_to(real)
    with open_ledger(str(link)) as ledger, ledger.apply_lock("linked"):
        with pytest.raises(CampaignError) as refused:
            apply_in_process(path, str(real), sandbox.url)
        assert refused.value.exit_code == ExitCode.REFUSED
        done = cli("apply", "--yes", "--quiet", "--base-url", sandbox.url, "--state", str(real), str(path))
        assert done.returncode == 4, done.stderr
        assert "is being applied by another process" in done.stderr and "Traceback" not in done.stderr
    assert not stored(sandbox, numbers)


# --- broken storage ------------------------------------------------------------------------------


def test_a_corrupted_sqlite_ledger_gives_one_line_and_exit_2(tmp_path: Path, sandbox: Sandbox) -> None:
    path, _ = campaign_file(tmp_path, "corrupt", first=216_000, count=200, groups=200)
    state = tmp_path / "state.db"
    assert apply_in_process(path, str(state), sandbox.url)[0] == 0
    size = state.stat().st_size
    with state.open("r+b") as handle:  # garbage over every page after the first (page size 4096)
        handle.seek(4096)
        handle.write(b"\xde\xad\xbe\xef" * ((size - 4096) // 4))
    for args in (["status", "--state", str(state), str(path)], ["status", "--id", "corrupt", "--state", str(state)],
                 ["apply", "--yes", "--quiet", "--base-url", sandbox.url, "--state", str(state), str(path)]):
        done = cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr and "malformed" in done.stderr, done.stderr


def test_an_unreachable_server_is_named_without_its_password() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    url = f"postgresql://runner:s3cr3t-pw@127.0.0.1:{port}/ledger?connect_timeout=5"
    done = cli("status", "--id", "x", "--state", url)
    assert done.returncode == 2, done.stderr
    assert "s3cr3t-pw" not in done.stderr + done.stdout
    assert f"postgresql://runner:***@127.0.0.1:{port}/ledger" in done.stderr
    assert mask_state("postgresql://u@h/db?password=s3cr3t-pw&sslmode=require") == (
        "postgresql://u@h/db?password=***&sslmode=require")


def test_the_state_from_a_file_is_not_printed(tmp_path: Path) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    secret = tmp_path / "state-url"
    secret.write_text(f"postgresql://runner:f1le-pw@127.0.0.1:{port}/ledger?connect_timeout=5\n", encoding="utf-8")
    done = subprocess.run([*campaign_command(), "status", "--id", "x"], stdin=subprocess.DEVNULL,
                          env={**environment(), "CAMPAIGN_STATE_FILE": str(secret)}, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 2, done.stderr
    assert "f1le-pw" not in done.stderr + done.stdout and "postgresql://runner:***@127.0.0.1" in done.stderr


@pytest.mark.parametrize("text,seconds", [("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("2.5", 2.5),
                                          ("0s", 0.0)])
def test_lock_timeout_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "-1s", "1d"])
def test_a_bad_lock_timeout_is_a_usage_error(text: str) -> None:
    with pytest.raises(CampaignError) as refused:
        parse_duration(text)
    assert refused.value.exit_code == ExitCode.USAGE


def apply_and_cut(slow: Sandbox, pg_state: str, path: Path, cut: Callable[[str], int]) -> tuple[int, str, int]:
    """Start an apply (4 in flight), and once 8 requests arrived end some of its database
    sessions with `cut` (which must end at least one); returns its exit code, its stderr,
    and the requests the sandbox had when it ended."""
    with subprocess.Popen(apply_command(slow, pg_state, path, "--max-in-flight", "4"), env=environment(),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as running:
        while slow.stats()["requests"] < 8 and running.poll() is None:
            threading.Event().wait(0.05)  # polling a condition, not a timing assertion
        assert cut(pg_state) >= 1
        _, err = running.communicate(timeout=TIMEOUT)
        return running.returncode, err, slow.stats()["requests"]


def test_a_connection_lost_mid_apply_exits_3_and_the_next_run_holds_the_batches(
        tmp_path: Path, pg_state: str) -> None:
    path, numbers = campaign_file(tmp_path, "lost", first=217_000, count=400, groups=400, tps=100)
    with Sandbox(SandboxSettings(service_key=KEY, latency=0.2)) as slow:
        code, err, _ = apply_and_cut(slow, pg_state, path, terminate_other_sessions)  # a server restart
        assert code == 3, err
        # the sessions end together: whichever the run meets first names it (the lock's, or a writer's)
        assert ("lost the ledger postgresql://" in err or "lost the apply lock on the ledger postgresql://" in err)
        assert "Traceback" not in err
        again = subprocess.run(apply_command(slow, pg_state, path), env=environment(), stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=TIMEOUT)
        assert again.returncode == 3, again.stderr  # the batches that were in flight are held, not resent
        assert "now uncertain" in again.stderr
        seen = stored(slow, numbers)
        assert max(seen.values()) == 1
        resent = subprocess.run(apply_command(slow, pg_state, path, "--resend-uncertain"), env=environment(),
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT)
        assert resent.returncode == 0, resent.stderr
        assert stored(slow, numbers) == Counter({m: 1 for m in numbers})


def test_an_apply_whose_lock_connection_drops_stops_sending_and_exits_3(tmp_path: Path, pg_state: str) -> None:
    """Only the lock's connection goes (its server process ended): the server released the
    lock, so another apply could take the campaign; this one must stop, not go on unlocked."""
    path, numbers = campaign_file(tmp_path, "unlocked", first=218_000, count=400, groups=400, tps=100)
    with Sandbox(SandboxSettings(service_key=KEY, latency=0.2)) as slow:
        code, err, sent_by_then = apply_and_cut(slow, pg_state, path, terminate_lock_holders)
        assert code == 3, err
        assert "lost the apply lock on the ledger postgresql://" in err and "Traceback" not in err
        assert sent_by_then < len(numbers)  # it stopped: the campaign was not finished unlocked
        resent = subprocess.run(apply_command(slow, pg_state, path, "--resend-uncertain"), env=environment(),
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT)
        assert resent.returncode == 0, resent.stderr
        assert stored(slow, numbers) == Counter({m: 1 for m in numbers})


def terminate_lock_holders(url: str) -> int:
    """End the server processes of the sessions holding an advisory lock on the database of `url`."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND pid != pg_backend_pid()").fetchone()
    return int(row[0]) if row else 0


# --- status from the ledger alone ------------------------------------------------------------


def test_status_from_the_ledger_alone_shows_the_funnel(tmp_path: Path, state: str) -> None:
    path, numbers = campaign_file(tmp_path / "c", "funnel", first=218_000, count=20,
                                  requestedReceipts=["SUBMITTED", "DELIVERED", "FAILED"],
                                  notifyUrl="https://hooks.example.com/wxc")
    done = cli("apply", "--yes", "--quiet", "--sandbox", "--state", state, "--env", "staging", str(path))
    assert done.returncode == 0, done.stderr
    for moved in (tmp_path / "c").iterdir():  # the inputs are gone: status needs only the ledger
        moved.unlink()
    shown = cli("status", "--id", "funnel", "--state", state, "--env", "staging", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["environment"] == "staging"
    assert report["destinations"]["accepted"] == 20
    funnel = report["funnel"]
    assert funnel["accepted"] == 20
    assert funnel["submitted"] + funnel["delivered"] + funnel["failed"] > 0
    assert funnel["delivered"] + funnel["failed"] <= 20
    markdown = cli("status", "--id", "funnel", "--state", state, "--env", "staging", "--format", "markdown")
    assert markdown.returncode == 0 and "| accepted | 20 |" in markdown.stdout
    text = cli("status", "--id", "funnel", "--state", state, "--env", "staging")
    assert "delivery:     accepted 20 → submitted" in text.stdout
    unknown = cli("status", "--id", "funnel", "--state", state)  # the default environment never sent it
    assert unknown.returncode == 1 and "is not in the ledger" in unknown.stderr and "Traceback" not in unknown.stderr


def test_status_needs_a_file_or_an_id(tmp_path: Path) -> None:
    out = io.StringIO()
    with pytest.raises(CampaignError) as refused:
        run_status(StatusSettings(None, str(tmp_path / "s.db")), now=datetime.now(timezone.utc), out=out)
    assert refused.value.exit_code == ExitCode.USAGE


# --- done when, against PostgreSQL -----------------------------------------------------------


def test_postgres_2000_recipients_sent_exactly_once(tmp_path: Path, sandbox: Sandbox, pg_state: str) -> None:
    path, numbers = campaign_file(tmp_path, "pg-2000", first=220_000, count=2000, groups=100)
    done = subprocess.run(apply_command(sandbox, pg_state, path), env=environment(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    again = subprocess.run(apply_command(sandbox, pg_state, path), env=environment(), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 0, again.stderr
    assert stored(sandbox, numbers) == Counter({m: 1 for m in numbers})
    with open_ledger(pg_state) as ledger:
        assert ledger.summary("pg-2000").destinations["accepted"] == 2000


def test_postgres_two_applies_at_the_same_moment_send_once(tmp_path: Path, pg_state: str) -> None:
    """Whichever way the race goes (the second refused by the lock, or starting after the
    first finished and finding everything accepted), each number is sent once. The
    sandbox stores every request, a repeated Idempotency-Key included, so a second send
    could not hide behind the vendor's deduplication."""
    path, numbers = campaign_file(tmp_path, "pg-twins", first=223_000, count=600, groups=200)
    open_ledger(pg_state).close()  # the schema exists: both race for the campaign lock, not the migration
    with Sandbox(SandboxSettings(service_key=KEY, latency=0.05, ignore_idempotency=True)) as sandbox:
        barrier = [subprocess.Popen(apply_command(sandbox, pg_state, path), env=environment(),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for _ in range(2)]
        results = [(p.wait(timeout=TIMEOUT), p.communicate()[1]) for p in barrier]
        for code, err in results:
            assert code in (0, 4), results
            if code == 4:
                assert "is being applied by another process (host " in err
        assert 0 in [code for code, _ in results], results
        assert stored(sandbox, numbers) == Counter({m: 1 for m in numbers})


def test_postgres_kill_9_three_times_then_resend_uncertain_sends_everyone_once(
        tmp_path: Path, pg_state: str) -> None:
    path, numbers = campaign_file(tmp_path, "pg-kill", first=226_000, count=600, groups=200, tps=2000)
    with Sandbox(SandboxSettings(service_key=KEY, latency=0.04)) as slow:
        for kill in range(3):
            # 8 in flight (not the 67 apply would choose): the kills land mid-send
            with subprocess.Popen(apply_command(slow, pg_state, path, "--resend-uncertain", "--max-in-flight", "8"),
                                  env=environment(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) as running:
                target = 10 * (kill + 1)
                while slow.stats()["requests"] < target and running.poll() is None:
                    threading.Event().wait(0.01)  # polling a condition, not a timing assertion
                running.send_signal(signal.SIGKILL)
                running.wait(timeout=TIMEOUT)
        for _ in range(5):
            done = subprocess.run(apply_command(slow, pg_state, path, "--resend-uncertain"), env=environment(),
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT)
            assert done.returncode in (0, 3), done.stderr
            if done.returncode == 0:
                break
        assert done.returncode == 0, done.stderr
        assert stored(slow, numbers) == Counter({m: 1 for m in numbers})
    with open_ledger(pg_state) as ledger:
        summary = ledger.summary("pg-kill")
    assert summary.destinations["accepted"] == 600 == summary.total_destinations
    assert summary.runs >= 4


def test_a_read_only_sqlite_ledger_gives_one_line_and_exit_2(sandbox: Sandbox) -> None:
    """Run as an ordinary user (root writes through any permission): as root, the commands
    run as `nobody` through setpriv, in a folder outside pytest's private one."""
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    if prefix and not Path("/usr/bin/setpriv").exists():
        pytest.skip("running as root without setpriv: cannot make a file read-only")
    root = Path(tempfile.mkdtemp(prefix="campaign-read-only-"))
    try:
        path, _ = campaign_file(root / "c", "read-only", first=219_000, count=3)
        folder = root / "ledger"
        state = folder / "state.db"
        assert apply_in_process(path, str(state), sandbox.url)[0] == 0
        for item in (root, root / "c", *(root / "c").iterdir()):
            item.chmod(item.stat().st_mode | 0o555)  # readable by anyone (nobody)
        state.chmod(0o444)
        folder.chmod(0o555)
        for args in (["status", "--state", str(state), str(path)],
                     ["apply", "--yes", "--quiet", "--base-url", sandbox.url, "--state", str(state), str(path)]):
            done = subprocess.run([*prefix, *campaign_command(), *args], env=environment(), stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=TIMEOUT, cwd=root)
            assert done.returncode == 2, (args, done.stdout, done.stderr)
            assert "Traceback" not in done.stderr and "state.db" in done.stderr, done.stderr
            assert len([line for line in done.stderr.splitlines() if line.startswith("error")]) <= 1, done.stderr
    finally:
        (root / "ledger").chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


def test_a_postgres_state_without_psycopg_says_what_to_install(tmp_path: Path) -> None:
    code = "import sys; sys.modules['psycopg'] = None; from runner.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "status", "--id", "x", "--state",
                           "postgresql://u:pw-9f1@127.0.0.1/db"], env=environment(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 2, done.stderr
    assert "pip install 'campaign-runner[postgres]'" in done.stderr and "pw-9f1" not in done.stderr


def test_campaign_state_is_used_by_apply_but_never_by_a_rehearsal(tmp_path: Path, sandbox: Sandbox) -> None:
    path, numbers = campaign_file(tmp_path / "c", "from-env", first=229_000, count=3)
    real = tmp_path / "real.db"
    env = {**environment(), "CAMPAIGN_STATE": str(real)}
    rehearsal = subprocess.run([*campaign_command(), "apply", "--yes", "--quiet", "--sandbox", str(path)], env=env,
                               cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT)
    assert rehearsal.returncode == 0, rehearsal.stderr
    assert not real.exists() and (tmp_path / ".campaign" / "sandbox.db").is_file()
    sent = subprocess.run([*campaign_command(), "apply", "--yes", "--quiet", "--base-url", sandbox.url, str(path)],
                          env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert sent.returncode == 0, sent.stderr
    with open_ledger(real) as ledger:
        assert ledger.accepted_msisdns("from-env") == set(numbers)
