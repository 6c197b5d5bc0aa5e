"""Fuzzing the whole pipeline in-process: whatever bytes a campaign file, a CSV or a
JSON Lines file holds, validate, plan and compile end in a report or in the project's
one error class (`CampaignError`), never in any other exception, which the CLI would
report as a bug (exit 70).

Output goes to a strict UTF-8 text stream, as stdout is: a lone surrogate that reached
a report would fail there, as it would for a user.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.commands import (
    CompileSettings,
    PlanSettings,
    ValidateSettings,
    run_compile,
    run_plan,
    run_validate,
)
from runner.errors import CampaignError
from tests.helpers import NOW

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _stdout() -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", newline="\n")


def run_pipeline(campaign: Path) -> None:
    """Every command over one campaign; only CampaignError may escape any of them."""
    for output_format in ("text", "json", "github", "markdown"):
        out = _stdout()
        try:
            run_validate(ValidateSettings((campaign,), output_format), now=NOW, out=out)
        except CampaignError:
            pass
        out.flush()
        # the loader turns its own crashes into a diagnostic rather than raising: that is a bug too
        assert b"load-internal-error" not in out.buffer.getvalue()  # type: ignore[attr-defined]
    for output_format in ("text", "json", "markdown"):
        try:
            run_plan(PlanSettings(campaign, output_format=output_format, show_all=True), now=NOW, out=_stdout())
        except CampaignError:
            pass
    for api in ("v2", "v1"):
        try:
            run_compile(CompileSettings(campaign, None, api), now=NOW, out=_stdout())  # type: ignore[arg-type]
        except CampaignError:
            pass
        try:
            run_compile(CompileSettings(campaign, campaign.parent / "out.jsonl", api),  # type: ignore[arg-type]
                        now=NOW, out=_stdout())
        except CampaignError:
            pass


def _in_folder(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        for name, content in files.items():
            (Path(folder) / name).write_bytes(content)
        run_pipeline(Path(folder) / "campaign.yaml")


CAMPAIGN_WITH_FILES = yaml.safe_dump({
    "version": 1, "id": "fuzz", "from": "12025550100",
    "content": {"text": "Hi {{ name }} {{ note | default('') }}"},
    "substitutions": {"name": "there"},
    "recipients": [{"file": "people.csv"}, {"file": "people.jsonl"}, {"msisdn": "+447911000001"}],
    "exclude": ["optouts.csv"],
}).encode()

YAML_PIECES = [b"version: 1\n", b"id: fuzz\n", b'from: "12025550100"\n', b"content: {text: 'Hi {{ name }}'}\n",
               b"recipients:\n", b'  - msisdn: "+447911000001"\n', b"  - file: people.csv\n", b"&a ", b"*a",
               b"<<: ", b"[", b"]", b"{", b"}", b"- ", b": ", b"\t", b"\\ud83d", b'"\\ud83d"', b"!!binary ",
               b"---\n", b"\xff", b"\x00", b"\xef\xbb\xbf", b"{{ ", b" }}", b"{% for x in y %}", b"'", b'"', b"\n"]


@FUZZ
@given(content=st.binary(max_size=400))
def test_arbitrary_bytes_as_the_campaign_file(content: bytes) -> None:
    _in_folder({"campaign.yaml": content})


@FUZZ
@given(pieces=st.lists(st.sampled_from(YAML_PIECES), max_size=30))
def test_yaml_like_campaign_files(pieces: list[bytes]) -> None:
    _in_folder({"campaign.yaml": b"".join(pieces), "people.csv": b"msisdn,name\n+447911000002,Bo\n"})


@FUZZ
@given(csv=st.binary(max_size=300), jsonl=st.binary(max_size=300), optouts=st.binary(max_size=100))
def test_arbitrary_bytes_as_recipient_files(csv: bytes, jsonl: bytes, optouts: bytes) -> None:
    _in_folder({"campaign.yaml": CAMPAIGN_WITH_FILES, "people.csv": csv, "people.jsonl": jsonl,
                "optouts.csv": optouts})


ROW_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | ROW_TEXT
                           | st.sampled_from(["+447911000003", "\ud83d", "x\udc00"]),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ROW_TEXT, inner, max_size=3),
                           max_leaves=8)


@FUZZ
@given(rows=st.lists(st.dictionaries(st.sampled_from(["msisdn", "name", "note", "correlationId", "\udc00"]),
                                     JSON_VALUES, max_size=4), max_size=5),
       csv_rows=st.lists(st.lists(ROW_TEXT, min_size=1, max_size=4), max_size=5))
def test_row_shaped_recipient_files(rows: list[dict[str, Any]], csv_rows: list[list[str]]) -> None:
    import json

    jsonl = "\n".join(json.dumps(row) for row in rows).encode()  # ensure_ascii: surrogates as \ud83d escapes
    csv = "\n".join(["msisdn,name,note"] + [",".join(cells) for cells in csv_rows]).encode("utf-8")
    _in_folder({"campaign.yaml": CAMPAIGN_WITH_FILES, "people.csv": csv, "people.jsonl": jsonl,
                "optouts.csv": b"msisdn\n+447911000009\n"})


FIELD_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | ROW_TEXT
                            | st.sampled_from(["{{ name }}", "{{", "{% if %}", "+447911000004", "2026-11-24T09:00:00Z",
                                               "https://x.example", "sk-abc", "{{ name | nosuchfilter }}"]),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ROW_TEXT, inner, max_size=3),
                            max_leaves=10)
KEYS = ["version", "id", "from", "content", "template", "substitutions", "recipients", "exclude", "sendAt",
        "expireAt", "validity", "options", "requestedReceipts", "notifyUrl", "callbackData", "contactPolicy",
        "smartlinks", "throughput", "serviceKey"]


@FUZZ
@given(data=st.dictionaries(st.sampled_from(KEYS), FIELD_VALUES, max_size=8),
       text=st.sampled_from(["Hi {{ name }}", "{{ smartlink_a }}", "{{ 1/0 }}", "{{ name[0] }}", "x" * 1100]))
def test_campaigns_with_arbitrary_field_values(data: dict[str, Any], text: str) -> None:
    document = {"version": 1, "id": "fuzz", "from": "12025550100", "content": {"text": text},
                "recipients": [{"msisdn": "+447911000001", "substitutions": {"name": "Ada"}}]}
    document.update(data)
    _in_folder({"campaign.yaml": yaml.safe_dump(document, allow_unicode=True).encode("utf-8"),
                "people.csv": b"msisdn,name\n+447911000002,Bo\n"})
