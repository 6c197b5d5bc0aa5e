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

from runner.errors import CampaignError, ExitCode
from runner.files import FileRefused, open_regular, os_reason
from runner.model import (
    Campaign,
    InlineRecipient,
    Location,
    Recipient,
    RecipientFile,
    RecipientSource,
    Scalar,
    WrittenBool,
    WrittenFloat,
    WrittenInt,
)
from runner.msisdn import NumberSet, invalid_reason, normalise_msisdn

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


def _e164_or_raise(raw: str, location: Location) -> str:
    msisdn = normalise_msisdn(raw)
    if msisdn is None:
        raise _error(location, invalid_reason(raw))
    return msisdn


# --- sources --------------------------------------------------------------------


def _error(location: Location, message: str) -> CampaignError:
    return CampaignError(f"{location}: error: {message} [{ROW_RULE}]", exit_code=ExitCode.INVALID)


class BadRows:
    """Bad rows of one file, collected rather than stopping at the first, so a file from a
    CRM is fixed in one pass: the first MAX_SHOWN are listed, the rest counted.

    Readers `add` and skip the row; whoever drives the reading calls `check` when the file
    is done (nothing is sent before: plan reads every row first)."""

    MAX_SHOWN = 20

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.total = 0

    def add(self, location: Location, message: str) -> None:
        self.total += 1
        if len(self.shown) < self.MAX_SHOWN:
            self.shown.append(f"{location}: error: {message} [{ROW_RULE}]")

    def check(self) -> None:
        if not self.total:
            return
        lines = list(self.shown)
        if self.total > len(self.shown):
            lines.append(f"… and {self.total - len(self.shown):,} more bad rows")
        raise CampaignError("\n".join(lines), exit_code=ExitCode.INVALID,
                            hint=f"{self.total:,} bad rows: fix them all, then run again")


def _open(source: RecipientFile, errors: str = "strict") -> IO[str]:
    """Text mode with `utf-8-sig` so a BOM from Excel is dropped, `newline=""` so the
    csv module sees quoted line breaks as written. Regular files only (see runner.files):
    a FIFO or a device named by a campaign must not hang or flood the run."""
    try:
        raw = open_regular(source.path)
    except (OSError, FileRefused) as exc:
        problem = exc.reason if isinstance(exc, FileRefused) else os_reason(exc)
        reason = f"cannot read {source.format} file {source.display_name} ({source.path}): {problem}"
        raise _error(source.location, reason) from None
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors=errors, newline="")


UTF16_MESSAGE = "the file is UTF-16, not UTF-8: save it as UTF-8 (in Excel: CSV UTF-8)"


def _decode_error(source: RecipientFile, exc: UnicodeDecodeError) -> CampaignError:
    """The text layer decodes in chunks, so the failing offset says nothing about the
    line; a second, tolerant pass finds the first line holding an undecodable byte."""
    try:
        with open_regular(source.path) as raw:
            if raw.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
                return _error(Location(source.display_name, 1), UTF16_MESSAGE)
    except (OSError, FileRefused):
        pass  # _open below says why, in the same words as everywhere else
    with _open(source, errors="surrogateescape") as handle:
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
    if any("\x00" in cell for cell in header):
        return UTF16_MESSAGE  # UTF-16 without a byte-order mark reads as text with NULs
    names = [name.strip() for name in header]
    if source.msisdn_field not in names and len(names) == 1 and ";" in names[0]:
        if source.msisdn_field in (part.strip() for part in names[0].split(";")):
            return ("the file is semicolon-delimited (a spreadsheet's regional setting): "
                    "campaign-runner reads comma-separated CSV; save it with commas")
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


def _csv_rows(source: RecipientFile, numbers_only: bool, columns: Collection[str] | None,
              bad: BadRows) -> Iterator[_Row]:
    name = source.display_name
    handle = _open(source)
    with handle:
        # strict: a stray quote (`"Al"an"`) is a bad row, not silently repaired to `Alan"`
        reader = csv.reader(handle, strict=True)
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
            while True:
                try:
                    cells = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:  # the reader goes on with the next line
                    bad.add(Location(name, previous + 1), f"malformed CSV: {exc}")
                    previous = reader.line_num
                    continue
                line = previous + 1  # where the row starts, even if a quoted cell spans lines
                previous = reader.line_num
                if not cells:  # a blank line is not a row
                    continue
                if len(cells) != width:
                    bad.add(Location(name, line), f"row has {len(cells)} cells but the header has {width}")
                    continue
                raw = cells[number_at]
                if not raw.strip():
                    bad.add(Location(name, line), f"missing number in column {source.msisdn_field!r}")
                    continue
                correlation = (cells[correlation_at] or None) if correlation_at >= 0 else None
                # An empty cell means "no value here", so the campaign's or source's value shows
                # through instead of a blank in the middle of someone's message.
                substitutions: dict[str, Scalar] = {}
                if not numbers_only:
                    for column, at in others:  # a loop: a third faster than a comprehension
                        value = cells[at]
                        if value:
                            if "\x00" in value:  # would reach a handset; a NUL in the number fails as a number
                                bad.add(Location(name, line), f"NUL byte in column {column!r} (a binary file?)")
                                break
                            substitutions[column] = value
                    else:
                        yield (line, raw, correlation, substitutions)
                    continue
                yield (line, raw, correlation, substitutions)
        except UnicodeDecodeError as exc:
            raise _decode_error(source, exc) from exc


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (bool, WrittenBool)):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


_SURROGATE = re.compile("[\ud800-\udfff]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all distinct: json would keep the last of two silently."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _json_int(text: str) -> WrittenInt:
    return WrittenInt(int(text), text)


def _json_float(text: str) -> WrittenFloat:
    return WrittenFloat(float(text), text)


# One decoder for every row: `json.loads` with options builds a new one per call. A JSON
# integer is written one way only, which `int` prints back, except `-0`: rows that may
# hold one take the slower decoder that keeps every integer's text.
_ROW_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_json_float,
                                object_pairs_hook=_json_pairs)
_ROW_DECODER_KEEPING_INTS = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_json_int,
                                             parse_float=_json_float, object_pairs_hook=_json_pairs)


def _json_object(text: str, field: str) -> dict[str, Any] | str:
    """One JSON Lines row as an object that names a number, or what is wrong with it;
    shared with the validate check so both report a bad row in the same words. Numbers
    keep the text they were written with: `1.50` is sent as `1.50`."""
    try:
        obj = (_ROW_DECODER_KEEPING_INTS if "-0" in text else _ROW_DECODER).decode(text)
    except _DuplicateKey as exc:
        named = exc.key.encode("utf-8", "backslashreplace").decode("utf-8")
        return f"duplicate key {named!r} in the object; the later value would replace the first"
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc.msg} (column {exc.pos + 1})"
    except ValueError as exc:
        return f"invalid JSON: {exc}"
    except RecursionError:
        return "invalid JSON: nested too deeply"
    if not isinstance(obj, dict):
        return f"expected a JSON object, found {_describe(obj)}"
    if "\\u" in text:  # only an escape can carry a lone surrogate: the line itself was valid UTF-8
        for key, value in obj.items():
            for part in (key, value):
                found = _SURROGATE.search(part) if isinstance(part, str) else None
                if found is not None:
                    named = key.encode("utf-8", "backslashreplace").decode("utf-8")
                    return (f"{named!r} holds a lone surrogate \\u{ord(found.group()):04x}, which is not "
                            "Unicode (half of an escaped emoji?)")
    if field not in obj:
        keys = ", ".join(obj) or "none"
        return f"missing number: no {field!r} key (keys: {keys})"
    return obj


def _jsonl_rows(source: RecipientFile, numbers_only: bool, columns: Collection[str] | None,
                bad: BadRows) -> Iterator[_Row]:
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
                    bad.add(Location(name, line), obj)
                    continue
                raw = obj[field]
                if not isinstance(raw, str):
                    bad.add(Location(name, line),
                            f"{field!r} must be a string like \"+447700900123\", found {_describe(raw)}")
                    continue
                if not raw.strip():
                    bad.add(Location(name, line), f"missing number: {field!r} is empty")
                    continue
                correlation = obj.get(CORRELATION_FIELD)
                if correlation is not None and not isinstance(correlation, str):
                    bad.add(Location(name, line),
                            f"{CORRELATION_FIELD!r} must be a string, found {_describe(correlation)}")
                    continue
                substitutions: dict[str, Scalar] = {}
                if not numbers_only:
                    wrong = [key for key, value in obj.items()
                             if key != field and key != CORRELATION_FIELD
                             and not isinstance(value, (str, int, float))]  # bool is an int
                    if wrong:
                        bad.add(Location(name, line), f"value of {wrong[0]!r} must be a string, number or boolean, "
                                f"found {_describe(obj[wrong[0]])}")
                        continue
                    for key, value in obj.items():
                        if key == field or key == CORRELATION_FIELD:
                            continue
                        # a boolean prints as written (`true`), in the text and on the wire
                        substitutions[key] = WrittenBool(value) if value is True or value is False else value
                if columns is not None:  # every value is checked above, so plan and compile fail alike
                    substitutions = {key: substitutions[key] for key in sorted(substitutions) if key in columns}
                yield (line, raw, correlation or None, substitutions)
        except UnicodeDecodeError as exc:
            raise _decode_error(source, exc) from exc


def _file_rows(source: RecipientFile, numbers_only: bool = False,
               columns: Collection[str] | None = None, bad: BadRows | None = None) -> Iterator[_Row]:
    """Rows as (line, number as written, correlation id, values). `numbers_only` reads no
    values; `columns` keeps only the values named (in name order), None keeps all (in
    file order). Bad rows are skipped and collected in `bad`, whose owner checks it when
    the file is done; without one, the rows are checked here at the end of the file."""
    if bad is None:
        return _checked_rows(source, numbers_only, columns)
    if source.format == "csv":
        return _csv_rows(source, numbers_only, columns, bad)
    return _jsonl_rows(source, numbers_only, columns, bad)


def _checked_rows(source: RecipientFile, numbers_only: bool, columns: Collection[str] | None) -> Iterator[_Row]:
    bad = BadRows()
    yield from _file_rows(source, numbers_only, columns, bad)
    bad.check()


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
    bad = BadRows()
    for line, raw, correlation_id, substitutions in _file_rows(source, bad=bad):
        origin = Location(name, line)
        msisdn = normalise_msisdn(raw)
        if msisdn is None:
            bad.add(origin, invalid_reason(raw))
            continue
        yield Recipient(msisdn, substitutions, shared, correlation_id, origin)
    bad.check()


def expected_rows(sources: Iterable[object]) -> int:
    """About how many rows these sources hold, from each file's size and the lines in
    its first 64 KiB, without reading it all: enough to size a `NumberSet`."""
    rows = 0
    for source in sources:
        if not isinstance(source, RecipientFile):
            rows += 1
            continue
        try:
            with open_regular(source.path) as handle:
                head = handle.read(_PEEK_BYTES)
                size = os.fstat(handle.fileno()).st_size
        except (OSError, FileRefused):
            continue  # reading it will say what is wrong
        lines = head.count(b"\n") or len(head) // 12  # no line break at all: assume short rows
        rows += size * max(lines, 1) // max(len(head), 1)
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
            bad = BadRows()
            for line, raw, _, _ in _file_rows(source, numbers_only=True, bad=bad):
                msisdn = normalise_msisdn(raw)
                if msisdn is None:
                    bad.add(Location(name, line), invalid_reason(raw))
                    continue
                excluded.add(int(msisdn))
            bad.check()
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


def _same_id(correlation_id: str, first: Location) -> str:
    return (f"correlationId {correlation_id!r} is also given to the recipient at {first}: "
            "receipts would be matched to the wrong person")


def iter_kept(campaign: Campaign, stats: RecipientStats | None = None,
              columns: Collection[str] | None = None) -> Iterator[Recipient | KeptRow]:
    """`iter_recipients`, with file rows left as `KeptRow` tuples (see `kept_recipient`).

    `columns`: the only file values a caller reads (the names a plain text reads), kept
    in name order; None keeps every value in file order. Counts are added to `stats`
    when the stream ends or is closed.
    """
    counts = stats if stats is not None else RecipientStats()
    dropped = RecipientStats()  # this stream's duplicates and exclusions
    excluded = load_excluded(campaign)
    any_excluded = len(excluded) > 0
    seen = NumberSet(expected_rows(campaign.recipients))
    first_sighting = seen.add

    def admit(msisdn: str) -> bool:
        """True when this is the first sighting of a number not excluded; counts the rest."""
        key = int(msisdn)  # the same int as the digits: `int` reads the plus sign
        if any_excluded and key in excluded:
            dropped.excluded += 1
            return False
        if first_sighting(key):
            return True
        dropped.duplicates += 1
        return False

    # Correlation ids given in the files or inline, and where: receipts are matched on them,
    # so one id on two recipients would credit one person's receipts to the other. Only
    # given ids are kept (generated ones are unique by construction).
    given_ids: dict[str, Location] = {}
    try:
        for source in campaign.recipients:
            if isinstance(source, InlineRecipient):
                for recipient in iter_source(source):
                    if admit(recipient.msisdn):
                        given = recipient.correlation_id
                        if given is not None:
                            if given in given_ids:
                                raise _error(recipient.origin, _same_id(given, given_ids[given]))
                            given_ids[given] = recipient.origin
                        yield recipient
                continue
            # `iter_source` inlined for files (the hot loop).
            shared = source.substitutions
            name = source.display_name
            bad = BadRows()
            for line, raw, correlation_id, substitutions in _file_rows(source, columns=columns, bad=bad):
                msisdn = normalise_msisdn(raw)
                if msisdn is None:
                    bad.add(Location(name, line), invalid_reason(raw))
                    continue
                key = int(msisdn)  # `admit`, inlined
                if (not any_excluded or key not in excluded) and first_sighting(key):
                    if correlation_id is not None:
                        if correlation_id in given_ids:
                            bad.add(Location(name, line), _same_id(correlation_id, given_ids[correlation_id]))
                            continue
                        given_ids[correlation_id] = Location(name, line)
                    yield (msisdn, substitutions, shared, correlation_id, name, line)
                elif any_excluded and key in excluded:
                    dropped.excluded += 1
                else:
                    dropped.duplicates += 1
            bad.check()
    finally:
        accepted = len(seen)  # every admitted number was a first sighting
        counts.accepted += accepted
        counts.duplicates += dropped.duplicates
        counts.excluded += dropped.excluded
        counts.total_rows += accepted + dropped.duplicates + dropped.excluded


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
        with open_regular(source.path) as handle:
            head = handle.read(_PEEK_BYTES)
            complete = len(head) < _PEEK_BYTES
    except FileRefused as exc:
        return f"cannot read {source.path}: {exc.reason}", None
    except OSError as exc:
        return f"cannot read {source.path}: {os_reason(exc)}", None
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return UTF16_MESSAGE, None
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
