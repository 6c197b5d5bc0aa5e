"""What apply says happened: authentication stops the run, connection failures are named,
the rate is measured over the send phase, base URLs with a version, and exit codes.

Real HTTP on 127.0.0.1 against the sandbox (or a socket that refuses, or speaks no TLS),
real SQLite ledgers, the real `campaign` command where the exit code is the point.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from runner.client import ApiClient, Credentials, resolve_base_url
from runner.commands import ApplySettings, Console, ValidateSettings, run_apply, run_validate
from runner.compile import Compiler
from runner.errors import CampaignError, ExitCode
from runner.ledger import Ledger
from runner.report import TextReporter
from runner.sandbox import Sandbox
from runner.send import Applier, SendPolicy, in_flight_for
from runner.validate import load_campaign

from .helpers import number, write_campaign
from .test_apply import (
    CAMPAIGN_ID,
    ENV,
    KEY,
    apply,
    cli,
    csv_campaign,
    ledger_state,
    status,
    sandbox,  # noqa: F401  (fixture)
    sandbox_factory,  # noqa: F401  (fixture)
)

# --- a 401 stops the run ------------------------------------------------------------


def test_a_refused_key_stops_after_the_first_answer_and_says_how_to_fix_it(
    tmp_path: Path, sandbox_factory: Callable[..., Sandbox]  # noqa: F811
) -> None:
    sandbox = sandbox_factory(service_key="right")
    path, _ = csv_campaign(tmp_path, 25, tps=10)  # three batches of at most 10
    state = tmp_path / "state.db"

    run = apply(path, sandbox.url, state, environ={"WEBEX_CONNECT_SERVICE_KEY": "wrong-key"}, max_in_flight=1)

    assert run.code == int(ExitCode.USAGE) == 2
    assert sandbox.stats()["requests"] == 1  # the first answer stopped it: the other two never left
    assert "authentication failed" in run.out
    assert "WEBEX_CONNECT_SERVICE_KEY" in run.out and "run apply again" in run.out
    _, records = ledger_state(state)
    # one failed; what was not sent is at most pending (recorded before its turn), never failed
    assert sorted(r.status for r in records if r.status != "pending") == ["failed"]
    assert [r.http_status for r in records if r.status == "failed"] == [401]


def test_a_refused_key_is_in_the_json_summary(tmp_path: Path, sandbox_factory: Callable[..., Sandbox]) -> None:  # noqa: F811
    sandbox = sandbox_factory(service_key="right")
    path, _ = csv_campaign(tmp_path, 5, tps=10)
    run = apply(path, sandbox.url, tmp_path / "state.db", environ={"WEBEX_CONNECT_SERVICE_KEY": "wrong-key"},
                output_format="json")
    result = json.loads(run.out)
    assert result["format_version"] == 1
    assert result["exitCode"] == 2
    assert result["authFailure"].startswith("HTTP 401")


# --- connection failures are named in apply's own output ---------------------------------


def _one_attempt_apply(tmp_path: Path, base_url: str) -> str:
    """Apply's sending and its text summary, with one attempt per batch (no minute of backoff)."""
    path = write_campaign(tmp_path, {"content": {"text": "hi"}, "recipients": [{"msisdn": number(1)}]})
    campaign, _ = load_campaign(path, now=datetime.now(timezone.utc))
    with Ledger.open(tmp_path / "state.db") as ledger, ApiClient(base_url, Credentials("k"), timeout=5) as client:
        run_id = ledger.begin_run(campaign.id)
        applier = Applier(campaign, ledger=ledger, sender=client, api="v2", policy=SendPolicy(max_attempts=1),
                          run_id=run_id)
        result = applier.run(Compiler(campaign, "v2").iter_batches())
    out = io.StringIO()
    TextReporter(out).apply(result)
    assert result.failed == 1
    return out.getvalue()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again: nothing listens there


@pytest.fixture
def plain_http_server() -> Iterator[int]:
    """Answers anything with a plain HTTP line: a TLS client meets no handshake."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield int(listener.getsockname()[1])
    stop.set()
    listener.close()


def test_connection_refused_is_named_in_apply_output(tmp_path: Path, closed_port: int) -> None:
    out = _one_attempt_apply(tmp_path, f"http://127.0.0.1:{closed_port}")
    assert "connection refused by 127.0.0.1" in out


def test_a_dns_failure_is_named_in_apply_output(tmp_path: Path) -> None:
    out = _one_attempt_apply(tmp_path, "https://no-such-host.invalid")  # .invalid never resolves (RFC 6761)
    assert "DNS lookup failed: no-such-host.invalid was not found" in out


def test_a_tls_failure_is_named_in_apply_output(tmp_path: Path, plain_http_server: int) -> None:
    out = _one_attempt_apply(tmp_path, f"https://localhost:{plain_http_server}")
    assert "TLS handshake with localhost failed" in out


# --- the rate is measured over the send phase -----------------------------------------------


def test_one_full_batch_reads_below_the_tps_not_thousands_a_second(tmp_path: Path, sandbox: Sandbox) -> None:  # noqa: F811
    path, _ = csv_campaign(tmp_path, 500, tps=500)  # one request of 500, answered in milliseconds
    run = apply(path, sandbox.url, tmp_path / "state.db", output_format="json")
    result = json.loads(run.out)
    assert result["acceptedDestinations"] == 500
    # the batch holds 500/500 of a 1.02 s pacing window: that is the send phase
    assert result["sendSeconds"] == 1.02
    assert result["destinationsPerSecond"] == 490.2


@pytest.mark.parametrize(("tps", "requests", "destinations", "expected"), [
    (1000, 10_000, 10_000, 100),  # local personalisation: a request a destination, 1,000 a second
    (5000, 100, 100_000, 8),  # full 1,000-destination requests: 5 a second
    (300, 1000, 1000, 30),
    (5000, 5000, 5000, 128),  # capped
    (10, 0, 0, 8),  # nothing to send
])
def test_requests_in_flight_follow_the_requests_a_second(tps: int, requests: int, destinations: int,
                                                         expected: int) -> None:
    assert in_flight_for(tps, requests, destinations) == expected


def test_apply_without_max_in_flight_chooses_it_from_the_campaign(tmp_path: Path, sandbox: Sandbox) -> None:  # noqa: F811
    path, _ = csv_campaign(tmp_path, 40, tps=400, text="Hi {{ msisdn }}", personalisation="local")
    chosen = json.loads(apply(path, sandbox.url, tmp_path / "state.db", output_format="json").out)
    assert (chosen["accepted"], chosen["maxInFlight"]) == (40, 40)  # 400 requests a second at 100 ms
    given = json.loads(apply(path, sandbox.url, tmp_path / "other.db", output_format="json", max_in_flight=3).out)
    assert given["maxInFlight"] == 3


def test_requests_leaving_together_never_read_above_the_tps(tmp_path: Path, sandbox: Sandbox) -> None:  # noqa: F811
    """Seven one-destination requests at 100 TPS, each on a new connection (the quick start):
    their slots are 7 x 1.02 / 100 s however close together they left."""
    path, _ = csv_campaign(tmp_path, 7, tps=100, text="Hi {{ msisdn }}", personalisation="local")
    result = json.loads(apply(path, sandbox.url, tmp_path / "state.db", output_format="json").out)
    assert result["acceptedDestinations"] == 7
    assert result["sendSeconds"] >= 0.071
    assert result["destinationsPerSecond"] <= 100


def test_the_text_summary_states_the_send_phase_rate(tmp_path: Path, sandbox: Sandbox) -> None:  # noqa: F811
    path, _ = csv_campaign(tmp_path, 446, tps=500)
    run = apply(path, sandbox.url, tmp_path / "state.db")
    assert "446 destinations accepted in 1 request (490.2/s over 0.9 s of sending, 1 attempt)" in run.out


# --- base URLs copied with their version ----------------------------------------------------


@pytest.mark.parametrize("suffix", ["/v2", "/v2/", "/v1", "/v1/", "/"])
def test_a_base_url_ending_in_a_version_is_not_doubled(suffix: str) -> None:
    base = resolve_base_url(base_url=f"https://api.us.webexconnect.io{suffix}", region=None)
    assert base == "https://api.us.webexconnect.io"


def test_apply_to_a_base_url_with_v2_reaches_v2_messages(tmp_path: Path, sandbox: Sandbox) -> None:  # noqa: F811
    path, numbers = csv_campaign(tmp_path, 3, tps=10)
    run = apply(path, sandbox.url + "/v2/", tmp_path / "state.db")
    assert run.code == 0, run.out + run.err
    assert sorted(m.msisdn for m in sandbox.messages()) == sorted(numbers)


# --- exit codes -----------------------------------------------------------------------


def test_validate_of_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(CampaignError) as caught:
        run_validate(ValidateSettings((tmp_path / "nope.yaml",)), now=datetime.now(timezone.utc), out=io.StringIO())
    assert caught.value.exit_code == ExitCode.USAGE
    done = cli("validate", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2
    assert "no such file or folder" in done.stderr


def test_declining_the_prompt_exits_4_and_sends_nothing(tmp_path: Path, sandbox: Sandbox) -> None:  # noqa: F811
    path, _ = csv_campaign(tmp_path, 5, tps=10)
    err = io.StringIO()
    console = Console(out=io.StringIO(), err=err, interactive=True, environ=ENV, confirm=lambda question: False)
    code = run_apply(ApplySettings(file=path, base_url=sandbox.url, state=tmp_path / "state.db", quiet=True),
                     now=datetime.now(timezone.utc), console=console)
    assert code == ExitCode.REFUSED == 4
    assert "declined" in err.getvalue()
    assert sandbox.stats()["requests"] == 0


def test_an_interrupted_apply_exits_130(tmp_path: Path, sandbox: Sandbox) -> None:  # noqa: F811
    path, _ = csv_campaign(tmp_path, 30, tps=10)
    campaign, _ = load_campaign(path, now=datetime.now(timezone.utc))

    class InterruptAfterFirst:
        """Ctrl-C arriving while the first request is on the wire (what the signal handler does)."""

        def __init__(self, inner: ApiClient) -> None:
            self.inner = inner
            self.applier: Applier | None = None

        def send(self, batch, on_departure=None):  # type: ignore[no-untyped-def]
            answer = self.inner.send(batch, on_departure)
            assert self.applier is not None
            self.applier.stop.set()
            self.applier.result.interrupted = True
            return answer

    with Ledger.open(tmp_path / "state.db") as ledger, ApiClient(sandbox.url, Credentials(KEY)) as client:
        sender = InterruptAfterFirst(client)
        applier = Applier(campaign, ledger=ledger, sender=sender, api="v2", policy=SendPolicy(max_in_flight=1),
                          run_id=ledger.begin_run(CAMPAIGN_ID))
        sender.applier = applier
        result = applier.run(Compiler(campaign, "v2").iter_batches())
    assert result.accepted == 1
    assert result.exit_code == ExitCode.INTERRUPTED == 130
    assert result.to_json()["exitCode"] == 130


def test_traceback_is_listed_in_help() -> None:
    done = cli("--help")
    assert done.returncode == 0
    assert "--traceback" in done.stdout


def test_status_json_carries_its_format_version(tmp_path: Path, sandbox: Sandbox) -> None:  # noqa: F811
    path, _ = csv_campaign(tmp_path, 3, tps=10)
    state = tmp_path / "state.db"
    assert apply(path, sandbox.url, state).code == 0
    shown = json.loads(status(path, state, "json").out)
    assert shown["format_version"] == 1
    assert shown["destinations"]["accepted"] == 3


# --- the sandbox's switches at work: a swallowed answer, with and without deduplication ----------


@pytest.mark.parametrize("deduplicating", [True, False], ids=["vendor-dedupes", "vendor-ignores-key"])
def test_a_swallowed_answer_is_held_then_resent_once_only_thanks_to_the_key(
    tmp_path: Path, sandbox_factory: Callable[..., Sandbox], deduplicating: bool  # noqa: F811
) -> None:
    """Request 2 is taken but its answer never comes: apply holds that batch `uncertain`
    (exit 3). `--resend-uncertain` sends it again under the same Idempotency-Key: a vendor
    that honours the key stores it once; one that ignores it (the switch) shows the
    duplicates that would reach handsets, which is why the ledger holds such batches."""
    sandbox = sandbox_factory(drop_requests=frozenset({2}), ignore_idempotency=not deduplicating)
    path, numbers = csv_campaign(tmp_path, 30, tps=10)  # three batches of 10
    state = tmp_path / "state.db"

    first = apply(path, sandbox.url, state, max_in_flight=1)
    assert first.code == int(ExitCode.PARTIAL)
    _, records = ledger_state(state)
    assert sorted(r.status for r in records) == ["accepted", "accepted", "uncertain"]
    assert len(sandbox.messages()) == 30  # all three were taken

    second = apply(path, sandbox.url, state, resend_uncertain=True)
    assert second.code == 0, second.out + second.err
    stored = [m.msisdn for m in sandbox.messages()]
    held = set(numbers[10:20])  # the second batch: file order, ten a request
    if deduplicating:
        assert sorted(stored) == sorted(numbers)  # each once
    else:
        assert len(stored) == 40 and {m for m in stored if stored.count(m) == 2} == held
