"""Phone numbers: normalising to E.164 (fast path against libphonenumber), and the
compact set of numbers a run has seen."""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneMetadata

from runner import msisdn as M
from runner.msisdn import NumberSet, normalise_msisdn


# --- numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+447400123456", "+447400123456"),
        ("+44 7400 123456", "+447400123456"),
        ("0044 7400 123456", "+447400123456"),
        ("+44.7400.123.456", "+447400123456"),
        ("0044 (0)7400 123456", "+447400123456"),  # trunk 0 dropped by libphonenumber
        ("+1 (415) 555-2671", "+14155552671"),
        ("00 33 6-12-34-56-78", "+33612345678"),
        ("  +390612345678\t", "+390612345678"),  # Italian leading zero is kept
        ("07400 123456", None),
        ("447400123456", None),
        ("+4479", None),
        ("+44 7400 1234567", None),
        ("+1 800 FLOWERS", None),
        ("+999123456", None),
        ("++447400123456", None),
        ("+", None),
        ("", None),
    ],
)
def test_normalise_msisdn(raw: str, expected: str | None) -> None:
    assert normalise_msisdn(raw) == expected


def _slow_is_valid(number: str) -> bool:
    try:
        return bool(phonenumbers.is_valid_number(phonenumbers.parse(number, None)))
    except phonenumbers.NumberParseException:
        return False


def _slow_e164(number: str) -> str | None:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def _random_numbers(count: int, seed: int) -> list[str]:
    """Mostly example numbers of every type and region with their tail randomised (so
    about three in four are valid), plus some digits of random length."""
    rng = random.Random(seed)
    codes = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    examples: dict[int, list[str]] = {}
    for code in codes:
        found: list[str] = []
        for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[code]:
            metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, region)
            for name in M._NUMBER_TYPES:
                desc: Any = getattr(metadata, name, None) if metadata is not None else None
                if desc is not None and desc.example_number:
                    found.append(desc.example_number)
        examples[code] = found
    numbers = []
    for _ in range(count):
        code = rng.choice(codes)
        if examples[code] and rng.random() < 0.8:
            example = rng.choice(examples[code])
            keep = len(example) - rng.randint(1, min(len(example), 6))
            national = example[:keep] + "".join(rng.choice("0123456789") for _ in range(len(example) - keep))
        else:
            national = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 13)))
        numbers.append(f"+{code}{national}")
    return numbers


def test_fast_path_agrees_with_phonenumbers_on_random_sample() -> None:
    numbers = _random_numbers(4000, seed=20240601)
    assert len({n[1:3] for n in numbers}) > 50  # many country codes
    slow = [_slow_is_valid(n) for n in numbers]
    assert 0.5 < sum(slow) / len(numbers) < 0.95  # both verdicts well represented
    agree = sum(M._fast_is_valid(n) == s for n, s in zip(numbers, slow))
    assert agree / len(numbers) >= 0.999
    # With the slow confirmation the result is libphonenumber's, number for number.
    assert [normalise_msisdn(n) for n in numbers] == [_slow_e164(n) for n in numbers]


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("+14155552671", True),
        ("+33612345678", True),
        ("+4915123456789", True),
        ("+61412345678", True),
        ("+919876543210", True),
        ("+8613812345678", True),
        ("+5511987654321", True),
        ("+81312345678", True),
        ("+390612345678", True),
        ("+5491123456789", True),
        ("+79161234567", True),
        ("+2348031234567", True),
        ("+447400123456", True),
        ("+447700900123", False),  # Ofcom's drama range is reserved
        ("+4479", False),
        ("+1415555267", False),
        ("+15555555555", False),
        ("+44770090012345", False),
        ("+33012345678", False),
        ("+861381234567", False),
        ("+6512345678", False),
        ("+999123456", False),
    ],
)
def test_fast_path_exact_on_real_looking_numbers(number: str, valid: bool) -> None:
    assert _slow_is_valid(number) is valid
    assert M._fast_is_valid(number) is valid
    assert normalise_msisdn(number) == (number if valid else None)


# --- the numbers already seen -------------------------------------------------------------


def _entry(raw: bytes, bits: int = 10) -> int:
    """The number whose bucket is 0 and whose stored entry is `raw` (5 bytes when bits=10)."""
    return int.from_bytes(raw, "big") << bits


def test_number_set_skips_a_hit_that_straddles_two_entries() -> None:
    seen = NumberSet(bits=10)
    first, second = _entry(b"\0\0\0\0\x01"), _entry(b"\x02\0\0\0\0")
    straddler = _entry(b"\0\0\0\x01\x02")  # bytes 1-5 of first+second
    assert seen.add(first) and seen.add(second)
    assert straddler not in seen
    assert seen.add(straddler)
    assert straddler in seen and not seen.add(straddler)
    assert set(seen) == {first, second, straddler} and len(seen) == 3


@settings(max_examples=300, deadline=None)
@given(bits=st.integers(0, 16), bucket_count=st.integers(1, 3),
       chunks=st.lists(st.lists(st.sampled_from([0, 1, 3]), min_size=1, max_size=4).map(bytes), max_size=60))
def test_number_set_agrees_with_a_python_set(bits: int, bucket_count: int, chunks: list[bytes]) -> None:
    """Entries of the bytes 0, 1 and 3 in one to three buckets: hits across entry
    boundaries are everywhere, and must never count as members."""
    seen, expected = NumberSet(bits=bits), set()
    for index, chunk in enumerate(chunks):
        number = int.from_bytes(chunk, "big") << bits | index % bucket_count
        assert (number in seen) == (number in expected)
        assert seen.add(number) == (number not in expected)
        expected.add(number)
    assert set(seen) == expected and len(seen) == len(expected)


def test_number_set_takes_about_five_bytes_a_number() -> None:
    numbers = [int(f"4474{i:08d}") for i in range(200_000)]
    tracemalloc.start()
    try:
        seen = NumberSet(len(numbers))
        for n in numbers:
            seen.add(n)
        size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(seen) == len(numbers)
    assert size < 8 * len(numbers)  # a Python set of these ints: about 60 bytes each


def test_number_set_keeps_numbers_longer_than_its_entries() -> None:
    """libphonenumber accepts a few numbers above E.164's 15 digits (+49 ...)."""
    seen = NumberSet(bits=10)
    long_number, short = 4940604876475938, 447400123456
    assert seen.add(long_number) and seen.add(short)
    assert long_number in seen and not seen.add(long_number)
    assert 4940604876475939 not in seen
    assert set(seen) == {long_number, short} and len(seen) == 2
