"""Fuzzing the loader: no input makes it raise, and what PyYAML dumps loads back unchanged."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.load import load_text
from runner.model import Severity, SourceDocument

PATH = Path("fuzz.yaml")
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters that steer the YAML scanner into its less travelled paths.
YAML_ALPHABET = st.sampled_from(list(":-?[]{},#&*!|>'\"%@`~ \t\n\r.0123456789abcxyz+eE\\\x85\u2028\ufeff\x00é"))


# The line breaks YAML counts (and the loader's positions follow).
YAML_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def check_result(result: tuple[SourceDocument | None, list[Any]], source: str | bytes) -> None:
    document, diagnostics = result
    assert document is not None or diagnostics, "no document must come with a reason"
    text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
    lines = YAML_BREAK.split(text.removeprefix("\ufeff"))
    for diagnostic in diagnostics:
        assert diagnostic.severity is Severity.ERROR
        assert diagnostic.location.file == "fuzz.yaml"
        # the whole file (0:0), or a place inside the text: a line that exists (or the end of
        # stream just after it) and a column at most one past that line's end
        line, col = diagnostic.location.line, diagnostic.location.col
        if line == 0:
            assert col == 0, diagnostic
        else:
            assert 1 <= line <= len(lines) + 1, (diagnostic, len(lines))
            assert 1 <= col <= (len(lines[line - 1]) if line <= len(lines) else 0) + 1, diagnostic
        assert "\n" not in diagnostic.message
        assert diagnostic.rule != "load-internal-error", diagnostic.message
    if document is not None:
        assert isinstance(document.data, dict)
        assert_positions_cover(document)


def assert_positions_cover(document: SourceDocument) -> None:
    def walk(value: Any, path: tuple[str | int, ...]) -> None:
        assert path in document.value_positions, path
        position = document.value_positions[path]
        assert position.line >= 1 and position.col >= 1
        if isinstance(value, dict):
            for key, item in value.items():
                assert isinstance(key, str)
                assert (*path, key) in document.key_positions, (*path, key)
                walk(item, (*path, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, (*path, index))

    walk(document.data, ())


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    check_result(load_text(data, PATH), data)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(text: str) -> None:
    check_result(load_text(text, PATH), text)


@FUZZ
@given(st.text(YAML_ALPHABET, max_size=200))
def test_yaml_like_text_never_raises(text: str) -> None:
    check_result(load_text(text, PATH), text)
    check_result(load_text(text.encode("utf-8", "surrogatepass"), PATH), text.encode("utf-8", "surrogatepass"))


# PyYAML's emitter mangles NEL and the Unicode line separators in keys; not our bug.
TEXT = st.text(st.characters(exclude_characters="\x85\u2028\u2029", exclude_categories=["Cs"]), max_size=20)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | TEXT
    | st.sampled_from(["yes", "no", "on", "off", "~", "null", "+447911000123", "0x1F", "1:30", "2026-11-25T09:00:00Z", "<<", "="])
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=25,
)
DOCUMENTS = st.dictionaries(TEXT, VALUES, max_size=6)


@FUZZ
@given(DOCUMENTS, st.booleans(), st.sampled_from([None, True, False]), st.booleans())
def test_dumped_documents_round_trip(data: dict[str, Any], unicode: bool, flow: bool | None, crlf: bool) -> None:
    text = yaml.safe_dump(data, allow_unicode=unicode, default_flow_style=flow, line_break="\r\n" if crlf else None)
    document, diagnostics = load_text(text, PATH)
    assert diagnostics == []
    assert document is not None
    assert document.data == data
    assert_positions_cover(document)


@FUZZ
@given(DOCUMENTS, VALUES)
def test_shared_values_dump_as_aliases_and_round_trip(data: dict[str, Any], shared: Any) -> None:
    """safe_dump writes an object seen twice as an anchor and aliases."""
    data = {**data, "first": shared, "again": [shared, {"inner": shared}]}
    text = yaml.safe_dump(data)
    document, diagnostics = load_text(text.encode("utf-8"), PATH)
    assert diagnostics == []
    assert document is not None
    assert document.data == data
    assert_positions_cover(document)
