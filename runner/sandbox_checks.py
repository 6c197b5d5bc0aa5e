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

from runner import vendor
from runner.model import Encoding
from runner.segments import is_gsm7
from runner.vendor import (
    CONTENT_TYPES,
    DESTINATION_LIMIT_MESSAGE,
    E164_PATTERN,
    INVALID_JSON,
    INVALID_PARAMETER_MESSAGE,
    INVALID_TEMPLATE,
    PARAM_INVALID,
    PARAM_MISSING,
    RECEIPT_CODES_BY_REQUEST,
    RECEIPT_DELIVERED,
    RECEIPT_SUBMITTED,
    SMS_CHANNEL,
    TOO_MANY_DESTINATIONS,
)

_PREFIX, _SUFFIX = vendor.PLACEHOLDER_TEMPLATE.split("{name}")
_PLACEHOLDER: Final = re.compile(
    re.escape(_PREFIX) + r"([^\s" + re.escape(_PREFIX + _SUFFIX) + r"]+)" + re.escape(_SUFFIX)
)


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
    return Reject(400, PARAM_MISSING, f"{vendor.ERROR_MEANINGS[PARAM_MISSING]} - {name}")


def invalid(name: str) -> Reject:
    return Reject(400, PARAM_INVALID, INVALID_PARAMETER_MESSAGE.format(name=name))


def meaning(status: int, code: str) -> Reject:
    return Reject(status, code, vendor.ERROR_MEANINGS[code])


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
    # The v2 sample sends booleans as strings (vendor.OPTIONS_BOOLEANS_AS_STRINGS).
    return isinstance(value, bool) or value in ("true", "false")


def _check_sender(value: Any) -> None:
    if not isinstance(value, str) or value.startswith("+"):
        raise invalid("from")


def _check_msisdn(value: Any, name: str) -> str:
    if not isinstance(value, str) or not E164_PATTERN.match(value):
        raise invalid(name)
    return value


def _check_text(text: Any, content_type: str, text_name: str, type_name: str) -> str:
    if not isinstance(text, str) or len(text) > vendor.MAX_TEXT_CHARS:
        raise invalid(text_name)
    if content_type == "text" and not is_gsm7(text):
        raise invalid(type_name)
    return text


def _check_timestamp(body: Mapping[str, Any], name: str) -> None:
    value = body.get(name)
    if value is None:
        return
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise invalid(name)
    if moment - datetime.now(timezone.utc) > timedelta(seconds=vendor.MAX_SCHEDULE_AHEAD_SECONDS):
        raise invalid(name)


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
    if not isinstance(value, str) or len(value) > vendor.MAX_CALLBACK_DATA_CHARS:
        raise invalid("callbackData")
    return value


def _check_substitutions(value: Any, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(name)
    out: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            out[key] = "true" if item else "false"
        elif isinstance(item, (str, int, Decimal)):
            out[key] = str(item)  # Decimal keeps the number as written: 1.50 stays "1.50"
        else:
            raise invalid(f"{name}.{key}")
    return out


def _substitute(text: str, personal: Mapping[str, str], common: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        return personal.get(name, common.get(name, match.group(0)))

    return _PLACEHOLDER.sub(one, text)


def validate_v2(body: Mapping[str, Any], templates: Mapping[str, str], limit: int) -> Plan:
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

    if sum(len(entry["msisdn"]) for entry in to) > limit:
        raise Reject(400, TOO_MANY_DESTINATIONS, DESTINATION_LIMIT_MESSAGE.format(limit=limit))

    _check_sender(body["from"])
    entries: list[tuple[list[str], str | None, dict[str, str]]] = []
    for entry in to:
        numbers = [_check_msisdn(m, "to.msisdn") for m in entry["msisdn"]]
        correlation = entry.get("correlationId")
        if correlation is not None and not isinstance(correlation, str):
            raise invalid("to.correlationId")
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
                                     and 1 <= int(validity) <= vendor.MAX_VALIDITY_SECONDS):
        raise invalid("validity")
    _check_timestamp(body, "sendAt")
    _check_timestamp(body, "expireAt")
    callback_data = _check_callback_data(body.get("callbackData"))
    options = body.get("options")
    if options is not None:
        if not isinstance(options, dict) or _blank(options.get("domain")) or not isinstance(options["domain"], str):
            raise invalid("options.domain")
        for flag in ("trackClicks", "shortenLinks", "allowFallbackURL"):
            if flag in options and not _boolish(options[flag]):
                raise invalid(f"options.{flag}")
    requested = body.get("requestedReceipts")
    if requested is not None and (not isinstance(requested, list)
                                  or any(r not in vendor.RECEIPT_TYPES for r in requested)):
        raise invalid("requestedReceipts")
    notify_url = _check_url(body.get("notifyUrl"), "notifyUrl")
    common = _check_substitutions(body.get("substitutions"), "substitutions")
    _check_contact_policy(body.get("contactPolicy"))
    smartlinks = body.get("smartlinks")
    if smartlinks is not None and (not isinstance(smartlinks, list) or any(
            not isinstance(s, dict) or _blank(s.get("smartlinkId")) for s in smartlinks)):
        raise invalid("smartlinks")

    if template is not None:
        if template["id"] not in templates:
            raise meaning(400, INVALID_TEMPLATE)
        text = templates[template["id"]]

    wanted = {RECEIPT_CODES_BY_REQUEST.get(r) for r in requested} if requested else None
    return Plan(
        destinations=[(m, corr, _substitute(text, personal, common)) for numbers, corr, personal in entries
                      for m in numbers],
        encoding=encoding,
        correlation_id=entries[0][1] or "",
        notify_url=notify_url,
        callback_data=callback_data,
        receipt_codes=tuple(c for c in (RECEIPT_SUBMITTED, RECEIPT_DELIVERED) if wanted is None or c in wanted),
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


def validate_v1(body: Mapping[str, Any]) -> Plan:
    for name in ("from", "to", "content"):
        if _blank(body.get(name)):
            raise _missing(name)
    _check_sender(body["from"])
    msisdn = _check_msisdn(body["to"], "to")
    content_type = body.get("contentType") or "text"
    if not isinstance(content_type, str) or content_type.lower() not in CONTENT_TYPES:
        raise invalid("contentType")
    content_type = content_type.lower()
    text = _check_text(body["content"], content_type, "content", "contentType")
    correlation = body.get("correlationId")
    if correlation is not None and not isinstance(correlation, str):
        raise invalid("correlationId")
    callback_data = _check_callback_data(body.get("callbackData"))
    callback_url = _check_url(body.get("callbackUrl"), "callbackUrl")
    _check_timestamp(body, "expireAt")
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
        receipt_codes=(RECEIPT_SUBMITTED, RECEIPT_DELIVERED),
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
