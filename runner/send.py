"""Apply: send a compiled campaign exactly once, at the tenant's TPS.

The ledger is the source of truth. A batch is durably `in-flight` before its request
leaves and `accepted` when the answer arrives, so after a crash a re-run knows what
was taken (skip), what was refused (send again), and what it cannot know (`uncertain`:
held unless the user asks to resend it with the same Idempotency-Key).
"""

from __future__ import annotations

import functools
import hashlib
import math
import queue
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, Protocol

from .client import Answer, Outcome
from .compile import Compiler
from .errors import CampaignError, ExitCode
from .files import hash_file
from .ledger import Ledger, LedgerUnavailable
from .model import Api, Batch, Campaign, RecipientFile

# The client side keeps its window a little longer than one second: the server counts
# arrivals, and arrival times jitter with latency, so an exact 1.000 s window would
# occasionally be read as over the limit.
RATE_WINDOW_SECONDS = 1.02
# How far behind its even spacing the limiter lets a late sender catch up (see RateLimiter).
CATCH_UP_SECONDS = 0.02
# Ctrl-C, and the SIGTERM of a cancelled pipeline: stop dispatching, record what is on the wire.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Sender(Protocol):
    def send(self, batch: Batch, on_departure: Callable[[], None] | None = None) -> Answer:
        """POST once; call `on_departure` as the request starts to leave (after connecting)."""


@dataclass(frozen=True)
class SendPolicy:
    max_attempts: int = 8
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_in_flight: int = 8
    resend_uncertain: bool = False


# `apply` without --max-in-flight: enough requests in flight to keep the tenant's TPS
# moving if each takes up to ASSUMED_LATENCY_SECONDS, within these bounds.
ASSUMED_LATENCY_SECONDS = 0.1
MIN_IN_FLIGHT, MAX_IN_FLIGHT = 8, 128


def in_flight_for(tps: int, requests: int, destinations: int) -> int:
    """Requests in flight that the campaign needs: one request per destination (local
    personalisation) at 1,000 TPS is 1,000 requests a second, 100 in flight at 100 ms
    each, where 8 would cap it at 80 a second; full 1,000-destination requests need few."""
    per_request = destinations / requests if requests else 1.0
    per_second = tps / max(1.0, per_request)
    return max(MIN_IN_FLIGHT, min(MAX_IN_FLIGHT, math.ceil(per_second * ASSUMED_LATENCY_SECONDS)))


# Bumped when a key of `campaign apply --format json` changes meaning or goes away.
APPLY_JSON_FORMAT_VERSION = 1


@dataclass(frozen=True)
class BatchFailure:
    batch_key: str
    destinations: int
    http_status: int | None
    code: str | None
    message: str


@dataclass
class ApplyResult:
    campaign_id: str
    planned_batches: int = 0
    planned_destinations: int = 0
    already_accepted: int = 0  # batches skipped: accepted by an earlier run
    accepted: int = 0
    accepted_destinations: int = 0
    failed: int = 0
    failed_destinations: int = 0
    uncertain: int = 0  # batches held (or left) uncertain
    uncertain_destinations: int = 0
    attempts: int = 0
    max_in_flight: int = 0  # requests this run let await an answer at once
    elapsed_seconds: float = 0.0
    # The send phase: from the first request's departure to the end of the last one's slot
    # in the pacing schedule (a batch of n occupies n/tps of a window). Rates are measured
    # over it, so one quick batch does not read as thousands a second.
    send_seconds: float = 0.0
    interrupted: bool = False
    auth_failure: str | None = None  # the vendor refused the credentials: the run stopped
    failures: list[BatchFailure] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        if self.auth_failure is not None:
            return ExitCode.USAGE
        if self.interrupted:
            return ExitCode.INTERRUPTED
        if self.failed or self.uncertain:
            return ExitCode.PARTIAL
        return ExitCode.OK

    @property
    def destinations_per_second(self) -> float:
        return self.accepted_destinations / self.send_seconds if self.send_seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": APPLY_JSON_FORMAT_VERSION,
            "campaignId": self.campaign_id,
            "plannedBatches": self.planned_batches,
            "plannedDestinations": self.planned_destinations,
            "alreadyAccepted": self.already_accepted,
            "accepted": self.accepted,
            "acceptedDestinations": self.accepted_destinations,
            "failed": self.failed,
            "failedDestinations": self.failed_destinations,
            "uncertain": self.uncertain,
            "uncertainDestinations": self.uncertain_destinations,
            "attempts": self.attempts,
            "maxInFlight": self.max_in_flight,
            "elapsedSeconds": round(self.elapsed_seconds, 3),
            "sendSeconds": round(self.send_seconds, 3),
            "destinationsPerSecond": round(self.destinations_per_second, 1),
            "interrupted": self.interrupted,
            "authFailure": self.auth_failure,
            "exitCode": int(self.exit_code),
            "failures": [
                {"batchKey": f.batch_key, "destinations": f.destinations, "httpStatus": f.http_status,
                 "code": f.code, "message": f.message}
                for f in self.failures
            ],
        }


# --- inputs --------------------------------------------------------------------------


# How this version of campaign-runner turns inputs into requests. Bump it whenever the
# same inputs compile to other bodies (2: local personalisation by default, values sent
# as the strings written): batch keys are digests of the bodies, so a re-run with new
# keys would not recognise what an older version sent. With the bump, a ledger written
# by the older version reads as "inputs changed": apply refuses (exit 4), and
# --allow-changes sends only to recipients not yet accepted.
COMPILE_VERSION: Final = 2


def input_hash(campaign: Campaign, api: Api) -> str:
    """What the campaign's requests are made of: the file, every recipient file, the API,
    and the version of the compiler (see COMPILE_VERSION)."""
    digest = hashlib.sha256(f"campaign-runner/{COMPILE_VERSION}\x00{api}\x00".encode())
    files = [campaign.path] + [s.path for s in (*campaign.recipients, *campaign.exclude) if isinstance(s, RecipientFile)]
    for path in files:
        digest.update(str(path.name).encode() + b"\x00")
        hash_file(digest, path)
    return digest.hexdigest()


def schedule_for_now(campaign: Campaign, now: datetime, *, send_now: bool) -> Campaign:
    """Refuse a stale schedule, or with --send-now drop the times that have passed."""
    stale = []
    if campaign.send_at is not None and campaign.send_at <= now:
        stale.append(f"sendAt {campaign.send_at.isoformat()} has passed")
    if campaign.expire_at is not None and campaign.expire_at <= now:
        stale.append(f"expireAt {campaign.expire_at.isoformat()} has passed")
    if not stale:
        return campaign
    if not send_now:
        raise CampaignError(
            f"{campaign.source.display_name}: refusing to apply: " + "; ".join(stale),
            exit_code=ExitCode.REFUSED,
            hint="update the schedule, or pass --send-now to send immediately without the passed times",
        )
    return replace(
        campaign,
        send_at=None if campaign.send_at is not None and campaign.send_at <= now else campaign.send_at,
        expire_at=None if campaign.expire_at is not None and campaign.expire_at <= now else campaign.expire_at,
    )


# --- pacing --------------------------------------------------------------------------


class RateLimiter:
    """A sliding window over destinations: no window of RATE_WINDOW_SECONDS holds more than `rate`.

    Counting destinations (not requests) is what the vendor's TPS means; a sliding
    window (not a token bucket with a burst) is what keeps every second under it.
    Batches are also spaced evenly (a batch of n waits n/rate of a window after the
    previous one), so a second's budget is not spent in one burst that arrival jitter
    at the server could push over the limit.
    """

    def __init__(self, rate: int, *, window: float = RATE_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self.window = window
        self.clock = clock
        self.sleep = sleep
        self.sent: deque[list[float]] = deque()  # [departure time, destinations]
        self.in_window = 0
        self.paused_until = 0.0
        self.next_start = 0.0  # even spacing: no burst of a whole second at a window's start
        self.lock = threading.Lock()
        # One waiter at a time: the others block here instead of all polling for the
        # next slot (at 1,000 requests a second and 50 in flight, that polling was
        # tens of thousands of wake-ups a second, most of the client's CPU).
        self.turn = threading.Lock()

    def pause(self, seconds: float) -> None:
        """The server said slow down: nobody sends until then."""
        with self.lock:
            self.paused_until = max(self.paused_until, self.clock() + seconds)

    def acquire(self, count: int, stop: threading.Event | None = None, *,
                departs_later: bool = False) -> list[float] | None:
        """Wait until `count` destinations fit the window and reserve them; None if `stop` was set.

        The reservation ([time, destinations, leaving]) is returned so that `touch` can move
        it to the moment the request really leaves: the window must count departures. With
        `departs_later` it stays in the window until `touch` or `settle` says its request
        left or never will: a connection that takes longer than a window to open must not
        let the reservation expire and its request then leave beside the next window's.
        """
        count = min(count, self.rate)
        with self.turn:
            return self._acquire(count, stop, 1.0 if departs_later else 0.0)

    def _acquire(self, count: int, stop: threading.Event | None, leaving: float) -> list[float] | None:
        while True:
            with self.lock:
                now = self.clock()
                while self.sent and not self.sent[0][2] and now - self.sent[0][0] >= self.window:
                    self.in_window -= int(self.sent.popleft()[1])
                wait_for = max(self.paused_until, self.next_start) - now
                if wait_for <= 0 and self.in_window + count <= self.rate:
                    # spaced from the previous slot, not from now: a sender that was late
                    # (a commit, a busy CPU) catches up with up to CATCH_UP_SECONDS of its
                    # slots at once, instead of losing that time for good
                    spacing = count * self.window / self.rate
                    self.next_start = max(self.next_start, now - CATCH_UP_SECONDS) + spacing
                    reservation = [now, count, leaving]
                    self.sent.append(reservation)
                    self.in_window += count
                    return reservation
                if wait_for <= 0:
                    wait_for = self.window - (now - self.sent[0][0])
            if stop is not None and stop.is_set():
                return None
            self.sleep(min(max(wait_for, 0.001), 0.25))

    def touch(self, reservation: list[float]) -> None:
        """Its request is leaving: restart the reservation's second now (only ever later, so
        the window never undercounts)."""
        with self.lock:
            reservation[0] = max(reservation[0], self.clock())
            reservation[2] = 0.0

    def settle(self, reservation: list[float]) -> None:
        """The attempt is over: a reservation never touched (nothing left, or a transport
        without the departure hook) expires from its own time, as any other."""
        with self.lock:
            reservation[2] = 0.0


def backoff_delay(attempt: int, policy: SendPolicy, retry_after: float | None, rng: random.Random) -> float:
    """Exponential backoff with full jitter; never sooner than the server's Retry-After."""
    ceiling = min(policy.backoff_cap, policy.backoff_base * (2 ** (attempt - 1)))
    delay = rng.uniform(ceiling / 2, ceiling)
    return max(delay, retry_after or 0.0)


# --- the ledger's writes, committed in groups ----------------------------------------

# Pending batches recorded per transaction: up to this many, or this many destinations
# (a campaign of full 1000-destination requests records them one at a time, as before).
PENDING_GROUP_BATCHES = 100
PENDING_GROUP_DESTINATIONS = 1000
MAX_GROUP_WRITES = 256  # status changes committed together at most
# Batches marked in flight by one commit, ahead of their slots: at most this many, and
# about 1/PREMARK_PER_SECOND of a second of the tenant's TPS (at least one batch). A run
# that dies leaves these uncertain with the ones on the wire; a run that stops puts
# them back to pending.
PREMARK_BATCHES = 16
PREMARK_PER_SECOND = 50
LOCK_CHECK_SECONDS = 1.0  # how often the dispatcher asks the ledger whether its apply lock holds
# How long answers wait for company before their commit (see GroupCommitter._gather).
# Nothing depends on an answer being durable sooner (see GroupCommitter.write).
ANSWER_LINGER_SECONDS = 0.02


@dataclass
class _Write:
    change: Callable[[], None]
    waited: bool = True  # False: nobody waits for it, a failure is kept for the next write or close
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class GroupCommitter:
    """The send threads' ledger writes, made by one thread that commits whatever is
    waiting in one transaction.

    Each write is durable before `write` returns, as before (an `in-flight` mark still
    lands before its request leaves); what changes is that one fsync now covers every
    write that arrived meanwhile. With one request per destination (local
    personalisation) at 1,000 TPS, three fsyncs per request would cap the rate at the
    disk's few hundred commits a second.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._failure: BaseException | None = None  # of a write nobody waited for
        self._failure_raised = False
        self._thread = threading.Thread(target=self._loop, name="ledger-writer", daemon=True)
        self._thread.start()

    def write(self, change: Callable[[], None], *, wait: bool = True) -> None:
        """Make `change` durable with the next group. With `wait` (an `in-flight` mark) return
        once it is committed; without (an answer's record) return at once: its commit is
        still done before `close` returns, and a failure of it is raised by the next write or
        by `close`. Nothing depends on an answer's record being durable sooner: if the
        process dies first, the batch stays `in-flight` and the next run holds it as
        uncertain, as if the answer had never arrived, so it is never sent twice."""
        if self._failure is not None:
            raise self._failure
        item = _Write(change, waited=wait)
        self._queue.put(item)
        if not wait:
            return
        item.done.wait()
        if item.error is not None:
            raise item.error

    def close(self) -> None:
        """Commit whatever is waiting, stop the thread; raise a failure nobody has seen yet."""
        self._queue.put(None)
        self._thread.join()
        if self._failure is not None and not self._failure_raised:
            self._failure_raised = True
            raise self._failure

    def _loop(self) -> None:
        closing = False
        while not closing:
            first = self._queue.get()
            if first is None:
                return
            items, closing = self._gather(first)
            try:
                with self.ledger.group():
                    for item in items:
                        item.change()
            except LedgerUnavailable as lost:
                # The storage failed, not one write: retrying each on a fresh connection
                # would hide a lost database (and the apply lock that went with it).
                for item in items:
                    item.error = lost
            except BaseException:
                # The group was rolled back whole: each write again on its own, so each
                # caller gets its own answer (most are fine; one raised).
                for item in items:
                    try:
                        item.change()
                    except BaseException as error:
                        item.error = error
            for item in items:
                if item.error is not None and not item.waited and self._failure is None:
                    self._failure = item.error
                item.done.set()

    def _gather(self, first: _Write) -> tuple[list[_Write], bool]:
        """The writes of one group, and whether `close` was asked. A group that only records
        answers waits up to ANSWER_LINGER_SECONDS for more (or for a waited write, which
        ends the wait): at one request per destination, a commit (and a wake-up of this
        thread) per answer was a large share of the sender's CPU."""
        items = [first]
        linger_until = None if first.waited else time.monotonic() + ANSWER_LINGER_SECONDS
        while len(items) < MAX_GROUP_WRITES:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if linger_until is None:
                    break
                remaining = linger_until - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is None:
                return items, True
            items.append(item)
            if item.waited:
                linger_until = None
        return items, False


def _chunks(batches: Iterator[Batch], most_batches: int, most_destinations: int) -> Iterator[list[Batch]]:
    """Consecutive batches: up to `most_batches`, and up to `most_destinations` unless one alone has more."""
    chunk: list[Batch] = []
    destinations = 0
    for batch in batches:
        chunk.append(batch)
        destinations += len(batch.destinations)
        if len(chunk) >= most_batches or destinations >= most_destinations:
            yield chunk
            chunk, destinations = [], 0
    if chunk:
        yield chunk


def _pending_groups(batches: Iterator[Batch]) -> Iterator[list[Batch]]:
    """Consecutive batches, a few at a time, for `record_pending_many` (one transaction)."""
    return _chunks(batches, PENDING_GROUP_BATCHES, PENDING_GROUP_DESTINATIONS)


# --- the send loop -------------------------------------------------------------------


class Applier:
    def __init__(self, campaign: Campaign, *, ledger: Ledger, sender: Sender, api: Api, policy: SendPolicy,
                 run_id: str, on_progress: Callable[[int], None] | None = None, seed: int | None = None,
                 log: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] | None = None) -> None:
        """`clock` and `sleep` pace sending and back off between attempts: the real ones, or a
        test's virtual clock, so pacing and retry tests never wait on (or race) the wall clock."""
        self.campaign = campaign
        self.ledger = ledger
        self.sender = sender
        self.api = api
        self.policy = policy
        self.run_id = run_id
        self.on_progress = on_progress or (lambda n: None)
        self.log = log
        self.limiter = RateLimiter(campaign.tps, clock=clock, sleep=sleep or time.sleep)
        self.sleep = sleep
        self.stop = threading.Event()
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        self.result_lock = threading.Lock()
        self.result = ApplyResult(campaign.id)
        self.first_departure: float | None = None
        self.last_slot_end = 0.0
        self.slot_seconds = 0.0  # the pacing slots of every departure, end to end
        self._committer: GroupCommitter  # started by `run`, closed when it ends

    def run(self, batches: Iterator[Batch]) -> ApplyResult:
        with self._stop_on_signals():
            return self._run(batches)

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """While sending, the first Ctrl-C (or SIGTERM) only sets `stop`: raised as
        KeyboardInterrupt it could land between a ledger transaction's BEGIN and its
        try-block and leave the transaction open on the connection the workers still write
        through. A second signal gets the previous handlers (KeyboardInterrupt, handled below)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: handler for signum in STOP_SIGNALS if (handler := signal.getsignal(signum)) is not None}

        def stop(signum: int, frame: object) -> None:
            self.stop.set()
            self.result.interrupted = True
            for number, handler in previous.items():
                signal.signal(number, handler)

        for signum in previous:
            signal.signal(signum, stop)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _run(self, batches: Iterator[Batch]) -> ApplyResult:
        """This thread records batches as pending, marks the next few in flight (one commit),
        and paces them out to `max_in_flight` sender threads, one batch to a free thread as
        its slot comes; the threads send, record answers, and retry.

        Pacing and the `in-flight` marks live in one thread because at one request per
        destination their hand-offs were the sender's cost: every worker taking turns at
        the limiter and waiting for its own commit was a dozen thread switches a request,
        more CPU than the request itself. (A thread pool with one future per batch was
        worse still: every `wait(FIRST_COMPLETED)` walked all the futures in flight.)"""
        started = time.monotonic()
        workers = self.result.max_in_flight = max(1, self.policy.max_in_flight)
        work: queue.SimpleQueue[tuple[Batch, list[float]] | None] = queue.SimpleQueue()
        self._free = threading.Semaphore(workers)  # threads not sending
        self._next_lock_check = 0.0
        self._was: dict[str, str] = {}  # a failed or uncertain batch's status before this run marked it
        self._not_handed_out: list[str] = []  # marked in flight by the dispatcher, not yet with a thread
        self._worker_error: BaseException | None = None
        self._ends_queued = 0
        self._committer = GroupCommitter(self.ledger)
        threads = [threading.Thread(target=self._work, args=(work,), name=f"send-{n}", daemon=True)
                   for n in range(workers)]
        for thread in threads:
            thread.start()
        premark = max(1, self.campaign.tps // PREMARK_PER_SECOND)
        try:
            for chunk in _chunks(self._to_send(batches), PREMARK_BATCHES, premark):
                if not self._dispatch(chunk, work):
                    break
        except KeyboardInterrupt:
            self.stop.set()
            self.result.interrupted = True
        finally:
            # Answers of requests already on the wire are still recorded.
            try:
                self._finish_workers(work, threads)
            except KeyboardInterrupt:
                self.stop.set()
                self.result.interrupted = True
                self._finish_workers(work, threads)
            self._committer.close()  # after the workers: every write they made is in
            try:
                self._put_back(self._not_handed_out)  # marked in flight, but they never left
            except CampaignError:
                pass  # the ledger is gone: they stay in flight, held as uncertain by the next run
            self.result.elapsed_seconds = time.monotonic() - started
            if self.first_departure is not None:
                # never shorter than the slots themselves: requests that left together
                # (a catch-up, first connections of unequal set-up) would read above the TPS
                self.result.send_seconds = max(self.last_slot_end - self.first_departure, self.slot_seconds)
        if self._worker_error is not None:
            raise self._worker_error
        self._count_held_uncertain()
        return self.result

    def _to_send(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """The batches to send, each recorded as pending (a group a transaction) before it is yielded."""
        for group in _pending_groups(batches):
            if self.stop.is_set():
                return
            self.ledger.record_pending_many(self.campaign.id, group)
            statuses = self.ledger.batch_statuses([batch.key for batch in group])
            for batch in group:
                if self.stop.is_set():
                    return
                status = statuses.get(batch.key)
                if self._should_send(batch, status):
                    if status in ("failed", "uncertain"):  # few; pending is the default
                        self._was[batch.key] = status
                    yield batch

    def _dispatch(self, chunk: list[Batch], work: queue.SimpleQueue[tuple[Batch, list[float]] | None]) -> bool:
        """Mark `chunk` in flight (one commit, before any of it leaves), then hand each batch
        to a free thread at its pacing slot. False when the run stops: the batches not
        handed out go back to the status they had, uncounted (they never left; `_run` puts
        them back once the threads are done)."""
        if self.stop.is_set():
            return False
        keys = [batch.key for batch in chunk]
        now = time.monotonic()
        if now >= self._next_lock_check:
            self._next_lock_check = now + LOCK_CHECK_SECONDS
            self.ledger.check_apply_lock()  # nothing new leaves once the lock may be another's
        self._committer.write(functools.partial(self._mark_in_flight, keys))
        self._not_handed_out = keys
        for batch in chunk:
            reservation = self._free_slot(len(batch.destinations))
            if reservation is None:
                return False
            work.put((batch, reservation))
            self._not_handed_out = self._not_handed_out[1:]
        return True

    def _free_slot(self, destinations: int) -> list[float] | None:
        """A free sender thread, then a pacing slot (so the batch leaves at its slot); None when stopping."""
        while not self._free.acquire(timeout=0.1):
            if self.stop.is_set():
                return None
        reservation = None if self.stop.is_set() else self.limiter.acquire(destinations, self.stop,
                                                                           departs_later=True)
        if reservation is None:
            self._free.release()
        return reservation

    def _mark_in_flight(self, keys: list[str]) -> None:
        for key in keys:
            self.ledger.mark_in_flight(key, self.run_id)

    def _put_back(self, keys: list[str]) -> None:
        """Batches this run marked in flight that never left: back to the status they had
        (pending, failed, or uncertain with --resend-uncertain, which a stopped run must not
        turn into pending: the next run would send those without being asked), their
        attempt uncounted. Straight to the ledger, not through the committer: this must
        happen even after an earlier answer's record failed."""
        for key in keys:
            self.ledger.mark_unsent(key, back_to=self._was.get(key, "pending"))

    def _work(self, work: queue.SimpleQueue[tuple[Batch, list[float]] | None]) -> None:
        while True:
            item = work.get()
            if item is None:
                return
            try:
                self._send_batch(*item)
            except BaseException as error:  # re-raised by `_run` once every thread is done
                with self.result_lock:
                    if self._worker_error is None:
                        self._worker_error = error
                self.stop.set()
            finally:
                self._free.release()

    def _finish_workers(self, work: queue.SimpleQueue[tuple[Batch, list[float]] | None],
                        threads: list[threading.Thread]) -> None:
        """Let the threads finish what they were handed, then end them: one end mark per thread."""
        while self._ends_queued < len(threads):
            work.put(None)
            self._ends_queued += 1
        for thread in threads:
            thread.join()

    def _count_held_uncertain(self) -> None:
        """Report every uncertain batch the ledger holds, not only those this run's batches
        met: after a re-plan (--allow-changes) the held ones are no longer compiled."""
        if not self.ledger.has_uncertain(self.campaign.id):
            return
        summary = self.ledger.summary(self.campaign.id)
        with self.result_lock:
            self.result.uncertain = summary.batches["uncertain"]
            self.result.uncertain_destinations = summary.destinations["uncertain"]

    def _should_send(self, batch: Batch, status: str | None) -> bool:
        """Whether to send `batch`, already recorded as pending (with its group), given its
        ledger status as read once for the group (only this process sends the campaign)."""
        with self.result_lock:
            self.result.planned_batches += 1
            self.result.planned_destinations += len(batch.destinations)
            if status == "accepted":
                self.result.already_accepted += 1
                self.on_progress(len(batch.destinations))
                return False
            if status == "uncertain" and not self.policy.resend_uncertain:
                self._count_uncertain(batch)
                return False
        return True

    def _count_uncertain(self, batch: Batch) -> None:
        self.result.uncertain += 1
        self.result.uncertain_destinations += len(batch.destinations)

    def _send_batch(self, batch: Batch, reservation: list[float]) -> None:
        """Send a batch the dispatcher marked in flight and paced (its first attempt), and
        retry it as its answers allow, each retry paced and marked in flight here."""
        answer: Answer | None = None
        for attempt in range(1, self.policy.max_attempts + 1):
            if attempt == 1 and self.stop.is_set():  # stopped since it was handed out: it never left
                self.limiter.settle(reservation)
                self._put_back([batch.key])
                return
            if attempt > 1:
                if self.stop.is_set():
                    break
                retry_slot = self.limiter.acquire(len(batch.destinations), self.stop, departs_later=True)
                if retry_slot is None:
                    break
                reservation = retry_slot
                self._committer.write(functools.partial(self.ledger.mark_in_flight, batch.key, self.run_id))
            with self.result_lock:
                self.result.attempts += 1
            # the window counts from the departure (not the fsync, nor the connection set-up)
            try:
                answer = self.sender.send(batch, on_departure=functools.partial(self.limiter.touch, reservation))
            finally:
                self.limiter.settle(reservation)
            self._note_departure(reservation)
            if self.log is not None:
                self.log(f"batch {batch.key} attempt {attempt}: {answer.outcome.value}"
                         f" (HTTP {answer.http_status}, code {answer.code}) {answer.message}")
            if answer.outcome is Outcome.ACCEPTED:
                self._committer.write(functools.partial(self.ledger.mark_accepted, batch.key,
                                                        http_status=answer.http_status or 0,
                                                        message_id=answer.message_id), wait=False)
                with self.result_lock:
                    self.result.accepted += 1
                    self.result.accepted_destinations += len(batch.destinations)
                self.on_progress(len(batch.destinations))
                return
            if answer.auth_failed:
                self._stop_for_auth(answer)
                break
            if answer.outcome is Outcome.REJECTED:
                break
            if answer.outcome is Outcome.UNCERTAIN and not self.policy.resend_uncertain:
                break  # it may have been taken: held, not sent again in this run
            if attempt == self.policy.max_attempts:
                break
            with self.rng_lock:
                delay = backoff_delay(attempt, self.policy, answer.retry_after, self.rng)
            if answer.retry_after is not None or answer.http_status == 429:
                self.limiter.pause(delay)
            if self._back_off(delay):
                break
        assert answer is not None
        if answer.outcome is Outcome.UNCERTAIN:
            self._committer.write(functools.partial(self.ledger.mark_uncertain, batch.key, reason=answer.message))
            with self.result_lock:
                self._count_uncertain(batch)
                self._record_failure(batch, answer)
            return
        self._committer.write(functools.partial(self.ledger.mark_failed, batch.key, http_status=answer.http_status,
                                                code=answer.code, message=answer.message))
        with self.result_lock:
            self.result.failed += 1
            self.result.failed_destinations += len(batch.destinations)
            self._record_failure(batch, answer)

    def _back_off(self, delay: float) -> bool:
        """Wait `delay` seconds before the next attempt; True when the run is stopping."""
        if self.sleep is None:
            return self.stop.wait(delay)
        self.sleep(delay)
        return self.stop.is_set()

    def _note_departure(self, reservation: list[float]) -> None:
        departure, count = reservation[0], reservation[1]
        with self.result_lock:
            if self.first_departure is None or departure < self.first_departure:
                self.first_departure = departure
            slot = count * self.limiter.window / self.limiter.rate
            self.last_slot_end = max(self.last_slot_end, departure + slot)
            self.slot_seconds += slot

    def _stop_for_auth(self, answer: Answer) -> None:
        """A refused key or JWT is refused for every batch: stop at the first such answer
        instead of trying them all (what is left stays pending for the next run)."""
        self.stop.set()
        with self.result_lock:
            if self.result.auth_failure is None:
                self.result.auth_failure = answer.message

    def _record_failure(self, batch: Batch, answer: Answer) -> None:
        if len(self.result.failures) < 100:
            self.result.failures.append(
                BatchFailure(batch.key, len(batch.destinations), answer.http_status, answer.code, answer.message))


# Kept after the stored input hash once a campaign was re-planned around what had already
# been sent (--allow-changes): its batches no longer match a compile of all recipients, so
# every later run compiles only what is left, even with unchanged inputs.
REPLANNED_SUFFIX = "+replanned"


def prepare(campaign: Campaign, ledger: Ledger, *, api: Api, allow_changes: bool, resend_uncertain: bool) -> Compiler:
    """Check the ledger against the inputs and return the compiler for what is left to send."""
    new_hash = input_hash(campaign, api)
    stored = ledger.campaign_hash(campaign.id)
    replanned = stored is not None and stored.endswith(REPLANNED_SUFFIX)
    old_hash = stored.removesuffix(REPLANNED_SUFFIX) if stored is not None else None
    skip: Callable[[str], bool] | None = None
    if old_hash is not None and old_hash != new_hash:
        summary = ledger.summary(campaign.id)
        touched = sum(summary.destinations.get(s, 0) for s in ("accepted", "in-flight", "uncertain"))
        if touched:
            if not allow_changes:
                raise CampaignError(
                    f"{campaign.source.display_name}: the campaign's inputs (or how this version of campaign-runner "
                    f"builds its requests) changed after {touched} destinations were sent (or may have been)",
                    exit_code=ExitCode.REFUSED,
                    hint="pass --allow-changes to send only to recipients not already accepted, or give the "
                    "campaign a new id",
                )
            replanned = True
    if replanned:
        done = ledger.accepted_msisdns(campaign.id)
        unsure = ledger.msisdns_with_status(campaign.id, "uncertain") | ledger.msisdns_with_status(
            campaign.id, "in-flight")
        if resend_uncertain and unsure:
            # Their batches were planned from the old inputs and cannot be rebuilt: resending
            # them means new batches, new keys, and no deduplication by the vendor, so any
            # the vendor already took would arrive twice. That is never done.
            raise CampaignError(
                f"{campaign.source.display_name}: {len(unsure)} uncertain destinations were batched before the "
                "campaign's inputs changed: they cannot be resent with their Idempotency-Key",
                exit_code=ExitCode.REFUSED,
                hint="apply without --resend-uncertain sends the rest and keeps them held; to resend them, restore "
                "the previous inputs and apply --resend-uncertain first",
            )
        if not resend_uncertain:
            done |= unsure
        skip = done.__contains__
    ledger.set_campaign_hash(campaign.id, new_hash + (REPLANNED_SUFFIX if replanned else ""))
    return Compiler(campaign, api, skip=skip)
