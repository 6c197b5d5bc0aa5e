"""Facts about the Webex Connect messaging APIs, in one place.

Every stage that needs a vendor fact imports it from here, so that when the vendor
confirms (or changes) something, one line changes. Facts marked UNCONFIRMED in
`shared/webex-connect-api.md` are marked the same way below.
"""

from __future__ import annotations

import re
from typing import Final

# --- hosts and paths (fact sheet §2) -------------------------------------------------

REGIONS: Final[dict[str, str]] = {
    "ca": "AWS Canada",
    "eu": "AWS Ireland (EU)",
    "uk": "AWS London (UK)",
    "us": "AWS Oregon (US)",
    "us1": "USA Azure",
    "in": "AWS Mumbai (IN)",
    "au": "AWS Sydney (AU)",
}
BASE_URL_TEMPLATE: Final = "https://api.{region}.webexconnect.io"
V2_MESSAGES_PATH: Final = "/v2/messages"
V1_SMS_PATH: Final = "/v1/sms/messages"

# --- authentication (fact sheet §1) --------------------------------------------------

SERVICE_KEY_HEADER: Final = "key"
JWT_HEADER: Final = "Authorization"
JWT_SCHEME: Final = "Bearer"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
IDEMPOTENCY_KEY_MAX: Final = 64
# UNCONFIRMED: the Idempotency-Key header is documented for the sandbox SMS v1 reference
# only; we send it on v2 as well and rely on the ledger for exactly-once either way.
IDEMPOTENCY_WINDOW_SECONDS: Final = 3600

# --- limits (fact sheet §6) ----------------------------------------------------------

MAX_DESTINATIONS_PER_REQUEST: Final = 1000
# The v2 page says 1024; the v1 pages say 4000. We enforce the stricter documented limit.
MAX_TEXT_CHARS: Final = 1024
MAX_CALLBACK_DATA_CHARS: Final = 2000
MAX_SCHEDULE_AHEAD_SECONDS: Final = 7 * 24 * 3600
MAX_VALIDITY_SECONDS: Final = 72 * 3600
# UNCONFIRMED: no vendor maximum TPS is documented (it is raised through the account
# manager); this bounds typos such as `tps: 1000000`.
MAX_TPS: Final = 10_000
RECEIPT_TYPES: Final = ("SUBMITTED", "SENT", "DELIVERED", "CLICKED", "FAILED")
# UNCONFIRMED: the v2 field table types trackClicks/shortenLinks as boolean, but the
# vendor's own request sample sends them as strings ("true"). We follow the sample.
OPTIONS_BOOLEANS_AS_STRINGS: Final = True

# --- substitutions (fact sheet §5) ---------------------------------------------------

# UNCONFIRMED: `$(name)` is the only documented in-text placeholder (SMS API v1 sample);
# the v2 reference describes `substitutions` as values "typically used for specifying
# the values for dynamic fields in an SMS template" and shows no in-text placeholder.
# Whether v2 fills `$(name)` in an inline `content.text` is unknown: only campaigns with
# `personalisation: platform` rely on it (`campaign test-send` shows it on a tenant);
# the default, local personalisation, sends final texts and no placeholder.
PLACEHOLDER_TEMPLATE: Final = "$({name})"
# UNCONFIRMED: whether the platform reads `$(` in a v2 `content.text` as a placeholder
# even when the request carries no `substitutions` (and what it then prints). Neither
# vendor page says; local personalisation therefore never sends it (refused at plan).
PLACEHOLDER_OPENER: Final = "$("
SMARTLINK_TOKEN_PREFIX: Final = "smartlink_"

# --- errors (fact sheet §3.3) --------------------------------------------------------

ERROR_MEANINGS: Final[dict[str, str]] = {
    "7000": "Invalid JSON",
    "7001": "Authentication failed",
    "7002": "Service Key Missing",
    "7003": "Mandatory parameters missing",
    "7004": "Invalid parameters/values",
    "7005": "Request expired",
    "7006": "Internal error occurred",
    "7007": "Service inactive",
    "7009": "Max number of destination addresses limited to 1000",
    "7010": "Source IP is not in the allowed list",
    "7020": "Maximum transaction limit reached (rate limit / TPS exceeded)",
    "7022": "JSON size exceeded",
    "7101": "Invalid sender ID",
    "7102": "Invalid destination address",
    "7104": "Invalid app id",
    "7107": "Message length exceeded",
    "7108": "Invalid template ID",
    "7200": "Unknown status",
}
RATE_LIMIT_CODE: Final = "7020"
# UNCONFIRMED: the HTTP status carrying 7020 (429 or 400) and any Retry-After header.
RATE_LIMIT_HTTP_STATUSES: Final = frozenset({429})
# Codes worth another attempt: rate limit and the vendor's own internal error.
RETRYABLE_CODES: Final = frozenset({RATE_LIMIT_CODE, "7006"})
# The vendor's documented success statuses: 201 (v2), 202 (v1). Any 2xx is accepted.
V2_SUCCESS_STATUS: Final = 201
V1_SUCCESS_STATUS: Final = 202

# --- codes and wording, by name (fact sheet §3.3, §4; the seeds' samples) --------------

INVALID_JSON: Final = "7000"
AUTH_FAILED: Final = "7001"
KEY_MISSING: Final = "7002"
PARAM_MISSING: Final = "7003"
PARAM_INVALID: Final = "7004"
INTERNAL_ERROR: Final = "7006"
TOO_MANY_DESTINATIONS: Final = "7009"
JSON_TOO_LARGE: Final = "7022"
INVALID_TEMPLATE: Final = "7108"
RECEIPT_SUBMITTED: Final = "7501"
RECEIPT_DELIVERED: Final = "7500"
SMS_CHANNEL: Final = "sms"
CONTENT_TYPES: Final = ("text", "unicode")
V2_ACCEPTED_STATUS: Final = "queued"
V1_AUTH_FAILED_MESSAGE: Final = "Authentication failed."  # the v1 page's wording, with the period
INVALID_PARAMETER_MESSAGE: Final = "Invalid parameter - {name}"
DESTINATION_LIMIT_MESSAGE: Final = "Max number of destination addresses limited to {limit}"
JWT_ALGORITHM: Final = "HS256"  # the Service Secret is Base64 and is decoded before signing
E164_PATTERN: Final = re.compile(r"^\+[1-9][0-9]{6,14}$")
RECEIPT_CODES_BY_REQUEST: Final = {"SUBMITTED": RECEIPT_SUBMITTED, "SENT": RECEIPT_SUBMITTED,
                                   "DELIVERED": RECEIPT_DELIVERED}


def error_meaning(code: str | None) -> str:
    """The vendor's wording for an error code, so a failure reads as more than a number."""
    if code is None:
        return "no error code in the answer"
    return ERROR_MEANINGS.get(code, "code not in the vendor's table")


# --- receipts (fact sheet §4) --------------------------------------------------------

RECEIPT_ENVELOPE: Final = "deliveryInfoNotification"
RECEIPT_STATUS_BY_CODE: Final[dict[str, str]] = {
    "7500": "Delivered",
    "7501": "Submitted",
    "7528": "Clicked",
}
# UNCONFIRMED: that the receipt's `transid` equals the v2 `messageId`; receipts are
# matched on `correlationid` first for that reason.
# UNCONFIRMED: that the vendor retries a receipt webhook answered with something other
# than a 2xx, and how (credentials through `notifyUrlAuthId` too). `campaign receipts
# listen` answers 200 only once a receipt is committed, so a retry would cover a crash;
# without one, a receipt refused (401, 503) or unanswered is lost, never wrongly stored.
