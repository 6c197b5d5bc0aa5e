"""Benchmark: `campaign apply` against the sandbox at the tenant's TPS, next to a naive sender.

Run from the repository root (the package installed, `campaign` on PATH):

    python bench/send.py                                   # 100,000 recipients, tps 5000, 50 ms
    python bench/send.py --repeat 3                        # three apply runs, the median tabled
    python bench/send.py --recipients 20000 --baseline-sample 100
    python bench/send.py --workdir /tmp/bench-send --keep  # keep data, ledger, logs
    python bench/send.py --state postgresql://USER@HOST/DB # also apply into PostgreSQL, beside SQLite

It generates a CSV audience (`msisdn,name`, distinct valid E.164 numbers, every one
checked with `runner.recipients.normalise_msisdn`) and a campaign with a plain-variable
text and `throughput: {tps: N}` (so batches of min(1000, N) destinations), then:

* starts `campaign sandbox --port 0 --tps N --latency L` in its own process, so the
  client's CPU time and RSS are measured alone (the sandbox's CPU is read from
  /proc/<pid>/stat and shown separately: on a small machine both share the cores);
* apply: `campaign apply --yes --quiet --base-url URL --state ... --format json` with
  WEBEX_CONNECT_SERVICE_KEY set, on a fresh ledger, measured through `os.wait4` (that
  child's own CPU time and peak RSS). Its JSON gives the send phase (`elapsedSeconds`,
  `destinationsPerSecond`: `Applier.run` only); the process wall time adds start-up,
  load, the plan pre-pass (a full compile before anything is sent) and ledger set-up.
  Afterwards the sandbox's store gives when each request was accepted: the fullest
  second must hold at most N destinations;
* naive: this file run as `python bench/send.py _naive ...`, which posts ONE v2
  request per recipient (one `to` entry, the same text and substitutions),
  sequentially with one keep-alive httpx client, for the first --baseline-sample
  recipients; its rate is extrapolated to the whole audience. Its CPU per 10k is the
  loop's own CPU time (start-up excluded, it would not recur per recipient);
* plan: `campaign plan` alone, to show what the pre-pass costs.

The sandbox is reset before each child, and its counters are printed after each: all
destinations must be accepted, and `rejected_7020` (over TPS) must be 0. The 1-minute
load average is printed too: other processes on the machine show up here as jitter in
when requests arrive, and so as 7020s and retries.

This is a measurement, not a test: nothing here asserts on a time. The goal it reports
against (from the issue): apply sustains >= 0.95 x tps.
"""

from __future__ import annotations

import sys

# Two UK mobile ranges, alternating rows: +447911000000+k (valid for k < 300,000:
# 79110-79112) and +447400000000+k (valid for k < 1,000,000).
RANGES = (447911000000, 447400000000)


def number(i: int) -> str:
    return f"+{RANGES[i % 2] + i // 2}"


# --- helpers run as child processes --------------------------------------------------
# The parent must stay small: on Linux a child's ru_maxrss starts from the RSS of the
# process that spawned it (exec records the old mm's high-water mark), so anything big
# in the parent would show up as every later child's "peak RSS".


def _check(size: int) -> None:
    from runner.msisdn import normalise_msisdn

    for i in range(size):
        raw = number(i)
        if normalise_msisdn(raw) != raw:
            raise SystemExit(f"bench: generated number {raw} (row {i}) is not valid E.164; fix RANGES")
    if len({number(i) for i in range(size)}) != size:
        raise SystemExit("bench: generated numbers repeat; fix RANGES")


def _timeline(url: str) -> None:
    """(arrival time, destinations) per accepted request, from the sandbox's store: the
    arrival is what the sandbox's TPS limit counts (acceptance comes after the latency)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/_sandbox/messages", timeout=120) as response:
        messages = json.loads(response.read())
    first: dict[str, float] = {}
    count: dict[str, int] = {}
    for message in messages:
        key = message.get("idempotencyKey") or message["messageId"]
        first[key] = min(first.get(key, message["arrivedAt"]), message["arrivedAt"])
        count[key] = count.get(key, 0) + 1
    print(json.dumps(sorted((first[k], count[k]) for k in first)))


# --- the naive sender (child process) -----------------------------------------------
# Kept above the heavier imports so the child pays only for csv/json/hashlib/httpx.


def _naive(spec_json: str) -> None:
    import csv
    import hashlib
    import json
    import time

    import httpx

    spec = json.loads(spec_json)
    url: str = spec["url"]
    count: int = spec["count"]
    campaign_id: str = spec["campaign_id"]
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               spec["key_header"]: spec["service_key"]}
    statuses: dict[str, int] = {}
    started_wall = time.perf_counter()
    started_cpu = time.process_time()
    with httpx.Client(timeout=30.0) as client, open(spec["csv"], encoding="utf-8", newline="") as source:
        reader = csv.reader(source)
        next(reader)  # msisdn,name
        sent = 0
        for msisdn, name in reader:
            if sent >= count:
                break
            digest = hashlib.blake2b(f"{campaign_id}\x00{msisdn}".encode(), digest_size=8).hexdigest()
            body = {"channel": "sms", "from": spec["from"],
                    "to": [{"msisdn": [msisdn], "substitutions": {"name": name}, "correlationId": f"cr-{digest}"}],
                    "content": spec["content"], "substitutions": spec["substitutions"]}
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            response = client.post(url, content=content,
                                   headers={**headers, spec["idempotency_header"]: f"naive-{sent:06d}-{digest}"})
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
            sent += 1
    result = {"sent": sent, "statuses": statuses, "seconds": time.perf_counter() - started_wall,
              "cpu_seconds": time.process_time() - started_cpu}
    print(json.dumps(result))


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] in ("_naive", "_check", "_timeline"):
    {"_naive": _naive, "_check": lambda size: _check(int(size)), "_timeline": _timeline}[sys.argv[1]](sys.argv[2])
    sys.exit(0)


# --- the benchmark (parent process) -----------------------------------------------

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import queue  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from common import write_audience, write_campaign  # noqa: E402

CAMPAIGN_ID = "bench-send"
SENDER = "12025550100"
TEXT = "Hi {{ name }}, your offer at {{ store }}: https://shop.example.com"
WIRE_TEXT = "Hi $(name), your offer at $(store): https://shop.example.com"
# Local personalisation with a text unique to each recipient (its number): the worst
# case, one request per destination, so requests per second equal the TPS.
LOCAL_TEXT = "Hi {{ name }}, your offer for {{ msisdn }} at {{ store }}: https://shop.example.com"
MODES = ("platform", "local")
STORE = "Fernway"
SERVICE_KEY = "bench-key"
NAMES = ("Ada", "Alan", "Grace", "Barbara", "Linus", "Margaret", "Katherine", "Tim")
MAX_RECIPIENTS = 2 * 300_000
SANDBOX_START_TIMEOUT = 20.0


def _rate_window() -> float:
    """runner.send.RATE_WINDOW_SECONDS, read from the source: importing the sender would pull
    httpx and sqlite3 into the parent, whose RSS every child's peak starts from."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("runner.send")
    try:
        assert spec is not None and spec.origin is not None
        found = re.search(r"^RATE_WINDOW_SECONDS\s*(?::[^=]*)?=\s*([0-9.]+)", Path(spec.origin).read_text(), re.M)
    except (AssertionError, OSError):
        found = None
    return float(found.group(1)) if found else 1.02


RATE_WINDOW_SECONDS = _rate_window()
RATE_WINDOW_NOTE = f"{RATE_WINDOW_SECONDS:g} s"


def generate(directory: Path, size: int, tps: int) -> tuple[dict[str, Path], Path]:
    """One audience; a campaign per personalisation mode (`campaign.yaml` is platform)."""
    audience = directory / "audience.csv"
    write_audience(audience, "msisdn,name", (f"{number(i)},{NAMES[i % len(NAMES)]}\n" for i in range(size)))
    campaigns = {"platform": directory / "campaign.yaml", "local": directory / "campaign-local.yaml"}
    write_campaign(campaigns["platform"], campaign_id=CAMPAIGN_ID, description="send benchmark", sender=SENDER,
                   content_type="text", text=TEXT, store=STORE, tps=tps, personalisation="platform")
    write_campaign(campaigns["local"], campaign_id=CAMPAIGN_ID + "-local", description="send benchmark, local",
                   sender=SENDER, content_type="text", text=LOCAL_TEXT, store=STORE, tps=tps,
                   personalisation="local")
    return campaigns, audience


def check_numbers(size: int) -> None:
    """Every generated number must be one apply accepts unchanged, and distinct (checked in a
    child: the parent stays small, see `_maxrss_mb`)."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_check", str(size)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stdout + done.stderr)


def campaign_command() -> list[str]:
    """The `campaign` console script of this interpreter when there is one (a version
    manager's shim on PATH adds its own start-up)."""
    beside = Path(sys.executable).parent / "campaign"
    exe = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("campaign")
    if exe is None:
        raise SystemExit("bench: `campaign` is not on PATH (pip install -e . in the repository root)")
    return [exe]


def _maxrss_mb(usage: Any) -> float:
    """ru_maxrss in MB. For a child (os.wait4) it is never below what the parent held when
    it spawned that child; the report prints the parent's own peak as that floor."""
    raw = float(usage.ru_maxrss)
    return raw / (1024 * 1024) if sys.platform == "darwin" else raw / 1024  # bytes on macOS, KiB on Linux


# --- the sandbox (its own process) --------------------------------------------------


class SandboxProcess:
    def __init__(self, tps: int, latency: float, log: Path) -> None:
        cmd = [*campaign_command(), "sandbox", "--port", "0", "--tps", str(tps), "--latency", repr(latency)]
        self.log = log
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str | None] = queue.Queue()

        def drain() -> None:  # keep reading stderr so the sandbox never blocks on it
            assert self.proc.stderr is not None
            with log.open("w", encoding="utf-8") as sink:
                for line in self.proc.stderr:
                    sink.write(line)
                    sink.flush()
                    lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + SANDBOX_START_TIMEOUT
        self.url = ""
        while not self.url:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise SystemExit(f"bench: the sandbox did not start:\n{log.read_text(errors='replace')}")
            if "listening on " in line:
                self.url = line.split("listening on ", 1)[1].split()[0]

    def _call(self, method: str, name: str) -> Any:
        request = urllib.request.Request(f"{self.url}/_sandbox/{name}", method=method,
                                         data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self._call("GET", "stats").items()}

    def timeline(self) -> list[tuple[float, int]]:
        """(acceptance time, destinations) per accepted request, in time order (read in a child)."""
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_timeline", self.url],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"bench: could not read the sandbox's messages: {done.stderr.strip()}", file=sys.stderr)
            return []
        return [(float(at), int(n)) for at, n in json.loads(done.stdout)]

    def reset(self) -> None:
        self._call("POST", "reset")

    def cpu_seconds(self) -> float | None:
        """utime + stime of the sandbox process (Linux /proc), None elsewhere."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # its normal way out
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- measured runs ----------------------------------------------------------------


@dataclass
class Child:
    wall: float
    cpu: float  # user + system of that child
    peak_rss_mb: float
    stdout: str
    sandbox_cpu: float | None
    sandbox_stats: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple[float, int]] = field(default_factory=list)


def measure(cmd: list[str], cwd: Path, name: str, sandbox: SandboxProcess, env: dict[str, str], *,
            timeline: bool = False) -> Child:
    """Wall time, and the child's own CPU time and peak RSS (os.wait4 returns that child's rusage)."""
    out_path, err_path = cwd / f"{name}.stdout", cwd / f"{name}.stderr"
    sandbox.reset()
    sandbox_before = sandbox.cpu_seconds()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    sandbox_after = sandbox.cpu_seconds()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = out_path.read_text(encoding="utf-8", errors="replace")
    # apply exits 3 (partial) when batches failed or stay uncertain: still a result to report
    if proc.returncode != 0 and not (proc.returncode == 3 and name.startswith("apply")):
        raise SystemExit(f"bench: {' '.join(cmd)} exited {proc.returncode}:\n{stdout}\n"
                         f"{err_path.read_text(errors='replace')}")
    sandbox_cpu = None if sandbox_before is None or sandbox_after is None else sandbox_after - sandbox_before
    return Child(wall, usage.ru_utime + usage.ru_stime, _maxrss_mb(usage), stdout, sandbox_cpu, sandbox.stats(),
                 sandbox.timeline() if timeline else [])


@dataclass
class ApplyRun:
    child: Child
    result: dict[str, Any]


@dataclass
class NaiveRun:
    child: Child
    result: dict[str, Any]


def run_apply(directory: Path, campaign: Path, sandbox: SandboxProcess, extra: list[str],
              name: str = "apply", postgres: str | None = None) -> ApplyRun:
    """One apply on a fresh ledger: a new SQLite file, or with `postgres` (a URL) a new
    environment in that database (everything in the ledger is keyed by environment)."""
    if postgres is None:
        state = str(directory / f"{name}-state.db")
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(f"{state}{suffix}").unlink(missing_ok=True)
    else:
        state = postgres
        extra = [*extra, "--env", f"bench-{os.getpid()}-{time.time_ns()}"]
    cmd = [*campaign_command(), "apply", "--yes", "--quiet", "--base-url", sandbox.url, "--state", state,
           "--format", "json", *extra, str(campaign)]
    env = {**os.environ, "WEBEX_CONNECT_SERVICE_KEY": SERVICE_KEY}
    for variable in ("WEBEX_CONNECT_JWT", "WEBEX_CONNECT_JWT_FILE", "WEBEX_CONNECT_SERVICE_KEY_FILE"):
        env.pop(variable, None)
    child = measure(cmd, directory, name, sandbox, env, timeline=True)
    return ApplyRun(child, json.loads(child.stdout))


def run_plan(directory: Path, campaign: Path, sandbox: SandboxProcess) -> Child:
    """`campaign plan` alone: start-up, load and the same full compile that apply runs
    before it sends (its pre-pass), to show what of apply's cost lies outside the send."""
    return measure([*campaign_command(), "plan", "--format", "json", str(campaign)], directory, "plan", sandbox,
                   dict(os.environ))


def run_naive(directory: Path, audience: Path, sandbox: SandboxProcess, count: int) -> NaiveRun:
    from runner import vendor

    spec = {
        "url": sandbox.url + vendor.V2_MESSAGES_PATH,
        "csv": str(audience),
        "count": count,
        "campaign_id": CAMPAIGN_ID,
        "from": SENDER,
        "content": {"type": "text", "text": WIRE_TEXT},
        "substitutions": {"store": STORE},
        "key_header": vendor.SERVICE_KEY_HEADER,
        "service_key": SERVICE_KEY,
        "idempotency_header": vendor.IDEMPOTENCY_HEADER,
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "_naive", json.dumps(spec)]
    child = measure(cmd, directory, "naive", sandbox, dict(os.environ))
    return NaiveRun(child, json.loads(child.stdout))


# --- report -----------------------------------------------------------------------


@dataclass
class Pacing:
    span: float  # first to last arrival of an accepted request, seconds
    peak: int  # most destinations arriving (and accepted) within any 1 s


def pacing(timeline: list[tuple[float, int]]) -> Pacing | None:
    """How the sandbox saw the sends arrive: over how long, and the fullest second."""
    if not timeline:
        return None
    span = timeline[-1][0] - timeline[0][0]
    peak, j, inside = 0, 0, 0
    for i, (start, _) in enumerate(timeline):  # windows [start, start + 1 s) at each request
        while j < len(timeline) and timeline[j][0] < start + 1.0:
            inside += timeline[j][1]
            j += 1
        peak = max(peak, inside)
        inside -= timeline[i][1]
    return Pacing(span, peak)


def _ideal_ratio(recipients: int, tps: int, latency: float) -> float:
    """N / elapsed for a limiter that sends each window's destinations at the window's start,
    windows RATE_WINDOW_SECONDS apart, answers after `latency` (no other cost)."""
    size = max(1, min(1000, tps))
    batches = -(-recipients // size)
    per_window = max(1, tps // size)
    elapsed = (-(-batches // per_window) - 1) * RATE_WINDOW_SECONDS + latency
    return recipients / elapsed / tps if elapsed > 0 else 0.0


def _stats_line(stats: dict[str, int]) -> str:
    keys = ("requests", "accepted_requests", "accepted_messages", "rejected", "rejected_7020", "replayed", "dropped")
    return ", ".join(f"{k} {stats.get(k, 0):,}" for k in keys)


def _cpu_note(seconds: float | None, per: int) -> str:
    return "n/a" if seconds is None else f"{seconds:.2f} s ({seconds / per * 10_000:.2f} s / 10k)"


def _median(applies: list[ApplyRun]) -> ApplyRun:
    ranked = sorted(applies, key=lambda a: float(a.result["elapsedSeconds"]))
    return ranked[len(ranked) // 2]


def print_report(args: argparse.Namespace, applies: list[ApplyRun], naive: NaiveRun, plan: Child,
                 pg_applies: list[ApplyRun] | None = None) -> None:
    tps = args.tps
    ranked = sorted(applies, key=lambda a: float(a.result["elapsedSeconds"]))
    apply = ranked[len(ranked) // 2]  # the median run (the slower middle one of an even count)
    r = apply.result
    sent = int(r["acceptedDestinations"])
    # (the PostgreSQL runs, when asked for, are tabled beside these)
    send_wall = float(r["elapsedSeconds"])
    send_rate = float(r["destinationsPerSecond"])
    proc_wall = apply.child.wall
    cpu_10k = apply.child.cpu / max(sent, 1) * 10_000
    n = int(naive.result["sent"])
    naive_rate = n / naive.result["seconds"] if naive.result["seconds"] > 0 else 0.0
    naive_cpu_10k = naive.result["cpu_seconds"] / max(n, 1) * 10_000

    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()}")
    print(f"python:  {platform.python_implementation()} {platform.python_version()} ({sys.executable})")
    print(f"sandbox: {args.tps} tps, {args.latency * 1000:g} ms latency, separate process ({args.sandbox_url})")
    print(f"audience: {args.recipients:,} recipients, {r['plannedBatches']:,} requests "
          f"(batches of {min(1000, tps):,})")
    print(f"parent:  peak RSS {_maxrss_mb(resource.getrusage(resource.RUSAGE_SELF)):.1f} MB (no child's peak "
          "can read below this: Linux starts a spawned child's ru_maxrss at its parent's)")
    print(f"load:    1-minute load average {args.load_before:.2f} before the run, {os.getloadavg()[0]:.2f} after "
          f"({os.cpu_count()} cores; other processes' CPU shows up as jitter and 7020s here)")
    if len(applies) > 1:
        print(f"apply runs: {len(applies)}; the table shows the median send phase, every run is listed below")
    print()
    header = (f"{'mode':<28} {'destinations':>12} {'wall s':>8} {'dest/s':>9} {'ratio to tps':>13} "
              f"{'CPU s / 10k':>12} {'peak RSS MB':>12}")
    print(header)
    print("-" * len(header))
    rows = [
        ("apply: send phase", sent, send_wall, send_rate, cpu_10k, apply.child.peak_rss_mb),
        ("apply: whole process", sent, proc_wall, sent / proc_wall, cpu_10k, apply.child.peak_rss_mb),
        (f"naive: sample of {n:,}", n, naive.result["seconds"], naive_rate, naive_cpu_10k, naive.child.peak_rss_mb),
    ]
    pg = _median(pg_applies) if pg_applies else None
    if pg is not None:
        pg_sent = int(pg.result["acceptedDestinations"])
        rows.insert(2, ("apply, PostgreSQL: send", pg_sent, float(pg.result["elapsedSeconds"]),
                        float(pg.result["destinationsPerSecond"]), pg.child.cpu / max(pg_sent, 1) * 10_000,
                        pg.child.peak_rss_mb))
        rows.insert(3, ("apply, PostgreSQL: process", pg_sent, pg.child.wall, pg_sent / pg.child.wall,
                        pg.child.cpu / max(pg_sent, 1) * 10_000, pg.child.peak_rss_mb))
    for mode, dests, wall, rate, cpu, rss in rows:
        print(f"{mode:<28} {dests:>12,} {wall:>8.2f} {rate:>9,.0f} {rate / tps:>13.3f} {cpu:>12.2f} {rss:>12.1f}")
    print()
    goal = send_rate / tps
    print(f"goal: apply send phase >= 0.95 x tps: {goal:.3f} -> {'met' if goal >= 0.95 else 'NOT met'}"
          + (" (SQLite ledger)" if pg is not None else ""))
    if pg is not None:
        pg_goal = float(pg.result["destinationsPerSecond"]) / tps
        print(f"goal: apply send phase >= 0.95 x tps: {pg_goal:.3f} -> {'met' if pg_goal >= 0.95 else 'NOT met'} "
              f"(PostgreSQL ledger, {len(pg_applies or [])} run(s), median; 7020 "
              f"{pg.child.sandbox_stats.get('rejected_7020', 0):,}, exit code {pg.result['exitCode']})")
    if naive_rate > 0:
        print(f"naive extrapolated to {args.recipients:,}: {args.recipients / naive_rate:,.0f} s "
              f"({args.recipients / naive_rate / 3600:.1f} h) vs apply {proc_wall:.1f} s whole process; "
              f"apply send phase is {send_rate / naive_rate:,.0f}x the naive rate")
    print()
    print("apply:")
    if len(applies) > 1:
        for k, a in enumerate(applies, 1):
            p = pacing(a.child.timeline)
            done = max(int(a.result["acceptedDestinations"]), 1)
            print(f"  run {k}: send phase {float(a.result['elapsedSeconds']):.2f} s, "
                  f"{float(a.result['destinationsPerSecond']):,.0f} dest/s = "
                  f"{float(a.result['destinationsPerSecond']) / tps:.3f} x tps, "
                  f"attempts {a.result['attempts']:,}, 7020 {a.child.sandbox_stats.get('rejected_7020', 0):,}, "
                  f"CPU {a.child.cpu / done * 10_000:.2f} s / 10k, peak RSS {a.child.peak_rss_mb:.1f} MB"
                  + (f", most in any 1 s {p.peak:,}" if p else ""))
    for k, a in enumerate(pg_applies or [], 1):
        p = pacing(a.child.timeline)
        print(f"  PostgreSQL run {k}: send phase {float(a.result['elapsedSeconds']):.2f} s, "
              f"{float(a.result['destinationsPerSecond']) / tps:.3f} x tps, attempts {a.result['attempts']:,}, "
              f"7020 {a.child.sandbox_stats.get('rejected_7020', 0):,}"
              + (f", requests arrived over {p.span:.2f} s, most in any 1 s {p.peak:,}" if p else ""))
    print(f"  result: accepted {r['accepted']:,} requests / {sent:,} destinations, failed {r['failed']}, "
          f"uncertain {r['uncertain']}, attempts {r['attempts']:,}, exit code {r['exitCode']}")
    print(f"  process wall {proc_wall:.2f} s = send phase {send_wall:.2f} s + {proc_wall - send_wall:.2f} s outside "
          "it (start-up, load, plan pre-pass over every recipient, input hash, ledger)")
    print(f"  of which the plan pre-pass: `campaign plan` alone (start-up + load + one full compile) takes "
          f"{plan.wall:.2f} s wall, {plan.cpu:.2f} s CPU, {plan.peak_rss_mb:.1f} MB")
    print(f"  client CPU (whole process, from wait4): {_cpu_note(apply.child.cpu, max(sent, 1))}; "
          f"{apply.child.cpu / proc_wall * 100:.0f}% of one core over the process wall")
    p = pacing(apply.child.timeline)
    if p is not None:
        print(f"  as the sandbox saw it: accepted requests arrived over {p.span:.2f} s; most destinations "
              f"arriving in any 1 s: {p.peak:,} (limit {tps:,})")
        print(f"  note: N / elapsed includes the first second's burst: a sliding window lets {tps:,} go at t=0, so "
              f"a perfect limiter with a {RATE_WINDOW_NOTE} window reads about "
              f"{_ideal_ratio(args.recipients, tps, args.latency):.3f} x tps here, evenly spaced sends about "
              f"{1 / RATE_WINDOW_SECONDS:.3f}")
    print(f"  sandbox CPU meanwhile: {_cpu_note(apply.child.sandbox_cpu, max(sent, 1))}")
    print(f"  sandbox stats: {_stats_line(apply.child.sandbox_stats)}")
    print("naive (one request per recipient, sequential, one keep-alive httpx client):")
    print(f"  statuses: {naive.result['statuses']}")
    print(f"  client CPU: loop {_cpu_note(naive.result['cpu_seconds'], max(n, 1))}; whole process "
          f"(with interpreter + httpx start-up) {naive.child.cpu:.2f} s")
    print(f"  sandbox CPU meanwhile: {_cpu_note(naive.child.sandbox_cpu, max(n, 1))}")
    print(f"  sandbox stats: {_stats_line(naive.child.sandbox_stats)}")
    problems = []
    for k, a in enumerate(applies, 1):
        done, held = int(a.result["acceptedDestinations"]), a.child.sandbox_stats.get("accepted_messages", 0)
        if done != args.recipients or held != args.recipients:
            problems.append(f"apply run {k} delivered {done:,} (sandbox holds {held:,}) of {args.recipients:,}")
    for k, a in enumerate(pg_applies or [], 1):
        done, held = int(a.result["acceptedDestinations"]), a.child.sandbox_stats.get("accepted_messages", 0)
        if done != args.recipients or held != args.recipients:
            problems.append(f"PostgreSQL apply run {k} delivered {done:,} (sandbox holds {held:,}) "
                            f"of {args.recipients:,}")
    named = [(f"apply run {k}" if len(applies) > 1 else "apply", a.child.sandbox_stats)
             for k, a in enumerate(applies, 1)]
    named += [(f"PostgreSQL apply run {k}", a.child.sandbox_stats) for k, a in enumerate(pg_applies or [], 1)]
    for name, stats in (*named, ("naive", naive.child.sandbox_stats)):
        if stats.get("rejected_7020", 0):
            problems.append(f"{name}: the sandbox refused {stats['rejected_7020']:,} requests over TPS (7020)")
    if naive.result["statuses"].keys() - {"201"}:
        problems.append(f"naive: not every request was accepted: {naive.result['statuses']}")
    for problem in problems:
        print(f"WARNING: {problem}")


def print_modes(args: argparse.Namespace, by_mode: dict[str, list[ApplyRun]]) -> None:
    """The two personalisation modes side by side, from the same run (same machine state)."""
    tps = args.tps
    print()
    print(f"personalisation modes at {tps:,} tps, {args.latency * 1000:g} ms latency, "
          f"{args.recipients:,} recipients (median send phase of {args.repeat} run(s) each):")
    header = (f"{'mode':<10} {'requests':>9} {'send s':>8} {'dest/s':>9} {'ratio to tps':>13} {'req/s':>8} "
              f"{'CPU s / 10k':>12} {'peak RSS MB':>12} {'7020s':>6}")
    print(header)
    print("-" * len(header))
    for mode, runs in by_mode.items():
        ranked = sorted(runs, key=lambda a: float(a.result["elapsedSeconds"]))
        run = ranked[len(ranked) // 2]
        r = run.result
        sent = max(int(r["acceptedDestinations"]), 1)
        seconds = max(float(r["elapsedSeconds"]), 1e-9)
        print(f"{mode:<10} {int(r['plannedBatches']):>9,} {seconds:>8.2f} {float(r['destinationsPerSecond']):>9,.0f} "
              f"{float(r['destinationsPerSecond']) / tps:>13.3f} {int(r['accepted']) / seconds:>8,.0f} "
              f"{run.child.cpu / sent * 10_000:>12.2f} {run.child.peak_rss_mb:>12.1f} "
              f"{run.child.sandbox_stats.get('rejected_7020', 0):>6,}")
        goal = float(r["destinationsPerSecond"]) / tps
        print(f"  goal {mode}: send phase >= 0.95 x tps: {goal:.3f} -> {'met' if goal >= 0.95 else 'NOT met'}"
              f"; sandbox CPU {_cpu_note(run.child.sandbox_cpu, sent)}")
        if int(r["acceptedDestinations"]) != args.recipients:
            print(f"  WARNING: {mode} delivered {int(r['acceptedDestinations']):,} of {args.recipients:,}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark `campaign apply` against the sandbox at a TPS, "
                                                 "next to a naive one-request-per-recipient sender.")
    parser.add_argument("--recipients", type=int, default=100_000, help="audience size (default 100000)")
    parser.add_argument("--tps", type=int, default=5000, help="tenant TPS: campaign throughput and sandbox limit")
    parser.add_argument("--latency", type=float, default=0.05, help="sandbox seconds before each answer (0.05)")
    parser.add_argument("--baseline-sample", type=int, default=300,
                        help="recipients the naive sender posts (its rate is extrapolated; default 300)")
    parser.add_argument("--max-in-flight", type=int, default=None, help="passed to apply (default: apply's own)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="apply runs (fresh ledger each); the median is tabled (default 1)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="personalisation modes to apply, in order (default platform,local; local sends a "
                        "text unique to each recipient: one request per destination)")
    parser.add_argument("--workdir", type=Path, help="where to write data (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep generated files, ledger and logs")
    parser.add_argument("--state", default=None, metavar="URL",
                        help="a postgresql:// ledger: apply runs into it too (a fresh environment each), "
                        "tabled beside the SQLite runs")
    args = parser.parse_args(argv)
    if args.state is not None and not args.state.startswith(("postgresql://", "postgres://")):
        parser.error("--state takes a postgresql:// URL (the SQLite runs always happen)")
    if not 1 <= args.recipients <= MAX_RECIPIENTS:
        parser.error(f"--recipients must be between 1 and {MAX_RECIPIENTS:,}")
    if args.tps < 1 or args.latency < 0:
        parser.error("--tps must be at least 1 and --latency not negative")
    if not 1 <= args.baseline_sample <= args.recipients:
        parser.error("--baseline-sample must be between 1 and --recipients")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - set(MODES):
        parser.error(f"--modes takes a comma-separated list of {', '.join(MODES)}")
    args.load_before = os.getloadavg()[0]
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        root = args.workdir.resolve()
    else:
        root = Path(tempfile.mkdtemp(prefix="bench-send-"))
    directory = root / f"send-n{args.recipients}"
    sandbox: SandboxProcess | None = None
    try:
        print(f"generating {args.recipients:,} recipients in {directory} ...", file=sys.stderr, flush=True)
        campaigns, audience = generate(directory, args.recipients, args.tps)
        check_numbers(args.recipients)
        sandbox = SandboxProcess(args.tps, args.latency, directory / "sandbox.stderr")
        args.sandbox_url = sandbox.url
        extra = [] if args.max_in_flight is None else ["--max-in-flight", str(args.max_in_flight)]
        by_mode: dict[str, list[ApplyRun]] = {}
        for mode in args.modes:
            for attempt in range(1, args.repeat + 1):
                print(f"apply ({mode}) {attempt}/{args.repeat} -> {sandbox.url} ...", file=sys.stderr, flush=True)
                by_mode.setdefault(mode, []).append(
                    run_apply(directory, campaigns[mode], sandbox, extra, "apply" if mode == "platform" else "apply-" + mode))
        first = args.modes[0]
        pg_applies = []
        for attempt in range(1, (args.repeat + 1) if args.state else 1):
            print(f"apply ({first}) into PostgreSQL {attempt}/{args.repeat} -> {sandbox.url} ...", file=sys.stderr,
                  flush=True)
            pg_applies.append(run_apply(directory, campaigns[first], sandbox, extra, postgres=args.state))
        print(f"naive, {args.baseline_sample:,} recipients ...", file=sys.stderr, flush=True)
        naive = run_naive(directory, audience, sandbox, args.baseline_sample)
        print(f"plan ({first}: the pre-pass alone) ...", file=sys.stderr, flush=True)
        plan = run_plan(directory, campaigns[first], sandbox)
        print(f"detail of the {first} mode:")
        print_report(args, by_mode[first], naive, plan, pg_applies)
        print_modes(args, by_mode)
    finally:
        if sandbox is not None:
            sandbox.stop()
        if args.keep:
            print(f"\nfiles kept in {directory}", file=sys.stderr)
        elif args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
