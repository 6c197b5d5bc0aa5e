"""Validation against real files: the broken corpus, the shipped examples, the schema."""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import jsonschema
import pytest

from runner.model import Severity
from runner.validate import schema_text, validate_file, validate_paths

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
ROOT = Path(__file__).resolve().parent.parent
BROKEN = Path(__file__).parent / "data" / "broken"
EXPECT = re.compile(r"^# expect: (\d+):(\d+) (\S+)$", re.MULTILINE)


def expected_errors(path: Path) -> set[tuple[int, int, str]]:
    return {(int(l), int(c), rule) for l, c, rule in EXPECT.findall(path.read_text(encoding="utf-8"))}


@pytest.mark.parametrize("path", sorted(BROKEN.glob("*.yaml")), ids=lambda p: p.stem)
def test_broken_corpus_reports_exact_location_and_rule(path: Path) -> None:
    expected = expected_errors(path)
    assert expected, f"{path.name} has no '# expect:' line"
    result = validate_file(path, now=NOW)
    found = {(d.location.line, d.location.col, d.rule) for d in result.errors}
    assert found == expected, [str(d) for d in result.diagnostics]
    assert result.campaign is None
    for d in result.errors:
        assert d.location.file == str(path)


def test_examples_validate() -> None:
    result = validate_paths([ROOT / "campaigns"], now=NOW)
    assert [str(d) for d in result.diagnostics] == []
    assert len(result.files) == 4
    assert all(f.campaign is not None for f in result.files)


def test_schema_is_valid_draft_2020_12() -> None:
    schema = json.loads(schema_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_schema_property_has_a_description() -> None:
    schema = json.loads(schema_text())

    def walk(node: object, path: str) -> list[str]:
        missing: list[str] = []
        if isinstance(node, dict):
            for name, sub in (node.get("properties") or {}).items():
                if isinstance(sub, dict) and "description" not in sub and "$ref" not in sub:
                    missing.append(f"{path}.{name}")
            for key, sub in node.items():
                missing += walk(sub, f"{path}.{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                missing += walk(sub, f"{path}[{i}]")
        return missing

    assert walk(schema, "$") == []


def test_schema_file_in_repo_is_the_one_loaded() -> None:
    assert (ROOT / "schemas" / "campaign.schema.json").read_text(encoding="utf-8") == schema_text()


def test_did_you_mean_for_misspelt_key() -> None:
    result = validate_file(BROKEN / "misspelt-key.yaml", now=NOW)
    assert [d.message for d in result.errors] == ["unknown key 'contnet'; did you mean 'content'?"]


def test_one_of_failure_shows_best_match_not_cascade() -> None:
    result = validate_file(BROKEN / "bad-recipient-shape.yaml", now=NOW)
    assert [d.message for d in result.errors] == ["unknown key 'substitution'; did you mean 'substitutions'?"]


def test_unquoted_number_hint_quotes_the_source_text() -> None:
    [error] = validate_file(BROKEN / "unquoted-number.yaml", now=NOW).errors
    assert error.hint == 'quote it: "+447911123456"'
    assert "leading '+' or '0' lost" in error.message


def test_past_send_at_is_a_warning_and_strict_makes_it_an_error(tmp_path: Path) -> None:
    campaign = tmp_path / "old.yaml"
    campaign.write_text(
        'version: 1\nid: old\nfrom: "12025550100"\ncontent: {text: hi}\n'
        'recipients: [{msisdn: "+447911123456"}]\nsendAt: "2026-11-01T09:00:00Z"\n',
        encoding="utf-8",
    )
    relaxed = validate_file(campaign, now=NOW)
    assert [(d.severity, d.rule, d.location.line) for d in relaxed.diagnostics] == [
        (Severity.WARNING, "schedule-past", 6)
    ]
    assert relaxed.campaign is not None
    strict = validate_file(campaign, now=NOW, strict=True)  # a sent campaign stays in git: not an error
    assert [(d.severity, d.rule) for d in strict.diagnostics] == [(Severity.WARNING, "schedule-past")]
    assert strict.campaign is not None
    # other warnings still become errors
    campaign.write_text(campaign.read_text(encoding="utf-8").replace("content: {text: hi}", 'content: {text: "hi\\e"}'),
                        encoding="utf-8")
    assert [(d.severity, d.rule) for d in validate_file(campaign, now=NOW, strict=True).diagnostics] == [
        (Severity.ERROR, "control-character"), (Severity.WARNING, "schedule-past")]


def test_errors_are_sorted_by_position() -> None:
    result = validate_file(BROKEN / "multiple-errors.yaml", now=NOW)
    lines = [d.location.line for d in result.errors]
    assert lines == sorted(lines) and len(lines) == 3


def test_directory_expansion_skips_non_yaml_and_hidden(tmp_path: Path) -> None:
    shutil.copy(ROOT / "campaigns" / "welcome.yaml", tmp_path / "a.yaml")
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "b.yaml").write_text("garbage: [", encoding="utf-8")
    result = validate_paths([tmp_path], now=NOW)
    assert [f.display_name for f in result.files] == [str(tmp_path / "a.yaml")]


def test_typed_campaign_from_scheduled_example() -> None:
    result = validate_file(ROOT / "campaigns" / "black-friday.yaml", now=NOW)
    campaign = result.campaign
    assert campaign is not None
    assert campaign.validity_seconds == 3600
    assert campaign.send_at == datetime(2026, 11, 27, 9, 0, tzinfo=timezone.utc)
    assert campaign.options is not None and campaign.options.track_clicks
    assert [s.smartlink_id for s in campaign.smartlinks] == ["4371"]
    assert campaign.tps == 20
