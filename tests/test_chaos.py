"""kill -9 at random moments: exactly once must survive it.

One sandbox per test process (answers take 40 ms and eight requests are on the wire at
a time, so there really are requests in flight when the signal lands); for each seed a
real `campaign apply` subprocess gets SIGKILL after a seeded random delay, anywhere from
interpreter start-up to after the last answer, and is then re-run:

* with `--resend-uncertain` until it exits 0: every recipient is stored exactly once
  (the batches left in flight are resent with their Idempotency-Key, and the sandbox
  replays the answer instead of storing them twice), none is lost;
* without it: the re-run exits 0 or 3; with 3, only destinations of batches reported
  `uncertain` may be missing, nothing is stored twice, and `status` says so; resending
  them afterwards completes the campaign, still once each.

SIGINT (Ctrl-C) and SIGTERM (a cancelled pipeline) are also sent at random moments: they
wait for answers on the wire, so a plain re-run completes the campaign, nothing uncertain.

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
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.ledger import Ledger
from runner.sandbox import Sandbox, SandboxSettings

from .helpers import number, write_campaign, write_csv
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
KILL_WINDOW = (0.1, 1.8)  # seconds after start: start-up, plan, ledger set-up, sending, done
MAX_RERUNS = 5
TIMEOUT = 60


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxSettings(service_key=KEY, latency=LATENCY)) as running:
        yield running


def campaign_command() -> list[str]:
    beside = Path(sys.executable).with_name("campaign")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [sys.executable, "-c", "from runner.cli import main; main()"]


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
    delay: float
    signalled: bool
    returncode: int

    def __str__(self) -> str:
        if self.signalled:
            return f"signalled at {self.delay:.2f} s (exit {self.returncode})"
        return f"finished (exit {self.returncode}) before the signal at {self.delay:.2f} s"


def signalled_run(sandbox: Sandbox, state: Path | str, path: Path, seed: int, log: Path,
                  signum: signal.Signals = signal.SIGKILL) -> Ending:
    """Start apply and send it `signum` after a seeded random delay."""
    delay = random.Random(seed).uniform(*KILL_WINDOW)
    with log.open("wb") as sink:
        process = subprocess.Popen(apply_args(sandbox, state, path), env=environment(), stdin=subprocess.DEVNULL,
                                   stdout=sink, stderr=sink)
        try:
            process.wait(timeout=delay)
            return Ending(delay, False, process.returncode)
        except subprocess.TimeoutExpired:
            process.send_signal(signum)
            process.wait(timeout=TIMEOUT)
            return Ending(delay, True, process.returncode)


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
    how = signalled_run(sandbox, state, path, seed, tmp_path / "killed.log")
    assert how.signalled or how.returncode == 0, f"{how}: {(tmp_path / 'killed.log').read_text()[-2000:]}"

    runs = []
    for _ in range(MAX_RERUNS):
        done = rerun(sandbox, state, path, "--resend-uncertain")
        runs.append(done.returncode)
        assert done.returncode in (0, 3), f"{how}; re-runs {runs}: {done.stderr}"
        if done.returncode == 0:
            break
    assert runs[-1] == 0, f"{how}; re-runs {runs}"

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
    how = signalled_run(sandbox, state, path, 2_000 + seed * 7 + signum, tmp_path / "interrupted.log", signum)
    # 130: interrupted before sending; 3: stopped while sending; -signum: before Python's handlers existed
    assert how.returncode in (0, 3, 130, -signum), f"{how}: {(tmp_path / 'interrupted.log').read_text()[-2000:]}"

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
    how = signalled_run(sandbox, state, path, 1_000 + seed, tmp_path / "killed.log")
    assert how.signalled or how.returncode == 0, f"{how}: {(tmp_path / 'killed.log').read_text()[-2000:]}"

    done = rerun(sandbox, state, path)
    assert done.returncode in (0, 3), f"{how}: {done.stderr}"
    seen = stored(sandbox, numbers)
    twice = sorted(m for m, n in seen.items() if n > 1)
    assert not twice, f"{how}: {len(twice)} stored twice, e.g. {twice[:3]}"
    with Ledger.open(state) as ledger:
        summary = ledger.summary(campaign_id)
        uncertain = ledger.msisdns_with_status(campaign_id, "uncertain")
        accepted = ledger.accepted_msisdns(campaign_id)
    missing = set(numbers) - set(seen)

    if done.returncode == 0:
        assert not uncertain and not missing, how
        assert accepted == set(numbers), how
    else:
        assert uncertain, f"{how}: exit 3 with nothing uncertain: {done.stdout}"
        assert "uncertain" in done.stdout
        assert missing <= uncertain, f"{how}: lost without being reported: {sorted(missing - uncertain)[:3]}"
        assert accepted | uncertain == set(numbers) and not accepted & uncertain, how
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
