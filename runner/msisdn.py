"""Phone numbers: what people type made E.164, and the numbers a run has seen.

Both run once per row of audiences with millions of rows, so both are built for it:
a clean number is checked by one cached regex built from libphonenumber's metadata
(libphonenumber itself confirms anything the regex does not accept), and the numbers
seen are kept in about five bytes each instead of a Python set's sixty.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberFormat

# --- the numbers already seen -----------------------------------------------------

# E.164 allows at most 15 digits, and 10**15 < 2**50. libphonenumber accepts a few longer
# numbers (German national numbers of up to 15 digits after +49): those go to a plain set.
_NUMBER_BITS = 50
_ENTRIES_PER_BUCKET = 64  # the fill aimed at: fuller buckets are slower, never wrong


class NumberSet:
    """A set of phone numbers (E.164 digits as ints) in about five bytes a number.

    Dropping duplicates means remembering every number kept so far. A Python `set` of
    ints spends ~60 bytes on each (the int object and its slot): 60 MB at a million
    recipients, more than the rest of compile together, and the growth is what made
    memory depend on audience size. Here a number's low bits choose a bucket and the
    remaining bits are appended to that bucket's `bytearray` as a fixed-width
    big-endian entry, so membership is one C-level `find` over a few hundred bytes.
    A hit is a member only at an entry boundary: a match that straddles two entries is
    skipped and the search goes on.
    """

    __slots__ = ("_buckets", "_entry", "_long", "_mask", "_shift")

    def __init__(self, expected: int = 0, *, bits: int | None = None) -> None:
        """`expected`: about how many numbers will be added (it sizes the buckets);
        `bits`: the bucket bits, for tests that want crowded buckets."""
        if bits is None:
            bits = max(10, (max(expected, 1) // _ENTRIES_PER_BUCKET).bit_length())
        self._shift = bits
        self._mask = (1 << bits) - 1
        self._entry = max(1, -(-(_NUMBER_BITS - bits) // 8))
        self._buckets = [bytearray() for _ in range(1 << bits)]
        self._long: set[int] = set()  # numbers of 2**50 and more, which no entry can hold

    def _find(self, bucket: bytearray, entry: bytes, at: int) -> bool:
        """Whether `entry` is in `bucket`, given its first hit `at` (-1 for none)."""
        width = self._entry
        while at > 0 and at % width:
            at = bucket.find(entry, at + 1)
        return at >= 0

    def __contains__(self, number: int) -> bool:
        bucket = self._buckets[number & self._mask]
        try:
            entry = (number >> self._shift).to_bytes(self._entry, "big")
        except OverflowError:
            return number in self._long
        return self._find(bucket, entry, bucket.find(entry))

    def add(self, number: int) -> bool:
        """Add `number`; True when it was not in the set before."""
        bucket = self._buckets[number & self._mask]
        try:
            entry = (number >> self._shift).to_bytes(self._entry, "big")
        except OverflowError:
            return self._add_long(number)
        at = bucket.find(entry)
        if at < 0 or not self._find(bucket, entry, at):  # no hit at all is the common case
            bucket += entry
            return True
        return False

    def _add_long(self, number: int) -> bool:
        if number < 0:
            raise ValueError(f"not a phone number: {number}")
        if number in self._long:
            return False
        self._long.add(number)
        return True

    def __len__(self) -> int:
        return sum(map(len, self._buckets)) // self._entry + len(self._long)

    def __iter__(self) -> Iterator[int]:
        width, shift = self._entry, self._shift
        for low, bucket in enumerate(self._buckets):
            for at in range(0, len(bucket), width):
                yield int.from_bytes(bucket[at : at + width], "big") << shift | low
        yield from self._long


# --- phone numbers ----------------------------------------------------------------

_PUNCTUATION = str.maketrans("", "", " \t\u00a0-.()")
_CALLING_CODES = frozenset(str(cc) for cc in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
_NUMBER_TYPES = (
    "premium_rate",
    "toll_free",
    "mobile",
    "fixed_line",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)
_LENGTH_TABLES: dict[str, dict[int, re.Pattern[str]]] = {}


def _length_table(calling_code: str) -> dict[int, re.Pattern[str]]:
    """One regex per national-number length for a calling code, built on first use.

    `phonenumbers.parse` + `is_valid_number` costs ~24 µs a number; matching one
    pre-joined pattern chosen by length costs under 1 µs and agrees with it on all but
    a few numbers in 100k. Those few are sent to the slow path, so this table can only
    speed acceptance up, never reject a number libphonenumber accepts.
    """
    table = _LENGTH_TABLES.get(calling_code)
    if table is not None:
        return table
    code = int(calling_code)
    by_length: dict[int, dict[str, None]] = {}
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, ()):
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, region)
        if metadata is None:
            continue
        general = metadata.general_desc.possible_length if metadata.general_desc else ()
        for name in _NUMBER_TYPES:
            desc = getattr(metadata, name)
            if desc is None or not desc.national_number_pattern:
                continue
            lengths = tuple(desc.possible_length or general or ())
            if lengths == (-1,):
                continue
            for length in lengths:
                by_length.setdefault(length, {})[desc.national_number_pattern] = None
    table = {
        length: re.compile("|".join(f"(?:{p})" for p in patterns))
        for length, patterns in by_length.items()
    }
    _LENGTH_TABLES[calling_code] = table
    return table


def _calling_code(digits: str) -> str | None:
    """Calling codes form a prefix code, so the first 1-3 digits that are one are it."""
    return (
        digits[:1] if digits[:1] in _CALLING_CODES
        else digits[:2] if digits[:2] in _CALLING_CODES
        else digits[:3] if digits[:3] in _CALLING_CODES
        else None
    )


def _clean(raw: str) -> str | None:
    """`+digits` from what people type (spaces, dashes, dots, brackets, `00`), or None
    when something else is in the way. Letters are refused rather than mapped to keypad
    digits: `+1 800 FLOWERS` in a recipient file is far more likely a mistake."""
    text = raw.strip()
    if not (text[:1] == "+" and text[1:].isdigit() and text.isascii()):
        text = text.translate(_PUNCTUATION)
        if text.startswith("00"):
            text = "+" + text[2:]
        if not (text[:1] == "+" and text[1:].isdigit() and text.isascii()):
            return None
    return text


# The first three digits decide the calling code (`_calling_code` looks at no more), so
# a pattern for a whole `+digits` number is cached per three-digit prefix: the calling
# code, then for each national length the metadata patterns of that length. Checking
# a clean number is then one dict lookup and one regex match.
_WHOLE_NUMBER: dict[str, re.Pattern[str] | None] = {}


def _whole_number_pattern(prefix: str) -> re.Pattern[str] | None:
    """The pattern for numbers starting with these three digits, or None (no calling code)."""
    if not (len(prefix) == 3 and prefix.isdigit() and prefix.isascii()):
        return None  # not a clean number; cached prefixes stay at most a thousand
    code = _calling_code(prefix)
    pattern = None
    if code is not None:
        by_length = "|".join(f"(?=\\d{{{length}}}\\Z)(?:{table.pattern})"
                             for length, table in sorted(_length_table(code).items()))
        pattern = re.compile(f"\\+{code}(?:{by_length})", re.ASCII) if by_length else None
    _WHOLE_NUMBER[prefix] = pattern
    return pattern


def _fast_is_valid(e164: str) -> bool:
    """The metadata check on a `+digits` string, without the slow confirmation."""
    prefix = e164[1:4]
    try:
        pattern = _WHOLE_NUMBER[prefix]
    except KeyError:
        pattern = _whole_number_pattern(prefix)
    return pattern is not None and pattern.fullmatch(e164) is not None


def _slow_e164(e164: str) -> str | None:
    """libphonenumber's own verdict; it may also rewrite the number (for instance drop
    a national trunk `0` written after the country code), so its E.164 form is used."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def normalise_msisdn(raw: str) -> str | None:
    """The E.164 form of `raw`, or None when it is not a valid international number.

    There is no default region: a campaign's audience spans countries, and guessing
    the country of `07700 900123` would send texts to the wrong people.
    """
    # Most files hold clean `+digits` the metadata accepts: `_fast_is_valid`, inlined
    # because this runs once per row of an audience.
    prefix = raw[1:4]
    try:
        pattern = _WHOLE_NUMBER[prefix]
    except KeyError:
        pattern = _whole_number_pattern(prefix)
    if pattern is not None and pattern.fullmatch(raw) is not None:
        return raw
    if raw[:1] == "+" and raw[1:].isdigit() and raw.isascii():
        return _slow_e164(raw)
    text = _clean(raw)
    if text is None:
        return None
    if _fast_is_valid(text):
        return text
    return _slow_e164(text)


def invalid_reason(raw: str) -> str:
    """Why `normalise_msisdn(raw)` said no, in words a campaign author can act on."""
    prefix = f"{raw!r} is not a valid E.164 number"
    text = raw.strip().translate(_PUNCTUATION)
    if text.startswith("00"):
        text = "+" + text[2:]
    if not text:
        return f"{prefix}: it is empty"
    if not text.startswith("+"):
        if text.isdigit() and text.isascii():
            return f"{prefix}: missing country code: write it as +<country><number>"
        return f"{prefix}: it may contain only a leading '+', digits, spaces, dashes, dots and brackets"
    digits = text[1:]
    if not (digits.isdigit() and digits.isascii()):
        return f"{prefix}: it may contain only a leading '+', digits, spaces, dashes, dots and brackets"
    code = _calling_code(digits)
    if code is None:
        return f"{prefix}: it does not start with a known country calling code"
    regions = ", ".join(phonenumbers.COUNTRY_CODE_TO_REGION_CODE[int(code)])
    national = digits[len(code) :]
    lengths = _length_table(code)
    if lengths and len(national) < min(lengths):
        return f"{prefix}: too short for country code +{code} ({regions})"
    if lengths and len(national) > max(lengths):
        return f"{prefix}: too long for country code +{code} ({regions})"
    return f"{prefix}: no number of country code +{code} ({regions}) has this form"
