"""`campaign plan FILE --state STATE`: every recipient against the ledger, on both backends.

Ledgers are real (a SQLite file, a real PostgreSQL server from tests/postgres.py) and are
filled the way apply fills them: batches compiled from the campaign, recorded pending,
then marked through the ledger's own transitions; or by `apply` itself over HTTP against
the project's sandbox on 127.0.0.1. Expected totals are written out literally.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from runner.commands import ApplySettings, Console, PlanSettings, run_apply, run_plan
from runner.compile import Compiler
from runner.errors import CampaignError, ExitCode
from runner.ledger import open_ledger
from runner.sandbox import Sandbox, SandboxSettings
from runner.validate import load_campaign

from .helpers import NOW, number, write_campaign, write_csv
from .postgres import fresh_database, stop_postgres_at_session_end  # noqa: F401
from .test_ledger_backends import campaign_command

KEY = "plan-state-key"
ENV = {"WEBEX_CONNECT_SERVICE_KEY": KEY}
CAMPAIGN_ID = "test-campaign"
NAMES = ["Ada", "Bea", "Cid", "Dot", "Eve", "Fay"]


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "state.db") if request.param == "sqlite" else fresh_database()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxSettings(service_key=KEY)) as running:
        yield running


def make_campaign(folder: Path, *, personalisation: str = "local", names: list[str] | None = None) -> Path:
    names = names or NAMES
    write_csv(folder / "people.csv", ["msisdn", "name"], [[number(i), name] for i, name in enumerate(names)])
    return write_campaign(folder, {"content": {"text": "Hi {{ name }}, 20% off"},
                                   "recipients": [{"file": "people.csv"}], "throughput": {"tps": 100},
                                   "personalisation": personalisation})


def rename(folder: Path, index: int, name: str) -> None:
    people = folder / "people.csv"
    people.write_text(people.read_text(encoding="utf-8").replace(f"{number(index)},{NAMES[index]}\n",
                                                                 f"{number(index)},{name}\n"), encoding="utf-8")


def plan(path: Path, state: str | None, **options: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = run_plan(PlanSettings(path, state=state, **options), now=NOW, out=out, err=io.StringIO())
    return int(code), out.getvalue()


def plan_json(path: Path, state: str | None, **options: Any) -> dict[str, Any]:
    code, out = plan(path, state, output_format="json", **options)
    assert code == 0
    return dict(json.loads(out))


def apply(path: Path, sandbox: Sandbox, state: str, **options: Any) -> int:
    console = Console(out=io.StringIO(), err=io.StringIO(), interactive=False, confirm=lambda q: False, environ=ENV)
    settings = ApplySettings(file=path, yes=True, base_url=sandbox.url, state=state, quiet=True, **options)
    return int(run_apply(settings, now=datetime.now(timezone.utc), console=console))


def record(path: Path, state: str, outcomes: dict[int, str], environment: str = "default") -> None:
    """The campaign's batches recorded as apply records them; recipient i's batch then
    goes through the ledger's transitions to `outcomes[i]` (the rest stay pending)."""
    campaign, _ = load_campaign(path, now=NOW)
    batches = list(Compiler(campaign).iter_batches())
    with open_ledger(state, environment=environment) as ledger:
        run = ledger.begin_run(campaign.id)
        ledger.record_pending_many(campaign.id, batches)
        for batch in batches:
            (destination,) = batch.destinations  # local mode, one name each: a request per recipient
            outcome = outcomes.get(int(destination.msisdn[-3:]))
            if outcome is None:
                continue
            ledger.mark_in_flight(batch.key, run)
            if outcome == "accepted":
                ledger.mark_accepted(batch.key, http_status=201, message_id=f"m-{batch.index}")
            elif outcome == "failed":
                ledger.mark_failed(batch.key, http_status=400, code="7004", message="bad")
            elif outcome == "uncertain":
                ledger.mark_uncertain(batch.key, reason="dropped")
        ledger.finish_run(run)


def test_every_state_per_recipient_and_in_totals(tmp_path: Path, state: str) -> None:
    campaign = make_campaign(tmp_path)
    record(campaign, state, {0: "accepted", 1: "accepted", 2: "failed", 3: "uncertain"})  # 4, 5 pending
    rename(tmp_path, 1, "Bob")  # accepted as "Hi Bea": changed since
    with (tmp_path / "people.csv").open("a", encoding="utf-8") as stream:
        stream.write(f"{number(6)},Gus\n")
    data = plan_json(campaign, state)
    assert [(m["msisdn"], m["state"]) for m in data["messages"]] == [
        (number(0), "accepted"), (number(1), "changed-since-accepted"), (number(2), "failed"),
        (number(3), "uncertain"), (number(4), "to-send"), (number(5), "to-send"), (number(6), "to-send")]
    ledger = data["ledger"]
    assert ledger["recipients"] == {"to-send": 3, "accepted": 1, "failed": 1, "uncertain": 1,
                                    "changed-since-accepted": 1}
    assert ledger["toSend"] == 4  # never sent, pending, and the failed one; not uncertain, accepted, changed
    assert (ledger["acceptedDestinations"], ledger["failedDestinations"], ledger["uncertainDestinations"]) == (2, 1, 1)
    code, out = plan(campaign, state, detailed_exitcode=True)
    assert code == 2
    assert "┃ state " in out
    assert [line.split("│")[4].strip() for line in out.splitlines() if line.startswith("│")] == [
        "accepted", "changed-since-accepted", "failed", "uncertain", "to-send", "to-send", "to-send"]
    assert ("recipients: 3 to send, 1 already accepted, 1 failed (sent again), 1 uncertain (held), "
            "1 changed since accepted\n") in out
    assert "1 recipients were accepted with another text or other values than they would get now: apply never " \
           "resends them" in out
    assert state not in out  # the ledger's location is never printed


def test_totals_cover_every_recipient_not_only_the_shown_ones(tmp_path: Path, state: str) -> None:
    names = [f"N{i}" for i in range(30)]
    write_csv(tmp_path / "people.csv", ["msisdn", "name"], [[number(i), n] for i, n in enumerate(names)])
    campaign = write_campaign(tmp_path, {"content": {"text": "Hi {{ name }}"}, "recipients": [{"file": "people.csv"}],
                                         "throughput": {"tps": 100}})
    record(campaign, state, {i: "accepted" for i in range(0, 30, 2)})
    for show_all in (False, True):
        data = plan_json(campaign, state, show_all=show_all)
        assert len(data["messages"]) == (30 if show_all else 10)
        assert data["ledger"]["recipients"] == {"to-send": 15, "accepted": 15, "failed": 0, "uncertain": 0,
                                                "changed-since-accepted": 0}
    # and with -o, whose request digest comes from the same pass
    data = plan_json(campaign, state, save_to=tmp_path / "c.plan.json")
    assert data["ledger"]["toSend"] == 15


def test_plan_reads_only_its_environment(tmp_path: Path, state: str) -> None:
    campaign = make_campaign(tmp_path)
    record(campaign, state, {0: "accepted", 1: "accepted"}, environment="staging")
    assert plan_json(campaign, state, environment="staging")["ledger"]["recipients"]["accepted"] == 2
    assert plan_json(campaign, state)["ledger"]["recipients"] == {
        "to-send": 6, "accepted": 0, "failed": 0, "uncertain": 0, "changed-since-accepted": 0}


@pytest.mark.parametrize("personalisation", ["local", "platform"])
def test_what_apply_sent_is_unchanged_until_a_value_changes_and_a_changed_one_is_not_resent(
    tmp_path: Path, sandbox: Sandbox, personalisation: str
) -> None:
    """The digest apply records (from the request bodies) and the one plan computes (from
    the compiled recipients) agree in both modes; a changed value shows, and apply with
    --allow-changes indeed does not resend it, as the plan says."""
    campaign = make_campaign(tmp_path, personalisation=personalisation)
    state = str(tmp_path / "state.db")
    assert apply(campaign, sandbox, state) == 0
    assert plan_json(campaign, state)["ledger"]["recipients"] == {
        "to-send": 0, "accepted": 6, "failed": 0, "uncertain": 0, "changed-since-accepted": 0}
    rename(tmp_path, 4, "Evan")
    data = plan_json(campaign, state)
    assert data["ledger"]["recipients"] == {
        "to-send": 0, "accepted": 5, "failed": 0, "uncertain": 0, "changed-since-accepted": 1}
    assert data["messages"][4]["state"] == "changed-since-accepted"
    assert data["ledger"]["applyRefuses"].startswith("the campaign's inputs changed after 6 destinations were sent")
    with pytest.raises(CampaignError) as refused:  # refused, as the plan said
        apply(campaign, sandbox, state)
    assert refused.value.exit_code == ExitCode.REFUSED
    assert apply(campaign, sandbox, state, allow_changes=True) == 0
    assert len(sandbox.messages()) == 6  # the changed recipient was not sent again


def test_a_changed_campaign_text_changes_every_accepted_recipient(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = make_campaign(tmp_path, personalisation="platform")
    state = str(tmp_path / "state.db")
    assert apply(campaign, sandbox, state) == 0
    campaign.write_text(campaign.read_text(encoding="utf-8").replace("20% off", "30% off"), encoding="utf-8")
    assert plan_json(campaign, state)["ledger"]["recipients"]["changed-since-accepted"] == 6


def test_rows_recorded_before_the_digest_existed_count_as_accepted(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path)
    state = str(tmp_path / "state.db")
    record(campaign, state, {0: "accepted"})
    import sqlite3

    raw = sqlite3.connect(state)
    raw.execute("UPDATE destinations SET content_digest = NULL")  # as a schema 2 ledger migrated to 3 has them
    raw.commit()
    raw.close()
    rename(tmp_path, 0, "Alf")
    assert plan_json(campaign, state)["ledger"]["recipients"]["accepted"] == 1


def test_the_ledger_gives_the_digest_of_accepted_numbers_and_the_status_of_others(tmp_path: Path, state: str) -> None:
    campaign = make_campaign(tmp_path)
    record(campaign, state, {0: "accepted", 1: "failed", 2: "uncertain"})
    with open_ledger(state) as ledger:
        held = ledger.destination_states(CAMPAIGN_ID)
    from runner.compile import content_digest

    assert held == {number(0): content_digest("Hi Ada, 20% off", {}), number(1): "failed", number(2): "uncertain",
                    number(3): "pending", number(4): "pending", number(5): "pending"}


def test_a_number_held_twice_keeps_its_most_sent_state(tmp_path: Path, state: str) -> None:
    from runner.model import Batch, Destination

    with open_ledger(state) as ledger:
        run = ledger.begin_run("c")
        body = {"to": [{"msisdn": [number(1)], "correlationId": "x"}], "content": {"text": "t"}}
        ledger.record_pending("c", Batch("k1", 0, "v2", body, (Destination(number(1), "x"),)))
        ledger.mark_in_flight("k1", run)
        ledger.mark_accepted("k1", http_status=201, message_id="m")
        ledger.record_pending("c", Batch("k2", 1, "v2", {}, (Destination(number(1), "y"),)))  # pending, later
        ledger.record_pending("c", Batch("k3", 2, "v2", {}, (Destination(number(2), "z"),)))
        ledger.mark_in_flight("k3", run)
        ledger.mark_failed("k3", http_status=400, code="7004", message="bad")
        ledger.record_pending("c", Batch("k4", 3, "v2", {}, (Destination(number(2), "w"),)))
        held = ledger.destination_states("c")
    from runner.compile import content_digest

    assert held == {number(1): content_digest("t", {}), number(2): "failed"}


def test_markdown_shows_the_state_column_and_masks_numbers(tmp_path: Path, state: str) -> None:
    campaign = make_campaign(tmp_path)
    record(campaign, state, {0: "accepted"})
    code, out = plan(campaign, state, output_format="markdown")
    assert code == 0
    assert "| # | msisdn | correlationId | state | encoding |" in out
    assert "| 1 | +44•••••••000 | cr-••• | accepted | GSM-7 |" in out
    assert "| 2 | +44•••••••001 | cr-••• | to-send | GSM-7 |" in out
    assert number(0) not in out and number(1) not in out
    assert "recipients: 5 to send, 1 already accepted" in out
    assert state not in out


def test_state_comes_from_campaign_state_and_its_file_through_the_real_command(tmp_path: Path, state: str) -> None:
    campaign = make_campaign(tmp_path)
    record(campaign, state, {0: "accepted", 5: "accepted"}, environment="prod")
    holder = tmp_path / "state-url"
    holder.write_text(state + "\n", encoding="utf-8")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WEBEX_CONNECT", "CAMPAIGN_"))}
    for extra in ({"CAMPAIGN_STATE": state}, {"CAMPAIGN_STATE_FILE": str(holder)}):
        env = {**base, **extra, "CAMPAIGN_ENV": "prod", "CAMPAIGN_NOW": "2026-11-23T12:00:00Z"}
        done = subprocess.run([*campaign_command(), "plan", "--format", "json", str(campaign)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["ledger"]["recipients"]["accepted"] == 2
        assert state not in done.stdout + done.stderr


def test_a_schema_2_ledger_gains_the_digest_column_keeping_its_rows(tmp_path: Path, state: str) -> None:
    campaign = make_campaign(tmp_path)
    record(campaign, state, {0: "accepted", 1: "failed"})
    # back to schema 2: the column dropped, the version set back
    if state.startswith("postgresql"):
        import psycopg

        with psycopg.connect(state, autocommit=True) as raw:
            raw.execute("ALTER TABLE destinations DROP COLUMN content_digest")
            raw.execute("UPDATE campaign_runner_schema SET version = 2")
    else:
        import sqlite3

        raw = sqlite3.connect(state)
        raw.execute("ALTER TABLE destinations DROP COLUMN content_digest")
        raw.execute("PRAGMA user_version = 2")
        raw.commit()
        raw.close()
    with open_ledger(state) as ledger:
        held = ledger.destination_states(CAMPAIGN_ID)
    assert held[number(0)] == "accepted" and held[number(1)] == "failed"  # no digest: the status
    assert len(held) == 6
    if state.startswith("postgresql"):
        with psycopg.connect(state, autocommit=True) as raw:
            assert raw.execute("SELECT version FROM campaign_runner_schema").fetchone()[0] == 3
    else:
        raw = sqlite3.connect(state)
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 3
        raw.close()
    assert plan_json(campaign, state)["ledger"]["recipients"] == {
        "to-send": 4, "accepted": 1, "failed": 1, "uncertain": 0, "changed-since-accepted": 0}
