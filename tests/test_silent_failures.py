"""Behaviours whose breaking went unnoticed: each test here was checked against the small
bug it names (introduced by hand in a copy, seen failing, reverted).

Compiles read real campaign files; sending runs the real `Applier` over real SQLite, on
a virtual clock where pacing and backoff are the point, against a scripted vendor (a
stand-in for HTTP answers, not for any part of campaign-runner) or the sandbox.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from runner.client import Answer, ApiClient, Credentials, Outcome
from runner.compile import Compiler
from runner.errors import CampaignError, ExitCode
from runner.ledger import Ledger
from runner.model import Batch
from runner.sandbox import Sandbox, SandboxSettings
from runner.send import Applier, SendPolicy, backoff_delay, input_hash, schedule_for_now

from .helpers import campaign_from, number, write_csv

KEY = "silent-key-1"


def destinations(campaign: Any, api: str = "v2") -> list[str]:
    return [d.msisdn for batch in Compiler(campaign, api).iter_batches() for d in batch.destinations]  # type: ignore[arg-type]


# --- 1. the exclude list applies to inline recipients too -----------------------------------


def test_an_excluded_number_given_inline_gets_no_message(tmp_path: Path) -> None:
    write_csv(tmp_path / "optout.csv", ["msisdn"], [[number(2)]])
    campaign = campaign_from(tmp_path, {
        "content": {"text": "Hi"},
        "recipients": [{"msisdn": number(1)}, {"msisdn": number(2)}, {"msisdn": number(3)}],
        "exclude": ["optout.csv", {"msisdn": number(3)}],
    })
    assert destinations(campaign) == [number(1)]


# --- 2. more distinct texts than the open-group buffer ---------------------------------------


def test_600_distinct_texts_reach_600_recipients(tmp_path: Path) -> None:
    numbers = [number(i) for i in range(600)]
    write_csv(tmp_path / "people.csv", ["msisdn", "code"], [[m, f"C{i:04d}"] for i, m in enumerate(numbers)])
    campaign = campaign_from(tmp_path, {"content": {"text": "Your code {{ code | lower }}"},  # jinja: local texts
                                        "recipients": [{"file": "people.csv"}], "throughput": {"tps": 100}})
    sent = destinations(campaign)
    assert len(sent) == 600
    assert sorted(sent) == sorted(numbers)


# --- 3. a forced type: unicode is sent and counted as unicode ----------------------------------


def test_forced_unicode_is_sent_and_counted_as_ucs2(tmp_path: Path) -> None:
    campaign = campaign_from(tmp_path, {"content": {"text": "x" * 100, "type": "unicode"},
                                        "recipients": [{"msisdn": number(1)}]})
    compiler = Compiler(campaign, "v2")
    batches = list(compiler.iter_batches())
    assert batches[0].body["content"]["type"] == "unicode"
    stats = compiler.stats
    assert stats.by_encoding == {"UCS-2": 1}
    assert stats.segments == 2  # 100 UCS-2 units: 67 + 33; as GSM-7 it would be 1


# --- 4. the rendered-length check -------------------------------------------------------------


@pytest.mark.parametrize("text", ["{{ long }}", "{% if long %}{{ long }}{% endif %}"], ids=["plain", "jinja"])
def test_a_rendered_text_over_1024_characters_is_refused(tmp_path: Path, text: str) -> None:
    write_csv(tmp_path / "people.csv", ["msisdn", "long"], [[number(1), "y" * 1025]])
    campaign = campaign_from(tmp_path, {"content": {"text": text}, "recipients": [{"file": "people.csv"}]})
    with pytest.raises(CampaignError) as caught:
        destinations(campaign)
    assert "1025 characters after rendering; the API takes at most 1024 [text-length]" in caught.value.message


# --- sending on a virtual clock ------------------------------------------------------------------


class VirtualClock:
    """Shared by every worker thread: time passes only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.lock = threading.Lock()
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.sleeps.append(seconds)
            self.now += max(seconds, 0.0)


@dataclass
class ScriptedVendor:
    """Answers from a script, keyed by attempt number per batch; records departures."""

    clock: VirtualClock
    answer: Callable[[Batch, int, float], Answer]
    connect_seconds: float = 0.0  # the first request's connection set-up, before it departs
    sent: list[tuple[float, str]] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, batch: Batch, on_departure: Callable[[], None] | None = None) -> Answer:
        if not self.sent and self.connect_seconds:
            self.clock.sleep(self.connect_seconds)
        if on_departure is not None:
            on_departure()
        with self.lock:
            self.attempts[batch.key] = self.attempts.get(batch.key, 0) + 1
            self.sent.append((self.clock(), batch.key))
            attempt = self.attempts[batch.key]
        if attempt > 50:
            raise AssertionError(f"batch {batch.key} retried without end")
        return self.answer(batch, attempt, self.clock())


def accepted(status: int = 201) -> Answer:
    return Answer(Outcome.ACCEPTED, status, None, "HTTP 201 Created", "m-1", None)


def refused_429(retry_after: float | None) -> Answer:
    return Answer(Outcome.RETRY, 429, "7020", "HTTP 429: 7020", None, retry_after)


def run_scripted(tmp_path: Path, count: int, *, tps: int, answer: Callable[[Batch, int, float], Answer],
                 policy: SendPolicy, connect_seconds: float = 0.0) -> tuple[Any, ScriptedVendor, Applier]:
    write_csv(tmp_path / "people.csv", ["msisdn"], [[number(i)] for i in range(count)])
    campaign = campaign_from(tmp_path, {"content": {"text": "Hi"}, "recipients": [{"file": "people.csv"}],
                                        "throughput": {"tps": tps}})
    clock = VirtualClock()
    vendor = ScriptedVendor(clock, answer, connect_seconds)
    with Ledger.open(tmp_path / "state.db") as ledger:
        applier = Applier(campaign, ledger=ledger, sender=vendor, api="v2", policy=policy,
                          run_id=ledger.begin_run(campaign.id), seed=1, clock=clock, sleep=clock.sleep)
        result = applier.run(Compiler(campaign, "v2").iter_batches())
    return result, vendor, applier


# --- 5. retries stop at max_attempts -----------------------------------------------------------


def test_retries_stop_at_max_attempts(tmp_path: Path) -> None:
    result, vendor, _ = run_scripted(tmp_path, 5, tps=10, answer=lambda b, n, now: refused_429(None),
                                     policy=SendPolicy(max_attempts=3, max_in_flight=1))
    assert list(vendor.attempts.values()) == [3]
    assert result.attempts == 3
    assert result.failed == 1 and result.exit_code == ExitCode.PARTIAL


# --- 6. backoff honours Retry-After --------------------------------------------------------------


def test_backoff_is_never_shorter_than_retry_after() -> None:
    import random

    policy = SendPolicy(backoff_base=0.5, backoff_cap=30.0)
    rng = random.Random(3)
    assert all(backoff_delay(1, policy, 12.0, rng) == 12.0 for _ in range(50))  # jittered ceiling 0.5 < 12
    assert all(0.25 <= backoff_delay(1, policy, None, rng) <= 0.5 for _ in range(50))


def test_a_retry_waits_out_the_servers_retry_after(tmp_path: Path) -> None:
    def answer(batch: Batch, attempt: int, now: float) -> Answer:
        return refused_429(20.0) if attempt == 1 else accepted()

    result, vendor, _ = run_scripted(tmp_path, 5, tps=10, answer=answer,
                                     policy=SendPolicy(max_in_flight=1))
    assert result.accepted == 1
    (first, _), (second, _) = vendor.sent
    assert second - first >= 20.0


def test_the_window_counts_a_request_from_its_departure_not_from_before_its_connection(tmp_path: Path) -> None:
    """The first request spends 0.5 s connecting: the next may not leave until a whole
    window after the first really left, or the vendor counts both in one second (7020)."""
    result, vendor, _ = run_scripted(tmp_path, 6, tps=2, answer=lambda b, n, now: accepted(),
                                     policy=SendPolicy(max_in_flight=1), connect_seconds=0.5)
    assert result.accepted == 3
    departures = [at for at, _ in vendor.sent]
    assert departures[0] == 1000.5
    gaps = [b - a for a, b in zip(departures, departures[1:])]
    assert len(gaps) == 2 and all(1.02 <= gap < 1.03 for gap in gaps), gaps


def test_a_stopped_run_puts_back_the_batches_it_marked_but_never_sent_as_they_were(tmp_path: Path) -> None:
    """--resend-uncertain, then a stop at the first answer: the dispatcher had marked the
    next batches in flight; those that never left go back to uncertain (pending would let
    the next plain apply send them unasked), their attempt uncounted."""
    write_csv(tmp_path / "people.csv", ["msisdn"], [[number(i)] for i in range(40)])
    campaign = campaign_from(tmp_path, {"content": {"text": "Hi {{ msisdn }}"}, "personalisation": "local",
                                        "recipients": [{"file": "people.csv"}], "throughput": {"tps": 1000}})
    clock = VirtualClock()
    no_answer = Answer(Outcome.UNCERTAIN, None, None, "no answer", None, None)
    with Ledger.open(tmp_path / "state.db") as ledger:
        first = Applier(campaign, ledger=ledger, sender=ScriptedVendor(clock, lambda b, n, now: no_answer), api="v2",
                        policy=SendPolicy(max_in_flight=1), run_id=ledger.begin_run(campaign.id), seed=1,
                        clock=clock, sleep=clock.sleep)
        assert first.run(Compiler(campaign, "v2").iter_batches()).uncertain == 40
        stopping: list[Applier] = []

        def answer(batch: Batch, attempt: int, now: float) -> Answer:
            stopping[0].stop.set()
            return accepted()

        vendor = ScriptedVendor(clock, answer)
        second = Applier(campaign, ledger=ledger, sender=vendor, api="v2",
                         policy=SendPolicy(max_in_flight=1, resend_uncertain=True),
                         run_id=ledger.begin_run(campaign.id), seed=1, clock=clock, sleep=clock.sleep)
        stopping.append(second)
        result = second.run(Compiler(campaign, "v2").iter_batches())
        records = ledger.batch_records(campaign.id)
    assert len(vendor.sent) == 1 and result.attempts == 1
    assert sorted(r.status for r in records) == ["accepted"] + ["uncertain"] * 39
    assert sorted(r.attempts for r in records) == [1] * 39 + [2]  # one attempt each, the resent one two


# --- 7. a 429 pauses every worker# --- 7. a 429 pauses every worker ------------------------------------------------------------------


def test_a_429_pauses_the_shared_limiter_not_only_the_refused_batch(tmp_path: Path) -> None:
    """The first answer is 429 with Retry-After 30: the limiter every worker acquires from
    must hold until then (test_apply's limiter test shows a pause holds every acquirer),
    and no request at all leaves in those 30 s."""
    refused_at: list[float] = []

    def answer(batch: Batch, attempt: int, now: float) -> Answer:
        if batch.index == 0 and attempt == 1:
            refused_at.append(now)
            return refused_429(30.0)
        return accepted()

    result, vendor, applier = run_scripted(tmp_path, 20, tps=5, answer=answer, policy=SendPolicy(max_in_flight=4))
    assert result.accepted == 4
    assert len(vendor.sent) == 5  # four batches, one of them twice
    # four workers: without the shared pause the others would send during the 30 s (a
    # request that left at the very moment of the refusal was already on its way)
    during = [at for at, _ in vendor.sent if refused_at[0] < at < refused_at[0] + 30.0]
    assert during == []
    assert applier.limiter.paused_until >= refused_at[0] + 30.0


# --- 8. --send-now keeps a future expireAt -----------------------------------------------------------


def test_send_now_drops_a_passed_send_at_but_keeps_a_future_expire_at(tmp_path: Path) -> None:
    campaign = campaign_from(tmp_path, {"content": {"text": "Hi"}, "recipients": [{"msisdn": number(1)}],
                                        "sendAt": "2026-11-24T09:00:00Z", "expireAt": "2026-11-26T09:00:00Z"})
    later = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)  # after sendAt, before expireAt
    with pytest.raises(CampaignError):
        schedule_for_now(campaign, later, send_now=False)
    now_campaign = schedule_for_now(campaign, later, send_now=True)
    assert now_campaign.send_at is None
    assert now_campaign.expire_at == datetime(2026, 11, 26, 9, 0, tzinfo=timezone.utc)
    body = next(Compiler(now_campaign, "v2").iter_batches()).body
    assert "sendAt" not in body
    assert body["expireAt"] == "2026-11-26T09:00:00.000Z"


# --- 9. a crashed run's in-flight batches are held, not resent ----------------------------------------


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxSettings(service_key=KEY)) as started:
        yield started


def test_in_flight_batches_of_a_crashed_run_are_held_uncertain(tmp_path: Path, sandbox: Sandbox) -> None:
    from .test_apply import apply

    write_csv(tmp_path / "people.csv", ["msisdn"], [[number(i)] for i in range(20)])
    campaign = campaign_from(tmp_path, {"content": {"text": "Hi"}, "recipients": [{"file": "people.csv"}],
                                        "throughput": {"tps": 10}})
    state = tmp_path / "state.db"
    first = next(Compiler(campaign, "v2").iter_batches())
    crashed = Ledger.open(state)  # a run that marked its first batch in flight, then died
    crashed.set_campaign_hash(campaign.id, input_hash(campaign, "v2"))
    crashed.record_pending(campaign.id, first)
    crashed.mark_in_flight(first.key, crashed.begin_run(campaign.id))
    crashed.close()

    run = apply(tmp_path / "campaign.yaml", sandbox.url, state, environ={"WEBEX_CONNECT_SERVICE_KEY": KEY})

    assert run.code == int(ExitCode.PARTIAL)
    assert "in flight when an earlier run died" in run.err
    held = {d.msisdn for d in first.destinations}
    sent = {m.msisdn for m in sandbox.messages()}
    assert len(held) == 10 and not held & sent
    assert len(sent) == 10
    with Ledger.open(state) as ledger:
        assert ledger.batch_status(first.key) == "uncertain"


# --- 10. v1 sends callbackUrl ------------------------------------------------------------------------------


def test_v1_sends_the_receipt_url_as_callback_url(tmp_path: Path) -> None:
    campaign = campaign_from(tmp_path, {"content": {"text": "Hi"}, "recipients": [{"msisdn": number(1)}],
                                        "notifyUrl": "https://hooks.example.com/wxc"})
    body = next(Compiler(campaign, "v1").iter_batches()).body
    assert body["callbackUrl"] == "https://hooks.example.com/wxc"
    assert "notifyUrl" not in body


def test_v1_callback_url_is_accepted_by_the_sandbox(tmp_path: Path, sandbox: Sandbox) -> None:
    campaign = campaign_from(tmp_path, {"content": {"text": "Hi"}, "recipients": [{"msisdn": number(1)}],
                                        "notifyUrl": "https://hooks.example.com/wxc"})
    batch = next(Compiler(campaign, "v1").iter_batches())
    with ApiClient(sandbox.url, Credentials(KEY)) as client:
        answer = client.send(batch)
    assert answer.outcome is Outcome.ACCEPTED, answer.message
    assert [item["url"] for item in sandbox.outbox()] == ["https://hooks.example.com/wxc"] * 2

