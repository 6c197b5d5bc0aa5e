"""The PostgreSQL backend: a ledger shared by a team's machines and CI runners.

psycopg 3 is an optional extra (`pip install 'campaign-runner[postgres]'`), imported
only when a `postgresql://` state is used. One connection in autocommit mode, with the
shared queries' explicit BEGIN/COMMIT; `synchronous_commit` stays the server's (on by
default), so a commit, notably `in-flight`, is durable when it returns.

The apply lock is a session advisory lock (`pg_try_advisory_lock`) taken on the
ledger's first connection, which does nothing else: when the apply's process dies, even
by kill -9, its connection drops and the server releases the lock. Transactions run on
a small pool of other connections (`POOL_SIZE`), one per thread at a time, so the
sender's main thread records the next batch while its workers mark answers: PostgreSQL
runs them side by side where SQLite would serialise them anyway. A pool connection that
breaks is dropped; its error ends the apply like a crash (see the package docstring). Who holds it is written to `apply_locks` for the refusal
message. Migrations run on first use, in one transaction under a transaction-level
advisory lock, so two first uses do not race.

The URL's password (or `PGPASSWORD`, a `.pgpass`, a `passfile=`) is passed to libpq
only; every message names the state through `mask_state`.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from runner.errors import CampaignError, ExitCode

from . import DEFAULT_ENVIRONMENT, SCHEMA_VERSION, Connection, Cursor, Dialect, Ledger, LedgerUnavailable, mask_state
from .schema import ADD_CONTENT_DIGEST

if TYPE_CHECKING:
    import psycopg

# reads: REPEATABLE READ, as READ COMMITTED would give each query of a summary its own snapshot
DIALECT: Final = Dialect(name="postgresql", placeholder="%s", serial="BIGSERIAL PRIMARY KEY", begin_write="BEGIN",
                         begin_read="BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", materialized="MATERIALIZED ")
CONNECT_TIMEOUT_SECONDS: Final = 10
LOCK_POLL_SECONDS: Final = 0.2
POOL_SIZE: Final = 4  # connections for transactions (the sender's main thread and its workers)
# pg_advisory_xact_lock key that serialises migrations ("campaign-runner schema")
_MIGRATION_LOCK: Final = 0x63616D7061696E67
_VERSION_TABLE: Final = "campaign_runner_schema"


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise CampaignError(
            "a postgresql:// state needs psycopg, which is not installed",
            exit_code=ExitCode.USAGE,
            hint="pip install 'campaign-runner[postgres]'",
        ) from None
    return psycopg


class _PostgresConnection(Connection):
    dialect = DIALECT

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.raw.execute(self.sql(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.raw.cursor() as cursor:
            cursor.executemany(self.sql(sql), rows)

    def insert_rows(self, head: str, row: str, tail: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement for all rows: `head SELECT row FROM unnest(col1[], col2[], ...)`, the
        row template's `?`s becoming the unnested columns (every value here is text). One
        round trip and a small statement to parse, where a multi-row VALUES of 1,000 rows
        costs PostgreSQL more to parse and plan than to insert."""
        if not rows:
            return
        width = len(rows[0])
        names = iter(range(1, width + 1))
        select = re.sub(r"\?", lambda _: f"u.c{next(names)}", row.strip()[1:-1])
        columns = ", ".join(f"c{n}" for n in range(1, width + 1))
        arrays = ", ".join(["?::text[]"] * width)
        sql = f"{head} SELECT {select} FROM unnest({arrays}) AS u({columns}) {tail}"
        self.raw.execute(self.sql(sql), [[r[n] for r in rows] for n in range(width)])

    def usable(self) -> bool:
        return not self.raw.closed and not self.raw.broken

    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()


def _advisory_key(environment: str, campaign_id: str) -> int:
    """A signed 64-bit key for (environment, campaign): advisory locks take a bigint."""
    digest = hashlib.sha256(f"campaign-runner\0{environment}\0{campaign_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresLedger(Ledger):
    def __init__(self, url: str, connection: Connection, environment: str = DEFAULT_ENVIRONMENT) -> None:
        super().__init__(mask_state(url), connection, environment)
        self._url = url
        self._idle: list[Connection] = []
        self._pool_guard = threading.Lock()
        self._slots = threading.BoundedSemaphore(POOL_SIZE)
        psycopg = _psycopg()
        # OperationalError: the server went away or refused; DatabaseError covers a
        # server-side failure (disk full, admin shutdown) that is not a bug of our SQL
        self.storage_errors = (psycopg.OperationalError, psycopg.errors.AdminShutdown,
                               psycopg.errors.DiskFull, psycopg.errors.ReadOnlySqlTransaction)

    @classmethod
    def connect(cls, url: str, *, environment: str = DEFAULT_ENVIRONMENT) -> PostgresLedger:
        psycopg = _psycopg()
        shown = mask_state(url)
        try:
            raw = _open_raw(url)
        except psycopg.Error as exc:
            raise CampaignError(
                f"cannot connect to the ledger {shown}: {_clean(exc, url)}",
                exit_code=ExitCode.USAGE,
                hint="check the --state URL (or CAMPAIGN_STATE) and that the server is reachable",
            ) from None
        connection = _PostgresConnection(raw)
        try:
            _migrate(connection, shown)
        except psycopg.Error as exc:
            raw.close()
            raise CampaignError(
                f"the ledger {shown} cannot be used: {_clean(exc, url)}",
                exit_code=ExitCode.USAGE,
                hint="the user needs rights to create tables on first use (or a database migrated by one who has)",
            ) from None
        except BaseException:
            raw.close()
            raise
        return cls(url, connection, environment)

    @contextmanager
    def _session(self) -> Iterator[Connection]:
        self._connection()  # not after close()
        with self._slots:
            with self._pool_guard:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                connection = self._open_pooled()
            try:
                yield connection
            finally:
                if connection.usable() and self._state.connection is not None:
                    with self._pool_guard:
                        self._idle.append(connection)
                else:
                    _close_quietly(connection)

    def _open_pooled(self) -> Connection:
        psycopg = _psycopg()
        try:
            raw = _open_raw(self._url)
        except psycopg.Error as exc:
            raise self.storage_error(RuntimeError(_clean(exc, self._url))) from None
        return _PostgresConnection(raw)

    def close(self) -> None:
        super().close()
        with self._pool_guard:
            idle, self._idle = self._idle, []
        for connection in idle:
            _close_quietly(connection)

    @contextmanager
    def apply_lock(self, campaign_id: str, *, timeout: float = 0.0) -> Iterator[None]:
        key = _advisory_key(self.environment, campaign_id)
        deadline = time.monotonic() + timeout
        while not self._try_lock(key):
            if time.monotonic() >= deadline:
                holder = self.read_lock_holder(campaign_id)
                who = str(holder) if holder is not None else "holder unknown"
                waited = f" (waited {timeout:g} s)" if timeout > 0 else ""
                where = "" if self.environment == DEFAULT_ENVIRONMENT else f" in environment '{self.environment}'"
                raise CampaignError(
                    f"campaign '{campaign_id}'{where} is being applied by another process ({who}){waited}",
                    exit_code=ExitCode.REFUSED,
                    hint="wait for it to finish, or pass --lock-timeout; the lock is released as soon as that "
                    "process's database connection ends, even if it was killed",
                )
            time.sleep(LOCK_POLL_SECONDS)
        try:
            self.write_lock_holder(campaign_id)
            yield
        finally:
            self._unlock(key)

    def check_apply_lock(self) -> None:
        """The lock's connection must still answer: if it dropped, the server has released
        the lock and another apply may take the campaign, so this one must stop sending."""
        with self._lock:
            connection = self._state.connection
            if connection is None:
                return
            try:
                connection.execute("SELECT 1").fetchone()
            except self.storage_errors as exc:
                raise LedgerUnavailable(
                    f"lost the apply lock on the ledger {self.display}: its connection dropped "
                    f"({_clean(exc, self._url)}); another apply could now take the campaign",
                    exit_code=ExitCode.PARTIAL,
                    hint="batches that were in flight become uncertain on the next apply; check them "
                    "(campaign status), then re-run, with --resend-uncertain if they were not delivered",
                ) from None

    def _try_lock(self, key: int) -> bool:
        with self._lock:
            try:
                row = self._connection().execute("SELECT pg_try_advisory_lock(?)", (key,)).fetchone()
            except self.storage_errors as exc:
                raise self.storage_error(exc) from None
        return bool(row[0])

    def _unlock(self, key: int) -> None:
        with self._lock:
            connection = self._state.connection
            if connection is None:
                return
            try:
                connection.execute("SELECT pg_advisory_unlock(?)", (key,))
            except self.storage_errors:
                pass  # the connection is gone, and the lock with it


def _open_raw(url: str) -> psycopg.Connection[Any]:
    """A connection as every one of the ledger's is: autocommit (the shared queries BEGIN
    and COMMIT themselves), a bounded connect, named in the server's activity view."""
    raw: psycopg.Connection[Any] = _psycopg().connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                                                      application_name="campaign-runner")
    return raw


def _close_quietly(connection: Connection) -> None:
    try:
        connection.close()
    except Exception:  # closing a broken connection: nothing left to release
        pass


def _migrate(connection: Connection, shown: str) -> None:
    connection.execute("BEGIN")
    try:
        connection.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        connection.execute(f"CREATE TABLE IF NOT EXISTS {_VERSION_TABLE} (version INTEGER NOT NULL)")
        row = connection.execute(f"SELECT max(version) FROM {_VERSION_TABLE}").fetchone()
        version = int(row[0] or 0)
        if version > SCHEMA_VERSION:
            raise CampaignError(
                f"the ledger {shown} was written by a newer campaign-runner (schema {version}, "
                f"this one knows {SCHEMA_VERSION})",
                exit_code=ExitCode.REFUSED,
                hint="upgrade campaign-runner",
            )
        if version == 2:
            connection.execute(ADD_CONTENT_DIGEST)
        elif version < SCHEMA_VERSION:
            # PostgreSQL ledgers start at the schema with environments (version 2)
            for statement in DIALECT.statements(DIALECT.schema()):
                connection.execute(statement)
        if version < SCHEMA_VERSION:
            connection.execute(f"DELETE FROM {_VERSION_TABLE}")
            connection.execute(f"INSERT INTO {_VERSION_TABLE}(version) VALUES (?)", (SCHEMA_VERSION,))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction():
            connection.execute("ROLLBACK")
        raise


def _clean(exc: BaseException, url: str) -> str:
    """The driver's message on one line, with the URL's password masked should it appear."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if url in text:
        text = text.replace(url, mask_state(url))
    from urllib.parse import unquote, urlsplit

    password = urlsplit(url).password
    if password:
        text = text.replace(password, "***").replace(unquote(password), "***")
    return text
