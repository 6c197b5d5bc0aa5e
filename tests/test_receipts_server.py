"""`campaign receipts listen` as the internet meets it: a real uvicorn server on a free
loopback port, a real ledger file read back with sqlite3 after each answer."""

from __future__ import annotations

import base64
import json
import logging
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from runner.cli import cli
from runner.commands import ReceiptsListenSettings, run_receipts_listen
from runner.errors import CampaignError, ExitCode
from runner.ledger import Ledger
from runner.model import Batch, Destination
from runner.receipts import MAX_BODY_BYTES, ReceiptListener, receipts_token

TOKEN = "s3cret-token-for-tests-0123456789"
CORRELATIONS = [f"corr-{i}" for i in range(1, 41)]


def receipt(correlation: str, *, status: str = "Delivered", stamp: str = "2026-11-23T12:00:00Z") -> dict[str, Any]:
    """The receipt of the destination `seed` gave this correlation id (its own number: the
    ledger matches a receipt only to a destination with the number it names)."""
    number = f"4479110{CORRELATIONS.index(correlation) + 1:05d}" if correlation in CORRELATIONS else "447911000001"
    return {"deliveryInfoNotification": {
        "deliveryInfo": {"deliveryStatus": status, "code": "0", "timeStamp": stamp,
                         "destination": number},
        "transid": "t-" + correlation, "correlationid": correlation}}


def seed(state: Path) -> None:
    destinations = tuple(Destination(f"+4479110{i:05d}", c) for i, c in enumerate(CORRELATIONS, 1))
    with Ledger.open(state) as ledger:
        ledger.record_pending_many("camp", [Batch(key="batch-1", index=0, api="v2", body={}, destinations=destinations)])


def stored(state: Path) -> list[tuple[str, str, str]]:
    """What the ledger file holds, read by another connection after the answer came."""
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as connection:
        rows = connection.execute(
            "SELECT correlation_id, delivery_status, time_stamp FROM receipts ORDER BY receipt_id").fetchall()
    return [tuple(row) for row in rows]


@contextmanager
def listening(tmp_path: Path, token: str | None = TOKEN, path: str = "/receipts",
              body_timeout: float = 30.0) -> Iterator[tuple[str, Path]]:
    state = tmp_path / "state.db"
    seed(state)
    with Ledger.open(state) as ledger:
        listener = ReceiptListener(ledger, token=token, path=path, body_timeout=body_timeout)
        url = listener.start()
        try:
            yield url, state
        finally:
            listener.stop()
    assert listener.thread is not None and not listener.thread.is_alive()


BEARER = {"Authorization": f"Bearer {TOKEN}"}


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def server_logs() -> Iterator[list[logging.LogRecord]]:
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error", "campaign.receipts")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


# --- authentication -------------------------------------------------------------------


def test_unauthenticated_post_is_401_with_no_detail_and_stores_nothing(tmp_path: Path) -> None:
    with listening(tmp_path) as (url, state):
        answer = httpx.post(url, json=receipt("corr-1"))
        assert answer.status_code == 401
        assert answer.content == b""
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert stored(state) == []


@pytest.mark.parametrize("authorization", [
    "Bearer wrong-token-0123456789",
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN[:-1]}",
    "Bearer",
    TOKEN,
    f"Token {TOKEN}",
    "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode(),  # the token as user name, no password
    "Basic " + base64.b64encode(b"user:wrong").decode(),
    "Basic not-base64!",
])
def test_wrong_credentials_are_401_and_store_nothing(tmp_path: Path, authorization: str) -> None:
    with listening(tmp_path) as (url, state):
        answer = httpx.post(url, json=receipt("corr-1"), headers={"Authorization": authorization})
        assert answer.status_code == 401 and answer.content == b""
        assert stored(state) == []


def test_bearer_and_basic_auth_are_accepted_and_the_receipt_is_in_the_ledger_when_answered(tmp_path: Path) -> None:
    with listening(tmp_path) as (url, state):
        bearer = httpx.post(url, json=receipt("corr-1"), headers=BEARER)
        assert bearer.status_code == 200 and bearer.json() == {"matched": 1, "unmatched": 0}
        assert stored(state) == [("corr-1", "Delivered", "2026-11-23T12:00:00Z")]
        lower = httpx.post(url, json=receipt("corr-2"), headers={"Authorization": f"bearer {TOKEN}"})
        assert lower.status_code == 200
        basic = httpx.post(url, json=receipt("corr-3", status="Submitted"), auth=("vendor", TOKEN))
        assert basic.status_code == 200 and basic.json() == {"matched": 1, "unmatched": 0}
        assert stored(state) == [("corr-1", "Delivered", "2026-11-23T12:00:00Z"),
                                 ("corr-2", "Delivered", "2026-11-23T12:00:00Z"),
                                 ("corr-3", "Submitted", "2026-11-23T12:00:00Z")]


def test_a_repeated_receipt_is_acknowledged_and_stored_once(tmp_path: Path) -> None:
    with listening(tmp_path) as (url, state):
        for _ in range(3):
            assert httpx.post(url, json=receipt("corr-1"), headers=BEARER).status_code == 200
        assert stored(state) == [("corr-1", "Delivered", "2026-11-23T12:00:00Z")]


# --- routes, limits, bad bodies -------------------------------------------------------


def test_only_post_on_the_configured_path(tmp_path: Path) -> None:
    with listening(tmp_path, path="/hooks/wxc") as (url, state):
        assert url.endswith("/hooks/wxc")
        got = httpx.get(url, headers=BEARER)
        assert got.status_code == 405 and got.headers["allow"] == "POST"
        assert httpx.put(url, json=receipt("corr-1"), headers=BEARER).status_code == 405
        other = url.replace("/hooks/wxc", "/receipts")
        assert httpx.post(other, json=receipt("corr-1"), headers=BEARER).status_code == 404
        assert httpx.post(url + "/", json=receipt("corr-1"), headers=BEARER).status_code == 404
        assert stored(state) == []
        assert httpx.post(url, json=receipt("corr-1"), headers=BEARER).status_code == 200


def test_a_body_over_the_limit_is_413_by_length_and_while_streaming(tmp_path: Path) -> None:
    two_mib = b" " * (2 << 20)
    with listening(tmp_path) as (url, state):
        declared = httpx.post(url, content=two_mib, headers=BEARER)
        assert declared.status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(32):
                yield b" " * (64 << 10)

        streamed = httpx.post(url, content=chunks(), headers=BEARER)
        assert streamed.status_code == 413
        just_fits = json.dumps(receipt("corr-1")).encode().ljust(MAX_BODY_BYTES)
        assert httpx.post(url, content=just_fits, headers=BEARER).status_code == 200
        assert httpx.post(url, content=just_fits + b" ", headers=BEARER).status_code == 413
        assert stored(state) == [("corr-1", "Delivered", "2026-11-23T12:00:00Z")]


def test_a_chunked_post_is_accepted(tmp_path: Path) -> None:
    body = json.dumps([receipt("corr-1"), receipt("corr-2")]).encode()

    def chunks() -> Iterator[bytes]:
        yield body[:10]
        yield body[10:]

    with listening(tmp_path) as (url, state):
        request = httpx.Request("POST", url, content=chunks(), headers=BEARER)
        assert request.headers["transfer-encoding"] == "chunked"
        with httpx.Client() as client:
            answer = client.send(request)
        assert answer.status_code == 200 and answer.json() == {"matched": 2, "unmatched": 0}
        assert [row[0] for row in stored(state)] == ["corr-1", "corr-2"]


@pytest.mark.parametrize("body", [
    b"not json",
    b'{"deliveryInfoNotification": ',
    b"\xff\xfe",
    b"[" * 100_000,
    b'{"deliveryInfoNotification": {"deliveryInfo": {"destination": "\\ud83d"}, "correlationid": "corr-1"}}',
    b"[1, 2]",
])
def test_a_malformed_body_is_400_and_the_server_keeps_serving(tmp_path: Path, body: bytes) -> None:
    with server_logs() as records, listening(tmp_path) as (url, state):
        bad = httpx.post(url, content=body, headers=BEARER)
        assert bad.status_code == 400
        assert "Traceback" not in bad.text and bad.json()["error"].startswith("receipt is not")
        assert stored(state) == []
        assert httpx.post(url, json=receipt("corr-1"), headers=BEARER).status_code == 200
        assert len(stored(state)) == 1
    assert [r for r in records if r.exc_info or r.levelno >= logging.ERROR] == []


def test_a_client_that_hangs_up_mid_body_leaves_no_traceback_and_nothing_stored(tmp_path: Path) -> None:
    with server_logs() as records, listening(tmp_path) as (url, state):
        port = int(url.split(":")[2].split("/")[0])
        body = json.dumps(receipt("corr-1")).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"POST /receipts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                        + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:20])
        # the logs are read once the server has stopped, so after it handled the hang-up
        assert httpx.post(url, json=receipt("corr-2"), headers=BEARER).status_code == 200
        assert [row[0] for row in stored(state)] == ["corr-2"]
    assert [r for r in records if r.exc_info or r.levelno >= logging.ERROR] == []


def test_a_body_that_trickles_past_the_timeout_is_408_and_nothing_stored(tmp_path: Path) -> None:
    with listening(tmp_path, body_timeout=0.5) as (url, state):
        port = int(url.split(":")[2].split("/")[0])
        body = json.dumps(receipt("corr-1")).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"POST /receipts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                        + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:20])
            answer = raw.recv(4096)  # the rest never comes; the server answers on its own
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert stored(state) == []
        assert httpx.post(url, json=receipt("corr-2"), headers=BEARER).status_code == 200


# --- group commit and durability ------------------------------------------------------


def test_concurrent_posts_are_each_answered_with_their_own_outcome_and_all_stored(tmp_path: Path) -> None:
    """Many requests land in one group commit; each must still get its own tally."""
    answers: dict[int, httpx.Response] = {}

    def post(i: int, client: httpx.Client, url: str) -> None:
        body = [receipt(CORRELATIONS[i % 40], stamp=f"2026-11-23T12:{i // 60:02d}:{i % 60:02d}Z")]
        body += [receipt(f"nobody-{i}")] * (i % 3)  # 0..2 unknown correlation ids
        answers[i] = client.post(url, json=body, headers=BEARER)

    with listening(tmp_path) as (url, state), httpx.Client(limits=httpx.Limits(max_connections=64)) as client:
        threads = [threading.Thread(target=post, args=(i, client, url)) for i in range(120)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(answers) == list(range(120))
        for i, answer in answers.items():
            assert answer.status_code == 200
            assert answer.json() == {"matched": 1, "unmatched": i % 3}
        assert len(stored(state)) == 120


def test_a_ledger_that_cannot_commit_answers_503_and_no_traceback(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    seed(state)
    ledger = Ledger.open(state)
    listener = ReceiptListener(ledger, token=TOKEN)
    with server_logs() as records:
        url = listener.start()
        try:
            ledger.close()  # every commit now fails
            answer = httpx.post(url, json=receipt("corr-1"), headers=BEARER)
            assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        finally:
            listener.stop()
    assert stored(state) == []
    assert [r.exc_info for r in records] == [None] * len(records)
    assert any("cannot store a receipt" in r.getMessage() for r in records)


# --- starting it ----------------------------------------------------------------------


def test_listen_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    with pytest.raises(CampaignError) as refused:
        run_receipts_listen(ReceiptsListenSettings(state=tmp_path / "s.db", port=0), environ={},
                            ready=lambda url: pytest.fail("must not listen"))
    assert refused.value.exit_code is ExitCode.USAGE
    assert refused.value.hint is not None and "--no-auth" in refused.value.hint
    result = CliRunner().invoke(cli, ["receipts", "listen", "--state", str(tmp_path / "s.db"), "--port", "0"],
                                env={"CAMPAIGN_RECEIPTS_TOKEN": ""})
    assert result.exit_code == 2
    assert "no receipts token" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_no_auth_off_loopback_is_refused_even_with_a_token(tmp_path: Path, host: str) -> None:
    with pytest.raises(CampaignError) as refused:
        run_receipts_listen(ReceiptsListenSettings(state=tmp_path / "s.db", host=host, port=0, no_auth=True),
                            environ={"CAMPAIGN_RECEIPTS_TOKEN": TOKEN}, ready=lambda url: pytest.fail("listened"))
    assert refused.value.exit_code is ExitCode.USAGE and "--no-auth is refused" in refused.value.message
    result = CliRunner().invoke(cli, ["receipts", "listen", "--no-auth", "--host", host, "--port", "0",
                                      "--state", str(tmp_path / "s.db")])
    assert result.exit_code == 2


def test_the_token_comes_from_the_environment_or_a_regular_file_and_is_never_shown(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert receipts_token({"CAMPAIGN_RECEIPTS_TOKEN": TOKEN}) == TOKEN
    assert receipts_token({"CAMPAIGN_RECEIPTS_TOKEN_FILE": str(token_file)}) == TOKEN
    assert receipts_token({}) is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big"
    big.write_text("x" * 5000)
    short = "abc123"
    cases = [
        ({"CAMPAIGN_RECEIPTS_TOKEN": TOKEN, "CAMPAIGN_RECEIPTS_TOKEN_FILE": str(token_file)}, "both"),
        ({"CAMPAIGN_RECEIPTS_TOKEN_FILE": str(tmp_path)}, "not a regular file"),
        ({"CAMPAIGN_RECEIPTS_TOKEN_FILE": str(fifo)}, "not a regular file"),
        ({"CAMPAIGN_RECEIPTS_TOKEN_FILE": str(big)}, "larger than 4096 bytes"),
        ({"CAMPAIGN_RECEIPTS_TOKEN_FILE": str(tmp_path / "missing")}, "cannot read"),
        ({"CAMPAIGN_RECEIPTS_TOKEN": short}, "shorter than 16"),
        ({"CAMPAIGN_RECEIPTS_TOKEN": TOKEN[:10] + " " + TOKEN[10:]}, "space"),
    ]
    for environ, reason in cases:
        with pytest.raises(CampaignError) as refused:
            receipts_token(environ)
        assert reason in refused.value.message and refused.value.exit_code is ExitCode.USAGE
        assert TOKEN not in refused.value.message and short not in refused.value.message


def test_the_command_serves_on_loopback_without_auth_and_stops_on_sigint(tmp_path: Path) -> None:
    """The installed command end to end: the URL it prints, a receipt it commits, a clean stop."""
    state = tmp_path / "state.db"
    seed(state)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_RECEIPTS_")}
    proc = subprocess.Popen([sys.executable, "-c", "from runner.cli import main; main()", "receipts", "listen", "--no-auth", "--port", "0",
                             "--state", str(state)], stderr=subprocess.PIPE, text=True, env=environ,
                            cwd=tmp_path)
    try:
        assert proc.stderr is not None
        ready, _, _ = select.select([proc.stderr], [], [], 30)  # a timeout, so a hung start fails
        assert ready, "the listener printed nothing within 30 s"
        line = proc.stderr.readline()
        assert line.startswith("receipts listening on http://127.0.0.1:") and "no auth" in line
        url = line.split()[3]
        answer = httpx.post(url, json=receipt("corr-7"), timeout=10)
        assert answer.status_code == 200 and answer.json() == {"matched": 1, "unmatched": 0}
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in rest
    assert proc.returncode == 130
    assert stored(state) == [("corr-7", "Delivered", "2026-11-23T12:00:00Z")]


def test_a_taken_port_or_a_bad_path_is_a_usage_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CampaignError) as refused:
            run_receipts_listen(ReceiptsListenSettings(state=tmp_path / "s.db", port=port),
                                environ={"CAMPAIGN_RECEIPTS_TOKEN": TOKEN}, ready=lambda url: pytest.fail("listened"))
    assert refused.value.exit_code is ExitCode.USAGE and f"cannot listen on 127.0.0.1:{port}" in refused.value.message
    result = CliRunner().invoke(cli, ["receipts", "listen", "--path", "receipts", "--port", "0",
                                      "--state", str(tmp_path / "s.db")], env={"CAMPAIGN_RECEIPTS_TOKEN": TOKEN})
    assert result.exit_code == 2 and "--path must start with '/'" in result.output
