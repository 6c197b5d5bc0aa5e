"""The vendor's request rules, as pure functions from a parsed body to a plan.

Kept apart from the server in `runner.sandbox` so the rules can be read, and changed,
against the fact sheet (§1-§6) without wading through sockets, threads and fault
injection. They do no I/O (they read only the clock, for sendAt and expireAt), so a
rule can be checked by calling it. Checks run in the vendor's order and the first
failure wins, so a bad request should get the same error here as from the vendor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final
from urllib.parse import urlsplit

from runner.model import Encoding
from runner.sandbox_reference import (
    BOOLEAN_STRINGS,
    CONTENT_TYPES,
    DESTINATION_LIMIT_MESSAGE,
    E164_PATTERN,
    ERROR_MEANINGS,
    INVALID_CONTENT_TYPE,
    INVALID_JSON,
    INVALID_PARAMETER_MESSAGE,
    INVALID_TEMPLATE,
    JSON_MEDIA_TYPE,
    MAX_CALLBACK_DATA_CHARS,
    MAX_CORRELATION_ID_CHARS,
    MAX_SCHEDULE_AHEAD_SECONDS,
    MAX_TEXT_CHARS,
    MAX_VALIDITY_SECONDS,
    PARAM_INVALID,
    PARAM_MISSING,
    PLACEHOLDER,
    RECEIPT_CLICKED,
    RECEIPT_CODES_BY_REQUEST,
    RECEIPT_DELIVERED,
    RECEIPT_SUBMITTED,
    RECEIPT_TYPES,
    SEND_AT_PAST_TOLERANCE_SECONDS,
    SMS_CHANNEL,
    TOO_MANY_DESTINATIONS,
    V1_FIELDS,
    V2_CONTACT_POLICY_FIELDS,
    V2_CONTENT_FIELDS,
    V2_DESTINATION_FIELDS,
    V2_FIELDS,
    V2_OPTIONS_FIELDS,
    V2_SMARTLINK_FIELDS,
    V2_TEMPLATE_FIELDS,
    is_gsm7,
)

_PLACEHOLDER: Final = PLACEHOLDER
# An http(s) link in a text: what shortenLinks shortens and a CLICKED receipt reports.
LINK: Final = re.compile(r"https?://[^\s]+")


# --- refusals ----------------------------------------------------------------------


class Reject(Exception):
    """Raised from deep inside validation so that the first failing check wins, as the
    vendor answers one error per request."""

    def __init__(self, status: int, code: str, message: str | None,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(code)
        self.code = code
        self.status = status
        self.body = None if message is None else {"code": code, "message": message}
        self.headers = headers


def _missing(name: str) -> Reject:
    return Reject(400, PARAM_MISSING, f"{ERROR_MEANINGS[PARAM_MISSING]} - {name}")


def invalid(name: str) -> Reject:
    return Reject(400, PARAM_INVALID, INVALID_PARAMETER_MESSAGE.format(name=name))


def meaning(status: int, code: str) -> Reject:
    return Reject(status, code, ERROR_MEANINGS[code])


# --- validation: pure functions from a parsed body to a plan --------------------------


@dataclass(frozen=True)
class Plan:
    destinations: list[tuple[str, str | None, str]]  # msisdn, correlation id, final text
    encoding: Encoding | None
    correlation_id: str
    notify_url: str | None
    callback_data: str
    receipt_codes: tuple[str, ...]


def _blank(value: Any) -> bool:
    return value is None or value == ""


def _boolish(value: Any) -> bool:
    # The v2 field table says boolean; its sample sends "true": both are taken.
    return isinstance(value, bool) or value in BOOLEAN_STRINGS


def _truthy(value: Any) -> bool:
    return value is True or value == "true"


def _only_known(value: Any, known: frozenset[str], prefix: str) -> None:
    """An unknown (or misspelt: `notifyURL`, `sendat`) field is refused, never ignored:
    ignoring it would silently drop what the client meant to ask for."""
    if isinstance(value, dict):
        for name in value:
            if name not in known:
                raise invalid(f"{prefix}{name}")


def check_content_type(value: str | None) -> None:
    """The body must be declared JSON (`application/json`, parameters such as charset allowed)."""
    media_type = (value or "").split(";", 1)[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        raise Reject(415, INVALID_CONTENT_TYPE, ERROR_MEANINGS[INVALID_CONTENT_TYPE])


def _check_sender(value: Any) -> None:
    if not isinstance(value, str) or value.startswith("+"):
        raise invalid("from")


def _check_msisdn(value: Any, name: str) -> str:
    if not isinstance(value, str) or not E164_PATTERN.match(value):
        raise invalid(name)
    return value


def _check_text(text: Any, content_type: str, text_name: str, type_name: str) -> str:
    if not isinstance(text, str) or len(text) > MAX_TEXT_CHARS:
        raise invalid(text_name)
    if content_type == "text" and not is_gsm7(text):
        raise invalid(type_name)
    return text


def _check_timestamp(body: Mapping[str, Any], name: str, now: datetime | None) -> None:
    value = body.get(name)
    if value is None:
        return
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise invalid(name)
    ahead = moment - (now or datetime.now(timezone.utc))
    if ahead > timedelta(seconds=MAX_SCHEDULE_AHEAD_SECONDS):
        raise invalid(name)
    if name == "sendAt" and ahead < -timedelta(seconds=SEND_AT_PAST_TOLERANCE_SECONDS):
        raise invalid(name)  # scheduling in the past (2020) is a mistake, not "send now"


def _check_url(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None  # the vendor's own samples send "" for "no notifyUrl"
    if not isinstance(value, str) or value != value.strip():
        raise invalid(name)
    parts = urlsplit(value)
    try:
        parts.port
    except ValueError:
        raise invalid(name) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid(name)
    return value


def _check_callback_data(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_CALLBACK_DATA_CHARS:
        raise invalid("callbackData")
    return value


def _check_substitutions(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(name)
    out: dict[str, str] = {}
    for key, item in value.items():
        # Key-value pairs of strings. A boolean is refused: what would the handset read,
        # true, True or 1? Numbers are taken as written (Decimal keeps 1.50 as "1.50").
        if isinstance(item, bool) or not isinstance(item, (str, int, Decimal)):
            raise invalid(f"{name}.{key}")
        out[key] = str(item)
    return out


def _check_correlation_id(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_CORRELATION_ID_CHARS:
        raise invalid(name)
    return value


def _check_domain(value: Any) -> None:
    """`options.domain` is the short-link domain: a URL (the sample's "https://s.imiconnect.co")."""
    if _blank(value) or not isinstance(value, str):
        raise invalid("options.domain")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or value != value.strip():
        raise invalid("options.domain")


def _substitute(text: str, personal: Mapping[str, str], common: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        return personal.get(name, common.get(name, match.group(0)))

    return _PLACEHOLDER.sub(one, text)


def validate_v2(body: Mapping[str, Any], templates: Mapping[str, str], limit: int,
                now: datetime | None = None) -> Plan:
    """Checks run in the vendor's code order: 7003, then 7009, then 7004, then 7108."""
    if body.get("channel") != SMS_CHANNEL:
        raise _missing("channel")
    if _blank(body.get("from")):
        raise _missing("from")
    to = body.get("to")
    if not isinstance(to, list) or not to:
        raise _missing("to")
    for entry in to:
        if not isinstance(entry, dict) or not isinstance(entry.get("msisdn"), list) or not entry["msisdn"]:
            raise _missing("to.msisdn")
    content, template = body.get("content"), body.get("template")
    if content is None and template is None:
        raise _missing("content")
    if isinstance(content, dict):
        for name in ("type", "text"):
            if _blank(content.get(name)):
                raise _missing(f"content.{name}")
    if isinstance(template, dict) and _blank(template.get("id")):
        raise _missing("template.id")

    smartlinks = body.get("smartlinks")
    if isinstance(smartlinks, list):
        for link in smartlinks:
            if isinstance(link, dict):
                for name in ("smartlinkId", "validity"):  # both "yes" in the smartlinks table
                    if _blank(link.get(name)):
                        raise _missing(f"smartlinks.{name}")

    if sum(len(entry["msisdn"]) for entry in to) > limit:
        raise Reject(400, TOO_MANY_DESTINATIONS, DESTINATION_LIMIT_MESSAGE.format(limit=limit))

    _only_known(body, V2_FIELDS, "")
    for entry in to:
        _only_known(entry, V2_DESTINATION_FIELDS, "to.")
    _only_known(content, V2_CONTENT_FIELDS, "content.")
    _only_known(template, V2_TEMPLATE_FIELDS, "template.")
    _only_known(body.get("options"), V2_OPTIONS_FIELDS, "options.")
    _only_known(body.get("contactPolicy"), V2_CONTACT_POLICY_FIELDS, "contactPolicy.")
    if isinstance(smartlinks, list):
        for link in smartlinks:
            _only_known(link, V2_SMARTLINK_FIELDS, "smartlinks.")
    _check_sender(body["from"])
    entries: list[tuple[list[str], str | None, dict[str, str]]] = []
    for entry in to:
        numbers = [_check_msisdn(m, "to.msisdn") for m in entry["msisdn"]]
        correlation = _check_correlation_id(entry.get("correlationId"), "to.correlationId")
        entries.append((numbers, correlation, _check_substitutions(entry.get("substitutions"), "to.substitutions")))
    encoding: Encoding | None = None
    if content is not None and template is not None:
        raise invalid("template")  # one or the other, never both
    if content is not None:
        if not isinstance(content, dict) or content["type"] not in CONTENT_TYPES:
            raise invalid("content.type")
        text = _check_text(content["text"], content["type"], "content.text", "content.type")
        encoding = Encoding.UCS2 if content["type"] == "unicode" else None
    elif not isinstance(template, dict) or not isinstance(template["id"], str):
        raise invalid("template.id")
    if body.get("expireAt") is not None and body.get("validity") is not None:
        raise invalid("validity")
    validity = body.get("validity")
    if validity is not None and not (isinstance(validity, str) and validity.isascii() and validity.isdigit()
                                     and 1 <= int(validity) <= MAX_VALIDITY_SECONDS):
        raise invalid("validity")
    _check_timestamp(body, "sendAt", now)
    _check_timestamp(body, "expireAt", now)
    callback_data = _check_callback_data(body.get("callbackData"))
    options = body.get("options")
    if options is not None:
        if not isinstance(options, dict):
            raise invalid("options")
        _check_domain(options.get("domain"))
        for flag in ("trackClicks", "shortenLinks", "allowFallbackURL"):
            if flag in options and not _boolish(options[flag]):
                raise invalid(f"options.{flag}")
    requested = body.get("requestedReceipts")
    if requested is not None and (not isinstance(requested, list)
                                  or any(r not in RECEIPT_TYPES for r in requested)):
        raise invalid("requestedReceipts")
    notify_url = _check_url(body.get("notifyUrl"), "notifyUrl")
    common = _check_substitutions(body.get("substitutions"), "substitutions")
    _check_contact_policy(body.get("contactPolicy"))
    if smartlinks is not None and (not isinstance(smartlinks, list) or any(
            not isinstance(s, dict) or _blank(s.get("smartlinkId")) for s in smartlinks)):
        raise invalid("smartlinks")

    if template is not None:
        if template["id"] not in templates:
            raise meaning(400, INVALID_TEMPLATE)
        text = templates[template["id"]]

    wanted = {RECEIPT_CODES_BY_REQUEST.get(r) for r in requested} if requested else None
    # CLICKED only with shortenLinks and trackClicks (v2 page): asking for it alone gets none.
    tracked = isinstance(options, dict) and _truthy(options.get("shortenLinks")) and _truthy(
        options.get("trackClicks"))
    codes = [RECEIPT_SUBMITTED, RECEIPT_DELIVERED] + ([RECEIPT_CLICKED] if tracked else [])
    return Plan(
        destinations=[(m, corr, _substitute(text, personal, common)) for numbers, corr, personal in entries
                      for m in numbers],
        encoding=encoding,
        correlation_id=entries[0][1] or "",
        notify_url=notify_url,
        callback_data=callback_data,
        receipt_codes=tuple(c for c in codes if wanted is None or c in wanted),
    )


def _check_contact_policy(policy: Any) -> None:
    if policy is None:
        return
    if not isinstance(policy, dict):
        raise invalid("contactPolicy")
    flags = [policy.get(k) for k in ("channelCheckConsent", "channelApplyFrequencyCap")]
    if any(f is not None and not isinstance(f, bool) for f in flags) or True not in flags:
        raise invalid("contactPolicy")
    if _blank(policy.get("contactPolicyGroup")):
        raise _missing("contactPolicy.contactPolicyGroup")


def validate_v1(body: Mapping[str, Any], now: datetime | None = None) -> Plan:
    for name in ("from", "to", "content"):
        if _blank(body.get(name)):
            raise _missing(name)
    _only_known(body, V1_FIELDS, "")
    _check_sender(body["from"])
    msisdn = _check_msisdn(body["to"], "to")
    content_type = body.get("contentType") or "text"
    if not isinstance(content_type, str) or content_type.lower() not in CONTENT_TYPES:
        raise invalid("contentType")
    content_type = content_type.lower()
    text = _check_text(body["content"], content_type, "content", "contentType")
    correlation = _check_correlation_id(body.get("correlationId"), "correlationId")
    callback_data = _check_callback_data(body.get("callbackData"))
    callback_url = _check_url(body.get("callbackUrl"), "callbackUrl")
    _check_timestamp(body, "expireAt", now)
    for flag in ("shortenUrls", "trackShortUrlClicks"):
        if flag in body and not _boolish(body[flag]):
            raise invalid(flag)
    if "shortUrlDomain" in body and not isinstance(body["shortUrlDomain"], str):
        raise invalid("shortUrlDomain")
    common = _check_substitutions(body.get("substitutions"), "substitutions")
    return Plan(
        destinations=[(msisdn, correlation, _substitute(text, {}, common))],
        encoding=Encoding.UCS2 if content_type == "unicode" else None,
        correlation_id=correlation or "",
        notify_url=callback_url,
        callback_data=callback_data,
        receipt_codes=(RECEIPT_SUBMITTED, RECEIPT_DELIVERED) + (
            (RECEIPT_CLICKED,) if _truthy(body.get("shortenUrls")) and _truthy(body.get("trackShortUrlClicks"))
            else ()),
    )


def parse_json(data: bytes) -> dict[str, Any]:
    def no_constants(name: str) -> Any:
        raise ValueError(name)  # NaN/Infinity are not JSON; the vendor's parser refuses them

    try:
        body = json.loads(data.decode("utf-8"), parse_float=Decimal, parse_constant=no_constants)
    except ValueError:  # also UnicodeDecodeError and JSONDecodeError
        raise meaning(400, INVALID_JSON) from None
    if not isinstance(body, dict):
        raise meaning(400, INVALID_JSON)
    return body
