"""Segment counting at the exact boundaries where billing changes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.model import Encoding, SegmentCount
from runner.segments import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    count,
    gsm7_replacement,
    is_gsm7,
    non_gsm7,
)

GSM = Encoding.GSM7
UCS = Encoding.UCS2
EMOJI = "\U0001f600"  # 😀, outside the BMP: a surrogate pair in UTF-16


def reference_parts(text: str, encoding: Encoding) -> int:
    """The split done the slow, obvious way: one character at a time."""
    if encoding is GSM:
        costs = [2 if c in GSM7_EXTENSION else 1 for c in text]
        single, part = 160, 153
    else:
        costs = [2 if ord(c) > 0xFFFF else 1 for c in text]
        single, part = 70, 67
    if sum(costs) <= single:
        return 1
    parts, used = 1, 0
    for cost in costs:
        if used + cost > part:
            parts, used = parts + 1, 0
        used += cost
    return parts


# --- the character sets ----------------------------------------------------------


def test_basic_set_is_the_128_table_minus_escape() -> None:
    assert len(GSM7_BASIC) == 127
    assert "\x1b" not in GSM7_BASIC
    assert {"\n", "\r", "@", "£", "¤", "§", "Δ", "Ξ", "ß", "¿", "à"} <= GSM7_BASIC


def test_extension_set() -> None:
    assert GSM7_EXTENSION == frozenset({"^", "{", "}", "\\", "[", "~", "]", "|", "€", "\x0c"})
    assert not GSM7_BASIC & GSM7_EXTENSION


def test_regexes_agree_with_the_sets_for_every_bmp_char() -> None:
    gsm = GSM7_BASIC | GSM7_EXTENSION
    wrong = [c for c in map(chr, range(0x10000)) if is_gsm7(c) != (c in gsm)]
    assert wrong == []


@pytest.mark.parametrize("char", ["é", "ü", "Ä", "Ç", "è", "ñ", "Ø", "Å", "\n", "\r"])
def test_gsm_basic_accented(char: str) -> None:
    assert is_gsm7(char)
    assert count(char * 160) == SegmentCount(GSM, 160, 1)


@pytest.mark.parametrize("char", ["á", "ç", "ł", "`", "\t", "Ł", "ő", "\x1b"])
def test_not_gsm(char: str) -> None:
    assert not is_gsm7(char)
    assert count(char) == SegmentCount(UCS, 1, 1)


# --- GSM-7 boundaries ------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (153, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_gsm_boundaries(length: int, segments: int) -> None:
    assert count("a" * length) == SegmentCount(GSM, length, segments)


def test_empty_text_is_one_segment() -> None:
    assert count("") == SegmentCount(GSM, 0, 1)
    assert count("", UCS) == SegmentCount(UCS, 0, 1)


def test_extension_chars_cost_two_septets() -> None:
    assert count("€" * 80) == SegmentCount(GSM, 160, 1)
    assert count("€" * 81) == SegmentCount(GSM, 162, 2)
    assert count("a" * 158 + "{") == SegmentCount(GSM, 160, 1)
    assert count("a" * 159 + "}") == SegmentCount(GSM, 161, 2)
    assert count("[]~|^\\\x0c") == SegmentCount(GSM, 14, 1)


def test_extension_pair_straddling_the_part_boundary_moves_to_next_part() -> None:
    text = "a" * 152 + "€" + "a" * 152  # 306 septets: ceil(306 / 153) would say 2
    assert count(text) == SegmentCount(GSM, 306, 3)
    # the same septets with the pair not straddling: 2 parts
    assert count("a" * 151 + "€" + "a" * 153) == SegmentCount(GSM, 306, 2)


def test_all_extension_long_text() -> None:
    # 153 is odd: each part holds 76 euros (152 septets), so 77 euros = 154 -> 2 parts,
    # and 153 euros (306 septets) need 3 parts, not ceil(306 / 153) = 2.
    assert count("€" * 153) == SegmentCount(GSM, 306, 3)
    assert count("€" * 152) == SegmentCount(GSM, 304, 2)


def test_lf_and_cr_are_one_septet_each() -> None:
    assert count("Hi\r\nthere") == SegmentCount(GSM, 9, 1)
    assert count("\n" * 161) == SegmentCount(GSM, 161, 2)


# --- UCS-2 boundaries ------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)],
)
def test_ucs2_boundaries(length: int, segments: int) -> None:
    assert count("ç" * length) == SegmentCount(UCS, length, segments)


def test_emoji_counts_two_units() -> None:
    assert count(EMOJI) == SegmentCount(UCS, 2, 1)
    assert count(EMOJI * 35) == SegmentCount(UCS, 70, 1)
    assert count(EMOJI * 36) == SegmentCount(UCS, 72, 2)


def test_emoji_is_not_split_across_parts() -> None:
    # 67 is odd: a part holds 33 emoji (66 units), so 67 emoji (134 units) need 3 parts
    assert count(EMOJI * 67) == SegmentCount(UCS, 134, 3)
    assert count(EMOJI * 66) == SegmentCount(UCS, 132, 2)
    text = "a" * 66 + EMOJI * 34  # 134 units; ceil(134 / 67) would say 2
    assert count(text) == SegmentCount(UCS, 134, 3)
    assert count("a" * 67 + EMOJI * 33 + "a") == SegmentCount(UCS, 134, 2)


def test_mixed_emoji_and_text() -> None:
    text = "Happy birthday, Anna! " + EMOJI + " Enjoy 10% off today " + "\U0001f382"
    assert len(text) == 45
    assert count(text) == SegmentCount(UCS, 47, 1)
    # one emoji turns a 100-char GSM text (1 GSM segment) into 2 UCS-2 segments
    assert count("a" * 100) == SegmentCount(GSM, 100, 1)
    assert count("a" * 100 + EMOJI) == SegmentCount(UCS, 102, 2)


def test_zwj_sequence_counts_every_code_unit() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # 👨‍👩‍👧
    assert count(family) == SegmentCount(UCS, 8, 1)


def test_extension_char_in_ucs2_text_is_one_unit() -> None:
    assert count("€" * 70 + "ç") == SegmentCount(UCS, 71, 2)


# --- forced encodings ------------------------------------------------------------


def test_forced_gsm_on_gsm_text() -> None:
    assert count("a€", GSM) == SegmentCount(GSM, 3, 1)


def test_forced_gsm_on_non_gsm_text_raises() -> None:
    with pytest.raises(ValueError, match=r"'ç' \(U\+00E7\) at index 3"):
        count("abcçd", GSM)
    with pytest.raises(ValueError, match="U\\+1F600"):
        count("€" + EMOJI, GSM)


def test_forced_ucs2_counts_gsm_text_in_code_units() -> None:
    assert count("a" * 71, UCS) == SegmentCount(UCS, 71, 2)
    assert count("€" * 70, UCS) == SegmentCount(UCS, 70, 1)
    assert count("€" * 70) == SegmentCount(GSM, 140, 1)


# --- non_gsm7 and replacements ---------------------------------------------------


def test_non_gsm7_indices() -> None:
    assert non_gsm7("It’s “great” — ça va " + EMOJI) == [
        (2, "’"),
        (5, "“"),
        (11, "”"),
        (13, "—"),
        (15, "ç"),
        (21, EMOJI),
    ]
    assert non_gsm7("Plain {GSM} text €5\r\n") == []
    assert non_gsm7("") == []


@pytest.mark.parametrize(
    ("char", "replacement"),
    [
        ("’", "'"),
        ("‘", "'"),
        ("“", '"'),
        ("”", '"'),
        ("–", "-"),
        ("—", "-"),
        ("\u2212", "-"),
        ("…", "..."),
        ("\u00a0", " "),
        ("\u2009", " "),
        ("•", "-"),
        ("\u200b", ""),
    ],
)
def test_gsm7_replacement(char: str, replacement: str) -> None:
    assert gsm7_replacement(char) == replacement
    assert is_gsm7(replacement)


@pytest.mark.parametrize("char", [EMOJI, "ç", "ł", "a", "€"])
def test_no_replacement(char: str) -> None:
    assert gsm7_replacement(char) is None


def test_replacing_makes_the_text_gsm() -> None:
    text = "It’s “great” – isn’t it…"
    fixed = "".join(gsm7_replacement(c) or c for c in text)
    assert fixed == "It's \"great\" - isn't it..."
    assert count(text) == SegmentCount(UCS, 24, 1)
    assert count(fixed) == SegmentCount(GSM, 26, 1)


# --- properties ------------------------------------------------------------------

_gsm_alphabet = st.sampled_from(sorted(GSM7_BASIC | GSM7_EXTENSION))
_texts = st.one_of(
    st.text(_gsm_alphabet, max_size=700),
    st.text(st.sampled_from(["a", "€", "{", "ç", EMOJI, "\n"]), max_size=500),
    st.text(max_size=400),
)


@settings(max_examples=400, deadline=None)
@given(_texts)
def test_counts_are_consistent(text: str) -> None:
    result = count(text)
    if result.encoding is GSM:
        assert is_gsm7(text)
        single, part = 160, 153
        assert result.units == len(text) + sum(c in GSM7_EXTENSION for c in text)
    else:
        assert non_gsm7(text) != []
        single, part = 70, 67
        assert result.units == len(text.encode("utf-16-le", "surrogatepass")) // 2
    assert (result.segments == 1) == (result.units <= single)
    assert result.segments * part >= result.units
    assert result.segments == reference_parts(text, result.encoding)


@settings(max_examples=200, deadline=None)
@given(_texts)
def test_forced_ucs2_matches_reference(text: str) -> None:
    result = count(text, UCS)
    assert result.encoding is UCS
    assert result.segments == reference_parts(text, UCS)
