"""Compile: rendered recipients into the exact request bodies of the vendor API.

Two strategies give every recipient the same final text; the campaign's
`personalisation` picks one (validation decided it, see `Campaign.personalisation`):

* local (the default for inline content): each text is rendered here and sent as the
  literal `content.text`; recipients whose rendered text is identical share a request.
  No body carries a placeholder, so nothing depends on the platform filling one in.
* platform (asked for explicitly, or a template): the text uses only plain `{{ name }}`
  variables, the wire text carries the platform's placeholders, campaign values ride in
  the global `substitutions` and a recipient's own values in its `to[]` entry. A
  thousand recipients fit one request.

Everything here is deterministic (same inputs, byte-identical bodies) and streamed:
batches leave as soon as they fill, so memory does not grow with the audience.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import segments, vendor
from .errors import CampaignError
from .model import (
    Api,
    Batch,
    Campaign,
    Destination,
    Encoding,
    Message,
    Recipient,
    RecipientFile,
    Scalar,
    SegmentCount,
    wire_json,
    wire_values,
)
from .recipients import KeptRow, RecipientStats, iter_kept, iter_recipients, kept_recipient
from .render import CompiledText, Renderer, compile_text, same_value

# Local strategy: requests are grouped by text while they fill, in input order. At most
# this many distinct texts, and this many messages over all of them, wait for company
# before the oldest text's group leaves as it is: memory stays flat whatever the
# audience (a fully personalised million is a million one-destination requests, each
# sent as soon as 512 newer texts arrived), and the grouping depends only on the input
# order, so the same inputs always give the same batches and keys (exactly-once rests
# on them). In platform mode a group is an encoding, so neither bound is ever reached.
MAX_OPEN_GROUPS = 512
MAX_BUFFERED_MESSAGES = 10_000


def batch_size(campaign: Campaign) -> int:
    """Destinations per request: the vendor's cap, and never more than one second of TPS."""
    return max(1, min(vendor.MAX_DESTINATIONS_PER_REQUEST, campaign.tps))


def generated_correlation_id(campaign_id: str, msisdn: str) -> str:
    """Stable across runs and machines, so receipts and re-runs match the same recipient."""
    digest = hashlib.blake2b(f"{campaign_id}\x00{msisdn}".encode(), digest_size=8).hexdigest()
    return f"cr-{digest}"


def content_digest(text: str, values: Mapping[str, Any]) -> str:
    """What one destination was sent, in 16 hex characters: the request's text (the final
    text in local mode, the text with placeholders in platform mode, `template:<id>`)
    and the values the platform fills in for it (the request's and its own). The ledger
    stores it per destination as it records a batch, and `plan --state` computes it from
    the same parts now: different digests mean the recipient's message changed since."""
    # Each value by its repr (a string quoted, so "1" and 1 differ), names sorted: several
    # times cheaper than JSON, which matters once per accepted recipient of a million.
    parts = [text, *[f"{name}={values[name]!r}" for name in sorted(values)]] if values else [text]
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).hexdigest()


def vendor_timestamp(moment: datetime) -> str:
    """The vendor's documented form: UTC with milliseconds, e.g. 2024-09-26T13:47:18.000Z."""
    utc = moment.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def message_text(campaign: Campaign) -> CompiledText | None:
    """The text that is rendered per recipient: content text, or a template's preview."""
    if campaign.content is not None:
        return compile_text(campaign.content.text, campaign.content.location)
    if campaign.template is not None and campaign.template.preview is not None:
        return compile_text(campaign.template.preview, campaign.template.location)
    return None


@dataclass
class CompileStats:
    """Counters filled while batches stream out; read after the stream is consumed."""

    recipients: RecipientStats = field(default_factory=RecipientStats)
    messages: int = 0
    segments: int = 0
    requests: int = 0
    by_encoding: dict[str, int] = field(default_factory=dict)
    ucs2_causes: dict[str, tuple[int, str, str | None]] = field(default_factory=dict)  # char -> (count, where, fix)


@dataclass(frozen=True)
class Compiled:
    """One rendered message and the substitution values its `to[]` entry needs."""

    message: Message
    own_values: Mapping[str, Scalar]
    # The recipient it was rendered for: its value layers tell a masked preview which
    # values are personal, whatever the personalisation mode put on the wire.
    recipient: Recipient | None = None


# What batching needs of one message: (msisdn, correlation id, text, own values, encoding
# name). Strings and a dict of scalars only, so the garbage collector stops tracking the
# tuple on its first pass: the thousand items of a filling batch cost it nothing, where
# `Compiled` + `Message` + `Location` objects were rescanned in every full collection.
_Item = tuple[str, str, str, Mapping[str, Scalar], str]
_ENCODING_NAMES = {encoding: encoding.value for encoding in Encoding}
_GSM7_NAME = Encoding.GSM7.value


def _as_recipient(kept: Recipient | KeptRow) -> Recipient:
    return kept if isinstance(kept, Recipient) else kept_recipient(kept)


class Compiler:
    """Streams a campaign into `Message`s and `Batch`es."""

    def __init__(self, campaign: Campaign, api: Api = "v2", *, skip: Callable[[str], bool] | None = None) -> None:
        self.campaign = campaign
        self.api = api
        self.skip = skip  # msisdns already accepted (apply --allow-changes)
        self.stats = CompileStats()
        self.text = message_text(campaign)
        self.renderer = Renderer(campaign, self.text) if self.text is not None else None
        # Validation refuses `personalisation: platform` for a text with logic; a campaign
        # built by hand that asks for it anyway is rendered here, which is always right.
        self.platform = campaign.template is not None or (
            campaign.personalisation == "platform" and self.text is not None and self.text.is_plain)
        self.size = 1 if api == "v1" else batch_size(campaign)
        if api == "v1":
            refuse_v1(campaign)
        self._wanted = campaign.content.type if campaign.content is not None else "auto"
        # Platform strategy with a plain content text: values are looked up per variable
        # instead of merging every layer into a dict for each recipient.
        self._plain = (self.renderer if self.renderer is not None and self.text is not None
                       and self.text.is_plain and campaign.template is None else None)
        # Platform strategy: the campaign-layer values the text reads, for every request's
        # global `substitutions` block (the same for all of them).
        self._shared_values: dict[str, str] = wire_values(
            {n: self.renderer.campaign_layer[n] for n in sorted(self.text.variables) if n in self.renderer.campaign_layer}
            if self.platform and self.renderer is not None and self.text is not None and self.text.is_plain else {}
        )
        # On the wire every value is a string (the text written). A CSV cell already is
        # one; only sources that may hold numbers or booleans (YAML values, JSON Lines
        # rows) have their `to[]` values turned into text, so the common case pays nothing.
        self._typed_values = any(
            (isinstance(source, RecipientFile) and source.format == "jsonl")
            or any(type(value) is not str for value in source.substitutions.values())
            for source in campaign.recipients)
        # What every request of this campaign shares, built once rather than per batch
        # (v2) or per destination (v1).
        self._wire_text = self.text.wire_text() if self.platform and self.text is not None and self.text.is_plain else ""
        self._extras = self._v1_extras() if api == "v1" else self._v2_extras()
        # The file values compile reads: a plain text's variables. A text with logic may
        # read more than its free variables (`{% set name = name | upper %}`), and a
        # template's names are unknown: those read every column.
        self._columns = (self.text.variables
                         if self.text is not None and self.text.is_plain and campaign.template is None else None)
        # A plain text whose written parts are all blank renders blank when its values are:
        # such texts skip the fast path, so `_compile_item` checks every message.
        self._may_render_blank = self.text is not None and (
            self.text.plain_parts is None
            or not "".join(part for part in self.text.plain_parts if isinstance(part, str)).strip())
        # `generated_correlation_id`, with the campaign's part hashed once.
        self._correlation_hash = hashlib.blake2b(f"{campaign.id}\x00".encode(), digest_size=8)

    def _generated_correlation_id(self, msisdn: str) -> str:
        digest = self._correlation_hash.copy()
        digest.update(msisdn.encode())
        return "cr-" + digest.hexdigest()

    # --- messages ---------------------------------------------------------------

    def iter_compiled(self) -> Iterator[Compiled]:
        skip = self.skip
        for recipient in iter_recipients(self.campaign, self.stats.recipients):
            if skip is not None and skip(recipient.msisdn):
                continue
            (msisdn, correlation_id, text, own_values, _), count = self._compile_item(recipient)
            yield Compiled(Message(msisdn, correlation_id, text, count, recipient.origin), own_values, recipient)

    def iter_messages(self) -> Iterator[Message]:
        for compiled in self.iter_compiled():
            yield compiled.message

    def _iter_items(self) -> Iterator[_Item]:
        """What `iter_compiled` yields, as batching items.

        The common case, a file row of a plain-text campaign whose message is GSM-7, is
        compiled inline here: at a million rows, each call saved per row is a tenth of
        a second. Anything else (a missing variable, UCS-2, an over-long text, inline
        recipients) goes through `_compile_item`, which gives the same item or the
        error; tests compare the two paths byte for byte.
        """
        skip = self.skip
        compile_item = self._compile_item
        render_plain = (self._plain.render_plain if self._plain is not None and self._wanted != "unicode"
                        and not self._may_render_blank else None)
        correlation_hash = self._correlation_hash
        count = segments.count
        stats = self.stats
        gsm7, longest = Encoding.GSM7, vendor.MAX_TEXT_CHARS
        platform, opener = self.platform, vendor.PLACEHOLDER_OPENER
        inline_messages = inline_segments = 0  # added to `stats` once, at the end
        try:
            for kept in iter_kept(self.campaign, stats.recipients, self._columns):
                if isinstance(kept, Recipient):
                    if skip is None or not skip(kept.msisdn):
                        yield compile_item(kept)[0]
                    continue
                msisdn = kept[0]
                if skip is not None and skip(msisdn):
                    continue
                if render_plain is not None:
                    correlation_id = kept[3]
                    if correlation_id is None:  # `_generated_correlation_id`, inlined
                        digest = correlation_hash.copy()
                        digest.update(msisdn.encode())
                        correlation_id = "cr-" + digest.hexdigest()
                    rendered = render_plain(kept[1], kept[2], msisdn, correlation_id)
                    if rendered is not None:
                        text, personal = rendered
                        counted = count(text)
                        if counted.encoding is gsm7 and len(text) <= longest and (platform or opener not in text):
                            inline_messages += 1
                            inline_segments += counted.segments
                            yield msisdn, correlation_id, text, personal if platform else {}, _GSM7_NAME
                            continue
                yield compile_item(kept)[0]
        finally:
            if inline_messages:
                stats.messages += inline_messages
                stats.segments += inline_segments
                stats.by_encoding[_GSM7_NAME] = stats.by_encoding.get(_GSM7_NAME, 0) + inline_messages

    def _compile_item(self, kept: Recipient | KeptRow) -> tuple[_Item, SegmentCount]:
        """One message. A kept file row becomes a `Recipient` only where one is needed:
        a text with logic, a template, a non-GSM-7 text, an error."""
        recipient: Recipient | None
        if isinstance(kept, Recipient):
            recipient = kept
            msisdn, own, shared, given = kept.msisdn, kept.substitutions, kept.source_substitutions, kept.correlation_id
        else:
            recipient = None
            msisdn, own, shared, given = kept[0], kept[1], kept[2], kept[3]
        correlation_id = given or self._generated_correlation_id(msisdn)
        text: str | None = None
        own_values: Mapping[str, Scalar] | None = None
        if self._plain is not None:
            rendered = self._plain.render_plain(own, shared, msisdn, correlation_id)
            if rendered is not None:
                text, own_values = rendered  # own values: what `_own_values` gives (platform)
                if not self.platform:
                    own_values = {}
        if text is None:
            if self.renderer is not None:
                recipient = recipient or _as_recipient(kept)
                text = self.renderer.render(recipient, correlation_id)  # raises for an undefined name
            else:
                text = ""
        if self._wanted == "unicode":
            count = segments.count(text, Encoding.UCS2)
        else:
            # Without an encoding, `count` gives GSM-7 exactly when the text is GSM-7 (the
            # count `Encoding.GSM7` would give); `_count` handles the rest.
            count = segments.count(text)
            if count.encoding is not Encoding.GSM7:
                recipient = recipient or _as_recipient(kept)
                count = self._count(text, recipient)
        if self.text is not None and not text.strip():
            recipient = recipient or _as_recipient(kept)
            raise CampaignError(
                f"{recipient.origin}: error: the message for {msisdn} is empty after rendering [text-empty]",
                hint="give this recipient the values the text needs, or change the text",
            )
        if not self.platform and vendor.PLACEHOLDER_OPENER in text:
            recipient = recipient or _as_recipient(kept)
            raise CampaignError(
                f"{recipient.origin}: error: message for {msisdn} contains '{vendor.PLACEHOLDER_OPENER}' after "
                "rendering; Webex Connect may read it as a placeholder, so it is never sent literally "
                "[placeholder-in-text]",
                hint="change the value that brings it in (a substitution of this recipient, its file or the campaign)",
            )
        if len(text) > vendor.MAX_TEXT_CHARS:
            recipient = recipient or _as_recipient(kept)
            raise CampaignError(
                f"{recipient.origin}: error: message for {msisdn} is {len(text)} characters after rendering; "
                f"the API takes at most {vendor.MAX_TEXT_CHARS} [text-length]"
            )
        stats = self.stats
        stats.messages += 1
        stats.segments += count.segments
        name = _ENCODING_NAMES[count.encoding]
        stats.by_encoding[name] = stats.by_encoding.get(name, 0) + 1
        if own_values is None:
            own_values = self._own_values(recipient or _as_recipient(kept), correlation_id)
        return (msisdn, correlation_id, text, own_values, name), count

    def _count(self, text: str, recipient: Recipient) -> SegmentCount:
        wanted = self._wanted
        if wanted == "unicode":
            return segments.count(text, Encoding.UCS2)
        # Without an encoding, `count` gives GSM-7 exactly when the text is GSM-7 (the
        # count `Encoding.GSM7` would give), else the UCS-2 count.
        counted = segments.count(text)
        if counted.encoding is Encoding.GSM7:
            return counted
        offenders = segments.non_gsm7(text)
        if wanted == "text":
            index, char = offenders[0]
            raise CampaignError(
                f"{self._char_origin(char, recipient)}: error: content type is text but the message for "
                f"{recipient.msisdn} has {char!r} (U+{ord(char):04X}), which GSM-7 cannot encode [non-gsm-character]",
                hint=_replacement_hint(char),
            )
        for char in dict.fromkeys(char for _, char in offenders):  # messages per character, not occurrences
            seen = self.stats.ucs2_causes.get(char)
            if seen is None:
                self.stats.ucs2_causes[char] = (1, str(self._char_origin(char, recipient)),
                                                segments.gsm7_replacement(char))
            else:
                self.stats.ucs2_causes[char] = (seen[0] + 1, seen[1], seen[2])
        return counted

    def _char_origin(self, char: str, recipient: Recipient) -> str:
        """Where a character came from: the template text, or the value of one variable."""
        assert self.text is not None
        index = self.text.source.find(char)
        if index >= 0:
            return f"{self.text.location} (message text, character {index + 1})"
        layers = ((recipient.substitutions, str(recipient.origin)),
                  (recipient.source_substitutions, str(recipient.origin)),
                  (self.campaign.substitutions, str(self.campaign.source.locate(("substitutions",)))))
        # Names in text order and each one's value from the layer that wins, so the answer
        # depends neither on the order of a file's columns nor on values a layer hides.
        variables = self.text.variables
        for name in [n for n in self.text.plain_names if n in variables] or sorted(variables):
            for layer, where in layers:
                if name in layer:
                    if char in str(layer[name]):
                        return f"{where} (substitution '{name}')"
                    break
        return str(recipient.origin)

    def _own_values(self, recipient: Recipient, correlation_id: str) -> Mapping[str, Scalar]:
        """The values this recipient needs in its own `to[]` entry (platform strategy)."""
        if not self.platform:
            return {}
        if self.campaign.template is not None:
            values = dict(recipient.source_substitutions)
            values.update(recipient.substitutions)
            shared = self.campaign.substitutions
            return {k: v for k, v in values.items() if k not in shared or not same_value(shared[k], v)}
        assert self.text is not None and self.renderer is not None
        merged = self.renderer.values_for(recipient, correlation_id)
        base = self.renderer.campaign_layer
        return {
            name: merged[name]
            for name in sorted(self.text.variables)
            if name in merged and (name not in base or not same_value(base[name], merged[name]))
        }

    # --- batches ----------------------------------------------------------------

    def iter_batches(self, compiled: Iterable[Compiled] | None = None) -> Iterator[Batch]:
        """Request bodies with what `apply` needs to send them once: the idempotency key
        and the destinations each covers."""
        campaign_id, api = self.campaign.id, self.api
        for index, members, body, wire in self._iter_requests(compiled):
            digest = hashlib.sha256(f"{campaign_id}\x00{api}\x00{wire}".encode()).hexdigest()[:40]
            yield Batch(
                key=f"{index:06d}-{digest}",
                index=index,
                api=api,
                body=body,
                destinations=tuple([Destination(item[0], item[1]) for item in members]),
                wire=wire,
            )

    def iter_wire(self) -> Iterator[str]:
        """The request bodies as compact JSON, what `campaign compile` writes. Exactly
        the `wire` of each `iter_batches` batch, without the key and the destination
        list: at a million recipients those cost compile a twentieth of its time."""
        for _, _, _, wire in self._iter_requests(None):
            yield wire

    def tally(self, compiled: Iterable[Compiled] | None = None) -> CompileStats:
        """Run the whole stream for its counters, every row read, checked and rendered,
        but no request body built: what a plan needs."""
        for _ in self._iter_groups(compiled):
            pass
        return self.stats

    def _iter_requests(self, compiled: Iterable[Compiled] | None) -> Iterator[tuple[int, list[_Item], dict[str, Any], str]]:
        """(index, members, body, wire) per request, in the order they fill."""
        for index, members in self._iter_groups(compiled):
            yield (index, members, *self._request(members))

    def _iter_groups(self, compiled: Iterable[Compiled] | None) -> Iterator[tuple[int, list[_Item]]]:
        """(index, members) per request, in the order they fill."""
        stream = self._iter_items() if compiled is None else _items_of(compiled)
        platform = self.platform
        size = self.size
        # Requests share an encoding, and under the local strategy a text as well.
        groups: dict[str | tuple[str, str], list[_Item]] = {}
        index = buffered = 0
        for item in stream:
            group_key = item[4] if platform else (item[4], item[2])
            members = groups.get(group_key)
            if members is None:
                members = groups[group_key] = []
            members.append(item)
            buffered += 1
            if len(members) >= size:
                del groups[group_key]
            elif len(groups) > MAX_OPEN_GROUPS or buffered > MAX_BUFFERED_MESSAGES:
                members = groups.pop(next(iter(groups)))  # the oldest text (dicts keep insertion order)
            else:
                continue
            buffered -= len(members)
            self.stats.requests += 1
            yield index, members
            index += 1
        for members in groups.values():
            self.stats.requests += 1
            yield index, members
            index += 1

    def _request(self, members: list[_Item]) -> tuple[dict[str, Any], str]:
        """One request body and its serialised form."""
        # A body is thousands of new containers (`to` entries, their msisdn lists) that
        # all live until the caller has sent or written it. Built with the garbage
        # collector running, they are scanned by several young collections and promoted
        # to the old generation, whose full collections rescan the whole heap: over a
        # tenth of compile time at 1M recipients. Nothing built here can form a
        # reference cycle, so the collector is paused meanwhile (and left as found).
        collecting = gc.isenabled()
        if collecting:
            gc.disable()
        try:
            body = self._v1_body(members[0]) if self.api == "v1" else self._v2_body(members)
            # Serialised once: the same text is hashed into the key, written by `campaign
            # compile` and sent by `campaign apply`. check_circular=False: a body built
            # here holds no cycles, and the text is the same without the bookkeeping.
            return body, wire_json(body)
        finally:
            if collecting:
                gc.enable()

    def _content_type(self, encoding: Encoding) -> str:
        text_type, unicode_type = vendor.CONTENT_TYPES
        return unicode_type if encoding is Encoding.UCS2 else text_type

    def _v2_body(self, members: list[_Item]) -> dict[str, Any]:
        c = self.campaign
        first_text, first_encoding = members[0][2], Encoding(members[0][4])
        # Own values are a fresh dict per item (`render_plain`, `_own_values`,
        # `_items_of`), so the body can hold them without another copy.
        if self._typed_values:
            to = [{"msisdn": [msisdn], "substitutions": wire_values(own), "correlationId": correlation_id} if own
                  else {"msisdn": [msisdn], "correlationId": correlation_id}
                  for msisdn, correlation_id, _, own, _ in members]
        else:
            to = [{"msisdn": [msisdn], "substitutions": own, "correlationId": correlation_id} if own
                  else {"msisdn": [msisdn], "correlationId": correlation_id}
                  for msisdn, correlation_id, _, own, _ in members]
        body: dict[str, Any] = {"channel": "sms", "from": c.sender, "to": to}
        if c.template is not None:
            body["template"] = {"id": c.template.id}
            if c.substitutions:
                body["substitutions"] = wire_values(c.substitutions)
        elif self.platform:
            assert self.text is not None and self.renderer is not None
            body["content"] = {"type": self._content_type(first_encoding), "text": self._wire_text}
            if self._shared_values:
                body["substitutions"] = dict(self._shared_values)
        else:
            body["content"] = {"type": self._content_type(first_encoding), "text": first_text}
        body.update(self._extras)
        return body

    def _v2_extras(self) -> dict[str, Any]:
        c = self.campaign
        extras: dict[str, Any] = {}
        if c.options is not None:
            extras["options"] = _options_body(c)
        if c.requested_receipts:
            extras["requestedReceipts"] = list(c.requested_receipts)
        if c.send_at is not None:
            extras["sendAt"] = vendor_timestamp(c.send_at)
        if c.expire_at is not None:
            extras["expireAt"] = vendor_timestamp(c.expire_at)
        if c.validity_seconds is not None:
            extras["validity"] = str(c.validity_seconds)
        if c.callback_data is not None:
            extras["callbackData"] = c.callback_data
        if c.notify_url is not None:
            extras["notifyUrl"] = c.notify_url
        if c.notify_url_auth_id is not None:
            extras["notifyUrlAuthId"] = c.notify_url_auth_id
        if c.contact_policy is not None:
            policy: dict[str, Any] = {"contactPolicyGroup": c.contact_policy.group}
            if c.contact_policy.check_consent:
                policy["channelCheckConsent"] = True
            if c.contact_policy.apply_frequency_cap:
                policy["channelApplyFrequencyCap"] = True
            extras["contactPolicy"] = policy
        if c.smartlinks:
            extras["smartlinks"] = [
                {"smartlinkId": s.smartlink_id, **({"validity": s.validity} if s.validity is not None else {})}
                for s in c.smartlinks
            ]
        return extras

    def _v1_body(self, item: _Item) -> dict[str, Any]:
        c = self.campaign
        msisdn, correlation_id, text, own_values, encoding = item
        body: dict[str, Any] = {"from": c.sender, "to": msisdn}
        if self.platform:
            assert self.text is not None and self.renderer is not None
            body["content"] = self._wire_text
            values = {**self._shared_values, **wire_values(own_values)}
            if values:
                body["substitutions"] = values
        else:
            body["content"] = text
        body["contentType"] = self._content_type(Encoding(encoding))
        body["correlationId"] = correlation_id
        body.update(self._extras)
        return body

    def _v1_extras(self) -> dict[str, Any]:
        c = self.campaign
        extras: dict[str, Any] = {}
        if c.notify_url is not None:
            extras["callbackUrl"] = c.notify_url
        if c.notify_url_auth_id is not None:
            extras["callbackUrlAuthId"] = c.notify_url_auth_id
        if c.callback_data is not None:
            extras["callbackData"] = c.callback_data
        if c.expire_at is not None:
            extras["expireAt"] = vendor_timestamp(c.expire_at)
        if c.options is not None:
            extras["shortenUrls"] = c.options.shorten_links
            extras["shortUrlDomain"] = c.options.domain
            extras["trackShortUrlClicks"] = c.options.track_clicks
        return extras


def _items_of(compiled: Iterable[Compiled]) -> Iterator[_Item]:
    """A caller's `Compiled` stream as batching items; own values are copied, so a body
    never shares a mapping with the caller."""
    for item in compiled:
        m = item.message
        yield m.msisdn, m.correlation_id, m.text, dict(item.own_values), m.count.encoding.value


def _options_body(campaign: Campaign) -> dict[str, Any]:
    options = campaign.options
    assert options is not None
    flag: Callable[[bool], Any] = (lambda v: "true" if v else "false") if vendor.OPTIONS_BOOLEANS_AS_STRINGS else bool
    body: dict[str, Any] = {"shortenLinks": flag(options.shorten_links), "trackClicks": flag(options.track_clicks),
                            "domain": options.domain}
    if options.tag1 is not None:
        body["tag1"] = options.tag1
    if options.tag2 is not None:
        body["tag2"] = options.tag2
    if options.allow_fallback_url is not None:
        body["allowFallbackURL"] = flag(options.allow_fallback_url)
    return body


def refuse_v1(campaign: Campaign) -> None:
    """SMS API v1 has no field for these; sending without them would change the campaign."""
    source = campaign.source
    unsupported = {
        "sendAt": campaign.send_at is not None,
        "validity": campaign.validity_seconds is not None,
        "contactPolicy": campaign.contact_policy is not None,
        "smartlinks": bool(campaign.smartlinks),
        "template": campaign.template is not None,
        "requestedReceipts": bool(campaign.requested_receipts),
    }
    options = campaign.options
    if options is not None:
        unsupported["options.tag1"] = options.tag1 is not None
        unsupported["options.tag2"] = options.tag2 is not None
        unsupported["options.allowFallbackURL"] = options.allow_fallback_url is not None
    located = sorted((source.locate(tuple(name.split(".")), key=True), name)
                     for name, present in unsupported.items() if present)
    if located:
        raise CampaignError("\n".join(f"{where}: error: SMS API v1 cannot express '{name}' [v1-unsupported]"
                                      for where, name in located),
                            hint="send with --api v2 (the default), or remove these fields for a v1 tenant")


def _replacement_hint(char: str) -> str:
    fix = segments.gsm7_replacement(char)
    if fix is not None:
        return f"replace {char!r} with {fix!r}, or set content.type to unicode or auto"
    return "set content.type to unicode or auto"
