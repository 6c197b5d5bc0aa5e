"""Test send: the campaign's exact message, rendered for one recipient, to a few test phones.

It exists because a campaign's look on a handset is the one thing no local check can
prove: with `personalisation: platform` it is the only way to see that the tenant
fills `$(name)` placeholders in inline text (vendor.PLACEHOLDER_TEMPLATE is
UNCONFIRMED for API v2). So the message takes the same path as `apply`: the same
compiler (mode, options, encoding), the same client and credentials, the same send
loop and ledger, only now (sendAt ignored) and to the test numbers.

In the ledger a test send lives under a campaign key of its own (`<id>#test-send`),
with keys and correlation ids drawn from its run: it never counts as a send of the
campaign (a later apply still sends to everyone), and each test send is a new send
(never an idempotent replay of the previous one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from .compile import Compiled, Compiler
from .errors import CampaignError, ExitCode
from .model import Api, Batch, Campaign, Location, Message
from .msisdn import invalid_reason, normalise_msisdn

MAX_TEST_NUMBERS = 10
TEST_SEND_SUFFIX = "#test-send"


def ledger_key(campaign_id: str) -> str:
    """The ledger's campaign key for a campaign's test sends (never a valid campaign id:
    ids cannot hold '#')."""
    return campaign_id + TEST_SEND_SUFFIX


def normalise_test_numbers(raw: Sequence[str]) -> tuple[str, ...]:
    """The --to numbers in E.164, each once, in the order given; every bad one reported at once."""
    if not raw:
        raise CampaignError("test-send needs at least one --to NUMBER", exit_code=ExitCode.USAGE)
    problems, numbers = [], []
    for value in raw:
        normalised = normalise_msisdn(value)
        if normalised is None:
            problems.append(f"--to: error: {invalid_reason(value)} [test-number]")
        elif normalised not in numbers:
            numbers.append(normalised)
    if problems:
        raise CampaignError("\n".join(problems), exit_code=ExitCode.USAGE)
    if len(numbers) > MAX_TEST_NUMBERS:
        raise CampaignError(f"test-send takes at most {MAX_TEST_NUMBERS} --to numbers, got {len(numbers)}",
                            exit_code=ExitCode.USAGE, hint="a test send is for your own phones; apply sends to everyone")
    return tuple(numbers)


def for_now(campaign: Campaign, now: datetime) -> Campaign:
    """The campaign as sent now: a test is for seeing the message, not for waiting for
    sendAt; an expireAt already passed would have the platform drop it."""
    expired = campaign.expire_at is not None and campaign.expire_at <= now
    return replace(campaign, send_at=None, expire_at=None if expired else campaign.expire_at)


def chosen_message(compiler: Compiler, as_msisdn: str | None) -> Compiled:
    """The message of the recipient given by --as (default the first), exactly as apply
    would compile it (after exclusions and duplicates)."""
    wanted = None
    if as_msisdn is not None:
        wanted = normalise_msisdn(as_msisdn)
        if wanted is None:
            raise CampaignError(f"--as: error: {invalid_reason(as_msisdn)} [test-number]", exit_code=ExitCode.USAGE)
    for compiled in compiler.iter_compiled():
        if wanted is None or compiled.message.msisdn == wanted:
            return compiled
    if wanted is None:
        raise CampaignError(f"{compiler.campaign.source.display_name}: campaign {compiler.campaign.id} has no "
                            "recipient left to render a test message for", exit_code=ExitCode.USAGE)
    raise CampaignError(f"--as {wanted}: not a recipient of campaign {compiler.campaign.id} "
                        "(after exclusions)", exit_code=ExitCode.USAGE,
                        hint="name one of the campaign's recipients (`campaign plan --all` lists them)")


def correlation_id_for_test(run_id: str, msisdn: str) -> str:
    """New for every test send, so two test sends to one phone are two sends."""
    return "ts-" + hashlib.blake2b(f"{run_id}\x00{msisdn}".encode(), digest_size=8).hexdigest()


def batches_for_test(compiler: Compiler, chosen: Compiled, numbers: Sequence[str], run_id: str) -> Iterator[Batch]:
    """The chosen recipient's message (and its `to[]` values in platform mode) for each
    test number, batched by the campaign's own compiler, keyed by this run."""
    origin = Location("--to")
    message = chosen.message

    def compiled() -> Iterator[Compiled]:
        for msisdn in numbers:
            yield Compiled(Message(msisdn, correlation_id_for_test(run_id, msisdn), message.text, message.count, origin),
                           chosen.own_values)

    key_base = f"{ledger_key(compiler.campaign.id)}\x00{run_id}\x00{compiler.api}"
    for batch in compiler.iter_batches(compiled()):
        digest = hashlib.sha256(f"{key_base}\x00{batch.wire}".encode()).hexdigest()[:40]
        yield replace(batch, key=f"test-{batch.index:03d}-{digest}")


@dataclass(frozen=True)
class Delivery:
    msisdn: str
    status: str  # the ledger's batch status: accepted, failed, uncertain, pending
    message_id: str | None


@dataclass(frozen=True)
class TestSendResult:
    campaign_id: str
    personalisation: str  # what the message was sent with: local or platform
    api: Api
    rendered_for: str  # the recipient whose message it is
    text: str  # the final text, as the handset should show it
    wire_text: str | None  # the text in the request when it differs (platform placeholders, a template id)
    deliveries: tuple[Delivery, ...]
    exit_code: ExitCode
