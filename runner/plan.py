"""The dry run: what a campaign will send, to whom, at what cost, before anything leaves.

A plan runs the whole compile stream (so every recipient is rendered, every bad row
and missing variable is found) but keeps only counters and the first messages, so a
plan over a million recipients needs no more memory than one over ten.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from .compile import Compiled, Compiler, vendor_timestamp
from .model import Api, Campaign, Diagnostic, Location, Message, Severity

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

    def to_json(self, *, show_all: bool = False) -> dict[str, Any]:
        s = self.summary
        return {
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
                }
                for m in self.messages
            ],
            "messagesShown": len(self.messages),
            "warnings": [
                {"location": str(w.location), "rule": w.rule, "message": w.message, "hint": w.hint}
                for w in self.warnings
            ],
        }


def build_plan(
    campaign: Campaign,
    warnings: tuple[Diagnostic, ...] = (),
    *,
    api: Api = "v2",
    limit: int | None = DEFAULT_SHOWN,
) -> Plan:
    """Compile the whole campaign without sending; keep the first `limit` messages (None = all)."""
    compiler = Compiler(campaign, api)
    shown: list[Message] = []
    if limit is None:
        def keep_all() -> Iterator[Compiled]:
            for item in compiler.iter_compiled():
                shown.append(item.message)
                yield item

        compiler.tally(keep_all())
    else:
        # The messages shown come from a stream of their own, stopped after `limit`; the
        # counters from the whole stream on compile's own path, which builds no `Message`
        # per row (half the time at a million rows).
        if limit:
            shown.extend(islice(Compiler(campaign, api).iter_messages(), limit))
        compiler.tally()
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
    return Plan(summary, tuple(shown), tuple(warnings) + tuple(_encoding_warnings(compiler)) + _template_note(campaign)
                + _nobody_note(campaign, summary))


def _nobody_note(campaign: Campaign, summary: PlanSummary) -> tuple[Diagnostic, ...]:
    """A campaign that sends nothing passes every check: say so, at plan and apply."""
    if summary.messages:
        return ()
    location = campaign.source.locate(("recipients",), key=True)
    why = (f"{summary.rows_read:,} recipient rows read, {summary.duplicates:,} duplicates, "
           f"{summary.excluded:,} excluded")
    return (Diagnostic(location, Severity.WARNING, f"this campaign sends to nobody ({why})", "no-recipients",
                       "check the recipient files (a header-only CSV?) and the exclude lists"),)


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
