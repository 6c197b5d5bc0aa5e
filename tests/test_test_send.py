"""`campaign test-send`: one recipient's exact message to test phones, kept apart in the ledger.

Real campaign files, a real ledger file and real HTTP to the project's sandbox.
"""

from __future__ import annotations

import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runner import testsend
from runner.cli import cli
from runner import commands  # its TestSendSettings by module: a Test* name here would be collected
from runner.commands import ApplySettings, Console, StatusSettings, run_apply, run_status, run_test_send
from runner.compile import Compiler
from runner.errors import CampaignError, ExitCode
from runner.ledger import Ledger
from runner.sandbox import Sandbox, SandboxSettings

from .helpers import campaign_from, number, write_campaign, write_csv

ENV = {"WEBEX_CONNECT_SERVICE_KEY": "test-key"}
TEST_PHONES = ("+447400123456", "+447400123457")


def _console() -> tuple[Console, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Console(out=out, err=err, interactive=False, confirm=lambda q: False, environ=ENV), out, err


def campaign_file(folder: Path, **extra: Any) -> Path:
    write_csv(folder / "a.csv", ["msisdn", "name"], [[number(1), "Ann"], [number(2), "Bob"], [number(3), "Cy"]])
    data: dict[str, Any] = {"id": "promo", "content": {"text": "Hi {{ name }}, {{ offer }}"},
                            "substitutions": {"offer": "10% off"}, "recipients": [{"file": "a.csv"}],
                            "throughput": {"tps": 50}}
    data.update(extra)
    return write_campaign(folder, data)


def test_send(path: Path, url: str, state: Path, *numbers: str, as_msisdn: str | None = None) -> tuple[int, str]:
    console, out, err = _console()
    code = run_test_send(commands.TestSendSettings(path, numbers, as_msisdn, state=state, base_url=url),
                         now=datetime.now(timezone.utc), console=console)
    return int(code), out.getvalue() + err.getvalue()


test_send.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.mark.parametrize("personalisation", [None, "platform"])
def test_test_send_reaches_only_the_test_numbers_and_apply_still_sends_to_everyone(
        tmp_path: Path, personalisation: str | None) -> None:
    extra = {"personalisation": personalisation} if personalisation else {}
    path = campaign_file(tmp_path, **extra)
    state = tmp_path / "state.db"
    with Sandbox(SandboxSettings(tps=50)) as sandbox:
        code, output = test_send(path, sandbox.url, state, *TEST_PHONES, as_msisdn=number(2))
        assert code == 0, output
        received = [(m.msisdn, m.text) for m in sandbox.messages()]
        assert sorted(received) == [(TEST_PHONES[0], "Hi Bob, 10% off"), (TEST_PHONES[1], "Hi Bob, 10% off")]
        [message_id] = {m.message_id for m in sandbox.messages()}
        assert f"{TEST_PHONES[0]}: accepted, messageId {message_id}" in output
        assert "text: Hi Bob, 10% off" in output
        assert ("sent as: Hi $(name), $(offer)" in output) == (personalisation == "platform")

        console, out, err = _console()
        applied = run_apply(ApplySettings(path, state=state, yes=True, base_url=sandbox.url),
                            now=datetime.now(timezone.utc), console=console)
        assert applied == ExitCode.OK, out.getvalue() + err.getvalue()
        after = sorted((m.msisdn, m.text) for m in sandbox.messages())
    assert after == sorted([(TEST_PHONES[0], "Hi Bob, 10% off"), (TEST_PHONES[1], "Hi Bob, 10% off"),
                            (number(1), "Hi Ann, 10% off"), (number(2), "Hi Bob, 10% off"),
                            (number(3), "Hi Cy, 10% off")])
    with Ledger.open(state) as ledger:
        campaign = ledger.summary("promo")
        tests = ledger.summary("promo#test-send")
    assert (campaign.destinations["accepted"], campaign.runs) == (3, 1)
    assert (tests.destinations["accepted"], tests.runs) == (2, 1)


def test_status_shows_test_sends_apart(tmp_path: Path) -> None:
    path = campaign_file(tmp_path)
    state = tmp_path / "state.db"
    with Sandbox() as sandbox:
        assert test_send(path, sandbox.url, state, TEST_PHONES[0])[0] == 0
    out = io.StringIO()
    run_status(StatusSettings(path, state), now=datetime.now(timezone.utc), out=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "campaign promo: 0 runs, 0 requests attempted"
    assert lines[-1] == "test sends (campaign test-send; not counted above): 1 run, destinations accepted 1"
    as_json = io.StringIO()
    run_status(StatusSettings(path, state, "json"), now=datetime.now(timezone.utc), out=as_json)
    data = json.loads(as_json.getvalue())
    assert data["destinations"]["accepted"] == 0
    assert (data["testSends"]["runs"], data["testSends"]["destinations"]["accepted"]) == (1, 1)


def test_each_test_send_is_a_new_send(tmp_path: Path) -> None:
    """Not an idempotent replay of the one before: new keys, new correlation ids."""
    path = campaign_file(tmp_path)
    state = tmp_path / "state.db"
    with Sandbox() as sandbox:
        assert test_send(path, sandbox.url, state, TEST_PHONES[0])[0] == 0
        assert test_send(path, sandbox.url, state, TEST_PHONES[0])[0] == 0
        messages = sandbox.messages()
        assert sandbox.stats()["replayed"] == 0
    assert [m.msisdn for m in messages] == [TEST_PHONES[0], TEST_PHONES[0]]
    assert len({m.idempotency_key for m in messages}) == 2
    assert len({m.correlation_id for m in messages}) == 2
    assert all(m.text == "Hi Ann, 10% off" for m in messages)  # the first recipient by default


def test_send_at_is_ignored_and_a_passed_expiry_dropped(tmp_path: Path) -> None:
    campaign = campaign_from(tmp_path, {"content": {"text": "Hello"}, "recipients": [{"msisdn": number(1)}],
                                        "sendAt": "2026-11-25T09:00:00Z", "expireAt": "2026-11-25T10:00:00Z"})
    ready = testsend.for_now(campaign, datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc))
    compiler = Compiler(ready)
    chosen = testsend.chosen_message(Compiler(ready), None)
    [batch] = list(testsend.batches_for_test(compiler, chosen, TEST_PHONES, "run-1"))
    assert "sendAt" not in batch.body and batch.body["expireAt"] == "2026-11-25T10:00:00.000Z"
    assert [d.msisdn for d in batch.destinations] == list(TEST_PHONES)
    assert batch.key.startswith("test-000-") and len(batch.key) <= 64
    late = testsend.for_now(campaign, datetime(2026, 11, 26, tzinfo=timezone.utc))
    assert (late.send_at, late.expire_at) == (None, None)


def test_test_numbers_are_checked_like_recipients_and_at_most_ten() -> None:
    with pytest.raises(CampaignError) as bad:
        testsend.normalise_test_numbers(["123", "+447400123456", "+44"])
    assert bad.value.exit_code == ExitCode.USAGE
    assert bad.value.message.splitlines() == [
        "--to: error: '123' is not a valid E.164 number: missing country code: write it as +<country><number> "
        "[test-number]",
        "--to: error: '+44' is not a valid E.164 number: too short for country code +44 (GB, GG, IM, JE) "
        "[test-number]",
    ]
    assert testsend.normalise_test_numbers(["+44 7400 123456", "+447400123456"]) == ("+447400123456",)
    eleven = [f"+4474001234{i:02d}" for i in range(11)]
    with pytest.raises(CampaignError) as many:
        testsend.normalise_test_numbers(eleven)
    assert many.value.message == "test-send takes at most 10 --to numbers, got 11"
    assert len(testsend.normalise_test_numbers(eleven[:10])) == 10


def test_as_must_name_a_recipient(tmp_path: Path) -> None:
    path = campaign_file(tmp_path)
    with Sandbox() as sandbox:
        with pytest.raises(CampaignError) as raised:
            test_send(path, sandbox.url, tmp_path / "state.db", TEST_PHONES[0], as_msisdn=number(7))
        assert sandbox.messages() == []
    assert raised.value.message == f"--as {number(7)}: not a recipient of campaign promo (after exclusions)"


def test_cli_test_send_with_the_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    campaign_file(tmp_path)
    result = CliRunner().invoke(cli, ["test-send", "campaign.yaml", "--to", TEST_PHONES[0], "--sandbox"],
                                prog_name="campaign")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:2] == ["test send of promo (local personalisation, API v2), the message of " + number(1) + ":",
                         "text: Hi Ann, 10% off"]
    assert re.fullmatch(rf"  \{TEST_PHONES[0]}: accepted, messageId [0-9a-f-]{{36}}", lines[2])
    assert (tmp_path / ".campaign" / "sandbox.db").exists()  # a rehearsal keeps its own ledger


def test_test_send_records_into_a_postgresql_ledger_of_its_environment(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`--state` takes a URL as apply's does (never a file named after it), and `--env` keys the record."""
    from .postgres import fresh_database, stop_postgres_at_session_end  # noqa: F401 (stops the server)

    url = fresh_database()
    monkeypatch.chdir(tmp_path)
    campaign_file(tmp_path)
    result = CliRunner().invoke(cli, ["test-send", "campaign.yaml", "--to", TEST_PHONES[0], "--sandbox",
                                      "--state", url, "--env", "staging"], prog_name="campaign")
    assert result.exit_code == 0, result.output
    assert not any(p.name.startswith(("postgresql", ".campaign")) for p in tmp_path.iterdir())
    with Ledger.open(url, environment="staging") as ledger:
        assert ledger.summary(testsend.ledger_key("promo")).destinations["accepted"] == 1
    with Ledger.open(url) as ledger:  # environment "default" holds nothing of it
        assert ledger.summary(testsend.ledger_key("promo")).runs == 0
