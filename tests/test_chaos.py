"""kill -9 in the middle of sending: exactly once must survive it.

One sandbox per test process (answers take 40 ms and eight requests are on the wire at
a time, so there really are requests in flight when the signal lands). For each seed a
real `campaign apply` subprocess is signalled once the sandbox has stored a seeded number
of its messages (between 30 and 450 of 600): every signal lands mid-send, never during
start-up or after the last answer, and the test checks that it did. Then:

* kill -9, then one re-run with `--resend-uncertain`: exit 0, every recipient stored
  exactly once (the batches left in flight are resent with their Idempotency-Key, and the
  sandbox replays the answer instead of storing them twice);
* kill -9, then a plain re-run: exit 3, the batches that were in flight are `uncertain`,
  only their destinations may be missing, nothing is stored twice, and `status` says so;
  resending them afterwards completes the campaign, still once each;
* SIGINT (Ctrl-C) or SIGTERM (a cancelled pipeline): exit 130 after the answers on the
  wire are recorded, so a plain re-run completes the campaign, nothing uncertain.

The kill -9 tests run on both ledger backends: a SQLite file, and a real PostgreSQL
server (tests/postgres.py; fewer seeds, each test a fresh database), where the killed
apply's connection, and with it its advisory lock, drops with the process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.ledger import Ledger
from runner.sandbox import Sandbox, SandboxSettings

from .helpers import campaign_command, number, write_campaign, write_csv
from .postgres import fresh_database, stop_postgres_at_session_end  # noqa: F401 (stops the server)

KEY = "chaos-key-7a3d91"
ENV = {"WEBEX_CONNECT_SERVICE_KEY": KEY}
SEEDS = range(12)
PLAIN_SEEDS = range(6)
PG_SEEDS = range(4)
PG_PLAIN_SEEDS = range(2)
RESEND_CASES = [("sqlite", seed) for seed in SEEDS] + [("postgresql", seed) for seed in PG_SEEDS]
PLAIN_CASES = [("sqlite", seed) for seed in PLAIN_SEEDS] + [("postgresql", seed) for seed in PG_PLAIN_SEEDS]
INTERRUPTS = [(signal.SIGINT, seed) for seed in range(2)] + [(signal.SIGTERM, seed) for seed in range(2)]
RECIPIENTS = 600
GROUPS = 200  # distinct texts: 200 requests of 3 destinations, 8 in flight at a time
TPS = 2000  # high: latency and --max-in-flight pace it, so requests are always in flight
LATENCY = 0.04
SIGNAL_AFTER_MESSAGES = (30, 450)  # stored by the sandbox before the signal: mid-send, seeded
POLL_SECONDS = 0.005
TIMEOUT = 60


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxSettings(service_key=KEY, latency=LATENCY)) as running:
        yield running



def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEBEX_CONNECT")}
    env.update(ENV)
    return env


def chaos_campaign(folder: Path, campaign_id: str, first: int) -> tuple[Path, list[str]]:
    """RECIPIENTS numbers from +447911<first> on (tests use disjoint ranges below 300,000,
    where every number is a valid UK mobile)."""
    numbers = [number(first + i) for i in range(RECIPIENTS)]
    write_csv(folder / "people.csv", ["msisdn", "group"], [[m, f"g{i % GROUPS}"] for i, m in enumerate(numbers)])
    path = write_campaign(folder, {"id": campaign_id, "content": {"text": "Hello {{ group | upper }}"},
                                   "recipients": [{"file": "people.csv"}], "throughput": {"tps": TPS}})
    return path, numbers


def state_for(backend: str, folder: Path) -> str:
    """The ledger of one test: a SQLite file in its folder, or a fresh PostgreSQL database."""
    return str(folder / "state.db") if backend == "sqlite" else fresh_database()


def apply_args(sandbox: Sandbox, state: Path | str, path: Path, *extra: str) -> list[str]:
    return [*campaign_command(), "apply", "--yes", "--quiet", "--base-url", sandbox.url, "--state", str(state),
            *extra, str(path)]


@dataclass(frozen=True)
class Ending:
    after_messages: int  # the sandbox had stored this many of the run's messages when the signal went
    returncode: int

    def __str__(self) -> str:
        return f"signalled after {self.after_messages} stored messages (exit {self.returncode})"


def signalled_mid_send(sandbox: Sandbox, state: Path | str, path: Path, seed: int, log: Path,
                       signum: signal.Signals = signal.SIGKILL) -> Ending:
    """Start apply; once the sandbox has stored a seeded number of its messages, send `signum`.

    Fails if the run ends first (the signal would not land mid-send) or if the signal went
    after everything was stored."""
    threshold = random.Random(seed).randint(*SIGNAL_AFTER_MESSAGES)
    before = sandbox.stats()["accepted_messages"]
    deadline = time.monotonic() + TIMEOUT
    with log.open("wb") as sink:
        process = subprocess.Popen(apply_args(sandbox, state, path), env=environment(), stdin=subprocess.DEVNULL,
                                   stdout=sink, stderr=sink)
        try:
            while (stored_now := sandbox.stats()["accepted_messages"] - before) < threshold:
                assert process.poll() is None, f"apply ended (exit {process.returncode}) before {threshold} " \
                                               f"messages were stored: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, "apply never reached the signal point"
                time.sleep(POLL_SECONDS)
            process.send_signal(signum)
            process.wait(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert stored_now < RECIPIENTS, f"the signal came after all {RECIPIENTS} messages were stored"
    return Ending(stored_now, process.returncode)


def rerun(sandbox: Sandbox, state: Path | str, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(apply_args(sandbox, state, path, *extra), env=environment(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=TIMEOUT)


def stored(sandbox: Sandbox, numbers: list[str]) -> Counter[str]:
    """How often the sandbox stored each of this test's numbers (other tests share the sandbox)."""
    mine = set(numbers)
    return Counter(m.msisdn for m in sandbox.messages() if m.msisdn in mine)


@pytest.mark.parametrize("backend,seed", RESEND_CASES, ids=[f"{b}-{s}" for b, s in RESEND_CASES])
def test_kill_9_then_resend_uncertain_sends_everyone_exactly_once(
    tmp_path: Path, sandbox: Sandbox, backend: str, seed: int
) -> None:
    campaign_id = f"chaos-resend-{seed}"
    first = (10_000 if backend == "sqlite" else 60_000) + seed * 1_000
    path, numbers = chaos_campaign(tmp_path, campaign_id, first=first)
    state = state_for(backend, tmp_path)
    how = signalled_mid_send(sandbox, state, path, seed, tmp_path / "killed.log")
    assert how.returncode == -signal.SIGKILL, how

    done = rerun(sandbox, state, path, "--resend-uncertain")
    assert done.returncode == 0, f"{how}: {done.stdout} {done.stderr}"
    assert "in flight when an earlier run died: now uncertain" in done.stderr, how

    seen = stored(sandbox, numbers)
    twice = sorted(m for m, n in seen.items() if n > 1)
    missing = sorted(set(numbers) - set(seen))
    assert not twice, f"{how}: {len(twice)} stored twice, e.g. {twice[:3]}"
    assert not missing, f"{how}: {len(missing)} never stored, e.g. {missing[:3]}"
    with Ledger.open(state) as ledger:
        summary = ledger.summary(campaign_id)
    assert summary.destinations["accepted"] == RECIPIENTS == summary.total_destinations, how
    assert summary.batches["uncertain"] == summary.batches["in-flight"] == summary.batches["failed"] == 0, how


@pytest.mark.parametrize("signum,seed", INTERRUPTS, ids=[f"{s.name}-{n}" for s, n in INTERRUPTS])
def test_ctrl_c_or_sigterm_at_a_random_moment_leaves_nothing_uncertain(
    tmp_path: Path, sandbox: Sandbox, signum: signal.Signals, seed: int
) -> None:
    """Ctrl-C, or the SIGTERM of a cancelled pipeline, is not kill -9: answers already on the
    wire are waited for and recorded, so a plain re-run finishes the campaign without any
    operator decision."""
    campaign_id = f"chaos-{signum.name.lower()}-{seed}"
    first = 100_000 + (seed + 10 * (signum == signal.SIGTERM)) * 1_000
    path, numbers = chaos_campaign(tmp_path, campaign_id, first=first)
    state = tmp_path / "state.db"
    how = signalled_mid_send(sandbox, state, path, 2_000 + seed * 7 + signum, tmp_path / "interrupted.log", signum)
    # mid-send, the handler stops dispatching, records the answers on the wire, prints the summary, exits 130
    assert how.returncode == 130, f"{how}: {(tmp_path / 'interrupted.log').read_text()[-2000:]}"
    assert "interrupted:" in (tmp_path / "interrupted.log").read_text()
    with Ledger.open(state) as ledger:
        summary = ledger.summary(campaign_id)
    assert summary.batches["in-flight"] == summary.batches["uncertain"] == 0, how

    done = rerun(sandbox, state, path)
    assert done.returncode == 0, f"{how}: {done.stdout} {done.stderr}"
    seen = stored(sandbox, numbers)
    assert set(seen) == set(numbers) and max(seen.values()) == 1, how


@pytest.mark.parametrize("backend,seed", PLAIN_CASES, ids=[f"{b}-{s}" for b, s in PLAIN_CASES])
def test_kill_9_then_plain_rerun_holds_only_uncertain_batches(
    tmp_path: Path, sandbox: Sandbox, backend: str, seed: int
) -> None:
    campaign_id = f"chaos-plain-{seed}"
    first = (40_000 if backend == "sqlite" else 70_000) + seed * 1_000
    path, numbers = chaos_campaign(tmp_path, campaign_id, first=first)
    state = state_for(backend, tmp_path)
    how = signalled_mid_send(sandbox, state, path, 1_000 + seed, tmp_path / "killed.log")
    assert how.returncode == -signal.SIGKILL, how

    done = rerun(sandbox, state, path)
    # eight requests are on the wire at any moment of sending: some batches were in flight
    assert done.returncode == 3, f"{how}: {done.stdout} {done.stderr}"
    seen = stored(sandbox, numbers)
    twice = sorted(m for m, n in seen.items() if n > 1)
    assert not twice, f"{how}: {len(twice)} stored twice, e.g. {twice[:3]}"
    with Ledger.open(state) as ledger:
        summary = ledger.summary(campaign_id)
        uncertain = ledger.msisdns_with_status(campaign_id, "uncertain")
        accepted = ledger.accepted_msisdns(campaign_id)
    missing = set(numbers) - set(seen)

    assert uncertain, f"{how}: exit 3 with nothing uncertain: {done.stdout}"
    assert "uncertain" in done.stdout
    assert missing <= uncertain, f"{how}: lost without being reported: {sorted(missing - uncertain)[:3]}"
    assert accepted | uncertain == set(numbers) and not accepted & uncertain, how
    assert summary.batches["failed"] == summary.batches["in-flight"] == 0, how
    shown = subprocess.run([*campaign_command(), "status", "--state", str(state), "--format", "json", str(path)],
                           env=environment(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=TIMEOUT)
    assert shown.returncode == 3, shown.stderr
    report = json.loads(shown.stdout)
    assert report["batches"]["uncertain"] == summary.batches["uncertain"] > 0
    assert report["destinations"]["uncertain"] == len(uncertain)

    # and the operator's way out: resending them with their keys completes the campaign, once
    done = rerun(sandbox, state, path, "--resend-uncertain")
    assert done.returncode == 0, f"{how}: {done.stderr}"
    seen = stored(sandbox, numbers)
    assert set(seen) == set(numbers) and max(seen.values()) == 1, how
