"""Render and compile on real campaign files: precedence, strategies, batches, v1, streaming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.compile import Compiler, batch_size, generated_correlation_id
from runner.errors import CampaignError
from runner.model import Campaign
from runner.recipients import RecipientStats

from runner.validate import load_campaign

from .helpers import NOW, campaign_from, number, platform_text, write_csv

PLAIN = "Hi {{ name }}, {{ offer }} at {{ store }} ({{ region }})"


def layered_campaign(folder: Path, text: str = PLAIN) -> Path:
    write_csv(folder / "people.csv", ["msisdn", "name", "offer"], [
        [number(1), "Ann", "30%"],  # recipient overrides offer
        [number(2), "Bob", ""],  # empty cell: offer falls through to the source layer
    ])
    return folder / "people.csv"


def layered(folder: Path, text: str = PLAIN, personalisation: str = "platform") -> Compiler:
    layered_campaign(folder)
    campaign = campaign_from(folder, {
        "content": {"text": text},
        **({"personalisation": personalisation} if "{%" not in text and "|" not in text else {}),
        "substitutions": {"offer": "10%", "store": "Main St", "region": "north"},
        "recipients": [
            {"file": "people.csv", "substitutions": {"offer": "20%", "store": "Online"}},
            {"msisdn": number(3), "substitutions": {"name": "Cy", "region": "south"}},
        ],
        "throughput": {"tps": 100},
    })
    return Compiler(campaign)


def test_precedence_each_layer_overrides_only_its_keys(tmp_path: Path) -> None:
    texts = {m.msisdn: m.text for m in layered(tmp_path).iter_messages()}
    assert texts == {
        number(1): "Hi Ann, 30% at Online (north)",  # own > source > campaign
        number(2): "Hi Bob, 20% at Online (north)",  # source > campaign
        number(3): "Hi Cy, 10% at Main St (south)",  # own > campaign
    }


def test_builtins_are_the_lowest_layer(tmp_path: Path) -> None:
    campaign = campaign_from(tmp_path, {
        "id": "bi",
        "content": {"text": "{{ campaign_id }}/{{ msisdn }}/{{ correlation_id }}"},
        "recipients": [{"msisdn": number(1), "correlationId": "c1"},
                       {"msisdn": number(2), "substitutions": {"campaign_id": "mine"}}],
    })
    texts = [m.text for m in Compiler(campaign).iter_messages()]
    assert texts == [f"bi/{number(1)}/c1", f"mine/{number(2)}/{generated_correlation_id('bi', number(2))}"]


def test_platform_strategy_puts_placeholders_on_the_wire(tmp_path: Path) -> None:
    compiler = layered(tmp_path)
    [batch] = list(compiler.iter_batches())
    body = batch.body
    assert body["content"] == {"type": "text", "text": "Hi $(name), $(offer) at $(store) ($(region))"}
    assert body["substitutions"] == {"offer": "10%", "region": "north", "store": "Main St"}
    assert body["to"][0] == {"msisdn": [number(1)], "substitutions": {"name": "Ann", "offer": "30%", "store": "Online"},
                             "correlationId": generated_correlation_id("test-campaign", number(1))}
    assert body["to"][2]["substitutions"] == {"name": "Cy", "region": "south"}


def test_both_strategies_give_every_recipient_the_same_text(tmp_path: Path) -> None:
    plain = layered(tmp_path)
    expected = {m.msisdn: m.text for m in plain.iter_messages()}
    [batch] = list(plain.iter_batches())
    assert {d.msisdn: platform_text(dict(batch.body), d.msisdn) for d in batch.destinations} == expected
    # the same text written with jinja2 logic is rendered locally
    logic = layered(tmp_path, PLAIN.replace("{{ name }}", "{{ name | trim }}"))
    assert not logic.platform
    local = {d.msisdn: b.body["content"]["text"] for b in logic.iter_batches() for d in b.destinations}
    assert local == expected


def compile_both_ways(campaign: Campaign) -> tuple[Any, Any]:
    """What compile/apply's streaming path gives (file rows read for only the text's
    columns, common rows compiled inline) and what plan's `Recipient` path gives: the
    request bodies and every counter, or the error. Both must always be the same."""
    outcomes = []
    for planned in (False, True):
        compiler = Compiler(campaign)
        try:
            batches = compiler.iter_batches(compiler.iter_compiled()) if planned else compiler.iter_batches()
            wires = [batch.wire for batch in batches]
        except CampaignError as error:
            outcomes.append(("error", error.message, error.hint))
            continue
        s = compiler.stats
        outcomes.append((wires, s.messages, s.segments, s.by_encoding, s.requests, s.ucs2_causes, s.recipients))
    return outcomes[0], outcomes[1]


@pytest.mark.parametrize("personalisation", ["platform", "local"])
@pytest.mark.parametrize(("text", "first_values"), [
    ("Hi {{ name }}, {{ tier }} at {{ store }}", {"name": "Ann", "tier": "gold"}),
    ("{{ tier }}: {{ store }} for {{ name }} ({{ msisdn }})",  # a built-in: no row is common
     {"msisdn": number(1), "name": "Ann", "tier": "gold"}),
    ("Hi {{ name }}", {"name": "Ann"}),
    ("{% set name = name | upper %}Hi {{ name }}, {{ tier }}", None),  # logic that reads a column it sets
])
def test_streamed_rows_compile_like_planned_recipients(tmp_path: Path, text: str,
                                                       first_values: dict[str, str] | None,
                                                       personalisation: str) -> None:
    write_csv(tmp_path / "a.csv", ["tier", "msisdn", "unused", "name"], [
        ["gold", number(1), "x", "Ann"],  # the common row: its values are the personal ones
        ["silver", number(2), "", "Bob"],
        ["silver", number(4), "z", "Dee \u2019"],  # UCS-2
        ["gold", number(1), "x", "Ann"],  # duplicate
    ])
    write_csv(tmp_path / "b.csv", ["msisdn", "name", "store", "tier"], [
        [number(5), "Eve", "Fernway", "gold"],  # a value equal to the campaign's
        [number(6), "Fay", "Online", ""],  # one overriding it; an empty cell: the source value shows
    ])
    (tmp_path / "c.jsonl").write_text(
        f'{{"msisdn": "{number(7)}", "tier": "bronze", "name": "Gus", "extra": 1}}\n'
        f'{{"name": "Hal", "tier": "gold", "msisdn": "{number(8)}"}}\n', encoding="utf-8")
    campaign = campaign_from(tmp_path, {
        "content": {"text": text},
        **({"personalisation": personalisation} if first_values is not None else {}),
        "substitutions": {"store": "Fernway"},
        "recipients": [{"file": "a.csv"}, {"file": "b.csv", "substitutions": {"tier": "source"}},
                       {"file": "c.jsonl"}, {"msisdn": number(9), "substitutions": {"name": "Ivy", "tier": "vip"}}],
        "throughput": {"tps": 3},
    })
    streamed, planned = compile_both_ways(campaign)
    assert streamed == planned
    wires = streamed[0]
    if first_values is None:  # rendered here: Ann's own text, upper-cased by the template
        assert '"text":"Hi ANN, gold"' in wires[0]
        return
    if personalisation == "local":  # 8 distinct texts, so 8 requests, each a final text
        assert len(wires) == 8
        assert not any("substitutions" in wire or "$(" in wire for wire in wires)
        assert '"to":[{"msisdn":["%s"]' % number(1) in wires[0]
        return
    assert len(wires) == 4  # 7 GSM-7 messages in batches of 3, 1 UCS-2
    first = json.dumps({"msisdn": [number(1)], "substitutions": first_values}, separators=(",", ":"))[:-1]
    assert first in wires[0]  # values in name order


def test_smartlink_tokens_pass_through_whatever_a_column_says(tmp_path: Path) -> None:
    """A column (or any layer) named like a token does not replace it: the platform puts
    the link there. Both paths agree, and the message stays GSM-7."""
    write_csv(tmp_path / "a.csv", ["msisdn", "name", "smartlink_4371"], [[number(1), "Ann", "\u2019"],
                                                                        [number(2), "Bob", ""]])
    campaign = campaign_from(tmp_path, {
        "personalisation": "platform",
        "content": {"text": "Hi {{ name }} {{ smartlink_4371 }}"},
        "substitutions": {"smartlink_4371": "campaign"},
        "smartlinks": [{"smartlinkId": "4371", "validity": 1}],
        "recipients": [{"file": "a.csv"}],
    })
    streamed, planned = compile_both_ways(campaign)
    assert streamed == planned
    assert streamed[3] == {"GSM-7": 2}
    assert [m.text for m in Compiler(campaign).iter_messages()] == ["Hi Ann {{smartlink_4371}}",
                                                                    "Hi Bob {{smartlink_4371}}"]


def test_character_errors_name_the_first_variable_in_the_text(tmp_path: Path) -> None:
    """Not the first column of the file: the answer must not depend on column order."""
    write_csv(tmp_path / "a.csv", ["msisdn", "zeta", "alpha"], [[number(1), "z\u2019", "a\u2019"]])
    campaign = campaign_from(tmp_path, {
        "content": {"type": "text", "text": "{{ zeta }} {{ alpha }}"},
        "recipients": [{"file": "a.csv"}],
    })
    streamed, planned = compile_both_ways(campaign)
    assert streamed == planned
    assert "a.csv:2 (substitution 'zeta'): error: content type is text" in streamed[1]


def test_numbers_longer_than_e164_are_deduplicated(tmp_path: Path) -> None:
    """libphonenumber accepts some German numbers of 17 digits: above what a NumberSet
    entry holds, so they take its overflow path."""
    long_number = "+4940604876475938"
    write_csv(tmp_path / "a.csv", ["msisdn"], [[long_number], [number(1)], [long_number]])
    campaign = campaign_from(tmp_path, {"content": {"text": "hi"}, "recipients": [{"file": "a.csv"}]})
    streamed, planned = compile_both_ways(campaign)
    assert streamed == planned
    assert streamed[6] == RecipientStats(total_rows=3, duplicates=1, accepted=2)
    assert f'"msisdn":["{long_number}"]' in streamed[0][0]


def test_a_true_value_is_not_the_campaigns_1(tmp_path: Path) -> None:
    """Python says True == 1; the platform would print `true` and `1` differently."""
    (tmp_path / "a.jsonl").write_text(f'{{"msisdn": "{number(1)}", "flag": true}}\n'
                                      f'{{"msisdn": "{number(2)}", "flag": 1}}\n', encoding="utf-8")
    campaign = campaign_from(tmp_path, {"content": {"text": "{{ flag }}"}, "substitutions": {"flag": 1},
                                        "personalisation": "platform",
                                        "recipients": [{"file": "a.jsonl"}]})
    streamed, planned = compile_both_ways(campaign)
    assert streamed == planned
    [body] = [json.loads(wire) for wire in streamed[0]]
    assert [entry.get("substitutions") for entry in body["to"]] == [{"flag": "true"}, None]


WRITTEN_TEXT = "{{ flag }} {{ price }} {{ points }} {{ code }}"


@pytest.mark.parametrize(("personalisation", "text"), [
    ("platform", WRITTEN_TEXT), ("local", WRITTEN_TEXT),
    ("local", "{% if flag %}+{% endif %}{% if price > 2 %}>{% endif %}" + WRITTEN_TEXT),  # logic reads values
])
def test_values_as_written_compile_alike_both_ways(tmp_path: Path, personalisation: str, text: str) -> None:
    """`true`, `1.50`, `1200` and a quoted `007` in every layer (campaign, a file's shared
    values, CSV cells, JSON Lines numbers, inline values): both paths send the text
    written, and on the wire every value is a JSON string. Written as YAML text: a dump
    would write 1.5."""
    write_csv(tmp_path / "a.csv", ["msisdn", "points"], [[number(1), "1200"], [number(2), "0900"]])
    (tmp_path / "b.jsonl").write_text(f'{{"msisdn": "{number(3)}", "price": 1.50, "flag": false, "points": 1200}}\n'
                                      f'{{"msisdn": "{number(4)}", "price": 3.0e1, "code": "008"}}\n', encoding="utf-8")
    path = tmp_path / "campaign.yaml"
    path.write_text(f"""version: 1
id: written
from: "12025550100"
personalisation: {personalisation}
content:
  text: "{text}"
substitutions: {{flag: true, price: 1.50, points: 1200, code: "007"}}
recipients:
  - file: a.csv
    substitutions: {{price: 2.50}}
  - file: b.jsonl
  - msisdn: "{number(5)}"
    substitutions: {{points: 1201, flag: TRUE}}
throughput: {{tps: 100}}
""", encoding="utf-8")
    campaign, _ = load_campaign(path, now=NOW)
    streamed, planned = compile_both_ways(campaign)
    assert streamed == planned
    bodies = [json.loads(wire) for wire in streamed[0]]
    expected = {number(1): "true 2.50 1200 007", number(2): "true 2.50 0900 007", number(3): "false 1.50 1200 007",
                number(4): "true 3.0e1 1200 008", number(5): "TRUE 1.50 1201 007"}
    if "%" in text:
        expected = {n: ("" if n == number(3) else "+") + (">" if n in (number(1), number(2), number(4)) else "") + t
                    for n, t in expected.items()}
    if campaign.personalisation == "local":
        assert {e["msisdn"][0]: b["content"]["text"] for b in bodies for e in b["to"]} == expected
        return
    [body] = bodies
    assert body["substitutions"] == {"code": "007", "flag": "true", "points": "1200", "price": "1.50"}
    assert [e.get("substitutions") for e in body["to"]] == [
        {"price": "2.50"}, {"points": "0900", "price": "2.50"}, {"flag": "false"}, {"code": "008", "price": "3.0e1"},
        {"flag": "TRUE", "points": "1201"}]
    assert {n: platform_text(body, n) for n in expected} == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="$\x85"),
                                max_size=12), min_size=3, max_size=3))
def test_strategies_agree_for_arbitrary_values(tmp_path: Path, values: list[str]) -> None:
    campaign = campaign_from(tmp_path, {
        "personalisation": "platform",
        "content": {"text": "{{ a }}-{{ b }}-{{ a }}"},
        "substitutions": {"a": values[0], "b": values[1]},
        "recipients": [{"msisdn": number(1), "substitutions": {"b": values[2]}}, {"msisdn": number(2)}],
    })
    compiler = Compiler(campaign)
    expected = {m.msisdn: m.text for m in Compiler(campaign).iter_messages()}
    got = {d.msisdn: platform_text(dict(b.body), d.msisdn) for b in compiler.iter_batches() for d in b.destinations}
    assert got == expected == {number(1): f"{values[0]}-{values[2]}-{values[0]}",
                               number(2): f"{values[0]}-{values[1]}-{values[0]}"}


def test_local_strategy_groups_identical_texts(tmp_path: Path) -> None:
    rows = [[number(i), "gold" if i % 2 else "silver"] for i in range(1, 7)]
    write_csv(tmp_path / "tiers.csv", ["msisdn", "tier"], rows)
    campaign = campaign_from(tmp_path, {
        "content": {"text": "{% if tier == 'gold' %}Gold perks{% else %}Thanks{% endif %}"},
        "recipients": [{"file": "tiers.csv"}],
    })
    batches = list(Compiler(campaign).iter_batches())
    assert [(b.body["content"]["text"], [d.msisdn for d in b.destinations]) for b in batches] == [
        ("Gold perks", [number(1), number(3), number(5)]),
        ("Thanks", [number(2), number(4), number(6)]),
    ]
    assert all("substitutions" not in b.body for b in batches)


def test_auto_encoding_splits_batches_by_encoding(tmp_path: Path) -> None:
    campaign = campaign_from(tmp_path, {
        "content": {"text": "Hi {{ name }}"},
        "recipients": [{"msisdn": number(1), "substitutions": {"name": "Zoë"}},
                       {"msisdn": number(2), "substitutions": {"name": "Bo"}}],
    })
    batches = list(Compiler(campaign).iter_batches())
    assert [(b.body["content"]["type"], [d.msisdn for d in b.destinations]) for b in batches] == [
        ("unicode", [number(1)]), ("text", [number(2)])]


def test_text_type_with_non_gsm_character_names_char_and_source(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", ["msisdn", "name"], [[number(1), "Ann"], [number(2), "Łukasz"]])
    campaign = campaign_from(tmp_path, {"content": {"type": "text", "text": "Hi {{ name }}"},
                                        "recipients": [{"file": "a.csv"}]})
    with pytest.raises(CampaignError) as caught:
        list(Compiler(campaign).iter_batches())
    assert caught.value.message == (
        f"{tmp_path}/a.csv:3 (substitution 'name'): error: content type is text but the message for {number(2)} has 'Ł' "
        "(U+0141), which GSM-7 cannot encode [non-gsm-character]")


def test_text_type_with_curly_quote_in_template_suggests_replacement(tmp_path: Path) -> None:
    # written in the text itself, it is found by validate, before plan or compile
    with pytest.raises(CampaignError) as caught:
        campaign_from(tmp_path, {"content": {"type": "text", "text": "It’s on"}, "recipients": [{"msisdn": number(1)}]})
    assert caught.value.message.endswith(
        "campaign.yaml:6:9: error: content type is text but the text has '’' (U+2019, character 3), which GSM-7 "
        "cannot encode [non-gsm-character] (hint: replace it with \"'\", or set content.type to unicode or auto)")


def test_missing_variable_names_recipient_row_and_variable(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", ["msisdn", "name"], [[number(1), "Ann"], [number(2), ""]])
    campaign = campaign_from(tmp_path, {"content": {"text": "Hi {{ name }}"}, "recipients": [{"file": "a.csv"}]})
    with pytest.raises(CampaignError) as caught:
        list(Compiler(campaign).iter_batches())
    assert caught.value.message == (
        f"{tmp_path}/a.csv:3: error: variable 'name' is not defined for {number(2)} [missing-variable]")


def test_sandboxed_template_cannot_reach_python_internals(tmp_path: Path) -> None:
    campaign = campaign_from(tmp_path, {"content": {"text": "{{ ''.__class__.__mro__[1].__subclasses__() }}"},
                                        "recipients": [{"msisdn": number(1)}]})
    with pytest.raises(CampaignError) as caught:
        list(Compiler(campaign).iter_messages())
    # the sandbox refuses the attribute itself: not a missing variable, not a rendered subclass list
    assert caught.value.message == (
        f"{tmp_path}/campaign.yaml:5:9: error: template not allowed: access to attribute '__class__' of 'str' "
        "object is unsafe. [template-sandbox]")


def test_smartlink_token_passes_through_verbatim(tmp_path: Path) -> None:
    campaign = campaign_from(tmp_path, {
        "content": {"text": "Hi {{ name }}: {{ smartlink_4371 }}"},
        "smartlinks": [{"smartlinkId": "4371", "validity": 1}],
        "recipients": [{"msisdn": number(1), "substitutions": {"name": "Ann"}}],
    })
    compiler = Compiler(campaign)
    [batch] = list(compiler.iter_batches())
    assert batch.body["content"]["text"] == "Hi Ann: {{smartlink_4371}}"  # local: the final text
    assert batch.body["smartlinks"] == [{"smartlinkId": "4371", "validity": 1}]
    assert [m.text for m in Compiler(campaign).iter_messages()] == ["Hi Ann: {{smartlink_4371}}"]


@pytest.mark.parametrize(("tps", "recipients", "sizes"), [(7, 20, [7, 7, 6]), (5000, 2500, [1000, 1000, 500]),
                                                          (1, 3, [1, 1, 1])])
def test_batches_respect_min_of_1000_and_tps(tmp_path: Path, tps: int, recipients: int, sizes: list[int]) -> None:
    write_csv(tmp_path / "n.csv", ["msisdn"], [[number(i)] for i in range(recipients)])
    campaign = campaign_from(tmp_path, {"content": {"text": "hello"}, "recipients": [{"file": "n.csv"}],
                                        "throughput": {"tps": tps}})
    assert batch_size(campaign) == sizes[0]
    batches = list(Compiler(campaign).iter_batches())
    assert [len(b.destinations) for b in batches] == sizes
    assert [len(b.body["to"]) for b in batches] == sizes
    assert len({b.key for b in batches}) == len(batches)


RUN_SCRIPT = """
import sys
from pathlib import Path
from runner.compile import generated_correlation_id
from tests.test_compile import layered

for batch in layered(Path(sys.argv[1])).iter_batches():
    print(batch.json() + batch.key)
print(generated_correlation_id("c", "+1"), generated_correlation_id("d", "+1"))
"""


def test_output_is_byte_identical_across_runs(tmp_path: Path) -> None:
    """Separate interpreters with different hash seeds (so set and dict-of-set orders differ)
    write the same bytes: bodies, batch keys and generated correlation ids."""
    outputs = []
    for seed in ("1", "2", "3"):
        folder = tmp_path / seed
        folder.mkdir()
        done = subprocess.run([sys.executable, "-c", RUN_SCRIPT, str(folder)], capture_output=True, check=True,
                              cwd=Path(__file__).resolve().parent.parent, env={**os.environ, "PYTHONHASHSEED": seed})
        outputs.append(done.stdout.replace(str(folder).encode(), b"<folder>"))
    assert outputs[0] == outputs[1] == outputs[2]
    lines = outputs[0].decode().splitlines()
    assert lines[:-1] == [b.json() + b.key for b in layered(tmp_path).iter_batches()]  # and this process's
    assert lines[-1].split() == [generated_correlation_id("c", "+1"), generated_correlation_id("d", "+1")]
    assert len(set(lines[-1].split())) == 2  # the campaign id is part of the id


def test_scheduled_campaign_body_fields(tmp_path: Path) -> None:
    campaign = campaign_from(tmp_path, {
        "content": {"text": "Sale https://shop.example.com"},
        "recipients": [{"msisdn": number(1), "correlationId": "c-1"}],
        "sendAt": "2026-11-25T10:00:00+01:00",
        "validity": "1h30m",
        "options": {"shortenLinks": True, "trackClicks": True, "domain": "https://s.example.co"},
        "requestedReceipts": ["DELIVERED", "CLICKED"],
        "notifyUrl": "https://hooks.example.com/x",
        "callbackData": "cb",
        "contactPolicy": {"contactPolicyGroup": "mkt", "channelApplyFrequencyCap": True},
    })
    [batch] = list(Compiler(campaign).iter_batches())
    assert batch.body == {
        "channel": "sms",
        "from": "12025550100",
        "to": [{"msisdn": [number(1)], "correlationId": "c-1"}],
        "content": {"type": "text", "text": "Sale https://shop.example.com"},
        "options": {"shortenLinks": "true", "trackClicks": "true", "domain": "https://s.example.co"},
        "requestedReceipts": ["DELIVERED", "CLICKED"],
        "sendAt": "2026-11-25T09:00:00.000Z",
        "validity": "5400",
        "callbackData": "cb",
        "notifyUrl": "https://hooks.example.com/x",
        "contactPolicy": {"contactPolicyGroup": "mkt", "channelApplyFrequencyCap": True},
    }


def test_template_campaign_sends_template_id_and_all_values(tmp_path: Path) -> None:
    campaign = campaign_from(tmp_path, {
        "template": {"id": "5S2XXXXFNR", "preview": "Hi {{ name }}"},
        "substitutions": {"points": "0"},
        "recipients": [{"msisdn": number(1), "substitutions": {"name": "Ann", "points": "7"}}],
    })
    [batch] = list(Compiler(campaign).iter_batches())
    assert batch.body == {
        "channel": "sms", "from": "12025550100",
        "to": [{"msisdn": [number(1)], "substitutions": {"name": "Ann", "points": "7"},
                "correlationId": generated_correlation_id("test-campaign", number(1))}],
        "template": {"id": "5S2XXXXFNR"},
        "substitutions": {"points": "0"},
    }


def test_v1_compiles_one_flat_body_per_destination(tmp_path: Path) -> None:
    compiler_campaign = layered(tmp_path).campaign
    bodies = [b.body for b in Compiler(compiler_campaign, "v1").iter_batches()]
    assert len(bodies) == 3
    assert bodies[0] == {
        "from": "12025550100", "to": number(1),
        "content": "Hi $(name), $(offer) at $(store) ($(region))",
        "substitutions": {"offer": "30%", "region": "north", "store": "Online", "name": "Ann"},
        "contentType": "text",
        "correlationId": generated_correlation_id("test-campaign", number(1)),
    }


@pytest.mark.parametrize("field", ["sendAt", "validity", "contactPolicy"])
def test_v1_refuses_what_it_cannot_express(tmp_path: Path, field: str) -> None:
    extra = {"sendAt": {"sendAt": "2026-11-25T09:00:00Z"}, "validity": {"validity": 60},
             "contactPolicy": {"contactPolicy": {"contactPolicyGroup": "g", "channelCheckConsent": True}}}[field]
    campaign = campaign_from(tmp_path, {"content": {"text": "x"}, "recipients": [{"msisdn": number(1)}], **extra})
    with pytest.raises(CampaignError) as caught:
        Compiler(campaign, "v1")
    assert f"SMS API v1 cannot express '{field}' [v1-unsupported]" in caught.value.message


STREAM_SCRIPT = """
import json, resource, sys
from pathlib import Path
from runner.compile import Compiled, Compiler
from runner.model import Encoding, Location, Message, SegmentCount
from tests.helpers import campaign_from, number

folder = Path(sys.argv[2])
campaign = campaign_from(folder, {"content": {"text": "hello"}, "recipients": [{"msisdn": number(1)}],
                                  "throughput": {"tps": 1000}})
count, origin = SegmentCount(Encoding.GSM7, 5, 1), Location("gen", 0)
rows = (Compiled(Message(f"+{10**11 + i}", f"c{i}", "hello", count, origin), {}) for i in range(int(sys.argv[1])))
batches = sum(1 for batch in Compiler(campaign).iter_batches(rows) if json.dumps(batch.body))
print(batches, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_batching_streams_a_million_generated_rows(tmp_path: Path) -> None:
    """Peak memory for a 1M-row generator is that of a 50k one: rows are not held."""
    peaks = {}
    for rows in (50_000, 1_000_000):
        folder = tmp_path / str(rows)
        folder.mkdir()
        done = subprocess.run([sys.executable, "-c", STREAM_SCRIPT, str(rows), str(folder)], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
        batches, peak_kib = map(int, done.stdout.split())
        assert batches == rows // 1000
        peaks[rows] = peak_kib
    # holding 1M rows would cost hundreds of MB; streaming costs nothing extra
    assert peaks[1_000_000] - peaks[50_000] < 16 * 1024, peaks
