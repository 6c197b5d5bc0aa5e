"""The SQLite ledger that makes sending exactly-once across crashes and re-runs.

Every batch is recorded before it is sent, marked `in-flight` (durably, with
`synchronous=FULL`) before its request leaves, and marked with the answer after.
A batch left `in-flight` by a run that died is turned `uncertain` by the next run:
it may or may not have reached the vendor, and only an operator can say which.

Batch statuses and the transitions the ledger allows (anything else is a bug and
raises `CampaignError(exit_code=INTERNAL)`):

    pending   -> in-flight, failed
    in-flight -> in-flight (another attempt), accepted, failed, uncertain, pending
    failed    -> in-flight (a re-run tries it again)
    uncertain -> in-flight (an operator chose to resend), accepted, failed (reconciled)
    accepted  -> (terminal)

Destinations carry their batch's status. `record_pending` never downgrades a batch
it already knows. When the campaign is re-planned (`--allow-changes`), a destination
of a pending, failed or uncertain batch moves into the new batch that includes it (the
sender leaves uncertain ones out unless the operator asked to resend them); one whose
batch is accepted or in flight is refused, since that would send it twice. A batch
whose destinations have all moved is *superseded*: it keeps its status as history but
no longer counts in `summary().batches`, `failures` or `has_uncertain`.

Thread safety: one connection (`check_same_thread=False`) guarded by one
`threading.RLock`; every public method takes the lock and runs in its own
`BEGIN IMMEDIATE` transaction, so the sender's worker threads may call `mark_*`
concurrently. SQLite serialises writers anyway, so a connection per thread would
buy nothing but `database is locked` waits. Other processes (other campaigns
sharing the state file) are handled by WAL mode and a busy timeout.

No secret passes through this module: the ledger stores keys, statuses, vendor
codes and messages, message ids and receipts, never request headers or bodies.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from runner import vendor
from runner.errors import CampaignError, ExitCode
from runner.model import Batch

BatchStatus = Literal["pending", "in-flight", "accepted", "failed", "uncertain"]
STATUSES: Final[tuple[BatchStatus, ...]] = ("pending", "in-flight", "accepted", "failed", "uncertain")

SCHEMA_VERSION: Final = 1
BUSY_TIMEOUT_MS: Final = 30_000

# new status -> statuses it may be reached from
_ALLOWED_FROM: Final[dict[str, frozenset[str]]] = {
    "in-flight": frozenset({"pending", "in-flight", "failed", "uncertain"}),
    "accepted": frozenset({"in-flight", "uncertain"}),
    "failed": frozenset({"pending", "in-flight", "uncertain"}),
    "uncertain": frozenset({"in-flight"}),
    "pending": frozenset({"in-flight"}),
}

_SCHEMA: Final = """
CREATE TABLE campaigns (
    campaign_id  TEXT PRIMARY KEY,
    input_hash   TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

CREATE TABLE runs (
    run_id       TEXT PRIMARY KEY,
    campaign_id  TEXT NOT NULL REFERENCES campaigns(campaign_id),
    pid          INTEGER NOT NULL,
    hostname     TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    finished_at  TEXT
);
CREATE INDEX runs_by_campaign ON runs(campaign_id, started_at);

CREATE TABLE batches (
    batch_key           TEXT PRIMARY KEY,
    campaign_id         TEXT NOT NULL REFERENCES campaigns(campaign_id),
    batch_index         INTEGER NOT NULL,
    api                 TEXT NOT NULL CHECK (api IN ('v1', 'v2')),
    status              TEXT NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'in-flight', 'accepted', 'failed', 'uncertain')),
    attempts            INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    http_status         INTEGER,
    vendor_code         TEXT,
    vendor_message      TEXT,
    message_id          TEXT,
    destinations_count  INTEGER NOT NULL,
    run_id              TEXT REFERENCES runs(run_id),
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
CREATE INDEX batches_by_campaign ON batches(campaign_id, status);
CREATE INDEX batches_by_message_id ON batches(message_id) WHERE message_id IS NOT NULL;

CREATE TABLE destinations (
    campaign_id     TEXT NOT NULL,
    batch_key       TEXT NOT NULL REFERENCES batches(batch_key),
    msisdn          TEXT NOT NULL,
    correlation_id  TEXT NOT NULL,
    status          TEXT NOT NULL
                    CHECK (status IN ('pending', 'in-flight', 'accepted', 'failed', 'uncertain')),
    UNIQUE (campaign_id, msisdn, correlation_id)
);
CREATE INDEX destinations_by_batch ON destinations(batch_key);
CREATE INDEX destinations_by_correlation ON destinations(correlation_id);

CREATE TABLE receipts (
    receipt_id       INTEGER PRIMARY KEY,
    campaign_id      TEXT NOT NULL REFERENCES campaigns(campaign_id),
    batch_key        TEXT,
    correlation_id   TEXT NOT NULL DEFAULT '',
    msisdn           TEXT NOT NULL DEFAULT '',
    transid          TEXT NOT NULL DEFAULT '',
    delivery_status  TEXT NOT NULL DEFAULT '',
    code             TEXT NOT NULL DEFAULT '',
    description      TEXT NOT NULL DEFAULT '',
    time_stamp       TEXT NOT NULL DEFAULT '',
    received_at      TEXT NOT NULL,
    -- the vendor may deliver the same webhook twice
    UNIQUE (campaign_id, correlation_id, msisdn, transid, delivery_status, code, time_stamp)
);
CREATE INDEX receipts_by_campaign ON receipts(campaign_id, delivery_status);
"""

# version -> statements that bring a database at version-1 to it (1 is the base schema)
_MIGRATIONS: Final[dict[int, str]] = {1: _SCHEMA}

# a batch `b` still holds destinations (is not superseded by a re-plan)
_LIVE: Final = "(b.destinations_count = 0 OR EXISTS (SELECT 1 FROM destinations d WHERE d.batch_key = b.batch_key))"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _one_line(text: str, limit: int = 1000) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _digits(msisdn: str) -> str:
    return "".join(ch for ch in msisdn if ch.isdigit())


@dataclass(frozen=True)
class FailureGroup:
    """Failed batches that share a vendor code and message."""

    code: str | None
    message: str
    batches: int
    destinations: int


@dataclass(frozen=True)
class BatchRecord:
    batch_key: str
    campaign_id: str
    batch_index: int
    api: str
    status: str
    attempts: int
    http_status: int | None
    vendor_code: str | None
    vendor_message: str | None
    message_id: str | None
    destinations_count: int
    run_id: str | None
    updated_at: str
    superseded: bool  # all its destinations moved to newer batches


@dataclass(frozen=True)
class LedgerSummary:
    campaign_id: str
    input_hash: str | None
    batches: Mapping[str, int]  # every status, zeros included; superseded batches left out
    destinations: Mapping[str, int]  # every status, zeros included
    failures: tuple[FailureGroup, ...]  # failed batches by (code, message), largest first
    receipts: Mapping[str, int]  # receipts stored, by deliveryStatus as the vendor wrote it
    attempts: int  # requests started, over all batches and runs
    runs: int
    first_run_started_at: str | None
    last_run_started_at: str | None
    last_run_finished_at: str | None  # of the last run; None if it is running or died
    superseded: int = 0  # batches whose destinations all moved to newer batches

    @property
    def total_batches(self) -> int:
        return sum(self.batches.values())

    @property
    def total_destinations(self) -> int:
        return sum(self.destinations.values())


@dataclass
class _State:
    connection: sqlite3.Connection | None
    own_runs: set[str] = field(default_factory=set)
    grouped: bool = False  # inside `group()`: writes join its transaction


class Ledger:
    """The state database of one or more campaigns. Open with `Ledger.open(path)`."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._joining = False  # set only by record_receipts, under the lock
        self._state = _State(connection)

    # --- opening and closing ------------------------------------------------------

    @classmethod
    def open(cls, path: Path) -> Ledger:
        """Open (creating if needed) the ledger at `path` and bring its schema up to date."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CampaignError(
                f"cannot create the state directory {path.parent}: {exc.strerror or exc}",
                exit_code=ExitCode.USAGE,
                hint="choose a writable --state path",
            ) from exc
        try:
            connection = sqlite3.connect(
                str(path),
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
                check_same_thread=False,  # shared by the sender's threads under self._lock
            )
        except sqlite3.Error as exc:
            raise CampaignError(
                f"cannot open the state database {path}: {exc}",
                exit_code=ExitCode.USAGE,
                hint="choose a writable --state path",
            ) from exc
        try:
            cls._configure(connection)
            cls._migrate(connection, path)
        except sqlite3.DatabaseError as exc:
            connection.close()
            raise CampaignError(
                f"{path} is not a usable campaign-runner state database: {exc}",
                exit_code=ExitCode.USAGE,
                hint="point --state at the right file, or move this one away",
            ) from exc
        except BaseException:
            connection.close()
            raise
        return cls(path, connection)

    @staticmethod
    def _configure(connection: sqlite3.Connection) -> None:
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"cannot switch to WAL journal mode (got {mode})")
        # FULL: every commit (notably in-flight and accepted) is fsynced before it returns,
        # so a batch is durably in-flight before its request leaves, even across power loss.
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")

    @staticmethod
    def _migrate(connection: sqlite3.Connection, path: Path) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = int(connection.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise CampaignError(
                    f"{path} was written by a newer campaign-runner (schema {version}, "
                    f"this one knows {SCHEMA_VERSION})",
                    exit_code=ExitCode.USAGE,
                    hint="upgrade campaign-runner",
                )
            if version == 0 and connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise sqlite3.DatabaseError("it has tables but no campaign-runner schema version")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {target}")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            connection, self._state.connection = self._state.connection, None
            if connection is not None:
                connection.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- transactions -------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        connection = self._state.connection
        if connection is None:
            raise CampaignError("ledger: used after close()", exit_code=ExitCode.INTERNAL)
        return connection

    @contextmanager
    def group(self) -> Iterator[None]:
        """Writes made inside (by this thread: it holds the lock) share one transaction,
        so one fsync: group commit for a sender with many requests in flight. All or none."""
        with self._write():
            self._state.grouped = True
            try:
                yield
            finally:
                self._state.grouped = False

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            connection = self._connection()
            if self._joining or self._state.grouped:  # inside record_receipts' or group()'s one transaction
                yield connection
                return
            # Everything from BEGIN to COMMIT sits inside the try: an interrupt (Ctrl-C,
            # SIGTERM) landing anywhere in between must not leave a transaction open.
            try:
                connection.execute("BEGIN IMMEDIATE")
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.rollback()
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            connection = self._connection()
            try:
                connection.execute("BEGIN")  # one consistent snapshot for multi-query reads
                yield connection
            finally:
                if connection.in_transaction:
                    connection.rollback()  # nothing was written: ending the snapshot is enough

    @staticmethod
    def _ensure_campaign(connection: sqlite3.Connection, campaign_id: str, now: str) -> None:
        connection.execute(
            "INSERT INTO campaigns(campaign_id, input_hash, created_at, updated_at) "
            "VALUES (?, NULL, ?, ?) ON CONFLICT(campaign_id) DO NOTHING",
            (campaign_id, now, now),
        )

    # --- campaigns and runs -------------------------------------------------------

    def campaign_hash(self, campaign_id: str) -> str | None:
        with self._read() as connection:
            row = connection.execute(
                "SELECT input_hash FROM campaigns WHERE campaign_id = ?", (campaign_id,)
            ).fetchone()
        return None if row is None else row[0]

    def set_campaign_hash(self, campaign_id: str, input_hash: str) -> None:
        now = _now()
        with self._write() as connection:
            connection.execute(
                "INSERT INTO campaigns(campaign_id, input_hash, created_at, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(campaign_id) DO UPDATE SET input_hash = excluded.input_hash, "
                "updated_at = excluded.updated_at",
                (campaign_id, input_hash, now, now),
            )

    def begin_run(self, campaign_id: str) -> str:
        """Record a run of this process; returns its id (stored on each batch it sends)."""
        run_id = uuid.uuid4().hex
        now = _now()
        with self._write() as connection:
            self._ensure_campaign(connection, campaign_id, now)
            connection.execute(
                "INSERT INTO runs(run_id, campaign_id, pid, hostname, started_at) VALUES (?, ?, ?, ?, ?)",
                (run_id, campaign_id, os.getpid(), socket.gethostname(), now),
            )
            self._state.own_runs.add(run_id)
        return run_id

    def finish_run(self, run_id: str) -> None:
        with self._write() as connection:
            connection.execute("UPDATE runs SET finished_at = ? WHERE run_id = ?", (_now(), run_id))

    def mark_dead_in_flight_uncertain(self, campaign_id: str) -> int:
        """Turn batches left `in-flight` by other (dead) runs into `uncertain`; returns how many.

        Call it while holding `acquire_lock` for the campaign: the lock is what proves
        no other live process is sending it.
        """
        now = _now()
        with self._write() as connection:
            own = sorted(self._state.own_runs)
            marks = ",".join("?" * len(own))
            exclude = f"AND (b.run_id IS NULL OR b.run_id NOT IN ({marks}))" if own else ""
            rows = connection.execute(
                "SELECT b.batch_key, b.run_id, r.pid, r.started_at FROM batches b "
                "LEFT JOIN runs r ON r.run_id = b.run_id "
                f"WHERE b.campaign_id = ? AND b.status = 'in-flight' {exclude}",
                (campaign_id, *own),
            ).fetchall()
            for batch_key, run_id, pid, started_at in rows:
                who = f"run {run_id} (pid {pid}, started {started_at})" if run_id else "an earlier run"
                reason = f"{who} ended while this batch was in flight; the vendor may or may not have it"
                self._set_status(connection, batch_key, "uncertain", now, vendor_message=reason)
        return len(rows)

    # --- batches ------------------------------------------------------------------

    def record_pending(self, campaign_id: str, batch: Batch) -> None:
        """Record `batch` and its destinations as pending, unless the batch is already known.

        A known batch is left exactly as it is (never downgraded). A destination that sits
        in another batch which is pending, failed or uncertain moves to this one (the
        caller decides whether uncertain destinations are resent by including them or
        not); one whose batch is accepted or in flight makes this raise (`REFUSED`) and
        records nothing, since sending it again would deliver it twice.
        """
        self.record_pending_many(campaign_id, (batch,))

    def record_pending_many(self, campaign_id: str, batches: Iterable[Batch]) -> None:
        """`record_pending` for many batches in one transaction."""
        now = _now()
        with self._write() as connection:
            self._ensure_campaign(connection, campaign_id, now)
            for batch in batches:
                self._insert_batch(connection, campaign_id, batch, now)

    @staticmethod
    def _insert_batch(connection: sqlite3.Connection, campaign_id: str, batch: Batch, now: str) -> None:
        known = connection.execute(
            "SELECT campaign_id FROM batches WHERE batch_key = ?", (batch.key,)
        ).fetchone()
        if known is not None:
            if known[0] != campaign_id:
                raise CampaignError(
                    f"ledger: batch key {batch.key} already belongs to campaign '{known[0]}'",
                    exit_code=ExitCode.INTERNAL,
                )
            return
        unique = {(d.msisdn, d.correlation_id) for d in batch.destinations}
        connection.execute(
            "INSERT INTO batches(batch_key, campaign_id, batch_index, api, status, destinations_count, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
            (batch.key, campaign_id, batch.index, batch.api, len(unique), now, now),
        )
        connection.executemany(
            "INSERT INTO destinations(campaign_id, batch_key, msisdn, correlation_id, status) "
            "VALUES (?, ?, ?, ?, 'pending') "
            "ON CONFLICT(campaign_id, msisdn, correlation_id) DO UPDATE "
            "SET batch_key = excluded.batch_key, status = 'pending' "
            "WHERE destinations.status IN ('pending', 'failed', 'uncertain')",
            ((campaign_id, batch.key, msisdn, correlation_id) for msisdn, correlation_id in unique),
        )
        held = connection.execute(
            "SELECT count(*) FROM destinations WHERE batch_key = ?", (batch.key,)
        ).fetchone()[0]
        if held != len(unique):
            examples: list[str] = []
            for msisdn, correlation_id in sorted(unique):
                row = connection.execute(
                    "SELECT batch_key, status FROM destinations "
                    "WHERE campaign_id = ? AND msisdn = ? AND correlation_id = ?",
                    (campaign_id, msisdn, correlation_id),
                ).fetchone()
                if row is not None and row[0] != batch.key:
                    examples.append(f"{msisdn} ({correlation_id}) is {row[1]} in batch {row[0]}")
                    if len(examples) == 3:
                        break
            raise CampaignError(
                f"ledger: {len(unique) - held} destination(s) of batch {batch.key} are already "
                f"accepted or in flight in another batch: {'; '.join(examples)}",
                exit_code=ExitCode.REFUSED,
                hint="leave out destinations the ledger has accepted (see accepted_destinations)",
            )
        # pending batches (never attempted) whose destinations all moved here are dropped
        connection.execute(
            "DELETE FROM batches WHERE campaign_id = ? AND status = 'pending' AND attempts = 0 "
            "AND destinations_count > 0 AND batch_key != ? AND NOT EXISTS "
            "(SELECT 1 FROM destinations d WHERE d.batch_key = batches.batch_key)",
            (campaign_id, batch.key),
        )

    def _set_status(
        self,
        connection: sqlite3.Connection,
        batch_key: str,
        status: BatchStatus,
        now: str,
        **columns: Any,
    ) -> None:
        row = connection.execute("SELECT status FROM batches WHERE batch_key = ?", (batch_key,)).fetchone()
        if row is None:
            raise CampaignError(f"ledger: unknown batch {batch_key}", exit_code=ExitCode.INTERNAL)
        if row[0] not in _ALLOWED_FROM[status]:
            raise CampaignError(
                f"ledger: batch {batch_key} cannot go from {row[0]} to {status}",
                exit_code=ExitCode.INTERNAL,
            )
        assignments = "".join(f", {name} = ?" for name in columns)
        connection.execute(
            f"UPDATE batches SET status = ?, updated_at = ?{assignments} WHERE batch_key = ?",
            (status, now, *columns.values(), batch_key),
        )
        connection.execute("UPDATE destinations SET status = ? WHERE batch_key = ?", (status, batch_key))

    def mark_in_flight(self, batch_key: str, run_id: str) -> None:
        """Count an attempt and make `in-flight` durable; call it right before the request leaves."""
        with self._write() as connection:
            self._set_status(connection, batch_key, "in-flight", _now(), run_id=run_id)
            connection.execute("UPDATE batches SET attempts = attempts + 1 WHERE batch_key = ?", (batch_key,))

    def mark_accepted(self, batch_key: str, *, http_status: int, message_id: str | None) -> None:
        with self._write() as connection:
            self._set_status(
                connection,
                batch_key,
                "accepted",
                _now(),
                http_status=http_status,
                message_id=message_id,
                vendor_code=None,
                vendor_message=None,
            )

    def mark_failed(self, batch_key: str, *, http_status: int | None, code: str | None, message: str) -> None:
        with self._write() as connection:
            self._set_status(
                connection,
                batch_key,
                "failed",
                _now(),
                http_status=http_status,
                vendor_code=code,
                vendor_message=_one_line(message),
            )

    def mark_uncertain(self, batch_key: str, *, reason: str) -> None:
        with self._write() as connection:
            self._set_status(connection, batch_key, "uncertain", _now(), vendor_message=_one_line(reason))

    def mark_pending(
        self, batch_key: str, *, http_status: int | None, code: str | None, message: str
    ) -> None:
        """Put an in-flight batch back to pending after an answer proving it was not taken
        (e.g. connection refused), keeping the answer; the next run sends it again."""
        with self._write() as connection:
            self._set_status(
                connection,
                batch_key,
                "pending",
                _now(),
                http_status=http_status,
                vendor_code=code,
                vendor_message=_one_line(message),
            )

    def batch_status(self, batch_key: str) -> str | None:
        with self._read() as connection:
            row = connection.execute("SELECT status FROM batches WHERE batch_key = ?", (batch_key,)).fetchone()
        return None if row is None else str(row[0])

    def batch_statuses(self, batch_keys: Sequence[str]) -> dict[str, str]:
        """`batch_status` of many batches in one read (known ones only): the sender asks
        once per group instead of once per request, each waiting for the ledger's lock."""
        found: dict[str, str] = {}
        with self._read() as connection:
            for start in range(0, len(batch_keys), 500):  # under SQLite's bound-parameter limit
                part = batch_keys[start:start + 500]
                found.update((str(key), str(status)) for key, status in connection.execute(
                    f"SELECT batch_key, status FROM batches WHERE batch_key IN ({','.join('?' * len(part))})", part))
        return found

    _RECORD_COLUMNS: Final = (
        "b.batch_key, b.campaign_id, b.batch_index, b.api, b.status, b.attempts, b.http_status, "
        f"b.vendor_code, b.vendor_message, b.message_id, b.destinations_count, b.run_id, b.updated_at, NOT {_LIVE}"
    )

    @staticmethod
    def _record(row: tuple[Any, ...]) -> BatchRecord:
        (batch_key, campaign_id, batch_index, api, status, attempts, http_status, vendor_code,
         vendor_message, message_id, destinations_count, run_id, updated_at, superseded) = row
        return BatchRecord(
            batch_key=batch_key,
            campaign_id=campaign_id,
            batch_index=batch_index,
            api=api,
            status=status,
            attempts=attempts,
            http_status=http_status,
            vendor_code=vendor_code,
            vendor_message=vendor_message,
            message_id=message_id,
            destinations_count=destinations_count,
            run_id=run_id,
            updated_at=updated_at,
            superseded=bool(superseded),
        )

    def batch_record(self, batch_key: str) -> BatchRecord | None:
        with self._read() as connection:
            row = connection.execute(
                f"SELECT {self._RECORD_COLUMNS} FROM batches b WHERE b.batch_key = ?", (batch_key,)
            ).fetchone()
        return None if row is None else self._record(row)

    def batch_records(
        self, campaign_id: str, status: str | None = None, *, include_superseded: bool = False
    ) -> list[BatchRecord]:
        """The campaign's batches in batch_index order, optionally only those with `status`."""
        query = f"SELECT {self._RECORD_COLUMNS} FROM batches b WHERE b.campaign_id = ?"
        params: tuple[str, ...] = (campaign_id,)
        if status is not None:
            query += " AND b.status = ?"
            params += (status,)
        if not include_superseded:
            query += f" AND {_LIVE}"
        with self._read() as connection:
            rows = connection.execute(query + " ORDER BY b.batch_index, b.batch_key", params).fetchall()
        return [self._record(row) for row in rows]

    def has_uncertain(self, campaign_id: str) -> bool:
        """Whether a batch of the campaign (not superseded) may or may not have been sent."""
        with self._read() as connection:
            row = connection.execute(
                f"SELECT 1 FROM batches b WHERE b.campaign_id = ? AND b.status = 'uncertain' AND {_LIVE} LIMIT 1",
                (campaign_id,),
            ).fetchone()
        return row is not None

    # --- destinations -------------------------------------------------------------

    def accepted_destinations(self, campaign_id: str) -> set[tuple[str, str]]:
        """(msisdn, correlation_id) pairs the vendor has accepted for this campaign."""
        with self._read() as connection:
            rows = connection.execute(
                "SELECT msisdn, correlation_id FROM destinations WHERE campaign_id = ? AND status = 'accepted'",
                (campaign_id,),
            ).fetchall()
        return {(str(msisdn), str(correlation_id)) for msisdn, correlation_id in rows}

    def accepted_msisdns(self, campaign_id: str) -> set[str]:
        return self.msisdns_with_status(campaign_id, "accepted")

    def msisdns_with_status(self, campaign_id: str, status: str) -> set[str]:
        """Numbers of the campaign whose destination (batch) has `status`."""
        if status not in STATUSES:
            raise CampaignError(f"ledger: unknown status {status!r}", exit_code=ExitCode.INTERNAL)
        with self._read() as connection:
            rows = connection.execute(
                "SELECT DISTINCT msisdn FROM destinations WHERE campaign_id = ? AND status = ?",
                (campaign_id, status),
            ).fetchall()
        return {str(row[0]) for row in rows}

    # --- receipts -----------------------------------------------------------------

    def record_receipt(self, campaign_id: str | None, receipt: Mapping[str, Any]) -> bool:
        """Store one delivery receipt (the parsed webhook JSON, with or without its
        `deliveryInfoNotification` envelope). It is matched to a destination by
        `correlationid` (narrowed by the destination number when several share it),
        else by `transid` = the batch's messageId (UNCONFIRMED vendor fact).
        Returns False, storing nothing, when it matches no destination or is ambiguous.
        A receipt already stored (the vendor retried the webhook) is not stored twice.
        """
        fields = _receipt_fields(receipt)
        correlation_id = fields["correlationid"]
        transid = fields["transid"]
        number = _digits(fields["destination"])
        with self._write() as connection:
            candidates: list[tuple[str, str, str, str]] = []
            if correlation_id:
                query = (
                    "SELECT campaign_id, batch_key, msisdn, correlation_id FROM destinations "
                    "WHERE correlation_id = ?"
                )
                params: tuple[str, ...] = (correlation_id,)
                if campaign_id is not None:
                    query += " AND campaign_id = ?"
                    params += (campaign_id,)
                candidates = connection.execute(query, params).fetchall()
            if not candidates and transid:
                query = (
                    "SELECT d.campaign_id, d.batch_key, d.msisdn, d.correlation_id FROM batches b "
                    "JOIN destinations d ON d.batch_key = b.batch_key WHERE b.message_id = ?"
                )
                params = (transid,)
                if campaign_id is not None:
                    query += " AND b.campaign_id = ?"
                    params += (campaign_id,)
                candidates = connection.execute(query, params).fetchall()
            if len(candidates) > 1 and number:
                candidates = [row for row in candidates if _digits(row[2]) == number] or candidates
            if not candidates or len({row[0] for row in candidates}) != 1:
                return False
            matched_campaign = candidates[0][0]
            batch_key: str | None
            if len(candidates) == 1:
                _, batch_key, msisdn, matched_correlation = candidates[0]
            else:  # one request (one messageId) for several destinations, no number to tell them apart
                keys = {row[1] for row in candidates}
                batch_key = candidates[0][1] if len(keys) == 1 else None
                msisdn, matched_correlation = fields["destination"], correlation_id
            connection.execute(
                "INSERT INTO receipts(campaign_id, batch_key, correlation_id, msisdn, transid, delivery_status, "
                "code, description, time_stamp, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (
                    matched_campaign,
                    batch_key,
                    matched_correlation,
                    msisdn,
                    transid,
                    fields["deliverystatus"],
                    fields["code"],
                    fields["description"],
                    fields["timestamp"],
                    _now(),
                ),
            )
        return True

    def record_receipts(self, receipts: Iterable[Mapping[str, Any]]) -> list[bool]:
        """`record_receipt(None, r)` for each, in one transaction: the receipts listener's
        group commit, one fsync for every receipt that arrived together."""
        with self._write():
            self._joining = True
            try:
                return [self.record_receipt(None, receipt) for receipt in receipts]
            finally:
                self._joining = False

    # --- summary ------------------------------------------------------------------

    def summary(self, campaign_id: str) -> LedgerSummary:
        with self._read() as connection:
            campaign = connection.execute(
                "SELECT input_hash FROM campaigns WHERE campaign_id = ?", (campaign_id,)
            ).fetchone()
            batches: dict[str, int] = dict.fromkeys(STATUSES, 0)
            attempts = superseded = 0
            for status, live, count, tries in connection.execute(
                f"SELECT b.status, {_LIVE} AS live, count(*), sum(b.attempts) FROM batches b "
                "WHERE b.campaign_id = ? GROUP BY b.status, live",
                (campaign_id,),
            ):
                if live:
                    batches[status] += int(count)
                else:
                    superseded += int(count)
                attempts += int(tries or 0)
            destinations: dict[str, int] = dict.fromkeys(STATUSES, 0)
            for status, count in connection.execute(
                "SELECT status, count(*) FROM destinations WHERE campaign_id = ? GROUP BY status",
                (campaign_id,),
            ):
                destinations[status] = int(count)
            failures = tuple(
                FailureGroup(code, message or "", int(n_batches), int(n_destinations or 0))
                for code, message, n_batches, n_destinations in connection.execute(
                    "SELECT b.vendor_code, b.vendor_message, count(*), sum("
                    "  (SELECT count(*) FROM destinations d WHERE d.batch_key = b.batch_key)) "
                    f"FROM batches b WHERE b.campaign_id = ? AND b.status = 'failed' AND {_LIVE} "
                    "GROUP BY b.vendor_code, b.vendor_message "
                    "ORDER BY count(*) DESC, b.vendor_code, b.vendor_message",
                    (campaign_id,),
                )
            )
            receipts = {
                str(status): int(count)
                for status, count in connection.execute(
                    "SELECT delivery_status, count(*) FROM receipts WHERE campaign_id = ? "
                    "GROUP BY delivery_status ORDER BY delivery_status",
                    (campaign_id,),
                )
            }
            n_runs, first_started = connection.execute(
                "SELECT count(*), min(started_at) FROM runs WHERE campaign_id = ?", (campaign_id,)
            ).fetchone()
            last = connection.execute(
                "SELECT started_at, finished_at FROM runs WHERE campaign_id = ? "
                "ORDER BY started_at DESC, rowid DESC LIMIT 1",
                (campaign_id,),
            ).fetchone()
        return LedgerSummary(
            campaign_id=campaign_id,
            input_hash=None if campaign is None else campaign[0],
            batches=MappingProxyType(batches),
            destinations=MappingProxyType(destinations),
            failures=failures,
            receipts=MappingProxyType(receipts),
            attempts=attempts,
            runs=int(n_runs),
            first_run_started_at=first_started,
            last_run_started_at=None if last is None else last[0],
            last_run_finished_at=None if last is None else last[1],
            superseded=superseded,
        )


def _receipt_fields(receipt: Mapping[str, Any]) -> dict[str, str]:
    """The receipt's fields as strings, keys lower-cased (the vendor mixes `Description`
    with `correlationid`), from the envelope or the bare notification."""

    def lowered(value: Any) -> dict[str, Any]:
        return {str(k).lower(): v for k, v in value.items()} if isinstance(value, Mapping) else {}

    top = lowered(receipt)
    envelope = top.get(vendor.RECEIPT_ENVELOPE.lower())
    notification = lowered(envelope) if envelope is not None else top
    info = lowered(notification.get("deliveryinfo"))

    def text(value: Any) -> str:
        return "" if value is None or isinstance(value, (Mapping, list)) else str(value).strip()

    return {
        "correlationid": text(notification.get("correlationid")),
        "transid": text(notification.get("transid")),
        "destination": text(info.get("destination")),
        "deliverystatus": text(info.get("deliverystatus")),
        "code": text(info.get("code")),
        "description": text(info.get("description")),
        "timestamp": text(info.get("timestamp")),
    }


# --- the per-campaign apply lock -------------------------------------------------------

_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")


def lock_path(state_path: Path, campaign_id: str) -> Path:
    """`<state>.<campaign_id>.lock` beside the state database (the id hashed if unsafe as a name)."""
    name = campaign_id
    if not _SAFE_ID.fullmatch(campaign_id) or campaign_id.startswith("."):
        digest = hashlib.sha256(campaign_id.encode()).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9_-]", "_", campaign_id)[:40] + "-" + digest
    state_path = Path(state_path)
    return state_path.with_name(f"{state_path.name}.{name}.lock")


@contextmanager
def acquire_lock(state_path: Path, campaign_id: str) -> Iterator[None]:
    """Hold an exclusive OS lock (flock) on the campaign for the duration of the block.

    The kernel releases it when the holder exits in any way, kill -9 included, so a
    stale lock file is harmless and never needs deleting. Not re-entrant: a second
    acquire, even from the same process, is refused.
    """
    path = lock_path(state_path, campaign_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        raise CampaignError(
            f"cannot create the lock file {path}: {exc.strerror or exc}",
            exit_code=ExitCode.USAGE,
            hint="choose a writable --state path",
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            pid = holder if holder.isdigit() else "unknown"
            raise CampaignError(
                f"campaign '{campaign_id}' is being applied by another process (pid {pid})",
                exit_code=ExitCode.REFUSED,
                hint=f"wait for it to finish; the lock ({path}) is released as soon as that process "
                "exits, even if killed, so there is nothing to delete",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
