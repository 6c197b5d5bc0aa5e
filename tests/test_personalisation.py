"""Who fills in a recipient's values: local rendering (the default) or the platform.

Real campaign files in tmp folders, compiled by the real stages; the end-to-end tests
send through the real client to the project's own sandbox and compare what every
destination received with the plan.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest

from runner.commands import ApplySettings, CompileSettings, Console, PlanSettings, run_apply, run_compile, run_plan
from runner.compile import Compiler, generated_correlation_id
from runner.errors import CampaignError
from runner.ledger import Ledger
from runner.model import Batch, Destination
from runner.sandbox import Sandbox, SandboxSettings
from runner.send import GroupCommitter
from runner.validate import validate_file

from .helpers import NOW, campaign_from, number, platform_text, write_campaign, write_csv

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "campaigns"
GOLDEN = Path(__file__).parent / "data" / "platform-compile"  # `campaign compile` of each example before local mode


def bodies(campaign_data: dict[str, object], folder: Path) -> list[dict[str, object]]:
    return [json.loads(wire) for wire in Compiler(campaign_from(folder, campaign_data)).iter_wire()]


# --- local: final texts on the wire ----------------------------------------------------


def test_local_is_the_default_and_bodies_carry_final_texts(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", ["msisdn", "name", "code"], [[number(1), "Ann", "A1"], [number(2), "Bob", "B2"]])
    sent = bodies({"content": {"text": "Hi {{ name }}, code {{ code }} at {{ store }}"},
                   "substitutions": {"store": "Fernway"},
                   "recipients": [{"file": "a.csv"}, {"msisdn": number(3), "substitutions": {"name": "Cy", "code": "C3"}}]},
                  tmp_path)
    assert [(b["to"], b["content"]) for b in sent] == [
        ([{"msisdn": [number(i)], "correlationId": generated_correlation_id("test-campaign", number(i))}],
         {"type": "text", "text": text})
        for i, text in ((1, "Hi Ann, code A1 at Fernway"), (2, "Hi Bob, code B2 at Fernway"),
                        (3, "Hi Cy, code C3 at Fernway"))
    ]
    wire = "\n".join(json.dumps(b) for b in sent)
    assert "substitutions" not in wire and "$(" not in wire


def test_identical_texts_share_requests_up_to_the_batch_size(tmp_path: Path) -> None:
    rows = [[number(i), "gold" if i % 3 == 0 else "silver"] for i in range(2500)]
    write_csv(tmp_path / "a.csv", ["msisdn", "tier"], rows)
    sent = bodies({"content": {"text": "Your {{ tier }} offer is waiting"}, "recipients": [{"file": "a.csv"}],
                   "throughput": {"tps": 1000}}, tmp_path)
    # 834 gold (i % 3 == 0) and 1666 silver; requests leave as they fill, the rest at the end
    assert [(b["content"]["text"], len(b["to"])) for b in sent] == [  # type: ignore[index, arg-type]
        ("Your silver offer is waiting", 1000),
        ("Your gold offer is waiting", 834),
        ("Your silver offer is waiting", 666),
    ]


def test_an_unpersonalised_campaign_goes_out_in_few_requests(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", ["msisdn"], [[number(i)] for i in range(2500)])
    sent = bodies({"content": {"text": "Doors open at 9"}, "recipients": [{"file": "a.csv"}],
                   "throughput": {"tps": 5000}}, tmp_path)
    assert [len(b["to"]) for b in sent] == [1000, 1000, 500]  # type: ignore[arg-type]


def test_open_text_groups_are_bounded_and_flushed_oldest_first(tmp_path: Path) -> None:
    """513 distinct texts waiting: the oldest leaves alone, so a text seen again later
    starts a new request. Same inputs, same batches (the ledger's keys rest on it)."""
    texts = ["same"] + [f"unique {i}" for i in range(600)] + ["same"]
    write_csv(tmp_path / "a.csv", ["msisdn", "t"], [[number(i), t] for i, t in enumerate(texts)])
    data = {"content": {"text": "{{ t }}"}, "recipients": [{"file": "a.csv"}], "throughput": {"tps": 1000}}
    campaign = campaign_from(tmp_path, data)
    batches = list(Compiler(campaign).iter_batches())
    assert len(batches) == 602
    assert (batches[0].body["content"]["text"], [d.msisdn for d in batches[0].destinations]) == ("same", [number(0)])
    assert (batches[-1].body["content"]["text"], [d.msisdn for d in batches[-1].destinations]) == ("same",
                                                                                                [number(601)])
    assert [b.key for b in Compiler(campaign_from(tmp_path, data)).iter_batches()] == [b.key for b in batches]


def test_buffered_messages_are_bounded_over_all_open_texts(tmp_path: Path) -> None:
    """11 texts in turn, none filling its request of 1000: at the 10,001st message
    waiting, the oldest text's 910 leave; that text's later messages make a 12th request."""
    rows = [[number(i), f"g{i % 11}"] for i in range(11 * 990)]
    write_csv(tmp_path / "a.csv", ["msisdn", "g"], rows)
    sent = bodies({"content": {"text": "Hi {{ g }}"}, "recipients": [{"file": "a.csv"}],
                   "throughput": {"tps": 1000}}, tmp_path)
    assert [(b["content"]["text"], len(b["to"])) for b in sent] == (  # type: ignore[index, arg-type]
        [("Hi g0", 910)] + [(f"Hi g{k}", 990) for k in range(1, 11)] + [("Hi g0", 80)])


def test_a_dollar_paren_is_never_sent_literally(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, {"content": {"text": "Pay $(amount) now"}, "recipients": [{"msisdn": number(1)}]})
    [problem] = validate_file(path, now=NOW).errors
    assert (problem.rule, problem.location.line) == ("placeholder-in-text", 5)
    # from a value: found when the text is rendered, at the row that brings it
    write_csv(tmp_path / "a.csv", ["msisdn", "name"], [[number(1), "Ann"], [number(2), "$(x)"]])
    campaign = campaign_from(tmp_path, {"content": {"text": "Hi {{ name }}"}, "recipients": [{"file": "a.csv"}]})
    with pytest.raises(CampaignError) as raised:
        list(Compiler(campaign).iter_wire())
    assert raised.value.message.startswith(
        f"{tmp_path / 'a.csv'}:3: error: message for {number(2)} contains '$(' after rendering")
    assert raised.value.message.endswith("[placeholder-in-text]")
    # the plan's path (every recipient as a `Recipient`) refuses it the same way
    with pytest.raises(CampaignError) as planned:
        list(Compiler(campaign).iter_messages())
    assert planned.value.message == raised.value.message


# --- platform: today's behaviour, when asked for --------------------------------------


def _examples_in(folder: Path, personalisation: str | None) -> dict[str, Path]:
    shutil.copytree(EXAMPLES, folder / "campaigns")
    paths = {}
    for path in sorted((folder / "campaigns").glob("*.yaml")):
        if personalisation is not None and "template:" not in path.read_text(encoding="utf-8"):
            with path.open("a", encoding="utf-8") as handle:
                handle.write(f"personalisation: {personalisation}\n")
        paths[path.stem] = path
    return paths


def test_platform_mode_compiles_the_examples_byte_for_byte_as_before(tmp_path: Path) -> None:
    paths = _examples_in(tmp_path, "platform")
    assert sorted(paths) == sorted(p.stem for p in GOLDEN.glob("*.jsonl"))
    for name, path in paths.items():
        out = io.StringIO()
        run_compile(CompileSettings(path), now=NOW, out=out)
        assert out.getvalue() == (GOLDEN / f"{name}.jsonl").read_text(encoding="utf-8"), name


def test_platform_mode_puts_placeholders_and_values_on_the_wire(tmp_path: Path) -> None:
    [body] = bodies({"personalisation": "platform", "content": {"text": "Hi {{ name }} at {{ store }}"},
                     "substitutions": {"store": "Fernway"},
                     "recipients": [{"msisdn": number(1), "substitutions": {"name": "Ann"}},
                                    {"msisdn": number(2), "substitutions": {"name": "Bob"}}]}, tmp_path)
    assert body["content"] == {"type": "text", "text": "Hi $(name) at $(store)"}
    assert body["substitutions"] == {"store": "Fernway"}
    assert [e["substitutions"] for e in body["to"]] == [{"name": "Ann"}, {"name": "Bob"}]  # type: ignore[index, union-attr]


def test_validate_says_platform_mode_relies_on_the_platform(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, {"personalisation": "platform", "content": {"text": "Hi {{ name }}"},
                                     "recipients": [{"msisdn": number(1), "substitutions": {"name": "Ann"}}]})
    result = validate_file(path, now=NOW)
    assert result.errors == ()
    [warning] = result.warnings
    assert warning.rule == "platform-placeholders"
    assert "campaign test-send" in (warning.hint or "")
    # nothing to fill in, nothing relied on
    quiet = write_campaign(tmp_path, {"personalisation": "platform", "content": {"text": "Hello"},
                                      "recipients": [{"msisdn": number(1)}]}, "quiet.yaml")
    assert validate_file(quiet, now=NOW).diagnostics == ()


def test_platform_mode_needs_a_plain_text_and_a_template_cannot_be_local(tmp_path: Path) -> None:
    logic = write_campaign(tmp_path, {"personalisation": "platform",
                                      "content": {"text": "{% if vip %}VIP{% endif %} hi"},
                                      "recipients": [{"msisdn": number(1), "substitutions": {"vip": True}}]})
    assert [d.rule for d in validate_file(logic, now=NOW).errors] == ["platform-needs-plain-text"]
    template = write_campaign(tmp_path, {"personalisation": "local", "template": {"id": "T1"},
                                         "recipients": [{"msisdn": number(1)}]}, "template.yaml")
    assert [d.rule for d in validate_file(template, now=NOW).errors] == ["personalisation-template"]


def test_a_template_campaign_keeps_platform_substitutions(tmp_path: Path) -> None:
    [body] = bodies({"template": {"id": "T1", "preview": "Hi $(name)"}, "substitutions": {"brand": "Fernway"},
                     "recipients": [{"msisdn": number(1), "substitutions": {"name": "Ann"}}]}, tmp_path)
    assert body["template"] == {"id": "T1"}
    assert body["substitutions"] == {"brand": "Fernway"}
    assert body["to"] == [{"msisdn": [number(1)], "substitutions": {"name": "Ann"},  # type: ignore[index]
                           "correlationId": body["to"][0]["correlationId"]}]  # type: ignore[index]


# --- plan and apply agree, and every destination receives the plan's text --------------


def _plan(path: Path) -> dict[str, object]:
    out = io.StringIO()
    run_plan(PlanSettings(path, show_all=True, output_format="json"), now=NOW, out=out)
    data: dict[str, object] = json.loads(out.getvalue())
    return data


# local: 5 distinct texts; platform: one request per encoding ("Zoë" is UCS-2)
@pytest.mark.parametrize(("personalisation", "requests"), [(None, 5), ("platform", 2)])
def test_every_destination_receives_the_plans_text(tmp_path: Path, personalisation: str | None,
                                                    requests: int) -> None:
    write_csv(tmp_path / "a.csv", ["msisdn", "name"],
              [[number(i), ["Ann", "Bob", "Ann", "Zoë", "Cy", "Ann"][i]] for i in range(6)])
    data: dict[str, object] = {"content": {"text": "Hi {{ name }}, {{ offer }} today"},
                               "substitutions": {"offer": "10% off"},
                               "recipients": [{"file": "a.csv"}, {"msisdn": number(9), "substitutions": {"offer": "gift"}},
                                              ], "throughput": {"tps": 100}}
    if personalisation is not None:
        data["personalisation"] = personalisation
    data["recipients"][1]["substitutions"]["name"] = "Dee"  # type: ignore[index]
    path = write_campaign(tmp_path, data)
    plan = _plan(path)
    summary = plan["summary"]
    assert (summary["strategy"], summary["requests"]) == (personalisation or "local", requests)  # type: ignore[index]
    expected = {m["msisdn"]: m["text"] for m in plan["messages"]}  # type: ignore[attr-defined]
    assert expected[number(0)] == "Hi Ann, 10% off today" and expected[number(9)] == "Hi Dee, gift today"

    with Sandbox(SandboxSettings(tps=100)) as sandbox:
        out, err = io.StringIO(), io.StringIO()
        console = Console(out=out, err=err, interactive=False, confirm=lambda q: False,
                          environ={"WEBEX_CONNECT_SERVICE_KEY": "k"})
        code = run_apply(ApplySettings(path, state=tmp_path / "state.db", yes=True, base_url=sandbox.url),
                         now=datetime.now(timezone.utc), console=console)
        assert code == 0, out.getvalue() + err.getvalue()
        received = {m.msisdn: m.text for m in sandbox.messages()}
        assert sandbox.stats()["accepted_requests"] == requests
    assert received == expected
    assert Counter(received.values())["Hi Ann, 10% off today"] == 3


def test_platform_text_helper_fills_like_the_platform() -> None:
    """The tests' own stand-in for the platform, checked on a literal body."""
    body = {"to": [{"msisdn": ["+1"], "substitutions": {"a": "x"}}], "substitutions": {"a": "y", "b": "z"},
            "content": {"text": "$(a)-$(b)-$(c)"}}
    assert platform_text(body, "+1") == "x-z-$(c)"


# --- one request per destination: the ledger commits the send threads' writes in groups ---


def _two_pending(path: Path) -> tuple[Ledger, str]:
    ledger = Ledger.open(path)
    run_id = ledger.begin_run("c")
    ledger.record_pending_many("c", [Batch(f"k{i}", i, "v2", {}, (Destination(number(i), f"c{i}"),)) for i in (1, 2)])
    return ledger, run_id


def test_a_ledger_group_is_one_transaction_all_or_none(tmp_path: Path) -> None:
    ledger, run_id = _two_pending(tmp_path / "state.db")
    with ledger:
        with pytest.raises(CampaignError, match="cannot go from pending to accepted"):
            with ledger.group():
                ledger.mark_in_flight("k1", run_id)
                ledger.mark_accepted("k2", http_status=201, message_id="m")  # pending -> accepted: refused
        assert (ledger.batch_status("k1"), ledger.batch_status("k2")) == ("pending", "pending")  # k1 rolled back
        with ledger.group():
            ledger.mark_in_flight("k1", run_id)
            ledger.mark_in_flight("k2", run_id)
        assert (ledger.batch_status("k1"), ledger.batch_status("k2")) == ("in-flight", "in-flight")
        ledger.mark_accepted("k2", http_status=201, message_id="m")
        assert ledger.batch_statuses(["k2", "unknown", "k1"]) == {"k1": "in-flight", "k2": "accepted"}


def test_group_committer_gives_each_writer_its_own_answer(tmp_path: Path) -> None:
    ledger, run_id = _two_pending(tmp_path / "state.db")
    with ledger:
        committer = GroupCommitter(ledger)
        results: dict[str, str] = {}

        def write(key: str, change: Callable[[], None]) -> None:
            try:
                committer.write(change)
                results[key] = "ok"
            except CampaignError as error:
                results[key] = error.message

        threads = [threading.Thread(target=write, args=("k1", functools.partial(ledger.mark_in_flight, "k1", run_id))),
                   threading.Thread(target=write, args=("k2", functools.partial(
                       ledger.mark_accepted, "k2", http_status=201, message_id="m")))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        committer.close()
        assert results == {"k1": "ok", "k2": "ledger: batch k2 cannot go from pending to accepted"}
        assert (ledger.batch_status("k1"), ledger.batch_status("k2")) == ("in-flight", "pending")


@pytest.mark.parametrize(("personalisation", "mode", "requests"), [(None, "local", 3), ("platform", "platform", 1)])
def test_every_plan_format_shows_the_mode_and_its_requests(tmp_path: Path, personalisation: str | None, mode: str,
                                                           requests: int) -> None:
    data: dict[str, object] = {"content": {"text": "Hi {{ name }}"}, "throughput": {"tps": 100},
                               "recipients": [{"msisdn": number(i), "substitutions": {"name": n}}
                                              for i, n in enumerate(["Ann", "Bob", "Ann", "Cy"])]}
    if personalisation:
        data["personalisation"] = personalisation
    path = write_campaign(tmp_path, data)
    shown = {}
    for output_format in ("text", "json", "markdown"):
        out = io.StringIO()
        run_plan(PlanSettings(path, output_format=output_format), now=NOW, out=out)
        shown[output_format] = out.getvalue()
    assert f"| API | v2 ({mode} personalisation) |" in shown["markdown"]
    assert f"| requests | {requests} (up to 100 destinations each) |" in shown["markdown"]
    assert f"v2 ({mode} personalisation)" in shown["text"]
    assert f"{requests} (up to 100 destinations each)" in shown["text"]
    summary = json.loads(shown["json"])["summary"]
    assert (summary["strategy"], summary["requests"]) == (mode, requests)
    compiled = io.StringIO()
    run_compile(CompileSettings(path), now=NOW, out=compiled)
    assert len(compiled.getvalue().splitlines()) == requests  # compile (and apply) make what the plan said
