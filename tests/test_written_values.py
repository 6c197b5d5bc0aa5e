"""Substitution values are one text everywhere: the text written in the file.

YAML 1.1 reads `0123` as 83 and `on` as True; such values are refused at validate with
the quoted form to write. A value that reads as typed (`1200`, `1.50`, `true`) is sent as
written: in `plan`, in `compile` bodies (a JSON string on the wire) and on the handset
(what the sandbox stored), while templates may still compare numbers and booleans.
Campaign files are written here as YAML text, never dumped, so every value is exactly
as a user would type it.
"""

from __future__ import annotations

import io
import json
import textwrap
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from runner.commands import ApplySettings, CompileSettings, Console, PlanSettings, run_apply, run_compile, run_plan
from runner.compile import Compiler
from runner.errors import CampaignError
from runner.model import Batch, Smartlink
from runner.recipients import iter_recipients
from runner.sandbox import Sandbox, SandboxSettings
from runner.validate import load_campaign, validate_file

from .helpers import NOW, number

HEADER = 'version: 1\nid: written\nfrom: "12025550100"\n'


def write_yaml(folder: Path, body: str) -> Path:
    path = folder / "campaign.yaml"
    path.write_text(HEADER + textwrap.dedent(body).lstrip("\n"), encoding="utf-8")
    return path


# --- the YAML 1.1 traps are errors, located, with the quoted form ------------------------

# (as written, rule, the reading named in the message)
TRAPS = [
    ("0123", "yaml-unquoted-number", "the number 83 (a leading 0 makes it octal)"),
    ("12:30", "yaml-unquoted-number", "the number 750 (digits with ':' are read in base 60)"),
    ("007", "yaml-unquoted-number", "the number 7 (a leading 0 makes it octal)"),
    ("1_000", "yaml-unquoted-number", "the number 1000 ('_' is dropped)"),
    ("0x1F", "yaml-unquoted-number", "the number 31 (0x is hexadecimal)"),
    ("+5", "yaml-unquoted-number", "the number 5 (its '+' is dropped)"),
    ("012.5", "yaml-unquoted-number", "the number 12.5 (its leading 0 is dropped)"),
    (".nan", "yaml-unquoted-number", "not-a-number, which JSON cannot carry"),
    (".inf", "yaml-unquoted-number", "infinity, which JSON cannot carry"),
    ("-.inf", "yaml-unquoted-number", "minus infinity, which JSON cannot carry"),
    ("on", "yaml-boolean-word", "the boolean true"),
    ("Off", "yaml-boolean-word", "the boolean false"),
    ("yes", "yaml-boolean-word", "the boolean true"),
    ("NO", "yaml-boolean-word", "the boolean false"),
]


@pytest.mark.parametrize(("written", "rule", "reading"), TRAPS)
def test_a_value_yaml_reads_otherwise_is_an_error_at_its_line_and_column(tmp_path: Path, written: str, rule: str,
                                                                          reading: str) -> None:
    path = write_yaml(tmp_path, f"""
        content:
          text: "Code {{{{ pin }}}}"
        substitutions:
          pin: {written}
        recipients:
          - msisdn: "{number(1)}"
        """)
    result = validate_file(path, now=NOW)
    assert [str(d) for d in result.errors] == [
        f"{path}:7:8: error: unquoted {written} is read by YAML 1.1 as {reading}, not as the text written [{rule}]"
        f' (hint: quote it to send the text as written: write "{written}"'
        + (" (write true or false for a boolean))" if rule == "yaml-boolean-word" else ")")
    ]
    assert result.campaign is None


def test_every_substitution_layer_is_checked_and_every_trap_reported(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text(f"msisdn\n{number(2)}\n", encoding="utf-8")
    path = write_yaml(tmp_path, f"""
        content:
          text: "{{{{ a }}}} {{{{ b }}}} {{{{ c }}}}"
        substitutions: {{a: 0123, b: "0123", c: x}}
        recipients:
          - msisdn: "{number(1)}"
            substitutions:
              b: on
          - file: a.csv
            substitutions: {{c: 12:30}}
        """)
    errors = [(str(d.location), d.rule) for d in validate_file(path, now=NOW).errors]
    assert errors == [(f"{path}:6:20", "yaml-unquoted-number"), (f"{path}:10:10", "yaml-boolean-word"),
                      (f"{path}:12:24", "yaml-unquoted-number")]


@pytest.mark.parametrize("written", ["1200", "-5", "0", "1.50", "0.5", "1.0e+3", "true", "false", "True", "FALSE",
                                     '"007"', "'on'", "y", "0o17"])
def test_values_that_read_as_typed_are_not_errors(tmp_path: Path, written: str) -> None:
    """Not refused, and sent as written. (`y` and `0o17` are strings to PyYAML's YAML 1.1
    reader already; these cases guard against a check that refuses too much.)"""
    path = write_yaml(tmp_path, f"""
        content:
          text: "v {{{{ v }}}}"
        substitutions:
          v: {written}
        recipients:
          - msisdn: "{number(1)}"
        """)
    result = validate_file(path, now=NOW)
    assert result.diagnostics == ()
    assert result.campaign is not None
    assert [m.text for m in Compiler(result.campaign).iter_messages()] == ["v " + written.strip("'\"")]


# --- one text in plan, compile and on the handset ----------------------------------------

TEXT = "{{ flag }} {{ price }} {{ points }} {{ code }} {{ vip }}"


def _campaign(folder: Path, personalisation: str) -> Path:
    (folder / "a.jsonl").write_text(
        f'{{"msisdn": "{number(3)}", "price": 2.50, "flag": false, "points": 15}}\n', encoding="utf-8")
    return write_yaml(folder, f"""
        personalisation: {personalisation}
        content:
          text: "{TEXT}"
        substitutions:
          flag: true
          price: 1.50
          points: 1200
          code: "007"
          vip: False
        recipients:
          - msisdn: "{number(1)}"
          - msisdn: "{number(2)}"
            substitutions: {{price: 10.0, vip: TRUE}}
          - file: a.jsonl
            substitutions: {{code: 0, points: 3.10}}
        throughput: {{tps: 100}}
        """)


EXPECTED = {
    number(1): "true 1.50 1200 007 False",
    number(2): "true 10.0 1200 007 TRUE",
    number(3): "false 2.50 15 0 False",
}


def _plan_texts(path: Path) -> dict[str, str]:
    out = io.StringIO()
    run_plan(PlanSettings(path, show_all=True, output_format="json"), now=NOW, out=out)
    return {m["msisdn"]: m["text"] for m in json.loads(out.getvalue())["messages"]}


def _compiled(path: Path) -> list[dict[str, Any]]:
    out = io.StringIO()
    run_compile(CompileSettings(path), now=NOW, out=out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _received(path: Path, folder: Path) -> dict[str, str]:
    with Sandbox(SandboxSettings(tps=100)) as sandbox:
        out, err = io.StringIO(), io.StringIO()
        console = Console(out=out, err=err, interactive=False, confirm=lambda q: False,
                          environ={"WEBEX_CONNECT_SERVICE_KEY": "k"})
        code = run_apply(ApplySettings(path, state=folder / "state.db", yes=True, base_url=sandbox.url),
                         now=datetime.now(timezone.utc), console=console)
        assert code == 0, out.getvalue() + err.getvalue()
        return {m.msisdn: m.text for m in sandbox.messages()}


def test_local_values_render_as_written_in_plan_compile_and_on_the_handset(tmp_path: Path) -> None:
    path = _campaign(tmp_path, "local")
    assert _plan_texts(path) == EXPECTED
    bodies = _compiled(path)
    assert {b["to"][0]["msisdn"][0]: b["content"]["text"] for b in bodies} == EXPECTED
    assert _received(path, tmp_path) == EXPECTED


def test_platform_values_go_out_as_json_strings_of_the_text_written(tmp_path: Path) -> None:
    path = _campaign(tmp_path, "platform")
    assert _plan_texts(path) == EXPECTED
    [body] = _compiled(path)
    assert body["content"]["text"] == "$(flag) $(price) $(points) $(code) $(vip)"
    assert body["substitutions"] == {"code": "007", "flag": "true", "points": "1200", "price": "1.50", "vip": "False"}
    own = {entry["msisdn"][0]: entry.get("substitutions") for entry in body["to"]}
    assert own == {number(1): None, number(2): {"price": "10.0", "vip": "TRUE"},
                   number(3): {"code": "0", "flag": "false", "points": "15", "price": "2.50"}}
    assert _received(path, tmp_path) == EXPECTED


def test_a_template_campaign_sends_its_values_as_strings(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, f"""
        template: {{id: tpl-1}}
        substitutions: {{points: 1200, price: 1.50, flag: true}}
        recipients:
          - msisdn: "{number(1)}"
            substitutions: {{points: 7}}
        """)
    [body] = _compiled(path)
    assert body["substitutions"] == {"points": "1200", "price": "1.50", "flag": "true"}
    assert body["to"][0]["substitutions"] == {"points": "7"}


def test_templates_still_compare_numbers_and_test_booleans(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, f"""
        content:
          text: "{{% if points > 1000 %}}gold{{% else %}}std{{% endif %}} {{% if vip %}}VIP{{% else %}}-{{% endif %}} {{{{ points }}}} {{{{ price * 2 }}}} {{{{ vip }}}}"
        substitutions: {{points: 1200, vip: false, price: 1.50}}
        recipients:
          - msisdn: "{number(1)}"
          - msisdn: "{number(2)}"
            substitutions: {{points: 900, vip: true}}
        """)
    assert _plan_texts(path) == {number(1): "gold - 1200 3.0 false", number(2): "std VIP 900 3.0 true"}


def test_jinja_tests_still_see_booleans(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, f"""
        content:
          text: "{{{{ vip }}}}: {{{{ vip is boolean }}}} {{{{ vip is true }}}} {{{{ vip is false }}}} {{{{ n is boolean }}}} {{{{ n is number }}}}"
        substitutions: {{vip: true, n: 1}}
        recipients:
          - msisdn: "{number(1)}"
          - msisdn: "{number(2)}"
            substitutions: {{vip: false}}
        """)
    assert _plan_texts(path) == {number(1): "true: True True False False True",
                                 number(2): "false: True False True False True"}


# --- JSON Lines ------------------------------------------------------------------------


def test_a_duplicate_key_in_a_json_lines_row_is_a_row_error(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(f'{{"msisdn": "{number(1)}", "name": "Ann"}}\n'
                                      f'{{"msisdn": "{number(2)}", "name": "Bob", "name": "Rob"}}\n',
                                      encoding="utf-8")
    path = write_yaml(tmp_path, """
        content:
          text: "Hi {{ name }}"
        recipients:
          - file: a.jsonl
        """)
    campaign, _ = load_campaign(path, now=NOW)
    with pytest.raises(CampaignError) as raised:
        list(iter_recipients(campaign))
    assert f"{tmp_path / 'a.jsonl'}:2: error: duplicate key 'name' in the object" in raised.value.message


def test_json_lines_numbers_keep_the_text_they_were_written_with(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(f'{{"msisdn": "{number(1)}", "price": 1.50, "big": 1e3, "ok": true, "n": 12}}\n'
                                      f'{{"msisdn": "{number(2)}", "price": 0.10, "big": -0, "ok": false, "n": -0}}\n',
                                      encoding="utf-8")
    path = write_yaml(tmp_path, """
        personalisation: platform
        content:
          text: "{{ price }} {{ big }} {{ ok }} {{ n }}"
        recipients:
          - file: a.jsonl
        """)
    assert _plan_texts(path) == {number(1): "1.50 1e3 true 12", number(2): "0.10 -0 false -0"}
    [body] = _compiled(path)
    assert [e["substitutions"] for e in body["to"]] == [{"big": "1e3", "n": "12", "ok": "true", "price": "1.50"},
                                                        {"big": "-0", "n": "-0", "ok": "false", "price": "0.10"}]


# --- NaN never reaches JSON --------------------------------------------------------------


def test_a_body_that_is_not_json_fails_loudly(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, f"""
        content:
          text: "hi"
        recipients:
          - msisdn: "{number(1)}"
        """)
    campaign, _ = load_campaign(path, now=NOW)
    odd = replace(campaign, smartlinks=(Smartlink("1", float("nan")),))  # type: ignore[arg-type]
    with pytest.raises(CampaignError, match=r"cannot be written as JSON.*\[wire-not-json\]"):
        list(Compiler(odd).iter_batches())
    with pytest.raises(CampaignError, match=r"\[wire-not-json\]"):
        Batch("k", 0, "v2", {"validity": float("inf")}, ()).json()
