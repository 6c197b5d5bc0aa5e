"""Errors found before anything is sent: validate lists every problem of a file at once,
plan refuses texts the vendor would refuse or that say nothing, and warns when a campaign
sends to nobody. Real files in a temp folder; expected values written out.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from runner.commands import PlanSettings, run_plan
from runner.errors import CampaignError, ExitCode
from runner.validate import validate_file

from .helpers import NOW, number, write_campaign, write_csv


def rules(path: Path) -> list[tuple[int, str]]:
    return [(d.location.line, d.rule) for d in validate_file(path, now=NOW).errors]


def plan(path: Path, *, strict: bool = False, output_format: str = "text") -> tuple[ExitCode, str]:
    out = io.StringIO()
    code = run_plan(PlanSettings(path, output_format=output_format, strict=strict), now=NOW, out=out)
    return code, out.getvalue()


# --- validate: every problem at once ------------------------------------------------------------


def test_a_file_with_five_problems_reports_all_five(tmp_path: Path) -> None:
    path = tmp_path / "five.yaml"
    path.write_text(
        'version: 1\n'
        'id: five\n'
        'from: "12025550100"\n'
        'colour: blue\n'                       # 4: unknown key (schema)
        'content:\n'
        '  text: "Hi"\n'
        'template:\n'                          # 7: content and template
        '  id: T1\n'
        'recipients:\n'
        '  - msisdn: 447911000001\n'           # 10: a number, not a string (schema)
        'sendAt: "tomorrow morning"\n'         # 11: not a date-time
        'throughput:\n'
        '  tps: 100000\n',                     # 13: over the limit
        encoding="utf-8")
    assert rules(path) == [(4, "schema.additionalProperties"), (7, "content-xor-template"),
                           (10, "yaml-unquoted-number"), (11, "schedule-format"), (13, "tps-range")]


def test_a_misspelt_top_level_key_is_reported_once(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, {"contnet": {"text": "Hi"}, "recipients": [{"msisdn": number(1)}]})
    assert [r for _, r in rules(path)] == ["schema.additionalProperties"]


def test_a_smartlink_needs_its_validity(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, {"content": {"text": "Hi {{ smartlink_4371 }}"},
                                     "smartlinks": [{"smartlinkId": "4371"}], "recipients": [{"msisdn": number(1)}]})
    errors = validate_file(path, now=NOW).errors
    assert [(d.rule, d.message) for d in errors] == [("schema.required", "smartlinks.0: 'validity' is a required property")]


def test_type_text_with_a_non_gsm_character_in_the_text_is_a_validate_error(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, {"content": {"type": "text", "text": "Привет"},
                                     "recipients": [{"msisdn": number(1)}]})
    errors = validate_file(path, now=NOW).errors
    assert [d.rule for d in errors] == ["non-gsm-character"]
    assert errors[0].message == ("content type is text but the text has 'П' (U+041F, character 1), which GSM-7 "
                                 "cannot encode")


@pytest.mark.parametrize("text", ["   ", "\n\t"])
def test_a_blank_text_is_a_validate_error(tmp_path: Path, text: str) -> None:
    path = write_campaign(tmp_path, {"content": {"text": text}, "recipients": [{"msisdn": number(1)}]})
    assert [r for _, r in rules(path)] == ["text-empty"]


# --- plan: texts the vendor would refuse, or that say nothing ---------------------------------------


def test_a_text_that_renders_blank_is_an_error_at_plan(tmp_path: Path) -> None:
    write_csv(tmp_path / "people.csv", ["msisdn", "greeting"], [[number(1), "Hello"], [number(2), "   "]])
    path = write_campaign(tmp_path, {"content": {"text": "{{ greeting }}"}, "recipients": [{"file": "people.csv"}]})
    with pytest.raises(CampaignError) as caught:
        plan(path)
    assert caught.value.message.endswith(f"people.csv:3: error: the message for {number(2)} is empty after "
                                         "rendering [text-empty]")


def test_a_text_with_logic_that_renders_empty_is_an_error_at_plan(tmp_path: Path) -> None:
    write_csv(tmp_path / "people.csv", ["msisdn", "vip"], [[number(1), "yes"], [number(2), "no"]])
    path = write_campaign(tmp_path, {"content": {"text": "{% if vip == 'yes' %}VIP offer{% endif %}"},
                                     "recipients": [{"file": "people.csv"}]})
    with pytest.raises(CampaignError) as caught:
        plan(path)
    assert "[text-empty]" in caught.value.message and number(2) in caught.value.message


def test_a_rendered_text_over_the_vendor_limit_is_an_error_at_plan(tmp_path: Path) -> None:
    write_csv(tmp_path / "people.csv", ["msisdn", "name"], [[number(1), "Ann"], [number(2), "B" * 1021]])
    path = write_campaign(tmp_path, {"content": {"text": "Hi {{ name }}!"}, "recipients": [{"file": "people.csv"}]})
    with pytest.raises(CampaignError) as caught:
        plan(path)
    assert f"message for {number(2)} is 1025 characters after rendering; the API takes at most 1024" in (
        caught.value.message)


def test_the_ucs2_line_counts_messages_not_characters(tmp_path: Path) -> None:
    write_csv(tmp_path / "people.csv", ["msisdn", "name"], [[number(1), "Алёна Ёлкина ёж"], [number(2), "Bob"]])
    path = write_campaign(tmp_path, {"content": {"text": "Hi {{ name }}"}, "recipients": [{"file": "people.csv"}]})
    code, out = plan(path)
    assert code == ExitCode.OK
    assert "1 message uses UCS-2 because of 'ё' (U+0451)" in out
    assert "3 messages use" not in out


def test_plan_strict_fails_on_plan_warnings(tmp_path: Path) -> None:
    write_csv(tmp_path / "people.csv", ["msisdn", "name"], [[number(1), "Zoë’s"]])
    path = write_campaign(tmp_path, {"content": {"text": "Hi {{ name }}"}, "recipients": [{"file": "people.csv"}]})
    assert plan(path)[0] == ExitCode.OK
    code, out = plan(path, strict=True)
    assert code == ExitCode.INVALID
    assert "UCS-2 because of '’'" in out


@pytest.mark.parametrize("case", ["header-only", "everyone-excluded"])
def test_a_campaign_that_sends_to_nobody_warns_at_plan(tmp_path: Path, case: str) -> None:
    if case == "header-only":
        write_csv(tmp_path / "people.csv", ["msisdn", "name"], [])
        data = {"recipients": [{"file": "people.csv"}]}
        why = "0 recipient rows read, 0 duplicates, 0 excluded"
    else:
        write_csv(tmp_path / "people.csv", ["msisdn", "name"], [[number(1), "Ann"], [number(2), "Bob"]])
        data = {"recipients": [{"file": "people.csv"}], "exclude": ["people.csv"]}
        why = "2 recipient rows read, 0 duplicates, 2 excluded"
    path = write_campaign(tmp_path, {"content": {"text": "Hi"}, **data})
    code, out = plan(path)
    assert code == ExitCode.OK
    assert f"warning: this campaign sends to nobody ({why}) [no-recipients]" in out
    assert plan(path, strict=True)[0] == ExitCode.INVALID


def test_a_campaign_that_sends_to_nobody_warns_at_apply(tmp_path: Path) -> None:
    from .test_apply import apply

    write_csv(tmp_path / "people.csv", ["msisdn", "name"], [])
    path = write_campaign(tmp_path, {"content": {"text": "Hi"}, "recipients": [{"file": "people.csv"}]})
    run = apply(path, "http://127.0.0.1:9", tmp_path / "state.db")  # nothing to send: no request is made
    assert run.code == 0
    assert "this campaign sends to nobody" in run.err


# --- recipient files: every bad row, in one pass -------------------------------------------------


def plan_error(tmp_path: Path, csv_text: str | bytes, **extra: object) -> str:
    target = tmp_path / "people.csv"
    if isinstance(csv_text, bytes):
        target.write_bytes(csv_text)
    else:
        target.write_text(csv_text, encoding="utf-8")
    path = write_campaign(tmp_path, {"content": {"text": "Hi {{ name }}"}, "recipients": [{"file": "people.csv"}],
                                     **extra})
    with pytest.raises(CampaignError) as caught:
        plan(path)
    return caught.value.message


def test_three_bad_rows_are_all_reported(tmp_path: Path) -> None:
    message = plan_error(tmp_path, f"msisdn,name\n{number(1)},Ann\nnot-a-number,Bob\n{number(3)}\n,Dee\n"
                                   f"{number(5)},Eve\n")
    lines = [line.split("error: ", 1)[1] for line in message.splitlines()]
    assert [line.split(":", 1)[0].rsplit("/", 1)[-1] for line in message.splitlines()] == ["people.csv"] * 3
    assert [int(line.split(":")[1]) for line in message.splitlines()] == [3, 4, 5]
    assert lines[1] == "row has 1 cells but the header has 2 [recipient-row]"
    assert lines[2] == "missing number in column 'msisdn' [recipient-row]"


def test_many_bad_rows_are_capped_with_a_total(tmp_path: Path) -> None:
    rows = "".join(f"bad{i},X\n" for i in range(12_360))
    message = plan_error(tmp_path, f"msisdn,name\n{rows}")
    lines = message.splitlines()
    assert len(lines) == 21
    assert lines[-1] == "… and 12,340 more bad rows"
    assert lines[0].split(":")[1] == "2" and lines[19].split(":")[1] == "21"


def test_malformed_quoting_is_a_row_error_not_repaired(tmp_path: Path) -> None:
    message = plan_error(tmp_path, f'msisdn,name\n{number(1)},"Al"an"\n{number(2)},Bob\n')
    assert message.endswith("people.csv:2: error: malformed CSV: ',' expected after '\"' [recipient-row]")


def test_a_nul_byte_is_a_row_error(tmp_path: Path) -> None:
    message = plan_error(tmp_path, f"msisdn,name\n{number(1)},A\x00nn\n".encode())
    assert message.endswith("people.csv:2: error: NUL byte in column 'name' (a binary file?) [recipient-row]")


def test_a_semicolon_delimited_file_says_so(tmp_path: Path) -> None:
    text = f"msisdn;name\n{number(1)};Ann\n"
    message = plan_error(tmp_path, text)
    assert "people.csv: the file is semicolon-delimited" in message  # found by validate, before plan reads rows
    assert "save it with commas" in message
    assert any("semicolon-delimited" in d.message
               for d in validate_file(tmp_path / "campaign.yaml", now=NOW).errors)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"], ids=["with-bom", "without-bom"])
def test_a_utf16_file_says_so(tmp_path: Path, encoding: str) -> None:
    message = plan_error(tmp_path, f"msisdn,name\n{number(1)},Ann\n".encode(encoding))
    assert "people.csv: the file is UTF-16, not UTF-8: save it as UTF-8" in message


# --- correlation ids: one per recipient, across files and inline ------------------------------------


def test_the_same_correlation_id_on_two_csv_rows_is_an_error_with_both_locations(tmp_path: Path) -> None:
    message = plan_error(tmp_path, f"msisdn,name,correlationId\n{number(1)},Ann,c-1\n{number(2)},Bob,c-2\n"
                                   f"{number(3)},Cy,c-1\n")
    assert "people.csv:4: error: correlationId 'c-1' is also given to the recipient at " in message
    assert message.endswith("people.csv:2: receipts would be matched to the wrong person [recipient-row]")


def test_the_same_correlation_id_inline_and_in_a_csv_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "people.csv").write_text(f"msisdn,correlationId\n{number(2)},vip-1\n", encoding="utf-8")
    path = write_campaign(tmp_path, {"content": {"text": "Hi"}, "recipients": [
        {"msisdn": number(1), "correlationId": "vip-1"}, {"file": "people.csv"}]})
    with pytest.raises(CampaignError) as caught:
        plan(path)
    assert "people.csv:2: error: correlationId 'vip-1' is also given to the recipient at " in caught.value.message
    assert "campaign.yaml:" in caught.value.message
