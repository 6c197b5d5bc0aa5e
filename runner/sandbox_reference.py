"""The sandbox's own copy of the vendor's reference: paths, codes, limits, fields, GSM-7.

Written from the vendor pages (/work/shared/seeds, and the fact sheet
shared/webex-connect-api.md), NOT imported from `runner.vendor` or `runner.segments`.
The sandbox stands in for the vendor to test our client: if it read the client's facts,
a wrong fact there (a misspelt field, a limit off by one, a character missing from the
GSM-7 table) would be mirrored here and every test would pass. Keep the two apart; a
test compares them where they must agree.

Items the pages do not settle are marked SANDBOX CHOICE: the sandbox takes the strict
reading, so a client that relies on leniency is caught here rather than in production.
"""

from __future__ import annotations

import re
from typing import Final

# --- endpoints and headers (v2 page "API endpoint"; SMS API v1 page) -----------------------

V2_MESSAGES_PATH: Final = "/v2/messages"
V1_SMS_PATH: Final = "/v1/sms/messages"
SERVICE_KEY_HEADER: Final = "key"
JWT_HEADER: Final = "Authorization"
JWT_SCHEME: Final = "Bearer"
JWT_ALGORITHM: Final = "HS256"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
IDEMPOTENCY_KEY_MAX: Final = 64  # "≤64 chars", sandbox SMS v1 reference
IDEMPOTENCY_WINDOW_SECONDS: Final = 3600  # "reused within the previous 1 hour"
JSON_MEDIA_TYPE: Final = "application/json"

# --- answers --------------------------------------------------------------------------

V2_SUCCESS_STATUS: Final = 201
V1_SUCCESS_STATUS: Final = 202
V2_ACCEPTED_STATUS: Final = "queued"

INVALID_JSON: Final = "7000"
AUTH_FAILED: Final = "7001"
KEY_MISSING: Final = "7002"
PARAM_MISSING: Final = "7003"
PARAM_INVALID: Final = "7004"
INTERNAL_ERROR: Final = "7006"
TOO_MANY_DESTINATIONS: Final = "7009"
RATE_LIMIT_CODE: Final = "7020"
JSON_TOO_LARGE: Final = "7022"
INVALID_TEMPLATE: Final = "7108"
# From the Voice table of the status-code page ("7126 Invalid content type"); the SMS
# pages name no code for a body that is not JSON. SANDBOX CHOICE: answer 415 with it.
INVALID_CONTENT_TYPE: Final = "7126"

ERROR_MEANINGS: Final[dict[str, str]] = {
    INVALID_JSON: "Invalid JSON",
    AUTH_FAILED: "Authentication failed",
    KEY_MISSING: "Service Key Missing",
    PARAM_MISSING: "Mandatory parameters missing",
    PARAM_INVALID: "Invalid parameters/values",
    INTERNAL_ERROR: "Internal error occurred",
    TOO_MANY_DESTINATIONS: "Max number of destination addresses limited to 1000",
    RATE_LIMIT_CODE: "You have reached the maximum transaction limit",
    JSON_TOO_LARGE: "JSON size exceeded",
    INVALID_TEMPLATE: "Invalid template ID",
    INVALID_CONTENT_TYPE: "Invalid content type",
}
V1_AUTH_FAILED_MESSAGE: Final = "Authentication failed."  # the v1 page's 403 body, with its period
INVALID_PARAMETER_MESSAGE: Final = "Invalid parameter - {name}"  # 400 example: "Invalid parameter - sendAt"
DESTINATION_LIMIT_MESSAGE: Final = "Max number of destination addresses limited to {limit}"

# --- limits -----------------------------------------------------------------------------

MAX_DESTINATIONS_PER_REQUEST: Final = 1000  # "a maximum of 1000 destinations at once"
MAX_TEXT_CHARS: Final = 1024  # v2: "A maximum of 1024 characters"; the v1 sandbox reference says the same
MAX_CALLBACK_DATA_CHARS: Final = 2000  # "including any spaces is 2000"
MAX_SCHEDULE_AHEAD_SECONDS: Final = 7 * 24 * 3600  # "upto 7 days in advance"
MAX_VALIDITY_SECONDS: Final = 72 * 3600  # fact sheet §6
# SANDBOX CHOICE: no length is documented for correlationId; an id is an id, not a payload.
MAX_CORRELATION_ID_CHARS: Final = 256
# SANDBOX CHOICE: a sendAt this far in the past is taken as a clock or typing mistake
# (the vendor would have to send it at once, which is not what "scheduling" asked for).
SEND_AT_PAST_TOLERANCE_SECONDS: Final = 300

SMS_CHANNEL: Final = "sms"
CONTENT_TYPES: Final = ("text", "unicode")  # "Acceptable values are: 'text' and 'unicode'"
RECEIPT_TYPES: Final = ("SUBMITTED", "SENT", "DELIVERED", "CLICKED", "FAILED")
E164_PATTERN: Final = re.compile(r"^\+[1-9][0-9]{6,14}$")

# The v2 sample writes `"trackClicks": "true"` while the field table says boolean: both are taken.
BOOLEAN_STRINGS: Final = ("true", "false")

# --- fields, per object (the v2 body parameters table and samples; the v1 table) -----------

V2_FIELDS: Final = frozenset({
    "channel", "from", "to", "substitutions", "options", "requestedReceipts", "content", "template",
    "sendAt", "expireAt", "validity", "callbackData", "notifyUrl", "notifyUrlAuthId", "contactPolicy",
    "smartlinks", "batchId",
})
V2_DESTINATION_FIELDS: Final = frozenset({"msisdn", "substitutions", "correlationId"})
V2_CONTENT_FIELDS: Final = frozenset({"type", "text"})
V2_TEMPLATE_FIELDS: Final = frozenset({"id"})
V2_OPTIONS_FIELDS: Final = frozenset({"trackClicks", "shortenLinks", "domain", "allowFallbackURL", "tag1", "tag2"})
V2_CONTACT_POLICY_FIELDS: Final = frozenset({"contactPolicyGroup", "channelCheckConsent", "channelApplyFrequencyCap"})
V2_SMARTLINK_FIELDS: Final = frozenset({"smartlinkId", "validity"})
V1_FIELDS: Final = frozenset({
    "from", "to", "content", "contentType", "substitutions", "dltTemplateId", "shortenUrls", "shortUrlDomain",
    "trackShortUrlClicks", "expireAt", "correlationId", "callbackData", "callbackUrl", "callbackUrlAuthId",
})

# --- substitutions and receipts (fact sheet §4, §5) -------------------------------------------

PLACEHOLDER: Final = re.compile(r"\$\(([^\s$()]+)\)")  # `$(name)`, the v1 sample's syntax
RECEIPT_ENVELOPE: Final = "deliveryInfoNotification"
RECEIPT_DELIVERED: Final = "7500"
RECEIPT_SUBMITTED: Final = "7501"
RECEIPT_CLICKED: Final = "7528"
RECEIPT_STATUS_BY_CODE: Final[dict[str, str]] = {
    RECEIPT_DELIVERED: "Delivered",
    RECEIPT_SUBMITTED: "Submitted",
    RECEIPT_CLICKED: "Clicked",
}
RECEIPT_CODES_BY_REQUEST: Final[dict[str, str]] = {
    "SUBMITTED": RECEIPT_SUBMITTED, "SENT": RECEIPT_SUBMITTED, "DELIVERED": RECEIPT_DELIVERED,
    "CLICKED": RECEIPT_CLICKED,
}

# --- GSM-7 (3GPP TS 23.038), and what a handset is billed ---------------------------------

GSM7_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION: Final = frozenset("\x0c^{}\\[~]|€")  # ESC + char: two septets each


def is_gsm7(text: str) -> bool:
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


def segments(text: str, *, unicode: bool) -> int:
    """Parts of a concatenated SMS: GSM-7 160 / 153 septets, UCS-2 70 / 67 code units; an
    ESC pair or a surrogate pair never splits across parts."""
    if unicode or not is_gsm7(text):
        costs = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
        single, part = 70, 67
    else:
        costs = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
        single, part = 160, 153
    if sum(costs) <= single:
        return 1
    parts, used = 1, 0
    for cost in costs:
        if used + cost > part:
            parts, used = parts + 1, 0
        used += cost
    return parts
