"""The sender's group committer: an answer's record is not waited for, but never lost
silently, and an `in-flight` mark is durable before `write` returns."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

import pytest

from runner.errors import CampaignError
from runner.ledger import Ledger
from runner.model import Batch, Destination
from runner.send import GroupCommitter


def make_batch(key: str) -> Batch:
    return Batch(index=0, key=key, api="v2", destinations=(Destination("+447400000001", "cr-1"),),
                 body={"channel": "sms"})


def stored_status(path: Path, key: str) -> str:
    with sqlite3.connect(path) as connection:
        return str(connection.execute("SELECT status FROM batches WHERE batch_key = ?", (key,)).fetchone()[0])


def test_an_in_flight_mark_is_committed_when_write_returns(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Ledger.open(path) as ledger:
        ledger.record_pending("c", make_batch("k1"))
        committer = GroupCommitter(ledger)
        committer.write(functools.partial(ledger.mark_in_flight, "k1", ledger.begin_run("c")))
        assert stored_status(path, "k1") == "in-flight"  # read through another connection
        committer.close()


def test_an_unwaited_answer_record_is_committed_by_close(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Ledger.open(path) as ledger:
        ledger.record_pending("c", make_batch("k1"))
        ledger.mark_in_flight("k1", ledger.begin_run("c"))
        committer = GroupCommitter(ledger)
        committer.write(functools.partial(ledger.mark_accepted, "k1", http_status=201, message_id="m1"), wait=False)
        committer.close()
        assert stored_status(path, "k1") == "accepted"


def test_a_failed_unwaited_write_is_raised_by_the_next_write_and_by_close(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "state.db") as ledger:
        committer = GroupCommitter(ledger)
        # an unknown batch: the ledger refuses the change
        committer.write(functools.partial(ledger.mark_accepted, "nope", http_status=201, message_id=None),
                        wait=False)
        with pytest.raises(CampaignError, match="unknown batch nope"):
            committer.close()
        committer = GroupCommitter(ledger)
        committer.write(functools.partial(ledger.mark_accepted, "nope", http_status=201, message_id=None),
                        wait=False)
        committer.write(lambda: None)  # committed after the failed one: its failure is known now
        with pytest.raises(CampaignError, match="unknown batch nope"):
            committer.write(lambda: None)
        with pytest.raises(CampaignError, match="unknown batch nope"):
            committer.close()
