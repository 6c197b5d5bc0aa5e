"""The ledger that makes sending exactly-once across crashes, re-runs and machines.

Every batch is recorded before it is sent, marked `in-flight` (durably) before its
request leaves, and marked with the answer after. A batch left `in-flight` by a run
that died is turned `uncertain` by the next run: it may or may not have reached the
vendor, and only an operator can say which.

Two backends keep the same contract: an embedded SQLite file (`sqlite.py`, the
default) and a shared PostgreSQL database (`postgres.py`) for teams and CI runners.
This module holds the contract and every query; a backend only opens connections,
runs migrations, translates the few words SQL dialects disagree on (`Dialect`) and
provides the apply lock. `open_ledger(state)` picks the backend from the state string.

Everything is keyed by (environment, campaign id): the same campaign applied to a
staging and a production tenant is sent once to each. A `Ledger` object is bound to
one environment (`open_ledger(..., environment=NAME)`), so its methods keep the
campaign-only signatures the sender uses.

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

Thread safety: one connection guarded by one `threading.RLock`; every public method
takes the lock and runs in its own transaction, so the sender's worker threads may
call `mark_*` concurrently.

Storage errors (a corrupt or read-only file, a lost server) become `CampaignError`:
exit 2 before this ledger started a run, exit 3 after (handled like a crash: batches
in flight are turned uncertain by the next run, never resent blindly).

No secret passes through this module: the ledger stores keys, statuses, vendor
codes and messages, message ids and receipts, never request headers or bodies.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from runner import vendor
from runner.errors import CampaignError, ExitCode
from runner.model import Batch

from .schema import SCHEMA, SCHEMA_VERSION

BatchStatus = Literal["pending", "in-flight", "accepted", "failed", "uncertain"]
STATUSES: Final[tuple[BatchStatus, ...]] = ("pending", "in-flight", "accepted", "failed", "uncertain")

DEFAULT_ENVIRONMENT: Final = "default"
ENVIRONMENT_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# new status -> statuses it may be reached from
_ALLOWED_FROM: Final[dict[str, frozenset[str]]] = {
    "in-flight": frozenset({"pending", "in-flight", "failed", "uncertain"}),
    "accepted": frozenset({"in-flight", "uncertain"}),
    "failed": frozenset({"pending", "in-flight", "uncertain"}),
    "uncertain": frozenset({"in-flight"}),
    "pending": frozenset({"in-flight"}),
}

# a batch `b` still holds destinations (is not superseded by a re-plan)
_LIVE: Final = (
    "(b.destinations_count = 0 OR EXISTS (SELECT 1 FROM destinations d "
    "WHERE d.environment = b.environment AND d.batch_key = b.batch_key))"
)
_RECEIPT_COLUMNS: Final = "correlation_id, msisdn, transid, delivery_status, code, description, time_stamp"


_INCREMENT: Final = object()  # a `_set_status` column value: add one to the column
_DECREMENT: Final = object()  # ... take one away


def now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _one_line(text: str, limit: int = 1000) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _digits(msisdn: str) -> str:
    return "".join(ch for ch in msisdn if ch.isdigit())


# --- naming the state -----------------------------------------------------------------


def is_postgres_url(state: str | Path) -> bool:
    return isinstance(state, str) and state.split(":", 1)[0].lower() in ("postgresql", "postgres")


def mask_state(state: str | Path) -> str:
    """The state as it may be printed: a URL's password (in the user part or as a
    `password=` parameter) replaced by `***`."""
    if not is_postgres_url(state):
        return str(state)
    parts = urlsplit(str(state))
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        if ":" in user:
            user = user.split(":", 1)[0] + ":***"
        netloc = f"{user}@{host}"
    query = parts.query
    if query:
        pairs = [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="/*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def check_environment_name(environment: str) -> str:
    if not ENVIRONMENT_PATTERN.fullmatch(environment):
        raise CampaignError(
            f"invalid environment name {environment!r}",
            exit_code=ExitCode.USAGE,
            hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return environment


# --- data -------------------------------------------------------------------------------


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
class ReceiptCount:
    """Receipts of one delivery status and code, and how many destinations they cover."""

    delivery_status: str
    code: str
    receipts: int
    destinations: int


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
    environment: str = DEFAULT_ENVIRONMENT
    receipt_codes: tuple[ReceiptCount, ...] = ()  # by (deliveryStatus, code), for the funnel

    @property
    def total_batches(self) -> int:
        return sum(self.batches.values())

    @property
    def total_destinations(self) -> int:
        return sum(self.destinations.values())

    @property
    def known(self) -> bool:
        """Whether the ledger has anything of this campaign in this environment."""
        return self.runs > 0 or self.total_batches > 0 or self.superseded > 0 or self.input_hash is not None


@dataclass(frozen=True)
class LockHolder:
    hostname: str
    pid: int
    since: str

    def __str__(self) -> str:
        return f"host {self.hostname}, pid {self.pid}, since {self.since}"


# --- the backend's side ----------------------------------------------------------------


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


@dataclass(frozen=True)
class Dialect:
    """The words the two SQL dialects disagree on."""

    name: str
    placeholder: str  # '?' (sqlite3) or '%s' (psycopg)
    serial: str  # an auto-numbered integer primary key
    begin_write: str  # starts a transaction that will write
    begin_read: str  # starts a read-only transaction with one snapshot for all its queries
    # `WITH x AS {materialized}(...)`: keeps a CTE's own (indexed) plan. PostgreSQL would
    # otherwise fold it into the join, and on a table not yet analysed (receipts arriving
    # right after a first send) pick a plan that reads every destination of each batch:
    # 80 ms for 64 receipts instead of 0.4 ms. SQLite plans it well either way (and before
    # 3.35 does not know the word).
    materialized: str = ""

    def schema(self) -> str:
        return SCHEMA.replace("{serial}", self.serial)

    def statements(self, script: str) -> list[str]:
        return [statement for statement in script.split(";") if statement.strip()]


@lru_cache(maxsize=512)
def _translate(sql: str, placeholder: str) -> str:
    if placeholder == "?":
        return sql
    return sql.replace("%", "%%").replace("?", placeholder)


class Connection(ABC):
    """One database connection as the shared queries see it (placeholders are `?`)."""

    dialect: Dialect

    def sql(self, text: str) -> str:
        return _translate(text, self.dialect.placeholder)

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    @abstractmethod
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def insert_rows(self, head: str, row: str, tail: str, rows: Sequence[Sequence[Any]]) -> None:
        """`head VALUES row tail` for every row; a backend may send them in fewer statements."""
        self.executemany(f"{head} VALUES {row} {tail}", rows)

    @abstractmethod
    def in_transaction(self) -> bool: ...

    def usable(self) -> bool:
        """Whether the connection may serve another transaction (not closed or broken)."""
        return True

    @abstractmethod
    def close(self) -> None: ...


class LedgerUnavailable(CampaignError):
    """The storage itself failed (a lost connection, a corrupt or read-only file): never a
    single write's fault, so nothing may retry around it; mid-apply it ends the run like a
    crash."""


@dataclass
class _State:
    connection: Connection | None
    own_runs: set[str] = field(default_factory=set)
    # inside `group()`: the thread that opened it and the connection of its one transaction
    group_owner: int | None = None
    group_connection: Connection | None = None
    # batches accepted with a messageId inside the group: orphan receipts are looked for
    # once, when it ends, rather than once per answer
    group_accepted: list[tuple[str, str]] = field(default_factory=list)


class Ledger(ABC):
    """The state of one or more campaigns in one environment. Open with `open_ledger(state)`
    (or `Ledger.open(state)`), use as a context manager."""

    #: the database errors that mean "the storage is unusable" (not a bug of ours)
    storage_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, display: str, connection: Connection, environment: str = DEFAULT_ENVIRONMENT) -> None:
        self.display = display  # how the state may be printed (no password)
        self.environment = check_environment_name(environment)
        self._lock = threading.RLock()
        self._state = _State(connection)

    # --- opening and closing ------------------------------------------------------

    @classmethod
    def open(cls, state: str | Path, *, environment: str = DEFAULT_ENVIRONMENT) -> Ledger:
        """Kept for callers of the SQLite-only ledger: the same as `open_ledger`."""
        return open_ledger(state, environment=environment)

    def close(self) -> None:
        with self._lock:
            connection, self._state.connection = self._state.connection, None
            if connection is not None:
                try:
                    connection.close()
                except self.storage_errors:
                    pass  # a lost connection is closed already

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abstractmethod
    def apply_lock(self, campaign_id: str, *, timeout: float = 0.0) -> AbstractContextManager[None]:
        """Hold the one-apply-per-(environment, campaign) lock for the block, waiting up to
        `timeout` seconds; refused (exit 4, naming the holder) when still held by another."""

    def check_apply_lock(self) -> None:
        """Raise `LedgerUnavailable` (exit 3) if the apply lock this ledger holds may have been
        lost. The sender asks about once a second. SQLite's lock is the process's own flock and
        cannot be lost; PostgreSQL's lives on a connection of its own, which can drop while
        the others go on."""

    # --- transactions -------------------------------------------------------------

    def _connection(self) -> Connection:
        connection = self._state.connection
        if connection is None:
            raise CampaignError("ledger: used after close()", exit_code=ExitCode.INTERNAL)
        return connection

    def storage_error(self, exc: BaseException) -> CampaignError:
        """The one-line error for an unusable storage (see the module docstring)."""
        reason = _one_line(str(exc) or type(exc).__name__, 300)
        if self._state.own_runs:
            return LedgerUnavailable(
                f"lost the ledger {self.display} while applying: {reason}",
                exit_code=ExitCode.PARTIAL,
                hint="batches that were in flight become uncertain on the next apply; "
                "check them (campaign status), then re-run, with --resend-uncertain if they were not delivered",
            )
        return LedgerUnavailable(
            f"the ledger {self.display} cannot be used: {reason}",
            exit_code=ExitCode.USAGE,
            hint="check that --state names a readable, writable ledger (or a reachable database)",
        )

    @contextmanager
    def _session(self) -> Iterator[Connection]:
        """The connection for one transaction, this thread's alone until the block ends."""
        with self._lock:
            yield self._connection()

    @contextmanager
    def group(self) -> Iterator[None]:
        """Writes (and reads) this thread makes inside share one transaction, so one
        commit: group commit for a sender with many requests in flight. All or none.
        Other threads' writes wait for it on SQLite (one connection behind the lock) and
        run in their own transactions on PostgreSQL (a pool connection each)."""
        with self._write() as connection:
            state = self._state
            state.group_owner, state.group_connection, state.group_accepted = threading.get_ident(), connection, []
            try:
                yield
                if state.group_accepted:
                    self._adopt_orphans_of_accepted(connection, state.group_accepted)
            finally:
                state.group_owner, state.group_connection, state.group_accepted = None, None, []

    def _grouped(self) -> Connection | None:
        """This thread's open `group()` transaction, if any."""
        state = self._state
        return state.group_connection if state.group_owner == threading.get_ident() else None

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        grouped = self._grouped()
        if grouped is not None:
            yield grouped
            return
        with self._session() as connection:
            # Everything from BEGIN to COMMIT sits inside the try: an interrupt (Ctrl-C,
            # SIGTERM) landing anywhere in between must not leave a transaction open.
            try:
                connection.execute(connection.dialect.begin_write)
                yield connection
                connection.execute("COMMIT")
            except self.storage_errors as exc:
                self._rollback(connection)
                raise self.storage_error(exc) from None
            except BaseException:
                self._rollback(connection)
                raise

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        grouped = self._grouped()
        if grouped is not None:
            yield grouped
            return
        with self._session() as connection:
            try:
                connection.execute(connection.dialect.begin_read)  # one snapshot for multi-query reads
                yield connection
            except self.storage_errors as exc:
                raise self.storage_error(exc) from None
            finally:
                self._rollback(connection)  # nothing was written: ending the snapshot is enough

    def _rollback(self, connection: Connection) -> None:
        try:
            if connection.in_transaction():
                connection.execute("ROLLBACK")
        except self.storage_errors:
            pass

    def _ensure_campaign(self, connection: Connection, campaign_id: str, now: str) -> None:
        connection.execute(
            "INSERT INTO campaigns(environment, campaign_id, input_hash, created_at, updated_at) "
            "VALUES (?, ?, NULL, ?, ?) ON CONFLICT(environment, campaign_id) DO NOTHING",
            (self.environment, campaign_id, now, now),
        )

    # --- environments -------------------------------------------------------------

    def check_environment_host(self, api_host: str) -> None:
        """Remember the API host of this environment on first use; refuse (exit 4) when it
        points at another host since, which would send a campaign to the wrong tenant."""
        host = api_host.strip().lower()
        now = now_text()
        with self._write() as connection:
            row = connection.execute(
                "SELECT api_host FROM environments WHERE environment = ?", (self.environment,)
            ).fetchone()
            if row is None or row[0] is None:
                connection.execute(
                    "INSERT INTO environments(environment, api_host, created_at, updated_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(environment) DO UPDATE SET api_host = excluded.api_host, "
                    "updated_at = excluded.updated_at",
                    (self.environment, host, now, now),
                )
                return
        if row[0] != host:
            raise CampaignError(
                f"environment '{self.environment}' of {self.display} sent to {row[0]}, "
                f"but this run points at {host}",
                exit_code=ExitCode.REFUSED,
                hint="pass --env for the tenant you mean (each environment gets every campaign once), "
                "or fix --base-url/--region",
            )

    def environment_hosts(self) -> dict[str, str | None]:
        with self._read() as connection:
            rows = connection.execute("SELECT environment, api_host FROM environments ORDER BY environment").fetchall()
        return {str(name): host for name, host in rows}

    # --- campaigns and runs -------------------------------------------------------

    def campaign_hash(self, campaign_id: str) -> str | None:
        with self._read() as connection:
            row = connection.execute(
                "SELECT input_hash FROM campaigns WHERE environment = ? AND campaign_id = ?",
                (self.environment, campaign_id),
            ).fetchone()
        return None if row is None else row[0]

    def set_campaign_hash(self, campaign_id: str, input_hash: str) -> None:
        now = now_text()
        with self._write() as connection:
            connection.execute(
                "INSERT INTO campaigns(environment, campaign_id, input_hash, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(environment, campaign_id) DO UPDATE SET input_hash = excluded.input_hash, "
                "updated_at = excluded.updated_at",
                (self.environment, campaign_id, input_hash, now, now),
            )

    def begin_run(self, campaign_id: str) -> str:
        """Record a run of this process; returns its id (stored on each batch it sends)."""
        run_id = uuid.uuid4().hex
        now = now_text()
        with self._write() as connection:
            self._ensure_campaign(connection, campaign_id, now)
            connection.execute(
                "INSERT INTO runs(run_id, environment, campaign_id, seq, pid, hostname, started_at) "
                "VALUES (?, ?, ?, (SELECT coalesce(max(seq), 0) + 1 FROM runs), ?, ?, ?)",
                (run_id, self.environment, campaign_id, os.getpid(), socket.gethostname(), now),
            )
            self._state.own_runs.add(run_id)
        return run_id

    def finish_run(self, run_id: str) -> None:
        with self._write() as connection:
            connection.execute("UPDATE runs SET finished_at = ? WHERE run_id = ?", (now_text(), run_id))

    def mark_dead_in_flight_uncertain(self, campaign_id: str) -> int:
        """Turn batches left `in-flight` by other (dead) runs into `uncertain`; returns how many.

        Call it while holding `apply_lock` for the campaign: the lock is what proves
        no other live process is sending it.
        """
        now = now_text()
        with self._write() as connection:
            own = sorted(self._state.own_runs)
            marks = ",".join("?" * len(own))
            exclude = f"AND (b.run_id IS NULL OR b.run_id NOT IN ({marks}))" if own else ""
            rows = connection.execute(
                "SELECT b.batch_key, b.run_id, r.pid, r.hostname, r.started_at FROM batches b "
                "LEFT JOIN runs r ON r.run_id = b.run_id "
                f"WHERE b.environment = ? AND b.campaign_id = ? AND b.status = 'in-flight' {exclude}",
                (self.environment, campaign_id, *own),
            ).fetchall()
            for batch_key, run_id, pid, hostname, started_at in rows:
                who = f"run {run_id} (host {hostname}, pid {pid}, started {started_at})" if run_id else "an earlier run"
                reason = f"{who} ended while this batch was in flight; the vendor may or may not have it"
                self._set_status(connection, batch_key, "uncertain", now, vendor_message=reason)
        return len(rows)

    def write_lock_holder(self, campaign_id: str) -> None:
        now = now_text()
        with self._write() as connection:
            connection.execute(
                "INSERT INTO apply_locks(environment, campaign_id, hostname, pid, since) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(environment, campaign_id) DO UPDATE SET hostname = excluded.hostname, "
                "pid = excluded.pid, since = excluded.since",
                (self.environment, campaign_id, socket.gethostname(), os.getpid(), now),
            )

    def read_lock_holder(self, campaign_id: str) -> LockHolder | None:
        with self._read() as connection:
            row = connection.execute(
                "SELECT hostname, pid, since FROM apply_locks WHERE environment = ? AND campaign_id = ?",
                (self.environment, campaign_id),
            ).fetchone()
        return None if row is None else LockHolder(str(row[0]), int(row[1]), str(row[2]))

    def campaign_ids(self) -> list[str]:
        """The campaigns this environment knows, for a status that names an unknown one."""
        with self._read() as connection:
            rows = connection.execute(
                "SELECT campaign_id FROM campaigns WHERE environment = ? ORDER BY campaign_id", (self.environment,)
            ).fetchall()
        return [str(row[0]) for row in rows]

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
        """`record_pending` for many batches in one transaction, and in a few statements
        whatever their number (one request per destination means a batch per number)."""
        now = now_text()
        with self._write() as connection:
            self._ensure_campaign(connection, campaign_id, now)
            new = self._insert_batches(connection, campaign_id, list(batches), now)
            if new and connection.execute("SELECT 1 FROM orphan_receipts LIMIT 1").fetchone() is not None:
                for key in new:
                    self._adopt_orphans(connection, key, None)

    _KEYS_PER_STATEMENT: Final = 500  # keys in one IN (...) list: under SQLite's bound-parameter limit

    def _by_keys(self, connection: Connection, head: str, keys: Sequence[str], tail: str = "") -> list[Any]:
        """The rows of `head (?, ?, ...) tail` for every key, a statement per 500 keys; the
        statement's first parameter is this ledger's environment."""
        rows: list[Any] = []
        for start in range(0, len(keys), self._KEYS_PER_STATEMENT):
            part = list(keys[start:start + self._KEYS_PER_STATEMENT])
            rows.extend(connection.execute(f"{head} ({','.join('?' * len(part))}){tail}",
                                           (self.environment, *part)).fetchall())
        return rows

    def _insert_batches(self, connection: Connection, campaign_id: str, batches: Sequence[Batch],
                        now: str) -> list[str]:
        """Record the batches not yet known; returns their keys. Raises as `record_pending` says."""
        env = self.environment
        keys = list(dict.fromkeys(batch.key for batch in batches))
        known: dict[str, str] = dict(self._by_keys(
            connection, "SELECT batch_key, campaign_id FROM batches WHERE environment = ? AND batch_key IN", keys))
        for key, owner in known.items():
            if owner != campaign_id:
                raise CampaignError(f"ledger: batch key {key} already belongs to campaign '{owner}'",
                                    exit_code=ExitCode.INTERNAL)
        new: dict[str, Batch] = {}
        for batch in batches:
            if batch.key not in known:
                new.setdefault(batch.key, batch)
        if not new:
            return []
        wanted: dict[str, set[tuple[str, str]]] = {}
        batch_rows: list[tuple[Any, ...]] = []
        destination_rows: list[tuple[Any, ...]] = []
        for key, batch in new.items():
            unique = wanted[key] = {(d.msisdn, d.correlation_id) for d in batch.destinations}
            digests = batch_content_digests(batch)
            batch_rows.append((env, key, campaign_id, batch.index, batch.api, len(unique), now, now))
            destination_rows.extend((env, campaign_id, key, msisdn, correlation_id, digests.get(msisdn))
                                    for msisdn, correlation_id in unique)
        if len({row[3:5] for row in destination_rows}) != len(destination_rows):
            # one number in two of these batches (never from one compile): one at a time,
            # so the later batch takes it, as separate calls would
            for key in new:
                self._insert_batches(connection, campaign_id, [new[key]], now)
            return list(new)
        connection.executemany(
            "INSERT INTO batches(environment, batch_key, campaign_id, batch_index, api, status, destinations_count, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)", batch_rows)
        connection.insert_rows(
            "INSERT INTO destinations(environment, campaign_id, batch_key, msisdn, correlation_id, status, "
            "content_digest)",
            "(?, ?, ?, ?, ?, 'pending', ?)",
            "ON CONFLICT(environment, campaign_id, msisdn, correlation_id) DO UPDATE "
            "SET batch_key = excluded.batch_key, status = 'pending', content_digest = excluded.content_digest "
            "WHERE destinations.status IN ('pending', 'failed', 'uncertain')",
            destination_rows,
        )
        new_keys = list(new)
        held: dict[str, int] = dict(self._by_keys(
            connection, "SELECT batch_key, count(*) FROM destinations WHERE environment = ? AND batch_key IN",
            new_keys, " GROUP BY batch_key"))
        for key, unique in wanted.items():
            if held.get(key, 0) != len(unique):
                self._refuse_taken(connection, campaign_id, key, unique, held.get(key, 0))
        # pending batches (never attempted) whose destinations all moved to these are dropped
        connection.execute(
            "DELETE FROM batches WHERE environment = ? AND campaign_id = ? AND status = 'pending' AND attempts = 0 "
            "AND destinations_count > 0 AND NOT EXISTS "
            "(SELECT 1 FROM destinations d WHERE d.environment = batches.environment "
            "AND d.batch_key = batches.batch_key)",
            (env, campaign_id),
        )
        return new_keys

    def _refuse_taken(self, connection: Connection, campaign_id: str, batch_key: str,
                      unique: set[tuple[str, str]], held: int) -> None:
        """Some destinations of a new batch stayed in another batch that is accepted or in
        flight: name up to three, and refuse (the transaction is rolled back)."""
        examples: list[str] = []
        for msisdn, correlation_id in sorted(unique):
            row = connection.execute(
                "SELECT batch_key, status FROM destinations "
                "WHERE environment = ? AND campaign_id = ? AND msisdn = ? AND correlation_id = ?",
                (self.environment, campaign_id, msisdn, correlation_id),
            ).fetchone()
            if row is not None and row[0] != batch_key:
                examples.append(f"{msisdn} ({correlation_id}) is {row[1]} in batch {row[0]}")
                if len(examples) == 3:
                    break
        raise CampaignError(
            f"ledger: {len(unique) - held} destination(s) of batch {batch_key} are already "
            f"accepted or in flight in another batch: {'; '.join(examples)}",
            exit_code=ExitCode.REFUSED,
            hint="leave out destinations the ledger has accepted (see accepted_destinations)",
        )

    def _set_status(
        self,
        connection: Connection,
        batch_key: str,
        status: BatchStatus,
        now: str,
        **columns: Any,
    ) -> None:
        """One conditional UPDATE of the batch (the transition rule is part of its WHERE) and
        one of its destinations: at one request per destination this runs twice a request,
        so the status is read back only to explain an UPDATE that found nothing."""
        env = self.environment
        allowed = sorted(_ALLOWED_FROM[status])
        steps = {_INCREMENT: " + 1", _DECREMENT: " - 1"}
        assignments = "".join(f", {name} = {name}{steps[value]}" if value in steps else f", {name} = ?"
                              for name, value in columns.items())
        values = [value for value in columns.values() if value not in steps]
        updated = connection.execute(
            f"UPDATE batches SET status = ?, updated_at = ?{assignments} WHERE environment = ? AND batch_key = ? "
            f"AND status IN ({','.join('?' * len(allowed))})",
            (status, now, *values, env, batch_key, *allowed),
        ).rowcount
        if updated != 1:
            row = connection.execute(
                "SELECT status FROM batches WHERE environment = ? AND batch_key = ?", (env, batch_key)
            ).fetchone()
            if row is None:
                raise CampaignError(f"ledger: unknown batch {batch_key}", exit_code=ExitCode.INTERNAL)
            raise CampaignError(
                f"ledger: batch {batch_key} cannot go from {row[0]} to {status}",
                exit_code=ExitCode.INTERNAL,
            )
        connection.execute(
            "UPDATE destinations SET status = ? WHERE environment = ? AND batch_key = ?", (status, env, batch_key)
        )

    def mark_in_flight(self, batch_key: str, run_id: str) -> None:
        """Count an attempt and make `in-flight` durable; call it right before the request leaves."""
        with self._write() as connection:
            self._set_status(connection, batch_key, "in-flight", now_text(), run_id=run_id, attempts=_INCREMENT)

    def mark_accepted(self, batch_key: str, *, http_status: int, message_id: str | None) -> None:
        with self._write() as connection:
            self._set_status(
                connection,
                batch_key,
                "accepted",
                now_text(),
                http_status=http_status,
                message_id=message_id,
                vendor_code=None,
                vendor_message=None,
            )
            if message_id:
                if connection is self._grouped():
                    self._state.group_accepted.append((batch_key, message_id))
                else:
                    self._adopt_orphans_of_accepted(connection, [(batch_key, message_id)])

    def _adopt_orphans_of_accepted(self, connection: Connection, accepted: Sequence[tuple[str, str]]) -> None:
        """Orphan receipts that waited for these (batch key, messageId)s, if there are any at all."""
        if connection.execute("SELECT 1 FROM orphan_receipts LIMIT 1").fetchone() is None:
            return
        for batch_key, message_id in accepted:
            self._adopt_orphans(connection, batch_key, message_id)

    def mark_failed(self, batch_key: str, *, http_status: int | None, code: str | None, message: str) -> None:
        with self._write() as connection:
            self._set_status(
                connection,
                batch_key,
                "failed",
                now_text(),
                http_status=http_status,
                vendor_code=code,
                vendor_message=_one_line(message),
            )

    def mark_uncertain(self, batch_key: str, *, reason: str) -> None:
        with self._write() as connection:
            self._set_status(connection, batch_key, "uncertain", now_text(), vendor_message=_one_line(reason))

    def mark_unsent(self, batch_key: str, *, back_to: str = "pending") -> None:
        """Undo `mark_in_flight` for a batch that never left (the run stopped first): back to
        the status it had (`pending`, `failed` or `uncertain`), that attempt not counted."""
        if back_to not in ("pending", "failed", "uncertain"):
            raise CampaignError(f"ledger: a batch cannot go back to {back_to}", exit_code=ExitCode.INTERNAL)
        with self._write() as connection:
            self._set_status(connection, batch_key, cast(BatchStatus, back_to), now_text(), attempts=_DECREMENT)

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
                now_text(),
                http_status=http_status,
                vendor_code=code,
                vendor_message=_one_line(message),
            )

    def batch_status(self, batch_key: str) -> str | None:
        with self._read() as connection:
            row = connection.execute(
                "SELECT status FROM batches WHERE environment = ? AND batch_key = ?", (self.environment, batch_key)
            ).fetchone()
        return None if row is None else str(row[0])

    def batch_statuses(self, batch_keys: Sequence[str]) -> dict[str, str]:
        """`batch_status` of many batches in one read (known ones only): the sender asks
        once per group instead of once per request, each waiting for the ledger."""
        with self._read() as connection:
            rows = self._by_keys(connection, "SELECT batch_key, status FROM batches WHERE environment = ? "
                                 "AND batch_key IN", batch_keys)
        return {str(key): str(status) for key, status in rows}

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
                f"SELECT {self._RECORD_COLUMNS} FROM batches b WHERE b.environment = ? AND b.batch_key = ?",
                (self.environment, batch_key),
            ).fetchone()
        return None if row is None else self._record(row)

    def batch_records(
        self, campaign_id: str, status: str | None = None, *, include_superseded: bool = False
    ) -> list[BatchRecord]:
        """The campaign's batches in batch_index order, optionally only those with `status`."""
        query = f"SELECT {self._RECORD_COLUMNS} FROM batches b WHERE b.environment = ? AND b.campaign_id = ?"
        params: tuple[str, ...] = (self.environment, campaign_id)
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
                "SELECT 1 FROM batches b WHERE b.environment = ? AND b.campaign_id = ? "
                f"AND b.status = 'uncertain' AND {_LIVE} LIMIT 1",
                (self.environment, campaign_id),
            ).fetchone()
        return row is not None

    # --- destinations -------------------------------------------------------------

    def accepted_destinations(self, campaign_id: str) -> set[tuple[str, str]]:
        """(msisdn, correlation_id) pairs the vendor has accepted for this campaign."""
        with self._read() as connection:
            rows = connection.execute(
                "SELECT msisdn, correlation_id FROM destinations "
                "WHERE environment = ? AND campaign_id = ? AND status = 'accepted'",
                (self.environment, campaign_id),
            ).fetchall()
        return {(str(msisdn), str(correlation_id)) for msisdn, correlation_id in rows}

    def destination_states(self, campaign_id: str) -> dict[str, str]:
        """msisdn -> what `plan --state` needs of each destination of the campaign: the
        `content_digest` of an accepted one (16 hex digits), else its status (an accepted
        one recorded before digests existed: `accepted`). One string a number, built by
        the driver from one query, because a campaign may hold a million. A number held
        twice (two correlation ids) keeps its most-sent state: accepted, then in flight or
        uncertain, then failed, then pending."""
        key = (self.environment, campaign_id)
        with self._read() as connection:
            found: dict[str, str] = dict(connection.execute(
                "SELECT msisdn, CASE WHEN status = 'accepted' AND content_digest IS NOT NULL THEN content_digest "
                f"ELSE status END FROM destinations{_whole_table(connection)} WHERE environment = ? AND campaign_id = ?",
                key))
            twice = connection.execute(
                "SELECT msisdn, status, content_digest FROM destinations WHERE environment = ? AND campaign_id = ? "
                "AND msisdn IN (SELECT msisdn FROM destinations WHERE environment = ? AND campaign_id = ? "
                "GROUP BY msisdn HAVING count(*) > 1)", (*key, *key)).fetchall()
        best: dict[str, tuple[int, str]] = {}
        for msisdn, status, digest in twice:
            rank = _SENT_RANK[status]
            if msisdn not in best or rank > best[msisdn][0]:
                best[msisdn] = (rank, digest if status == "accepted" and digest is not None else status)
        for msisdn, (_, value) in best.items():
            found[msisdn] = value
        return found

    def destination_counts(self, campaign_id: str) -> dict[str, int]:
        """Destinations of the campaign by status (every status, zeros included): the part
        of `summary` that `plan --state` needs, read in table order (see `_whole_table`)."""
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        with self._read() as connection:
            for status, count in connection.execute(
                f"SELECT status, count(*) FROM destinations{_whole_table(connection)} "
                "WHERE environment = ? AND campaign_id = ? GROUP BY status", (self.environment, campaign_id)):
                counts[str(status)] = int(count)
        return counts

    def accepted_msisdns(self, campaign_id: str) -> set[str]:
        return self.msisdns_with_status(campaign_id, "accepted")

    def msisdns_with_status(self, campaign_id: str, status: str) -> set[str]:
        """Numbers of the campaign whose destination (batch) has `status`."""
        if status not in STATUSES:
            raise CampaignError(f"ledger: unknown status {status!r}", exit_code=ExitCode.INTERNAL)
        with self._read() as connection:
            rows = connection.execute(
                "SELECT DISTINCT msisdn FROM destinations WHERE environment = ? AND campaign_id = ? AND status = ?",
                (self.environment, campaign_id, status),
            ).fetchall()
        return {str(row[0]) for row in rows}

    # --- receipts -----------------------------------------------------------------

    def record_receipt(self, campaign_id: str | None, receipt: Mapping[str, Any]) -> bool:
        """Store one delivery receipt (the parsed webhook JSON, with or without its
        `deliveryInfoNotification` envelope); see `record_receipts`."""
        return self.record_receipts((receipt,), campaign_id=campaign_id)[0]

    def record_receipts(
        self, receipts: Sequence[Mapping[str, Any]], *, campaign_id: str | None = None
    ) -> list[bool]:
        """Store many receipts in one transaction (one commit for a listener's group, and a
        few statements whatever its size); for each, whether it matched a destination.

        Matching: by `correlationid`, then, when several campaigns or environments hold
        that id, by `transid` = the batch's messageId (UNCONFIRMED vendor fact); with no
        correlation match, by `transid` alone; a receipt naming a number only matches a
        destination with that number. With `campaign_id` given (a rehearsal collecting
        its own receipts) only that campaign of this ledger's environment is searched;
        else every campaign of every environment. A receipt that matches nothing, or more
        than one campaign, is kept in `orphan_receipts` and matched when its batch
        appears. Storing the same receipt again (the vendor retried) changes nothing.
        """
        now = now_text()
        parsed = [_receipt_fields(receipt) for receipt in receipts]
        results: list[bool] = []
        stored: dict[tuple[str, ...], tuple[str, ...]] = {}  # unique key -> row (duplicates in a group)
        orphans: dict[tuple[str, ...], tuple[str, ...]] = {}
        with self._write() as connection:
            by_correlation = self._candidates(
                connection, "d.correlation_id", {f["correlationid"] for f in parsed if f["correlationid"]}, campaign_id)
            by_transid = self._candidates(
                connection, "b.message_id",
                {f["transid"] for f in parsed if f["transid"] and not by_correlation.get(f["correlationid"])},
                campaign_id)
            for fields in parsed:
                matched = _choose(fields, by_correlation.get(fields["correlationid"], []),
                                  by_transid.get(fields["transid"], []))
                values = _receipt_values(fields)
                if matched is None:
                    orphans.setdefault((*values[:5], values[6]), (*values, now))
                    results.append(False)
                    continue
                env, campaign, batch_key, msisdn, correlation = matched
                row = (env, campaign, batch_key or "", correlation, msisdn, *values[2:], now)
                stored.setdefault((env, campaign, correlation, msisdn, *values[2:5], values[6]), row)
                results.append(True)
            if stored:
                connection.insert_rows(
                    f"INSERT INTO receipts(environment, campaign_id, batch_key, {_RECEIPT_COLUMNS}, received_at)",
                    "(?, ?, NULLIF(?, ''), ?, ?, ?, ?, ?, ?, ?, ?)", "ON CONFLICT DO NOTHING", list(stored.values()))
            if orphans:
                connection.insert_rows(
                    f"INSERT INTO orphan_receipts({_RECEIPT_COLUMNS}, received_at)",
                    "(?, ?, ?, ?, ?, ?, ?, ?)", "ON CONFLICT DO NOTHING", list(orphans.values()))
        return results

    _CANDIDATE_CHUNK: Final = 500  # keys per IN (...) list

    def _candidates(
        self, connection: Connection, column: str, keys: set[str], campaign_id: str | None
    ) -> dict[str, list[tuple[Any, ...]]]:
        """Destinations whose correlation id (or whose batch's messageId) is one of `keys`,
        by that key; one query per chunk of keys. Each query first finds the rows its key
        names through that key's index, then joins (see `Dialect.materialized`)."""
        found: dict[str, list[tuple[Any, ...]]] = {}
        scope, scope_params = "", cast(tuple[str, ...], ())
        if campaign_id is not None:
            scope, scope_params = " AND d.environment = ? AND d.campaign_id = ?", (self.environment, campaign_id)
        ordered = sorted(keys)
        by_correlation = column == "d.correlation_id"
        key_at = 4 if by_correlation else 5
        materialized = connection.dialect.materialized
        for start in range(0, len(ordered), self._CANDIDATE_CHUNK):
            chunk = ordered[start:start + self._CANDIDATE_CHUNK]
            marks = ",".join("?" * len(chunk))
            if by_correlation:
                query = (
                    f"WITH d AS {materialized}(SELECT environment, campaign_id, batch_key, msisdn, correlation_id "
                    f"FROM destinations d WHERE d.correlation_id IN ({marks}){scope}) "
                    "SELECT d.environment, d.campaign_id, d.batch_key, d.msisdn, d.correlation_id, b.message_id "
                    "FROM d JOIN batches b ON b.environment = d.environment AND b.batch_key = d.batch_key")
            else:
                query = (
                    f"WITH b AS {materialized}(SELECT environment, batch_key, message_id FROM batches "
                    f"WHERE message_id IN ({marks})) "
                    "SELECT d.environment, d.campaign_id, d.batch_key, d.msisdn, d.correlation_id, b.message_id "
                    f"FROM b JOIN destinations d ON d.environment = b.environment AND d.batch_key = b.batch_key{scope}")
            for row in connection.execute(query, (*chunk, *scope_params)):
                found.setdefault(str(row[key_at]), []).append(tuple(row))
        return found

    def _adopt_orphans(self, connection: Connection, batch_key: str, message_id: str | None) -> None:
        """Match the orphan receipts that the batch `batch_key` (just recorded, or just
        given its messageId) may be for, and move those that match now."""
        rows = connection.execute(
            f"SELECT receipt_id, {_RECEIPT_COLUMNS}, received_at FROM orphan_receipts o "
            "WHERE o.correlation_id IN (SELECT d.correlation_id FROM destinations d "
            "WHERE d.environment = ? AND d.batch_key = ?) OR (o.transid != '' AND o.transid = ?)",
            (self.environment, batch_key, message_id or ""),
        ).fetchall()
        for receipt_id, correlation_id, msisdn, transid, status, code, description, time_stamp, received_at in rows:
            fields = {"correlationid": correlation_id, "destination": msisdn, "transid": transid,
                      "deliverystatus": status, "code": code, "description": description, "timestamp": time_stamp}
            by_correlation = self._candidates(connection, "d.correlation_id", {correlation_id} - {""}, None)
            by_transid = self._candidates(connection, "b.message_id", {transid} - {""}, None)
            matched = _choose(fields, by_correlation.get(correlation_id, []), by_transid.get(transid, []))
            if matched is not None:
                env, campaign, matched_batch, number, correlation = matched
                connection.execute(
                    f"INSERT INTO receipts(environment, campaign_id, batch_key, {_RECEIPT_COLUMNS}, received_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (env, campaign, matched_batch, correlation, number, transid, status, code, description,
                     time_stamp, received_at),
                )
                connection.execute("DELETE FROM orphan_receipts WHERE receipt_id = ?", (receipt_id,))

    def orphan_receipt_count(self) -> int:
        with self._read() as connection:
            return int(connection.execute("SELECT count(*) FROM orphan_receipts").fetchone()[0])

    # --- summary ------------------------------------------------------------------

    def summary(self, campaign_id: str) -> LedgerSummary:
        key = (self.environment, campaign_id)
        with self._read() as connection:
            campaign = connection.execute(
                "SELECT input_hash FROM campaigns WHERE environment = ? AND campaign_id = ?", key
            ).fetchone()
            batches: dict[str, int] = dict.fromkeys(STATUSES, 0)
            attempts = superseded = 0
            for status, live, count, tries in connection.execute(
                f"SELECT b.status, {_LIVE} AS live, count(*), sum(b.attempts) FROM batches b "
                "WHERE b.environment = ? AND b.campaign_id = ? GROUP BY b.status, live",
                key,
            ):
                if live:
                    batches[status] += int(count)
                else:
                    superseded += int(count)
                attempts += int(tries or 0)
            destinations: dict[str, int] = dict.fromkeys(STATUSES, 0)
            for status, count in connection.execute(
                "SELECT status, count(*) FROM destinations WHERE environment = ? AND campaign_id = ? GROUP BY status",
                key,
            ):
                destinations[status] = int(count)
            failures = tuple(
                FailureGroup(code, message or "", int(n_batches), int(n_destinations or 0))
                for code, message, n_batches, n_destinations in connection.execute(
                    "SELECT b.vendor_code, b.vendor_message, count(*), sum("
                    "  (SELECT count(*) FROM destinations d WHERE d.environment = b.environment "
                    "AND d.batch_key = b.batch_key)) "
                    f"FROM batches b WHERE b.environment = ? AND b.campaign_id = ? AND b.status = 'failed' AND {_LIVE} "
                    "GROUP BY b.vendor_code, b.vendor_message "
                    "ORDER BY count(*) DESC, b.vendor_code, b.vendor_message",
                    key,
                )
            )
            receipt_codes = tuple(
                ReceiptCount(str(status), str(code), int(count), int(numbers))
                for status, code, count, numbers in connection.execute(
                    "SELECT delivery_status, code, count(*), count(DISTINCT msisdn || ' ' || correlation_id) "
                    "FROM receipts WHERE environment = ? AND campaign_id = ? "
                    "GROUP BY delivery_status, code ORDER BY delivery_status, code",
                    key,
                )
            )
            n_runs, first_started = connection.execute(
                "SELECT count(*), min(started_at) FROM runs WHERE environment = ? AND campaign_id = ?", key
            ).fetchone()
            last = connection.execute(
                "SELECT started_at, finished_at FROM runs WHERE environment = ? AND campaign_id = ? "
                "ORDER BY seq DESC LIMIT 1",
                key,
            ).fetchone()
        receipts: dict[str, int] = {}
        for count in receipt_codes:
            receipts[count.delivery_status] = receipts.get(count.delivery_status, 0) + count.receipts
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
            environment=self.environment,
            receipt_codes=receipt_codes,
        )


def _whole_table(connection: Connection) -> str:
    """For a query reading most rows of a campaign: on SQLite, read the table in its own
    order rather than through the (environment, campaign, msisdn) index, whose order
    sends each row's lookup to another page: at a million destinations 1.5 s instead of
    4 s (and 0.5 s instead of 2.8 s to count them by status)."""
    return " NOT INDEXED" if connection.dialect.name == "sqlite" else ""


_SENT_RANK: Final = {"pending": 0, "failed": 1, "uncertain": 2, "in-flight": 2, "accepted": 3}


def batch_content_digests(batch: Batch) -> dict[str, str]:
    """msisdn -> `content_digest` of what the batch sends that number (a number is in a
    campaign's requests once: duplicates are dropped before batching), read
    from its body: the request's text (or `template:<id>`) and the values the platform
    fills in for that destination (the request's `substitutions`, then its own)."""
    from runner.compile import content_digest

    body = batch.body
    if batch.api == "v1":
        return {str(body.get("to", "")): content_digest(str(body.get("content", "")), body.get("substitutions") or {})}
    template = body.get("template")
    text = f"template:{template['id']}" if template else str(body.get("content", {}).get("text", ""))
    shared = body.get("substitutions") or {}
    digests = {}
    common = content_digest(text, shared)  # local mode: every destination of a request shares it
    for entry in body.get("to", ()):
        own = entry.get("substitutions")
        digest = content_digest(text, {**shared, **own}) if own else common
        for msisdn in entry.get("msisdn", ()):
            digests[str(msisdn)] = digest
    return digests


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


def _choose(
    fields: Mapping[str, str], by_correlation: Sequence[tuple[Any, ...]], by_transid: Sequence[tuple[Any, ...]]
) -> tuple[str, str, str | None, str, str] | None:
    """(environment, campaign, batch_key, msisdn, correlation_id) of the one destination (or
    batch) a receipt is for, from the candidate rows (environment, campaign, batch_key,
    msisdn, correlation_id, message_id) found by its correlation id and by its transid;
    None when there is none or it is ambiguous."""
    transid = fields["transid"]
    number = _digits(fields["destination"])
    candidates = list(by_correlation)
    if candidates and transid and len({(row[0], row[1]) for row in candidates}) > 1:
        candidates = [row for row in candidates if row[5] == transid] or candidates
    if not candidates and transid:
        candidates = list(by_transid)
    if number:  # never stored against a batch for a number that batch did not contain
        candidates = [row for row in candidates if _digits(row[3]) == number]
    if not candidates or len({(row[0], row[1]) for row in candidates}) != 1:
        return None
    if len(candidates) == 1:
        env, campaign, batch_key, msisdn, correlation_id, _ = candidates[0]
        return str(env), str(campaign), str(batch_key), str(msisdn), str(correlation_id)
    # one request (one messageId) for several destinations, no number to tell them apart
    keys = {row[2] for row in candidates}
    batch = str(candidates[0][2]) if len(keys) == 1 else None
    return str(candidates[0][0]), str(candidates[0][1]), batch, fields["destination"], fields["correlationid"]


def _receipt_values(fields: Mapping[str, str]) -> tuple[str, ...]:
    """In the order of `_RECEIPT_COLUMNS`."""
    return (fields["correlationid"], fields["destination"], fields["transid"], fields["deliverystatus"],
            fields["code"], fields["description"], fields["timestamp"])


# --- choosing the backend ----------------------------------------------------------------


def open_ledger(state: str | Path, *, environment: str = DEFAULT_ENVIRONMENT) -> Ledger:
    """Open (creating if needed) the ledger named by `state` — a SQLite file path or a
    `postgresql://` URL — bound to `environment`, with its schema brought up to date."""
    check_environment_name(environment)
    if is_postgres_url(state):
        from .postgres import PostgresLedger

        return PostgresLedger.connect(str(state), environment=environment)
    from .sqlite import SqliteLedger

    return SqliteLedger.connect(Path(state), environment=environment)


# the SQLite-only names of the single-backend ledger, kept for their callers
from .sqlite import acquire_lock, lock_path  # noqa: E402

__all__ = [
    "STATUSES", "SCHEMA_VERSION", "BatchRecord", "BatchStatus", "FailureGroup", "Ledger", "LedgerSummary",
    "LockHolder", "ReceiptCount", "acquire_lock", "check_environment_name", "is_postgres_url", "lock_path",
    "mask_state", "open_ledger",
]
