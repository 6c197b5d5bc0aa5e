"""The recipients stage: every destination of a campaign, one at a time.

Audiences run to millions of rows, so everything here is a generator: a row is read,
checked, turned into a `Recipient` and handed on before the next row is read. The only
state that grows with the audience is the set of numbers already seen (needed to drop
duplicates), and `NumberSet` keeps it to about five bytes a number.

A bad row stops the run with `file:row: message` instead of being skipped: a campaign
that silently loses recipients is worse than one that does not start.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberFormat

from runner.errors import CampaignError, ExitCode
from runner.model import (
    Campaign,
    InlineRecipient,
    Location,
    Recipient,
    RecipientFile,
    RecipientSource,
    Scalar,
)

CORRELATION_FIELD = "correlationId"
ROW_RULE = "recipient-row"  # the rule id of every located recipient-file error

# Bytes read by `check_source_readable`: enough for any sane header row, small enough
# that `campaign validate` stays instant on a multi-gigabyte file.
_PEEK_BYTES = 1 << 16


@dataclass
class RecipientStats:
    """Counters filled in while `iter_recipients` is consumed, so a plan can report
    what was dropped without a second pass over the files."""

    total_rows: int = 0
    duplicates: int = 0
    excluded: int = 0
    accepted: int = 0


# --- the numbers already seen -----------------------------------------------------

# E.164 allows at most 15 digits, and 10**15 < 2**50.
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

    __slots__ = ("_buckets", "_entry", "_mask", "_shift")

    def __init__(self, expected: int = 0, *, bits: int | None = None) -> None:
        """`expected`: about how many numbers will be added (it sizes the buckets);
        `bits`: the bucket bits, for tests that want crowded buckets."""
        if bits is None:
            bits = max(10, (max(expected, 1) // _ENTRIES_PER_BUCKET).bit_length())
        self._shift = bits
        self._mask = (1 << bits) - 1
        self._entry = max(1, -(-(_NUMBER_BITS - bits) // 8))
        self._buckets = [bytearray() for _ in range(1 << bits)]

    def _find(self, bucket: bytearray, entry: bytes, at: int) -> bool:
        """Whether `entry` is in `bucket`, given its first hit `at` (-1 for none)."""
        width = self._entry
        while at > 0 and at % width:
            at = bucket.find(entry, at + 1)
        return at >= 0

    def __contains__(self, number: int) -> bool:
        bucket = self._buckets[number & self._mask]
        entry = (number >> self._shift).to_bytes(self._entry, "big")
        return self._find(bucket, entry, bucket.find(entry))

    def add(self, number: int) -> bool:
        """Add `number`; True when it was not in the set before."""
        bucket = self._buckets[number & self._mask]
        entry = (number >> self._shift).to_bytes(self._entry, "big")
        at = bucket.find(entry)
        if at < 0 or not self._find(bucket, entry, at):  # no hit at all is the common case
            bucket += entry
            return True
        return False

    def __len__(self) -> int:
        return sum(map(len, self._buckets)) // self._entry

    def __iter__(self) -> Iterator[int]:
        width, shift = self._entry, self._shift
        for low, bucket in enumerate(self._buckets):
            for at in range(0, len(bucket), width):
                yield int.from_bytes(bucket[at : at + width], "big") << shift | low


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


def _e164_or_raise(raw: str, location: Location) -> str:
    msisdn = normalise_msisdn(raw)
    if msisdn is None:
        raise _error(location, invalid_reason(raw))
    return msisdn


# --- sources --------------------------------------------------------------------


def _error(location: Location, message: str) -> CampaignError:
    return CampaignError(f"{location}: error: {message} [{ROW_RULE}]", exit_code=ExitCode.INVALID)


def _open_problem(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)


def _open(source: RecipientFile) -> IO[str]:
    """Text mode with `utf-8-sig` so a BOM from Excel is dropped, `newline=""` so the
    csv module sees quoted line breaks as written."""
    try:
        return open(source.path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        reason = f"cannot read {source.format} file {source.display_name} ({source.path}): {_open_problem(exc)}"
        raise _error(source.location, reason) from exc


def _decode_error(source: RecipientFile, exc: UnicodeDecodeError) -> CampaignError:
    """The text layer decodes in chunks, so the failing offset says nothing about the
    line; a second, tolerant pass finds the first line holding an undecodable byte."""
    with open(source.path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        for number, line in enumerate(handle, 1):
            try:
                line.encode("utf-8")
            except UnicodeEncodeError as bad:
                byte = ord(line[bad.start]) - 0xDC00
                return _error(
                    Location(source.display_name, number),
                    f"not valid UTF-8 (byte 0x{byte:02x} at column {bad.start + 1}): save the file as UTF-8",
                )
    return _error(Location(source.display_name), f"not valid UTF-8: {exc.reason}: save the file as UTF-8")


def _header_problem(source: RecipientFile, header: list[str] | None) -> str | None:
    if not header:
        return "no header row: the first line must name the columns"
    names = [name.strip() for name in header]
    for index, name in enumerate(names, 1):
        if not name:
            return f"header cell {index} is empty: every column needs a name"
        if names.index(name) != index - 1:
            return f"column {name!r} appears twice in the header"
    if source.msisdn_field not in names:
        columns = ", ".join(names)
        return f"no {source.msisdn_field!r} column in the header (columns: {columns})"
    return None


# (line, number as written, correlation id, substitutions): a tuple, because a frozen
# dataclass per row would cost more than parsing the row.
_Row = tuple[int, str, "str | None", dict[str, Scalar]]


def _csv_rows(source: RecipientFile, numbers_only: bool, columns: Collection[str] | None) -> Iterator[_Row]:
    name = source.display_name
    handle = _open(source)
    with handle:
        reader = csv.reader(handle)
        try:
            try:
                header = next(reader, None)
            except csv.Error as exc:
                raise _error(Location(name, reader.line_num or 1), f"malformed CSV header: {exc}") from exc
            problem = _header_problem(source, header)
            if problem is not None:
                raise _error(Location(name, 1), problem)
            assert header is not None
            names = [cell.strip() for cell in header]
            width = len(names)
            number_at = names.index(source.msisdn_field)
            correlation_at = names.index(CORRELATION_FIELD) if CORRELATION_FIELD in names else -1
            others = [(n, i) for i, n in enumerate(names) if i not in (number_at, correlation_at)]
            if columns is not None:
                others = sorted((n, i) for n, i in others if n in columns)
            previous = reader.line_num
            try:
                # Only the reader raises csv.Error; nothing below it in the loop can.
                for cells in reader:
                    line = previous + 1  # where the row starts, even if a quoted cell spans lines
                    previous = reader.line_num
                    if not cells:  # a blank line is not a row
                        continue
                    if len(cells) != width:
                        raise _error(
                            Location(name, line),
                            f"row has {len(cells)} cells but the header has {width}",
                        )
                    raw = cells[number_at]
                    if not raw.strip():
                        raise _error(Location(name, line), f"missing number in column {source.msisdn_field!r}")
                    correlation = (cells[correlation_at] or None) if correlation_at >= 0 else None
                    # An empty cell means "no value here", so the campaign's or source's value shows
                    # through instead of a blank in the middle of someone's message.
                    substitutions: dict[str, Scalar] = {}
                    if not numbers_only:
                        for column, at in others:  # a loop: a third faster than a comprehension
                            value = cells[at]
                            if value:
                                substitutions[column] = value
                    yield (line, raw, correlation, substitutions)
            except csv.Error as exc:
                raise _error(Location(name, previous + 1), f"malformed CSV: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise _decode_error(source, exc) from exc


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_object(text: str, field: str) -> dict[str, Any] | str:
    """One JSON Lines row as an object that names a number, or what is wrong with it;
    shared with the validate check so both report a bad row in the same words."""
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc.msg} (column {exc.pos + 1})"
    except ValueError as exc:
        return f"invalid JSON: {exc}"
    if not isinstance(obj, dict):
        return f"expected a JSON object, found {_describe(obj)}"
    if field not in obj:
        keys = ", ".join(obj) or "none"
        return f"missing number: no {field!r} key (keys: {keys})"
    return obj


def _jsonl_rows(source: RecipientFile, numbers_only: bool, columns: Collection[str] | None) -> Iterator[_Row]:
    name = source.display_name
    field = source.msisdn_field
    handle = _open(source)
    with handle:
        try:
            for line, text in enumerate(handle, 1):
                if not text.strip():
                    continue
                obj = _json_object(text, field)
                if isinstance(obj, str):
                    raise _error(Location(name, line), obj)
                raw = obj[field]
                if not isinstance(raw, str):
                    raise _error(
                        Location(name, line),
                        f"{field!r} must be a string like \"+447700900123\", found {_describe(raw)}",
                    )
                if not raw.strip():
                    raise _error(Location(name, line), f"missing number: {field!r} is empty")
                correlation = obj.get(CORRELATION_FIELD)
                if correlation is not None and not isinstance(correlation, str):
                    raise _error(
                        Location(name, line),
                        f"{CORRELATION_FIELD!r} must be a string, found {_describe(correlation)}",
                    )
                substitutions: dict[str, Scalar] = {}
                if not numbers_only:
                    for key, value in obj.items():
                        if key == field or key == CORRELATION_FIELD:
                            continue
                        if not isinstance(value, (str, int, float)):  # bool is an int
                            raise _error(
                                Location(name, line),
                                f"value of {key!r} must be a string, number or boolean, found {_describe(value)}",
                            )
                        substitutions[key] = value
                if columns is not None:  # every value is checked above, so plan and compile fail alike
                    substitutions = {key: substitutions[key] for key in sorted(substitutions) if key in columns}
                yield (line, raw, correlation or None, substitutions)
        except UnicodeDecodeError as exc:
            raise _decode_error(source, exc) from exc


def _file_rows(source: RecipientFile, numbers_only: bool = False,
               columns: Collection[str] | None = None) -> Iterator[_Row]:
    """Rows as (line, number as written, correlation id, values). `numbers_only` reads no
    values; `columns` keeps only the values named (in name order), None keeps all (in
    file order)."""
    if source.format == "csv":
        return _csv_rows(source, numbers_only, columns)
    return _jsonl_rows(source, numbers_only, columns)


def iter_source(source: RecipientSource) -> Iterator[Recipient]:
    """One source's recipients, normalised but neither deduplicated nor filtered, so a
    caller can inspect a single file."""
    if isinstance(source, InlineRecipient):
        yield Recipient(
            msisdn=_e164_or_raise(source.msisdn, source.location),
            substitutions=source.substitutions,
            source_substitutions={},
            correlation_id=source.correlation_id,
            origin=source.location,
        )
        return
    shared = source.substitutions
    name = source.display_name
    for line, raw, correlation_id, substitutions in _file_rows(source):
        origin = Location(name, line)
        msisdn = normalise_msisdn(raw)
        if msisdn is None:
            raise _error(origin, invalid_reason(raw))
        yield Recipient(msisdn, substitutions, shared, correlation_id, origin)


def expected_rows(sources: Iterable[object]) -> int:
    """About how many rows these sources hold, from each file's size and the lines in
    its first 64 KiB, without reading it all: enough to size a `NumberSet`."""
    rows = 0
    for source in sources:
        if not isinstance(source, RecipientFile):
            rows += 1
            continue
        try:
            with open(source.path, "rb") as handle:
                head = handle.read(_PEEK_BYTES)
                size = os.fstat(handle.fileno()).st_size
        except OSError:
            continue  # reading it will say what is wrong
        rows += size * (head.count(b"\n") + 1) // max(len(head), 1)
    return rows


def load_excluded(campaign: Campaign) -> NumberSet:
    """Every excluded number as an int (the same key `iter_recipients` dedupes on).

    An unparseable number here is an error, not a skip: a typo in an opt-out list
    would otherwise text someone who asked not to be texted.
    """
    excluded = NumberSet(expected_rows(campaign.exclude))
    for source in campaign.exclude:
        if isinstance(source, RecipientFile):
            name = source.display_name
            for line, raw, _, _ in _file_rows(source, numbers_only=True):
                excluded.add(int(_e164_or_raise(raw, Location(name, line))))
        else:
            excluded.add(int(_e164_or_raise(source.msisdn, source.location)))
    return excluded


def iter_recipients(campaign: Campaign, stats: RecipientStats | None = None) -> Iterator[Recipient]:
    """All of a campaign's recipients in source order, first occurrence of each number
    winning, excluded numbers dropped.

    An excluded number is counted as excluded every time it occurs and never as a
    duplicate, so `accepted + duplicates + excluded == total_rows` once consumed.
    """
    for kept in iter_kept(campaign, stats):
        yield kept if isinstance(kept, Recipient) else kept_recipient(kept)


# A kept file row before it becomes a `Recipient`:
# (msisdn, own values, source values, correlation id, file name, line).
# Compile turns most rows straight into request entries; building a `Recipient` and
# its `Location` for every row of a million-row file would cost more than the row.
KeptRow = tuple[str, dict[str, Scalar], Mapping[str, Scalar], "str | None", str, int]


def kept_recipient(row: KeptRow) -> Recipient:
    """The `Recipient` that `iter_recipients` yields for a kept file row."""
    msisdn, substitutions, shared, correlation_id, name, line = row
    return Recipient(msisdn, substitutions, shared, correlation_id, Location(name, line))


def iter_kept(campaign: Campaign, stats: RecipientStats | None = None,
              columns: Collection[str] | None = None) -> Iterator[Recipient | KeptRow]:
    """`iter_recipients`, with file rows left as `KeptRow` tuples (see `kept_recipient`).

    `columns`: the only file values a caller reads (a text's variables), kept in name
    order; None keeps every value in file order (a template's variables are unknown).
    """
    counts = stats if stats is not None else RecipientStats()
    excluded = load_excluded(campaign)
    any_excluded = len(excluded) > 0
    seen = NumberSet(expected_rows(campaign.recipients))
    first_sighting = seen.add

    def admit(msisdn: str) -> bool:
        """True when this is the first sighting of a number not excluded; counts the rest."""
        key = int(msisdn)  # the same int as the digits: `int` reads the plus sign
        if any_excluded and key in excluded:
            counts.excluded += 1
            return False
        if first_sighting(key):
            return True
        counts.duplicates += 1
        return False

    try:
        for source in campaign.recipients:
            if isinstance(source, InlineRecipient):
                for recipient in iter_source(source):
                    if admit(recipient.msisdn):
                        yield recipient
                continue
            # `iter_source` inlined for files (the hot loop).
            shared = source.substitutions
            name = source.display_name
            for line, raw, correlation_id, substitutions in _file_rows(source, columns=columns):
                msisdn = normalise_msisdn(raw)
                if msisdn is None:
                    raise _error(Location(name, line), invalid_reason(raw))
                key = int(msisdn)  # `admit`, inlined
                if (not any_excluded or key not in excluded) and first_sighting(key):
                    yield (msisdn, substitutions, shared, correlation_id, name, line)
                elif any_excluded and key in excluded:
                    counts.excluded += 1
                else:
                    counts.duplicates += 1
    finally:
        # Every admitted number was a first sighting: the rows kept are the set's size.
        counts.accepted = len(seen)
        counts.total_rows = counts.accepted + counts.duplicates + counts.excluded


# --- validate ---------------------------------------------------------------------


def check_source_readable(source: RecipientFile) -> str | None:
    """The reason every row of this file would fail, or None; see `peek_source`."""
    return peek_source(source)[0]


def source_columns(source: RecipientFile) -> frozenset[str] | None:
    """The substitution names a CSV file's header provides (None when not knowable:
    JSON Lines rows may each carry different keys, or the file is unreadable)."""
    problem, columns = peek_source(source)
    return None if problem else columns


def peek_source(source: RecipientFile) -> tuple[str | None, frozenset[str] | None]:
    """A cheap look at the start of a file for `campaign validate`: the mistakes that
    make every row fail (wrong path, wrong encoding, wrong column name) show up in the
    first few kilobytes, and validate must not read a whole audience to find them.

    The reason leaves out the file name (validate puts it in front) but keeps the line.
    """
    try:
        with open(source.path, "rb") as handle:
            head = handle.read(_PEEK_BYTES)
            complete = len(head) < _PEEK_BYTES
    except OSError as exc:
        return f"cannot read {source.path}: {_open_problem(exc)}", None
    head = head.removeprefix(codecs.BOM_UTF8)
    # Cut at the last line break so a multi-byte character split by the read limit
    # is not reported as bad encoding.
    if not complete and b"\n" in head:
        head = head[: head.rindex(b"\n") + 1]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = head.count(b"\n", 0, exc.start) + 1
        return f"line {line}: not valid UTF-8 (byte 0x{head[exc.start]:02x}): save the file as UTF-8", None
    # The same line splitting as the full read (`newline=""`), so line numbers agree.
    lines = io.StringIO(text, newline="")
    if source.format == "csv":
        try:
            header = next(csv.reader(lines), None)
        except csv.Error as exc:
            return f"malformed CSV header: {exc}", None
        problem = _header_problem(source, header)
        if problem is not None or header is None:
            return problem, None
        return None, frozenset(name.strip() for name in header) - {source.msisdn_field, CORRELATION_FIELD}
    for number, line_text in enumerate(lines, 1):
        if not line_text.strip():
            continue
        if not complete and not line_text.endswith(("\n", "\r")):
            return None, None  # the first object is longer than the peek; the full read will judge it
        parsed = _json_object(line_text, source.msisdn_field)
        return (f"line {number}: {parsed}" if isinstance(parsed, str) else None), None
    return None, None
