"""The dry run: what a campaign will send, to whom, at what cost, before anything leaves.

A plan runs the whole compile stream (so every recipient is rendered, every bad row
and missing variable is found) but keeps only counters and the first messages, so a
plan over a million recipients needs no more memory than one over ten.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

from .compile import Compiled, Compiler, content_digest, vendor_timestamp
from .model import Api, Campaign, Diagnostic, Location, Message, RecipientFile, Severity
from .recipients import iter_source
from .render import Variable, same_value
from .safe_text import MASK, control_characters

DEFAULT_SHOWN = 10
MAX_CHARACTER_WARNINGS = 10


@dataclass(frozen=True)
class PlanSummary:
    campaign_id: str
    file: str
    api: Api
    strategy: str  # "platform" (placeholders on the wire) or "local" (rendered here)
    rows_read: int
    recipients: int
    duplicates: int
    excluded: int
    requests: int
    messages: int
    segments: int | None  # None when a template has no preview to count
    encodings: dict[str, int]
    tps: int
    batch_size: int
    estimated_seconds: float
    send_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True)
class Plan:
    summary: PlanSummary
    messages: tuple[Message, ...]
    warnings: tuple[Diagnostic, ...]
    # Each shown message's text without personal data, for output meant for a pull
    # request: personal values (the recipient's own, its number and correlation id)
    # replaced by `•••`; a text with logic shows its template instead.
    masked_texts: tuple[str, ...] = ()
    # `plan --state`: what the ledger holds and what is left to send (JSON key `ledger`)
    ledger: Mapping[str, Any] | None = None
    # `plan --state`: each shown message's recipient state (see `RECIPIENT_STATES`)
    message_states: tuple[str, ...] = ()

    def to_json(self, *, show_all: bool = False) -> dict[str, Any]:
        s = self.summary
        data = {
            "summary": {
                "campaignId": s.campaign_id,
                "file": s.file,
                "api": s.api,
                "strategy": s.strategy,
                "rowsRead": s.rows_read,
                "recipients": s.recipients,
                "duplicatesDropped": s.duplicates,
                "excluded": s.excluded,
                "requests": s.requests,
                "messages": s.messages,
                "segments": s.segments,
                "encodings": s.encodings,
                "tps": s.tps,
                "batchSize": s.batch_size,
                "estimatedSeconds": round(s.estimated_seconds, 3),
                "sendAt": vendor_timestamp(s.send_at) if s.send_at else None,
                "expiresAt": vendor_timestamp(s.expires_at) if s.expires_at else None,
            },
            "messages": [
                {
                    "msisdn": m.msisdn,
                    "correlationId": m.correlation_id,
                    "text": m.text,
                    "encoding": m.count.encoding.value,
                    "segments": m.count.segments if s.segments is not None else None,
                    "units": m.count.units,
                    "origin": str(m.origin),
                    **({"state": self.message_states[i]} if self.message_states else {}),
                }
                for i, m in enumerate(self.messages)
            ],
            "messagesShown": len(self.messages),
            "warnings": [
                {"location": str(w.location), "rule": w.rule, "message": w.message, "hint": w.hint}
                for w in self.warnings
            ],
        }
        if self.ledger is not None:
            data["ledger"] = dict(self.ledger)
        return data


# `plan --state`: where each recipient stands against the ledger, in this order of totals.
TO_SEND, ACCEPTED, FAILED, UNCERTAIN, CHANGED = "to-send", "accepted", "failed", "uncertain", "changed-since-accepted"
RECIPIENT_STATES: tuple[str, ...] = (TO_SEND, ACCEPTED, FAILED, UNCERTAIN, CHANGED)


# a ledger status as a plan state (`Ledger.destination_states` gives a digest for accepted ones)
_STATE_OF_STATUS = {"pending": TO_SEND, "failed": FAILED, "uncertain": UNCERTAIN, "in-flight": UNCERTAIN,
                    "accepted": ACCEPTED}


class RecipientStates:
    """Classifies each planned recipient against what the ledger holds for its number
    (`Ledger.destination_states`): never sent (or pending) = to send; accepted, and what
    would be sent now has another `content_digest` = changed since accepted (apply does
    not resend it: it skips accepted numbers); else the ledger's status. A digest the
    ledger does not have (rows recorded before it kept one) counts as unchanged.
    The digest is only computed for accepted numbers."""

    def __init__(self, compiler: Compiler, held: Mapping[str, str]) -> None:
        self.held = held
        self.counts: dict[str, int] = dict.fromkeys(RECIPIENT_STATES, 0)
        campaign = compiler.campaign
        # the parts `_v2_body`/`_v1_body` send, as `batch_content_digests` reads them back
        self._text: str | None = None  # None: the rendered text itself (local mode)
        self._shared: Mapping[str, Any] = {}
        if campaign.template is not None:
            self._text, self._shared = f"template:{campaign.template.id}", dict(campaign.substitutions)
        elif compiler.platform:
            self._text, self._shared = compiler._wire_text, compiler._shared_values

    def digest(self, text: str, own: Mapping[str, Any]) -> str:
        values = {**self._shared, **own} if own else self._shared
        return content_digest(text if self._text is None else self._text, values)

    def state(self, msisdn: str, text: str, own: Mapping[str, Any]) -> str:
        found = self.held.get(msisdn)
        if found is None:
            return TO_SEND
        status = _STATE_OF_STATUS.get(found)
        if status is not None:
            return status
        return ACCEPTED if found == self.digest(text, own) else CHANGED  # `found` is the digest sent

    def observe_items(self, members: Iterable[tuple[str, str, str, Mapping[str, Any], str]]) -> None:
        """Count the state of each of compile's batching items (msisdn, correlation id, text, own values,
        encoding), inlined: at a million accepted recipients each call saved is a second."""
        get, counts, of_status = self.held.get, self.counts, _STATE_OF_STATUS
        fixed, shared = self._text, self._shared
        for msisdn, _, text, own, _ in members:
            found = get(msisdn)
            if found is None:
                counts[TO_SEND] += 1
                continue
            state = of_status.get(found)
            if state is None:  # the digest it was sent: compare with what it would get now
                digest = content_digest(text if fixed is None else fixed, {**shared, **own} if own else shared)
                state = ACCEPTED if found == digest else CHANGED
            counts[state] += 1


def build_plan(
    campaign: Campaign,
    warnings: tuple[Diagnostic, ...] = (),
    *,
    api: Api = "v2",
    limit: int | None = DEFAULT_SHOWN,
    on_wire: Callable[[str], None] | None = None,
    held: Mapping[str, str] | None = None,
) -> Plan:
    """Compile the whole campaign without sending; keep the first `limit` messages (None = all).

    `on_wire` (with a `limit`) gets every request body as `compile` writes it, from the
    same pass that counts: a saved plan's digest without a second compile. `held`
    (`Ledger.destination_states`) classifies every recipient in that same pass: the
    totals go into `ledger["recipients"]`, each shown message's into `message_states`."""
    compiler = Compiler(campaign, api)
    states = RecipientStates(compiler, held) if held is not None else None
    shown: list[Message] = []
    masked: list[str] = []
    shown_states: list[str] = []
    if limit is None:
        def keep_all() -> Iterator[Compiled]:
            for item in compiler.iter_compiled():
                shown.append(item.message)
                masked.append(_masked_text(compiler, item))
                if states is not None:
                    m = item.message
                    shown_states.append(states.state(m.msisdn, m.text, item.own_values))
                    states.counts[shown_states[-1]] += 1
                yield item

        compiler.tally(keep_all())
    else:
        # The messages shown come from a stream of their own, stopped after `limit`; the
        # counters from the whole stream on compile's own path, which builds no `Message`
        # per row (half the time at a million rows).
        if limit:
            for item in islice(Compiler(campaign, api).iter_compiled(), limit):
                shown.append(item.message)
                masked.append(_masked_text(compiler, item))
                if states is not None:
                    shown_states.append(states.state(item.message.msisdn, item.message.text, item.own_values))
        if states is not None:
            # compile's batching items (msisdn, correlation id, text, own values, encoding),
            # each classified once; bodies are built only for a saved plan's digest
            observe = states.observe_items
            if on_wire is None:
                for _, members in compiler._iter_groups(None):
                    observe(members)
            else:
                for _, members, _, wire in compiler._iter_requests(None):
                    on_wire(wire)
                    observe(members)
        elif on_wire is None:
            compiler.tally()
        else:
            for wire in compiler.iter_wire():  # fills the same counters as tally, building bodies
                on_wire(wire)
    stats = compiler.stats
    counts_known = campaign.content is not None or (campaign.template is not None and campaign.template.preview is not None)
    summary = PlanSummary(
        campaign_id=campaign.id,
        file=campaign.source.display_name,
        api=api,
        strategy="platform" if compiler.platform else "local",
        rows_read=stats.recipients.total_rows,
        recipients=stats.recipients.accepted,
        duplicates=stats.recipients.duplicates,
        excluded=stats.recipients.excluded,
        requests=stats.requests,
        messages=stats.messages,
        segments=stats.segments if counts_known else None,
        encodings=dict(sorted(stats.by_encoding.items())) if counts_known else {},
        tps=campaign.tps,
        batch_size=compiler.size,
        estimated_seconds=stats.messages / campaign.tps,
        send_at=campaign.send_at,
        expires_at=_expiry(campaign),
    )
    return Plan(summary, tuple(shown),
                tuple(warnings) + tuple(_encoding_warnings(compiler)) + _template_note(campaign)
                + tuple(control_character_warnings(campaign)) + _nobody_note(campaign, summary),
                tuple(masked),
                ledger=None if states is None else {"recipients": dict(states.counts)},
                message_states=tuple(shown_states))


def _nobody_note(campaign: Campaign, summary: PlanSummary) -> tuple[Diagnostic, ...]:
    """A campaign that sends nothing passes every check: say so, at plan and apply."""
    if summary.messages:
        return ()
    location = campaign.source.locate(("recipients",), key=True)
    why = (f"{summary.rows_read:,} recipient rows read, {summary.duplicates:,} duplicates, "
           f"{summary.excluded:,} excluded")
    return (Diagnostic(location, Severity.WARNING, f"this campaign sends to nobody ({why})", "no-recipients",
                       "check the recipient files (a header-only CSV?) and the exclude lists"),)


PERSONAL_BUILTINS = frozenset({"msisdn", "correlation_id"})


def _masked_text(compiler: Compiler, item: Compiled) -> str:
    """The message's shape without personal data (see `Plan.masked_texts`).

    A plain text is rebuilt from its parts: literal text and campaign-wide values as
    they are, each personal value (what the recipient's own `to[]` entry carries, and
    the built-ins) as `•••`. A text with logic cannot be split that way (a filter may
    print a value changed), so it shows its template.
    """
    text, renderer = compiler.text, compiler.renderer
    if text is None or renderer is None:
        return item.message.text  # a template id without preview: nothing personal is rendered here
    if text.plain_parts is None:
        return text.source
    # Values a recipient file shares with all its rows are the campaign file's, not personal;
    # the row's (or inline recipient's) own values are, unless equal to its file's.
    recipient = item.recipient
    own = recipient.substitutions if recipient is not None else item.own_values
    shared = recipient.source_substitutions if recipient is not None else {}
    out = []
    for part in text.plain_parts:
        name = part.name if isinstance(part, Variable) else None
        if name is None:
            out.append(str(part))
        elif name in PERSONAL_BUILTINS:
            out.append(MASK)
        elif name in own:
            value = own[name]
            out.append(str(value) if name in shared and same_value(shared[name], value) else MASK)
        elif name in shared:
            out.append(str(shared[name]))
        elif name in renderer.campaign_layer:
            out.append(str(renderer.campaign_layer[name]))
        else:
            out.append(MASK)
    return "".join(out)


# Bytes in a recipient file that may stand for a control character, by the byte that
# starts them: raw C0 and DEL (but CR of a CRLF line end), C1 and bidi controls in
# UTF-8, and JSON escapes. Each pattern starts with its literal byte, which `re` finds
# fast; `bytes.translate` first drops every other byte at memory speed, so a chunk
# with none of these bytes (the common case) costs almost nothing.
_LEADS = {
    0xC2: re.compile(rb"\xc2[\x80-\x9f]"),
    0xD8: re.compile(rb"\xd8\x9c"),
    0xE2: re.compile(rb"\xe2(?:\x80[\x8e\x8f\xaa-\xae]|\x81[\xa6-\xa9])"),
    0x5C: re.compile(rb"\\(?:[rtbf]|u(?:00[01]|007f|00[89]|061c|200[ef]|202[a-e]|206[6-9]))", re.IGNORECASE),
}
_RAW_CONTROLS = frozenset(range(0x20)) - {0x0A, 0x0D} | {0x7F}
_SAFE_BYTES = bytes(set(range(256)) - _RAW_CONTROLS - set(_LEADS) - {0x0A, 0x0D} | {0x0A})
_SCAN_CHUNK = 1 << 20


def _may_hold_control(path: Path) -> bool:
    """A fast byte scan of a recipient file; only files it flags are parsed again to find
    the rows (the common file has none, and costs one read)."""
    try:
        with path.open("rb") as stream:
            tail = b""
            while chunk := stream.read(_SCAN_CHUNK):
                window = tail + chunk
                tail = chunk[-8:]
                suspects = set(window.translate(None, _SAFE_BYTES))
                if suspects & _RAW_CONTROLS:
                    return True
                if 0x0D in suspects and window.count(b"\r") != window.count(b"\r\n"):
                    return True  # a CR that is not a line end
                if any(_LEADS[lead].search(window) for lead in suspects & _LEADS.keys()):
                    return True
    except OSError:
        return False  # compile read it a moment ago; a file that vanished since is not this check's to report
    return False


def control_character_warnings(campaign: Campaign) -> list[Diagnostic]:
    """Recipient values holding control characters (ESC, CR, bidi overrides...): an SMS
    should not carry them, and on a terminal they can hide or recolour rows. One warning
    per value, up to `MAX_CHARACTER_WARNINGS`, then a count; the value is never quoted."""
    found: list[Diagnostic] = []
    more = 0
    for source in campaign.recipients:
        if not isinstance(source, RecipientFile) or not _may_hold_control(source.path):
            continue
        for recipient in iter_source(source):
            values: list[tuple[str, Any]] = sorted(recipient.substitutions.items())
            if recipient.correlation_id is not None:
                values.append(("correlationId", recipient.correlation_id))
            for name, value in values:
                names = control_characters(value) if isinstance(value, str) else []
                if not names:
                    continue
                if len(found) < MAX_CHARACTER_WARNINGS:
                    found.append(Diagnostic(
                        recipient.origin, Severity.WARNING,
                        f"value of '{name}' holds control character{'s' * (len(names) > 1)} {', '.join(names)}",
                        "control-character", "an SMS should not carry control characters; remove them from the file"))
                else:
                    more += 1
    if more:
        found.append(Diagnostic(Location(campaign.source.display_name), Severity.WARNING,
                                f"{more} more recipient values hold control characters", "control-character"))
    return found


def _expiry(campaign: Campaign) -> datetime | None:
    if campaign.expire_at is not None:
        return campaign.expire_at
    if campaign.validity_seconds is not None and campaign.send_at is not None:
        return campaign.send_at + timedelta(seconds=campaign.validity_seconds)
    return None


def _encoding_warnings(compiler: Compiler) -> list[Diagnostic]:
    """Say which characters made messages UCS-2, and the GSM-7 stand-in when one exists.

    The most frequent characters are named one by one; the long tail of an audience
    in another script is summed up in one line, so a plan stays readable.
    """
    campaign = compiler.campaign
    location = campaign.content.location if campaign.content else Location(campaign.source.display_name)
    causes = sorted(compiler.stats.ucs2_causes.items(), key=lambda item: (-item[1][0], item[0]))
    found = []
    for char, (occurrences, where, fix) in causes[:MAX_CHARACTER_WARNINGS]:
        counted = "1 message uses" if occurrences == 1 else f"{occurrences} messages use"
        message = f"{counted} UCS-2 because of {char!r} (U+{ord(char):04X}), first at {where}"
        hint = f"replace it with {fix!r} to stay in GSM-7 (about half the segments)" if fix else None
        found.append(Diagnostic(location, Severity.WARNING, message, "ucs2-character", hint))
    rest = causes[MAX_CHARACTER_WARNINGS:]
    if rest:
        found.append(Diagnostic(location, Severity.WARNING, f"{len(rest)} more characters force UCS-2 "
                                f"({sum(count for _, (count, _, _) in rest)} occurrences)", "ucs2-character"))
    return found


def _template_note(campaign: Campaign) -> tuple[Diagnostic, ...]:
    if campaign.template is not None and campaign.template.preview is None:
        location = campaign.source.locate(("template",), key=True)
        return (Diagnostic(location, Severity.WARNING,
                           f"template {campaign.template.id} has no preview: texts and segments are unknown",
                           "template-no-preview", "add template.preview with the template's text"),)
    return ()
