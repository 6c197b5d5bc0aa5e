"""The embedded SQLite backend: one file, WAL mode, `synchronous=FULL`, an flock per apply.

One connection (`check_same_thread=False`) shared by the sender's threads under the
ledger's lock; SQLite serialises writers anyway, so a connection per thread would buy
nothing but `database is locked` waits. Other processes (other campaigns sharing the
file, a receipts listener) are handled by WAL mode and a busy timeout. Writes use
`BEGIN IMMEDIATE`, and every commit is fsynced before it returns, so a batch is durably
in-flight before its request leaves, even across power loss.

The apply lock is an flock on `<real state file>.<campaign>.lock`: the kernel releases
it when its holder exits in any way (kill -9 included), and it is taken on the file the
state resolves to, so two paths to one ledger (a symlink) share one lock.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from runner.errors import CampaignError, ExitCode

from . import DEFAULT_ENVIRONMENT, SCHEMA_VERSION, Connection, Cursor, Dialect, Ledger, now_text
from .schema import ADD_CONTENT_DIGEST

BUSY_TIMEOUT_MS: Final = 30_000
LOCK_POLL_SECONDS: Final = 0.1

DIALECT: Final = Dialect(name="sqlite", placeholder="?", serial="INTEGER PRIMARY KEY", begin_write="BEGIN IMMEDIATE",
                         begin_read="BEGIN")

# version 1 (before environments): every row moves to the environment 'default'
_V1_TABLES: Final = ("receipts", "destinations", "batches", "runs", "campaigns")  # children first
_V1_INDEXES: Final = ("runs_by_campaign", "batches_by_campaign", "batches_by_message_id", "destinations_by_batch",
                      "destinations_by_correlation", "receipts_by_campaign")
_FROM_V1: Final = """
INSERT INTO campaigns(environment, campaign_id, input_hash, created_at, updated_at)
    SELECT 'default', campaign_id, input_hash, created_at, updated_at FROM v1_campaigns;
INSERT INTO runs(run_id, environment, campaign_id, seq, pid, hostname, started_at, finished_at)
    SELECT run_id, 'default', campaign_id, rowid, pid, hostname, started_at, finished_at FROM v1_runs;
INSERT INTO batches(environment, batch_key, campaign_id, batch_index, api, status, attempts, http_status,
                    vendor_code, vendor_message, message_id, destinations_count, run_id, created_at, updated_at)
    SELECT 'default', batch_key, campaign_id, batch_index, api, status, attempts, http_status,
           vendor_code, vendor_message, message_id, destinations_count, run_id, created_at, updated_at FROM v1_batches;
INSERT INTO destinations(environment, campaign_id, batch_key, msisdn, correlation_id, status)
    SELECT 'default', campaign_id, batch_key, msisdn, correlation_id, status FROM v1_destinations;
INSERT INTO receipts(environment, campaign_id, batch_key, correlation_id, msisdn, transid, delivery_status,
                     code, description, time_stamp, received_at)
    SELECT 'default', campaign_id, batch_key, correlation_id, msisdn, transid, delivery_status,
           code, description, time_stamp, received_at FROM v1_receipts
"""


class _SqliteConnection(Connection):
    dialect = DIALECT

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.raw.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.raw.executemany(sql, rows)

    def in_transaction(self) -> bool:
        return self.raw.in_transaction

    def close(self) -> None:
        self.raw.close()


class SqliteLedger(Ledger):
    # IntegrityError and ProgrammingError are bugs of ours, not a broken file
    storage_errors = (sqlite3.OperationalError, sqlite3.DatabaseError)

    def __init__(self, path: Path, connection: Connection, environment: str = DEFAULT_ENVIRONMENT) -> None:
        super().__init__(str(path), connection, environment)
        self.path = path

    def storage_error(self, exc: BaseException) -> CampaignError:
        if isinstance(exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError)):
            return CampaignError(f"ledger: {exc}", exit_code=ExitCode.INTERNAL)
        return super().storage_error(exc)

    @classmethod
    def connect(cls, path: Path, *, environment: str = DEFAULT_ENVIRONMENT) -> SqliteLedger:
        """Open (creating if needed) the ledger at `path` and bring its schema up to date."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CampaignError(
                f"cannot create the state directory {path.parent}: {exc.strerror or exc}",
                exit_code=ExitCode.USAGE,
                hint="choose a writable --state path",
            ) from exc
        try:
            raw = sqlite3.connect(
                str(path),
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # transactions are explicit (BEGIN IMMEDIATE ... COMMIT)
                check_same_thread=False,  # shared by the sender's threads under the ledger's lock
            )
        except sqlite3.Error as exc:
            raise CampaignError(
                f"cannot open the state database {path}: {exc}",
                exit_code=ExitCode.USAGE,
                hint="choose a writable --state path",
            ) from exc
        try:
            _configure(raw)
            _migrate(raw, path)
        except sqlite3.DatabaseError as exc:
            raw.close()
            detail = str(exc)
            if "readonly" in detail or "read-only" in detail:
                hint = "the ledger must be writable: check the file's and its folder's permissions"
            else:
                hint = "point --state at the right file, or move this one away"
            raise CampaignError(
                f"{path} is not a usable campaign-runner state database: {detail}",
                exit_code=ExitCode.USAGE,
                hint=hint,
            ) from exc
        except BaseException:
            raw.close()
            raise
        return cls(path, _SqliteConnection(raw), environment)

    @contextmanager
    def apply_lock(self, campaign_id: str, *, timeout: float = 0.0) -> Iterator[None]:
        with acquire_lock(self.path, campaign_id, environment=self.environment, timeout=timeout):
            self.write_lock_holder(campaign_id)
            yield


def _configure(connection: sqlite3.Connection) -> None:
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.DatabaseError(f"cannot switch to WAL journal mode (got {mode})")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA foreign_keys = ON")


def _migrate(connection: sqlite3.Connection, path: Path) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise CampaignError(
                f"{path} was written by a newer campaign-runner (schema {version}, "
                f"this one knows {SCHEMA_VERSION})",
                exit_code=ExitCode.REFUSED,
                hint="upgrade campaign-runner",
            )
        if version == 0 and connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise sqlite3.DatabaseError("it has tables but no campaign-runner schema version")
        if version == 1:
            for index in _V1_INDEXES:
                connection.execute(f"DROP INDEX IF EXISTS {index}")
            for table in _V1_TABLES:
                connection.execute(f"ALTER TABLE {table} RENAME TO v1_{table}")
        if version == 2:
            connection.execute(ADD_CONTENT_DIGEST)
        elif version < SCHEMA_VERSION:
            for statement in DIALECT.statements(DIALECT.schema()):
                connection.execute(statement)
        if version == 1:
            for statement in DIALECT.statements(_FROM_V1):
                connection.execute(statement)
            for table in _V1_TABLES:
                connection.execute(f"DROP TABLE v1_{table}")
        if version < SCHEMA_VERSION:
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


# --- the per-campaign apply lock -------------------------------------------------------

_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,100}")


def _safe_name(name: str) -> str:
    if _SAFE_ID.fullmatch(name) and not name.startswith("."):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:40] + "-" + digest


def lock_path(state_path: Path, campaign_id: str, environment: str = DEFAULT_ENVIRONMENT) -> Path:
    """`<state>.<campaign_id>.lock` beside the file the state resolves to (symlinks
    followed); `<state>.<environment>~<campaign_id>.lock` for another environment."""
    name = _safe_name(campaign_id)
    if environment != DEFAULT_ENVIRONMENT:
        name = f"{_safe_name(environment)}~{name}"
    real = Path(os.path.realpath(Path(state_path)))
    return real.with_name(f"{real.name}.{name}.lock")


@contextmanager
def acquire_lock(
    state_path: Path, campaign_id: str, *, environment: str = DEFAULT_ENVIRONMENT, timeout: float = 0.0
) -> Iterator[None]:
    """Hold an exclusive OS lock (flock) on the campaign for the duration of the block,
    waiting up to `timeout` seconds for it.

    The kernel releases it when the holder exits in any way, kill -9 included, so a
    stale lock file is harmless and never needs deleting. Not re-entrant: a second
    acquire, even from the same process, is refused.
    """
    path = lock_path(state_path, campaign_id, environment)
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
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                raise _refused(fd, path, campaign_id, environment, timeout)
            time.sleep(LOCK_POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{socket.gethostname()}\n{now_text()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _refused(fd: int, path: Path, campaign_id: str, environment: str, timeout: float) -> CampaignError:
    lines = os.pread(fd, 512, 0).decode("utf-8", "replace").split("\n")
    pid = lines[0].strip() if lines and lines[0].strip().isdigit() else "unknown"
    host = lines[1].strip() if len(lines) > 1 and lines[1].strip() else "unknown"
    since = lines[2].strip() if len(lines) > 2 and lines[2].strip() else "unknown"
    waited = f" (waited {timeout:g} s)" if timeout > 0 else ""
    where = "" if environment == DEFAULT_ENVIRONMENT else f" in environment '{environment}'"
    return CampaignError(
        f"campaign '{campaign_id}'{where} is being applied by another process "
        f"(host {host}, pid {pid}, since {since}){waited}",
        exit_code=ExitCode.REFUSED,
        hint=f"wait for it to finish, or pass --lock-timeout; the lock ({path}) is released as soon as that "
        "process exits, even if killed, so there is nothing to delete",
    )
