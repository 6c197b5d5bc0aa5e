"""The values that pass between stages.

Every stage is a plain function from one of these to the next; they are frozen so a
stage cannot change what an earlier one decided, and they carry locations so any
stage can point at the line a user must edit.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from runner.errors import CampaignError

JsonPath = tuple[str | int, ...]
Scalar = str | int | float | bool


# --- values as written --------------------------------------------------------------
# A substitution value is sent as the text its author wrote: `1.50` stays `1.50`, `true`
# stays `true` (Python would print 1.5 and True). Templates may still compare numbers
# (`{% if points > 1000 %}`) and test booleans, so a value read as a number or boolean
# stays one, and only remembers its text. `str()` is the single way to a value's text:
# jinja2's `{{ }}`, the plain path's `%s`, the wire and the sandbox all go through it.


class _AsWritten:
    """Prints as the file wrote it (`text`) while it computes and compares as its number;
    mixed in before `int` or `float`, whose constructor `super()` then reaches."""

    text: str
    _number: type  # the number it is: int or float

    def __new__(cls, value: Any, text: str) -> Any:
        self = super().__new__(cls, value)  # type: ignore[call-arg]
        self.text = text
        return self

    def __str__(self) -> str:
        return self.text

    def __format__(self, spec: str) -> str:
        return self.text if not spec else super().__format__(spec)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._number(self), self.text))


class WrittenInt(_AsWritten, int):
    """An integer that prints as written (validation admits only canonical forms such
    as `1200` or `-5`; JSON Lines may write `12` only one way too)."""

    _number = int

    def __new__(cls, value: int, text: str) -> WrittenInt:
        return super().__new__(cls, value, text)  # type: ignore[no-any-return]


class WrittenFloat(_AsWritten, float):
    """A decimal that prints as written: `1.50` is 1.5 to arithmetic and `1.50` on the handset."""

    _number = float

    def __new__(cls, value: float, text: str) -> WrittenFloat:
        return super().__new__(cls, value, text)  # type: ignore[no-any-return]


class WrittenBool(WrittenInt):
    """A boolean that prints as written (`true`, not Python's `True`). Python's bool cannot
    be subclassed, so this is the int 0 or 1: falsy when false, equal to True/False, and
    a template's `{% if vip %}` reads it as a boolean."""

    def __new__(cls, value: bool | int, text: str | None = None) -> WrittenBool:
        truth = bool(value)
        return super().__new__(cls, int(truth), ("true" if truth else "false") if text is None else text)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return "True" if self else "False"


def written(value: Scalar, text: str | None = None) -> Scalar:
    """`value` as a type that prints `text` (the scalar as written in the file); without
    a text, as the value reads canonically. Strings are returned as they are."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return WrittenBool(value, text)
    if isinstance(value, int):
        return value if isinstance(value, WrittenInt) else WrittenInt(value, str(value) if text is None else text)
    if isinstance(value, float):
        return value if isinstance(value, WrittenFloat) else WrittenFloat(value, repr(value) if text is None else text)
    return value


def written_values(values: Mapping[str, Scalar], texts: Mapping[str, str] | None = None) -> dict[str, Scalar]:
    texts = texts or {}
    return {name: written(value, texts.get(name)) for name, value in values.items()}


def wire_values(values: Mapping[str, Scalar]) -> dict[str, str]:
    """Substitutions as the vendor documents them: key-value pairs of strings, each the text written."""
    return {name: value if type(value) is str else str(value) for name, value in values.items()}


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, order=True)
class Location:
    """Where something came from: `file:line:col` in YAML, `file:row` in a CSV/JSONL file.

    `line == 0` means the whole file; `col == 0` means the whole line or row.
    """

    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if self.line == 0:
            return self.file
        if self.col == 0:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    location: Location
    severity: Severity
    message: str
    rule: str
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.location}: {self.severity.value}: {self.message} [{self.rule}]"
        text = f"{text} (hint: {self.hint})" if self.hint else text
        # One problem, one line: values quoted in a message may hold line breaks.
        return text.replace("\r", "\\r").replace("\n", "\\n")


@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    col: int  # 1-based


@dataclass(frozen=True)
class SourceDocument:
    """A YAML file as plain data, plus where each value and key stands in the text.

    `raw_scalars` keeps the source text of every unquoted scalar that YAML turned into
    something other than a string (an int, a float, a bool, null), so validation can
    say "`yes` was read as a boolean" instead of just "not a string".
    """

    path: Path
    display_name: str
    data: Any
    value_positions: Mapping[JsonPath, Position]
    key_positions: Mapping[JsonPath, Position]
    raw_scalars: Mapping[JsonPath, str]

    def locate(self, path: JsonPath, *, key: bool = False) -> Location:
        """The location of `path`, or of its nearest ancestor that has one."""
        current = tuple(path)
        while True:
            table = self.key_positions if key and current in self.key_positions else self.value_positions
            position = table.get(current)
            if position is not None:
                return Location(self.display_name, position.line, position.col)
            if not current:
                return Location(self.display_name, 1, 1)
            current = current[:-1]


# --- the campaign, after validation ------------------------------------------------

ContentType = Literal["text", "unicode", "auto"]
Api = Literal["v1", "v2"]
# Who fills in a recipient's values: "local" = we render each final text and send it
# literally; "platform" = one text with the vendor's placeholders, values per destination.
Personalisation = Literal["local", "platform"]


@dataclass(frozen=True)
class Content:
    type: ContentType
    text: str
    location: Location


@dataclass(frozen=True)
class Template:
    id: str
    preview: str | None
    location: Location


@dataclass(frozen=True)
class InlineRecipient:
    msisdn: str  # as written; normalised by the recipients stage
    substitutions: Mapping[str, Scalar]
    correlation_id: str | None
    location: Location


@dataclass(frozen=True)
class RecipientFile:
    """A CSV or JSON Lines file of recipients, or of numbers to exclude."""

    path: Path
    display_name: str
    format: Literal["csv", "jsonl"]
    msisdn_field: str
    substitutions: Mapping[str, Scalar]  # shared by every row of this source
    location: Location  # where the campaign names the file


@dataclass(frozen=True)
class ExcludedNumber:
    msisdn: str
    location: Location


RecipientSource = InlineRecipient | RecipientFile
ExcludeSource = RecipientFile | ExcludedNumber


@dataclass(frozen=True)
class Smartlink:
    smartlink_id: str
    validity: int | str | None


@dataclass(frozen=True)
class ContactPolicy:
    group: str
    check_consent: bool
    apply_frequency_cap: bool


@dataclass(frozen=True)
class Options:
    domain: str
    shorten_links: bool
    track_clicks: bool
    tag1: str | None = None
    tag2: str | None = None
    allow_fallback_url: bool | None = None


@dataclass(frozen=True)
class Campaign:
    id: str
    description: str | None
    sender: str  # `from`
    content: Content | None
    template: Template | None
    substitutions: Mapping[str, Scalar]
    recipients: tuple[RecipientSource, ...]
    exclude: tuple[ExcludeSource, ...]
    send_at: datetime | None
    expire_at: datetime | None
    validity_seconds: int | None
    options: Options | None
    requested_receipts: tuple[str, ...]
    notify_url: str | None
    notify_url_auth_id: str | None
    callback_data: str | None
    contact_policy: ContactPolicy | None
    smartlinks: tuple[Smartlink, ...]
    tps: int
    source: SourceDocument = field(repr=False, compare=False)
    # As decided by validation: a template is always "platform" (the vendor documents
    # substitutions for templates); inline content is "local" unless the file says otherwise.
    # Last and defaulted so a `Campaign(...)` built field by field elsewhere keeps working.
    personalisation: Personalisation = "local"

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def base_dir(self) -> Path:
        return self.source.path.parent


# --- recipients, messages, batches -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recipient:
    """One destination with the substitution layers that apply to it.

    Layers are kept apart (not merged) so a compile strategy can put each layer where
    the platform expects it: campaign values in the global block, the recipient's own
    values in its `to[]` entry.
    """

    msisdn: str  # E.164, normalised
    substitutions: Mapping[str, Scalar]  # the recipient's own values
    source_substitutions: Mapping[str, Scalar]  # shared by its source
    correlation_id: str | None  # as given; None when the source gave none
    origin: Location


class Encoding(str, enum.Enum):
    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


@dataclass(frozen=True, slots=True)
class SegmentCount:
    encoding: Encoding
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2
    segments: int


@dataclass(frozen=True, slots=True)
class Message:
    """What one recipient will receive."""

    msisdn: str
    correlation_id: str
    text: str  # the final text, as the handset shows it (smartlink tokens verbatim)
    count: SegmentCount
    origin: Location


@dataclass(frozen=True)
class Destination:
    msisdn: str
    correlation_id: str


@dataclass(frozen=True)
class Batch:
    """One request body for the vendor API and the destinations it covers."""

    key: str  # deterministic; the ledger key and the Idempotency-Key
    index: int
    api: Api
    body: Mapping[str, Any]
    destinations: tuple[Destination, ...]
    wire: str = field(default="", repr=False, compare=False)  # `body` as compact JSON, when already made

    def json(self) -> str:
        """The body exactly as written by `compile` and sent by `apply`: compact JSON, keys in build order."""
        return self.wire or wire_json(self.body)


def wire_json(body: Mapping[str, Any]) -> str:
    """A request body as compact JSON. NaN and Infinity are not JSON (the vendor answers
    7000): a body holding one fails here, loudly, instead of going out."""
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), check_circular=False, allow_nan=False)
    except ValueError as error:
        raise CampaignError(f"error: a request body cannot be written as JSON: {error} [wire-not-json]",
                            hint="quote the value in the campaign or recipient file so it is sent as text") from None

