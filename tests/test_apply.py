"""Apply, end to end: real HTTP on 127.0.0.1 against the sandbox, real SQLite ledgers,
and the real `campaign` command in a subprocess where the process boundary matters
(locks, exit codes, what reaches stdout/stderr).

Nothing here is mocked: faults (429, 500, dropped answers, bad keys, unknown templates)
come from the sandbox, and every claim is checked against what the sandbox stored, what
the ledger says, and what the command printed.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import io
import json
import os
import random
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner import vendor
from runner.commands import ApplySettings, Console, StatusSettings, run_apply, run_status
from runner.errors import CampaignError, ExitCode
from runner.ledger import BatchRecord, Ledger, LedgerSummary, acquire_lock
from runner.sandbox import Sandbox, SandboxSettings, StoredMessage
from runner.send import CATCH_UP_SECONDS, RATE_WINDOW_SECONDS, RateLimiter

from .helpers import campaign_command, number, write_campaign, write_csv

KEY = "test-key-123456"
ENV = {"WEBEX_CONNECT_SERVICE_KEY": KEY}
CAMPAIGN_ID = "test-campaign"
TIERS = ("gold", "silver", "bronze")
FIRST_NAMES = ("Ann", "Bob", "Cy", "Dee", "Eve", "Flo", "Gus", "Hal", "Ivy", "Jo")

PLAIN_TEXT = "Hi {{ name }}, your {{ tier }} offer: {{ offer }}"
LOGIC_TEXT = "{% if tier == 'gold' %}GOLD {{ first | upper }}{% else %}Hi {{ first }}{% endif %}: {{ offer }}"


# --- builders -----------------------------------------------------------------------


def audience(folder: Path, count: int, *, start: int = 0, name: str = "people.csv") -> list[str]:
    """A CSV of `count` distinct valid numbers; returns them in file order."""
    numbers = [number(start + i) for i in range(count)]
    rows = [[msisdn, f"Name{start + i}", TIERS[i % len(TIERS)], FIRST_NAMES[i % len(FIRST_NAMES)]]
            for i, msisdn in enumerate(numbers)]
    write_csv(folder / name, ["msisdn", "name", "tier", "first"], rows)
    return numbers


def csv_campaign(folder: Path, count: int, *, tps: int, text: str = PLAIN_TEXT, personalisation: str | None = "platform",
                 **extra: Any) -> tuple[Path, list[str]]:
    """Platform personalisation by default (few large requests); None = the file's default, local."""
    numbers = audience(folder, count)
    data: dict[str, Any] = {"content": {"text": text}, "substitutions": {"offer": "20% off"},
                            "recipients": [{"file": "people.csv"}], "throughput": {"tps": tps}}
    if personalisation is not None and "{%" not in text:
        data["personalisation"] = personalisation
    data.update(extra)
    return write_campaign(folder, data), numbers


def grouped_campaign(folder: Path, count: int, *, groups: int, tps: int) -> tuple[Path, list[str]]:
    """Local (jinja) strategy with `groups` distinct texts: many small requests at a high tps."""
    numbers = [number(i) for i in range(count)]
    write_csv(folder / "people.csv", ["msisdn", "group"], [[m, f"g{i % groups}"] for i, m in enumerate(numbers)])
    path = write_campaign(folder, {"content": {"text": "Hello {{ group | upper }}"},
                                   "recipients": [{"file": "people.csv"}], "throughput": {"tps": tps}})
    return path, numbers


# --- running ------------------------------------------------------------------------


def _never_asked(question: str) -> bool:
    raise AssertionError(f"apply asked for confirmation with --yes: {question}")


@dataclass
class Run:
    code: int
    out: str
    err: str


def apply(path: Path, base_url: str, state: Path, *, environ: dict[str, str] | None = None,
          now: datetime | None = None, yes: bool = True, **options: Any) -> Run:
    out, err = io.StringIO(), io.StringIO()
    console = Console(out=out, err=err, interactive=False, confirm=_never_asked,
                      environ=ENV if environ is None else environ)
    settings = ApplySettings(file=path, yes=yes, base_url=base_url, state=state, **options)
    code = run_apply(settings, now=now or datetime.now(timezone.utc), console=console)
    return Run(int(code), out.getvalue(), err.getvalue())


def status(path: Path, state: Path, output_format: str = "text") -> Run:
    out = io.StringIO()
    code = run_status(StatusSettings(path, state, output_format), now=datetime.now(timezone.utc), out=out)
    return Run(int(code), out.getvalue(), "")



def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real `campaign` command, non-interactive (stdin is not a terminal)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WEBEX_CONNECT")}
    environ.update(env or {})
    return subprocess.run([*campaign_command(), *args], capture_output=True, text=True, env=environ,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def ledger_state(state: Path, campaign_id: str = CAMPAIGN_ID) -> tuple[LedgerSummary, list[BatchRecord]]:
    with Ledger.open(state) as ledger:
        return ledger.summary(campaign_id), ledger.batch_records(campaign_id, include_superseded=True)


def counts(messages: list[StoredMessage]) -> Counter[str]:
    return Counter(m.msisdn for m in messages)


def assert_each_once(messages: list[StoredMessage], numbers: list[str]) -> None:
    seen = counts(messages)
    twice = {m: n for m, n in seen.items() if n > 1}
    assert not twice, f"sent more than once: {sorted(twice.items())[:5]}"
    missing = set(numbers) - set(seen)
    assert not missing, f"{len(missing)} recipients never sent, e.g. {sorted(missing)[:5]}"
    assert set(seen) == set(numbers)


def max_in_window(departures: list[tuple[float, int]], window: float) -> int:
    """The most destinations that left within any half-open window [t, t + window)."""
    ordered = sorted(departures)
    times = [t for t, _ in ordered]
    return max((sum(n for _, n in ordered[i:bisect.bisect_left(times, t + window)]) for i, t in enumerate(times)),
               default=0)


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture
def sandbox_factory() -> Iterator[Callable[..., Sandbox]]:
    started: list[Sandbox] = []

    def start(**settings: Any) -> Sandbox:
        settings.setdefault("service_key", KEY)
        sandbox = Sandbox(SandboxSettings(**settings))
        sandbox.start()
        started.append(sandbox)
        return sandbox

    yield start
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def sandbox(sandbox_factory: Callable[..., Sandbox]) -> Sandbox:
    return sandbox_factory()


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class RecordingProxy:
    """A plain HTTP relay in front of the sandbox that keeps every request it relays,
    so a test can see each request's headers and body, not only what was accepted."""

    target: str
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        proxy = self
        client = httpx.Client(base_url=self.target, trust_env=False, timeout=30)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    proxy.requests.append(Recorded(self.path, dict(self.headers.items()), json.loads(raw)))
                forwarded = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = client.post(self.path, content=raw, headers=forwarded)
                self.send_response(answer.status_code)
                for name in ("Content-Type", "Retry-After"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            # apply opens up to 128 connections at once: socketserver's backlog of 5 would
            # drop handshakes and reset requests that had already left (as the sandbox's did)
            request_queue_size = 256

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._client = client
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self._client.close()


@pytest.fixture
def proxy_factory() -> Iterator[Callable[[str], tuple[RecordingProxy, str]]]:
    started: list[RecordingProxy] = []

    def start(target: str) -> tuple[RecordingProxy, str]:
        proxy = RecordingProxy(target)
        url = proxy.start()
        started.append(proxy)
        return proxy, url

    yield start
    for proxy in started:
        proxy.stop()


# --- 1. a full apply, and a re-run that sends nothing -----------------------------------


@pytest.mark.parametrize("text,personalisation,strategy", [
    (PLAIN_TEXT, "platform", "platform"), (PLAIN_TEXT, None, "local"), (LOGIC_TEXT, None, "local"),
], ids=["plain-platform", "plain-default", "jinja"])
def test_full_apply_sends_every_planned_text_exactly_once(
    tmp_path: Path, sandbox: Sandbox, proxy_factory: Callable[[str], tuple[RecordingProxy, str]],
    text: str, personalisation: str | None, strategy: str,
) -> None:
    path, numbers = csv_campaign(tmp_path, 2500, tps=1000, text=text, personalisation=personalisation)
    state = tmp_path / "state.db"
    planned = cli("plan", "--format", "json", "--all", str(path))
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["summary"]["strategy"] == strategy
    expected = {m["msisdn"]: m["text"] for m in plan["messages"]}
    assert len(expected) == 2500

    proxy, url = proxy_factory(sandbox.url)
    run = apply(path, url, state)

    assert run.code == 0, run.out + run.err
    messages = sandbox.messages()
    assert len(messages) == 2500
    assert_each_once(messages, numbers)
    assert {m.msisdn: m.text for m in messages} == expected

    summary, records = ledger_state(state)
    keys = {r.batch_key for r in records}
    assert all(r.status == "accepted" for r in records)
    assert summary.destinations["accepted"] == 2500
    assert summary.total_destinations == 2500
    assert summary.batches["accepted"] == len(records) == plan["summary"]["requests"]
    # every request carried its batch's key, and what the sandbox took under a key is that batch
    assert proxy.requests and all(r.headers.get(vendor.IDEMPOTENCY_HEADER) in keys for r in proxy.requests)
    assert {m.idempotency_key for m in messages} == keys
    by_key = {r.batch_key: r for r in records}
    for key, group in _group_by_key(messages).items():
        assert by_key[key].message_id == group[0].message_id
        assert by_key[key].destinations_count == len(group)

    requests_before = sandbox.stats()["requests"]
    again = apply(path, url, state)
    assert again.code == 0, again.out + again.err
    assert sandbox.stats()["requests"] == requests_before
    assert len(sandbox.messages()) == 2500
    assert "skipped" in again.out


def _group_by_key(messages: list[StoredMessage]) -> dict[str, list[StoredMessage]]:
    groups: dict[str, list[StoredMessage]] = {}
    for message in messages:
        assert message.idempotency_key is not None
        groups.setdefault(message.idempotency_key, []).append(message)
    return groups


# --- 2. a validation error fails its batch once, and status explains it ----------------


def test_unknown_template_fails_with_7108_without_retrying(tmp_path: Path, sandbox: Sandbox) -> None:
    numbers = audience(tmp_path, 30)
    path = write_campaign(tmp_path, {"template": {"id": "NO-SUCH-TEMPLATE", "preview": "Hi {{ name }}"},
                                     "recipients": [{"file": "people.csv"}], "throughput": {"tps": 10}})
    state = tmp_path / "state.db"

    run = apply(path, sandbox.url, state)

    assert run.code == int(ExitCode.PARTIAL)
    assert "7108" in run.out
    summary, records = ledger_state(state)
    assert len(records) == 3
    for record in records:
        assert (record.status, record.vendor_code, record.http_status, record.attempts) == ("failed", "7108", 400, 1)
        assert vendor.ERROR_MEANINGS["7108"] in (record.vendor_message or "")
    assert summary.destinations["failed"] == len(numbers)
    stats = sandbox.stats()
    assert stats["requests"] == 3 and stats["rejected_7108"] == 3  # no retries
    assert sandbox.messages() == []

    shown = status(path, state)
    assert shown.code == int(ExitCode.PARTIAL)
    assert "7108" in shown.out and vendor.ERROR_MEANINGS["7108"] in shown.out
    shown_json = json.loads(status(path, state, "json").out)
    assert shown_json["failures"][0]["code"] == "7108"
    assert shown_json["failures"][0]["meaning"] == vendor.ERROR_MEANINGS["7108"]


def test_a_rejected_batch_does_not_stop_the_others(tmp_path: Path, sandbox_factory: Callable[..., Sandbox]) -> None:
    # the tenant takes at most 20 destinations a request: the group of 30 is refused (7009), the rest go
    sandbox = sandbox_factory(tps=20)
    big = [number(i) for i in range(30)]
    small = [number(100 + i) for i in range(10)]
    write_csv(tmp_path / "people.csv", ["msisdn", "group"], [[m, "big"] for m in big] + [[m, "small"] for m in small])
    path = write_campaign(tmp_path, {"content": {"text": "Hello {{ group | upper }}"},
                                     "recipients": [{"file": "people.csv"}], "throughput": {"tps": 30}})
    state = tmp_path / "state.db"

    run = apply(path, sandbox.url, state)

    assert run.code == int(ExitCode.PARTIAL)
    assert_each_once(sandbox.messages(), small)
    summary, records = ledger_state(state)
    assert sorted((r.status, r.vendor_code, r.attempts, r.destinations_count) for r in records) == [
        ("accepted", None, 1, 10), ("failed", "7009", 1, 30)]
    assert [(f.code, f.destinations) for f in summary.failures] == [("7009", 30)]
    assert "7009" in run.out and "failed: 1 request (30 destinations)" in run.out

    # a re-run tries the failed batch again (and only it), once more
    requests = sandbox.stats()["requests"]
    assert apply(path, sandbox.url, state).code == int(ExitCode.PARTIAL)
    assert sandbox.stats()["requests"] == requests + 1
    assert_each_once(sandbox.messages(), small)


# --- 3. authentication failure -------------------------------------------------------


def test_wrong_key_stops_at_the_first_401_and_never_shows_the_key(
    tmp_path: Path, sandbox_factory: Callable[..., Sandbox]
) -> None:
    wrong = "wrong-key-Zx81Qv"
    sandbox = sandbox_factory(service_key="right")
    path, _ = csv_campaign(tmp_path, 25, tps=10)
    state = tmp_path / "state.db"

    run = apply(path, sandbox.url, state, environ={"WEBEX_CONNECT_SERVICE_KEY": wrong}, verbose=True,
                max_in_flight=1)

    assert run.code == int(ExitCode.USAGE)
    summary, records = ledger_state(state)
    failed = [r for r in records if r.status == "failed"]
    assert len(failed) == 1 and failed[0].http_status == 401 and failed[0].attempts == 1
    assert all(r.status == "pending" for r in records if r not in failed)
    assert sandbox.messages() == []
    assert "401" in run.out
    shown = status(path, state).out
    for text in (run.out, run.err, shown, *(r.vendor_message or "" for r in records)):
        assert wrong not in text
    assert wrong.encode() not in _state_bytes(state)


def _state_bytes(state: Path) -> bytes:
    """The database and whatever WAL / shared-memory files sit beside it."""
    return b"".join(p.read_bytes() for p in state.parent.glob(state.name + "*") if p.is_file())


# --- 4. a 429 storm: retried with Retry-After until all are taken ------------------------


def test_429_storm_is_retried_until_every_batch_is_accepted(
    tmp_path: Path, sandbox_factory: Callable[..., Sandbox]
) -> None:
    # 10 requests of 10 at a campaign tps of 50, to a tenant that allows 20 a second
    sandbox = sandbox_factory(tps=20)
    path, numbers = grouped_campaign(tmp_path, 100, groups=10, tps=50)
    state = tmp_path / "state.db"

    run = apply(path, sandbox.url, state, verbose=True)

    assert run.code == 0, run.out + run.err
    stats = sandbox.stats()
    assert stats["rejected_7020"] > 0
    assert stats["rejected"] == stats["rejected_7020"]
    assert_each_once(sandbox.messages(), numbers)
    summary, records = ledger_state(state)
    assert summary.destinations["accepted"] == 100
    assert summary.attempts == stats["requests"] > len(records)
    assert "HTTP 429" in run.err  # --verbose logs each attempt


# --- 5. half of all requests fail with 500 -----------------------------------------------


def test_server_errors_are_retried_without_duplicates(tmp_path: Path, sandbox_factory: Callable[..., Sandbox]) -> None:
    sandbox = sandbox_factory(fail_rate=0.5, seed=11, tps=100)
    path, numbers = csv_campaign(tmp_path, 400, tps=100)
    state = tmp_path / "state.db"

    codes = []
    for _ in range(4):  # a batch may exhaust its attempts; the next run sends it again
        codes.append(apply(path, sandbox.url, state).code)
        if codes[-1] == 0:
            break
    assert codes[-1] == 0, codes
    stats = sandbox.stats()
    assert stats["rejected_7006"] > 0
    assert stats.get("rejected_7020", 0) == 0  # retries are paced like first attempts
    assert_each_once(sandbox.messages(), numbers)
    summary, _ = ledger_state(state)
    assert summary.destinations["accepted"] == 400 == summary.total_destinations


# --- 6. dropped answers: uncertain, held, then resent with the same key ------------------


def test_dropped_answers_are_held_as_uncertain_then_resent_idempotently(
    tmp_path: Path, sandbox_factory: Callable[..., Sandbox]
) -> None:
    sandbox = sandbox_factory(drop_rate=0.3, seed=5)
    path, numbers = grouped_campaign(tmp_path, 200, groups=20, tps=1000)
    state = tmp_path / "state.db"

    first = apply(path, sandbox.url, state)

    dropped = sandbox.stats()["dropped"]
    assert dropped > 0  # the seed makes this deterministic
    assert first.code == int(ExitCode.PARTIAL)
    assert "uncertain" in first.out
    summary, records = ledger_state(state)
    uncertain = [r for r in records if r.status == "uncertain"]
    assert len(uncertain) == dropped
    assert summary.batches["uncertain"] == dropped
    assert summary.batches["accepted"] == 20 - dropped
    # the dropped requests were taken: every recipient is at the sandbox already, once
    assert_each_once(sandbox.messages(), numbers)

    shown = status(path, state)
    assert shown.code == int(ExitCode.PARTIAL)
    assert f"uncertain {dropped}" in shown.out
    assert json.loads(status(path, state, "json").out)["batches"]["uncertain"] == dropped

    requests = sandbox.stats()["requests"]
    held = apply(path, sandbox.url, state)
    assert held.code == int(ExitCode.PARTIAL)
    assert sandbox.stats()["requests"] == requests  # nothing new was sent
    assert "uncertain" in held.out

    resent = apply(path, sandbox.url, state, resend_uncertain=True)
    assert resent.code == 0, resent.out + resent.err
    stats = sandbox.stats()
    assert stats["replayed"] >= dropped  # the sandbox answered from its Idempotency-Key store
    messages = sandbox.messages()
    assert len(messages) == len(numbers)
    assert_each_once(messages, numbers)
    summary, records = ledger_state(state)
    assert all(r.status == "accepted" for r in records)
    assert {r.batch_key for r in uncertain} <= {r.batch_key for r in records}  # same keys, resent
    assert status(path, state).code == 0


# --- 7. inputs changed after a send -------------------------------------------------


def test_changed_inputs_are_refused_then_only_new_recipients_are_sent(tmp_path: Path, sandbox: Sandbox) -> None:
    path, numbers = csv_campaign(tmp_path, 300, tps=100)
    state = tmp_path / "state.db"
    assert apply(path, sandbox.url, state).code == 0
    assert_each_once(sandbox.messages(), numbers)

    more = audience(tmp_path, 450)  # the same 300 rows, then 150 new ones
    requests = sandbox.stats()["requests"]
    with pytest.raises(CampaignError) as refused:
        apply(path, sandbox.url, state)
    assert refused.value.exit_code == ExitCode.REFUSED
    assert "--allow-changes" in (refused.value.hint or "")
    assert sandbox.stats()["requests"] == requests

    run = apply(path, sandbox.url, state, allow_changes=True)
    assert run.code == 0, run.out + run.err
    messages = sandbox.messages()
    assert_each_once(messages, more)
    assert len(messages) == 450
    summary, _ = ledger_state(state)
    assert summary.destinations["accepted"] == 450

    # and once that is done, a plain re-run of the same inputs has nothing left to send
    requests = sandbox.stats()["requests"]
    again = apply(path, sandbox.url, state)
    assert again.code == 0, again.out + again.err
    assert sandbox.stats()["requests"] == requests


@dataclass
class Replanned:
    path: Path
    state: Path
    dropping: Sandbox  # took every request, answered 70% of them
    steady: Sandbox  # answers everything
    numbers: list[str]
    held: set[str]  # uncertain after the first run
    added: list[str]


def partial_send_then_more_recipients(tmp_path: Path, sandbox_factory: Callable[..., Sandbox]) -> Replanned:
    dropping = sandbox_factory(drop_rate=0.3, seed=5)
    numbers = [number(i) for i in range(200)]
    write_csv(tmp_path / "people.csv", ["msisdn", "group"], [[m, f"g{i % 20}"] for i, m in enumerate(numbers)])
    path = write_campaign(tmp_path, {"content": {"text": "Hello {{ group | upper }}"},
                                     "recipients": [{"file": "people.csv"}], "throughput": {"tps": 1000}})
    state = tmp_path / "state.db"
    assert apply(path, dropping.url, state).code == int(ExitCode.PARTIAL)
    with Ledger.open(state) as ledger:
        held = ledger.msisdns_with_status(CAMPAIGN_ID, "uncertain")
        accepted = ledger.accepted_msisdns(CAMPAIGN_ID)
    assert held and accepted and held | accepted == set(numbers)
    added = [number(1000 + i) for i in range(40)]
    write_csv(tmp_path / "people.csv", ["msisdn", "group"],
              [[m, f"g{i % 20}"] for i, m in enumerate(numbers + added)])
    return Replanned(path, state, dropping, sandbox_factory(), numbers, held, added)


def test_changed_inputs_after_a_partial_send_leave_uncertain_recipients_held(
    tmp_path: Path, sandbox_factory: Callable[..., Sandbox]
) -> None:
    r = partial_send_then_more_recipients(tmp_path, sandbox_factory)
    with pytest.raises(CampaignError) as refused:
        apply(r.path, r.steady.url, r.state)
    assert refused.value.exit_code == ExitCode.REFUSED
    assert r.steady.stats()["requests"] == 0

    run = apply(r.path, r.steady.url, r.state, allow_changes=True)

    assert run.code == int(ExitCode.PARTIAL)  # the held ones are still reported
    assert f"uncertain: {len(r.held) // 10} requests ({len(r.held)} destinations)" in run.out
    assert_each_once(r.steady.messages(), r.added)  # only the new recipients, not the held ones
    assert_each_once(r.dropping.messages() + r.steady.messages(), r.numbers + r.added)
    with Ledger.open(r.state) as ledger:
        assert ledger.msisdns_with_status(CAMPAIGN_ID, "uncertain") == r.held
    # a plain re-run of the same inputs sends nothing and still reports them
    requests = r.steady.stats()["requests"]
    again = apply(r.path, r.steady.url, r.state)
    assert again.code == int(ExitCode.PARTIAL)
    assert r.steady.stats()["requests"] == requests
    assert "uncertain" in again.out


def test_resend_uncertain_after_a_replan_is_refused_rather_than_sent_under_new_keys(
    tmp_path: Path, sandbox_factory: Callable[..., Sandbox]
) -> None:
    r = partial_send_then_more_recipients(tmp_path, sandbox_factory)
    assert apply(r.path, r.steady.url, r.state, allow_changes=True).code == int(ExitCode.PARTIAL)
    requests = r.steady.stats()["requests"]

    with pytest.raises(CampaignError) as refused:
        apply(r.path, r.steady.url, r.state, resend_uncertain=True)

    assert refused.value.exit_code == ExitCode.REFUSED
    assert f"{len(r.held)} uncertain destinations" in refused.value.message
    assert r.steady.stats()["requests"] == requests
    with Ledger.open(r.state) as ledger:
        assert ledger.msisdns_with_status(CAMPAIGN_ID, "uncertain") == r.held


def test_allow_changes_with_resend_uncertain_is_refused_rather_than_duplicating(
    tmp_path: Path, sandbox_factory: Callable[..., Sandbox]
) -> None:
    """Uncertain batches from the old inputs cannot be rebuilt; new keys could duplicate."""
    r = partial_send_then_more_recipients(tmp_path, sandbox_factory)
    requests = r.dropping.stats()["requests"]
    with pytest.raises(CampaignError) as refused:
        apply(r.path, r.dropping.url, r.state, allow_changes=True, resend_uncertain=True)
    assert refused.value.exit_code == ExitCode.REFUSED
    assert r.dropping.stats()["requests"] == requests
    assert_each_once(r.dropping.messages(), r.numbers)  # the first run's, each once; nothing new


# --- 8. two applies cannot both send -------------------------------------------------


def test_a_held_lock_refuses_a_second_apply(tmp_path: Path, sandbox: Sandbox) -> None:
    path, _ = csv_campaign(tmp_path, 5, tps=10)
    state = tmp_path / "state.db"
    with acquire_lock(state, CAMPAIGN_ID):
        done = cli("apply", "--yes", "--base-url", sandbox.url, "--state", str(state), str(path), env=ENV)
    assert done.returncode == int(ExitCode.REFUSED), done.stderr
    assert "another process" in done.stderr and f"pid {os.getpid()}" in done.stderr
    assert "lock" in done.stderr
    assert sandbox.stats()["requests"] == 0
    # released: the next apply goes through
    done = cli("apply", "--yes", "--base-url", sandbox.url, "--state", str(state), str(path), env=ENV)
    assert done.returncode == 0, done.stderr
    assert len(sandbox.messages()) == 5


class HeldAtFirstAnswer(io.StringIO):
    """The --verbose stderr of an apply: writing the first answer's log line holds that apply
    (lock taken, its batch answered but not yet marked accepted) until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = threading.Event()
        self.go = threading.Event()

    def write(self, text: str) -> int:
        if " attempt 1: " in text and not self.reached.is_set():
            self.reached.set()
            self.go.wait(60)
        return super().write(text)


def test_a_running_apply_refuses_another_in_process(tmp_path: Path, sandbox: Sandbox) -> None:
    path, numbers = csv_campaign(tmp_path, 5, tps=10)
    state = tmp_path / "state.db"
    held = HeldAtFirstAnswer()
    console = Console(out=io.StringIO(), err=held, interactive=False, confirm=_never_asked, environ=ENV)
    codes: list[int] = []
    first = threading.Thread(target=lambda: codes.append(int(run_apply(
        ApplySettings(file=path, yes=True, base_url=sandbox.url, state=state, verbose=True),
        now=datetime.now(timezone.utc), console=console))))
    first.start()
    try:
        assert held.reached.wait(60), held.getvalue()
        assert sandbox.stats()["requests"] == 1  # the first apply is mid-send
        with pytest.raises(CampaignError) as refused:
            apply(path, sandbox.url, state)
        assert refused.value.exit_code == ExitCode.REFUSED
        assert refused.value.message.startswith(
            f"campaign '{CAMPAIGN_ID}' is being applied by another process (host {socket.gethostname()}, "
            f"pid {os.getpid()}, since 20")
        assert sandbox.stats()["requests"] == 1  # the refused one sent nothing
    finally:
        held.go.set()
        first.join(60)
    assert not first.is_alive() and codes == [0], held.getvalue()
    assert_each_once(sandbox.messages(), numbers)


# --- 9. a stale schedule ---------------------------------------------------------------


@pytest.mark.parametrize("field_name", ["sendAt", "expireAt"])
def test_a_passed_schedule_is_refused_unless_send_now(
    tmp_path: Path, sandbox: Sandbox, proxy_factory: Callable[[str], tuple[RecordingProxy, str]], field_name: str
) -> None:
    # The pinned clock is 30 days ahead of the real one: the time has passed for apply,
    # but is too far ahead for the sandbox, so a body that still carried it would be refused.
    now = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=30)
    passed = (now - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    path, numbers = csv_campaign(tmp_path, 20, tps=10, **{field_name: passed})
    state = tmp_path / "state.db"
    proxy, url = proxy_factory(sandbox.url)

    with pytest.raises(CampaignError) as refused:
        apply(path, url, state, now=now)
    assert refused.value.exit_code == ExitCode.REFUSED
    assert "has passed" in refused.value.message and "--send-now" in (refused.value.hint or "")
    assert proxy.requests == []

    env = {**ENV, "CAMPAIGN_NOW": now.isoformat()}
    args = ("apply", "--yes", "--base-url", url, "--state", str(state), str(path))
    done = cli(*args, env=env)
    assert done.returncode == int(ExitCode.REFUSED), done.stderr
    assert "--send-now" in done.stderr
    assert proxy.requests == [] and sandbox.stats()["requests"] == 0

    done = cli(*args, "--send-now", env=env)
    assert done.returncode == 0, done.stderr
    assert_each_once(sandbox.messages(), numbers)
    assert proxy.requests
    for request in proxy.requests:
        assert "sendAt" not in request.body and "expireAt" not in request.body


def test_a_future_schedule_is_sent_with_its_send_at(
    tmp_path: Path, sandbox: Sandbox, proxy_factory: Callable[[str], tuple[RecordingProxy, str]]
) -> None:
    send_at = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)
    path, _ = csv_campaign(tmp_path, 5, tps=10, sendAt=send_at.isoformat().replace("+00:00", "Z"))
    proxy, url = proxy_factory(sandbox.url)
    assert apply(path, url, tmp_path / "state.db", send_now=True).code == 0
    assert [r.body["sendAt"] for r in proxy.requests] == [send_at.strftime("%Y-%m-%dT%H:%M:%S.000Z")]


# --- 10. the tenant's tps -----------------------------------------------------------


def test_destinations_per_second_never_exceed_the_tps(tmp_path: Path, sandbox_factory: Callable[..., Sandbox]) -> None:
    sandbox = sandbox_factory(tps=200)
    path, numbers = csv_campaign(tmp_path, 1000, tps=200)
    state = tmp_path / "state.db"

    run = apply(path, sandbox.url, state)

    assert run.code == 0, run.out + run.err
    messages = sandbox.messages()
    assert_each_once(messages, numbers)
    assert len({m.idempotency_key for m in messages}) == 5  # batches of 200
    # the sandbox counts each second's arrivals and refuses (7020) whatever goes over its tps:
    # it never had to, and no batch needed a second attempt
    stats = sandbox.stats()
    assert stats.get("rejected_7020", 0) == 0 and stats["rejected"] == 0
    assert stats["requests"] == 5


class VirtualClock:
    """Time that passes only when the limiter sleeps: pacing checked without a wall clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


def test_rate_limiter_never_lets_a_window_hold_more_than_the_tps() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(200, clock=clock, sleep=clock.sleep)
    rng = random.Random(7)
    sizes = [200] * 5 + [50] * 4 + [rng.choice([1, 7, 50, 120, 199, 200]) for _ in range(300)]
    departures = []
    for size in sizes:
        reservation = limiter.acquire(size)
        assert reservation is not None and reservation[0] == clock.now
        departures.append((reservation[0], size))
    assert max_in_window(departures, RATE_WINDOW_SECONDS) <= 200
    assert max_in_window(departures, RATE_WINDOW_SECONDS) == 200  # and the budget is used, not wasted
    gaps = [b - a for (a, _), (b, _) in zip(departures, departures[1:])]
    # batches are spaced evenly, a batch of n waiting n/tps of a window (to the limiter's 1 ms sleep
    # step) after the one before: full ones a window apart, quarter ones a quarter window, never a
    # burst (a batch after one that was held by the window may catch up CATCH_UP_SECONDS)
    def spaced(gap: float, expected: float) -> bool:
        return expected - CATCH_UP_SECONDS - 1e-9 <= gap <= expected + 0.001

    assert all(spaced(gap, RATE_WINDOW_SECONDS) for gap in gaps[:4]), gaps[:4]
    assert all(spaced(gap, RATE_WINDOW_SECONDS / 4) for gap in gaps[5:8]), gaps[5:8]
    # and no batch waits longer than it takes the oldest reservation to leave the window
    assert max(gaps) <= RATE_WINDOW_SECONDS + 0.001


def test_a_late_sender_catches_up_a_little_and_never_beyond_the_window() -> None:
    """At 1,000 a second a slot every 1.02 ms: a sender 50 ms late (a commit, a busy CPU)
    may take CATCH_UP_SECONDS of missed slots at once, no more."""
    clock = VirtualClock()
    limiter = RateLimiter(1000, clock=clock, sleep=clock.sleep)
    spacing = RATE_WINDOW_SECONDS / 1000
    departures = []
    for n in range(3000):
        if n == 500:
            clock.now += 0.05  # late
        reservation = limiter.acquire(1)
        assert reservation is not None
        departures.append((reservation[0], 1))
    late = [at for at, _ in departures[500:]]
    at_once = sum(1 for at in late if at == late[0])
    assert at_once == 1 + int(CATCH_UP_SECONDS // spacing)  # the late one and the 19 slots of 20 ms
    # never a bigger burst anywhere, and never more than the TPS in a window
    assert max(Counter(at for at, _ in departures).values()) == at_once
    assert max_in_window(departures, RATE_WINDOW_SECONDS) <= 1000


def test_a_reservation_whose_request_has_not_left_stays_in_the_window() -> None:
    """A full window's reservation whose connection takes 3 s: the next request may leave a
    window after it really left, not a window after it was reserved (which would put both
    in one second at the vendor)."""
    clock = VirtualClock()
    limiter = RateLimiter(100, clock=clock, sleep=clock.sleep)
    connecting = limiter.acquire(100, departs_later=True)
    assert connecting is not None

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now >= 1003.0 and connecting[2]:
            limiter.touch(connecting)  # connected: its request leaves now

    limiter.sleep = sleep
    following = limiter.acquire(100)
    assert following is not None and connecting[0] >= 1003.0
    assert following[0] >= connecting[0] + RATE_WINDOW_SECONDS


def test_rate_limiter_pause_holds_every_sender_until_it_ends() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(100, clock=clock, sleep=clock.sleep)
    assert limiter.acquire(10) == [1000.0, 10, 0.0]  # [departure, destinations, not yet left]
    limiter.pause(30)  # a Retry-After of 30 s
    reservation = limiter.acquire(10)
    assert reservation is not None and 1030.0 <= reservation[0] < 1030.0 + 0.25
    stop = threading.Event()
    stop.set()
    limiter.pause(30)
    assert limiter.acquire(10, stop) is None  # a stopped run does not wait out the pause


# --- 11. secrets never leak ---------------------------------------------------------

SECRET_KEY = "sk-live-4f9a1c7e2b"
JWT_SECRET = base64.b64encode(b"the tenant's service secret").decode()


def _jwt(secret_b64: str) -> str:
    def part(value: Any) -> str:
        raw = value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signed = f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'iss': 'campaign-runner-test', 'iat': 1700000000})}"
    signature = hmac.new(base64.b64decode(secret_b64), signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{part(signature)}"


@pytest.mark.parametrize("case", ["key-ok", "key-wrong", "jwt-ok", "jwt-wrong"])
def test_secrets_never_reach_output_or_the_state_file(
    tmp_path: Path, sandbox_factory: Callable[..., Sandbox], case: str
) -> None:
    wrong = case.endswith("wrong")
    if case.startswith("key"):
        sandbox = sandbox_factory(service_key="another-key-000" if wrong else SECRET_KEY)
        secret = SECRET_KEY
        env = {"WEBEX_CONNECT_SERVICE_KEY": secret}
    else:
        other = base64.b64encode(b"someone else's secret").decode()
        sandbox = sandbox_factory(jwt_secret=other if wrong else JWT_SECRET)
        secret = _jwt(JWT_SECRET)
        env = {"WEBEX_CONNECT_JWT": secret}
    path, numbers = csv_campaign(tmp_path, 30, tps=100)
    state = tmp_path / "state.db"
    outputs = []
    for extra in ((), ("--format", "json")):
        done = cli("apply", "--yes", "--verbose", "--base-url", sandbox.url, "--state", str(state), *extra, str(path),
                   env=env)
        assert done.returncode == (int(ExitCode.USAGE) if wrong else 0), done.stderr
        outputs += [done.stdout, done.stderr]
    assert "attempt 1" in outputs[1]  # --verbose did log
    for output_format in ("text", "json"):
        done = cli("status", "--state", str(state), "--format", output_format, str(path), env=env)
        outputs += [done.stdout, done.stderr]
    if wrong:
        assert sandbox.messages() == []
        # the sandbox answers a wrong key or a badly signed JWT with a bare 401, for the one request
        assert ("failed: 1 request (30 destinations)\n" in outputs[0]
                and ": HTTP 401: Unauthorized: authentication failed (check WEBEX_CONNECT_SERVICE_KEY / "
                    "WEBEX_CONNECT_JWT)\n" in outputs[0]
                and "HTTP 401: HTTP 401" not in outputs[0]), outputs[0]
    else:
        assert_each_once(sandbox.messages(), numbers)
    for text in outputs:
        assert secret not in text
    raw = _state_bytes(state)
    assert raw and secret.encode() not in raw
    for piece in secret.split("."):  # a JWT's parts, too
        assert piece.encode() not in raw and all(piece not in text for text in outputs)


def test_secrets_are_redacted_from_exceptions(tmp_path: Path, sandbox: Sandbox) -> None:
    path, _ = csv_campaign(tmp_path, 5, tps=10)
    environ = {"WEBEX_CONNECT_SERVICE_KEY": SECRET_KEY, "WEBEX_CONNECT_SERVICE_KEY_FILE": "/nonexistent"}
    with pytest.raises(CampaignError) as error:
        apply(path, sandbox.url, tmp_path / "state.db", environ=environ)
    assert error.value.exit_code == ExitCode.USAGE
    assert SECRET_KEY not in str(error.value) and SECRET_KEY not in (error.value.hint or "")


# --- 12. confirmation -----------------------------------------------------------------


def test_non_interactive_without_yes_refuses_and_sends_nothing(tmp_path: Path, sandbox: Sandbox) -> None:
    path, _ = csv_campaign(tmp_path, 5, tps=10)
    state = tmp_path / "state.db"
    with pytest.raises(CampaignError) as refused:
        apply(path, sandbox.url, state, yes=False)
    assert refused.value.exit_code == ExitCode.USAGE
    assert "--yes" in (refused.value.hint or "")

    done = cli("apply", "--base-url", sandbox.url, "--state", str(state), str(path), env=ENV)
    assert done.returncode == int(ExitCode.USAGE), done.stderr
    assert "--yes" in done.stderr
    assert sandbox.stats()["requests"] == 0
    assert not state.exists()


def test_interactive_no_sends_nothing(tmp_path: Path, sandbox: Sandbox) -> None:
    path, _ = csv_campaign(tmp_path, 5, tps=10)
    asked: list[str] = []
    err = io.StringIO()
    console = Console(out=io.StringIO(), err=err, interactive=True, environ=ENV,
                      confirm=lambda question: asked.append(question) or False)
    code = run_apply(ApplySettings(file=path, base_url=sandbox.url, state=tmp_path / "state.db", quiet=True),
                     now=datetime.now(timezone.utc), console=console)
    assert code == ExitCode.REFUSED
    assert asked and "5 messages" in asked[0]
    assert "nothing sent" in err.getvalue()
    assert sandbox.stats()["requests"] == 0


def test_a_ledger_written_by_an_older_compiler_is_never_resent_under_new_keys(tmp_path: Path,
                                                                            sandbox: Sandbox) -> None:
    """Batch keys are digests of the bodies, and a new version may build other bodies from
    the same inputs (local personalisation by default, values as strings). A ledger written
    by campaign-runner 0.1 (inputs hashed as "campaign-runner/1") must read as changed
    inputs: refused, and with --allow-changes nothing accepted is sent again."""
    path, numbers = csv_campaign(tmp_path, 6, tps=100)
    state = tmp_path / "state.db"
    assert apply(path, sandbox.url, state).code == ExitCode.OK
    assert len(sandbox.messages()) == 6
    old = hashlib.sha256(b"campaign-runner/1\x00v2\x00")  # the 0.1 formula, stated here
    for file in (path, tmp_path / "people.csv"):
        old.update(file.name.encode() + b"\x00" + file.read_bytes())
    with Ledger.open(state) as ledger:
        ledger.set_campaign_hash(CAMPAIGN_ID, old.hexdigest())
    with pytest.raises(CampaignError) as refused:
        apply(path, sandbox.url, state)
    assert refused.value.exit_code == ExitCode.REFUSED
    assert "how this version of campaign-runner builds its requests) changed after 6 destinations" in \
        refused.value.message
    assert apply(path, sandbox.url, state, allow_changes=True).code == ExitCode.OK
    assert counts(sandbox.messages()) == Counter({m: 1 for m in numbers})
