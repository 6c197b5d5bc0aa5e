"""Saved plans: `plan -o PLAN`, `plan --check PLAN`, `apply PLAN`, `--detailed-exitcode`.

Real campaign and CSV files in a temp folder, real HTTP to the project's sandbox on
127.0.0.1, real SQLite ledgers. "Nothing sent" is checked where it happens: the
sandbox's stored messages and the ledger file.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from runner import __version__
from runner.commands import ApplySettings, Console, PlanSettings, run_apply, run_plan
from runner.errors import CampaignError, ExitCode
from runner.ledger import Ledger
from runner.planfile import FORMAT_VERSION, read_plan
from runner.sandbox import Sandbox, SandboxSettings

from .helpers import NOW, number, write_campaign, write_csv
from .test_apply import campaign_command

KEY = "plan-test-key"
ENV = {"WEBEX_CONNECT_SERVICE_KEY": KEY}
CAMPAIGN_ID = "test-campaign"
NAMES = ["Ada", "Brunhilde", "Cecilia", "Dagobert", "Eustace", "Fitzgerald", "Gwendolyn"]


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    server = Sandbox(SandboxSettings())
    server.start()
    yield server
    server.stop()


def make_campaign(folder: Path, rows: int = 7) -> Path:
    """Seven people in a CSV, one inline recipient, one opt-out file; platform strategy."""
    (folder / "data").mkdir(exist_ok=True)
    write_csv(folder / "data" / "people.csv", ["msisdn", "name", "code"],
              [[number(i), NAMES[i % len(NAMES)], f"SECRET{i:04d}X"] for i in range(rows)])
    write_csv(folder / "data" / "optouts.csv", ["msisdn"], [[number(900)]])
    return write_campaign(folder, {
        "content": {"text": "Hi {{ name }}, your code {{ code }}"},
        "recipients": [{"file": "data/people.csv"},
                       {"msisdn": number(500), "substitutions": {"name": "Inline", "code": "INLINECODE77"}}],
        "exclude": ["data/optouts.csv"],
        "throughput": {"tps": 100},
        "personalisation": "platform",
    }, name="promo.yaml")


def plan(path: Path, **options: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_plan(PlanSettings(path, **options), now=NOW, out=out, err=err)
    return int(code), out.getvalue(), err.getvalue()


def apply(path: Path, sandbox: Sandbox, state: Path, environment: str = "default") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    console = Console(out=out, err=err, interactive=False, confirm=lambda q: False, environ=ENV)
    settings = ApplySettings(file=path, yes=True, base_url=sandbox.url, state=state, quiet=True,
                             environment=environment)
    code = run_apply(settings, now=datetime.now(timezone.utc), console=console)
    return int(code), out.getvalue(), err.getvalue()


def append_row(csv: Path, msisdn: str, name: str) -> None:
    with csv.open("a", encoding="utf-8") as stream:
        stream.write(f"{msisdn},{name},SECRET9999X\n")


def ledger_destinations(state: Path) -> int:
    with Ledger.open(state) as ledger:
        return sum(ledger.summary(CAMPAIGN_ID).destinations.values())


# --- the file -----------------------------------------------------------------------------


def test_saved_plan_names_every_input_by_relative_path_and_digests_the_compiled_bytes(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path)
    plan_path = tmp_path / "promo.plan.json"
    code, _, err = plan(campaign, save_to=plan_path)
    assert code == 0
    assert "saved plan: " in err
    data = json.loads(plan_path.read_text(encoding="utf-8"))
    assert data["format_version"] == FORMAT_VERSION == 1
    assert data["tool"] == {"name": "campaign-runner", "version": __version__}
    assert data["campaign"] == {"id": CAMPAIGN_ID, "file": "promo.yaml", "api": "v2"}
    assert data["created_at"] == "2026-11-23T12:00:00Z"
    people = (tmp_path / "data" / "people.csv").read_bytes()
    assert data["inputs"] == [
        {"role": "campaign", "path": "promo.yaml", "sha256": hashlib.sha256(campaign.read_bytes()).hexdigest()},
        {"role": "recipients", "path": "data/people.csv", "sha256": hashlib.sha256(people).hexdigest()},
        {"role": "exclude", "path": "data/optouts.csv",
         "sha256": hashlib.sha256((tmp_path / "data" / "optouts.csv").read_bytes()).hexdigest()},
    ]
    assert data["counts"] == {"rowsRead": 8, "recipients": 8, "duplicatesDropped": 0, "excluded": 0,
                              "messages": 8, "segments": 8}
    assert data["schedule"] == {"sendAt": None, "expiresAt": None}
    assert data["ledger"] is None
    # the documented contract: the digest is SHA-256 of what `campaign compile` writes
    compiled = subprocess.run([*campaign_command(), "compile", str(campaign)], capture_output=True, check=True,
                              env={"CAMPAIGN_NOW": "2026-11-23T12:00:00Z", "PATH": "/usr/bin:/bin"}).stdout
    assert data["requests"] == {"count": 1, "sha256": hashlib.sha256(compiled).hexdigest()}


def test_saved_plan_holds_no_phone_number_nor_substitution_value(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path)
    plan_path = tmp_path / "promo.plan.json"
    plan(campaign, save_to=plan_path)
    text = plan_path.read_text(encoding="utf-8")
    for i in [*range(7), 500, 900]:
        msisdn = number(i)
        assert msisdn not in text and msisdn.lstrip("+") not in text and msisdn[-9:] not in text
    for value in [*NAMES, "SECRET0003X", "INLINECODE77", "Inline"]:
        assert value not in text


def test_two_plans_of_the_same_inputs_differ_only_in_created_at(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path)
    first, second = tmp_path / "a.plan.json", tmp_path / "b.plan.json"
    plan(campaign, save_to=first)
    out, err = io.StringIO(), io.StringIO()
    run_plan(PlanSettings(campaign, save_to=second), now=datetime(2026, 12, 1, tzinfo=timezone.utc), out=out, err=err)
    one, two = json.loads(first.read_text()), json.loads(second.read_text())
    assert one["created_at"] != two["created_at"]
    one.pop("created_at"), two.pop("created_at")
    assert one == two
    assert list(json.loads(first.read_text())) == ["format_version", "tool", "created_at", "campaign", "environment", "inputs",
                                                    "requests", "counts", "schedule", "ledger"]


def test_a_plan_written_elsewhere_names_the_campaign_relative_to_itself(tmp_path: Path) -> None:
    folder = tmp_path / "campaigns"
    folder.mkdir()
    campaign = make_campaign(folder)
    (tmp_path / "plans").mkdir()
    plan_path = tmp_path / "plans" / "promo.plan.json"
    plan(campaign, save_to=plan_path)
    assert read_plan(plan_path).campaign_file == "../campaigns/promo.yaml"
    assert plan(campaign, check=plan_path)[0] == 0


# --- --check ------------------------------------------------------------------------------


def test_check_is_0_when_current_and_1_naming_the_csv_when_it_changed(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path)
    plan_path = tmp_path / "promo.plan.json"
    plan(campaign, save_to=plan_path)
    code, out, _ = plan(campaign, check=plan_path)
    assert (code, out) == (0, f"{plan_path}: current (1 requests, 8 messages)\n")
    append_row(tmp_path / "data" / "people.csv", number(8), "Hank")
    code, out, _ = plan(campaign, check=plan_path)
    assert code == 1
    assert f"{plan_path}: stale: data/people.csv (recipients): changed\n" in out
    assert "promo.yaml (campaign)" not in out


def test_check_names_a_new_input_and_a_deleted_one(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path)
    plan_path = tmp_path / "promo.plan.json"
    plan(campaign, save_to=plan_path)
    write_csv(tmp_path / "data" / "more-optouts.csv", ["msisdn"], [[number(901)]])
    text = campaign.read_text().replace("- data/optouts.csv", "- data/more-optouts.csv")
    campaign.write_text(text)
    code, out, _ = plan(campaign, check=plan_path)
    assert code == 1
    assert "promo.yaml (campaign): changed" in out
    (tmp_path / "data" / "optouts.csv").unlink()
    code, out, _ = plan(campaign, check=plan_path)
    assert code == 1
    assert "data/optouts.csv (exclude): missing" in out


def test_check_of_a_missing_plan_is_an_error_with_the_command_to_make_it(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path)
    with pytest.raises(CampaignError) as raised:
        plan(campaign, check=tmp_path / "nope.plan.json")
    assert raised.value.exit_code == ExitCode.INVALID
    assert raised.value.hint is not None and "-o" in raised.value.hint


def test_check_of_another_campaigns_plan_is_stale(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path)
    other = write_campaign(tmp_path, {"content": {"text": "x"}, "recipients": [{"msisdn": number(1)}]},
                           name="other.yaml")
    plan_path = tmp_path / "other.plan.json"
    plan(other, save_to=plan_path)
    code, out, _ = plan(campaign, check=plan_path)
    assert code == 1
    assert "the plan is for other.yaml" in out


# --- apply PLAN ----------------------------------------------------------------------------


def test_apply_of_a_plan_whose_csv_gained_a_row_refuses_with_4_and_sends_nothing(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    campaign = make_campaign(tmp_path)
    plan_path = tmp_path / "promo.plan.json"
    plan(campaign, save_to=plan_path)
    append_row(tmp_path / "data" / "people.csv", number(8), "Hank")
    state = tmp_path / "state.db"
    with pytest.raises(CampaignError) as raised:
        apply(plan_path, sandbox, state)
    assert raised.value.exit_code == ExitCode.REFUSED
    assert "data/people.csv (recipients): changed" in raised.value.message
    assert "nothing sent" in raised.value.message
    assert sandbox.messages() == []
    assert sandbox.stats()["requests"] == 0
    assert not state.exists()


def test_apply_of_an_unchanged_plan_sends_exactly_the_planned_recipients(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = make_campaign(tmp_path)
    plan_path = tmp_path / "promo.plan.json"
    plan(campaign, save_to=plan_path)
    state = tmp_path / "state.db"
    code, _, err = apply(plan_path, sandbox, state)
    assert code == 0
    assert "saved plan matches promo.yaml (1 requests)" in err
    assert sorted(m.msisdn for m in sandbox.messages()) == sorted([number(i) for i in range(7)] + [number(500)])
    assert ledger_destinations(state) == 8
    # a second apply of the same plan sends nothing more: the ledger still decides
    assert apply(plan_path, sandbox, state)[0] == 0
    assert len(sandbox.messages()) == 8


def test_a_plan_for_staging_applied_to_production_refuses_with_4_naming_both_and_sends_nothing(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    campaign = make_campaign(tmp_path)
    plan_path = tmp_path / "promo.plan.json"
    assert plan(campaign, save_to=plan_path, environment="staging")[0] == 0
    assert json.loads(plan_path.read_text(encoding="utf-8"))["environment"] == "staging"
    assert read_plan(plan_path).environment == "staging"
    state = tmp_path / "state.db"
    with pytest.raises(CampaignError) as raised:
        apply(plan_path, sandbox, state, environment="production")
    assert raised.value.exit_code == ExitCode.REFUSED
    assert raised.value.message == (f"{plan_path}: the plan was made for environment 'staging', this apply targets "
                                    "'production'; nothing sent")
    assert sandbox.stats()["requests"] == 0
    assert not state.exists()
    with pytest.raises(CampaignError):  # nor the default environment
        apply(plan_path, sandbox, state)
    assert sandbox.stats()["requests"] == 0
    code, _, _ = apply(plan_path, sandbox, state, environment="staging")
    assert code == 0
    assert len(sandbox.messages()) == 8
    with Ledger.open(state, environment="staging") as ledger:
        assert sum(ledger.summary(CAMPAIGN_ID).destinations.values()) == 8


def test_check_of_a_plan_made_for_another_environment_is_stale(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path)
    plan_path = tmp_path / "promo.plan.json"
    plan(campaign, save_to=plan_path, environment="staging")
    assert plan(campaign, check=plan_path, environment="staging")[0] == 0
    code, out, _ = plan(campaign, check=plan_path, environment="production")
    assert code == 1
    assert out.splitlines()[0] == (f"{plan_path}: stale: the plan was made for environment 'staging', this check "
                                   "(--env, CAMPAIGN_ENV) targets 'production'")
    assert out.splitlines()[1] == f"hint: run `campaign plan {campaign} --env production -o {plan_path}` and commit " \
                                  "the new plan"


def test_a_plan_without_an_environment_field_is_for_the_default_environment(tmp_path: Path, sandbox: Sandbox) -> None:
    """Plans written before the field existed still apply where they were made for."""
    campaign = make_campaign(tmp_path)
    plan_path = tmp_path / "promo.plan.json"
    plan(campaign, save_to=plan_path)
    data = json.loads(plan_path.read_text(encoding="utf-8"))
    assert data["environment"] == "default"
    del data["environment"]
    plan_path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CampaignError) as raised:
        apply(plan_path, sandbox, tmp_path / "s.db", environment="production")
    assert "made for environment 'default', this apply targets 'production'" in raised.value.message
    assert apply(plan_path, sandbox, tmp_path / "s.db")[0] == 0
    assert len(sandbox.messages()) == 8


def test_plan_env_comes_from_campaign_env_through_the_real_command(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path)
    plan_path = tmp_path / "promo.plan.json"
    env = {"CAMPAIGN_NOW": "2026-11-23T12:00:00Z", "PATH": "/usr/bin:/bin", "CAMPAIGN_ENV": "staging"}
    done = subprocess.run([*campaign_command(), "plan", str(campaign), "-o", str(plan_path)], capture_output=True,
                          env=env, timeout=120)
    assert done.returncode == 0
    assert read_plan(plan_path).environment == "staging"
    done = subprocess.run([*campaign_command(), "plan", str(campaign), "--env", "bad name"], capture_output=True,
                          env=env, timeout=120, text=True)
    assert done.returncode == 2
    assert "invalid environment name 'bad name'" in done.stderr


def test_apply_of_a_plan_refuses_a_changed_campaign_file_through_the_real_command(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    campaign = make_campaign(tmp_path)
    plan_path = tmp_path / "promo.plan.json"
    plan(campaign, save_to=plan_path)
    campaign.write_text(campaign.read_text().replace("your code", "your new code"))
    run = subprocess.run([*campaign_command(), "apply", "--yes", "--quiet", "--base-url", sandbox.url,
                          "--state", str(tmp_path / "s.db"), str(plan_path)],
                         capture_output=True, text=True, env={"WEBEX_CONNECT_SERVICE_KEY": KEY, "PATH": "/usr/bin:/bin"},
                         stdin=subprocess.DEVNULL, timeout=120)
    assert run.returncode == 4, run.stderr
    assert "promo.yaml (campaign): changed" in run.stderr
    assert "Traceback" not in run.stderr
    assert sandbox.messages() == []


def test_apply_of_a_plan_whose_campaign_is_gone_refuses(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = make_campaign(tmp_path)
    plan_path = tmp_path / "promo.plan.json"
    plan(campaign, save_to=plan_path)
    campaign.unlink()
    with pytest.raises(CampaignError) as raised:
        apply(plan_path, sandbox, tmp_path / "s.db")
    assert raised.value.exit_code == ExitCode.REFUSED
    assert "promo.yaml: the campaign file the plan names is missing" in raised.value.message


def test_a_plan_of_another_format_version_is_refused_as_invalid(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = make_campaign(tmp_path)
    plan_path = tmp_path / "promo.plan.json"
    plan(campaign, save_to=plan_path)
    data = json.loads(plan_path.read_text())
    data["format_version"] = 99
    plan_path.write_text(json.dumps(data))
    with pytest.raises(CampaignError) as raised:
        apply(plan_path, sandbox, tmp_path / "s.db")
    assert raised.value.exit_code == ExitCode.INVALID
    assert "format_version 99 is not supported" in raised.value.message
    assert sandbox.messages() == []


# --- --detailed-exitcode and --state ---------------------------------------------------------


def test_detailed_exitcode_is_2_with_something_to_send_and_0_with_nothing(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path)
    assert plan(campaign, detailed_exitcode=True)[0] == 2
    assert plan(campaign)[0] == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    write_csv(empty / "optouts.csv", ["msisdn"], [[number(1)]])
    everyone_out = write_campaign(empty, {"content": {"text": "x"}, "recipients": [{"msisdn": number(1)}],
                                          "exclude": ["optouts.csv"]})
    assert plan(everyone_out, detailed_exitcode=True)[0] == 0


def test_detailed_exitcode_turns_usage_errors_into_1_through_the_real_command(tmp_path: Path) -> None:
    campaign = make_campaign(tmp_path)
    base = [*campaign_command(), "plan", "--detailed-exitcode"]
    env = {"CAMPAIGN_NOW": "2026-11-23T12:00:00Z", "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> int:
        return subprocess.run([*base, *args], capture_output=True, env=env, timeout=120).returncode

    assert run(str(campaign)) == 2
    assert run("--no-such-option", str(campaign)) == 1
    assert run("--check", str(tmp_path / "x.plan.json"), "-o", str(tmp_path / "y.plan.json"), str(campaign)) == 1
    campaign.write_text(campaign.read_text().replace("version: 1", "version: 7"))
    assert run(str(campaign)) == 1


def test_plan_against_state_counts_what_the_ledger_holds(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = make_campaign(tmp_path)
    state = tmp_path / "state.db"
    code, out, _ = plan(campaign, state=state, detailed_exitcode=True)
    assert code == 2
    assert "ledger: none yet (nothing sent); to send: 8 messages\n" in out
    assert apply(campaign, sandbox, state)[0] == 0
    append_row(tmp_path / "data" / "people.csv", number(8), "Hank")
    code, out, _ = plan(campaign, state=state, detailed_exitcode=True)
    assert code == 2
    assert ("ledger: 8 destinations already accepted, 0 failed, 0 uncertain; to send: 1 messages\n"
            in out)
    plan_path = tmp_path / "promo.plan.json"
    plan(campaign, state=state, save_to=plan_path)
    assert json.loads(plan_path.read_text())["ledger"] == {"acceptedDestinations": 8, "failedDestinations": 0,
                                                          "uncertainDestinations": 0}
    code, out, _ = plan(campaign, state=state, output_format="json")
    assert code == 0
    assert json.loads(out)["ledger"] == {
        "found": True, "acceptedDestinations": 8, "failedDestinations": 0, "uncertainDestinations": 0, "toSend": 1,
        "recipients": {"to-send": 1, "accepted": 8, "failed": 0, "uncertain": 0, "changed-since-accepted": 0},
        "applyRefuses": "the campaign's inputs changed after 8 destinations were sent (or may have been): apply "
                        "refuses (exit 4) unless --allow-changes, which sends only to the recipients to send and "
                        "failed ones"}
    assert "ledger" not in json.loads(plan(campaign, output_format="json")[1])
    assert json.loads(plan(campaign, state=tmp_path / "none.db", output_format="json")[1])["ledger"] == {
        "found": False, "acceptedDestinations": 0, "failedDestinations": 0, "uncertainDestinations": 0,
        "toSend": 9,
        "recipients": {"to-send": 9, "accepted": 0, "failed": 0, "uncertain": 0, "changed-since-accepted": 0},
        "applyRefuses": None}
    assert not (tmp_path / "none.db").exists()  # read only: a missing ledger is not created


def test_plan_against_state_with_everything_accepted_has_nothing_to_send(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = make_campaign(tmp_path)
    state = tmp_path / "state.db"
    assert apply(campaign, sandbox, state)[0] == 0
    code, out, _ = plan(campaign, state=state, detailed_exitcode=True)
    assert code == 0
    assert "8 destinations already accepted, 0 failed, 0 uncertain; to send: 0 messages" in out


def test_a_change_that_breaks_the_csv_is_named_as_a_change_not_as_an_invalid_campaign(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    campaign = make_campaign(tmp_path)
    plan_path = tmp_path / "promo.plan.json"
    plan(campaign, save_to=plan_path)
    with (tmp_path / "data" / "people.csv").open("a", encoding="utf-8") as stream:
        stream.write(f"{number(8)},only-two-cells\n")
    code, out, _ = plan(campaign, check=plan_path)
    assert (code, out.splitlines()[0]) == (1, f"{plan_path}: stale: data/people.csv (recipients): changed")
    with pytest.raises(CampaignError) as raised:
        apply(plan_path, sandbox, tmp_path / "s.db")
    assert raised.value.exit_code == ExitCode.REFUSED
    assert sandbox.messages() == []


def test_apply_of_a_v1_plan_sends_through_api_v1(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = make_campaign(tmp_path, rows=2)
    plan_path = tmp_path / "promo.plan.json"
    plan(campaign, save_to=plan_path, api="v1")
    assert read_plan(plan_path).api == "v1"
    assert read_plan(plan_path).requests.count == 3  # one request per destination on v1
    assert apply(plan_path, sandbox, tmp_path / "s.db")[0] == 0
    assert sorted((m.api, m.msisdn) for m in sandbox.messages()) == [
        ("v1", number(0)), ("v1", number(1)), ("v1", number(500))]


def test_a_csv_changed_after_the_check_stops_the_send_before_the_first_request_that_differs(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """The files are read again to send: one changed while the confirmation prompt waits
    (after the plan was verified) must not be sent."""
    campaign = make_campaign(tmp_path, rows=150)  # 151 destinations: requests of 100 and 51
    plan_path = tmp_path / "promo.plan.json"
    plan(campaign, save_to=plan_path)
    assert read_plan(plan_path).requests.count == 2
    people = tmp_path / "data" / "people.csv"

    def confirm_while_someone_edits(question: str) -> bool:
        people.write_text(people.read_text().replace(f"{number(140)},", f"{number(140)},X"))
        return True

    out, err = io.StringIO(), io.StringIO()
    console = Console(out=out, err=err, interactive=True, confirm=confirm_while_someone_edits, environ=ENV)
    settings = ApplySettings(file=plan_path, yes=False, base_url=sandbox.url, state=tmp_path / "s.db", quiet=True)
    with pytest.raises(CampaignError) as raised:
        run_apply(settings, now=datetime.now(timezone.utc), console=console)
    assert raised.value.exit_code == ExitCode.REFUSED
    assert "request 2 is not the one verified against the saved plan" in raised.value.message
    # Both requests are read (and recorded pending) in one group before the first is
    # sent, so the changed second one stops the run before anything leaves.
    assert sandbox.messages() == []


def test_plan_with_all_messages_saves_the_same_plan(tmp_path: Path) -> None:
    """`-o` hashes the bodies in the plan's own pass; `--all -o` in a pass of its own."""
    campaign = make_campaign(tmp_path, rows=250)
    one, two = tmp_path / "one.plan.json", tmp_path / "two.plan.json"
    plan(campaign, save_to=one)
    plan(campaign, save_to=two, show_all=True)
    assert one.read_text() == two.read_text()
    assert read_plan(one).requests.count == 3
    assert read_plan(one).counts["messages"] == 251
