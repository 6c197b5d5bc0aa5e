"""Benchmark: `campaign receipts listen` taking delivery receipts, next to two ceilings.

Run from the repository root (the package installed, `campaign` on PATH):

    python bench/receipts.py                    # 60 s, 48 connections, SQLite in a temp dir
    python bench/receipts.py --seconds 10       # a quick look
    python bench/receipts.py --kill             # kill -9 the listener mid-run, restart it
    python bench/receipts.py --state /tmp/r.db  # the ledger location, passed through to the listener

It seeds the ledger with a campaign of --destinations destinations (known correlation
ids, through the `Ledger` API), then measures, in this order and in one run:

* ledger alone: `Ledger.record_receipts` in this process, --group receipts a commit,
  for a few seconds: the storage ceiling (a second campaign in the same ledger, so its
  receipts are not counted with the listener's);
* null server: the same posts against a trivial ASGI app on uvicorn with the listener's
  settings, which reads and parses the body and stores nothing: the HTTP ceiling of
  this machine, poster included;
* listen: `campaign receipts listen --state STATE` in its own process, with a token.

Posters are child processes (`--posters`, each with its share of `--concurrency`
connections, one httpx AsyncClient each) that post one receipt per request, each
receipt distinct (a destination and a time stamp of its own), retrying a receipt until
it is answered 200 (connection refused, reset or 5xx: 20 ms pause, again). A receipt
counts as acknowledged on its 200; latency is that request's own time. After the run,
the ledger's stored receipts for the campaign are counted: stored must equal
acknowledged (a receipt committed but not acknowledged is retried and then stored once).

With --kill the listener is killed with SIGKILL halfway through and started again on
the same port; the posters retry what was not acknowledged. This is a measurement, not a
test: nothing here asserts on a time. Goal (from the issue): >= 3,000 receipts/s
sustained with stored = acknowledged, also with --kill.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

BASE_TIME = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
TOKEN = "bench-receipts-token-0123456789abcdef"
RETRY_PAUSE_SECONDS = 0.02


def correlation_id(campaign: str, k: int) -> str:
    return f"{campaign}-c{k:07d}"


def receipt(campaign: str, destinations: int, i: int) -> dict[str, Any]:
    """Receipt number i: for destination i mod N, with a time stamp only it has."""
    k = i % destinations
    return {"deliveryInfoNotification": {
        "deliveryInfo": {"deliveryStatus": "Delivered", "code": "0", "description": "Delivered",
                         "destination": f"{447400000000 + k}",
                         "timeStamp": (BASE_TIME + timedelta(milliseconds=i)).isoformat()},
        "transid": f"{campaign}-t{k:07d}", "correlationid": correlation_id(campaign, k), "subtid": ""}}


# --- the poster (child process) -------------------------------------------------------


def _post(spec_json: str) -> None:
    """Post receipts first, first+step, ... until `seconds` pass, each until answered 200;
    print one JSON line of counts and latencies."""
    spec = json.loads(spec_json)
    campaign, destinations = spec["campaign"], spec["destinations"]
    latencies: list[float] = []
    counts = {"acknowledged": 0, "unmatched": 0, "retries": 0, "given_up": 0}
    sequence = iter(range(spec["first"], 1 << 62, spec["step"]))
    send_one = _httpx_sender(spec) if spec["client"] == "httpx" else _raw_sender(spec)

    async def run() -> float:
        started = time.monotonic()
        deadline = started + spec["seconds"]
        give_up_at = deadline + spec["grace"]

        async def worker() -> None:
            post = await send_one()
            while time.monotonic() < deadline:
                body = json.dumps(receipt(campaign, destinations, next(sequence))).encode()
                while True:
                    began = time.perf_counter()
                    answer = await post(body)
                    if answer is not None and answer[0] == 200:
                        latencies.append(time.perf_counter() - began)
                        counts["acknowledged"] += 1
                        if b'"matched": 1' not in answer[1]:
                            counts["unmatched"] += 1
                        break
                    counts["retries"] += 1
                    if time.monotonic() > give_up_at:
                        counts["given_up"] += 1
                        break
                    await asyncio.sleep(RETRY_PAUSE_SECONDS)
            await post(None)

        await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
        return time.monotonic() - started

    try:  # the listener's loop (a dependency off Windows): the poster's CPU per request falls too
        import uvloop

        elapsed = uvloop.run(run())
    except ImportError:
        elapsed = asyncio.run(run())
    # to a file: a pipe that uvloop left non-blocking takes a megabyte of latencies in pieces
    with open(spec["out"], "w", encoding="utf-8") as out:
        json.dump({**counts, "elapsed": elapsed, "latencies": latencies}, out)


Post = Callable[[bytes | None], Awaitable[tuple[int, bytes] | None]]


def _httpx_sender(spec: dict[str, Any]) -> Callable[[], Awaitable[Post]]:
    """One httpx AsyncClient (one keep-alive connection) per worker."""
    import httpx

    headers = {"Content-Type": "application/json"}
    if spec["token"]:
        headers["Authorization"] = f"Bearer {spec['token']}"

    async def connect() -> Post:
        # plain HTTP on loopback: no proxy, and no CA bundle loaded (~50 ms a client)
        client = httpx.AsyncClient(timeout=10.0, headers=headers, trust_env=False, verify=False)

        async def post(body: bytes | None) -> tuple[int, bytes] | None:
            if body is None:
                await client.aclose()
                return None
            try:
                answer = await client.post(spec["url"], content=body)
            except httpx.TransportError:
                return None
            return answer.status_code, answer.content

        return post

    return connect


def _raw_sender(spec: dict[str, Any]) -> Callable[[], Awaitable[Post]]:
    """HTTP/1.1 keep-alive on asyncio streams: a request is one write, an answer is a
    status line, headers up to the blank line, and Content-Length bytes. A tenth of
    httpx's CPU per request, so the poster does not become what is measured."""
    parts = urllib.parse.urlsplit(spec["url"])
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            + (f"Authorization: Bearer {spec['token']}\r\n" if spec["token"] else "")
            + "Content-Length: ").encode()

    async def connect() -> Post:
        stream: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

        def drop() -> None:
            if stream:
                stream.pop()[1].close()

        async def post(body: bytes | None) -> tuple[int, bytes] | None:
            if body is None:
                drop()
                return None
            try:
                async with asyncio.timeout(10):
                    if not stream:
                        stream.append(await asyncio.open_connection(host, port))
                    reader, writer = stream[0]
                    writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
                    lines = (await reader.readuntil(b"\r\n\r\n")).lower().split(b"\r\n")
                    status = int(lines[0].split()[1])
                    length = next((int(line[15:]) for line in lines if line.startswith(b"content-length:")), 0)
                    content = await reader.readexactly(length)
                    if b"connection: close" in lines:
                        drop()
                    return status, content
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError):
                drop()
                return None

        return post

    return connect


# --- the null server (child process) ----------------------------------------------------


def _null(spec_json: str) -> None:
    """The listener's uvicorn settings around an app that parses and stores nothing."""
    import uvicorn

    from runner.receipts import MAX_CONCURRENT_REQUESTS, bind, parse_receipts

    spec = json.loads(spec_json)
    answer = json.dumps({"matched": 1, "unmatched": 0}).encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        parse_receipts(body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode()), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})

    sock = bind("127.0.0.1", spec["port"])
    config = uvicorn.Config(app, http="httptools", lifespan="off", log_level="warning", access_log=False,
                            server_header=False, limit_concurrency=MAX_CONCURRENT_REQUESTS)
    print(f"null listening on http://127.0.0.1:{sock.getsockname()[1]}/receipts", file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] in ("_post", "_null"):
    {"_post": _post, "_null": _null}[sys.argv[1]](sys.argv[2])
    sys.exit(0)


# --- the benchmark (parent process) -------------------------------------------------------

import argparse  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

from runner.ledger import Ledger  # noqa: E402
from runner.model import Batch, Destination  # noqa: E402

SEED_BATCH = 1000
LEDGER_ALONE_SECONDS = 5.0


def campaign_command() -> list[str]:
    beside = Path(sys.executable).with_name("campaign")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [sys.executable, "-c", "from runner.cli import main; main()"]


def seed(state: str, campaign: str, destinations: int) -> None:
    with Ledger.open(state) as ledger:  # type: ignore[arg-type]  # a path, or a URL once the ledger takes one
        batches = [Batch(key=f"{campaign}-b{start // SEED_BATCH}", index=start // SEED_BATCH, api="v2", body={},
                         destinations=tuple(Destination(f"+{447400000000 + k}", correlation_id(campaign, k))
                                            for k in range(start, min(start + SEED_BATCH, destinations))))
                   for start in range(0, destinations, SEED_BATCH)]
        ledger.record_pending_many(campaign, batches)


def stored(state: str, campaign: str) -> int:
    with Ledger.open(state) as ledger:  # type: ignore[arg-type]
        return sum(ledger.summary(campaign).receipts.values())


def ledger_alone(state: str, campaign: str, destinations: int, group: int) -> float:
    """Receipts/s through `Ledger.record_receipts` alone, `group` a transaction."""
    with Ledger.open(state) as ledger:  # type: ignore[arg-type]
        done = 0
        started = time.perf_counter()
        while time.perf_counter() - started < LEDGER_ALONE_SECONDS:
            outcomes = ledger.record_receipts([receipt(campaign, destinations, i) for i in range(done, done + group)])
            assert all(outcomes), "ledger alone: a seeded receipt did not match"
            done += group
        return done / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A listener (or the null server) in its own process, ready once it printed its URL."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.command, self.env = command, env
        self.proc: subprocess.Popen[str] | None = None
        self.cpu_before_kill = 0.0
        self.down_seconds: float | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=self.env)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "listening on" not in line:
            raise SystemExit(f"server did not start: {line}{self.proc.stderr.read()}")
        self.url = line.split()[3]
        self.errors: list[str] = []
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.strip() != "interrupted":  # the CLI's word for a Ctrl-C, our normal stop
                self.errors.append(line.rstrip())

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return self.cpu_before_kill + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def kill_and_restart(self) -> None:
        assert self.proc is not None
        self.cpu_before_kill = self.cpu_seconds()
        killed = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.start()
        self.down_seconds = time.monotonic() - killed

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Round:
    name: str
    acknowledged: int
    unmatched: int
    retries: int
    given_up: int
    elapsed: float
    latencies: list[float]
    server_cpu: float
    stored: int | None = None

    @property
    def rate(self) -> float:
        return self.acknowledged / self.elapsed if self.elapsed else 0.0

    def percentile(self, q: int) -> float:
        if len(self.latencies) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000


def post(server: Server, args: argparse.Namespace, campaign: str, seconds: float, token: str | None,
         kill_after: float | None = None) -> Round:
    base, extra = divmod(args.concurrency, args.posters)
    specs = [{"url": server.url, "campaign": campaign, "destinations": args.destinations, "token": token,
              "seconds": seconds, "grace": 60.0, "client": args.client, "first": p, "step": args.posters,
              "concurrency": base + (1 if p < extra else 0), "out": str(args.workdir_path / f"poster-{p}.json")}
             for p in range(args.posters)]
    cpu_before = server.cpu_seconds()
    posters = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_post", json.dumps(spec)],
                                stdin=subprocess.DEVNULL) for spec in specs]
    if kill_after is not None:
        time.sleep(kill_after)
        server.kill_and_restart()
    for poster in posters:
        if poster.wait() != 0:
            raise SystemExit(f"a poster failed (exit {poster.returncode})")
    results = [json.loads(Path(spec["out"]).read_text(encoding="utf-8")) for spec in specs]
    server_cpu = server.cpu_seconds() - cpu_before
    return Round(name="", acknowledged=sum(r["acknowledged"] for r in results),
                 unmatched=sum(r["unmatched"] for r in results), retries=sum(r["retries"] for r in results),
                 given_up=sum(r["given_up"] for r in results), elapsed=max(r["elapsed"] for r in results),
                 latencies=[x for r in results for x in r["latencies"]], server_cpu=server_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the listener is posted to (default 60)")
    parser.add_argument("--baseline-seconds", type=float, default=15.0, help="how long the null server is (default 15)")
    parser.add_argument("--concurrency", type=int, default=48, help="connections in all (default 48)")
    parser.add_argument("--posters", type=int, default=2, help="poster processes (default 2)")
    parser.add_argument("--destinations", type=int, default=20_000, help="seeded destinations (default 20,000)")
    parser.add_argument("--group", type=int, default=64, help="receipts a commit for `ledger alone` (default 64)")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="poster's HTTP client: raw asyncio streams (default) or httpx")
    parser.add_argument("--state", help="ledger location passed to the listener (default: a temp SQLite file)")
    parser.add_argument("--kill", action="store_true", help="kill -9 the listener halfway, restart it")
    parser.add_argument("--workdir", type=Path, help="folder for the ledger and logs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep --workdir")
    args = parser.parse_args()
    if args.posters < 1 or args.concurrency < args.posters:
        parser.error("need --posters >= 1 and --concurrency >= --posters")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-receipts-"))
    workdir.mkdir(parents=True, exist_ok=True)
    args.workdir_path = workdir
    state = args.state or str(workdir / "state.db")
    nonce = secrets.token_hex(3)
    listened, alone = f"bench-{nonce}", f"bench-{nonce}-alone"
    try:
        started = time.perf_counter()
        seed(state, listened, args.destinations)
        seed(state, alone, args.destinations)
        print(f"seeded {args.destinations:,} destinations twice in {time.perf_counter() - started:.1f} s "
              f"into {state}", flush=True)

        alone_rate = ledger_alone(state, alone, args.destinations, args.group)

        env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_RECEIPTS_")}
        null = Server([sys.executable, str(Path(__file__).resolve()), "_null", json.dumps({"port": 0})], env)
        try:
            baseline = post(null, args, "null", args.baseline_seconds, None)
        finally:
            null.stop()
        baseline.name = "null server (parses, stores nothing)"

        port = free_port()
        listener = Server([*campaign_command(), "receipts", "listen", "--state", state, "--host", "127.0.0.1",
                           "--port", str(port)], {**env, "CAMPAIGN_RECEIPTS_TOKEN": TOKEN})
        try:
            measured = post(listener, args, listened, args.seconds, TOKEN,
                            kill_after=args.seconds / 2 if args.kill else None)
        finally:
            listener.stop()
        measured.name = "listen" + (" (kill -9 halfway, restarted)" if args.kill else "")
        measured.stored = stored(state, listened)
        report(args, state, alone_rate, baseline, measured, listener.errors)
        if listener.down_seconds is not None:
            print(f"  kill -9 at {args.seconds / 2:.0f} s: listener restarted and listening again after "
                  f"{listener.down_seconds:.2f} s; {measured.retries:,} posts retried meanwhile")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def report(args: argparse.Namespace, state: str, alone_rate: float, baseline: Round, measured: Round,
           errors: list[str]) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nreceipts: {args.concurrency} connections from {args.posters} posters, one receipt a request, "
          f"{os.cpu_count()} cores, load {load:.1f}")
    print(f"{'':42} {'receipts/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'acked':>9} {'stored':>9} "
          f"{'retries':>8} {'srv CPU s':>9} {'µs/receipt':>10}")
    print(f"  {'ledger alone (' + str(args.group) + ' a commit)':40} {alone_rate:>10,.0f}")
    for row in (baseline, measured):
        shown_stored = f"{row.stored:>9,}" if row.stored is not None else f"{'-':>9}"
        print(f"  {row.name:40} {row.rate:>10,.0f} {row.percentile(50):>7.1f} {row.percentile(99):>7.1f} "
              f"{row.acknowledged:>9,} {shown_stored} {row.retries:>8,} {row.server_cpu:>9.1f} "
              f"{row.server_cpu / max(row.acknowledged, 1) * 1e6:>10.0f}")
    print(f"  listen / null server: {measured.rate / baseline.rate:.2f}x" if baseline.rate else "")
    same = measured.stored == measured.acknowledged and measured.unmatched == 0 and measured.given_up == 0
    goal = measured.rate >= 3000 and same
    print(f"  goal: >= 3,000 receipts/s with stored = acknowledged: {'met' if goal else 'NOT met'} "
          f"({measured.rate:,.0f}/s over {measured.elapsed:.1f} s; stored {measured.stored:,} vs acknowledged "
          f"{measured.acknowledged:,}; unmatched {measured.unmatched}, given up {measured.given_up})")
    if measured.server_cpu > 0:
        print(f"  listener CPU: {measured.acknowledged / measured.server_cpu:,.0f} receipts per CPU second "
              "(what one core of its own would sustain; posters and other processes share this machine)")
    print(f"  ledger: {state}")
    if errors:
        print(f"  listener wrote {len(errors)} line(s) to stderr, first: {errors[0][:200]}")


if __name__ == "__main__":
    main()
