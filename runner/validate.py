"""Validation: the JSON Schema, then the SMS rules a schema cannot say.

All problems are collected (not just the first), each at the line:col a user must
edit, so one `campaign validate` run in CI lists everything a pull request got wrong.
A file that passes becomes a typed `Campaign` for the later stages.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from . import vendor
from .errors import CampaignError
from .load import load_document
from .model import (
    Campaign,
    ContactPolicy,
    Content,
    Diagnostic,
    ExcludedNumber,
    ExcludeSource,
    InlineRecipient,
    JsonPath,
    Location,
    Options,
    RecipientFile,
    RecipientSource,
    Severity,
    Smartlink,
    SourceDocument,
    Template,
    written,
)
from .msisdn import invalid_reason, normalise_msisdn
from .recipients import check_source_readable, source_columns
from .render import BUILTIN_VARIABLES, CompiledText, compile_text
from .safe_text import control_characters
from .segments import gsm7_replacement, non_gsm7

DEFAULT_TPS = 10
MAX_INLINE_RECIPIENTS = 50_000  # beyond this, recipient files (see _inline_count_check)
CAMPAIGN_SUFFIXES = (".yaml", ".yml")
SECRET_KEY_NAMES = frozenset(
    {"key", "servicekey", "apikey", "jwt", "token", "authorization", "secret", "servicesecret", "password"}
)
JWT_PATTERN = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
DURATION_PART = re.compile(r"([0-9]+)([smhd])")
DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@cache
def schema_text() -> str:
    """The campaign JSON Schema as shipped: the single source for the validator and `campaign schema`."""
    return resources.files("runner.schemas").joinpath("campaign.schema.json").read_text(encoding="utf-8")


@cache
def _validator() -> jsonschema.Draft202012Validator:
    # The shipped schema is checked against its metaschema by the tests
    # (test_validate.py); checking it again here would cost every command 17 ms.
    return jsonschema.Draft202012Validator(json.loads(schema_text()))


@dataclass(frozen=True)
class FileResult:
    display_name: str
    diagnostics: tuple[Diagnostic, ...]
    campaign: Campaign | None = field(default=None, compare=False, repr=False)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity is Severity.WARNING)


@dataclass(frozen=True)
class ValidationResult:
    files: tuple[FileResult, ...]

    @property
    def diagnostics(self) -> tuple[Diagnostic, ...]:
        return tuple(d for f in self.files for d in f.diagnostics)

    @property
    def error_count(self) -> int:
        return sum(len(f.errors) for f in self.files)

    @property
    def warning_count(self) -> int:
        return sum(len(f.warnings) for f in self.files)

    @property
    def ok(self) -> bool:
        return self.error_count == 0


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given; directories searched for *.yaml/*.yml (hidden folders skipped)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.suffix in CAMPAIGN_SUFFIXES
                    and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(path).parts)
                )
            )
        else:
            found.append(path)
    return found


def validate_paths(paths: Iterable[Path], *, now: datetime, strict: bool = False) -> ValidationResult:
    return ValidationResult(tuple(validate_file(p, now=now, strict=strict) for p in expand_paths(paths)))


# Warnings `--strict` leaves as warnings. A campaign stays in git after it was sent, so its
# sendAt passes: `validate --strict campaigns/` in CI must not turn red on every campaign
# already sent (apply refuses a past schedule anyway; `plan --strict` still fails on it).
NOT_STRICT_RULES: Final = frozenset({"schedule-past"})


def validate_file(path: Path, *, now: datetime, strict: bool = False) -> FileResult:
    display = str(path)
    document, diagnostics = load_document(path, display)
    if document is not None:
        diagnostics = diagnostics + list(_check(document, now))
    if strict:
        diagnostics = [
            Diagnostic(d.location, Severity.ERROR, d.message, d.rule, d.hint)
            if d.severity is Severity.WARNING and d.rule not in NOT_STRICT_RULES else d
            for d in diagnostics
        ]
    ordered = tuple(sorted(diagnostics, key=lambda d: (d.location.line, d.location.col, d.rule, d.message)))
    campaign = None
    if document is not None and not any(d.severity is Severity.ERROR for d in ordered):
        campaign = build_campaign(document)
    return FileResult(display, ordered, campaign)


def load_campaign(path: Path, *, now: datetime, strict: bool = False) -> tuple[Campaign, tuple[Diagnostic, ...]]:
    """A valid campaign and its warnings, or a CampaignError listing every error."""
    result = validate_file(path, now=now, strict=strict)
    if result.campaign is None:
        raise CampaignError(
            "\n".join(str(d) for d in result.errors) or f"{path}: invalid campaign",
            hint="run `campaign validate` for every problem in the file",
        )
    return result.campaign, result.warnings


# --- checks --------------------------------------------------------------------------


def _check(doc: SourceDocument, now: datetime) -> Iterator[Diagnostic]:
    secrets = list(_secret_checks(doc, doc.data, ()))
    yield from secrets
    too_many = _inline_count_check(doc)
    if too_many is not None:
        yield too_many
        return  # the schema check alone would take minutes
    flagged = {d.location for d in secrets}
    # A credential key is also an unknown key; one message about it is enough.
    errors = list(_validator().iter_errors(doc.data))
    schema_errors = [d for error in errors for cause in _causes(error) for d in _schema_diagnostics(doc, cause)
                     if d.location not in flagged]
    yield from schema_errors
    yield from _control_checks(doc, doc.data, ())
    if not errors:
        yield from _rule_checks(doc, now)
        return
    # Every problem at once: the rules still run, over the document without the values the
    # schema refused (so nothing is reported twice), each group on its own. A group whose
    # input is missing or misshapen is skipped: the schema error already says why.
    shaped = replace(doc, data=_without(doc.data, errors))
    # "contnet:" is an unknown key, and then content looks missing: say it once
    misspelt_top_level = any(e.validator == "additionalProperties" and not e.absolute_path for e in errors)
    for group in _rule_groups(shaped, now):
        found: list[Diagnostic] = []
        try:
            for diagnostic in group():
                found.append(diagnostic)
        except (KeyError, TypeError, AttributeError, ValueError, IndexError):
            pass  # what the group found before its input ran out still counts
        yield from (d for d in found if not (misspelt_top_level and d.rule == "content-xor-template"
                                             and "required" in d.message))


def _without(data: Any, errors: list[ValidationError]) -> Any:
    """A copy of `data` with every value a schema error points at removed (dict keys) or
    set to None (list items, so later indices and their locations stay right)."""
    pruned = copy.deepcopy(data)
    for error in errors:
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set((error.schema.get("properties") or {}) if isinstance(error.schema, dict) else ())
            parent = _walk(pruned, path)
            if isinstance(parent, dict):
                for extra in [k for k in parent if k not in allowed]:
                    del parent[extra]
            continue
        if error.validator == "required" or not path:
            continue
        parent = _walk(pruned, path[:-1])
        last = path[-1]
        if isinstance(parent, dict):
            parent.pop(last, None)
        elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
            parent[last] = None
    return pruned


def _walk(data: Any, path: list[Any]) -> Any:
    for step in path:
        try:
            data = data[step]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _exact_text_error(doc: SourceDocument, path: JsonPath, text: str, first: CampaignError) -> CampaignError | None:
    """The same error located exactly: YAML gives where the value's token starts (its
    quote, or a block's `|`), not its first character. Read only when there is an error."""
    where = doc.locate(path)
    try:
        lines = doc.path.read_text(encoding="utf-8").splitlines()
        token = lines[where.line - 1][where.col - 1]
    except (OSError, UnicodeError, IndexError):
        return None
    if token in "\"'":
        if not getattr(first, "exact", False):
            return None  # a parse error has no column of its own: it stays at the value
        start, indent = Location(where.file, where.line, where.col + 1), None
    elif token in "|>" and where.line < len(lines):
        body = lines[where.line]
        indent = len(body) - len(body.lstrip(" "))
        start = Location(where.file, where.line + 1, indent + 1)
    else:
        return None
    try:
        compile_text(text, start, indent=indent)
    except CampaignError as error:
        return error
    return None


def _control_checks(doc: SourceDocument, node: Any, path: JsonPath) -> Iterator[Diagnostic]:
    """Strings of the file holding control characters (ESC, CR, bidi overrides...): an SMS
    should not carry them, and on a terminal or in a review they hide what follows.
    A warning that names the characters, never the value."""
    if isinstance(node, dict):
        for name, value in node.items():
            if isinstance(name, str) and control_characters(name):
                yield _diag(doc, (*path, name), f"key holds control characters {', '.join(control_characters(name))}",
                            "control-character", key=True, severity=Severity.WARNING)
            yield from _control_checks(doc, value, (*path, name))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _control_checks(doc, item, (*path, index))
    elif isinstance(node, str):
        names = control_characters(node)
        if names:
            yield _diag(doc, path, f"value holds control character{'s' * (len(names) > 1)} {', '.join(names)}",
                        "control-character", severity=Severity.WARNING,
                        hint="an SMS should not carry control characters; write a line break as a real one")


def _inline_count_check(doc: SourceDocument) -> Diagnostic | None:
    """Inline recipients cost the schema check about 0.3 ms each; past MAX_INLINE_RECIPIENTS
    they belong in a recipient file, which is streamed and has no limit."""
    recipients = doc.data.get("recipients") if isinstance(doc.data, dict) else None
    if not isinstance(recipients, list):
        return None
    inline = sum(1 for item in recipients if isinstance(item, dict) and "msisdn" in item)
    if inline <= MAX_INLINE_RECIPIENTS:
        return None
    return _diag(doc, ("recipients",), f"{inline:,} inline recipients; a campaign file may list at most "
                 f"{MAX_INLINE_RECIPIENTS:,}", "too-many-inline-recipients", key=True,
                 hint="put them in a recipient file (CSV or JSON Lines): `recipients: [{file: audience.csv}]`")


def _diag(doc: SourceDocument, path: JsonPath, message: str, rule: str, *, hint: str | None = None,
          key: bool = False, severity: Severity = Severity.ERROR) -> Diagnostic:
    return Diagnostic(doc.locate(path, key=key), severity, message, rule, hint)


def _secret_checks(doc: SourceDocument, node: Any, path: JsonPath) -> Iterator[Diagnostic]:
    hint = "credentials come from WEBEX_CONNECT_SERVICE_KEY / WEBEX_CONNECT_JWT (or their _FILE variants), never from a campaign file"
    if isinstance(node, dict):
        in_substitutions = bool(path) and path[-1] == "substitutions"
        for name, value in node.items():
            normalised = str(name).lower().replace("_", "").replace("-", "")
            if not in_substitutions and normalised in SECRET_KEY_NAMES:
                yield _diag(doc, (*path, name), f"'{name}' looks like a credential; campaign files must not hold secrets",
                            "secret-in-file", hint=hint, key=True)
            else:
                yield from _secret_checks(doc, value, (*path, name))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _secret_checks(doc, item, (*path, index))
    elif isinstance(node, str) and JWT_PATTERN.search(node):
        yield _diag(doc, path, "value looks like a JWT; campaign files must not hold secrets", "secret-in-file", hint=hint)


def _schema_checks(doc: SourceDocument) -> Iterator[Diagnostic]:
    for error in _validator().iter_errors(doc.data):
        for cause in _causes(error):
            yield from _schema_diagnostics(doc, cause)


def _causes(error: ValidationError) -> list[ValidationError]:
    """The errors worth showing for one failure, instead of a oneOf's whole cascade.

    For oneOf/anyOf the branch the user evidently meant is the one with the fewest
    errors (an inline recipient with one wrong value, not a file entry missing `file`);
    all of that branch's errors are shown. When branches tie, jsonschema's best_match
    picks the single most relevant error.
    """
    if error.validator not in ("oneOf", "anyOf") or not error.context:
        return [error]
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.schema_path[0] if sub.schema_path else None, []).append(sub)
    fewest = min(len(errs) for errs in branches.values())
    candidates = [errs for errs in branches.values() if len(errs) == fewest]
    chosen = candidates[0] if len(candidates) == 1 else [best_match(error.context)]
    return [cause for sub in chosen for cause in _causes(sub)]


def _schema_diagnostics(doc: SourceDocument, error: ValidationError) -> Iterator[Diagnostic]:
    path: JsonPath = tuple(error.absolute_path)
    rule = f"schema.{error.validator}"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted((error.schema.get("properties") or {}).keys()) if isinstance(error.schema, dict) else []
        for extra in sorted(set(error.instance) - set(allowed), key=str):
            close = difflib.get_close_matches(str(extra), allowed, n=1, cutoff=0.6)
            message = f"unknown key '{extra}'" + (f"; did you mean '{close[0]}'?" if close else "")
            hint = None if close else ("allowed here: " + ", ".join(allowed) if allowed else None)
            yield _diag(doc, (*path, extra), message, rule, hint=hint, key=True)
        return
    if error.validator == "required":
        where = ".".join(str(p) for p in path) or "the top level"
        yield _diag(doc, path, f"{where}: {error.message}", rule, key=True)
        return
    if error.validator == "type" and path in doc.raw_scalars:
        expected = error.validator_value
        wants_string = expected == "string" or (isinstance(expected, list) and "string" in expected)
        if wants_string:
            yield _yaml_trap(doc, path, error.instance)
            return
    where = ".".join(str(p) for p in path)
    message = _without_value(error.message, error.instance, path)
    yield _diag(doc, path, f"{where}: {message}" if where else message, rule)


SHOWN_VALUE_CHARS = 40  # longer values are cut in diagnostics


def _is_secret_name(name: object) -> bool:
    return isinstance(name, str) and name.lower().replace("_", "").replace("-", "") in SECRET_KEY_NAMES


def _shown_value(path: JsonPath, value: Any) -> str:
    """A value as a diagnostic may print it: never one that is, or sits under, a
    credential-like key or looks like a JWT (diagnostics go to CI logs and pull request
    comments); structures by their kind only, since they may hold such keys; long text cut."""
    if any(_is_secret_name(part) for part in path):
        return "(a value under a credential-like key, not shown)"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str) and JWT_PATTERN.search(value):
        return "(a value that looks like a JWT, not shown)"
    shown = repr(value)
    if len(shown) <= SHOWN_VALUE_CHARS:
        return shown
    length = f" ({len(value):,} characters)" if isinstance(value, str) else ""
    return shown[: SHOWN_VALUE_CHARS - 1] + "…" + length


def _without_value(message: str, value: Any, path: JsonPath) -> str:
    """jsonschema's message with the offending value (which it writes as its repr) replaced by `_shown_value`."""
    written = repr(value)
    return message.replace(written, _shown_value(path, value)) if written in message else message


def _yaml_trap(doc: SourceDocument, path: JsonPath, value: Any) -> Diagnostic:
    raw = doc.raw_scalars[path]
    if any(_is_secret_name(part) for part in path):
        return _diag(doc, path, "this value was not read by YAML as a string", "schema.type", hint="quote it")
    if isinstance(value, bool):
        return _diag(doc, path, f"unquoted {raw} was read by YAML as the boolean {str(value).lower()}, not a string",
                     "yaml-boolean-word", hint=f'quote it: "{raw}"')
    if isinstance(value, (int, float)):
        lost = " (leading '+' or '0' lost)" if raw.lstrip().startswith(("+", "0")) else ""
        if len(raw) > SHOWN_VALUE_CHARS:  # a number of thousands of digits: say so, not print it twice
            return _diag(doc, path, f"an unquoted {len(raw):,}-character number was read by YAML as a number, "
                         "not a string", "yaml-unquoted-number", hint="quote it")
        return _diag(doc, path, f"unquoted {raw} was read by YAML as the number {value!r}{lost}, not a string",
                     "yaml-unquoted-number", hint=f'quote it: "{raw}"')
    if not raw.strip():
        return _diag(doc, path, "empty value was read by YAML as null, not a string", "yaml-null-word",
                     hint='write a value, or "" for an empty string')
    return _diag(doc, path, f"unquoted {raw} was read by YAML as null, not a string", "yaml-null-word",
                 hint=f'quote it: "{raw}"')


# How YAML 1.1 writes a number or boolean that it reads as written; anything else it
# reads as a number or boolean changes what was typed (`0123` is 83, `12:30` is 750).
_AS_TYPED_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_AS_TYPED_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)?\.[0-9]*(?:[eE][-+]?[0-9]+)?")
_AS_TYPED_BOOL = frozenset({"true", "false"})


def _substitution_paths(data: dict[str, Any]) -> Iterator[tuple[JsonPath, dict[str, Any]]]:
    if isinstance(data.get("substitutions"), dict):
        yield ("substitutions",), data["substitutions"]
    recipients = data.get("recipients")
    for index, item in enumerate(recipients if isinstance(recipients, list) else []):
        if isinstance(item, dict) and isinstance(item.get("substitutions"), dict):
            yield ("recipients", index, "substitutions"), item["substitutions"]


def _substitution_value_checks(doc: SourceDocument, data: dict[str, Any]) -> Iterator[Diagnostic]:
    """Substitution values are sent as written, so one that YAML reads as something else
    than what was typed is refused with the quoted form to write instead."""
    for path, values in _substitution_paths(data):
        for name, value in values.items():
            raw = doc.raw_scalars.get((*path, name))
            if raw is None or isinstance(value, str):
                continue
            diagnostic = _changed_value(doc, (*path, name), raw, value)
            if diagnostic is not None:
                yield diagnostic


def _changed_value(doc: SourceDocument, path: JsonPath, raw: str, value: Any) -> Diagnostic | None:
    shown = raw if not any(_is_secret_name(part) for part in path) and len(raw) <= SHOWN_VALUE_CHARS else None
    hint = f'quote it to send the text as written: write "{shown}"' if shown is not None else "quote it"
    what = f"unquoted {shown}" if shown is not None else "an unquoted value"
    if isinstance(value, bool):
        if raw.lower() in _AS_TYPED_BOOL:
            return None
        return _diag(doc, path, f"{what} is read by YAML 1.1 as the boolean {str(value).lower()}, not as the text "
                     "written", "yaml-boolean-word", hint=hint + " (write true or false for a boolean)")
    if isinstance(value, int):
        if _AS_TYPED_INT.fullmatch(raw):
            return None
        number = "the number " + _number_text(value)
    elif isinstance(value, float):
        finite = math.isfinite(value)
        if finite and _AS_TYPED_FLOAT.fullmatch(raw):
            return None
        number = ("the number " + _number_text(value) if finite else
                  "not-a-number" if math.isnan(value) else "infinity" if value > 0 else "minus infinity")
    else:
        return None
    return _diag(doc, path, f"{what} is read by YAML 1.1 as {number}{_why_changed(raw)}, not as the text written",
                 "yaml-unquoted-number", hint=hint)


def _number_text(value: int | float) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else f"of {len(text):,} characters"


def _why_changed(raw: str) -> str:
    text = raw.lstrip("+-").lower()
    if ":" in text:
        return " (digits with ':' are read in base 60)"
    if "_" in text:
        return " ('_' is dropped)"
    if text.startswith("0x"):
        return " (0x is hexadecimal)"
    if text.startswith("0o"):
        return " (0o is octal)"
    if text.startswith(".nan") or text.startswith(".inf"):
        return ", which JSON cannot carry"  # the vendor answers 7000 to NaN
    if text.startswith("0") and len(text) > 1 and text[1].isdigit():
        return " (a leading 0 makes it octal)" if text.isdigit() else " (its leading 0 is dropped)"
    if raw.startswith("+"):
        return " (its '+' is dropped)"
    return ""


def _rule_checks(doc: SourceDocument, now: datetime) -> Iterator[Diagnostic]:
    for group in _rule_groups(doc, now):
        yield from group()


def _rule_groups(doc: SourceDocument, now: datetime) -> list[Callable[[], Iterator[Diagnostic]]]:
    """The rules in independent groups (the smartlink group reads what the text group found)."""
    data: dict[str, Any] = doc.data
    used_smartlinks: set[str] = set()
    return [
        lambda: _sender_checks(doc, data),
        lambda: _text_checks(doc, data, used_smartlinks),
        lambda: _callback_checks(doc, data),
        lambda: _schedule_checks(doc, data, now),
        lambda: _option_checks(doc, data),
        lambda: _smartlink_checks(doc, data, used_smartlinks),
        lambda: _recipient_checks(doc, data),
        lambda: _tps_checks(doc, data),
        lambda: _substitution_value_checks(doc, data),
    ]


def _sender_checks(doc: SourceDocument, data: dict[str, Any]) -> Iterator[Diagnostic]:
    sender = data["from"]
    if sender.startswith("+"):
        yield _diag(doc, ("from",), "'from' must not start with '+' (long codes are written with country code, no '+')",
                    "from-no-plus", hint=f'write "{sender.lstrip("+")}"')


def _text_checks(doc: SourceDocument, data: dict[str, Any], used_smartlinks: set[str]) -> Iterator[Diagnostic]:
    has_content, has_template = "content" in data, "template" in data
    if has_template and data.get("personalisation") == "local":
        yield _diag(doc, ("personalisation",), "a template is personalised by the platform (its text lives in "
                    "Webex Connect), so personalisation cannot be local", "personalisation-template",
                    hint="remove personalisation, or write the text under content to render it here")
    if has_content == has_template:
        message = "use either 'content' or 'template', not both" if has_content else "one of 'content' or 'template' is required"
        yield _diag(doc, ("template",) if has_content else (), message, "content-xor-template", key=has_content)
    texts = []
    if has_content:
        texts.append((("content", "text"), data["content"]["text"]))
    if has_template and "preview" in data["template"]:
        texts.append((("template", "preview"), data["template"]["preview"]))
    for path, text in texts:
        if not text.strip():
            yield _diag(doc, path, "the text is empty: every message would be blank", "text-empty",
                        hint="write the message text")
            continue
        if path == ("content", "text") and data["content"].get("type") == "text":
            offenders = non_gsm7(text)
            if offenders:
                index, char = offenders[0]
                yield _diag(doc, path, f"content type is text but the text has {char!r} (U+{ord(char):04X}, "
                            f"character {index + 1}), which GSM-7 cannot encode", "non-gsm-character",
                            hint=_gsm7_hint(char))
        if len(text) > vendor.MAX_TEXT_CHARS:
            yield _diag(doc, path, f"text is {len(text)} characters; the API takes at most {vendor.MAX_TEXT_CHARS}",
                        "text-length")
        try:
            compiled = compile_text(text, doc.locate(path))
        except CampaignError as first:
            error = _exact_text_error(doc, path, text, first) or first
            diagnostic = _diag(doc, path, error.message.split(": error: ", 1)[-1].rsplit(" [", 1)[0],
                               "template-syntax", hint=error.hint)
            where = getattr(error, "location", None)  # the line inside the text, when known
            yield Diagnostic(where, Severity.ERROR, diagnostic.message, diagnostic.rule, diagnostic.hint) \
                if isinstance(where, Location) and where.line else diagnostic
            continue
        used_smartlinks |= compiled.smartlink_ids
        if path == ("content", "text"):
            yield from _variable_checks(doc, data, compiled.variables)
            yield from _personalisation_checks(doc, data, compiled)


def _gsm7_hint(char: str) -> str:
    fix = gsm7_replacement(char)
    return (f"replace it with {fix!r}, or set content.type to unicode or auto" if fix
            else "set content.type to unicode or auto")


def _callback_checks(doc: SourceDocument, data: dict[str, Any]) -> Iterator[Diagnostic]:
    if len(data.get("callbackData", "")) > vendor.MAX_CALLBACK_DATA_CHARS:
        yield _diag(doc, ("callbackData",), f"callbackData is {len(data['callbackData'])} characters; at most "
                    f"{vendor.MAX_CALLBACK_DATA_CHARS}", "callback-data-length")


def _tps_checks(doc: SourceDocument, data: dict[str, Any]) -> Iterator[Diagnostic]:
    tps = data.get("throughput", {}).get("tps")
    if tps is not None and not 1 <= tps <= vendor.MAX_TPS:
        yield _diag(doc, ("throughput", "tps"), f"tps must be between 1 and {vendor.MAX_TPS}, got {tps}", "tps-range")


def _personalisation_checks(doc: SourceDocument, data: dict[str, Any], text: CompiledText) -> Iterator[Diagnostic]:
    """The mode an inline text is sent in. Local texts are sent literally, so a `$(` in
    one could be read by the platform as a placeholder (vendor.PLACEHOLDER_OPENER): it is
    refused here for the text itself, and by compile for a rendered text (a value)."""
    if data.get("personalisation", "local") == "local":
        opener = vendor.PLACEHOLDER_OPENER
        if opener in text.source:
            yield _diag(doc, ("content", "text"), f"the text contains '{opener}', which Webex Connect may read as "
                        "the start of a placeholder; it is never sent literally", "placeholder-in-text",
                        hint="reword it (e.g. '$ (' or 'USD('); a personalised value is a {{ variable }}")
        return
    if not text.is_plain:
        yield _diag(doc, ("personalisation",), "personalisation: platform needs a text with only plain "
                    "{{ name }} variables; this one uses Jinja2 logic, which only local rendering can run",
                    "platform-needs-plain-text", hint="remove personalisation (local is the default)")
    elif text.variables:
        yield _diag(doc, ("personalisation",), "personalisation: platform relies on Webex Connect filling "
                    "$(name) placeholders in inline text, which its API v2 reference does not document",
                    "platform-placeholders", severity=Severity.WARNING,
                    hint="run `campaign test-send FILE --to YOUR_NUMBER` once to see it on your tenant's "
                    "handsets, or remove personalisation to render texts here (local, the default)")


def parse_timestamp(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def parse_duration(value: int | str) -> int:
    if isinstance(value, int):
        return value
    if value.isdigit():
        return int(value)
    return sum(int(n) * DURATION_SECONDS[unit] for n, unit in DURATION_PART.findall(value))


def _schedule_checks(doc: SourceDocument, data: dict[str, Any], now: datetime) -> Iterator[Diagnostic]:
    moments: dict[str, datetime] = {}
    for name in ("sendAt", "expireAt"):
        if name not in data:
            continue
        moment = parse_timestamp(data[name])
        if moment is None:
            yield _diag(doc, (name,), f"{name} '{data[name]}' is not an ISO 8601 date-time", "schedule-format",
                        hint="e.g. 2026-11-25T09:00:00Z")
        elif moment.tzinfo is None:
            yield _diag(doc, (name,), f"{name} '{data[name]}' has no time zone", "schedule-no-zone",
                        hint="add Z for UTC or an offset such as +01:00")
        else:
            moments[name] = moment
            if moment <= now:
                yield _diag(doc, (name,), f"{name} {data[name]} is in the past; apply will refuse it without --send-now",
                            "schedule-past", severity=Severity.WARNING)
            elif moment - now > timedelta(seconds=vendor.MAX_SCHEDULE_AHEAD_SECONDS):
                yield _diag(doc, (name,), f"{name} is more than 7 days ahead; the API accepts at most 7 days",
                            "schedule-too-far")
    if "expireAt" in data and "validity" in data:
        yield _diag(doc, ("validity",), "use either 'expireAt' or 'validity', not both (the API rejects both)",
                    "expire-xor-validity", key=True)
    if "sendAt" in moments and "expireAt" in moments and moments["expireAt"] <= moments["sendAt"]:
        yield _diag(doc, ("expireAt",), "expireAt must be after sendAt", "expire-before-send")
    if "validity" in data:
        seconds = parse_duration(data["validity"])
        if not 1 <= seconds <= vendor.MAX_VALIDITY_SECONDS:
            yield _diag(doc, ("validity",), f"validity is {seconds} s; it must be between 1 s and 72 h", "validity-range")


def _url_problem(url: str, *, https_only: bool) -> str | None:
    if url != url.strip():
        return "has leading or trailing spaces"
    parts = urlsplit(url)
    schemes = ("https",) if https_only else ("http", "https")
    if parts.scheme not in schemes:
        return f"must be an {' or '.join(schemes)} URL"
    if not parts.hostname or " " in url:
        return "is not a well-formed URL"
    return None


def _option_checks(doc: SourceDocument, data: dict[str, Any]) -> Iterator[Diagnostic]:
    options = data.get("options")
    shorten = bool(options and options.get("shortenLinks"))
    track = bool(options and options.get("trackClicks"))
    if options is not None:
        problem = _url_problem(options["domain"], https_only=True)
        if problem:
            yield _diag(doc, ("options", "domain"), f"options.domain {problem}", "options-domain")
        if track and not shorten:
            yield _diag(doc, ("options", "trackClicks"), "trackClicks needs shortenLinks: true", "track-needs-shorten")
    if "CLICKED" in data.get("requestedReceipts", []) and not (shorten and track):
        index = data["requestedReceipts"].index("CLICKED")
        yield _diag(doc, ("requestedReceipts", index), "CLICKED receipts need options.shortenLinks and options.trackClicks",
                    "clicked-needs-tracking")
    if "notifyUrl" in data:
        problem = _url_problem(data["notifyUrl"], https_only=False)
        if problem:
            yield _diag(doc, ("notifyUrl",), f"notifyUrl {problem}", "notify-url")
    policy = data.get("contactPolicy")
    if policy is not None and not (policy.get("channelCheckConsent") or policy.get("channelApplyFrequencyCap")):
        yield _diag(doc, ("contactPolicy",), "contactPolicy needs channelCheckConsent or channelApplyFrequencyCap true",
                    "contact-policy-flag", key=True)


def _smartlink_checks(doc: SourceDocument, data: dict[str, Any], used: set[str]) -> Iterator[Diagnostic]:
    declared = {str(item["smartlinkId"]): index for index, item in enumerate(data.get("smartlinks", []))}
    for smartlink_id in sorted(used - set(declared)):
        path = ("content", "text") if "content" in data else ("template", "preview")
        yield _diag(doc, path, f"text uses {{{{ smartlink_{smartlink_id} }}}} but 'smartlinks' has no entry for "
                    f"'{smartlink_id}'", "smartlink-undeclared")
    if "content" in data:
        for smartlink_id, index in declared.items():
            if smartlink_id not in used:
                yield _diag(doc, ("smartlinks", index), f"smartlink '{smartlink_id}' is declared but the text has no "
                            f"{{{{ smartlink_{smartlink_id} }}}} token", "smartlink-unused")


def _recipient_checks(doc: SourceDocument, data: dict[str, Any]) -> Iterator[Diagnostic]:
    seen_ids: dict[str, int] = {}
    for index, item in enumerate(data["recipients"]):
        if "msisdn" in item:
            yield from _msisdn_check(doc, ("recipients", index, "msisdn"), item["msisdn"])
            cid = item.get("correlationId")
            if cid is not None:
                if cid in seen_ids:
                    first = doc.locate(("recipients", seen_ids[cid], "correlationId"))
                    yield _diag(doc, ("recipients", index, "correlationId"), f"correlationId '{cid}' is used twice",
                                "correlation-id-duplicate", hint=f"first used at line {first.line}")
                else:
                    seen_ids[cid] = index
        else:
            yield from _file_check(doc, ("recipients", index), _file_source(doc, ("recipients", index), item))
    for index, item in enumerate(data.get("exclude", [])):
        if isinstance(item, dict) and "msisdn" in item:
            yield from _msisdn_check(doc, ("exclude", index, "msisdn"), item["msisdn"])
        else:
            entry = {"file": item} if isinstance(item, str) else item
            yield from _file_check(doc, ("exclude", index), _file_source(doc, ("exclude", index), entry))


def _variable_checks(doc: SourceDocument, data: dict[str, Any], variables: frozenset[str]) -> Iterator[Diagnostic]:
    """Variables no layer can supply, found before a plan reads a single row.

    Inline recipients and CSV headers are known now; a row's empty cell or a JSON
    Lines row is only known at plan time, where the same mistake names the row.
    """
    provided = BUILTIN_VARIABLES | set(data.get("substitutions", {}))
    needed = variables - provided
    if not needed:
        return
    for index, item in enumerate(data["recipients"]):
        if "msisdn" in item:
            missing = sorted(needed - set(item.get("substitutions", {})))
            where: JsonPath = ("recipients", index)
            subject = f"recipient {item['msisdn']}"
        else:
            source = _file_source(doc, ("recipients", index), item)
            if not _inside_repository(doc, source) or _names_a_secret_file(source) is not None:
                continue  # never opened: reported by _file_check
            columns = source_columns(source)
            if columns is None:
                continue
            missing = sorted(needed - set(source.substitutions) - columns)
            where = ("recipients", index, "file")
            subject = f"{source.display_name} (columns: {', '.join(sorted(columns)) or 'none'})"
        for name in missing:
            yield _diag(doc, where, f"{subject} has no value for '{name}', used in the text", "missing-variable",
                        hint=f"add '{name}' to the campaign substitutions or to this recipient")


def _msisdn_check(doc: SourceDocument, path: JsonPath, raw: str) -> Iterator[Diagnostic]:
    if normalise_msisdn(raw) is None:
        yield _diag(doc, path, invalid_reason(raw), "msisdn-e164",
                    hint="write + country code + number, e.g. +447911123456")


def _file_check(doc: SourceDocument, path: JsonPath, source: RecipientFile) -> Iterator[Diagnostic]:
    if not _inside_repository(doc, source):
        yield _diag(doc, (*path, "file"), f"{source.display_name}: the file is outside the campaign's repository "
                    f"({campaign_root(doc.path)})", "file-outside-repo",
                    hint="recipient and exclude files must be inside the repository that holds the campaign (the "
                    "nearest folder with .git, else the campaign file's folder); symlinks are followed")
        return
    secret_variable = _names_a_secret_file(source)
    if secret_variable is not None:
        yield _diag(doc, (*path, "file"), f"{source.display_name}: the file is the one {secret_variable} names",
                    "file-outside-repo", hint="a recipient file must not be a credential file")
        return
    problem = check_source_readable(source)
    if problem:
        yield _diag(doc, (*path, "file"), f"{source.display_name}: {problem}", "recipient-file")


# The variables runner/client.py reads (not imported: that would load httpx into validate).
SECRET_FILE_VARIABLES = ("WEBEX_CONNECT_SERVICE_KEY_FILE", "WEBEX_CONNECT_JWT_FILE")


def _names_a_secret_file(source: RecipientFile) -> str | None:
    """The credential variable whose file this is, if any: a key file kept inside the
    repository (ignored by git) would otherwise be printed as "columns: ..."."""
    target = _resolved(source.path)
    for variable in SECRET_FILE_VARIABLES:
        named = os.environ.get(variable, "").strip()
        if target is not None and named and _resolved(Path(named)) == target:
            return variable
    return None


def campaign_root(campaign_path: Path) -> Path:
    """The folder a campaign's files must stay in: the nearest enclosing folder holding
    `.git` (a folder, or the file a worktree has), else the campaign file's own folder.

    Campaign files come through pull requests and `validate`/`plan` run in CI next to
    credentials: a `file:` naming /proc/self/environ or a secret file would otherwise
    have its first line printed as "columns: ...".
    """
    folder = _resolved(campaign_path.absolute().parent) or campaign_path.absolute().parent
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return candidate
    return folder


def _inside_repository(doc: SourceDocument, source: RecipientFile) -> bool:
    """After resolving symlinks, so a link inside the repository to a file outside it is refused."""
    target = _resolved(source.path)
    return target is not None and target.is_relative_to(campaign_root(doc.path))


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop; a NUL byte in the path
        return None


def _file_source(doc: SourceDocument, path: JsonPath, item: dict[str, Any]) -> RecipientFile:
    relative = Path(item["file"])
    resolved = relative if relative.is_absolute() else doc.path.parent / relative
    fmt: Literal["csv", "jsonl"] = "jsonl" if resolved.suffix.lower() in (".jsonl", ".ndjson") else "csv"
    if item.get("format") in ("csv", "jsonl"):
        fmt = item["format"]
    return RecipientFile(
        path=resolved,
        display_name=str(Path(doc.display_name).parent / relative) if not relative.is_absolute() else str(relative),
        format=fmt,
        msisdn_field=item.get("msisdnColumn", "msisdn"),
        substitutions=_written_values(doc, (*path, "substitutions"), item.get("substitutions", {})),
        location=doc.locate((*path, "file")),
    )


# --- building the typed campaign -----------------------------------------------------


def _written_values(doc: SourceDocument, path: JsonPath, values: dict[str, Any]) -> dict[str, Any]:
    """Numbers and booleans as types that print the text written in the file."""
    return {name: written(value, doc.raw_scalars.get((*path, name))) for name, value in values.items()}


def build_campaign(doc: SourceDocument) -> Campaign:
    """The validated file as typed values; only called when validation found no error."""
    data: dict[str, Any] = doc.data
    sources: list[RecipientSource] = []
    for index, item in enumerate(data["recipients"]):
        if "msisdn" in item:
            sources.append(InlineRecipient(item["msisdn"],
                                           _written_values(doc, ("recipients", index, "substitutions"),
                                                           item.get("substitutions", {})),
                                           item.get("correlationId"), doc.locate(("recipients", index))))
        else:
            sources.append(_file_source(doc, ("recipients", index), item))
    exclude: list[ExcludeSource] = []
    for index, item in enumerate(data.get("exclude", [])):
        if isinstance(item, dict) and "msisdn" in item:
            exclude.append(ExcludedNumber(item["msisdn"], doc.locate(("exclude", index, "msisdn"))))
        else:
            exclude.append(_file_source(doc, ("exclude", index), {"file": item} if isinstance(item, str) else item))
    content = data.get("content")
    template = data.get("template")
    options = data.get("options")
    policy = data.get("contactPolicy")
    return Campaign(
        id=data["id"],
        description=data.get("description"),
        sender=data["from"],
        content=Content(content.get("type", "auto"), content["text"], doc.locate(("content", "text")))
        if content else None,
        template=Template(template["id"], template.get("preview"), doc.locate(("template", "preview")))
        if template else None,
        substitutions=_written_values(doc, ("substitutions",), data.get("substitutions", {})),
        recipients=tuple(sources),
        exclude=tuple(exclude),
        send_at=parse_timestamp(data["sendAt"]) if "sendAt" in data else None,
        expire_at=parse_timestamp(data["expireAt"]) if "expireAt" in data else None,
        validity_seconds=parse_duration(data["validity"]) if "validity" in data else None,
        options=Options(options["domain"], bool(options.get("shortenLinks", False)),
                        bool(options.get("trackClicks", False)), options.get("tag1"), options.get("tag2"),
                        options.get("allowFallbackURL")) if options else None,
        requested_receipts=tuple(data.get("requestedReceipts", ())),
        notify_url=data.get("notifyUrl"),
        notify_url_auth_id=data.get("notifyUrlAuthId"),
        callback_data=data.get("callbackData"),
        contact_policy=ContactPolicy(policy["contactPolicyGroup"], bool(policy.get("channelCheckConsent", False)),
                                     bool(policy.get("channelApplyFrequencyCap", False))) if policy else None,
        smartlinks=tuple(Smartlink(str(s["smartlinkId"]), s.get("validity")) for s in data.get("smartlinks", [])),
        tps=data.get("throughput", {}).get("tps", DEFAULT_TPS),
        source=doc,
        personalisation="platform" if template else data.get("personalisation", "local"),
    )
